/* bdb.h - gridbench's direct libpq work: sample points, bench workers, the raw PostgreSQL baseline. */
#ifndef GRIDBENCH_BDB_H
#define GRIDBENCH_BDB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bstats.h"
#include "util.h"

/* Identifier lengths as bounded by sql/001_init.sql. */
#define BDB_ID_MAX	64
#define BDB_CELL_MAX	80

struct bpoint {
	double lon, lat;
	char community[BDB_ID_MAX + 1];
	char cell[BDB_CELL_MAX + 1];	/* "" before partitioning */
};

struct bpoints {
	struct bpoint *v;
	size_t n;
};

/* Up to max building points, in a random order (cells first when
 * cells_only: dispatch needs incidents inside cells). */
bool bdb_load_points(const char *conninfo, size_t max, bool cells_only,
    struct bpoints *out, char *err, size_t errlen) WUR;
void bdb_points_free(struct bpoints *p);

struct bworker {
	char id[BDB_ID_MAX + 1];
	double lon, lat;	/* a building of its primary cell */
};

/* Creates or updates n workers PREFIX000000.. spread over the current
 * cells round-robin (primary cell; max_open high so accepted offers never
 * block the next), all with one password hashed as the daemon stores it
 * (PBKDF2-SHA256, iterations given). Fills out (n entries), each with a
 * random building of the worker's cell to check in at: workers of one cell
 * stand at different spots, so that the nearest one is a real choice. */
bool bdb_setup_workers(const char *conninfo, const char *prefix, size_t n,
    const char *password, int iterations, struct bworker **out,
    char *err, size_t errlen) WUR;

enum bdb_base_mode {
	BDB_BASE_SINGLE,	/* one incident (+ source) per commit */
	BDB_BASE_MULTI,		/* B incidents in one multi-row statement */
	BDB_BASE_GRIDD,		/* the daemon's own per-batch SQL */
};

struct bdb_base_opts {
	const char *conninfo;
	enum bdb_base_mode mode;
	int conns;		/* concurrent connections (threads) */
	int batch;		/* incidents per commit (MULTI, GRIDD) */
	double duration_s;
	int64_t max_rows;	/* stop after this many, 0 = no cap */
	const struct bpoints *points;
	const char *task_type;	/* a task type present in task_types */
	const char *category;	/* for GRIDD: a category of department */
	const char *department;	/* source_id of the rows */
	const char *run_tag;	/* makes ext_ids unique per run */
	double merge_radius_m;	/* GRIDD: the daemon's [dispatch] values */
	int merge_window_s;
};

struct bdb_base_result {
	int64_t rows;		/* incidents committed */
	int64_t commits;
	int64_t errors;
	double seconds;
	struct lat commit_lat;
	char first_error[256];
};

bool bdb_baseline(const struct bdb_base_opts *o, struct bdb_base_result *r,
    char *err, size_t errlen) WUR;
/* Deletes the baseline's rows (source_id = department) afterwards so that
 * they never become merge candidates for the daemon's runs. */
bool bdb_baseline_cleanup(const char *conninfo, const char *department,
    char *err, size_t errlen) WUR;

/* Whether the daemon's per-batch SQL can be reproduced against this
 * database (the feed migration is in place). */
bool bdb_gridd_sql_available(const char *conninfo);

#endif

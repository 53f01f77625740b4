/* grid.h - cells and imports: the grid requests and partition orchestration. */
#ifndef GRIDD_GRID_H
#define GRIDD_GRID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gridd.pb-c.h"
#include "util.h"

struct conn;
struct cfg;
struct db_res;

/* Rows one import request may carry (the frame limit bounds it too). */
#define GRID_IMPORT_MAX_ROWS	20000
/* "line N: ..." texts in one ImportReply; the rest are counted. */
#define GRID_IMPORT_MAX_ERRORS	100

/* Starts the partition thread; needs gridd.base and libevent threads. */
bool grid_init(void) WUR;
/* Stops the thread and fails queued work (requests answer UNAVAILABLE).
 * Call before db_pool_free: database callbacks still arriving afterwards
 * find nothing left to start. */
void grid_shutdown(void);

/* SIGHUP: repartitions every community whose grid keys differ between old
 * and next (its [community.ID] section or the [grid] defaults it
 * inherits). Called after the swap, before old is freed; copies what it
 * needs. */
void grid_config_changed(const struct cfg *old, const struct cfg *next);

/* Request handlers, called from the rpc table after its role check. */
void grid_import_communities(struct conn *c, const Gridd__V1__Envelope *env);
void grid_import_buildings(struct conn *c, const Gridd__V1__Envelope *env);
void grid_get_grid(struct conn *c, const Gridd__V1__Envelope *env);
void grid_repartition(struct conn *c, const Gridd__V1__Envelope *env);

/*
 * Shared with layers.c: PostgreSQL array literals built from untrusted
 * strings, and import replies assembled from the 002 import functions'
 * (line, id, action, error) rows.
 */
struct grid_arr {
	char *buf;
	size_t len, cap;
	size_t n;
};
void grid_arr_init(struct grid_arr *a);
/* s NULL = SQL NULL; anything else is quoted and escaped. */
void grid_arr_text(struct grid_arr *a, const char *s);
void grid_arr_int(struct grid_arr *a, long long v);
void grid_arr_null(struct grid_arr *a);
/* Closes the literal and returns it (owned by a). */
const char *grid_arr_finish(struct grid_arr *a);
void grid_arr_free(struct grid_arr *a);

/* An ImportReply being assembled for one request. */
struct grid_import {
	struct conn *c;		/* held until grid_import_done */
	uint64_t request_id;
	const char *what;	/* "communities", "buildings", "layer" */
	int inserted, updated, unchanged, rejected;
	char **errors;
	size_t n_errors;
	size_t more_errors;	/* beyond GRID_IMPORT_MAX_ERRORS */
	char *report;		/* NULL or readable text */
	int64_t started_ms;
	/* Communities whose cells the import made stale (the import
	 * functions' 'repartition' rows), at most GRID_IMPORT_MAX_ROWS. */
	char **stale;
	size_t n_stale;
};
/* Holds c. */
struct grid_import *grid_import_new(struct conn *c, uint64_t request_id,
    const char *what);
void grid_import_error(struct grid_import *im, const char *fmt, ...)
    PRINTF_LIKE(2, 3);
/* Counts the rows of one import function's result (columns line, id,
 * action, error) and collects its 'repartition' rows; false when a row is
 * malformed. */
bool grid_import_rows(struct grid_import *im, const struct db_res *res) WUR;
/* Sends the ImportReply (its report naming the stale communities, whose
 * repartition it queues), releases and frees. */
void grid_import_reply(struct grid_import *im);
/* Sends Error{code, msg}, releases and frees. */
void grid_import_fail(struct grid_import *im, Gridd__V1__ErrorCode code,
    const char *msg);
/* A failed statement as an error code and a message for the client: the
 * strict refusal and a caller's data errors are BAD_REQUEST with the
 * server's text, an unknown object NOT_FOUND, the rest UNAVAILABLE or
 * INTERNAL. */
Gridd__V1__ErrorCode grid_db_error(const struct db_res *res, char *msg,
    size_t len);

/* 1..64 of A-Z a-z 0-9 _ . - (community, cell, department ids). */
bool grid_valid_id(const char *s) WUR;
/* Well-formed UTF-8 without control characters, at most max characters. */
bool grid_valid_text(const char *s, size_t max) WUR;

#endif

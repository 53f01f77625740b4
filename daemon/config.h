/* config.h - gridd.conf parsed into one immutable snapshot; reload swaps it. */
#ifndef GRIDD_CONFIG_H
#define GRIDD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util.h"

#define CFG_MAX_LISTEN 16

/* Numbering matches the wire enums TaskList, Matter (proto/gridd.proto). */
enum cfg_list {
	CFG_LIST_AUTONOMY = 1,
	CFG_LIST_ASSIST = 2,
	CFG_LIST_NEGATIVE = 3,
	CFG_LIST_CERTIFICATE = 4,
};

enum cfg_matter {
	CFG_MATTER_BIG = 1,
	CFG_MATTER_SMALL = 2,
	CFG_MATTER_PRIVATE = 3,
};

enum cfg_route {
	CFG_ROUTE_WORKER = 1,
	CFG_ROUTE_DEPARTMENT = 2,
	CFG_ROUTE_REFERRAL = 3,
};

struct cfg_listen {
	char *host;		/* numeric address or name; "[::1]" brackets removed */
	char *port;
	bool tls;		/* "listen = HOST:PORT tls" */
};

struct cfg_grid {
	int min_households;
	int target_households;
	int max_households;
	double neighbour_m;
	/* A contiguous non-residential cluster becomes a dedicated cell
	 * (专属网格) when it has at least this many buildings or floor area. */
	int dedicated_min_buildings;
	double dedicated_min_area_m2;
	/* Loading or applying one community's partition may take this long
	 * (its own limit, not [database] query_timeout_ms). */
	int partition_timeout_s;
	/* An import that leaves the community's cells stale queues its
	 * repartition once no import touched it for this long; 0 = never. */
	int repartition_delay_s;
};

struct cfg_community {
	char *id;
	struct cfg_grid grid;	/* [grid] defaults with this section's overrides */
	int line;
};

struct cfg_category {
	char *code;		/* department's own category code */
	char *task_type;	/* unified task type name */
};

struct cfg_department {
	char *id;
	char *name;
	bool has_key;
	uint8_t key_sha256[32];
	struct cfg_category *categories;
	size_t n_categories;
};

struct cfg_admin {
	char *id;
	uint8_t key_sha256[32];
};

struct cfg_task_type {
	char *name;
	enum cfg_list list;
	enum cfg_matter matter;
	int sla_minutes;
	enum cfg_route route;
	char *guidance;		/* may be NULL */
	char *department;	/* owner of workers' reports; may be NULL */
};

struct cfg {
	char *path;

	/* [server] */
	struct cfg_listen listen[CFG_MAX_LISTEN];
	size_t n_listen;
	char *tls_cert, *tls_key, *tls_client_ca;	/* NULL when unset */
	int max_connections;
	uint32_t max_frame_bytes;
	uint32_t max_frame_bytes_unauth;	/* limit before login */
	int idle_timeout_s;
	int login_timeout_s;
	uint32_t max_output_bytes;	/* unsent bytes per connection */
	int output_stall_timeout_s;	/* over max_output_bytes this long: drop */
	int max_frames_per_read;
	int shutdown_timeout_s;
	int log_level;			/* enum log_level */

	/* [admin_http] */
	char *http_listen;		/* NULL = off */
	int health_timeout_ms;

	/* [database] */
	char *conninfo;
	int pool_size;
	int query_timeout_ms;
	int max_waiting;		/* queued statements beyond the pool */
	int reconnect_max_ms;
	int replan_interval_s;
	char *migrations_dir;		/* numbered NNN_name.sql files */
	int report_rollup_interval_s;	/* 0 = only when a report asks */
	int report_rollup_budget_ms;

	/* [auth] */
	int pbkdf2_iterations;
	int token_ttl_s;
	int login_max_failures;		/* per principal and per address */
	int login_failure_window_s;

	/* [grid] and [community.ID] */
	struct cfg_grid grid;
	struct cfg_community *communities;
	size_t n_communities;

	/* [dispatch] */
	int offer_timeout_s;
	int max_offers;
	double merge_radius_m;
	int merge_window_s;
	int max_batch;			/* incidents per PushIncidents */
	int push_max_future_s;		/* occurred_at at most this far ahead */
	int push_max_age_days;		/* and at most this far back */
	int group_commit_max_items;	/* items per ingest transaction */
	int group_commit_parallel;	/* ingest transactions in flight */
	int group_commit_min_items;	/* to start beside one in flight */
	int group_commit_delay_ms;	/* or once the oldest waited this */
	int push_queue_max_items;	/* items waiting for a transaction */
	int subscribe_page;		/* events fetched per subscriber query */
	int checkin_max_age_s;
	int checkin_history;		/* check-in rows kept per worker */
	int scan_interval_s;		/* dispatch and timer safety scan */
	int dispatch_batch;		/* incidents or timers per statement */
	int push_offer_max;		/* offers made in one push transaction */

	struct cfg_admin *admins;
	size_t n_admins;
	struct cfg_department *departments;
	size_t n_departments;
	struct cfg_task_type *task_types;
	size_t n_task_types;
};

/* One problem found in a file; printed as "FILE:LINE: key: reason". */
struct cfg_error {
	char *file;
	int line;		/* 0 when the problem is not on one line */
	char *key;		/* "section.key" or "[section]" */
	char *reason;
};

struct cfg_errors {
	struct cfg_error *v;
	size_t n;
};

/* Parses and validates. On success *out is a new config and errs is empty;
 * on failure *out is NULL and errs lists every problem found. */
bool cfg_load(const char *path, struct cfg **out, struct cfg_errors *errs) WUR;
/* Same over a buffer; name is used in error messages (tests, fuzzing). */
bool cfg_parse(const char *name, const char *text, size_t len,
    struct cfg **out, struct cfg_errors *errs) WUR;
void cfg_free(struct cfg *cfg);

void cfg_errors_print(const struct cfg_errors *errs, FILE *fp);
void cfg_errors_clear(struct cfg_errors *errs);

/* Logs a warning for every restart-only key that differs; they keep their
 * old effect until the next restart. */
void cfg_warn_restart_only(const struct cfg *old, const struct cfg *new);

const struct cfg_department *cfg_department(const struct cfg *cfg,
    const char *id);
const struct cfg_admin *cfg_admin(const struct cfg *cfg, const char *id);
const struct cfg_task_type *cfg_task_type(const struct cfg *cfg,
    const char *name);
/* The department's crosswalk: category code -> task type name, or NULL. */
const char *cfg_category(const struct cfg_department *dept, const char *code);
/* Grid parameters for one community: its override section or [grid]. */
const struct cfg_grid *cfg_grid_for(const struct cfg *cfg,
    const char *community_id);

/* Writes the key table (section, key, type, default, bounds, reloadable,
 * description) as a Markdown table: the README's reference is generated. */
void cfg_write_reference(FILE *fp);

const char *cfg_list_name(enum cfg_list l);
const char *cfg_matter_name(enum cfg_matter m);
const char *cfg_route_name(enum cfg_route r);

/* Input bounds: a config is an operator's file, but it is still parsed as
 * hostile input (and fuzzed). */
#define CFG_MAX_FILE_BYTES (1024 * 1024)
#define CFG_MAX_LINE 4096		/* bytes per line, newline excluded */
#define CFG_MAX_ERRORS 64		/* then one "too many errors" and stop */
#define CFG_MAX_ID 64			/* IDs: 1..64 of [A-Za-z0-9_.-] */

/* The key table, read-only: the reference is generated from it and tests
 * walk it. */
enum cfg_type {
	CFG_T_INT,
	CFG_T_UINT32,
	CFG_T_DOUBLE,
	CFG_T_STRING,
	CFG_T_TEXT,
	CFG_T_PATH,
	CFG_T_LISTEN,		/* HOST:PORT [tls] */
	CFG_T_ADDRESS,		/* HOST:PORT */
	CFG_T_LOG_LEVEL,
	CFG_T_LIST,
	CFG_T_MATTER,
	CFG_T_ROUTE,
	CFG_T_SHA256,
	CFG_T_CATEGORY,		/* category.CODE = TASK_TYPE */
};

struct cfg_key_info {
	const char *section;	/* "server", or "department.ID" for per-ID ones */
	const char *key;
	enum cfg_type type;
	const char *def;	/* default as written in a file; NULL = none */
	double min, max;	/* bounds of the numeric types */
	bool required;
	bool repeatable;
	bool restart_only;
	const char *desc;
};

size_t cfg_key_count(void);
const struct cfg_key_info *cfg_key_get(size_t i);
const char *cfg_type_name(enum cfg_type t);
/* Formats key i's value as it would be written in the file. false for keys
 * of per-ID sections, category lines and unset values. */
bool cfg_key_value(const struct cfg *cfg, size_t i, char *buf, size_t len)
    WUR;

#endif

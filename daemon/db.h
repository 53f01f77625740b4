/* db.h - the only door to PostgreSQL: an asynchronous libpq pool on the loop. */
#ifndef GRIDD_DB_H
#define GRIDD_DB_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

struct event_base;
struct db_pool;
struct db_res;
struct db_batch;

enum db_status {
	DB_OK = 0,
	DB_SQL_ERROR,		/* the server refused the statement (sqlstate) */
	DB_UNAVAILABLE,		/* no connection, lost connection, shutting down */
	DB_TIMEOUT,		/* no answer within query_timeout_ms */
};

struct db_pool_opts {
	const char *conninfo;
	int pool_size;
	int query_timeout_ms;
	int max_waiting;
	int reconnect_max_ms;
	int replan_interval_ms;	/* a session drops its cached plans this
				 * often (before its next request); 0 never */
	const char *application_name;
};

struct db_stats {
	int size;
	int connected;
	int busy;
	int waiting;
	uint64_t queries;
	uint64_t errors;
	uint64_t timeouts;
	uint64_t reconnects;
	uint64_t replans;	/* DISCARD PLANS done (replan_interval_ms) */
	uint64_t prepares;	/* statements prepared on a session */
};

/* One statement's result; valid only inside the callback that receives it. */
typedef void (*db_cb)(void *arg, const struct db_res *res);
/* A batch's results, one per statement added, in order (BEGIN/COMMIT not
 * included). status is DB_OK only when the transaction committed. */
typedef void (*db_batch_cb)(void *arg, enum db_status status,
    const struct db_res *const *results, int n);
typedef void (*db_notify_cb)(void *arg, const char *channel,
    const char *payload);

/* Validates conninfo and starts connecting pool_size connections; NULL with
 * *err set (static string) on a bad conninfo. Never blocks. */
struct db_pool *db_pool_new(struct event_base *base,
    const struct db_pool_opts *opts, const char **err) WUR;
/* Applies new timeouts and limits; a changed conninfo or pool_size takes
 * effect as connections are recycled. */
void db_pool_reconfigure(struct db_pool *pool, const struct db_pool_opts *opts);
/* Fails every queued and in-flight statement with DB_UNAVAILABLE (their
 * callbacks run before this returns) and frees the pool. */
void db_pool_free(struct db_pool *pool);
/* Number of statements and batches queued or in flight. */
int db_pool_pending(const struct db_pool *pool);
bool db_pool_connected(const struct db_pool *pool);
void db_pool_stats(const struct db_pool *pool, struct db_stats *out);

/* Runs one parameterised statement (text format, NULL = SQL NULL). Returns
 * false when it cannot be queued (wait queue full, pool stopping): the caller
 * answers UNAVAILABLE at once. Otherwise cb runs exactly once, later, from
 * the loop, never from inside this call. */
bool db_query(struct db_pool *pool, const char *sql, int nparams,
    const char *const *params, db_cb cb, void *arg) WUR;
/* As db_query, for a request whose client has waited waited_ms already,
 * queued in the caller behind other work: its timer gets what is left of
 * query_timeout_ms, so the client has an answer within that of asking,
 * not a multiple of it. False, as for a full queue, when it is too late
 * (db_too_late). */
bool db_query_waited(struct db_pool *pool, int64_t waited_ms,
    const char *sql, int nparams, const char *const *params, db_cb cb,
    void *arg) WUR;
/* Whether a request whose client has waited waited_ms is too late to send:
 * less than a tenth of query_timeout_ms left, which its timer would mostly
 * cut off with the work done anyway. Callers answer such requests
 * UNAVAILABLE one by one before they group them. */
bool db_too_late(const struct db_pool *pool, int64_t waited_ms);

/* Statements sent together in pipeline mode on one connection, wrapped in
 * BEGIN/COMMIT: one round trip and one commit for the lot. */
struct db_batch *db_batch_new(void);
/* Copies sql and params. */
void db_batch_add(struct db_batch *b, const char *sql, int nparams,
    const char *const *params);
/*
 * A statement each session prepares once, at its first use there (a named
 * statement of the extended protocol), and then only binds and executes:
 * the parse, analysis and plan of its text are not paid again on every
 * call.  For the statements sent hundreds of times a second.  One static
 * object per statement text, which the pools keep referring to by its id:
 *	static struct db_prepared ps = DB_PREPARED(sql, nparams);
 * Past DB_PREPARED_MAX distinct objects in a process, the others go
 * unprepared (each logged at its first use).  A statement whose prepared
 * form went stale (see db.c) fails that once; the next call prepares it
 * again.
 */
struct db_prepared {
	const char *sql;
	int nparams;
	int id;			/* db.c's; 0 until first added */
};
#define DB_PREPARED(sql, nparams)	{ (sql), (nparams), 0 }
#define DB_PREPARED_MAX		64
/* As db_batch_add, the statement prepared on the session that runs it. */
void db_batch_add_prepared(struct db_batch *b, struct db_prepared *ps,
    const char *const *params);
int db_batch_count(const struct db_batch *b);
/* Gives the batch its own limit (1 ms to 24 h) instead of query_timeout_ms:
 * the client's timer and, through SET LOCAL statement_timeout, the
 * server's limit for this transaction only. For the few known long
 * statements (partitioning a big community), not for requests a client
 * waits on. Out of range marks the batch invalid (refused at submit). */
void db_batch_timeout(struct db_batch *b, int timeout_ms);
/* As db_query_waited: the batch's limit is counted from waited_ms before
 * its submission, and db_batch_submit refuses it when too late (less than
 * a tenth of that limit left). */
void db_batch_waited(struct db_batch *b, int64_t waited_ms);
void db_batch_free(struct db_batch *b);
/* Takes ownership of b in every case. Same queueing rules as db_query. */
bool db_batch_submit(struct db_pool *pool, struct db_batch *b,
    db_batch_cb cb, void *arg) WUR;

/* LISTEN on a dedicated connection, re-issued after every reconnect. */
bool db_listen(struct db_pool *pool, const char *channel, db_notify_cb cb,
    void *arg) WUR;

enum db_status db_res_status(const struct db_res *r);
const char *db_res_error(const struct db_res *r);	/* "" when none */
const char *db_res_sqlstate(const struct db_res *r);	/* "" when none */
int db_res_rows(const struct db_res *r);
int db_res_cols(const struct db_res *r);
const char *db_res_get(const struct db_res *r, int row, int col);
bool db_res_isnull(const struct db_res *r, int row, int col);
bool db_res_int64(const struct db_res *r, int row, int col, int64_t *out) WUR;
bool db_res_double(const struct db_res *r, int row, int col, double *out) WUR;
uint64_t db_res_affected(const struct db_res *r);

/* Blocking session for start-up work (migrations) before the loop serves
 * anyone, and for tools. Never used from a loop callback. */
struct db_sync;
struct db_sync *db_sync_connect(const char *conninfo, int timeout_s,
    char *err, size_t errlen) WUR;
/* Simple-query protocol: sql may hold several statements (a migration file).
 * false with err filled on failure. */
bool db_sync_exec(struct db_sync *s, const char *sql, char *err,
    size_t errlen) WUR;
/* One parameterised statement; *out_value gets a malloc'd copy of row 0
 * column 0 (NULL when no row or NULL). */
bool db_sync_query1(struct db_sync *s, const char *sql, int nparams,
    const char *const *params, char **out_value, char *err,
    size_t errlen) WUR;
void db_sync_close(struct db_sync *s);

#endif

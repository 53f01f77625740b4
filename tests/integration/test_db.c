/* test_db.c - the database pool and migrations against a real PostgreSQL. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>

#include "db.h"
#include "log.h"
#include "migrate.h"

#define SKIP 77

static int failures;
static int checks;
static struct event_base *base;
static char admin_conninfo[1024];
static char created_dbs[8][64];
static int ncreated;
/* Set while db_query / db_batch_submit run: a callback seeing it set was
 * called from inside the submit call, which the pool must never do. */
static bool in_submit;
static int reentrant_calls;

/* the private server for the restart test */
static char pg_dir[256];
static char pg_bindir[512];
static int pg_port;
static bool pg_as_postgres;
static volatile pid_t pg_postmaster;

PRINTF_LIKE(2, 3) static void
check_result(bool ok, const char *fmt, ...)
{
	va_list ap;

	checks++;
	if (!ok)
		failures++;
	printf("%s - ", ok ? "ok" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* The condition runs before the message's arguments are read. */
#define check(cond, ...) do {					\
	bool check_ok_ = (cond);					\
	check_result(check_ok_, __VA_ARGS__);				\
} while (0)

PRINTF_LIKE(1, 2) __attribute__((noreturn)) static void
die(const char *fmt, ...)
{
	va_list ap;

	printf("FAIL - fatal: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	exit(1);
}

/* ------------------------------------------------------------------ */
/* running the loop */

static bool loop_expired;

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	loop_expired = true;
	event_base_loopbreak(base);
}

/* Runs the loop until *flag (when given) or ms pass. */
static bool
run_until(const bool *flag, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000,
	    .tv_usec = (ms % 1000) * 1000 };
	struct event *t = evtimer_new(base, deadline_cb, NULL);

	loop_expired = false;
	evtimer_add(t, &tv);
	while (!loop_expired && (flag == NULL || !*flag))
		event_base_loop(base, EVLOOP_ONCE);
	event_free(t);
	return flag == NULL || *flag;
}

static bool
wait_connected(struct db_pool *pool, int ms)
{
	int64_t end = mono_ms() + ms;

	while (!db_pool_connected(pool) && mono_ms() < end)
		run_until(NULL, 20);
	return db_pool_connected(pool);
}

/* ------------------------------------------------------------------ */
/* query results copied out of the callback */

#define QCOLS 6

struct qres {
	bool done;
	int calls;
	enum db_status st;
	char sqlstate[6];
	char err[256];
	int rows;
	int cols;
	char v[QCOLS][64];
	bool isnull[QCOLS];
	uint64_t affected;
	int64_t t_sub;
	int64_t t_done;
};

static void
copy_res(struct qres *q, const struct db_res *r)
{
	q->st = db_res_status(r);
	snprintf(q->sqlstate, sizeof(q->sqlstate), "%s", db_res_sqlstate(r));
	snprintf(q->err, sizeof(q->err), "%s", db_res_error(r));
	q->rows = db_res_rows(r);
	q->cols = db_res_cols(r);
	q->affected = db_res_affected(r);
	for (int i = 0; i < QCOLS && i < q->cols && q->rows > 0; i++) {
		q->isnull[i] = db_res_isnull(r, 0, i);
		snprintf(q->v[i], sizeof(q->v[i]), "%s", db_res_get(r, 0, i));
	}
}

static void
query_cb(void *arg, const struct db_res *r)
{
	struct qres *q = arg;

	if (in_submit)
		reentrant_calls++;
	q->calls++;
	copy_res(q, r);
	q->t_done = mono_ms();
	q->done = true;
}

static bool
submit(struct db_pool *pool, struct qres *q, const char *sql, int n,
    const char *const *params)
{
	bool ok;

	memset(q, 0, sizeof(*q));
	q->t_sub = mono_ms();
	in_submit = true;
	ok = db_query(pool, sql, n, params, query_cb, q);
	in_submit = false;
	return ok;
}

/* Runs one statement and waits for it. */
static bool
run_query(struct db_pool *pool, struct qres *q, const char *sql, int n,
    const char *const *params, int wait_ms)
{
	if (!submit(pool, q, sql, n, params))
		return false;
	return run_until(&q->done, wait_ms);
}

struct bres {
	bool done;
	int calls;
	enum db_status st;
	int n;
	enum db_status rst[16];
	char sqlstate[16][6];
	char v0[16][64];
};

static void
batch_cb(void *arg, enum db_status st, const struct db_res *const *res,
    int n)
{
	struct bres *b = arg;

	if (in_submit)
		reentrant_calls++;
	b->calls++;
	b->st = st;
	b->n = n;
	for (int i = 0; i < n && i < 16; i++) {
		b->rst[i] = db_res_status(res[i]);
		snprintf(b->sqlstate[i], 6, "%s", db_res_sqlstate(res[i]));
		if (db_res_rows(res[i]) > 0)
			snprintf(b->v0[i], 64, "%s", db_res_get(res[i], 0, 0));
	}
	b->done = true;
}

static bool
run_batch(struct db_pool *pool, struct db_batch *b, struct bres *r)
{
	bool ok;

	memset(r, 0, sizeof(*r));
	in_submit = true;
	ok = db_batch_submit(pool, b, batch_cb, r);
	in_submit = false;
	return ok && run_until(&r->done, 10000);
}

/* ------------------------------------------------------------------ */
/* databases */

/* conninfo values in single quotes, with \ and ' escaped */
static void
ci_append(char *buf, size_t len, const char *key, const char *val)
{
	size_t off = strlen(buf);

	if (val == NULL || *val == '\0')
		return;
	off += (size_t)snprintf(buf + off, len - off, "%s%s='", off ? " " : "",
	    key);
	for (; *val && off + 3 < len; val++) {
		if (*val == '\\' || *val == '\'')
			buf[off++] = '\\';
		buf[off++] = *val;
	}
	snprintf(buf + off, len - off, "'");
}

static void
conninfo_for(char *buf, size_t len, const char *dbname)
{
	buf[0] = '\0';
	ci_append(buf, len, "host", getenv("GRIDD_TEST_PGHOST"));
	ci_append(buf, len, "port", getenv("GRIDD_TEST_PGPORT"));
	ci_append(buf, len, "user", getenv("GRIDD_TEST_PGUSER"));
	ci_append(buf, len, "dbname", dbname);
}

static void
admin_exec(const char *sql)
{
	char err[512];
	struct db_sync *s = db_sync_connect(admin_conninfo, 10, err,
	    sizeof(err));

	if (s == NULL)
		die("connect to the test server: %s", err);
	if (!db_sync_exec(s, sql, err, sizeof(err)))
		die("%s: %s", sql, err);
	db_sync_close(s);
}

/* A fresh database named after the test and the pid; dropped at exit. */
static void
create_db(const char *suffix, char *conninfo, size_t len)
{
	char name[64], sql[128];

	if (ncreated == (int)(sizeof(created_dbs) / sizeof(created_dbs[0])))
		die("too many test databases");
	snprintf(name, sizeof(name), "gridd_test_db_%ld_%s", (long)getpid(),
	    suffix);
	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s", name);
	admin_exec(sql);
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
	admin_exec(sql);
	snprintf(created_dbs[ncreated++], sizeof(created_dbs[0]), "%s", name);
	conninfo_for(conninfo, len, name);
}

/* One value from a blocking session, "" on NULL, "<error>" on failure. */
static void
sync_value(const char *conninfo, const char *sql, char *out, size_t len)
{
	char err[512];
	char *v = NULL;
	struct db_sync *s = db_sync_connect(conninfo, 10, err, sizeof(err));

	snprintf(out, len, "<error>");
	if (s == NULL)
		return;
	if (db_sync_query1(s, sql, 0, NULL, &v, err, sizeof(err)))
		snprintf(out, len, "%s", v != NULL ? v : "");
	else
		printf("# %s: %s\n", sql, err);
	free(v);
	db_sync_close(s);
}

/* ------------------------------------------------------------------ */
/* the pool */

static struct db_pool_opts
pool_opts(const char *conninfo, int size, int timeout_ms, int max_waiting)
{
	struct db_pool_opts o = {
		.conninfo = conninfo,
		.pool_size = size,
		.query_timeout_ms = timeout_ms,
		.max_waiting = max_waiting,
		.reconnect_max_ms = 1000,
		.application_name = "gridd-test",
	};

	return o;
}

static struct db_pool *
new_pool(const struct db_pool_opts *o)
{
	const char *err = NULL;
	struct db_pool *pool = db_pool_new(base, o, &err);

	if (pool == NULL)
		die("db_pool_new: %s", err);
	return pool;
}

static void
test_queries(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 2, 2000, 16);
	struct db_pool *pool = new_pool(&o);
	struct qres q;
	const char *p2[2] = { "41", NULL };
	const char *p1[1];
	struct db_stats st;

	check(wait_connected(pool, 5000), "pool connects");
	check(run_query(pool, &q,
	    "SELECT $1::int + 1, $2::text IS NULL, $2::text, "
	    "current_setting('application_name'), "
	    "current_setting('statement_timeout')", 2, p2, 5000) &&
	    q.st == DB_OK, "parameterised query runs (%s)", q.err);
	check(q.rows == 1 && q.cols == 5 && strcmp(q.v[0], "42") == 0,
	    "text parameter arrives and result reads back (got %s)", q.v[0]);
	check(strcmp(q.v[1], "t") == 0 && q.isnull[2] && !q.isnull[0],
	    "NULL parameter is SQL NULL and reads back as NULL");
	check(strcmp(q.v[3], "gridd-test") == 0,
	    "application_name is set (got %s)", q.v[3]);
	check(strcmp(q.v[4], "2500ms") == 0,
	    "statement_timeout is set per session (got %s)", q.v[4]);

	check(run_query(pool, &q, "CREATE TABLE t (id int PRIMARY KEY, "
	    "v text, d double precision)", 0, NULL, 5000) && q.st == DB_OK,
	    "CREATE TABLE (%s)", q.err);
	check(run_query(pool, &q, "INSERT INTO t VALUES (1, 'a', 1.5), "
	    "(2, NULL, NULL), (3, 'c', -2)", 0, NULL, 5000) &&
	    q.st == DB_OK && q.affected == 3, "INSERT reports 3 rows (%llu)",
	    (unsigned long long)q.affected);
	p1[0] = "1";
	check(run_query(pool, &q, "SELECT id, v, d, id::text || 'x' FROM t "
	    "WHERE id = $1", 1, p1, 5000) && q.st == DB_OK && q.rows == 1 &&
	    strcmp(q.v[1], "a") == 0 && strcmp(q.v[2], "1.5") == 0,
	    "SELECT by parameter");


	/* SQL errors */
	check(run_query(pool, &q, "SELECT 1/0", 0, NULL, 5000) &&
	    q.st == DB_SQL_ERROR && strcmp(q.sqlstate, "22012") == 0 &&
	    q.err[0] != '\0', "division by zero is DB_SQL_ERROR 22012 (%s)",
	    q.err);
	check(run_query(pool, &q, "SELEC 1", 0, NULL, 5000) &&
	    q.st == DB_SQL_ERROR && strcmp(q.sqlstate, "42601") == 0,
	    "syntax error is DB_SQL_ERROR 42601 (%s)", q.sqlstate);
	p1[0] = "1";
	check(run_query(pool, &q, "INSERT INTO t (id) VALUES ($1)", 1, p1,
	    5000) && q.st == DB_SQL_ERROR && strcmp(q.sqlstate, "23505") == 0,
	    "unique violation is 23505");
	check(run_query(pool, &q, "SELECT count(*) FROM t", 0, NULL, 5000) &&
	    q.st == DB_OK && strcmp(q.v[0], "3") == 0,
	    "the session is usable after errors");

	db_pool_stats(pool, &st);
	check(st.size == 2 && st.connected == 2 && st.busy == 0 &&
	    st.waiting == 0 && st.errors == 3 && st.queries == 8,
	    "stats: size=%d connected=%d busy=%d errors=%llu queries=%llu",
	    st.size, st.connected, st.busy, (unsigned long long)st.errors,
	    (unsigned long long)st.queries);
	check(db_pool_pending(pool) == 0, "nothing pending");
	db_pool_free(pool);
}

/* Reads typed values through the accessors inside the callback. */
struct typed {
	bool done;
	bool big_ok, garbage_refused, dbl_ok, null_refused, nan_refused;
	bool oob_null, oob_isnull;
	int64_t big;
	double d;
};

static void
typed_cb(void *arg, const struct db_res *r)
{
	struct typed *t = arg;
	double dd;
	int64_t ii;

	t->big_ok = db_res_int64(r, 0, 0, &t->big) &&
	    t->big == 9007199254740993LL;
	t->garbage_refused = !db_res_int64(r, 0, 1, &ii);
	t->dbl_ok = db_res_double(r, 0, 2, &t->d) && t->d == 2.25;
	t->null_refused = !db_res_double(r, 0, 3, &dd) &&
	    db_res_isnull(r, 0, 3);
	t->nan_refused = !db_res_double(r, 0, 4, &dd);
	t->oob_null = db_res_get(r, 1, 0) == NULL &&
	    db_res_get(r, 0, 99) == NULL && db_res_get(r, -1, 0) == NULL;
	t->oob_isnull = db_res_isnull(r, 5, 5);
	t->done = true;
}

static void
test_accessors(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 2000, 4);
	struct db_pool *pool = new_pool(&o);
	struct typed t = { 0 };

	check(db_query(pool, "SELECT 9007199254740993::bigint, '12x', "
	    "2.25::float8, NULL::float8, 'NaN'::float8", 0, NULL, typed_cb,
	    &t) && run_until(&t.done, 5000), "typed query");
	check(t.big_ok, "db_res_int64 reads a 64-bit value exactly");
	check(t.garbage_refused, "db_res_int64 refuses '12x'");
	check(t.dbl_ok && t.null_refused && t.nan_refused,
	    "db_res_double reads 2.25, refuses NULL and NaN");
	check(t.oob_null && t.oob_isnull,
	    "cells outside the result read as NULL");
	db_pool_free(pool);
}

static void
test_batches(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 2, 3000, 16);
	struct db_pool *pool = new_pool(&o);
	struct db_batch *b;
	struct bres r;
	struct qres q, q2;
	const char *p[2];

	check(wait_connected(pool, 5000), "batch pool connects");
	check(run_query(pool, &q, "CREATE TABLE bt (id int PRIMARY KEY, "
	    "v text)", 0, NULL, 5000) && q.st == DB_OK, "create bt");

	b = db_batch_new();
	for (int i = 1; i <= 3; i++) {
		char id[8];

		snprintf(id, sizeof(id), "%d", i);
		p[0] = id;
		p[1] = i == 2 ? NULL : "v";
		db_batch_add(b, "INSERT INTO bt VALUES ($1::int, $2)", 2, p);
	}
	db_batch_add(b, "SELECT count(*) FROM bt", 0, NULL);
	check(db_batch_count(b) == 4, "batch counts its statements");
	check(run_batch(pool, b, &r) && r.st == DB_OK && r.n == 4 &&
	    r.rst[0] == DB_OK && r.rst[3] == DB_OK &&
	    strcmp(r.v0[3], "3") == 0,
	    "batch commits and sees its own rows (status=%d n=%d count=%s)",
	    r.st, r.n, r.v0[3]);
	check(run_query(pool, &q, "SELECT count(*) FROM bt", 0, NULL, 5000) &&
	    strcmp(q.v[0], "3") == 0, "batch rows are committed");

	b = db_batch_new();
	p[1] = "w";
	p[0] = "10";
	db_batch_add(b, "INSERT INTO bt VALUES ($1::int, $2)", 2, p);
	p[0] = "11";
	db_batch_add(b, "INSERT INTO bt VALUES ($1::int, $2)", 2, p);
	p[0] = "1";
	db_batch_add(b, "INSERT INTO bt VALUES ($1::int, $2)", 2, p);
	p[0] = "12";
	db_batch_add(b, "INSERT INTO bt VALUES ($1::int, $2)", 2, p);
	check(run_batch(pool, b, &r) && r.st == DB_SQL_ERROR && r.n == 4,
	    "failing batch reports DB_SQL_ERROR (status=%d)", r.st);
	check(r.rst[2] == DB_SQL_ERROR && strcmp(r.sqlstate[2], "23505") == 0,
	    "the failing statement carries its sqlstate (%s)", r.sqlstate[2]);
	check(r.rst[3] == DB_SQL_ERROR, "statements after it did not run");
	check(run_query(pool, &q, "SELECT count(*) FROM bt", 0, NULL, 5000) &&
	    strcmp(q.v[0], "3") == 0,
	    "failing batch rolled back everything (count=%s)", q.v[0]);

	/* Both sessions must be out of the aborted transaction: load both. */
	check(submit(pool, &q, "SELECT pg_sleep(0.1), "
	    "txid_current_if_assigned() IS NULL", 0, NULL) &&
	    submit(pool, &q2, "SELECT pg_sleep(0.1), "
	    "txid_current_if_assigned() IS NULL", 0, NULL),
	    "two concurrent queries accepted");
	run_until(&q.done, 5000);
	run_until(&q2.done, 5000);
	check(q.st == DB_OK && q2.st == DB_OK && strcmp(q.v[1], "t") == 0 &&
	    strcmp(q2.v[1], "t") == 0,
	    "every session is idle outside a transaction after the batch "
	    "(%s / %s)", q.err, q2.err);

	/* A failure at COMMIT (deferred constraint) rolls back too. */
	check(run_query(pool, &q, "CREATE TABLE dt (k int, CONSTRAINT dt_u "
	    "UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)", 0, NULL, 5000) &&
	    q.st == DB_OK, "create dt");
	b = db_batch_new();
	db_batch_add(b, "INSERT INTO dt VALUES (1)", 0, NULL);
	db_batch_add(b, "INSERT INTO dt VALUES (1)", 0, NULL);
	check(run_batch(pool, b, &r) && r.st == DB_SQL_ERROR &&
	    strcmp(r.sqlstate[0], "23505") == 0 &&
	    strcmp(r.sqlstate[1], "23505") == 0,
	    "a batch refused at COMMIT is DB_SQL_ERROR on every statement "
	    "(%d %s)", r.st, r.sqlstate[0]);
	check(run_query(pool, &q, "SELECT count(*) FROM dt", 0, NULL, 5000) &&
	    strcmp(q.v[0], "0") == 0, "nothing of it committed");

	b = db_batch_new();
	check(run_batch(pool, b, &r) && r.st == DB_OK && r.n == 0,
	    "an empty batch commits");

	b = db_batch_new();
	db_batch_add(b, NULL, 0, NULL);
	in_submit = true;
	check(!db_batch_submit(pool, b, batch_cb, &r),
	    "a batch with an invalid statement is refused");
	in_submit = false;
	db_pool_free(pool);
}

/* A callback that submits the next query: the chain must complete. */
struct chain {
	struct db_pool *pool;
	int left;
	int ok;
	bool done;
};

static void
chain_cb(void *arg, const struct db_res *r)
{
	struct chain *c = arg;

	if (in_submit)
		reentrant_calls++;
	if (db_res_status(r) == DB_OK)
		c->ok++;
	if (--c->left > 0) {
		in_submit = true;
		if (!db_query(c->pool, "SELECT 1", 0, NULL, chain_cb, c))
			c->done = true;
		in_submit = false;
	} else {
		c->done = true;
	}
}

static void
test_queue(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 5000, 3);
	struct db_pool *pool = new_pool(&o);
	struct qres q[6];
	struct db_stats st;
	struct chain ch = { .left = 20 };
	int accepted = 0;
	bool all;

	check(wait_connected(pool, 5000), "queue pool connects");
	for (int i = 0; i < 6; i++)
		if (submit(pool, &q[i], "SELECT pg_sleep(0.1)", 0, NULL))
			accepted++;
	db_pool_stats(pool, &st);
	check(accepted == 4, "one in flight plus max_waiting=3 accepted, "
	    "the rest refused (accepted %d)", accepted);
	check(st.waiting == 3 && st.busy == 1 && db_pool_pending(pool) == 4,
	    "stats show 3 waiting and 1 busy");
	all = true;
	for (int i = 0; i < accepted; i++)
		all = all && run_until(&q[i].done, 5000) && q[i].st == DB_OK &&
		    q[i].calls == 1;
	check(all, "every accepted query completes once, in FIFO order");
	check(q[0].t_done <= q[1].t_done && q[1].t_done <= q[2].t_done &&
	    q[2].t_done <= q[3].t_done, "completion follows submission");

	ch.pool = pool;
	in_submit = true;
	check(db_query(pool, "SELECT 1", 0, NULL, chain_cb, &ch),
	    "chain starts");
	in_submit = false;
	check(run_until(&ch.done, 10000) && ch.ok == 20,
	    "callbacks submitting the next query: 20 of 20 ran (%d)", ch.ok);
	db_pool_free(pool);
}

static void
test_timeout(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 300, 4);
	struct db_pool *pool = new_pool(&o);
	struct qres q;
	struct db_stats st;
	int64_t el;

	check(wait_connected(pool, 5000), "timeout pool connects");
	check(run_query(pool, &q, "SELECT pg_sleep(5)", 0, NULL, 5000),
	    "slow query returns before it ends");
	el = q.t_done - q.t_sub;
	check(q.st == DB_TIMEOUT && el >= 250 && el < 2000,
	    "query_timeout_ms=300 gives DB_TIMEOUT after %lld ms (%s)",
	    (long long)el, q.err);
	check(run_query(pool, &q, "SELECT 2", 0, NULL, 5000) &&
	    q.st == DB_OK && strcmp(q.v[0], "2") == 0,
	    "the pool recovers after a timeout (%s)", q.err);
	db_pool_stats(pool, &st);
	check(st.timeouts == 1, "timeouts counted (%llu)",
	    (unsigned long long)st.timeouts);
	db_pool_free(pool);
}

/* A batch with its own limit: longer than query_timeout_ms on both the
 * client's timer and the server's statement_timeout, shorter as well, and
 * the session keeps the pool's limit afterwards. */
static void
test_batch_timeout(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 300, 4);
	struct db_pool *pool = new_pool(&o);
	struct db_batch *b;
	struct bres r;
	struct qres q;
	int64_t t0, el;

	check(wait_connected(pool, 5000), "batch timeout pool connects");
	/* 1.2 s: past the pool's 300 ms and the server's 800 ms. */
	b = db_batch_new();
	db_batch_timeout(b, 5000);
	db_batch_add(b, "SELECT 1", 0, NULL);
	db_batch_add(b, "SELECT pg_sleep(1.2), "
	    "current_setting('statement_timeout')", 0, NULL);
	t0 = mono_ms();
	check(run_batch(pool, b, &r) && r.st == DB_OK && r.n == 2 &&
	    r.rst[0] == DB_OK && strcmp(r.v0[0], "1") == 0 &&
	    r.rst[1] == DB_OK,
	    "a batch with its own 5000 ms limit outlives query_timeout_ms=300 "
	    "(status=%d %d %d, %lld ms)", r.st, r.rst[0], r.rst[1],
	    (long long)(mono_ms() - t0));
	check(run_query(pool, &q, "SELECT current_setting('statement_timeout')",
	    0, NULL, 5000) && q.st == DB_OK && strcmp(q.v[0], "800ms") == 0,
	    "the session keeps the pool's statement_timeout after it (%s)",
	    q.v[0]);

	/* Shorter than the pool's: the batch's own limit ends it. */
	db_pool_free(pool);
	o = pool_opts(conninfo, 1, 10000, 4);
	pool = new_pool(&o);
	check(wait_connected(pool, 5000), "second pool connects");
	b = db_batch_new();
	db_batch_timeout(b, 300);
	db_batch_add(b, "SELECT pg_sleep(5)", 0, NULL);
	t0 = mono_ms();
	check(run_batch(pool, b, &r), "a slow batch returns before it ends");
	el = mono_ms() - t0;
	check(r.st == DB_TIMEOUT && r.rst[0] == DB_TIMEOUT && el >= 250 &&
	    el < 3000, "its own 300 ms limit gives DB_TIMEOUT after %lld ms "
	    "(status=%d)", (long long)el, r.st);
	check(run_query(pool, &q, "SELECT 2", 0, NULL, 5000) &&
	    q.st == DB_OK && strcmp(q.v[0], "2") == 0,
	    "the pool recovers after it (%s)", q.err);

	b = db_batch_new();
	db_batch_timeout(b, 0);
	db_batch_add(b, "SELECT 1", 0, NULL);
	in_submit = true;
	check(!db_batch_submit(pool, b, batch_cb, &r),
	    "a batch with a limit out of range is refused");
	in_submit = false;
	db_pool_free(pool);
}

/* A request whose client waited before it was submitted (queued behind
 * other work in the caller) gets what is left of its limit, and none when
 * nothing is. */
static void
test_waited(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 1000, 4);
	struct db_pool *pool = new_pool(&o);
	struct db_batch *b;
	struct bres r;
	struct qres q;
	int64_t t0, el;

	check(wait_connected(pool, 5000), "waited pool connects");
	memset(&q, 0, sizeof(q));
	in_submit = true;
	check(!db_query_waited(pool, 1000, "SELECT 1", 0, NULL, query_cb, &q) &&
	    !db_query_waited(pool, 86400001, "SELECT 1", 0, NULL, query_cb,
	    &q), "a query whose client waited the whole limit is refused");
	check(!db_query_waited(pool, 901, "SELECT 1", 0, NULL, query_cb, &q) &&
	    db_too_late(pool, 901) && !db_too_late(pool, 900) &&
	    !db_too_late(pool, 0),
	    "and one with less than a tenth of it left (99 ms of 1000)");
	in_submit = false;
	check(q.calls == 0, "and its callback never runs");

	memset(&q, 0, sizeof(q));
	q.t_sub = mono_ms();
	check(db_query_waited(pool, 700, "SELECT pg_sleep(5)", 0, NULL,
	    query_cb, &q) && run_until(&q.done, 5000),
	    "a slow query 700 ms into its client's wait returns");
	el = q.t_done - q.t_sub;
	check(q.st == DB_TIMEOUT && el >= 250 && el < 900,
	    "it gets the 300 ms left of 1000: DB_TIMEOUT after %lld ms (%s)",
	    (long long)el, q.err);

	memset(&q, 0, sizeof(q));
	check(db_query_waited(pool, -5, "SELECT 2", 0, NULL, query_cb, &q) &&
	    run_until(&q.done, 5000) && q.st == DB_OK &&
	    strcmp(q.v[0], "2") == 0, "a wait below zero counts as none (%s)",
	    q.err);

	b = db_batch_new();
	db_batch_waited(b, 700);
	db_batch_add(b, "SELECT pg_sleep(5)", 0, NULL);
	t0 = mono_ms();
	check(run_batch(pool, b, &r), "a slow batch 700 ms in returns");
	el = mono_ms() - t0;
	check(r.st == DB_TIMEOUT && el >= 250 && el < 900,
	    "it gets the 300 ms left: DB_TIMEOUT after %lld ms (status=%d)",
	    (long long)el, r.st);

	b = db_batch_new();
	db_batch_waited(b, 1000);
	db_batch_add(b, "SELECT 1", 0, NULL);
	memset(&r, 0, sizeof(r));
	in_submit = true;
	check(!db_batch_submit(pool, b, batch_cb, &r),
	    "a batch whose client waited the whole limit is refused");
	in_submit = false;

	/* A batch's own limit counts from the same wait. */
	b = db_batch_new();
	db_batch_timeout(b, 3000);
	db_batch_waited(b, 2700);
	db_batch_add(b, "SELECT pg_sleep(5)", 0, NULL);
	t0 = mono_ms();
	check(run_batch(pool, b, &r), "a batch with its own limit returns");
	el = mono_ms() - t0;
	check(r.st == DB_TIMEOUT && el >= 250 && el < 900,
	    "300 ms left of its own 3000: DB_TIMEOUT after %lld ms",
	    (long long)el);
	check(run_query(pool, &q, "SELECT 3", 0, NULL, 5000) &&
	    q.st == DB_OK && strcmp(q.v[0], "3") == 0,
	    "the pool recovers after them (%s)", q.err);
	db_pool_free(pool);
}

/* New settings reach every session as it is recycled; the pool grows and
 * shrinks. */
static void
test_reconfigure(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 2000, 8);
	struct db_pool *pool = new_pool(&o);
	struct qres q[3];
	struct db_stats st;
	int64_t end;
	bool all;

	check(wait_connected(pool, 5000), "reconfigure pool connects");
	o.pool_size = 3;
	o.application_name = "gridd-test-2";
	o.query_timeout_ms = 3000;
	db_pool_reconfigure(pool, &o);
	end = mono_ms() + 5000;
	do {
		run_until(NULL, 20);
		db_pool_stats(pool, &st);
	} while (st.connected < 3 && mono_ms() < end);
	check(st.size == 3 && st.connected == 3,
	    "the pool grows to 3 sessions (%d)", st.connected);
	for (int i = 0; i < 3; i++)
		check(submit(pool, &q[i], "SELECT pg_sleep(0.1), "
		    "current_setting('application_name'), "
		    "current_setting('statement_timeout')", 0, NULL),
		    "submit %d", i);
	all = true;
	for (int i = 0; i < 3; i++)
		all = all && run_until(&q[i].done, 5000) && q[i].st == DB_OK &&
		    strcmp(q[i].v[1], "gridd-test-2") == 0 &&
		    strcmp(q[i].v[2], "3500ms") == 0;
	check(all, "every session runs with the new settings (%s %s)",
	    q[0].v[1], q[0].v[2]);
	o.pool_size = 1;
	db_pool_reconfigure(pool, &o);
	run_until(NULL, 50);
	db_pool_stats(pool, &st);
	check(st.size == 1 && st.connected == 1,
	    "the pool shrinks to 1 session (%d)", st.connected);
	check(run_query(pool, &q[0], "SELECT 1", 0, NULL, 5000) &&
	    q[0].st == DB_OK, "and still answers");
	db_pool_free(pool);
}

/* The value replan_cached() returns on the pool's one session: planned
 * with replan_knob_v() folded into a constant, as an immutable function
 * is, so the answer changes only when the session plans again. */
static int
cached_knob(struct db_pool *pool)
{
	struct qres q;

	if (!run_query(pool, &q, "SELECT replan_cached()", 0, NULL, 5000) ||
	    q.st != DB_OK)
		return -1;
	return atoi(q.v[0]);
}

static bool
set_knob(struct db_pool *pool, int v)
{
	struct qres q;
	char buf[16];
	const char *p[1] = { buf };

	snprintf(buf, sizeof(buf), "%d", v);
	return run_query(pool, &q, "UPDATE replan_knob SET v = $1", 1, p,
	    5000) && q.st == DB_OK;
}

/* A session drops its cached plans every replan_interval_ms, and not
 * before: writing a table invalidates no plan, so a plan made for a table
 * as it was (nearly empty, say) would otherwise live as long as the
 * session. */
static void
test_replan(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 2000, 8);
	struct db_pool *pool;
	struct db_stats st;
	struct db_batch *b;
	struct bres r;
	int v;

	o.replan_interval_ms = 0;
	pool = new_pool(&o);
	check(wait_connected(pool, 5000), "replan pool connects");
	b = db_batch_new();
	db_batch_add(b, "CREATE TABLE replan_knob (v integer)", 0, NULL);
	db_batch_add(b, "INSERT INTO replan_knob VALUES (1)", 0, NULL);
	db_batch_add(b, "CREATE FUNCTION replan_knob_v() RETURNS integer "
	    "LANGUAGE sql IMMUTABLE AS 'SELECT v FROM replan_knob'", 0, NULL);
	db_batch_add(b, "CREATE FUNCTION replan_cached() RETURNS integer "
	    "LANGUAGE plpgsql AS $$ BEGIN RETURN replan_knob_v(); END $$", 0,
	    NULL);
	check(run_batch(pool, b, &r) && r.st == DB_OK, "replan fixtures");
	check((v = cached_knob(pool)) == 1, "first plan sees 1 (%d)", v);
	check(set_knob(pool, 2), "knob set to 2");
	run_until(NULL, 300);
	check((v = cached_knob(pool)) == 1,
	    "with replanning off the session keeps its plan (%d)", v);
	db_pool_free(pool);

	o.replan_interval_ms = 400;
	pool = new_pool(&o);
	check(wait_connected(pool, 5000), "second replan pool connects");
	check((v = cached_knob(pool)) == 2, "a new session plans anew (%d)",
	    v);
	check(set_knob(pool, 3), "knob set to 3");
	check((v = cached_knob(pool)) == 2,
	    "within the interval the plan stays (%d)", v);
	run_until(NULL, 600);
	check((v = cached_knob(pool)) == 3,
	    "after replan_interval_ms the session plans again (%d)", v);
	check(set_knob(pool, 4) && (v = cached_knob(pool)) == 3,
	    "and keeps that plan for the next interval (%d)", v);
	db_pool_stats(pool, &st);
	check(st.connected == 1 && st.busy == 0 && st.reconnects == 0 &&
	    st.replans == 1, "replanning kept the session (connected=%d "
	    "busy=%d reconnects=%llu replans=%llu)", st.connected, st.busy,
	    (unsigned long long)st.reconnects,
	    (unsigned long long)st.replans);
	db_pool_free(pool);
}

/* Named statements: prepared once per session, at first use, in the
 * batch's own pipeline; a Parse that fails or never runs is not recorded,
 * one that ran outlives its transaction; a statement gone stale on a
 * session (missing, plan no longer fitting, name taken) fails once, and
 * the next call prepares it under a new name. */
static struct db_prepared ps_add = DB_PREPARED("SELECT $1::int + 1", 1);
static struct db_prepared ps_bad = DB_PREPARED("SELECT no_such_column_x", 0);
static struct db_prepared ps_late = DB_PREPARED("SELECT $1::text || 'x'", 1);
static struct db_prepared ps_twice = DB_PREPARED("SELECT $1::int * 2", 1);
static struct db_prepared ps_keep = DB_PREPARED("SELECT $1::int - 1", 1);
static struct db_prepared ps_taken = DB_PREPARED("SELECT 'mine'", 0);
static struct db_prepared ps_timed = DB_PREPARED("SELECT $1::int * 3", 1);
static struct db_prepared ps_squat = DB_PREPARED("SELECT 'squatted'", 0);
static struct db_prepared ps_fn = DB_PREPARED("SELECT * FROM prep_fn()", 0);

static uint64_t
prepares(struct db_pool *pool)
{
	struct db_stats st;

	db_pool_stats(pool, &st);
	return st.prepares;
}

/* One prepared statement (or none: NULL) in a batch, optionally after a
 * plain one; the batch's own timeout when timeout_ms > 0. */
static bool
run_prepared(struct db_pool *pool, const char *plain,
    struct db_prepared *ps, const char *param, int timeout_ms, struct bres *r)
{
	struct db_batch *b = db_batch_new();
	const char *p[1] = { param };

	if (plain != NULL)
		db_batch_add(b, plain, 0, NULL);
	if (ps != NULL)
		db_batch_add_prepared(b, ps, p);
	if (timeout_ms > 0)
		db_batch_timeout(b, timeout_ms);
	return run_batch(pool, b, r);
}

static void
test_prepared(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 3000, 8);
	struct db_pool *pool = new_pool(&o);
	struct db_stats st;
	struct db_batch *b;
	struct bres r;
	const char *p[1];
	char v[64], v2[64], sql[128];
	uint64_t n0, reconnects;

	check(wait_connected(pool, 5000), "prepared pool connects");
	n0 = prepares(pool);
	check(run_prepared(pool, NULL, &ps_add, "41", 0, &r) &&
	    r.st == DB_OK && strcmp(r.v0[0], "42") == 0 &&
	    prepares(pool) == n0 + 1,
	    "a prepared statement runs (%s) and is prepared once (%llu)",
	    r.v0[0], (unsigned long long)(prepares(pool) - n0));
	b = db_batch_new();
	p[0] = "1";
	db_batch_add_prepared(b, &ps_add, p);
	p[0] = "2";
	db_batch_add_prepared(b, &ps_add, p);
	db_batch_add(b, "SELECT count(*) FROM pg_prepared_statements "
	    "WHERE statement = 'SELECT $1::int + 1'", 0, NULL);
	check(run_batch(pool, b, &r) && r.st == DB_OK &&
	    strcmp(r.v0[0], "2") == 0 && strcmp(r.v0[1], "3") == 0 &&
	    strcmp(r.v0[2], "1") == 0 && prepares(pool) == n0 + 1,
	    "later uses on the session bind and execute only (%s %s, %s on "
	    "the server, %llu prepared)", r.v0[0], r.v0[1], r.v0[2],
	    (unsigned long long)(prepares(pool) - n0));
	/* Twice in the batch that first uses it: one Parse. */
	b = db_batch_new();
	p[0] = "3";
	db_batch_add_prepared(b, &ps_twice, p);
	p[0] = "4";
	db_batch_add_prepared(b, &ps_twice, p);
	check(run_batch(pool, b, &r) && r.st == DB_OK &&
	    strcmp(r.v0[0], "6") == 0 && strcmp(r.v0[1], "8") == 0 &&
	    prepares(pool) == n0 + 2,
	    "a new statement twice in one batch is parsed once (%s %s %s)",
	    r.v0[0], r.v0[1], r.sqlstate[1]);
	/* With the batch's own timeout (a SET LOCAL entry before its Parse
	 * and execution). */
	check(run_prepared(pool, NULL, &ps_timed, "3", 2000, &r) &&
	    r.st == DB_OK && strcmp(r.v0[0], "9") == 0 &&
	    prepares(pool) == n0 + 3,
	    "a new prepared statement in a batch with its own timeout (%s %s)",
	    r.v0[0], r.sqlstate[0]);
	n0++;

	/* A statement the server cannot parse fails the batch with its own
	 * reason, and is not recorded: it fails the same way again. */
	for (int k = 0; k < 2; k++)
		check(run_prepared(pool, "SELECT 1", &ps_bad, NULL, 0, &r) &&
		    r.st == DB_SQL_ERROR &&
		    strcmp(r.sqlstate[1], "42703") == 0 &&
		    prepares(pool) == n0 + 2,
		    "an unparsable prepared statement reads 42703 (%s), "
		    "round %d", r.sqlstate[1], k + 1);
	/* A Parse skipped because an earlier statement failed is not
	 * recorded either: the next use prepares it. */
	check(run_prepared(pool, "SELECT 1 / 0", &ps_late, "a", 0, &r) &&
	    r.st == DB_SQL_ERROR && strcmp(r.sqlstate[0], "22012") == 0 &&
	    r.rst[1] == DB_SQL_ERROR && prepares(pool) == n0 + 2,
	    "a Parse after a failure is not run");
	check(run_prepared(pool, NULL, &ps_late, "a", 0, &r) &&
	    r.st == DB_OK && strcmp(r.v0[0], "ax") == 0 &&
	    prepares(pool) == n0 + 3,
	    "its next use prepares and runs it (%s %s)", r.v0[0],
	    r.sqlstate[0]);
	/* One parsed in a transaction that then fails stays prepared. */
	b = db_batch_new();
	p[0] = "5";
	db_batch_add_prepared(b, &ps_keep, p);
	db_batch_add(b, "SELECT 1 / 0", 0, NULL);
	check(run_batch(pool, b, &r) && r.st == DB_SQL_ERROR &&
	    r.rst[0] == DB_OK && prepares(pool) == n0 + 4,
	    "a statement prepared in a failed transaction (%s)",
	    r.sqlstate[1]);
	check(run_prepared(pool, NULL, &ps_keep, "5", 0, &r) &&
	    r.st == DB_OK && strcmp(r.v0[0], "4") == 0 &&
	    prepares(pool) == n0 + 4,
	    "outlives the rollback: bound and executed only (%s %s)",
	    r.v0[0], r.sqlstate[0]);

	/* Gone from the session (26000): fails once, then prepared anew. */
	db_pool_stats(pool, &st);
	reconnects = st.reconnects;
	check(run_prepared(pool, "DEALLOCATE ALL", NULL, NULL, 0, &r) &&
	    r.st == DB_OK, "the session's statements deallocated");
	check(run_prepared(pool, NULL, &ps_add, "1", 0, &r) &&
	    r.st == DB_SQL_ERROR && strcmp(r.sqlstate[0], "26000") == 0,
	    "a missing prepared statement fails once (%s)", r.sqlstate[0]);
	check(run_prepared(pool, NULL, &ps_add, "1", 0, &r) &&
	    r.st == DB_OK && strcmp(r.v0[0], "2") == 0 &&
	    prepares(pool) == n0 + 5,
	    "the next call prepares it under a new name (%s %s)", r.v0[0],
	    r.sqlstate[0]);
	/* Its name taken on the session (42P05): the same.  (A new object:
	 * its first name is generation 0.) */
	b = db_batch_new();
	db_batch_add_prepared(b, &ps_taken, NULL);	/* gives it its id */
	db_batch_free(b);
	snprintf(sql, sizeof(sql), "PREPARE gridd_%d_0 AS SELECT 'squatter'",
	    ps_taken.id);
	check(run_prepared(pool, sql, NULL, NULL, 0, &r) && r.st == DB_OK,
	    "a statement's first name taken");
	check(run_prepared(pool, NULL, &ps_taken, NULL, 0, &r) &&
	    r.st == DB_SQL_ERROR && strcmp(r.sqlstate[0], "42P05") == 0,
	    "a taken name fails once (%s)", r.sqlstate[0]);
	check(run_prepared(pool, NULL, &ps_taken, NULL, 0, &r) &&
	    r.st == DB_OK && strcmp(r.v0[0], "mine") == 0,
	    "the next call prepares it under a new name (%s %s)", r.v0[0],
	    r.sqlstate[0]);

	/* Something that keeps taking its names: after eight generations
	 * the statement goes unnamed, and runs. */
	b = db_batch_new();
	db_batch_add_prepared(b, &ps_squat, NULL);
	db_batch_free(b);
	for (int g = 0; g < 8; g++) {
		snprintf(sql, sizeof(sql), "PREPARE gridd_%d_%d AS SELECT 1",
		    ps_squat.id, g);
		check(run_prepared(pool, sql, NULL, NULL, 0, &r) &&
		    r.st == DB_OK, "name %d of ps_squat taken", g);
	}
	n0 = prepares(pool);
	for (int g = 0; g < 8; g++)
		check(run_prepared(pool, NULL, &ps_squat, NULL, 0, &r) &&
		    r.st == DB_SQL_ERROR &&
		    strcmp(r.sqlstate[0], "42P05") == 0,
		    "generation %d's name taken (%s)", g, r.sqlstate[0]);
	check(run_prepared(pool, NULL, &ps_squat, NULL, 0, &r) &&
	    r.st == DB_OK && strcmp(r.v0[0], "squatted") == 0 &&
	    prepares(pool) == n0,
	    "then it goes unprepared (%s %s)", r.v0[0], r.sqlstate[0]);

	/* Another process redefines a function a prepared statement calls,
	 * with another result type: the call fails once (0A000), and the
	 * next one prepares it anew, on the same session. */
	check(run_prepared(pool, "CREATE FUNCTION prep_fn() RETURNS integer "
	    "LANGUAGE sql AS 'SELECT 7'", NULL, NULL, 0, &r) &&
	    r.st == DB_OK, "prep_fn created");
	check(run_prepared(pool, NULL, &ps_fn, NULL, 0, &r) &&
	    r.st == DB_OK && strcmp(r.v0[0], "7") == 0,
	    "prep_fn through a prepared call");
	sync_value(conninfo, "DROP FUNCTION prep_fn()", v, sizeof(v));
	sync_value(conninfo, "CREATE FUNCTION prep_fn() RETURNS text "
	    "LANGUAGE sql AS 'SELECT ''seven'''", v2, sizeof(v2));
	check(strcmp(v, "<error>") != 0 && strcmp(v2, "<error>") != 0,
	    "prep_fn redefined elsewhere");
	n0 = prepares(pool);
	check(run_prepared(pool, NULL, &ps_fn, NULL, 0, &r) &&
	    r.st == DB_SQL_ERROR && strcmp(r.sqlstate[0], "0A000") == 0,
	    "a stale prepared call fails once (%s)", r.sqlstate[0]);
	check(run_prepared(pool, NULL, &ps_fn, NULL, 0, &r) &&
	    r.st == DB_OK && strcmp(r.v0[0], "seven") == 0 &&
	    prepares(pool) == n0 + 1,
	    "the next call prepares it afresh (%s %s)", r.v0[0],
	    r.sqlstate[0]);
	db_pool_stats(pool, &st);
	check(st.reconnects == reconnects && st.connected == 1,
	    "all on the same session (reconnects %llu -> %llu)",
	    (unsigned long long)reconnects,
	    (unsigned long long)st.reconnects);
	db_pool_free(pool);
}

struct note {
	int count;
	bool done;
	char channel[80];
	char payload[80];
};

static void
notify_cb(void *arg, const char *channel, const char *payload)
{
	struct note *n = arg;

	n->count++;
	snprintf(n->channel, sizeof(n->channel), "%s", channel);
	snprintf(n->payload, sizeof(n->payload), "%s", payload);
	n->done = true;
}

/* NOTIFY until the listener (set up asynchronously) hears one. */
static bool
notify_until_heard(struct db_pool *pool, const char *channel,
    const char *payload, struct note *n, int ms)
{
	int64_t end = mono_ms() + ms;
	const char *p[2] = { channel, payload };

	while (!n->done && mono_ms() < end) {
		struct qres q;

		if (run_query(pool, &q, "SELECT pg_notify($1, $2)", 2, p, 2000)
		    && q.st != DB_OK)
			printf("# pg_notify: %s\n", q.err);
		run_until(&n->done, 100);
	}
	return n->done;
}

static void
test_listen(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 2000, 4);
	struct db_pool *pool = new_pool(&o);
	struct note a = { 0 }, b = { 0 };
	const char *odd = "gridd \"odd\" Channel";

	check(db_listen(pool, odd, notify_cb, &a), "db_listen accepted");
	check(!db_listen(pool, "", notify_cb, &a) &&
	    !db_listen(pool, "0123456789012345678901234567890123456789"
	    "012345678901234567890123456789", notify_cb, &a),
	    "empty and over-long channel names refused");
	check(notify_until_heard(pool, odd, "hello", &a, 5000) &&
	    strcmp(a.channel, odd) == 0 && strcmp(a.payload, "hello") == 0,
	    "NOTIFY reaches the callback with channel and payload");
	check(db_listen(pool, "gridd_second", notify_cb, &b),
	    "second channel accepted");
	check(notify_until_heard(pool, "gridd_second", "two", &b, 5000) &&
	    strcmp(b.payload, "two") == 0, "second channel delivers");
	db_pool_free(pool);
}

struct freed {
	struct db_pool *pool;
	int calls;
	int unavailable;
	int refused_resubmit;
};

static void
freed_cb(void *arg, const struct db_res *r)
{
	struct freed *f = arg;

	f->calls++;
	if (db_res_status(r) == DB_UNAVAILABLE)
		f->unavailable++;
	if (!db_query(f->pool, "SELECT 1", 0, NULL, freed_cb, f))
		f->refused_resubmit++;
}

static void
test_free_pending(const char *conninfo)
{
	struct db_pool_opts o = pool_opts(conninfo, 1, 5000, 8);
	struct db_pool *pool = new_pool(&o);
	struct freed f = { .pool = pool };
	const char *err = NULL;
	struct db_pool_opts bad = pool_opts("host='unterminated", 1, 100, 1);

	check(wait_connected(pool, 5000), "free pool connects");
	for (int i = 0; i < 3; i++)
		if (!db_query(pool, "SELECT pg_sleep(2)", 0, NULL, freed_cb,
		    &f))
			check(false, "submit %d", i);
	run_until(NULL, 200);
	check(f.calls == 0, "nothing completed yet");
	db_pool_free(pool);
	check(f.calls == 3 && f.unavailable == 3,
	    "db_pool_free fails pending requests with DB_UNAVAILABLE "
	    "(calls=%d unavailable=%d)", f.calls, f.unavailable);
	check(f.refused_resubmit == 3,
	    "submitting from those callbacks is refused");

	check(db_pool_new(base, &bad, &err) == NULL && err != NULL,
	    "a bad conninfo is refused (%s)", err ? err : "");
}

/* ------------------------------------------------------------------ */
/* migrations */

static void
write_file(const char *dir, const char *name, const char *text)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		die("write %s: %s", path, strerror(errno));
}

static void
remove_file(const char *dir, const char *name)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	unlink(path);
}

static int
run_argv(char *const argv[], const char *logpath)
{
	pid_t pid;
	int status;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		if (logpath != NULL) {
			int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND,
			    0644);

			if (fd >= 0) {
				dup2(fd, 1);
				dup2(fd, 2);
			}
		}
		execvp(argv[0], argv);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void
remove_tree(const char *dir)
{
	char *argv[] = { "rm", "-rf", (char *)dir, NULL };

	if (dir[0] != '\0')
		(void)run_argv(argv, NULL);
}

static void
make_tempdir(char *out, size_t len, const char *what)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(out, len, "%s/gridd-%s-XXXXXX",
	    tmp != NULL && *tmp ? tmp : P_tmpdir, what);
	if (mkdtemp(out) == NULL)
		die("mkdtemp: %s", strerror(errno));
}

/* Two processes migrating one fresh database at the same moment. */
static void
concurrent_migrate(const char *conninfo, const char *dir, const char *what)
{
	pid_t pids[2];
	int ok = 0;

	fflush(stdout);
	for (int i = 0; i < 2; i++) {
		pids[i] = fork();
		if (pids[i] < 0)
			die("fork: %s", strerror(errno));
		if (pids[i] == 0)
			_exit(migrate_run(conninfo, dir, 60) ? 0 : 1);
	}
	for (int i = 0; i < 2; i++) {
		int status;

		if (waitpid(pids[i], &status, 0) == pids[i] &&
		    WIFEXITED(status) && WEXITSTATUS(status) == 0)
			ok++;
	}
	check(ok == 2, "two concurrent migrate_run on %s both succeed", what);
}

static int
count_sql_files(const char *dir)
{
	char cmd[600], v[32];
	int n = 0;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "ls '%s' | grep -c '^[0-9][0-9][0-9]_.*"
	    "\\.sql$'", dir);
	p = popen(cmd, "r");
	if (p != NULL && fgets(v, sizeof(v), p) != NULL)
		n = atoi(v);
	if (p != NULL)
		pclose(p);
	return n;
}

static void
test_migrations(void)
{
	const char *src = getenv("GRIDD_SOURCE_DIR");
	char sqldir[512], ci[1024], ci2[1024], ci3[1024], ci4[1024];
	char v[128], v2[128], tdir[256];
	int nfiles;

	if (src == NULL)
		die("GRIDD_SOURCE_DIR is not set (meson sets it)");
	snprintf(sqldir, sizeof(sqldir), "%s/sql", src);
	nfiles = count_sql_files(sqldir);
	check(nfiles >= 1, "the project ships %d migration(s)", nfiles);

	create_db("mig", ci, sizeof(ci));
	check(migrate_run(ci, sqldir, 60), "migrate_run applies sql/");
	sync_value(ci, "SELECT count(*) || ':' || max(applied_at)::text "
	    "FROM schema_version", v, sizeof(v));
	check(atoi(v) == nfiles, "schema_version has one row per file (%s)",
	    v);
	sync_value(ci, "SELECT postgis_lib_version() IS NOT NULL", v2,
	    sizeof(v2));
	check(strcmp(v2, "t") == 0, "PostGIS is installed by 001");
	sync_value(ci, "SELECT count(*) FROM information_schema.tables "
	    "WHERE table_schema = 'public' AND table_name IN ('communities',"
	    "'buildings','cells','departments','task_types','workers',"
	    "'sessions','incidents','incident_sources','assignments',"
	    "'assignment_actions','events','department_seq','timers',"
	    "'complaints','crosswalk','department_layers','rejections',"
	    "'worker_checkins')", v2, sizeof(v2));
	check(strcmp(v2, "19") == 0, "the core tables exist (%s of 19)", v2);
	check(migrate_run(ci, sqldir, 60), "migrate_run again succeeds");
	sync_value(ci, "SELECT count(*) || ':' || max(applied_at)::text "
	    "FROM schema_version", v2, sizeof(v2));
	check(strcmp(v, v2) == 0, "the second run applied nothing (%s)", v2);

	/* synthetic migrations: gaps, late files, failures, bad names */
	make_tempdir(tdir, sizeof(tdir), "mig");
	write_file(tdir, "001_hits.sql", "CREATE TABLE hits (n int);\n");
	write_file(tdir, "003_three.sql",
	    "-- several statements in one file\n"
	    "INSERT INTO hits VALUES (3);\nINSERT INTO hits VALUES (30);\n");
	write_file(tdir, "README", "not a migration\n");
	create_db("mig2", ci2, sizeof(ci2));
	check(migrate_run(ci2, tdir, 30), "a gap in the numbers is allowed");
	write_file(tdir, "002_two.sql", "INSERT INTO hits VALUES (2);\n");
	check(migrate_run(ci2, tdir, 30), "a late lower number applies");
	sync_value(ci2, "SELECT string_agg(version::text, ',' ORDER BY "
	    "version) || '/' || (SELECT string_agg(n::text, ',' ORDER BY n) "
	    "FROM hits) FROM schema_version", v, sizeof(v));
	check(strcmp(v, "1,2,3/2,3,30") == 0,
	    "each file applied once (%s)", v);

	write_file(tdir, "004_bad.sql", "INSERT INTO hits VALUES (4);\n"
	    "\nSELECT no_such_column FROM hits;\n");
	check(!migrate_run(ci2, tdir, 30), "a failing migration fails the run");
	sync_value(ci2, "SELECT (SELECT count(*) FROM schema_version WHERE "
	    "version = 4) || '/' || (SELECT count(*) FROM hits WHERE n = 4)",
	    v, sizeof(v));
	check(strcmp(v, "0/0") == 0,
	    "the failed file left nothing behind (%s)", v);
	remove_file(tdir, "004_bad.sql");

	write_file(tdir, "5_short.sql", "SELECT 1;\n");
	check(!migrate_run(ci2, tdir, 30), "a badly named .sql is refused");
	remove_file(tdir, "5_short.sql");
	write_file(tdir, "005_Upper.sql", "SELECT 1;\n");
	check(!migrate_run(ci2, tdir, 30), "upper case in a name is refused");
	remove_file(tdir, "005_Upper.sql");
	write_file(tdir, "005_a.sql", "INSERT INTO hits VALUES (5);\n");
	write_file(tdir, "005_b.sql", "INSERT INTO hits VALUES (5);\n");
	check(!migrate_run(ci2, tdir, 30), "a duplicate number is refused");
	sync_value(ci2, "SELECT count(*) FROM hits WHERE n = 5", v, sizeof(v));
	check(strcmp(v, "0") == 0, "nothing applied from a refused dir");
	remove_file(tdir, "005_b.sql");
	remove_file(tdir, "005_a.sql");

	/* Two processes at once, on files that take a while. */
	write_file(tdir, "002_two.sql",
	    "SELECT pg_sleep(0.5);\nINSERT INTO hits VALUES (2);\n");
	create_db("mig3", ci3, sizeof(ci3));
	concurrent_migrate(ci3, tdir, "slow files");
	sync_value(ci3, "SELECT (SELECT count(*) FROM schema_version) || '/' "
	    "|| (SELECT count(*) FROM hits)", v, sizeof(v));
	check(strcmp(v, "3/3") == 0,
	    "each file applied exactly once (versions/rows %s)", v);
	create_db("mig4", ci4, sizeof(ci4));
	concurrent_migrate(ci4, sqldir, "the project's sql/");
	sync_value(ci4, "SELECT count(*) FROM schema_version", v, sizeof(v));
	check(atoi(v) == nfiles, "project migrations applied once (%s)", v);
	remove_tree(tdir);
}

/* ------------------------------------------------------------------ */
/* a private server, stopped and started under a live pool */

static int
pg_run(const char *tool, const char *const *args, int nargs)
{
	char prog[700], logpath[300];
	char *argv[24];
	int n = 0;

	snprintf(prog, sizeof(prog), "%s/%s", pg_bindir, tool);
	snprintf(logpath, sizeof(logpath), "%s/tools.log", pg_dir);
	if (pg_as_postgres) {
		argv[n++] = "runuser";
		argv[n++] = "-u";
		argv[n++] = "postgres";
		argv[n++] = "--";
	}
	argv[n++] = prog;
	for (int i = 0; i < nargs && n < 23; i++)
		argv[n++] = (char *)args[i];
	argv[n] = NULL;
	return run_argv(argv, logpath);
}

static void
pg_read_pid(void)
{
	char path[300], line[32];
	FILE *f;

	snprintf(path, sizeof(path), "%s/data/postmaster.pid", pg_dir);
	f = fopen(path, "r");
	if (f != NULL && fgets(line, sizeof(line), f) != NULL)
		pg_postmaster = (pid_t)atol(line);
	if (f != NULL)
		fclose(f);
}

static bool
pg_start(void)
{
	char data[300], logf[300];
	const char *args[] = { "-D", data, "-l", logf, "-w", "-t", "60",
	    "start" };

	snprintf(data, sizeof(data), "%s/data", pg_dir);
	snprintf(logf, sizeof(logf), "%s/server.log", pg_dir);
	if (pg_run("pg_ctl", args, 8) != 0)
		return false;
	pg_read_pid();
	return true;
}

static bool
pg_stop(void)
{
	char data[300];
	const char *args[] = { "-D", data, "-m", "immediate", "-w", "stop" };

	snprintf(data, sizeof(data), "%s/data", pg_dir);
	if (pg_run("pg_ctl", args, 6) != 0)
		return false;
	pg_postmaster = 0;
	return true;
}

static void
find_bindir(void)
{
	FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
	char path[600];

	pg_bindir[0] = '\0';
	if (p != NULL) {
		if (fgets(pg_bindir, sizeof(pg_bindir), p) != NULL)
			pg_bindir[strcspn(pg_bindir, "\n")] = '\0';
		pclose(p);
	}
	snprintf(path, sizeof(path), "%s/initdb", pg_bindir);
	if (pg_bindir[0] == '\0' || access(path, X_OK) != 0)
		snprintf(pg_bindir, sizeof(pg_bindir), "%s",
		    "/usr/lib/postgresql/15/bin");
}

static int
free_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	int port = 0;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sin, &len) == 0)
		port = ntohs(sin.sin_port);
	if (fd >= 0)
		close(fd);
	return port > 0 ? port : 54000 + (int)(getpid() % 1000);
}

static void
pg_setup(void)
{
	char data[300], conf[400], line[600];
	const char *init[] = { "-D", data, "-A", "trust", "--no-sync", "-U",
	    "postgres", "--no-locale", "-E", "UTF8" };
	FILE *f;

	find_bindir();
	make_tempdir(pg_dir, sizeof(pg_dir), "pg");
	pg_as_postgres = geteuid() == 0;
	if (pg_as_postgres) {
		struct passwd *pw = getpwnam("postgres");

		if (pw == NULL || chown(pg_dir, pw->pw_uid, pw->pw_gid) != 0)
			die("running as root needs a postgres user to own %s",
			    pg_dir);
	}
	snprintf(data, sizeof(data), "%s/data", pg_dir);
	if (pg_run("initdb", init, 10) != 0)
		die("initdb failed (see %s/tools.log)", pg_dir);
	pg_port = free_port();
	snprintf(conf, sizeof(conf), "%s/postgresql.conf", data);
	f = fopen(conf, "a");
	if (f == NULL)
		die("open %s: %s", conf, strerror(errno));
	/* Unix socket only, in the private folder; durability off: this
	 * server's data is thrown away. */
	snprintf(line, sizeof(line), "port = %d\nlisten_addresses = ''\n"
	    "unix_socket_directories = '%s'\nfsync = off\n"
	    "synchronous_commit = off\nfull_page_writes = off\n"
	    "max_connections = 20\n", pg_port, pg_dir);
	if (fputs(line, f) < 0 || fclose(f) != 0)
		die("write %s", conf);
}

static void
test_restart(void)
{
	char ci[1024], port[16];
	struct db_pool_opts o;
	struct db_pool *pool;
	struct qres q, inflight, outage[8];
	struct note n = { 0 };
	struct db_stats st;
	int64_t end;
	int ok_after = 0, bad = 0, completed = 0, submitted = 0;
	bool recovered = false;

	pg_setup();
	check(pg_start(), "private server starts on port %d", pg_port);
	snprintf(port, sizeof(port), "%d", pg_port);
	ci[0] = '\0';
	ci_append(ci, sizeof(ci), "host", pg_dir);
	ci_append(ci, sizeof(ci), "port", port);
	ci_append(ci, sizeof(ci), "user", "postgres");
	ci_append(ci, sizeof(ci), "dbname", "postgres");
	o = pool_opts(ci, 2, 1500, 32);
	o.reconnect_max_ms = 400;
	pool = new_pool(&o);
	check(wait_connected(pool, 10000), "pool connects to it");
	check(run_query(pool, &q, "SELECT 1", 0, NULL, 5000) && q.st == DB_OK,
	    "queries succeed");
	check(db_listen(pool, "gridd_restart", notify_cb, &n), "listening");

	check(submit(pool, &inflight, "SELECT pg_sleep(30)", 0, NULL),
	    "a long query goes out");
	run_until(NULL, 200);
	check(pg_stop(), "server stopped (immediate)");
	run_until(&inflight.done, 5000);
	check(inflight.done && inflight.st == DB_UNAVAILABLE,
	    "the query in flight fails with DB_UNAVAILABLE (status=%d %s)",
	    inflight.st, inflight.err);

	/* During the outage every request ends within its timeout. */
	for (int i = 0; i < 8; i++) {
		if (submit(pool, &outage[i], "SELECT 1", 0, NULL))
			submitted++;
		run_until(NULL, 250);
	}
	run_until(NULL, 2500);
	for (int i = 0; i < submitted; i++) {
		int64_t el = outage[i].t_done - outage[i].t_sub;

		if (!outage[i].done)
			continue;
		completed++;
		if ((outage[i].st != DB_UNAVAILABLE &&
		    outage[i].st != DB_TIMEOUT) || el > 1500 + 1000)
			bad++;
	}
	check(submitted == 8 && completed == submitted && bad == 0,
	    "requests during the outage fail with DB_UNAVAILABLE/DB_TIMEOUT "
	    "within their timeout (%d submitted, %d completed, %d wrong)",
	    submitted, completed, bad);
	check(!db_pool_connected(pool), "pool reports no connection");

	check(pg_start(), "server started again on the same port");
	end = mono_ms() + 15000;
	while (!recovered && mono_ms() < end) {
		if (run_query(pool, &q, "SELECT 1", 0, NULL, 3000) &&
		    q.st == DB_OK) {
			recovered = true;
			ok_after++;
		}
		if (!recovered)
			run_until(NULL, 200);
	}
	check(recovered, "the pool reconnects by itself");
	check(run_query(pool, &q, "SELECT 3", 0, NULL, 3000) && q.st == DB_OK,
	    "queries succeed again");
	db_pool_stats(pool, &st);
	check(st.reconnects >= 1, "reconnects counted (%llu)",
	    (unsigned long long)st.reconnects);
	check(notify_until_heard(pool, "gridd_restart", "back", &n, 10000) &&
	    strcmp(n.payload, "back") == 0,
	    "LISTEN is issued again after the reconnect");
	db_pool_free(pool);
	check(pg_stop(), "server stopped");
}

/* ------------------------------------------------------------------ */

static void
cleanup(void)
{
	static bool done;
	char sql[128], err[256];
	struct db_sync *s;

	if (done)
		return;
	done = true;
	if (pg_postmaster > 0 && pg_dir[0] != '\0')
		(void)pg_stop();
	if (pg_postmaster > 0)
		kill(pg_postmaster, SIGQUIT);
	if (pg_dir[0] != '\0')
		remove_tree(pg_dir);
	if (ncreated == 0)
		return;
	s = db_sync_connect(admin_conninfo, 10, err, sizeof(err));
	for (int i = 0; s != NULL && i < ncreated; i++) {
		snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s "
		    "WITH (FORCE)", created_dbs[i]);
		if (!db_sync_exec(s, sql, err, sizeof(err)))
			printf("# %s: %s\n", sql, err);
	}
	db_sync_close(s);
}

/* A test killed by its harness still takes its server down. */
static void
on_signal(int sig)
{
	if (pg_postmaster > 0)
		kill(pg_postmaster, SIGQUIT);
	_exit(128 + sig);
}

int
main(void)
{
	const char *require = getenv("GRIDD_TEST_REQUIRE_PG");
	const char *level = getenv("GRIDD_TEST_LOG");
	enum log_level lvl;
	char ci[1024];

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (getenv("GRIDD_TEST_PGHOST") == NULL) {
		if (require != NULL && strcmp(require, "1") == 0) {
			printf("FAIL - GRIDD_TEST_PGHOST unset but "
			    "GRIDD_TEST_REQUIRE_PG=1\n");
			return 1;
		}
		printf("skip - GRIDD_TEST_PGHOST unset\n");
		return SKIP;
	}
	log_set_level(LOG_LVL_ERROR);
	if (level != NULL && log_parse_level(level, &lvl))
		log_set_level(lvl);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	atexit(cleanup);

	conninfo_for(admin_conninfo, sizeof(admin_conninfo), "postgres");
	base = event_base_new();
	if (base == NULL)
		die("event_base_new");

	create_db("main", ci, sizeof(ci));
	test_queries(ci);
	test_accessors(ci);
	test_batches(ci);
	test_queue(ci);
	test_timeout(ci);
	test_batch_timeout(ci);
	test_waited(ci);
	test_reconfigure(ci);
	test_replan(ci);
	test_prepared(ci);
	test_listen(ci);
	test_free_pending(ci);
	check(reentrant_calls == 0,
	    "no callback ran from inside a submit call (%d)",
	    reentrant_calls);
	test_migrations();
	test_restart();

	event_base_free(base);
	cleanup();
	printf("%d checks, %d failed\n", checks, failures);
	return failures == 0 ? 0 : 1;
}

/* db.c - asynchronous libpq connection pool on the libevent loop. */

/*
 * Life of a request.
 *
 * db_query() and db_batch_submit() copy the statement into a db_req, arm the
 * request's own timer (query_timeout_ms, or the batch's own limit from
 * db_batch_timeout, counted from submission so that time spent waiting for
 * a connection counts too, less what the caller says its client waited
 * before that: db_query_waited, db_batch_waited) and put it at the tail
 * of the FIFO wait queue, refusing it when max_waiting requests already
 * wait and no connection is idle, or when it is too late (db_too_late).
 * pool_dispatch() then hands the head of the queue to an idle connection,
 * which sends it without blocking (PQsendQueryParams, then PQflush until
 * it returns 0, waiting for EV_WRITE in between) and becomes BUSY; one
 * whose replan_interval_ms is up first sends DISCARD PLANS (REPLANNING)
 * and takes work when that is answered.  Results are
 * read as the socket becomes readable (PQconsumeInput, PQisBusy,
 * PQgetResult).  A batch goes out in pipeline mode as BEGIN, its
 * statements, COMMIT and one sync; when a statement fails the server skips
 * the rest, and a ROLLBACK ends the aborted transaction before the
 * connection is reused.  A statement added with db_batch_add_prepared
 * goes as a named statement, gridd_ID_GEN: a session that has not
 * prepared that name yet sends the Parse (PQsendPrepare) just before it in
 * the same pipeline, and records it as prepared when the server says it
 * is.  Named statements outlive transactions and DISCARD PLANS (which
 * only makes them plan again).  When one went missing from a session
 * (26000), no longer fits what it was prepared with (0A000 from plan
 * revalidation: another process redefined a function it calls, during an
 * upgrade) or its name is taken by something else (42P05, a pooler's
 * leftover), that statement fails and the statement's generation moves
 * on, for every session of the process: each prepares it again, under a
 * new name and with the generation in its text (a pooler may share
 * server statements by their text), at its next use, with no reconnect.
 * The old names stay on the sessions that had them, so after
 * DB_PREPARED_MAX_GEN generations a statement goes unnamed for good:
 * something keeps breaking it.
 *
 * However a request ends (result, SQL error, timer expiry, lost connection,
 * pool freed) it goes through req_finish(), which moves it to the done list
 * and activates one pool event.  Only that event (and db_pool_free) runs
 * caller callbacks, so a callback never runs from inside db_query or from the
 * middle of a connection's I/O handling, and it may submit new requests.
 * The request is freed after its callback returns.
 *
 * A timer expiry on a request in flight drops that connection (PostgreSQL 15
 * has no asynchronous cancel), and statement_timeout, set for every session,
 * lets the server give up as well.  A lost connection fails its request with
 * DB_UNAVAILABLE and is never retried here: the statement may have committed,
 * only the caller knows whether repeating it is safe.  The slot reconnects
 * with exponential backoff up to reconnect_max_ms; requests queued meanwhile
 * wait for a connection until their own timer fires.
 *
 * Each connection's state changes only in conn_set_state().
 */
#include "db.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "log.h"

#define DB_MAX_PARAMS		65535	/* the protocol counts them in 16 bits */
#define DB_BACKOFF_MIN_MS	100	/* first delay after a failed connect */
#define DB_MAX_CHANNELS		64	/* LISTEN channels per pool */
#define DB_CHANNEL_MAX		63	/* NAMEDATALEN - 1 */
/* The server's statement_timeout exceeds the client's timer a little, so a
 * slow statement ends as DB_TIMEOUT on the client side, and the server still
 * stops working on it soon after the client gave up. */
#define DB_STMT_GRACE_MS	500
/* Connect deadline when the conninfo sets no connect_timeout: the query
 * timeout, but never less than this (a TLS handshake takes a few trips). */
#define DB_CONNECT_MIN_MS	1000
/* The longest limit a batch may ask for (db_batch_timeout). */
#define DB_MAX_TIMEOUT_MS	86400000
/* A session lost sooner than this after connecting counts as a failed
 * connect, so a server that accepts and drops at once gets backoff, not a
 * tight loop. */
#define DB_STABLE_MS		1000

enum conn_state {
	CONN_OFF,		/* slot unused: pool shrank or is stopping */
	CONN_BACKOFF,		/* no session; reconnect timer armed */
	CONN_CONNECTING,	/* PQconnectPoll in progress; deadline armed */
	CONN_IDLE,		/* session up, nothing in flight */
	CONN_BUSY,		/* a request (or the LISTEN set-up) in flight */
	CONN_REPLANNING,	/* DISCARD PLANS in flight; timer: its deadline */
};

static const char *const conn_state_names[] = {
	[CONN_OFF] = "off",
	[CONN_BACKOFF] = "backoff",
	[CONN_CONNECTING] = "connecting",
	[CONN_IDLE] = "idle",
	[CONN_BUSY] = "busy",
	[CONN_REPLANNING] = "replanning",
};

enum req_kind {
	REQ_QUERY,
	REQ_BATCH,
};

enum req_where {
	REQ_QUEUED,		/* in pool->queue */
	REQ_INFLIGHT,		/* on req->conn */
	REQ_DONE,		/* in pool->done, callback pending */
};

enum result_step {
	STEP_MORE,		/* keep reading results */
	STEP_DONE,		/* request finished; connection reusable */
	STEP_LOST,		/* connection dropped; stop touching it */
};

struct db_stmt {
	char *sql;
	int nparams;
	char **params;		/* NULL entries are SQL NULL */
	int prep;		/* db_prepared id; 0: unnamed statement */
	unsigned prep_gen;	/* the generation its name was sent with */
};

struct db_batch {
	struct db_stmt *stmts;
	int n;
	int cap;
	bool invalid;		/* a bad db_batch_add: refused at submit */
	int timeout_ms;		/* 0: the pool's query_timeout_ms */
	int waited_ms;		/* spent before submission (db_batch_waited) */
};

struct db_res {
	enum db_status status;
	PGresult *pg;		/* NULL for a synthetic result */
	char *error;		/* NULL when none */
	char sqlstate[6];
	bool set;
};

struct db_conn;

struct db_req {
	TAILQ_ENTRY(db_req) entry;
	struct db_pool *pool;
	enum req_kind kind;
	enum req_where where;
	struct db_stmt stmt;		/* REQ_QUERY */
	struct db_batch *batch;		/* REQ_BATCH */
	db_cb cb;
	db_batch_cb bcb;
	void *arg;
	struct event *timer;
	int waited_ms;			/* REQ_QUERY: spent before submission */
	struct db_conn *conn;		/* REQ_INFLIGHT */
	enum db_status status;
	struct db_res res;		/* REQ_QUERY */
	struct db_res *results;		/* REQ_BATCH, batch->n entries */
	struct db_res txn_err;		/* BEGIN or COMMIT refused */
	int pipe_idx;			/* pipeline entries seen so far */
	int *pipe;			/* REQ_BATCH: what each entry is */
	int npipe;
	bool rolling_back;
};

/* A batch's pipeline entries, in req->pipe: a statement's index, or
 * BEGIN, SET LOCAL or COMMIT, or the Parse of statement i. */
#define PIPE_TXN		(-1)
#define PIPE_PREP(i)		(-2 - (i))
#define PIPE_PREP_STMT(e)	(-2 - (e))

/* Generations a prepared statement may go through (see above). */
#define DB_PREPARED_MAX_GEN	8

/* send_batch marks the statements it Parses in a 64-bit mask. */
_Static_assert(DB_PREPARED_MAX <= 64, "DB_PREPARED_MAX over 64");

TAILQ_HEAD(req_list, db_req);

struct db_conn {
	struct db_pool *pool;
	int slot;			/* -1 for the LISTEN connection */
	enum conn_state state;
	PGconn *pg;
	struct event *io;
	short io_what;
	struct event *timer;		/* backoff or connect deadline */
	struct db_req *req;
	unsigned gen;			/* settings generation it connected with */
	int failures;			/* consecutive failed connects */
	int64_t up_since;		/* mono_ms() when it connected */
	int64_t planned_at;		/* mono_ms() of its last DISCARD PLANS */
	bool was_up;			/* had a session before: count reconnect */
	bool flushing;
	/* prepared[id]: 1 + the generation of statement id this session
	 * has prepared; 0: none. */
	unsigned prepared[DB_PREPARED_MAX + 1];
	bool listen_sent;		/* LISTEN statements in flight */
	int listen_upto;		/* channels covered by listen_sent */
};

struct db_channel {
	char *name;
	db_notify_cb cb;
	void *arg;
	bool listened;			/* LISTEN done on the current session */
};

struct db_pool {
	struct event_base *base;
	bool stopping;
	unsigned gen;
	/* connection settings, as keyword/value arrays for libpq */
	char **kw;
	char **val;
	int size;
	int max_waiting;
	int query_timeout_ms;
	int reconnect_max_ms;
	int replan_interval_ms;			/* 0: never */
	int connect_timeout_ms;			/* 0: derive from the query's */
	const struct timeval *timeout_tv;	/* libevent common timeout */
	struct db_conn **conns;
	int nconns;				/* slots allocated */
	struct db_conn *listener;		/* NULL until db_listen */
	struct db_channel *channels;
	int nchannels;
	struct event *listen_kick;
	struct req_list queue;
	int nqueued;
	struct req_list done;
	int ndone;
	int ninflight;
	struct event *done_ev;
	uint32_t rnd;
	struct db_stats stats;
};

/* A wait before submission, as an int that no limit can underflow with. */
static int
waited_clamp(int64_t waited_ms)
{
	if (waited_ms < 0)
		return 0;
	return waited_ms > DB_MAX_TIMEOUT_MS ? DB_MAX_TIMEOUT_MS :
	    (int)waited_ms;
}

/* The limit a request runs under: its own or the pool's. */
static int
req_limit_ms(const struct db_req *req)
{
	if (req->kind == REQ_BATCH && req->batch->timeout_ms > 0)
		return req->batch->timeout_ms;
	return req->pool->query_timeout_ms;
}

/* What its client spent waiting before it was submitted (db_query_waited,
 * db_batch_waited). */
static int
req_waited_ms(const struct db_req *req)
{
	return req->kind == REQ_BATCH ? req->batch->waited_ms : req->waited_ms;
}

/* The time its timer runs for. */
static int
req_timeout_ms(const struct db_req *req)
{
	return req_limit_ms(req) - req_waited_ms(req);
}

/* Less than a tenth of a limit left after a wait: a statement sent with
 * so little would mostly be cut off by its timer, its work done anyway
 * (and done again when the client sends it again). */
static bool
too_late(int limit, int64_t waited_ms)
{
	return waited_ms > limit - limit / 10;
}

bool
db_too_late(const struct db_pool *pool, int64_t waited_ms)
{
	return too_late(pool->query_timeout_ms, waited_ms);
}

static void conn_io_cb(evutil_socket_t, short, void *);
static void conn_timer_cb(evutil_socket_t, short, void *);
static void conn_lost(struct db_conn *, const char *);
static void conn_release(struct db_conn *);
static void conn_replan(struct db_conn *);
static void pool_dispatch(struct db_pool *);
static void listener_kick(struct db_pool *);

/* ------------------------------------------------------------------ */
/* results */

static void
res_clear(struct db_res *r)
{
	if (r->pg != NULL)
		PQclear(r->pg);
	free(r->error);
	memset(r, 0, sizeof(*r));
}

static void
res_synthetic(struct db_res *r, enum db_status status, const char *sqlstate,
    const char *msg)
{
	res_clear(r);
	r->status = status;
	r->error = xstrdup(msg);
	snprintf(r->sqlstate, sizeof(r->sqlstate), "%s",
	    sqlstate != NULL ? sqlstate : "");
	r->set = true;
}

/* Copies a libpq message without its trailing newlines. */
static char *
dup_message(const char *msg)
{
	size_t n = strlen(msg);

	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		n--;
	return xstrndup(msg, n);
}

/* Takes ownership of pg. Class 57P (shutdown, crash) and 08 (connection
 * exception) mean the server went away: the request is UNAVAILABLE, not an
 * SQL error. 57014 is our own statement_timeout. */
static void
res_from_pg(struct db_res *r, PGresult *pg)
{
	const char *state, *msg;

	res_clear(r);
	r->pg = pg;
	r->set = true;
	switch (PQresultStatus(pg)) {
	case PGRES_COMMAND_OK:
	case PGRES_TUPLES_OK:
	case PGRES_EMPTY_QUERY:
		r->status = DB_OK;
		return;
	default:
		break;
	}
	state = PQresultErrorField(pg, PG_DIAG_SQLSTATE);
	snprintf(r->sqlstate, sizeof(r->sqlstate), "%s",
	    state != NULL ? state : "");
	msg = PQresultErrorField(pg, PG_DIAG_MESSAGE_PRIMARY);
	if (msg == NULL || *msg == '\0')
		msg = PQresultErrorMessage(pg);
	if (msg == NULL || *msg == '\0')
		msg = PQresStatus(PQresultStatus(pg));
	r->error = dup_message(msg);
	if (strncmp(r->sqlstate, "57P", 3) == 0 ||
	    strncmp(r->sqlstate, "08", 2) == 0)
		r->status = DB_UNAVAILABLE;
	else if (strcmp(r->sqlstate, "57014") == 0)
		r->status = DB_TIMEOUT;
	else
		r->status = DB_SQL_ERROR;
}

enum db_status
db_res_status(const struct db_res *r)
{
	return r->status;
}

const char *
db_res_error(const struct db_res *r)
{
	return r->error != NULL ? r->error : "";
}

const char *
db_res_sqlstate(const struct db_res *r)
{
	return r->sqlstate;
}

int
db_res_rows(const struct db_res *r)
{
	return r->pg != NULL ? PQntuples(r->pg) : 0;
}

int
db_res_cols(const struct db_res *r)
{
	return r->pg != NULL ? PQnfields(r->pg) : 0;
}

static bool
res_in_range(const struct db_res *r, int row, int col)
{
	return r->pg != NULL && row >= 0 && col >= 0 &&
	    row < PQntuples(r->pg) && col < PQnfields(r->pg);
}

/* NULL outside the result; "" for SQL NULL, as libpq does. */
const char *
db_res_get(const struct db_res *r, int row, int col)
{
	if (!res_in_range(r, row, col))
		return NULL;
	return PQgetvalue(r->pg, row, col);
}

/* A cell outside the result reads as NULL. */
bool
db_res_isnull(const struct db_res *r, int row, int col)
{
	if (!res_in_range(r, row, col))
		return true;
	return PQgetisnull(r->pg, row, col) != 0;
}

bool
db_res_int64(const struct db_res *r, int row, int col, int64_t *out)
{
	const char *s;
	char *end;
	long long v;

	if (db_res_isnull(r, row, col))
		return false;
	s = PQgetvalue(r->pg, row, col);
	if (*s == '\0')
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*out = (int64_t)v;
	return true;
}

/* Finite values only: NaN and Infinity are refused like garbage. */
bool
db_res_double(const struct db_res *r, int row, int col, double *out)
{
	const char *s;
	char *end;
	double v;

	if (db_res_isnull(r, row, col))
		return false;
	s = PQgetvalue(r->pg, row, col);
	if (*s == '\0')
		return false;
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !isfinite(v))
		return false;
	*out = v;
	return true;
}

uint64_t
db_res_affected(const struct db_res *r)
{
	const char *s;
	char *end;
	unsigned long long v;

	if (r->pg == NULL)
		return 0;
	s = PQcmdTuples(r->pg);
	if (s == NULL || *s == '\0')
		return 0;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return 0;
	return (uint64_t)v;
}

/* ------------------------------------------------------------------ */
/* statements and batches */

static bool
stmt_valid(const char *sql, int nparams, const char *const *params)
{
	return sql != NULL && nparams >= 0 && nparams <= DB_MAX_PARAMS &&
	    (nparams == 0 || params != NULL);
}

static void
stmt_copy(struct db_stmt *st, const char *sql, int nparams,
    const char *const *params)
{
	st->sql = xstrdup(sql);
	st->nparams = nparams;
	st->params = NULL;
	st->prep = 0;
	st->prep_gen = 0;
	if (nparams > 0) {
		st->params = xcalloc((size_t)nparams, sizeof(char *));
		for (int i = 0; i < nparams; i++)
			if (params[i] != NULL)
				st->params[i] = xstrdup(params[i]);
	}
}

static void
stmt_free(struct db_stmt *st)
{
	for (int i = 0; i < st->nparams; i++)
		free(st->params[i]);
	free(st->params);
	free(st->sql);
	memset(st, 0, sizeof(*st));
}

struct db_batch *
db_batch_new(void)
{
	return xcalloc(1, sizeof(struct db_batch));
}

void
db_batch_add(struct db_batch *b, const char *sql, int nparams,
    const char *const *params)
{
	/* Each statement takes two pipeline entries at most (its Parse),
	 * and the transaction three. */
	if (!stmt_valid(sql, nparams, params) || b->n == (INT_MAX - 3) / 2) {
		log_error("event=db_batch_add error=\"invalid statement\"");
		b->invalid = true;
		return;
	}
	if (b->n == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 8;
		b->stmts = xreallocarray(b->stmts, (size_t)b->cap,
		    sizeof(*b->stmts));
	}
	stmt_copy(&b->stmts[b->n++], sql, nparams, params);
}

/* Ids for db_prepared objects, and each one's current generation (its
 * name's suffix), process-wide: every pool's sessions name a statement
 * alike.  The loop's thread only, as everything here. */
static int prepared_ids;
static unsigned prepared_gen[DB_PREPARED_MAX + 1];

void
db_batch_add_prepared(struct db_batch *b, struct db_prepared *ps,
    const char *const *params)
{
	int n = b->n;

	db_batch_add(b, ps->sql, ps->nparams, params);
	if (b->n == n)
		return;
	if (ps->id == 0) {
		if (prepared_ids < DB_PREPARED_MAX) {
			ps->id = ++prepared_ids;
		} else {
			ps->id = -1;
			log_error("event=db_prepare error=\"more than %d "
			    "prepared statements; this one goes unprepared\"",
			    DB_PREPARED_MAX);
		}
	}
	if (ps->id > 0)
		b->stmts[n].prep = ps->id;
}

int
db_batch_count(const struct db_batch *b)
{
	return b->n;
}

void
db_batch_timeout(struct db_batch *b, int timeout_ms)
{
	if (timeout_ms < 1 || timeout_ms > DB_MAX_TIMEOUT_MS) {
		log_error("event=db_batch_timeout error=\"out of range\" "
		    "timeout_ms=%d", timeout_ms);
		b->invalid = true;
		return;
	}
	b->timeout_ms = timeout_ms;
}

void
db_batch_waited(struct db_batch *b, int64_t waited_ms)
{
	b->waited_ms = waited_clamp(waited_ms);
}

void
db_batch_free(struct db_batch *b)
{
	if (b == NULL)
		return;
	for (int i = 0; i < b->n; i++)
		stmt_free(&b->stmts[i]);
	free(b->stmts);
	free(b);
}

/* ------------------------------------------------------------------ */
/* requests */

static void
req_free(struct db_req *req)
{
	if (req->timer != NULL)
		event_free(req->timer);
	stmt_free(&req->stmt);
	if (req->batch != NULL) {
		for (int i = 0; i < req->batch->n; i++)
			res_clear(&req->results[i]);
		free(req->results);
		db_batch_free(req->batch);
	}
	free(req->pipe);
	res_clear(&req->res);
	res_clear(&req->txn_err);
	free(req);
}

/*
 * The one way a request ends: it leaves the queue or its connection, gets
 * its final status, and waits on the done list for done_cb to run its
 * callback.  A batch that did not complete reports every statement with the
 * final status; one whose transaction was refused at BEGIN or COMMIT reports
 * that error on every statement, since none of them took effect.
 */
static void
req_finish(struct db_req *req, enum db_status status, const char *why)
{
	struct db_pool *pool = req->pool;

	if (req->where == REQ_QUEUED) {
		TAILQ_REMOVE(&pool->queue, req, entry);
		pool->nqueued--;
	} else if (req->where == REQ_INFLIGHT) {
		req->conn = NULL;
		pool->ninflight--;
	}
	evtimer_del(req->timer);
	req->status = status;
	if (req->kind == REQ_QUERY) {
		/* The callback sees only the result: keep its status true. */
		if (status != DB_OK && (!req->res.set ||
		    req->res.status != status))
			res_synthetic(&req->res, status, NULL, why);
	} else {
		for (int i = 0; i < req->batch->n; i++) {
			struct db_res *r = &req->results[i];

			if (status == DB_SQL_ERROR && req->txn_err.set &&
			    (!r->set || r->status == DB_OK))
				res_synthetic(r, DB_SQL_ERROR,
				    req->txn_err.sqlstate, req->txn_err.error);
			else if (status == DB_SQL_ERROR && !r->set)
				res_synthetic(r, DB_SQL_ERROR, NULL, why);
			else if (status != DB_OK && status != DB_SQL_ERROR)
				res_synthetic(r, status, NULL, why);
		}
	}
	pool->stats.queries++;
	if (status == DB_TIMEOUT)
		pool->stats.timeouts++;
	else if (status != DB_OK)
		pool->stats.errors++;
	req->where = REQ_DONE;
	TAILQ_INSERT_TAIL(&pool->done, req, entry);
	pool->ndone++;
	event_active(pool->done_ev, EV_TIMEOUT, 0);
}

static void
req_deliver(struct db_req *req)
{
	if (req->kind == REQ_QUERY) {
		req->cb(req->arg, &req->res);
		return;
	}

	int n = req->batch->n;
	const struct db_res **ptrs = NULL;

	if (n > 0) {
		ptrs = xcalloc((size_t)n, sizeof(*ptrs));
		for (int i = 0; i < n; i++)
			ptrs[i] = &req->results[i];
	}
	req->bcb(req->arg, req->status, ptrs, n);
	free(ptrs);
}

/* Runs callbacks; ones submitted meanwhile that end at once join the list. */
static void
pool_run_done(struct db_pool *pool)
{
	struct db_req *req;

	while ((req = TAILQ_FIRST(&pool->done)) != NULL) {
		TAILQ_REMOVE(&pool->done, req, entry);
		pool->ndone--;
		req_deliver(req);
		req_free(req);
	}
}

static void
done_cb(evutil_socket_t fd, short what, void *arg)
{
	pool_run_done(arg);
}

static void
req_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct db_req *req = arg;
	struct db_pool *pool = req->pool;
	struct db_conn *c = req->conn;
	char why[96];

	if (req_waited_ms(req) > 0)
		snprintf(why, sizeof(why), "no answer within %d ms (%d of "
		    "them queued before)", req_limit_ms(req),
		    req_waited_ms(req));
	else
		snprintf(why, sizeof(why), "no answer within %d ms",
		    req_limit_ms(req));
	if (req->where == REQ_QUEUED) {
		/* Waited for a connection the whole time: say whether any
		 * was up, so the caller can tell a slow database from none. */
		req_finish(req, db_pool_connected(pool) ? DB_TIMEOUT :
		    DB_UNAVAILABLE, db_pool_connected(pool) ? why :
		    "no database connection");
		return;
	}
	if (req->where != REQ_INFLIGHT)
		return;
	log_warn("event=db_timeout slot=%d timeout_ms=%d waited_ms=%d", c->slot,
	    req_limit_ms(req), req_waited_ms(req));
	c->req = NULL;
	req_finish(req, DB_TIMEOUT, why);
	/* No asynchronous cancel in PostgreSQL 15's libpq: the session is
	 * dropped and the slot reconnects at once (the server is alive). */
	c->failures = 0;
	conn_lost(c, "query timed out");
}

static struct db_req *
req_new(struct db_pool *pool, enum req_kind kind, void *arg)
{
	struct db_req *req = xcalloc(1, sizeof(*req));

	req->pool = pool;
	req->kind = kind;
	req->arg = arg;
	req->timer = evtimer_new(pool->base, req_timeout_cb, req);
	if (req->timer == NULL) {
		log_error("event=db_timer error=\"evtimer_new failed\"");
		abort();
	}
	return req;
}

static bool
pool_has_idle(const struct db_pool *pool)
{
	for (int i = 0; i < pool->nconns; i++)
		if (pool->conns[i]->state == CONN_IDLE)
			return true;
	return false;
}

static bool
pool_admit(struct db_pool *pool, struct db_req *req)
{
	int ms = req_timeout_ms(req);

	if (pool->stopping || too_late(req_limit_ms(req), req_waited_ms(req)) ||
	    (pool->nqueued >= pool->max_waiting && !pool_has_idle(pool)))
		return false;
	req->where = REQ_QUEUED;
	TAILQ_INSERT_TAIL(&pool->queue, req, entry);
	pool->nqueued++;
	if (ms != pool->query_timeout_ms) {
		struct timeval tv = { .tv_sec = ms / 1000,
		    .tv_usec = (ms % 1000) * 1000 };

		evtimer_add(req->timer, &tv);
	} else
		evtimer_add(req->timer, pool->timeout_tv);
	pool_dispatch(pool);
	return true;
}

bool
db_query(struct db_pool *pool, const char *sql, int nparams,
    const char *const *params, db_cb cb, void *arg)
{
	return db_query_waited(pool, 0, sql, nparams, params, cb, arg);
}

bool
db_query_waited(struct db_pool *pool, int64_t waited_ms, const char *sql,
    int nparams, const char *const *params, db_cb cb, void *arg)
{
	struct db_req *req;

	if (!stmt_valid(sql, nparams, params) || cb == NULL) {
		log_error("event=db_query error=\"invalid statement\"");
		return false;
	}
	if (pool->stopping)
		return false;
	req = req_new(pool, REQ_QUERY, arg);
	req->cb = cb;
	req->waited_ms = waited_clamp(waited_ms);
	stmt_copy(&req->stmt, sql, nparams, params);
	if (!pool_admit(pool, req)) {
		req_free(req);
		return false;
	}
	return true;
}

bool
db_batch_submit(struct db_pool *pool, struct db_batch *b, db_batch_cb cb,
    void *arg)
{
	struct db_req *req;

	if (b->invalid || cb == NULL || pool->stopping) {
		db_batch_free(b);
		return false;
	}
	req = req_new(pool, REQ_BATCH, arg);
	req->bcb = cb;
	req->batch = b;
	if (b->n > 0)
		req->results = xcalloc((size_t)b->n, sizeof(struct db_res));
	if (!pool_admit(pool, req)) {
		req_free(req);
		return false;
	}
	return true;
}

/* ------------------------------------------------------------------ */
/* connections */

/* A session is up in these states; in all but CONN_IDLE it is busy. */
static bool
conn_up(enum conn_state st)
{
	return st == CONN_IDLE || st == CONN_BUSY || st == CONN_REPLANNING;
}

static void
conn_set_state(struct db_conn *c, enum conn_state st)
{
	struct db_pool *pool = c->pool;

	if (c->state == st)
		return;
	log_debug("event=db_conn slot=%d from=%s to=%s", c->slot,
	    conn_state_names[c->state], conn_state_names[st]);
	if (c->slot >= 0) {
		bool was_up = conn_up(c->state), is_up = conn_up(st);

		pool->stats.connected += (int)is_up - (int)was_up;
		pool->stats.busy += (int)(is_up && st != CONN_IDLE) -
		    (int)(was_up && c->state != CONN_IDLE);
	}
	c->state = st;
}

/* (Re)registers the socket. While connecting libpq may close the socket and
 * open another, possibly under the same number, so then it re-registers
 * every time. */
static bool
conn_watch(struct db_conn *c, short what, bool force)
{
	int fd = PQsocket(c->pg);

	if (fd < 0)
		return false;
	if (!force && c->io_what == what && event_pending(c->io,
	    EV_READ | EV_WRITE, NULL))
		return true;
	event_del(c->io);
	event_assign(c->io, c->pool->base, fd, what | EV_PERSIST,
	    conn_io_cb, c);
	if (event_add(c->io, NULL) != 0)
		return false;
	c->io_what = what;
	return true;
}

static void
conn_close_session(struct db_conn *c)
{
	event_del(c->io);
	c->io_what = 0;
	evtimer_del(c->timer);
	if (c->pg != NULL) {
		PQfinish(c->pg);
		c->pg = NULL;
	}
	c->flushing = false;
	c->listen_sent = false;
}

static int
conn_backoff_ms(struct db_conn *c)
{
	struct db_pool *pool = c->pool;
	int64_t ms;

	if (c->failures == 0)
		return 0;
	ms = DB_BACKOFF_MIN_MS;
	for (int i = 1; i < c->failures && ms < pool->reconnect_max_ms; i++)
		ms *= 2;
	if (ms > pool->reconnect_max_ms)
		ms = pool->reconnect_max_ms;
	/* Up to a quarter of jitter, so that many processes (and slots) do
	 * not knock on a recovering server in step. */
	pool->rnd = pool->rnd * 1103515245u + 12345u;
	ms -= (int64_t)((pool->rnd >> 8) % (uint32_t)(ms / 4 + 1));
	return (int)ms;
}

static void
conn_schedule(struct db_conn *c, int delay_ms)
{
	struct timeval tv = {
		.tv_sec = delay_ms / 1000,
		.tv_usec = (delay_ms % 1000) * 1000,
	};

	conn_set_state(c, CONN_BACKOFF);
	evtimer_add(c->timer, &tv);
}

/* Server notices go to our log instead of libpq's stderr default. */
static void
notice_cb(void *arg, const PGresult *r)
{
	const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
	const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);

	if (msg == NULL)
		return;
	if (sev != NULL && strcmp(sev, "WARNING") == 0)
		log_warn("event=db_notice severity=warning sqlstate=%s "
		    "message=\"%s\"", state ? state : "", msg);
	else
		log_debug("event=db_notice severity=%s sqlstate=%s "
		    "message=\"%s\"", sev ? sev : "", state ? state : "",
		    msg);
}

static void
conn_start(struct db_conn *c)
{
	struct db_pool *pool = c->pool;
	struct timeval tv;
	int ms;

	c->gen = pool->gen;
	c->pg = PQconnectStartParams((const char *const *)pool->kw,
	    (const char *const *)pool->val, 0);
	if (c->pg == NULL) {
		c->failures++;
		conn_schedule(c, conn_backoff_ms(c));
		return;
	}
	PQsetNoticeReceiver(c->pg, notice_cb, NULL);
	conn_set_state(c, CONN_CONNECTING);
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		conn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	/* PQconnectPoll ignores connect_timeout: the deadline is ours. */
	ms = pool->connect_timeout_ms;
	if (ms <= 0)
		ms = pool->query_timeout_ms > DB_CONNECT_MIN_MS ?
		    pool->query_timeout_ms : DB_CONNECT_MIN_MS;
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(c->timer, &tv);
	/* libpq says to act as if PQconnectPoll had returned WRITING. */
	if (!conn_watch(c, EV_WRITE, true))
		conn_lost(c, "no socket");
}

/*
 * The session is gone (or was never made): fail what was in flight, close,
 * and come back after a backoff.  A slot beyond pool_size, or any slot of a
 * stopping pool, goes off instead.
 */
static void
conn_lost(struct db_conn *c, const char *why)
{
	struct db_pool *pool = c->pool;
	struct db_req *req = c->req;
	bool was_up = conn_up(c->state);
	char msg[256];

	snprintf(msg, sizeof(msg), "%s", why != NULL ? why : "");
	msg[strcspn(msg, "\r\n")] = '\0';
	if (was_up)
		log_warn("event=db_conn_lost slot=%d reason=\"%s\"", c->slot,
		    msg);
	else if (c->failures == 0)
		log_warn("event=db_connect_failed slot=%d reason=\"%s\"",
		    c->slot, msg);
	else
		log_debug("event=db_connect_failed slot=%d reason=\"%s\"",
		    c->slot, msg);
	if (req != NULL) {
		char full[300];

		c->req = NULL;
		snprintf(full, sizeof(full), "connection lost: %s", msg);
		req_finish(req, DB_UNAVAILABLE, full);
	}
	if (was_up)
		c->was_up = true;
	conn_close_session(c);
	if (pool->stopping || c->slot >= pool->size) {
		conn_set_state(c, CONN_OFF);
		return;
	}
	if (!was_up || mono_ms() - c->up_since < DB_STABLE_MS)
		c->failures++;
	conn_schedule(c, conn_backoff_ms(c));
}

static void
conn_connected(struct db_conn *c)
{
	struct db_pool *pool = c->pool;

	evtimer_del(c->timer);
	if (c->slot >= 0 && c->gen != pool->gen) {
		/* Settings changed while it connected: start again. */
		conn_close_session(c);
		conn_schedule(c, 0);
		return;
	}
	if (PQsetnonblocking(c->pg, 1) != 0) {
		conn_lost(c, "cannot make the connection non-blocking");
		return;
	}
	if (c->was_up || c->failures > 0)
		pool->stats.reconnects++;
	if (c->failures > 0 || c->was_up)
		log_info("event=db_connected slot=%d", c->slot);
	c->failures = 0;
	c->up_since = mono_ms();
	/* A new session: nothing prepared on it yet. */
	memset(c->prepared, 0, sizeof(c->prepared));
	/* Up to a quarter of the interval early, so that the sessions of a
	 * pool that connected together do not all replan at once. */
	c->planned_at = c->up_since;
	if (pool->replan_interval_ms >= 4) {
		pool->rnd = pool->rnd * 1103515245u + 12345u;
		c->planned_at -= (int64_t)((pool->rnd >> 8) %
		    (uint32_t)(pool->replan_interval_ms / 4));
	}
	conn_set_state(c, CONN_IDLE);
	if (!conn_watch(c, EV_READ, true)) {
		conn_lost(c, "no socket");
		return;
	}
	if (c->slot < 0) {
		for (int i = 0; i < pool->nchannels; i++)
			pool->channels[i].listened = false;
		listener_kick(pool);
	} else {
		pool_dispatch(pool);
	}
}

static void
conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct db_conn *c = arg;

	if (c->state == CONN_BACKOFF)
		conn_start(c);
	else if (c->state == CONN_CONNECTING)
		conn_lost(c, "connect timed out");
	else if (c->state == CONN_REPLANNING)
		conn_lost(c, "DISCARD PLANS timed out");
}

static void
conn_poll(struct db_conn *c)
{
	switch (PQconnectPoll(c->pg)) {
	case PGRES_POLLING_READING:
		if (!conn_watch(c, EV_READ, true))
			conn_lost(c, "no socket");
		break;
	case PGRES_POLLING_WRITING:
		if (!conn_watch(c, EV_WRITE, true))
			conn_lost(c, "no socket");
		break;
	case PGRES_POLLING_OK:
		conn_connected(c);
		break;
	default:
		conn_lost(c, PQerrorMessage(c->pg));
		break;
	}
}

/* false when the connection was lost. */
static bool
conn_flush(struct db_conn *c)
{
	int r = PQflush(c->pg);

	if (r < 0) {
		conn_lost(c, PQerrorMessage(c->pg));
		return false;
	}
	c->flushing = r > 0;
	/* While output is pending, read too: the server may need us to read
	 * before it accepts more (libpq's advice for non-blocking sends). */
	if (!conn_watch(c, c->flushing ? EV_READ | EV_WRITE : EV_READ,
	    false)) {
		conn_lost(c, "no socket");
		return false;
	}
	return true;
}

static bool
send_stmt(PGconn *pg, const struct db_stmt *st)
{
	return PQsendQueryParams(pg, st->sql, st->nparams, NULL,
	    (const char *const *)st->params, NULL, NULL, 0) == 1;
}

static void
prepared_name(char *buf, size_t len, int id, unsigned gen)
{
	snprintf(buf, len, "gridd_%d_%u", id, gen);
}

/* A statement of a batch: a named one, prepared first on a session that
 * has not (nor earlier in this batch: *sent, bit id - 1); records what
 * each pipeline entry is in req->pipe. */
static bool
send_batch_stmt(struct db_conn *c, struct db_req *req, int i, uint64_t *sent)
{
	struct db_stmt *st = &req->batch->stmts[i];
	uint64_t bit;
	char name[32];

	if (st->prep == 0 || prepared_gen[st->prep] >= DB_PREPARED_MAX_GEN) {
		req->pipe[req->npipe++] = i;
		return send_stmt(c->pg, st);
	}
	st->prep_gen = prepared_gen[st->prep];
	bit = UINT64_C(1) << (st->prep - 1);
	prepared_name(name, sizeof(name), st->prep, st->prep_gen);
	if (c->prepared[st->prep] != st->prep_gen + 1 && !(*sent & bit)) {
		char *text = st->sql;
		bool ok;

		if (st->prep_gen > 0) {
			size_t len = strlen(st->sql) + 40;

			text = xcalloc(len, 1);
			snprintf(text, len, "%s\n/* generation %u */", st->sql,
			    st->prep_gen);
		}
		/* libpq copies the text into its buffer at once. */
		ok = PQsendPrepare(c->pg, name, text, st->nparams, NULL) == 1;
		if (text != st->sql)
			free(text);
		if (!ok)
			return false;
		*sent |= bit;
		req->pipe[req->npipe++] = PIPE_PREP(i);
	}
	req->pipe[req->npipe++] = i;
	return PQsendQueryPrepared(c->pg, name, st->nparams,
	    (const char *const *)st->params, NULL, NULL, 0) == 1;
}

static bool
send_batch(struct db_conn *c, struct db_req *req)
{
	static const struct db_stmt begin = { .sql = "BEGIN" };
	static const struct db_stmt commit = { .sql = "COMMIT" };
	const struct db_batch *b = req->batch;
	PGconn *pg = c->pg;
	uint64_t sent = 0;

	/* At most BEGIN, SET, a Parse and an execution per statement, and
	 * COMMIT. */
	free(req->pipe);
	req->pipe = xcalloc((size_t)b->n * 2 + 3, sizeof(int));
	req->npipe = 0;
	req->pipe_idx = 0;
	if (PQenterPipelineMode(pg) != 1 || !send_stmt(pg, &begin))
		return false;
	req->pipe[req->npipe++] = PIPE_TXN;
	if (b->timeout_ms > 0) {
		/* The server's limit for this transaction only; it ends a
		 * little after the client's timer, as the session's does. */
		char sql[64];
		struct db_stmt set = { .sql = sql };

		snprintf(sql, sizeof(sql), "SET LOCAL statement_timeout = %d",
		    b->timeout_ms + DB_STMT_GRACE_MS);
		if (!send_stmt(pg, &set))
			return false;
		req->pipe[req->npipe++] = PIPE_TXN;
	}
	for (int i = 0; i < b->n; i++)
		if (!send_batch_stmt(c, req, i, &sent))
			return false;
	req->pipe[req->npipe++] = PIPE_TXN;
	return send_stmt(pg, &commit) && PQpipelineSync(pg) == 1;
}

static void
conn_send(struct db_conn *c, struct db_req *req)
{
	struct db_pool *pool = c->pool;
	bool ok;

	TAILQ_REMOVE(&pool->queue, req, entry);
	pool->nqueued--;
	req->where = REQ_INFLIGHT;
	req->conn = c;
	pool->ninflight++;
	c->req = req;
	conn_set_state(c, CONN_BUSY);
	if (req->kind == REQ_QUERY)
		ok = send_stmt(c->pg, &req->stmt);
	else
		ok = send_batch(c, req);
	if (!ok) {
		conn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	(void)conn_flush(c);
}

static bool
conn_replan_due(const struct db_conn *c)
{
	int ms = c->pool->replan_interval_ms;

	return ms > 0 && mono_ms() - c->planned_at >= ms;
}

/* An idle session that is due drops its plans first, and takes work when
 * that is done (conn_release): one more round trip for one request of the
 * interval. */
static void
pool_dispatch(struct db_pool *pool)
{
	while (!TAILQ_EMPTY(&pool->queue)) {
		struct db_conn *idle = NULL;

		for (int i = 0; i < pool->nconns && idle == NULL; i++) {
			struct db_conn *c = pool->conns[i];

			if (c->state != CONN_IDLE)
				continue;
			if (conn_replan_due(c))
				conn_replan(c);
			else
				idle = c;
		}
		if (idle == NULL)
			return;
		conn_send(idle, TAILQ_FIRST(&pool->queue));
	}
}

static enum result_step
query_result(struct db_conn *c, struct db_req *req, PGresult *r)
{
	if (r == NULL) {
		enum db_status st = req->res.set ? req->res.status : DB_OK;

		c->req = NULL;
		req_finish(req, st, "no result");
		if (st == DB_UNAVAILABLE) {
			/* The server said it is going away (57P, 08). */
			conn_lost(c, req->res.error);
			return STEP_LOST;
		}
		return STEP_DONE;
	}
	switch (PQresultStatus(r)) {
	case PGRES_COPY_IN:
	case PGRES_COPY_OUT:
	case PGRES_COPY_BOTH:
		/* The session is now in a protocol state this pool does not
		 * drive: fail the statement and start afresh. */
		PQclear(r);
		res_synthetic(&req->res, DB_SQL_ERROR, NULL,
		    "COPY is not supported through the pool");
		c->req = NULL;
		req_finish(req, DB_SQL_ERROR, "COPY is not supported");
		conn_lost(c, "COPY attempted");
		return STEP_LOST;
	default:
		break;
	}
	/* The first result counts; a second one cannot come from a single
	 * extended-protocol statement but is dropped if it does. */
	if (!req->res.set)
		res_from_pg(&req->res, r);
	else
		PQclear(r);
	return STEP_MORE;
}

/* DB_OK, or the failure that ends the batch: the first failing statement's
 * (a timeout or a server going away keeps its own status), else the
 * transaction's own refusal at BEGIN or COMMIT. */
static enum db_status
batch_status(const struct db_req *req)
{
	for (int i = 0; i < req->batch->n; i++) {
		enum db_status st = req->results[i].status;

		if (st == DB_TIMEOUT || st == DB_UNAVAILABLE)
			return st;
		if (st != DB_OK)
			return DB_SQL_ERROR;
	}
	return req->txn_err.set ? DB_SQL_ERROR : DB_OK;
}

static enum result_step
batch_after_sync(struct db_conn *c, struct db_req *req)
{
	enum db_status status = batch_status(req);
	if (PQexitPipelineMode(c->pg) != 1) {
		c->req = NULL;
		req_finish(req, DB_UNAVAILABLE, "pipeline did not drain");
		conn_lost(c, "pipeline did not drain");
		return STEP_LOST;
	}
	if (PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
		/* An explicit transaction whose pipeline aborted stays open
		 * in the failed state until someone ends it. */
		static const struct db_stmt rollback = { .sql = "ROLLBACK" };

		req->rolling_back = true;
		if (!send_stmt(c->pg, &rollback)) {
			conn_lost(c, PQerrorMessage(c->pg));
			return STEP_LOST;
		}
		return conn_flush(c) ? STEP_MORE : STEP_LOST;
	}
	c->req = NULL;
	req_finish(req, status, "the batch's transaction was rolled back");
	return STEP_DONE;
}

/*
 * A named statement whose name is already taken on the session (42P05, at
 * its Parse), that went missing from the session (26000, at its
 * execution), or whose result no longer fits what it was prepared with
 * (0A000 from the plan cache's revalidation only: "cached plan must not
 * change result type"): the statement's generation moves on (once,
 * however many sessions see it), so that every session prepares it again
 * under a new name.
 */
static void
prepared_check(const struct db_stmt *st, PGresult *r, bool parse)
{
	const char *state, *fn;
	bool stale;

	if (st->prep == 0 || PQresultStatus(r) != PGRES_FATAL_ERROR ||
	    (state = PQresultErrorField(r, PG_DIAG_SQLSTATE)) == NULL)
		return;
	fn = PQresultErrorField(r, PG_DIAG_SOURCE_FUNCTION);
	if (parse)
		stale = strcmp(state, "42P05") == 0;
	else
		stale = strcmp(state, "26000") == 0 ||
		    (strcmp(state, "0A000") == 0 && fn != NULL &&
		    strcmp(fn, "RevalidateCachedQuery") == 0);
	if (!stale || prepared_gen[st->prep] != st->prep_gen)
		return;
	prepared_gen[st->prep]++;
	if (prepared_gen[st->prep] < DB_PREPARED_MAX_GEN)
		log_warn("event=db_prepare_stale statement=%d sqlstate=%s "
		    "generation=%u", st->prep, state, prepared_gen[st->prep]);
	else
		log_error("event=db_prepare_stale statement=%d sqlstate=%s "
		    "error=\"stale %d times: sent unprepared from now on\"",
		    st->prep, state, DB_PREPARED_MAX_GEN);
}

/* The Parse of statement i: the session has it from now on, or the
 * statement fails with the server's reason. */
static void
prepare_result(struct db_conn *c, struct db_req *req, int i, PGresult *r)
{
	const struct db_stmt *st = &req->batch->stmts[i];

	switch (PQresultStatus(r)) {
	case PGRES_COMMAND_OK:
		c->prepared[st->prep] = st->prep_gen + 1;
		c->pool->stats.prepares++;
		PQclear(r);
		break;
	case PGRES_PIPELINE_ABORTED:
		/* An earlier statement failed: not parsed, not recorded. */
		PQclear(r);
		break;
	default:
		prepared_check(st, r, true);
		res_from_pg(&req->results[i], r);
		break;
	}
}

static enum result_step
batch_result(struct db_conn *c, struct db_req *req, PGresult *r)
{
	int idx, ent;

	if (req->rolling_back) {
		if (r != NULL) {
			bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;

			PQclear(r);
			if (!ok) {
				conn_lost(c, "ROLLBACK failed");
				return STEP_LOST;
			}
			return STEP_MORE;
		}
		c->req = NULL;
		req_finish(req, batch_status(req),
		    "the batch's transaction was rolled back");
		return STEP_DONE;
	}
	/* NULL separates the pipeline entries' results; entries are counted
	 * by their one result each instead. */
	if (r == NULL)
		return STEP_MORE;
	if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
		PQclear(r);
		return batch_after_sync(c, req);
	}
	idx = req->pipe_idx++;
	if (idx >= req->npipe) {
		PQclear(r);
		return STEP_MORE;
	}
	ent = req->pipe[idx];
	if (ent <= PIPE_PREP(0)) {
		prepare_result(c, req, PIPE_PREP_STMT(ent), r);
		return STEP_MORE;
	}
	if (ent == PIPE_TXN) {			/* BEGIN, SET or COMMIT */
		struct db_res tmp = { 0 };

		res_from_pg(&tmp, r);
		if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED ||
		    tmp.status == DB_OK || req->txn_err.set)
			res_clear(&tmp);
		else
			req->txn_err = tmp;
		return STEP_MORE;
	}
	if (req->results[ent].set) {
		/* Its Parse failed: the statement keeps that reason. */
		PQclear(r);
	} else if (PQresultStatus(r) == PGRES_PIPELINE_ABORTED) {
		PQclear(r);
		res_synthetic(&req->results[ent], DB_SQL_ERROR, NULL,
		    "not run: an earlier statement of the batch failed");
	} else {
		prepared_check(&req->batch->stmts[ent], r, false);
		res_from_pg(&req->results[ent], r);
	}
	return STEP_MORE;
}

static void
conn_read_results(struct db_conn *c)
{
	while (c->state == CONN_BUSY && c->req != NULL && !PQisBusy(c->pg)) {
		struct db_req *req = c->req;
		PGresult *r = PQgetResult(c->pg);
		enum result_step step;

		if (PQstatus(c->pg) == CONNECTION_BAD) {
			if (r != NULL)
				PQclear(r);
			conn_lost(c, PQerrorMessage(c->pg));
			return;
		}
		if (req->kind == REQ_QUERY)
			step = query_result(c, req, r);
		else
			step = batch_result(c, req, r);
		if (step == STEP_LOST)
			return;
		if (step == STEP_DONE) {
			conn_release(c);
			return;
		}
	}
}

static void
drain_notifies(struct db_conn *c)
{
	struct db_pool *pool = c->pool;
	PGnotify *n;

	while (c->pg != NULL && (n = PQnotifies(c->pg)) != NULL) {
		if (c->slot < 0) {
			/* The callback may add channels: re-read the count. */
			for (int i = 0; i < pool->nchannels; i++)
				if (strcmp(pool->channels[i].name,
				    n->relname) == 0)
					pool->channels[i].cb(
					    pool->channels[i].arg,
					    n->relname,
					    n->extra != NULL ? n->extra : "");
		}
		PQfreemem(n);
	}
}

/*
 * Reads the results of a utility command the pool sent on its own (LISTEN,
 * DISCARD PLANS): true once all came back fine.  false while more are due,
 * or when one failed, and then the session is gone (conn_lost).
 */
static bool
command_done(struct db_conn *c, const char *what)
{
	while (!PQisBusy(c->pg)) {
		PGresult *r = PQgetResult(c->pg);
		char why[256];

		if (r == NULL)
			return true;
		if (PQresultStatus(r) == PGRES_COMMAND_OK) {
			PQclear(r);
			continue;
		}
		snprintf(why, sizeof(why), "%s failed: %s", what,
		    PQresultErrorMessage(r));
		PQclear(r);
		conn_lost(c, why);
		return false;
	}
	return false;
}

static void
listen_result(struct db_conn *c)
{
	struct db_pool *pool = c->pool;

	if (!c->listen_sent || !command_done(c, "LISTEN"))
		return;
	for (int i = 0; i < c->listen_upto; i++)
		pool->channels[i].listened = true;
	c->listen_sent = false;
	conn_set_state(c, CONN_IDLE);
	listener_kick(pool);
}

/*
 * A session keeps the plans of its statements, those inside the ingest and
 * dispatch functions included, until something invalidates them.  Writing
 * rows does not; ANALYZE does, when autovacuum gets to it, and on a busy
 * server its workers can be held by large tables for long.  Meanwhile a
 * plan made while a table was a page or two (a whole-index read joined to
 * the items, say) runs for every push of a storm that fills it.  So every
 * replan_interval_s a session drops its plans (DISCARD PLANS; the session's
 * other state stays) and plans each statement again at its next use, when
 * PostgreSQL sizes the tables by their pages as they are then.
 */
static void
conn_replan(struct db_conn *c)
{
	struct db_pool *pool = c->pool;

	conn_set_state(c, CONN_REPLANNING);
	if (PQsendQuery(c->pg, "DISCARD PLANS") != 1) {
		conn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	evtimer_add(c->timer, pool->timeout_tv);
	(void)conn_flush(c);
}

static void
replan_result(struct db_conn *c)
{
	if (!command_done(c, "DISCARD PLANS"))
		return;
	evtimer_del(c->timer);
	c->planned_at = mono_ms();
	c->pool->stats.replans++;
	conn_release(c);
}

static void
conn_io_cb(evutil_socket_t fd, short what, void *arg)
{
	struct db_conn *c = arg;

	if (c->state == CONN_CONNECTING) {
		conn_poll(c);
		return;
	}
	if (c->pg == NULL)
		return;
	if ((what & EV_READ) && !PQconsumeInput(c->pg)) {
		conn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	if (c->flushing && !conn_flush(c))
		return;
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		conn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	if (c->state == CONN_BUSY) {
		if (c->slot < 0)
			listen_result(c);
		else
			conn_read_results(c);
	} else if (c->state == CONN_REPLANNING) {
		replan_result(c);
	}
	drain_notifies(c);
}

/* Back to work after a request: recycle the session if the settings changed,
 * retire the slot if the pool shrank. */
static void
conn_release(struct db_conn *c)
{
	struct db_pool *pool = c->pool;

	if (pool->stopping || c->slot >= pool->size) {
		conn_close_session(c);
		conn_set_state(c, CONN_OFF);
		return;
	}
	if (c->gen != pool->gen) {
		conn_close_session(c);
		c->failures = 0;
		conn_schedule(c, 0);
		return;
	}
	conn_set_state(c, CONN_IDLE);
	pool_dispatch(pool);
}

static struct db_conn *
conn_new(struct db_pool *pool, int slot)
{
	struct db_conn *c = xcalloc(1, sizeof(*c));

	c->pool = pool;
	c->slot = slot;
	c->state = CONN_OFF;
	c->io = event_new(pool->base, -1, 0, conn_io_cb, c);
	c->timer = evtimer_new(pool->base, conn_timer_cb, c);
	if (c->io == NULL || c->timer == NULL) {
		log_error("event=db_conn error=\"event_new failed\"");
		abort();
	}
	return c;
}

static void
conn_free(struct db_conn *c)
{
	conn_close_session(c);
	event_free(c->io);
	event_free(c->timer);
	free(c);
}

/* ------------------------------------------------------------------ */
/* LISTEN */

static void
listener_kick(struct db_pool *pool)
{
	if (pool->listen_kick != NULL && !pool->stopping)
		event_active(pool->listen_kick, EV_TIMEOUT, 0);
}

/* Deferred, so that a notification callback calling db_listen never changes
 * the listening session under drain_notifies. */
static void
listen_kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct db_pool *pool = arg;
	struct db_conn *c = pool->listener;
	char *sql = NULL;
	size_t len = 0;
	int upto = pool->nchannels;
	bool any = false;

	if (c == NULL)
		return;
	if (c->state == CONN_OFF) {
		c->failures = 0;
		conn_schedule(c, 0);
		return;
	}
	if (c->state != CONN_IDLE)
		return;
	for (int i = 0; i < upto; i++) {
		char *id;
		size_t n;

		if (pool->channels[i].listened)
			continue;
		id = PQescapeIdentifier(c->pg, pool->channels[i].name,
		    strlen(pool->channels[i].name));
		if (id == NULL) {
			free(sql);
			conn_lost(c, PQerrorMessage(c->pg));
			return;
		}
		n = strlen(id);
		sql = xrealloc(sql, len + n + 10);
		len += (size_t)snprintf(sql + len, n + 10, "LISTEN %s;", id);
		PQfreemem(id);
		any = true;
	}
	if (!any)
		return;
	c->listen_sent = true;
	c->listen_upto = upto;
	conn_set_state(c, CONN_BUSY);
	if (PQsendQuery(c->pg, sql) != 1) {
		free(sql);
		conn_lost(c, PQerrorMessage(c->pg));
		return;
	}
	free(sql);
	(void)conn_flush(c);
}

bool
db_listen(struct db_pool *pool, const char *channel, db_notify_cb cb,
    void *arg)
{
	struct db_channel *ch;
	size_t len = channel != NULL ? strlen(channel) : 0;

	if (pool->stopping || cb == NULL || len == 0 ||
	    len > DB_CHANNEL_MAX || pool->nchannels >= DB_MAX_CHANNELS)
		return false;
	if (pool->listener == NULL) {
		pool->listener = conn_new(pool, -1);
		pool->listen_kick = event_new(pool->base, -1, 0,
		    listen_kick_cb, pool);
		if (pool->listen_kick == NULL) {
			log_error("event=db_listen error=\"event_new failed\"");
			abort();
		}
	}
	pool->channels = xreallocarray(pool->channels,
	    (size_t)pool->nchannels + 1, sizeof(*pool->channels));
	ch = &pool->channels[pool->nchannels++];
	ch->name = xstrdup(channel);
	ch->cb = cb;
	ch->arg = arg;
	ch->listened = false;
	listener_kick(pool);
	return true;
}

/* ------------------------------------------------------------------ */
/* the pool */

static void
free_params(char **kw, char **val)
{
	for (int i = 0; kw != NULL && kw[i] != NULL; i++) {
		free(kw[i]);
		free(val[i]);
	}
	free(kw);
	free(val);
}

/*
 * Keyword arrays for PQconnectStartParams: the caller's conninfo, plus
 * application_name and a statement_timeout appended to any options it had.
 */
static bool
build_params(const struct db_pool_opts *o, char ***kwp, char ***valp,
    int *connect_timeout_ms, const char **err)
{
	PQconninfoOption *opts, *op;
	char *perr = NULL;
	char **kw, **val;
	char stmt_opt[64];
	int n = 0, cap = 4;
	bool have_app = false, have_opts = false;

	opts = PQconninfoParse(o->conninfo, &perr);
	if (opts == NULL) {
		if (perr != NULL)
			PQfreemem(perr);
		*err = "invalid database conninfo";
		return false;
	}
	for (op = opts; op->keyword != NULL; op++)
		if (op->val != NULL)
			cap++;
	kw = xcalloc((size_t)cap, sizeof(char *));
	val = xcalloc((size_t)cap, sizeof(char *));
	snprintf(stmt_opt, sizeof(stmt_opt), "-c statement_timeout=%d",
	    o->query_timeout_ms + DB_STMT_GRACE_MS);
	*connect_timeout_ms = 0;
	for (op = opts; op->keyword != NULL; op++) {
		if (op->val == NULL)
			continue;
		if (strcmp(op->keyword, "connect_timeout") == 0) {
			int secs = atoi(op->val);

			if (secs > 0 && secs <= 3600)
				*connect_timeout_ms = secs * 1000;
		}
		kw[n] = xstrdup(op->keyword);
		if (strcmp(op->keyword, "options") == 0) {
			size_t sz = strlen(op->val) + strlen(stmt_opt) + 2;

			val[n] = xmalloc(sz);
			snprintf(val[n], sz, "%s %s", op->val, stmt_opt);
			have_opts = true;
		} else if (strcmp(op->keyword, "application_name") == 0 &&
		    o->application_name != NULL) {
			val[n] = xstrdup(o->application_name);
			have_app = true;
		} else {
			val[n] = xstrdup(op->val);
		}
		n++;
	}
	PQconninfoFree(opts);
	if (!have_opts) {
		kw[n] = xstrdup("options");
		val[n++] = xstrdup(stmt_opt);
	}
	if (!have_app && o->application_name != NULL) {
		kw[n] = xstrdup("application_name");
		val[n++] = xstrdup(o->application_name);
	}
	*kwp = kw;
	*valp = val;
	return true;
}

static bool
opts_valid(const struct db_pool_opts *o, const char **err)
{
	if (o->conninfo == NULL) {
		*err = "missing database conninfo";
		return false;
	}
	if (o->pool_size < 1 || o->pool_size > 1024 ||
	    o->query_timeout_ms < 1 || o->query_timeout_ms > 86400000 ||
	    o->max_waiting < 0 || o->reconnect_max_ms < DB_BACKOFF_MIN_MS ||
	    o->reconnect_max_ms > 3600000 || o->replan_interval_ms < 0 ||
	    o->replan_interval_ms > 86400000) {
		*err = "database pool option out of range";
		return false;
	}
	return true;
}

static void
pool_set_timeout(struct db_pool *pool, int ms)
{
	struct timeval tv = {
		.tv_sec = ms / 1000,
		.tv_usec = (ms % 1000) * 1000,
	};

	pool->query_timeout_ms = ms;
	/* Every request waits the same duration: libevent keeps such
	 * timers in a queue instead of its heap. */
	pool->timeout_tv = event_base_init_common_timeout(pool->base, &tv);
	if (pool->timeout_tv == NULL) {
		static struct timeval fallback;

		fallback = tv;
		pool->timeout_tv = &fallback;
	}
}

/* Brings slots [0, size) to life and sends surplus idle slots off. */
static void
pool_resize(struct db_pool *pool)
{
	if (pool->size > pool->nconns) {
		pool->conns = xreallocarray(pool->conns, (size_t)pool->size,
		    sizeof(*pool->conns));
		for (int i = pool->nconns; i < pool->size; i++)
			pool->conns[i] = conn_new(pool, i);
		pool->nconns = pool->size;
	}
	for (int i = 0; i < pool->nconns; i++) {
		struct db_conn *c = pool->conns[i];

		if (i < pool->size) {
			if (c->state == CONN_OFF) {
				c->failures = 0;
				conn_schedule(c, 0);
			} else if (c->state == CONN_IDLE &&
			    c->gen != pool->gen) {
				conn_release(c);
			}
		} else if (c->state != CONN_BUSY && c->state != CONN_OFF) {
			conn_close_session(c);
			conn_set_state(c, CONN_OFF);
		}
	}
}

struct db_pool *
db_pool_new(struct event_base *base, const struct db_pool_opts *opts,
    const char **err)
{
	struct db_pool *pool;

	if (!opts_valid(opts, err))
		return NULL;
	pool = xcalloc(1, sizeof(*pool));
	if (!build_params(opts, &pool->kw, &pool->val,
	    &pool->connect_timeout_ms, err)) {
		free(pool);
		return NULL;
	}
	pool->base = base;
	pool->size = opts->pool_size;
	pool->max_waiting = opts->max_waiting;
	pool->reconnect_max_ms = opts->reconnect_max_ms;
	pool->replan_interval_ms = opts->replan_interval_ms;
	pool->rnd = (uint32_t)mono_ms() ^ (uint32_t)(uintptr_t)pool;
	pool_set_timeout(pool, opts->query_timeout_ms);
	TAILQ_INIT(&pool->queue);
	TAILQ_INIT(&pool->done);
	pool->done_ev = event_new(base, -1, 0, done_cb, pool);
	if (pool->done_ev == NULL) {
		free_params(pool->kw, pool->val);
		free(pool);
		*err = "cannot create event";
		return NULL;
	}
	pool->stats.size = pool->size;
	pool_resize(pool);
	return pool;
}

void
db_pool_reconfigure(struct db_pool *pool, const struct db_pool_opts *opts)
{
	const char *err = NULL;
	char **kw, **val;
	int connect_ms;
	bool changed = false;

	if (!opts_valid(opts, &err) ||
	    !build_params(opts, &kw, &val, &connect_ms, &err)) {
		log_error("event=db_reconfigure error=\"%s\"", err);
		return;
	}
	for (int i = 0; !changed; i++) {
		if (kw[i] == NULL || pool->kw[i] == NULL) {
			changed = kw[i] != pool->kw[i];
			break;
		}
		changed = strcmp(kw[i], pool->kw[i]) != 0 ||
		    strcmp(val[i], pool->val[i]) != 0;
	}
	if (changed) {
		free_params(pool->kw, pool->val);
		pool->kw = kw;
		pool->val = val;
		pool->connect_timeout_ms = connect_ms;
		pool->gen++;
	} else {
		free_params(kw, val);
	}
	pool->max_waiting = opts->max_waiting;
	pool->reconnect_max_ms = opts->reconnect_max_ms;
	pool->replan_interval_ms = opts->replan_interval_ms;
	pool_set_timeout(pool, opts->query_timeout_ms);
	pool->size = opts->pool_size;
	pool->stats.size = pool->size;
	if (!pool->stopping)
		pool_resize(pool);
	if (changed && pool->listener != NULL &&
	    pool->listener->state == CONN_IDLE) {
		conn_close_session(pool->listener);
		conn_schedule(pool->listener, 0);
	}
}

void
db_pool_free(struct db_pool *pool)
{
	struct db_req *req;

	if (pool == NULL)
		return;
	pool->stopping = true;
	while ((req = TAILQ_FIRST(&pool->queue)) != NULL)
		req_finish(req, DB_UNAVAILABLE, "database pool stopping");
	for (int i = 0; i < pool->nconns; i++) {
		struct db_conn *c = pool->conns[i];

		if (c->req != NULL) {
			req = c->req;
			c->req = NULL;
			req_finish(req, DB_UNAVAILABLE,
			    "database pool stopping");
		}
		conn_close_session(c);
		conn_set_state(c, CONN_OFF);
	}
	/* Callbacks run now; whatever they submit is refused. */
	pool_run_done(pool);
	for (int i = 0; i < pool->nconns; i++)
		conn_free(pool->conns[i]);
	free(pool->conns);
	if (pool->listener != NULL)
		conn_free(pool->listener);
	if (pool->listen_kick != NULL)
		event_free(pool->listen_kick);
	for (int i = 0; i < pool->nchannels; i++)
		free(pool->channels[i].name);
	free(pool->channels);
	event_free(pool->done_ev);
	free_params(pool->kw, pool->val);
	free(pool);
}

int
db_pool_pending(const struct db_pool *pool)
{
	return pool->nqueued + pool->ninflight + pool->ndone;
}

bool
db_pool_connected(const struct db_pool *pool)
{
	return pool->stats.connected > 0;
}

void
db_pool_stats(const struct db_pool *pool, struct db_stats *out)
{
	*out = pool->stats;
	out->waiting = pool->nqueued;
}

/* ------------------------------------------------------------------ */
/* blocking sessions for start-up */

struct db_sync {
	PGconn *pg;
};

/* PG_DIAG_STATEMENT_POSITION counts characters from 1; turn it into a line
 * of the (UTF-8) text so that an error in a migration names its line. */
static int
position_line(const char *sql, const char *pos)
{
	long want;
	char *end;
	int line = 1;
	long chars = 0;

	if (pos == NULL)
		return 0;
	errno = 0;
	want = strtol(pos, &end, 10);
	if (errno != 0 || *end != '\0' || want < 1)
		return 0;
	for (const unsigned char *p = (const unsigned char *)sql; *p; p++) {
		if ((*p & 0xc0) != 0x80 && ++chars >= want)
			return line;
		if (*p == '\n')
			line++;
	}
	return 0;
}

static void
sync_error(PGresult *r, PGconn *pg, const char *sql, char *err,
    size_t errlen)
{
	const char *msg = NULL, *state = NULL;
	char *clean;
	int line = 0;

	if (r != NULL) {
		msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
		state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
		if (sql != NULL)
			line = position_line(sql,
			    PQresultErrorField(r, PG_DIAG_STATEMENT_POSITION));
	}
	if (msg == NULL)
		msg = PQerrorMessage(pg);
	clean = dup_message(msg);
	if (line > 0)
		snprintf(err, errlen, "line %d: %s (sqlstate %s)", line, clean,
		    state != NULL ? state : "");
	else if (state != NULL)
		snprintf(err, errlen, "%s (sqlstate %s)", clean, state);
	else
		snprintf(err, errlen, "%s", clean);
	free(clean);
}

struct db_sync *
db_sync_connect(const char *conninfo, int timeout_s, char *err,
    size_t errlen)
{
	const char *kw[] = { "connect_timeout", "dbname", NULL };
	const char *val[3];
	char tmo[16];
	struct db_sync *s;
	PGconn *pg;

	snprintf(tmo, sizeof(tmo), "%d", timeout_s > 0 ? timeout_s : 10);
	val[0] = tmo;
	val[1] = conninfo;
	val[2] = NULL;
	/* expand_dbname: conninfo is a full connection string, and the
	 * timeout given here applies unless conninfo names its own (libpq
	 * lets later entries override earlier ones, so conninfo comes last). */
	pg = PQconnectdbParams(kw, val, 1);
	if (pg == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	PQsetNoticeReceiver(pg, notice_cb, NULL);
	if (PQstatus(pg) != CONNECTION_OK) {
		sync_error(NULL, pg, NULL, err, errlen);
		PQfinish(pg);
		return NULL;
	}
	s = xcalloc(1, sizeof(*s));
	s->pg = pg;
	return s;
}

bool
db_sync_exec(struct db_sync *s, const char *sql, char *err, size_t errlen)
{
	PGresult *r = PQexec(s->pg, sql);
	ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;

	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ||
	    st == PGRES_EMPTY_QUERY) {
		PQclear(r);
		return true;
	}
	sync_error(r, s->pg, sql, err, errlen);
	PQclear(r);
	return false;
}

bool
db_sync_query1(struct db_sync *s, const char *sql, int nparams,
    const char *const *params, char **out_value, char *err, size_t errlen)
{
	PGresult *r;
	ExecStatusType st;

	*out_value = NULL;
	if (!stmt_valid(sql, nparams, params)) {
		snprintf(err, errlen, "invalid statement");
		return false;
	}
	r = PQexecParams(s->pg, sql, nparams, NULL, params, NULL, NULL, 0);
	st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		sync_error(r, s->pg, NULL, err, errlen);
		PQclear(r);
		return false;
	}
	if (PQntuples(r) > 0 && PQnfields(r) > 0 && !PQgetisnull(r, 0, 0))
		*out_value = xstrdup(PQgetvalue(r, 0, 0));
	PQclear(r);
	return true;
}

void
db_sync_close(struct db_sync *s)
{
	if (s == NULL)
		return;
	PQfinish(s->pg);
	free(s);
}

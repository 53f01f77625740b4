/* feed.c - PushIncidents and ReportIncident: ingest with group commit. */

/*
 * Life of a push.
 *
 * The handler validates and classifies every item in C (triage.c: bounds,
 * the department's crosswalk, the four lists), folds repeats of an ext_id
 * within the request onto their first occurrence, and turns the survivors
 * into parallel arrays.  Points are located in memory (locate.c, with
 * the current cells that cellcache.c loads from PostGIS).  One
 * gridd_feed_push() call (003_feed.sql, 012_push_fixed_cost.sql) then
 * deduplicates, merges, creates, emits events, arms SLA timers and
 * notifies dispatch, set-based, for every request of the transaction at
 * once.
 *
 * Group commit.  Items of two task types never merge, so they never take
 * each other's merge locks either.  A push is therefore split into parts,
 * one per task type, and the queue holds parts in the order their pushes
 * came.  When a connection is free, as many queued parts as fit in
 * group_commit_max_items go together, their items concatenated in queue
 * order: one round trip, one plan and one WAL flush for all of them.
 * Items of a later push merge into earlier pushes' new incidents as
 * within one push.  When several connections are free at once, the parts
 * taken are shared among them by task type (lanes), the task types with
 * most items first, each to the lane with fewest so far: each lane is one
 * statement in a transaction of its own (BEGIN, the call, COMMIT), and the
 * lanes run side by side, on a core each, where one transaction would use
 * one.  Up to group_commit_parallel transactions are in flight (and at
 * most database.pool_size - 1).  A request is answered when every one of
 * its parts has committed.
 *
 * Parts, not pushes, wait.  A part waits only for what could make it
 * wait in the database or break an order: when a transaction ends, its
 * connection takes the next parts at once, whatever became of the other
 * transactions, so a task type whose transaction is slow (a large batch,
 * merge locks held by another process) holds back its own task type only
 * (as far as one look at the queue reaches: FEED_SCAN_MAX parts).
 * A part whose merge tiles (mergekeys.c) meet those of a transaction in
 * flight waits for the next look at the queue, and so do the parts behind
 * it that meet its tiles, so that it is not overtaken for ever: it would
 * only wait for the same locks in the database, holding a connection.
 * Parts in different parts of the city, or of other task types, go
 * beside each other.
 *
 * One source's pushes of a task type are applied in the order they came:
 * a part waits while a part of its source and task type is in flight or
 * waits ahead of it; other sources' parts, and the source's parts of
 * other task types, may pass it.  A part that sends an ext_id which an
 * earlier push of its source (in flight, waiting, or taken in the same
 * look) sends too waits for it, and reads DUPLICATE in a later
 * transaction, so every key of a call is distinct and no two transactions
 * race for one key.  Concurrent transactions, of this process or of
 * others sharing the database, serialise their merges with advisory locks
 * per (task type, tile) taken in key order in the SQL.  Transactions
 * number their events as each reaches the departments' sequence rows
 * (near its end), so a source's events follow its pushes' order within a
 * task type, not across task types; the wire contract promises only that
 * a subscriber reads them in sequence order.  Transactions that both offer
 * new incidents to workers pass over a worker the other holds (SKIP
 * LOCKED in the choice), and push_offer_max counts per transaction.
 *
 * Durability point.  A request's reply is built only once the
 * transactions of all its parts have answered, and db.c reports DB_OK
 * only after COMMIT succeeded, i.e. after PostgreSQL flushed the WAL
 * (synchronous_commit on).  Nothing is answered from a transaction that
 * might still roll back.  When the database fails (connection lost,
 * timeout) a transaction may or may not have committed, and another one
 * carrying a part of the same request may have: the request gets
 * UNAVAILABLE, and a client that pushes again gets DUPLICATE for whatever
 * did commit, with the incident id of the first answer.
 *
 * When a statement fails for its data, PostgreSQL aborts that transaction;
 * each of its parts then goes again alone (the parts of the same requests
 * in other transactions are answered as they were stored), so one bad
 * request (or a deadlock with another process) costs the others a retry,
 * not an error.
 */
#include "feed.h"

#include <sys/queue.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "config.h"
#include "conn.h"
#include "db.h"
#include "gridd.h"
#include "cellcache.h"
#include "locate.h"
#include "log.h"
#include "mergekeys.h"
#include "metrics.h"
#include "rpc.h"
#include "triage.h"

/* A request's items as array elements ("{a,b,..." without the closing
 * brace), concatenated across the requests of a transaction. */
enum fr {
	FR_EXT, FR_CAT, FR_TT, FR_LIST, FR_MATTER, FR_ROUTE, FR_SLA, FR_NOTE,
	FR_SEV, FR_OCC, FR_LON, FR_LAT, FR_CODE, FR_BLDG, FR_ADDR, FR_DESC,
	FR_REJ_EXT, FR_REJ_CAT, FR_REJ_TT, FR_REJ_REASON,
	FR_OWNER, FR_REJ_COMM, FR_REJ_LON, FR_REJ_LAT,
	FR_N
};

/* The parameters of gridd_feed_push, in order. */
enum fg {
	FG_RADIUS, FG_WINDOW, FG_GRIDV,
	FG_KIND, FG_SOURCE, FG_EXT, FG_CAT, FG_TT, FG_LIST, FG_MATTER,
	FG_ROUTE, FG_SLA, FG_NOTE, FG_SEV, FG_OCC, FG_LON, FG_LAT, FG_COMM,
	FG_CELL, FG_CODE, FG_BLDG, FG_ADDR, FG_DESC,
	FG_REJ_KIND, FG_REJ_SOURCE, FG_REJ_EXT, FG_REJ_CAT, FG_REJ_TT,
	FG_REJ_REASON, FG_OWNER, FG_REJ_COMM, FG_REJ_LON, FG_REJ_LAT,
	FG_N
};

static const char feed_sql[] =
    "SELECT ord, outcome, incident_id, cell_id, grid_version"
    " FROM gridd_feed_push($1::float8, $2::int, $3::bigint,"
    " $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
    " $9::text[], $10::text[], $11::text[], $12::int[], $13::text[],"
    " $14::int[], $15::bigint[], $16::float8[], $17::float8[],"
    " $18::text[], $19::text[], $20::text[], $21::text[], $22::text[],"
    " $23::text[], $24::text[], $25::text[], $26::text[], $27::text[],"
    " $28::text[], $29::text[], $30::text[], $31::text[],"
    " $32::float8[], $33::float8[])";

/* Prepared once per connection: the call's text is parsed, analysed and
 * planned once per session, not once per transaction (about 0.1 ms of
 * each transaction's fixed cost, which an open loop pays per few dozen
 * items). */
static struct db_prepared feed_stmt = DB_PREPARED(feed_sql, FG_N);

/* A part retried alone that still meets a deadlock, a serialisation
 * failure or a unique violation (another process storing the same ext_id
 * at the same moment) goes again this many times; the retry then sees the
 * other transaction's rows and answers DUPLICATE or MERGED. */
#define FEED_CONFLICT_RETRIES 3

/* Queued parts looked at for one look at the queue: those that wait are
 * passed over, but not without bound. */
#define FEED_SCAN_MAX 1024

/* Lanes of one look at the queue at most: group_commit_parallel's bound. */
#define FEED_LANES_MAX 16

/* Merge-tile keys of queued parts and ext_id lookups made in one look at
 * the queue: a backlog of large pushes costs each look at most this much
 * hashing (a part that waits behind its source's costs none). */
#define FEED_SCAN_KEYS_MAX 65536

/* Outcome counters: accepted, merged, duplicate, then rejected by reason. */
enum feed_count {
	FC_ACCEPTED,
	FC_MERGED,
	FC_DUPLICATE,
	FC_REJ_INVALID,
	FC_REJ_UNKNOWN_CATEGORY,
	FC_REJ_NEGATIVE_LIST,
	FC_REJ_OUTSIDE,
	FC_N
};

static const char *const count_labels[FC_N] = {
	"outcome=\"accepted\"",
	"outcome=\"merged\"",
	"outcome=\"duplicate\"",
	"outcome=\"rejected\",reason=\"invalid\"",
	"outcome=\"rejected\",reason=\"unknown_category\"",
	"outcome=\"rejected\",reason=\"negative_list\"",
	"outcome=\"rejected\",reason=\"outside\"",
};

/* Size histograms: batch items and group-commit sizes. */
#define SIZE_BUCKETS 7
static const double size_bounds[SIZE_BUCKETS] = {
	1, 10, 100, 1000, 5000, 20000, 100000,
};

struct size_hist {
	uint64_t counts[SIZE_BUCKETS + 1];
	uint64_t count;
	double sum;
};

/* One item's answer. */
struct feed_res {
	Gridd__V1__PushResult__Outcome outcome;
	Gridd__V1__ErrorCode error;
	int list, matter;	/* wire enums; 0 = unknown */
	enum feed_count counted;
	uint64_t incident_id;
	char *ext_id;		/* echo; "" when the pushed one was not valid */
	char *task_type;
	char *cell_id;
	char *message;
	char *code;		/* grid code / building for a not-found message */
	double lon, lat;
	bool has_point;
	int dup_of;		/* earlier item with the same ext_id, or -1 */
	int part;		/* the request's part that sends it */
	int sql_ord;		/* 1-based row within its part, 0 = not sent */
};

/* How a transaction failed.  Refused by the server (a sqlstate): nothing
 * of it was stored.  Otherwise (connection lost, timeout, never sent) it
 * may have committed, and only the client can safely push again. */
struct lane_end {
	char sqlstate[6];	/* "" when the server gave none */
	char *error;
};

/* Where a part is on its way to the database. */
enum part_state {
	PART_QUEUED,		/* in fq.queue */
	PART_INFLIGHT,		/* in a transaction not answered yet */
	PART_DONE,		/* committed, and its answers read */
	PART_FAILED,		/* not stored, or not known to be (end) */
};

/*
 * A request's sent items of one task type; its first part also records
 * the request's refusals (one of refusals only when nothing is sent).
 * Items of two task types never merge, nor wait for each other's merge
 * locks, so the queue holds parts, not requests, and a part goes to the
 * database as soon as nothing in flight could make it wait, whatever
 * became of its request's other parts.
 */
struct feed_part {
	TAILQ_ENTRY(feed_part) entry;	/* in fq.queue while PART_QUEUED */
	struct feed_req *r;
	char *tt;		/* task type; "" for refusals only */
	size_t n_sql;		/* items sent */
	size_t n_rej;		/* refusals recorded */
	size_t weight;		/* in the queue and against the cap */
	char *frag[FR_N];
	struct mergekeys keys;	/* the merge tiles its items will lock */
	enum part_state state;
	bool solo;		/* retried alone after its transaction failed */
	bool tile_waited;	/* held back for them once (counted) */
	int retries;		/* alone, after a conflict with another process */
	int lane;		/* while a look at the queue shares parts out */
	size_t row0;		/* its first row in its transaction's result */
	struct lane_end end;	/* PART_FAILED: why */
};

struct feed_req {
	struct conn *c;
	uint64_t request_id;
	bool from_worker;
	char source[CONN_PRINCIPAL_MAX + 1];
	size_t n;		/* items in the request: its parts' weights
				 * add up to it, since refusals are recorded
				 * by the same statement */
	size_t n_sql;		/* items sent to the SQL, in all its parts */
	size_t n_rej;		/* refusals recorded (by its first part) */
	struct feed_part *parts;
	size_t nparts;
	size_t nleft;		/* parts neither stored nor failed */
	uint64_t stamp;		/* the last look at the queue that took one */
	bool broken;		/* a committed part's answer was unreadable */
	struct feed_res *res;
	int *slots;		/* open addressing: the sent items' ext_ids */
	size_t nslots;
	int64_t started;	/* mono_ms */
};

TAILQ_HEAD(feed_queue, feed_part);

/* One ingest transaction (BEGIN, one statement, COMMIT) on a connection of
 * its own: parts of one task type or more, in queue order. */
struct feed_txn {
	TAILQ_ENTRY(feed_txn) entry;	/* in fq.inflight */
	struct feed_part **parts;
	size_t n;
	int64_t started;
	bool solo;		/* one part retried alone */
};

TAILQ_HEAD(feed_txns, feed_txn);

static struct {
	struct feed_queue queue;	/* parts waiting, in arrival order */
	size_t queued_items;
	struct feed_txns inflight;	/* transactions not answered yet */
	struct mergekeys_set inflight_keys;	/* their merge tiles */
	int ninflight;
	int solo_inflight;		/* transactions retrying one part */
	uint64_t stamp;			/* looks at the queue */
	uint64_t counts[FC_N];
	uint64_t lane_txns;		/* transactions sent */
	uint64_t group_retries;
	uint64_t tile_waits;	/* parts held back for merge tiles */
	uint64_t busy;		/* pushes refused: queue full */
	uint64_t late;		/* parts answered unsent: out of time */
	uint64_t db_failures;
	uint64_t min_waits;	/* waits beside those in flight (metric) */
	struct event *min_ev;	/* ends such a wait */
	int64_t min_due;	/* mono_ms when it fires; 0: not pending */
	struct size_hist batch_items;
	struct size_hist group_reqs;
	struct size_hist group_items;
	struct metrics_hist commit_ms;
} fq = {
	.queue = TAILQ_HEAD_INITIALIZER(fq.queue),
	.inflight = TAILQ_HEAD_INITIALIZER(fq.inflight),
};

static void feed_flush(void);

/* The merge tiles of the transactions in flight, kept as they start and
 * rebuilt as they end, rather than on every look at the queue (one per
 * push that arrives while they run). */
static void
inflight_keys_rebuild(void)
{
	struct feed_txn *t;

	mergekeys_set_free(&fq.inflight_keys);
	mergekeys_set_init(&fq.inflight_keys);
	TAILQ_FOREACH(t, &fq.inflight, entry)
		for (size_t i = 0; i < t->n; i++)
			mergekeys_set_add(&fq.inflight_keys,
			    &t->parts[i]->keys);
}

/* ---- a growable string for array literals ------------------------------ */

struct sbuf {
	char *p;
	size_t len, cap;
};

static void
sb_need(struct sbuf *b, size_t more)
{
	if (b->len + more + 1 <= b->cap)
		return;
	while (b->len + more + 1 > b->cap)
		b->cap = b->cap ? b->cap * 2 : 256;
	b->p = xrealloc(b->p, b->cap);
}

static void
sb_putc(struct sbuf *b, char ch)
{
	sb_need(b, 1);
	b->p[b->len++] = ch;
	b->p[b->len] = '\0';
}

static void
sb_puts(struct sbuf *b, const char *s)
{
	size_t n = strlen(s);

	sb_need(b, n);
	memcpy(b->p + b->len, s, n + 1);
	b->len += n;
}

static void
sb_sep(struct sbuf *b)
{
	if (b->len > 1)
		sb_putc(b, ',');
}

/* One quoted element of an array literal; NULL is SQL NULL. Inside double
 * quotes only the backslash and the quote need escaping. */
static void
sb_elem_str(struct sbuf *b, const char *s)
{
	sb_sep(b);
	if (s == NULL) {
		sb_need(b, 4);
		memcpy(b->p + b->len, "NULL", 5);
		b->len += 4;
		return;
	}
	sb_need(b, 2 * strlen(s) + 2);
	b->p[b->len++] = '"';
	for (; *s != '\0'; s++) {
		if (*s == '"' || *s == '\\')
			b->p[b->len++] = '\\';
		b->p[b->len++] = *s;
	}
	b->p[b->len++] = '"';
	b->p[b->len] = '\0';
}

/* ---- requests -------------------------------------------------------------- */

static void
size_observe(struct size_hist *h, double v)
{
	size_t i;

	for (i = 0; i < SIZE_BUCKETS && v > size_bounds[i]; i++)
		;
	h->counts[i]++;
	h->count++;
	h->sum += v;
}

static void
req_free(struct feed_req *r)
{
	for (size_t i = 0; i < r->n; i++) {
		free(r->res[i].ext_id);
		free(r->res[i].task_type);
		free(r->res[i].cell_id);
		free(r->res[i].message);
		free(r->res[i].code);
	}
	free(r->res);
	for (size_t p = 0; p < r->nparts; p++) {
		free(r->parts[p].tt);
		for (int i = 0; i < FR_N; i++)
			free(r->parts[p].frag[i]);
		mergekeys_free(&r->parts[p].keys);
		free(r->parts[p].end.error);
	}
	free(r->parts);
	free(r->slots);
	conn_release(r->c);
	free(r);
}

static void PRINTF_LIKE(4, 5)
res_reject(struct feed_res *res, Gridd__V1__ErrorCode code,
    enum feed_count counted, const char *fmt, ...)
{
	char msg[TRIAGE_MSG_MAX + 64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	res->outcome = GRIDD__V1__PUSH_RESULT__OUTCOME__REJECTED;
	res->error = code;
	res->counted = counted;
	free(res->message);
	res->message = xstrdup(msg);
}

/* The reply, in request order; then the per-batch log line. */
static void
req_answer(struct feed_req *r)
{
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__PushIncidentsReply rep =
	    GRIDD__V1__PUSH_INCIDENTS_REPLY__INIT;
	Gridd__V1__PushResult *pr, **pp;
	size_t tally[FC_N] = { 0 }, rejected = 0;

	pr = xcalloc(r->n ? r->n : 1, sizeof(*pr));
	pp = xcalloc(r->n ? r->n : 1, sizeof(*pp));
	for (size_t i = 0; i < r->n; i++) {
		const struct feed_res *s = &r->res[i];

		gridd__v1__push_result__init(&pr[i]);
		pr[i].ext_id = s->ext_id;
		pr[i].outcome = s->outcome;
		pr[i].incident_id = s->incident_id;
		pr[i].cell_id = s->cell_id != NULL ? s->cell_id : "";
		pr[i].list = (Gridd__V1__TaskList)s->list;
		pr[i].matter = (Gridd__V1__Matter)s->matter;
		pr[i].error = s->error;
		pr[i].message = s->message != NULL ? s->message : "";
		pr[i].task_type = s->task_type != NULL ? s->task_type : "";
		pp[i] = &pr[i];
		fq.counts[s->counted]++;
		tally[s->counted]++;
		if (s->counted >= FC_REJ_INVALID)
			rejected++;
	}
	rep.results = pp;
	rep.n_results = r->n;
	env.request_id = r->request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_PUSH_INCIDENTS_REPLY;
	env.push_incidents_reply = &rep;
	if (conn_is_open(r->c))
		conn_send(r->c, &env);
	log_info("%s event=push source=%s:%s request_id=%" PRIu64
	    " items=%zu accepted=%zu merged=%zu duplicate=%zu rejected=%zu"
	    " negative_list=%zu unknown_category=%zu outside=%zu invalid=%zu"
	    " ms=%" PRId64, conn_log_prefix(r->c),
	    r->from_worker ? "worker" : "department", r->source,
	    r->request_id, r->n, tally[FC_ACCEPTED], tally[FC_MERGED],
	    tally[FC_DUPLICATE], rejected, tally[FC_REJ_NEGATIVE_LIST],
	    tally[FC_REJ_UNKNOWN_CATEGORY], tally[FC_REJ_OUTSIDE],
	    tally[FC_REJ_INVALID], mono_ms() - r->started);
	free(pr);
	free(pp);
}

static void
req_fail(struct feed_req *r, Gridd__V1__ErrorCode code, const char *msg)
{
	if (conn_is_open(r->c))
		rpc_reply_error(r->c, r->request_id, code, msg);
	log_warn("%s event=push source=%s:%s request_id=%" PRIu64
	    " items=%zu outcome=error code=%d", conn_log_prefix(r->c),
	    r->from_worker ? "worker" : "department", r->source,
	    r->request_id, r->n, (int)code);
}

/* Reads part p's rows of its lane's statement (from its row0 on) back
 * into the items it sent. */
static bool
req_apply_part(struct feed_req *r, size_t p, const struct db_res *res)
{
	const struct feed_part *pt = &r->parts[p];
	size_t k = pt->row0;

	if (db_res_status(res) != DB_OK || db_res_cols(res) != 5 ||
	    (size_t)db_res_rows(res) < pt->row0 + pt->n_sql)
		return false;
	for (size_t i = 0; i < r->n; i++) {
		struct feed_res *s = &r->res[i];
		const char *outcome;
		int64_t ord, inc;

		if (s->sql_ord == 0 || s->part != (int)p)
			continue;
		if (!db_res_int64(res, (int)k, 0, &ord) ||
		    ord != (int64_t)pt->row0 + s->sql_ord)
			return false;
		outcome = db_res_get(res, (int)k, 1);
		if (strcmp(outcome, "accepted") == 0 ||
		    strcmp(outcome, "merged") == 0 ||
		    strcmp(outcome, "duplicate") == 0) {
			if (!db_res_int64(res, (int)k, 2, &inc) || inc <= 0)
				return false;
			s->incident_id = (uint64_t)inc;
			if (!db_res_isnull(res, (int)k, 3))
				s->cell_id = xstrdup(db_res_get(res, (int)k,
				    3));
			if (outcome[0] == 'a') {
				s->outcome =
				    GRIDD__V1__PUSH_RESULT__OUTCOME__ACCEPTED;
				s->counted = FC_ACCEPTED;
			} else if (outcome[0] == 'm') {
				s->outcome =
				    GRIDD__V1__PUSH_RESULT__OUTCOME__MERGED;
				s->counted = FC_MERGED;
			} else {
				s->outcome =
				    GRIDD__V1__PUSH_RESULT__OUTCOME__DUPLICATE;
				s->counted = FC_DUPLICATE;
			}
		} else if (strcmp(outcome, "outside") == 0) {
			res_reject(s, GRIDD__V1__ERROR_CODE__BAD_REQUEST,
			    FC_REJ_OUTSIDE, "outside every community: lon/lat "
			    "%.6f, %.6f", s->lon, s->lat);
		} else if (strcmp(outcome, "unknown_code") == 0) {
			res_reject(s, GRIDD__V1__ERROR_CODE__BAD_REQUEST,
			    FC_REJ_OUTSIDE, "dept_grid_code %.*s: not in "
			    "department %s's crosswalk to any current cell",
			    (int)utf8_prefix(s->code ? s->code : "", 64),
			    s->code ? s->code : "", r->source);
		} else if (strcmp(outcome, "unknown_building") == 0) {
			res_reject(s, GRIDD__V1__ERROR_CODE__BAD_REQUEST,
			    FC_REJ_OUTSIDE, "building_id %.*s: unknown "
			    "building",
			    (int)utf8_prefix(s->code ? s->code : "", 64),
			    s->code ? s->code : "");
		} else {
			return false;
		}
		k++;
	}
	return true;
}

/* Once every part is in: the repeats of an ext_id answer as their first
 * occurrence did. */
static void
req_resolve_repeats(struct feed_req *r)
{
	for (size_t i = 0; i < r->n; i++) {
		struct feed_res *s = &r->res[i];
		const struct feed_res *first;

		if (s->dup_of < 0)
			continue;
		first = &r->res[s->dup_of];
		if (first->outcome == GRIDD__V1__PUSH_RESULT__OUTCOME__REJECTED) {
			res_reject(s, GRIDD__V1__ERROR_CODE__BAD_REQUEST,
			    FC_REJ_INVALID, "ext_id: repeats item %d of this "
			    "batch, which was rejected", s->dup_of + 1);
			continue;
		}
		s->outcome = GRIDD__V1__PUSH_RESULT__OUTCOME__DUPLICATE;
		s->counted = FC_DUPLICATE;
		s->incident_id = first->incident_id;
		s->cell_id = first->cell_id ? xstrdup(first->cell_id) : NULL;
	}
}

/* r's parts stored, their answers read. */
static size_t
req_parts_done(const struct feed_req *r)
{
	size_t n = 0;

	for (size_t p = 0; p < r->nparts; p++)
		n += r->parts[p].state == PART_DONE;
	return n;
}

/* ---- ingest transactions ----------------------------------------------- */

/* The server going away or out of resources (connection exception,
 * insufficient resources, operator intervention such as a shutdown or a
 * cancel, system error): not the statement's fault, and the client is
 * told UNAVAILABLE. */
static bool
sqlstate_operational(const char *sqlstate)
{
	return strncmp(sqlstate, "08", 2) == 0 ||
	    strncmp(sqlstate, "53", 2) == 0 ||
	    strncmp(sqlstate, "57", 2) == 0 ||
	    strncmp(sqlstate, "58", 2) == 0;
}

/* A conflict with another transaction: the same push may well go
 * through when tried again.  So may one whose prepared call went stale
 * (26000, 42P05; 0A000 "cached plan must not change result type": another
 * process redefined gridd_feed_push during an upgrade): db.c has moved
 * the statement to a new name, which the retry prepares on whichever
 * session runs it.  Any other 0A000 is retried too, and fails the same
 * way FEED_CONFLICT_RETRIES times. */
static bool
sqlstate_conflict(const char *sqlstate)
{
	return strncmp(sqlstate, "40", 2) == 0 ||
	    strcmp(sqlstate, "23505") == 0 ||
	    strcmp(sqlstate, "26000") == 0 ||
	    strcmp(sqlstate, "42P05") == 0 || strcmp(sqlstate, "0A000") == 0;
}

/* pt leaves the queue, for a transaction or to end unsent. */
static void
part_take(struct feed_part *pt)
{
	TAILQ_REMOVE(&fq.queue, pt, entry);
	fq.queued_items -= pt->weight;
	pt->state = PART_INFLIGHT;
}

/* pt was not stored (why has a sqlstate) or may have been (no sqlstate,
 * or why NULL: never sent). */
static void
part_fail(struct feed_part *pt, const struct lane_end *why)
{
	pt->state = PART_FAILED;
	free(pt->end.error);
	pt->end.error = NULL;
	pt->end.sqlstate[0] = '\0';
	if (why != NULL) {
		memcpy(pt->end.sqlstate, why->sqlstate, sizeof(why->sqlstate));
		if (why->error != NULL)
			pt->end.error = xstrdup(why->error);
	}
}

/*
 * Every part of r has come to an end.  r is answered when all of them were
 * stored (a transaction that failed stored none of the parts it carried);
 * otherwise it fails: UNAVAILABLE when a part's transaction died with its
 * connection or timed out, and so may or may not have committed (a push
 * again reads DUPLICATE for what did); INTERNAL when the server refused a
 * part's statement and going again would not help (alone already, for its
 * own data, or out of conflict retries).  Frees r.
 */
static void
req_finish(struct feed_req *r)
{
	const struct feed_part *failed = NULL;
	bool unknown = false;

	for (size_t p = 0; p < r->nparts; p++) {
		const struct feed_part *pt = &r->parts[p];

		if (pt->state != PART_FAILED)
			continue;
		if (failed == NULL)
			failed = pt;
		unknown = unknown || pt->end.sqlstate[0] == '\0';
	}
	if (failed == NULL && r->broken) {
		/* Committed, but the answer is unreadable: a push again
		 * reads DUPLICATE. */
		log_error("event=push source=%s outcome=error "
		    "reason=\"unexpected result shape\"", r->source);
		req_fail(r, GRIDD__V1__ERROR_CODE__INTERNAL,
		    "internal error; push again to read the stored answers");
	} else if (failed == NULL) {
		req_resolve_repeats(r);
		req_answer(r);
	} else if (unknown) {
		req_fail(r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable: the batch may not be stored; push "
		    "again (stored items answer DUPLICATE)");
	} else {
		log_error("event=push source=%s outcome=error sqlstate=%s "
		    "error=\"%s\"", r->source, failed->end.sqlstate,
		    failed->end.error != NULL ? failed->end.error : "");
		req_fail(r, GRIDD__V1__ERROR_CODE__INTERNAL,
		    req_parts_done(r) > 0 ? "internal error: part of the "
		    "batch was stored; push it again (stored items answer "
		    "DUPLICATE)" : "internal error: the batch was not stored");
	}
	req_free(r);
}

/* Whether a part of r may have committed without an answer: r fails
 * UNAVAILABLE whatever its other parts meet, so none of them goes again
 * (req_doom ended those that were queued). */
static bool
req_unknown(const struct feed_req *r)
{
	for (size_t p = 0; p < r->nparts; p++)
		if (r->parts[p].state == PART_FAILED &&
		    r->parts[p].end.sqlstate[0] == '\0')
			return true;
	return false;
}

/* pt, a part of r, just failed without an answer (it may have committed):
 * r fails UNAVAILABLE whatever its other parts meet, so those still queued
 * end now, unsent; those in a transaction already run to its end.  pt
 * itself is counted out after (parts_end), so r's parts left never reach
 * zero here. */
static void
req_doom(struct feed_req *r)
{
	for (size_t p = 0; p < r->nparts; p++) {
		struct feed_part *pt = &r->parts[p];

		if (pt->state != PART_QUEUED)
			continue;
		part_take(pt);
		part_fail(pt, NULL);
		r->nleft--;
	}
}

/* Room for the requests that t's parts may finish. */
static struct feed_req **
txn_fin(const struct feed_txn *t)
{
	return xcalloc(t->n ? t->n : 1, sizeof(struct feed_req *));
}

/* The parts pts came to an end (stored or failed), but those queued to go
 * again: each request whose last part this was goes into fin, once.
 * Returns how many.  Called before anything can take a part that goes
 * again (it is no longer queued then), or end one of these requests. */
static size_t
parts_end(struct feed_part **pts, size_t n, struct feed_req **fin)
{
	size_t nfin = 0;

	for (size_t i = 0; i < n; i++) {
		struct feed_part *pt = pts[i];

		if (pt->state == PART_QUEUED)
			continue;
		if (--pt->r->nleft == 0)
			fin[nfin++] = pt->r;
	}
	return nfin;
}

/* Answers and frees the requests parts_end found; frees fin. */
static void
reqs_finish(struct feed_req **fin, size_t nfin)
{
	for (size_t k = 0; k < nfin; k++)
		req_finish(fin[k]);
	free(fin);
}

static void
txn_free(struct feed_txn *t)
{
	free(t->parts);
	free(t);
}

/* t leaves the transactions in flight: its tiles are free again. */
static void
txn_unlink(struct feed_txn *t)
{
	TAILQ_REMOVE(&fq.inflight, t, entry);
	if (t->solo)
		fq.solo_inflight--;
	inflight_keys_rebuild();
}

/*
 * One transaction answered.  Its parts' answers are read now (the results
 * live only in this call).  When it failed, the server refused it (a
 * sqlstate) or it may have committed (connection lost, timeout).  Refused,
 * each of its parts goes again alone, at the head of the queue in its
 * order, so that one bad request costs the others a retry, not an error;
 * alone already, only a conflict is worth another go (up to
 * FEED_CONFLICT_RETRIES); and none whose request has a part that may have
 * committed (that request fails UNAVAILABLE: the client pushes again).
 * Then the next transactions go out, before the
 * replies are built (that takes the loop a while, and the connections
 * would wait for it with nothing to do).
 */
static void
lane_cb(void *arg, enum db_status st, const struct db_res *const *results,
    int n)
{
	struct feed_txn *t = arg;
	struct lane_end why = { "", NULL };
	struct feed_req **fin;
	size_t retried = 0, nfin;

	fq.ninflight--;
	metrics_hist_observe(&fq.commit_ms, (double)(mono_ms() - t->started));
	txn_unlink(t);
	if (st == DB_OK && n == 1) {
		int64_t gv;

		/* The grid version the transaction saw: a newer one than the
		 * index's reloads it. */
		if (db_res_status(results[0]) == DB_OK &&
		    db_res_rows(results[0]) > 0 && db_res_cols(results[0]) == 5 &&
		    db_res_int64(results[0], 0, 4, &gv))
			cellcache_seen_version(gv);
		for (size_t i = 0; i < t->n; i++) {
			struct feed_part *pt = t->parts[i];

			if (!req_apply_part(pt->r, (size_t)(pt - pt->r->parts),
			    results[0]))
				pt->r->broken = true;
			pt->state = PART_DONE;
		}
	} else {
		fq.db_failures++;
		/* Refused by the server only if it said why, for the
		 * statement's sake, and the connection lived on: then nothing
		 * of it was stored, and its parts may go again. */
		for (int i = 0; st != DB_UNAVAILABLE && st != DB_TIMEOUT &&
		    i < n; i++)
			if (results[i] != NULL &&
			    db_res_status(results[i]) == DB_SQL_ERROR &&
			    !sqlstate_operational(db_res_sqlstate(
			    results[i]))) {
				snprintf(why.sqlstate, sizeof(why.sqlstate),
				    "%s", db_res_sqlstate(results[i]));
				why.error = xstrdup(db_res_error(results[i]));
				break;
			}
		/* Backwards, each to the head: they keep their order there. */
		for (size_t i = t->n; i-- > 0;) {
			struct feed_part *pt = t->parts[i];

			if (why.sqlstate[0] == '\0' || req_unknown(pt->r) ||
			    (t->n == 1 && (!sqlstate_conflict(why.sqlstate) ||
			    pt->retries >= FEED_CONFLICT_RETRIES))) {
				part_fail(pt, &why);
				if (why.sqlstate[0] == '\0')
					req_doom(pt->r);
				continue;
			}
			if (t->n == 1)
				pt->retries++;
			pt->solo = true;
			pt->state = PART_QUEUED;
			TAILQ_INSERT_HEAD(&fq.queue, pt, entry);
			fq.queued_items += pt->weight;
			retried++;
		}
		if (retried > 0) {
			log_warn("event=push_txn outcome=retry parts=%zu "
			    "sqlstate=%s", t->n, why.sqlstate);
			fq.group_retries++;
		}
	}
	nfin = parts_end(t->parts, t->n, fin = txn_fin(t));
	free(why.error);
	txn_free(t);
	/* The next transactions go out before the replies are built; the
	 * parts that went again may be among them, and are no longer t's. */
	feed_flush();
	reqs_finish(fin, nfin);
}

/* The item of r sending this ext_id, or -1; with add, idx is recorded when
 * the key is new. nslots is a power of two over twice the items. */
static int
req_ext_find(struct feed_req *r, const char *ext, int add_idx)
{
	size_t mask = r->nslots - 1;

	for (size_t i = fnv1a32(ext) & mask;; i = (i + 1) & mask) {
		if (r->slots[i] < 0) {
			if (add_idx >= 0)
				r->slots[i] = add_idx;
			return -1;
		}
		if (strcmp(r->res[r->slots[i]].ext_id, ext) == 0)
			return r->slots[i];
	}
}

/* Appends a request's "{a,b" fragment to a transaction's array. */
static void
frag_append(struct sbuf *dst, const char *frag)
{
	if (frag == NULL || frag[0] == '\0' || frag[1] == '\0')
		return;
	if (dst->len > 1)
		sb_putc(dst, ',');
	sb_puts(dst, frag + 1);
}

/* The one statement of a transaction: its parts in queue order (a
 * request's parts in the order of their first item), the points located
 * with the process's index.  Sets each part's row0. */
static void
txn_statement(const struct feed_txn *t, struct db_batch *b)
{
	static const int to_fg[FR_N] = {
		FG_EXT, FG_CAT, FG_TT, FG_LIST, FG_MATTER, FG_ROUTE, FG_SLA,
		FG_NOTE, FG_SEV, FG_OCC, FG_LON, FG_LAT, FG_CODE, FG_BLDG,
		FG_ADDR, FG_DESC, FG_REJ_EXT, FG_REJ_CAT, FG_REJ_TT,
		FG_REJ_REASON, FG_OWNER, FG_REJ_COMM, FG_REJ_LON, FG_REJ_LAT,
	};
	struct sbuf a[FG_N];
	const char *params[FG_N];
	const struct locate_index *ix;
	size_t rows = 0;
	int64_t gv;
	char radius[64], window[32], gridv[32];

	memset(a, 0, sizeof(a));
	for (int k = FG_KIND; k < FG_N; k++)
		sb_putc(&a[k], '{');
	ix = cellcache_current(&gv);
	for (size_t j = 0; j < t->n; j++) {
		struct feed_part *pt = t->parts[j];
		const struct feed_req *r = pt->r;
		const char *kind = r->from_worker ? "worker" : "department";
		int p = (int)(pt - r->parts);

		pt->row0 = rows;
		rows += pt->n_sql;
		for (int k = 0; k < FR_N; k++)
			frag_append(&a[to_fg[k]], pt->frag[k]);
		for (size_t i = 0; i < pt->n_sql; i++) {
			sb_elem_str(&a[FG_KIND], kind);
			sb_elem_str(&a[FG_SOURCE], r->source);
		}
		for (size_t i = 0; i < pt->n_rej; i++) {
			sb_elem_str(&a[FG_REJ_KIND], kind);
			sb_elem_str(&a[FG_REJ_SOURCE], r->source);
		}
		for (size_t i = 0; i < r->n; i++) {
			const struct feed_res *s = &r->res[i];
			const char *comm = NULL, *cell = NULL;

			if (s->sql_ord == 0 || s->part != p)
				continue;
			if (ix != NULL && s->has_point)
				(void)locate_index_find(ix, s->lon, s->lat,
				    &comm, &cell);
			sb_elem_str(&a[FG_COMM], comm);
			sb_elem_str(&a[FG_CELL], cell);
		}
	}
	snprintf(radius, sizeof(radius), "%.17g", gridd.cfg->merge_radius_m);
	snprintf(window, sizeof(window), "%d", gridd.cfg->merge_window_s);
	snprintf(gridv, sizeof(gridv), "%" PRId64, gv);
	params[FG_RADIUS] = radius;
	params[FG_WINDOW] = window;
	/* NULL: no index, PostgreSQL locates. */
	params[FG_GRIDV] = ix != NULL ? gridv : NULL;
	for (int k = FG_KIND; k < FG_N; k++) {
		sb_putc(&a[k], '}');
		params[k] = a[k].p;
	}
	db_batch_add_prepared(b, &feed_stmt, params);
	for (int k = FG_KIND; k < FG_N; k++)
		free(a[k].p);
}

/* The most transactions in flight: the pool keeps a connection for
 * everything else (dispatch, sessions, subscriptions). */
static int
max_inflight(void)
{
	int n = gridd.cfg->group_commit_parallel;
	int room = gridd.cfg->pool_size - 1;

	if (n > room)
		n = room;
	return n < 1 ? 1 : n;
}

/*
 * A set of (source, name) pairs for one look at the queue: the task types
 * of a source whose parts must wait, and the sources with parts in flight,
 * held back or taken (name "").  Open addressing over the names, which
 * the requests own; grows at half full.
 */
struct pairset {
	struct pair {
		const struct feed_req *r;	/* stands for its source */
		const char *name;
	} *v;
	size_t mask, n;
};

static void
pairset_init(struct pairset *s)
{
	s->mask = 63;
	s->n = 0;
	s->v = xcalloc(s->mask + 1, sizeof(*s->v));
}

static size_t
pair_hash(const struct feed_req *r, const char *name)
{
	return (size_t)(fnv1a32(r->source) * 31u ^ fnv1a32(name) ^
	    (r->from_worker ? 0x9e3779b9u : 0));
}

/* Whether (r's source, name) is in s; added when it is not and add. */
static bool
pairset_find(struct pairset *s, const struct feed_req *r, const char *name,
    bool add)
{
	size_t i;

	for (i = pair_hash(r, name) & s->mask; s->v[i].r != NULL;
	    i = (i + 1) & s->mask)
		if (s->v[i].r->from_worker == r->from_worker &&
		    strcmp(s->v[i].r->source, r->source) == 0 &&
		    strcmp(s->v[i].name, name) == 0)
			return true;
	if (!add)
		return false;
	s->v[i].r = r;
	s->v[i].name = name;
	if (++s->n * 2 > s->mask) {
		struct pairset g = { xcalloc(2 * (s->mask + 1), sizeof(*g.v)),
		    2 * s->mask + 1, 0 };

		for (size_t k = 0; k <= s->mask; k++)
			if (s->v[k].r != NULL)
				(void)pairset_find(&g, s->v[k].r, s->v[k].name,
				    true);
		free(s->v);
		*s = g;
	}
	return false;
}

/* Whether pt sends an ext_id that q sends too, q a part of another
 * request of pt's source (a part of it already stored does not count:
 * pt reads DUPLICATE of it).  *work counts the lookups. */
static bool
part_meets_ext(const struct feed_part *pt, const struct feed_part *q,
    size_t *work)
{
	const struct feed_req *r = pt->r;
	int p = (int)(pt - r->parts), qp = (int)(q - q->r->parts), k;

	if (q->r == r || q->r->from_worker != r->from_worker ||
	    strcmp(q->r->source, r->source) != 0)
		return false;
	for (size_t i = 0; i < r->n; i++) {
		if (r->res[i].sql_ord == 0 || r->res[i].part != p)
			continue;
		++*work;
		k = req_ext_find(q->r, r->res[i].ext_id, -1);
		if (k >= 0 && q->r->res[k].part == qp)
			return true;
	}
	return false;
}

/* Whether pt sends an ext_id that an earlier push of its source, with a
 * part in flight, held back or taken in this look, sends too: then pt
 * reads DUPLICATE after that one is stored, never races it. */
static bool
part_ext_waits(const struct feed_part *pt, struct feed_part *const *held,
    size_t nheld, struct feed_part *const *sel, size_t nsel, size_t *work)
{
	const struct feed_txn *f;

	TAILQ_FOREACH(f, &fq.inflight, entry)
		for (size_t i = 0; i < f->n; i++)
			if (part_meets_ext(pt, f->parts[i], work))
				return true;
	for (size_t i = 0; i < nheld; i++)
		if (part_meets_ext(pt, held[i], work))
			return true;
	for (size_t i = 0; i < nsel; i++)
		if (part_meets_ext(pt, sel[i], work))
			return true;
	return false;
}

/* A task type's items in a look at the queue, for the choice of lanes. */
struct lane_load {
	const char *tt;
	size_t items;
	int lane;
};

static int
load_cmp(const void *a, const void *b)
{
	const struct lane_load *x = *(struct lane_load *const *)a;
	const struct lane_load *y = *(struct lane_load *const *)b;

	if (x->items != y->items)
		return x->items > y->items ? -1 : 1;
	return strcmp(x->tt, y->tt);
}

/* The entry of tt in t (open addressing over ix: 0 empty, else index + 1),
 * added with no items when new. */
static struct lane_load *
load_find(struct lane_load *t, size_t *nt, size_t *ix, size_t mask,
    const char *tt)
{
	size_t i;

	for (i = fnv1a32(tt) & mask; ix[i] != 0; i = (i + 1) & mask)
		if (strcmp(t[ix[i] - 1].tt, tt) == 0)
			return &t[ix[i] - 1];
	t[*nt].tt = tt;
	t[*nt].items = 0;
	t[*nt].lane = 0;
	ix[i] = ++*nt;
	return &t[*nt - 1];
}

/*
 * Shares the parts taken among at most max_lanes transactions by task
 * type: the types with most items first, each to the lane with fewest
 * items so far, since the transactions run side by side.  A part of
 * refusals only has no task type and takes no lane of its own: it goes
 * with the lightest.  Sets each part's lane; returns the number of lanes.
 */
static int
parts_lanes(struct feed_part **sel, size_t nsel, int max_lanes)
{
	size_t nt = 0, slots = 16, loads[FEED_LANES_MAX] = { 0 };
	struct lane_load *t, **by;
	size_t *ix;
	int lanes, lightest = 0;

	if (max_lanes < 1)
		max_lanes = 1;
	if (max_lanes > FEED_LANES_MAX)
		max_lanes = FEED_LANES_MAX;
	while (slots < 2 * nsel)
		slots *= 2;
	t = xcalloc(nsel ? nsel : 1, sizeof(*t));
	ix = xcalloc(slots, sizeof(*ix));
	for (size_t j = 0; j < nsel; j++)
		if (sel[j]->tt[0] != '\0')
			load_find(t, &nt, ix, slots - 1, sel[j]->tt)->items +=
			    sel[j]->n_sql + sel[j]->n_rej;
	/* Sorted by reference, so that ix still finds each type in t. */
	by = xcalloc(nt ? nt : 1, sizeof(*by));
	for (size_t k = 0; k < nt; k++)
		by[k] = &t[k];
	qsort(by, nt, sizeof(*by), load_cmp);
	lanes = nt < (size_t)max_lanes ? (int)nt : max_lanes;
	if (lanes < 1)
		lanes = 1;
	for (size_t k = 0; k < nt; k++) {
		int best = 0;

		for (int l = 1; l < lanes; l++)
			if (loads[l] < loads[best])
				best = l;
		by[k]->lane = best;
		loads[best] += by[k]->items;
	}
	free(by);
	for (int l = 1; l < lanes; l++)
		if (loads[l] < loads[lightest])
			lightest = l;
	for (size_t j = 0; j < nsel; j++)
		sel[j]->lane = sel[j]->tt[0] == '\0' ? lightest :
		    load_find(t, &nt, ix, slots - 1, sel[j]->tt)->lane;
	free(ix);
	free(t);
	return lanes;
}

/* Whether a request that came at started has too little of its
 * query_timeout_ms left to be sent (db_too_late). */
static bool
req_late(int64_t started, int64_t now)
{
	return gridd.db != NULL && db_too_late(gridd.db, now - started);
}

/* Sends t, in flight from now on; a transaction that cannot be sent is
 * answered at once (the caller's loop starts the next ones: no recursion
 * here).  Its limit is counted from the arrival of its oldest request, so
 * that a push that queued behind other transactions is still answered
 * within query_timeout_ms of its arrival (a database that hangs would
 * otherwise make it wait for theirs, then for its own); one whose oldest
 * request is late (feed_shed_late missed it) is not built or sent, and is
 * answered UNAVAILABLE. */
static void
txn_submit(struct feed_txn *t)
{
	struct db_batch *b;
	struct feed_req **fin;
	size_t nfin;
	int64_t oldest;
	bool late;

	t->started = oldest = mono_ms();
	TAILQ_INSERT_TAIL(&fq.inflight, t, entry);
	for (size_t i = 0; i < t->n; i++) {
		mergekeys_set_add(&fq.inflight_keys, &t->parts[i]->keys);
		if (t->parts[i]->r->started < oldest)
			oldest = t->parts[i]->r->started;
	}
	if (t->solo)
		fq.solo_inflight++;
	if ((late = req_late(oldest, t->started)))
		fq.late += t->n;
	else if (gridd.db != NULL) {
		b = db_batch_new();
		txn_statement(t, b);
		db_batch_waited(b, t->started - oldest);
		if (db_batch_submit(gridd.db, b, lane_cb, t)) {
			fq.ninflight++;
			fq.lane_txns++;
			return;
		}
	}
	/* Never sent: no sqlstate, so answered UNAVAILABLE. */
	if (!late)
		fq.db_failures++;
	txn_unlink(t);
	for (size_t i = 0; i < t->n; i++) {
		part_fail(t->parts[i], NULL);
		req_doom(t->parts[i]->r);
	}
	fin = txn_fin(t);
	nfin = parts_end(t->parts, t->n, fin);
	txn_free(t);
	reqs_finish(fin, nfin);
}

/*
 * Answers the late parts at the head of the queue UNAVAILABLE, unsent (and
 * with them the other queued parts of their requests, which came at the
 * same time).  The queue holds parts in the order their pushes came, so
 * the late ones are at its head, but for a part retried alone after its
 * transaction failed, which goes back to the head and may be younger than
 * what it passes: a late part behind it is caught by txn_submit instead.
 */
static void
feed_shed_late(void)
{
	struct feed_part *pt, **late = NULL;
	struct feed_req **fin;
	size_t n = 0, cap = 0, nfin;
	int64_t now = mono_ms();

	while ((pt = TAILQ_FIRST(&fq.queue)) != NULL &&
	    req_late(pt->r->started, now)) {
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			late = xreallocarray(late, cap, sizeof(*late));
		}
		part_take(pt);
		part_fail(pt, NULL);
		req_doom(pt->r);
		late[n++] = pt;
	}
	if (n == 0)
		return;
	fq.late += n;
	log_warn("event=push_late parts=%zu queued=%zu reason=\"queued past "
	    "query_timeout_ms\"", n, fq.queued_items);
	fin = xcalloc(n, sizeof(*fin));
	nfin = parts_end(late, n, fin);
	free(late);
	reqs_finish(fin, nfin);
}

/* Ends a wait for group_commit_min_items. */
static void
min_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	fq.min_due = 0;
	feed_flush();
}

/*
 * Whether the queue, whose head is pt, should wait before a transaction
 * starts beside those in flight.  Each transaction pays the call's fixed
 * cost (some statements' set-up, the commit) once, whatever its size.  A
 * connection that frees while the others are busy would otherwise take
 * whatever little came since they started: under a steady stream the
 * lanes then run small transactions back to back, and the stream's
 * ceiling is lower than that of the same load sent in bursts.  So, with
 * one in flight already, the queue waits for group_commit_min_items, or
 * until its oldest part has waited group_commit_delay_ms (never more than
 * half of query_timeout_ms, so that a part that waits is never too late
 * to be sent); with none in flight (a quiet moment) it never waits.
 */
static bool
feed_wait_min(const struct feed_part *pt)
{
	const struct cfg *cfg = gridd.cfg;
	int64_t now, left, due, delay = cfg->group_commit_delay_ms;
	struct timeval tv;

	if (delay > cfg->query_timeout_ms / 2)
		delay = cfg->query_timeout_ms / 2;
	if (fq.ninflight == 0 || cfg->group_commit_min_items == 0 ||
	    fq.queued_items >= (size_t)cfg->group_commit_min_items ||
	    fq.min_ev == NULL)
		return false;
	now = mono_ms();
	left = delay - (now - pt->r->started);
	if (left <= 0)
		return false;
	/*
	 * One tick more: libevent's clock is coarse and mono_ms truncates, so
	 * a timer set for exactly what is left may fire a little early and
	 * find a wait of a millisecond still to go.  A pending timer is only
	 * ever brought forward (a reload may have shortened the delay).
	 */
	due = now + left + 1;
	if (fq.min_due == 0 || due < fq.min_due) {
		tv.tv_sec = (time_t)((left + 1) / 1000);
		tv.tv_usec = (suseconds_t)((left + 1) % 1000) * 1000;
		if (evtimer_add(fq.min_ev, &tv) != 0)
			return false;
		if (fq.min_due == 0)
			fq.min_waits++;
		fq.min_due = due;
	}
	/* A timer is pending: it calls feed_flush, so nothing is stranded
	 * even if no transaction in flight ends before it. */
	return true;
}

/*
 * Starts transactions for the connections free; false when nothing could
 * start.  The queue holds parts in the order their pushes came.  One
 * source's pushes of a task type are applied in that order: a part waits
 * while a part of its source and task type is in flight or waits ahead of
 * it (so merges follow the source's own order).  A part that sends an
 * ext_id which an earlier push of its source, in flight, waiting or taken
 * now, sends too waits for it (it reads DUPLICATE after it: no two
 * transactions race for one (source, ext_id)).  A part whose merge tiles
 * meet those of the transactions in flight waits, and its tiles are kept
 * for it against the parts behind it (it would only wait for the locks in
 * the database, holding a connection).  Other parts pass the waiting ones,
 * up to FEED_SCAN_MAX looked at and FEED_SCAN_KEYS_MAX keys and items
 * hashed.  The parts taken, up to group_commit_max_items, are shared among
 * the free connections by task type.  A part retried alone after its
 * transaction failed runs with nothing beside it, so that whatever it
 * meets (a conflict with another process) is its own.
 */
static bool
feed_start(void)
{
	struct feed_part *pt, *next, **sel, **held;
	struct feed_txn *f, **txns;
	struct pairset waiting, srcs;
	struct mergekeys_set reserved;	/* tiles of parts held back */
	size_t cap = (size_t)gridd.cfg->group_commit_max_items;
	size_t nsel = 0, weight = 0, items = 0, reqs = 0, scanned = 0;
	size_t hashed = 0, nheld = 0;
	int room = max_inflight() - fq.ninflight, lanes;

	feed_shed_late();
	pt = TAILQ_FIRST(&fq.queue);
	if (pt == NULL || room < 1 || fq.solo_inflight > 0 ||
	    (pt->solo && fq.ninflight > 0) || feed_wait_min(pt))
		return false;
	sel = xcalloc(FEED_SCAN_MAX, sizeof(*sel));
	held = xcalloc(FEED_SCAN_MAX, sizeof(*held));
	fq.stamp++;
	if (pt->solo) {
		part_take(pt);
		sel[nsel++] = pt;
		items = pt->n_sql;
		reqs = 1;
	} else {
		/* waiting: (source, task type) pairs whose next part must
		 * wait; srcs: sources with a part in flight, held back or
		 * taken, the only ones whose parts may share an ext_id. */
		pairset_init(&waiting);
		pairset_init(&srcs);
		mergekeys_set_init(&reserved);
		TAILQ_FOREACH(f, &fq.inflight, entry)
			for (size_t i = 0; i < f->n; i++) {
				(void)pairset_find(&waiting, f->parts[i]->r,
				    f->parts[i]->tt, true);
				(void)pairset_find(&srcs, f->parts[i]->r, "",
				    true);
			}
		for (; pt != NULL && scanned < FEED_SCAN_MAX; pt = next,
		    scanned++) {
			next = TAILQ_NEXT(pt, entry);
			if (pt->solo)
				break;
			/* First what costs no hashing of its items. */
			if (pairset_find(&waiting, pt->r, pt->tt, false))
				goto held;
			hashed += mergekeys_count(&pt->keys);
			if (scanned > 0 && hashed > FEED_SCAN_KEYS_MAX)
				break;
			if (mergekeys_set_meets(&fq.inflight_keys, &pt->keys) ||
			    mergekeys_set_meets(&reserved, &pt->keys)) {
				/* It would wait in the SQL: next time, and
				 * its tiles are kept for it meanwhile. */
				if (!pt->tile_waited) {
					pt->tile_waited = true;
					fq.tile_waits++;
				}
				mergekeys_set_add(&reserved, &pt->keys);
				goto held;
			}
			if (nsel > 0 && weight + pt->weight > cap)
				break;
			if (pairset_find(&srcs, pt->r, "", false) &&
			    part_ext_waits(pt, held, nheld, sel, nsel, &hashed))
				goto held;	/* DUPLICATE, next time */
			part_take(pt);
			sel[nsel++] = pt;
			weight += pt->weight;
			items += pt->n_sql;
			if (pt->r->stamp != fq.stamp) {
				pt->r->stamp = fq.stamp;
				reqs++;
			}
			(void)pairset_find(&srcs, pt->r, "", true);
			continue;
held:
			(void)pairset_find(&waiting, pt->r, pt->tt, true);
			(void)pairset_find(&srcs, pt->r, "", true);
			held[nheld++] = pt;
		}
		free(waiting.v);
		free(srcs.v);
		mergekeys_set_free(&reserved);
	}
	free(held);
	if (nsel == 0) {
		free(sel);
		return false;
	}
	lanes = parts_lanes(sel, nsel, room);
	size_observe(&fq.group_reqs, (double)reqs);
	size_observe(&fq.group_items, (double)items);
	/* Every transaction is made before any is sent: one that cannot be
	 * sent is answered at once, and a request is freed with its last
	 * part, which is never one still to be sent. */
	txns = xcalloc((size_t)lanes, sizeof(*txns));
	for (int l = 0; l < lanes; l++) {
		txns[l] = xcalloc(1, sizeof(**txns));
		txns[l]->parts = xcalloc(nsel, sizeof(*txns[l]->parts));
		txns[l]->solo = sel[0]->solo;
	}
	for (size_t j = 0; j < nsel; j++) {
		f = txns[sel[j]->lane];
		f->parts[f->n++] = sel[j];
	}
	free(sel);
	for (int l = 0; l < lanes; l++) {
		if (txns[l]->n == 0) {
			free(txns[l]->parts);
			free(txns[l]);
			continue;
		}
		txn_submit(txns[l]);
	}
	free(txns);
	return true;
}

/* Starts transactions while there is room. */
static void
feed_flush(void)
{
	while (fq.ninflight < max_inflight() && !TAILQ_EMPTY(&fq.queue))
		if (!feed_start())
			break;
}

/* ---- the handlers ---------------------------------------------------------- */

struct arrays {
	struct sbuf a[FR_N];
};

static void arrays_open(struct arrays *);

/* The arrays that record refusals; the others carry sent items. */
static bool
fr_refusal(int k)
{
	return k == FR_REJ_EXT || k == FR_REJ_CAT || k == FR_REJ_TT ||
	    k == FR_REJ_REASON || k == FR_REJ_COMM || k == FR_REJ_LON ||
	    k == FR_REJ_LAT;
}

/* The part of r that sends items of task type tt, added when it is the
 * first; ar and tts grow along with r->parts while the request is built. */
static size_t
req_part(struct feed_req *r, struct arrays **ar,
    const struct cfg_task_type ***tts, const struct cfg_task_type *tt)
{
	size_t p;

	for (p = 0; p < r->nparts; p++)
		if ((*tts)[p] == tt)
			return p;
	r->parts = xreallocarray(r->parts, p + 1, sizeof(*r->parts));
	*ar = xreallocarray(*ar, p + 1, sizeof(**ar));
	*tts = xreallocarray(*tts, p + 1, sizeof(**tts));
	memset(&r->parts[p], 0, sizeof(r->parts[p]));
	r->parts[p].tt = xstrdup(tt != NULL ? tt->name : "");
	memset(&(*ar)[p], 0, sizeof((*ar)[p]));
	arrays_open(&(*ar)[p]);
	(*tts)[p] = tt;
	r->nparts++;
	return p;
}

static void
arrays_open(struct arrays *ar)
{
	for (int i = 0; i < FR_N; i++)
		sb_putc(&ar->a[i], '{');
}

static void
record_refusal(struct feed_req *r, struct arrays *ar, const char *ext,
    const char *cat, const char *tt, const struct triage_item *it,
    enum triage_refusal why)
{
	const struct locate_index *ix;
	const char *comm = NULL, *cell = NULL;
	char lon[32], lat[32];
	int64_t gv;
	bool send_point = false;

	sb_elem_str(&ar->a[FR_REJ_EXT], ext);
	sb_elem_str(&ar->a[FR_REJ_CAT], cat);
	sb_elem_str(&ar->a[FR_REJ_TT], tt);
	sb_elem_str(&ar->a[FR_REJ_REASON], triage_refusal_name(why));
	/* A valid item's community, so that the refusal counts for it (the
	 * burden report's per-community view): located in memory, or by
	 * PostgreSQL from the point while no index is loaded. */
	if (it != NULL && it->has_point) {
		ix = cellcache_current(&gv);
		if (ix != NULL)
			(void)locate_index_find(ix, it->lon, it->lat, &comm,
			    &cell);
		else
			send_point = true;
	}
	sb_elem_str(&ar->a[FR_REJ_COMM], comm);
	if (send_point) {
		snprintf(lon, sizeof(lon), "%.17g", it->lon);
		snprintf(lat, sizeof(lat), "%.17g", it->lat);
	}
	sb_elem_str(&ar->a[FR_REJ_LON], send_point ? lon : NULL);
	sb_elem_str(&ar->a[FR_REJ_LAT], send_point ? lat : NULL);
	r->n_rej++;
}

/* An echo of a pushed key only when it is clean: the reply must be valid
 * UTF-8 for other languages' protobuf runtimes. */
static char *
clean_copy(const char *s, size_t max)
{
	if (s == NULL || !utf8_valid(s, max))
		return xstrdup("");
	return xstrdup(s);
}

static void
feed_submit(struct conn *c, uint64_t request_id, bool from_worker,
    Gridd__V1__IncidentIn *const *items, size_t n)
{
	const struct cfg *cfg = gridd.cfg;
	const struct cfg_department *dept = NULL;
	struct triage_limits lim;
	struct feed_req *r;
	struct arrays rej, *par = NULL;
	const struct cfg_task_type **ptt = NULL;
	int64_t now = now_ms();
	char num[64];

	if (!from_worker) {
		dept = cfg_department(cfg, conn_principal(c));
		if (dept == NULL) {
			/* Removed from the config by a reload since login. */
			rpc_reply_error(c, request_id,
			    GRIDD__V1__ERROR_CODE__FORBIDDEN,
			    "department no longer configured");
			return;
		}
	}
	if (fq.queued_items + n > (size_t)cfg->push_queue_max_items) {
		fq.busy++;
		rpc_reply_error(c, request_id,
		    GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "ingest queue full; push again shortly");
		return;
	}
	lim.max_future_ms = (int64_t)cfg->push_max_future_s * 1000;
	lim.max_age_ms = (int64_t)cfg->push_max_age_days * 86400000;

	r = xcalloc(1, sizeof(*r));
	r->c = c;
	r->request_id = request_id;
	r->from_worker = from_worker;
	r->started = mono_ms();
	snprintf(r->source, sizeof(r->source), "%s", conn_principal(c));
	r->n = n;
	r->res = xcalloc(n ? n : 1, sizeof(*r->res));
	conn_hold(c);

	r->nslots = 16;
	while (r->nslots < 2 * n)
		r->nslots *= 2;
	r->slots = xmalloc(r->nslots * sizeof(*r->slots));
	memset(r->slots, 0xff, r->nslots * sizeof(*r->slots));
	memset(&rej, 0, sizeof(rej));
	arrays_open(&rej);

	for (size_t i = 0; i < n; i++) {
		const Gridd__V1__IncidentIn *in = items[i];
		struct feed_res *s = &r->res[i];
		struct triage_item it;
		struct triage_decision d;
		char msg[TRIAGE_MSG_MAX];
		const char *ext_ok, *cat_ok;
		struct sbuf *a;
		size_t pi;

		s->dup_of = -1;
		s->ext_id = clean_copy(in->ext_id, TRIAGE_EXT_ID_MAX);
		ext_ok = s->ext_id;
		cat_ok = in->category != NULL && utf8_valid(in->category,
		    TRIAGE_CATEGORY_MAX) ? in->category : "";
		if (!triage_validate(in, from_worker ? TRIAGE_FROM_WORKER :
		    TRIAGE_FROM_DEPARTMENT, &lim, now, &it, msg, sizeof(msg))) {
			res_reject(s, GRIDD__V1__ERROR_CODE__BAD_REQUEST,
			    FC_REJ_INVALID, "%s", msg);
			record_refusal(r, &rej, ext_ok, cat_ok, NULL, NULL,
			    TRIAGE_INVALID);
			continue;
		}
		triage_classify(cfg, dept, it.category, &d);
		if (d.task_type != NULL) {
			s->task_type = xstrdup(d.task_type->name);
			s->list = (int)d.task_type->list;
			s->matter = (int)d.task_type->matter;
		}
		if (d.refusal != TRIAGE_PASS) {
			res_reject(s, d.refusal == TRIAGE_NEGATIVE_LIST ?
			    GRIDD__V1__ERROR_CODE__REJECTED_NEGATIVE_LIST :
			    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
			    d.refusal == TRIAGE_NEGATIVE_LIST ?
			    FC_REJ_NEGATIVE_LIST :
			    d.refusal == TRIAGE_NO_OWNER ? FC_REJ_INVALID :
			    FC_REJ_UNKNOWN_CATEGORY, "%s", d.message);
			record_refusal(r, &rej, ext_ok, cat_ok, s->task_type,
			    &it, d.refusal);
			continue;
		}
		/* A valid ext_id is clean: s->ext_id is the pushed one. */
		s->dup_of = req_ext_find(r, s->ext_id, (int)i);
		if (s->dup_of >= 0)
			continue;
		pi = req_part(r, &par, &ptt, d.task_type);
		a = par[pi].a;
		s->part = (int)pi;
		s->sql_ord = (int)++r->parts[pi].n_sql;
		r->n_sql++;
		s->has_point = it.has_point;
		s->lon = it.lon;
		s->lat = it.lat;
		/* The tiles the SQL will lock for its merge search: around
		 * the point; for a building, whose point only the database
		 * knows, any tile of its task type; a department grid code
		 * takes no part in merges. */
		if (cfg->merge_radius_m > 0 && cfg->merge_window_s > 0) {
			if (it.has_point)
				mergekeys_add_point(&r->parts[pi].keys,
				    d.task_type->name, it.lon, it.lat,
				    cfg->merge_radius_m);
			else if (it.dept_code == NULL)
				mergekeys_add_type(&r->parts[pi].keys,
				    d.task_type->name);
		}
		if (!it.has_point)
			s->code = xstrdup(it.dept_code != NULL ? it.dept_code :
			    it.building_id);

		sb_elem_str(&a[FR_EXT], it.ext_id);
		sb_elem_str(&a[FR_CAT], it.category);
		sb_elem_str(&a[FR_TT], d.task_type->name);
		sb_elem_str(&a[FR_LIST], cfg_list_name(d.task_type->list));
		sb_elem_str(&a[FR_MATTER],
		    cfg_matter_name(d.task_type->matter));
		sb_elem_str(&a[FR_ROUTE], cfg_route_name(d.task_type->route));
		snprintf(num, sizeof(num), "%d",
		    d.sla ? d.task_type->sla_minutes : 0);
		sb_elem_str(&a[FR_SLA], num);
		sb_elem_str(&a[FR_NOTE], d.note);
		snprintf(num, sizeof(num), "%d", it.severity);
		sb_elem_str(&a[FR_SEV], num);
		snprintf(num, sizeof(num), "%" PRId64, it.occurred_at);
		sb_elem_str(&a[FR_OCC], num);
		if (it.has_point) {
			snprintf(num, sizeof(num), "%.17g", it.lon);
			sb_elem_str(&a[FR_LON], num);
			snprintf(num, sizeof(num), "%.17g", it.lat);
			sb_elem_str(&a[FR_LAT], num);
		} else {
			sb_elem_str(&a[FR_LON], NULL);
			sb_elem_str(&a[FR_LAT], NULL);
		}
		sb_elem_str(&a[FR_CODE], it.dept_code);
		sb_elem_str(&a[FR_BLDG], it.building_id);
		sb_elem_str(&a[FR_ADDR], it.address);
		sb_elem_str(&a[FR_DESC], it.description);
		sb_elem_str(&a[FR_OWNER], d.owner);
	}
	/* Refusals go with the first part; a request of refusals only has
	 * one part for them. */
	if (r->nparts == 0 && r->n_rej > 0)
		(void)req_part(r, &par, &ptt, NULL);
	for (size_t p = 0; p < r->nparts; p++)
		for (int k = 0; k < FR_N; k++) {
			if (!fr_refusal(k)) {
				r->parts[p].frag[k] = par[p].a[k].p;
				continue;
			}
			free(par[p].a[k].p);
			r->parts[p].frag[k] = p == 0 ? rej.a[k].p : NULL;
		}
	if (r->nparts > 0)
		r->parts[0].n_rej = r->n_rej;
	for (int k = 0; k < FR_N; k++)
		if (!fr_refusal(k) || r->nparts == 0)
			free(rej.a[k].p);
	free(par);
	free(ptt);
	size_observe(&fq.batch_items, (double)n);

	if (r->nparts == 0) {
		/* Nothing to store: the empty answer is already durable. */
		req_answer(r);
		req_free(r);
		return;
	}
	/* Every item counts, refused ones and repeats too: a client
	 * pipelining pushes that are all refused still fills the queue and
	 * the statement.  The parts are linked only now: r->parts no longer
	 * moves. */
	r->nleft = r->nparts;
	for (size_t p = 0; p < r->nparts; p++) {
		struct feed_part *pt = &r->parts[p];

		pt->r = r;
		pt->state = PART_QUEUED;
		pt->weight = pt->n_sql + pt->n_rej +
		    (p == 0 ? r->n - r->n_sql - r->n_rej : 0);
		mergekeys_finish(&pt->keys);
		TAILQ_INSERT_TAIL(&fq.queue, pt, entry);
		fq.queued_items += pt->weight;
	}
	feed_flush();
}

void
feed_push_incidents(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__PushIncidents *in = env->push_incidents;
	char msg[96];

	if (in->n_incidents > (size_t)gridd.cfg->max_batch) {
		/* Refused whole: answering part of it would leave the client
		 * unsure which items to send again. */
		snprintf(msg, sizeof(msg), "batch of %zu incidents is over "
		    "max_batch %d", in->n_incidents, gridd.cfg->max_batch);
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__TOO_LARGE, msg);
		return;
	}
	feed_submit(c, env->request_id, false, in->incidents, in->n_incidents);
}

void
feed_report_incident(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__ReportIncident *in = env->report_incident;

	if (in->incident == NULL) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST, "incident: required");
		return;
	}
	feed_submit(c, env->request_id, true, &in->incident, 1);
}

/* ---- metrics and life -------------------------------------------------- */

static void
size_hist_write(struct evbuffer *out, const char *name,
    const struct size_hist *h)
{
	char sample[96], labels[32];
	uint64_t cum = 0;

	snprintf(sample, sizeof(sample), "%s_bucket", name);
	for (size_t i = 0; i <= SIZE_BUCKETS; i++) {
		cum += h->counts[i];
		if (i < SIZE_BUCKETS)
			snprintf(labels, sizeof(labels), "le=\"%g\"",
			    size_bounds[i]);
		else
			snprintf(labels, sizeof(labels), "le=\"+Inf\"");
		metrics_sample(out, sample, labels, (double)cum);
	}
	snprintf(sample, sizeof(sample), "%s_sum", name);
	metrics_sample(out, sample, NULL, h->sum);
	snprintf(sample, sizeof(sample), "%s_count", name);
	metrics_sample(out, sample, NULL, (double)h->count);
}

static void
feed_metrics_cb(struct evbuffer *out)
{
	metrics_family(out, "gridd_incidents_total", "counter",
	    "Pushed and reported incidents by outcome (and reason when "
	    "rejected).");
	for (int i = 0; i < FC_N; i++)
		metrics_sample(out, "gridd_incidents_total", count_labels[i],
		    (double)fq.counts[i]);
	metrics_family(out, "gridd_push_batch_items", "histogram",
	    "Incidents per PushIncidents or ReportIncident request.");
	size_hist_write(out, "gridd_push_batch_items", &fq.batch_items);
	metrics_family(out, "gridd_push_group_requests", "histogram",
	    "Requests with parts in the ingest transactions started together "
	    "(group commit).");
	size_hist_write(out, "gridd_push_group_requests", &fq.group_reqs);
	metrics_family(out, "gridd_push_group_items", "histogram",
	    "Incidents per group commit (the transactions started together).");
	size_hist_write(out, "gridd_push_group_items", &fq.group_items);
	metrics_family(out, "gridd_push_commit_seconds", "histogram",
	    "Ingest transaction time from submission to commit.");
	metrics_hist_write(out, "gridd_push_commit_seconds", NULL,
	    &fq.commit_ms);
	metrics_family(out, "gridd_push_queued_items", "gauge",
	    "Incidents waiting for the next ingest transaction.");
	metrics_sample(out, "gridd_push_queued_items", NULL,
	    (double)fq.queued_items);
	metrics_family(out, "gridd_push_transactions_in_flight", "gauge",
	    "Ingest transactions sent and not answered yet.");
	metrics_sample(out, "gridd_push_transactions_in_flight", NULL,
	    (double)fq.ninflight);
	metrics_family(out, "gridd_push_lane_transactions_total", "counter",
	    "Ingest transactions sent: the parts a group commit takes go as "
	    "one transaction per lane, a lane's task types apart from the "
	    "others'.");
	metrics_sample(out, "gridd_push_lane_transactions_total", NULL,
	    (double)fq.lane_txns);
	metrics_family(out, "gridd_push_group_retries_total", "counter",
	    "Ingest transactions rolled back and retried part by part.");
	metrics_sample(out, "gridd_push_group_retries_total", NULL,
	    (double)fq.group_retries);
	metrics_family(out, "gridd_push_tile_waits_total", "counter",
	    "Parts of pushes held back from a transaction beside those in "
	    "flight because they could merge with their items.");
	metrics_sample(out, "gridd_push_tile_waits_total", NULL,
	    (double)fq.tile_waits);
	metrics_family(out, "gridd_push_refused_total", "counter",
	    "Pushes refused before any work because the queue was full.");
	metrics_sample(out, "gridd_push_refused_total", NULL, (double)fq.busy);
	metrics_family(out, "gridd_push_late_total", "counter",
	    "Parts of pushes answered UNAVAILABLE unsent: still queued when "
	    "nearly all of query_timeout_ms had passed since the push came.");
	metrics_sample(out, "gridd_push_late_total", NULL, (double)fq.late);
	metrics_family(out, "gridd_push_min_waits_total", "counter",
	    "Times a transaction beside those in flight waited for "
	    "group_commit_min_items queued incidents or group_commit_delay_ms.");
	metrics_sample(out, "gridd_push_min_waits_total", NULL,
	    (double)fq.min_waits);
	metrics_family(out, "gridd_push_db_failures_total", "counter",
	    "Ingest transactions that did not commit.");
	metrics_sample(out, "gridd_push_db_failures_total", NULL,
	    (double)fq.db_failures);
}

/* A reload may allow more transactions in flight, larger ones, or a
 * shorter wait beside them: the queue is looked at again now, not at the
 * next push or commit. */
void
feed_config_changed(void)
{
	feed_flush();
}

bool
feed_init(void)
{
	fq.min_ev = evtimer_new(gridd.base, min_cb, NULL);
	if (fq.min_ev == NULL)
		return false;
	metrics_register("feed", feed_metrics_cb);
	cellcache_init();
	return true;
}

void
feed_shutdown(void)
{
	struct feed_part *pt;

	/* The pool is gone: what was in flight has failed, and the parts
	 * that those failures started were refused at once. */
	while ((pt = TAILQ_FIRST(&fq.queue)) != NULL) {
		part_take(pt);
		part_fail(pt, NULL);
		if (--pt->r->nleft == 0)
			req_finish(pt->r);
	}
	fq.queued_items = 0;
	if (fq.min_ev != NULL) {
		event_free(fq.min_ev);
		fq.min_ev = NULL;
		fq.min_due = 0;
	}
	mergekeys_set_free(&fq.inflight_keys);
	cellcache_shutdown();
}

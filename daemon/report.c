/* report.c - the burden report: GetBurdenReport from SQL over stored rows. */
#include "report.h"

#include <stdio.h>
#include <string.h>

#include <event2/event.h>

#include "config.h"
#include "conn.h"
#include "db.h"
#include "gridd.h"
#include "log.h"
#include "rpc.h"

/* Latest instant a report may name: 9999-12-31T23:59:59.999Z. */
#define REPORT_MAX_TIME_MS 253402300799999LL
#define REPORT_ID_MAX 64

/*
 * The three figures are aggregates over up to millions of rows in one
 * statement each: compiling them with JIT costs more than it saves (about
 * 0.7 s of LLVM work on a million-row window), and the medians sort in
 * memory rather than on disk with a larger work_mem. Both apply to this
 * transaction only.
 */
#define REPORT_WORK_MEM "64MB"
/* A report reads the recent window, which sits in cache: index lookups of
 * the window's incidents are far cheaper than the default cost assumes, and
 * with it the planner probes the incidents of a month's pushes instead of
 * hashing every incident ever stored (0.6 s instead of 1.6 s for a month of
 * a million-incident year, measured under load). */
#define REPORT_RANDOM_PAGE_COST "1.1"

/* Every statement reads one snapshot, so the sections agree. */
#define REPORT_SQL_ISOLATION \
	"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
#define REPORT_SQL_NO_JIT "SET LOCAL jit = off"
#define REPORT_SQL_WORK_MEM "SET LOCAL work_mem = '" REPORT_WORK_MEM "'"
#define REPORT_SQL_PAGE_COST \
	"SET LOCAL random_page_cost = " REPORT_RANDOM_PAGE_COST

#define REPORT_WINDOW_TS \
	"timestamptz 'epoch' + $1::bigint * interval '1 millisecond', " \
	"timestamptz 'epoch' + $2::bigint * interval '1 millisecond'"
#define REPORT_WINDOW REPORT_WINDOW_TS ", $3"

static const char sql_departments[] =
	"SELECT department_id, name, list, pushed, accepted, merged,"
	" rejected_negative, rejected_unknown_category, rejected_outside,"
	" rejected_invalid, complaints_negative_list, complaints_unfunded,"
	" complaints_duplicate, complaints_outside_duty, complaints_other,"
	" overdue, closed, median_close_ms"
	" FROM gridd_report_departments(" REPORT_WINDOW ")";
static const char sql_communities[] =
	"SELECT community_id, name, tasks, autonomy, assist, certificate,"
	" big, small, private, to_workers, to_workers_government,"
	" government_share"
	" FROM gridd_report_communities(" REPORT_WINDOW ")";
static const char sql_workers[] =
	"SELECT worker_id, community_id, offered, accepted, declined,"
	" expired, resolved, median_accept_ms, median_resolve_ms"
	" FROM gridd_report_workers(" REPORT_WINDOW ")";

/* Rolls up the days of the window that are over, within a budget, before
 * the read-only transaction that reads them (sql/005_report.sql). */
static const char sql_refresh[] =
	"SELECT gridd_report_refresh(" REPORT_WINDOW_TS ", $3::int, true)";
/* The background step: every finished day, newest first. It gives way to
 * whichever process is already refreshing; a report waits for that one
 * (at most its budget) and then rolls up its own window. */
static const char sql_refresh_all[] =
	"SELECT gridd_report_refresh(NULL, NULL, $1::int, false)";
/* A background step that left days to do runs again this soon: the work
 * goes on in slices that never hold a pool connection for long. */
#define REPORT_ROLLUP_AGAIN_MS	1000

/* Batch positions of the three SELECTs, after the four SETs. */
enum { RES_DEPARTMENTS = 4, RES_COMMUNITIES, RES_WORKERS, RES_N };

enum {
	DC_ID, DC_NAME, DC_LIST, DC_PUSHED, DC_ACCEPTED, DC_MERGED,
	DC_REJ_NEGATIVE, DC_REJ_UNKNOWN, DC_REJ_OUTSIDE, DC_REJ_INVALID,
	DC_COMPLAINTS,		/* five, in complaint_reasons order */
	DC_OVERDUE = DC_COMPLAINTS + 5, DC_CLOSED, DC_MEDIAN_CLOSE, DC_N
};
enum {
	CC_ID, CC_NAME, CC_TASKS, CC_AUTONOMY, CC_ASSIST, CC_CERTIFICATE,
	CC_BIG, CC_SMALL, CC_PRIVATE, CC_TO_WORKERS, CC_TO_WORKERS_GOV,
	CC_SHARE, CC_N
};
enum {
	WC_ID, WC_COMMUNITY, WC_OFFERED, WC_ACCEPTED, WC_DECLINED,
	WC_EXPIRED, WC_RESOLVED, WC_MEDIAN_ACCEPT, WC_MEDIAN_RESOLVE, WC_N
};

/* As in the complaints table's CHECK, in column order. */
static const char *const complaint_reasons[5] = {
	"negative_list", "unfunded", "duplicate", "outside_duty", "other",
};
static const char *const rejection_reasons[3] = {
	"unknown_category", "outside", "invalid",
};

struct report_req {
	struct conn *c;
	uint64_t request_id;
	int64_t from, to;
	char community[REPORT_ID_MAX + 1];
	char pfrom[24], pto[24];
	int64_t started;	/* mono_ms */
};

/* The background roll-up: one step in flight at most. */
static struct {
	struct event *ev;
	bool running;
	bool in_flight;
} rollup;

/* A deadlock victim or serialization failure did nothing: worth a retry. */
static bool
transient_sqlstate(const char *sqlstate)
{
	return strcmp(sqlstate, "40P01") == 0 || strcmp(sqlstate, "40001") == 0;
}

/* A count column; NULL (no median) reads as 0. Values come from our own
 * SQL, but a malformed one is still refused rather than trusted. */
static bool
col_i64(const struct db_res *r, int row, int col, int64_t *out)
{
	*out = 0;
	if (db_res_isnull(r, row, col))
		return true;
	return db_res_int64(r, row, col, out);
}

static char *
col_str(const struct db_res *r, int row, int col)
{
	const char *v = db_res_isnull(r, row, col) ? "" :
	    db_res_get(r, row, col);

	return xstrdup(v != NULL ? v : "");
}

static Gridd__V1__TaskList
list_value(const char *s)
{
	if (s == NULL)
		return GRIDD__V1__TASK_LIST__LIST_UNSPECIFIED;
	if (strcmp(s, "autonomy") == 0)
		return GRIDD__V1__TASK_LIST__AUTONOMY;
	if (strcmp(s, "assist") == 0)
		return GRIDD__V1__TASK_LIST__ASSIST;
	if (strcmp(s, "negative") == 0)
		return GRIDD__V1__TASK_LIST__NEGATIVE;
	if (strcmp(s, "certificate") == 0)
		return GRIDD__V1__TASK_LIST__CERTIFICATE;
	return GRIDD__V1__TASK_LIST__LIST_UNSPECIFIED;
}

static Gridd__V1__ReasonCount **
reason_counts(const char *const *names, const int64_t *counts, size_t n)
{
	Gridd__V1__ReasonCount **v = xcalloc(n, sizeof(*v));

	for (size_t i = 0; i < n; i++) {
		v[i] = xcalloc(1, sizeof(**v));
		gridd__v1__reason_count__init(v[i]);
		v[i]->reason = (char *)names[i];	/* static, never freed */
		v[i]->count = counts[i];
	}
	return v;
}

static bool
fill_department(Gridd__V1__DepartmentBurden *d, const struct db_res *r,
    int row)
{
	int64_t v[DC_N];
	const char *list;

	for (int col = DC_PUSHED; col < DC_N; col++)
		if (!col_i64(r, row, col, &v[col]))
			return false;
	list = db_res_isnull(r, row, DC_LIST) ? NULL :
	    db_res_get(r, row, DC_LIST);
	d->department_id = col_str(r, row, DC_ID);
	d->name = col_str(r, row, DC_NAME);
	d->list = list_value(list);
	d->pushed = v[DC_PUSHED];
	d->accepted = v[DC_ACCEPTED];
	d->merged = v[DC_MERGED];
	d->rejected_negative = v[DC_REJ_NEGATIVE];
	d->rejected_other = v[DC_REJ_UNKNOWN] + v[DC_REJ_OUTSIDE] +
	    v[DC_REJ_INVALID];
	d->rejected = d->rejected_negative + d->rejected_other;
	d->rejected_by_reason = reason_counts(rejection_reasons,
	    &v[DC_REJ_UNKNOWN], ARRAY_LEN(rejection_reasons));
	d->n_rejected_by_reason = ARRAY_LEN(rejection_reasons);
	d->complaints = 0;
	for (size_t i = 0; i < ARRAY_LEN(complaint_reasons); i++)
		d->complaints += v[DC_COMPLAINTS + (int)i];
	d->complaints_by_reason = reason_counts(complaint_reasons,
	    &v[DC_COMPLAINTS], ARRAY_LEN(complaint_reasons));
	d->n_complaints_by_reason = ARRAY_LEN(complaint_reasons);
	d->overdue = v[DC_OVERDUE];
	d->closed = v[DC_CLOSED];
	d->median_close_ms = v[DC_MEDIAN_CLOSE];
	return true;
}

static bool
fill_community(Gridd__V1__CommunityBurden *cb, const struct db_res *r,
    int row)
{
	int64_t v[CC_N];
	double share = 0;

	for (int col = CC_TASKS; col < CC_SHARE; col++)
		if (!col_i64(r, row, col, &v[col]))
			return false;
	if (!db_res_isnull(r, row, CC_SHARE) &&
	    !db_res_double(r, row, CC_SHARE, &share))
		return false;
	cb->community_id = col_str(r, row, CC_ID);
	cb->name = col_str(r, row, CC_NAME);
	cb->tasks = v[CC_TASKS];
	cb->autonomy = v[CC_AUTONOMY];
	cb->assist = v[CC_ASSIST];
	cb->certificate = v[CC_CERTIFICATE];
	cb->big = v[CC_BIG];
	cb->small = v[CC_SMALL];
	cb->private_ = v[CC_PRIVATE];
	cb->to_workers = v[CC_TO_WORKERS];
	cb->to_workers_government = v[CC_TO_WORKERS_GOV];
	cb->government_share = share;
	return true;
}

static bool
fill_worker(Gridd__V1__WorkerBurden *w, const struct db_res *r, int row)
{
	int64_t v[WC_N];

	for (int col = WC_OFFERED; col < WC_N; col++)
		if (!col_i64(r, row, col, &v[col]))
			return false;
	w->worker_id = col_str(r, row, WC_ID);
	w->community_id = col_str(r, row, WC_COMMUNITY);
	w->offered = v[WC_OFFERED];
	w->accepted = v[WC_ACCEPTED];
	w->declined = v[WC_DECLINED];
	w->expired = v[WC_EXPIRED];
	w->resolved = v[WC_RESOLVED];
	w->median_accept_ms = v[WC_MEDIAN_ACCEPT];
	w->median_resolve_ms = v[WC_MEDIAN_RESOLVE];
	return true;
}

static void
report_free(Gridd__V1__BurdenReport *br)
{
	for (size_t i = 0; i < br->n_departments; i++) {
		Gridd__V1__DepartmentBurden *d = br->departments[i];

		if (d == NULL)
			continue;
		free(d->department_id);
		free(d->name);
		for (size_t k = 0; k < d->n_rejected_by_reason; k++)
			free(d->rejected_by_reason[k]);
		free(d->rejected_by_reason);
		for (size_t k = 0; k < d->n_complaints_by_reason; k++)
			free(d->complaints_by_reason[k]);
		free(d->complaints_by_reason);
		free(d);
	}
	free(br->departments);
	for (size_t i = 0; i < br->n_communities; i++) {
		if (br->communities[i] == NULL)
			continue;
		free(br->communities[i]->community_id);
		free(br->communities[i]->name);
		free(br->communities[i]);
	}
	free(br->communities);
	for (size_t i = 0; i < br->n_workers; i++) {
		if (br->workers[i] == NULL)
			continue;
		free(br->workers[i]->worker_id);
		free(br->workers[i]->community_id);
		free(br->workers[i]);
	}
	free(br->workers);
}

/* Builds the reply from the three results; false on a malformed value. */
static bool
report_build(Gridd__V1__BurdenReport *br, const struct db_res *const *res)
{
	const struct db_res *rd = res[RES_DEPARTMENTS];
	const struct db_res *rc = res[RES_COMMUNITIES];
	const struct db_res *rw = res[RES_WORKERS];
	int nd = db_res_rows(rd), nc = db_res_rows(rc), nw = db_res_rows(rw);

	if (db_res_cols(rd) != DC_N || db_res_cols(rc) != CC_N ||
	    db_res_cols(rw) != WC_N)
		return false;
	br->departments = xcalloc((size_t)nd + 1, sizeof(*br->departments));
	for (int i = 0; i < nd; i++) {
		Gridd__V1__DepartmentBurden *d = xcalloc(1, sizeof(*d));

		gridd__v1__department_burden__init(d);
		br->departments[br->n_departments++] = d;
		if (!fill_department(d, rd, i))
			return false;
	}
	br->communities = xcalloc((size_t)nc + 1, sizeof(*br->communities));
	for (int i = 0; i < nc; i++) {
		Gridd__V1__CommunityBurden *cb = xcalloc(1, sizeof(*cb));

		gridd__v1__community_burden__init(cb);
		br->communities[br->n_communities++] = cb;
		if (!fill_community(cb, rc, i))
			return false;
	}
	br->workers = xcalloc((size_t)nw + 1, sizeof(*br->workers));
	for (int i = 0; i < nw; i++) {
		Gridd__V1__WorkerBurden *w = xcalloc(1, sizeof(*w));

		gridd__v1__worker_burden__init(w);
		br->workers[br->n_workers++] = w;
		if (!fill_worker(w, rw, i))
			return false;
	}
	return true;
}

static void
report_done(struct report_req *q, const char *outcome, size_t nd, size_t nc,
    size_t nw)
{
	log_info("%s event=burden_report request_id=%llu from=%lld to=%lld "
	    "community=%s departments=%zu communities=%zu workers=%zu "
	    "outcome=%s ms=%lld", conn_log_prefix(q->c),
	    (unsigned long long)q->request_id, (long long)q->from,
	    (long long)q->to, q->community[0] ? q->community : "*", nd, nc, nw,
	    outcome, (long long)(mono_ms() - q->started));
	conn_release(q->c);
	free(q);
}

static void
report_batch_cb(void *arg, enum db_status status,
    const struct db_res *const *results, int n)
{
	struct report_req *q = arg;
	Gridd__V1__BurdenReport br = GRIDD__V1__BURDEN_REPORT__INIT;
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	bool ok;

	if (status != DB_OK || n != RES_N) {
		bool transient = false;

		if (status == DB_SQL_ERROR && n > 0)
			for (int i = 0; i < n; i++)
				if (results[i] != NULL &&
				    db_res_status(results[i]) == DB_SQL_ERROR) {
					transient |= transient_sqlstate(
					    db_res_sqlstate(results[i]));
					log_error("%s event=burden_report "
					    "sqlstate=%s error=\"%s\"",
					    conn_log_prefix(q->c),
					    db_res_sqlstate(results[i]),
					    db_res_error(results[i]));
				}
		if (conn_is_open(q->c))
			rpc_reply_error(q->c, q->request_id,
			    !transient && (status == DB_SQL_ERROR ||
			    status == DB_OK) ?
			    GRIDD__V1__ERROR_CODE__INTERNAL :
			    GRIDD__V1__ERROR_CODE__UNAVAILABLE,
			    transient ? "database busy, retry" :
			    status == DB_TIMEOUT ?
			    "report query timed out; narrow the window" :
			    status != DB_UNAVAILABLE ? "report query failed" :
			    "database unavailable");
		report_done(q, status == DB_TIMEOUT ? "timeout" : "error", 0,
		    0, 0);
		return;
	}
	ok = report_build(&br, results);
	if (ok) {
		br.from = q->from;
		br.to = q->to;
		br.community_id = q->community;
		br.generated_at = now_ms();
		env.request_id = q->request_id;
		env.body_case = GRIDD__V1__ENVELOPE__BODY_BURDEN_REPORT;
		env.burden_report = &br;
		if (conn_is_open(q->c))
			conn_send(q->c, &env);
	} else {
		log_error("%s event=burden_report error=\"malformed result\"",
		    conn_log_prefix(q->c));
		if (conn_is_open(q->c))
			rpc_reply_error(q->c, q->request_id,
			    GRIDD__V1__ERROR_CODE__INTERNAL,
			    "report query returned a malformed value");
	}
	report_done(q, ok ? "ok" : "error", br.n_departments,
	    br.n_communities, br.n_workers);
	report_free(&br);
}

static bool
valid_id(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > REPORT_ID_MAX)
		return false;
	for (; *s != '\0'; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') ||
		    (*s >= '0' && *s <= '9') || *s == '_' || *s == '.' ||
		    *s == '-'))
			return false;
	return true;
}

/* The read-only transaction of the three reports. */
static void
report_read(struct report_req *q)
{
	struct db_batch *b;
	const char *params[3];

	params[0] = q->pfrom;
	params[1] = q->pto;
	params[2] = q->community[0] ? q->community : NULL;
	b = db_batch_new();
	db_batch_add(b, REPORT_SQL_ISOLATION, 0, NULL);
	db_batch_add(b, REPORT_SQL_NO_JIT, 0, NULL);
	db_batch_add(b, REPORT_SQL_WORK_MEM, 0, NULL);
	db_batch_add(b, REPORT_SQL_PAGE_COST, 0, NULL);
	db_batch_add(b, sql_departments, 3, params);
	db_batch_add(b, sql_communities, 3, params);
	db_batch_add(b, sql_workers, 3, params);
	if (gridd.db == NULL || !db_batch_submit(gridd.db, b, report_batch_cb,
	    q)) {
		if (conn_is_open(q->c))
			rpc_reply_error(q->c, q->request_id,
			    GRIDD__V1__ERROR_CODE__UNAVAILABLE,
			    "database unavailable");
		report_done(q, "unavailable", 0, 0, 0);
	}
}

/* A failed or cut-short roll-up costs speed, not exactness: the report
 * computes what is not rolled up from the stored rows. */
static void
report_refresh_cb(void *arg, const struct db_res *res)
{
	struct report_req *q = arg;

	if (db_res_status(res) != DB_OK)
		log_warn("%s event=report_rollup outcome=error error=\"%s\"",
		    conn_log_prefix(q->c), db_res_error(res));
	else if (db_res_rows(res) == 1 && !db_res_isnull(res, 0, 0))
		log_debug("%s event=report_rollup days_left=%s",
		    conn_log_prefix(q->c), db_res_get(res, 0, 0));
	if (!conn_is_open(q->c)) {
		report_done(q, "closed", 0, 0, 0);
		return;
	}
	report_read(q);
}

void
report_get_burden(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__GetBurdenReport *in = env->get_burden_report;
	const char *community = in->community_id ? in->community_id : "";
	int64_t from = in->from, to = in->to == 0 ? now_ms() : in->to;
	struct report_req *q;
	char budget[16];
	const char *params[3];
	const char *bad = NULL;

	if (from < 0 || from > REPORT_MAX_TIME_MS)
		bad = "from must be milliseconds since the epoch, 0 = the "
		    "beginning";
	else if (to < 0 || to > REPORT_MAX_TIME_MS)
		bad = "to must be milliseconds since the epoch, 0 = now";
	else if (from >= to)
		bad = "from must be before to";
	else if (community[0] != '\0' && !valid_id(community))
		bad = "community_id must be 1-64 characters of "
		    "A-Z a-z 0-9 _ . -";
	if (bad != NULL) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST, bad);
		return;
	}

	q = xcalloc(1, sizeof(*q));
	q->c = c;
	q->request_id = env->request_id;
	q->from = from;
	q->to = to;
	q->started = mono_ms();
	snprintf(q->community, sizeof(q->community), "%s", community);
	snprintf(q->pfrom, sizeof(q->pfrom), "%lld", (long long)from);
	snprintf(q->pto, sizeof(q->pto), "%lld", (long long)to);
	snprintf(budget, sizeof(budget), "%d",
	    gridd.cfg->report_rollup_budget_ms);
	params[0] = q->pfrom;
	params[1] = q->pto;
	params[2] = budget;
	conn_hold(c);
	if (gridd.db == NULL || !db_query(gridd.db, sql_refresh, 3, params,
	    report_refresh_cb, q)) {
		rpc_reply_error(c, q->request_id,
		    GRIDD__V1__ERROR_CODE__UNAVAILABLE, "database unavailable");
		report_done(q, "unavailable", 0, 0, 0);
	}
}

/* ---- background roll-up ------------------------------------------------ */

static void
rollup_schedule(int64_t ms)
{
	struct timeval tv;

	if (!rollup.running || rollup.ev == NULL || gridd.stopping)
		return;
	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
	if (event_add(rollup.ev, &tv) != 0)
		log_error("event=report_rollup error=\"event_add failed\"");
}

static void
rollup_step_cb(void *arg, const struct db_res *res)
{
	int64_t left = 0;
	int interval = gridd.cfg->report_rollup_interval_s;

	UNUSED(arg);
	rollup.in_flight = false;
	if (db_res_status(res) != DB_OK)
		log_warn("event=report_rollup outcome=error error=\"%s\"",
		    db_res_error(res));
	else if (db_res_rows(res) != 1 || db_res_isnull(res, 0, 0) ||
	    !db_res_int64(res, 0, 0, &left))
		log_warn("event=report_rollup outcome=error "
		    "error=\"malformed result\"");
	else if (left > 0)
		log_debug("event=report_rollup days_left=%lld",
		    (long long)left);
	/* -1: another process holds the lock and is doing the work. */
	if (left > 0)
		rollup_schedule(REPORT_ROLLUP_AGAIN_MS);
	else
		rollup_schedule((int64_t)(interval > 0 ? interval : 60) * 1000);
}

static void
rollup_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	char budget[16];
	const char *params[1] = { budget };

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	/* Off: look again later, a reload may turn it on. */
	if (gridd.cfg->report_rollup_interval_s == 0 || rollup.in_flight) {
		rollup_schedule(60 * 1000);
		return;
	}
	snprintf(budget, sizeof(budget), "%d",
	    gridd.cfg->report_rollup_budget_ms);
	if (gridd.db != NULL && db_query(gridd.db, sql_refresh_all, 1, params,
	    rollup_step_cb, NULL))
		rollup.in_flight = true;
	else
		rollup_schedule((int64_t)gridd.cfg->report_rollup_interval_s *
		    1000);
}

bool
report_init(void)
{
	rollup.ev = evtimer_new(gridd.base, rollup_timer_cb, NULL);
	if (rollup.ev == NULL)
		return false;
	rollup.running = true;
	/* The first step soon after start-up, once the pool is connected. */
	rollup_schedule(REPORT_ROLLUP_AGAIN_MS);
	return true;
}

void
report_shutdown(void)
{
	rollup.running = false;
	if (rollup.ev != NULL)
		event_free(rollup.ev);
	rollup.ev = NULL;
}

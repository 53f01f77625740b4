/* dispatch.c - offers to grid workers: claims, pushes across processes, offer and SLA timers, escalation. */
#include "dispatch.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "config.h"
#include "conn.h"
#include "db.h"
#include "gridd.h"
#include "log.h"
#include "metrics.h"
#include "rpc.h"

/*
 * The choice itself is made by PostgreSQL (sql/004_dispatch.sql), in the
 * transaction that claims the incident with FOR UPDATE SKIP LOCKED, so that
 * several gridd processes on one database never offer one incident twice.
 * This module feeds it work and acts on what it answers:
 *   fast path   NOTIFY gridd_dispatch (the feed's commit) -> the ids are
 *               gathered for one loop turn -> one statement per batch ->
 *               the new offers are pushed to this process's connections;
 *               the same statement NOTIFYs gridd_offers, and the other
 *               processes push to theirs.
 *   safety net  a scan every scan_interval_s (and at start) for incidents a
 *               lost notification or a dead process left behind, and for
 *               escalated ones due for a retry.
 *   timers      rows in the timers table, fired by whichever process claims
 *               them first; the next wake-up is the earliest fire_at, or
 *               scan_interval_s at the latest (timers other processes add).
 */

/* Incident ids from NOTIFY waiting for their statement. A flood beyond this
 * is not lost: the ids are dropped and a scan finds the incidents. */
#define DISP_PENDING_MAX	4096
/* Incidents offered inside a push, the most recent ones. The push's NOTIFY
 * gridd_dispatch for them comes later in the same transaction, so it is
 * delivered after their gridd_offers, and needs no statement: it would find
 * each of them offered and do nothing (0.48 ms and a round trip a push in
 * the dispatch bench). An id that has left the ring costs only that. */
#define DISP_OFFERED_RING	256
/* After a busy worker row, a failed item or a timer whose rows were locked
 * by a worker's action: look again this soon. Long enough for the other
 * transaction to commit, short against offer latency. */
#define DISP_RETRY_MS		50
/* Offers pushed on login; ListAssignments pages through the rest. */
#define DISP_LOGIN_OFFERS_MAX	200
/* Timer wake-ups are rounded up to this granularity, so that the expiries
 * of offers made close together (in this or another process) are fired by
 * one statement: a timer is at most this much later than its fire_at. */
#define DISP_TIMER_SLACK_MS	100
/* VerifyIncident.note, as the events table bounds it. */
#define DISP_NOTE_MAX		2000

/* Columns of gridd_dispatch_row. */
enum {
	COL_OUTCOME, COL_DETAIL, COL_N, COL_INCIDENT, COL_ASSIGNMENT,
	COL_WORKER, COL_REASON, COL_STATE, COL_CELL, COL_TASK_TYPE, COL_LIST,
	COL_MATTER, COL_SUMMARY, COL_LON, COL_LAT, COL_ADDRESS, COL_DEADLINE,
	COL_DEPTS, COL_EXPIRES, COL_CREATED, N_COLS
};

#define ROW_COLS "outcome, detail, n, incident_id, assignment_id, " \
	"worker_id, reason, state, cell_id, task_type, list, matter, summary, " \
	"lon, lat, address, deadline_ms, departments, expires_ms, created_ms"

enum shortfall {
	SF_NO_WORKERS, SF_ALL_OFF_DUTY, SF_ALL_AT_CAPACITY, SF_MAX_OFFERS,
	SF_N
};

static const char *const shortfall_names[SF_N] = {
	"no_workers", "all_off_duty", "all_at_capacity", "max_offers",
};

static struct {
	bool running;
	struct event *flush_ev;		/* pending ids -> statements */
	struct event *scan_ev;
	struct event *timer_ev;

	int64_t *pending;
	size_t npending;
	int inflight;			/* dispatch statements in flight */
	int64_t offered[DISP_OFFERED_RING];	/* 0: a free slot */
	unsigned offered_next;

	bool scan_busy, scan_again;
	int64_t scan_due;		/* mono_ms scan_ev is armed for, 0 none */
	bool timers_busy, timers_again;
	bool timers_locked;	/* a due timer's row was held elsewhere */
	int64_t timer_due;		/* mono_ms timer_ev is armed for, 0 none */

	/* metrics */
	uint64_t offers_sent, offers_pushed, offers_expired;
	uint64_t accepted, declined, started, resolved, replays;
	uint64_t closed, reopened;
	uint64_t escalations[SF_N];
	uint64_t sla_escalations;
	uint64_t retries, notify_queued, notify_offered, notify_dropped;
	uint64_t timers_fired[2];	/* offer_expiry, sla */
	uint64_t statement_errors;
	struct metrics_hist timer_lag;
	struct metrics_hist push_latency;
} d;

static void scan_start(void);
static void timers_start(void);

/* ---- helpers ------------------------------------------------------------- */

void
disp_settings(struct disp_settings *s)
{
	const struct cfg *cfg = gridd.cfg;

	snprintf(s->v[0], sizeof(s->v[0]), "%d", cfg->offer_timeout_s);
	snprintf(s->v[1], sizeof(s->v[1]), "%d", cfg->max_offers);
	snprintf(s->v[2], sizeof(s->v[2]), "%d", cfg->checkin_max_age_s);
	snprintf(s->v[3], sizeof(s->v[3]), "%d", cfg->scan_interval_s);
	for (int i = 0; i < 4; i++)
		s->p[i] = s->v[i];
	s->p[4] = gridd.instance;
}

static const char *
col(const struct db_res *res, int row, int c)
{
	return db_res_isnull(res, row, c) ? "" : db_res_get(res, row, c);
}

static int64_t
col_int(const struct db_res *res, int row, int c)
{
	int64_t v = 0;

	if (db_res_isnull(res, row, c) || !db_res_int64(res, row, c, &v))
		return 0;
	return v;
}

static double
col_double(const struct db_res *res, int row, int c)
{
	double v = 0;

	if (db_res_isnull(res, row, c) || !db_res_double(res, row, c, &v) ||
	    !isfinite(v))
		return 0;
	return v;
}

static Gridd__V1__TaskList
list_value(const char *s)
{
	if (strcmp(s, "autonomy") == 0)
		return GRIDD__V1__TASK_LIST__AUTONOMY;
	if (strcmp(s, "assist") == 0)
		return GRIDD__V1__TASK_LIST__ASSIST;
	if (strcmp(s, "certificate") == 0)
		return GRIDD__V1__TASK_LIST__CERTIFICATE;
	return GRIDD__V1__TASK_LIST__LIST_UNSPECIFIED;
}

static Gridd__V1__Matter
matter_value(const char *s)
{
	if (strcmp(s, "big") == 0)
		return GRIDD__V1__MATTER__BIG;
	if (strcmp(s, "small") == 0)
		return GRIDD__V1__MATTER__SMALL;
	if (strcmp(s, "private") == 0)
		return GRIDD__V1__MATTER__PRIVATE;
	return GRIDD__V1__MATTER__MATTER_UNSPECIFIED;
}

bool
disp_offer_from_row(const struct db_res *res, int row, struct disp_offer *o)
{
	Gridd__V1__AssignmentOffer *m = &o->msg;
	char *p, *save = NULL;
	int64_t aid, iid;

	memset(o, 0, sizeof(*o));
	gridd__v1__assignment_offer__init(m);
	if (db_res_cols(res) != N_COLS ||
	    (aid = col_int(res, row, COL_ASSIGNMENT)) <= 0 ||
	    (iid = col_int(res, row, COL_INCIDENT)) <= 0)
		return false;
	m->assignment_id = (uint64_t)aid;
	m->incident_id = (uint64_t)iid;
	/* Strings point into res: the message is serialised before the
	 * callback returns. */
	m->cell_id = (char *)col(res, row, COL_CELL);
	m->task_type = (char *)col(res, row, COL_TASK_TYPE);
	m->list = list_value(col(res, row, COL_LIST));
	m->matter = matter_value(col(res, row, COL_MATTER));
	m->summary = (char *)col(res, row, COL_SUMMARY);
	m->lon = col_double(res, row, COL_LON);
	m->lat = col_double(res, row, COL_LAT);
	m->address = (char *)col(res, row, COL_ADDRESS);
	m->deadline = col_int(res, row, COL_DEADLINE);
	m->reason = (char *)col(res, row, COL_REASON);
	m->offer_expires_at = col_int(res, row, COL_EXPIRES);
	m->state = (char *)col(res, row, COL_STATE);
	o->depts = xstrdup(col(res, row, COL_DEPTS));
	for (p = strtok_r(o->depts, ",", &save);
	    p != NULL && o->n_depts < DISP_OFFER_MAX_DEPTS;
	    p = strtok_r(NULL, ",", &save))
		o->dept_ptrs[o->n_depts++] = p;
	m->n_departments = o->n_depts;
	m->departments = o->dept_ptrs;
	o->created_ms = col_int(res, row, COL_CREATED);
	return true;
}

void
disp_offer_clear(struct disp_offer *o)
{
	free(o->depts);
	o->depts = NULL;
}

Gridd__V1__ErrorCode
disp_db_error(const struct db_res *res, const char **msg)
{
	enum db_status st = db_res_status(res);
	const char *state = db_res_sqlstate(res);

	if (st == DB_SQL_ERROR && (strncmp(state, "22", 2) == 0 ||
	    strncmp(state, "23", 2) == 0)) {
		*msg = "value refused by the database";
		return GRIDD__V1__ERROR_CODE__BAD_REQUEST;
	}
	if (st == DB_SQL_ERROR) {
		log_warn("event=dispatch_sql_error sqlstate=%s error=\"%s\"",
		    state, db_res_error(res));
		d.statement_errors++;
		*msg = "internal error";
		return GRIDD__V1__ERROR_CODE__INTERNAL;
	}
	*msg = "database unavailable";
	return GRIDD__V1__ERROR_CODE__UNAVAILABLE;
}

/* ---- pushing offers ------------------------------------------------------ */

struct push_ctx {
	const Gridd__V1__Envelope *env;
};

static void
push_visit_cb(struct conn *c, void *arg)
{
	struct push_ctx *p = arg;

	conn_send(c, p->env);
}

static void
count_visit_cb(struct conn *c, void *arg)
{
	UNUSED(c);
	UNUSED(arg);
}

/* Pushes the offer in row to every connection of its worker here. */
static void
push_offer_row(const struct db_res *res, int row)
{
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	struct disp_offer o;
	struct push_ctx p = { &env };
	const char *worker = col(res, row, COL_WORKER);
	size_t n;

	if (!disp_offer_from_row(res, row, &o))
		return;
	env.request_id = 0;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_ASSIGNMENT_OFFER;
	env.assignment_offer = &o.msg;
	n = conn_foreach_principal(CONN_ROLE_WORKER, worker, push_visit_cb, &p);
	if (n > 0) {
		d.offers_pushed++;
		if (o.created_ms > 0)
			metrics_hist_observe(&d.push_latency,
			    (double)(now_ms() - o.created_ms));
	}
	log_debug("event=offer_push assignment=%" PRIu64 " worker=%s "
	    "connections=%zu", o.msg.assignment_id, worker, n);
	disp_offer_clear(&o);
}

/* ---- timers -------------------------------------------------------------- */

/* Makes sure the timer loop runs within delay_ms. */
static void
timer_arm(int64_t delay_ms)
{
	int64_t due;
	struct timeval tv;

	if (!d.running || gridd.stopping)
		return;
	if (delay_ms < 0)
		delay_ms = 0;
	else if (delay_ms > 0)
		delay_ms += DISP_TIMER_SLACK_MS - delay_ms % DISP_TIMER_SLACK_MS;
	due = mono_ms() + delay_ms;
	if (d.timer_due != 0 && d.timer_due <= due)
		return;
	d.timer_due = due;
	tv.tv_sec = (time_t)(delay_ms / 1000);
	tv.tv_usec = (suseconds_t)(delay_ms % 1000) * 1000;
	evtimer_add(d.timer_ev, &tv);
}

/* ---- acting on result rows ----------------------------------------------- */

/*
 * Makes sure the scan runs within delay_ms. A pending scan is only ever
 * brought forward: re-adding the event would push it back, and a steady
 * trickle of retries would then postpone the scan for good.
 */
static void
scan_arm(int64_t delay_ms)
{
	int64_t due = mono_ms() + delay_ms;
	struct timeval tv;

	if (!d.running || gridd.stopping)
		return;
	if (d.scan_due != 0 && d.scan_due <= due)
		return;
	d.scan_due = due;
	tv.tv_sec = (time_t)(delay_ms / 1000);
	tv.tv_usec = (suseconds_t)(delay_ms % 1000) * 1000;
	evtimer_add(d.scan_ev, &tv);
}

static void
retry_soon(void)
{
	d.retries++;
	if (d.scan_busy)
		d.scan_again = true;
	else
		scan_arm(DISP_RETRY_MS);
}

static enum shortfall
shortfall_value(const char *s)
{
	for (int i = 0; i < SF_N; i++)
		if (strcmp(s, shortfall_names[i]) == 0)
			return (enum shortfall)i;
	return SF_NO_WORKERS;
}

void
disp_apply_rows(const struct db_res *res, int from)
{
	int rows = db_res_rows(res);

	if (db_res_cols(res) != N_COLS)
		return;
	for (int r = from; r < rows; r++) {
		const char *out = col(res, r, COL_OUTCOME);
		const char *detail = col(res, r, COL_DETAIL);
		int64_t inc = col_int(res, r, COL_INCIDENT);
		int64_t aid = col_int(res, r, COL_ASSIGNMENT);

		if (strcmp(out, "offered") == 0) {
			d.offers_sent++;
			log_info("event=offer incident=%" PRId64
			    " assignment=%" PRId64 " worker=%s reason=%s",
			    inc, aid, col(res, r, COL_WORKER),
			    col(res, r, COL_REASON));
			push_offer_row(res, r);
			/* This offer's expiry: the loop wakes for it. */
			timer_arm(col_int(res, r, COL_EXPIRES) - now_ms());
		} else if (strcmp(out, "escalated") == 0) {
			d.escalations[shortfall_value(detail)]++;
			log_info("event=escalated incident=%" PRId64
			    " shortfall=%s", inc, detail);
		} else if (strcmp(out, "expired") == 0) {
			d.offers_expired++;
			log_info("event=offer_expired incident=%" PRId64
			    " assignment=%" PRId64, inc, aid);
		} else if (strcmp(out, "sla") == 0) {
			d.sla_escalations++;
			log_info("event=sla_overdue incident=%" PRId64
			    " status=%s", inc, detail);
		} else if (strcmp(out, "timer") == 0) {
			int64_t lag = col_int(res, r, COL_N);

			d.timers_fired[strcmp(detail, "sla") == 0]++;
			metrics_hist_observe(&d.timer_lag,
			    (double)(lag > 0 ? lag : 0));
			/* timer= is the timer row's id (assignment column). */
			log_info("event=timer_fired timer=%" PRId64
			    " kind=%s lag_ms=%" PRId64, aid, detail, lag);
		} else if (strcmp(out, "retry") == 0) {
			log_info("event=dispatch_retry incident=%" PRId64
			    " why=%s", inc, detail);
			retry_soon();
		} else if (strcmp(out, "busy") == 0) {
			d.timers_locked = true;
		} else if (strcmp(out, "ok") == 0) {
			if (strcmp(detail, "accepted") == 0)
				d.accepted++;
			else if (strcmp(detail, "declined") == 0)
				d.declined++;
			else if (strcmp(detail, "in_progress") == 0)
				d.started++;
			else if (strcmp(detail, "resolved") == 0)
				d.resolved++;
			else if (strcmp(detail, "closed") == 0)
				d.closed++;
			else if (strcmp(detail, "new") == 0)
				d.reopened++;
		} else if (strcmp(out, "replay") == 0) {
			d.replays++;
		}
	}
}

/* ---- requests that answer from the first row ---------------------------- */

struct disp_req {
	struct conn *c;
	uint64_t request_id;
	char what[24];
};

struct disp_req *
disp_req_new(struct conn *c, uint64_t request_id, const char *what)
{
	struct disp_req *r = xcalloc(1, sizeof(*r));

	r->c = c;
	r->request_id = request_id;
	snprintf(r->what, sizeof(r->what), "%s", what);
	conn_hold(c);
	return r;
}

void
disp_req_fail(struct disp_req *r, Gridd__V1__ErrorCode code, const char *msg)
{
	if (conn_is_open(r->c))
		rpc_reply_error(r->c, r->request_id, code, msg);
	conn_release(r->c);
	free(r);
}

void
disp_answer_row(struct disp_req *r, const struct db_res *res, int row)
{
	const char *out = col(res, row, COL_OUTCOME);
	const char *detail = col(res, row, COL_DETAIL);
	Gridd__V1__ErrorCode code;

	log_info("%s event=%s request_id=%" PRIu64 " outcome=%s detail=\"%s\"",
	    conn_log_prefix(r->c), r->what, r->request_id, out, detail);
	if (strcmp(out, "ok") == 0 || strcmp(out, "replay") == 0) {
		if (conn_is_open(r->c))
			rpc_reply_ok(r->c, r->request_id);
		conn_release(r->c);
		free(r);
		return;
	}
	if (strcmp(out, "not_found") == 0)
		code = GRIDD__V1__ERROR_CODE__NOT_FOUND;
	else if (strcmp(out, "forbidden") == 0)
		code = GRIDD__V1__ERROR_CODE__FORBIDDEN;
	else if (strcmp(out, "conflict") == 0)
		code = GRIDD__V1__ERROR_CODE__CONFLICT;
	else
		code = GRIDD__V1__ERROR_CODE__INTERNAL;
	disp_req_fail(r, code, detail[0] ? detail : out);
}

void
disp_answer_cb(void *arg, const struct db_res *res)
{
	struct disp_req *r = arg;
	const char *msg;
	Gridd__V1__ErrorCode code;

	if (db_res_status(res) != DB_OK) {
		code = disp_db_error(res, &msg);
		disp_req_fail(r, code, msg);
		return;
	}
	if (db_res_rows(res) < 1 || db_res_cols(res) != N_COLS) {
		/* An unknown principal (a worker deleted meanwhile). */
		disp_req_fail(r, GRIDD__V1__ERROR_CODE__NOT_FOUND,
		    "not found");
		return;
	}
	disp_apply_rows(res, 0);
	disp_answer_row(r, res, 0);
}

int64_t
disp_row_tag(const struct db_res *res, int row)
{
	return db_res_cols(res) == N_COLS ? col_int(res, row, COL_N) : 0;
}

/* ---- the fast path: NOTIFY gridd_dispatch -------------------------------- */

static void
flush_done_cb(void *arg, const struct db_res *res)
{
	UNUSED(arg);
	d.inflight--;
	if (db_res_status(res) != DB_OK) {
		const char *msg;

		(void)disp_db_error(res, &msg);
		log_warn("event=dispatch outcome=error error=\"%s\"", msg);
		/* The incidents stay due; the scan finds them. */
		retry_soon();
	} else {
		disp_apply_rows(res, 0);
	}
	if (d.npending > 0 && d.running)
		event_active(d.flush_ev, EV_TIMEOUT, 0);
}

/* Concurrent dispatch statements: half the pool, so that requests keep
 * connections of their own under a flood of new incidents. */
static int
max_inflight(void)
{
	int n = gridd.cfg->pool_size / 2;

	return n < 1 ? 1 : n;
}

static void
flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disp_settings s;
	const char *params[1 + DISP_N_SETTINGS];
	int batch = gridd.cfg->dispatch_batch;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	while (d.npending > 0 && d.inflight < max_inflight() &&
	    !gridd.stopping) {
		size_t n = d.npending < (size_t)batch ? d.npending :
		    (size_t)batch;
		/* "{id,id,...}": 20 digits and a comma per id. */
		char *arr = xmalloc(3 + n * 21);
		size_t len = 0;

		arr[len++] = '{';
		for (size_t i = 0; i < n; i++)
			len += (size_t)sprintf(arr + len, "%s%" PRId64,
			    i ? "," : "", d.pending[i]);
		arr[len++] = '}';
		arr[len] = '\0';
		memmove(d.pending, d.pending + n,
		    (d.npending - n) * sizeof(*d.pending));
		d.npending -= n;
		disp_settings(&s);
		params[0] = arr;
		memcpy(params + 1, s.p, sizeof(s.p));
		if (!db_query(gridd.db, "SELECT " ROW_COLS " FROM"
		    " gridd_dispatch_incidents($1::bigint[], $2::int, $3::int,"
		    " $4::int, $5::int, $6)", 1 + DISP_N_SETTINGS, params,
		    flush_done_cb, NULL)) {
			free(arr);
			retry_soon();
			break;
		}
		d.inflight++;
		free(arr);
	}
}

/* An incident offered inside a push (gridd_offers, HOW "commit"). */
static void
offered_add(int64_t inc)
{
	d.offered[d.offered_next++ % DISP_OFFERED_RING] = inc;
}

/* True, once, when inc was offered inside a push lately. */
static bool
offered_take(int64_t inc)
{
	for (size_t i = 0; i < DISP_OFFERED_RING; i++)
		if (d.offered[i] == inc) {
			d.offered[i] = 0;
			return true;
		}
	return false;
}

static void
dispatch_notify_cb(void *arg, const char *channel, const char *payload)
{
	char *end;
	long long id;

	UNUSED(arg);
	UNUSED(channel);
	errno = 0;
	id = strtoll(payload, &end, 10);
	if (errno != 0 || end == payload || *end != '\0' || id <= 0) {
		log_warn("event=dispatch_notify reason=\"bad payload\"");
		return;
	}
	if (offered_take((int64_t)id)) {
		d.notify_offered++;
		return;
	}
	if (d.npending == DISP_PENDING_MAX) {
		/* The scan will find it. */
		d.notify_dropped++;
		retry_soon();
		return;
	}
	d.notify_queued++;
	d.pending[d.npending++] = (int64_t)id;
	/* Gathered for the rest of this loop turn, then one statement. */
	event_active(d.flush_ev, EV_TIMEOUT, 0);
}

/* ---- offers made elsewhere: NOTIFY gridd_offers --------------------------- */

/* Undoes gridd_notify_field's escapes in place (\\ \t \n \r). */
static void
unescape_field(char *f)
{
	char *w = f;

	for (char *r = f; *r != '\0'; r++) {
		if (*r == '\\' && r[1] != '\0') {
			r++;
			*w++ = *r == 't' ? '\t' : *r == 'n' ? '\n' :
			    *r == 'r' ? '\r' : *r;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
}

static int64_t
field_int(const char *f)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(f, &end, 10);
	return errno != 0 || end == f || *end != '\0' ? 0 : (int64_t)v;
}

static double
field_double(const char *f)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(f, &end);
	return errno != 0 || end == f || *end != '\0' || !isfinite(v) ? 0 : v;
}

/* The offer fields of the payload's second line (gridd_offer_notify). */
enum {
	PF_INCIDENT, PF_REASON, PF_STATE, PF_CELL, PF_TASK_TYPE, PF_LIST,
	PF_MATTER, PF_SUMMARY, PF_LON, PF_LAT, PF_ADDRESS, PF_DEADLINE,
	PF_DEPTS, PF_CREATED, PF_N
};

/*
 * Pushes the offer carried by the payload's second line (body, modified in
 * place) to worker's connections here; false when the line is missing or
 * malformed, and the caller reads the offer back instead.
 */
static bool
push_offer_payload(char *body, uint64_t aid, const char *worker,
    int64_t expires)
{
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__AssignmentOffer *m;
	struct disp_offer o;
	struct push_ctx p = { &env };
	char *f[PF_N], *q, *save = NULL;
	int n = 0;
	size_t conns;

	for (q = body; n < PF_N; n++) {
		f[n] = q;
		if ((q = strchr(q, '\t')) == NULL) {
			n++;
			break;
		}
		*q++ = '\0';
	}
	if (n != PF_N || q != NULL)
		return false;
	for (int i = 0; i < PF_N; i++)
		unescape_field(f[i]);
	memset(&o, 0, sizeof(o));
	m = &o.msg;
	gridd__v1__assignment_offer__init(m);
	m->assignment_id = aid;
	if (field_int(f[PF_INCIDENT]) <= 0)
		return false;
	m->incident_id = (uint64_t)field_int(f[PF_INCIDENT]);
	m->cell_id = f[PF_CELL];
	m->task_type = f[PF_TASK_TYPE];
	m->list = list_value(f[PF_LIST]);
	m->matter = matter_value(f[PF_MATTER]);
	m->summary = f[PF_SUMMARY];
	m->lon = field_double(f[PF_LON]);
	m->lat = field_double(f[PF_LAT]);
	m->address = f[PF_ADDRESS];
	m->deadline = field_int(f[PF_DEADLINE]);
	m->reason = f[PF_REASON];
	m->offer_expires_at = expires;
	m->state = f[PF_STATE];
	for (q = strtok_r(f[PF_DEPTS], ",", &save);
	    q != NULL && o.n_depts < DISP_OFFER_MAX_DEPTS;
	    q = strtok_r(NULL, ",", &save))
		o.dept_ptrs[o.n_depts++] = q;
	m->n_departments = o.n_depts;
	m->departments = o.dept_ptrs;
	o.created_ms = field_int(f[PF_CREATED]);
	env.body_case = GRIDD__V1__ENVELOPE__BODY_ASSIGNMENT_OFFER;
	env.assignment_offer = m;
	conns = conn_foreach_principal(CONN_ROLE_WORKER, worker, push_visit_cb,
	    &p);
	if (conns > 0) {
		d.offers_pushed++;
		if (o.created_ms > 0)
			metrics_hist_observe(&d.push_latency,
			    (double)(now_ms() - o.created_ms));
	}
	log_debug("event=offer_push assignment=%" PRIu64 " worker=%s "
	    "connections=%zu", aid, worker, conns);
	return true;
}

static void
remote_offer_cb(void *arg, const struct db_res *res)
{
	UNUSED(arg);
	if (db_res_status(res) != DB_OK || db_res_cols(res) != N_COLS)
		return;
	for (int r = 0; r < db_res_rows(res); r++)
		push_offer_row(res, r);
}

/* "escalated INCIDENT SHORTFALL ORIGIN": an escalation made at the commit
 * of this process's push, counted here. */
static void
escalated_notify(const char *payload)
{
	char inc[24], sf[24];
	const char *origin;
	int n1, n2;

	if (sscanf(payload, "escalated %23[0-9] %23[a-z_] %n", inc, sf,
	    &n1) != 2)
		return;
	origin = payload + n1;
	n2 = (int)strlen(origin);
	if (n2 == 0 || strcmp(origin, gridd.instance) != 0)
		return;
	d.escalations[shortfall_value(sf)]++;
	log_info("event=escalated incident=%s shortfall=%s", inc, sf);
}

/*
 * A new offer, from any process (gridd_offer_notify): "ASSIGNMENT WORKER
 * ORIGIN EXPIRES_MS INCIDENT HOW", then optionally a line with the offer.
 * The origin pushed it already unless it was made at a commit (HOW
 * "commit"): then it counts and pushes it now. Any other process holding
 * one of the worker's connections pushes it, from the payload or, when it
 * was too long to carry, read back.
 */
static void
offers_notify_cb(void *arg, const char *channel, const char *payload)
{
	char line[CONN_PRINCIPAL_MAX + 400];
	char *tok[6], *save = NULL, *body;
	const char *nl, *params[1];
	size_t head;
	int ntok = 0;
	int64_t aid, expires, inc;
	bool mine, at_commit;

	UNUSED(arg);
	UNUSED(channel);
	if (strncmp(payload, "escalated ", 10) == 0) {
		escalated_notify(payload);
		return;
	}
	nl = strchr(payload, '\n');
	head = nl != NULL ? (size_t)(nl - payload) : strlen(payload);
	if (head >= sizeof(line))
		return;
	memcpy(line, payload, head);
	line[head] = '\0';
	for (char *t = strtok_r(line, " ", &save); t != NULL && ntok < 6;
	    t = strtok_r(NULL, " ", &save))
		tok[ntok++] = t;
	if (ntok != 6 || (aid = field_int(tok[0])) <= 0 ||
	    (inc = field_int(tok[4])) <= 0 ||
	    strlen(tok[1]) > CONN_PRINCIPAL_MAX)
		return;
	mine = strcmp(tok[2], gridd.instance) == 0;
	at_commit = strcmp(tok[5], "commit") == 0;
	if (at_commit)
		offered_add(inc);
	if (mine && !at_commit)
		return;		/* pushed by this process already */
	expires = field_int(tok[3]);
	if (expires > 0)
		timer_arm(expires - now_ms());
	if (mine) {
		/* Made at the commit of one of this process's statements. */
		d.offers_sent++;
		log_info("event=offer incident=%" PRId64 " assignment=%" PRId64
		    " worker=%s at=commit", inc, aid, tok[1]);
	}
	/* Only a process holding one of the worker's connections pushes. */
	if (conn_foreach_principal(CONN_ROLE_WORKER, tok[1], count_visit_cb,
	    NULL) == 0)
		return;
	if (nl != NULL) {
		bool ok;

		body = xstrdup(nl + 1);
		ok = push_offer_payload(body, (uint64_t)aid, tok[1], expires);
		free(body);
		if (ok)
			return;
	}
	params[0] = tok[0];
	if (!db_query(gridd.db, "SELECT " ROW_COLS " FROM"
	    " gridd_offer_row('offered', $1::bigint) WHERE state = 'offered'",
	    1, params, remote_offer_cb, NULL))
		log_warn("event=offer_push reason=\"database queue full\"");
}

/* ---- the safety scan ------------------------------------------------------- */

static void
scan_done_cb(void *arg, const struct db_res *res)
{
	bool more = false;

	UNUSED(arg);
	d.scan_busy = false;
	if (db_res_status(res) != DB_OK) {
		const char *msg;

		(void)disp_db_error(res, &msg);
		log_warn("event=dispatch_scan outcome=error error=\"%s\"", msg);
	} else {
		for (int r = 0; r < db_res_rows(res); r++)
			if (strcmp(col(res, r, COL_OUTCOME), "more") == 0)
				more = true;
		disp_apply_rows(res, 0);
	}
	if (!d.running || gridd.stopping)
		return;
	if (more || d.scan_again) {
		d.scan_again = false;
		scan_arm(more ? 0 : DISP_RETRY_MS);
	} else
		scan_arm((int64_t)gridd.cfg->scan_interval_s * 1000);
}

static void
scan_start(void)
{
	struct disp_settings s;
	const char *params[2 + DISP_N_SETTINGS];
	char limit[12], push_max[12];

	if (!d.running || gridd.stopping)
		return;
	if (d.scan_busy) {
		d.scan_again = true;
		return;
	}
	snprintf(limit, sizeof(limit), "%d", gridd.cfg->dispatch_batch);
	/* The scan also publishes this process's settings for the offers
	 * made inside its pushes (dispatch_origins). */
	snprintf(push_max, sizeof(push_max), "%d", gridd.cfg->push_offer_max);
	disp_settings(&s);
	params[0] = limit;
	params[1] = push_max;
	memcpy(params + 2, s.p, sizeof(s.p));
	if (!db_query(gridd.db, "SELECT " ROW_COLS " FROM"
	    " gridd_dispatch_scan($1::int, $2::int, $3::int, $4::int,"
	    " $5::int, $6::int, $7)", 2 + DISP_N_SETTINGS, params,
	    scan_done_cb, NULL)) {
		scan_arm(1000);
		return;
	}
	d.scan_busy = true;
}

static void
scan_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	d.scan_due = 0;
	scan_start();
	/* The timer loop's own safety net rides on the scan. */
	timer_arm((int64_t)gridd.cfg->scan_interval_s * 1000);
}

void
disp_kick(void)
{
	if (!d.running || gridd.stopping)
		return;
	if (d.scan_busy) {
		d.scan_again = true;
		return;
	}
	scan_arm(0);
}

/* ---- the timer loop -------------------------------------------------------- */

static void
timers_done_cb(void *arg, enum db_status st, const struct db_res *const *res,
    int n)
{
	bool more = false;
	int64_t next = (int64_t)gridd.cfg->scan_interval_s * 1000, delay;

	UNUSED(arg);
	d.timers_busy = false;
	if (st != DB_OK || n != 2) {
		log_warn("event=timers outcome=error status=%d", (int)st);
		next = 1000;
	} else {
		for (int r = 0; r < db_res_rows(res[0]); r++)
			if (strcmp(col(res[0], r, COL_OUTCOME), "more") == 0)
				more = true;
		disp_apply_rows(res[0], 0);
		if (db_res_rows(res[1]) == 1 && !db_res_isnull(res[1], 0, 0) &&
		    db_res_int64(res[1], 0, 0, &delay) && delay < next)
			next = delay;
	}
	if (next < 0)
		next = 0;
	if (more)
		next = 0;
	else if (d.timers_again && next > DISP_RETRY_MS)
		next = DISP_RETRY_MS;
	/* A due timer whose row another transaction holds stays due: come
	 * back after a pause rather than at once, or a lock held for long
	 * (an idle transaction in psql) turns this into a busy loop. */
	if (d.timers_locked && next < DISP_RETRY_MS)
		next = DISP_RETRY_MS;
	d.timers_again = false;
	d.timers_locked = false;
	timer_arm(next);
}

static void
timers_start(void)
{
	struct disp_settings s;
	const char *params[1 + DISP_N_SETTINGS];
	char limit[12];
	struct db_batch *b;

	if (!d.running || gridd.stopping)
		return;
	if (d.timers_busy) {
		d.timers_again = true;
		return;
	}
	snprintf(limit, sizeof(limit), "%d", gridd.cfg->dispatch_batch);
	disp_settings(&s);
	params[0] = limit;
	memcpy(params + 1, s.p, sizeof(s.p));
	b = db_batch_new();
	db_batch_add(b, "SELECT " ROW_COLS " FROM"
	    " gridd_timers_fire($1::int, $2::int, $3::int, $4::int, $5::int,"
	    " $6)", 1 + DISP_N_SETTINGS, params);
	/* The next wake-up, rounded up so that it does not come early. */
	db_batch_add(b, "SELECT ceil(extract(epoch FROM min(fire_at) -"
	    " clock_timestamp()) * 1000)::bigint FROM timers", 0, NULL);
	if (!db_batch_submit(gridd.db, b, timers_done_cb, NULL)) {
		timer_arm(1000);
		return;
	}
	d.timers_busy = true;
}

static void
timer_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	d.timer_due = 0;
	timers_start();
}

/* ---- login: offers the worker missed ---------------------------------------- */

struct login_push {
	struct conn *c;
};

static void
login_offers_cb(void *arg, const struct db_res *res)
{
	struct login_push *lp = arg;
	int rows;

	if (db_res_status(res) == DB_OK && db_res_cols(res) == N_COLS &&
	    conn_is_open(lp->c)) {
		rows = db_res_rows(res);
		for (int r = 0; r < rows; r++) {
			Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
			struct disp_offer o;

			if (!disp_offer_from_row(res, r, &o))
				continue;
			env.body_case =
			    GRIDD__V1__ENVELOPE__BODY_ASSIGNMENT_OFFER;
			env.assignment_offer = &o.msg;
			conn_send(lp->c, &env);
			disp_offer_clear(&o);
		}
		log_info("%s event=login_offers pushed=%d",
		    conn_log_prefix(lp->c), rows);
	}
	conn_release(lp->c);
	free(lp);
}

/*
 * Every offer still waiting for this worker's answer, pushed after the
 * LoginReply. Login.since_seq does not filter offers: an offer is pushed
 * while it is open, so a reconnecting phone gets everything still open and
 * drops ids it knows. One pushed by NOTIFY in the same moment may arrive
 * twice; assignment_id tells.
 */
void
disp_worker_login(struct conn *c)
{
	struct login_push *lp;
	const char *params[2];
	char limit[12];

	if (!d.running)
		return;
	lp = xcalloc(1, sizeof(*lp));
	lp->c = c;
	conn_hold(c);
	snprintf(limit, sizeof(limit), "%d", DISP_LOGIN_OFFERS_MAX);
	params[0] = conn_principal(c);
	params[1] = limit;
	/* "state || ''": a plain state = 'offered' implies the predicate of
	 * assignments_one_live_idx, which statistics taken while nothing was
	 * live make look empty; the planner then read every live assignment
	 * of the city for each login. By worker it is one worker's. */
	if (!db_query(gridd.db, "SELECT 'offered'::text, NULL::text,"
	    " NULL::bigint, v.* FROM gridd_offers_v v WHERE v.worker_id = $1"
	    " AND v.state || '' = 'offered' ORDER BY v.assignment_id"
	    " LIMIT $2::int",
	    2, params, login_offers_cb, lp)) {
		conn_release(c);
		free(lp);
	}
}

/* ---- VerifyIncident ---------------------------------------------------------- */

void
disp_verify_incident(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__VerifyIncident *in = env->verify_incident;
	const char *note = in->note != NULL ? in->note : "";
	struct disp_settings s;
	const char *params[4 + DISP_N_SETTINGS];
	char id[24];
	struct disp_req *r;

	if (in->incident_id == 0 || in->incident_id > INT64_MAX) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST, "incident_id required");
		return;
	}
	if (strlen(note) > DISP_NOTE_MAX) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "note longer than 2000 bytes");
		return;
	}
	snprintf(id, sizeof(id), "%" PRIu64, in->incident_id);
	disp_settings(&s);
	params[0] = conn_principal(c);
	params[1] = id;
	params[2] = in->accept ? "true" : "false";
	params[3] = note;
	memcpy(params + 4, s.p, sizeof(s.p));
	r = disp_req_new(c, env->request_id, "verify_incident");
	if (!db_query(gridd.db, "SELECT " ROW_COLS " FROM"
	    " gridd_verify_incident($1, $2::bigint, $3::boolean, $4,"
	    " $5::int, $6::int, $7::int, $8::int, $9)",
	    4 + DISP_N_SETTINGS, params, disp_answer_cb, r))
		disp_req_fail(r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

/* ---- metrics ------------------------------------------------------------------ */

static void
disp_metrics_cb(struct evbuffer *out)
{
	char labels[64];

	metrics_family(out, "gridd_offers_total", "counter",
	    "Offers to grid workers, by what became of them.");
	metrics_sample(out, "gridd_offers_total", "event=\"sent\"",
	    (double)d.offers_sent);
	metrics_sample(out, "gridd_offers_total", "event=\"pushed\"",
	    (double)d.offers_pushed);
	metrics_sample(out, "gridd_offers_total", "event=\"expired\"",
	    (double)d.offers_expired);
	metrics_sample(out, "gridd_offers_total", "event=\"accepted\"",
	    (double)d.accepted);
	metrics_sample(out, "gridd_offers_total", "event=\"declined\"",
	    (double)d.declined);
	metrics_family(out, "gridd_assignments_total", "counter",
	    "Assignments started and resolved, and replayed actions.");
	metrics_sample(out, "gridd_assignments_total", "event=\"started\"",
	    (double)d.started);
	metrics_sample(out, "gridd_assignments_total", "event=\"resolved\"",
	    (double)d.resolved);
	metrics_sample(out, "gridd_assignments_total", "event=\"replayed\"",
	    (double)d.replays);
	metrics_family(out, "gridd_verifications_total", "counter",
	    "Resolved incidents closed or reopened by their department.");
	metrics_sample(out, "gridd_verifications_total", "result=\"closed\"",
	    (double)d.closed);
	metrics_sample(out, "gridd_verifications_total", "result=\"reopened\"",
	    (double)d.reopened);
	metrics_family(out, "gridd_escalations_total", "counter",
	    "Incidents escalated for want of a worker, by shortfall.");
	for (int i = 0; i < SF_N; i++) {
		snprintf(labels, sizeof(labels), "shortfall=\"%s\"",
		    shortfall_names[i]);
		metrics_sample(out, "gridd_escalations_total", labels,
		    (double)d.escalations[i]);
	}
	metrics_family(out, "gridd_sla_escalations_total", "counter",
	    "Open incidents escalated once for passing their SLA deadline.");
	metrics_sample(out, "gridd_sla_escalations_total", NULL,
	    (double)d.sla_escalations);
	metrics_family(out, "gridd_timers_fired_total", "counter",
	    "Timers fired by this process, by kind.");
	metrics_sample(out, "gridd_timers_fired_total",
	    "kind=\"offer_expiry\"", (double)d.timers_fired[0]);
	metrics_sample(out, "gridd_timers_fired_total", "kind=\"sla\"",
	    (double)d.timers_fired[1]);
	metrics_family(out, "gridd_dispatch_notifies_total", "counter",
	    "NOTIFY gridd_dispatch received: queued for a statement, for an "
	    "incident offered inside its push, dropped in a flood.");
	metrics_sample(out, "gridd_dispatch_notifies_total",
	    "outcome=\"queued\"", (double)d.notify_queued);
	metrics_sample(out, "gridd_dispatch_notifies_total",
	    "outcome=\"offered_in_push\"", (double)d.notify_offered);
	metrics_sample(out, "gridd_dispatch_notifies_total",
	    "outcome=\"dropped\"", (double)d.notify_dropped);
	metrics_family(out, "gridd_dispatch_retries_total", "counter",
	    "Dispatch work retried: busy worker rows, failed items, floods.");
	metrics_sample(out, "gridd_dispatch_retries_total", NULL,
	    (double)d.retries);
	metrics_family(out, "gridd_timer_lag_seconds", "histogram",
	    "How late timers fired after their fire_at.");
	metrics_hist_write(out, "gridd_timer_lag_seconds", NULL, &d.timer_lag);
	metrics_family(out, "gridd_offer_push_latency_seconds", "histogram",
	    "From the incident's creation to its offer's push to a worker.");
	metrics_hist_write(out, "gridd_offer_push_latency_seconds", NULL,
	    &d.push_latency);
}

/* ---- start and stop ---------------------------------------------------------- */

bool
disp_init(void)
{
	if (d.running)
		return true;
	d.flush_ev = event_new(gridd.base, -1, 0, flush_cb, NULL);
	d.scan_ev = evtimer_new(gridd.base, scan_cb, NULL);
	d.timer_ev = evtimer_new(gridd.base, timer_cb, NULL);
	if (d.flush_ev == NULL || d.scan_ev == NULL || d.timer_ev == NULL) {
		disp_shutdown();
		return false;
	}
	d.pending = xcalloc(DISP_PENDING_MAX, sizeof(*d.pending));
	if (!db_listen(gridd.db, "gridd_dispatch", dispatch_notify_cb, NULL) ||
	    !db_listen(gridd.db, "gridd_offers", offers_notify_cb, NULL)) {
		log_error("event=start error=\"dispatch cannot LISTEN\"");
		disp_shutdown();
		return false;
	}
	metrics_register("dispatch", disp_metrics_cb);
	d.running = true;
	/* What a restart left behind: due timers fire and undispatched
	 * incidents are offered at once. */
	event_active(d.scan_ev, EV_TIMEOUT, 0);
	timer_arm(0);
	return true;
}

void
disp_shutdown(void)
{
	d.running = false;
	if (d.flush_ev != NULL)
		event_free(d.flush_ev);
	if (d.scan_ev != NULL)
		event_free(d.scan_ev);
	if (d.timer_ev != NULL)
		event_free(d.timer_ev);
	d.flush_ev = d.scan_ev = d.timer_ev = NULL;
	d.scan_due = d.timer_due = 0;
	free(d.pending);
	d.pending = NULL;
	d.npending = 0;
}

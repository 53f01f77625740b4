/* events.c - department subscriptions: replay after since_seq, then live IncidentUpdate pushes. */

/*
 * The events table is the subscription's only source: a subscriber is a
 * cursor (the last dept_seq sent) over its department's rows, read a page
 * at a time in dept_seq order.  Live delivery is the same read, started by
 * NOTIFY gridd_events (payload: the department) from whichever process
 * committed the change.  Since dept_seq is allocated under a row lock held
 * to commit (003_feed.sql), a department's events become visible in
 * sequence order, so reading "after the cursor" never skips one and never
 * repeats one, across reconnects (the client passes its last seq) and
 * restarts (nothing lives only in memory).
 *
 * Backpressure: a subscriber's next page is read only while its
 * connection's unsent output is under half of max_output_bytes; otherwise
 * the subscription stalls and the poll timer resumes it once the peer has
 * drained.  Memory per subscriber is therefore one page plus what the
 * socket holds, however far behind it is.
 *
 * Events pending (gridd_subscriber_events_pending): for each subscriber,
 * its department's newest dept_seq minus the last one sent.  The newest is
 * what a read that caught up saw, or what the periodic head query read
 * (every EVENTS_RESCAN_MS), so the gauge lags by at most that; a stalled
 * subscriber's backlog is exactly the figure operators need.
 *
 * Subscriptions hold no reference to their connection: they find it by
 * (department, connection id) when there is something to send, and drop
 * themselves when it is gone.  A NOTIFY lost while the listening connection
 * was down is made up by a periodic re-read of every idle subscriber.
 */
#include "events.h"

#include <sys/queue.h>

#include <inttypes.h>
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

/* Stalled subscribers are looked at this often. */
#define EVENTS_POLL_MS		100
/* Idle subscribers re-read this often in case a NOTIFY was lost. */
#define EVENTS_RESCAN_MS	5000
/* After a failed read, the subscriber tries again after this long. */
#define EVENTS_RETRY_MS		1000

enum sub_state {
	SUB_IDLE,		/* caught up; waiting for a NOTIFY */
	SUB_FETCHING,		/* a page read in flight */
	SUB_STALLED,		/* output over its bound, or a read failed */
};

struct sub {
	LIST_ENTRY(sub) entry;
	uint64_t conn_id;
	char dept[CONN_PRINCIPAL_MAX + 1];
	uint64_t last;		/* last dept_seq sent */
	uint64_t head;		/* newest dept_seq known to exist */
	uint64_t gen;		/* bumped by a new Subscribe on the conn */
	enum sub_state state;
	bool dirty;		/* notified while a read was in flight */
	bool gone;		/* connection closed: free when not fetching */
	int64_t retry_at;	/* mono_ms, for a failed read */
};

struct fetch {
	struct sub *s;
	uint64_t gen;
};

LIST_HEAD(sub_list, sub);

static struct {
	struct sub_list subs;
	size_t n;
	struct event *timer;
	int64_t last_rescan;
	bool heads_busy;		/* the head query is in flight */
	uint64_t pushed;
	uint64_t stalls;
	uint64_t fetches;
	uint64_t fetch_errors;
} ev = {
	.subs = LIST_HEAD_INITIALIZER(ev.subs),
};

static const char events_sql[] =
    "SELECT dept_seq, incident_id, ext_id, status, coalesce(cell_id, ''),"
    " coalesce(worker_id, ''), note,"
    " (extract(epoch FROM at) * 1000)::bigint"
    " FROM events WHERE department_id = $1 AND dept_seq > $2::bigint"
    " ORDER BY dept_seq LIMIT $3::int";

static const struct {
	const char *name;
	Gridd__V1__IncidentUpdate__Status status;
} statuses[] = {
	{ "new", GRIDD__V1__INCIDENT_UPDATE__STATUS__NEW },
	{ "dispatched", GRIDD__V1__INCIDENT_UPDATE__STATUS__DISPATCHED },
	{ "accepted", GRIDD__V1__INCIDENT_UPDATE__STATUS__ACCEPTED },
	{ "in_progress", GRIDD__V1__INCIDENT_UPDATE__STATUS__IN_PROGRESS },
	{ "resolved", GRIDD__V1__INCIDENT_UPDATE__STATUS__RESOLVED },
	{ "closed", GRIDD__V1__INCIDENT_UPDATE__STATUS__CLOSED },
	{ "referred", GRIDD__V1__INCIDENT_UPDATE__STATUS__REFERRED },
	{ "escalated", GRIDD__V1__INCIDENT_UPDATE__STATUS__ESCALATED },
	{ "cancelled", GRIDD__V1__INCIDENT_UPDATE__STATUS__CANCELLED },
};

static Gridd__V1__IncidentUpdate__Status
status_of(const char *s)
{
	for (size_t i = 0; i < ARRAY_LEN(statuses); i++)
		if (strcmp(statuses[i].name, s) == 0)
			return statuses[i].status;
	return GRIDD__V1__INCIDENT_UPDATE__STATUS__STATUS_UNSPECIFIED;
}

struct find {
	uint64_t id;
	struct conn *found;
};

static void
find_cb(struct conn *c, void *arg)
{
	struct find *f = arg;

	if (conn_id(c) == f->id && conn_is_open(c))
		f->found = c;
}

/* The subscriber's connection, or NULL when it is gone. Valid until the
 * loop turn ends (connections are freed after it). */
static struct conn *
sub_conn(const struct sub *s)
{
	struct find f = { s->conn_id, NULL };

	conn_foreach_principal(CONN_ROLE_DEPARTMENT, s->dept, find_cb, &f);
	return f.found;
}

static void
sub_free(struct sub *s)
{
	LIST_REMOVE(s, entry);
	ev.n--;
	free(s);
}

static size_t
output_bound(void)
{
	return gridd.cfg->max_output_bytes / 2;
}

static void fetch_cb(void *arg, const struct db_res *res);

/* Reads the next page. The only place a read starts. */
static void
sub_fetch(struct sub *s)
{
	struct fetch *f;
	char last[24], page[16];
	const char *params[3];

	s->dirty = false;
	f = xcalloc(1, sizeof(*f));
	f->s = s;
	f->gen = s->gen;
	snprintf(last, sizeof(last), "%" PRIu64, s->last);
	snprintf(page, sizeof(page), "%d", gridd.cfg->subscribe_page);
	params[0] = s->dept;
	params[1] = last;
	params[2] = page;
	s->state = SUB_FETCHING;
	ev.fetches++;
	if (gridd.db == NULL || !db_query(gridd.db, events_sql, 3, params,
	    fetch_cb, f)) {
		free(f);
		ev.fetch_errors++;
		s->state = SUB_STALLED;
		s->retry_at = mono_ms() + EVENTS_RETRY_MS;
	}
}

/* Decides what a subscriber does next: read now, wait for output to
 * drain, or wait for a NOTIFY. */
static void
sub_next(struct sub *s, struct conn *c, bool more)
{
	if (s->gone || c == NULL) {
		sub_free(s);
		return;
	}
	if (!more && !s->dirty) {
		s->state = SUB_IDLE;
		return;
	}
	if (conn_output_len(c) > output_bound()) {
		if (s->state != SUB_STALLED)
			ev.stalls++;
		s->state = SUB_STALLED;
		s->retry_at = 0;
		return;
	}
	sub_fetch(s);
}

static void
send_row(struct conn *c, const struct db_res *res, int row, uint64_t seq)
{
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__IncidentUpdate up = GRIDD__V1__INCIDENT_UPDATE__INIT;
	int64_t inc = 0, at = 0;

	if (!db_res_int64(res, row, 1, &inc))
		inc = 0;
	if (!db_res_int64(res, row, 7, &at))
		at = 0;
	up.seq = seq;
	up.incident_id = inc > 0 ? (uint64_t)inc : 0;
	up.ext_id = (char *)db_res_get(res, row, 2);
	up.status = status_of(db_res_get(res, row, 3));
	up.cell_id = (char *)db_res_get(res, row, 4);
	up.worker_id = (char *)db_res_get(res, row, 5);
	up.note = (char *)db_res_get(res, row, 6);
	up.at = at;
	env.request_id = 0;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_INCIDENT_UPDATE;
	env.incident_update = &up;
	conn_send(c, &env);
	ev.pushed++;
}

static void
fetch_cb(void *arg, const struct db_res *res)
{
	struct fetch *f = arg;
	struct sub *s = f->s;
	struct conn *c;
	int rows;
	bool stale = f->gen != s->gen;

	free(f);
	c = s->gone ? NULL : sub_conn(s);
	if (c == NULL) {
		sub_free(s);
		return;
	}
	if (db_res_status(res) != DB_OK) {
		ev.fetch_errors++;
		log_warn("%s event=subscribe outcome=read_failed error=\"%s\"",
		    conn_log_prefix(c), db_res_error(res));
		s->state = SUB_STALLED;
		s->retry_at = mono_ms() + EVENTS_RETRY_MS;
		return;
	}
	if (stale) {
		/* Subscribed again meanwhile: read from the new cursor. */
		sub_next(s, c, true);
		return;
	}
	rows = db_res_rows(res);
	for (int i = 0; i < rows; i++) {
		int64_t seq;

		if (!db_res_int64(res, i, 0, &seq) || seq <= 0 ||
		    (uint64_t)seq <= s->last)
			continue;
		send_row(c, res, i, (uint64_t)seq);
		s->last = (uint64_t)seq;
	}
	if (s->head < s->last)
		s->head = s->last;
	sub_next(s, c, rows >= gridd.cfg->subscribe_page);
}

static void
notify_cb(void *arg, const char *channel, const char *payload)
{
	struct sub *s, *next;

	UNUSED(arg);
	UNUSED(channel);
	for (s = LIST_FIRST(&ev.subs); s != NULL; s = next) {
		next = LIST_NEXT(s, entry);
		if (strcmp(s->dept, payload) != 0)
			continue;
		if (s->state == SUB_FETCHING)
			s->dirty = true;
		else if (s->state == SUB_IDLE)
			sub_next(s, sub_conn(s), true);
		/* SUB_STALLED: the poll resumes it. */
	}
}

/* ---- the pending gauge ----------------------------------------------- */

static void
heads_cb(void *arg, const struct db_res *res)
{
	struct sub *s;

	UNUSED(arg);
	ev.heads_busy = false;
	if (db_res_status(res) != DB_OK)
		return;		/* the gauge keeps its last figure */
	for (int i = 0; i < db_res_rows(res); i++) {
		const char *dept = db_res_get(res, i, 0);
		int64_t head;

		if (!db_res_int64(res, i, 1, &head) || head <= 0)
			continue;
		LIST_FOREACH(s, &ev.subs, entry)
			if (strcmp(s->dept, dept) == 0 &&
			    s->head < (uint64_t)head)
				s->head = (uint64_t)head;
	}
}

/* Reads the newest dept_seq of every subscribed department, in one
 * statement: an array literal of the distinct departments. */
static void
heads_start(void)
{
	struct evbuffer *b;
	struct sub *s, *t;
	const char *params[1];
	bool first = true;

	if (ev.heads_busy || gridd.db == NULL || LIST_EMPTY(&ev.subs))
		return;
	b = evbuffer_new();
	if (b == NULL)
		return;
	evbuffer_add(b, "{", 1);
	LIST_FOREACH(s, &ev.subs, entry) {
		for (t = LIST_FIRST(&ev.subs); t != s;
		    t = LIST_NEXT(t, entry))
			if (strcmp(t->dept, s->dept) == 0)
				break;
		if (t != s)
			continue;	/* listed already */
		/* Quoted: principals are [A-Za-z0-9_.-], but "NULL" unquoted
		 * would be an SQL NULL in an array literal. */
		evbuffer_add_printf(b, "%s\"%s\"", first ? "" : ",", s->dept);
		first = false;
	}
	evbuffer_add(b, "}", 2);	/* with the NUL */
	params[0] = (const char *)evbuffer_pullup(b, -1);
	if (params[0] == NULL) {
		evbuffer_free(b);
		return;
	}
	if (db_query(gridd.db, "SELECT d, (SELECT max(e.dept_seq) FROM events e"
	    " WHERE e.department_id = d) FROM unnest($1::text[]) d",
	    1, params, heads_cb, NULL))
		ev.heads_busy = true;
	evbuffer_free(b);
}

static void
poll_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sub *s, *next;
	int64_t now = mono_ms();
	bool rescan = now - ev.last_rescan >= EVENTS_RESCAN_MS;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	if (rescan) {
		ev.last_rescan = now;
		heads_start();
	}
	for (s = LIST_FIRST(&ev.subs); s != NULL; s = next) {
		next = LIST_NEXT(s, entry);
		if (s->state == SUB_FETCHING)
			continue;
		if (s->state == SUB_STALLED && s->retry_at > now)
			continue;
		if (s->state == SUB_STALLED || rescan) {
			struct conn *c = sub_conn(s);

			if (c == NULL) {
				sub_free(s);
				continue;
			}
			if (s->state == SUB_STALLED &&
			    conn_output_len(c) > output_bound())
				continue;
			sub_next(s, c, true);
		}
	}
}

void
events_start(struct conn *c, uint64_t since_seq)
{
	struct sub *s;
	uint64_t id = conn_id(c);

	LIST_FOREACH(s, &ev.subs, entry)
		if (s->conn_id == id)
			break;
	if (s == NULL) {
		s = xcalloc(1, sizeof(*s));
		s->conn_id = id;
		snprintf(s->dept, sizeof(s->dept), "%s", conn_principal(c));
		LIST_INSERT_HEAD(&ev.subs, s, entry);
		ev.n++;
		s->state = SUB_IDLE;
	}
	s->gen++;
	s->last = since_seq;
	log_info("%s event=subscribe since_seq=%" PRIu64, conn_log_prefix(c),
	    since_seq);
	if (s->state == SUB_FETCHING)
		s->dirty = true;
	else
		sub_next(s, c, true);
}

void
events_subscribe(struct conn *c, const Gridd__V1__Envelope *env)
{
	/* Ok first: every push after it belongs to this subscription. */
	rpc_reply_ok(c, env->request_id);
	events_start(c, env->subscribe->since_seq);
}

static void
events_metrics_cb(struct evbuffer *out)
{
	size_t stalled = 0;
	uint64_t pending = 0;
	struct sub *s;

	LIST_FOREACH(s, &ev.subs, entry) {
		if (s->state == SUB_STALLED)
			stalled++;
		if (s->head > s->last)
			pending += s->head - s->last;
	}
	metrics_family(out, "gridd_subscribers", "gauge",
	    "Department subscriptions, and those stalled on a slow reader.");
	metrics_sample(out, "gridd_subscribers", "state=\"all\"",
	    (double)ev.n);
	metrics_sample(out, "gridd_subscribers", "state=\"stalled\"",
	    (double)stalled);
	metrics_family(out, "gridd_subscriber_events_pending", "gauge",
	    "Events committed and not yet sent, summed over this process's "
	    "subscriptions (refreshed every few seconds).");
	metrics_sample(out, "gridd_subscriber_events_pending", NULL,
	    (double)pending);
	metrics_family(out, "gridd_incident_updates_total", "counter",
	    "IncidentUpdate pushes sent to subscribers.");
	metrics_sample(out, "gridd_incident_updates_total", NULL,
	    (double)ev.pushed);
	metrics_family(out, "gridd_subscriber_stalls_total", "counter",
	    "Times a subscriber's reads paused for its unsent output.");
	metrics_sample(out, "gridd_subscriber_stalls_total", NULL,
	    (double)ev.stalls);
	metrics_family(out, "gridd_subscriber_reads_total", "counter",
	    "Event pages read for subscribers, and failed reads.");
	metrics_sample(out, "gridd_subscriber_reads_total", "outcome=\"all\"",
	    (double)ev.fetches);
	metrics_sample(out, "gridd_subscriber_reads_total",
	    "outcome=\"failed\"", (double)ev.fetch_errors);
}

bool
events_init(void)
{
	struct timeval tv = { 0, EVENTS_POLL_MS * 1000 };

	if (!db_listen(gridd.db, "gridd_events", notify_cb, NULL))
		return false;
	ev.timer = event_new(gridd.base, -1, EV_PERSIST, poll_cb, NULL);
	if (ev.timer == NULL || event_add(ev.timer, &tv) != 0)
		return false;
	ev.last_rescan = mono_ms();
	metrics_register("events", events_metrics_cb);
	return true;
}

void
events_shutdown(void)
{
	struct sub *s;

	/* Reads in flight were failed by db_pool_free already, which freed
	 * or stalled their subscribers. */
	while ((s = LIST_FIRST(&ev.subs)) != NULL)
		sub_free(s);
	if (ev.timer != NULL) {
		event_free(ev.timer);
		ev.timer = NULL;
	}
}

/* worker.c - grid workers' requests: check-in, their assignments, the actions on them. */
#include "worker.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "config.h"
#include "conn.h"
#include "db.h"
#include "dispatch.h"
#include "gridd.h"
#include "log.h"
#include "rpc.h"

/* UpdateAssignment.note (the schema's bound on assignments.note). */
#define WORKER_NOTE_MAX		2000
/* UpdateAssignment.idempotency_key (assignment_actions' bound). */
#define WORKER_KEY_MAX		128
/* Assignments in one AssignmentList: the open ones first, then the newest.
 * An offer is at most about 5 KiB, so the list stays inside the default
 * max_frame_bytes. */
#define WORKER_LIST_MAX		200

/* A position from the wire: (0, 0) means none (proto3 cannot tell an
 * unset double); otherwise finite and in range. */
static bool
position(double lon, double lat, bool *given)
{
	*given = !(lon == 0 && lat == 0);
	if (!*given)
		return true;
	return isfinite(lon) && isfinite(lat) && lon >= -180 && lon <= 180 &&
	    lat >= -90 && lat <= 90;
}

/* ---- CheckIn ------------------------------------------------------------- */

struct checkin_req {
	struct conn *c;
	uint64_t request_id;
};

static void
checkin_cb(void *arg, const struct db_res *res)
{
	struct checkin_req *r = arg;
	const char *msg;
	Gridd__V1__ErrorCode code;

	if (db_res_status(res) != DB_OK) {
		code = disp_db_error(res, &msg);
		if (conn_is_open(r->c))
			rpc_reply_error(r->c, r->request_id, code, msg);
	} else if (db_res_rows(res) != 1) {
		if (conn_is_open(r->c))
			rpc_reply_error(r->c, r->request_id,
			    GRIDD__V1__ERROR_CODE__NOT_FOUND, "no such worker");
	} else {
		bool came = strcmp(db_res_get(res, 0, 0), "t") == 0;

		log_info("%s event=check_in came_on_duty=%d",
		    conn_log_prefix(r->c), came);
		/* Escalated incidents of its community are due again. */
		if (came)
			disp_kick();
		if (conn_is_open(r->c))
			rpc_reply_ok(r->c, r->request_id);
	}
	conn_release(r->c);
	free(r);
}

void
worker_check_in(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__CheckIn *in = env->check_in;
	char lon[32], lat[32], hist[12];
	const char *params[5];
	struct checkin_req *r;
	bool given;

	if (!position(in->lon, in->lat, &given)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "lon must be -180..180 and lat -90..90");
		return;
	}
	snprintf(lon, sizeof(lon), "%.17g", in->lon);
	snprintf(lat, sizeof(lat), "%.17g", in->lat);
	snprintf(hist, sizeof(hist), "%d", gridd.cfg->checkin_history);
	params[0] = conn_principal(c);
	params[1] = given ? lon : NULL;
	params[2] = given ? lat : NULL;
	params[3] = in->on_duty ? "true" : "false";
	params[4] = hist;
	r = xcalloc(1, sizeof(*r));
	r->c = c;
	r->request_id = env->request_id;
	conn_hold(c);
	if (!db_query(gridd.db, "SELECT came_on_duty, community FROM"
	    " gridd_worker_checkin($1, $2::float8, $3::float8, $4::boolean,"
	    " $5::int)", 5, params, checkin_cb, r)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__UNAVAILABLE, "database unavailable");
		conn_release(c);
		free(r);
	}
}

/* ---- ListAssignments ------------------------------------------------------ */

struct list_req {
	struct conn *c;
	uint64_t request_id;
};

static void
list_cb(void *arg, const struct db_res *res)
{
	struct list_req *r = arg;
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__AssignmentList list = GRIDD__V1__ASSIGNMENT_LIST__INIT;
	struct disp_offer *offers = NULL;
	Gridd__V1__AssignmentOffer **ptrs = NULL;
	const char *msg;
	Gridd__V1__ErrorCode code;
	int rows;

	if (db_res_status(res) != DB_OK) {
		code = disp_db_error(res, &msg);
		if (conn_is_open(r->c))
			rpc_reply_error(r->c, r->request_id, code, msg);
		goto done;
	}
	rows = db_res_rows(res);
	if (rows > WORKER_LIST_MAX)
		rows = WORKER_LIST_MAX;
	offers = xcalloc((size_t)rows + 1, sizeof(*offers));
	ptrs = xcalloc((size_t)rows + 1, sizeof(*ptrs));
	for (int i = 0; i < rows; i++) {
		struct disp_offer *o = &offers[list.n_assignments];

		if (!disp_offer_from_row(res, i, o))
			continue;
		ptrs[list.n_assignments++] = &o->msg;
	}
	list.assignments = ptrs;
	env.request_id = r->request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_ASSIGNMENT_LIST;
	env.assignment_list = &list;
	if (conn_is_open(r->c))
		conn_send(r->c, &env);
	for (size_t i = 0; i < list.n_assignments; i++)
		disp_offer_clear(&offers[i]);
done:
	free(offers);
	free(ptrs);
	conn_release(r->c);
	free(r);
}

void
worker_list_assignments(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__ListAssignments *in = env->list_assignments;
	const char *params[3];
	char limit[12];
	struct list_req *r;

	snprintf(limit, sizeof(limit), "%d", WORKER_LIST_MAX);
	params[0] = conn_principal(c);
	params[1] = in->open_only ? "true" : "false";
	params[2] = limit;
	r = xcalloc(1, sizeof(*r));
	r->c = c;
	r->request_id = env->request_id;
	conn_hold(c);
	/* "state || ''" keeps assignments_one_live_idx out of the plan, as
	 * for the offers at login (dispatch.c). */
	if (!db_query(gridd.db, "SELECT 'list'::text, NULL::text, NULL::bigint,"
	    " v.* FROM gridd_offers_v v WHERE v.worker_id = $1"
	    " AND (NOT $2::boolean OR v.state || '' IN ('offered', 'accepted',"
	    " 'in_progress'))"
	    " ORDER BY v.state IN ('offered', 'accepted', 'in_progress') DESC,"
	    " v.assignment_id DESC LIMIT $3::int", 3, params, list_cb, r)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__UNAVAILABLE, "database unavailable");
		conn_release(c);
		free(r);
	}
}

/* ---- UpdateAssignment ------------------------------------------------------ */

static const char *
action_name(Gridd__V1__AssignmentAction a)
{
	switch (a) {
	case GRIDD__V1__ASSIGNMENT_ACTION__ACCEPT:
		return "accept";
	case GRIDD__V1__ASSIGNMENT_ACTION__DECLINE:
		return "decline";
	case GRIDD__V1__ASSIGNMENT_ACTION__START:
		return "start";
	case GRIDD__V1__ASSIGNMENT_ACTION__RESOLVE:
		return "resolve";
	default:
		return NULL;
	}
}

/*
 * Actions are committed in batches: those that arrive while the previous
 * batch commits go together in the next (gridd_assignment_actions), so that
 * a thousand workers answering per second cost a few commits, not a
 * thousand, each of which would hold their departments' event sequence
 * rows through its own disk flush. One batch is in flight at a time; a
 * lone action goes at once. A batch the database refuses is run again item
 * by item (gridd_assignment_action), so that one bad item fails alone.
 * The transition, its event and the idempotency key commit together; a
 * DECLINE offers the incident to the next candidate in the same
 * transaction.
 */
struct act_item {
	struct disp_req *r;
	char *worker;
	char aid[24];
	const char *action;		/* static string */
	char *note;			/* NULL = none */
	char lon[32], lat[32];
	bool given;
	char *key;			/* NULL = none */
	int64_t arrived;		/* mono_ms */
};

static struct {
	struct act_item *q;
	size_t n, cap;
	bool busy;
	struct event *flush_ev;
} acts;

static void acts_flush_cb(evutil_socket_t fd, short what, void *arg);

static void
act_free(struct act_item *it)
{
	free(it->worker);
	free(it->note);
	free(it->key);
}

static const char *
act_field(const struct act_item *it, int field)
{
	switch (field) {
	case 0: return it->worker;
	case 1: return it->aid;
	case 2: return it->action;
	case 3: return it->note;
	case 4: return it->given ? it->lon : NULL;
	case 5: return it->given ? it->lat : NULL;
	default: return it->key;
	}
}

/*
 * The PostgreSQL array literal of one field over items, malloc'd: each
 * element NULL or double-quoted with backslash and double quote escaped.
 * Sized first: at most twice each value, its quotes and a comma.
 */
static char *
arr_of(const struct act_item *items, size_t n, int field)
{
	size_t sz = 3, len = 0;
	char *out;

	for (size_t i = 0; i < n; i++) {
		const char *v = act_field(&items[i], field);

		sz += (v != NULL ? 2 * strlen(v) : 4) + 3;
	}
	out = xmalloc(sz);
	out[len++] = '{';
	for (size_t i = 0; i < n; i++) {
		const char *v = act_field(&items[i], field);

		if (i > 0)
			out[len++] = ',';
		if (v == NULL) {
			memcpy(out + len, "NULL", 4);
			len += 4;
			continue;
		}
		out[len++] = '"';
		for (const char *p = v; *p != '\0'; p++) {
			if (*p == '"' || *p == '\\')
				out[len++] = '\\';
			out[len++] = *p;
		}
		out[len++] = '"';
	}
	out[len++] = '}';
	out[len] = '\0';
	return out;
}

struct act_batch {
	struct act_item *items;
	size_t n;
};

#define ACT_SINGLE_SQL "SELECT outcome, detail, n, incident_id," \
	" assignment_id, worker_id, reason, state, cell_id, task_type," \
	" list, matter, summary, lon, lat, address, deadline_ms," \
	" departments, expires_ms, created_ms FROM" \
	" gridd_assignment_action($1, $2::bigint, $3, $4, $5::float8," \
	" $6::float8, $7, $8::int, $9::int, $10::int, $11::int, $12)"

/* One item on its own statement; answers and frees its request. */
static void
act_single(struct act_item *it)
{
	struct disp_settings s;
	const char *params[7 + DISP_N_SETTINGS];

	disp_settings(&s);
	params[0] = it->worker;
	params[1] = it->aid;
	params[2] = it->action;
	params[3] = it->note;
	params[4] = it->given ? it->lon : NULL;
	params[5] = it->given ? it->lat : NULL;
	params[6] = it->key;
	memcpy(params + 7, s.p, sizeof(s.p));
	if (!db_query_waited(gridd.db, mono_ms() - it->arrived, ACT_SINGLE_SQL,
	    7 + DISP_N_SETTINGS, params, disp_answer_cb, it->r))
		disp_req_fail(it->r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
	it->r = NULL;
}

static void
acts_done_cb(void *arg, const struct db_res *res)
{
	struct act_batch *b = arg;
	enum db_status st = db_res_status(res);
	int rows;

	if (st == DB_OK) {
		rows = db_res_rows(res);
		/* Every row is applied once (offers pushed, counters); each
		 * item is answered from its first row. */
		disp_apply_rows(res, 0);
		for (size_t i = 0; i < b->n; i++) {
			int row = -1;

			for (int r = 0; r < rows && row < 0; r++)
				if (disp_row_tag(res, r) == (int64_t)i + 1)
					row = r;
			if (row >= 0)
				disp_answer_row(b->items[i].r, res, row);
			else
				disp_req_fail(b->items[i].r,
				    GRIDD__V1__ERROR_CODE__NOT_FOUND,
				    "not found");
		}
	} else if (st == DB_SQL_ERROR && b->n > 1) {
		const char *msg;

		(void)disp_db_error(res, &msg);
		log_warn("event=update_assignment outcome=batch_failed "
		    "items=%zu", b->n);
		for (size_t i = 0; i < b->n; i++)
			act_single(&b->items[i]);
	} else {
		const char *msg;
		Gridd__V1__ErrorCode code = disp_db_error(res, &msg);

		for (size_t i = 0; i < b->n; i++)
			disp_req_fail(b->items[i].r, code, msg);
	}
	for (size_t i = 0; i < b->n; i++)
		act_free(&b->items[i]);
	free(b->items);
	free(b);
	acts.busy = false;
	if (acts.n > 0)
		event_active(acts.flush_ev, EV_TIMEOUT, 0);
}

/* The actions at the head of the queue (the oldest) that waited for the
 * batch before them until it is too late to send them (db_too_late): each
 * answered UNAVAILABLE, not applied, rather than sent in a batch that its
 * timer would cut off. */
static void
acts_shed_late(int64_t now)
{
	size_t k = 0;

	if (gridd.db == NULL)
		return;
	while (k < acts.n && db_too_late(gridd.db, now - acts.q[k].arrived)) {
		disp_req_fail(acts.q[k].r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable: not applied; send it again");
		act_free(&acts.q[k]);
		k++;
	}
	if (k == 0)
		return;
	log_warn("event=update_assignment outcome=late actions=%zu "
	    "reason=\"queued past query_timeout_ms\"", k);
	memmove(acts.q, acts.q + k, (acts.n - k) * sizeof(*acts.q));
	acts.n -= k;
}

static void
acts_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct disp_settings s;
	const char *params[7 + DISP_N_SETTINGS];
	char *arrs[7];
	struct act_batch *b;
	size_t n, max = (size_t)gridd.cfg->dispatch_batch;
	int64_t now = mono_ms();

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	if (acts.busy || acts.n == 0)
		return;
	acts_shed_late(now);
	if (acts.n == 0)
		return;
	n = acts.n < max ? acts.n : max;
	b = xcalloc(1, sizeof(*b));
	b->items = xcalloc(n, sizeof(*b->items));
	b->n = n;
	memcpy(b->items, acts.q, n * sizeof(*acts.q));
	memmove(acts.q, acts.q + n, (acts.n - n) * sizeof(*acts.q));
	acts.n -= n;
	for (int f = 0; f < 7; f++)
		params[f] = arrs[f] = arr_of(b->items, n, f);
	disp_settings(&s);
	memcpy(params + 7, s.p, sizeof(s.p));
	/* Counted from the arrival of the first (the queue keeps arrival
	 * order): an action that waited for the batch before it (a database
	 * that hangs) is still answered within query_timeout_ms of its
	 * arrival; those too late for that were answered above. */
	if (db_query_waited(gridd.db, now - b->items[0].arrived,
	    "SELECT outcome, detail, n, incident_id,"
	    " assignment_id, worker_id, reason, state, cell_id, task_type,"
	    " list, matter, summary, lon, lat, address, deadline_ms,"
	    " departments, expires_ms, created_ms FROM"
	    " gridd_assignment_actions($1::text[], $2::bigint[], $3::text[],"
	    " $4::text[], $5::float8[], $6::float8[], $7::text[], $8::int,"
	    " $9::int, $10::int, $11::int, $12)", 7 + DISP_N_SETTINGS, params,
	    acts_done_cb, b)) {
		acts.busy = true;
	} else {
		for (size_t i = 0; i < n; i++) {
			disp_req_fail(b->items[i].r,
			    GRIDD__V1__ERROR_CODE__UNAVAILABLE,
			    "database unavailable");
			act_free(&b->items[i]);
		}
		free(b->items);
		free(b);
		/* The rest fails the same way, a batch per loop turn. */
		if (acts.n > 0)
			event_active(acts.flush_ev, EV_TIMEOUT, 0);
	}
	for (int f = 0; f < 7; f++)
		free(arrs[f]);
	/* Otherwise whatever is left waits for this batch's answer. */
}

void
worker_update_assignment(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__UpdateAssignment *in = env->update_assignment;
	const char *note = in->note != NULL ? in->note : "";
	const char *key = in->idempotency_key != NULL ?
	    in->idempotency_key : "";
	const char *action = action_name(in->action);
	struct act_item *it;
	bool given;
	const char *bad = NULL;

	if (in->assignment_id == 0 || in->assignment_id > INT64_MAX)
		bad = "assignment_id required";
	else if (action == NULL)
		bad = "action must be ACCEPT, DECLINE, START or RESOLVE";
	else if (strlen(note) > WORKER_NOTE_MAX)
		bad = "note longer than 2000 bytes";
	else if (strlen(key) > WORKER_KEY_MAX)
		bad = "idempotency_key longer than 128 bytes";
	else if (!position(in->lon, in->lat, &given))
		bad = "lon must be -180..180 and lat -90..90";
	if (bad != NULL) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST, bad);
		return;
	}
	if (acts.flush_ev == NULL &&
	    (acts.flush_ev = event_new(gridd.base, -1, 0, acts_flush_cb,
	    NULL)) == NULL) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__UNAVAILABLE, "out of resources");
		return;
	}
	if (acts.n == acts.cap) {
		acts.cap = acts.cap ? acts.cap * 2 : 64;
		acts.q = xreallocarray(acts.q, acts.cap, sizeof(*acts.q));
	}
	it = &acts.q[acts.n++];
	memset(it, 0, sizeof(*it));
	it->worker = xstrdup(conn_principal(c));
	snprintf(it->aid, sizeof(it->aid), "%" PRIu64, in->assignment_id);
	it->action = action;
	it->note = note[0] ? xstrdup(note) : NULL;
	it->given = given;
	snprintf(it->lon, sizeof(it->lon), "%.17g", in->lon);
	snprintf(it->lat, sizeof(it->lat), "%.17g", in->lat);
	it->key = key[0] ? xstrdup(key) : NULL;
	it->arrived = mono_ms();
	it->r = disp_req_new(c, env->request_id, "update_assignment");
	/* Gathered for the rest of this loop turn, or until the batch in
	 * flight answers. */
	if (!acts.busy)
		event_active(acts.flush_ev, EV_TIMEOUT, 0);
}

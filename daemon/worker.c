/* worker.c - grid workers' requests: check-in, their assignments, the actions on them. */
#include "worker.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	if (!db_query(gridd.db, "SELECT 'list'::text, NULL::text, NULL::bigint,"
	    " v.* FROM gridd_offers_v v WHERE v.worker_id = $1"
	    " AND (NOT $2::boolean OR v.state IN ('offered', 'accepted',"
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
 * The transition, its event and the idempotency key commit together in one
 * statement (gridd_assignment_action); a DECLINE offers the incident to the
 * next candidate in the same transaction.
 */
void
worker_update_assignment(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__UpdateAssignment *in = env->update_assignment;
	const char *note = in->note != NULL ? in->note : "";
	const char *key = in->idempotency_key != NULL ?
	    in->idempotency_key : "";
	const char *action = action_name(in->action);
	struct disp_settings s;
	const char *params[7 + DISP_N_SETTINGS];
	char id[24], lon[32], lat[32];
	struct disp_req *r;
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
	snprintf(id, sizeof(id), "%" PRIu64, in->assignment_id);
	snprintf(lon, sizeof(lon), "%.17g", in->lon);
	snprintf(lat, sizeof(lat), "%.17g", in->lat);
	disp_settings(&s);
	params[0] = conn_principal(c);
	params[1] = id;
	params[2] = action;
	params[3] = note[0] ? note : NULL;
	params[4] = given ? lon : NULL;
	params[5] = given ? lat : NULL;
	params[6] = key[0] ? key : NULL;
	memcpy(params + 7, s.p, sizeof(s.p));
	r = disp_req_new(c, env->request_id, "update_assignment");
	if (!db_query(gridd.db, "SELECT outcome, detail, n, incident_id,"
	    " assignment_id, worker_id, reason, state, cell_id, task_type,"
	    " list, matter, summary, lon, lat, address, deadline_ms,"
	    " departments, expires_ms, created_ms FROM"
	    " gridd_assignment_action($1, $2::bigint, $3, $4, $5::float8,"
	    " $6::float8, $7, $8::int, $9::int, $10::int, $11::int, $12)",
	    7 + DISP_N_SETTINGS, params, disp_answer_cb, r))
		disp_req_fail(r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

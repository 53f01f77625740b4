/* rpc.c - the request table: body case -> handler, allowed roles, metric name. */
#include "rpc.h"

#include <stdio.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "session.h"

typedef void (*rpc_handler)(struct conn *c, const Gridd__V1__Envelope *env);

/* Who may send a request: bit CONN_ROLE_x for an authenticated role, and
 * RPC_UNAUTH for a connection that has not logged in (Login alone). */
#define RPC_UNAUTH	(1u << 0)
#define RPC_WORKER	(1u << CONN_ROLE_WORKER)
#define RPC_DEPT	(1u << CONN_ROLE_DEPARTMENT)
#define RPC_ADMIN	(1u << CONN_ROLE_ADMIN)
#define RPC_ANY_ROLE	(RPC_WORKER | RPC_DEPT | RPC_ADMIN)

struct rpc_route {
	const char *name;
	unsigned roles;
	rpc_handler fn;
};

/* Highest body case number in the Envelope oneof, plus one. */
#define RPC_N_CASES 44

static void rpc_ping(struct conn *c, const Gridd__V1__Envelope *env);
static void rpc_unimplemented(struct conn *c, const Gridd__V1__Envelope *env);

/* Every request the server accepts from clients. Body cases that are not
 * here (replies, pushes, an unset body, a case from a newer schema) are
 * BAD_REQUEST. A feature lands by replacing its rpc_unimplemented. */
static const struct rpc_route routes[RPC_N_CASES] = {
#define R(body, nm, r, f) [GRIDD__V1__ENVELOPE__BODY_##body] = { nm, r, f }
	R(LOGIN, "login", RPC_UNAUTH | RPC_ANY_ROLE, session_login),
	R(PING, "ping", RPC_ANY_ROLE, rpc_ping),

	R(PUSH_INCIDENTS, "push_incidents", RPC_DEPT, rpc_unimplemented),
	R(SUBSCRIBE, "subscribe", RPC_DEPT, rpc_unimplemented),
	R(VERIFY_INCIDENT, "verify_incident", RPC_DEPT, rpc_unimplemented),

	R(LIST_ASSIGNMENTS, "list_assignments", RPC_WORKER, rpc_unimplemented),
	R(UPDATE_ASSIGNMENT, "update_assignment", RPC_WORKER,
	    rpc_unimplemented),
	R(CHECK_IN, "check_in", RPC_WORKER, rpc_unimplemented),
	R(REPORT_INCIDENT, "report_incident", RPC_WORKER, rpc_unimplemented),
	/* An admin files on behalf of a community (community_id). */
	R(FILE_COMPLAINT, "file_complaint", RPC_WORKER | RPC_ADMIN,
	    rpc_unimplemented),

	R(UPSERT_WORKER, "upsert_worker", RPC_ADMIN, session_upsert_worker),
	R(GET_GRID, "get_grid", RPC_ADMIN, rpc_unimplemented),
	R(REPARTITION, "repartition", RPC_ADMIN, rpc_unimplemented),
	R(GET_BURDEN_REPORT, "get_burden_report", RPC_ADMIN,
	    rpc_unimplemented),
	R(IMPORT_COMMUNITIES, "import_communities", RPC_ADMIN,
	    rpc_unimplemented),
	R(IMPORT_BUILDINGS, "import_buildings", RPC_ADMIN, rpc_unimplemented),
	R(IMPORT_LAYER, "import_layer", RPC_ADMIN, rpc_unimplemented),
	R(LIST_COMPLAINTS, "list_complaints", RPC_ADMIN, rpc_unimplemented),
	R(RESOLVE_COMPLAINT, "resolve_complaint", RPC_ADMIN,
	    rpc_unimplemented),
#undef R
};

static struct {
	uint64_t requests;
	uint64_t denied;
} counts[RPC_N_CASES];

void
rpc_reply_error(struct conn *c, uint64_t request_id, Gridd__V1__ErrorCode code,
    const char *message)
{
	conn_send_error(c, request_id, code, message);
}

void
rpc_reply_ok(struct conn *c, uint64_t request_id)
{
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__Ok ok = GRIDD__V1__OK__INIT;

	env.request_id = request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_OK;
	env.ok = &ok;
	conn_send(c, &env);
}

static void
rpc_ping(struct conn *c, const Gridd__V1__Envelope *req)
{
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__Pong pong = GRIDD__V1__PONG__INIT;

	pong.server_time = now_ms();
	env.request_id = req->request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_PONG;
	env.pong = &pong;
	conn_send(c, &env);
}

static void
rpc_unimplemented(struct conn *c, const Gridd__V1__Envelope *env)
{
	rpc_reply_error(c, env->request_id, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
	    "not implemented yet");
}

void
rpc_dispatch(struct conn *c, const Gridd__V1__Envelope *env)
{
	unsigned bc = (unsigned)env->body_case;
	const struct rpc_route *r = bc < RPC_N_CASES ? &routes[bc] : NULL;
	unsigned who;

	if (r == NULL || r->fn == NULL) {
		log_debug("%s request_id=%llu body=%u not a request",
		    conn_log_prefix(c), (unsigned long long)env->request_id,
		    bc);
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    bc == GRIDD__V1__ENVELOPE__BODY__NOT_SET ?
		    "envelope has no body" : "not a request type");
		return;
	}
	/* The role check, here and nowhere else. */
	who = conn_state(c) == CONN_AUTHENTICATED ?
	    1u << conn_role(c) : RPC_UNAUTH;
	if ((r->roles & who) == 0) {
		counts[bc].denied++;
		if (who == RPC_UNAUTH) {
			rpc_reply_error(c, env->request_id,
			    GRIDD__V1__ERROR_CODE__UNAUTHENTICATED,
			    "login first");
		} else {
			log_info("%s request_id=%llu %s forbidden",
			    conn_log_prefix(c),
			    (unsigned long long)env->request_id, r->name);
			rpc_reply_error(c, env->request_id,
			    GRIDD__V1__ERROR_CODE__FORBIDDEN,
			    "not allowed for this role");
		}
		return;
	}
	counts[bc].requests++;
	log_debug("%s request_id=%llu %s", conn_log_prefix(c),
	    (unsigned long long)env->request_id, r->name);
	r->fn(c, env);
}

size_t
rpc_stats(struct rpc_stat *out, size_t max)
{
	size_t n = 0;

	for (size_t i = 0; i < RPC_N_CASES; i++) {
		if (routes[i].fn == NULL)
			continue;
		if (n < max) {
			out[n].name = routes[i].name;
			out[n].requests = counts[i].requests;
			out[n].denied = counts[i].denied;
		}
		n++;
	}
	return n;
}

void
rpc_metrics_write(struct evbuffer *out)
{
	char labels[64];

	metrics_family(out, "gridd_requests_total", "counter",
	    "Requests that passed the role check, by type.");
	for (size_t i = 0; i < RPC_N_CASES; i++) {
		if (routes[i].fn == NULL)
			continue;
		snprintf(labels, sizeof(labels), "type=\"%s\"", routes[i].name);
		metrics_sample(out, "gridd_requests_total", labels,
		    (double)counts[i].requests);
	}
	metrics_family(out, "gridd_requests_denied_total", "counter",
	    "Requests refused by the role check, by type.");
	for (size_t i = 0; i < RPC_N_CASES; i++) {
		if (routes[i].fn == NULL)
			continue;
		snprintf(labels, sizeof(labels), "type=\"%s\"", routes[i].name);
		metrics_sample(out, "gridd_requests_denied_total", labels,
		    (double)counts[i].denied);
	}
}

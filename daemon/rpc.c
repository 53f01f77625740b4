/* rpc.c - the request table: body case -> handler, allowed roles, metric name. */
#include "rpc.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "complaint.h"
#include "conn.h"
#include "dispatch.h"
#include "events.h"
#include "feed.h"
#include "grid.h"
#include "layers.h"
#include "log.h"
#include "metrics.h"
#include "report.h"
#include "session.h"
#include "worker.h"

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
/* Kept for request types added before their feature lands. */
static void rpc_unimplemented(struct conn *c, const Gridd__V1__Envelope *env)
    __attribute__((unused));

/* Every request the server accepts from clients. Body cases that are not
 * here (replies, pushes, an unset body, a case from a newer schema) are
 * BAD_REQUEST. */
static const struct rpc_route routes[RPC_N_CASES] = {
#define R(body, nm, r, f) [GRIDD__V1__ENVELOPE__BODY_##body] = { nm, r, f }
	R(LOGIN, "login", RPC_UNAUTH | RPC_ANY_ROLE, session_login),
	R(PING, "ping", RPC_ANY_ROLE, rpc_ping),

	R(PUSH_INCIDENTS, "push_incidents", RPC_DEPT, feed_push_incidents),
	R(SUBSCRIBE, "subscribe", RPC_DEPT, events_subscribe),
	R(VERIFY_INCIDENT, "verify_incident", RPC_DEPT,
	    disp_verify_incident),

	R(LIST_ASSIGNMENTS, "list_assignments", RPC_WORKER,
	    worker_list_assignments),
	R(UPDATE_ASSIGNMENT, "update_assignment", RPC_WORKER,
	    worker_update_assignment),
	R(CHECK_IN, "check_in", RPC_WORKER, worker_check_in),
	R(REPORT_INCIDENT, "report_incident", RPC_WORKER,
	    feed_report_incident),
	/* An admin files on behalf of a community (community_id). */
	R(FILE_COMPLAINT, "file_complaint", RPC_WORKER | RPC_ADMIN,
	    complaint_file),

	R(UPSERT_WORKER, "upsert_worker", RPC_ADMIN, session_upsert_worker),
	R(GET_GRID, "get_grid", RPC_ADMIN, grid_get_grid),
	R(REPARTITION, "repartition", RPC_ADMIN, grid_repartition),
	R(GET_BURDEN_REPORT, "get_burden_report", RPC_ADMIN,
	    report_get_burden),
	R(IMPORT_COMMUNITIES, "import_communities", RPC_ADMIN,
	    grid_import_communities),
	R(IMPORT_BUILDINGS, "import_buildings", RPC_ADMIN,
	    grid_import_buildings),
	R(IMPORT_LAYER, "import_layer", RPC_ADMIN, layers_import),
	R(LIST_COMPLAINTS, "list_complaints", RPC_ADMIN, complaint_list),
	R(RESOLVE_COMPLAINT, "resolve_complaint", RPC_ADMIN,
	    complaint_resolve),
#undef R
};

static struct {
	uint64_t requests;
	uint64_t denied;
	uint64_t errors[CONN_N_ERROR_CODES];	/* Error replies, by code */
	struct metrics_hist latency;		/* dispatch to reply */
} counts[RPC_N_CASES];

/*
 * A request between dispatch and its reply. Each connection keeps its own
 * circular list, oldest first: replies mostly come in request order, so the
 * match is usually the first entry. Past RPC_MAX_TRACKED per connection a
 * request is served but not timed (a client pipelining that deep is a
 * benchmark or an attack; either way its latency is not worth unbounded
 * memory). Freed entries are kept for reuse, up to RPC_MAX_SPARE.
 */
#define RPC_MAX_TRACKED 1024
#define RPC_MAX_SPARE 4096

struct rpc_inflight {
	struct rpc_inflight *next, *prev;
	uint64_t request_id;
	int64_t start_us;
	unsigned body;
	unsigned n;		/* list length, valid on the first entry */
};

static struct rpc_inflight *spare;
static size_t n_spare;
static uint64_t n_inflight;
static uint64_t n_untracked;

static int64_t
mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
inflight_put(struct rpc_inflight *f)
{
	if (n_spare >= RPC_MAX_SPARE) {
		free(f);
		return;
	}
	f->next = spare;
	spare = f;
	n_spare++;
}

static void
inflight_track(struct conn *c, uint64_t request_id, unsigned body)
{
	struct rpc_inflight **head = conn_inflight(c), *f;

	if (request_id == 0 || (*head != NULL &&
	    (*head)->n >= RPC_MAX_TRACKED)) {
		n_untracked++;
		return;
	}
	if (spare != NULL) {
		f = spare;
		spare = f->next;
		n_spare--;
	} else
		f = xmalloc(sizeof(*f));
	f->request_id = request_id;
	f->body = body;
	f->start_us = mono_us();
	if (*head == NULL) {
		f->next = f->prev = f;
		f->n = 1;
		*head = f;
	} else {
		f->next = *head;
		f->prev = (*head)->prev;
		f->prev->next = f;
		(*head)->prev = f;
		(*head)->n++;
	}
	n_inflight++;
}

/* Unlinks f from c's list. */
static void
inflight_unlink(struct rpc_inflight **head, struct rpc_inflight *f)
{
	unsigned n = (*head)->n;

	if (f->next == f) {
		*head = NULL;
	} else {
		f->prev->next = f->next;
		f->next->prev = f->prev;
		if (*head == f)
			*head = f->next;
		(*head)->n = n - 1;
	}
	n_inflight--;
}

void
rpc_replied(struct conn *c, const Gridd__V1__Envelope *env)
{
	struct rpc_inflight **head = conn_inflight(c), *f;
	const char *code = NULL;
	double ms;
	unsigned body;

	if (*head == NULL)
		return;
	f = *head;
	do {
		if (f->request_id == env->request_id)
			break;
		f = f->next;
	} while (f != *head);
	if (f->request_id != env->request_id)
		return;
	inflight_unlink(head, f);
	body = f->body;
	ms = (double)(mono_us() - f->start_us) / 1000.0;
	inflight_put(f);

	metrics_hist_observe(&counts[body].latency, ms);
	if (env->body_case == GRIDD__V1__ENVELOPE__BODY_ERROR &&
	    env->error != NULL) {
		unsigned e = (unsigned)env->error->code;

		if (e < CONN_N_ERROR_CODES)
			counts[body].errors[e]++;
		code = protobuf_c_enum_descriptor_get_value(
		    &gridd__v1__error_code__descriptor, (int)e) != NULL ?
		    protobuf_c_enum_descriptor_get_value(
		    &gridd__v1__error_code__descriptor, (int)e)->name :
		    "UNKNOWN";
	}
	/* One line per request, at debug: the principal is an id, never a
	 * name, and nothing of the request's content is logged. */
	log_debug("%s event=request type=%s request_id=%llu principal=%s "
	    "outcome=%s%s%s ms=%.3f", conn_log_prefix(c), routes[body].name,
	    (unsigned long long)env->request_id,
	    conn_principal(c)[0] ? conn_principal(c) : "-",
	    code != NULL ? "error" : "ok", code != NULL ? " code=" : "",
	    code != NULL ? code : "", ms);
}

void
rpc_conn_freed(struct conn *c)
{
	struct rpc_inflight **head = conn_inflight(c);

	while (*head != NULL) {
		struct rpc_inflight *f = *head;

		inflight_unlink(head, f);
		inflight_put(f);
	}
}

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
		counts[bc].errors[who == RPC_UNAUTH ?
		    GRIDD__V1__ERROR_CODE__UNAUTHENTICATED :
		    GRIDD__V1__ERROR_CODE__FORBIDDEN]++;
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
	inflight_track(c, env->request_id, bc);
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
	/* Codes a type never answered are left out: a label pair appears
	 * with its first error, which Prometheus handles as a new series. */
	metrics_family(out, "gridd_request_errors_total", "counter",
	    "Error replies by request type and error code.");
	for (size_t i = 0; i < RPC_N_CASES; i++) {
		if (routes[i].fn == NULL)
			continue;
		for (int e = 1; e < CONN_N_ERROR_CODES; e++) {
			const ProtobufCEnumValue *v;

			if (counts[i].errors[e] == 0)
				continue;
			v = protobuf_c_enum_descriptor_get_value(
			    &gridd__v1__error_code__descriptor, e);
			snprintf(labels, sizeof(labels),
			    "type=\"%s\",code=\"%s\"", routes[i].name,
			    v != NULL ? v->name : "UNKNOWN");
			metrics_sample(out, "gridd_request_errors_total",
			    labels, (double)counts[i].errors[e]);
		}
	}
	metrics_family(out, "gridd_request_duration_seconds", "histogram",
	    "Time from dispatch to reply, by request type.");
	for (size_t i = 0; i < RPC_N_CASES; i++) {
		if (routes[i].fn == NULL)
			continue;
		snprintf(labels, sizeof(labels), "type=\"%s\"", routes[i].name);
		metrics_hist_write(out, "gridd_request_duration_seconds",
		    labels, &counts[i].latency);
	}
	metrics_family(out, "gridd_requests_in_flight", "gauge",
	    "Requests dispatched and not answered yet.");
	metrics_sample(out, "gridd_requests_in_flight", NULL,
	    (double)n_inflight);
	metrics_family(out, "gridd_requests_untimed_total", "counter",
	    "Requests served without a latency figure (request_id 0, or "
	    "too many in flight on one connection).");
	metrics_sample(out, "gridd_requests_untimed_total", NULL,
	    (double)n_untracked);
}

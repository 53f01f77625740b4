/* complaint.c - 投诉反馈: complaints filed, listed and resolved. */
#include "complaint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "db.h"
#include "gridd.h"
#include "log.h"
#include "rpc.h"
#include "triage.h"

/* Text bounds, in characters, as the schema's CHECKs. */
#define COMPLAINT_NOTE_MAX		2000
#define COMPLAINT_RESOLUTION_MAX	2000
#define COMPLAINT_ID_MAX		64
/* ListComplaints answers the most recent ones, at most this many: the
 * reply stays far below a frame's limit. */
#define COMPLAINT_LIST_MAX		1000
/* Departments of one incident, as stored (bounded by the config). */
#define COMPLAINT_DEPTS_MAX		64

static const char *const reasons[] = {
	"negative_list", "unfunded", "duplicate", "outside_duty", "other",
};

enum creq_kind { CREQ_FILE, CREQ_LIST, CREQ_RESOLVE };

struct creq {
	struct conn *c;
	uint64_t request_id;
	enum creq_kind kind;
	char detail[96];	/* for the log line */
};

static struct creq *
creq_new(struct conn *c, uint64_t request_id, enum creq_kind kind)
{
	struct creq *q = xcalloc(1, sizeof(*q));

	q->c = c;
	q->request_id = request_id;
	q->kind = kind;
	conn_hold(c);
	return q;
}

static void
creq_done(struct creq *q)
{
	conn_release(q->c);
	free(q);
}

static void
creq_error(struct creq *q, Gridd__V1__ErrorCode code, const char *msg)
{
	if (conn_is_open(q->c))
		rpc_reply_error(q->c, q->request_id, code, msg);
	creq_done(q);
}

static bool
db_failed(struct creq *q, const struct db_res *res)
{
	if (db_res_status(res) == DB_OK)
		return false;
	if (db_res_status(res) == DB_SQL_ERROR &&
	    (strcmp(db_res_sqlstate(res), "40P01") == 0 ||
	    strcmp(db_res_sqlstate(res), "40001") == 0)) {
		/* Deadlock victim or serialization failure: nothing was
		 * done, and the same request a moment later succeeds. */
		log_warn("%s event=complaint sqlstate=%s outcome=retry",
		    conn_log_prefix(q->c), db_res_sqlstate(res));
		creq_error(q, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database busy, retry");
	} else if (db_res_status(res) == DB_SQL_ERROR) {
		log_error("%s event=complaint error=\"%s\"",
		    conn_log_prefix(q->c), db_res_error(res));
		creq_error(q, GRIDD__V1__ERROR_CODE__INTERNAL, "internal error");
	} else {
		creq_error(q, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
	}
	return true;
}

static bool
valid_id(const char *s)
{
	size_t n = strlen(s);

	return n >= 1 && n <= COMPLAINT_ID_MAX &&
	    strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789_.-") == n;
}

/* ---- FileComplaint ----------------------------------------------------- */

static void
file_cb(void *arg, const struct db_res *res)
{
	struct creq *q = arg;
	int64_t found, id = 0;

	if (db_failed(q, res))
		return;
	if (db_res_rows(res) != 1 || !db_res_int64(res, 0, 0, &found) ||
	    (!db_res_isnull(res, 0, 1) && !db_res_int64(res, 0, 1, &id))) {
		creq_error(q, GRIDD__V1__ERROR_CODE__INTERNAL, "internal error");
		return;
	}
	if (found == 0) {
		creq_error(q, GRIDD__V1__ERROR_CODE__NOT_FOUND,
		    "no such incident (or community) for this complainant");
		return;
	}
	/* id is NULL for a replay: the same complainant's open complaint
	 * about the same thing for the same reason is already stored. */
	log_info("%s event=complaint action=file complaint=%" PRId64
	    " replay=%d %s", conn_log_prefix(q->c), id,
	    db_res_isnull(res, 0, 1), q->detail);
	if (conn_is_open(q->c))
		rpc_reply_ok(q->c, q->request_id);
	creq_done(q);
}

/*
 * The incident's departments are copied onto the complaint when it is
 * filed, so it counts against them even if sources change later. A worker
 * complains only about an incident it has (or had) an assignment for; any
 * other incident is NOT_FOUND, whether it exists or not. An admin files
 * about any incident, or on behalf of a community (community_id alone).
 *
 * Filing is idempotent: an offline phone replays its queue, so a second
 * filing of the same complainant, subject and reason while the first is
 * open answers Ok and stores nothing (the partial unique index of
 * 007_review_fixes.sql; a resolved complaint may be filed again).
 */
void
complaint_file(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__FileComplaint *in = env->file_complaint;
	const char *reason = in->reason != NULL ? in->reason : "";
	const char *note = in->note != NULL ? in->note : "";
	const char *community = in->community_id != NULL ?
	    in->community_id : "";
	bool worker = conn_role(c) == CONN_ROLE_WORKER;
	bool known = false;
	char inc[24];
	const char *params[6];
	struct creq *q;

	for (size_t i = 0; i < ARRAY_LEN(reasons); i++)
		if (strcmp(reason, reasons[i]) == 0)
			known = true;
	if (!known) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST, "reason: one of "
		    "negative_list, unfunded, duplicate, outside_duty, other");
		return;
	}
	if (!utf8_valid(note, COMPLAINT_NOTE_MAX)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "note: at most 2000 characters of UTF-8");
		return;
	}
	if (community[0] != '\0' && !valid_id(community)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "community_id: 1-64 characters of A-Z a-z 0-9 _ . -");
		return;
	}
	if (in->incident_id == 0 && (worker || community[0] == '\0')) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST, worker ?
		    "incident_id: required" :
		    "incident_id or community_id: required");
		return;
	}
	if (in->incident_id > INT64_MAX) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__NOT_FOUND, "no such incident");
		return;
	}
	snprintf(inc, sizeof(inc), "%" PRIu64, in->incident_id);
	params[0] = inc;
	params[1] = reason;
	params[2] = note;
	params[3] = conn_principal(c);
	params[4] = community;
	params[5] = worker ? "t" : "f";
	q = creq_new(c, env->request_id, CREQ_FILE);
	snprintf(q->detail, sizeof(q->detail), "incident=%s reason=%s", inc,
	    reason);
	if (gridd.db == NULL || !db_query(gridd.db,
	    "WITH subject AS ("
	    " SELECT i.incident_id, i.community_id, i.departments"
	    " FROM incidents i"
	    " WHERE $1::bigint > 0 AND i.incident_id = $1::bigint"
	    " AND ($5 = '' OR i.community_id = $5)"
	    " AND (NOT $6::bool OR EXISTS (SELECT 1 FROM assignments a"
	    " WHERE a.incident_id = i.incident_id AND a.worker_id = $4))"
	    " UNION ALL"
	    " SELECT NULL::bigint, m.community_id, '{}'::text[]"
	    " FROM communities m"
	    " WHERE $1::bigint = 0 AND NOT $6::bool AND m.community_id = $5),"
	    " ins AS (INSERT INTO complaints (incident_id, community_id,"
	    " reason, note, complainant, departments)"
	    " SELECT incident_id, community_id, $2, $3, $4, departments"
	    " FROM subject"
	    " ON CONFLICT (complainant, community_id,"
	    " (coalesce(incident_id, 0)), reason) WHERE resolved_at IS NULL"
	    " DO NOTHING RETURNING complaint_id)"
	    " SELECT (SELECT count(*) FROM subject),"
	    " (SELECT complaint_id FROM ins)", 6, params, file_cb, q))
		creq_error(q, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

/* ---- ListComplaints ------------------------------------------------------ */

static void
list_cb(void *arg, const struct db_res *res)
{
	struct creq *q = arg;
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__ComplaintList list = GRIDD__V1__COMPLAINT_LIST__INIT;
	Gridd__V1__Complaint *items, **ptrs;
	char **depts, *copies;
	size_t rows;

	if (db_failed(q, res))
		return;
	rows = (size_t)db_res_rows(res);
	items = xcalloc(rows ? rows : 1, sizeof(*items));
	ptrs = xcalloc(rows ? rows : 1, sizeof(*ptrs));
	depts = xcalloc(rows * COMPLAINT_DEPTS_MAX + 1, sizeof(*depts));
	copies = NULL;
	{
		size_t total = 1;

		for (size_t i = 0; i < rows; i++)
			total += strlen(db_res_get(res, (int)i, 5)) + 1;
		copies = xmalloc(total);
	}
	size_t used = 0, nd = 0;

	for (size_t i = 0; i < rows; i++) {
		Gridd__V1__Complaint *m = &items[i];
		int64_t v;
		char *d, *tok, *save = NULL;

		gridd__v1__complaint__init(m);
		m->complaint_id = db_res_int64(res, (int)i, 0, &v) && v > 0 ?
		    (uint64_t)v : 0;
		m->incident_id = db_res_int64(res, (int)i, 1, &v) && v > 0 ?
		    (uint64_t)v : 0;
		m->reason = (char *)db_res_get(res, (int)i, 2);
		m->note = (char *)db_res_get(res, (int)i, 3);
		m->complainant = (char *)db_res_get(res, (int)i, 4);
		/* Department ids are [A-Za-z0-9_.-]: a comma list is safe. */
		d = copies + used;
		strcpy(d, db_res_get(res, (int)i, 5));
		used += strlen(d) + 1;
		m->departments = depts + nd;
		for (tok = strtok_r(d, ",", &save); tok != NULL &&
		    m->n_departments < COMPLAINT_DEPTS_MAX;
		    tok = strtok_r(NULL, ",", &save)) {
			depts[nd++] = tok;
			m->n_departments++;
		}
		m->filed_at = db_res_int64(res, (int)i, 6, &v) ? v : 0;
		m->resolved = strcmp(db_res_get(res, (int)i, 7), "t") == 0;
		m->resolution = (char *)db_res_get(res, (int)i, 8);
		ptrs[i] = m;
	}
	list.complaints = ptrs;
	list.n_complaints = rows;
	env.request_id = q->request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_COMPLAINT_LIST;
	env.complaint_list = &list;
	if (conn_is_open(q->c))
		conn_send(q->c, &env);
	free(items);
	free(ptrs);
	free(depts);
	free(copies);
	creq_done(q);
}

void
complaint_list(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__ListComplaints *in = env->list_complaints;
	const char *dept = in->department_id != NULL ? in->department_id : "";
	char limit[16];
	const char *params[3];
	struct creq *q;

	if (dept[0] != '\0' && !valid_id(dept)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "department_id: 1-64 characters of A-Z a-z 0-9 _ . -");
		return;
	}
	snprintf(limit, sizeof(limit), "%d", COMPLAINT_LIST_MAX);
	params[0] = in->open_only ? "t" : "f";
	params[1] = dept;
	params[2] = limit;
	q = creq_new(c, env->request_id, CREQ_LIST);
	if (gridd.db == NULL || !db_query(gridd.db,
	    "SELECT complaint_id, coalesce(incident_id, 0), reason, note,"
	    " complainant, array_to_string(departments[1:64], ','),"
	    " (extract(epoch FROM filed_at) * 1000)::bigint,"
	    " resolved_at IS NOT NULL, coalesce(resolution, '')"
	    " FROM complaints"
	    " WHERE (NOT $1::bool OR resolved_at IS NULL)"
	    " AND ($2 = '' OR departments @> ARRAY[$2])"
	    " ORDER BY filed_at DESC, complaint_id DESC LIMIT $3::int",
	    3, params, list_cb, q))
		creq_error(q, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

/* ---- ResolveComplaint ---------------------------------------------------- */

static void
resolve_cb(void *arg, const struct db_res *res)
{
	struct creq *q = arg;

	if (db_failed(q, res))
		return;
	if (db_res_rows(res) != 1) {
		creq_error(q, GRIDD__V1__ERROR_CODE__INTERNAL, "internal error");
		return;
	}
	if (strcmp(db_res_get(res, 0, 0), "1") == 0) {
		log_info("%s event=complaint action=resolve %s",
		    conn_log_prefix(q->c), q->detail);
		if (conn_is_open(q->c))
			rpc_reply_ok(q->c, q->request_id);
		creq_done(q);
	} else if (strcmp(db_res_get(res, 0, 1), "t") == 0) {
		creq_error(q, GRIDD__V1__ERROR_CODE__CONFLICT,
		    "complaint already resolved");
	} else {
		creq_error(q, GRIDD__V1__ERROR_CODE__NOT_FOUND,
		    "no such complaint");
	}
}

void
complaint_resolve(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__ResolveComplaint *in = env->resolve_complaint;
	const char *text = in->resolution != NULL ? in->resolution : "";
	char id[24];
	const char *params[2];
	struct creq *q;

	if (in->complaint_id == 0 || in->complaint_id > INT64_MAX) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "complaint_id: required");
		return;
	}
	if (text[0] == '\0' || !utf8_valid(text,
	    COMPLAINT_RESOLUTION_MAX)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "resolution: 1-2000 characters of UTF-8");
		return;
	}
	snprintf(id, sizeof(id), "%" PRIu64, in->complaint_id);
	params[0] = id;
	params[1] = text;
	q = creq_new(c, env->request_id, CREQ_RESOLVE);
	snprintf(q->detail, sizeof(q->detail), "complaint=%s", id);
	if (gridd.db == NULL || !db_query(gridd.db,
	    "WITH u AS (UPDATE complaints SET resolved_at = now(),"
	    " resolution = $2 WHERE complaint_id = $1::bigint"
	    " AND resolved_at IS NULL RETURNING 1)"
	    " SELECT (SELECT count(*) FROM u),"
	    " EXISTS (SELECT 1 FROM complaints WHERE complaint_id = $1::bigint)",
	    2, params, resolve_cb, q))
		creq_error(q, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

/* dispatch.h - offers to grid workers: choosing, pushing, timers, escalation. */
#ifndef GRIDD_DISPATCH_H
#define GRIDD_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gridd.pb-c.h"
#include "util.h"

struct conn;
struct db_res;

/* LISTENs on gridd_dispatch and gridd_offers, registers the metrics, and
 * starts the scan and timer loops: incidents and timers left behind (a
 * restart, a lost notification) are handled at once. Needs gridd.db. */
bool disp_init(void) WUR;
/* Stops the loops; after db_pool_free, whose failing callbacks still find
 * the module's state. */
void disp_shutdown(void);

/* A worker logged in on c: its open offers are pushed to c. */
void disp_worker_login(struct conn *c);
/* Something may have become dispatchable (a worker came on duty). */
void disp_kick(void);

/* An AssignmentOffer read from a gridd_dispatch_row; its strings point into
 * the result, so it lives only inside the callback. */
#define DISP_OFFER_MAX_DEPTS 32
struct disp_offer {
	Gridd__V1__AssignmentOffer msg;
	char *depts;
	char *dept_ptrs[DISP_OFFER_MAX_DEPTS];
	size_t n_depts;
	int64_t created_ms;
};
bool disp_offer_from_row(const struct db_res *res, int row,
    struct disp_offer *o) WUR;
void disp_offer_clear(struct disp_offer *o);
/* The error code and message for a failed statement. */
Gridd__V1__ErrorCode disp_db_error(const struct db_res *res,
    const char **msg);

/* A request answered from the first gridd_dispatch_row of its statement
 * (ok, replay, not_found, forbidden, conflict); the connection is held. */
struct disp_req;
struct disp_req *disp_req_new(struct conn *c, uint64_t request_id,
    const char *what);
void disp_req_fail(struct disp_req *r, Gridd__V1__ErrorCode code,
    const char *msg);
/* db_cb for such a statement: replies, applies every row, frees r. */
void disp_answer_cb(void *arg, const struct db_res *res);
/* Replies to r from row `row` of res (its outcome) and frees r; applies
 * nothing. */
void disp_answer_row(struct disp_req *r, const struct db_res *res, int row);
/* The n column of a gridd_dispatch_row (a batch item's position). */
int64_t disp_row_tag(const struct db_res *res, int row);

/* Acts on the gridd_dispatch_row rows of res from row `from` on: pushes new
 * offers, counts, schedules retries. */
void disp_apply_rows(const struct db_res *res, int from);
/* The settings parameters every dispatch function takes, in order:
 * offer_timeout_s, max_offers, checkin_max_age_s, retry_s, origin. */
#define DISP_N_SETTINGS 5
struct disp_settings {
	char v[4][12];
	const char *p[DISP_N_SETTINGS];
};
void disp_settings(struct disp_settings *s);

/* VerifyIncident (department). */
void disp_verify_incident(struct conn *c, const Gridd__V1__Envelope *env);

#endif

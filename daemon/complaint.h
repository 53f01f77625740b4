/* complaint.h - 投诉反馈: complaints filed, listed and resolved. */
#ifndef GRIDD_COMPLAINT_H
#define GRIDD_COMPLAINT_H

#include "gridd.pb-c.h"

struct conn;

/* Request handlers, called from the rpc table after its role check.
 * FileComplaint: a worker about an incident it has or had an assignment
 * for, or an admin about any incident or on behalf of a community; a
 * replay of an open complaint answers Ok and stores nothing. The others:
 * admin. */
void complaint_file(struct conn *c, const Gridd__V1__Envelope *env);
void complaint_list(struct conn *c, const Gridd__V1__Envelope *env);
void complaint_resolve(struct conn *c, const Gridd__V1__Envelope *env);

#endif

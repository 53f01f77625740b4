/* worker.h - grid workers' requests: check-in, their assignments, actions. */
#ifndef GRIDD_WORKER_H
#define GRIDD_WORKER_H

#include "gridd.pb-c.h"

struct conn;

/* Request handlers, called from the rpc table after its role check. */
void worker_check_in(struct conn *c, const Gridd__V1__Envelope *env);
void worker_list_assignments(struct conn *c, const Gridd__V1__Envelope *env);
void worker_update_assignment(struct conn *c,
    const Gridd__V1__Envelope *env);

#endif

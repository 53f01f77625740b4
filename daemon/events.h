/* events.h - department subscriptions: replay after since_seq, then live IncidentUpdate pushes. */
#ifndef GRIDD_EVENTS_H
#define GRIDD_EVENTS_H

#include <stdbool.h>
#include <stdint.h>

#include "gridd.pb-c.h"
#include "util.h"

struct conn;

/* LISTENs on gridd_events, starts the poll timer, registers metrics. */
bool events_init(void) WUR;
/* Drops every subscription. Call after db_pool_free (which ends the reads
 * in flight) and before conn_free_all. */
void events_shutdown(void);

/* Subscribe (DEPARTMENT): Ok, then the department's events after
 * since_seq in order, then new ones as they commit. */
void events_subscribe(struct conn *c, const Gridd__V1__Envelope *env);
/* The same replay for a department's Login.since_seq; c must be an
 * authenticated department connection. */
void events_start(struct conn *c, uint64_t since_seq);

#endif

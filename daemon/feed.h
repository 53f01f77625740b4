/* feed.h - PushIncidents and ReportIncident: ingest with group commit. */
#ifndef GRIDD_FEED_H
#define GRIDD_FEED_H

#include <stdbool.h>

#include "gridd.pb-c.h"
#include "util.h"

struct conn;

/* Makes the group-commit timer and registers the metrics writer; false
 * when the timer cannot be made. */
bool feed_init(void) WUR;
/* After a reload (gridd.cfg is the new configuration). */
void feed_config_changed(void);
/* Answers UNAVAILABLE to every push still waiting for a transaction and
 * releases its connection. Call after db_pool_free (which ends the
 * transaction in flight) and before conn_free_all. */
void feed_shutdown(void);

/* Request handlers, called from the rpc table after its role check. */
void feed_push_incidents(struct conn *c, const Gridd__V1__Envelope *env);
void feed_report_incident(struct conn *c, const Gridd__V1__Envelope *env);

#endif

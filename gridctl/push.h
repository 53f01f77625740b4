/* push.h - `gridctl push`: incidents from a CSV file, sent in batches. */
#ifndef GRIDCTL_PUSH_H
#define GRIDCTL_PUSH_H

#include <stddef.h>

#include "session.h"

/* Incidents per PushIncidents request: the default and the most. */
#define PUSH_DEFAULT_BATCH 500
#define PUSH_MAX_BATCH 10000

/* Reads path (a header line of IncidentIn field names, then one incident
 * per line), logs in and pushes batch_size incidents per request, printing
 * each result. Returns an exit status. */
int push_file(struct gc_session *s, const char *path, size_t batch_size);

#endif

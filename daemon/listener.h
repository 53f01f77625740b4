/* listener.h - listening sockets (plain TCP or TLS) and accept admission. */
#ifndef GRIDD_LISTENER_H
#define GRIDD_LISTENER_H

#include <stdbool.h>

#include "util.h"

struct cfg;

/* Binds every [server] listen address and builds the TLS context if any
 * listener asks for TLS. false (with a logged reason) if any fails. */
bool listener_start(const struct cfg *cfg) WUR;
/* Builds new TLS contexts from newcfg and swaps them in only when complete;
 * on false nothing changed. New connections use the new context, existing
 * ones keep theirs. Listen addresses are restart-only. */
bool listener_reload(const struct cfg *newcfg) WUR;
/* Stops accepting (shutdown begins); existing connections stay. */
void listener_stop(void);
void listener_free(void);

#endif

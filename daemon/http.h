/* http.h - the admin HTTP endpoint: /healthz and /metrics. */
#ifndef GRIDD_HTTP_H
#define GRIDD_HTTP_H

#include <stdbool.h>

#include "util.h"

struct cfg;

/* Binds [admin_http] listen when set (nothing to do otherwise). */
bool http_start(const struct cfg *cfg) WUR;
void http_free(void);

#endif

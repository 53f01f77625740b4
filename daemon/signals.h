/* signals.h - SIGHUP/SIGTERM/SIGINT through the event loop; SIGPIPE ignored. */
#ifndef GRIDD_SIGNALS_H
#define GRIDD_SIGNALS_H

#include <stdbool.h>

#include "util.h"

struct event_base;

struct signals_handlers {
	void (*reload)(void);		/* SIGHUP */
	void (*stop)(int signo);	/* SIGTERM, SIGINT */
};

/* Handlers run from the loop, never in signal context. */
bool signals_init(struct event_base *base,
    const struct signals_handlers *h) WUR;
void signals_free(void);

#endif

/* gridd.h - the process-wide context that main.c owns and subsystems borrow. */
#ifndef GRIDD_GRIDD_H
#define GRIDD_GRIDD_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct cfg;
struct db_pool;

struct gridd {
	struct event_base *base;
	/* The running config. Replaced whole on a good reload and the old one
	 * freed at once, so nothing may keep a pointer into it across a
	 * callback: copy what you need. */
	const struct cfg *cfg;
	struct db_pool *db;
	bool stopping;		/* SIGTERM/SIGINT received: drain, then exit */
	int64_t started_ms;
	char *instance;		/* host:pid, for logs and NOTIFY payloads */
};

extern struct gridd gridd;

#endif

/* migrate.h - schema migrations from sql/, applied once, under a lock. */
#ifndef GRIDD_MIGRATE_H
#define GRIDD_MIGRATE_H

#include <stdbool.h>

#include "util.h"

/* Applies every NNN_name.sql in dir not yet recorded in schema_version, in
 * order, each in its own transaction, while holding an advisory lock so that
 * processes starting together apply each file exactly once. Blocking: called
 * at start-up before the loop serves anyone. */
bool migrate_run(const char *conninfo, const char *dir, int timeout_s) WUR;

#endif

/* session.h - Login, tokens, failed-login limits, and worker accounts. */
#ifndef GRIDD_SESSION_H
#define GRIDD_SESSION_H

#include <stdbool.h>

#include "gridd.pb-c.h"
#include "util.h"

struct conn;

/* Starts the password-hashing thread (PBKDF2 is slow on purpose and never
 * runs on the loop). Needs gridd.base and libevent thread support. */
bool session_init(void) WUR;
/* Stops the thread and drops the work it still had, releasing the
 * connections that work held; later logins answer UNAVAILABLE. Call before
 * conn_free_all. */
void session_shutdown(void);

struct cfg;

/* After a reload swapped old for next (old not yet freed): ends the
 * sessions, stored and connected, of admins and departments removed from
 * the config or whose key changed. */
void session_config_changed(const struct cfg *old, const struct cfg *next);

/* Request handlers, called from the rpc table after its role check. */
void session_login(struct conn *c, const Gridd__V1__Envelope *env);
void session_upsert_worker(struct conn *c, const Gridd__V1__Envelope *env);

#endif

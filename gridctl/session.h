/* session.h - gridctl's logged-in session: options, login, one call at a time. */
#ifndef GRIDCTL_SESSION_H
#define GRIDCTL_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "client.h"
#include "gridd.pb-c.h"
#include "util.h"

/* Exit statuses, a contract with scripts that call gridctl. */
enum gc_exit {
	GC_EXIT_OK = 0,
	GC_EXIT_SERVER = 1,	/* the server answered with an Error */
	GC_EXIT_USAGE = 2,
	GC_EXIT_TRANSPORT = 3,	/* connect, TLS, timeout, broken reply */
};

/* A secret or password read from stdin is at most this long. */
#define GC_MAX_SECRET 1024

struct gc_session {
	/* From flags and the environment. */
	const char *addr;
	struct client_tls tls;
	Gridd__V1__Role role;
	const char *principal;
	char *secret;		/* owned; wiped before free */
	const char *resume_token;
	bool json;
	int timeout_ms;

	/* Live state. */
	struct client *conn;
	uint64_t next_request_id;
	Gridd__V1__LoginReply *login;	/* owned by login_env */
	Gridd__V1__Envelope *login_env;
};

/* Connects and logs in. Returns GC_EXIT_OK or the status to exit with,
 * having printed why. */
int gc_session_open(struct gc_session *s) WUR;
void gc_session_close(struct gc_session *s);

/* Sends req (its request_id assigned here) and waits for the reply with the
 * same id, skipping server pushes. *reply is NULL on a transport error,
 * which has been printed; returns the matching exit status. */
int gc_session_call(struct gc_session *s, Gridd__V1__Envelope *req,
    Gridd__V1__Envelope **reply) WUR;

/* Prints an Error reply (JSON on stdout or text on stderr); returns
 * GC_EXIT_SERVER. For a reply of an unexpected kind prints that and returns
 * GC_EXIT_TRANSPORT. */
int gc_reply_failed(const struct gc_session *s,
    const Gridd__V1__Envelope *reply);

/* Prints a reply: with --json one object (the envelope's fields followed
 * by extra_json, itself ",\"k\":v..." or NULL), else the body as text. */
void gc_print_reply(const struct gc_session *s,
    const Gridd__V1__Envelope *reply, const char *extra_json);

/* Reads one line of stdin into a new string (no newline); NULL with a
 * message on EOF or a line over GC_MAX_SECRET. */
char *gc_read_stdin_line(const char *what);
/* Overwrites and frees a secret. */
void gc_secret_free(char *s);

#endif

/* bclient.h - gridbench's non-blocking client connection: framed Envelopes over TCP or TLS. */
#ifndef GRIDBENCH_BCLIENT_H
#define GRIDBENCH_BCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>

#include <openssl/ssl.h>

#include "gridd.pb-c.h"
#include "util.h"

struct event_base;
struct bc;

/* A reply: env is owned by the client and freed after the callback returns;
 * sent_us is when the request was handed to the socket buffer. */
typedef void (*bc_reply_cb)(struct bc *c, const Gridd__V1__Envelope *env,
    int64_t sent_us, void *arg);
/* A server push (request_id 0). */
typedef void (*bc_push_cb)(struct bc *c, const Gridd__V1__Envelope *env,
    void *arg);
/* Connected (ok) or closed/failed (!ok). Called once for each. */
typedef void (*bc_state_cb)(struct bc *c, bool ok, void *arg);

struct bc_opts {
	struct event_base *base;
	const struct sockaddr *sa;	/* the daemon (loopback) */
	socklen_t salen;
	const struct sockaddr *src;	/* source address to bind, or NULL */
	socklen_t srclen;
	SSL_CTX *tls;			/* NULL: plain TCP */
	uint32_t max_frame;		/* largest reply accepted */
	size_t max_inflight;		/* requests awaiting a reply, at most */
	bc_push_cb on_push;
	bc_state_cb on_state;
	void *arg;			/* for on_push and on_state */
};

/* Starts a non-blocking connect; NULL when the socket cannot be made (out
 * of descriptors, for one). */
struct bc *bc_connect(const struct bc_opts *o);
/* Sends env (its request_id is set here); false when the connection is not
 * open or max_inflight requests already wait. */
bool bc_request(struct bc *c, Gridd__V1__Envelope *env, bc_reply_cb cb,
    void *arg) WUR;
/* Sends env without expecting a reply (raw tests). */
bool bc_send(struct bc *c, const Gridd__V1__Envelope *env) WUR;
bool bc_is_open(const struct bc *c) WUR;
size_t bc_inflight(const struct bc *c);
/* Closes now; the memory goes back after the current loop turn, so it is
 * safe inside the connection's own callbacks. Pending replies are dropped
 * without their callbacks. */
void bc_close(struct bc *c);
void *bc_user(const struct bc *c);
void bc_set_user(struct bc *c, void *user);

/* Monotonic microseconds. */
int64_t bc_now_us(void);

#endif

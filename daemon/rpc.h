/* rpc.h - requests to handlers: one table with the role check in one place. */
#ifndef GRIDD_RPC_H
#define GRIDD_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "gridd.pb-c.h"

struct conn;
struct evbuffer;

/* Handles one decoded request from c. env belongs to the caller and is freed
 * when this returns: handlers that answer later copy what they need. */
void rpc_dispatch(struct conn *c, const Gridd__V1__Envelope *env);

void rpc_reply_ok(struct conn *c, uint64_t request_id);
void rpc_reply_error(struct conn *c, uint64_t request_id,
    Gridd__V1__ErrorCode code, const char *message);

/* Per request type, for /metrics. */
struct rpc_stat {
	const char *name;	/* "login", "ping", "upsert_worker", ... */
	uint64_t requests;	/* passed the role check */
	uint64_t denied;	/* refused by the role check */
};

/* conn.c calls these: a reply (request_id != 0) is about to be sent to c,
 * and c is being freed with whatever it never answered. */
void rpc_replied(struct conn *c, const Gridd__V1__Envelope *env);
void rpc_conn_freed(struct conn *c);

/* Fills up to max entries; returns the number of request types. */
size_t rpc_stats(struct rpc_stat *out, size_t max);
/* Prometheus figures per request type. */
void rpc_metrics_write(struct evbuffer *out);

#endif

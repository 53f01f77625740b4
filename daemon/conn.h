/* conn.h - client connections: states, framing, backpressure, deferred free. */
#ifndef GRIDD_CONN_H
#define GRIDD_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/util.h>
#include <openssl/types.h>

#include "gridd.pb-c.h"
#include "util.h"

struct evbuffer;
struct sockaddr;
struct conn;

enum conn_state {
	CONN_ACCEPTED = 0,
	CONN_TLS_HANDSHAKE,
	CONN_UNAUTHENTICATED,
	CONN_AUTHENTICATED,
	CONN_CLOSING,		/* no more reading; freed once flushed */
	CONN_N_STATES
};

/* Numbered as the wire enum Role. */
enum conn_role {
	CONN_ROLE_NONE = 0,
	CONN_ROLE_WORKER = 1,
	CONN_ROLE_DEPARTMENT = 2,
	CONN_ROLE_ADMIN = 3,
	CONN_N_ROLES
};

#define CONN_PRINCIPAL_MAX 64
#define CONN_N_ERROR_CODES 11	/* ErrorCode OK .. INTERNAL */

struct conn_stats {
	uint64_t current;
	uint64_t accepted;
	uint64_t rejected;		/* closed at accept: over the cap */
	uint64_t by_state[CONN_N_STATES];	/* current */
	uint64_t by_role[CONN_N_ROLES];		/* current, authenticated */
	uint64_t frames_in;
	uint64_t frames_out;
	uint64_t errors_by_code[CONN_N_ERROR_CODES];	/* Error replies sent */
	uint64_t replies_dropped;	/* to connections already closing */
	uint64_t output_stalls;		/* reading paused for unsent output */
	uint64_t stall_drops;
	uint64_t timeouts_idle;
	uint64_t timeouts_login;
};

/* Listener side. conn_accept takes fd in every case (closes it on failure);
 * tls is the listener's current context or NULL for plain TCP. */
bool conn_accept(evutil_socket_t fd, const struct sockaddr *sa, int salen,
    SSL_CTX *tls) WUR;
void conn_note_rejected(void);

/* Process side. conn_close_all starts closing every connection (each flushes
 * what it has queued); conn_count falls to 0 as they are freed. conn_free_all
 * frees whatever remains, only after the loop stopped and after every
 * database and hashing callback that could touch a connection has run. */
size_t conn_count(void);
void conn_close_all(const char *reason);
void conn_free_all(void);
void conn_stats_get(struct conn_stats *out);
/* Prometheus figures for connections and requests (a metrics writer). */
void conn_metrics_write(struct evbuffer *out);

/* Protocol side. Replies and pushes to a closing connection are dropped. */
void conn_send(struct conn *c, const Gridd__V1__Envelope *env);
void conn_send_error(struct conn *c, uint64_t request_id,
    Gridd__V1__ErrorCode code, const char *message);
/* Stops reading, flushes queued output (bounded in time), then frees. */
void conn_close(struct conn *c, const char *reason);
void conn_authenticated(struct conn *c, enum conn_role role,
    const char *principal);
/* A connection with work in flight (database, hashing) is held: it is not
 * freed until released, though it may be closing meanwhile. */
void conn_hold(struct conn *c);
/* Visits every authenticated connection of one principal (a worker may have
 * a phone and a tablet). fn may send or close, never free. Returns the
 * number visited. */
typedef void (*conn_visit_cb)(struct conn *c, void *arg);
size_t conn_foreach_principal(enum conn_role role, const char *principal,
    conn_visit_cb fn, void *arg);
void conn_release(struct conn *c);

bool conn_is_open(const struct conn *c);
enum conn_state conn_state(const struct conn *c);
enum conn_role conn_role(const struct conn *c);
const char *conn_principal(const struct conn *c);	/* "" before login */
const char *conn_peer_host(const struct conn *c);	/* numeric address */
/* Bytes queued for the peer and not yet written: producers of pushes (event
 * replay) stop while it is high and resume once it drained. */
size_t conn_output_len(const struct conn *c);
const char *conn_log_prefix(const struct conn *c);	/* "c#42 host:port ..." */
uint64_t conn_id(const struct conn *c);
/* Requests of this connection not answered yet: rpc.c keeps them there (for
 * latency and the request log); conn.c hands them back through
 * rpc_replied() and rpc_conn_freed(). */
struct rpc_inflight;
struct rpc_inflight **conn_inflight(struct conn *c);

const char *conn_state_name(enum conn_state s);
const char *conn_role_name(enum conn_role r);

#endif

/* conn.c - client connections: states, frames in and out, limits, timers, frees. */
#include "conn.h"

#include <sys/queue.h>
#include <sys/socket.h>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "config.h"
#include "frame.h"
#include "gridd.h"
#include "log.h"
#include "metrics.h"
#include "rpc.h"

/* Memory one decode may use: a fixed floor plus a multiple of the frame's
 * size. Legitimate messages expand a few times when unpacked (a string gains
 * a pointer and a NUL, a small message its whole struct); a frame full of
 * empty repeated elements expands ~60 times and is refused. */
#define CONN_DECODE_ALLOC_FLOOR		(64u * 1024)
#define CONN_DECODE_ALLOC_PER_BYTE	16u

/* Largest frame the server itself sends (a grid with its GeoJSON, a burden
 * report). Clients limit what they accept on their own side. */
#define CONN_MAX_OUT_FRAME		(64u * 1024 * 1024)

/* How long a closing connection may take to flush its last replies (the
 * error that explains the close) before it is dropped. */
#define CONN_CLOSE_LINGER_MS		2000

struct conn {
	TAILQ_ENTRY(conn) all;
	TAILQ_ENTRY(conn) reap;
	LIST_ENTRY(conn) by_principal;	/* while authenticated */
	uint64_t id;
	enum conn_state state;
	enum conn_role role;
	int refs;		/* work in flight that will call back */
	bool tls;
	bool paused;		/* reading stopped: output over its cap */
	bool dead;		/* nothing more to flush: free when refs == 0 */
	bool queued;		/* on the reap list */
	struct bufferevent *bev;
	struct event *timer;	/* next of login, idle, stall, linger */
	size_t read_hiwat;	/* input buffer bound: one largest frame */
	int64_t accepted_ms;
	int64_t last_rx_ms;
	int64_t stall_since_ms;
	int64_t close_deadline_ms;
	uint16_t port;
	char host[INET6_ADDRSTRLEN];
	char principal[CONN_PRINCIPAL_MAX + 1];
	char prefix[32 + INET6_ADDRSTRLEN + CONN_PRINCIPAL_MAX];
	struct rpc_inflight *inflight;	/* owned by rpc.c */
};

TAILQ_HEAD(conn_list, conn);

static struct conn_list conns = TAILQ_HEAD_INITIALIZER(conns);

/*
 * Authenticated connections by (role, principal), so that a push for one
 * worker or department finds its connections without a scan. A fixed
 * power-of-two table: 64 Ki buckets cost 512 KiB once and keep chains short
 * up to the connection counts one process can hold.
 */
#define CONN_INDEX_BUCKETS 65536
LIST_HEAD(conn_chain, conn);
static struct conn_chain principal_index[CONN_INDEX_BUCKETS];
static struct conn_list reap_list = TAILQ_HEAD_INITIALIZER(reap_list);
static struct event *reap_ev;
static uint64_t next_id;
static struct conn_stats stats;

static const char *const state_names[CONN_N_STATES] = {
	[CONN_ACCEPTED] = "accepted",
	[CONN_TLS_HANDSHAKE] = "tls_handshake",
	[CONN_UNAUTHENTICATED] = "unauthenticated",
	[CONN_AUTHENTICATED] = "authenticated",
	[CONN_CLOSING] = "closing",
};

static const char *const role_names[CONN_N_ROLES] = {
	[CONN_ROLE_NONE] = "none",
	[CONN_ROLE_WORKER] = "worker",
	[CONN_ROLE_DEPARTMENT] = "department",
	[CONN_ROLE_ADMIN] = "admin",
};

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_timer_cb(evutil_socket_t fd, short what, void *arg);
static void conn_reap_cb(evutil_socket_t fd, short what, void *arg);

const char *
conn_state_name(enum conn_state s)
{
	return (unsigned)s < CONN_N_STATES ? state_names[s] : "?";
}

const char *
conn_role_name(enum conn_role r)
{
	return (unsigned)r < CONN_N_ROLES ? role_names[r] : "?";
}

static void
conn_set_prefix(struct conn *c)
{
	if (c->role != CONN_ROLE_NONE)
		snprintf(c->prefix, sizeof(c->prefix), "c#%llu %s:%u %s=%s",
		    (unsigned long long)c->id, c->host, c->port,
		    role_names[c->role], c->principal);
	else
		snprintf(c->prefix, sizeof(c->prefix), "c#%llu %s:%u",
		    (unsigned long long)c->id, c->host, c->port);
}

/* Read limits follow the state: before login a frame may be at most
 * max_frame_bytes_unauth, and the read high-watermark keeps the input buffer
 * from holding more than one such frame (plus its header) per connection. */
static void
conn_set_read_limit(struct conn *c)
{
	const struct cfg *cfg = gridd.cfg;
	uint32_t max = c->state == CONN_AUTHENTICATED ? cfg->max_frame_bytes :
	    cfg->max_frame_bytes_unauth;

	c->read_hiwat = (size_t)max + FRAME_HEADER_LEN;
	bufferevent_setwatermark(c->bev, EV_READ, 0, c->read_hiwat);
}

static struct conn_chain *
index_chain(enum conn_role role, const char *principal)
{
	/* FNV-1a over the role and the principal. */
	uint32_t h = 2166136261u ^ (uint32_t)role;

	h *= 16777619u;
	for (const unsigned char *p = (const unsigned char *)principal; *p;
	    p++) {
		h ^= *p;
		h *= 16777619u;
	}
	return &principal_index[h & (CONN_INDEX_BUCKETS - 1)];
}

/* The only place a connection changes state. */
static void
conn_set_state(struct conn *c, enum conn_state to)
{
	enum conn_state from = c->state;

	if (from == to)
		return;
	stats.by_state[from]--;
	stats.by_state[to]++;
	if (from == CONN_AUTHENTICATED) {
		stats.by_role[c->role]--;
		LIST_REMOVE(c, by_principal);
	}
	if (to == CONN_AUTHENTICATED) {
		stats.by_role[c->role]++;
		LIST_INSERT_HEAD(index_chain(c->role, c->principal), c,
		    by_principal);
	}
	c->state = to;
	log_debug("%s state %s -> %s", c->prefix, state_names[from],
	    state_names[to]);
	if (to == CONN_UNAUTHENTICATED || to == CONN_AUTHENTICATED)
		conn_set_read_limit(c);
}

static void
conn_arm_timer(struct conn *c)
{
	const struct cfg *cfg = gridd.cfg;
	int64_t next = INT64_MAX, now = mono_ms();
	struct timeval tv;

	if (c->dead)
		return;
	if (c->state == CONN_CLOSING) {
		next = c->close_deadline_ms;
	} else {
		if (c->state != CONN_AUTHENTICATED && cfg->login_timeout_s > 0)
			next = c->accepted_ms +
			    (int64_t)cfg->login_timeout_s * 1000;
		if (cfg->idle_timeout_s > 0 &&
		    c->last_rx_ms + (int64_t)cfg->idle_timeout_s * 1000 < next)
			next = c->last_rx_ms +
			    (int64_t)cfg->idle_timeout_s * 1000;
		if (c->paused && c->stall_since_ms +
		    (int64_t)cfg->output_stall_timeout_s * 1000 < next)
			next = c->stall_since_ms +
			    (int64_t)cfg->output_stall_timeout_s * 1000;
	}
	if (next == INT64_MAX) {
		evtimer_del(c->timer);
		return;
	}
	next = next > now ? next - now : 0;
	tv.tv_sec = (time_t)(next / 1000);
	tv.tv_usec = (suseconds_t)(next % 1000) * 1000;
	evtimer_add(c->timer, &tv);
}

/* Marks the connection finished; it is freed after this loop turn, once no
 * callback holds it. Never frees here: we may be inside its own callback. */
static void
conn_kill(struct conn *c)
{
	if (!c->dead) {
		c->dead = true;
		bufferevent_disable(c->bev, EV_READ | EV_WRITE);
		evtimer_del(c->timer);
	}
	if (c->refs == 0 && !c->queued) {
		c->queued = true;
		TAILQ_INSERT_TAIL(&reap_list, c, reap);
		event_active(reap_ev, EV_TIMEOUT, 0);
	}
}

/* Drops the connection without flushing (peer gone, output stalled). */
static void
conn_drop(struct conn *c, enum log_level lvl, const char *reason)
{
	if (c->state != CONN_CLOSING) {
		log_msg(lvl, "%s closed reason=\"%s\"", c->prefix, reason);
		conn_set_state(c, CONN_CLOSING);
	}
	conn_kill(c);
}

void
conn_close(struct conn *c, const char *reason)
{
	if (c->state == CONN_CLOSING)
		return;
	log_info("%s closing reason=\"%s\"", c->prefix, reason);
	conn_set_state(c, CONN_CLOSING);
	bufferevent_disable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
		conn_kill(c);
		return;
	}
	/* The write callback fires once everything queued is sent. */
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	bufferevent_enable(c->bev, EV_WRITE);
	c->close_deadline_ms = mono_ms() + CONN_CLOSE_LINGER_MS;
	conn_arm_timer(c);
}

static void
conn_free(struct conn *c)
{
	TAILQ_REMOVE(&conns, c, all);
	if (c->queued)
		TAILQ_REMOVE(&reap_list, c, reap);
	stats.by_state[c->state]--;
	if (c->state == CONN_AUTHENTICATED) {
		stats.by_role[c->role]--;
		LIST_REMOVE(c, by_principal);
	}
	stats.current--;
	rpc_conn_freed(c);
	log_debug("%s freed", c->prefix);
	if (c->tls) {
		SSL *ssl = bufferevent_openssl_get_ssl(c->bev);

		/* Best effort close_notify; the socket may already be gone. */
		if (ssl != NULL && SSL_is_init_finished(ssl))
			(void)SSL_shutdown(ssl);
		ERR_clear_error();
	}
	bufferevent_free(c->bev);
	event_free(c->timer);
	free(c);
}

static void
conn_reap_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	while ((c = TAILQ_FIRST(&reap_list)) != NULL)
		conn_free(c);
}

static bool
conn_module_init(void)
{
	if (reap_ev != NULL)
		return true;
	reap_ev = event_new(gridd.base, -1, 0, conn_reap_cb, NULL);
	return reap_ev != NULL;
}

bool
conn_accept(evutil_socket_t fd, const struct sockaddr *sa, int salen,
    SSL_CTX *tls)
{
	struct conn *c;
	char port[NI_MAXSERV];
	int one = 1;

	if (!conn_module_init()) {
		evutil_closesocket(fd);
		return false;
	}
	c = xcalloc(1, sizeof(*c));
	c->id = ++next_id;
	if (getnameinfo(sa, (socklen_t)salen, c->host, sizeof(c->host), port,
	    sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		snprintf(c->host, sizeof(c->host), "?");
		snprintf(port, sizeof(port), "0");
	}
	c->role = CONN_ROLE_NONE;
	c->state = CONN_ACCEPTED;
	c->accepted_ms = c->last_rx_ms = mono_ms();
	c->port = (uint16_t)strtoul(port, NULL, 10);
	conn_set_prefix(c);
	/* Small request/reply frames: latency matters more than packets. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	if (tls != NULL) {
		SSL *ssl = SSL_new(tls);

		if (ssl == NULL) {
			log_warn("%s SSL_new failed", c->prefix);
			ERR_clear_error();
			evutil_closesocket(fd);
			free(c);
			return false;
		}
		c->tls = true;
		c->bev = bufferevent_openssl_socket_new(gridd.base, fd, ssl,
		    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
		if (c->bev != NULL)
			bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	} else {
		c->bev = bufferevent_socket_new(gridd.base, fd,
		    BEV_OPT_CLOSE_ON_FREE);
	}
	c->timer = evtimer_new(gridd.base, conn_timer_cb, c);
	if (c->bev == NULL || c->timer == NULL) {
		log_warn("%s cannot set up the connection", c->prefix);
		if (c->bev != NULL)
			bufferevent_free(c->bev);
		else
			evutil_closesocket(fd);
		if (c->timer != NULL)
			event_free(c->timer);
		free(c);
		return false;
	}
	TAILQ_INSERT_TAIL(&conns, c, all);
	stats.current++;
	stats.accepted++;
	stats.by_state[CONN_ACCEPTED]++;
	log_debug("%s accepted%s", c->prefix, tls ? " tls" : "");
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb,
	    c);
	conn_set_state(c, tls ? CONN_TLS_HANDSHAKE : CONN_UNAUTHENTICATED);
	if (tls != NULL)
		conn_set_read_limit(c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	conn_arm_timer(c);
	return true;
}

void
conn_note_rejected(void)
{
	stats.rejected++;
}

/* Frame-level protocol errors: say why when we can, then close. */
static void
conn_protocol_error(struct conn *c, Gridd__V1__ErrorCode code,
    const char *message)
{
	conn_send_error(c, 0, code, message);
	conn_close(c, message);
}

static void
conn_pause_reading(struct conn *c)
{
	size_t cap = gridd.cfg->max_output_bytes;

	c->paused = true;
	c->stall_since_ms = mono_ms();
	stats.output_stalls++;
	bufferevent_disable(c->bev, EV_READ);
	/* Resume when the output drained below half its cap. */
	bufferevent_setwatermark(c->bev, EV_WRITE, cap / 2, 0);
	log_info("%s output over cap (%zu bytes unsent); reading paused",
	    c->prefix, evbuffer_get_length(bufferevent_get_output(c->bev)));
	conn_arm_timer(c);
}

static void
conn_resume_reading(struct conn *c)
{
	c->paused = false;
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	bufferevent_enable(c->bev, EV_READ);
	log_debug("%s output drained; reading resumed", c->prefix);
	conn_arm_timer(c);
	/* Frames may be waiting in the input buffer already. */
	bufferevent_trigger(c->bev, EV_READ,
	    BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

void
conn_send(struct conn *c, const Gridd__V1__Envelope *env)
{
	struct evbuffer *out;

	/* Before the closing check: a request answered to a closing
	 * connection still took its time. */
	if (env->request_id != 0)
		rpc_replied(c, env);
	if (c->state == CONN_CLOSING) {
		stats.replies_dropped++;
		return;
	}
	out = bufferevent_get_output(c->bev);
	if (!frame_encode(out, env, CONN_MAX_OUT_FRAME)) {
		log_error("%s cannot encode reply request_id=%llu size=%zu",
		    c->prefix, (unsigned long long)env->request_id,
		    gridd__v1__envelope__get_packed_size(env));
		if (env->body_case != GRIDD__V1__ENVELOPE__BODY_ERROR)
			conn_send_error(c, env->request_id,
			    GRIDD__V1__ERROR_CODE__INTERNAL,
			    "reply could not be encoded");
		return;
	}
	stats.frames_out++;
	if (env->body_case == GRIDD__V1__ENVELOPE__BODY_ERROR &&
	    (unsigned)env->error->code < CONN_N_ERROR_CODES)
		stats.errors_by_code[env->error->code]++;
	if (!c->paused && c->state != CONN_CLOSING &&
	    evbuffer_get_length(out) > gridd.cfg->max_output_bytes)
		conn_pause_reading(c);
}

void
conn_send_error(struct conn *c, uint64_t request_id,
    Gridd__V1__ErrorCode code, const char *message)
{
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__Error err = GRIDD__V1__ERROR__INIT;

	err.code = code;
	err.message = (char *)(message ? message : "");
	env.request_id = request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_ERROR;
	env.error = &err;
	conn_send(c, &env);
}

static bool
conn_reading(const struct conn *c)
{
	return (c->state == CONN_UNAUTHENTICATED ||
	    c->state == CONN_AUTHENTICATED) && !c->paused;
}

/* Handles the whole frames buffered, at most max_frames_per_read of them;
 * the rest wait for a deferred second call so that one busy client cannot
 * keep the loop from everyone else. */
static void
conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	int budget = gridd.cfg->max_frames_per_read;
	char msg[96];

	while (conn_reading(c)) {
		uint32_t max = c->state == CONN_AUTHENTICATED ?
		    gridd.cfg->max_frame_bytes :
		    gridd.cfg->max_frame_bytes_unauth;
		enum frame_status st;
		Gridd__V1__Envelope *env;
		const uint8_t *body;
		size_t cap;
		uint32_t len;

		st = frame_peek_evbuffer(in, max, &len);
		if (st == FRAME_INCOMPLETE) {
			/* A reload may have raised max_frame_bytes: let the
			 * input buffer grow to hold this frame. */
			if ((size_t)len + FRAME_HEADER_LEN > c->read_hiwat)
				conn_set_read_limit(c);
			return;
		}
		if (st == FRAME_ZERO) {
			conn_protocol_error(c, GRIDD__V1__ERROR_CODE__BAD_REQUEST,
			    "frame of length 0");
			return;
		}
		if (st == FRAME_TOO_LARGE) {
			snprintf(msg, sizeof(msg),
			    "frame of %u bytes over the limit of %u", len, max);
			conn_protocol_error(c, GRIDD__V1__ERROR_CODE__TOO_LARGE,
			    msg);
			return;
		}
		if (budget-- <= 0) {
			bufferevent_trigger(bev, EV_READ,
			    BEV_TRIG_IGNORE_WATERMARKS |
			    BEV_TRIG_DEFER_CALLBACKS);
			return;
		}
		evbuffer_drain(in, FRAME_HEADER_LEN);
		body = evbuffer_pullup(in, len);
		cap = CONN_DECODE_ALLOC_FLOOR +
		    (size_t)len * CONN_DECODE_ALLOC_PER_BYTE;
		env = body != NULL ? frame_decode(body, len, cap) : NULL;
		evbuffer_drain(in, len);
		if (env == NULL) {
			conn_protocol_error(c, GRIDD__V1__ERROR_CODE__BAD_REQUEST,
			    "frame is not a valid Envelope");
			return;
		}
		stats.frames_in++;
		c->last_rx_ms = mono_ms();
		rpc_dispatch(c, env);
		frame_envelope_free(env);
	}
}

static void
conn_write_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	size_t left = evbuffer_get_length(bufferevent_get_output(bev));

	if (c->state == CONN_CLOSING) {
		if (left == 0)
			conn_kill(c);
		return;
	}
	if (c->paused && left <= gridd.cfg->max_output_bytes / 2)
		conn_resume_reading(c);
}

static void
conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	char reason[160];

	if (what & BEV_EVENT_CONNECTED) {
		SSL *ssl = bufferevent_openssl_get_ssl(bev);

		if (c->state == CONN_TLS_HANDSHAKE) {
			log_debug("%s tls %s %s", c->prefix,
			    ssl ? SSL_get_version(ssl) : "?",
			    ssl ? SSL_get_cipher_name(ssl) : "?");
			conn_set_state(c, CONN_UNAUTHENTICATED);
		}
		return;
	}
	if (what & BEV_EVENT_EOF) {
		conn_drop(c, LOG_LVL_DEBUG, "peer closed");
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		unsigned long e = c->tls ? bufferevent_get_openssl_error(bev) : 0;
		int err = EVUTIL_SOCKET_ERROR();

		if (e != 0) {
			char ossl[120];

			ERR_error_string_n(e, ossl, sizeof(ossl));
			snprintf(reason, sizeof(reason), "tls: %s", ossl);
		} else if (c->state == CONN_TLS_HANDSHAKE) {
			snprintf(reason, sizeof(reason),
			    "tls handshake failed");
		} else {
			snprintf(reason, sizeof(reason), "socket: %s",
			    err ? evutil_socket_error_to_string(err) :
			    "connection lost");
		}
		ERR_clear_error();
		conn_drop(c, c->state == CONN_TLS_HANDSHAKE ? LOG_LVL_INFO :
		    LOG_LVL_DEBUG, reason);
	}
}

static void
conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	const struct cfg *cfg = gridd.cfg;
	int64_t now = mono_ms();

	UNUSED(fd);
	UNUSED(what);
	if (c->dead)
		return;
	if (c->state == CONN_CLOSING) {
		if (now >= c->close_deadline_ms)
			conn_drop(c, LOG_LVL_DEBUG, "close linger expired");
		else
			conn_arm_timer(c);
		return;
	}
	if (c->paused && now - c->stall_since_ms >=
	    (int64_t)cfg->output_stall_timeout_s * 1000) {
		stats.stall_drops++;
		conn_drop(c, LOG_LVL_INFO, "output stalled over its cap");
		return;
	}
	if (c->state != CONN_AUTHENTICATED && cfg->login_timeout_s > 0 &&
	    now - c->accepted_ms >= (int64_t)cfg->login_timeout_s * 1000) {
		stats.timeouts_login++;
		if (c->state == CONN_UNAUTHENTICATED) {
			conn_send_error(c, 0,
			    GRIDD__V1__ERROR_CODE__UNAUTHENTICATED,
			    "login timeout");
			conn_close(c, "login timeout");
		} else {
			conn_drop(c, LOG_LVL_INFO, "tls handshake timeout");
		}
		return;
	}
	if (cfg->idle_timeout_s > 0 &&
	    now - c->last_rx_ms >= (int64_t)cfg->idle_timeout_s * 1000) {
		stats.timeouts_idle++;
		conn_close(c, "idle timeout");
		return;
	}
	conn_arm_timer(c);
}

void
conn_authenticated(struct conn *c, enum conn_role role, const char *principal)
{
	if (c->state != CONN_UNAUTHENTICATED)
		return;
	c->role = role;
	snprintf(c->principal, sizeof(c->principal), "%s", principal);
	conn_set_prefix(c);
	conn_set_state(c, CONN_AUTHENTICATED);
	conn_arm_timer(c);
}

size_t
conn_foreach_principal(enum conn_role role, const char *principal,
    conn_visit_cb fn, void *arg)
{
	struct conn *c, *next;
	size_t n = 0;

	/* fn may close c, which keeps it on the chain until it is freed
	 * after the loop turn; taking next first is still the safe order. */
	for (c = LIST_FIRST(index_chain(role, principal)); c != NULL;
	    c = next) {
		next = LIST_NEXT(c, by_principal);
		if (c->role == role && strcmp(c->principal, principal) == 0) {
			fn(c, arg);
			n++;
		}
	}
	return n;
}

void
conn_hold(struct conn *c)
{
	c->refs++;
}

void
conn_release(struct conn *c)
{
	if (--c->refs == 0 && c->dead)
		conn_kill(c);
}

bool
conn_is_open(const struct conn *c)
{
	return c->state != CONN_CLOSING;
}

enum conn_state
conn_state(const struct conn *c)
{
	return c->state;
}

enum conn_role
conn_role(const struct conn *c)
{
	return c->role;
}

const char *
conn_principal(const struct conn *c)
{
	return c->principal;
}

size_t
conn_output_len(const struct conn *c)
{
	return evbuffer_get_length(bufferevent_get_output(c->bev));
}

const char *
conn_peer_host(const struct conn *c)
{
	return c->host;
}

const char *
conn_log_prefix(const struct conn *c)
{
	return c->prefix;
}

struct rpc_inflight **
conn_inflight(struct conn *c)
{
	return &c->inflight;
}

uint64_t
conn_id(const struct conn *c)
{
	return c->id;
}

size_t
conn_count(void)
{
	return (size_t)stats.current;
}

void
conn_close_all(const char *reason)
{
	struct conn *c;

	TAILQ_FOREACH(c, &conns, all)
		conn_close(c, reason);
}

void
conn_free_all(void)
{
	struct conn *c;

	while ((c = TAILQ_FIRST(&conns)) != NULL)
		conn_free(c);
	if (reap_ev != NULL) {
		event_free(reap_ev);
		reap_ev = NULL;
	}
}

void
conn_stats_get(struct conn_stats *out)
{
	*out = stats;
}

static const char *const error_code_names[CONN_N_ERROR_CODES] = {
	"OK", "BAD_REQUEST", "UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND",
	"CONFLICT", "REJECTED_NEGATIVE_LIST", "RATE_LIMITED", "UNAVAILABLE",
	"TOO_LARGE", "INTERNAL",
};

void
conn_metrics_write(struct evbuffer *out)
{
	char labels[64];

	metrics_family(out, "gridd_connections", "gauge",
	    "Client connections by state.");
	for (int i = 0; i < CONN_N_STATES; i++) {
		snprintf(labels, sizeof(labels), "state=\"%s\"", state_names[i]);
		metrics_sample(out, "gridd_connections", labels,
		    (double)stats.by_state[i]);
	}
	metrics_family(out, "gridd_connections_authenticated", "gauge",
	    "Authenticated client connections by role.");
	for (int i = CONN_ROLE_WORKER; i < CONN_N_ROLES; i++) {
		snprintf(labels, sizeof(labels), "role=\"%s\"", role_names[i]);
		metrics_sample(out, "gridd_connections_authenticated", labels,
		    (double)stats.by_role[i]);
	}
	metrics_family(out, "gridd_connections_accepted_total", "counter",
	    "Connections accepted.");
	metrics_sample(out, "gridd_connections_accepted_total", NULL,
	    (double)stats.accepted);
	metrics_family(out, "gridd_connections_refused_total", "counter",
	    "Connections closed at accept: over the connection cap.");
	metrics_sample(out, "gridd_connections_refused_total", NULL,
	    (double)stats.rejected);
	metrics_family(out, "gridd_connection_closes_total", "counter",
	    "Connections closed by the server, by reason.");
	metrics_sample(out, "gridd_connection_closes_total",
	    "reason=\"idle_timeout\"", (double)stats.timeouts_idle);
	metrics_sample(out, "gridd_connection_closes_total",
	    "reason=\"login_timeout\"", (double)stats.timeouts_login);
	metrics_sample(out, "gridd_connection_closes_total",
	    "reason=\"output_stalled\"", (double)stats.stall_drops);
	metrics_family(out, "gridd_output_stalls_total", "counter",
	    "Times a connection stopped being read for unsent output.");
	metrics_sample(out, "gridd_output_stalls_total", NULL,
	    (double)stats.output_stalls);
	metrics_family(out, "gridd_frames_total", "counter",
	    "Frames received and sent.");
	metrics_sample(out, "gridd_frames_total", "direction=\"in\"",
	    (double)stats.frames_in);
	metrics_sample(out, "gridd_frames_total", "direction=\"out\"",
	    (double)stats.frames_out);
	metrics_family(out, "gridd_replies_dropped_total", "counter",
	    "Replies for connections that had closed.");
	metrics_sample(out, "gridd_replies_dropped_total", NULL,
	    (double)stats.replies_dropped);
	metrics_family(out, "gridd_errors_total", "counter",
	    "Error replies sent, by code.");
	for (int i = 1; i < CONN_N_ERROR_CODES; i++) {
		snprintf(labels, sizeof(labels), "code=\"%s\"",
		    error_code_names[i]);
		metrics_sample(out, "gridd_errors_total", labels,
		    (double)stats.errors_by_code[i]);
	}
	rpc_metrics_write(out);
}

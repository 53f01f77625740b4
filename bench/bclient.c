/* bclient.c - gridbench's non-blocking client connection: framed Envelopes over TCP or TLS. */
#include "bclient.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include "frame.h"

/* Replies decode into at most this many bytes per frame (protobuf-c
 * expands repeated fields; a 1,000-result reply needs a few hundred KiB). */
#define BC_MAX_DECODED	((size_t)64 * 1024 * 1024)

enum bc_state {
	BC_CONNECTING,
	BC_OPEN,
	BC_CLOSED,
};

struct bc_slot {
	uint64_t id;		/* 0 = free */
	bc_reply_cb cb;
	void *arg;
	int64_t sent_us;
};

struct bc {
	struct bufferevent *bev;
	struct event_base *base;
	enum bc_state state;
	uint32_t max_frame;
	bc_push_cb on_push;
	bc_state_cb on_state;
	void *arg;
	void *user;
	uint64_t next_id;
	struct bc_slot *slots;	/* indexed by request_id % nslots */
	size_t nslots;
	size_t inflight;
};

int64_t
bc_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
set_state(struct bc *c, enum bc_state st)
{
	enum bc_state was = c->state;

	if (was == st || was == BC_CLOSED)
		return;
	c->state = st;
	if (c->on_state == NULL)
		return;
	if (st == BC_OPEN)
		c->on_state(c, true, c->arg);
	else if (st == BC_CLOSED)
		c->on_state(c, false, c->arg);
}

static void
free_cb(evutil_socket_t fd, short what, void *arg)
{
	struct bc *c = arg;

	UNUSED(fd);
	UNUSED(what);
	free(c->slots);
	free(c);
}

void
bc_close(struct bc *c)
{
	if (c == NULL || c->bev == NULL)
		return;
	bufferevent_free(c->bev);
	c->bev = NULL;
	c->inflight = 0;
	set_state(c, BC_CLOSED);
	/* Freed after this loop turn: the caller may be inside one of c's
	 * callbacks. */
	if (event_base_once(c->base, -1, EV_TIMEOUT, free_cb, c, NULL) != 0)
		free_cb(-1, 0, c);
}

static void
dispatch(struct bc *c, const Gridd__V1__Envelope *env)
{
	struct bc_slot *s;
	bc_reply_cb cb;
	void *arg;
	int64_t sent;

	if (env->request_id == 0) {
		if (c->on_push != NULL)
			c->on_push(c, env, c->arg);
		return;
	}
	s = &c->slots[env->request_id % c->nslots];
	if (s->id != env->request_id)
		return;		/* not ours, or already answered */
	cb = s->cb;
	arg = s->arg;
	sent = s->sent_us;
	s->id = 0;
	c->inflight--;
	if (cb != NULL)
		cb(c, env, sent, arg);
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct bc *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	while (c->state == BC_OPEN) {
		Gridd__V1__Envelope *env;
		uint32_t len = 0;
		uint8_t *p;
		enum frame_status st = frame_peek_evbuffer(in, c->max_frame,
		    &len);

		if (st == FRAME_INCOMPLETE)
			return;
		if (st != FRAME_READY) {
			bc_close(c);
			return;
		}
		p = evbuffer_pullup(in, (ev_ssize_t)(FRAME_HEADER_LEN + len));
		env = p != NULL ? frame_decode(p + FRAME_HEADER_LEN, len,
		    BC_MAX_DECODED) : NULL;
		evbuffer_drain(in, FRAME_HEADER_LEN + len);
		if (env == NULL) {
			bc_close(c);
			return;
		}
		dispatch(c, env);
		frame_envelope_free(env);
	}
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct bc *c = arg;

	if (what & BEV_EVENT_CONNECTED) {
		int one = 1;

		(void)setsockopt(bufferevent_getfd(bev), IPPROTO_TCP,
		    TCP_NODELAY, &one, sizeof(one));
		set_state(c, BC_OPEN);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		bc_close(c);
}

struct bc *
bc_connect(const struct bc_opts *o)
{
	struct bc *c;
	evutil_socket_t fd;

	fd = socket(o->sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	if (o->src != NULL && bind(fd, o->src, o->srclen) != 0) {
		close(fd);
		return NULL;
	}
	c = xcalloc(1, sizeof(*c));
	c->base = o->base;
	c->max_frame = o->max_frame;
	c->on_push = o->on_push;
	c->on_state = o->on_state;
	c->arg = o->arg;
	c->nslots = o->max_inflight > 0 ? o->max_inflight : 1;
	c->slots = xcalloc(c->nslots, sizeof(*c->slots));
	c->next_id = 1;
	c->state = BC_CONNECTING;
	if (o->tls != NULL) {
		SSL *ssl = SSL_new(o->tls);

		c->bev = ssl == NULL ? NULL : bufferevent_openssl_socket_new(
		    o->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
		    BEV_OPT_CLOSE_ON_FREE);
		if (c->bev == NULL && ssl != NULL)
			SSL_free(ssl);
	} else {
		c->bev = bufferevent_socket_new(o->base, fd,
		    BEV_OPT_CLOSE_ON_FREE);
	}
	if (c->bev == NULL) {
		close(fd);
		free(c->slots);
		free(c);
		return NULL;
	}
	bufferevent_setcb(c->bev, read_cb, NULL, event_cb, c);
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) != 0 ||
	    bufferevent_socket_connect(c->bev, o->sa, (int)o->salen) != 0) {
		/* The failure is reported through on_state, after this call
		 * returned, never inside it. */
		bufferevent_free(c->bev);
		c->bev = NULL;
		free(c->slots);
		free(c);
		return NULL;
	}
	return c;
}

bool
bc_send(struct bc *c, const Gridd__V1__Envelope *env)
{
	if (c->state != BC_OPEN || c->bev == NULL)
		return false;
	return frame_encode(bufferevent_get_output(c->bev), env, UINT32_MAX -
	    FRAME_HEADER_LEN);
}

bool
bc_request(struct bc *c, Gridd__V1__Envelope *env, bc_reply_cb cb, void *arg)
{
	struct bc_slot *s;
	uint64_t id;

	if (c->state != BC_OPEN || c->inflight >= c->nslots)
		return false;
	/* Ids whose slot is still taken are skipped: replies may come out
	 * of order. */
	for (size_t tries = 0;; tries++) {
		if (tries >= c->nslots)
			return false;
		id = c->next_id++;
		s = &c->slots[id % c->nslots];
		if (s->id == 0)
			break;
	}
	env->request_id = id;
	s->sent_us = bc_now_us();
	if (!bc_send(c, env))
		return false;
	s->id = id;
	s->cb = cb;
	s->arg = arg;
	c->inflight++;
	return true;
}

bool
bc_is_open(const struct bc *c)
{
	return c != NULL && c->state == BC_OPEN;
}

size_t
bc_inflight(const struct bc *c)
{
	return c->inflight;
}

void *
bc_user(const struct bc *c)
{
	return c->user;
}

void
bc_set_user(struct bc *c, void *user)
{
	c->user = user;
}

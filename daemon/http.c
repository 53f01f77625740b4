/* http.c - the admin HTTP endpoint: /healthz and /metrics on the main loop. */
#include "http.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "db.h"
#include "gridd.h"
#include "log.h"
#include "metrics.h"

/* Probes in flight at once; more get 503 at once instead of piling up
 * queries behind a database that is already slow. */
#define HTTP_MAX_PROBES 16

static struct evhttp *http;
static int probes_in_flight;

/*
 * A health probe waits on two things, the database's answer and its own
 * deadline, and the client may go away before either. It is freed when the
 * database callback has run, whichever happened first.
 */
struct probe {
	struct evhttp_request *req;	/* NULL once answered or gone */
	struct event *timer;
	bool db_done;
};

static void
reply_text(struct evhttp_request *req, int code, const char *reason,
    const char *body)
{
	struct evbuffer *b = evbuffer_new();

	if (b == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain; charset=utf-8");
	evbuffer_add_printf(b, "%s\n", body);
	evhttp_send_reply(req, code, reason, b);
	evbuffer_free(b);
}

static void
probe_finish(struct probe *p, int code, const char *body)
{
	if (p->req != NULL) {
		struct evhttp_connection *c = evhttp_request_get_connection(p->req);

		if (c != NULL)
			evhttp_connection_set_closecb(c, NULL, NULL);
		reply_text(p->req, code, code == 200 ? "OK" :
		    "Service Unavailable", body);
		p->req = NULL;
	}
	if (p->timer != NULL)
		evtimer_del(p->timer);
}

static void
probe_free(struct probe *p)
{
	if (p->timer != NULL)
		event_free(p->timer);
	free(p);
	probes_in_flight--;
}

static void
probe_db_cb(void *arg, const struct db_res *res)
{
	struct probe *p = arg;

	p->db_done = true;
	if (db_res_status(res) == DB_OK)
		probe_finish(p, 200, "ok");
	else
		probe_finish(p, 503, "database: query failed");
	probe_free(p);
}

static void
probe_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	probe_finish(arg, 503, "database: no answer within health_timeout_ms");
}

static void
probe_close_cb(struct evhttp_connection *c, void *arg)
{
	struct probe *p = arg;

	(void)c;
	p->req = NULL;
}

static void
healthz(struct evhttp_request *req)
{
	struct probe *p;
	struct timeval tv;
	int ms = gridd.cfg->health_timeout_ms;

	if (gridd.stopping) {
		reply_text(req, 503, "Service Unavailable", "stopping");
		return;
	}
	if (!db_pool_connected(gridd.db)) {
		reply_text(req, 503, "Service Unavailable",
		    "database: not connected");
		return;
	}
	if (probes_in_flight >= HTTP_MAX_PROBES) {
		reply_text(req, 503, "Service Unavailable",
		    "database: too many probes waiting");
		return;
	}
	p = xcalloc(1, sizeof(*p));
	p->req = req;
	p->timer = evtimer_new(gridd.base, probe_timeout_cb, p);
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	if (p->timer == NULL || evtimer_add(p->timer, &tv) != 0) {
		if (p->timer != NULL)
			event_free(p->timer);
		free(p);
		reply_text(req, 503, "Service Unavailable", "internal: timer");
		return;
	}
	probes_in_flight++;
	if (!db_query(gridd.db, "SELECT 1", 0, NULL, probe_db_cb, p)) {
		probe_finish(p, 503, "database: queue full");
		probe_free(p);
		return;
	}
	evhttp_connection_set_closecb(evhttp_request_get_connection(req),
	    probe_close_cb, p);
}

static void
metrics(struct evhttp_request *req)
{
	struct evbuffer *b = evbuffer_new();

	if (b == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	metrics_write_all(b);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

static void
request_cb(struct evhttp_request *req, void *arg)
{
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

	(void)arg;
	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_send_error(req, 405, "Method Not Allowed");
		return;
	}
	if (path != NULL && strcmp(path, "/healthz") == 0)
		healthz(req);
	else if (path != NULL && strcmp(path, "/metrics") == 0)
		metrics(req);
	else
		evhttp_send_error(req, HTTP_NOTFOUND, NULL);
}

static bool
split_hostport(const char *s, char *host, size_t hostlen, unsigned *port)
{
	const char *colon = strrchr(s, ':');
	size_t n;
	char *end;
	unsigned long p;

	if (colon == NULL)
		return false;
	n = (size_t)(colon - s);
	if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
		s++;
		n -= 2;
	}
	if (n == 0 || n >= hostlen)
		return false;
	memcpy(host, s, n);
	host[n] = '\0';
	p = strtoul(colon + 1, &end, 10);
	if (*end != '\0' || p == 0 || p > 65535)
		return false;
	*port = (unsigned)p;
	return true;
}

bool
http_start(const struct cfg *cfg)
{
	char host[256];
	unsigned port;

	if (cfg->http_listen == NULL)
		return true;
	if (!split_hostport(cfg->http_listen, host, sizeof(host), &port)) {
		log_error("event=http_listen error=\"bad address\" addr=%s",
		    cfg->http_listen);
		return false;
	}
	http = evhttp_new(gridd.base);
	if (http == NULL)
		return false;
	/* Small bounds: this endpoint serves probes and scrapers only. */
	evhttp_set_max_headers_size(http, 8192);
	evhttp_set_max_body_size(http, 0);
	evhttp_set_timeout(http, 10);
	evhttp_set_gencb(http, request_cb, NULL);
	if (evhttp_bind_socket(http, host, (ev_uint16_t)port) != 0) {
		log_error("event=http_listen error=\"cannot bind\" addr=%s",
		    cfg->http_listen);
		evhttp_free(http);
		http = NULL;
		return false;
	}
	log_info("event=http_listen addr=%s", cfg->http_listen);
	return true;
}

void
http_free(void)
{
	if (http != NULL)
		evhttp_free(http);
	http = NULL;
}

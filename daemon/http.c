/* http.c - the admin HTTP endpoint: /healthz and /metrics on the main loop. */
#include "http.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "db.h"
#include "gridd.h"
#include "log.h"
#include "metrics.h"

/* Probes in flight at once; more get 503 at once instead of piling up
 * queries behind a database that is already slow. */
#define HTTP_MAX_PROBES 16

/* How long accepting stops when the process is out of descriptors. */
#define HTTP_ACCEPT_PAUSE_MS 100

static struct evhttp *http;
static struct evconnlistener *http_lev;
static struct event *http_resume_ev;
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

static void
http_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (http_lev != NULL && !gridd.stopping)
		evconnlistener_enable(http_lev);
}

/*
 * libevent's own listener retries a failed accept on every loop turn when
 * no error callback is set: out of descriptors, with clients waiting in the
 * backlog, that is a busy loop. Pause instead, as the API listener does.
 */
static void
http_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 0, HTTP_ACCEPT_PAUSE_MS * 1000 };

	(void)arg;
	if (err == EMFILE || err == ENFILE || err == ENOBUFS ||
	    err == ENOMEM) {
		evconnlistener_disable(lev);
		if (evtimer_add(http_resume_ev, &tv) != 0)
			evconnlistener_enable(lev);
		log_warn("event=http_accept outcome=paused error=\"%s\" "
		    "pause_ms=%d", strerror(err), HTTP_ACCEPT_PAUSE_MS);
		return;
	}
	log_warn("event=http_accept outcome=error error=\"%s\"",
	    strerror(err));
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
	struct evutil_addrinfo hints, *ai = NULL;
	char portstr[8];
	const char *why = NULL;
	int gai = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = EVUTIL_AI_PASSIVE | EVUTIL_AI_ADDRCONFIG;
	snprintf(portstr, sizeof(portstr), "%u", port);
	http_resume_ev = evtimer_new(gridd.base, http_resume_cb, NULL);
	if (http_resume_ev == NULL)
		why = "out of memory";
	else if ((gai = evutil_getaddrinfo(host, portstr, &hints, &ai)) != 0 ||
	    ai == NULL)
		why = gai != 0 ? evutil_gai_strerror(gai) : "no address";
	else {
		http_lev = evconnlistener_new_bind(gridd.base, NULL, NULL,
		    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
		    LEV_OPT_CLOSE_ON_EXEC, 128, ai->ai_addr,
		    (int)ai->ai_addrlen);
		/* Said before freeaddrinfo can touch errno. */
		if (http_lev == NULL)
			why = strerror(errno);
	}
	if (ai != NULL)
		evutil_freeaddrinfo(ai);
	if (http_lev != NULL && evhttp_bind_listener(http, http_lev) == NULL)
		why = "evhttp_bind_listener failed";
	if (why != NULL) {
		log_error("event=http_listen error=\"cannot bind: %s\" addr=%s",
		    why, cfg->http_listen);
		/* evhttp_bind_listener owns the listener only on success. */
		if (http_lev != NULL)
			evconnlistener_free(http_lev);
		http_lev = NULL;
		http_free();
		return false;
	}
	evconnlistener_set_error_cb(http_lev, http_accept_error_cb);
	log_info("event=http_listen addr=%s", cfg->http_listen);
	return true;
}

void
http_free(void)
{
	/* evhttp_free frees the bound listener too. */
	if (http != NULL)
		evhttp_free(http);
	http = NULL;
	http_lev = NULL;
	if (http_resume_ev != NULL)
		event_free(http_resume_ev);
	http_resume_ev = NULL;
}

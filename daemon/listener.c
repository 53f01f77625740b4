/* listener.c - listening sockets, TLS context swaps, admission, accept pauses. */
#include "listener.h"

#include <sys/resource.h>
#include <sys/socket.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "config.h"
#include "conn.h"
#include "gridd.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"

/* Pending connections the kernel may queue per listener (it also caps this
 * at net.core.somaxconn). Large enough for a reconnect storm of mobile
 * clients after a network blip. */
#define LISTEN_BACKLOG		1024

/* When accept fails for want of descriptors, stop accepting this long:
 * the listening socket stays readable, and retrying at once would spin. */
#define ACCEPT_PAUSE_MS		100

/* Descriptors kept for everything that is not a client connection: stdio,
 * the loop's own (epoll, signal and wake-up pipes), the admin HTTP listener
 * and its clients, TLS files read on reload, migrations. The database pool
 * and the listeners are counted on top. */
#define FD_RESERVE_FIXED	64

/* At most one log line per interval for refused connections. */
#define REJECT_LOG_INTERVAL_MS	1000

struct lsn {
	struct evconnlistener *evl;
	bool tls;
	char name[NI_MAXHOST + NI_MAXSERV + 4];	/* [host]:port, for logs */
};

static struct {
	struct lsn v[CFG_MAX_LISTEN];
	size_t n;
	SSL_CTX *ctx;		/* current context for TLS listeners */
	struct event *resume_ev;
	bool paused;
	size_t cap;		/* effective connection cap */
	int spare_fd;		/* given up to refuse a client when out of fds */
	uint64_t refused_since_log;
	int64_t last_refuse_log_ms;
} L = { .spare_fd = -1 };

static void
refused(const char *why)
{
	int64_t now = mono_ms();

	conn_note_rejected();
	L.refused_since_log++;
	if (now - L.last_refuse_log_ms >= REJECT_LOG_INTERVAL_MS) {
		log_warn("event=accept outcome=refused reason=\"%s\" "
		    "connections=%zu cap=%zu refused=%llu", why, conn_count(),
		    L.cap, (unsigned long long)L.refused_since_log);
		L.refused_since_log = 0;
		L.last_refuse_log_ms = now;
	}
}

static void
accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa,
    int salen, void *arg)
{
	struct lsn *l = arg;

	UNUSED(evl);
	if (gridd.stopping) {
		evutil_closesocket(fd);
		return;
	}
	/* Admission: over the cap, accept and close at once so the client
	 * learns now instead of waiting in the backlog. */
	if (conn_count() >= L.cap) {
		evutil_closesocket(fd);
		refused("max_connections reached");
		return;
	}
	if (!conn_accept(fd, sa, salen, l->tls ? L.ctx : NULL))
		log_warn("event=accept outcome=failed listener=%s", l->name);
}

static void
set_enabled(bool on)
{
	for (size_t i = 0; i < L.n; i++) {
		if (on)
			evconnlistener_enable(L.v[i].evl);
		else
			evconnlistener_disable(L.v[i].evl);
	}
}

static void
resume_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	L.paused = false;
	if (!gridd.stopping)
		set_enabled(true);
}

/* Out of descriptors: give up the spare one to accept and close a waiting
 * client (it gets a prompt close, not a hang), then pause accepting. */
static void
shed_one(struct evconnlistener *evl)
{
	int fd;

	if (L.spare_fd < 0)
		return;
	close(L.spare_fd);
	L.spare_fd = -1;
	fd = accept(evconnlistener_get_fd(evl), NULL, NULL);
	if (fd >= 0) {
		close(fd);
		refused("out of file descriptors");
	}
	L.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void
accept_error_cb(struct evconnlistener *evl, void *arg)
{
	struct lsn *l = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 0, ACCEPT_PAUSE_MS * 1000 };

	if (err == EMFILE || err == ENFILE || err == ENOBUFS ||
	    err == ENOMEM) {
		shed_one(evl);
		if (!L.paused) {
			L.paused = true;
			set_enabled(false);
			evtimer_add(L.resume_ev, &tv);
			log_warn("event=accept outcome=paused listener=%s "
			    "error=\"%s\" pause_ms=%d connections=%zu",
			    l->name, strerror(err), ACCEPT_PAUSE_MS,
			    conn_count());
		}
		return;
	}
	log_warn("event=accept outcome=error listener=%s error=\"%s\"",
	    l->name, strerror(err));
}

/*
 * The connection cap that this process can honour: the descriptor limit
 * (raised to its hard maximum first) minus what the daemon itself needs.
 * max_connections above it would fail at accept instead of at admission.
 */
static size_t
compute_cap(const struct cfg *cfg, bool warn)
{
	struct rlimit rl;
	size_t reserve = FD_RESERVE_FIXED + (size_t)cfg->pool_size + 1 +
	    cfg->n_listen;
	size_t want = cfg->max_connections > 0 ?
	    (size_t)cfg->max_connections : 0;
	size_t limit;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return want;
	if (rl.rlim_cur < rl.rlim_max) {
		struct rlimit up = { rl.rlim_max, rl.rlim_max };

		if (setrlimit(RLIMIT_NOFILE, &up) == 0)
			rl = up;
	}
	if (rl.rlim_cur == RLIM_INFINITY)
		return want;
	limit = rl.rlim_cur > reserve ? (size_t)rl.rlim_cur - reserve : 0;
	if (want > limit) {
		if (warn)
			log_warn("event=limits max_connections=%zu "
			    "nofile=%llu reserved=%zu effective=%zu "
			    "reason=\"max_connections above what the "
			    "descriptor limit allows\"", want,
			    (unsigned long long)rl.rlim_cur, reserve, limit);
		return limit;
	}
	return want;
}

static bool
bind_one(struct lsn *l, const struct cfg_listen *cl)
{
	struct addrinfo hints, *ai = NULL;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	char host[NI_MAXHOST], port[NI_MAXSERV];
	int rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	rc = getaddrinfo(cl->host && cl->host[0] ? cl->host : NULL, cl->port,
	    &hints, &ai);
	if (rc != 0 || ai == NULL) {
		log_error("event=listen address=%s:%s error=\"%s\"",
		    cl->host ? cl->host : "*", cl->port, gai_strerror(rc));
		return false;
	}
	l->tls = cl->tls;
	l->evl = evconnlistener_new_bind(gridd.base, accept_cb, l,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
	    LISTEN_BACKLOG, ai->ai_addr, (int)ai->ai_addrlen);
	if (l->evl == NULL) {
		log_error("event=listen address=%s:%s error=\"%s\"",
		    cl->host ? cl->host : "*", cl->port, strerror(errno));
		freeaddrinfo(ai);
		return false;
	}
	freeaddrinfo(ai);
	evconnlistener_set_error_cb(l->evl, accept_error_cb);
	/* The bound address, with the port the kernel chose for port 0. */
	if (getsockname(evconnlistener_get_fd(l->evl), (struct sockaddr *)&ss,
	    &sslen) != 0 || getnameinfo((struct sockaddr *)&ss, sslen, host,
	    sizeof(host), port, sizeof(port), NI_NUMERICHOST |
	    NI_NUMERICSERV) != 0) {
		snprintf(host, sizeof(host), "%s", cl->host ? cl->host : "*");
		snprintf(port, sizeof(port), "%s", cl->port);
	}
	snprintf(l->name, sizeof(l->name), "%s%s%s:%s",
	    strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "",
	    port);
	log_info("event=listen address=%s tls=%s backlog=%d", l->name,
	    l->tls ? "yes" : "no", LISTEN_BACKLOG);
	return true;
}

static bool
wants_tls(const struct cfg *cfg)
{
	for (size_t i = 0; i < cfg->n_listen; i++)
		if (cfg->listen[i].tls)
			return true;
	return false;
}

bool
listener_start(const struct cfg *cfg)
{
	char err[512];

	if (L.n > 0)
		return false;
	L.cap = compute_cap(cfg, true);
	if (L.cap == 0) {
		log_error("event=listen error=\"no descriptors left for "
		    "client connections\"");
		return false;
	}
	log_info("event=limits max_connections=%zu", L.cap);
	if (wants_tls(cfg) && (L.ctx = tls_ctx_new(cfg, err, sizeof(err))) ==
	    NULL) {
		log_error("event=tls error=\"%s\"", err);
		return false;
	}
	L.resume_ev = evtimer_new(gridd.base, resume_cb, NULL);
	if (L.resume_ev == NULL) {
		listener_free();
		return false;
	}
	for (size_t i = 0; i < cfg->n_listen; i++) {
		if (!bind_one(&L.v[L.n], &cfg->listen[i])) {
			listener_free();
			return false;
		}
		L.n++;
	}
	L.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	metrics_register("conn", conn_metrics_write);
	return true;
}

bool
listener_reload(const struct cfg *newcfg)
{
	char err[512];
	SSL_CTX *fresh = NULL, *old;

	/* Build first; the running context stays untouched on any failure.
	 * Listen addresses are restart-only, so the running TLS listeners
	 * decide whether a context is needed. */
	if (L.ctx != NULL) {
		if ((fresh = tls_ctx_new(newcfg, err, sizeof(err))) == NULL) {
			log_error("event=reload tls=failed error=\"%s\"", err);
			return false;
		}
	}
	/* max_connections is restart-only: the cap stays as started. */
	old = L.ctx;
	L.ctx = fresh;
	/* Connections made from the old context hold their own reference. */
	tls_ctx_free(old);
	if (fresh != NULL)
		log_info("event=reload tls=reloaded");
	return true;
}

void
listener_stop(void)
{
	for (size_t i = 0; i < L.n; i++) {
		log_info("event=listen address=%s outcome=closed", L.v[i].name);
		evconnlistener_free(L.v[i].evl);
		L.v[i].evl = NULL;
	}
	L.n = 0;
	if (L.resume_ev != NULL)
		evtimer_del(L.resume_ev);
}

void
listener_free(void)
{
	listener_stop();
	tls_ctx_free(L.ctx);
	L.ctx = NULL;
	if (L.resume_ev != NULL) {
		event_free(L.resume_ev);
		L.resume_ev = NULL;
	}
	if (L.spare_fd >= 0) {
		close(L.spare_fd);
		L.spare_fd = -1;
	}
}

/* main.c - start-up order, the event loop, reload and orderly shutdown. */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buildconf.h"
#include "config.h"
#include "conn.h"
#include "db.h"
#include "dispatch.h"
#include "events.h"
#include "feed.h"
#include "grid.h"
#include "gridd.h"
#include "http.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "migrate.h"
#include "report.h"
#include "sdnotify.h"
#include "session.h"
#include "signals.h"

/* Exit statuses: 2 is the config contract (DESIGN.md section 6). */
#define EXIT_CONFIG 2

/* How often shutdown looks whether in-flight work has finished. */
#define DRAIN_POLL_MS 50

/* Seconds migrate_run waits for the database at start-up. */
#define MIGRATE_TIMEOUT_S 30

struct gridd gridd;

static struct cfg *running_cfg;
static struct event *drain_ev;
static int64_t drain_deadline;

static void
usage(FILE *fp)
{
	fprintf(fp,
	    "usage: gridd -c FILE [--check]\n"
	    "       gridd --config-reference\n"
	    "       gridd --version\n"
	    "\n"
	    "  -c, --config FILE    configuration file (INI)\n"
	    "      --check          validate the configuration and exit 0 or 2\n"
	    "      --config-reference\n"
	    "                       print every configuration key as Markdown\n"
	    "  -V, --version        print the version\n");
}

static bool
load_config(const char *path, struct cfg **out)
{
	struct cfg_errors errs = { 0 };

	if (cfg_load(path, out, &errs))
		return true;
	cfg_errors_print(&errs, stderr);
	cfg_errors_clear(&errs);
	return false;
}

static void
pool_opts(const struct cfg *cfg, struct db_pool_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->conninfo = cfg->conninfo;
	o->pool_size = cfg->pool_size;
	o->query_timeout_ms = cfg->query_timeout_ms;
	o->max_waiting = cfg->max_waiting;
	o->reconnect_max_ms = cfg->reconnect_max_ms;
	o->replan_interval_ms = cfg->replan_interval_s * 1000;
	/* Unique per process, the pid first so that the server's cut at 63
	 * bytes keeps it: dispatch at commit finds the sending process's
	 * settings by it. */
	static char app_name[64];

	snprintf(app_name, sizeof(app_name), "gridd %ld %s", (long)getpid(),
	    gridd.instance != NULL ? gridd.instance : "");
	o->application_name = app_name;
}

/*
 * SIGHUP: parse into a new config, build what can fail (TLS contexts), and
 * only then swap. Any failure leaves the running config untouched.
 */
static void
reload(void)
{
	struct cfg *next = NULL;
	struct cfg_errors errs = { 0 };
	struct db_pool_opts o;

	sdnotify_reloading();
	if (!cfg_load(running_cfg->path, &next, &errs)) {
		for (size_t i = 0; i < errs.n; i++)
			log_error("event=reload outcome=failed file=%s line=%d "
			    "key=%s reason=\"%s\"", errs.v[i].file,
			    errs.v[i].line, errs.v[i].key, errs.v[i].reason);
		log_error("event=reload outcome=failed errors=%zu "
		    "action=keep_running_config", errs.n);
		cfg_errors_clear(&errs);
		sdnotify_ready();
		return;
	}
	if (!listener_reload(next)) {
		log_error("event=reload outcome=failed reason=tls "
		    "action=keep_running_config");
		cfg_free(next);
		sdnotify_ready();
		return;
	}
	cfg_warn_restart_only(running_cfg, next);
	log_set_level((enum log_level)next->log_level);
	pool_opts(next, &o);
	db_pool_reconfigure(gridd.db, &o);

	struct cfg *old = running_cfg;

	running_cfg = next;
	gridd.cfg = next;
	/* Before old is freed: the grid compares its keys with next's. */
	grid_config_changed(old, next);
	session_config_changed(old, next);
	feed_config_changed();
	cfg_free(old);
	log_info("event=reload outcome=ok path=%s", next->path);
	sdnotify_ready();
}

static void
drain_cb(evutil_socket_t fd, short what, void *arg)
{
	int pending = db_pool_pending(gridd.db);
	bool late = mono_ms() >= drain_deadline;

	(void)fd;
	(void)what;
	(void)arg;
	if (pending > 0 && !late) {
		struct timeval tv = { 0, DRAIN_POLL_MS * 1000 };

		if (event_add(drain_ev, &tv) == 0)
			return;
	}
	if (pending > 0)
		log_warn("event=shutdown db_pending=%d reason=timeout", pending);
	conn_close_all("shutdown");
	event_base_loopexit(gridd.base, NULL);
}

/*
 * SIGTERM/SIGINT: stop accepting, let database work already sent finish
 * (bounded by shutdown_timeout_s) so that what was acknowledged or is about
 * to be is not cut off, then close every connection and leave the loop.
 */
static void
stop(int signo)
{
	struct timeval now = { 0, 0 };

	(void)signo;
	if (gridd.stopping)
		return;
	gridd.stopping = true;
	sdnotify_stopping();
	listener_stop();
	drain_deadline = mono_ms() + (int64_t)gridd.cfg->shutdown_timeout_s * 1000;
	log_info("event=shutdown phase=drain connections=%zu db_pending=%d",
	    conn_count(), db_pool_pending(gridd.db));
	drain_ev = evtimer_new(gridd.base, drain_cb, NULL);
	if (drain_ev == NULL || event_add(drain_ev, &now) != 0)
		event_base_loopexit(gridd.base, NULL);
}

static void
db_metrics(struct evbuffer *out)
{
	struct db_stats st;

	db_pool_stats(gridd.db, &st);
	metrics_family(out, "gridd_db_pool_connections", "gauge",
	    "Database pool connections by state.");
	metrics_sample(out, "gridd_db_pool_connections", "state=\"size\"",
	    st.size);
	metrics_sample(out, "gridd_db_pool_connections",
	    "state=\"connected\"", st.connected);
	metrics_sample(out, "gridd_db_pool_connections", "state=\"busy\"",
	    st.busy);
	metrics_family(out, "gridd_db_waiting", "gauge",
	    "Statements queued for a free connection.");
	metrics_sample(out, "gridd_db_waiting", NULL, st.waiting);
	metrics_family(out, "gridd_db_queries_total", "counter",
	    "Statements and batches sent.");
	metrics_sample(out, "gridd_db_queries_total", NULL, (double)st.queries);
	metrics_family(out, "gridd_db_errors_total", "counter",
	    "Statements that failed, by kind.");
	metrics_sample(out, "gridd_db_errors_total", "kind=\"error\"",
	    (double)st.errors);
	metrics_sample(out, "gridd_db_errors_total", "kind=\"timeout\"",
	    (double)st.timeouts);
	metrics_family(out, "gridd_db_reconnects_total", "counter",
	    "Connections re-established after a loss.");
	metrics_sample(out, "gridd_db_reconnects_total", NULL,
	    (double)st.reconnects);
	metrics_family(out, "gridd_db_replans_total", "counter",
	    "Times a connection dropped its cached plans "
	    "(replan_interval_s).");
	metrics_sample(out, "gridd_db_replans_total", NULL,
	    (double)st.replans);
	metrics_family(out, "gridd_db_prepares_total", "counter",
	    "Statements prepared on a connection: the ingest call, once per "
	    "connection and again after its prepared form went stale.");
	metrics_sample(out, "gridd_db_prepares_total", NULL,
	    (double)st.prepares);
}

static void
set_instance(void)
{
	char host[256];
	char buf[300];

	if (gethostname(host, sizeof(host)) != 0)
		strcpy(host, "unknown");
	host[sizeof(host) - 1] = '\0';
	snprintf(buf, sizeof(buf), "%s:%ld", host, (long)getpid());
	gridd.instance = xstrdup(buf);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check", no_argument, NULL, 'k' },
		{ "config-reference", no_argument, NULL, 'r' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = NULL, *err = NULL;
	bool check = false;
	int ch;

	while ((ch = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			path = optarg;
			break;
		case 'k':
			check = true;
			break;
		case 'r':
			cfg_write_reference(stdout);
			return 0;
		case 'V':
			printf("gridd %s\n", GRIDD_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_CONFIG;
		}
	}
	if (path == NULL || optind != argc) {
		usage(stderr);
		return EXIT_CONFIG;
	}
	if (!load_config(path, &running_cfg))
		return EXIT_CONFIG;
	if (check) {
		printf("%s: ok\n", path);
		cfg_free(running_cfg);
		return 0;
	}

	gridd.cfg = running_cfg;
	gridd.started_ms = now_ms();
	log_set_level((enum log_level)running_cfg->log_level);
	set_instance();
	log_info("event=start version=%s instance=%s config=%s", GRIDD_VERSION,
	    gridd.instance, path);

	/* The login hashing thread posts results back into the loop. */
	if (evthread_use_pthreads() != 0)
		log_fatal(1, "event=start error=\"libevent threads unavailable\"");
	gridd.base = event_base_new();
	if (gridd.base == NULL)
		log_fatal(1, "event=start error=\"event_base_new failed\"");

	/* The schema must be current before anyone is served. */
	if (!migrate_run(running_cfg->conninfo, running_cfg->migrations_dir,
	    MIGRATE_TIMEOUT_S))
		log_fatal(1, "event=start error=\"migrations failed\"");

	struct db_pool_opts o;

	pool_opts(running_cfg, &o);
	gridd.db = db_pool_new(gridd.base, &o, &err);
	if (gridd.db == NULL)
		log_fatal(EXIT_CONFIG, "event=start error=\"database: %s\"", err);

	static const struct signals_handlers sh = { reload, stop };

	if (!signals_init(gridd.base, &sh))
		log_fatal(1, "event=start error=\"signal setup failed\"");
	if (!session_init())
		log_fatal(1, "event=start error=\"session setup failed\"");
	if (!grid_init())
		log_fatal(1, "event=start error=\"grid setup failed\"");
	if (!disp_init())
		log_fatal(1, "event=start error=\"dispatch setup failed\"");
	if (!feed_init())
		log_fatal(1, "event=start error=\"feed setup failed\"");
	if (!events_init())
		log_fatal(1, "event=start error=\"events setup failed\"");
	if (!report_init())
		log_fatal(1, "event=start error=\"report setup failed\"");
	metrics_register("db", db_metrics);
	if (!listener_start(running_cfg))
		log_fatal(1, "event=start error=\"cannot listen\"");
	if (!http_start(running_cfg))
		log_fatal(1, "event=start error=\"cannot listen on admin_http\"");

	sdnotify_ready();
	log_info("event=ready listeners=%zu", running_cfg->n_listen);

	if (event_base_dispatch(gridd.base) < 0)
		log_error("event=loop error=\"event_base_dispatch failed\"");

	/* Orderly teardown frees everything so that leak checkers report
	 * only real leaks. */
	listener_free();
	session_shutdown();
	grid_shutdown();
	/* The pool first: its failing callbacks still find their connections
	 * and probes alive, and replies to closing connections are dropped. */
	db_pool_free(gridd.db);
	disp_shutdown();
	feed_shutdown();
	events_shutdown();
	report_shutdown();
	conn_close_all("shutdown");
	conn_free_all();
	http_free();
	metrics_unregister_all();
	signals_free();
	if (drain_ev != NULL)
		event_free(drain_ev);
	event_base_free(gridd.base);
	libevent_global_shutdown();
	log_info("event=stop outcome=ok");
	cfg_free(running_cfg);
	free(gridd.instance);
	return 0;
}

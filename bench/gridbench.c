/* gridbench.c - load generator and benchmark for gridd over its real wire API. */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "bclient.h"
#include "bdb.h"
#include "bmetrics.h"
#include "bstats.h"
#include "util.h"

/*
 * gridbench SCENARIO [options]
 *
 *   ingest       departments push batches of incidents (closed loop, or
 *                --rate for an open loop); acknowledged incidents/s and
 *                reply latency
 *   dispatch     workers on duty, one department pushes at --rate;
 *                push reply -> offer latency, offers/s, accept -> update
 *   connections  --conns idle authenticated workers pinging; daemon RSS per
 *                connection and ping latency
 *   partition    the partitioner (partbench) on the sample and a generated
 *                city; time and peak RSS
 *   baseline     PostgreSQL alone: the same incident rows through libpq,
 *                single-row and multi-row commits
 *
 * Every loop is bounded by --duration and --max-requests; the daemon must be
 * on the loopback interface. Secrets come from the environment:
 * GRIDBENCH_DEPTS="id:key,id:key", GRIDBENCH_WORKER_PASSWORD (or the
 * matching options, for a throwaway bench config).
 */

/* Grace after the sending window for replies and offers still on the way. */
#define DRAIN_GRACE_S		5.0
/* Hard stop for any scenario beyond its duration: a daemon that stops
 * answering must not keep the benchmark waiting forever. */
#define HARD_STOP_EXTRA_S	120.0
/* Login attempts answered RATE_LIMITED/UNAVAILABLE are retried this often,
 * with this delay. */
#define LOGIN_RETRIES		50
#define LOGIN_RETRY_MS		200
/* Replies larger than this are a broken daemon. */
#define MAX_REPLY_FRAME		(64u * 1024 * 1024)
/* Recent acknowledged items kept for duplicates and merges. */
#define RECENT_CAP		4096
#define MAX_DEPTS		64
#define MAX_CATEGORIES		16
/* Open-loop requests in flight per connection before sends are counted as
 * dropped (the daemon is far behind the offered rate). */
#define OPEN_LOOP_INFLIGHT	4096
#define EXT_ID_MAX		96

enum scenario {
	SC_INGEST,
	SC_DISPATCH,
	SC_CONNECTIONS,
	SC_PARTITION,
	SC_BASELINE,
};

struct dept {
	char id[BDB_ID_MAX + 1];
	char key[256];
};

static struct {
	enum scenario sc;
	const char *addr;
	struct sockaddr_storage ss;
	socklen_t sslen;
	bool tls;
	const char *ca;
	const char *db;
	struct dept depts[MAX_DEPTS];
	int ndepts;
	const char *worker_prefix;
	const char *worker_password;
	int pbkdf2_iter;
	double duration;
	double warmup;
	int64_t max_requests;
	const char *json;
	const char *trace;	/* ingest: one line per answered batch */
	const char *metrics;	/* the daemon's admin_http, or NULL */
	const char *categories[MAX_CATEGORIES];
	int ncategories;
	const char *negative_category;
	double dup_share, merge_share, neg_share;
	int batch;
	int inflight;
	double rate;
	int workers;
	int conns;
	int procs;
	double ping_interval;
	int login_concurrency;
	int db_conns;
	double merge_radius;
	int merge_window;
	long pid;
	bool src_spread;
	const char *base_mode;
	const char *task_type;
	const char *partbench;
	const char *sample_dir;
	long city_buildings;
	long city_communities;
	bool quiet;
	char tag[32];
} O = {
	.addr = "127.0.0.1:7700",
	.worker_prefix = "bench-w",
	.pbkdf2_iter = 1000,
	.duration = 5,
	.warmup = 1,
	.max_requests = 10000000,
	.dup_share = 0.05,
	.merge_share = 0.05,
	.neg_share = 0.02,
	.batch = 100,
	.inflight = 2,
	.workers = 1000,
	.conns = 1000,
	.procs = 1,
	.ping_interval = 5,
	.login_concurrency = 64,
	.db_conns = 4,
	.merge_radius = 50,
	.merge_window = 3600,
	.src_spread = true,
	.base_mode = "multi",
	.task_type = "",
	.city_buildings = 1000000,
	.city_communities = 200,
};

static struct event_base *base;
static SSL_CTX *tls_ctx;
static struct bpoints points;
static uint64_t rng_state = 0x853c49e6748fea9bull;

static void PRINTF_LIKE(1, 2)
die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("gridbench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void PRINTF_LIKE(1, 2)
note(const char *fmt, ...)
{
	va_list ap;

	if (O.quiet)
		return;
	va_start(ap, fmt);
	fputs("gridbench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static uint64_t
rnd(void)
{
	/* xorshift64*: fast, and reproducible for one seed. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static double
rnd01(void)
{
	return (double)(rnd() >> 11) / (double)(1ull << 53);
}

static int64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A building point moved up to m metres in each direction. */
static void
jitter(const struct bpoint *p, double m, double *lon, double *lat)
{
	double dlat = m / 111320.0;
	double dlon = m / (111320.0 * cos(p->lat * M_PI / 180.0));

	*lon = p->lon + (rnd01() * 2 - 1) * dlon;
	*lat = p->lat + (rnd01() * 2 - 1) * dlat;
}

static void
raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static rlim_t
nofile_limit(void)
{
	struct rlimit rl;

	return getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
}

/* ---- the daemon's process -------------------------------------------------- */

/* The inode of the socket listening on 127.0.0.1:port, from /proc/net/tcp. */
static unsigned long
listen_inode(unsigned port)
{
	FILE *f = fopen("/proc/net/tcp", "r");
	char line[512];
	unsigned long inode = 0;

	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		unsigned la, lp, ra, rp, st;
		unsigned long ino;

		if (sscanf(line, " %*d: %x:%x %x:%x %x %*x:%*x %*x:%*x %*x "
		    "%*u %*d %lu", &la, &lp, &ra, &rp, &st, &ino) != 6)
			continue;
		if (lp == port && st == 0x0A) {	/* TCP_LISTEN */
			inode = ino;
			break;
		}
	}
	fclose(f);
	return inode;
}

/* The process holding the listening socket of the daemon's API port. */
static long
find_daemon_pid(unsigned port)
{
	unsigned long inode = listen_inode(port);
	char want[64], path[600], link[128];
	DIR *proc, *fds;
	struct dirent *d, *e;
	long found = 0;

	if (inode == 0 || (proc = opendir("/proc")) == NULL)
		return 0;
	snprintf(want, sizeof(want), "socket:[%lu]", inode);
	while (found == 0 && (d = readdir(proc)) != NULL) {
		if (!isdigit((unsigned char)d->d_name[0]))
			continue;
		snprintf(path, sizeof(path), "/proc/%s/fd", d->d_name);
		if ((fds = opendir(path)) == NULL)
			continue;
		while ((e = readdir(fds)) != NULL) {
			ssize_t n;

			snprintf(path, sizeof(path), "/proc/%s/fd/%s",
			    d->d_name, e->d_name);
			n = readlink(path, link, sizeof(link) - 1);
			if (n <= 0)
				continue;
			link[n] = '\0';
			if (strcmp(link, want) == 0) {
				found = strtol(d->d_name, NULL, 10);
				break;
			}
		}
		closedir(fds);
	}
	closedir(proc);
	return found;
}

/* VmRSS of pid in KiB, or -1. */
static long
rss_kb(long pid)
{
	char path[64], line[256];
	FILE *f;
	long kb = -1;

	snprintf(path, sizeof(path), "/proc/%ld/status", pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL)
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

static unsigned
daemon_port(void)
{
	return ntohs(((struct sockaddr_in *)&O.ss)->sin_port);
}

static long
daemon_pid(void)
{
	if (O.pid > 0)
		return O.pid;
	return O.pid = find_daemon_pid(daemon_port());
}

/* ---- sessions: connect, log in, retry --------------------------------------- */

enum sess_state {
	SS_IDLE,
	SS_CONNECTING,
	SS_LOGIN,
	SS_READY,
	SS_DEAD,
};

struct sess;
typedef void (*sess_fn)(struct sess *s);

struct sess {
	struct bc *c;
	enum sess_state st;
	Gridd__V1__Role role;
	const char *principal;
	const char *secret;
	int idx;
	int retries;
	uint64_t last_seq;
	char why[128];		/* why it died */
	sess_fn on_ready, on_dead;
	bc_push_cb on_push;
	size_t max_inflight;
	struct event *retry_ev;
};

static struct {
	int logins_busy;	/* connecting or logging in */
	int ready, dead;
	int login_errors;
	struct sess **queue;	/* waiting for a login slot */
	size_t nqueue, qhead;
	int src_next;
} R;

static void sess_start(struct sess *s);
static void login_reply_cb(struct bc *c, const Gridd__V1__Envelope *env,
    int64_t sent, void *arg);

static void
sess_set(struct sess *s, enum sess_state st)
{
	enum sess_state was = s->st;

	if (was == st)
		return;
	s->st = st;
	if ((was == SS_CONNECTING || was == SS_LOGIN) &&
	    st != SS_CONNECTING && st != SS_LOGIN) {
		R.logins_busy--;
		/* A slot freed: the next queued session may log in. */
		while (R.qhead < R.nqueue &&
		    R.logins_busy < O.login_concurrency)
			sess_start(R.queue[R.qhead++]);
	}
	if (st == SS_READY) {
		R.ready++;
		if (s->on_ready)
			s->on_ready(s);
	} else if (st == SS_DEAD) {
		if (was == SS_READY)
			R.ready--;
		R.dead++;
		if (s->on_dead)
			s->on_dead(s);
	}
}

static void
sess_die(struct sess *s, const char *why)
{
	if (s->st == SS_DEAD)
		return;
	snprintf(s->why, sizeof(s->why), "%s", why);
	if (s->c != NULL) {
		struct bc *c = s->c;

		s->c = NULL;
		bc_set_user(c, NULL);
		bc_close(c);
	}
	sess_set(s, SS_DEAD);
}

static void
retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sess *s = arg;

	UNUSED(fd);
	UNUSED(what);
	if (s->st == SS_LOGIN && s->c != NULL) {
		Gridd__V1__Login login = GRIDD__V1__LOGIN__INIT;
		Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;

		login.role = s->role;
		login.principal = (char *)s->principal;
		login.secret = (char *)s->secret;
		env.body_case = GRIDD__V1__ENVELOPE__BODY_LOGIN;
		env.login = &login;
		if (!bc_request(s->c, &env, login_reply_cb, s))
			sess_die(s, "cannot send login");
	}
}

static void
login_reply_cb(struct bc *c, const Gridd__V1__Envelope *env, int64_t sent,
    void *arg)
{
	struct sess *s = arg;

	UNUSED(c);
	UNUSED(sent);
	if (env->body_case == GRIDD__V1__ENVELOPE__BODY_LOGIN_REPLY) {
		s->last_seq = env->login_reply->last_seq;
		sess_set(s, SS_READY);
		return;
	}
	if (env->body_case == GRIDD__V1__ENVELOPE__BODY_ERROR &&
	    (env->error->code == GRIDD__V1__ERROR_CODE__RATE_LIMITED ||
	    env->error->code == GRIDD__V1__ERROR_CODE__UNAVAILABLE) &&
	    s->retries++ < LOGIN_RETRIES) {
		struct timeval tv = { 0, LOGIN_RETRY_MS * 1000 };

		if (s->retry_ev == NULL)
			s->retry_ev = evtimer_new(base, retry_cb, s);
		if (s->retry_ev != NULL && evtimer_add(s->retry_ev, &tv) == 0)
			return;
	}
	R.login_errors++;
	sess_die(s, env->body_case == GRIDD__V1__ENVELOPE__BODY_ERROR &&
	    env->error->message ? env->error->message : "login refused");
}

static void
sess_state_cb(struct bc *c, bool ok, void *arg)
{
	struct sess *s = arg;

	UNUSED(c);
	if (s == NULL || s->c == NULL)
		return;
	if (!ok) {
		s->c = NULL;	/* closed by bclient itself */
		sess_die(s, s->st == SS_CONNECTING ? "connect failed" :
		    "connection closed");
		return;
	}
	sess_set(s, SS_LOGIN);
	retry_cb(-1, 0, s);
}

static void
sess_push_cb(struct bc *c, const Gridd__V1__Envelope *env, void *arg)
{
	struct sess *s = arg;

	UNUSED(c);
	if (s != NULL && s->on_push != NULL)
		s->on_push(c, env, s);
}

/* A source address on the loopback network for connection i: spreading
 * the sources widens the (source, port) space past one address's
 * ephemeral ports when tens of thousands of sockets churn. */
static bool
source_for(int i, struct sockaddr_in *src)
{
	if (!O.src_spread || O.ss.ss_family != AF_INET)
		return false;
	memset(src, 0, sizeof(*src));
	src->sin_family = AF_INET;
	src->sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)(2 + i % 250));
	return true;
}

static void
sess_start(struct sess *s)
{
	struct sockaddr_in src;
	struct bc_opts o = {
		.base = base,
		.sa = (struct sockaddr *)&O.ss,
		.salen = O.sslen,
		.tls = tls_ctx,
		.max_frame = MAX_REPLY_FRAME,
		.max_inflight = s->max_inflight ? s->max_inflight : 4,
		.on_push = sess_push_cb,
		.on_state = sess_state_cb,
		.arg = s,
	};

	if (source_for(R.src_next++, &src)) {
		o.src = (struct sockaddr *)&src;
		o.srclen = sizeof(src);
	}
	R.logins_busy++;
	s->st = SS_CONNECTING;
	s->c = bc_connect(&o);
	if (s->c == NULL) {
		s->st = SS_IDLE;
		R.logins_busy--;
		snprintf(s->why, sizeof(s->why), "socket: %s",
		    strerror(errno));
		s->st = SS_DEAD;
		R.dead++;
		if (s->on_dead)
			s->on_dead(s);
		return;
	}
	bc_set_user(s->c, s);
}

/* Queues s; at most login_concurrency sessions connect and log in at
 * once (the daemon hashes worker passwords on one thread). */
static void
sess_enqueue(struct sess *s)
{
	if (R.logins_busy < O.login_concurrency) {
		sess_start(s);
		return;
	}
	R.queue = xreallocarray(R.queue, R.nqueue + 1, sizeof(*R.queue));
	R.queue[R.nqueue++] = s;
}

/* ---- loop helpers ------------------------------------------------------------ */

static bool loop_done;

/* Runs the loop until pred() or the deadline (monotonic us). */
static void
run_until(bool (*pred)(void), int64_t deadline)
{
	struct timeval tick = { 0, 10000 };

	loop_done = false;
	while (!loop_done && bc_now_us() < deadline && !(pred && pred())) {
		event_base_loopexit(base, &tick);
		event_base_dispatch(base);
	}
}

static void
env_ping(Gridd__V1__Envelope *env, Gridd__V1__Ping *ping)
{
	gridd__v1__ping__init(ping);
	gridd__v1__envelope__init(env);
	env->body_case = GRIDD__V1__ENVELOPE__BODY_PING;
	env->ping = ping;
}

static const char *
error_text(const Gridd__V1__Envelope *env)
{
	static char buf[200];

	if (env->body_case != GRIDD__V1__ENVELOPE__BODY_ERROR)
		return "unexpected reply";
	snprintf(buf, sizeof(buf), "%s: %s",
	    protobuf_c_enum_descriptor_get_value(
	    &gridd__v1__error_code__descriptor, (int)env->error->code) ?
	    protobuf_c_enum_descriptor_get_value(
	    &gridd__v1__error_code__descriptor,
	    (int)env->error->code)->name : "?",
	    env->error->message ? env->error->message : "");
	return buf;
}

/* ---- the daemon's ingest transactions (--metrics) ------------------------ */

/*
 * Read from gridd's /metrics before a run's clock starts and after its
 * drain: how many ingest transactions carried the run, their size, and
 * their seconds per second of run. A transaction's seconds run from its
 * submission to its commit (a wait for a pool connection or a lock
 * included), and only transactions completed within the window count, so
 * with transactions of a second or more the figure is coarse. Near 1,
 * with transactions one at a time, the database backend never idled: a
 * figure taken there sits at a knee where a few per cent of noise builds
 * a backlog.
 */
struct txwin {
	bool ok;
	int64_t t0;
	struct bm_push a;
};

static void
txwin_begin(struct txwin *t)
{
	char err[256];

	t->ok = false;
	if (O.metrics == NULL)
		return;
	if (!bm_read_push(O.metrics, &t->a, err, sizeof(err))) {
		note("--metrics %s: %s; no transaction figures", O.metrics, err);
		return;
	}
	t->t0 = bc_now_us();
	t->ok = true;
}

/* Writes the figures into w and a summary into line ("" when none). */
static void
txwin_end(struct txwin *t, struct jw *w, char *line, size_t len)
{
	struct bm_push b;
	char err[256];
	double secs, n;

	line[0] = '\0';
	if (!t->ok)
		return;
	if (!bm_read_push(O.metrics, &b, err, sizeof(err))) {
		note("--metrics %s: %s; no transaction figures", O.metrics, err);
		return;
	}
	secs = (double)(bc_now_us() - t->t0) / 1e6;
	n = b.txns - t->a.txns;
	if (n < 0 || b.txn_seconds < t->a.txn_seconds) {
		note("--metrics %s: the daemon's counters went back (a "
		    "restart?); no transaction figures", O.metrics);
		return;
	}
	jw_obj(w, "push_transactions");
	jw_num(w, "count", n);
	jw_num(w, "items_per_txn", n > 0 ? (b.items - t->a.items) / n : 0);
	jw_num(w, "seconds", b.txn_seconds - t->a.txn_seconds);
	jw_num(w, "run_seconds", secs);
	jw_num(w, "seconds_per_s", secs > 0 ?
	    (b.txn_seconds - t->a.txn_seconds) / secs : 0);
	jw_close(w);
	snprintf(line, len, " txns=%.0f items/txn=%.0f txn_s/s=%.2f", n,
	    n > 0 ? (b.items - t->a.items) / n : 0, secs > 0 ?
	    (b.txn_seconds - t->a.txn_seconds) / secs : 0);
}

/* ---- ingest ---------------------------------------------------------------- */

struct item {
	char ext_id[EXT_ID_MAX];
	const char *category;
	double lon, lat;
};

struct recent {
	struct item v[RECENT_CAP];
	size_t n, next;
};

struct dconn {
	struct sess s;
	int dept;
	uint64_t seq;
	struct recent mine;	/* acknowledged items: replayed as duplicates */
};

struct batch {
	struct dconn *d;
	int64_t sched_us;
	bool measured;
	int n;
	struct item items[];
};

static struct {
	struct dconn *d;
	int nd;
	struct recent accepted;	/* ACCEPTED items of any department */
	int recent_dept[RECENT_CAP];
	int64_t t_start, t_warm, t_stop, t_last_reply;
	int64_t sent_batches, sent_items, dropped_batches;
	int64_t acked, acked_measured;
	int64_t outcome[5];
	int64_t neg_rejects, other_rejects, error_replies;
	int64_t planned_dup, planned_merge, planned_neg;
	struct lat lat;
	char first_error[256];
	bool stopping;
	struct event *tick;
	double sched_batches;	/* open loop: batches due so far */
	FILE *trace;
} I;

static void
recent_put(struct recent *r, const struct item *it)
{
	r->v[r->next] = *it;
	r->next = (r->next + 1) % RECENT_CAP;
	if (r->n < RECENT_CAP)
		r->n++;
}

static void
make_item(struct dconn *d, struct item *it)
{
	double u = rnd01();

	if (u < O.dup_share && d->mine.n > 0) {
		/* The same (department, ext_id) and content again. */
		*it = d->mine.v[rnd() % d->mine.n];
		I.planned_dup++;
		return;
	}
	u -= O.dup_share;
	snprintf(it->ext_id, sizeof(it->ext_id), "%s-%d-%llu", O.tag, d->dept,
	    (unsigned long long)d->seq++);
	if (u < O.merge_share && I.accepted.n > 0) {
		/* Another department's incident, a metre away: merges. */
		for (int tries = 0; tries < 4; tries++) {
			size_t k = rnd() % I.accepted.n;
			struct bpoint p = { 0 };

			if (I.recent_dept[k] == d->dept && I.nd > 1)
				continue;
			p.lon = I.accepted.v[k].lon;
			p.lat = I.accepted.v[k].lat;
			it->category = I.accepted.v[k].category;
			jitter(&p, 1.0, &it->lon, &it->lat);
			I.planned_merge++;
			return;
		}
	}
	u -= O.merge_share;
	jitter(&points.v[rnd() % points.n], 3.0, &it->lon, &it->lat);
	if (u < O.neg_share && O.negative_category != NULL) {
		it->category = O.negative_category;
		I.planned_neg++;
		return;
	}
	it->category = O.categories[rnd() % (uint64_t)O.ncategories];
}

static void ingest_send(struct dconn *d, int64_t sched);

static void
ingest_reply_cb(struct bc *c, const Gridd__V1__Envelope *env, int64_t sent,
    void *arg)
{
	struct batch *b = arg;
	struct dconn *d = b->d;
	int64_t now = bc_now_us();

	UNUSED(c);
	UNUSED(sent);
	I.t_last_reply = now;
	if (env->body_case == GRIDD__V1__ENVELOPE__BODY_PUSH_INCIDENTS_REPLY) {
		Gridd__V1__PushIncidentsReply *r = env->push_incidents_reply;

		for (size_t i = 0; i < r->n_results; i++) {
			Gridd__V1__PushResult *pr = r->results[i];
			unsigned oc = (unsigned)pr->outcome;

			if (oc >= ARRAY_LEN(I.outcome))
				oc = 0;
			I.outcome[oc]++;
			if (oc == 0)
				continue;
			I.acked++;
			if (b->measured)
				I.acked_measured++;
			if (oc == GRIDD__V1__PUSH_RESULT__OUTCOME__REJECTED) {
				if (pr->error == GRIDD__V1__ERROR_CODE__REJECTED_NEGATIVE_LIST)
					I.neg_rejects++;
				else if (I.other_rejects++ == 0 &&
				    I.first_error[0] == '\0')
					snprintf(I.first_error,
					    sizeof(I.first_error),
					    "rejected: %s", pr->message ?
					    pr->message : "");
				continue;
			}
			if (i < (size_t)b->n && (oc ==
			    GRIDD__V1__PUSH_RESULT__OUTCOME__ACCEPTED ||
			    oc == GRIDD__V1__PUSH_RESULT__OUTCOME__MERGED))
				recent_put(&d->mine, &b->items[i]);
			if (i < (size_t)b->n && oc ==
			    GRIDD__V1__PUSH_RESULT__OUTCOME__ACCEPTED) {
				I.recent_dept[I.accepted.next] = d->dept;
				recent_put(&I.accepted, &b->items[i]);
			}
		}
		if (b->measured)
			lat_add(&I.lat, now - b->sched_us);
	} else {
		if (I.error_replies++ == 0)
			snprintf(I.first_error, sizeof(I.first_error), "%s",
			    error_text(env));
	}
	/* Where in the run the slow replies are: a stall shows as a run of
	 * them (or of errors), a slow path as a scatter. */
	if (I.trace != NULL)
		fprintf(I.trace, "%.3f %.3f %d %d %s\n",
		    (double)(b->sched_us - I.t_start) / 1e3,
		    (double)(now - b->sched_us) / 1e3, d->dept, b->n,
		    env->body_case ==
		    GRIDD__V1__ENVELOPE__BODY_PUSH_INCIDENTS_REPLY ? "ok" : "err");
	free(b);
	/* Closed loop: the answered slot is filled again at once. */
	if (O.rate <= 0 && !I.stopping && d->s.c != NULL)
		ingest_send(d, bc_now_us());
}

static void
ingest_send(struct dconn *d, int64_t sched)
{
	Gridd__V1__IncidentIn *in, **pin;
	Gridd__V1__PushIncidents push = GRIDD__V1__PUSH_INCIDENTS__INIT;
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	struct batch *b;
	int64_t occurred = wall_ms();

	if (I.sent_batches * O.batch >= O.max_requests) {
		I.stopping = true;
		return;
	}
	b = xmalloc(sizeof(*b) + (size_t)O.batch * sizeof(struct item));
	b->d = d;
	b->sched_us = sched;
	b->measured = sched >= I.t_warm;
	b->n = O.batch;
	in = xcalloc((size_t)O.batch, sizeof(*in));
	pin = xcalloc((size_t)O.batch, sizeof(*pin));
	for (int i = 0; i < O.batch; i++) {
		make_item(d, &b->items[i]);
		gridd__v1__incident_in__init(&in[i]);
		in[i].ext_id = b->items[i].ext_id;
		in[i].category = (char *)b->items[i].category;
		in[i].occurred_at = occurred;
		in[i].lon = b->items[i].lon;
		in[i].lat = b->items[i].lat;
		in[i].description = "gridbench";
		in[i].severity = 2;
		pin[i] = &in[i];
	}
	push.n_incidents = (size_t)O.batch;
	push.incidents = pin;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_PUSH_INCIDENTS;
	env.push_incidents = &push;
	if (bc_request(d->s.c, &env, ingest_reply_cb, b)) {
		I.sent_batches++;
		I.sent_items += O.batch;
	} else {
		I.dropped_batches++;
		free(b);
	}
	free(in);
	free(pin);
}

static void
ingest_ready(struct sess *s)
{
	UNUSED(s);
}

static void
ingest_dead(struct sess *s)
{
	if (I.t_start != 0 && !I.stopping && I.first_error[0] == '\0')
		snprintf(I.first_error, sizeof(I.first_error),
		    "department %s: %s", s->principal, s->why);
}

/* Open loop: every tick sends the batches due by now, round-robin. */
static void
ingest_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	int64_t now = bc_now_us();
	double due;
	static int rr;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	if (I.stopping)
		return;
	due = (double)(now - I.t_start) / 1e6 * O.rate / O.batch;
	while (I.sched_batches < due && !I.stopping) {
		int64_t sched = I.t_start + (int64_t)(I.sched_batches *
		    O.batch / O.rate * 1e6);
		struct dconn *d = NULL;

		for (int k = 0; k < I.nd && d == NULL; k++) {
			struct dconn *x = &I.d[(rr++) % I.nd];

			if (bc_is_open(x->s.c))
				d = x;
		}
		I.sched_batches += 1;
		if (d == NULL) {
			I.dropped_batches++;
			continue;
		}
		ingest_send(d, sched);
	}
}

static bool
all_logged_in(void)
{
	return R.logins_busy == 0 && R.qhead >= R.nqueue;
}

static bool
ingest_drained(void)
{
	for (int i = 0; i < I.nd; i++)
		if (I.d[i].s.c != NULL && bc_inflight(I.d[i].s.c) > 0)
			return false;
	return true;
}

static bool
ingest_should_stop(void)
{
	return I.stopping;
}

static int
run_ingest(struct jw *w)
{
	struct txwin tx;
	char txline[128];
	int64_t hard;
	double secs, ips;
	const char *names[] = { "unspecified", "accepted", "merged",
	    "duplicate", "rejected" };

	if (O.ndepts < 1)
		die("ingest: no departments (--dept ID:KEY or GRIDBENCH_DEPTS)");
	/* Opened before the logins, so that a bad path fails at once; line
	 * buffered, so that a run cut short keeps its lines. */
	if (O.trace != NULL) {
		if ((I.trace = fopen(O.trace, "w")) == NULL)
			die("ingest: %s: %s", O.trace, strerror(errno));
		setvbuf(I.trace, NULL, _IOLBF, 0);
	}
	if (O.ncategories < 1)
		die("ingest: no --categories");
	I.nd = O.ndepts;
	I.d = xcalloc((size_t)I.nd, sizeof(*I.d));
	for (int i = 0; i < I.nd; i++) {
		struct dconn *d = &I.d[i];

		d->dept = i;
		d->s.role = GRIDD__V1__ROLE__DEPARTMENT;
		d->s.principal = O.depts[i].id;
		d->s.secret = O.depts[i].key;
		d->s.idx = i;
		d->s.on_ready = ingest_ready;
		d->s.on_dead = ingest_dead;
		d->s.max_inflight = O.rate > 0 ? OPEN_LOOP_INFLIGHT :
		    (size_t)O.inflight;
		sess_enqueue(&d->s);
	}
	run_until(all_logged_in, bc_now_us() + 30 * 1000000LL);
	if (R.ready < I.nd)
		die("ingest: %d of %d departments logged in (%s)", R.ready,
		    I.nd, I.d[0].s.st == SS_DEAD ? I.d[0].s.why : "timeout");
	txwin_begin(&tx);
	I.t_start = bc_now_us();
	if (I.trace != NULL)
		fprintf(I.trace, "# start %lld ms since the epoch\n"
		    "# sched_ms latency_ms dept items ok|err\n",
		    (long long)wall_ms());
	I.t_warm = I.t_start + (int64_t)(O.warmup * 1e6);
	I.t_stop = I.t_start + (int64_t)((O.warmup + O.duration) * 1e6);
	hard = I.t_stop + (int64_t)(HARD_STOP_EXTRA_S * 1e6);
	if (O.rate > 0) {
		struct timeval tv = { 0, 1000 };

		I.tick = event_new(base, -1, EV_PERSIST, ingest_tick_cb, NULL);
		if (I.tick == NULL || event_add(I.tick, &tv) != 0)
			die("ingest: timer");
	} else {
		for (int i = 0; i < I.nd; i++)
			for (int k = 0; k < O.inflight; k++)
				ingest_send(&I.d[i], bc_now_us());
	}
	run_until(ingest_should_stop, I.t_stop);
	I.stopping = true;
	if (I.tick != NULL)
		event_del(I.tick);
	run_until(ingest_drained, bc_now_us() + (int64_t)(DRAIN_GRACE_S * 1e6));
	UNUSED(hard);
	txwin_end(&tx, w, txline, sizeof(txline));

	secs = (double)(I.t_last_reply - I.t_warm) / 1e6;
	ips = secs > 0 ? (double)I.acked_measured / secs : 0;
	printf("ingest: %s depts=%d batch=%d %s acked=%lld (%.0f/s) "
	    "p50=%.2fms p99=%.2fms p99.9=%.2fms accepted=%lld merged=%lld "
	    "duplicate=%lld rejected=%lld errors=%lld%s%s%s\n",
	    O.tls ? "tls" : "tcp", I.nd, O.batch, O.rate > 0 ? "open-loop" :
	    "closed-loop", (long long)I.acked, ips, lat_pct_ms(&I.lat, 50),
	    lat_pct_ms(&I.lat, 99), lat_pct_ms(&I.lat, 99.9),
	    (long long)I.outcome[1], (long long)I.outcome[2],
	    (long long)I.outcome[3], (long long)I.outcome[4],
	    (long long)I.error_replies, txline, I.first_error[0] ?
	    " first_error=" : "", I.first_error);
	jw_str(w, "transport", O.tls ? "tls" : "tcp");
	jw_int(w, "departments", I.nd);
	jw_int(w, "batch", O.batch);
	jw_int(w, "inflight", O.inflight);
	jw_num(w, "rate", O.rate);
	jw_num(w, "seconds", secs);
	jw_int(w, "sent_items", I.sent_items);
	jw_int(w, "dropped_batches", I.dropped_batches);
	jw_int(w, "acked", I.acked);
	jw_num(w, "acked_per_s", ips);
	jw_obj(w, "outcomes");
	for (size_t k = 0; k < ARRAY_LEN(names); k++)
		jw_int(w, names[k], I.outcome[k]);
	jw_int(w, "rejected_negative", I.neg_rejects);
	jw_int(w, "rejected_other", I.other_rejects);
	jw_close(w);
	jw_obj(w, "planned");
	jw_int(w, "duplicates", I.planned_dup);
	jw_int(w, "merges", I.planned_merge);
	jw_int(w, "negative", I.planned_neg);
	jw_close(w);
	jw_int(w, "error_replies", I.error_replies);
	jw_str(w, "first_error", I.first_error);
	jw_lat(w, "reply_latency", &I.lat);
	if (I.trace != NULL && fclose(I.trace) != 0)
		die("ingest: %s: %s", O.trace, strerror(errno));
	I.trace = NULL;
	return I.acked > 0 ? 0 : 1;
}

/* ---- dispatch --------------------------------------------------------------- */

struct drec {
	uint64_t incident;	/* 0 = empty slot */
	int64_t t_send, t_reply, t_offer, t_accept, t_update;
};

static struct {
	struct sess dept;
	struct sess *w;
	struct bworker *wk;
	int nw;
	int checked_in, checkin_errors;
	char checkin_error[200];
	bool subscribed;
	char subscribe_error[200];
	struct drec *tab;
	size_t cap;
	int64_t t_start, t_stop;
	double sched;
	struct event *tick;
	bool stopping;
	int64_t pushed, accepted_items, push_errors, offers, offers_repeated,
	    offers_unknown,
	    offer_before_reply, accepts_sent, accept_errors, updates,
	    updates_matched;
	struct lat reply_offer, send_offer, accept_update, push_reply;
	char first_error[256];
} D;

static struct drec *
drec_get(uint64_t incident, bool create)
{
	size_t mask = D.cap - 1, i = (size_t)(incident * 0x9e3779b97f4a7c15ull)
	    & mask;

	for (size_t n = 0; n < D.cap; n++, i = (i + 1) & mask) {
		if (D.tab[i].incident == incident)
			return &D.tab[i];
		if (D.tab[i].incident == 0) {
			if (!create)
				return NULL;
			memset(&D.tab[i], 0, sizeof(D.tab[i]));
			D.tab[i].incident = incident;
			return &D.tab[i];
		}
	}
	return NULL;
}

static void
checkin_reply_cb(struct bc *c, const Gridd__V1__Envelope *env, int64_t sent,
    void *arg)
{
	UNUSED(c);
	UNUSED(sent);
	UNUSED(arg);
	if (env->body_case == GRIDD__V1__ENVELOPE__BODY_OK) {
		D.checked_in++;
		return;
	}
	if (D.checkin_errors++ == 0)
		snprintf(D.checkin_error, sizeof(D.checkin_error), "%s",
		    error_text(env));
}

static void
worker_ready(struct sess *s)
{
	Gridd__V1__CheckIn ci = GRIDD__V1__CHECK_IN__INIT;
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;

	ci.lon = D.wk[s->idx].lon;
	ci.lat = D.wk[s->idx].lat;
	ci.on_duty = true;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_CHECK_IN;
	env.check_in = &ci;
	if (!bc_request(s->c, &env, checkin_reply_cb, NULL))
		D.checkin_errors++;
}

static void
accept_reply_cb(struct bc *c, const Gridd__V1__Envelope *env, int64_t sent,
    void *arg)
{
	UNUSED(c);
	UNUSED(sent);
	UNUSED(arg);
	if (env->body_case != GRIDD__V1__ENVELOPE__BODY_OK &&
	    D.accept_errors++ == 0 && D.first_error[0] == '\0')
		snprintf(D.first_error, sizeof(D.first_error), "accept: %s",
		    error_text(env));
}

static void
worker_push_cb(struct bc *c, const Gridd__V1__Envelope *env, void *arg)
{
	Gridd__V1__UpdateAssignment up = GRIDD__V1__UPDATE_ASSIGNMENT__INIT;
	Gridd__V1__Envelope out = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__AssignmentOffer *o;
	struct drec *r;
	char key[48];
	int64_t now = bc_now_us();

	UNUSED(arg);
	if (env->body_case != GRIDD__V1__ENVELOPE__BODY_ASSIGNMENT_OFFER)
		return;
	o = env->assignment_offer;
	D.offers++;
	/* An offer may overtake its push reply (both follow the same
	 * commit): the record is made here then, and the reply completes
	 * it. */
	r = drec_get(o->incident_id, true);
	if (r == NULL || r->t_offer != 0) {
		D.offers_repeated++;
	} else {
		r->t_offer = now;
		if (r->t_reply != 0) {
			lat_add(&D.reply_offer, now - r->t_reply);
			lat_add(&D.send_offer, now - r->t_send);
		}
	}
	snprintf(key, sizeof(key), "gb-%llu-accept",
	    (unsigned long long)o->assignment_id);
	up.assignment_id = o->assignment_id;
	up.action = GRIDD__V1__ASSIGNMENT_ACTION__ACCEPT;
	up.idempotency_key = key;
	up.lon = o->lon;
	up.lat = o->lat;
	out.body_case = GRIDD__V1__ENVELOPE__BODY_UPDATE_ASSIGNMENT;
	out.update_assignment = &up;
	if (bc_request(c, &out, accept_reply_cb, NULL)) {
		D.accepts_sent++;
		if (r != NULL && r->t_accept == 0)
			r->t_accept = bc_now_us();
	}
}

static void
dept_push_cb(struct bc *c, const Gridd__V1__Envelope *env, void *arg)
{
	Gridd__V1__IncidentUpdate *u;
	struct drec *r;

	UNUSED(c);
	UNUSED(arg);
	if (env->body_case != GRIDD__V1__ENVELOPE__BODY_INCIDENT_UPDATE)
		return;
	u = env->incident_update;
	D.updates++;
	if (u->status != GRIDD__V1__INCIDENT_UPDATE__STATUS__ACCEPTED)
		return;
	r = drec_get(u->incident_id, false);
	if (r == NULL || r->t_accept == 0 || r->t_update != 0)
		return;
	r->t_update = bc_now_us();
	D.updates_matched++;
	lat_add(&D.accept_update, r->t_update - r->t_accept);
}

static void
subscribe_reply_cb(struct bc *c, const Gridd__V1__Envelope *env,
    int64_t sent, void *arg)
{
	UNUSED(c);
	UNUSED(sent);
	UNUSED(arg);
	if (env->body_case == GRIDD__V1__ENVELOPE__BODY_OK)
		D.subscribed = true;
	else
		snprintf(D.subscribe_error, sizeof(D.subscribe_error), "%s",
		    error_text(env));
}

static void
dispatch_push_reply_cb(struct bc *c, const Gridd__V1__Envelope *env,
    int64_t sent, void *arg)
{
	int64_t now = bc_now_us();

	UNUSED(c);
	UNUSED(arg);
	if (env->body_case != GRIDD__V1__ENVELOPE__BODY_PUSH_INCIDENTS_REPLY) {
		if (D.push_errors++ == 0 && D.first_error[0] == '\0')
			snprintf(D.first_error, sizeof(D.first_error),
			    "push: %s", error_text(env));
		return;
	}
	/* How long the department waits for its push: the offers made
	 * inside it ride on the same commit. */
	lat_add(&D.push_reply, now - sent);
	for (size_t i = 0; i < env->push_incidents_reply->n_results; i++) {
		Gridd__V1__PushResult *pr = env->push_incidents_reply->results[i];
		struct drec *r;

		if (pr->outcome != GRIDD__V1__PUSH_RESULT__OUTCOME__ACCEPTED ||
		    pr->incident_id == 0) {
			if (D.first_error[0] == '\0' && pr->outcome ==
			    GRIDD__V1__PUSH_RESULT__OUTCOME__REJECTED)
				snprintf(D.first_error, sizeof(D.first_error),
				    "rejected: %s", pr->message ? pr->message :
				    "");
			continue;
		}
		D.accepted_items++;
		if ((r = drec_get(pr->incident_id, true)) == NULL)
			continue;
		r->t_send = sent;
		r->t_reply = now;
		if (r->t_offer != 0) {
			/* The offer came first: no wait after the reply. */
			D.offer_before_reply++;
			lat_add(&D.reply_offer, 0);
			lat_add(&D.send_offer, r->t_offer - sent);
		}
	}
}

static void
dispatch_tick_cb(evutil_socket_t fd, short what, void *arg)
{
	int64_t now = bc_now_us();
	double due = (double)(now - D.t_start) / 1e6 * O.rate / O.batch;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	while (!D.stopping && D.sched < due) {
		Gridd__V1__IncidentIn *in, **pin;
		Gridd__V1__PushIncidents push = GRIDD__V1__PUSH_INCIDENTS__INIT;
		Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
		char (*ext)[EXT_ID_MAX];

		D.sched += 1;
		if (!bc_is_open(D.dept.c) || D.pushed >= O.max_requests)
			return;
		in = xcalloc((size_t)O.batch, sizeof(*in));
		pin = xcalloc((size_t)O.batch, sizeof(*pin));
		ext = xcalloc((size_t)O.batch, sizeof(*ext));
		for (int i = 0; i < O.batch; i++) {
			const struct bpoint *p = &points.v[rnd() % points.n];

			gridd__v1__incident_in__init(&in[i]);
			snprintf(ext[i], sizeof(ext[i]), "%s-d-%lld", O.tag,
			    (long long)(D.pushed + i));
			in[i].ext_id = ext[i];
			in[i].category = (char *)O.categories[rnd() %
			    (uint64_t)O.ncategories];
			in[i].occurred_at = wall_ms();
			jitter(p, 0.5, &in[i].lon, &in[i].lat);
			in[i].description = "gridbench dispatch";
			in[i].severity = 2;
			pin[i] = &in[i];
		}
		push.n_incidents = (size_t)O.batch;
		push.incidents = pin;
		env.body_case = GRIDD__V1__ENVELOPE__BODY_PUSH_INCIDENTS;
		env.push_incidents = &push;
		if (bc_request(D.dept.c, &env, dispatch_push_reply_cb, NULL))
			D.pushed += O.batch;
		else
			D.push_errors++;
		free(in);
		free(pin);
		free(ext);
	}
}

static void
dept_ready(struct sess *s)
{
	Gridd__V1__Subscribe sub = GRIDD__V1__SUBSCRIBE__INIT;
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;

	/* From the department's latest event on: a replay of earlier runs'
	 * history is not what this measures. */
	sub.since_seq = s->last_seq;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_SUBSCRIBE;
	env.subscribe = &sub;
	if (!bc_request(s->c, &env, subscribe_reply_cb, NULL))
		snprintf(D.subscribe_error, sizeof(D.subscribe_error),
		    "cannot send");
}

static bool
workers_settled(void)
{
	return all_logged_in() && D.checked_in + D.checkin_errors >=
	    R.ready - (D.dept.st == SS_READY ? 1 : 0);
}

static bool
offers_drained(void)
{
	return D.offers - D.offers_repeated >= D.accepted_items &&
	    D.updates_matched >= D.accepts_sent;
}

static int
run_dispatch(struct jw *w)
{
	struct txwin tx;
	char err[512], txline[128];
	double secs;
	size_t want;

	if (O.ndepts < 1 || O.ncategories < 1)
		die("dispatch: need --dept and --categories (a task type "
		    "routed to workers)");
	if (O.rate <= 0)
		O.rate = 1000;
	D.nw = O.workers;
	if (!bdb_setup_workers(O.db, O.worker_prefix, (size_t)D.nw,
	    O.worker_password, O.pbkdf2_iter, &D.wk, err, sizeof(err)))
		die("dispatch: %s", err);
	if ((rlim_t)D.nw + 64 > nofile_limit())
		die("dispatch: %d workers need more descriptors than the "
		    "limit of %llu", D.nw, (unsigned long long)nofile_limit());
	want = (size_t)(O.rate * (O.duration + DRAIN_GRACE_S) * 4) + 1024;
	for (D.cap = 1 << 16; D.cap < want; D.cap <<= 1)
		;
	D.tab = xcalloc(D.cap, sizeof(*D.tab));
	D.w = xcalloc((size_t)D.nw, sizeof(*D.w));
	for (int i = 0; i < D.nw; i++) {
		struct sess *s = &D.w[i];

		s->role = GRIDD__V1__ROLE__WORKER;
		s->principal = D.wk[i].id;
		s->secret = O.worker_password;
		s->idx = i;
		s->on_ready = worker_ready;
		s->on_push = worker_push_cb;
		s->max_inflight = 64;
		sess_enqueue(s);
	}
	D.dept.role = GRIDD__V1__ROLE__DEPARTMENT;
	D.dept.principal = O.depts[0].id;
	D.dept.secret = O.depts[0].key;
	D.dept.on_ready = dept_ready;
	D.dept.on_push = dept_push_cb;
	D.dept.max_inflight = OPEN_LOOP_INFLIGHT;
	sess_enqueue(&D.dept);
	run_until(workers_settled, bc_now_us() + 120 * 1000000LL);
	note("dispatch: %d sessions ready, %d dead, %d checked in, %d "
	    "check-in errors%s%s", R.ready, R.dead, D.checked_in,
	    D.checkin_errors, D.checkin_error[0] ? ": " : "", D.checkin_error);
	if (D.dept.st != SS_READY)
		die("dispatch: department %s did not log in: %s",
		    D.dept.principal, D.dept.why);
	txwin_begin(&tx);
	D.t_start = bc_now_us();
	D.t_stop = D.t_start + (int64_t)(O.duration * 1e6);
	{
		struct timeval tv = { 0, 1000 };

		D.tick = event_new(base, -1, EV_PERSIST, dispatch_tick_cb,
		    NULL);
		if (D.tick == NULL || event_add(D.tick, &tv) != 0)
			die("dispatch: timer");
	}
	run_until(NULL, D.t_stop);
	D.stopping = true;
	event_del(D.tick);
	run_until(offers_drained, bc_now_us() + (int64_t)(DRAIN_GRACE_S * 1e6));
	secs = (double)(bc_now_us() - D.t_start) / 1e6;
	txwin_end(&tx, w, txline, sizeof(txline));
	/* Offers for incidents this run never saw accepted (left over from
	 * before, or their reply lost) are not in the latency figures. */
	for (size_t i = 0; i < D.cap; i++)
		if (D.tab[i].incident != 0 && D.tab[i].t_offer != 0 &&
		    D.tab[i].t_reply == 0)
			D.offers_unknown++;
	printf("dispatch: workers=%d ready=%d rate=%.0f/s pushed=%lld "
	    "accepted=%lld offers=%lld (%.0f/s) reply->offer p50=%.2fms "
	    "p99=%.2fms push reply p50=%.2fms p99=%.2fms "
	    "accept->update p50=%.2fms p99=%.2fms%s%s%s\n",
	    D.nw, R.ready - 1, O.rate, (long long)D.pushed,
	    (long long)D.accepted_items, (long long)D.offers,
	    secs > 0 ? (double)D.offers / secs : 0,
	    lat_pct_ms(&D.reply_offer, 50), lat_pct_ms(&D.reply_offer, 99),
	    lat_pct_ms(&D.push_reply, 50), lat_pct_ms(&D.push_reply, 99),
	    lat_pct_ms(&D.accept_update, 50), lat_pct_ms(&D.accept_update, 99),
	    txline, D.first_error[0] ? " first_error=" : "", D.first_error);
	jw_int(w, "workers", D.nw);
	jw_int(w, "workers_ready", R.ready - (D.dept.st == SS_READY));
	jw_int(w, "checked_in", D.checked_in);
	jw_str(w, "checkin_error", D.checkin_error);
	jw_bool(w, "subscribed", D.subscribed);
	jw_str(w, "subscribe_error", D.subscribe_error);
	jw_num(w, "rate", O.rate);
	jw_int(w, "batch", O.batch);
	jw_num(w, "seconds", secs);
	jw_int(w, "pushed", D.pushed);
	jw_int(w, "accepted", D.accepted_items);
	jw_int(w, "push_errors", D.push_errors);
	jw_int(w, "offers", D.offers);
	jw_num(w, "offers_per_s", secs > 0 ? (double)D.offers / secs : 0);
	jw_int(w, "offers_unknown", D.offers_unknown);
	jw_int(w, "offers_repeated", D.offers_repeated);
	jw_int(w, "offer_before_reply", D.offer_before_reply);
	jw_int(w, "accepts_sent", D.accepts_sent);
	jw_int(w, "accept_errors", D.accept_errors);
	jw_int(w, "updates", D.updates);
	jw_str(w, "first_error", D.first_error);
	jw_lat(w, "reply_to_offer", &D.reply_offer);
	jw_lat(w, "send_to_offer", &D.send_offer);
	jw_lat(w, "push_reply", &D.push_reply);
	jw_lat(w, "accept_to_update", &D.accept_update);
	return D.offers > 0 ? 0 : 1;
}

/* ---- connections --------------------------------------------------------------- */

static struct {
	struct sess *s;
	int n, first;
	struct event **ping_ev;
	bool pinging;
	int64_t pings, ping_errors;
	struct lat lat;
	char first_error[200];
} C;

static void
ping_reply_cb(struct bc *c, const Gridd__V1__Envelope *env, int64_t sent,
    void *arg)
{
	UNUSED(c);
	UNUSED(arg);
	if (env->body_case == GRIDD__V1__ENVELOPE__BODY_PONG) {
		if (C.pinging)
			lat_add(&C.lat, bc_now_us() - sent);
		return;
	}
	if (C.ping_errors++ == 0)
		snprintf(C.first_error, sizeof(C.first_error), "%s",
		    error_text(env));
}

static void
ping_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sess *s = arg;
	Gridd__V1__Envelope env;
	Gridd__V1__Ping ping;

	struct timeval every = { (time_t)O.ping_interval,
	    (suseconds_t)((O.ping_interval - floor(O.ping_interval)) * 1e6) };

	UNUSED(fd);
	UNUSED(what);
	if (s->st != SS_READY || s->c == NULL)
		return;
	(void)event_add(C.ping_ev[s->idx], &every);
	env_ping(&env, &ping);
	if (bc_request(s->c, &env, ping_reply_cb, NULL))
		C.pings++;
	else
		C.ping_errors++;
}

static bool
conns_settled(void)
{
	return all_logged_in();
}

/* One process's share: connect, log in, report readiness on ctl_out, wait
 * for the go byte on ctl_in, ping for the duration, write the samples. */
static void
conns_child(int first, int n, int ctl_in, int ctl_out)
{
	int64_t t0;
	char go;
	int32_t hdr[4];

	C.n = n;
	C.first = first;
	C.s = xcalloc((size_t)n, sizeof(*C.s));
	C.ping_ev = xcalloc((size_t)n, sizeof(*C.ping_ev));
	for (int i = 0; i < n; i++) {
		struct sess *s = &C.s[i];

		char id[BDB_ID_MAX + 1];

		snprintf(id, sizeof(id), "%s%06d", O.worker_prefix, first + i);
		s->role = GRIDD__V1__ROLE__WORKER;
		s->principal = xstrdup(id);
		s->secret = O.worker_password;
		s->idx = i;
		s->max_inflight = 4;
		R.src_next = first + i;
		sess_enqueue(s);
	}
	run_until(conns_settled, bc_now_us() + 300 * 1000000LL);
	hdr[0] = R.ready;
	hdr[1] = R.dead;
	hdr[2] = R.login_errors;
	hdr[3] = 0;
	if (write(ctl_out, hdr, sizeof(hdr)) != (ssize_t)sizeof(hdr))
		_exit(2);
	if (read(ctl_in, &go, 1) != 1)
		_exit(2);
	/* Pings spread evenly over the interval: the load the daemon sees
	 * is steady, as with real phones. Each timer re-arms itself. */
	C.pinging = true;
	t0 = bc_now_us();
	for (int i = 0; i < n; i++) {
		double off = O.ping_interval * rnd01();
		struct timeval first_tv = { (time_t)off,
		    (suseconds_t)((off - floor(off)) * 1e6) };

		C.ping_ev[i] = evtimer_new(base, ping_cb, &C.s[i]);
		if (C.ping_ev[i] != NULL)
			(void)event_add(C.ping_ev[i], &first_tv);
	}
	run_until(NULL, t0 + (int64_t)(O.duration * 1e6));
	C.pinging = false;
	hdr[0] = (int32_t)C.lat.n;
	hdr[1] = (int32_t)C.ping_errors;
	hdr[2] = R.ready;
	hdr[3] = (int32_t)C.pings;
	if (write(ctl_out, hdr, sizeof(hdr)) != (ssize_t)sizeof(hdr))
		_exit(2);
	for (size_t off = 0; off < C.lat.n;) {
		ssize_t k = write(ctl_out, C.lat.v + off,
		    (C.lat.n - off) * sizeof(uint32_t));

		if (k <= 0)
			_exit(2);
		off += (size_t)k / sizeof(uint32_t);
	}
	_exit(0);
}

static bool
read_full(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n > 0) {
		ssize_t k = read(fd, p, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return false;
		p += k;
		n -= (size_t)k;
	}
	return true;
}

static int
run_connections(struct jw *w)
{
	char err[512];
	struct bworker *wk = NULL;
	long pid = daemon_pid(), rss0, rss1, rss2;
	int P = O.procs, ready = 0, dead = 0, lerr = 0;
	int64_t pings = 0, perr = 0;
	int (*ctl)[2][2];
	pid_t *kids;
	double per_conn;

	if (pid <= 0)
		die("connections: cannot find the daemon's pid (give --pid)");
	if (O.conns < 1 || P < 1 || P > 16)
		die("connections: bad --conns or --procs");
	if ((rlim_t)(O.conns / P) + 64 > nofile_limit())
		die("connections: %d connections in %d process(es) exceed the "
		    "descriptor limit %llu: raise --procs", O.conns, P,
		    (unsigned long long)nofile_limit());
	if (!bdb_setup_workers(O.db, O.worker_prefix, (size_t)O.conns,
	    O.worker_password, O.pbkdf2_iter, &wk, err, sizeof(err)))
		die("connections: %s", err);
	free(wk);
	rss0 = rss_kb(pid);
	ctl = xcalloc((size_t)P, sizeof(*ctl));
	kids = xcalloc((size_t)P, sizeof(*kids));
	fflush(NULL);
	for (int p = 0; p < P; p++) {
		int first = O.conns / P * p + (p < O.conns % P ? p :
		    O.conns % P);
		int n = O.conns / P + (p < O.conns % P);

		if (pipe(ctl[p][0]) != 0 || pipe(ctl[p][1]) != 0)
			die("connections: pipe: %s", strerror(errno));
		if ((kids[p] = fork()) < 0)
			die("connections: fork: %s", strerror(errno));
		if (kids[p] == 0) {
			event_reinit(base);
			rng_state ^= (uint64_t)(p + 1) * 0x9e3779b97f4a7c15ull;
			conns_child(first, n, ctl[p][0][0], ctl[p][1][1]);
		}
		close(ctl[p][0][0]);
		close(ctl[p][1][1]);
	}
	for (int p = 0; p < P; p++) {
		int32_t hdr[4];

		if (!read_full(ctl[p][1][0], hdr, sizeof(hdr)))
			die("connections: process %d failed while connecting",
			    p);
		ready += hdr[0];
		dead += hdr[1];
		lerr += hdr[2];
	}
	/* Let the daemon finish what the logins left (session rows, frees)
	 * before reading its memory. */
	sleep(1);
	rss1 = rss_kb(pid);
	for (int p = 0; p < P; p++)
		if (write(ctl[p][0][1], "g", 1) != 1)
			die("connections: cannot start process %d", p);
	for (int p = 0; p < P; p++) {
		int32_t hdr[4];
		struct lat part = { 0 };

		if (!read_full(ctl[p][1][0], hdr, sizeof(hdr)))
			die("connections: process %d failed while pinging", p);
		part.n = part.cap = (size_t)(hdr[0] > 0 ? hdr[0] : 0);
		part.v = xcalloc(part.n ? part.n : 1, sizeof(uint32_t));
		if (!read_full(ctl[p][1][0], part.v, part.n *
		    sizeof(uint32_t)))
			die("connections: process %d: short samples", p);
		lat_merge(&C.lat, &part);
		lat_free(&part);
		perr += hdr[1];
		pings += hdr[3];
	}
	rss2 = rss_kb(pid);
	for (int p = 0; p < P; p++) {
		int st;

		close(ctl[p][0][1]);
		close(ctl[p][1][0]);
		waitpid(kids[p], &st, 0);
	}
	per_conn = ready > 0 ? (double)(rss1 - rss0) * 1024.0 / ready : 0;
	printf("connections: target=%d ready=%d failed=%d procs=%d "
	    "daemon_rss=%ld->%ld KiB (%.0f B/conn) ping p50=%.2fms "
	    "p99=%.2fms pings=%lld errors=%lld\n", O.conns, ready, dead, P,
	    rss0, rss1, per_conn, lat_pct_ms(&C.lat, 50),
	    lat_pct_ms(&C.lat, 99), (long long)C.lat.n, (long long)perr);
	jw_int(w, "target", O.conns);
	jw_int(w, "ready", ready);
	jw_int(w, "failed", dead);
	jw_int(w, "login_errors", lerr);
	jw_int(w, "procs", P);
	jw_int(w, "daemon_pid", pid);
	jw_int(w, "daemon_rss_before_kb", rss0);
	jw_int(w, "daemon_rss_connected_kb", rss1);
	jw_int(w, "daemon_rss_after_pings_kb", rss2);
	jw_num(w, "rss_per_conn_bytes", per_conn);
	jw_num(w, "ping_interval_s", O.ping_interval);
	jw_int(w, "pings_sent", pings);
	jw_int(w, "ping_errors", perr);
	jw_lat(w, "ping_latency", &C.lat);
	free(ctl);
	free(kids);
	return ready > 0 ? 0 : 1;
}

/* ---- partition ---------------------------------------------------------------- */

/* partbench beside this program (same build folder), or --partbench. */
static const char *
partbench_path(void)
{
	static char path[4096];
	ssize_t n;
	char *slash;

	if (O.partbench != NULL)
		return O.partbench;
	n = readlink("/proc/self/exe", path, sizeof(path) - 32);
	if (n <= 0)
		return "partbench";
	path[n] = '\0';
	if ((slash = strrchr(path, '/')) == NULL)
		return "partbench";
	strcpy(slash + 1, "partbench");
	return path;
}

/* Runs partbench with argv, capturing its stdout (its --json line);
 * reports wall time and the child's peak RSS. */
static bool
run_partbench(char *const argv[], char **out, double *secs, long *maxrss_kb)
{
	int pfd[2];
	pid_t pid;
	struct rusage ru;
	int st;
	size_t n = 0, cap = 65536;
	int64_t t0 = bc_now_us();
	char *buf;

	if (pipe(pfd) != 0)
		return false;
	fflush(NULL);
	if ((pid = fork()) < 0)
		return false;
	if (pid == 0) {
		dup2(pfd[1], STDOUT_FILENO);
		close(pfd[0]);
		close(pfd[1]);
		execv(argv[0], argv);
		_exit(127);
	}
	close(pfd[1]);
	buf = xmalloc(cap);
	for (;;) {
		ssize_t k;

		if (n + 1 >= cap)
			buf = xrealloc(buf, cap *= 2);
		k = read(pfd[0], buf + n, cap - n - 1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		n += (size_t)k;
	}
	buf[n] = '\0';
	close(pfd[0]);
	if (wait4(pid, &st, 0, &ru) < 0) {
		free(buf);
		return false;
	}
	*secs = (double)(bc_now_us() - t0) / 1e6;
	*maxrss_kb = ru.ru_maxrss;
	while (n > 0 && isspace((unsigned char)buf[n - 1]))
		buf[--n] = '\0';
	*out = buf;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static int
run_partition(struct jw *w)
{
	const char *pb = partbench_path();
	char nb[32], nc[32];
	char *out = NULL;
	double secs = 0;
	long rss = 0;
	bool ok, any = false;

	if (O.sample_dir != NULL) {
		char *argv[] = { (char *)pb, "sample", (char *)O.sample_dir,
		    "--json", NULL };

		ok = run_partbench(argv, &out, &secs, &rss);
		printf("partition: sample %s wall=%.3fs peak_rss=%ld KiB\n",
		    ok ? "ok" : "FAILED", secs, rss);
		jw_obj(w, "sample");
		jw_bool(w, "ok", ok);
		jw_num(w, "wall_s", secs);
		jw_int(w, "peak_rss_kb", rss);
		if (ok && out != NULL && out[0] == '{')
			jw_raw(w, "partbench", out);
		jw_close(w);
		free(out);
		out = NULL;
		any = any || ok;
	}
	if (O.city_buildings > 0) {
		char *argv[] = { (char *)pb, "city", "--buildings", nb,
		    "--communities", nc, "--json", NULL };

		snprintf(nb, sizeof(nb), "%ld", O.city_buildings);
		snprintf(nc, sizeof(nc), "%ld", O.city_communities);
		ok = run_partbench(argv, &out, &secs, &rss);
		printf("partition: city buildings=%ld communities=%ld %s "
		    "wall=%.3fs peak_rss=%ld KiB\n", O.city_buildings,
		    O.city_communities, ok ? "ok" : "FAILED", secs, rss);
		jw_obj(w, "city");
		jw_bool(w, "ok", ok);
		jw_int(w, "buildings", O.city_buildings);
		jw_int(w, "communities", O.city_communities);
		jw_num(w, "wall_s", secs);
		jw_int(w, "peak_rss_kb", rss);
		if (ok && out != NULL && out[0] == '{')
			jw_raw(w, "partbench", out);
		jw_close(w);
		free(out);
		any = any || ok;
	}
	return any ? 0 : 1;
}

/* ---- baseline ------------------------------------------------------------------- */

static int
run_baseline(struct jw *w)
{
	struct bdb_base_opts bo = { 0 };
	struct bdb_base_result r;
	char err[512], dept[BDB_ID_MAX + 1];
	double rps;
	bool ok;

	if (O.task_type[0] == '\0')
		die("baseline: --task-type NAME (a task type of the config)");
	if (strcmp(O.base_mode, "single") == 0)
		bo.mode = BDB_BASE_SINGLE;
	else if (strcmp(O.base_mode, "multi") == 0)
		bo.mode = BDB_BASE_MULTI;
	else if (strcmp(O.base_mode, "gridd") == 0)
		bo.mode = BDB_BASE_GRIDD;
	else
		die("baseline: --mode single|multi|gridd");
	snprintf(dept, sizeof(dept), "gridbench-baseline");
	bo.conninfo = O.db;
	bo.conns = O.db_conns;
	bo.batch = O.batch;
	bo.duration_s = O.duration;
	bo.max_rows = O.max_requests;
	bo.points = &points;
	bo.task_type = O.task_type;
	bo.category = O.ncategories > 0 ? O.categories[0] : "";
	bo.department = dept;
	bo.run_tag = O.tag;
	bo.merge_radius_m = O.merge_radius;
	bo.merge_window_s = O.merge_window;
	ok = bdb_baseline(&bo, &r, err, sizeof(err));
	if (!ok && bo.mode == BDB_BASE_GRIDD) {
		printf("baseline: gridd-sql unavailable: %s\n", err);
		jw_str(w, "mode", O.base_mode);
		jw_bool(w, "available", false);
		jw_str(w, "error", err);
		return 2;
	}
	if (!ok)
		die("%s", err);
	if (!bdb_baseline_cleanup(O.db, dept, err, sizeof(err)))
		note("%s", err);
	rps = r.seconds > 0 ? (double)r.rows / r.seconds : 0;
	printf("baseline: mode=%s conns=%d batch=%d rows=%lld (%.0f/s) "
	    "commits=%lld commit p50=%.2fms p99=%.2fms errors=%lld%s%s\n",
	    O.base_mode, bo.conns, bo.mode == BDB_BASE_SINGLE ? 1 : bo.batch,
	    (long long)r.rows, rps, (long long)r.commits,
	    lat_pct_ms(&r.commit_lat, 50), lat_pct_ms(&r.commit_lat, 99),
	    (long long)r.errors, r.first_error[0] ? " first_error=" : "",
	    r.first_error);
	jw_str(w, "mode", O.base_mode);
	jw_bool(w, "available", true);
	jw_int(w, "conns", bo.conns);
	jw_int(w, "batch", bo.mode == BDB_BASE_SINGLE ? 1 : bo.batch);
	jw_num(w, "seconds", r.seconds);
	jw_int(w, "rows", r.rows);
	jw_num(w, "rows_per_s", rps);
	jw_int(w, "commits", r.commits);
	jw_int(w, "errors", r.errors);
	jw_str(w, "first_error", r.first_error);
	jw_lat(w, "commit_latency", &r.commit_lat);
	lat_free(&r.commit_lat);
	return r.rows > 0 ? 0 : 1;
}

/* ---- options ------------------------------------------------------------------------ */

static void
usage(void)
{
	fprintf(stderr,
"usage: gridbench ingest|dispatch|connections|partition|baseline [options]\n"
"  --addr HOST:PORT      the daemon, loopback only (127.0.0.1:7700)\n"
"  --tls [--ca FILE]     TLS (without --ca the certificate is not checked)\n"
"  --db CONNINFO         PostgreSQL (env GRIDBENCH_DB): points, workers,\n"
"                        baseline\n"
"  --dept ID:KEY         a department (repeat; env GRIDBENCH_DEPTS=a:k,b:k)\n"
"  --categories A,B      category codes to push; --negative-category C\n"
"  --dup-share --merge-share --neg-share F   shares of items (0.05 0.05 0.02)\n"
"  --batch B --inflight K --rate R --duration S --warmup S --max-requests N\n"
"  --workers W --conns N --procs P --ping-interval S --login-concurrency L\n"
"  --worker-prefix P     worker ids P000000.. (bench-w); password from\n"
"                        GRIDBENCH_WORKER_PASSWORD; --pbkdf2-iter N\n"
"  --pid PID             the daemon's pid (found from its port otherwise)\n"
"  --no-src-spread       every connection from 127.0.0.1\n"
"  --mode single|multi|gridd --task-type NAME --db-conns N   (baseline)\n"
"  --merge-radius M --merge-window S   the daemon's [dispatch] values\n"
"  --sample DIR --city-buildings N --city-communities C --partbench PATH\n"
"  --metrics 127.x.x.x:PORT  the daemon's admin_http (IPv4 loopback):\n"
"                        report the ingest transactions behind the run\n"
"                        (ingest, dispatch)\n"
"  --json FILE --quiet\n"
"  --trace FILE          ingest: a line per answered batch (scheduled ms\n"
"                        from the start, latency ms, department, items,\n"
"                        ok or err)\n");
	exit(2);
}

static double
num_arg(const char *s, double lo, double hi, const char *what)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !(v >= lo && v <= hi))
		die("%s: want a number in [%g, %g], got \"%s\"", what, lo, hi,
		    s);
	return v;
}

static void
add_dept(const char *spec)
{
	const char *colon = strchr(spec, ':');
	struct dept *d;

	if (colon == NULL || colon == spec || colon[1] == '\0' ||
	    (size_t)(colon - spec) > BDB_ID_MAX || strlen(colon + 1) >= 256)
		die("department: want ID:KEY");
	if (O.ndepts >= MAX_DEPTS)
		die("at most %d departments", MAX_DEPTS);
	d = &O.depts[O.ndepts++];
	memcpy(d->id, spec, (size_t)(colon - spec));
	d->id[colon - spec] = '\0';
	snprintf(d->key, sizeof(d->key), "%s", colon + 1);
}

static void
add_list(const char *s, void (*fn)(const char *))
{
	char *copy = xstrdup(s), *save = NULL;

	for (char *t = strtok_r(copy, ",", &save); t != NULL;
	    t = strtok_r(NULL, ",", &save))
		fn(t);
	/* copy is kept: the options point into it for the whole run. */
}

static void
add_category(const char *c)
{
	if (O.ncategories >= MAX_CATEGORIES)
		die("at most %d categories", MAX_CATEGORIES);
	O.categories[O.ncategories++] = c;
}

static void
parse_addr(void)
{
	char host[64];
	const char *colon = strrchr(O.addr, ':');
	struct sockaddr_in *sin = (struct sockaddr_in *)&O.ss;
	long port;

	if (colon == NULL || (size_t)(colon - O.addr) >= sizeof(host))
		die("--addr: want 127.0.0.1:PORT");
	memcpy(host, O.addr, (size_t)(colon - O.addr));
	host[colon - O.addr] = '\0';
	port = (long)num_arg(colon + 1, 1, 65535, "--addr port");
	if (strcmp(host, "localhost") == 0)
		snprintf(host, sizeof(host), "127.0.0.1");
	memset(&O.ss, 0, sizeof(O.ss));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	/* A load generator aimed at someone else's machine is an attack:
	 * loopback only. */
	if (inet_pton(AF_INET, host, &sin->sin_addr) != 1 ||
	    (ntohl(sin->sin_addr.s_addr) >> 24) != 127)
		die("--addr: gridbench only targets the loopback interface "
		    "(127.0.0.0/8), not \"%s\"", host);
	O.sslen = sizeof(*sin);
}

static void
parse_args(int argc, char **argv)
{
	enum { OPT_ADDR = 256, OPT_TLS, OPT_CA, OPT_DB, OPT_DEPT, OPT_CATS,
	    OPT_NEGCAT, OPT_DUP, OPT_MERGE, OPT_NEG, OPT_BATCH, OPT_INFLIGHT,
	    OPT_RATE, OPT_DURATION, OPT_WARMUP, OPT_MAXREQ, OPT_WORKERS,
	    OPT_CONNS, OPT_PROCS, OPT_PINGIV, OPT_LOGINC, OPT_WPREFIX,
	    OPT_ITER, OPT_PID, OPT_NOSPREAD, OPT_MODE, OPT_TT, OPT_SAMPLE,
	    OPT_CITYB, OPT_CITYC, OPT_PARTBENCH, OPT_JSON, OPT_TRACE, OPT_QUIET,
	    OPT_METRICS,
	    OPT_WPASS, OPT_DBCONNS, OPT_MRADIUS, OPT_MWINDOW };
	static const struct option lo[] = {
		{ "addr", required_argument, NULL, OPT_ADDR },
		{ "tls", no_argument, NULL, OPT_TLS },
		{ "ca", required_argument, NULL, OPT_CA },
		{ "db", required_argument, NULL, OPT_DB },
		{ "dept", required_argument, NULL, OPT_DEPT },
		{ "categories", required_argument, NULL, OPT_CATS },
		{ "negative-category", required_argument, NULL, OPT_NEGCAT },
		{ "dup-share", required_argument, NULL, OPT_DUP },
		{ "merge-share", required_argument, NULL, OPT_MERGE },
		{ "neg-share", required_argument, NULL, OPT_NEG },
		{ "batch", required_argument, NULL, OPT_BATCH },
		{ "inflight", required_argument, NULL, OPT_INFLIGHT },
		{ "rate", required_argument, NULL, OPT_RATE },
		{ "duration", required_argument, NULL, OPT_DURATION },
		{ "warmup", required_argument, NULL, OPT_WARMUP },
		{ "max-requests", required_argument, NULL, OPT_MAXREQ },
		{ "workers", required_argument, NULL, OPT_WORKERS },
		{ "conns", required_argument, NULL, OPT_CONNS },
		{ "procs", required_argument, NULL, OPT_PROCS },
		{ "ping-interval", required_argument, NULL, OPT_PINGIV },
		{ "login-concurrency", required_argument, NULL, OPT_LOGINC },
		{ "worker-prefix", required_argument, NULL, OPT_WPREFIX },
		{ "worker-password", required_argument, NULL, OPT_WPASS },
		{ "pbkdf2-iter", required_argument, NULL, OPT_ITER },
		{ "pid", required_argument, NULL, OPT_PID },
		{ "no-src-spread", no_argument, NULL, OPT_NOSPREAD },
		{ "mode", required_argument, NULL, OPT_MODE },
		{ "task-type", required_argument, NULL, OPT_TT },
		{ "sample", required_argument, NULL, OPT_SAMPLE },
		{ "city-buildings", required_argument, NULL, OPT_CITYB },
		{ "city-communities", required_argument, NULL, OPT_CITYC },
		{ "partbench", required_argument, NULL, OPT_PARTBENCH },
		{ "json", required_argument, NULL, OPT_JSON },
		{ "trace", required_argument, NULL, OPT_TRACE },
		{ "db-conns", required_argument, NULL, OPT_DBCONNS },
		{ "merge-radius", required_argument, NULL, OPT_MRADIUS },
		{ "merge-window", required_argument, NULL, OPT_MWINDOW },
		{ "quiet", no_argument, NULL, OPT_QUIET },
		{ "metrics", required_argument, NULL, OPT_METRICS },
		{ NULL, 0, NULL, 0 },
	};
	const char *env;
	int ch;

	if (argc < 2)
		usage();
	if (strcmp(argv[1], "ingest") == 0)
		O.sc = SC_INGEST;
	else if (strcmp(argv[1], "dispatch") == 0)
		O.sc = SC_DISPATCH;
	else if (strcmp(argv[1], "connections") == 0)
		O.sc = SC_CONNECTIONS;
	else if (strcmp(argv[1], "partition") == 0)
		O.sc = SC_PARTITION;
	else if (strcmp(argv[1], "baseline") == 0)
		O.sc = SC_BASELINE;
	else
		usage();
	optind = 2;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case OPT_ADDR: O.addr = optarg; break;
		case OPT_TLS: O.tls = true; break;
		case OPT_CA: O.ca = optarg; break;
		case OPT_DB: O.db = optarg; break;
		case OPT_DEPT: add_dept(optarg); break;
		case OPT_CATS: add_list(optarg, add_category); break;
		case OPT_NEGCAT: O.negative_category = optarg; break;
		case OPT_DUP: O.dup_share = num_arg(optarg, 0, 1, "--dup-share");
			break;
		case OPT_MERGE: O.merge_share = num_arg(optarg, 0, 1,
		    "--merge-share"); break;
		case OPT_NEG: O.neg_share = num_arg(optarg, 0, 1, "--neg-share");
			break;
		case OPT_BATCH: O.batch = (int)num_arg(optarg, 1, 10000,
		    "--batch"); break;
		case OPT_INFLIGHT: O.inflight = (int)num_arg(optarg, 1, 1024,
		    "--inflight"); break;
		case OPT_RATE: O.rate = num_arg(optarg, 0, 1e7, "--rate");
			break;
		case OPT_DURATION: O.duration = num_arg(optarg, 0.1, 3600,
		    "--duration"); break;
		case OPT_WARMUP: O.warmup = num_arg(optarg, 0, 600,
		    "--warmup"); break;
		case OPT_MAXREQ: O.max_requests = (int64_t)num_arg(optarg, 1,
		    1e12, "--max-requests"); break;
		case OPT_WORKERS: O.workers = (int)num_arg(optarg, 1, 200000,
		    "--workers"); break;
		case OPT_CONNS: O.conns = (int)num_arg(optarg, 1, 200000,
		    "--conns"); break;
		case OPT_PROCS: O.procs = (int)num_arg(optarg, 1, 16,
		    "--procs"); break;
		case OPT_PINGIV: O.ping_interval = num_arg(optarg, 0.01, 600,
		    "--ping-interval"); break;
		case OPT_LOGINC: O.login_concurrency = (int)num_arg(optarg, 1,
		    10000, "--login-concurrency"); break;
		case OPT_WPREFIX: O.worker_prefix = optarg; break;
		case OPT_WPASS: O.worker_password = optarg; break;
		case OPT_ITER: O.pbkdf2_iter = (int)num_arg(optarg, 1, 10000000,
		    "--pbkdf2-iter"); break;
		case OPT_PID: O.pid = (long)num_arg(optarg, 1, 1e9, "--pid");
			break;
		case OPT_NOSPREAD: O.src_spread = false; break;
		case OPT_MODE: O.base_mode = optarg; break;
		case OPT_TT: O.task_type = optarg; break;
		case OPT_SAMPLE: O.sample_dir = optarg; break;
		case OPT_CITYB: O.city_buildings = (long)num_arg(optarg, 0, 1e8,
		    "--city-buildings"); break;
		case OPT_CITYC: O.city_communities = (long)num_arg(optarg, 1,
		    1e6, "--city-communities"); break;
		case OPT_PARTBENCH: O.partbench = optarg; break;
		case OPT_JSON: O.json = optarg; break;
		case OPT_TRACE: O.trace = optarg; break;
		case OPT_MRADIUS: O.merge_radius = num_arg(optarg, 0, 10000,
		    "--merge-radius"); break;
		case OPT_MWINDOW: O.merge_window = (int)num_arg(optarg, 0,
		    2592000, "--merge-window"); break;
		case OPT_DBCONNS: O.db_conns = (int)num_arg(optarg, 1, 256,
		    "--db-conns"); break;
		case OPT_QUIET: O.quiet = true; break;
		case OPT_METRICS: O.metrics = optarg; break;
		default: usage();
		}
	}
	if (optind != argc)
		usage();
	if (O.ndepts == 0 && (env = getenv("GRIDBENCH_DEPTS")) != NULL &&
	    env[0] != '\0')
		add_list(env, add_dept);
	if (O.worker_password == NULL)
		O.worker_password = getenv("GRIDBENCH_WORKER_PASSWORD");
	if (O.db == NULL)
		O.db = getenv("GRIDBENCH_DB");
	if (strlen(O.worker_prefix) > BDB_ID_MAX - 6)
		die("--worker-prefix: at most %d characters", BDB_ID_MAX - 6);
	parse_addr();
	if ((O.sc == SC_DISPATCH || O.sc == SC_CONNECTIONS) &&
	    (O.worker_password == NULL || O.worker_password[0] == '\0'))
		die("workers need GRIDBENCH_WORKER_PASSWORD");
	if (O.sc != SC_PARTITION && O.db == NULL)
		die("--db CONNINFO (or GRIDBENCH_DB) is needed");
	snprintf(O.tag, sizeof(O.tag), "gb%llx%x",
	    (unsigned long long)wall_ms(), (unsigned)getpid() & 0xffff);
	rng_state ^= (uint64_t)wall_ms() * 0x2545f4914f6cdd1dull;
}

static SSL_CTX *
make_tls(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL)
		die("TLS: cannot make a context");
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	if (O.ca != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, O.ca, NULL) != 1)
			die("TLS: cannot read %s", O.ca);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
}

int
main(int argc, char **argv)
{
	static const char *names[] = { "ingest", "dispatch", "connections",
	    "partition", "baseline" };
	char err[512];
	struct jw w;
	FILE *jf;
	int rc;

	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_args(argc, argv);
	if (O.trace != NULL && O.sc != SC_INGEST)
		die("--trace is for ingest only");
	raise_nofile();
	if (O.tls)
		tls_ctx = make_tls();
	if ((base = event_base_new()) == NULL)
		die("event_base_new failed");
	if (O.sc == SC_INGEST || O.sc == SC_BASELINE || O.sc == SC_DISPATCH) {
		if (!bdb_load_points(O.db, 200000, O.sc == SC_DISPATCH,
		    &points, err, sizeof(err)))
			die("%s", err);
		note("%zu building points loaded", points.n);
	}
	jf = tmpfile();
	if (jf == NULL)
		die("tmpfile: %s", strerror(errno));
	jw_begin(&w, jf);
	jw_str(&w, "scenario", names[O.sc]);
	jw_int(&w, "at_unix_ms", wall_ms());
	jw_obj(&w, "figures");
	switch (O.sc) {
	case SC_INGEST: rc = run_ingest(&w); break;
	case SC_DISPATCH: rc = run_dispatch(&w); break;
	case SC_CONNECTIONS: rc = run_connections(&w); break;
	case SC_PARTITION: rc = run_partition(&w); break;
	default: rc = run_baseline(&w); break;
	}
	jw_close(&w);
	jw_end(&w);
	if (O.json != NULL) {
		FILE *out = strcmp(O.json, "-") == 0 ? stdout :
		    fopen(O.json, "w");
		char buf[8192];
		size_t k;

		if (out == NULL)
			die("%s: %s", O.json, strerror(errno));
		rewind(jf);
		while ((k = fread(buf, 1, sizeof(buf), jf)) > 0)
			fwrite(buf, 1, k, out);
		if (out != stdout && fclose(out) != 0)
			die("%s: write failed", O.json);
	}
	fclose(jf);
	bdb_points_free(&points);
	if (tls_ctx != NULL)
		SSL_CTX_free(tls_ctx);
	event_base_free(base);
	return rc;
}

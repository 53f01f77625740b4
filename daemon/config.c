/* config.c - gridd.conf: the key table, an INI parser, validation, reference. */
#include "config.h"

/*
 * Why a parser of our own rather than inih (Debian's libinih): Debian builds
 * it without INI_HANDLER_LINENO, so the handler never learns the line number
 * and a bad value cannot be reported as FILE:LINE; its line buffer is fixed
 * at compile time (INI_MAX_LINE, 200 bytes) and a longer line is not
 * rejected but read on as if its tail were another line; and its inline
 * comments (";" after a value) would silently cut a libpq conninfo or a
 * guidance text. The grammar below is small: owning it costs less than
 * working around those three.
 *
 * Grammar: "[section]", "key = value", full-line comments starting with ";"
 * or "#", blank lines. Whitespace around names and values is trimmed; a value
 * is the rest of the line (no quoting, no inline comments). Lines end with
 * LF or CRLF; a UTF-8 byte order mark at the start is skipped. NUL bytes and
 * other control characters (tab aside) are errors.
 *
 * A parse builds a fresh struct cfg from the defaults in the key table, then
 * applies the file; cross-key checks and [community.ID] inheritance run once
 * the whole file is read, so order in the file never matters.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buildconf.h"
#include "log.h"

/* Per-ID sections of one kind, and category lines of one department. The
 * whole file is bounded too; these keep lookups during the parse cheap. */
#define CFG_MAX_IDS 10000
#define CFG_MAX_CATEGORIES 10000
#define MAX_HOST 253			/* a DNS name */

enum sec {
	SEC_NONE,
	SEC_SERVER,
	SEC_ADMIN_HTTP,
	SEC_DATABASE,
	SEC_AUTH,
	SEC_GRID,
	SEC_DISPATCH,
	SEC_COMMUNITY,
	SEC_ADMIN,
	SEC_DEPARTMENT,
	SEC_TASK_TYPE,
	SEC_COUNT,
};

static const struct {
	const char *name;
	bool per_id;
} sections[SEC_COUNT] = {
	[SEC_NONE] = { "", false },
	[SEC_SERVER] = { "server", false },
	[SEC_ADMIN_HTTP] = { "admin_http", false },
	[SEC_DATABASE] = { "database", false },
	[SEC_AUTH] = { "auth", false },
	[SEC_GRID] = { "grid", false },
	[SEC_DISPATCH] = { "dispatch", false },
	[SEC_COMMUNITY] = { "community", true },
	[SEC_ADMIN] = { "admin", true },
	[SEC_DEPARTMENT] = { "department", true },
	[SEC_TASK_TYPE] = { "task_type", true },
};

struct key_def {
	struct cfg_key_info info;
	enum sec sec;		/* [community.ID] uses the SEC_GRID keys */
	size_t off;		/* into the section's struct (see sec_base) */
};

#define F_REQ 1u
#define F_REP 2u
#define F_RESTART 4u

#define KEY(sec, sname, name, type, off, def, lo, hi, fl, desc)		\
	{ { sname, name, type, def, lo, hi, ((fl) & F_REQ) != 0,	\
	    ((fl) & F_REP) != 0, ((fl) & F_RESTART) != 0, desc }, sec, off }
/* KC(S, ...): S expands to two arguments only through a second macro. */
#define KC(...) KC_(__VA_ARGS__)
#define KC_(sec, sname, name, type, field, def, lo, hi, fl, desc)	\
	KEY(sec, sname, name, type, offsetof(struct cfg, field), def, lo, hi, \
	    fl, desc)
#define KG(name, type, field, def, lo, hi, desc)			\
	KEY(SEC_GRID, "grid", name, type, offsetof(struct cfg_grid, field), \
	    def, lo, hi, 0, desc)
#define KA(name, type, field, def, fl, desc)				\
	KEY(SEC_ADMIN, "admin.ID", name, type,				\
	    offsetof(struct cfg_admin, field), def, 0, 0, fl, desc)
#define KD(name, type, field, def, fl, desc)				\
	KEY(SEC_DEPARTMENT, "department.ID", name, type,		\
	    offsetof(struct cfg_department, field), def, 0, 0, fl, desc)
#define KT(name, type, field, def, lo, hi, fl, desc)			\
	KEY(SEC_TASK_TYPE, "task_type.NAME", name, type,		\
	    offsetof(struct cfg_task_type, field), def, lo, hi, fl, desc)

#define S SEC_SERVER, "server"
#define H SEC_ADMIN_HTTP, "admin_http"
#define D SEC_DATABASE, "database"
#define A SEC_AUTH, "auth"
#define P SEC_DISPATCH, "dispatch"

static const struct key_def keys[] = {
	KC(S, "listen", CFG_T_LISTEN, listen, NULL, 0, 0,
	    F_REQ | F_REP | F_RESTART,
	    "API listener, HOST:PORT or HOST:PORT tls (IPv6 as [::1]:7700); "
	    "repeat for several, at most 16"),
	KC(S, "tls_cert", CFG_T_PATH, tls_cert, NULL, 0, 0, 0,
	    "PEM certificate chain for tls listeners"),
	KC(S, "tls_key", CFG_T_PATH, tls_key, NULL, 0, 0, 0,
	    "PEM private key for tls listeners"),
	KC(S, "tls_client_ca", CFG_T_PATH, tls_client_ca, NULL, 0, 0, 0,
	    "PEM CA bundle that verifies client certificates; unset = none "
	    "asked for"),
	KC(S, "max_connections", CFG_T_INT, max_connections, "10000", 1,
	    1000000, F_RESTART,
	    "client connections at once; further accepts are closed"),
	KC(S, "max_frame_bytes", CFG_T_UINT32, max_frame_bytes, "1048576",
	    1024, 67108864, 0,
	    "largest frame after login; larger is TOO_LARGE and a close"),
	KC(S, "max_frame_bytes_unauth", CFG_T_UINT32, max_frame_bytes_unauth,
	    "4096", 64, 67108864, 0,
	    "largest frame before login; at most max_frame_bytes"),
	KC(S, "idle_timeout_s", CFG_T_INT, idle_timeout_s, "300", 1, 604800,
	    0, "close a connection silent this long"),
	KC(S, "login_timeout_s", CFG_T_INT, login_timeout_s, "10", 1, 3600, 0,
	    "close a connection not logged in this long after accept"),
	KC(S, "max_output_bytes", CFG_T_UINT32, max_output_bytes, "1048576",
	    4096, 1073741824, 0,
	    "unsent bytes per connection before it stops being read"),
	KC(S, "output_stall_timeout_s", CFG_T_INT, output_stall_timeout_s,
	    "30", 1, 3600, 0,
	    "drop a connection over max_output_bytes for this long"),
	KC(S, "max_frames_per_read", CFG_T_INT, max_frames_per_read, "16", 1,
	    1024, 0, "frames handled per read event, for fairness"),
	KC(S, "shutdown_timeout_s", CFG_T_INT, shutdown_timeout_s, "10", 0,
	    3600, 0, "on SIGTERM, wait this long for in-flight work"),
	KC(S, "log_level", CFG_T_LOG_LEVEL, log_level, "info", 0, 0, 0,
	    "least severe level logged"),

	KC(H, "listen", CFG_T_ADDRESS, http_listen, NULL, 0, 0, F_RESTART,
	    "HOST:PORT for /healthz and /metrics; unset = off"),
	KC(H, "health_timeout_ms", CFG_T_INT, health_timeout_ms, "1000", 10,
	    60000, 0, "/healthz fails when the database is slower than this"),

	KC(D, "conninfo", CFG_T_STRING, conninfo, NULL, 0, 0,
	    F_REQ | F_RESTART, "libpq connection string"),
	KC(D, "pool_size", CFG_T_INT, pool_size, "4", 1, 64, F_RESTART,
	    "database connections"),
	KC(D, "query_timeout_ms", CFG_T_INT, query_timeout_ms, "5000", 10,
	    600000, 0, "a statement not answered this long fails; for pushes "
	    "and workers' actions counted from the request's arrival, time "
	    "queued in gridd included"),
	KC(D, "max_waiting", CFG_T_INT, max_waiting, "10000", 0, 1000000, 0,
	    "statements queued beyond the pool; more fail at once"),
	KC(D, "reconnect_max_ms", CFG_T_INT, reconnect_max_ms, "5000", 100,
	    600000, 0, "longest pause between reconnect attempts"),
	KC(D, "replan_interval_s", CFG_T_INT, replan_interval_s, "60", 0,
	    86400, 0, "each connection drops its cached plans this often, so "
	    "that none made while a table was nearly empty lives on; 0 = never"),
	KC(D, "migrations_dir", CFG_T_PATH, migrations_dir, GRIDD_SQLDIR, 0, 0,
	    F_RESTART, "directory of numbered NNN_name.sql migrations"),
	KC(D, "report_rollup_interval_s", CFG_T_INT, report_rollup_interval_s,
	    "300", 0, 86400, 0,
	    "roll up the burden report's finished days this often; 0 = only "
	    "when a report asks"),
	KC(D, "report_rollup_budget_ms", CFG_T_INT, report_rollup_budget_ms,
	    "1000", 10, 600000, 0,
	    "database time one roll-up step may take; below query_timeout_ms"),

	KC(A, "pbkdf2_iterations", CFG_T_INT, pbkdf2_iterations, "100000",
	    1000, 10000000, 0,
	    "PBKDF2-SHA256 iterations for new worker passwords"),
	KC(A, "token_ttl_s", CFG_T_INT, token_ttl_s, "604800", 1, 31536000,
	    0, "lifetime of a session (resume) token"),
	KC(A, "login_max_failures", CFG_T_INT, login_max_failures, "5", 1,
	    1000, 0, "failed logins per principal or address per window"),
	KC(A, "login_failure_window_s", CFG_T_INT, login_failure_window_s,
	    "300", 1, 86400, 0, "window over which failed logins count"),

	KG("min_households", CFG_T_INT, min_households, "300", 1, 100000,
	    "fewest households in a cell"),
	KG("target_households", CFG_T_INT, target_households, "400", 1, 100000,
	    "households the partitioner aims for"),
	KG("max_households", CFG_T_INT, max_households, "500", 1, 100000,
	    "most households in a cell"),
	KG("neighbour_m", CFG_T_DOUBLE, neighbour_m, "30", 0.1, 5000,
	    "buildings closer than this are adjacent"),
	KG("dedicated_min_buildings", CFG_T_INT, dedicated_min_buildings, "5",
	    1, 100000,
	    "non-residential buildings that make a dedicated cell"),
	KG("dedicated_min_area_m2", CFG_T_DOUBLE, dedicated_min_area_m2, "5000",
	    1, 1e9, "or the floor area that makes one"),
	KG("partition_timeout_s", CFG_T_INT, partition_timeout_s, "300", 1,
	    86400, "loading or applying one community's partition may take "
	    "this long"),
	KG("repartition_delay_s", CFG_T_INT, repartition_delay_s, "5", 0,
	    86400, "an import that leaves a community's cells stale queues "
	    "its repartition after this long without another; 0 = never"),

	KC(P, "offer_timeout_s", CFG_T_INT, offer_timeout_s, "120", 5, 86400,
	    0, "an offer not accepted this long goes to the next worker"),
	KC(P, "max_offers", CFG_T_INT, max_offers, "3", 1, 100, 0,
	    "offers per incident before it is escalated"),
	KC(P, "merge_radius_m", CFG_T_DOUBLE, merge_radius_m, "50", 0, 10000,
	    0, "same task type within this distance is one incident"),
	KC(P, "merge_window_s", CFG_T_INT, merge_window_s, "3600", 0, 2592000,
	    0, "and within this time"),
	KC(P, "max_batch", CFG_T_INT, max_batch, "1000", 1, 100000, 0,
	    "incidents per PushIncidents"),
	KC(P, "push_max_future_s", CFG_T_INT, push_max_future_s, "600", 0,
	    86400, 0, "an incident's occurred_at may be this far ahead of "
	    "the server's clock"),
	KC(P, "push_max_age_days", CFG_T_INT, push_max_age_days, "365", 1,
	    36500, 0, "and this far in the past"),
	KC(P, "group_commit_max_items", CFG_T_INT, group_commit_max_items,
	    "5000", 1, 1000000, 0, "incidents of queued pushes taken "
	    "together when a connection is free (group commit), shared among "
	    "the free connections by task type"),
	KC(P, "group_commit_parallel", CFG_T_INT, group_commit_parallel,
	    "2", 1, 16, 0, "ingest transactions in flight at once (at most "
	    "database.pool_size - 1): a push's items of each task type (its "
	    "parts) go as soon as a connection is free and nothing in flight "
	    "could make them wait, one transaction per lane of task types; a "
	    "part starts beside others only when its merges cannot meet "
	    "theirs; one source's pushes of a task type stay in order"),
	KC(P, "group_commit_min_items", CFG_T_INT, group_commit_min_items,
	    "0", 0, 1000000, 0, "a transaction starts beside ingest "
	    "transactions already in flight only once this many incidents "
	    "are queued, or once the oldest has waited "
	    "group_commit_delay_ms: fewer, larger transactions under load, "
	    "each paying the call's fixed cost once (0: start at once; "
	    "nothing to do with group_commit_parallel = 1)"),
	KC(P, "group_commit_delay_ms", CFG_T_INT, group_commit_delay_ms,
	    "4", 0, 1000, 0, "the longest a push waits for "
	    "group_commit_min_items while another ingest transaction is in "
	    "flight (at most half of database.query_timeout_ms; 0: never)"),
	KC(P, "push_queue_max_items", CFG_T_INT, push_queue_max_items,
	    "200000", 1, 10000000, 0, "incidents waiting for a transaction; "
	    "pushes beyond it are UNAVAILABLE"),
	KC(P, "subscribe_page", CFG_T_INT, subscribe_page, "500", 1, 100000,
	    0, "events read per query for one subscriber"),
	KC(P, "checkin_max_age_s", CFG_T_INT, checkin_max_age_s, "900", 10,
	    86400, 0, "older check-in positions are ignored for distance"),
	KC(P, "checkin_history", CFG_T_INT, checkin_history, "100", 1,
	    100000, 0, "check-in history rows kept per worker"),
	KC(P, "scan_interval_s", CFG_T_INT, scan_interval_s, "10", 1, 3600, 0,
	    "escalated incidents are retried and missed work found this "
	    "often"),
	KC(P, "dispatch_batch", CFG_T_INT, dispatch_batch, "32", 1, 64, 0,
	    "incidents, timers or worker actions handled per database "
	    "statement"),
	KC(P, "push_offer_max", CFG_T_INT, push_offer_max, "1000", 1, 1000000,
	    0, "new incidents offered inside one push transaction; the rest "
	    "are offered right after its commit"),

	KA("key_sha256", CFG_T_SHA256, key_sha256, NULL, F_REQ,
	    "SHA-256 of the admin's key"),

	KD("name", CFG_T_STRING, name, NULL, 0,
	    "display name; unset = the ID"),
	KD("key_sha256", CFG_T_SHA256, key_sha256, NULL, 0,
	    "SHA-256 of the department's API key; unset = cannot log in"),
	KD("category.CODE", CFG_T_CATEGORY, categories, NULL, F_REP,
	    "maps the department's category CODE to a defined task type"),

	KT("list", CFG_T_LIST, list, NULL, 0, 0, F_REQ,
	    "which of the four lists the task type is on"),
	KT("matter", CFG_T_MATTER, matter, NULL, 0, 0, F_REQ,
	    "big, small or private matter (three-matter triage)"),
	KT("sla_minutes", CFG_T_INT, sla_minutes, "1440", 1, 525600, 0,
	    "deadline after the incident is accepted"),
	KT("route", CFG_T_ROUTE, route, NULL, 0, 0, 0,
	    "unset = from matter: small to worker, big to department, "
	    "private to referral"),
	KT("guidance", CFG_T_TEXT, guidance, NULL, 0, 0, 0,
	    "text sent with a referral"),
	KT("department", CFG_T_STRING, department, NULL, 0, 0, 0,
	    "owns (on the assist list: funds) the incidents grid workers "
	    "report of this type; unset = workers may not report a big "
	    "matter of it"),
};

#undef S
#undef H
#undef D
#undef A
#undef P

static const char *const list_names[] = {
	[CFG_LIST_AUTONOMY] = "autonomy",
	[CFG_LIST_ASSIST] = "assist",
	[CFG_LIST_NEGATIVE] = "negative",
	[CFG_LIST_CERTIFICATE] = "certificate",
};

static const char *const matter_names[] = {
	[CFG_MATTER_BIG] = "big",
	[CFG_MATTER_SMALL] = "small",
	[CFG_MATTER_PRIVATE] = "private",
};

static const char *const route_names[] = {
	[CFG_ROUTE_WORKER] = "worker",
	[CFG_ROUTE_DEPARTMENT] = "department",
	[CFG_ROUTE_REFERRAL] = "referral",
};

/* Parse-time bookkeeping for one section instance. */
struct inst {
	int line;		/* of the section header */
	int *seen;		/* per key: 0 unset, its line, -line if bad */
	int *cat_line;		/* departments: line of each category */
	size_t cat_cap;
};

struct parser {
	const char *file;
	struct cfg *cfg;
	struct cfg_errors *errs;
	bool gave_up;
	int line;
	int sec_line[SEC_COUNT];	/* header line of fixed sections */
	struct inst fixed;		/* fixed sections and [grid] */
	struct inst *inst[SEC_COUNT];	/* parallel to the per-ID arrays */
	size_t cap[SEC_COUNT];
	int listen_line[CFG_MAX_LISTEN];
	enum sec cur;			/* SEC_NONE: before any, or skipped */
	size_t cur_idx;
	bool skip;			/* keys of a rejected section header */
	char cur_name[96];		/* "server", "department.ID" */
};

/* --- errors --- */

static void
errs_push(struct cfg_errors *errs, const char *file, int line,
    const char *key, const char *reason)
{
	struct cfg_error *e;

	errs->v = xreallocarray(errs->v, errs->n + 1, sizeof(*errs->v));
	e = &errs->v[errs->n++];
	e->file = xstrdup(file);
	e->line = line;
	e->key = xstrdup(key);
	e->reason = xstrdup(reason);
}

static void add_error(struct parser *p, int line, const char *key,
    const char *fmt, ...) PRINTF_LIKE(4, 5);

static void
add_error(struct parser *p, int line, const char *key, const char *fmt, ...)
{
	char reason[512];
	va_list ap;

	if (p->gave_up)
		return;
	if (p->errs->n + 1 >= CFG_MAX_ERRORS) {
		errs_push(p->errs, p->file, line, "file",
		    "too many errors, stopping here");
		p->gave_up = true;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	errs_push(p->errs, p->file, line, key, reason);
}

/* Text from the file quoted back in an error: bounded, and without bytes
 * that would break a log line's quoting. */
static const char *
echo(const char *s, char *buf, size_t len)
{
	size_t i, max = len - 4;

	for (i = 0; s[i] != '\0' && i < max; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[i] = (c < 0x20 || c == 0x7f || c == '"' || c == '\\') ?
		    '?' : (char)c;
	}
	if (s[i] != '\0') {
		memcpy(buf + i, "...", 3);
		i += 3;
	}
	buf[i] = '\0';
	return buf;
}

void
cfg_errors_print(const struct cfg_errors *errs, FILE *fp)
{
	for (size_t i = 0; i < errs->n; i++)
		fprintf(fp, "%s:%d: %s: %s\n", errs->v[i].file,
		    errs->v[i].line, errs->v[i].key, errs->v[i].reason);
}

void
cfg_errors_clear(struct cfg_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++) {
		free(errs->v[i].file);
		free(errs->v[i].key);
		free(errs->v[i].reason);
	}
	free(errs->v);
	errs->v = NULL;
	errs->n = 0;
}

/* --- values --- */

static bool
valid_id(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > CFG_MAX_ID)
		return false;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789_.-") == n;
}

static bool
is_integer_type(enum cfg_type t)
{
	return t == CFG_T_INT || t == CFG_T_UINT32;
}

static void
fmt_num(enum cfg_type t, double v, char *buf, size_t len)
{
	if (is_integer_type(t))
		snprintf(buf, len, "%.0f", v);
	else
		snprintf(buf, len, "%.15g", v);
}

static bool
parse_number(const struct cfg_key_info *ki, const char *val, double *out,
    char *why, size_t wl)
{
	char lo[32], hi[32], e[80];
	char *end;
	double v;

	fmt_num(ki->type, ki->min, lo, sizeof(lo));
	fmt_num(ki->type, ki->max, hi, sizeof(hi));
	errno = 0;
	if (is_integer_type(ki->type)) {
		long long ll = strtoll(val, &end, 10);

		v = (double)ll;
	} else {
		/* strtod also takes hex, "inf" and "nan": not numbers here. */
		if (strspn(val, "0123456789.eE+-") != strlen(val))
			end = (char *)val;
		else
			v = strtod(val, &end);
	}
	if (end == val || *end != '\0' || errno == ERANGE || !isfinite(v)) {
		snprintf(why, wl, "'%s' is not %s between %s and %s",
		    echo(val, e, sizeof(e)), is_integer_type(ki->type) ?
		    "an integer" : "a number", lo, hi);
		return false;
	}
	if (v < ki->min) {
		snprintf(why, wl, "%s is below the minimum %s",
		    echo(val, e, sizeof(e)), lo);
		return false;
	}
	if (v > ki->max) {
		snprintf(why, wl, "%s is above the maximum %s",
		    echo(val, e, sizeof(e)), hi);
		return false;
	}
	*out = v;
	return true;
}

/* "HOST:PORT" with IPv6 in brackets; host is returned without them. */
static bool
parse_address(const char *addr, char *host, size_t hostlen, unsigned *port,
    bool *v6, char *why, size_t wl)
{
	const char *portstr;
	char e[80];
	size_t hn;

	*v6 = false;
	if (addr[0] == '[') {
		const char *rb = strchr(addr, ']');
		struct in6_addr a6;

		if (rb == NULL) {
			snprintf(why, wl, "missing ']' after an IPv6 address");
			return false;
		}
		hn = (size_t)(rb - addr - 1);
		if (hn == 0 || hn >= hostlen) {
			snprintf(why, wl, "invalid IPv6 address");
			return false;
		}
		memcpy(host, addr + 1, hn);
		host[hn] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1) {
			snprintf(why, wl, "'%s' is not an IPv6 address",
			    echo(host, e, sizeof(e)));
			return false;
		}
		if (rb[1] != ':') {
			snprintf(why, wl, "expected [IPV6]:PORT");
			return false;
		}
		portstr = rb + 2;
		*v6 = true;
	} else {
		const char *colon = strrchr(addr, ':');

		if (colon == NULL) {
			snprintf(why, wl, "expected HOST:PORT");
			return false;
		}
		hn = (size_t)(colon - addr);
		if (memchr(addr, ':', hn) != NULL) {
			snprintf(why, wl, "an IPv6 address needs brackets, "
			    "as in [::1]:7700");
			return false;
		}
		if (hn == 0) {
			snprintf(why, wl, "missing host (0.0.0.0 or [::] "
			    "listens on every address)");
			return false;
		}
		if (hn > MAX_HOST || hn >= hostlen) {
			snprintf(why, wl, "host name longer than %d bytes",
			    MAX_HOST);
			return false;
		}
		memcpy(host, addr, hn);
		host[hn] = '\0';
		if (strspn(host, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "abcdefghijklmnopqrstuvwxyz0123456789.-_") != hn) {
			snprintf(why, wl, "'%s' is not a host name or address",
			    echo(host, e, sizeof(e)));
			return false;
		}
		portstr = colon + 1;
	}
	size_t pn = strlen(portstr);
	unsigned long pv = 0;

	if (pn >= 1 && pn <= 5 && strspn(portstr, "0123456789") == pn)
		pv = strtoul(portstr, NULL, 10);
	if (pv < 1 || pv > 65535) {
		snprintf(why, wl, "invalid port '%s' (1..65535)",
		    echo(portstr, e, sizeof(e)));
		return false;
	}
	*port = (unsigned)pv;
	return true;
}

static bool
parse_listen(struct cfg *cfg, const char *val, char *why, size_t wl)
{
	char addr[CFG_MAX_LINE + 1], host[MAX_HOST + 1], portbuf[8], e[80];
	const char *rest;
	size_t an = strcspn(val, " \t");
	unsigned port;
	bool v6, tls = false;

	if (cfg->n_listen >= CFG_MAX_LISTEN) {
		snprintf(why, wl, "more than %d listeners", CFG_MAX_LISTEN);
		return false;
	}
	memcpy(addr, val, an);
	addr[an] = '\0';
	rest = val + an + strspn(val + an, " \t");
	if (strcmp(rest, "tls") == 0)
		tls = true;
	else if (*rest != '\0') {
		snprintf(why, wl, "unexpected '%s' after the address (only "
		    "'tls' may follow)", echo(rest, e, sizeof(e)));
		return false;
	}
	if (!parse_address(addr, host, sizeof(host), &port, &v6, why, wl))
		return false;
	snprintf(portbuf, sizeof(portbuf), "%u", port);
	cfg->listen[cfg->n_listen].host = xstrdup(host);
	cfg->listen[cfg->n_listen].port = xstrdup(portbuf);
	cfg->listen[cfg->n_listen].tls = tls;
	cfg->n_listen++;
	return true;
}

static bool
parse_name(const char *const *names, size_t n, const char *val, int *out,
    char *why, size_t wl)
{
	char opts[128] = "", e[80];

	for (size_t i = 0; i < n; i++) {
		if (names[i] == NULL)
			continue;
		if (strcmp(val, names[i]) == 0) {
			*out = (int)i;
			return true;
		}
		if (opts[0] != '\0')
			strcat(opts, ", ");
		strcat(opts, names[i]);
	}
	snprintf(why, wl, "'%s' is not one of %s", echo(val, e, sizeof(e)),
	    opts);
	return false;
}

static void
set_string(char **dst, const char *val)
{
	free(*dst);
	*dst = xstrdup(val);
}

/* Applies one value (from the file or a default) to its field. LISTEN needs
 * base to be the struct cfg; CATEGORY lines are not handled here. */
static bool
set_value(const struct key_def *kd, void *base, const char *val, char *why,
    size_t wl)
{
	static const char *const levels[] = { "debug", "info", "warn",
	    "error" };
	char *field = (char *)base + kd->off;
	char host[MAX_HOST + 1], buf[MAX_HOST + 16];
	unsigned port;
	double d;
	bool v6;
	int iv;

	switch (kd->info.type) {
	case CFG_T_INT:
		if (!parse_number(&kd->info, val, &d, why, wl))
			return false;
		*(int *)(void *)field = (int)d;
		return true;
	case CFG_T_UINT32:
		if (!parse_number(&kd->info, val, &d, why, wl))
			return false;
		*(uint32_t *)(void *)field = (uint32_t)d;
		return true;
	case CFG_T_DOUBLE:
		if (!parse_number(&kd->info, val, &d, why, wl))
			return false;
		*(double *)(void *)field = d;
		return true;
	case CFG_T_STRING:
	case CFG_T_TEXT:
	case CFG_T_PATH:
		set_string((char **)(void *)field, val);
		return true;
	case CFG_T_ADDRESS:
		if (!parse_address(val, host, sizeof(host), &port, &v6, why,
		    wl))
			return false;
		snprintf(buf, sizeof(buf), v6 ? "[%s]:%u" : "%s:%u", host,
		    port);
		set_string((char **)(void *)field, buf);
		return true;
	case CFG_T_LISTEN:
		return parse_listen(base, val, why, wl);
	case CFG_T_LOG_LEVEL: {
		enum log_level lvl;

		if (!log_parse_level(val, &lvl))
			return parse_name(levels, ARRAY_LEN(levels), val, &iv,
			    why, wl);
		*(int *)(void *)field = (int)lvl;
		return true;
	}
	case CFG_T_LIST:
		if (!parse_name(list_names, ARRAY_LEN(list_names), val, &iv,
		    why, wl))
			return false;
		*(enum cfg_list *)(void *)field = (enum cfg_list)iv;
		return true;
	case CFG_T_MATTER:
		if (!parse_name(matter_names, ARRAY_LEN(matter_names), val,
		    &iv, why, wl))
			return false;
		*(enum cfg_matter *)(void *)field = (enum cfg_matter)iv;
		return true;
	case CFG_T_ROUTE:
		if (!parse_name(route_names, ARRAY_LEN(route_names), val, &iv,
		    why, wl))
			return false;
		*(enum cfg_route *)(void *)field = (enum cfg_route)iv;
		return true;
	case CFG_T_SHA256:
		if (!hex_decode(val, (uint8_t *)field, 32)) {
			snprintf(why, wl, "expected 64 hex digits (the SHA-256 "
			    "of the key, as sha256sum prints it)");
			return false;
		}
		return true;
	case CFG_T_CATEGORY:
		break;
	}
	snprintf(why, wl, "internal: no setter for this key");
	return false;
}

static bool
format_value(const struct key_def *kd, const void *base, char *buf,
    size_t len)
{
	const char *field = (const char *)base + kd->off;
	const char *s = NULL;
	int n = -1;

	switch (kd->info.type) {
	case CFG_T_INT:
		n = snprintf(buf, len, "%d", *(const int *)(const void *)field);
		break;
	case CFG_T_UINT32:
		n = snprintf(buf, len, "%" PRIu32,
		    *(const uint32_t *)(const void *)field);
		break;
	case CFG_T_DOUBLE:
		n = snprintf(buf, len, "%.15g",
		    *(const double *)(const void *)field);
		break;
	case CFG_T_STRING:
	case CFG_T_TEXT:
	case CFG_T_PATH:
	case CFG_T_ADDRESS:
		s = *(char *const *)(const void *)field;
		break;
	case CFG_T_LOG_LEVEL: {
		int lvl = *(const int *)(const void *)field;

		if (lvl >= LOG_LVL_DEBUG && lvl <= LOG_LVL_ERROR)
			s = log_level_name((enum log_level)lvl);
		break;
	}
	case CFG_T_LIST:
		s = cfg_list_name(*(const enum cfg_list *)(const void *)field);
		break;
	case CFG_T_MATTER:
		s = cfg_matter_name(
		    *(const enum cfg_matter *)(const void *)field);
		break;
	case CFG_T_ROUTE:
		s = cfg_route_name(*(const enum cfg_route *)(const void *)field);
		break;
	case CFG_T_SHA256: {
		char hex[65];

		hex_encode((const uint8_t *)field, 32, hex);
		n = snprintf(buf, len, "%s", hex);
		break;
	}
	case CFG_T_LISTEN: {
		const struct cfg *cfg = base;
		size_t off = 0;

		if (cfg->n_listen == 0)
			return false;
		for (size_t i = 0; i < cfg->n_listen; i++) {
			const struct cfg_listen *l = &cfg->listen[i];
			bool v6 = strchr(l->host, ':') != NULL;

			n = snprintf(buf + off, len - off, "%s%s%s%s:%s%s",
			    i > 0 ? ", " : "", v6 ? "[" : "", l->host,
			    v6 ? "]" : "", l->port, l->tls ? " tls" : "");
			if (n < 0 || (size_t)n >= len - off)
				return false;
			off += (size_t)n;
		}
		return true;
	}
	case CFG_T_CATEGORY:
		return false;
	}
	if (s != NULL && strcmp(s, "?") != 0)
		n = snprintf(buf, len, "%s", s);
	return n >= 0 && (size_t)n < len;
}

/* --- sections --- */

static void *
sec_base(struct cfg *cfg, enum sec s, size_t i)
{
	switch (s) {
	case SEC_GRID:
		return &cfg->grid;
	case SEC_COMMUNITY:
		return &cfg->communities[i].grid;
	case SEC_ADMIN:
		return &cfg->admins[i];
	case SEC_DEPARTMENT:
		return &cfg->departments[i];
	case SEC_TASK_TYPE:
		return &cfg->task_types[i];
	default:
		return cfg;
	}
}

static size_t
sec_count(const struct cfg *cfg, enum sec s)
{
	switch (s) {
	case SEC_COMMUNITY:
		return cfg->n_communities;
	case SEC_ADMIN:
		return cfg->n_admins;
	case SEC_DEPARTMENT:
		return cfg->n_departments;
	case SEC_TASK_TYPE:
		return cfg->n_task_types;
	default:
		return 0;
	}
}

/* The i-th per-ID struct. Each starts with its char * ID (see config.h),
 * which lets one comparator sort and search them all. */
static void *
sec_obj(struct cfg *cfg, enum sec s, size_t i)
{
	if (s == SEC_COMMUNITY)
		return &cfg->communities[i];
	return sec_base(cfg, s, i);
}

static const char *
sec_id(struct cfg *cfg, enum sec s, size_t i)
{
	return *(char **)sec_obj(cfg, s, i);
}

static int
cmp_id(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void
sort_by_id(void *base, size_t n, size_t size)
{
	xqsort(base, n, size, cmp_id);
}

static void
apply_defaults(void *base, enum sec s)
{
	char why[256];

	for (size_t k = 0; k < ARRAY_LEN(keys); k++) {
		if (keys[k].sec != s || keys[k].info.def == NULL)
			continue;
		if (!set_value(&keys[k], base, keys[k].info.def, why,
		    sizeof(why))) {
			/* A broken table; the unit tests load every default. */
			fprintf(stderr, "config: default of %s.%s: %s\n",
			    keys[k].info.section, keys[k].info.key, why);
			abort();
		}
	}
}

static size_t
sec_add(struct parser *p, enum sec s, const char *id, int line)
{
	struct cfg *cfg = p->cfg;
	size_t n = sec_count(cfg, s);
	struct inst *in;

	if (n == p->cap[s]) {
		size_t cap = n ? 2 * n : 8;

		switch (s) {
		case SEC_COMMUNITY:
			cfg->communities = xreallocarray(cfg->communities, cap,
			    sizeof(*cfg->communities));
			break;
		case SEC_ADMIN:
			cfg->admins = xreallocarray(cfg->admins, cap,
			    sizeof(*cfg->admins));
			break;
		case SEC_DEPARTMENT:
			cfg->departments = xreallocarray(cfg->departments, cap,
			    sizeof(*cfg->departments));
			break;
		default:
			cfg->task_types = xreallocarray(cfg->task_types, cap,
			    sizeof(*cfg->task_types));
			break;
		}
		p->inst[s] = xreallocarray(p->inst[s], cap, sizeof(struct inst));
		p->cap[s] = cap;
	}
	switch (s) {
	case SEC_COMMUNITY:
		memset(&cfg->communities[n], 0, sizeof(cfg->communities[n]));
		cfg->communities[n].line = line;
		cfg->n_communities++;
		break;
	case SEC_ADMIN:
		memset(&cfg->admins[n], 0, sizeof(cfg->admins[n]));
		cfg->n_admins++;
		break;
	case SEC_DEPARTMENT:
		memset(&cfg->departments[n], 0, sizeof(cfg->departments[n]));
		cfg->n_departments++;
		break;
	default:
		memset(&cfg->task_types[n], 0, sizeof(cfg->task_types[n]));
		cfg->n_task_types++;
		break;
	}
	*(char **)sec_obj(cfg, s, n) = xstrdup(id);
	if (s != SEC_COMMUNITY)		/* communities inherit [grid] later */
		apply_defaults(sec_base(cfg, s, n), s);
	in = &p->inst[s][n];
	memset(in, 0, sizeof(*in));
	in->line = line;
	in->seen = xcalloc(ARRAY_LEN(keys), sizeof(int));
	return n;
}

static void
parse_section(struct parser *p, char *s)
{
	size_t n = strlen(s);
	char e[96], key[128];
	const char *name, *dot;

	p->cur = SEC_NONE;
	p->skip = true;
	if (s[n - 1] != ']') {
		snprintf(p->cur_name, sizeof(p->cur_name), "?");
		add_error(p, p->line, "[?]", "invalid section header: "
		    "expected [name] alone on its line");
		return;
	}
	s[n - 1] = '\0';
	s++;
	s += strspn(s, " \t");
	n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	name = s;
	snprintf(key, sizeof(key), "[%s]", echo(name, e, sizeof(e)));
	snprintf(p->cur_name, sizeof(p->cur_name), "%s", e);

	for (enum sec i = SEC_SERVER; i < SEC_COUNT; i++) {
		if (sections[i].per_id || strcmp(name, sections[i].name) != 0)
			continue;
		if (p->sec_line[i] != 0) {
			add_error(p, p->line, key, "duplicate section (first "
			    "at line %d)", p->sec_line[i]);
			return;
		}
		p->sec_line[i] = p->line;
		p->cur = i;
		p->skip = false;
		return;
	}
	dot = strchr(name, '.');
	for (enum sec i = SEC_SERVER; i < SEC_COUNT; i++) {
		size_t pn = strlen(sections[i].name);
		const char *id;
		size_t cnt;

		if (!sections[i].per_id ||
		    strncmp(name, sections[i].name, pn) != 0)
			continue;
		if (name[pn] == '\0') {
			add_error(p, p->line, key, "section needs an ID, as in "
			    "[%s.ID]", sections[i].name);
			return;
		}
		if (dot != name + pn)
			continue;
		id = dot + 1;
		if (!valid_id(id)) {
			add_error(p, p->line, key, "invalid ID: 1 to %d "
			    "characters of A-Z a-z 0-9 _ . -", CFG_MAX_ID);
			return;
		}
		cnt = sec_count(p->cfg, i);
		for (size_t j = 0; j < cnt; j++) {
			if (strcmp(sec_id(p->cfg, i, j), id) == 0) {
				add_error(p, p->line, key, "duplicate section "
				    "(first at line %d)", p->inst[i][j].line);
				return;
			}
		}
		if (cnt >= CFG_MAX_IDS) {
			add_error(p, p->line, key, "more than %d [%s.ID] "
			    "sections", CFG_MAX_IDS, sections[i].name);
			return;
		}
		p->cur_idx = sec_add(p, i, id, p->line);
		p->cur = i;
		p->skip = false;
		return;
	}
	add_error(p, p->line, key, "unknown section");
}

static struct inst *
cur_inst(struct parser *p)
{
	if (sections[p->cur].per_id)
		return &p->inst[p->cur][p->cur_idx];
	return &p->fixed;
}

static void
add_category(struct parser *p, const char *code, const char *task,
    const char *kname)
{
	struct cfg_department *d = &p->cfg->departments[p->cur_idx];
	struct inst *in = cur_inst(p);
	char e[80];

	if (!valid_id(code)) {
		add_error(p, p->line, kname, "invalid category code: 1 to %d "
		    "characters of A-Z a-z 0-9 _ . -", CFG_MAX_ID);
		return;
	}
	if (!valid_id(task)) {
		add_error(p, p->line, kname, "'%s' is not a task type name",
		    echo(task, e, sizeof(e)));
		return;
	}
	for (size_t i = 0; i < d->n_categories; i++) {
		if (strcmp(d->categories[i].code, code) == 0) {
			add_error(p, p->line, kname, "duplicate category "
			    "(first at line %d)", in->cat_line[i]);
			return;
		}
	}
	if (d->n_categories >= CFG_MAX_CATEGORIES) {
		add_error(p, p->line, kname, "more than %d categories",
		    CFG_MAX_CATEGORIES);
		return;
	}
	if (d->n_categories == in->cat_cap) {
		in->cat_cap = in->cat_cap ? 2 * in->cat_cap : 16;
		d->categories = xreallocarray(d->categories, in->cat_cap,
		    sizeof(*d->categories));
		in->cat_line = xreallocarray(in->cat_line, in->cat_cap,
		    sizeof(*in->cat_line));
	}
	d->categories[d->n_categories].code = xstrdup(code);
	d->categories[d->n_categories].task_type = xstrdup(task);
	in->cat_line[d->n_categories] = p->line;
	d->n_categories++;
}

static void
parse_key(struct parser *p, const char *key, const char *val)
{
	enum sec ts = p->cur == SEC_COMMUNITY ? SEC_GRID : p->cur;
	const struct key_def *kd = NULL;
	char kname[256], e[96], why[512];
	struct inst *in;
	size_t k;

	for (k = 0; k < ARRAY_LEN(keys); k++) {
		if (keys[k].sec != ts)
			continue;
		if (strcmp(keys[k].info.key, key) == 0 ||
		    (keys[k].info.type == CFG_T_CATEGORY &&
		    strncmp(key, "category.", 9) == 0)) {
			kd = &keys[k];
			break;
		}
	}
	snprintf(kname, sizeof(kname), "%s.%s", p->cur_name,
	    echo(key, e, sizeof(e)));
	if (kd == NULL) {
		add_error(p, p->line, kname, "unknown key");
		return;
	}
	in = cur_inst(p);
	if (kd->info.type == CFG_T_CATEGORY) {
		in->seen[k] = p->line;
		if (*val == '\0')
			add_error(p, p->line, kname, "empty value");
		else
			add_category(p, key + 9, val, kname);
		return;
	}
	if (in->seen[k] != 0 && !kd->info.repeatable) {
		add_error(p, p->line, kname, "duplicate key (first at line %d)",
		    abs(in->seen[k]));
		return;
	}
	if (in->seen[k] == 0)
		in->seen[k] = p->line;
	if (*val == '\0') {
		add_error(p, p->line, kname, "empty value");
		in->seen[k] = -abs(in->seen[k]);
		return;
	}
	if (!set_value(kd, sec_base(p->cfg, p->cur, p->cur_idx), val, why,
	    sizeof(why))) {
		add_error(p, p->line, kname, "%s", why);
		in->seen[k] = -abs(in->seen[k]);
		return;
	}
	if (kd->info.type == CFG_T_LISTEN) {
		struct cfg *cfg = p->cfg;
		size_t last = cfg->n_listen - 1;

		p->listen_line[last] = p->line;
		for (size_t i = 0; i < last; i++) {
			if (strcmp(cfg->listen[i].host,
			    cfg->listen[last].host) == 0 &&
			    strcmp(cfg->listen[i].port,
			    cfg->listen[last].port) == 0)
				add_error(p, p->line, kname, "address already "
				    "given at line %d", p->listen_line[i]);
		}
	}
}

static char *
trim(char *s)
{
	size_t n;

	s += strspn(s, " \t");
	n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		s[--n] = '\0';
	return s;
}

static void
parse_line(struct parser *p, char *s)
{
	char key[128], *eq, *name, *val;

	s = trim(s);
	if (*s == '\0' || *s == ';' || *s == '#')
		return;
	if (*s == '[') {
		parse_section(p, s);
		return;
	}
	if (p->cur_name[0] != '\0')
		snprintf(key, sizeof(key), "[%s]", p->cur_name);
	else
		snprintf(key, sizeof(key), "file");
	eq = strchr(s, '=');
	if (eq == NULL) {
		add_error(p, p->line, key, "invalid syntax: expected [section], "
		    "key = value, or a comment starting with ; or #");
		return;
	}
	*eq = '\0';
	name = trim(s);
	val = trim(eq + 1);
	if (*name == '\0') {
		add_error(p, p->line, key, "missing key before '='");
		return;
	}
	if (p->skip)
		return;		/* the section header was already reported */
	if (p->cur == SEC_NONE) {
		add_error(p, p->line, key, "key outside any section");
		return;
	}
	parse_key(p, name, val);
}

/* --- validation after the whole file is read --- */

static size_t
key_index(enum sec s, const char *name)
{
	for (size_t k = 0; k < ARRAY_LEN(keys); k++)
		if (keys[k].sec == s && strcmp(keys[k].info.key, name) == 0)
			return k;
	abort();		/* a name below is not in the table */
}

/* Line to blame for a cross-key problem: the first key set in this
 * section, else the section header, else 0. */
static int
blame(const int *seen, size_t a, size_t b, int sec_line)
{
	if (seen[a] != 0)
		return abs(seen[a]);
	if (seen[b] != 0)
		return abs(seen[b]);
	return sec_line;
}

static void
check_required(struct parser *p)
{
	char kname[256];

	for (size_t k = 0; k < ARRAY_LEN(keys); k++) {
		enum sec s = keys[k].sec;

		if (!keys[k].info.required)
			continue;
		if (!sections[s].per_id) {
			if (p->fixed.seen[k] == 0) {
				snprintf(kname, sizeof(kname), "%s.%s",
				    sections[s].name, keys[k].info.key);
				add_error(p, p->sec_line[s], kname,
				    "missing required key");
			}
			continue;
		}
		for (size_t i = 0; i < sec_count(p->cfg, s); i++) {
			if (p->inst[s][i].seen[k] != 0)
				continue;
			snprintf(kname, sizeof(kname), "%s.%s.%s",
			    sections[s].name, sec_id(p->cfg, s, i),
			    keys[k].info.key);
			add_error(p, p->inst[s][i].line, kname,
			    "missing required key");
		}
	}
}

static void
check_server(struct parser *p)
{
	struct cfg *cfg = p->cfg;
	const int *seen = p->fixed.seen;
	size_t kc = key_index(SEC_SERVER, "tls_cert");
	size_t kk = key_index(SEC_SERVER, "tls_key");
	size_t kf = key_index(SEC_SERVER, "max_frame_bytes");
	size_t ku = key_index(SEC_SERVER, "max_frame_bytes_unauth");
	bool any_tls = false;

	for (size_t i = 0; i < cfg->n_listen; i++) {
		if (!cfg->listen[i].tls)
			continue;
		any_tls = true;
		if (cfg->tls_cert == NULL || cfg->tls_key == NULL)
			add_error(p, p->listen_line[i], "server.listen",
			    "a tls listener needs server.tls_cert and "
			    "server.tls_key");
	}
	if (!any_tls && (cfg->tls_cert == NULL) != (cfg->tls_key == NULL))
		add_error(p, blame(seen, kc, kk, 0), cfg->tls_cert ?
		    "server.tls_key" : "server.tls_cert",
		    "tls_cert and tls_key go together");
	if (seen[kf] >= 0 && seen[ku] >= 0 &&
	    cfg->max_frame_bytes_unauth > cfg->max_frame_bytes)
		add_error(p, blame(seen, ku, kf, p->sec_line[SEC_SERVER]),
		    "server.max_frame_bytes_unauth", "%" PRIu32 " is above "
		    "max_frame_bytes (%" PRIu32 ")",
		    cfg->max_frame_bytes_unauth, cfg->max_frame_bytes);
}

/* min <= target <= max; skipped when one of them already had a bad value
 * here or in [grid], since that was reported on its own line. */
static void
check_grid(struct parser *p, const struct cfg_grid *g, const int *seen,
    int sec_line, const char *sname)
{
	size_t kmin = key_index(SEC_GRID, "min_households");
	size_t kt = key_index(SEC_GRID, "target_households");
	size_t kmax = key_index(SEC_GRID, "max_households");
	const int *gs = p->fixed.seen;
	char kname[160];

	if (seen[kmin] < 0 || seen[kt] < 0 || seen[kmax] < 0 ||
	    gs[kmin] < 0 || gs[kt] < 0 || gs[kmax] < 0)
		return;
	if (g->min_households > g->target_households) {
		snprintf(kname, sizeof(kname), "%s.min_households", sname);
		add_error(p, blame(seen, kmin, kt, sec_line), kname,
		    "min_households (%d) is above target_households (%d)",
		    g->min_households, g->target_households);
	}
	if (g->target_households > g->max_households) {
		snprintf(kname, sizeof(kname), "%s.target_households", sname);
		add_error(p, blame(seen, kt, kmax, sec_line), kname,
		    "target_households (%d) is above max_households (%d)",
		    g->target_households, g->max_households);
	}
}

static void
resolve_communities(struct parser *p)
{
	struct cfg *cfg = p->cfg;
	char sname[96];

	check_grid(p, &cfg->grid, p->fixed.seen, p->sec_line[SEC_GRID],
	    "grid");
	for (size_t i = 0; i < cfg->n_communities; i++) {
		struct cfg_community *c = &cfg->communities[i];
		const int *seen = p->inst[SEC_COMMUNITY][i].seen;

		for (size_t k = 0; k < ARRAY_LEN(keys); k++) {
			size_t size = keys[k].info.type == CFG_T_DOUBLE ?
			    sizeof(double) : sizeof(int);

			if (keys[k].sec != SEC_GRID || seen[k] != 0)
				continue;
			memcpy((char *)&c->grid + keys[k].off,
			    (char *)&cfg->grid + keys[k].off, size);
		}
		snprintf(sname, sizeof(sname), "community.%s", c->id);
		check_grid(p, &c->grid, seen, c->line, sname);
	}
}

static void
finish_sections(struct parser *p)
{
	struct cfg *cfg = p->cfg;
	size_t kroute = key_index(SEC_TASK_TYPE, "route");
	size_t kowner = key_index(SEC_TASK_TYPE, "department");
	size_t kkey = key_index(SEC_DEPARTMENT, "key_sha256");
	char kname[256];

	for (size_t i = 0; i < cfg->n_departments; i++) {
		struct cfg_department *d = &cfg->departments[i];

		if (d->name == NULL)
			d->name = xstrdup(d->id);
		d->has_key = p->inst[SEC_DEPARTMENT][i].seen[kkey] > 0;
	}
	for (size_t i = 0; i < cfg->n_task_types; i++) {
		struct cfg_task_type *t = &cfg->task_types[i];
		size_t j;

		for (j = 0; t->department != NULL &&
		    j < cfg->n_departments; j++)
			if (strcmp(cfg->departments[j].id, t->department) == 0)
				break;
		if (t->department != NULL && j == cfg->n_departments) {
			snprintf(kname, sizeof(kname), "task_type.%s.department",
			    t->name);
			add_error(p, abs(p->inst[SEC_TASK_TYPE][i].seen[kowner]),
			    kname, "department '%s' is not defined (no "
			    "[department.%s] section)", t->department,
			    t->department);
		}
		if (p->inst[SEC_TASK_TYPE][i].seen[kroute] != 0)
			continue;
		switch (t->matter) {
		case CFG_MATTER_SMALL:
			t->route = CFG_ROUTE_WORKER;
			break;
		case CFG_MATTER_BIG:
			t->route = CFG_ROUTE_DEPARTMENT;
			break;
		case CFG_MATTER_PRIVATE:
			t->route = CFG_ROUTE_REFERRAL;
			break;
		}
	}
	/* Task types are not referred to by inst[] from here on: sort them
	 * so that the crosswalk check below is a binary search. */
	sort_by_id(cfg->task_types, cfg->n_task_types, sizeof(*cfg->task_types));
	for (size_t i = 0; i < cfg->n_departments; i++) {
		struct cfg_department *d = &cfg->departments[i];

		for (size_t j = 0; j < d->n_categories; j++) {
			if (cfg_task_type(cfg, d->categories[j].task_type))
				continue;
			snprintf(kname, sizeof(kname),
			    "department.%s.category.%s", d->id,
			    d->categories[j].code);
			add_error(p, p->inst[SEC_DEPARTMENT][i].cat_line[j],
			    kname, "task type '%s' is not defined (no "
			    "[task_type.%s] section)", d->categories[j].task_type,
			    d->categories[j].task_type);
		}
	}
}

/* Checks made after the whole file was read report late: put every error
 * back in file order (stable, so one line's errors keep their order). At
 * most CFG_MAX_ERRORS entries, so an insertion sort does. */
static void
sort_errors(struct cfg_errors *errs)
{
	for (size_t i = 1; i < errs->n; i++) {
		struct cfg_error e = errs->v[i];
		size_t j = i;

		for (; j > 0 && errs->v[j - 1].line > e.line; j--)
			errs->v[j] = errs->v[j - 1];
		errs->v[j] = e;
	}
}

/* --- public --- */

static struct cfg *
cfg_new(const char *name)
{
	struct cfg *cfg = xcalloc(1, sizeof(*cfg));

	cfg->path = xstrdup(name);
	for (enum sec s = SEC_SERVER; s < SEC_COUNT; s++)
		if (!sections[s].per_id)
			apply_defaults(sec_base(cfg, s, 0), s);
	return cfg;
}

static void
parser_free(struct parser *p)
{
	for (enum sec s = SEC_SERVER; s < SEC_COUNT; s++) {
		size_t n = p->inst[s] ? sec_count(p->cfg, s) : 0;

		for (size_t i = 0; i < n; i++) {
			free(p->inst[s][i].seen);
			free(p->inst[s][i].cat_line);
		}
		free(p->inst[s]);
	}
	free(p->fixed.seen);
}

bool
cfg_parse(const char *name, const char *text, size_t len, struct cfg **out,
    struct cfg_errors *errs)
{
	struct parser p;
	char *line;
	size_t pos = 0;
	bool ok;

	*out = NULL;
	cfg_errors_clear(errs);
	if (len > CFG_MAX_FILE_BYTES) {
		errs_push(errs, name, 0, "file", "larger than 1048576 bytes");
		return false;
	}
	memset(&p, 0, sizeof(p));
	p.file = name;
	p.errs = errs;
	p.cfg = cfg_new(name);
	p.fixed.seen = xcalloc(ARRAY_LEN(keys), sizeof(int));
	line = xmalloc(CFG_MAX_LINE + 1);
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		pos = 3;
	while (pos < len && !p.gave_up) {
		const char *s = text + pos, *nl = memchr(s, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - s) : len - pos, bad;

		pos += n + (nl != NULL);
		p.line++;
		if (n > 0 && s[n - 1] == '\r')
			n--;
		if (n > CFG_MAX_LINE) {
			add_error(&p, p.line, "file", "line longer than %d "
			    "bytes", CFG_MAX_LINE);
			continue;
		}
		memcpy(line, s, n);
		line[n] = '\0';
		for (bad = 0; bad < n; bad++) {
			unsigned char c = (unsigned char)s[bad];

			if ((c < 0x20 && c != '\t') || c == 0x7f)
				break;
		}
		if (bad < n) {
			if (s[bad] == '\0')
				add_error(&p, p.line, "file", "NUL byte in line");
			else
				add_error(&p, p.line, "file", "control "
				    "character 0x%02x in line",
				    (unsigned char)s[bad]);
			continue;
		}
		parse_line(&p, line);
	}
	free(line);
	if (!p.gave_up) {
		check_required(&p);
		check_server(&p);
		resolve_communities(&p);
		finish_sections(&p);
	}
	parser_free(&p);
	ok = errs->n == 0;
	if (!ok) {
		sort_errors(errs);
		cfg_free(p.cfg);
		return false;
	}
	sort_by_id(p.cfg->communities, p.cfg->n_communities,
	    sizeof(*p.cfg->communities));
	sort_by_id(p.cfg->admins, p.cfg->n_admins, sizeof(*p.cfg->admins));
	sort_by_id(p.cfg->departments, p.cfg->n_departments,
	    sizeof(*p.cfg->departments));
	for (size_t i = 0; i < p.cfg->n_departments; i++)
		sort_by_id(p.cfg->departments[i].categories,
		    p.cfg->departments[i].n_categories,
		    sizeof(struct cfg_category));
	*out = p.cfg;
	return true;
}

bool
cfg_load(const char *path, struct cfg **out, struct cfg_errors *errs)
{
	char *buf, reason[256];
	size_t len = 0;
	ssize_t r;
	bool ok;
	int fd;

	*out = NULL;
	cfg_errors_clear(errs);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(reason, sizeof(reason), "cannot open: %s",
		    strerror(errno));
		errs_push(errs, path, 0, "file", reason);
		return false;
	}
	/* Read one byte past the limit to tell "exactly at" from "over". */
	buf = xmalloc(CFG_MAX_FILE_BYTES + 1);
	while (len < CFG_MAX_FILE_BYTES + 1) {
		r = read(fd, buf + len, CFG_MAX_FILE_BYTES + 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(reason, sizeof(reason), "cannot read: %s",
			    strerror(errno));
			errs_push(errs, path, 0, "file", reason);
			free(buf);
			close(fd);
			return false;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	ok = cfg_parse(path, buf, len, out, errs);
	free(buf);
	return ok;
}

void
cfg_free(struct cfg *cfg)
{
	if (cfg == NULL)
		return;
	free(cfg->path);
	for (size_t i = 0; i < cfg->n_listen; i++) {
		free(cfg->listen[i].host);
		free(cfg->listen[i].port);
	}
	free(cfg->tls_cert);
	free(cfg->tls_key);
	free(cfg->tls_client_ca);
	free(cfg->http_listen);
	free(cfg->conninfo);
	free(cfg->migrations_dir);
	for (size_t i = 0; i < cfg->n_communities; i++)
		free(cfg->communities[i].id);
	free(cfg->communities);
	for (size_t i = 0; i < cfg->n_admins; i++)
		free(cfg->admins[i].id);
	free(cfg->admins);
	for (size_t i = 0; i < cfg->n_departments; i++) {
		struct cfg_department *d = &cfg->departments[i];

		free(d->id);
		free(d->name);
		for (size_t j = 0; j < d->n_categories; j++) {
			free(d->categories[j].code);
			free(d->categories[j].task_type);
		}
		free(d->categories);
	}
	free(cfg->departments);
	for (size_t i = 0; i < cfg->n_task_types; i++) {
		free(cfg->task_types[i].name);
		free(cfg->task_types[i].guidance);
		free(cfg->task_types[i].department);
	}
	free(cfg->task_types);
	free(cfg);
}

void
cfg_warn_restart_only(const struct cfg *old, const struct cfg *new)
{
	/* Large enough for 16 listeners; values are compared, never logged,
	 * since conninfo may carry a password. */
	char a[8192], b[8192];

	for (size_t k = 0; k < ARRAY_LEN(keys); k++) {
		bool ha, hb;

		if (!keys[k].info.restart_only || keys[k].sec == SEC_NONE ||
		    sections[keys[k].sec].per_id)
			continue;
		ha = cfg_key_value(old, k, a, sizeof(a));
		hb = cfg_key_value(new, k, b, sizeof(b));
		if (ha == hb && (!ha || strcmp(a, b) == 0))
			continue;
		log_warn("event=reload key=%s.%s restart_only=yes "
		    "msg=\"changed; the old value stays in effect until "
		    "restart\"", keys[k].info.section, keys[k].info.key);
	}
}

const struct cfg_department *
cfg_department(const struct cfg *cfg, const char *id)
{
	return xbsearch(&id, cfg->departments, cfg->n_departments,
	    sizeof(*cfg->departments), cmp_id);
}

const struct cfg_admin *
cfg_admin(const struct cfg *cfg, const char *id)
{
	return xbsearch(&id, cfg->admins, cfg->n_admins, sizeof(*cfg->admins),
	    cmp_id);
}

const struct cfg_task_type *
cfg_task_type(const struct cfg *cfg, const char *name)
{
	return xbsearch(&name, cfg->task_types, cfg->n_task_types,
	    sizeof(*cfg->task_types), cmp_id);
}

const char *
cfg_category(const struct cfg_department *dept, const char *code)
{
	const struct cfg_category *c;

	c = xbsearch(&code, dept->categories, dept->n_categories,
	    sizeof(*dept->categories), cmp_id);
	return c ? c->task_type : NULL;
}

const struct cfg_grid *
cfg_grid_for(const struct cfg *cfg, const char *community_id)
{
	const struct cfg_community *c;

	c = xbsearch(&community_id, cfg->communities, cfg->n_communities,
	    sizeof(*cfg->communities), cmp_id);
	return c ? &c->grid : &cfg->grid;
}

const char *
cfg_list_name(enum cfg_list l)
{
	if ((size_t)l < ARRAY_LEN(list_names) && list_names[l] != NULL)
		return list_names[l];
	return "?";
}

const char *
cfg_matter_name(enum cfg_matter m)
{
	if ((size_t)m < ARRAY_LEN(matter_names) && matter_names[m] != NULL)
		return matter_names[m];
	return "?";
}

const char *
cfg_route_name(enum cfg_route r)
{
	if ((size_t)r < ARRAY_LEN(route_names) && route_names[r] != NULL)
		return route_names[r];
	return "?";
}

size_t
cfg_key_count(void)
{
	return ARRAY_LEN(keys);
}

const struct cfg_key_info *
cfg_key_get(size_t i)
{
	return i < ARRAY_LEN(keys) ? &keys[i].info : NULL;
}

const char *
cfg_type_name(enum cfg_type t)
{
	switch (t) {
	case CFG_T_INT:
	case CFG_T_UINT32:
		return "integer";
	case CFG_T_DOUBLE:
		return "number";
	case CFG_T_STRING:
		return "string";
	case CFG_T_TEXT:
		return "text";
	case CFG_T_PATH:
		return "path";
	case CFG_T_LISTEN:
		return "HOST:PORT [tls]";
	case CFG_T_ADDRESS:
		return "HOST:PORT";
	case CFG_T_LOG_LEVEL:
		return "debug|info|warn|error";
	case CFG_T_LIST:
		return "autonomy|assist|negative|certificate";
	case CFG_T_MATTER:
		return "big|small|private";
	case CFG_T_ROUTE:
		return "worker|department|referral";
	case CFG_T_SHA256:
		return "64 hex digits";
	case CFG_T_CATEGORY:
		return "task type name";
	}
	return "?";
}

bool
cfg_key_value(const struct cfg *cfg, size_t i, char *buf, size_t len)
{
	enum sec s;

	if (i >= ARRAY_LEN(keys) || len == 0)
		return false;
	s = keys[i].sec;
	if (sections[s].per_id)
		return false;
	return format_value(&keys[i], sec_base((struct cfg *)cfg, s, 0), buf,
	    len);
}

/* Markdown cell text: a "|" would end the cell. */
static void
md_cell(FILE *fp, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '|')
			fputc('\\', fp);
		fputc(*s, fp);
	}
}

void
cfg_write_reference(FILE *fp)
{
	char lo[32], hi[32];

	fputs("| section | key | type | default | bounds | reload | "
	    "description |\n|---|---|---|---|---|---|---|\n", fp);
	for (size_t k = 0; k < ARRAY_LEN(keys); k++) {
		const struct cfg_key_info *ki = &keys[k].info;

		fprintf(fp, "| `[%s]` | `%s` | ", ki->section, ki->key);
		md_cell(fp, cfg_type_name(ki->type));
		fputs(" | ", fp);
		if (ki->def != NULL) {
			fputc('`', fp);
			md_cell(fp, ki->def);
			fputc('`', fp);
		} else
			fputs(ki->required ? "required" : "unset", fp);
		fputs(" | ", fp);
		if (ki->type == CFG_T_INT || ki->type == CFG_T_UINT32 ||
		    ki->type == CFG_T_DOUBLE) {
			fmt_num(ki->type, ki->min, lo, sizeof(lo));
			fmt_num(ki->type, ki->max, hi, sizeof(hi));
			fprintf(fp, "%s..%s", lo, hi);
		}
		fprintf(fp, " | %s | ", ki->restart_only ? "restart" : "yes");
		md_cell(fp, ki->desc);
		if (ki->repeatable)
			fputs(" (repeatable)", fp);
		fputs(" |\n", fp);
	}
	fputs("\n"
	    "Sections with an ID may appear any number of times, once per ID:\n"
	    "\n"
	    "- `[community.ID]` takes every `[grid]` key for one community; "
	    "a key it does not set is inherited from `[grid]`, wherever "
	    "`[grid]` appears in the file.\n"
	    "- `[admin.ID]` is an administrator who logs in with a key whose "
	    "SHA-256 is `key_sha256`.\n"
	    "- `[department.ID]` is a department; every `category.CODE = "
	    "TASK_TYPE` line maps one of its category codes to a task type, "
	    "which must be defined by a `[task_type.TASK_TYPE]` section.\n"
	    "- `[task_type.NAME]` is a unified task type.\n"
	    "\n"
	    "IDs, names, category codes and task type names are 1 to 64 "
	    "characters of `A-Z a-z 0-9 _ . -`. A line is `[section]`, "
	    "`key = value` or a comment starting with `;` or `#` (comments "
	    "take a whole line: a value is everything after `=`, trimmed). "
	    "Lines are at most 4096 bytes and the file at most 1 MiB. "
	    "Unknown sections and keys are errors. Keys marked restart keep "
	    "their old value on reload (with a warning) until gridd is "
	    "restarted.\n", fp);
}

/* grid.c - cells and imports: import requests, GetGrid, partition orchestration. */
#include "grid.h"

#include <event2/event.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "config.h"
#include "conn.h"
#include "db.h"
#include "gridd.h"
#include "log.h"
#include "metrics.h"
#include "partition.h"
#include "rpc.h"

/*
 * Partitioning runs as a FIFO of community tasks, one at a time:
 * load (one read batch through the pool), compute (part_run on the
 * partition thread), apply (one gridd_apply_partition statement, its own
 * transaction, so a community's grid never appears half-changed). One at
 * a time keeps repartitions of one community ordered (each starts from
 * the cells the previous one wrote) and keeps a city-wide run from taking
 * every pool connection from the other clients. Every step is
 * asynchronous; the loop keeps serving while a task runs.
 */

/* Queued community tasks, all requests and reloads together. */
#define GRID_MAX_TASKS		100000
/* Longest footprint or polygon accepted in one import row; the frame limit
 * is the real bound, this one keeps a forged length honest. */
#define GRID_MAX_GEOJSON	(16u * 1024 * 1024)
/* Cells of one community; the 15-digit code has room for 999. */
#define GRID_CODE_MAX_SEQ	999
/* Out-of-bounds cells listed per community in a report. */
#define GRID_REPORT_MAX_OOB	20
/* Stale communities named in an import's report; the rest are counted. */
#define GRID_REPORT_MAX_STALE	20

/* ---- small helpers ------------------------------------------------------ */

struct sbuf {
	char *s;
	size_t len, cap;
};

static void PRINTF_LIKE(2, 3)
sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		size_t room = b->cap - b->len;

		va_start(ap, fmt);
		n = vsnprintf(b->s != NULL ? b->s + b->len : NULL, room, fmt,
		    ap);
		va_end(ap);
		if (n < 0)
			return;
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		b->cap = (b->cap + (size_t)n + 1) * 2;
		b->s = xrealloc(b->s, b->cap);
	}
}

static const char *
sbuf_str(struct sbuf *b)
{
	return b->s != NULL ? b->s : "";
}

bool
grid_valid_id(const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;

	return n >= 1 && n <= 64 &&
	    strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789_.-") == n;
}

/* Building ids also allow ':' (OSM-style "way:123"). */
static bool
valid_building_id(const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;

	return n >= 1 && n <= 64 &&
	    strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789_.:-") == n;
}

bool
grid_valid_text(const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t chars = 0;

	if (s == NULL)
		return true;
	while (*p != '\0') {
		uint32_t cp;
		int more;

		if (chars++ == max)
			return false;
		if (*p < 0x80) {
			if (*p < 0x20 || *p == 0x7f)
				return false;
			p++;
			continue;
		}
		if ((*p & 0xe0) == 0xc0) {
			cp = *p & 0x1f;
			more = 1;
		} else if ((*p & 0xf0) == 0xe0) {
			cp = *p & 0x0f;
			more = 2;
		} else if ((*p & 0xf8) == 0xf0) {
			cp = *p & 0x07;
			more = 3;
		} else
			return false;
		p++;
		for (int i = 0; i < more; i++, p++) {
			if ((*p & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (*p & 0x3f);
		}
		/* Overlong forms, surrogates and beyond U+10FFFF. */
		if ((more == 1 && cp < 0x80) || (more == 2 && cp < 0x800) ||
		    (more == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
	}
	return true;
}

static bool
valid_code12(const char *s)
{
	return strlen(s) == 12 && strspn(s, "0123456789") == 12;
}

/* A GeoJSON object's text: non-empty, bounded, braces around; PostGIS
 * parses and validates the rest. */
static bool
plausible_geojson(const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;

	return n >= 2 && n <= GRID_MAX_GEOJSON && s[0] == '{' &&
	    s[n - 1] == '}';
}

/* ---- array literals ------------------------------------------------------ */

void
grid_arr_init(struct grid_arr *a)
{
	memset(a, 0, sizeof(*a));
}

static void
arr_put(struct grid_arr *a, const char *s, size_t n)
{
	if (a->len + n + 2 > a->cap) {
		a->cap = (a->len + n + 2) * 2 + 64;
		a->buf = xrealloc(a->buf, a->cap);
	}
	if (a->len == 0)
		a->buf[a->len++] = '{';
	memcpy(a->buf + a->len, s, n);
	a->len += n;
	a->buf[a->len] = '\0';
}

static void
arr_sep(struct grid_arr *a)
{
	if (a->n++ > 0)
		arr_put(a, ",", 1);
	else
		arr_put(a, "", 0);
}

void
grid_arr_text(struct grid_arr *a, const char *s)
{
	const char *p, *q;

	arr_sep(a);
	if (s == NULL) {
		arr_put(a, "NULL", 4);
		return;
	}
	/* Every element quoted: inside quotes only \ and " need a
	 * backslash, so no value can end the element or the array. */
	arr_put(a, "\"", 1);
	for (p = s; *p != '\0'; p = q) {
		q = p + strcspn(p, "\\\"");
		arr_put(a, p, (size_t)(q - p));
		if (*q != '\0') {
			char esc[2] = { '\\', *q };

			arr_put(a, esc, 2);
			q++;
		}
	}
	arr_put(a, "\"", 1);
}

void
grid_arr_int(struct grid_arr *a, long long v)
{
	char num[24];
	int n = snprintf(num, sizeof(num), "%lld", v);

	arr_sep(a);
	arr_put(a, num, (size_t)n);
}

static void
arr_double(struct grid_arr *a, double v)
{
	char num[40];
	int n = snprintf(num, sizeof(num), "%.17g", v);

	arr_sep(a);
	arr_put(a, num, (size_t)n);
}

void
grid_arr_null(struct grid_arr *a)
{
	arr_sep(a);
	arr_put(a, "NULL", 4);
}

const char *
grid_arr_finish(struct grid_arr *a)
{
	if (a->len == 0)
		arr_put(a, "", 0);
	arr_put(a, "}", 1);
	return a->buf;
}

void
grid_arr_free(struct grid_arr *a)
{
	free(a->buf);
	memset(a, 0, sizeof(*a));
}

/* ---- counters -------------------------------------------------------------- */

static struct {
	uint64_t import_rows[4];	/* inserted, updated, unchanged, rejected */
	uint64_t partitions_ok;
	uint64_t partitions_failed;
	uint64_t buildings_moved;
	struct metrics_hist partition_ms;
} stats;

static void
grid_metrics_cb(struct evbuffer *out)
{
	static const char *const act[] = { "inserted", "updated", "unchanged",
	    "rejected" };
	char labels[64];

	metrics_family(out, "gridd_import_rows_total", "counter",
	    "Imported rows (communities, buildings, layer cells) by outcome.");
	for (size_t i = 0; i < ARRAY_LEN(act); i++) {
		snprintf(labels, sizeof(labels), "action=\"%s\"", act[i]);
		metrics_sample(out, "gridd_import_rows_total", labels,
		    (double)stats.import_rows[i]);
	}
	metrics_family(out, "gridd_partitions_total", "counter",
	    "Community partitions applied or failed.");
	metrics_sample(out, "gridd_partitions_total", "outcome=\"ok\"",
	    (double)stats.partitions_ok);
	metrics_sample(out, "gridd_partitions_total", "outcome=\"failed\"",
	    (double)stats.partitions_failed);
	metrics_family(out, "gridd_partition_buildings_moved_total", "counter",
	    "Buildings moved to another cell by repartitions.");
	metrics_sample(out, "gridd_partition_buildings_moved_total", NULL,
	    (double)stats.buildings_moved);
	metrics_family(out, "gridd_partition_seconds", "histogram",
	    "Time to load, partition and apply one community.");
	metrics_hist_write(out, "gridd_partition_seconds", NULL,
	    &stats.partition_ms);
}

/* ---- import replies --------------------------------------------------------- */

struct grid_import *
grid_import_new(struct conn *c, uint64_t request_id, const char *what)
{
	struct grid_import *im = xcalloc(1, sizeof(*im));

	im->c = c;
	im->request_id = request_id;
	im->what = what;
	im->started_ms = mono_ms();
	conn_hold(c);
	return im;
}

void
grid_import_error(struct grid_import *im, const char *fmt, ...)
{
	va_list ap;
	char buf[512];

	if (im->n_errors >= GRID_IMPORT_MAX_ERRORS) {
		im->more_errors++;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	im->errors = xreallocarray(im->errors, im->n_errors + 1,
	    sizeof(*im->errors));
	im->errors[im->n_errors++] = xstrdup(buf);
}

bool
grid_import_rows(struct grid_import *im, const struct db_res *res)
{
	int rows = db_res_rows(res);

	if (db_res_cols(res) < 4)
		return false;
	for (int i = 0; i < rows; i++) {
		const char *line = db_res_get(res, i, 0);
		const char *id = db_res_get(res, i, 1);
		const char *action = db_res_get(res, i, 2);
		const char *err = db_res_isnull(res, i, 3) ? NULL :
		    db_res_get(res, i, 3);

		if (strcmp(action, "repartition") == 0) {
			/* Not a row of the input: a community whose cells
			 * the rows made stale. */
			if (!grid_valid_id(id))
				return false;
			if (im->n_stale < GRID_IMPORT_MAX_ROWS) {
				im->stale = xreallocarray(im->stale,
				    im->n_stale + 1, sizeof(*im->stale));
				im->stale[im->n_stale++] = xstrdup(id);
			}
			continue;
		}
		if (strcmp(action, "inserted") == 0) {
			im->inserted++;
			stats.import_rows[0]++;
		} else if (strcmp(action, "updated") == 0) {
			im->updated++;
			stats.import_rows[1]++;
		} else if (strcmp(action, "unchanged") == 0) {
			im->unchanged++;
			stats.import_rows[2]++;
		} else if (strcmp(action, "rejected") == 0) {
			im->rejected++;
			stats.import_rows[3]++;
		} else
			return false;
		if (err != NULL)
			grid_import_error(im, "line %s: %.*s: %.*s", line,
			    (int)utf8_prefix(id, 64), id,
			    (int)utf8_prefix(err, 300), err);
	}
	return true;
}

static void
import_free(struct grid_import *im)
{
	conn_release(im->c);
	for (size_t i = 0; i < im->n_errors; i++)
		free(im->errors[i]);
	free(im->errors);
	for (size_t i = 0; i < im->n_stale; i++)
		free(im->stale[i]);
	free(im->stale);
	free(im->report);
	free(im);
}

static void stale_report(struct grid_import *im);

void
grid_import_reply(struct grid_import *im)
{
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__ImportReply r = GRIDD__V1__IMPORT_REPLY__INIT;
	char more[64];

	if (im->more_errors > 0) {
		/* The slot the cap kept free of "line" texts. */
		snprintf(more, sizeof(more), "... and %zu more",
		    im->more_errors);
		im->errors = xreallocarray(im->errors, im->n_errors + 1,
		    sizeof(*im->errors));
		im->errors[im->n_errors++] = xstrdup(more);
	}
	if (im->n_stale > 0)
		stale_report(im);
	r.inserted = im->inserted;
	r.updated = im->updated;
	r.unchanged = im->unchanged;
	r.rejected = im->rejected;
	r.errors = im->errors;
	r.n_errors = im->n_errors;
	r.report = im->report != NULL ? im->report : (char *)"";
	env.request_id = im->request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_IMPORT_REPLY;
	env.import_reply = &r;
	log_info("%s event=import what=%s inserted=%d updated=%d unchanged=%d "
	    "rejected=%d ms=%lld", conn_log_prefix(im->c), im->what,
	    im->inserted, im->updated, im->unchanged, im->rejected,
	    (long long)(mono_ms() - im->started_ms));
	if (conn_is_open(im->c))
		conn_send(im->c, &env);
	import_free(im);
}

void
grid_import_fail(struct grid_import *im, Gridd__V1__ErrorCode code,
    const char *msg)
{
	log_info("%s event=import what=%s outcome=error code=%d",
	    conn_log_prefix(im->c), im->what, (int)code);
	if (conn_is_open(im->c))
		rpc_reply_error(im->c, im->request_id, code, msg);
	import_free(im);
}

Gridd__V1__ErrorCode
grid_db_error(const struct db_res *res, char *msg, size_t len)
{
	enum db_status st = db_res_status(res);
	const char *state = db_res_sqlstate(res);

	if (st == DB_SQL_ERROR && strcmp(state, "23514") == 0) {
		snprintf(msg, len, "%s", db_res_error(res));
		return GRIDD__V1__ERROR_CODE__BAD_REQUEST;
	}
	if (st == DB_SQL_ERROR && strcmp(state, "P0002") == 0) {
		snprintf(msg, len, "%s", db_res_error(res));
		return GRIDD__V1__ERROR_CODE__NOT_FOUND;
	}
	if (st == DB_SQL_ERROR) {
		log_warn("event=grid_sql_error sqlstate=%s error=\"%.300s\"",
		    state, db_res_error(res));
		snprintf(msg, len, "internal error");
		return GRIDD__V1__ERROR_CODE__INTERNAL;
	}
	snprintf(msg, len, st == DB_TIMEOUT ? "database timeout" :
	    "database unavailable");
	return GRIDD__V1__ERROR_CODE__UNAVAILABLE;
}

static void
import_query_cb(void *arg, const struct db_res *res)
{
	struct grid_import *im = arg;
	char msg[2200];
	Gridd__V1__ErrorCode code;

	if (db_res_status(res) != DB_OK) {
		code = grid_db_error(res, msg, sizeof(msg));
		grid_import_fail(im, code, msg);
		return;
	}
	if (!grid_import_rows(im, res)) {
		grid_import_fail(im, GRIDD__V1__ERROR_CODE__INTERNAL,
		    "unexpected import result");
		return;
	}
	grid_import_reply(im);
}

/* Row errors found here, before the database: with strict they refuse the
 * request, otherwise the row is skipped and reported. */
static void PRINTF_LIKE(4, 5)
row_bad(struct grid_import *im, struct sbuf *strict_msg, int line,
    const char *fmt, ...)
{
	va_list ap;
	char buf[400];

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	im->rejected++;
	stats.import_rows[3]++;
	grid_import_error(im, "line %d: %s", line, buf);
	if (strict_msg->len < 1500)
		sbuf_printf(strict_msg, "%sline %d: %s",
		    strict_msg->len > 0 ? "; " : "", line, buf);
}

/* Sends the import statement, or answers at once when nothing is left. */
static void
import_submit(struct grid_import *im, struct sbuf *strict_msg, bool strict,
    size_t valid, const char *sql, int nparams, const char *const *params)
{
	if (strict && im->rejected > 0) {
		char msg[1700];

		snprintf(msg, sizeof(msg), "import refused (strict): %d row(s) "
		    "rejected: %s", im->rejected, sbuf_str(strict_msg));
		grid_import_fail(im, GRIDD__V1__ERROR_CODE__BAD_REQUEST, msg);
		return;
	}
	if (valid == 0) {
		grid_import_reply(im);
		return;
	}
	if (gridd.db == NULL || !db_query(gridd.db, sql, nparams, params,
	    import_query_cb, im))
		grid_import_fail(im, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

/* The strict check wrapped around an import function: rows in input
 * order, and with $strict any rejected row rolls the statement back. */
#define IMPORT_SQL(call, strict_param)					\
	"WITH r AS MATERIALIZED (SELECT * FROM " call			\
	" WITH ORDINALITY AS r(line, id, action, error, ord)),"	\
	" s AS MATERIALIZED (SELECT gridd_import_check(" strict_param	\
	"::boolean, count(*) FILTER (WHERE r.action = 'rejected'),"	\
	" (array_agg('line ' || r.line || ': ' || r.error ORDER BY r.ord)" \
	" FILTER (WHERE r.action = 'rejected'))[1:5]) AS ok FROM r)"	\
	" SELECT r.line, r.id, r.action, r.error FROM r, s WHERE s.ok"	\
	" ORDER BY r.ord"

static const char sql_import_communities[] = IMPORT_SQL(
    "gridd_import_communities($1::text[], $2::text[], $3::text[],"
    " $4::text[], $5::int[])", "$6");

static const char sql_import_buildings[] = IMPORT_SQL(
    "gridd_import_buildings($1::text[], $2::text[], $3::text[],"
    " $4::int[], $5::int[], $6::float8[], $7::float8[], $8::float8[],"
    " $9::text[], $10::int[])", "$11");

/* ---- ImportCommunities -------------------------------------------------------- */

void
grid_import_communities(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__ImportCommunities *in = env->import_communities;
	struct grid_arr ids, names, codes, geo, lines;
	struct grid_import *im;
	struct sbuf sm = { 0 };
	size_t valid = 0;

	if (in->n_communities == 0 || in->n_communities > GRID_IMPORT_MAX_ROWS) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "want 1 to 20000 communities per request");
		return;
	}
	im = grid_import_new(c, env->request_id, "communities");
	grid_arr_init(&ids);
	grid_arr_init(&names);
	grid_arr_init(&codes);
	grid_arr_init(&geo);
	grid_arr_init(&lines);
	for (size_t i = 0; i < in->n_communities; i++) {
		const Gridd__V1__CommunityIn *r = in->communities[i];
		int line = r->line > 0 ? r->line : (int)i + 1;

		if (!grid_valid_id(r->community_id))
			row_bad(im, &sm, line, "id: must be 1-64 characters of "
			    "A-Z a-z 0-9 _ . -");
		else if (!grid_valid_text(r->name, 200))
			row_bad(im, &sm, line, "name: must be UTF-8 text of at "
			    "most 200 characters");
		else if (r->code[0] != '\0' && !valid_code12(r->code))
			row_bad(im, &sm, line, "code: must be 12 digits "
			    "(district 6 + street 3 + community 3) or empty");
		else if (!plausible_geojson(r->geojson))
			row_bad(im, &sm, line, "geometry: missing or not a "
			    "GeoJSON object");
		else {
			grid_arr_text(&ids, r->community_id);
			grid_arr_text(&names, r->name);
			grid_arr_text(&codes, r->code[0] ? r->code : NULL);
			grid_arr_text(&geo, r->geojson);
			grid_arr_int(&lines, line);
			valid++;
		}
	}
	const char *params[6] = { grid_arr_finish(&ids),
	    grid_arr_finish(&names), grid_arr_finish(&codes),
	    grid_arr_finish(&geo), grid_arr_finish(&lines),
	    in->strict ? "true" : "false" };

	import_submit(im, &sm, in->strict, valid, sql_import_communities, 6,
	    params);
	grid_arr_free(&ids);
	grid_arr_free(&names);
	grid_arr_free(&codes);
	grid_arr_free(&geo);
	grid_arr_free(&lines);
	free(sm.s);
}

/* ---- ImportBuildings ------------------------------------------------------------ */

void
grid_import_buildings(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__ImportBuildings *in = env->import_buildings;
	struct grid_arr a[10];
	struct grid_import *im;
	struct sbuf sm = { 0 };
	enum part_kind kind;
	size_t valid = 0;

	if (in->n_buildings == 0 || in->n_buildings > GRID_IMPORT_MAX_ROWS) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "want 1 to 20000 buildings per request");
		return;
	}
	im = grid_import_new(c, env->request_id, "buildings");
	for (size_t k = 0; k < ARRAY_LEN(a); k++)
		grid_arr_init(&a[k]);
	for (size_t i = 0; i < in->n_buildings; i++) {
		const Gridd__V1__BuildingIn *r = in->buildings[i];
		int line = r->line > 0 ? r->line : (int)i + 1;

		if (!valid_building_id(r->building_id))
			row_bad(im, &sm, line, "id: must be 1-64 characters of "
			    "A-Z a-z 0-9 _ . : -");
		else if (!grid_valid_id(r->community_id))
			row_bad(im, &sm, line, "community: must be 1-64 "
			    "characters of A-Z a-z 0-9 _ . -");
		else if (r->kind[0] != '\0' && !part_kind_parse(r->kind, &kind))
			row_bad(im, &sm, line, "kind: must be residential, "
			    "commercial, industrial, public, agricultural, "
			    "other or unknown");
		else if (r->households < 0 || r->households > 100000)
			row_bad(im, &sm, line, "households: must be 0..100000");
		else if (r->levels < 0 || r->levels > 500)
			row_bad(im, &sm, line, "levels: must be 0..500");
		else if (!(r->lon >= -180 && r->lon <= 180 && r->lat >= -90 &&
		    r->lat <= 90))
			row_bad(im, &sm, line, "lon/lat: outside -180..180 / "
			    "-90..90");
		else if (!(r->area_m2 >= 0 && r->area_m2 < 1e8))
			row_bad(im, &sm, line, "area_m2: must be 0 <= area < "
			    "1e8");
		else if (r->geojson[0] != '\0' && !plausible_geojson(r->geojson))
			row_bad(im, &sm, line, "footprint: not a GeoJSON "
			    "object");
		else {
			grid_arr_text(&a[0], r->building_id);
			grid_arr_text(&a[1], r->community_id);
			grid_arr_text(&a[2], r->kind[0] ? r->kind : NULL);
			grid_arr_int(&a[3], r->households);
			/* proto3 has no NULL: 0 levels means unknown. */
			if (r->levels > 0)
				grid_arr_int(&a[4], r->levels);
			else
				grid_arr_null(&a[4]);
			arr_double(&a[5], r->lon);
			arr_double(&a[6], r->lat);
			arr_double(&a[7], r->area_m2);
			grid_arr_text(&a[8], r->geojson[0] ? r->geojson : NULL);
			grid_arr_int(&a[9], line);
			valid++;
		}
	}
	const char *params[11];

	for (size_t k = 0; k < ARRAY_LEN(a); k++)
		params[k] = grid_arr_finish(&a[k]);
	params[10] = in->strict ? "true" : "false";
	import_submit(im, &sm, in->strict, valid, sql_import_buildings, 11,
	    params);
	for (size_t k = 0; k < ARRAY_LEN(a); k++)
		grid_arr_free(&a[k]);
	free(sm.s);
}

/* ---- GetGrid ------------------------------------------------------------------- */

struct grid_get {
	struct conn *c;
	uint64_t request_id;
	char community[65];
};

static void
get_grid_cb(void *arg, const struct db_res *res)
{
	struct grid_get *g = arg;
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__GridReply reply = GRIDD__V1__GRID_REPLY__INIT;
	Gridd__V1__Cell *cells = NULL, **cellp = NULL;
	char msg[300];
	int rows = db_res_rows(res);
	size_t n = 0;

	if (db_res_status(res) != DB_OK) {
		Gridd__V1__ErrorCode code = grid_db_error(res, msg, sizeof(msg));

		if (conn_is_open(g->c))
			rpc_reply_error(g->c, g->request_id, code, msg);
		goto done;
	}
	if (rows == 0) {
		if (conn_is_open(g->c))
			rpc_reply_error(g->c, g->request_id,
			    GRIDD__V1__ERROR_CODE__NOT_FOUND,
			    "unknown community");
		goto done;
	}
	cells = xcalloc((size_t)rows, sizeof(*cells));
	cellp = xcalloc((size_t)rows, sizeof(*cellp));
	for (int i = 0; i < rows; i++) {
		int64_t hh, nb;
		Gridd__V1__Cell *cl = &cells[n];

		if (db_res_isnull(res, i, 0))
			continue;	/* a community without cells */
		if (!db_res_int64(res, i, 2, &hh) ||
		    !db_res_int64(res, i, 3, &nb) || hh < 0 ||
		    hh > INT32_MAX || nb < 0 || nb > INT32_MAX)
			continue;
		gridd__v1__cell__init(cl);
		cl->cell_id = (char *)db_res_get(res, i, 0);
		cl->community_id = g->community;
		cl->kind = (char *)db_res_get(res, i, 1);
		cl->households = (int32_t)hh;
		cl->buildings = (int32_t)nb;
		cl->geojson = (char *)db_res_get(res, i, 4);
		cellp[n++] = cl;
	}
	reply.cells = cellp;
	reply.n_cells = n;
	env.request_id = g->request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_GRID_REPLY;
	env.grid_reply = &reply;
	if (conn_is_open(g->c))
		conn_send(g->c, &env);
done:
	free(cells);
	free(cellp);
	conn_release(g->c);
	free(g);
}

void
grid_get_grid(struct conn *c, const Gridd__V1__Envelope *env)
{
	const char *id = env->get_grid->community_id;
	struct grid_get *g;
	const char *params[1];

	if (!grid_valid_id(id)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "community_id must be 1-64 characters of A-Z a-z 0-9 _ . -");
		return;
	}
	g = xcalloc(1, sizeof(*g));
	g->c = c;
	g->request_id = env->request_id;
	snprintf(g->community, sizeof(g->community), "%s", id);
	params[0] = g->community;
	conn_hold(c);
	if (gridd.db == NULL || !db_query(gridd.db,
	    "SELECT g.cell_id, g.kind, g.households, g.buildings, g.geojson"
	    " FROM communities c"
	    " LEFT JOIN LATERAL gridd_grid(c.community_id) g ON true"
	    " WHERE c.community_id = $1", 1, params, get_grid_cb, g)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__UNAVAILABLE, "database unavailable");
		conn_release(c);
		free(g);
	}
}

/* ---- partitioning: requests and tasks ------------------------------------------ */

/* Who asked: a Repartition request (c set) or a reload (c NULL). */
struct part_req {
	struct conn *c;
	uint64_t request_id;
	char scope[80];
	int tasks, pending, ok, failed, skipped;
	Gridd__V1__ErrorCode first_code;
	char first_error[300];
	/* Totals for the report. */
	int64_t buildings, households;
	int cells, comprehensive, dedicated, oob, moved, created, retired;
	double expected_cells;	/* sum of households / target */
	int64_t *hh;		/* every comprehensive cell's households */
	size_t n_hh;
	struct sbuf rows, notes;
	int64_t started_ms;
};

enum task_state {
	TASK_QUEUED = 0,
	TASK_LOADING,
	TASK_COMPUTING,
	TASK_APPLYING,
};

struct task {
	TAILQ_ENTRY(task) entry;
	struct part_req *req;
	enum task_state state;
	char community[65];
	bool fresh;		/* prev = NULL: the grid keys changed */
	struct cfg_grid params;

	/* Loaded. */
	char code[16];		/* the community's 12-digit code or "" */
	bool has_cells;		/* current cells before this partition */
	size_t n;
	char **bid;		/* building ids by idx */
	struct part_building *b;
	int32_t *prev;		/* previous label per building, -1 none */
	char **prev_ids;	/* label -> current cell id, sorted */
	size_t n_prev;
	int max_seq;		/* highest sequence number ever issued */
	struct part_edge *e;
	size_t ne;

	/* Computed on the partition thread. */
	bool part_ok;
	char part_err[256];
	struct part_result res;
	double cpu_ms;

	/* Applied. */
	char **cell_ids;	/* per result cell */
	int64_t t0, load_ms, part_ms, apply_ms;
};

TAILQ_HEAD(task_list, task);

static struct {
	struct task_list queue;		/* waiting to start, on the loop */
	size_t queued;
	struct task *active;		/* the one task in progress */
	bool stopping;

	/* The partition thread. */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct task_list todo, done;	/* guarded by mu */
	bool running, stop;
	struct event *done_ev;
} pq = {
	.queue = TAILQ_HEAD_INITIALIZER(pq.queue),
	.mu = PTHREAD_MUTEX_INITIALIZER,
	.cv = PTHREAD_COND_INITIALIZER,
	.todo = TAILQ_HEAD_INITIALIZER(pq.todo),
	.done = TAILQ_HEAD_INITIALIZER(pq.done),
};

static void pump(void);

static void
task_free(struct task *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->bid[i]);
	free(t->bid);
	free(t->b);
	free(t->prev);
	for (size_t i = 0; i < t->n_prev; i++)
		free(t->prev_ids[i]);
	free(t->prev_ids);
	free(t->e);
	if (t->cell_ids != NULL)
		for (size_t i = 0; i < t->res.n_cells; i++)
			free(t->cell_ids[i]);
	free(t->cell_ids);
	part_result_free(&t->res);
	free(t);
}

static struct part_req *
req_new(struct conn *c, uint64_t request_id, const char *scope)
{
	struct part_req *r = xcalloc(1, sizeof(*r));

	r->c = c;
	r->request_id = request_id;
	snprintf(r->scope, sizeof(r->scope), "%s", scope);
	r->started_ms = mono_ms();
	if (c != NULL)
		conn_hold(c);
	return r;
}

static void
req_free(struct part_req *r)
{
	if (r->c != NULL)
		conn_release(r->c);
	free(r->hh);
	free(r->rows.s);
	free(r->notes.s);
	free(r);
}

static int
i64_cmp(const void *pa, const void *pb)
{
	int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;

	return (a > b) - (a < b);
}

static const char report_head[] =
    "community        buildings households cells compreh dedicated"
    "  hh min/med/max  oob  rms_m moved created retired  part_ms    ms\n";

/* The readable report: a row per community, a total, the checks an
 * administrator looks at, then the notes (cells out of bounds and why,
 * failures). */
static void
req_report(struct part_req *r, struct sbuf *out)
{
	char mm[40] = "-";
	double dev;

	sbuf_printf(out, "%s%s", report_head, sbuf_str(&r->rows));
	if (r->n_hh > 0) {
		qsort(r->hh, r->n_hh, sizeof(*r->hh), i64_cmp);
		snprintf(mm, sizeof(mm), "%lld/%lld/%lld", (long long)r->hh[0],
		    (long long)r->hh[(r->n_hh - 1) / 2],
		    (long long)r->hh[r->n_hh - 1]);
	}
	if (r->ok > 1)
		sbuf_printf(out, "%-16s %9lld %10lld %5d %7d %9d %15s %4d %6s "
		    "%5d %7d %7d %8s %5lld\n", "total",
		    (long long)r->buildings, (long long)r->households,
		    r->cells, r->comprehensive, r->dedicated, mm, r->oob, "",
		    r->moved, r->created, r->retired, "",
		    (long long)(mono_ms() - r->started_ms));
	if (r->ok > 0 && r->expected_cells > 0) {
		dev = 100.0 * (r->comprehensive - r->expected_cells) /
		    r->expected_cells;
		sbuf_printf(out, "comprehensive cells %d vs households/target "
		    "%.1f (%+.1f%%); buildings moved %d\n", r->comprehensive,
		    r->expected_cells, dev, r->moved);
	}
	if (r->notes.len > 0)
		sbuf_printf(out, "%s", sbuf_str(&r->notes));
}

static void
req_finish(struct part_req *r)
{
	struct sbuf rep = { 0 };

	req_report(r, &rep);
	log_info("event=repartition scope=%s communities=%d ok=%d failed=%d "
	    "skipped=%d cells=%d moved=%d ms=%lld", r->scope, r->tasks, r->ok,
	    r->failed, r->skipped, r->cells, r->moved,
	    (long long)(mono_ms() - r->started_ms));
	if (r->c == NULL) {
		/* A reload has nobody to answer: the report goes to the log,
		 * one line each. */
		char *save = NULL;

		for (char *ln = strtok_r(rep.s, "\n", &save); ln != NULL;
		    ln = strtok_r(NULL, "\n", &save))
			log_info("event=repartition_report scope=%s | %s",
			    r->scope, ln);
	} else if (conn_is_open(r->c)) {
		if (r->ok == 0 && r->failed > 0) {
			rpc_reply_error(r->c, r->request_id, r->first_code,
			    r->first_error);
		} else {
			Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
			Gridd__V1__RepartitionReply rr =
			    GRIDD__V1__REPARTITION_REPLY__INIT;

			rr.cells = r->cells;
			rr.buildings_moved = r->moved;
			rr.report = rep.s != NULL ? rep.s : (char *)"";
			env.request_id = r->request_id;
			env.body_case =
			    GRIDD__V1__ENVELOPE__BODY_REPARTITION_REPLY;
			env.repartition_reply = &rr;
			conn_send(r->c, &env);
		}
	}
	free(rep.s);
	req_free(r);
}

/* Ends the active task (ok, failed or skipped) and starts the next. */
static void
task_end(struct task *t, Gridd__V1__ErrorCode code, const char *err)
{
	struct part_req *r = t->req;

	if (code != GRIDD__V1__ERROR_CODE__OK) {
		r->failed++;
		stats.partitions_failed++;
		if (r->first_error[0] == '\0') {
			r->first_code = code;
			snprintf(r->first_error, sizeof(r->first_error),
			    "%s: %s", t->community, err);
		}
		sbuf_printf(&r->notes, "%s: failed: %s\n", t->community, err);
		log_warn("event=partition community=%s outcome=failed "
		    "reason=\"%s\"", t->community, err);
	}
	if (pq.active == t)
		pq.active = NULL;
	task_free(t);
	if (--r->pending == 0)
		req_finish(r);
	if (!pq.stopping)
		pump();
}

static void
task_skip(struct task *t, const char *why)
{
	t->req->skipped++;
	sbuf_printf(&t->req->notes, "%s: %s\n", t->community, why);
	task_end(t, GRIDD__V1__ERROR_CODE__OK, NULL);
}

static bool
enqueue(struct part_req *r, const char *community, bool fresh)
{
	struct task *t;

	if (pq.queued >= GRID_MAX_TASKS || pq.stopping)
		return false;
	t = xcalloc(1, sizeof(*t));
	t->req = r;
	t->fresh = fresh;
	snprintf(t->community, sizeof(t->community), "%s", community);
	r->tasks++;
	r->pending++;
	TAILQ_INSERT_TAIL(&pq.queue, t, entry);
	pq.queued++;
	return true;
}

/* ---- load ------------------------------------------------------------------------ */

static int
str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The sequence number in a cell id of this community (its 15-digit code
 * or COMMUNITY-NNN), 0 when the id follows neither rule. */
static int
cell_seq(const struct task *t, const char *id)
{
	size_t cl = strlen(t->community), n = strlen(id);
	const char *digits = NULL;

	if (t->code[0] != '\0' && n == 15 && strncmp(id, t->code, 12) == 0)
		digits = id + 12;
	else if (n > cl + 1 && strncmp(id, t->community, cl) == 0 &&
	    id[cl] == '-')
		digits = id + cl + 1;
	if (digits == NULL || strlen(digits) > 6 ||
	    strspn(digits, "0123456789") != strlen(digits))
		return 0;
	return atoi(digits);
}

static bool
row_double(const struct db_res *res, int row, int col, double *out)
{
	return !db_res_isnull(res, row, col) &&
	    db_res_double(res, row, col, out) && isfinite(*out);
}

/* Copies the loaded rows into the partitioner's arrays, checking what the
 * database sent as carefully as any other input. */
static const char *
task_take(struct task *t, const struct db_res *info,
    const struct db_res *bl, const struct db_res *ed)
{
	int ni = db_res_rows(info), nb = db_res_rows(bl), ne = db_res_rows(ed);
	int64_t v;

	if (ni == 0)
		return "unknown community";
	t->has_cells = strcmp(db_res_get(info, 0, 2), "t") == 0;
	if (!db_res_isnull(info, 0, 0) &&
	    valid_code12(db_res_get(info, 0, 0)))
		snprintf(t->code, sizeof(t->code), "%s", db_res_get(info, 0, 0));
	for (int i = 0; i < ni; i++) {
		int s;

		if (db_res_isnull(info, i, 1))
			continue;
		s = cell_seq(t, db_res_get(info, i, 1));
		if (s > t->max_seq)
			t->max_seq = s;
	}
	if (nb < 0 || (size_t)nb > PART_MAX_BUILDINGS ||
	    ne < 0 || (size_t)ne > PART_MAX_EDGES)
		return "community too large";
	t->n = (size_t)nb;
	t->bid = xcalloc(t->n + 1, sizeof(*t->bid));
	t->b = xcalloc(t->n + 1, sizeof(*t->b));
	t->prev = xcalloc(t->n + 1, sizeof(*t->prev));
	t->e = xcalloc((size_t)ne + 1, sizeof(*t->e));

	/* Current cells: sorted distinct ids, each building's label the
	 * index of its cell. */
	char **cur = xcalloc(t->n + 1, sizeof(*cur));
	size_t nc = 0;

	for (int i = 0; i < nb; i++)
		if (!db_res_isnull(bl, i, 7))
			cur[nc++] = (char *)db_res_get(bl, i, 7);
	qsort(cur, nc, sizeof(*cur), str_cmp);
	t->prev_ids = xcalloc(nc + 1, sizeof(*t->prev_ids));
	for (size_t i = 0; i < nc; i++)
		if (i == 0 || strcmp(cur[i], cur[i - 1]) != 0)
			t->prev_ids[t->n_prev++] = xstrdup(cur[i]);
	free(cur);

	for (int i = 0; i < nb; i++) {
		struct part_building *b = &t->b[i];
		enum part_kind kind;
		double area = 0, levels = 1;
		int64_t hh;

		if (!db_res_int64(bl, i, 0, &v) || v != i)
			return "building rows out of order";
		if (!valid_building_id(db_res_get(bl, i, 1)))
			return "bad building id";
		t->bid[i] = xstrdup(db_res_get(bl, i, 1));
		if (!row_double(bl, i, 2, &b->x) || !row_double(bl, i, 3, &b->y))
			return "building without coordinates";
		if (!db_res_int64(bl, i, 4, &hh) || hh < 0 ||
		    hh > PART_MAX_HOUSEHOLDS)
			return "bad household count";
		b->households = (int32_t)hh;
		if (!part_kind_parse(db_res_get(bl, i, 5), &kind))
			kind = PART_KIND_UNKNOWN;
		b->kind = (uint8_t)kind;
		if (!db_res_isnull(bl, i, 6) && (!row_double(bl, i, 6, &area) ||
		    area < 0))
			return "bad building area";
		if (!db_res_isnull(bl, i, 8) && (!row_double(bl, i, 8, &levels) ||
		    levels < 1))
			levels = 1;
		/* Floor area, for the dedicated-cell threshold. */
		b->area_m2 = area * levels;
		t->prev[i] = -1;
		if (!db_res_isnull(bl, i, 7)) {
			const char *key = db_res_get(bl, i, 7);
			char **hit = bsearch(&key, t->prev_ids, t->n_prev,
			    sizeof(*t->prev_ids), str_cmp);

			if (hit != NULL)
				t->prev[i] = (int32_t)(hit - t->prev_ids);
			if (cell_seq(t, key) > t->max_seq)
				t->max_seq = cell_seq(t, key);
		}
	}
	for (int i = 0; i < ne; i++) {
		int64_t a, b;

		if (!db_res_int64(ed, i, 0, &a) || !db_res_int64(ed, i, 1, &b) ||
		    a < 0 || b < 0 || a >= nb || b >= nb)
			return "bad edge";
		t->e[i].a = (uint32_t)a;
		t->e[i].b = (uint32_t)b;
	}
	t->ne = (size_t)ne;
	return NULL;
}

static void task_compute(struct task *t);
static void task_apply(struct task *t);

static void
load_cb(void *arg, enum db_status st, const struct db_res *const *res, int n)
{
	struct task *t = arg;
	const char *why;
	char msg[300];

	t->load_ms = mono_ms() - t->t0;
	if (st != DB_OK || n != 3) {
		Gridd__V1__ErrorCode code = GRIDD__V1__ERROR_CODE__UNAVAILABLE;

		snprintf(msg, sizeof(msg), "database unavailable");
		for (int i = 0; i < n; i++)
			if (res[i] != NULL &&
			    db_res_status(res[i]) != DB_OK) {
				code = grid_db_error(res[i], msg, sizeof(msg));
				break;
			}
		task_end(t, code, msg);
		return;
	}
	if ((why = task_take(t, res[0], res[1], res[2])) != NULL) {
		task_end(t, strcmp(why, "unknown community") == 0 ?
		    GRIDD__V1__ERROR_CODE__NOT_FOUND :
		    GRIDD__V1__ERROR_CODE__INTERNAL, why);
		return;
	}
	if (pq.stopping) {
		task_end(t, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "shutting down");
		return;
	}
	if (t->n == 0 && !t->has_cells) {
		task_skip(t, "no buildings, nothing to partition");
		return;
	}
	if (t->n == 0) {
		/* Every building left: the empty partition retires the cells
		 * (the partitioner has nothing to do). */
		sbuf_printf(&t->req->notes, "%s: no buildings left, its cells "
		    "are retired\n", t->community);
		task_apply(t);
		return;
	}
	task_compute(t);
}

static void
task_load(struct task *t)
{
	struct db_batch *b = db_batch_new();
	const char *p1[1] = { t->community };
	const char *p2[2];
	char nm[32];

	t->params = *cfg_grid_for(gridd.cfg, t->community);
	snprintf(nm, sizeof(nm), "%.3f", t->params.neighbour_m);
	p2[0] = t->community;
	p2[1] = nm;
	/* The community's code, whether it has current cells and every cell
	 * id it ever had (for the next sequence number), its buildings with
	 * their current cells, and the adjacency graph: one transaction,
	 * under partitioning's own time limit (a big community takes far
	 * longer than the requests query_timeout_ms is meant for). */
	db_batch_timeout(b, t->params.partition_timeout_s * 1000);
	db_batch_add(b, "SELECT c.code, x.cell_id, EXISTS (SELECT 1"
	    " FROM cells k WHERE k.community_id = c.community_id"
	    " AND k.valid_to IS NULL) FROM communities c"
	    " LEFT JOIN LATERAL (SELECT DISTINCT h.cell_id FROM cells h"
	    " WHERE h.community_id = c.community_id) x ON true"
	    " WHERE c.community_id = $1", 1, p1);
	db_batch_add(b, "SELECT p.idx, p.building_id, p.x, p.y, p.households,"
	    " p.kind, p.area_m2, p.cell_id, x.levels"
	    " FROM gridd_partition_buildings($1) p"
	    " JOIN buildings x ON x.building_id = p.building_id"
	    " ORDER BY p.idx", 1, p1);
	db_batch_add(b, "SELECT a, b FROM gridd_partition_edges($1,"
	    " $2::float8)", 2, p2);
	t->state = TASK_LOADING;
	t->t0 = mono_ms();
	if (gridd.db == NULL || !db_batch_submit(gridd.db, b, load_cb, t))
		task_end(t, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

/* Starts the next queued task when none is running. */
static void
pump(void)
{
	struct task *t;

	/* After SIGTERM nothing new starts; grid_shutdown fails the rest. */
	while (pq.active == NULL && !pq.stopping && !gridd.stopping &&
	    (t = TAILQ_FIRST(&pq.queue)) != NULL) {
		TAILQ_REMOVE(&pq.queue, t, entry);
		pq.queued--;
		pq.active = t;
		task_load(t);	/* may end t at once and loop */
	}
}

/* ---- compute (the partition thread) ------------------------------------------------ */

static double
thread_cpu_ms(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
		return 0;
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void *
part_thread(void *arg)
{
	struct task *t;

	UNUSED(arg);
	pthread_mutex_lock(&pq.mu);
	for (;;) {
		while (TAILQ_EMPTY(&pq.todo) && !pq.stop)
			pthread_cond_wait(&pq.cv, &pq.mu);
		if (pq.stop)
			break;
		t = TAILQ_FIRST(&pq.todo);
		TAILQ_REMOVE(&pq.todo, t, entry);
		pthread_mutex_unlock(&pq.mu);

		struct part_input in = {
			.buildings = t->b,
			.n_buildings = t->n,
			.edges = t->e,
			.n_edges = t->ne,
			.prev = t->fresh ? NULL : t->prev,
			.params = {
				.min_households = t->params.min_households,
				.target_households = t->params.target_households,
				.max_households = t->params.max_households,
				.dedicated_min_buildings =
				    t->params.dedicated_min_buildings,
				.dedicated_min_area_m2 =
				    t->params.dedicated_min_area_m2,
			},
		};
		double c0 = thread_cpu_ms();

		t->part_ok = part_run(&in, &t->res, t->part_err,
		    sizeof(t->part_err));
		t->cpu_ms = thread_cpu_ms() - c0;

		pthread_mutex_lock(&pq.mu);
		TAILQ_INSERT_TAIL(&pq.done, t, entry);
		/* libevent's thread support wakes the loop. */
		event_active(pq.done_ev, EV_READ, 0);
	}
	pthread_mutex_unlock(&pq.mu);
	return NULL;
}

static void
part_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct task_list ready = TAILQ_HEAD_INITIALIZER(ready);
	struct task *t;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	pthread_mutex_lock(&pq.mu);
	TAILQ_CONCAT(&ready, &pq.done, entry);
	pthread_mutex_unlock(&pq.mu);
	while ((t = TAILQ_FIRST(&ready)) != NULL) {
		TAILQ_REMOVE(&ready, t, entry);
		t->part_ms = mono_ms() - t->t0 - t->load_ms;
		if (!t->part_ok)
			task_end(t, GRIDD__V1__ERROR_CODE__INTERNAL,
			    t->part_err);
		else if (pq.stopping)
			task_end(t, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
			    "shutting down");
		else
			task_apply(t);
	}
}

static void
task_compute(struct task *t)
{
	bool ok = false;

	t->state = TASK_COMPUTING;
	pthread_mutex_lock(&pq.mu);
	if (pq.running && !pq.stop) {
		TAILQ_INSERT_TAIL(&pq.todo, t, entry);
		pthread_cond_signal(&pq.cv);
		ok = true;
	}
	pthread_mutex_unlock(&pq.mu);
	if (!ok)
		task_end(t, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "partition thread not running");
}

/* ---- apply --------------------------------------------------------------------- */

struct ov {
	int32_t cell, prev, count;
};

static int
ov_cmp(const void *pa, const void *pb)
{
	const struct ov *a = pa, *b = pb;

	if (a->count != b->count)
		return a->count > b->count ? -1 : 1;
	if (a->prev != b->prev)
		return a->prev < b->prev ? -1 : 1;
	return (a->cell > b->cell) - (a->cell < b->cell);
}

static int
pair_cmp(const void *pa, const void *pb)
{
	const int32_t *a = pa, *b = pb;

	if (a[0] != b[0])
		return a[0] < b[0] ? -1 : 1;
	return (a[1] > b[1]) - (a[1] < b[1]);
}

/*
 * Which previous cell each new cell continues: the partitioner says so
 * when it started from the previous cells; after a fresh partition (grid
 * keys changed) the largest overlap in buildings decides, one to one,
 * ties to the smaller previous label, so ids survive there too.
 */
static void
map_previous(struct task *t, int32_t *keep)
{
	size_t nc = t->res.n_cells;

	for (size_t i = 0; i < nc; i++)
		keep[i] = t->fresh ? -1 : t->res.cells[i].prev;
	if (!t->fresh || t->n_prev == 0)
		return;

	int32_t (*pairs)[2] = xreallocarray(NULL, t->n + 1, sizeof(*pairs));
	struct ov *ov = xreallocarray(NULL, t->n + 1, sizeof(*ov));
	bool *taken = xcalloc(t->n_prev + 1, sizeof(*taken));
	size_t np = 0, no = 0;

	for (size_t i = 0; i < t->n; i++)
		if (t->prev[i] >= 0) {
			pairs[np][0] = t->res.labels[i];
			pairs[np][1] = t->prev[i];
			np++;
		}
	qsort(pairs, np, sizeof(*pairs), pair_cmp);
	for (size_t i = 0; i < np; i++) {
		if (no > 0 && ov[no - 1].cell == pairs[i][0] &&
		    ov[no - 1].prev == pairs[i][1]) {
			ov[no - 1].count++;
			continue;
		}
		ov[no++] = (struct ov){ pairs[i][0], pairs[i][1], 1 };
	}
	qsort(ov, no, sizeof(*ov), ov_cmp);
	for (size_t i = 0; i < no; i++) {
		if (keep[ov[i].cell] >= 0 || taken[ov[i].prev])
			continue;
		keep[ov[i].cell] = ov[i].prev;
		taken[ov[i].prev] = true;
	}
	free(pairs);
	free(ov);
	free(taken);
}

/* Cell ids: a surviving cell keeps its id; a new one takes the next
 * sequence number never issued in this community (the result lists new
 * cells north to south, west to east, so a first partition numbers them
 * that way). */
static const char *
assign_ids(struct task *t)
{
	size_t nc = t->res.n_cells;
	int32_t *keep = xcalloc(nc + 1, sizeof(*keep));
	int seq = t->max_seq;
	char id[96];

	map_previous(t, keep);
	t->cell_ids = xcalloc(nc + 1, sizeof(*t->cell_ids));
	for (size_t i = 0; i < nc; i++) {
		if (keep[i] >= 0 && (size_t)keep[i] < t->n_prev) {
			t->cell_ids[i] = xstrdup(t->prev_ids[keep[i]]);
			continue;
		}
		for (;;) {
			seq++;
			if (t->code[0] != '\0') {
				if (seq > GRID_CODE_MAX_SEQ) {
					free(keep);
					return "more than 999 cells: the "
					    "15-digit code has no room";
				}
				snprintf(id, sizeof(id), "%s%03d", t->code,
				    seq);
			} else
				snprintf(id, sizeof(id), "%s-%03d",
				    t->community, seq);
			/* A kept id may carry a higher number than any
			 * history row when ids were imported by hand. */
			if (bsearch(&(const char *){ id }, t->prev_ids,
			    t->n_prev, sizeof(*t->prev_ids), str_cmp) == NULL)
				break;
		}
		t->cell_ids[i] = xstrdup(id);
	}
	free(keep);
	return NULL;
}

/* One row of the report, and the notes for cells out of bounds. */
static void
task_report(struct task *t, int cells, int moved, int created, int retired)
{
	struct part_req *r = t->req;
	const struct part_report *rep = &t->res.report;
	char mm[40] = "-", flags[160];
	int listed = 0;

	if (rep->comprehensive > 0)
		snprintf(mm, sizeof(mm), "%lld/%lld/%lld",
		    (long long)rep->hh_min, (long long)rep->hh_median,
		    (long long)rep->hh_max);
	int64_t hh_all = 0;

	for (size_t i = 0; i < t->n; i++)
		hh_all += t->b[i].households;
	sbuf_printf(&r->rows, "%-16s %9zu %10lld %5d %7d %9d %15s %4d %6.0f "
	    "%5d %7d %7d %8.1f %5lld\n", t->community, t->n,
	    (long long)hh_all, cells, rep->comprehensive, rep->dedicated, mm,
	    rep->out_of_bounds, sqrt(rep->msd_mean_m2), moved, created,
	    retired, t->cpu_ms, (long long)(mono_ms() - t->t0));
	r->buildings += (int64_t)t->n;
	r->households += hh_all;
	r->cells += cells;
	r->comprehensive += rep->comprehensive;
	r->dedicated += rep->dedicated;
	r->oob += rep->out_of_bounds;
	r->moved += moved;
	r->created += created;
	r->retired += retired;
	if (t->params.target_households > 0)
		r->expected_cells += (double)hh_all /
		    t->params.target_households;
	for (size_t i = 0; i < t->res.n_cells; i++) {
		const struct part_cell *c = &t->res.cells[i];

		if (c->kind == PART_CELL_COMPREHENSIVE) {
			r->hh = xreallocarray(r->hh, r->n_hh + 1,
			    sizeof(*r->hh));
			r->hh[r->n_hh++] = c->households;
		}
		if ((c->flags & (PART_F_BELOW_MIN | PART_F_ABOVE_MAX)) == 0)
			continue;
		if (listed++ == GRID_REPORT_MAX_OOB) {
			sbuf_printf(&r->notes, "%s: ... %d more cells out of "
			    "bounds\n", t->community,
			    rep->out_of_bounds - GRID_REPORT_MAX_OOB);
			break;
		}
		if (listed > GRID_REPORT_MAX_OOB)
			break;
		part_flags_format(c->flags & PART_F_REASONS, flags,
		    sizeof(flags));
		sbuf_printf(&r->notes, "%s: cell %s has %lld households in %d "
		    "buildings, %s %d: %s\n", t->community, t->cell_ids[i],
		    (long long)c->households, c->buildings,
		    (c->flags & PART_F_BELOW_MIN) ? "below min" : "above max",
		    (c->flags & PART_F_BELOW_MIN) ?
		    t->params.min_households : t->params.max_households,
		    flags[0] ? flags : "no reason given");
	}
}

static void
apply_cb(void *arg, enum db_status st, const struct db_res *const *results,
    int n)
{
	struct task *t = arg;
	const struct db_res *res = n == 1 ? results[0] : NULL;
	int64_t v[4];
	char msg[300];

	t->apply_ms = mono_ms() - t->t0 - t->load_ms - t->part_ms;
	if (res == NULL) {
		task_end(t, st == DB_TIMEOUT ?
		    GRIDD__V1__ERROR_CODE__UNAVAILABLE :
		    GRIDD__V1__ERROR_CODE__INTERNAL, st == DB_TIMEOUT ?
		    "database timeout" : "unexpected apply result");
		return;
	}
	if (st != DB_OK || db_res_status(res) != DB_OK) {
		Gridd__V1__ErrorCode code = grid_db_error(res, msg, sizeof(msg));

		/* An import between load and apply changes the building
		 * list; the statement refuses and nothing was written. */
		if (code == GRIDD__V1__ERROR_CODE__INTERNAL)
			snprintf(msg, sizeof(msg), "applying the partition "
			    "failed (did the buildings change meanwhile? run "
			    "it again)");
		task_end(t, code, msg);
		return;
	}
	if (db_res_rows(res) != 1 || !db_res_int64(res, 0, 0, &v[0]) ||
	    !db_res_int64(res, 0, 1, &v[1]) || !db_res_int64(res, 0, 2, &v[2]) ||
	    !db_res_int64(res, 0, 3, &v[3]) || v[0] < 0 || v[0] > INT32_MAX ||
	    v[1] < 0 || v[1] > INT32_MAX || v[2] < 0 || v[2] > INT32_MAX ||
	    v[3] < 0 || v[3] > INT32_MAX) {
		task_end(t, GRIDD__V1__ERROR_CODE__INTERNAL,
		    "unexpected result from gridd_apply_partition");
		return;
	}
	task_report(t, (int)v[0], (int)v[1], (int)v[2], (int)v[3]);
	t->req->ok++;
	stats.partitions_ok++;
	stats.buildings_moved += (uint64_t)v[1];
	metrics_hist_observe(&stats.partition_ms, (double)(mono_ms() - t->t0));
	log_info("event=partition community=%s outcome=ok fresh=%d cells=%lld "
	    "moved=%lld created=%lld retired=%lld out_of_bounds=%d "
	    "load_ms=%lld part_ms=%lld cpu_ms=%.1f apply_ms=%lld",
	    t->community, t->fresh, (long long)v[0], (long long)v[1],
	    (long long)v[2], (long long)v[3], t->res.report.out_of_bounds,
	    (long long)t->load_ms, (long long)t->part_ms, t->cpu_ms,
	    (long long)t->apply_ms);
	task_end(t, GRIDD__V1__ERROR_CODE__OK, NULL);
}

static void
task_apply(struct task *t)
{
	struct grid_arr bids, bcells, cids, kinds;
	const char *why;

	if ((why = assign_ids(t)) != NULL) {
		task_end(t, GRIDD__V1__ERROR_CODE__CONFLICT, why);
		return;
	}
	grid_arr_init(&bids);
	grid_arr_init(&bcells);
	grid_arr_init(&cids);
	grid_arr_init(&kinds);
	for (size_t i = 0; i < t->n; i++) {
		grid_arr_text(&bids, t->bid[i]);
		grid_arr_text(&bcells, t->cell_ids[t->res.labels[i]]);
	}
	for (size_t i = 0; i < t->res.n_cells; i++) {
		grid_arr_text(&cids, t->cell_ids[i]);
		grid_arr_text(&kinds, t->res.cells[i].kind ==
		    PART_CELL_DEDICATED ? "dedicated" : "comprehensive");
	}
	const char *params[5] = { t->community, grid_arr_finish(&bids),
	    grid_arr_finish(&bcells), grid_arr_finish(&cids),
	    grid_arr_finish(&kinds) };

	t->state = TASK_APPLYING;
	/* One statement, one transaction: the whole community's new grid or
	 * nothing, under partitioning's own time limit. */
	struct db_batch *b = db_batch_new();

	db_batch_timeout(b, t->params.partition_timeout_s * 1000);
	db_batch_add(b, "SELECT cells, buildings_moved, created, retired"
	    " FROM gridd_apply_partition($1, $2::text[], $3::text[],"
	    " $4::text[], $5::text[])", 5, params);
	if (gridd.db == NULL) {
		db_batch_free(b);
		task_end(t, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
	} else if (!db_batch_submit(gridd.db, b, apply_cb, t))
		task_end(t, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
	grid_arr_free(&bids);
	grid_arr_free(&bcells);
	grid_arr_free(&cids);
	grid_arr_free(&kinds);
}

/* ---- Repartition ----------------------------------------------------------------- */

static void
list_cb(void *arg, const struct db_res *res)
{
	struct part_req *r = arg;
	char msg[300];
	int rows;

	if (db_res_status(res) != DB_OK) {
		Gridd__V1__ErrorCode code = grid_db_error(res, msg, sizeof(msg));

		if (r->c != NULL && conn_is_open(r->c))
			rpc_reply_error(r->c, r->request_id, code, msg);
		req_free(r);
		return;
	}
	rows = db_res_rows(res);
	/* The request holds one pending count while tasks are queued, so
	 * a task that ends at once cannot finish it early. */
	r->pending++;
	for (int i = 0; i < rows; i++) {
		const char *id = db_res_get(res, i, 0);

		if (!grid_valid_id(id))
			continue;
		if (!enqueue(r, id, r->c == NULL)) {
			sbuf_printf(&r->notes, "%s: not queued (queue full or "
			    "shutting down)\n", id);
			r->failed++;
			if (r->first_error[0] == '\0') {
				r->first_code =
				    GRIDD__V1__ERROR_CODE__UNAVAILABLE;
				snprintf(r->first_error,
				    sizeof(r->first_error),
				    "partition queue full or shutting down");
			}
		}
	}
	if (--r->pending == 0) {
		if (r->tasks == 0 && r->failed == 0)
			sbuf_printf(&r->notes, "no communities to partition\n");
		req_finish(r);
		return;
	}
	pump();
}

void
grid_repartition(struct conn *c, const Gridd__V1__Envelope *env)
{
	const char *id = env->repartition->community_id;
	struct part_req *r;

	if (id[0] != '\0' && !grid_valid_id(id)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "community_id must be empty (every community) or 1-64 "
		    "characters of A-Z a-z 0-9 _ . -");
		return;
	}
	r = req_new(c, env->request_id, id[0] ? id : "all");
	if (id[0] != '\0') {
		if (!enqueue(r, id, false)) {
			rpc_reply_error(c, env->request_id,
			    GRIDD__V1__ERROR_CODE__UNAVAILABLE,
			    "partition queue full or shutting down");
			req_free(r);
			return;
		}
		pump();
		return;
	}
	if (gridd.db == NULL || !db_query(gridd.db,
	    "SELECT community_id FROM communities"
	    " ORDER BY community_id COLLATE \"C\"", 0, NULL, list_cb, r)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__UNAVAILABLE, "database unavailable");
		req_free(r);
	}
}

/* ---- stale cells after imports --------------------------------------------------- */

/*
 * An import that changes a partitioned community (its polygon, or
 * buildings added, changed or moved between communities: the import
 * functions' 'repartition' rows) leaves its cells stale. Such a community
 * waits here until no import touched it for its repartition_delay_s; then
 * one repartition starting from its current cells is queued. So a file
 * sent in many batches gives one repartition, which does not run while
 * the batches still change the buildings under it. The list is in memory
 * only: should gridd stop in between, the import's reply and the log
 * still name the community, for `gridctl partition`.
 */
struct stale {
	TAILQ_ENTRY(stale) entry;
	char community[65];
	int64_t due_ms;
};

TAILQ_HEAD(stale_list, stale);

static struct {
	struct stale_list list;
	size_t n;
	struct event *ev;
} sq = {
	.list = TAILQ_HEAD_INITIALIZER(sq.list),
};

/* A task not yet started loads the community afresh anyway. */
static bool
queued_already(const char *community)
{
	struct task *t;

	TAILQ_FOREACH(t, &pq.queue, entry)
		if (strcmp(t->community, community) == 0)
			return true;
	return false;
}

static void
stale_arm(void)
{
	struct stale *s;
	int64_t first = INT64_MAX, wait;
	struct timeval tv;

	if (sq.ev == NULL)
		return;
	TAILQ_FOREACH(s, &sq.list, entry)
		if (s->due_ms < first)
			first = s->due_ms;
	if (first == INT64_MAX) {
		evtimer_del(sq.ev);
		return;
	}
	wait = first - mono_ms();
	if (wait < 0)
		wait = 0;
	tv.tv_sec = (time_t)(wait / 1000);
	tv.tv_usec = (suseconds_t)(wait % 1000) * 1000;
	evtimer_add(sq.ev, &tv);
}

static void
stale_fire_cb(evutil_socket_t fd, short what, void *arg)
{
	int64_t now = mono_ms();
	struct part_req *r = NULL;
	struct stale *s, *next;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	for (s = TAILQ_FIRST(&sq.list); s != NULL; s = next) {
		next = TAILQ_NEXT(s, entry);
		if (s->due_ms > now)
			continue;
		TAILQ_REMOVE(&sq.list, s, entry);
		sq.n--;
		if (!pq.stopping && !gridd.stopping &&
		    !queued_already(s->community)) {
			if (r == NULL) {
				r = req_new(NULL, 0, "import");
				/* Held while queueing, as in list_cb. */
				r->pending++;
			}
			log_info("event=repartition community=%s "
			    "reason=import_made_cells_stale", s->community);
			if (!enqueue(r, s->community, false))
				log_warn("event=repartition community=%s "
				    "outcome=not_queued", s->community);
		}
		free(s);
	}
	if (r != NULL) {
		if (--r->pending == 0)
			req_free(r);	/* nothing queued: nothing to report */
		else
			pump();
	}
	stale_arm();
}

/* Marks one community stale; its delay in seconds, 0 when nothing will
 * be queued (repartition_delay_s = 0, list full, shutting down). */
static int
stale_mark(const char *community)
{
	const struct cfg_grid *g = cfg_grid_for(gridd.cfg, community);
	struct stale *s;

	if (g->repartition_delay_s <= 0 || sq.ev == NULL || pq.stopping)
		return 0;
	TAILQ_FOREACH(s, &sq.list, entry)
		if (strcmp(s->community, community) == 0)
			break;
	if (s == NULL) {
		if (sq.n >= GRID_MAX_TASKS)
			return 0;
		s = xcalloc(1, sizeof(*s));
		snprintf(s->community, sizeof(s->community), "%s", community);
		TAILQ_INSERT_TAIL(&sq.list, s, entry);
		sq.n++;
	}
	s->due_ms = mono_ms() + (int64_t)g->repartition_delay_s * 1000;
	return g->repartition_delay_s;
}

static void
stale_names(struct sbuf *b, size_t *n, const char *id)
{
	if (*n < GRID_REPORT_MAX_STALE)
		sbuf_printf(b, "%s%s", *n > 0 ? ", " : "", id);
	(*n)++;
}

/* The import's report names the stale communities and says what happens
 * next; their repartitions are queued. */
static void
stale_report(struct grid_import *im)
{
	struct sbuf q = { 0 }, h = { 0 }, out = { 0 };
	size_t nq = 0, nh = 0;
	int delay = 0;

	for (size_t i = 0; i < im->n_stale; i++) {
		int d = stale_mark(im->stale[i]);

		if (d > 0) {
			stale_names(&q, &nq, im->stale[i]);
			if (d > delay)
				delay = d;
		} else
			stale_names(&h, &nh, im->stale[i]);
	}
	if (im->report != NULL && im->report[0] != '\0') {
		size_t len = strlen(im->report);

		sbuf_printf(&out, "%s%s", im->report,
		    im->report[len - 1] == '\n' ? "" : "\n");
	}
	if (nq > 0)
		sbuf_printf(&out, "cells stale in %zu communit%s: %s%s; "
		    "repartition queued once no import touched %s for %d s\n",
		    nq, nq == 1 ? "y" : "ies", sbuf_str(&q),
		    nq > GRID_REPORT_MAX_STALE ? ", ..." : "",
		    nq == 1 ? "it" : "them", delay);
	if (nh > 0)
		sbuf_printf(&out, "cells stale in %zu communit%s: %s%s; not "
		    "queued (repartition_delay_s = 0, or shutting down): run "
		    "gridctl partition\n", nh, nh == 1 ? "y" : "ies",
		    sbuf_str(&h), nh > GRID_REPORT_MAX_STALE ? ", ..." : "");
	log_info("%s event=import_stale what=%s communities=%zu queued=%zu",
	    conn_log_prefix(im->c), im->what, nq + nh, nq);
	free(im->report);
	im->report = out.s;
	free(q.s);
	free(h.s);
	stale_arm();
}

/* ---- reload ----------------------------------------------------------------------- */

/* The grid keys of one config, copied: the config itself is freed right
 * after the reload hook returns. */
struct grid_keys {
	struct cfg_grid def;
	struct cfg_community *comm;	/* ids copied, sorted as in cfg */
	size_t n;
};

struct reload_req {
	struct grid_keys old, next;
};

static void
keys_copy(struct grid_keys *k, const struct cfg *cfg)
{
	k->def = cfg->grid;
	k->n = cfg->n_communities;
	k->comm = xcalloc(k->n + 1, sizeof(*k->comm));
	for (size_t i = 0; i < k->n; i++) {
		k->comm[i] = cfg->communities[i];
		k->comm[i].id = xstrdup(cfg->communities[i].id);
	}
}

static void
keys_free(struct grid_keys *k)
{
	for (size_t i = 0; i < k->n; i++)
		free(k->comm[i].id);
	free(k->comm);
}

static const struct cfg_grid *
keys_for(const struct grid_keys *k, const char *id)
{
	for (size_t i = 0; i < k->n; i++)
		if (strcmp(k->comm[i].id, id) == 0)
			return &k->comm[i].grid;
	return &k->def;
}

static bool
grid_differs(const struct cfg_grid *a, const struct cfg_grid *b)
{
	return a->min_households != b->min_households ||
	    a->target_households != b->target_households ||
	    a->max_households != b->max_households ||
	    a->neighbour_m != b->neighbour_m ||
	    a->dedicated_min_buildings != b->dedicated_min_buildings ||
	    a->dedicated_min_area_m2 != b->dedicated_min_area_m2;
}

static bool
keys_differ(const struct grid_keys *a, const struct grid_keys *b)
{
	if (grid_differs(&a->def, &b->def) || a->n != b->n)
		return true;
	for (size_t i = 0; i < a->n; i++)
		if (strcmp(a->comm[i].id, b->comm[i].id) != 0 ||
		    grid_differs(&a->comm[i].grid, &b->comm[i].grid))
			return true;
	return false;
}

static void
reload_list_cb(void *arg, const struct db_res *res)
{
	struct reload_req *rl = arg;
	struct part_req *r = NULL;
	int rows = db_res_rows(res);

	if (db_res_status(res) != DB_OK) {
		log_warn("event=repartition scope=reload outcome=failed "
		    "reason=\"cannot list communities: %s\"",
		    db_res_error(res));
		goto done;
	}
	r = req_new(NULL, 0, "reload");
	r->pending++;
	for (int i = 0; i < rows; i++) {
		const char *id = db_res_get(res, i, 0);

		if (!grid_valid_id(id) || !grid_differs(keys_for(&rl->old, id),
		    keys_for(&rl->next, id)))
			continue;
		log_info("event=repartition community=%s reason=grid_keys_changed",
		    id);
		if (!enqueue(r, id, true))
			log_warn("event=repartition community=%s "
			    "outcome=not_queued", id);
	}
	if (--r->pending == 0) {
		/* Nothing affected: no report to log. */
		req_free(r);
		goto done;
	}
	pump();
done:
	keys_free(&rl->old);
	keys_free(&rl->next);
	free(rl);
}

void
grid_config_changed(const struct cfg *old, const struct cfg *next)
{
	struct reload_req *rl;

	if (pq.stopping || gridd.db == NULL)
		return;
	rl = xcalloc(1, sizeof(*rl));
	keys_copy(&rl->old, old);
	keys_copy(&rl->next, next);
	if (!keys_differ(&rl->old, &rl->next)) {
		keys_free(&rl->old);
		keys_free(&rl->next);
		free(rl);
		return;
	}
	if (!db_query(gridd.db, "SELECT community_id FROM communities"
	    " ORDER BY community_id COLLATE \"C\"", 0, NULL, reload_list_cb,
	    rl)) {
		log_warn("event=repartition scope=reload outcome=failed "
		    "reason=\"database unavailable\"");
		keys_free(&rl->old);
		keys_free(&rl->next);
		free(rl);
	}
}

/* ---- life cycle ------------------------------------------------------------------- */

bool
grid_init(void)
{
	int rc;

	if (pq.running)
		return true;
	pq.done_ev = event_new(gridd.base, -1, 0, part_done_cb, NULL);
	if (pq.done_ev == NULL)
		return false;
	sq.ev = evtimer_new(gridd.base, stale_fire_cb, NULL);
	if (sq.ev == NULL) {
		event_free(pq.done_ev);
		pq.done_ev = NULL;
		return false;
	}
	pq.stop = false;
	pq.stopping = false;
	if ((rc = pthread_create(&pq.thread, NULL, part_thread, NULL)) != 0) {
		log_error("grid: cannot start the partition thread: %s",
		    strerror(rc));
		event_free(pq.done_ev);
		pq.done_ev = NULL;
		event_free(sq.ev);
		sq.ev = NULL;
		return false;
	}
	pq.running = true;
	metrics_register("grid", grid_metrics_cb);
	return true;
}

void
grid_shutdown(void)
{
	struct task *t;
	struct stale *s;

	pq.stopping = true;
	/* Stale communities not yet queued stay stale: the import reply
	 * named them. */
	while ((s = TAILQ_FIRST(&sq.list)) != NULL) {
		TAILQ_REMOVE(&sq.list, s, entry);
		sq.n--;
		log_info("event=repartition community=%s outcome=not_queued "
		    "reason=shutting_down", s->community);
		free(s);
	}
	if (sq.ev != NULL) {
		event_free(sq.ev);
		sq.ev = NULL;
	}
	if (pq.running) {
		pthread_mutex_lock(&pq.mu);
		pq.stop = true;
		pthread_cond_broadcast(&pq.cv);
		pthread_mutex_unlock(&pq.mu);
		pthread_join(pq.thread, NULL);
		pq.running = false;
	}
	/* Work the thread finished or never started, then tasks that never
	 * left the queue: their requests answer UNAVAILABLE. A task still
	 * loading or applying ends when the pool fails its statement. */
	TAILQ_CONCAT(&pq.done, &pq.todo, entry);
	while ((t = TAILQ_FIRST(&pq.done)) != NULL) {
		TAILQ_REMOVE(&pq.done, t, entry);
		task_end(t, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "shutting down");
	}
	while ((t = TAILQ_FIRST(&pq.queue)) != NULL) {
		TAILQ_REMOVE(&pq.queue, t, entry);
		pq.queued--;
		task_end(t, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "shutting down");
	}
	if (pq.done_ev != NULL) {
		event_free(pq.done_ev);
		pq.done_ev = NULL;
	}
}

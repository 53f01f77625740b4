/* bdb.c - gridbench's direct libpq work: sample points, bench workers, the raw PostgreSQL baseline. */
#include "bdb.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "bclient.h"

/* Worker passwords are stored as the daemon stores them. */
#define PBKDF2_SALT_BYTES	16
#define PBKDF2_HASH_BYTES	32
/* Accepted offers stay open; a high cap keeps a long run from filling a
 * worker up and changing what the dispatcher measures. */
#define BENCH_WORKER_MAX_OPEN	1000
/* Incidents per multi-row statement, at most (the parameter arrays). */
#define BASE_MAX_BATCH		10000

static PGconn *
connect_db(const char *conninfo, char *err, size_t errlen)
{
	PGconn *pg = PQconnectdb(conninfo);

	if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
		snprintf(err, errlen, "database: %s",
		    pg ? PQerrorMessage(pg) : "out of memory");
		PQfinish(pg);
		return NULL;
	}
	return pg;
}

static void
copy_id(char *dst, size_t cap, const char *src)
{
	snprintf(dst, cap, "%s", src ? src : "");
}

bool
bdb_load_points(const char *conninfo, size_t max, bool cells_only,
    struct bpoints *out, char *err, size_t errlen)
{
	char lim[32];
	const char *params[2] = { lim, cells_only ? "t" : "f" };
	PGconn *pg;
	PGresult *r;
	int n;

	memset(out, 0, sizeof(*out));
	if ((pg = connect_db(conninfo, err, errlen)) == NULL)
		return false;
	snprintf(lim, sizeof(lim), "%zu", max);
	/* setseed: the same sample of buildings in every run, so that runs
	 * are comparable. */
	PQclear(PQexec(pg, "SELECT setseed(0.42)"));
	r = PQexecParams(pg,
	    "SELECT ST_X(geom), ST_Y(geom), community_id, coalesce(cell_id, '') "
	    "FROM buildings WHERE NOT $2::boolean OR cell_id IS NOT NULL "
	    "ORDER BY random() LIMIT $1::bigint", 2, NULL, params, NULL, NULL,
	    0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(err, errlen, "loading buildings: %s",
		    PQresultErrorMessage(r));
		PQclear(r);
		PQfinish(pg);
		return false;
	}
	n = PQntuples(r);
	if (n == 0) {
		snprintf(err, errlen, "no buildings%s in the database: load "
		    "the sample first", cells_only ? " with a cell" : "");
		PQclear(r);
		PQfinish(pg);
		return false;
	}
	out->v = xcalloc((size_t)n, sizeof(*out->v));
	for (int i = 0; i < n; i++) {
		struct bpoint *p = &out->v[out->n];

		p->lon = strtod(PQgetvalue(r, i, 0), NULL);
		p->lat = strtod(PQgetvalue(r, i, 1), NULL);
		if (!isfinite(p->lon) || !isfinite(p->lat))
			continue;
		copy_id(p->community, sizeof(p->community),
		    PQgetvalue(r, i, 2));
		copy_id(p->cell, sizeof(p->cell), PQgetvalue(r, i, 3));
		out->n++;
	}
	PQclear(r);
	PQfinish(pg);
	return out->n > 0;
}

void
bdb_points_free(struct bpoints *p)
{
	free(p->v);
	memset(p, 0, sizeof(*p));
}

static bool
hash_password(const char *pw, int iter, char *out, size_t cap)
{
	uint8_t salt[PBKDF2_SALT_BYTES], h[PBKDF2_HASH_BYTES];
	char sh[2 * PBKDF2_SALT_BYTES + 1], hh[2 * PBKDF2_HASH_BYTES + 1];

	if (RAND_bytes(salt, sizeof(salt)) != 1 ||
	    PKCS5_PBKDF2_HMAC(pw, (int)strlen(pw), salt, sizeof(salt), iter,
	    EVP_sha256(), sizeof(h), h) != 1)
		return false;
	hex_encode(salt, sizeof(salt), sh);
	hex_encode(h, sizeof(h), hh);
	return snprintf(out, cap, "pbkdf2-sha256$%d$%s$%s", iter, sh, hh) <
	    (int)cap;
}

bool
bdb_setup_workers(const char *conninfo, const char *prefix, size_t n,
    const char *password, int iterations, struct bworker **out,
    char *err, size_t errlen)
{
	char hash[256], count[32], maxopen[16];
	const char *params[4] = { prefix, hash, count, maxopen };
	PGconn *pg;
	PGresult *r;
	size_t got;

	*out = NULL;
	if (!hash_password(password, iterations, hash, sizeof(hash))) {
		snprintf(err, errlen, "cannot hash the workers' password");
		return false;
	}
	if ((pg = connect_db(conninfo, err, errlen)) == NULL)
		return false;
	snprintf(count, sizeof(count), "%zu", n);
	snprintf(maxopen, sizeof(maxopen), "%d", BENCH_WORKER_MAX_OPEN);
	/* Round-robin over the current cells; before partitioning, over the
	 * communities with no cell. */
	r = PQexecParams(pg,
	    "WITH c AS (SELECT cell_id, community_id, "
	    "    row_number() OVER (ORDER BY cell_id) - 1 AS k, "
	    "    count(*) OVER () AS nc FROM ("
	    "  SELECT cell_id, community_id FROM cells WHERE valid_to IS NULL "
	    "  UNION ALL SELECT NULL, community_id FROM communities "
	    "  WHERE NOT EXISTS (SELECT 1 FROM cells WHERE valid_to IS NULL)"
	    ") s) "
	    "INSERT INTO workers AS w (worker_id, community_id, name, "
	    "    password_hash, primary_cell, max_open) "
	    "SELECT $1 || lpad(i::text, 6, '0'), c.community_id, 'bench', $2, "
	    "    c.cell_id, $4::integer "
	    "FROM generate_series(0, $3::bigint - 1) i JOIN c ON c.k = i % c.nc "
	    "ON CONFLICT (worker_id) DO UPDATE SET "
	    "    password_hash = EXCLUDED.password_hash, "
	    "    primary_cell = EXCLUDED.primary_cell, backup_cells = '{}', "
	    "    community_id = EXCLUDED.community_id, "
	    "    max_open = EXCLUDED.max_open, on_duty = false, "
	    "    updated_at = now()",
	    4, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		snprintf(err, errlen, "creating workers: %s",
		    PQresultErrorMessage(r));
		PQclear(r);
		PQfinish(pg);
		return false;
	}
	PQclear(r);
	/* Statistics taken now, with every worker off duty, as autovacuum may
	 * take them in a city at night: the daemon's plans must not depend
	 * on when that was (sql/008_dispatch_ties.sql). */
	r = PQexec(pg, "ANALYZE workers");
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		snprintf(err, errlen, "analyzing workers: %s",
		    PQresultErrorMessage(r));
		PQclear(r);
		PQfinish(pg);
		return false;
	}
	PQclear(r);
	r = PQexecParams(pg,
	    "SELECT w.worker_id, coalesce(ST_X(b.geom), ST_X(ST_PointOnSurface("
	    "    m.geom))), coalesce(ST_Y(b.geom), ST_Y(ST_PointOnSurface("
	    "    m.geom))) "
	    "FROM workers w JOIN communities m USING (community_id) "
	    "LEFT JOIN LATERAL (SELECT geom FROM buildings x "
	    "    WHERE x.cell_id = w.primary_cell "
	    "    ORDER BY random() LIMIT 1) b ON true "
	    "WHERE w.worker_id LIKE $1 || '%' AND length(w.worker_id) = "
	    "    length($1) + 6 "
	    "ORDER BY w.worker_id LIMIT $2::bigint",
	    2, NULL, (const char *[]){ prefix, count }, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(err, errlen, "reading workers: %s",
		    PQresultErrorMessage(r));
		PQclear(r);
		PQfinish(pg);
		return false;
	}
	got = (size_t)PQntuples(r);
	if (got < n) {
		snprintf(err, errlen, "only %zu of %zu workers exist", got, n);
		PQclear(r);
		PQfinish(pg);
		return false;
	}
	*out = xcalloc(n, sizeof(**out));
	for (size_t i = 0; i < n; i++) {
		copy_id((*out)[i].id, sizeof((*out)[i].id),
		    PQgetvalue(r, (int)i, 0));
		(*out)[i].lon = strtod(PQgetvalue(r, (int)i, 1), NULL);
		(*out)[i].lat = strtod(PQgetvalue(r, (int)i, 2), NULL);
	}
	PQclear(r);
	PQfinish(pg);
	return true;
}

/* ---- baseline ------------------------------------------------------------ */

/*
 * The rows gridd writes for an accepted incident, inserted directly: one
 * incidents row and its incident_sources row, in one statement, committed
 * on its own (SINGLE) or B at a time from parameter arrays (MULTI). Same
 * tables, indexes, constraints and durability as the daemon's writes.
 */
static const char SQL_MULTI[] =
    "WITH src AS (SELECT * FROM unnest($1::text[], $2::text[], "
    "    $3::float8[], $4::float8[], $5::text[]) WITH ORDINALITY "
    "    AS u(community_id, cell_id, lon, lat, ext_id, ord)), "
    "ins AS (INSERT INTO incidents (community_id, cell_id, task_type, list, "
    "    matter, route, status, owner_department, departments, severity, "
    "    summary, geom, occurred_at, deadline) "
    "  SELECT s.community_id, nullif(s.cell_id, ''), t.name, t.list, "
    "    t.matter, t.route, 'new', $6, ARRAY[$6], 2, 'baseline', "
    "    ST_SetSRID(ST_MakePoint(s.lon, s.lat), 4326), now(), "
    "    now() + make_interval(mins => t.sla_minutes) "
    "  FROM src s CROSS JOIN task_types t WHERE t.name = $7 "
    "  ORDER BY s.ord "
    "  RETURNING incident_id, community_id), "
    "numbered AS (SELECT incident_id, community_id, "
    "    row_number() OVER (ORDER BY incident_id) AS ord FROM ins) "
    "INSERT INTO incident_sources (source_kind, source_id, ext_id, "
    "    incident_id, community_id, category, outcome) "
    "SELECT 'department', $6, s.ext_id, n.incident_id, n.community_id, "
    "    'baseline', 'accepted' "
    "FROM numbered n JOIN src s ON s.ord = n.ord";

/*
 * The daemon's own per-transaction statement (daemon/feed.c): one call of
 * gridd_feed_push with the parameters the feed builds, the points located
 * as the daemon's in-memory index locates them (gridd_locate gives the
 * same cells) with the grid version they were located in. The daemon
 * groups several requests in one call (group commit); here each batch
 * commits alone, as the simplest client of the same SQL would.
 */
static const char SQL_GRIDD[] =
    "SELECT ord, outcome, incident_id, cell_id, grid_version"
    " FROM gridd_feed_push($1::float8, $2::int, $3::bigint,"
    " $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
    " $9::text[], $10::text[], $11::text[], $12::int[], $13::text[],"
    " $14::int[], $15::bigint[], $16::float8[], $17::float8[],"
    " $18::text[], $19::text[], $20::text[], $21::text[], $22::text[],"
    " $23::text[], $24::text[], $25::text[], $26::text[], $27::text[],"
    " $28::text[], $29::text[], $30::text[], $31::text[],"
    " $32::float8[], $33::float8[])";
#define GRIDD_NPARAMS	33
#define GRIDD_NARRAYS	20	/* $4 .. $23 */

/* Where a baseline point lies, as the daemon would send it. */
struct base_loc {
	char community[BDB_ID_MAX + 1];	/* "" = outside */
	char cell[BDB_CELL_MAX + 1];	/* "" = none */
};

/* The task type's triage as daemon/triage.c derives it. */
struct base_tt {
	char list[32], matter[32], route[32], sla[16];
	char note[512];
};

struct base_thread {
	const struct bdb_base_opts *o;
	const struct base_tt *tt;
	const struct base_loc *loc;	/* per point (GRIDD) */
	const char *gridv;		/* the version it was located in */
	int idx;
	pthread_t th;
	int64_t rows, commits, errors;
	struct lat lat;
	char first_error[256];
	char err[256];
	bool ok;
};

struct arrbuf {
	char *s;
	size_t n, cap;
};

static void
ab_putc(struct arrbuf *b, char c)
{
	if (b->n + 2 > b->cap) {
		b->cap = b->cap ? b->cap * 2 : 4096;
		b->s = xrealloc(b->s, b->cap);
	}
	b->s[b->n++] = c;
	b->s[b->n] = '\0';
}

static void
ab_puts(struct arrbuf *b, const char *s)
{
	while (*s)
		ab_putc(b, *s++);
}

/* One element of a text[] literal, quoted (ids are bounded to safe
 * characters by the schema, but quoting keeps any value intact). */
static void
ab_elem(struct arrbuf *b, const char *v, bool first)
{
	if (!first)
		ab_putc(b, ',');
	ab_putc(b, '"');
	for (; *v; v++) {
		if (*v == '"' || *v == '\\')
			ab_putc(b, '\\');
		ab_putc(b, *v);
	}
	ab_putc(b, '"');
}

static void
ab_num(struct arrbuf *b, double v, bool first)
{
	char tmp[48];

	snprintf(tmp, sizeof(tmp), "%s%.9f", first ? "" : ",", v);
	ab_puts(b, tmp);
}

static int64_t
wall_clock_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads the task type's list, matter, route and SLA from the config
 * snapshot and derives the triage note as daemon/triage.c does. */
static bool
load_task_type(const char *conninfo, const char *name, struct base_tt *tt,
    char *err, size_t errlen)
{
	const char *params[1] = { name };
	PGconn *pg;
	PGresult *r;
	bool ok = false;

	if ((pg = connect_db(conninfo, err, errlen)) == NULL)
		return false;
	r = PQexecParams(pg, "SELECT list, matter, route, sla_minutes, "
	    "guidance FROM task_types WHERE name = $1", 1, NULL, params, NULL,
	    NULL, 0);
	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
		const char *route = PQgetvalue(r, 0, 2);
		const char *guidance = PQgetvalue(r, 0, 4);
		int sla = atoi(PQgetvalue(r, 0, 3));

		snprintf(tt->list, sizeof(tt->list), "%s", PQgetvalue(r, 0, 0));
		snprintf(tt->matter, sizeof(tt->matter), "%s",
		    PQgetvalue(r, 0, 1));
		snprintf(tt->route, sizeof(tt->route), "%s", route);
		if (strcmp(route, "worker") == 0) {
			snprintf(tt->sla, sizeof(tt->sla), "%d", sla);
			tt->note[0] = '\0';
		} else if (strcmp(route, "department") == 0) {
			snprintf(tt->sla, sizeof(tt->sla), "%d", sla);
			snprintf(tt->note, sizeof(tt->note), "big matter "
			    "(大事): referred to the owning department");
		} else {
			snprintf(tt->sla, sizeof(tt->sla), "0");
			snprintf(tt->note, sizeof(tt->note), "%s",
			    guidance[0] != '\0' ? guidance : "private matter "
			    "(私事): referred to the residents");
		}
		ok = true;
	} else {
		snprintf(err, errlen, "task type \"%s\" is not in task_types",
		    name);
	}
	PQclear(r);
	PQfinish(pg);
	return ok;
}

/* Locates every point as the daemon would before sending it: the value
 * sent (%.9f, ab_num) in the current grid, with the version it holds. */
static struct base_loc *
locate_points(const char *conninfo, const struct bpoints *pts, char *gridv,
    size_t gridvlen, char *err, size_t errlen)
{
	struct arrbuf lon = { 0 }, lat = { 0 };
	const char *params[2];
	struct base_loc *loc;
	PGconn *pg;
	PGresult *r;

	if ((pg = connect_db(conninfo, err, errlen)) == NULL)
		return NULL;
	ab_putc(&lon, '{');
	ab_putc(&lat, '{');
	for (size_t i = 0; i < pts->n; i++) {
		ab_num(&lon, pts->v[i].lon, i == 0);
		ab_num(&lat, pts->v[i].lat, i == 0);
	}
	ab_putc(&lon, '}');
	ab_putc(&lat, '}');
	params[0] = lon.s;
	params[1] = lat.s;
	r = PQexecParams(pg, "SELECT (SELECT version FROM feed_grid_version),"
	    " coalesce(l.community_id, ''), coalesce(l.cell_id, '')"
	    " FROM gridd_locate_batch($1::float8[], $2::float8[]) l"
	    " ORDER BY l.ord", 2, NULL, params, NULL, NULL, 0);
	free(lon.s);
	free(lat.s);
	if (PQresultStatus(r) != PGRES_TUPLES_OK ||
	    (size_t)PQntuples(r) != pts->n || pts->n == 0) {
		snprintf(err, errlen, "baseline: locating the points: %s",
		    PQresultErrorMessage(r));
		PQclear(r);
		PQfinish(pg);
		return NULL;
	}
	loc = xcalloc(pts->n, sizeof(*loc));
	snprintf(gridv, gridvlen, "%s", PQgetvalue(r, 0, 0));
	for (size_t i = 0; i < pts->n; i++) {
		copy_id(loc[i].community, sizeof(loc[i].community),
		    PQgetvalue(r, (int)i, 1));
		copy_id(loc[i].cell, sizeof(loc[i].cell),
		    PQgetvalue(r, (int)i, 2));
	}
	PQclear(r);
	PQfinish(pg);
	return loc;
}

static void *
base_thread_main(void *arg)
{
	struct base_thread *t = arg;
	const struct bdb_base_opts *o = t->o;
	int batch = o->mode == BDB_BASE_SINGLE ? 1 : o->batch;
	int64_t start = bc_now_us(), deadline = start +
	    (int64_t)(o->duration_s * 1e6);
	int64_t cap = o->max_rows > 0 ? o->max_rows / o->conns : 0;
	uint64_t seq = 0, rnd = 0x9e3779b97f4a7c15ull * (uint64_t)(t->idx + 1);
	struct arrbuf a[GRIDD_NARRAYS] = { 0 };
	PGconn *pg;

	if ((pg = connect_db(o->conninfo, t->err, sizeof(t->err))) == NULL)
		return NULL;
	/* Prepared once per connection, as the daemon prepares its call
	 * (daemon/feed.c): the baseline pays what gridd pays per batch. */
	{
		bool gridd = o->mode == BDB_BASE_GRIDD;
		PGresult *r = PQprepare(pg, "base",
		    gridd ? SQL_GRIDD : SQL_MULTI,
		    gridd ? GRIDD_NPARAMS : 7, NULL);

		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			snprintf(t->err, sizeof(t->err), "prepare: %s",
			    PQresultErrorMessage(r));
			PQclear(r);
			PQfinish(pg);
			return NULL;
		}
		PQclear(r);
	}
	t->ok = true;
	while (bc_now_us() < deadline && (cap == 0 || t->rows < cap)) {
		const char *params[GRIDD_NPARAMS];
		bool gridd = o->mode == BDB_BASE_GRIDD;
		int na = gridd ? GRIDD_NARRAYS : 5, np;
		char occ[32], radius[32], window[32];
		int64_t t0;
		PGresult *r;
		bool ok;

		for (int k = 0; k < na; k++) {
			a[k].n = 0;
			ab_putc(&a[k], '{');
		}
		snprintf(occ, sizeof(occ), "%lld", (long long)wall_clock_ms());
		for (int i = 0; i < batch; i++) {
			const struct bpoint *p;
			char ext[96];

			size_t pi;

			rnd = rnd * 6364136223846793005ull + 1442695040888963407ull;
			pi = (rnd >> 33) % o->points->n;
			p = &o->points->v[pi];
			snprintf(ext, sizeof(ext), "%s-%d-%llu", o->run_tag,
			    t->idx, (unsigned long long)seq++);
			if (!gridd) {
				ab_elem(&a[0], p->community, i == 0);
				ab_elem(&a[1], p->cell, i == 0);
				ab_num(&a[2], p->lon, i == 0);
				ab_num(&a[3], p->lat, i == 0);
				ab_elem(&a[4], ext, i == 0);
				continue;
			}
			/* FG_KIND .. FG_DESC of daemon/feed.c, in order. */
			ab_elem(&a[0], "department", i == 0);
			ab_elem(&a[1], o->department, i == 0);
			ab_elem(&a[2], ext, i == 0);
			ab_elem(&a[3], o->category, i == 0);
			ab_elem(&a[4], o->task_type, i == 0);
			ab_elem(&a[5], t->tt->list, i == 0);
			ab_elem(&a[6], t->tt->matter, i == 0);
			ab_elem(&a[7], t->tt->route, i == 0);
			ab_elem(&a[8], t->tt->sla, i == 0);
			ab_elem(&a[9], t->tt->note, i == 0);
			ab_elem(&a[10], "2", i == 0);
			ab_elem(&a[11], occ, i == 0);
			ab_num(&a[12], p->lon, i == 0);
			ab_num(&a[13], p->lat, i == 0);
			if (t->loc[pi].community[0] != '\0')
				ab_elem(&a[14], t->loc[pi].community, i == 0);
			else
				ab_puts(&a[14], i == 0 ? "NULL" : ",NULL");
			if (t->loc[pi].cell[0] != '\0')
				ab_elem(&a[15], t->loc[pi].cell, i == 0);
			else
				ab_puts(&a[15], i == 0 ? "NULL" : ",NULL");
			ab_puts(&a[16], i == 0 ? "NULL" : ",NULL");
			ab_puts(&a[17], i == 0 ? "NULL" : ",NULL");
			ab_elem(&a[18], "", i == 0);
			ab_elem(&a[19], "gridbench", i == 0);
		}
		for (int k = 0; k < na; k++)
			ab_putc(&a[k], '}');
		if (gridd) {
			snprintf(radius, sizeof(radius), "%.17g",
			    o->merge_radius_m);
			snprintf(window, sizeof(window), "%d", o->merge_window_s);
			params[0] = radius;
			params[1] = window;
			params[2] = t->gridv;
			for (int k = 0; k < GRIDD_NARRAYS; k++)
				params[3 + k] = a[k].s;
			for (int k = 3 + GRIDD_NARRAYS; k < GRIDD_NPARAMS; k++)
				params[k] = "{}";	/* no refusals or owners */
			np = GRIDD_NPARAMS;
		} else {
			for (int k = 0; k < 5; k++)
				params[k] = a[k].s;
			params[5] = o->department;
			params[6] = o->task_type;
			np = 7;
		}
		t0 = bc_now_us();
		r = PQexecPrepared(pg, "base", np, params, NULL, NULL, 0);
		ok = gridd ? PQresultStatus(r) == PGRES_TUPLES_OK &&
		    PQntuples(r) == batch : PQresultStatus(r) ==
		    PGRES_COMMAND_OK && atoi(PQcmdTuples(r)) == batch;
		if (ok) {
			t->rows += batch;
			t->commits++;
			lat_add(&t->lat, bc_now_us() - t0);
		} else {
			if (t->errors++ == 0)
				snprintf(t->first_error,
				    sizeof(t->first_error), "%s",
				    PQresultStatus(r) == PGRES_COMMAND_OK ||
				    PQresultStatus(r) == PGRES_TUPLES_OK ?
				    "short result (task type not in "
				    "task_types?)" : PQresultErrorMessage(r));
			if (PQstatus(pg) != CONNECTION_OK || t->errors > 100) {
				PQclear(r);
				break;
			}
		}
		PQclear(r);
	}
	for (size_t k = 0; k < ARRAY_LEN(a); k++)
		free(a[k].s);
	PQfinish(pg);
	return NULL;
}

bool
bdb_baseline(const struct bdb_base_opts *o, struct bdb_base_result *r,
    char *err, size_t errlen)
{
	struct base_thread *t;
	struct base_tt tt = { 0 };
	struct base_loc *loc = NULL;
	char gridv[32] = "";
	int64_t t0;
	bool ok = true;

	memset(r, 0, sizeof(*r));
	if (o->conns < 1 || o->points == NULL || o->points->n == 0 ||
	    (o->mode != BDB_BASE_SINGLE && (o->batch < 1 ||
	    o->batch > BASE_MAX_BATCH))) {
		snprintf(err, errlen, "baseline: bad options");
		return false;
	}
	if (o->mode == BDB_BASE_GRIDD && !bdb_gridd_sql_available(
	    o->conninfo)) {
		snprintf(err, errlen, "baseline: the daemon's per-batch SQL "
		    "(gridd_feed_push) is not in this database");
		return false;
	}
	if (o->mode == BDB_BASE_GRIDD && !load_task_type(o->conninfo,
	    o->task_type, &tt, err, errlen))
		return false;
	if (o->mode == BDB_BASE_GRIDD && (loc = locate_points(o->conninfo,
	    o->points, gridv, sizeof(gridv), err, errlen)) == NULL)
		return false;
	t = xcalloc((size_t)o->conns, sizeof(*t));
	t0 = bc_now_us();
	for (int i = 0; i < o->conns; i++) {
		t[i].o = o;
		t[i].tt = &tt;
		t[i].loc = loc;
		t[i].gridv = gridv;
		t[i].idx = i;
		if (pthread_create(&t[i].th, NULL, base_thread_main, &t[i])
		    != 0) {
			snprintf(err, errlen, "baseline: cannot start a thread");
			for (int j = 0; j < i; j++)
				pthread_join(t[j].th, NULL);
			free(t);
			free(loc);
			return false;
		}
	}
	for (int i = 0; i < o->conns; i++)
		pthread_join(t[i].th, NULL);
	r->seconds = (double)(bc_now_us() - t0) / 1e6;
	for (int i = 0; i < o->conns; i++) {
		if (!t[i].ok) {
			snprintf(err, errlen, "%s", t[i].err);
			ok = false;
		}
		r->rows += t[i].rows;
		r->commits += t[i].commits;
		r->errors += t[i].errors;
		lat_merge(&r->commit_lat, &t[i].lat);
		lat_free(&t[i].lat);
		if (r->first_error[0] == '\0' && t[i].first_error[0] != '\0')
			snprintf(r->first_error, sizeof(r->first_error), "%s",
			    t[i].first_error);
	}
	free(t);
	free(loc);
	return ok;
}

bool
bdb_baseline_cleanup(const char *conninfo, const char *department,
    char *err, size_t errlen)
{
	const char *params[1] = { department };
	PGconn *pg;
	PGresult *r;
	bool ok;

	if ((pg = connect_db(conninfo, err, errlen)) == NULL)
		return false;
	r = PQexecParams(pg,
	    "WITH s AS (DELETE FROM incident_sources WHERE source_kind = "
	    "    'department' AND source_id = $1 RETURNING incident_id), "
	    "e AS (DELETE FROM events WHERE incident_id IN (SELECT "
	    "    incident_id FROM s)), "
	    "t AS (DELETE FROM timers WHERE kind = 'sla' AND ref_id IN "
	    "    (SELECT incident_id FROM s)), "
	    "q AS (DELETE FROM department_seq WHERE department_id = $1), "
	    "x AS (DELETE FROM rejections WHERE source_id = $1) "
	    "DELETE FROM incidents WHERE incident_id IN (SELECT incident_id "
	    "    FROM s)", 1, NULL, params, NULL, NULL, 0);
	ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	if (!ok)
		snprintf(err, errlen, "baseline cleanup: %s",
		    PQresultErrorMessage(r));
	PQclear(r);
	PQfinish(pg);
	return ok;
}

bool
bdb_gridd_sql_available(const char *conninfo)
{
	char err[256];
	PGconn *pg = connect_db(conninfo, err, sizeof(err));
	PGresult *r;
	bool ok;

	if (pg == NULL)
		return false;
	r = PQexec(pg, "SELECT 1 FROM pg_proc WHERE proname = "
	    "'gridd_feed_push'");
	ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
	PQclear(r);
	PQfinish(pg);
	return ok;
}

/* partbench.c - times the partitioner on the sample data and on a generated city. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "partition.h"
#include "util.h"

/*
 * partbench sample DIR [--json]
 *	The sample's buildings.csv, adjacency.csv and adjacency_delaunay.csv:
 *	one community per municipality, graph = the 30 m pairs plus Delaunay
 *	edges, shortest first, only where they join two components. Times
 *	the algorithm alone (CPU), then re-runs each community with its own
 *	output as the previous assignment and reports buildings moved.
 * partbench city --buildings N --communities C [--seed S] [--threads T]
 *	[--json] [--verbose]
 *	A generated city held in memory whole, then partitioned on T
 *	threads; --verbose lists the flagged cells on stderr.
 */

#define NEIGHBOUR_M	40.0	/* point distance standing in for 30 m between
				 * footprints */
#define MAX_LINE	4096
#define MAX_FIELDS	16

static const struct part_params defaults = {
	.min_households = 300,
	.target_households = 400,
	.max_households = 500,
	.dedicated_min_buildings = 10,
	.dedicated_min_area_m2 = 20000,
};

static double
cpu_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static long
peak_rss_kb(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return -1;
	return ru.ru_maxrss;
}

/* ---- growable arrays of buildings and edges: one community ---- */

struct comm {
	char name[64];
	struct part_building *b;
	size_t n, capb;
	struct part_edge *e;
	size_t ne, cape;
	struct part_result res;
	double cpu_ms;
	int32_t moved_rerun;
};

static void
add_b(struct comm *c, struct part_building b)
{
	if (c->n == c->capb) {
		c->capb = c->capb ? c->capb * 2 : 256;
		c->b = xreallocarray(c->b, c->capb, sizeof(*c->b));
	}
	c->b[c->n++] = b;
}

static void
add_e(struct comm *c, uint32_t a, uint32_t b)
{
	if (c->ne == c->cape) {
		c->cape = c->cape ? c->cape * 2 : 256;
		c->e = xreallocarray(c->e, c->cape, sizeof(*c->e));
	}
	c->e[c->ne++] = (struct part_edge){ a, b };
}

static int32_t
uf_find(int32_t *uf, int32_t a)
{
	while (uf[a] != a) {
		uf[a] = uf[uf[a]];
		a = uf[a];
	}
	return a;
}

static bool
run_comm(struct comm *c, bool rerun)
{
	struct part_input in;
	char err[256];
	double t0;

	memset(&in, 0, sizeof(in));
	in.buildings = c->b;
	in.n_buildings = c->n;
	in.edges = c->e;
	in.n_edges = c->ne;
	in.params = defaults;
	t0 = cpu_ms();
	if (!part_run(&in, &c->res, err, sizeof(err))) {
		fprintf(stderr, "partbench: %s: %s\n", c->name, err);
		return false;
	}
	c->cpu_ms = cpu_ms() - t0;
	c->moved_rerun = -1;
	if (rerun) {
		struct part_result again;

		in.prev = c->res.labels;
		if (!part_run(&in, &again, err, sizeof(err))) {
			fprintf(stderr, "partbench: %s: %s\n", c->name, err);
			return false;
		}
		c->moved_rerun = again.report.moved;
		part_result_free(&again);
	}
	return true;
}

/* ---- the sample ---- */

struct sedge {
	int32_t a, b;
	double len;
};

/* Fields after the last one found are set to "" (gcc -O3 cannot tell
 * that a caller reads only the first n). */
static int
split_csv(char *line, char **fld, int max)
{
	int n = 0;
	char *p = line;

	line[strcspn(line, "\r\n")] = '\0';
	while (n < max) {
		fld[n++] = p;
		p = strchr(p, ',');
		if (p == NULL)
			break;
		*p++ = '\0';
	}
	for (int i = n; i < max; i++)
		fld[i] = line + strlen(line);
	return n;
}

static bool
parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;

	errno = 0;
	*out = strtol(s, &end, 10);
	return *s != '\0' && *end == '\0' && errno == 0 && *out >= lo &&
	    *out <= hi;
}

static bool
parse_double(const char *s, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	return *s != '\0' && *end == '\0' && errno == 0 && isfinite(*out);
}

static FILE *
open_in(const char *dir, const char *name)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((f = fopen(path, "r")) == NULL)
		fprintf(stderr, "partbench: %s: %s\n", path, strerror(errno));
	return f;
}

struct sbld {
	char muni[64];
	struct part_building b;
	double lon, lat;
};

static bool
bad_row(const char *file, size_t line)
{
	fprintf(stderr, "partbench: %s:%zu: malformed row\n", file, line);
	return false;
}

static bool
load_edges(const char *dir, const char *file, int nf, size_t nb,
    struct sedge **out, size_t *nout)
{
	char line[MAX_LINE], *f[MAX_FIELDS];
	size_t cap = 0, ln = 1;
	FILE *fp = open_in(dir, file);

	if (fp == NULL)
		return false;
	if (fgets(line, sizeof(line), fp) == NULL) {
		fclose(fp);
		return bad_row(file, 1);
	}
	while (fgets(line, sizeof(line), fp) != NULL) {
		long a, b;
		double len = 0;

		ln++;
		if (split_csv(line, f, MAX_FIELDS) != nf ||
		    !parse_long(f[0], 1, (long)nb, &a) ||
		    !parse_long(f[1], 1, (long)nb, &b) ||
		    (nf == 3 && !parse_double(f[2], &len))) {
			fclose(fp);
			return bad_row(file, ln);
		}
		if (*nout == cap) {
			cap = cap ? cap * 2 : 4096;
			*out = xreallocarray(*out, cap, sizeof(**out));
		}
		(*out)[(*nout)++] = (struct sedge){ (int32_t)a - 1,
		    (int32_t)b - 1, len };
	}
	fclose(fp);
	return true;
}

static int
sedge_cmp(const void *pa, const void *pb)
{
	const struct sedge *a = pa, *b = pb;

	if (a->len != b->len)
		return a->len < b->len ? -1 : 1;
	if (a->a != b->a)
		return a->a < b->a ? -1 : 1;
	return (a->b > b->b) - (a->b < b->b);
}

static int
i64_cmp(const void *pa, const void *pb)
{
	int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;

	return (a > b) - (a < b);
}

static void
print_reasons(FILE *o, const struct part_result *r, bool json)
{
	bool first = true;

	for (int bit = 2; bit < 16; bit++) {
		const char *nm = part_flag_name(1u << bit);

		if (nm == NULL || r->report.flag_counts[bit] == 0)
			continue;
		if (json)
			fprintf(o, "%s\"%s\":%d", first ? "" : ",", nm,
			    r->report.flag_counts[bit]);
		else
			fprintf(o, "%s%s=%d", first ? "" : ",", nm,
			    r->report.flag_counts[bit]);
		first = false;
	}
	if (first && !json)
		fprintf(o, "-");
}

static int
cmd_sample(const char *dir, bool json)
{
	char line[MAX_LINE], *f[MAX_FIELDS];
	struct sbld *bl = NULL;
	struct sedge *adj = NULL, *del = NULL;
	size_t nb = 0, capb = 0, na = 0, nd = 0, ln = 1, ncomm = 0;
	struct comm *cm = NULL;
	int64_t tot_hh = 0, *allhh;
	int tot_cells = 0, tot_comp = 0, tot_ded = 0, tot_oob = 0, tot_moved = 0;
	double tot_cpu = 0;
	size_t nall = 0;
	FILE *fp = open_in(dir, "buildings.csv");

	if (fp == NULL)
		return 1;
	if (fgets(line, sizeof(line), fp) == NULL)
		return bad_row("buildings.csv", 1) ? 0 : 1;
	while (fgets(line, sizeof(line), fp) != NULL) {
		struct sbld s;
		enum part_kind k;
		long id, hh;
		double levels = 1, area;

		ln++;
		memset(&s, 0, sizeof(s));
		if (split_csv(line, f, MAX_FIELDS) != 8 ||
		    !parse_long(f[0], 1, PART_MAX_BUILDINGS, &id) ||
		    (size_t)id != nb + 1 || strlen(f[1]) >= sizeof(s.muni) ||
		    !part_kind_parse(f[2], &k) ||
		    !parse_long(f[3], 0, PART_MAX_HOUSEHOLDS, &hh) ||
		    (*f[4] && !parse_double(f[4], &levels)) ||
		    !parse_double(f[5], &s.lon) || !parse_double(f[6], &s.lat) ||
		    !parse_double(f[7], &area) || area < 0) {
			fclose(fp);
			return bad_row("buildings.csv", ln) ? 0 : 1;
		}
		snprintf(s.muni, sizeof(s.muni), "%s", f[1]);
		s.b.kind = (uint8_t)k;
		s.b.households = (int32_t)hh;
		/* Floor area = footprint x levels (1 when untagged). */
		s.b.area_m2 = area * (levels >= 1 ? levels : 1);
		if (nb == capb) {
			capb = capb ? capb * 2 : 4096;
			bl = xreallocarray(bl, capb, sizeof(*bl));
		}
		bl[nb++] = s;
	}
	fclose(fp);
	if (!load_edges(dir, "adjacency.csv", 2, nb, &adj, &na) ||
	    !load_edges(dir, "adjacency_delaunay.csv", 3, nb, &del, &nd))
		return 1;
	qsort(del, nd, sizeof(*del), sedge_cmp);

	/* One community per run of equal municipality (the file is sorted
	 * by it). */
	for (size_t s0 = 0; s0 < nb;) {
		size_t s1 = s0;
		struct comm *c;
		double lat0 = 0, lon0 = 0, kx, ky;
		int32_t *uf;

		while (s1 < nb && strcmp(bl[s1].muni, bl[s0].muni) == 0)
			s1++;
		cm = xreallocarray(cm, ncomm + 1, sizeof(*cm));
		c = &cm[ncomm++];
		memset(c, 0, sizeof(*c));
		snprintf(c->name, sizeof(c->name), "%s", bl[s0].muni);
		for (size_t i = s0; i < s1; i++) {
			lat0 += bl[i].lat;
			lon0 += bl[i].lon;
		}
		lat0 /= (double)(s1 - s0);
		lon0 /= (double)(s1 - s0);
		/* Local equirectangular projection: metres within a few
		 * parts per thousand over a municipality. */
		ky = 6371008.8 * M_PI / 180.0;
		kx = ky * cos(lat0 * M_PI / 180.0);
		for (size_t i = s0; i < s1; i++) {
			struct part_building b = bl[i].b;

			b.x = (bl[i].lon - lon0) * kx;
			b.y = (bl[i].lat - lat0) * ky;
			add_b(c, b);
		}
		uf = xreallocarray(NULL, s1 - s0, sizeof(*uf));
		for (size_t i = 0; i < s1 - s0; i++)
			uf[i] = (int32_t)i;
		for (size_t i = 0; i < na; i++) {
			int32_t a = adj[i].a - (int32_t)s0, b = adj[i].b - (int32_t)s0;

			if (a < 0 || b < 0 || (size_t)a >= s1 - s0 ||
			    (size_t)b >= s1 - s0)
				continue;
			add_e(c, (uint32_t)a, (uint32_t)b);
			uf[uf_find(uf, a)] = uf_find(uf, b);
		}
		for (size_t i = 0; i < nd; i++) {
			int32_t a = del[i].a - (int32_t)s0, b = del[i].b - (int32_t)s0;

			if (a < 0 || b < 0 || (size_t)a >= s1 - s0 ||
			    (size_t)b >= s1 - s0 || uf_find(uf, a) == uf_find(uf, b))
				continue;
			uf[uf_find(uf, a)] = uf_find(uf, b);
			add_e(c, (uint32_t)a, (uint32_t)b);
		}
		free(uf);
		s0 = s1;
	}

	allhh = xcalloc(nb + 1, sizeof(*allhh));
	for (size_t i = 0; i < ncomm; i++) {
		if (!run_comm(&cm[i], true))
			return 1;
		tot_cpu += cm[i].cpu_ms;
	}
	if (json)
		printf("{\"mode\":\"sample\",\"communities\":[");
	else
		printf("%-14s %9s %10s %5s %8s %16s %9s %-30s %7s %7s\n",
		    "community", "buildings", "households", "cells", "compreh",
		    "hh min/med/max", "dedicated", "out of bounds (reasons)",
		    "cpu_ms", "rerun");
	for (size_t i = 0; i < ncomm; i++) {
		const struct part_report *r = &cm[i].res.report;
		int64_t hh = 0;

		for (size_t u = 0; u < cm[i].n; u++)
			hh += cm[i].b[u].households;
		for (size_t c = 0; c < cm[i].res.n_cells; c++)
			if (cm[i].res.cells[c].kind == PART_CELL_COMPREHENSIVE)
				allhh[nall++] = cm[i].res.cells[c].households;
		tot_hh += hh;
		tot_cells += r->cells;
		tot_comp += r->comprehensive;
		tot_ded += r->dedicated;
		tot_oob += r->out_of_bounds;
		tot_moved += cm[i].moved_rerun;
		if (json) {
			printf("%s{\"name\":\"%s\",\"buildings\":%zu,"
			    "\"households\":%lld,\"cells\":%d,"
			    "\"comprehensive\":%d,\"dedicated\":%d,"
			    "\"hh_min\":%lld,\"hh_median\":%lld,\"hh_max\":%lld,"
			    "\"out_of_bounds\":%d,\"reasons\":{", i ? "," : "",
			    cm[i].name, cm[i].n, (long long)hh, r->cells,
			    r->comprehensive, r->dedicated, (long long)r->hh_min,
			    (long long)r->hh_median, (long long)r->hh_max,
			    r->out_of_bounds);
			print_reasons(stdout, &cm[i].res, true);
			printf("},\"msd_mean_m2\":%.0f,\"cpu_ms\":%.2f,"
			    "\"rerun_moved\":%d}", r->msd_mean_m2, cm[i].cpu_ms,
			    cm[i].moved_rerun);
		} else {
			char mm[48], oob[160];
			FILE *mo = fmemopen(oob, sizeof(oob), "w");

			snprintf(mm, sizeof(mm), "%lld/%lld/%lld",
			    (long long)r->hh_min, (long long)r->hh_median,
			    (long long)r->hh_max);
			fprintf(mo, "%d (", r->out_of_bounds);
			print_reasons(mo, &cm[i].res, false);
			fprintf(mo, ")");
			fclose(mo);
			printf("%-14s %9zu %10lld %5d %8d %16s %9d %-30s %7.2f "
			    "%7d\n", cm[i].name, cm[i].n, (long long)hh, r->cells,
			    r->comprehensive, mm, r->dedicated, oob, cm[i].cpu_ms,
			    cm[i].moved_rerun);
		}
	}
	qsort(allhh, nall, sizeof(*allhh), i64_cmp);
	if (json)
		printf("],\"total\":{\"buildings\":%zu,\"households\":%lld,"
		    "\"cells\":%d,\"comprehensive\":%d,\"households_per_400\":%.1f,"
		    "\"dedicated\":%d,\"hh_min\":%lld,\"hh_median\":%lld,"
		    "\"hh_max\":%lld,\"out_of_bounds\":%d,\"cpu_ms\":%.2f,"
		    "\"rerun_moved\":%d,\"peak_rss_kb\":%ld}}\n", nb,
		    (long long)tot_hh, tot_cells, tot_comp, tot_hh / 400.0,
		    tot_ded, nall ? (long long)allhh[0] : 0,
		    nall ? (long long)allhh[(nall - 1) / 2] : 0,
		    nall ? (long long)allhh[nall - 1] : 0, tot_oob, tot_cpu,
		    tot_moved, peak_rss_kb());
	else {
		char mm[48];

		snprintf(mm, sizeof(mm), "%lld/%lld/%lld",
		    nall ? (long long)allhh[0] : 0,
		    nall ? (long long)allhh[(nall - 1) / 2] : 0,
		    nall ? (long long)allhh[nall - 1] : 0);
		printf("%-14s %9zu %10lld %5d %8d %16s %9d %-30d %7.2f %7d\n",
		    "total", nb, (long long)tot_hh, tot_cells, tot_comp, mm,
		    tot_ded, tot_oob, tot_cpu, tot_moved);
		printf("comprehensive cells %d vs households/400 = %.1f; "
		    "algorithm cpu %.1f ms; peak RSS %ld KiB\n", tot_comp,
		    tot_hh / 400.0, tot_cpu, peak_rss_kb());
	}
	for (size_t i = 0; i < ncomm; i++) {
		free(cm[i].b);
		free(cm[i].e);
		part_result_free(&cm[i].res);
	}
	free(cm);
	free(allhh);
	free(bl);
	free(adj);
	free(del);
	return 0;
}

/* ---- the generated city ---- */

static uint64_t
rng_next(uint64_t *s)
{
	/* splitmix64: small, seedable, good enough for synthetic data. */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double
rng_unit(uint64_t *s)
{
	return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

static double
rng_gauss(uint64_t *s)
{
	double u = rng_unit(s), v = rng_unit(s);

	return sqrt(-2.0 * log(u > 1e-300 ? u : 1e-300)) * cos(2 * M_PI * v);
}

/* Buckets of NEIGHBOUR_M: pairs closer than that are found in O(n). */
struct grid {
	double x0, y0;
	int32_t nx, ny;
	int32_t *start, *items;
};

static void
grid_build(struct grid *g, const struct part_building *b, size_t n)
{
	double x1, y1;
	int32_t *fill;

	g->x0 = g->y0 = INFINITY;
	x1 = y1 = -INFINITY;
	for (size_t i = 0; i < n; i++) {
		g->x0 = fmin(g->x0, b[i].x);
		g->y0 = fmin(g->y0, b[i].y);
		x1 = fmax(x1, b[i].x);
		y1 = fmax(y1, b[i].y);
	}
	g->nx = (int32_t)((x1 - g->x0) / NEIGHBOUR_M) + 1;
	g->ny = (int32_t)((y1 - g->y0) / NEIGHBOUR_M) + 1;
	g->start = xcalloc((size_t)g->nx * g->ny + 1, sizeof(*g->start));
	g->items = xreallocarray(NULL, n + 1, sizeof(*g->items));
	fill = xcalloc((size_t)g->nx * g->ny + 1, sizeof(*fill));
	for (size_t i = 0; i < n; i++) {
		int32_t cx = (int32_t)((b[i].x - g->x0) / NEIGHBOUR_M);
		int32_t cy = (int32_t)((b[i].y - g->y0) / NEIGHBOUR_M);

		g->start[(size_t)cy * g->nx + cx + 1]++;
	}
	for (size_t i = 0; i < (size_t)g->nx * g->ny; i++)
		g->start[i + 1] += g->start[i];
	memcpy(fill, g->start, (size_t)g->nx * g->ny * sizeof(*fill));
	for (size_t i = 0; i < n; i++) {
		int32_t cx = (int32_t)((b[i].x - g->x0) / NEIGHBOUR_M);
		int32_t cy = (int32_t)((b[i].y - g->y0) / NEIGHBOUR_M);

		g->items[fill[(size_t)cy * g->nx + cx]++] = (int32_t)i;
	}
	free(fill);
}

/* Nearest building to u outside u's component, by rings of buckets. */
static int32_t
grid_nearest_other(const struct grid *g, const struct part_building *b,
    int32_t u, int32_t *uf)
{
	int32_t cx = (int32_t)((b[u].x - g->x0) / NEIGHBOUR_M);
	int32_t cy = (int32_t)((b[u].y - g->y0) / NEIGHBOUR_M);
	int32_t best = -1, ru = uf_find(uf, u);
	double bestd = INFINITY;
	int32_t rmax = g->nx > g->ny ? g->nx : g->ny;

	for (int32_t r = 0; r <= rmax; r++) {
		/* Anything in ring r is at least (r - 1) buckets away. */
		if (best >= 0 && (r - 1) * NEIGHBOUR_M > sqrt(bestd))
			break;
		for (int32_t y = cy - r; y <= cy + r; y++) {
			if (y < 0 || y >= g->ny)
				continue;
			for (int32_t x = cx - r; x <= cx + r; x++) {
				if (x < 0 || x >= g->nx ||
				    (abs(x - cx) != r && abs(y - cy) != r))
					continue;
				for (int32_t i = g->start[(size_t)y * g->nx + x];
				    i < g->start[(size_t)y * g->nx + x + 1]; i++) {
					int32_t v = g->items[i];
					double dx = b[v].x - b[u].x, dy = b[v].y - b[u].y;
					double d = dx * dx + dy * dy;

					if (d < bestd && uf_find(uf, v) != ru) {
						bestd = d;
						best = v;
					}
				}
			}
		}
	}
	return best;
}

/*
 * One community: neighbourhood clusters of houses and apartment blocks,
 * an industrial estate or two, shops and public buildings in the
 * clusters. About 1,000 m2 of land per building.
 */
static void
gen_comm(struct comm *c, size_t n, uint64_t seed, int idx)
{
	uint64_t s = seed;
	double side = sqrt((double)n * 1000.0);
	int ncl = (int)(n / 300) + 1, nind = 1 + (int)(rng_next(&s) % 2);
	double *clx = xreallocarray(NULL, (size_t)ncl + 2, sizeof(double));
	double *cly = xreallocarray(NULL, (size_t)ncl + 2, sizeof(double));
	struct grid g;
	int32_t *uf;

	snprintf(c->name, sizeof(c->name), "C%03d", idx);
	for (int i = 0; i < ncl + nind; i++) {
		clx[i] = side * rng_unit(&s);
		cly[i] = side * rng_unit(&s);
	}
	for (size_t i = 0; i < n; i++) {
		struct part_building b;
		uint64_t r = rng_next(&s) % 100;
		int cl;
		double sigma;

		memset(&b, 0, sizeof(b));
		if (r < 6) {
			/* Industrial estates. */
			cl = ncl + (int)(rng_next(&s) % (uint64_t)nind);
			sigma = 60;
			b.kind = PART_KIND_INDUSTRIAL;
			b.area_m2 = 800 + 3000 * rng_unit(&s);
		} else {
			cl = (int)(rng_next(&s) % (uint64_t)ncl);
			sigma = side / sqrt((double)ncl) / 3.0;
			if (r < 80) {
				uint64_t t = rng_next(&s) % 100;

				b.kind = PART_KIND_RESIDENTIAL;
				b.households = t < 70 ? 1 + (int32_t)(t % 3) :
				    t < 95 ? 4 + (int32_t)(rng_next(&s) % 17) :
				    20 + (int32_t)(rng_next(&s) % 100);
				b.area_m2 = 90.0 * b.households;
			} else {
				b.kind = (uint8_t)(r < 88 ? PART_KIND_COMMERCIAL :
				    r < 91 ? PART_KIND_PUBLIC : r < 95 ?
				    PART_KIND_OTHER : PART_KIND_AGRICULTURAL);
				b.area_m2 = 100 + 900 * rng_unit(&s);
			}
		}
		if (rng_next(&s) % 10 == 0) {
			/* Scattered farms and sheds. */
			b.x = side * rng_unit(&s);
			b.y = side * rng_unit(&s);
		} else {
			b.x = clx[cl] + sigma * rng_gauss(&s);
			b.y = cly[cl] + sigma * rng_gauss(&s);
		}
		add_b(c, b);
	}
	free(clx);
	free(cly);

	/* Adjacency: pairs within NEIGHBOUR_M from the buckets, then, as
	 * the daemon does with Delaunay edges, the nearest link from each
	 * component to another until one component is left (each round
	 * at least halves the components). */
	grid_build(&g, c->b, c->n);
	uf = xreallocarray(NULL, c->n + 1, sizeof(*uf));
	for (size_t i = 0; i < c->n; i++)
		uf[i] = (int32_t)i;
	for (size_t i = 0; i < c->n; i++) {
		int32_t cx = (int32_t)((c->b[i].x - g.x0) / NEIGHBOUR_M);
		int32_t cy = (int32_t)((c->b[i].y - g.y0) / NEIGHBOUR_M);

		for (int32_t y = cy - 1; y <= cy + 1; y++)
			for (int32_t x = cx - 1; x <= cx + 1; x++) {
				if (x < 0 || y < 0 || x >= g.nx || y >= g.ny)
					continue;
				for (int32_t k = g.start[(size_t)y * g.nx + x];
				    k < g.start[(size_t)y * g.nx + x + 1]; k++) {
					int32_t j = g.items[k];
					double dx = c->b[j].x - c->b[i].x;
					double dy = c->b[j].y - c->b[i].y;

					if ((size_t)j <= i || dx * dx + dy * dy >
					    NEIGHBOUR_M * NEIGHBOUR_M)
						continue;
					add_e(c, (uint32_t)i, (uint32_t)j);
					uf[uf_find(uf, (int32_t)i)] = uf_find(uf, j);
				}
			}
	}
	for (;;) {
		int32_t *rep = xreallocarray(NULL, c->n + 1, sizeof(*rep));
		size_t nrep = 0;

		for (size_t i = 0; i < c->n; i++)
			if (uf_find(uf, (int32_t)i) == (int32_t)i)
				rep[nrep++] = (int32_t)i;
		if (nrep <= 1) {
			free(rep);
			break;
		}
		for (size_t i = 0; i < nrep; i++) {
			int32_t v = grid_nearest_other(&g, c->b, rep[i], uf);

			if (v < 0)
				continue;
			add_e(c, (uint32_t)rep[i], (uint32_t)v);
			uf[uf_find(uf, rep[i])] = uf_find(uf, v);
		}
		free(rep);
	}
	free(uf);
	free(g.start);
	free(g.items);
}

struct city {
	struct comm *cm;
	size_t ncomm, nbuild;
	uint64_t seed;
	int phase;		/* 0 generate, 1 partition */
	size_t nextc;
	pthread_mutex_t mu;
	bool failed;
};

static void *
worker_cb(void *arg)
{
	struct city *ct = arg;

	for (;;) {
		size_t i, n;

		pthread_mutex_lock(&ct->mu);
		i = ct->nextc++;
		pthread_mutex_unlock(&ct->mu);
		if (i >= ct->ncomm)
			return NULL;
		if (ct->phase == 0) {
			n = ct->nbuild / ct->ncomm +
			    (i < ct->nbuild % ct->ncomm ? 1 : 0);
			gen_comm(&ct->cm[i], n, ct->seed * 1000003ULL + i, (int)i);
		} else if (!run_comm(&ct->cm[i], false)) {
			pthread_mutex_lock(&ct->mu);
			ct->failed = true;
			pthread_mutex_unlock(&ct->mu);
		}
	}
}

static bool
run_phase(struct city *ct, int phase, int threads)
{
	pthread_t th[64];

	ct->phase = phase;
	ct->nextc = 0;
	for (int i = 0; i < threads; i++)
		if (pthread_create(&th[i], NULL, worker_cb, ct) != 0) {
			fprintf(stderr, "partbench: pthread_create failed\n");
			return false;
		}
	for (int i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	return !ct->failed;
}

static int
cmd_city(size_t nbuild, size_t ncomm, uint64_t seed, int threads, bool json,
    bool verbose)
{
	struct city ct;
	double t0, gen_ms, part_wall, part_cpu = 0, slow = 0;
	long rss_gen;
	size_t edges = 0, input_bytes;
	int64_t hh = 0;
	int cells = 0, comp = 0, ded = 0, oob = 0, flags[16] = { 0 };

	memset(&ct, 0, sizeof(ct));
	ct.ncomm = ncomm;
	ct.nbuild = nbuild;
	ct.seed = seed;
	ct.cm = xcalloc(ncomm, sizeof(*ct.cm));
	pthread_mutex_init(&ct.mu, NULL);
	t0 = wall_ms();
	if (!run_phase(&ct, 0, threads))
		return 1;
	gen_ms = wall_ms() - t0;
	rss_gen = peak_rss_kb();
	for (size_t i = 0; i < ncomm; i++)
		edges += ct.cm[i].ne;
	input_bytes = nbuild * sizeof(struct part_building) +
	    edges * sizeof(struct part_edge);
	t0 = wall_ms();
	if (!run_phase(&ct, 1, threads))
		return 1;
	part_wall = wall_ms() - t0;
	for (size_t i = 0; i < ncomm; i++) {
		const struct part_report *r = &ct.cm[i].res.report;

		for (size_t c = 0; verbose && c < ct.cm[i].res.n_cells; c++) {
			const struct part_cell *pc = &ct.cm[i].res.cells[c];
			char fl[256];

			if (pc->flags != 0)
				fprintf(stderr, "%s cell %zu households=%lld "
				    "buildings=%d %s\n", ct.cm[i].name, c,
				    (long long)pc->households, pc->buildings,
				    part_flags_format(pc->flags, fl, sizeof(fl)));
		}
		part_cpu += ct.cm[i].cpu_ms;
		if (ct.cm[i].cpu_ms > slow)
			slow = ct.cm[i].cpu_ms;
		cells += r->cells;
		comp += r->comprehensive;
		ded += r->dedicated;
		oob += r->out_of_bounds;
		hh += r->households_total;
		for (int b = 0; b < 16; b++)
			flags[b] += r->flag_counts[b];
	}
	if (json) {
		printf("{\"mode\":\"city\",\"buildings\":%zu,\"communities\":%zu,"
		    "\"seed\":%llu,\"threads\":%d,\"edges\":%zu,"
		    "\"households\":%lld,\"cells\":%d,\"comprehensive\":%d,"
		    "\"dedicated\":%d,\"out_of_bounds\":%d,\"reasons\":{",
		    nbuild, ncomm, (unsigned long long)seed, threads, edges,
		    (long long)hh, cells, comp, ded, oob);
		for (int b = 2, first = 1; b < 16; b++)
			if (part_flag_name(1u << b) && flags[b]) {
				printf("%s\"%s\":%d", first ? "" : ",",
				    part_flag_name(1u << b), flags[b]);
				first = 0;
			}
		printf("},\"generate_ms\":%.0f,\"partition_wall_ms\":%.0f,"
		    "\"partition_cpu_ms\":%.0f,\"slowest_community_ms\":%.1f,"
		    "\"input_bytes\":%zu,\"rss_after_generate_kb\":%ld,"
		    "\"peak_rss_kb\":%ld}\n", gen_ms, part_wall, part_cpu, slow,
		    input_bytes, rss_gen, peak_rss_kb());
	} else {
		printf("city: %zu buildings, %zu communities, seed %llu, "
		    "%d threads, %zu edges, %lld households\n", nbuild, ncomm,
		    (unsigned long long)seed, threads, edges, (long long)hh);
		printf("cells %d (comprehensive %d, dedicated %d), out of "
		    "bounds %d (households/400 = %.1f)\n", cells, comp, ded, oob,
		    hh / 400.0);
		for (int b = 2; b < 16; b++)
			if (part_flag_name(1u << b) && flags[b])
				printf("  %s: %d\n", part_flag_name(1u << b),
				    flags[b]);
		printf("generate %.0f ms; partition wall %.0f ms, cpu %.0f ms "
		    "(slowest community %.1f ms)\n", gen_ms, part_wall, part_cpu,
		    slow);
		printf("input %.1f MiB; peak RSS after generating %.1f MiB, "
		    "after partitioning %.1f MiB\n", input_bytes / 1048576.0,
		    rss_gen / 1024.0, peak_rss_kb() / 1024.0);
	}
	for (size_t i = 0; i < ncomm; i++) {
		free(ct.cm[i].b);
		free(ct.cm[i].e);
		part_result_free(&ct.cm[i].res);
	}
	free(ct.cm);
	pthread_mutex_destroy(&ct.mu);
	return 0;
}

static void
usage(void)
{
	fprintf(stderr, "usage: partbench sample DIR [--json]\n"
	    "       partbench city --buildings N --communities C [--seed S] "
	    "[--threads T] [--json] [--verbose]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	bool json = false, verbose = false;
	long nb = 1000000, nc = 200, seed = 1, threads = 2;

	if (argc < 2)
		usage();
	if (strcmp(argv[1], "sample") == 0) {
		if (argc < 3)
			usage();
		for (int i = 3; i < argc; i++) {
			if (strcmp(argv[i], "--json") == 0)
				json = true;
			else
				usage();
		}
		return cmd_sample(argv[2], json);
	}
	if (strcmp(argv[1], "city") != 0)
		usage();
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = true;
		else if (strcmp(argv[i], "--verbose") == 0)
			verbose = true;
		else if (i + 1 < argc && strcmp(argv[i], "--buildings") == 0) {
			if (!parse_long(argv[++i], 1, 100000000, &nb))
				usage();
		} else if (i + 1 < argc && strcmp(argv[i], "--communities") == 0) {
			if (!parse_long(argv[++i], 1, 1000000, &nc))
				usage();
		} else if (i + 1 < argc && strcmp(argv[i], "--seed") == 0) {
			if (!parse_long(argv[++i], 0, INT32_MAX, &seed))
				usage();
		} else if (i + 1 < argc && strcmp(argv[i], "--threads") == 0) {
			if (!parse_long(argv[++i], 1, 64, &threads))
				usage();
		} else
			usage();
	}
	if (nb / nc > PART_MAX_BUILDINGS) {
		fprintf(stderr, "partbench: communities over %d buildings\n",
		    PART_MAX_BUILDINGS);
		return 2;
	}
	return cmd_city((size_t)nb, (size_t)nc, (uint64_t)seed, (int)threads,
	    json, verbose);
}

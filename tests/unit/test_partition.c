/* test_partition.c - the grid-cell partitioner against its hard rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "partition.h"

/* ---- a community under construction ---- */

struct comm {
	struct part_building *b;
	size_t n, capb;
	struct part_edge *e;
	size_t ne, cape;
	struct part_params p;
};

static void
comm_init(struct comm *c)
{
	memset(c, 0, sizeof(*c));
	c->p.min_households = 300;
	c->p.target_households = 400;
	c->p.max_households = 500;
	c->p.dedicated_min_buildings = 10;
	c->p.dedicated_min_area_m2 = 20000;
}

static void
comm_free(struct comm *c)
{
	free(c->b);
	free(c->e);
}

static uint32_t
add_b(struct comm *c, double x, double y, int32_t hh, enum part_kind kind,
    double area)
{
	if (c->n == c->capb) {
		c->capb = c->capb ? c->capb * 2 : 64;
		c->b = realloc(c->b, c->capb * sizeof(*c->b));
		assert_non_null(c->b);
	}
	c->b[c->n] = (struct part_building){ x, y, area, hh, (uint8_t)kind };
	return (uint32_t)c->n++;
}

static void
add_e(struct comm *c, uint32_t a, uint32_t b)
{
	if (c->ne == c->cape) {
		c->cape = c->cape ? c->cape * 2 : 64;
		c->e = realloc(c->e, c->cape * sizeof(*c->e));
		assert_non_null(c->e);
	}
	c->e[c->ne++] = (struct part_edge){ a, b };
}

/* w x h lattice at 20 m spacing from (x0, y0), 4-neighbour edges;
 * returns the index of its first building. */
static uint32_t
add_lattice(struct comm *c, int w, int h, double x0, double y0, int32_t hh)
{
	uint32_t first = (uint32_t)c->n;

	for (int j = 0; j < h; j++)
		for (int i = 0; i < w; i++) {
			uint32_t id = add_b(c, x0 + 20.0 * i, y0 + 20.0 * j, hh,
			    hh > 0 ? PART_KIND_RESIDENTIAL : PART_KIND_OTHER,
			    150);

			if (i > 0)
				add_e(c, id - 1, id);
			if (j > 0)
				add_e(c, id - (uint32_t)w, id);
		}
	return first;
}

static struct part_input
comm_input(const struct comm *c, const int32_t *prev)
{
	struct part_input in;

	memset(&in, 0, sizeof(in));
	in.buildings = c->b;
	in.n_buildings = c->n;
	in.edges = c->e;
	in.n_edges = c->ne;
	in.prev = prev;
	in.params = c->p;
	return in;
}

/* ---- the shared checker ---- */

struct graph {
	size_t *off;
	uint32_t *adj;
};

static void
graph_build(const struct part_input *in, struct graph *g)
{
	size_t n = in->n_buildings, *fill;

	g->off = calloc(n + 1, sizeof(*g->off));
	g->adj = calloc(2 * in->n_edges + 1, sizeof(*g->adj));
	fill = calloc(n + 1, sizeof(*fill));
	for (size_t i = 0; i < in->n_edges; i++) {
		g->off[in->edges[i].a + 1]++;
		g->off[in->edges[i].b + 1]++;
	}
	for (size_t i = 0; i < n; i++)
		g->off[i + 1] += g->off[i];
	memcpy(fill, g->off, n * sizeof(*fill));
	for (size_t i = 0; i < in->n_edges; i++) {
		g->adj[fill[in->edges[i].a]++] = in->edges[i].b;
		g->adj[fill[in->edges[i].b]++] = in->edges[i].a;
	}
	free(fill);
}

static void
graph_free(struct graph *g)
{
	free(g->off);
	free(g->adj);
}

/* Flags a check may see without failing; everything else must be
 * explained by the data in a way the checker verifies. */
#define OK_GRAPH_LIMITED	1u
#define OK_INDIVISIBLE		2u

static void
check_result(const struct part_input *in, const struct part_result *r,
    unsigned allow)
{
	size_t n = in->n_buildings, k = r->n_cells;
	const struct part_params *p = &in->params;
	int64_t *hh, total = 0;
	int32_t *cnt, *seen, *queue, comp = 0, ncomp = 0, ded = 0;
	struct graph g;

	assert_int_equal(r->n_labels, n);
	assert_int_equal((int)r->report.cells, (int)k);
	graph_build(in, &g);
	hh = calloc(k + 1, sizeof(*hh));
	cnt = calloc(k + 1, sizeof(*cnt));
	seen = calloc(n + 1, sizeof(*seen));
	queue = calloc(n + 1, sizeof(*queue));
	for (size_t u = 0; u < n; u++) {
		assert_true(r->labels[u] >= 0 && (size_t)r->labels[u] < k);
		hh[r->labels[u]] += in->buildings[u].households;
		cnt[r->labels[u]]++;
		total += in->buildings[u].households;
	}
	/* Dense labels, reported totals right. */
	for (size_t c = 0; c < k; c++) {
		assert_true(cnt[c] > 0);
		assert_int_equal(cnt[c], r->cells[c].buildings);
		assert_int_equal(hh[c], r->cells[c].households);
	}
	/* Contiguity: one search per cell reaches all its buildings. */
	for (size_t u = 0; u < n; u++)
		seen[u] = -1;
	for (size_t s = 0; s < n; s++) {
		int32_t c = r->labels[s], qh = 0, qt = 0, got = 0;

		if (seen[s] != -1)
			continue;
		/* The first unseen building of a cell starts its search; a
		 * second start for the same cell means it is split. */
		for (size_t i = 0; i < s; i++)
			if (r->labels[i] == c)
				fail_msg("cell %d is not connected (building "
				    "%zu unreached from %zu)", c, s, i);
		seen[s] = comp;
		queue[qt++] = (int32_t)s;
		while (qh < qt) {
			int32_t v = queue[qh++];

			got++;
			for (size_t e = g.off[v]; e < g.off[v + 1]; e++) {
				uint32_t w = g.adj[e];

				if (seen[w] != -1 || r->labels[w] != c)
					continue;
				seen[w] = comp;
				queue[qt++] = (int32_t)w;
			}
		}
		assert_int_equal(got, cnt[c]);
		comp++;
	}
	/* Graph components, to verify component_below_min claims. */
	{
		int32_t *gc = calloc(n + 1, sizeof(*gc));

		for (size_t u = 0; u < n; u++)
			gc[u] = -1;
		for (size_t s = 0; s < n; s++) {
			int32_t qh = 0, qt = 0;

			if (gc[s] != -1)
				continue;
			gc[s] = ncomp;
			queue[qt++] = (int32_t)s;
			while (qh < qt) {
				int32_t v = queue[qh++];

				for (size_t e = g.off[v]; e < g.off[v + 1]; e++)
					if (gc[g.adj[e]] == -1) {
						gc[g.adj[e]] = ncomp;
						queue[qt++] = (int32_t)g.adj[e];
					}
			}
			ncomp++;
		}
		assert_int_equal(ncomp, r->report.components);
		/* A cell flagged as a whole component: no building of its
		 * component lies elsewhere. */
		for (size_t u = 0; u < n; u++) {
			const struct part_cell *pc = &r->cells[r->labels[u]];

			if (!(pc->flags & PART_F_COMPONENT_BELOW_MIN))
				continue;
			for (size_t v = 0; v < n; v++)
				if (gc[v] == gc[u] && r->labels[v] != r->labels[u])
					fail_msg("component_below_min cell %d does "
					    "not hold its whole component",
					    r->labels[u]);
			break;
		}
		free(gc);
	}
	/* Bounds and reasons. */
	for (size_t c = 0; c < k; c++) {
		const struct part_cell *pc = &r->cells[c];
		bool below = pc->households < p->min_households;
		bool above = pc->households > p->max_households;
		uint32_t reasons = pc->flags & PART_F_REASONS;

		if (pc->kind == PART_CELL_DEDICATED) {
			ded++;
			assert_int_equal(pc->households, 0);
			assert_int_equal(pc->flags, 0);
			continue;
		}
		assert_int_equal(!!(pc->flags & PART_F_BELOW_MIN), below);
		assert_int_equal(!!(pc->flags & PART_F_ABOVE_MAX), above);
		if (!below && !above) {
			assert_int_equal(reasons, 0);
			continue;
		}
		assert_true(reasons != 0);
		if (reasons & PART_F_COMMUNITY_BELOW_MIN)
			assert_true(total < p->min_households);
		if (reasons & PART_F_NO_HOUSEHOLDS)
			assert_int_equal(pc->households, 0);
		if (reasons & (PART_F_COMPONENT_BELOW_MIN |
		    PART_F_ENCLOSED_BELOW_MIN | PART_F_COMMUNITY_BELOW_MIN))
			assert_true(below);
		if (reasons & PART_F_BUILDING_ABOVE_MAX) {
			int big = 0;

			for (size_t u = 0; u < n; u++)
				if ((size_t)r->labels[u] == c &&
				    in->buildings[u].households > p->max_households)
					big++;
			assert_int_equal(big, 1);
			assert_int_equal(pc->households, hh[c]);
		}
		if (reasons & PART_F_GRAPH_LIMITED)
			assert_true(allow & OK_GRAPH_LIMITED);
		if (reasons & PART_F_INDIVISIBLE)
			assert_true(allow & OK_INDIVISIBLE);
	}
	assert_int_equal(ded, r->report.dedicated);
	assert_int_equal(r->report.comprehensive + r->report.dedicated,
	    (int)k);
	free(hh);
	free(cnt);
	free(seen);
	free(queue);
	graph_free(&g);
}

static void
assert_same(const struct part_result *a, const struct part_result *b)
{
	assert_int_equal(a->n_cells, b->n_cells);
	assert_int_equal(a->n_labels, b->n_labels);
	assert_memory_equal(a->labels, b->labels,
	    a->n_labels * sizeof(*a->labels));
	for (size_t c = 0; c < a->n_cells; c++) {
		assert_int_equal(a->cells[c].households, b->cells[c].households);
		assert_int_equal(a->cells[c].flags, b->cells[c].flags);
	}
}

/*
 * Runs, checks the hard rules, runs again (same output), then feeds the
 * output back as the previous assignment (nothing may move).
 */
static void
run_checked(const struct comm *cm, const int32_t *prev, unsigned allow,
    struct part_result *out)
{
	struct part_input in = comm_input(cm, prev);
	struct part_result again, fed;
	char err[256];

	assert_true(part_run(&in, out, err, sizeof(err)));
	check_result(&in, out, allow);
	assert_true(part_run(&in, &again, err, sizeof(err)));
	assert_same(out, &again);
	part_result_free(&again);

	in.prev = out->labels;
	assert_true(part_run(&in, &fed, err, sizeof(err)));
	check_result(&in, &fed, allow);
	assert_same(out, &fed);
	assert_int_equal(fed.report.moved, 0);
	assert_int_equal(fed.report.added, 0);
	assert_int_equal(fed.report.kept, (int)fed.n_cells);
	assert_int_equal(fed.report.created, 0);
	assert_int_equal(fed.report.retired, 0);
	for (size_t c = 0; c < fed.n_cells; c++)
		assert_int_equal(fed.cells[c].prev, (int)c);
	part_result_free(&fed);
}

static int
count_flag(const struct part_result *r, uint32_t f)
{
	int m = 0;

	for (size_t c = 0; c < r->n_cells; c++)
		if (r->cells[c].flags & f)
			m++;
	return m;
}

/* ---- synthetic graphs ---- */

static void
test_lattice(void **state)
{
	struct comm cm;
	struct part_result r;
	double disc;

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 50, 50, 0, 0, 2);
	run_checked(&cm, NULL, 0, &r);
	/* 5,000 households: round(5000 / 400) = 13 cells, all in bounds. */
	assert_int_equal(r.n_cells, 13);
	assert_int_equal(r.report.out_of_bounds, 0);
	assert_true(r.report.hh_min >= 300 && r.report.hh_max <= 500);
	/* Compact: mean squared distance within twice that of a disc of the
	 * same area (a 192-building cell covers about 192 * 400 m2). */
	disc = (2500.0 / 13 * 400.0) / (2.0 * M_PI);
	assert_true(r.report.msd_mean_m2 < 2.0 * disc);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_chain(void **state)
{
	struct comm cm;
	struct part_result r;

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 100, 1, 0, 0, 10);
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(r.n_cells, 3);	/* 1,000 / 400 rounded */
	assert_int_equal(r.report.out_of_bounds, 0);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_star(void **state)
{
	struct comm cm;
	struct part_result r;
	uint32_t hub;

	(void)state;
	comm_init(&cm);
	/* Ten 100-household leaves around a 1-household hub: any cell
	 * without the hub is one leaf, so bounds cannot all hold. */
	hub = add_b(&cm, 0, 0, 1, PART_KIND_RESIDENTIAL, 100);
	for (int i = 0; i < 10; i++)
		add_e(&cm, hub, add_b(&cm, 50 * cos(i * 0.628),
		    50 * sin(i * 0.628), 100, PART_KIND_RESIDENTIAL, 100));
	run_checked(&cm, NULL, OK_GRAPH_LIMITED, &r);
	assert_true(count_flag(&r, PART_F_GRAPH_LIMITED) > 0);
	part_result_free(&r);

	/* A star with small leaves balances fine. */
	comm_free(&cm);
	comm_init(&cm);
	hub = add_b(&cm, 0, 0, 2, PART_KIND_RESIDENTIAL, 100);
	for (int i = 0; i < 200; i++)
		add_e(&cm, hub, add_b(&cm, 80 * cos(i * 0.0314),
		    80 * sin(i * 0.0314), 2, PART_KIND_RESIDENTIAL, 100));
	run_checked(&cm, NULL, OK_GRAPH_LIMITED, &r);
	assert_int_equal(r.n_cells, 1);
	assert_int_equal(r.report.out_of_bounds, 0);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_disconnected(void **state)
{
	struct comm cm;
	struct part_result r;

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 10, 10, 0, 0, 2);	/* 200 households */
	(void)add_lattice(&cm, 20, 20, 1000, 0, 2);	/* 800 */
	(void)add_lattice(&cm, 10, 10, 0, 1000, 1);	/* 100 */
	(void)add_lattice(&cm, 25, 20, 1000, 1000, 1);	/* 500 */
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(r.report.components, 4);
	assert_int_equal(count_flag(&r, PART_F_COMPONENT_BELOW_MIN), 2);
	/* 200 + 100 flagged, 800 in two cells, 500 in one. */
	assert_int_equal(r.n_cells, 5);
	assert_int_equal(r.report.out_of_bounds, 2);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_huge_building(void **state)
{
	struct comm cm;
	struct part_result r;

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 20, 20, 0, 0, 2);
	cm.b[210].households = 900;	/* one tower in the middle */
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(count_flag(&r, PART_F_BUILDING_ABOVE_MAX), 1);
	for (size_t c = 0; c < r.n_cells; c++)
		if (r.cells[c].flags & PART_F_BUILDING_ABOVE_MAX) {
			assert_int_equal(r.cells[c].buildings, 1);
			assert_int_equal(r.labels[210], (int)c);
		}
	/* The other 798 households: two cells around the tower. */
	assert_int_equal(r.n_cells, 3);
	assert_int_equal(r.report.out_of_bounds, 1);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_zero_households(void **state)
{
	struct comm cm;
	struct part_result r;

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 10, 10, 0, 0, 0);
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(r.n_cells, 1);
	assert_true(r.cells[0].flags & PART_F_NO_HOUSEHOLDS);
	assert_true(r.cells[0].flags & PART_F_COMMUNITY_BELOW_MIN);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_community_below_min(void **state)
{
	struct comm cm;
	struct part_result r;

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 5, 5, 0, 0, 2);
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(r.n_cells, 1);
	assert_int_equal(r.cells[0].flags,
	    PART_F_BELOW_MIN | PART_F_COMMUNITY_BELOW_MIN);
	part_result_free(&r);

	/* Empty community: no cells, no failure. */
	comm_free(&cm);
	comm_init(&cm);
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(r.n_cells, 0);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_indivisible(void **state)
{
	struct comm cm;
	struct part_result r;

	(void)state;
	comm_init(&cm);
	/* 540 households: one cell is 8% over max, two would be 10% under
	 * min, so one flagged cell. */
	(void)add_lattice(&cm, 27, 10, 0, 0, 2);
	run_checked(&cm, NULL, OK_INDIVISIBLE, &r);
	assert_int_equal(r.n_cells, 1);
	assert_true(r.cells[0].flags & PART_F_INDIVISIBLE);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_dedicated(void **state)
{
	struct comm cm;
	struct part_result r;
	int ded = -1;

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 30, 30, 0, 0, 2);
	/* A 6 x 6 industrial estate in a corner, and two shops (below the
	 * thresholds) in the middle. */
	for (int j = 0; j < 6; j++)
		for (int i = 0; i < 6; i++) {
			struct part_building *b = &cm.b[j * 30 + i];

			b->households = 0;
			b->kind = PART_KIND_INDUSTRIAL;
		}
	cm.b[15 * 30 + 15].households = 0;
	cm.b[15 * 30 + 15].kind = PART_KIND_COMMERCIAL;
	cm.b[15 * 30 + 16].households = 0;
	cm.b[15 * 30 + 16].kind = PART_KIND_COMMERCIAL;
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(r.report.dedicated, 1);
	for (size_t c = 0; c < r.n_cells; c++)
		if (r.cells[c].kind == PART_CELL_DEDICATED)
			ded = (int)c;
	assert_true(ded >= 0);
	assert_int_equal(r.cells[ded].buildings, 36);
	for (int j = 0; j < 6; j++)
		for (int i = 0; i < 6; i++)
			assert_int_equal(r.labels[j * 30 + i], ded);
	assert_true(r.labels[15 * 30 + 15] != ded);
	/* 1,728 households left: four comprehensive cells, in bounds. */
	assert_int_equal(r.report.comprehensive, 4);
	assert_int_equal(r.report.out_of_bounds, 0);
	part_result_free(&r);

	/* Same estate by floor area alone. */
	cm.p.dedicated_min_buildings = 0;
	cm.p.dedicated_min_area_m2 = 36 * 150;
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(r.report.dedicated, 1);
	part_result_free(&r);
	cm.p.dedicated_min_area_m2 = 36 * 150 + 1;
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(r.report.dedicated, 0);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_perturbation(void **state)
{
	struct comm cm;
	struct part_result r, r2;
	struct part_input in;
	int32_t *prev;
	size_t n0;
	char err[256];

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 40, 40, 0, 0, 2);	/* 3,200 households */
	run_checked(&cm, NULL, 0, &r);
	assert_int_equal(r.n_cells, 8);
	n0 = cm.n;

	/* A few more households and five new buildings on one edge. */
	cm.b[0].households += 3;
	cm.b[777].households += 2;
	for (int i = 0; i < 5; i++) {
		uint32_t id = add_b(&cm, 20.0 * i, -20.0, 2,
		    PART_KIND_RESIDENTIAL, 150);

		add_e(&cm, id, (uint32_t)i);
		if (i > 0)
			add_e(&cm, id - 1, id);
	}
	prev = malloc(cm.n * sizeof(*prev));
	for (size_t i = 0; i < cm.n; i++)
		prev[i] = i < n0 ? r.labels[i] : -1;
	in = comm_input(&cm, prev);
	assert_true(part_run(&in, &r2, err, sizeof(err)));
	check_result(&in, &r2, 0);
	assert_int_equal(r2.report.added, 5);
	assert_int_equal(r2.report.moved, 0);
	assert_int_equal(r2.n_cells, 8);
	part_result_free(&r2);

	/* Now push one cell over max: 200 more households inside it. */
	{
		int32_t c0 = r.labels[0];
		int added = 0;

		for (size_t i = 0; i < n0 && added < 100; i++)
			if (r.labels[i] == c0) {
				cm.b[i].households += 2;
				added++;
			}
	}
	assert_true(part_run(&in, &r2, err, sizeof(err)));
	check_result(&in, &r2, 0);
	assert_int_equal(r2.report.out_of_bounds, 0);
	/* Repair moves a boundary strip, not the whole community. */
	assert_true(r2.report.moved > 0);
	assert_true(r2.report.moved < (int)n0 / 4);
	assert_true(r2.report.kept >= 7);
	part_result_free(&r2);
	free(prev);
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_sparse_prev_labels(void **state)
{
	struct comm cm;
	struct part_result r, r2;
	struct part_input in;
	int32_t *prev;
	char err[256];

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 30, 30, 0, 0, 2);
	run_checked(&cm, NULL, 0, &r);
	/* Previous ids as the caller stores them: not dense. */
	prev = malloc(cm.n * sizeof(*prev));
	for (size_t i = 0; i < cm.n; i++)
		prev[i] = 1000 + 7 * (int32_t)(r.n_cells - 1 - (size_t)r.labels[i]);
	in = comm_input(&cm, prev);
	assert_true(part_run(&in, &r2, err, sizeof(err)));
	check_result(&in, &r2, 0);
	assert_int_equal(r2.report.moved, 0);
	assert_int_equal(r2.report.kept, (int)r2.n_cells);
	for (size_t i = 0; i < cm.n; i++)
		assert_int_equal(r2.cells[r2.labels[i]].prev, prev[i]);
	part_result_free(&r2);
	free(prev);
	part_result_free(&r);
	comm_free(&cm);
}

/* Deterministic pseudo-random numbers for the random communities. */
static uint64_t
rng_next(uint64_t *s)
{
	*s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
	return *s >> 33;
}

static double
rng_unit(uint64_t *s)
{
	return (double)rng_next(s) / (double)(1ULL << 31);
}

static void
test_random_communities(void **state)
{
	(void)state;
	for (uint64_t seed = 1; seed <= 12; seed++) {
		struct comm cm;
		struct part_result r;
		uint64_t s = seed;
		int nb = 300 + (int)(rng_next(&s) % 1500);

		comm_init(&cm);
		/* Clusters of buildings; neighbours within 45 m, plus a
		 * chain between cluster centres so the graph is connected
		 * like the Delaunay-completed graphs the daemon builds. */
		for (int i = 0; i < nb; i++) {
			int cl = (int)(rng_next(&s) % 6);
			double cx = (cl % 3) * 600.0, cy = (cl / 3) * 600.0;
			double r0 = 250 * sqrt(rng_unit(&s));
			double th = 6.2831853 * rng_unit(&s);
			uint32_t kind = rng_next(&s) % 10;
			int32_t hh = kind < 7 ? 1 + (int32_t)(rng_next(&s) % 4) : 0;

			if (rng_next(&s) % 50 == 0)
				hh = 20 + (int32_t)(rng_next(&s) % 60);
			(void)add_b(&cm, cx + r0 * cos(th), cy + r0 * sin(th), hh,
			    hh > 0 ? PART_KIND_RESIDENTIAL :
			    (enum part_kind)(1 + kind % 6), 100 + rng_next(&s) % 900);
		}
		for (size_t i = 0; i < cm.n; i++)
			for (size_t j = i + 1; j < cm.n; j++) {
				double dx = cm.b[i].x - cm.b[j].x;
				double dy = cm.b[i].y - cm.b[j].y;

				if (dx * dx + dy * dy < 45.0 * 45.0)
					add_e(&cm, (uint32_t)i, (uint32_t)j);
			}
		for (size_t i = 1; i < cm.n; i++)
			add_e(&cm, (uint32_t)(i - 1), (uint32_t)i);
		run_checked(&cm, NULL, OK_GRAPH_LIMITED | OK_INDIVISIBLE, &r);
		part_result_free(&r);
		comm_free(&cm);
	}
}

static void
test_invalid_input(void **state)
{
	struct comm cm;
	struct part_result r;
	struct part_input in;
	char err[256];

	(void)state;
	comm_init(&cm);
	(void)add_lattice(&cm, 3, 3, 0, 0, 2);
	in = comm_input(&cm, NULL);

	add_e(&cm, 0, 99);
	in = comm_input(&cm, NULL);
	assert_false(part_run(&in, &r, err, sizeof(err)));
	assert_non_null(strstr(err, "out of range"));
	cm.ne--;

	cm.b[4].households = -1;
	in = comm_input(&cm, NULL);
	assert_false(part_run(&in, &r, err, sizeof(err)));
	cm.b[4].households = 2;

	cm.b[4].x = NAN;
	in = comm_input(&cm, NULL);
	assert_false(part_run(&in, &r, err, sizeof(err)));
	cm.b[4].x = 0;

	cm.b[4].kind = PART_KIND_COUNT;
	in = comm_input(&cm, NULL);
	assert_false(part_run(&in, &r, err, sizeof(err)));
	cm.b[4].kind = PART_KIND_RESIDENTIAL;

	cm.p.target_households = 600;
	in = comm_input(&cm, NULL);
	assert_false(part_run(&in, &r, err, sizeof(err)));
	cm.p.target_households = 400;
	cm.p.min_households = 0;
	in = comm_input(&cm, NULL);
	assert_false(part_run(&in, &r, err, sizeof(err)));
	cm.p.min_households = 300;

	in = comm_input(&cm, NULL);
	assert_true(part_run(&in, &r, err, sizeof(err)));
	part_result_free(&r);
	comm_free(&cm);
}

static void
test_names(void **state)
{
	enum part_kind k;
	char buf[128];

	(void)state;
	assert_true(part_kind_parse("industrial", &k));
	assert_int_equal(k, PART_KIND_INDUSTRIAL);
	assert_false(part_kind_parse("castle", &k));
	assert_string_equal(part_kind_name(PART_KIND_UNKNOWN), "unknown");
	assert_string_equal(part_flags_format(PART_F_BELOW_MIN |
	    PART_F_COMPONENT_BELOW_MIN, buf, sizeof(buf)),
	    "below_min,component_below_min");
}

/* ---- the Liechtenstein sample, when GRIDD_SAMPLE_DIR names it ---- */

struct sbld {
	int32_t id;
	char muni[64];
	struct part_building b;
	double lon, lat;
};

struct sedge {
	int32_t a, b;
	double len;
};

static FILE *
open_in(const char *dir, const char *name)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "r");
	if (f == NULL)
		fail_msg("cannot open %s", path);
	return f;
}

/* Splits a CSV line (no quoted fields in these files) in place. */
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
	return n;
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

static int32_t
uf_find(int32_t *uf, int32_t a)
{
	while (uf[a] != a) {
		uf[a] = uf[uf[a]];
		a = uf[a];
	}
	return a;
}

static void
test_sample(void **state)
{
	const char *dir = getenv("GRIDD_SAMPLE_DIR");
	char line[1024], *f[10];
	struct sbld *bl = NULL;
	struct sedge *adj = NULL, *del = NULL;
	size_t nb = 0, capb = 0, na = 0, capa = 0, nd = 0, capd = 0;
	int64_t total_hh = 0;
	int comprehensive = 0, munis = 0;
	FILE *fp;

	(void)state;
	if (dir == NULL || *dir == '\0') {
		printf("sample test skipped: GRIDD_SAMPLE_DIR is not set\n");
		skip();
	}
	fp = open_in(dir, "buildings.csv");
	assert_non_null(fgets(line, sizeof(line), fp));
	while (fgets(line, sizeof(line), fp) != NULL) {
		struct sbld s;
		enum part_kind k;
		double levels;

		assert_int_equal(split_csv(line, f, 10), 8);
		memset(&s, 0, sizeof(s));
		s.id = atoi(f[0]);
		snprintf(s.muni, sizeof(s.muni), "%s", f[1]);
		assert_true(part_kind_parse(f[2], &k));
		s.b.kind = (uint8_t)k;
		s.b.households = atoi(f[3]);
		levels = *f[4] ? atof(f[4]) : 1;
		s.lon = atof(f[5]);
		s.lat = atof(f[6]);
		/* Floor area: footprint times levels. */
		s.b.area_m2 = atof(f[7]) * (levels >= 1 ? levels : 1);
		assert_int_equal(s.id, (int)nb + 1);	/* ids are dense 1..N */
		if (nb == capb) {
			capb = capb ? capb * 2 : 1024;
			bl = realloc(bl, capb * sizeof(*bl));
		}
		bl[nb++] = s;
	}
	fclose(fp);
	fp = open_in(dir, "adjacency.csv");
	assert_non_null(fgets(line, sizeof(line), fp));
	while (fgets(line, sizeof(line), fp) != NULL) {
		assert_int_equal(split_csv(line, f, 10), 2);
		if (na == capa) {
			capa = capa ? capa * 2 : 1024;
			adj = realloc(adj, capa * sizeof(*adj));
		}
		adj[na++] = (struct sedge){ atoi(f[0]) - 1, atoi(f[1]) - 1, 0 };
		assert_true(adj[na - 1].a >= 0 && (size_t)adj[na - 1].a < nb);
		assert_true(adj[na - 1].b >= 0 && (size_t)adj[na - 1].b < nb);
	}
	fclose(fp);
	fp = open_in(dir, "adjacency_delaunay.csv");
	assert_non_null(fgets(line, sizeof(line), fp));
	while (fgets(line, sizeof(line), fp) != NULL) {
		assert_int_equal(split_csv(line, f, 10), 3);
		if (nd == capd) {
			capd = capd ? capd * 2 : 1024;
			del = realloc(del, capd * sizeof(*del));
		}
		del[nd++] = (struct sedge){ atoi(f[0]) - 1, atoi(f[1]) - 1,
		    atof(f[2]) };
		assert_true(del[nd - 1].a >= 0 && (size_t)del[nd - 1].a < nb);
		assert_true(del[nd - 1].b >= 0 && (size_t)del[nd - 1].b < nb);
	}
	fclose(fp);
	qsort(del, nd, sizeof(*del), sedge_cmp);

	/* Buildings are ordered by municipality: one run per community. */
	for (size_t s0 = 0; s0 < nb;) {
		size_t s1 = s0;
		struct comm cm;
		struct part_result r;
		double lat0 = 0, lon0 = 0, kx, ky;
		int32_t *uf;
		int64_t hh = 0;

		while (s1 < nb && strcmp(bl[s1].muni, bl[s0].muni) == 0)
			s1++;
		comm_init(&cm);
		for (size_t i = s0; i < s1; i++) {
			lat0 += bl[i].lat;
			lon0 += bl[i].lon;
		}
		lat0 /= (double)(s1 - s0);
		lon0 /= (double)(s1 - s0);
		/* Local equirectangular projection, metres. */
		ky = 6371008.8 * M_PI / 180.0;
		kx = ky * cos(lat0 * M_PI / 180.0);
		for (size_t i = s0; i < s1; i++) {
			struct part_building b = bl[i].b;

			b.x = (bl[i].lon - lon0) * kx;
			b.y = (bl[i].lat - lat0) * ky;
			(void)add_b(&cm, b.x, b.y, b.households,
			    (enum part_kind)b.kind, b.area_m2);
			hh += b.households;
		}
		/* Graph: the 30 m pairs inside the community, then Delaunay
		 * edges shortest first only where they join two components
		 * (a minimum spanning forest over the components). */
		uf = malloc((s1 - s0) * sizeof(*uf));
		for (size_t i = 0; i < s1 - s0; i++)
			uf[i] = (int32_t)i;
		for (size_t i = 0; i < na; i++) {
			if ((size_t)adj[i].a < s0 || (size_t)adj[i].a >= s1 ||
			    (size_t)adj[i].b < s0 || (size_t)adj[i].b >= s1)
				continue;
			add_e(&cm, (uint32_t)(adj[i].a - (int32_t)s0),
			    (uint32_t)(adj[i].b - (int32_t)s0));
			uf[uf_find(uf, adj[i].a - (int32_t)s0)] =
			    uf_find(uf, adj[i].b - (int32_t)s0);
		}
		for (size_t i = 0; i < nd; i++) {
			int32_t a = del[i].a - (int32_t)s0, b = del[i].b - (int32_t)s0;

			if ((size_t)del[i].a < s0 || (size_t)del[i].a >= s1 ||
			    (size_t)del[i].b < s0 || (size_t)del[i].b >= s1)
				continue;
			if (uf_find(uf, a) == uf_find(uf, b))
				continue;
			uf[uf_find(uf, a)] = uf_find(uf, b);
			add_e(&cm, (uint32_t)a, (uint32_t)b);
		}
		free(uf);
		run_checked(&cm, NULL, OK_INDIVISIBLE | OK_GRAPH_LIMITED, &r);
		assert_int_equal(r.report.components, 1);
		printf("%-14s buildings=%5zu households=%5lld cells=%3zu "
		    "dedicated=%d out_of_bounds=%d hh=%lld/%lld/%lld\n",
		    bl[s0].muni, s1 - s0, (long long)hh, r.n_cells,
		    r.report.dedicated, r.report.out_of_bounds,
		    (long long)r.report.hh_min, (long long)r.report.hh_median,
		    (long long)r.report.hh_max);
		for (size_t c = 0; c < r.n_cells; c++) {
			char fl[256];

			if (r.cells[c].flags == 0)
				continue;
			printf("    cell %zu households=%lld buildings=%d %s\n", c,
			    (long long)r.cells[c].households,
			    r.cells[c].buildings,
			    part_flags_format(r.cells[c].flags, fl, sizeof(fl)));
			/* A connected community of this size always has a
			 * contiguous repair. */
			assert_false(r.cells[c].flags & PART_F_GRAPH_LIMITED);
		}
		comprehensive += r.report.comprehensive;
		total_hh += hh;
		munis++;
		part_result_free(&r);
		comm_free(&cm);
		s0 = s1;
	}
	printf("total: communities=%d households=%lld comprehensive=%d "
	    "(households/400 = %.1f)\n", munis, (long long)total_hh,
	    comprehensive, total_hh / 400.0);
	assert_int_equal(munis, 11);
	assert_true(fabs(comprehensive - total_hh / 400.0) <=
	    0.1 * (total_hh / 400.0));
	free(bl);
	free(adj);
	free(del);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lattice),
		cmocka_unit_test(test_chain),
		cmocka_unit_test(test_star),
		cmocka_unit_test(test_disconnected),
		cmocka_unit_test(test_huge_building),
		cmocka_unit_test(test_zero_households),
		cmocka_unit_test(test_community_below_min),
		cmocka_unit_test(test_indivisible),
		cmocka_unit_test(test_dedicated),
		cmocka_unit_test(test_perturbation),
		cmocka_unit_test(test_sparse_prev_labels),
		cmocka_unit_test(test_random_communities),
		cmocka_unit_test(test_invalid_input),
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_sample),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* partition.c - grid cells from buildings: contiguous, bounded, compact, stable. */
#include "partition.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Outline. Buildings that cannot take part in household balancing are
 * set aside first as fixed ("exempt") cells: dedicated clusters and
 * buildings over max. What remains splits into zones, the connected
 * components of the graph without those buildings. A zone under min is
 * one flagged cell. Any other zone is cut into k cells, k chosen from its
 * household total, by recursive bisection: a piece is swept along its
 * principal axis by a priority-ordered graph search, so each half is
 * connected by construction, and fragments the sweep cuts off are given
 * to the swept half. A repair phase then moves boundary buildings, splits
 * and merges cells, accepting only steps that strictly reduce the total
 * household violation, so it always ends; a compaction phase moves
 * boundary buildings to the cell whose centre is nearer when no bound
 * gets worse. With a previous assignment the previous cells are the
 * start, new and orphaned buildings join the nearest cell by graph hops,
 * and only the repair runs: a valid previous partition is a fixed point
 * of every step, so unchanged input moves nothing.
 */

/* Safety net for pathological graphs: each repair pass that changes
 * anything lowers the integer violation, so this is never reached in
 * practice; if it is, the result is still valid, only less balanced. */
#define REPAIR_MAX_PASSES	1000
/* Compaction converges within a few passes; later passes gain little. */
#define COMPACT_PASSES		6
/* Each bridging round joins at least two zones; pockets chained through
 * more dedicated clusters than this stay flagged enclosed_below_min. */
#define BRIDGE_MAX_ROUNDS	64

struct wcell {
	int64_t hh;
	int32_t nb;
	int32_t head;		/* first member, -1 when empty */
	double sx, sy;
	uint32_t flags;		/* reasons fixed at creation (exempt cells) */
	int32_t zone;		/* -1 for dedicated and oversized cells */
	bool exempt;		/* not subject to household bounds */
	bool dedicated;
	bool alive;
};

struct cand {
	double score;
	int64_t dv;
	int32_t u, d;
};

struct hent {
	double t;
	int32_t b;
};

struct ctx {
	const struct part_building *b;
	struct part_params p;
	int32_t n;
	int32_t *off, *adj;	/* CSR adjacency, rows sorted and unique */
	int32_t *label;		/* working cell per building, -1 none */
	int32_t *next, *prv;	/* cell member lists */
	int32_t *zone;
	struct wcell *cell;
	int32_t ncell, capcell;
	int32_t nzone;
	int64_t *zone_hh;
	bool *zone_forced;
	bool *zone_indiv;
	int32_t *zone_touch;
	bool *released;		/* dedicated kind, but bridges a pocket */
	int64_t total_hh;
	/* scratch */
	uint32_t *mark, *pmark, *amark;
	uint32_t stamp;
	int32_t *queue, *sub, *tmp, *tmp2, *chunk, *order;
	double *tval;
	struct hent *heap;
	struct cand *cand;
	size_t ncand, capcand;
};

/* ---- small helpers ---- */

static uint32_t
stamp_new(struct ctx *x)
{
	if (x->stamp == UINT32_MAX - 1) {
		memset(x->mark, 0, (size_t)x->n * sizeof(*x->mark));
		memset(x->pmark, 0, (size_t)x->n * sizeof(*x->pmark));
		memset(x->amark, 0, (size_t)x->n * sizeof(*x->amark));
		x->stamp = 0;
	}
	return ++x->stamp;
}

static int64_t
viol(const struct ctx *x, int64_t h)
{
	if (h < x->p.min_households)
		return x->p.min_households - h;
	if (h > x->p.max_households)
		return h - x->p.max_households;
	return 0;
}

static double
dist2c(const struct ctx *x, int32_t u, int32_t c)
{
	const struct wcell *w = &x->cell[c];
	double dx = x->b[u].x - w->sx / w->nb;
	double dy = x->b[u].y - w->sy / w->nb;

	return dx * dx + dy * dy;
}

static bool
adjacent(const struct ctx *x, int32_t u, int32_t v)
{
	int32_t lo = x->off[u], hi = x->off[u + 1];

	while (lo < hi) {
		int32_t mid = lo + (hi - lo) / 2;

		if (x->adj[mid] == v)
			return true;
		if (x->adj[mid] < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

/* Violation of h households shared by k cells: what the bounds k * min
 * and k * max miss by. */
static int64_t
kviol(const struct ctx *x, int64_t h, int32_t k)
{
	if (h < (int64_t)k * x->p.min_households)
		return (int64_t)k * x->p.min_households - h;
	if (h > (int64_t)k * x->p.max_households)
		return h - (int64_t)k * x->p.max_households;
	return 0;
}

/*
 * Cell count for a zone of h households: near h / target, clamped so
 * that h / k lies in [min, max]. When no k does (h between max and
 * 2 * min, say), the k whose average misses its bound by the smaller
 * fraction.
 */
static int32_t
choose_k(const struct part_params *p, int64_t h, bool *indivisible)
{
	int64_t lo, hi, k;

	*indivisible = false;
	if (h < p->min_households)
		return 1;
	lo = (h + p->max_households - 1) / p->max_households;
	hi = h / p->min_households;
	k = (h + p->target_households / 2) / p->target_households;
	if (k < 1)
		k = 1;
	if (lo <= hi) {
		if (k < lo)
			k = lo;
		if (k > hi)
			k = hi;
	} else {
		double over = (double)h / (double)hi /
		    p->max_households - 1.0;
		double under = 1.0 - (double)h / (double)lo /
		    p->min_households;

		*indivisible = true;
		k = under < over ? lo : hi;
	}
	return (int32_t)k;
}

/* ---- cells and membership ---- */

static int32_t
cell_new(struct ctx *x, int32_t zone, bool exempt, bool dedicated,
    uint32_t flags)
{
	struct wcell *w;

	if (x->ncell == x->capcell) {
		x->capcell = x->capcell ? x->capcell * 2 : 16;
		x->cell = xreallocarray(x->cell, (size_t)x->capcell,
		    sizeof(*x->cell));
	}
	w = &x->cell[x->ncell];
	memset(w, 0, sizeof(*w));
	w->head = -1;
	w->zone = zone;
	w->exempt = exempt;
	w->dedicated = dedicated;
	w->flags = flags;
	w->alive = true;
	return x->ncell++;
}

static void
cell_add(struct ctx *x, int32_t c, int32_t u)
{
	struct wcell *w = &x->cell[c];

	x->label[u] = c;
	x->prv[u] = -1;
	x->next[u] = w->head;
	if (w->head >= 0)
		x->prv[w->head] = u;
	w->head = u;
	w->hh += x->b[u].households;
	w->nb++;
	w->sx += x->b[u].x;
	w->sy += x->b[u].y;
}

static void
cell_remove(struct ctx *x, int32_t u)
{
	struct wcell *w = &x->cell[x->label[u]];

	if (x->prv[u] >= 0)
		x->next[x->prv[u]] = x->next[u];
	else
		w->head = x->next[u];
	if (x->next[u] >= 0)
		x->prv[x->next[u]] = x->prv[u];
	w->hh -= x->b[u].households;
	w->nb--;
	w->sx -= x->b[u].x;
	w->sy -= x->b[u].y;
	if (w->nb == 0) {
		/* Drop rounding residue so an emptied, refilled cell
		 * starts from exact sums. */
		w->sx = w->sy = 0;
		w->alive = false;
	}
	x->label[u] = -1;
}

static void
cell_move(struct ctx *x, int32_t u, int32_t d)
{
	cell_remove(x, u);
	cell_add(x, d, u);
	x->cell[d].alive = true;
}

static int
cmp_i32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;

	return (x > y) - (x < y);
}

/* Members of cell c sorted by index into out; returns the count. */
static int32_t
cell_members(struct ctx *x, int32_t c, int32_t *out)
{
	int32_t m = 0;

	for (int32_t u = x->cell[c].head; u >= 0; u = x->next[u])
		out[m++] = u;
	xqsort(out, (size_t)m, sizeof(*out), cmp_i32);
	return m;
}

/*
 * Whether u's cell stays connected without u: a search from one of u's
 * cell neighbours must reach all the others. Stops as soon as it has.
 */
static bool
stays_connected(struct ctx *x, int32_t u)
{
	int32_t c = x->label[u], need = 0, found, first = -1, qh, qt;
	uint32_t s;

	if (x->cell[c].nb <= 1)
		return false;
	for (int32_t e = x->off[u]; e < x->off[u + 1]; e++)
		if (x->label[x->adj[e]] == c) {
			if (first < 0)
				first = x->adj[e];
			need++;
		}
	if (need == 0)
		return false;	/* u alone: the cell is already split */
	if (need == 1)
		return true;
	s = stamp_new(x);
	x->mark[u] = s;
	x->mark[first] = s;
	x->queue[0] = first;
	qh = 0;
	qt = 1;
	found = 1;
	while (qh < qt) {
		int32_t v = x->queue[qh++];

		for (int32_t e = x->off[v]; e < x->off[v + 1]; e++) {
			int32_t w = x->adj[e];

			if (x->mark[w] == s || x->label[w] != c)
				continue;
			x->mark[w] = s;
			x->queue[qt++] = w;
			if (adjacent(x, u, w) && ++found == need)
				return true;
		}
	}
	return false;
}

/*
 * The buildings that must leave u's cell with u so that the rest stays
 * connected: u plus every part of the cell without u except the largest
 * (households, then buildings, then lowest index). Written to x->chunk;
 * returns the count and their households in *hh.
 */
static int32_t
chunk_of(struct ctx *x, int32_t u, int64_t *hh)
{
	int32_t c = x->label[u], qt = 0, best = -1, bs = 0, be = 0, m = 0;
	int64_t besth = -1;
	int32_t bestn = 0, bestmin = 0;
	uint32_t s = stamp_new(x);

	x->mark[u] = s;
	for (int32_t e = x->off[u]; e < x->off[u + 1]; e++) {
		int32_t w = x->adj[e], start = qt, qh = qt, mn = w, cn;
		int64_t ch = 0;

		if (x->label[w] != c || x->mark[w] == s)
			continue;
		x->mark[w] = s;
		x->queue[qt++] = w;
		while (qh < qt) {
			int32_t v = x->queue[qh++];

			ch += x->b[v].households;
			if (v < mn)
				mn = v;
			for (int32_t f = x->off[v]; f < x->off[v + 1]; f++) {
				int32_t y = x->adj[f];

				if (x->label[y] == c && x->mark[y] != s) {
					x->mark[y] = s;
					x->queue[qt++] = y;
				}
			}
		}
		cn = qt - start;
		if (best < 0 || ch > besth || (ch == besth && (cn > bestn ||
		    (cn == bestn && mn < bestmin)))) {
			best = start;
			besth = ch;
			bestn = cn;
			bestmin = mn;
			bs = start;
			be = qt;
		}
	}
	*hh = x->b[u].households;
	x->chunk[m++] = u;
	for (int32_t i = 0; i < qt; i++)
		if (i < bs || i >= be) {
			x->chunk[m++] = x->queue[i];
			*hh += x->b[x->queue[i]].households;
		}
	return m;
}

static void
chunk_move(struct ctx *x, int32_t m, int32_t d)
{
	for (int32_t i = 0; i < m; i++)
		cell_move(x, x->chunk[i], d);
}

/* ---- recursive bisection ---- */

static bool
heap_less(const struct hent *a, const struct hent *b)
{
	return a->t < b->t || (a->t == b->t && a->b < b->b);
}

static void
heap_push(struct hent *h, int32_t *n, double t, int32_t b)
{
	int32_t i = (*n)++;

	h[i].t = t;
	h[i].b = b;
	while (i > 0) {
		int32_t p = (i - 1) / 2;
		struct hent tmp;

		if (!heap_less(&h[i], &h[p]))
			break;
		tmp = h[i];
		h[i] = h[p];
		h[p] = tmp;
		i = p;
	}
}

static struct hent
heap_pop(struct hent *h, int32_t *n)
{
	struct hent top = h[0];
	int32_t i = 0;

	h[0] = h[--(*n)];
	for (;;) {
		int32_t l = 2 * i + 1, r = l + 1, m = i;
		struct hent tmp;

		if (l < *n && heap_less(&h[l], &h[m]))
			m = l;
		if (r < *n && heap_less(&h[r], &h[m]))
			m = r;
		if (m == i)
			break;
		tmp = h[i];
		h[i] = h[m];
		h[m] = tmp;
		i = m;
	}
	return top;
}

struct piece {
	int32_t off, cnt, k;
};

/*
 * Cuts the connected building set mem[0..m) (sorted by index) into at
 * most k connected pieces of about equal households; writes piece numbers
 * 0.. to x->sub[] and returns how many. Depends only on the set, never on
 * the caller's labels, so a cell re-split gives the same pieces.
 */
static int32_t
bisect(struct ctx *x, int32_t *mem, int32_t m, int32_t k)
{
	struct piece *stk;
	int32_t nstk = 0, nsub = 0;

	stk = xreallocarray(NULL, (size_t)(2 * (k > 0 ? k : 1) + 2),
	    sizeof(*stk));
	stk[nstk++] = (struct piece){ 0, m, k };
	while (nstk > 0) {
		struct piece pc = stk[--nstk];
		int32_t *pm = mem + pc.off;
		int64_t H = 0, HA = 0;
		double mx = 0, my = 0, sxx = 0, sxy = 0, syy = 0, th, ax, ay;
		double target;
		uint32_t ps, qs, as, bs;
		int32_t seed, nh = 0, nA, k1, bestc = -1, ncomp = 0;
		int64_t besth = -1;
		int32_t bestn = -1;

		for (int32_t i = 0; i < pc.cnt; i++)
			H += x->b[pm[i]].households;
		if (pc.k <= 1 || pc.cnt <= 1 || H == 0) {
			for (int32_t i = 0; i < pc.cnt; i++)
				x->sub[pm[i]] = nsub;
			nsub++;
			continue;
		}
		ps = stamp_new(x);
		for (int32_t i = 0; i < pc.cnt; i++) {
			x->pmark[pm[i]] = ps;
			mx += x->b[pm[i]].x;
			my += x->b[pm[i]].y;
		}
		mx /= pc.cnt;
		my /= pc.cnt;
		for (int32_t i = 0; i < pc.cnt; i++) {
			double dx = x->b[pm[i]].x - mx, dy = x->b[pm[i]].y - my;

			sxx += dx * dx;
			sxy += dx * dy;
			syy += dy * dy;
		}
		/* Principal axis: the cut runs across the piece's long side. */
		th = 0.5 * atan2(2.0 * sxy, sxx - syy);
		ax = cos(th);
		ay = sin(th);
		seed = pm[0];
		for (int32_t i = 0; i < pc.cnt; i++) {
			int32_t u = pm[i];

			x->tval[u] = (x->b[u].x - mx) * ax + (x->b[u].y - my) * ay;
			if (x->tval[u] < x->tval[seed])
				seed = u;
		}
		k1 = pc.k / 2;
		target = (double)H * k1 / pc.k;

		/* Sweep: order the piece from the lowest end, always taking
		 * the frontier building lowest on the axis; every prefix of
		 * that order is connected because it grows along edges. Side
		 * A is the prefix whose split best fits the bounds for k1 and
		 * k - k1 cells, then comes closest to the proportional share,
		 * then is shortest. */
		qs = stamp_new(x);
		as = stamp_new(x);
		x->amark[seed] = qs;
		heap_push(x->heap, &nh, x->tval[seed], seed);
		{
			int32_t no = 0, bestl = 1;
			int64_t run = 0, bestv = -1;
			double bestdev = 0;

			while (nh > 0) {
				int32_t u = heap_pop(x->heap, &nh).b;

				x->order[no++] = u;
				run += x->b[u].households;
				if (no < pc.cnt) {
					int64_t v = kviol(x, run, k1) +
					    kviol(x, H - run, pc.k - k1);
					double dev = fabs((double)run - target);

					if (bestv < 0 || v < bestv ||
					    (v == bestv && dev < bestdev)) {
						bestv = v;
						bestdev = dev;
						bestl = no;
					}
				}
				for (int32_t e = x->off[u]; e < x->off[u + 1]; e++) {
					int32_t v = x->adj[e];

					if (x->pmark[v] != ps || x->amark[v] == qs)
						continue;
					x->amark[v] = qs;
					heap_push(x->heap, &nh, x->tval[v], v);
				}
			}
			for (int32_t i = 0; i < bestl; i++)
				x->amark[x->order[i]] = as;
		}
		nh = 0;

		/* Side B keeps its largest connected part (households, then
		 * buildings, then lowest index); the rest touches A only and
		 * joins it. */
		bs = stamp_new(x);
		for (int32_t i = 0; i < pc.cnt; i++) {
			int32_t u = pm[i], qh = 0, qt = 0, cn = 0;
			int64_t ch = 0;

			if (x->amark[u] == as || x->mark[u] == bs)
				continue;
			x->mark[u] = bs;
			x->queue[qt++] = u;
			while (qh < qt) {
				int32_t v = x->queue[qh++];

				x->tmp2[v] = ncomp;
				ch += x->b[v].households;
				cn++;
				for (int32_t e = x->off[v]; e < x->off[v + 1]; e++) {
					int32_t w = x->adj[e];

					if (x->pmark[w] != ps || x->amark[w] == as ||
					    x->mark[w] == bs)
						continue;
					x->mark[w] = bs;
					x->queue[qt++] = w;
				}
			}
			if (ch > besth || (ch == besth && cn > bestn)) {
				besth = ch;
				bestn = cn;
				bestc = ncomp;
			}
			ncomp++;
		}
		if (bestc < 0) {
			/* The sweep took everything: the piece cannot be cut. */
			for (int32_t i = 0; i < pc.cnt; i++)
				x->sub[pm[i]] = nsub;
			nsub++;
			continue;
		}
		nA = 0;
		for (int32_t i = 0; i < pc.cnt; i++) {
			int32_t u = pm[i];

			if (x->amark[u] != as && x->tmp2[u] != bestc)
				x->amark[u] = as;
			if (x->amark[u] == as) {
				HA += x->b[u].households;
				x->tmp[nA++] = u;
			}
		}
		{
			int32_t j = nA;

			for (int32_t i = 0; i < pc.cnt; i++)
				if (x->amark[pm[i]] != as)
					x->tmp[j++] = pm[i];
			memcpy(pm, x->tmp, (size_t)pc.cnt * sizeof(*pm));
		}
		/* Share the cells by the households each side ended with. */
		k1 = (int32_t)lround((double)pc.k * (double)HA / (double)H);
		if (k1 < 1)
			k1 = 1;
		if (k1 > pc.k - 1)
			k1 = pc.k - 1;
		stk[nstk++] = (struct piece){ pc.off + nA, pc.cnt - nA,
		    pc.k - k1 };
		stk[nstk++] = (struct piece){ pc.off, nA, k1 };
	}
	free(stk);
	return nsub;
}

/* Cuts mem[0..m) into k cells of the given zone. */
static void
partition_zone(struct ctx *x, int32_t zone, int32_t *mem, int32_t m,
    int32_t k)
{
	int32_t nsub = bisect(x, mem, m, k), base = x->ncell;

	for (int32_t i = 0; i < nsub; i++)
		(void)cell_new(x, zone, false, false, 0);
	for (int32_t i = 0; i < m; i++)
		cell_add(x, base + x->sub[mem[i]], mem[i]);
}

/* ---- repair ---- */

static void
cand_push(struct ctx *x, double score, int64_t dv, int32_t u, int32_t d)
{
	if (x->ncand == x->capcand) {
		x->capcand = x->capcand ? x->capcand * 2 : 64;
		x->cand = xreallocarray(x->cand, x->capcand, sizeof(*x->cand));
	}
	x->cand[x->ncand++] = (struct cand){ score, dv, u, d };
}

static int
cand_cmp(const void *pa, const void *pb)
{
	const struct cand *a = pa, *b = pb;

	if (a->score != b->score)
		return a->score < b->score ? -1 : 1;
	if (a->dv != b->dv)
		return a->dv < b->dv ? -1 : 1;
	if (a->u != b->u)
		return a->u < b->u ? -1 : 1;
	return (a->d > b->d) - (a->d < b->d);
}

static bool
movable_to(const struct ctx *x, int32_t c, int32_t d)
{
	return d >= 0 && d != c && !x->cell[d].exempt;
}

/* Best boundary move out of an over-full cell c; true if one was made. */
static bool
move_out(struct ctx *x, int32_t c)
{
	x->ncand = 0;
	for (int32_t u = x->cell[c].head; u >= 0; u = x->next[u]) {
		int64_t h = x->b[u].households;

		if (h == 0)
			continue;
		for (int32_t e = x->off[u]; e < x->off[u + 1]; e++) {
			int32_t d = x->label[x->adj[e]];
			int64_t dv;

			if (!movable_to(x, c, d))
				continue;
			dv = viol(x, x->cell[c].hh - h) +
			    viol(x, x->cell[d].hh + h) - viol(x, x->cell[c].hh) -
			    viol(x, x->cell[d].hh);
			if (dv < 0)
				cand_push(x, dist2c(x, u, d) - dist2c(x, u, c),
				    dv, u, d);
		}
	}
	xqsort(x->cand, x->ncand, sizeof(*x->cand), cand_cmp);
	for (size_t i = 0; i < x->ncand; i++) {
		if (i > 0 && x->cand[i].u == x->cand[i - 1].u)
			continue;	/* same building, already refused */
		if (stays_connected(x, x->cand[i].u)) {
			cell_move(x, x->cand[i].u, x->cand[i].d);
			return true;
		}
	}
	/* Every single move would cut the cell: move a building with the
	 * parts only it holds on. */
	for (size_t i = 0; i < x->ncand; i++) {
		int32_t d = x->cand[i].d, m;
		int64_t h, hc = x->cell[c].hh, hd = x->cell[d].hh;

		m = chunk_of(x, x->cand[i].u, &h);
		if (m < x->cell[c].nb && viol(x, hc - h) + viol(x, hd + h) <
		    viol(x, hc) + viol(x, hd)) {
			chunk_move(x, m, d);
			return true;
		}
	}
	return false;
}

/* Best boundary move into an under-full cell c; true if one was made. */
static bool
move_in(struct ctx *x, int32_t c)
{
	x->ncand = 0;
	for (int32_t w = x->cell[c].head; w >= 0; w = x->next[w]) {
		for (int32_t e = x->off[w]; e < x->off[w + 1]; e++) {
			int32_t u = x->adj[e], d = x->label[u];
			int64_t h = x->b[u].households, dv;

			if (h == 0 || !movable_to(x, c, d))
				continue;
			dv = viol(x, x->cell[c].hh + h) +
			    viol(x, x->cell[d].hh - h) - viol(x, x->cell[c].hh) -
			    viol(x, x->cell[d].hh);
			if (dv < 0)
				cand_push(x, dist2c(x, u, c) - dist2c(x, u, d),
				    dv, u, c);
		}
	}
	xqsort(x->cand, x->ncand, sizeof(*x->cand), cand_cmp);
	for (size_t i = 0; i < x->ncand; i++) {
		if (i > 0 && x->cand[i].u == x->cand[i - 1].u)
			continue;
		if (stays_connected(x, x->cand[i].u)) {
			cell_move(x, x->cand[i].u, c);
			return true;
		}
	}
	for (size_t i = 0; i < x->ncand; i++) {
		int32_t u = x->cand[i].u, d = x->label[u], m;
		int64_t h, hc = x->cell[c].hh, hd = x->cell[d].hh;

		m = chunk_of(x, u, &h);
		if (m < x->cell[d].nb && viol(x, hc + h) + viol(x, hd - h) <
		    viol(x, hc) + viol(x, hd)) {
			chunk_move(x, m, c);
			return true;
		}
	}
	return false;
}

/* Splits an over-full cell when its total calls for several cells and
 * the split lowers the violation; the largest piece keeps the cell. */
static bool
split_cell(struct ctx *x, int32_t c)
{
	bool indiv;
	int32_t k = choose_k(&x->p, x->cell[c].hh, &indiv), m, nsub, keep = 0;
	int64_t *hs, newv = 0;
	int32_t *ns, *map;

	if (k < 2 || x->cell[c].nb < 2)
		return false;
	m = cell_members(x, c, x->tmp2);
	/* bisect() uses tmp2 for its own bookkeeping: work on a copy. */
	int32_t *mem = xreallocarray(NULL, (size_t)m, sizeof(*mem));

	memcpy(mem, x->tmp2, (size_t)m * sizeof(*mem));
	nsub = bisect(x, mem, m, k);
	hs = xcalloc((size_t)nsub, sizeof(*hs));
	ns = xcalloc((size_t)nsub, sizeof(*ns));
	map = xcalloc((size_t)nsub, sizeof(*map));
	for (int32_t i = 0; i < m; i++) {
		hs[x->sub[mem[i]]] += x->b[mem[i]].households;
		ns[x->sub[mem[i]]]++;
	}
	for (int32_t i = 0; i < nsub; i++) {
		newv += viol(x, hs[i]);
		if (ns[i] > ns[keep])
			keep = i;
	}
	if (nsub < 2 || newv >= viol(x, x->cell[c].hh)) {
		free(mem);
		free(hs);
		free(ns);
		free(map);
		return false;
	}
	for (int32_t i = 0; i < nsub; i++)
		map[i] = i == keep ? c :
		    cell_new(x, x->cell[c].zone, false, false, 0);
	for (int32_t i = 0; i < m; i++)
		if (map[x->sub[mem[i]]] != c)
			cell_move(x, mem[i], map[x->sub[mem[i]]]);
	free(mem);
	free(hs);
	free(ns);
	free(map);
	return true;
}

/* Merges an under-full cell into the neighbour that lowers the
 * violation most (then the smaller neighbour, then the lower id). */
static bool
merge_cell(struct ctx *x, int32_t c)
{
	int32_t best = -1;
	int64_t bestdv = 0;

	for (int32_t w = x->cell[c].head; w >= 0; w = x->next[w]) {
		for (int32_t e = x->off[w]; e < x->off[w + 1]; e++) {
			int32_t d = x->label[x->adj[e]];
			int64_t dv;

			if (!movable_to(x, c, d))
				continue;
			dv = viol(x, x->cell[c].hh + x->cell[d].hh) -
			    viol(x, x->cell[c].hh) - viol(x, x->cell[d].hh);
			if (dv >= 0)
				continue;
			if (best < 0 || dv < bestdv ||
			    (dv == bestdv && (x->cell[d].hh < x->cell[best].hh ||
			    (x->cell[d].hh == x->cell[best].hh && d < best)))) {
				best = d;
				bestdv = dv;
			}
		}
	}
	if (best < 0)
		return false;
	while (x->cell[c].head >= 0)
		cell_move(x, x->cell[c].head, best);
	return true;
}

/*
 * Coarse weights (apartment blocks) can leave a cell just outside bounds
 * with no single move that helps. Re-cut the union of the cell and one
 * neighbour from scratch; take the neighbour whose re-cut lowers the
 * violation most. The piece holding most of each old cell keeps its id.
 */
static bool
resplit_pair(struct ctx *x, int32_t c)
{
	int32_t nd = 0, capd = 16, *ds = xreallocarray(NULL, 16, sizeof(*ds));
	int32_t *mem = NULL, best = -1, m = 0;
	int64_t bestv = 0;

	for (int32_t w = x->cell[c].head; w >= 0; w = x->next[w])
		for (int32_t e = x->off[w]; e < x->off[w + 1]; e++) {
			int32_t d = x->label[x->adj[e]];

			if (!movable_to(x, c, d))
				continue;
			if (nd == capd) {
				capd *= 2;
				ds = xreallocarray(ds, (size_t)capd, sizeof(*ds));
			}
			ds[nd++] = d;
		}
	xqsort(ds, (size_t)nd, sizeof(*ds), cmp_i32);
	for (int32_t i = 0; i < nd; i++) {
		int32_t d = ds[i], k, nsub;
		int64_t oldv, newv = 0, *hs;
		bool indiv;

		if (i > 0 && ds[i] == ds[i - 1])
			continue;
		oldv = viol(x, x->cell[c].hh) + viol(x, x->cell[d].hh);
		mem = xreallocarray(mem, (size_t)(x->cell[c].nb +
		    x->cell[d].nb), sizeof(*mem));
		m = cell_members(x, c, mem);
		m += cell_members(x, d, mem + m);
		xqsort(mem, (size_t)m, sizeof(*mem), cmp_i32);
		k = choose_k(&x->p, x->cell[c].hh + x->cell[d].hh, &indiv);
		nsub = bisect(x, mem, m, k);
		hs = xcalloc((size_t)nsub, sizeof(*hs));
		for (int32_t j = 0; j < m; j++)
			hs[x->sub[mem[j]]] += x->b[mem[j]].households;
		for (int32_t j = 0; j < nsub; j++)
			newv += viol(x, hs[j]);
		free(hs);
		if (newv < oldv && (best < 0 || newv < bestv)) {
			best = d;
			bestv = newv;
		}
	}
	free(ds);
	if (best >= 0) {
		int32_t d = best, k, nsub, *map, *fromc, *fromd, pc = 0, pd = -1;
		bool indiv;

		mem = xreallocarray(mem, (size_t)(x->cell[c].nb +
		    x->cell[d].nb), sizeof(*mem));
		m = cell_members(x, c, mem);
		m += cell_members(x, d, mem + m);
		xqsort(mem, (size_t)m, sizeof(*mem), cmp_i32);
		k = choose_k(&x->p, x->cell[c].hh + x->cell[d].hh, &indiv);
		nsub = bisect(x, mem, m, k);
		map = xcalloc((size_t)nsub, sizeof(*map));
		fromc = xcalloc((size_t)nsub, sizeof(*fromc));
		fromd = xcalloc((size_t)nsub, sizeof(*fromd));
		for (int32_t j = 0; j < m; j++) {
			if (x->label[mem[j]] == c)
				fromc[x->sub[mem[j]]]++;
			else
				fromd[x->sub[mem[j]]]++;
		}
		for (int32_t j = 1; j < nsub; j++)
			if (fromc[j] > fromc[pc])
				pc = j;
		for (int32_t j = 0; j < nsub; j++)
			if (j != pc && (pd < 0 || fromd[j] > fromd[pd]))
				pd = j;
		for (int32_t j = 0; j < nsub; j++)
			map[j] = j == pc ? c : j == pd ? d :
			    cell_new(x, x->cell[c].zone, false, false, 0);
		for (int32_t j = 0; j < m; j++)
			if (x->label[mem[j]] != map[x->sub[mem[j]]])
				cell_move(x, mem[j], map[x->sub[mem[j]]]);
		free(map);
		free(fromc);
		free(fromd);
	}
	free(mem);
	return best >= 0;
}

static void
repair(struct ctx *x)
{
	for (int pass = 0; pass < REPAIR_MAX_PASSES; pass++) {
		bool changed = false;

		for (int32_t c = 0; c < x->ncell; c++) {
			if (!x->cell[c].alive || x->cell[c].exempt)
				continue;
			if (x->cell[c].hh > x->p.max_households) {
				if (split_cell(x, c))
					changed = true;
				while (x->cell[c].hh > x->p.max_households &&
				    move_out(x, c))
					changed = true;
				if (x->cell[c].hh > x->p.max_households &&
				    resplit_pair(x, c))
					changed = true;
			} else if (x->cell[c].hh < x->p.min_households) {
				while (x->cell[c].hh < x->p.min_households &&
				    move_in(x, c))
					changed = true;
				if (x->cell[c].hh < x->p.min_households &&
				    resplit_pair(x, c))
					changed = true;
				if (x->cell[c].hh < x->p.min_households &&
				    merge_cell(x, c))
					changed = true;
			}
		}
		if (!changed)
			return;
	}
}

/*
 * Greedy repair stalls when the households an under-full cell needs sit
 * two cells away behind an in-bounds neighbour. In zones still violating
 * bounds, move households from a larger to a smaller neighbouring cell
 * (difference above the building's households: the sum of squared
 * deviations falls) without raising the violation, then repair again.
 * The potential (violation, sum of squared deviations) falls with every
 * step, so the alternation ends; zones in bounds are never touched.
 */
static bool
balance(struct ctx *x)
{
	bool *active = xcalloc((size_t)x->nzone + 1, sizeof(*active));
	bool any = false, moved;
	int32_t *mem = xreallocarray(NULL, (size_t)x->n + 1, sizeof(*mem));

	for (int32_t c = 0; c < x->ncell; c++)
		if (x->cell[c].alive && !x->cell[c].exempt &&
		    viol(x, x->cell[c].hh) > 0)
			active[x->cell[c].zone] = true;
	do {
		moved = false;
		for (int32_t c = 0; c < x->ncell; c++) {
			int32_t m;

			if (!x->cell[c].alive || x->cell[c].exempt ||
			    !active[x->cell[c].zone])
				continue;
			m = cell_members(x, c, mem);
			for (int32_t i = 0; i < m; i++) {
				int32_t u = mem[i], best = -1;
				int64_t h = x->b[u].households, hc = x->cell[c].hh;

				if (h == 0 || x->cell[c].nb <= 1)
					continue;
				for (int32_t e = x->off[u]; e < x->off[u + 1]; e++) {
					int32_t d = x->label[x->adj[e]];
					int64_t hd;

					if (!movable_to(x, c, d))
						continue;
					hd = x->cell[d].hh;
					if (hc - hd <= h || viol(x, hc - h) +
					    viol(x, hd + h) > viol(x, hc) + viol(x, hd))
						continue;
					if (best < 0 || hd < x->cell[best].hh ||
					    (hd == x->cell[best].hh && d < best))
						best = d;
				}
				if (best < 0)
					continue;
				if (stays_connected(x, u)) {
					cell_move(x, u, best);
					moved = any = true;
				} else {
					int64_t hs, hd = x->cell[best].hh;
					int32_t k = chunk_of(x, u, &hs);

					if (k < x->cell[c].nb && hc - hd > hs &&
					    viol(x, hc - hs) + viol(x, hd + hs) <=
					    viol(x, hc) + viol(x, hd)) {
						chunk_move(x, k, best);
						moved = any = true;
					}
				}
			}
		}
	} while (moved);
	free(active);
	free(mem);
	return any;
}

static void
repair_all(struct ctx *x)
{
	do
		repair(x);
	while (balance(x));
}

/*
 * Moves boundary buildings to a neighbouring cell when that lowers the
 * sum of squared distances to the cell centres (exact update for moving
 * one point) without worsening any bound: zero-household buildings move
 * freely, so non-residential buildings end in the cell around them.
 */
static void
compact(struct ctx *x)
{
	for (int pass = 0; pass < COMPACT_PASSES; pass++) {
		int32_t moves = 0;

		for (int32_t u = 0; u < x->n; u++) {
			int32_t c = x->label[u], best = -1;
			double bestd = 0, nc;
			int64_t h = x->b[u].households;

			if (c < 0 || x->cell[c].exempt || x->cell[c].nb <= 1)
				continue;
			nc = x->cell[c].nb;
			for (int32_t e = x->off[u]; e < x->off[u + 1]; e++) {
				int32_t d = x->label[x->adj[e]];
				double nd, delta;

				if (!movable_to(x, c, d) || d == best)
					continue;
				if (viol(x, x->cell[c].hh - h) +
				    viol(x, x->cell[d].hh + h) >
				    viol(x, x->cell[c].hh) + viol(x, x->cell[d].hh))
					continue;
				nd = x->cell[d].nb;
				delta = nd / (nd + 1) * dist2c(x, u, d) -
				    nc / (nc - 1) * dist2c(x, u, c);
				if (delta < bestd - 1e-9 ||
				    (best >= 0 && delta == bestd && d < best)) {
					best = d;
					bestd = delta;
				}
			}
			/* A margin keeps float noise from trading a building
			 * back and forth. */
			if (best >= 0 && bestd < -1e-6 && stays_connected(x, u)) {
				cell_move(x, u, best);
				moves++;
			}
		}
		if (moves == 0)
			break;
	}
}

/* ---- set-up: graph, fixed cells, zones ---- */

static bool
validate(const struct part_input *in, char *err, size_t errlen)
{
	const struct part_params *p = &in->params;

	if (in->n_buildings > PART_MAX_BUILDINGS) {
		snprintf(err, errlen, "%zu buildings exceed the limit of %d",
		    in->n_buildings, PART_MAX_BUILDINGS);
		return false;
	}
	if (in->n_edges > PART_MAX_EDGES) {
		snprintf(err, errlen, "%zu edges exceed the limit of %d",
		    in->n_edges, PART_MAX_EDGES);
		return false;
	}
	if ((in->n_buildings > 0 && in->buildings == NULL) ||
	    (in->n_edges > 0 && in->edges == NULL)) {
		snprintf(err, errlen, "missing building or edge array");
		return false;
	}
	if (p->min_households < 1 || p->target_households < p->min_households ||
	    p->max_households < p->target_households) {
		snprintf(err, errlen, "households bounds need 1 <= min <= "
		    "target <= max (got %d/%d/%d)", p->min_households,
		    p->target_households, p->max_households);
		return false;
	}
	if (p->dedicated_min_buildings < 0 ||
	    !isfinite(p->dedicated_min_area_m2) ||
	    p->dedicated_min_area_m2 < 0) {
		snprintf(err, errlen, "dedicated thresholds must be >= 0");
		return false;
	}
	for (size_t i = 0; i < in->n_buildings; i++) {
		const struct part_building *b = &in->buildings[i];

		if (!isfinite(b->x) || !isfinite(b->y) || !isfinite(b->area_m2) ||
		    b->area_m2 < 0) {
			snprintf(err, errlen, "building %zu: non-finite "
			    "coordinate or bad area", i);
			return false;
		}
		if (b->households < 0 || b->households > PART_MAX_HOUSEHOLDS) {
			snprintf(err, errlen, "building %zu: households %d "
			    "outside [0, %d]", i, b->households,
			    PART_MAX_HOUSEHOLDS);
			return false;
		}
		if (b->kind >= PART_KIND_COUNT) {
			snprintf(err, errlen, "building %zu: unknown kind %u",
			    i, b->kind);
			return false;
		}
	}
	for (size_t i = 0; i < in->n_edges; i++)
		if (in->edges[i].a >= in->n_buildings ||
		    in->edges[i].b >= in->n_buildings) {
			snprintf(err, errlen, "edge %zu: endpoint out of range",
			    i);
			return false;
		}
	return true;
}

static void
build_graph(struct ctx *x, const struct part_input *in)
{
	int32_t n = x->n;
	int32_t *fill;

	x->off = xcalloc((size_t)n + 1, sizeof(*x->off));
	for (size_t i = 0; i < in->n_edges; i++) {
		uint32_t a = in->edges[i].a, b = in->edges[i].b;

		if (a == b)
			continue;
		x->off[a + 1]++;
		x->off[b + 1]++;
	}
	for (int32_t i = 0; i < n; i++)
		x->off[i + 1] += x->off[i];
	x->adj = xreallocarray(NULL, (size_t)x->off[n] + 1, sizeof(*x->adj));
	fill = xreallocarray(NULL, (size_t)n + 1, sizeof(*fill));
	memcpy(fill, x->off, (size_t)n * sizeof(*fill));
	for (size_t i = 0; i < in->n_edges; i++) {
		uint32_t a = in->edges[i].a, b = in->edges[i].b;

		if (a == b)
			continue;
		x->adj[fill[a]++] = (int32_t)b;
		x->adj[fill[b]++] = (int32_t)a;
	}
	/* Sorted unique rows: neighbour order no longer depends on edge
	 * order, and adjacency tests can binary-search. */
	{
		int32_t w = 0;

		for (int32_t i = 0; i < n; i++) {
			int32_t lo = x->off[i], hi = x->off[i + 1];

			xqsort(x->adj + lo, (size_t)(hi - lo), sizeof(*x->adj),
			    cmp_i32);
			x->off[i] = w;
			for (int32_t e = lo; e < hi; e++)
				if (e == lo || x->adj[e] != x->adj[e - 1])
					x->adj[w++] = x->adj[e];
		}
		x->off[n] = w;
	}
	free(fill);
}

static bool
dedicated_kind(const struct ctx *x, int32_t u)
{
	const struct part_building *b = &x->b[u];

	return b->households == 0 && !x->released[u] &&
	    (b->kind == PART_KIND_COMMERCIAL ||
	    b->kind == PART_KIND_INDUSTRIAL || b->kind == PART_KIND_PUBLIC);
}

/* Dedicated clusters and oversized buildings become exempt cells. */
static void
fixed_cells(struct ctx *x)
{
	const struct part_params *p = &x->p;
	bool on = p->dedicated_min_buildings > 0 || p->dedicated_min_area_m2 > 0;
	uint32_t s = stamp_new(x);

	for (int32_t u = 0; u < x->n; u++) {
		int32_t qh = 0, qt = 0;
		double area = 0;

		if (x->b[u].households > p->max_households) {
			int32_t c = cell_new(x, -1, true, false,
			    PART_F_ABOVE_MAX | PART_F_BUILDING_ABOVE_MAX);

			cell_add(x, c, u);
			continue;
		}
		if (!on || x->mark[u] == s || !dedicated_kind(x, u))
			continue;
		x->mark[u] = s;
		x->queue[qt++] = u;
		while (qh < qt) {
			int32_t v = x->queue[qh++];

			area += x->b[v].area_m2;
			for (int32_t e = x->off[v]; e < x->off[v + 1]; e++) {
				int32_t w = x->adj[e];

				if (x->mark[w] == s || !dedicated_kind(x, w))
					continue;
				x->mark[w] = s;
				x->queue[qt++] = w;
			}
		}
		if ((p->dedicated_min_buildings > 0 &&
		    qt >= p->dedicated_min_buildings) ||
		    (p->dedicated_min_area_m2 > 0 &&
		    area >= p->dedicated_min_area_m2)) {
			int32_t c = cell_new(x, -1, true, true, 0);

			for (int32_t i = 0; i < qt; i++)
				cell_add(x, c, x->queue[i]);
		}
	}
}

/* Zones: connected parts of what the fixed cells left, with their
 * households and the first fixed cell each touches (-1 for none). */
static void
find_zones(struct ctx *x)
{
	uint32_t s = stamp_new(x);
	int32_t cap = 16;

	x->nzone = 0;
	free(x->zone_hh);
	free(x->zone_forced);
	free(x->zone_indiv);
	free(x->zone_touch);
	x->zone_hh = xcalloc((size_t)cap, sizeof(*x->zone_hh));
	x->zone_forced = xcalloc((size_t)cap, sizeof(*x->zone_forced));
	x->zone_indiv = xcalloc((size_t)cap, sizeof(*x->zone_indiv));
	x->zone_touch = xcalloc((size_t)cap, sizeof(*x->zone_touch));
	for (int32_t u = 0; u < x->n; u++)
		x->zone[u] = -1;
	for (int32_t u = 0; u < x->n; u++) {
		int32_t qh = 0, qt = 0, z, touch = -1;
		int64_t hh = 0;

		if (x->label[u] >= 0 || x->mark[u] == s)
			continue;
		if (x->nzone == cap) {
			cap *= 2;
			x->zone_hh = xreallocarray(x->zone_hh, (size_t)cap,
			    sizeof(*x->zone_hh));
			x->zone_forced = xreallocarray(x->zone_forced,
			    (size_t)cap, sizeof(*x->zone_forced));
			x->zone_indiv = xreallocarray(x->zone_indiv,
			    (size_t)cap, sizeof(*x->zone_indiv));
			x->zone_touch = xreallocarray(x->zone_touch,
			    (size_t)cap, sizeof(*x->zone_touch));
		}
		z = x->nzone++;
		x->mark[u] = s;
		x->queue[qt++] = u;
		while (qh < qt) {
			int32_t v = x->queue[qh++];

			x->zone[v] = z;
			hh += x->b[v].households;
			for (int32_t e = x->off[v]; e < x->off[v + 1]; e++) {
				int32_t w = x->adj[e];

				if (x->label[w] >= 0) {
					if (touch < 0)
						touch = x->label[w];
					continue;
				}
				if (x->mark[w] == s)
					continue;
				x->mark[w] = s;
				x->queue[qt++] = w;
			}
		}
		x->zone_hh[z] = hh;
		x->zone_touch[z] = touch;
		x->zone_forced[z] = hh < x->p.min_households;
		(void)choose_k(&x->p, hh, &x->zone_indiv[z]);
	}
}

/*
 * A dedicated cluster must not wall off residents: a zone under min (or
 * with a total no cell count fits) that touches dedicated buildings gets the shortest path of them (in hops)
 * to another zone released from dedication, so both zones become one.
 * Returns whether anything was released; the caller recomputes the
 * clusters and zones and asks again.
 */
static bool
bridge_pockets(struct ctx *x)
{
	bool any = false;

	for (int32_t z = 0; z < x->nzone; z++) {
		uint32_t s;
		int32_t qh = 0, qt = 0, hit = -1;

		if (x->zone_hh[z] == 0 || x->zone_touch[z] < 0 ||
		    (!x->zone_forced[z] && !x->zone_indiv[z]))
			continue;
		s = stamp_new(x);
		for (int32_t u = 0; u < x->n; u++)
			if (x->zone[u] == z) {
				x->mark[u] = s;
				x->tmp[u] = -1;
				x->queue[qt++] = u;
			}
		while (qh < qt && hit < 0) {
			int32_t v = x->queue[qh++];

			for (int32_t e = x->off[v]; e < x->off[v + 1]; e++) {
				int32_t w = x->adj[e];

				if (x->mark[w] == s)
					continue;
				if (x->zone[v] != z && x->label[w] < 0 &&
				    x->zone[w] != z) {
					hit = v;	/* v reaches another zone */
					break;
				}
				if (x->label[w] < 0 ||
				    !x->cell[x->label[w]].dedicated)
					continue;
				x->mark[w] = s;
				x->tmp[w] = v;
				x->queue[qt++] = w;
			}
		}
		for (int32_t v = hit; v >= 0 && x->zone[v] != z; v = x->tmp[v]) {
			x->released[v] = true;
			any = true;
		}
	}
	return any;
}

/*
 * A zone without households joins a fixed cell it touches (non-residential
 * leftovers around an industrial estate); a zone under min is one flagged
 * cell.
 */
static void
settle_zones(struct ctx *x)
{
	int32_t *start = xcalloc((size_t)x->nzone + 1, sizeof(*start));
	int32_t *mem = xreallocarray(NULL, (size_t)x->n + 1, sizeof(*mem));
	int32_t *fill = xreallocarray(NULL, (size_t)x->nzone + 1,
	    sizeof(*fill));

	for (int32_t u = 0; u < x->n; u++)
		if (x->zone[u] >= 0 && x->zone_forced[x->zone[u]])
			start[x->zone[u] + 1]++;
	for (int32_t z = 0; z < x->nzone; z++)
		start[z + 1] += start[z];
	memcpy(fill, start, (size_t)x->nzone * sizeof(*fill));
	for (int32_t u = 0; u < x->n; u++)
		if (x->zone[u] >= 0 && x->zone_forced[x->zone[u]])
			mem[fill[x->zone[u]]++] = u;
	for (int32_t z = 0; z < x->nzone; z++) {
		int32_t c, touch = x->zone_touch[z];
		int64_t hh = x->zone_hh[z];
		uint32_t flags;

		if (!x->zone_forced[z])
			continue;
		if (hh == 0 && touch >= 0) {
			for (int32_t i = start[z]; i < start[z + 1]; i++) {
				x->zone[mem[i]] = -1;
				cell_add(x, touch, mem[i]);
			}
			continue;
		}
		flags = PART_F_BELOW_MIN;
		if (hh == 0)
			flags |= PART_F_NO_HOUSEHOLDS;
		if (x->total_hh < x->p.min_households)
			flags |= PART_F_COMMUNITY_BELOW_MIN;
		else if (touch < 0)
			flags |= PART_F_COMPONENT_BELOW_MIN;
		else
			flags |= PART_F_ENCLOSED_BELOW_MIN;
		c = cell_new(x, z, true, false, flags);
		for (int32_t i = start[z]; i < start[z + 1]; i++)
			cell_add(x, c, mem[i]);
	}
	free(start);
	free(mem);
	free(fill);
}

static bool
zone_open(const struct ctx *x, int32_t u)
{
	return x->zone[u] >= 0 && !x->zone_forced[x->zone[u]];
}

/* Fresh start: every open zone bisected into its k cells. */
static void
start_fresh(struct ctx *x)
{
	int32_t *start = xcalloc((size_t)x->nzone + 1, sizeof(*start));
	int32_t *mem = xreallocarray(NULL, (size_t)x->n + 1, sizeof(*mem));

	/* Counting sort by zone keeps each zone's members in index order. */
	for (int32_t u = 0; u < x->n; u++)
		if (zone_open(x, u))
			start[x->zone[u] + 1]++;
	for (int32_t z = 0; z < x->nzone; z++)
		start[z + 1] += start[z];
	{
		int32_t *fill = xreallocarray(NULL, (size_t)x->nzone + 1,
		    sizeof(*fill));

		memcpy(fill, start, (size_t)x->nzone * sizeof(*fill));
		for (int32_t u = 0; u < x->n; u++)
			if (zone_open(x, u))
				mem[fill[x->zone[u]]++] = u;
		free(fill);
	}
	for (int32_t z = 0; z < x->nzone; z++) {
		bool indiv;
		int32_t m = start[z + 1] - start[z];

		if (m == 0 || x->zone_forced[z])
			continue;
		partition_zone(x, z, mem + start[z], m,
		    choose_k(&x->p, x->zone_hh[z], &indiv));
	}
	free(start);
	free(mem);
}

struct pcomp {
	int64_t hh;
	int32_t zone, pl, cnt, first, id;
};

static int
pcomp_cmp(const void *pa, const void *pb)
{
	const struct pcomp *a = pa, *b = pb;

	if (a->zone != b->zone)
		return a->zone < b->zone ? -1 : 1;
	if (a->pl != b->pl)
		return a->pl < b->pl ? -1 : 1;
	if (a->hh != b->hh)
		return a->hh > b->hh ? -1 : 1;
	if (a->cnt != b->cnt)
		return a->cnt > b->cnt ? -1 : 1;
	return (a->first > b->first) - (a->first < b->first);
}

/*
 * Start from the previous cells (pl = dense previous label per building,
 * -1 none): in each open zone a previous cell keeps its largest connected
 * part; the other parts, new buildings and buildings freed from cells
 * that vanished join the nearest cell by graph hops; a zone with no
 * previous cell at all is bisected afresh.
 */
static void
start_prev(struct ctx *x, const int32_t *pl)
{
	struct pcomp *pc = NULL;
	int32_t npc = 0, cappc = 0, qh = 0, qt = 0;
	int32_t *cellof;
	bool *zone_has = xcalloc((size_t)x->nzone + 1, sizeof(*zone_has));
	uint32_t s = stamp_new(x);

	for (int32_t u = 0; u < x->n; u++) {
		int32_t q0 = 0, q1 = 0;
		struct pcomp r;

		if (!zone_open(x, u) || pl[u] < 0 || x->mark[u] == s)
			continue;
		memset(&r, 0, sizeof(r));
		r.zone = x->zone[u];
		r.pl = pl[u];
		r.first = u;
		r.id = npc;
		x->mark[u] = s;
		x->queue[q1++] = u;
		while (q0 < q1) {
			int32_t v = x->queue[q0++];

			x->tmp[v] = npc;
			r.hh += x->b[v].households;
			r.cnt++;
			for (int32_t e = x->off[v]; e < x->off[v + 1]; e++) {
				int32_t w = x->adj[e];

				if (x->mark[w] == s || x->zone[w] != r.zone ||
				    pl[w] != r.pl)
					continue;
				x->mark[w] = s;
				x->queue[q1++] = w;
			}
		}
		if (npc == cappc) {
			cappc = cappc ? cappc * 2 : 64;
			pc = xreallocarray(pc, (size_t)cappc, sizeof(*pc));
		}
		pc[npc++] = r;
	}
	xqsort(pc, (size_t)npc, sizeof(*pc), pcomp_cmp);
	cellof = xreallocarray(NULL, (size_t)npc + 1, sizeof(*cellof));
	for (int32_t i = 0; i < npc; i++) {
		bool first = i == 0 || pc[i].zone != pc[i - 1].zone ||
		    pc[i].pl != pc[i - 1].pl;

		cellof[pc[i].id] = first ? cell_new(x, pc[i].zone, false,
		    false, 0) : -1;
		if (first)
			zone_has[pc[i].zone] = true;
	}
	for (int32_t u = 0; u < x->n; u++)
		if (zone_open(x, u) && pl[u] >= 0 && cellof[x->tmp[u]] >= 0)
			cell_add(x, cellof[x->tmp[u]], u);

	/* Breadth-first from every labelled building, in index order. */
	for (int32_t u = 0; u < x->n; u++)
		if (zone_open(x, u) && x->label[u] >= 0)
			x->queue[qt++] = u;
	while (qh < qt) {
		int32_t v = x->queue[qh++];

		for (int32_t e = x->off[v]; e < x->off[v + 1]; e++) {
			int32_t w = x->adj[e];

			if (x->label[w] >= 0 || x->zone[w] != x->zone[v])
				continue;
			cell_add(x, x->label[v], w);
			x->queue[qt++] = w;
		}
	}
	free(pc);
	free(cellof);

	/* Zones nobody had: fresh cells. */
	{
		int32_t *mem = xreallocarray(NULL, (size_t)x->n + 1,
		    sizeof(*mem));
		int32_t *start = xcalloc((size_t)x->nzone + 1, sizeof(*start));
		int32_t *fill;

		for (int32_t u = 0; u < x->n; u++)
			if (zone_open(x, u) && !zone_has[x->zone[u]])
				start[x->zone[u] + 1]++;
		for (int32_t z = 0; z < x->nzone; z++)
			start[z + 1] += start[z];
		fill = xreallocarray(NULL, (size_t)x->nzone + 1, sizeof(*fill));
		memcpy(fill, start, (size_t)x->nzone * sizeof(*fill));
		for (int32_t u = 0; u < x->n; u++)
			if (zone_open(x, u) && !zone_has[x->zone[u]])
				mem[fill[x->zone[u]]++] = u;
		for (int32_t z = 0; z < x->nzone; z++) {
			bool indiv;
			int32_t m = start[z + 1] - start[z];

			if (m > 0)
				partition_zone(x, z, mem + start[z], m,
				    choose_k(&x->p, x->zone_hh[z], &indiv));
		}
		free(fill);
		free(start);
		free(mem);
	}
	free(zone_has);
}

/* ---- output ---- */

struct ov {
	int32_t cell, pl, cnt;
};

static int
ov_key_cmp(const void *pa, const void *pb)
{
	const struct ov *a = pa, *b = pb;

	if (a->cell != b->cell)
		return a->cell < b->cell ? -1 : 1;
	return (a->pl > b->pl) - (a->pl < b->pl);
}

static int
ov_rank_cmp(const void *pa, const void *pb)
{
	const struct ov *a = pa, *b = pb;

	if (a->cnt != b->cnt)
		return a->cnt > b->cnt ? -1 : 1;
	if (a->pl != b->pl)
		return a->pl < b->pl ? -1 : 1;
	return (a->cell > b->cell) - (a->cell < b->cell);
}

struct ord {
	const struct part_cell *c;
	int32_t old, first;
};

static int
ord_cmp(const void *pa, const void *pb)
{
	const struct ord *a = pa, *b = pb;

	/* Kept cells by previous label, then created ones north to south,
	 * west to east. */
	if ((a->c->prev >= 0) != (b->c->prev >= 0))
		return a->c->prev >= 0 ? -1 : 1;
	if (a->c->prev >= 0 && a->c->prev != b->c->prev)
		return a->c->prev < b->c->prev ? -1 : 1;
	if (a->c->cy != b->c->cy)
		return a->c->cy > b->c->cy ? -1 : 1;
	if (a->c->cx != b->c->cx)
		return a->c->cx < b->c->cx ? -1 : 1;
	return (a->first > b->first) - (a->first < b->first);
}

static int
i64_cmp(const void *pa, const void *pb)
{
	int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;

	return (a > b) - (a < b);
}

static void
finish(struct ctx *x, const struct part_input *in, const int32_t *pl,
    const int32_t *plval, int32_t npl, struct part_result *out)
{
	int32_t *dense = xreallocarray(NULL, (size_t)x->ncell + 1,
	    sizeof(*dense));
	int32_t k = 0, *first, *neworder;
	struct part_cell *cells;
	struct ord *ord;
	struct part_report *r = &out->report;

	for (int32_t c = 0; c < x->ncell; c++)
		dense[c] = x->cell[c].alive && x->cell[c].nb > 0 ? k++ : -1;
	cells = xcalloc((size_t)k + 1, sizeof(*cells));
	first = xreallocarray(NULL, (size_t)k + 1, sizeof(*first));
	for (int32_t i = 0; i < k; i++)
		first[i] = -1;
	/* Statistics from scratch in index order, so they do not depend on
	 * the history of moves. */
	for (int32_t u = 0; u < x->n; u++) {
		int32_t c = dense[x->label[u]];
		struct part_cell *pc = &cells[c];

		if (first[c] < 0) {
			first[c] = u;
			pc->flags = x->cell[x->label[u]].flags;
			pc->kind = x->cell[x->label[u]].dedicated ?
			    PART_CELL_DEDICATED : PART_CELL_COMPREHENSIVE;
			if (!x->cell[x->label[u]].exempt) {
				int32_t z = x->cell[x->label[u]].zone;

				pc->flags = x->zone_indiv[z] ? PART_F_INDIVISIBLE :
				    PART_F_GRAPH_LIMITED;
			}
		}
		pc->households += x->b[u].households;
		pc->buildings++;
		pc->area_m2 += x->b[u].area_m2;
		pc->cx += x->b[u].x;
		pc->cy += x->b[u].y;
	}
	for (int32_t c = 0; c < k; c++) {
		cells[c].cx /= cells[c].buildings;
		cells[c].cy /= cells[c].buildings;
		cells[c].prev = -1;
	}
	for (int32_t u = 0; u < x->n; u++) {
		struct part_cell *pc = &cells[dense[x->label[u]]];
		double dx = x->b[u].x - pc->cx, dy = x->b[u].y - pc->cy;
		double d2 = dx * dx + dy * dy;

		pc->msd_m2 += d2;
		if (d2 > pc->max_dist_m)
			pc->max_dist_m = d2;
	}
	for (int32_t c = 0; c < k; c++) {
		struct part_cell *pc = &cells[c];
		bool below = pc->households < x->p.min_households;
		bool above = pc->households > x->p.max_households;

		pc->msd_m2 /= pc->buildings;
		pc->max_dist_m = sqrt(pc->max_dist_m);
		if (pc->kind == PART_CELL_DEDICATED) {
			pc->flags = 0;
			continue;
		}
		if (!below && !above) {
			/* In bounds: a GRAPH_LIMITED/INDIVISIBLE placeholder
			 * from above does not apply. */
			if (pc->flags & (PART_F_INDIVISIBLE | PART_F_GRAPH_LIMITED))
				pc->flags = 0;
			continue;
		}
		pc->flags |= below ? PART_F_BELOW_MIN : PART_F_ABOVE_MAX;
	}

	/* Previous labels: one-to-one by largest overlap. */
	if (pl != NULL && npl > 0) {
		struct ov *ov = xreallocarray(NULL, (size_t)x->n + 1,
		    sizeof(*ov));
		int32_t nov = 0, m = 0;
		bool *taken = xcalloc((size_t)npl, sizeof(*taken));

		for (int32_t u = 0; u < x->n; u++)
			if (pl[u] >= 0)
				ov[nov++] = (struct ov){ dense[x->label[u]],
				    pl[u], 1 };
		xqsort(ov, (size_t)nov, sizeof(*ov), ov_key_cmp);
		for (int32_t i = 0; i < nov; i++) {
			if (m > 0 && ov[m - 1].cell == ov[i].cell &&
			    ov[m - 1].pl == ov[i].pl)
				ov[m - 1].cnt++;
			else
				ov[m++] = ov[i];
		}
		xqsort(ov, (size_t)m, sizeof(*ov), ov_rank_cmp);
		for (int32_t i = 0; i < m; i++) {
			if (cells[ov[i].cell].prev >= 0 || taken[ov[i].pl])
				continue;
			taken[ov[i].pl] = true;
			cells[ov[i].cell].prev = ov[i].pl;
		}
		free(ov);
		free(taken);
	}

	/* Order: cells[] still holds dense previous ids in .prev here. */
	ord = xreallocarray(NULL, (size_t)k + 1, sizeof(*ord));
	for (int32_t c = 0; c < k; c++)
		ord[c] = (struct ord){ &cells[c], c, first[c] };
	xqsort(ord, (size_t)k, sizeof(*ord), ord_cmp);
	neworder = xreallocarray(NULL, (size_t)k + 1, sizeof(*neworder));
	out->cells = xcalloc((size_t)k + 1, sizeof(*out->cells));
	for (int32_t i = 0; i < k; i++) {
		neworder[ord[i].old] = i;
		out->cells[i] = *ord[i].c;
		if (out->cells[i].prev >= 0)
			out->cells[i].prev = plval[out->cells[i].prev];
	}
	out->n_cells = (size_t)k;
	out->n_labels = (size_t)x->n;
	out->labels = xreallocarray(NULL, (size_t)x->n + 1,
	    sizeof(*out->labels));
	for (int32_t u = 0; u < x->n; u++)
		out->labels[u] = neworder[dense[x->label[u]]];

	/* Report. */
	memset(r, 0, sizeof(*r));
	r->cells = k;
	{
		int64_t *hs = xreallocarray(NULL, (size_t)k + 1, sizeof(*hs));
		int32_t nh = 0;

		for (int32_t i = 0; i < k; i++) {
			const struct part_cell *pc = &out->cells[i];

			for (int bit = 0; bit < 16; bit++)
				if (pc->flags & (1u << bit))
					r->flag_counts[bit]++;
			if (pc->prev >= 0)
				r->kept++;
			if (pc->kind == PART_CELL_DEDICATED) {
				r->dedicated++;
				continue;
			}
			r->comprehensive++;
			r->households_total += pc->households;
			r->msd_mean_m2 += pc->msd_m2;
			hs[nh++] = pc->households;
			if (pc->flags & (PART_F_BELOW_MIN | PART_F_ABOVE_MAX))
				r->out_of_bounds++;
		}
		if (nh > 0) {
			xqsort(hs, (size_t)nh, sizeof(*hs), i64_cmp);
			r->hh_min = hs[0];
			r->hh_median = hs[(nh - 1) / 2];
			r->hh_max = hs[nh - 1];
			r->msd_mean_m2 /= nh;
		}
		free(hs);
	}
	r->created = k - r->kept;
	r->retired = npl - r->kept;
	if (in->prev != NULL)
		for (int32_t u = 0; u < x->n; u++) {
			int32_t was = in->prev[u];

			if (was < 0)
				r->added++;
			else if (out->cells[out->labels[u]].prev != was)
				r->moved++;
		}
	{
		uint32_t s = stamp_new(x);

		for (int32_t u = 0; u < x->n; u++) {
			int32_t qh = 0, qt = 0;

			if (x->mark[u] == s)
				continue;
			r->components++;
			x->mark[u] = s;
			x->queue[qt++] = u;
			while (qh < qt) {
				int32_t v = x->queue[qh++];

				for (int32_t e = x->off[v]; e < x->off[v + 1];
				    e++) {
					int32_t w = x->adj[e];

					if (x->mark[w] != s) {
						x->mark[w] = s;
						x->queue[qt++] = w;
					}
				}
			}
		}
	}
	free(ord);
	free(neworder);
	free(cells);
	free(first);
	free(dense);
}

static int
pv_cmp(const void *pa, const void *pb)
{
	const int32_t *a = pa, *b = pb;

	if (a[0] != b[0])
		return a[0] < b[0] ? -1 : 1;
	return (a[1] > b[1]) - (a[1] < b[1]);
}

bool
part_run(const struct part_input *in, struct part_result *out, char *err,
    size_t errlen)
{
	struct ctx x;
	int32_t *pl = NULL, *plval = NULL, npl = 0;
	size_t n;

	if (!validate(in, err, errlen))
		return false;
	memset(&x, 0, sizeof(x));
	memset(out, 0, sizeof(*out));
	n = in->n_buildings;
	x.b = in->buildings;
	x.p = in->params;
	x.n = (int32_t)n;
	for (size_t i = 0; i < n; i++)
		x.total_hh += in->buildings[i].households;
	build_graph(&x, in);
	x.label = xreallocarray(NULL, n + 1, sizeof(*x.label));
	x.next = xreallocarray(NULL, n + 1, sizeof(*x.next));
	x.prv = xreallocarray(NULL, n + 1, sizeof(*x.prv));
	x.zone = xreallocarray(NULL, n + 1, sizeof(*x.zone));
	x.mark = xcalloc(n + 1, sizeof(*x.mark));
	x.pmark = xcalloc(n + 1, sizeof(*x.pmark));
	x.amark = xcalloc(n + 1, sizeof(*x.amark));
	x.queue = xreallocarray(NULL, n + 1, sizeof(*x.queue));
	x.sub = xreallocarray(NULL, n + 1, sizeof(*x.sub));
	x.tmp = xreallocarray(NULL, n + 1, sizeof(*x.tmp));
	x.tmp2 = xreallocarray(NULL, n + 1, sizeof(*x.tmp2));
	x.tval = xreallocarray(NULL, n + 1, sizeof(*x.tval));
	x.heap = xreallocarray(NULL, n + 1, sizeof(*x.heap));
	x.released = xcalloc(n + 1, sizeof(*x.released));
	x.chunk = xreallocarray(NULL, n + 1, sizeof(*x.chunk));
	x.order = xreallocarray(NULL, n + 1, sizeof(*x.order));
	for (size_t i = 0; i < n; i++) {
		x.label[i] = -1;
		x.zone[i] = -1;
	}

	if (in->prev != NULL) {
		/* Dense ids for the previous labels, order preserved. */
		int32_t (*pv)[2] = xreallocarray(NULL, n + 1, sizeof(*pv));
		int32_t m = 0;

		pl = xreallocarray(NULL, n + 1, sizeof(*pl));
		plval = xreallocarray(NULL, n + 1, sizeof(*plval));
		for (size_t i = 0; i < n; i++) {
			pl[i] = -1;
			if (in->prev[i] >= 0) {
				pv[m][0] = in->prev[i];
				pv[m][1] = (int32_t)i;
				m++;
			}
		}
		xqsort(pv, (size_t)m, sizeof(*pv), pv_cmp);
		for (int32_t i = 0; i < m; i++) {
			if (i == 0 || pv[i][0] != pv[i - 1][0])
				plval[npl++] = pv[i][0];
			pl[pv[i][1]] = npl - 1;
		}
		free(pv);
	}

	for (int round = 0;; round++) {
		fixed_cells(&x);
		find_zones(&x);
		if (round == BRIDGE_MAX_ROUNDS || !bridge_pockets(&x))
			break;
		for (size_t i = 0; i < n; i++)
			x.label[i] = -1;
		x.ncell = 0;
	}
	settle_zones(&x);
	if (pl != NULL) {
		start_prev(&x, pl);
		repair_all(&x);
	} else {
		start_fresh(&x);
		repair_all(&x);
		compact(&x);
		/* Last step is a repair that found nothing to do, so feeding
		 * the output back as the previous assignment is a no-op. */
		repair_all(&x);
	}
	finish(&x, in, pl, plval, npl, out);

	free(pl);
	free(plval);
	free(x.off);
	free(x.adj);
	free(x.label);
	free(x.next);
	free(x.prv);
	free(x.zone);
	free(x.cell);
	free(x.zone_hh);
	free(x.zone_forced);
	free(x.zone_indiv);
	free(x.zone_touch);
	free(x.released);
	free(x.chunk);
	free(x.order);
	free(x.mark);
	free(x.pmark);
	free(x.amark);
	free(x.queue);
	free(x.sub);
	free(x.tmp);
	free(x.tmp2);
	free(x.tval);
	free(x.heap);
	free(x.cand);
	return true;
}

void
part_result_free(struct part_result *res)
{
	if (res == NULL)
		return;
	free(res->labels);
	free(res->cells);
	memset(res, 0, sizeof(*res));
}

static const char *const kind_names[PART_KIND_COUNT] = {
	"residential", "commercial", "industrial", "public", "agricultural",
	"other", "unknown",
};

bool
part_kind_parse(const char *name, enum part_kind *out)
{
	for (int i = 0; i < PART_KIND_COUNT; i++)
		if (strcmp(name, kind_names[i]) == 0) {
			*out = (enum part_kind)i;
			return true;
		}
	return false;
}

const char *
part_kind_name(enum part_kind kind)
{
	return (unsigned)kind < PART_KIND_COUNT ? kind_names[kind] : "?";
}

const char *
part_flag_name(uint32_t bit)
{
	switch (bit) {
	case PART_F_BELOW_MIN: return "below_min";
	case PART_F_ABOVE_MAX: return "above_max";
	case PART_F_COMMUNITY_BELOW_MIN: return "community_below_min";
	case PART_F_COMPONENT_BELOW_MIN: return "component_below_min";
	case PART_F_ENCLOSED_BELOW_MIN: return "enclosed_below_min";
	case PART_F_NO_HOUSEHOLDS: return "no_households";
	case PART_F_BUILDING_ABOVE_MAX: return "building_above_max";
	case PART_F_INDIVISIBLE: return "indivisible";
	case PART_F_GRAPH_LIMITED: return "graph_limited";
	default: return NULL;
	}
}

char *
part_flags_format(uint32_t flags, char *buf, size_t len)
{
	size_t used = 0;

	if (len == 0)
		return buf;
	buf[0] = '\0';
	for (int bit = 0; bit < 32; bit++) {
		const char *nm = part_flag_name(1u << bit);
		int w;

		if (!(flags & (1u << bit)) || nm == NULL)
			continue;
		w = snprintf(buf + used, len - used, "%s%s", used ? "," : "",
		    nm);
		if (w < 0 || (size_t)w >= len - used)
			break;
		used += (size_t)w;
	}
	return buf;
}

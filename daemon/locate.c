/* locate.c - point-in-cell in memory: polygons from WKB, a bucket grid, PostGIS's boundary rule (pure). */

/*
 * Why.  Locating a point in PostGIS costs tens of microseconds per item
 * inside the ingest transaction, which holds the merge locks meanwhile.
 * Each process therefore keeps the current cells and communities as
 * polygons in memory (cellcache.c loads them) with a uniform bucket grid
 * over them, and the feed sends the located cell with each item.
 *
 * Semantics are gridd_locate's (002_grid.sql): the current cell whose
 * polygon contains the point or has it on its boundary (ST_Intersects);
 * on an edge shared by several cells, the lowest cell id bytewise
 * (COLLATE "C"), so every point has exactly one answer; else the community
 * containing it, without a cell; else outside.  The side test is
 * PostGIS's own (the same cross product in the same order), so a point on
 * an edge is on it here exactly when it is there.
 */
#include "locate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Sanity bounds on what the database hands over (it is input like any
 * other): rings per polygon, points per ring and in all, areas. A city of
 * a million buildings has a few thousand cells of a few hundred points. */
#define LOCATE_MAX_RINGS	100000
#define LOCATE_MAX_POINTS	(64u * 1024 * 1024)
#define LOCATE_MAX_AREAS	(4u * 1024 * 1024)
/* Buckets per axis of the grid, by the number of polygons. */
#define LOCATE_GRID_MIN		8
#define LOCATE_GRID_MAX		512

struct lc_ring {
	uint32_t first;		/* index of its first point in pts */
	uint32_t n;		/* points, the closing one included */
};

struct lc_poly {
	double minx, miny, maxx, maxy;
	uint32_t area;		/* index into areas */
	uint32_t ring0;		/* outer ring, then holes */
	uint32_t nrings;
};

struct lc_area {
	char *community;
	char *cell;		/* NULL: the community itself */
};

/* Polygons of one kind (cells, or communities) with their bucket grid:
 * bucket b lists the polygons whose box overlaps it, in CSR form. */
struct lc_layer {
	struct lc_poly *polys;
	size_t npolys, cappolys;
	double minx, miny, maxx, maxy;
	double bw, bh;		/* bucket width and height */
	uint32_t gx, gy;	/* buckets per axis; 0 = empty layer */
	uint32_t *start;	/* gx * gy + 1 */
	uint32_t *items;
};

struct locate_index {
	double *pts;		/* x, y pairs */
	size_t npts, cappts;
	struct lc_ring *rings;
	size_t nrings, caprings;
	struct lc_area *areas;
	size_t nareas, capareas;
	struct lc_layer cells, comms;
};

/* ---- WKB ------------------------------------------------------------------ */

struct wkb {
	const char *hex;
	size_t len;		/* hex digits */
	size_t pos;		/* in hex digits */
};

static bool
wkb_bytes(struct wkb *w, uint8_t *out, size_t n)
{
	if (w->len - w->pos < 2 * n)
		return false;
	for (size_t i = 0; i < n; i++) {
		int hi = hex_digit(w->hex[w->pos]), lo = hex_digit(w->hex[w->pos + 1]);

		if (hi < 0 || lo < 0)
			return false;
		out[i] = (uint8_t)(hi << 4 | lo);
		w->pos += 2;
	}
	return true;
}

static bool
wkb_u32(struct wkb *w, bool le, uint32_t *out)
{
	uint8_t b[4];

	if (!wkb_bytes(w, b, 4))
		return false;
	*out = le ? (uint32_t)b[0] | (uint32_t)b[1] << 8 |
	    (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24 :
	    (uint32_t)b[3] | (uint32_t)b[2] << 8 | (uint32_t)b[1] << 16 |
	    (uint32_t)b[0] << 24;
	return true;
}

static bool
wkb_double(struct wkb *w, bool le, double *out)
{
	uint8_t b[8];
	uint64_t v = 0;

	if (!wkb_bytes(w, b, 8))
		return false;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)b[le ? i : 7 - i] << (8 * i);
	memcpy(out, &v, sizeof(*out));
	return true;
}

/* Byte order and type of the next (sub)geometry. */
static bool
wkb_header(struct wkb *w, bool *le, uint32_t *type)
{
	uint8_t order;

	if (!wkb_bytes(w, &order, 1) || order > 1)
		return false;
	*le = order == 1;
	return wkb_u32(w, *le, type);
}

static void
grow(void **p, size_t *cap, size_t need, size_t size)
{
	if (need <= *cap)
		return;
	while (*cap < need)
		*cap = *cap ? *cap * 2 : 64;
	*p = xreallocarray(*p, *cap, size);
}

/* One Polygon body (after its header) appended to the index. */
static bool
wkb_polygon(struct locate_index *ix, struct wkb *w, bool le,
    struct lc_layer *layer, uint32_t area, const char **why)
{
	struct lc_poly poly;
	uint32_t nrings;

	if (!wkb_u32(w, le, &nrings) || nrings > LOCATE_MAX_RINGS) {
		*why = "bad ring count";
		return false;
	}
	if (nrings == 0)
		return true;	/* an empty polygon contains nothing */
	poly.area = area;
	poly.ring0 = (uint32_t)ix->nrings;
	poly.nrings = nrings;
	poly.minx = poly.miny = INFINITY;
	poly.maxx = poly.maxy = -INFINITY;
	for (uint32_t r = 0; r < nrings; r++) {
		uint32_t np;

		if (!wkb_u32(w, le, &np) || np > LOCATE_MAX_POINTS ||
		    ix->npts + np > LOCATE_MAX_POINTS) {
			*why = "too many points";
			return false;
		}
		/* Every point takes 32 hex digits: refuse a count the text
		 * cannot hold before allocating for it. */
		if ((w->len - w->pos) / 32 < np) {
			*why = "truncated ring";
			return false;
		}
		grow((void **)&ix->rings, &ix->caprings, ix->nrings + 1,
		    sizeof(*ix->rings));
		grow((void **)&ix->pts, &ix->cappts, 2 * (ix->npts + np),
		    sizeof(*ix->pts));
		ix->rings[ix->nrings].first = (uint32_t)ix->npts;
		ix->rings[ix->nrings].n = np;
		for (uint32_t i = 0; i < np; i++) {
			double x, y;

			if (!wkb_double(w, le, &x) || !wkb_double(w, le, &y) ||
			    !isfinite(x) || !isfinite(y)) {
				*why = "bad coordinate";
				return false;
			}
			ix->pts[2 * (ix->npts + i)] = x;
			ix->pts[2 * (ix->npts + i) + 1] = y;
			if (r == 0) {
				poly.minx = fmin(poly.minx, x);
				poly.maxx = fmax(poly.maxx, x);
				poly.miny = fmin(poly.miny, y);
				poly.maxy = fmax(poly.maxy, y);
			}
		}
		ix->npts += np;
		ix->nrings++;
	}
	if (ix->rings[poly.ring0].n == 0)
		return true;	/* no outer ring: contains nothing */
	grow((void **)&layer->polys, &layer->cappolys, layer->npolys + 1,
	    sizeof(*layer->polys));
	layer->polys[layer->npolys++] = poly;
	return true;
}

bool
locate_index_add(struct locate_index *ix, const char *community,
    const char *cell, const char *wkb_hex, const char **why)
{
	struct lc_layer *layer = cell != NULL ? &ix->cells : &ix->comms;
	struct wkb w = { wkb_hex, strlen(wkb_hex), 0 };
	size_t save_pts = ix->npts, save_rings = ix->nrings,
	    save_polys = layer->npolys;
	uint32_t type, n = 1;
	bool le, ok = true;

	*why = "";
	if (ix->nareas >= LOCATE_MAX_AREAS) {
		*why = "too many areas";
		return false;
	}
	if (!wkb_header(&w, &le, &type)) {
		*why = "bad WKB header";
		return false;
	}
	if (type == 6) {
		if (!wkb_u32(&w, le, &n) || n > LOCATE_MAX_RINGS) {
			*why = "bad polygon count";
			return false;
		}
	} else if (type != 3) {
		*why = "not a 2D Polygon or MultiPolygon";
		return false;
	}
	for (uint32_t i = 0; i < n && ok; i++) {
		uint32_t sub = 3;
		bool sle = le;

		if (type == 6 && (!wkb_header(&w, &sle, &sub) || sub != 3)) {
			*why = "bad member of a MultiPolygon";
			ok = false;
			break;
		}
		ok = wkb_polygon(ix, &w, sle, layer, (uint32_t)ix->nareas, why);
	}
	if (ok && w.pos != w.len) {
		*why = "trailing bytes";
		ok = false;
	}
	if (!ok) {
		ix->npts = save_pts;
		ix->nrings = save_rings;
		layer->npolys = save_polys;
		return false;
	}
	grow((void **)&ix->areas, &ix->capareas, ix->nareas + 1,
	    sizeof(*ix->areas));
	ix->areas[ix->nareas].community = xstrdup(community);
	ix->areas[ix->nareas].cell = cell != NULL ? xstrdup(cell) : NULL;
	ix->nareas++;
	return true;
}

/* ---- the bucket grid ------------------------------------------------------ */

static uint32_t
bucket_of(double v, double min, double width, uint32_t n)
{
	double b = floor((v - min) / width);

	if (!(b >= 0))
		return 0;
	if (b >= (double)n)
		return n - 1;
	return (uint32_t)b;
}

static void
layer_build(struct lc_layer *l)
{
	uint32_t g;
	size_t total = 0;

	if (l->npolys == 0)
		return;
	l->minx = l->miny = INFINITY;
	l->maxx = l->maxy = -INFINITY;
	for (size_t i = 0; i < l->npolys; i++) {
		l->minx = fmin(l->minx, l->polys[i].minx);
		l->miny = fmin(l->miny, l->polys[i].miny);
		l->maxx = fmax(l->maxx, l->polys[i].maxx);
		l->maxy = fmax(l->maxy, l->polys[i].maxy);
	}
	g = (uint32_t)(2 * sqrt((double)l->npolys));
	if (g < LOCATE_GRID_MIN)
		g = LOCATE_GRID_MIN;
	if (g > LOCATE_GRID_MAX)
		g = LOCATE_GRID_MAX;
	l->gx = l->gy = g;
	/* A degenerate extent still gets buckets of a positive size. */
	l->bw = fmax((l->maxx - l->minx) / g, 1e-9);
	l->bh = fmax((l->maxy - l->miny) / g, 1e-9);
	l->start = xcalloc((size_t)g * g + 1, sizeof(*l->start));
	/* Two passes: count per bucket, then fill. */
	for (int pass = 0; pass < 2; pass++) {
		uint32_t *fill = NULL;

		if (pass == 1) {
			for (size_t b = 0; b < (size_t)g * g; b++)
				l->start[b + 1] += l->start[b];
			total = l->start[(size_t)g * g];
			l->items = xcalloc(total ? total : 1,
			    sizeof(*l->items));
			fill = xcalloc((size_t)g * g, sizeof(*fill));
		}
		for (size_t i = 0; i < l->npolys; i++) {
			const struct lc_poly *p = &l->polys[i];
			uint32_t x0 = bucket_of(p->minx, l->minx, l->bw, g),
			    x1 = bucket_of(p->maxx, l->minx, l->bw, g),
			    y0 = bucket_of(p->miny, l->miny, l->bh, g),
			    y1 = bucket_of(p->maxy, l->miny, l->bh, g);

			for (uint32_t y = y0; y <= y1; y++)
				for (uint32_t x = x0; x <= x1; x++) {
					size_t b = (size_t)y * g + x;

					if (pass == 0)
						l->start[b + 1]++;
					else
						l->items[l->start[b] +
						    fill[b]++] = (uint32_t)i;
				}
		}
		free(fill);
	}
}

void
locate_index_build(struct locate_index *ix)
{
	layer_build(&ix->cells);
	layer_build(&ix->comms);
}

/* ---- point in polygon ----------------------------------------------------- */

enum pip { PIP_OUT, PIP_IN, PIP_EDGE };

/* PostGIS's lw_segment_side: < 0 left of p1->p2, > 0 right, 0 on the
 * line; the same products in the same order, so that a point is on an edge
 * here exactly when it is there. */
static int
segment_side(double x1, double y1, double x2, double y2, double qx,
    double qy)
{
	double s = (qx - x1) * (y2 - y1) - (x2 - x1) * (qy - y1);

	return s < 0 ? -1 : s > 0 ? 1 : 0;
}

/* PostGIS's lw_pt_in_seg, for a point known to be on the line. */
static bool
pt_in_seg(double px, double py, double x1, double y1, double x2, double y2)
{
	return (x1 <= px && px < x2) || (x1 >= px && px > x2) ||
	    (y1 <= py && py < y2) || (y1 >= py && py > y2);
}

/* Winding number with the boundary first, as PostGIS's
 * ptarray_contains_point_partial. Rings are closed (last = first). */
static enum pip
ring_test(const double *pts, uint32_t n, double x, double y)
{
	int wn = 0;

	for (uint32_t i = 0; i + 1 < n; i++) {
		double x1 = pts[2 * i], y1 = pts[2 * i + 1];
		double x2 = pts[2 * i + 2], y2 = pts[2 * i + 3];
		int s;

		/* Plain comparisons, not fmax/fmin: those are calls into libm
		 * (they must honour NaN, which a loaded ring never holds), and
		 * this loop is most of the daemon's time at a high push rate. */
		if ((y > y1 && y > y2) || (y < y1 && y < y2))
			continue;
		if (x1 == x2 && y1 == y2)
			continue;
		s = segment_side(x1, y1, x2, y2, x, y);
		if (s == 0 && pt_in_seg(x, y, x1, y1, x2, y2))
			return PIP_EDGE;
		if (s < 0 && y1 <= y && y < y2)
			wn++;
		else if (s > 0 && y2 <= y && y < y1)
			wn--;
	}
	return wn != 0 ? PIP_IN : PIP_OUT;
}

/* Closed polygon: inside or on its boundary (a hole's edge included). */
static bool
poly_contains(const struct locate_index *ix, const struct lc_poly *p,
    double x, double y)
{
	const struct lc_ring *r = &ix->rings[p->ring0];
	enum pip outer;

	if (x < p->minx || x > p->maxx || y < p->miny || y > p->maxy)
		return false;
	outer = ring_test(ix->pts + 2 * (size_t)r->first, r->n, x, y);
	if (outer == PIP_OUT)
		return false;
	if (outer == PIP_EDGE)
		return true;
	for (uint32_t h = 1; h < p->nrings; h++) {
		r = &ix->rings[p->ring0 + h];
		if (ring_test(ix->pts + 2 * (size_t)r->first, r->n, x, y) ==
		    PIP_IN)
			return false;
	}
	return true;
}

/* The lowest key (cell id, or community id) among the areas of the layer
 * whose polygons contain the point; -1 when none does. */
static long
layer_find(const struct locate_index *ix, const struct lc_layer *l,
    double x, double y)
{
	const char *best = NULL;
	long found = -1;
	size_t b;

	if (l->gx == 0 || x < l->minx || x > l->maxx || y < l->miny ||
	    y > l->maxy)
		return -1;
	b = (size_t)bucket_of(y, l->miny, l->bh, l->gy) * l->gx +
	    bucket_of(x, l->minx, l->bw, l->gx);
	for (uint32_t k = l->start[b]; k < l->start[b + 1]; k++) {
		const struct lc_poly *p = &l->polys[l->items[k]];
		const struct lc_area *a = &ix->areas[p->area];
		const char *key = a->cell != NULL ? a->cell : a->community;

		if (best != NULL && strcmp(key, best) >= 0)
			continue;
		if (poly_contains(ix, p, x, y)) {
			best = key;
			found = (long)p->area;
		}
	}
	return found;
}

bool
locate_index_find(const struct locate_index *ix, double lon, double lat,
    const char **community, const char **cell)
{
	long a;

	*community = *cell = NULL;
	if (!(lon >= -180 && lon <= 180 && lat >= -90 && lat <= 90))
		return false;
	if ((a = layer_find(ix, &ix->cells, lon, lat)) >= 0) {
		*community = ix->areas[a].community;
		*cell = ix->areas[a].cell;
		return true;
	}
	if ((a = layer_find(ix, &ix->comms, lon, lat)) >= 0) {
		*community = ix->areas[a].community;
		return true;
	}
	return false;
}

struct locate_index *
locate_index_new(void)
{
	return xcalloc(1, sizeof(struct locate_index));
}

size_t
locate_index_areas(const struct locate_index *ix)
{
	return ix->nareas;
}

static void
layer_free(struct lc_layer *l)
{
	free(l->polys);
	free(l->start);
	free(l->items);
}

void
locate_index_free(struct locate_index *ix)
{
	if (ix == NULL)
		return;
	for (size_t i = 0; i < ix->nareas; i++) {
		free(ix->areas[i].community);
		free(ix->areas[i].cell);
	}
	free(ix->areas);
	free(ix->pts);
	free(ix->rings);
	layer_free(&ix->cells);
	layer_free(&ix->comms);
	free(ix);
}

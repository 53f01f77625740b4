/* test_locate.c - the in-memory point-in-cell index: WKB, edges, holes, ties, hostile input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "locate.h"
#include "util.h"

/* ---- WKB in hex, written here by hand ------------------------------------ */

struct hexbuf {
	char s[65536];
	size_t n;
};

static void
put_bytes(struct hexbuf *b, const uint8_t *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		assert_true(b->n + 2 < sizeof(b->s));
		b->s[b->n++] = digits[p[i] >> 4];
		b->s[b->n++] = digits[p[i] & 15];
	}
	b->s[b->n] = '\0';
}

static void
put_u32(struct hexbuf *b, uint32_t v, bool le)
{
	uint8_t x[4];

	for (int i = 0; i < 4; i++)
		x[le ? i : 3 - i] = (uint8_t)(v >> (8 * i));
	put_bytes(b, x, 4);
}

static void
put_double(struct hexbuf *b, double d, bool le)
{
	uint8_t x[8];
	uint64_t v;

	memcpy(&v, &d, sizeof(v));
	for (int i = 0; i < 8; i++)
		x[le ? i : 7 - i] = (uint8_t)(v >> (8 * i));
	put_bytes(b, x, 8);
}

static void
put_header(struct hexbuf *b, uint32_t type, bool le)
{
	uint8_t order = le ? 1 : 0;

	put_bytes(b, &order, 1);
	put_u32(b, type, le);
}

/* An axis-aligned rectangle as a closed ring (counter-clockwise). */
static void
put_rect_ring(struct hexbuf *b, double x0, double y0, double x1, double y1,
    bool le)
{
	put_u32(b, 5, le);
	put_double(b, x0, le); put_double(b, y0, le);
	put_double(b, x1, le); put_double(b, y0, le);
	put_double(b, x1, le); put_double(b, y1, le);
	put_double(b, x0, le); put_double(b, y1, le);
	put_double(b, x0, le); put_double(b, y0, le);
}

/* POLYGON of a rectangle, optionally with a rectangular hole. */
static const char *
rect(struct hexbuf *b, double x0, double y0, double x1, double y1)
{
	b->n = 0;
	put_header(b, 3, true);
	put_u32(b, 1, true);
	put_rect_ring(b, x0, y0, x1, y1, true);
	return b->s;
}

static const char *
rect_with_hole(struct hexbuf *b, double x0, double y0, double x1, double y1,
    double hx0, double hy0, double hx1, double hy1)
{
	b->n = 0;
	put_header(b, 3, true);
	put_u32(b, 2, true);
	put_rect_ring(b, x0, y0, x1, y1, true);
	put_rect_ring(b, hx0, hy0, hx1, hy1, true);
	return b->s;
}

/* MULTIPOLYGON of two rectangles, big-endian. */
static const char *
two_rects_be(struct hexbuf *b, double ax0, double ay0, double ax1, double ay1,
    double bx0, double by0, double bx1, double by1)
{
	b->n = 0;
	put_header(b, 6, false);
	put_u32(b, 2, false);
	put_header(b, 3, false);
	put_u32(b, 1, false);
	put_rect_ring(b, ax0, ay0, ax1, ay1, false);
	put_header(b, 3, false);
	put_u32(b, 1, false);
	put_rect_ring(b, bx0, by0, bx1, by1, false);
	return b->s;
}

static void
add_ok(struct locate_index *ix, const char *comm, const char *cell,
    const char *hex)
{
	const char *why;

	if (!locate_index_add(ix, comm, cell, hex, &why))
		fail_msg("add %s/%s: %s", comm, cell ? cell : "-", why);
}

static void
expect_at(const struct locate_index *ix, double x, double y,
    const char *comm, const char *cell)
{
	const char *c, *k;
	bool found = locate_index_find(ix, x, y, &c, &k);

	if (comm == NULL) {
		if (found)
			fail_msg("(%g, %g): expected outside, got %s/%s", x, y,
			    c, k ? k : "-");
		return;
	}
	if (!found)
		fail_msg("(%g, %g): expected %s/%s, got outside", x, y, comm,
		    cell ? cell : "-");
	assert_string_equal(c, comm);
	if (cell == NULL)
		assert_null(k);
	else if (k == NULL)
		fail_msg("(%g, %g): expected cell %s, got none", x, y, cell);
	else
		assert_string_equal(k, cell);
}

/* ---- tests ------------------------------------------------------------------ */

/* Two cells sharing the edge x = 9.51; the lower id wins on it, whatever
 * the order they were added in, and each keeps its own inside. */
static void
test_shared_edge_goes_to_the_lowest_id(void **state)
{
	struct hexbuf b;

	(void)state;
	for (int order = 0; order < 2; order++) {
		struct locate_index *ix = locate_index_new();

		add_ok(ix, "C1", NULL, rect(&b, 9.50, 47.10, 9.52, 47.12));
		if (order == 0) {
			add_ok(ix, "C1", "C1-002",
			    rect(&b, 9.50, 47.10, 9.51, 47.12));
			add_ok(ix, "C1", "C1-001",
			    rect(&b, 9.51, 47.10, 9.52, 47.12));
		} else {
			add_ok(ix, "C1", "C1-001",
			    rect(&b, 9.51, 47.10, 9.52, 47.12));
			add_ok(ix, "C1", "C1-002",
			    rect(&b, 9.50, 47.10, 9.51, 47.12));
		}
		locate_index_build(ix);
		expect_at(ix, 9.505, 47.11, "C1", "C1-002");
		expect_at(ix, 9.515, 47.11, "C1", "C1-001");
		/* on the shared edge and its end points */
		expect_at(ix, 9.51, 47.11, "C1", "C1-001");
		expect_at(ix, 9.51, 47.10, "C1", "C1-001");
		expect_at(ix, 9.51, 47.12, "C1", "C1-001");
		/* on an outer edge and corner: closed, as ST_Intersects */
		expect_at(ix, 9.50, 47.11, "C1", "C1-002");
		expect_at(ix, 9.50, 47.10, "C1", "C1-002");
		expect_at(ix, 9.52, 47.12, "C1", "C1-001");
		/* just outside */
		expect_at(ix, 9.4999999, 47.11, NULL, NULL);
		expect_at(ix, 9.515, 47.1200001, NULL, NULL);
		locate_index_free(ix);
	}
}

/* A point in a community but in none of its cells has the community and no
 * cell; outside every community it is outside; absurd coordinates too. */
static void
test_community_without_cell_and_outside(void **state)
{
	struct hexbuf b;
	struct locate_index *ix = locate_index_new();

	(void)state;
	add_ok(ix, "A", NULL, rect(&b, 0, 0, 10, 10));
	add_ok(ix, "B", NULL, rect(&b, 10, 0, 20, 10));
	add_ok(ix, "A", "A-001", rect(&b, 0, 0, 5, 5));
	locate_index_build(ix);
	expect_at(ix, 1, 1, "A", "A-001");
	expect_at(ix, 7, 7, "A", NULL);
	expect_at(ix, 15, 5, "B", NULL);
	expect_at(ix, 10, 5, "A", NULL);	/* shared: the lower id */
	expect_at(ix, 25, 5, NULL, NULL);
	expect_at(ix, -1, 5, NULL, NULL);
	expect_at(ix, 200, 5, NULL, NULL);
	expect_at(ix, 0.0 / 0.0, 5, NULL, NULL);
	locate_index_free(ix);
}

/* A hole belongs to no cell; its boundary belongs to the cell. */
static void
test_holes(void **state)
{
	struct hexbuf b;
	struct locate_index *ix = locate_index_new();

	(void)state;
	add_ok(ix, "M", NULL, rect(&b, 0, 0, 10, 10));
	add_ok(ix, "M", "M-ring", rect_with_hole(&b, 0, 0, 10, 10, 4, 4, 6, 6));
	locate_index_build(ix);
	expect_at(ix, 1, 1, "M", "M-ring");
	expect_at(ix, 5, 5, "M", NULL);
	expect_at(ix, 4, 5, "M", "M-ring");
	expect_at(ix, 6, 6, "M", "M-ring");
	locate_index_free(ix);
}

/* MultiPolygons (big-endian here) count each of their parts. */
static void
test_multipolygon_big_endian(void **state)
{
	struct hexbuf b;
	struct locate_index *ix = locate_index_new();

	(void)state;
	add_ok(ix, "X", NULL, two_rects_be(&b, 0, 0, 1, 1, 5, 5, 6, 6));
	add_ok(ix, "X", "X-001", two_rects_be(&b, 0, 0, 1, 1, 5, 5, 6, 6));
	locate_index_build(ix);
	expect_at(ix, 0.5, 0.5, "X", "X-001");
	expect_at(ix, 5.5, 5.5, "X", "X-001");
	expect_at(ix, 3, 3, NULL, NULL);
	assert_int_equal(locate_index_areas(ix), 2);
	locate_index_free(ix);
}

/* A lattice of 20 x 20 unit cells against the arithmetic answer: every
 * point, on lines and corners included, in exactly the lowest-id cell whose
 * closed square holds it. Ids are numbered so that the lowest is not always
 * the first added. */
static void
test_lattice_against_arithmetic(void **state)
{
	struct hexbuf b;
	struct locate_index *ix = locate_index_new();
	char id[32];

	(void)state;
	add_ok(ix, "L", NULL, rect(&b, 0, 0, 20, 20));
	for (int y = 0; y < 20; y++)
		for (int x = 0; x < 20; x++) {
			snprintf(id, sizeof(id), "L-%03d", 399 - (y * 20 + x));
			add_ok(ix, "L", id, rect(&b, x, y, x + 1, y + 1));
		}
	locate_index_build(ix);
	for (int i = 0; i <= 80; i++)
		for (int j = 0; j <= 80; j++) {
			double px = i * 0.25, py = j * 0.25;
			int best = -1;
			const char *c, *k;

			for (int y = 0; y < 20; y++)
				for (int x = 0; x < 20; x++) {
					int n = 399 - (y * 20 + x);

					if (px >= x && px <= x + 1 && py >= y &&
					    py <= y + 1 && (best < 0 || n < best))
						best = n;
				}
			assert_true(locate_index_find(ix, px, py, &c, &k));
			assert_non_null(k);
			snprintf(id, sizeof(id), "L-%03d", best);
			if (strcmp(k, id) != 0)
				fail_msg("(%g, %g): %s, expected %s", px, py, k,
				    id);
		}
	locate_index_free(ix);
}

/* Malformed or oversized WKB is refused with a reason and leaves the index
 * as it was. */
static void
test_hostile_wkb(void **state)
{
	struct hexbuf b;
	struct locate_index *ix = locate_index_new();
	const char *why;
	static char trunc[sizeof(((struct hexbuf *)0)->s) + 4];
	static const char *const bad[] = {
		"",
		"zz",
		"01",
		"0101000000000000000000f03f000000000000f03f",	/* a point */
		"0103000000ffffffff",				/* rings */
		"010300000001000000ffffff7f",			/* points */
		"01030000000100000005000000",			/* no points */
		"0206000000",					/* order */
	};

	(void)state;
	add_ok(ix, "A", "A-1", rect(&b, 0, 0, 1, 1));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		assert_false(locate_index_add(ix, "A", "bad", bad[i], &why));
		assert_non_null(why);
		assert_true(why[0] != '\0');
	}
	/* a good polygon cut short, and one with bytes after it */
	rect(&b, 2, 2, 3, 3);
	snprintf(trunc, sizeof(trunc), "%.*s", (int)(b.n - 2), b.s);
	assert_false(locate_index_add(ix, "A", "cut", trunc, &why));
	memcpy(trunc, b.s, b.n);
	memcpy(trunc + b.n, "00", 3);
	assert_false(locate_index_add(ix, "A", "long", trunc, &why));
	locate_index_build(ix);
	assert_int_equal(locate_index_areas(ix), 1);
	expect_at(ix, 0.5, 0.5, "A", "A-1");
	expect_at(ix, 2.5, 2.5, NULL, NULL);
	locate_index_free(ix);
}

/* An empty index answers outside everywhere. */
static void
test_empty(void **state)
{
	struct locate_index *ix = locate_index_new();

	(void)state;
	locate_index_build(ix);
	expect_at(ix, 0, 0, NULL, NULL);
	locate_index_free(ix);
	locate_index_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shared_edge_goes_to_the_lowest_id),
		cmocka_unit_test(test_community_without_cell_and_outside),
		cmocka_unit_test(test_holes),
		cmocka_unit_test(test_multipolygon_big_endian),
		cmocka_unit_test(test_lattice_against_arithmetic),
		cmocka_unit_test(test_hostile_wkb),
		cmocka_unit_test(test_empty),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

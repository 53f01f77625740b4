/* test_mergekeys.c - the merge tiles that group commit predicts: the SQL's
 * tiles are always among them, items that can merge always meet, and an
 * item whose tiles are unknown holds back its own task type only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>

#include <cmocka.h>

#include "mergekeys.h"

static bool
meets(const struct mergekeys *a, const struct mergekeys *b)
{
	struct mergekeys_set s;
	bool r;

	mergekeys_set_init(&s);
	mergekeys_set_add(&s, a);
	r = mergekeys_set_meets(&s, b);
	mergekeys_set_free(&s);
	return r;
}

static bool
has_key(const struct mergekeys *k, uint64_t key)
{
	for (size_t i = 0; i < k->tiles.n; i++)
		if (k->tiles.v[i] == key)
			return true;
	return false;
}

static uint64_t rnd_state = 88172645463325252ull;

static double
rnd01(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return (double)(rnd_state >> 11) / 9007199254740992.0;
}

/* PostgreSQL's radians(): a multiplication by this constant (float.c),
 * not a division by 180 as the daemon writes it. */
#define PG_RADIANS_PER_DEGREE 0.0174532925199432957692

/* gridd_feed_push's tiles (003_feed.sql), computed here the way the SQL
 * writes them, must all be among the predicted keys: at random points,
 * and with the box's edges on a tile's edge, where the SQL's rounding
 * (its half-width a few ulps off the daemon's either way) decides. */
static void
test_sql_tiles_are_predicted(void **state)
{
	static const double radii[] = { 1, 50, 499, 500, 501, 1500 };

	(void)state;
	for (size_t ri = 0; ri < sizeof(radii) / sizeof(radii[0]); ri++) {
		double r = radii[ri];
		double tile = 0.01 * fmax(1, ceil(r / 500.0));
		double dlat = r / 110540.0;

		for (int i = 0; i < 6000; i++) {
			struct mergekeys k = { 0 };
			double x = -180 + 360 * rnd01(), y = -70 + 140 * rnd01();
			double dx, off = 1 + ((i % 3) - 1) * 8 * DBL_EPSILON;

			dlat = r / 110540.0;
			if (i % 2 == 0) {
				/* The box's low edges on tile edges. */
				dlat *= off;
				y = round(y / tile) * tile + dlat;
			}
			dx = r / (111320.0 * fmax(cos(y *
			    PG_RADIANS_PER_DEGREE), 0.01));
			if (i % 2 == 0) {
				dx *= off;
				x = round(x / tile) * tile + dx;
			}
			mergekeys_add_point(&k, "noise", x, y, r);
			mergekeys_finish(&k);
			assert_int_equal(k.any_types.n, 0);
			for (double gx = floor((x - dx) / tile);
			    gx <= floor((x + dx) / tile); gx++)
				for (double gy = floor((y - dlat) / tile);
				    gy <= floor((y + dlat) / tile); gy++)
					assert_true(has_key(&k, mergekeys_key(
					    "noise", (int64_t)gx, (int64_t)gy)));
			for (size_t j = 1; j < k.tiles.n; j++)
				assert_true(k.tiles.v[j - 1] < k.tiles.v[j]);
			mergekeys_free(&k);
		}
	}
}

/* Two items of one task type within the radius lock a common tile. */
static void
test_items_within_reach_meet(void **state)
{
	(void)state;
	for (int i = 0; i < 5000; i++) {
		struct mergekeys a = { 0 }, b = { 0 };
		double r = 50, x = 9.5 + 0.05 * rnd01(), y = 47.1 + 0.05 * rnd01();
		double ang = 2 * M_PI * rnd01(), d = r * rnd01();
		double x2 = x + d * cos(ang) / (111320.0 * cos(y * M_PI / 180));
		double y2 = y + d * sin(ang) / 110540.0;

		mergekeys_add_point(&a, "noise", x, y, r);
		mergekeys_add_point(&b, "noise", x2, y2, r);
		assert_true(meets(&a, &b));
		mergekeys_free(&a);
		mergekeys_free(&b);
	}
}

static void
test_disjoint_requests_do_not_meet(void **state)
{
	struct mergekeys a = { 0 }, b = { 0 }, c = { 0 }, off = { 0 };

	(void)state;
	/* Another task type at the same spot; the same type 5 km away. */
	mergekeys_add_point(&a, "noise", 9.52, 47.14, 50);
	mergekeys_add_point(&b, "garbage", 9.52, 47.14, 50);
	mergekeys_add_point(&c, "noise", 9.52 + 0.066, 47.14, 50);
	assert_false(meets(&a, &b));
	assert_false(meets(&a, &c));
	assert_true(meets(&a, &a));
	/* Merging off: no keys, nothing met. */
	mergekeys_add_point(&off, "noise", 9.52, 47.14, 0);
	assert_int_equal(mergekeys_count(&off), 0);
	assert_false(meets(&a, &off));
	assert_false(meets(&off, &a));
	mergekeys_free(&a);
	mergekeys_free(&b);
	mergekeys_free(&c);
	mergekeys_free(&off);
}

/* An item located by building, a point that is not a number, a box too
 * large to list: any tile of its task type, and of no other. */
static void
test_unknown_tiles_hold_back_their_task_type(void **state)
{
	struct mergekeys bldg = { 0 }, a = { 0 }, far = { 0 }, other = { 0 };
	struct mergekeys none = { 0 }, nan_pt = { 0 }, pole = { 0 };
	struct mergekeys mixed = { 0 };

	(void)state;
	mergekeys_add_type(&bldg, "noise");
	mergekeys_add_point(&a, "noise", 9.52, 47.14, 50);
	mergekeys_add_point(&far, "noise", -70, -30, 50);
	mergekeys_add_point(&other, "garbage", 9.52, 47.14, 50);
	mergekeys_finish(&bldg);
	assert_true(meets(&bldg, &a));
	assert_true(meets(&a, &bldg));
	assert_true(meets(&bldg, &far));
	assert_true(meets(&far, &bldg));
	assert_true(meets(&bldg, &bldg));
	assert_false(meets(&bldg, &other));
	assert_false(meets(&other, &bldg));
	/* A transaction without merge tiles (grid codes only) waits for
	 * nobody, and nobody for it. */
	assert_false(meets(&none, &bldg));
	assert_false(meets(&bldg, &none));
	mergekeys_add_point(&nan_pt, "noise", NAN, 1, 50);
	mergekeys_add_point(&pole, "noise", 0, 89.9, 5000);
	assert_int_equal(nan_pt.tiles.n, 0);
	assert_int_equal(pole.tiles.n, 0);
	assert_true(meets(&nan_pt, &far) && meets(&pole, &far));
	assert_false(meets(&nan_pt, &other) || meets(&pole, &other));
	/* A push with tiles of one type and a building of another meets the
	 * other type's tiles anywhere, and its own type's only there. */
	mergekeys_add_point(&mixed, "noise", 100, 10, 50);
	mergekeys_add_type(&mixed, "garbage");
	mergekeys_finish(&mixed);
	assert_true(meets(&mixed, &other) && meets(&other, &mixed));
	assert_false(meets(&mixed, &a) || meets(&a, &mixed));
	assert_false(meets(&mixed, &far) || meets(&far, &mixed));
	mergekeys_free(&bldg);
	mergekeys_free(&a);
	mergekeys_free(&far);
	mergekeys_free(&other);
	mergekeys_free(&nan_pt);
	mergekeys_free(&pole);
	mergekeys_free(&mixed);
}

static void
test_set_grows(void **state)
{
	struct mergekeys big = { 0 }, probe = { 0 };
	struct mergekeys_set s;

	(void)state;
	for (int i = 0; i < 20000; i++)
		mergekeys_add_point(&big, "noise", -170 + 0.03 * i, 10, 50);
	mergekeys_set_init(&s);
	mergekeys_set_add(&s, &big);
	mergekeys_set_add(&s, &big);	/* repeats are stored once */
	assert_true(s.n <= mergekeys_count(&big) && s.n >= 20000);
	for (int i = 0; i < 20000; i += 997) {
		mergekeys_add_point(&probe, "noise", -170 + 0.03 * i, 10, 50);
		assert_true(mergekeys_set_meets(&s, &probe));
		mergekeys_free(&probe);
	}
	mergekeys_add_point(&probe, "noise", -170 + 0.03 * 20000 + 0.015, 10,
	    50);
	assert_false(mergekeys_set_meets(&s, &probe));
	mergekeys_free(&probe);
	mergekeys_set_free(&s);
	mergekeys_free(&big);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sql_tiles_are_predicted),
		cmocka_unit_test(test_items_within_reach_meet),
		cmocka_unit_test(test_disjoint_requests_do_not_meet),
		cmocka_unit_test(test_unknown_tiles_hold_back_their_task_type),
		cmocka_unit_test(test_set_grows),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

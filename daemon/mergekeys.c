/* mergekeys.c - the merge tiles an ingest transaction will lock (pure). */

/*
 * gridd_feed_push serialises merges across transactions with advisory
 * locks per (task type, tile), taken in key order before its merge search
 * (003_feed.sql): an item locks every tile that the box of its merge
 * search touches.  Two transactions whose items share a key therefore run
 * one after the other, the second waiting for the first one's commit.
 * Group commit uses the same tiles to decide whether a transaction may
 * start beside the ones in flight: it would only wait.
 *
 * The locks in the database stay the safety; these keys only predict
 * them.  A key here is a 64-bit hash of (task type, tile), and the box is
 * widened by a hair, so that rounding or a hash collision can only make
 * two requests look in conflict when they are not (they then run one
 * after the other, as with one transaction in flight), never the reverse.
 * An item whose tiles are not known here (located by building: only the
 * database has the point; a point that is not a number; a box too large
 * to list) stands for every tile of its task type, so it holds back the
 * pushes of that type only.
 */
#include "mergekeys.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* As 003_feed.sql: metres per degree of latitude, and of longitude at
 * the equator; the box is widened by WIDEN_DEG degrees each way, far more
 * than the rounding of radians() against the multiplication here. */
#define M_PER_DEG_LAT 110540.0
#define M_PER_DEG_LON 111320.0
#define WIDEN_DEG 1e-9

static uint64_t
mix64(uint64_t x)
{
	/* splitmix64's finaliser */
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ull;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x;
}

static uint64_t
str_hash(const char *s)
{
	return fnv1a64(s != NULL ? s : "");
}

uint64_t
mergekeys_key(const char *tt, int64_t gx, int64_t gy)
{
	return mix64(str_hash(tt) ^ mix64((uint64_t)gx ^
	    mix64((uint64_t)gy + 0x9e3779b97f4a7c15ull)));
}

/* The marks of a task type in a set: it has some tile, it may have any. */
#define MARK_SOME 0x5bd1e9955bd1e995ull
#define MARK_ANY 0xc2b2ae3d27d4eb4full

static void
vec_push(struct mergekeys_vec *a, uint64_t key)
{
	if (a->n == a->cap) {
		a->cap = a->cap ? 2 * a->cap : 16;
		a->v = xreallocarray(a->v, a->cap, sizeof(*a->v));
	}
	a->v[a->n++] = key;
}

void
mergekeys_add_type(struct mergekeys *k, const char *tt)
{
	vec_push(&k->any_types, str_hash(tt));
}

void
mergekeys_add_point(struct mergekeys *k, const char *tt, double lon,
    double lat, double radius_m)
{
	double tile, dlat, dlon;
	double gx0, gx1, gy0, gy1;

	if (!(radius_m > 0))
		return;
	if (!isfinite(lon) || !isfinite(lat) || !isfinite(radius_m)) {
		mergekeys_add_type(k, tt);
		return;
	}
	tile = 0.01 * fmax(1.0, ceil(radius_m / 500.0));
	dlat = radius_m / M_PER_DEG_LAT + WIDEN_DEG;
	dlon = radius_m / (M_PER_DEG_LON * fmax(cos(lat * M_PI / 180.0),
	    0.01)) + WIDEN_DEG;
	gx0 = floor((lon - dlon) / tile);
	gx1 = floor((lon + dlon) / tile);
	gy0 = floor((lat - dlat) / tile);
	gy1 = floor((lat + dlat) / tile);
	if ((gx1 - gx0 + 1) * (gy1 - gy0 + 1) > MERGEKEYS_ITEM_MAX) {
		mergekeys_add_type(k, tt);
		return;
	}
	vec_push(&k->tile_types, str_hash(tt));
	for (double gx = gx0; gx <= gx1; gx++)
		for (double gy = gy0; gy <= gy1; gy++)
			vec_push(&k->tiles, mergekeys_key(tt, (int64_t)gx,
			    (int64_t)gy));
}

static int
key_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void
vec_unique(struct mergekeys_vec *a)
{
	size_t n = 0;

	if (a->n < 2)
		return;
	qsort(a->v, a->n, sizeof(*a->v), key_cmp);
	for (size_t i = 0; i < a->n; i++)
		if (n == 0 || a->v[i] != a->v[n - 1])
			a->v[n++] = a->v[i];
	a->n = n;
}

void
mergekeys_finish(struct mergekeys *k)
{
	vec_unique(&k->tiles);
	vec_unique(&k->tile_types);
	vec_unique(&k->any_types);
}

size_t
mergekeys_count(const struct mergekeys *k)
{
	return k->tiles.n + k->tile_types.n + k->any_types.n;
}

void
mergekeys_free(struct mergekeys *k)
{
	free(k->tiles.v);
	free(k->tile_types.v);
	free(k->any_types.v);
	memset(k, 0, sizeof(*k));
}

void
mergekeys_set_init(struct mergekeys_set *s)
{
	memset(s, 0, sizeof(*s));
}

static size_t
set_find(const struct mergekeys_set *s, uint64_t key)
{
	size_t i = (size_t)mix64(key) & s->mask;

	while (s->slot[i] != 0 && s->slot[i] != key)
		i = (i + 1) & s->mask;
	return i;
}

static bool
set_has(const struct mergekeys_set *s, uint64_t key)
{
	key = key != 0 ? key : 1;
	return s->n > 0 && s->slot[set_find(s, key)] == key;
}

static void
set_grow(struct mergekeys_set *s, size_t want)
{
	struct mergekeys_set bigger;
	size_t slots = 64;

	while (slots < 2 * want)
		slots *= 2;
	if (s->slot != NULL && slots <= s->mask + 1)
		return;
	bigger.slot = xcalloc(slots, sizeof(*bigger.slot));
	bigger.mask = slots - 1;
	bigger.n = s->n;
	for (size_t i = 0; s->slot != NULL && i <= s->mask; i++)
		if (s->slot[i] != 0)
			bigger.slot[set_find(&bigger, s->slot[i])] =
			    s->slot[i];
	free(s->slot);
	*s = bigger;
}

static void
set_put(struct mergekeys_set *s, uint64_t key)
{
	size_t j;

	key = key != 0 ? key : 1;
	j = set_find(s, key);
	if (s->slot[j] == 0) {
		s->slot[j] = key;
		s->n++;
	}
}

void
mergekeys_set_add(struct mergekeys_set *s, const struct mergekeys *k)
{
	if (mergekeys_count(k) == 0)
		return;
	set_grow(s, s->n + mergekeys_count(k));
	for (size_t i = 0; i < k->tiles.n; i++)
		set_put(s, k->tiles.v[i]);
	for (size_t i = 0; i < k->tile_types.n; i++)
		set_put(s, mix64(k->tile_types.v[i] ^ MARK_SOME));
	for (size_t i = 0; i < k->any_types.n; i++)
		set_put(s, mix64(k->any_types.v[i] ^ MARK_ANY));
}

bool
mergekeys_set_meets(const struct mergekeys_set *s, const struct mergekeys *k)
{
	if (s->n == 0)
		return false;
	for (size_t i = 0; i < k->tiles.n; i++)
		if (set_has(s, k->tiles.v[i]))
			return true;
	/* Our tiles of a type of which they may lock any tile. */
	for (size_t i = 0; i < k->tile_types.n; i++)
		if (set_has(s, mix64(k->tile_types.v[i] ^ MARK_ANY)))
			return true;
	/* Any tile of a type of which they lock some, or any. */
	for (size_t i = 0; i < k->any_types.n; i++)
		if (set_has(s, mix64(k->any_types.v[i] ^ MARK_SOME)) ||
		    set_has(s, mix64(k->any_types.v[i] ^ MARK_ANY)))
			return true;
	return false;
}

void
mergekeys_set_free(struct mergekeys_set *s)
{
	free(s->slot);
	memset(s, 0, sizeof(*s));
}

/* mergekeys.h - the merge tiles an ingest transaction will lock, so that
 * group commit can run transactions side by side only when they cannot
 * wait for each other (pure). */
#ifndef GRIDD_MERGEKEYS_H
#define GRIDD_MERGEKEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Tiles one item may touch before its request counts as touching all:
 * only a huge merge radius near a pole gets there. */
#define MERGEKEYS_ITEM_MAX 16

/* A request's (task type, tile) keys, as 64-bit hashes; all = it may lock
 * any tile (an item located by building, whose point only the database
 * knows, or one that touches too many tiles). */
struct mergekeys {
	uint64_t *v;
	size_t n, cap;
	bool all;
};

/* The keys of an item of task type tt at (lon, lat): every tile that
 * gridd_feed_push (003_feed.sql) locks for it with this merge radius,
 * widened by a hair so that rounding can only add tiles. */
void mergekeys_add_point(struct mergekeys *k, const char *tt, double lon,
    double lat, double radius_m);
/* The key of one tile: gx, gy as floor(lon / tile), floor(lat / tile). */
uint64_t mergekeys_key(const char *tt, int64_t gx, int64_t gy);
/* An item whose point is not known here. */
void mergekeys_add_all(struct mergekeys *k);
/* Once the request's items are in: each key once (many items of a push
 * share a tile), none when all. */
void mergekeys_finish(struct mergekeys *k);
void mergekeys_free(struct mergekeys *k);

/* A set of keys (open addressing), for one look at the queue. */
struct mergekeys_set {
	uint64_t *slot;		/* 0 = empty; key 0 is stored as 1 */
	size_t mask, n;
	bool all;
};

void mergekeys_set_init(struct mergekeys_set *s);
void mergekeys_set_add(struct mergekeys_set *s, const struct mergekeys *k);
/* Whether k shares a key with s (or either is "all"). */
bool mergekeys_set_meets(const struct mergekeys_set *s,
    const struct mergekeys *k) WUR;
void mergekeys_set_free(struct mergekeys_set *s);

#endif

/* mergekeys.h - the merge tiles an ingest transaction will lock, so that
 * group commit can run transactions side by side only when they cannot
 * wait for each other (pure). */
#ifndef GRIDD_MERGEKEYS_H
#define GRIDD_MERGEKEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Tiles one item may touch before it counts as touching every tile of its
 * task type: only a huge merge radius near a pole gets there. */
#define MERGEKEYS_ITEM_MAX 16

/* A growable array of 64-bit hashes. */
struct mergekeys_vec {
	uint64_t *v;
	size_t n, cap;
};

/* A request's merge locks as 64-bit hashes: the (task type, tile) keys of
 * its items, the task types they are of, and the task types of which it
 * may lock any tile (an item located by building, whose point only the
 * database knows, or one whose box is too large to list). */
struct mergekeys {
	struct mergekeys_vec tiles;
	struct mergekeys_vec tile_types;	/* task types of the tiles */
	struct mergekeys_vec any_types;		/* task types, any tile */
};

/* The keys of an item of task type tt at (lon, lat): every tile that
 * gridd_feed_push (003_feed.sql) locks for it with this merge radius,
 * widened by a hair so that rounding can only add tiles. */
void mergekeys_add_point(struct mergekeys *k, const char *tt, double lon,
    double lat, double radius_m);
/* An item of task type tt whose point is not known here. */
void mergekeys_add_type(struct mergekeys *k, const char *tt);
/* The key of one tile: gx, gy as floor(lon / tile), floor(lat / tile). */
uint64_t mergekeys_key(const char *tt, int64_t gx, int64_t gy);
/* Once the request's items are in: each key once (many items of a push
 * share a tile). */
void mergekeys_finish(struct mergekeys *k);
/* Keys held, for bounding the work of a look at the queue. */
size_t mergekeys_count(const struct mergekeys *k);
void mergekeys_free(struct mergekeys *k);

/* The locks of several requests (open addressing), for one look at the
 * queue: tiles, and a mark per task type for "some tile" and "any tile". */
struct mergekeys_set {
	uint64_t *slot;		/* 0 = empty; key 0 is stored as 1 */
	size_t mask, n;
};

void mergekeys_set_init(struct mergekeys_set *s);
void mergekeys_set_add(struct mergekeys_set *s, const struct mergekeys *k);
/* Whether a transaction with k's locks could wait for one with s's: a
 * shared tile, or a task type of which either side may lock any tile and
 * the other locks some. */
bool mergekeys_set_meets(const struct mergekeys_set *s,
    const struct mergekeys *k) WUR;
void mergekeys_set_free(struct mergekeys_set *s);

#endif

/* cellcache.h - the process's point-in-cell index, rebuilt from PostGIS whenever the grid changes. */
#ifndef GRIDD_CELLCACHE_H
#define GRIDD_CELLCACHE_H

#include <stdint.h>

struct locate_index;

/* LISTENs on gridd_grid and starts the first load. Until a load completes
 * the feed lets PostgreSQL locate. */
void cellcache_init(void);
/* Call after db_pool_free (a load in flight has failed by then). */
void cellcache_shutdown(void);
/* The index and the grid version it was built from; NULL when none is
 * loaded. Valid until the loop turn ends: a reload frees it. */
const struct locate_index *cellcache_current(int64_t *version);
/* PostgreSQL reported grid version v: reload when it is newer. */
void cellcache_seen_version(int64_t v);

#endif

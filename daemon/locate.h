/* locate.h - point-in-cell in memory: polygons from WKB, a bucket grid, PostGIS's boundary rule (pure). */
#ifndef GRIDD_LOCATE_H
#define GRIDD_LOCATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct locate_index;

struct locate_index *locate_index_new(void);
void locate_index_free(struct locate_index *ix);
/* Adds one area from its WKB in hex (Polygon or MultiPolygon, 2D, as
 * ST_AsBinary writes it): a current cell of community (cell != NULL) or a
 * community itself (cell == NULL). false with a reason on malformed or
 * oversized input; the index is then unchanged. */
bool locate_index_add(struct locate_index *ix, const char *community,
    const char *cell, const char *wkb_hex, const char **why) WUR;
/* Builds the bucket grid; call once after the last add. */
void locate_index_build(struct locate_index *ix);
/* The cell containing the point, as ST_Intersects(cell.geom, point) with
 * the lowest cell id (bytewise, COLLATE "C") when it lies on a shared edge;
 * else the community containing it (lowest id) with *cell = NULL; false
 * when it is outside every community. The strings belong to the index. */
bool locate_index_find(const struct locate_index *ix, double lon, double lat,
    const char **community, const char **cell);
size_t locate_index_areas(const struct locate_index *ix);

#endif

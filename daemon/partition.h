/* partition.h - divides one community's buildings into grid cells; pure, no I/O. */
#ifndef GRIDD_PARTITION_H
#define GRIDD_PARTITION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/*
 * The partitioner sees one community as arrays: buildings (planar metres,
 * households, kind, floor area), an undirected adjacency graph over them,
 * and optionally the cell label each building had before. It returns a
 * cell label per building and a description of every cell.
 *
 * Hard rules, in order: every cell is connected in the adjacency graph
 * (so different connected components never share a cell); households per
 * comprehensive cell lie in [min, max] unless the cell carries a flag that
 * says why they cannot; contiguous non-residential clusters above the
 * dedicated thresholds become dedicated cells. Then compact cells, then
 * as few moved buildings as possible when a previous assignment is given.
 * The same input always gives the same output, and an output fed back as
 * the previous assignment comes back unchanged.
 *
 * Thread safety: no global state; run communities on any threads.
 */

/* Caps on one community, checked before allocating. */
#define PART_MAX_BUILDINGS	(1 << 24)
#define PART_MAX_EDGES		(1 << 28)
#define PART_MAX_HOUSEHOLDS	1000000	/* per building */

enum part_kind {
	PART_KIND_RESIDENTIAL = 0,
	PART_KIND_COMMERCIAL,
	PART_KIND_INDUSTRIAL,
	PART_KIND_PUBLIC,
	PART_KIND_AGRICULTURAL,
	PART_KIND_OTHER,
	PART_KIND_UNKNOWN,
	PART_KIND_COUNT,
};

struct part_building {
	double x, y;		/* metres in any local planar projection */
	double area_m2;		/* floor area, >= 0 */
	int32_t households;	/* >= 0, at most PART_MAX_HOUSEHOLDS */
	uint8_t kind;		/* enum part_kind */
};

/* Undirected; self loops and duplicates are ignored. */
struct part_edge {
	uint32_t a, b;
};

struct part_params {
	int32_t min_households;		/* >= 1 */
	int32_t target_households;	/* in [min, max] */
	int32_t max_households;
	/* A connected cluster of commercial, industrial or public buildings
	 * without households becomes a dedicated cell when it has at least
	 * this many buildings or this much floor area; 0 disables either
	 * criterion, both 0 disables dedicated cells. */
	int32_t dedicated_min_buildings;
	double dedicated_min_area_m2;
};

struct part_input {
	const struct part_building *buildings;
	size_t n_buildings;
	const struct part_edge *edges;
	size_t n_edges;
	/* NULL for a fresh partition; else one label per building, any
	 * value >= 0 naming a previous cell, < 0 for a building that had
	 * none (new). Labels need not be dense. */
	const int32_t *prev;
	struct part_params params;
};

enum part_cell_kind {
	PART_CELL_COMPREHENSIVE = 0,	/* 综合网格: bounded by households */
	PART_CELL_DEDICATED,		/* 专属网格: non-residential cluster */
};

/* Why a cell is what it is; a comprehensive cell outside [min, max] always
 * carries PART_F_BELOW_MIN or PART_F_ABOVE_MAX and at least one reason. */
enum part_flag {
	PART_F_BELOW_MIN		= 1u << 0,
	PART_F_ABOVE_MAX		= 1u << 1,
	/* Reasons. */
	PART_F_COMMUNITY_BELOW_MIN	= 1u << 2,	/* whole community < min */
	PART_F_COMPONENT_BELOW_MIN	= 1u << 3,	/* the cell is an entire
							 * connected component */
	PART_F_ENCLOSED_BELOW_MIN	= 1u << 4,	/* cut off from the rest of
							 * its component by dedicated
							 * or oversized cells */
	PART_F_NO_HOUSEHOLDS		= 1u << 5,	/* nothing residential */
	PART_F_BUILDING_ABOVE_MAX	= 1u << 6,	/* one building over max */
	PART_F_INDIVISIBLE		= 1u << 7,	/* no cell count puts the
							 * area's total in bounds */
	PART_F_GRAPH_LIMITED		= 1u << 8,	/* the repair found no
							 * contiguous move, split,
							 * re-cut or merge that
							 * fixes it (stars, bridges,
							 * coarse household
							 * weights) */
};
#define PART_F_REASONS	(~(uint32_t)(PART_F_BELOW_MIN | PART_F_ABOVE_MAX))

struct part_cell {
	enum part_cell_kind kind;
	uint32_t flags;		/* enum part_flag bits */
	int64_t households;
	int32_t buildings;
	double area_m2;
	double cx, cy;		/* centroid of the buildings (unweighted) */
	/* Compactness: mean squared distance of the cell's buildings to its
	 * centroid (m^2) and the farthest building from it (m). */
	double msd_m2;
	double max_dist_m;
	int32_t prev;		/* previous label kept by this cell (largest
				 * overlap, one-to-one), -1 when created */
};

struct part_report {
	int32_t cells;
	int32_t comprehensive;
	int32_t dedicated;
	int32_t components;	/* of the adjacency graph */
	/* Over comprehensive cells (0 when there are none). */
	int64_t households_total;
	int64_t hh_min, hh_median, hh_max;
	int32_t out_of_bounds;	/* comprehensive cells outside [min, max] */
	int32_t flag_counts[16];	/* cells per flag bit (index = bit) */
	double msd_mean_m2;	/* mean of comprehensive cells' msd_m2 */
	/* Stability, against input.prev (all 0 for a fresh partition). */
	int32_t moved;		/* labelled before, now in a cell that does
				 * not keep that label */
	int32_t added;		/* no previous label */
	int32_t kept;		/* cells that keep a previous label */
	int32_t created;	/* cells with no previous label */
	int32_t retired;	/* previous labels kept by no cell */
};

struct part_result {
	int32_t *labels;	/* n_buildings, dense 0..n_cells-1 */
	size_t n_labels;
	struct part_cell *cells;
	size_t n_cells;
	struct part_report report;
};

/*
 * Partitions one community. Cells that keep a previous label come first,
 * ordered by that label; created cells follow north to south, then west
 * to east. False with a message in err (result untouched) on invalid
 * input: counts over the caps, edge endpoints out of range, negative or
 * oversized households, unknown kinds, non-finite coordinates or areas,
 * parameters not satisfying 1 <= min <= target <= max.
 */
bool part_run(const struct part_input *in, struct part_result *out,
    char *err, size_t errlen) WUR;
void part_result_free(struct part_result *res);

/* "residential", ... as in the building import; false if unknown. */
bool part_kind_parse(const char *name, enum part_kind *out) WUR;
const char *part_kind_name(enum part_kind kind);
/* Name of one flag bit ("component_below_min"), NULL if none. */
const char *part_flag_name(uint32_t bit);
/* Comma-separated names of flags into buf; returns buf. */
char *part_flags_format(uint32_t flags, char *buf, size_t len);

#endif

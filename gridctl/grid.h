/* grid.h - `gridctl grid show|map` and `gridctl partition`. */
#ifndef GRIDCTL_GRID_H
#define GRIDCTL_GRID_H

#include "session.h"

/* A partition of every community takes a while: its reply is awaited at
 * least this long whatever --timeout says. */
#define GRID_PARTITION_TIMEOUT_MS	(30 * 60 * 1000)
/* Width of the SVG map in pixels; the height follows the community. */
#define GRID_MAP_WIDTH			1000
/* Vertices drawn in one map: a broken or hostile reply is refused. */
#define GRID_MAP_MAX_POINTS		5000000

/* argv[0] is "grid": `grid show COMMUNITY [--geojson FILE]`,
 * `grid map COMMUNITY --svg FILE`. Returns an exit status. */
int grid_command(struct gc_session *s, int argc, char **argv);
/* argv[0] is "partition": `partition COMMUNITY|--all`. */
int grid_partition_command(struct gc_session *s, int argc, char **argv);

#endif

/* import.h - `gridctl import`: communities, buildings and department layers. */
#ifndef GRIDCTL_IMPORT_H
#define GRIDCTL_IMPORT_H

#include "session.h"

/* Rows per request: the default and the most (the server's limit). */
#define IMPORT_DEFAULT_BATCH	2000
#define IMPORT_MAX_BATCH	20000
/* Encoded bytes per request: under the server's default max_frame_bytes
 * (1 MiB) with room for the envelope. */
#define IMPORT_DEFAULT_BYTES	(900 * 1024)
/* The largest input file read (GeoJSON is parsed whole). */
#define IMPORT_MAX_FILE		((size_t)512 * 1024 * 1024)
/* Rows (or features) in one file. */
#define IMPORT_MAX_ROWS		10000000

/* `import communities FILE`, `import buildings FILE`, `import layer DEPT
 * FILE` with --strict, --batch N, --batch-bytes N (and --merge for a
 * layer). argv[0] is "import". Returns an exit status. */
int import_command(struct gc_session *s, int argc, char **argv);

#endif

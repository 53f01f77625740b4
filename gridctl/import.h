/* import.h - `gridctl import`: communities, buildings and department layers. */
#ifndef GRIDCTL_IMPORT_H
#define GRIDCTL_IMPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "gridd.pb-c.h"
#include "session.h"
#include "util.h"

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

/* What a file holds. */
enum import_what {
	IMPORT_COMMUNITIES,
	IMPORT_BUILDINGS,
	IMPORT_LAYER,
};

/* Rows read from one file and checked, ready to send. */
struct import_rows {
	enum import_what what;
	const char *path;	/* names the file in messages */
	FILE *errs;		/* bad rows and file errors; NULL = silent */
	bool geojson;		/* positions are feature numbers */
	size_t n, cap;		/* rows kept */
	Gridd__V1__CommunityIn *comm;	/* IMPORT_COMMUNITIES */
	Gridd__V1__BuildingIn *bld;	/* IMPORT_BUILDINGS */
	Gridd__V1__LayerCellIn *lay;	/* IMPORT_LAYER */
	size_t read;		/* rows (features) seen */
	size_t bad;		/* rows refused here, each with a message */
	size_t printed;
};

void import_rows_init(struct import_rows *r, enum import_what what,
    const char *path, FILE *errs);
void import_rows_free(struct import_rows *r);

/*
 * Parsers: bytes in (len bytes, no terminating NUL needed), rows out;
 * nothing is sent. A bad row is counted, reported to errs and skipped; a
 * file that cannot be read as a whole (no header, broken quoting, not
 * JSON, over the limits above) returns false. Either way the rows kept so
 * far stay in r until import_rows_free. Every kept row passed the same
 * checks the server makes on its fields.
 */
/* CSV buildings (RFC 4180; header names as in the sample). */
bool import_parse_csv(struct import_rows *r, const char *text, size_t len)
    WUR;
/* A GeoJSON FeatureCollection of r->what. */
bool import_parse_geojson(struct import_rows *r, const char *text,
    size_t len) WUR;
/* GeoJSON when the first non-blank byte opens an object. */
bool import_looks_json(const char *text, size_t len);

/* `import communities FILE`, `import buildings FILE`, `import layer DEPT
 * FILE` with --strict, --batch N, --batch-bytes N (and --merge for a
 * layer). argv[0] is "import". Returns an exit status. */
int import_command(struct gc_session *s, int argc, char **argv);

#endif

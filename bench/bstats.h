/* bstats.h - gridbench's latency samples, percentiles and JSON output. */
#ifndef GRIDBENCH_BSTATS_H
#define GRIDBENCH_BSTATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "util.h"

/* Every sample is kept (microseconds): runs are bounded in count and time,
 * so the array is too, and percentiles are exact. */
struct lat {
	uint32_t *v;
	size_t n, cap;
	bool sorted;
};

void lat_add(struct lat *l, int64_t us);
void lat_merge(struct lat *dst, const struct lat *src);
/* p in [0, 100]; milliseconds; 0 with no samples. */
double lat_pct_ms(struct lat *l, double p);
double lat_max_ms(struct lat *l);
void lat_free(struct lat *l);

/* A flat JSON object written as it goes: {"k":v,...}. Keys are the
 * program's own; string values are escaped. */
struct jw {
	FILE *f;
	int depth;
	bool first[8];
};

void jw_begin(struct jw *w, FILE *f);
void jw_end(struct jw *w);
void jw_obj(struct jw *w, const char *key);	/* nested object */
void jw_close(struct jw *w);
void jw_num(struct jw *w, const char *key, double v);
void jw_int(struct jw *w, const char *key, int64_t v);
void jw_str(struct jw *w, const char *key, const char *v);
void jw_bool(struct jw *w, const char *key, bool v);
/* Raw JSON text, trusted (another program's --json output). */
void jw_raw(struct jw *w, const char *key, const char *json);
void jw_lat(struct jw *w, const char *key, struct lat *l);

#endif

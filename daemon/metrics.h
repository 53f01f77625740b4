/* metrics.h - Prometheus text exposition: providers, counters, histograms. */
#ifndef GRIDD_METRICS_H
#define GRIDD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct evbuffer;

/* A subsystem that owns figures registers a writer; /metrics calls every
 * writer in registration order. Writers must not block. */
typedef void (*metrics_writer_cb)(struct evbuffer *out);
void metrics_register(const char *name, metrics_writer_cb cb);
void metrics_unregister_all(void);

/* Writes every registered provider plus process figures (RSS, fds). */
void metrics_write_all(struct evbuffer *out);

/* "# HELP" and "# TYPE" lines for a family; write once per family. */
void metrics_family(struct evbuffer *out, const char *name, const char *type,
    const char *help);
/* One sample; labels is the inside of {} (already escaped) or NULL. */
void metrics_sample(struct evbuffer *out, const char *name,
    const char *labels, double value);
/* Escapes a label value per the text format (\\, \", \n) into dst. */
void metrics_escape(char *dst, size_t dstlen, const char *src);

/* Latency histogram in milliseconds with fixed buckets. */
#define METRICS_HIST_BUCKETS 14
struct metrics_hist {
	uint64_t counts[METRICS_HIST_BUCKETS + 1];	/* last = +Inf */
	uint64_t count;
	double sum;
};
void metrics_hist_observe(struct metrics_hist *h, double ms);
/* Writes NAME_bucket{labels,le=...}, NAME_sum, NAME_count in seconds. */
void metrics_hist_write(struct evbuffer *out, const char *name,
    const char *labels, const struct metrics_hist *h);

#endif

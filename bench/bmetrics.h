/* bmetrics.h - gridbench's reading of the daemon's own counters: the
 * ingest transactions behind a run, from gridd's admin_http /metrics. */
#ifndef GRIDBENCH_BMETRICS_H
#define GRIDBENCH_BMETRICS_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/* Cumulative since the daemon started; a run reads them before and after
 * and reports the difference. */
struct bm_push {
	double txns;		/* gridd_push_commit_seconds_count */
	double txn_seconds;	/* gridd_push_commit_seconds_sum */
	double items;		/* gridd_push_group_items_sum */
};

/* One GET /metrics from addr ("127.0.0.1:PORT", loopback only), bounded
 * in time and size. False with a reason in err when the endpoint cannot be
 * read or lacks one of the three series. */
bool bm_read_push(const char *addr, struct bm_push *out, char *err,
    size_t errlen) WUR;

#endif

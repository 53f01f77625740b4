/* report.h - the burden report: GetBurdenReport from SQL over stored rows. */
#ifndef GRIDD_REPORT_H
#define GRIDD_REPORT_H

#include <stdbool.h>

#include "gridd.pb-c.h"
#include "util.h"

struct conn;

/* GetBurdenReport (admin): the window's finished days rolled up (within
 * [database] report_rollup_budget_ms), then one read-only transaction of
 * three statements (sql/005_report.sql), answered with BurdenReport. */
void report_get_burden(struct conn *c, const Gridd__V1__Envelope *env);

/* The background roll-up of finished days, every [database]
 * report_rollup_interval_s. report_shutdown after the pool is freed (its
 * failing callback must still find the timer). */
bool report_init(void) WUR;
void report_shutdown(void);

#endif

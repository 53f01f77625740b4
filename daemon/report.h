/* report.h - the burden report: GetBurdenReport from SQL over stored rows. */
#ifndef GRIDD_REPORT_H
#define GRIDD_REPORT_H

#include "gridd.pb-c.h"

struct conn;

/* GetBurdenReport (admin): one read-only transaction of three statements
 * (sql/005_report.sql), answered with BurdenReport. */
void report_get_burden(struct conn *c, const Gridd__V1__Envelope *env);

#endif

/* parse.h - gridctl's argument and field parsers: numbers, times, ids. */
#ifndef GRIDCTL_PARSE_H
#define GRIDCTL_PARSE_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

/* Longest identifier gridctl sends (worker, community, department ids). */
#define GCP_MAX_ID 256

/* A decimal integer in [lo, hi], nothing else on the line. */
bool gcp_int(const char *s, long long lo, long long hi, long long *out) WUR;
/* A finite decimal number. */
bool gcp_double(const char *s, double *out) WUR;
/* Milliseconds since the epoch, or a UTC "YYYY-MM-DD[THH:MM[:SS]][Z]". */
bool gcp_time_ms(const char *s, int64_t *out) WUR;
/* 1..GCP_MAX_ID bytes without control characters. */
bool gcp_id(const char *s) WUR;

#endif

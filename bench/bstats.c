/* bstats.c - gridbench's latency samples, percentiles and JSON output. */
#include "bstats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Above 71 minutes a latency is clamped: a uint32 of microseconds. */
#define LAT_MAX_US	UINT32_MAX

void
lat_add(struct lat *l, int64_t us)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 1024;
		l->v = xreallocarray(l->v, l->cap, sizeof(*l->v));
	}
	if (us < 0)
		us = 0;
	l->v[l->n++] = us > (int64_t)LAT_MAX_US ? LAT_MAX_US : (uint32_t)us;
	l->sorted = false;
}

void
lat_merge(struct lat *dst, const struct lat *src)
{
	for (size_t i = 0; i < src->n; i++)
		lat_add(dst, src->v[i]);
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

double
lat_pct_ms(struct lat *l, double p)
{
	size_t i;

	if (l->n == 0)
		return 0;
	if (!l->sorted) {
		qsort(l->v, l->n, sizeof(*l->v), cmp_u32);
		l->sorted = true;
	}
	/* Nearest rank: the smallest sample with at least p% at or below. */
	i = (size_t)ceil(p / 100.0 * (double)l->n);
	if (i > 0)
		i--;
	if (i >= l->n)
		i = l->n - 1;
	return l->v[i] / 1000.0;
}

double
lat_max_ms(struct lat *l)
{
	return lat_pct_ms(l, 100);
}

void
lat_free(struct lat *l)
{
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static void
sep(struct jw *w, const char *key)
{
	if (!w->first[w->depth])
		fputc(',', w->f);
	w->first[w->depth] = false;
	fprintf(w->f, "\"%s\":", key);
}

void
jw_begin(struct jw *w, FILE *f)
{
	memset(w, 0, sizeof(*w));
	w->f = f;
	w->first[0] = true;
	fputc('{', f);
}

void
jw_end(struct jw *w)
{
	fputs("}\n", w->f);
}

void
jw_obj(struct jw *w, const char *key)
{
	sep(w, key);
	fputc('{', w->f);
	if (w->depth + 1 < (int)ARRAY_LEN(w->first))
		w->depth++;
	w->first[w->depth] = true;
}

void
jw_close(struct jw *w)
{
	fputc('}', w->f);
	if (w->depth > 0)
		w->depth--;
}

void
jw_num(struct jw *w, const char *key, double v)
{
	sep(w, key);
	if (isfinite(v))
		fprintf(w->f, "%.6g", v);
	else
		fputs("null", w->f);
}

void
jw_int(struct jw *w, const char *key, int64_t v)
{
	sep(w, key);
	fprintf(w->f, "%lld", (long long)v);
}

void
jw_str(struct jw *w, const char *key, const char *v)
{
	sep(w, key);
	fputc('"', w->f);
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(w->f, "\\%c", *p);
		else if (*p < 0x20)
			fprintf(w->f, "\\u%04x", *p);
		else
			fputc(*p, w->f);
	}
	fputc('"', w->f);
}

void
jw_bool(struct jw *w, const char *key, bool v)
{
	sep(w, key);
	fputs(v ? "true" : "false", w->f);
}

void
jw_raw(struct jw *w, const char *key, const char *json)
{
	sep(w, key);
	fputs(json, w->f);
}

void
jw_lat(struct jw *w, const char *key, struct lat *l)
{
	jw_obj(w, key);
	jw_int(w, "n", (int64_t)l->n);
	jw_num(w, "p50_ms", lat_pct_ms(l, 50));
	jw_num(w, "p99_ms", lat_pct_ms(l, 99));
	jw_num(w, "p999_ms", lat_pct_ms(l, 99.9));
	jw_num(w, "max_ms", lat_max_ms(l));
	jw_close(w);
}

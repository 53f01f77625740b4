/* metrics.c - Prometheus text exposition: providers, counters, histograms. */
#include "metrics.h"

#include <dirent.h>
#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Enough for every subsystem of the daemon; registration past it is a
 * programming error, caught at start-up. */
#define METRICS_MAX_PROVIDERS 32

struct provider {
	const char *name;
	metrics_writer_cb cb;
};

static struct provider providers[METRICS_MAX_PROVIDERS];
static size_t n_providers;

/* Bucket upper bounds in milliseconds: 0.25 ms to 10 s. */
static const double bucket_ms[METRICS_HIST_BUCKETS] = {
	0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2500, 10000,
};

void
metrics_register(const char *name, metrics_writer_cb cb)
{
	for (size_t i = 0; i < n_providers; i++)
		if (strcmp(providers[i].name, name) == 0) {
			providers[i].cb = cb;
			return;
		}
	if (n_providers == METRICS_MAX_PROVIDERS) {
		fprintf(stderr, "gridd: too many metrics providers\n");
		abort();
	}
	providers[n_providers].name = name;
	providers[n_providers].cb = cb;
	n_providers++;
}

void
metrics_unregister_all(void)
{
	n_providers = 0;
}

void
metrics_family(struct evbuffer *out, const char *name, const char *type,
    const char *help)
{
	evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help,
	    name, type);
}

void
metrics_sample(struct evbuffer *out, const char *name, const char *labels,
    double value)
{
	if (labels != NULL && labels[0] != '\0')
		evbuffer_add_printf(out, "%s{%s} %.17g\n", name, labels, value);
	else
		evbuffer_add_printf(out, "%s %.17g\n", name, value);
}

void
metrics_escape(char *dst, size_t dstlen, const char *src)
{
	size_t o = 0;

	if (dstlen == 0)
		return;
	for (; *src != '\0' && o + 2 < dstlen; src++) {
		if (*src == '\\' || *src == '"') {
			dst[o++] = '\\';
			dst[o++] = *src;
		} else if (*src == '\n') {
			dst[o++] = '\\';
			dst[o++] = 'n';
		} else {
			dst[o++] = *src;
		}
	}
	dst[o] = '\0';
}

void
metrics_hist_observe(struct metrics_hist *h, double ms)
{
	size_t i = 0;

	while (i < METRICS_HIST_BUCKETS && ms > bucket_ms[i])
		i++;
	h->counts[i]++;
	h->count++;
	h->sum += ms;
}

void
metrics_hist_write(struct evbuffer *out, const char *name, const char *labels,
    const struct metrics_hist *h)
{
	const char *sep = (labels != NULL && labels[0] != '\0') ? "," : "";
	const char *lab = labels != NULL ? labels : "";
	uint64_t cum = 0;

	for (size_t i = 0; i < METRICS_HIST_BUCKETS; i++) {
		cum += h->counts[i];
		evbuffer_add_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n",
		    name, lab, sep, bucket_ms[i] / 1000.0,
		    (unsigned long long)cum);
	}
	cum += h->counts[METRICS_HIST_BUCKETS];
	evbuffer_add_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name,
	    lab, sep, (unsigned long long)cum);
	if (lab[0] != '\0') {
		evbuffer_add_printf(out, "%s_sum{%s} %.17g\n", name, lab,
		    h->sum / 1000.0);
		evbuffer_add_printf(out, "%s_count{%s} %llu\n", name, lab,
		    (unsigned long long)h->count);
	} else {
		evbuffer_add_printf(out, "%s_sum %.17g\n", name, h->sum / 1000.0);
		evbuffer_add_printf(out, "%s_count %llu\n", name,
		    (unsigned long long)h->count);
	}
}

static void
write_process(struct evbuffer *out)
{
	FILE *fp;
	unsigned long pages_total = 0, pages_rss = 0;
	long fds = 0;
	DIR *d;

	fp = fopen("/proc/self/statm", "r");
	if (fp != NULL) {
		if (fscanf(fp, "%lu %lu", &pages_total, &pages_rss) != 2)
			pages_rss = 0;
		fclose(fp);
	}
	metrics_family(out, "process_resident_memory_bytes", "gauge",
	    "Resident memory size in bytes.");
	metrics_sample(out, "process_resident_memory_bytes", NULL,
	    (double)pages_rss * (double)sysconf(_SC_PAGESIZE));

	d = opendir("/proc/self/fd");
	if (d != NULL) {
		struct dirent *e;

		while ((e = readdir(d)) != NULL)
			if (e->d_name[0] != '.')
				fds++;
		closedir(d);
		fds--;		/* the directory handle itself */
	}
	metrics_family(out, "process_open_fds", "gauge",
	    "Number of open file descriptors.");
	metrics_sample(out, "process_open_fds", NULL, (double)fds);
}

void
metrics_write_all(struct evbuffer *out)
{
	for (size_t i = 0; i < n_providers; i++)
		providers[i].cb(out);
	write_process(out);
}

/* sdnotify.c - systemd readiness notification; a no-op without systemd. */
#include "sdnotify.h"

#include <stdio.h>
#include <time.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>

static void
notify(const char *state)
{
	/* Failure to notify is not fatal: without NOTIFY_SOCKET this is a
	 * no-op, and a broken socket only delays systemd's view of us. */
	(void)sd_notify(0, state);
}
#else
static void
notify(const char *state)
{
	(void)state;
}
#endif

void
sdnotify_ready(void)
{
	notify("READY=1\nSTATUS=serving");
}

void
sdnotify_reloading(void)
{
	/* Type=notify-reload (systemd 253+) wants MONOTONIC_USEC with
	 * RELOADING=1; older systemd ignores the extra field. */
	char buf[96];
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(buf, sizeof(buf), "RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000ULL +
	    (unsigned long long)ts.tv_nsec / 1000ULL);
	notify(buf);
}

void
sdnotify_stopping(void)
{
	notify("STOPPING=1\nSTATUS=stopping");
}

void
sdnotify_status(const char *status)
{
	char buf[256];

	snprintf(buf, sizeof(buf), "STATUS=%s", status);
	notify(buf);
}

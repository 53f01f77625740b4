/* signals.c - SIGHUP/SIGTERM/SIGINT through the event loop; SIGPIPE ignored. */
#include "signals.h"

#include <event2/event.h>
#include <signal.h>
#include <string.h>

#include "log.h"

static struct event *ev_hup, *ev_term, *ev_int;
static struct signals_handlers handlers;

static void
signal_cb(evutil_socket_t signo, short what, void *arg)
{
	(void)what;
	(void)arg;
	if (signo == SIGHUP) {
		log_info("event=signal signal=HUP action=reload");
		handlers.reload();
	} else {
		log_info("event=signal signal=%s action=stop",
		    signo == SIGTERM ? "TERM" : "INT");
		handlers.stop((int)signo);
	}
}

static struct event *
add_signal(struct event_base *base, int signo)
{
	struct event *ev = evsignal_new(base, signo, signal_cb, NULL);

	if (ev == NULL || evsignal_add(ev, NULL) != 0) {
		if (ev != NULL)
			event_free(ev);
		return NULL;
	}
	return ev;
}

bool
signals_init(struct event_base *base, const struct signals_handlers *h)
{
	struct sigaction sa;

	handlers = *h;
	/* A peer that goes away mid-write must cost us an EPIPE on that
	 * socket, not the whole process. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	if (sigaction(SIGPIPE, &sa, NULL) != 0)
		return false;
	ev_hup = add_signal(base, SIGHUP);
	ev_term = add_signal(base, SIGTERM);
	ev_int = add_signal(base, SIGINT);
	if (ev_hup == NULL || ev_term == NULL || ev_int == NULL) {
		signals_free();
		return false;
	}
	return true;
}

void
signals_free(void)
{
	if (ev_hup != NULL)
		event_free(ev_hup);
	if (ev_term != NULL)
		event_free(ev_term);
	if (ev_int != NULL)
		event_free(ev_int);
	ev_hup = ev_term = ev_int = NULL;
}

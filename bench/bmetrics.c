/*
 * bmetrics.c - one blocking GET /metrics from the daemon's admin_http,
 * and the ingest transaction series out of it.
 *
 * Read before and after a run, outside the event loop, so that the load
 * generator's timing is not disturbed. What the figures mean is said
 * where gridbench reports them (txwin_end).
 */
#include "bmetrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The whole exposition; gridd's is a few tens of KiB. */
#define BM_MAX_BYTES	(4 * 1024 * 1024)
#define BM_TIMEOUT_MS	5000

static bool
parse_addr(const char *addr, struct sockaddr_in *sin, char *err,
    size_t errlen)
{
	char host[64];
	const char *colon = strrchr(addr, ':');
	char *end;
	long port;

	if (colon == NULL || (size_t)(colon - addr) >= sizeof(host)) {
		snprintf(err, errlen, "want 127.0.0.1:PORT");
		return false;
	}
	memcpy(host, addr, (size_t)(colon - addr));
	host[colon - addr] = '\0';
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (errno != 0 || *end != '\0' || port < 1 || port > 65535) {
		snprintf(err, errlen, "bad port in \"%s\"", addr);
		return false;
	}
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &sin->sin_addr) != 1 ||
	    (ntohl(sin->sin_addr.s_addr) >> 24) != 127) {
		snprintf(err, errlen, "loopback only, not \"%s\"", host);
		return false;
	}
	return true;
}

/* Waits for fd to be ready for ev until deadline. */
static bool
wait_fd(int fd, short ev, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = ev };
	int64_t left;
	int rc;

	for (;;) {
		left = deadline - mono_ms();
		if (left <= 0)
			return false;
		rc = poll(&p, 1, (int)left);
		if (rc > 0)
			return true;
		if (rc < 0 && errno != EINTR)
			return false;
	}
}

/* The body of an HTTP/1.0 response in buf (NUL-terminated), or NULL. */
static char *
http_get(const struct sockaddr_in *sin, size_t *len, char *err,
    size_t errlen)
{
	static const char req[] = "GET /metrics HTTP/1.0\r\n"
	    "Host: gridd\r\nConnection: close\r\n\r\n";
	int64_t deadline = mono_ms() + BM_TIMEOUT_MS;
	size_t cap = 65536, n = 0, off = 0;
	char *buf = NULL, *body;
	ssize_t r;
	int fd, soerr = 0;
	socklen_t sl = sizeof(soerr);

	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return NULL;
	}
	if (connect(fd, (const struct sockaddr *)sin, sizeof(*sin)) != 0 &&
	    errno != EINPROGRESS) {
		snprintf(err, errlen, "connect: %s", strerror(errno));
		goto fail;
	}
	if (!wait_fd(fd, POLLOUT, deadline) ||
	    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 ||
	    soerr != 0) {
		snprintf(err, errlen, "connect: %s",
		    soerr ? strerror(soerr) : "timed out");
		goto fail;
	}
	while (off < sizeof(req) - 1) {
		if (!wait_fd(fd, POLLOUT, deadline)) {
			snprintf(err, errlen, "send: timed out");
			goto fail;
		}
		r = send(fd, req + off, sizeof(req) - 1 - off, MSG_NOSIGNAL);
		if (r < 0 && errno != EAGAIN && errno != EINTR) {
			snprintf(err, errlen, "send: %s", strerror(errno));
			goto fail;
		}
		if (r > 0)
			off += (size_t)r;
	}
	buf = xmalloc(cap);
	for (;;) {
		if (n + 1 >= cap) {
			if (cap >= BM_MAX_BYTES) {
				snprintf(err, errlen, "response over %d bytes",
				    BM_MAX_BYTES);
				goto fail;
			}
			cap *= 2;
			buf = xrealloc(buf, cap);
		}
		if (!wait_fd(fd, POLLIN, deadline)) {
			snprintf(err, errlen, "read: timed out");
			goto fail;
		}
		r = recv(fd, buf + n, cap - 1 - n, 0);
		if (r == 0)
			break;
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			snprintf(err, errlen, "read: %s", strerror(errno));
			goto fail;
		}
		n += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	if (strncmp(buf, "HTTP/1.", 7) != 0 || strlen(buf) < 12 ||
	    strncmp(buf + 9, "200", 3) != 0) {
		snprintf(err, errlen, "not a 200 response");
		free(buf);
		return NULL;
	}
	body = strstr(buf, "\r\n\r\n");
	if (body == NULL) {
		snprintf(err, errlen, "no end of headers");
		free(buf);
		return NULL;
	}
	body += 4;
	*len = n - (size_t)(body - buf);
	memmove(buf, body, *len + 1);
	return buf;
fail:
	free(buf);
	close(fd);
	return NULL;
}

/* The value of the unlabelled sample `name` in the exposition text. */
static bool
sample(const char *text, const char *name, double *out)
{
	size_t nl = strlen(name);
	const char *p = text;

	while ((p = strstr(p, name)) != NULL) {
		bool at_line_start = p == text || p[-1] == '\n';

		if (at_line_start && p[nl] == ' ') {
			char *end;

			errno = 0;
			*out = strtod(p + nl + 1, &end);
			return errno == 0 && end != p + nl + 1 &&
			    (*end == '\n' || *end == '\0' || *end == ' ');
		}
		p += nl;
	}
	return false;
}

bool
bm_read_push(const char *addr, struct bm_push *out, char *err,
    size_t errlen)
{
	struct sockaddr_in sin;
	size_t len = 0;
	char *text;
	bool ok;

	if (!parse_addr(addr, &sin, err, errlen))
		return false;
	text = http_get(&sin, &len, err, errlen);
	if (text == NULL)
		return false;
	ok = sample(text, "gridd_push_commit_seconds_count", &out->txns) &&
	    sample(text, "gridd_push_commit_seconds_sum", &out->txn_seconds) &&
	    sample(text, "gridd_push_group_items_sum", &out->items);
	if (!ok)
		snprintf(err, errlen, "no gridd_push_commit_seconds or "
		    "gridd_push_group_items series");
	free(text);
	return ok;
}

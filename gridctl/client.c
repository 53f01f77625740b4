/* client.c - gridctl's blocking connection: TCP or TLS, framed Envelopes. */
#include "client.h"

#include <sys/socket.h>
#include <sys/types.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "frame.h"

/* Host names and ports longer than this are not addresses we could reach. */
#define CLIENT_MAX_HOST 255
#define CLIENT_MAX_PORT 15

struct client {
	int fd;
	int timeout_ms;
	SSL_CTX *ctx;
	SSL *ssl;
};

static void PRINTF_LIKE(3, 4)
seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static void
ssl_err(char *err, size_t errlen, const char *what)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (e == 0) {
		seterr(err, errlen, "%s failed", what);
		return;
	}
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	seterr(err, errlen, "%s: %s", what, buf);
}

/* Splits "host:port", "[v6]:port"; false when malformed. */
static bool
split_addr(const char *addr, char *host, char *port)
{
	const char *colon, *h = addr;
	size_t hlen;

	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');

		if (end == NULL || end[1] != ':')
			return false;
		h = addr + 1;
		hlen = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(addr, ':');
		if (colon == NULL)
			return false;
		hlen = (size_t)(colon - addr);
	}
	if (hlen == 0 || hlen > CLIENT_MAX_HOST || strlen(colon + 1) == 0 ||
	    strlen(colon + 1) > CLIENT_MAX_PORT)
		return false;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	strcpy(port, colon + 1);
	return true;
}

bool
client_addr_valid(const char *addr)
{
	char host[CLIENT_MAX_HOST + 1], port[CLIENT_MAX_PORT + 1];

	return split_addr(addr, host, port);
}

static int
wait_fd(int fd, short events, int timeout_ms)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int n;

	do {
		n = poll(&pfd, 1, timeout_ms);
	} while (n < 0 && errno == EINTR);
	return n;	/* 0 = timeout, <0 = error */
}

static int
connect_one(const struct addrinfo *ai, int timeout_ms, int *err_out)
{
	int fd, soerr = 0, one = 1;
	socklen_t len = sizeof(soerr);

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC |
	    SOCK_NONBLOCK, ai->ai_protocol);
	if (fd < 0) {
		*err_out = errno;
		return -1;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		if (errno != EINPROGRESS) {
			*err_out = errno;
			close(fd);
			return -1;
		}
		if (wait_fd(fd, POLLOUT, timeout_ms) <= 0) {
			*err_out = ETIMEDOUT;
			close(fd);
			return -1;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 ||
		    soerr != 0) {
			*err_out = soerr ? soerr : errno;
			close(fd);
			return -1;
		}
	}
	/* One request at a time: latency matters more than coalescing. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static bool
tls_setup(struct client *c, const char *host, const struct client_tls *tls,
    char *err, size_t errlen)
{
	unsigned char ip[16];
	bool is_ip = inet_pton(AF_INET, host, ip) == 1 ||
	    inet_pton(AF_INET6, host, ip) == 1;

	c->ctx = SSL_CTX_new(TLS_client_method());
	if (c->ctx == NULL) {
		ssl_err(err, errlen, "TLS context");
		return false;
	}
	if (!SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION)) {
		ssl_err(err, errlen, "TLS version");
		return false;
	}
	if (tls->ca_file != NULL) {
		if (!SSL_CTX_load_verify_locations(c->ctx, tls->ca_file,
		    NULL)) {
			ssl_err(err, errlen, "loading CA file");
			return false;
		}
	} else if (!SSL_CTX_set_default_verify_paths(c->ctx)) {
		ssl_err(err, errlen, "loading the system trust store");
		return false;
	}
	SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
	if (tls->cert_file != NULL) {
		if (SSL_CTX_use_certificate_chain_file(c->ctx,
		    tls->cert_file) != 1) {
			ssl_err(err, errlen, "loading client certificate");
			return false;
		}
		if (SSL_CTX_use_PrivateKey_file(c->ctx, tls->key_file,
		    SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(c->ctx) != 1) {
			ssl_err(err, errlen, "loading client key");
			return false;
		}
	}
	c->ssl = SSL_new(c->ctx);
	if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
		ssl_err(err, errlen, "TLS session");
		return false;
	}
	/* The server's certificate must name the address we dialled. */
	if (is_ip) {
		X509_VERIFY_PARAM *p = SSL_get0_param(c->ssl);

		if (X509_VERIFY_PARAM_set1_ip_asc(p, host) != 1) {
			ssl_err(err, errlen, "TLS peer address");
			return false;
		}
	} else if (SSL_set1_host(c->ssl, host) != 1 ||
	    SSL_set_tlsext_host_name(c->ssl, host) != 1) {
		ssl_err(err, errlen, "TLS peer name");
		return false;
	}
	return true;
}

/* Runs one SSL_* step, waiting for the socket as OpenSSL asks; returns the
 * step's positive result, 0 on orderly close, -1 on error or timeout. */
static int
tls_step(struct client *c, int rc, bool *timed_out)
{
	int e = SSL_get_error(c->ssl, rc);

	*timed_out = false;
	switch (e) {
	case SSL_ERROR_WANT_READ:
		if (wait_fd(c->fd, POLLIN, c->timeout_ms) <= 0) {
			*timed_out = true;
			return -1;
		}
		return 1;
	case SSL_ERROR_WANT_WRITE:
		if (wait_fd(c->fd, POLLOUT, c->timeout_ms) <= 0) {
			*timed_out = true;
			return -1;
		}
		return 1;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	default:
		return -1;
	}
}

static bool
tls_handshake(struct client *c, char *err, size_t errlen)
{
	for (;;) {
		bool to;
		int rc = SSL_connect(c->ssl);

		if (rc == 1)
			return true;
		if (tls_step(c, rc, &to) <= 0) {
			if (to)
				seterr(err, errlen, "TLS handshake timed out");
			else if (SSL_get_verify_result(c->ssl) != X509_V_OK)
				seterr(err, errlen, "TLS handshake: %s",
				    X509_verify_cert_error_string(
				    SSL_get_verify_result(c->ssl)));
			else
				ssl_err(err, errlen, "TLS handshake");
			return false;
		}
	}
}

struct client *
client_connect(const char *addr, const struct client_tls *tls,
    int timeout_ms, char *err, size_t errlen)
{
	char host[CLIENT_MAX_HOST + 1], port[CLIENT_MAX_PORT + 1];
	struct addrinfo hints, *res = NULL;
	struct client *c;
	int rc, last_err = 0;

	if (!split_addr(addr, host, port)) {
		seterr(err, errlen, "bad address \"%s\" (want HOST:PORT)",
		    addr);
		return NULL;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		seterr(err, errlen, "%s: %s", addr, gai_strerror(rc));
		return NULL;
	}
	c = xcalloc(1, sizeof(*c));
	c->fd = -1;
	c->timeout_ms = timeout_ms;
	for (struct addrinfo *ai = res; ai != NULL && c->fd < 0;
	    ai = ai->ai_next)
		c->fd = connect_one(ai, timeout_ms, &last_err);
	freeaddrinfo(res);
	if (c->fd < 0) {
		seterr(err, errlen, "connect %s: %s", addr,
		    strerror(last_err));
		client_close(c);
		return NULL;
	}
	if (tls != NULL && tls->enabled && (!tls_setup(c, host, tls, err,
	    errlen) || !tls_handshake(c, err, errlen))) {
		client_close(c);
		return NULL;
	}
	return c;
}

void
client_close(struct client *c)
{
	if (c == NULL)
		return;
	if (c->ssl != NULL) {
		/* Best effort: the peer may already be gone. */
		(void)SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
	}
	SSL_CTX_free(c->ctx);
	if (c->fd >= 0)
		close(c->fd);
	free(c);
}

/* Writes all n bytes; every wait bounded by the timeout. */
static bool
write_all(struct client *c, const uint8_t *p, size_t n, char *err,
    size_t errlen)
{
	while (n > 0) {
		ssize_t w;

		if (c->ssl != NULL) {
			bool to;
			size_t done = 0;
			int rc = SSL_write_ex(c->ssl, p, n, &done);

			if (rc == 1) {
				p += done;
				n -= done;
				continue;
			}
			if (tls_step(c, rc, &to) > 0)
				continue;
			seterr(err, errlen, to ? "write timed out" :
			    "TLS write failed");
			return false;
		}
		w = send(c->fd, p, n, MSG_NOSIGNAL);
		if (w > 0) {
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (wait_fd(c->fd, POLLOUT, c->timeout_ms) <= 0) {
				seterr(err, errlen, "write timed out");
				return false;
			}
			continue;
		}
		seterr(err, errlen, "write: %s", strerror(errno));
		return false;
	}
	return true;
}

/* Reads exactly n bytes; every wait bounded by the timeout. */
static bool
read_all(struct client *c, uint8_t *p, size_t n, char *err, size_t errlen)
{
	while (n > 0) {
		ssize_t r;

		if (c->ssl != NULL) {
			bool to;
			size_t done = 0;
			int rc = SSL_read_ex(c->ssl, p, n, &done), st;

			if (rc == 1) {
				p += done;
				n -= done;
				continue;
			}
			st = tls_step(c, rc, &to);
			if (st > 0)
				continue;
			if (st == 0)
				seterr(err, errlen, "server closed the "
				    "connection");
			else
				seterr(err, errlen, to ? "read timed out" :
				    "TLS read failed (connection closed)");
			return false;
		}
		r = recv(c->fd, p, n, 0);
		if (r > 0) {
			p += r;
			n -= (size_t)r;
			continue;
		}
		if (r == 0) {
			seterr(err, errlen, "server closed the connection");
			return false;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (wait_fd(c->fd, POLLIN, c->timeout_ms) <= 0) {
				seterr(err, errlen, "read timed out");
				return false;
			}
			continue;
		}
		seterr(err, errlen, "read: %s", strerror(errno));
		return false;
	}
	return true;
}

bool
client_send(struct client *c, const Gridd__V1__Envelope *env, char *err,
    size_t errlen)
{
	size_t len = 0;
	uint8_t *buf = frame_pack(env, &len);
	bool ok;

	if (buf == NULL) {
		seterr(err, errlen, "request too large to encode");
		return false;
	}
	ok = write_all(c, buf, len, err, errlen);
	free(buf);
	return ok;
}

Gridd__V1__Envelope *
client_recv(struct client *c, char *err, size_t errlen)
{
	uint8_t hdr[FRAME_HEADER_LEN], *body;
	uint32_t len = 0;
	Gridd__V1__Envelope *env;

	if (!read_all(c, hdr, sizeof(hdr), err, errlen))
		return NULL;
	switch (frame_peek(hdr, sizeof(hdr), CLIENT_MAX_FRAME, &len)) {
	case FRAME_READY:
	case FRAME_INCOMPLETE:
		/* Only the header is here yet: the length is all it says. */
		len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
		    (uint32_t)hdr[2] << 8 | hdr[3];
		break;
	case FRAME_ZERO:
		seterr(err, errlen, "server sent an empty frame");
		return NULL;
	case FRAME_TOO_LARGE:
		seterr(err, errlen, "server sent a frame over %u bytes",
		    CLIENT_MAX_FRAME);
		return NULL;
	}
	body = xmalloc(len);
	if (!read_all(c, body, len, err, errlen)) {
		free(body);
		return NULL;
	}
	env = frame_decode(body, len, CLIENT_MAX_DECODED);
	free(body);
	if (env == NULL)
		seterr(err, errlen, "server sent a frame that is not an "
		    "Envelope");
	return env;
}

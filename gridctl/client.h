/* client.h - gridctl's blocking connection: TCP or TLS, framed Envelopes. */
#ifndef GRIDCTL_CLIENT_H
#define GRIDCTL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gridd.pb-c.h"
#include "util.h"

/* The largest reply gridctl accepts; a grid with its GeoJSON is the biggest
 * legitimate one. Anything longer is treated as a broken server. */
#define CLIENT_MAX_FRAME	(64u * 1024 * 1024)
/* Decoded replies may use this much memory (protobuf-c expands repeated
 * empty elements, so the frame size alone does not bound it). */
#define CLIENT_MAX_DECODED	((size_t)256 * 1024 * 1024)

struct client_tls {
	bool enabled;
	const char *ca_file;	/* NULL: the system's trust store */
	const char *cert_file;	/* client certificate, optional */
	const char *key_file;
};

struct client;

/* Whether addr has the form HOST:PORT or [V6]:PORT (nothing is resolved). */
bool client_addr_valid(const char *addr) WUR;

/* Connects to "HOST:PORT" (or "[V6]:PORT") within timeout_ms, doing the TLS
 * handshake when asked. On failure returns NULL and fills err. */
struct client *client_connect(const char *addr, const struct client_tls *tls,
    int timeout_ms, char *err, size_t errlen);
void client_close(struct client *c);

/* Sends one framed Envelope; false with err filled on a transport error. */
bool client_send(struct client *c, const Gridd__V1__Envelope *env,
    char *err, size_t errlen) WUR;
/* Receives one Envelope. Every read waits at most the connect timeout.
 * NULL with err filled on timeout, close, oversize or garbage. */
Gridd__V1__Envelope *client_recv(struct client *c, char *err, size_t errlen);

#endif

/* frame.h - length-prefixed Envelope framing: pure functions, no I/O. */
#ifndef GRIDD_FRAME_H
#define GRIDD_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gridd.pb-c.h"
#include "util.h"

struct evbuffer;

#define FRAME_HEADER_LEN 4

enum frame_status {
	FRAME_INCOMPLETE,	/* fewer than 4 + N bytes buffered */
	FRAME_READY,		/* a whole frame of *len payload bytes */
	FRAME_ZERO,		/* N = 0: protocol error */
	FRAME_TOO_LARGE,	/* N > max: protocol error, checked before any
				 * allocation or waiting for the body */
};

/* Looks at the first bytes of buf (avail of them) without consuming. */
enum frame_status frame_peek(const uint8_t *buf, size_t avail, uint32_t max,
    uint32_t *len);
enum frame_status frame_peek_evbuffer(struct evbuffer *in, uint32_t max,
    uint32_t *len);

/* Unpacks one Envelope. Memory used by the decoded message is capped at
 * max_alloc bytes (a small frame of many empty repeated elements would
 * otherwise expand a hundredfold). NULL on garbage or over the cap. */
Gridd__V1__Envelope *frame_decode(const uint8_t *buf, size_t len,
    size_t max_alloc);
void frame_envelope_free(Gridd__V1__Envelope *env);

/* Appends the 4-byte header and the packed envelope; false (nothing
 * appended) if the packed size exceeds max or the buffer refuses it. */
bool frame_encode(struct evbuffer *out, const Gridd__V1__Envelope *env,
    uint32_t max) WUR;
/* Header and payload in one malloc'd buffer, for blocking clients. */
uint8_t *frame_pack(const Gridd__V1__Envelope *env, size_t *len);

#endif

/* frame.c - 4-byte big-endian length + Envelope: peek, decode, encode. */
#include "frame.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

static uint32_t
be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* The length is judged before the body is waited for: a peer announcing
 * 2 GiB is refused on its first four bytes, never buffered. *len is set as
 * soon as the header is known, even while the body is incomplete. */
static enum frame_status
judge(uint32_t n, size_t avail, uint32_t max, uint32_t *len)
{
	*len = n;
	if (n == 0)
		return FRAME_ZERO;
	if (n > max)
		return FRAME_TOO_LARGE;
	if (avail - FRAME_HEADER_LEN < n)
		return FRAME_INCOMPLETE;
	return FRAME_READY;
}

enum frame_status
frame_peek(const uint8_t *buf, size_t avail, uint32_t max, uint32_t *len)
{
	*len = 0;
	if (avail < FRAME_HEADER_LEN)
		return FRAME_INCOMPLETE;
	return judge(be32(buf), avail, max, len);
}

enum frame_status
frame_peek_evbuffer(struct evbuffer *in, uint32_t max, uint32_t *len)
{
	uint8_t hdr[FRAME_HEADER_LEN];
	size_t avail = evbuffer_get_length(in);

	*len = 0;
	if (avail < FRAME_HEADER_LEN)
		return FRAME_INCOMPLETE;
	if (evbuffer_copyout(in, hdr, sizeof(hdr)) != (ev_ssize_t)sizeof(hdr))
		return FRAME_INCOMPLETE;
	return judge(be32(hdr), avail, max, len);
}

/* Counts every byte protobuf-c asks for while unpacking one message and
 * refuses past the cap. Frees are not subtracted: the cap bounds the total a
 * single decode may touch, which is what an attacker controls. */
struct capped_alloc {
	size_t used;
	size_t max;
};

static void *
capped_alloc_cb(void *data, size_t size)
{
	struct capped_alloc *ca = data;

	if (size > ca->max - ca->used)
		return NULL;
	ca->used += size;
	return malloc(size ? size : 1);
}

static void
capped_free_cb(void *data, void *p)
{
	UNUSED(data);
	free(p);
}

Gridd__V1__Envelope *
frame_decode(const uint8_t *buf, size_t len, size_t max_alloc)
{
	struct capped_alloc ca = { .used = 0, .max = max_alloc };
	ProtobufCAllocator alloc = {
		.alloc = capped_alloc_cb,
		.free = capped_free_cb,
		.allocator_data = &ca,
	};

	if (buf == NULL && len != 0)
		return NULL;
	return gridd__v1__envelope__unpack(&alloc, len, buf);
}

void
frame_envelope_free(Gridd__V1__Envelope *env)
{
	/* The decode allocator used malloc, so the default allocator (free)
	 * releases what it built. */
	if (env != NULL)
		gridd__v1__envelope__free_unpacked(env, NULL);
}

/* An envelope that packs to zero bytes (request_id 0, no body) would go out
 * as a length-0 frame, which the peer must treat as a protocol error: it is
 * refused here like an oversized one. */
bool
frame_encode(struct evbuffer *out, const Gridd__V1__Envelope *env,
    uint32_t max)
{
	struct evbuffer_iovec vec;
	size_t n = gridd__v1__envelope__get_packed_size(env);

	if (n == 0 || n > max || n > UINT32_MAX - FRAME_HEADER_LEN)
		return false;
	if (evbuffer_reserve_space(out, (ev_ssize_t)(n + FRAME_HEADER_LEN),
	    &vec, 1) != 1 || vec.iov_len < n + FRAME_HEADER_LEN)
		return false;
	put_be32(vec.iov_base, (uint32_t)n);
	if (gridd__v1__envelope__pack(env,
	    (uint8_t *)vec.iov_base + FRAME_HEADER_LEN) != n)
		return false;
	vec.iov_len = n + FRAME_HEADER_LEN;
	return evbuffer_commit_space(out, &vec, 1) == 0;
}

uint8_t *
frame_pack(const Gridd__V1__Envelope *env, size_t *len)
{
	size_t n = gridd__v1__envelope__get_packed_size(env);
	uint8_t *buf;

	*len = 0;
	if (n == 0 || n > UINT32_MAX)
		return NULL;
	buf = xmalloc(n + FRAME_HEADER_LEN);
	put_be32(buf, (uint32_t)n);
	if (gridd__v1__envelope__pack(env, buf + FRAME_HEADER_LEN) != n) {
		free(buf);
		return NULL;
	}
	*len = n + FRAME_HEADER_LEN;
	return buf;
}

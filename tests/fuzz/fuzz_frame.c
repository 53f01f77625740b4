/* fuzz_frame.c - libFuzzer target: frame peeking, capped decoding, re-encoding. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "frame.h"

/* Small enough that inputs of a few KiB reach the cap, so the refusal path
 * inside protobuf-c is exercised as often as the success path. */
#define FUZZ_MAX_FRAME 4096
#define FUZZ_MAX_ALLOC (16 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
reencode(const Gridd__V1__Envelope *env)
{
	struct evbuffer *b = evbuffer_new();
	Gridd__V1__Envelope *again;
	uint8_t *flat;
	size_t flen;
	uint32_t len;

	if (b == NULL)
		abort();
	if (frame_encode(b, env, UINT32_MAX)) {
		/* Whatever decoded must re-encode as one whole frame. It need
		 * not decode again: protobuf-c keeps unknown fields verbatim,
		 * including ones with an invalid field number 0 that it accepted
		 * from an over-long tag varint, and re-emits them in a form its
		 * own parser refuses. The server never echoes a client's
		 * envelope, so only "no crash, same meaning if it parses" is
		 * required of the second decode. */
		if (frame_peek_evbuffer(b, UINT32_MAX, &len) != FRAME_READY ||
		    (size_t)len + FRAME_HEADER_LEN != evbuffer_get_length(b))
			abort();
		again = frame_decode(evbuffer_pullup(b, -1) + FRAME_HEADER_LEN,
		    len, SIZE_MAX);
		if (again != NULL && (again->request_id != env->request_id ||
		    again->body_case != env->body_case))
			abort();
		flat = frame_pack(env, &flen);
		if (flat == NULL || flen != evbuffer_get_length(b) ||
		    memcmp(flat, evbuffer_pullup(b, -1), flen) != 0)
			abort();
		free(flat);
		frame_envelope_free(again);
	} else if (gridd__v1__envelope__get_packed_size(env) != 0) {
		abort();
	}
	evbuffer_free(b);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct evbuffer *in = evbuffer_new();
	Gridd__V1__Envelope *env;
	enum frame_status st;
	uint32_t len, len2;

	if (in == NULL)
		abort();
	evbuffer_add(in, data, size);
	/* A stream of frames, as a connection's read callback sees it. */
	for (;;) {
		st = frame_peek(data, size, FUZZ_MAX_FRAME, &len);
		if (frame_peek_evbuffer(in, FUZZ_MAX_FRAME, &len2) != st ||
		    len != len2)
			abort();
		if (st != FRAME_READY)
			break;
		if (len == 0 || len > FUZZ_MAX_FRAME ||
		    (size_t)len + FRAME_HEADER_LEN > size)
			abort();
		env = frame_decode(data + FRAME_HEADER_LEN, len, FUZZ_MAX_ALLOC);
		if (env != NULL) {
			reencode(env);
			frame_envelope_free(env);
		}
		data += FRAME_HEADER_LEN + len;
		size -= FRAME_HEADER_LEN + len;
		evbuffer_drain(in, FRAME_HEADER_LEN + len);
	}
	evbuffer_free(in);
	return 0;
}

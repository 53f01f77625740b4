/* test_frame.c - length-prefix peeking, capped decoding, encode round trips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <event2/buffer.h>

#include "frame.h"

#define MAX (1024u * 1024u)

static void
hdr(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static void
test_peek_partial_header(void **state)
{
	uint8_t buf[4] = { 0, 0, 0, 5 };
	uint32_t len = 77;

	(void)state;
	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(frame_peek(buf, i, MAX, &len),
		    FRAME_INCOMPLETE);
		assert_int_equal(len, 0);
	}
	/* Header complete, body missing: incomplete, but the length is known. */
	assert_int_equal(frame_peek(buf, 4, MAX, &len), FRAME_INCOMPLETE);
	assert_int_equal(len, 5);
}

static void
test_peek_zero(void **state)
{
	uint8_t buf[8] = { 0 };
	uint32_t len;

	(void)state;
	assert_int_equal(frame_peek(buf, 4, MAX, &len), FRAME_ZERO);
	assert_int_equal(frame_peek(buf, 8, MAX, &len), FRAME_ZERO);
}

static void
test_peek_limits(void **state)
{
	uint8_t buf[4];
	uint32_t len;

	(void)state;
	/* Exactly max: accepted, waits for the body. */
	hdr(buf, MAX);
	assert_int_equal(frame_peek(buf, 4, MAX, &len), FRAME_INCOMPLETE);
	assert_int_equal(len, MAX);
	/* One over max: refused from the header alone. */
	hdr(buf, MAX + 1);
	assert_int_equal(frame_peek(buf, 4, MAX, &len), FRAME_TOO_LARGE);
	assert_int_equal(len, MAX + 1);
	hdr(buf, 0x80000000u);
	assert_int_equal(frame_peek(buf, 4, MAX, &len), FRAME_TOO_LARGE);
	hdr(buf, 0xffffffffu);
	assert_int_equal(frame_peek(buf, 4, MAX, &len), FRAME_TOO_LARGE);
	assert_int_equal(len, 0xffffffffu);
	/* A lower limit before login. */
	hdr(buf, 4097);
	assert_int_equal(frame_peek(buf, 4, 4096, &len), FRAME_TOO_LARGE);
	hdr(buf, 4096);
	assert_int_equal(frame_peek(buf, 4, 4096, &len), FRAME_INCOMPLETE);
	/* 0xffffffff with max = UINT32_MAX must not overflow avail math. */
	hdr(buf, 0xffffffffu);
	assert_int_equal(frame_peek(buf, 4, UINT32_MAX, &len),
	    FRAME_INCOMPLETE);
}

static void
test_peek_ready(void **state)
{
	uint8_t buf[4 + 3 + 2] = { 0, 0, 0, 3, 'a', 'b', 'c', 0, 0 };
	uint32_t len;

	(void)state;
	assert_int_equal(frame_peek(buf, 6, MAX, &len), FRAME_INCOMPLETE);
	assert_int_equal(frame_peek(buf, 7, MAX, &len), FRAME_READY);
	assert_int_equal(len, 3);
	/* Bytes of the next frame after it do not matter. */
	assert_int_equal(frame_peek(buf, 9, MAX, &len), FRAME_READY);
	assert_int_equal(len, 3);
}

static void
test_peek_evbuffer(void **state)
{
	struct evbuffer *b = evbuffer_new();
	uint8_t h[4];
	uint32_t len;

	(void)state;
	assert_non_null(b);
	assert_int_equal(frame_peek_evbuffer(b, MAX, &len), FRAME_INCOMPLETE);
	/* Header split across two chains. */
	hdr(h, 2);
	evbuffer_add(b, h, 1);
	assert_int_equal(frame_peek_evbuffer(b, MAX, &len), FRAME_INCOMPLETE);
	evbuffer_add(b, h + 1, 3);
	assert_int_equal(frame_peek_evbuffer(b, MAX, &len), FRAME_INCOMPLETE);
	assert_int_equal(len, 2);
	evbuffer_add(b, "x", 1);
	assert_int_equal(frame_peek_evbuffer(b, MAX, &len), FRAME_INCOMPLETE);
	evbuffer_add(b, "y", 1);
	assert_int_equal(frame_peek_evbuffer(b, MAX, &len), FRAME_READY);
	assert_int_equal(len, 2);
	/* Peeking consumes nothing. */
	assert_int_equal(evbuffer_get_length(b), 6);
	evbuffer_drain(b, 6);
	hdr(h, 0);
	evbuffer_add(b, h, 4);
	assert_int_equal(frame_peek_evbuffer(b, MAX, &len), FRAME_ZERO);
	evbuffer_drain(b, 4);
	hdr(h, 0xffffffffu);
	evbuffer_add(b, h, 4);
	assert_int_equal(frame_peek_evbuffer(b, MAX, &len), FRAME_TOO_LARGE);
	evbuffer_free(b);
}

static void
test_decode_garbage(void **state)
{
	/* Field 1 (varint) truncated; a length-delimited field running past
	 * the end; wire type 7 (invalid); a nested message that is garbage. */
	static const uint8_t trunc[] = { 0x08, 0xff };
	static const uint8_t overrun[] = { 0x32, 0x10, 0x01 };
	static const uint8_t badwire[] = { 0x0f };
	static const uint8_t badnested[] = { 0x32, 0x02, 0x08, 0xff };
	uint8_t rnd[512];

	(void)state;
	assert_null(frame_decode(trunc, sizeof(trunc), 65536));
	assert_null(frame_decode(overrun, sizeof(overrun), 65536));
	assert_null(frame_decode(badwire, sizeof(badwire), 65536));
	assert_null(frame_decode(badnested, sizeof(badnested), 65536));
	/* 0xff bytes: field numbers and wire types that cannot parse. */
	memset(rnd, 0xff, sizeof(rnd));
	assert_null(frame_decode(rnd, sizeof(rnd), 65536));
}

static Gridd__V1__Envelope *
ping_envelope(uint64_t request_id)
{
	static Gridd__V1__Ping ping = GRIDD__V1__PING__INIT;
	static Gridd__V1__Envelope env;

	gridd__v1__envelope__init(&env);
	env.request_id = request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_PING;
	env.ping = &ping;
	return &env;
}

static void
test_round_trip(void **state)
{
	struct evbuffer *b = evbuffer_new();
	Gridd__V1__Login login = GRIDD__V1__LOGIN__INIT;
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT, *dec;
	uint8_t *flat;
	uint32_t len;
	size_t flen;

	(void)state;
	login.role = GRIDD__V1__ROLE__WORKER;
	login.principal = "W17";
	login.secret = "correct horse";
	login.since_seq = 42;
	env.request_id = 0x1122334455667788ull;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_LOGIN;
	env.login = &login;

	assert_true(frame_encode(b, &env, MAX));
	assert_int_equal(frame_peek_evbuffer(b, MAX, &len), FRAME_READY);
	assert_int_equal(evbuffer_get_length(b), 4 + len);
	dec = frame_decode(evbuffer_pullup(b, -1) + 4, len, 65536);
	assert_non_null(dec);
	assert_int_equal(dec->request_id, env.request_id);
	assert_int_equal(dec->body_case, GRIDD__V1__ENVELOPE__BODY_LOGIN);
	assert_int_equal(dec->login->role, GRIDD__V1__ROLE__WORKER);
	assert_string_equal(dec->login->principal, "W17");
	assert_string_equal(dec->login->secret, "correct horse");
	assert_int_equal(dec->login->since_seq, 42);

	/* frame_pack gives the same bytes as frame_encode. */
	flat = frame_pack(&env, &flen);
	assert_non_null(flat);
	assert_int_equal(flen, evbuffer_get_length(b));
	assert_memory_equal(flat, evbuffer_pullup(b, -1), flen);
	free(flat);
	frame_envelope_free(dec);

	/* Over the encode limit: nothing appended. */
	evbuffer_drain(b, evbuffer_get_length(b));
	assert_false(frame_encode(b, &env, 8));
	assert_int_equal(evbuffer_get_length(b), 0);
	/* An empty envelope would be a length-0 frame: refused. */
	env.request_id = 0;
	env.body_case = GRIDD__V1__ENVELOPE__BODY__NOT_SET;
	assert_false(frame_encode(b, &env, MAX));
	assert_null(frame_pack(&env, &flen));
	assert_int_equal(evbuffer_get_length(b), 0);

	/* Several frames back to back in one buffer. */
	assert_true(frame_encode(b, ping_envelope(1), MAX));
	assert_true(frame_encode(b, ping_envelope(2), MAX));
	for (uint64_t id = 1; id <= 2; id++) {
		assert_int_equal(frame_peek_evbuffer(b, MAX, &len),
		    FRAME_READY);
		evbuffer_drain(b, 4);
		dec = frame_decode(evbuffer_pullup(b, len), len, 4096);
		assert_non_null(dec);
		assert_int_equal(dec->request_id, id);
		assert_int_equal(dec->body_case,
		    GRIDD__V1__ENVELOPE__BODY_PING);
		frame_envelope_free(dec);
		evbuffer_drain(b, len);
	}
	assert_int_equal(evbuffer_get_length(b), 0);
	evbuffer_free(b);
}

static void
test_no_body(void **state)
{
	/* request_id = 7 and nothing else: parses, body not set. */
	static const uint8_t buf[] = { 0x08, 0x07 };
	/* An unknown field (number 99, varint) only: parses, body not set. */
	static const uint8_t unknown[] = { 0x98, 0x06, 0x01 };
	Gridd__V1__Envelope *env;

	(void)state;
	env = frame_decode(buf, sizeof(buf), 4096);
	assert_non_null(env);
	assert_int_equal(env->request_id, 7);
	assert_int_equal(env->body_case, GRIDD__V1__ENVELOPE__BODY__NOT_SET);
	frame_envelope_free(env);
	env = frame_decode(unknown, sizeof(unknown), 4096);
	assert_non_null(env);
	assert_int_equal(env->body_case, GRIDD__V1__ENVELOPE__BODY__NOT_SET);
	frame_envelope_free(env);
	/* Zero bytes parse as an empty envelope too; framing rejects length 0
	 * before decoding is ever reached. */
	env = frame_decode(NULL, 0, 4096);
	assert_non_null(env);
	frame_envelope_free(env);
}

static void
test_decode_alloc_cap(void **state)
{
	/* PushIncidents with 2,000 empty IncidentIn elements: 4 KiB on the
	 * wire, far more once unpacked. */
	enum { N = 2000 };
	size_t inner = 2 * N, len = 0;
	uint8_t *buf = malloc(8 + inner);
	Gridd__V1__Envelope *env;

	(void)state;
	assert_non_null(buf);
	buf[len++] = 0x52;	/* field 10 (push_incidents), length-delimited */
	/* varint of inner (4000 < 2^14: two bytes) */
	buf[len++] = (uint8_t)(0x80 | (inner & 0x7f));
	buf[len++] = (uint8_t)(inner >> 7);
	for (size_t i = 0; i < N; i++) {
		buf[len++] = 0x0a;	/* field 1 (incidents) */
		buf[len++] = 0x00;	/* empty message */
	}
	env = frame_decode(buf, len, 16 * 1024);
	assert_null(env);
	/* The same bytes under a generous cap decode to N elements. */
	env = frame_decode(buf, len, 64u * 1024 * 1024);
	assert_non_null(env);
	assert_int_equal(env->body_case,
	    GRIDD__V1__ENVELOPE__BODY_PUSH_INCIDENTS);
	assert_int_equal(env->push_incidents->n_incidents, N);
	frame_envelope_free(env);
	/* A cap of zero refuses even the envelope itself. */
	assert_null(frame_decode(buf, len, 0));
	free(buf);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_peek_partial_header),
		cmocka_unit_test(test_peek_zero),
		cmocka_unit_test(test_peek_limits),
		cmocka_unit_test(test_peek_ready),
		cmocka_unit_test(test_peek_evbuffer),
		cmocka_unit_test(test_decode_garbage),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_no_body),
		cmocka_unit_test(test_decode_alloc_cap),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

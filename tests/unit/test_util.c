/* test_util.c - hex, constant-time compare and string helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util.h"

static void
test_hex_round_trip(void **state)
{
	uint8_t in[4] = { 0x00, 0x7f, 0xa5, 0xff }, out[4];
	char hex[9];

	(void)state;
	hex_encode(in, sizeof(in), hex);
	assert_string_equal(hex, "007fa5ff");
	assert_true(hex_decode(hex, out, sizeof(out)));
	assert_memory_equal(in, out, sizeof(in));
	assert_true(hex_decode("007FA5FF", out, sizeof(out)));
	assert_memory_equal(in, out, sizeof(in));
}

static void
test_hex_rejects(void **state)
{
	uint8_t out[2];

	(void)state;
	assert_false(hex_decode("abc", out, 2));	/* short */
	assert_false(hex_decode("abcdef", out, 2));	/* long */
	assert_false(hex_decode("abzz", out, 2));	/* not hex */
	assert_false(hex_decode("", out, 2));
}

static void
test_ct_equal(void **state)
{
	(void)state;
	assert_true(ct_equal("abcd", "abcd", 4));
	assert_false(ct_equal("abcd", "abce", 4));
	assert_true(ct_equal("x", "y", 0));
}

static void
test_xstrndup(void **state)
{
	char *s;

	(void)state;
	s = xstrndup("hello", 3);
	assert_string_equal(s, "hel");
	free(s);
	s = xstrndup("hi", 10);
	assert_string_equal(s, "hi");
	free(s);
}

static void
test_utf8_prefix(void **state)
{
	/* "网格" is 6 bytes: two 3-byte characters. */
	const char *s = "\xe7\xbd\x91\xe6\xa0\xbc";

	(void)state;
	assert_int_equal(utf8_prefix("abc", 10), 3);
	assert_int_equal(utf8_prefix("abcdef", 4), 4);
	assert_int_equal(utf8_prefix(s, 6), 6);
	assert_int_equal(utf8_prefix(s, 5), 3);	/* not inside 格 */
	assert_int_equal(utf8_prefix(s, 4), 3);
	assert_int_equal(utf8_prefix(s, 3), 3);
	assert_int_equal(utf8_prefix(s, 2), 0);	/* not inside 网 */
	assert_int_equal(utf8_prefix("", 5), 0);
}

/* The published FNV-1a test vectors; migrate.c's advisory lock key must
 * stay what every earlier gridd computed for "gridd.migrate" (processes
 * of two versions migrate under the same lock). */
#define MIGRATE_KEY 0x9375f44a764b2cd8ull
static void
test_fnv1a(void **state)
{
	(void)state;
	assert_true(fnv1a32("") == 0x811c9dc5u);
	assert_true(fnv1a32("a") == 0xe40c292cu);
	assert_true(fnv1a32("foobar") == 0xbf9cf968u);
	assert_true(fnv1a64("") == 0xcbf29ce484222325ull);
	assert_true(fnv1a64("a") == 0xaf63dc4c8601ec8cull);
	assert_true(fnv1a64("foobar") == 0x85944171f73967e8ull);
	assert_true(fnv1a64("gridd.migrate") == MIGRATE_KEY);
}

static void
test_clocks(void **state)
{
	int64_t a = mono_ms(), b = mono_ms();

	(void)state;
	assert_true(b >= a);
	assert_true(now_ms() > 1600000000000LL);	/* after 2020 */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hex_round_trip),
		cmocka_unit_test(test_hex_rejects),
		cmocka_unit_test(test_ct_equal),
		cmocka_unit_test(test_xstrndup),
		cmocka_unit_test(test_utf8_prefix),
		cmocka_unit_test(test_clocks),
		cmocka_unit_test(test_fnv1a),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* util.h - allocation, time and hex helpers shared by every subsystem. */
#ifndef GRIDD_UTIL_H
#define GRIDD_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define WUR __attribute__((warn_unused_result))
#define PRINTF_LIKE(fmt, args) __attribute__((format(printf, fmt, args)))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define UNUSED(x) ((void)(x))

/* Allocation failure is not a recoverable condition for a daemon that sizes
 * its own limits; these abort with a message instead of returning NULL. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
void *xreallocarray(void *p, size_t n, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Wall clock (for timestamps on the wire) and monotonic clock (for timers). */
int64_t now_ms(void);
int64_t mono_ms(void);

/* out must hold 2*n+1 bytes; always NUL-terminated. */
void hex_encode(const uint8_t *in, size_t n, char *out);
/* The value of one hex digit, or -1. */
int hex_digit(char c);
/* Decodes exactly 2*n hex digits; false on any other length or digit. */
bool hex_decode(const char *in, uint8_t *out, size_t n) WUR;

/* qsort and bsearch with a NULL base are undefined even for zero elements
 * (UBSan's nonnull check), and empty arrays are common: use these. */
static inline void
xqsort(void *base, size_t n, size_t size, int (*cmp)(const void *,
    const void *))
{
	if (n > 1)
		qsort(base, n, size, cmp);
}

static inline void *
xbsearch(const void *key, const void *base, size_t n, size_t size,
    int (*cmp)(const void *, const void *))
{
	return n > 0 ? bsearch(key, base, n, size, cmp) : NULL;
}

/* Well-formed UTF-8 (no overlongs, surrogates or code points past
 * U+10FFFF) of at most max characters. */
bool utf8_valid(const char *s, size_t max) WUR;

/* Length in bytes of the longest prefix of s, at most max bytes, that ends
 * on a UTF-8 character boundary: printf's "%.Ns" cuts in the middle of a
 * character, and protobuf runtimes refuse a string that is not UTF-8. Use
 * as "%.*s", (int)utf8_prefix(s, N), s. */
size_t utf8_prefix(const char *s, size_t max);

/* Constant-time comparison for secrets and their hashes. */
bool ct_equal(const void *a, const void *b, size_t n) WUR;

/* FNV-1a of a NUL-terminated string, for in-process hash tables and for
 * keys every process must agree on (a fixed definition, unlike a
 * server-side hash). */
uint32_t fnv1a32(const char *s);
uint64_t fnv1a64(const char *s);

#endif

/* parse.c - gridctl's argument and field parsers: numbers, times, ids. */
#include "parse.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

bool
gcp_id(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > GCP_MAX_ID)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

bool
gcp_int(const char *s, long long lo, long long hi, long long *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

bool
gcp_double(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || *end != '\0' || !isfinite(v))
		return false;
	*out = v;
	return true;
}

bool
gcp_time_ms(const char *s, int64_t *out)
{
	struct tm tm;
	long long v;
	const char *end;

	if (gcp_int(s, 0, INT64_MAX / 2, &v)) {
		*out = v;
		return true;
	}
	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%d", &tm);
	if (end != NULL && (*end == 'T' || *end == ' ')) {
		const char *t = strptime(end + 1, "%H:%M:%S", &tm);

		end = t != NULL ? t : strptime(end + 1, "%H:%M", &tm);
	}
	if (end != NULL && *end == 'Z')
		end++;
	if (end == NULL || *end != '\0')
		return false;
	*out = (int64_t)timegm(&tm) * 1000;
	return true;
}

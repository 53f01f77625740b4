/* render.c - replies as JSON or readable text, walked from the descriptors. */
#include "render.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Length of the valid UTF-8 sequence at p (at most n bytes), 0 if invalid. */
static size_t
utf8_len(const unsigned char *p, size_t n)
{
	uint32_t cp;
	size_t len, i;

	if (p[0] < 0x80)
		return 1;
	if ((p[0] & 0xe0) == 0xc0) {
		len = 2;
		cp = p[0] & 0x1f;
	} else if ((p[0] & 0xf0) == 0xe0) {
		len = 3;
		cp = p[0] & 0x0f;
	} else if ((p[0] & 0xf8) == 0xf0) {
		len = 4;
		cp = p[0] & 0x07;
	} else
		return 0;
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	/* Overlong forms, surrogates and values past U+10FFFF are invalid. */
	if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
	    (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

void
render_json_string(FILE *fp, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0;

	fputc('"', fp);
	while (i < n) {
		unsigned char ch = p[i];
		size_t l;

		switch (ch) {
		case '"':
			fputs("\\\"", fp);
			i++;
			continue;
		case '\\':
			fputs("\\\\", fp);
			i++;
			continue;
		case '\n':
			fputs("\\n", fp);
			i++;
			continue;
		case '\r':
			fputs("\\r", fp);
			i++;
			continue;
		case '\t':
			fputs("\\t", fp);
			i++;
			continue;
		default:
			break;
		}
		if (ch < 0x20 || ch == 0x7f) {
			fprintf(fp, "\\u%04x", ch);
			i++;
			continue;
		}
		l = utf8_len(p + i, n - i);
		if (l == 0) {
			fputs("\\ufffd", fp);
			i++;
			continue;
		}
		fwrite(p + i, 1, l, fp);
		i += l;
	}
	fputc('"', fp);
}

const char *
render_enum_name(const ProtobufCEnumDescriptor *d, int value)
{
	const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d,
	    value);

	return v != NULL ? v->name : NULL;
}

void
render_time(FILE *fp, long long ms)
{
	time_t secs = (time_t)(ms / 1000);
	struct tm tm;
	char buf[64];

	if (ms < 0 || gmtime_r(&secs, &tm) == NULL ||
	    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
		fprintf(fp, "%lld", ms);
		return;
	}
	fprintf(fp, "%s.%03lldZ", buf, ms % 1000);
}

/* Whether field f of m is present: oneof members only when chosen,
 * sub-messages only when set; proto3 scalars always. */
static bool
field_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
	const char *base = (const char *)m;

	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
		return *(const uint32_t *)(base + f->quantifier_offset) ==
		    f->id;
	if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset &&
	    f->type != PROTOBUF_C_TYPE_MESSAGE &&
	    f->type != PROTOBUF_C_TYPE_STRING)
		return *(const protobuf_c_boolean *)(base +
		    f->quantifier_offset);
	if (f->type == PROTOBUF_C_TYPE_MESSAGE &&
	    f->label != PROTOBUF_C_LABEL_REPEATED)
		return *(ProtobufCMessage * const *)(base + f->offset) != NULL;
	return true;
}

static size_t
elem_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		return 4;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return 8;
	case PROTOBUF_C_TYPE_FLOAT:
		return sizeof(float);
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(ProtobufCMessage *);
	}
	return 0;
}

static void
json_double(FILE *fp, double d)
{
	if (isnan(d))
		fputs("\"NaN\"", fp);
	else if (isinf(d))
		fputs(d > 0 ? "\"Infinity\"" : "\"-Infinity\"", fp);
	else
		fprintf(fp, "%.17g", d);
}

static void
json_value(FILE *fp, const ProtobufCFieldDescriptor *f, const void *v)
{
	static const char b64[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		fprintf(fp, "%" PRId32, *(const int32_t *)v);
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		fprintf(fp, "%" PRIu32, *(const uint32_t *)v);
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		fprintf(fp, "%" PRId64, *(const int64_t *)v);
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		fprintf(fp, "%" PRIu64, *(const uint64_t *)v);
		break;
	case PROTOBUF_C_TYPE_FLOAT:
		json_double(fp, *(const float *)v);
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		json_double(fp, *(const double *)v);
		break;
	case PROTOBUF_C_TYPE_BOOL:
		fputs(*(const protobuf_c_boolean *)v ? "true" : "false", fp);
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		int32_t e = *(const int32_t *)v;
		const char *name = render_enum_name(f->descriptor, e);

		if (name != NULL)
			render_json_string(fp, name, strlen(name));
		else
			fprintf(fp, "%" PRId32, e);
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char * const *)v;

		if (s == NULL)
			s = "";
		render_json_string(fp, s, strlen(s));
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *b = v;

		fputc('"', fp);
		for (size_t i = 0; i < b->len; i += 3) {
			uint32_t w = (uint32_t)b->data[i] << 16;

			if (i + 1 < b->len)
				w |= (uint32_t)b->data[i + 1] << 8;
			if (i + 2 < b->len)
				w |= b->data[i + 2];
			fputc(b64[w >> 18 & 63], fp);
			fputc(b64[w >> 12 & 63], fp);
			fputc(i + 1 < b->len ? b64[w >> 6 & 63] : '=', fp);
			fputc(i + 2 < b->len ? b64[w & 63] : '=', fp);
		}
		fputc('"', fp);
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *sub = *(ProtobufCMessage * const *)v;

		if (sub == NULL)
			fputs("null", fp);
		else
			render_json_message(fp, sub);
		break;
	}
	}
}

int
render_json_fields(FILE *fp, const ProtobufCMessage *m, int first)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	const char *base = (const char *)m;
	int written = 0;

	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];

		if (!field_present(m, f))
			continue;
		if (!first || written > 0)
			fputc(',', fp);
		render_json_string(fp, f->name, strlen(f->name));
		fputc(':', fp);
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)(base +
			    f->quantifier_offset);
			const char *arr = *(char * const *)(base + f->offset);

			fputc('[', fp);
			for (size_t k = 0; k < n; k++) {
				if (k > 0)
					fputc(',', fp);
				json_value(fp, f, arr + k * elem_size(f->type));
			}
			fputc(']', fp);
		} else
			json_value(fp, f, base + f->offset);
		written++;
	}
	return written;
}

void
render_json_message(FILE *fp, const ProtobufCMessage *m)
{
	fputc('{', fp);
	(void)render_json_fields(fp, m, 1);
	fputc('}', fp);
}

void
render_text_string(FILE *fp, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '\n')
			fputs("\\n", fp);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(fp, "\\x%02x", *p);
		else
			fputc(*p, fp);
	}
}

/* Fields holding milliseconds since the epoch, shown also as UTC time. */
static bool
is_time_field(const char *name)
{
	size_t n = strlen(name);

	return strcmp(name, "server_time") == 0 ||
	    strcmp(name, "deadline") == 0 || strcmp(name, "from") == 0 ||
	    strcmp(name, "to") == 0 ||
	    (n > 3 && strcmp(name + n - 3, "_at") == 0) || strcmp(name,
	    "at") == 0;
}

static void
text_value(FILE *fp, const ProtobufCFieldDescriptor *f, const void *v,
    int indent)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char * const *)v;

		render_text_string(fp, s != NULL ? s : "");
		fputc('\n', fp);
		break;
	}
	case PROTOBUF_C_TYPE_ENUM: {
		int32_t e = *(const int32_t *)v;
		const char *name = render_enum_name(f->descriptor, e);

		if (name != NULL)
			fprintf(fp, "%s\n", name);
		else
			fprintf(fp, "%" PRId32 "\n", e);
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *sub = *(ProtobufCMessage * const *)v;

		fputc('\n', fp);
		if (sub != NULL)
			render_text_message(fp, sub, indent + 2);
		break;
	}
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64: {
		int64_t x = *(const int64_t *)v;

		fprintf(fp, "%" PRId64, x);
		if (x > 0 && is_time_field(f->name)) {
			fputs(" (", fp);
			render_time(fp, x);
			fputc(')', fp);
		}
		fputc('\n', fp);
		break;
	}
	default:
		json_value(fp, f, v);
		fputc('\n', fp);
		break;
	}
}

void
render_text_message(FILE *fp, const ProtobufCMessage *m, int indent)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	const char *base = (const char *)m;

	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];

		if (!field_present(m, f))
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)(base +
			    f->quantifier_offset);
			const char *arr = *(char * const *)(base + f->offset);

			if (n == 0) {
				fprintf(fp, "%*s%s: (none)\n", indent, "",
				    f->name);
				continue;
			}
			for (size_t k = 0; k < n; k++) {
				fprintf(fp, "%*s%s[%zu]: ", indent, "",
				    f->name, k);
				text_value(fp, f, arr + k * elem_size(f->type),
				    indent);
			}
			continue;
		}
		fprintf(fp, "%*s%s: ", indent, "", f->name);
		text_value(fp, f, base + f->offset, indent);
	}
}

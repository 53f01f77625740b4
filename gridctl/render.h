/* render.h - replies as JSON or readable text, walked from the descriptors. */
#ifndef GRIDCTL_RENDER_H
#define GRIDCTL_RENDER_H

#include <stddef.h>
#include <stdio.h>

#include <protobuf-c/protobuf-c.h>

/* A JSON string literal: escaped, invalid UTF-8 replaced by U+FFFD. */
void render_json_string(FILE *fp, const char *s, size_t n);
/* The members of m as JSON "name":value pairs (no braces), proto field
 * names, enums by name; returns how many were written. first says whether
 * a comma must precede the first one. */
int render_json_fields(FILE *fp, const ProtobufCMessage *m, int first);
/* One JSON object for m. */
void render_json_message(FILE *fp, const ProtobufCMessage *m);

/* "name: value" lines, nested messages indented; control characters a
 * server could use against a terminal are shown escaped. */
void render_text_message(FILE *fp, const ProtobufCMessage *m, int indent);
/* s with control characters escaped. */
void render_text_string(FILE *fp, const char *s);

/* Name of an enum value, or NULL when the value is not in the enum. */
const char *render_enum_name(const ProtobufCEnumDescriptor *d, int value);

/* "2024-05-01T08:00:00.123Z" for milliseconds since the epoch. */
void render_time(FILE *fp, long long ms);

#endif

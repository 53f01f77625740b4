/* push.c - `gridctl push`: incidents from a CSV file, sent in batches. */
#include "push.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "parse.h"
#include "render.h"

/* A CSV record longer than this, or with more fields, is not an incident
 * row but a broken file. */
#define PUSH_MAX_RECORD (64 * 1024)
#define PUSH_MAX_FIELDS 32

enum push_col {
	COL_EXT_ID,
	COL_CATEGORY,
	COL_OCCURRED_AT,
	COL_LON,
	COL_LAT,
	COL_DEPT_GRID_CODE,
	COL_BUILDING_ID,
	COL_ADDRESS,
	COL_DESCRIPTION,
	COL_SEVERITY,
	COL_COUNT,
};

/* Header names are the IncidentIn field names. */
static const char *const col_names[COL_COUNT] = {
	"ext_id", "category", "occurred_at", "lon", "lat", "dept_grid_code",
	"building_id", "address", "description", "severity",
};

struct csv {
	FILE *fp;
	const char *path;
	long line;		/* line where the current record started */
	long next_line;
	char *buf;		/* fields, each NUL-terminated */
	size_t len;
	char *fields[PUSH_MAX_FIELDS];
	size_t n_fields;
};

/* Reads one RFC 4180 record: 1 = got one, 0 = end of file, -1 = error
 * (printed). */
static int
csv_next(struct csv *c)
{
	bool quoted = false, any = false;
	int ch;

	c->len = 0;
	c->n_fields = 0;
	c->line = c->next_line;
	c->fields[c->n_fields++] = c->buf;
	for (;;) {
		ch = getc(c->fp);
		if (ch == EOF) {
			if (ferror(c->fp)) {
				fprintf(stderr, "gridctl: %s: %s\n", c->path,
				    strerror(errno));
				return -1;
			}
			if (quoted) {
				fprintf(stderr, "gridctl: %s:%ld: unterminated "
				    "quote\n", c->path, c->line);
				return -1;
			}
			if (!any)
				return 0;
			break;
		}
		any = true;
		if (ch == '\n')
			c->next_line++;
		if (quoted) {
			if (ch == '"') {
				int nx = getc(c->fp);

				if (nx != '"') {
					quoted = false;
					if (nx != EOF)
						ungetc(nx, c->fp);
					continue;
				}
			}
		} else if (ch == '"') {
			quoted = true;
			continue;
		} else if (ch == '\r') {
			continue;
		} else if (ch == '\n') {
			break;
		} else if (ch == ',') {
			if (c->n_fields == PUSH_MAX_FIELDS) {
				fprintf(stderr, "gridctl: %s:%ld: more than %d "
				    "fields\n", c->path, c->line,
				    PUSH_MAX_FIELDS);
				return -1;
			}
			c->buf[c->len++] = '\0';
			c->fields[c->n_fields++] = c->buf + c->len;
			continue;
		}
		if (c->len + 2 > PUSH_MAX_RECORD) {
			fprintf(stderr, "gridctl: %s:%ld: record longer than %d "
			    "bytes\n", c->path, c->line, PUSH_MAX_RECORD);
			return -1;
		}
		c->buf[c->len++] = (char)ch;
	}
	c->buf[c->len] = '\0';
	return 1;
}

struct batch {
	Gridd__V1__IncidentIn *items;
	Gridd__V1__IncidentIn **ptrs;
	char **strings;		/* copies owned by the batch */
	size_t n, n_strings, cap;
};

static void
batch_clear(struct batch *b)
{
	for (size_t i = 0; i < b->n_strings; i++)
		free(b->strings[i]);
	b->n = 0;
	b->n_strings = 0;
}

static char *
batch_str(struct batch *b, const char *s)
{
	char *d = xstrdup(s);

	b->strings[b->n_strings++] = d;
	return d;
}

/* Fills one IncidentIn from the record; false (printed) on a bad value. */
static bool
row_to_incident(struct csv *c, const int *map, struct batch *b)
{
	Gridd__V1__IncidentIn *in = &b->items[b->n];
	long long v;

	gridd__v1__incident_in__init(in);
	for (size_t f = 0; f < c->n_fields; f++) {
		const char *val = c->fields[f];
		bool ok = true;

		if (val[0] == '\0')
			continue;
		switch (map[f]) {
		case COL_EXT_ID:
			in->ext_id = batch_str(b, val);
			break;
		case COL_CATEGORY:
			in->category = batch_str(b, val);
			break;
		case COL_OCCURRED_AT:
			ok = gcp_time_ms(val, &in->occurred_at);
			break;
		case COL_LON:
			ok = gcp_double(val, &in->lon);
			break;
		case COL_LAT:
			ok = gcp_double(val, &in->lat);
			break;
		case COL_DEPT_GRID_CODE:
			in->dept_grid_code = batch_str(b, val);
			break;
		case COL_BUILDING_ID:
			in->building_id = batch_str(b, val);
			break;
		case COL_ADDRESS:
			in->address = batch_str(b, val);
			break;
		case COL_DESCRIPTION:
			in->description = batch_str(b, val);
			break;
		case COL_SEVERITY:
			ok = gcp_int(val, INT32_MIN, INT32_MAX, &v);
			in->severity = (int32_t)v;
			break;
		}
		if (!ok) {
			fprintf(stderr, "gridctl: %s:%ld: bad %s: ", c->path,
			    c->line, col_names[map[f]]);
			render_text_string(stderr, val);
			fputc('\n', stderr);
			return false;
		}
	}
	b->ptrs[b->n] = in;
	b->n++;
	return true;
}

static void
print_results(const struct gc_session *s, const Gridd__V1__Envelope *reply,
    size_t counts[5])
{
	const Gridd__V1__PushIncidentsReply *r = reply->push_incidents_reply;

	if (s->json)
		gc_print_reply(s, reply, NULL);
	for (size_t i = 0; i < r->n_results; i++) {
		const Gridd__V1__PushResult *p = r->results[i];
		const char *o = render_enum_name(
		    &gridd__v1__push_result__outcome__descriptor,
		    (int)p->outcome);

		if ((unsigned)p->outcome < 5)
			counts[p->outcome]++;
		if (s->json)
			continue;
		render_text_string(stdout, p->ext_id);
		printf(" %s incident=%llu cell=", o != NULL ? o : "?",
		    (unsigned long long)p->incident_id);
		render_text_string(stdout, p->cell_id);
		if (p->message != NULL && p->message[0] != '\0') {
			fputs(" message=", stdout);
			render_text_string(stdout, p->message);
		}
		fputc('\n', stdout);
	}
}

/* Sends the batch; returns an exit status. */
static int
send_batch(struct gc_session *s, struct batch *b, size_t counts[5])
{
	Gridd__V1__Envelope req = GRIDD__V1__ENVELOPE__INIT, *reply = NULL;
	Gridd__V1__PushIncidents push = GRIDD__V1__PUSH_INCIDENTS__INIT;
	int rc;

	push.incidents = b->ptrs;
	push.n_incidents = b->n;
	req.body_case = GRIDD__V1__ENVELOPE__BODY_PUSH_INCIDENTS;
	req.push_incidents = &push;
	rc = gc_session_call(s, &req, &reply);
	batch_clear(b);
	if (rc != GC_EXIT_OK)
		return rc;
	if (reply->body_case != GRIDD__V1__ENVELOPE__BODY_PUSH_INCIDENTS_REPLY)
		rc = gc_reply_failed(s, reply);
	else
		print_results(s, reply, counts);
	frame_envelope_free(reply);
	return rc;
}

int
push_file(struct gc_session *s, const char *path, size_t batch_size)
{
	struct csv c = { .path = path, .next_line = 1 };
	struct batch b = { 0 };
	int map[PUSH_MAX_FIELDS], rc = GC_EXIT_OK, got;
	size_t counts[5] = { 0 }, n_cols;

	c.fp = fopen(path, "r");
	if (c.fp == NULL) {
		fprintf(stderr, "gridctl: %s: %s\n", path, strerror(errno));
		return GC_EXIT_USAGE;
	}
	c.buf = xmalloc(PUSH_MAX_RECORD);
	got = csv_next(&c);
	if (got <= 0) {
		if (got == 0)
			fprintf(stderr, "gridctl: %s: empty file (want a CSV "
			    "header line)\n", path);
		rc = GC_EXIT_USAGE;
		goto out;
	}
	if (c.fields[0][0] == '{') {
		fprintf(stderr, "gridctl: %s: JSON lines input is not "
		    "supported by this gridctl yet; use CSV\n", path);
		rc = GC_EXIT_USAGE;
		goto out;
	}
	for (size_t f = 0; f < c.n_fields; f++) {
		map[f] = -1;
		for (int k = 0; k < COL_COUNT; k++)
			if (strcmp(c.fields[f], col_names[k]) == 0)
				map[f] = k;
		for (size_t g = 0; g < f && map[f] >= 0; g++)
			if (map[g] == map[f]) {
				fprintf(stderr, "gridctl: %s:1: column %s "
				    "twice\n", path, col_names[map[f]]);
				rc = GC_EXIT_USAGE;
				goto out;
			}
		if (map[f] < 0) {
			fprintf(stderr, "gridctl: %s:1: unknown column \"",
			    path);
			render_text_string(stderr, c.fields[f]);
			fputs("\" (columns are IncidentIn fields: ext_id, "
			    "category, occurred_at, lon, lat, ...)\n", stderr);
			rc = GC_EXIT_USAGE;
			goto out;
		}
	}
	n_cols = c.n_fields;

	b.cap = batch_size;
	b.items = xcalloc(batch_size, sizeof(*b.items));
	b.ptrs = xcalloc(batch_size, sizeof(*b.ptrs));
	b.strings = xcalloc(batch_size * COL_COUNT, sizeof(*b.strings));
	rc = gc_session_open(s);
	while (rc == GC_EXIT_OK && (got = csv_next(&c)) > 0) {
		if (c.n_fields == 1 && c.fields[0][0] == '\0')
			continue;	/* blank line */
		if (c.n_fields != n_cols) {
			fprintf(stderr, "gridctl: %s:%ld: %zu fields, header "
			    "has %zu\n", path, c.line, c.n_fields, n_cols);
			rc = GC_EXIT_USAGE;
			break;
		}
		if (!row_to_incident(&c, map, &b)) {
			rc = GC_EXIT_USAGE;
			break;
		}
		if (b.n == b.cap)
			rc = send_batch(s, &b, counts);
	}
	if (got < 0 && rc == GC_EXIT_OK)
		rc = GC_EXIT_USAGE;
	if (rc == GC_EXIT_OK && b.n > 0)
		rc = send_batch(s, &b, counts);
	if (rc == GC_EXIT_OK && !s->json)
		printf("%zu accepted, %zu merged, %zu duplicate, %zu rejected\n",
		    counts[GRIDD__V1__PUSH_RESULT__OUTCOME__ACCEPTED],
		    counts[GRIDD__V1__PUSH_RESULT__OUTCOME__MERGED],
		    counts[GRIDD__V1__PUSH_RESULT__OUTCOME__DUPLICATE],
		    counts[GRIDD__V1__PUSH_RESULT__OUTCOME__REJECTED]);
out:
	batch_clear(&b);
	free(b.items);
	free(b.ptrs);
	free(b.strings);
	free(c.buf);
	fclose(c.fp);
	return rc;
}

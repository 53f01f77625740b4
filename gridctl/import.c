/* import.c - `gridctl import`: read, validate and stream grid data to gridd. */
#include "import.h"

#include <errno.h>
#include <getopt.h>
#include <json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "frame.h"
#include "parse.h"
#include "render.h"

/* A CSV record longer than this is a broken file, not a building. */
#define IMPORT_MAX_RECORD	(64 * 1024)
#define IMPORT_MAX_FIELDS	64
/* Row problems printed one by one; the rest are counted. */
#define IMPORT_MAX_PRINTED	100
/* JSON nesting: a FeatureCollection of MultiPolygons is 8 deep. */
#define IMPORT_JSON_DEPTH	64
/* Report text kept from the replies of one import. */
#define IMPORT_MAX_REPORT	(64 * 1024)
/* Server error texts echoed per import; the rest are counted. */
#define IMPORT_MAX_SERVER_ERRORS 200

static const char *const what_name[] = { "communities", "buildings",
    "layer" };

struct totals {
	long long inserted, updated, unchanged, rejected;
	size_t requests;
	size_t server_errors;
	char *report;		/* the last reply's */
};

static void PRINTF_LIKE(3, 4)
row_bad(struct import_rows *r, long pos, const char *fmt, ...)
{
	va_list ap;

	r->bad++;
	if (r->printed++ >= IMPORT_MAX_PRINTED || r->errs == NULL)
		return;
	if (r->geojson)
		fprintf(r->errs, "gridctl: %s: feature %ld: ", r->path, pos);
	else
		fprintf(r->errs, "gridctl: %s:%ld: ", r->path, pos);
	va_start(ap, fmt);
	vfprintf(r->errs, fmt, ap);
	va_end(ap);
	fputc('\n', r->errs);
}

/* A problem with the file as a whole. */
static void PRINTF_LIKE(2, 3)
file_bad(struct import_rows *r, const char *fmt, ...)
{
	va_list ap;

	if (r->errs == NULL)
		return;
	fprintf(r->errs, "gridctl: %s", r->path);
	va_start(ap, fmt);
	vfprintf(r->errs, fmt, ap);
	va_end(ap);
	fputc('\n', r->errs);
}

static void *
rows_grow(struct import_rows *r)
{
	if (r->n == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 1024;
		switch (r->what) {
		case IMPORT_COMMUNITIES:
			r->comm = xreallocarray(r->comm, r->cap,
			    sizeof(*r->comm));
			break;
		case IMPORT_BUILDINGS:
			r->bld = xreallocarray(r->bld, r->cap, sizeof(*r->bld));
			break;
		case IMPORT_LAYER:
			r->lay = xreallocarray(r->lay, r->cap, sizeof(*r->lay));
			break;
		}
	}
	switch (r->what) {
	case IMPORT_COMMUNITIES:
		gridd__v1__community_in__init(&r->comm[r->n]);
		return &r->comm[r->n++];
	case IMPORT_BUILDINGS:
		gridd__v1__building_in__init(&r->bld[r->n]);
		return &r->bld[r->n++];
	case IMPORT_LAYER:
	default:
		gridd__v1__layer_cell_in__init(&r->lay[r->n]);
		return &r->lay[r->n++];
	}
}

void
import_rows_init(struct import_rows *r, enum import_what what,
    const char *path, FILE *errs)
{
	memset(r, 0, sizeof(*r));
	r->what = what;
	r->path = path;
	r->errs = errs;
}

void
import_rows_free(struct import_rows *r)
{
	for (size_t i = 0; i < r->n; i++) {
		switch (r->what) {
		case IMPORT_COMMUNITIES:
			free(r->comm[i].community_id);
			free(r->comm[i].name);
			free(r->comm[i].code);
			free(r->comm[i].geojson);
			break;
		case IMPORT_BUILDINGS:
			free(r->bld[i].building_id);
			free(r->bld[i].community_id);
			free(r->bld[i].kind);
			free(r->bld[i].geojson);
			break;
		case IMPORT_LAYER:
			free(r->lay[i].code);
			free(r->lay[i].geojson);
			break;
		}
	}
	free(r->comm);
	free(r->bld);
	free(r->lay);
	memset(r, 0, sizeof(*r));
}

/* ---- field checks (the server checks again; this finds the line) ---------- */

static bool
id_chars(const char *s, const char *extra)
{
	size_t n = strlen(s);

	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
		    (ch >= '0' && ch <= '9') || ch == '_' || ch == '.' ||
		    ch == '-' || (extra != NULL && strchr(extra, ch) != NULL)))
			return false;
	}
	return n >= 1 && n <= 64;
}

/* Text without control characters, at most max bytes. */
static bool
plain_text(const char *s, size_t max)
{
	size_t n = strlen(s);

	if (n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

static bool
kind_ok(const char *k)
{
	static const char *const kinds[] = { "residential", "commercial",
	    "industrial", "public", "agricultural", "other", "unknown" };

	if (k[0] == '\0')
		return true;
	for (size_t i = 0; i < ARRAY_LEN(kinds); i++)
		if (strcmp(k, kinds[i]) == 0)
			return true;
	return false;
}

/* levels may be fractional in the data ("3.5"); the grid stores whole
 * levels, rounded. */
static bool
levels_parse(const char *s, int32_t *out)
{
	double d;

	if (s[0] == '\0') {
		*out = 0;
		return true;
	}
	if (!gcp_double(s, &d) || d < 0 || d > 500)
		return false;
	*out = (int32_t)lround(d);
	return true;
}

/* Checks one building; false (reported) if it must be skipped. */
static bool
building_ok(struct import_rows *r, long pos, const Gridd__V1__BuildingIn *b)
{
	if (!id_chars(b->building_id, ":"))
		row_bad(r, pos, "id: must be 1-64 characters of A-Z a-z 0-9 "
		    "_ . : -");
	else if (!id_chars(b->community_id, NULL))
		row_bad(r, pos, "community: must be 1-64 characters of "
		    "A-Z a-z 0-9 _ . -");
	else if (!kind_ok(b->kind))
		row_bad(r, pos, "kind: must be residential, commercial, "
		    "industrial, public, agricultural, other or unknown");
	else if (b->households < 0 || b->households > 100000)
		row_bad(r, pos, "households: must be 0..100000");
	else if (!(b->lon >= -180 && b->lon <= 180 && b->lat >= -90 &&
	    b->lat <= 90))
		row_bad(r, pos, "lon/lat: outside -180..180 / -90..90");
	else if (!(b->area_m2 >= 0 && b->area_m2 < 1e8))
		row_bad(r, pos, "area_m2: must be 0 <= area < 1e8");
	else
		return true;
	return false;
}

/* ---- files -------------------------------------------------------------------- */

static char *
read_file(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	struct stat st;
	char *buf;
	size_t got;

	if (fp == NULL) {
		fprintf(stderr, "gridctl: %s: %s\n", path, strerror(errno));
		return NULL;
	}
	if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "gridctl: %s: not a regular file\n", path);
		fclose(fp);
		return NULL;
	}
	if ((size_t)st.st_size > IMPORT_MAX_FILE) {
		fprintf(stderr, "gridctl: %s: larger than %zu MiB\n", path,
		    IMPORT_MAX_FILE >> 20);
		fclose(fp);
		return NULL;
	}
	buf = xmalloc((size_t)st.st_size + 1);
	got = fread(buf, 1, (size_t)st.st_size, fp);
	if (ferror(fp) || got != (size_t)st.st_size) {
		fprintf(stderr, "gridctl: %s: read error\n", path);
		fclose(fp);
		free(buf);
		return NULL;
	}
	fclose(fp);
	buf[got] = '\0';
	*len = got;
	return buf;
}

/* ---- CSV ------------------------------------------------------------------------ */

struct csv {
	const char *p, *end;
	long line, next_line;
	char *buf;
	size_t len;
	char *fields[IMPORT_MAX_FIELDS];
	size_t n_fields;
};

/* One RFC 4180 record from the buffer: 1 got one, 0 end, -1 malformed
 * (the message is in err). */
static int
csv_next(struct csv *c, const char **err)
{
	bool quoted = false, any = false;

	c->len = 0;
	c->n_fields = 0;
	c->line = c->next_line;
	c->fields[c->n_fields++] = c->buf;
	while (c->p < c->end) {
		char ch = *c->p++;

		any = true;
		if (ch == '\n')
			c->next_line++;
		if (quoted) {
			if (ch == '"') {
				if (c->p < c->end && *c->p == '"')
					c->p++;
				else {
					quoted = false;
					continue;
				}
			}
		} else if (ch == '"') {
			quoted = true;
			continue;
		} else if (ch == ',') {
			if (c->n_fields == IMPORT_MAX_FIELDS) {
				*err = "too many fields";
				return -1;
			}
			c->buf[c->len++] = '\0';
			c->fields[c->n_fields++] = c->buf + c->len;
			continue;
		} else if (ch == '\n' || ch == '\r') {
			if (ch == '\r' && c->p < c->end && *c->p == '\n') {
				c->p++;
				c->next_line++;
			} else if (ch == '\r')
				c->next_line++;
			if (c->len == 0 && c->n_fields == 1) {
				/* A blank line. */
				c->line = c->next_line;
				any = false;
				continue;
			}
			break;
		}
		if (ch == '\0') {
			*err = "NUL byte";
			return -1;
		}
		if (c->len + 2 >= IMPORT_MAX_RECORD) {
			*err = "record longer than 64 KiB";
			return -1;
		}
		c->buf[c->len++] = ch;
	}
	if (quoted) {
		*err = "unterminated quote";
		return -1;
	}
	c->buf[c->len] = '\0';
	return any ? 1 : 0;
}

enum bcol {
	B_ID,
	B_COMMUNITY,
	B_KIND,
	B_HOUSEHOLDS,
	B_LEVELS,
	B_LON,
	B_LAT,
	B_AREA,
	B_NCOL,
};

/* Accepted header names per column (the sample's own first). */
static const char *const bcol_names[B_NCOL][4] = {
	[B_ID] = { "id", "building_id", NULL },
	[B_COMMUNITY] = { "community", "municipality", "community_id", NULL },
	[B_KIND] = { "kind", NULL },
	[B_HOUSEHOLDS] = { "households", NULL },
	[B_LEVELS] = { "levels", NULL },
	[B_LON] = { "lon", "centroid_lon", "longitude", NULL },
	[B_LAT] = { "lat", "centroid_lat", "latitude", NULL },
	[B_AREA] = { "area_m2", "area", NULL },
};

bool
import_parse_csv(struct import_rows *r, const char *text, size_t len)
{
	struct csv c = { .p = text, .end = text + len, .next_line = 1 };
	int map[B_NCOL], rc;
	const char *err = NULL;
	bool ok = false;

	r->geojson = false;
	c.buf = xmalloc(IMPORT_MAX_RECORD + 1);
	for (int k = 0; k < B_NCOL; k++)
		map[k] = -1;
	/* A UTF-8 byte order mark before the header. */
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		c.p += 3;
	if ((rc = csv_next(&c, &err)) != 1) {
		file_bad(r, ":1: %s", rc == 0 ? "empty file, want a header line" :
		    err);
		goto out;
	}
	for (size_t f = 0; f < c.n_fields; f++)
		for (int k = 0; k < B_NCOL; k++)
			for (int a = 0; bcol_names[k][a] != NULL; a++)
				if (strcasecmp(c.fields[f], bcol_names[k][a]) ==
				    0 && map[k] < 0)
					map[k] = (int)f;
	if (map[B_ID] < 0 || map[B_COMMUNITY] < 0 || map[B_LON] < 0 ||
	    map[B_LAT] < 0) {
		file_bad(r, ":1: the header needs id, community (or "
		    "municipality), lon (or centroid_lon) and lat (or "
		    "centroid_lat)");
		goto out;
	}
	for (;;) {
		Gridd__V1__BuildingIn b = GRIDD__V1__BUILDING_IN__INIT;
		const char *fv[B_NCOL];
		long long v;

		if ((rc = csv_next(&c, &err)) == 0)
			break;
		if (rc < 0) {
			file_bad(r, ":%ld: %s", c.line, err);
			goto out;
		}
		if (++r->read > IMPORT_MAX_ROWS) {
			file_bad(r, ": more than %d rows", IMPORT_MAX_ROWS);
			goto out;
		}
		for (int k = 0; k < B_NCOL; k++)
			fv[k] = map[k] >= 0 && (size_t)map[k] < c.n_fields ?
			    c.fields[map[k]] : "";
		b.building_id = (char *)fv[B_ID];
		b.community_id = (char *)fv[B_COMMUNITY];
		b.kind = (char *)fv[B_KIND];
		if (fv[B_HOUSEHOLDS][0] == '\0')
			v = 0;
		else if (!gcp_int(fv[B_HOUSEHOLDS], 0, 100000, &v)) {
			row_bad(r, c.line, "households: must be a whole "
			    "number 0..100000, got \"%.40s\"",
			    fv[B_HOUSEHOLDS]);
			continue;
		}
		b.households = (int32_t)v;
		if (!levels_parse(fv[B_LEVELS], &b.levels)) {
			row_bad(r, c.line, "levels: must be 0..500 or empty, "
			    "got \"%.40s\"", fv[B_LEVELS]);
			continue;
		}
		if (!gcp_double(fv[B_LON], &b.lon) ||
		    !gcp_double(fv[B_LAT], &b.lat)) {
			row_bad(r, c.line, "lon/lat: missing or not a number");
			continue;
		}
		if (fv[B_AREA][0] != '\0' && !gcp_double(fv[B_AREA],
		    &b.area_m2)) {
			row_bad(r, c.line, "area_m2: not a number, got "
			    "\"%.40s\"", fv[B_AREA]);
			continue;
		}
		if (!building_ok(r, c.line, &b))
			continue;
		Gridd__V1__BuildingIn *o = rows_grow(r);

		*o = b;
		o->building_id = xstrdup(b.building_id);
		o->community_id = xstrdup(b.community_id);
		o->kind = xstrdup(b.kind);
		o->geojson = xstrdup("");
		o->line = c.line > INT32_MAX ? 0 : (int32_t)c.line;
	}
	ok = true;
out:
	free(c.buf);
	return ok;
}

/* ---- GeoJSON -------------------------------------------------------------------- */

/* A property (or the Feature's own member) as text: strings as they are,
 * integers in decimal; NULL for anything else or absent. */
static const char *
prop_text(json_object *o, const char *key, char *buf, size_t len)
{
	json_object *v;

	if (o == NULL || !json_object_object_get_ex(o, key, &v) || v == NULL)
		return NULL;
	switch (json_object_get_type(v)) {
	case json_type_string:
		return json_object_get_string(v);
	case json_type_int:
		snprintf(buf, len, "%lld", (long long)json_object_get_int64(v));
		return buf;
	default:
		return NULL;
	}
}

/* A numeric property: 1 found, 0 absent or null, -1 present but not a
 * number. */
static int
prop_num(json_object *o, const char *key, double *out)
{
	json_object *v;

	if (o == NULL || !json_object_object_get_ex(o, key, &v) || v == NULL)
		return 0;
	switch (json_object_get_type(v)) {
	case json_type_int:
		*out = (double)json_object_get_int64(v);
		return 1;
	case json_type_double:
		*out = json_object_get_double(v);
		return isfinite(*out) ? 1 : -1;
	case json_type_string:
		if (json_object_get_string(v)[0] == '\0')
			return 0;
		return gcp_double(json_object_get_string(v), out) ? 1 : -1;
	default:
		return -1;
	}
}

/* Area and centroid of one ring (shoelace, in degrees: fine for a
 * building's centroid). */
static void
ring_moments(json_object *ring, double *a, double *cx, double *cy,
    bool *bad)
{
	size_t n = json_object_array_length(ring);
	double s = 0, sx = 0, sy = 0, x0 = 0, y0 = 0;

	for (size_t i = 0; i < n; i++) {
		json_object *p = json_object_array_get_idx(ring, i);
		json_object *q = json_object_array_get_idx(ring, (i + 1) % n);
		double px, py, qx, qy, cr;

		if (json_object_get_type(p) != json_type_array ||
		    json_object_get_type(q) != json_type_array ||
		    json_object_array_length(p) < 2 ||
		    json_object_array_length(q) < 2) {
			*bad = true;
			return;
		}
		px = json_object_get_double(json_object_array_get_idx(p, 0));
		py = json_object_get_double(json_object_array_get_idx(p, 1));
		qx = json_object_get_double(json_object_array_get_idx(q, 0));
		qy = json_object_get_double(json_object_array_get_idx(q, 1));
		if (i == 0) {
			x0 = px;
			y0 = py;
		}
		/* Relative to the first vertex, for precision. */
		px -= x0;
		py -= y0;
		qx -= x0;
		qy -= y0;
		cr = px * qy - qx * py;
		s += cr;
		sx += (px + qx) * cr;
		sy += (py + qy) * cr;
	}
	*a = s / 2;
	if (s != 0) {
		*cx = x0 + sx / (3 * s);
		*cy = y0 + sy / (3 * s);
	} else {
		*cx = x0;
		*cy = y0;
	}
}

/* The area-weighted centroid of a Polygon or MultiPolygon; false when the
 * geometry is neither or malformed. */
static bool
geom_centroid(json_object *g, double *lon, double *lat)
{
	json_object *type, *coords, *polys;
	const char *t;
	bool multi, bad = false;
	double sa = 0, sx = 0, sy = 0, fx = 0, fy = 0;
	bool have_first = false;

	if (g == NULL || !json_object_object_get_ex(g, "type", &type) ||
	    !json_object_object_get_ex(g, "coordinates", &coords) ||
	    json_object_get_type(coords) != json_type_array)
		return false;
	t = json_object_get_string(type);
	if (strcmp(t, "Polygon") == 0)
		multi = false;
	else if (strcmp(t, "MultiPolygon") == 0)
		multi = true;
	else
		return false;
	size_t np = multi ? json_object_array_length(coords) : 1;

	for (size_t i = 0; i < np; i++) {
		polys = multi ? json_object_array_get_idx(coords, i) : coords;
		if (json_object_get_type(polys) != json_type_array)
			return false;
		for (size_t k = 0; k < json_object_array_length(polys); k++) {
			json_object *ring = json_object_array_get_idx(polys, k);
			double a, cx, cy;

			if (json_object_get_type(ring) != json_type_array ||
			    json_object_array_length(ring) < 3)
				return false;
			ring_moments(ring, &a, &cx, &cy, &bad);
			if (bad)
				return false;
			if (!have_first) {
				fx = cx;
				fy = cy;
				have_first = true;
			}
			/* Exterior rings add, holes subtract, whatever
			 * their winding. */
			a = fabs(a) * (k == 0 ? 1 : -1);
			sa += a;
			sx += a * cx;
			sy += a * cy;
		}
	}
	if (!have_first)
		return false;
	if (sa > 0) {
		*lon = sx / sa;
		*lat = sy / sa;
	} else {
		*lon = fx;
		*lat = fy;
	}
	/* The sample's centroids carry 6 decimals (about 0.1 m); the same
	 * rounding keeps a CSV and a GeoJSON import of one building equal. */
	*lon = round(*lon * 1e6) / 1e6;
	*lat = round(*lat * 1e6) / 1e6;
	return isfinite(*lon) && isfinite(*lat);
}

static bool
area_geometry(json_object *g)
{
	json_object *type;
	const char *t;

	if (g == NULL || json_object_get_type(g) != json_type_object ||
	    !json_object_object_get_ex(g, "type", &type))
		return false;
	t = json_object_get_string(type);
	return t != NULL && (strcmp(t, "Polygon") == 0 ||
	    strcmp(t, "MultiPolygon") == 0);
}

static const char *
first_text(json_object *props, json_object *feat, const char *const *keys,
    char *buf, size_t len)
{
	const char *v;

	for (size_t i = 0; keys[i] != NULL; i++) {
		if (strcmp(keys[i], "@id") == 0)
			v = prop_text(feat, "id", buf, len);
		else
			v = prop_text(props, keys[i], buf, len);
		if (v != NULL && v[0] != '\0')
			return v;
	}
	return NULL;
}

static void
feature_community(struct import_rows *r, long pos, json_object *props,
    json_object *feat, json_object *geom)
{
	static const char *const id_keys[] = { "id", "community_id", "@id",
	    "name", NULL };
	char b1[32], b2[32], b3[32];
	const char *id = first_text(props, feat, id_keys, b1, sizeof(b1));
	const char *name = prop_text(props, "name", b2, sizeof(b2));
	const char *code = prop_text(props, "code", b3, sizeof(b3));

	if (id == NULL || !id_chars(id, NULL)) {
		row_bad(r, pos, "id: want an id (or name) property of 1-64 "
		    "characters of A-Z a-z 0-9 _ . -");
		return;
	}
	if (name == NULL || name[0] == '\0')
		name = id;
	if (!plain_text(name, 800)) {
		row_bad(r, pos, "name: control characters or too long");
		return;
	}
	if (code != NULL && code[0] != '\0' && (strlen(code) != 12 ||
	    strspn(code, "0123456789") != 12)) {
		row_bad(r, pos, "code: must be 12 digits (district 6 + street "
		    "3 + community 3) or absent");
		return;
	}
	if (!area_geometry(geom)) {
		row_bad(r, pos, "geometry: want a Polygon or MultiPolygon");
		return;
	}
	Gridd__V1__CommunityIn *o = rows_grow(r);

	o->community_id = xstrdup(id);
	o->name = xstrdup(name);
	o->code = xstrdup(code != NULL ? code : "");
	o->geojson = xstrdup(json_object_to_json_string_ext(geom,
	    JSON_C_TO_STRING_PLAIN));
	o->line = pos > INT32_MAX ? 0 : (int32_t)pos;
}

static void
feature_building(struct import_rows *r, long pos, json_object *props,
    json_object *feat, json_object *geom)
{
	static const char *const id_keys[] = { "id", "building_id", "@id",
	    NULL };
	static const char *const comm_keys[] = { "community", "municipality",
	    "community_id", NULL };
	Gridd__V1__BuildingIn b = GRIDD__V1__BUILDING_IN__INIT;
	char b1[32], b2[32], b3[32];
	const char *id = first_text(props, feat, id_keys, b1, sizeof(b1));
	const char *comm = first_text(props, NULL, comm_keys, b2, sizeof(b2));
	const char *kind = prop_text(props, "kind", b3, sizeof(b3));
	double hh = 0, levels = 0, area = 0;
	int rl, ra, rx, ry;
	bool has_geom = geom != NULL &&
	    json_object_get_type(geom) != json_type_null;

	b.building_id = (char *)(id != NULL ? id : "");
	b.community_id = (char *)(comm != NULL ? comm : "");
	b.kind = (char *)(kind != NULL ? kind : "");
	if (prop_num(props, "households", &hh) < 0 || hh != floor(hh)) {
		row_bad(r, pos, "households: not a whole number");
		return;
	}
	b.households = hh >= 0 && hh <= 100000 ? (int32_t)hh : -1;
	if ((rl = prop_num(props, "levels", &levels)) < 0 ||
	    (rl == 1 && !(levels >= 0 && levels <= 500))) {
		row_bad(r, pos, "levels: must be 0..500 or null");
		return;
	}
	b.levels = (int32_t)lround(levels);
	if ((ra = prop_num(props, "area_m2", &area)) < 0) {
		row_bad(r, pos, "area_m2: not a number");
		return;
	}
	b.area_m2 = area;
	rx = prop_num(props, "lon", &b.lon);
	if (rx == 0)
		rx = prop_num(props, "centroid_lon", &b.lon);
	ry = prop_num(props, "lat", &b.lat);
	if (ry == 0)
		ry = prop_num(props, "centroid_lat", &b.lat);
	if (rx < 0 || ry < 0) {
		row_bad(r, pos, "lon/lat: not a number");
		return;
	}
	if (has_geom && !area_geometry(geom)) {
		row_bad(r, pos, "geometry: want a Polygon or MultiPolygon "
		    "footprint or null");
		return;
	}
	if (rx == 0 || ry == 0) {
		if (!has_geom || !geom_centroid(geom, &b.lon, &b.lat)) {
			row_bad(r, pos, "lon/lat: no lon/lat properties and no "
			    "footprint to take the centroid of");
			return;
		}
	}
	if (!building_ok(r, pos, &b))
		return;
	Gridd__V1__BuildingIn *o = rows_grow(r);

	*o = b;
	o->building_id = xstrdup(b.building_id);
	o->community_id = xstrdup(b.community_id);
	o->kind = xstrdup(b.kind);
	o->geojson = xstrdup(has_geom ? json_object_to_json_string_ext(geom,
	    JSON_C_TO_STRING_PLAIN) : "");
	o->line = pos > INT32_MAX ? 0 : (int32_t)pos;
}

static void
feature_layer(struct import_rows *r, long pos, json_object *props,
    json_object *feat, json_object *geom)
{
	static const char *const code_keys[] = { "code", "dept_code", "@id",
	    "id", NULL };
	char b1[32];
	const char *code = first_text(props, feat, code_keys, b1, sizeof(b1));
	size_t n;

	if (code == NULL || (n = strlen(code)) > 64 || !plain_text(code, 64) ||
	    code[0] == ' ' || code[n - 1] == ' ') {
		row_bad(r, pos, "code: want a code property of 1-64 "
		    "characters without control characters or surrounding "
		    "spaces");
		return;
	}
	if (!area_geometry(geom)) {
		row_bad(r, pos, "geometry: want a Polygon or MultiPolygon");
		return;
	}
	Gridd__V1__LayerCellIn *o = rows_grow(r);

	o->code = xstrdup(code);
	o->geojson = xstrdup(json_object_to_json_string_ext(geom,
	    JSON_C_TO_STRING_PLAIN));
	o->line = pos > INT32_MAX ? 0 : (int32_t)pos;
}

bool
import_parse_geojson(struct import_rows *r, const char *text, size_t len)
{
	json_tokener *tok = json_tokener_new_ex(IMPORT_JSON_DEPTH);
	json_object *root, *type, *features;
	bool ok = false;

	r->geojson = true;
	if (tok == NULL)
		return false;
	if (len > INT32_MAX) {
		file_bad(r, ": file too large");
		json_tokener_free(tok);
		return false;
	}
	root = json_tokener_parse_ex(tok, text, (int)len);
	if (root == NULL || json_tokener_get_error(tok) != json_tokener_success) {
		file_bad(r, ": not valid JSON at byte %zu: %s",
		    json_tokener_get_parse_end(tok),
		    json_tokener_error_desc(json_tokener_get_error(tok)));
		goto out;
	}
	if (json_object_get_type(root) != json_type_object ||
	    !json_object_object_get_ex(root, "type", &type) ||
	    json_object_get_type(type) != json_type_string ||
	    strcmp(json_object_get_string(type), "FeatureCollection") != 0 ||
	    !json_object_object_get_ex(root, "features", &features) ||
	    json_object_get_type(features) != json_type_array) {
		file_bad(r, ": want a GeoJSON FeatureCollection with a "
		    "features array");
		goto out;
	}
	size_t nf = json_object_array_length(features);

	if (nf > IMPORT_MAX_ROWS) {
		file_bad(r, ": more than %d features", IMPORT_MAX_ROWS);
		goto out;
	}
	for (size_t i = 0; i < nf; i++) {
		json_object *f = json_object_array_get_idx(features, i);
		json_object *props = NULL, *geom = NULL;
		long pos = (long)i + 1;

		r->read++;
		if (f == NULL || json_object_get_type(f) != json_type_object) {
			row_bad(r, pos, "not a Feature object");
			continue;
		}
		if (!json_object_object_get_ex(f, "properties", &props) ||
		    json_object_get_type(props) != json_type_object)
			props = NULL;
		if (!json_object_object_get_ex(f, "geometry", &geom))
			geom = NULL;
		switch (r->what) {
		case IMPORT_COMMUNITIES:
			feature_community(r, pos, props, f, geom);
			break;
		case IMPORT_BUILDINGS:
			feature_building(r, pos, props, f, geom);
			break;
		case IMPORT_LAYER:
			feature_layer(r, pos, props, f, geom);
			break;
		}
	}
	ok = true;
out:
	if (root != NULL)
		json_object_put(root);
	json_tokener_free(tok);
	return ok;
}

bool
import_looks_json(const char *text, size_t len)
{
	size_t i = 0;

	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		i = 3;
	while (i < len && (text[i] == ' ' || text[i] == '\t' ||
	    text[i] == '\r' || text[i] == '\n'))
		i++;
	return i < len && text[i] == '{';
}

/* ---- sending ----------------------------------------------------------------------- */

static size_t
row_size(const struct import_rows *r, size_t i)
{
	switch (r->what) {
	case IMPORT_COMMUNITIES:
		return gridd__v1__community_in__get_packed_size(&r->comm[i]);
	case IMPORT_BUILDINGS:
		return gridd__v1__building_in__get_packed_size(&r->bld[i]);
	case IMPORT_LAYER:
	default:
		return gridd__v1__layer_cell_in__get_packed_size(&r->lay[i]);
	}
}

/* A layer's report covers the whole department: the last one is the
 * latest. Communities and buildings say per request which communities it
 * left stale: every distinct report is kept, up to a bound. */
static void
totals_report(struct totals *t, enum import_what what, const char *rep)
{
	size_t have, add;

	if (what == IMPORT_LAYER || t->report == NULL) {
		free(t->report);
		t->report = xstrdup(rep);
		return;
	}
	if (strstr(t->report, rep) != NULL)
		return;
	have = strlen(t->report);
	add = strlen(rep);
	if (have + add > IMPORT_MAX_REPORT)
		return;
	t->report = xrealloc(t->report, have + add + 2);
	if (have > 0 && t->report[have - 1] != '\n')
		t->report[have++] = '\n';
	memcpy(t->report + have, rep, add + 1);
}

/* Sends rows [from, to) as one request; adds the reply to t. */
static int
send_batch(struct gc_session *s, const struct import_rows *r, size_t from,
    size_t to, bool strict, bool replace, const char *dept,
    struct totals *t)
{
	Gridd__V1__Envelope req = GRIDD__V1__ENVELOPE__INIT, *reply = NULL;
	Gridd__V1__ImportCommunities ic = GRIDD__V1__IMPORT_COMMUNITIES__INIT;
	Gridd__V1__ImportBuildings ib = GRIDD__V1__IMPORT_BUILDINGS__INIT;
	Gridd__V1__ImportLayer il = GRIDD__V1__IMPORT_LAYER__INIT;
	size_t n = to - from;
	void **ptrs = xcalloc(n + 1, sizeof(*ptrs));
	int rc;

	for (size_t i = 0; i < n; i++) {
		switch (r->what) {
		case IMPORT_COMMUNITIES:
			ptrs[i] = &r->comm[from + i];
			break;
		case IMPORT_BUILDINGS:
			ptrs[i] = &r->bld[from + i];
			break;
		case IMPORT_LAYER:
			ptrs[i] = &r->lay[from + i];
			break;
		}
	}
	switch (r->what) {
	case IMPORT_COMMUNITIES:
		ic.communities = (Gridd__V1__CommunityIn **)ptrs;
		ic.n_communities = n;
		ic.strict = strict;
		req.body_case = GRIDD__V1__ENVELOPE__BODY_IMPORT_COMMUNITIES;
		req.import_communities = &ic;
		break;
	case IMPORT_BUILDINGS:
		ib.buildings = (Gridd__V1__BuildingIn **)ptrs;
		ib.n_buildings = n;
		ib.strict = strict;
		req.body_case = GRIDD__V1__ENVELOPE__BODY_IMPORT_BUILDINGS;
		req.import_buildings = &ib;
		break;
	case IMPORT_LAYER:
		il.department_id = (char *)dept;
		il.cells = (Gridd__V1__LayerCellIn **)ptrs;
		il.n_cells = n;
		il.replace = replace;
		il.strict = strict;
		req.body_case = GRIDD__V1__ENVELOPE__BODY_IMPORT_LAYER;
		req.import_layer = &il;
		break;
	}
	rc = gc_session_call(s, &req, &reply);
	free(ptrs);
	if (rc != GC_EXIT_OK)
		return rc;
	t->requests++;
	if (reply->body_case != GRIDD__V1__ENVELOPE__BODY_IMPORT_REPLY) {
		rc = gc_reply_failed(s, reply);
		frame_envelope_free(reply);
		return rc;
	}
	const Gridd__V1__ImportReply *ir = reply->import_reply;

	t->inserted += ir->inserted;
	t->updated += ir->updated;
	t->unchanged += ir->unchanged;
	t->rejected += ir->rejected;
	for (size_t i = 0; i < ir->n_errors; i++) {
		if (t->server_errors++ >= IMPORT_MAX_SERVER_ERRORS)
			continue;
		fprintf(stderr, "gridctl: %s: ", r->path);
		render_text_string(stderr, ir->errors[i]);
		fputc('\n', stderr);
	}
	if (ir->report != NULL && ir->report[0] != '\0')
		totals_report(t, r->what, ir->report);
	frame_envelope_free(reply);
	return GC_EXIT_OK;
}

static int
send_all(struct gc_session *s, const struct import_rows *r, size_t batch,
    size_t batch_bytes, bool strict, bool merge, const char *dept,
    struct totals *t)
{
	size_t from = 0, bytes = 0;
	int rc;

	/* An empty layer file with replace clears the department's layer:
	 * say so by sending it. */
	if (r->n == 0 && r->what == IMPORT_LAYER && !merge)
		return send_batch(s, r, 0, 0, strict, true, dept, t);
	for (size_t i = 0; i < r->n; i++) {
		size_t sz = row_size(r, i) + 8;

		if (i > from && (i - from >= batch || bytes + sz > batch_bytes)) {
			rc = send_batch(s, r, from, i, strict,
			    !merge && from == 0, dept, t);
			if (rc != GC_EXIT_OK)
				return rc;
			from = i;
			bytes = 0;
		}
		bytes += sz;
	}
	if (from < r->n)
		return send_batch(s, r, from, r->n, strict, !merge && from == 0,
		    dept, t);
	return GC_EXIT_OK;
}

static void
print_summary(const struct gc_session *s, const struct import_rows *r,
    const struct totals *t)
{
	if (s->json) {
		printf("{\"import\":\"%s\",\"file\":", what_name[r->what]);
		render_json_string(stdout, r->path, strlen(r->path));
		printf(",\"read\":%zu,\"skipped\":%zu,\"requests\":%zu,"
		    "\"inserted\":%lld,\"updated\":%lld,\"unchanged\":%lld,"
		    "\"rejected\":%lld", r->read, r->bad, t->requests,
		    t->inserted, t->updated, t->unchanged, t->rejected);
		if (t->report != NULL) {
			fputs(",\"report\":", stdout);
			render_json_string(stdout, t->report,
			    strlen(t->report));
		}
		fputs("}\n", stdout);
		return;
	}
	if (t->report != NULL)
		render_text_string(stdout, t->report);
	printf("%s: %zu read, %zu skipped by gridctl, %zu request(s); "
	    "inserted %lld, updated %lld, unchanged %lld, rejected %lld\n",
	    what_name[r->what], r->read, r->bad, t->requests, t->inserted,
	    t->updated, t->unchanged, t->rejected);
}

int
import_command(struct gc_session *s, int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "strict", no_argument, NULL, 's' },
		{ "batch", required_argument, NULL, 'b' },
		{ "batch-bytes", required_argument, NULL, 'B' },
		{ "merge", no_argument, NULL, 'm' },
		{ NULL, 0, NULL, 0 },
	};
	struct import_rows r;
	struct totals t;
	long long batch = IMPORT_DEFAULT_BATCH, bytes = IMPORT_DEFAULT_BYTES;
	bool strict = false, merge = false;
	const char *dept = NULL;
	char *text;
	size_t len = 0;
	int ch, rc, want;

	import_rows_init(&r, IMPORT_COMMUNITIES, NULL, stderr);
	memset(&t, 0, sizeof(t));
	if (argc < 2)
		goto usage;
	if (strcmp(argv[1], "communities") == 0)
		r.what = IMPORT_COMMUNITIES;
	else if (strcmp(argv[1], "buildings") == 0)
		r.what = IMPORT_BUILDINGS;
	else if (strcmp(argv[1], "layer") == 0)
		r.what = IMPORT_LAYER;
	else
		goto usage;
	argc--;
	argv++;
	optind = 0;
	opterr = 1;
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (ch) {
		case 's':
			strict = true;
			break;
		case 'b':
			if (!gcp_int(optarg, 1, IMPORT_MAX_BATCH, &batch)) {
				fprintf(stderr, "gridctl: import: --batch "
				    "1..%d\n", IMPORT_MAX_BATCH);
				return GC_EXIT_USAGE;
			}
			break;
		case 'B':
			if (!gcp_int(optarg, 1024, 64 * 1024 * 1024, &bytes)) {
				fprintf(stderr, "gridctl: import: --batch-bytes "
				    "1024..67108864\n");
				return GC_EXIT_USAGE;
			}
			break;
		case 'm':
			merge = true;
			break;
		default:
			return GC_EXIT_USAGE;
		}
	}
	want = r.what == IMPORT_LAYER ? 2 : 1;
	if (argc - optind != want || (merge && r.what != IMPORT_LAYER))
		goto usage;
	if (r.what == IMPORT_LAYER) {
		dept = argv[optind++];
		if (!id_chars(dept, NULL)) {
			fprintf(stderr, "gridctl: bad department id: %s\n",
			    dept);
			return GC_EXIT_USAGE;
		}
	}
	r.path = argv[optind];
	if ((text = read_file(r.path, &len)) == NULL)
		return GC_EXIT_USAGE;
	if (import_looks_json(text, len))
		rc = import_parse_geojson(&r, text, len) ? GC_EXIT_OK :
		    GC_EXIT_USAGE;
	else if (r.what == IMPORT_BUILDINGS)
		rc = import_parse_csv(&r, text, len) ? GC_EXIT_OK :
		    GC_EXIT_USAGE;
	else {
		fprintf(stderr, "gridctl: %s: want a GeoJSON "
		    "FeatureCollection\n", r.path);
		rc = GC_EXIT_USAGE;
	}
	free(text);
	if (rc != GC_EXIT_OK)
		goto out;
	if (r.printed > IMPORT_MAX_PRINTED)
		fprintf(stderr, "gridctl: %s: ... %zu more bad rows\n", r.path,
		    r.printed - IMPORT_MAX_PRINTED);
	if (strict && r.bad > 0) {
		fprintf(stderr, "gridctl: %s: %zu bad row(s): nothing imported "
		    "(--strict)\n", r.path, r.bad);
		rc = GC_EXIT_SERVER;
		goto out;
	}
	if ((rc = gc_session_open(s)) != GC_EXIT_OK)
		goto out;
	rc = send_all(s, &r, (size_t)batch, (size_t)bytes, strict, merge, dept,
	    &t);
	if (rc == GC_EXIT_OK || t.requests > 0)
		print_summary(s, &r, &t);
out:
	import_rows_free(&r);
	free(t.report);
	return rc;
usage:
	fprintf(stderr, "gridctl: import: want communities FILE.geojson, "
	    "buildings FILE.csv|FILE.geojson or layer DEPARTMENT "
	    "FILE.geojson [--strict] [--batch N] [--batch-bytes N] "
	    "[--merge (layer)]\ntry 'gridctl --help'\n");
	return GC_EXIT_USAGE;
}

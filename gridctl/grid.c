/* grid.c - `gridctl grid show|map` and `partition`: the cells as a table, GeoJSON, SVG. */
#include "grid.h"

#include <errno.h>
#include <getopt.h>
#include <json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "parse.h"
#include "render.h"

#define MAP_MARGIN	40.0
#define MAP_HEADER	64.0	/* title and legend above the drawing */
#define MAP_FOOTER	48.0	/* scale bar below */
#define MAP_MAX_HEIGHT	1400.0
#define JSON_DEPTH	32

/* Fetches a community's grid; *reply is the GridReply envelope. */
static int
fetch_grid(struct gc_session *s, const char *community,
    Gridd__V1__Envelope **reply)
{
	Gridd__V1__Envelope req = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__GetGrid get = GRIDD__V1__GET_GRID__INIT;
	int rc;

	*reply = NULL;
	get.community_id = (char *)community;
	req.body_case = GRIDD__V1__ENVELOPE__BODY_GET_GRID;
	req.get_grid = &get;
	if ((rc = gc_session_open(s)) != GC_EXIT_OK)
		return rc;
	if ((rc = gc_session_call(s, &req, reply)) != GC_EXIT_OK)
		return rc;
	if ((*reply)->body_case != GRIDD__V1__ENVELOPE__BODY_GRID_REPLY) {
		rc = gc_reply_failed(s, *reply);
		frame_envelope_free(*reply);
		*reply = NULL;
	}
	return rc;
}

/* The server's GeoJSON text parsed; NULL unless it is an object. */
static json_object *
parse_geometry(const char *text)
{
	json_tokener *tok = json_tokener_new_ex(JSON_DEPTH);
	json_object *o;
	size_t n = strlen(text);

	if (tok == NULL || n > INT32_MAX) {
		json_tokener_free(tok);
		return NULL;
	}
	o = json_tokener_parse_ex(tok, text, (int)n);
	if (o != NULL && (json_tokener_get_error(tok) != json_tokener_success ||
	    json_object_get_type(o) != json_type_object)) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	return o;
}

static FILE *
open_out(const char *path)
{
	FILE *fp;

	if (strcmp(path, "-") == 0)
		return stdout;
	if ((fp = fopen(path, "w")) == NULL)
		fprintf(stderr, "gridctl: %s: %s\n", path, strerror(errno));
	return fp;
}

static int
close_out(FILE *fp, const char *path)
{
	if (fp == stdout)
		return fflush(fp) == 0 ? GC_EXIT_OK : GC_EXIT_TRANSPORT;
	if (ferror(fp) | fclose(fp)) {
		fprintf(stderr, "gridctl: %s: write failed\n", path);
		return GC_EXIT_TRANSPORT;
	}
	return GC_EXIT_OK;
}

/* The cells as a GeoJSON FeatureCollection in WGS-84, as GIS tools read
 * it. Geometries are re-serialized from a parse, so what is written is
 * valid JSON whatever the server sent. */
static int
write_geojson(const Gridd__V1__GridReply *g, const char *path)
{
	FILE *fp = open_out(path);

	if (fp == NULL)
		return GC_EXIT_USAGE;
	fputs("{\"type\":\"FeatureCollection\",\"features\":[", fp);
	for (size_t i = 0; i < g->n_cells; i++) {
		const Gridd__V1__Cell *c = g->cells[i];
		json_object *geom = parse_geometry(c->geojson);

		fputs(i > 0 ? ",\n" : "\n", fp);
		fputs("{\"type\":\"Feature\",\"id\":", fp);
		render_json_string(fp, c->cell_id, strlen(c->cell_id));
		fputs(",\"properties\":{\"cell_id\":", fp);
		render_json_string(fp, c->cell_id, strlen(c->cell_id));
		fputs(",\"community_id\":", fp);
		render_json_string(fp, c->community_id, strlen(c->community_id));
		fputs(",\"kind\":", fp);
		render_json_string(fp, c->kind, strlen(c->kind));
		fprintf(fp, ",\"households\":%d,\"buildings\":%d},"
		    "\"geometry\":%s}", c->households, c->buildings,
		    geom != NULL ? json_object_to_json_string_ext(geom,
		    JSON_C_TO_STRING_PLAIN) : "null");
		if (geom != NULL)
			json_object_put(geom);
	}
	fputs("\n]}\n", fp);
	return close_out(fp, path);
}

static void
print_table(const Gridd__V1__GridReply *g)
{
	long long hh = 0, nb = 0;
	int ded = 0;

	printf("%-24s %-14s %10s %9s\n", "cell", "kind", "households",
	    "buildings");
	for (size_t i = 0; i < g->n_cells; i++) {
		const Gridd__V1__Cell *c = g->cells[i];
		int n = (int)strlen(c->cell_id);

		render_text_string(stdout, c->cell_id);
		printf("%*s", n < 24 ? 25 - n : 1, "");
		n = (int)strlen(c->kind);
		render_text_string(stdout, c->kind);
		printf("%*s", n < 14 ? 15 - n : 1, "");
		printf("%10d %9d\n", c->households, c->buildings);
		hh += c->households;
		nb += c->buildings;
		ded += strcmp(c->kind, "dedicated") == 0;
	}
	printf("%zu cells (%zu comprehensive, %d dedicated), %lld households, "
	    "%lld buildings\n", g->n_cells, g->n_cells - (size_t)ded, ded, hh,
	    nb);
}

/* ---- the SVG map --------------------------------------------------------------- */

struct ring {
	size_t off, n;		/* into pts */
	bool exterior;
};

struct mcell {
	const Gridd__V1__Cell *c;
	size_t ring0, nrings;
	double lx, ly;		/* label position (metres) */
	bool has_label;
};

struct map {
	double *pts;		/* x, y pairs in metres after projection */
	size_t npts, cappts;
	struct ring *rings;
	size_t nrings, caprings;
	struct mcell *cells;
	size_t ncells;
	double minx, maxx, miny, maxy;
};

static bool
add_ring(struct map *m, json_object *ring, bool exterior)
{
	size_t n;

	if (json_object_get_type(ring) != json_type_array)
		return false;
	n = json_object_array_length(ring);
	if (m->npts + n > GRID_MAP_MAX_POINTS)
		return false;
	if (m->npts + n > m->cappts) {
		m->cappts = (m->npts + n) * 2;
		m->pts = xreallocarray(m->pts, m->cappts, 2 * sizeof(double));
	}
	if (m->nrings == m->caprings) {
		m->caprings = m->caprings ? m->caprings * 2 : 64;
		m->rings = xreallocarray(m->rings, m->caprings,
		    sizeof(*m->rings));
	}
	m->rings[m->nrings] = (struct ring){ m->npts, n, exterior };
	for (size_t i = 0; i < n; i++) {
		json_object *p = json_object_array_get_idx(ring, i);
		double x, y;

		if (json_object_get_type(p) != json_type_array ||
		    json_object_array_length(p) < 2)
			return false;
		x = json_object_get_double(json_object_array_get_idx(p, 0));
		y = json_object_get_double(json_object_array_get_idx(p, 1));
		if (!isfinite(x) || !isfinite(y) || x < -180 || x > 180 ||
		    y < -90 || y > 90)
			return false;
		m->pts[2 * (m->npts + i)] = x;
		m->pts[2 * (m->npts + i) + 1] = y;
	}
	m->npts += n;
	m->nrings++;
	return true;
}

/* Adds a cell's Polygon or MultiPolygon rings; false on anything else. */
static bool
add_geometry(struct map *m, json_object *g)
{
	json_object *type, *coords;
	const char *t;
	bool multi;

	if (!json_object_object_get_ex(g, "type", &type) ||
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
		json_object *poly = multi ?
		    json_object_array_get_idx(coords, i) : coords;

		if (json_object_get_type(poly) != json_type_array)
			return false;
		for (size_t k = 0; k < json_object_array_length(poly); k++)
			if (!add_ring(m, json_object_array_get_idx(poly, k),
			    k == 0))
				return false;
	}
	return true;
}

/* Signed area and centroid of ring r (metres). */
static double
ring_centroid(const struct map *m, const struct ring *r, double *cx,
    double *cy)
{
	double s = 0, sx = 0, sy = 0;
	const double *p = m->pts + 2 * r->off;
	double x0 = p[0], y0 = p[1];

	for (size_t i = 0; i < r->n; i++) {
		size_t j = (i + 1) % r->n;
		double ax = p[2 * i] - x0, ay = p[2 * i + 1] - y0;
		double bx = p[2 * j] - x0, by = p[2 * j + 1] - y0;
		double cr = ax * by - bx * ay;

		s += cr;
		sx += (ax + bx) * cr;
		sy += (ay + by) * cr;
	}
	if (s == 0) {
		*cx = x0;
		*cy = y0;
		return 0;
	}
	*cx = x0 + sx / (3 * s);
	*cy = y0 + sy / (3 * s);
	return s / 2;
}

/* Lon/lat to metres in a local equirectangular projection around the
 * map's middle latitude: within a few parts per thousand over a
 * community, plenty for a drawing with a scale bar. */
static void
project(struct map *m)
{
	double lat0 = 0, minlat = 90, maxlat = -90, kx, ky = 110574.0;

	for (size_t i = 0; i < m->npts; i++) {
		double lat = m->pts[2 * i + 1];

		minlat = lat < minlat ? lat : minlat;
		maxlat = lat > maxlat ? lat : maxlat;
	}
	lat0 = (minlat + maxlat) / 2;
	kx = 111320.0 * cos(lat0 * M_PI / 180.0);
	m->minx = m->miny = INFINITY;
	m->maxx = m->maxy = -INFINITY;
	for (size_t i = 0; i < m->npts; i++) {
		double x = m->pts[2 * i] * kx, y = m->pts[2 * i + 1] * ky;

		m->pts[2 * i] = x;
		m->pts[2 * i + 1] = y;
		m->minx = x < m->minx ? x : m->minx;
		m->maxx = x > m->maxx ? x : m->maxx;
		m->miny = y < m->miny ? y : m->miny;
		m->maxy = y > m->maxy ? y : m->maxy;
	}
}

static void
xml_text(FILE *fp, const char *s)
{
	for (; *s != '\0'; s++) {
		switch (*s) {
		case '<':
			fputs("&lt;", fp);
			break;
		case '>':
			fputs("&gt;", fp);
			break;
		case '&':
			fputs("&amp;", fp);
			break;
		case '"':
			fputs("&quot;", fp);
			break;
		default:
			/* Control characters are not allowed in XML 1.0. */
			if ((unsigned char)*s >= 0x20 || *s == '\t')
				fputc(*s, fp);
		}
	}
}

/* A round length (1, 2 or 5 times a power of ten metres) near target. */
static double
nice_length(double target)
{
	double p = pow(10, floor(log10(target)));

	if (target >= 5 * p)
		return 5 * p;
	if (target >= 2 * p)
		return 2 * p;
	return p;
}

static int
write_svg(const char *community, const Gridd__V1__GridReply *g,
    const char *path)
{
	struct map m;
	FILE *fp;
	double w = GRID_MAP_WIDTH, scale, h, dw, dh, bar;
	long long hh = 0;
	int ded = 0, rc;

	memset(&m, 0, sizeof(m));
	m.cells = xcalloc(g->n_cells + 1, sizeof(*m.cells));
	for (size_t i = 0; i < g->n_cells; i++) {
		json_object *geom = parse_geometry(g->cells[i]->geojson);
		struct mcell *mc = &m.cells[m.ncells++];

		mc->c = g->cells[i];
		mc->ring0 = m.nrings;
		if (geom != NULL && !add_geometry(&m, geom)) {
			fprintf(stderr, "gridctl: cell %s: geometry not drawn "
			    "(not a polygon, or too many points)\n",
			    g->cells[i]->cell_id);
			m.nrings = mc->ring0;
		}
		mc->nrings = m.nrings - mc->ring0;
		if (geom != NULL)
			json_object_put(geom);
		hh += g->cells[i]->households;
		ded += strcmp(g->cells[i]->kind, "dedicated") == 0;
	}
	if (m.npts == 0) {
		fprintf(stderr, "gridctl: %s: no cell polygons to draw (has "
		    "the community been partitioned?)\n", community);
		rc = GC_EXIT_SERVER;
		goto out;
	}
	project(&m);
	/* Labels at the centroid of each cell's largest exterior ring. */
	for (size_t i = 0; i < m.ncells; i++) {
		struct mcell *mc = &m.cells[i];
		double best = -1;

		for (size_t k = mc->ring0; k < mc->ring0 + mc->nrings; k++) {
			double cx, cy, a;

			if (!m.rings[k].exterior)
				continue;
			a = fabs(ring_centroid(&m, &m.rings[k], &cx, &cy));
			if (a > best) {
				best = a;
				mc->lx = cx;
				mc->ly = cy;
				mc->has_label = true;
			}
		}
	}
	dw = m.maxx - m.minx;
	dh = m.maxy - m.miny;
	if (dw <= 0)
		dw = 1;
	if (dh <= 0)
		dh = 1;
	scale = (w - 2 * MAP_MARGIN) / dw;
	if (dh * scale > MAP_MAX_HEIGHT)
		scale = MAP_MAX_HEIGHT / dh;
	h = dh * scale + MAP_HEADER + MAP_FOOTER + MAP_MARGIN;

	if ((fp = open_out(path)) == NULL) {
		rc = GC_EXIT_USAGE;
		goto out;
	}
#define PX(x) (MAP_MARGIN + ((x) - m.minx) * scale)
#define PY(y) (MAP_HEADER + (m.maxy - (y)) * scale)
	fprintf(fp, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
	    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
	    "height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
	    "font-family=\"sans-serif\">\n", w, h, w, h);
	fputs("<defs><pattern id=\"hatch\" width=\"8\" height=\"8\" "
	    "patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">"
	    "<line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"8\" stroke=\"#444\" "
	    "stroke-width=\"1.5\" stroke-opacity=\"0.5\"/></pattern></defs>\n"
	    "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n", fp);
	fputs("<text x=\"40\" y=\"28\" font-size=\"20\" font-weight=\"bold\">",
	    fp);
	xml_text(fp, community);
	fprintf(fp, ": %zu cells (%zu comprehensive, %d dedicated), %lld "
	    "households</text>\n", g->n_cells, g->n_cells - (size_t)ded, ded,
	    hh);
	fputs("<text x=\"40\" y=\"50\" font-size=\"13\" fill=\"#444\">"
	    "Numbers: households per cell. Hatched, D: dedicated cells "
	    "(non-residential). Hover a cell for its id.</text>\n", fp);

	for (size_t i = 0; i < m.ncells; i++) {
		const struct mcell *mc = &m.cells[i];
		bool dedicated = strcmp(mc->c->kind, "dedicated") == 0;
		double hue = fmod((double)i * 137.508, 360.0);

		if (mc->nrings == 0)
			continue;
		fputs("<g><title>", fp);
		xml_text(fp, mc->c->cell_id);
		fprintf(fp, ": %d households, %d buildings, ",
		    mc->c->households, mc->c->buildings);
		xml_text(fp, mc->c->kind);
		fputs("</title><path fill-rule=\"evenodd\" d=\"", fp);
		for (size_t k = mc->ring0; k < mc->ring0 + mc->nrings; k++) {
			const struct ring *r = &m.rings[k];

			for (size_t p = 0; p < r->n; p++)
				fprintf(fp, "%s%.1f %.1f", p == 0 ? "M" : "L",
				    PX(m.pts[2 * (r->off + p)]),
				    PY(m.pts[2 * (r->off + p) + 1]));
			fputs("Z", fp);
		}
		fprintf(fp, "\" fill=\"hsl(%.0f,%d%%,%d%%)\" stroke=\"#333\" "
		    "stroke-width=\"1\"/>", hue, dedicated ? 15 : 60,
		    dedicated ? 80 : 75);
		if (dedicated) {
			fputs("<path fill-rule=\"evenodd\" fill=\"url(#hatch)\" "
			    "d=\"", fp);
			for (size_t k = mc->ring0; k < mc->ring0 + mc->nrings;
			    k++) {
				const struct ring *r = &m.rings[k];

				for (size_t p = 0; p < r->n; p++)
					fprintf(fp, "%s%.1f %.1f",
					    p == 0 ? "M" : "L",
					    PX(m.pts[2 * (r->off + p)]),
					    PY(m.pts[2 * (r->off + p) + 1]));
				fputs("Z", fp);
			}
			fputs("\"/>", fp);
		}
		fputs("</g>\n", fp);
	}
	/* Labels last, so no cell covers another's number. */
	for (size_t i = 0; i < m.ncells; i++) {
		const struct mcell *mc = &m.cells[i];

		if (!mc->has_label)
			continue;
		/* Dedicated cells have no households: a small "D" keeps
		 * the numbers for the cells that are bounded by them. */
		if (strcmp(mc->c->kind, "dedicated") == 0 &&
		    mc->c->households == 0) {
			fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" "
			    "font-size=\"10\" fill=\"#555\" "
			    "text-anchor=\"middle\" "
			    "dominant-baseline=\"middle\">D</text>\n",
			    PX(mc->lx), PY(mc->ly));
			continue;
		}
		fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\" "
		    "font-weight=\"bold\" text-anchor=\"middle\" "
		    "dominant-baseline=\"middle\" stroke=\"#fff\" "
		    "stroke-width=\"3\" paint-order=\"stroke\">%d</text>\n",
		    PX(mc->lx), PY(mc->ly), mc->c->households);
	}
	/* Scale bar: a round length near a fifth of the drawing. */
	bar = nice_length(dw / 5);
	{
		double x0 = MAP_MARGIN, y0 = h - MAP_FOOTER / 2 - 4;
		double x1 = x0 + bar * scale;

		fprintf(fp, "<g stroke=\"#000\" stroke-width=\"2\">"
		    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
		    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
		    "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
		    "</g>\n", x0, y0, x1, y0, x0, y0 - 6, x0, y0 + 6, x1,
		    y0 - 6, x1, y0 + 6);
		if (bar >= 1000)
			fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\">"
			    "%g km</text>\n", x1 + 8, y0 + 5, bar / 1000);
		else
			fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\">"
			    "%g m</text>\n", x1 + 8, y0 + 5, bar);
		fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"16\" "
		    "font-weight=\"bold\" text-anchor=\"middle\">N &#8593;"
		    "</text>\n", w - MAP_MARGIN, 28.0);
	}
#undef PX
#undef PY
	fputs("</svg>\n", fp);
	rc = close_out(fp, path);
out:
	free(m.pts);
	free(m.rings);
	free(m.cells);
	return rc;
}

int
grid_command(struct gc_session *s, int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "geojson", required_argument, NULL, 'g' },
		{ "svg", required_argument, NULL, 's' },
		{ NULL, 0, NULL, 0 },
	};
	const char *geojson = NULL, *svg = NULL, *community;
	Gridd__V1__Envelope *reply = NULL;
	bool map;
	int ch, rc;

	if (argc < 2 || (strcmp(argv[1], "show") != 0 &&
	    strcmp(argv[1], "map") != 0))
		goto usage;
	map = strcmp(argv[1], "map") == 0;
	argc--;
	argv++;
	optind = 0;
	opterr = 1;
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (ch) {
		case 'g':
			geojson = optarg;
			break;
		case 's':
			svg = optarg;
			break;
		default:
			return GC_EXIT_USAGE;
		}
	}
	if (optind != argc - 1 || !gcp_id(argv[optind]) ||
	    (map && (svg == NULL || geojson != NULL)) ||
	    (!map && svg != NULL))
		goto usage;
	community = argv[optind];
	if ((rc = fetch_grid(s, community, &reply)) != GC_EXIT_OK)
		return rc;
	if (map)
		rc = write_svg(community, reply->grid_reply, svg);
	else if (geojson != NULL)
		rc = write_geojson(reply->grid_reply, geojson);
	else if (s->json)
		gc_print_reply(s, reply, NULL);
	else
		print_table(reply->grid_reply);
	if (rc == GC_EXIT_OK && (map || (geojson != NULL &&
	    strcmp(geojson, "-") != 0))) {
		const char *file = map ? svg : geojson;

		/* --json promises one JSON object per command on stdout. */
		if (s->json) {
			json_object *o = json_object_new_object();

			json_object_object_add(o, "type",
			    json_object_new_string(map ? "grid_map" :
			    "grid_geojson"));
			json_object_object_add(o, "community_id",
			    json_object_new_string(community));
			json_object_object_add(o, "cells", json_object_new_int64(
			    (int64_t)reply->grid_reply->n_cells));
			json_object_object_add(o, "file",
			    json_object_new_string(file));
			printf("%s\n", json_object_to_json_string_ext(o,
			    JSON_C_TO_STRING_PLAIN));
			json_object_put(o);
		} else {
			printf("%s: %zu cells written to %s\n", community,
			    reply->grid_reply->n_cells, file);
		}
	}
	frame_envelope_free(reply);
	return rc;
usage:
	fprintf(stderr, "gridctl: grid: want 'grid show COMMUNITY [--geojson "
	    "FILE|-]' or 'grid map COMMUNITY --svg FILE'\n"
	    "try 'gridctl --help'\n");
	return GC_EXIT_USAGE;
}

/* The report is the server's text: printed as it is, except control
 * characters other than newlines and tabs, which are escaped. */
static void
print_report(const char *rep)
{
	const char *p = rep, *q;

	while (*p != '\0') {
		q = p + strcspn(p, "\n\t");
		if (q > p) {
			char *part = xstrndup(p, (size_t)(q - p));

			render_text_string(stdout, part);
			free(part);
		}
		if (*q == '\0')
			break;
		fputc(*q, stdout);
		p = q + 1;
	}
	if (p == rep || p[-1] != '\n')
		fputc('\n', stdout);
}

int
grid_partition_command(struct gc_session *s, int argc, char **argv)
{
	Gridd__V1__Envelope req = GRIDD__V1__ENVELOPE__INIT, *reply = NULL;
	Gridd__V1__Repartition rp = GRIDD__V1__REPARTITION__INIT;
	int rc;

	if (argc != 2 || (strcmp(argv[1], "--all") != 0 &&
	    (argv[1][0] == '-' || !gcp_id(argv[1])))) {
		fprintf(stderr, "gridctl: partition: want COMMUNITY or --all\n"
		    "try 'gridctl --help'\n");
		return GC_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--all") != 0)
		rp.community_id = argv[1];
	req.body_case = GRIDD__V1__ENVELOPE__BODY_REPARTITION;
	req.repartition = &rp;
	if (s->timeout_ms < GRID_PARTITION_TIMEOUT_MS)
		s->timeout_ms = GRID_PARTITION_TIMEOUT_MS;
	if ((rc = gc_session_open(s)) != GC_EXIT_OK)
		return rc;
	if ((rc = gc_session_call(s, &req, &reply)) != GC_EXIT_OK)
		return rc;
	if (reply->body_case != GRIDD__V1__ENVELOPE__BODY_REPARTITION_REPLY)
		rc = gc_reply_failed(s, reply);
	else if (s->json)
		gc_print_reply(s, reply, NULL);
	else {
		print_report(reply->repartition_reply->report);
		printf("%d cells, %d buildings moved\n",
		    reply->repartition_reply->cells,
		    reply->repartition_reply->buildings_moved);
	}
	frame_envelope_free(reply);
	return rc;
}

/* fuzz_import.c - libFuzzer target: gridctl's CSV and GeoJSON import parsers. */
#include <json.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "import.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Row messages are formatted for real (into /dev/null) so that their
 * format strings see the hostile bytes too. */
static FILE *sink;

#define must(cond) do { if (!(cond)) __builtin_trap(); } while (0)

#define ID_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" \
	"0123456789_.-"

/* 1-64 id characters; building ids also take ':'. */
static bool
id_ok(const char *s, bool colon)
{
	size_t n = strlen(s);

	return n >= 1 && n <= 64 &&
	    strspn(s, colon ? ID_CHARS ":" : ID_CHARS) == n;
}

static bool
no_controls(const char *s, size_t max)
{
	size_t n = strlen(s);

	if (n > max)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return false;
	return true;
}

/* A kept footprint or polygon is a JSON Polygon or MultiPolygon object;
 * "" only where a row may have none. */
static void
check_area(const char *g, bool may_be_empty)
{
	json_object *o, *type;
	const char *t;

	must(g != NULL);
	if (g[0] == '\0') {
		must(may_be_empty);
		return;
	}
	o = json_tokener_parse(g);
	must(o != NULL && json_object_get_type(o) == json_type_object);
	must(json_object_object_get_ex(o, "type", &type));
	t = json_object_get_string(type);
	must(t != NULL && (strcmp(t, "Polygon") == 0 ||
	    strcmp(t, "MultiPolygon") == 0));
	json_object_put(o);
}

static void
check_buildings(const struct import_rows *r)
{
	static const char *const kinds[] = { "", "residential", "commercial",
	    "industrial", "public", "agricultural", "other", "unknown" };

	for (size_t i = 0; i < r->n; i++) {
		const Gridd__V1__BuildingIn *b = &r->bld[i];
		bool kind = false;

		must(id_ok(b->building_id, true) && id_ok(b->community_id, false));
		for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
			kind = kind || strcmp(b->kind, kinds[k]) == 0;
		must(kind);
		must(b->households >= 0 && b->households <= 100000);
		must(b->levels >= 0 && b->levels <= 500);
		must(b->lon >= -180 && b->lon <= 180 && b->lat >= -90 &&
		    b->lat <= 90);
		must(b->area_m2 >= 0 && b->area_m2 < 1e8);
		must(b->line >= 1);
		check_area(b->geojson, true);
		must(r->geojson || b->geojson[0] == '\0');
	}
}

static void
check_communities(const struct import_rows *r)
{
	for (size_t i = 0; i < r->n; i++) {
		const Gridd__V1__CommunityIn *c = &r->comm[i];

		must(id_ok(c->community_id, false));
		must(c->name[0] != '\0' && no_controls(c->name, 800));
		must(c->code[0] == '\0' || (strlen(c->code) == 12 &&
		    strspn(c->code, "0123456789") == 12));
		must(c->line >= 1);
		check_area(c->geojson, false);
	}
}

static void
check_layer(const struct import_rows *r)
{
	for (size_t i = 0; i < r->n; i++) {
		const Gridd__V1__LayerCellIn *l = &r->lay[i];
		size_t n = strlen(l->code);

		must(n >= 1 && no_controls(l->code, 64));
		must(l->code[0] != ' ' && l->code[n - 1] != ' ');
		must(l->line >= 1);
		check_area(l->geojson, false);
	}
}

/* Every row seen was either kept or reported; a kept row passes the
 * server's field checks and packs into a message. */
static void
check(const struct import_rows *r)
{
	must(r->n + r->bad == r->read);
	must(r->n <= r->cap);
	switch (r->what) {
	case IMPORT_BUILDINGS:
		check_buildings(r);
		for (size_t i = 0; i < r->n; i++)
			must(gridd__v1__building_in__get_packed_size(
			    &r->bld[i]) > 0);
		break;
	case IMPORT_COMMUNITIES:
		check_communities(r);
		break;
	case IMPORT_LAYER:
		check_layer(r);
		break;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const enum import_what whats[] = { IMPORT_COMMUNITIES,
	    IMPORT_BUILDINGS, IMPORT_LAYER };
	const char *text = (const char *)data;
	struct import_rows r;

	if (sink == NULL && (sink = fopen("/dev/null", "w")) == NULL)
		abort();
	/* Both parsers see every input, as gridctl would with a file that
	 * claims to be either; the GeoJSON one once per kind of row. */
	import_rows_init(&r, IMPORT_BUILDINGS, "fuzz.csv", sink);
	(void)!import_parse_csv(&r, text, size);
	must(!r.geojson);
	check(&r);
	import_rows_free(&r);
	(void)import_looks_json(text, size);
	for (size_t i = 0; i < sizeof(whats) / sizeof(whats[0]); i++) {
		import_rows_init(&r, whats[i], "fuzz.geojson", sink);
		(void)!import_parse_geojson(&r, text, size);
		must(r.geojson);
		check(&r);
		import_rows_free(&r);
	}
	return 0;
}

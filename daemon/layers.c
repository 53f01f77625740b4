/* layers.c - department grid layers: import, crosswalk to unified cells, report. */
#include "layers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "conn.h"
#include "db.h"
#include "grid.h"
#include "gridd.h"
#include "log.h"
#include "rpc.h"

/* A department code counts as mapped cleanly when its dominant unified
 * cell holds at least this share of its area (gridd_dept_straddling). */
#define LAYERS_MIN_SHARE	"0.9"
/* Straddling codes listed in one reply; the rest are counted. */
#define LAYERS_REPORT_MAX	50

/* The department row must exist before its layer (departments are synced
 * from the config; an import may come before any other sync). */
static const char sql_dept[] =
    "INSERT INTO departments (department_id, name) VALUES ($1, $2)"
    " ON CONFLICT (department_id) DO NOTHING";

static const char sql_import[] =
    "WITH r AS MATERIALIZED (SELECT * FROM gridd_import_layer($1,"
    " $2::text[], $3::text[], $4::int[], $5::boolean)"
    " WITH ORDINALITY AS r(line, id, action, error, ord)),"
    " s AS MATERIALIZED (SELECT gridd_import_check($6::boolean,"
    " count(*) FILTER (WHERE r.action = 'rejected'),"
    " (array_agg('line ' || r.line || ': ' || r.error ORDER BY r.ord)"
    " FILTER (WHERE r.action = 'rejected'))[1:5]) AS ok FROM r)"
    " SELECT r.line, r.id, r.action, r.error FROM r, s WHERE s.ok"
    " ORDER BY r.ord";

static const char sql_summary[] =
    "SELECT count(*), count(*) FILTER (WHERE cells = 1 AND communities = 1"
    " AND covered_share >= 0.99), count(*) FILTER (WHERE cells = 0)"
    " FROM gridd_dept_code_summary WHERE department_id = $1";

static const char sql_straddle[] =
    "SELECT dept_code, cells, communities, coalesce(dominant_cell, ''),"
    " dominant_share, covered_share, reason"
    " FROM gridd_dept_straddling($1, " LAYERS_MIN_SHARE ")";

struct layer_req {
	struct grid_import *im;
	char department[65];
};

static void
report_build(struct grid_import *im, const char *dept,
    const struct db_res *sum, const struct db_res *st)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *fp = open_memstream(&buf, &len);
	int rows = db_res_rows(st);
	int64_t total = 0, clean = 0, none = 0;

	if (fp == NULL)
		return;
	if (db_res_rows(sum) == 1 && db_res_int64(sum, 0, 0, &total) &&
	    db_res_int64(sum, 0, 1, &clean) && db_res_int64(sum, 0, 2, &none))
		fprintf(fp, "department %s: %lld codes; %lld map onto one "
		    "unified cell, %lld overlap no current cell, %d straddle "
		    "(dominant share below " LAYERS_MIN_SHARE ", several "
		    "communities, or partly outside every cell)\n", dept,
		    (long long)total, (long long)clean, (long long)none, rows);
	if (rows > 0)
		fprintf(fp, "%-24s %5s %11s %-24s %8s %8s %s\n", "code",
		    "cells", "communities", "dominant cell", "share",
		    "covered", "reason");
	for (int i = 0; i < rows && i < LAYERS_REPORT_MAX; i++) {
		double share = 0, covered = 0;

		if (!db_res_double(st, i, 4, &share))
			share = 0;
		if (!db_res_double(st, i, 5, &covered))
			covered = 0;
		const char *code = db_res_get(st, i, 0);
		const char *cell = db_res_get(st, i, 3);
		const char *note = db_res_get(st, i, 6);

		/* Cut on character boundaries: the report goes to clients
		 * whose protobuf runtimes refuse broken UTF-8. */
		fprintf(fp, "%-24.*s %5s %11s %-24.*s %8.3f %8.3f %.*s\n",
		    (int)utf8_prefix(code, 64), code, db_res_get(st, i, 1),
		    db_res_get(st, i, 2), (int)utf8_prefix(cell, 80), cell,
		    share, covered, (int)utf8_prefix(note, 60), note);
	}
	if (rows > LAYERS_REPORT_MAX)
		fprintf(fp, "... and %d more\n", rows - LAYERS_REPORT_MAX);
	if (fclose(fp) == 0) {
		free(im->report);
		im->report = buf;
	} else
		free(buf);
}

static void
import_cb(void *arg, enum db_status st, const struct db_res *const *res,
    int n)
{
	struct layer_req *lr = arg;
	char msg[2200];

	if (st != DB_OK || n != 4) {
		Gridd__V1__ErrorCode code = GRIDD__V1__ERROR_CODE__UNAVAILABLE;

		snprintf(msg, sizeof(msg), "database unavailable");
		for (int i = 0; i < n; i++)
			if (res[i] != NULL && db_res_status(res[i]) != DB_OK) {
				code = grid_db_error(res[i], msg, sizeof(msg));
				break;
			}
		grid_import_fail(lr->im, code, msg);
		free(lr);
		return;
	}
	if (!grid_import_rows(lr->im, res[1])) {
		grid_import_fail(lr->im, GRIDD__V1__ERROR_CODE__INTERNAL,
		    "unexpected import result");
		free(lr);
		return;
	}
	report_build(lr->im, lr->department, res[2], res[3]);
	grid_import_reply(lr->im);
	free(lr);
}

void
layers_import(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__ImportLayer *in = env->import_layer;
	const struct cfg_department *d;
	struct grid_arr codes, geo, lines;
	struct layer_req *lr;
	struct db_batch *b;
	size_t valid = 0;
	char strict_first[400] = "";

	if (!grid_valid_id(in->department_id)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "department_id must be 1-64 characters of A-Z a-z 0-9 _ . -");
		return;
	}
	if ((d = cfg_department(gridd.cfg, in->department_id)) == NULL) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__NOT_FOUND,
		    "no such department in the configuration");
		return;
	}
	if (in->n_cells > GRID_IMPORT_MAX_ROWS || (in->n_cells == 0 &&
	    !in->replace)) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "want 1 to 20000 layer cells per request");
		return;
	}
	lr = xcalloc(1, sizeof(*lr));
	snprintf(lr->department, sizeof(lr->department), "%s", d->id);
	lr->im = grid_import_new(c, env->request_id, "layer");
	grid_arr_init(&codes);
	grid_arr_init(&geo);
	grid_arr_init(&lines);
	for (size_t i = 0; i < in->n_cells; i++) {
		const Gridd__V1__LayerCellIn *r = in->cells[i];
		int line = r->line > 0 ? r->line : (int)i + 1;
		size_t cl = strlen(r->code), gl = strlen(r->geojson);
		const char *bad = NULL;

		if (cl < 1 || cl > 64 || !grid_valid_text(r->code, 64) ||
		    r->code[0] == ' ' || r->code[cl - 1] == ' ')
			bad = "code: must be 1-64 characters without control "
			    "characters or surrounding spaces";
		else if (gl < 2 || r->geojson[0] != '{' ||
		    r->geojson[gl - 1] != '}')
			bad = "geometry: missing or not a GeoJSON object";
		if (bad != NULL) {
			lr->im->rejected++;
			grid_import_error(lr->im, "line %d: %s", line, bad);
			if (strict_first[0] == '\0')
				snprintf(strict_first, sizeof(strict_first),
				    "line %d: %s", line, bad);
			continue;
		}
		grid_arr_text(&codes, r->code);
		grid_arr_text(&geo, r->geojson);
		grid_arr_int(&lines, line);
		valid++;
	}
	if (in->strict && lr->im->rejected > 0) {
		char msg[600];

		snprintf(msg, sizeof(msg), "import refused (strict): %d row(s) "
		    "rejected, first %s", lr->im->rejected, strict_first);
		grid_import_fail(lr->im, GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    msg);
		free(lr);
		goto out;
	}
	if (valid == 0 && !in->replace) {
		grid_import_reply(lr->im);
		free(lr);
		goto out;
	}

	const char *pd[2] = { d->id, d->name != NULL ? d->name : "" };
	const char *pi[6] = { d->id, grid_arr_finish(&codes),
	    grid_arr_finish(&geo), grid_arr_finish(&lines),
	    in->replace ? "true" : "false", in->strict ? "true" : "false" };
	const char *ps[1] = { d->id };

	/* One transaction: the department row, the layer with its
	 * crosswalk rows (rebuilt by gridd_import_layer), the report. */
	b = db_batch_new();
	db_batch_add(b, sql_dept, 2, pd);
	db_batch_add(b, sql_import, 6, pi);
	db_batch_add(b, sql_summary, 1, ps);
	db_batch_add(b, sql_straddle, 1, ps);
	if (gridd.db == NULL || !db_batch_submit(gridd.db, b, import_cb, lr)) {
		grid_import_fail(lr->im, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
		free(lr);
	}
out:
	grid_arr_free(&codes);
	grid_arr_free(&geo);
	grid_arr_free(&lines);
}

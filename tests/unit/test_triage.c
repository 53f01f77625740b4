/* test_triage.c - per-item validation, the crosswalk, the four lists and 三事分流. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "triage.h"

#define NOW 1700000000000LL

static const char conf[] =
    "[server]\nlisten = 127.0.0.1:7700\n"
    "[database]\nconninfo = dbname=gridd\n"
    "[department.civil]\n"
    "key_sha256 = 0000000000000000000000000000000000000000000000000000000000000000\n"
    "category.MZ01 = elderly_visit\n"
    "category.MZ03 = neighbour_dispute\n"
    "category.MZ07 = road_damage\n"
    "category.MZ09 = enterprise_safety_check\n"
    "category.MZ10 = quiet_referral\n"
    "[task_type.elderly_visit]\nlist = assist\nmatter = small\n"
    "sla_minutes = 1440\nroute = worker\n"
    "[task_type.road_damage]\nlist = assist\nmatter = big\n"
    "sla_minutes = 720\nroute = department\n"
    "[task_type.enterprise_safety_check]\nlist = negative\nmatter = big\n"
    "sla_minutes = 60\nroute = department\n"
    "[task_type.neighbour_dispute]\nlist = autonomy\nmatter = private\n"
    "sla_minutes = 600\nroute = referral\n"
    "guidance = Mediation by the residents' committee\n"
    "[task_type.quiet_referral]\nlist = autonomy\nmatter = private\n"
    "route = referral\n"
    "[task_type.building_safety]\nlist = assist\nmatter = big\n"
    "department = civil\n";

static const struct triage_limits lim = {
	.max_future_ms = 600 * 1000,
	.max_age_ms = 365LL * 86400 * 1000,
};

static struct cfg *
load(void)
{
	struct cfg *cfg = NULL;
	struct cfg_errors errs = { 0 };

	if (!cfg_parse("t.conf", conf, strlen(conf), &cfg, &errs)) {
		cfg_errors_print(&errs, stderr);
		cfg_errors_clear(&errs);
		fail_msg("test config does not parse");
	}
	return cfg;
}

static Gridd__V1__IncidentIn
good(void)
{
	Gridd__V1__IncidentIn in = GRIDD__V1__INCIDENT_IN__INIT;

	in.ext_id = "E-1";
	in.category = "MZ01";
	in.lon = 9.52;
	in.lat = 47.14;
	return in;
}

static void
check_bad(const Gridd__V1__IncidentIn *in, enum triage_source from,
    const char *field)
{
	struct triage_item it;
	char msg[TRIAGE_MSG_MAX];

	assert_false(triage_validate(in, from, &lim, NOW, &it, msg,
	    sizeof(msg)));
	if (strncmp(msg, field, strlen(field)) != 0)
		fail_msg("message \"%s\" does not start with %s", msg, field);
}

static void
test_valid_item_gets_defaults(void **state)
{
	Gridd__V1__IncidentIn in = good();
	struct triage_item it;
	char msg[TRIAGE_MSG_MAX];

	(void)state;
	assert_true(triage_validate(&in, TRIAGE_FROM_DEPARTMENT, &lim, NOW,
	    &it, msg, sizeof(msg)));
	assert_int_equal(it.severity, TRIAGE_SEVERITY_DEFAULT);
	assert_int_equal(it.occurred_at, NOW);
	assert_true(it.has_point);
	assert_null(it.dept_code);
	assert_string_equal(it.address, "");

	in.severity = 4;
	in.occurred_at = NOW - 1000;
	assert_true(triage_validate(&in, TRIAGE_FROM_DEPARTMENT, &lim, NOW,
	    &it, msg, sizeof(msg)));
	assert_int_equal(it.severity, 4);
	assert_int_equal(it.occurred_at, NOW - 1000);
}

static void
test_each_bound_names_its_field(void **state)
{
	Gridd__V1__IncidentIn in;
	char big[9000];

	(void)state;
	in = good();
	in.ext_id = "";
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "ext_id");
	in = good();
	memset(big, 'x', 129);
	big[129] = '\0';
	in.ext_id = big;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "ext_id");
	in = good();
	in.ext_id = "tab\there";
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "ext_id");
	in = good();
	in.ext_id = "\xc3\x28";		/* broken UTF-8 */
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "ext_id");
	in = good();
	in.category = NULL;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "category");
	in = good();
	in.severity = 5;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "severity");
	in.severity = -1;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "severity");
	in = good();
	in.occurred_at = NOW + 601 * 1000;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "occurred_at");
	in.occurred_at = NOW - 366LL * 86400 * 1000;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "occurred_at");
	in = good();
	in.lat = 91;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "lon/lat");
	in.lat = NAN;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "lon/lat");
	in = good();
	in.lon = 0;
	in.lat = 0;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "location");
	in.building_id = "B 1";
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "building_id");
	in.building_id = NULL;
	in.dept_grid_code = "X";
	check_bad(&in, TRIAGE_FROM_WORKER, "dept_grid_code");
	in = good();
	memset(big, 'a', 501);
	big[501] = '\0';
	in.address = big;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "address");
	in = good();
	memset(big, 'a', 8001);
	big[8001] = '\0';
	in.description = big;
	check_bad(&in, TRIAGE_FROM_DEPARTMENT, "description");
}

static void
test_location_alternatives(void **state)
{
	Gridd__V1__IncidentIn in = good();
	struct triage_item it;
	char msg[TRIAGE_MSG_MAX];

	(void)state;
	in.lon = 0;
	in.lat = 0;
	in.dept_grid_code = "MZG-7";
	assert_true(triage_validate(&in, TRIAGE_FROM_DEPARTMENT, &lim, NOW,
	    &it, msg, sizeof(msg)));
	assert_false(it.has_point);
	assert_string_equal(it.dept_code, "MZG-7");
	in.dept_grid_code = "";
	in.building_id = "LI:b-1";
	assert_true(triage_validate(&in, TRIAGE_FROM_WORKER, &lim, NOW, &it,
	    msg, sizeof(msg)));
	assert_null(it.dept_code);
	assert_string_equal(it.building_id, "LI:b-1");
}

static void
test_utf8_counts_characters(void **state)
{
	(void)state;
	/* Three characters of three bytes each. */
	assert_true(utf8_valid("\xe7\xbd\x91\xe6\xa0\xbc\xe5\x91\x98", 3));
	assert_false(utf8_valid("\xe7\xbd\x91\xe6\xa0\xbc\xe5\x91\x98", 2));
	assert_false(utf8_valid("\xed\xa0\x80", 10));	/* surrogate */
	assert_false(utf8_valid("\xc0\xaf", 10));		/* overlong */
}

static void
test_classify_routes(void **state)
{
	struct cfg *cfg = load();
	const struct cfg_department *civil = cfg_department(cfg, "civil");
	struct triage_decision d;

	(void)state;
	assert_non_null(civil);

	triage_classify(cfg, civil, "MZ01", &d);
	assert_int_equal(d.refusal, TRIAGE_PASS);
	assert_string_equal(d.task_type->name, "elderly_visit");
	assert_string_equal(d.status, "new");
	assert_true(d.sla);

	triage_classify(cfg, civil, "MZ07", &d);
	assert_int_equal(d.refusal, TRIAGE_PASS);
	assert_string_equal(d.status, "referred");
	assert_true(d.sla);
	assert_non_null(strstr(d.note, "department"));

	triage_classify(cfg, civil, "MZ03", &d);
	assert_string_equal(d.status, "referred");
	assert_false(d.sla);
	assert_string_equal(d.note, "Mediation by the residents' committee");

	triage_classify(cfg, civil, "MZ10", &d);
	assert_string_equal(d.status, "referred");
	assert_non_null(strstr(d.note, "residents"));

	triage_classify(cfg, civil, "MZ09", &d);
	assert_int_equal(d.refusal, TRIAGE_NEGATIVE_LIST);
	assert_non_null(strstr(d.message, "negative list"));
	assert_non_null(strstr(d.message, "enterprise_safety_check"));
	assert_string_equal(triage_refusal_name(d.refusal), "negative_list");

	triage_classify(cfg, civil, "ZZ99", &d);
	assert_int_equal(d.refusal, TRIAGE_UNKNOWN_CATEGORY);
	assert_null(d.task_type);
	assert_string_equal(d.message,
	    "unknown category ZZ99 for department civil");

	/* A worker's report names the unified task type itself. */
	triage_classify(cfg, NULL, "elderly_visit", &d);
	assert_int_equal(d.refusal, TRIAGE_PASS);
	assert_null(d.owner);
	triage_classify(cfg, NULL, "MZ01", &d);
	assert_int_equal(d.refusal, TRIAGE_UNKNOWN_CATEGORY);
	/* A department's push is its own, whatever the task type names. */
	triage_classify(cfg, civil, "MZ07", &d);
	assert_null(d.owner);
	cfg_free(cfg);
}

static void
test_worker_reports_of_big_matters(void **state)
{
	struct cfg *cfg = load();
	struct triage_decision d;

	(void)state;
	/* Referred to the department the task type names. */
	triage_classify(cfg, NULL, "building_safety", &d);
	assert_int_equal(d.refusal, TRIAGE_PASS);
	assert_string_equal(d.status, "referred");
	assert_string_equal(d.owner, "civil");
	/* No department named: nowhere to refer it, refused as invalid. */
	triage_classify(cfg, NULL, "road_damage", &d);
	assert_int_equal(d.refusal, TRIAGE_NO_OWNER);
	assert_string_equal(d.task_type->name, "road_damage");
	assert_non_null(strstr(d.message, "[task_type.road_damage]"));
	assert_string_equal(triage_refusal_name(d.refusal), "invalid");
	cfg_free(cfg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_item_gets_defaults),
		cmocka_unit_test(test_each_bound_names_its_field),
		cmocka_unit_test(test_location_alternatives),
		cmocka_unit_test(test_utf8_counts_characters),
		cmocka_unit_test(test_worker_reports_of_big_matters),
		cmocka_unit_test(test_classify_routes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

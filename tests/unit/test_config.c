/* test_config.c - config parser: the example file, every key's bounds, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

#define BASE "[server]\nlisten = 127.0.0.1:7700\n" \
	"[database]\nconninfo = dbname=gridd\n"

static bool
parse(const char *text, struct cfg **cfg, struct cfg_errors *errs)
{
	return cfg_parse("t.conf", text, strlen(text), cfg, errs);
}

/* An error with this key (if given), line (if >= 0) and reason substring
 * (if given). */
static bool
has_error(const struct cfg_errors *errs, const char *key, int line,
    const char *reason)
{
	for (size_t i = 0; i < errs->n; i++) {
		const struct cfg_error *e = &errs->v[i];

		if (key != NULL && strcmp(e->key, key) != 0)
			continue;
		if (line >= 0 && e->line != line)
			continue;
		if (reason != NULL && strstr(e->reason, reason) == NULL)
			continue;
		if (strcmp(e->file, "t.conf") != 0 &&
		    strstr(e->file, ".conf") == NULL)
			continue;
		return true;
	}
	return false;
}

static void
dump_errors(const struct cfg_errors *errs)
{
	cfg_errors_print(errs, stderr);
}

/* Parses text expecting failure with the given error. */
static void
expect_error(const char *text, const char *key, int line, const char *reason)
{
	struct cfg_errors errs = { 0 };
	struct cfg *cfg = (struct cfg *)1;

	assert_false(parse(text, &cfg, &errs));
	assert_null(cfg);
	if (!has_error(&errs, key, line, reason)) {
		fprintf(stderr, "wanted %s:%d:%s in:\n", key ? key : "*", line,
		    reason ? reason : "*");
		dump_errors(&errs);
		fail();
	}
	cfg_errors_clear(&errs);
}

static struct cfg *
expect_ok(const char *text)
{
	struct cfg_errors errs = { 0 };
	struct cfg *cfg = NULL;

	if (!parse(text, &cfg, &errs)) {
		dump_errors(&errs);
		fail();
	}
	assert_int_equal(errs.n, 0);
	assert_non_null(cfg);
	return cfg;
}

static bool
is_fixed(const char *section)
{
	return strchr(section, '.') == NULL;
}

/* A minimal valid config with "key = value" placed in its section; for a
 * per-ID section an instance named x1 (a task type gets its required keys
 * first, a department needs nothing else). *name gets the error key. */
static void
config_with(const struct cfg_key_info *ki, const char *value, char *buf,
    size_t len, char *name, size_t nlen)
{
	char sect[64], line[256];
	const char *dot = strchr(ki->section, '.');

	snprintf(line, sizeof(line), "%s = %s\n", ki->key, value);
	if (dot == NULL) {
		snprintf(sect, sizeof(sect), "%s", ki->section);
		snprintf(name, nlen, "%s.%s", ki->section, ki->key);
	} else {
		snprintf(sect, sizeof(sect), "%.*s.x1",
		    (int)(dot - ki->section), ki->section);
		snprintf(name, nlen, "%s.%s", sect, ki->key);
	}
	if (strcmp(sect, "server") == 0 && strcmp(ki->key, "listen") == 0)
		snprintf(buf, len, "[server]\n%s[database]\nconninfo = x\n",
		    line);
	else if (strcmp(sect, "server") == 0)
		snprintf(buf, len, "[server]\nlisten = 127.0.0.1:7700\n%s"
		    "[database]\nconninfo = x\n", line);
	else if (strcmp(sect, "database") == 0)
		snprintf(buf, len, "[server]\nlisten = 127.0.0.1:7700\n"
		    "[database]\n%s", line);
	else if (strcmp(sect, "task_type.x1") == 0 &&
	    strcmp(ki->key, "list") != 0 && strcmp(ki->key, "matter") != 0)
		snprintf(buf, len, BASE "[task_type.x1]\nlist = assist\n"
		    "matter = small\n%s", line);
	else if (strcmp(sect, "task_type.x1") == 0 &&
	    strcmp(ki->key, "list") == 0)
		snprintf(buf, len, BASE "[task_type.x1]\nmatter = small\n%s",
		    line);
	else if (strcmp(sect, "task_type.x1") == 0)
		snprintf(buf, len, BASE "[task_type.x1]\nlist = assist\n%s",
		    line);
	else
		snprintf(buf, len, BASE "[%s]\n%s", sect, line);
}

static void
fmt_bound(const struct cfg_key_info *ki, double v, char *buf, size_t len)
{
	if (ki->type == CFG_T_DOUBLE)
		snprintf(buf, len, "%.15g", v);
	else
		snprintf(buf, len, "%.0f", v);
}

static bool
is_numeric(const struct cfg_key_info *ki)
{
	return ki->type == CFG_T_INT || ki->type == CFG_T_UINT32 ||
	    ki->type == CFG_T_DOUBLE;
}

static void
test_example_config(void **state)
{
	const char *src = getenv("GRIDD_SOURCE_DIR");
	struct cfg_errors errs = { 0 };
	struct cfg *cfg = NULL;
	bool lists[5] = { false }, matters[4] = { false }, routes[4] = { false };
	const struct cfg_department *d;
	const struct cfg_task_type *t;
	char path[4096];

	(void)state;
	assert_non_null(src);
	snprintf(path, sizeof(path), "%s/config/gridd.conf", src);
	if (!cfg_load(path, &cfg, &errs)) {
		dump_errors(&errs);
		fail();
	}
	assert_string_equal(cfg->path, path);
	assert_int_equal(cfg->n_listen, 1);
	assert_string_equal(cfg->listen[0].host, "127.0.0.1");
	assert_string_equal(cfg->listen[0].port, "7700");
	assert_false(cfg->listen[0].tls);
	assert_string_equal(cfg->http_listen, "127.0.0.1:7701");
	assert_non_null(cfg->conninfo);
	assert_int_equal(cfg->n_admins, 1);
	assert_non_null(cfg_admin(cfg, "ops"));
	assert_int_equal(cfg->n_departments, 10);
	for (size_t i = 0; i < cfg->n_departments; i++) {
		d = &cfg->departments[i];
		assert_true(d->has_key);
		assert_true(d->n_categories >= 3);
		assert_non_null(d->name);
		for (size_t j = 0; j < d->n_categories; j++)
			assert_non_null(cfg_task_type(cfg,
			    d->categories[j].task_type));
	}
	static const char *const ids[] = { "zongzhi", "dangjian", "gongan",
	    "minzheng", "huanbao", "chengguan", "weijian", "shijian", "renshe",
	    "yingji" };
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
		assert_non_null(cfg_department(cfg, ids[i]));
	for (size_t i = 0; i < cfg->n_task_types; i++) {
		t = &cfg->task_types[i];
		lists[t->list] = true;
		matters[t->matter] = true;
		routes[t->route] = true;
		if (t->route == CFG_ROUTE_REFERRAL)
			assert_non_null(t->guidance);
	}
	for (int i = 1; i <= 4; i++)
		assert_true(lists[i]);
	for (int i = 1; i <= 3; i++) {
		assert_true(matters[i]);
		assert_true(routes[i]);
	}
	d = cfg_department(cfg, "chengguan");
	assert_string_equal(cfg_category(d, "CG-0101"), "road_damage");
	assert_null(cfg_category(d, "CG-9999"));
	t = cfg_task_type(cfg, "road_damage");
	assert_int_equal(t->matter, CFG_MATTER_SMALL);
	assert_int_equal(t->route, CFG_ROUTE_WORKER);
	t = cfg_task_type(cfg, "illegal_construction");
	assert_int_equal(t->route, CFG_ROUTE_DEPARTMENT);
	t = cfg_task_type(cfg, "household_dispute");
	assert_int_equal(t->route, CFG_ROUTE_REFERRAL);
	assert_non_null(t->guidance);
	t = cfg_task_type(cfg, "statistics_survey_forms");
	assert_int_equal(t->list, CFG_LIST_NEGATIVE);
	assert_int_equal(t->sla_minutes, 1440);
	cfg_free(cfg);
}

/* Every default in the table is what a minimal config ends up with. */
static void
test_defaults(void **state)
{
	struct cfg *cfg;
	char buf[4096];
	size_t checked = 0;

	(void)state;
	cfg = expect_ok(BASE "[task_type.a]\nlist = assist\nmatter = big\n"
	    "[task_type.b]\nlist = autonomy\nmatter = private\n"
	    "[task_type.c]\nlist = certificate\nmatter = small\n"
	    "[department.d]\n");
	for (size_t i = 0; i < cfg_key_count(); i++) {
		const struct cfg_key_info *ki = cfg_key_get(i);

		if (!is_fixed(ki->section))
			continue;
		if (ki->def == NULL) {
			if (ki->required)
				continue;
			assert_false(cfg_key_value(cfg, i, buf, sizeof(buf)));
			continue;
		}
		assert_true(cfg_key_value(cfg, i, buf, sizeof(buf)));
		if (strcmp(buf, ki->def) != 0)
			fail_msg("%s.%s = %s, default %s", ki->section,
			    ki->key, buf, ki->def);
		checked++;
	}
	assert_true(checked >= 30);
	assert_int_equal(cfg->max_connections, 10000);
	assert_int_equal(cfg->max_frame_bytes, 1048576);
	assert_int_equal(cfg->max_frame_bytes_unauth, 4096);
	assert_int_equal(cfg->pool_size, 4);
	assert_int_equal(cfg->pbkdf2_iterations, 100000);
	assert_int_equal(cfg->grid.target_households, 400);
	assert_null(cfg->http_listen);
	assert_null(cfg->tls_cert);
	assert_non_null(cfg->migrations_dir);
	assert_int_equal(cfg_task_type(cfg, "a")->route, CFG_ROUTE_DEPARTMENT);
	assert_int_equal(cfg_task_type(cfg, "b")->route, CFG_ROUTE_REFERRAL);
	assert_int_equal(cfg_task_type(cfg, "c")->route, CFG_ROUTE_WORKER);
	assert_int_equal(cfg_task_type(cfg, "c")->sla_minutes, 1440);
	assert_null(cfg_task_type(cfg, "c")->guidance);
	assert_string_equal(cfg_department(cfg, "d")->name, "d");
	assert_false(cfg_department(cfg, "d")->has_key);
	cfg_free(cfg);
}

/* Below min, above max and non-numeric are rejected naming the key and the
 * bound; min and max themselves are accepted. Driven by the key table. */
static void
test_numeric_bounds(void **state)
{
	char text[1024], name[128], v[64], lo[64], hi[64], buf[256];
	size_t n = 0;

	(void)state;
	for (size_t i = 0; i < cfg_key_count(); i++) {
		const struct cfg_key_info *ki = cfg_key_get(i);
		struct cfg_errors errs = { 0 };
		struct cfg *cfg = NULL;
		bool ok;

		if (!is_numeric(ki))
			continue;
		n++;
		assert_true(ki->min < ki->max);
		fmt_bound(ki, ki->min, lo, sizeof(lo));
		fmt_bound(ki, ki->max, hi, sizeof(hi));

		fmt_bound(ki, ki->min - 1, v, sizeof(v));
		config_with(ki, v, text, sizeof(text), name, sizeof(name));
		snprintf(buf, sizeof(buf), "below the minimum %s", lo);
		expect_error(text, name, -1, buf);

		fmt_bound(ki, ki->type == CFG_T_DOUBLE ? ki->max * 2 + 1 :
		    ki->max + 1, v, sizeof(v));
		config_with(ki, v, text, sizeof(text), name, sizeof(name));
		snprintf(buf, sizeof(buf), "above the maximum %s", hi);
		expect_error(text, name, -1, buf);

		static const char *const junk[] = { "abc", "12x", "0x10",
		    "1 2", "nan", "inf", "--1", "1e", "+" };
		for (size_t j = 0; j < sizeof(junk) / sizeof(junk[0]); j++) {
			config_with(ki, junk[j], text, sizeof(text), name,
			    sizeof(name));
			snprintf(buf, sizeof(buf), "between %s and %s", lo, hi);
			expect_error(text, name, -1, buf);
		}
		config_with(ki, "99999999999999999999999", text, sizeof(text),
		    name, sizeof(name));
		expect_error(text, name, -1, NULL);
		if (ki->type != CFG_T_DOUBLE) {
			config_with(ki, "1.5", text, sizeof(text), name,
			    sizeof(name));
			expect_error(text, name, -1, "not an integer");
		}

		/* The bounds themselves are in range. Other checks (min <=
		 * target) may still fail, but not with a bound error. */
		const double at[2] = { ki->min, ki->max };
		for (int j = 0; j < 2; j++) {
			fmt_bound(ki, at[j], v, sizeof(v));
			config_with(ki, v, text, sizeof(text), name,
			    sizeof(name));
			ok = parse(text, &cfg, &errs);
			assert_false(has_error(&errs, name, -1, "minimum"));
			assert_false(has_error(&errs, name, -1, "maximum"));
			if (ok && is_fixed(ki->section)) {
				assert_true(cfg_key_value(cfg, i, buf,
				    sizeof(buf)));
				assert_string_equal(buf, v);
			}
			cfg_free(cfg);
			cfg_errors_clear(&errs);
		}
	}
	assert_true(n >= 30);
}

/* An empty value is an error for every key; enumerations reject names
 * that are not theirs. */
static void
test_bad_values(void **state)
{
	char text[1024], name[128];

	(void)state;
	for (size_t i = 0; i < cfg_key_count(); i++) {
		const struct cfg_key_info *ki = cfg_key_get(i);
		const char *bad = NULL;

		config_with(ki, "", text, sizeof(text), name, sizeof(name));
		expect_error(text, name, -1, "empty value");
		switch (ki->type) {
		case CFG_T_LOG_LEVEL:
		case CFG_T_LIST:
		case CFG_T_MATTER:
		case CFG_T_ROUTE:
			bad = "Bogus";
			break;
		case CFG_T_SHA256:
			bad = "abcd";
			break;
		case CFG_T_LISTEN:
		case CFG_T_ADDRESS:
			bad = "localhost";
			break;
		default:
			break;
		}
		if (bad != NULL) {
			config_with(ki, bad, text, sizeof(text), name,
			    sizeof(name));
			expect_error(text, name, -1, NULL);
		}
	}
	expect_error(BASE "[task_type.t]\nlist = assist\nmatter = huge\n",
	    "task_type.t.matter", 7, "is not one of big, small, private");
	expect_error(BASE "[server]\n", "[server]", 5, "duplicate section");
	expect_error(BASE "[admin.a]\nkey_sha256 = "
	    "zz19d04bbcff9e6d59c4949a23d528857005b824d9c86f61f63e8028b8f1eb4e\n",
	    "admin.a.key_sha256", 6, "64 hex digits");
}

static void
test_unknown(void **state)
{
	(void)state;
	expect_error(BASE "bogus = 1\n", "database.bogus", 5, "unknown key");
	expect_error(BASE "[grid]\nneighbor_m = 30\n", "grid.neighbor_m", 6,
	    "unknown key");
	expect_error(BASE "[srever]\nlisten = 1.2.3.4:5\n", "[srever]", 5,
	    "unknown section");
	expect_error(BASE "[admin]\n", "[admin]", 5, "needs an ID");
	expect_error(BASE "[department.a b]\n", "[department.a b]", 5,
	    "invalid ID");
	expect_error(BASE "[task_type.x]\nlist = assist\nmatter = big\n"
	    "category.A = x\n", "task_type.x.category.A", 8, "unknown key");
	expect_error("listen = 1.2.3.4:5\n" BASE, "file", 1,
	    "outside any section");

	/* Keys of a rejected section are not reported again. */
	struct cfg_errors errs = { 0 };
	struct cfg *cfg;

	assert_false(parse(BASE "[nope]\na = 1\nb = 2\n", &cfg, &errs));
	assert_int_equal(errs.n, 1);
	cfg_errors_clear(&errs);
}

static void
test_missing_required(void **state)
{
	struct cfg_errors errs = { 0 };
	struct cfg *cfg;

	(void)state;
	assert_false(parse("", &cfg, &errs));
	assert_true(has_error(&errs, "server.listen", 0, "missing required"));
	assert_true(has_error(&errs, "database.conninfo", 0,
	    "missing required"));
	assert_int_equal(errs.n, 2);
	cfg_errors_clear(&errs);

	/* With the section present, its header line is blamed. */
	expect_error("# c\n[server]\nmax_connections = 5\n[database]\n"
	    "conninfo = x\n", "server.listen", 2, "missing required");
	expect_error(BASE "\n[admin.root]\n", "admin.root.key_sha256", 6,
	    "missing required");
	assert_false(parse(BASE "[task_type.t]\nsla_minutes = 5\n", &cfg,
	    &errs));
	assert_true(has_error(&errs, "task_type.t.list", 5, "missing"));
	assert_true(has_error(&errs, "task_type.t.matter", 5, "missing"));
	cfg_errors_clear(&errs);

	/* A bad value is one error, not also a missing key. */
	assert_false(parse("[server]\nlisten = nowhere\n[database]\n"
	    "conninfo = x\n", &cfg, &errs));
	assert_int_equal(errs.n, 1);
	assert_true(has_error(&errs, "server.listen", 2, "HOST:PORT"));
	cfg_errors_clear(&errs);
}

static void
test_duplicates(void **state)
{
	(void)state;
	expect_error(BASE "conninfo = other\n", "database.conninfo", 5,
	    "duplicate key (first at line 4)");
	expect_error(BASE "[grid]\nneighbour_m = 1\nneighbour_m = 2\n",
	    "grid.neighbour_m", 7, "first at line 6");
	expect_error(BASE "[department.a]\n[department.a]\n", "[department.a]",
	    6, "duplicate section (first at line 5)");
	expect_error(BASE "[department.a]\ncategory.X = t\ncategory.X = t\n"
	    "[task_type.t]\nlist = assist\nmatter = big\n",
	    "department.a.category.X", 7, "duplicate category (first at line 6)");
	expect_error("[server]\nlisten = 127.0.0.1:7700\nlisten = 127.0.0.1:7700"
	    "\n[database]\nconninfo = x\n", "server.listen", 3,
	    "already given at line 2");
}

static void
test_cross_checks(void **state)
{
	(void)state;
	expect_error(BASE "[grid]\nmin_households = 401\n",
	    "grid.min_households", 6, "above target_households (400)");
	expect_error(BASE "[grid]\nmax_households = 399\n",
	    "grid.target_households", 6, "above max_households (399)");
	expect_error(BASE "[community.c1]\ntarget_households = 250\n",
	    "community.c1.min_households", 6, "(300) is above");
	expect_error("[server]\nlisten = 127.0.0.1:7700\n"
	    "max_frame_bytes = 2048\nmax_frame_bytes_unauth = 4096\n"
	    "[database]\nconninfo = x\n", "server.max_frame_bytes_unauth", 4,
	    "above max_frame_bytes (2048)");
	expect_error("[server]\nlisten = 127.0.0.1:7700\nlisten = [::]:7443 tls\n"
	    "tls_cert = c.pem\n[database]\nconninfo = x\n", "server.listen", 3,
	    "needs server.tls_cert and server.tls_key");
	expect_error("[server]\nlisten = 127.0.0.1:7700\ntls_key = k.pem\n"
	    "[database]\nconninfo = x\n", "server.tls_cert", 3, "go together");
}

static void
test_category_undefined(void **state)
{
	struct cfg *cfg;

	(void)state;
	expect_error(BASE "[department.d]\ncategory.A1 = known\n"
	    "category.B2 = unknown_type\n"
	    "[task_type.known]\nlist = assist\nmatter = small\n",
	    "department.d.category.B2", 7, "'unknown_type' is not defined");
	/* Task types defined after the department are fine. */
	cfg = expect_ok(BASE "[department.d]\ncategory.A1 = later\n"
	    "[task_type.later]\nlist = autonomy\nmatter = small\n");
	assert_string_equal(cfg_category(cfg_department(cfg, "d"), "A1"),
	    "later");
	cfg_free(cfg);
	expect_error(BASE "[department.d]\ncategory.A1 = bad name\n",
	    "department.d.category.A1", 6, "not a task type name");
	expect_error(BASE "[department.d]\ncategory.A/1 = x\n",
	    "department.d.category.A/1", 6, "invalid category code");
}

static void
test_task_type_department(void **state)
{
	struct cfg *cfg;

	(void)state;
	/* The department answering for workers' reports must exist. */
	expect_error(BASE "[department.d]\n"
	    "[task_type.building_safety]\nlist = assist\nmatter = big\n"
	    "department = nobody\n", "task_type.building_safety.department",
	    9, "'nobody' is not defined");
	cfg = expect_ok(BASE "[task_type.building_safety]\nlist = assist\n"
	    "matter = big\ndepartment = d\n[department.d]\n");
	assert_string_equal(cfg_task_type(cfg, "building_safety")->department,
	    "d");
	assert_int_equal(cfg_task_type(cfg, "building_safety")->route,
	    CFG_ROUTE_DEPARTMENT);
	cfg_free(cfg);
	cfg = expect_ok(BASE "[task_type.t]\nlist = autonomy\n"
	    "matter = small\n");
	assert_null(cfg_task_type(cfg, "t")->department);
	cfg_free(cfg);
}

static void
test_listen(void **state)
{
	struct cfg *cfg;
	char text[4096];
	size_t off;

	(void)state;
	cfg = expect_ok("[server]\nlisten = 0.0.0.0:7700\n"
	    "listen = [::1]:7443 tls\nlisten = gridd.example.org:80\n"
	    "listen =   [2001:db8::5]:1\t tls  \n"
	    "tls_cert = /etc/gridd/c.pem\ntls_key = /etc/gridd/k.pem\n"
	    "[admin_http]\nlisten = [::1]:7701\n"
	    "[database]\nconninfo = x\n");
	assert_int_equal(cfg->n_listen, 4);
	assert_string_equal(cfg->listen[0].host, "0.0.0.0");
	assert_string_equal(cfg->listen[0].port, "7700");
	assert_false(cfg->listen[0].tls);
	assert_string_equal(cfg->listen[1].host, "::1");
	assert_string_equal(cfg->listen[1].port, "7443");
	assert_true(cfg->listen[1].tls);
	assert_string_equal(cfg->listen[2].host, "gridd.example.org");
	assert_string_equal(cfg->listen[3].host, "2001:db8::5");
	assert_string_equal(cfg->listen[3].port, "1");
	assert_true(cfg->listen[3].tls);
	assert_string_equal(cfg->http_listen, "[::1]:7701");
	cfg_free(cfg);

	static const struct {
		const char *v, *reason;
	} bad[] = {
		{ "[::1:7700", "missing ']'" },
		{ "::1:7700", "needs brackets" },
		{ "[zz::1]:7700", "not an IPv6 address" },
		{ "[::1]7700", "expected [IPV6]:PORT" },
		{ "host:0", "invalid port" },
		{ "host:65536", "invalid port" },
		{ "host:-1", "invalid port" },
		{ "host:", "invalid port" },
		{ ":7700", "missing host" },
		{ "host", "expected HOST:PORT" },
		{ "1.2.3.4:77 ssl", "only 'tls' may follow" },
		{ "1.2.3.4:77 tls tls", "only 'tls' may follow" },
		{ "ho$t:77", "not a host name" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text), "[server]\nlisten = %s\n"
		    "[database]\nconninfo = x\n", bad[i].v);
		expect_error(text, "server.listen", 2, bad[i].reason);
	}
	expect_error(BASE "[admin_http]\nlisten = 1.2.3.4:80 tls\n",
	    "admin_http.listen", 6, "invalid port");

	off = (size_t)snprintf(text, sizeof(text), "[server]\n");
	for (int i = 0; i <= CFG_MAX_LISTEN; i++)
		off += (size_t)snprintf(text + off, sizeof(text) - off,
		    "listen = 127.0.0.1:%d\n", 7000 + i);
	snprintf(text + off, sizeof(text) - off, "[database]\nconninfo = x\n");
	expect_error(text, "server.listen", CFG_MAX_LISTEN + 2,
	    "more than 16 listeners");
}

static void
test_community_inheritance(void **state)
{
	struct cfg *cfg;
	const struct cfg_grid *g;

	(void)state;
	/* The community comes before [grid]: inheritance still sees it. */
	cfg = expect_ok(BASE "[community.c1]\nmin_households = 100\n"
	    "neighbour_m = 12.5\n"
	    "[community.c0]\n"
	    "[grid]\ntarget_households = 350\nmax_households = 450\n"
	    "dedicated_min_buildings = 9\n");
	assert_int_equal(cfg->n_communities, 2);
	g = cfg_grid_for(cfg, "c1");
	assert_ptr_not_equal(g, &cfg->grid);
	assert_int_equal(g->min_households, 100);
	assert_int_equal(g->target_households, 350);
	assert_int_equal(g->max_households, 450);
	assert_true(g->neighbour_m == 12.5);
	assert_int_equal(g->dedicated_min_buildings, 9);
	assert_true(g->dedicated_min_area_m2 == 5000);
	g = cfg_grid_for(cfg, "c0");
	assert_int_equal(g->min_households, 300);
	assert_int_equal(g->target_households, 350);
	assert_true(g->neighbour_m == 30);
	g = cfg_grid_for(cfg, "elsewhere");
	assert_ptr_equal(g, &cfg->grid);
	assert_int_equal(g->min_households, 300);
	assert_int_equal(cfg->communities[0].line, 8);	/* sorted: c0 */
	cfg_free(cfg);

	expect_error(BASE "[community.c1]\nmin_households = 0\n",
	    "community.c1.min_households", 6, "below the minimum 1");
	/* The inherited [grid] max, set later in the file, makes the
	 * community's target too big. */
	expect_error(BASE "[community.c1]\ntarget_households = 550\n"
	    "[grid]\nmax_households = 520\n", "community.c1.target_households",
	    6, "above max_households (520)");
}

/* Every error carries the line it is about, and all are collected. */
static void
test_error_lines(void **state)
{
	char *long_line = malloc(CFG_MAX_LINE + 64), *text;
	struct cfg_errors errs = { 0 };
	struct cfg *cfg;
	size_t n;

	(void)state;
	memset(long_line, 'a', CFG_MAX_LINE + 1);
	long_line[CFG_MAX_LINE + 1] = '\0';
	text = malloc(3 * CFG_MAX_LINE + 1024);
	n = (size_t)sprintf(text,
	    "; line 1\n"
	    "[server]\n"				/* 2 */
	    "listen = 127.0.0.1:7700\n"			/* 3 */
	    "max_connections = lots\n"			/* 4 */
	    "this line has no equals sign\n"		/* 5 */
	    "%s\n"					/* 6: too long */
	    "log_level = loud\n"			/* 7 */
	    "\n"					/* 8 */
	    "[database]\n"				/* 9 */
	    "conninfo = x\n"				/* 10 */
	    "  = value\n"				/* 11 */
	    "pool_size = 65\n"				/* 12 */
	    "ctl\x01 = 1\n"				/* 13 */
	    "nul", long_line);
	memcpy(text + n, "\0 = 1\n", 6);		/* 14 */
	n += 6;
	n += (size_t)sprintf(text + n, "[grid]\r\nneighbour_m = 0\r\n");
	assert_false(cfg_parse("t.conf", text, n, &cfg, &errs));
	assert_true(has_error(&errs, "server.max_connections", 4,
	    "not an integer"));
	assert_true(has_error(&errs, "[server]", 5, "invalid syntax"));
	assert_true(has_error(&errs, "file", 6, "longer than 4096"));
	assert_true(has_error(&errs, "server.log_level", 7, "debug, info"));
	assert_true(has_error(&errs, "[database]", 11, "missing key"));
	assert_true(has_error(&errs, "database.pool_size", 12, "maximum 64"));
	assert_true(has_error(&errs, "file", 13, "control character 0x01"));
	assert_true(has_error(&errs, "file", 14, "NUL byte"));
	assert_true(has_error(&errs, "grid.neighbour_m", 16, "minimum 0.1"));
	assert_int_equal(errs.n, 9);
	for (size_t i = 1; i < errs.n; i++)
		assert_true(errs.v[i - 1].line <= errs.v[i].line);
	cfg_errors_clear(&errs);

	/* Errors found after the whole file was read come in file order. */
	assert_false(parse(BASE "[grid]\nmin_households = 450\n"
	    "[task_type.t]\nlist = assist\nmatter = bad\n", &cfg, &errs));
	assert_int_equal(errs.n, 2);
	assert_int_equal(errs.v[0].line, 6);
	assert_string_equal(errs.v[0].key, "grid.min_households");
	assert_int_equal(errs.v[1].line, 9);
	cfg_errors_clear(&errs);

	/* A line of exactly the limit is fine (as a comment). */
	long_line[0] = '#';
	long_line[CFG_MAX_LINE] = '\0';
	n = (size_t)sprintf(text, BASE "%s\n", long_line);
	assert_true(cfg_parse("t.conf", text, n, &cfg, &errs));
	cfg_free(cfg);
	free(text);
	free(long_line);

	/* Printed as FILE:LINE: key: reason. */
	FILE *fp = tmpfile();
	char out[256] = "";

	assert_false(parse(BASE "pool_size = 0\n", &cfg, &errs));
	cfg_errors_print(&errs, fp);
	rewind(fp);
	assert_non_null(fgets(out, sizeof(out), fp));
	assert_string_equal(out, "t.conf:5: database.pool_size: 0 is below "
	    "the minimum 1\n");
	fclose(fp);
	cfg_errors_clear(&errs);
}

static void
test_too_many_errors(void **state)
{
	struct cfg_errors errs = { 0 };
	struct cfg *cfg;
	char *text = malloc(200 * 16 + sizeof(BASE));
	size_t n = (size_t)sprintf(text, BASE);

	(void)state;
	for (int i = 0; i < 200; i++)
		n += (size_t)sprintf(text + n, "junk%d = 1\n", i);
	assert_false(cfg_parse("t.conf", text, n, &cfg, &errs));
	assert_int_equal(errs.n, CFG_MAX_ERRORS);
	assert_string_equal(errs.v[errs.n - 1].reason,
	    "too many errors, stopping here");
	assert_int_equal(errs.v[0].line, 5);
	cfg_errors_clear(&errs);
	free(text);
}

static void
test_syntax_details(void **state)
{
	struct cfg *cfg;

	(void)state;
	/* BOM, CRLF, comments, indentation, '#' and ';' inside values. */
	cfg = expect_ok("\xef\xbb\xbf# comment\r\n; another\r\n"
	    "  [ server ]  \r\n"
	    "\tlisten\t=\t127.0.0.1:7700  \r\n"
	    "[database]\n"
	    "conninfo = host=db password=a#b;c=d\n"
	    "[task_type.t]\nlist = autonomy\nmatter = private\n"
	    "guidance = Call 12345; or visit the office # 3.\n"
	    "route = worker\n");
	assert_string_equal(cfg->conninfo, "host=db password=a#b;c=d");
	assert_string_equal(cfg_task_type(cfg, "t")->guidance,
	    "Call 12345; or visit the office # 3.");
	assert_int_equal(cfg_task_type(cfg, "t")->route, CFG_ROUTE_WORKER);
	cfg_free(cfg);
	expect_error(BASE "[grid\n", "[?]", 5, "invalid section header");
	expect_error(BASE "[grid] ; c\n", "[?]", 5, "invalid section header");
}

static void
test_file_limits(void **state)
{
	struct cfg_errors errs = { 0 };
	struct cfg *cfg = (struct cfg *)1;
	char path[] = "test_config.tmp.XXXXXX";
	char *big;
	int fd;

	(void)state;
	assert_false(cfg_load("no/such/gridd.conf", &cfg, &errs));
	assert_null(cfg);
	assert_int_equal(errs.n, 1);
	assert_int_equal(errs.v[0].line, 0);
	assert_non_null(strstr(errs.v[0].reason, "cannot open"));
	cfg_errors_clear(&errs);

	big = malloc(CFG_MAX_FILE_BYTES + 1);
	memset(big, '\n', CFG_MAX_FILE_BYTES + 1);
	memcpy(big, BASE, strlen(BASE));
	assert_false(cfg_parse("t.conf", big, CFG_MAX_FILE_BYTES + 1, &cfg,
	    &errs));
	assert_non_null(strstr(errs.v[0].reason, "larger than"));
	cfg_errors_clear(&errs);
	/* Exactly at the limit is accepted, from a buffer and from a file. */
	assert_true(cfg_parse("t.conf", big, CFG_MAX_FILE_BYTES, &cfg, &errs));
	cfg_free(cfg);

	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, big, CFG_MAX_FILE_BYTES),
	    CFG_MAX_FILE_BYTES);
	assert_true(cfg_load(path, &cfg, &errs));
	cfg_free(cfg);
	assert_int_equal(write(fd, "\n", 1), 1);
	assert_false(cfg_load(path, &cfg, &errs));
	assert_string_equal(errs.v[0].file, path);
	assert_non_null(strstr(errs.v[0].reason, "larger than"));
	cfg_errors_clear(&errs);
	close(fd);
	unlink(path);
	free(big);
}

/* Reload at this level: a bad parse leaves the running config alone and
 * a changed restart-only key is warned about. */
static void
test_reload(void **state)
{
	const char *good = "[server]\nlisten = 127.0.0.1:7700\n"
	    "idle_timeout_s = 60\n[database]\nconninfo = dbname=a password=s3\n"
	    "pool_size = 4\n[department.d]\ncategory.C = t\n"
	    "[task_type.t]\nlist = assist\nmatter = small\n";
	char before[96][512], buf[512], log[4096];
	struct cfg_errors errs = { 0 };
	struct cfg *old, *next = NULL;
	size_t nk = cfg_key_count();
	FILE *fp;
	int saved;
	size_t n;

	(void)state;
	assert_true(nk <= sizeof(before) / sizeof(before[0]));
	old = expect_ok(good);
	for (size_t i = 0; i < nk; i++)
		if (!cfg_key_value(old, i, before[i], sizeof(before[i])))
			before[i][0] = '\0';

	assert_false(parse("[server]\nlisten = 127.0.0.1:7700\n"
	    "idle_timeout_s = 0\n[database]\nconninfo = x\n", &next, &errs));
	assert_null(next);
	assert_true(errs.n > 0);
	cfg_errors_clear(&errs);
	for (size_t i = 0; i < nk; i++) {
		if (!cfg_key_value(old, i, buf, sizeof(buf)))
			buf[0] = '\0';
		assert_string_equal(buf, before[i]);
	}
	assert_int_equal(old->idle_timeout_s, 60);
	assert_string_equal(cfg_category(cfg_department(old, "d"), "C"), "t");

	/* A good reload changing one restart-only and one reloadable key:
	 * only the former is warned about, and no value is logged. */
	next = expect_ok("[server]\nlisten = 127.0.0.1:7700\n"
	    "idle_timeout_s = 90\n[database]\nconninfo = dbname=a password=s3\n"
	    "pool_size = 8\n");
	fp = tmpfile();
	fflush(stderr);
	saved = dup(STDERR_FILENO);
	dup2(fileno(fp), STDERR_FILENO);
	cfg_warn_restart_only(old, next);
	cfg_warn_restart_only(old, old);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	rewind(fp);
	n = fread(log, 1, sizeof(log) - 1, fp);
	log[n] = '\0';
	fclose(fp);
	assert_non_null(strstr(log, "database.pool_size"));
	assert_null(strstr(log, "idle_timeout_s"));
	assert_null(strstr(log, "conninfo"));
	assert_null(strstr(log, "s3"));
	assert_int_equal(strchr(log, '\n') - log + 1, (long)n);	/* one line */
	assert_int_equal(next->idle_timeout_s, 90);
	cfg_free(old);
	cfg_free(next);
}

static void
test_lookups_many(void **state)
{
	struct cfg *cfg;
	char *text = malloc(200 * 128 + 256), id[32];
	size_t n = (size_t)sprintf(text, BASE "[task_type.t]\nlist = assist\n"
	    "matter = big\n");

	(void)state;
	for (int i = 99; i >= 0; i--)
		n += (size_t)sprintf(text + n, "[department.d%02d]\n"
		    "category.z%d = t\ncategory.a%d = t\n[admin.a%02d]\n"
		    "key_sha256 = %064d\n", i, i, i, i, i);
	cfg = expect_ok(text);
	assert_int_equal(cfg->n_departments, 100);
	for (int i = 0; i < 100; i++) {
		const struct cfg_department *d;

		snprintf(id, sizeof(id), "d%02d", i);
		d = cfg_department(cfg, id);
		assert_non_null(d);
		assert_string_equal(d->id, id);
		snprintf(id, sizeof(id), "z%d", i);
		assert_string_equal(cfg_category(d, id), "t");
		snprintf(id, sizeof(id), "a%02d", i);
		assert_non_null(cfg_admin(cfg, id));
	}
	assert_null(cfg_department(cfg, "d100"));
	assert_null(cfg_admin(cfg, "d00"));
	assert_null(cfg_task_type(cfg, "u"));
	cfg_free(cfg);
	free(text);
}

static void
test_reference(void **state)
{
	char *buf = NULL, row[256];
	size_t len = 0;
	FILE *fp = open_memstream(&buf, &len);

	(void)state;
	cfg_write_reference(fp);
	fclose(fp);
	for (size_t i = 0; i < cfg_key_count(); i++) {
		const struct cfg_key_info *ki = cfg_key_get(i);

		snprintf(row, sizeof(row), "| `[%s]` | `%s` |", ki->section,
		    ki->key);
		assert_non_null(strstr(buf, row));
		assert_non_null(ki->desc);
	}
	assert_non_null(strstr(buf, "| `[database]` | `pool_size` | integer "
	    "| `4` | 1..64 | restart |"));
	assert_non_null(strstr(buf, "autonomy\\|assist"));
	assert_non_null(strstr(buf, "[community.ID]"));
	free(buf);
	assert_string_equal(cfg_list_name(CFG_LIST_NEGATIVE), "negative");
	assert_string_equal(cfg_matter_name(CFG_MATTER_PRIVATE), "private");
	assert_string_equal(cfg_route_name(CFG_ROUTE_REFERRAL), "referral");
	assert_string_equal(cfg_route_name((enum cfg_route)9), "?");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_example_config),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_numeric_bounds),
		cmocka_unit_test(test_bad_values),
		cmocka_unit_test(test_unknown),
		cmocka_unit_test(test_missing_required),
		cmocka_unit_test(test_duplicates),
		cmocka_unit_test(test_cross_checks),
		cmocka_unit_test(test_category_undefined),
		cmocka_unit_test(test_task_type_department),
		cmocka_unit_test(test_listen),
		cmocka_unit_test(test_community_inheritance),
		cmocka_unit_test(test_error_lines),
		cmocka_unit_test(test_too_many_errors),
		cmocka_unit_test(test_syntax_details),
		cmocka_unit_test(test_file_limits),
		cmocka_unit_test(test_reload),
		cmocka_unit_test(test_lookups_many),
		cmocka_unit_test(test_reference),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

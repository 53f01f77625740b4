"""Migrations: two gridd processes starting together on one empty database
both come up and apply each sql/ file exactly once; a restart applies
nothing; the rules that sql/019 moved into domains hold, and the columns
and the view keep what GIS tools and PL/pgSQL callers rely on."""

import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import require_pg  # noqa: E402

_db = None


def database():
    global _db
    require_pg()
    if _db is None:
        _db = harness.fresh_database("gridd_migrate")
    return _db


def versions(dbname):
    return harness.psql("SELECT * FROM schema_version ORDER BY 1", dbname)


def recorded(rows, filename):
    """True when a schema_version row names this file (by its number, its
    name, or its file name)."""
    num = filename.split("_", 1)[0]
    names = {filename, filename[:-len(".sql")], num, str(int(num))}
    return sum(1 for r in rows if names & set(c.strip() for c in r))


def test_two_processes_start_together():
    db = database()
    files = harness.migration_files()
    assert files, "no migrations in sql/"
    assert harness.psql1("SELECT to_regclass('schema_version')", db) in \
        (None, ""), "database not empty"
    daemons = [harness.Gridd(harness.write_config(
        harness.tmppath("m%d.conf" % i), dbname=db), name="m%d" % i)
        for i in range(2)]
    for d in daemons:
        d.start(wait=False)
    for d in daemons:
        d.wait_ready(60)
    rows = versions(db)
    assert len(rows) == len(files), \
        "%d schema_version rows for %d files: %s" % (len(rows), len(files),
                                                     rows)
    for f in files:
        assert recorded(rows, f) == 1, "%s recorded %d times in %s" % (
            f, recorded(rows, f), rows)
    # The schema they agree on is the real one: PostGIS is there.
    assert harness.psql1("SELECT extname FROM pg_extension "
                         "WHERE extname = 'postgis'", db) == "postgis"
    for d in daemons:
        d.stop()


def test_restart_applies_nothing():
    db = database()
    before = versions(db)
    assert before, "run after test_two_processes_start_together"
    d = harness.Gridd(harness.write_config(harness.tmppath("again.conf"),
                                           dbname=db), name="again")
    with d:
        d.start()
        d.stop()
    assert versions(db) == before, (before, versions(db))


def test_each_migration_in_its_own_order():
    # Files apply in numeric order: the recorded order (by the first column,
    # the version) follows the file order.
    db = database()
    rows = versions(db)
    order = []
    for f in harness.migration_files():
        for i, r in enumerate(rows):
            if recorded([r], f):
                order.append(i)
    assert len(order) == len(rows), (order, rows)
    assert order == sorted(order), (order, rows)


# The rules that 019_check_domains.sql moved from the tables' CHECK
# constraints to domains: (domain, columns, a value it takes, values it
# refuses).
DOMAIN_RULES = [
    ("gridd_status", ["incidents.status", "events.status"], "'referred'",
     ["'bogus'", "''"]),
    ("gridd_list", ["incidents.list"], "'assist'", ["'negative'"]),
    ("gridd_matter", ["incidents.matter"], "'private'", ["'medium'"]),
    ("gridd_route", ["incidents.route"], "'referral'", ["'nobody'"]),
    ("gridd_located_by", ["incidents.located_by"], "'dept_code'",
     ["'guess'"]),
    ("gridd_shortfall", ["incidents.shortfall"], "'max_offers'",
     ["'tired'"]),
    ("gridd_severity", ["incidents.severity"], "10", ["11", "-1"]),
    ("gridd_count", ["incidents.offers"], "0", ["-1"]),
    ("gridd_text500", ["incidents.summary", "incidents.address"],
     "repeat('x', 500)", ["repeat('x', 501)"]),
    ("gridd_text8000", ["incidents.description"], "repeat('x', 8000)",
     ["repeat('x', 8001)"]),
    ("gridd_text2000", ["events.note"], "repeat('x', 2000)",
     ["repeat('x', 2001)"]),
    ("gridd_text64", ["incident_sources.category"], "''",
     ["repeat('x', 65)"]),
    ("gridd_id64", ["incident_sources.source_id"], "repeat('x', 64)",
     ["''", "repeat('x', 65)"]),
    ("gridd_id128", ["incident_sources.ext_id"], "repeat('x', 128)",
     ["''", "repeat('x', 129)"]),
    ("gridd_source_kind", ["incident_sources.source_kind"], "'worker'",
     ["'robot'"]),
    ("gridd_source_outcome", ["incident_sources.outcome"], "'merged'",
     ["'accepted?'"]),
    ("gridd_seq", ["events.dept_seq"], "1", ["0"]),
]


def sqlstate(sql, db):
    """The SQLSTATE of sql's error, or None when it succeeds."""
    r = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
         "-h", harness.PGHOST,
         "-p", str(harness.PGPORT), "-U", harness.PGUSER, "-d", db,
         "-c", "\\set VERBOSITY verbose", "-c", sql],
        capture_output=True, text=True, timeout=60)
    if r.returncode == 0:
        return None
    m = re.search(r"ERROR:\s+([0-9A-Z]{5}):", r.stderr)
    assert m, r.stderr
    return m.group(1)


def test_the_rules_of_incidents_sources_and_events_hold_as_domains():
    db = database()
    assert versions(db), "run after test_two_processes_start_together"
    for domain, columns, good, bads in DOMAIN_RULES:
        for col in columns:
            table, name = col.split(".")
            assert harness.psql1(
                "SELECT atttypid::regtype FROM pg_attribute WHERE attrelid"
                " = '%s'::regclass AND attname = '%s'" % (table, name),
                db) == domain, col
        assert sqlstate("SELECT (%s)::%s" % (good, domain), db) is None, \
            (domain, good)
        for bad in bads:
            assert sqlstate("SELECT (%s)::%s" % (bad, domain), db) == \
                "23514", (domain, bad)
    # What each table still checks itself: the geometry's range only, so
    # that the column stays of the geometry type that PostGIS lists in
    # geometry_columns, where GIS tools look for layers.
    checks = harness.psql(
        "SELECT conrelid::regclass, conname FROM pg_constraint"
        " WHERE contype = 'c' AND conrelid IN ('incidents'::regclass,"
        " 'incident_sources'::regclass, 'events'::regclass) ORDER BY 2", db)
    assert checks == [["incidents", "incidents_geom_check"]], checks
    assert harness.psql1(
        "SELECT type || ' ' || srid FROM geometry_columns WHERE"
        " f_table_name = 'incidents' AND f_geometry_column = 'geom'",
        db) == "POINT 4326"
    # The view the offers are read through keeps its columns' types.
    types = harness.psql(
        "SELECT attname, atttypid::regtype FROM pg_attribute WHERE"
        " attrelid = 'gridd_offers_v'::regclass AND attname IN ('list',"
        " 'matter', 'summary', 'address', 'state', 'reason') ORDER BY 1", db)
    assert all(t == "text" for _, t in types) and len(types) == 6, types


if __name__ == "__main__":
    harness.main(globals())

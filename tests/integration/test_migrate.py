"""Migrations: two gridd processes starting together on one empty database
both come up and apply each sql/ file exactly once; a restart applies
nothing."""

import os
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


if __name__ == "__main__":
    harness.main(globals())

"""test_complaints.py - who may file a complaint about what, and filing
once: a worker complains only about incidents it has (or had) an
assignment for, and a replayed filing stores nothing new.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import dispatch_common as dc  # noqa: E402
from harness import expect_body, expect_error  # noqa: E402

harness.skip_unless_pg()

_state = {}


def setup():
    """A daemon, communities KA and KB, workers WK1 and WK2 of KA (never
    on duty, so dispatch offers them nothing), and incidents in both."""
    if _state:
        return _state
    harness.require_pg()
    cfg = harness.write_config(harness.tmppath("complaints.conf"))
    g = harness.Gridd(cfg, name="complaints").start()
    db = cfg.dbname
    dc.make_community(db, "KA")
    dc.make_community(db, "KB")
    admin = dc.admin_client(cfg.addr)
    for w in ("WK1", "WK2"):
        dc.upsert_worker(admin, w, "KA", ["KA-1"])
    inc = {n: dc.sql_incident(db, comm, 1, notify=False)
           for n, comm in (("a1", "KA"), ("a2", "KA"), ("b1", "KB"))}
    # WK1 had a1 offered and declined it; nobody had a2 or b1.
    harness.psql("INSERT INTO assignments (incident_id, worker_id,"
                 " community_id, state, reason, expires_at) VALUES"
                 " (%d, 'WK1', 'KA', 'declined', 'primary_cell', now())"
                 % inc["a1"], db)
    _state.update(cfg=cfg, gridd=g, db=db, inc=inc, admin=admin,
                  wk1=dc.worker_client(cfg.addr, "WK1"),
                  wk2=dc.worker_client(cfg.addr, "WK2"))
    return _state


def count(where):
    return int(harness.psql1("SELECT count(*) FROM complaints WHERE " +
                             where, setup()["db"]))


def test_worker_complains_only_about_its_assignments():
    s = setup()
    inc = s["inc"]
    expect_body(s["wk1"].request("file_complaint", incident_id=inc["a1"],
                                 reason="unfunded"), "ok")
    # Same community, never assigned: as if the incident did not exist.
    for w, n in (("wk2", "a1"), ("wk1", "a2"), ("wk1", "b1")):
        err = expect_error(s[w].request("file_complaint",
                                        incident_id=inc[n],
                                        reason="other"), "NOT_FOUND")
        missing = expect_error(s[w].request("file_complaint",
                                            incident_id=987654321,
                                            reason="other"), "NOT_FOUND")
        assert err.message == missing.message, (err, missing)
    assert count("complainant IN ('WK1', 'WK2') AND reason = 'other'") == 0


def test_admin_files_for_any_incident_of_the_community():
    s = setup()
    inc, admin = s["inc"], s["admin"]
    expect_body(admin.request("file_complaint", incident_id=inc["a2"],
                              community_id="KA", reason="duplicate"), "ok")
    expect_body(admin.request("file_complaint", incident_id=inc["b1"],
                              reason="duplicate"), "ok")
    # Named for the wrong community: not found.
    expect_error(admin.request("file_complaint", incident_id=inc["a2"],
                               community_id="KB", reason="other"),
                 "NOT_FOUND")
    expect_body(admin.request("file_complaint", community_id="KB",
                              reason="outside_duty", note="whole KB"), "ok")


def test_replayed_filing_stores_one_complaint():
    """An offline phone replays its queue: every replay answers Ok, one
    row is stored; a different reason is another complaint; once resolved,
    the same filing opens a new one."""
    s = setup()
    inc, wk1, admin = s["inc"], s["wk1"], s["admin"]
    a1 = inc["a1"]
    mine = ("complainant = 'WK1' AND incident_id = %d AND reason = "
            "'negative_list'" % a1)
    # Pipelined replays, so that they race in the daemon's pool.
    envs = [wk1.envelope("file_complaint", incident_id=a1,
                         reason="negative_list", note="queued offline")
            for _ in range(6)]
    for e in envs:
        wk1.send(e)
    for e in envs:
        expect_body(wk1.wait_reply(e.request_id, timeout=20), "ok")
    assert count(mine) == 1, count(mine)
    expect_body(wk1.request("file_complaint", incident_id=a1,
                            reason="outside_duty"), "ok")
    assert count("complainant = 'WK1' AND incident_id = %d" % a1) >= 2
    # Community complaints (no incident) replay the same way.
    for _ in range(3):
        expect_body(admin.request("file_complaint", community_id="KA",
                                  reason="unfunded", note="budget"), "ok")
    assert count("complainant = '%s' AND incident_id IS NULL AND "
                 "community_id = 'KA' AND reason = 'unfunded'"
                 % harness.ADMIN_ID) == 1
    cid = int(harness.psql1("SELECT complaint_id FROM complaints WHERE " +
                            mine, s["db"]))
    expect_body(admin.request("resolve_complaint", complaint_id=cid,
                              resolution="funds sent"), "ok")
    expect_body(wk1.request("file_complaint", incident_id=a1,
                            reason="negative_list"), "ok")
    assert count(mine) == 2
    assert count(mine + " AND resolved_at IS NULL") == 1


if __name__ == "__main__":
    harness.main(globals())

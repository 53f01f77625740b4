"""test_dispatch_multi.py - dispatch with several gridd processes on one
database, and across a SIGKILL.

Every offer is claimed in PostgreSQL (FOR UPDATE SKIP LOCKED), pushed to a
worker connected to another process through NOTIFY gridd_offers, and every
timer is fired by exactly one process: these tests count the rows and read
both processes' logs (event=offer, event=timer_fired timer=ID).
"""

import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import expect_body, psql, psql1  # noqa: E402
import dispatch_common as dc  # noqa: E402

OFFER_TIMEOUT_S = 5


def config(name, dbname, **overrides):
    return harness.write_config(
        harness.tmppath(name), dbname=dbname,
        dispatch__offer_timeout_s=OFFER_TIMEOUT_S,
        dispatch__max_offers=3, dispatch__merge_radius_m=0, **overrides)


def timer_ids(*daemons):
    """Counter of timer ids fired, over the logs of every daemon given."""
    ids = collections.Counter()
    for g in daemons:
        ids.update(int(m) for m in re.findall(
            r"event=timer_fired timer=(\d+) kind=offer_expiry", g.log()))
    return ids


def offers_logged(g):
    return re.findall(r"event=offer incident=(\d+) ", g.log())


def test_two_processes_offer_once_fire_once():
    harness.require_pg()
    db = harness.fresh_database()
    # A scans every second; B only at start, so the incidents written
    # without a notification are certainly offered by A.
    ca = config("a.conf", db, dispatch__scan_interval_s=1)
    cb = config("b.conf", db, dispatch__scan_interval_s=3600)
    a = harness.Gridd(ca, name="gridd-a").start()
    b = harness.Gridd(cb, name="gridd-b").start()
    admin = dc.admin_client(ca.addr)
    tag = dc.unique("m")
    dc.make_community(db, tag)
    dc.upsert_worker(admin, tag + "-w", tag, [tag + "-1"], max_open=100)
    w = dc.worker_client(cb.addr, tag + "-w")
    dc.check_in(w, True)
    # The check-in makes B look for due incidents once; let that pass
    # before writing the quiet ones, so only A's periodic scan finds them.
    time.sleep(1.0)

    # Phase 1: made by A, pushed to the worker on B.
    quiet = [dc.sql_incident(db, tag, 1, notify=False) for _ in range(10)]
    got = {}
    for _ in quiet:
        o = dc.recv_offer(w, timeout=10)
        got[o.incident_id] = o.assignment_id
    assert sorted(got) == sorted(quiet), (got, quiet)
    # The worker may see an offer before A has written its log line.
    deadline = time.monotonic() + 10
    while (len(offers_logged(a)) < len(quiet) and
           time.monotonic() < deadline):
        time.sleep(0.1)
    assert sorted(int(i) for i in offers_logged(a)) == sorted(quiet), (
        offers_logged(a), offers_logged(b), quiet)
    assert offers_logged(b) == []

    # Phase 2: pushed to A through PushIncidents; the feed's NOTIFY reaches
    # both processes, which race for each incident: offered once each.
    civil = harness.Client(ca.addr)
    harness.login_department(civil, "civil")
    lat = []
    loud = []
    for _ in range(20):
        loud.append(dc.push_incident(civil, tag, 1))
        t0 = time.monotonic()
        o = dc.recv_offer(w, loud[-1], timeout=5)
        lat.append((time.monotonic() - t0) * 1000)
        assert o.incident_id not in got, o
        got[o.incident_id] = o.assignment_id
    assert sorted(got) == sorted(quiet + loud)
    lat.sort()
    print("push reply -> offer on the other process: p50 %.1f ms, max %.1f ms"
          % (lat[len(lat) // 2], lat[-1]))
    counts = psql("SELECT incident_id, count(*) FROM assignments "
                  "WHERE community_id = '%s' GROUP BY 1" % tag, db)
    assert len(counts) == 30 and all(c == "1" for _, c in counts), counts
    made = collections.Counter(offers_logged(a) + offers_logged(b))
    assert len(made) == 30 and set(made.values()) == {1}, made

    # Nobody answers: every offer expires once, fired by one process, and
    # the incidents are escalated (the only worker was asked).
    dc.wait_for(lambda: psql1(
        "SELECT count(*) FROM incidents WHERE community_id = '%s' AND "
        "status = 'escalated'" % tag, db) == "30",
        timeout=OFFER_TIMEOUT_S + 10, what="30 escalations")
    fired = timer_ids(a, b)
    assert len(fired) == 30 and set(fired.values()) == {1}, fired
    assert psql1("SELECT count(*) FROM assignments WHERE community_id = "
                 "'%s' AND state = 'expired'" % tag, db) == "30"
    assert psql1("SELECT count(*) FROM events WHERE community_id = '%s' "
                 "AND status = 'escalated'" % tag, db) == "30"
    assert psql1("SELECT count(*) FROM timers WHERE community_id = '%s' "
                 "AND kind = 'offer_expiry'" % tag, db) == "0"
    # No offer was pushed twice to the worker either.
    dc.no_offer(w, 1.0)
    civil.close()
    w.close()
    admin.close()
    a.stop()
    b.stop()


def test_sigkill_pending_offers_survive_restart():
    harness.require_pg()
    db = harness.fresh_database()
    cfg = config("r.conf", db, dispatch__scan_interval_s=1)
    g = harness.Gridd(cfg, name="gridd-r").start()
    admin = dc.admin_client(cfg.addr)
    tag = dc.unique("r")
    dc.make_community(db, tag)
    w1, w2 = tag + "-w1", tag + "-w2"
    dc.upsert_worker(admin, w1, tag, [tag + "-1"])
    dc.upsert_worker(admin, w2, tag, [tag + "-3", tag + "-1"])
    admin.close()
    c1 = dc.worker_client(cfg.addr, w1)
    dc.check_in(c1, True)
    c2 = dc.worker_client(cfg.addr, w2)
    dc.check_in(c2, True)
    c2.close()

    i1 = dc.sql_incident(db, tag, 1)
    o1 = dc.recv_offer(c1, i1)
    c1.close()
    g.kill()			# SIGKILL: nothing is flushed or said
    t_kill = time.monotonic()
    # A statement it sent before dying still runs to its end in its
    # backend (PostgreSQL notices the lost client only when it answers),
    # and it may commit: a scan in flight there would offer the incident
    # below to w1, unpushed, and the offer would expire while down. The
    # daemon is down once its sessions are.
    dc.wait_for(lambda: psql1(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name "
        "LIKE 'gridd %d %%'" % g.proc.pid, db) == "0",
        timeout=10, what="the killed daemon's sessions to end")

    # While it is down: a new incident (its NOTIFY goes nowhere).
    i2 = dc.sql_incident(db, tag, 1)
    # Let the first offer's expiry pass while nobody runs.
    time.sleep(max(0.0, OFFER_TIMEOUT_S + 0.5 - (time.monotonic() - t_kill)))
    assert dc.assignments_of(db, i1) == [(w1, "offered", "primary_cell")]
    assert dc.assignments_of(db, i2) == []

    g.start()
    c2 = dc.worker_client(cfg.addr, w2)
    # The overdue timer fired at start: the offer moved to the backup.
    o = dc.recv_offer(c2, i1, timeout=5)
    assert o.reason == "backup_cell"
    assert dc.assignments_of(db, i1) == [
        (w1, "expired", "primary_cell"), (w2, "offered", "backup_cell")]
    # The incident written while down was found by the start scan and
    # offered to its primary worker, who gets it at login.
    c1 = dc.worker_client(cfg.addr, w1)
    o2 = dc.recv_offer(c1, i2, timeout=5)
    assert o2.reason == "primary_cell"
    assert dc.assignments_of(db, i2) == [(w1, "offered", "primary_cell")]
    expect_body(dc.update(c1, o2.assignment_id, "ACCEPT"), "ok")
    # And the offer made after the restart expires on time too.
    dc.wait_for(lambda: dc.assignments_of(db, i1)[-1][1] == "expired",
                timeout=OFFER_TIMEOUT_S + 5, what="second expiry")
    fired = timer_ids(g)
    assert len(fired) == 2 and set(fired.values()) == {1}, fired
    assert o1.assignment_id != o.assignment_id
    c1.close()
    c2.close()
    g.stop()


if __name__ == "__main__":
    harness.skip_unless_pg()
    harness.main(globals())

"""test_dispatch.py - dispatch to grid workers over the real socket.

One gridd on a fresh database; every test makes its own community (three
cells in a row), its own workers and incidents, so that no test depends on
another.  Incidents come from the civil affairs department (category MZ01 =
elderly_visit: assist list, small matter, routed to the cell's worker).
"""

import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import pb, expect_body, expect_error, psql, psql1  # noqa: E402
import dispatch_common as dc  # noqa: E402

OFFER_TIMEOUT_S = 5		# the smallest the config allows

_env = {}


def env():
    """The shared daemon, started on first use."""
    if not _env:
        harness.require_pg()
        cfg = harness.write_config(
            harness.tmppath("dispatch.conf"),
            dispatch__offer_timeout_s=OFFER_TIMEOUT_S,
            dispatch__max_offers=3,
            dispatch__scan_interval_s=1,
            dispatch__merge_radius_m=0,
            dispatch__checkin_history=3)
        g = harness.Gridd(cfg).start()
        _env.update(cfg=cfg, gridd=g, db=cfg.dbname,
                    admin=dc.admin_client(cfg.addr))
    return _env


_depts = {}


def new_incident(tag, cell_no, dept="civil"):
    """An incident pushed by the department through PushIncidents."""
    if dept not in _depts:
        c = harness.Client(env()["cfg"].addr)
        harness.login_department(c, dept)
        _depts[dept] = c
    return dc.push_incident(_depts[dept], tag, cell_no)


def community(n_workers_spec):
    """A community and its workers: spec is [(cells as numbers, max_open)];
    returns (tag, [worker ids])."""
    e = env()
    tag = dc.unique("c")
    cells = dc.make_community(e["db"], tag)
    ids = []
    for i, (nums, max_open) in enumerate(n_workers_spec):
        wid = "%s-w%d" % (tag, i + 1)
        dc.upsert_worker(e["admin"], wid, tag, [cells[n - 1] for n in nums],
                         max_open)
        ids.append(wid)
    return tag, ids


def on_duty_worker(wid, cell_no=None):
    """wid (TAG-wN) logged in and on duty, at a point of cell_no if given."""
    c = dc.worker_client(env()["cfg"].addr, wid)
    tag = wid.rsplit("-", 1)[0]
    dc.check_in(c, True, dc.cell_point(tag, cell_no) if cell_no else None)
    return c


# ---- tests ----------------------------------------------------------------

def test_lifecycle_offer_accept_start_resolve_verify():
    e = env()
    tag, (w1, w2) = community([([1], 5), ([2], 5)])
    c1 = on_duty_worker(w1, 1)
    c2 = on_duty_worker(w2, 2)
    civil = harness.Client(e["cfg"].addr)
    harness.login_department(civil, "civil")
    urban = harness.Client(e["cfg"].addr)
    harness.login_department(urban, "urban")
    expect_body(civil.request("subscribe", since_seq=0), "ok")

    inc = new_incident(tag, 1)
    o = dc.recv_offer(c1, inc)
    assert o.reason == "primary_cell", o
    assert o.cell_id == tag + "-1" and o.state == "offered", o
    assert list(o.departments) == ["civil"], o
    assert o.list == pb.ASSIST and o.matter == pb.SMALL, o
    assert o.offer_expires_at > int(time.time() * 1000), o
    dc.no_offer(c2, 0.3)

    # Not resolved yet: verifying is a conflict; another department may
    # not verify at all.
    err = expect_error(civil.request("verify_incident", incident_id=inc,
                                     accept=True), "CONFLICT")
    assert "dispatched" in err.message, err.message
    expect_error(urban.request("verify_incident", incident_id=inc,
                               accept=True), "FORBIDDEN")

    expect_body(dc.update(c1, o.assignment_id, "ACCEPT"), "ok")
    lst = expect_body(c1.request("list_assignments", open_only=True),
                      "assignment_list")
    assert [(a.assignment_id, a.state) for a in lst.assignments] == \
        [(o.assignment_id, "accepted")], lst
    expect_body(dc.update(c1, o.assignment_id, "START"), "ok")
    lon, lat = dc.cell_point(tag, 1)
    expect_body(dc.update(c1, o.assignment_id, "RESOLVE",
                          note="visited, all well", lon=lon, lat=lat), "ok")
    assert dc.incident_row(e["db"], inc)[0] == "resolved"
    expect_error(urban.request("verify_incident", incident_id=inc,
                               accept=True), "FORBIDDEN")
    expect_body(civil.request("verify_incident", incident_id=inc,
                              accept=True, note="confirmed"), "ok")
    assert dc.incident_row(e["db"], inc)[0] == "closed"
    row = psql("SELECT state, note, resolve_lon, resolve_lat FROM assignments"
               " WHERE assignment_id = %d" % o.assignment_id, e["db"])[0]
    assert row[0] == "resolved" and row[1] == "visited, all well", row
    assert abs(float(row[2]) - lon) < 1e-9, row

    evs = dc.events_of(e["db"], inc)
    assert [s for s, _, _ in evs] == ["new", "dispatched", "accepted",
                                      "in_progress", "resolved", "closed"], evs
    # The department was told each change, live and in order.
    S = pb.IncidentUpdate
    ups = []
    deadline = time.monotonic() + 5
    while not ups or ups[-1].status != S.CLOSED:
        env_ = civil.recv_push(timeout=max(0.01, deadline - time.monotonic()))
        if env_.WhichOneof("body") == "incident_update" and \
                env_.incident_update.incident_id == inc:
            ups.append(env_.incident_update)
    assert [u.status for u in ups] == [S.NEW, S.DISPATCHED, S.ACCEPTED,
                                       S.IN_PROGRESS, S.RESOLVED,
                                       S.CLOSED], ups
    assert all(a.seq < b.seq for a, b in zip(ups, ups[1:])), ups
    assert ups[2].worker_id == w1 and ups[4].note == "visited, all well"
    assert evs[1] == ("dispatched", w1, "offered: primary_cell"), evs
    assert evs[4][2] == "visited, all well" and evs[5][2] == "confirmed", evs
    lst = expect_body(c1.request("list_assignments", open_only=True),
                      "assignment_list")
    assert len(lst.assignments) == 0, lst
    lst = expect_body(c1.request("list_assignments", open_only=False),
                      "assignment_list")
    assert [a.state for a in lst.assignments] == ["resolved"], lst
    for c in (c1, c2, civil, urban):
        c.close()


def test_reopen_goes_back_to_dispatch():
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1)
    civil = harness.Client(e["cfg"].addr)
    harness.login_department(civil, "civil")
    inc = new_incident(tag, 1)
    o = dc.recv_offer(c1, inc)
    for action in ("ACCEPT", "START", "RESOLVE"):
        expect_body(dc.update(c1, o.assignment_id, action), "ok")
    expect_body(civil.request("verify_incident", incident_id=inc,
                              accept=False, note="still broken"), "ok")
    o2 = dc.recv_offer(c1, inc)
    assert o2.assignment_id != o.assignment_id
    evs = dc.events_of(e["db"], inc)
    assert [s for s, _, _ in evs][-3:] == ["resolved", "new", "dispatched"]
    assert evs[-2][2] == "reopened: still broken", evs
    expect_error(civil.request("verify_incident", incident_id=10 ** 12,
                               accept=True), "NOT_FOUND")
    c1.close()
    civil.close()


def test_offer_timeout_moves_to_backup():
    e = env()
    tag, (w1, w2) = community([([1], 5), ([3, 1], 5)])
    c1 = on_duty_worker(w1)
    c2 = on_duty_worker(w2)
    inc = new_incident(tag, 1)
    o1 = dc.recv_offer(c1, inc)
    assert o1.reason == "primary_cell"
    t0 = time.monotonic()
    o2 = dc.recv_offer(c2, inc, timeout=OFFER_TIMEOUT_S + 5)
    waited = time.monotonic() - t0
    assert waited >= OFFER_TIMEOUT_S - 1.5, waited
    assert o2.reason == "backup_cell", o2
    assert dc.assignments_of(e["db"], inc) == [
        (w1, "expired", "primary_cell"), (w2, "offered", "backup_cell")]
    # The expired offer cannot be accepted any more.
    err = expect_error(dc.update(c1, o1.assignment_id, "ACCEPT"), "CONFLICT")
    assert "expired" in err.message, err.message
    c1.close()
    c2.close()


def test_decline_moves_on_at_once():
    e = env()
    tag, (w1, w2, w3) = community([([1], 5), ([3, 1], 5), ([2], 5)])
    c1 = on_duty_worker(w1)
    c2 = on_duty_worker(w2)
    c3 = on_duty_worker(w3)
    inc = new_incident(tag, 1)
    o1 = dc.recv_offer(c1, inc)
    expect_body(dc.update(c1, o1.assignment_id, "DECLINE",
                          note="on leave today"), "ok")
    o2 = dc.recv_offer(c2, inc, timeout=2)
    assert o2.reason == "backup_cell"
    expect_body(dc.update(c2, o2.assignment_id, "DECLINE", note="busy"), "ok")
    o3 = dc.recv_offer(c3, inc, timeout=2)
    assert o3.reason == "neighbour_cell", o3
    expect_body(dc.update(c3, o3.assignment_id, "DECLINE"), "ok")
    # Three offers declined: escalated, and nobody is asked twice.
    dc.wait_for(lambda: dc.incident_row(e["db"], inc)[0] == "escalated",
                what="escalation")
    assert dc.incident_row(e["db"], inc)[1] == "max_offers"
    assert psql1("SELECT note FROM assignments WHERE assignment_id = %d"
                 % o1.assignment_id, e["db"]) == "on leave today"
    dc.no_offer(c1, 1.5)
    for c in (c1, c2, c3):
        c.close()


def test_capacity_and_least_loaded():
    e = env()
    tag, (w1, w2) = community([([1], 1), ([2, 1], 2)])
    c1 = on_duty_worker(w1)
    c2 = on_duty_worker(w2)
    i1 = new_incident(tag, 1)
    o1 = dc.recv_offer(c1, i1)
    assert o1.reason == "primary_cell"
    # w1 is at max_open 1: the next goes to w2 (backup for cell 1).
    i2 = new_incident(tag, 1)
    o2 = dc.recv_offer(c2, i2)
    assert o2.reason == "backup_cell", o2
    expect_body(dc.update(c2, o2.assignment_id, "ACCEPT"), "ok")
    # Cell 2: w2 is primary there (tier 1) and not full.
    i3 = new_incident(tag, 2)
    o3 = dc.recv_offer(c2, i3)
    assert o3.reason == "primary_cell", o3
    expect_body(dc.update(c2, o3.assignment_id, "ACCEPT"), "ok")
    # Everyone is full now.
    i4 = new_incident(tag, 1)
    dc.wait_for(lambda: dc.incident_row(e["db"], i4)[0] == "escalated",
                what="escalation")
    assert dc.incident_row(e["db"], i4)[1] == "all_at_capacity"
    evs = dc.events_of(e["db"], i4)
    assert evs[-1] == ("escalated", "", "no worker: all_at_capacity"), evs
    # A finished assignment frees a place: the escalated incident is
    # retried by the periodic scan.
    for action in ("ACCEPT", "START", "RESOLVE"):
        expect_body(dc.update(c1, o1.assignment_id, action), "ok")
    o4 = dc.recv_offer(c1, i4, timeout=5)
    assert o4.reason == "primary_cell"
    open_counts = psql(
        "SELECT worker_id, count(*) FROM assignments WHERE state IN "
        "('offered', 'accepted', 'in_progress') AND community_id = '%s' "
        "GROUP BY 1 ORDER BY 1" % tag, e["db"])
    assert open_counts == [[w1, "1"], [w2, "2"]], open_counts
    c1.close()
    c2.close()


def test_least_loaded_then_nearest():
    e = env()
    tag, (w1, w2, w3) = community([([1], 5), ([1], 5), ([1], 5)])
    c1 = on_duty_worker(w1, 3)		# far
    c2 = on_duty_worker(w2, 1)		# near
    c3 = on_duty_worker(w3)		# no position
    i1 = new_incident(tag, 1)
    o = dc.recv_offer(c2, i1)
    assert o.reason == "nearest", o
    i2 = new_incident(tag, 1)
    o = dc.recv_offer(c1, i2)
    # w2 has one open now, w1 and w3 none; w1 has a position.
    assert o.reason == "nearest", o
    i3 = new_incident(tag, 1)
    o = dc.recv_offer(c3, i3)
    assert o.reason == "least_loaded", o
    for c in (c1, c2, c3):
        c.close()


def test_no_worker_escalated_then_dispatched_on_check_in():
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = dc.worker_client(e["cfg"].addr, w1)
    dc.check_in(c1, False)
    inc = new_incident(tag, 1)
    dc.wait_for(lambda: dc.incident_row(e["db"], inc)[0] == "escalated",
                what="escalation")
    assert dc.incident_row(e["db"], inc)[1] == "all_off_duty"
    evs = dc.events_of(e["db"], inc)
    assert evs[-1] == ("escalated", "", "no worker: all_off_duty"), evs
    # A community nobody works in at all.
    tag2, _ = community([])
    inc2 = new_incident(tag2, 2)
    dc.wait_for(lambda: dc.incident_row(e["db"], inc2)[0] == "escalated",
                what="escalation")
    assert dc.incident_row(e["db"], inc2)[1] == "no_workers"

    t0 = time.monotonic()
    dc.check_in(c1, True, dc.cell_point(tag, 1))
    o = dc.recv_offer(c1, inc, timeout=3)
    assert time.monotonic() - t0 < 1.0, "retry waited for the scan"
    assert o.reason == "primary_cell"
    assert dc.incident_row(e["db"], inc)[0] == "dispatched"
    # The check-in history is bounded per worker (checkin_history = 3).
    for _ in range(4):
        dc.check_in(c1, True, dc.cell_point(tag, 2))
    assert psql1("SELECT count(*) FROM worker_checkins WHERE worker_id = "
                 "'%s'" % w1, e["db"]) == "3"
    c1.close()


def test_idempotent_replay():
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1)
    inc = new_incident(tag, 1)
    o = dc.recv_offer(c1, inc)
    for _ in range(3):
        expect_body(dc.update(c1, o.assignment_id, "ACCEPT", key="q-1"), "ok")
    expect_body(dc.update(c1, o.assignment_id, "START", key="q-2"), "ok")
    # Replayed after the state moved on: still Ok, no effect.
    expect_body(dc.update(c1, o.assignment_id, "ACCEPT", key="q-1"), "ok")
    expect_body(dc.update(c1, o.assignment_id, "START", key="q-2"), "ok")
    # The same key for another action is a conflict.
    expect_error(dc.update(c1, o.assignment_id, "RESOLVE", key="q-1"),
                 "CONFLICT")
    evs = [s for s, _, _ in dc.events_of(e["db"], inc)]
    assert evs == ["new", "dispatched", "accepted", "in_progress"], evs
    assert psql1("SELECT count(*) FROM assignment_actions WHERE worker_id ="
                 " '%s'" % w1, e["db"]) == "2"
    # A replay arriving on a new connection (the phone reconnected).
    c1b = dc.worker_client(e["cfg"].addr, w1)
    expect_body(dc.update(c1b, o.assignment_id, "START", key="q-2"), "ok")
    c1.close()
    c1b.close()


def test_illegal_transitions_conflict():
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1)
    inc = new_incident(tag, 1)
    o = dc.recv_offer(c1, inc)
    err = expect_error(dc.update(c1, o.assignment_id, "START"), "CONFLICT")
    assert "offered" in err.message, err.message
    expect_error(dc.update(c1, o.assignment_id, "RESOLVE"), "CONFLICT")
    expect_body(dc.update(c1, o.assignment_id, "ACCEPT"), "ok")
    err = expect_error(dc.update(c1, o.assignment_id, "ACCEPT"), "CONFLICT")
    assert "accepted" in err.message, err.message
    expect_error(dc.update(c1, o.assignment_id, "DECLINE"), "CONFLICT")
    expect_error(dc.update(c1, o.assignment_id, "ACTION_UNSPECIFIED"),
                 "BAD_REQUEST")
    assert dc.incident_row(e["db"], inc)[0] == "accepted"
    c1.close()


def test_offer_is_made_in_the_push_transaction():
    # With a worker on duty, the push's own transaction makes the offer
    # (gridd_dispatch_pushed): the same now() as the incident, and the
    # 'dispatched' event numbered right after the 'new' one.
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1)
    inc = new_incident(tag, 1)
    o = dc.recv_offer(c1, inc)
    same = psql1("SELECT a.offered_at = i.created_at FROM assignments a "
                 "JOIN incidents i USING (incident_id) "
                 "WHERE a.assignment_id = %d" % o.assignment_id, e["db"])
    assert same == "t", same
    rows = psql("SELECT status FROM events WHERE incident_id = %d AND "
                "department_id = 'civil' ORDER BY dept_seq" % inc, e["db"])
    assert [r[0] for r in rows][:2] == ["new", "dispatched"], rows
    c1.close()


def push_many(tag, cell_no, n):
    """n incidents at one point of cell cell_no (or of each cell of the
    list cell_no), in one PushIncidents; their ids in item order."""
    if "civil" not in _depts:
        c = harness.Client(env()["cfg"].addr)
        harness.login_department(c, "civil")
        _depts["civil"] = c
    cells = cell_no if isinstance(cell_no, list) else [cell_no] * n
    items = []
    for cell in cells:
        lon, lat = dc.cell_point(tag, cell)
        ext = dc.unique("ext-")
        items.append(pb.IncidentIn(
            ext_id=ext, category="MZ01", lon=lon, lat=lat,
            occurred_at=int(time.time() * 1000),
            description="dispatch test " + ext, address="No. 1 Test Road"))
    r = _depts["civil"].request("push_incidents", incidents=items,
                                timeout=10)
    res = expect_body(r, "push_incidents_reply").results
    assert [x.outcome for x in res] == [pb.PushResult.ACCEPTED] * len(
        cells), res
    return [x.incident_id for x in res]


def one_push_and_one_by_one(spec, positions, n):
    """Twin communities with workers spec, checked in at positions (dx
    in degrees east of cell 1's point, or None): n incidents at cell 1's
    point in one push into the first, one push each into the second;
    [(worker suffix, reason)] of each, after checking that every offer
    and its event are in place."""
    e = env()
    got = []
    for one_by_one in (False, True):
        tag, ws = community(spec)
        lon, lat = dc.cell_point(tag, 1)
        cs = [dc.worker_client(e["cfg"].addr, w) for w in ws]
        for c, dx in zip(cs, positions):
            dc.check_in(c, True, None if dx is None else (lon + dx, lat))
        if one_by_one:
            incs = [new_incident(tag, 1) for _ in range(n)]
        else:
            incs = push_many(tag, 1, n)
        rows = []
        for inc in incs:
            a = dc.assignments_of(e["db"], inc)
            assert len(a) == 1 and a[0][1] == "offered", (inc, a)
            rows.append((a[0][0].rsplit("-", 1)[1], a[0][2]))
            evs = dc.events_of(e["db"], inc)
            assert [x[0] for x in evs] == ["new", "dispatched"], evs
            assert evs[1][2] == "offered: " + a[0][2], evs
        got.append(rows)
        for c in cs:
            c.close()
    assert got[0] == got[1], got
    return got[1]


def test_one_push_offers_as_one_push_per_incident_would():
    # gridd_dispatch_pushed chooses for all the new incidents of a push
    # together (sql/014_offer_set.sql) and leaves to one call each only
    # what it cannot decide alone; either way every incident must get the
    # worker and the reason that one push per incident gives.  Cell 1: w1
    # (room for one) and w2 where the incidents are, w3 15 m away, w4
    # with no position, w5 a backup from cell 2; w2-w4 take two each.
    got = one_push_and_one_by_one(
        [([1], 1), ([1], 2), ([1], 2), ([1], 2), ([2, 1], 5)],
        [0, 0, 0.0002, None, 0], 8)
    assert got == [("w1", "primary_cell"), ("w2", "nearest"),
                   ("w3", "nearest"), ("w4", "least_loaded"),
                   ("w2", "nearest"), ("w3", "nearest"),
                   ("w4", "primary_cell"), ("w5", "backup_cell")], got


def test_one_push_uses_up_the_least_loaded_as_one_by_one():
    # Two workers with no position rank by load, then id.  The push's
    # second incident takes the second worker, the first being taken:
    # its runner-up is the first with one more open ('least_loaded').
    # The third ranks both at one open; a backup from cell 2 takes the
    # fourth and fifth once both are full (room for two each).
    got = one_push_and_one_by_one(
        [([1], 2), ([1], 2), ([2, 1], 5)], [None, None, None], 6)
    assert got == [("w1", "primary_cell"), ("w2", "least_loaded"),
                   ("w1", "primary_cell"), ("w2", "primary_cell"),
                   ("w3", "backup_cell"), ("w3", "backup_cell")], got


class held_worker:
    """A worker's row held by another transaction (as an offer, a check-in
    or an answer holds it) for the with-block, at most `seconds`."""

    def __init__(self, dbname, worker_id, seconds=20):
        self.dbname = dbname
        self.app = dc.unique("hold")
        self.proc = subprocess.Popen(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
             harness.conninfo(dbname) + " application_name=" + self.app,
             "-c", "BEGIN; SELECT 1 FROM workers WHERE worker_id = '%s'"
             " FOR NO KEY UPDATE; SELECT pg_sleep(%d); ROLLBACK"
             % (worker_id, seconds)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self):
        # Asleep, so past the FOR NO KEY UPDATE before it.
        try:
            dc.wait_for(lambda: psql1(
                "SELECT count(*) FROM pg_stat_activity WHERE"
                " application_name = '%s' AND wait_event = 'PgSleep'"
                % self.app, self.dbname) == "1",
                what="the worker's row held")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        psql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
             " WHERE application_name = '%s'" % self.app, self.dbname)
        self.proc.communicate(timeout=30)


def test_held_worker_passed_over_for_an_equal_one():
    # Two workers of the cell at one spot, both idle: they rank equal, and
    # the dispatcher (here the NOTIFY path, not a push) takes the second
    # when the first is held, instead of waiting for the first.
    e = env()
    tag, (w1, w2) = community([([1], 5), ([1], 5)])
    c1 = on_duty_worker(w1, 1)
    c2 = on_duty_worker(w2, 1)
    with held_worker(e["db"], w1):
        inc = dc.sql_incident(e["db"], tag, 1)
        o = dc.recv_offer(c2, inc, timeout=3)
        assert o.reason == "primary_cell", o
    dc.no_offer(c1, 0.3)
    for c in (c1, c2):
        c.close()


def test_held_worker_waited_for_when_better():
    # The held worker is nearer: the incident waits for it rather than go
    # to the worse candidate, and gets it once the row is free.
    e = env()
    tag, (w1, w2) = community([([1], 5), ([1], 5)])
    c1 = on_duty_worker(w1, 1)		# near
    c2 = on_duty_worker(w2, 3)		# far
    with held_worker(e["db"], w1):
        inc = dc.sql_incident(e["db"], tag, 1)
        dc.no_offer(c2, 1.5)
        assert dc.assignments_of(e["db"], inc) == []
    o = dc.recv_offer(c1, inc, timeout=5)
    assert o.reason == "nearest", o
    for c in (c1, c2):
        c.close()


def test_one_push_passes_over_a_worker_it_filled_as_one_by_one():
    # w1 has room for one: once the push's first incident takes it, it is
    # no candidate for the second, whose runner-up is then the backup w3
    # (another tier: 'primary_cell', not 'least_loaded').
    got = one_push_and_one_by_one(
        [([1], 1), ([1], 5), ([2, 1], 5)], [None, None, None], 3)
    assert got == [("w1", "primary_cell"), ("w2", "primary_cell"),
                   ("w2", "primary_cell")], got


def test_an_incident_for_the_single_choice_comes_first_in_a_push():
    # The first incident of the push has no worker in its cell (2): only
    # the single choice's full pass finds it one, the neighbour cell 1's
    # worker, who has room for one.  The second, in cell 1, would take
    # that worker in the set pass; one call per incident in id order
    # gives the worker to the first and escalates the second, and so
    # must the push.
    e = env()
    tag, (w1,) = community([([1], 1)])
    c1 = on_duty_worker(w1)
    incs = push_many(tag, [2, 1], 2)
    assert dc.assignments_of(e["db"], incs[0]) == [
        (w1, "offered", "neighbour_cell")], incs
    dc.wait_for(lambda: dc.incident_row(e["db"], incs[1])[0] ==
                "escalated", what="escalation")
    assert dc.incident_row(e["db"], incs[1])[1] == "all_at_capacity"
    c1.close()


def test_held_worker_passed_over_inside_a_push_in_order():
    # A push's own transaction never waits for a worker another holds: it
    # passes over it to the next candidate.  Three workers ranked by id
    # alone (no positions), the first held: the push's first incident
    # gets the second worker and its second incident the third, as one
    # call per incident in id order gives them (a choice made for the
    # second incident before the first was decided swapped them).
    e = env()
    tag, ws = community([([1], 5), ([1], 5), ([1], 5)])
    cs = [on_duty_worker(w) for w in ws]
    with held_worker(e["db"], ws[0]):
        t0 = time.monotonic()
        incs = push_many(tag, 1, 2)
        assert time.monotonic() - t0 < 3
        got = [dc.assignments_of(e["db"], i) for i in incs]
    assert got == [[(ws[1], "offered", "primary_cell")],
                   [(ws[2], "offered", "least_loaded")]], got
    same = psql1("SELECT bool_and(a.offered_at = i.created_at) FROM"
                 " assignments a JOIN incidents i USING (incident_id)"
                 " WHERE a.incident_id IN (%d, %d)" % tuple(incs), e["db"])
    assert same == "t", same
    dc.no_offer(cs[0], 0.3)
    for c in cs:
        c.close()


def test_push_offer_max_leaves_the_rest_to_the_dispatcher():
    # push_offer_max = 1 (a second daemon on the same database): of three
    # new incidents in one push, the first is offered inside the push's
    # transaction and the other two right after its commit.
    e = env()
    cfg = harness.write_config(
        harness.tmppath("dispatch-pushmax.conf"), dbname=e["db"],
        dispatch__push_offer_max=1, dispatch__merge_radius_m=0)
    g = harness.Gridd(cfg).start()
    try:
        # Its first scan publishes its limit; pushes before it would not
        # offer inside their transaction at all.
        dc.wait_for(lambda: psql1(
            "SELECT count(*) FROM dispatch_origins WHERE batch = 1",
            e["db"]) == "1", what="the second daemon's settings")
        tag, (w1,) = community([([1], 5)])
        c1 = dc.worker_client(cfg.addr, w1)
        dc.check_in(c1, True, dc.cell_point(tag, 1))
        civil = harness.Client(cfg.addr)
        harness.login_department(civil, "civil")
        lon, lat = dc.cell_point(tag, 1)
        items = [pb.IncidentIn(ext_id=dc.unique("pm-"), category="MZ01",
                               lon=lon + i * 1e-5, lat=lat,
                               occurred_at=int(time.time() * 1000),
                               description="push_offer_max")
                 for i in range(3)]
        rep = expect_body(civil.request("push_incidents", incidents=items),
                          "push_incidents_reply")
        incs = sorted(r.incident_id for r in rep.results)
        assert len(incs) == 3 and incs[0] > 0, rep
        got = {dc.recv_offer(c1).incident_id for _ in range(3)}
        assert got == set(incs), (got, incs)
        same = psql("SELECT a.incident_id, a.offered_at = i.created_at"
                    " FROM assignments a JOIN incidents i USING (incident_id)"
                    " WHERE a.incident_id IN (%s) ORDER BY 1"
                    % ",".join(map(str, incs)), e["db"])
        assert [r[1] for r in same] == ["t", "f", "f"], same
        for c in (c1, civil):
            c.close()
    finally:
        g.stop()


def psql_stdin(sql, dbname, timeout=60):
    """Runs sql as a script, each statement its own message (so that each
    has its own statement_timestamp() and statement_timeout, unlike the
    one message of psql -c); returns (stdout, stderr)."""
    r = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
         harness.conninfo(dbname), "-f", "-"],
        input=sql, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (sql, r.stderr)
    return r.stdout, r.stderr


def psql_script(sql, dbname):
    """psql_stdin's rows."""
    out, _ = psql_stdin(sql, dbname)
    return [line.split("|") for line in out.splitlines() if line]


def test_push_offers_stop_at_half_the_statement_timeout():
    # gridd_dispatch_pushed makes no further offer once the push's
    # statement has run for half its statement_timeout: here a statement
    # that slept 0.6 s of its 1 s offers nothing, one with 20 s offers.
    # In one transaction, rolled back: the daemon never sees these rows.
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1, 1)
    lon, lat = dc.cell_point(tag, 1)
    app = dc.unique("budget")
    call = ("SELECT cardinality((gridd_dispatch_pushed(ARRAY(SELECT"
            " incident_id FROM incidents WHERE summary = '%s'))).o_inc)"
            % app)
    rows = psql_script(
        "BEGIN;"
        " INSERT INTO dispatch_origins (app_name, instance, offer_timeout_s,"
        " max_offers, checkin_max_age_s, retry_s, batch)"
        " VALUES ('%(app)s', '%(app)s', 60, 3, 900, 10, 100);"
        " SET LOCAL application_name = '%(app)s';"
        " INSERT INTO incidents (community_id, cell_id, task_type, list,"
        " matter, route, status, owner_department, funder_department,"
        " departments, summary, geom, deadline) VALUES ('%(tag)s',"
        " '%(tag)s-1', 'elderly_visit', 'assist', 'small', 'worker', 'new',"
        " 'civil', 'civil', ARRAY['civil'], '%(app)s',"
        " ST_SetSRID(ST_MakePoint(%(lon)r, %(lat)r), 4326),"
        " now() + interval '1 day');"
        " SET LOCAL statement_timeout = '1s';"
        " WITH s AS MATERIALIZED (SELECT pg_sleep(0.6)) %(call)s FROM s;"
        " SET LOCAL statement_timeout = '20s';"
        " %(call)s;"
        " ROLLBACK;" % dict(app=app, tag=tag, lon=lon, lat=lat, call=call),
        e["db"])
    assert [r[0] for r in rows] == ["0", "1"], rows
    dc.no_offer(c1, 0.3)
    c1.close()


def test_scan_of_the_previous_version_still_works():
    # A process not yet upgraded calls the six-argument scan: it still
    # scans, and publishes its limit as its push limit, as 004 did.
    e = env()
    app = dc.unique("oldscan")
    rows = psql_script(
        "BEGIN; SET LOCAL application_name = '%s';"
        # No columns: the call must only succeed (ON_ERROR_STOP).
        " SELECT FROM gridd_dispatch_scan(1, 60, 3, 900, 10,"
        " 'old-process');"
        " SELECT batch FROM dispatch_origins WHERE app_name = '%s';"
        " ROLLBACK;" % (app, app), e["db"])
    assert [r[0] for r in rows] == ["1"], rows


_quiet = {}


def quiet_db(name="plans"):
    """A migrated database of its own with no daemon on it: the plan tests
    take statistics of whole tables, and must neither see other tests' rows
    nor hold rows a daemon is working on. Another name, another database
    (one whose tables never held a row, say)."""
    if name not in _quiet:
        db = harness.fresh_database("gridd_" + name)
        for f in harness.migration_files():
            with open(os.path.join(harness.SOURCE_DIR, "sql", f),
                      encoding="utf-8") as fh:
                psql_script("BEGIN;\n" + fh.read() + "\nCOMMIT;\n", db)
        _quiet[name] = db
    return _quiet[name]


# A worker's password hash that no secret matches: rows for plan tests.
NO_PASSWORD = "pbkdf2-sha256$1000$" + "0" * 16 + "$" + "0" * 64


def open_incidents_sql(tag, lon, lat):
    """3,000 open incidents of tag's community on a 4 m lattice from
    (lon, lat), in SQL."""
    return (" INSERT INTO incidents (community_id, task_type, list, matter,"
            " route, status, summary, geom) SELECT '%(t)s', 'elderly_visit',"
            " 'assist', 'small', 'department', 'referred', '%(t)s',"
            " ST_SetSRID(ST_MakePoint(%(lon)r + (i %% 60) * 0.00005,"
            " %(lat)r + (i / 60) * 0.00004), 4326)"
            " FROM generate_series(0, 2999) i;"
            % dict(t=tag, lon=lon, lat=lat))


def push_sql(lon, lat, ext, dlon):
    """A one-item gridd_feed_push call of civil's elderly visit ext (an SQL
    expression) at (lon + dlon, lat), dlon an SQL expression too."""
    return (" gridd_feed_push(50, 3600, NULL,"
            " ARRAY['department'], ARRAY['civil'], ARRAY[%s],"
            " ARRAY['C'], ARRAY['elderly_visit'], ARRAY['assist'],"
            " ARRAY['small'], ARRAY['department'], ARRAY[0], ARRAY[''],"
            " ARRAY[1], ARRAY[(extract(epoch FROM now()) * 1000)::bigint],"
            " ARRAY[%r + %s], ARRAY[%r],"
            " ARRAY[NULL::text], ARRAY[NULL::text], ARRAY[NULL::text],"
            " ARRAY[NULL::text], ARRAY[''], ARRAY[''], '{}', '{}', '{}',"
            " '{}', '{}', '{}', '{}', '{}', '{}', '{}')"
            % (ext, lon, dlon, lat))


def plan_spot(prefix, name="plans"):
    """A community of its own in quiet_db(name), and a point in its first
    cell: (database, community id, lon, lat)."""
    db = quiet_db(name)
    tag = dc.unique(prefix)
    dc.make_community(db, tag)
    lon, lat = dc.cell_point(tag, 1)
    return db, tag, lon, lat


def logged_plans(script, dbname):
    """Runs script with auto_explain on for every statement, nested ones
    included; returns the logged plans, one text per statement."""
    _, err = psql_stdin(script.replace(
        "-- auto_explain --",
        "LOAD 'auto_explain';"
        " SET LOCAL auto_explain.log_min_duration = 0;"
        " SET LOCAL auto_explain.log_nested_statements = on;"
        " SET LOCAL client_min_messages = log;"), dbname, timeout=120)
    # Each LOG: "duration: ... plan:\nQuery Text: ...\n<plan>".
    return err.split("LOG:")


def test_worker_plans_do_not_depend_on_who_was_on_duty():
    # Statistics taken while every worker was off duty (a city at night)
    # once made an index over on-duty workers look empty, and the planner
    # read every on-duty worker for the lock of one and for the backup-cell
    # search.  The choice's own plans, after such statistics: the lock by
    # the primary key, tier 2 by the backup-cell index.
    db, tag, lon, lat = plan_spot("night")
    h = NO_PASSWORD
    plans = logged_plans(
        "BEGIN;"
        " INSERT INTO workers (worker_id, community_id, password_hash,"
        " primary_cell, on_duty) SELECT '%(t)s-' || i, '%(t)s', '%(h)s',"
        " '%(t)s-' || (1 + i %% 3), false FROM generate_series(1, 5000) i;"
        " ANALYZE workers;"
        " UPDATE workers SET on_duty = true, last_lon = %(lon)r,"
        " last_lat = %(lat)r, last_checkin_at = now()"
        " WHERE community_id = '%(t)s';\n"
        "INSERT INTO incidents (community_id, cell_id, task_type, list,"
        " matter, route, status, summary, geom, deadline) VALUES ('%(t)s',"
        " '%(t)s-1', 'elderly_visit', 'assist', 'small', 'worker', 'new',"
        " 'night', ST_SetSRID(ST_MakePoint(%(lon)r, %(lat)r), 4326),"
        " now() + interval '1 day') RETURNING incident_id AS inc \\gset\n"
        " -- auto_explain --\n"
        " SELECT count(*) FROM gridd_dispatch_choose(:inc, 60, 3, 900, 10,"
        " 'plans', 'collect');"
        " ROLLBACK;" % dict(t=tag, h=h, lon=lon, lat=lat), db)
    lock = [b for b in plans if "FOR NO KEY UPDATE SKIP LOCKED" in b
            and "w.max_open" in b]
    assert lock, plans[-3:]
    for b in lock:
        assert "workers_pkey" in b, b
    cand = [b for b in plans if "WITH e AS" in b]
    assert cand and "workers_backup_cells_idx" in cand[0], cand


def test_incident_lookups_by_id_do_not_depend_on_a_quiet_spell():
    # After a quiet spell the statistics say that no incident waits for a
    # worker, and the partial incidents_dispatch_due_idx looks empty; the
    # lookups by id of the push and of the dispatcher must still read the
    # primary key, not that index (which a storm then fills).
    db = quiet_db()
    tag = dc.unique("quiet")
    dc.make_community(db, tag)
    app = dc.unique("quietapp")
    plans = logged_plans(
        "BEGIN;"
        " INSERT INTO dispatch_origins (app_name, instance,"
        " offer_timeout_s, max_offers, checkin_max_age_s, retry_s, batch)"
        " VALUES ('%(app)s', '%(app)s', 60, 3, 900, 10, 100);"
        " SET LOCAL application_name = '%(app)s';"
        " INSERT INTO incidents (community_id, task_type, list, matter,"
        " route, status, summary, deadline) SELECT '%(t)s',"
        " 'elderly_visit', 'assist', 'small', 'worker', 'closed',"
        " '%(t)s', now() FROM generate_series(1, 5000);"
        # Nothing waits for a worker when the statistics are taken.
        " ANALYZE incidents;"
        # The first few of the storm: the index is still small.
        " UPDATE incidents SET status = 'new' WHERE incident_id IN"
        " (SELECT incident_id FROM incidents WHERE summary = '%(t)s'"
        " LIMIT 20);"
        " -- auto_explain --\n"
        " SELECT count(*) FROM gridd_dispatch_pushed(ARRAY(SELECT"
        " incident_id FROM incidents WHERE summary = '%(t)s'"
        " AND status = 'new' LIMIT 1));"
        " SELECT count(*) FROM gridd_dispatch_incidents(ARRAY(SELECT"
        " incident_id FROM incidents WHERE summary = '%(t)s'"
        " AND status = 'new' OFFSET 1 LIMIT 1),"
        " 60, 3, 900, 10, '%(app)s');"
        " ROLLBACK;" % dict(t=tag, app=app), db)
    byid = [b for b in plans if "incident_id = ANY (p_ids)" in b]
    assert len(byid) == 2, plans[-3:]
    for b in byid:
        assert "incidents_pkey" in b and "incidents_dispatch_due_idx" \
            not in b, b


def test_merge_search_probes_the_open_incidents_index():
    # The merge search of every pushed item probes incidents_open_geom_idx
    # with a box around the item; with thousands of open incidents around,
    # a plan without it would read them all for each item.  The push's own
    # plan, through auto_explain.
    db, tag, lon, lat = plan_spot("merge")
    plans = logged_plans(
        "BEGIN;" + open_incidents_sql(tag, lon, lat) +
        " ANALYZE incidents;"
        " -- auto_explain --\n"
        " SELECT outcome FROM" +
        push_sql(lon, lat, "'%s-1'" % tag, "0.00001") + ";"
        " ROLLBACK;", db)
    search = [b for b in plans if "WITH it AS" in b and "Aggregate" in b]
    assert len(search) == 1, plans[-3:]
    assert "Index Scan using incidents_open_geom_idx" in search[0] or \
        "Bitmap Index Scan on incidents_open_geom_idx" in search[0], search


def push_plan_after_empty_statistics(prefix, dbname, before=""):
    """The plan of the push's locate, duplicate and merge statement, made
    by a session whose first pushes ran while the tables were empty and
    analyzed as such, after 3,000 incidents and their sources came; before
    is SQL the session runs just before that last push."""
    db, tag, lon, lat = plan_spot(prefix, dbname)
    push = push_sql(lon, lat, "'%s-' || k" % tag, "0.00001 * k")
    plans = logged_plans(
        "BEGIN;"
        " ANALYZE incidents, incident_sources, events, assignments;"
        # The session's plans are made by its first pushes, while the
        # tables are empty, as a daemon's connections make theirs.
        " SELECT count(*) FROM generate_series(1, 3) k, LATERAL" + push +
        ";" + open_incidents_sql(tag, lon, lat) +
        " INSERT INTO incident_sources (source_kind, source_id, ext_id,"
        " incident_id, community_id, category, outcome) SELECT"
        " 'department', 'civil', 'old-' || incident_id, incident_id,"
        " '%s', 'C', 'accepted' FROM incidents;" % tag + before +
        " -- auto_explain --\n"
        " SELECT count(*) FROM generate_series(4, 4) k, LATERAL" + push +
        ";"
        " ROLLBACK;", db)
    search = [b for b in plans if "WITH it AS" in b and "Aggregate" in b]
    assert len(search) == 1, plans[-3:]
    return search[0], plans


# The duplicate probe as a probe by the key of incident_sources, per item.
# (The key's columns are domains over text since 019_check_domains.sql,
# which EXPLAIN shows as a cast of the column: "(source_kind)::text".)
def _col(name, cast):
    return r"(?:%s|\(%s\)::%s)" % (name, name, cast)


DUP_PROBE = re.compile(r"Index Scan using incident_sources_pkey on "
                       r"incident_sources s[^\n]*\n\s+Index Cond: "
                       r"\(\(" + _col("source_kind", "text") +
                       r" = u\.kind\) AND \(" + _col("source_id", "text") +
                       r" = u\.src\) AND \(" + _col("ext_id", "text") +
                       r" = u\.ext\)\)")


def test_push_probes_keep_their_indexes_after_statistics_of_empty_tables():
    # Autovacuum analyzes a table when it likes: on a new city's empty
    # incidents, after a purge, or (in the bench) just after a reset. With
    # statistics that say empty, the cheapest plan for each item's
    # duplicate and merge probe is to read the whole table, and the push's
    # generic plans, made then, keep doing so while a storm fills it: one
    # such bench run fell from about 7,000 to 314 items/s. The push's own
    # plans after ANALYZE of the empty tables, then 3,000 incidents.
    search, plans = push_plan_after_empty_statistics("empty", "empty")
    for table in ("incidents", "incident_sources"):
        assert "Seq Scan on %s " % table not in search, search
    # The merge probe keeps its box as the index condition. (The duplicate
    # probe can still become a whole-index read joined to the items, until
    # the session plans again: the next test.)
    assert re.search(r"Index Scan using incidents_open_geom_idx on "
                     r"incidents i[^\n]*\n\s+Index Cond: \(geom && ",
                     search), search
    pushed = [b for b in plans if "Seq Scan on incidents " in b or
              "Seq Scan on incident_sources " in b or
              "Seq Scan on events " in b]
    assert not pushed, pushed


def test_push_plans_again_after_discard_plans():
    # What the rest of the way out is: each of gridd's connections drops
    # its plans every [database] replan_interval_s (DISCARD PLANS, db.c;
    # test_db checks that it does), and the push's statements planned
    # again see the tables' real size, whatever the statistics of the
    # empty tables say. Without it the same session keeps reading the
    # whole primary key of incident_sources for every item (checked: the
    # assertion fails with before="").
    search, _ = push_plan_after_empty_statistics("replan", "replan",
                                                 " DISCARD PLANS;")
    assert DUP_PROBE.search(search), search
    assert "Seq Scan on incident" not in search, search


def merge_lock_tables(before=""):
    """The hash tables (kB each) that a one-item push's merge-lock
    statement built, from EXPLAIN ANALYZE; before is SQL run first in the
    same transaction."""
    db, tag, lon, lat = plan_spot("lockhash", "lockhash")
    plans = logged_plans(
        "BEGIN;" + before + " -- auto_explain --\n"
        " SET LOCAL auto_explain.log_analyze = on;"
        " SELECT count(*) FROM" + push_sql(lon, lat, "'%s-1'" % tag, "0") +
        ";"
        " ROLLBACK;", db)
    locks = [b for b in plans if "pg_advisory_xact_lock(" in b and
             "Query Text" in b]
    assert len(locks) == 1, plans[-3:]
    return [int(m) for m in re.findall(r"Memory Usage: (\d+)kB", locks[0])]


def test_push_merge_locks_build_no_hash_table_for_keys_they_lack():
    # The push's generic plan guesses 400,000 distinct merge-lock keys,
    # and a hash aggregate sized for them allocated, zeroed and walked
    # 3 MB on every call, for one item as for thousands: a fifth of a
    # one-item push's backend CPU (011_push_lock_hash.sql). The keys are
    # sorted instead.
    tables = merge_lock_tables()
    assert all(kb < 256 for kb in tables), tables
    # Checked: with the function's setting reset, the 3 MB table is back.
    reset = merge_lock_tables(
        " ALTER FUNCTION gridd_feed_push RESET enable_hashagg;")
    assert max(reset, default=0) > 1024, reset


def test_push_runs_no_statement_with_nothing_to_do():
    # Each statement of a push costs its executor's start, and an INSERT
    # of no rows still fires the report's statement triggers; a push runs
    # only the statements its items need (012_push_fixed_cost.sql). One
    # item pushed twice: a new incident, then a duplicate.
    db, tag, lon, lat = plan_spot("lean", "lean")
    call = " SELECT count(*) FROM" + push_sql(lon, lat, "'%s-1'" % tag,
                                               "0") + ";"
    plans = logged_plans("BEGIN; -- auto_explain --\n" + call + call +
                         " ROLLBACK;", db)
    texts = [p.split("Query Text:", 1)[1].lstrip() for p in plans
             if "Query Text:" in p]
    tops = [i for i, t in enumerate(texts)
            if t.startswith("SELECT count(*) FROM gridd_feed_push")]
    assert len(tops) == 2, texts[-3:]
    first = "\n".join(texts[:tops[0]])
    second = "\n".join(texts[tops[0] + 1:tops[1]])
    for needed in ("INSERT INTO incidents", "INSERT INTO incident_sources",
                   "gridd_emit_events_to"):
        assert needed in first, (needed, first)
    # Nothing refused, nothing unplaceable, one item: no refusal insert,
    # no length check by statement, no merge within the call.
    for idle in ("INSERT INTO rejections", "gridd_check_lengths",
                 "gridd_feed_leaders"):
        assert idle not in first, (idle, first)
    # The duplicate writes nothing, so nothing that writes runs.
    for idle in ("INSERT INTO", "UPDATE incidents", "gridd_emit_events_to",
                 "gridd_dispatch_pushed", "report_dirty"):
        assert idle not in second, (idle, second)


def test_choice_probes_keep_their_indexes_after_statistics_of_empty_tables():
    # The same for the choice of a worker, in a push or after it: the
    # incident's past assignments are read by incident, whatever the
    # statistics of an emptied assignments table say.
    db, tag, lon, lat = plan_spot("emptych", "empty")
    h = NO_PASSWORD
    plans = logged_plans(
        "BEGIN;"
        " ANALYZE incidents, assignments, workers;"
        " INSERT INTO workers (worker_id, community_id, password_hash,"
        " primary_cell, on_duty, last_lon, last_lat, last_checkin_at)"
        " SELECT '%(t)s-' || i, '%(t)s', '%(h)s', '%(t)s-1', true,"
        " %(lon)r, %(lat)r, now() FROM generate_series(1, 3) i;"
        " INSERT INTO incidents (incident_id, community_id, cell_id,"
        " task_type, list, matter, route, status, summary, geom)"
        " SELECT -i, '%(t)s', '%(t)s-1', 'elderly_visit', 'assist', 'small',"
        " 'worker', 'escalated', 'old', ST_SetSRID(ST_MakePoint(%(lon)r,"
        " %(lat)r), 4326) FROM generate_series(1, 3000) i;"
        # Choices made while the tables are still small: the session's
        # plans are cached then, as a daemon's connections cache theirs.
        " SELECT count(*) FROM generate_series(1, 8) k,"
        " LATERAL gridd_dispatch_choose(-k, 60, 3, 900, 10, 'plans',"
        " 'collect');"
        " INSERT INTO assignments (incident_id, worker_id, community_id,"
        " state, reason, expires_at) SELECT -i, '%(t)s-1', '%(t)s',"
        " 'expired', 'primary_cell', now() FROM generate_series(9, 3000) i;"
        "INSERT INTO incidents (community_id, cell_id, task_type, list,"
        " matter, route, status, summary, geom, deadline) VALUES ('%(t)s',"
        " '%(t)s-1', 'elderly_visit', 'assist', 'small', 'worker', 'new',"
        " 'storm', ST_SetSRID(ST_MakePoint(%(lon)r, %(lat)r), 4326),"
        " now() + interval '1 day') RETURNING incident_id AS inc \\gset\n"
        " -- auto_explain --\n"
        " SELECT count(*) FROM gridd_dispatch_choose(:inc, 60, 3, 900, 10,"
        " 'plans', 'collect');"
        " ROLLBACK;" % dict(t=tag, h=h, lon=lon, lat=lat), db)
    reads = [b for b in plans if "FROM assignments a" in b and
             "a.incident_id = p_incident" in b]
    assert reads, plans[-3:]
    # (Three workers fit in a page: reading it whole is right for them.)
    for b in plans:
        for table in ("assignments", "incidents"):
            assert "Seq Scan on %s " % table not in b, b


def test_action_batch_reads_keys_by_index():
    # The batch's check of stored idempotency keys once read and hashed
    # every key of the table in its generic plan (0.9 ms a batch at 2,300
    # keys, growing with the table): it must probe the primary key.  The
    # keys are not analyzed here, as before autovacuum first comes to a
    # growing table: the planner then guesses from its pages.
    db, tag, lon, lat = plan_spot("keys")
    plans = logged_plans(
        "BEGIN;"
        " INSERT INTO workers (worker_id, community_id, password_hash,"
        " primary_cell, on_duty) VALUES ('%(t)s-w', '%(t)s', '%(h)s',"
        " '%(t)s-1', true);"
        " INSERT INTO incidents (incident_id, community_id, cell_id,"
        " task_type, list, matter, route, status, summary, geom)"
        " SELECT -i, '%(t)s', '%(t)s-1', 'elderly_visit', 'assist', 'small',"
        " 'worker', 'dispatched', 'old', ST_SetSRID(ST_MakePoint(%(lon)r,"
        " %(lat)r), 4326) FROM generate_series(1, 5) i;"
        " INSERT INTO assignments (incident_id, worker_id, community_id,"
        " state, reason, expires_at) SELECT -i, '%(t)s-w', '%(t)s',"
        " 'offered', 'primary_cell', now() + interval '1 hour'"
        " FROM generate_series(1, 5) i;"
        " INSERT INTO assignment_actions (worker_id, idempotency_key,"
        " assignment_id, community_id, action) SELECT '%(t)s-w',"
        " 'old-' || i, (SELECT min(assignment_id) FROM assignments"
        " WHERE worker_id = '%(t)s-w'), '%(t)s', 'accept'"
        " FROM generate_series(1, 3000) i;"
        " ANALYZE assignments;"
        # As a daemon's connection runs it once its plans are generic.
        " SET LOCAL plan_cache_mode = force_generic_plan;\n"
        " -- auto_explain --\n"
        " SELECT count(*) FROM gridd_assignment_actions("
        " array_fill('%(t)s-w'::text, ARRAY[5]),"
        " (SELECT array_agg(assignment_id ORDER BY assignment_id)"
        " FROM assignments WHERE worker_id = '%(t)s-w'),"
        " array_fill('accept'::text, ARRAY[5]),"
        " array_fill(NULL::text, ARRAY[5]),"
        " array_fill(NULL::float8, ARRAY[5]),"
        " array_fill(NULL::float8, ARRAY[5]),"
        " ARRAY['n1', 'n2', 'n3', 'n4', 'n5'], 60, 3, 900, 30, 'plans');"
        " ROLLBACK;" % dict(t=tag, h=NO_PASSWORD, lon=lon, lat=lat), db)
    checks = [b for b in plans if "FROM assignment_actions k" in b or
              "JOIN assignment_actions k" in b]
    assert checks, plans[-3:]
    for b in checks:
        assert "assignment_actions_pkey on assignment_actions k" in b, b
        assert "Index Cond: ((worker_id = " in b, b
        assert "Hash" not in b and "hashed SubPlan" not in b, b
    for b in plans:
        if "count(*) FROM gridd_assignment_actions(" not in b:
            assert "Seq Scan on assignment" not in b, b


def test_password_hash_rule_accepts_what_it_always_did():
    # 017_worker_hash_check.sql rewrote the workers' password-hash CHECK
    # (its counted repetitions made every update of a worker's row slow):
    # it must accept exactly the strings 001_init.sql's expression did.
    old = ("^pbkdf2-sha256\\$[0-9]{1,10}\\$[0-9a-f]{16,128}"
           "\\$[0-9a-f]{64}$")
    it, salt, h = "1000", "0123456789abcdef", "a" * 64
    cands = ["pbkdf2-sha256$%s$%s$%s" % p for p in [
        (it, salt, h), ("1", salt, h), ("1234567890", salt, h),
        ("12345678901", salt, h), ("", salt, h), ("1a", salt, h),
        (it, salt[:15], h), (it, "f" * 128, h), (it, "f" * 129, h),
        (it, "A" * 16, h), (it, salt + "g", h), (it, "", h),
        (it, salt, h[:63]), (it, salt, h + "a"), (it, salt, "A" * 64),
        (it, salt, "9" * 63 + "$"), (it, salt, h + "\n"),
        (it, salt, h + " "), (it + "$1", salt, h), (it, salt + "$", h),
        (it, salt, ""), (it, salt, h + "$" + h)]]
    cands += ["pbkdf2-sha512$%s$%s$%s" % (it, salt, h),
              "PBKDF2-sha256$%s$%s$%s" % (it, salt, h),
              " pbkdf2-sha256$%s$%s$%s" % (it, salt, h),
              "xpbkdf2-sha256$%s$%s$%s" % (it, salt, h),
              "pbkdf2-sha256$%s$%s" % (it, salt), "pbkdf2-sha256", "", "$$$"]
    lits = ", ".join("'%s'" % c.replace("'", "''") for c in cands)
    out, err = psql_stdin(
        "BEGIN;"
        " CREATE TEMP TABLE wk (LIKE workers INCLUDING DEFAULTS"
        " INCLUDING CONSTRAINTS);"
        " CREATE FUNCTION pg_temp.accepts(h text) RETURNS boolean"
        " LANGUAGE plpgsql AS $f$ BEGIN"
        " INSERT INTO wk (worker_id, community_id, password_hash)"
        " VALUES ('w', 'c', h); DELETE FROM wk; RETURN true;"
        " EXCEPTION WHEN check_violation THEN RETURN false; END $f$;"
        " SELECT u.ord, pg_temp.accepts(u.h), u.h ~ '%s'"
        " FROM unnest(ARRAY[%s]) WITH ORDINALITY AS u(h, ord)"
        " ORDER BY u.ord;"
        " ROLLBACK;" % (old, lits), env()["db"])
    rows = [ln.split("|") for ln in out.split("\n") if ln.count("|") == 2]
    assert len(rows) == len(cands), (out, err)
    for ordn, now, then in rows:
        assert now == then, (cands[int(ordn) - 1], now, then)
    assert {r[1] for r in rows} == {"t", "f"}, rows


# ---- a batch of workers' actions --------------------------------------------

def _actions_one_by_one():
    """004_dispatch.sql's gridd_assignment_actions, read from that file and
    renamed pg_temp.actions_one_by_one: each item by gridd_assignment_act,
    one after another in assignment order, the events last.
    016_actions_set.sql must answer every batch as this does."""
    with open(os.path.join(harness.SOURCE_DIR, "sql",
                           "004_dispatch.sql")) as f:
        text = f.read()
    head = "CREATE FUNCTION gridd_assignment_actions("
    start = text.index(head)
    end = text.index("\n$$;\n", start) + len("\n$$;\n")
    return text[start:end].replace(
        head, "CREATE FUNCTION pg_temp.actions_one_by_one(", 1)


def _sql_array(vals, typ):
    def lit(v):
        if v is None:
            return "NULL"
        if isinstance(v, str):
            return "'" + v.replace("'", "''") + "'"
        return repr(v)
    return "ARRAY[%s]::%s[]" % (", ".join(lit(v) for v in vals), typ)


def _run_actions(fn, items, incs, workers, before=""):
    """Runs the batch items [(worker, assignment, action, note, lon, lat,
    key)] through fn in a transaction that is rolled back; returns the
    rows it answered and what it left in the database, as JSON text.  The
    sequence numbers of the events it wrote are given from the
    department's last one: the daemon may commit events of the same
    department between two runs."""
    cols = list(zip(*items))
    call = "%s(%s, %s, %s, %s, %s, %s, %s, 5, 3, 900, 30, 'test')" % (
        fn, _sql_array(cols[0], "text"), _sql_array(cols[1], "bigint"),
        _sql_array(cols[2], "text"), _sql_array(cols[3], "text"),
        _sql_array(cols[4], "float8"), _sql_array(cols[5], "float8"),
        _sql_array(cols[6], "text"))
    ids = _sql_array(incs, "bigint")
    wks = _sql_array(workers, "text")
    script = """
BEGIN;
%s
%s
CREATE TEMP TABLE r AS SELECT * FROM %s WITH ORDINALITY AS x;
SELECT json_build_object(
 'rows', (SELECT json_agg(json_build_object('o', outcome, 'd', detail,
     'n', n, 'i', incident_id, 'w', worker_id, 'r', reason, 's', state,
     'a', CASE WHEN outcome = 'offered' THEN NULL ELSE assignment_id END)
     ORDER BY ordinality) FROM r),
 'asg', (SELECT json_agg(json_build_object('i', a.incident_id,
     'w', a.worker_id, 's', a.state, 'r', a.reason, 'note', a.note,
     'lon', a.resolve_lon, 'lat', a.resolve_lat,
     'acc', a.accepted_at IS NOT NULL, 'st', a.started_at IS NOT NULL,
     'res', a.resolved_at IS NOT NULL,
     'timer', EXISTS (SELECT 1 FROM timers t WHERE t.kind = 'offer_expiry'
         AND t.ref_id = a.assignment_id))
     ORDER BY a.incident_id, a.offered_at, a.worker_id)
     FROM assignments a WHERE a.incident_id = ANY (%s)),
 'inc', (SELECT json_agg(json_build_object('i', incident_id, 's', status,
     'offers', offers) ORDER BY incident_id)
     FROM incidents WHERE incident_id = ANY (%s)),
 'keys', (SELECT json_agg(json_build_object('w', worker_id,
     'k', idempotency_key, 'a', assignment_id, 'x', action)
     ORDER BY worker_id, idempotency_key)
     FROM assignment_actions WHERE worker_id = ANY (%s)),
 'ev', (SELECT json_agg(json_build_object('d', e.department_id,
     'seq', CASE WHEN e.xmin::text = (txid_current() %% 4294967296)::text
         THEN e.dept_seq - s.last_seq ELSE e.dept_seq END,
     'i', e.incident_id, 's', e.status, 'w', e.worker_id, 'note', e.note)
     ORDER BY e.department_id, e.dept_seq)
     FROM events e JOIN department_seq s USING (department_id)
     WHERE e.incident_id = ANY (%s)),
 'load', (SELECT json_agg(json_build_object('w', worker_id,
     'n', open_count) ORDER BY worker_id)
     FROM workers WHERE worker_id = ANY (%s)));
ROLLBACK;
""" % (_actions_one_by_one() if fn.startswith("pg_temp.") else "", before,
       call, ids, ids, wks, ids, wks)
    out, _ = psql_stdin(script, env()["db"])
    return out.strip()


def test_a_batch_of_actions_answers_as_one_action_after_another():
    e = env()
    tag, ws = community([([1], 5)] * 8)
    conns = [on_duty_worker(w) for w in ws]
    incs = [new_incident(tag, 1) for _ in range(7)]
    offer = {}                      # incident -> (assignment, worker)
    for inc in incs:
        aid, wk = dc.wait_for(lambda: psql(
            "SELECT assignment_id, worker_id FROM assignments "
            "WHERE incident_id = %d AND state = 'offered'" % inc, e["db"]),
            what="offer of %d" % inc)[0]
        offer[inc] = (int(aid), wk)
    conn_of = dict(zip(ws, conns))
    (a1, w1), (a2, w2), (a3, w3), (a4, w4), (a5, w5), (a6, w6), \
        (a7, w7) = [offer[i] for i in incs]
    assert len({w1, w2, w3, w4, w5, w6, w7}) == 7, offer
    # a3 accepted with a key; a4 started with one: what START and RESOLVE
    # need, and keys already stored.
    expect_body(dc.update(conn_of[w3], a3, "ACCEPT", key="k3"), "ok")
    expect_body(dc.update(conn_of[w4], a4, "ACCEPT"), "ok")
    expect_body(dc.update(conn_of[w4], a4, "START", key="k4"), "ok")
    # Two more incidents: the eighth worker's offer, then a second offer
    # for one of the seven.
    incs.append(new_incident(tag, 1))
    incs.append(new_incident(tag, 1))
    twice = dc.wait_for(lambda: psql(
        "SELECT worker_id, max(assignment_id) FROM assignments "
        "WHERE incident_id IN (%s) AND state = 'offered' "
        "GROUP BY worker_id HAVING count(*) = 2"
        % ",".join(map(str, incs)), e["db"]), what="a second offer")
    w9, a9 = twice[0][0], int(twice[0][1])
    a9_first = offer[next(i for i in incs[:7] if offer[i][1] == w9)][0]
    # No offer may expire while the batches are compared.
    psql("UPDATE timers SET fire_at = now() + interval '1 hour' "
         "WHERE kind = 'offer_expiry' AND ref_id IN (SELECT assignment_id "
         "FROM assignments WHERE incident_id IN (%s))"
         % ",".join(map(str, incs)), e["db"])
    lon, lat = dc.cell_point(tag, 1)
    acc1 = (w1, a1, "accept", None, None, None, "b-1")
    acc2 = (w2, a2, "accept", None, None, None, None)
    start3 = (w3, a3, "start", None, None, None, "b-3")
    res4 = (w4, a4, "resolve", "done", lon, lat, "b-4")
    batches = {
        # Every item certain: the set pass takes them all.
        "all_certain": ([res4, acc1, start3, acc2], ""),
        # A DECLINE ends the prefix; after it, a wrong worker, a second
        # action on one assignment, an unknown assignment.
        "decline": ([acc1, acc2, start3, res4,
                     (w5, a5, "decline", "busy", None, None, None),
                     (w7, a6, "accept", None, None, None, None),
                     (w7, a7, "accept", None, None, None, "b-7"),
                     (w7, a7, "start", None, None, None, "b-7s"),
                     (w7, 999999999, "accept", None, None, None, None)], ""),
        # One assignment twice inside what would be the prefix.
        "twice": ([acc1, acc2, (w2, a2, "accept", None, None, None, None),
                   start3], ""),
        # Another worker's assignment, second in order.
        "forbidden": ([acc1, (w7, a2, "accept", None, None, None, None),
                       start3], ""),
        # A state the action does not fit, second in order.
        "state": ([acc1, (w2, a2, "start", None, None, None, None), start3],
                  ""),
        # A replayed key first: nothing for the set pass.
        "replay": ([(w3, a3, "accept", None, None, None, "k3"), acc1,
                    (w3, a3, "start", None, None, None, "k3")], ""),
        # A stored key used again for an action that would fit.
        "stored_key": ([acc1, acc2,
                        (w4, a4, "resolve", "x", None, None, "k4")], ""),
        # A cancelled incident in the middle.
        "cancelled": ([acc1, acc2, start3],
                      "UPDATE incidents SET status = 'cancelled' "
                      "WHERE incident_id = %d;" % incs[1]),
        # One key twice for one worker, on two assignments: the second
        # is a conflict.
        "key_twice": ([(w9, a9_first, "accept", None, None, None, "same"),
                       (w9, a9, "accept", None, None, None, "same"),
                       acc2], ""),
    }
    # Each with the plans of a first call and with the generic plans a
    # daemon's connection runs after five.
    generic = "SET LOCAL plan_cache_mode = force_generic_plan;"
    for name, (items, before) in batches.items():
        for plans in ("", generic):
            want = _run_actions("pg_temp.actions_one_by_one", items, incs,
                                ws, plans + before)
            got = _run_actions("gridd_assignment_actions", items, incs, ws,
                               plans + before)
            assert got == want, "%s%s:\n one by one %s\n batch      %s" % (
                name, plans and " (generic plans)", want, got)
            assert '"o" : "ok"' in want, (name, want)
    # The comparison saw the prefix's own writes: a key, a transition,
    # a timer gone, an event.
    got = json.loads(_run_actions("gridd_assignment_actions",
                                  batches["all_certain"][0], incs, ws))
    assert [r["o"] for r in got["rows"]] == ["ok"] * 4, got["rows"]
    assert sorted(k["k"] for k in got["keys"] if k["w"] in (w1, w3, w4)) \
        == ["b-1", "b-3", "b-4", "k3", "k4"], got["keys"]
    for c in conns:
        c.close()


def _held(hold_sql, db, name):
    """hold_sql run in a transaction of its own that sleeps 2 s before it
    commits; returns its process once it sleeps, holding its locks."""
    p = subprocess.Popen(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", harness.conninfo(db),
         "-f", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    p.stdin.write("SET application_name = '%s'; BEGIN; %s"
                  " SELECT pg_sleep(2); COMMIT;" % (name, hold_sql))
    p.stdin.close()
    dc.wait_for(lambda: psql1(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
        " '%s' AND query LIKE '%%pg_sleep%%'" % name, db) == "1",
        what="the holding session")
    return p


def _offered(tag, n):
    """n incidents pushed into tag's first cell, each offered: their
    [(incident, assignment, worker)], the offers kept from expiring."""
    db = env()["db"]
    out = []
    for _ in range(n):
        inc = new_incident(tag, 1)
        aid, wk = dc.wait_for(lambda: psql(
            "SELECT assignment_id, worker_id FROM assignments "
            "WHERE incident_id = %d AND state = 'offered'" % inc, db),
            what="offer of %d" % inc)[0]
        out.append((inc, int(aid), wk))
    psql("UPDATE timers SET fire_at = now() + interval '1 hour' "
         "WHERE kind = 'offer_expiry' AND ref_id IN (%s)"
         % ",".join(str(a) for _, a, _ in out), db)
    return out


def _batch_sql(items):
    cols = list(zip(*items))
    return ("SELECT outcome, detail FROM gridd_assignment_actions("
            "%s, %s, %s, %s, %s, %s, %s, 5, 3, 900, 30, 'test')" % (
                _sql_array(cols[0], "text"), _sql_array(cols[1], "bigint"),
                _sql_array(cols[2], "text"), _sql_array(cols[3], "text"),
                _sql_array(cols[4], "float8"), _sql_array(cols[5], "float8"),
                _sql_array(cols[6], "text")))


def test_a_batch_checks_its_incidents_under_their_locks():
    # A status change committed while the batch waits for the incident's
    # lock is what the batch sees, as an action one at a time saw it: the
    # set pass once locked only the incidents it found closed.
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1)
    (inc, aid, wk), = _offered(tag, 1)
    hold = _held("UPDATE incidents SET status = 'cancelled' WHERE"
                 " incident_id = %d;" % inc, e["db"], "hold-inc-%d" % inc)
    out, _ = psql_stdin(
        "BEGIN; %s; SELECT status FROM incidents WHERE incident_id = %d;"
        " ROLLBACK;" % (_batch_sql([(wk, aid, "accept", None, None, None,
                                     None)]), inc), e["db"])
    assert hold.wait(timeout=30) == 0, hold.stderr.read()
    assert out.split() == ["conflict|incident", "is", "cancelled",
                           "cancelled"], out
    c1.close()


def test_a_key_stored_meanwhile_reads_conflict_in_a_batch():
    # One worker's key stored for another assignment by a transaction
    # that commits while the batch waits to insert it: CONFLICT, as for an
    # action one at a time, not an error (a lone action is a batch of one
    # and is not run again).
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1)
    (_, a1, wk), (_, a2, wk2) = _offered(tag, 2)
    assert wk == wk2 == w1
    hold = _held("INSERT INTO assignment_actions (worker_id,"
                 " idempotency_key, assignment_id, community_id, action)"
                 " VALUES ('%s', 'K', %d, '%s', 'accept');" % (wk, a2, tag),
                 e["db"], "hold-key-%d" % a1)
    out, _ = psql_stdin(
        "BEGIN; %s; SELECT state FROM assignments WHERE assignment_id = %d;"
        " ROLLBACK;" % (_batch_sql([(wk, a1, "accept", None, None, None,
                                     "K")]), a1), e["db"])
    assert hold.wait(timeout=30) == 0, hold.stderr.read()
    assert out.splitlines() == [
        "conflict|idempotency_key already used for another action",
        "offered"], out
    c1.close()


def test_wrong_worker_forbidden():
    e = env()
    tag, (w1, w2) = community([([1], 5), ([2], 5)])
    c1 = on_duty_worker(w1)
    c2 = on_duty_worker(w2)
    inc = new_incident(tag, 1)
    o = dc.recv_offer(c1, inc)
    expect_error(dc.update(c2, o.assignment_id, "ACCEPT"), "FORBIDDEN")
    expect_error(dc.update(c2, 10 ** 12, "ACCEPT"), "NOT_FOUND")
    lst = expect_body(c2.request("list_assignments", open_only=False),
                      "assignment_list")
    assert len(lst.assignments) == 0, lst
    # Departments and admins have no worker requests.
    civil = harness.Client(e["cfg"].addr)
    harness.login_department(civil, "civil")
    expect_error(dc.update(civil, o.assignment_id, "ACCEPT"), "FORBIDDEN")
    assert dc.assignments_of(e["db"], inc)[0][1] == "offered"
    for c in (c1, c2, civil):
        c.close()


def test_offer_delivered_at_login():
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1)
    c1.close()			# on duty, but not connected
    inc = new_incident(tag, 1)
    dc.wait_for(lambda: dc.assignments_of(e["db"], inc), what="the offer")
    c1 = dc.worker_client(e["cfg"].addr, w1)
    o = dc.recv_offer(c1, inc)
    assert o.state == "offered" and o.reason == "primary_cell", o
    lst = expect_body(c1.request("list_assignments", open_only=True),
                      "assignment_list")
    assert [a.incident_id for a in lst.assignments] == [inc], lst
    c1.close()


def test_sla_overdue_escalated_once():
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1)
    inc = dc.sql_incident(e["db"], tag, 1,
                          deadline="now() + interval '2 seconds'")
    o = dc.recv_offer(c1, inc)
    expect_body(dc.update(c1, o.assignment_id, "ACCEPT"), "ok")
    dc.wait_for(lambda: dc.incident_row(e["db"], inc)[2] == "t", timeout=8,
                what="SLA escalation")
    assert dc.incident_row(e["db"], inc)[0] == "accepted"
    time.sleep(1.5)
    evs = dc.events_of(e["db"], inc)
    assert [ev for ev in evs if ev[0] == "escalated"] == [
        ("escalated", "", "sla overdue")], evs
    assert psql1("SELECT count(*) FROM timers WHERE kind = 'sla' AND "
                 "ref_id = %d" % inc, e["db"]) == "0"
    # Still open: the worker goes on.
    expect_body(dc.update(c1, o.assignment_id, "START"), "ok")
    c1.close()


def _notifies():
    """gridd_dispatch_notifies_total by outcome."""
    import urllib.request
    body = urllib.request.urlopen(
        "http://127.0.0.1:%d/metrics" % env()["cfg"].http_port,
        timeout=5).read().decode()
    out = {}
    for line in body.splitlines():
        m = re.match(r'gridd_dispatch_notifies_total\{outcome="(\w+)"\} '
                     r'(\S+)$', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_an_incident_offered_in_its_push_asks_the_dispatcher_nothing():
    # The push NOTIFYs the dispatcher of each new incident for a worker;
    # one already offered inside the push needs no statement after the
    # commit, one that found no worker does (it is retried).
    tag, (w1,) = community([([1], 5)])
    before = _notifies()
    c1 = on_duty_worker(w1)
    inc = new_incident(tag, 1)
    dc.recv_offer(c1, inc)
    dc.wait_for(lambda: _notifies()["offered_in_push"] >
                before["offered_in_push"], what="the push's NOTIFY")
    now = _notifies()
    assert now["offered_in_push"] == before["offered_in_push"] + 1, (
        before, now)
    assert now["queued"] == before["queued"], (before, now)
    c1.close()
    # Nobody on duty in a community of its own: escalated at the commit,
    # and the NOTIFY goes to a statement as before.
    tag2, _ = community([([1], 5)])
    inc2 = new_incident(tag2, 1)
    dc.wait_for(lambda: _notifies()["queued"] > now["queued"],
                what="the NOTIFY of %d" % inc2)
    assert _notifies()["offered_in_push"] == now["offered_in_push"]


def test_metrics_move():
    e = env()
    tag, (w1,) = community([([1], 5)])
    c1 = on_duty_worker(w1)
    o = dc.recv_offer(c1, new_incident(tag, 1))
    expect_body(dc.update(c1, o.assignment_id, "ACCEPT"), "ok")
    c1.close()
    import urllib.request
    body = urllib.request.urlopen(
        "http://127.0.0.1:%d/metrics" % e["cfg"].http_port,
        timeout=5).read().decode()
    vals = {}
    for line in body.splitlines():
        if line.startswith("gridd_offers_total{") or \
                line.startswith("gridd_escalations_total{"):
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    assert vals.get('gridd_offers_total{event="sent"}', 0) > 0, vals
    assert vals.get('gridd_offers_total{event="accepted"}', 0) > 0, vals
    assert 'gridd_offer_push_latency_seconds_count' in body
    assert 'gridd_timer_lag_seconds_bucket' in body


if __name__ == "__main__":
    harness.skip_unless_pg()
    harness.main(globals())

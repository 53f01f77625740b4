"""test_feed.py - departmental feeds into one model, over the real socket
with the real database: validation, classification, the four lists,
locating, idempotency, merging, triage, subscriptions and complaints.

A tiny synthetic community (two square cells, one building, one
department grid cell with its crosswalk row) is loaded with SQL once the
daemon has migrated the schema. Each test uses its own spots on the map
(more than merge_radius_m apart) and its own ext_ids, so that no test
depends on another.
"""

import itertools
import math
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import pb, expect_body, expect_error  # noqa: E402

harness.skip_unless_pg()

# The community: lon 9.50..9.52, lat 47.10..47.12; cell C1-001 is the west
# half, C1-002 the east half. Building B1 lies in C1-002; department
# civil's grid code MZG-7 lies in C1-001.
FIXTURE = """
INSERT INTO communities (community_id, name, geom) VALUES
 ('C1', 'Test community',
  ST_Multi(ST_MakeEnvelope(9.50, 47.10, 9.52, 47.12, 4326)));
INSERT INTO cells (cell_id, community_id, geom) VALUES
 ('C1-001', 'C1', ST_Multi(ST_MakeEnvelope(9.50, 47.10, 9.51, 47.12, 4326))),
 ('C1-002', 'C1', ST_Multi(ST_MakeEnvelope(9.51, 47.10, 9.52, 47.12, 4326)));
INSERT INTO buildings (building_id, community_id, kind, households, geom,
    cell_id) VALUES
 ('B1', 'C1', 'residential', 10,
  ST_SetSRID(ST_MakePoint(9.5185, 47.1185), 4326), 'C1-002');
INSERT INTO departments (department_id) VALUES ('civil'), ('urban')
 ON CONFLICT DO NOTHING;
INSERT INTO department_layers (department_id, dept_code, geom) VALUES
 ('civil', 'MZG-7',
  ST_Multi(ST_MakeEnvelope(9.5012, 47.1185, 9.5018, 47.1195, 4326)));
INSERT INTO crosswalk (department_id, dept_code, community_id, cell_id,
    share, dominant) VALUES ('civil', 'MZG-7', 'C1', 'C1-001', 1.0, true);
"""

# Metres to degrees near lat 47.1.
M_LON = 1 / 75900.0
M_LAT = 1 / 111200.0

_gridd = None
_cfg = None


def spot(row, col):
    """A map spot of its own: 0.001 deg (about 76 m east, 111 m north)
    apart, inside C1 for row 0..17, col 0..17."""
    return 9.5005 + 0.001 * col, 47.1005 + 0.001 * row


def daemon():
    global _gridd, _cfg
    if _gridd is None:
        harness.require_pg()
        _cfg = harness.write_config(harness.tmppath("feed.conf"))
        _gridd = harness.Gridd(_cfg, name="feed").start()
        harness.psql(FIXTURE, _cfg.dbname)
    return _gridd


def sql(q):
    daemon()
    return harness.psql(q, _cfg.dbname)


def sql1(q):
    daemon()
    return harness.psql1(q, _cfg.dbname)


def dept_client(dept="civil", **login):
    c = harness.Client(daemon().addr, timeout=20)
    rep = c.login("DEPARTMENT", dept, harness.DEPARTMENTS[dept][1], **login)
    return c, expect_body(rep, "login_reply")


def item(ext_id, category, lon=0.0, lat=0.0, **kw):
    return pb.IncidentIn(ext_id=ext_id, category=category, lon=lon, lat=lat,
                         **kw)


def push(c, items, timeout=30):
    rep = c.request("push_incidents", incidents=items, timeout=timeout)
    return list(expect_body(rep, "push_incidents_reply").results)


def outcome(name):
    return pb.PushResult.Outcome.Value(name)


def assert_outcome(r, name, error=None):
    got = pb.PushResult.Outcome.Name(r.outcome)
    assert got == name, "%s: expected %s, got %s (%s)" % (
        r.ext_id, name, got, r.message)
    if error is not None:
        assert r.error == pb.ErrorCode.Value(error), (
            "%s: error %s, want %s" % (r.ext_id,
                                       pb.ErrorCode.Name(r.error), error))


# ---- validation and classification ----------------------------------------

def test_validation_names_the_field_and_the_batch_goes_on():
    c, _ = dept_client()
    lon, lat = spot(0, 0)
    now = int(time.time() * 1000)
    res = push(c, [
        item("v-sev", "MZ01", lon, lat, severity=7),
        item("v-noloc", "MZ01"),
        item("v-future", "MZ01", lon, lat, occurred_at=now + 86400000),
        item("", "MZ01", lon, lat),
        item("v-lat", "MZ01", lon, 95.0),
        item("v-ok", "MZ01", lon, lat, severity=3, occurred_at=now),
    ])
    assert len(res) == 6
    for r, field in zip(res[:5], ["severity", "location", "occurred_at",
                                  "ext_id", "lon/lat"]):
        assert_outcome(r, "REJECTED", "BAD_REQUEST")
        assert r.message.startswith(field), (field, r.message)
    assert_outcome(res[5], "ACCEPTED")
    assert res[5].cell_id == "C1-001"
    n = sql1("SELECT count(*) FROM rejections WHERE reason = 'invalid' "
             "AND source_id = 'civil' AND ext_id LIKE 'v-%'")
    assert n == "4", n
    c.close()


def test_batch_over_max_batch_is_refused_whole():
    c, _ = dept_client()
    lon, lat = spot(0, 1)
    items = [item("big-%d" % i, "MZ01", lon, lat) for i in range(1001)]
    rep = c.request("push_incidents", incidents=items, timeout=30)
    err = expect_error(rep, "TOO_LARGE")
    assert "max_batch" in err.message
    assert sql1("SELECT count(*) FROM incident_sources "
                "WHERE ext_id LIKE 'big-%'") == "0"
    c.close()


def test_unknown_category_is_rejected_and_recorded():
    c, _ = dept_client()
    lon, lat = spot(0, 2)
    (r,) = push(c, [item("uc-1", "ZZ99", lon, lat)])
    assert_outcome(r, "REJECTED", "BAD_REQUEST")
    assert r.message == "unknown category ZZ99 for department civil", \
        r.message
    row = sql("SELECT category, reason FROM rejections "
              "WHERE source_id = 'civil' AND ext_id = 'uc-1'")
    assert row == [["ZZ99", "unknown_category"]], row
    c.close()


def test_negative_list_is_rejected_recorded_and_never_dispatched():
    c, _ = dept_client()
    lon, lat = spot(0, 3)
    (r,) = push(c, [item("neg-1", "MZ09", lon, lat)])
    assert_outcome(r, "REJECTED", "REJECTED_NEGATIVE_LIST")
    assert "negative list" in r.message
    assert "enterprise_safety_check" in r.message
    assert r.list == pb.NEGATIVE
    row = sql("SELECT category, task_type, reason FROM rejections "
              "WHERE source_id = 'civil' AND ext_id = 'neg-1'")
    assert row == [["MZ09", "enterprise_safety_check", "negative_list"]], row
    assert sql1("SELECT count(*) FROM incidents "
                "WHERE task_type = 'enterprise_safety_check'") == "0"
    c.close()


def test_outside_every_community():
    c, _ = dept_client()
    (r,) = push(c, [item("out-1", "MZ01", 8.0, 46.0)])
    assert_outcome(r, "REJECTED", "BAD_REQUEST")
    assert "outside every community" in r.message, r.message
    assert r.incident_id == 0
    assert sql1("SELECT reason FROM rejections WHERE ext_id = 'out-1'") \
        == "outside"
    c.close()


# ---- locating ---------------------------------------------------------------

def test_locate_point_code_and_building():
    c, _ = dept_client()
    lon, lat = spot(1, 13)          # east half: C1-002
    res = push(c, [
        item("loc-pt", "MZ02", lon, lat),
        item("loc-code", "MZ02", dept_grid_code="MZG-7"),
        item("loc-bldg", "MZ02", building_id="B1"),
        item("loc-nocode", "MZ02", dept_grid_code="NOPE"),
        item("loc-nobldg", "MZ02", building_id="B404"),
    ])
    assert_outcome(res[0], "ACCEPTED")
    assert res[0].cell_id == "C1-002"
    assert_outcome(res[1], "ACCEPTED")
    assert res[1].cell_id == "C1-001"
    assert_outcome(res[2], "ACCEPTED")
    assert res[2].cell_id == "C1-002"
    assert_outcome(res[3], "REJECTED", "BAD_REQUEST")
    assert "crosswalk" in res[3].message
    assert_outcome(res[4], "REJECTED", "BAD_REQUEST")
    assert "unknown building" in res[4].message
    rows = sql("SELECT located_by, cell_id FROM incidents WHERE "
               "incident_id IN (%d, %d, %d) ORDER BY incident_id"
               % (res[0].incident_id, res[1].incident_id,
                  res[2].incident_id))
    assert rows == [["point", "C1-002"], ["dept_code", "C1-001"],
                    ["building", "C1-002"]], rows
    c.close()


# ---- idempotency ------------------------------------------------------------

def test_duplicate_replay_returns_the_first_incident():
    c, _ = dept_client()
    lon, lat = spot(2, 0)
    (first,) = push(c, [item("dup-1", "MZ01", lon, lat)])
    assert_outcome(first, "ACCEPTED")
    before = sql1("SELECT count(*) FROM incidents")
    res = push(c, [item("dup-1", "MZ01", lon, lat),
                   item("dup-2", "MZ02", lon, lat),
                   item("dup-2", "MZ02", lon, lat)])
    assert_outcome(res[0], "DUPLICATE")
    assert res[0].incident_id == first.incident_id
    assert_outcome(res[1], "ACCEPTED")
    assert_outcome(res[2], "DUPLICATE")
    assert res[2].incident_id == res[1].incident_id
    after = sql1("SELECT count(*) FROM incidents")
    assert int(after) == int(before) + 1, (before, after)
    # Another connection, same department: still the first answer.
    c2, _ = dept_client()
    (again,) = push(c2, [item("dup-1", "MZ01", lon, lat)])
    assert_outcome(again, "DUPLICATE")
    assert again.incident_id == first.incident_id
    c.close()
    c2.close()


# ---- merging ------------------------------------------------------------------

def test_merge_across_two_departments():
    civil, _ = dept_client("civil")
    urban, _ = dept_client("urban")
    lon, lat = spot(3, 0)
    (a,) = push(civil, [item("mg-civil", "MZ01", lon, lat)])
    assert_outcome(a, "ACCEPTED")
    (b,) = push(urban, [item("mg-urban", "CG03", lon + 10 * M_LON, lat)])
    assert_outcome(b, "MERGED")
    assert b.incident_id == a.incident_id
    row = sql("SELECT departments, owner_department, funder_department "
              "FROM incidents WHERE incident_id = %d" % a.incident_id)
    assert row == [["{civil,urban}", "civil", "civil"]], row
    srcs = sql("SELECT source_id, ext_id, outcome FROM incident_sources "
               "WHERE incident_id = %d ORDER BY source_id" % a.incident_id)
    assert srcs == [["civil", "mg-civil", "accepted"],
                    ["urban", "mg-urban", "merged"]], srcs
    # The merged push replayed is a DUPLICATE of the merged answer.
    (b2,) = push(urban, [item("mg-urban", "CG03", lon + 10 * M_LON, lat)])
    assert_outcome(b2, "DUPLICATE")
    assert b2.incident_id == a.incident_id
    civil.close()
    urban.close()


def test_no_merge_beyond_radius_window_or_task_type():
    civil, _ = dept_client("civil")
    urban, _ = dept_client("urban")
    lon, lat = spot(4, 0)
    now = int(time.time() * 1000)
    (a,) = push(civil, [item("nm-a", "MZ01", lon, lat, occurred_at=now)])
    assert_outcome(a, "ACCEPTED")
    res = push(urban, [
        # 70 m away: beyond merge_radius_m = 50
        item("nm-far", "CG03", lon + 70 * M_LON, lat, occurred_at=now),
        # same place, two hours earlier: beyond merge_window_s = 3600
        item("nm-old", "CG03", lon, lat + 1 * M_LAT,
             occurred_at=now - 7200 * 1000),
        # same place and time, another task type
        item("nm-type", "CG02", lon, lat, occurred_at=now),
    ])
    for r in res:
        assert_outcome(r, "ACCEPTED")
        assert r.incident_id != a.incident_id
    civil.close()
    urban.close()


def test_items_of_one_batch_merge_with_each_other():
    c, _ = dept_client()
    lon, lat = spot(5, 0)
    res = push(c, [item("bm-1", "MZ01", lon, lat),
                   item("bm-2", "MZ01", lon + 20 * M_LON, lat),
                   item("bm-3", "MZ01", lon + 300 * M_LON, lat)])
    assert_outcome(res[0], "ACCEPTED")
    assert_outcome(res[1], "MERGED")
    assert res[1].incident_id == res[0].incident_id
    assert_outcome(res[2], "ACCEPTED")
    assert res[2].incident_id != res[0].incident_id
    c.close()


def test_a_push_of_two_task_types_goes_as_two_transactions():
    """Items of two task types can neither merge nor wait for each other's
    merge locks: a push's items go to the database as one transaction per
    task type (lane), side by side. The reply is still one, in order, sent
    once both have committed; items merge and repeat across the split as
    within one statement, and the push's refusal is recorded once."""
    c, _ = dept_client("civil")
    lon, lat = spot(12, 3)
    lanes0 = metric(_cfg.http_port, "gridd_push_lane_transactions_total")
    groups0 = metric(_cfg.http_port, "gridd_push_group_requests_count")
    res = push(c, [
        item("ln-1", "MZ01", lon, lat),                 # elderly visit
        item("ln-2", "MZ03", lon, lat),                 # neighbour dispute
        item("ln-3", "MZ01", lon + 10 * M_LON, lat),    # joins ln-1
        item("ln-2", "MZ01", lon, lat),                 # repeats ln-2
        item("ln-4", "MZ03", lon, lat + 10 * M_LAT),    # joins ln-2
        item("ln-5", "MZ09", lon, lat),                 # negative list
    ])
    assert [r.ext_id for r in res] == ["ln-1", "ln-2", "ln-3", "ln-2",
                                       "ln-4", "ln-5"], res
    assert_outcome(res[0], "ACCEPTED")
    assert_outcome(res[1], "ACCEPTED")
    assert res[0].incident_id != res[1].incident_id
    assert_outcome(res[2], "MERGED")
    assert res[2].incident_id == res[0].incident_id
    assert_outcome(res[3], "DUPLICATE")
    assert res[3].incident_id == res[1].incident_id
    assert_outcome(res[4], "MERGED")
    assert res[4].incident_id == res[1].incident_id
    assert_outcome(res[5], "REJECTED", "REJECTED_NEGATIVE_LIST")
    assert metric(_cfg.http_port, "gridd_push_group_requests_count") == \
        groups0 + 1
    assert metric(_cfg.http_port, "gridd_push_lane_transactions_total") == \
        lanes0 + 2
    assert sql1("SELECT count(*) FROM incident_sources WHERE source_id ="
                " 'civil' AND ext_id LIKE 'ln-%'") == "4"
    assert sql1("SELECT count(*) FROM rejections WHERE source_id ="
                " 'civil' AND ext_id = 'ln-5'") == "1"
    # Pushed again whole: every item answers as its first answer did.
    again = push(c, [item("ln-1", "MZ01", lon, lat),
                     item("ln-2", "MZ03", lon, lat),
                     item("ln-4", "MZ03", lon, lat + 10 * M_LAT)])
    for r, first in zip(again, (res[0], res[1], res[4])):
        assert_outcome(r, "DUPLICATE")
        assert r.incident_id == first.incident_id
    c.close()


def test_a_lane_that_fails_leaves_the_other_lanes_answers():
    """One lane of a push fails while the other commits. A conflict
    (serialisation failure) is retried with the parts still to do, so the
    committed items answer as they were stored, not DUPLICATE; a statement
    the server refuses for its data fails the push, and the message says
    that part of it was stored. A lane whose connection dies may have
    committed: its push is answered UNAVAILABLE, and from then on none of
    its parts goes again (here the other lane's conflict comes after the
    death, and is not retried). A push of one task type whose transaction
    meets a conflict while nothing else is in flight goes again and is
    answered as it was stored."""
    c, _ = dept_client("civil")
    lon, lat = spot(13, 6)
    sql("CREATE SEQUENCE lane_fail_seq")
    try:
        with sources_trigger(
                "lane_fail",
                "IF NEW.ext_id LIKE 'lf-flaky-%' AND"
                " nextval('lane_fail_seq') = 1 THEN"
                " RAISE EXCEPTION 'lane test' USING ERRCODE = '40001';"
                " END IF;"
                " IF NEW.ext_id LIKE 'lf-once-%' AND"
                " nextval('lane_fail_seq') = 4 THEN"
                " RAISE EXCEPTION 'lane test' USING ERRCODE = '40001';"
                " END IF;"
                " IF NEW.ext_id LIKE 'lf-bad-%' THEN"
                " RAISE EXCEPTION 'lane test: bad item'; END IF;"
                " IF NEW.ext_id LIKE 'lf-conflict-%' THEN"
                " PERFORM pg_sleep(0.5);"
                " RAISE EXCEPTION 'lane test' USING ERRCODE = '40001';"
                " END IF; " + die_if("lf-die-%")):
            retries0 = metric(_cfg.http_port,
                              "gridd_push_group_retries_total")
            res = push(c, [item("lf-flaky-1", "MZ01", lon, lat),
                           item("lf-ok-1", "MZ03", lon, lat)])
            assert_outcome(res[0], "ACCEPTED")
            assert_outcome(res[1], "ACCEPTED")
            assert metric(_cfg.http_port,
                          "gridd_push_group_retries_total") == retries0 + 1
            assert sql1("SELECT nextval('lane_fail_seq')") == "3", \
                "the flaky lane did not go again"
            # Alone in flight: the transaction that failed is over before
            # its part goes again, and the push waits for the second go.
            retries0 = metric(_cfg.http_port,
                              "gridd_push_group_retries_total")
            once = push(c, [item("lf-once-1", "MZ01", lon - 0.002, lat)])
            assert_outcome(once[0], "ACCEPTED")
            assert once[0].incident_id > 0, once
            assert metric(_cfg.http_port,
                          "gridd_push_group_retries_total") == retries0 + 1
            assert sql1("SELECT nextval('lane_fail_seq')") == "6", \
                "the push of one task type did not go again"
            rep = c.request("push_incidents", incidents=[
                item("lf-bad-1", "MZ01", lon + 0.002, lat),
                item("lf-ok-2", "MZ03", lon + 0.002, lat)], timeout=30)
            err = expect_error(rep, "INTERNAL")
            assert "part of the batch was stored" in err.message, err
            retries0 = metric(_cfg.http_port,
                              "gridd_push_group_retries_total")
            rep = c.request("push_incidents", incidents=[
                item("lf-conflict-1", "MZ01", lon + 0.004, lat),
                item("lf-die-1", "MZ03", lon + 0.004, lat)], timeout=30)
            expect_error(rep, "UNAVAILABLE")
            assert metric(_cfg.http_port,
                          "gridd_push_group_retries_total") == retries0
    finally:
        sql("DROP SEQUENCE lane_fail_seq")
    assert sql1("SELECT count(*) FROM incident_sources WHERE ext_id IN"
                " ('lf-flaky-1', 'lf-ok-1', 'lf-ok-2', 'lf-once-1')") == "4"
    assert sql1("SELECT count(*) FROM incident_sources WHERE ext_id LIKE"
                " 'lf-conflict-%' OR ext_id LIKE 'lf-die-%'") == "0"
    # Pushed again: what was stored answers DUPLICATE with its incident.
    again = push(c, [item("lf-bad-1", "MZ01", lon + 0.002, lat),
                     item("lf-ok-2", "MZ03", lon + 0.002, lat)])
    assert_outcome(again[0], "ACCEPTED")
    assert_outcome(again[1], "DUPLICATE")
    c.close()


# ---- triage and events ----------------------------------------------------------

def first_event(incident_id, dept="civil"):
    rows = sql("SELECT status, note FROM events WHERE incident_id = %d "
               "AND department_id = '%s' ORDER BY dept_seq LIMIT 1"
               % (incident_id, dept))
    return rows[0] if rows else None


def test_triage_routes():
    civil, _ = dept_client("civil")
    urban, _ = dept_client("urban")
    lon, lat = spot(6, 0)
    (w,) = push(civil, [item("tr-worker", "MZ01", lon, lat)])
    (d,) = push(urban, [item("tr-dept", "CG01", lon + 0.002, lat)])
    (p,) = push(civil, [item("tr-private", "MZ03", lon + 0.004, lat)])
    for r in (w, d, p):
        assert_outcome(r, "ACCEPTED")
    assert w.list == pb.ASSIST and w.matter == pb.SMALL
    assert d.list == pb.ASSIST and d.matter == pb.BIG
    assert p.list == pb.AUTONOMY and p.matter == pb.PRIVATE
    assert first_event(w.incident_id) == ["new", ""]
    row = sql("SELECT route, deadline IS NOT NULL, owner_department, "
              "funder_department FROM incidents WHERE incident_id = %d"
              % w.incident_id)
    assert row == [["worker", "t", "civil", "civil"]], row
    assert sql1("SELECT count(*) FROM timers WHERE kind = 'sla' AND "
                "ref_id = %d" % w.incident_id) == "1"
    ev = first_event(d.incident_id, "urban")
    assert ev[0] == "referred" and "department" in ev[1], ev
    assert sql1("SELECT count(*) FROM timers WHERE kind = 'sla' AND "
                "ref_id = %d" % d.incident_id) == "1"
    ev = first_event(p.incident_id)
    assert ev == ["referred", harness.TASK_TYPES["neighbour_dispute"]
                  ["guidance"]], ev
    assert sql1("SELECT deadline IS NULL FROM incidents WHERE "
                "incident_id = %d" % p.incident_id) == "t"
    # The big matter stays with its department, which closes it when done;
    # it cannot be sent to dispatch, and only its owner verifies it.
    expect_error(civil.request("verify_incident", incident_id=d.incident_id,
                               accept=True), "FORBIDDEN")
    expect_error(urban.request("verify_incident", incident_id=d.incident_id,
                               accept=False), "CONFLICT")
    expect_body(urban.request("verify_incident", incident_id=d.incident_id,
                              accept=True, note="repaired"), "ok")
    assert sql1("SELECT status || ' ' || (closed_at IS NOT NULL) FROM "
                "incidents WHERE incident_id = %d" % d.incident_id) == \
        "closed true", "the department's big matter was not closed"
    civil.close()
    urban.close()


def test_worker_report_follows_the_same_path():
    admin = harness.Client(daemon().addr)
    harness.login_admin(admin)
    rep = admin.request("upsert_worker", worker_id="w-feed", name="Patrol",
                        password="patrol-password-1", community_id="C1",
                        cell_ids=["C1-001"])
    expect_body(rep, "ok")
    w = harness.Client(daemon().addr)
    expect_body(w.login("WORKER", "w-feed", "patrol-password-1"),
                "login_reply")
    lon, lat = spot(7, 0)
    rep = w.request("report_incident", pb.ReportIncident(
        incident=item("patrol-1", "garbage_sorting", lon, lat)))
    (r,) = expect_body(rep, "push_incidents_reply").results
    assert_outcome(r, "ACCEPTED")
    assert r.task_type == "garbage_sorting"
    row = sql("SELECT source_kind, source_id FROM incident_sources "
              "WHERE incident_id = %d" % r.incident_id)
    assert row == [["worker", "w-feed"]], row
    rep = w.request("report_incident", pb.ReportIncident(
        incident=item("patrol-1", "garbage_sorting", lon, lat)))
    (r2,) = expect_body(rep, "push_incidents_reply").results
    assert_outcome(r2, "DUPLICATE")
    assert r2.incident_id == r.incident_id
    # A department's crosswalk code is not a task type.
    rep = w.request("report_incident", pb.ReportIncident(
        incident=item("patrol-2", "MZ01", lon, lat)))
    (r3,) = expect_body(rep, "push_incidents_reply").results
    assert_outcome(r3, "REJECTED", "BAD_REQUEST")
    # Departments cannot report as workers.
    d, _ = dept_client()
    expect_error(d.request("report_incident", pb.ReportIncident(
        incident=item("x", "garbage_sorting", lon, lat))), "FORBIDDEN")
    for x in (admin, w, d):
        x.close()


def test_worker_report_of_a_big_matter_goes_to_its_department():
    admin = harness.Client(daemon().addr)
    harness.login_admin(admin)
    expect_body(admin.request("upsert_worker", worker_id="w-big",
                              name="Patrol", password="patrol-password-2",
                              community_id="C1", cell_ids=["C1-001"]), "ok")
    w = harness.Client(daemon().addr)
    expect_body(w.login("WORKER", "w-big", "patrol-password-2"),
                "login_reply")
    urban, login = dept_client("urban")
    expect_body(urban.request("subscribe", since_seq=login.last_seq), "ok")
    lon, lat = spot(7, 4)
    # road_damage names urban: referred to it, owned and funded by it
    # (assist work), and urban hears of it.
    rep = w.request("report_incident", pb.ReportIncident(
        incident=item("patrol-big-1", "road_damage", lon, lat)))
    (r,) = expect_body(rep, "push_incidents_reply").results
    assert_outcome(r, "ACCEPTED")
    row = sql("SELECT status, route, owner_department, funder_department, "
              "array_to_string(departments, ',') FROM incidents "
              "WHERE incident_id = %d" % r.incident_id)
    assert row == [["referred", "department", "urban", "urban", "urban"]], row
    got = collect_updates(urban, [""])
    mine = [u for u in got if u.incident_id == r.incident_id]
    assert mine and mine[0].status == \
        pb.IncidentUpdate.Status.Value("REFERRED"), got
    assert_gap_free(got, login.last_seq)
    # Urban closes it once dealt with, as with its own referrals.
    expect_body(urban.request("verify_incident", incident_id=r.incident_id,
                              accept=True, note="repaired"), "ok")
    assert sql1("SELECT status FROM incidents WHERE incident_id = %d"
                % r.incident_id) == "closed"
    # flood_risk names no department: nowhere to refer it.
    rep = w.request("report_incident", pb.ReportIncident(
        incident=item("patrol-big-2", "flood_risk", lon, lat)))
    (r2,) = expect_body(rep, "push_incidents_reply").results
    assert_outcome(r2, "REJECTED", "BAD_REQUEST")
    assert "[task_type.flood_risk]" in r2.message, r2.message
    assert sql("SELECT reason, community_id FROM rejections WHERE "
               "source_kind = 'worker' AND ext_id = 'patrol-big-2'") == \
        [["invalid", "C1"]]
    for x in (admin, w, urban):
        x.close()


# ---- subscriptions --------------------------------------------------------------

def collect_updates(c, want, timeout=10):
    """Updates until every ext_id in want has arrived. Dispatch may add
    its own events (escalations) for other incidents in between, so the
    others are kept too: the caller checks the sequence over all of them."""
    out = []
    missing = set(want)
    deadline = time.monotonic() + timeout
    while missing:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("still missing updates for %s after %s"
                                 % (sorted(missing), [
                                     (u.seq, u.ext_id) for u in out]))
        env = c.recv_push(timeout=left)
        if harness.body(env) == "incident_update":
            out.append(env.incident_update)
            missing.discard(env.incident_update.ext_id)
    return out


def assert_gap_free(updates, after):
    seqs = [u.seq for u in updates]
    assert seqs == list(range(after + 1, after + 1 + len(seqs))), seqs


def test_subscription_replay_across_reconnects_misses_nothing():
    # urban's own sequence: read where it stands, then push and watch.
    # road_damage (CG01) goes back to the department: no dispatch events.
    c, rep = dept_client("urban")
    start = rep.last_seq
    assert str(start) == (sql1("SELECT coalesce(max(last_seq), 0) FROM "
                               "department_seq WHERE department_id = "
                               "'urban'") or "0")
    expect_body(c.request("subscribe", since_seq=start), "ok")
    lon, lat = spot(8, 0)
    items = [item("sub-%d" % i, "CG01", lon + 0.001 * i, lat)
             for i in range(6)]
    res = push(c, items[:3])
    got = collect_updates(c, ["sub-0", "sub-1", "sub-2"])
    assert_gap_free(got, start)
    mine = [u for u in got if u.ext_id.startswith("sub-")]
    assert [u.ext_id for u in mine] == ["sub-0", "sub-1", "sub-2"]
    assert [u.incident_id for u in mine] == [r.incident_id for r in res]
    referred = pb.IncidentUpdate.Status.Value("REFERRED")
    assert all(u.status == referred for u in mine), mine
    last = got[-1].seq
    c.close()

    # Pushed while nobody listens.
    other, _ = dept_client("urban")
    push(other, items[3:])
    other.close()

    # Reconnect with Login.since_seq: everything after it, in order, the
    # three missed among them, nothing seen before repeated.
    c2, rep2 = dept_client("urban", since_seq=last)
    assert rep2.last_seq >= last + 3
    got2 = collect_updates(c2, ["sub-3", "sub-4", "sub-5"])
    assert_gap_free(got2, last)
    assert [u.ext_id for u in got2 if u.ext_id.startswith("sub-")] == \
        ["sub-3", "sub-4", "sub-5"]
    # Live after the replay, still gap-free.
    lon2, lat2 = spot(9, 0)
    push(c2, [item("sub-live", "CG01", lon2, lat2)])
    live = collect_updates(c2, ["sub-live"])
    assert_gap_free(live, got2[-1].seq)
    # A whole replay from 0 is gap-free and strictly increasing.
    c3, rep3 = dept_client("urban")
    expect_body(c3.request("subscribe", since_seq=0), "ok")
    everything = []
    while len(everything) < rep3.last_seq:
        env = c3.recv_push(timeout=10)
        everything.append(env.incident_update)
    assert_gap_free(everything, 0)
    n = sql1("SELECT count(*) FROM events WHERE department_id = 'urban' "
             "AND dept_seq <= %d" % rep3.last_seq)
    assert int(n) == rep3.last_seq
    for x in (c2, c3):
        x.close()


def test_subscriber_hears_a_merge_into_anothers_incident():
    civil, _ = dept_client("civil")
    urban, rep = dept_client("urban")
    expect_body(urban.request("subscribe", since_seq=rep.last_seq), "ok")
    lon, lat = spot(10, 0)
    (a,) = push(civil, [item("hear-civil", "MZ01", lon, lat)])
    (b,) = push(urban, [item("hear-urban", "CG03", lon, lat)])
    assert_outcome(b, "MERGED")
    got = collect_updates(urban, ["hear-urban"])
    assert_gap_free(got, rep.last_seq)
    u = [x for x in got if x.ext_id == "hear-urban"][0]
    assert u.incident_id == a.incident_id
    assert "merged" in u.note
    civil.close()
    urban.close()


# ---- big batches ------------------------------------------------------------------

def test_batch_of_1000_gets_one_reply_in_order():
    c, _ = dept_client()
    items = []
    # North of every spot() a test uses (rows 0..11) and south of the
    # pipelined test's row (lat 47.1193) and the MZG-7 layer, more than
    # the merge radius from each, so that what those tests assert cannot
    # depend on the order they run in.
    for i in range(1000):
        lon = 9.5002 + (i % 50) * 0.0003
        lat = 47.1122 + (i // 50) * 0.0003
        items.append(item("k-%04d" % i, ("MZ01", "MZ02")[i % 2], lon, lat))
    t0 = time.monotonic()
    res = push(c, items, timeout=60)
    ms = (time.monotonic() - t0) * 1000
    assert len(res) == 1000
    assert [r.ext_id for r in res] == ["k-%04d" % i for i in range(1000)]
    for r in res:
        assert r.outcome in (outcome("ACCEPTED"), outcome("MERGED")), r
        assert r.incident_id > 0
    n = sql1("SELECT count(*) FROM incident_sources WHERE source_id = "
             "'civil' AND ext_id LIKE 'k-%'")
    assert n == "1000", n
    print("   1000-item batch answered in %.0f ms" % ms)
    c.close()


def test_pipelined_repeats_never_race():
    """Requests pipelined on one connection, each repeating the previous
    one's ext_id: with several ingest transactions in flight, a repeat
    must wait for the first to commit and read DUPLICATE with its id,
    never run beside it (a unique-key race, retried request by request)."""
    c, _ = dept_client("civil")
    retries0 = metric(_cfg.http_port, "gridd_push_group_retries_total")
    sent = []
    for k in range(40):
        lon, lat = 9.5003 + 0.0004 * k, 47.1193
        items = [item("pipe-%d" % k, "MZ02", lon, lat),
                 item("pipe-%d" % (k + 1), "MZ02", lon, lat + 0.0002)]
        env = c.envelope("push_incidents", incidents=items)
        c.send(env)
        sent.append(env.request_id)
    first = {}
    for rid in sent:
        res = expect_body(c.wait_reply(rid, timeout=60),
                          "push_incidents_reply").results
        for r in res:
            if r.ext_id in first:
                assert_outcome(r, "DUPLICATE")
                assert r.incident_id == first[r.ext_id], r
            else:
                assert r.outcome in (outcome("ACCEPTED"),
                                     outcome("MERGED")), r
                first[r.ext_id] = r.incident_id
    assert len(first) == 41, len(first)
    n = sql1("SELECT count(*) FROM incident_sources WHERE source_id = "
             "'civil' AND ext_id LIKE 'pipe-%'")
    assert n == "41", n
    assert metric(_cfg.http_port, "gridd_push_group_retries_total") == \
        retries0, "a repeat ran beside its first push"
    # Distinct keys, pipelined: still applied in the order sent (their
    # events are numbered in that order).
    sent = []
    for k in range(30):
        # A task type nobody else pushes here, 90 m apart: no merges.
        env = c.envelope("push_incidents", incidents=[
            item("ord-%02d" % k, "MZ03", 9.5003 + 0.0012 * (k % 15),
                 47.1188 + 0.0008 * (k // 15))])
        c.send(env)
        sent.append(env.request_id)
    for rid in sent:
        expect_body(c.wait_reply(rid, timeout=60), "push_incidents_reply")
    rows = sql("SELECT ext_id FROM events WHERE department_id = 'civil' "
               "AND ext_id LIKE 'ord-%' AND status = 'referred' "
               "ORDER BY dept_seq")
    assert [r[0] for r in rows] == ["ord-%02d" % k for k in range(30)], rows
    c.close()


class held_merge_tiles:
    """The merge locks of task type tt around (lon, lat), as
    gridd_feed_push takes them for an item there (merge_radius_m 50), held
    by another session for the with-block, as another process's ingest
    transaction would hold them."""

    def __init__(self, tt, lon, lat):
        dlat = 50 / 110540.0
        dlon = 50 / (111320.0 * math.cos(math.radians(lat)))
        self.app = "tiles%d" % os.getpid()
        self.proc = subprocess.Popen(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
             harness.conninfo(_cfg.dbname) + " application_name=" + self.app,
             "-c", "SELECT count(pg_advisory_lock(hashtext('gridd_merge'),"
             " hashtext('%s/' || gx || '/' || gy))) FROM"
             " generate_series(%d, %d) gx, generate_series(%d, %d) gy;"
             " SELECT pg_sleep(60)" % (
                 tt, math.floor((lon - dlon) / 0.01),
                 math.floor((lon + dlon) / 0.01),
                 math.floor((lat - dlat) / 0.01),
                 math.floor((lat + dlat) / 0.01))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self):
        try:
            wait_for(lambda: sql1(
                "SELECT count(*) FROM pg_stat_activity WHERE"
                " application_name = '%s' AND wait_event = 'PgSleep'"
                % self.app) == "1", "the tiles held")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = '%s'" % self.app)
        self.proc.communicate(timeout=30)


class sources_trigger:
    """A BEFORE INSERT trigger on incident_sources for the with-block: body
    is PL/pgSQL run for each source row (NEW) a push stores."""

    def __init__(self, name, body):
        self.name = name
        sql("CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN %s RETURN NEW; END $$;"
            " CREATE TRIGGER %s BEFORE INSERT ON incident_sources"
            " FOR EACH ROW EXECUTE FUNCTION %s();" % (name, body, name, name))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        sql("DROP TRIGGER %s ON incident_sources; DROP FUNCTION %s();"
            % (self.name, self.name))


def die_if(pattern):
    """Trigger body: the backend storing a source row whose ext_id is LIKE
    pattern ends its own connection (as a crash or a network cut would)."""
    return ("IF NEW.ext_id LIKE '%s' THEN"
            " PERFORM pg_terminate_backend(pg_backend_pid()); END IF;"
            % pattern)


def wait_for(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def stored(r):
    """A new incident, or one merged into an open incident of its type."""
    return r.outcome in (outcome("ACCEPTED"), outcome("MERGED"))


def replied(client, env):
    """The results of the push env that client sent earlier."""
    return list(expect_body(client.wait_reply(env.request_id),
                            "push_incidents_reply").results)


def merge_lock_waiters():
    """Sessions of this test's database waiting for a merge lock."""
    return int(sql1("SELECT count(*) FROM pg_locks WHERE locktype ="
                    " 'advisory' AND NOT granted AND database = (SELECT oid"
                    " FROM pg_database WHERE datname = current_database())"
                    " AND classid = hashtext('gridd_merge')::oid"))


def test_transactions_side_by_side_only_when_merges_cannot_meet():
    """Two ingest transactions may be in flight (the harness's config), but
    a push whose merge tiles meet those of a transaction in flight waits
    for the next one instead of waiting for its locks in the database; one
    that cannot meet them runs beside it."""
    civil, _ = dept_client("civil")
    urban, _ = dept_client("urban")
    admin = harness.Client(daemon().addr)
    harness.login_admin(admin)
    expect_body(admin.request(
        "upsert_worker", worker_id="w-sbs", name="Side by side",
        password="side-by-side-pw-1", community_id="C1",
        cell_ids=["C1-002"]), "ok")
    worker = harness.Client(daemon().addr)
    expect_body(worker.login("WORKER", "w-sbs", "side-by-side-pw-1"),
                "login_reply")
    # South of the 1,000-item batch's grid of elderly visits.
    x, y = spot(3, 15)
    with held_merge_tiles("elderly_visit", x, y):
        # Civil's push waits for the tiles in the database, in flight.
        first = civil.envelope("push_incidents", incidents=[
            item("sbs-civil", "MZ01", x, y)])
        civil.send(first)
        wait_for(lambda: merge_lock_waiters() == 1, "civil's push to wait")
        # Another type at the same spot cannot merge with it: it runs
        # beside the stalled push and is answered while that one waits.
        other = push(urban, [item("sbs-urban-other", "CG01", x, y)],
                     timeout=10)
        assert stored(other[0]), other
        # So does one located by building (the daemon does not know its
        # point: any tile of its type, but of its type only).
        bldg = push(urban, [item("sbs-urban-bldg", "CG01",
                                 building_id="B1")], timeout=10)
        assert stored(bldg[0]), bldg
        assert merge_lock_waiters() == 1
        # The same type 5 m away could merge with it: held back, not
        # started beside it (it would only wait for the same locks there).
        waits = metric(_cfg.http_port, "gridd_push_tile_waits_total")
        near = urban.envelope("push_incidents", incidents=[
            item("sbs-urban-near", "CG03", x + 5 * M_LON, y)])
        urban.send(near)
        wait_for(lambda: metric(_cfg.http_port,
                                "gridd_push_tile_waits_total") == waits + 1,
                 "the push held back")
        assert merge_lock_waiters() == 1, "a push that can merge ran beside"
        # A worker's report of that type by building, far from the held
        # tiles: the daemon does not know the building's point, so it
        # holds the report back too (the database would not have).
        report = worker.envelope("report_incident", pb.ReportIncident(
            incident=item("sbs-worker-bldg", "elderly_visit",
                          building_id="B1")))
        worker.send(report)
        wait_for(lambda: metric(_cfg.http_port,
                                "gridd_push_tile_waits_total") == waits + 2,
                 "the report held back")
        assert merge_lock_waiters() == 1
    r1 = replied(civil, first)
    r2 = replied(urban, near)
    r3 = replied(worker, report)
    # The second one, after the first, merges into its incident.
    assert_outcome(r1[0], "ACCEPTED")
    assert_outcome(r2[0], "MERGED")
    assert r2[0].incident_id == r1[0].incident_id
    assert stored(r3[0]), r3
    for c in (civil, urban, admin, worker):
        c.close()


def test_a_stalled_task_type_does_not_hold_back_the_others():
    """The queue holds a push's parts (one per task type), not the push: a
    part goes as soon as nothing in flight could make it wait. One
    department pushes an elderly visit and a neighbour dispute; the visit's
    transaction waits in the database for its merge tiles. The
    department's next pushes of disputes (the same spot, a repeat of the
    first push's dispute) go meanwhile and are answered; the next visit
    there waits behind the first, in the department's order. The first
    push is answered whole once its visit is stored."""
    civil, _ = dept_client("civil")
    x, y = spot(4, 15)
    with held_merge_tiles("elderly_visit", x, y):
        first = civil.envelope("push_incidents", incidents=[
            item("stall-visit", "MZ01", x, y),
            item("stall-dispute", "MZ03", x, y)])
        civil.send(first)
        wait_for(lambda: merge_lock_waiters() == 1, "the visit to wait")
        wait_for(lambda: sql1(
            "SELECT count(*) FROM incident_sources WHERE source_id ="
            " 'civil' AND ext_id = 'stall-dispute'") == "1",
            "the first push's dispute to be stored")
        # Disputes: answered while the visit waits; the repeat reads the
        # stored dispute.
        later = push(civil, [item("stall-dispute-2", "MZ03", x,
                                  y + 10 * M_LAT),
                             item("stall-dispute", "MZ03", x, y)],
                     timeout=10)
        assert_outcome(later[0], "MERGED")
        assert_outcome(later[1], "DUPLICATE")
        # A visit of the same department waits for the first one.
        visit = civil.envelope("push_incidents", incidents=[
            item("stall-visit-2", "MZ01", x + 5 * M_LON, y)])
        civil.send(visit)
        time.sleep(0.5)
        assert merge_lock_waiters() == 1, "the second visit ran beside"
        assert sql1("SELECT count(*) FROM incident_sources WHERE ext_id"
                    " LIKE 'stall-visit%'") == "0"
    r1 = replied(civil, first)
    r2 = replied(civil, visit)
    assert_outcome(r1[0], "ACCEPTED")
    assert_outcome(r1[1], "ACCEPTED")
    assert later[0].incident_id == r1[1].incident_id
    assert later[1].incident_id == r1[1].incident_id
    # After the first visit, and merged into it.
    assert_outcome(r2[0], "MERGED")
    assert r2[0].incident_id == r1[0].incident_id
    civil.close()


def test_beside_a_transaction_in_flight_a_small_push_waits_for_more():
    """group_commit_min_items: while an ingest transaction is in flight, a
    transaction starts beside it only once that many items are queued, or
    once the oldest has waited group_commit_delay_ms, so that a steady
    stream goes in fewer, larger transactions. With nothing in flight a
    push goes at once, and so does one that brings enough items."""
    daemon()
    cfg = harness.write_config(harness.tmppath("feed-min.conf"),
                               dbname=_cfg.dbname,
                               dispatch__group_commit_min_items="40",
                               dispatch__group_commit_delay_ms="1000")
    g = harness.Gridd(cfg, name="feed-min").start()
    civil = urban = None
    try:
        civil = harness.Client(g.addr, timeout=20)
        expect_body(civil.login("DEPARTMENT", "civil",
                                harness.DEPARTMENTS["civil"][1]),
                    "login_reply")
        urban = harness.Client(g.addr, timeout=20)
        expect_body(urban.login("DEPARTMENT", "urban",
                                harness.DEPARTMENTS["urban"][1]),
                    "login_reply")
        x, y = spot(6, 15)
        # Nothing in flight: no wait.
        quiet = push(urban, [item("min-quiet", "CG01", *spot(8, 15))])
        assert stored(quiet[0]), quiet
        assert metric(cfg.http_port, "gridd_push_min_waits_total") == 0, \
            "a push waited with none in flight"
        with held_merge_tiles("elderly_visit", x, y):
            first = civil.envelope("push_incidents", incidents=[
                item("min-first", "MZ01", x, y)])
            civil.send(first)
            wait_for(lambda: merge_lock_waiters() == 1, "a push in flight")
            waits = metric(cfg.http_port, "gridd_push_min_waits_total")
            # One item beside it: it waits out the delay, then goes
            # (the tiles are still held: it did not wait for the first).
            t0 = time.monotonic()
            small = push(urban, [item("min-small", "CG01", x, y)],
                         timeout=15)
            took = time.monotonic() - t0
            assert stored(small[0]), small
            assert took >= 0.95, "no wait beside a transaction: %.3f s" % took
            assert merge_lock_waiters() == 1
            after = metric(cfg.http_port, "gridd_push_min_waits_total")
            assert after > waits
            # Forty items: enough, at once.
            big = push(urban, [item("min-big-%02d" % k, "CG02",
                                    *spot(10 + k // 10, k % 10))
                               for k in range(40)], timeout=15)
            assert all(stored(r) for r in big), big
            assert metric(cfg.http_port,
                          "gridd_push_min_waits_total") == after, \
                "enough items waited"
            assert merge_lock_waiters() == 1
            # A reload that shortens the delay ends a wait at once, not
            # when the timer set for the old delay fires.
            alone = urban.envelope("push_incidents", incidents=[
                item("min-reload", "CG01", x, y + 20 * M_LAT)])
            t0 = time.monotonic()
            urban.send(alone)
            wait_for(lambda: metric(cfg.http_port,
                                    "gridd_push_min_waits_total") > after,
                     "the push to wait")
            cfg.set("dispatch", "group_commit_delay_ms", "1")
            cfg.write()
            g.reload()
            r = replied(urban, alone)
            took = time.monotonic() - t0
            assert stored(r[0]), r
            assert took < 0.95, "the old delay held: %.3f s" % took
            assert merge_lock_waiters() == 1
        assert_outcome(replied(civil, first)[0], "ACCEPTED")
    finally:
        for c in (civil, urban):
            if c is not None:
                c.close()
        g.stop()


def test_a_push_that_may_have_committed_sends_no_more_of_its_parts():
    """A push whose part's connection died may have committed: it fails
    UNAVAILABLE whatever its other parts would meet, so a part of it still
    waiting in the queue is never sent. Here the dispute waits behind the
    department's earlier dispute, itself waiting in the database for merge
    tiles another session holds, while the visit's transaction dies."""
    civil, _ = dept_client("civil")
    x, y = spot(5, 15)
    with sources_trigger("doom_die", die_if("doom-die-%")):
        with held_merge_tiles("neighbour_dispute", x, y):
            first = civil.envelope("push_incidents", incidents=[
                item("doom-first", "MZ03", x, y)])
            civil.send(first)
            wait_for(lambda: merge_lock_waiters() == 1,
                     "the first dispute to wait")
            rep = civil.request("push_incidents", incidents=[
                item("doom-die-1", "MZ01", x, y),
                item("doom-held-1", "MZ03", x, y)], timeout=10)
            expect_error(rep, "UNAVAILABLE")
            assert merge_lock_waiters() == 1
        r1 = replied(civil, first)
        assert_outcome(r1[0], "ACCEPTED")
    assert sql1("SELECT count(*) FROM incident_sources WHERE ext_id IN"
                " ('doom-die-1', 'doom-held-1')") == "0"
    # Pushed again: both go through.
    again = push(civil, [item("doom-die-1", "MZ01", x, y),
                         item("doom-held-1", "MZ03", x, y)])
    assert stored(again[0]) and stored(again[1]), again
    civil.close()


def test_throughput_with_concurrent_pushers():
    """Not a benchmark (gridbench is): a rough figure for the README."""
    conns = [dept_client(d)[0] for d in ("civil", "urban", "civil",
                                         "urban")]
    cats = {"civil": "MZ02", "urban": "CG02"}
    batches, size = 12, 500
    t0 = time.monotonic()
    total = 0
    for b in range(batches):
        reqs = []
        for k, c in enumerate(conns):
            dept = ("civil", "urban")[k % 2]
            items = []
            for i in range(size):
                n = (b * len(conns) + k) * size + i
                items.append(item("tp-%d-%d" % (k, n), cats[dept],
                                  9.5001 + (n % 199) * 0.0001,
                                  47.1001 + (n // 199 % 199) * 0.0001))
            env = c.envelope("push_incidents", incidents=items)
            c.send(env)
            reqs.append((c, env.request_id))
        for c, rid in reqs:
            rep = c.wait_reply(rid, timeout=60)
            total += len(expect_body(rep, "push_incidents_reply").results)
    dt = time.monotonic() - t0
    print("   %d incidents acknowledged in %.2f s: %.0f/s with %d "
          "connections, batches of %d" % (total, dt, total / dt,
                                          len(conns), size))
    assert total == batches * len(conns) * size
    for c in conns:
        c.close()


# ---- complaints -------------------------------------------------------------------

def test_complaints_file_list_resolve_and_roles():
    admin = harness.Client(daemon().addr)
    harness.login_admin(admin)
    expect_body(admin.request("upsert_worker", worker_id="w-cmp",
                              name="Complainer",
                              password="complain-password-1",
                              community_id="C1", cell_ids=["C1-002"]), "ok")
    civil, _ = dept_client()
    lon, lat = spot(11, 0)
    (r,) = push(civil, [item("cmp-1", "MZ01", lon, lat)])
    w = harness.Client(daemon().addr)
    expect_body(w.login("WORKER", "w-cmp", "complain-password-1"),
                "login_reply")
    # A worker complains about its own assignments (test_complaints.py):
    # this one had the incident offered and declined it.
    sql("INSERT INTO assignments (incident_id, worker_id, community_id,"
        " state, reason, expires_at) VALUES (%d, 'w-cmp', 'C1', 'declined',"
        " 'primary_cell', now())" % r.incident_id)
    expect_body(w.request("file_complaint", incident_id=r.incident_id,
                          reason="unfunded", note="no budget came with it"),
                "ok")
    expect_error(w.request("file_complaint", incident_id=r.incident_id,
                           reason="too_much"), "BAD_REQUEST")
    expect_error(w.request("file_complaint", incident_id=99999999,
                           reason="other"), "NOT_FOUND")
    # Wrong roles.
    expect_error(civil.request("file_complaint", incident_id=r.incident_id,
                               reason="other"), "FORBIDDEN")
    expect_error(w.request("list_complaints"), "FORBIDDEN")
    expect_error(w.request("resolve_complaint", complaint_id=1,
                           resolution="x"), "FORBIDDEN")
    # An admin files on behalf of a community.
    expect_body(admin.request("file_complaint", community_id="C1",
                              reason="negative_list",
                              note="on behalf of C1"), "ok")
    lst = expect_body(admin.request("list_complaints", open_only=True,
                                    department_id="civil"),
                      "complaint_list").complaints
    mine = [x for x in lst if x.incident_id == r.incident_id]
    assert len(mine) == 1, lst
    cmp = mine[0]
    assert cmp.reason == "unfunded" and cmp.complainant == "w-cmp"
    assert list(cmp.departments) == ["civil"] and not cmp.resolved
    expect_body(admin.request("resolve_complaint",
                              complaint_id=cmp.complaint_id,
                              resolution="funds transferred"), "ok")
    expect_error(admin.request("resolve_complaint",
                               complaint_id=cmp.complaint_id,
                               resolution="again"), "CONFLICT")
    expect_error(admin.request("resolve_complaint", complaint_id=987654321,
                               resolution="x"), "NOT_FOUND")
    lst = expect_body(admin.request("list_complaints", open_only=True),
                      "complaint_list").complaints
    assert cmp.complaint_id not in [x.complaint_id for x in lst]
    assert any(x.note == "on behalf of C1" for x in lst)
    for x in (admin, civil, w):
        x.close()


def test_metrics_count_outcomes():
    import urllib.request
    daemon()
    body = urllib.request.urlopen(
        "http://127.0.0.1:%d/metrics" % _cfg.http_port, timeout=5).read()
    text = body.decode()
    for needle in ('gridd_incidents_total{outcome="accepted"}',
                   'reason="negative_list"', "gridd_push_commit_seconds",
                   "gridd_push_group_items_bucket"):
        assert needle in text, needle
    line = [x for x in text.splitlines()
            if x.startswith('gridd_incidents_total{outcome="rejected",'
                            'reason="negative_list"}')][0]
    assert float(line.split()[-1]) >= 1, line


def metric(port, name, **labels):
    """One sample of gridd's /metrics, by name and labels (0 if absent)."""
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                  timeout=5).read().decode()
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name and smp.labels == labels:
                return smp.value
    return 0.0


def test_metrics_show_events_pending_for_a_stalled_subscriber():
    """A second gridd on the same database with a tiny output bound: its
    subscriber never reads, so it stalls, and /metrics shows how many
    events wait for it; once it reads, the figure goes back to 0."""
    daemon()
    cfg = harness.write_config(harness.tmppath("feed-slow.conf"),
                               dbname=_cfg.dbname,
                               server__max_output_bytes="4096",
                               server__output_stall_timeout_s="120",
                               dispatch__merge_window_s="0")
    slow_gridd = harness.Gridd(cfg, name="feed-slow").start()
    try:
        sock = socket.socket()
        # A small window and a small segment size keep the kernel's
        # buffers on both sides small (on loopback the sender's buffer is
        # sized from the segment size), so the daemon's own bound is
        # reached after a few thousand events.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        sock.settimeout(20)
        sock.connect(cfg.addr)
        slow = harness.Client.__new__(harness.Client)
        slow.sock, slow.buf, slow.timeout = sock, b"", 20
        slow.ids, slow.pushes, slow.replies = \
            itertools.count(1), [], {}
        rep = expect_body(slow.login("DEPARTMENT", "urban",
                                     harness.DEPARTMENTS["urban"][1]),
                          "login_reply")
        expect_body(slow.request("subscribe", since_seq=rep.last_seq), "ok")
        # Pushed through the slow daemon, which merges nothing: an event
        # for every item.
        pusher = harness.Client(cfg.addr, timeout=60)
        expect_body(pusher.login("DEPARTMENT", "urban",
                                 harness.DEPARTMENTS["urban"][1]),
                    "login_reply")
        n = 0
        deadline = time.monotonic() + 120

        def push_some():
            items = [item("pend-%d" % (n + i), "CG01",
                          9.5001 + ((n + i) % 199) * 0.0001,
                          47.1101 + ((n + i) // 199 % 80) * 0.0001)
                     for i in range(500)]
            push(pusher, items, timeout=60)
            return len(items)

        # Until the subscriber's socket and its unsent output are full:
        # then what is pushed waits, and the gauge (refreshed every few
        # seconds) shows it.
        pending = 0
        while pending <= 0:
            assert time.monotonic() < deadline, (
                "no events pending for a stalled subscriber after %d "
                "items" % n)
            n += push_some()
            pending = metric(cfg.http_port,
                             "gridd_subscriber_events_pending")
            time.sleep(0.2)
        assert metric(cfg.http_port, "gridd_subscribers",
                      state="stalled") >= 1
        assert pending > 0, "no events pending for a stalled subscriber"
        head = int(sql1("SELECT max(dept_seq) FROM events WHERE "
                        "department_id = 'urban'"))
        assert pending <= head - rep.last_seq, (pending, head, rep.last_seq)
        # It reads now: everything arrives, gap-free, and nothing is
        # pending any more.
        got = []
        while not got or got[-1].seq < head:
            env = slow.recv_push(timeout=30)
            if harness.body(env) == "incident_update":
                got.append(env.incident_update)
        assert_gap_free(got, rep.last_seq)
        deadline = time.monotonic() + 20
        while metric(cfg.http_port, "gridd_subscriber_events_pending") > 0:
            assert time.monotonic() < deadline, "events still pending"
            time.sleep(0.5)
        print("   stalled subscriber after %d items: %d events pending"
              % (n, pending))
        pusher.close()
        slow.close()
    finally:
        slow_gridd.stop()


def test_grid_change_is_seen_by_the_next_push():
    """Points are located in memory; a change to the cells is seen by the
    very next push (the daemon reloads on NOTIFY gridd_grid, and until it
    has, PostgreSQL locates because the versions differ)."""
    sql("INSERT INTO communities (community_id, name, geom) VALUES "
        "('C9', 'Moving cells', "
        "ST_Multi(ST_MakeEnvelope(9.60, 47.10, 9.62, 47.12, 4326)));"
        "INSERT INTO cells (cell_id, community_id, geom) VALUES "
        "('C9-001', 'C9', "
        "ST_Multi(ST_MakeEnvelope(9.60, 47.10, 9.62, 47.12, 4326)));")
    civil, _ = dept_client()
    (r,) = push(civil, [item("grid-1", "MZ01", 9.615, 47.101)])
    assert_outcome(r, "ACCEPTED")
    assert r.cell_id == "C9-001", r
    for round_ in range(3):
        # Split: the west half and the east half's south; the east half's
        # north is left without a cell.
        old = "C9-001" if round_ == 0 else "C9-W%d" % (round_ - 1)
        sql("UPDATE cells SET valid_to = now() WHERE community_id = 'C9' "
            "AND valid_to IS NULL;"
            "INSERT INTO cells (cell_id, community_id, geom) VALUES "
            "('C9-W%d', 'C9', ST_Multi(ST_MakeEnvelope(9.60, 47.10, 9.61, "
            "47.12, 4326))), "
            "('C9-E%d', 'C9', ST_Multi(ST_MakeEnvelope(9.61, 47.10, 9.62, "
            "47.11, 4326)));" % (round_, round_))
        lat = 47.1015 + 0.003 * round_
        res = push(civil, [
            item("grid-w%d" % round_, "MZ01", 9.605, lat),
            item("grid-e%d" % round_, "MZ01", 9.6175, lat),
            item("grid-edge%d" % round_, "MZ01", 9.61, lat + 0.001),
            item("grid-n%d" % round_, "MZ01", 9.6175, 47.115 + 0.001 * round_),
            item("grid-out%d" % round_, "MZ01", 9.625, lat)])
        assert res[0].cell_id == "C9-W%d" % round_, (old, res[0])
        assert res[1].cell_id == "C9-E%d" % round_, res[1]
        # On the shared edge: the lower id, as gridd_locate.
        assert res[2].cell_id == "C9-E%d" % round_, res[2]
        assert_outcome(res[3], "ACCEPTED")
        assert res[3].cell_id == "", res[3]
        assert_outcome(res[4], "REJECTED", "BAD_REQUEST")
        inc = sql1("SELECT community_id || '/' || coalesce(cell_id, '-') "
                   "FROM incidents WHERE incident_id = %d"
                   % res[3].incident_id)
        assert inc == "C9/-", inc
    civil.close()


if __name__ == "__main__":
    harness.main(globals())

"""test_report.py - the burden report against the test's own traffic.

Two departments push a known set of items through PushIncidents (accepted,
merged, every kind of refusal) into two small communities; a grid worker
takes offers through the real dispatch path; an admin files complaints;
a few rows are then set with SQL where only time can make them (a close
after 30 minutes, a deadline in the past, offers with fixed timings). The
figures the test expects are counted from its own pushes and actions, not
from the tables, and compared with GetBurdenReport, with `gridctl report
burden --csv/--json/--html`, and with the HTML page rendered in headless
Chromium (a screenshot is written beside the test log).
"""

import csv
import html.parser
import io
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import dispatch_common as dc  # noqa: E402
from harness import pb, expect_body, expect_error  # noqa: E402

harness.skip_unless_pg()

# Category code -> task type, per department, as in harness.DEPARTMENTS.
CATS = {d: v[2] for d, v in harness.DEPARTMENTS.items()}

_state = {}


def setup():
    """The daemon, two communities and the traffic, once per file."""
    if _state:
        return _state
    harness.require_pg()
    cfg = harness.write_config(harness.tmppath("report.conf"),
                               dispatch__merge_radius_m=5)
    g = harness.Gridd(cfg, name="report").start()
    db = cfg.dbname
    _state.update(cfg=cfg, gridd=g, db=db, t0=int(time.time() * 1000) - 1000)
    cells_a = dc.make_community(db, "RA")
    dc.make_community(db, "RB")
    harness.psql("INSERT INTO departments (department_id) VALUES "
                 "('civil'), ('urban') ON CONFLICT DO NOTHING", db)
    traffic(cfg, db, cells_a)
    _state["t1"] = int(time.time() * 1000) + 1000
    return _state


def point(tag, cell_no, k):
    """The k-th distinct point (about 9 m apart) in a cell."""
    lon, lat = dc.cell_point(tag, cell_no)
    return lon - 0.0004 + 0.0001 * (k % 9), lat - 0.0004 + 0.0001 * (k // 9)


def traffic(cfg, db, cells_a):
    admin = dc.admin_client(cfg.addr)
    dc.upsert_worker(admin, "WRA", "RA", [cells_a[0]], max_open=10)
    worker = dc.worker_client(cfg.addr, "WRA")
    dc.check_in(worker, True, dc.cell_point("RA", 1))

    # (department, ext_id, category, (tag, cell, k) or a raw (lon, lat),
    #  intended outcome, rejection reason)
    plan = [
        ("civil", "c1", "MZ01", ("RA", 1, 0), "ACCEPTED", None),
        ("civil", "c2", "MZ01", ("RA", 1, 2), "ACCEPTED", None),
        ("civil", "c3", "MZ01", ("RA", 1, 4), "ACCEPTED", None),
        ("civil", "c4", "MZ02", ("RA", 2, 0), "ACCEPTED", None),
        ("civil", "c5", "MZ03", ("RA", 2, 2), "ACCEPTED", None),
        ("civil", "c6", "MZ09", ("RA", 2, 4), "REJECTED", "negative_list"),
        ("civil", "c7", "ZZ77", ("RA", 2, 6), "REJECTED", "unknown_category"),
        ("civil", "c8", "MZ01", (100.0, 10.0), "REJECTED", "outside"),
        ("civil", "c9", "MZ01", ("RA", 2, 8), "REJECTED", "invalid"),
        ("civil", "c10", "MZ01", ("RB", 1, 0), "ACCEPTED", None),
        ("urban", "u1", "CG03", ("RA", 1, 0), "MERGED", None),
        ("urban", "u2", "CG01", ("RA", 3, 0), "ACCEPTED", None),
        ("urban", "u3", "CG02", ("RA", 3, 2), "ACCEPTED", None),
        ("urban", "u4", "CG09", ("RA", 3, 4), "REJECTED", "negative_list"),
        ("urban", "u5", "CG01", ("RB", 2, 0), "ACCEPTED", None),
    ]
    results = {}
    clients = {}
    for dept, ext, cat, where, want, reason in plan:
        if dept not in clients:
            clients[dept] = harness.Client(cfg.addr, timeout=20)
            harness.login_department(clients[dept], dept)
        lon, lat = point(*where) if isinstance(where[0], str) else where
        it = pb.IncidentIn(ext_id=ext, category=cat, lon=lon, lat=lat,
                           occurred_at=int(time.time() * 1000),
                           severity=7 if reason == "invalid" else 2)
        r = expect_body(clients[dept].request("push_incidents",
                                              incidents=[it], timeout=20),
                        "push_incidents_reply").results[0]
        got = pb.PushResult.Outcome.Name(r.outcome)
        assert got == want, "%s: %s, want %s (%s)" % (ext, got, want,
                                                        r.message)
        community = where[0] if want != "REJECTED" or reason != "outside" \
            else None
        results[ext] = dict(dept=dept, cat=cat, outcome=want, reason=reason,
                            community=community, id=r.incident_id,
                            list=r.list, matter=r.matter)
    assert results["u1"]["id"] == results["c1"]["id"], "u1 did not merge c1"
    _state["plan"] = results

    # The worker: c1..c3 are offered in its own cell, c4 from the
    # neighbouring cell. It accepts and resolves c1, declines c2, accepts c3
    # and leaves c4 offered.
    want = {results[e]["id"] for e in ("c1", "c2", "c3", "c4")}
    offers = {}
    deadline = time.monotonic() + 20
    while want - set(offers) and time.monotonic() < deadline:
        o = dc.recv_offer(worker, timeout=max(0.1,
                                              deadline - time.monotonic()))
        offers[o.incident_id] = o.assignment_id
    assert want <= set(offers), "offers missing for %s" % (want - set(offers))

    def act(ext, action):
        expect_body(dc.update(worker, offers[results[ext]["id"]], action),
                    "ok")
    act("c1", "ACCEPT")
    act("c1", "START")
    act("c1", "RESOLVE")
    act("c2", "DECLINE")
    act("c3", "ACCEPT")
    _state["worker"] = dict(offered=len(offers), accepted=2, declined=1,
                            expired=0, resolved=1)

    # Complaints, filed by the admin on behalf of the community.
    complaints = [("c2", "unfunded"), ("c1", "duplicate"),
                  ("u2", "outside_duty")]
    for ext, reason in complaints:
        expect_body(admin.request("file_complaint",
                                  incident_id=results[ext]["id"],
                                  reason=reason, note="report test",
                                  community_id="RA"), "ok")
    _state["complaints"] = complaints

    # What only time makes: c5 (referred to residents) closed 30 minutes
    # after civil pushed it, u5 closed 90 minutes after urban's push, u2's
    # deadline passed while it is still open.
    for ext, minutes in (("c5", 30), ("u5", 90)):
        harness.psql(
            "UPDATE incidents SET status = 'closed', closed_at = "
            "(SELECT pushed_at FROM incident_sources WHERE ext_id = '%s') "
            "+ interval '%d minutes' WHERE incident_id = %d"
            % (ext, minutes, results[ext]["id"]), db)
    harness.psql("UPDATE incidents SET deadline = now() - interval '1 hour'"
                 " WHERE incident_id = %d" % results["u2"]["id"], db)
    _state["closed_ms"] = {"civil": 30 * 60000, "urban": 90 * 60000}

    # A second worker's offers with fixed timings, as dispatch writes them:
    # one expired, two accepted after 40 s and 20 s and resolved 1 h and
    # 3 h after their offers.
    harness.psql(
        "INSERT INTO workers (worker_id, community_id, name, password_hash)"
        " VALUES ('WSQL', 'RA', '', 'pbkdf2-sha256$1000$"
        "00112233445566778899aabbccddeeff$" + "0" * 64 + "')", db)
    inc = results["u2"]["id"]
    harness.psql(
        "INSERT INTO assignments (incident_id, worker_id, community_id,"
        " state, reason, offered_at, expires_at, accepted_at, resolved_at)"
        " VALUES"
        " (%d, 'WSQL', 'RA', 'expired', 'backup_cell', now(), now(),"
        "  NULL, NULL),"
        " (%d, 'WSQL', 'RA', 'resolved', 'primary_cell', now(), now(),"
        "  now() + interval '40 s', now() + interval '1 hour'),"
        " (%d, 'WSQL', 'RA', 'resolved', 'primary_cell', now(), now(),"
        "  now() + interval '20 s', now() + interval '3 hours')"
        % (inc, inc, inc), db)
    _state["wsql"] = dict(offered=3, accepted=2, declined=0, expired=1,
                          resolved=2, median_accept_ms=30000,
                          median_resolve_ms=(3600000 - 40000 +
                                             10800000 - 20000) // 2)
    for c in clients.values():
        c.close()
    worker.close()
    admin.close()


def expected(community=None):
    """The report the test expects, from its own plan."""
    plan = _state["plan"]
    depts = {}
    # A refused item counts for the community its point is in; an
    # invalid item (not placed) and one outside every community for none.
    for ext, p in plan.items():
        where = p["community"]
        if p["outcome"] == "REJECTED" and p["reason"] in ("invalid",
                                                          "outside"):
            where = None
        if community is not None and where != community:
            continue
        d = depts.setdefault(p["dept"], dict(
            pushed=0, accepted=0, merged=0, rejected_negative=0,
            unknown_category=0, outside=0, invalid=0))
        d["pushed"] += 1
        if p["outcome"] == "ACCEPTED":
            d["accepted"] += 1
        elif p["outcome"] == "MERGED":
            d["merged"] += 1
        elif p["reason"] == "negative_list":
            d["rejected_negative"] += 1
        else:
            d[p["reason"]] += 1
    for d in ("civil", "urban"):
        depts.setdefault(d, dict(pushed=0, accepted=0, merged=0,
                                 rejected_negative=0, unknown_category=0,
                                 outside=0, invalid=0))
        depts[d]["complaints"] = {}
        depts[d]["overdue"] = 0
        depts[d]["closed"] = 0
    for ext, reason in _state["complaints"]:
        inc = plan[ext]["id"]
        if community is not None and plan[ext]["community"] != community:
            continue
        # The complaint counts against every source of the incident.
        for p in plan.values():
            if p["id"] == inc and p["outcome"] in ("ACCEPTED", "MERGED"):
                c = depts[p["dept"]]["complaints"]
                c[reason] = c.get(reason, 0) + 1
    if community in (None, "RA"):
        depts["urban"]["overdue"] = 1          # u2
    if community in (None, "RA"):
        depts["civil"]["closed"] = 1           # c5
    if community in (None, "RB"):
        depts["urban"]["closed"] = 1           # u5
    comms = {}
    for ext, p in plan.items():
        if p["outcome"] != "ACCEPTED":
            continue
        if community is not None and p["community"] != community:
            continue
        c = comms.setdefault(p["community"], dict(
            tasks=0, autonomy=0, assist=0, certificate=0, big=0, small=0,
            private=0, to_workers=0, gov=0))
        tt = harness.TASK_TYPES[CATS[p["dept"]][p["cat"]]]
        c["tasks"] += 1
        c[tt["list"]] += 1
        c[tt["matter"]] += 1
        assert pb.TaskList.Name(p["list"]).lower() == tt["list"]
        assert pb.Matter.Name(p["matter"]).lower() == tt["matter"]
        if tt["route"] == "worker":
            c["to_workers"] += 1
            if tt["list"] in ("assist", "certificate"):
                c["gov"] += 1
    return depts, comms


def get_report(community="", frm=None, to=None):
    s = setup()
    with harness.Client(s["cfg"].addr, timeout=30) as c:
        harness.login_admin(c)
        rep = c.request("get_burden_report",
                        **{"from": s["t0"] if frm is None else frm,
                           "to": s["t1"] if to is None else to,
                           "community_id": community})
        return expect_body(rep, "burden_report")


def check(report, community=None):
    depts, comms = expected(community)
    totals = {d.department_id: d for d in report.departments
              if d.list == pb.LIST_UNSPECIFIED}
    assert set(totals) == set(depts), (set(totals), set(depts))
    for name, e in depts.items():
        d = totals[name]
        rej = {r.reason: r.count for r in d.rejected_by_reason}
        cmp_ = {r.reason: r.count for r in d.complaints_by_reason
                if r.count}
        got = dict(pushed=d.pushed, accepted=d.accepted, merged=d.merged,
                   rejected_negative=d.rejected_negative,
                   unknown_category=rej.get("unknown_category", 0),
                   outside=rej.get("outside", 0),
                   invalid=rej.get("invalid", 0),
                   complaints=cmp_, overdue=d.overdue, closed=d.closed)
        assert got == e, "department %s: got %s, want %s" % (name, got, e)
        assert d.rejected == d.rejected_negative + d.rejected_other
        assert d.rejected_other == e["unknown_category"] + e["outside"] + \
            e["invalid"]
        assert d.complaints == sum(e["complaints"].values())
        if d.closed:
            assert d.median_close_ms == _state["closed_ms"][name], \
                (name, d.median_close_ms)
    # Per list: the rows of a department add up to its items with a list.
    for name in depts:
        rows = [d for d in report.departments if d.department_id == name
                and d.list != pb.LIST_UNSPECIFIED]
        t = totals[name]
        assert sum(r.accepted for r in rows) == t.accepted
        assert sum(r.merged for r in rows) == t.merged
        assert sum(r.rejected_negative for r in rows) == t.rejected_negative
        for r in rows:
            if r.rejected_negative:
                assert r.list == pb.NEGATIVE
    got_c = {c.community_id: c for c in report.communities}
    assert set(got_c) == set(comms), (set(got_c), set(comms))
    for cid, e in comms.items():
        c = got_c[cid]
        got = dict(tasks=c.tasks, autonomy=c.autonomy, assist=c.assist,
                   certificate=c.certificate, big=c.big, small=c.small,
                   private=getattr(c, "private"), to_workers=c.to_workers,
                   gov=c.to_workers_government)
        assert got == e, "community %s: got %s, want %s" % (cid, got, e)
        share = e["gov"] / e["to_workers"] if e["to_workers"] else 0.0
        assert abs(c.government_share - share) < 1e-9, (cid, share)


def test_report_numbers_equal_the_pushes():
    r = get_report()
    check(r)
    w = {x.worker_id: x for x in r.workers}
    got = w["WRA"]
    for k, v in _state["worker"].items():
        assert getattr(got, k) == v, ("WRA", k, getattr(got, k), v)
    assert got.median_accept_ms >= 0 and got.median_resolve_ms >= 0
    got = w["WSQL"]
    for k, v in _state["wsql"].items():
        assert getattr(got, k) == v, ("WSQL", k, getattr(got, k), v)
    assert got.community_id == "RA"


def test_report_for_one_community():
    check(get_report("RB"), "RB")
    check(get_report("RA"), "RA")
    r = get_report("RB")
    assert not [w for w in r.workers], "RB has no offers"


def test_window_excludes_what_is_outside_it():
    s = setup()
    r = get_report(frm=s["t0"] - 86400000, to=s["t0"] - 3600000)
    for d in r.departments:
        assert d.pushed == 0 and d.complaints == 0, d
    assert len(r.communities) == 0 and len(r.workers) == 0
    # The window is [from, to): ending at the first push's own time
    # leaves it out.
    first = harness.psql1(
        "SELECT floor(extract(epoch FROM min(pushed_at)) * 1000)::bigint "
        "FROM incident_sources", s["db"])
    r = get_report(frm=s["t0"] - 3600000, to=int(first))
    assert sum(d.accepted for d in r.departments
               if d.list == pb.LIST_UNSPECIFIED) == 0


def test_bad_requests():
    s = setup()
    with harness.Client(s["cfg"].addr) as c:
        harness.login_admin(c)
        for fields in ({"from": 10, "to": 5},
                       {"from": -1},
                       {"community_id": "no spaces allowed"},
                       {"to": 2 ** 62}):
            expect_error(c.request("get_burden_report", **fields),
                         "BAD_REQUEST")
    with harness.Client(s["cfg"].addr) as c:
        harness.login_department(c)
        expect_error(c.request("get_burden_report"), "FORBIDDEN")


def gridctl(*args):
    s = setup()
    env = dict(os.environ, GRIDD_ADDR="127.0.0.1:%d" % s["cfg"].api_port,
               GRIDD_ROLE="admin", GRIDD_ID=harness.ADMIN_ID,
               GRIDD_SECRET=harness.ADMIN_KEY)
    r = subprocess.run([harness.GRIDCTL_BIN, "report", "burden",
                        "--from", str(s["t0"]), "--to", str(s["t1"])] +
                       list(args), capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, (args, r.returncode, r.stderr)
    return r.stdout


def test_gridctl_csv_and_json():
    r = get_report()
    js = json.loads(gridctl("--json"))["burden_report"]
    assert len(js["departments"]) == len(r.departments)
    rows = list(csv.reader(io.StringIO(gridctl("--csv"))))
    dept = {(row[1], row[3]): row for row in rows
            if row and row[0] == "department"}
    for d in r.departments:
        key = (d.department_id,
               pb.TaskList.Name(d.list).lower().replace("list_unspecified",
                                                        "all"))
        row = dept[key]
        assert [int(x) for x in row[4:9]] == [
            d.pushed, d.accepted, d.merged, d.rejected_negative,
            d.rejected_other], (key, row)
    comm = {row[1]: row for row in rows if row and row[0] == "community"}
    for c in r.communities:
        assert int(comm[c.community_id][3]) == c.tasks
    text = gridctl()
    assert "civil" in text and "WSQL" in text


class Tables(html.parser.HTMLParser):
    """Tables of the page by id: rows of (attrs, [cell texts], [cell
    attrs]); also whether anything external is referenced."""

    def __init__(self):
        super().__init__()
        self.tables, self.cur, self.row, self.cell = {}, None, None, None
        self.external = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a:
                self.external.append(a[k])
        if tag in ("script", "link", "iframe", "img", "object"):
            self.external.append(tag)
        if tag == "table":
            self.cur = self.tables.setdefault(a.get("id"), [])
        elif tag == "tr" and self.cur is not None:
            self.row = (a, [], [])
        elif tag in ("td", "th") and self.row is not None:
            self.cell = []
            self.row[2].append(a)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.row is not None and \
                self.cell is not None:
            self.row[1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row is not None:
            if self.row[0].get("data-id") is not None:
                self.cur.append(self.row)
            self.row = None
        elif tag == "table":
            self.cur = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def chromium():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return None


def test_html_page_matches_and_renders():
    r = get_report()
    page = harness.tmppath("burden.html")
    gridctl("--html", page)
    with open(page, encoding="utf-8") as f:
        text = f.read()
    t = Tables()
    t.feed(text)
    assert not t.external, "the page references %s" % t.external
    assert "<svg" in text and "chart-departments" in text
    depts = {row[0]["data-id"]: row for row in t.tables["departments"]}
    for d in r.departments:
        if d.list != pb.LIST_UNSPECIFIED:
            continue
        cells = depts[d.department_id][1]
        nums = [int(x) for x in cells[1:12]]
        rej = {x.reason: x.count for x in d.rejected_by_reason}
        assert nums == [d.pushed, d.accepted, d.merged, d.rejected_negative,
                        d.rejected_other, rej["unknown_category"],
                        rej["outside"], rej["invalid"], d.complaints,
                        d.overdue, d.closed], (d.department_id, nums)
        ms = depts[d.department_id][2][12].get("data-ms")
        assert ms == (str(d.median_close_ms) if d.closed else ""), ms
    comms = {row[0]["data-id"]: row for row in t.tables["communities"]}
    for c in r.communities:
        cells = comms[c.community_id][1]
        assert [int(x) for x in cells[2:11]] == [
            c.tasks, c.autonomy, c.assist, c.certificate, c.big, c.small,
            getattr(c, "private"), c.to_workers, c.to_workers_government]
        share = comms[c.community_id][2][11].get("data-share")
        if c.to_workers:
            assert abs(float(share) - c.government_share) < 1e-6
    workers = {row[0]["data-id"]: row for row in t.tables["workers"]}
    for w in r.workers:
        cells = workers[w.worker_id][1]
        assert [int(x) for x in cells[2:7]] == [
            w.offered, w.accepted, w.declined, w.expired, w.resolved]
    # Against the database itself: the page's total of accepted items is
    # the number of incidents the pushes created.
    n = int(harness.psql1("SELECT count(*) FROM incident_sources WHERE "
                          "outcome = 'accepted'", _state["db"]))
    assert sum(int(row[1][2]) for row in t.tables["departments"]) == n

    exe = chromium()
    if exe is None:
        if harness.REQUIRE_PG:
            raise AssertionError("chromium is not installed")
        raise harness.Skip("chromium is not installed")
    shot = os.path.join(os.environ.get("GRIDD_REPORT_SCREENSHOT_DIR",
                                       os.getcwd()), "burden-report.png")
    profile = harness.tmppath("chromium-profile")
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--user-data-dir=" + profile,
         "--screenshot=" + shot, "--window-size=1280,2000",
         "file://" + page],
        capture_output=True, text=True, timeout=90,
        stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(shot, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = int.from_bytes(head[16:20], "big"), \
        int.from_bytes(head[20:24], "big")
    assert (width, height) == (1280, 2000), (width, height)
    assert os.path.getsize(shot) > 20000, "the screenshot looks empty"
    print("screenshot: %s" % shot)


# ---- past days: the SLA rule, refusals by community, roll-ups ----------------
#
# Rows written with SQL into days of 2001, far from the other tests' windows,
# as the feed and dispatch would have written them then. The days between
# the first and last of a window are rolled up by the report itself
# (gridd_report_refresh); the figures are checked against the test's own
# plan and against the same functions computed from the stored rows alone.

PAST_EPOCH_MS = 981244800000    # 2001-02-04 00:00 UTC


def past_ms(day, hour=0, minute=0):
    return PAST_EPOCH_MS + ((day * 24 + hour) * 60 + minute) * 60000


def past_ts(day, hour=0, minute=0):
    return ("(timestamptz 'epoch' + %d * interval '1 millisecond')"
            % past_ms(day, hour, minute))


def past_incident(db, dept, ext, task, community, pushed, status,
                  deadline=None, close_after_min=None, escalated=False,
                  outcome="accepted"):
    """One incident pushed at pushed (an SQL time) by dept; returns its id.
    deadline is an SQL time (None: pushed + the task's SLA)."""
    tt = harness.TASK_TYPES[task]
    if deadline is None:
        deadline = "%s + interval '%s minutes'" % (pushed, tt["sla_minutes"])
    closed = ("%s + interval '%d minutes'" % (pushed, close_after_min)
              if close_after_min is not None else "NULL")
    return int(harness.psql1(
        "WITH i AS (INSERT INTO incidents (community_id, cell_id, task_type,"
        " list, matter, route, status, owner_department, departments,"
        " created_at, occurred_at, updated_at, deadline, closed_at,"
        " sla_escalated) VALUES ('%s', NULL, '%s', '%s', '%s', '%s', '%s',"
        " '%s', ARRAY['%s'], %s, %s, %s, %s, %s, %s) RETURNING *)"
        " INSERT INTO incident_sources (source_kind, source_id, ext_id,"
        " incident_id, community_id, category, outcome, pushed_at)"
        " SELECT 'department', '%s', '%s', incident_id, community_id, 'X',"
        " '%s', %s FROM i RETURNING incident_id"
        % (community, task, tt["list"], tt["matter"], tt["route"], status,
           dept, dept, pushed, pushed, pushed, deadline, closed,
           "true" if escalated else "false", dept, ext, outcome, pushed),
        db))


def dept_totals(report):
    return {d.department_id: d for d in report.departments
            if d.list == pb.LIST_UNSPECIFIED}


def test_overdue_follows_the_sla_timer():
    """Overdue = what the SLA timer escalated or will escalate: open (not
    resolved, closed or cancelled), not a referral, deadline passed. A
    resolved incident waiting for its department's verification is on
    time."""
    s = setup()
    db = s["db"]
    day = 10
    at = past_ts(day, 1)
    past_deadline = past_ts(day, 2)
    cases = [
        # (ext, task, status, deadline, closed after, escalated, overdue)
        ("od-resolved", "elderly_visit", "resolved", past_deadline, None,
         False, False),
        ("od-open", "elderly_visit", "in_progress", past_deadline, None,
         False, True),
        ("od-escalated-closed", "elderly_visit", "closed", past_deadline,
         300, True, True),
        ("od-closed-in-time", "elderly_visit", "closed", past_deadline,
         30, False, False),
        ("od-referral", "neighbour_dispute", "referred", past_deadline,
         None, False, False),
        ("od-cancelled", "elderly_visit", "cancelled", past_deadline, None,
         True, False),
        ("od-not-yet", "elderly_visit", "in_progress",
         "now() + interval '1 day'", None, False, False),
    ]
    for ext, task, status, deadline, closed, esc, _ in cases:
        past_incident(db, "urban", ext, task, "RA", at, status, deadline,
                      closed, esc)
    want = sum(1 for c in cases if c[-1])
    # Live (part of a day) and rolled up (the whole day).
    for frm, to in ((past_ms(day), past_ms(day, 12)),
                    (past_ms(day), past_ms(day + 1))):
        r = get_report(frm=frm, to=to)
        u = dept_totals(r)["urban"]
        assert u.pushed == len(cases), u
        assert u.overdue == want, "overdue %d, want %d" % (u.overdue, want)
        assert u.closed == 2, u
    # The rolled-up day expires when the open incident's deadline passes.
    valid = harness.psql1(
        "SELECT valid_until = (SELECT min(deadline) FROM incidents "
        "WHERE status = 'in_progress' AND deadline > now()) "
        "FROM report_days WHERE day = gridd_report_day(%s)" % at, db)
    assert valid == "t", valid


def test_report_day_is_utc_and_inlined():
    """The day number is the UTC day whatever the session's time zone, the
    same as extract(epoch) gives (the roll-ups made before 010 stay valid),
    and the planner inlines it (no function call per row in the triggers'
    filters and WHEN clauses)."""
    s = setup()
    db = s["db"]
    cases = ["1969-12-31 23:59:59.999999+00", "1970-01-01 00:00:00+00",
             "2026-11-28 23:59:59.999999+00", "2026-11-29 00:00:00+00",
             "2026-11-29 07:59:59+08", "2026-11-29 08:00:00+08",
             "2000-02-29 12:00:00-11", "4713-11-24 00:00:00+00 BC",
             "294276-12-31 00:00:00+00"]
    for tz in ("UTC", "Asia/Shanghai", "America/Los_Angeles"):
        rows = harness.psql(
            "SET TimeZone = '%s'; SELECT ts, gridd_report_day(ts::timestamptz),"
            " floor(extract(epoch FROM ts::timestamptz) / 86400)::integer"
            " FROM unnest(ARRAY['%s']) ts" % (tz, "','".join(cases)), db)
        assert len(rows) == len(cases), rows
        for ts, got, want in rows:
            assert got == want, (tz, ts, got, want)
    assert harness.psql1("SELECT gridd_report_day('2026-11-29 07:59:59+08')",
                         db) == "20785"
    plan = "\n".join(r[0] for r in harness.psql(
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT gridd_report_day(created_at)"
        " FROM incidents", db))
    assert "gridd_report_day" not in plan and "EXTRACT" in plan, plan


def test_refusals_count_for_their_community():
    """A refusal counts for a community when its row names one (the feed
    fills it when it located the item), and always for the whole city."""
    s = setup()
    db = s["db"]
    day = 20
    rows = [("civil", "rf1", "RA", "enterprise_safety_check",
             "negative_list"),
            ("civil", "rf2", None, None, "outside"),
            ("civil", "rf3", "RB", None, "invalid"),
            ("urban", "rf4", "RA", None, "unknown_category")]
    for dept, ext, comm, tt, reason in rows:
        harness.psql(
            "INSERT INTO rejections (source_id, ext_id, community_id,"
            " task_type, reason, at) VALUES ('%s', '%s', %s, %s, '%s', %s)"
            % (dept, ext, "'%s'" % comm if comm else "NULL",
               "'%s'" % tt if tt else "NULL", reason, past_ts(day, 3)), db)
    for frm, to in ((past_ms(day, 1), past_ms(day, 12)),
                    (past_ms(day), past_ms(day + 1))):
        for community in ("", "RA", "RB"):
            r = get_report(community, frm=frm, to=to)
            got = {}
            for d in r.departments:
                if d.list != pb.LIST_UNSPECIFIED:
                    if d.rejected_negative:
                        assert d.list == pb.NEGATIVE, d
                    continue
                for x in d.rejected_by_reason:
                    if x.count:
                        got[(d.department_id, x.reason)] = x.count
                if d.rejected_negative:
                    got[(d.department_id, "negative_list")] = \
                        d.rejected_negative
                assert d.pushed == d.rejected, d
            want = {}
            for dept, _, comm, _, reason in rows:
                if community in ("", comm):
                    want[(dept, reason)] = want.get((dept, reason), 0) + 1
            assert got == want, (community, frm, got, want)


def sql_report(db, fn, frm, to, community=None, live=False):
    """A report function straight from SQL; live=True computes every day
    from the stored rows (the roll-ups are marked stale inside a
    transaction that is rolled back)."""
    q = ("SELECT * FROM %s(timestamptz 'epoch' + %d * interval '1 ms',"
         " timestamptz 'epoch' + %d * interval '1 ms', %s)"
         % (fn, frm, to, "'%s'" % community if community else "NULL"))
    if live:
        q = ("BEGIN; INSERT INTO report_dirty (day) SELECT day FROM"
             " report_days; %s; ROLLBACK" % q)
    return harness.psql(q, db)


def close_enough(a, b):
    """Medians from roll-up histograms: within a bucket (2^(1/16))."""
    if a in ("", None) or b in ("", None):
        return a == b
    a, b = int(a), int(b)
    return abs(a - b) <= 0.045 * max(a, b) + 1


def compare(rolled, live, key_cols, median_cols):
    r = {tuple(x[c] for c in key_cols): x for x in rolled}
    l_ = {tuple(x[c] for c in key_cols): x for x in live}
    assert set(r) == set(l_), (sorted(r), sorted(l_))
    for k in r:
        for i, (a, b) in enumerate(zip(r[k], l_[k])):
            if i in median_cols:
                assert close_enough(a, b), (k, i, a, b)
            else:
                assert a == b, (k, i, a, b)


def test_rollups_agree_with_live():
    s = setup()
    db = s["db"]
    day = 30
    # Three days: the first and last in part, the middle one whole.
    frm, to = past_ms(day, 6), past_ms(day + 2, 18)
    plan = []   # (dept, day, hour, close_min or None, community)
    k = 0
    for d in range(3):
        for hour in (2, 9, 15, 22):
            for dept, comm in (("civil", "RA"), ("urban", "RB"),
                               ("civil", "RB")):
                k += 1
                close = (10 * (1 + k % 7) * (1 + d)) if k % 3 else None
                plan.append((dept, d, hour, close, comm))
    ids = []
    for i, (dept, d, hour, close, comm) in enumerate(plan):
        task = ("elderly_visit", "garbage_sorting",
                "residence_certificate")[i % 3]
        ids.append(past_incident(
            db, dept, "ru%d" % i, task, comm, past_ts(day + d, hour),
            "closed" if close else "in_progress", None, close))
    # Offers to the two workers with fixed timings, complaints, refusals.
    for i, inc in enumerate(ids):
        dept, d, hour, close, comm = plan[i]
        w = "WSQL" if i % 2 else "WRA"
        harness.psql(
            "INSERT INTO assignments (incident_id, worker_id, community_id,"
            " state, reason, offered_at, expires_at, accepted_at,"
            " resolved_at) VALUES (%d, '%s', '%s', '%s', 'primary_cell',"
            " %s, %s, %s, %s)"
            % (inc, w, comm, "resolved" if i % 4 else "expired",
               past_ts(day + d, hour), past_ts(day + d, hour, 2),
               "NULL" if i % 4 == 0 else past_ts(day + d, hour, 1 + i % 5),
               "NULL" if i % 4 == 0 else past_ts(day + d, hour + 1,
                                                  i % 50)), db)
        if i % 5 == 0:
            harness.psql(
                "INSERT INTO complaints (incident_id, community_id, reason,"
                " complainant, departments, filed_at) VALUES (%d, '%s',"
                " 'unfunded', 'WRA', ARRAY['%s'], %s)"
                % (inc, comm, dept, past_ts(day + d, hour, 30)), db)
    harness.psql(
        "INSERT INTO rejections (source_id, ext_id, community_id, reason,"
        " at) VALUES ('civil', 'rr1', 'RA', 'invalid', %s),"
        " ('urban', 'rr2', NULL, 'outside', %s)"
        % (past_ts(day + 1, 4), past_ts(day + 1, 5)), db)

    def in_window(d, hour, minute=0):
        return frm <= past_ms(day + d, hour, minute) < to

    def check_all(extra_closed=0, extra_pushed=0):
        r = get_report(frm=frm, to=to)
        # The middle day is rolled up and used.
        rolled = harness.psql1(
            "SELECT count(*) FROM gridd_report_ranges("
            "timestamptz 'epoch' + %d * interval '1 ms',"
            " timestamptz 'epoch' + %d * interval '1 ms') WHERE rolled"
            % (frm, to), db)
        assert rolled == "1", rolled
        # Against the plan.
        t = dept_totals(r)
        for dept in ("civil", "urban"):
            items = [p for p in plan if p[0] == dept and
                     in_window(p[1], p[2])]
            extra = extra_pushed if dept == "civil" else 0
            # + the one refusal of each department (rr1, rr2).
            assert t[dept].pushed == len(items) + extra + 1, \
                (dept, t[dept])
            closed = sum(1 for p in items if p[3]) + \
                (extra_closed if dept == "civil" else 0)
            assert t[dept].closed == closed, (dept, t[dept].closed, closed)
        w = {x.worker_id: x for x in r.workers}
        offers = [i for i, p in enumerate(plan) if in_window(p[1], p[2])]
        for wid, par in (("WSQL", 1), ("WRA", 0)):
            mine = [i for i in offers if i % 2 == par]
            assert w[wid].offered == len(mine), (wid, w[wid])
            assert w[wid].resolved == sum(1 for i in mine if i % 4), wid
        # Against the same functions computed from the stored rows alone.
        for community in (None, "RA", "RB"):
            compare(sql_report(db, "gridd_report_departments", frm, to,
                               community),
                    sql_report(db, "gridd_report_departments", frm, to,
                               community, live=True), (0, 2), {17})
            compare(sql_report(db, "gridd_report_communities", frm, to,
                               community),
                    sql_report(db, "gridd_report_communities", frm, to,
                               community, live=True), (0,), set())
            compare(sql_report(db, "gridd_report_workers", frm, to,
                               community),
                    sql_report(db, "gridd_report_workers", frm, to,
                               community, live=True), (0,), {7, 8})
        return r

    check_all()
    # A change to a rolled-up day shows at once: an incident closes, and
    # a push is written into that day afterwards.
    mid = [i for i, p in enumerate(plan) if p[1] == 1 and p[0] == "civil"
           and not p[3]][0]
    harness.psql("UPDATE incidents SET status = 'closed', closed_at = "
                 "created_at + interval '25 minutes' WHERE incident_id = %d"
                 % ids[mid], db)
    # (In progress: dispatch leaves it alone, so nothing else changes
    # that day meanwhile.)
    past_incident(db, "civil", "ru-late", "elderly_visit", "RA",
                  past_ts(day + 1, 12), "in_progress")
    check_all(extra_closed=1, extra_pushed=1)
    # Both were noticed and rolled up afresh by the report's refresh.
    assert harness.psql1("SELECT count(*) FROM report_dirty WHERE day = "
                         "gridd_report_day(%s)" % past_ts(day + 1), db) \
        == "0"
    # The calendar month and year that hold those days are summed from
    # their days and months: a month (31 days) and a year (365) piece.
    for mfrom, mto, span in ((983404800000, 986083200000, 31),
                             (978307200000, 1009843200000, 365)):
        r = get_report(frm=mfrom, to=mto)
        assert dept_totals(r)["civil"].pushed > 0
        pieces = harness.psql(
            "SELECT span FROM gridd_report_ranges("
            "timestamptz 'epoch' + %d * interval '1 ms',"
            " timestamptz 'epoch' + %d * interval '1 ms') WHERE rolled"
            % (mfrom, mto), db)
        assert pieces == [[str(span)]], pieces
        for fn, keys, meds in (("gridd_report_departments", (0, 2), {17}),
                               ("gridd_report_communities", (0,), set()),
                               ("gridd_report_workers", (0,), {7, 8})):
            for community in (None, "RA"):
                compare(sql_report(db, fn, mfrom, mto, community),
                        sql_report(db, fn, mfrom, mto, community,
                                   live=True), keys, meds)


if __name__ == "__main__":
    harness.main(globals())

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
    # The feed refuses an item before it locates it, so a refused item
    # belongs to a community only when its rejection row says so.
    located = {r[0]: r[1] for r in harness.psql(
        "SELECT ext_id, coalesce(community_id, '') FROM rejections",
        _state["db"])}
    for ext, p in plan.items():
        where = p["community"]
        if p["outcome"] == "REJECTED":
            where = located.get(ext) or None
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


if __name__ == "__main__":
    harness.main(globals())

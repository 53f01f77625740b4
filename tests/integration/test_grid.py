"""test_grid.py - the grid through the daemon: gridctl imports, partitioning
in gridd, stability, a reload that changes one community's grid keys (with
a query timeout partitioning must not be bound by), imports that leave
cells stale and the repartition they queue, GetGrid, the SVG map, a
responsive loop during a partition, and roles.

Real database and daemon; the Liechtenstein sample from GRIDD_SAMPLE_DIR
(buildings.csv, buildings.geojson, municipalities.geojson) or else
data/liechtenstein/*.xz decompressed into a temporary folder. The tests
run in order and share one daemon.
"""

import json
import lzma
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import xml.dom.minidom

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import expect_body, expect_error  # noqa: E402

harness.skip_unless_pg()

COMMUNITIES = 11
BUILDINGS = 13993
MIN_HH, TARGET_HH, MAX_HH = 300, 400, 500
NEIGHBOUR_M = 30
CHANGED = "Vaduz"          # the community whose target the reload changes
REPARTITION_DELAY_S = 1    # [grid] repartition_delay_s here
S = {}


# ---- helpers ----------------------------------------------------------------

def sample_dir():
    d = os.environ.get("GRIDD_SAMPLE_DIR")
    names = ("municipalities.geojson", "buildings.csv", "buildings.geojson")
    if d and all(os.path.exists(os.path.join(d, n)) for n in names):
        return d
    out = harness.tmppath("sample")
    os.makedirs(out, exist_ok=True)
    for n in names:
        src = os.path.join(harness.SOURCE_DIR, "data", "liechtenstein",
                           n + ".xz")
        with lzma.open(src, "rb") as f, open(os.path.join(out, n), "wb") as g:
            g.write(f.read())
    return out


def gridctl(*args, check=True, timeout=300, role="admin", principal=None,
            secret=None):
    env = dict(os.environ)
    env.update(GRIDD_ADDR="127.0.0.1:%d" % S["conf"].api_port,
               GRIDD_ROLE=role, GRIDD_ID=principal or harness.ADMIN_ID,
               GRIDD_SECRET=secret or harness.ADMIN_KEY)
    r = subprocess.run([harness.GRIDCTL_BIN] + list(args), env=env,
                       capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError("gridctl %s: exit %d\n%s\n%s\n%s"
                             % (" ".join(args), r.returncode, r.stdout,
                                r.stderr, S["gridd"].log_tail()))
    return r


def import_json(*args, **kw):
    r = gridctl("--json", "import", *args, **kw)
    return json.loads(r.stdout.strip().splitlines()[-1]), r


def sql(q):
    return harness.psql(q, S["db"])


def current_cells():
    """{cell_id: (community, kind, households, buildings, valid_from)}"""
    return {r[0]: (r[1], r[2], int(r[3]), int(r[4]), r[5]) for r in sql(
        "SELECT cell_id, community_id, kind, households, buildings, "
        "valid_from FROM cells WHERE valid_to IS NULL")}


def partition_all():
    r = gridctl("partition", "--all", timeout=600)
    m = re.search(r"^(\d+) cells, (\d+) buildings moved$", r.stdout, re.M)
    assert m, r.stdout
    return int(m.group(1)), int(m.group(2)), r.stdout


def explained(report):
    """Cell ids the report explains as out of bounds."""
    return set(re.findall(r"^\S+: cell (\S+) has \d+ households in \d+ "
                          r"buildings, (?:below min|above max) \d+: \S+",
                          report, re.M))


def admin_client():
    c = harness.Client(S["conf"].addr, timeout=30)
    harness.login_admin(c)
    return c


# ---- tests -----------------------------------------------------------------

def test_start():
    S["sample"] = sample_dir()
    S["db"] = harness.fresh_database("gridd_grid")
    S["confpath"] = harness.tmppath("grid.conf")
    S["conf"] = harness.write_config(
        S["confpath"], dbname=S["db"], server__log_level="info",
        grid__repartition_delay_s=str(REPARTITION_DELAY_S))
    S["gridd"] = harness.Gridd(S["conf"]).start()


def test_import_sample():
    path = os.path.join(S["sample"], "municipalities.geojson")
    out, _ = import_json("communities", path)
    assert out["read"] == COMMUNITIES and out["skipped"] == 0, out
    assert out["inserted"] == COMMUNITIES and out["rejected"] == 0, out
    out, _ = import_json("buildings", os.path.join(S["sample"],
                                                   "buildings.csv"))
    assert out["read"] == BUILDINGS and out["inserted"] == BUILDINGS, out
    assert out["rejected"] == 0 and out["requests"] > 1, out  # streamed
    assert sql("SELECT count(*) FROM communities")[0][0] == str(COMMUNITIES)
    assert sql("SELECT count(*) FROM buildings")[0][0] == str(BUILDINGS)


def test_reimport_is_idempotent():
    before = sql("SELECT sum(households), count(*), max(updated_at) "
                 "FROM buildings")
    out, _ = import_json("buildings", os.path.join(S["sample"],
                                                   "buildings.csv"))
    assert out["inserted"] == 0 and out["updated"] == 0, out
    assert out["unchanged"] == BUILDINGS, out
    out, _ = import_json("communities", os.path.join(
        S["sample"], "municipalities.geojson"))
    assert out["unchanged"] == COMMUNITIES and out["inserted"] == 0, out
    assert sql("SELECT sum(households), count(*), max(updated_at) "
               "FROM buildings") == before
    # The footprints: every building updated, none added.
    out, _ = import_json("buildings", os.path.join(S["sample"],
                                                   "buildings.geojson"))
    assert out["updated"] == BUILDINGS and out["inserted"] == 0, out
    assert sql("SELECT count(footprint) FROM buildings")[0][0] == \
        str(BUILDINGS)
    # The points again (the CSV has no footprints): the footprints stay
    # and nothing is written.
    stamp = sql("SELECT max(updated_at) FROM buildings")
    out, _ = import_json("buildings", os.path.join(S["sample"],
                                                   "buildings.csv"))
    assert out["unchanged"] == BUILDINGS and out["updated"] == 0, out
    assert sql("SELECT count(footprint) FROM buildings")[0][0] == \
        str(BUILDINGS)
    assert sql("SELECT max(updated_at) FROM buildings") == stamp


def test_partition_all():
    cells, moved, report = partition_all()
    S["report"] = report
    print(report)
    cur = current_cells()
    assert cells == len(cur) and cells > 0, (cells, len(cur))
    assert moved == 0      # nothing had a cell before
    assert {v[0] for v in cur.values()} == set(
        r[0] for r in sql("SELECT community_id FROM communities"))
    assert sql("SELECT count(*) FROM buildings WHERE cell_id IS NULL"
               )[0][0] == "0"
    # Cell ids: COMMUNITY-NNN (the sample has no 12-digit codes).
    for cid, v in cur.items():
        assert re.fullmatch(re.escape(v[0]) + r"-\d{3}", cid), cid


def test_cells_contiguous():
    comms = [r[0] for r in sql("SELECT community_id FROM communities")]
    for comm in comms:
        lit = "'" + comm.replace("'", "''") + "'"
        rows = sql("SELECT idx, cell_id FROM gridd_partition_buildings(%s)"
                   % lit)
        cell = {int(i): c for i, c in rows}
        edges = [(int(a), int(b)) for a, b in sql(
            "SELECT a, b FROM gridd_partition_edges(%s, %d)"
            % (lit, NEIGHBOUR_M))]
        adj = {i: [] for i in cell}
        for a, b in edges:
            if cell[a] == cell[b]:
                adj[a].append(b)
                adj[b].append(a)
        members = {}
        for i, c in cell.items():
            members.setdefault(c, []).append(i)
        for c, ms in members.items():
            seen = {ms[0]}
            todo = [ms[0]]
            while todo:
                u = todo.pop()
                for v in adj[u]:
                    if v not in seen:
                        seen.add(v)
                        todo.append(v)
            assert len(seen) == len(ms), \
                "cell %s of %s is not contiguous: %d of %d reachable" % (
                    c, comm, len(seen), len(ms))


def test_cells_within_bounds():
    cur = current_cells()
    ok = explained(S["report"])
    comp = [(cid, v[2]) for cid, v in cur.items() if v[1] == "comprehensive"]
    for cid, hh in comp:
        if not (MIN_HH <= hh <= MAX_HH):
            assert cid in ok, "cell %s has %d households and the report " \
                "does not explain it:\n%s" % (cid, hh, S["report"])
    for cid, v in cur.items():
        if v[1] == "dedicated":
            assert v[2] == 0 or cid in ok, (cid, v)
    total = int(sql("SELECT sum(households) FROM buildings")[0][0])
    want = total / TARGET_HH
    assert abs(len(comp) - want) <= 0.1 * want, (len(comp), want)
    # Households per cell add up to the buildings'.
    assert sum(v[2] for v in cur.values()) == total
    hh = sorted(h for _, h in comp)
    print("comprehensive cells %d (households/400 = %.1f), households "
          "min/median/max %d/%d/%d" % (len(comp), want, hh[0],
                                       statistics.median(hh), hh[-1]))


def test_repartition_unchanged_moves_nothing():
    before = current_cells()
    cells, moved, _ = partition_all()
    assert moved == 0, moved
    assert current_cells() == before    # same ids, same valid_from


def test_reload_repartitions_changed_community_only():
    before = current_cells()
    since = S["gridd"].log_size()
    conf = S["conf"]
    conf.set("community." + CHANGED, "target_households", "340")
    conf.set("community." + CHANGED, "min_households", "250")
    # Far below what loading and applying a community's partition takes:
    # partitioning runs under [grid] partition_timeout_s instead.
    conf.set("database", "query_timeout_ms", "100")
    conf.write()
    S["gridd"].reload()
    S["gridd"].wait_log(r"event=repartition scope=reload communities=1 "
                        r"ok=1 failed=0", timeout=120, since=since)
    log = S["gridd"].log_since(since)
    m = re.search(r"event=partition community=%s outcome=ok .* load_ms=(\d+)"
                  r" part_ms=\d+ cpu_ms=\S+ apply_ms=(\d+)" % CHANGED, log)
    assert m, log
    print("reload: %s loaded in %s ms, applied in %s ms (query_timeout_ms "
          "100)" % (CHANGED, m.group(1), m.group(2)))
    conf.set("database", "query_timeout_ms", "20000")
    conf.write()
    since2 = S["gridd"].log_size()
    S["gridd"].reload()
    S["gridd"].wait_log(r"event=reload outcome=ok", timeout=10, since=since2)
    assert re.search(r"event=partition community=%s outcome=ok fresh=1"
                     % CHANGED, log), log
    assert len(re.findall(r"event=partition community=\S+ outcome=ok",
                          log)) == 1, log
    after = current_cells()
    for cid, v in before.items():
        if v[0] != CHANGED:
            assert after.get(cid) == v, (cid, v, after.get(cid))
    assert {c for c, v in after.items() if v[0] != CHANGED} == \
        {c for c, v in before.items() if v[0] != CHANGED}
    mine_b = {c: v for c, v in before.items() if v[0] == CHANGED}
    mine_a = {c: v for c, v in after.items() if v[0] == CHANGED}
    assert mine_a != mine_b, "the changed community was not repartitioned"
    # The reload's report is in the log; cells out of the new bounds
    # must be explained there.
    report = "\n".join(re.findall(
        r"event=repartition_report scope=reload \| (.*)", log))
    print(report)
    assert CHANGED in report, log
    ok = explained(report)
    comp = {c: v[2] for c, v in mine_a.items() if v[1] == "comprehensive"}
    assert sum(comp.values()) > 0
    for c, h in comp.items():
        assert 250 <= h <= 500 or c in ok, (c, h, report)
    # Ids survive by overlap: most of the old ids are still there.
    assert len(set(mine_a) & set(mine_b)) >= len(mine_b) // 2, \
        (sorted(mine_a), sorted(mine_b))


def wait_import_repartition(since, communities):
    """Waits for the repartition an import queued; returns its log."""
    S["gridd"].wait_log(r"event=repartition scope=import communities=%d "
                        r"ok=%d failed=0" % (communities, communities),
                        timeout=120, since=since)
    return S["gridd"].log_since(since)


def test_import_queues_repartition():
    """A building moved to another community and a changed community
    polygon leave cells stale: the import reply names the communities and
    gridd repartitions them once the imports settle."""
    row = sql("SELECT building_id, kind, households, coalesce(levels::text, "
              "''), ST_X(geom), ST_Y(geom), area_m2 FROM buildings "
              "WHERE community_id = 'Balzers' AND households > 0 "
              "ORDER BY building_id LIMIT 1")[0]
    bid = row[0]
    path = harness.tmppath("move.csv")
    with open(path, "w") as f:
        f.write("id,community,kind,households,levels,lon,lat,area_m2\n")
        f.write(",".join([bid, "Triesen"] + row[1:]) + "\n")
    since = S["gridd"].log_size()
    out, _ = import_json("buildings", path)
    assert out["updated"] == 1, out
    assert re.search(r"cells stale in 2 communities: Balzers, Triesen; "
                     r"repartition queued", out["report"]), out
    # Moved: no cell until the repartition gives it one.
    assert sql("SELECT coalesce(cell_id, 'none') FROM buildings "
               "WHERE building_id = '%s'" % bid) == [["none"]]
    wait_import_repartition(since, 2)
    cell = sql("SELECT b.cell_id, c.community_id FROM buildings b "
               "JOIN cells c ON c.cell_id = b.cell_id AND c.valid_to IS NULL "
               "WHERE b.building_id = '%s'" % bid)
    assert cell and cell[0][1] == "Triesen", cell
    for comm in ("Balzers", "Triesen"):
        n, in_cells = sql("SELECT (SELECT count(*) FROM buildings WHERE "
                          "community_id = '%s'), (SELECT sum(buildings) "
                          "FROM cells WHERE community_id = '%s' AND "
                          "valid_to IS NULL)" % (comm, comm))[0]
        assert n == in_cells, (comm, n, in_cells)
    # Imported again unchanged: nothing stale, nothing queued.
    out, _ = import_json("buildings", path)
    assert out["unchanged"] == 1 and "stale" not in out.get("report", ""), \
        out

    # Planken's polygon, its coordinates rounded to 4 decimals (~10 m).
    with open(os.path.join(S["sample"], "municipalities.geojson")) as f:
        fc = json.load(f)
    feat = [x for x in fc["features"]
            if x["properties"]["name"] == "Planken"][0]

    def rounded(v):
        return [rounded(x) for x in v] if isinstance(v, list) else \
            round(v, 4)
    feat["geometry"]["coordinates"] = rounded(
        feat["geometry"]["coordinates"])
    path = harness.tmppath("planken.geojson")
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection", "features": [feat]}, f)
    since = S["gridd"].log_size()
    out, _ = import_json("communities", path)
    assert out["updated"] == 1, out
    assert "cells stale in 1 community: Planken" in out["report"], out
    wait_import_repartition(since, 1)
    # The cells tile the new polygon.
    diff = float(sql("SELECT ST_Area(ST_SymDifference(m.geom, (SELECT "
                     "ST_Union(c.geom) FROM cells c WHERE c.community_id = "
                     "m.community_id AND c.valid_to IS NULL))::geography) "
                     "FROM communities m WHERE community_id = 'Planken'"
                     )[0][0])
    assert diff < 1.0, diff

    # Every building of Planken moved to Triesenberg: Planken's cells are
    # retired, Triesenberg's take them in.
    rows = sql("SELECT building_id, kind, households, coalesce(levels::text, "
               "''), ST_X(geom), ST_Y(geom), coalesce(area_m2::text, '') "
               "FROM buildings WHERE community_id = 'Planken'")
    assert len(rows) > 100, len(rows)
    path = harness.tmppath("planken.csv")
    with open(path, "w") as f:
        f.write("id,community,kind,households,levels,lon,lat,area_m2\n")
        for r in rows:
            f.write(",".join([r[0], "Triesenberg"] + r[1:]) + "\n")
    since = S["gridd"].log_size()
    out, _ = import_json("buildings", path)
    assert out["updated"] == len(rows), out
    assert "Planken, Triesenberg" in out["report"], out
    log = wait_import_repartition(since, 2)
    assert "Planken: no buildings left, its cells are retired" in log, log
    assert sql("SELECT count(*) FROM cells WHERE community_id = 'Planken' "
               "AND valid_to IS NULL") == [["0"]]
    assert sql("SELECT count(*) FROM buildings WHERE community_id = "
               "'Triesenberg' AND cell_id IS NULL") == [["0"]]


def test_import_layer_crosswalk():
    # Two squares of a department's own grid: one inside Vaduz's first
    # comprehensive cell area, one across the Vaduz/Schaan boundary.
    def square(lon, lat, d):
        return {"type": "Polygon", "coordinates": [[
            [lon, lat], [lon + d, lat], [lon + d, lat + d], [lon, lat + d],
            [lon, lat]]]}
    lon, lat = (float(x) for x in sql(
        "SELECT ST_X(c), ST_Y(c) FROM (SELECT ST_PointOnSurface(geom) c "
        "FROM cells WHERE valid_to IS NULL AND community_id = 'Vaduz' "
        "AND kind = 'comprehensive' ORDER BY households DESC LIMIT 1) x")[0])
    blon, blat = (float(x) for x in sql(
        "SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_PointOnSurface("
        "ST_Intersection(ST_Boundary(a.geom), ST_Buffer(b.geom, 0.0001))) p "
        "FROM communities a, communities b WHERE a.community_id = 'Vaduz' "
        "AND b.community_id = 'Schaan') x")[0])
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": "CIV-0001"},
         "geometry": square(lon - 0.0002, lat - 0.0002, 0.0004)},
        {"type": "Feature", "properties": {"code": "CIV-0002"},
         "geometry": square(blon - 0.01, blat - 0.01, 0.02)},
        {"type": "Feature", "properties": {"code": ""},
         "geometry": square(lon, lat, 0.001)},
    ]}
    path = harness.tmppath("layer.geojson")
    with open(path, "w") as f:
        json.dump(fc, f)
    out, r = import_json("layer", "civil", path)
    assert out["skipped"] == 1 and out["inserted"] == 2, (out, r.stderr)
    assert "feature 3: code" in r.stderr, r.stderr
    assert "CIV-0002" in out["report"] and "communities" in out["report"], \
        out["report"]
    rows = sql("SELECT dept_code, count(*), bool_or(dominant) FROM crosswalk "
               "WHERE department_id = 'civil' GROUP BY dept_code "
               "ORDER BY dept_code")
    assert rows[0][0] == "CIV-0001" and rows[0][2] == "t", rows
    assert rows[1][0] == "CIV-0002" and int(rows[1][1]) > 1, rows
    # Unknown department: refused.
    r = gridctl("import", "layer", "nobody", path, check=False)
    assert r.returncode == 1 and "NOT_FOUND" in (r.stdout + r.stderr), r


def test_get_grid_geojson():
    with admin_client() as c:
        g = expect_body(c.request("get_grid", community_id="Balzers"),
                        "grid_reply")
        assert len(g.cells) > 0
        for cell in g.cells:
            geom = json.loads(cell.geojson)
            assert geom["type"] in ("Polygon", "MultiPolygon"), geom["type"]
            assert cell.community_id == "Balzers"
            assert cell.kind in ("comprehensive", "dedicated")
        assert sum(cell.buildings for cell in g.cells) == int(sql(
            "SELECT count(*) FROM buildings WHERE community_id = 'Balzers'"
        )[0][0])
        expect_error(c.request("get_grid", community_id="Atlantis"),
                     "NOT_FOUND")
        expect_error(c.request("get_grid", community_id="bad id!"),
                     "BAD_REQUEST")
    path = harness.tmppath("balzers.geojson")
    gridctl("grid", "show", "Balzers", "--geojson", path)
    with open(path) as f:
        fc = json.load(f)
    assert fc["type"] == "FeatureCollection"
    assert len(fc["features"]) == len(g.cells)
    assert all(f["geometry"]["type"] in ("Polygon", "MultiPolygon")
               for f in fc["features"])
    table = gridctl("grid", "show", "Balzers").stdout
    assert "%d cells" % len(g.cells) in table, table


def test_grid_map_svg():
    path = harness.tmppath("vaduz.svg")
    gridctl("grid", "map", "Vaduz", "--svg", path)
    doc = xml.dom.minidom.parse(path)
    svg = doc.documentElement
    assert svg.tagName == "svg"
    paths = svg.getElementsByTagName("path")
    n = len([c for c in current_cells().values() if c[0] == "Vaduz"])
    assert len(paths) >= n, (len(paths), n)
    texts = [t.firstChild.data for t in svg.getElementsByTagName("text")
             if t.firstChild is not None]
    assert any(t.startswith("Vaduz") for t in texts), texts
    assert any(re.fullmatch(r"\d+ k?m", t) for t in texts), texts
    hh = {str(v[2]) for v in current_cells().values()
          if v[0] == "Vaduz" and v[1] == "comprehensive"}
    assert hh <= set(texts), (hh, texts)


def test_ping_answered_during_partition():
    result = {}

    def run():
        result["r"] = gridctl("partition", "--all", timeout=600)

    t = threading.Thread(target=run)
    lat = []
    with admin_client() as c:
        t.start()
        time.sleep(0.3)
        while t.is_alive():
            t0 = time.monotonic()
            expect_body(c.ping(timeout=5), "pong")
            lat.append(time.monotonic() - t0)
            time.sleep(0.02)
    t.join()
    assert result["r"].returncode == 0
    assert len(lat) >= 20, "partition too quick to measure: %d" % len(lat)
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print("pings during partition --all: %d, p50 %.2f ms, max %.2f ms"
          % (len(lat), lat[len(lat) // 2] * 1e3, lat[-1] * 1e3))
    assert p99 < 0.1 and lat[-1] < 0.5, lat[-5:]


def test_wrong_role_forbidden():
    with harness.Client(S["conf"].addr) as c:
        harness.login_department(c)
        for name, fields in (("get_grid", dict(community_id="Vaduz")),
                             ("repartition", dict(community_id="")),
                             ("import_communities", {}),
                             ("import_buildings", {}),
                             ("import_layer", dict(department_id="civil"))):
            expect_error(c.request(name, **fields), "FORBIDDEN")
    r = gridctl("partition", "Vaduz", check=False, role="department",
                principal="civil", secret=harness.DEPARTMENTS["civil"][1])
    assert r.returncode == 1 and "FORBIDDEN" in (r.stdout + r.stderr), r


def test_bad_rows_reported_and_skipped():
    head = "id,community,kind,households,levels,lon,lat,area_m2\n"
    rows = [
        "t-good-1,Vaduz,residential,3,2,9.5209,47.1410,120\n",   # line 2
        "t-bad-hh,Vaduz,residential,abc,2,9.5210,47.1411,120\n",  # line 3
        "t-bad-comm,Atlantis,residential,3,2,9.5211,47.1412,1\n",  # line 4
        "t-bad-lat,Vaduz,residential,3,2,9.5212,95.0,120\n",      # line 5
        "t-good-2,Vaduz,commercial,0,,9.5213,47.1413,300\n",      # line 6
    ]
    path = harness.tmppath("bad.csv")
    with open(path, "w") as f:
        f.write(head + "".join(rows))
    out, r = import_json("buildings", path)
    assert out["read"] == 5 and out["skipped"] == 2, out     # lines 3, 5
    assert out["inserted"] == 2 and out["rejected"] == 1, out  # line 4
    err = r.stderr
    assert "bad.csv:3: households" in err, err
    assert "bad.csv:5: lon/lat" in err, err
    assert re.search(r"line 4: t-bad-comm: community: unknown", err), err
    assert sql("SELECT count(*) FROM buildings WHERE building_id IN "
               "('t-good-1', 't-good-2')")[0][0] == "2"

    # --strict: a bad line refuses the file before anything is sent...
    strict_rows = [x.replace("t-good", "t-strict") for x in rows]
    with open(path, "w") as f:
        f.write(head + "".join(strict_rows))
    r = gridctl("import", "buildings", "--strict", path, check=False)
    assert r.returncode != 0 and "nothing imported" in r.stderr, r
    # ...and a row only the server rejects refuses the whole request.
    with open(path, "w") as f:
        f.write(head + strict_rows[0] + strict_rows[2] + strict_rows[4])
    r = gridctl("import", "buildings", "--strict", path, check=False)
    assert r.returncode == 1 and "refused" in r.stderr, r
    assert sql("SELECT count(*) FROM buildings WHERE building_id LIKE "
               "'t-strict%'")[0][0] == "0"


def test_stop():
    S["gridd"].stop(timeout=10)


if __name__ == "__main__":
    harness.main(globals())

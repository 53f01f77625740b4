"""test_faults.py - what survives a crash, a database outage and hostile
clients.

- SIGKILL of gridd under load: every acknowledged push and every
  acknowledged worker upsert is in the database after the restart, and
  replays answer DUPLICATE with the first answer's incident id.
- SIGKILL of gridd while workers accept, start, resolve, decline and
  ignore the offers of incidents a department pushes: every acknowledged
  push and worker action is stored once after the restart (replays answer
  Ok and change nothing), the department heard of every acknowledged
  acceptance, and the offers pending at the kill expire on time, each
  fired once by the restarted process.
- PostgreSQL stopped for 10 s under load (a private cluster started by this
  test, never the shared one): gridd stays up, database-backed requests
  (logins, a department's pushes, a worker's action) get UNAVAILABLE
  within their timeout, Ping keeps working, /healthz says 503, everything
  recovers by itself when the database returns, no acknowledged push is
  lost, and the worker's action sent again takes effect once.
- PostgreSQL hung (every process stopped with SIGSTOP: nothing closes,
  nothing answers): pushes and workers' actions queued behind each other
  in gridd are each answered UNAVAILABLE within their timeout, counted
  from their arrival, not a multiple of it.
- Slow and malicious clients (a client that never reads, one byte per
  second, 10,000 connections opened and dropped, a login flood): another
  client's Ping latency stays within an order of magnitude of the quiet
  figure and the daemon's memory stays bounded.
- Out of descriptors: gridd sizes max_connections below its descriptor
  limit, and pauses accepting on EMFILE instead of spinning or leaving
  clients hanging.

Where PushIncidents is not implemented yet the push parts are skipped by
name and the rest (worker upserts, logins, pings) still runs.
"""

import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import dispatch_common as dc  # noqa: E402
from harness import (Client, Closed, Gridd, Skip, Timeout, body,  # noqa: E402
                     expect_body, login_admin, login_department, pb,
                     write_config)

harness.skip_unless_pg()

# A square community of 2 km around a point in Vaduz, 25 buildings, one
# cell: enough for pushes to be located.
LON0, LAT0 = 9.52, 47.14
SIDE = 0.02
COMMUNITY = "faults"
CELL = "faults-001"


def square():
    return json.dumps({"type": "Polygon", "coordinates": [[
        [LON0, LAT0], [LON0 + SIDE, LAT0], [LON0 + SIDE, LAT0 + SIDE],
        [LON0, LAT0 + SIDE], [LON0, LAT0]]]})


def load_grid(dbname, run=harness.psql):
    """One community, 25 buildings and one cell, through the grid SQL's own
    import and apply functions (run: the psql of the test server, or of a
    private cluster)."""
    ids = ["fb%02d" % i for i in range(25)]
    lons = [LON0 + SIDE * (0.1 + 0.8 * (i % 5) / 4) for i in range(25)]
    lats = [LAT0 + SIDE * (0.1 + 0.8 * (i // 5) / 4) for i in range(25)]

    def arr(v):
        return "ARRAY[%s]" % ",".join(
            repr(x) if isinstance(x, float) else "'%s'" % x for x in v)
    run(
        "SELECT * FROM gridd_import_communities(ARRAY['%s'], ARRAY['%s'], "
        "NULL, ARRAY[$g$%s$g$], NULL)" % (COMMUNITY, COMMUNITY, square()),
        dbname)
    run(
        "SELECT * FROM gridd_import_buildings(%s, %s, %s, %s, NULL, %s, %s, "
        "NULL, NULL, NULL)" % (arr(ids), arr([COMMUNITY] * 25),
                               arr(["residential"] * 25), "ARRAY[%s]"
                               % ",".join(["20"] * 25), arr(lons),
                               arr(lats)), dbname)
    run(
        "SELECT * FROM gridd_apply_partition('%s', %s, %s, ARRAY['%s'], "
        "ARRAY['comprehensive'])" % (COMMUNITY, arr(ids),
                                     arr([CELL] * 25), CELL), dbname)


def random_point(rng):
    return (LON0 + SIDE * (0.05 + 0.9 * rng.random()),
            LAT0 + SIDE * (0.05 + 0.9 * rng.random()))


def incident(ext_id, lon, lat, category="CG01"):
    m = pb.IncidentIn()
    m.ext_id = ext_id
    m.category = category
    m.occurred_at = int(time.time() * 1000)
    m.lon = lon
    m.lat = lat
    m.description = "fault test"
    m.severity = 2
    return m


def not_implemented(env):
    return (body(env) == "error" and env.error.code == pb.UNAVAILABLE
            and "not implemented" in env.error.message)


def push_supported(addr, dept="urban"):
    with Client(addr) as c:
        login_department(c, dept)
        env = c.request("push_incidents", incidents=[
            incident("probe-%d" % os.getpid(), LON0 + SIDE / 2,
                     LAT0 + SIDE / 2)])
        if not_implemented(env):
            return False
        expect_body(env, "push_incidents_reply")
        return True


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def pct(v, p):
    v = sorted(v)
    if not v:
        return 0.0
    return v[min(len(v) - 1, max(0, int(len(v) * p / 100.0 + 0.999) - 1))]


def start(cfg, **kw):
    d = Gridd(cfg, **kw)
    d.start()
    return d


# ---- SIGKILL under load -----------------------------------------------------

def test_sigkill_under_load():
    cfg = write_config(harness.tmppath("kill.conf"),
                       database__pool_size=4, server__log_level="info")
    d = start(cfg)
    load_grid(cfg.dbname)
    pushes = push_supported(cfg.addr)
    stop = threading.Event()
    lock = threading.Lock()
    acked_push = []      # (dept, ext_id, incident_id, lon, lat)
    acked_upsert = []    # (worker_id, name)
    errors = []

    def pusher(dept, seed):
        rng = random.Random(seed)
        n = 0
        try:
            with Client(cfg.addr, timeout=10) as c:
                login_department(c, dept)
                while not stop.is_set():
                    items = []
                    for _ in range(20):
                        lon, lat = random_point(rng)
                        items.append(incident("%s-k-%d-%d" % (dept, seed, n),
                                              lon, lat))
                        n += 1
                    env = c.request("push_incidents", incidents=items)
                    if body(env) != "push_incidents_reply":
                        continue
                    with lock:
                        for it, r in zip(items, env.push_incidents_reply
                                         .results):
                            if r.outcome in (r.ACCEPTED, r.MERGED,
                                             r.DUPLICATE):
                                acked_push.append((dept, it.ext_id,
                                                   r.incident_id, it.lon,
                                                   it.lat))
        except (Closed, Timeout, OSError):
            pass
        except Exception as e:  # reported by the main thread
            errors.append(repr(e))

    def upserter():
        n = 0
        try:
            with Client(cfg.addr, timeout=10) as c:
                login_admin(c)
                while not stop.is_set():
                    wid = "kw%05d" % n
                    name = "Worker %d" % n
                    env = c.request("upsert_worker", worker_id=wid,
                                    name=name, password="pw-%d-secret" % n,
                                    community_id=COMMUNITY, cell_ids=[CELL],
                                    max_open=5)
                    if body(env) == "ok":
                        with lock:
                            acked_upsert.append((wid, name))
                    n += 1
        except (Closed, Timeout, OSError):
            pass
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=upserter)]
    if pushes:
        threads += [threading.Thread(target=pusher, args=(dept, i))
                    for i, dept in enumerate(["civil", "urban", "urban"])]
    for t in threads:
        t.start()
    time.sleep(2.0)
    d.proc.send_signal(signal.SIGKILL)
    d.wait_exit(10)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert acked_upsert, "no worker upsert was acknowledged before the kill"
    if pushes:
        assert acked_push, "no push was acknowledged before the kill"

    d = start(cfg)
    # Every acknowledged upsert is there.
    got = dict(harness.psql("SELECT worker_id, name FROM workers "
                            "WHERE worker_id LIKE 'kw%'", cfg.dbname))
    lost = [w for w, name in acked_upsert if got.get(w) != name]
    assert not lost, "acknowledged upserts lost: %s" % lost[:5]
    if not pushes:
        d.stop()
        raise Skip("PushIncidents not implemented yet: checked %d "
                   "acknowledged worker upserts only" % len(acked_upsert))
    rows = harness.psql("SELECT source_id, ext_id, incident_id FROM "
                        "incident_sources WHERE source_kind = 'department'",
                        cfg.dbname)
    stored = {(r[0], r[1]): int(r[2]) for r in rows}
    lost = [(dept, ext) for dept, ext, iid, _, _ in acked_push
            if stored.get((dept, ext)) != iid]
    assert not lost, "%d of %d acknowledged pushes lost or changed: %s" % (
        len(lost), len(acked_push), lost[:5])
    # Replays answer DUPLICATE with the first answer's incident id.
    by_dept = {}
    for dept, ext, iid, lon, lat in acked_push:
        by_dept.setdefault(dept, []).append((ext, iid, lon, lat))
    for dept, items in by_dept.items():
        with Client(cfg.addr, timeout=30) as c:
            login_department(c, dept)
            for i in range(0, len(items), 200):
                part = items[i:i + 200]
                env = c.request("push_incidents", incidents=[
                    incident(ext, lon, lat) for ext, _, lon, lat in part])
                res = expect_body(env, "push_incidents_reply").results
                assert len(res) == len(part)
                for (ext, iid, _, _), r in zip(part, res):
                    assert r.outcome == r.DUPLICATE and \
                        r.incident_id == iid, (ext, iid, r)
    d.stop()


# ---- SIGKILL under dispatch load -------------------------------------------

# Where an assignment is after each action, in the order a worker takes it.
AFTER = {"ACCEPT": "accepted", "START": "in_progress", "RESOLVE": "resolved",
         "DECLINE": "declined"}
RANK = {"offered": 0, "accepted": 1, "in_progress": 2, "resolved": 3}


def test_sigkill_under_dispatch_load():
    """Workers accept, start, resolve, decline or ignore their offers while
    a department pushes incidents for them, and gridd is killed: after the
    restart every acknowledged push and worker action is stored (each
    action once, its replay answers Ok and changes nothing), the
    department's events of the acknowledged acceptances are there, no
    incident has two live offers, and the offers left pending at the kill
    expire on time, fired by the restarted process."""
    offer_timeout_s = 5
    cfg = write_config(harness.tmppath("killd.conf"),
                       server__log_level="info",
                       dispatch__offer_timeout_s=offer_timeout_s,
                       dispatch__max_offers=3, dispatch__merge_radius_m=0,
                       dispatch__scan_interval_s=1)
    db = cfg.dbname
    d = start(cfg)
    tag = dc.unique("kd")
    cells = dc.make_community(db, tag)
    workers = ["%s-w%d" % (tag, i) for i in range(6)]
    with dc.admin_client(cfg.addr) as admin:
        for i, w in enumerate(workers):
            # Primary cell i % 3, the other two as backups.
            mine = cells[i % 3:] + cells[:i % 3]
            dc.upsert_worker(admin, w, tag, mine, max_open=1000)
    stop = threading.Event()
    lock = threading.Lock()
    acked_push = []      # (ext_id, incident_id, lon, lat)
    acked_act = []       # (worker, assignment_id, action, key)
    offers = []          # (worker, assignment_id, incident_id)
    errors = []

    def worker_client(w):
        # Long timeouts: under sanitizers a busy daemon answers slowly,
        # and a timeout here would end the worker's part unseen.
        c = Client(cfg.addr, timeout=30)
        expect_body(c.login("WORKER", w, dc.WORKER_PASSWORD), "login_reply")
        return c

    def worker(w, seed):
        rng = random.Random(seed)
        n = 0
        try:
            c = worker_client(w)
            with c:
                dc.check_in(c, True)
                while not stop.is_set():
                    try:
                        env = c.recv_push(timeout=0.2)
                    except Timeout:
                        continue
                    if body(env) != "assignment_offer":
                        continue
                    o = env.assignment_offer
                    with lock:
                        offers.append((w, o.assignment_id, o.incident_id))
                    r = rng.random()
                    if r < 0.2:
                        continue            # left to expire
                    plan = (["DECLINE"] if r < 0.4 else
                            ["ACCEPT", "START", "RESOLVE"])
                    for action in plan:
                        key = "%s-k%d" % (w, n)
                        n += 1
                        env = dc.update(c, o.assignment_id, action, key=key)
                        if body(env) != "ok":
                            # Only an offer that expired first (CONFLICT)
                            # may refuse an action; not acknowledged.
                            if (body(env) != "error" or env.error.code !=
                                    pb.CONFLICT):
                                errors.append("%s %s: %s" % (
                                    w, action, str(env).strip()))
                            break
                        with lock:
                            acked_act.append((w, o.assignment_id, action,
                                              key))
        except (Closed, OSError):
            pass                    # the kill
        except Exception as e:  # reported by the main thread
            errors.append("%s: %r" % (w, e))

    def pusher():
        rng = random.Random(7)
        n = 0
        try:
            with Client(cfg.addr, timeout=10) as c:
                login_department(c, "civil")
                while not stop.is_set():
                    items = []
                    for _ in range(5):
                        lon, lat = dc.cell_point(tag, rng.randint(1, 3))
                        items.append(incident("kd-%d" % n, lon, lat,
                                              category="MZ01"))
                        n += 1
                    env = c.request("push_incidents", incidents=items)
                    if body(env) != "push_incidents_reply":
                        continue
                    with lock:
                        for it, r in zip(items, env.push_incidents_reply
                                         .results):
                            if r.outcome in (r.ACCEPTED, r.DUPLICATE):
                                acked_push.append((it.ext_id, r.incident_id,
                                                   it.lon, it.lat))
                    time.sleep(0.05)
        except (Closed, Timeout, OSError):
            pass
        except Exception as e:
            errors.append("pusher: %r" % (e,))

    threads = [threading.Thread(target=worker, args=(w, i))
               for i, w in enumerate(workers)]
    threads.append(threading.Thread(target=pusher))
    for t in threads:
        t.start()
    # Until the workers have acted on a fair number of offers (longer under
    # sanitizers), at most 20 s.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if (len(acked_act) >= 40 and len(offers) >= 60) or errors:
                break
        time.sleep(0.1)
    d.kill()			# SIGKILL
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert acked_push, "no push was acknowledged before the kill"
    assert any(a == "RESOLVE" for _, _, a, _ in acked_act) and \
        any(a == "DECLINE" for _, _, a, _ in acked_act), \
        "too few worker actions before the kill: %s" % acked_act
    # A statement sent before the kill runs to its end in its backend and
    # may commit; look at the database once the dead process's sessions
    # have ended.
    pid = d.proc.pid
    dc.wait_for(lambda: harness.psql1(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name "
        "LIKE 'gridd %d %%'" % pid, db) == "0",
        timeout=10, what="the killed daemon's sessions to end")
    pending = dict((int(a), float(e)) for a, e in harness.psql(
        "SELECT assignment_id, extract(epoch FROM expires_at) FROM "
        "assignments WHERE community_id = '%s' AND state = 'offered'"
        % tag, db))
    log_before = d.log_size()

    d.start()
    restarted = time.time()
    # Every acknowledged push is stored, with the incident id answered.
    stored = dict((r[0], int(r[1])) for r in harness.psql(
        "SELECT ext_id, incident_id FROM incident_sources WHERE "
        "source_kind = 'department' AND source_id = 'civil'", db))
    lost = [(e, i) for e, i, _, _ in acked_push if stored.get(e) != i]
    assert not lost, "%d of %d acknowledged pushes lost: %s" % (
        len(lost), len(acked_push), lost[:5])
    # Every acknowledged action is stored once, for its assignment.
    acts = dict(((r[0], r[1]), (int(r[2]), r[3])) for r in harness.psql(
        "SELECT worker_id, idempotency_key, assignment_id, action FROM "
        "assignment_actions WHERE community_id = '%s'" % tag, db))
    lost = [a for a in acked_act
            if acts.get((a[0], a[3])) != (a[1], a[2].lower())]
    assert not lost, "%d of %d acknowledged actions lost: %s" % (
        len(lost), len(acked_act), lost[:5])
    # Each assignment is at least as far as its last acknowledged action
    # (a later one may have committed without its reply), and the
    # department heard of each acknowledged acceptance.
    state = dict((int(r[0]), (r[1], int(r[2]))) for r in harness.psql(
        "SELECT assignment_id, state, incident_id FROM assignments WHERE "
        "community_id = '%s'" % tag, db))
    last = {}
    for _, aid, action, _ in acked_act:
        last[aid] = action
    wrong = []
    for aid, action in last.items():
        st = state[aid][0]
        want = AFTER[action]
        if (st != want if action == "DECLINE" else
                RANK.get(st, -1) < RANK[want]):
            wrong.append((aid, action, st))
    assert not wrong, "assignments behind their acknowledged actions: %s" % (
        wrong[:5],)
    heard = set(int(r[0]) for r in harness.psql(
        "SELECT incident_id FROM events WHERE community_id = '%s' AND "
        "department_id = 'civil' AND status = 'accepted'" % tag, db))
    missing = sorted(set(state[aid][1] for _, aid, a, _ in acked_act
                         if a == "ACCEPT") - heard)
    assert not missing, "acceptances the department never heard of: %s" % (
        missing[:5],)
    # Replayed after the restart (an offline phone resending its queue):
    # Ok, each known as a replay, and nothing changes.
    by_worker = {}
    for w, aid, action, key in acked_act:
        by_worker.setdefault(w, []).append((aid, action, key))
    log_restart = d.log_size()
    for w, items in by_worker.items():
        with worker_client(w) as c:
            for aid, action, key in items:
                expect_body(dc.update(c, aid, action, key=key), "ok")
    replays = len(re.findall(r"event=update_assignment request_id=\d+ "
                             r"outcome=replay ", d.log_since(log_restart)))
    assert replays == len(acked_act), \
        "%d of %d replays taken as replays" % (replays, len(acked_act))
    after = dict((int(r[0]), r[1]) for r in harness.psql(
        "SELECT assignment_id, state FROM assignments WHERE "
        "community_id = '%s'" % tag, db))
    changed = [a for a in last if after[a] != state[a][0]]
    assert not changed, "replays changed assignments: %s" % changed[:5]
    # The offers pending at the kill expire, fired after the restart, by
    # the time they are due (and a scan interval, and slack for slow
    # builds).
    # (Some offer is always pending: a fifth of them are ignored, and
    # the offers of the last pushes had no answer yet.)
    assert pending, "no offer was pending at the kill"
    due = max(max(pending.values()), restarted) + 1 + 20
    ids = ",".join(map(str, pending))
    left = lambda: harness.psql1(  # noqa: E731
        "SELECT count(*) FROM assignments WHERE assignment_id IN (%s) "
        "AND state = 'offered'" % ids, db)
    while left() != "0" and time.time() < due:
        time.sleep(0.2)
    assert left() == "0", "offers pending at the kill never expired"
    assert harness.psql1(
        "SELECT count(*) FROM assignments WHERE assignment_id IN (%s) "
        "AND state = 'expired'" % ids, db) == str(len(pending))
    # Expired by the restarted process, each once.
    fired = collections.Counter(int(m) for m in re.findall(
        r"event=offer_expired incident=\d+ assignment=(\d+)",
        d.log_since(log_before)))
    assert all(fired[a] == 1 for a in pending), (pending, fired)
    # No incident offered twice at once: the database itself refuses a
    # second live assignment, whatever the processes do, so what is
    # checked is that the rule is there.
    assert harness.psql1(
        "SELECT indisunique AND indisvalid AND pg_get_expr(indpred, "
        "indrelid) LIKE '%%offered%%accepted%%in_progress%%' FROM pg_index "
        "WHERE indexrelid = 'assignments_one_live_idx'::regclass", db) == \
        "t"
    print("dispatch kill: %d incidents pushed, %d offers, %d worker "
          "actions acknowledged before the kill; %d offers pending at the "
          "kill expired after the restart" % (
              len(acked_push), len(offers), len(acked_act), len(pending)))
    d.stop()


# ---- PostgreSQL stopped under load ---------------------------------------------

PG_BIN = "/usr/lib/postgresql/15/bin"


class PrivatePG:
    """A throwaway cluster of this test's own: stopping it touches nobody
    else's database. As root, the server runs as the postgres user."""

    def __init__(self):
        if not os.path.exists(os.path.join(PG_BIN, "initdb")):
            raise Skip("PostgreSQL server binaries not found")
        self.dir = os.path.join("/tmp", "gridd-faults-%d-%d" % (
            os.getpid(), random.randrange(1 << 30)))
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "run")
        os.makedirs(self.sock)
        os.chmod(self.dir, 0o755)
        self.as_pg = []
        if os.getuid() == 0:
            self.as_pg = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
            shutil.chown(self.sock, "postgres")
        self.port = harness.free_port()
        self._tool("initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                   "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        with open(os.path.join(self.dir, "extra.conf"), "w") as f:
            f.write("fsync = off\nlisten_addresses = ''\n")
        self._tool("sh", "-c", "cat %s/extra.conf >> %s/postgresql.conf"
                   % (self.dir, self.data), tool_dir="")

    def _tool(self, name, *args, tool_dir=PG_BIN, timeout=120):
        prog = os.path.join(tool_dir, name) if tool_dir else name
        r = subprocess.run(self.as_pg + [prog] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise AssertionError("%s failed: %s%s" % (name, r.stdout,
                                                      r.stderr))
        return r.stdout

    def start(self):
        self._tool("pg_ctl", "-D", self.data, "-l",
                   os.path.join(self.dir, "postgres.log"), "-w", "-t", "60",
                   "-o", "-p %d -k %s" % (self.port, self.sock), "start")

    def stop(self):
        self._tool("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t",
                   "60", "stop")

    def destroy(self):
        try:
            self.stop()
        except Exception:
            pass
        shutil.rmtree(self.dir, True)

    def conninfo(self, db):
        return "host=%s port=%d user=postgres dbname=%s" % (self.sock,
                                                             self.port, db)

    def psql(self, sql, db="postgres"):
        r = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v",
                            "ON_ERROR_STOP=1", "-h", self.sock, "-p",
                            str(self.port), "-U", "postgres", "-d", db,
                            "-c", sql], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise AssertionError("psql: %s" % r.stderr)
        return r.stdout


def metrics_text(cfg, timeout=5):
    url = "http://127.0.0.1:%d/metrics" % cfg.http_port
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def healthz(cfg, timeout=5):
    url = "http://127.0.0.1:%d/healthz" % cfg.http_port
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def gridd_on(pg, name, query_timeout_s, **overrides):
    """gridd on database faults of the private cluster pg, answering
    /healthz, with the test grid loaded: (config, daemon)."""
    pg.start()
    pg.psql("CREATE DATABASE faults")
    cfg = write_config(harness.tmppath(name), dbname="faults",
                       database__query_timeout_ms=query_timeout_s * 1000,
                       database__reconnect_max_ms=500,
                       dispatch__offer_timeout_s=600, **overrides)
    cfg.set("database", "conninfo", pg.conninfo("faults")).write()
    d = start(cfg)
    # The pool connects asynchronously after start; give it a moment
    # (longer under sanitizers) before calling the daemon healthy.
    deadline = time.monotonic() + 10
    while healthz(cfg) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert healthz(cfg) == 200, "healthz before the fault"
    load_grid("faults", pg.psql)
    return cfg, d


def on_duty_worker(cfg, wid):
    """Worker wid of the test cell, made by the admin, logged in (with a
    long timeout) and on duty."""
    with Client(cfg.addr) as admin:
        login_admin(admin)
        expect_body(admin.request(
            "upsert_worker", worker_id=wid, name=wid,
            password=dc.WORKER_PASSWORD, community_id=COMMUNITY,
            cell_ids=[CELL], max_open=5), "ok")
    c = Client(cfg.addr, timeout=15)
    expect_body(c.login("WORKER", wid, dc.WORKER_PASSWORD), "login_reply")
    dc.check_in(c, True)
    return c


def test_database_outage():
    """Logins, pushes and a worker's action while the database is down for
    10 s: each is answered UNAVAILABLE within its timeout, nothing
    acknowledged is lost, and the same requests succeed once it is back."""
    QUERY_TIMEOUT_S = 2
    SLOW_S = QUERY_TIMEOUT_S + 1.5
    pg = PrivatePG()
    try:
        cfg, d = gridd_on(pg, "outage.conf", QUERY_TIMEOUT_S,
                          admin_http__health_timeout_ms=500)
        pushes = push_supported(cfg.addr)

        # A worker with an offer, to act on it while the database is down.
        worker = None
        if pushes:
            worker = on_duty_worker(cfg, "ow1")
            with Client(cfg.addr) as urban:
                login_department(urban, "urban")
                env = urban.request("push_incidents", incidents=[incident(
                    "outage-offer", LON0 + SIDE / 3, LAT0 + SIDE / 3,
                    category="CG02")])
                res = expect_body(env, "push_incidents_reply").results[0]
                assert res.outcome == res.ACCEPTED, res
            offer = dc.recv_offer(worker, res.incident_id, timeout=10)

        stop = threading.Event()
        stats = {"slow": [], "unavailable": 0, "ok": 0, "other": [],
                 "ping_fail": 0, "pings": [], "push_unavailable": 0,
                 "push_ok_at": []}
        acked_push = []      # (ext_id, incident_id)
        lock = threading.Lock()

        def answered(what, env, dt):
            """Counts one answer; True when it was not UNAVAILABLE."""
            with lock:
                if dt > SLOW_S:
                    stats["slow"].append((what, dt))
                if body(env) == "error" and env.error.code == pb.UNAVAILABLE:
                    stats["unavailable" if what == "login" else
                          "push_unavailable"] += 1
                    return False
            return True

        def loader():
            # Department logins need the database (session rows); pings
            # do not. Each request must be answered within its timeout.
            while not stop.is_set():
                try:
                    with Client(cfg.addr, timeout=QUERY_TIMEOUT_S + 3) as c:
                        t0 = time.monotonic()
                        env = c.login("DEPARTMENT", "civil",
                                      harness.DEPARTMENTS["civil"][1])
                        if answered("login", env, time.monotonic() - t0):
                            with lock:
                                if body(env) == "login_reply":
                                    stats["ok"] += 1
                                else:
                                    stats["other"].append(str(env).strip())
                        t0 = time.monotonic()
                        c.ping()
                        with lock:
                            stats["pings"].append(time.monotonic() - t0)
                except Timeout:
                    with lock:
                        stats["slow"].append(("login", QUERY_TIMEOUT_S + 3))
                except (Closed, OSError):
                    with lock:
                        stats["ping_fail"] += 1
                time.sleep(0.05)

        def pusher():
            # One department session, logged in before the outage, pushes
            # all along: its pushes need the database, its session not.
            n = 0
            try:
                with Client(cfg.addr, timeout=QUERY_TIMEOUT_S + 3) as c:
                    login_department(c, "urban")
                    rng = random.Random(3)
                    while not stop.is_set():
                        items = []
                        for _ in range(5):
                            lon, lat = random_point(rng)
                            items.append(incident("out-%d" % n, lon, lat))
                            n += 1
                        t0 = time.monotonic()
                        env = c.request("push_incidents", incidents=items)
                        if answered("push", env, time.monotonic() - t0):
                            rep = expect_body(env, "push_incidents_reply")
                            with lock:
                                stats["push_ok_at"].append(time.monotonic())
                                for it, r in zip(items, rep.results):
                                    if r.outcome in (r.ACCEPTED, r.MERGED,
                                                     r.DUPLICATE):
                                        acked_push.append((it.ext_id,
                                                           r.incident_id))
                        time.sleep(0.1)
            except Timeout:
                with lock:
                    stats["slow"].append(("push", QUERY_TIMEOUT_S + 3))
            except Exception as e:  # reported by the main thread
                with lock:
                    stats["other"].append("pusher: %r" % (e,))

        threads = [threading.Thread(target=loader) for _ in range(3)]
        if pushes:
            threads.append(threading.Thread(target=pusher))
        for t in threads:
            t.daemon = True     # never keeps a failed run alive
            t.start()
        try:
            time.sleep(1.5)
            ok_before = stats["ok"]
            pushed_before = len(stats["push_ok_at"])
            pg.stop()
            t_down = time.monotonic()
            saw_503 = False
            act_down = None
            while time.monotonic() - t_down < 10:
                if healthz(cfg, timeout=3) == 503:
                    saw_503 = True
                if worker is not None and act_down is None and \
                        time.monotonic() - t_down > 2:
                    # The worker accepts while the database is down.
                    t0 = time.monotonic()
                    env = dc.update(worker, offer.assignment_id, "ACCEPT",
                                    key="outage-accept")
                    act_down = (env, time.monotonic() - t0)
                time.sleep(0.5)
            unavailable = stats["unavailable"]
            push_unavailable = stats["push_unavailable"]
            assert d.running(), "gridd died while the database was down"
            pg.start()
            t_up = time.monotonic()
            recovered = None
            while time.monotonic() - t_up < 30:
                if healthz(cfg, timeout=3) == 200:
                    with Client(cfg.addr) as c:
                        if body(c.login("DEPARTMENT", "urban",
                                        harness.DEPARTMENTS["urban"][1])) == \
                                "login_reply":
                            recovered = time.monotonic() - t_up
                            break
                time.sleep(0.25)
            # The department's pushes go through again.
            while pushes and time.monotonic() - t_up < 30:
                with lock:
                    if any(t > t_up for t in stats["push_ok_at"]):
                        break
                time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not any(t.is_alive() for t in threads), "a load thread hung"
        assert ok_before > 0, "no login succeeded before the outage"
        assert saw_503, "/healthz never said 503 while the database was down"
        assert unavailable > 0, "no UNAVAILABLE during the outage: %s" % stats
        assert not stats["slow"], "requests hung past their timeout: %s" % (
            stats["slow"][:5],)
        assert not stats["other"], stats["other"][:3]
        assert stats["ping_fail"] == 0, \
            "%d connections lost during the outage" % stats["ping_fail"]
        assert recovered is not None, "gridd did not recover within 30 s"
        assert d.running()
        print("outage: %d UNAVAILABLE answers to logins, recovered %.1f s "
              "after the database returned, ping p99 %.1f ms" % (
                  unavailable, recovered, 1000 * pct(stats["pings"], 99)))
        if pushes:
            assert pushed_before > 0, "no push succeeded before the outage"
            assert push_unavailable > 0, "no push got UNAVAILABLE"
            assert any(t > t_up for t in stats["push_ok_at"]), \
                "no push succeeded after the database returned"
            # Nothing acknowledged was lost.
            stored = dict((ln.split("|")[0], int(ln.split("|")[1]))
                          for ln in pg.psql(
                "SELECT ext_id, incident_id FROM incident_sources WHERE "
                "source_id = 'urban'", "faults").split())
            lost = [e for e, i in acked_push if stored.get(e) != i]
            assert not lost, "acknowledged pushes lost: %s" % lost[:5]
            # The worker's action got UNAVAILABLE in time, and has its
            # effect once when the phone sends it again.
            env, dt = act_down
            assert body(env) == "error" and \
                env.error.code == pb.UNAVAILABLE, env
            assert dt <= SLOW_S, "the worker's action took %.1f s" % dt
            expect_body(dc.update(worker, offer.assignment_id, "ACCEPT",
                                  key="outage-accept"), "ok")
            expect_body(dc.update(worker, offer.assignment_id, "ACCEPT",
                                  key="outage-accept"), "ok")
            assert pg.psql(
                "SELECT state || '/' || (SELECT count(*) FROM "
                "assignment_actions) FROM assignments WHERE assignment_id "
                "= %d" % offer.assignment_id, "faults").strip() == \
                "accepted/1"
            worker.close()
            print("outage: %d pushes UNAVAILABLE, %d items acknowledged "
                  "and kept; the worker's ACCEPT answered UNAVAILABLE in "
                  "%.2f s" % (push_unavailable, len(acked_push), dt))
        d.stop()
    finally:
        pg.destroy()


def cluster_pids(pg):
    """The private cluster's processes: the postmaster and its children."""
    with open(os.path.join(pg.data, "postmaster.pid")) as f:
        pm = int(f.readline())
    kids = subprocess.run(["pgrep", "-P", str(pm)], capture_output=True,
                          text=True).stdout.split()
    return [pm] + [int(k) for k in kids]


def test_database_hangs():
    """The database stops answering without closing anything (SIGSTOP: a
    hung server, a partition): pushes from several sessions, queued behind
    each other's transactions, and workers' actions, queued behind each
    other's batch, are each answered within their timeout, never a
    multiple of it; everything works again once it answers."""
    QUERY_TIMEOUT_S = 2
    # Slack for scheduling on a loaded machine, well below the second
    # timeout that a request queued behind another's would wait out.
    BOUND_S = QUERY_TIMEOUT_S + 0.75
    pg = PrivatePG()
    stopped = []
    try:
        cfg, d = gridd_on(pg, "hang.conf", QUERY_TIMEOUT_S)
        if not push_supported(cfg.addr):
            d.stop()
            raise Skip("PushIncidents not implemented yet")
        workers = ["hw%d" % i for i in range(3)]
        offers = {}
        wc = dict((w, on_duty_worker(cfg, w)) for w in workers)
        with Client(cfg.addr) as urban:
            login_department(urban, "urban")
            for k in range(len(workers)):
                env = urban.request("push_incidents", incidents=[incident(
                    "hang-offer-%d" % k, LON0 + SIDE * (0.2 + 0.3 * k),
                    LAT0 + SIDE / 3, category="CG02")])
                res = expect_body(env, "push_incidents_reply").results[0]
                assert res.outcome == res.ACCEPTED, res
        # Each new offer goes to the least loaded worker of the cell:
        # one each.
        deadline = time.monotonic() + 10
        while len(offers) < len(workers) and time.monotonic() < deadline:
            for w in workers:
                if w in offers:
                    continue
                try:
                    env = wc[w].recv_push(timeout=0.1)
                except Timeout:
                    continue
                if body(env) == "assignment_offer":
                    offers[w] = env.assignment_offer
        assert len(offers) == len(workers), offers
        lat = []             # (what, seconds, answer)
        lock = threading.Lock()

        # Logged in before the hang (a login needs the database too).
        depts = ["urban", "urban", "civil"]
        pc = []
        for dept in depts:
            pc.append(Client(cfg.addr, timeout=30))
            login_department(pc[-1], dept)

        def pusher(dept, k):
            with pc[k] as c:
                rng = random.Random(k)
                cat = "CG01" if dept == "urban" else "MZ02"
                for n in range(3):
                    items = [incident("hang-%d-%d-%d" % (k, n, j),
                                      *random_point(rng), category=cat)
                             for j in range(20)]
                    t0 = time.monotonic()
                    env = c.request("push_incidents", incidents=items)
                    with lock:
                        lat.append(("push", time.monotonic() - t0,
                                    body(env) if body(env) != "error" else
                                    pb.ErrorCode.Name(env.error.code)))

        def actor(w, delay):
            time.sleep(delay)
            t0 = time.monotonic()
            env = dc.update(wc[w], offers[w].assignment_id, "ACCEPT",
                            key="hang-" + w)
            with lock:
                lat.append(("accept", time.monotonic() - t0,
                            body(env) if body(env) != "error" else
                            pb.ErrorCode.Name(env.error.code)))

        stopped = cluster_pids(pg)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        t_hang = time.monotonic()
        threads = [threading.Thread(target=pusher, args=(dept, k))
                   for k, dept in enumerate(depts)]
        threads += [threading.Thread(target=actor, args=(w, 0.3 * i))
                    for i, w in enumerate(workers)]
        for t in threads:
            t.daemon = True
            t.start()
        for t in threads:
            t.join(30)
        hung_for = time.monotonic() - t_hang
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert d.running(), "gridd died while the database hung"
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        stopped = []
        worst = max(lat, key=lambda x: x[1])
        late = re.search(r"^gridd_push_late_total (\S+)$", metrics_text(cfg),
                         re.M)
        print("hung database: %d answers in %.1f s, slowest %s %.2f s (%s);"
              " push parts answered unsent for lack of time: %s"
              % (len(lat), hung_for, *worst, late.group(1) if late else "?"))
        slow = [x for x in lat if x[1] > BOUND_S]
        assert not slow, "answers later than their timeout: %s" % slow
        assert all(x[2] == "UNAVAILABLE" for x in lat), lat
        # Back: the same actions take effect.
        deadline = time.monotonic() + 30
        while healthz(cfg, timeout=3) != 200 and \
                time.monotonic() < deadline:
            time.sleep(0.25)
        for w in workers:
            expect_body(dc.update(wc[w], offers[w].assignment_id, "ACCEPT",
                                  key="hang-" + w), "ok")
            wc[w].close()
        d.stop()
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        pg.destroy()


# ---- slow and malicious clients ----------------------------------------------

class Prober:
    """Pings from a well-behaved client on its own thread."""

    def __init__(self, addr, interval=0.02):
        self.addr = addr
        self.interval = interval
        self.lat = []
        self.failures = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.t = threading.Thread(target=self.run)

    def run(self):
        try:
            with Client(self.addr, timeout=5) as c:
                login_department(c, "urban")
                self.ready.set()
                while not self.stop.is_set():
                    t0 = time.monotonic()
                    expect_body(c.ping(), "pong")
                    self.lat.append(time.monotonic() - t0)
                    time.sleep(self.interval)
        except Exception as e:
            self.failures.append(repr(e))
        finally:
            self.ready.set()

    def __enter__(self):
        # The well-behaved client is logged in before the hostile load
        # starts: a login flood from the same address would otherwise
        # rate-limit its login too (which is the limiter doing its job).
        self.t.start()
        self.ready.wait(30)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join(30)


def quiet_p99(addr):
    with Prober(addr) as p:
        time.sleep(1.0)
    assert not p.failures, p.failures
    return pct(p.lat, 99)


def check_prober(p, quiet, what):
    assert not p.failures, "%s: the well-behaved client failed: %s" % (
        what, p.failures)
    assert len(p.lat) >= 10, "%s: only %d pings answered" % (what,
                                                              len(p.lat))
    p99 = pct(p.lat, 99)
    # An order of magnitude of the 20 ms ping target, or of the quiet
    # figure on a machine slower than that; sanitizer builds run several
    # times slower, so they get a wider floor.
    floor = 1.0 if harness.sanitized(harness.GRIDD_BIN) else 0.2
    bound = max(10 * quiet, floor)
    assert p99 <= bound, "%s: ping p99 %.1f ms > %.1f ms (quiet %.1f ms)" % (
        what, p99 * 1000, bound * 1000, quiet * 1000)
    return p99


# Measured growth: never-reading client 80 KiB, 10,000 connections opened
# and dropped 0.9-1.1 MiB (malloc keeps some freed memory), login flood
# 30 KiB. The bound leaves room for a noisier allocator, and is still far
# below what one leaked connection state per client (1.6 KiB x 10,000)
# or an unbounded output buffer would show.
def rss_bounded(d, before_kb, what, limit_kb=8 * 1024):
    if harness.sanitized(d.binary):
        # ASan's quarantine keeps freed memory resident on purpose: RSS
        # says nothing about our bounds there (the leak check does).
        print("%s: sanitizer build, RSS bound not checked" % what)
        return 0
    grew = rss_kb(d.proc.pid) - before_kb
    print("%s: daemon RSS grew by %d KiB (bound %d KiB)" % (what, grew,
                                                           limit_kb))
    assert grew < limit_kb, "%s: daemon RSS grew by %d KiB" % (what, grew)
    return grew


def slow_config(name):
    return write_config(harness.tmppath(name),
                        server__max_output_bytes=65536,
                        server__output_stall_timeout_s=2,
                        server__login_timeout_s=3,
                        server__log_level="info")


def test_never_reading_client():
    cfg = slow_config("never.conf")
    d = start(cfg)
    quiet = quiet_p99(cfg.addr)
    rss0 = rss_kb(d.proc.pid)
    with Prober(cfg.addr) as p:
        c = Client(cfg.addr)
        login_department(c, "civil")
        s = c.sock
        ping = c.envelope("ping").SerializeToString()
        frame = struct.pack(">I", len(ping)) + ping
        s.setblocking(False)
        sent = 0
        t0 = time.monotonic()
        # Pings without ever reading a Pong: the daemon must stop reading
        # this client once its output is over max_output_bytes.
        while time.monotonic() - t0 < 4:
            try:
                sent += s.send(frame * 256)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        closed = False
        deadline = time.monotonic() + 10
        s.setblocking(True)
        s.settimeout(1)
        while time.monotonic() < deadline:
            try:
                if not s.recv(1 << 20):
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        s.close()
    check_prober(p, quiet, "never-reading client")
    assert closed, "the never-reading client was not dropped"
    rss_bounded(d, rss0, "never-reading client")
    assert sent > 65536, sent
    d.stop()


def test_one_byte_per_second():
    cfg = slow_config("slowloris.conf")
    d = start(cfg)
    quiet = quiet_p99(cfg.addr)
    rss0 = rss_kb(d.proc.pid)
    with Prober(cfg.addr) as p:
        login = pb.Envelope()
        login.request_id = 1
        login.login.role = pb.DEPARTMENT
        login.login.principal = "civil"
        login.login.secret = harness.DEPARTMENTS["civil"][1]
        data = harness.frame(login.SerializeToString())
        socks = [socket.create_connection(cfg.addr) for _ in range(200)]
        # The length first, so that the daemon knows each frame's size and
        # holds its partial body; then the body, a byte a second.
        for s in socks:
            s.send(data[:4])
        data = data[4:]
        t0 = time.monotonic()
        open_socks = list(socks)
        i = 0
        while open_socks and time.monotonic() - t0 < 8:
            for s in list(open_socks):
                try:
                    s.send(data[i % len(data):i % len(data) + 1])
                except OSError:
                    open_socks.remove(s)
            i += 1
            if i == 2:
                # All of them half-way through a login frame
                # (login_timeout_s is 3): each holds a connection and its
                # input buffer, and no more, far below 4 MiB for 200.
                rss_bounded(d, rss0, "200 clients sending one byte per "
                            "second", limit_kb=4 * 1024)
            time.sleep(1.0)
        elapsed = time.monotonic() - t0
        for s in socks:
            s.close()
    check_prober(p, quiet, "one byte per second")
    # login_timeout_s = 3: every trickling client is gone well before 8 s.
    assert not open_socks, "%d trickling clients still open after %.0f s" % (
        len(open_socks), elapsed)
    d.stop()


def test_connection_churn():
    cfg = slow_config("churn.conf")
    d = start(cfg)
    quiet = quiet_p99(cfg.addr)
    rss0 = rss_kb(d.proc.pid)
    fds0 = fd_count(d.proc.pid)
    n = 0
    with Prober(cfg.addr) as p:
        t0 = time.monotonic()
        # At least 10,000, and on until the prober has 10 pings to judge
        # by: on a quick box the 10,000 take a quarter of a second, and
        # this loop holds the GIL the prober's thread needs.
        while ((n < 10000 or len(p.lat) < 10) and
               time.monotonic() - t0 < 60):
            s = socket.socket()
            # Reset on close: no TIME_WAIT pile-up in the test itself.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
            try:
                s.connect(cfg.addr)
                if n % 3 == 0:
                    s.send(b"\x00\x00\x00\x05hel")
            except OSError:
                pass
            s.close()
            n += 1
    check_prober(p, quiet, "%d connections opened and dropped" % n)
    assert n >= 10000, "only %d connections in 60 s" % n
    # While the loop above starves gridd of CPU, up to a listen backlog
    # (LISTEN_BACKLOG, 1024) of connections is accepted in one go and
    # held at once, each with its input buffer: about 12 KiB each, which
    # the heap keeps after they close. Measured growth: 0.9-1.1 MiB when
    # gridd kept up, 12.2 MiB once when it did not. So this bounds that
    # peak. A leak of each connection's state (some 1.6 KiB, 16 MiB over
    # the 10,000) could stay under it: the descriptor check below and
    # LeakSanitizer in the ASan build are what catch one.
    rss_bounded(d, rss0, "connection churn", limit_kb=8 * 1024 + 1024 * 16)
    deadline = time.monotonic() + 10
    while fd_count(d.proc.pid) > fds0 + 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert fd_count(d.proc.pid) <= fds0 + 5, "descriptors leaked: %d -> %d" % (
        fds0, fd_count(d.proc.pid))
    d.stop()


def test_login_flood():
    cfg = slow_config("flood.conf")
    d = start(cfg)
    quiet = quiet_p99(cfg.addr)
    rss0 = rss_kb(d.proc.pid)
    codes = {}
    lock = threading.Lock()

    def flood(k):
        # Two seconds of wrong keys, reconnecting whenever the daemon
        # hangs up: for known and unknown principals alike.
        deadline = time.monotonic() + 2.0
        i = 0
        while time.monotonic() < deadline:
            try:
                with Client(cfg.addr, timeout=10) as c:
                    while time.monotonic() < deadline:
                        env = c.login("DEPARTMENT", "civil" if i % 2 else
                                      "nobody%d" % (k * 100000 + i),
                                      "wrong-key")
                        i += 1
                        name = body(env)
                        code = env.error.code if name == "error" else name
                        with lock:
                            codes[code] = codes.get(code, 0) + 1
            except (Closed, Timeout, OSError):
                with lock:
                    codes["closed"] = codes.get("closed", 0) + 1

    with Prober(cfg.addr) as p:
        threads = [threading.Thread(target=flood, args=(k,))
                   for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    check_prober(p, quiet, "login flood")
    assert codes.get(pb.RATE_LIMITED, 0) > 0, codes
    assert "login_reply" not in codes, codes
    rss_bounded(d, rss0, "login flood")
    # Another principal from another source address still logs in.
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.connect(cfg.addr)
    c = Client.__new__(Client)
    c.sock, c.buf, c.timeout = s, b"", 5
    c.ids, c.pushes, c.replies = iter(range(1, 1 << 30)), [], {}
    login_department(c, "urban")
    c.close()
    d.stop()


# ---- out of descriptors -----------------------------------------------------

def client_connections(http_port):
    """API client connections gridd holds, in any state (its /metrics)."""
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % http_port,
                                  timeout=5).read().decode()
    return sum(float(v) for v in re.findall(
        r'^gridd_connections\{state="[a-z_]+"\} (\S+)$', text, re.M))


def test_emfile_pauses_accepting():
    nofile = 100
    cfg = write_config(harness.tmppath("emfile.conf"),
                       server__max_connections=5000,
                       database__pool_size=2, server__log_level="info")
    d = Gridd(cfg, wrapper=["prlimit", "--nofile=%d:%d" % (nofile, nofile),
                            "--"])
    d.start()
    m = d.wait_log(r"event=limits max_connections=5000 nofile=%d "
                   r"reserved=\d+ effective=(\d+)" % nofile)
    cap = int(m.group(1))
    assert 0 < cap < nofile, cap
    # The readiness probe's connection must be gone first: on a busy box
    # gridd can read its end after accepting the connections below, and
    # then one of them, not the extra one, is the one over the cap.
    deadline = time.monotonic() + 10
    while client_connections(cfg.http_port) != 0:
        assert time.monotonic() < deadline, "the probe connection stays"
        time.sleep(0.05)
    # Admission: connections beyond the cap are closed at once.
    held = []
    for _ in range(cap):
        held.append(socket.create_connection(cfg.addr))
    extra = socket.create_connection(cfg.addr, timeout=5)
    extra.settimeout(5)
    try:
        assert extra.recv(10) == b"", "a connection over the cap got data"
    except ConnectionResetError:
        pass
    extra.close()
    for s in held:
        s.close()
    time.sleep(0.5)
    # Out of descriptors: admin HTTP clients (outside the connection cap)
    # use up the rest, so the API accept fails with EMFILE.
    http = []
    for _ in range(nofile):
        try:
            http.append(socket.create_connection(("127.0.0.1",
                                                  cfg.http_port), timeout=2))
        except OSError:
            break
    api = [socket.create_connection(cfg.addr, timeout=5) for _ in range(5)]
    since = 0
    d.wait_log(r"event=accept outcome=paused", timeout=10, since=since)
    # Not spinning: the daemon's CPU time over a second of EMFILE.
    def cpu():
        with open("/proc/%d/stat" % d.proc.pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    c0 = cpu()
    time.sleep(1.0)
    used = cpu() - c0
    assert used < 0.5, "gridd used %.2f s of CPU in 1 s out of fds" % used
    # A waiting client is told promptly (closed), not left in the backlog.
    told = 0
    for s in api:
        s.settimeout(3)
        try:
            if s.recv(10) == b"":
                told += 1
        except ConnectionResetError:
            told += 1
        except socket.timeout:
            pass
    assert told >= 1, "no waiting client was closed while out of fds"
    for s in http + api:
        s.close()
    # Descriptors back: accepting resumes by itself.
    deadline = time.monotonic() + 10
    while True:
        try:
            with Client(cfg.addr, timeout=2) as c:
                login_department(c)
                expect_body(c.ping(), "pong")
            break
        except (Closed, Timeout, OSError):
            if time.monotonic() > deadline:
                raise AssertionError("gridd did not resume accepting:\n%s"
                                     % d.log_tail())
            time.sleep(0.2)
    assert d.running()
    d.stop()


harness.main(globals())

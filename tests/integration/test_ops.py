"""test_ops.py - what administrators look at: /metrics and /healthz.

/metrics must parse with the Prometheus text-format parser of
python3-prometheus-client, carry the families the README promises, move
with traffic, and never show personal data (worker names, incident
descriptions). /healthz must say 503 while the database is down and 200
again once it is back; that part runs its own private PostgreSQL cluster,
so stopping it disturbs no other test.
"""

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import pb, expect_body, expect_error  # noqa: E402

harness.skip_unless_pg()

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # pragma: no cover - the package list installs it
    text_string_to_metric_families = None

PG_BIN = "/usr/lib/postgresql/15/bin"


def http_get(port, path, timeout=10):
    url = "http://127.0.0.1:%d%s" % (port, path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def scrape(cfg):
    """{(name, frozenset(labels)): value} and the raw text."""
    if text_string_to_metric_families is None:
        raise AssertionError("python3-prometheus-client is not installed")
    status, text = http_get(cfg.http_port, "/metrics")
    assert status == 200, status
    samples = {}
    families = set()
    for fam in text_string_to_metric_families(text):
        families.add(fam.name)
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families, text


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


_d = {}


def daemon():
    if not _d:
        harness.require_pg()
        cfg = harness.write_config(harness.tmppath("ops.conf"))
        _d["cfg"] = cfg
        _d["gridd"] = harness.Gridd(cfg, name="ops").start()
    return _d["cfg"], _d["gridd"]


# Families every deployment has; the feeds and dispatch modules add their
# own (checked by prefix below).
FAMILIES = [
    "gridd_connections", "gridd_connections_authenticated",
    "gridd_requests", "gridd_request_errors", "gridd_request_duration_seconds",
    "gridd_requests_in_flight", "gridd_errors",
    "gridd_db_pool_connections", "gridd_db_waiting", "gridd_db_queries",
    "gridd_db_errors", "gridd_db_reconnects",
    "process_resident_memory_bytes", "process_open_fds",
]


def test_metrics_parse_and_have_the_families():
    cfg, _ = daemon()
    samples, families, text = scrape(cfg)
    missing = [f for f in FAMILIES if f not in families]
    assert not missing, "missing families: %s" % missing
    assert value(samples, "process_resident_memory_bytes") > 1e6
    assert value(samples, "process_open_fds") > 3
    assert value(samples, "gridd_db_pool_connections", state="size") == 4
    # The domain modules' figures: incidents by outcome, offers, events
    # pending for subscribers.
    for prefix in ("gridd_incidents", "gridd_offers", "gridd_subscriber"):
        assert any(f.startswith(prefix) for f in families), (
            "no %s* family in /metrics" % prefix)
    # Every family has HELP and TYPE, written once.
    for f in re.findall(r"^# TYPE (\S+)", text, re.M):
        assert text.count("# TYPE %s " % f) == 1, f


def test_counters_move_with_traffic():
    cfg, _ = daemon()
    before, _, _ = scrape(cfg)
    with harness.Client(cfg.addr) as c:
        harness.login_admin(c)
        for _ in range(5):
            expect_body(c.ping(), "pong")
        # A request the admin role may not send, and one with no body.
        expect_error(c.request("push_incidents"), "FORBIDDEN")
        env = pb.Envelope(request_id=999)
        c.send(env)
        expect_error(c.wait_reply(999), "BAD_REQUEST")
        during, _, _ = scrape(cfg)
        assert value(during, "gridd_connections_authenticated",
                     role="admin") >= 1
    after, _, _ = scrape(cfg)
    d = lambda name, **lb: value(after, name, **lb) - value(before, name,
                                                           **lb)
    assert d("gridd_requests_total", type="ping") == 5
    assert d("gridd_request_duration_seconds_count", type="ping") == 5
    assert d("gridd_request_duration_seconds_bucket", type="ping",
             le="+Inf") == 5
    assert d("gridd_request_duration_seconds_count", type="login") == 1
    assert d("gridd_requests_denied_total", type="push_incidents") == 1
    assert d("gridd_request_errors_total", type="push_incidents",
             code="FORBIDDEN") == 1
    assert d("gridd_errors_total", code="BAD_REQUEST") >= 1
    assert d("gridd_connections_accepted_total") >= 1
    assert value(after, "gridd_requests_in_flight") == 0
    # Buckets are cumulative.
    buckets = sorted(
        (float(dict(k[1])["le"]), v) for k, v in after.items()
        if k[0] == "gridd_request_duration_seconds_bucket" and
        dict(k[1]).get("type") == "ping")
    assert len(buckets) >= 10 and buckets[-1][0] == float("inf")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), buckets


def test_no_personal_data_in_metrics_or_info_logs():
    cfg, g = daemon()
    name = "Zhang Sanfeng-Privatename"
    desc = "Private-description-of-a-resident"
    harness.psql("INSERT INTO communities (community_id, name, geom) VALUES "
                 "('OPS1', 'Ops', ST_Multi(ST_MakeEnvelope(121.0, 31.0, "
                 "121.01, 31.01, 4326))) ON CONFLICT DO NOTHING", cfg.dbname)
    harness.psql("INSERT INTO cells (cell_id, community_id, geom) VALUES "
                 "('OPS1-001', 'OPS1', ST_Multi(ST_MakeEnvelope(121.0, 31.0,"
                 " 121.01, 31.01, 4326))) ON CONFLICT DO NOTHING",
                 cfg.dbname)
    with harness.Client(cfg.addr) as c:
        harness.login_admin(c)
        expect_body(c.request("upsert_worker", worker_id="WOPS", name=name,
                              password="secret-pass-123",
                              community_id="OPS1", cell_ids=["OPS1-001"]),
                    "ok")
    with harness.Client(cfg.addr) as c:
        harness.login_department(c)
        it = pb.IncidentIn(ext_id="ops-1", category="MZ03", lon=121.005,
                           lat=31.005, description=desc,
                           address="Room 5, " + name)
        expect_body(c.request("push_incidents", incidents=[it]),
                    "push_incidents_reply")
    _, _, text = scrape(cfg)
    for secret in (name, desc, "secret-pass-123", harness.ADMIN_KEY):
        assert secret not in text, "%r in /metrics" % secret
    # The daemon logs at debug in tests; personal fields may appear only
    # on debug lines, secrets never.
    for line in g.log().splitlines():
        for secret in ("secret-pass-123", harness.ADMIN_KEY,
                       harness.DEPARTMENTS["civil"][1]):
            assert secret not in line, line
        if name in line or desc in line:
            assert " level=debug " in line, line


def test_request_log_line():
    cfg, g = daemon()
    off = g.log_size()
    with harness.Client(cfg.addr) as c:
        harness.login_admin(c)
        env = c.envelope("ping", request_id=4242)
        c.send(env)
        expect_body(c.wait_reply(4242), "pong")
    m = g.wait_log(r"level=debug .*event=request type=ping request_id=4242 "
                   r"principal=root outcome=ok ms=[0-9.]+", since=off)
    assert m


# ---- /healthz with a database that goes away ---------------------------------

class PrivatePG:
    """This test's own cluster: initdb, start, stop, destroy. As root the
    server runs as the postgres user (PostgreSQL refuses to run as
    root)."""

    def __init__(self):
        if not os.path.exists(os.path.join(PG_BIN, "initdb")):
            raise harness.Skip("PostgreSQL server binaries not found")
        self.dir = harness.tmppath("pg-ops")
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "run")
        os.makedirs(self.sock)
        self.as_pg = []
        if os.getuid() == 0:
            self.as_pg = ["runuser", "-u", "postgres", "--"]
            os.chmod(harness.tmpdir(), 0o755)
            for p in (self.dir, self.sock):
                shutil.chown(p, "postgres")
        self.port = harness.free_port()
        self.tool("initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")

    def tool(self, name, *args):
        r = subprocess.run(self.as_pg + [os.path.join(PG_BIN, name)] +
                           list(args), capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise AssertionError("%s: %s%s" % (name, r.stdout, r.stderr))

    def start(self):
        self.tool("pg_ctl", "-D", self.data, "-l",
                  os.path.join(self.dir, "postgres.log"), "-w", "-t", "60",
                  "-o", "-p %d -k %s -c fsync=off -c listen_addresses=''"
                  % (self.port, self.sock), "start")

    def stop(self):
        self.tool("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60",
                  "stop")

    def conninfo(self, db):
        return "host=%s port=%d user=postgres dbname=%s" % (
            self.sock, self.port, db)


def wait_status(cfg, want, timeout):
    deadline = time.monotonic() + timeout
    while True:
        status, body = http_get(cfg.http_port, "/healthz", timeout=5)
        if status == want:
            return body
        if time.monotonic() > deadline:
            raise AssertionError("/healthz %s (%s), want %s"
                                 % (status, body.strip(), want))
        time.sleep(0.2)


def test_healthz_follows_the_database():
    pg = PrivatePG()
    pg.start()
    try:
        subprocess.run(["psql", "-X", "-q", "-h", pg.sock, "-p",
                        str(pg.port), "-U", "postgres", "-c",
                        "CREATE DATABASE ops_health"], check=True,
                       capture_output=True, timeout=60)
        cfg = harness.write_config(harness.tmppath("health.conf"),
                                   dbname="postgres",
                                   database__reconnect_max_ms=500,
                                   admin_http__health_timeout_ms=1000)
        cfg.set("database", "conninfo", pg.conninfo("ops_health")).write()
        with harness.Gridd(cfg, name="health") as g:
            g.start()
            wait_status(cfg, 200, 10)
            pg.stop()
            body = wait_status(cfg, 503, 10)
            assert "database" in body, body
            # The API keeps answering what needs no database.
            with harness.Client(cfg.addr) as c:
                expect_error(c.ping(), "UNAUTHENTICATED")
            pg.start()
            wait_status(cfg, 200, 30)
            samples, _, _ = scrape(cfg)
            assert value(samples, "gridd_db_reconnects_total") >= 1
            g.stop()
    finally:
        try:
            pg.stop()
        except AssertionError:
            pass


def test_unknown_paths_and_methods():
    cfg, _ = daemon()
    assert http_get(cfg.http_port, "/nope")[0] == 404
    req = urllib.request.Request("http://127.0.0.1:%d/metrics"
                                 % cfg.http_port, data=b"", method="POST")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("POST /metrics answered 2xx")
    except urllib.error.HTTPError as e:
        assert e.code == 405, e.code


if __name__ == "__main__":
    harness.main(globals())

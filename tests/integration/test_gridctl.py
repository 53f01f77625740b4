"""gridctl against a running gridd: output, exit statuses (0 ok, 1 server
error, 2 usage, 3 transport), secrets only from the environment or stdin,
and gridctl's own defences against a broken or silent server.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import (ADMIN_ID, ADMIN_KEY, DEPARTMENTS, Client,  # noqa: E402
                     expect_body, expect_error, login_admin, pb)

GRIDCTL = harness.GRIDCTL_BIN

_main = None


def need_pg():
    """Tests without a daemon run anywhere; the others need PostgreSQL."""
    if harness.have_pg():
        return
    if harness.REQUIRE_PG:
        raise AssertionError("GRIDD_TEST_REQUIRE_PG=1 but no PostgreSQL")
    raise harness.Skip("no test PostgreSQL")


def daemon():
    global _main
    need_pg()
    if _main is None or not _main.running():
        # Several tests fail a login on purpose: no lock-out here.
        cfg = harness.write_config(harness.tmppath("gridctl.conf"),
                                   auth__login_max_failures=1000)
        _main = harness.Gridd(cfg).start()
        # Workers belong to a community; until communities are imported
        # through the API the test inserts the row itself.
        harness.psql("INSERT INTO communities (community_id, name) VALUES "
                     "('c1', 'Test community') ON CONFLICT DO NOTHING",
                     dbname=cfg.dbname)
    return _main


def gridctl(*args, env=None, stdin=None, addr=None, timeout=30,
            wrapper=()):
    """Runs gridctl; returns (status, stdout, stderr). The environment holds
    only what the caller gives (plus PATH), so nothing leaks in."""
    e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if addr is not None:
        e["GRIDD_ADDR"] = addr
    e.update(env or {})
    r = subprocess.run(list(wrapper) + [GRIDCTL] + list(args), env=e,
                       input=stdin, capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def admin_env(**extra):
    e = {"GRIDD_ROLE": "admin", "GRIDD_ID": ADMIN_ID,
         "GRIDD_SECRET": ADMIN_KEY}
    e.update(extra)
    return e


def addr():
    return "127.0.0.1:%d" % daemon().api_port


def test_binary():
    assert GRIDCTL and os.access(GRIDCTL, os.X_OK), \
        "gridctl not built (GRIDCTL_BIN=%r)" % GRIDCTL
    rc, out, err = gridctl("-h")
    assert rc == 0 and "usage: gridctl" in out, (rc, out, err)
    for word in ("ping", "worker upsert", "--json", "GRIDD_SECRET",
                 "--secret-stdin"):
        assert word in out, word


def test_usage_errors():
    env = admin_env()
    cases = [
        (),                                         # no command
        ("frobnicate",),                            # unknown command
        ("ping", "extra"),
        ("--role", "emperor", "ping"),
        ("--timeout", "soon", "ping"),
        ("--cert", "x.pem", "ping"),                # --cert without --key
        ("worker", "upsert"),                       # no id
        ("worker", "upsert", "w1", "--community", "c1"),   # no --name
        ("worker", "delete", "w1"),
        ("grid", "show"),
        ("partition",),
        ("report", "burden", "--from", "yesterday"),
        ("report", "burden", "--from", "2024-02-01", "--to", "2024-01-01"),
        ("push",),
        ("push", "/nonexistent/incidents.csv"),
        ("import", "roads", "x.geojson"),
        ("--no-such-flag", "ping"),
    ]
    for args in cases:
        rc, out, err = gridctl(*args, env=env, addr="127.0.0.1:1")
        assert rc == 2, (args, rc, out, err)
        assert err.strip(), ("no message", args)
    # Missing credentials are usage errors too, before any connection.
    for drop in ("GRIDD_ROLE", "GRIDD_ID", "GRIDD_SECRET"):
        e = admin_env()
        del e[drop]
        rc, out, err = gridctl("ping", env=e, addr="127.0.0.1:1")
        assert rc == 2, (drop, rc, err)
    # The worker's password, like the secret, is required from env or stdin.
    rc, out, err = gridctl("worker", "upsert", "w1", "--name", "W",
                           "--community", "c1", env=env,
                           addr="127.0.0.1:1")
    assert rc == 2 and "GRIDD_WORKER_PASSWORD" in err, (rc, err)


def test_secret_flag_refused():
    env = {"GRIDD_ROLE": "admin", "GRIDD_ID": ADMIN_ID}
    # A listener that records whether gridctl connected at all.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    a = "127.0.0.1:%d" % srv.getsockname()[1]
    for args in (("--secret", ADMIN_KEY, "ping"),
                 ("--secret=" + ADMIN_KEY, "ping"),
                 ("ping", "--secret", ADMIN_KEY),
                 ("--password", "pw", "worker", "upsert", "w1"),
                 ("worker", "upsert", "w1", "--name", "n", "--community",
                  "c", "--password=pw")):
        rc, out, err = gridctl(*args, env=env, addr=a)
        assert rc == 2, (args, rc, err)
        assert ADMIN_KEY not in out + err
    try:
        conn, _ = srv.accept()
        conn.close()
        raise AssertionError("gridctl connected despite a secret flag")
    except socket.timeout:
        pass
    srv.close()


def test_unreachable():
    port = harness.free_port()
    rc, out, err = gridctl("ping", env=admin_env(),
                           addr="127.0.0.1:%d" % port)
    assert rc == 3, (rc, out, err)
    assert "127.0.0.1:%d" % port in err, err
    rc, out, err = gridctl("ping", env=admin_env(), addr="no-colon")
    assert rc == 2, (rc, err)     # a malformed address is a usage error
    rc, out, err = gridctl("ping", env=admin_env(),
                           addr="host.invalid:7700")
    assert rc == 3, (rc, err)


def _fake_server(reply_bytes, hold_s=5.0):
    """A one-shot server: reads one frame, answers reply_bytes (None = say
    nothing), keeps the link open hold_s. Returns its address."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def run():
        try:
            srv.settimeout(10)
            conn, _ = srv.accept()
            conn.settimeout(hold_s)
            try:
                hdr = conn.recv(4, socket.MSG_WAITALL)
                (n,) = struct.unpack(">I", hdr)
                conn.recv(n, socket.MSG_WAITALL)
                if reply_bytes is not None:
                    conn.sendall(reply_bytes)
                time.sleep(hold_s)
            except OSError:
                pass
            conn.close()
        finally:
            srv.close()

    threading.Thread(target=run, daemon=True).start()
    return "127.0.0.1:%d" % srv.getsockname()[1]


def test_broken_server():
    """gridctl bounds what it reads: oversized, empty or garbage frames and
    a silent server end in exit 3, promptly."""
    cases = [
        ("oversized", struct.pack(">I", 0x7fffffff)),
        ("empty", b"\0\0\0\0"),
        ("garbage", harness.frame(b"\xff\xff\xff\xff")),
        ("truncated", struct.pack(">I", 100) + b"\x08\x01"),
    ]
    for name, data in cases:
        a = _fake_server(data, hold_s=2.0)
        t0 = time.monotonic()
        rc, out, err = gridctl("--timeout", "1", "ping", env=admin_env(),
                               addr=a)
        took = time.monotonic() - t0
        assert rc == 3, (name, rc, out, err)
        assert took < 4, (name, took)
    a = _fake_server(None, hold_s=3.0)
    t0 = time.monotonic()
    rc, out, err = gridctl("--timeout", "0.5", "ping", env=admin_env(),
                           addr=a)
    assert rc == 3 and "timed out" in err, (rc, err)
    assert time.monotonic() - t0 < 2.5


def test_ping():
    rc, out, err = gridctl("ping", env=admin_env(), addr=addr())
    assert rc == 0, (rc, out, err)
    assert "pong" in out and "rtt" in out, out
    # Flags instead of the environment, secret on stdin.
    rc, out, err = gridctl("--addr", addr(), "--role", "admin", "--id",
                           ADMIN_ID, "--secret-stdin", "ping",
                           stdin=ADMIN_KEY + "\n")
    assert rc == 0, (rc, out, err)


def test_ping_json():
    before = int(time.time() * 1000)
    rc, out, err = gridctl("--json", "ping", env=admin_env(), addr=addr())
    after = int(time.time() * 1000)
    assert rc == 0, (rc, out, err)
    lines = out.splitlines()
    assert len(lines) == 1, out
    obj = json.loads(lines[0])
    assert before - 1000 <= obj["pong"]["server_time"] <= after + 1000, obj
    assert 0 <= obj["rtt_ms"] < 5000, obj
    assert obj["request_id"] > 0, obj


def test_login_and_resume():
    rc, out, err = gridctl("--json", "login", env=admin_env(), addr=addr())
    assert rc == 0, (rc, out, err)
    lr = json.loads(out)["login_reply"]
    assert lr["principal"] == ADMIN_ID and lr["role"] == "ADMIN", lr
    assert len(lr["session_token"]) == 64, lr
    env = {"GRIDD_ROLE": "admin", "GRIDD_ID": ADMIN_ID,
           "GRIDD_TOKEN": lr["session_token"]}
    rc, out, err = gridctl("ping", env=env, addr=addr())
    assert rc == 0, (rc, out, err)
    env["GRIDD_TOKEN"] = "00" * 32
    rc, out, err = gridctl("ping", env=env, addr=addr())
    assert rc == 1 and "UNAUTHENTICATED" in err, (rc, err)


def test_worker_upsert():
    env = admin_env(GRIDD_WORKER_PASSWORD="cli-worker-pass")
    rc, out, err = gridctl("worker", "upsert", "w-cli", "--name",
                           "Zhang \"San\" 张三", "--community", "c1",
                           "--max-open", "4", env=env, addr=addr())
    assert rc == 0, (rc, out, err)
    with Client(daemon().addr) as c:
        expect_body(c.login("WORKER", "w-cli", "cli-worker-pass"),
                    "login_reply")
        expect_body(c.ping(), "pong")
    # Secret and password both on stdin, one line each; JSON output.
    rc, out, err = gridctl("--role", "admin", "--id", ADMIN_ID,
                           "--secret-stdin", "--json", "worker", "upsert",
                           "w-cli", "--name", "Zhang San", "--community",
                           "c1", "--password-stdin",
                           stdin=ADMIN_KEY + "\nnew-cli-pass\n",
                           addr=addr())
    assert rc == 0, (rc, out, err)
    assert "ok" in json.loads(out), out
    with Client(daemon().addr) as c:
        expect_error(c.login("WORKER", "w-cli", "cli-worker-pass"),
                     "UNAUTHENTICATED")
    with Client(daemon().addr) as c:
        expect_body(c.login("WORKER", "w-cli", "new-cli-pass"),
                    "login_reply")
    # The worker may not upsert workers: a server error, exit 1.
    wenv = {"GRIDD_ROLE": "worker", "GRIDD_ID": "w-cli",
            "GRIDD_SECRET": "new-cli-pass",
            "GRIDD_WORKER_PASSWORD": "x"}
    rc, out, err = gridctl("worker", "upsert", "w-other", "--name", "O",
                           "--community", "c1", env=wenv, addr=addr())
    assert rc == 1 and "FORBIDDEN" in err, (rc, err)


def test_wrong_secret():
    bad = "not-the-admin-key-93b1"
    rc, out, err = gridctl("ping", env=admin_env(GRIDD_SECRET=bad),
                           addr=addr())
    assert rc == 1, (rc, out, err)
    assert "UNAUTHENTICATED" in out + err, (out, err)
    assert bad not in out + err, "the secret was echoed"
    rc, out, err = gridctl("--json", "ping",
                           env=admin_env(GRIDD_SECRET="wrong"), addr=addr())
    assert rc == 1, (rc, out, err)
    obj = json.loads(out)
    assert obj["error"]["code"] == "UNAUTHENTICATED", obj


def test_later_features_wired():
    """Every feature command sends a real request: the server's error is
    printed with exit 1 (here mostly: the test community has no buildings
    or cells), or the result with exit 0."""
    d = harness.tmppath("gridctl-files")
    os.makedirs(d, exist_ok=True)
    incidents = os.path.join(d, "incidents.csv")
    with open(incidents, "w") as f:
        f.write("ext_id,category,occurred_at,lon,lat\n"
                "e1,MZ01,1714550400000,9.52,47.14\n")
    geo = os.path.join(d, "c.geojson")
    with open(geo, "w") as f:
        f.write('{"type":"FeatureCollection","features":[]}\n')
    dept = {"GRIDD_ROLE": "department", "GRIDD_ID": "civil",
            "GRIDD_SECRET": DEPARTMENTS["civil"][1]}
    cases = [
        (admin_env(), ("grid", "show", "c1")),
        (admin_env(), ("grid", "show", "c1", "--geojson",
                       os.path.join(d, "c1.geojson"))),
        (admin_env(), ("partition", "c1")),
        (admin_env(), ("partition", "--all")),
        (admin_env(), ("report", "burden", "--from", "2024-01-01")),
        (admin_env(), ("complaints",)),
        (dept, ("push", incidents)),
        (admin_env(), ("import", "communities", geo)),
        (admin_env(), ("import", "layer", "civil", geo)),
    ]
    for env, args in cases:
        rc, out, err = gridctl(*args, env=env, addr=addr())
        assert rc in (0, 1), (args, rc, out, err)
        if rc == 1:
            assert "server error" in err, (args, err)
            names = [pb.ErrorCode.Name(v) for v in pb.ErrorCode.values()]
            assert any(n in err for n in names), (args, err)
        rc, out, err = gridctl("--json", *args, env=env, addr=addr())
        assert rc in (0, 1), (args, rc, out, err)
        assert out.strip(), (args, "no JSON on stdout", err)
        obj = json.loads(out.splitlines()[-1])
        assert isinstance(obj, dict) and obj, (args, obj)
        print("%s: exit %d %s" % (" ".join(args), rc,
                                  (obj.get("error") or {}).get("code",
                                                               "")))


def test_tls():
    need_pg()
    f = harness.make_tls_files(harness.tmppath("gridctl-tls"))
    port = harness.free_port()
    cfg = harness.write_config(harness.tmppath("gridctl-tls.conf"))
    cfg.add("server", "listen", "127.0.0.1:%d tls" % port)
    cfg.set("server", "tls_cert", f["server_cert"])
    cfg.set("server", "tls_key", f["server_key"])
    cfg.write()
    with harness.Gridd(cfg, name="gridd-cli-tls").start() as d:
        a = "127.0.0.1:%d" % port
        rc, out, err = gridctl("--tls", "--ca", f["ca"], "ping",
                               env=admin_env(), addr=a)
        assert rc == 0, (rc, out, err)
        # Not trusted without the test CA; plain TCP on the TLS port fails.
        rc, out, err = gridctl("--tls", "ping", env=admin_env(), addr=a)
        assert rc == 3, (rc, out, err)
        rc, out, err = gridctl("--timeout", "3", "ping", env=admin_env(),
                               addr=a)
        assert rc == 3, (rc, out, err)
        # A client certificate is sent when given.
        rc, out, err = gridctl("--tls", "--ca", f["ca"], "--cert",
                               f["client_cert"], "--key", f["client_key"],
                               "ping", env=admin_env(), addr=a)
        assert rc == 0, (rc, out, err)
        d.stop()


def test_valgrind():
    vg = shutil.which("valgrind")
    if vg is None:
        raise harness.Skip("valgrind not installed")
    if harness.sanitized(GRIDCTL):
        raise harness.Skip("sanitizer build")
    wrapper = (vg, "-q", "--leak-check=full", "--error-exitcode=99",
               "--errors-for-leak-kinds=definite,indirect")
    for args, env, want in (
            (("ping",), admin_env(), 0),
            (("--json", "ping"), admin_env(GRIDD_SECRET="wrong"), 1),
            (("--json", "login"), admin_env(), 0),
            (("grid", "show", "c1"), admin_env(), None)):
        rc, out, err = gridctl(*args, env=env, addr=addr(), timeout=120,
                               wrapper=wrapper)
        assert rc != 99, (args, err)
        if want is not None:
            assert rc == want, (args, rc, err)


def test_daemon_survived():
    d = daemon()
    with Client(d.addr) as c:
        login_admin(c)
        expect_body(c.ping(), "pong")
    d.stop()


if __name__ == "__main__":
    harness.main(globals())

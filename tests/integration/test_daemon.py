"""The daemon's life: version, config checking, start with migrations,
accepting connections, SIGHUP reloads good and bad, SIGTERM, and a valgrind
run that finds no leak."""

import os
import re
import shutil
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Skip, require_pg  # noqa: E402

EXAMPLE_CONFIG = os.path.join(harness.SOURCE_DIR, "config", "gridd.conf")

# One database for the tests that start the daemon: each start after the
# first also shows that migrations already applied are not applied again.
_db = None


def database():
    global _db
    require_pg()
    if _db is None:
        _db = harness.fresh_database("gridd_daemon")
    return _db


def check(cfg):
    """gridd -c FILE --check: (status, stdout + stderr)."""
    rc, out, err = harness.run_gridd("-c", cfg.path if hasattr(cfg, "path")
                                     else cfg, "--check")
    return rc, out + err


def unused_config(name, **kw):
    """A test config whose database is never contacted (for --check)."""
    return harness.write_config(harness.tmppath(name), dbname="gridd_unused",
                                **kw)


def assert_error_at(cfg, section, key, text):
    """--check exits 2 and prints FILE:LINE: ... naming key."""
    line = cfg.line_of(section, key)
    rc, out = check(cfg)
    assert rc == 2, "--check exited %d, expected 2:\n%s" % (rc, out)
    rx = re.compile(r"^%s:%d: (\S+): .+$" % (re.escape(cfg.path), line),
                    re.M)
    m = rx.search(out)
    assert m, "no '%s:%d: key: reason' line:\n%s" % (cfg.path, line, out)
    assert key in m.group(1) or key in m.group(0), \
        "error does not name %s: %s" % (key, m.group(0))
    assert text in out, "%r not in:\n%s" % (text, out)


def test_version():
    rc, out, err = harness.run_gridd("--version")
    assert rc == 0, (rc, err)
    assert re.fullmatch(r"gridd \d+\.\d+\.\d+\S*\n", out), repr(out)


def test_check_example_config():
    rc, out = check(EXAMPLE_CONFIG)
    assert rc == 0, "shipped config/gridd.conf fails --check:\n" + out


def test_check_test_config():
    cfg = unused_config("good.conf")
    rc, out = check(cfg)
    assert rc == 0, "test config fails --check:\n%s\n%s" % (out, cfg.text())


def test_check_unknown_key():
    cfg = unused_config("unknown-key.conf")
    cfg.set("server", "listne", "127.0.0.1:1").write()
    assert_error_at(cfg, "server", "listne", "listne")


def test_check_unknown_section():
    cfg = unused_config("unknown-section.conf")
    cfg.set("serverr", "listen", "127.0.0.1:1").write()
    rc, out = check(cfg)
    assert rc == 2, (rc, out)
    line = cfg.text().splitlines().index("[serverr]") + 1
    # The error may sit on the section header or on its first key.
    assert re.search(r"^%s:(%d|%d): .*serverr" % (re.escape(cfg.path), line,
                                                  line + 1), out, re.M), out


def test_check_bad_values():
    for section, key, value in (
            ("server", "max_connections", "lots"),
            ("server", "max_connections", "-5"),
            ("server", "listen", "127.0.0.1:99999"),
            ("database", "pool_size", "0"),
            ("task_type.road_damage", "list", "maybe"),
            ("task_type.road_damage", "matter", "huge"),
            ("server", "log_level", "chatty")):
        cfg = unused_config("bad-%s.conf" % key)
        cfg.set(section, key, value).write()
        assert_error_at(cfg, section, key, key)


def test_check_missing_listen():
    cfg = unused_config("no-listen.conf")
    cfg.remove("server", "listen").write()
    rc, out = check(cfg)
    assert rc == 2, (rc, out)
    assert re.search(r"^%s:\d+: \S*listen\S*: .+$" % re.escape(cfg.path),
                     out, re.M), out


def test_check_missing_conninfo():
    cfg = unused_config("no-conninfo.conf")
    cfg.remove("database", "conninfo").write()
    rc, out = check(cfg)
    assert rc == 2, (rc, out)
    assert re.search(r"^%s:\d+: \S*conninfo\S*: .+$" % re.escape(cfg.path),
                     out, re.M), out


def test_start_bad_config_exits_2():
    cfg = unused_config("bad-start.conf")
    cfg.set("server", "bogus", "1").write()
    rc, out, err = harness.run_gridd("-c", cfg.path)
    assert rc == 2, (rc, out, err)


def start(name, **kw):
    cfg = harness.write_config(harness.tmppath(name), dbname=database(), **kw)
    return harness.Gridd(cfg, name=name.split(".")[0]).start()


def test_start_migrates_and_accepts():
    files = harness.migration_files()
    assert files, "no migrations in sql/"
    with start("start.conf") as d:
        n = int(harness.psql1("SELECT count(*) FROM schema_version",
                              d.config.dbname))
        assert n == len(files), "schema_version has %d rows for %d files" \
            % (n, len(files))
        conns = [socket.create_connection(d.addr, timeout=5)
                 for _ in range(5)]
        time.sleep(0.2)
        assert d.running(), d.log_tail()
        for c in conns:
            c.close()
        assert harness.port_open(*d.addr)
        d.stop()
        assert "event=stop" in d.log(), d.log_tail()


def poke(d):
    """A connection that sends a zero-length frame (a protocol error)."""
    with harness.Client(d.addr) as c:
        c.send_raw(b"\0\0\0\0")
        c.wait_closed(2)
    time.sleep(0.2)


def test_reload_good_change():
    with start("reload.conf") as d:
        since = d.log_size()
        poke(d)
        debug_before = "level=debug" in d.log_since(since)
        since = d.log_size()
        # info, not warn: the reload's own outcome line is at info.
        d.config.set("server", "log_level", "info").write()
        d.reload()
        d.wait_log(r"event=reload outcome=ok", since=since)
        since = d.log_size()
        poke(d)
        after = d.log_since(since)
        if debug_before:
            assert "level=debug" not in after, after
        assert d.running()
        d.stop()


def test_reload_broken_config_keeps_running():
    with start("reload-bad.conf") as d:
        since = d.log_size()
        good = d.config.text()
        with open(d.config.path, "a") as f:
            f.write("\n[server]\nmax_connections = many\n")
        d.reload()
        d.wait_log(r"event=reload outcome=failed", since=since)
        assert d.running(), d.log_tail()
        assert harness.port_open(*d.addr)
        # The running config is intact and the next good reload works.
        with open(d.config.path, "w") as f:
            f.write(good)
        since = d.log_size()
        d.reload()
        d.wait_log(r"event=reload outcome=ok", since=since)
        d.stop()


def test_sigterm_with_clients_connected():
    with start("term.conf") as d:
        conns = [socket.create_connection(d.addr, timeout=5)
                 for _ in range(3)]
        time.sleep(0.1)
        t0 = time.monotonic()
        d.stop(timeout=5)
        took = time.monotonic() - t0
        assert took < 5, took
        for c in conns:
            c.settimeout(2)
            try:
                assert c.recv(1) == b"", "connection still open"
            except ConnectionResetError:
                pass
            c.close()


def test_sigint_stops_too():
    with start("int.conf") as d:
        d.signal(signal.SIGINT)
        rc = d.wait_exit(5)
        assert rc == 0, (rc, d.log_tail())


def test_valgrind_no_leaks():
    if harness.sanitized(harness.GRIDD_BIN):
        raise Skip("gridd is built with sanitizers; LeakSanitizer covers it")
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise Skip("valgrind is not installed")
    vlog = harness.tmppath("valgrind.log")
    cfg = harness.write_config(harness.tmppath("valgrind.conf"),
                               dbname=database())
    d = harness.Gridd(cfg, name="valgrind", wrapper=[
        valgrind, "--leak-check=full",
        "--errors-for-leak-kinds=definite", "--error-exitcode=99",
        "--log-file=" + vlog])
    with d:
        d.start(timeout=120)
        with harness.Client(d.addr, timeout=20) as c:
            # Whatever the API answers today, a whole frame goes through
            # the transport, framing and protocol code.
            c.send(c.envelope("ping"))
            try:
                c.recv(10)
            except (harness.Timeout, harness.Closed):
                pass
        since = d.log_size()
        d.reload()
        d.wait_log(r"event=reload outcome=ok", timeout=30, since=since)
        rc = d.stop(timeout=60, expect=None)
    with open(vlog, encoding="utf-8", errors="replace") as f:
        report = f.read()
    assert rc == 0, "exit status %s under valgrind:\n%s\n%s" % (
        rc, report[-4000:], d.log_tail())
    assert "Memcheck" in report, "valgrind did not run:\n" + report
    m = re.search(r"definitely lost: ([\d,]+) bytes", report)
    assert m is None or m.group(1) == "0", report[-4000:]
    assert re.search(r"ERROR SUMMARY: 0 errors", report), report[-4000:]


if __name__ == "__main__":
    harness.main(globals())

"""Hostile and careless clients: bad framing, garbage, oversized messages,
idle and silent connections, connection floods, clients that never read,
and 5,000 idle connections with Ping still prompt. After each case a
well-behaved client must still get its Pong at once.
"""

import errno
import os
import resource
import selectors
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import (ADMIN_ID, ADMIN_KEY, Client, Closed,  # noqa
                     body, expect_body, expect_error, frame, login_admin,
                     login_department, pb)

harness.skip_unless_pg()

PRE_LOGIN_LIMIT = 4096          # issue contract: 4 KiB before login
MAX_FRAME = 1 << 20             # the default max_frame_bytes
PROMPT_S = 1.0                  # a healthy Pong arrives well within this

_main = None


def daemon():
    global _main
    if _main is None or not _main.running():
        cfg = harness.write_config(
            harness.tmppath("hostile.conf"),
            server__max_frame_bytes=MAX_FRAME)
        _main = harness.Gridd(cfg).start()
    return _main


def healthy(d=None):
    """A separate, well-behaved client logs in and gets Pong promptly."""
    d = d or daemon()
    assert d.running(), "gridd died:\n" + d.log_tail()
    t0 = time.monotonic()
    with Client(d.addr, timeout=5) as c:
        login_admin(c)
        expect_body(c.ping(), "pong")
    took = time.monotonic() - t0
    assert took < PROMPT_S, "login+ping took %.3fs" % took


def raw(d=None, timeout=5):
    return Client((d or daemon()).addr, timeout=timeout)


def expect_error_frame(c, codes, timeout=5):
    """The next frame is an Error with one of codes."""
    env = c.recv(timeout)
    assert body(env) == "error", env
    names = [pb.ErrorCode.Name(x) for x in (env.error.code,)]
    assert env.error.code in [pb.ErrorCode.Value(x) for x in codes], \
        "got %s, want one of %s" % (names[0], codes)
    return env


def expect_error_then_close(c, codes, timeout=5):
    expect_error_frame(c, codes, timeout)
    assert c.wait_closed(timeout), "connection left open after the error"


def send_quietly(c, data):
    """Sends, tolerating the server closing while we still write."""
    try:
        c.send_raw(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_length_zero():
    with raw() as c:
        c.send_raw(b"\0\0\0\0")
        expect_error_then_close(c, ["BAD_REQUEST", "TOO_LARGE"])
    healthy()


def test_length_2_31():
    with raw() as c:
        c.send_raw(struct.pack(">I", 1 << 31))
        expect_error_then_close(c, ["TOO_LARGE"])
    with raw() as c:
        c.send_raw(b"\xff\xff\xff\xff")
        expect_error_then_close(c, ["TOO_LARGE"])
    healthy()


def test_pre_login_limit():
    """Before login a frame over 4 KiB is refused on its header alone."""
    login = pb.Envelope(request_id=1)
    login.login.role = pb.ADMIN
    login.login.principal = "x" * (PRE_LOGIN_LIMIT + 100)
    login.login.secret = ADMIN_KEY
    payload = login.SerializeToString()
    assert len(payload) > PRE_LOGIN_LIMIT
    with raw() as c:
        c.send_raw(struct.pack(">I", len(payload)))
        expect_error_then_close(c, ["TOO_LARGE"])
    with raw() as c:
        # With the body sent too, the server may close before reading it,
        # and the reset can overtake its Error: a close is enough then.
        send_quietly(c, frame(payload))
        try:
            expect_error_frame(c, ["TOO_LARGE"])
        except Closed:
            pass
        assert c.wait_closed(5), "oversized pre-login frame left open"
    healthy()


def test_post_login_limits():
    """After login frames up to max_frame_bytes are read; above, refused."""
    with raw() as c:
        login_admin(c)
        # 10 KB: over the pre-login limit, fine after login. An admin may
        # not push incidents, so the answer is FORBIDDEN, not TOO_LARGE.
        incs = [pb.IncidentIn(ext_id="e%d" % i, description="d" * 90)
                for i in range(100)]
        r = c.request("push_incidents", incidents=incs)
        expect_error(r, "FORBIDDEN")
        expect_body(c.ping(), "pong")
        c.send_raw(struct.pack(">I", MAX_FRAME + 1))
        expect_error_then_close(c, ["TOO_LARGE"])
    healthy()


def test_truncated_frame():
    with raw() as c:
        login_admin(c)
        env = c.envelope("ping").SerializeToString()
        c.send_raw(struct.pack(">I", len(env) + 50) + env)
        # The server waits for the rest; we close instead.
    with raw() as c:
        c.send_raw(struct.pack(">I", 100) + b"\x08\x01")
    with raw() as c:
        c.send_raw(b"\x00\x00")       # half a header
    healthy()


def test_truncated_then_idle_server_side():
    """A truncated frame left open does not stall the others."""
    with raw() as c:
        c.send_raw(struct.pack(">I", 64) + b"\x08")
        healthy()
        healthy()


def test_random_megabyte():
    data = bytearray(os.urandom(1 << 20))
    data[0] = 0x7f      # a length header that is surely over the limit
    with raw() as c:
        send_quietly(c, bytes(data))
        assert c.wait_closed(5), "1 MiB of random bytes left the link open"
    # Random bytes after a plausible small header: garbage, not protobuf.
    for seed in range(5):
        junk = os.urandom(200)
        with raw() as c:
            send_quietly(c, frame(b"\xff" + junk) + os.urandom(1 << 16))
            assert c.wait_closed(5), "garbage left the link open"
    healthy()


def test_no_body():
    """An Envelope that parses but has no body: BAD_REQUEST."""
    with raw() as c:
        c.send(pb.Envelope(request_id=5))
        env = expect_error_frame(c, ["BAD_REQUEST"])
        assert env.request_id in (0, 5), env
    with raw() as c:
        login_admin(c)
        c.send(pb.Envelope(request_id=6))
        env = expect_error_frame(c, ["BAD_REQUEST"])
        assert env.request_id in (0, 6), env
    healthy()


def test_not_protobuf():
    cases = [
        b"\xff\xff\xff\xff\xff",            # wire type 7
        b"\x08" + b"\xff" * 11,             # a varint that never ends
        b"\x22\x7f\x00",                    # length past the end
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for payload in cases:
        with raw() as c:
            c.send_raw(frame(payload))
            expect_error_then_close(c, ["BAD_REQUEST"])
    # An HTTP request as the first bytes: its "length" is huge.
    with raw() as c:
        send_quietly(c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.wait_closed(5)
    healthy()


def test_huge_repeated_field():
    """200,000 empty IncidentIn in a frame under max_frame_bytes: a clean
    answer (or a close), never a crash or a stall."""
    n = 200_000
    items = b"\x0a\x00" * n                       # IncidentIn{} each
    push = items                                  # PushIncidents body
    lenvar = bytearray()
    v = len(push)
    while True:
        b = v & 0x7f
        v >>= 7
        lenvar.append(b | (0x80 if v else 0))
        if not v:
            break
    env = b"\x08\x09" + b"\x52" + bytes(lenvar) + push   # id 9, field 10
    assert len(env) < MAX_FRAME
    parsed = pb.Envelope()
    parsed.ParseFromString(env)
    assert len(parsed.push_incidents.incidents) == n
    for who in ("department", "admin"):
        with raw(timeout=20) as c:
            if who == "department":
                login_department(c)
            else:
                login_admin(c)
            t0 = time.monotonic()
            send_quietly(c, frame(env))
            try:
                r = c.recv(20)
            except Closed:
                r = None
            took = time.monotonic() - t0
            if r is not None:
                assert r.request_id in (0, 9), r
                assert body(r) in ("error", "push_incidents_reply"), r
                if body(r) == "error":
                    assert r.error.code in (
                        pb.TOO_LARGE, pb.BAD_REQUEST, pb.FORBIDDEN,
                        pb.UNAVAILABLE), r
            what = "closed"
            if r is not None:
                what = body(r)
                if what == "error":
                    what = "error %s (%s)" % (
                        pb.ErrorCode.Name(r.error.code), r.error.message)
            print("huge repeated field as %s: %s in %.3fs"
                  % (who, what, took))
        healthy()


def test_many_small_garbage_connections():
    for i in range(200):
        with raw() as c:
            send_quietly(c, os.urandom(1 + i % 7))
    healthy()


def test_timeouts():
    """Idle sessions close after idle_timeout_s, silent connections after
    login_timeout_s; a client that pings stays."""
    idle_s, login_s = 3, 1
    cfg = harness.write_config(harness.tmppath("timeouts.conf"),
                               server__idle_timeout_s=idle_s,
                               server__login_timeout_s=login_s)
    with harness.Gridd(cfg, name="gridd-timeouts").start() as d:
        silent = Client(d.addr)
        idle = Client(d.addr)
        login_admin(idle)
        busy = Client(d.addr)
        login_admin(busy)
        t0 = time.monotonic()
        assert silent.wait_closed(login_s + 3), "no-login link not closed"
        t_silent = time.monotonic() - t0
        assert t_silent >= login_s * 0.5, t_silent
        deadline = t0 + idle_s + 4
        closed_at = None
        while time.monotonic() < deadline:
            expect_body(busy.ping(), "pong")
            if closed_at is None and idle.wait_closed(0.5):
                closed_at = time.monotonic() - t0
        assert closed_at is not None, "idle session not closed"
        assert idle_s * 0.7 <= closed_at <= idle_s + 3, closed_at
        expect_body(busy.ping(), "pong")
        print("login timeout closed after %.2fs (config %ds), idle after "
              "%.2fs (config %ds)" % (t_silent, login_s, closed_at, idle_s))
        for c in (silent, idle, busy):
            c.close()
        healthy(d)
        d.stop()


def test_max_connections():
    limit = 20
    cfg = harness.write_config(harness.tmppath("maxconn.conf"),
                               server__max_connections=limit)
    with harness.Gridd(cfg, name="gridd-maxconn").start() as d:
        time.sleep(0.2)     # the readiness probe's connection is gone
        conns = [Client(d.addr) for _ in range(limit)]
        for c in conns[:2]:
            login_admin(c)
        extra = Client(d.addr)
        t0 = time.monotonic()
        assert extra.wait_closed(3), "connection over max_connections kept"
        assert time.monotonic() - t0 < 2.5
        extra.close()
        for c in conns[2:]:
            login_admin(c)
        for c in conns:
            expect_body(c.ping(), "pong")
        conns.pop().close()
        time.sleep(0.3)
        healthy(d)
        for c in conns:
            c.close()
        time.sleep(0.3)
        healthy(d)
        assert d.running()
        d.stop()


def test_never_reads():
    """A client that floods Pings and never reads is dropped once its unsent
    output stays over max_output_bytes for output_stall_timeout_s."""
    stall_s = 1
    cfg = harness.write_config(harness.tmppath("stall.conf"),
                               server__max_output_bytes=65536,
                               server__output_stall_timeout_s=stall_s)
    with harness.Gridd(cfg, name="gridd-stall").start() as d:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(d.addr)
        s.settimeout(5)
        login = pb.Envelope(request_id=1)
        login.login.role = pb.ADMIN
        login.login.principal = ADMIN_ID
        login.login.secret = ADMIN_KEY
        s.sendall(frame(login.SerializeToString()))
        (n,) = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))
        s.recv(n, socket.MSG_WAITALL)
        batch = b"".join(frame(pb.Envelope(request_id=1000 + i,
                                           ping=pb.Ping())
                               .SerializeToString()) for i in range(1000))
        s.setblocking(False)
        sent = 0
        blocked_since = None
        other = Client(d.addr)
        login_admin(other)
        lat = []
        t_end = time.monotonic() + 30
        out = b""
        while time.monotonic() < t_end:
            if not out:
                out = batch
            try:
                # Partial sends keep their tail: the stream must stay
                # well-framed so that only the backlog gets us dropped.
                k = s.send(out)
                out = out[k:]
                sent += k
                blocked_since = None
            except BlockingIOError:
                if blocked_since is None:
                    blocked_since = time.monotonic()
                elif time.monotonic() - blocked_since > 0.5:
                    break
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                break
            if sent // len(batch) % 20 == 0:
                t0 = time.monotonic()
                expect_body(other.ping(), "pong")
                lat.append(time.monotonic() - t0)
        assert blocked_since is not None or sent > 0
        # The server stopped reading us; keep the other client busy while
        # the stall timeout runs.
        t0 = time.monotonic()
        while time.monotonic() - t0 < stall_s + 2:
            t1 = time.monotonic()
            expect_body(other.ping(), "pong")
            lat.append(time.monotonic() - t1)
            time.sleep(0.1)
        # Now drain: a dropped connection ends in EOF or a reset.
        s.setblocking(True)
        s.settimeout(5)
        dropped = False
        got = 0
        try:
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    dropped = True
                    break
                got += len(chunk)
        except ConnectionResetError:
            dropped = True
        except socket.timeout:
            dropped = False
        s.close()
        print("never-reading client: sent %d bytes, drained %d, dropped=%s; "
              "other client's ping max %.1f ms" %
              (sent, got, dropped, max(lat) * 1000))
        assert dropped, "client over max_output_bytes was not dropped"
        assert max(lat) < 0.5, "other client slowed to %.3fs" % max(lat)
        other.close()
        healthy(d)
        d.stop()


def _vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def _pctl(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def test_5000_idle_connections():
    n = 5000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 500
    if hard != resource.RLIM_INFINITY and hard < want:
        raise harness.Skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, want))
    if soft < want:
        # gridd inherits it: started after this.
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    cfg = harness.write_config(harness.tmppath("c5k.conf"),
                               server__max_connections=n + 100,
                               server__idle_timeout_s=600,
                               server__login_timeout_s=300,
                               server__log_level="info")
    login = pb.Envelope(request_id=1)
    login.login.role = pb.ADMIN
    login.login.principal = ADMIN_ID
    login.login.secret = ADMIN_KEY
    login_frame = frame(login.SerializeToString())
    with harness.Gridd(cfg, name="gridd-c5k").start() as d:
        probe = Client(d.addr)
        login_admin(probe)
        for _ in range(50):
            expect_body(probe.ping(), "pong")
        time.sleep(0.5)
        rss0 = _vmrss_kib(d.proc.pid)

        sel = selectors.DefaultSelector()
        socks = []
        pending = {}
        t_open = time.monotonic()
        # Batches keep the listen backlog from overflowing.
        for start in range(0, n, 250):
            batch = []
            for _ in range(min(250, n - start)):
                s = socket.socket()
                s.setblocking(False)
                err = s.connect_ex(d.addr)
                assert err in (0, errno.EINPROGRESS), os.strerror(err)
                batch.append(s)
                sel.register(s, selectors.EVENT_WRITE)
            waiting = set(batch)
            deadline = time.monotonic() + 20
            while waiting:
                assert time.monotonic() < deadline, "connects stalled"
                for key, _ in sel.select(1):
                    s = key.fileobj
                    if s not in waiting:
                        continue
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert err == 0, os.strerror(err)
                    s.send(login_frame)
                    waiting.discard(s)
                    pending[s] = b""
                    sel.modify(s, selectors.EVENT_READ)
            # Collect the LoginReplies of this batch.
            deadline = time.monotonic() + 20
            while any(len(pending[s]) < 4 or len(pending[s]) <
                      4 + struct.unpack(">I", pending[s][:4])[0]
                      for s in batch):
                assert time.monotonic() < deadline, "logins stalled"
                for key, _ in sel.select(1):
                    s = key.fileobj
                    chunk = s.recv(4096)
                    assert chunk, "gridd closed an idle connection"
                    pending[s] += chunk
            for s in batch:
                env = pb.Envelope()
                env.ParseFromString(pending[s][4:])
                assert body(env) == "login_reply", env
                sel.unregister(s)
            socks.extend(batch)
        t_open = time.monotonic() - t_open
        time.sleep(1.0)
        rss1 = _vmrss_kib(d.proc.pid)

        lat = []
        for _ in range(1000):
            t0 = time.monotonic()
            expect_body(probe.ping(), "pong")
            lat.append((time.monotonic() - t0) * 1000)
        # The connections are still there, and answer.
        for s in socks[::500]:
            s.setblocking(True)
            s.settimeout(5)
            s.sendall(frame(pb.Envelope(request_id=2, ping=pb.Ping())
                            .SerializeToString()))
            (m,) = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))
            env = pb.Envelope()
            env.ParseFromString(s.recv(m, socket.MSG_WAITALL))
            assert body(env) == "pong", env
        per_conn = (rss1 - rss0) * 1024.0 / n
        p50, p99 = _pctl(lat, 50), _pctl(lat, 99)
        print("5000 idle authenticated connections: opened+logged in in "
              "%.2fs; ping p50 %.3f ms p99 %.3f ms max %.3f ms; gridd RSS "
              "%d KiB -> %d KiB = %.0f bytes per connection"
              % (t_open, p50, p99, max(lat), rss0, rss1, per_conn))
        for s in socks:
            s.close()
        assert d.running()
        assert p99 < 200, "ping p99 %.1f ms" % p99
        if harness.sanitized(d.binary):
            print("sanitizer build: RSS bound not checked")
        else:
            assert per_conn < 32 * 1024, "%.0f bytes per connection" \
                % per_conn
        time.sleep(0.5)
        healthy(d)
        probe.close()
        d.stop()


def test_daemon_survived():
    d = daemon()
    healthy(d)
    d.stop()


if __name__ == "__main__":
    harness.main(globals())

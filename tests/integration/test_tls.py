"""TLS listeners: handshake and Ping over TLS, plain TCP on a TLS port,
client certificates where tls_client_ca is set, certificates reloaded on
SIGHUP (and a bad reload keeping the running ones).
"""

import os
import shutil
import socket
import ssl
import struct
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import (ADMIN_ID, ADMIN_KEY, Client, Closed, body,  # noqa
                     expect_body, login_admin, login_department, pb)

harness.skip_unless_pg()

_files = None


def tls_files():
    global _files
    if _files is None:
        _files = harness.make_tls_files(harness.tmppath("tls-a"))
    return _files


def tls_config(name, client_ca=None, cert=None, key=None):
    """A config with the usual plain listener plus a TLS one; returns
    (config, tls_port). Certificates are copied so a test may replace them."""
    f = tls_files()
    d = harness.tmppath(name + "-certs")
    os.makedirs(d, exist_ok=True)
    cert_path = os.path.join(d, "server.pem")
    key_path = os.path.join(d, "server.key")
    shutil.copy(cert or f["server_cert"], cert_path)
    shutil.copy(key or f["server_key"], key_path)
    port = harness.free_port()
    cfg = harness.write_config(harness.tmppath(name + ".conf"))
    cfg.add("server", "listen", "127.0.0.1:%d tls" % port)
    cfg.set("server", "tls_cert", cert_path)
    cfg.set("server", "tls_key", key_path)
    if client_ca:
        cfg.set("server", "tls_client_ca", client_ca)
    cfg.write()
    cfg.tls_port = port
    cfg.cert_path, cfg.key_path = cert_path, key_path
    return cfg


def tls_client(cfg, ca=None, cert=None, key=None):
    ctx = harness.client_tls_context(ca or tls_files()["ca"], cert, key)
    return Client(("127.0.0.1", cfg.tls_port), tls=ctx,
                  server_hostname="127.0.0.1")


def peer_cert(cfg, ca):
    with tls_client(cfg, ca) as c:
        return c.sock.getpeercert(binary_form=True)


def test_handshake_and_ping():
    cfg = tls_config("tls-basic")
    with harness.Gridd(cfg, name="gridd-tls").start() as d:
        with tls_client(cfg) as c:
            assert c.sock.version() in ("TLSv1.2", "TLSv1.3"), \
                c.sock.version()
            login_admin(c)
            for _ in range(10):
                expect_body(c.ping(), "pong")
        # The plain listener beside it still speaks plain TCP.
        with Client(d.addr) as c:
            login_admin(c)
            expect_body(c.ping(), "pong")
        # A client that only speaks TLS 1.1 is refused.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(tls_files()["ca"])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
                ctx.minimum_version = ssl.TLSVersion.TLSv1
        except (ValueError, AttributeError):
            ctx = None
        if ctx is not None:
            try:
                with Client(("127.0.0.1", cfg.tls_port), tls=ctx,
                            server_hostname="127.0.0.1"):
                    raise AssertionError("TLS 1.1 handshake succeeded")
            except (ssl.SSLError, OSError):
                pass
        assert d.running()
        d.stop()


def test_plain_client_on_tls_port():
    cfg = tls_config("tls-plain")
    with harness.Gridd(cfg, name="gridd-tls-plain").start() as d:
        login = pb.Envelope(request_id=1)
        login.login.role = pb.ADMIN
        login.login.principal = ADMIN_ID
        login.login.secret = ADMIN_KEY
        s = socket.create_connection(("127.0.0.1", cfg.tls_port), timeout=5)
        s.sendall(harness.frame(login.SerializeToString()))
        got = b""
        t0 = time.monotonic()
        closed = False
        try:
            while time.monotonic() - t0 < 5:
                chunk = s.recv(4096)
                if not chunk:
                    closed = True
                    break
                got += chunk
        except (ConnectionResetError, socket.timeout) as e:
            closed = not isinstance(e, socket.timeout)
        s.close()
        took = time.monotonic() - t0
        assert closed, "plain client on the TLS port not closed"
        assert took < 5, took
        # Whatever came back (a TLS alert at most) is no Envelope reply.
        if len(got) >= 4:
            (n,) = struct.unpack(">I", got[:4])
            if 0 < n <= len(got) - 4:
                env = pb.Envelope()
                try:
                    env.ParseFromString(got[4:4 + n])
                    assert body(env) != "login_reply", env
                except Exception:  # noqa: B902 - not protobuf at all
                    pass
        print("plain client on TLS port closed after %.3fs, %d bytes "
              "received" % (took, len(got)))
        with tls_client(cfg) as c:
            login_admin(c)
            expect_body(c.ping(), "pong")
        d.stop()


def _handshake_fails(cfg, **kw):
    """True when a TLS session cannot be used: the handshake fails, or (TLS
    1.3, where the client finishes first) the first read fails."""
    try:
        with tls_client(cfg, **kw) as c:
            c.login("DEPARTMENT", "civil", harness.DEPARTMENTS["civil"][1])
    except (ssl.SSLError, Closed, ConnectionResetError, BrokenPipeError,
            harness.Timeout):
        return True
    return False


def test_client_certificate_required():
    f = tls_files()
    other = harness.make_tls_files(harness.tmppath("tls-other"))
    cfg = tls_config("tls-mtls", client_ca=f["ca"])
    with harness.Gridd(cfg, name="gridd-mtls").start() as d:
        assert _handshake_fails(cfg), "no client certificate was accepted"
        assert _handshake_fails(cfg, cert=other["client_cert"],
                                key=other["client_key"]), \
            "a client certificate from another CA was accepted"
        with tls_client(cfg, cert=f["client_cert"], key=f["client_key"]) \
                as c:
            login_department(c, "civil")
            expect_body(c.ping(), "pong")
        assert d.running()
        d.stop()


def test_sighup_new_certificate():
    f = tls_files()
    cfg = tls_config("tls-reload")
    new = harness.make_tls_files(harness.tmppath("tls-new"))
    with harness.Gridd(cfg, name="gridd-tls-reload").start() as d:
        before = peer_cert(cfg, f["ca"])
        kept = tls_client(cfg)
        login_admin(kept)
        shutil.copy(new["server_cert"], cfg.cert_path)
        shutil.copy(new["server_key"], cfg.key_path)
        mark = d.log_size()
        d.reload()
        deadline = time.monotonic() + 10
        after = None
        while time.monotonic() < deadline:
            try:
                after = peer_cert(cfg, new["ca"])
                break
            except (ssl.SSLError, Closed, OSError):
                time.sleep(0.1)
        assert after is not None, "new certificate not served:\n" + \
            d.log_tail()
        assert after != before
        # The old CA no longer verifies the server.
        try:
            peer_cert(cfg, f["ca"])
            raise AssertionError("old certificate still served")
        except ssl.SSLError:
            pass
        # A connection made before the reload carries on.
        expect_body(kept.ping(), "pong")
        kept.close()

        # A broken certificate file: the reload fails, the running
        # certificate stays, the daemon keeps serving.
        with open(cfg.cert_path, "w") as fp:
            fp.write("-----BEGIN CERTIFICATE-----\nnot base64\n")
        mark = d.log_size()
        d.reload()
        time.sleep(1.0)
        assert d.running(), d.log_tail()
        assert peer_cert(cfg, new["ca"]) == after
        log = d.log()[mark:]
        assert log.strip(), "the failed reload was not logged"
        with Client(d.addr) as c:
            login_admin(c)
            expect_body(c.ping(), "pong")
        d.stop()


if __name__ == "__main__":
    harness.main(globals())

"""Sessions over the wire API, from a client in another language (Python with
Google's protobuf runtime, code generated from proto/gridd.proto at test
time): login for each role, tokens, resume, expiry, rate limiting, roles.
"""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import (ADMIN_ID, ADMIN_KEY, DEPARTMENTS, Client, body,  # noqa
                     expect_body, expect_error, login_admin,
                     login_department, pb)

harness.skip_unless_pg()

# Failed logins allowed per principal and per address in the main daemon:
# high, so that the tests that fail a login on purpose do not lock out the
# ones after them. The rate-limit test runs its own daemon.
MAIN_MAX_FAILURES = 1000
RL_MAX_FAILURES = 3

_main = None


def daemon():
    """One gridd for the tests that do not need special settings."""
    global _main
    if _main is None or not _main.running():
        cfg = harness.write_config(
            harness.tmppath("session.conf"),
            auth__login_max_failures=MAIN_MAX_FAILURES,
            auth__login_failure_window_s=60)
        _main = harness.Gridd(cfg).start()
        ensure_community(_main)
    return _main


def ensure_community(d, community_id="c1"):
    """Workers belong to a community; until communities are imported
    through the API the test inserts the row itself."""
    harness.psql("INSERT INTO communities (community_id, name) VALUES "
                 "('%s', 'Test community %s') ON CONFLICT DO NOTHING"
                 % (community_id, community_id), dbname=d.config.dbname)


def client(d=None):
    return Client((d or daemon()).addr)


def upsert_worker(worker_id, password, name="Test Worker",
                  community="c1", d=None):
    with client(d) as c:
        login_admin(c)
        r = c.request("upsert_worker", worker_id=worker_id, name=name,
                      password=password, community_id=community,
                      max_open=3)
        expect_body(r, "ok")


def check_token(reply, role, principal):
    lr = expect_body(reply, "login_reply")
    assert len(lr.session_token) == 64, lr.session_token
    int(lr.session_token, 16)  # 32 random bytes in hex
    assert lr.role == pb.Role.Value(role), lr
    assert lr.principal == principal, lr
    return lr


def test_login_admin():
    with client() as c:
        r = c.login("ADMIN", ADMIN_ID, ADMIN_KEY)
        lr = check_token(r, "ADMIN", ADMIN_ID)
        if lr.expires_at:
            assert lr.expires_at > time.time() * 1000, lr
        expect_body(c.ping(), "pong")


def test_login_department():
    tokens = set()
    for dept in DEPARTMENTS:
        with client() as c:
            r = c.login("DEPARTMENT", dept, DEPARTMENTS[dept][1])
            tokens.add(check_token(r, "DEPARTMENT", dept).session_token)
            expect_body(c.ping(), "pong")
    assert len(tokens) == len(DEPARTMENTS), "session tokens repeat"


def test_login_worker():
    upsert_worker("w-login", "worker-pass-1")
    with client() as c:
        check_token(c.login("WORKER", "w-login", "worker-pass-1"),
                    "WORKER", "w-login")
        expect_body(c.ping(), "pong")


def test_wrong_secret():
    cases = [("ADMIN", ADMIN_ID, ADMIN_KEY + "x"),
             ("DEPARTMENT", "civil", DEPARTMENTS["urban"][1]),
             ("WORKER", "w-login", "not-the-password")]
    upsert_worker("w-login", "worker-pass-1")
    for role, who, secret in cases:
        with client() as c:
            expect_error(c.login(role, who, secret), "UNAUTHENTICATED")
    # Neither secret nor token: malformed, or simply not authenticated.
    with client() as c:
        r = c.login("ADMIN", ADMIN_ID, "")
        assert body(r) == "error", r
        assert r.error.code in (pb.BAD_REQUEST, pb.UNAUTHENTICATED), r


def test_unknown_principal_same_error():
    """Nothing in the reply tells an unknown principal from a wrong secret."""
    upsert_worker("w-known", "known-pass")
    pairs = [
        (("ADMIN", ADMIN_ID, "wrong"), ("ADMIN", "nobody", "wrong")),
        (("DEPARTMENT", "civil", "wrong"), ("DEPARTMENT", "nobody", "wrong")),
        (("WORKER", "w-known", "wrong"), ("WORKER", "w-nobody", "wrong")),
    ]
    for known, unknown in pairs:
        errs = []
        for role, who, secret in (known, unknown):
            with client() as c:
                errs.append(expect_error(c.login(role, who, secret),
                                         "UNAUTHENTICATED"))
        assert (errs[0].message, errs[0].detail) == \
            (errs[1].message, errs[1].detail), errs


def test_role_mismatch_login():
    """A department key used as an admin (or the other way) is refused."""
    with client() as c:
        expect_error(c.login("ADMIN", "civil", DEPARTMENTS["civil"][1]),
                     "UNAUTHENTICATED")
    with client() as c:
        expect_error(c.login("DEPARTMENT", ADMIN_ID, ADMIN_KEY),
                     "UNAUTHENTICATED")
    with client() as c:
        r = c.login("ROLE_UNSPECIFIED", ADMIN_ID, ADMIN_KEY)
        assert body(r) == "error", r
        assert r.error.code in (pb.BAD_REQUEST, pb.UNAUTHENTICATED), r


def test_wrong_role_forbidden():
    upsert_worker("w-role", "role-pass")
    with client() as c:
        login_department(c, "civil")
        expect_error(c.request("upsert_worker", worker_id="w-x", name="X",
                               password="p", community_id="c1"),
                     "FORBIDDEN")
        expect_error(c.request("get_burden_report"), "FORBIDDEN")
        # The session survives a refused request.
        expect_body(c.ping(), "pong")
    with client() as c:
        expect_body(c.login("WORKER", "w-role", "role-pass"), "login_reply")
        r = c.request("push_incidents")
        expect_error(r, "FORBIDDEN")
        r = c.request("upsert_worker", worker_id="w-role", name="X",
                      password="p", community_id="c1")
        expect_error(r, "FORBIDDEN")
        expect_body(c.ping(), "pong")
    with client() as c:
        login_admin(c)
        expect_error(c.request("list_assignments"), "FORBIDDEN")


def test_request_before_login():
    for name in ("ping", "upsert_worker", "push_incidents", "get_grid"):
        with client() as c:
            r = c.request(name)
            expect_error(r, "UNAUTHENTICATED")


def test_resume_token():
    with client() as c:
        token = login_admin(c).session_token
    # A new connection, no secret.
    with client() as c:
        r = c.request("login", role=pb.ADMIN, principal=ADMIN_ID,
                      resume_token=token)
        lr = expect_body(r, "login_reply")
        assert lr.principal == ADMIN_ID and lr.role == pb.ADMIN, lr
        expect_body(c.ping(), "pong")
    # A made-up token is refused like a wrong secret.
    with client() as c:
        r = c.request("login", role=pb.ADMIN, principal=ADMIN_ID,
                      resume_token="00" * 32)
        expect_error(r, "UNAUTHENTICATED")
    # A token does not carry over to another principal.
    with client() as c:
        r = c.request("login", role=pb.DEPARTMENT, principal="civil",
                      resume_token=token)
        expect_error(r, "UNAUTHENTICATED")


def test_ping_pong():
    with client() as c:
        login_admin(c)
        before = int(time.time() * 1000)
        r = c.ping()
        after = int(time.time() * 1000)
        pong = expect_body(r, "pong")
        # Same machine: the server clock agrees with ours within a second.
        assert before - 1000 <= pong.server_time <= after + 1000, \
            (before, pong.server_time, after)


def test_upsert_rehashes_password():
    upsert_worker("w-rehash", "first-password")
    with client() as c:
        expect_body(c.login("WORKER", "w-rehash", "first-password"),
                    "login_reply")
    upsert_worker("w-rehash", "second-password", name="Renamed")
    with client() as c:
        expect_error(c.login("WORKER", "w-rehash", "first-password"),
                     "UNAUTHENTICATED")
    with client() as c:
        expect_body(c.login("WORKER", "w-rehash", "second-password"),
                    "login_reply")
    # The password is stored as a salted slow hash, never in clear.
    d = daemon()
    rows = harness.psql(
        "SELECT table_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'workers' "
        "AND data_type IN ('text', 'character varying', 'bytea')",
        dbname=d.config.dbname)
    if rows:
        dump = "\n".join("\t".join(r) for r in harness.psql(
            "SELECT * FROM workers", dbname=d.config.dbname))
        assert "second-password" not in dump, "password stored in clear"
        assert "first-password" not in dump, "password stored in clear"


def test_request_ids():
    with client() as c:
        ids = (7, 1 << 40, 2 ** 64 - 1, 12345)
        env = c.envelope("login", request_id=ids[0], role=pb.ADMIN,
                         principal=ADMIN_ID, secret=ADMIN_KEY)
        c.send(env)
        r = c.recv()
        assert r.request_id == ids[0], r
        expect_body(r, "login_reply")
        # Pipelined requests: each reply carries its own id, in any order.
        sent = {}
        for rid in ids[1:]:
            e = c.envelope("ping", request_id=rid)
            c.send(e)
            sent[rid] = "pong"
        e = c.envelope("upsert_worker", request_id=99, worker_id="",
                       name="", password="", community_id="")
        c.send(e)
        sent[99] = "error"
        e = c.envelope("push_incidents", request_id=100)
        c.send(e)
        sent[100] = "error"
        got = {}
        while len(got) < len(sent):
            r = c.recv()
            assert r.request_id in sent, r
            assert r.request_id not in got, r
            got[r.request_id] = body(r)
        assert got == sent, got


def test_not_implemented():
    with client() as c:
        login_department(c, "civil")
        inc = pb.IncidentIn(ext_id="e1", category="MZ01",
                            occurred_at=int(time.time() * 1000),
                            lon=9.52, lat=47.14)
        r = c.request("push_incidents", incidents=[inc])
        if body(r) == "push_incidents_reply":
            raise harness.Skip("PushIncidents is implemented now")
        err = expect_error(r, "UNAVAILABLE")
        assert err.message == "not implemented yet", err
        expect_body(c.ping(), "pong")


def _start_with_ttl(ttl):
    """gridd with auth.token_ttl_s = ttl, or the smallest TTL the config
    accepts when ttl is below it; returns (daemon, ttl used)."""
    cfg = harness.write_config(harness.tmppath("ttl.conf"),
                               auth__token_ttl_s=ttl)
    d = harness.Gridd(cfg, name="gridd-ttl")
    try:
        return d.start(), ttl
    except AssertionError:
        m = re.search(r"token_ttl_s: \d+ is below the minimum (\d+)",
                      d.log())
        if not m or int(m.group(1)) > 120:
            raise
        ttl = int(m.group(1))
        print("token_ttl_s minimum is %d s: waiting that long" % ttl)
        cfg.set("auth", "token_ttl_s", ttl).write()
        d = harness.Gridd(cfg, name="gridd-ttl")
        return d.start(), ttl


def test_token_expiry():
    d, ttl = _start_with_ttl(2)
    with d:
        with Client(d.addr) as c:
            lr = login_admin(c)
            token = lr.session_token
            t_login = time.time()
            if lr.expires_at:
                now = time.time() * 1000
                assert now < lr.expires_at <= now + ttl * 1000 + 1500, lr
        # Within the TTL the token resumes.
        with Client(d.addr) as c:
            expect_body(c.request("login", role=pb.ADMIN,
                                  principal=ADMIN_ID, resume_token=token),
                        "login_reply")
        time.sleep(max(0, t_login + ttl + 1.2 - time.time()))
        with Client(d.addr) as c:
            expect_error(c.request("login", role=pb.ADMIN,
                                   principal=ADMIN_ID, resume_token=token),
                         "UNAUTHENTICATED")
        # A secret still works.
        with Client(d.addr) as c:
            login_admin(c)
        d.stop()


def test_rate_limited():
    cfg = harness.write_config(
        harness.tmppath("ratelimit.conf"),
        auth__login_max_failures=RL_MAX_FAILURES,
        auth__login_failure_window_s=60)
    with harness.Gridd(cfg, name="gridd-rl").start() as d:
        established = Client(d.addr)
        login_admin(established)
        for i in range(RL_MAX_FAILURES):
            with Client(d.addr) as c:
                expect_error(c.login("ADMIN", ADMIN_ID, "wrong-%d" % i),
                             "UNAUTHENTICATED")
        with Client(d.addr) as c:
            expect_error(c.login("ADMIN", ADMIN_ID, "wrong-last"),
                         "RATE_LIMITED")
        # While limited, even the right key is not checked: otherwise
        # guessing could go on.
        with Client(d.addr) as c:
            expect_error(c.login("ADMIN", ADMIN_ID, ADMIN_KEY),
                         "RATE_LIMITED")
        # Sessions established before keep working meanwhile.
        expect_body(established.ping(), "pong")
        established.close()
        d.stop()


def test_removed_principals_lose_their_sessions():
    """An admin removed from the config and a department left without a
    key lose their open connections and their tokens at the reload; the
    others keep theirs."""
    b_key = "test-admin-b-key-90d1"
    cfg = harness.write_config(harness.tmppath("revoke.conf"),
                               sections={"admin.B": {
                                   "key_sha256": harness.sha256_hex(b_key)}})
    with harness.Gridd(cfg, name="gridd-revoke").start() as d:
        root, b, urban = Client(d.addr), Client(d.addr), Client(d.addr)
        root_token = login_admin(root).session_token
        b_token = check_token(b.login("ADMIN", "B", b_key), "ADMIN",
                              "B").session_token
        urban_token = login_department(urban, "urban").session_token
        civil = Client(d.addr)
        login_department(civil, "civil")

        cfg.remove("admin.B")
        cfg.remove("department.urban", "key_sha256")
        cfg.write()
        since = d.log_size()
        d.reload()
        d.wait_log(r"event=reload outcome=ok", since=since)
        assert b.wait_closed(5), "B's connection stayed open"
        assert urban.wait_closed(5), "urban's connection stayed open"
        expect_body(root.ping(), "pong")
        expect_body(civil.ping(), "pong")

        for role, principal, token in (("ADMIN", "B", b_token),
                                       ("DEPARTMENT", "urban",
                                        urban_token)):
            with Client(d.addr) as c:
                expect_error(c.request("login", role=pb.Role.Value(role),
                                       principal=principal,
                                       resume_token=token),
                             "UNAUTHENTICATED")
        with Client(d.addr) as c:
            expect_body(c.request("login", role=pb.ADMIN,
                                  principal=ADMIN_ID,
                                  resume_token=root_token), "login_reply")
        left = harness.psql1(
            "SELECT count(*) FROM sessions WHERE principal IN "
            "('B', 'urban')", cfg.dbname)
        assert int(left) == 0, left
        for c in (root, b, urban, civil):
            c.close()
        d.stop()


def _store_token(dbname, role, principal):
    """A session row as a login would have stored it; returns the token."""
    token = os.urandom(32).hex()
    harness.psql("INSERT INTO sessions (token_sha256, role, principal,"
                 " expires_at) VALUES ('\\x%s'::bytea, '%s', '%s',"
                 " now() + interval '1 hour')"
                 % (harness.sha256_hex(token), role, principal), dbname)
    return token


def test_resume_needs_a_current_principal():
    """A stored token alone is not enough: the admin or department must be
    in the running config, the worker in the workers table."""
    d = daemon()
    db = d.config.dbname
    cases = [("ADMIN", "admin", "ghost"),
             ("DEPARTMENT", "department", "gone_dept"),
             ("WORKER", "worker", "deleted_worker")]
    for role, db_role, principal in cases:
        token = _store_token(db, db_role, principal)
        with client() as c:
            expect_error(c.request("login", role=pb.Role.Value(role),
                                   principal=principal, resume_token=token),
                         "UNAUTHENTICATED")
    # The same path for a principal that exists resumes.
    token = _store_token(db, "admin", ADMIN_ID)
    with client() as c:
        expect_body(c.request("login", role=pb.ADMIN, principal=ADMIN_ID,
                              resume_token=token), "login_reply")


def test_deadlock_is_unavailable_not_internal():
    """A statement chosen as a deadlock victim did nothing and can be
    retried: UNAVAILABLE with a retry message, not INTERNAL."""
    d = daemon()
    db = d.config.dbname
    upsert_worker("wdead", "first-password-1")
    with client() as c:
        expect_body(c.login("WORKER", "wdead", "first-password-1"),
                    "login_reply")
    # The other transaction holds wdead's session rows and, once the
    # daemon's UpsertWorker has locked the worker row and waits for those
    # sessions, wants the worker row: a cycle. Its own deadlock check is
    # put off, so the daemon's backend finds the cycle and is the victim.
    other = subprocess.Popen(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
         harness.conninfo(db), "-c",
         "SET deadlock_timeout = '60s'; BEGIN;"
         " SELECT 1 FROM sessions WHERE principal = 'wdead' FOR UPDATE;"
         " DO $$ BEGIN FOR i IN 1..400 LOOP"
         " EXIT WHEN EXISTS (SELECT 1 FROM pg_stat_activity"
         " WHERE datname = current_database() AND wait_event_type = 'Lock'"
         " AND pid <> pg_backend_pid());"
         " PERFORM pg_sleep(0.05); END LOOP; END $$;"
         " UPDATE workers SET name = name WHERE worker_id = 'wdead';"
         " COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)
        with client() as c:
            login_admin(c)
            r = c.request("upsert_worker", worker_id="wdead", name="W",
                          password="second-password-2", community_id="c1",
                          max_open=3, timeout=30)
            err = expect_error(r, "UNAVAILABLE")
            assert "retry" in err.message, err.message
    finally:
        _, errout = other.communicate(timeout=30)
    assert other.returncode == 0, errout


def test_daemon_still_up():
    d = daemon()
    assert d.running()
    with client() as c:
        login_admin(c)
        expect_body(c.ping(), "pong")
    d.stop()


if __name__ == "__main__":
    harness.main(globals())

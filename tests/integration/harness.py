"""harness.py - what every Python integration test shares.

A throwaway database per test file, a gridd.conf for tests, the daemon as a
subprocess, and a blocking client speaking the wire protocol (4-byte
big-endian length + Envelope) with the Python code generated from
proto/gridd.proto at test time.

Environment (set by meson and scripts/test):
  GRIDD_SOURCE_DIR, GRIDD_BIN, GRIDCTL_BIN
  GRIDD_TEST_PGHOST, GRIDD_TEST_PGPORT, GRIDD_TEST_PGUSER
  GRIDD_TEST_REQUIRE_PG=1   a missing PostgreSQL fails instead of skipping

A test file is a script: `harness.main(globals())` runs its test_*
functions in the order they are defined, prints `ok NAME`, `skip NAME:
reason` or `FAIL NAME: reason`, and exits 1 if any failed (77 if every test
skipped). Only the standard library and google.protobuf are used.
"""

import atexit
import hashlib
import importlib
import itertools
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

SOURCE_DIR = os.environ.get(
    "GRIDD_SOURCE_DIR",
    os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
GRIDD_BIN = os.environ.get("GRIDD_BIN", "")
GRIDCTL_BIN = os.environ.get("GRIDCTL_BIN", "")
PGHOST = os.environ.get("GRIDD_TEST_PGHOST", "")
PGPORT = os.environ.get("GRIDD_TEST_PGPORT", "")
PGUSER = os.environ.get("GRIDD_TEST_PGUSER", "postgres")
REQUIRE_PG = os.environ.get("GRIDD_TEST_REQUIRE_PG", "") == "1"

SKIP = 77


class Skip(Exception):
    """Raised by a test that cannot run here; reported as `skip`."""


class Timeout(Exception):
    pass


class Closed(Exception):
    """The peer closed the connection."""


# ---- scratch space ------------------------------------------------------

_tmpdir = None


def tmpdir():
    """A private folder for this process, removed at exit."""
    global _tmpdir
    if _tmpdir is None:
        _tmpdir = tempfile.mkdtemp(prefix="gridd-it-")
        if not os.environ.get("GRIDD_TEST_KEEP"):
            atexit.register(shutil.rmtree, _tmpdir, True)
    return _tmpdir


def tmppath(name):
    return os.path.join(tmpdir(), name)


# ---- generated protobuf code ----------------------------------------------

_pb = None
# Tests that push from threads reach proto() first from several at once:
# without the lock each ran protoc, rewriting gridd_pb2.py while another
# thread imported it ("module 'gridd_pb2' has no attribute 'Role'").
_pb_lock = threading.Lock()


def proto():
    """The gridd_pb2 module, generated once per process."""
    global _pb
    with _pb_lock:
        if _pb is None:
            out = os.path.join(tmpdir(), "pb")
            os.makedirs(out, exist_ok=True)
            subprocess.run(
                ["protoc", "--python_out=" + out,
                 "-I", os.path.join(SOURCE_DIR, "proto"),
                 os.path.join(SOURCE_DIR, "proto", "gridd.proto")],
                check=True)
            sys.path.insert(0, out)
            _pb = importlib.import_module("gridd_pb2")
        return _pb


class _LazyProto:
    def __getattr__(self, name):
        return getattr(proto(), name)


# `from harness import pb` then pb.Envelope, pb.ADMIN, pb.BAD_REQUEST, ...
pb = _LazyProto()


# ---- PostgreSQL ---------------------------------------------------------

def have_pg():
    return bool(PGHOST and PGPORT)


def skip_unless_pg():
    """Exits 77 (skip) without a test PostgreSQL; fails if one is required."""
    if have_pg():
        return
    if REQUIRE_PG:
        print("FAIL setup: GRIDD_TEST_REQUIRE_PG=1 but GRIDD_TEST_PGHOST/"
              "GRIDD_TEST_PGPORT are not set")
        sys.exit(1)
    print("skip: no test PostgreSQL (set GRIDD_TEST_PGHOST, "
          "GRIDD_TEST_PGPORT, GRIDD_TEST_PGUSER)")
    sys.exit(SKIP)


def require_pg():
    """Inside a test: Skip without a test PostgreSQL, or fail if one is
    required."""
    if have_pg():
        return
    if REQUIRE_PG:
        raise AssertionError("GRIDD_TEST_REQUIRE_PG=1 but GRIDD_TEST_PGHOST/"
                             "GRIDD_TEST_PGPORT are not set")
    raise Skip("no test PostgreSQL")


def migration_files():
    """The numbered migration files in the source tree's sql/, in order."""
    d = os.path.join(SOURCE_DIR, "sql")
    files = [f for f in os.listdir(d) if re.fullmatch(r"\d+_.+\.sql", f)]
    return sorted(files, key=lambda f: (int(f.split("_", 1)[0]), f))


def _conn_value(v):
    v = str(v)
    if v and re.fullmatch(r"[^\s'\\]+", v):
        return v
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(dbname):
    """A libpq connection string for dbname on the test server."""
    parts = [("host", PGHOST), ("port", PGPORT), ("user", PGUSER),
             ("dbname", dbname)]
    return " ".join(k + "=" + _conn_value(v) for k, v in parts)


def psql(sql, dbname="postgres", check=True):
    """Runs sql with psql; returns rows as lists of strings (unaligned)."""
    r = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
         "-h", PGHOST, "-p", str(PGPORT), "-U", PGUSER, "-d", dbname,
         "-c", sql],
        capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError("psql failed: %s\n%s" % (sql, r.stderr))
    return [line.split("\t") for line in r.stdout.splitlines() if line]


def psql1(sql, dbname="postgres"):
    """The single value of a one-row, one-column query (None if no row)."""
    rows = psql(sql, dbname)
    return rows[0][0] if rows else None


_db_counter = itertools.count(1)


def _drop_database(name):
    psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name, check=False)


def fresh_database(prefix="gridd_test"):
    """Creates a uniquely named empty database, dropped at exit."""
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", prefix), prefix
    name = "%s_%d_%d_%d" % (prefix, os.getpid(), next(_db_counter),
                            int.from_bytes(os.urandom(2), "big"))
    psql('CREATE DATABASE "%s"' % name)
    atexit.register(_drop_database, name)
    return name


# ---- ports ------------------------------------------------------------------

def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_ports_given = set()


def free_port():
    """A TCP port on 127.0.0.1 that nobody uses right now, below the
    kernel's ephemeral range when there is room: the port stays unbound
    until gridd binds it, and a port from the ephemeral range can be taken
    meanwhile by any outgoing connection on the machine (the tests open
    thousands). Gridd.start() picks new ports if one was taken anyway."""
    lo, _ = _ephemeral_range()
    if lo > 11000:
        rnd = random.SystemRandom()
        for _ in range(50):
            port = rnd.randrange(10000, lo)
            # Never twice in one process: a config with a third listener
            # (test_tls) holds two picks unbound at once, and a repeat
            # there fails the start with no lost race to retry.
            if port in _ports_given:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                _ports_given.add(port)
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host, port, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---- config -------------------------------------------------------------

def sha256_hex(s):
    return hashlib.sha256(s.encode()).hexdigest()


# Principals every test config knows. Keys are test values only.
ADMIN_ID = "root"
ADMIN_KEY = "test-admin-key-7f3c9a"
DEPARTMENTS = {
    # id: (name, key, {category code: task type})
    "civil": ("Civil Affairs", "test-civil-key-51e2b8", {
        "MZ01": "elderly_visit",
        "MZ02": "residence_certificate",
        "MZ03": "neighbour_dispute",
        "MZ09": "enterprise_safety_check",
    }),
    "urban": ("Urban Management", "test-urban-key-c04d17", {
        "CG01": "road_damage",
        "CG02": "garbage_sorting",
        "CG03": "elderly_visit",
        "CG09": "enterprise_safety_check",
    }),
}
# One or more task types on every list, every matter and every route.
TASK_TYPES = {
    "garbage_sorting": dict(list="autonomy", matter="small",
                            sla_minutes="2880", route="worker"),
    "elderly_visit": dict(list="assist", matter="small",
                          sla_minutes="1440", route="worker"),
    # Workers' reports of road damage go to urban management; of flood
    # risks, to nobody (refused).
    "road_damage": dict(list="assist", matter="big",
                        sla_minutes="720", route="department",
                        department="urban"),
    "flood_risk": dict(list="assist", matter="big", sla_minutes="360"),
    "enterprise_safety_check": dict(list="negative", matter="big",
                                    sla_minutes="1440", route="department"),
    "residence_certificate": dict(list="certificate", matter="small",
                                  sla_minutes="4320", route="worker"),
    "neighbour_dispute": dict(
        list="autonomy", matter="private", sla_minutes="10080",
        route="referral",
        guidance="Mediation by the residents' committee or a legal aid "
                 "office"),
}


class Config:
    """An ordered gridd.conf: sections of (key, value) lines.

    Section names are as written between brackets ("server",
    "department.civil"). set() replaces a key, add() appends another line
    for repeatable keys (listen), remove() drops keys or whole sections.
    """

    def __init__(self, path):
        self.path = path
        self.sections = {}
        self.api_port = None
        self.http_port = None
        self.auto_ports = False
        self.dbname = None

    def set(self, section, key, value):
        lines = self.sections.setdefault(section, [])
        lines[:] = [kv for kv in lines if kv[0] != key]
        if value is not None:
            lines.append((key, str(value)))
        return self

    def add(self, section, key, value):
        self.sections.setdefault(section, []).append((key, str(value)))
        return self

    def get(self, section, key):
        for k, v in self.sections.get(section, []):
            if k == key:
                return v
        return None

    def values(self, section, key):
        """Every value of a repeatable key, in order."""
        return [v for k, v in self.sections.get(section, []) if k == key]

    def remove(self, section, key=None):
        if key is None:
            self.sections.pop(section, None)
        else:
            self.set(section, key, None)
        return self

    def text(self):
        out = ["# gridd.conf written by tests/integration/harness.py"]
        for name, lines in self.sections.items():
            out.append("")
            out.append("[%s]" % name)
            out.extend("%s = %s" % kv for kv in lines)
        return "\n".join(out) + "\n"

    def write(self, path=None):
        with open(path or self.path, "w", encoding="utf-8") as f:
            f.write(self.text())
        return self

    def line_of(self, section, key):
        """The 1-based line number of key in section, as written."""
        cur = None
        for n, line in enumerate(self.text().splitlines(), 1):
            m = re.fullmatch(r"\[(.*)\]", line)
            if m:
                cur = m.group(1)
            elif cur == section and line.split(" = ", 1)[0] == key:
                return n
        raise KeyError((section, key))

    @property
    def addr(self):
        return ("127.0.0.1", self.api_port)


def write_config(path, dbname=None, api_port=None, http_port=None,
                 sections=None, **overrides):
    """Writes a valid gridd.conf for tests and returns its Config.

    API and admin HTTP listen on free loopback ports, the database is
    dbname on the test server (a fresh one when None), migrations come from
    the source tree's sql/, password hashing is cheap, and the principals
    and task types above are configured. overrides use SECTION__KEY=value
    (server__max_connections=10; None removes the key); sections maps a
    section name to {key: value} for names with dots.
    """
    if dbname is None:
        dbname = fresh_database()
    c = Config(path)
    c.dbname = dbname
    c.auto_ports = api_port is None and http_port is None
    c.api_port = api_port or free_port()
    c.http_port = http_port or free_port()
    c.set("server", "listen", "127.0.0.1:%d" % c.api_port)
    c.set("server", "log_level", "debug")
    c.set("server", "shutdown_timeout_s", "3")
    c.set("admin_http", "listen", "127.0.0.1:%d" % c.http_port)
    c.set("database", "conninfo", conninfo(dbname))
    c.set("database", "pool_size", "4")
    # Generous: the tests run beside sanitizer builds on 2 cores, where a
    # group commit can take seconds. Tests of timeouts set their own.
    c.set("database", "query_timeout_ms", "20000")
    c.set("database", "migrations_dir", os.path.join(SOURCE_DIR, "sql"))
    c.set("auth", "pbkdf2_iterations", "1000")
    # Two ingest transactions in flight (the default), said here because
    # the tests of the ordering rules between them depend on it.
    c.set("dispatch", "group_commit_parallel", "2")
    c.set("admin." + ADMIN_ID, "key_sha256", sha256_hex(ADMIN_KEY))
    for dept, (name, key, cats) in DEPARTMENTS.items():
        s = "department." + dept
        c.set(s, "name", name)
        c.set(s, "key_sha256", sha256_hex(key))
        for code, tt in cats.items():
            c.set(s, "category." + code, tt)
    for name, keys in TASK_TYPES.items():
        for k, v in keys.items():
            c.set("task_type." + name, k, v)
    for k, v in overrides.items():
        section, sep, key = k.partition("__")
        if not sep:
            raise TypeError("override %r is not SECTION__KEY" % k)
        c.set(section, key, v)
    for section, keys in (sections or {}).items():
        if keys is None:
            c.remove(section)
            continue
        for k, v in keys.items():
            c.set(section, k, v)
    return c.write()


# ---- the daemon -------------------------------------------------------------

_daemons = []


def _kill_daemons():
    for d in _daemons:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


atexit.register(_kill_daemons)


def sanitized(binary):
    """True when binary was built with AddressSanitizer."""
    try:
        with open(binary, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


class Gridd:
    """gridd as a subprocess with its stderr in a log file.

    wrapper is a command prefix (valgrind ...). Killed at exit if a test
    leaves it running.
    """

    def __init__(self, config, binary=None, wrapper=None, env=None,
                 name="gridd"):
        self.config = config
        self.path = config.path if isinstance(config, Config) else config
        self.binary = binary or GRIDD_BIN
        self.wrapper = list(wrapper or [])
        self.env = env
        self.proc = None
        self.logpath = tmppath("%s-%d.log" % (name, next(_db_counter)))
        self.returncode = None
        _daemons.append(self)

    @property
    def api_port(self):
        return self.config.api_port

    @property
    def addr(self):
        return self.config.addr

    def start(self, wait=True, timeout=20):
        if not self.binary or not os.access(self.binary, os.X_OK):
            raise AssertionError("gridd binary not found: %r" % self.binary)
        env = dict(os.environ)
        env.update(self.env or {})
        if getattr(self, "_log", None) is not None:
            self._log.close()
        self._log = open(self.logpath, "ab")
        self._started_at = self._log.tell()
        self.proc = subprocess.Popen(
            self.wrapper + [self.binary, "-c", self.path],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            env=env)
        if wait:
            try:
                self.wait_ready(timeout)
            except AssertionError:
                if not self._new_ports_after_lost_race():
                    raise
                return self.start(wait, timeout)
        return self

    def _new_ports_after_lost_race(self):
        """After gridd could not bind a port that free_port() chose, because
        another process took it in between: new ports in the config, at
        most twice per daemon (only when start() waits; a test that waits
        itself sees the failure). False when that is not what happened, or
        the ports were not free_port()'s to change: given by the test, or
        the config has more listeners than the two write_config() made."""
        c = self.config
        if (not isinstance(c, Config) or self.running() or
                not getattr(c, "auto_ports", False) or
                getattr(self, "_port_retries", 0) >= 2 or
                c.values("server", "listen") !=
                ["127.0.0.1:%s" % c.api_port] or
                c.values("admin_http", "listen") !=
                ["127.0.0.1:%s" % c.http_port]):
            return False
        with open(self.logpath, "rb") as f:
            f.seek(self._started_at)
            if b"Address already in use" not in f.read():
                return False
        self._port_retries = getattr(self, "_port_retries", 0) + 1
        c.api_port, c.http_port = free_port(), free_port()
        c.set("server", "listen", "127.0.0.1:%d" % c.api_port)
        c.set("admin_http", "listen", "127.0.0.1:%d" % c.http_port)
        c.write()
        return True

    def wait_ready(self, timeout=20):
        """Waits until this gridd says it is ready and its API port accepts
        connections. The port alone is not proof: ports come from
        free_port(), and between that and gridd's bind another process on
        the machine (a concurrent test's client, say) may have taken it.
        A config that logs less than info has only the port to go by."""
        deadline = time.monotonic() + timeout
        ready = re.compile(rb"event=ready ")
        level = (self.config.get("server", "log_level")
                 if isinstance(self.config, Config) else None)
        quiet = level in ("warn", "error")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    "gridd exited with status %s before it was ready:\n%s"
                    % (self.proc.returncode, self.log_tail()))
            with open(self.logpath, "rb") as f:
                f.seek(self._started_at)
                said = quiet or ready.search(f.read()) is not None
            if said and port_open("127.0.0.1", self.api_port):
                return self
            time.sleep(0.05)
        raise AssertionError("gridd not ready after %ss:\n%s"
                             % (timeout, self.log_tail()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signo):
        self.proc.send_signal(signo)

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def wait_exit(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._log.close()
        return self.returncode

    def stop(self, timeout=5, expect=0):
        """SIGTERM; asserts the exit status within timeout seconds."""
        self.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill()
            raise AssertionError("gridd did not stop within %ss:\n%s"
                                 % (timeout, self.log_tail()))
        if expect is not None and rc != expect:
            raise AssertionError("gridd exited with %s, expected %s:\n%s"
                                 % (rc, expect, self.log_tail()))
        self.stop_seconds = time.monotonic() - t0
        return rc

    def kill(self):
        if self.running():
            self.proc.kill()
        if self.proc is not None:
            self.wait_exit(10)
        return self.returncode

    def log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_since(self, offset):
        """The log text after byte offset (from log_size())."""
        with open(self.logpath, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_size(self):
        return os.path.getsize(self.logpath)

    def log_tail(self, n=40):
        return "\n".join(self.log().splitlines()[-n:])

    def wait_log(self, pattern, timeout=5, since=0):
        """Waits until regex pattern appears in the log after byte offset
        since; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with open(self.logpath, "rb") as f:
                f.seek(since)
                m = rx.search(f.read().decode("utf-8", "replace"))
            if m:
                return m
            if time.monotonic() >= deadline:
                raise AssertionError("no log line matching %r within %ss:\n%s"
                                     % (pattern, timeout, self.log_tail()))
            if not self.running():
                raise AssertionError("gridd exited (%s) while waiting for "
                                     "%r:\n%s" % (self.proc.returncode,
                                                  pattern, self.log_tail()))
            time.sleep(0.05)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def run_gridd(*args, timeout=30, binary=None):
    """Runs gridd with args to completion: (status, stdout, stderr)."""
    r = subprocess.run([binary or GRIDD_BIN] + list(args),
                       capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout, r.stderr


# ---- the client -------------------------------------------------------------

def frame(payload):
    """4-byte big-endian length + payload."""
    return struct.pack(">I", len(payload)) + payload


def role_value(role):
    if isinstance(role, str):
        return proto().Role.Value(role.upper())
    return role


def body(env):
    """The name of the Envelope's body field, or None."""
    return env.WhichOneof("body")


class Client:
    """A blocking connection to gridd: plain TCP, or TLS with an SSLContext.

    request() pairs replies with requests by request_id; server pushes
    (request_id 0) met on the way are kept in .pushes, replies to other
    requests in .replies.
    """

    def __init__(self, addr, tls=None, server_hostname=None, timeout=5):
        self.timeout = timeout
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(
                self.sock, server_hostname=server_hostname or addr[0])
        self.buf = b""
        self.ids = itertools.count(1)
        self.pushes = []
        self.replies = {}

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # raw bytes
    def send_raw(self, data):
        self.sock.sendall(data)

    def send_frame(self, payload):
        self.send_raw(frame(payload))

    def send(self, env):
        self.send_frame(env.SerializeToString())

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout("no data from gridd")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout("no data from gridd") from None
            except ConnectionResetError:
                raise Closed("connection reset") from None
            except ssl.SSLError as e:
                raise Closed("TLS error: %s" % e) from None
            if not chunk:
                raise Closed("connection closed (%d bytes pending)"
                             % len(self.buf))
            self.buf += chunk

    def recv_frame(self, timeout=None):
        """The next frame's payload bytes."""
        deadline = time.monotonic() + (timeout or self.timeout)
        self._fill(4, deadline)
        (n,) = struct.unpack(">I", self.buf[:4])
        self._fill(4 + n, deadline)
        payload, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return payload

    def recv(self, timeout=None):
        """The next Envelope, whatever it is."""
        env = proto().Envelope()
        env.ParseFromString(self.recv_frame(timeout))
        return env

    def recv_push(self, timeout=None):
        """The next server push (request_id 0)."""
        if self.pushes:
            return self.pushes.pop(0)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            env = self.recv(max(0.001, deadline - time.monotonic()))
            if env.request_id == 0:
                return env
            self.replies[env.request_id] = env

    def wait_closed(self, timeout=None):
        """True when the server closes the connection within timeout
        (frames received meanwhile are discarded)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while True:
                self.recv_frame(max(0.001, deadline - time.monotonic()))
        except Closed:
            return True
        except Timeout:
            return False
        except OSError:
            return True

    def envelope(self, body_name, msg=None, request_id=None, **fields):
        env = proto().Envelope()
        env.request_id = next(self.ids) if request_id is None else request_id
        part = getattr(env, body_name)
        if msg is not None:
            part.CopyFrom(msg)
        for k, v in fields.items():
            if isinstance(v, (list, tuple)):
                getattr(part, k).extend(v)
            else:
                setattr(part, k, v)
        part.SetInParent()
        return env

    def request(self, body_name, msg=None, timeout=None, **fields):
        """Sends one request; returns the reply Envelope with its id."""
        env = self.envelope(body_name, msg, **fields)
        self.send(env)
        return self.wait_reply(env.request_id, timeout)

    def wait_reply(self, request_id, timeout=None):
        if request_id in self.replies:
            return self.replies.pop(request_id)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            env = self.recv(max(0.001, deadline - time.monotonic()))
            if env.request_id == request_id:
                return env
            if env.request_id == 0:
                self.pushes.append(env)
            else:
                self.replies[env.request_id] = env

    def login(self, role, principal, secret="", **fields):
        """Sends Login; returns the reply Envelope (login_reply or error)."""
        return self.request("login", role=role_value(role),
                            principal=principal, secret=secret, **fields)

    def ping(self, timeout=None):
        return self.request("ping", timeout=timeout)


def expect_body(env, name):
    got = body(env)
    if got != name:
        raise AssertionError("expected %s, got %s: %s"
                             % (name, got, str(env).strip()))
    return getattr(env, name)


def expect_error(env, code):
    """Asserts env is Error{code}; code is a name or a number."""
    err = expect_body(env, "error")
    want = proto().ErrorCode.Value(code) if isinstance(code, str) else code
    if err.code != want:
        raise AssertionError("expected error %s, got %s (%s)"
                             % (proto().ErrorCode.Name(want),
                                proto().ErrorCode.Name(err.code),
                                err.message))
    return err


def login_admin(client):
    return expect_body(client.login("ADMIN", ADMIN_ID, ADMIN_KEY),
                       "login_reply")


def login_department(client, dept="civil"):
    return expect_body(client.login("DEPARTMENT", dept, DEPARTMENTS[dept][1]),
                       "login_reply")


# ---- TLS material -------------------------------------------------------

def make_tls_files(folder=None):
    """A CA, a server certificate for 127.0.0.1/localhost and a client
    certificate, made with the openssl command. Returns a dict of paths:
    ca, server_cert, server_key, client_cert, client_key."""
    d = folder or tmppath("tls")
    os.makedirs(d, exist_ok=True)
    p = {k: os.path.join(d, k + ".pem") for k in
         ("ca", "ca_key", "server_cert", "server_key", "client_cert",
          "client_key")}

    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True,
                       capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt",
        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=gridd test CA", "-keyout", p["ca_key"],
        "-out", p["ca"])
    for who, cn, ext in (
            ("server", "localhost",
             "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
             "extendedKeyUsage=serverAuth\n"),
            ("client", "civil", "extendedKeyUsage=clientAuth\n")):
        csr = os.path.join(d, who + ".csr")
        extfile = os.path.join(d, who + ".ext")
        with open(extfile, "w") as f:
            f.write(ext)
        run("req", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=" + cn,
            "-keyout", p[who + "_key"], "-out", csr)
        run("x509", "-req", "-in", csr, "-CA", p["ca"], "-CAkey",
            p["ca_key"], "-CAcreateserial", "-days", "2",
            "-extfile", extfile, "-out", p[who + "_cert"])
    return p


def client_tls_context(ca=None, cert=None, key=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        ctx.load_verify_locations(ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


# ---- the runner -------------------------------------------------------------

TEST_TIMEOUT_S = int(os.environ.get("GRIDD_TEST_TIMEOUT_S", "180"))


def _alarm(signo, frame_):
    raise Timeout("test took longer than %ss" % TEST_TIMEOUT_S)


def main(namespace, only=None):
    """Runs namespace's test_* functions in definition order and exits.

    GRIDD_TEST_ONLY=name[,name] (or argv[1:]) runs a subset.
    """
    names = [n for n, f in namespace.items()
             if n.startswith("test_") and callable(f)]
    wanted = only or sys.argv[1:] or [
        w for w in os.environ.get("GRIDD_TEST_ONLY", "").split(",") if w]
    if wanted:
        names = [n for n in names if n in wanted or n[5:] in wanted]
    signal.signal(signal.SIGALRM, _alarm)
    failed = skipped = 0
    for name in names:
        t0 = time.monotonic()
        signal.alarm(TEST_TIMEOUT_S)
        try:
            namespace[name]()
        except Skip as e:
            skipped += 1
            print("skip %s: %s" % (name, e), flush=True)
        except Exception as e:  # every failure is reported, then the next
            failed += 1
            traceback.print_exc(file=sys.stdout)
            reason = str(e).strip().splitlines()
            print("FAIL %s: %s" % (name, reason[0] if reason else
                                   type(e).__name__), flush=True)
        else:
            print("ok %s (%.2fs)" % (name, time.monotonic() - t0),
                  flush=True)
        finally:
            signal.alarm(0)
    print("%d tests: %d passed, %d failed, %d skipped"
          % (len(names), len(names) - failed - skipped, failed, skipped))
    _kill_daemons()
    if failed:
        sys.exit(1)
    if names and skipped == len(names):
        sys.exit(SKIP)
    sys.exit(0)

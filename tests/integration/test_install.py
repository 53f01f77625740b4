"""test_install.py - packaging: `meson install --destdir` of the build this
test runs from lays out binaries, unit, sysusers/tmpfiles snippets, the
example config and the migrations where the README says; the unit passes
`systemd-analyze verify` and scores OK in `systemd-analyze security`; and
README.md's configuration reference is what the binary prints.
"""

import json
import os
import re
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SRC = harness.SOURCE_DIR


def build_dir():
    """The meson build folder gridd was built in (GRIDD_BIN is
    BUILD/daemon/gridd)."""
    if not harness.GRIDD_BIN:
        raise harness.Skip("GRIDD_BIN is not set")
    d = os.path.dirname(os.path.dirname(os.path.abspath(harness.GRIDD_BIN)))
    if not os.path.exists(os.path.join(d, "meson-info")):
        raise harness.Skip("%s is not a meson build folder" % d)
    return d


def options(bdir):
    r = subprocess.run(["meson", "introspect", "--buildoptions", bdir],
                       capture_output=True, text=True, timeout=60,
                       check=True)
    return {o["name"]: o["value"] for o in json.loads(r.stdout)}


_dest = {}


def installed():
    """(destdir, {name: absolute path inside destdir}), installed once."""
    if _dest:
        return _dest["root"], _dest["paths"]
    bdir = build_dir()
    root = harness.tmppath("destdir")
    r = subprocess.run(["meson", "install", "-C", bdir, "--destdir", root,
                        "--no-rebuild", "--quiet"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    o = options(bdir)
    prefix = o["prefix"]

    def under(*parts):
        p = os.path.join(*parts)
        if not os.path.isabs(p):
            p = os.path.join(prefix, p)
        return os.path.join(root, p.lstrip("/"))
    paths = {
        "gridd": under(o["sbindir"], "gridd"),
        "gridctl": under(o["bindir"], "gridctl"),
        "unit": under(prefix, "lib", "systemd", "system", "gridd.service"),
        "sysusers": under(prefix, "lib", "sysusers.d", "gridd.conf"),
        "tmpfiles": under(prefix, "lib", "tmpfiles.d", "gridd.conf"),
        "config": under(o["sysconfdir"], "gridd", "gridd.conf"),
        "sql": under(o["datadir"], "gridd", "sql"),
    }
    _dest.update(root=root, paths=paths, prefix=prefix)
    return root, paths


def test_layout():
    root, p = installed()
    for name in ("gridd", "gridctl"):
        mode = os.stat(p[name]).st_mode
        assert stat.S_ISREG(mode) and mode & 0o111, (name, p[name])
    for name in ("unit", "sysusers", "tmpfiles", "config"):
        assert os.path.isfile(p[name]), (name, p[name])
    want = sorted(f for f in os.listdir(os.path.join(SRC, "sql"))
                  if re.fullmatch(r"\d+_.+\.sql", f))
    got = sorted(os.listdir(p["sql"]))
    assert want and got == want, (got, want)
    for f in want:
        with open(os.path.join(SRC, "sql", f), "rb") as a, \
                open(os.path.join(p["sql"], f), "rb") as b:
            assert a.read() == b.read(), f
    with open(p["sysusers"]) as f:
        assert re.search(r"^u gridd ", f.read(), re.M)
    with open(p["tmpfiles"]) as f:
        assert "/etc/gridd" in f.read()


def test_installed_binaries_run():
    _, p = installed()
    r = subprocess.run([p["gridd"], "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("gridd "), r
    r = subprocess.run([p["gridctl"], "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("gridctl "), r
    # The example config is valid as shipped.
    r = subprocess.run([p["gridd"], "-c", p["config"], "--check"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    # The installed gridd looks for its migrations where they were put.
    r = subprocess.run([p["gridd"], "--config-reference"],
                       capture_output=True, text=True, timeout=30)
    sqldir = os.path.join(_dest["prefix"], "share", "gridd", "sql")
    assert "`%s`" % sqldir in r.stdout, sqldir


def test_unit_verifies_and_scores_ok():
    _, p = installed()
    with open(p["unit"]) as f:
        unit = f.read()
    for want in ("Type=notify", "Restart=on-failure", "ExecReload=",
                 "NoNewPrivileges=yes", "User=gridd"):
        assert want in unit, want
    m = re.search(r"^LimitNOFILE=(\d+)$", unit, re.M)
    # 50,000 clients per process (the connection target) plus the pool,
    # listeners and the admin endpoint.
    assert m and int(m.group(1)) >= 50000 + 1024, "LimitNOFILE"
    analyze = "/usr/bin/systemd-analyze"
    if not os.path.exists(analyze):
        raise harness.Skip("systemd-analyze not installed")
    # verify checks that ExecStart exists: point the unit at the binary
    # just installed, keep every other line.
    unit_copy = harness.tmppath("gridd.service")
    with open(unit_copy, "w") as f:
        f.write(unit.replace("/usr/sbin/gridd", p["gridd"]))
    r = subprocess.run([analyze, "verify", unit_copy], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "gridd.service" not in r.stderr, (
        r.stdout + r.stderr)
    r = subprocess.run([analyze, "security", "--offline=true", unit_copy],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for gridd\.service: "
                  r"([0-9.]+) (\w+)", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= 2.0 and m.group(2) == "OK", m.group(0)
    print("systemd-analyze security: %s %s" % (m.group(1), m.group(2)))


def test_readme_config_reference_is_current():
    if not harness.GRIDD_BIN:
        raise harness.Skip("GRIDD_BIN is not set")
    r = subprocess.run(["/usr/bin/python3",
                        os.path.join(SRC, "scripts", "gen-config-reference"),
                        "--check", harness.GRIDD_BIN],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


if __name__ == "__main__":
    harness.main(globals())

"""test_feed_crash.py - kill -9 of gridd during heavy pushing: every
acknowledged incident survives the restart, and replaying every item
answers DUPLICATE with the incident id of its first answer.

Three connections (two departments) push batches as fast as gridd answers
them, with merges across departments and repeats on purpose; gridd is
SIGKILLed mid-way. A reply is only sent after its transaction committed,
so every ACCEPTED/MERGED answer must be found in the database after the
restart, under the same incident id.
"""

import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import pb, expect_body  # noqa: E402
import test_feed  # noqa: E402

harness.skip_unless_pg()

BATCH = 200
PUSHERS = [("civil", "MZ01", 0), ("urban", "CG03", 1), ("civil", "MZ02", 2)]


def make_items(worker, batch):
    """Batch `batch` of pusher `worker`: points on a lattice shared by the
    two elderly_visit pushers (MZ01 / CG03), so that many items merge
    across departments."""
    out = []
    for i in range(BATCH):
        n = batch * BATCH + i
        lon = 9.5003 + (n % 150) * 0.0001
        lat = 47.1003 + (n // 150 % 150) * 0.0001
        out.append(pb.IncidentIn(ext_id="crash-%d-%d" % (worker, n),
                                 category=PUSHERS[worker][1], lon=lon,
                                 lat=lat))
    return out


def pusher(addr, worker, sent, acked, stop, killed, errors):
    dept = PUSHERS[worker][0]
    try:
        c = harness.Client(addr, timeout=30)
        expect_body(c.login("DEPARTMENT", dept, harness.DEPARTMENTS[dept][1]),
                    "login_reply")
        b = 0
        while not stop.is_set():
            items = make_items(worker, b)
            sent.extend((dept, it) for it in items)
            rep = c.request("push_incidents", incidents=items, timeout=30)
            if harness.body(rep) != "push_incidents_reply":
                errors.append("pusher %d: %s" % (worker, str(rep).strip()))
                break
            for it, r in zip(items, rep.push_incidents_reply.results):
                assert r.ext_id == it.ext_id
                acked[(dept, it.ext_id)] = (r.outcome, r.incident_id)
            b += 1
    except (harness.Closed, harness.Timeout, OSError) as e:
        # Expected once gridd is killed under us; said if it came earlier.
        if not killed.is_set():
            errors.append("pusher %d: %r" % (worker, e))
    except Exception as e:     # noqa: BLE001 - reported by the test
        errors.append("pusher %d: %r" % (worker, e))


def test_kill9_loses_nothing_acknowledged():
    harness.require_pg()
    cfg = harness.write_config(harness.tmppath("crash.conf"))
    g = harness.Gridd(cfg, name="crash").start()
    harness.psql(test_feed.FIXTURE, cfg.dbname)

    sent, acked, errors = [], {}, []
    stop, killed = threading.Event(), threading.Event()
    threads = [threading.Thread(target=pusher,
                                args=(cfg.addr, w, sent, acked, stop, killed,
                                      errors))
               for w in range(len(PUSHERS))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while (len(acked) < 3000 and time.monotonic() < deadline and
           any(t.is_alive() for t in threads)):
        time.sleep(0.02)
    log = g.log_tail(60)
    # Pushers still have batches in flight here: that is the point.
    killed.set()
    g.signal(signal.SIGKILL)
    g.wait_exit(10)
    stop.set()
    for t in threads:
        t.join(40)
    # Only what stopped a pusher before the kill is recorded.
    assert not errors, "pushers: %s\ngridd's log:\n%s" % (
        "; ".join(errors), log)
    assert len(acked) >= 1000, (
        "only %d items acknowledged\ngridd's log:\n%s" % (len(acked), log))
    print("   %d items sent, %d acknowledged before SIGKILL"
          % (len(sent), len(acked)))

    good = (pb.PushResult.Outcome.Value("ACCEPTED"),
            pb.PushResult.Outcome.Value("MERGED"))
    stored = {}
    for dept, ext, inc in harness.psql(
            "SELECT source_id, ext_id, incident_id FROM incident_sources "
            "WHERE ext_id LIKE 'crash-%'", cfg.dbname):
        stored[(dept, ext)] = int(inc)
    lost = [(k, v) for k, v in acked.items()
            if v[0] in good and stored.get(k) != v[1]]
    assert not lost, "acknowledged but not stored: %s" % lost[:5]
    orphans = harness.psql1(
        "SELECT count(*) FROM incidents i WHERE NOT EXISTS (SELECT 1 FROM "
        "incident_sources s WHERE s.incident_id = i.incident_id)",
        cfg.dbname)
    assert orphans == "0", "incidents without a source: %s" % orphans

    # Restart and replay everything that was sent.
    g2 = harness.Gridd(cfg, name="crash2").start()
    before = harness.psql1("SELECT count(*) FROM incidents", cfg.dbname)
    by_dept = {}
    for dept, it in sent:
        by_dept.setdefault(dept, []).append(it)
    replies = {}
    for dept, items in by_dept.items():
        c = harness.Client(cfg.addr, timeout=60)
        expect_body(c.login("DEPARTMENT", dept, harness.DEPARTMENTS[dept][1]),
                    "login_reply")
        for i in range(0, len(items), 1000):
            chunk = items[i:i + 1000]
            res = test_feed.push(c, chunk, timeout=60)
            for it, r in zip(chunk, res):
                replies[(dept, it.ext_id)] = (r.outcome, r.incident_id)
        c.close()
    dup = pb.PushResult.Outcome.Value("DUPLICATE")
    for k, (outcome, inc) in acked.items():
        if outcome not in good:
            continue
        assert replies[k] == (dup, inc), (k, replies[k], inc)
    # What was stored but never acknowledged is a DUPLICATE too, with the
    # stored id; nothing stored twice.
    for k, inc in stored.items():
        assert replies[k] == (dup, inc), (k, replies[k], inc)
    n = harness.psql1("SELECT count(*) FROM incident_sources WHERE ext_id "
                      "LIKE 'crash-%'", cfg.dbname)
    assert int(n) == len(set(replies)), (n, len(set(replies)))
    after_new = sum(1 for k, v in replies.items()
                    if v[0] == pb.PushResult.Outcome.Value("ACCEPTED"))
    after = harness.psql1("SELECT count(*) FROM incidents", cfg.dbname)
    assert int(after) == int(before) + after_new, (before, after, after_new)
    g2.stop()


if __name__ == "__main__":
    harness.main(globals())

"""dispatch_common.py - what the dispatch tests share.

A tiny synthetic community per test (three cells in a row: 1 touches 2, 2
touches 3, 1 and 3 do not), grid workers made with UpsertWorker, incidents
pushed by a department, and a worker client that waits for its offers.
"""

import time

import harness
from harness import pb, expect_body, expect_error, psql, psql1

WORKER_PASSWORD = "worker-pass-1234"
# Communities are laid out side by side from here, 0.01 degrees apart, so
# that a point locates into exactly one; each cell is 0.001 degrees wide.
LON0, LAT0 = 116.300, 39.900
_origins = {}

_seq = [0]


def unique(prefix):
    _seq[0] += 1
    return "%s%d" % (prefix, _seq[0])


def cell_point(tag, cell_no):
    """A point inside cell 1, 2 or 3 of community tag."""
    lon0, lat0 = _origins[tag]
    return (lon0 + 0.001 * (cell_no - 1) + 0.0005, lat0 + 0.0005)


def make_community(dbname, tag):
    """Community TAG with cells TAG-1..TAG-3 (current, with polygons)."""
    lon0 = LON0 + 0.01 * (len(_origins) % 50)
    lat0 = LAT0 + 0.01 * (len(_origins) // 50)
    _origins[tag] = (lon0, lat0)

    def box(x0, x1):
        return ("ST_Multi(ST_MakeEnvelope(%r, %r, %r, %r, 4326))"
                % (x0, lat0, x1, lat0 + 0.001))
    psql("INSERT INTO communities (community_id, name, geom) VALUES "
         "('%s', '%s', %s)" % (tag, tag, box(lon0, lon0 + 0.003)), dbname)
    for n in (1, 2, 3):
        x0 = lon0 + 0.001 * (n - 1)
        psql("INSERT INTO cells (cell_id, community_id, households, geom) "
             "VALUES ('%s-%d', '%s', 100, %s)"
             % (tag, n, tag, box(x0, x0 + 0.001)), dbname)
    return ["%s-%d" % (tag, n) for n in (1, 2, 3)]


def upsert_worker(admin, worker_id, community, cells, max_open=5):
    r = admin.request("upsert_worker", worker_id=worker_id, name=worker_id,
                      password=WORKER_PASSWORD, community_id=community,
                      cell_ids=cells, max_open=max_open)
    expect_body(r, "ok")


def admin_client(addr):
    c = harness.Client(addr)
    harness.login_admin(c)
    return c


def worker_client(addr, worker_id):
    c = harness.Client(addr)
    expect_body(c.login("WORKER", worker_id, WORKER_PASSWORD), "login_reply")
    return c


def check_in(client, on_duty=True, point=None):
    lon, lat = point or (0.0, 0.0)
    r = client.request("check_in", lon=lon, lat=lat, on_duty=on_duty)
    expect_body(r, "ok")


def push_incident(dept_client, tag, cell_no, ext_id=None, category="MZ01"):
    """Pushes one incident into cell cell_no of community tag through
    PushIncidents; returns its id."""
    lon, lat = cell_point(tag, cell_no)
    ext_id = ext_id or unique("ext-")
    item = pb.IncidentIn(ext_id=ext_id, category=category, lon=lon, lat=lat,
                         occurred_at=int(time.time() * 1000),
                         description="dispatch test " + ext_id,
                         address="No. 1 Test Road")
    r = dept_client.request("push_incidents", incidents=[item], timeout=10)
    rep = expect_body(r, "push_incidents_reply")
    res = rep.results[0]
    if res.outcome != pb.PushResult.ACCEPTED:
        raise AssertionError("push not accepted: %s" % res)
    return res.incident_id


def recv_offer(client, incident_id=None, timeout=5.0):
    """The next AssignmentOffer push (for incident_id, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no offer for incident %s within %ss"
                                 % (incident_id, timeout))
        try:
            env = client.recv_push(timeout=left)
        except harness.Timeout:
            continue
        if env.WhichOneof("body") != "assignment_offer":
            continue
        o = env.assignment_offer
        if incident_id is None or o.incident_id == incident_id:
            return o


def no_offer(client, seconds):
    """Asserts that no AssignmentOffer arrives within seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            env = client.recv_push(timeout=deadline - time.monotonic())
        except harness.Timeout:
            return
        if env.WhichOneof("body") == "assignment_offer":
            raise AssertionError("unexpected offer: %s" % env.assignment_offer)


def update(client, assignment_id, action, key="", note="", lon=0.0, lat=0.0):
    return client.request("update_assignment", assignment_id=assignment_id,
                          action=pb.AssignmentAction.Value(action),
                          idempotency_key=key, note=note, lon=lon, lat=lat)


def wait_for(fn, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.05)


def incident_row(dbname, incident_id):
    return psql("SELECT status, coalesce(shortfall, ''), sla_escalated "
                "FROM incidents WHERE incident_id = %d" % incident_id,
                dbname)[0]


def assignments_of(dbname, incident_id):
    """[(worker, state, reason)] in offer order."""
    return [tuple(r) for r in psql(
        "SELECT worker_id, state, reason FROM assignments "
        "WHERE incident_id = %d ORDER BY assignment_id" % incident_id,
        dbname)]


def events_of(dbname, incident_id, dept="civil"):
    """[(status, worker, note)] the department was told, in dept_seq order."""
    return [tuple(r) for r in psql(
        "SELECT status, coalesce(worker_id, ''), note FROM events "
        "WHERE incident_id = %d AND department_id = '%s' ORDER BY dept_seq"
        % (incident_id, dept), dbname)]


def sql_incident(dbname, community, cell_no, dept="civil",
                 task="elderly_visit", deadline="now() + interval '1 day'",
                 notify=True):
    """An incident as the feed commits one for a worker (the row, its
    source, its NEW event, its SLA timer, NOTIFY gridd_dispatch), written
    with SQL; returns its id.  notify=False: as if the notification was
    lost, so that only a scan finds it."""
    tt = harness.TASK_TYPES[task]
    lon, lat = cell_point(community, cell_no)
    ext = unique("sql-")
    # One transaction, as the feed commits it.
    inc = int(psql1(
        "BEGIN; WITH i AS (INSERT INTO incidents (community_id, cell_id, task_type,"
        " list, matter, route, status, owner_department, funder_department,"
        " departments, summary, geom, deadline) VALUES ('%s', '%s-%d', '%s',"
        " '%s', '%s', 'worker', 'new', '%s', %s, ARRAY['%s'], '%s',"
        " ST_SetSRID(ST_MakePoint(%r, %r), 4326), %s) RETURNING *),"
        " s AS (INSERT INTO incident_sources (source_kind, source_id, ext_id,"
        " incident_id, community_id, outcome) SELECT 'department', '%s', '%s',"
        " incident_id, community_id, 'accepted' FROM i),"
        " t AS (INSERT INTO timers (kind, ref_id, community_id, fire_at)"
        " SELECT 'sla', incident_id, community_id, deadline FROM i)"
        " SELECT incident_id, gridd_emit_event(incident_id, 'new', NULL, ''),"
        " CASE WHEN %s THEN pg_notify('gridd_dispatch', incident_id::text)"
        " END FROM i; COMMIT"
        % (community, community, cell_no, task, tt["list"], tt["matter"],
           dept, "'%s'" % dept if tt["list"] == "assist" else "NULL", dept,
           ext, lon, lat, deadline, dept, ext,
           "true" if notify else "false"), dbname))
    return inc

-- report_scale.sql - a city-year of rows for timing the burden report.
--
-- Run on a scratch database that has the migrations applied:
--   psql -d SCRATCH -v ON_ERROR_STOP=1 -f bench/report_scale.sql
-- then time the three report functions with EXPLAIN (ANALYZE) or \timing.
--
-- 1,000,000 incidents over one year in 50 communities, pushed by 10
-- departments (a fifth of them merged with a second department's push),
-- 100,000 refused items, one to three offers per worker-routed incident
-- across 2,000 workers, and 20,000 complaints.  Deterministic: setseed.

SELECT setseed(0.42);

INSERT INTO communities (community_id, name)
SELECT 'C' || lpad(g::text, 3, '0'), 'Community ' || g
FROM generate_series(1, 50) g;

INSERT INTO departments (department_id, name)
SELECT 'dept' || g, 'Department ' || g FROM generate_series(1, 10) g;

INSERT INTO task_types (name, list, matter, route, sla_minutes) VALUES
    ('garbage_sorting', 'autonomy', 'small', 'worker', 2880),
    ('elderly_visit', 'assist', 'small', 'worker', 1440),
    ('road_damage', 'assist', 'big', 'department', 720),
    ('enterprise_safety_check', 'negative', 'big', 'department', 1440),
    ('residence_certificate', 'certificate', 'small', 'worker', 4320),
    ('neighbour_dispute', 'autonomy', 'private', 'referral', 10080);

INSERT INTO workers (worker_id, community_id, name, password_hash)
SELECT 'W' || g, 'C' || lpad((1 + g % 50)::text, 3, '0'), '',
    'pbkdf2-sha256$1000$00112233445566778899aabbccddeeff$'
    || repeat('0', 64)
FROM generate_series(1, 2000) g;

-- Incidents: task type, status and times drawn per row.
CREATE TEMP TABLE gen AS
SELECT g AS id,
    (ARRAY['garbage_sorting', 'elderly_visit', 'road_damage',
	'residence_certificate', 'neighbour_dispute'])[1 + floor(random() * 5)::int]
	AS tt,
    'C' || lpad((1 + floor(random() * 50)::int)::text, 3, '0') AS cid,
    timestamptz '2024-01-01' + random() * interval '365 days' AS created,
    random() AS r1, random() AS r2,
    1 + floor(random() * 10)::int AS dept
FROM generate_series(1, 1000000) g;

INSERT INTO incidents (incident_id, community_id, cell_id, task_type, list,
    matter, route, status, owner_department, departments, created_at,
    occurred_at, updated_at, deadline, closed_at, sla_escalated)
SELECT g.id, g.cid, g.cid || '-001', g.tt, t.list, t.matter, t.route,
    CASE WHEN g.r1 < 0.7 THEN 'closed' WHEN g.r1 < 0.8 THEN 'resolved'
	WHEN g.r1 < 0.9 THEN 'in_progress' WHEN g.r1 < 0.97 THEN 'referred'
	ELSE 'cancelled' END,
    'dept' || g.dept, ARRAY['dept' || g.dept], g.created, g.created,
    g.created, g.created + t.sla_minutes * interval '1 minute',
    CASE WHEN g.r1 < 0.7 THEN g.created + g.r2 * 2 * t.sla_minutes *
	interval '1 minute' END,
    g.r2 > 0.9
FROM gen g JOIN task_types t ON t.name = g.tt;
SELECT setval('incidents_incident_id_seq', 1000000);

INSERT INTO incident_sources (source_kind, source_id, ext_id, incident_id,
    community_id, category, outcome, pushed_at)
SELECT 'department', 'dept' || g.dept, 'E' || g.id, g.id, g.cid, 'X',
    'accepted', g.created
FROM gen g;
-- A fifth is pushed again by the next department and merged.
INSERT INTO incident_sources (source_kind, source_id, ext_id, incident_id,
    community_id, category, outcome, pushed_at)
SELECT 'department', 'dept' || (1 + g.dept % 10), 'M' || g.id, g.id, g.cid,
    'X', 'merged', g.created + interval '5 minutes'
FROM gen g WHERE g.id % 5 = 0;

INSERT INTO rejections (source_id, ext_id, community_id, category, task_type,
    reason, at)
SELECT 'dept' || (1 + g % 10), 'R' || g,
    CASE WHEN g % 4 = 2 THEN NULL
	ELSE 'C' || lpad((1 + g % 50)::text, 3, '0') END,
    'X',
    CASE WHEN g % 4 = 0 THEN 'enterprise_safety_check' END,
    (ARRAY['negative_list', 'unknown_category', 'outside', 'invalid'])
	[1 + g % 4],
    timestamptz '2024-01-01' + (g % 365) * interval '1 day'
FROM generate_series(1, 100000) g;

-- Offers: the last one of each worker-routed incident was accepted unless
-- it is still at 'new'; earlier ones declined or expired.
INSERT INTO assignments (incident_id, worker_id, community_id, state, reason,
    offered_at, expires_at, accepted_at, resolved_at)
SELECT g.id, 'W' || (1 + (g.id * 7 + k) % 2000), g.cid,
    CASE WHEN k < n THEN (CASE WHEN k % 2 = 0 THEN 'declined'
	ELSE 'expired' END)
	WHEN g.r1 < 0.8 THEN 'resolved' ELSE 'accepted' END,
    'primary_cell',
    g.created + k * interval '2 minutes',
    g.created + (k + 1) * interval '2 minutes',
    CASE WHEN k = n THEN g.created + k * interval '2 minutes' +
	g.r2 * interval '90 seconds' END,
    CASE WHEN k = n AND g.r1 < 0.8 THEN g.created + interval '3 hours' *
	(1 + g.r2) END
FROM gen g
JOIN task_types t ON t.name = g.tt AND t.route = 'worker'
CROSS JOIN LATERAL (SELECT (g.id % 3) AS n) nn
CROSS JOIN LATERAL generate_series(0, nn.n) k
WHERE g.r1 < 0.97;

INSERT INTO complaints (incident_id, community_id, reason, complainant,
    departments, filed_at)
SELECT g.id, g.cid,
    (ARRAY['negative_list', 'unfunded', 'duplicate', 'outside_duty',
	'other'])[1 + g.id % 5],
    'W1', ARRAY['dept' || g.dept], g.created + interval '1 day'
FROM gen g WHERE g.id % 50 = 0;

DROP TABLE gen;
VACUUM ANALYZE;

-- 005_report.sql - the burden report (减负 in figures): per department, per
-- department and list, per community, per worker, from the stored rows.
--
-- Contract for callers (the daemon, psql users, other tools):
--
--   gridd_report_departments(from, to, community)
--   gridd_report_communities(from, to, community)
--   gridd_report_workers(from, to, community)
--
-- from and to are timestamptz, the window is [from, to); community is a
-- community id or NULL for the whole city.  Each function is one SELECT, so
-- PostgreSQL inlines it into the caller's statement and plans it with the
-- actual arguments (a NULL community drops its filter instead of planning
-- for both cases).
--
-- What each figure counts (the README's operations section says the same):
--
-- Departments, by the time of the push (incident_sources.pushed_at,
-- rejections.at) and of the complaint (complaints.filed_at):
--   accepted           items that created an incident
--   merged             items attached to another department's (or an
--                      earlier) incident as a further source (one model)
--   rejected_negative  negative-list items refused (负面清单)
--   rejected_unknown_category, rejected_outside, rejected_invalid
--   pushed             accepted + merged + every rejection; replays that
--                      answered DUPLICATE changed nothing and are not counted
--   complaints_*       complaints filed against an incident while the
--                      department was one of its sources, by reason
--   overdue            pushed items whose incident passed its SLA deadline
--                      before it was closed (or is still open past it), or
--                      that dispatch escalated for its SLA; cancelled ones
--                      excluded
--   closed, median_close_ms   items whose incident is closed, and the median
--                      time from the department's push to the close
-- One row per department with list = NULL (all lists), then one per
-- department and list; items without a list (an unknown category) appear
-- in the first only.  Active departments with nothing in the window get a
-- row of zeros, so that a quiet department is visible too.
--
-- Communities, by incident creation time: tasks by list and by matter;
-- to_workers = tasks routed to grid workers (route 'worker'), and
-- government_share = the assist and certificate tasks among them divided by
-- to_workers: how much of the grid workers' load is government work rather
-- than residents' own affairs (政居分离 in one number; NULL without tasks).
--
-- Workers, by offer time: offered, accepted (an accept was recorded),
-- declined, expired, resolved, and the median offer-to-accept and
-- accept-to-resolve times.
--
-- Medians come back as milliseconds (bigint), NULL when there is nothing to
-- take a median of.

-- The window scans.  The core schema indexes these tables per source or
-- per community; a city-wide report needs them by time alone.
CREATE INDEX incident_sources_pushed_idx ON incident_sources (pushed_at);
CREATE INDEX rejections_at_idx ON rejections (at);
CREATE INDEX complaints_filed_idx ON complaints (filed_at);
CREATE INDEX incidents_community_created_idx
	ON incidents (community_id, created_at);
CREATE INDEX assignments_offered_idx ON assignments (offered_at);
CREATE INDEX rejections_community_at_idx ON rejections (community_id, at);
CREATE INDEX incident_sources_community_pushed_idx
	ON incident_sources (community_id, pushed_at);

CREATE FUNCTION gridd_report_departments(p_from timestamptz,
    p_to timestamptz, p_community text)
RETURNS TABLE (department_id text, name text, list text, pushed bigint,
    accepted bigint, merged bigint, rejected_negative bigint,
    rejected_unknown_category bigint, rejected_outside bigint,
    rejected_invalid bigint, complaints_negative_list bigint,
    complaints_unfunded bigint, complaints_duplicate bigint,
    complaints_outside_duty bigint, complaints_other bigint, overdue bigint,
    closed bigint, median_close_ms bigint)
LANGUAGE sql STABLE
AS $$
WITH items AS (
	-- One row per pushed item, refused item, complaint, and a zero row
	-- per active department; the flags below sum into the figures.
	SELECT s.source_id AS dept, i.list,
	    1 AS pushed,
	    (s.outcome = 'accepted')::int AS accepted,
	    (s.outcome = 'merged')::int AS merged,
	    NULL::text AS rejection,
	    NULL::text AS complaint,
	    (i.status <> 'cancelled' AND (i.sla_escalated OR
		(i.deadline IS NOT NULL AND
		 coalesce(i.closed_at, now()) > i.deadline)))::int AS overdue,
	    CASE WHEN i.status = 'closed' AND i.closed_at IS NOT NULL
		THEN extract(epoch FROM i.closed_at - s.pushed_at) * 1000
	    END AS close_ms
	FROM incident_sources s
	JOIN incidents i ON i.incident_id = s.incident_id
	WHERE s.source_kind = 'department'
	    AND s.pushed_at >= p_from AND s.pushed_at < p_to
	    AND (p_community IS NULL OR s.community_id = p_community)
	UNION ALL
	SELECT r.source_id,
	    CASE WHEN r.reason = 'negative_list' THEN 'negative'
		ELSE t.list END,
	    1, 0, 0, r.reason, NULL, 0, NULL
	FROM rejections r
	LEFT JOIN task_types t ON t.name = r.task_type
	WHERE r.source_kind = 'department'
	    AND r.at >= p_from AND r.at < p_to
	    AND (p_community IS NULL OR r.community_id = p_community)
	UNION ALL
	SELECT d.dept, i.list, 0, 0, 0, NULL, c.reason, 0, NULL
	FROM complaints c
	CROSS JOIN LATERAL unnest(c.departments) AS d(dept)
	LEFT JOIN incidents i ON i.incident_id = c.incident_id
	WHERE c.filed_at >= p_from AND c.filed_at < p_to
	    AND (p_community IS NULL OR c.community_id = p_community)
	UNION ALL
	SELECT dp.department_id, NULL, 0, 0, 0, NULL, NULL, 0, NULL
	FROM departments dp
	WHERE dp.active
),
figures AS (
	SELECT dept, list, GROUPING(list) AS all_lists,
	    sum(pushed) AS pushed,
	    sum(accepted) AS accepted,
	    sum(merged) AS merged,
	    count(*) FILTER (WHERE rejection = 'negative_list') AS r_neg,
	    count(*) FILTER (WHERE rejection = 'unknown_category') AS r_unk,
	    count(*) FILTER (WHERE rejection = 'outside') AS r_out,
	    count(*) FILTER (WHERE rejection = 'invalid') AS r_inv,
	    count(*) FILTER (WHERE complaint = 'negative_list') AS c_neg,
	    count(*) FILTER (WHERE complaint = 'unfunded') AS c_unf,
	    count(*) FILTER (WHERE complaint = 'duplicate') AS c_dup,
	    count(*) FILTER (WHERE complaint = 'outside_duty') AS c_out,
	    count(*) FILTER (WHERE complaint = 'other') AS c_oth,
	    sum(overdue) AS overdue,
	    count(close_ms) AS closed,
	    percentile_cont(0.5) WITHIN GROUP (ORDER BY close_ms) AS med
	FROM items
	GROUP BY GROUPING SETS ((dept), (dept, list))
)
SELECT f.dept, coalesce(dp.name, ''),
    CASE WHEN f.all_lists = 1 THEN NULL ELSE f.list END,
    f.pushed, f.accepted, f.merged, f.r_neg, f.r_unk, f.r_out, f.r_inv,
    f.c_neg, f.c_unf, f.c_dup, f.c_out, f.c_oth, f.overdue, f.closed,
    round(f.med)::bigint
FROM figures f
LEFT JOIN departments dp ON dp.department_id = f.dept
-- Per-list rows of nothing (the zero rows) and of items without a list
-- would only repeat the total.
WHERE f.all_lists = 1 OR (f.list IS NOT NULL AND
    f.pushed + f.c_neg + f.c_unf + f.c_dup + f.c_out + f.c_oth > 0)
ORDER BY f.dept, f.all_lists DESC,
    array_position(ARRAY['autonomy', 'assist', 'negative', 'certificate'],
	f.list)
$$;

CREATE FUNCTION gridd_report_communities(p_from timestamptz,
    p_to timestamptz, p_community text)
RETURNS TABLE (community_id text, name text, tasks bigint, autonomy bigint,
    assist bigint, certificate bigint, big bigint, small bigint,
    private bigint, to_workers bigint, to_workers_government bigint,
    government_share double precision)
LANGUAGE sql STABLE
AS $$
WITH figures AS (
	SELECT i.community_id AS cid,
	    count(*) AS tasks,
	    count(*) FILTER (WHERE i.list = 'autonomy') AS autonomy,
	    count(*) FILTER (WHERE i.list = 'assist') AS assist,
	    count(*) FILTER (WHERE i.list = 'certificate') AS certificate,
	    count(*) FILTER (WHERE i.matter = 'big') AS big,
	    count(*) FILTER (WHERE i.matter = 'small') AS small,
	    count(*) FILTER (WHERE i.matter = 'private') AS private,
	    count(*) FILTER (WHERE i.route = 'worker') AS to_workers,
	    count(*) FILTER (WHERE i.route = 'worker' AND
		i.list IN ('assist', 'certificate')) AS to_workers_gov
	FROM incidents i
	WHERE i.created_at >= p_from AND i.created_at < p_to
	    AND (p_community IS NULL OR i.community_id = p_community)
	GROUP BY i.community_id
)
SELECT f.cid, coalesce(c.name, ''), f.tasks, f.autonomy, f.assist,
    f.certificate, f.big, f.small, f.private, f.to_workers, f.to_workers_gov,
    CASE WHEN f.to_workers > 0
	THEN f.to_workers_gov::double precision / f.to_workers END
FROM figures f
LEFT JOIN communities c ON c.community_id = f.cid
ORDER BY f.cid
$$;

CREATE FUNCTION gridd_report_workers(p_from timestamptz, p_to timestamptz,
    p_community text)
RETURNS TABLE (worker_id text, community_id text, offered bigint,
    accepted bigint, declined bigint, expired bigint, resolved bigint,
    median_accept_ms bigint, median_resolve_ms bigint)
LANGUAGE sql STABLE
AS $$
SELECT a.worker_id, min(a.community_id),
    count(*),
    count(a.accepted_at),
    count(*) FILTER (WHERE a.state = 'declined'),
    count(*) FILTER (WHERE a.state = 'expired'),
    count(a.resolved_at),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY
	extract(epoch FROM a.accepted_at - a.offered_at) * 1000))::bigint,
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY
	extract(epoch FROM a.resolved_at - a.accepted_at) * 1000))::bigint
FROM assignments a
WHERE a.offered_at >= p_from AND a.offered_at < p_to
    AND (p_community IS NULL OR a.community_id = p_community)
GROUP BY a.worker_id
ORDER BY a.worker_id
$$;

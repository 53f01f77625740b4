-- 005_report.sql - the burden report (减负 in figures): per department, per
-- department and list, per community, per worker, from the stored rows, and
-- the daily roll-ups that keep a year-long report fast.
--
-- Contract for callers (the daemon, psql users, other tools):
--
--   gridd_report_departments(from, to, community)
--   gridd_report_communities(from, to, community)
--   gridd_report_workers(from, to, community)
--   gridd_report_refresh(from, to, budget_ms, wait)   roll up finished days
--
-- from and to are timestamptz, the window is [from, to); community is a
-- community id or NULL for the whole city.  Each report function is one
-- SELECT, so PostgreSQL inlines it into the caller's statement and plans it
-- with the actual arguments (a NULL community drops its filter instead of
-- planning for both cases).  The report functions are exact whether or not
-- gridd_report_refresh ran: a day without a valid roll-up is computed from
-- the stored rows; the refresh only makes it fast.
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
--   overdue            pushed items whose incident the SLA timer escalated
--                      (sla_escalated), or will escalate when it fires: not
--                      a referral to residents, still open (not resolved,
--                      closed or cancelled) and its deadline passed.  This
--                      is exactly the timer's rule (gridd_sla_fire in
--                      004_dispatch.sql): an incident resolved by its
--                      deadline is on time even if its department verifies
--                      it later, and one open at its deadline is overdue
--                      for good, whenever it is resolved.  Cancelled
--                      incidents are nobody's burden and never count.
--   closed, median_close_ms   items whose incident is closed, and the median
--                      time from the department's push to the close
-- One row per department with list = NULL (all lists), then one per
-- department and list; items without a list (an unknown category) appear
-- in the first only.  Active departments with nothing in the window get a
-- row of zeros, so that a quiet department is visible too.  A per-community
-- report counts a refused item only when its rejection row names the
-- community (rejections.community_id; NULL for an item outside every
-- community, and for items the feed refused before locating them); the
-- whole-city report counts them all.
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
-- take a median of.  They are exact (percentile_cont) when the window holds
-- no rolled-up day; otherwise they come from histograms (see below) and are
-- within 2^(1/16) - 1 = 4.4% of the exact value (half that for a value in a
-- bucket's middle).
--
-- Roll-ups.  A UTC day that has been over for an hour (the margin covers a
-- transaction that started before midnight and commits after) is rolled up
-- into report_dept_days, report_community_days and report_worker_days: the
-- sums of the figures above per day and key, and for the medians a
-- histogram per day and key with 16 buckets per doubling of the duration
-- (bucket b >= 1 holds [2^((b-1)/16), 2^(b/16)) ms, bucket 0 anything under
-- 1 ms).  A report then reads one row per day and key for the days it
-- covers in full and computes only its partial first and last days (and
-- today) from the stored rows.  A roll-up stays valid until:
--   * a row it summed changes: triggers below append the day to
--     report_dirty in the changing transaction (an incident's status,
--     route, deadline, escalation or close, an assignment's state or times,
--     and rows inserted with a time in an earlier day), so a report that
--     sees the change also sees that the day must be computed afresh;
--   * time alone changes a figure: an open incident reaching its deadline
--     becomes overdue, so a day's roll-up expires (valid_until) at the
--     earliest such deadline among its items.
-- Rows are never deleted by gridd; whoever deletes report rows by hand
-- calls gridd_report_forget(from, to) in the same transaction.
-- gridd_report_refresh consumes report_dirty, recomputes what is missing,
-- newest day first, stops after its time budget, and runs in one process
-- at a time (an advisory lock; a second caller returns at once).

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

-- Days, buckets, the overdue rule ---------------------------------------

-- UTC day number since 1970-01-01, and the instant a day starts.
CREATE FUNCTION gridd_report_day(p_at timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT floor(extract(epoch FROM p_at) / 86400)::integer $$;

CREATE FUNCTION gridd_report_day_start(p_day integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT to_timestamp(p_day::double precision * 86400) $$;

-- The first day not yet over for an hour: days before it may be rolled up.
CREATE FUNCTION gridd_report_open_day() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT gridd_report_day(now() - interval '1 hour') $$;

CREATE FUNCTION gridd_report_bucket(p_ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT CASE WHEN p_ms IS NULL THEN NULL WHEN p_ms < 1 THEN 0
	ELSE 1 + floor(ln(p_ms) / ln(2) * 16)::integer END
$$;

-- The median of a histogram (buckets ascending, counts) as percentile_cont
-- takes it: position (n - 1) / 2, interpolated between the values at the
-- positions either side.  A value at position k is placed geometrically
-- within its bucket by its rank there, so each is within the bucket's
-- width (a factor 2^(1/16)) of the true k-th value, and so is the median.
--   The input may also be several histograms concatenated (buckets out of
-- order, repeated): they are added up by bucket first.
CREATE FUNCTION gridd_report_hist_median(p_b integer[], p_n bigint[])
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
	v_total bigint := 0;
	v_before bigint := 0;
	v_pos double precision;
	v_k0 bigint;
	v_k1 bigint;
	v_v0 double precision;
	v_v1 double precision;
	v_sorted boolean := true;
	v_max integer := 0;
	v_dense bigint[];
BEGIN
	FOR i IN 1 .. coalesce(cardinality(p_n), 0) LOOP
		v_total := v_total + p_n[i];
		v_max := greatest(v_max, p_b[i]);
		IF i > 1 AND p_b[i] <= p_b[i - 1] THEN
			v_sorted := false;
		END IF;
	END LOOP;
	IF NOT v_sorted THEN
		v_dense := array_fill(0::bigint, ARRAY[v_max + 1]);
		FOR i IN 1 .. cardinality(p_n) LOOP
			v_dense[greatest(p_b[i], 0) + 1] :=
			    v_dense[greatest(p_b[i], 0) + 1] + p_n[i];
		END LOOP;
		p_b := '{}';
		p_n := '{}';
		FOR i IN 1 .. v_max + 1 LOOP
			IF v_dense[i] > 0 THEN
				p_b := p_b || (i - 1);
				p_n := p_n || v_dense[i];
			END IF;
		END LOOP;
	END IF;
	IF v_total = 0 THEN
		RETURN NULL;
	END IF;
	v_pos := (v_total - 1) / 2.0;
	v_k0 := floor(v_pos);
	v_k1 := ceil(v_pos);
	FOR i IN 1 .. cardinality(p_n) LOOP
		IF v_v0 IS NULL AND v_k0 < v_before + p_n[i] THEN
			v_v0 := CASE WHEN p_b[i] <= 0 THEN 0 ELSE power(2,
			    (p_b[i] - 1 + (v_k0 - v_before + 0.5) / p_n[i]) /
			    16.0) END;
		END IF;
		IF v_k1 < v_before + p_n[i] THEN
			v_v1 := CASE WHEN p_b[i] <= 0 THEN 0 ELSE power(2,
			    (p_b[i] - 1 + (v_k1 - v_before + 0.5) / p_n[i]) /
			    16.0) END;
			RETURN round(v_v0 + (v_pos - v_k0) * (v_v1 - v_v0));
		END IF;
		v_before := v_before + p_n[i];
	END LOOP;
	RETURN NULL;
END
$$;

-- Concatenates the histograms of a group's periods for the function above.
CREATE AGGREGATE gridd_report_cat(anycompatiblearray) (
	SFUNC = array_cat,
	STYPE = anycompatiblearray,
	INITCOND = '{}'
);

-- Overdue, as the SLA timer decides it (see the header).
CREATE FUNCTION gridd_report_overdue(p_status text, p_route text,
    p_escalated boolean, p_deadline timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
SELECT p_status <> 'cancelled' AND (p_escalated OR
    (p_route <> 'referral' AND p_status NOT IN ('resolved', 'closed') AND
     p_deadline IS NOT NULL AND p_deadline <= now()))
$$;

-- Roll-up tables ------------------------------------------------------------

-- Periods rolled up: a day (span 1), or a calendar month or year (span =
-- its days) summed from the days or months it holds, and until when their
-- figures hold without a row change.  A period exists only while every day
-- in it does: dropping a day drops the periods that hold it.
CREATE TABLE report_days (
	day		integer NOT NULL,	-- the first day
	span		integer NOT NULL DEFAULT 1 CHECK (span >= 1),
	computed_at	timestamptz NOT NULL DEFAULT now(),
	valid_until	timestamptz NOT NULL DEFAULT 'infinity',
	PRIMARY KEY (day, span)
);

-- Days whose rows changed after they were rolled up.  Append-only for the
-- writers (no unique key, so concurrent writers never wait on each other);
-- the refresh deletes what it consumed.
CREATE TABLE report_dirty (
	day		integer NOT NULL,
	at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX report_dirty_day_idx ON report_dirty (day);

-- community_id '' = the whole city (ids are never empty), including
-- refusals that name no community.
CREATE TABLE report_dept_days (
	day		integer NOT NULL,
	span		integer NOT NULL,
	community_id	text NOT NULL,
	department_id	text NOT NULL,
	list		text,
	pushed		bigint NOT NULL,
	accepted	bigint NOT NULL,
	merged		bigint NOT NULL,
	r_neg		bigint NOT NULL,
	r_unk		bigint NOT NULL,
	r_out		bigint NOT NULL,
	r_inv		bigint NOT NULL,
	c_neg		bigint NOT NULL,
	c_unf		bigint NOT NULL,
	c_dup		bigint NOT NULL,
	c_out		bigint NOT NULL,
	c_oth		bigint NOT NULL,
	overdue		bigint NOT NULL,
	closed		bigint NOT NULL,
	close_b		integer[] NOT NULL,	-- histogram buckets, ascending
	close_n		bigint[] NOT NULL	-- and their counts
);
CREATE INDEX report_dept_days_idx
	ON report_dept_days (community_id, span, day);
CREATE INDEX report_dept_days_span_idx ON report_dept_days (span, day);

CREATE TABLE report_community_days (
	day		integer NOT NULL,
	span		integer NOT NULL,
	community_id	text NOT NULL,
	tasks		bigint NOT NULL,
	autonomy	bigint NOT NULL,
	assist		bigint NOT NULL,
	certificate	bigint NOT NULL,
	big		bigint NOT NULL,
	small		bigint NOT NULL,
	private		bigint NOT NULL,
	to_workers	bigint NOT NULL,
	to_workers_gov	bigint NOT NULL,
	PRIMARY KEY (span, day, community_id)
);
CREATE INDEX report_community_days_idx
	ON report_community_days (community_id, span, day);

-- scope '' = the offers of every community, else those of one; the
-- worker's community is the least of its offers' (as the report shows).
CREATE TABLE report_worker_days (
	day		integer NOT NULL,
	span		integer NOT NULL,
	scope		text NOT NULL,
	worker_id	text NOT NULL,
	community_id	text NOT NULL,
	offered		bigint NOT NULL,
	accepted	bigint NOT NULL,
	declined	bigint NOT NULL,
	expired		bigint NOT NULL,
	resolved	bigint NOT NULL,
	accept_b	integer[] NOT NULL,
	accept_n	bigint[] NOT NULL,
	resolve_b	integer[] NOT NULL,
	resolve_n	bigint[] NOT NULL,
	PRIMARY KEY (span, day, scope, worker_id)
);
CREATE INDEX report_worker_days_idx
	ON report_worker_days (scope, span, day);

-- The items of the report, in [p_lo, p_hi), one row each -----------------

-- Pushed items, refusals, complaints against departments: per item its
-- department, list, community (NULL: a refusal nobody located) and flags.
CREATE FUNCTION gridd_report_dept_items(p_lo timestamptz, p_hi timestamptz,
    p_community text)
RETURNS TABLE (dept text, list text, community text, pushed integer,
    accepted integer, merged integer, rejection text, complaint text,
    overdue integer, close_ms double precision, open_deadline timestamptz)
LANGUAGE sql STABLE
AS $$
SELECT s.source_id, i.list, s.community_id,
    1, (s.outcome = 'accepted')::int, (s.outcome = 'merged')::int,
    NULL::text, NULL::text,
    gridd_report_overdue(i.status, i.route, i.sla_escalated,
	i.deadline)::int,
    CASE WHEN i.status = 'closed' AND i.closed_at IS NOT NULL
	THEN extract(epoch FROM i.closed_at - s.pushed_at) * 1000 END,
    -- When time alone would make this item overdue.
    CASE WHEN i.route <> 'referral' AND NOT i.sla_escalated AND
	i.status NOT IN ('resolved', 'closed', 'cancelled') AND
	i.deadline > now() THEN i.deadline END
FROM incident_sources s
JOIN incidents i ON i.incident_id = s.incident_id
WHERE s.source_kind = 'department'
    AND s.pushed_at >= p_lo AND s.pushed_at < p_hi
    AND (p_community IS NULL OR s.community_id = p_community)
UNION ALL
SELECT r.source_id,
    CASE WHEN r.reason = 'negative_list' THEN 'negative' ELSE t.list END,
    r.community_id, 1, 0, 0, r.reason, NULL, 0, NULL, NULL
FROM rejections r
LEFT JOIN task_types t ON t.name = r.task_type
WHERE r.source_kind = 'department'
    AND r.at >= p_lo AND r.at < p_hi
    AND (p_community IS NULL OR r.community_id = p_community)
UNION ALL
SELECT d.dept, i.list, c.community_id, 0, 0, 0, NULL, c.reason, 0, NULL,
    NULL
FROM complaints c
CROSS JOIN LATERAL unnest(c.departments) AS d(dept)
LEFT JOIN incidents i ON i.incident_id = c.incident_id
WHERE c.filed_at >= p_lo AND c.filed_at < p_hi
    AND (p_community IS NULL OR c.community_id = p_community)
$$;

CREATE FUNCTION gridd_report_worker_items(p_lo timestamptz,
    p_hi timestamptz, p_community text)
RETURNS TABLE (worker_id text, community_id text, offered integer,
    accepted integer, declined integer, expired integer, resolved integer,
    accept_ms double precision, resolve_ms double precision)
LANGUAGE sql STABLE
AS $$
SELECT a.worker_id, a.community_id, 1,
    (a.accepted_at IS NOT NULL)::int,
    (a.state = 'declined')::int,
    (a.state = 'expired')::int,
    (a.resolved_at IS NOT NULL)::int,
    extract(epoch FROM a.accepted_at - a.offered_at) * 1000,
    extract(epoch FROM a.resolved_at - a.accepted_at) * 1000
FROM assignments a
WHERE a.offered_at >= p_lo AND a.offered_at < p_hi
    AND (p_community IS NULL OR a.community_id = p_community)
$$;

CREATE FUNCTION gridd_report_community_items(p_lo timestamptz,
    p_hi timestamptz, p_community text)
RETURNS TABLE (community_id text, tasks bigint, autonomy bigint,
    assist bigint, certificate bigint, big bigint, small bigint,
    private bigint, to_workers bigint, to_workers_gov bigint)
LANGUAGE sql STABLE
AS $$
SELECT i.community_id,
    count(*),
    count(*) FILTER (WHERE i.list = 'autonomy'),
    count(*) FILTER (WHERE i.list = 'assist'),
    count(*) FILTER (WHERE i.list = 'certificate'),
    count(*) FILTER (WHERE i.matter = 'big'),
    count(*) FILTER (WHERE i.matter = 'small'),
    count(*) FILTER (WHERE i.matter = 'private'),
    count(*) FILTER (WHERE i.route = 'worker'),
    count(*) FILTER (WHERE i.route = 'worker' AND
	i.list IN ('assist', 'certificate'))
FROM incidents i
WHERE i.created_at >= p_lo AND i.created_at < p_hi
    AND (p_community IS NULL OR i.community_id = p_community)
GROUP BY i.community_id
$$;

-- Rolling up one day --------------------------------------------------------

CREATE FUNCTION gridd_report_drop(p_day integer, p_span integer) RETURNS void
LANGUAGE sql
AS $$
DELETE FROM report_dept_days WHERE span = p_span AND day = p_day;
DELETE FROM report_community_days WHERE span = p_span AND day = p_day;
DELETE FROM report_worker_days WHERE span = p_span AND day = p_day;
DELETE FROM report_days WHERE span = p_span AND day = p_day;
$$;

-- The calendar month or year (p_unit) that starts on day p_day: its span
-- in days, or NULL when p_day does not start one.
CREATE FUNCTION gridd_report_period_span(p_day integer, p_unit text)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT CASE WHEN date_trunc(p_unit, d::timestamp)::date = d
	THEN ((d + ('1 ' || p_unit)::interval)::date - d) END
FROM (SELECT date '1970-01-01' + p_day AS d) x
$$;

CREATE FUNCTION gridd_report_roll_day(p_day integer) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	v_lo timestamptz := gridd_report_day_start(p_day);
	v_hi timestamptz := gridd_report_day_start(p_day + 1);
	v_valid timestamptz;
BEGIN
	PERFORM gridd_report_drop(p_day, 1);

	WITH items AS (
		SELECT * FROM gridd_report_dept_items(v_lo, v_hi, NULL)
	),
	keyed AS (
		-- Every item counts for the city ('') and, when it has one,
		-- for its community.
		SELECT '' AS cid, * FROM items
		UNION ALL
		SELECT community, * FROM items WHERE community IS NOT NULL
	),
	hist AS (
		SELECT cid, dept, list, b, count(*) AS n
		FROM (SELECT cid, dept, list,
		    gridd_report_bucket(close_ms) AS b FROM keyed
		    WHERE close_ms IS NOT NULL) x
		GROUP BY cid, dept, list, b
	),
	hists AS (
		SELECT cid, dept, list, array_agg(b ORDER BY b) AS bs,
		    array_agg(n ORDER BY b) AS ns
		FROM hist GROUP BY cid, dept, list
	),
	sums AS (
		SELECT cid, dept, list, sum(pushed) AS pushed,
		    sum(accepted) AS accepted, sum(merged) AS merged,
		    count(*) FILTER (WHERE rejection = 'negative_list') AS r_neg,
		    count(*) FILTER (WHERE rejection = 'unknown_category')
			AS r_unk,
		    count(*) FILTER (WHERE rejection = 'outside') AS r_out,
		    count(*) FILTER (WHERE rejection = 'invalid') AS r_inv,
		    count(*) FILTER (WHERE complaint = 'negative_list')
			AS c_neg,
		    count(*) FILTER (WHERE complaint = 'unfunded') AS c_unf,
		    count(*) FILTER (WHERE complaint = 'duplicate') AS c_dup,
		    count(*) FILTER (WHERE complaint = 'outside_duty')
			AS c_out,
		    count(*) FILTER (WHERE complaint = 'other') AS c_oth,
		    sum(overdue) AS overdue, count(close_ms) AS closed
		FROM keyed GROUP BY cid, dept, list
	)
	INSERT INTO report_dept_days
	SELECT p_day, 1, s.cid, s.dept, s.list, s.pushed, s.accepted, s.merged,
	    s.r_neg, s.r_unk, s.r_out, s.r_inv, s.c_neg, s.c_unf, s.c_dup,
	    s.c_out, s.c_oth, s.overdue, s.closed,
	    coalesce(h.bs, '{}'), coalesce(h.ns, '{}')
	FROM sums s
	LEFT JOIN hists h ON h.cid = s.cid AND h.dept = s.dept
	    AND h.list IS NOT DISTINCT FROM s.list;

	SELECT min(open_deadline) INTO v_valid
	FROM gridd_report_dept_items(v_lo, v_hi, NULL);

	INSERT INTO report_community_days
	SELECT p_day, 1, * FROM gridd_report_community_items(v_lo, v_hi, NULL);

	WITH items AS (
		SELECT * FROM gridd_report_worker_items(v_lo, v_hi, NULL)
	),
	keyed AS (
		SELECT '' AS scope, * FROM items
		UNION ALL
		SELECT community_id, * FROM items
	),
	ah AS (
		SELECT scope, worker_id,
		    array_agg(b ORDER BY b) AS bs, array_agg(n ORDER BY b) AS ns
		FROM (SELECT scope, worker_id,
		    gridd_report_bucket(accept_ms) AS b, count(*) AS n
		    FROM keyed WHERE accept_ms IS NOT NULL
		    GROUP BY 1, 2, 3) x
		GROUP BY scope, worker_id
	),
	rh AS (
		SELECT scope, worker_id,
		    array_agg(b ORDER BY b) AS bs, array_agg(n ORDER BY b) AS ns
		FROM (SELECT scope, worker_id,
		    gridd_report_bucket(resolve_ms) AS b, count(*) AS n
		    FROM keyed WHERE resolve_ms IS NOT NULL
		    GROUP BY 1, 2, 3) x
		GROUP BY scope, worker_id
	),
	sums AS (
		SELECT scope, worker_id, min(community_id) AS community_id,
		    sum(offered) AS offered, sum(accepted) AS accepted,
		    sum(declined) AS declined, sum(expired) AS expired,
		    sum(resolved) AS resolved
		FROM keyed GROUP BY scope, worker_id
	)
	INSERT INTO report_worker_days
	SELECT p_day, 1, s.scope, s.worker_id, s.community_id, s.offered,
	    s.accepted, s.declined, s.expired, s.resolved,
	    coalesce(a.bs, '{}'), coalesce(a.ns, '{}'),
	    coalesce(r.bs, '{}'), coalesce(r.ns, '{}')
	FROM sums s
	LEFT JOIN ah a USING (scope, worker_id)
	LEFT JOIN rh r USING (scope, worker_id);

	INSERT INTO report_days (day, span, computed_at, valid_until)
	VALUES (p_day, 1, now(), coalesce(v_valid, 'infinity'));
END
$$;

-- A month or year: the sums of the periods of span p_part_min ..
-- p_part_max in it (days for a month, months for a year), histograms
-- merged.  False, and nothing stored, unless those cover every day.
CREATE FUNCTION gridd_report_roll_period(p_day integer, p_span integer,
    p_part_min integer, p_part_max integer) RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
	v_days bigint;
	v_valid timestamptz;
BEGIN
	SELECT sum(span), min(valid_until) INTO v_days, v_valid
	FROM report_days
	WHERE day >= p_day AND day < p_day + p_span
	    AND span BETWEEN p_part_min AND p_part_max;
	IF v_days IS DISTINCT FROM p_span THEN
		RETURN false;
	END IF;
	PERFORM gridd_report_drop(p_day, p_span);

	WITH parts AS (
		SELECT * FROM report_dept_days
		WHERE span BETWEEN p_part_min AND p_part_max
		    AND day >= p_day AND day < p_day + p_span
	),
	hists AS (
		SELECT community_id, department_id, list,
		    array_agg(b ORDER BY b) AS bs, array_agg(n ORDER BY b) AS ns
		FROM (SELECT p.community_id, p.department_id, p.list, h.b,
			sum(h.n)::bigint AS n
		    FROM parts p
		    CROSS JOIN LATERAL unnest(p.close_b, p.close_n) AS h(b, n)
		    GROUP BY 1, 2, 3, 4) x
		GROUP BY 1, 2, 3
	),
	sums AS (
		SELECT community_id, department_id, list, sum(pushed) AS pushed,
		    sum(accepted) AS accepted, sum(merged) AS merged,
		    sum(r_neg) AS r_neg, sum(r_unk) AS r_unk, sum(r_out) AS r_out,
		    sum(r_inv) AS r_inv, sum(c_neg) AS c_neg, sum(c_unf) AS c_unf,
		    sum(c_dup) AS c_dup, sum(c_out) AS c_out, sum(c_oth) AS c_oth,
		    sum(overdue) AS overdue, sum(closed) AS closed
		FROM parts GROUP BY 1, 2, 3
	)
	INSERT INTO report_dept_days
	SELECT p_day, p_span, s.community_id, s.department_id, s.list,
	    s.pushed, s.accepted, s.merged, s.r_neg, s.r_unk, s.r_out, s.r_inv,
	    s.c_neg, s.c_unf, s.c_dup, s.c_out, s.c_oth, s.overdue, s.closed,
	    coalesce(h.bs, '{}'), coalesce(h.ns, '{}')
	FROM sums s
	LEFT JOIN hists h ON h.community_id = s.community_id
	    AND h.department_id = s.department_id
	    AND h.list IS NOT DISTINCT FROM s.list;

	INSERT INTO report_community_days
	SELECT p_day, p_span, community_id, sum(tasks), sum(autonomy),
	    sum(assist), sum(certificate), sum(big), sum(small), sum(private),
	    sum(to_workers), sum(to_workers_gov)
	FROM report_community_days
	WHERE span BETWEEN p_part_min AND p_part_max
	    AND day >= p_day AND day < p_day + p_span
	GROUP BY community_id;

	WITH parts AS (
		SELECT * FROM report_worker_days
		WHERE span BETWEEN p_part_min AND p_part_max
		    AND day >= p_day AND day < p_day + p_span
	),
	ah AS (
		SELECT scope, worker_id,
		    array_agg(b ORDER BY b) AS bs, array_agg(n ORDER BY b) AS ns
		FROM (SELECT p.scope, p.worker_id, h.b, sum(h.n)::bigint AS n
		    FROM parts p
		    CROSS JOIN LATERAL unnest(p.accept_b, p.accept_n) AS h(b, n)
		    GROUP BY 1, 2, 3) x
		GROUP BY 1, 2
	),
	rh AS (
		SELECT scope, worker_id,
		    array_agg(b ORDER BY b) AS bs, array_agg(n ORDER BY b) AS ns
		FROM (SELECT p.scope, p.worker_id, h.b, sum(h.n)::bigint AS n
		    FROM parts p
		    CROSS JOIN LATERAL unnest(p.resolve_b, p.resolve_n)
			AS h(b, n)
		    GROUP BY 1, 2, 3) x
		GROUP BY 1, 2
	),
	sums AS (
		SELECT scope, worker_id, min(community_id) AS community_id,
		    sum(offered) AS offered, sum(accepted) AS accepted,
		    sum(declined) AS declined, sum(expired) AS expired,
		    sum(resolved) AS resolved
		FROM parts GROUP BY 1, 2
	)
	INSERT INTO report_worker_days
	SELECT p_day, p_span, s.scope, s.worker_id, s.community_id, s.offered,
	    s.accepted, s.declined, s.expired, s.resolved,
	    coalesce(a.bs, '{}'), coalesce(a.ns, '{}'),
	    coalesce(r.bs, '{}'), coalesce(r.ns, '{}')
	FROM sums s
	LEFT JOIN ah a USING (scope, worker_id)
	LEFT JOIN rh r USING (scope, worker_id);

	INSERT INTO report_days (day, span, computed_at, valid_until)
	VALUES (p_day, p_span, now(), coalesce(v_valid, 'infinity'));
	RETURN true;
END
$$;

-- Rolls up the days of [p_from, p_to) that are over (p_from NULL: from the
-- earliest stored row) and not rolled up, newest first, then the months
-- and years whole in it, until p_budget_ms has passed.  Returns how many
-- such periods are left (0: all done), or -1 when another transaction is
-- refreshing and p_wait is false (with p_wait it waits for that one, which
-- stops after its own budget).
CREATE FUNCTION gridd_report_refresh(p_from timestamptz, p_to timestamptz,
    p_budget_ms integer, p_wait boolean)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
	v_start timestamptz := clock_timestamp();
	v_first integer;
	v_end integer;
	v_left integer := 0;
	v_day integer;
	v_span integer;
	v_dirty integer[];
	v_row record;
BEGIN
	-- One refresher at a time across every process; the others go on
	-- with the stored rows (the reports stay exact either way).
	IF p_wait THEN
		PERFORM pg_advisory_xact_lock(hashtext('gridd_report_refresh'));
		v_start := clock_timestamp();
	ELSIF NOT pg_try_advisory_xact_lock(
	    hashtext('gridd_report_refresh')) THEN
		RETURN -1;
	END IF;
	-- Days whose rows changed, or that time alone changed, and every
	-- month and year that holds one of them, are computed afresh.
	-- (A period expires with the first of its days: valid_until is
	-- their earliest.)
	WITH consumed AS (DELETE FROM report_dirty RETURNING day)
	SELECT coalesce(array_agg(DISTINCT day), '{}') INTO v_dirty
	FROM consumed;
	FOR v_row IN
		SELECT d.day, d.span FROM report_days d
		WHERE d.valid_until <= now() OR EXISTS (SELECT 1
		    FROM unnest(v_dirty) c(day)
		    WHERE c.day >= d.day AND c.day < d.day + d.span)
	LOOP
		PERFORM gridd_report_drop(v_row.day, v_row.span);
	END LOOP;

	SELECT gridd_report_day(least(
	    (SELECT min(pushed_at) FROM incident_sources),
	    (SELECT min(at) FROM rejections),
	    (SELECT min(filed_at) FROM complaints),
	    (SELECT min(created_at) FROM incidents),
	    (SELECT min(offered_at) FROM assignments)))
	INTO v_first;
	IF v_first IS NULL THEN
		RETURN 0;
	END IF;
	-- From the start of that year: the empty days before the first row
	-- complete its month and year.
	v_first := date_trunc('year',
	    (date '1970-01-01' + v_first)::timestamp)::date - date '1970-01-01';
	IF p_from IS NOT NULL AND p_from > gridd_report_day_start(v_first) THEN
		v_first := gridd_report_day(p_from);
		IF gridd_report_day_start(v_first) < p_from THEN
			v_first := v_first + 1;
		END IF;
	END IF;
	v_end := gridd_report_open_day();
	IF p_to IS NOT NULL AND p_to < gridd_report_day_start(v_end) THEN
		v_end := gridd_report_day(p_to);
	END IF;

	-- Days without a single row cost nothing to roll up: marked at once,
	-- a few index probes each, so that a window reaching back to the
	-- first row ever stored does not spend its budget on them.
	INSERT INTO report_days (day, span)
	SELECT g, 1 FROM generate_series(v_first, v_end - 1) g
	WHERE NOT EXISTS (SELECT 1 FROM report_days d
		WHERE d.day = g AND d.span = 1)
	    AND NOT EXISTS (SELECT 1 FROM incident_sources s
		WHERE s.pushed_at >= gridd_report_day_start(g)
		AND s.pushed_at < gridd_report_day_start(g + 1))
	    AND NOT EXISTS (SELECT 1 FROM rejections r
		WHERE r.at >= gridd_report_day_start(g)
		AND r.at < gridd_report_day_start(g + 1))
	    AND NOT EXISTS (SELECT 1 FROM complaints c
		WHERE c.filed_at >= gridd_report_day_start(g)
		AND c.filed_at < gridd_report_day_start(g + 1))
	    AND NOT EXISTS (SELECT 1 FROM incidents i
		WHERE i.created_at >= gridd_report_day_start(g)
		AND i.created_at < gridd_report_day_start(g + 1))
	    AND NOT EXISTS (SELECT 1 FROM assignments a
		WHERE a.offered_at >= gridd_report_day_start(g)
		AND a.offered_at < gridd_report_day_start(g + 1));

	FOR v_day IN
		SELECT g FROM generate_series(v_end - 1, v_first, -1) g
		WHERE NOT EXISTS (SELECT 1 FROM report_days d
		    WHERE d.day = g AND d.span = 1)
		ORDER BY g DESC
	LOOP
		IF clock_timestamp() - v_start >=
		    make_interval(secs => p_budget_ms / 1000.0) THEN
			v_left := v_left + 1;
		ELSE
			PERFORM gridd_report_roll_day(v_day);
		END IF;
	END LOOP;

	-- Then the calendar months from their days, and the years from their
	-- months, that lie whole in the window: a year-long report reads one
	-- row per key instead of 365.
	FOR v_day, v_span IN
		SELECT g, gridd_report_period_span(g, 'month')
		FROM generate_series(v_end - 1, v_first, -1) g
		WHERE gridd_report_period_span(g, 'month') IS NOT NULL
		    AND g + gridd_report_period_span(g, 'month') <= v_end
		    AND NOT EXISTS (SELECT 1 FROM report_days d
			WHERE d.day = g AND d.span > 1 AND d.span < 32)
		ORDER BY g DESC
	LOOP
		IF clock_timestamp() - v_start >=
		    make_interval(secs => p_budget_ms / 1000.0) THEN
			v_left := v_left + 1;
		ELSIF NOT gridd_report_roll_period(v_day, v_span, 1, 1) THEN
			v_left := v_left + 1;
		END IF;
	END LOOP;
	FOR v_day, v_span IN
		SELECT g, gridd_report_period_span(g, 'year')
		FROM generate_series(v_end - 1, v_first, -1) g
		WHERE gridd_report_period_span(g, 'year') IS NOT NULL
		    AND g + gridd_report_period_span(g, 'year') <= v_end
		    AND NOT EXISTS (SELECT 1 FROM report_days d
			WHERE d.day = g AND d.span > 300)
		ORDER BY g DESC
	LOOP
		IF clock_timestamp() - v_start >=
		    make_interval(secs => p_budget_ms / 1000.0) THEN
			v_left := v_left + 1;
		ELSIF NOT gridd_report_roll_period(v_day, v_span, 28, 31) THEN
			v_left := v_left + 1;
		END IF;
	END LOOP;
	RETURN v_left;
END
$$;

-- For whoever deletes report rows by hand: the days of [p_from, p_to) are
-- computed afresh.
CREATE FUNCTION gridd_report_forget(p_from timestamptz, p_to timestamptz)
RETURNS void
LANGUAGE sql
AS $$
INSERT INTO report_dirty (day)
SELECT g FROM generate_series(gridd_report_day(p_from),
    gridd_report_day(p_to)) g
$$;

-- The window in pieces: maximal intervals computed from the rows (span 0)
-- and rolled-up pieces: runs of days (span 1) and single months or years
-- (span = their days), each valid and with nothing dirty in it.  The
-- largest period that starts where the last piece ended wins.
CREATE FUNCTION gridd_report_ranges(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (lo timestamptz, hi timestamptz, rolled boolean,
    span integer)
LANGUAGE plpgsql STABLE ROWS 8
AS $$
DECLARE
	v_first integer := gridd_report_day(p_from);
	v_end integer := least(gridd_report_day(p_to), gridd_report_open_day());
	v_cur timestamptz := p_from;	-- everything before is emitted
	v_next integer;			-- the first day not yet covered
	v_run0 integer;			-- a pending run of days
	v_run1 integer;
	r record;
BEGIN
	IF gridd_report_day_start(v_first) < p_from THEN
		v_first := v_first + 1;
	END IF;
	v_next := v_first;
	FOR r IN
		SELECT d.day, d.span FROM report_days d
		WHERE d.day >= v_first AND d.day + d.span <= v_end
		    AND d.valid_until > now()
		    AND NOT EXISTS (SELECT 1 FROM report_dirty x
			WHERE x.day >= d.day AND x.day < d.day + d.span)
		ORDER BY d.day, d.span DESC
	LOOP
		CONTINUE WHEN r.day < v_next;
		IF r.span = 1 AND v_run1 = r.day THEN
			v_run1 := r.day + 1;
			v_next := v_run1;
			CONTINUE;
		END IF;
		IF v_run0 IS NOT NULL THEN
			lo := gridd_report_day_start(v_run0);
			hi := gridd_report_day_start(v_run1);
			rolled := true;
			span := 1;
			RETURN NEXT;
			v_cur := hi;
			v_run0 := NULL;
			v_run1 := NULL;
		END IF;
		IF gridd_report_day_start(r.day) > v_cur THEN
			lo := v_cur;
			hi := gridd_report_day_start(r.day);
			rolled := false;
			span := 0;
			RETURN NEXT;
			v_cur := hi;
		END IF;
		IF r.span = 1 THEN
			v_run0 := r.day;
			v_run1 := r.day + 1;
			v_next := v_run1;
		ELSE
			lo := gridd_report_day_start(r.day);
			hi := gridd_report_day_start(r.day + r.span);
			rolled := true;
			span := r.span;
			RETURN NEXT;
			v_cur := hi;
			v_next := r.day + r.span;
		END IF;
	END LOOP;
	IF v_run0 IS NOT NULL THEN
		lo := gridd_report_day_start(v_run0);
		hi := gridd_report_day_start(v_run1);
		rolled := true;
		span := 1;
		RETURN NEXT;
		v_cur := hi;
	END IF;
	IF v_cur < p_to THEN
		lo := v_cur;
		hi := p_to;
		rolled := false;
		span := 0;
		RETURN NEXT;
	END IF;
END
$$;

-- Keeping roll-ups honest: days whose rows change ------------------------

-- Status, route, deadline, escalation, close: the incident's pushes, and
-- its creation day (the community figures).
CREATE FUNCTION gridd_report_incident_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	INSERT INTO report_dirty (day)
	SELECT DISTINCT x.d FROM (
		SELECT gridd_report_day(s.pushed_at) AS d
		FROM incident_sources s WHERE s.incident_id = NEW.incident_id
		UNION ALL SELECT gridd_report_day(OLD.created_at)
		UNION ALL SELECT gridd_report_day(NEW.created_at)
		-- Complaints take their list from the incident.
		UNION ALL SELECT gridd_report_day(c.filed_at)
		FROM complaints c
		WHERE OLD.list IS DISTINCT FROM NEW.list
		    AND c.incident_id = NEW.incident_id) x
	WHERE x.d < gridd_report_day(now());
	RETURN NULL;
END
$$;
-- The WHEN clause is evaluated without calling the function: the updates
-- of today's incidents, and those that change nothing the report reads,
-- cost nothing more.
CREATE TRIGGER report_incident_changed AFTER UPDATE ON incidents
FOR EACH ROW
WHEN (gridd_report_day(OLD.created_at) < gridd_report_day(now()) AND
    (OLD.status, OLD.route, OLD.list, OLD.matter, OLD.community_id,
     OLD.deadline, OLD.sla_escalated, OLD.closed_at, OLD.created_at)
    IS DISTINCT FROM
    (NEW.status, NEW.route, NEW.list, NEW.matter, NEW.community_id,
     NEW.deadline, NEW.sla_escalated, NEW.closed_at, NEW.created_at))
EXECUTE FUNCTION gridd_report_incident_changed();

CREATE FUNCTION gridd_report_assignment_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	INSERT INTO report_dirty (day)
	SELECT DISTINCT x.d FROM (VALUES (gridd_report_day(OLD.offered_at)),
	    (gridd_report_day(NEW.offered_at))) x(d)
	WHERE x.d < gridd_report_day(now());
	RETURN NULL;
END
$$;
CREATE TRIGGER report_assignment_changed AFTER UPDATE ON assignments
FOR EACH ROW
WHEN (gridd_report_day(OLD.offered_at) < gridd_report_day(now()) AND
    (OLD.state, OLD.accepted_at, OLD.resolved_at, OLD.worker_id,
     OLD.community_id, OLD.offered_at)
    IS DISTINCT FROM
    (NEW.state, NEW.accepted_at, NEW.resolved_at, NEW.worker_id,
     NEW.community_id, NEW.offered_at))
EXECUTE FUNCTION gridd_report_assignment_changed();

-- Rows written with a time in an earlier day (imports, corrections): one
-- statement-level trigger per table, so a batch costs one small query.
CREATE FUNCTION gridd_report_sources_added() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	INSERT INTO report_dirty (day)
	SELECT DISTINCT gridd_report_day(pushed_at) FROM added
	WHERE pushed_at < gridd_report_day_start(gridd_report_day(now()));
	RETURN NULL;
END
$$;
CREATE TRIGGER report_sources_added AFTER INSERT ON incident_sources
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION gridd_report_sources_added();

CREATE FUNCTION gridd_report_rejections_added() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	INSERT INTO report_dirty (day)
	SELECT DISTINCT gridd_report_day(at) FROM added
	WHERE at < gridd_report_day_start(gridd_report_day(now()));
	RETURN NULL;
END
$$;
CREATE TRIGGER report_rejections_added AFTER INSERT ON rejections
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION gridd_report_rejections_added();

CREATE FUNCTION gridd_report_complaints_added() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	INSERT INTO report_dirty (day)
	SELECT DISTINCT gridd_report_day(filed_at) FROM added
	WHERE filed_at < gridd_report_day_start(gridd_report_day(now()));
	RETURN NULL;
END
$$;
CREATE TRIGGER report_complaints_added AFTER INSERT ON complaints
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION gridd_report_complaints_added();

CREATE FUNCTION gridd_report_incidents_added() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	INSERT INTO report_dirty (day)
	SELECT DISTINCT gridd_report_day(created_at) FROM added
	WHERE created_at < gridd_report_day_start(gridd_report_day(now()));
	RETURN NULL;
END
$$;
CREATE TRIGGER report_incidents_added AFTER INSERT ON incidents
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION gridd_report_incidents_added();

CREATE FUNCTION gridd_report_assignments_added() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	INSERT INTO report_dirty (day)
	SELECT DISTINCT gridd_report_day(offered_at) FROM added
	WHERE offered_at < gridd_report_day_start(gridd_report_day(now()));
	RETURN NULL;
END
$$;
CREATE TRIGGER report_assignments_added AFTER INSERT ON assignments
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION gridd_report_assignments_added();

-- The reports ---------------------------------------------------------------

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
WITH ranges AS MATERIALIZED (
	SELECT * FROM gridd_report_ranges(p_from, p_to)
),
any_rolled AS (
	SELECT coalesce(bool_or(rolled), false) AS yes FROM ranges
),
live AS (
	SELECT it.*
	FROM ranges r
	CROSS JOIN LATERAL gridd_report_dept_items(r.lo, r.hi, p_community) it
	WHERE NOT r.rolled
),
all_rows AS (
	-- Live items one by one, rolled-up days as sums, and a zero row per
	-- active department; they all add up into the figures below.
	SELECT dept, list, pushed::bigint AS pushed,
	    accepted::bigint AS accepted, merged::bigint AS merged,
	    coalesce(rejection = 'negative_list', false)::int::bigint
		AS r_neg,
	    coalesce(rejection = 'unknown_category', false)::int::bigint
		AS r_unk,
	    coalesce(rejection = 'outside', false)::int::bigint
		AS r_out,
	    coalesce(rejection = 'invalid', false)::int::bigint
		AS r_inv,
	    coalesce(complaint = 'negative_list', false)::int::bigint
		AS c_neg,
	    coalesce(complaint = 'unfunded', false)::int::bigint
		AS c_unf,
	    coalesce(complaint = 'duplicate', false)::int::bigint
		AS c_dup,
	    coalesce(complaint = 'outside_duty', false)::int::bigint
		AS c_out,
	    coalesce(complaint = 'other', false)::int::bigint
		AS c_oth,
	    overdue::bigint AS overdue,
	    (close_ms IS NOT NULL)::int::bigint AS closed,
	    close_ms
	FROM live
	UNION ALL
	SELECT d.department_id, d.list, d.pushed, d.accepted, d.merged,
	    d.r_neg, d.r_unk, d.r_out, d.r_inv, d.c_neg, d.c_unf, d.c_dup,
	    d.c_out, d.c_oth, d.overdue, d.closed, NULL
	FROM ranges r
	JOIN report_dept_days d
	    ON d.community_id = coalesce(p_community, '') AND d.span = r.span
	    AND d.day >= gridd_report_day(r.lo)
	    AND d.day < gridd_report_day(r.hi)
	WHERE r.rolled
	UNION ALL
	SELECT dp.department_id, NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	    0, 0, NULL
	FROM departments dp
	WHERE dp.active
),
figures AS (
	SELECT dept, list, GROUPING(list) AS all_lists,
	    sum(pushed) AS pushed, sum(accepted) AS accepted,
	    sum(merged) AS merged, sum(r_neg) AS r_neg, sum(r_unk) AS r_unk,
	    sum(r_out) AS r_out, sum(r_inv) AS r_inv, sum(c_neg) AS c_neg,
	    sum(c_unf) AS c_unf, sum(c_dup) AS c_dup, sum(c_out) AS c_out,
	    sum(c_oth) AS c_oth, sum(overdue) AS overdue,
	    sum(closed) AS closed,
	    -- Exact when every item is at hand.
	    percentile_cont(0.5) WITHIN GROUP (ORDER BY close_ms)
		FILTER (WHERE NOT (SELECT yes FROM any_rolled)) AS med
	FROM all_rows
	GROUP BY GROUPING SETS ((dept), (dept, list))
),
hist AS (
	-- Otherwise from histograms: the roll-ups' and the live items'.
	SELECT d.department_id AS dept, d.list, h.b, h.n
	FROM ranges r
	JOIN report_dept_days d
	    ON d.community_id = coalesce(p_community, '') AND d.span = r.span
	    AND d.day >= gridd_report_day(r.lo)
	    AND d.day < gridd_report_day(r.hi)
	CROSS JOIN LATERAL unnest(d.close_b, d.close_n) AS h(b, n)
	WHERE r.rolled
	UNION ALL
	SELECT dept, list, gridd_report_bucket(close_ms), 1
	FROM live
	WHERE close_ms IS NOT NULL AND (SELECT yes FROM any_rolled)
),
hist_lists AS (
	SELECT dept, list, b, sum(n)::bigint AS n FROM hist
	GROUP BY dept, list, b
),
hist_med AS (
	SELECT dept, list, all_lists,
	    gridd_report_hist_median(array_agg(b ORDER BY b),
		array_agg(n ORDER BY b)) AS med
	FROM (SELECT dept, list, 0 AS all_lists, b, n FROM hist_lists
	    UNION ALL
	    SELECT dept, NULL, 1, b, sum(n)::bigint FROM hist_lists
	    GROUP BY dept, b) x
	GROUP BY dept, list, all_lists
)
SELECT f.dept, coalesce(dp.name, ''),
    CASE WHEN f.all_lists = 1 THEN NULL ELSE f.list END,
    f.pushed::bigint, f.accepted::bigint, f.merged::bigint,
    f.r_neg::bigint, f.r_unk::bigint, f.r_out::bigint, f.r_inv::bigint,
    f.c_neg::bigint, f.c_unf::bigint, f.c_dup::bigint, f.c_out::bigint,
    f.c_oth::bigint, f.overdue::bigint, f.closed::bigint,
    coalesce(round(f.med)::bigint, h.med)
FROM figures f
LEFT JOIN departments dp ON dp.department_id = f.dept
LEFT JOIN hist_med h ON h.dept = f.dept AND h.all_lists = f.all_lists
    AND h.list IS NOT DISTINCT FROM f.list
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
WITH ranges AS MATERIALIZED (
	SELECT * FROM gridd_report_ranges(p_from, p_to)
),
all_rows AS (
	SELECT it.*
	FROM ranges r
	CROSS JOIN LATERAL gridd_report_community_items(r.lo, r.hi,
	    p_community) it
	WHERE NOT r.rolled
	UNION ALL
	SELECT d.community_id, d.tasks, d.autonomy, d.assist, d.certificate,
	    d.big, d.small, d.private, d.to_workers, d.to_workers_gov
	FROM ranges r
	JOIN report_community_days d
	    ON d.span = r.span AND d.day >= gridd_report_day(r.lo)
	    AND d.day < gridd_report_day(r.hi)
	    AND (p_community IS NULL OR d.community_id = p_community)
	WHERE r.rolled
),
figures AS (
	SELECT r.community_id AS cid, sum(r.tasks) AS tasks,
	    sum(r.autonomy) AS autonomy, sum(r.assist) AS assist,
	    sum(r.certificate) AS certificate, sum(r.big) AS big,
	    sum(r.small) AS small, sum(r.private) AS private,
	    sum(r.to_workers) AS to_workers,
	    sum(r.to_workers_gov) AS to_workers_gov
	FROM all_rows r
	GROUP BY r.community_id
)
SELECT f.cid, coalesce(c.name, ''), f.tasks::bigint, f.autonomy::bigint,
    f.assist::bigint, f.certificate::bigint, f.big::bigint,
    f.small::bigint, f.private::bigint, f.to_workers::bigint,
    f.to_workers_gov::bigint,
    CASE WHEN f.to_workers > 0
	THEN f.to_workers_gov::double precision / f.to_workers END
FROM figures f
LEFT JOIN communities c ON c.community_id = f.cid
WHERE f.tasks > 0
ORDER BY f.cid
$$;

CREATE FUNCTION gridd_report_workers(p_from timestamptz, p_to timestamptz,
    p_community text)
RETURNS TABLE (worker_id text, community_id text, offered bigint,
    accepted bigint, declined bigint, expired bigint, resolved bigint,
    median_accept_ms bigint, median_resolve_ms bigint)
LANGUAGE sql STABLE
AS $$
WITH ranges AS MATERIALIZED (
	SELECT * FROM gridd_report_ranges(p_from, p_to)
),
any_rolled AS (
	SELECT coalesce(bool_or(rolled), false) AS yes FROM ranges
),
live AS (
	SELECT it.*
	FROM ranges r
	CROSS JOIN LATERAL gridd_report_worker_items(r.lo, r.hi,
	    p_community) it
	WHERE NOT r.rolled
),
rolled AS (
	SELECT w.*
	FROM ranges r
	JOIN report_worker_days w
	    ON w.scope = coalesce(p_community, '') AND w.span = r.span
	    AND w.day >= gridd_report_day(r.lo)
	    AND w.day < gridd_report_day(r.hi)
	WHERE r.rolled
),
figures AS (
	-- Medians: exact from the items when nothing is rolled up, else from
	-- the periods' histograms and the items', concatenated per worker
	-- (the aggregates of a group see its rows in the same order, so the
	-- bucket and count arrays stay aligned).
	SELECT x.worker_id AS wid, min(x.community_id) AS cid,
	    sum(x.offered) AS offered, sum(x.accepted) AS accepted,
	    sum(x.declined) AS declined, sum(x.expired) AS expired,
	    sum(x.resolved) AS resolved,
	    CASE WHEN bool_or(ar.yes)
		THEN gridd_report_hist_median(
		    gridd_report_cat(x.accept_b) FILTER (WHERE ar.yes),
		    gridd_report_cat(x.accept_n) FILTER (WHERE ar.yes))
		ELSE round(percentile_cont(0.5) WITHIN GROUP
		    (ORDER BY x.accept_ms))::bigint END AS med_accept,
	    CASE WHEN bool_or(ar.yes)
		THEN gridd_report_hist_median(
		    gridd_report_cat(x.resolve_b) FILTER (WHERE ar.yes),
		    gridd_report_cat(x.resolve_n) FILTER (WHERE ar.yes))
		ELSE round(percentile_cont(0.5) WITHIN GROUP
		    (ORDER BY x.resolve_ms))::bigint END AS med_resolve
	FROM (SELECT l.worker_id, l.community_id, l.offered::bigint AS offered,
		l.accepted::bigint AS accepted, l.declined::bigint AS declined,
		l.expired::bigint AS expired, l.resolved::bigint AS resolved,
		l.accept_ms, l.resolve_ms,
		CASE WHEN l.accept_ms IS NOT NULL
		    THEN ARRAY[gridd_report_bucket(l.accept_ms)]
		    ELSE '{}' END AS accept_b,
		CASE WHEN l.accept_ms IS NOT NULL THEN ARRAY[1::bigint]
		    ELSE '{}' END AS accept_n,
		CASE WHEN l.resolve_ms IS NOT NULL
		    THEN ARRAY[gridd_report_bucket(l.resolve_ms)]
		    ELSE '{}' END AS resolve_b,
		CASE WHEN l.resolve_ms IS NOT NULL THEN ARRAY[1::bigint]
		    ELSE '{}' END AS resolve_n
	    FROM live l
	    UNION ALL
	    SELECT w.worker_id, w.community_id, w.offered, w.accepted,
		w.declined, w.expired, w.resolved, NULL, NULL,
		w.accept_b, w.accept_n, w.resolve_b, w.resolve_n
	    FROM rolled w) x
	CROSS JOIN any_rolled ar
	GROUP BY x.worker_id
)
SELECT f.wid, f.cid, f.offered::bigint, f.accepted::bigint,
    f.declined::bigint, f.expired::bigint, f.resolved::bigint,
    f.med_accept, f.med_resolve
FROM figures f
ORDER BY f.wid
$$;

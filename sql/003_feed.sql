-- 003_feed.sql - departmental feeds into one model: the per-batch ingest
-- function (locate, deduplicate, merge, triage, persist), the sequenced
-- department events with their NOTIFY, and the indexes both need.
--
-- Contract for callers:
--
--   gridd_emit_event(incident, status, worker, note)
--       one events row per department that is a source of the incident,
--       each with the next gap-free dept_seq of that department, then
--       pg_notify('gridd_events', department_id) once per department.
--       Every status change of an incident calls it in the transaction
--       that makes the change.
--   gridd_emit_events_to(incidents[], departments[], statuses[], workers[],
--                        notes[])
--       the same for explicit (incident, department) pairs, set-based.
--   gridd_feed_push(...)  one ingest transaction: the items of every
--       PushIncidents (or ReportIncident) request that group commit put
--       together; see its comment.  The daemon validates, classifies and
--       locates each item first (config: crosswalk, task types; its
--       in-memory copy of the cells) and passes the survivors here as
--       parallel arrays, plus the items it refused, to be recorded (with
--       the community each refused point lies in).  A grid worker's
--       report is owned by the department its task type names (p_owner,
--       [task_type.NAME] department), which hears of it like one of its
--       own pushes; the new incidents for workers are offered in the same
--       transaction (gridd_dispatch_pushed, 004_dispatch.sql).
--   feed_grid_version / NOTIFY gridd_grid
--       bumped and sent by every change to cells or communities, so that
--       the daemons' in-memory cells are never trusted when stale.
--
-- The migration runner wraps this file in one transaction.

-- How an incident was located.  A department grid code gives a cell but
-- only an approximate point, so such incidents neither absorb nor are
-- absorbed by a merge (two items in the same department cell are not the
-- same event because of it).
ALTER TABLE incidents ADD COLUMN located_by text NOT NULL DEFAULT 'point'
	CHECK (located_by IN ('point', 'dept_code', 'building'));

-- Merge candidates: open incidents near a point.  Partial, so that closed
-- history does not slow the search down as it grows.
CREATE INDEX incidents_open_geom_idx ON incidents USING gist (geom)
	WHERE status IN ('new', 'dispatched', 'accepted', 'in_progress',
	    'referred', 'escalated') AND located_by <> 'dept_code';

-- Rejections by reason for the burden report and the crosswalk review.
CREATE INDEX rejections_reason_idx ON rejections (reason, source_id, at);

-- Events ------------------------------------------------------------------

-- Allocates the departments' sequence numbers and writes one events row per
-- (incident, department) pair, in array order within each department.
-- The department_seq rows are locked in department order first, so two
-- transactions touching the same departments queue instead of deadlocking
-- within one call; the lock is held to commit, which is what makes the
-- numbers gap-free and committed in order (a reader never sees n+1
-- without n).  ext_id is the department's own id for the incident (its
-- first push), empty when the department never pushed it; a caller that
-- knows it passes it in p_exts (NULL array or element: look it up).
CREATE FUNCTION gridd_emit_events_to(p_incidents bigint[],
    p_departments text[], p_statuses text[], p_workers text[],
    p_notes text[], p_exts text[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
	IF coalesce(cardinality(p_incidents), 0) = 0 THEN
		RETURN;
	END IF;
	INSERT INTO department_seq (department_id)
	SELECT DISTINCT d FROM unnest(p_departments) d
	ORDER BY 1
	ON CONFLICT (department_id) DO NOTHING;
	PERFORM 1 FROM department_seq
	WHERE department_id = ANY (p_departments)
	ORDER BY department_id
	FOR UPDATE;

	WITH items AS (
		SELECT u.inc, u.dept, u.status, u.worker, u.note, u.ord,
		    p_exts[u.ord] AS ext,
		    row_number() OVER (PARTITION BY u.dept ORDER BY u.ord) AS rn,
		    count(*) OVER (PARTITION BY u.dept) AS cnt
		FROM unnest(p_incidents, p_departments, p_statuses, p_workers,
		    p_notes) WITH ORDINALITY AS u(inc, dept, status, worker,
		    note, ord)
	), bump AS (
		UPDATE department_seq s SET last_seq = s.last_seq + c.n
		FROM (SELECT dept, count(*) AS n FROM items GROUP BY dept) c
		WHERE s.department_id = c.dept
		RETURNING s.department_id, s.last_seq
	)
	INSERT INTO events (department_id, dept_seq, incident_id,
	    community_id, ext_id, status, cell_id, worker_id, note)
	SELECT i.dept, b.last_seq - i.cnt + i.rn, i.inc, inc.community_id,
	    coalesce(i.ext, src.ext_id, ''), i.status, inc.cell_id, i.worker,
	    left(coalesce(i.note, ''), 2000)
	FROM items i
	JOIN bump b ON b.department_id = i.dept
	JOIN incidents inc ON inc.incident_id = i.inc
	LEFT JOIN LATERAL (
		SELECT s.ext_id FROM incident_sources s
		WHERE i.ext IS NULL AND s.incident_id = i.inc
		    AND s.source_kind = 'department' AND s.source_id = i.dept
		ORDER BY s.pushed_at, s.ext_id LIMIT 1
	) src ON true
	ORDER BY i.dept, i.rn;

	PERFORM pg_notify('gridd_events', d)
	FROM (SELECT DISTINCT unnest(p_departments) AS d) x;
END
$$;

-- The shared contract: one status change, told to every source department.
CREATE FUNCTION gridd_emit_event(p_incident bigint, p_status text,
    p_worker text, p_note text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	v_depts text[];
BEGIN
	SELECT array_agg(DISTINCT d ORDER BY d) INTO v_depts
	FROM incidents i, unnest(i.departments) d
	WHERE i.incident_id = p_incident;
	IF v_depts IS NULL THEN
		RETURN;
	END IF;
	PERFORM gridd_emit_events_to(
	    array_fill(p_incident, ARRAY[cardinality(v_depts)]), v_depts,
	    array_fill(p_status, ARRAY[cardinality(v_depts)]),
	    array_fill(p_worker, ARRAY[cardinality(v_depts)]),
	    array_fill(p_note, ARRAY[cardinality(v_depts)]));
END
$$;

-- Ingest ------------------------------------------------------------------

-- Statuses in which an incident is still open and can absorb a merge.
CREATE FUNCTION gridd_open_status(p_status text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
	SELECT p_status IN ('new', 'dispatched', 'accepted', 'in_progress',
	    'referred', 'escalated')
$$;

-- The grid version.  Every statement that changes cells or communities
-- bumps it and NOTIFYs gridd_grid with the new number, so that each gridd
-- process rebuilds its in-memory point-in-cell index (locate.c) from the
-- committed cells.  A push locates its points in the daemon and says which
-- version it used; gridd_feed_push locates them itself when that is not the
-- current one, so a cache a notification has not reached yet is never
-- trusted.
CREATE TABLE feed_grid_version (
	one		boolean PRIMARY KEY DEFAULT true CHECK (one),
	version		bigint NOT NULL DEFAULT 1
);
INSERT INTO feed_grid_version DEFAULT VALUES;

CREATE FUNCTION gridd_grid_changed()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
	v bigint;
BEGIN
	UPDATE feed_grid_version SET version = version + 1
	RETURNING version INTO v;
	PERFORM pg_notify('gridd_grid', v::text);
	RETURN NULL;
END
$$;

CREATE TRIGGER cells_grid_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON cells
	FOR EACH STATEMENT EXECUTE FUNCTION gridd_grid_changed();
CREATE TRIGGER communities_grid_changed
	AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON communities
	FOR EACH STATEMENT EXECUTE FUNCTION gridd_grid_changed();

-- The merge search has its own GiST index (incidents_open_geom_idx); the
-- b-tree the first schema kept for it only slows every insert down.
DROP INDEX incidents_merge_idx;
-- A merge adds its department to the incident (departments, owner, funder,
-- updated_at: no index covers them).  Room on the page lets that be a HOT
-- update, which writes no index entry, instead of one in each of the
-- incident's indexes.
ALTER TABLE incidents SET (fillfactor = 85);

-- Merges within one call: for each item that would make a new incident
-- (p_geom non-NULL), the earliest earlier such item of the same task type
-- within p_radius_m (geodesic) and p_window_s that itself joined nobody
-- (has no earlier neighbour); NULL when there is none (it makes its own).
-- Items are bucketed by a grid at least the radius wide, so only
-- neighbouring buckets are compared.  Returns one element per input item.
-- Nested loops are off: every join here is between the call's own items,
-- whose counts the planner cannot know, and a nested loop over them would
-- be quadratic where a hash join is linear.
CREATE FUNCTION gridd_feed_leaders(p_tt text[], p_occ bigint[],
    p_geom geometry[], p_radius_m double precision, p_window_s integer)
RETURNS integer[]
LANGUAGE plpgsql STABLE
SET enable_nestloop = off
SET jit = off
AS $$
DECLARE
	v_dlat double precision := p_radius_m / 110540.0;
	v integer[];
BEGIN
	WITH c0 AS (
		SELECT u.ord::integer AS ord, u.tt, u.occ, u.geom,
		    ST_X(u.geom) AS x, ST_Y(u.geom) AS y
		FROM unnest(p_tt, p_occ, p_geom) WITH ORDINALITY
		    AS u(tt, occ, geom, ord)
		WHERE u.geom IS NOT NULL
	), c AS (
		SELECT c0.*, d.dlon, floor(c0.x / d.dlon)::bigint AS gx,
		    floor(c0.y / v_dlat)::bigint AS gy
		FROM c0
		CROSS JOIN (SELECT p_radius_m / (111320.0 * greatest(cos(
		    radians(max(abs(c0.y)))), 0.01)) AS dlon FROM c0) d
	), probe AS (
		SELECT a.*, a.gx + ox.d AS px, a.gy + oy.d AS py
		FROM c a
		CROSS JOIN (VALUES (-1), (0), (1)) ox(d)
		CROSS JOIN (VALUES (-1), (0), (1)) oy(d)
	), pair AS (
		SELECT a.ord AS early, b.ord AS late
		FROM probe a
		JOIN c b ON b.tt = a.tt AND b.gx = a.px AND b.gy = a.py
		WHERE a.ord < b.ord
		    AND abs(a.occ - b.occ) <= p_window_s * 1000::bigint
		    AND abs(a.x - b.x) <= a.dlon AND abs(a.y - b.y) <= v_dlat
		    AND ST_DWithin(a.geom::geography, b.geom::geography,
			p_radius_m)
	), joined AS (
		SELECT DISTINCT p.late FROM pair p
	), lead AS (
		SELECT p.late, min(p.early) AS leader
		FROM pair p
		LEFT JOIN joined j ON j.late = p.early
		WHERE j.late IS NULL
		GROUP BY p.late
	)
	SELECT array_agg(l.leader ORDER BY g.i) INTO v
	FROM generate_series(1, coalesce(cardinality(p_geom), 0)) g(i)
	LEFT JOIN lead l ON l.late = g.i;
	RETURN v;
END
$$;

-- One ingest transaction: the items of every PushIncidents (or
-- ReportIncident) request that group commit put together, after the
-- daemon's validation, classification and point location.
--
-- Parallel arrays, one element per item that passed the daemon's checks,
-- in order: source kind and id, ext id, category (as pushed), task type and
-- its list, matter, route, sla minutes (0 = none) and event note (guidance
-- for referrals), severity, occurred_at (ms since the epoch), lon/lat
-- (NULL = no point), the community and cell the daemon located the point
-- in (NULL community = outside every community), department grid code
-- (NULL = none), building id (NULL = none), address, description.
-- p_gridv is the grid version the daemon located with (NULL = it did not):
-- when it is not the current one, the points are located here instead.
-- Every (kind, source, ext id) is distinct: the daemon folds repeats within
-- a request and never groups two requests that share one.  p_rej_* are the
-- items the daemon refused (reason invalid, unknown_category or
-- negative_list), recorded so that the refusal commits with the items.
--
-- Per item, set-based over the whole call:
--   locate   the point -> its cell (the daemon's, or here); else the grid
--            code -> the crosswalk's dominant cell; else the building -> its
--            cell.  A point outside every community is not retried with the
--            code: the point is the location.
--   dedupe   (source_kind, source_id, ext_id) already stored -> duplicate
--            with the incident of the first answer; nothing changes.
--   merge    an open incident of the same task type, pushed by anyone,
--            within p_radius_m (geodesic) and p_window_s of occurred_at ->
--            merged into it (the nearest; ties by lower id).  Items of this
--            call merge with each other too: an item joins the earliest
--            earlier item within reach that itself joined nobody.  A radius
--            or window of 0 turns merging off.  A department that merges
--            into an incident it was not a source of becomes one (one model)
--            and, for assist work, owner and funder if nobody was.
--   create   otherwise a new incident: status 'new' for route worker
--            (queued for dispatch: NOTIFY gridd_dispatch + an SLA timer),
--            'referred' for routes department and referral; an SLA deadline
--            for routes worker and department (a referral left the
--            government's hands).
--   events   each department hears each incident it became a source of,
--            in item order.
--
-- Merges across transactions are serialised by transaction advisory locks
-- per (task type, tile), taken in one order before the merge search reads
-- anything: an item locks every tile its search box touches, and the box
-- of an item contains the point of every incident it can merge with, so
-- two transactions that could merge the same items always share a lock.
-- Tiles are 0.01 degree (about 1 km), wider for radii over 500 m.  Lock
-- order within a transaction: tiles, then the merged incidents' rows, then
-- the departments' sequence rows (events last).
--
-- Returns one row per input item in order: ord (1-based), outcome
-- (accepted, merged, duplicate, outside, unknown_code, unknown_building),
-- the incident id (NULL when rejected), the incident's cell id, and the
-- current grid version (a daemon that located with another reloads).
CREATE FUNCTION gridd_feed_push(p_radius_m double precision,
    p_window_s integer, p_gridv bigint,
    p_kind text[], p_source text[], p_ext text[], p_cat text[], p_tt text[],
    p_list text[], p_matter text[], p_route text[], p_sla integer[],
    p_note text[], p_sev integer[], p_occ bigint[],
    p_lon double precision[], p_lat double precision[],
    p_comm text[], p_cell text[], p_code text[], p_bldg text[],
    p_addr text[], p_desc text[],
    p_rej_kind text[], p_rej_source text[], p_rej_ext text[],
    p_rej_cat text[], p_rej_tt text[], p_rej_reason text[],
    p_owner text[],
    p_rej_comm text[],
    p_rej_lon double precision[],
    p_rej_lat double precision[])
RETURNS TABLE (ord integer, outcome text, incident_id bigint, cell_id text,
    grid_version bigint)
LANGUAGE plpgsql
-- Row estimates for unnest and generate_series are guesses: JIT compiling
-- a plan for millions of rows that never come costs more than the call,
-- and so does planning each statement afresh for every call.
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
	v_n integer := coalesce(cardinality(p_ext), 0);
	v_merge boolean := p_radius_m > 0 AND p_window_s > 0;
	v_window interval := make_interval(secs => greatest(p_window_s, 0));
	v_dlat double precision := p_radius_m / 110540.0;
	v_tile double precision :=
	    0.01 * greatest(1, ceil(p_radius_m / 500.0));
	v_gv bigint;
	v_cached boolean;
	-- plan, one element per item in order
	v_lcomm text[];	-- where the item is
	v_lcell text[];
	v_geom geometry[];
	v_how text[];
	v_dup bigint[];	-- the incident of its first answer
	v_dupcell text[];
	v_mrg bigint[];	-- the existing incident it merges into
	v_mcomm text[];
	v_mcell text[];
	v_cgeom geometry[];	-- its point when it can lead a merge
	v_leader integer[];	-- the earlier item of the call it joins
	v_kind text[];
	v_inc bigint[];
	v_icomm text[];	-- the incident's community (its own when new)
	v_icell text[];	-- the incident's cell
	v_ev_inc bigint[];
	v_ev_dept text[];
	v_ev_status text[];
	v_ev_note text[];
	v_ev_ext text[];
	v_dp record;		-- the offers made here (gridd_dispatch_pushed)
BEGIN
	PERFORM gridd_check_lengths('gridd_feed_push', v_n, ARRAY[
	    coalesce(cardinality(p_kind), 0),
	    coalesce(cardinality(p_source), 0),
	    coalesce(cardinality(p_cat), 0), coalesce(cardinality(p_tt), 0),
	    coalesce(cardinality(p_list), 0),
	    coalesce(cardinality(p_matter), 0),
	    coalesce(cardinality(p_route), 0), coalesce(cardinality(p_sla), 0),
	    coalesce(cardinality(p_note), 0), coalesce(cardinality(p_sev), 0),
	    coalesce(cardinality(p_occ), 0), coalesce(cardinality(p_lon), 0),
	    coalesce(cardinality(p_lat), 0), coalesce(cardinality(p_comm), 0),
	    coalesce(cardinality(p_cell), 0), coalesce(cardinality(p_code), 0),
	    coalesce(cardinality(p_bldg), 0), coalesce(cardinality(p_addr), 0),
	    coalesce(cardinality(p_desc), 0)]);
	PERFORM gridd_check_lengths('gridd_feed_push refusals',
	    coalesce(cardinality(p_rej_reason), 0), ARRAY[
	    coalesce(cardinality(p_rej_kind), 0),
	    coalesce(cardinality(p_rej_source), 0),
	    coalesce(cardinality(p_rej_ext), 0),
	    coalesce(cardinality(p_rej_cat), 0),
	    coalesce(cardinality(p_rej_tt), 0)]);
	-- Optional arrays: empty or one element per item (per refusal).
	IF coalesce(cardinality(p_owner), 0) NOT IN (0, v_n) OR
	    coalesce(cardinality(p_rej_comm), 0) NOT IN (0,
		coalesce(cardinality(p_rej_reason), 0)) OR
	    coalesce(cardinality(p_rej_lon), 0) NOT IN (0,
		coalesce(cardinality(p_rej_reason), 0)) OR
	    coalesce(cardinality(p_rej_lat), 0) <>
		coalesce(cardinality(p_rej_lon), 0) THEN
		RAISE EXCEPTION 'gridd_feed_push: p_owner, p_rej_comm, '
		    'p_rej_lon or p_rej_lat has the wrong length'
		    USING ERRCODE = 'invalid_parameter_value';
	END IF;

	-- Items the daemon refused, with the community their point is in (so
	-- that the burden report counts them per community as well): as the
	-- daemon located it in memory (p_rej_comm), or from the point it
	-- sends when it has no current index (p_rej_lon/lat).
	INSERT INTO rejections (source_kind, source_id, ext_id, category,
	    task_type, reason, community_id)
	SELECT u.kind, u.src, left(coalesce(u.ext, ''), 128),
	    left(coalesce(u.cat, ''), 64), u.tt, u.reason,
	    coalesce(u.comm, (SELECT l.community_id
		FROM gridd_locate(u.lon, u.lat) l
		WHERE u.lon IS NOT NULL AND u.lat IS NOT NULL))
	FROM unnest(p_rej_kind, p_rej_source, p_rej_ext, p_rej_cat, p_rej_tt,
	    p_rej_reason, p_rej_comm, p_rej_lon, p_rej_lat)
	    AS u(kind, src, ext, cat, tt, reason, comm, lon, lat)
	WHERE u.reason IS NOT NULL;

	IF v_n = 0 THEN
		RETURN;
	END IF;

	SELECT g.version INTO v_gv FROM feed_grid_version g;
	v_cached := p_gridv IS NOT NULL AND p_gridv = v_gv;

	-- The merge locks, before the search below takes its snapshot.
	IF v_merge THEN
		PERFORM pg_advisory_xact_lock(hashtext('gridd_merge'), k.key)
		FROM (SELECT DISTINCT hashtext(t.tt || '/' || gx || '/' || gy)
			AS key
		    FROM (SELECT u.tt, coalesce(u.lon, b.x) AS x,
			    coalesce(u.lat, b.y) AS y
			FROM unnest(p_tt, p_lon, p_lat, p_code, p_bldg)
			    AS u(tt, lon, lat, code, bldg)
			LEFT JOIN LATERAL (SELECT ST_X(b.geom) AS x,
				ST_Y(b.geom) AS y
			    FROM buildings b
			    WHERE u.lon IS NULL AND u.code IS NULL
				AND b.building_id = u.bldg) b ON true) t
		    CROSS JOIN LATERAL (SELECT p_radius_m / (111320.0 *
			greatest(cos(radians(t.y)), 0.01)) AS dx) d
		    CROSS JOIN LATERAL generate_series(
			floor((t.x - d.dx) / v_tile)::bigint,
			floor((t.x + d.dx) / v_tile)::bigint) gx
		    CROSS JOIN LATERAL generate_series(
			floor((t.y - v_dlat) / v_tile)::bigint,
			floor((t.y + v_dlat) / v_tile)::bigint) gy
		    WHERE t.x IS NOT NULL AND t.y IS NOT NULL
		    ORDER BY 1 OFFSET 0) k;
	END IF;

	-- The plan: where each item is and what is already there.  Every
	-- join here is an index probe per item; the sets of items meet only
	-- in order-aligned arrays (no join between them, whose plan could turn
	-- quadratic on a large transaction).
	WITH it AS (
		SELECT u.*, to_timestamp(u.occ / 1000.0) AS occ_ts
		FROM unnest(p_kind, p_source, p_ext, p_tt, p_occ, p_lon, p_lat,
		    p_comm, p_cell, p_code, p_bldg) WITH ORDINALITY
		    AS u(kind, src, ext, tt, occ, lon, lat, comm, cell, code,
		    bldg, ord)
	), loc AS (
		SELECT it.*, l.community_id AS lcomm, l.cell_id AS lcell, l.geom,
		    CASE WHEN it.lon IS NOT NULL THEN 'point'
			WHEN it.code IS NOT NULL THEN 'dept_code'
			ELSE 'building' END AS how
		FROM it
		LEFT JOIN LATERAL (
			SELECT it.comm AS community_id, it.cell AS cell_id,
			    ST_SetSRID(ST_MakePoint(it.lon, it.lat), 4326)
			    AS geom
			WHERE v_cached AND it.lon IS NOT NULL
			    AND it.lat IS NOT NULL
			UNION ALL
			SELECT g.community_id, g.cell_id,
			    ST_SetSRID(ST_MakePoint(it.lon, it.lat), 4326)
			FROM gridd_locate(it.lon, it.lat) g
			WHERE NOT v_cached AND it.lon IS NOT NULL
			    AND it.lat IS NOT NULL
			UNION ALL
			SELECT x.community_id, x.cell_id,
			    (SELECT CASE WHEN ST_IsEmpty(s.g) THEN NULL
				ELSE s.g END
				FROM (SELECT ST_PointOnSurface(ST_Intersection(
				    dl.geom, c.geom)) AS g
				FROM department_layers dl, cells c
				WHERE dl.department_id = x.department_id
				    AND dl.dept_code = x.dept_code
				    AND c.cell_id = x.cell_id
				    AND c.valid_to IS NULL) s)
			FROM crosswalk x
			WHERE it.lon IS NULL AND it.code IS NOT NULL
			    AND it.kind = 'department'
			    AND x.department_id = it.src
			    AND x.dept_code = it.code AND x.dominant
			UNION ALL
			SELECT b.community_id, b.cell_id, b.geom
			FROM buildings b
			WHERE it.lon IS NULL AND it.code IS NULL
			    AND b.building_id = it.bldg
			LIMIT 1
		) l ON true
	), step AS (
		SELECT loc.ord, loc.lcomm, loc.lcell, loc.geom, loc.how,
		    d.incident_id AS dup_inc, d.cell_id AS dup_cell,
		    m.incident_id AS m_inc, m.community_id AS m_comm,
		    m.cell_id AS m_cell
		FROM loc
		LEFT JOIN LATERAL (
			SELECT s.incident_id, di.cell_id
			FROM incident_sources s
			JOIN incidents di ON di.incident_id = s.incident_id
			WHERE s.source_kind = loc.kind
			    AND s.source_id = loc.src AND s.ext_id = loc.ext
		) d ON true
		LEFT JOIN LATERAL (
			SELECT i.incident_id, i.community_id, i.cell_id
			FROM incidents i
			WHERE v_merge AND d.incident_id IS NULL
			    AND loc.lcomm IS NOT NULL
			    AND loc.how <> 'dept_code' AND loc.geom IS NOT NULL
			    AND gridd_open_status(i.status)
			    AND i.located_by <> 'dept_code'
			    AND i.geom && ST_Expand(loc.geom,
				p_radius_m / (111320.0 * greatest(
				    cos(radians(ST_Y(loc.geom))), 0.01)),
				v_dlat)
			    AND i.task_type = loc.tt
			    AND i.occurred_at BETWEEN loc.occ_ts - v_window
				AND loc.occ_ts + v_window
			    AND ST_DWithin(i.geom::geography,
				loc.geom::geography, p_radius_m)
			ORDER BY ST_Distance(i.geom::geography,
			    loc.geom::geography), i.incident_id
			LIMIT 1
		) m ON true
	)
	SELECT array_agg(st.lcomm ORDER BY st.ord),
	    array_agg(st.lcell ORDER BY st.ord),
	    array_agg(st.geom ORDER BY st.ord),
	    array_agg(st.how ORDER BY st.ord),
	    array_agg(st.dup_inc ORDER BY st.ord),
	    array_agg(st.dup_cell ORDER BY st.ord),
	    array_agg(st.m_inc ORDER BY st.ord),
	    array_agg(st.m_comm ORDER BY st.ord),
	    array_agg(st.m_cell ORDER BY st.ord),
	    -- the items that would make a new incident: merge candidates
	    -- within the call
	    array_agg(CASE WHEN st.dup_inc IS NULL AND st.m_inc IS NULL
		AND st.lcomm IS NOT NULL AND st.how <> 'dept_code'
		THEN st.geom END ORDER BY st.ord)
	INTO v_lcomm, v_lcell, v_geom, v_how, v_dup, v_dupcell, v_mrg,
	    v_mcomm, v_mcell, v_cgeom
	FROM step st;

	IF v_merge AND v_n > 1 THEN
		v_leader := gridd_feed_leaders(p_tt, p_occ, v_cgeom, p_radius_m,
		    p_window_s);
	ELSE
		v_leader := array_fill(NULL::integer, ARRAY[v_n]);
	END IF;

	-- What each item becomes.  New incidents take their ids in item
	-- order; an item that joined one takes the id of its leader, the first
	-- of its partition.
	WITH k AS (
		SELECT u.ord::integer AS ord, u.leader,
		    CASE WHEN u.dup IS NOT NULL THEN 'duplicate'
			WHEN u.lcomm IS NULL THEN
			    CASE u.how WHEN 'point' THEN 'outside'
				WHEN 'dept_code' THEN 'unknown_code'
				ELSE 'unknown_building' END
			WHEN u.mrg IS NOT NULL THEN 'merge_existing'
			WHEN u.leader IS NOT NULL THEN 'merge_batch'
			ELSE 'new' END AS kind,
		    u.dup, u.dupcell, u.mrg, u.mcomm, u.mcell, u.lcomm, u.lcell
		FROM unnest(v_dup, v_dupcell, v_mrg, v_mcomm, v_mcell, v_lcomm,
		    v_lcell, v_how, v_leader) WITH ORDINALITY
		    AS u(dup, dupcell, mrg, mcomm, mcell, lcomm, lcell, how,
		    leader, ord)
	), ids AS (
		SELECT k.*, CASE WHEN k.kind = 'new'
		    THEN nextval('incidents_incident_id_seq') END AS new_id
		FROM (SELECT * FROM k ORDER BY k.ord OFFSET 0) k
	), w AS (
		SELECT ids.*, first_value(ids.new_id) OVER r AS root_id,
		    first_value(ids.lcomm) OVER r AS root_comm,
		    first_value(ids.lcell) OVER r AS root_cell
		FROM ids
		WINDOW r AS (PARTITION BY coalesce(ids.leader, ids.ord)
		    ORDER BY ids.ord)
	)
	SELECT array_agg(w.kind ORDER BY w.ord),
	    array_agg(CASE w.kind WHEN 'new' THEN w.new_id
		WHEN 'merge_batch' THEN w.root_id
		WHEN 'merge_existing' THEN w.mrg
		WHEN 'duplicate' THEN w.dup END ORDER BY w.ord),
	    array_agg(CASE w.kind WHEN 'new' THEN w.lcomm
		WHEN 'merge_batch' THEN w.root_comm
		WHEN 'merge_existing' THEN w.mcomm END ORDER BY w.ord),
	    array_agg(CASE w.kind WHEN 'new' THEN w.lcell
		WHEN 'merge_batch' THEN w.root_cell
		WHEN 'merge_existing' THEN w.mcell
		WHEN 'duplicate' THEN w.dupcell END ORDER BY w.ord)
	INTO v_kind, v_inc, v_icomm, v_icell
	FROM w;

	-- New incidents, owned (and for assist work funded) by the department
	-- that pushed the item, or for a worker's report by the department
	-- its task type names (p_owner); departments of later items that
	-- joined it are added below, as if they had come one after the other.
	INSERT INTO incidents (incident_id, community_id, cell_id, task_type,
	    list, matter, route, status, owner_department, funder_department,
	    departments, severity, summary, description, address, geom,
	    occurred_at, deadline, located_by)
	SELECT u.inc, u.comm, u.cell, u.tt, u.list, u.matter, u.route,
	    CASE u.route WHEN 'worker' THEN 'new' ELSE 'referred' END,
	    CASE WHEN u.skind = 'department' THEN u.src ELSE u.own END,
	    CASE WHEN u.list = 'assist' THEN CASE
		WHEN u.skind = 'department' THEN u.src ELSE u.own END END,
	    CASE WHEN u.skind = 'department' THEN ARRAY[u.src]
		WHEN u.own IS NOT NULL THEN ARRAY[u.own]
		ELSE '{}'::text[] END,
	    u.sev,
	    left(CASE WHEN u.descr = '' THEN u.tt ELSE u.descr END, 200),
	    u.descr, u.addr, u.geom, to_timestamp(u.occ / 1000.0),
	    CASE WHEN u.sla > 0 AND u.route <> 'referral'
		THEN now() + make_interval(mins => u.sla) END,
	    u.how
	FROM unnest(v_kind, v_inc, v_icomm, v_icell, v_geom, v_how, p_kind,
	    p_source, p_tt, p_list, p_matter, p_route, p_sla, p_sev, p_occ,
	    p_addr, p_desc, p_owner)
	    AS u(kind, inc, comm, cell, geom, how, skind, src, tt, list,
	    matter, route, sla, sev, occ, addr, descr, own)
	WHERE u.kind = 'new';

	-- Sources: every accepted or merged item.
	INSERT INTO incident_sources (source_kind, source_id, ext_id,
	    incident_id, community_id, category, outcome)
	SELECT u.skind, u.src, u.ext, u.inc, u.comm, u.cat,
	    CASE u.kind WHEN 'new' THEN 'accepted' ELSE 'merged' END
	FROM unnest(v_kind, v_inc, v_icomm, p_kind, p_source, p_ext, p_cat)
	    WITH ORDINALITY AS u(kind, inc, comm, skind, src, ext, cat, ord)
	WHERE u.kind IN ('new', 'merge_existing', 'merge_batch')
	ORDER BY u.ord;

	-- A department that merges into an incident it is not yet a source
	-- of becomes one (one model); for assist work it owns and funds it if
	-- nobody did (费随事转).  It hears the incident's current state at
	-- once.  Then the events: each new incident's first state to the
	-- department that pushed it, and the joins, in item order.
	WITH j AS (
		SELECT x.inc, x.src, min(x.ord)::integer AS first,
		    (array_agg(x.ext ORDER BY x.ord))[1] AS ext,
		    (array_agg(x.list ORDER BY x.ord))[1] AS list
		FROM unnest(v_kind, v_inc, p_kind, p_source, p_ext, p_list)
		    WITH ORDINALITY AS x(kind, inc, skind, src, ext, list, ord)
		WHERE x.kind IN ('merge_existing', 'merge_batch')
		    AND x.skind = 'department'
		GROUP BY x.inc, x.src
	), fresh AS (
		SELECT j.* FROM j
		JOIN incidents i ON i.incident_id = j.inc
		WHERE NOT (j.src = ANY (i.departments))
	), agg AS (
		SELECT f.inc, array_agg(f.src ORDER BY f.first) AS add,
		    array_agg(f.first ORDER BY f.first) AS firsts,
		    array_agg(f.ext ORDER BY f.first) AS exts,
		    (array_agg(f.list ORDER BY f.first))[1] AS list
		FROM fresh f GROUP BY f.inc
	), upd AS (
		UPDATE incidents i SET
		    departments = i.departments || a.add,
		    owner_department = coalesce(i.owner_department, a.add[1]),
		    funder_department = CASE WHEN a.list = 'assist'
			THEN coalesce(i.funder_department, a.add[1])
			ELSE i.funder_department END,
		    updated_at = now()
		FROM agg a
		WHERE i.incident_id = a.inc
		RETURNING i.incident_id, i.status, a.add, a.firsts, a.exts
	), ev AS (
		SELECT u.inc,
		    CASE WHEN u.skind = 'department' THEN u.src
			ELSE u.own END AS dept,
		    CASE u.route WHEN 'worker' THEN 'new'
			ELSE 'referred' END AS status,
		    u.note,
		    CASE WHEN u.skind = 'department' THEN u.ext
			ELSE '' END AS ext,
		    u.ord::integer AS first
		FROM unnest(v_kind, v_inc, p_kind, p_source, p_route, p_note,
		    p_ext, p_owner) WITH ORDINALITY
		    AS u(kind, inc, skind, src, route, note, ext, own, ord)
		WHERE u.kind = 'new' AND
		    (u.skind = 'department' OR u.own IS NOT NULL)
		UNION ALL
		SELECT upd.incident_id, x.dept, upd.status,
		    'merged: also pushed by this department', x.ext, x.first
		FROM upd
		CROSS JOIN LATERAL unnest(upd.add, upd.firsts, upd.exts)
		    AS x(dept, first, ext)
	)
	SELECT array_agg(ev.inc ORDER BY ev.first, ev.dept),
	    array_agg(ev.dept ORDER BY ev.first, ev.dept),
	    array_agg(ev.status ORDER BY ev.first, ev.dept),
	    array_agg(ev.note ORDER BY ev.first, ev.dept),
	    array_agg(ev.ext ORDER BY ev.first, ev.dept)
	INTO v_ev_inc, v_ev_dept, v_ev_status, v_ev_note, v_ev_ext
	FROM ev;

	-- The new incidents for workers are offered now, before any event is
	-- written: the departments' sequence rows are locked by the events
	-- below, and held to the commit, so no worker is chosen while they
	-- are held.
	SELECT * INTO v_dp FROM gridd_dispatch_pushed(ARRAY(
	    SELECT u.inc FROM unnest(v_kind, v_inc, p_route)
		AS u(kind, inc, route)
	    WHERE u.kind = 'new' AND u.route = 'worker'));

	-- Events last: the departments' sequence rows are locked after every
	-- incident row this transaction changes.  Each new incident's first
	-- state comes before its offer.
	PERFORM gridd_emit_events_to(v_ev_inc, v_ev_dept, v_ev_status,
	    array_fill(NULL::text, ARRAY[coalesce(cardinality(v_ev_inc), 0)]),
	    v_ev_note, v_ev_ext);
	PERFORM gridd_dispatch_emit(v_dp.o_inc, v_dp.o_st, v_dp.o_wk,
	    v_dp.o_nt);

	-- Queued for dispatch: the SLA timer (the incident's own deadline:
	-- now() is the transaction's start in both) and the wake-up of
	-- whichever process dispatches (it also scans, so a lost NOTIFY
	-- loses nothing).
	INSERT INTO timers (kind, ref_id, community_id, fire_at)
	SELECT 'sla', u.inc, u.comm, now() + make_interval(mins => u.sla)
	FROM unnest(v_kind, v_inc, v_icomm, p_sla, p_route)
	    AS u(kind, inc, comm, sla, route)
	WHERE u.kind = 'new' AND u.sla > 0 AND u.route <> 'referral'
	ON CONFLICT (kind, ref_id) DO NOTHING;
	PERFORM pg_notify('gridd_dispatch', u.inc::text)
	FROM unnest(v_kind, v_inc, p_route) WITH ORDINALITY
	    AS u(kind, inc, route, ord)
	WHERE u.kind = 'new' AND u.route = 'worker'
	ORDER BY u.ord;

	-- Items nobody could place.
	INSERT INTO rejections (source_kind, source_id, ext_id, category,
	    task_type, reason)
	SELECT u.skind, u.src, u.ext, left(u.cat, 64), u.tt, 'outside'
	FROM unnest(v_kind, p_kind, p_source, p_ext, p_cat, p_tt)
	    AS u(kind, skind, src, ext, cat, tt)
	WHERE u.kind IN ('outside', 'unknown_code', 'unknown_building');

	RETURN QUERY
	SELECT k.ord::integer,
	    CASE k.kind WHEN 'new' THEN 'accepted'
		WHEN 'merge_existing' THEN 'merged'
		WHEN 'merge_batch' THEN 'merged'
		ELSE k.kind END,
	    k.inc, k.cell, v_gv
	FROM unnest(v_kind, v_inc, v_icell) WITH ORDINALITY
	    AS k(kind, inc, cell, ord)
	ORDER BY k.ord;
END
$$;

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
--   gridd_feed_push(...)  one PushIncidents (or ReportIncident) batch; see
--       its comment.  The daemon validates and classifies each item first
--       (config: crosswalk, task types) and passes the survivors here as
--       parallel arrays, plus the items it refused, to be recorded.
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

-- One batch from one source (a department's PushIncidents or a worker's
-- ReportIncident), after the daemon's validation and classification.
--
-- Parallel arrays, one element per item that passed the daemon's checks:
--   ext ids, categories (as pushed), task types and their list, matter,
--   route, sla minutes (0 = none) and event note (guidance for referrals),
--   severity, occurred_at (ms since the epoch), lon/lat (NULL = no point),
--   department grid code (NULL = none), building id (NULL = none),
--   address, description.
-- The daemon has already folded repeats of an ext_id within the batch, so
-- every ext id here is distinct.  p_rej_* are the items the daemon refused
-- (reason invalid, unknown_category or negative_list), recorded here so
-- that the refusal commits with the batch.
--
-- Per item, set-based over the batch:
--   locate   the point -> the current cell containing it; else the grid
--            code -> the crosswalk's dominant cell; else the building ->
--            its cell.  A point outside every community is not retried
--            with the code: the point is the location.
--   dedupe   (source_kind, source_id, ext_id) already stored -> duplicate
--            with the incident of the first answer; nothing changes.
--   merge    an open incident of the same task type, pushed by anyone,
--            within p_radius_m (geodesic) and p_window_s of occurred_at ->
--            merged into it (the nearest; ties by lower id).  Items of this
--            batch merge with each other too: an item joins the earliest
--            earlier item within reach that itself joined nobody.  A radius
--            or window of 0 turns merging off.
--   create   otherwise a new incident: status 'new' for route worker
--            (queued for dispatch: NOTIFY gridd_dispatch + an SLA timer),
--            'referred' for routes department and referral; an SLA deadline
--            for routes worker and department (a referral left the
--            government's hands).
-- Merges across processes are serialised by a transaction advisory lock
-- per task type, taken in one order (by hash).
--
-- Returns one row per input item in order: ord (1-based), outcome
-- (accepted, merged, duplicate, outside, unknown_code, unknown_building),
-- the incident id (NULL when rejected) and the cell id.
CREATE FUNCTION gridd_feed_push(p_kind text, p_source text,
    p_radius_m double precision, p_window_s integer,
    p_ext text[], p_cat text[], p_tt text[], p_list text[], p_matter text[],
    p_route text[], p_sla integer[], p_note text[], p_sev integer[],
    p_occ bigint[], p_lon double precision[], p_lat double precision[],
    p_code text[], p_bldg text[], p_addr text[], p_desc text[],
    p_rej_ext text[], p_rej_cat text[], p_rej_tt text[], p_rej_reason text[])
RETURNS TABLE (ord integer, outcome text, incident_id bigint, cell_id text)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
	v_n integer := coalesce(cardinality(p_ext), 0);
	v_merge boolean := p_radius_m > 0 AND p_window_s > 0;
	v_window interval := make_interval(secs => greatest(p_window_s, 0));
	-- plan, one element per item in order
	v_kind text[];
	v_inc bigint[];
	v_comm text[];
	v_cell text[];
	v_geom geometry[];
	v_how text[];
	v_leader integer[];
	v_dup bigint[];
	v_mrg bigint[];
	v_pe integer[];
	v_pl integer[];
	v_root boolean[];
	v_dlon double precision;
	v_dlat double precision;
	v_lock integer;
	v_ev_inc bigint[];
	v_ev_status text[];
	v_ev_note text[];
	v_ev_ext text[];
BEGIN
	PERFORM gridd_check_lengths('gridd_feed_push', v_n, ARRAY[
	    coalesce(cardinality(p_cat), 0), coalesce(cardinality(p_tt), 0),
	    coalesce(cardinality(p_list), 0),
	    coalesce(cardinality(p_matter), 0),
	    coalesce(cardinality(p_route), 0), coalesce(cardinality(p_sla), 0),
	    coalesce(cardinality(p_note), 0), coalesce(cardinality(p_sev), 0),
	    coalesce(cardinality(p_occ), 0), coalesce(cardinality(p_lon), 0),
	    coalesce(cardinality(p_lat), 0), coalesce(cardinality(p_code), 0),
	    coalesce(cardinality(p_bldg), 0), coalesce(cardinality(p_addr), 0),
	    coalesce(cardinality(p_desc), 0)]);

	IF v_n > 0 AND v_merge THEN
		FOR v_lock IN SELECT DISTINCT hashtext(t) FROM unnest(p_tt) t
		    ORDER BY 1 LOOP
			PERFORM pg_advisory_xact_lock(hashtext('gridd_merge'),
			    v_lock);
		END LOOP;
	END IF;

	IF v_n > 0 THEN
	WITH it AS (
		SELECT u.*, to_timestamp(u.occ / 1000.0) AS occ_ts
		FROM unnest(p_ext, p_tt, p_occ, p_lon, p_lat, p_code, p_bldg)
		    WITH ORDINALITY AS u(ext, tt, occ, lon, lat, code, bldg, ord)
	), loc AS (
		SELECT it.*, l.community_id, l.cell_id, l.geom,
		    CASE WHEN it.lon IS NOT NULL THEN 'point'
			WHEN it.code IS NOT NULL THEN 'dept_code'
			ELSE 'building' END AS how
		FROM it
		LEFT JOIN LATERAL (
			SELECT g.community_id, g.cell_id,
			    ST_SetSRID(ST_MakePoint(it.lon, it.lat), 4326)
			    AS geom
			FROM gridd_locate(it.lon, it.lat) g
			WHERE it.lon IS NOT NULL AND it.lat IS NOT NULL
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
			    AND x.department_id = p_source
			    AND x.dept_code = it.code AND x.dominant
			UNION ALL
			SELECT b.community_id, b.cell_id, b.geom
			FROM buildings b
			WHERE it.lon IS NULL AND it.code IS NULL
			    AND b.building_id = it.bldg
			LIMIT 1
		) l ON true
	), dup AS (
		SELECT s.ext_id, s.incident_id
		FROM incident_sources s
		WHERE s.source_kind = p_kind AND s.source_id = p_source
		    AND s.ext_id = ANY (p_ext)
	), step AS (
		SELECT loc.*, d.incident_id AS dup_inc, m.incident_id AS merge_inc
		FROM loc
		LEFT JOIN dup d ON d.ext_id = loc.ext
		LEFT JOIN LATERAL (
			SELECT i.incident_id FROM incidents i
			WHERE v_merge AND d.incident_id IS NULL
			    AND loc.community_id IS NOT NULL
			    AND loc.how <> 'dept_code' AND loc.geom IS NOT NULL
			    AND gridd_open_status(i.status)
			    AND i.located_by <> 'dept_code'
			    AND i.geom && ST_Expand(loc.geom,
				p_radius_m / (111320.0 * greatest(
				    cos(radians(ST_Y(loc.geom))), 0.01)),
				p_radius_m / 110540.0)
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
	SELECT array_agg(s.community_id ORDER BY s.ord),
	    array_agg(s.cell_id ORDER BY s.ord),
	    array_agg(s.geom ORDER BY s.ord),
	    array_agg(s.how ORDER BY s.ord),
	    array_agg(s.dup_inc ORDER BY s.ord),
	    array_agg(s.merge_inc ORDER BY s.ord)
	INTO v_comm, v_cell, v_geom, v_how, v_dup, v_mrg
	FROM step s;

	-- Within the batch: pairs (early, late) of items that would each
	-- make a new incident and lie within reach of each other.  Items are
	-- bucketed by a grid at least the radius wide, so only neighbouring
	-- buckets are compared (a hash join, not every pair).
	v_leader := array_fill(NULL::integer, ARRAY[v_n]);
	IF v_merge AND v_n > 1 THEN
		SELECT p_radius_m / (111320.0 * greatest(cos(radians(
		    max(abs(ST_Y(g))))), 0.01))
		INTO v_dlon
		FROM unnest(v_geom) g;
		v_dlat := p_radius_m / 110540.0;
		WITH f AS (
			SELECT u.ord::integer AS ord,
			    CASE WHEN u.dup IS NULL AND u.mrg IS NULL
				AND u.comm IS NOT NULL AND u.how <> 'dept_code'
				AND u.geom IS NOT NULL THEN u.tt END AS tt,
			    u.geom, u.occ, ST_X(u.geom) AS x, ST_Y(u.geom) AS y,
			    floor(ST_X(u.geom) / v_dlon)::bigint AS gx,
			    floor(ST_Y(u.geom) / v_dlat)::bigint AS gy
			FROM unnest(v_dup, v_mrg, v_comm, v_how, v_geom, p_tt,
			    p_occ) WITH ORDINALITY
			    AS u(dup, mrg, comm, how, geom, tt, occ, ord)
		), pair AS (
			SELECT a.ord AS early, b.ord AS late
			FROM f a
			CROSS JOIN (VALUES (-1), (0), (1)) ox(d)
			CROSS JOIN (VALUES (-1), (0), (1)) oy(d)
			JOIN f b ON b.tt = a.tt AND b.gx = a.gx + ox.d
			    AND b.gy = a.gy + oy.d
			WHERE a.ord < b.ord
			    AND abs(a.occ - b.occ) <= p_window_s * 1000::bigint
			    AND abs(a.x - b.x) <= v_dlon
			    AND abs(a.y - b.y) <= v_dlat
			    AND ST_DWithin(a.geom::geography, b.geom::geography,
				p_radius_m)
		)
		SELECT array_agg(early ORDER BY late, early),
		    array_agg(late ORDER BY late, early)
		INTO v_pe, v_pl
		FROM pair;
		-- A late item joins the earliest item within reach that itself
		-- joined nobody (has no earlier neighbour); without such an
		-- item it makes its own incident.  Array work in memory, no
		-- query per item.
		IF v_pl IS NOT NULL THEN
			v_root := array_fill(true, ARRAY[v_n]);
			FOR i IN 1 .. cardinality(v_pl) LOOP
				v_root[v_pl[i]] := false;
			END LOOP;
			FOR i IN 1 .. cardinality(v_pl) LOOP
				IF v_root[v_pe[i]] AND v_leader[v_pl[i]] IS NULL
				THEN
					v_leader[v_pl[i]] := v_pe[i];
				END IF;
			END LOOP;
		END IF;
	END IF;

	SELECT array_agg(k.kind ORDER BY k.ord),
	    array_agg(CASE WHEN k.kind = 'new'
		THEN nextval('incidents_incident_id_seq') ELSE k.inc END
		ORDER BY k.ord)
	INTO v_kind, v_inc
	FROM (
		SELECT u.ord,
		    CASE WHEN u.dup IS NOT NULL THEN 'duplicate'
			WHEN u.comm IS NULL THEN
			    CASE u.how WHEN 'point' THEN 'outside'
				WHEN 'dept_code' THEN 'unknown_code'
				ELSE 'unknown_building' END
			WHEN u.mrg IS NOT NULL THEN 'merge_existing'
			WHEN u.leader IS NOT NULL THEN 'merge_batch'
			ELSE 'new' END AS kind,
		    coalesce(u.dup, u.mrg) AS inc
		FROM unnest(v_dup, v_mrg, v_comm, v_how, v_leader)
		    WITH ORDINALITY AS u(dup, mrg, comm, how, leader, ord)
	) k;

	-- Items that joined an earlier item of the batch take its new id.
	SELECT array_agg(CASE WHEN k.kind = 'merge_batch'
	    THEN v_inc[k.leader] ELSE k.inc END ORDER BY k.ord)
	INTO v_inc
	FROM unnest(v_kind, v_inc, v_leader) WITH ORDINALITY
	    AS k(kind, inc, leader, ord);

	-- New incidents.
	INSERT INTO incidents (incident_id, community_id, cell_id, task_type,
	    list, matter, route, status, owner_department, funder_department,
	    departments, severity, summary, description, address, geom,
	    occurred_at, deadline, located_by)
	SELECT u.inc, u.comm, u.cell, u.tt, u.list, u.matter, u.route,
	    CASE u.route WHEN 'worker' THEN 'new' ELSE 'referred' END,
	    CASE WHEN p_kind = 'department' THEN p_source END,
	    CASE WHEN p_kind = 'department' AND u.list = 'assist'
		THEN p_source END,
	    CASE WHEN p_kind = 'department' THEN ARRAY[p_source]
		ELSE '{}'::text[] END,
	    u.sev,
	    left(CASE WHEN u.descr = '' THEN u.tt ELSE u.descr END, 200),
	    u.descr, u.addr, u.geom, to_timestamp(u.occ / 1000.0),
	    CASE WHEN u.sla > 0 AND u.route <> 'referral'
		THEN now() + make_interval(mins => u.sla) END,
	    u.how
	FROM unnest(v_kind, v_inc, v_comm, v_cell, v_geom, v_how, p_tt,
	    p_list, p_matter, p_route, p_sla, p_sev, p_occ, p_addr, p_desc)
	    AS u(kind, inc, comm, cell, geom, how, tt, list, matter, route,
	    sla, sev, occ, addr, descr)
	WHERE u.kind = 'new';

	-- Sources: every accepted or merged item.
	INSERT INTO incident_sources (source_kind, source_id, ext_id,
	    incident_id, community_id, category, outcome)
	SELECT p_kind, p_source, u.ext, u.inc, i.community_id, u.cat,
	    CASE u.kind WHEN 'new' THEN 'accepted' ELSE 'merged' END
	FROM unnest(v_kind, v_inc, p_ext, p_cat) WITH ORDINALITY
	    AS u(kind, inc, ext, cat, ord)
	JOIN incidents i ON i.incident_id = u.inc
	WHERE u.kind IN ('new', 'merge_existing', 'merge_batch')
	ORDER BY u.ord;

	-- A department that merges into another's incident becomes one of its
	-- sources (one model); for assist work it owns and funds it if nobody
	-- did (费随事转).  It hears the incident's current state at once.
	IF p_kind = 'department' THEN
		WITH joined AS (
			SELECT DISTINCT ON (u.inc) u.inc, u.list, u.ext
			FROM unnest(v_kind, v_inc, p_list, p_ext) WITH ORDINALITY
			    AS u(kind, inc, list, ext, ord)
			WHERE u.kind = 'merge_existing'
			ORDER BY u.inc, u.ord
		), upd AS (
			UPDATE incidents i SET
			    departments = i.departments || p_source,
			    owner_department = coalesce(i.owner_department,
				p_source),
			    funder_department = CASE WHEN j.list = 'assist'
				THEN coalesce(i.funder_department, p_source)
				ELSE i.funder_department END,
			    updated_at = now()
			FROM joined j
			WHERE i.incident_id = j.inc
			    AND NOT (p_source = ANY (i.departments))
			RETURNING i.incident_id, i.status, j.ext
		)
		SELECT array_agg(upd.incident_id ORDER BY upd.incident_id),
		    array_agg(upd.status ORDER BY upd.incident_id),
		    array_agg(upd.ext ORDER BY upd.incident_id)
		INTO v_ev_inc, v_ev_status, v_ev_ext
		FROM upd;

		-- Events: each new incident's first state, then the merges.
		SELECT coalesce(array_agg(u.inc ORDER BY u.ord), '{}') ||
		    coalesce(v_ev_inc, '{}'),
		    coalesce(array_agg(CASE u.route WHEN 'worker' THEN 'new'
			ELSE 'referred' END ORDER BY u.ord), '{}') ||
		    coalesce(v_ev_status, '{}'),
		    coalesce(array_agg(u.note ORDER BY u.ord), '{}') ||
		    array_fill('merged: also pushed by this department'::text,
			ARRAY[coalesce(cardinality(v_ev_inc), 0)]),
		    coalesce(array_agg(u.ext ORDER BY u.ord), '{}') ||
		    coalesce(v_ev_ext, '{}')
		INTO v_ev_inc, v_ev_status, v_ev_note, v_ev_ext
		FROM unnest(v_kind, v_inc, p_route, p_note, p_ext)
		    WITH ORDINALITY AS u(kind, inc, route, note, ext, ord)
		WHERE u.kind = 'new';
		PERFORM gridd_emit_events_to(v_ev_inc,
		    array_fill(p_source, ARRAY[cardinality(v_ev_inc)]),
		    v_ev_status,
		    array_fill(NULL::text, ARRAY[cardinality(v_ev_inc)]),
		    v_ev_note, v_ev_ext);
	END IF;

	-- Queued for dispatch: the SLA timer and the wake-up of whichever
	-- process dispatches (it also scans, so a lost NOTIFY loses nothing).
	INSERT INTO timers (kind, ref_id, community_id, fire_at)
	SELECT 'sla', i.incident_id, i.community_id, i.deadline
	FROM incidents i
	WHERE i.incident_id = ANY (v_inc) AND i.deadline IS NOT NULL
	    AND i.incident_id IN (SELECT u.inc FROM unnest(v_kind, v_inc)
		AS u(kind, inc) WHERE u.kind = 'new')
	ON CONFLICT (kind, ref_id) DO NOTHING;
	PERFORM pg_notify('gridd_dispatch', u.inc::text)
	FROM unnest(v_kind, v_inc, p_route) WITH ORDINALITY
	    AS u(kind, inc, route, ord)
	WHERE u.kind = 'new' AND u.route = 'worker'
	ORDER BY u.ord;

	-- Items nobody could place.
	INSERT INTO rejections (source_kind, source_id, ext_id, category,
	    task_type, reason)
	SELECT p_kind, p_source, u.ext, left(u.cat, 64), u.tt, 'outside'
	FROM unnest(v_kind, p_ext, p_cat, p_tt) AS u(kind, ext, cat, tt)
	WHERE u.kind IN ('outside', 'unknown_code', 'unknown_building');
	END IF;

	-- Items the daemon refused.
	INSERT INTO rejections (source_kind, source_id, ext_id, category,
	    task_type, reason)
	SELECT p_kind, p_source, left(coalesce(u.ext, ''), 128),
	    left(coalesce(u.cat, ''), 64), u.tt, u.reason
	FROM unnest(p_rej_ext, p_rej_cat, p_rej_tt, p_rej_reason)
	    AS u(ext, cat, tt, reason)
	WHERE u.reason IS NOT NULL;

	IF v_n = 0 THEN
		RETURN;
	END IF;
	RETURN QUERY
	SELECT k.ord::integer,
	    CASE k.kind WHEN 'new' THEN 'accepted'
		WHEN 'merge_existing' THEN 'merged'
		WHEN 'merge_batch' THEN 'merged'
		ELSE k.kind END,
	    i.incident_id, i.cell_id
	FROM unnest(v_kind, v_inc) WITH ORDINALITY AS k(kind, inc, ord)
	LEFT JOIN incidents i ON i.incident_id = k.inc
	ORDER BY k.ord;
END
$$;

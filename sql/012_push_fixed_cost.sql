-- 012_push_fixed_cost.sql - gridd_feed_push runs only the statements that
-- have something to do, and sorts its items once per statement.
--
-- The migration runner wraps this file in one transaction.
--
-- Every lane transaction of a group commit pays the function's fixed part
-- once, whatever its size, and an open loop below the closed-loop rate
-- runs smaller transactions than the closed loop (about 70 items against
-- 195 in the bench), so it pays that part more often per item.  What the
-- part was made of, from perf and pg_stat_statements (track = all) of
-- one-item calls: starting the executor for each of some 25 statements
-- (about 30% of the backend's time), and statements with nothing to do.
-- An INSERT of no rows still starts its executor, opens the table's
-- indexes, compiles its check constraints and fires its statement
-- triggers (the report's, 005_report.sql); the refusals and the
-- unplaceable items were inserted on every call, most calls have
-- neither.  So, as 003_feed.sql defined it, except:
--
--   - each DML statement, the offer and the events run only when some
--     item needs them (a new incident, a merge, a refusal, an item
--     nobody could place); the merge within the call (gridd_feed_leaders)
--     only when two items at least could join;
--   - the parallel arrays' lengths are compared in an expression, and
--     gridd_check_lengths is called only to raise its error;
--   - the aggregates that rebuild the plan's arrays read their rows from
--     one sorted subquery instead of each sorting them (ORDER BY inside
--     the aggregate): PostgreSQL 15 sorts the input of every ordered
--     aggregate on its own, ten sorts for the plan statement alone.  An
--     aggregate without ORDER BY reads a sorted subquery in its order (a
--     subquery with ORDER BY is never pulled up into the query above).
--
-- Measured with gridd's own per-batch SQL on one connection (gridbench
-- baseline --mode gridd --db-conns 1), this function as 003 left it and as
-- here, in turns, three rounds of 4 s each, medians: one-item calls 623
-- and 734/s, CPU of PostgreSQL's processes per call 2.14 and 1.65 ms;
-- 70-item calls 8,266 and 10,613 items/s, 10.7 and 8.3 ms of CPU per call.
--
-- The function's settings are restated (CREATE OR REPLACE replaces them
-- all): see 010_ingest_cost.sql (enable_seqscan) and
-- 011_push_lock_hash.sql (enable_hashagg).
CREATE OR REPLACE FUNCTION gridd_feed_push(p_radius_m double precision,
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
SET enable_seqscan = off
SET enable_hashagg = off
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
	v_ncand bigint;		-- how many have one
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
	v_len integer[];	-- the parallel arrays' lengths
	v_nrej integer;		-- refusals
	v_new boolean;		-- some item makes a new incident
	v_joins boolean;	-- some item merges into one
BEGIN
	-- The lengths: gridd_check_lengths is a statement of its own, so it
	-- is called only to say what is wrong.
	v_len := ARRAY[coalesce(cardinality(p_kind), 0),
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
	    coalesce(cardinality(p_desc), 0)];
	IF NOT (v_len <@ ARRAY[v_n]) THEN
		PERFORM gridd_check_lengths('gridd_feed_push', v_n, v_len);
	END IF;
	v_nrej := coalesce(cardinality(p_rej_reason), 0);
	v_len := ARRAY[coalesce(cardinality(p_rej_kind), 0),
	    coalesce(cardinality(p_rej_source), 0),
	    coalesce(cardinality(p_rej_ext), 0),
	    coalesce(cardinality(p_rej_cat), 0),
	    coalesce(cardinality(p_rej_tt), 0)];
	IF NOT (v_len <@ ARRAY[v_nrej]) THEN
		PERFORM gridd_check_lengths('gridd_feed_push refusals', v_nrej,
		    v_len);
	END IF;
	-- Optional arrays: empty or one element per item (per refusal).
	IF coalesce(cardinality(p_owner), 0) NOT IN (0, v_n) OR
	    coalesce(cardinality(p_rej_comm), 0) NOT IN (0, v_nrej) OR
	    coalesce(cardinality(p_rej_lon), 0) NOT IN (0, v_nrej) OR
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
	IF v_nrej > 0 THEN
		INSERT INTO rejections (source_kind, source_id, ext_id,
		    category, task_type, reason, community_id)
		SELECT u.kind, u.src, left(coalesce(u.ext, ''), 128),
		    left(coalesce(u.cat, ''), 64), u.tt, u.reason,
		    coalesce(u.comm, (SELECT l.community_id
			FROM gridd_locate(u.lon, u.lat) l
			WHERE u.lon IS NOT NULL AND u.lat IS NOT NULL))
		FROM unnest(p_rej_kind, p_rej_source, p_rej_ext, p_rej_cat,
		    p_rej_tt, p_rej_reason, p_rej_comm, p_rej_lon, p_rej_lat)
		    AS u(kind, src, ext, cat, tt, reason, comm, lon, lat)
		WHERE u.reason IS NOT NULL;
	END IF;

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
	SELECT array_agg(st.lcomm),
	    array_agg(st.lcell),
	    array_agg(st.geom),
	    array_agg(st.how),
	    array_agg(st.dup_inc),
	    array_agg(st.dup_cell),
	    array_agg(st.m_inc),
	    array_agg(st.m_comm),
	    array_agg(st.m_cell),
	    -- the items that would make a new incident: merge candidates
	    -- within the call
	    array_agg(st.cgeom),
	    count(st.cgeom)
	INTO v_lcomm, v_lcell, v_geom, v_how, v_dup, v_dupcell, v_mrg,
	    v_mcomm, v_mcell, v_cgeom, v_ncand
	FROM (SELECT s.*, CASE WHEN s.dup_inc IS NULL AND s.m_inc IS NULL
		AND s.lcomm IS NOT NULL AND s.how <> 'dept_code'
		THEN s.geom END AS cgeom
	    FROM step s ORDER BY s.ord) st;

	-- Two candidates at least, or nobody joins anybody.
	IF v_merge AND v_ncand > 1 THEN
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
	SELECT array_agg(w.kind),
	    array_agg(CASE w.kind WHEN 'new' THEN w.new_id
		WHEN 'merge_batch' THEN w.root_id
		WHEN 'merge_existing' THEN w.mrg
		WHEN 'duplicate' THEN w.dup END),
	    array_agg(CASE w.kind WHEN 'new' THEN w.lcomm
		WHEN 'merge_batch' THEN w.root_comm
		WHEN 'merge_existing' THEN w.mcomm END),
	    array_agg(CASE w.kind WHEN 'new' THEN w.lcell
		WHEN 'merge_batch' THEN w.root_cell
		WHEN 'merge_existing' THEN w.mcell
		WHEN 'duplicate' THEN w.dupcell END)
	INTO v_kind, v_inc, v_icomm, v_icell
	FROM (SELECT * FROM w ORDER BY w.ord) w;
	v_new := 'new' = ANY (v_kind);
	v_joins := 'merge_existing' = ANY (v_kind) OR
	    'merge_batch' = ANY (v_kind);

	-- New incidents, owned (and for assist work funded) by the department
	-- that pushed the item, or for a worker's report by the department
	-- its task type names (p_owner); departments of later items that
	-- joined it are added below, as if they had come one after the other.
	IF v_new THEN
		INSERT INTO incidents (incident_id, community_id, cell_id,
		    task_type, list, matter, route, status, owner_department,
		    funder_department, departments, severity, summary,
		    description, address, geom, occurred_at, deadline,
		    located_by)
		SELECT u.inc, u.comm, u.cell, u.tt, u.list, u.matter, u.route,
		    CASE u.route WHEN 'worker' THEN 'new' ELSE 'referred' END,
		    CASE WHEN u.skind = 'department' THEN u.src ELSE u.own END,
		    CASE WHEN u.list = 'assist' THEN CASE
			WHEN u.skind = 'department' THEN u.src ELSE u.own
			END END,
		    CASE WHEN u.skind = 'department' THEN ARRAY[u.src]
			WHEN u.own IS NOT NULL THEN ARRAY[u.own]
			ELSE '{}'::text[] END,
		    u.sev,
		    left(CASE WHEN u.descr = '' THEN u.tt ELSE u.descr END,
			200),
		    u.descr, u.addr, u.geom, to_timestamp(u.occ / 1000.0),
		    CASE WHEN u.sla > 0 AND u.route <> 'referral'
			THEN now() + make_interval(mins => u.sla) END,
		    u.how
		FROM unnest(v_kind, v_inc, v_icomm, v_icell, v_geom, v_how,
		    p_kind, p_source, p_tt, p_list, p_matter, p_route, p_sla,
		    p_sev, p_occ, p_addr, p_desc, p_owner)
		    AS u(kind, inc, comm, cell, geom, how, skind, src, tt,
		    list, matter, route, sla, sev, occ, addr, descr, own)
		WHERE u.kind = 'new';
	END IF;

	-- Sources: every accepted or merged item.
	IF v_new OR v_joins THEN
		INSERT INTO incident_sources (source_kind, source_id, ext_id,
		    incident_id, community_id, category, outcome)
		SELECT u.skind, u.src, u.ext, u.inc, u.comm, u.cat,
		    CASE u.kind WHEN 'new' THEN 'accepted' ELSE 'merged' END
		FROM unnest(v_kind, v_inc, v_icomm, p_kind, p_source, p_ext,
		    p_cat) WITH ORDINALITY
		    AS u(kind, inc, comm, skind, src, ext, cat, ord)
		WHERE u.kind IN ('new', 'merge_existing', 'merge_batch')
		ORDER BY u.ord;
	END IF;

	-- A department that merges into an incident it is not yet a source
	-- of becomes one (one model); for assist work it owns and funds it if
	-- nobody did (费随事转).  It hears the incident's current state at
	-- once.  Then the events: each new incident's first state to the
	-- department that pushed it, and the joins, in item order.
	IF v_new OR v_joins THEN
		WITH j AS (
			SELECT x.inc, x.src, min(x.ord)::integer AS first,
			    (array_agg(x.ext ORDER BY x.ord))[1] AS ext,
			    (array_agg(x.list ORDER BY x.ord))[1] AS list
			FROM unnest(v_kind, v_inc, p_kind, p_source, p_ext,
			    p_list) WITH ORDINALITY
			    AS x(kind, inc, skind, src, ext, list, ord)
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
			    owner_department = coalesce(i.owner_department,
				a.add[1]),
			    funder_department = CASE WHEN a.list = 'assist'
				THEN coalesce(i.funder_department, a.add[1])
				ELSE i.funder_department END,
			    updated_at = now()
			FROM agg a
			WHERE i.incident_id = a.inc
			RETURNING i.incident_id, i.status, a.add, a.firsts,
			    a.exts
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
			FROM unnest(v_kind, v_inc, p_kind, p_source, p_route,
			    p_note, p_ext, p_owner) WITH ORDINALITY
			    AS u(kind, inc, skind, src, route, note, ext, own,
			    ord)
			WHERE u.kind = 'new' AND
			    (u.skind = 'department' OR u.own IS NOT NULL)
			UNION ALL
			SELECT upd.incident_id, x.dept, upd.status,
			    'merged: also pushed by this department', x.ext,
			    x.first
			FROM upd
			CROSS JOIN LATERAL unnest(upd.add, upd.firsts,
			    upd.exts) AS x(dept, first, ext)
		)
		SELECT array_agg(ev.inc),
		    array_agg(ev.dept),
		    array_agg(ev.status),
		    array_agg(ev.note),
		    array_agg(ev.ext)
		INTO v_ev_inc, v_ev_dept, v_ev_status, v_ev_note, v_ev_ext
		FROM (SELECT * FROM ev ORDER BY ev.first, ev.dept) ev;
	END IF;

	-- The new incidents for workers are offered now, before any event is
	-- written: the departments' sequence rows are locked by the events
	-- below, and held to the commit, so no worker is chosen while they
	-- are held.
	IF v_new THEN
		SELECT * INTO v_dp FROM gridd_dispatch_pushed(ARRAY(
		    SELECT u.inc FROM unnest(v_kind, v_inc, p_route)
			AS u(kind, inc, route)
		    WHERE u.kind = 'new' AND u.route = 'worker'));
	END IF;

	-- Events last: the departments' sequence rows are locked after every
	-- incident row this transaction changes.  Each new incident's first
	-- state comes before its offer.
	IF v_ev_inc IS NOT NULL THEN
		PERFORM gridd_emit_events_to(v_ev_inc, v_ev_dept, v_ev_status,
		    array_fill(NULL::text, ARRAY[cardinality(v_ev_inc)]),
		    v_ev_note, v_ev_ext);
	END IF;
	IF v_new THEN
		PERFORM gridd_dispatch_emit(v_dp.o_inc, v_dp.o_st, v_dp.o_wk,
		    v_dp.o_nt);
	END IF;

	-- Queued for dispatch: the SLA timer (the incident's own deadline:
	-- now() is the transaction's start in both) and the wake-up of
	-- whichever process dispatches (it also scans, so a lost NOTIFY
	-- loses nothing).
	IF v_new THEN
		INSERT INTO timers (kind, ref_id, community_id, fire_at)
		SELECT 'sla', u.inc, u.comm,
		    now() + make_interval(mins => u.sla)
		FROM unnest(v_kind, v_inc, v_icomm, p_sla, p_route)
		    AS u(kind, inc, comm, sla, route)
		WHERE u.kind = 'new' AND u.sla > 0 AND u.route <> 'referral'
		ON CONFLICT (kind, ref_id) DO NOTHING;
		PERFORM pg_notify('gridd_dispatch', u.inc::text)
		FROM unnest(v_kind, v_inc, p_route) WITH ORDINALITY
		    AS u(kind, inc, route, ord)
		WHERE u.kind = 'new' AND u.route = 'worker'
		ORDER BY u.ord;
	END IF;

	-- Items nobody could place.
	IF 'outside' = ANY (v_kind) OR 'unknown_code' = ANY (v_kind) OR
	    'unknown_building' = ANY (v_kind) THEN
		INSERT INTO rejections (source_kind, source_id, ext_id,
		    category, task_type, reason)
		SELECT u.skind, u.src, u.ext, left(u.cat, 64), u.tt, 'outside'
		FROM unnest(v_kind, p_kind, p_source, p_ext, p_cat, p_tt)
		    AS u(kind, skind, src, ext, cat, tt)
		WHERE u.kind IN ('outside', 'unknown_code',
		    'unknown_building');
	END IF;

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

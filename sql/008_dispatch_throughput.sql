-- 008_dispatch_throughput.sql - dispatch that keeps up with a thousand
-- worker-routed incidents a second from one department.
--
-- What limited it (measured under scripts/bench dispatch):
--
--   * Every event-bearing transaction of a department queues on that
--     department's department_seq row, which gridd_emit_events_to locks and
--     which stays locked through the commit's WAL flush (that is what keeps
--     dept_seq gap-free and visible in order).  The feed wrote its events
--     first and then, at commit, offered its new incidents with the row
--     already held; dispatch statements wrote the events of each incident
--     as they went.  So the choice of a worker for every incident ran under
--     the department's lock, and the feed, the dispatchers and the workers'
--     answers took turns.  Here the lock is taken last everywhere: the feed
--     offers its incidents before it writes any event, and dispatch
--     statements gather their events and write them once, at their end.
--
--   * The choice itself cost 2-3 ms: the backup-cell branch read a GIN
--     index whose pending list every workers update grew (no worker of the
--     bench has backup cells, yet each was in the index), and the geodesic
--     distance was measured to every worker of the leading group (about a
--     hundred in a cell).  Now the index holds only workers with backup
--     cells, the leading group is ranked by a planar approximation first and
--     only the candidates the approximation cannot tell apart are measured
--     on the spheroid, and the assignments of the incident are read once.
--
-- Contracts are unchanged: the same functions, rows, events (same order,
-- same numbers) and choices as 004_dispatch.sql describes.
--
-- The migration runner wraps this file in one transaction.

-- Indexes ----------------------------------------------------------------------

-- Tier 2 of the fast pass looks up on-duty workers by backup cell.  Most
-- workers have none; an index over every worker takes an entry (and a
-- pending-list insertion) for each update of any worker row, and a scan
-- then reads the whole pending list.
DROP INDEX workers_backup_idx;
CREATE INDEX workers_backup_on_duty_idx ON workers USING gin (backup_cells)
	WITH (fastupdate = off)
	WHERE on_duty AND backup_cells <> '{}';

-- An offer and an answer that changes a worker's load update its row
-- (open_count, no indexed column): room on the page keeps that a HOT update,
-- with no new index entries.
ALTER TABLE workers SET (fillfactor = 80);

-- Choosing a worker --------------------------------------------------------------

-- A planar distance in metres between two WGS-84 points (equirectangular at
-- their mean latitude, on the mean Earth radius).  For points under 100 km
-- apart and within 80 degrees of the equator it is within 1% of the
-- geodesic on the spheroid; gridd_dispatch_choose uses it only to decide
-- which candidates to measure exactly, with margins that cover that error.
CREATE FUNCTION gridd_planar_m(p_lon1 double precision,
    p_lat1 double precision, p_lon2 double precision,
    p_lat2 double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
	SELECT 6371008.8 * radians(sqrt(((p_lon2 - p_lon1) *
	    cos(radians((p_lat1 + p_lat2) / 2))) ^ 2 + (p_lat2 - p_lat1) ^ 2))
$$;

-- As 004_dispatch.sql's gridd_dispatch_choose (same candidates, order,
-- reasons, shortfalls, rows and events), cheaper:
--
--   * one read of the incident's assignments answers "is there a live
--     offer", "how many offers this round" and "who was asked";
--   * tier 2 of the fast pass reads workers_backup_on_duty_idx;
--   * in the leading (tier, load) group, the geodesic distance is measured
--     only for candidates whose planar distance is within 5% (plus a metre)
--     of the smallest one, or which the planar figure does not cover (over
--     100 km, beyond 80 degrees of latitude).  The others are farther than
--     every measured one for certain: they follow them, ranked by the planar
--     figure, which is enough to explain a choice ('nearest': the runner-up
--     is farther).  Only if one of them would have to be chosen (every
--     measured candidate busy or full) is the pass run again with every
--     distance measured, so that the choice is the exact one.
CREATE OR REPLACE FUNCTION gridd_dispatch_choose(p_incident bigint,
    p_timeout_s integer, p_max_offers integer, p_max_age_s integer,
    p_retry_s integer, p_origin text, p_mode text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	inc incidents%ROWTYPE;
	c record;
	v_nb text[];
	v_asked text[];
	v_live boolean;
	v_round integer;
	v_scope integer := 0;
	v_on integer := 0;
	v_contended boolean := false;
	v_chosen text;
	v_tier integer;
	v_open integer;
	v_dist double precision;
	v_reason text;
	v_short text;
	v_aid bigint;
	v_now_open integer;
	v_max integer;
	v_since timestamptz := now() - make_interval(secs => p_max_age_s);
	v_lon double precision;
	v_lat double precision;
	v_exact boolean := false;
	v_redo boolean;
BEGIN
	SELECT * INTO inc FROM incidents WHERE incident_id = p_incident;
	IF NOT FOUND OR inc.route <> 'worker' OR
	    inc.status NOT IN ('new', 'dispatched', 'escalated') THEN
		RETURN;
	END IF;
	-- A fresh snapshot under the incident's lock: every transaction that
	-- makes an assignment holds this lock, so this sees them all.
	SELECT coalesce(bool_or(a.state IN ('offered', 'accepted',
		'in_progress')), false),
	    count(*) FILTER (WHERE a.offered_at >= inc.round_at),
	    coalesce(array_agg(DISTINCT a.worker_id) FILTER (WHERE a.state IN
		('declined', 'expired')), '{}')
	INTO v_live, v_round, v_asked
	FROM assignments a WHERE a.incident_id = p_incident;
	IF v_live THEN
		UPDATE incidents SET next_try_at = 'infinity'
		WHERE incident_id = p_incident;
		RETURN;
	END IF;

	IF v_round >= p_max_offers THEN
		v_short := 'max_offers';
	ELSIF inc.cell_id IS NULL THEN
		v_short := 'no_workers';
	ELSE
		IF inc.geom IS NOT NULL THEN
			v_lon := ST_X(inc.geom);
			v_lat := ST_Y(inc.geom);
		END IF;

		-- The fast pass; a second time with every distance measured
		-- when the first would have to choose an unmeasured candidate.
		LOOP
			v_redo := false;
			FOR c IN
				WITH e AS (
					SELECT w.worker_id, 1 AS tier,
					    w.open_count AS load, w.last_lon,
					    w.last_lat, w.last_checkin_at
					FROM workers w
					WHERE w.community_id =
					    inc.community_id
					    AND w.primary_cell = inc.cell_id
					    AND w.on_duty
					    AND w.open_count < w.max_open
					    AND w.worker_id <> ALL (v_asked)
					UNION ALL
					SELECT w.worker_id, 2, w.open_count,
					    w.last_lon, w.last_lat,
					    w.last_checkin_at
					FROM workers w
					WHERE w.backup_cells @>
					    ARRAY[inc.cell_id]
					    AND w.backup_cells <> '{}'
					    AND w.community_id =
						inc.community_id
					    AND w.primary_cell IS DISTINCT FROM
						inc.cell_id
					    AND w.on_duty
					    AND w.open_count < w.max_open
					    AND w.worker_id <> ALL (v_asked)
				), lead AS (
					SELECT e.tier, e.load FROM e
					ORDER BY e.tier, e.load LIMIT 1
				), g AS (
					SELECT e.worker_id, e.tier, e.load,
					    e.last_lon, e.last_lat,
					    (e.tier = l.tier AND e.load = l.load)
						AS leading,
					    CASE WHEN e.tier = l.tier
						AND e.load = l.load
						AND v_lon IS NOT NULL
						AND e.last_lon IS NOT NULL
						AND e.last_lat IS NOT NULL
						AND e.last_checkin_at >= v_since
					    THEN gridd_planar_m(v_lon, v_lat,
						e.last_lon, e.last_lat)
					    END AS planar
					FROM e CROSS JOIN lead l
				), m AS (
					SELECT g.*, min(g.planar) OVER () AS best
					FROM g
				), x AS (
					SELECT m.*, m.planar IS NOT NULL AND
					    (v_exact
					    OR m.planar <= m.best * 1.05 + 1
					    OR m.planar > 100000
					    OR abs(v_lat) > 80
					    OR abs(m.last_lat) > 80) AS measured
					FROM m
				), pos AS (
					-- Once per position: workers who
					-- checked in at one spot are equally
					-- far.
					SELECT p.last_lon, p.last_lat,
					    ST_Distance(inc.geom::geography,
						ST_SetSRID(ST_MakePoint(
						p.last_lon, p.last_lat),
						4326)::geography) AS dist
					FROM (SELECT DISTINCT x.last_lon,
					    x.last_lat FROM x
					    WHERE x.measured) p
				)
				SELECT x.worker_id, x.tier, x.load, x.leading,
				    pos.dist,
				    CASE WHEN NOT x.measured THEN x.planar END
					AS rough
				FROM x
				LEFT JOIN pos ON x.measured
				    AND pos.last_lon = x.last_lon
				    AND pos.last_lat = x.last_lat
				ORDER BY x.tier, x.load, 5 NULLS LAST,
				    6 NULLS LAST, x.worker_id COLLATE "C"
			LOOP
				IF v_chosen IS NOT NULL THEN
					-- The runner-up explains the choice;
					-- an unmeasured one is farther.
					IF c.tier = v_tier THEN
						IF c.load > v_open THEN
							v_reason :=
							    'least_loaded';
						ELSIF v_dist IS NOT NULL AND
						    (c.dist IS NULL OR
						    c.dist > v_dist) THEN
							v_reason := 'nearest';
						END IF;
					END IF;
					EXIT;
				END IF;
				IF NOT c.leading THEN
					EXIT;	-- the leading group was busy
				END IF;
				IF c.rough IS NOT NULL THEN
					-- Its rank among the unmeasured is
					-- only approximate.
					v_redo := true;
					EXIT;
				END IF;
				SELECT w.max_open, w.open_count
				INTO v_max, v_now_open
				FROM workers w
				WHERE w.worker_id = c.worker_id AND w.on_duty
				FOR NO KEY UPDATE SKIP LOCKED;
				IF NOT FOUND THEN
					-- Held by another transaction (an
					-- offer, a check-in, an answer that
					-- changes its load): the item is
					-- retried shortly rather than given
					-- to a worse candidate.  Not at a
					-- commit, which must not leave the
					-- push's incidents behind: there the
					-- next candidate takes it, as in the
					-- full pass.
					IF p_mode <> 'commit' AND EXISTS (
					    SELECT 1 FROM workers w
					    WHERE w.worker_id = c.worker_id
					    AND w.on_duty) THEN
						v_contended := true;
						EXIT;
					END IF;
					CONTINUE;
				END IF;
				IF v_now_open >= v_max THEN
					CONTINUE;
				END IF;
				v_chosen := c.worker_id;
				v_tier := c.tier;
				v_open := v_now_open;
				v_dist := c.dist;
			END LOOP;
			EXIT WHEN NOT v_redo;
			v_exact := true;
		END LOOP;

		IF v_chosen IS NULL AND NOT v_contended THEN
			-- The full pass.
			v_nb := gridd_neighbour_cells(inc.cell_id);
			FOR c IN
				WITH cand AS (
					SELECT w.worker_id, w.on_duty,
					    w.max_open,
					    CASE WHEN w.primary_cell =
						inc.cell_id THEN 1
						WHEN inc.cell_id =
						ANY (w.backup_cells)
						THEN 2 ELSE 3 END AS tier,
					    w.open_count AS load,
					    CASE WHEN inc.geom IS NOT NULL
						AND w.last_lon IS NOT NULL
						AND w.last_lat IS NOT NULL
						AND w.last_checkin_at >=
						    v_since
					    THEN ST_Distance(
						inc.geom::geography,
						ST_SetSRID(ST_MakePoint(
						w.last_lon, w.last_lat),
						4326)::geography)
					    END AS dist
					FROM workers w
					WHERE w.community_id =
					    inc.community_id
					    AND (w.primary_cell = inc.cell_id
						OR inc.cell_id =
						ANY (w.backup_cells)
						OR w.primary_cell =
						ANY (v_nb))
					    AND w.worker_id <> ALL (v_asked)
				)
				SELECT cand.*, (on_duty AND load < max_open)
				    AS eligible
				FROM cand
				ORDER BY (on_duty AND load < max_open) DESC,
				    tier, load, dist NULLS LAST,
				    worker_id COLLATE "C"
			LOOP
				v_scope := v_scope + 1;
				IF c.on_duty THEN
					v_on := v_on + 1;
				END IF;
				IF NOT c.eligible THEN
					CONTINUE;
				END IF;
				IF v_chosen IS NOT NULL THEN
					IF v_reason IS NULL AND
					    c.tier = v_tier THEN
						IF c.load > v_open THEN
							v_reason :=
							    'least_loaded';
						ELSIF v_dist IS NOT NULL AND
						    (c.dist IS NULL OR
						    c.dist > v_dist) THEN
							v_reason := 'nearest';
						END IF;
					END IF;
					EXIT;
				END IF;
				SELECT w.max_open, w.open_count
				INTO v_max, v_now_open FROM workers w
				WHERE w.worker_id = c.worker_id AND w.on_duty
				FOR NO KEY UPDATE SKIP LOCKED;
				IF NOT FOUND THEN
					-- Locked by another transaction (or
					-- just went off duty): try again
					-- shortly rather than wait or give
					-- up on this worker.
					v_contended := v_contended OR EXISTS (
					    SELECT 1 FROM workers w
					    WHERE w.worker_id = c.worker_id
					    AND w.on_duty);
					CONTINUE;
				END IF;
				IF v_now_open >= v_max THEN
					CONTINUE;
				END IF;
				v_chosen := c.worker_id;
				v_tier := c.tier;
				v_open := v_now_open;
				v_dist := c.dist;
			END LOOP;
		END IF;

		IF v_chosen IS NOT NULL THEN
			v_reason := coalesce(v_reason, CASE v_tier
			    WHEN 1 THEN 'primary_cell'
			    WHEN 2 THEN 'backup_cell'
			    ELSE 'neighbour_cell' END);
			-- workers.open_count follows (gridd_open_count_tg).
			INSERT INTO assignments (incident_id, worker_id,
			    community_id, reason, expires_at)
			VALUES (p_incident, v_chosen, inc.community_id,
			    v_reason, now() + make_interval(secs => p_timeout_s))
			RETURNING assignment_id INTO v_aid;
			INSERT INTO timers (kind, ref_id, community_id, fire_at)
			VALUES ('offer_expiry', v_aid, inc.community_id,
			    now() + make_interval(secs => p_timeout_s));
			UPDATE incidents SET status = 'dispatched',
			    offers = offers + 1, next_try_at = 'infinity',
			    updated_at = now()
			WHERE incident_id = p_incident;
			IF p_mode = 'emit' THEN
				PERFORM gridd_dispatch_emit1(p_incident,
				    'dispatched', v_chosen,
				    'offered: ' || v_reason);
			END IF;
			PERFORM gridd_offer_notify(v_aid, p_origin,
			    CASE WHEN p_mode = 'commit' THEN 'commit'
				ELSE 'statement' END);
			RETURN QUERY SELECT * FROM gridd_offer_row('offered',
			    v_aid);
			RETURN;
		END IF;
		IF v_contended THEN
			UPDATE incidents SET next_try_at = now()
			WHERE incident_id = p_incident;
			RETURN NEXT gridd_drow('retry', 'worker busy', NULL,
			    p_incident, NULL);
			RETURN;
		END IF;
		v_short := CASE WHEN v_scope = 0 THEN 'no_workers'
		    WHEN v_on = 0 THEN 'all_off_duty'
		    ELSE 'all_at_capacity' END;
	END IF;

	IF inc.status = 'escalated' THEN
		-- Still nobody: told once already; wait for the next retry.
		UPDATE incidents SET shortfall = v_short,
		    next_try_at = now() + make_interval(secs => p_retry_s)
		WHERE incident_id = p_incident;
		RETURN;
	END IF;
	UPDATE incidents SET status = 'escalated', shortfall = v_short,
	    escalated_at = now(), round_at = now(),
	    next_try_at = now() + make_interval(secs => p_retry_s),
	    updated_at = now()
	WHERE incident_id = p_incident;
	IF p_mode = 'commit' THEN
		-- The origin counts it: "escalated INCIDENT SHORTFALL ORIGIN".
		PERFORM pg_notify('gridd_offers', 'escalated ' ||
		    p_incident::text || ' ' || v_short || ' ' || p_origin);
	ELSIF p_mode = 'emit' THEN
		PERFORM gridd_dispatch_emit1(p_incident, 'escalated', NULL,
		    'no worker: ' || v_short);
	END IF;
	RETURN NEXT gridd_drow('escalated', v_short, NULL, p_incident, NULL);
END
$$;

-- Dispatch statements: events once, at the end ----------------------------------

-- As gridd_dispatch_guarded, with the events left to the caller: the rows
-- say what happened ('offered', 'escalated'), and the caller writes the
-- events of all its items in one call at its end, so that the department's
-- sequence row is locked for that call and the commit only, not while
-- workers are chosen.
CREATE FUNCTION gridd_dispatch_guarded_collect(p_incident bigint,
    p_timeout_s integer, p_max_offers integer, p_max_age_s integer,
    p_retry_s integer, p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	v_rows gridd_dispatch_row[];
BEGIN
	BEGIN
		SELECT array_agg(r) INTO v_rows
		FROM gridd_dispatch_choose(p_incident, p_timeout_s,
		    p_max_offers, p_max_age_s, p_retry_s, p_origin,
		    'collect') r;
	EXCEPTION WHEN OTHERS THEN
		RAISE WARNING 'gridd dispatch of incident % failed: % (%)',
		    p_incident, SQLERRM, SQLSTATE;
		UPDATE incidents SET next_try_at = now() +
		    make_interval(secs => least(p_retry_s, 5))
		WHERE incident_id = p_incident;
		v_rows := ARRAY[gridd_drow('retry', SQLSTATE, NULL,
		    p_incident, NULL)];
	END;
	RETURN QUERY SELECT * FROM unnest(v_rows);
END
$$;

-- Writes the events of the 'offered' and 'escalated' rows of a collected
-- dispatch, in row order, in one call (gridd_dispatch_emit).
CREATE FUNCTION gridd_dispatch_emit_rows(p_rows gridd_dispatch_row[])
RETURNS void
LANGUAGE sql
AS $$
	SELECT gridd_dispatch_emit(
	    array_agg(r.incident_id ORDER BY r.ordinality),
	    array_agg(CASE r.outcome WHEN 'offered' THEN 'dispatched'
		ELSE 'escalated' END ORDER BY r.ordinality),
	    array_agg(CASE WHEN r.outcome = 'offered' THEN r.worker_id END
		ORDER BY r.ordinality),
	    array_agg(CASE r.outcome WHEN 'offered' THEN 'offered: ' || r.reason
		ELSE 'no worker: ' || r.detail END ORDER BY r.ordinality))
	FROM unnest(p_rows) WITH ORDINALITY AS r
	WHERE r.outcome IN ('offered', 'escalated')
$$;

CREATE OR REPLACE FUNCTION gridd_dispatch_incidents(p_ids bigint[],
    p_timeout_s integer, p_max_offers integer, p_max_age_s integer,
    p_retry_s integer, p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	v_id bigint;
	v_rows gridd_dispatch_row[] := '{}';
BEGIN
	FOR v_id IN SELECT i.incident_id FROM incidents i
	    WHERE i.incident_id = ANY (p_ids) AND i.route = 'worker'
	    AND i.status IN ('new', 'dispatched', 'escalated')
	    AND (i.next_try_at IS NULL OR i.next_try_at <> 'infinity')
	    ORDER BY i.incident_id
	    FOR NO KEY UPDATE SKIP LOCKED
	LOOP
		v_rows := v_rows || ARRAY(SELECT r FROM
		    gridd_dispatch_guarded_collect(v_id, p_timeout_s,
		    p_max_offers, p_max_age_s, p_retry_s, p_origin) r);
	END LOOP;
	PERFORM gridd_dispatch_emit_rows(v_rows);
	RETURN QUERY SELECT * FROM unnest(v_rows);
END
$$;

CREATE OR REPLACE FUNCTION gridd_dispatch_scan(p_limit integer,
    p_timeout_s integer, p_max_offers integer, p_max_age_s integer,
    p_retry_s integer, p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	v_id bigint;
	v_n integer := 0;
	v_rows gridd_dispatch_row[] := '{}';
BEGIN
	PERFORM gridd_dispatch_publish(p_limit, p_timeout_s, p_max_offers,
	    p_max_age_s, p_retry_s, p_origin);
	FOR v_id IN SELECT i.incident_id FROM incidents i
	    WHERE i.route = 'worker'
	    AND i.status IN ('new', 'dispatched', 'escalated')
	    AND (i.next_try_at IS NULL OR i.next_try_at <= now())
	    ORDER BY i.next_try_at NULLS FIRST, i.incident_id
	    LIMIT p_limit
	    FOR NO KEY UPDATE SKIP LOCKED
	LOOP
		v_n := v_n + 1;
		v_rows := v_rows || ARRAY(SELECT r FROM
		    gridd_dispatch_guarded_collect(v_id, p_timeout_s,
		    p_max_offers, p_max_age_s, p_retry_s, p_origin) r);
	END LOOP;
	PERFORM gridd_dispatch_emit_rows(v_rows);
	RETURN QUERY SELECT * FROM unnest(v_rows);
	IF v_n >= p_limit THEN
		RETURN NEXT gridd_drow('more', NULL, v_n, NULL, NULL);
	END IF;
END
$$;

-- The feed offers its incidents before it writes events ------------------------

-- What gridd_dispatch_at_commit_tg does for the incidents noted in this
-- transaction (gridd.dispatch_at_commit), without writing the events: they
-- come back as arrays for gridd_dispatch_emit.  The note is cleared, so the
-- commit trigger finds nothing left.  A failure undoes the offers (one
-- subtransaction) and leaves the incidents to NOTIFY gridd_dispatch.
CREATE FUNCTION gridd_dispatch_noted(OUT o_inc bigint[], OUT o_st text[],
    OUT o_wk text[], OUT o_nt text[])
LANGUAGE plpgsql
AS $$
DECLARE
	v_ids text := current_setting('gridd.dispatch_at_commit', true);
	o dispatch_origins%ROWTYPE;
	r gridd_dispatch_row;
	v_id bigint;
BEGIN
	o_inc := '{}';
	o_st := '{}';
	o_wk := '{}';
	o_nt := '{}';
	IF coalesce(v_ids, '') = '' THEN
		RETURN;
	END IF;
	PERFORM set_config('gridd.dispatch_at_commit', '', true);
	SELECT * INTO o FROM dispatch_origins
	WHERE app_name = current_setting('application_name');
	IF NOT FOUND THEN
		RETURN;
	END IF;
	BEGIN
		FOR v_id IN SELECT i.incident_id FROM incidents i
		    WHERE i.incident_id = ANY (string_to_array(v_ids,
			',')::bigint[])
		    AND i.route = 'worker' AND i.status = 'new'
		    ORDER BY i.incident_id LIMIT o.batch
		LOOP
			FOR r IN SELECT * FROM gridd_dispatch_choose(v_id,
			    o.offer_timeout_s, o.max_offers,
			    o.checkin_max_age_s, o.retry_s, o.instance, 'commit')
			LOOP
				IF r.outcome = 'offered' THEN
					o_inc := o_inc || r.incident_id;
					o_st := o_st || 'dispatched'::text;
					o_wk := o_wk || r.worker_id;
					o_nt := o_nt || ('offered: ' ||
					    r.reason);
				ELSIF r.outcome = 'escalated' THEN
					o_inc := o_inc || r.incident_id;
					o_st := o_st || 'escalated'::text;
					o_wk := o_wk || NULL::text;
					o_nt := o_nt || ('no worker: ' ||
					    r.detail);
				END IF;
			END LOOP;
		END LOOP;
	EXCEPTION WHEN OTHERS THEN
		RAISE WARNING 'gridd dispatch at commit failed: % (%)',
		    SQLERRM, SQLSTATE;
		o_inc := '{}';
		o_st := '{}';
		o_wk := '{}';
		o_nt := '{}';
	END;
END
$$;

-- gridd_feed_push as in 003_feed.sql, except that the new incidents for
-- workers are offered before the events are written (see the top of this
-- file); the deferred trigger then finds them done.
CREATE OR REPLACE FUNCTION gridd_feed_push(p_radius_m double precision,
    p_window_s integer, p_gridv bigint,
    p_kind text[], p_source text[], p_ext text[], p_cat text[], p_tt text[],
    p_list text[], p_matter text[], p_route text[], p_sla integer[],
    p_note text[], p_sev integer[], p_occ bigint[],
    p_lon double precision[], p_lat double precision[],
    p_comm text[], p_cell text[], p_code text[], p_bldg text[],
    p_addr text[], p_desc text[],
    p_rej_kind text[], p_rej_source text[], p_rej_ext text[],
    p_rej_cat text[], p_rej_tt text[], p_rej_reason text[])
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
	v_dp record;		-- the offers made here (gridd_dispatch_noted)
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

	-- Items the daemon refused.
	INSERT INTO rejections (source_kind, source_id, ext_id, category,
	    task_type, reason)
	SELECT u.kind, u.src, left(coalesce(u.ext, ''), 128),
	    left(coalesce(u.cat, ''), 64), u.tt, u.reason
	FROM unnest(p_rej_kind, p_rej_source, p_rej_ext, p_rej_cat, p_rej_tt,
	    p_rej_reason) AS u(kind, src, ext, cat, tt, reason)
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
	-- that pushed the item; departments of later items that joined it
	-- are added below, as if they had come one after the other.
	INSERT INTO incidents (incident_id, community_id, cell_id, task_type,
	    list, matter, route, status, owner_department, funder_department,
	    departments, severity, summary, description, address, geom,
	    occurred_at, deadline, located_by)
	SELECT u.inc, u.comm, u.cell, u.tt, u.list, u.matter, u.route,
	    CASE u.route WHEN 'worker' THEN 'new' ELSE 'referred' END,
	    CASE WHEN u.skind = 'department' THEN u.src END,
	    CASE WHEN u.skind = 'department' AND u.list = 'assist'
		THEN u.src END,
	    CASE WHEN u.skind = 'department' THEN ARRAY[u.src]
		ELSE '{}'::text[] END,
	    u.sev,
	    left(CASE WHEN u.descr = '' THEN u.tt ELSE u.descr END, 200),
	    u.descr, u.addr, u.geom, to_timestamp(u.occ / 1000.0),
	    CASE WHEN u.sla > 0 AND u.route <> 'referral'
		THEN now() + make_interval(mins => u.sla) END,
	    u.how
	FROM unnest(v_kind, v_inc, v_icomm, v_icell, v_geom, v_how, p_kind,
	    p_source, p_tt, p_list, p_matter, p_route, p_sla, p_sev, p_occ,
	    p_addr, p_desc)
	    AS u(kind, inc, comm, cell, geom, how, skind, src, tt, list,
	    matter, route, sla, sev, occ, addr, descr)
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
		SELECT u.inc, u.src AS dept,
		    CASE u.route WHEN 'worker' THEN 'new'
			ELSE 'referred' END AS status,
		    u.note, u.ext, u.ord::integer AS first
		FROM unnest(v_kind, v_inc, p_kind, p_source, p_route, p_note,
		    p_ext) WITH ORDINALITY
		    AS u(kind, inc, skind, src, route, note, ext, ord)
		WHERE u.kind = 'new' AND u.skind = 'department'
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
	-- written (what gridd_dispatch_at_commit_tg would do at commit): the
	-- departments' sequence rows are locked by the events below, and held
	-- to the commit, so no worker is chosen while they are held.
	SELECT * INTO v_dp FROM gridd_dispatch_noted();

	-- Events last: the departments' sequence rows are locked after every
	-- incident row this transaction changes.  Each new incident's first
	-- state comes before its offer, as at commit.
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

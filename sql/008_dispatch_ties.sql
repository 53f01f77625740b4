-- 008_dispatch_ties.sql - offers under load: a held worker no longer stalls
-- an incident that an equal candidate can take, the nearest-position
-- distance is measured once, and the offers made inside a push have their
-- own limits (push_offer_max, and a time budget) instead of dispatch_batch.
--
-- The migration runner wraps this file in one transaction.
--
-- Why: under scripts/bench dispatch (10,000 workers, 1,000 incidents/s),
-- most new incidents were offered after the push's commit by the
-- dispatcher, because dispatch_batch (32) also capped the offers made in a
-- group commit of hundreds; there a candidate held by another transaction
-- sent the incident back to wait 50 ms, again and again while the cell's
-- workers ranked equal.  The figures before and after are in the README
-- and bench/results.md.

-- Worker indexes that do not depend on who is on duty.  Analyzed while a
-- city's workers are off duty (at night, or before a shift), workers says
-- that none is on duty, and an index over on-duty workers only is then,
-- for the planner, an empty one: the cheapest way to any row it might
-- hold.  It took workers_primary_idx (WHERE on_duty) for the lock of one
-- worker by id (instead of the primary key) and for tier 2's backup-cell
-- search, reading every on-duty worker for each: 5 ms per lock, and the
-- dispatch bench fell from about 2,300 to 550 incidents acknowledged in
-- its 5 s.  The same indexes without that predicate are never "empty".
-- The by-cell index also serves what workers_community_idx did (its
-- leading column), so that one goes; the backup-cell index still holds
-- only the workers that have backup cells.
DROP INDEX workers_primary_idx;
DROP INDEX workers_community_idx;
CREATE INDEX workers_cell_idx ON workers (community_id, primary_cell);
DROP INDEX workers_backup_on_duty_idx;
CREATE INDEX workers_backup_cells_idx ON workers USING gin (backup_cells)
	WITH (fastupdate = off) WHERE backup_cells <> '{}';

-- Why the chosen worker rather than the runner-up, when that is a matter
-- of load or distance within one tier (NULL otherwise: the tier's own
-- reason stands).  A runner-up with no measured distance is farther.
CREATE FUNCTION gridd_dispatch_runner_up(p_tier integer, p_load integer,
    p_dist double precision, p_next_tier integer, p_next_load integer,
    p_next_dist double precision)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
	SELECT CASE WHEN p_next_tier <> p_tier THEN NULL
	    WHEN p_next_load > p_load THEN 'least_loaded'
	    WHEN p_dist IS NOT NULL AND (p_next_dist IS NULL OR
		p_next_dist > p_dist) THEN 'nearest'
	    END
$$;

-- As in 004_dispatch.sql, with two changes (and the runner-up's reason in
-- gridd_dispatch_runner_up, one copy for both passes):
--
--   * Fast pass, outside a push: a candidate whose row another transaction
--     holds is passed over when the next one ranks equal to it (same tier,
--     load and measured distance: the order between them is only the
--     worker id).  Only when the next one ranks lower does the incident
--     wait for the held one ('retry'), as before.  Before, every equal
--     candidate was left behind the first held one.  "Equal" is judged on
--     this snapshot: a worker held by an answer that will lower its load,
--     or by a check-in that will move it nearer, may have been about to
--     rank first; it is passed over all the same, as it is in a push.
--     Equal candidates found full after a held one are skipped and the
--     pass goes on, where 004 stopped at the held one.
--   * The distances of the candidates' positions are measured in a
--     materialized step, once per position.  Inlined, the planner had
--     moved ST_Distance into the sort key, once per candidate.
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
	v_held boolean;
	v_held_tier integer;
	v_held_load integer;
	v_held_dist double precision;
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
			v_held := false;
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
				), pos AS MATERIALIZED (
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
					v_reason := gridd_dispatch_runner_up(
					    v_tier, v_open, v_dist, c.tier,
					    c.load, c.dist);
					EXIT;
				END IF;
				IF v_held AND NOT (c.tier = v_held_tier AND
				    c.load = v_held_load AND c.rough IS NULL AND
				    c.dist IS NOT DISTINCT FROM v_held_dist) THEN
					-- A better candidate is held: wait
					-- for it rather than take this one.
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
					-- to a worse candidate.  Not in a
					-- push ('commit' mode), which must
					-- not leave its incidents behind:
					-- there the next candidate takes it,
					-- as in the full pass.
					IF p_mode <> 'commit' AND NOT v_held
					    AND EXISTS (
					    SELECT 1 FROM workers w
					    WHERE w.worker_id = c.worker_id
					    AND w.on_duty) THEN
						v_held := true;
						v_held_tier := c.tier;
						v_held_load := c.load;
						v_held_dist := c.dist;
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
		v_contended := v_held AND v_chosen IS NULL;

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
					-- Only reached with nothing chosen by
					-- the fast pass: no reason yet.
					v_reason := gridd_dispatch_runner_up(
					    v_tier, v_open, v_dist, c.tier,
					    c.load, c.dist);
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

-- As in 004_dispatch.sql, but the incidents are looked up by id through
-- the primary key whatever the statistics say.  After a quiet spell, when
-- no incident is waiting for a worker, the statistics make the partial
-- incidents_dispatch_due_idx look empty, and while it is still small (the
-- first incidents of a storm) the planner chose it for any query that
-- implies its predicate (route = 'worker' and an open status), reading it
-- whole for each lookup by id; a plan cached then keeps doing so as the
-- storm fills it.  "i.route || ''" is the same condition, from which that
-- predicate cannot be proved.  (The workers indexes above had the same
-- trap.)
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
	    WHERE i.incident_id = ANY (p_ids) AND i.route || '' = 'worker'
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

-- As in 004_dispatch.sql, with a time budget: no further offer is made
-- once the push's statement has run for half of its statement_timeout (the
-- daemon sets one for every session and transaction).  The incidents left
-- are offered right after the commit (NOTIFY gridd_dispatch), as those
-- beyond push_offer_max are.  Without it, offers that a loaded database
-- makes slowly could push the statement past its timeout, and the whole
-- group commit, with every department's items in it, would be refused.
CREATE OR REPLACE FUNCTION gridd_dispatch_pushed(p_ids bigint[],
    OUT o_inc bigint[], OUT o_st text[], OUT o_wk text[], OUT o_nt text[])
LANGUAGE plpgsql
AS $$
DECLARE
	o dispatch_origins%ROWTYPE;
	r gridd_dispatch_row;
	v_id bigint;
	v_budget interval;
BEGIN
	o_inc := '{}';
	o_st := '{}';
	o_wk := '{}';
	o_nt := '{}';
	IF coalesce(cardinality(p_ids), 0) = 0 THEN
		RETURN;
	END IF;
	SELECT * INTO o FROM dispatch_origins
	WHERE app_name = current_setting('application_name');
	IF NOT FOUND THEN
		RETURN;
	END IF;
	v_budget := current_setting('statement_timeout')::interval / 2;
	IF v_budget <= interval '0' THEN
		v_budget := NULL;	-- no timeout, no budget
	END IF;
	BEGIN
		-- By id: "route || ''" keeps incidents_dispatch_due_idx
		-- out of the plan (see gridd_dispatch_incidents below).
		FOR v_id IN SELECT i.incident_id FROM incidents i
		    WHERE i.incident_id = ANY (p_ids)
		    AND i.route || '' = 'worker' AND i.status = 'new'
		    ORDER BY i.incident_id LIMIT o.batch
		LOOP
			EXIT WHEN clock_timestamp() - statement_timestamp() >
			    v_budget;
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
		RAISE WARNING 'gridd dispatch at push failed: % (%)',
		    SQLERRM, SQLSTATE;
		o_inc := '{}';
		o_st := '{}';
		o_wk := '{}';
		o_nt := '{}';
	END;
END
$$;

-- The limit on the offers made in a push's own transaction is now the
-- [dispatch] push_offer_max key, published in dispatch_origins.batch with
-- each scan (gridd_dispatch_pushed reads it there).  dispatch_batch still
-- bounds the scan's own statements.
COMMENT ON COLUMN dispatch_origins.batch IS
    'push_offer_max of the process: new incidents offered inside one push';

-- Whatever is due: new incidents whose NOTIFY was missed or that a push
-- left over, escalated ones up for a retry, items that failed or met a busy
-- worker.  p_push_max is published for gridd_dispatch_pushed.
CREATE FUNCTION gridd_dispatch_scan(p_limit integer, p_push_max integer,
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
	PERFORM gridd_dispatch_publish(p_push_max, p_timeout_s, p_max_offers,
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

-- The scan of 004, for a process of the previous version still running
-- beside upgraded ones: its limit stays its push limit, as it was.
CREATE OR REPLACE FUNCTION gridd_dispatch_scan(p_limit integer,
    p_timeout_s integer, p_max_offers integer, p_max_age_s integer,
    p_retry_s integer, p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE sql
AS $$
	SELECT * FROM gridd_dispatch_scan(p_limit, p_limit, p_timeout_s,
	    p_max_offers, p_max_age_s, p_retry_s, p_origin)
$$;

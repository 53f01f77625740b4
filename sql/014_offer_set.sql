-- 014_offer_set.sql - the new incidents of a push are offered to workers
-- by a few statements for all of them, instead of five for each.
--
-- The migration runner wraps this file in one transaction.
--
-- Why: a department that pushes its matters from one connection applies
-- its pushes in order, one transaction after another, and every new
-- incident for a worker was offered inside that transaction by its own
-- call of gridd_dispatch_choose: 1.67 ms per offer in a `scripts/bench
-- dispatch` run with pg_stat_statements (track = all): candidates 0.66 ms,
-- the assignment and the worker's count 0.35 ms, the incident's row
-- 0.28 ms, the rest in the lock, the timer and the NOTIFY.  At the
-- scenario's 460 offers/s that kept the department's transactions busy
-- 0.96-0.99 of every second, so a slower minute left its pushes behind.
--
-- Now gridd_dispatch_pushed first ranks the candidates of all of a push's
-- new incidents in one statement (the set pass), with the fast pass's
-- rules (sql/008): the on-duty workers of the incident's cell (tier 1) and
-- those whose backup cells hold it (tier 2), with room; ranked by tier,
-- load, geodesic distance from a fresh check-in (measured for the leading
-- group's candidates within 5% of the nearest planar figure, as there),
-- worker id; the runner-up gives the reason.  It then takes the incidents
-- in id order, each its first candidate that an earlier one has not
-- taken, as one call after another would (a taken worker's load is one
-- more, so the rest of the leading group comes first), locks the chosen
-- workers with SKIP LOCKED, reads them again under the lock, and writes
-- the offers with one statement per table.
--
-- The set pass decides a prefix of the push's incidents, in id order; it
-- stops at the first one it cannot decide for certain, and that one and
-- every later one go to gridd_dispatch_choose, one call each in id order,
-- after its offers, as before.  It stops at an incident
--   * with no candidate in tiers 1 and 2 (neighbour cells, shortfalls and
--     escalation are the single choice's), no cell, or assignments;
--   * whose first ten candidates are all taken, or whose choice or
--     runner-up is not certain from the snapshot's ranking (below);
--   * whose worker is held by another transaction, has gone off duty or
--     is full under the lock (the single choice passes over it to the
--     next candidate, as a push always did).
-- So every incident gets the worker and the reason that one call per
-- incident in id order would give on the same snapshot, and the offers,
-- timers, events and NOTIFYs (in incident order) are those it makes.  One
-- difference remains: the set pass ranks every incident on one snapshot,
-- taken at its statement, where each single choice took its own; a load
-- that another transaction changes in between is seen a little later.
-- Only the chosen workers are read again under their lock: a runner-up's
-- load (which explains a choice) is the snapshot's.

-- The gridd_offers NOTIFYs of several offers, in assignment order, one
-- statement (004_dispatch.sql's gridd_offer_notify, whose payload this is,
-- is now a call of it).
CREATE FUNCTION gridd_offers_notify(p_assignments bigint[], p_origin text,
    p_mark text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
	PERFORM pg_notify('gridd_offers', CASE
	    WHEN octet_length(n.head) + octet_length(n.body) < 7900
	    THEN n.head || E'\n' || n.body ELSE n.head END)
	FROM (SELECT v.assignment_id,
		v.assignment_id || ' ' || v.worker_id || ' ' || p_origin ||
		' ' || v.expires_ms || ' ' || v.incident_id || ' ' || p_mark
		    AS head,
		concat_ws(E'\t', v.incident_id, gridd_notify_field(v.reason),
		    gridd_notify_field(v.state), gridd_notify_field(v.cell_id),
		    gridd_notify_field(v.task_type), gridd_notify_field(v.list),
		    gridd_notify_field(v.matter),
		    gridd_notify_field(v.summary),
		    coalesce(v.lon::text, ''), coalesce(v.lat::text, ''),
		    gridd_notify_field(v.address),
		    coalesce(v.deadline_ms::text, ''),
		    gridd_notify_field(v.departments),
		    coalesce(v.created_ms::text, '')) AS body
	    FROM gridd_offers_v v
	    WHERE v.assignment_id = ANY (p_assignments)) n
	WHERE n.head IS NOT NULL
	ORDER BY n.assignment_id;
END
$$;

CREATE OR REPLACE FUNCTION gridd_offer_notify(p_assignment bigint,
    p_origin text, p_mark text)
RETURNS void
LANGUAGE sql
AS $$
	SELECT gridd_offers_notify(ARRAY[p_assignment], p_origin, p_mark)
$$;

-- As in 008_dispatch_ties.sql (the limit push_offer_max, the time budget,
-- a failure undoing every offer of the call), with the set pass above in
-- front of the single choice.
CREATE OR REPLACE FUNCTION gridd_dispatch_pushed(p_ids bigint[],
    OUT o_inc bigint[], OUT o_st text[], OUT o_wk text[], OUT o_nt text[])
LANGUAGE plpgsql
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
	o dispatch_origins%ROWTYPE;
	r gridd_dispatch_row;
	v_id bigint;
	v_budget interval;
	v_since timestamptz;
	v_ids bigint[];		-- the incidents to offer (id order, <= batch)
	-- The set pass's ranked candidates, the first few per incident:
	c_inc bigint[];
	c_rn integer[];
	c_wk text[];
	c_tier integer[];
	c_load integer[];
	c_dist double precision[];
	c_rough double precision[];
	c_lead boolean[];
	c_rmin double precision[];
	c_max integer[];
	c_n integer;
	i integer;
	j integer;
	k integer;
	v_pick integer;
	v_next integer;
	v_taken text[] := '{}';
	v_rt integer;		-- the runner-up's tier
	v_rl integer;		-- and load
	m integer := 1;		-- the next of v_ids to decide
	l_wk text[];		-- the chosen workers locked here
	l_load integer[];	-- and their loads under the lock
	-- Its choices, one incident per worker:
	s_inc bigint[] := '{}';
	s_wk text[] := '{}';
	s_tier integer[] := '{}';
	s_dist double precision[] := '{}';
	s_ntier integer[] := '{}';	-- the runner-up's tier, load and distance
	s_nload integer[] := '{}';
	s_ndist double precision[] := '{}';
	-- The offers it made:
	v_aid bigint[];
	v_ainc bigint[];
	v_awk text[];
	v_anote text[];
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
	v_since := now() - make_interval(secs => o.checkin_max_age_s);
	IF clock_timestamp() - statement_timestamp() > v_budget THEN
		RETURN;
	END IF;
	BEGIN
		-- By id: "route || ''" keeps incidents_dispatch_due_idx
		-- out of the plan (see 008_dispatch_ties.sql).
		SELECT coalesce(array_agg(i.incident_id ORDER BY
		    i.incident_id), '{}')
		INTO v_ids
		FROM (SELECT i.incident_id FROM incidents i
		    WHERE i.incident_id = ANY (p_ids)
		    AND i.route || '' = 'worker' AND i.status = 'new'
		    ORDER BY i.incident_id LIMIT o.batch) i;

		-- The set pass: each incident's candidates in the single
		-- choice's order, the first ten of them.  Candidates are taken
		-- together by position first (workers who checked in at one
		-- spot are equally far: one planar figure and one geodesic
		-- measure each; the group also shares tier, load and room),
		-- keeping the first ten worker ids of each; the ranking steps
		-- then run on positions, not on workers.  Run on
		-- each worker, the same steps cost 0.6-0.8 ms per incident of
		-- 92 candidates, as much as the single choice.
		WITH inc AS MATERIALIZED (
			SELECT i.incident_id AS inc, i.community_id AS comm,
			    i.cell_id AS cell, ST_X(i.geom) AS lon,
			    ST_Y(i.geom) AS lat
			FROM incidents i
			WHERE i.incident_id = ANY (v_ids)
			    AND i.cell_id IS NOT NULL
			    AND NOT EXISTS (SELECT 1 FROM assignments a
				WHERE a.incident_id = i.incident_id)
		), e AS (
			SELECT inc.inc, inc.lon, inc.lat, w.worker_id,
			    w.max_open, 1 AS tier, w.open_count AS load,
			    w.last_lon, w.last_lat, w.last_checkin_at
			FROM inc JOIN workers w
			    ON w.community_id = inc.comm
			    AND w.primary_cell = inc.cell
			WHERE w.on_duty AND w.open_count < w.max_open
			UNION ALL
			SELECT inc.inc, inc.lon, inc.lat, w.worker_id,
			    w.max_open, 2, w.open_count, w.last_lon,
			    w.last_lat, w.last_checkin_at
			FROM inc JOIN workers w
			    ON w.backup_cells @> ARRAY[inc.cell]
			WHERE w.backup_cells <> '{}'
			    AND w.community_id = inc.comm
			    AND w.primary_cell IS DISTINCT FROM inc.cell
			    AND w.on_duty AND w.open_count < w.max_open
		), g AS (
			SELECT e.inc, e.tier, e.load, e.last_lon, e.last_lat,
			    e.last_checkin_at >= v_since AS fresh, e.max_open,
			    min(e.lon) AS lon, min(e.lat) AS lat,
			    (array_agg(e.worker_id ORDER BY
				e.worker_id COLLATE "C"))[1:10] AS wks
			FROM e
			GROUP BY e.inc, e.tier, e.load, e.last_lon, e.last_lat,
			    e.last_checkin_at >= v_since, e.max_open
		), a AS (
			SELECT g.*, rank() OVER (PARTITION BY g.inc
				ORDER BY g.tier, g.load) = 1 AS leading
			FROM g
		), b AS (
			SELECT a.*, CASE WHEN a.leading
				AND a.lon IS NOT NULL
				AND a.last_lon IS NOT NULL
				AND a.last_lat IS NOT NULL
				AND a.fresh
			    THEN gridd_planar_m(a.lon, a.lat, a.last_lon,
				a.last_lat) END AS planar
			FROM a
		), x AS (
			SELECT b.*, b.planar IS NOT NULL AND
			    (b.planar <= min(b.planar) OVER (PARTITION BY
				b.inc) * 1.05 + 1
			    OR b.planar > 100000
			    OR abs(b.lat) > 80
			    OR abs(b.last_lat) > 80) AS measured
			FROM b
		), z AS (
			SELECT x.*, CASE WHEN x.measured
			    THEN ST_Distance(ST_SetSRID(ST_MakePoint(x.lon,
				x.lat), 4326)::geography,
				ST_SetSRID(ST_MakePoint(x.last_lon,
				x.last_lat), 4326)::geography) END AS dist,
			    CASE WHEN NOT x.measured THEN x.planar END AS rough,
			    min(CASE WHEN NOT x.measured THEN x.planar END)
				OVER (PARTITION BY x.inc) AS rmin
			FROM x
		), ranked AS (
			SELECT z.inc, z.tier, z.load, z.dist, z.rough, z.rmin,
			    z.leading, u.wk AS worker_id, z.max_open AS mx,
			    row_number() OVER (PARTITION BY z.inc
				ORDER BY z.tier, z.load, z.dist NULLS LAST,
				z.rough NULLS LAST, u.wk COLLATE "C") AS rn
			FROM z CROSS JOIN LATERAL unnest(z.wks) AS u(wk)
		)
		SELECT array_agg(k.inc ORDER BY k.inc, k.rn),
		    array_agg(k.rn ORDER BY k.inc, k.rn),
		    array_agg(k.worker_id ORDER BY k.inc, k.rn),
		    array_agg(k.tier ORDER BY k.inc, k.rn),
		    array_agg(k.load ORDER BY k.inc, k.rn),
		    array_agg(k.dist ORDER BY k.inc, k.rn),
		    array_agg(k.rough ORDER BY k.inc, k.rn),
		    array_agg(k.leading ORDER BY k.inc, k.rn),
		    array_agg(k.rmin ORDER BY k.inc, k.rn),
		    array_agg(k.mx ORDER BY k.inc, k.rn)
		INTO c_inc, c_rn, c_wk, c_tier, c_load, c_dist, c_rough,
		    c_lead, c_rmin, c_max
		FROM ranked k WHERE k.rn <= 10;

		-- In id order, each incident takes its first candidate that an
		-- earlier one has not taken, as one call after another would
		-- have: a taken worker's load is one more, so the others of
		-- the leading group come first.  The set pass decides only
		-- where that is certain; the rest go to the single choice:
		--   * a candidate after a taken one is taken only from the
		--     leading group, and only when it is measured and nearer
		--     than every unmeasured one can be (the planar figure is
		--     within 1% of the geodesic), or has no position (then
		--     neither have the others left);
		--   * the runner-up is the next candidate not taken when it is
		--     of the leading group; once that group is used up, what
		--     explains the choice is only the runner-up's tier (of the
		--     choice's tier its load is higher: 'least_loaded'), the
		--     first of the next candidate's and those of the taken
		--     ones with room left;
		--   * a choice beyond the leading group (the taken workers,
		--     one more load each, would rank among it), every one of
		--     the first ten taken, or a runner-up beyond them: not
		--     known here.
		c_n := coalesce(cardinality(c_inc), 0);
		i := 1;
		WHILE i <= c_n LOOP
			-- Only a prefix of v_ids: an incident left to the
			-- single choice is chosen for after the set pass's
			-- offers, so none after it may be decided before it.
			EXIT WHEN v_ids[m] <> c_inc[i];
			k := i;
			WHILE k < c_n AND c_inc[k + 1] = c_inc[i] LOOP
				k := k + 1;
			END LOOP;
			-- Rows i..k are the incident's.
			v_pick := NULL;
			v_next := NULL;
			FOR j IN i .. k LOOP
				IF c_wk[j] = ANY (v_taken) THEN
					CONTINUE;
				ELSIF v_pick IS NULL THEN
					v_pick := j;
				ELSE
					v_next := j;
					EXIT;
				END IF;
			END LOOP;
			IF v_pick IS NOT NULL AND v_pick > i AND NOT
			    (c_lead[v_pick] AND
			    (c_dist[v_pick] IS NOT NULL AND
				(c_rmin[v_pick] IS NULL OR
				c_dist[v_pick] * 1.0201 < c_rmin[v_pick])
			    OR c_dist[v_pick] IS NULL AND
				c_rough[v_pick] IS NULL)) THEN
				v_pick := NULL;
			END IF;
			v_rt := c_tier[v_next];
			v_rl := c_load[v_next];
			IF v_pick IS NOT NULL AND
			    (v_next IS NULL OR NOT c_lead[v_next]) THEN
				-- The leading group is used up.  The runner-up
				-- is the first by tier and load of the next
				-- candidate and the taken ones with room left
				-- (one more open each); of the choice's tier its
				-- load is higher ('least_loaded'), of another the
				-- tier explains the choice.  Out of the leading
				-- group its distance is not measured, here as
				-- in the single choice.
				IF v_next IS NULL AND c_rn[k] = 10 THEN
					v_pick := NULL;	-- more, not read
				END IF;
				FOR j IN i .. k LOOP
					IF j <> v_pick AND c_wk[j] = ANY (v_taken)
					    AND c_load[j] + 1 < c_max[j]
					    AND (v_rt IS NULL OR
						(c_tier[j], c_load[j] + 1) <
						(v_rt, v_rl)) THEN
						v_rt := c_tier[j];
						v_rl := c_load[j] + 1;
					END IF;
				END LOOP;
			END IF;
			EXIT WHEN v_pick IS NULL;
			s_inc := s_inc || c_inc[v_pick];
			s_wk := s_wk || c_wk[v_pick];
			s_tier := s_tier || c_tier[v_pick];
			s_dist := s_dist || c_dist[v_pick];
			s_ntier := s_ntier || v_rt;
			s_nload := s_nload || v_rl;
			IF c_lead[v_next] THEN
				s_ndist := s_ndist || c_dist[v_next];
			ELSE
				s_ndist := s_ndist || NULL::double precision;
			END IF;
			v_taken := v_taken || c_wk[v_pick];
			m := m + 1;
			i := k + 1;
		END LOOP;

		-- The chosen workers, locked with SKIP LOCKED and read again:
		-- the offers stop before the first incident whose worker is
		-- held by another transaction, gone off duty or full (the
		-- single choice passes over it, in order, as a push always
		-- did).  The load read under the lock explains the choice, as
		-- in the single choice.
		IF cardinality(s_inc) > 0 THEN
			SELECT coalesce(array_agg(l.worker_id), '{}'),
			    coalesce(array_agg(l.open_count), '{}')
			INTO l_wk, l_load
			FROM (SELECT w.worker_id, w.open_count FROM workers w
			    WHERE w.worker_id = ANY (s_wk) AND w.on_duty
				AND w.open_count < w.max_open
			    FOR NO KEY UPDATE SKIP LOCKED) l;
			FOR j IN 1 .. cardinality(s_inc) LOOP
				IF NOT (s_wk[j] = ANY (l_wk)) THEN
					-- Only s_inc is cut: unnest pads it
					-- with NULLs beside the other arrays'
					-- tails, and the offers skip those.
					s_inc := s_inc[1:j - 1];
					EXIT;
				END IF;
			END LOOP;
		END IF;

		-- Its offers, one statement per table.  workers.open_count
		-- follows (gridd_open_count_tg).
		IF cardinality(s_inc) > 0 THEN
			WITH c AS (
				SELECT s.inc, s.wk, i.community_id AS comm,
				    coalesce(CASE WHEN s.ntier IS NOT NULL
					THEN gridd_dispatch_runner_up(s.tier,
					l.load, s.dist, s.ntier, s.nload,
					s.ndist) END,
					CASE s.tier WHEN 1 THEN 'primary_cell'
					ELSE 'backup_cell' END) AS reason
				FROM unnest(s_inc, s_wk, s_tier, s_dist, s_ntier, s_nload, s_ndist)
				    AS s(inc, wk, tier, dist, ntier, nload,
					ndist)
				JOIN unnest(l_wk, l_load) AS l(wk, load)
				    USING (wk)
				JOIN incidents i ON i.incident_id = s.inc
				WHERE s.inc IS NOT NULL
			), ins AS (
				INSERT INTO assignments (incident_id,
				    worker_id, community_id, reason, expires_at)
				SELECT c.inc, c.wk, c.comm, c.reason,
				    now() + make_interval(secs =>
					o.offer_timeout_s)
				FROM c ORDER BY c.inc
				RETURNING assignment_id, incident_id,
				    worker_id, community_id, reason, expires_at
			), tm AS (
				INSERT INTO timers (kind, ref_id, community_id,
				    fire_at)
				SELECT 'offer_expiry', ins.assignment_id,
				    ins.community_id, ins.expires_at
				FROM ins
			)
			SELECT array_agg(ins.assignment_id ORDER BY
				ins.incident_id),
			    array_agg(ins.incident_id ORDER BY ins.incident_id),
			    array_agg(ins.worker_id ORDER BY ins.incident_id),
			    array_agg('offered: ' || ins.reason ORDER BY
				ins.incident_id)
			INTO v_aid, v_ainc, v_awk, v_anote
			FROM ins;
		END IF;
		IF v_aid IS NOT NULL THEN
			UPDATE incidents SET status = 'dispatched',
			    offers = offers + 1, next_try_at = 'infinity',
			    updated_at = now()
			WHERE incident_id = ANY (v_ainc);
			PERFORM gridd_offers_notify(v_aid, o.instance,
			    'commit');
			o_inc := v_ainc;
			o_st := array_fill('dispatched'::text,
			    ARRAY[cardinality(v_ainc)]);
			o_wk := v_awk;
			o_nt := v_anote;
		END IF;

		-- The single choice for the others, in id order.
		FOR v_id IN SELECT u.id FROM unnest(v_ids) AS u(id)
		    LEFT JOIN unnest(v_ainc) AS a(id) USING (id)
		    WHERE a.id IS NULL
		    ORDER BY u.id
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
		RETURN;
	END;

	-- The events in incident order, as one call per incident gave them.
	SELECT coalesce(array_agg(u.inc ORDER BY u.inc), '{}'),
	    coalesce(array_agg(u.st ORDER BY u.inc), '{}'),
	    coalesce(array_agg(u.wk ORDER BY u.inc), '{}'),
	    coalesce(array_agg(u.nt ORDER BY u.inc), '{}')
	INTO o_inc, o_st, o_wk, o_nt
	FROM unnest(o_inc, o_st, o_wk, o_nt) AS u(inc, st, wk, nt);
END
$$;

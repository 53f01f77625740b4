-- 016_actions_set.sql - a batch of workers' actions is applied by one
-- statement per table where each of them would simply succeed.
--
-- The migration runner wraps this file in one transaction.
--
-- Why: the daemon commits the UpdateAssignment actions that arrive while
-- the previous batch commits as one batch (gridd_assignment_actions,
-- 004_dispatch.sql), and that function ran gridd_assignment_act for each
-- item: seven statements per action, 0.76 ms each in a `scripts/bench
-- dispatch` run with pg_stat_statements (track = all), 4.9 ms for a batch
-- of about five accepts, which kept one backend busy about half of every
-- second at 460 accepts/s, on a machine whose two cores the pushes'
-- transactions and the daemon share.  Measured on the bench's database,
-- one transaction, the two row updates of five actions took 2.3 ms as one
-- statement per row and 1.3-1.7 ms as one statement per table: most of
-- an action's cost is per statement, not per row.
--
-- Now gridd_assignment_actions first takes the longest prefix of its items
-- (in assignment order, the order it always ran them in) that one call
-- after another would each answer 'ok' without a choice to make: ACCEPT,
-- START and RESOLVE of the worker's own assignment in the state the
-- action needs, an incident neither closed nor cancelled, an idempotency
-- key not stored before, no assignment and no (worker, key) twice in the
-- prefix.  It locks the prefix's assignments and then their incidents in
-- assignment order, checks them under the locks, and writes the keys, the
-- offer timers' deletion, the transitions (whose trigger locks a
-- resolving worker's row) and the incidents' statuses with one statement
-- each.  So rows are locked as each item of the loop locks them: its
-- assignment, its incident, then an accept's timer or a resolve's worker
-- (never both), the timers here before the workers.  The rest of the
-- batch, from the first item that is not certain, goes through
-- gridd_assignment_act one item at a time in order, as before; the
-- events of all items are written last, in item order, by one
-- gridd_dispatch_emit call, as before.  So every item gets the answer,
-- the rows and the events that the loop gave it.
--
-- A key that another transaction stores between the check and the insert
-- (one worker's key sent for another assignment through a second daemon
-- at that moment: the insert waits for that transaction) sends the whole
-- batch through the loop instead, the keys just inserted taken back, so
-- that the item reads CONFLICT there, as it did.
CREATE OR REPLACE FUNCTION gridd_assignment_actions(p_workers text[],
    p_assignments bigint[], p_actions text[], p_notes text[],
    p_lons double precision[], p_lats double precision[], p_keys text[],
    p_timeout_s integer, p_max_offers integer, p_max_age_s integer,
    p_retry_s integer, p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
SET jit = off
SET enable_seqscan = off
AS $$
DECLARE
	r gridd_dispatch_row;
	v_i integer;
	v_ord integer[];	-- the items in assignment order
	v_m integer;		-- the set pass takes v_ord[1 .. v_m]
	v_keys integer;
	v_n integer;
	k_wk text[];		-- the keys the prefix inserted
	k_key text[];
	-- The prefix's items, in order: position, assignment, incident,
	-- the state they go to, worker, community, action, key, note, point.
	f_i integer[];
	f_aid bigint[];
	f_inc bigint[];
	f_to text[];
	f_wk text[];
	f_comm text[];
	f_act text[];
	f_key text[];
	f_note text[];
	f_lon double precision[];
	f_lat double precision[];
	v_inc bigint[] := '{}';
	v_st text[] := '{}';
	v_wk text[] := '{}';
	v_nt text[] := '{}';
BEGIN
	SELECT coalesce(array_agg(u.i::integer ORDER BY u.aid, u.i), '{}')
	INTO v_ord
	FROM unnest(p_assignments) WITH ORDINALITY AS u(aid, i);

	-- What the items say: the prefix ends before the first DECLINE (a
	-- new choice of worker), unknown action, or assignment or (worker,
	-- key) met earlier in the batch (its answer depends on the earlier
	-- item's).
	SELECT coalesce(min(x.pos) - 1, cardinality(v_ord))
	INTO v_m
	FROM (SELECT o.pos,
		p_actions[o.i] IS NULL OR p_workers[o.i] IS NULL OR
		p_assignments[o.i] IS NULL OR
		p_actions[o.i] NOT IN ('accept', 'start', 'resolve') OR
		count(*) OVER (PARTITION BY p_assignments[o.i]
		    ORDER BY o.pos) > 1 OR
		p_keys[o.i] IS NOT NULL AND
		    count(*) OVER (PARTITION BY p_workers[o.i], p_keys[o.i]
			ORDER BY o.pos) > 1 AS stop
	    FROM unnest(v_ord) WITH ORDINALITY AS o(i, pos)) x
	WHERE x.stop;

	IF v_m > 0 THEN
		-- The assignments, locked in assignment order as the loop
		-- locks them, then checked under the locks: each the worker's
		-- own, in the state its action needs, its key not stored.
		PERFORM 1 FROM assignments a
		WHERE a.assignment_id = ANY (ARRAY(SELECT p_assignments[o.i]
		    FROM unnest(v_ord[1:v_m]) AS o(i)))
		ORDER BY a.assignment_id
		FOR NO KEY UPDATE;
		SELECT coalesce(min(x.pos) - 1, v_m)
		INTO v_m
		FROM (SELECT o.pos,
			a.assignment_id IS NULL OR
			a.worker_id <> p_workers[o.i] OR
			a.state IS DISTINCT FROM CASE p_actions[o.i]
			    WHEN 'accept' THEN 'offered'
			    WHEN 'start' THEN 'accepted'
			    WHEN 'resolve' THEN 'in_progress' END OR
			k.worker_id IS NOT NULL AS stop
		    FROM unnest(v_ord[1:v_m]) WITH ORDINALITY AS o(i, pos)
		    LEFT JOIN assignments a
			ON a.assignment_id = p_assignments[o.i]
		    -- A join, not EXISTS: the generic plan hashed the whole
		    -- table for the subquery, 0.9 ms per batch at 2,300 keys.
		    LEFT JOIN assignment_actions k
			ON k.worker_id = p_workers[o.i]
			AND k.idempotency_key = p_keys[o.i]) x
		WHERE x.stop;
	END IF;
	IF v_m > 0 THEN
		-- Their incidents, locked in the same order, every one of them
		-- (the test is in the aggregate's FILTER: as a WHERE outside
		-- the locking subquery it was pushed down into it, and only the
		-- closed and cancelled incidents were locked); a closed or
		-- cancelled one ends the prefix.  The prefix's items are live
		-- assignments of distinct incidents (assignments_one_live_idx).
		SELECT coalesce(min(x.pos) FILTER (WHERE x.status IN ('closed',
		    'cancelled')) - 1, v_m)
		INTO v_m
		FROM (SELECT o.pos, i.status
		    FROM unnest(v_ord[1:v_m]) WITH ORDINALITY AS o(i, pos)
		    JOIN assignments a ON a.assignment_id = p_assignments[o.i]
		    JOIN incidents i ON i.incident_id = a.incident_id
		    ORDER BY o.pos
		    FOR NO KEY UPDATE OF i) x;
	END IF;

	IF v_m > 0 THEN
		SELECT array_agg(o.i ORDER BY o.pos),
		    array_agg(a.assignment_id ORDER BY o.pos),
		    array_agg(a.incident_id ORDER BY o.pos),
		    array_agg(CASE p_actions[o.i] WHEN 'accept' THEN 'accepted'
			WHEN 'start' THEN 'in_progress'
			WHEN 'resolve' THEN 'resolved' END ORDER BY o.pos),
		    array_agg(a.worker_id ORDER BY o.pos),
		    array_agg(a.community_id ORDER BY o.pos),
		    array_agg(p_actions[o.i] ORDER BY o.pos),
		    array_agg(p_keys[o.i] ORDER BY o.pos),
		    array_agg(p_notes[o.i] ORDER BY o.pos),
		    array_agg(p_lons[o.i] ORDER BY o.pos),
		    array_agg(p_lats[o.i] ORDER BY o.pos)
		INTO f_i, f_aid, f_inc, f_to, f_wk, f_comm, f_act, f_key,
		    f_note, f_lon, f_lat
		FROM unnest(v_ord[1:v_m]) WITH ORDINALITY AS o(i, pos)
		JOIN assignments a ON a.assignment_id = p_assignments[o.i];

		SELECT count(*) INTO v_keys FROM unnest(f_key) k
		WHERE k IS NOT NULL;
		IF v_keys > 0 THEN
			WITH ins AS (
				INSERT INTO assignment_actions (worker_id,
				    idempotency_key, assignment_id,
				    community_id, action)
				SELECT u.wk, u.key, u.aid, u.comm, u.act
				FROM unnest(f_wk, f_key, f_aid, f_comm, f_act)
				    AS u(wk, key, aid, comm, act)
				WHERE u.key IS NOT NULL
				ON CONFLICT DO NOTHING
				RETURNING worker_id, idempotency_key
			)
			SELECT count(*), array_agg(ins.worker_id),
			    array_agg(ins.idempotency_key)
			INTO v_n, k_wk, k_key
			FROM ins;
			IF v_n <> v_keys THEN
				-- Stored meanwhile (above): nothing but these
				-- keys was written yet.
				DELETE FROM assignment_actions k
				USING unnest(k_wk, k_key) AS u(wk, key)
				WHERE k.worker_id = u.wk
				    AND k.idempotency_key = u.key;
				v_m := 0;
			END IF;
		END IF;
	END IF;

	IF v_m > 0 THEN
		-- An accepted offer no longer expires.
		DELETE FROM timers t
		USING unnest(f_aid, f_act) AS u(aid, act)
		WHERE u.act = 'accept' AND t.kind = 'offer_expiry'
		    AND t.ref_id = u.aid;
		UPDATE assignments a SET state = u.st,
		    accepted_at = CASE WHEN u.st = 'accepted' THEN now()
			ELSE a.accepted_at END,
		    started_at = CASE WHEN u.st = 'in_progress' THEN now()
			ELSE a.started_at END,
		    resolved_at = CASE WHEN u.st = 'resolved' THEN now()
			ELSE a.resolved_at END,
		    note = CASE WHEN u.note IS NOT NULL AND u.st = 'resolved'
			THEN u.note ELSE a.note END,
		    resolve_lon = CASE WHEN u.st = 'resolved' THEN u.lon
			ELSE a.resolve_lon END,
		    resolve_lat = CASE WHEN u.st = 'resolved' THEN u.lat
			ELSE a.resolve_lat END
		FROM unnest(f_aid, f_to, f_note, f_lon, f_lat)
		    AS u(aid, st, note, lon, lat)
		WHERE a.assignment_id = u.aid;
		UPDATE incidents i SET status = u.st, updated_at = now()
		FROM unnest(f_inc, f_to) AS u(inc, st)
		WHERE i.incident_id = u.inc;

		RETURN QUERY SELECT (gridd_drow('ok', u.st, u.i, u.inc,
		    u.aid)).*
		FROM unnest(f_i, f_to, f_inc, f_aid) WITH ORDINALITY
		    AS u(i, st, inc, aid, ord)
		ORDER BY u.ord;
		v_inc := f_inc;
		v_st := f_to;
		v_wk := f_wk;
		SELECT array_agg(CASE WHEN u.st = 'resolved'
		    THEN coalesce(u.note, '') ELSE '' END ORDER BY u.ord)
		INTO v_nt
		FROM unnest(f_to, f_note) WITH ORDINALITY AS u(st, note, ord);
	END IF;

	-- The rest one at a time, as 004_dispatch.sql's loop.
	FOREACH v_i IN ARRAY coalesce(v_ord[v_m + 1:], '{}') LOOP
		FOR r IN SELECT * FROM gridd_assignment_act(p_workers[v_i],
		    p_assignments[v_i], p_actions[v_i], p_notes[v_i],
		    p_lons[v_i], p_lats[v_i], p_keys[v_i], p_timeout_s,
		    p_max_offers, p_max_age_s, p_retry_s, p_origin, true)
		LOOP
			IF r.outcome = 'event' THEN
				v_inc := v_inc || r.incident_id;
				v_st := v_st || r.detail;
				v_wk := v_wk || r.worker_id;
				v_nt := v_nt || r.summary;
				CONTINUE;
			ELSIF r.outcome = 'offered' THEN
				v_inc := v_inc || r.incident_id;
				v_st := v_st || 'dispatched'::text;
				v_wk := v_wk || r.worker_id;
				v_nt := v_nt || ('offered: ' || r.reason);
			ELSIF r.outcome = 'escalated' THEN
				v_inc := v_inc || r.incident_id;
				v_st := v_st || 'escalated'::text;
				v_wk := v_wk || NULL::text;
				v_nt := v_nt || ('no worker: ' || r.detail);
			END IF;
			r.n := v_i;
			RETURN NEXT r;
		END LOOP;
	END LOOP;
	PERFORM gridd_dispatch_emit(v_inc, v_st, v_wk, v_nt);
END
$$;

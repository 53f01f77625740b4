-- 004_dispatch.sql - dispatch to grid workers: choosing a worker, offers,
-- the actions on them, escalation, timers (offer expiry, SLA), check-ins
-- and the owning department's verification.
--
-- Contract for callers (the daemon passes text-format parameters):
--
--   gridd_dispatch_incidents(ids, settings...)   dispatch these incidents
--   gridd_dispatch_scan(limit, settings...)       dispatch what is due
--   gridd_timers_fire(limit, settings...)         fire due timers
--   gridd_assignment_action(worker, assignment, action, note, lon, lat,
--                           key, settings...)     ACCEPT/DECLINE/START/RESOLVE
--   gridd_verify_incident(department, incident, accept, note, settings...)
--   gridd_worker_checkin(worker, lon, lat, on_duty, history)
--   gridd_offers_v                                 offers as the wire shows them
--
-- settings are always (offer_timeout_s, max_offers, checkin_max_age_s,
-- retry_s, origin): the [dispatch] config and the calling process's
-- instance name, which travels in the offer NOTIFY so that the process that
-- pushed an offer itself does not push it twice.
--
-- Every function that changes something returns rows of gridd_dispatch_row,
-- one per thing the daemon must act on or count:
--   offered    a new offer (the offer's fields follow): push it
--   escalated  no worker could be found; detail = the shortfall
--   expired    an offer ran out (assignment and incident ids set)
--   sla        an open incident passed its deadline and was escalated
--   retry      a candidate was busy in another transaction, or the item
--              failed: the incident is due again (next_try_at) and the
--              daemon scans again shortly
--   busy       a due timer's row was locked by a worker action: it stays
--              and fires on the next run
--   timer      a timer fired; detail = kind, n = lateness in ms
--   more       the batch limit was reached: call again
--   ok, replay, not_found, forbidden, conflict   the answer to an action or
--              verification (detail = message); the follow-up rows of a
--              DECLINE or a reopen come after it
--
-- Locking order, the same everywhere so that dispatchers do not deadlock
-- each other: timer -> assignment -> incident -> worker -> department_seq
-- (taken by gridd_emit_event last).  Rows are locked FOR NO KEY UPDATE, the
-- lock an UPDATE takes: it serialises dispatchers just as well, and does not
-- block the FOR KEY SHARE that foreign-key checks take (an events row
-- written by another transaction for a locked incident, an assignment for a
-- locked worker), which would otherwise close a cycle through
-- department_seq.  Workers are locked with SKIP LOCKED:
-- a worker row held by another transaction (another process offering to
-- the same worker, a check-in) makes the item 'retry' instead of waiting.
-- Timer handling locks assignments and incidents with SKIP LOCKED too, so a
-- timer never waits for a worker's action and the action's DELETE of the
-- timer never waits long.  Items of a batch run in their own
-- subtransactions: one that fails (even as a deadlock victim) is retried
-- later and does not undo the others.  Batches stay below 64 items, the
-- number of subtransactions PostgreSQL tracks without overflowing.
--
-- The migration runner wraps this file in one transaction.

-- Incidents: dispatch rounds and retries ----------------------------------

-- max_offers counts the offers of the current round; a round starts when
-- the incident is escalated (a retry then tries workers not yet asked) or
-- reopened by its department.
ALTER TABLE incidents ADD COLUMN round_at timestamptz NOT NULL
	DEFAULT '-infinity';
ALTER TABLE incidents ADD COLUMN escalated_at timestamptz;
-- When the scan should look at the incident again: NULL = now (a new
-- incident), 'infinity' = it has a live offer.
ALTER TABLE incidents ADD COLUMN next_try_at timestamptz;

-- A fourth shortfall: every candidate of the round declined or let the offer
-- expire up to max_offers.
ALTER TABLE incidents DROP CONSTRAINT incidents_shortfall_check;
ALTER TABLE incidents ADD CONSTRAINT incidents_shortfall_check
	CHECK (shortfall IN ('no_workers', 'all_off_duty', 'all_at_capacity',
	    'max_offers'));

CREATE INDEX incidents_dispatch_due_idx ON incidents (next_try_at)
	WHERE route = 'worker' AND status IN ('new', 'dispatched', 'escalated');
CREATE INDEX incidents_escalated_idx ON incidents (community_id)
	WHERE route = 'worker' AND status = 'escalated';

-- Who was already asked about an incident.
CREATE INDEX assignments_incident_idx ON assignments (incident_id, worker_id);
-- The check-in history is pruned by count per worker.
CREATE INDEX worker_checkins_worker_id_idx
	ON worker_checkins (worker_id, checkin_id);
-- Candidates are looked for among the workers of one community.
CREATE INDEX workers_community_idx ON workers (community_id);

-- The rows the daemon reads -------------------------------------------------

CREATE TYPE gridd_dispatch_row AS (
	outcome		text,
	detail		text,
	n		bigint,
	incident_id	bigint,
	assignment_id	bigint,
	worker_id	text,
	reason		text,
	state		text,
	cell_id		text,
	task_type	text,
	list		text,
	matter		text,
	summary		text,
	lon		double precision,
	lat		double precision,
	address		text,
	deadline_ms	bigint,
	departments	text,		-- comma-separated ids
	expires_ms	bigint,
	created_ms	bigint
);

-- An assignment as AssignmentOffer carries it (columns 4.. of the row type).
CREATE VIEW gridd_offers_v AS
SELECT a.incident_id, a.assignment_id, a.worker_id, a.reason, a.state,
    i.cell_id, i.task_type, i.list, i.matter,
    CASE WHEN i.summary <> '' THEN i.summary
	ELSE left(i.description, 200) END AS summary,
    ST_X(i.geom) AS lon, ST_Y(i.geom) AS lat, i.address,
    (extract(epoch FROM i.deadline) * 1000)::bigint AS deadline_ms,
    array_to_string(i.departments, ',') AS departments,
    (extract(epoch FROM a.expires_at) * 1000)::bigint AS expires_ms,
    (extract(epoch FROM i.created_at) * 1000)::bigint AS created_ms
FROM assignments a JOIN incidents i ON i.incident_id = a.incident_id;

CREATE FUNCTION gridd_drow(p_outcome text, p_detail text, p_n bigint,
    p_incident bigint, p_assignment bigint)
RETURNS gridd_dispatch_row
LANGUAGE sql IMMUTABLE
AS $$
	SELECT ROW(p_outcome, p_detail, p_n, p_incident, p_assignment,
	    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
	    NULL, NULL, NULL, NULL)::gridd_dispatch_row
$$;

CREATE FUNCTION gridd_offer_row(p_outcome text, p_assignment bigint)
RETURNS SETOF gridd_dispatch_row
LANGUAGE sql STABLE
AS $$
	SELECT p_outcome, NULL::text, NULL::bigint, v.*
	FROM gridd_offers_v v WHERE v.assignment_id = p_assignment
$$;

-- Choosing a worker -----------------------------------------------------------

-- Current cells of the same community whose polygons touch this one (a
-- tolerance of about a centimetre absorbs floating-point slivers between
-- neighbouring Voronoi cells).
CREATE FUNCTION gridd_neighbour_cells(p_cell text)
RETURNS text[]
LANGUAGE sql STABLE
AS $$
	SELECT coalesce(array_agg(n.cell_id ORDER BY n.cell_id), '{}')
	FROM cells me
	JOIN cells n ON n.community_id = me.community_id
	    AND n.valid_to IS NULL AND n.cell_id <> me.cell_id
	    AND n.geom && ST_Expand(me.geom, 1e-7)
	    AND ST_DWithin(n.geom, me.geom, 1e-7)
	WHERE me.cell_id = p_cell AND me.valid_to IS NULL
	    AND me.geom IS NOT NULL
$$;

-- Offers one incident to the best worker, or escalates it.  The caller holds
-- the incident's row lock.
--
-- Candidates: workers of the incident's community whose primary cell is the
-- incident's cell (tier 1), whose backup cells include it (tier 2), or whose
-- primary cell touches it (tier 3), less those who declined this incident or
-- let its offer expire.  Eligible: on duty and below max_open open
-- (offered, accepted, in_progress) assignments.  Order: tier, then fewer
-- open assignments, then the shorter distance from a check-in position not
-- older than checkin_max_age_s (none = last), then worker id.
--
-- The reason recorded says what decided, comparing the chosen worker with
-- the next eligible candidate of the same tier:
--   least_loaded    that one had more open assignments;
--   nearest         same load, and the chosen one is closer (or the other
--                   has no recent position);
--   primary_cell, backup_cell, neighbour_cell   the tier decided (no other
--                   eligible candidate in it, or a tie broken by id).
-- The shortfall when nobody can take it:
--   max_offers      max_offers offers this round were declined or expired;
--   no_workers      no candidate at all (none assigned, or all asked);
--   all_off_duty    candidates, none on duty;
--   all_at_capacity on-duty candidates, all at max_open.
CREATE FUNCTION gridd_dispatch_one(p_incident bigint, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	inc incidents%ROWTYPE;
	c record;
	v_nb text[];
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
BEGIN
	SELECT * INTO inc FROM incidents WHERE incident_id = p_incident;
	IF NOT FOUND OR inc.route <> 'worker' OR
	    inc.status NOT IN ('new', 'dispatched', 'escalated') THEN
		RETURN;
	END IF;
	-- A fresh snapshot under the incident's lock: every transaction that
	-- makes an assignment holds this lock, so this sees them all.
	IF EXISTS (SELECT 1 FROM assignments a
	    WHERE a.incident_id = p_incident
	    AND a.state IN ('offered', 'accepted', 'in_progress')) THEN
		UPDATE incidents SET next_try_at = 'infinity'
		WHERE incident_id = p_incident;
		RETURN;
	END IF;

	SELECT count(*) INTO v_round FROM assignments a
	WHERE a.incident_id = p_incident AND a.offered_at >= inc.round_at;
	IF v_round >= p_max_offers THEN
		v_short := 'max_offers';
	ELSE
		v_nb := CASE WHEN inc.cell_id IS NULL THEN '{}'::text[]
		    ELSE gridd_neighbour_cells(inc.cell_id) END;
		FOR c IN
			WITH cand AS (
				SELECT w.worker_id, w.on_duty, w.max_open,
				    CASE WHEN w.primary_cell = inc.cell_id
					THEN 1
					WHEN inc.cell_id = ANY (w.backup_cells)
					THEN 2 ELSE 3 END AS tier,
				    (SELECT count(*) FROM assignments o
				     WHERE o.worker_id = w.worker_id
				     AND o.state IN ('offered', 'accepted',
					'in_progress'))::integer AS load,
				    CASE WHEN inc.geom IS NOT NULL
					AND w.last_lon IS NOT NULL
					AND w.last_lat IS NOT NULL
					AND w.last_checkin_at >= now() -
					    make_interval(secs => p_max_age_s)
				    THEN ST_Distance(inc.geom::geography,
					ST_SetSRID(ST_MakePoint(w.last_lon,
					w.last_lat), 4326)::geography)
				    END AS dist
				FROM workers w
				WHERE w.community_id = inc.community_id
				    AND inc.cell_id IS NOT NULL
				    AND (w.primary_cell = inc.cell_id
					OR inc.cell_id = ANY (w.backup_cells)
					OR w.primary_cell = ANY (v_nb))
				    AND NOT EXISTS (SELECT 1 FROM assignments d
					WHERE d.incident_id = p_incident
					AND d.worker_id = w.worker_id
					AND d.state IN ('declined', 'expired'))
			)
			SELECT cand.*, (on_duty AND load < max_open) AS eligible
			FROM cand
			ORDER BY (on_duty AND load < max_open) DESC, tier, load,
			    dist NULLS LAST, worker_id COLLATE "C"
		LOOP
			v_scope := v_scope + 1;
			IF c.on_duty THEN
				v_on := v_on + 1;
			END IF;
			IF NOT c.eligible THEN
				CONTINUE;
			END IF;
			IF v_chosen IS NOT NULL THEN
				-- The runner-up explains the choice.
				IF v_reason IS NULL AND c.tier = v_tier THEN
					IF c.load > v_open THEN
						v_reason := 'least_loaded';
					ELSIF v_dist IS NOT NULL AND
					    (c.dist IS NULL OR
					    c.dist > v_dist) THEN
						v_reason := 'nearest';
					END IF;
				END IF;
				EXIT;
			END IF;
			SELECT w.max_open INTO v_max FROM workers w
			WHERE w.worker_id = c.worker_id AND w.on_duty
			FOR NO KEY UPDATE SKIP LOCKED;
			IF NOT FOUND THEN
				-- Locked by another transaction (or just went
				-- off duty): try again shortly rather than
				-- wait or give up on this worker.
				v_contended := v_contended OR EXISTS (
				    SELECT 1 FROM workers w
				    WHERE w.worker_id = c.worker_id
				    AND w.on_duty);
				CONTINUE;
			END IF;
			SELECT count(*) INTO v_now_open FROM assignments o
			WHERE o.worker_id = c.worker_id
			    AND o.state IN ('offered', 'accepted',
				'in_progress');
			IF v_now_open >= v_max THEN
				CONTINUE;
			END IF;
			v_chosen := c.worker_id;
			v_tier := c.tier;
			v_open := v_now_open;
			v_dist := c.dist;
		END LOOP;

		IF v_chosen IS NOT NULL THEN
			v_reason := coalesce(v_reason, CASE v_tier
			    WHEN 1 THEN 'primary_cell'
			    WHEN 2 THEN 'backup_cell'
			    ELSE 'neighbour_cell' END);
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
			PERFORM gridd_emit_event(p_incident, 'dispatched',
			    v_chosen, 'offered: ' || v_reason);
			-- Delivered at commit to every process: "ASSIGNMENT
			-- WORKER ORIGIN EXPIRES_MS".  The origin pushed it
			-- itself; every process wakes for the expiry, so that
			-- it fires on time even if the origin died.
			PERFORM pg_notify('gridd_offers', v_aid::text || ' ' ||
			    v_chosen || ' ' || p_origin || ' ' ||
			    (extract(epoch FROM now() + make_interval(
				secs => p_timeout_s)) * 1000)::bigint::text);
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
	PERFORM gridd_emit_event(p_incident, 'escalated', NULL,
	    'no worker: ' || v_short);
	RETURN NEXT gridd_drow('escalated', v_short, NULL, p_incident, NULL);
END
$$;

-- Dispatches one incident in its own subtransaction; a failure leaves it
-- due again for the scan.
CREATE FUNCTION gridd_dispatch_guarded(p_incident bigint,
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
		FROM gridd_dispatch_one(p_incident, p_timeout_s, p_max_offers,
		    p_max_age_s, p_retry_s, p_origin) r;
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

-- The incidents named (from NOTIFY gridd_dispatch), each claimed with SKIP
-- LOCKED: an incident another process is dispatching right now is its.
CREATE FUNCTION gridd_dispatch_incidents(p_ids bigint[], p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	v_id bigint;
BEGIN
	FOR v_id IN SELECT i.incident_id FROM incidents i
	    WHERE i.incident_id = ANY (p_ids) AND i.route = 'worker'
	    AND i.status IN ('new', 'dispatched', 'escalated')
	    AND (i.next_try_at IS NULL OR i.next_try_at <> 'infinity')
	    ORDER BY i.incident_id
	    FOR NO KEY UPDATE SKIP LOCKED
	LOOP
		RETURN QUERY SELECT * FROM gridd_dispatch_guarded(v_id,
		    p_timeout_s, p_max_offers, p_max_age_s, p_retry_s,
		    p_origin);
	END LOOP;
END
$$;

-- Whatever is due: new incidents whose NOTIFY was missed, escalated ones up
-- for a retry, items that failed or met a busy worker.
CREATE FUNCTION gridd_dispatch_scan(p_limit integer, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	v_id bigint;
	v_n integer := 0;
BEGIN
	FOR v_id IN SELECT i.incident_id FROM incidents i
	    WHERE i.route = 'worker'
	    AND i.status IN ('new', 'dispatched', 'escalated')
	    AND (i.next_try_at IS NULL OR i.next_try_at <= now())
	    ORDER BY i.next_try_at NULLS FIRST, i.incident_id
	    LIMIT p_limit
	    FOR NO KEY UPDATE SKIP LOCKED
	LOOP
		v_n := v_n + 1;
		RETURN QUERY SELECT * FROM gridd_dispatch_guarded(v_id,
		    p_timeout_s, p_max_offers, p_max_age_s, p_retry_s,
		    p_origin);
	END LOOP;
	IF v_n >= p_limit THEN
		RETURN NEXT gridd_drow('more', NULL, v_n, NULL, NULL);
	END IF;
END
$$;

-- Timers ------------------------------------------------------------------------

-- An offer not accepted in time.  The caller holds the timer row.
CREATE FUNCTION gridd_offer_expire(p_assignment bigint, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	a assignments%ROWTYPE;
BEGIN
	SELECT * INTO a FROM assignments WHERE assignment_id = p_assignment
	FOR NO KEY UPDATE SKIP LOCKED;
	IF NOT FOUND THEN
		IF EXISTS (SELECT 1 FROM assignments
		    WHERE assignment_id = p_assignment) THEN
			RETURN NEXT gridd_drow('busy', NULL, NULL, NULL,
			    p_assignment);
		END IF;
		RETURN;
	END IF;
	IF a.state <> 'offered' THEN
		RETURN;		-- answered meanwhile
	END IF;
	PERFORM 1 FROM incidents WHERE incident_id = a.incident_id
	FOR NO KEY UPDATE SKIP LOCKED;
	IF NOT FOUND THEN
		RETURN NEXT gridd_drow('busy', NULL, NULL, a.incident_id,
		    p_assignment);
		RETURN;
	END IF;
	UPDATE assignments SET state = 'expired'
	WHERE assignment_id = p_assignment;
	RETURN NEXT gridd_drow('expired', a.worker_id, NULL, a.incident_id,
	    p_assignment);
	RETURN QUERY SELECT * FROM gridd_dispatch_one(a.incident_id,
	    p_timeout_s, p_max_offers, p_max_age_s, p_retry_s, p_origin);
END
$$;

-- An incident's SLA deadline.  Open incidents (not resolved, closed or
-- cancelled; referrals to residents left the government's hands) are
-- escalated once and stay open in their status: the event tells the
-- departments, sla_escalated tells the report.  A deadline moved later
-- re-arms the timer.  The caller holds the timer row.
CREATE FUNCTION gridd_sla_fire(p_timer bigint, p_incident bigint)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	inc incidents%ROWTYPE;
BEGIN
	SELECT * INTO inc FROM incidents WHERE incident_id = p_incident
	FOR NO KEY UPDATE SKIP LOCKED;
	IF NOT FOUND THEN
		IF EXISTS (SELECT 1 FROM incidents
		    WHERE incident_id = p_incident) THEN
			RETURN NEXT gridd_drow('busy', NULL, NULL, p_incident,
			    NULL);
		END IF;
		RETURN;
	END IF;
	IF inc.sla_escalated OR inc.route = 'referral' OR
	    inc.status IN ('resolved', 'closed', 'cancelled') THEN
		RETURN;
	END IF;
	IF inc.deadline IS NOT NULL AND inc.deadline > now() THEN
		UPDATE timers SET fire_at = inc.deadline WHERE timer_id = p_timer;
		RETURN NEXT gridd_drow('rearm', NULL, NULL, p_incident, NULL);
		RETURN;
	END IF;
	UPDATE incidents SET sla_escalated = true, updated_at = now()
	WHERE incident_id = p_incident;
	PERFORM gridd_emit_event(p_incident, 'escalated', NULL, 'sla overdue');
	RETURN NEXT gridd_drow('sla', inc.status, NULL, p_incident, NULL);
END
$$;

-- Fires up to p_limit due timers, oldest first.  Claiming, handling and
-- deleting a timer happen in this one transaction: a timer fires in exactly
-- one process, and a process that dies mid-way leaves it due (a timer whose
-- fire_at passed while every process was down fires on the next run).
CREATE FUNCTION gridd_timers_fire(p_limit integer, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	t timers%ROWTYPE;
	v_rows gridd_dispatch_row[];
	v_n integer := 0;
	v_lag bigint;
BEGIN
	FOR t IN SELECT * FROM timers WHERE fire_at <= now()
	    ORDER BY fire_at, timer_id LIMIT p_limit
	    FOR UPDATE SKIP LOCKED
	LOOP
		v_n := v_n + 1;
		v_lag := (extract(epoch FROM clock_timestamp() - t.fire_at) *
		    1000)::bigint;
		BEGIN
			IF t.kind = 'offer_expiry' THEN
				SELECT array_agg(r) INTO v_rows
				FROM gridd_offer_expire(t.ref_id, p_timeout_s,
				    p_max_offers, p_max_age_s, p_retry_s,
				    p_origin) r;
			ELSE
				SELECT array_agg(r) INTO v_rows
				FROM gridd_sla_fire(t.timer_id, t.ref_id) r;
			END IF;
			IF v_rows IS NULL OR
			    (v_rows[1]).outcome NOT IN ('busy', 'rearm') THEN
				DELETE FROM timers
				WHERE timer_id = t.timer_id;
				v_rows := coalesce(v_rows, '{}') ||
				    gridd_drow('timer', t.kind, v_lag, NULL,
				    t.timer_id);
			END IF;
		EXCEPTION WHEN OTHERS THEN
			RAISE WARNING 'gridd timer % (%) failed: % (%)',
			    t.timer_id, t.kind, SQLERRM, SQLSTATE;
			UPDATE timers SET fire_at = clock_timestamp() +
			    make_interval(secs => least(p_retry_s, 5))
			WHERE timer_id = t.timer_id;
			v_rows := ARRAY[gridd_drow('retry', SQLSTATE, NULL,
			    NULL, t.timer_id)];
		END;
		RETURN QUERY SELECT * FROM unnest(v_rows);
	END LOOP;
	IF v_n >= p_limit THEN
		RETURN NEXT gridd_drow('more', NULL, v_n, NULL, NULL);
	END IF;
END
$$;

-- Worker actions ------------------------------------------------------------

-- ACCEPT, DECLINE, START, RESOLVE by the assignment's own worker.
-- p_key (NULL = none) makes the action take effect once: a replay with the
-- same key, assignment and action answers 'replay' whatever the state is
-- now; the key on another assignment or action is a conflict.
CREATE FUNCTION gridd_assignment_action(p_worker text, p_assignment bigint,
    p_action text, p_note text, p_lon double precision,
    p_lat double precision, p_key text, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	a assignments%ROWTYPE;
	k assignment_actions%ROWTYPE;
	v_from text;
	v_to text;
	v_status text;
	v_inc_status text;
BEGIN
	SELECT * INTO a FROM assignments WHERE assignment_id = p_assignment
	FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		RETURN NEXT gridd_drow('not_found', 'no such assignment', NULL,
		    NULL, p_assignment);
		RETURN;
	END IF;
	IF a.worker_id <> p_worker THEN
		RETURN NEXT gridd_drow('forbidden',
		    'not this worker''s assignment', NULL, NULL, p_assignment);
		RETURN;
	END IF;
	IF p_key IS NOT NULL THEN
		SELECT * INTO k FROM assignment_actions
		WHERE worker_id = p_worker AND idempotency_key = p_key;
		IF FOUND THEN
			IF k.assignment_id = p_assignment AND
			    k.action = p_action THEN
				RETURN NEXT gridd_drow('replay', a.state, NULL,
				    a.incident_id, p_assignment);
			ELSE
				RETURN NEXT gridd_drow('conflict',
				    'idempotency_key already used for '
				    'another action', NULL, a.incident_id,
				    p_assignment);
			END IF;
			RETURN;
		END IF;
	END IF;
	v_from := CASE p_action WHEN 'accept' THEN 'offered'
	    WHEN 'decline' THEN 'offered' WHEN 'start' THEN 'accepted'
	    WHEN 'resolve' THEN 'in_progress' END;
	v_to := CASE p_action WHEN 'accept' THEN 'accepted'
	    WHEN 'decline' THEN 'declined' WHEN 'start' THEN 'in_progress'
	    WHEN 'resolve' THEN 'resolved' END;
	IF v_from IS NULL THEN
		RAISE EXCEPTION 'gridd_assignment_action: bad action %',
		    p_action;
	END IF;
	IF a.state <> v_from THEN
		RETURN NEXT gridd_drow('conflict', 'assignment is ' || a.state ||
		    ', ' || p_action || ' needs ' || v_from, NULL,
		    a.incident_id, p_assignment);
		RETURN;
	END IF;
	SELECT status INTO v_inc_status FROM incidents
	WHERE incident_id = a.incident_id FOR NO KEY UPDATE;
	IF v_inc_status IN ('closed', 'cancelled') THEN
		RETURN NEXT gridd_drow('conflict', 'incident is ' ||
		    v_inc_status, NULL, a.incident_id, p_assignment);
		RETURN;
	END IF;
	IF p_key IS NOT NULL THEN
		INSERT INTO assignment_actions (worker_id, idempotency_key,
		    assignment_id, community_id, action)
		VALUES (p_worker, p_key, p_assignment, a.community_id, p_action)
		ON CONFLICT DO NOTHING;
		IF NOT FOUND THEN
			RETURN NEXT gridd_drow('conflict',
			    'idempotency_key already used for another action',
			    NULL, a.incident_id, p_assignment);
			RETURN;
		END IF;
	END IF;

	UPDATE assignments SET state = v_to,
	    accepted_at = CASE WHEN v_to = 'accepted' THEN now()
		ELSE accepted_at END,
	    started_at = CASE WHEN v_to = 'in_progress' THEN now()
		ELSE started_at END,
	    resolved_at = CASE WHEN v_to = 'resolved' THEN now()
		ELSE resolved_at END,
	    note = CASE WHEN p_note IS NOT NULL AND
		v_to IN ('declined', 'resolved') THEN p_note ELSE note END,
	    resolve_lon = CASE WHEN v_to = 'resolved' THEN p_lon
		ELSE resolve_lon END,
	    resolve_lat = CASE WHEN v_to = 'resolved' THEN p_lat
		ELSE resolve_lat END
	WHERE assignment_id = p_assignment;
	IF v_from = 'offered' THEN
		DELETE FROM timers WHERE kind = 'offer_expiry'
		    AND ref_id = p_assignment;
	END IF;
	RETURN NEXT gridd_drow('ok', v_to, NULL, a.incident_id, p_assignment);
	IF v_to = 'declined' THEN
		-- The next candidate at once, in this transaction.
		RETURN QUERY SELECT * FROM gridd_dispatch_one(a.incident_id,
		    p_timeout_s, p_max_offers, p_max_age_s, p_retry_s,
		    p_origin);
		RETURN;
	END IF;
	v_status := v_to;	-- accepted, in_progress, resolved
	UPDATE incidents SET status = v_status, updated_at = now()
	WHERE incident_id = a.incident_id;
	PERFORM gridd_emit_event(a.incident_id, v_status, p_worker,
	    CASE WHEN v_to = 'resolved' THEN coalesce(p_note, '') ELSE '' END);
END
$$;

-- VerifyIncident: the owning department (for assist work the funder, 费随事转;
-- otherwise the first source) closes a resolved incident or sends it back
-- to dispatch (status 'new', a new round, offered again at once).
CREATE FUNCTION gridd_verify_incident(p_department text, p_incident bigint,
    p_accept boolean, p_note text, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	inc incidents%ROWTYPE;
	v_owner text;
BEGIN
	SELECT * INTO inc FROM incidents WHERE incident_id = p_incident
	FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		RETURN NEXT gridd_drow('not_found', 'no such incident', NULL,
		    p_incident, NULL);
		RETURN;
	END IF;
	v_owner := CASE WHEN inc.list = 'assist' AND
	    inc.funder_department IS NOT NULL THEN inc.funder_department
	    ELSE inc.owner_department END;
	IF v_owner IS DISTINCT FROM p_department THEN
		RETURN NEXT gridd_drow('forbidden',
		    'only the owning department verifies', NULL, p_incident,
		    NULL);
		RETURN;
	END IF;
	IF inc.status <> 'resolved' THEN
		RETURN NEXT gridd_drow('conflict', 'incident is ' || inc.status ||
		    ', verify needs resolved', NULL, p_incident, NULL);
		RETURN;
	END IF;
	IF p_accept THEN
		UPDATE incidents SET status = 'closed', closed_at = now(),
		    updated_at = now()
		WHERE incident_id = p_incident;
		PERFORM gridd_emit_event(p_incident, 'closed', NULL,
		    coalesce(p_note, ''));
		RETURN NEXT gridd_drow('ok', 'closed', NULL, p_incident, NULL);
		RETURN;
	END IF;
	UPDATE incidents SET status = 'new', round_at = now(),
	    next_try_at = NULL, updated_at = now()
	WHERE incident_id = p_incident;
	PERFORM gridd_emit_event(p_incident, 'new', NULL,
	    'reopened: ' || coalesce(p_note, ''));
	RETURN NEXT gridd_drow('ok', 'new', NULL, p_incident, NULL);
	RETURN QUERY SELECT * FROM gridd_dispatch_one(p_incident, p_timeout_s,
	    p_max_offers, p_max_age_s, p_retry_s, p_origin);
END
$$;

-- Check-ins ---------------------------------------------------------------------

-- Records presence and, when given, the position (its time is the
-- position's age for the distance rule), keeps the newest p_history rows of
-- history per worker, and when the worker comes on duty makes the escalated
-- incidents of its community due for a retry at once.  Returns
-- (came_on_duty, community_id), no row for an unknown worker.
CREATE FUNCTION gridd_worker_checkin(p_worker text, p_lon double precision,
    p_lat double precision, p_on_duty boolean, p_history integer)
RETURNS TABLE (came_on_duty boolean, community text)
LANGUAGE plpgsql
AS $$
DECLARE
	v_was boolean;
	v_comm text;
	v_cut bigint;
BEGIN
	SELECT w.on_duty, w.community_id INTO v_was, v_comm FROM workers w
	WHERE w.worker_id = p_worker FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		RETURN;
	END IF;
	UPDATE workers w SET on_duty = p_on_duty,
	    last_lon = coalesce(p_lon, w.last_lon),
	    last_lat = coalesce(p_lat, w.last_lat),
	    last_checkin_at = CASE WHEN p_lon IS NOT NULL THEN now()
		ELSE w.last_checkin_at END,
	    updated_at = now()
	WHERE w.worker_id = p_worker;
	INSERT INTO worker_checkins (worker_id, community_id, lon, lat,
	    on_duty)
	VALUES (p_worker, v_comm, p_lon, p_lat, p_on_duty)
	RETURNING checkin_id INTO v_cut;
	SELECT h.checkin_id INTO v_cut FROM worker_checkins h
	WHERE h.worker_id = p_worker
	ORDER BY h.checkin_id DESC OFFSET greatest(p_history, 1) - 1 LIMIT 1;
	IF v_cut IS NOT NULL THEN
		DELETE FROM worker_checkins h
		WHERE h.worker_id = p_worker AND h.checkin_id < v_cut;
	END IF;
	IF p_on_duty AND NOT v_was THEN
		-- Rows locked right now are being dispatched anyway.
		UPDATE incidents i SET next_try_at = now()
		WHERE i.incident_id IN (SELECT e.incident_id FROM incidents e
		    WHERE e.community_id = v_comm AND e.route = 'worker'
		    AND e.status = 'escalated'
		    FOR NO KEY UPDATE SKIP LOCKED);
	END IF;
	came_on_duty := p_on_duty AND NOT v_was;
	community := v_comm;
	RETURN NEXT;
END
$$;

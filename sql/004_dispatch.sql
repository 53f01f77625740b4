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
--   gridd_assignment_actions(the same as arrays, settings...)   several
--   gridd_verify_incident(department, incident, accept, note, settings...)
--   gridd_worker_checkin(worker, lon, lat, on_duty, history)
--   gridd_offers_v                                 offers as the wire shows them
--
-- and gridd_dispatch_pushed(ids), which gridd_feed_push calls to offer the
-- new incidents for workers in the push's own transaction (with the
-- calling process's settings from dispatch_origins, which
-- gridd_dispatch_scan keeps).
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
-- (taken by gridd_emit_events_to last, through gridd_dispatch_emit; a
-- batch of actions writes all its events in one call at its end).  Rows
-- are locked FOR NO KEY UPDATE, the
-- lock an UPDATE takes: it serialises dispatchers just as well, and does not
-- block the FOR KEY SHARE that foreign-key checks take (an events row
-- written by another transaction for a locked incident, an assignment for a
-- locked worker), which would otherwise close a cycle through
-- department_seq.  Workers are locked with SKIP LOCKED:
-- a worker row held by another transaction (another process offering to
-- the same worker, a check-in, an answer changing its open_count) makes
-- the item 'retry' instead of waiting.  An answer that changes a worker's
-- load locks the worker (open_count) after its assignment and incident, as
-- the order says; ACCEPT and START leave the worker's row alone.
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

-- Open assignments per worker (offered, accepted, in_progress), kept by a
-- trigger on assignments in the transaction that changes them, so that
-- choosing among thousands of workers reads a column instead of counting.
-- An action that leaves the count alone (ACCEPT, START) does not touch the
-- worker's row; one that changes it updates the row the dispatcher already
-- locked (an offer) or takes its lock after the assignment's and the
-- incident's, in the locking order below.
ALTER TABLE workers ADD COLUMN open_count integer NOT NULL DEFAULT 0
	CHECK (open_count >= 0);

CREATE FUNCTION gridd_open_state(p_state text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
	SELECT p_state IN ('offered', 'accepted', 'in_progress')
$$;

CREATE FUNCTION gridd_open_count_tg()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
	v_old text;
	v_new text;
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') AND gridd_open_state(OLD.state) THEN
		v_old := OLD.worker_id;
	END IF;
	IF TG_OP IN ('INSERT', 'UPDATE') AND gridd_open_state(NEW.state) THEN
		v_new := NEW.worker_id;
	END IF;
	IF v_old IS NOT DISTINCT FROM v_new THEN
		RETURN NULL;
	END IF;
	IF v_old IS NOT NULL THEN
		UPDATE workers SET open_count = greatest(open_count - 1, 0)
		WHERE worker_id = v_old;
	END IF;
	IF v_new IS NOT NULL THEN
		UPDATE workers SET open_count = open_count + 1
		WHERE worker_id = v_new;
	END IF;
	RETURN NULL;
END
$$;

CREATE TRIGGER assignments_open_count AFTER INSERT OR DELETE OR
	UPDATE OF state, worker_id ON assignments
	FOR EACH ROW EXECUTE FUNCTION gridd_open_count_tg();

UPDATE workers w SET open_count = o.n
FROM (SELECT worker_id, count(*) AS n FROM assignments
    WHERE gridd_open_state(state) GROUP BY worker_id) o
WHERE o.worker_id = w.worker_id;

-- The [dispatch] settings of each running gridd process, under the
-- application_name its database sessions carry: the dispatch made in a
-- feed's transaction (gridd_dispatch_pushed) runs with the settings of the
-- process that sent it.  Each process writes its row with
-- every scan (so a reload shows within scan_interval_s); rows not written
-- for a day are from processes long gone.
CREATE TABLE dispatch_origins (
	app_name	text PRIMARY KEY,
	instance	text NOT NULL CHECK (instance ~ '^[^[:space:]]+$'
			    AND length(instance) <= 300),
	offer_timeout_s	integer NOT NULL CHECK (offer_timeout_s > 0),
	max_offers	integer NOT NULL CHECK (max_offers > 0),
	checkin_max_age_s integer NOT NULL CHECK (checkin_max_age_s > 0),
	retry_s		integer NOT NULL CHECK (retry_s > 0),
	batch		integer NOT NULL CHECK (batch > 0),
	updated_at	timestamptz NOT NULL DEFAULT now()
);

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

-- Events for status changes made here, set-based: one events row per source
-- department of each incident (in the departments' order, as
-- gridd_emit_event writes them), with each department's own ext_id read
-- through the incident's sources, then gridd_emit_events_to takes the
-- department_seq locks once, last, in department order.
CREATE FUNCTION gridd_dispatch_emit(p_incidents bigint[], p_statuses text[],
    p_workers text[], p_notes text[])
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	v_inc bigint[];
	v_dep text[];
	v_st text[];
	v_wk text[];
	v_nt text[];
	v_ext text[];
BEGIN
	IF coalesce(cardinality(p_incidents), 0) = 0 THEN
		RETURN;
	END IF;
	-- "source_kind || ''": the lookup goes through the sources of one
	-- incident (incident_sources_incident_idx), never through all of a
	-- department's sources.
	SELECT array_agg(u.inc ORDER BY u.ord, d.dept),
	    array_agg(d.dept ORDER BY u.ord, d.dept),
	    array_agg(u.st ORDER BY u.ord, d.dept),
	    array_agg(u.wk ORDER BY u.ord, d.dept),
	    array_agg(u.nt ORDER BY u.ord, d.dept),
	    array_agg(coalesce(e.ext_id, '') ORDER BY u.ord, d.dept)
	INTO v_inc, v_dep, v_st, v_wk, v_nt, v_ext
	FROM unnest(p_incidents, p_statuses, p_workers, p_notes)
	    WITH ORDINALITY AS u(inc, st, wk, nt, ord)
	JOIN incidents i ON i.incident_id = u.inc
	CROSS JOIN LATERAL (SELECT DISTINCT x AS dept
	    FROM unnest(i.departments) x) d
	LEFT JOIN LATERAL (
		SELECT s.ext_id FROM incident_sources s
		WHERE s.incident_id = u.inc AND s.source_id = d.dept
		    AND s.source_kind || '' = 'department'
		ORDER BY s.pushed_at, s.ext_id LIMIT 1
	) e ON true;
	IF v_inc IS NULL THEN
		RETURN;
	END IF;
	PERFORM gridd_emit_events_to(v_inc, v_dep, v_st, v_wk, v_nt, v_ext);
END
$$;

-- One status change, as gridd_emit_event, through gridd_dispatch_emit.
CREATE FUNCTION gridd_dispatch_emit1(p_incident bigint, p_status text,
    p_worker text, p_note text)
RETURNS void
LANGUAGE sql
AS $$
	SELECT gridd_dispatch_emit(ARRAY[p_incident], ARRAY[p_status],
	    ARRAY[p_worker], ARRAY[p_note])
$$;

-- A NOTIFY payload field: backslash, tab, newline and carriage return
-- escaped, so that fields split on tabs and lines on newlines.
CREATE FUNCTION gridd_notify_field(p text)
RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
	SELECT replace(replace(replace(replace(coalesce(p, ''), '\', '\\'),
	    E'\t', '\t'), E'\n', '\n'), E'\r', '\r')
$$;

-- The gridd_offers NOTIFY for a new offer, delivered at commit to every
-- process.  First line "ASSIGNMENT WORKER ORIGIN EXPIRES_MS INCIDENT HOW":
-- the origin process made it, by a statement whose rows it reads (HOW
-- "statement") or inside a push's transaction ("commit", from
-- gridd_dispatch_pushed: the origin has not seen it yet, and counts it when
-- the NOTIFY arrives); every
-- process wakes for the expiry, so that it fires on time even if the
-- origin died.  Second line: the offer itself, tab-separated (incident,
-- reason, state, cell, task type, list, matter, summary, lon, lat,
-- address, deadline_ms, departments, created_ms), so that a process
-- holding the worker's connection pushes it without reading it back; left
-- out when the payload would pass PostgreSQL's 8000-byte limit.
CREATE FUNCTION gridd_offer_notify(p_assignment bigint, p_origin text,
    p_mark text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
	v_head text;
	v_body text;
BEGIN
	SELECT v.assignment_id || ' ' || v.worker_id || ' ' || p_origin ||
	    ' ' || v.expires_ms || ' ' || v.incident_id || ' ' || p_mark,
	    concat_ws(E'\t', v.incident_id, gridd_notify_field(v.reason),
		gridd_notify_field(v.state), gridd_notify_field(v.cell_id),
		gridd_notify_field(v.task_type), gridd_notify_field(v.list),
		gridd_notify_field(v.matter), gridd_notify_field(v.summary),
		coalesce(v.lon::text, ''), coalesce(v.lat::text, ''),
		gridd_notify_field(v.address),
		coalesce(v.deadline_ms::text, ''),
		gridd_notify_field(v.departments),
		coalesce(v.created_ms::text, ''))
	INTO v_head, v_body
	FROM gridd_offers_v v WHERE v.assignment_id = p_assignment;
	IF v_head IS NULL THEN
		RETURN;
	END IF;
	IF octet_length(v_head) + octet_length(v_body) < 7900 THEN
		v_head := v_head || E'\n' || v_body;
	END IF;
	PERFORM pg_notify('gridd_offers', v_head);
END
$$;

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
CREATE FUNCTION gridd_dispatch_choose(p_incident bigint,
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
					-- to a worse candidate.  Not in a
					-- push ('commit' mode), which must
					-- not leave its incidents behind:
					-- there the next candidate takes it,
					-- as in the full pass.
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

CREATE FUNCTION gridd_dispatch_one(p_incident bigint, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE sql
AS $$
	SELECT * FROM gridd_dispatch_choose(p_incident, p_timeout_s,
	    p_max_offers, p_max_age_s, p_retry_s, p_origin, 'emit')
$$;

-- Dispatches one incident in its own subtransaction (a failure leaves it
-- due again for the scan), with the events left to the caller: the rows
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

-- The incidents named (from NOTIFY gridd_dispatch), each claimed with SKIP
-- LOCKED: an incident another process is dispatching right now is its.
CREATE FUNCTION gridd_dispatch_incidents(p_ids bigint[],
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

-- Whatever is due: new incidents whose NOTIFY was missed, escalated ones up
-- for a retry, items that failed or met a busy worker.
CREATE FUNCTION gridd_dispatch_scan(p_limit integer,
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

-- Dispatch at the feed's commit -------------------------------------------------

-- Dispatch at the push ---------------------------------------------------------

-- The new incidents for workers that a push created, offered in the push's
-- own transaction (gridd_feed_push calls this before it writes any event,
-- so no worker is chosen while a department's sequence row is held): the
-- offer then commits with the push, costs no commit of its own, and its
-- NOTIFY reaches the processes as the push's reply leaves.  At most
-- dispatch_batch of them, in id order: a group commit of a thousand items
-- must not hold its commit for seconds; the rest go the NOTIFY way
-- (gridd_dispatch), in parallel statements.  Workers are taken with SKIP
-- LOCKED, so the push never waits for another transaction here.  The
-- events come back as arrays for gridd_dispatch_emit.  Only a gridd
-- process (one with a dispatch_origins row for its application_name) does
-- this; any failure undoes the offers (one subtransaction) and leaves the
-- incidents to NOTIFY gridd_dispatch and the scan.
CREATE FUNCTION gridd_dispatch_pushed(p_ids bigint[], OUT o_inc bigint[],
    OUT o_st text[], OUT o_wk text[], OUT o_nt text[])
LANGUAGE plpgsql
AS $$
DECLARE
	o dispatch_origins%ROWTYPE;
	r gridd_dispatch_row;
	v_id bigint;
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
	BEGIN
		FOR v_id IN SELECT i.incident_id FROM incidents i
		    WHERE i.incident_id = ANY (p_ids)
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
		RAISE WARNING 'gridd dispatch at push failed: % (%)',
		    SQLERRM, SQLSTATE;
		o_inc := '{}';
		o_st := '{}';
		o_wk := '{}';
		o_nt := '{}';
	END;
END
$$;

-- A process's settings for gridd_dispatch_pushed (see dispatch_origins);
-- written with every scan.
CREATE FUNCTION gridd_dispatch_publish(p_batch integer, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS void
LANGUAGE sql
AS $$
	INSERT INTO dispatch_origins AS d (app_name, instance, offer_timeout_s,
	    max_offers, checkin_max_age_s, retry_s, batch)
	VALUES (current_setting('application_name'), p_origin, p_timeout_s,
	    p_max_offers, p_max_age_s, p_retry_s, p_batch)
	ON CONFLICT (app_name) DO UPDATE SET instance = EXCLUDED.instance,
	    offer_timeout_s = EXCLUDED.offer_timeout_s,
	    max_offers = EXCLUDED.max_offers,
	    checkin_max_age_s = EXCLUDED.checkin_max_age_s,
	    retry_s = EXCLUDED.retry_s, batch = EXCLUDED.batch,
	    updated_at = now();
	DELETE FROM dispatch_origins
	WHERE updated_at < now() - interval '1 day';
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
	PERFORM gridd_dispatch_emit1(p_incident, 'escalated', NULL,
	    'sla overdue');
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
--
-- p_collect: the status change's event comes back as an 'event' row
-- (detail = status, worker_id, summary = note) for the caller to write,
-- and a DECLINE's next offer leaves its event to the caller too
-- (gridd_assignment_actions).
CREATE FUNCTION gridd_assignment_act(p_worker text, p_assignment bigint,
    p_action text, p_note text, p_lon double precision,
    p_lat double precision, p_key text, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text, p_collect boolean)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	ev gridd_dispatch_row;
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
		RETURN QUERY SELECT * FROM gridd_dispatch_choose(a.incident_id,
		    p_timeout_s, p_max_offers, p_max_age_s, p_retry_s,
		    p_origin, CASE WHEN p_collect THEN 'collect'
			ELSE 'emit' END);
		RETURN;
	END IF;
	v_status := v_to;	-- accepted, in_progress, resolved
	UPDATE incidents SET status = v_status, updated_at = now()
	WHERE incident_id = a.incident_id;
	IF p_collect THEN
		ev := gridd_drow('event', v_status, NULL, a.incident_id,
		    p_assignment);
		ev.worker_id := p_worker;
		ev.summary := CASE WHEN v_to = 'resolved'
		    THEN coalesce(p_note, '') ELSE '' END;
		RETURN NEXT ev;
	ELSE
		PERFORM gridd_dispatch_emit1(a.incident_id, v_status, p_worker,
		    CASE WHEN v_to = 'resolved' THEN coalesce(p_note, '')
			ELSE '' END);
	END IF;
END
$$;

CREATE FUNCTION gridd_assignment_action(p_worker text, p_assignment bigint,
    p_action text, p_note text, p_lon double precision,
    p_lat double precision, p_key text, p_timeout_s integer,
    p_max_offers integer, p_max_age_s integer, p_retry_s integer,
    p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE sql
AS $$
	SELECT * FROM gridd_assignment_act(p_worker, p_assignment, p_action,
	    p_note, p_lon, p_lat, p_key, p_timeout_s, p_max_offers,
	    p_max_age_s, p_retry_s, p_origin, false)
$$;

-- Several workers' actions in one transaction and one commit (the daemon
-- gathers those that arrive while the previous batch commits): each as
-- gridd_assignment_action, in assignment order (the order that keeps
-- batches from deadlocking each other on the assignment rows), every row
-- tagged in n with the item's 1-based position; the events of all items
-- are written last, in one call.  An item that fails fails the batch,
-- which the daemon then runs item by item.
CREATE FUNCTION gridd_assignment_actions(p_workers text[],
    p_assignments bigint[], p_actions text[], p_notes text[],
    p_lons double precision[], p_lats double precision[], p_keys text[],
    p_timeout_s integer, p_max_offers integer, p_max_age_s integer,
    p_retry_s integer, p_origin text)
RETURNS SETOF gridd_dispatch_row
LANGUAGE plpgsql
AS $$
DECLARE
	r gridd_dispatch_row;
	v_i integer;
	v_inc bigint[] := '{}';
	v_st text[] := '{}';
	v_wk text[] := '{}';
	v_nt text[] := '{}';
BEGIN
	FOR v_i IN SELECT u.i FROM unnest(p_assignments) WITH ORDINALITY
	    AS u(aid, i) ORDER BY u.aid, u.i
	LOOP
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
	-- A big matter handed back to its department (route department,
	-- status referred) never reaches a worker: the department closes it
	-- when it has dealt with it. There is no dispatch to reopen it into.
	IF inc.status = 'referred' AND inc.route = 'department' THEN
		IF NOT p_accept THEN
			RETURN NEXT gridd_drow('conflict', 'incident is referred '
			    'to its department: accept=true closes it, there is '
			    'no dispatch to reopen it into', NULL, p_incident,
			    NULL);
			RETURN;
		END IF;
	ELSIF inc.status <> 'resolved' THEN
		RETURN NEXT gridd_drow('conflict', 'incident is ' || inc.status ||
		    ', verify needs resolved', NULL, p_incident, NULL);
		RETURN;
	END IF;
	IF p_accept THEN
		UPDATE incidents SET status = 'closed', closed_at = now(),
		    updated_at = now()
		WHERE incident_id = p_incident;
		PERFORM gridd_dispatch_emit1(p_incident, 'closed', NULL,
		    coalesce(p_note, ''));
		RETURN NEXT gridd_drow('ok', 'closed', NULL, p_incident, NULL);
		RETURN;
	END IF;
	UPDATE incidents SET status = 'new', round_at = now(),
	    next_try_at = NULL, updated_at = now()
	WHERE incident_id = p_incident;
	PERFORM gridd_dispatch_emit1(p_incident, 'new', NULL,
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

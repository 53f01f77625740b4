-- 018_events_one_statement.sql - gridd_emit_events_to in one statement.
--
-- The migration runner wraps this file in one transaction.
--
-- Why: every push that makes a new incident or joins a department to one
-- writes events, and 003_feed.sql's gridd_emit_events_to ran four
-- statements for it: create the departments' sequence rows, lock them,
-- bump them and insert the events, then notify.  Each statement starts
-- and ends an executor and goes through PL/pgSQL, a fixed cost paid by
-- every lane transaction whatever its size (see the README, Benchmarks:
-- the open loop's transactions last several times that fixed part).
-- Here one INSERT ... ON CONFLICT DO UPDATE creates, locks and bumps each
-- department's row at once, and the same statement inserts the events
-- and queues the notifications.
--
-- What stays as it was:
--   - the rows are locked in department order (the INSERT reads its rows
--     sorted and takes each row's lock as it inserts or updates it), so
--     two transactions touching the same departments queue instead of
--     deadlocking, and the lock is held to commit: the numbers stay
--     gap-free and committed in order;
--   - a department's events are numbered in array order;
--   - an item without a department (a shorter p_departments) writes no
--     event, as the join with the sequence rows dropped it before;
--   - one NOTIFY per department (PostgreSQL folds a transaction's equal
--     notifications into one, and sends them all at commit, so where in
--     the transaction they are queued does not matter).  pg_notify is
--     called from the RETURNING list of the sequence rows, which returns
--     one row per department; a data-modifying WITH query runs to its
--     end whether or not the main query reads all its rows.
CREATE OR REPLACE FUNCTION gridd_emit_events_to(p_incidents bigint[],
    p_departments text[], p_statuses text[], p_workers text[],
    p_notes text[], p_exts text[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
	IF coalesce(cardinality(p_incidents), 0) = 0 THEN
		RETURN;
	END IF;
	WITH items AS (
		SELECT u.inc, u.dept, u.status, u.worker, u.note, u.ord,
		    p_exts[u.ord] AS ext,
		    row_number() OVER (PARTITION BY u.dept ORDER BY u.ord) AS rn,
		    count(*) OVER (PARTITION BY u.dept) AS cnt
		FROM unnest(p_incidents, p_departments, p_statuses, p_workers,
		    p_notes) WITH ORDINALITY AS u(inc, dept, status, worker,
		    note, ord)
	), bump AS (
		INSERT INTO department_seq AS s (department_id, last_seq)
		SELECT c.dept, c.n
		FROM (SELECT items.dept, count(*) AS n FROM items
		    WHERE items.dept IS NOT NULL
		    GROUP BY items.dept) c
		ORDER BY c.dept
		ON CONFLICT (department_id) DO UPDATE
		    SET last_seq = s.last_seq + excluded.last_seq
		RETURNING s.department_id, s.last_seq,
		    pg_notify('gridd_events', s.department_id)
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
END
$$;

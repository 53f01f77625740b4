-- 015_open_count_insert.sql - the workers' open counts follow new
-- assignments by one statement per INSERT, not one per row.
--
-- The migration runner wraps this file in one transaction.
--
-- gridd_open_count_tg (004_dispatch.sql) ran an UPDATE of the worker for
-- each assignment inserted.  The set pass of a push (014_offer_set.sql)
-- inserts all of its offers with one statement, and that trigger then ran
-- one UPDATE per offer: 0.178 ms each in pg_stat_statements (track = all)
-- during `scripts/bench dispatch`, 2,310 calls and 0.41 s of a 5 s run in
-- which the dispatching department's transactions were busy 0.98 s of
-- every second.  A statement trigger reads the inserted rows from a
-- transition table and updates each worker once, by its number of open
-- assignments among them.  Its lock order is the caller's: every caller
-- holds the rows of the workers it offers to (FOR NO KEY UPDATE, taken
-- with SKIP LOCKED) before it inserts.  Updates and deletes keep the row
-- trigger: each changes one assignment.
CREATE FUNCTION gridd_open_count_insert_tg()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
	UPDATE workers w SET open_count = w.open_count + n.n
	FROM (SELECT a.worker_id, count(*)::integer AS n
	    FROM gridd_new_assignments a
	    WHERE gridd_open_state(a.state)
	    GROUP BY a.worker_id) n
	WHERE w.worker_id = n.worker_id;
	RETURN NULL;
END
$$;

DROP TRIGGER assignments_open_count ON assignments;
CREATE TRIGGER assignments_open_count AFTER DELETE OR
	UPDATE OF state, worker_id ON assignments
	FOR EACH ROW EXECUTE FUNCTION gridd_open_count_tg();
CREATE TRIGGER assignments_open_count_insert AFTER INSERT ON assignments
	REFERENCING NEW TABLE AS gridd_new_assignments
	FOR EACH STATEMENT EXECUTE FUNCTION gridd_open_count_insert_tg();

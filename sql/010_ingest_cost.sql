-- 010_ingest_cost.sql - two costs that every item pushed paid: the merge
-- search's index probe, and the report's day number in the triggers that
-- keep the roll-ups honest.
--
-- The migration runner wraps this file in one transaction.

-- The merge search (gridd_feed_push, 003_feed.sql) probes the open
-- incidents once per item, with a box of twice the merge radius.  Over a
-- GiST index of points that probe checks every entry of the leaf pages it
-- reaches; SP-GiST's quad-tree splits the plane instead, so it reaches
-- fewer entries.  Measured on the bench's open incidents (7,000 after an
-- ingest run): 390 probes took 10.5-12 ms through GiST and 6-9 ms through
-- SP-GiST, and inserts of points cost 5 us against 3.6 us a row.  Many
-- incidents at one point (pushed by building) do not degrade it: 40,000
-- points on 20 spots probed as fast as through GiST.  Same name, same
-- predicate, same operator (&&): the statements that use it are unchanged.
DROP INDEX incidents_open_geom_idx;
CREATE INDEX incidents_open_geom_idx ON incidents USING spgist (geom)
	WHERE status IN ('new', 'dispatched', 'accepted', 'in_progress',
	    'referred', 'escalated') AND located_by <> 'dept_code';

-- The report's UTC day number, as 005_report.sql defines it, but written
-- with immutable functions only, so that the planner inlines it.  There,
-- extract(epoch FROM timestamptz) is STABLE (some fields depend on the
-- session's time zone), and an IMMUTABLE SQL function that calls a STABLE
-- one is never inlined: every use was a call of its own, two for each row
-- that an incident or assignment update, or a statement trigger's
-- transition table, ran through (about 3.5 us each; 67,000 calls in one
-- 5 s ingest run).  The value at UTC offset zero has the same epoch as the
-- instant itself, whatever the session's TimeZone, so the numbers do not
-- change and the roll-ups already made stay valid.
CREATE OR REPLACE FUNCTION gridd_report_day(p_at timestamptz)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT floor(extract(epoch FROM timezone(interval '0', p_at)) /
    86400)::integer $$;

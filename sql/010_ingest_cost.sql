-- 010_ingest_cost.sql - the report's day number, which the triggers that
-- keep the roll-ups honest computed for every row an ingest or a status
-- change wrote, is now inlined by the planner.
--
-- The migration runner wraps this file in one transaction.
--
-- As 005_report.sql defines it, but written with immutable functions only.
-- There, extract(epoch FROM timestamptz) is STABLE (some fields depend on
-- the session's time zone), and an IMMUTABLE SQL function that calls a
-- STABLE one is never inlined: every use was a call of its own, two for
-- each row that an incident or assignment update, or a statement
-- trigger's transition table, ran through (about 3.5 us each; 67,000 calls
-- in one 5 s ingest run).  The value at UTC offset zero has the same epoch
-- as the instant itself, whatever the session's TimeZone, so the numbers
-- do not change and the roll-ups already made stay valid.
--
-- Tried and not kept: the merge search's index (incidents_open_geom_idx)
-- as SP-GiST.  Its probes were faster than GiST's on the bench's fresh
-- table (390 probes: 6-9 ms against 10.5-12 ms), but an SP-GiST scan never
-- marks the entries of dead rows as it meets them, as a GiST scan does,
-- and every status change of an open incident leaves one behind.  2,000
-- probes into 20,000 open points, vacuum held off: 27-70 ms (SP-GiST)
-- against 68-92 ms (GiST) fresh, 54-56 against 78-85 after three status
-- changes per row, 114-117 against 89-121 after fifteen, and SP-GiST's
-- figure keeps growing until autovacuum comes, which on a large table is
-- seldom.
CREATE OR REPLACE FUNCTION gridd_report_day(p_at timestamptz)
RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT floor(extract(epoch FROM timezone(interval '0', p_at)) /
    86400)::integer $$;

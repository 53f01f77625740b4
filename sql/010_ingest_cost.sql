-- 010_ingest_cost.sql - the report's day number, which the triggers that
-- keep the roll-ups honest computed for every row an ingest or a status
-- change wrote, is now inlined by the planner; and the ingest and dispatch
-- functions keep their index probes whatever the statistics say (below).
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

-- Plans made while a table looked empty.  Autovacuum analyzes a table when
-- it likes: a new city's empty incidents, the hour after a purge, or (in
-- the bench) just after a reset.  The statements of these functions are
-- planned once per connection and the plans kept (gridd_feed_push forces
-- its generic plans; PL/pgSQL goes generic after five calls), so a plan
-- made while statistics said "empty" and the table was a page or two
-- reads the whole table for each item's duplicate and merge probe, or for
-- each offer's past assignments, and keeps doing so as a storm fills it,
-- until the next autoanalyze invalidates it: one bench ingest run fell
-- from about 7,000 to 314 items/s, and dispatch runs to transactions of 9
-- items taking 1.6 s.  Every table access of these functions is a probe
-- by key or box with an index behind it, so sequential scans are
-- forbidden outright while they run (a table with no index at all is
-- still read whole).  A migration that redefines one of them must say
-- SET enable_seqscan = off again; the plan tests in test_dispatch.py fail
-- otherwise.
--
-- Not closed by this: the planner may still read a table whole by an
-- index instead (a full index scan is what is left when sequential scans
-- are off), and did so once for the push's duplicate probe, which it had
-- pulled up out of its LATERAL subquery into a join with the items (a
-- bench run's plan statement at 1.3-2.2 s for a few hundred items).  The
-- way out is a plan that is not made while the tables are empty.
ALTER FUNCTION gridd_dispatch_choose(bigint, integer, integer, integer,
    integer, text, text) SET enable_seqscan = off;
ALTER FUNCTION gridd_dispatch_incidents(bigint[], integer, integer, integer,
    integer, text) SET enable_seqscan = off;
ALTER FUNCTION gridd_dispatch_scan(integer, integer, integer, integer,
    integer, integer, text) SET enable_seqscan = off;
ALTER FUNCTION gridd_dispatch_scan(integer, integer, integer, integer,
    integer, text) SET enable_seqscan = off;
ALTER FUNCTION gridd_assignment_act(text, bigint, text, text,
    double precision, double precision, text, integer, integer, integer,
    integer, text, boolean) SET enable_seqscan = off;
ALTER FUNCTION gridd_worker_checkin(text, double precision, double precision,
    boolean, integer) SET enable_seqscan = off;
ALTER FUNCTION gridd_feed_push(double precision, integer, bigint, text[],
    text[], text[], text[], text[], text[], text[], text[], integer[], text[],
    integer[], bigint[], double precision[], double precision[], text[],
    text[], text[], text[], text[], text[], text[], text[], text[], text[],
    text[], text[], text[], text[], double precision[], double precision[])
    SET enable_seqscan = off;

-- 011_push_lock_hash.sql - the push's merge locks no longer build a 3 MB
-- hash table for every call.
--
-- The migration runner wraps this file in one transaction.
--
-- gridd_feed_push takes its merge locks from the distinct (task type, tile)
-- keys of its items (003_feed.sql).  Its plan is generic (it forces
-- generic plans), so the planner sees neither the arrays' lengths nor the
-- tile ranges: it guesses the rows of unnest and of each generate_series,
-- expects 400,000 distinct keys, and sizes the DISTINCT's hash table for
-- them as far as work_mem allows.  Every call, for one item or
-- five thousand, then allocated and zeroed that table (3,097 kB at the
-- default work_mem) and walked all of its buckets at the end: 0.17 ms of
-- a 1.9 ms one-item push in EXPLAIN ANALYZE, and a fifth of the backend's
-- CPU in perf (tuplehash_iterate and memset) for one-item pushes.  That
-- is a cost per transaction, so it weighed most where groups are small:
-- an open loop below the closed-loop rate.
--
-- With hash aggregation off, the DISTINCT sorts the keys it really has
-- (it already sorted them for the lock order).  Every other aggregate of
-- the function and of what it calls (the triggers, gridd_dispatch_pushed
-- and the worker choice behind it) works on a call's items or on one
-- incident's candidate workers, where a sort costs no more than a hash
-- table; EXPLAIN ANALYZE of pushes of all three routes (no worker on
-- duty to choose) showed no other hash table above 24 kB.  Measured with
-- gridd's own per-batch SQL on one connection (gridbench baseline --mode
-- gridd --db-conns 1), two rounds: one-item calls 547 and 558/s before,
-- 668 and 767/s after; 100-item calls the same within noise.
--
-- The setting holds while the function runs, so statements of the
-- functions it calls that are first planned there keep sort-based
-- aggregation in that session's cached plans, and those first planned by
-- the dispatcher keep theirs inside the push: either is fine for them.
-- A migration that redefines gridd_feed_push must say SET enable_hashagg
-- = off again (and SET enable_seqscan = off, 010_ingest_cost.sql);
-- test_dispatch.py fails otherwise.
ALTER FUNCTION gridd_feed_push(double precision, integer, bigint, text[],
    text[], text[], text[], text[], text[], text[], text[], integer[], text[],
    integer[], bigint[], double precision[], double precision[], text[],
    text[], text[], text[], text[], text[], text[], text[], text[], text[],
    text[], text[], text[], text[], double precision[], double precision[])
    SET enable_hashagg = off;

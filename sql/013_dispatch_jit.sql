-- 013_dispatch_jit.sql - the dispatch functions no longer compile their
-- plans to machine code.
--
-- The migration runner wraps this file in one transaction.
--
-- 010_ingest_cost.sql runs these functions with enable_seqscan = off.  A
-- sequential scan that is left in a plan (a table with no index for the
-- query) is then costed at 10^10, far above jit_above_cost (10^5), and
-- PostgreSQL compiles that plan with LLVM, inlining and optimization
-- included, each time it runs it.  The dispatcher's scan met this in its
-- first statement: the DELETE of stale dispatch_origins rows (a table of
-- one row per process) took 114-175 ms, all of it JIT (auto_explain in a
-- `scripts/bench dispatch` run: "Inlining 90 ms, Optimization 22 ms,
-- Emission 15 ms").  Every worker that comes on duty asks for a scan, so
-- while 10,000 workers checked in, the dispatcher kept one core busy
-- compiling: 111 scans in 28 s.  gridd_feed_push has had jit = off since
-- 003_feed.sql.  These functions run small statements on a few rows,
-- which compiled code never pays back.
ALTER FUNCTION gridd_dispatch_choose(bigint, integer, integer, integer,
    integer, text, text) SET jit = off;
ALTER FUNCTION gridd_dispatch_incidents(bigint[], integer, integer, integer,
    integer, text) SET jit = off;
ALTER FUNCTION gridd_dispatch_scan(integer, integer, integer, integer,
    integer, integer, text) SET jit = off;
ALTER FUNCTION gridd_dispatch_scan(integer, integer, integer, integer,
    integer, text) SET jit = off;
ALTER FUNCTION gridd_assignment_act(text, bigint, text, text,
    double precision, double precision, text, integer, integer, integer,
    integer, text, boolean) SET jit = off;
ALTER FUNCTION gridd_worker_checkin(text, double precision, double precision,
    boolean, integer) SET jit = off;

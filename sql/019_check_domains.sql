-- 019_check_domains.sql - the rules on the columns of incidents,
-- incident_sources and events move from the tables' CHECK constraints to
-- domains, the same rules on the same values (all but the rule on
-- incidents.geom: below).
--
-- The migration runner wraps this file in one transaction.
--
-- Why: PostgreSQL 15 compiles a table's CHECK constraints again for every
-- statement that inserts or updates its rows (the expressions are read
-- back from the catalog and planned, once per statement), and checks all
-- of them on every row, whatever columns an UPDATE sets.  A domain's
-- constraints are compiled once per session (the type cache) and are
-- checked only where a value of the domain is written.  Every lane
-- transaction of ingest inserts sources, most insert incidents and
-- events and update incidents (a department joining one), so this was
-- part of the fixed cost a transaction pays whatever its size (README,
-- Benchmarks).  On a copy of incidents' twelve constraints, one session,
-- prepared statements, two rounds each: a one-row INSERT took 0.122-0.126
-- ms with the table's constraints and 0.082-0.092 ms with domains, a
-- 20-row INSERT 0.174-0.182 and 0.134-0.135 ms, an UPDATE of two other
-- columns 0.131-0.136 and 0.082-0.086 ms.
--
-- What a violation says changes: "value for domain gridd_status violates
-- check constraint ..." instead of "new row for relation incidents
-- violates ..."; the SQLSTATE is the same (23514).  Each domain's rule
-- is named after the domain.
--
-- How, without rewriting the tables: the three tables are locked first,
-- in the order a push writes them (a push that already holds incidents
-- and then reads gridd_offers_v would otherwise deadlock with this
-- file); each domain is made without its rule, the columns take it (a
-- binary-compatible change: no rewrite; the partial indexes over these
-- columns are built again, the others kept), then the rule is added to
-- the domain NOT VALID (the table's identical constraint has already
-- proved every row there, so they are not read again under the lock;
-- every value written from now on is checked), and the table's
-- constraint is dropped.  ALTER COLUMN TYPE forgets the columns'
-- statistics and nothing would gather them again before a tenth of each
-- table has changed, so the file ends with ANALYZE of the three tables
-- (the plans of the push and of the dispatcher depend on them).
--
-- incidents.geom keeps its table CHECK: PostGIS's geometry_columns lists
-- only columns of the geometry type itself, and GIS tools find layers
-- there.  That one constraint alone costs about 20 us a statement (a
-- one-row INSERT on a copy, eight rounds of 2 s: medians 0.107 ms with
-- it, 0.086 ms without).
--
-- gridd_offers_v and the WHEN clause of the report's trigger read these
-- columns, so they are made again: the view with casts that keep its
-- columns' types as they were (a PL/pgSQL RETURN QUERY wants the exact
-- types).

LOCK TABLE incidents, incident_sources, events IN ACCESS EXCLUSIVE MODE;
DROP VIEW gridd_offers_v;
DROP TRIGGER report_incident_changed ON incidents;

CREATE DOMAIN gridd_status AS text;
CREATE DOMAIN gridd_list AS text;
CREATE DOMAIN gridd_matter AS text;
CREATE DOMAIN gridd_route AS text;
CREATE DOMAIN gridd_located_by AS text;
CREATE DOMAIN gridd_shortfall AS text;
CREATE DOMAIN gridd_severity AS integer;
CREATE DOMAIN gridd_count AS integer;
CREATE DOMAIN gridd_text500 AS text;
CREATE DOMAIN gridd_text8000 AS text;
CREATE DOMAIN gridd_text2000 AS text;
CREATE DOMAIN gridd_text64 AS text;
CREATE DOMAIN gridd_id64 AS text;
CREATE DOMAIN gridd_id128 AS text;
CREATE DOMAIN gridd_source_kind AS text;
CREATE DOMAIN gridd_source_outcome AS text;
CREATE DOMAIN gridd_seq AS bigint;

ALTER TABLE incidents
	ALTER COLUMN status TYPE gridd_status,
	ALTER COLUMN list TYPE gridd_list,
	ALTER COLUMN matter TYPE gridd_matter,
	ALTER COLUMN route TYPE gridd_route,
	ALTER COLUMN located_by TYPE gridd_located_by,
	ALTER COLUMN shortfall TYPE gridd_shortfall,
	ALTER COLUMN severity TYPE gridd_severity,
	ALTER COLUMN offers TYPE gridd_count,
	ALTER COLUMN summary TYPE gridd_text500,
	ALTER COLUMN address TYPE gridd_text500,
	ALTER COLUMN description TYPE gridd_text8000;
ALTER TABLE incident_sources
	ALTER COLUMN source_kind TYPE gridd_source_kind,
	ALTER COLUMN source_id TYPE gridd_id64,
	ALTER COLUMN ext_id TYPE gridd_id128,
	ALTER COLUMN category TYPE gridd_text64,
	ALTER COLUMN outcome TYPE gridd_source_outcome;
ALTER TABLE events
	ALTER COLUMN status TYPE gridd_status,
	ALTER COLUMN note TYPE gridd_text2000,
	ALTER COLUMN dept_seq TYPE gridd_seq;

-- The rules, as 001_init.sql, 003_feed.sql and 004_dispatch.sql left
-- them.  Where two columns had the same rule (summary and address; the
-- two status columns) they share a domain.
ALTER DOMAIN gridd_status ADD CONSTRAINT gridd_status_check
	CHECK (VALUE IN ('new', 'dispatched', 'accepted', 'in_progress',
	    'resolved', 'closed', 'referred', 'escalated', 'cancelled'))
	NOT VALID;
ALTER DOMAIN gridd_list ADD CONSTRAINT gridd_list_check
	CHECK (VALUE IN ('autonomy', 'assist', 'certificate')) NOT VALID;
ALTER DOMAIN gridd_matter ADD CONSTRAINT gridd_matter_check
	CHECK (VALUE IN ('big', 'small', 'private')) NOT VALID;
ALTER DOMAIN gridd_route ADD CONSTRAINT gridd_route_check
	CHECK (VALUE IN ('worker', 'department', 'referral')) NOT VALID;
ALTER DOMAIN gridd_located_by ADD CONSTRAINT gridd_located_by_check
	CHECK (VALUE IN ('point', 'dept_code', 'building')) NOT VALID;
ALTER DOMAIN gridd_shortfall ADD CONSTRAINT gridd_shortfall_check
	CHECK (VALUE IN ('no_workers', 'all_off_duty', 'all_at_capacity',
	    'max_offers')) NOT VALID;
ALTER DOMAIN gridd_severity ADD CONSTRAINT gridd_severity_check
	CHECK (VALUE BETWEEN 0 AND 10) NOT VALID;
ALTER DOMAIN gridd_count ADD CONSTRAINT gridd_count_check
	CHECK (VALUE >= 0) NOT VALID;
ALTER DOMAIN gridd_text500 ADD CONSTRAINT gridd_text500_check
	CHECK (length(VALUE) <= 500) NOT VALID;
ALTER DOMAIN gridd_text8000 ADD CONSTRAINT gridd_text8000_check
	CHECK (length(VALUE) <= 8000) NOT VALID;
ALTER DOMAIN gridd_source_kind ADD CONSTRAINT gridd_source_kind_check
	CHECK (VALUE IN ('department', 'worker')) NOT VALID;
ALTER DOMAIN gridd_id64 ADD CONSTRAINT gridd_id64_check
	CHECK (length(VALUE) BETWEEN 1 AND 64) NOT VALID;
ALTER DOMAIN gridd_id128 ADD CONSTRAINT gridd_id128_check
	CHECK (length(VALUE) BETWEEN 1 AND 128) NOT VALID;
ALTER DOMAIN gridd_text64 ADD CONSTRAINT gridd_text64_check
	CHECK (length(VALUE) <= 64) NOT VALID;
ALTER DOMAIN gridd_source_outcome ADD CONSTRAINT gridd_source_outcome_check
	CHECK (VALUE IN ('accepted', 'merged')) NOT VALID;
ALTER DOMAIN gridd_text2000 ADD CONSTRAINT gridd_text2000_check
	CHECK (length(VALUE) <= 2000) NOT VALID;
ALTER DOMAIN gridd_seq ADD CONSTRAINT gridd_seq_check
	CHECK (VALUE > 0) NOT VALID;

ALTER TABLE incidents
	DROP CONSTRAINT incidents_status_check,
	DROP CONSTRAINT incidents_list_check,
	DROP CONSTRAINT incidents_matter_check,
	DROP CONSTRAINT incidents_route_check,
	DROP CONSTRAINT incidents_located_by_check,
	DROP CONSTRAINT incidents_shortfall_check,
	DROP CONSTRAINT incidents_severity_check,
	DROP CONSTRAINT incidents_offers_check,
	DROP CONSTRAINT incidents_summary_check,
	DROP CONSTRAINT incidents_address_check,
	DROP CONSTRAINT incidents_description_check;
ALTER TABLE incident_sources
	DROP CONSTRAINT incident_sources_source_kind_check,
	DROP CONSTRAINT incident_sources_source_id_check,
	DROP CONSTRAINT incident_sources_ext_id_check,
	DROP CONSTRAINT incident_sources_category_check,
	DROP CONSTRAINT incident_sources_outcome_check;
ALTER TABLE events
	DROP CONSTRAINT events_status_check,
	DROP CONSTRAINT events_note_check,
	DROP CONSTRAINT events_dept_seq_check;

-- As 004_dispatch.sql made it, its columns' types unchanged.
CREATE VIEW gridd_offers_v AS
SELECT a.incident_id, a.assignment_id, a.worker_id, a.reason, a.state,
    i.cell_id, i.task_type, i.list::text AS list, i.matter::text AS matter,
    CASE WHEN i.summary <> '' THEN i.summary::text
	ELSE left(i.description, 200) END AS summary,
    ST_X(i.geom) AS lon, ST_Y(i.geom) AS lat, i.address::text AS address,
    (extract(epoch FROM i.deadline) * 1000)::bigint AS deadline_ms,
    array_to_string(i.departments, ',') AS departments,
    (extract(epoch FROM a.expires_at) * 1000)::bigint AS expires_ms,
    (extract(epoch FROM i.created_at) * 1000)::bigint AS created_ms
FROM assignments a JOIN incidents i ON i.incident_id = a.incident_id;

-- As 005_report.sql made it.
CREATE TRIGGER report_incident_changed AFTER UPDATE ON incidents
FOR EACH ROW
WHEN (gridd_report_day(OLD.created_at) < gridd_report_day(now()) AND
    (OLD.status, OLD.route, OLD.list, OLD.matter, OLD.community_id,
     OLD.deadline, OLD.sla_escalated, OLD.closed_at, OLD.created_at)
    IS DISTINCT FROM
    (NEW.status, NEW.route, NEW.list, NEW.matter, NEW.community_id,
     NEW.deadline, NEW.sla_escalated, NEW.closed_at, NEW.created_at))
EXECUTE FUNCTION gridd_report_incident_changed();

ANALYZE incidents, incident_sources, events;

-- 009_incident_indexes.sql - five indexes that every item pushed or every
-- status change wrote and no statement reads.
--
-- The migration runner wraps this file in one transaction.
--
-- An incident for a worker is written three times on its way (the push's
-- insert, the offer, the accept), and because its status is in the keys
-- and predicates of the dispatch and merge indexes, none of those updates
-- is HOT: each one inserts into every index of the table.  Three of them
-- serve no statement of gridd's:
--
--   incidents_cell_idx (cell_id, status): nothing looks incidents up by
--     cell; the dispatcher reads them by id and by next_try_at.
--   incidents_geom_idx, GiST over every incident: the merge search has its
--     own partial index over open incidents (incidents_open_geom_idx), and
--     nothing else searches incidents by place.
--   incidents_deadline_idx (deadline) over open incidents not yet
--     escalated: the SLA is watched through its timer row (timers), and
--     nothing looks incidents up by deadline.
--
-- An operator's occasional query by cell or by place still runs; it scans.
DROP INDEX incidents_cell_idx;
DROP INDEX incidents_geom_idx;
DROP INDEX incidents_deadline_idx;

-- The same for two indexes written with every item pushed:
--
--   incident_sources_report_idx (source_kind, source_id, pushed_at): the
--     burden report reads sources by time (incident_sources_pushed_idx,
--     incident_sources_community_pushed_idx, 005_report.sql), the duplicate
--     check by the primary key, the events' ext_id by incident
--     (incident_sources_incident_idx).  Worse than unused: for "the first
--     source of this incident from this department" the planner could walk
--     a department's whole history in time order through it.
--   events_report_idx (community_id, at): no report reads events; the
--     subscribers read them by (department_id, dept_seq), and an incident's
--     history is read through events_incident_idx.
DROP INDEX incident_sources_report_idx;
DROP INDEX events_report_idx;

-- 007_review_fixes.sql - complaints filed once: an offline phone replays
-- its queue, and the replay must not file the complaint again.
--
-- The migration runner wraps this file in one transaction.

-- One open complaint per complainant, subject (the incident, or the
-- community when none) and reason.  FileComplaint inserts with
-- ON CONFLICT DO NOTHING against this index and answers a replay Ok; once
-- the complaint is resolved the same filing opens a new one.
CREATE UNIQUE INDEX complaints_open_once_idx
	ON complaints (complainant, community_id, (coalesce(incident_id, 0)),
	    reason)
	WHERE resolved_at IS NULL;

-- 001_init.sql - the core schema: places, cells, departments, workers,
-- sessions, incidents with their sources, dispatch, events, timers and
-- complaints.
--
-- Conventions
-- * Every table carries its community_id (or, above the community level,
--   its district_code) so that the schema can be split by district later:
--   a row never needs another district's rows to make sense.  The config
--   snapshots (departments, task_types) are small reference tables that
--   every shard would hold whole.
-- * Identifiers that come from outside (community, building, cell, worker,
--   department ids, task type names) are text, bounded by CHECKs so that
--   hostile input cannot store megabytes in a key.  Numbers the daemon
--   makes itself (incidents, assignments, events) are bigint sequences.
-- * Enumerations are text with CHECK constraints: readable in psql and in
--   reports, and a wrong value fails at the statement that wrote it.
-- * Geometry is WGS-84 (SRID 4326), as on the wire.  Distances in metres
--   go through geography casts in the queries.
-- * Times are timestamptz; the wire's milliseconds convert at the edge.
-- The migration runner wraps this file in one transaction.

CREATE EXTENSION IF NOT EXISTS postgis;

-- Places ----------------------------------------------------------------

-- District (区县) codes are the first six digits of the 12-digit community
-- codes; communities without a code belong to district ''.
CREATE TABLE districts (
	district_code	text PRIMARY KEY CHECK (length(district_code) <= 32),
	name		text NOT NULL DEFAULT '' CHECK (length(name) <= 200)
);

CREATE TABLE communities (
	community_id	text PRIMARY KEY
			CHECK (community_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
	name		text NOT NULL CHECK (length(name) <= 200),
	-- 12 digits: district (6) + street (3) + community (3), when known;
	-- cell ids then follow the 15-digit street-grid practice.
	code		text CHECK (code ~ '^[0-9]{12}$'),
	district_code	text NOT NULL DEFAULT ''
			CHECK (length(district_code) <= 32),
	street_code	text NOT NULL DEFAULT ''
			CHECK (length(street_code) <= 32),
	geom		geometry(MultiPolygon, 4326),
	created_at	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX communities_geom_idx ON communities USING gist (geom);
CREATE INDEX communities_district_idx ON communities (district_code);

CREATE TABLE buildings (
	building_id	text PRIMARY KEY
			CHECK (building_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
	community_id	text NOT NULL REFERENCES communities ON UPDATE CASCADE,
	kind		text NOT NULL DEFAULT 'unknown'
			CHECK (kind IN ('residential', 'commercial',
			    'industrial', 'public', 'agricultural', 'other',
			    'unknown')),
	households	integer NOT NULL DEFAULT 0
			CHECK (households BETWEEN 0 AND 100000),
	levels		integer CHECK (levels BETWEEN 0 AND 500),
	area_m2		double precision
			CHECK (area_m2 >= 0 AND area_m2 < 1e8),
	geom		geometry(Point, 4326) NOT NULL
			CHECK (ST_X(geom) BETWEEN -180 AND 180 AND
			    ST_Y(geom) BETWEEN -90 AND 90),
	footprint	geometry(MultiPolygon, 4326),
	-- The current cell; NULL until the community is partitioned.
	cell_id		text,
	updated_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX buildings_community_idx ON buildings (community_id, cell_id);
CREATE INDEX buildings_geom_idx ON buildings USING gist (geom);

-- Unified cells (网格).  A repartition retires a cell version by setting
-- valid_to and inserts the new version, so the history of every cell id
-- stays queryable (which cell covered this point last March?).  Exactly one
-- current version per cell id.
CREATE TABLE cells (
	cell_id		text NOT NULL CHECK (cell_id ~ '^[A-Za-z0-9_.-]{1,80}$'),
	community_id	text NOT NULL REFERENCES communities ON UPDATE CASCADE,
	kind		text NOT NULL DEFAULT 'comprehensive'
			CHECK (kind IN ('comprehensive', 'dedicated')),
	households	integer NOT NULL DEFAULT 0 CHECK (households >= 0),
	buildings	integer NOT NULL DEFAULT 0 CHECK (buildings >= 0),
	geom		geometry(MultiPolygon, 4326),
	valid_from	timestamptz NOT NULL DEFAULT now(),
	valid_to	timestamptz,
	PRIMARY KEY (cell_id, valid_from),
	CHECK (valid_to IS NULL OR valid_to >= valid_from)
);
CREATE UNIQUE INDEX cells_current_idx ON cells (cell_id)
	WHERE valid_to IS NULL;
CREATE INDEX cells_community_idx ON cells (community_id)
	WHERE valid_to IS NULL;
-- Point-in-cell for every incident: only current cells are searched.
CREATE INDEX cells_geom_idx ON cells USING gist (geom)
	WHERE valid_to IS NULL;

-- Config snapshots ------------------------------------------------------

-- Departments and task types live in the config file; the daemon copies
-- them here at start and on reload so that reports and joins can name them
-- and so that rows written under an older config still resolve.
CREATE TABLE departments (
	department_id	text PRIMARY KEY
			CHECK (department_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
	name		text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
	active		boolean NOT NULL DEFAULT true,
	synced_at	timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE task_types (
	name		text PRIMARY KEY
			CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
	list		text NOT NULL
			CHECK (list IN ('autonomy', 'assist', 'negative',
			    'certificate')),
	matter		text NOT NULL
			CHECK (matter IN ('big', 'small', 'private')),
	route		text NOT NULL
			CHECK (route IN ('worker', 'department', 'referral')),
	sla_minutes	integer NOT NULL DEFAULT 0
			CHECK (sla_minutes BETWEEN 0 AND 525600),
	guidance	text NOT NULL DEFAULT ''
			CHECK (length(guidance) <= 4000),
	active		boolean NOT NULL DEFAULT true,
	synced_at	timestamptz NOT NULL DEFAULT now()
);

-- Department grid layers (多网合一) ---------------------------------------

-- A department's own grid polygons under its own codes.
CREATE TABLE department_layers (
	department_id	text NOT NULL REFERENCES departments
			ON UPDATE CASCADE,
	dept_code	text NOT NULL CHECK (length(dept_code) BETWEEN 1 AND 64),
	district_code	text NOT NULL DEFAULT ''
			CHECK (length(district_code) <= 32),
	name		text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
	geom		geometry(MultiPolygon, 4326) NOT NULL,
	imported_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (department_id, dept_code)
);
CREATE INDEX department_layers_geom_idx ON department_layers
	USING gist (geom);

-- Each department code onto the unified cells it overlaps, with the share
-- of its area; the dominant row locates incidents that carry only a
-- department grid code.  Rebuilt after a layer import or a repartition.
CREATE TABLE crosswalk (
	department_id	text NOT NULL,
	dept_code	text NOT NULL,
	community_id	text NOT NULL REFERENCES communities ON UPDATE CASCADE,
	cell_id		text NOT NULL,
	share		double precision NOT NULL
			CHECK (share > 0 AND share <= 1.000001),
	dominant	boolean NOT NULL DEFAULT false,
	PRIMARY KEY (department_id, dept_code, cell_id),
	FOREIGN KEY (department_id, dept_code)
		REFERENCES department_layers ON DELETE CASCADE
);
CREATE UNIQUE INDEX crosswalk_dominant_idx
	ON crosswalk (department_id, dept_code) WHERE dominant;

-- Workers and sessions --------------------------------------------------

CREATE TABLE workers (
	worker_id	text PRIMARY KEY
			CHECK (worker_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
	community_id	text NOT NULL REFERENCES communities ON UPDATE CASCADE,
	name		text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
	-- PBKDF2-SHA256 with its own iteration count, so raising the count
	-- in the config re-hashes at the next password change, never breaks
	-- stored hashes.
	password_hash	text NOT NULL
			CHECK (password_hash ~
			    '^pbkdf2-sha256\$[0-9]{1,10}\$[0-9a-f]{16,128}\$[0-9a-f]{64}$'),
	primary_cell	text,
	backup_cells	text[] NOT NULL DEFAULT '{}'
			CHECK (cardinality(backup_cells) <= 64),
	max_open	integer NOT NULL DEFAULT 5
			CHECK (max_open BETWEEN 1 AND 1000),
	on_duty		boolean NOT NULL DEFAULT false,
	last_lon	double precision CHECK (last_lon BETWEEN -180 AND 180),
	last_lat	double precision CHECK (last_lat BETWEEN -90 AND 90),
	last_checkin_at	timestamptz,
	created_at	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_primary_idx ON workers (community_id, primary_cell)
	WHERE on_duty;
CREATE INDEX workers_backup_idx ON workers USING gin (backup_cells);

-- Check-in history for the reports.  Bounded by the daemon, which prunes
-- rows beyond a configured age; the latest position is on workers.
CREATE TABLE worker_checkins (
	checkin_id	bigserial PRIMARY KEY,
	worker_id	text NOT NULL REFERENCES workers ON DELETE CASCADE,
	community_id	text NOT NULL,
	lon		double precision CHECK (lon BETWEEN -180 AND 180),
	lat		double precision CHECK (lat BETWEEN -90 AND 90),
	on_duty		boolean NOT NULL,
	at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX worker_checkins_worker_idx ON worker_checkins (worker_id, at);
CREATE INDEX worker_checkins_at_idx ON worker_checkins (at);

-- Only the SHA-256 of a session token is stored: a copy of the database
-- does not let anyone resume a session.
CREATE TABLE sessions (
	token_sha256	bytea PRIMARY KEY CHECK (length(token_sha256) = 32),
	role		text NOT NULL
			CHECK (role IN ('worker', 'department', 'admin')),
	principal	text NOT NULL CHECK (length(principal) BETWEEN 1 AND 64),
	community_id	text,		-- workers only
	created_at	timestamptz NOT NULL DEFAULT now(),
	expires_at	timestamptz NOT NULL,
	last_seen_at	timestamptz NOT NULL DEFAULT now(),
	CHECK (expires_at > created_at)
);
CREATE INDEX sessions_principal_idx ON sessions (role, principal);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

-- Incidents -------------------------------------------------------------

-- The unified record: one real-world event however many departments
-- pushed it (see incident_sources).
CREATE TABLE incidents (
	incident_id	bigserial PRIMARY KEY,
	community_id	text NOT NULL REFERENCES communities ON UPDATE CASCADE,
	cell_id		text,
	task_type	text NOT NULL,
	list		text NOT NULL
			CHECK (list IN ('autonomy', 'assist', 'certificate')),
	matter		text NOT NULL
			CHECK (matter IN ('big', 'small', 'private')),
	route		text NOT NULL
			CHECK (route IN ('worker', 'department', 'referral')),
	status		text NOT NULL DEFAULT 'new'
			CHECK (status IN ('new', 'dispatched', 'accepted',
			    'in_progress', 'resolved', 'closed', 'referred',
			    'escalated', 'cancelled')),
	-- Verifies and closes: for assist the funding department (费随事转),
	-- otherwise the first source.  NULL for a worker's own report.
	owner_department text,
	funder_department text,
	-- Every department that is a source, kept here for the offer push.
	departments	text[] NOT NULL DEFAULT '{}',
	severity	integer NOT NULL DEFAULT 0
			CHECK (severity BETWEEN 0 AND 10),
	summary		text NOT NULL DEFAULT '' CHECK (length(summary) <= 500),
	description	text NOT NULL DEFAULT ''
			CHECK (length(description) <= 8000),
	address		text NOT NULL DEFAULT '' CHECK (length(address) <= 500),
	geom		geometry(Point, 4326)
			CHECK (geom IS NULL OR (ST_X(geom) BETWEEN -180 AND 180
			    AND ST_Y(geom) BETWEEN -90 AND 90)),
	occurred_at	timestamptz NOT NULL DEFAULT now(),
	created_at	timestamptz NOT NULL DEFAULT now(),
	updated_at	timestamptz NOT NULL DEFAULT now(),
	deadline	timestamptz,
	sla_escalated	boolean NOT NULL DEFAULT false,
	offers		integer NOT NULL DEFAULT 0 CHECK (offers >= 0),
	-- Why no worker could be found, for the admin view and the report.
	shortfall	text CHECK (shortfall IN ('no_workers', 'all_off_duty',
			    'all_at_capacity')),
	closed_at	timestamptz
);
-- Merging looks for an open incident of the same task type in the same
-- community created within the merge window, then near in space.
CREATE INDEX incidents_merge_idx
	ON incidents (community_id, task_type, status, created_at);
CREATE INDEX incidents_geom_idx ON incidents USING gist (geom);
CREATE INDEX incidents_cell_idx ON incidents (cell_id, status);
-- SLA scans only look at incidents that can still be overdue.
CREATE INDEX incidents_deadline_idx ON incidents (deadline)
	WHERE NOT sla_escalated AND status NOT IN ('closed', 'cancelled');
CREATE INDEX incidents_created_idx ON incidents (created_at);

-- Who pushed what.  (source_kind, source_id, ext_id) is unique: a replayed
-- push finds its first answer here and answers DUPLICATE.
CREATE TABLE incident_sources (
	source_kind	text NOT NULL
			CHECK (source_kind IN ('department', 'worker')),
	source_id	text NOT NULL CHECK (length(source_id) BETWEEN 1 AND 64),
	ext_id		text NOT NULL CHECK (length(ext_id) BETWEEN 1 AND 128),
	incident_id	bigint NOT NULL REFERENCES incidents,
	community_id	text NOT NULL,
	category	text NOT NULL DEFAULT ''
			CHECK (length(category) <= 64),
	outcome		text NOT NULL CHECK (outcome IN ('accepted', 'merged')),
	pushed_at	timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (source_kind, source_id, ext_id)
);
CREATE INDEX incident_sources_incident_idx ON incident_sources (incident_id);
CREATE INDEX incident_sources_report_idx
	ON incident_sources (source_kind, source_id, pushed_at);

-- Pushes refused, for the burden report: a negative-list item is counted
-- against the department that pushed it.  community_id is NULL when the
-- item fell outside every community.
CREATE TABLE rejections (
	rejection_id	bigserial PRIMARY KEY,
	source_kind	text NOT NULL DEFAULT 'department'
			CHECK (source_kind IN ('department', 'worker')),
	source_id	text NOT NULL CHECK (length(source_id) BETWEEN 1 AND 64),
	ext_id		text NOT NULL DEFAULT ''
			CHECK (length(ext_id) <= 128),
	community_id	text,
	category	text NOT NULL DEFAULT ''
			CHECK (length(category) <= 64),
	task_type	text,
	reason		text NOT NULL
			CHECK (reason IN ('negative_list', 'unknown_category',
			    'outside', 'invalid')),
	at		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejections_report_idx ON rejections (source_id, at);

-- Dispatch --------------------------------------------------------------

-- One offer of an incident to one worker, and what became of it.
CREATE TABLE assignments (
	assignment_id	bigserial PRIMARY KEY,
	incident_id	bigint NOT NULL REFERENCES incidents,
	worker_id	text NOT NULL REFERENCES workers ON UPDATE CASCADE,
	community_id	text NOT NULL,
	state		text NOT NULL DEFAULT 'offered'
			CHECK (state IN ('offered', 'accepted', 'declined',
			    'expired', 'in_progress', 'resolved',
			    'cancelled')),
	-- Why this worker was chosen.
	reason		text NOT NULL
			CHECK (reason IN ('primary_cell', 'backup_cell',
			    'neighbour_cell', 'least_loaded', 'nearest')),
	offered_at	timestamptz NOT NULL DEFAULT now(),
	expires_at	timestamptz NOT NULL,
	accepted_at	timestamptz,
	started_at	timestamptz,
	resolved_at	timestamptz,
	note		text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
	resolve_lon	double precision CHECK (resolve_lon BETWEEN -180 AND 180),
	resolve_lat	double precision CHECK (resolve_lat BETWEEN -90 AND 90)
);
-- The database itself forbids offering one incident twice at once, even
-- to two gridd processes racing.
CREATE UNIQUE INDEX assignments_one_live_idx ON assignments (incident_id)
	WHERE state IN ('offered', 'accepted', 'in_progress');
-- Open assignments per worker (max_open) and the worker's list.
CREATE INDEX assignments_worker_idx ON assignments (worker_id, state);
CREATE INDEX assignments_report_idx ON assignments (community_id, offered_at);

-- An offline client replays its queued actions; the key makes each one take
-- effect once.  Keys are the client's, so unique per worker.
CREATE TABLE assignment_actions (
	worker_id	text NOT NULL REFERENCES workers ON DELETE CASCADE,
	idempotency_key	text NOT NULL
			CHECK (length(idempotency_key) BETWEEN 1 AND 128),
	assignment_id	bigint NOT NULL REFERENCES assignments,
	community_id	text NOT NULL,
	action		text NOT NULL
			CHECK (action IN ('accept', 'decline', 'start',
			    'resolve')),
	at		timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (worker_id, idempotency_key)
);

-- Events ----------------------------------------------------------------

-- Allocates dept_seq: the row lock taken by
--   UPDATE department_seq SET last_seq = last_seq + 1 ... RETURNING last_seq
-- orders a department's events, and since it rolls back with the
-- transaction that wrote the event, the numbers have no gaps (a sequence
-- object would leave holes on rollback, and subscribers resume by number).
CREATE TABLE department_seq (
	department_id	text PRIMARY KEY,
	last_seq	bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
);

-- Every status change, written in the same transaction as the change, once
-- per department that is a source of the incident.
CREATE TABLE events (
	seq		bigserial PRIMARY KEY,
	department_id	text NOT NULL,
	dept_seq	bigint NOT NULL CHECK (dept_seq > 0),
	incident_id	bigint NOT NULL REFERENCES incidents,
	community_id	text NOT NULL,
	ext_id		text NOT NULL DEFAULT '',
	status		text NOT NULL
			CHECK (status IN ('new', 'dispatched', 'accepted',
			    'in_progress', 'resolved', 'closed', 'referred',
			    'escalated', 'cancelled')),
	cell_id		text,
	worker_id	text,
	note		text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
	at		timestamptz NOT NULL DEFAULT now(),
	UNIQUE (department_id, dept_seq)
);
CREATE INDEX events_incident_idx ON events (incident_id, seq);
CREATE INDEX events_report_idx ON events (community_id, at);

-- Timers ----------------------------------------------------------------

-- Offer expiry and SLA deadlines live here, not in memory, so that they
-- fire after a restart.  A process claims due rows with
-- FOR UPDATE SKIP LOCKED and marks them; a claim older than a lease is
-- taken over (its process died), and a timer row is deleted when handled.
CREATE TABLE timers (
	timer_id	bigserial PRIMARY KEY,
	kind		text NOT NULL CHECK (kind IN ('offer_expiry', 'sla')),
	ref_id		bigint NOT NULL,	-- assignment or incident id
	community_id	text NOT NULL,
	fire_at		timestamptz NOT NULL,
	claimed_by	text,
	claimed_at	timestamptz,
	UNIQUE (kind, ref_id)
);
CREATE INDEX timers_fire_idx ON timers (fire_at);

-- Complaints (投诉反馈) ----------------------------------------------------

CREATE TABLE complaints (
	complaint_id	bigserial PRIMARY KEY,
	incident_id	bigint REFERENCES incidents,
	community_id	text NOT NULL,
	reason		text NOT NULL
			CHECK (reason IN ('negative_list', 'unfunded',
			    'duplicate', 'outside_duty', 'other')),
	note		text NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
	complainant	text NOT NULL CHECK (length(complainant) BETWEEN 1 AND 64),
	-- The incident's departments when filed: the complaint counts against
	-- them even if the incident's sources change later.
	departments	text[] NOT NULL DEFAULT '{}',
	filed_at	timestamptz NOT NULL DEFAULT now(),
	resolved_at	timestamptz,
	resolution	text CHECK (length(resolution) <= 2000),
	CHECK ((resolved_at IS NULL) = (resolution IS NULL))
);
CREATE INDEX complaints_community_idx ON complaints (community_id, filed_at);
CREATE INDEX complaints_departments_idx ON complaints USING gin (departments);
CREATE INDEX complaints_open_idx ON complaints (filed_at)
	WHERE resolved_at IS NULL;

-- 002_grid.sql - the grid in PostGIS: imports of communities, buildings and
-- department layers, the partitioner's input (buildings in metres, the
-- adjacency graph) and output (cells, their polygons, their history), point
-- and code location, and the department-layer crosswalk.
--
-- Contract for callers (the daemon passes text-format parameters, arrays as
-- PostgreSQL array literals, one statement per request or per batch):
--
--   gridd_import_communities(ids, names, codes, geojsons, lines)
--   gridd_import_buildings(ids, community_ids, kinds, households, levels,
--                          lons, lats, areas, footprints, lines)
--   gridd_import_layer(department_id, codes, geojsons, lines, replace)
--       one result row per input row, in input order:
--       (line, <id>, action, error) with action one of
--         inserted   a new row
--         updated    an existing row whose values changed
--         unchanged  an existing row imported again with the same values
--                    (nothing written: re-importing a file is idempotent)
--         rejected   nothing written; error says which field and why
--       error is NULL for clean rows, the reason for rejected rows, and a
--       text starting with "warning:" for accepted rows worth a look.
--       Parallel arrays of different lengths are a caller bug and raise.
--       The communities and buildings imports then add one row per
--       community whose current cells this import made stale, sorted by
--       id: (NULL, community_id, 'repartition', NULL).  Such a community
--       needs a repartition (the daemon queues one).
--   gridd_partition_buildings(community_id)        partitioner input
--   gridd_partition_edges(community_id, neighbour_m) adjacency graph
--   gridd_apply_partition(community_id, building_ids, building_cells,
--                         cell_ids, cell_kinds)    partitioner output
--   gridd_cell_id(community_id, seq)               cell id numbering
--   gridd_locate(lon, lat), gridd_locate_batch(lons, lats),
--   gridd_locate_dept_code(department_id, code),
--   gridd_locate_building(building_id)             where is it
--   gridd_crosswalk_refresh(department_id, codes)  rebuild crosswalk rows
--   gridd_dept_straddling(department_id, min_share) the straddle report
--   gridd_grid(community_id)                        cells with GeoJSON
--
-- Geometry is stored in WGS-84 (SRID 4326).  Metric work (distances,
-- Voronoi regions) happens in the community's UTM zone, chosen from the
-- community polygon's centroid (gridd_utm_srid), so that one community is
-- always measured in one projection.  Areas are geodesic (geography).
--
-- Orderings that matter for determinism (building index numbers, tie
-- breaks) use COLLATE "C", so the result does not depend on the database's
-- locale.
--
-- The migration runner wraps this file in one transaction.

-- Indexes ---------------------------------------------------------------

-- A department code's crosswalk rows and the rows of one community (a
-- repartition rebuilds the rows of the codes it touches).
CREATE INDEX crosswalk_community_idx ON crosswalk (community_id);

-- Columns ---------------------------------------------------------------

-- What a community's current cell polygons were computed from, as a
-- fingerprint (see gridd_apply_partition); NULL before the first partition.
ALTER TABLE communities ADD COLUMN cells_input text
	CHECK (length(cells_input) <= 64);

-- Small helpers -----------------------------------------------------------

-- The UTM zone (WGS-84, EPSG 326zz north / 327zz south) of a geometry's
-- centroid.  Zone exceptions (Norway, Svalbard) are ignored: any zone near
-- the data measures well enough for adjacency and Voronoi regions.
CREATE FUNCTION gridd_utm_srid(g geometry)
RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
	SELECT (CASE WHEN ST_Y(c) >= 0 THEN 32600 ELSE 32700 END) +
	    least(60, greatest(1, floor((ST_X(c) + 180) / 6)::integer + 1))
	FROM (SELECT ST_Centroid(ST_Envelope(g)) AS c) AS x
$$;

-- The metric projection of one community (NULL for an unknown community or
-- one without a polygon).
CREATE FUNCTION gridd_community_srid(p_community text)
RETURNS integer
LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$
	SELECT gridd_utm_srid(c.geom) FROM communities c
	WHERE c.community_id = p_community AND c.geom IS NOT NULL
$$;

-- The id of a community's cell number seq (1-based; the partitioner numbers
-- cells west->east, north->south).  With a 12-digit community code: the
-- 15-digit street-grid code, code || seq as three digits (so seq must be
-- 1..999).  Otherwise COMMUNITY-NNN (three digits at least, more beyond
-- 999).  Raises for an unknown community or a seq out of range.
CREATE FUNCTION gridd_cell_id(p_community text, p_seq integer)
RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
	v_code	text;
	v_found	boolean;
BEGIN
	SELECT c.code, true INTO v_code, v_found
	FROM communities c WHERE c.community_id = p_community;
	IF v_found IS NULL THEN
		RAISE EXCEPTION 'gridd_cell_id: unknown community "%"',
		    left(p_community, 64) USING ERRCODE = 'no_data_found';
	END IF;
	IF p_seq IS NULL OR p_seq < 1 THEN
		RAISE EXCEPTION 'gridd_cell_id: seq must be >= 1, got %', p_seq
		    USING ERRCODE = 'numeric_value_out_of_range';
	END IF;
	IF v_code ~ '^[0-9]{12}$' THEN
		IF p_seq > 999 THEN
			RAISE EXCEPTION 'gridd_cell_id: community % has more '
			    'than 999 cells, the 15-digit code has room for 999',
			    p_community
			    USING ERRCODE = 'numeric_value_out_of_range';
		END IF;
		RETURN v_code || lpad(p_seq::text, 3, '0');
	END IF;
	RETURN p_community || '-' ||
	    CASE WHEN p_seq < 1000 THEN lpad(p_seq::text, 3, '0')
	    ELSE p_seq::text END;
END
$$;

-- Parses a GeoJSON Polygon or MultiPolygon (a geometry object, not a
-- Feature) into a valid 2-D MultiPolygon in SRID 4326, or says why not.
-- Invalid rings are repaired with ST_MakeValid when that leaves an area.
-- No writes happen here, so the exception block costs a savepoint but no
-- subtransaction id, even when it runs once per imported row.
CREATE FUNCTION gridd_parse_area(p_geojson text, OUT geom geometry,
    OUT error text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
	g	geometry;
BEGIN
	IF p_geojson IS NULL OR btrim(p_geojson) = '' THEN
		error := 'geometry missing';
		RETURN;
	END IF;
	-- The daemon bounds its input far below this; the check keeps a
	-- direct caller from parsing megabytes per row.
	IF length(p_geojson) > 16 * 1024 * 1024 THEN
		error := 'geometry larger than 16 MiB';
		RETURN;
	END IF;
	BEGIN
		g := ST_GeomFromGeoJSON(p_geojson);
	EXCEPTION WHEN OTHERS THEN
		error := 'invalid GeoJSON: ' || left(SQLERRM, 200);
		RETURN;
	END;
	IF g IS NULL OR GeometryType(g) NOT IN ('POLYGON', 'MULTIPOLYGON') THEN
		error := 'expected a Polygon or MultiPolygon, got ' ||
		    coalesce(initcap(GeometryType(g)), 'nothing');
		RETURN;
	END IF;
	IF ST_SRID(g) = 0 THEN
		g := ST_SetSRID(g, 4326);
	ELSIF ST_SRID(g) <> 4326 THEN
		error := 'coordinates must be WGS-84 (EPSG:4326), got EPSG:' ||
		    ST_SRID(g);
		RETURN;
	END IF;
	IF ST_IsEmpty(g) THEN
		error := 'empty geometry';
		RETURN;
	END IF;
	-- NaN compares greater than every number here, so it fails too.
	IF NOT (ST_XMin(g) >= -180 AND ST_XMax(g) <= 180 AND
	    ST_YMin(g) >= -90 AND ST_YMax(g) <= 90) THEN
		error := 'coordinates outside longitude -180..180 / '
		    'latitude -90..90';
		RETURN;
	END IF;
	g := ST_Force2D(g);
	IF NOT ST_IsValid(g) THEN
		BEGIN
			g := ST_CollectionExtract(ST_MakeValid(g), 3);
		EXCEPTION WHEN OTHERS THEN
			error := 'invalid polygon: ' || left(SQLERRM, 200);
			RETURN;
		END;
		IF g IS NULL OR ST_IsEmpty(g) OR ST_Area(g) = 0 THEN
			error := 'invalid polygon without area';
			RETURN;
		END IF;
	END IF;
	IF ST_Area(g) = 0 THEN
		error := 'polygon without area';
		RETURN;
	END IF;
	geom := ST_Multi(g);
END
$$;

-- Raises unless every array has n elements (NULL arrays are allowed where
-- the caller says so).  Different lengths are a bug in the caller, not a
-- row error.
CREATE FUNCTION gridd_check_lengths(p_what text, p_n integer,
    p_lengths integer[])
RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM unnest(p_lengths) AS l(n)
	    WHERE l.n IS DISTINCT FROM p_n) THEN
		RAISE EXCEPTION '%: parallel arrays differ in length (% vs %)',
		    p_what, p_n, p_lengths
		    USING ERRCODE = 'array_subscript_error';
	END IF;
END
$$;

-- Imports -----------------------------------------------------------------

-- Imports or updates communities.  ids follow communities.community_id
-- (1-64 of A-Z a-z 0-9 _ . -); names default to the id; codes are a
-- 12-digit district(6)+street(3)+community(3) code or NULL/empty, and set
-- district_code (first 6 digits) and street_code (first 9 digits);
-- geojsons are Polygon/MultiPolygon geometry objects in WGS-84.  lines are
-- the caller's line or feature numbers, echoed back (NULL: the 1-based
-- array position).  A 12-digit code also adds its district (first 6
-- digits) to districts.  A changed polygon leaves the community's cells as
-- they were until the next repartition recomputes them: a partitioned
-- community whose polygon changed gets a 'repartition' row.
--
-- jit is off in these functions: the planner's estimates for PostGIS calls
-- inside PL/pgSQL are far too high, and compiling the plans took longer
-- than running them (most of a partition's apply time on the sample).
CREATE FUNCTION gridd_import_communities(p_ids text[], p_names text[],
    p_codes text[], p_geojsons text[], p_lines integer[])
RETURNS TABLE (line integer, community_id text, action text, error text)
LANGUAGE plpgsql
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
	n integer := coalesce(cardinality(p_ids), 0);
BEGIN
	PERFORM gridd_check_lengths('gridd_import_communities', n,
	    ARRAY[coalesce(cardinality(p_names), n),
	    coalesce(cardinality(p_codes), n), cardinality(p_geojsons),
	    coalesce(cardinality(p_lines), n)]);
	IF n = 0 THEN
		RETURN;
	END IF;
	RETURN QUERY
	WITH src AS MATERIALIZED (
		SELECT o.ord,
		    coalesce(p_lines[o.ord], o.ord) AS line,
		    p_ids[o.ord] AS id,
		    coalesce(nullif(btrim(p_names[o.ord]), ''),
			p_ids[o.ord]) AS name,
		    nullif(btrim(p_codes[o.ord]), '') AS code,
		    p_geojsons[o.ord] AS geojson,
		    row_number() OVER (PARTITION BY p_ids[o.ord]
			ORDER BY o.ord) AS dup,
		    first_value(coalesce(p_lines[o.ord], o.ord)) OVER
			(PARTITION BY p_ids[o.ord] ORDER BY o.ord) AS first_line
		FROM generate_series(1, n) AS o(ord)
	), parsed AS MATERIALIZED (
		-- old_geom: the polygon before this statement (every CTE sees
		-- the same snapshot, so not the one written below).
		SELECT s.*, pa.geom, pa.error AS geom_error,
		    oc.geom AS old_geom, oc.community_id IS NOT NULL AS existed
		FROM src s
		LEFT JOIN LATERAL gridd_parse_area(s.geojson) pa
		    ON s.id ~ '^[A-Za-z0-9_.-]{1,64}$' AND s.dup = 1
		LEFT JOIN communities oc ON oc.community_id = s.id
	), v AS MATERIALIZED (
		SELECT p.*,
		    CASE
		    WHEN p.id IS NULL OR p.id !~ '^[A-Za-z0-9_.-]{1,64}$' THEN
			'id: must be 1-64 characters of A-Z a-z 0-9 _ . -'
		    WHEN p.dup > 1 THEN
			'id: duplicate in this batch (first at line ' ||
			p.first_line || ')'
		    WHEN length(p.name) > 200 THEN
			'name: longer than 200 characters'
		    WHEN p.code IS NOT NULL AND p.code !~ '^[0-9]{12}$' THEN
			'code: must be 12 digits (district 6 + street 3 + '
			'community 3) or empty'
		    WHEN p.geom_error IS NOT NULL THEN
			'geometry: ' || p.geom_error
		    END AS err
		FROM parsed p
	), ins AS (
		INSERT INTO communities AS c (community_id, name, code,
		    district_code, street_code, geom)
		SELECT v.id, v.name, v.code, coalesce(left(v.code, 6), ''),
		    coalesce(left(v.code, 9), ''), v.geom
		FROM v WHERE v.err IS NULL
		ORDER BY v.id COLLATE "C"
		ON CONFLICT ON CONSTRAINT communities_pkey DO UPDATE SET
		    name = EXCLUDED.name, code = EXCLUDED.code,
		    district_code = EXCLUDED.district_code,
		    street_code = EXCLUDED.street_code,
		    geom = EXCLUDED.geom, updated_at = now()
		WHERE (c.name, c.code, c.district_code, c.street_code)
		    IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.code,
		    EXCLUDED.district_code, EXCLUDED.street_code)
		    OR c.geom IS DISTINCT FROM EXCLUDED.geom
		RETURNING c.community_id, (c.xmax = 0) AS inserted
	), dist AS (
		INSERT INTO districts AS d (district_code)
		SELECT DISTINCT left(v.code, 6) FROM v
		WHERE v.err IS NULL AND v.code IS NOT NULL
		ORDER BY 1
		ON CONFLICT ON CONSTRAINT districts_pkey DO NOTHING
	), res AS (
		SELECT v.ord, v.line, v.id,
		    CASE WHEN v.err IS NOT NULL THEN 'rejected'
		    WHEN i.community_id IS NULL THEN 'unchanged'
		    WHEN i.inserted THEN 'inserted' ELSE 'updated' END AS action,
		    v.err,
		    v.err IS NULL AND i.community_id IS NOT NULL AND v.existed
			AND v.old_geom IS DISTINCT FROM v.geom AS geom_changed
		FROM v LEFT JOIN ins i ON v.err IS NULL AND i.community_id = v.id
	)
	SELECT q.line, q.id, q.action, q.err FROM (
		SELECT r.ord, r.line, r.id, r.action, r.err FROM res r
		UNION ALL
		SELECT n + 1, NULL, r.id, 'repartition', NULL FROM res r
		WHERE r.geom_changed AND EXISTS (SELECT 1 FROM cells c
		    WHERE c.community_id = r.id AND c.valid_to IS NULL)
	) q
	ORDER BY q.ord, q.id COLLATE "C";
END
$$;

-- Imports or updates buildings.  Per row: id (1-64 of A-Z a-z 0-9 _ . : -),
-- an existing community id, kind (residential, commercial, industrial,
-- public, agricultural, other, unknown; NULL/empty = unknown), households
-- 0..100000 (NULL = 0), levels 0..500 or NULL, lon/lat of the building's
-- point (its centroid), area_m2 >= 0 or NULL, and an optional footprint
-- (GeoJSON Polygon/MultiPolygon or NULL; p_levels, p_areas, p_footprints
-- and p_lines may be NULL arrays).  An unknown community rejects the row.
--
-- A point outside its community's polygon is accepted with a warning
-- (error = 'warning: ...'): real data has centroids of L-shaped buildings
-- or of buildings on the boundary just outside it, and the row still
-- belongs to that community; gridd_buildings_outside lists them.
-- A row without a footprint keeps the one stored (so a CSV of points
-- re-imported after the GeoJSON footprints changes nothing); a row with one
-- replaces it.  A point within 1.5e-6 degrees of the stored one in each
-- coordinate (about 0.15 m: the rounding of 6-decimal data, such as a
-- centroid taken from a rounded footprint instead of the source's own) is
-- the stored point, so the same buildings imported from the CSV and from
-- the GeoJSON, in either order, change nothing the second time.
--
-- A building moved to another community loses its cell; any other change
-- keeps the cell until the next repartition.  Every inserted or updated
-- row makes the cells of its community (and of the one it left) stale
-- where that community has cells: those get a 'repartition' row.
CREATE FUNCTION gridd_import_buildings(p_ids text[], p_community_ids text[],
    p_kinds text[], p_households integer[], p_levels integer[],
    p_lons double precision[], p_lats double precision[],
    p_areas double precision[], p_footprints text[], p_lines integer[])
RETURNS TABLE (line integer, building_id text, action text, error text)
LANGUAGE plpgsql
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
	n integer := coalesce(cardinality(p_ids), 0);
BEGIN
	PERFORM gridd_check_lengths('gridd_import_buildings', n,
	    ARRAY[cardinality(p_community_ids),
	    coalesce(cardinality(p_kinds), n),
	    coalesce(cardinality(p_households), n),
	    coalesce(cardinality(p_levels), n), cardinality(p_lons),
	    cardinality(p_lats), coalesce(cardinality(p_areas), n),
	    coalesce(cardinality(p_footprints), n),
	    coalesce(cardinality(p_lines), n)]);
	IF n = 0 THEN
		RETURN;
	END IF;
	RETURN QUERY
	WITH src AS MATERIALIZED (
		SELECT o.ord,
		    coalesce(p_lines[o.ord], o.ord) AS line,
		    p_ids[o.ord] AS id,
		    p_community_ids[o.ord] AS community,
		    coalesce(nullif(btrim(p_kinds[o.ord]), ''), 'unknown')
			AS kind,
		    coalesce(p_households[o.ord], 0) AS households,
		    p_levels[o.ord] AS levels,
		    p_lons[o.ord] AS lon, p_lats[o.ord] AS lat,
		    p_areas[o.ord] AS area,
		    nullif(btrim(p_footprints[o.ord]), '') AS footprint,
		    row_number() OVER (PARTITION BY p_ids[o.ord]
			ORDER BY o.ord) AS dup,
		    first_value(coalesce(p_lines[o.ord], o.ord)) OVER
			(PARTITION BY p_ids[o.ord] ORDER BY o.ord) AS first_line
		FROM generate_series(1, n) AS o(ord)
	), parsed AS MATERIALIZED (
		SELECT s.*, c.community_id AS known_community,
		    c.geom AS community_geom, pa.geom AS fp_geom,
		    pa.error AS fp_error, ob.community_id AS old_community,
		    ob.geom AS old_pt
		FROM src s
		LEFT JOIN communities c ON c.community_id = s.community
		LEFT JOIN LATERAL gridd_parse_area(s.footprint) pa
		    ON s.footprint IS NOT NULL AND s.dup = 1
		-- The row before this statement (the same snapshot for every
		-- CTE, so not the one written below).
		LEFT JOIN buildings ob ON ob.building_id = s.id
	), v AS MATERIALIZED (
		SELECT p.*,
		    CASE
		    WHEN p.id IS NULL OR p.id !~ '^[A-Za-z0-9_.:-]{1,64}$' THEN
			'id: must be 1-64 characters of A-Z a-z 0-9 _ . : -'
		    WHEN p.dup > 1 THEN
			'id: duplicate in this batch (first at line ' ||
			p.first_line || ')'
		    WHEN p.community IS NULL OR p.community = '' THEN
			'community: missing'
		    WHEN p.known_community IS NULL THEN
			'community: unknown community "' ||
			left(p.community, 64) || '"'
		    WHEN p.kind NOT IN ('residential', 'commercial',
			'industrial', 'public', 'agricultural', 'other',
			'unknown') THEN
			'kind: must be residential, commercial, industrial, '
			'public, agricultural, other or unknown'
		    WHEN p.households NOT BETWEEN 0 AND 100000 THEN
			'households: must be 0..100000'
		    WHEN p.levels IS NOT NULL AND
			p.levels NOT BETWEEN 0 AND 500 THEN
			'levels: must be 0..500 or empty'
		    WHEN p.lon IS NULL OR p.lat IS NULL THEN
			'lon/lat: missing'
		    WHEN NOT (p.lon BETWEEN -180 AND 180 AND
			p.lat BETWEEN -90 AND 90) THEN
			'lon/lat: outside -180..180 / -90..90'
		    WHEN p.area IS NOT NULL AND
			NOT (p.area >= 0 AND p.area < 1e8) THEN
			'area_m2: must be 0 <= area < 1e8 or empty'
		    WHEN p.fp_error IS NOT NULL THEN
			'footprint: ' || p.fp_error
		    END AS err,
		    CASE WHEN abs(ST_X(p.old_pt) - p.lon) <= 1.5e-6
			AND abs(ST_Y(p.old_pt) - p.lat) <= 1.5e-6 THEN p.old_pt
		    ELSE ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326) END AS pt
		FROM parsed p
	), ins AS (
		INSERT INTO buildings AS b (building_id, community_id, kind,
		    households, levels, area_m2, geom, footprint)
		SELECT v.id, v.community, v.kind, v.households, v.levels,
		    v.area, v.pt, v.fp_geom
		FROM v WHERE v.err IS NULL
		ORDER BY v.id COLLATE "C"
		ON CONFLICT ON CONSTRAINT buildings_pkey DO UPDATE SET
		    community_id = EXCLUDED.community_id,
		    kind = EXCLUDED.kind, households = EXCLUDED.households,
		    levels = EXCLUDED.levels, area_m2 = EXCLUDED.area_m2,
		    geom = EXCLUDED.geom,
		    footprint = coalesce(EXCLUDED.footprint, b.footprint),
		    cell_id = CASE WHEN b.community_id = EXCLUDED.community_id
			THEN b.cell_id END,
		    updated_at = now()
		WHERE (b.community_id, b.kind, b.households, b.levels,
		    b.area_m2) IS DISTINCT FROM (EXCLUDED.community_id,
		    EXCLUDED.kind, EXCLUDED.households, EXCLUDED.levels,
		    EXCLUDED.area_m2)
		    OR b.geom IS DISTINCT FROM EXCLUDED.geom
		    OR (EXCLUDED.footprint IS NOT NULL
			AND b.footprint IS DISTINCT FROM EXCLUDED.footprint)
		RETURNING b.building_id, (b.xmax = 0) AS inserted
	), res AS (
		SELECT v.ord, v.line, v.id,
		    CASE WHEN v.err IS NOT NULL THEN 'rejected'
		    WHEN i.building_id IS NULL THEN 'unchanged'
		    WHEN i.inserted THEN 'inserted' ELSE 'updated' END AS action,
		    coalesce(v.err,
			CASE WHEN v.community_geom IS NOT NULL AND
			    NOT ST_Intersects(v.community_geom, v.pt) THEN
			    'warning: point lies outside the polygon of '
			    'community ' || v.community END) AS err,
		    CASE WHEN i.building_id IS NOT NULL THEN
			ARRAY[v.community, v.old_community] END AS touched
		FROM v LEFT JOIN ins i ON v.err IS NULL AND i.building_id = v.id
	), stale AS (
		SELECT DISTINCT t.c FROM res r, unnest(r.touched) AS t(c)
		WHERE t.c IS NOT NULL AND EXISTS (SELECT 1 FROM cells x
		    WHERE x.community_id = t.c AND x.valid_to IS NULL)
	)
	SELECT q.line, q.id, q.action, q.err FROM (
		SELECT r.ord, r.line, r.id, r.action, r.err FROM res r
		UNION ALL
		SELECT n + 1, NULL, st.c, 'repartition', NULL FROM stale st
	) q
	ORDER BY q.ord, q.id COLLATE "C";
END
$$;

-- Buildings whose point lies outside their community's polygon (accepted
-- with a warning at import; the cell polygons still cover the community,
-- so such a point is located in a neighbouring community or nowhere).
CREATE VIEW gridd_buildings_outside AS
SELECT b.building_id, b.community_id, b.cell_id,
    ST_X(b.geom) AS lon, ST_Y(b.geom) AS lat
FROM buildings b JOIN communities c USING (community_id)
WHERE NOT ST_Intersects(c.geom, b.geom);

-- Rebuilds the crosswalk rows of one department's codes (NULL codes: every
-- code of the department) against the current unified cells.  share = the
-- geodesic area of (department polygon ∩ cell) / the department polygon's
-- area.  Shares below 1e-6 are dropped: they are floating-point slivers
-- where a department boundary follows a cell boundary, not real overlap.
-- The dominant row is the largest share (ties: the smaller cell id).  The
-- shares of a code add up to the part of it covered by current cells (1
-- inside partitioned communities).  Returns the rows written.
CREATE FUNCTION gridd_crosswalk_refresh(p_department text, p_codes text[])
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
	v_rows integer;
BEGIN
	DELETE FROM crosswalk x
	WHERE x.department_id = p_department
	    AND (p_codes IS NULL OR x.dept_code = ANY (p_codes));
	INSERT INTO crosswalk (department_id, dept_code, community_id,
	    cell_id, share, dominant)
	SELECT s.department_id, s.dept_code, s.community_id, s.cell_id,
	    least(s.share, 1.0),
	    row_number() OVER (PARTITION BY s.dept_code
		ORDER BY s.share DESC, s.cell_id COLLATE "C") = 1
	FROM (
		SELECT l.department_id, l.dept_code, c.community_id,
		    c.cell_id,
		    ST_Area(ST_Intersection(l.geom, c.geom)::geography) /
			nullif(ST_Area(l.geom::geography), 0) AS share
		FROM department_layers l
		JOIN cells c ON c.valid_to IS NULL
		    AND ST_Intersects(l.geom, c.geom)
		WHERE l.department_id = p_department
		    AND (p_codes IS NULL OR l.dept_code = ANY (p_codes))
	) s
	WHERE s.share >= 1e-6;
	GET DIAGNOSTICS v_rows = ROW_COUNT;
	RETURN v_rows;
END
$$;

-- Rebuilds the crosswalk rows of every department code that overlaps the
-- community now or had rows in it before (after a repartition or a changed
-- community polygon).
CREATE FUNCTION gridd_crosswalk_refresh_community(p_community text)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
	d	record;
	v_rows	integer := 0;
BEGIN
	FOR d IN
		SELECT t.department_id, array_agg(t.dept_code) AS codes
		FROM (
			SELECT l.department_id, l.dept_code
			FROM department_layers l, communities c
			WHERE c.community_id = p_community
			    AND ST_Intersects(l.geom, c.geom)
			UNION
			SELECT x.department_id, x.dept_code
			FROM crosswalk x WHERE x.community_id = p_community
		) t
		GROUP BY t.department_id ORDER BY t.department_id
	LOOP
		v_rows := v_rows +
		    gridd_crosswalk_refresh(d.department_id, d.codes);
	END LOOP;
	RETURN v_rows;
END
$$;

-- Imports a department's grid layer: one polygon per department code
-- (1-64 characters, no control characters; 12-, 15-, 20-digit or any
-- other scheme).  The department must exist in departments (synced from
-- the config), else the call raises.  p_replace = true first deletes every
-- polygon of the department whose code is not in this call, so a layer
-- sent in one call replaces the old one; a layer sent in several batches
-- passes true with the first batch only.  Afterwards the crosswalk rows of
-- the codes inserted or updated here are rebuilt (deleted codes lose
-- theirs by cascade).
CREATE FUNCTION gridd_import_layer(p_department text, p_codes text[],
    p_geojsons text[], p_lines integer[], p_replace boolean)
RETURNS TABLE (line integer, dept_code text, action text, error text)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
	n integer := coalesce(cardinality(p_codes), 0);
BEGIN
	PERFORM gridd_check_lengths('gridd_import_layer', n,
	    ARRAY[cardinality(p_geojsons), coalesce(cardinality(p_lines), n)]);
	IF NOT EXISTS (SELECT 1 FROM departments d
	    WHERE d.department_id = p_department) THEN
		RAISE EXCEPTION 'gridd_import_layer: unknown department "%"',
		    left(p_department, 64) USING ERRCODE = 'no_data_found';
	END IF;
	-- One import of a department's layer at a time: the replace step and
	-- the crosswalk rebuild must not interleave with another import.
	PERFORM 1 FROM departments d WHERE d.department_id = p_department
	    FOR UPDATE;

	CREATE TEMP TABLE IF NOT EXISTS gridd_layer_result (ord integer,
	    line integer, dept_code text, action text, error text)
	    ON COMMIT DROP;
	TRUNCATE gridd_layer_result;
	WITH src AS MATERIALIZED (
		SELECT o.ord,
		    coalesce(p_lines[o.ord], o.ord) AS line,
		    p_codes[o.ord] AS code,
		    p_geojsons[o.ord] AS geojson,
		    row_number() OVER (PARTITION BY p_codes[o.ord]
			ORDER BY o.ord) AS dup,
		    first_value(coalesce(p_lines[o.ord], o.ord)) OVER
			(PARTITION BY p_codes[o.ord] ORDER BY o.ord) AS first_line
		FROM generate_series(1, n) AS o(ord)
	), parsed AS MATERIALIZED (
		SELECT s.*, pa.geom, pa.error AS geom_error
		FROM src s
		LEFT JOIN LATERAL gridd_parse_area(s.geojson) pa
		    ON s.dup = 1
	), v AS MATERIALIZED (
		SELECT p.*,
		    CASE
		    WHEN p.code IS NULL OR length(p.code) NOT BETWEEN 1 AND 64
			OR p.code ~ '[[:cntrl:]]' OR p.code <> btrim(p.code) THEN
			'code: must be 1-64 characters without control '
			'characters or surrounding spaces'
		    WHEN p.dup > 1 THEN
			'code: duplicate in this batch (first at line ' ||
			p.first_line || ')'
		    WHEN p.geom_error IS NOT NULL THEN
			'geometry: ' || p.geom_error
		    END AS err
		FROM parsed p
	), del AS (
		DELETE FROM department_layers l
		WHERE p_replace AND l.department_id = p_department
		    AND l.dept_code NOT IN (SELECT v.code FROM v
			WHERE v.err IS NULL)
	), ins AS (
		INSERT INTO department_layers AS l (department_id, dept_code,
		    geom)
		SELECT p_department, v.code, v.geom
		FROM v WHERE v.err IS NULL
		ORDER BY v.code COLLATE "C"
		ON CONFLICT ON CONSTRAINT department_layers_pkey DO UPDATE SET
		    geom = EXCLUDED.geom, imported_at = now()
		WHERE l.geom IS DISTINCT FROM EXCLUDED.geom
		RETURNING l.dept_code, (l.xmax = 0) AS inserted
	)
	INSERT INTO gridd_layer_result
	SELECT v.ord, v.line, v.code,
	    CASE WHEN v.err IS NOT NULL THEN 'rejected'
	    WHEN i.dept_code IS NULL THEN 'unchanged'
	    WHEN i.inserted THEN 'inserted' ELSE 'updated' END,
	    v.err
	FROM v LEFT JOIN ins i ON v.err IS NULL AND i.dept_code = v.code;

	PERFORM gridd_crosswalk_refresh(p_department, (SELECT
	    array_agg(r.dept_code) FROM gridd_layer_result r
	    WHERE r.action IN ('inserted', 'updated')));
	RETURN QUERY SELECT r.line, r.dept_code, r.action, r.error
	    FROM gridd_layer_result r ORDER BY r.ord;
END
$$;

-- Partitioner input -----------------------------------------------------------

-- The buildings of a community as the partitioner sees them: idx numbers
-- them 0..n-1 by building_id (byte order), x/y are the building's point in
-- metres in the community's UTM zone, cell_id its current cell (NULL
-- before the first partition) so the partitioner can start from it.
-- gridd_partition_edges uses the same numbering.
CREATE FUNCTION gridd_partition_buildings(p_community text)
RETURNS TABLE (idx integer, building_id text, x double precision,
    y double precision, households integer, kind text,
    area_m2 double precision, cell_id text)
LANGUAGE sql STABLE
AS $$
	SELECT (row_number() OVER w - 1)::integer, b.building_id,
	    ST_X(p.pt), ST_Y(p.pt), b.households, b.kind, b.area_m2,
	    b.cell_id
	FROM buildings b
	CROSS JOIN LATERAL (SELECT ST_Transform(b.geom,
	    gridd_community_srid(p_community)) AS pt) p
	WHERE b.community_id = p_community
	WINDOW w AS (ORDER BY b.building_id COLLATE "C")
	ORDER BY b.building_id COLLATE "C"
$$;

-- The adjacency graph of a community's buildings, as pairs (a, b), a < b,
-- of gridd_partition_buildings idx numbers, sorted.  The rule:
--
-- 1. Distance edges: every pair of buildings whose footprints (their points
--    when they have none) are within neighbour_m metres of each other,
--    measured in the community's UTM projection.  Buildings at the very
--    same point are always joined.
-- 2. Connecting edges, added only where the distance graph falls apart:
--    take the Delaunay triangulation of the buildings' points (identical
--    points count once, for the lowest idx), and go through its edges from
--    the shortest to the longest (ties by idx), keeping an edge only when
--    it joins two components not yet joined (Kruskal's algorithm with the
--    distance graph's components as the starting forest).  So between two
--    groups of buildings the graph gains the shortest Delaunay edge that
--    links them, and nothing else: each community's graph ends up
--    connected while every edge stays local.  Should the triangulation
--    leave pieces apart (all points on one line), neighbours in (x, y)
--    order join them the same way.
--
-- neighbour_m must be 0..10000.  Communities are hard walls: only
-- buildings of p_community take part.  The distance search uses a
-- bounding-box index with a margin in degrees wider than neighbour_m, then
-- the exact test in metres.
CREATE FUNCTION gridd_partition_edges(p_community text,
    p_neighbour_m double precision)
RETURNS TABLE (a integer, b integer)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
	v_srid	integer;
	v_n	integer;
	v_lat	double precision;
	v_dlon	double precision;
	v_dlat	double precision;
	parent	integer[];
	ea	integer[] := '{}';
	eb	integer[] := '{}';
	ca	integer[];
	cb	integer[];
	i	integer;
	ra	integer;
	rb	integer;
BEGIN
	IF p_neighbour_m IS NULL OR NOT (p_neighbour_m BETWEEN 0 AND 10000) THEN
		RAISE EXCEPTION 'gridd_partition_edges: neighbour_m must be '
		    '0..10000, got %', p_neighbour_m
		    USING ERRCODE = 'numeric_value_out_of_range';
	END IF;
	v_srid := gridd_community_srid(p_community);
	SELECT count(*), max(greatest(abs(ST_Y(x.geom)), 0))
	INTO v_n, v_lat
	FROM buildings x WHERE x.community_id = p_community;
	IF v_n < 2 THEN
		RETURN;
	END IF;
	IF v_srid IS NULL THEN
		RAISE EXCEPTION 'gridd_partition_edges: community "%" is '
		    'unknown or has no polygon', left(p_community, 64)
		    USING ERRCODE = 'no_data_found';
	END IF;
	-- Degrees that surely span neighbour_m (plus 10% for the projection's
	-- scale and the footprints' extent in latitude).
	v_dlat := p_neighbour_m / 110574.0 * 1.1 + 1e-9;
	v_dlon := p_neighbour_m /
	    (111320.0 * cos(radians(least(v_lat + 1.0, 89.0)))) * 1.1 + 1e-9;

	-- 1. Distance edges.  The community's footprints (points where a
	-- building has none) go to a temporary table with its own bounding-box
	-- index and statistics.  Planned from the statistics of buildings
	-- instead, a community imported after the last ANALYZE looked like one
	-- row, and the join went quadratic (seconds instead of milliseconds).
	CREATE TEMP TABLE IF NOT EXISTS gridd_edge_bl (idx integer,
	    box geometry, g geometry) ON COMMIT DROP;
	TRUNCATE gridd_edge_bl;
	INSERT INTO gridd_edge_bl
	SELECT (row_number() OVER (ORDER BY x.building_id COLLATE "C")
		- 1)::integer,
	    coalesce(x.footprint, x.geom),
	    ST_Transform(coalesce(x.footprint, x.geom), v_srid)
	FROM buildings x WHERE x.community_id = p_community;
	CREATE INDEX IF NOT EXISTS gridd_edge_bl_box_idx ON gridd_edge_bl
	    USING gist (box);
	ANALYZE gridd_edge_bl;
	WITH e AS (
		SELECT pa.idx AS a, pb.idx AS b
		FROM gridd_edge_bl pa
		JOIN gridd_edge_bl pb
		    ON pb.box && ST_Expand(pa.box, v_dlon, v_dlat)
		    AND pa.idx < pb.idx
		WHERE ST_DWithin(pa.g, pb.g, p_neighbour_m)
	)
	SELECT coalesce(array_agg(e.a ORDER BY e.a, e.b), '{}'),
	    coalesce(array_agg(e.b ORDER BY e.a, e.b), '{}')
	INTO ea, eb FROM e;

	-- Points, deduplicated: each idx and the representative (lowest idx)
	-- of its exact point.
	CREATE TEMP TABLE IF NOT EXISTS gridd_edge_pts (idx integer,
	    rep integer, is_rep boolean, x double precision,
	    y double precision) ON COMMIT DROP;
	TRUNCATE gridd_edge_pts;
	INSERT INTO gridd_edge_pts
	SELECT r.idx, r.rep, r.idx = r.rep, r.x, r.y
	FROM (SELECT q.idx, min(q.idx) OVER (PARTITION BY q.x, q.y) AS rep,
	    q.x, q.y
	FROM (
		SELECT (row_number() OVER (ORDER BY x.building_id COLLATE "C")
			- 1)::integer AS idx,
		    ST_X(ST_Transform(x.geom, v_srid)) AS x,
		    ST_Y(ST_Transform(x.geom, v_srid)) AS y
		FROM buildings x WHERE x.community_id = p_community
	) q) r;
	-- Statistics, or the planner takes the table for 10 rows and joins
	-- the triangulation's ends to it by nested loops.
	ANALYZE gridd_edge_pts;
	-- Duplicates join their representative.
	SELECT ea || coalesce(array_agg(p.rep ORDER BY p.idx), '{}'),
	    eb || coalesce(array_agg(p.idx ORDER BY p.idx), '{}')
	INTO ea, eb
	FROM gridd_edge_pts p WHERE NOT p.is_rep;

	-- Components of the distance graph (union-find, idx + 1 as index).
	parent := array_fill(0, ARRAY[v_n]);
	FOR i IN 1 .. v_n LOOP
		parent[i] := i;
	END LOOP;
	FOR i IN 1 .. coalesce(cardinality(ea), 0) LOOP
		ra := ea[i] + 1;
		WHILE parent[ra] <> ra LOOP
			parent[ra] := parent[parent[ra]];
			ra := parent[ra];
		END LOOP;
		rb := eb[i] + 1;
		WHILE parent[rb] <> rb LOOP
			parent[rb] := parent[parent[rb]];
			rb := parent[rb];
		END LOOP;
		IF ra <> rb THEN
			parent[greatest(ra, rb)] := least(ra, rb);
		END IF;
	END LOOP;

	-- 2. Candidate connecting edges: Delaunay edges by length, then the
	-- (x, y)-order chain for degenerate layouts.
	WITH reps AS MATERIALIZED (
		SELECT p.idx, p.x, p.y FROM gridd_edge_pts p WHERE p.is_rep
	), lines AS (
		SELECT (ST_Dump(ST_DelaunayTriangles(ST_Collect(
		    ST_MakePoint(r.x, r.y) ORDER BY r.idx), 0, 1))).geom AS l
		FROM reps r
		HAVING count(*) >= 3
	), tri AS MATERIALIZED (
		-- Triangulation vertices are the input points, bit for bit, so
		-- the ends map back to buildings by exact (hashed) equality.
		SELECT ST_X(ST_StartPoint(l.l)) AS sx,
		    ST_Y(ST_StartPoint(l.l)) AS sy,
		    ST_X(ST_EndPoint(l.l)) AS tx, ST_Y(ST_EndPoint(l.l)) AS ty,
		    ST_Length(l.l) AS len
		FROM lines l
	), del AS (
		SELECT least(s.idx, t.idx) AS a, greatest(s.idx, t.idx) AS b,
		    tri.len, 0 AS pass
		FROM tri
		JOIN reps s ON s.x = tri.sx AND s.y = tri.sy
		JOIN reps t ON t.x = tri.tx AND t.y = tri.ty
		WHERE s.idx <> t.idx
	), chain AS (
		SELECT least(q.idx, q.nidx) AS a, greatest(q.idx, q.nidx) AS b,
		    sqrt((q.nx - q.x) ^ 2 + (q.ny - q.y) ^ 2) AS len, 1 AS pass
		FROM (
			SELECT r.idx, r.x, r.y,
			    lead(r.idx) OVER o AS nidx, lead(r.x) OVER o AS nx,
			    lead(r.y) OVER o AS ny
			FROM reps r WINDOW o AS (ORDER BY r.x, r.y, r.idx)
		) q WHERE q.nidx IS NOT NULL
	), allc AS (
		SELECT DISTINCT ON (u.a, u.b) u.a, u.b, u.len, u.pass
		FROM (SELECT * FROM del UNION ALL SELECT * FROM chain) u
		ORDER BY u.a, u.b, u.pass
	)
	SELECT array_agg(c.a ORDER BY c.pass, c.len, c.a, c.b),
	    array_agg(c.b ORDER BY c.pass, c.len, c.a, c.b)
	INTO ca, cb FROM allc c;

	FOR i IN 1 .. coalesce(cardinality(ca), 0) LOOP
		ra := ca[i] + 1;
		WHILE parent[ra] <> ra LOOP
			parent[ra] := parent[parent[ra]];
			ra := parent[ra];
		END LOOP;
		rb := cb[i] + 1;
		WHILE parent[rb] <> rb LOOP
			parent[rb] := parent[parent[rb]];
			rb := parent[rb];
		END LOOP;
		IF ra <> rb THEN
			parent[greatest(ra, rb)] := least(ra, rb);
			ea := ea || ca[i];
			eb := eb || cb[i];
		END IF;
	END LOOP;

	RETURN QUERY
	SELECT DISTINCT u.a, u.b FROM unnest(ea, eb) AS u(a, b)
	ORDER BY u.a, u.b;
END
$$;

-- Partitioner output ------------------------------------------------------

-- The polygons of a community's cells from the buildings' current cell_id:
-- the Voronoi regions of the buildings' points (in the community's UTM
-- zone, extended well past the community), each region given to its
-- building's cell, unioned per cell, clipped to the community polygon and
-- taken back to WGS-84.  Every point of the community thus lies in exactly
-- one cell, up to floating-point slivers (gaps or overlaps of about a
-- thousandth of a square metre in all, along edges, from the round trip
-- between degrees and metres).  Buildings at one identical point share one
-- region, which goes to the cell of the lowest building id among them; a
-- cell left without any region gets an empty polygon.  A community with
-- one cell gets the community polygon itself.  p_only (NULL: every cell)
-- restricts the costly part, the union and clipping per cell, to the cells
-- listed; the others may be missing from the result.
CREATE FUNCTION gridd_cell_polygons(p_community text,
    p_only text[] DEFAULT NULL)
RETURNS TABLE (cell_id text, geom geometry)
LANGUAGE plpgsql
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
	v_area	geometry;
	v_srid	integer;
	v_cells	integer;
	v_sites	integer;
	v_proj	geometry;
	v_ext	geometry;
BEGIN
	SELECT c.geom INTO v_area FROM communities c
	WHERE c.community_id = p_community;
	IF v_area IS NULL THEN
		RAISE EXCEPTION 'gridd_cell_polygons: community "%" is unknown '
		    'or has no polygon', left(p_community, 64)
		    USING ERRCODE = 'no_data_found';
	END IF;
	v_srid := gridd_utm_srid(v_area);
	SELECT count(DISTINCT x.cell_id) INTO v_cells
	FROM buildings x
	WHERE x.community_id = p_community AND x.cell_id IS NOT NULL;
	IF v_cells = 0 THEN
		RETURN;
	END IF;
	IF v_cells = 1 THEN
		RETURN QUERY SELECT min(x.cell_id), v_area FROM buildings x
		    WHERE x.community_id = p_community
		    AND x.cell_id IS NOT NULL;
		RETURN;
	END IF;

	CREATE TEMP TABLE IF NOT EXISTS gridd_sites (site integer,
	    cell_id text, pt geometry) ON COMMIT DROP;
	CREATE TEMP TABLE IF NOT EXISTS gridd_regions (region integer,
	    g geometry) ON COMMIT DROP;
	TRUNCATE gridd_sites, gridd_regions;
	INSERT INTO gridd_sites
	SELECT (row_number() OVER (ORDER BY d.x, d.y))::integer, d.cell_id,
	    ST_SetSRID(ST_MakePoint(d.x, d.y), v_srid)
	FROM (
		SELECT DISTINCT ON (q.x, q.y) q.x, q.y, q.cell_id
		FROM (
			SELECT ST_X(t.p) AS x, ST_Y(t.p) AS y, x.cell_id,
			    x.building_id
			FROM buildings x
			CROSS JOIN LATERAL (SELECT ST_Transform(x.geom,
			    v_srid) AS p) t
			WHERE x.community_id = p_community
			    AND x.cell_id IS NOT NULL
		) q
		ORDER BY q.x, q.y, q.building_id COLLATE "C"
	) d;
	GET DIAGNOSTICS v_sites = ROW_COUNT;

	IF v_sites = 1 THEN
		RETURN QUERY
		SELECT DISTINCT x.cell_id,
		    CASE WHEN x.cell_id = s.cell_id THEN v_area
		    ELSE ST_SetSRID('MULTIPOLYGON EMPTY'::geometry, 4326) END
		FROM buildings x, gridd_sites s
		WHERE x.community_id = p_community AND x.cell_id IS NOT NULL;
		RETURN;
	END IF;

	-- Extend the diagram well past the community so that, after the way
	-- back to degrees, the regions still cover all of it.
	v_proj := ST_Transform(v_area, v_srid);
	v_ext := ST_Envelope(v_proj);
	v_ext := ST_Expand(v_ext, greatest(1000.0, 0.1 * greatest(
	    ST_XMax(v_ext) - ST_XMin(v_ext), ST_YMax(v_ext) - ST_YMin(v_ext))));
	INSERT INTO gridd_regions
	SELECT (row_number() OVER ())::integer, r.geom
	FROM ST_Dump((SELECT ST_VoronoiPolygons(ST_Collect(s.pt ORDER BY
	    s.site), 0, v_ext) FROM gridd_sites s)) r;
	CREATE INDEX IF NOT EXISTS gridd_regions_g_idx ON gridd_regions
	    USING gist (g);
	ANALYZE gridd_regions;

	RETURN QUERY
	WITH owner AS (
		-- Each region holds exactly one site; should rounding put a
		-- site on a neighbour's edge too, the lowest site number
		-- wins and the region left without one is an orphan.
		SELECT DISTINCT ON (r.region) r.region, s.cell_id, r.g
		FROM gridd_regions r
		JOIN gridd_sites s ON ST_Intersects(r.g, s.pt)
		ORDER BY r.region, s.site
	), orphan AS (
		-- Never expected; keeps the tiling whole if it happens.
		SELECT r.region, (SELECT s.cell_id FROM gridd_sites s
		    ORDER BY s.pt <-> ST_PointOnSurface(r.g), s.site
		    LIMIT 1) AS cell_id, r.g
		FROM gridd_regions r
		WHERE NOT EXISTS (SELECT 1 FROM owner o
		    WHERE o.region = r.region)
	), assigned AS MATERIALIZED (
		-- Materialized so that the p_only filter below is not pushed
		-- into orphan, whose subquery would then run for every region.
		SELECT * FROM owner UNION ALL SELECT * FROM orphan
	), per_cell AS (
		SELECT u.cell_id, ST_Union(u.g ORDER BY u.region) AS g
		FROM assigned u
		WHERE p_only IS NULL OR u.cell_id = ANY (p_only)
		GROUP BY u.cell_id
	), clipped AS (
		-- Clipped in metres, then taken back to degrees: clipping the
		-- back-projected regions in degrees instead loses slivers of
		-- square metres along long community edges (GEOS overlay on
		-- long, nearly collinear segments), clipping in metres loses
		-- thousandths of a square metre.
		SELECT pc.cell_id, ST_Multi(ST_CollectionExtract(ST_Transform(
		    ST_Intersection(v_proj, pc.g), 4326), 3)) AS g
		FROM per_cell pc
	)
	SELECT cl.cell_id, CASE WHEN cl.g IS NULL OR ST_IsEmpty(cl.g)
	    THEN ST_SetSRID('MULTIPOLYGON EMPTY'::geometry, 4326)
	    ELSE cl.g END
	FROM clipped cl
	UNION ALL
	SELECT DISTINCT x.cell_id,
	    ST_SetSRID('MULTIPOLYGON EMPTY'::geometry, 4326)
	FROM buildings x
	WHERE x.community_id = p_community AND x.cell_id IS NOT NULL
	    AND (p_only IS NULL OR x.cell_id = ANY (p_only))
	    AND NOT EXISTS (SELECT 1 FROM clipped cl
		WHERE cl.cell_id = x.cell_id);
END
$$;

-- Applies a partition of one community in the caller's transaction.
--   p_building_ids, p_building_cells: parallel, every building of the
--     community exactly once with its new cell id;
--   p_cell_ids, p_cell_kinds: parallel, every cell exactly once with its
--     kind ('comprehensive' or 'dedicated'); each must hold a building.
-- Cell ids must match cells.cell_id (see gridd_cell_id) and must not be a
-- current cell of another community.  Anything else raises, and the caller
-- rolls back: a partial grid is never stored.
--
-- Cell history (cells.valid_from/valid_to): a cell id that is no longer
-- listed is retired (valid_to = now()); a new id gets a version from now();
-- a surviving id whose buildings, kind, counts or polygon changed gets its
-- current version closed and a new version from now() (the same
-- transaction's own versions are updated in place); an unchanged cell is
-- not touched.  Applying the same partition again therefore writes
-- nothing.  The community's crosswalk rows are rebuilt when any cell
-- changed.
--
-- Polygons: communities.cells_input fingerprints what the current cell
-- polygons were computed from (the community polygon and its buildings'
-- ids and points).  While it matches, a cell whose buildings stayed the
-- same keeps its polygon (its Voronoi regions are the same), and only the
-- cells that gained or lost buildings are rebuilt; otherwise every cell
-- is.  Rebuilding the polygons is most of the cost of an apply.
--
-- Returns cells (current cells after), buildings_moved (buildings that
-- changed from one cell to another), created, retired, buildings_assigned
-- (buildings that had no cell before) and cells_changed (surviving cells
-- given a new version).
CREATE FUNCTION gridd_apply_partition(p_community text,
    p_building_ids text[], p_building_cells text[], p_cell_ids text[],
    p_cell_kinds text[])
RETURNS TABLE (cells integer, buildings_moved integer, created integer,
    retired integer, buildings_assigned integer, cells_changed integer)
LANGUAGE plpgsql
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
	v_input		text;
	v_prev_input	text;
	v_todo		text[];
	v_now		timestamptz := now();
	v_nb		integer := coalesce(cardinality(p_building_ids), 0);
	v_nc		integer := coalesce(cardinality(p_cell_ids), 0);
	v_total		integer;
	v_bad		text;
	v_moved		integer;
	v_assigned	integer;
	v_created	integer;
	v_retired	integer;
	v_changed	integer;
	v_cells		integer;
BEGIN
	PERFORM gridd_check_lengths('gridd_apply_partition (buildings)',
	    v_nb, ARRAY[cardinality(p_building_cells)]);
	PERFORM gridd_check_lengths('gridd_apply_partition (cells)',
	    v_nc, ARRAY[cardinality(p_cell_kinds)]);
	-- Serialises repartitions of one community.
	PERFORM 1 FROM communities c WHERE c.community_id = p_community
	    FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'gridd_apply_partition: unknown community "%"',
		    left(p_community, 64) USING ERRCODE = 'no_data_found';
	END IF;

	-- Cells: valid, distinct, not someone else's.
	SELECT u.id INTO v_bad
	FROM unnest(p_cell_ids, p_cell_kinds) AS u(id, kind)
	WHERE u.id IS NULL OR u.id !~ '^[A-Za-z0-9_.-]{1,80}$'
	    OR u.kind IS NULL OR u.kind NOT IN ('comprehensive', 'dedicated')
	LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'gridd_apply_partition: bad cell id or kind '
		    '(cell "%")', left(v_bad, 80)
		    USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF (SELECT count(DISTINCT u) FROM unnest(p_cell_ids) u) <> v_nc THEN
		RAISE EXCEPTION 'gridd_apply_partition: duplicate cell id'
		    USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT c.cell_id INTO v_bad FROM cells c
	WHERE c.valid_to IS NULL AND c.cell_id = ANY (p_cell_ids)
	    AND c.community_id <> p_community
	LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'gridd_apply_partition: cell "%" is a current '
		    'cell of another community', v_bad
		    USING ERRCODE = 'unique_violation';
	END IF;

	-- Buildings: exactly the community's, each once, in a listed cell.
	SELECT count(*) INTO v_total FROM buildings x
	WHERE x.community_id = p_community;
	IF (SELECT count(DISTINCT u) FROM unnest(p_building_ids) u) <> v_nb
	    OR v_nb <> v_total
	    OR (SELECT count(*) FROM buildings x
		WHERE x.building_id = ANY (p_building_ids)
		AND x.community_id = p_community) <> v_total THEN
		RAISE EXCEPTION 'gridd_apply_partition: the building list must '
		    'name each of the % buildings of community "%" exactly '
		    'once (got % ids)', v_total, p_community, v_nb
		    USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT u.cell INTO v_bad
	FROM unnest(p_building_cells) AS u(cell)
	WHERE u.cell IS NULL OR NOT (u.cell = ANY (p_cell_ids))
	LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'gridd_apply_partition: building cell "%" is '
		    'not in the cell list', coalesce(left(v_bad, 80), 'NULL')
		    USING ERRCODE = 'invalid_parameter_value';
	END IF;
	SELECT u INTO v_bad FROM unnest(p_cell_ids) u
	WHERE NOT (u = ANY (p_building_cells)) LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'gridd_apply_partition: cell "%" has no '
		    'building', v_bad USING ERRCODE = 'invalid_parameter_value';
	END IF;

	-- Move the buildings, remembering where they were.
	CREATE TEMP TABLE IF NOT EXISTS gridd_assign (building_id text,
	    old_cell text, new_cell text, households integer) ON COMMIT DROP;
	TRUNCATE gridd_assign;
	INSERT INTO gridd_assign
	SELECT x.building_id, x.cell_id, u.cell, x.households
	FROM unnest(p_building_ids, p_building_cells) AS u(id, cell)
	JOIN buildings x ON x.building_id = u.id;
	SELECT count(*) FILTER (WHERE a.old_cell IS NOT NULL
		AND a.old_cell <> a.new_cell),
	    count(*) FILTER (WHERE a.old_cell IS NULL)
	INTO v_moved, v_assigned FROM gridd_assign a;
	UPDATE buildings x SET cell_id = a.new_cell
	FROM gridd_assign a
	WHERE x.building_id = a.building_id
	    AND x.cell_id IS DISTINCT FROM a.new_cell;

	-- The new cells with their counts and kinds.
	CREATE TEMP TABLE IF NOT EXISTS gridd_newcells (cell_id text,
	    kind text, households integer, buildings integer,
	    touched boolean, geom geometry) ON COMMIT DROP;
	TRUNCATE gridd_newcells;
	INSERT INTO gridd_newcells
	SELECT k.id, k.kind, s.households, s.buildings,
	    EXISTS (SELECT 1 FROM gridd_assign a
		WHERE a.old_cell IS DISTINCT FROM a.new_cell
		AND (a.old_cell = k.id OR a.new_cell = k.id)),
	    NULL
	FROM unnest(p_cell_ids, p_cell_kinds) AS k(id, kind)
	JOIN (SELECT a.new_cell, sum(a.households)::integer AS households,
		count(*)::integer AS buildings
	    FROM gridd_assign a GROUP BY a.new_cell) s ON s.new_cell = k.id;

	-- Their polygons: kept where the fingerprint allows, else rebuilt.
	SELECT md5(coalesce(ST_AsEWKB(c.geom)::text, 'none') || '|' ||
	    coalesce((SELECT string_agg(x.building_id || ':' ||
		ST_AsEWKB(x.geom)::text, ',' ORDER BY x.building_id COLLATE "C")
		FROM buildings x WHERE x.community_id = p_community), '')),
	    c.cells_input
	INTO v_input, v_prev_input
	FROM communities c WHERE c.community_id = p_community;
	IF v_input = v_prev_input THEN
		UPDATE gridd_newcells nc SET geom = c.geom
		FROM cells c
		WHERE c.cell_id = nc.cell_id AND c.valid_to IS NULL
		    AND c.community_id = p_community AND NOT nc.touched
		    AND c.geom IS NOT NULL;
		SELECT coalesce(array_agg(nc.cell_id), '{}') INTO v_todo
		FROM gridd_newcells nc WHERE nc.geom IS NULL;
	END IF;
	IF v_todo IS NULL OR cardinality(v_todo) > 0 THEN
		UPDATE gridd_newcells nc SET geom = p.geom
		FROM gridd_cell_polygons(p_community, v_todo) p
		WHERE p.cell_id = nc.cell_id AND nc.geom IS NULL;
	END IF;
	-- Only when it changed: a statement on communities, even one that
	-- updates no row, fires its grid-changed trigger (003_feed.sql).
	IF v_input IS DISTINCT FROM v_prev_input THEN
		UPDATE communities c SET cells_input = v_input
		WHERE c.community_id = p_community;
	END IF;

	-- Retire what is gone.
	UPDATE cells c SET valid_to = v_now
	WHERE c.community_id = p_community AND c.valid_to IS NULL
	    AND NOT (c.cell_id = ANY (p_cell_ids));
	GET DIAGNOSTICS v_retired = ROW_COUNT;

	-- Surviving cells that changed: this transaction's own versions are
	-- updated in place, older ones closed and followed by a new version.
	CREATE TEMP TABLE IF NOT EXISTS gridd_changed (cell_id text,
	    own boolean) ON COMMIT DROP;
	TRUNCATE gridd_changed;
	INSERT INTO gridd_changed
	SELECT c.cell_id, c.valid_from = v_now
	FROM cells c JOIN gridd_newcells nc ON nc.cell_id = c.cell_id
	WHERE c.valid_to IS NULL AND c.community_id = p_community
	    AND (nc.touched OR c.kind <> nc.kind
		OR c.households <> nc.households
		OR c.buildings <> nc.buildings
		OR c.geom IS NULL OR nc.geom IS NULL
		OR NOT (c.geom = nc.geom OR ST_Equals(c.geom, nc.geom)));
	GET DIAGNOSTICS v_changed = ROW_COUNT;
	UPDATE cells c SET kind = nc.kind, households = nc.households,
	    buildings = nc.buildings, geom = nc.geom
	FROM gridd_changed ch JOIN gridd_newcells nc USING (cell_id)
	WHERE ch.own AND c.cell_id = ch.cell_id AND c.valid_to IS NULL;
	UPDATE cells c SET valid_to = v_now
	FROM gridd_changed ch
	WHERE NOT ch.own AND c.cell_id = ch.cell_id AND c.valid_to IS NULL;

	-- A version opened and closed within this transaction would collide
	-- with a new one (same cell id, same valid_from) and covers no time.
	DELETE FROM cells c
	USING gridd_newcells nc
	WHERE c.cell_id = nc.cell_id AND c.valid_from = v_now
	    AND c.valid_to = v_now;
	SELECT count(*) INTO v_created FROM gridd_newcells nc
	WHERE NOT EXISTS (SELECT 1 FROM cells c
	    WHERE c.cell_id = nc.cell_id AND c.valid_to IS NULL)
	    AND NOT EXISTS (SELECT 1 FROM gridd_changed ch
		WHERE ch.cell_id = nc.cell_id);
	INSERT INTO cells (cell_id, community_id, kind, households, buildings,
	    geom, valid_from)
	SELECT nc.cell_id, p_community, nc.kind, nc.households, nc.buildings,
	    nc.geom, v_now
	FROM gridd_newcells nc
	WHERE NOT EXISTS (SELECT 1 FROM cells c
	    WHERE c.cell_id = nc.cell_id AND c.valid_to IS NULL)
	ORDER BY nc.cell_id COLLATE "C";

	IF v_changed > 0 OR v_created > 0 OR v_retired > 0 THEN
		PERFORM gridd_crosswalk_refresh_community(p_community);
	END IF;

	SELECT count(*) INTO v_cells FROM cells c
	WHERE c.community_id = p_community AND c.valid_to IS NULL;
	RETURN QUERY SELECT v_cells, v_moved, v_created, v_retired,
	    v_assigned, v_changed;
END
$$;

-- Locating ------------------------------------------------------------------

-- The current cell containing a WGS-84 point, and its community.  A point
-- on the edge between cells goes to the smaller cell id.  A point inside a
-- community that has no cells yet gives that community and a NULL cell; a
-- point outside every community (or not a valid coordinate) gives no row.
CREATE FUNCTION gridd_locate(p_lon double precision, p_lat double precision)
RETURNS TABLE (community_id text, cell_id text)
LANGUAGE sql STABLE
AS $$
	WITH pt AS (
		SELECT ST_SetSRID(ST_MakePoint(p_lon, p_lat), 4326) AS g
		WHERE p_lon BETWEEN -180 AND 180 AND p_lat BETWEEN -90 AND 90
	)
	SELECT r.community_id, r.cell_id FROM (
		(SELECT c.community_id, c.cell_id, 0 AS pass
		FROM cells c, pt
		WHERE c.valid_to IS NULL AND ST_Intersects(c.geom, pt.g)
		ORDER BY c.cell_id COLLATE "C" LIMIT 1)
		UNION ALL
		(SELECT m.community_id, NULL, 1
		FROM communities m, pt
		WHERE ST_Intersects(m.geom, pt.g)
		ORDER BY m.community_id COLLATE "C" LIMIT 1)
	) r
	ORDER BY r.pass LIMIT 1
$$;

-- gridd_locate for a batch of points in one statement: one row per input
-- position ord (1-based), community_id/cell_id NULL where nothing
-- contains the point.
CREATE FUNCTION gridd_locate_batch(p_lons double precision[],
    p_lats double precision[])
RETURNS TABLE (ord integer, community_id text, cell_id text)
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
BEGIN
	PERFORM gridd_check_lengths('gridd_locate_batch',
	    coalesce(cardinality(p_lons), 0), ARRAY[coalesce(
	    cardinality(p_lats), 0)]);
	RETURN QUERY
	SELECT u.ord::integer, l.community_id, l.cell_id
	FROM unnest(p_lons, p_lats) WITH ORDINALITY AS u(lon, lat, ord)
	LEFT JOIN LATERAL gridd_locate(u.lon, u.lat) l ON true
	ORDER BY u.ord;
END
$$;

-- The dominant current cell of a department grid code (NULL-free row with
-- its share of the code's area), or no row when the code is unknown or
-- overlaps no current cell.
CREATE FUNCTION gridd_locate_dept_code(p_department text, p_code text)
RETURNS TABLE (community_id text, cell_id text, share double precision)
LANGUAGE sql STABLE
AS $$
	SELECT x.community_id, x.cell_id, x.share FROM crosswalk x
	WHERE x.department_id = p_department AND x.dept_code = p_code
	    AND x.dominant
$$;

-- A building's community and current cell (cell NULL before the first
-- partition); no row for an unknown building.
CREATE FUNCTION gridd_locate_building(p_building text)
RETURNS TABLE (community_id text, cell_id text)
LANGUAGE sql STABLE
AS $$
	SELECT b.community_id, b.cell_id FROM buildings b
	WHERE b.building_id = p_building
$$;

-- Reading the grid ------------------------------------------------------------

-- A community's current cells with their polygon as GeoJSON (6 decimals,
-- about 0.1 m), ordered by cell id: the GetGrid reply.
CREATE FUNCTION gridd_grid(p_community text)
RETURNS TABLE (cell_id text, kind text, households integer,
    buildings integer, geojson text)
LANGUAGE sql STABLE
AS $$
	SELECT c.cell_id, c.kind, c.households, c.buildings,
	    coalesce(ST_AsGeoJSON(c.geom, 6),
		'{"type":"MultiPolygon","coordinates":[]}')
	FROM cells c
	WHERE c.community_id = p_community AND c.valid_to IS NULL
	ORDER BY c.cell_id COLLATE "C"
$$;

-- One row per department code: how many unified cells and communities it
-- overlaps, its dominant cell and that cell's share, and the share of the
-- code covered by current cells at all (below 1 where it reaches outside
-- every partitioned community).
CREATE VIEW gridd_dept_code_summary AS
SELECT l.department_id, l.dept_code,
    count(x.cell_id)::integer AS cells,
    count(DISTINCT x.community_id)::integer AS communities,
    max(x.cell_id) FILTER (WHERE x.dominant) AS dominant_cell,
    max(x.community_id) FILTER (WHERE x.dominant) AS dominant_community,
    coalesce(max(x.share) FILTER (WHERE x.dominant), 0) AS dominant_share,
    coalesce(sum(x.share), 0) AS covered_share
FROM department_layers l
LEFT JOIN crosswalk x USING (department_id, dept_code)
GROUP BY l.department_id, l.dept_code;

-- The straddle report: department codes that do not map cleanly onto one
-- unified cell.  reason lists, comma-separated: 'communities' (overlaps
-- several communities), 'cells' (the dominant cell holds less than
-- p_min_share of it), 'uncovered' (more than 1% of it lies outside every
-- current cell).  p_department NULL: every department.
CREATE FUNCTION gridd_dept_straddling(p_department text DEFAULT NULL,
    p_min_share double precision DEFAULT 0.9)
RETURNS TABLE (department_id text, dept_code text, cells integer,
    communities integer, dominant_cell text, dominant_share double precision,
    covered_share double precision, reason text)
LANGUAGE sql STABLE
AS $$
	SELECT s.department_id, s.dept_code, s.cells, s.communities,
	    s.dominant_cell, s.dominant_share, s.covered_share,
	    concat_ws(',',
		CASE WHEN s.communities > 1 THEN 'communities' END,
		CASE WHEN s.cells > 1 AND s.dominant_share < p_min_share
		    THEN 'cells' END,
		CASE WHEN s.covered_share < 0.99 THEN 'uncovered' END)
	FROM gridd_dept_code_summary s
	WHERE (p_department IS NULL OR s.department_id = p_department)
	    AND (s.communities > 1
		OR (s.cells > 1 AND s.dominant_share < p_min_share)
		OR s.covered_share < 0.99)
	ORDER BY s.department_id, s.dept_code COLLATE "C"
$$;

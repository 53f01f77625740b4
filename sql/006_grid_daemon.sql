-- 006_grid_daemon.sql - what the daemon's grid module adds to 002_grid.sql:
-- the strict-import check that turns any rejected row into a refusal of the
-- whole statement.
--
-- The migration runner wraps this file in one transaction.

-- Used by the daemon's import statements as
--   WITH r AS (SELECT * FROM gridd_import_...(...) WITH ORDINALITY ...),
--   s AS (SELECT gridd_import_check(strict, rejected, first errors) ...)
-- With p_strict and at least one rejected row it raises, so the statement
-- (and with it every row it wrote) rolls back: a strict import request is
-- all or nothing.  Otherwise it returns true.  p_errors are the first few
-- "line N: reason" texts, quoted in the message.
CREATE FUNCTION gridd_import_check(p_strict boolean, p_rejected bigint,
    p_errors text[])
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
	IF p_strict AND p_rejected > 0 THEN
		RAISE EXCEPTION 'import refused (strict): % row(s) rejected: %',
		    p_rejected, left(array_to_string(p_errors, '; '), 2000)
		    USING ERRCODE = 'check_violation';
	END IF;
	RETURN true;
END
$$;

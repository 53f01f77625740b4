-- 017_worker_hash_check.sql - the workers' password-hash rule, the same
-- strings, checked without counted repetitions.
--
-- The migration runner wraps this file in one transaction.
--
-- Why: PostgreSQL checks every CHECK constraint of a row on every UPDATE,
-- whatever the columns changed, and workers' rows change all day: a
-- check-in, an offer (the open count), a resolve.  001_init.sql's rule
-- for password_hash is the regular expression
-- '^pbkdf2-sha256\$[0-9]{1,10}\$[0-9a-f]{16,128}\$[0-9a-f]{64}$', and the
-- bounded repetitions make PostgreSQL's regex engine slow: on the bench's
-- database, one statement raising the open count of seven workers took
-- 0.64-0.97 ms with that one constraint on a copy of the table, 0.26-0.28
-- ms with this one, 0.07-0.14 ms with none (a loop of 200 statements in
-- one transaction, three rounds); on the table itself 0.85-1.28 ms, with
-- every constraint.  That statement runs once in every push that makes
-- offers (015_open_count_insert.sql).
--
-- The rule accepts exactly what the old one did: the regular expression
-- fixes the shape (three '$', digits, then lowercase hex twice), and the
-- lengths of the three fields between them are checked by split_part.
ALTER TABLE workers
	DROP CONSTRAINT workers_password_hash_check,
	ADD CONSTRAINT workers_password_hash_check CHECK (
	    password_hash ~ '^pbkdf2-sha256\$[0-9]+\$[0-9a-f]+\$[0-9a-f]+$'
	    AND length(split_part(password_hash, '$', 2)) <= 10
	    AND length(split_part(password_hash, '$', 3)) BETWEEN 16 AND 128
	    AND length(split_part(password_hash, '$', 4)) = 64);

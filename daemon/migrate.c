/* migrate.c - applies numbered sql/ files once each, under an advisory lock. */
#include "migrate.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db.h"
#include "log.h"

#define MIGRATE_MAX_FILE	(4 * 1024 * 1024)	/* bytes per file */
#define MIGRATE_MAX_FILES	999			/* NNN: three digits */
#define MIGRATE_MAX_NAME	64			/* the part after NNN_ */

struct migration {
	int version;
	char name[MIGRATE_MAX_NAME + 1];	/* without NNN_ and .sql */
	char file[MIGRATE_MAX_NAME + 9];	/* NNN_name.sql */
};

/* The advisory lock key every gridd process agrees on: 64-bit FNV-1a of a
 * fixed string, computed here rather than by a server-side hash whose
 * definition could change between PostgreSQL versions. */
static long long
lock_key(void)
{
	return (long long)fnv1a64("gridd.migrate");
}

/*
 * NNN_name.sql with exactly three digits (001..999) and a name of lower-case
 * letters, digits and underscores.  Other .sql files are refused rather than
 * skipped: a misnamed migration silently left out would be worse.
 * Returns 1 for a migration, 0 for a file to ignore, -1 for a bad name.
 */
static int
parse_name(const char *file, struct migration *m)
{
	size_t len = strlen(file);
	size_t nlen;

	if (file[0] == '.' || len < 4 || strcmp(file + len - 4, ".sql") != 0)
		return 0;
	if (len < 9 || file[0] < '0' || file[0] > '9' || file[1] < '0' ||
	    file[1] > '9' || file[2] < '0' || file[2] > '9' || file[3] != '_')
		return -1;
	nlen = len - 8;
	if (nlen > MIGRATE_MAX_NAME)
		return -1;
	for (size_t i = 4; i < len - 4; i++) {
		char c = file[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '_'))
			return -1;
	}
	m->version = (file[0] - '0') * 100 + (file[1] - '0') * 10 +
	    (file[2] - '0');
	if (m->version == 0)
		return -1;
	memcpy(m->name, file + 4, nlen);
	m->name[nlen] = '\0';
	snprintf(m->file, sizeof(m->file), "%s", file);
	return 1;
}

static int
cmp_version(const void *a, const void *b)
{
	const struct migration *x = a, *y = b;

	return (x->version > y->version) - (x->version < y->version);
}

/* The migrations found in dir, sorted; NULL on any error (logged). */
static struct migration *
list_migrations(const char *dir, int *count)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	struct migration *list = NULL;
	int n = 0;
	bool ok = true;

	if (d == NULL) {
		log_error("event=migrate dir=%s error=\"%s\"", dir,
		    strerror(errno));
		return NULL;
	}
	while (ok && (de = readdir(d)) != NULL) {
		struct migration m;
		int r = parse_name(de->d_name, &m);

		if (r == 0)
			continue;
		if (r < 0) {
			log_error("event=migrate file=%s error=\"bad migration "
			    "name: want NNN_name.sql (001-999, a-z 0-9 _)\"",
			    de->d_name);
			ok = false;
			break;
		}
		if (n == MIGRATE_MAX_FILES) {
			log_error("event=migrate dir=%s error=\"too many "
			    "files\"", dir);
			ok = false;
			break;
		}
		list = xreallocarray(list, (size_t)n + 1, sizeof(*list));
		list[n++] = m;
	}
	closedir(d);
	if (ok && n > 0)
		xqsort(list, (size_t)n, sizeof(*list), cmp_version);
	/* Two files with one number: which one ran is unknowable later. */
	for (int i = 1; ok && i < n; i++) {
		if (list[i].version == list[i - 1].version) {
			log_error("event=migrate file=%s error=\"duplicate "
			    "version %03d (also %s)\"", list[i].file,
			    list[i].version, list[i - 1].file);
			ok = false;
		}
	}
	if (!ok) {
		free(list);
		return NULL;
	}
	*count = n;
	return list != NULL ? list : xcalloc(1, sizeof(*list));
}

/* Reads a migration file whole: a regular file, at most MIGRATE_MAX_FILE
 * bytes, no NUL bytes (the simple-query protocol would stop at the first). */
static char *
read_file(const char *dir, const char *file)
{
	char path[4096];
	struct stat st;
	char *buf;
	size_t got = 0;
	int fd;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >=
	    sizeof(path)) {
		log_error("event=migrate file=%s error=\"path too long\"",
		    file);
		return NULL;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		log_error("event=migrate file=%s error=\"%s\"", file,
		    strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
	    st.st_size > MIGRATE_MAX_FILE) {
		log_error("event=migrate file=%s error=\"not a regular file "
		    "of at most %d bytes\"", file, MIGRATE_MAX_FILE);
		close(fd);
		return NULL;
	}
	buf = xmalloc((size_t)st.st_size + 1);
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	buf[got] = '\0';
	if (got != (size_t)st.st_size || memchr(buf, '\0', got) != NULL) {
		log_error("event=migrate file=%s error=\"short read or NUL "
		    "byte\"", file);
		free(buf);
		return NULL;
	}
	return buf;
}

/* false if the version is recorded (it may have been applied by another
 * process while we waited for the lock). */
static bool
is_applied(struct db_sync *s, const struct migration *m, bool *applied)
{
	char ver[16], err[512];
	const char *params[1] = { ver };
	char *name = NULL;

	snprintf(ver, sizeof(ver), "%d", m->version);
	if (!db_sync_query1(s, "SELECT name FROM schema_version "
	    "WHERE version = $1::int", 1, params, &name, err, sizeof(err))) {
		log_error("event=migrate file=%s error=\"%s\"", m->file, err);
		return false;
	}
	*applied = name != NULL;
	if (name != NULL && strcmp(name, m->name) != 0)
		log_warn("event=migrate version=%d name=%s recorded_name=%s "
		    "warning=\"file renamed after it was applied\"",
		    m->version, m->name, name);
	free(name);
	return true;
}

/* One file, its schema_version row, one transaction: a failure anywhere
 * leaves neither.  Files therefore hold no BEGIN/COMMIT of their own. */
static bool
apply_one(struct db_sync *s, const char *dir, const struct migration *m)
{
	char ver[16], err[1024], ignored[256];
	const char *params[2] = { ver, m->name };
	char *sql, *out = NULL;
	int64_t t0 = mono_ms();

	sql = read_file(dir, m->file);
	if (sql == NULL)
		return false;
	snprintf(ver, sizeof(ver), "%d", m->version);
	if (!db_sync_exec(s, "BEGIN", err, sizeof(err)))
		goto fail;
	if (!db_sync_exec(s, sql, err, sizeof(err)))
		goto fail_rollback;
	if (!db_sync_query1(s, "INSERT INTO schema_version (version, name) "
	    "VALUES ($1::int, $2)", 2, params, &out, err, sizeof(err)))
		goto fail_rollback;
	if (!db_sync_exec(s, "COMMIT", err, sizeof(err)))
		goto fail;
	free(sql);
	log_info("event=migrate version=%d name=%s ms=%lld", m->version,
	    m->name, (long long)(mono_ms() - t0));
	return true;

fail_rollback:
	if (!db_sync_exec(s, "ROLLBACK", ignored, sizeof(ignored)))
		log_debug("event=migrate rollback_error=\"%s\"", ignored);
fail:
	log_error("event=migrate file=%s error=\"%s\"", m->file, err);
	free(sql);
	return false;
}

static bool
migrate_locked(struct db_sync *s, const char *dir,
    const struct migration *list, int n)
{
	char err[512];
	char *maxv = NULL;
	int applied = 0;

	if (!db_sync_exec(s,
	    "CREATE TABLE IF NOT EXISTS schema_version ("
	    " version int PRIMARY KEY CHECK (version > 0),"
	    " name text NOT NULL,"
	    " applied_at timestamptz NOT NULL DEFAULT now())",
	    err, sizeof(err))) {
		log_error("event=migrate error=\"schema_version: %s\"", err);
		return false;
	}
	for (int i = 0; i < n; i++) {
		bool done;

		if (!is_applied(s, &list[i], &done))
			return false;
		if (done)
			continue;
		if (!apply_one(s, dir, &list[i]))
			return false;
		applied++;
	}
	if (db_sync_query1(s, "SELECT max(version) FROM schema_version", 0,
	    NULL, &maxv, err, sizeof(err)) && maxv != NULL && n > 0 &&
	    atoi(maxv) > list[n - 1].version)
		log_warn("event=migrate version=%s warning=\"the database is "
		    "newer than the migrations shipped (latest %d)\"", maxv,
		    list[n - 1].version);
	log_info("event=migrate_done applied=%d files=%d", applied, n);
	free(maxv);
	return true;
}

bool
migrate_run(const char *conninfo, const char *dir, int timeout_s)
{
	struct migration *list;
	struct db_sync *s;
	char err[512], key[32], lt[64];
	const char *params[1] = { key };
	char *out = NULL;
	int n = 0;
	bool ok;

	list = list_migrations(dir, &n);
	if (list == NULL)
		return false;
	s = db_sync_connect(conninfo, timeout_s, err, sizeof(err));
	if (s == NULL) {
		log_error("event=migrate error=\"connect: %s\"", err);
		free(list);
		return false;
	}
	/* lock_timeout bounds the wait for our lock and for the locks that
	 * the migrations themselves take on a busy database; work that runs
	 * long is not cut short. */
	snprintf(lt, sizeof(lt), "SET lock_timeout = %d",
	    (timeout_s > 0 ? timeout_s : 10) * 1000);
	snprintf(key, sizeof(key), "%lld", lock_key());
	if (!db_sync_exec(s, lt, err, sizeof(err)) ||
	    !db_sync_query1(s, "SELECT pg_advisory_lock($1::bigint)", 1,
	    params, &out, err, sizeof(err))) {
		log_error("event=migrate error=\"advisory lock: %s\"", err);
		db_sync_close(s);
		free(list);
		return false;
	}
	free(out);
	out = NULL;
	ok = migrate_locked(s, dir, list, n);
	/* Closing the session would release the lock too; unlocking says so
	 * explicitly and keeps a pooled session usable. */
	if (!db_sync_query1(s, "SELECT pg_advisory_unlock($1::bigint)", 1,
	    params, &out, err, sizeof(err)))
		log_warn("event=migrate warning=\"unlock: %s\"", err);
	free(out);
	db_sync_close(s);
	free(list);
	return ok;
}

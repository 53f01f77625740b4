/* session.c - Login for the three roles, session tokens, failed-login limits, UpsertWorker. */
#include "session.h"

#include <sys/queue.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "config.h"
#include "conn.h"
#include "db.h"
#include "dispatch.h"
#include "events.h"
#include "gridd.h"
#include "log.h"
#include "rpc.h"

/* Identifiers: worker, department, admin, community and cell ids. */
#define SESSION_ID_MAX		64
/* A login secret (password or API key); frames before login are small
 * anyway, this bounds what reaches the hash. */
#define SESSION_SECRET_MAX	1024
#define SESSION_TOKEN_BYTES	32
#define SESSION_TOKEN_HEX	(2 * SESSION_TOKEN_BYTES)

/* Worker accounts (UpsertWorker). */
#define WORKER_NAME_MAX		200	/* characters (the schema's bound) */
#define WORKER_PASSWORD_MIN	8
#define WORKER_PASSWORD_MAX	256
#define WORKER_MAX_CELLS	16	/* primary + backups */
#define WORKER_MAX_OPEN_LIMIT	1000
#define WORKER_MAX_OPEN_DEFAULT	5

/* Stored hashes: "pbkdf2-sha256$ITER$SALTHEX$HASHHEX". The bounds refuse a
 * row that would make one login burn minutes of CPU. */
#define PBKDF2_PREFIX		"pbkdf2-sha256$"
#define PBKDF2_SALT_BYTES	16
#define PBKDF2_HASH_BYTES	32
#define PBKDF2_MAX_ITER		10000000
#define PBKDF2_MAX_SALT		64
#define PBKDF2_MIN_HASH		16
#define PBKDF2_MAX_HASH		64
#define PBKDF2_ENC_MAX		(sizeof(PBKDF2_PREFIX) + 12 + \
				 2 * PBKDF2_MAX_SALT + 2 * PBKDF2_MAX_HASH + 4)

/* Expired session rows are deleted at most this often, piggybacked on
 * logins so an idle daemon does no work. */
#define SESSION_PURGE_INTERVAL_MS	(3600 * 1000)

/* Hash jobs waiting for the thread. Each costs tens of milliseconds, so
 * more than this would only be answered after clients gave up. */
#define HASH_QUEUE_MAX		128

/* Failed-login tables: fixed size, open addressing over a few slots, the
 * stalest entry evicted, so a flood of distinct names cannot grow memory. */
#define RL_SLOTS		2048
#define RL_PROBE		8
#define RL_KEY_MAX		(SESSION_ID_MAX + 8)

/* ---- the hashing thread ------------------------------------------------ */

enum hash_kind {
	HASH_VERIFY,	/* secret against stored (or a dummy when NULL) */
	HASH_CREATE,	/* new salt, iterations -> encoded */
};

struct hash_job {
	TAILQ_ENTRY(hash_job) entry;
	enum hash_kind kind;
	char *secret;
	char *stored;
	int iterations;
	bool ok;		/* VERIFY: matched; CREATE: encoded is set */
	bool cancelled;		/* shutdown dropped it: nothing was computed */
	char encoded[PBKDF2_ENC_MAX];
	void (*done)(struct hash_job *job);
	void *arg;
};

TAILQ_HEAD(hash_list, hash_job);

static struct {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct hash_list todo;
	struct hash_list done;
	size_t queued;		/* submitted and not yet delivered */
	bool running;
	bool stop;
	struct event *done_ev;
	uint8_t dummy_salt[PBKDF2_SALT_BYTES];
} hq = {
	.mu = PTHREAD_MUTEX_INITIALIZER,
	.cv = PTHREAD_COND_INITIALIZER,
	.todo = TAILQ_HEAD_INITIALIZER(hq.todo),
	.done = TAILQ_HEAD_INITIALIZER(hq.done),
};

static void
job_free(struct hash_job *job)
{
	if (job->secret != NULL) {
		OPENSSL_cleanse(job->secret, strlen(job->secret));
		free(job->secret);
	}
	free(job->stored);
	OPENSSL_cleanse(job->encoded, sizeof(job->encoded));
	free(job);
}

/* Parses a stored hash; false on anything malformed or out of bounds. */
static bool
pbkdf2_parse(const char *s, int *iter, uint8_t *salt, size_t *saltlen,
    uint8_t *hash, size_t *hashlen)
{
	const char *p, *d1, *d2;
	char num[12], hex[2 * PBKDF2_MAX_HASH + 1];
	long v;
	size_t n;

	if (strncmp(s, PBKDF2_PREFIX, strlen(PBKDF2_PREFIX)) != 0)
		return false;
	p = s + strlen(PBKDF2_PREFIX);
	if ((d1 = strchr(p, '$')) == NULL || (d2 = strchr(d1 + 1, '$')) == NULL)
		return false;
	n = (size_t)(d1 - p);
	if (n == 0 || n >= sizeof(num) || strspn(p, "0123456789") < n)
		return false;
	memcpy(num, p, n);
	num[n] = '\0';
	v = strtol(num, NULL, 10);
	if (v < 1 || v > PBKDF2_MAX_ITER)
		return false;
	*iter = (int)v;
	n = (size_t)(d2 - d1 - 1);
	if (n == 0 || n % 2 != 0 || n / 2 > PBKDF2_MAX_SALT)
		return false;
	memcpy(hex, d1 + 1, n);
	hex[n] = '\0';
	*saltlen = n / 2;
	if (!hex_decode(hex, salt, *saltlen))
		return false;
	n = strlen(d2 + 1);
	if (n % 2 != 0 || n / 2 < PBKDF2_MIN_HASH || n / 2 > PBKDF2_MAX_HASH)
		return false;
	*hashlen = n / 2;
	return hex_decode(d2 + 1, hash, *hashlen);
}

static void
hash_run(struct hash_job *job)
{
	uint8_t salt[PBKDF2_MAX_SALT], want[PBKDF2_MAX_HASH];
	uint8_t got[PBKDF2_MAX_HASH];
	size_t saltlen = 0, hashlen = 0;
	int iter = job->iterations;
	size_t slen = strlen(job->secret);

	if (job->kind == HASH_CREATE) {
		char salthex[2 * PBKDF2_SALT_BYTES + 1];
		char hashhex[2 * PBKDF2_HASH_BYTES + 1];

		job->ok = RAND_bytes(salt, PBKDF2_SALT_BYTES) == 1 &&
		    PKCS5_PBKDF2_HMAC(job->secret, (int)slen, salt,
		    PBKDF2_SALT_BYTES, iter, EVP_sha256(), PBKDF2_HASH_BYTES,
		    got) == 1;
		if (job->ok) {
			hex_encode(salt, PBKDF2_SALT_BYTES, salthex);
			hex_encode(got, PBKDF2_HASH_BYTES, hashhex);
			snprintf(job->encoded, sizeof(job->encoded), "%s%d$%s$%s",
			    PBKDF2_PREFIX, iter, salthex, hashhex);
		}
		OPENSSL_cleanse(got, sizeof(got));
		return;
	}
	/* VERIFY. An unknown principal or a malformed row costs the same
	 * work as a real check against the configured iterations, so the
	 * answer's timing does not tell whether the principal exists. */
	if (job->stored == NULL || !pbkdf2_parse(job->stored, &iter, salt,
	    &saltlen, want, &hashlen)) {
		memcpy(salt, hq.dummy_salt, PBKDF2_SALT_BYTES);
		saltlen = PBKDF2_SALT_BYTES;
		hashlen = PBKDF2_HASH_BYTES;
		iter = job->iterations;
		(void)PKCS5_PBKDF2_HMAC(job->secret, (int)slen, salt,
		    (int)saltlen, iter, EVP_sha256(), (int)hashlen, got);
		job->ok = false;
	} else {
		job->ok = PKCS5_PBKDF2_HMAC(job->secret, (int)slen, salt,
		    (int)saltlen, iter, EVP_sha256(), (int)hashlen, got) == 1 &&
		    ct_equal(got, want, hashlen);
	}
	OPENSSL_cleanse(got, sizeof(got));
}

static void *
hash_thread(void *arg)
{
	struct hash_job *job;

	UNUSED(arg);
	pthread_mutex_lock(&hq.mu);
	for (;;) {
		while (TAILQ_EMPTY(&hq.todo) && !hq.stop)
			pthread_cond_wait(&hq.cv, &hq.mu);
		if (hq.stop)
			break;
		job = TAILQ_FIRST(&hq.todo);
		TAILQ_REMOVE(&hq.todo, job, entry);
		pthread_mutex_unlock(&hq.mu);
		hash_run(job);
		pthread_mutex_lock(&hq.mu);
		TAILQ_INSERT_TAIL(&hq.done, job, entry);
		/* libevent's thread support (main.c) makes this safe from
		 * another thread: it wakes the loop. */
		event_active(hq.done_ev, EV_READ, 0);
	}
	pthread_mutex_unlock(&hq.mu);
	return NULL;
}

/* On the loop: hands finished jobs to their requests. */
static void
hash_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hash_list ready = TAILQ_HEAD_INITIALIZER(ready);
	struct hash_job *job;

	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	pthread_mutex_lock(&hq.mu);
	while ((job = TAILQ_FIRST(&hq.done)) != NULL) {
		TAILQ_REMOVE(&hq.done, job, entry);
		TAILQ_INSERT_TAIL(&ready, job, entry);
		hq.queued--;
	}
	pthread_mutex_unlock(&hq.mu);
	while ((job = TAILQ_FIRST(&ready)) != NULL) {
		TAILQ_REMOVE(&ready, job, entry);
		job->done(job);
	}
}

/* false when the thread is not running or the queue is full: the caller
 * answers UNAVAILABLE and keeps ownership of job. */
static bool
hash_submit(struct hash_job *job)
{
	bool ok = false;

	pthread_mutex_lock(&hq.mu);
	if (hq.running && !hq.stop && hq.queued < HASH_QUEUE_MAX) {
		TAILQ_INSERT_TAIL(&hq.todo, job, entry);
		hq.queued++;
		pthread_cond_signal(&hq.cv);
		ok = true;
	}
	pthread_mutex_unlock(&hq.mu);
	return ok;
}

bool
session_init(void)
{
	int rc;

	if (hq.running)
		return true;
	if (RAND_bytes(hq.dummy_salt, sizeof(hq.dummy_salt)) != 1) {
		log_error("session: RAND_bytes failed");
		return false;
	}
	hq.done_ev = event_new(gridd.base, -1, 0, hash_done_cb, NULL);
	if (hq.done_ev == NULL)
		return false;
	hq.stop = false;
	if ((rc = pthread_create(&hq.thread, NULL, hash_thread, NULL)) != 0) {
		log_error("session: cannot start the hashing thread: %s",
		    strerror(rc));
		event_free(hq.done_ev);
		hq.done_ev = NULL;
		return false;
	}
	hq.running = true;
	return true;
}

void
session_shutdown(void)
{
	struct hash_job *job;

	if (!hq.running)
		return;
	pthread_mutex_lock(&hq.mu);
	hq.stop = true;
	pthread_cond_broadcast(&hq.cv);
	pthread_mutex_unlock(&hq.mu);
	pthread_join(hq.thread, NULL);
	hq.running = false;
	/* Finished and never-started jobs alike: their requests release the
	 * connections they hold; replies to closing connections are dropped. */
	TAILQ_CONCAT(&hq.done, &hq.todo, entry);
	while ((job = TAILQ_FIRST(&hq.done)) != NULL) {
		TAILQ_REMOVE(&hq.done, job, entry);
		job->cancelled = true;
		job->ok = false;
		job->done(job);
	}
	hq.queued = 0;
	event_free(hq.done_ev);
	hq.done_ev = NULL;
}

/* ---- failed-login limits ----------------------------------------------- */

struct rl_entry {
	char key[RL_KEY_MAX];
	int64_t window_start;	/* mono_ms of the window's first failure */
	int failures;
};

static struct rl_entry rl_principals[RL_SLOTS];
static struct rl_entry rl_addrs[RL_SLOTS];

static bool
rl_expired(const struct rl_entry *e, int64_t now)
{
	return e->key[0] == '\0' ||
	    now - e->window_start >=
	    (int64_t)gridd.cfg->login_failure_window_s * 1000;
}

static struct rl_entry *
rl_find(struct rl_entry *t, const char *key, bool create)
{
	uint32_t h = fnv1a32(key);
	struct rl_entry *victim = NULL;
	int64_t now = mono_ms();

	for (unsigned i = 0; i < RL_PROBE; i++) {
		struct rl_entry *e = &t[(h + i) % RL_SLOTS];

		if (e->key[0] != '\0' && strcmp(e->key, key) == 0)
			return e;
		if (victim == NULL || (!rl_expired(victim, now) &&
		    (rl_expired(e, now) ||
		    e->window_start < victim->window_start)))
			victim = e;
	}
	if (!create)
		return NULL;
	snprintf(victim->key, sizeof(victim->key), "%s", key);
	victim->window_start = now;
	victim->failures = 0;
	return victim;
}

static bool
rl_limited(struct rl_entry *t, const char *key)
{
	struct rl_entry *e = rl_find(t, key, false);

	return e != NULL && !rl_expired(e, mono_ms()) &&
	    e->failures >= gridd.cfg->login_max_failures;
}

static void
rl_fail(struct rl_entry *t, const char *key)
{
	struct rl_entry *e = rl_find(t, key, true);

	if (rl_expired(e, mono_ms())) {
		e->window_start = mono_ms();
		e->failures = 0;
	}
	e->failures++;
}

static void
rl_clear(struct rl_entry *t, const char *key)
{
	struct rl_entry *e = rl_find(t, key, false);

	if (e != NULL)
		memset(e, 0, sizeof(*e));
}

/* ---- helpers ------------------------------------------------------------- */

static bool
valid_id(const char *s)
{
	size_t n = strlen(s);

	return n >= 1 && n <= SESSION_ID_MAX &&
	    strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789_.-") == n;
}

static const char *
role_db_name(enum conn_role r)
{
	return conn_role_name(r);	/* "worker", "department", "admin" */
}

static void
sha256_hex_bytea(const void *data, size_t len, char out[2 + 64 + 1])
{
	uint8_t md[SHA256_DIGEST_LENGTH];

	SHA256(data, len, md);
	out[0] = '\\';
	out[1] = 'x';
	hex_encode(md, sizeof(md), out + 2);
}

/* A database failure becomes UNAVAILABLE for the request it touched;
 * a statement the server refused for its data gets a precise code. */
static Gridd__V1__ErrorCode
db_error_code(enum db_status st, const char *sqlstate, const char **msg)
{
	if (st == DB_SQL_ERROR && strcmp(sqlstate, "23503") == 0) {
		*msg = "unknown community or cell";
		return GRIDD__V1__ERROR_CODE__NOT_FOUND;
	}
	if (st == DB_SQL_ERROR && (strncmp(sqlstate, "22", 2) == 0 ||
	    strncmp(sqlstate, "23", 2) == 0)) {
		*msg = "value refused by the database";
		return GRIDD__V1__ERROR_CODE__BAD_REQUEST;
	}
	/* A deadlock victim or a serialization failure did nothing: the
	 * same request a moment later succeeds. */
	if (st == DB_SQL_ERROR && (strcmp(sqlstate, "40P01") == 0 ||
	    strcmp(sqlstate, "40001") == 0)) {
		*msg = "database busy, retry";
		return GRIDD__V1__ERROR_CODE__UNAVAILABLE;
	}
	if (st == DB_SQL_ERROR) {
		*msg = "internal error";
		return GRIDD__V1__ERROR_CODE__INTERNAL;
	}
	*msg = "database unavailable";
	return GRIDD__V1__ERROR_CODE__UNAVAILABLE;
}

/* ---- Login ----------------------------------------------------------------- */

struct login_req {
	struct conn *c;
	uint64_t request_id;
	enum conn_role role;
	char principal[SESSION_ID_MAX + 1];
	char community[SESSION_ID_MAX + 1];
	char host[64];
	char rl_key[RL_KEY_MAX];	/* "role:principal", "" if none */
	char token[SESSION_TOKEN_HEX + 1];
	bool resumed;
	uint64_t since_seq;	/* Login.since_seq */
	uint64_t last_seq;	/* a department's current dept_seq */
};

static struct login_req *
login_req_new(struct conn *c, uint64_t request_id, enum conn_role role,
    const char *principal)
{
	struct login_req *r = xcalloc(1, sizeof(*r));

	r->c = c;
	r->request_id = request_id;
	r->role = role;
	snprintf(r->principal, sizeof(r->principal), "%s", principal);
	snprintf(r->host, sizeof(r->host), "%s", conn_peer_host(c));
	if (principal[0] != '\0')
		snprintf(r->rl_key, sizeof(r->rl_key), "%d:%s", (int)role,
		    principal);
	conn_hold(c);
	return r;
}

static void
login_req_done(struct login_req *r)
{
	conn_release(r->c);
	OPENSSL_cleanse(r->token, sizeof(r->token));
	free(r);
}

static void
login_error(struct login_req *r, Gridd__V1__ErrorCode code, const char *msg)
{
	if (conn_is_open(r->c))
		rpc_reply_error(r->c, r->request_id, code, msg);
	login_req_done(r);
}

/* Wrong secret and unknown principal look the same from outside. */
static void
login_failed(struct login_req *r, const char *why, const char *msg)
{
	if (r->rl_key[0] != '\0')
		rl_fail(rl_principals, r->rl_key);
	rl_fail(rl_addrs, r->host);
	log_info("%s event=login outcome=failed role=%s principal=%s "
	    "reason=%s", conn_log_prefix(r->c), conn_role_name(r->role),
	    r->principal[0] ? r->principal : "-", why);
	login_error(r, GRIDD__V1__ERROR_CODE__UNAUTHENTICATED, msg);
}

/* A department's LoginReply.last_seq: its current dept_seq, read in the
 * statement that stored the session (NULL: no event yet, 0). */
static bool
session_last_seq(struct login_req *r, const struct db_res *res, int col)
{
	int64_t v;

	r->last_seq = 0;
	if (db_res_cols(res) <= col || db_res_isnull(res, 0, col))
		return true;
	if (!db_res_int64(res, 0, col, &v) || v < 0)
		return false;
	r->last_seq = (uint64_t)v;
	return true;
}

static void
login_succeeded(struct login_req *r, int64_t expires_at)
{
	Gridd__V1__Envelope env = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__LoginReply rep = GRIDD__V1__LOGIN_REPLY__INIT;

	if (r->rl_key[0] != '\0')
		rl_clear(rl_principals, r->rl_key);
	if (!conn_is_open(r->c) ||
	    conn_state(r->c) != CONN_UNAUTHENTICATED) {
		/* Closed meanwhile, or a concurrent Login won: the session
		 * row stays and expires; nobody holds its token. */
		login_req_done(r);
		return;
	}
	conn_authenticated(r->c, r->role, r->principal);
	log_info("%s event=login outcome=ok resumed=%d", conn_log_prefix(r->c),
	    r->resumed);
	rep.session_token = r->token;
	rep.role = (Gridd__V1__Role)r->role;
	rep.principal = r->principal;
	rep.last_seq = r->last_seq;
	rep.expires_at = expires_at;
	env.request_id = r->request_id;
	env.body_case = GRIDD__V1__ENVELOPE__BODY_LOGIN_REPLY;
	env.login_reply = &rep;
	conn_send(r->c, &env);
	if (r->role == CONN_ROLE_WORKER)
		disp_worker_login(r->c);
	/* A department asking for what it missed gets the Subscribe replay,
	 * after the reply that tells it where the sequence stands. */
	if (r->role == CONN_ROLE_DEPARTMENT && r->since_seq > 0)
		events_start(r->c, r->since_seq);
	login_req_done(r);
}

static void
session_insert_cb(void *arg, const struct db_res *res)
{
	struct login_req *r = arg;
	enum db_status st = db_res_status(res);
	int64_t expires_at;
	const char *msg;
	Gridd__V1__ErrorCode code;

	if (st != DB_OK || db_res_rows(res) != 1 ||
	    !db_res_int64(res, 0, 0, &expires_at) ||
	    !session_last_seq(r, res, 1)) {
		log_warn("%s event=login outcome=error stage=session_insert "
		    "error=\"%s\"", conn_log_prefix(r->c), db_res_error(res));
		code = db_error_code(st == DB_OK ? DB_SQL_ERROR : st,
		    st == DB_OK ? "" : db_res_sqlstate(res), &msg);
		login_error(r, code, msg);
		return;
	}
	login_succeeded(r, expires_at);
}

static void
purge_cb(void *arg, const struct db_res *res)
{
	UNUSED(arg);
	if (db_res_status(res) != DB_OK)
		log_warn("event=session_purge outcome=error error=\"%s\"",
		    db_res_error(res));
	else if (db_res_affected(res) > 0)
		log_info("event=session_purge deleted=%llu",
		    (unsigned long long)db_res_affected(res));
}

static void
session_purge_maybe(void)
{
	static int64_t last;
	int64_t now = mono_ms();

	if (last != 0 && now - last < SESSION_PURGE_INTERVAL_MS)
		return;
	last = now;
	if (!db_query(gridd.db, "DELETE FROM sessions WHERE expires_at < now()",
	    0, NULL, purge_cb, NULL))
		last = 0;
}

/* Secret verified: a new token, stored only as its SHA-256. */
static void
session_create(struct login_req *r)
{
	uint8_t raw[SESSION_TOKEN_BYTES];
	char sha[2 + 64 + 1], ttl[16];
	const char *params[5];

	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		login_error(r, GRIDD__V1__ERROR_CODE__INTERNAL,
		    "internal error");
		return;
	}
	hex_encode(raw, sizeof(raw), r->token);
	OPENSSL_cleanse(raw, sizeof(raw));
	sha256_hex_bytea(r->token, SESSION_TOKEN_HEX, sha);
	snprintf(ttl, sizeof(ttl), "%d", gridd.cfg->token_ttl_s);
	params[0] = sha;
	params[1] = role_db_name(r->role);
	params[2] = r->principal;
	params[3] = r->community[0] ? r->community : NULL;
	params[4] = ttl;
	if (gridd.db != NULL)
		session_purge_maybe();
	if (gridd.db == NULL || !db_query(gridd.db,
	    "INSERT INTO sessions (token_sha256, role, principal, community_id,"
	    " expires_at) VALUES ($1::bytea, $2, $3, $4,"
	    " now() + make_interval(secs => $5::int))"
	    " RETURNING (extract(epoch FROM expires_at) * 1000)::bigint,"
	    " (SELECT d.last_seq FROM department_seq d"
	    " WHERE $2 = 'department' AND d.department_id = $3)",
	    5, params, session_insert_cb, r))
		login_error(r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

static void
worker_verified(struct hash_job *job)
{
	struct login_req *r = job->arg;
	bool ok = job->ok, cancelled = job->cancelled;

	job_free(job);
	if (cancelled)
		login_error(r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "shutting down");
	else if (!ok)
		login_failed(r, "bad_secret_or_unknown", "invalid credentials");
	else
		session_create(r);
}

struct worker_lookup {
	struct login_req *r;
	char *secret;
};

static void
worker_lookup_cb(void *arg, const struct db_res *res)
{
	struct worker_lookup *wl = arg;
	struct login_req *r = wl->r;
	enum db_status st = db_res_status(res);
	struct hash_job *job;
	const char *msg;
	Gridd__V1__ErrorCode code;

	if (st != DB_OK) {
		OPENSSL_cleanse(wl->secret, strlen(wl->secret));
		free(wl->secret);
		free(wl);
		code = db_error_code(st, db_res_sqlstate(res), &msg);
		login_error(r, code, msg);
		return;
	}
	job = xcalloc(1, sizeof(*job));
	job->kind = HASH_VERIFY;
	job->secret = wl->secret;
	job->iterations = gridd.cfg->pbkdf2_iterations;
	job->done = worker_verified;
	job->arg = r;
	free(wl);
	if (db_res_rows(res) == 1 && !db_res_isnull(res, 0, 0)) {
		const char *h = db_res_get(res, 0, 0);

		if (strlen(h) < PBKDF2_ENC_MAX)
			job->stored = xstrdup(h);
		else
			log_warn("event=login worker=%s reason=\"stored "
			    "password hash too long\"", r->principal);
		if (db_res_cols(res) > 1 && !db_res_isnull(res, 0, 1) &&
		    valid_id(db_res_get(res, 0, 1)))
			snprintf(r->community, sizeof(r->community), "%s",
			    db_res_get(res, 0, 1));
	}
	if (!hash_submit(job)) {
		job_free(job);
		login_error(r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "server busy, try again");
	}
}

static void
login_worker(struct login_req *r, const char *secret)
{
	struct worker_lookup *wl = xcalloc(1, sizeof(*wl));
	const char *params[1] = { r->principal };

	wl->r = r;
	wl->secret = xstrdup(secret);
	if (gridd.db == NULL || !db_query(gridd.db,
	    "SELECT password_hash, community_id FROM workers"
	    " WHERE worker_id = $1", 1, params, worker_lookup_cb, wl)) {
		OPENSSL_cleanse(wl->secret, strlen(wl->secret));
		free(wl->secret);
		free(wl);
		login_error(r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
	}
}

/* Departments and admins: SHA-256 of the key against the config, constant
 * time, and the same work when the id is unknown or has no key. */
static void
login_keyed(struct login_req *r, const char *secret)
{
	static const uint8_t dummy[SHA256_DIGEST_LENGTH];
	const uint8_t *want = dummy;
	uint8_t got[SHA256_DIGEST_LENGTH];
	bool known = false, match;

	if (r->role == CONN_ROLE_DEPARTMENT) {
		const struct cfg_department *d =
		    cfg_department(gridd.cfg, r->principal);

		if (d != NULL && d->has_key) {
			want = d->key_sha256;
			known = true;
		}
	} else {
		const struct cfg_admin *a = cfg_admin(gridd.cfg, r->principal);

		if (a != NULL) {
			want = a->key_sha256;
			known = true;
		}
	}
	SHA256((const uint8_t *)secret, strlen(secret), got);
	match = ct_equal(got, want, sizeof(got));
	OPENSSL_cleanse(got, sizeof(got));
	if (!known || !match)
		login_failed(r, "bad_secret_or_unknown", "invalid credentials");
	else
		session_create(r);
}

/* Whether an admin or department may still log in under the running
 * config; a worker's account lives in the database and is checked there. */
static bool
principal_configured(enum conn_role role, const char *principal)
{
	const struct cfg_department *d;

	switch (role) {
	case CONN_ROLE_ADMIN:
		return cfg_admin(gridd.cfg, principal) != NULL;
	case CONN_ROLE_DEPARTMENT:
		d = cfg_department(gridd.cfg, principal);
		return d != NULL && d->has_key;
	default:
		return true;
	}
}

static void
resume_cb(void *arg, const struct db_res *res)
{
	struct login_req *r = arg;
	enum db_status st = db_res_status(res);
	int64_t expires_at;
	const char *msg;
	Gridd__V1__ErrorCode code;

	if (st != DB_OK) {
		code = db_error_code(st, db_res_sqlstate(res), &msg);
		login_error(r, code, msg);
		return;
	}
	if (db_res_rows(res) != 1 || db_res_isnull(res, 0, 0) ||
	    !valid_id(db_res_get(res, 0, 0)) ||
	    !db_res_int64(res, 0, 1, &expires_at) ||
	    !session_last_seq(r, res, 2)) {
		login_failed(r, "token_unknown_or_expired",
		    "session expired or unknown");
		return;
	}
	snprintf(r->principal, sizeof(r->principal), "%s",
	    db_res_get(res, 0, 0));
	/* The token proves a login, not a right that outlives the config:
	 * an admin or department removed (or left without a key) since
	 * cannot come back with it. */
	if (!principal_configured(r->role, r->principal)) {
		login_failed(r, "principal_not_configured",
		    "session expired or unknown");
		return;
	}
	r->resumed = true;
	login_succeeded(r, expires_at);
}

static void
login_resume(struct login_req *r, const char *token)
{
	char sha[2 + 64 + 1];
	const char *params[3];
	uint8_t raw[SESSION_TOKEN_BYTES];

	if (!hex_decode(token, raw, sizeof(raw))) {
		login_failed(r, "token_malformed", "session expired or unknown");
		return;
	}
	OPENSSL_cleanse(raw, sizeof(raw));
	snprintf(r->token, sizeof(r->token), "%s", token);
	sha256_hex_bytea(token, SESSION_TOKEN_HEX, sha);
	params[0] = sha;
	params[1] = role_db_name(r->role);
	params[2] = r->principal;
	if (gridd.db == NULL || !db_query(gridd.db,
	    "UPDATE sessions SET last_seen_at = now()"
	    " WHERE token_sha256 = $1::bytea AND role = $2"
	    " AND ($3 = '' OR principal = $3) AND expires_at > now()"
	    " AND (role <> 'worker' OR EXISTS (SELECT 1 FROM workers w"
	    " WHERE w.worker_id = sessions.principal))"
	    " RETURNING principal,"
	    " (extract(epoch FROM expires_at) * 1000)::bigint,"
	    " (SELECT d.last_seq FROM department_seq d"
	    " WHERE sessions.role = 'department'"
	    " AND d.department_id = sessions.principal)",
	    3, params, resume_cb, r))
		login_error(r, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

/*
 * Login. A second Login on an authenticated connection is CONFLICT: the
 * connection keeps its identity for life, so nothing held for one principal
 * (subscriptions, offers) can leak to another. Limits are checked before any
 * work, so a limited client costs no hashing.
 */
void
session_login(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__Login *in = env->login;
	const char *principal = in->principal ? in->principal : "";
	const char *secret = in->secret ? in->secret : "";
	const char *token = in->resume_token ? in->resume_token : "";
	char key[RL_KEY_MAX];
	struct login_req *r;
	enum conn_role role;

	if (conn_state(c) == CONN_AUTHENTICATED) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__CONFLICT, "already logged in");
		return;
	}
	if (in->role != GRIDD__V1__ROLE__WORKER &&
	    in->role != GRIDD__V1__ROLE__DEPARTMENT &&
	    in->role != GRIDD__V1__ROLE__ADMIN) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "role must be WORKER, DEPARTMENT or ADMIN");
		return;
	}
	role = (enum conn_role)in->role;
	if ((token[0] == '\0' && !valid_id(principal)) ||
	    (principal[0] != '\0' && !valid_id(principal))) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "principal must be 1-64 characters of A-Z a-z 0-9 _ . -");
		return;
	}
	if (strlen(secret) > SESSION_SECRET_MAX ||
	    strlen(token) > SESSION_TOKEN_HEX + 1) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "secret or resume_token too long");
		return;
	}
	if (token[0] == '\0' && secret[0] == '\0') {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST,
		    "secret or resume_token required");
		return;
	}
	snprintf(key, sizeof(key), "%d:%s", (int)role, principal);
	if (rl_limited(rl_addrs, conn_peer_host(c)) ||
	    (principal[0] != '\0' && rl_limited(rl_principals, key))) {
		log_warn("%s event=login outcome=rate_limited role=%s "
		    "principal=%s", conn_log_prefix(c), conn_role_name(role),
		    principal[0] ? principal : "-");
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__RATE_LIMITED,
		    "too many failed logins, try again later");
		return;
	}
	r = login_req_new(c, env->request_id, role, principal);
	r->since_seq = in->since_seq;
	if (token[0] != '\0')
		login_resume(r, token);
	else if (role == CONN_ROLE_WORKER)
		login_worker(r, secret);
	else
		login_keyed(r, secret);
}

/* ---- config changes ---------------------------------------------------- */

/* Ids are [A-Za-z0-9_.-] (the config parser checks), so quoting each is
 * all a text[] literal needs. */
static void
lit_add(char **lit, size_t *len, size_t *cap, const char *id)
{
	size_t need = strlen(id) + 4;

	if (*len + need + 2 > *cap) {
		*cap = (*cap + need + 2) * 2;
		*lit = xrealloc(*lit, *cap);
	}
	*len += (size_t)snprintf(*lit + *len, *cap - *len, "%s\"%s\"",
	    *len > 1 ? "," : "", id);
}

static char *
lit_new(size_t *len, size_t *cap)
{
	char *lit;

	*cap = 64;
	lit = xmalloc(*cap);
	lit[0] = '{';
	lit[1] = '\0';
	*len = 1;
	return lit;
}

static void
lit_end(char **lit, size_t *len, size_t *cap)
{
	if (*len + 2 > *cap) {
		*cap = *len + 2;
		*lit = xrealloc(*lit, *cap);
	}
	(*lit)[(*len)++] = '}';
	(*lit)[*len] = '\0';
}

static void
revoke_visit_cb(struct conn *c, void *arg)
{
	UNUSED(arg);
	conn_close(c, "credentials removed from the config");
}

static void
revoke_cb(void *arg, const struct db_res *res)
{
	UNUSED(arg);
	if (db_res_status(res) != DB_OK)
		log_warn("event=sessions_revoke outcome=error error=\"%s\"",
		    db_res_error(res));
	else if (db_res_affected(res) > 0)
		log_info("event=sessions_revoke deleted=%llu",
		    (unsigned long long)db_res_affected(res));
}

static void
revoke_principal(enum conn_role role, const char *id, const char *why)
{
	size_t n;

	n = conn_foreach_principal(role, id, revoke_visit_cb, NULL);
	log_info("event=sessions_revoke role=%s principal=%s reason=%s "
	    "closed=%zu", conn_role_name(role), id, why, n);
}

/*
 * After a reload: an admin or department removed from the config, left
 * without a key, or given a new key loses its sessions (stored tokens and
 * open connections) as a worker does when its password changes. The
 * database statement also drops the sessions of any admin or department
 * the config does not know, whichever process created them; sessions
 * created after this reload were checked against the new config and stay.
 */
void
session_config_changed(const struct cfg *old, const struct cfg *next)
{
	char *keep_a, *keep_d, *gone_a, *gone_d;
	size_t la, ca, ld, cd, lga, cga, lgd, cgd;
	char since[24];
	const char *params[5];

	keep_a = lit_new(&la, &ca);
	keep_d = lit_new(&ld, &cd);
	gone_a = lit_new(&lga, &cga);
	gone_d = lit_new(&lgd, &cgd);
	for (size_t i = 0; i < next->n_admins; i++)
		lit_add(&keep_a, &la, &ca, next->admins[i].id);
	for (size_t i = 0; i < next->n_departments; i++)
		if (next->departments[i].has_key)
			lit_add(&keep_d, &ld, &cd, next->departments[i].id);
	for (size_t i = 0; i < old->n_admins; i++) {
		const struct cfg_admin *o = &old->admins[i];
		const struct cfg_admin *n = cfg_admin(next, o->id);

		if (n != NULL && memcmp(n->key_sha256, o->key_sha256,
		    sizeof(o->key_sha256)) == 0)
			continue;
		lit_add(&gone_a, &lga, &cga, o->id);
		revoke_principal(CONN_ROLE_ADMIN, o->id,
		    n == NULL ? "removed" : "key_changed");
	}
	for (size_t i = 0; i < old->n_departments; i++) {
		const struct cfg_department *o = &old->departments[i];
		const struct cfg_department *n = cfg_department(next, o->id);

		if (!o->has_key || (n != NULL && n->has_key &&
		    memcmp(n->key_sha256, o->key_sha256,
		    sizeof(o->key_sha256)) == 0))
			continue;
		lit_add(&gone_d, &lgd, &cgd, o->id);
		revoke_principal(CONN_ROLE_DEPARTMENT, o->id,
		    n == NULL ? "removed" : !n->has_key ? "key_removed" :
		    "key_changed");
	}
	lit_end(&keep_a, &la, &ca);
	lit_end(&keep_d, &ld, &cd);
	lit_end(&gone_a, &lga, &cga);
	lit_end(&gone_d, &lgd, &cgd);
	snprintf(since, sizeof(since), "%lld", (long long)now_ms());
	params[0] = gone_a;
	params[1] = keep_a;
	params[2] = gone_d;
	params[3] = keep_d;
	params[4] = since;
	if (gridd.db == NULL || !db_query(gridd.db,
	    "DELETE FROM sessions WHERE created_at <"
	    " timestamptz 'epoch' + $5::bigint * interval '1 millisecond'"
	    " AND ((role = 'admin' AND (principal = ANY ($1::text[])"
	    " OR principal <> ALL ($2::text[])))"
	    " OR (role = 'department' AND (principal = ANY ($3::text[])"
	    " OR principal <> ALL ($4::text[]))))",
	    5, params, revoke_cb, NULL))
		log_warn("event=sessions_revoke outcome=error "
		    "error=\"database unavailable\"");
	free(keep_a);
	free(keep_d);
	free(gone_a);
	free(gone_d);
}

/* ---- UpsertWorker (admin) ------------------------------------------------ */

struct upsert_req {
	struct conn *c;
	uint64_t request_id;
	char worker_id[SESSION_ID_MAX + 1];
	char *name;
	char community[SESSION_ID_MAX + 1];
	char primary[SESSION_ID_MAX + 1];
	char *backups;		/* text[] literal */
	char max_open[12];
	bool created;
};

static void
upsert_done(struct upsert_req *u)
{
	conn_release(u->c);
	free(u->name);
	free(u->backups);
	free(u);
}

static void
upsert_error(struct upsert_req *u, Gridd__V1__ErrorCode code, const char *msg)
{
	if (conn_is_open(u->c))
		rpc_reply_error(u->c, u->request_id, code, msg);
	upsert_done(u);
}

static void
upsert_ok(struct upsert_req *u)
{
	log_info("%s event=upsert_worker worker=%s outcome=ok",
	    conn_log_prefix(u->c), u->worker_id);
	if (conn_is_open(u->c))
		rpc_reply_ok(u->c, u->request_id);
	upsert_done(u);
}

static void
upsert_batch_cb(void *arg, enum db_status st,
    const struct db_res *const *results, int n)
{
	struct upsert_req *u = arg;
	const char *msg, *sqlstate = "";
	Gridd__V1__ErrorCode code;

	if (st != DB_OK) {
		/* The statement that failed carries the sqlstate; the ones
		 * after it were aborted with it. */
		for (int i = 0; i < n && sqlstate[0] == '\0'; i++)
			if (results[i] != NULL &&
			    db_res_status(results[i]) == DB_SQL_ERROR)
				sqlstate = db_res_sqlstate(results[i]);
		log_warn("%s event=upsert_worker worker=%s outcome=error "
		    "sqlstate=%s", conn_log_prefix(u->c), u->worker_id,
		    sqlstate[0] ? sqlstate : "-");
		code = db_error_code(sqlstate[0] ? DB_SQL_ERROR : st, sqlstate, &msg);
		upsert_error(u, code, msg);
		return;
	}
	upsert_ok(u);
}

static void
upsert_update_cb(void *arg, const struct db_res *res)
{
	struct upsert_req *u = arg;
	enum db_status st = db_res_status(res);
	const char *msg;
	Gridd__V1__ErrorCode code;

	if (st != DB_OK) {
		code = db_error_code(st, db_res_sqlstate(res), &msg);
		upsert_error(u, code, msg);
		return;
	}
	if (db_res_affected(res) == 0) {
		upsert_error(u, GRIDD__V1__ERROR_CODE__NOT_FOUND,
		    "no such worker (a password is required to create one)");
		return;
	}
	upsert_ok(u);
}

/* Password hashed: insert or update the whole row, and end the worker's
 * sessions in the same transaction so an old password's tokens stop. */
static void
upsert_hashed(struct hash_job *job)
{
	struct upsert_req *u = job->arg;
	struct db_batch *b;
	const char *params[7];

	if (job->cancelled || !job->ok) {
		Gridd__V1__ErrorCode code = job->cancelled ?
		    GRIDD__V1__ERROR_CODE__UNAVAILABLE :
		    GRIDD__V1__ERROR_CODE__INTERNAL;

		job_free(job);
		upsert_error(u, code, "password could not be hashed");
		return;
	}
	params[0] = u->worker_id;
	params[1] = u->name;
	params[2] = job->encoded;
	params[3] = u->community;
	params[4] = u->primary[0] ? u->primary : NULL;
	params[5] = u->backups;
	params[6] = u->max_open;
	b = db_batch_new();
	db_batch_add(b,
	    "INSERT INTO workers (worker_id, name, password_hash, community_id,"
	    " primary_cell, backup_cells, max_open)"
	    " VALUES ($1, $2, $3, $4, $5, $6::text[], $7::int)"
	    " ON CONFLICT (worker_id) DO UPDATE SET name = EXCLUDED.name,"
	    " password_hash = EXCLUDED.password_hash,"
	    " community_id = EXCLUDED.community_id,"
	    " primary_cell = EXCLUDED.primary_cell,"
	    " backup_cells = EXCLUDED.backup_cells,"
	    " max_open = EXCLUDED.max_open, updated_at = now()", 7, params);
	db_batch_add(b, "DELETE FROM sessions WHERE role = 'worker'"
	    " AND principal = $1", 1, params);
	job_free(job);
	if (gridd.db == NULL || !db_batch_submit(gridd.db, b, upsert_batch_cb,
	    u))
		upsert_error(u, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "database unavailable");
}

/*
 * UpsertWorker replaces the worker's name, community, cells and max_open;
 * the password is required to create a worker and optional on update (empty
 * = keep the stored hash). Cells are checked for form here and for
 * existence by the database once cells exist.
 */
void
session_upsert_worker(struct conn *c, const Gridd__V1__Envelope *env)
{
	const Gridd__V1__UpsertWorker *in = env->upsert_worker;
	const char *name = in->name ? in->name : "";
	const char *password = in->password ? in->password : "";
	const char *community = in->community_id ? in->community_id : "";
	int max_open = in->max_open == 0 ? WORKER_MAX_OPEN_DEFAULT :
	    in->max_open;
	struct upsert_req *u;
	const char *bad = NULL;
	size_t pwlen = strlen(password), len;

	if (in->worker_id == NULL || !valid_id(in->worker_id))
		bad = "worker_id must be 1-64 characters of A-Z a-z 0-9 _ . -";
	else if (!utf8_valid(name, WORKER_NAME_MAX))
		bad = "name must be valid UTF-8 of at most 200 characters";
	else if (pwlen != 0 && (pwlen < WORKER_PASSWORD_MIN ||
	    pwlen > WORKER_PASSWORD_MAX))
		bad = "password must be 8 to 256 bytes";
	else if (!valid_id(community))
		bad = "community_id must be 1-64 characters of "
		    "A-Z a-z 0-9 _ . -";
	else if (in->n_cell_ids > WORKER_MAX_CELLS)
		bad = "at most 16 cell_ids";
	else if (max_open < 1 || max_open > WORKER_MAX_OPEN_LIMIT)
		bad = "max_open must be 1 to 1000";
	for (size_t i = 0; bad == NULL && i < in->n_cell_ids; i++)
		if (!valid_id(in->cell_ids[i]))
			bad = "each cell_id must be 1-64 characters of "
			    "A-Z a-z 0-9 _ . -";
	if (bad != NULL) {
		rpc_reply_error(c, env->request_id,
		    GRIDD__V1__ERROR_CODE__BAD_REQUEST, bad);
		return;
	}

	u = xcalloc(1, sizeof(*u));
	u->c = c;
	u->request_id = env->request_id;
	snprintf(u->worker_id, sizeof(u->worker_id), "%s", in->worker_id);
	u->name = xstrdup(name);
	snprintf(u->community, sizeof(u->community), "%s", community);
	snprintf(u->max_open, sizeof(u->max_open), "%d", max_open);
	if (in->n_cell_ids > 0)
		snprintf(u->primary, sizeof(u->primary), "%s",
		    in->cell_ids[0]);
	/* Ids are [A-Za-z0-9_.-] only, so quoting each is all an array
	 * literal needs. */
	u->backups = xmalloc(3 + WORKER_MAX_CELLS * (SESSION_ID_MAX + 3));
	len = 0;
	u->backups[len++] = '{';
	for (size_t i = 1; i < in->n_cell_ids; i++)
		len += (size_t)sprintf(u->backups + len, "%s\"%s\"",
		    i > 1 ? "," : "", in->cell_ids[i]);
	u->backups[len++] = '}';
	u->backups[len] = '\0';
	conn_hold(c);

	if (pwlen == 0) {
		const char *params[6] = { u->worker_id, u->name, u->community,
			u->primary[0] ? u->primary : NULL, u->backups,
			u->max_open };

		if (gridd.db == NULL || !db_query(gridd.db,
		    "UPDATE workers SET name = $2, community_id = $3,"
		    " primary_cell = $4, backup_cells = $5::text[],"
		    " max_open = $6::int, updated_at = now()"
		    " WHERE worker_id = $1", 6, params,
		    upsert_update_cb, u))
			upsert_error(u, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
			    "database unavailable");
		return;
	}

	struct hash_job *job = xcalloc(1, sizeof(*job));

	job->kind = HASH_CREATE;
	job->secret = xstrdup(password);
	job->iterations = gridd.cfg->pbkdf2_iterations;
	job->done = upsert_hashed;
	job->arg = u;
	if (!hash_submit(job)) {
		job_free(job);
		upsert_error(u, GRIDD__V1__ERROR_CODE__UNAVAILABLE,
		    "server busy, try again");
	}
}

/* cellcache.c - the process's point-in-cell index, rebuilt from PostGIS whenever the grid changes. */

/*
 * Truth stays in the database.  Every change to cells or communities bumps
 * feed_grid_version and NOTIFYs gridd_grid (003_feed.sql); a notification,
 * or a push whose answer names a newer version, reloads the index here, and
 * the feed says which version it located with, so gridd_feed_push locates
 * in SQL whenever that is not the current one.  A lost notification (say,
 * across a reconnect) thus costs speed, never a wrong cell.  Until the
 * first load completes, and while a reload is under way after a change,
 * there is no index and PostgreSQL locates.
 */
#include "cellcache.h"

#include <event2/event.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "gridd.h"
#include "locate.h"
#include "log.h"
#include "metrics.h"

/* One statement, so one snapshot: the version and the areas it names. The
 * LEFT JOIN keeps a row (with the version) when there is no area at all. */
static const char load_sql[] =
    "SELECT g.version, a.cell_id, a.community_id,"
    " encode(ST_AsBinary(a.geom), 'hex')"
    " FROM feed_grid_version g LEFT JOIN LATERAL ("
    "  SELECT c.cell_id, c.community_id, c.geom FROM cells c"
    "  WHERE c.valid_to IS NULL AND c.geom IS NOT NULL"
    "  UNION ALL"
    "  SELECT NULL, m.community_id, m.geom FROM communities m"
    "  WHERE m.geom IS NOT NULL) a ON true";

/* A failed load is retried after this long (the SQL locates meanwhile). */
#define LOCATE_RETRY_MS	5000

enum lc_state {
	LC_IDLE,
	LC_LOADING,
};

static struct {
	enum lc_state state;
	bool running;
	int64_t want;		/* the newest version heard of */
	struct locate_index *ix;
	int64_t version;
	struct event *retry_ev;
	uint64_t loads, load_failures, bad_areas;
	int64_t load_ms;
} lc;

static void load_start(void);

static void
load_cb(void *arg, const struct db_res *res)
{
	struct locate_index *ix;
	int64_t v = 0, t0 = mono_ms();
	int rows;

	UNUSED(arg);
	lc.state = LC_IDLE;
	if (!lc.running)
		return;
	rows = db_res_rows(res);
	if (db_res_status(res) != DB_OK || db_res_cols(res) != 4 || rows < 1 ||
	    !db_res_int64(res, 0, 0, &v)) {
		lc.load_failures++;
		log_warn("event=cellcache_load outcome=error error=\"%s\"",
		    db_res_error(res));
		if (lc.retry_ev != NULL) {
			struct timeval tv = { LOCATE_RETRY_MS / 1000,
			    (LOCATE_RETRY_MS % 1000) * 1000 };

			evtimer_add(lc.retry_ev, &tv);
		}
		return;
	}
	ix = locate_index_new();
	for (int i = 0; i < rows; i++) {
		const char *why;

		if (db_res_isnull(res, i, 2) || db_res_isnull(res, i, 3))
			continue;
		if (!locate_index_add(ix, db_res_get(res, i, 2),
		    db_res_isnull(res, i, 1) ? NULL : db_res_get(res, i, 1),
		    db_res_get(res, i, 3), &why)) {
			/* Its points are located in SQL instead, never
			 * wrongly: without a polygon the area is missing
			 * here, so a point in it would read "outside". */
			lc.bad_areas++;
			log_error("event=cellcache_load community=%s cell=%s "
			    "error=\"%s\"", db_res_get(res, i, 2),
			    db_res_isnull(res, i, 1) ? "" :
			    db_res_get(res, i, 1), why);
			locate_index_free(ix);
			lc.load_failures++;
			return;
		}
	}
	locate_index_build(ix);
	locate_index_free(lc.ix);
	lc.ix = ix;
	lc.version = v;
	lc.loads++;
	lc.load_ms = mono_ms() - t0;
	log_info("event=cellcache_load version=%" PRId64 " areas=%zu ms=%" PRId64,
	    v, locate_index_areas(ix), lc.load_ms);
	/* A change committed after this load's snapshot was heard of. */
	if (lc.want > v)
		cellcache_seen_version(lc.want);
}

static void
load_start(void)
{
	if (!lc.running || gridd.db == NULL)
		return;
	if (lc.state == LC_LOADING)
		return;		/* load_cb looks at lc.want when it ends */
	if (!db_query(gridd.db, load_sql, 0, NULL, load_cb, NULL)) {
		lc.load_failures++;
		return;
	}
	lc.state = LC_LOADING;
}

static void
retry_cb(evutil_socket_t fd, short what, void *arg)
{
	UNUSED(fd);
	UNUSED(what);
	UNUSED(arg);
	load_start();
}

static void
grid_notify_cb(void *arg, const char *channel, const char *payload)
{
	char *end;
	long long v;

	UNUSED(arg);
	UNUSED(channel);
	v = strtoll(payload, &end, 10);
	if (end == payload || *end != '\0' || v <= 0) {
		load_start();
		return;
	}
	cellcache_seen_version((int64_t)v);
}

void
cellcache_seen_version(int64_t v)
{
	if (v > lc.want)
		lc.want = v;
	if (lc.ix != NULL && lc.version >= lc.want)
		return;
	/* Drop a stale index at once: until the new one is loaded the SQL
	 * locates, rather than this process sending a version it knows is
	 * old (which would only make every push locate in SQL anyway). */
	if (lc.ix != NULL) {
		locate_index_free(lc.ix);
		lc.ix = NULL;
	}
	load_start();
}

const struct locate_index *
cellcache_current(int64_t *version)
{
	*version = lc.version;
	return lc.ix;
}

static void
cellcache_metrics_cb(struct evbuffer *out)
{
	metrics_family(out, "gridd_locate_index_version", "gauge",
	    "Grid version of the in-memory point-in-cell index (0: none "
	    "loaded, PostgreSQL locates).");
	metrics_sample(out, "gridd_locate_index_version", NULL,
	    lc.ix != NULL ? (double)lc.version : 0);
	metrics_family(out, "gridd_locate_index_areas", "gauge",
	    "Cells and communities in the point-in-cell index.");
	metrics_sample(out, "gridd_locate_index_areas", NULL,
	    lc.ix != NULL ? (double)locate_index_areas(lc.ix) : 0);
	metrics_family(out, "gridd_locate_loads_total", "counter",
	    "Point-in-cell index loads, and failed ones.");
	metrics_sample(out, "gridd_locate_loads_total", "outcome=\"ok\"",
	    (double)lc.loads);
	metrics_sample(out, "gridd_locate_loads_total", "outcome=\"error\"",
	    (double)lc.load_failures);
}

void
cellcache_init(void)
{
	lc.running = true;
	lc.retry_ev = evtimer_new(gridd.base, retry_cb, NULL);
	metrics_register("cellcache", cellcache_metrics_cb);
	if (gridd.db == NULL ||
	    !db_listen(gridd.db, "gridd_grid", grid_notify_cb, NULL))
		log_warn("event=cellcache_init error=\"cannot LISTEN gridd_grid: "
		    "points are located by PostgreSQL\"");
	else
		load_start();
}

void
cellcache_shutdown(void)
{
	lc.running = false;
	if (lc.retry_ev != NULL)
		event_free(lc.retry_ev);
	lc.retry_ev = NULL;
	locate_index_free(lc.ix);
	lc.ix = NULL;
}

/* triage.c - per-item validation, classification, four lists and 三事分流 (pure). */
#include "triage.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"

const char *
triage_refusal_name(enum triage_refusal r)
{
	switch (r) {
	case TRIAGE_PASS:
		return "pass";
	case TRIAGE_INVALID:
		return "invalid";
	case TRIAGE_UNKNOWN_CATEGORY:
		return "unknown_category";
	case TRIAGE_NEGATIVE_LIST:
		return "negative_list";
	case TRIAGE_NO_OWNER:
		return "invalid";
	}
	return "invalid";
}


/* An identifier-like field: 1..max characters, UTF-8, no control
 * characters (they end up in logs and in other systems' keys). */
static bool
key_ok(const char *s, size_t max)
{
	if (s == NULL || s[0] == '\0' || !utf8_valid(s, max))
		return false;
	for (const uint8_t *p = (const uint8_t *)s; *p != '\0'; p++)
		if (*p < 0x20 || *p == 0x7f)
			return false;
	return true;
}

static const char *
nonempty(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : NULL;
}

bool
triage_validate(const Gridd__V1__IncidentIn *in, enum triage_source from,
    const struct triage_limits *lim, int64_t now, struct triage_item *out,
    char *msg, size_t msglen)
{
	const char *code = nonempty(in->dept_grid_code);
	const char *bldg = nonempty(in->building_id);
	const char *addr = in->address != NULL ? in->address : "";
	const char *desc = in->description != NULL ? in->description : "";

	memset(out, 0, sizeof(*out));
	if (!key_ok(in->ext_id, TRIAGE_EXT_ID_MAX)) {
		snprintf(msg, msglen, "ext_id: required, 1-%d characters of "
		    "UTF-8 without control characters", TRIAGE_EXT_ID_MAX);
		return false;
	}
	if (!key_ok(in->category, TRIAGE_CATEGORY_MAX)) {
		snprintf(msg, msglen, "category: required, 1-%d characters "
		    "without control characters", TRIAGE_CATEGORY_MAX);
		return false;
	}
	if (in->severity != 0 && (in->severity < TRIAGE_SEVERITY_MIN ||
	    in->severity > TRIAGE_SEVERITY_MAX)) {
		snprintf(msg, msglen, "severity: %d out of range %d-%d (0 = "
		    "unset, meaning %d)", (int)in->severity,
		    TRIAGE_SEVERITY_MIN, TRIAGE_SEVERITY_MAX,
		    TRIAGE_SEVERITY_DEFAULT);
		return false;
	}
	if (in->occurred_at != 0 && (in->occurred_at < 0 ||
	    in->occurred_at > now + lim->max_future_ms ||
	    in->occurred_at < now - lim->max_age_ms)) {
		snprintf(msg, msglen, "occurred_at: %lld ms is more than %lld s "
		    "in the future or %lld days in the past",
		    (long long)in->occurred_at,
		    (long long)(lim->max_future_ms / 1000),
		    (long long)(lim->max_age_ms / 86400000));
		return false;
	}
	/* Both exactly 0 is the wire's unset: the Gulf of Guinea is no
	 * community's. */
	out->has_point = !(in->lon == 0 && in->lat == 0);
	if (out->has_point && (!isfinite(in->lon) || !isfinite(in->lat) ||
	    in->lon < -180 || in->lon > 180 || in->lat < -90 ||
	    in->lat > 90)) {
		snprintf(msg, msglen, "lon/lat: not a WGS-84 coordinate "
		    "(lon -180..180, lat -90..90)");
		return false;
	}
	if (code != NULL && from == TRIAGE_FROM_WORKER) {
		snprintf(msg, msglen, "dept_grid_code: only departments push "
		    "their own grid codes; report lon/lat or building_id");
		return false;
	}
	if (code != NULL && !key_ok(code, TRIAGE_CODE_MAX)) {
		snprintf(msg, msglen, "dept_grid_code: 1-%d characters without "
		    "control characters", TRIAGE_CODE_MAX);
		return false;
	}
	if (bldg != NULL && (strlen(bldg) > TRIAGE_BUILDING_MAX ||
	    strspn(bldg, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789_.:-") != strlen(bldg))) {
		snprintf(msg, msglen, "building_id: 1-%d characters of "
		    "A-Z a-z 0-9 _ . : -", TRIAGE_BUILDING_MAX);
		return false;
	}
	if (!out->has_point && code == NULL && bldg == NULL) {
		snprintf(msg, msglen, "location: one of lon/lat, "
		    "dept_grid_code or building_id is required");
		return false;
	}
	if (!utf8_valid(addr, TRIAGE_ADDRESS_MAX)) {
		snprintf(msg, msglen, "address: at most %d characters of UTF-8",
		    TRIAGE_ADDRESS_MAX);
		return false;
	}
	if (!utf8_valid(desc, TRIAGE_DESCRIPTION_MAX)) {
		snprintf(msg, msglen, "description: at most %d characters of "
		    "UTF-8", TRIAGE_DESCRIPTION_MAX);
		return false;
	}
	out->ext_id = in->ext_id;
	out->category = in->category;
	out->dept_code = code;
	out->building_id = bldg;
	out->address = addr;
	out->description = desc;
	out->occurred_at = in->occurred_at != 0 ? in->occurred_at : now;
	if (out->has_point) {
		out->lon = in->lon;
		out->lat = in->lat;
	}
	out->severity = in->severity != 0 ? in->severity :
	    TRIAGE_SEVERITY_DEFAULT;
	return true;
}

/*
 * 三事分流: the route decides where the matter goes first.
 *   worker      'new', queued for dispatch to the cell's worker, with SLA
 *   department  'referred' back to the owning department (大事), with SLA:
 *               the department stays accountable for its deadline
 *   referral    'referred' to residents, the market or a social
 *               organisation (私事) with the task type's guidance; no SLA,
 *               the matter left the government's hands
 */
void
triage_classify(const struct cfg *cfg, const struct cfg_department *dept,
    const char *category, struct triage_decision *out)
{
	const char *name;
	const struct cfg_task_type *tt;

	memset(out, 0, sizeof(*out));
	name = dept != NULL ? cfg_category(dept, category) : category;
	tt = name != NULL ? cfg_task_type(cfg, name) : NULL;
	if (tt == NULL) {
		out->refusal = TRIAGE_UNKNOWN_CATEGORY;
		if (dept != NULL)
			snprintf(out->message, sizeof(out->message),
			    "unknown category %.*s for department %s",
			    (int)utf8_prefix(category, 64), category,
			    dept->id);
		else
			snprintf(out->message, sizeof(out->message),
			    "unknown task type %.*s",
			    (int)utf8_prefix(category, 64), category);
		return;
	}
	out->task_type = tt;
	if (tt->list == CFG_LIST_NEGATIVE) {
		out->refusal = TRIAGE_NEGATIVE_LIST;
		snprintf(out->message, sizeof(out->message),
		    "negative list (负面事项): %s must not be pushed onto "
		    "communities", tt->name);
		return;
	}
	/*
	 * A department's push is owned by that department.  A grid worker's
	 * patrol report is owned by the department its task type names (the
	 * one answering for such matters in this city); a big matter goes
	 * back to a department, so one without a named department has
	 * nowhere to go and is refused rather than left for nobody.
	 */
	if (dept == NULL) {
		out->owner = tt->department;
		if (tt->route == CFG_ROUTE_DEPARTMENT && tt->department == NULL) {
			out->refusal = TRIAGE_NO_OWNER;
			snprintf(out->message, sizeof(out->message),
			    "%s is a big matter (大事) for a department, and "
			    "[task_type.%s] names no department to refer a "
			    "worker's report to", tt->name, tt->name);
			return;
		}
	}
	switch (tt->route) {
	case CFG_ROUTE_WORKER:
		out->status = "new";
		out->sla = tt->sla_minutes > 0;
		out->note = "";
		break;
	case CFG_ROUTE_DEPARTMENT:
		out->status = "referred";
		out->sla = tt->sla_minutes > 0;
		out->note = "big matter (大事): referred to the owning "
		    "department";
		break;
	case CFG_ROUTE_REFERRAL:
	default:
		out->status = "referred";
		out->sla = false;
		out->note = tt->guidance != NULL && tt->guidance[0] != '\0' ?
		    tt->guidance : "private matter (私事): referred to the "
		    "residents";
		break;
	}
}

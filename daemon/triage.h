/* triage.h - per-item validation, classification, four lists and 三事分流 (pure). */
#ifndef GRIDD_TRIAGE_H
#define GRIDD_TRIAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gridd.pb-c.h"
#include "util.h"

struct cfg;
struct cfg_department;
struct cfg_task_type;

/* Text bounds, in characters, as the schema's CHECKs (001_init.sql). */
#define TRIAGE_EXT_ID_MAX	128
#define TRIAGE_CATEGORY_MAX	64
#define TRIAGE_CODE_MAX		64	/* department grid code */
#define TRIAGE_BUILDING_MAX	64
#define TRIAGE_ADDRESS_MAX	500
#define TRIAGE_DESCRIPTION_MAX	8000
/* Severity 1 (low) .. 4 (urgent); 0 on the wire means unset. */
#define TRIAGE_SEVERITY_MIN	1
#define TRIAGE_SEVERITY_MAX	4
#define TRIAGE_SEVERITY_DEFAULT	2
/* A message in a PushResult. */
#define TRIAGE_MSG_MAX		200

enum triage_source {
	TRIAGE_FROM_DEPARTMENT,
	TRIAGE_FROM_WORKER,
};

/* Why an item was refused before it reached the database; the names are
 * rejections.reason in the schema. */
enum triage_refusal {
	TRIAGE_PASS = 0,
	TRIAGE_INVALID,			/* BAD_REQUEST */
	TRIAGE_UNKNOWN_CATEGORY,	/* BAD_REQUEST */
	TRIAGE_NEGATIVE_LIST,		/* REJECTED_NEGATIVE_LIST */
	TRIAGE_NO_OWNER,		/* BAD_REQUEST; recorded as invalid */
};

struct triage_limits {
	int64_t max_future_ms;	/* occurred_at at most this far ahead */
	int64_t max_age_ms;	/* and at most this far back */
};

/* One item after validation: the wire's strings (not copied) and the
 * defaults filled in. */
struct triage_item {
	const char *ext_id;
	const char *category;
	const char *dept_code;		/* NULL = none */
	const char *building_id;	/* NULL = none */
	const char *address;
	const char *description;
	int64_t occurred_at;		/* ms; unset -> now */
	bool has_point;
	double lon, lat;
	int severity;
};

/* What the config says about an item that passed. */
struct triage_decision {
	enum triage_refusal refusal;
	const struct cfg_task_type *task_type;	/* NULL: unknown category */
	const char *status;	/* first status: "new" or "referred" */
	bool sla;		/* tracked with the task type's SLA */
	const char *note;	/* first event's note (guidance for referrals) */
	const char *owner;	/* a worker's report: the task type's
				 * department, NULL when it names none */
	char message[TRIAGE_MSG_MAX];	/* refusal reason, for PushResult */
};

/* Checks one IncidentIn; false with msg naming the field otherwise. A point
 * is lon/lat unless both are exactly 0 (the wire's unset). Workers' reports
 * cannot carry a department grid code. */
bool triage_validate(const Gridd__V1__IncidentIn *in, enum triage_source from,
    const struct triage_limits *lim, int64_t now, struct triage_item *out,
    char *msg, size_t msglen) WUR;

/* Maps the category through the department's crosswalk (dept NULL: a
 * worker's report, whose category is a unified task type name), then
 * applies the four lists and the route. */
void triage_classify(const struct cfg *cfg, const struct cfg_department *dept,
    const char *category, struct triage_decision *out);

const char *triage_refusal_name(enum triage_refusal r);

#endif

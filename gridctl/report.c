/* report.c - gridctl report burden: text, CSV, JSON or one printable HTML page. */
#include "report.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "frame.h"
#include "parse.h"
#include "render.h"

/* Width of the bar charts' drawing area, in CSS pixels: fits A4 landscape
 * with the labels. */
#define CHART_BAR_W 560
#define CHART_LABEL_W 170
#define CHART_ROW_H 22

enum report_format { FMT_TEXT, FMT_CSV, FMT_JSON, FMT_HTML };

static const char *const list_names[] = {
	[GRIDD__V1__TASK_LIST__LIST_UNSPECIFIED] = "all",
	[GRIDD__V1__TASK_LIST__AUTONOMY] = "autonomy",
	[GRIDD__V1__TASK_LIST__ASSIST] = "assist",
	[GRIDD__V1__TASK_LIST__NEGATIVE] = "negative",
	[GRIDD__V1__TASK_LIST__CERTIFICATE] = "certificate",
};

static const char *
list_name(Gridd__V1__TaskList l)
{
	if ((unsigned)l < ARRAY_LEN(list_names) && list_names[l] != NULL)
		return list_names[l];
	return "unknown";
}

/* The count for reason in a ReasonCount list, 0 when absent. */
static int64_t
reason_count(Gridd__V1__ReasonCount *const *v, size_t n, const char *reason)
{
	for (size_t i = 0; i < n; i++)
		if (v[i]->reason != NULL && strcmp(v[i]->reason, reason) == 0)
			return v[i]->count;
	return 0;
}

static const char *const complaint_reasons[] = {
	"negative_list", "unfunded", "duplicate", "outside_duty", "other",
};
static const char *const rejection_reasons[] = {
	"unknown_category", "outside", "invalid",
};

/* "850 ms", "42 s", "12 min", "3 h 20 min", "2 d 4 h". */
static void
fmt_duration(char *buf, size_t len, int64_t ms)
{
	int64_t s = ms / 1000, m = s / 60, h = m / 60, d = h / 24;

	if (ms < 1000)
		snprintf(buf, len, "%" PRId64 " ms", ms);
	else if (s < 60)
		snprintf(buf, len, "%" PRId64 " s", s);
	else if (m < 60)
		snprintf(buf, len, "%" PRId64 " min", m);
	else if (h < 48)
		snprintf(buf, len, "%" PRId64 " h %02" PRId64 " min", h, m % 60);
	else
		snprintf(buf, len, "%" PRId64 " d %" PRId64 " h", d, h % 24);
}

static void
fmt_time(char *buf, size_t len, int64_t ms)
{
	time_t secs = (time_t)(ms / 1000);
	struct tm tm;

	if (ms < 0 || gmtime_r(&secs, &tm) == NULL ||
	    strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
		snprintf(buf, len, "%" PRId64, ms);
}

/* ---- text ---------------------------------------------------------------- */

static void
text_median(int64_t ms, bool have)
{
	char buf[48];

	if (!have)
		snprintf(buf, sizeof(buf), "-");
	else
		fmt_duration(buf, sizeof(buf), ms);
	printf(" %12s", buf);
}

static void
text_id(const char *s, int width)
{
	int n = (int)strlen(s);

	render_text_string(stdout, s);
	printf("%*s", n < width ? width - n : 0, "");
}

static void
write_text(const Gridd__V1__BurdenReport *r)
{
	char from[48], to[48];

	fmt_time(from, sizeof(from), r->from);
	fmt_time(to, sizeof(to), r->to);
	printf("burden report %s .. %s, community ", from, to);
	render_text_string(stdout, r->community_id[0] ? r->community_id :
	    "(all)");
	printf("\n\ndepartments\n%-16s %-11s %7s %8s %6s %7s %7s %7s %7s "
	    "%6s %12s\n", "department", "list", "pushed", "accepted",
	    "merged", "rej.neg", "rej.oth", "complnt", "overdue", "closed",
	    "median close");
	for (size_t i = 0; i < r->n_departments; i++) {
		const Gridd__V1__DepartmentBurden *d = r->departments[i];

		text_id(d->department_id, 16);
		printf(" %-11s %7" PRId64 " %8" PRId64 " %6" PRId64 " %7" PRId64
		    " %7" PRId64 " %7" PRId64 " %7" PRId64 " %6" PRId64,
		    list_name(d->list), d->pushed, d->accepted, d->merged,
		    d->rejected_negative, d->rejected_other, d->complaints,
		    d->overdue, d->closed);
		text_median(d->median_close_ms, d->closed > 0);
		putchar('\n');
	}
	printf("\ncommunities\n%-16s %6s %8s %6s %11s %5s %5s %7s %10s %6s\n",
	    "community", "tasks", "autonomy", "assist", "certificate", "big",
	    "small", "private", "to workers", "gov %");
	for (size_t i = 0; i < r->n_communities; i++) {
		const Gridd__V1__CommunityBurden *c = r->communities[i];

		text_id(c->community_id, 16);
		printf(" %6" PRId64 " %8" PRId64 " %6" PRId64 " %11" PRId64
		    " %5" PRId64 " %5" PRId64 " %7" PRId64 " %10" PRId64,
		    c->tasks, c->autonomy, c->assist, c->certificate, c->big,
		    c->small, c->private_, c->to_workers);
		if (c->to_workers > 0)
			printf(" %5.1f\n", 100.0 * c->government_share);
		else
			printf(" %5s\n", "-");
	}
	printf("\nworkers\n%-16s %-16s %7s %8s %8s %7s %8s %12s %12s\n",
	    "worker", "community", "offered", "accepted", "declined",
	    "expired", "resolved", "median acc.", "median res.");
	for (size_t i = 0; i < r->n_workers; i++) {
		const Gridd__V1__WorkerBurden *w = r->workers[i];

		text_id(w->worker_id, 16);
		putchar(' ');
		text_id(w->community_id, 16);
		printf(" %7" PRId64 " %8" PRId64 " %8" PRId64 " %7" PRId64
		    " %8" PRId64, w->offered, w->accepted, w->declined,
		    w->expired, w->resolved);
		text_median(w->median_accept_ms, w->accepted > 0);
		text_median(w->median_resolve_ms, w->resolved > 0);
		putchar('\n');
	}
}

/* ---- CSV ----------------------------------------------------------------- */

/* A quoted CSV field. A leading = + - @ would make a spreadsheet evaluate
 * server text as a formula: such a field gets a leading apostrophe. */
static void
csv_str(FILE *fp, const char *s)
{
	fputc('"', fp);
	if (s[0] == '=' || s[0] == '+' || s[0] == '-' || s[0] == '@')
		fputc('\'', fp);
	for (; *s != '\0'; s++) {
		if (*s == '"')
			fputc('"', fp);
		fputc(*s, fp);
	}
	fputc('"', fp);
}

static void
write_csv(FILE *fp, const Gridd__V1__BurdenReport *r)
{
	fputs("section,department_id,name,list,pushed,accepted,merged,"
	    "rejected_negative,rejected_other,rejected_unknown_category,"
	    "rejected_outside,rejected_invalid,complaints,"
	    "complaints_negative_list,complaints_unfunded,complaints_duplicate,"
	    "complaints_outside_duty,complaints_other,overdue,closed,"
	    "median_close_ms\r\n", fp);
	for (size_t i = 0; i < r->n_departments; i++) {
		const Gridd__V1__DepartmentBurden *d = r->departments[i];

		fputs("department,", fp);
		csv_str(fp, d->department_id);
		fputc(',', fp);
		csv_str(fp, d->name);
		fprintf(fp, ",%s,%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64
		    ",%" PRId64, list_name(d->list), d->pushed, d->accepted,
		    d->merged, d->rejected_negative, d->rejected_other);
		for (size_t k = 0; k < ARRAY_LEN(rejection_reasons); k++)
			fprintf(fp, ",%" PRId64, reason_count(
			    d->rejected_by_reason, d->n_rejected_by_reason,
			    rejection_reasons[k]));
		fprintf(fp, ",%" PRId64, d->complaints);
		for (size_t k = 0; k < ARRAY_LEN(complaint_reasons); k++)
			fprintf(fp, ",%" PRId64, reason_count(
			    d->complaints_by_reason, d->n_complaints_by_reason,
			    complaint_reasons[k]));
		fprintf(fp, ",%" PRId64 ",%" PRId64 ",", d->overdue, d->closed);
		if (d->closed > 0)
			fprintf(fp, "%" PRId64, d->median_close_ms);
		fputs("\r\n", fp);
	}
	fputs("\r\nsection,community_id,name,tasks,autonomy,assist,certificate,"
	    "big,small,private,to_workers,to_workers_government,"
	    "government_share\r\n", fp);
	for (size_t i = 0; i < r->n_communities; i++) {
		const Gridd__V1__CommunityBurden *c = r->communities[i];

		fputs("community,", fp);
		csv_str(fp, c->community_id);
		fputc(',', fp);
		csv_str(fp, c->name);
		fprintf(fp, ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64
		    ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64
		    ",", c->tasks, c->autonomy, c->assist, c->certificate,
		    c->big, c->small, c->private_, c->to_workers,
		    c->to_workers_government);
		if (c->to_workers > 0)
			fprintf(fp, "%.6f", c->government_share);
		fputs("\r\n", fp);
	}
	fputs("\r\nsection,worker_id,community_id,offered,accepted,declined,"
	    "expired,resolved,median_accept_ms,median_resolve_ms\r\n", fp);
	for (size_t i = 0; i < r->n_workers; i++) {
		const Gridd__V1__WorkerBurden *w = r->workers[i];

		fputs("worker,", fp);
		csv_str(fp, w->worker_id);
		fputc(',', fp);
		csv_str(fp, w->community_id);
		fprintf(fp, ",%" PRId64 ",%" PRId64 ",%" PRId64 ",%" PRId64
		    ",%" PRId64 ",", w->offered, w->accepted, w->declined,
		    w->expired, w->resolved);
		if (w->accepted > 0)
			fprintf(fp, "%" PRId64, w->median_accept_ms);
		fputc(',', fp);
		if (w->resolved > 0)
			fprintf(fp, "%" PRId64, w->median_resolve_ms);
		fputs("\r\n", fp);
	}
}

/* ---- HTML ---------------------------------------------------------------- */

/* Text from the server, escaped for HTML content and attribute values;
 * control characters are dropped. */
static void
html(FILE *fp, const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '&')
			fputs("&amp;", fp);
		else if (ch == '<')
			fputs("&lt;", fp);
		else if (ch == '>')
			fputs("&gt;", fp);
		else if (ch == '"')
			fputs("&quot;", fp);
		else if (ch == '\'')
			fputs("&#39;", fp);
		else if (ch >= 0x20 && ch != 0x7f)
			fputc(ch, fp);
	}
}

static void
td_num(FILE *fp, int64_t v)
{
	fprintf(fp, "<td class=\"n\">%" PRId64 "</td>", v);
}

static void
td_median(FILE *fp, int64_t ms, bool have)
{
	char buf[48];

	if (!have) {
		fputs("<td class=\"n\" data-ms=\"\">&mdash;</td>", fp);
		return;
	}
	fmt_duration(buf, sizeof(buf), ms);
	fprintf(fp, "<td class=\"n\" data-ms=\"%" PRId64 "\">%s</td>", ms, buf);
}

static const char html_head[] =
"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
"<title>Burden report</title>\n<style>\n"
"body{font-family:\"Noto Sans\",\"DejaVu Sans\",Arial,sans-serif;"
"font-size:13px;color:#1a1a1a;margin:24px auto;max-width:1200px;"
"padding:0 16px}\n"
"h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;"
"border-bottom:2px solid #2b5d8a;padding-bottom:3px}\n"
"p.meta{color:#444;margin:0 0 12px}p.note{color:#444;margin:4px 0 8px}\n"
"table{border-collapse:collapse;margin:6px 0 14px;width:100%}\n"
"th,td{border:1px solid #c8c8c8;padding:3px 6px;vertical-align:top}\n"
"th{background:#e9eff5;text-align:left;font-weight:600}\n"
"td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\n"
"tr.total td{font-weight:600;background:#f6f6f6}\n"
"svg{display:block;margin:6px 0 4px}svg text{font-size:12px;"
"fill:#1a1a1a}\n"
".legend span{display:inline-block;margin-right:14px}"
".legend i{display:inline-block;width:11px;height:11px;margin-right:4px;"
"vertical-align:-1px}\n"
"dl{margin:6px 0}dt{font-weight:600;margin-top:6px}dd{margin:0 0 0 18px}\n"
"@page{size:A4 landscape;margin:12mm}\n"
"@media print{body{margin:0;max-width:none}h2{break-after:avoid}"
"tr,svg{break-inside:avoid}thead{display:table-header-group}}\n"
"</style>\n</head>\n<body>\n";

/* Bar colours: accepted, merged, rejected (negative list), rejected
 * (other); readable in greyscale print too (distinct lightness). */
static const char *const seg_colour[4] = {
	"#2e7d32", "#64b5f6", "#c62828", "#bdbdbd",
};
static const char *const seg_label[4] = {
	"accepted", "merged", "rejected: negative list", "rejected: other",
};

static void
chart_departments(FILE *fp, const Gridd__V1__BurdenReport *r)
{
	int64_t max = 0;
	size_t rows = 0;
	int y = 0;

	for (size_t i = 0; i < r->n_departments; i++)
		if (r->departments[i]->list ==
		    GRIDD__V1__TASK_LIST__LIST_UNSPECIFIED) {
			rows++;
			if (r->departments[i]->pushed > max)
				max = r->departments[i]->pushed;
		}
	if (rows == 0)
		return;
	fputs("<div class=\"legend\">", fp);
	for (int k = 0; k < 4; k++)
		fprintf(fp, "<span><i style=\"background:%s\"></i>%s</span>",
		    seg_colour[k], seg_label[k]);
	fputs("</div>\n", fp);
	fprintf(fp, "<svg id=\"chart-departments\" role=\"img\" "
	    "aria-label=\"Items pushed per department\" width=\"%d\" "
	    "height=\"%zu\" xmlns=\"http://www.w3.org/2000/svg\">\n",
	    CHART_LABEL_W + CHART_BAR_W + 70, rows * CHART_ROW_H + 4);
	for (size_t i = 0; i < r->n_departments; i++) {
		const Gridd__V1__DepartmentBurden *d = r->departments[i];
		int64_t seg[4] = { d->accepted, d->merged, d->rejected_negative,
			d->rejected_other };
		double x = CHART_LABEL_W;

		if (d->list != GRIDD__V1__TASK_LIST__LIST_UNSPECIFIED)
			continue;
		fprintf(fp, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">",
		    CHART_LABEL_W - 6, y + 15);
		html(fp, d->name[0] ? d->name : d->department_id);
		fputs("</text>", fp);
		for (int k = 0; k < 4; k++) {
			double w = max > 0 ? (double)seg[k] * CHART_BAR_W /
			    (double)max : 0;

			if (seg[k] == 0)
				continue;
			fprintf(fp, "<rect x=\"%.1f\" y=\"%d\" width=\"%.1f\" "
			    "height=\"16\" fill=\"%s\"><title>%s: %" PRId64
			    "</title></rect>", x, y + 3, w, seg_colour[k],
			    seg_label[k], seg[k]);
			x += w;
		}
		fprintf(fp, "<text x=\"%.1f\" y=\"%d\">%" PRId64 "</text>\n",
		    x + 5, y + 15, d->pushed);
		y += CHART_ROW_H;
	}
	fputs("</svg>\n", fp);
}

static void
chart_communities(FILE *fp, const Gridd__V1__BurdenReport *r)
{
	int y = 0;

	if (r->n_communities == 0)
		return;
	fprintf(fp, "<svg id=\"chart-communities\" role=\"img\" "
	    "aria-label=\"Government share of grid workers' tasks\" "
	    "width=\"%d\" height=\"%zu\" "
	    "xmlns=\"http://www.w3.org/2000/svg\">\n",
	    CHART_LABEL_W + CHART_BAR_W + 70,
	    r->n_communities * CHART_ROW_H + 4);
	for (size_t i = 0; i < r->n_communities; i++) {
		const Gridd__V1__CommunityBurden *c = r->communities[i];
		double share = c->to_workers > 0 ? c->government_share : 0;

		if (share < 0)
			share = 0;
		if (share > 1)
			share = 1;
		fprintf(fp, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">",
		    CHART_LABEL_W - 6, y + 15);
		html(fp, c->name[0] ? c->name : c->community_id);
		fprintf(fp, "</text><rect x=\"%d\" y=\"%d\" width=\"%d\" "
		    "height=\"16\" fill=\"#eeeeee\" stroke=\"#c8c8c8\"/>",
		    CHART_LABEL_W, y + 3, CHART_BAR_W);
		if (c->to_workers > 0)
			fprintf(fp, "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" "
			    "height=\"16\" fill=\"#2b5d8a\"/><text x=\"%d\" "
			    "y=\"%d\">%.1f %%</text>\n", CHART_LABEL_W, y + 3,
			    share * CHART_BAR_W, CHART_LABEL_W + CHART_BAR_W + 5,
			    y + 15, 100.0 * share);
		else
			fprintf(fp, "<text x=\"%d\" y=\"%d\">no tasks</text>\n",
			    CHART_LABEL_W + CHART_BAR_W + 5, y + 15);
		y += CHART_ROW_H;
	}
	fputs("</svg>\n", fp);
}

static void
html_departments(FILE *fp, const Gridd__V1__BurdenReport *r)
{
	fputs("<h2>Departments</h2>\n<p class=\"note\">What each department "
	    "pushed onto the communities in the period, and what became of "
	    "it.</p>\n", fp);
	chart_departments(fp, r);
	fputs("<table id=\"departments\">\n<thead><tr><th>Department</th>"
	    "<th class=\"n\">Pushed</th><th class=\"n\">Accepted</th>"
	    "<th class=\"n\">Merged</th><th class=\"n\">Rejected: negative "
	    "list</th><th class=\"n\">Rejected: other</th>"
	    "<th class=\"n\">unknown category</th><th class=\"n\">outside</th>"
	    "<th class=\"n\">invalid</th><th class=\"n\">Complaints</th>"
	    "<th class=\"n\">Overdue</th><th class=\"n\">Closed</th>"
	    "<th class=\"n\">Median time to close</th></tr></thead>\n<tbody>\n",
	    fp);
	for (size_t i = 0; i < r->n_departments; i++) {
		const Gridd__V1__DepartmentBurden *d = r->departments[i];

		if (d->list != GRIDD__V1__TASK_LIST__LIST_UNSPECIFIED)
			continue;
		fputs("<tr data-id=\"", fp);
		html(fp, d->department_id);
		fputs("\"><td>", fp);
		html(fp, d->name[0] ? d->name : d->department_id);
		fputs("</td>", fp);
		td_num(fp, d->pushed);
		td_num(fp, d->accepted);
		td_num(fp, d->merged);
		td_num(fp, d->rejected_negative);
		td_num(fp, d->rejected_other);
		for (size_t k = 0; k < ARRAY_LEN(rejection_reasons); k++)
			td_num(fp, reason_count(d->rejected_by_reason,
			    d->n_rejected_by_reason, rejection_reasons[k]));
		td_num(fp, d->complaints);
		td_num(fp, d->overdue);
		td_num(fp, d->closed);
		td_median(fp, d->median_close_ms, d->closed > 0);
		fputs("</tr>\n", fp);
	}
	fputs("</tbody></table>\n<h2>Complaints against departments</h2>\n"
	    "<p class=\"note\">Complaints (投诉反馈) filed by grid workers or "
	    "communities about incidents the department was a source of, by "
	    "reason.</p>\n<table id=\"complaints\">\n<thead><tr>"
	    "<th>Department</th><th class=\"n\">negative list</th>"
	    "<th class=\"n\">unfunded</th><th class=\"n\">duplicate</th>"
	    "<th class=\"n\">outside duty</th><th class=\"n\">other</th>"
	    "<th class=\"n\">total</th></tr></thead>\n<tbody>\n", fp);
	for (size_t i = 0; i < r->n_departments; i++) {
		const Gridd__V1__DepartmentBurden *d = r->departments[i];

		if (d->list != GRIDD__V1__TASK_LIST__LIST_UNSPECIFIED)
			continue;
		fputs("<tr data-id=\"", fp);
		html(fp, d->department_id);
		fputs("\"><td>", fp);
		html(fp, d->name[0] ? d->name : d->department_id);
		fputs("</td>", fp);
		for (size_t k = 0; k < ARRAY_LEN(complaint_reasons); k++)
			td_num(fp, reason_count(d->complaints_by_reason,
			    d->n_complaints_by_reason, complaint_reasons[k]));
		td_num(fp, d->complaints);
		fputs("</tr>\n", fp);
	}
	fputs("</tbody></table>\n<h2>Departments by list</h2>\n"
	    "<p class=\"note\">The same figures per list (四张清单) of the "
	    "incident's task type; items without a task type (an unknown "
	    "category) count only in the table above.</p>\n"
	    "<table id=\"department-lists\">\n<thead><tr><th>Department</th>"
	    "<th>List</th><th class=\"n\">Pushed</th>"
	    "<th class=\"n\">Accepted</th><th class=\"n\">Merged</th>"
	    "<th class=\"n\">Rejected: negative list</th>"
	    "<th class=\"n\">Rejected: other</th>"
	    "<th class=\"n\">Complaints</th><th class=\"n\">Overdue</th>"
	    "<th class=\"n\">Closed</th><th class=\"n\">Median time to "
	    "close</th></tr></thead>\n<tbody>\n", fp);
	for (size_t i = 0; i < r->n_departments; i++) {
		const Gridd__V1__DepartmentBurden *d = r->departments[i];

		if (d->list == GRIDD__V1__TASK_LIST__LIST_UNSPECIFIED)
			continue;
		fputs("<tr data-id=\"", fp);
		html(fp, d->department_id);
		fprintf(fp, "\" data-list=\"%s\"><td>", list_name(d->list));
		html(fp, d->name[0] ? d->name : d->department_id);
		fprintf(fp, "</td><td>%s</td>", list_name(d->list));
		td_num(fp, d->pushed);
		td_num(fp, d->accepted);
		td_num(fp, d->merged);
		td_num(fp, d->rejected_negative);
		td_num(fp, d->rejected_other);
		td_num(fp, d->complaints);
		td_num(fp, d->overdue);
		td_num(fp, d->closed);
		td_median(fp, d->median_close_ms, d->closed > 0);
		fputs("</tr>\n", fp);
	}
	fputs("</tbody></table>\n", fp);
}

static void
html_communities(FILE *fp, const Gridd__V1__BurdenReport *r)
{
	fputs("<h2>Communities</h2>\n<p class=\"note\">Tasks by list and by "
	    "matter (三事分流). <b>Government share</b> (政居分离): of the "
	    "tasks routed to grid workers, the part that is government work "
	    "(assist or certificate lists) rather than residents' own affairs "
	    "(autonomy).</p>\n", fp);
	chart_communities(fp, r);
	fputs("<table id=\"communities\">\n<thead><tr><th>Community</th>"
	    "<th>Name</th><th class=\"n\">Tasks</th>"
	    "<th class=\"n\">Autonomy</th><th class=\"n\">Assist</th>"
	    "<th class=\"n\">Certificate</th><th class=\"n\">Big</th>"
	    "<th class=\"n\">Small</th><th class=\"n\">Private</th>"
	    "<th class=\"n\">To grid workers</th><th class=\"n\">of which "
	    "government</th><th class=\"n\">Government share</th></tr>"
	    "</thead>\n<tbody>\n", fp);
	for (size_t i = 0; i < r->n_communities; i++) {
		const Gridd__V1__CommunityBurden *c = r->communities[i];

		fputs("<tr data-id=\"", fp);
		html(fp, c->community_id);
		fputs("\"><td>", fp);
		html(fp, c->community_id);
		fputs("</td><td>", fp);
		html(fp, c->name);
		fputs("</td>", fp);
		td_num(fp, c->tasks);
		td_num(fp, c->autonomy);
		td_num(fp, c->assist);
		td_num(fp, c->certificate);
		td_num(fp, c->big);
		td_num(fp, c->small);
		td_num(fp, c->private_);
		td_num(fp, c->to_workers);
		td_num(fp, c->to_workers_government);
		if (c->to_workers > 0)
			fprintf(fp, "<td class=\"n\" data-share=\"%.6f\">%.1f "
			    "%%</td>", c->government_share,
			    100.0 * c->government_share);
		else
			fputs("<td class=\"n\" data-share=\"\">&mdash;</td>", fp);
		fputs("</tr>\n", fp);
	}
	fputs("</tbody></table>\n", fp);
}

static void
html_workers(FILE *fp, const Gridd__V1__BurdenReport *r)
{
	fputs("<h2>Grid workers</h2>\n<p class=\"note\">Offers made to each "
	    "grid worker in the period and what became of them; accept time "
	    "runs from the offer, resolve time from the accept.</p>\n"
	    "<table id=\"workers\">\n<thead><tr><th>Worker</th>"
	    "<th>Community</th><th class=\"n\">Offered</th>"
	    "<th class=\"n\">Accepted</th><th class=\"n\">Declined</th>"
	    "<th class=\"n\">Expired</th><th class=\"n\">Resolved</th>"
	    "<th class=\"n\">Median time to accept</th>"
	    "<th class=\"n\">Median time to resolve</th></tr></thead>\n"
	    "<tbody>\n", fp);
	for (size_t i = 0; i < r->n_workers; i++) {
		const Gridd__V1__WorkerBurden *w = r->workers[i];

		fputs("<tr data-id=\"", fp);
		html(fp, w->worker_id);
		fputs("\"><td>", fp);
		html(fp, w->worker_id);
		fputs("</td><td>", fp);
		html(fp, w->community_id);
		fputs("</td>", fp);
		td_num(fp, w->offered);
		td_num(fp, w->accepted);
		td_num(fp, w->declined);
		td_num(fp, w->expired);
		td_num(fp, w->resolved);
		td_median(fp, w->median_accept_ms, w->accepted > 0);
		td_median(fp, w->median_resolve_ms, w->resolved > 0);
		fputs("</tr>\n", fp);
	}
	fputs("</tbody></table>\n", fp);
}

static const char html_definitions[] =
"<h2>What the figures count</h2>\n<dl>\n"
"<dt>Pushed</dt><dd>Items a department sent in the period: accepted, merged "
"and rejected. A replay of an item already answered changes nothing and is "
"not counted again.</dd>\n"
"<dt>Merged</dt><dd>Items that described an incident already known (from "
"any department) and were attached to it instead of creating a new task "
"(one model, 多网合一).</dd>\n"
"<dt>Rejected: negative list</dt><dd>Items of a task type on the negative "
"list (负面清单): work that must not be pushed onto communities.</dd>\n"
"<dt>Rejected: other</dt><dd>A category the department's crosswalk does not "
"know, a place outside every community, or an invalid item.</dd>\n"
"<dt>Overdue</dt><dd>Pushed items whose incident was escalated for its "
"deadline, or is still open (not resolved, closed or cancelled) past it: "
"the SLA timer's rule. An incident resolved in time is on time while it "
"waits for its department's check; referrals to residents and cancelled "
"incidents never count.</dd>\n"
"<dt>Rejected, per community</dt><dd>A community's report counts a refused "
"item only when the refusal names the community; the whole city's counts "
"them all.</dd>\n"
"<dt>Median time to close</dt><dd>From the department's push to the "
"incident's closing, over the items closed. Over whole days already "
"summed, medians come from histograms and are within 4.4% of the exact "
"value.</dd>\n"
"<dt>Government share</dt><dd>Assist and certificate tasks divided by all "
"tasks routed to grid workers.</dd>\n</dl>\n";

static void
write_html(FILE *fp, const Gridd__V1__BurdenReport *r)
{
	char from[48], to[48], gen[48];

	fmt_time(from, sizeof(from), r->from);
	fmt_time(to, sizeof(to), r->to);
	fmt_time(gen, sizeof(gen), r->generated_at);
	fputs(html_head, fp);
	fputs("<h1>Burden report (减负)</h1>\n<p class=\"meta\" id=\"meta\">",
	    fp);
	fprintf(fp, "Period: <b>%s</b> to <b>%s</b> (end excluded) &middot; "
	    "Community: <b>", from, to);
	html(fp, r->community_id[0] ? r->community_id : "all");
	fprintf(fp, "</b> &middot; Generated %s</p>\n", gen);
	html_departments(fp, r);
	html_communities(fp, r);
	html_workers(fp, r);
	fputs(html_definitions, fp);
	fputs("</body>\n</html>\n", fp);
}

/* ---- the command --------------------------------------------------------- */

static int
usage(const char *msg, const char *arg)
{
	fprintf(stderr, "gridctl: report burden: %s%s\n"
	    "usage: gridctl report burden [--from T] [--to T] "
	    "[--community C] [--csv | --json | --html FILE]\n", msg,
	    arg != NULL ? arg : "");
	return GC_EXIT_USAGE;
}

int
report_cmd(struct gc_session *s, int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "from", required_argument, NULL, 'f' },
		{ "to", required_argument, NULL, 't' },
		{ "community", required_argument, NULL, 'c' },
		{ "csv", no_argument, NULL, 'v' },
		{ "json", no_argument, NULL, 'j' },
		{ "html", required_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	Gridd__V1__Envelope req = GRIDD__V1__ENVELOPE__INIT, *reply = NULL;
	Gridd__V1__GetBurdenReport br = GRIDD__V1__GET_BURDEN_REPORT__INIT;
	enum report_format fmt = s->json ? FMT_JSON : FMT_TEXT;
	const char *html_path = NULL;
	int ch, rc, nfmt = 0;

	if (argc < 2 || strcmp(argv[1], "burden") != 0)
		return usage("want 'report burden'", NULL);
	argc--;
	argv++;
	optind = 0;
	opterr = 1;
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (ch) {
		case 'f':
			if (!gcp_time_ms(optarg, &br.from))
				return usage("bad --from: ", optarg);
			break;
		case 't':
			if (!gcp_time_ms(optarg, &br.to))
				return usage("bad --to: ", optarg);
			break;
		case 'c':
			if (!gcp_id(optarg))
				return usage("bad community id: ", optarg);
			br.community_id = optarg;
			break;
		case 'v':
			fmt = FMT_CSV;
			nfmt++;
			break;
		case 'j':
			fmt = FMT_JSON;
			nfmt++;
			break;
		case 'h':
			fmt = FMT_HTML;
			html_path = optarg;
			nfmt++;
			break;
		default:
			return GC_EXIT_USAGE;
		}
	}
	if (optind != argc)
		return usage("unexpected argument ", argv[optind]);
	if (nfmt > 1)
		return usage("--csv, --json and --html exclude each other",
		    NULL);
	if (br.to != 0 && br.from >= br.to)
		return usage("--from must be before --to", NULL);

	req.body_case = GRIDD__V1__ENVELOPE__BODY_GET_BURDEN_REPORT;
	req.get_burden_report = &br;
	rc = gc_session_open(s);
	if (rc != GC_EXIT_OK)
		return rc;
	rc = gc_session_call(s, &req, &reply);
	if (rc != GC_EXIT_OK)
		return rc;
	if (reply->body_case != GRIDD__V1__ENVELOPE__BODY_BURDEN_REPORT) {
		rc = gc_reply_failed(s, reply);
		frame_envelope_free(reply);
		return rc;
	}
	switch (fmt) {
	case FMT_TEXT:
		write_text(reply->burden_report);
		break;
	case FMT_CSV:
		write_csv(stdout, reply->burden_report);
		break;
	case FMT_JSON: {
		struct gc_session js = *s;

		js.json = true;
		gc_print_reply(&js, reply, NULL);
		break;
	}
	case FMT_HTML: {
		FILE *fp = strcmp(html_path, "-") == 0 ? stdout :
		    fopen(html_path, "w");

		if (fp == NULL) {
			fprintf(stderr, "gridctl: %s: %s\n", html_path,
			    strerror(errno));
			rc = GC_EXIT_USAGE;
			break;
		}
		write_html(fp, reply->burden_report);
		if (fp != stdout && fclose(fp) != 0) {
			fprintf(stderr, "gridctl: %s: %s\n", html_path,
			    strerror(errno));
			rc = GC_EXIT_TRANSPORT;
		} else if (fp != stdout && !s->json)
			printf("wrote %s\n", html_path);
		break;
	}
	}
	frame_envelope_free(reply);
	return rc;
}

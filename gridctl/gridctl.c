/* gridctl.c - the administrators' and testers' command-line client of gridd. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "buildconf.h"
#include "frame.h"
#include "grid.h"
#include "import.h"
#include "parse.h"
#include "push.h"
#include "render.h"
#include "report.h"
#include "session.h"

#define GC_DEFAULT_ADDR "127.0.0.1:7700"
#define GC_DEFAULT_TIMEOUT_MS 10000
/* A worker's cells: one primary plus backups; more is a typing accident. */
#define GC_MAX_CELLS 256

static const char usage_text[] =
"usage: gridctl [options] COMMAND [ARGS...]\n"
"\n"
"options:\n"
"  --addr HOST:PORT   server address (env GRIDD_ADDR, default " GC_DEFAULT_ADDR ")\n"
"  --tls              connect with TLS\n"
"  --ca FILE          CA certificates that sign the server's (default: system)\n"
"  --cert FILE --key FILE   client certificate and key for TLS\n"
"  --role ROLE        worker, department or admin (env GRIDD_ROLE)\n"
"  --id ID            principal: worker, department or admin id (env GRIDD_ID)\n"
"  --secret-stdin     read the secret from the first line of standard input\n"
"                     (otherwise env GRIDD_SECRET; env GRIDD_TOKEN resumes a\n"
"                     session instead). A secret is never a flag.\n"
"  --json             one JSON object per reply on standard output\n"
"  --timeout S        seconds to wait for connect and for each read (default 10)\n"
"  -h, --help         this text\n"
"\n"
"commands:\n"
"  ping                              round trip and server time\n"
"  login                             log in and print the session token\n"
"  worker upsert ID --name NAME --community C [--cell CELL ...] [--max-open N]\n"
"                    [--password-stdin]   password from env GRIDD_WORKER_PASSWORD\n"
"                                    or the next line of standard input\n"
"  grid show COMMUNITY [--geojson FILE|-]\n"
"                                    cells of a community: a table, or a\n"
"                                    GeoJSON FeatureCollection for GIS tools\n"
"  grid map COMMUNITY --svg FILE     the cells drawn with their household counts\n"
"  partition COMMUNITY|--all         re-partition into cells and print the\n"
"                                    report (waits up to 30 minutes)\n"
"  report burden [--from T] [--to T] [--community C]\n"
"                [--csv | --json | --html FILE]\n"
"                                    T: milliseconds or YYYY-MM-DD[THH:MM:SS];\n"
"                                    default the beginning .. now\n"
"  complaints [--open] [--department D]\n"
"  push FILE [--batch N]            incidents from CSV: a header of IncidentIn\n"
"                                    fields (ext_id,category,occurred_at,lon,lat,...)\n"
"  import communities FILE.geojson  Polygon/MultiPolygon features with an id\n"
"                                    (or name), a name and an optional 12-digit code\n"
"  import buildings FILE.csv|FILE.geojson\n"
"                                    CSV header id,community,kind,households,levels,\n"
"                                    lon,lat,area_m2 (municipality, centroid_lon,\n"
"                                    centroid_lat accepted), or GeoJSON footprints\n"
"  import layer DEPARTMENT FILE.geojson [--merge]\n"
"                                    a department's grid polygons (property code);\n"
"                                    replaces its layer unless --merge\n"
"      import options: --strict (any bad row refuses the import), --batch N\n"
"      (rows per request, default 2000), --batch-bytes N (default 921600)\n"
"\n"
"exit status: 0 success, 1 the server answered with an error, 2 usage,\n"
"3 connection or transport error.\n";

static int PRINTF_LIKE(1, 2)
usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("gridctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\ntry 'gridctl --help'\n", stderr);
	return GC_EXIT_USAGE;
}

/* Subcommand option parsing restarts getopt over the subcommand's argv. */
static void
getopt_reset(void)
{
	optind = 0;
	opterr = 1;
}

static bool
parse_role(const char *s, Gridd__V1__Role *role)
{
	if (strcasecmp(s, "worker") == 0)
		*role = GRIDD__V1__ROLE__WORKER;
	else if (strcasecmp(s, "department") == 0)
		*role = GRIDD__V1__ROLE__DEPARTMENT;
	else if (strcasecmp(s, "admin") == 0)
		*role = GRIDD__V1__ROLE__ADMIN;
	else
		return false;
	return true;
}

/* Runs one request whose reply has the expected body; prints it. */
static int
simple_call(struct gc_session *s, Gridd__V1__Envelope *req,
    Gridd__V1__Envelope__BodyCase want)
{
	Gridd__V1__Envelope *reply = NULL;
	int rc = gc_session_open(s);

	if (rc != GC_EXIT_OK)
		return rc;
	rc = gc_session_call(s, req, &reply);
	if (rc != GC_EXIT_OK)
		return rc;
	if (reply->body_case != want)
		rc = gc_reply_failed(s, reply);
	else
		gc_print_reply(s, reply, NULL);
	frame_envelope_free(reply);
	return rc;
}

static int
cmd_ping(struct gc_session *s, int argc, char **argv)
{
	Gridd__V1__Envelope req = GRIDD__V1__ENVELOPE__INIT, *reply = NULL;
	Gridd__V1__Ping ping = GRIDD__V1__PING__INIT;
	struct timespec t0, t1;
	double rtt_ms;
	char extra[64];
	int rc;

	if (argc > 1)
		return usage_error("ping takes no arguments: %s", argv[1]);
	rc = gc_session_open(s);
	if (rc != GC_EXIT_OK)
		return rc;
	req.body_case = GRIDD__V1__ENVELOPE__BODY_PING;
	req.ping = &ping;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = gc_session_call(s, &req, &reply);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (rc != GC_EXIT_OK)
		return rc;
	if (reply->body_case != GRIDD__V1__ENVELOPE__BODY_PONG) {
		rc = gc_reply_failed(s, reply);
		frame_envelope_free(reply);
		return rc;
	}
	rtt_ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 +
	    (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	if (s->json) {
		snprintf(extra, sizeof(extra), ",\"rtt_ms\":%.3f", rtt_ms);
		gc_print_reply(s, reply, extra);
	} else {
		printf("pong from %s: rtt %.3f ms, server time ", s->addr,
		    rtt_ms);
		render_time(stdout, (long long)reply->pong->server_time);
		printf(" (%" PRId64 ")\n", reply->pong->server_time);
	}
	frame_envelope_free(reply);
	return GC_EXIT_OK;
}

static int
cmd_login(struct gc_session *s, int argc, char **argv)
{
	Gridd__V1__Envelope *env;
	int rc;

	if (argc > 1)
		return usage_error("login takes no arguments: %s", argv[1]);
	rc = gc_session_open(s);
	if (rc != GC_EXIT_OK)
		return rc;
	env = s->login_env;
	gc_print_reply(s, env, NULL);
	if (!s->json)
		fputs("(GRIDD_TOKEN=<session_token> resumes this session "
		    "until it expires)\n", stdout);
	return GC_EXIT_OK;
}

static int
cmd_worker(struct gc_session *s, int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "community", required_argument, NULL, 'c' },
		{ "cell", required_argument, NULL, 'l' },
		{ "max-open", required_argument, NULL, 'm' },
		{ "password-stdin", no_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	Gridd__V1__Envelope req = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__UpsertWorker up = GRIDD__V1__UPSERT_WORKER__INIT;
	char *cells[GC_MAX_CELLS], *password = NULL;
	const char *env_pw;
	size_t n_cells = 0;
	bool pw_stdin = false;
	long long v;
	int ch, rc;

	if (argc < 2 || strcmp(argv[1], "upsert") != 0)
		return usage_error("worker: want 'worker upsert ID ...'");
	argc--;
	argv++;
	getopt_reset();
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (ch) {
		case 'n':
			up.name = optarg;
			break;
		case 'c':
			if (!gcp_id(optarg))
				return usage_error("bad community id: %s",
				    optarg);
			up.community_id = optarg;
			break;
		case 'l':
			if (!gcp_id(optarg))
				return usage_error("bad cell id: %s", optarg);
			if (n_cells == GC_MAX_CELLS)
				return usage_error("too many --cell (at most %d)",
				    GC_MAX_CELLS);
			cells[n_cells++] = optarg;
			break;
		case 'm':
			if (!gcp_int(optarg, 0, INT32_MAX, &v))
				return usage_error("bad --max-open: %s",
				    optarg);
			up.max_open = (int32_t)v;
			break;
		case 'p':
			pw_stdin = true;
			break;
		default:
			return GC_EXIT_USAGE;
		}
	}
	if (optind != argc - 1)
		return usage_error("worker upsert: want exactly one worker "
		    "id");
	if (!gcp_id(argv[optind]))
		return usage_error("bad worker id: %s", argv[optind]);
	up.worker_id = argv[optind];
	if (up.name[0] == '\0' || up.community_id[0] == '\0')
		return usage_error("worker upsert: --name and --community are "
		    "required");
	env_pw = getenv("GRIDD_WORKER_PASSWORD");
	if (pw_stdin) {
		/* After the login secret when both come from stdin. */
		password = gc_read_stdin_line("worker password");
		if (password == NULL)
			return GC_EXIT_USAGE;
	} else if (env_pw != NULL && env_pw[0] != '\0')
		password = xstrdup(env_pw);
	else
		return usage_error("worker upsert: set GRIDD_WORKER_PASSWORD "
		    "or use --password-stdin");
	up.password = password;
	up.cell_ids = cells;
	up.n_cell_ids = n_cells;
	req.body_case = GRIDD__V1__ENVELOPE__BODY_UPSERT_WORKER;
	req.upsert_worker = &up;
	rc = simple_call(s, &req, GRIDD__V1__ENVELOPE__BODY_OK);
	if (rc == GC_EXIT_OK && !s->json)
		printf("worker %s saved\n", up.worker_id);
	gc_secret_free(password);
	return rc;
}

static int
cmd_complaints(struct gc_session *s, int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "open", no_argument, NULL, 'o' },
		{ "department", required_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 },
	};
	Gridd__V1__Envelope req = GRIDD__V1__ENVELOPE__INIT;
	Gridd__V1__ListComplaints lc = GRIDD__V1__LIST_COMPLAINTS__INIT;
	int ch;

	getopt_reset();
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (ch) {
		case 'o':
			lc.open_only = 1;
			break;
		case 'd':
			if (!gcp_id(optarg))
				return usage_error("bad department id: %s",
				    optarg);
			lc.department_id = optarg;
			break;
		default:
			return GC_EXIT_USAGE;
		}
	}
	if (optind != argc)
		return usage_error("complaints: unexpected argument %s",
		    argv[optind]);
	req.body_case = GRIDD__V1__ENVELOPE__BODY_LIST_COMPLAINTS;
	req.list_complaints = &lc;
	return simple_call(s, &req, GRIDD__V1__ENVELOPE__BODY_COMPLAINT_LIST);
}

static int
cmd_push(struct gc_session *s, int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "batch", required_argument, NULL, 'b' },
		{ NULL, 0, NULL, 0 },
	};
	long long batch = PUSH_DEFAULT_BATCH;
	int ch;

	getopt_reset();
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		if (ch != 'b' || !gcp_int(optarg, 1, PUSH_MAX_BATCH, &batch))
			return usage_error("push: --batch N, 1..%d",
			    PUSH_MAX_BATCH);
	}
	if (optind != argc - 1)
		return usage_error("push: want one FILE");
	return push_file(s, argv[optind], (size_t)batch);
}

struct command {
	const char *name;
	int (*run)(struct gc_session *, int, char **);
};

static const struct command commands[] = {
	{ "ping", cmd_ping },
	{ "login", cmd_login },
	{ "worker", cmd_worker },
	{ "grid", grid_command },
	{ "partition", grid_partition_command },
	{ "report", report_cmd },
	{ "complaints", cmd_complaints },
	{ "push", cmd_push },
	{ "import", import_command },
};

/* getopt_long accepts unambiguous prefixes, so "--secret" would silently
 * mean "--secret-stdin" and "--password" "--password-stdin": refuse any
 * attempt to pass a secret on the command line, where ps shows it. */
static bool
secret_flag(int argc, char **argv)
{
	static const char *const bad[] = { "--secret", "--password",
	    "--key-secret", "--token" };

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			break;
		for (size_t k = 0; k < ARRAY_LEN(bad); k++) {
			size_t n = strlen(bad[k]);

			if (strncmp(argv[i], bad[k], n) == 0 &&
			    (argv[i][n] == '\0' || argv[i][n] == '=')) {
				fprintf(stderr, "gridctl: %s: secrets are never "
				    "flags; use GRIDD_SECRET (GRIDD_TOKEN, "
				    "GRIDD_WORKER_PASSWORD) or --secret-stdin "
				    "(--password-stdin)\n", bad[k]);
				return true;
			}
		}
	}
	return false;
}

int
main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "addr", required_argument, NULL, 'a' },
		{ "tls", no_argument, NULL, 'T' },
		{ "ca", required_argument, NULL, 'C' },
		{ "cert", required_argument, NULL, 'E' },
		{ "key", required_argument, NULL, 'K' },
		{ "role", required_argument, NULL, 'r' },
		{ "id", required_argument, NULL, 'i' },
		{ "secret-stdin", no_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct gc_session s;
	const char *role = getenv("GRIDD_ROLE"), *env;
	bool secret_stdin = false;
	int ch, rc;

	memset(&s, 0, sizeof(s));
	s.addr = getenv("GRIDD_ADDR");
	if (s.addr == NULL || s.addr[0] == '\0')
		s.addr = GC_DEFAULT_ADDR;
	s.principal = getenv("GRIDD_ID");
	s.timeout_ms = GC_DEFAULT_TIMEOUT_MS;

	if (secret_flag(argc, argv))
		return GC_EXIT_USAGE;
	/* '+': options end at the command; the rest is the command's. */
	while ((ch = getopt_long(argc, argv, "+h", lopts, NULL)) != -1) {
		switch (ch) {
		case 'a':
			s.addr = optarg;
			break;
		case 'T':
			s.tls.enabled = true;
			break;
		case 'C':
			s.tls.ca_file = optarg;
			break;
		case 'E':
			s.tls.cert_file = optarg;
			break;
		case 'K':
			s.tls.key_file = optarg;
			break;
		case 'r':
			role = optarg;
			break;
		case 'i':
			s.principal = optarg;
			break;
		case 's':
			secret_stdin = true;
			break;
		case 'j':
			s.json = true;
			break;
		case 't': {
			char *end;
			double sec;

			errno = 0;
			sec = strtod(optarg, &end);
			if (errno != 0 || end == optarg || *end != '\0' ||
			    !(sec >= 0.001 && sec <= 86400))
				return usage_error("bad --timeout: %s "
				    "(seconds, 0.001..86400)", optarg);
			s.timeout_ms = (int)(sec * 1000);
			break;
		}
		case 'h':
			fputs(usage_text, stdout);
			return GC_EXIT_OK;
		case 'V':
			printf("gridctl %s\n", GRIDD_VERSION);
			return GC_EXIT_OK;
		default:
			fputs("try 'gridctl --help'\n", stderr);
			return GC_EXIT_USAGE;
		}
	}
	if (optind >= argc)
		return usage_error("no command given");
	if (!client_addr_valid(s.addr))
		return usage_error("bad address \"%s\": want HOST:PORT or "
		    "[V6]:PORT (--addr or GRIDD_ADDR)", s.addr);
	if ((s.tls.cert_file == NULL) != (s.tls.key_file == NULL))
		return usage_error("--cert and --key go together");
	if ((s.tls.ca_file != NULL || s.tls.cert_file != NULL) &&
	    !s.tls.enabled)
		return usage_error("--ca, --cert and --key need --tls");

	const struct command *cmd = NULL;

	for (size_t i = 0; i < ARRAY_LEN(commands); i++)
		if (strcmp(commands[i].name, argv[optind]) == 0)
			cmd = &commands[i];
	if (cmd == NULL)
		return usage_error("unknown command: %s", argv[optind]);
	if (role == NULL || role[0] == '\0')
		return usage_error("no role: use --role or GRIDD_ROLE");
	if (!parse_role(role, &s.role))
		return usage_error("bad role: %s (worker, department, admin)",
		    role);
	if (s.principal == NULL || !gcp_id(s.principal))
		return usage_error("no or bad id: use --id or GRIDD_ID");

	if (secret_stdin) {
		s.secret = gc_read_stdin_line("secret");
		if (s.secret == NULL)
			return GC_EXIT_USAGE;
	} else if ((env = getenv("GRIDD_SECRET")) != NULL && env[0] != '\0')
		s.secret = xstrdup(env);
	else if ((env = getenv("GRIDD_TOKEN")) != NULL && env[0] != '\0')
		s.resume_token = env;
	else
		return usage_error("no secret: set GRIDD_SECRET or use "
		    "--secret-stdin");

	rc = cmd->run(&s, argc - optind, argv + optind);
	gc_session_close(&s);
	fflush(stdout);
	if (ferror(stdout)) {
		fprintf(stderr, "gridctl: writing output failed\n");
		if (rc == GC_EXIT_OK)
			rc = GC_EXIT_TRANSPORT;
	}
	return rc;
}

/* session.c - gridctl's logged-in session: login, one call at a time. */
#include "session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "frame.h"
#include "render.h"

/* Replies to other requests or pushes skipped while waiting for ours: a
 * server that only ever sends those is broken. */
#define GC_MAX_SKIPPED 10000

char *
gc_read_stdin_line(const char *what)
{
	char buf[GC_MAX_SECRET + 2];
	size_t n;

	if (fgets(buf, sizeof(buf), stdin) == NULL) {
		fprintf(stderr, "gridctl: no %s on standard input\n", what);
		return NULL;
	}
	n = strlen(buf);
	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	else if (n > GC_MAX_SECRET) {
		OPENSSL_cleanse(buf, sizeof(buf));
		fprintf(stderr, "gridctl: %s on standard input is longer "
		    "than %d bytes\n", what, GC_MAX_SECRET);
		return NULL;
	}
	if (n > 0 && buf[n - 1] == '\r')
		buf[--n] = '\0';
	char *s = xstrdup(buf);

	OPENSSL_cleanse(buf, sizeof(buf));
	return s;
}

void
gc_secret_free(char *s)
{
	if (s == NULL)
		return;
	OPENSSL_cleanse(s, strlen(s));
	free(s);
}

static const char *
body_name(const Gridd__V1__Envelope *env)
{
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
	    &gridd__v1__envelope__descriptor, (unsigned)env->body_case);

	return f != NULL ? f->name : "nothing";
}

int
gc_reply_failed(const struct gc_session *s, const Gridd__V1__Envelope *reply)
{
	if (reply->body_case != GRIDD__V1__ENVELOPE__BODY_ERROR) {
		fprintf(stderr, "gridctl: unexpected reply from the server: "
		    "%s\n", body_name(reply));
		return GC_EXIT_TRANSPORT;
	}
	if (s->json) {
		gc_print_reply(s, reply, NULL);
	} else {
		const Gridd__V1__Error *e = reply->error;
		const char *code = render_enum_name(
		    &gridd__v1__error_code__descriptor, (int)e->code);

		fputs("gridctl: server error ", stderr);
		if (code != NULL)
			fputs(code, stderr);
		else
			fprintf(stderr, "%d", (int)e->code);
		fputs(": ", stderr);
		render_text_string(stderr, e->message);
		if (e->detail != NULL && e->detail[0] != '\0') {
			fputs(" (", stderr);
			render_text_string(stderr, e->detail);
			fputc(')', stderr);
		}
		fputc('\n', stderr);
	}
	return GC_EXIT_SERVER;
}

void
gc_print_reply(const struct gc_session *s, const Gridd__V1__Envelope *reply,
    const char *extra_json)
{
	if (s->json) {
		fputc('{', stdout);
		(void)render_json_fields(stdout, &reply->base, 1);
		if (extra_json != NULL)
			fputs(extra_json, stdout);
		fputs("}\n", stdout);
		return;
	}
	/* The body is the one member of the oneof: print its fields. */
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(
	    &gridd__v1__envelope__descriptor, (unsigned)reply->body_case);

	if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE)
		return;
	const ProtobufCMessage *body = *(ProtobufCMessage * const *)
	    ((const char *)reply + f->offset);
	if (body != NULL)
		render_text_message(stdout, body, 0);
}

int
gc_session_call(struct gc_session *s, Gridd__V1__Envelope *req,
    Gridd__V1__Envelope **reply)
{
	char err[512];

	*reply = NULL;
	req->request_id = ++s->next_request_id;
	if (!client_send(s->conn, req, err, sizeof(err))) {
		fprintf(stderr, "gridctl: %s: %s\n", s->addr, err);
		return GC_EXIT_TRANSPORT;
	}
	for (int skipped = 0; skipped < GC_MAX_SKIPPED; skipped++) {
		Gridd__V1__Envelope *env = client_recv(s->conn, err,
		    sizeof(err));

		if (env == NULL) {
			fprintf(stderr, "gridctl: %s: %s\n", s->addr, err);
			return GC_EXIT_TRANSPORT;
		}
		/* A server may answer a request it could not parse with id 0
		 * and then close; take that Error as ours. */
		if (env->request_id == req->request_id ||
		    (env->request_id == 0 &&
		    env->body_case == GRIDD__V1__ENVELOPE__BODY_ERROR)) {
			*reply = env;
			return GC_EXIT_OK;
		}
		frame_envelope_free(env);
	}
	fprintf(stderr, "gridctl: %s: no reply to request %llu among %d "
	    "messages\n", s->addr, (unsigned long long)req->request_id,
	    GC_MAX_SKIPPED);
	return GC_EXIT_TRANSPORT;
}

int
gc_session_open(struct gc_session *s)
{
	Gridd__V1__Envelope req = GRIDD__V1__ENVELOPE__INIT, *reply = NULL;
	Gridd__V1__Login login = GRIDD__V1__LOGIN__INIT;
	char err[512];
	int rc;

	s->conn = client_connect(s->addr, &s->tls, s->timeout_ms, err,
	    sizeof(err));
	if (s->conn == NULL) {
		fprintf(stderr, "gridctl: %s\n", err);
		return GC_EXIT_TRANSPORT;
	}
	login.role = s->role;
	login.principal = (char *)s->principal;
	if (s->secret != NULL)
		login.secret = s->secret;
	else
		login.resume_token = (char *)s->resume_token;
	req.body_case = GRIDD__V1__ENVELOPE__BODY_LOGIN;
	req.login = &login;
	rc = gc_session_call(s, &req, &reply);
	if (rc != GC_EXIT_OK)
		return rc;
	if (reply->body_case != GRIDD__V1__ENVELOPE__BODY_LOGIN_REPLY) {
		rc = gc_reply_failed(s, reply);
		frame_envelope_free(reply);
		return rc;
	}
	s->login_env = reply;
	s->login = reply->login_reply;
	return GC_EXIT_OK;
}

void
gc_session_close(struct gc_session *s)
{
	if (s->login_env != NULL)
		frame_envelope_free(s->login_env);
	s->login_env = NULL;
	s->login = NULL;
	client_close(s->conn);
	s->conn = NULL;
	gc_secret_free(s->secret);
	s->secret = NULL;
}

/* tls.c - OpenSSL 3 server contexts: TLS 1.2+, modern ciphers, optional client CA. */
#include "tls.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "config.h"

/* TLS 1.2 suites: forward secrecy and AEAD only. TLS 1.3 suites are
 * OpenSSL's defaults, which are all acceptable. */
#define TLS12_CIPHERS \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* Verification depth for client certificates: leaf, intermediates, root. */
#define TLS_VERIFY_DEPTH 4

const char *
tls_last_error(char *buf, size_t len)
{
	unsigned long e = ERR_get_error();

	if (len == 0)
		return "";
	buf[0] = '\0';
	if (e != 0)
		ERR_error_string_n(e, buf, len);
	ERR_clear_error();
	return buf;
}

static SSL_CTX *
fail(SSL_CTX *ctx, char *err, size_t errlen, const char *what,
    const char *path)
{
	char ossl[256];

	tls_last_error(ossl, sizeof(ossl));
	snprintf(err, errlen, "%s%s%s: %s", what, path ? " " : "",
	    path ? path : "", ossl[0] ? ossl : "failed");
	SSL_CTX_free(ctx);
	return NULL;
}

SSL_CTX *
tls_ctx_new(const struct cfg *cfg, char *err, size_t errlen)
{
	SSL_CTX *ctx;

	ERR_clear_error();
	if (cfg->tls_cert == NULL || cfg->tls_key == NULL) {
		snprintf(err, errlen,
		    "a tls listener needs server.tls_cert and server.tls_key");
		return NULL;
	}
	if ((ctx = SSL_CTX_new(TLS_server_method())) == NULL)
		return fail(NULL, err, errlen, "SSL_CTX_new", NULL);
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
		return fail(ctx, err, errlen, "min protocol", NULL);
	if (!SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS))
		return fail(ctx, err, errlen, "cipher list", NULL);
	/* No renegotiation (a client-driven CPU sink), no compression
	 * (CRIME), the server's cipher order, no session tickets whose key
	 * would outlive a reload. */
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
	    SSL_OP_NO_TICKET);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	/* TLS 1.3 ignores SSL_OP_NO_TICKET for issuing: without this every
	 * handshake still sends two tickets nobody can resume (no cache). */
	if (!SSL_CTX_set_num_tickets(ctx, 0))
		return fail(ctx, err, errlen, "session tickets", NULL);
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1)
		return fail(ctx, err, errlen, "certificate", cfg->tls_cert);
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key,
	    SSL_FILETYPE_PEM) != 1)
		return fail(ctx, err, errlen, "private key", cfg->tls_key);
	if (SSL_CTX_check_private_key(ctx) != 1)
		return fail(ctx, err, errlen, "key does not match certificate",
		    cfg->tls_cert);
	if (cfg->tls_client_ca != NULL) {
		STACK_OF(X509_NAME) *names;

		if (SSL_CTX_load_verify_locations(ctx, cfg->tls_client_ca,
		    NULL) != 1)
			return fail(ctx, err, errlen, "client CA",
			    cfg->tls_client_ca);
		if ((names = SSL_load_client_CA_file(cfg->tls_client_ca)) ==
		    NULL)
			return fail(ctx, err, errlen, "client CA names",
			    cfg->tls_client_ca);
		SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx,
		    SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
		SSL_CTX_set_verify_depth(ctx, TLS_VERIFY_DEPTH);
	}
	return ctx;
}

void
tls_ctx_free(SSL_CTX *ctx)
{
	SSL_CTX_free(ctx);
}

/* tls.h - OpenSSL server contexts for TLS listeners, built whole or not at all. */
#ifndef GRIDD_TLS_H
#define GRIDD_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/types.h>

#include "util.h"

struct cfg;

/* A new server context from tls_cert, tls_key and (optional) tls_client_ca;
 * NULL with err filled when anything is missing or unreadable. */
SSL_CTX *tls_ctx_new(const struct cfg *cfg, char *err, size_t errlen) WUR;
/* Drops the caller's reference; connections made from it keep their own. */
void tls_ctx_free(SSL_CTX *ctx);
/* The oldest queued OpenSSL error as text ("" when none); clears the queue. */
const char *tls_last_error(char *buf, size_t len);

#endif

#ifndef SHOAL_TLS_H
#define SHOAL_TLS_H
// OpenSSL APIs that are function-like macros over SSL_CTX_ctrl/SSL_ctrl/BIO_ctrl (or use
// SSL_OP_BIT), which Swift does not import: typed one-line wrappers.

#include <openssl/ssl.h>

/// SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION): TLS 1.3 and nothing older.
int shoal_ssl_ctx_require_tls13(SSL_CTX *ctx);
/// SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS): hand the record layer to the kernel where it can.
void shoal_ssl_ctx_enable_ktls(SSL_CTX *ctx);
/// BIO_get_ktls_send(SSL_get_wbio(ssl)): 1 when the kernel encrypts what this connection sends.
int shoal_ssl_ktls_send(SSL *ssl);
/// BIO_get_ktls_recv(SSL_get_rbio(ssl)): 1 when the kernel decrypts what this connection receives.
int shoal_ssl_ktls_recv(SSL *ssl);
/// SSL_set_tlsext_host_name(ssl, name): the server name (SNI) a client asks for.
int shoal_ssl_set_server_name(SSL *ssl, const char *name);

#endif

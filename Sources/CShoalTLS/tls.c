#include "shoal_tls.h"

int shoal_ssl_ctx_require_tls13(SSL_CTX *ctx) { return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION); }
void shoal_ssl_ctx_enable_ktls(SSL_CTX *ctx) { SSL_CTX_set_options(ctx, SSL_OP_ENABLE_KTLS); }
int shoal_ssl_ktls_send(SSL *ssl) { return (int)BIO_get_ktls_send(SSL_get_wbio(ssl)); }
int shoal_ssl_ktls_recv(SSL *ssl) { return (int)BIO_get_ktls_recv(SSL_get_rbio(ssl)); }
int shoal_ssl_set_server_name(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }

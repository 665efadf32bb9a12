#ifndef SHOAL_SHIMS_H
#define SHOAL_SHIMS_H
// C that Swift cannot call directly: curl's variadic setopt/getinfo, the O_DIRECT macro (only
// visible under _GNU_SOURCE), OpenSSL's function-like macros, and CRC32C through the SSE4.2
// instruction.

#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>
#include <openssl/ssl.h>

/// CRC32C (Castagnoli), hardware-accelerated where the CPU has SSE4.2. `crc` is the running
/// value (0 to start); the result is finalised, so chaining passes the previous result.
uint32_t shoal_crc32c(uint32_t crc, const void *data, size_t length);
/// 1 when shoal_crc32c uses the CPU instruction, 0 for the table fallback.
int shoal_crc32c_is_hardware(void);

/// The O_DIRECT open flag for this architecture.
int shoal_o_direct(void);

// GNU extensions Glibc's Swift module does not expose (they need _GNU_SOURCE).
int shoal_accept_cloexec(int fd);

/// eventfd(0, EFD_CLOEXEC): <sys/eventfd.h> is not in Swift's Glibc module.
int shoal_eventfd(void);

/// SOCK_CLOEXEC for io_uring's accept (the CURing module's socket names clash with Glibc's).
int shoal_sock_cloexec(void);

/// MSG_NOSIGNAL, for the same reason.
int shoal_msg_nosignal(void);
long shoal_getrandom(void *buffer, size_t length);
void shoal_set_thread_name(const char *name);

// curl_easy_setopt / curl_easy_getinfo are variadic: typed wrappers, one per argument type.
CURLcode shoal_curl_setopt_long(CURL *curl, CURLoption option, long value);
CURLcode shoal_curl_setopt_ptr(CURL *curl, CURLoption option, const void *value);
CURLcode shoal_curl_setopt_off(CURL *curl, CURLoption option, curl_off_t value);
typedef size_t (*shoal_curl_data_cb)(char *data, size_t size, size_t count, void *context);
CURLcode shoal_curl_setopt_callback(CURL *curl, CURLoption option, shoal_curl_data_cb callback);
CURLcode shoal_curl_getinfo_long(CURL *curl, CURLINFO info, long *value);
// The progress callback (about once a second even when no byte moves): non-zero aborts.
typedef int (*shoal_curl_xferinfo_cb)(void *context, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow);
CURLcode shoal_curl_setopt_xferinfo(CURL *curl, shoal_curl_xferinfo_cb callback, void *context);

// OpenSSL APIs that are function-like macros over SSL_CTX_ctrl/SSL_ctrl/BIO_ctrl (or use
// SSL_OP_BIT), which Swift does not import: typed one-line wrappers.
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

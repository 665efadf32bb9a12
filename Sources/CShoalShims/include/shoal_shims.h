#ifndef SHOAL_SHIMS_H
#define SHOAL_SHIMS_H
// C that Swift cannot call directly: curl's variadic setopt/getinfo, the O_DIRECT macro (only
// visible under _GNU_SOURCE), and CRC32C through the SSE4.2 instruction.

#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>

/// CRC32C (Castagnoli), hardware-accelerated where the CPU has SSE4.2. `crc` is the running
/// value (0 to start); the result is finalised, so chaining passes the previous result.
uint32_t shoal_crc32c(uint32_t crc, const void *data, size_t length);
/// 1 when shoal_crc32c uses the CPU instruction, 0 for the table fallback.
int shoal_crc32c_is_hardware(void);

/// The O_DIRECT open flag for this architecture.
int shoal_o_direct(void);

// GNU extensions Glibc's Swift module does not expose (they need _GNU_SOURCE).
int shoal_accept_cloexec(int fd);
long shoal_getrandom(void *buffer, size_t length);
void shoal_set_thread_name(const char *name);

// curl_easy_setopt / curl_easy_getinfo are variadic: typed wrappers, one per argument type.
CURLcode shoal_curl_setopt_long(CURL *curl, CURLoption option, long value);
CURLcode shoal_curl_setopt_ptr(CURL *curl, CURLoption option, const void *value);
CURLcode shoal_curl_setopt_off(CURL *curl, CURLoption option, curl_off_t value);
typedef size_t (*shoal_curl_data_cb)(char *data, size_t size, size_t count, void *context);
CURLcode shoal_curl_setopt_callback(CURL *curl, CURLoption option, shoal_curl_data_cb callback);
CURLcode shoal_curl_getinfo_long(CURL *curl, CURLINFO info, long *value);

#endif

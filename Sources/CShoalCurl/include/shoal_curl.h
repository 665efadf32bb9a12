#ifndef SHOAL_CURL_H
#define SHOAL_CURL_H
// libcurl, loaded when first used (dlopen) instead of linked: a program that never talks HTTP
// (a training job reading through libshoal with no etcd and no direct store reads) runs on a
// host without libcurl, and loading libshoal pulls in nothing but libc, libssl and libcrypto.
// curl's header is used for its types and constants only; every call goes through these
// wrappers, which also give Swift typed forms of curl's variadic setopt/getinfo.

#include <stddef.h>
#include <curl/curl.h>

/// Loads libcurl (libcurl.so.4, else libcurl-gnutls.so.4) once per process and calls
/// curl_global_init. 0 when it is usable; -1 with the reason in `error` otherwise (every later
/// call gives the same answer). The other functions must only be called after a 0.
int shoal_curl_load(char *error, size_t length);

CURL *shoal_curl_easy_init(void);
void shoal_curl_easy_cleanup(CURL *curl);
void shoal_curl_easy_reset(CURL *curl);
CURLcode shoal_curl_easy_perform(CURL *curl);
const char *shoal_curl_easy_strerror(CURLcode code);
struct curl_slist *shoal_curl_slist_append(struct curl_slist *list, const char *string);
void shoal_curl_slist_free_all(struct curl_slist *list);

CURLM *shoal_curl_multi_init(void);
CURLMcode shoal_curl_multi_cleanup(CURLM *multi);
CURLMcode shoal_curl_multi_add_handle(CURLM *multi, CURL *curl);
CURLMcode shoal_curl_multi_remove_handle(CURLM *multi, CURL *curl);
CURLMcode shoal_curl_multi_perform(CURLM *multi, int *running);
CURLMcode shoal_curl_multi_poll(CURLM *multi, struct curl_waitfd *extra, unsigned count, int timeoutMillis, int *ready);
CURLMcode shoal_curl_multi_wakeup(CURLM *multi);
CURLMsg *shoal_curl_multi_info_read(CURLM *multi, int *left);

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

#endif

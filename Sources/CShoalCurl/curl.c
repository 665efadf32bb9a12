#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "shoal_curl.h"

// One pointer per libcurl function used, resolved once.
static struct {
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    void (*easy_cleanup)(CURL *);
    void (*easy_reset)(CURL *);
    CURLcode (*easy_perform)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
    CURLM *(*multi_init)(void);
    CURLMcode (*multi_cleanup)(CURLM *);
    CURLMcode (*multi_add_handle)(CURLM *, CURL *);
    CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
    CURLMcode (*multi_perform)(CURLM *, int *);
    CURLMcode (*multi_poll)(CURLM *, struct curl_waitfd *, unsigned, int, int *);
    CURLMcode (*multi_wakeup)(CURLM *);
    CURLMsg *(*multi_info_read)(CURLM *, int *);
} api;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[256];
static int load_status = -1;

#define RESOLVE(field, name) \
    do { \
        *(void **)(&api.field) = dlsym(handle, name); \
        if (!api.field) { snprintf(load_error, sizeof load_error, "libcurl has no %s", name); return; } \
    } while (0)

static void load(void) {
    const char *names[] = { "libcurl.so.4", "libcurl-gnutls.so.4" };
    void *handle = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !handle; i++) handle = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *why = dlerror();
        snprintf(load_error, sizeof load_error, "libcurl could not be loaded (install libcurl4): %s", why ? why : "not found");
        return;
    }
    RESOLVE(global_init, "curl_global_init");
    RESOLVE(easy_init, "curl_easy_init");
    RESOLVE(easy_cleanup, "curl_easy_cleanup");
    RESOLVE(easy_reset, "curl_easy_reset");
    RESOLVE(easy_perform, "curl_easy_perform");
    RESOLVE(easy_strerror, "curl_easy_strerror");
    RESOLVE(easy_setopt, "curl_easy_setopt");
    RESOLVE(easy_getinfo, "curl_easy_getinfo");
    RESOLVE(slist_append, "curl_slist_append");
    RESOLVE(slist_free_all, "curl_slist_free_all");
    RESOLVE(multi_init, "curl_multi_init");
    RESOLVE(multi_cleanup, "curl_multi_cleanup");
    RESOLVE(multi_add_handle, "curl_multi_add_handle");
    RESOLVE(multi_remove_handle, "curl_multi_remove_handle");
    RESOLVE(multi_perform, "curl_multi_perform");
    RESOLVE(multi_poll, "curl_multi_poll");
    RESOLVE(multi_wakeup, "curl_multi_wakeup");
    RESOLVE(multi_info_read, "curl_multi_info_read");
    CURLcode rc = api.global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) {
        snprintf(load_error, sizeof load_error, "curl_global_init failed: %s", api.easy_strerror(rc));
        return;
    }
    load_status = 0;
}

int shoal_curl_load(char *error, size_t length) {
    pthread_once(&load_once, load);
    if (load_status != 0 && error && length > 0) snprintf(error, length, "%s", load_error);
    return load_status;
}

CURL *shoal_curl_easy_init(void) { return api.easy_init(); }
void shoal_curl_easy_cleanup(CURL *curl) { api.easy_cleanup(curl); }
void shoal_curl_easy_reset(CURL *curl) { api.easy_reset(curl); }
CURLcode shoal_curl_easy_perform(CURL *curl) { return api.easy_perform(curl); }
const char *shoal_curl_easy_strerror(CURLcode code) { return api.easy_strerror(code); }
struct curl_slist *shoal_curl_slist_append(struct curl_slist *list, const char *string) { return api.slist_append(list, string); }
void shoal_curl_slist_free_all(struct curl_slist *list) { api.slist_free_all(list); }

CURLM *shoal_curl_multi_init(void) { return api.multi_init(); }
CURLMcode shoal_curl_multi_cleanup(CURLM *multi) { return api.multi_cleanup(multi); }
CURLMcode shoal_curl_multi_add_handle(CURLM *multi, CURL *curl) { return api.multi_add_handle(multi, curl); }
CURLMcode shoal_curl_multi_remove_handle(CURLM *multi, CURL *curl) { return api.multi_remove_handle(multi, curl); }
CURLMcode shoal_curl_multi_perform(CURLM *multi, int *running) { return api.multi_perform(multi, running); }
CURLMcode shoal_curl_multi_poll(CURLM *multi, struct curl_waitfd *extra, unsigned count, int timeoutMillis, int *ready) {
    return api.multi_poll(multi, extra, count, timeoutMillis, ready);
}
CURLMcode shoal_curl_multi_wakeup(CURLM *multi) { return api.multi_wakeup(multi); }
CURLMsg *shoal_curl_multi_info_read(CURLM *multi, int *left) { return api.multi_info_read(multi, left); }

CURLcode shoal_curl_setopt_long(CURL *curl, CURLoption option, long value) { return api.easy_setopt(curl, option, value); }
CURLcode shoal_curl_setopt_ptr(CURL *curl, CURLoption option, const void *value) { return api.easy_setopt(curl, option, value); }
CURLcode shoal_curl_setopt_off(CURL *curl, CURLoption option, curl_off_t value) { return api.easy_setopt(curl, option, value); }
CURLcode shoal_curl_setopt_callback(CURL *curl, CURLoption option, shoal_curl_data_cb callback) {
    return api.easy_setopt(curl, option, callback);
}
CURLcode shoal_curl_getinfo_long(CURL *curl, CURLINFO info, long *value) { return api.easy_getinfo(curl, info, value); }
CURLcode shoal_curl_setopt_xferinfo(CURL *curl, shoal_curl_xferinfo_cb callback, void *context) {
    CURLcode rc = api.easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, callback);
    if (rc == CURLE_OK) rc = api.easy_setopt(curl, CURLOPT_XFERINFODATA, context);
    if (rc == CURLE_OK) rc = api.easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    return rc;
}

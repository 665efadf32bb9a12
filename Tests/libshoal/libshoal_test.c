/*
 * libshoal's C test program: links libshoal.so and uses the whole ABI against a running
 * cluster (python/tests/test_capi.py builds and runs it).
 *   libshoal_test CONFIG URL EXPECTED_FILE MISSING_URL PREFIX_URL
 * It reads URL whole, in ranges and in a batch, compares each with EXPECTED_FILE, checks the
 * errors of bad calls, and prints "ok" (exit 0) or what failed (exit 1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shoal.h"

static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); } } while (0)

static unsigned char *slurp(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc(n > 0 ? (size_t)n : 1);
    *size = fread(p, 1, (size_t)n, f);
    fclose(f);
    return p;
}

static int count_entry(void *context, const char *key, uint64_t size, const char *etag) {
    (void)key; (void)size;
    int *n = context;
    if (etag[0] == '\0') return 1;
    (*n)++;
    return 0;
}

struct manifest_entry {
    char url[1200];
    char etag[260];
    uint64_t size;
    int count;
};

static int take_entry(void *context, const char *url, uint64_t size, const char *etag) {
    struct manifest_entry *m = context;
    if (m->count++ == 0) {
        snprintf(m->url, sizeof m->url, "%s", url);
        snprintf(m->etag, sizeof m->etag, "%s", etag);
        m->size = size;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s CONFIG URL EXPECTED_FILE MISSING_URL PREFIX_URL [MANIFEST naming URL]\n", argv[0]);
        return 2;
    }
    const char *config = argv[1], *url = argv[2], *missing = argv[4], *prefix = argv[5];
    size_t size = 0;
    unsigned char *expected = slurp(argv[3], &size);
    if (!expected) { fprintf(stderr, "cannot read %s\n", argv[3]); return 2; }

    CHECK(shoal_abi_version() >= SHOAL_ABI_VERSION, "ABI version %d", shoal_abi_version());

    /* Bad calls are errors, never crashes. */
    CHECK(shoal_client_new("colour=red") == NULL && shoal_last_error_code() == SHOAL_E_BAD_REQUEST, "unknown key accepted");
    CHECK(strstr(shoal_last_error(), "colour") != NULL, "error does not name the key: %s", shoal_last_error());
    CHECK(shoal_pread(NULL, NULL, 10, 0) == SHOAL_E_BAD_REQUEST, "pread on NULL");
    CHECK(shoal_open(NULL, url) == NULL, "open on NULL client");
    shoal_client_free(NULL);
    shoal_close(NULL);

    shoal_client *client = shoal_client_new(config);
    CHECK(client != NULL, "client: %s", shoal_last_error());
    if (!client) return 1;

    shoal_stat st;
    CHECK(shoal_stat_url(client, url, &st) == 0, "stat: %s", shoal_last_error());
    CHECK(st.size == size, "stat size %llu, expected %zu", (unsigned long long)st.size, size);
    CHECK(shoal_stat_url(client, missing, &st) == SHOAL_E_NOT_FOUND, "stat of a missing object: %d", shoal_last_error_code());
    CHECK(strstr(shoal_last_error(), "not found") != NULL, "missing: %s", shoal_last_error());
    CHECK(shoal_stat_url(client, "not-a-url", &st) == SHOAL_E_BAD_REQUEST, "bad URL");

    /* By URL alone: the version comes with the bytes. */
    unsigned char *whole = malloc(size + 10);
    shoal_stat by_name;
    int64_t got_by_name = shoal_read_object(client, url, whole, size + 10, &by_name);
    CHECK(got_by_name == (int64_t)size && memcmp(whole, expected, size) == 0, "read_object: %lld %s", (long long)got_by_name, shoal_last_error());
    CHECK(by_name.size == size && by_name.etag[0] != '\0', "read_object's version");
    CHECK(shoal_read_object(client, missing, whole, 10, NULL) == SHOAL_E_NOT_FOUND, "read_object of a missing object");
    free(whole);

    int listed = 0;
    int64_t n = shoal_list(client, prefix, count_entry, &listed);
    CHECK(n >= 1 && n == listed, "list gave %lld (%d counted): %s", (long long)n, listed, shoal_last_error());

    if (argc == 7) {
        /* A dataset from a manifest: each object opened at the version it names, no round trip. */
        struct manifest_entry m;
        memset(&m, 0, sizeof m);
        CHECK(shoal_manifest_list(argv[6], take_entry, &m) == 1 && m.count == 1, "manifest_list: %s", shoal_last_error());
        CHECK(strcmp(m.url, url) == 0 && m.size == size, "manifest entry %s %llu", m.url, (unsigned long long)m.size);
        shoal_file *mf = shoal_open_version(client, m.url, m.size, m.etag);
        CHECK(mf != NULL, "open_version from the manifest: %s", shoal_last_error());
        if (mf) {
            unsigned char *got = malloc(size);
            CHECK(shoal_pread(mf, got, size, 0) == (int64_t)size && memcmp(got, expected, size) == 0, "read by the manifest: %s", shoal_last_error());
            free(got);
            shoal_close(mf);
        }
        CHECK(shoal_manifest_list("/nonexistent/shoal.manifest", take_entry, &m) == SHOAL_E_NOT_FOUND, "a missing manifest");
        CHECK(shoal_manifest_list(argv[3], take_entry, &m) == SHOAL_E_BAD_REQUEST, "a file that is not a manifest");
        CHECK(strstr(shoal_last_error(), "not a Shoal manifest") != NULL, "error: %s", shoal_last_error());
    }

    shoal_file *file = shoal_open(client, url);
    CHECK(file != NULL, "open: %s", shoal_last_error());
    if (!file) return 1;
    CHECK(shoal_file_size(file) == size, "file size");

    unsigned char *buffer = malloc(size + 100);
    int64_t got = shoal_pread(file, buffer, size + 100, 0);
    CHECK(got == (int64_t)size && memcmp(buffer, expected, size) == 0, "whole read: %lld", (long long)got);
    for (uint64_t off = 0; off < size; off += size / 7 + 1) {
        size_t len = size - off < 300000 ? size - off : 300000;
        memset(buffer, 0, len);
        got = shoal_pread(file, buffer, len, off);
        CHECK(got == (int64_t)len && memcmp(buffer, expected + off, len) == 0, "range at %llu", (unsigned long long)off);
    }
    CHECK(shoal_pread(file, buffer, 10, size) == 0, "read past the end");

    /* The same file opened at its known version: no round trip, same bytes. */
    shoal_file *known = shoal_open_version(client, url, shoal_file_size(file), shoal_file_etag(file));
    CHECK(known != NULL, "open_version: %s", shoal_last_error());

    shoal_read_op ops[4];
    unsigned char *parts[4];
    for (int i = 0; i < 4; i++) {
        parts[i] = malloc(4096);
        ops[i].file = i % 2 ? known : file;
        ops[i].offset = (uint64_t)i * (size / 4);
        ops[i].buffer = parts[i];
        ops[i].length = 4096;
        ops[i].result = -99;
    }
    CHECK(shoal_pread_batch(ops, 4) == 0, "batch: %s", shoal_last_error());
    for (int i = 0; i < 4; i++) {
        size_t want = size - ops[i].offset < 4096 ? size - ops[i].offset : 4096;
        CHECK(ops[i].result == (int64_t)want && memcmp(parts[i], expected + ops[i].offset, want) == 0, "batch op %d: %lld", i, (long long)ops[i].result);
    }
    ops[1].file = NULL;
    CHECK(shoal_pread_batch(ops, 4) == 1 && ops[1].result == SHOAL_E_BAD_REQUEST && ops[0].result == 4096, "batch with a bad op");

    /* Open, read and close in one call, at the known version. */
    memset(buffer, 0, 5000);
    got = shoal_pread_version(client, url, shoal_file_size(file), shoal_file_etag(file), buffer, 5000, size / 3);
    CHECK(got == (int64_t)(size - size / 3 < 5000 ? size - size / 3 : 5000) && memcmp(buffer, expected + size / 3, (size_t)got) == 0,
          "pread_version: %lld %s", (long long)got, shoal_last_error());
    CHECK(shoal_pread_version(client, url, 10, "\"not-the-etag\"", buffer, 10, 0) == SHOAL_E_CHANGED, "pread_version of a made-up version: %s",
          shoal_last_error());
    CHECK(shoal_pread_version(client, url, shoal_file_size(file), NULL, buffer, 10, 0) == SHOAL_E_BAD_REQUEST, "pread_version without an etag");

    shoal_file *ghost = shoal_open_version(client, url, 10, "\"not-the-etag\"");
    CHECK(ghost != NULL, "open_version of a made-up version opens (the read finds out)");
    if (ghost) {
        CHECK(shoal_pread(ghost, buffer, 10, 0) == SHOAL_E_CHANGED, "a read of a made-up version: %d %s", shoal_last_error_code(), shoal_last_error());
        shoal_close(ghost);
    }

    for (int i = 0; i < 4; i++) free(parts[i]);
    shoal_close(known);
    shoal_close(file);
    /* A file left open past its client's free fails cleanly (it never makes a new client). */
    shoal_file *orphan = shoal_open(client, url);
    CHECK(orphan != NULL, "open before free: %s", shoal_last_error());
    shoal_client_free(client);
    if (orphan) {
        CHECK(shoal_pread(orphan, buffer, 10, 0) == SHOAL_E_BAD_REQUEST, "read after the client was freed: %d", shoal_last_error_code());
        CHECK(strstr(shoal_last_error(), "freed") != NULL, "%s", shoal_last_error());
        shoal_close(orphan);
    }
    free(buffer);
    free(expected);
    if (failures) return 1;
    printf("ok\n");
    return 0;
}

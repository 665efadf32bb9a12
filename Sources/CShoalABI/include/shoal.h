/*
 * libshoal: read training data through a Shoal cluster from C (and from anything that calls C:
 * the Python package `shoal` is built on this library).
 *
 * One shared library, libshoal.so, with the Swift runtime linked in; it needs libc, libssl and
 * libcrypto, and loads libcurl only when a client uses etcd. It starts no threads but a
 * client's etcd watch (an OS thread, when etcd is used).
 *
 * Conventions
 *  - Calls that can fail return a negative SHOAL_E_* code (or NULL) and set the calling
 *    thread's last error, which shoal_last_error() returns; success is 0 or a count.
 *  - Nothing here aborts the process: a bad argument is an error code, never a crash.
 *  - A client and its files may be used from many threads at once.
 *  - fork: a client used in a parent may be used in a forked child (a DataLoader worker). The
 *    child gets its own connections on its first call; it never touches the parent's sockets.
 *  - URLs are s3://bucket/key, or s3://store@bucket/key for a store other than "default".
 */
#ifndef SHOAL_H
#define SHOAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes. shoal_abi_version() says which one the library has; a program
 * built against a higher one must not use the library. */
#define SHOAL_ABI_VERSION 2 /* 2: shoal_pread_version */
int shoal_abi_version(void);

/* Error codes: the negated status codes of Shoal's wire protocol (docs/PROTOCOL.md). */
#define SHOAL_E_BAD_REQUEST        (-1)  /* a bad argument, URL or configuration */
#define SHOAL_E_UNAUTHENTICATED    (-2)  /* the workers refuse the cluster secret */
#define SHOAL_E_UNSUPPORTED        (-3)  /* a worker speaks another protocol version */
#define SHOAL_E_NOT_FOUND          (-4)  /* no such object, bucket or store */
#define SHOAL_E_ACCESS_DENIED      (-5)  /* the store refuses the worker's credentials */
#define SHOAL_E_CHANGED            (-6)  /* the object changed since it was opened */
#define SHOAL_E_STORE_UNAVAILABLE  (-7)  /* the object store cannot be reached */
#define SHOAL_E_INTERNAL           (-8)
#define SHOAL_E_TOO_LARGE          (-9)
#define SHOAL_E_UNKNOWN_STORE      (-10) /* the workers have no store of that name */
#define SHOAL_E_SHUTTING_DOWN      (-11)
#define SHOAL_E_CHECKSUM           (-12) /* bytes arrived damaged (they were not returned) */
#define SHOAL_E_TIMEOUT            (-13)
#define SHOAL_E_UNREACHABLE        (-14) /* no worker that holds the data can be reached */
#define SHOAL_E_TAMPERED           (-15) /* a frame failed its authentication tag */
#define SHOAL_E_NOT_OWNER          (-16)
#define SHOAL_E_NOT_CACHED         (-17) /* a warm's block was fetched but could not be cached */

/* The text of the calling thread's last error ("" when none). Valid until this thread's next
 * call into libshoal. */
const char *shoal_last_error(void);
/* The calling thread's last error code (0 when none). */
int shoal_last_error_code(void);

typedef struct shoal_client shoal_client;
typedef struct shoal_file shoal_file;

/* A client made from `config`: "key=value" pairs separated by newlines or ';'. A key not given
 * falls back to its environment variable; the membership variables (SHOAL_ETCD,
 * SHOAL_MEMBERS_FILE, SHOAL_WORKERS) only when no membership key is given.
 *   workers                worker addresses, host:port, comma-separated  (SHOAL_WORKERS)
 *   members_file           the cluster's members file                    (SHOAL_MEMBERS_FILE)
 *   etcd                   etcd endpoints, comma-separated               (SHOAL_ETCD)
 *   etcd_prefix            the cluster's key prefix in etcd              (SHOAL_ETCD_PREFIX)
 *   etcd_credentials_file  sets SHOAL_ETCD_USER and SHOAL_ETCD_PASSWORD   (SHOAL_ETCD_CREDENTIALS_FILE)
 *   secret_file            the cluster secret                            (SHOAL_SECRET_FILE)
 *   tls_ca_file            TLS to the workers, checked against this CA   (SHOAL_TLS_CA_FILE)
 *   view_discovery         true (default): learn the cluster from the workers given
 *   connections            connections per worker, 1-64 (default 8)
 *   timeout_ms             a worker silent this long is routed around (default 10000)
 *   connect_timeout_ms     (default 1000)
 *   hedge_after_ms         send a read unanswered this long to the block's other owner too
 *   client_name            shown in the workers' logs
 *   rdma                   an RDMA device's name, or "auto": READ data is RDMA-written into the
 *                          caller's buffers by workers that serve RDMA (default off)  (SHOAL_RDMA)
 *   rdma_gid_address       the IPv4 address whose RoCEv2 GID to use   (SHOAL_RDMA_GID_ADDRESS)
 * NULL (or "") takes everything from the environment. Returns NULL on error. */
shoal_client *shoal_client_new(const char *config);
/* Frees the client. Its files must be closed first. NULL is allowed. */
void shoal_client_free(shoal_client *client);

/* An object's current version. */
typedef struct shoal_stat {
    uint64_t size;
    uint32_t block_size;
    int32_t stale;     /* 1: the store was unreachable and this is the last version known */
    char etag[260];    /* NUL-terminated */
} shoal_stat;

int shoal_stat_url(shoal_client *client, const char *url, shoal_stat *out);

/* Lists the objects under a prefix URL (s3://bucket/prefix), calling `each` once per object
 * in key order; a non-zero return from `each` stops the listing. Returns the number of objects
 * given to `each`, or a negative error code. */
typedef int (*shoal_list_fn)(void *context, const char *key, uint64_t size, const char *etag);
int64_t shoal_list(shoal_client *client, const char *prefix_url, shoal_list_fn each, void *context);

/* Reads a dataset manifest (written by `shoal warm --manifest FILE`; docs/MANIFEST.md), calling
 * `each` once per object with its URL (s3://...), size and etag, in the file's order; a non-zero
 * return from `each` stops. Open each with shoal_open_version: no round trip, and every read is
 * of that version. Returns the number of objects given to `each`, or a negative error code (a
 * file that is not a manifest: SHOAL_E_BAD_REQUEST, the message naming the line; a missing one:
 * SHOAL_E_NOT_FOUND). Needs no client. */
int64_t shoal_manifest_list(const char *path, shoal_list_fn each, void *context);

/* Reads an object from its start into `buffer` (up to `length` bytes) knowing only its URL: the
 * worker holding its first block resolves the version and sends it with the bytes, so an object
 * of up to one block (4 MiB by default) costs one round trip, with no stat first. Fills `out`
 * (may be NULL) with the version read. Returns the count (short only at the object's end) or a
 * negative error code. */
int64_t shoal_read_object(shoal_client *client, const char *url, void *buffer, size_t length, shoal_stat *out);

/* Opens an object at its current version (one round trip). NULL on error. */
shoal_file *shoal_open(shoal_client *client, const char *url);
/* Opens an object at a version the caller knows (from shoal_list or a manifest): no round trip.
 * A read finds out if the store has moved on (SHOAL_E_CHANGED). */
shoal_file *shoal_open_version(shoal_client *client, const char *url, uint64_t size, const char *etag);
uint64_t shoal_file_size(const shoal_file *file);
/* The version's etag; valid while the file is open. */
const char *shoal_file_etag(const shoal_file *file);
void shoal_close(shoal_file *file);

/* Reads up to `length` bytes at `offset` into `buffer` (the caller's memory; the bytes land
 * there with no copy). Returns the count (short only at the object's end, 0 past it) or a
 * negative error code. Every byte is checked against its block's CRC32C. */
int64_t shoal_pread(shoal_file *file, void *buffer, size_t length, uint64_t offset);

/* shoal_open_version, shoal_pread and shoal_close in one call: reads up to `length` bytes at
 * `offset` of the object at the version the caller knows (from shoal_list or a manifest), with
 * no round trip but the read's own. For many small objects read one by one (from a language
 * where each call into C costs, Python's ctypes among them). Returns as shoal_pread does. */
int64_t shoal_pread_version(shoal_client *client, const char *url, uint64_t size, const char *etag, void *buffer, size_t length,
                            uint64_t offset);

/* One range of a batched read. `result` is set: the count, or a negative error code. */
typedef struct shoal_read_op {
    shoal_file *file;
    uint64_t offset;
    void *buffer;
    size_t length;
    int64_t result;
} shoal_read_op;

/* Reads many ranges of many files at once (all of one client): every block goes to its owner
 * in parallel and each worker's share is pipelined, so a batch of small objects costs about one
 * round trip. Returns the number of ops that failed (each says why in its `result`), or a
 * negative error code when none could be tried. */
int64_t shoal_pread_batch(shoal_read_op *ops, size_t count);

#ifdef __cplusplus
}
#endif

#endif

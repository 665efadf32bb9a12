#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "shoal_verbs.h"

// One pointer per libibverbs function used, resolved once.
static struct {
    struct ibv_device **(*get_device_list)(int *);
    void (*free_device_list)(struct ibv_device **);
    const char *(*get_device_name)(struct ibv_device *);
    struct ibv_context *(*open_device)(struct ibv_device *);
    int (*close_device)(struct ibv_context *);
    int (*query_port)(struct ibv_context *, uint8_t, struct _compat_ibv_port_attr *);
    int (*query_gid_ex)(struct ibv_context *, uint32_t, uint32_t, struct ibv_gid_entry *, uint32_t, size_t);
    struct ibv_pd *(*alloc_pd)(struct ibv_context *);
    int (*dealloc_pd)(struct ibv_pd *);
    struct ibv_mr *(*reg_mr)(struct ibv_pd *, void *, size_t, int);
    int (*dereg_mr)(struct ibv_mr *);
    struct ibv_cq *(*create_cq)(struct ibv_context *, int, void *, struct ibv_comp_channel *, int);
    int (*destroy_cq)(struct ibv_cq *);
    struct ibv_qp *(*create_qp)(struct ibv_pd *, struct ibv_qp_init_attr *);
    int (*destroy_qp)(struct ibv_qp *);
    int (*modify_qp)(struct ibv_qp *, struct ibv_qp_attr *, int);
    const char *(*wc_status_str)(enum ibv_wc_status);
} api;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[256];
static int load_status = -1;

#define RESOLVE(field, name) \
    do { \
        *(void **)(&api.field) = dlsym(handle, name); \
        if (!api.field) { snprintf(load_error, sizeof load_error, "libibverbs has no %s", name); return; } \
    } while (0)

static void load(void) {
    void *handle = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!handle) {
        const char *why = dlerror();
        snprintf(load_error, sizeof load_error, "libibverbs could not be loaded (install rdma-core's libibverbs1): %s",
                 why ? why : "not found");
        return;
    }
    RESOLVE(get_device_list, "ibv_get_device_list");
    RESOLVE(free_device_list, "ibv_free_device_list");
    RESOLVE(get_device_name, "ibv_get_device_name");
    RESOLVE(open_device, "ibv_open_device");
    RESOLVE(close_device, "ibv_close_device");
    RESOLVE(query_port, "ibv_query_port");
    RESOLVE(query_gid_ex, "_ibv_query_gid_ex");
    RESOLVE(alloc_pd, "ibv_alloc_pd");
    RESOLVE(dealloc_pd, "ibv_dealloc_pd");
    RESOLVE(reg_mr, "ibv_reg_mr");
    RESOLVE(dereg_mr, "ibv_dereg_mr");
    RESOLVE(create_cq, "ibv_create_cq");
    RESOLVE(destroy_cq, "ibv_destroy_cq");
    RESOLVE(create_qp, "ibv_create_qp");
    RESOLVE(destroy_qp, "ibv_destroy_qp");
    RESOLVE(modify_qp, "ibv_modify_qp");
    RESOLVE(wc_status_str, "ibv_wc_status_str");
    load_status = 0;
}

int shoal_verbs_load(char *error, size_t length) {
    pthread_once(&load_once, load);
    if (load_status != 0 && error && length > 0) snprintf(error, length, "%s", load_error);
    return load_status;
}

struct ibv_device **shoal_ibv_get_device_list(int *count) { return api.get_device_list(count); }
void shoal_ibv_free_device_list(struct ibv_device **list) { api.free_device_list(list); }
const char *shoal_ibv_get_device_name(struct ibv_device *device) { return api.get_device_name(device); }
struct ibv_context *shoal_ibv_open_device(struct ibv_device *device) { return api.open_device(device); }
int shoal_ibv_close_device(struct ibv_context *context) { return api.close_device(context); }
int shoal_ibv_query_port(struct ibv_context *context, uint8_t port, struct ibv_port_attr *attr) {
    // As the header's inline does: the provider's own query where it has one, else the exported
    // symbol, which fills the compatible (leading) part of the attributes.
    struct verbs_context *vctx = verbs_get_ctx_op(context, query_port);
    if (vctx) return vctx->query_port(context, port, attr, sizeof *attr);
    memset(attr, 0, sizeof *attr);
    return api.query_port(context, port, (struct _compat_ibv_port_attr *)attr);
}
int shoal_ibv_query_gid_ex(struct ibv_context *context, uint32_t port, uint32_t index, struct ibv_gid_entry *entry) {
    return api.query_gid_ex(context, port, index, entry, 0, sizeof *entry);
}
struct ibv_pd *shoal_ibv_alloc_pd(struct ibv_context *context) { return api.alloc_pd(context); }
int shoal_ibv_dealloc_pd(struct ibv_pd *pd) { return api.dealloc_pd(pd); }
struct ibv_mr *shoal_ibv_reg_mr(struct ibv_pd *pd, void *address, size_t length, int access) { return api.reg_mr(pd, address, length, access); }
int shoal_ibv_dereg_mr(struct ibv_mr *mr) { return api.dereg_mr(mr); }
struct ibv_cq *shoal_ibv_create_cq(struct ibv_context *context, int entries) { return api.create_cq(context, entries, NULL, NULL, 0); }
int shoal_ibv_destroy_cq(struct ibv_cq *cq) { return api.destroy_cq(cq); }
struct ibv_qp *shoal_ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr) { return api.create_qp(pd, attr); }
int shoal_ibv_destroy_qp(struct ibv_qp *qp) { return api.destroy_qp(qp); }
int shoal_ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask) { return api.modify_qp(qp, attr, mask); }
const char *shoal_ibv_wc_status_str(enum ibv_wc_status status) { return api.wc_status_str(status); }
int shoal_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad) { return ibv_post_send(qp, wr, bad); }
int shoal_ibv_poll_cq(struct ibv_cq *cq, int entries, struct ibv_wc *wc) { return ibv_poll_cq(cq, entries, wc); }

#ifndef SHOAL_VERBS_H
#define SHOAL_VERBS_H

// libibverbs loaded at run time (dlopen of libibverbs.so.1 on first use), so that a program that
// never uses RDMA (a client on a host without rdma-core) loads without it. The header gives the
// types; every function libibverbs exports is called through one of these wrappers. What the
// header itself implements inline through a context's ops (posting, polling) needs no wrapper.
#include <infiniband/verbs.h>
#include <stddef.h>

// 0 once libibverbs is loaded; -1 with the reason in `error` where it is not there.
int shoal_verbs_load(char *error, size_t length);

struct ibv_device **shoal_ibv_get_device_list(int *count);
void shoal_ibv_free_device_list(struct ibv_device **list);
const char *shoal_ibv_get_device_name(struct ibv_device *device);
struct ibv_context *shoal_ibv_open_device(struct ibv_device *device);
int shoal_ibv_close_device(struct ibv_context *context);
int shoal_ibv_query_port(struct ibv_context *context, uint8_t port, struct ibv_port_attr *attr);
int shoal_ibv_query_gid_ex(struct ibv_context *context, uint32_t port, uint32_t index, struct ibv_gid_entry *entry);
struct ibv_pd *shoal_ibv_alloc_pd(struct ibv_context *context);
int shoal_ibv_dealloc_pd(struct ibv_pd *pd);
struct ibv_mr *shoal_ibv_reg_mr(struct ibv_pd *pd, void *address, size_t length, int access);
int shoal_ibv_dereg_mr(struct ibv_mr *mr);
struct ibv_cq *shoal_ibv_create_cq(struct ibv_context *context, int entries);
int shoal_ibv_destroy_cq(struct ibv_cq *cq);
struct ibv_qp *shoal_ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *attr);
int shoal_ibv_destroy_qp(struct ibv_qp *qp);
int shoal_ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask);
const char *shoal_ibv_wc_status_str(enum ibv_wc_status status);
// The header's inline post and poll (through the context's ops).
int shoal_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
int shoal_ibv_poll_cq(struct ibv_cq *cq, int entries, struct ibv_wc *wc);

#endif

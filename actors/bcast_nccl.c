/* The layer broadcast's NCCL transport (bcast_nccl.h). */
#include "actors/bcast_nccl.h"

#include <stdlib.h>

#include "kernels/kernels.h"
#include "kernels/kernels_nccl.h"

struct dsla_bcast_nccl {
    dsla_bcast_transport_t transport;
    int device;
    size_t staging;
};

const dsla_bcast_transport_t *dsla_bcast_nccl_transport(const dsla_bcast_nccl_t *n) {
    return &n->transport;
}

void dsla_bcast_nccl_destroy(dsla_bcast_nccl_t **n) {
    if (!n || !*n) return;
    free(*n);
    *n = NULL;
}

#ifdef DSLA_HAVE_CUDA

static dsla_status_t unique_id(void *user, uint8_t *id, uint32_t *len) {
    (void)user;
    DSLA_TRY(dsla_nccl_unique_id(id));
    *len = DSLA_NCCL_ID_BYTES;
    return DSLA_OK;
}

static dsla_status_t comm_create(void *user, const uint8_t *id, uint32_t len, uint32_t rank,
                                 uint32_t nranks, uint32_t timeout_ms, void **comm) {
    const dsla_bcast_nccl_t *n = user;
    if (len != DSLA_NCCL_ID_BYTES)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "nccl: a unique id of %u bytes, not %d", len,
                          DSLA_NCCL_ID_BYTES);
    dsla_nccl_comm_t *c = NULL;
    DSLA_TRY(
        dsla_nccl_comm_create(&c, id, (int)rank, (int)nranks, n->device, n->staging, timeout_ms));
    *comm = c;
    return DSLA_OK;
}

static dsla_status_t broadcast(void *user, void *comm, void *buf, size_t len, uint32_t timeout_ms) {
    (void)user;
    return dsla_nccl_broadcast(comm, buf, len, timeout_ms);
}

static void comm_destroy(void *user, void *comm) {
    (void)user;
    dsla_nccl_comm_t *c = comm;
    dsla_nccl_comm_destroy(&c);
}

dsla_status_t dsla_bcast_nccl_create(dsla_bcast_nccl_t **out, int device, size_t staging) {
    *out = NULL;
    const int devices = dsla_cuda_device_count();
    if (device < 0 || device >= devices)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "nccl: device %d, this machine has %d", device,
                          devices);
    if (staging == 0) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "nccl: staging of 0 bytes");
    DSLA_TRY(dsla_nccl_load(NULL));
    dsla_bcast_nccl_t *n = calloc(1, sizeof *n);
    if (!n) return dsla_error_oom("nccl transport");
    n->device = device;
    n->staging = staging;
    n->transport = (dsla_bcast_transport_t){unique_id, comm_create, broadcast, comm_destroy, n};
    *out = n;
    return DSLA_OK;
}

#else

dsla_status_t dsla_bcast_nccl_create(dsla_bcast_nccl_t **out, int device, size_t staging) {
    (void)staging;
    *out = NULL;
    return dsla_error(DSLA_ERR_UNSUPPORTED, "nccl: device %d: built without CUDA", device);
}

#endif

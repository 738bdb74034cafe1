/* NCCL broadcast of host bytes between GPUs (kernels_nccl.h): libnccl.so.2 loaded at run time,
 * non-blocking communicators polled against a deadline, slices staged through pinned host memory
 * and one device buffer. */
#include "kernels/kernels_nccl.h"

#ifdef DSLA_HAVE_NCCL_HEADERS

#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "runtime/core/clock.h"

_Static_assert(sizeof(ncclUniqueId) == DSLA_NCCL_ID_BYTES, "NCCL_UNIQUE_ID_BYTES changed");

/* How often a wait looks at the communicator and the stream: short against a slice's transfer
 * (milliseconds), long enough not to spin a core. */
#define NCCL_POLL_NS 20000L

typedef struct {
    ncclResult_t (*get_version)(int *);
    ncclResult_t (*get_unique_id)(ncclUniqueId *);
    ncclResult_t (*init_rank_config)(ncclComm_t *, int, ncclUniqueId, int, ncclConfig_t *);
    ncclResult_t (*get_async_error)(ncclComm_t, ncclResult_t *);
    ncclResult_t (*abort)(ncclComm_t);
    ncclResult_t (*broadcast)(const void *, void *, size_t, ncclDataType_t, int, ncclComm_t,
                              cudaStream_t);
    const char *(*error_string)(ncclResult_t);
} nccl_api_t;

static nccl_api_t api;
static dsla_status_t load_status = DSLA_OK;
static char load_error[512];
static int nccl_version;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

struct dsla_nccl_comm {
    ncclComm_t comm;
    cudaStream_t stream;
    void *dev; /* the device staging buffer */
    void *pin; /* its pinned host twin */
    size_t staging;
    int rank, device;
    bool aborted;
};

static void load(void) {
    /* the library reads it when a communicator is made: set it before any */
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    void *lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
#ifdef DSLA_NCCL_LIBRARY
    if (!lib) lib = dlopen(DSLA_NCCL_LIBRARY, RTLD_NOW | RTLD_LOCAL);
#endif
    if (!lib) {
        snprintf(load_error, sizeof load_error,
                 "nccl: cannot open libnccl.so.2 (%s); put NCCL 2's lib directory on "
                 "LD_LIBRARY_PATH",
                 dlerror());
        load_status = DSLA_ERR_UNSUPPORTED;
        return;
    }
    static const char *const names[] = {
        "ncclGetVersion", "ncclGetUniqueId", "ncclCommInitRankConfig", "ncclCommGetAsyncError",
        "ncclCommAbort",  "ncclBroadcast",   "ncclGetErrorString"};
    void (**slots[])(void) = {(void (**)(void)) & api.get_version,
                              (void (**)(void)) & api.get_unique_id,
                              (void (**)(void)) & api.init_rank_config,
                              (void (**)(void)) & api.get_async_error,
                              (void (**)(void)) & api.abort,
                              (void (**)(void)) & api.broadcast,
                              (void (**)(void)) & api.error_string};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        /* POSIX guarantees dlsym's result converts to a function pointer; copying the bytes says
         * so without a cast ISO C warns on */
        void *p = dlsym(lib, names[i]);
        if (!p) {
            snprintf(load_error, sizeof load_error,
                     "nccl: libnccl.so.2 lacks %s (NCCL >= 2.14 "
                     "needed)",
                     names[i]);
            load_status = DSLA_ERR_UNSUPPORTED;
            return;
        }
        memcpy(slots[i], &p, sizeof p);
    }
    if (api.get_version(&nccl_version) != ncclSuccess || nccl_version < NCCL_VERSION(2, 14, 0)) {
        snprintf(load_error, sizeof load_error, "nccl: version %d, needs 2.14 or later",
                 nccl_version);
        load_status = DSLA_ERR_UNSUPPORTED;
    }
}

dsla_status_t dsla_nccl_load(int *version) {
    pthread_once(&load_once, load);
    if (load_status != DSLA_OK) return dsla_error(load_status, "%s", load_error);
    if (version) *version = nccl_version;
    return DSLA_OK;
}

static dsla_status_t nccl_fail(const char *call, ncclResult_t r) {
    return dsla_error(DSLA_ERR_INTERNAL, "nccl: %s: %s", call, api.error_string(r));
}

static dsla_status_t cuda_fail(const char *call, cudaError_t e) {
    return dsla_error(DSLA_ERR_INTERNAL, "nccl: %s: %s", call, cudaGetErrorString(e));
}

dsla_status_t dsla_nccl_unique_id(uint8_t id[DSLA_NCCL_ID_BYTES]) {
    DSLA_TRY(dsla_nccl_load(NULL));
    ncclUniqueId u;
    ncclResult_t r = api.get_unique_id(&u);
    if (r != ncclSuccess) return nccl_fail("ncclGetUniqueId", r);
    memcpy(id, u.internal, DSLA_NCCL_ID_BYTES);
    return DSLA_OK;
}

static void nap(void) {
    struct timespec ts = {0, NCCL_POLL_NS};
    nanosleep(&ts, NULL);
}

/* Waits until the communicator's pending call (joining, or enqueueing a collective) is done; with
 * stream set, also until the stream's work finished. Aborts on failure or at the deadline. */
static dsla_status_t comm_wait(dsla_nccl_comm_t *c, bool stream, uint32_t timeout_ms,
                               const char *what) {
    const uint64_t deadline = dsla_clock_ms() + timeout_ms;
    for (;;) {
        ncclResult_t r = ncclSuccess;
        ncclResult_t q = api.get_async_error(c->comm, &r);
        if (q != ncclSuccess) r = q;
        bool pending = r == ncclInProgress;
        if (r != ncclSuccess && r != ncclInProgress) {
            api.abort(c->comm);
            c->aborted = true;
            return nccl_fail(what, r);
        }
        if (!pending && stream) {
            cudaError_t e = cudaStreamQuery(c->stream);
            if (e == cudaErrorNotReady)
                pending = true;
            else if (e != cudaSuccess) {
                api.abort(c->comm);
                c->aborted = true;
                return cuda_fail(what, e);
            }
        }
        if (!pending) return DSLA_OK;
        if (dsla_clock_ms() >= deadline) {
            api.abort(c->comm);
            c->aborted = true;
            return dsla_error(DSLA_ERR_DEADLINE_EXCEEDED,
                              "nccl: %s: rank %d waited %u ms for the others", what, c->rank,
                              timeout_ms);
        }
        nap();
    }
}

dsla_status_t dsla_nccl_comm_create(dsla_nccl_comm_t **out, const uint8_t id[DSLA_NCCL_ID_BYTES],
                                    int rank, int nranks, int device, size_t staging,
                                    uint32_t timeout_ms) {
    *out = NULL;
    DSLA_TRY(dsla_nccl_load(NULL));
    if (nranks < 1 || rank < 0 || rank >= nranks || staging == 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "nccl: rank %d of nranks %d, staging %zu bytes (at least 1)", rank,
                          nranks, staging);
    dsla_nccl_comm_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("nccl communicator");
    c->rank = rank;
    c->device = device;
    c->staging = staging;
    c->aborted = true; /* nothing to abort until the communicator exists */
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e == cudaSuccess) e = cudaMalloc(&c->dev, staging);
    if (e == cudaSuccess) e = cudaMallocHost(&c->pin, staging);
    if (e != cudaSuccess) {
        dsla_status_t st = cuda_fail("staging", e);
        dsla_nccl_comm_destroy(&c);
        return st;
    }
    ncclUniqueId u;
    memcpy(u.internal, id, DSLA_NCCL_ID_BYTES);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = api.init_rank_config(&c->comm, nranks, u, rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
        dsla_status_t st = nccl_fail("ncclCommInitRankConfig", r);
        dsla_nccl_comm_destroy(&c);
        return st;
    }
    c->aborted = false;
    dsla_status_t st = comm_wait(c, false, timeout_ms, "ncclCommInitRankConfig");
    if (st != DSLA_OK) {
        dsla_nccl_comm_destroy(&c);
        return st;
    }
    *out = c;
    return DSLA_OK;
}

/* One slice of n bytes: host (NULL: none) copied into the staging buffer on rank 0, broadcast in
 * place, copied out to host on the others. */
static dsla_status_t broadcast_slice(dsla_nccl_comm_t *c, char *host, size_t n,
                                     uint32_t timeout_ms) {
    if (c->aborted) return dsla_error(DSLA_ERR_UNAVAILABLE, "nccl: the communicator was aborted");
    cudaError_t e = cudaSetDevice(c->device);
    if (host && c->rank == 0) {
        memcpy(c->pin, host, n);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(c->dev, c->pin, n, cudaMemcpyHostToDevice, c->stream);
    }
    if (e != cudaSuccess) return cuda_fail("staging a slice", e);
    ncclResult_t r = api.broadcast(c->dev, c->dev, n, ncclUint8, 0, c->comm, c->stream);
    if (r != ncclSuccess && r != ncclInProgress) {
        api.abort(c->comm);
        c->aborted = true;
        return nccl_fail("ncclBroadcast", r);
    }
    DSLA_TRY(comm_wait(c, false, timeout_ms, "ncclBroadcast"));
    if (host && c->rank != 0) {
        e = cudaMemcpyAsync(c->pin, c->dev, n, cudaMemcpyDeviceToHost, c->stream);
        if (e != cudaSuccess) return cuda_fail("cudaMemcpyAsync", e);
    }
    DSLA_TRY(comm_wait(c, true, timeout_ms, "ncclBroadcast"));
    if (host && c->rank != 0) memcpy(host, c->pin, n);
    return DSLA_OK;
}

dsla_status_t dsla_nccl_broadcast(dsla_nccl_comm_t *c, void *host, size_t len,
                                  uint32_t timeout_ms) {
    for (size_t off = 0; off < len;) {
        const size_t n = len - off < c->staging ? len - off : c->staging;
        DSLA_TRY(broadcast_slice(c, (char *)host + off, n, timeout_ms));
        off += n;
    }
    return DSLA_OK;
}

dsla_status_t dsla_nccl_broadcast_staging(dsla_nccl_comm_t *c, size_t len, uint32_t timeout_ms) {
    if (len == 0 || len > c->staging)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "nccl: %zu bytes of a staging buffer of %zu (at least 1)", len,
                          c->staging);
    return broadcast_slice(c, NULL, len, timeout_ms);
}

void dsla_nccl_comm_destroy(dsla_nccl_comm_t **cp) {
    dsla_nccl_comm_t *c = cp ? *cp : NULL;
    if (!c) return;
    if (c->comm && !c->aborted) api.abort(c->comm);
    if (c->stream) cudaStreamDestroy(c->stream);
    if (c->dev) cudaFree(c->dev);
    if (c->pin) cudaFreeHost(c->pin);
    free(c);
    *cp = NULL;
}

#else /* built without nccl.h: every call says so */

static dsla_status_t absent(void) {
    return dsla_error(DSLA_ERR_UNSUPPORTED,
                      "nccl: built without nccl.h (install NCCL 2's headers and rebuild)");
}

dsla_status_t dsla_nccl_load(int *version) {
    (void)version;
    return absent();
}

dsla_status_t dsla_nccl_unique_id(uint8_t id[DSLA_NCCL_ID_BYTES]) {
    (void)id;
    return absent();
}

dsla_status_t dsla_nccl_comm_create(dsla_nccl_comm_t **out, const uint8_t id[DSLA_NCCL_ID_BYTES],
                                    int rank, int nranks, int device, size_t staging,
                                    uint32_t timeout_ms) {
    (void)id, (void)rank, (void)nranks, (void)device, (void)staging, (void)timeout_ms;
    *out = NULL;
    return absent();
}

dsla_status_t dsla_nccl_broadcast(dsla_nccl_comm_t *c, void *host, size_t len,
                                  uint32_t timeout_ms) {
    (void)c, (void)host, (void)len, (void)timeout_ms;
    return absent();
}

dsla_status_t dsla_nccl_broadcast_staging(dsla_nccl_comm_t *c, size_t len, uint32_t timeout_ms) {
    (void)c, (void)len, (void)timeout_ms;
    return absent();
}

void dsla_nccl_comm_destroy(dsla_nccl_comm_t **c) {
    if (c) *c = NULL;
}

#endif

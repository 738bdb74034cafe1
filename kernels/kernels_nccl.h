/* NCCL broadcast of host bytes between GPUs (DESIGN.md section 7's layer broadcast;
 * docs/broadcast.md): a communicator of n ranks, one per GPU, and a broadcast from rank 0 that
 * stages host bytes through a device buffer in slices.
 *
 * libnccl.so.2 is opened at run time (dlopen, as cuDNN is): builds link without NCCL, and a
 * machine without it gets UNSUPPORTED from every call, so callers fall back to another transport.
 * Every call that waits (joining, each slice) uses a non-blocking communicator and gives up after
 * its timeout, aborting the communicator (ncclCommAbort), so a rank that died never hangs the
 * others. NVLink SHARP (NVLS) is off unless the environment sets NCCL_NVLS_ENABLE: the machines we
 * run on lend GPUs without multicast.
 *
 * Contract: a communicator is used by one thread at a time; every call may block up to its
 * timeout and belongs on a worker, never on an actor's loop. Nothing here knows of messages,
 * files or layers. The header compiles in a build without CUDA (it declares nothing there); only
 * code built with DSLA_HAVE_CUDA may call these functions. */
#ifndef DSLA_KERNELS_NCCL_H
#define DSLA_KERNELS_NCCL_H

#ifdef DSLA_HAVE_CUDA

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"

/* NCCL_UNIQUE_ID_BYTES, which callers must not take from nccl.h. */
#define DSLA_NCCL_ID_BYTES 128

typedef struct dsla_nccl_comm dsla_nccl_comm_t;

/* OK when libnccl.so.2 loads (its version, NCCL_VERSION_CODE's encoding, to *version when not
 * NULL); UNSUPPORTED naming why otherwise. */
dsla_status_t dsla_nccl_load(int *version);
/* A fresh unique id for rank 0 to hand to the others. */
dsla_status_t dsla_nccl_unique_id(uint8_t id[DSLA_NCCL_ID_BYTES]);
/* Joins the communicator of id as rank of nranks on device, with a device staging buffer of
 * staging bytes (at least 1); returns once every rank joined, DEADLINE_EXCEEDED after timeout_ms.
 */
dsla_status_t dsla_nccl_comm_create(dsla_nccl_comm_t **out, const uint8_t id[DSLA_NCCL_ID_BYTES],
                                    int rank, int nranks, int device, size_t staging,
                                    uint32_t timeout_ms);
/* len bytes of host from rank 0 to every rank (read on rank 0, written on the others), in slices
 * of the staging buffer; each slice gets timeout_ms. A failure aborts the communicator: only
 * dsla_nccl_comm_destroy is left to do with it. */
dsla_status_t dsla_nccl_broadcast(dsla_nccl_comm_t *c, void *host, size_t len, uint32_t timeout_ms);
/* len bytes of the device staging buffer itself (at most its size) from rank 0 to every rank,
 * with no host copy: NCCL's own rate over this communicator (nccl-tests' broadcast), for
 * benchmarks. */
dsla_status_t dsla_nccl_broadcast_staging(dsla_nccl_comm_t *c, size_t len, uint32_t timeout_ms);
/* Aborts and frees (never waits for other ranks); NULLs *c; harmless on NULL. */
void dsla_nccl_comm_destroy(dsla_nccl_comm_t **c);

#endif
#endif

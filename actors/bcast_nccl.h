/* The layer broadcast's NCCL transport (bcast_peer.h's dsla_bcast_transport_t over
 * kernels_nccl.h): one rank per process on one GPU, host slices staged through a device buffer.
 *
 * Creating it checks that this build has CUDA, that libnccl.so.2 loads and that the device exists;
 * UNSUPPORTED naming which is missing otherwise, so that the caller runs without a transport and
 * every broadcast it is asked into is NACKed (the controller then falls back to chunks).
 *
 * Contract: the transport's calls block and run on a worker (bcast_peer.h's jobs); nothing here
 * knows of messages or files. */
#ifndef DSLA_ACTORS_BCAST_NCCL_H
#define DSLA_ACTORS_BCAST_NCCL_H

#include <stddef.h>

#include "actors/bcast_peer.h"
#include "runtime/core/status.h"

/* Device staging per slice: large enough that a slice's transfer dwarfs its launch and copy
 * latencies, small enough to stay out of a serving GPU's way. */
#define DSLA_BCAST_NCCL_STAGING (64u << 20)

typedef struct dsla_bcast_nccl dsla_bcast_nccl_t;

dsla_status_t dsla_bcast_nccl_create(dsla_bcast_nccl_t **out, int device, size_t staging);
/* The transport; valid while n lives. */
const dsla_bcast_transport_t *dsla_bcast_nccl_transport(const dsla_bcast_nccl_t *n);
void dsla_bcast_nccl_destroy(dsla_bcast_nccl_t **n);

#endif

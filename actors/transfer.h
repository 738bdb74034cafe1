/* Chunked layer transfer, the replica's side (DESIGN.md section 7's "chunked ZeroMQ"): a layer
 * cache directory, and one layer version file being fetched into it chunk by chunk.
 *
 * A layer version lives in the cache as DIR/layer-<L>-v<V>-<xxh64>.safetensors. It is written
 * under that name plus ".part", hashed as its chunks arrive, fsync'd, checked against the size and
 * xxh64 its SET_PLAN announced, and only then renamed (and the directory fsync'd), so a file under
 * its final name is complete and verified, and a crash leaves at most a .part behind.
 *
 * Contract: this module holds no sockets, timers or threads; the serving actor sends the
 * LAYER_FETCH it describes, hands it each LAYER_CHUNK and keeps time. Nothing here blocks beyond
 * writing one chunk. */
#ifndef DSLA_ACTORS_TRANSFER_H
#define DSLA_ACTORS_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>

#include "proto/proto.h"
#include "runtime/core/status.h"

typedef struct dsla_transfer dsla_transfer_t;

/* Creates dir (and its parents) when missing; IO naming the directory otherwise. */
dsla_status_t dsla_transfer_cache_init(const char *dir);
/* The cache path of l's version; INVALID_ARGUMENT when it does not fit cap. */
dsla_status_t dsla_transfer_cache_path(const char *dir, const dsla_proto_plan_layer_t *l, char *out,
                                       size_t cap);
/* True when path holds l's announced size and xxh64; a file there that does not is removed. */
bool dsla_transfer_cached(const char *path, const dsla_proto_plan_layer_t *l);

/* Starts fetching l into path (its ".part" created afresh), chunk bytes at a time (1 to
 * DSLA_PROTO_CHUNK_MAX). */
dsla_status_t dsla_transfer_begin(dsla_transfer_t **out, const char *path,
                                  const dsla_proto_plan_layer_t *l, uint32_t chunk);
/* The LAYER_FETCH for the next chunk. */
void dsla_transfer_request(const dsla_transfer_t *t, dsla_proto_layer_fetch_t *out);
/* Writes the chunk just requested; *done once the file is complete, verified and renamed. A chunk
 * of another version or offset, a size other than announced, or a wrong xxh64 is FORMAT naming
 * both values; a failed write is IO. After a failure the transfer is only fit for destroy. */
dsla_status_t dsla_transfer_take(dsla_transfer_t *t, const dsla_proto_layer_chunk_t *c, bool *done);
/* Removes the .part file of an unfinished transfer, frees, NULLs *t. Harmless on NULL. */
void dsla_transfer_destroy(dsla_transfer_t **t);

#endif

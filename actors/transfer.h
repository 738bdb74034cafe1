/* Chunked layer transfer, the replica's side (DESIGN.md section 7's "chunked ZeroMQ"): a layer
 * cache directory, and one layer version file being fetched into it chunk by chunk.
 *
 * A layer version lives in the cache as DIR/layer-<L>-v<V>-<xxh64>.safetensors. It is written
 * under that name plus ".N.part" (N unique in the process, so that a superseded fetch still
 * finishing its last write never shares a file with a newer fetch of the same version), hashed as
 * its chunks arrive, fsync'd, checked against the size and
 * xxh64 its SET_PLAN announced, and only then renamed (and the directory fsync'd), so a file under
 * its final name is complete and verified, and a crash leaves only .part files behind, which the
 * next dsla_transfer_cache_init removes.
 *
 * Contract: this module holds no sockets, timers or threads; the serving actor sends the
 * LAYER_FETCH it describes, checks each LAYER_CHUNK with dsla_transfer_accept on its loop and hands
 * its bytes to dsla_transfer_write on a worker, which writes, hashes and (for the last chunk)
 * fsyncs and renames. The two halves share no field: the loop's (what was asked for and received)
 * and the worker's (the file, the hash, what was written) may run at once, as long as one write at
 * a time runs, in the order the chunks were accepted, and destroy waits for it. */
#ifndef DSLA_ACTORS_TRANSFER_H
#define DSLA_ACTORS_TRANSFER_H

#include <stdbool.h>
#include <stddef.h>

#include "proto/proto.h"
#include "runtime/core/status.h"

typedef struct dsla_transfer dsla_transfer_t;

/* Creates dir (and its parents) when missing, and removes the .part files of fetches a crash cut
 * short; IO naming the directory when it is not a writable directory. One process per cache. */
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
/* The loop's half: checks that c is the chunk just requested and counts it received; *last once
 * it completes the file. A chunk of another version or offset, or a size other than announced,
 * is FORMAT naming both values. */
dsla_status_t dsla_transfer_accept(dsla_transfer_t *t, const dsla_proto_layer_chunk_t *c,
                                   bool *last);
/* The worker's half: appends the bytes of the chunk accepted next (len bytes) to the .part file
 * and hashes them; once the whole file is written, fsyncs it, checks the announced xxh64 (FORMAT
 * naming both) and renames it into place (*done). A failed write or sync is IO. After a failure
 * the transfer is only fit for destroy. */
dsla_status_t dsla_transfer_write(dsla_transfer_t *t, const void *bytes, size_t len, bool *done);
/* Removes the .part file of an unfinished transfer, frees, NULLs *t. Harmless on NULL. */
void dsla_transfer_destroy(dsla_transfer_t **t);

#endif

/* The controller's side of the chunked layer transfer (DESIGN.md section 7, docs/controller.md
 * "Transfer"): one LAYER_FETCH in, one LAYER_CHUNK (or the reason it is refused) out.
 *
 * A fetch is one job in two halves: dsla_ctl_chunk_check on the actor's thread checks it against
 * the catalogue (the version held, the xxh64 asked for, the offset within the file) and takes the
 * announced file's path, size and xxh64; dsla_ctl_chunk_read then runs on a worker: it reads the
 * range (at most DSLA_PROTO_CHUNK_MAX bytes) and, for a transfer's first chunk, hashes the whole
 * file so that one changed since its announce is refused before a replica writes a byte of it
 * (later changes fail the replica's own xxh64 check).
 *
 * Contract: the job owns its buffer (dsla_ctl_chunk_free); it knows the catalogue only through
 * dsla_ctl_core_file and nothing of sockets. */
#ifndef DSLA_ACTORS_CONTROLLER_CHUNKS_H
#define DSLA_ACTORS_CONTROLLER_CHUNKS_H

#include <stdint.h>

#include "actors/controller_core.h"
#include "proto/proto.h"
#include "runtime/core/status.h"

typedef struct {
    char to[DSLA_PROTO_NAME_MAX + 1]; /* the fetching replica */
    uint64_t id;                      /* the LAYER_FETCH's correlation id */
    dsla_proto_layer_fetch_t fetch;
    char path[DSLA_PROTO_PATH_MAX + 1]; /* the catalogued file, as announced: */
    uint64_t size, xxh64;
    /* the outcome: status OK and chunk (bytes in buf), or the error and its message */
    dsla_status_t status;
    char error[DSLA_PROTO_MESSAGE_MAX + 1];
    dsla_proto_layer_chunk_t chunk;
    char *buf;
} dsla_ctl_chunk_t;

/* Fills job's file from the catalogue, or sets its status and error (NOT_FOUND, INVALID_ARGUMENT)
 * and returns it. */
dsla_status_t dsla_ctl_chunk_check(const dsla_ctl_core_t *core, dsla_ctl_chunk_t *job);
/* The file work, on a worker: sets job->status, and job->chunk on success. */
void dsla_ctl_chunk_read(dsla_ctl_chunk_t *job);
void dsla_ctl_chunk_free(dsla_ctl_chunk_t **job);

#endif

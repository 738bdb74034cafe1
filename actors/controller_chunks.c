/* LAYER_FETCH checked on the loop, read on a worker (controller_chunks.h). */
#include "actors/controller_chunks.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/control/layer_catalogue.h"

static dsla_status_t refuse(dsla_ctl_chunk_t *job, dsla_status_t st) {
    job->status = st;
    snprintf(job->error, sizeof job->error, "%s", dsla_last_error());
    return st;
}

dsla_status_t dsla_ctl_chunk_check(const dsla_ctl_core_t *core, dsla_ctl_chunk_t *job) {
    const dsla_proto_layer_fetch_t *f = &job->fetch;
    dsla_ctl_file_t file;
    if (!dsla_ctl_core_file(core, f->layer, (int)f->version, &file))
        return refuse(job, dsla_error(DSLA_ERR_NOT_FOUND,
                                      "LAYER_FETCH: layer %d version %u is not in the catalogue",
                                      f->layer, f->version));
    if (file.xxh64 != f->xxh64)
        return refuse(job, dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                      "LAYER_FETCH: layer %d version %u has xxh64 %016" PRIx64
                                      ", not the %016" PRIx64 " asked for",
                                      f->layer, f->version, file.xxh64, f->xxh64));
    if (f->offset > file.size)
        return refuse(job, dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                      "LAYER_FETCH: offset %" PRIu64
                                      " is past the end of %s (%" PRIu64 " bytes)",
                                      f->offset, file.path, file.size));
    snprintf(job->path, sizeof job->path, "%s", file.path);
    job->size = file.size;
    job->xxh64 = file.xxh64;
    job->status = DSLA_OK;
    return DSLA_OK;
}

void dsla_ctl_chunk_read(dsla_ctl_chunk_t *job) {
    const dsla_proto_layer_fetch_t *f = &job->fetch;
    if (f->offset == 0) {
        uint64_t size = 0, xxh = 0;
        dsla_status_t st = dsla_catalogue_file_digest(job->path, &size, &xxh);
        if (st != DSLA_OK) {
            refuse(job, st);
            return;
        }
        if (size != job->size || xxh != job->xxh64) {
            refuse(job, dsla_error(DSLA_ERR_FORMAT,
                                   "LAYER_FETCH: %s changed since it was announced: %" PRIu64
                                   " bytes with xxh64 %016" PRIx64 ", announced %" PRIu64
                                   " bytes with xxh64 %016" PRIx64,
                                   job->path, size, xxh, job->size, job->xxh64));
            return;
        }
    }
    uint64_t left = job->size - f->offset;
    size_t n = left < f->max_len ? (size_t)left : f->max_len;
    job->buf = malloc(n ? n : 1);
    if (!job->buf) {
        refuse(job, dsla_error(DSLA_ERR_OUT_OF_MEMORY, "LAYER_FETCH: out of memory"));
        return;
    }
    dsla_status_t st = dsla_catalogue_file_read(job->path, f->offset, job->buf, n);
    if (st != DSLA_OK) {
        refuse(job, st);
        return;
    }
    job->chunk = (dsla_proto_layer_chunk_t){f->layer,  f->version, f->xxh64, f->offset,
                                            job->size, job->buf,   n};
    job->status = DSLA_OK;
}

void dsla_ctl_chunk_free(dsla_ctl_chunk_t **job) {
    if (!job || !*job) return;
    free((*job)->buf);
    free(*job);
    *job = NULL;
}

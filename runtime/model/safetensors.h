/* safetensors: read (mmap, validated) and write checkpoints in the Hugging Face safetensors format.
 *
 * Reading maps the file read-only and validates the whole header before anything is used: the
 * 8-byte header length against the file size, JSON syntax, each tensor's dtype, shape and
 * data_offsets (inside the data section, consistent with dtype x shape, no overlaps, no gaps the
 * format forbids). A truncated or hostile file gives DSLA_ERR_FORMAT naming the file and the
 * tensor; it never causes a read outside the mapping. A sharded checkpoint
 * (model.safetensors.index.json) opens as one set. Writing goes to a temporary file that is fsync'd
 * and renamed into place, so a reader never sees half a file. This module knows nothing about
 * Llama: shape checks against a config live in the model. */
#ifndef DSLA_MODEL_SAFETENSORS_H
#define DSLA_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/core/tensor.h"

typedef struct {
    const char *name;   /* owned by the file object */
    dsla_dtype_t dtype; /* F32, F16, BF16, I32, I64 or F64; others are UNSUPPORTED */
    int ndim;
    int64_t shape[DSLA_TENSOR_MAX_DIMS];
    const void *data; /* points into the read-only mapping */
    size_t bytes;
} dsla_st_tensor_t;

typedef struct dsla_safetensors dsla_safetensors_t;

/* Opens one .safetensors file, or, when path is a directory, the checkpoint inside it:
 * model.safetensors.index.json (all shards it names, each validated) or else model.safetensors. */
dsla_status_t dsla_safetensors_open(dsla_safetensors_t **out, const char *path);
void dsla_safetensors_close(dsla_safetensors_t **st);

size_t dsla_safetensors_count(const dsla_safetensors_t *st);
const dsla_st_tensor_t *dsla_safetensors_at(const dsla_safetensors_t *st, size_t index);
/* NULL when absent (no error is set: absence may be fine, e.g. a tied lm_head). */
const dsla_st_tensor_t *dsla_safetensors_find(const dsla_safetensors_t *st, const char *name);
/* The "__metadata__" string map of the (first) file; NULL when the key is absent. */
const char *dsla_safetensors_metadata(const dsla_safetensors_t *st, const char *key);

/* Finds name and checks its shape is exactly shape[0..ndim); errors name the tensor, expected and
 * found. */
dsla_status_t dsla_safetensors_expect(const dsla_safetensors_t *st, const char *name, int ndim,
                                      const int64_t *shape, const dsla_st_tensor_t **out);
/* Like expect, then converts into dst (numel floats) from any floating dtype. */
dsla_status_t dsla_safetensors_read_f32(const dsla_safetensors_t *st, const char *name, int ndim,
                                        const int64_t *shape, float *dst);

/* Writing: tensors are added in order, then written atomically. Data is copied at add time. */
typedef struct dsla_st_writer dsla_st_writer_t;
dsla_status_t dsla_st_writer_create(dsla_st_writer_t **out);
void dsla_st_writer_destroy(dsla_st_writer_t **w);
dsla_status_t dsla_st_writer_add(dsla_st_writer_t *w, const char *name, dsla_dtype_t dtype,
                                 int ndim, const int64_t *shape, const void *data);
dsla_status_t dsla_st_writer_set_metadata(dsla_st_writer_t *w, const char *key, const char *value);
/* Writes path.tmp, fsyncs it, renames it to path and fsyncs the directory. */
dsla_status_t dsla_st_writer_save(dsla_st_writer_t *w, const char *path);

#endif

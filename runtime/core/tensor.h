/* Tensors: a typed, shaped view of memory on one backend, plus aligned allocation and dtype
 * helpers.
 *
 * A tensor either owns its buffer (created by dsla_tensor_create, freed by dsla_tensor_destroy) or
 * views memory owned by someone else (an mmap'd checkpoint, a pool). Shapes are row-major,
 * outermost first. This module knows nothing of models or kernels; it must not launch device work.
 */
#ifndef DSLA_CORE_TENSOR_H
#define DSLA_CORE_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum {
    DSLA_DTYPE_F32 = 0,
    DSLA_DTYPE_F16,
    DSLA_DTYPE_BF16,
    DSLA_DTYPE_I32,
    DSLA_DTYPE_F64,
    DSLA_DTYPE_I64,
} dsla_dtype_t;

typedef enum {
    DSLA_BACKEND_CPU = 0,
    DSLA_BACKEND_CUDA,
} dsla_backend_t;

enum {
    DSLA_TENSOR_MAX_DIMS = 4,
    /* 64 bytes: one cache line, and the widest AVX-512 load. */
    DSLA_ALIGNMENT = 64,
};

typedef struct {
    dsla_dtype_t dtype;
    dsla_backend_t backend;
    int ndim;
    int64_t shape[DSLA_TENSOR_MAX_DIMS];
    void *data;
    bool owns_data;
} dsla_tensor_t;

size_t dsla_dtype_size(dsla_dtype_t dtype);
const char *dsla_dtype_name(dsla_dtype_t dtype);

int64_t dsla_tensor_numel(const dsla_tensor_t *t);
size_t dsla_tensor_bytes(const dsla_tensor_t *t);

/* Allocates an uninitialised CPU tensor of the given shape. *out is NULL on failure. */
dsla_status_t dsla_tensor_create(dsla_tensor_t **out, dsla_dtype_t dtype, int ndim,
                                 const int64_t *shape);
/* A non-owning view of data; the caller keeps data alive for the view's lifetime. */
dsla_status_t dsla_tensor_view(dsla_tensor_t **out, dsla_dtype_t dtype, int ndim,
                               const int64_t *shape, void *data);
/* Frees *t (and its buffer if owned) and sets *t to NULL; harmless on NULL. */
void dsla_tensor_destroy(dsla_tensor_t **t);

/* Aligned allocation of CPU memory; free with dsla_free. Returns NULL on failure or bytes == 0. */
void *dsla_alloc(size_t bytes);
void *dsla_calloc(size_t count, size_t size);
void dsla_free(void *p);

/* Scalar conversions. bf16 and f16 are carried as raw uint16_t bits. */
float dsla_bf16_to_f32(uint16_t bits);
uint16_t dsla_f32_to_bf16(float value); /* round to nearest even; NaN stays NaN */
float dsla_f16_to_f32(uint16_t bits);
uint16_t dsla_f32_to_f16(float value);

/* Converts n elements of any floating dtype to float32. */
void dsla_convert_to_f32(float *dst, const void *src, dsla_dtype_t src_dtype, size_t n);

#endif

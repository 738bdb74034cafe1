#include "tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

size_t dsla_dtype_size(dsla_dtype_t dtype) {
    switch (dtype) {
    case DSLA_DTYPE_F32:
        return 4;
    case DSLA_DTYPE_F16:
        return 2;
    case DSLA_DTYPE_BF16:
        return 2;
    case DSLA_DTYPE_I32:
        return 4;
    case DSLA_DTYPE_F64:
        return 8;
    case DSLA_DTYPE_I64:
        return 8;
    }
    return 0;
}

const char *dsla_dtype_name(dsla_dtype_t dtype) {
    switch (dtype) {
    case DSLA_DTYPE_F32:
        return "F32";
    case DSLA_DTYPE_F16:
        return "F16";
    case DSLA_DTYPE_BF16:
        return "BF16";
    case DSLA_DTYPE_I32:
        return "I32";
    case DSLA_DTYPE_F64:
        return "F64";
    case DSLA_DTYPE_I64:
        return "I64";
    }
    return "?";
}

int64_t dsla_tensor_numel(const dsla_tensor_t *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t dsla_tensor_bytes(const dsla_tensor_t *t) {
    return (size_t)dsla_tensor_numel(t) * dsla_dtype_size(t->dtype);
}

static dsla_status_t tensor_init(dsla_tensor_t **out, dsla_dtype_t dtype, int ndim,
                                 const int64_t *shape) {
    *out = NULL;
    if (ndim < 0 || ndim > DSLA_TENSOR_MAX_DIMS)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "tensor ndim %d is outside 0..%d", ndim,
                          DSLA_TENSOR_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "tensor shape[%d] = %lld is negative", i,
                              (long long)shape[i]);
    dsla_tensor_t *t = calloc(1, sizeof *t);
    if (!t) return dsla_error_oom("a tensor header");
    t->dtype = dtype;
    t->backend = DSLA_BACKEND_CPU;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    *out = t;
    return DSLA_OK;
}

dsla_status_t dsla_tensor_create(dsla_tensor_t **out, dsla_dtype_t dtype, int ndim,
                                 const int64_t *shape) {
    DSLA_TRY(tensor_init(out, dtype, ndim, shape));
    size_t bytes = dsla_tensor_bytes(*out);
    (*out)->data = dsla_alloc(bytes ? bytes : 1);
    if (!(*out)->data) {
        free(*out);
        *out = NULL;
        return dsla_error_oom("a %zu-byte tensor", bytes);
    }
    (*out)->owns_data = true;
    return DSLA_OK;
}

dsla_status_t dsla_tensor_view(dsla_tensor_t **out, dsla_dtype_t dtype, int ndim,
                               const int64_t *shape, void *data) {
    DSLA_TRY(tensor_init(out, dtype, ndim, shape));
    (*out)->data = data;
    return DSLA_OK;
}

void dsla_tensor_destroy(dsla_tensor_t **t) {
    if (!t || !*t) return;
    if ((*t)->owns_data) dsla_free((*t)->data);
    free(*t);
    *t = NULL;
}

void *dsla_alloc(size_t bytes) {
    if (bytes == 0) return NULL;
    size_t rounded = (bytes + DSLA_ALIGNMENT - 1) / DSLA_ALIGNMENT * DSLA_ALIGNMENT;
    if (rounded < bytes) return NULL;
    return aligned_alloc(DSLA_ALIGNMENT, rounded);
}

void *dsla_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) return NULL;
    void *p = dsla_alloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

void dsla_free(void *p) {
    free(p);
}

float dsla_bf16_to_f32(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t dsla_f32_to_bf16(float value) {
    uint32_t u;
    memcpy(&u, &value, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float dsla_f16_to_f32(uint16_t bits) {
    uint32_t sign = (uint32_t)(bits & 0x8000u) << 16;
    uint32_t exponent = (bits >> 10) & 0x1fu;
    uint32_t mantissa = bits & 0x3ffu;
    float magnitude;
    if (exponent == 0) {
        magnitude = ldexpf((float)mantissa, -24); /* subnormal */
    } else if (exponent == 31) {
        magnitude = mantissa ? NAN : INFINITY;
    } else {
        magnitude = ldexpf((float)(mantissa | 0x400u), (int)exponent - 25);
    }
    uint32_t u;
    memcpy(&u, &magnitude, sizeof u);
    u |= sign;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t dsla_f32_to_f16(float value) {
    uint32_t u;
    memcpy(&u, &value, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    float a = fabsf(value);
    if (isnan(value)) return (uint16_t)(sign | 0x7e00u);
    if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00u);
    if (a < ldexpf(1.0f, -14)) {
        /* subnormal: units of 2^-24, round to nearest even */
        float units = nearbyintf(ldexpf(a, 24));
        return (uint16_t)(sign | (uint16_t)units);
    }
    int e;
    float m = frexpf(a, &e);                  /* a = m * 2^e, m in [0.5, 1) */
    float scaled = nearbyintf(ldexpf(m, 11)); /* 11 significant bits */
    if (scaled >= 2048.0f) {
        scaled /= 2.0f;
        e += 1;
    }
    uint16_t exponent = (uint16_t)(e - 1 + 15);
    return (uint16_t)(sign | (exponent << 10) | ((uint16_t)scaled & 0x3ffu));
}

void dsla_convert_to_f32(float *dst, const void *src, dsla_dtype_t src_dtype, size_t n) {
    const uint16_t *h = src;
    switch (src_dtype) {
    case DSLA_DTYPE_F32:
        memcpy(dst, src, n * sizeof(float));
        return;
    case DSLA_DTYPE_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = dsla_bf16_to_f32(h[i]);
        return;
    case DSLA_DTYPE_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = dsla_f16_to_f32(h[i]);
        return;
    case DSLA_DTYPE_F64:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)((const double *)src)[i];
        return;
    case DSLA_DTYPE_I32:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)((const int32_t *)src)[i];
        return;
    case DSLA_DTYPE_I64:
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)((const int64_t *)src)[i];
        return;
    }
}

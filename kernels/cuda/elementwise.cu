/* Element-wise ops on the GPU: embedding lookup, SwiGLU, residual add, fp32 -> bf16. Each is one
 * pass over memory, so each thread handles one element with coalesced accesses; they are
 * bandwidth-bound and the launch is the only other cost. */
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.h"

static __device__ __forceinline__ void store(float *y, size_t i, float v) {
    y[i] = v;
}

static __device__ __forceinline__ void store(__nv_bfloat16 *y, size_t i, float v) {
    y[i] = __float2bfloat16_rn(v);
}

template <typename T>
static __global__ void embedding(float *out, const T *table, const int32_t *tokens, int n, int dim,
                                 int vocab) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * dim) return;
    const int row = (int)(i / dim), col = (int)(i % dim);
    const int32_t tok = tokens[row];
    out[i] = (tok >= 0 && tok < vocab) ? (float)table[(size_t)tok * dim + col]
                                       : __int_as_float(0x7fc00000);
}

extern "C" dsla_status_t dsla_cuda_embedding(dsla_cuda_stream_t stream, float *out,
                                             const void *table, dsla_dtype_t table_dtype,
                                             const int32_t *tokens, int n, int dim, int vocab) {
    const size_t total = (size_t)n * dim;
    if (total == 0) return DSLA_OK;
    const unsigned blocks = dsla_cuda_blocks_for(total, DSLA_CUDA_BLOCK);
    if (table_dtype == DSLA_DTYPE_F32)
        embedding<<<blocks, DSLA_CUDA_BLOCK, 0, stream>>>(out, (const float *)table, tokens, n, dim,
                                                          vocab);
    else if (table_dtype == DSLA_DTYPE_BF16)
        embedding<<<blocks, DSLA_CUDA_BLOCK, 0, stream>>>(out, (const __nv_bfloat16 *)table, tokens,
                                                          n, dim, vocab);
    else
        return dsla_error(DSLA_ERR_UNSUPPORTED, "dsla_cuda_embedding: table dtype %s (f32 or bf16)",
                          dsla_dtype_name(table_dtype));
    DSLA_CUDA_CHECK_LAUNCH("embedding");
    return DSLA_OK;
}

template <typename T>
static __global__ void swiglu(T *y, const float *gate, const float *up, int rows, int n,
                              int in_stride) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * n) return;
    const size_t r = i / n, j = i % n;
    const float g = gate[r * in_stride + j], u = up[r * in_stride + j];
    /* expf, not __expf: the CPU reference uses libm's expf and fp32 tests want 1e-6 agreement. */
    store(y, i, g / (1.0f + expf(-g)) * u);
}

extern "C" dsla_status_t dsla_cuda_swiglu(dsla_cuda_stream_t stream, void *y, dsla_dtype_t y_dtype,
                                          const float *gate, const float *up, int rows, int n,
                                          int in_stride) {
    const size_t total = (size_t)rows * n;
    if (total == 0) return DSLA_OK;
    const unsigned blocks = dsla_cuda_blocks_for(total, DSLA_CUDA_BLOCK);
    if (y_dtype == DSLA_DTYPE_F32)
        swiglu<<<blocks, DSLA_CUDA_BLOCK, 0, stream>>>((float *)y, gate, up, rows, n, in_stride);
    else if (y_dtype == DSLA_DTYPE_BF16)
        swiglu<<<blocks, DSLA_CUDA_BLOCK, 0, stream>>>((__nv_bfloat16 *)y, gate, up, rows, n,
                                                       in_stride);
    else
        return dsla_error(DSLA_ERR_UNSUPPORTED, "dsla_cuda_swiglu: output dtype %s (f32 or bf16)",
                          dsla_dtype_name(y_dtype));
    DSLA_CUDA_CHECK_LAUNCH("swiglu");
    return DSLA_OK;
}

static __global__ void add(float *y, const float *a, const float *b, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] + b[i];
}

extern "C" dsla_status_t dsla_cuda_add(dsla_cuda_stream_t stream, float *y, const float *a,
                                       const float *b, size_t n) {
    if (n == 0) return DSLA_OK;
    add<<<dsla_cuda_blocks_for(n, DSLA_CUDA_BLOCK), DSLA_CUDA_BLOCK, 0, stream>>>(y, a, b, n);
    DSLA_CUDA_CHECK_LAUNCH("add");
    return DSLA_OK;
}

static __global__ void to_bf16(__nv_bfloat16 *y, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16_rn(x[i]);
}

extern "C" dsla_status_t dsla_cuda_to_bf16(dsla_cuda_stream_t stream, uint16_t *y, const float *x,
                                           size_t n) {
    if (n == 0) return DSLA_OK;
    to_bf16<<<dsla_cuda_blocks_for(n, DSLA_CUDA_BLOCK), DSLA_CUDA_BLOCK, 0, stream>>>(
        (__nv_bfloat16 *)y, x, n);
    DSLA_CUDA_CHECK_LAUNCH("to_bf16");
    return DSLA_OK;
}

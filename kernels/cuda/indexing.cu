/* Row gathers, bias rows, table patches and synthetic data on the GPU: the small data-movement ops
 * a device model needs between its kernels (picking the rows that want logits, updating block
 * tables from one upload per step, filling benchmark weights without a host copy). Each is one pass
 * over its output. */
#include <cuda_bf16.h>

#include "kernels/cuda/cuda_check.h"

static __global__ void gather_rows(float *y, int y_stride, const float *x, int x_stride,
                                   const int32_t *rows, int width) {
    const int i = blockIdx.x;
    const float *src = x + (size_t)rows[i] * x_stride;
    float *dst = y + (size_t)i * y_stride;
    for (int j = threadIdx.x; j < width; j += blockDim.x)
        dst[j] = src[j];
}

extern "C" dsla_status_t dsla_cuda_gather_rows(dsla_cuda_stream_t stream, float *y, int y_stride,
                                               const float *x, int x_stride, const int32_t *rows,
                                               int n, int width) {
    if (n <= 0) return DSLA_OK;
    gather_rows<<<n, DSLA_CUDA_BLOCK, 0, stream>>>(y, y_stride, x, x_stride, rows, width);
    DSLA_CUDA_CHECK_LAUNCH("gather_rows");
    return DSLA_OK;
}

static __global__ void scatter_i32(int32_t *dst, const int32_t *idx, const int32_t *val, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[idx[i]] = val[i];
}

extern "C" dsla_status_t dsla_cuda_scatter_i32(dsla_cuda_stream_t stream, int32_t *dst,
                                               const int32_t *idx, const int32_t *val, int n) {
    if (n <= 0) return DSLA_OK;
    scatter_i32<<<dsla_cuda_blocks_for((size_t)n, DSLA_CUDA_BLOCK), DSLA_CUDA_BLOCK, 0, stream>>>(
        dst, idx, val, n);
    DSLA_CUDA_CHECK_LAUNCH("scatter_i32");
    return DSLA_OK;
}

/* splitmix64's finaliser: a counter-based hash, so every element is independent of launch shape. */
static __device__ __forceinline__ uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

template <typename T>
static __global__ void fill_uniform(T *p, size_t n, float lo, float hi, uint64_t seed) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        /* The top 24 bits: exactly representable as a float in [0, 1). */
        const float u = (float)(mix64(seed ^ mix64(i)) >> 40) * (1.0f / 16777216.0f);
        p[i] = (T)(lo + (hi - lo) * u);
    }
}

/* A grid-stride loop over a fixed grid: 13 GB of weights would otherwise need 2^25+ blocks. */
enum { FILL_BLOCKS = 4096 };

extern "C" dsla_status_t dsla_cuda_fill_uniform(dsla_cuda_stream_t stream, void *p,
                                                dsla_dtype_t dtype, size_t n, float lo, float hi,
                                                uint64_t seed) {
    if (n == 0) return DSLA_OK;
    if (dtype == DSLA_DTYPE_F32)
        fill_uniform<<<FILL_BLOCKS, DSLA_CUDA_BLOCK, 0, stream>>>((float *)p, n, lo, hi, seed);
    else if (dtype == DSLA_DTYPE_BF16)
        fill_uniform<<<FILL_BLOCKS, DSLA_CUDA_BLOCK, 0, stream>>>((__nv_bfloat16 *)p, n, lo, hi,
                                                                  seed);
    else
        return dsla_error(DSLA_ERR_UNSUPPORTED, "dsla_cuda_fill_uniform: dtype %s (f32 or bf16)",
                          dsla_dtype_name(dtype));
    DSLA_CUDA_CHECK_LAUNCH("fill_uniform");
    return DSLA_OK;
}

static __global__ void add_row_bias(float *y, int y_stride, const float *bias, int width) {
    float *row = y + (size_t)blockIdx.x * y_stride;
    for (int j = threadIdx.x; j < width; j += blockDim.x)
        row[j] += bias[j];
}

extern "C" dsla_status_t dsla_cuda_add_row_bias(dsla_cuda_stream_t stream, float *y, int y_stride,
                                                const float *bias, int rows, int width) {
    if (rows <= 0) return DSLA_OK;
    add_row_bias<<<rows, DSLA_CUDA_BLOCK, 0, stream>>>(y, y_stride, bias, width);
    DSLA_CUDA_CHECK_LAUNCH("add_row_bias");
    return DSLA_OK;
}

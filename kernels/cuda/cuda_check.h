/* Error checking shared by the CUDA kernel files: every CUDA runtime call and every launch goes
 * through DSLA_CUDA_CHECK / DSLA_CUDA_CHECK_LAUNCH, which turn a failure into DSLA_ERR_INTERNAL
 * naming the call and cudaGetErrorString's text. Only for kernels/cuda/*.cu; declares no kernels.
 */
#ifndef DSLA_KERNELS_CUDA_CHECK_H
#define DSLA_KERNELS_CUDA_CHECK_H

#include <cuda_runtime.h>

#include "kernels/kernels_cuda.h"

#define DSLA_CUDA_CHECK(call)                                                                      \
    do {                                                                                           \
        cudaError_t dsla_cuda_err_ = (call);                                                       \
        if (dsla_cuda_err_ != cudaSuccess)                                                         \
            return dsla_error(DSLA_ERR_INTERNAL, "%s: %s", #call,                                  \
                              cudaGetErrorString(dsla_cuda_err_));                                 \
    } while (0)

/* After a <<<...>>> launch: a bad configuration shows up only in cudaGetLastError. */
#define DSLA_CUDA_CHECK_LAUNCH(name)                                                               \
    do {                                                                                           \
        cudaError_t dsla_cuda_err_ = cudaGetLastError();                                           \
        if (dsla_cuda_err_ != cudaSuccess)                                                         \
            return dsla_error(DSLA_ERR_INTERNAL, "launching %s: %s", name,                         \
                              cudaGetErrorString(dsla_cuda_err_));                                 \
    } while (0)

/* Threads per block of the simple element-wise and row kernels: a multiple of the warp size that
 * keeps several blocks resident per SM. */
enum { DSLA_CUDA_BLOCK = 256, DSLA_CUDA_WARP = 32 };

static inline unsigned dsla_cuda_blocks_for(size_t n, unsigned per_block) {
    return (unsigned)((n + per_block - 1) / per_block);
}

/* Warp-wide sum and max over all 32 lanes. */
__device__ __forceinline__ float dsla_warp_sum(float v) {
    for (int o = DSLA_CUDA_WARP / 2; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float dsla_warp_max(float v) {
    for (int o = DSLA_CUDA_WARP / 2; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* The two operations block reductions take. */
struct dsla_sum_op {
    template <typename T> __device__ T operator()(T a, T b) const {
        return a + b;
    }
};

struct dsla_max_op {
    __device__ float operator()(float a, float b) const {
        return fmaxf(a, b);
    }
    __device__ double operator()(double a, double b) const {
        return fmax(a, b);
    }
};

/* op over the THREADS values of a block (every thread calls it): each warp by shuffles, then the
 * warps' partials in warp order, so a sum is the same number on every call. Every thread gets the
 * result; the barriers on both sides let calls follow each other on the same shared array. */
template <int THREADS, typename T, typename Op> __device__ T dsla_block_reduce(T v, Op op) {
    __shared__ T partial[THREADS / DSLA_CUDA_WARP];
    for (int o = DSLA_CUDA_WARP / 2; o > 0; o >>= 1)
        v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads(); /* the previous call's partials have been read */
    if (threadIdx.x % DSLA_CUDA_WARP == 0) partial[threadIdx.x / DSLA_CUDA_WARP] = v;
    __syncthreads();
    v = partial[0];
    for (int w = 1; w < THREADS / DSLA_CUDA_WARP; w++)
        v = op(v, partial[w]);
    return v;
}

#endif

/* Device helpers shared by the DSLA CUDA kernels (kernels/cuda/dsla_*.cu): the gate nonlinearity
 * and its derivative exactly as kernels/cpu/dsla_internal.h computes them, the mix weights, input
 * loads of either dtype, and a block-wide GEMM on tensor cores or CUDA cores. Only for
 * kernels/cuda/dsla_*.cu; it declares no kernels. */
#ifndef DSLA_KERNELS_CUDA_DSLA_COMMON_CUH
#define DSLA_KERNELS_CUDA_DSLA_COMMON_CUH

#include <cuda_bf16.h>
#include <mma.h>

#include <type_traits>

#include "kernels/cuda/cuda_check.h"
#include "kernels/kernels_cuda_dsla.h"

/* logsigmoid(a) / 16 clamped at -50, the CPU's dsla_cpu_dsla_log_gate: expf and log1pf (not the
 * fast intrinsics) so that fp32 results agree with the CPU to rounding. */
__device__ __forceinline__ float dsla_cu_logsigmoid(float a) {
    return fminf(a, 0.0f) - log1pf(expf(-fabsf(a)));
}

__device__ __forceinline__ float dsla_cu_log_gate(float a) {
    return fmaxf(dsla_cu_logsigmoid(a) / DSLA_GATE_NORMALIZER, (float)DSLA_LOG_GATE_MIN);
}

/* d log g / d a: sigmoid(-a) / 16, zero where the clamp holds (as dsla_cpu_dsla_log_gate_grad). */
__device__ __forceinline__ float dsla_cu_log_gate_grad(float a) {
    if (dsla_cu_logsigmoid(a) / DSLA_GATE_NORMALIZER < (float)DSLA_LOG_GATE_MIN) return 0.0f;
    const float s = a >= 0.0f ? expf(-a) / (1.0f + expf(-a)) : 1.0f / (1.0f + expf(a));
    return s / DSLA_GATE_NORMALIZER;
}

/* (w1, w2) = softmax(alpha) in fp64, as dsla_cpu_dsla_mix_weights (a huge alpha2 - alpha1 gives
 * (0, 1), not NaN). */
__device__ __forceinline__ void dsla_cu_mix_weights(const float *alpha, float w[2]) {
    const double e = exp((double)alpha[1] - (double)alpha[0]);
    w[0] = isinf(e) ? 0.0f : (float)(1.0 / (1.0 + e));
    w[1] = isinf(e) ? 1.0f : (float)(e / (1.0 + e));
}

__device__ __forceinline__ float dsla_cu_load(const float *p, size_t i) {
    return p[i];
}

__device__ __forceinline__ float dsla_cu_load(const __nv_bfloat16 *p, size_t i) {
    return __bfloat162float(p[i]);
}

enum {
    DSLA_CU_C = DSLA_CHUNK,
    /* Loads each thread keeps in flight when filling a tile: 8192 elements of a 7B chunk over 256
     * threads take two round trips. */
    DSLA_CU_LOAD_BATCH = 16,
};

/* X[t, c] = scale * src[base + t * hd + c] (or log g of it with GATE) for t < n, c < cols; zero
 * (log g 0: padding decays nothing) for n <= t < C. Each thread issues DSLA_CU_LOAD_BATCH loads
 * before storing any: one at a time, every load waited a full memory round trip (run 2 measured
 * the chunk kernels at ~35 us per chunk, almost all of it in these loops). */
template <bool GATE, typename T>
__device__ void dsla_cu_load_tile(float *X, int ld, const T *src, size_t base, int hd, int n,
                                  int cols, float scale) {
    const int total = DSLA_CU_C * cols, step = (int)blockDim.x;
    for (int i0 = (int)threadIdx.x; i0 < total; i0 += DSLA_CU_LOAD_BATCH * step) {
        float x[DSLA_CU_LOAD_BATCH];
#pragma unroll
        for (int u = 0; u < DSLA_CU_LOAD_BATCH; u++) {
            const int idx = i0 + u * step, t = idx / cols, c = idx % cols;
            x[u] = idx < total && t < n ? dsla_cu_load(src, base + (size_t)t * hd + c) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < DSLA_CU_LOAD_BATCH; u++) {
            const int idx = i0 + u * step, t = idx / cols, c = idx % cols;
            if (idx < total)
                X[(size_t)t * ld + c] =
                    GATE ? (t < n ? dsla_cu_log_gate(x[u]) : 0.0f) : scale * x[u];
        }
    }
}

/* The tensor-core tile: wmma's tf32 shape is 16 x 16 with k-steps of 8. */
enum { DSLA_CU_TILE = 16, DSLA_CU_TILE_K = 8 };

/* C[M, N] (+)= op(A) op(B) over the whole block, C row-major with leading dimension ldc. op(A) is
 * A[m * lda + k], or with TA the transpose A[k * lda + m]; op(B) is B[k * ldb + n], or with TB
 * B[n * ldb + k]. TC: wmma tf32 tiles (M, N multiples of 16, K of 8; every pointer 32-byte
 * aligned, leading dimensions multiples of 4), each warp taking whole output tiles. Otherwise
 * fp32 FMAs, one output per thread at a time. Ends with __syncthreads, so C is ready for everyone;
 * the caller syncs before, so A and B are. Any of the pointers may be shared or global memory. */
template <bool TC, bool TA, bool TB>
__device__ void dsla_cu_gemm(float *C, int ldc, const float *A, int lda, const float *B, int ldb,
                             int M, int N, int K, bool accumulate) {
    if constexpr (TC) {
        using namespace nvcuda;
        using LA = typename std::conditional<TA, wmma::col_major, wmma::row_major>::type;
        using LB = typename std::conditional<TB, wmma::col_major, wmma::row_major>::type;
        const int warp = (int)threadIdx.x / DSLA_CUDA_WARP,
                  warps = (int)blockDim.x / DSLA_CUDA_WARP;
        const int tn = N / DSLA_CU_TILE, tiles = (M / DSLA_CU_TILE) * tn;
        for (int tile = warp; tile < tiles; tile += warps) {
            const int r = (tile / tn) * DSLA_CU_TILE, c = (tile % tn) * DSLA_CU_TILE;
            wmma::fragment<wmma::accumulator, DSLA_CU_TILE, DSLA_CU_TILE, DSLA_CU_TILE_K, float> f;
            if (accumulate)
                wmma::load_matrix_sync(f, C + (size_t)r * ldc + c, ldc, wmma::mem_row_major);
            else
                wmma::fill_fragment(f, 0.0f);
            for (int k = 0; k < K; k += DSLA_CU_TILE_K) {
                wmma::fragment<wmma::matrix_a, DSLA_CU_TILE, DSLA_CU_TILE, DSLA_CU_TILE_K,
                               wmma::precision::tf32, LA>
                    a;
                wmma::fragment<wmma::matrix_b, DSLA_CU_TILE, DSLA_CU_TILE, DSLA_CU_TILE_K,
                               wmma::precision::tf32, LB>
                    b;
                wmma::load_matrix_sync(a, TA ? A + (size_t)k * lda + r : A + (size_t)r * lda + k,
                                       lda);
                wmma::load_matrix_sync(b, TB ? B + (size_t)c * ldb + k : B + (size_t)k * ldb + c,
                                       ldb);
#pragma unroll
                for (int e = 0; e < a.num_elements; e++)
                    a.x[e] = wmma::__float_to_tf32(a.x[e]);
#pragma unroll
                for (int e = 0; e < b.num_elements; e++)
                    b.x[e] = wmma::__float_to_tf32(b.x[e]);
                wmma::mma_sync(f, a, b, f);
            }
            wmma::store_matrix_sync(C + (size_t)r * ldc + c, f, ldc, wmma::mem_row_major);
        }
    } else {
        for (int idx = (int)threadIdx.x; idx < M * N; idx += (int)blockDim.x) {
            const int m = idx / N, n = idx % N;
            float s = accumulate ? C[(size_t)m * ldc + n] : 0.0f;
            for (int k = 0; k < K; k++) {
                const float a = TA ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k];
                const float b = TB ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n];
                s = fmaf(a, b, s);
            }
            C[(size_t)m * ldc + n] = s;
        }
    }
    __syncthreads();
}

#endif

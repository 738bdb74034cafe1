/* Linear layers on the GPU: y = x @ W^T with W in the PyTorch Linear layout. cuBLAS for fp32
 * (exactness checks) and for bf16 with many rows (the matrix rate); a hand-written GEMV for bf16
 * with a few rows (decode), where the weight stream is the whole cost and cuBLAS reaches only
 * 0.46-0.75 of the copy bandwidth (docs/perf.md). */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/kernels_cuda_train.h"

struct dsla_cuda_blas {
    cublasHandle_t handle;
    int gemv_rows; /* bf16 GEMMs with at most this many rows of x take the GEMV below */
};

#define DSLA_CUBLAS_CHECK(call)                                                                    \
    do {                                                                                           \
        cublasStatus_t dsla_blas_st_ = (call);                                                     \
        if (dsla_blas_st_ != CUBLAS_STATUS_SUCCESS)                                                \
            return dsla_error(DSLA_ERR_INTERNAL, "%s: %s", #call,                                  \
                              cublasGetStatusString(dsla_blas_st_));                               \
    } while (0)

extern "C" dsla_status_t dsla_cuda_blas_create(dsla_cuda_blas_t **out) {
    *out = NULL;
    dsla_cuda_blas_t *h = (dsla_cuda_blas_t *)calloc(1, sizeof *h);
    if (!h) return dsla_error_oom("cuBLAS handle");
    cublasStatus_t st = cublasCreate(&h->handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
        free(h);
        return dsla_error(DSLA_ERR_INTERNAL, "cublasCreate: %s", cublasGetStatusString(st));
    }
    /* DSLA_CUDA_GEMV_ROWS=N (0..8) moves the GEMV/cuBLAS boundary: benchmarks compare the two. */
    const char *env = getenv("DSLA_CUDA_GEMV_ROWS");
    h->gemv_rows = DSLA_CUDA_GEMV_DEFAULT_ROWS;
    if (env && *env) dsla_cuda_blas_set_gemv_rows(h, atoi(env));
    *out = h;
    return DSLA_OK;
}

extern "C" void dsla_cuda_blas_set_gemv_rows(dsla_cuda_blas_t *h, int max_rows) {
    h->gemv_rows = max_rows < 0                         ? 0
                   : max_rows > DSLA_CUDA_GEMV_MAX_ROWS ? DSLA_CUDA_GEMV_MAX_ROWS
                                                        : max_rows;
}

extern "C" void dsla_cuda_blas_destroy(dsla_cuda_blas_t **h) {
    if (!h || !*h) return;
    cublasDestroy((*h)->handle);
    free(*h);
    *h = NULL;
}

/* ---- GEMV: bf16 y[m,n] = x[m,k] w[n,k]^T (+ beta y) for small m ----
 *
 * A decode step reads every weight once and does 2m FLOPs per weight: at m <= 8 that is far below
 * the matrix rate, so the only goal is to stream w at the copy bandwidth. Each warp owns
 * GEMV_W_ROWS rows of w and walks them in 16-byte vectors (8 bf16), lanes side by side so a warp
 * reads 512 contiguous bytes per row per round; GEMV_UNROLL rounds of every row are loaded before
 * any is used, so a lane keeps GEMV_W_ROWS x GEMV_UNROLL independent 16-byte loads in flight. x is
 * small (m x k x 2 bytes, 8 KB per row at k = 4096) and re-read through L1 by every warp. fp32
 * accumulators, one warp reduction per output at the end; the summation order differs from
 * cuBLAS's, not its precision. Schedules that lost to this one on an H200 (docs/perf.md): a
 * software-pipelined loop, 8 rounds in flight, 1 or 4 rows per warp, non-coherent loads with an L2
 * prefetch hint, and a persistent one-wave grid.
 */
enum { GEMV_WARPS = 4, GEMV_W_ROWS = 2, GEMV_UNROLL = 4, GEMV_VEC = 8 };

static __device__ __forceinline__ void gemv_unpack(uint4 v, float f[GEMV_VEC]) {
    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        /* bf16 -> fp32 is a 16-bit shift: low half is the even element. */
        f[2 * j] = __uint_as_float(u[j] << 16);
        f[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
    }
}

static __device__ __forceinline__ float gemv_load_out(const float *y, size_t i) {
    return y[i];
}
static __device__ __forceinline__ float gemv_load_out(const __nv_bfloat16 *y, size_t i) {
    return __bfloat162float(y[i]);
}
static __device__ __forceinline__ void gemv_store_out(float *y, size_t i, float v) {
    y[i] = v;
}
static __device__ __forceinline__ void gemv_store_out(__nv_bfloat16 *y, size_t i, float v) {
    y[i] = __float2bfloat16_rn(v);
}

template <int M, typename TY>
static __global__ void __launch_bounds__(GEMV_WARPS *DSLA_CUDA_WARP)
    gemv_bf16(TY *y, const uint4 *x, const uint4 *w, int n, int k_vecs, float beta) {
    const int lane = threadIdx.x % DSLA_CUDA_WARP;
    const int row0 = (blockIdx.x * GEMV_WARPS + threadIdx.x / DSLA_CUDA_WARP) * GEMV_W_ROWS;
    if (row0 >= n) return;
    /* Rows past n (the last warp of an odd n) re-read row n-1 and are not stored. */
    const uint4 *wrow[GEMV_W_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_W_ROWS; r++)
        wrow[r] = w + (size_t)min(row0 + r, n - 1) * k_vecs;
    float acc[M][GEMV_W_ROWS];
#pragma unroll
    for (int i = 0; i < M; i++)
#pragma unroll
        for (int r = 0; r < GEMV_W_ROWS; r++)
            acc[i][r] = 0.0f;

    for (int base = lane; base < k_vecs; base += DSLA_CUDA_WARP * GEMV_UNROLL) {
        /* Weights are read once per step: streamed (evict-first), so x stays resident in L1. */
        uint4 wv[GEMV_UNROLL][GEMV_W_ROWS];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int v = base + u * DSLA_CUDA_WARP;
#pragma unroll
            for (int r = 0; r < GEMV_W_ROWS; r++)
                wv[u][r] = v < k_vecs ? __ldcs(wrow[r] + v) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; u++) {
            const int v = base + u * DSLA_CUDA_WARP;
            if (v >= k_vecs) break;
            float wf[GEMV_W_ROWS][GEMV_VEC];
#pragma unroll
            for (int r = 0; r < GEMV_W_ROWS; r++)
                gemv_unpack(wv[u][r], wf[r]);
#pragma unroll
            for (int i = 0; i < M; i++) {
                float xf[GEMV_VEC];
                gemv_unpack(__ldg(x + (size_t)i * k_vecs + v), xf);
#pragma unroll
                for (int r = 0; r < GEMV_W_ROWS; r++)
#pragma unroll
                    for (int j = 0; j < GEMV_VEC; j++)
                        acc[i][r] = fmaf(xf[j], wf[r][j], acc[i][r]);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < M; i++)
#pragma unroll
        for (int r = 0; r < GEMV_W_ROWS; r++) {
            const float s = dsla_warp_sum(acc[i][r]);
            const int row = row0 + r;
            /* Output (i, r) is stored by lane i * GEMV_W_ROWS + r: the stores spread over lanes. */
            if (lane == (i * GEMV_W_ROWS + r) % DSLA_CUDA_WARP && row < n) {
                const size_t o = (size_t)i * n + row;
                gemv_store_out(y, o, beta != 0.0f ? s + beta * gemv_load_out(y, o) : s);
            }
        }
}

template <typename TY>
static void gemv_launch(cudaStream_t stream, TY *y, const uint4 *x, const uint4 *w, int m, int n,
                        int k_vecs, float beta) {
    const unsigned blocks = dsla_cuda_blocks_for((size_t)n, GEMV_WARPS * GEMV_W_ROWS);
    const unsigned threads = GEMV_WARPS * DSLA_CUDA_WARP;
    switch (m) {
#define GEMV_CASE(M)                                                                               \
    case M:                                                                                        \
        gemv_bf16<M, TY><<<blocks, threads, 0, stream>>>(y, x, w, n, k_vecs, beta);                \
        break;
        GEMV_CASE(1)
        GEMV_CASE(2)
        GEMV_CASE(3)
        GEMV_CASE(4)
        GEMV_CASE(5)
        GEMV_CASE(6)
        GEMV_CASE(7)
        GEMV_CASE(8)
#undef GEMV_CASE
    }
}

static bool aligned16(const void *p) {
    return ((uintptr_t)p & 15u) == 0;
}

extern "C" int dsla_cuda_gemv_supports(const void *y, const void *x, const void *w, int m, int k) {
    return m >= 1 && m <= DSLA_CUDA_GEMV_MAX_ROWS && k > 0 && k % GEMV_VEC == 0 && aligned16(x) &&
           aligned16(w) && y != NULL;
}

extern "C" dsla_status_t dsla_cuda_gemv(dsla_cuda_stream_t stream, void *y, dsla_dtype_t y_dtype,
                                        const void *x, const void *w, int m, int n, int k,
                                        float beta) {
    if (m <= 0 || n <= 0) return DSLA_OK;
    if (!dsla_cuda_gemv_supports(y, x, w, m, k))
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "dsla_cuda_gemv: m = %d (1..%d), k = %d (a multiple of %d) and 16-byte "
                          "aligned x and w required",
                          m, DSLA_CUDA_GEMV_MAX_ROWS, k, (int)GEMV_VEC);
    const uint4 *x4 = (const uint4 *)x, *w4 = (const uint4 *)w;
    const int k_vecs = k / GEMV_VEC;
    if (y_dtype == DSLA_DTYPE_F32)
        gemv_launch(stream, (float *)y, x4, w4, m, n, k_vecs, beta);
    else if (y_dtype == DSLA_DTYPE_BF16)
        gemv_launch(stream, (__nv_bfloat16 *)y, x4, w4, m, n, k_vecs, beta);
    else
        return dsla_error(DSLA_ERR_UNSUPPORTED, "dsla_cuda_gemv: output %s (f32 or bf16)",
                          dsla_dtype_name(y_dtype));
    DSLA_CUDA_CHECK_LAUNCH("gemv_bf16");
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_gemm(dsla_cuda_blas_t *h, dsla_cuda_stream_t stream, void *y,
                                        dsla_dtype_t y_dtype, const void *x, const void *w,
                                        dsla_dtype_t in_dtype, int m, int n, int k, float beta) {
    if (m <= 0 || n <= 0) return DSLA_OK;
    if (in_dtype == DSLA_DTYPE_BF16 && m <= h->gemv_rows && dsla_cuda_gemv_supports(y, x, w, m, k))
        return dsla_cuda_gemv(stream, y, y_dtype, x, w, m, n, k, beta);
    cudaDataType_t in_type, out_type;
    if (in_dtype == DSLA_DTYPE_F32 && y_dtype == DSLA_DTYPE_F32) {
        in_type = out_type = CUDA_R_32F;
    } else if (in_dtype == DSLA_DTYPE_BF16 &&
               (y_dtype == DSLA_DTYPE_F32 || y_dtype == DSLA_DTYPE_BF16)) {
        in_type = CUDA_R_16BF;
        out_type = y_dtype == DSLA_DTYPE_F32 ? CUDA_R_32F : CUDA_R_16BF;
    } else {
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "dsla_cuda_gemm: inputs %s with output %s; supported: f32->f32, "
                          "bf16->f32, bf16->bf16",
                          dsla_dtype_name(in_dtype), dsla_dtype_name(y_dtype));
    }
    DSLA_CUBLAS_CHECK(cublasSetStream(h->handle, stream));
    const float alpha = 1.0f;
    /* cuBLAS is column-major: row-major y[m,n] is its y^T [n,m] = w [n,k] x^T [k,m], where it reads
     * row-major w as a k x n matrix (so op T) and row-major x as k x m (op N). CUBLAS_COMPUTE_32F
     * (not ..._FAST_TF32) keeps fp32 inputs in full fp32: they are the GPU side of the CPU check.
     */
    DSLA_CUBLAS_CHECK(cublasGemmEx(h->handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, in_type,
                                   k, x, in_type, k, &beta, y, out_type, n, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    return DSLA_OK;
}

/* ---- fp32 GEMMs with either operand transposed (training, kernels_cuda_train.h) ---- */

extern "C" dsla_status_t dsla_cuda_gemm_f32(dsla_cuda_blas_t *h, dsla_cuda_stream_t stream,
                                            float *c, const float *a, bool trans_a, const float *b,
                                            bool trans_b, int m, int n, int k, float beta,
                                            dsla_cuda_dsla_math_t math) {
    if (m <= 0 || n <= 0) return DSLA_OK;
    DSLA_CUBLAS_CHECK(cublasSetStream(h->handle, stream));
    const float alpha = 1.0f;
    /* Row-major c[m,n] is cuBLAS's column-major c^T [n,m] = op(b)^T op(a)^T. Row-major b read
     * column-major is b^T: already op(b)^T when b is stored [k,n] (op N, ld n); transposed back
     * when stored [n,k] (trans_b: op T, ld k). Likewise a: [m,k] stored gives op(a)^T as is (ld k),
     * [k,m] (trans_a) needs op T (ld m). */
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int ldb = trans_b ? k : n, lda = trans_a ? m : k;
    const cublasComputeType_t compute =
        math == DSLA_CUDA_DSLA_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    DSLA_CUBLAS_CHECK(cublasGemmEx(h->handle, op_b, op_a, n, m, k, &alpha, b, CUDA_R_32F, ldb, a,
                                   CUDA_R_32F, lda, &beta, c, CUDA_R_32F, n, compute,
                                   CUBLAS_GEMM_DEFAULT));
    return DSLA_OK;
}

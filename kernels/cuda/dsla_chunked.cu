/* Chunked DSLA forward and backward on the GPU: kernels/cpu/dsla_chunked.c, dsla_chunked_backward.c
 * and dsla_chunk_parts.c, split into launches that each run in parallel.
 *
 *   state_pass<fwd>  one block per (sequence, head, state, slab of value columns), walking the
 *                    chunks in order: stores the state before every chunk in the workspace and the
 *                    final state; S_next = diag(exp(b_last)) S + (k * exp(b_last - b))^T V.
 *   state_pass<rev>  the same walk in reverse for the backward: stores dS, the gradient of the
 * state after every chunk, and dS_0; dS_prev = diag(exp(b_last)) dS + (qw * exp(b))^T dO. Value
 * columns of a state never mix, so the slabs are independent blocks. fwd_out          one block per
 * (sequence, head, chunk), all in shared memory: intra-chunk scores with the secondary split, out =
 * sum_i A_i V + (qw_i * exp(b)) S_prev_i. bwd_chunk        a persistent grid over (sequence, head,
 * state, chunk) items with per-block scratch in global memory (the chunk's ~17 arrays exceed shared
 * memory at d = 128): the CPU's per-chunk backward with S_prev and dS read from the workspace; dq,
 * dk, dv of the two states meet by atomicAdd onto zeros (two addends, so the sum does not depend on
 * their order); dalpha from per-item partials, summed in a fixed order by one block. Chunk tails
 * are padded to DSLA_CHUNK rows with q = k = v = dO = 0 and log g = 0, which leaves every real
 * row's result unchanged and keeps tensor-core tiles whole.
 *
 * Numerics are the CPU's (see dsla_chunk_parts.c): no factor above 1 is formed. Inside a sub-chunk
 * the pairwise decay is a running product of gates; between sub-chunks it is split at the reader's
 * sub-chunk start into two factors <= 1, each a short sum of log-gates from its own end. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/dsla_chunked_tc.cuh"
#include "kernels/cuda/dsla_common.cuh"

enum {
    DSLA_CU_SUB = DSLA_SUBCHUNK,
    /* Shared-memory rows are padded by 4 floats: keeps wmma's 32-byte alignment (rows are multiples
     * of 16 floats plus 4, and tiles start at multiples of 8 rows) and spreads column walks over
     * banks. */
    DSLA_CU_PAD = 4,
    /* Value columns per state_pass block: one 128-byte line per state row; a 7B head (d = 128)
     * gives 4 blocks per head and state, 256 blocks for one sequence. */
    DSLA_CU_STATE_SLAB = 32,
    DSLA_CU_MAX_CHUNK_D = 128,
    /* Key channels per lane when a warp spans a row (d <= 128). */
    DSLA_CU_LANE_CHANNELS = DSLA_CU_MAX_CHUNK_D / DSLA_CUDA_WARP,
    /* Persistent blocks of bwd_chunk: 2 per SM of a 132-SM Hopper. It also bounds the scratch. */
    DSLA_CU_BWD_BLOCKS = 264,
    /* [C, d] arrays in one bwd_chunk block's scratch, plus two [C, C]. */
    DSLA_CU_BWD_ROWS_ARRAYS = 15,
    /* Workspace regions start on this boundary: wmma wants 32 bytes, 256 is cudaMalloc's own. */
    DSLA_CU_WS_ALIGN = 256,
};

static size_t dsla_cu_align(size_t bytes) {
    return (bytes + DSLA_CU_WS_ALIGN - 1) / DSLA_CU_WS_ALIGN * DSLA_CU_WS_ALIGN;
}

/* A switch read once from the environment (cache starts at -1): NAME=0 turns off one that is on by
 * default, NAME=1 turns on one that is off. For side-by-side timings and opt-in kernels. */
static bool dsla_cu_env_switch(int *cache, const char *name, bool on_by_default) {
    if (*cache < 0) {
        const char *env = getenv(name);
        *cache =
            env && strcmp(env, on_by_default ? "0" : "1") == 0 ? !on_by_default : on_by_default;
    }
    return *cache;
}

static size_t dsla_cu_chunks(const dsla_dsla_dims_t *dims) {
    return ((size_t)dims->tokens + DSLA_CU_C - 1) / DSLA_CU_C;
}

static size_t dsla_cu_bwd_items(const dsla_dsla_dims_t *dims) {
    return (size_t)dims->batch * dims->heads * 2 * dsla_cu_chunks(dims);
}

static size_t dsla_cu_bwd_blocks(const dsla_dsla_dims_t *dims) {
    const size_t items = dsla_cu_bwd_items(dims);
    return items < DSLA_CU_BWD_BLOCKS ? items : DSLA_CU_BWD_BLOCKS;
}

static __host__ __device__ size_t dsla_cu_bwd_block_floats(int d) {
    return (size_t)DSLA_CU_BWD_ROWS_ARRAYS * DSLA_CU_C * d + (size_t)2 * DSLA_CU_C * DSLA_CU_C;
}

/* Workspace carve: states and state gradients [B, H, 2, chunks, d, d], the dalpha partials (one
 * double per item), the backward's scratch, then the state pass's prepared keys and decays. */
typedef struct {
    float *states, *dstates, *scratch;
    double *gpart;
    /* The forward state pass's per-chunk inputs (dsla_state_prep): decay-scaled keys
     * [B, H, 2, chunks, C, d] and each chunk's total decay per channel [B, H, 2, chunks, d]. */
    float *kg, *gl;
    /* The tensor-core path's one unslotted delta per walk, [B, H, 2, d, d]. */
    float *extra;
} dsla_cu_ws_t;

static size_t dsla_cu_ws_carve(const dsla_dsla_dims_t *dims, void *base, dsla_cu_ws_t *ws) {
    const size_t d = (size_t)dims->head_dim;
    const size_t states = (size_t)dims->batch * dims->heads * 2 * dsla_cu_chunks(dims) * d * d;
    char *p = (char *)base;
    if (ws) ws->states = (float *)p;
    p += dsla_cu_align(states * sizeof(float));
    if (ws) ws->dstates = (float *)p;
    p += dsla_cu_align(states * sizeof(float));
    if (ws) ws->gpart = (double *)p;
    p += dsla_cu_align(dsla_cu_bwd_items(dims) * sizeof(double));
    if (ws) ws->scratch = (float *)p;
    p += dsla_cu_align(dsla_cu_bwd_blocks(dims) * dsla_cu_bwd_block_floats(dims->head_dim) *
                       sizeof(float));
    const size_t items = (size_t)dims->batch * dims->heads * 2 * dsla_cu_chunks(dims);
    if (ws) ws->kg = (float *)p;
    p += dsla_cu_align(items * DSLA_CU_C * d * sizeof(float));
    if (ws) ws->gl = (float *)p;
    p += dsla_cu_align(items * d * sizeof(float));
    if (ws) ws->extra = (float *)p;
    p += (size_t)dims->batch * dims->heads * 2 * d * d * sizeof(float);
    return (size_t)(p - (char *)base);
}

template <typename T>
__device__ void dsla_cu_load_rows(float *X, int ld, const T *src, size_t base, int hd, int n, int d,
                                  float scale) {
    dsla_cu_load_tile<false>(X, ld, src, base, hd, n, d, scale);
}

template <typename T>
__device__ void dsla_cu_load_log_gates(float *L, int ld, const T *a, size_t base, int hd, int n,
                                       int d) {
    dsla_cu_load_tile<true>(L, ld, a, base, hd, n, d, 1.0f);
}

/* Intra-chunk scores, dsla_cpu_dsla_chunk_intra: A[t, s] = sum_c Q[t,c] K[s,c] exp(sum_{s<u<=t}
 * L[u,c]) for s <= t, 0 above. G holds exp(L) on entry; Tm is scratch and may be G itself (G is
 * read before Tm is first written). Q, K, L, G, Tm: [C, d] with leading dim ld; A: [C, C], lda. */
template <bool TC>
__device__ void dsla_cu_intra(float *A, int lda, const float *Q, const float *K, const float *L,
                              const float *G, float *Tm, int ld, int d) {
    const int lane = (int)threadIdx.x % DSLA_CUDA_WARP, warp = (int)threadIdx.x / DSLA_CUDA_WARP;
    const int warps = (int)blockDim.x / DSLA_CUDA_WARP;
    for (int idx = (int)threadIdx.x; idx < DSLA_CU_C * DSLA_CU_C; idx += (int)blockDim.x)
        A[(size_t)(idx / DSLA_CU_C) * lda + idx % DSLA_CU_C] = 0.0f;
    __syncthreads();
    /* Inside a sub-chunk: one warp per source s, the decay a running product of gates along t. */
    for (int s = warp; s < DSLA_CU_C; s += warps) {
        const int end = (s / DSLA_CU_SUB + 1) * DSLA_CU_SUB;
        float acc[DSLA_CU_LANE_CHANNELS];
#pragma unroll
        for (int m = 0; m < DSLA_CU_LANE_CHANNELS; m++) {
            const int c = lane + m * DSLA_CUDA_WARP;
            acc[m] = c < d ? K[(size_t)s * ld + c] : 0.0f;
        }
        for (int t = s; t < end; t++) {
            float part = 0.0f;
#pragma unroll
            for (int m = 0; m < DSLA_CU_LANE_CHANNELS; m++) {
                const int c = lane + m * DSLA_CUDA_WARP;
                if (c < d) {
                    if (t > s) acc[m] *= G[(size_t)t * ld + c];
                    part += Q[(size_t)t * ld + c] * acc[m];
                }
            }
            part = dsla_warp_sum(part);
            if (lane == 0) A[(size_t)t * lda + s] = part;
        }
    }
    __syncthreads();
    /* Between sub-chunks: rows of sub-chunk I (start p) against every s < p, as one GEMM of
     * Q * exp(sum_{p<=u<=t} L) and K * exp(sum_{s<u<p} L). */
    for (int p = DSLA_CU_SUB; p < DSLA_CU_C; p += DSLA_CU_SUB) {
        for (int c = (int)threadIdx.x; c < d; c += (int)blockDim.x) {
            float acc = 0.0f;
            for (int t = p; t < p + DSLA_CU_SUB; t++) {
                acc += L[(size_t)t * ld + c];
                Tm[(size_t)t * ld + c] = Q[(size_t)t * ld + c] * expf(acc);
            }
            acc = 0.0f;
            for (int t = p - 1; t >= 0; t--) {
                Tm[(size_t)t * ld + c] = K[(size_t)t * ld + c] * expf(acc);
                acc += L[(size_t)t * ld + c];
            }
        }
        __syncthreads();
        dsla_cu_gemm<TC, false, true>(A + (size_t)p * lda, lda, Tm + (size_t)p * ld, ld, Tm, ld,
                                      DSLA_CU_SUB, p, d, false);
    }
}

/* ---- state passes ---- */

/* The forward state pass's inputs for every chunk at once, so that its serial walk over chunks
 * does GEMMs only: kg[t, c] = k[t, c] exp(sum_{t<u<C} L[u, c]) and gl[c] = exp(sum_t L[t, c]),
 * L the log-gates, per (sequence, head, state, chunk), in the order the pass itself used (so the
 * results are bit-identical). One thread per (state, key channel), its 64 steps in sequence;
 * blocks over (chunk, head, sequence). */
template <typename T>
static __global__ void __launch_bounds__(DSLA_CUDA_BLOCK)
    dsla_state_prep(const T *k, const T *a1, const T *a2, float *kg, float *gl, int tokens, int H,
                    int d) {
    const int chunk = (int)blockIdx.x, chunks = (int)gridDim.x, h = (int)blockIdx.y;
    const int b = (int)blockIdx.z, hd = H * d, t0 = chunk * DSLA_CU_C;
    const int n = tokens - t0 < DSLA_CU_C ? tokens - t0 : DSLA_CU_C;
    const size_t base = ((size_t)b * tokens + t0) * hd + (size_t)h * d;
    for (int idx = (int)threadIdx.x; idx < 2 * d; idx += (int)blockDim.x) {
        const int i = idx / d, c = idx % d;
        const T *a = i ? a2 : a1;
        const size_t item = (((size_t)b * H + h) * 2 + i) * (size_t)chunks + (size_t)chunk;
        float *out = kg + item * DSLA_CU_C * (size_t)d;
        float acc = 0.0f;
#pragma unroll 8
        for (int t = DSLA_CU_C - 1; t >= 0; t--) {
            const float kv = t < n ? dsla_cu_load(k, base + (size_t)t * hd + c) : 0.0f;
            const float l =
                t < n ? dsla_cu_log_gate(dsla_cu_load(a, base + (size_t)t * hd + c)) : 0.0f;
            out[(size_t)t * d + c] = kv * expf(acc);
            acc += l;
        }
        gl[item * d + c] = expf(acc);
    }
}

template <typename T, typename TY, bool TC, bool REV>
static __global__ void __launch_bounds__(DSLA_CUDA_BLOCK)
    dsla_state_pass(const T *x, const T *a1, const T *a2, const TY *y, const float *alpha,
                    const float *S1_0, const float *S2_0, float *S1_T, float *S2_T, float *ws,
                    const float *kg, const float *glw, int tokens, int H, int d, int slab) {
    extern __shared__ __align__(128) float sm[];
    const int ldx = d + DSLA_CU_PAD, ldy = slab + DSLA_CU_PAD;
    float *X = sm, *L = X + DSLA_CU_C * ldx, *Y = L + DSLA_CU_C * ldx, *S = Y + DSLA_CU_C * ldy;
    float *gl = S + d * ldy;
    const int col0 = (int)blockIdx.x * slab, h = (int)blockIdx.y >> 1, i = (int)blockIdx.y & 1;
    const int b = (int)blockIdx.z, hd = H * d;
    const int chunks = (tokens + DSLA_CU_C - 1) / DSLA_CU_C;
    const size_t dd = (size_t)d * d, so = ((size_t)b * H + h) * dd;
    const T *a = i ? a2 : a1;
    const float *S0 = i ? S2_0 : S1_0;
    float *ST = i ? S2_T : S1_T;
    float *wsS = ws + (((size_t)b * H + h) * 2 + i) * (size_t)chunks * dd;
    float w[2];
    dsla_cu_mix_weights(alpha, w);
    const float scale = REV ? 1.0f / sqrtf((float)d) : 1.0f;

    for (int idx = (int)threadIdx.x; idx < d * slab; idx += (int)blockDim.x) {
        const int r = idx / slab, j = idx % slab;
        S[r * ldy + j] = S0 ? S0[so + (size_t)r * d + col0 + j] : 0.0f;
    }
    __syncthreads();
    for (int step = 0; step < chunks; step++) {
        const int chunk = REV ? chunks - 1 - step : step, t0 = chunk * DSLA_CU_C;
        const int n = tokens - t0 < DSLA_CU_C ? tokens - t0 : DSLA_CU_C;
        const size_t base = ((size_t)b * tokens + t0) * hd + (size_t)h * d;
        for (int idx = (int)threadIdx.x; idx < d * slab; idx += (int)blockDim.x) {
            const int r = idx / slab, j = idx % slab;
            wsS[(size_t)chunk * dd + (size_t)r * d + col0 + j] = S[r * ldy + j];
        }
        if (!REV && kg) { /* prepared by dsla_state_prep: this chunk's kg and gl */
            const size_t item = (((size_t)b * H + h) * 2 + i) * (size_t)chunks + (size_t)chunk;
            dsla_cu_load_tile<false>(X, ldx, kg, item * DSLA_CU_C * (size_t)d, d, DSLA_CU_C, d,
                                     1.0f);
            dsla_cu_load_tile<false>(Y, ldy, y, base + col0, hd, n, slab, 1.0f);
            for (int c = (int)threadIdx.x; c < d; c += (int)blockDim.x)
                gl[c] = glw[item * d + c];
            __syncthreads();
            for (int idx = (int)threadIdx.x; idx < d * slab; idx += (int)blockDim.x)
                S[(idx / slab) * ldy + idx % slab] *= gl[idx / slab];
            __syncthreads();
            dsla_cu_gemm<TC, true, false>(S, ldy, X, ldx, Y, ldy, d, slab, DSLA_CU_C, true);
            continue;
        }
        dsla_cu_load_rows(X, ldx, x, base, hd, n, d, scale);
        dsla_cu_load_log_gates(L, ldx, a, base, hd, n, d);
        dsla_cu_load_tile<false>(Y, ldy, y, base + col0, hd, n, slab, 1.0f);
        __syncthreads();
        for (int c = (int)threadIdx.x; c < d; c += (int)blockDim.x) {
            float acc = 0.0f;
            if (REV) { /* qg = (w_i q / sqrt(d)) * exp(b_t), b_t inclusive from the chunk start */
                for (int t = 0; t < DSLA_CU_C; t++) {
                    acc += L[t * ldx + c];
                    X[t * ldx + c] = w[i] * X[t * ldx + c] * expf(acc);
                }
            } else { /* kg = k * exp(b_last - b_t): the log-gates after t */
                for (int t = DSLA_CU_C - 1; t >= 0; t--) {
                    X[t * ldx + c] *= expf(acc);
                    acc += L[t * ldx + c];
                }
            }
            gl[c] = expf(acc);
        }
        __syncthreads();
        for (int idx = (int)threadIdx.x; idx < d * slab; idx += (int)blockDim.x)
            S[(idx / slab) * ldy + idx % slab] *= gl[idx / slab];
        __syncthreads();
        dsla_cu_gemm<TC, true, false>(S, ldy, X, ldx, Y, ldy, d, slab, DSLA_CU_C, true);
    }
    if (ST)
        for (int idx = (int)threadIdx.x; idx < d * slab; idx += (int)blockDim.x) {
            const int r = idx / slab, j = idx % slab;
            ST[so + (size_t)r * d + col0 + j] = S[r * ldy + j];
        }
}

static size_t dsla_cu_state_pass_smem(int d, int slab) {
    return sizeof(float) * ((size_t)2 * DSLA_CU_C * (d + DSLA_CU_PAD) +
                            (size_t)(DSLA_CU_C + d) * (slab + DSLA_CU_PAD) + (size_t)d);
}

/* REV false (the forward pass over keys) first prepares every chunk's decayed keys in parallel
 * (dsla_state_prep into prep->kg / prep->gl); REV true walks the chunks itself. */
template <typename T, typename TY, bool TC, bool REV>
static dsla_status_t dsla_cu_launch_state_pass(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                               const T *x, const T *a1, const T *a2, const TY *y,
                                               const float *alpha, const float *S1_0,
                                               const float *S2_0, float *S1_T, float *S2_T,
                                               float *ws, const dsla_cu_ws_t *prep) {
    const int d = dims->head_dim;
    const float *kg = NULL, *gl = NULL;
    const unsigned chunks = (unsigned)dsla_cu_chunks(dims);
    /* DSLA_CUDA_STATE_PREP=0 keeps the in-pass walk (for side-by-side timings). */
    static int use_prep = -1;
    if (!REV && chunks > 0 && dsla_cu_env_switch(&use_prep, "DSLA_CUDA_STATE_PREP", true)) {
        const dim3 pgrid(chunks, (unsigned)dims->heads, (unsigned)dims->batch);
        dsla_state_prep<T><<<pgrid, DSLA_CUDA_BLOCK, 0, stream>>>(x, a1, a2, prep->kg, prep->gl,
                                                                  dims->tokens, dims->heads, d);
        DSLA_CUDA_CHECK_LAUNCH("dsla_state_prep");
        kg = prep->kg;
        gl = prep->gl;
    }
    const int slab = d < DSLA_CU_STATE_SLAB ? d : DSLA_CU_STATE_SLAB;
    const size_t smem = dsla_cu_state_pass_smem(d, slab);
    DSLA_CUDA_CHECK(cudaFuncSetAttribute(dsla_state_pass<T, TY, TC, REV>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)(d / slab), (unsigned)dims->heads * 2, (unsigned)dims->batch);
    dsla_state_pass<T, TY, TC, REV>
        <<<grid, DSLA_CUDA_BLOCK, smem, stream>>>(x, a1, a2, y, alpha, S1_0, S2_0, S1_T, S2_T, ws,
                                                  kg, gl, dims->tokens, dims->heads, d, slab);
    DSLA_CUDA_CHECK_LAUNCH("dsla_state_pass");
    return DSLA_OK;
}

/* ---- forward output ---- */

template <typename T, bool TC>
static __global__ void __launch_bounds__(DSLA_CUDA_BLOCK)
    dsla_fwd_out(const T *q, const T *k, const T *v, const T *a1, const T *a2, const float *alpha,
                 const float *states, float *out, int tokens, int H, int d) {
    extern __shared__ __align__(128) float sm[];
    const int ld = d + DSLA_CU_PAD, lda = DSLA_CU_C + DSLA_CU_PAD;
    const size_t rows = (size_t)DSLA_CU_C * ld;
    float *K = sm, *V = K + rows, *L = V + rows, *Q = L + rows, *Tm = Q + rows, *O = Tm + rows;
    float *A = O + rows;
    const int chunk = (int)blockIdx.x, h = (int)blockIdx.y, b = (int)blockIdx.z, hd = H * d;
    const int chunks = (int)gridDim.x, t0 = chunk * DSLA_CU_C;
    const int n = tokens - t0 < DSLA_CU_C ? tokens - t0 : DSLA_CU_C;
    const size_t base = ((size_t)b * tokens + t0) * hd + (size_t)h * d, dd = (size_t)d * d;
    float w[2];
    dsla_cu_mix_weights(alpha, w);
    const float scale = 1.0f / sqrtf((float)d);

    dsla_cu_load_rows(K, ld, k, base, hd, n, d, 1.0f);
    dsla_cu_load_rows(V, ld, v, base, hd, n, d, 1.0f);
    for (int idx = (int)threadIdx.x; idx < DSLA_CU_C * d; idx += (int)blockDim.x)
        O[(size_t)(idx / d) * ld + idx % d] = 0.0f;
    for (int i = 0; i < 2; i++) {
        const float *S_prev = states + ((((size_t)b * H + h) * 2 + i) * chunks + chunk) * dd;
        dsla_cu_load_rows(Q, ld, q, base, hd, n, d, scale);
        dsla_cu_load_log_gates(L, ld, i ? a2 : a1, base, hd, n, d);
        __syncthreads();
        for (int idx = (int)threadIdx.x; idx < DSLA_CU_C * d; idx += (int)blockDim.x) {
            const size_t e = (size_t)(idx / d) * ld + idx % d;
            Q[e] *= w[i];
            Tm[e] = expf(L[e]);
        }
        __syncthreads();
        dsla_cu_intra<TC>(A, lda, Q, K, L, Tm, Tm, ld, d);
        dsla_cu_gemm<TC, false, false>(O, ld, A, lda, V, ld, DSLA_CU_C, d, DSLA_CU_C, true);
        for (int c = (int)threadIdx.x; c < d; c += (int)blockDim.x) {
            float acc = 0.0f;
            for (int t = 0; t < DSLA_CU_C; t++) {
                acc += L[(size_t)t * ld + c];
                Tm[(size_t)t * ld + c] = Q[(size_t)t * ld + c] * expf(acc);
            }
        }
        __syncthreads();
        /* S_prev into shared memory over L and Q (free now; 2 C >= d rows of ld fit it): the
         * GEMM's operand loads then wait on shared memory, not on a global round trip each. */
        float *S = L;
        for (int i0 = (int)threadIdx.x; i0 < d * d / 4; i0 += DSLA_CU_LOAD_BATCH * blockDim.x) {
            float4 x[DSLA_CU_LOAD_BATCH];
#pragma unroll
            for (int u = 0; u < DSLA_CU_LOAD_BATCH; u++) {
                const int idx = i0 + u * (int)blockDim.x;
                if (idx < d * d / 4) x[u] = ((const float4 *)S_prev)[idx];
            }
#pragma unroll
            for (int u = 0; u < DSLA_CU_LOAD_BATCH; u++) {
                const int idx = i0 + u * (int)blockDim.x, r = idx / (d / 4),
                          c4 = (idx % (d / 4)) * 4;
                if (idx < d * d / 4) *(float4 *)(S + (size_t)r * ld + c4) = x[u];
            }
        }
        __syncthreads();
        dsla_cu_gemm<TC, false, false>(O, ld, Tm, ld, S, ld, DSLA_CU_C, d, d, true);
    }
    for (int idx = (int)threadIdx.x; idx < n * d; idx += (int)blockDim.x) {
        const int t = idx / d, c = idx % d;
        out[base + (size_t)t * hd + c] = O[(size_t)t * ld + c];
    }
}

static size_t dsla_cu_fwd_out_smem(int d) {
    return sizeof(float) * ((size_t)6 * DSLA_CU_C * (d + DSLA_CU_PAD) +
                            (size_t)DSLA_CU_C * (DSLA_CU_C + DSLA_CU_PAD));
}

/* ---- backward of one chunk ---- */

/* One bwd_chunk block's scratch arrays, [C, d] (leading dim d) unless noted. */
typedef struct {
    float *Q, *K, *V, *DO, *L, *G, *EB, *ER, *DQ, *DK, *KS, *DV, *Tm, *F, *R;
    float *A, *DA; /* [C, C] */
} dsla_cu_bwd_scratch_t;

__device__ void dsla_cu_bwd_carve(dsla_cu_bwd_scratch_t *s, float *p, int d) {
    float **arrays[DSLA_CU_BWD_ROWS_ARRAYS] = {&s->Q,  &s->K,  &s->V,  &s->DO, &s->L,
                                               &s->G,  &s->EB, &s->ER, &s->DQ, &s->DK,
                                               &s->KS, &s->DV, &s->Tm, &s->F,  &s->R};
    for (int i = 0; i < DSLA_CU_BWD_ROWS_ARRAYS; i++) {
        *arrays[i] = p;
        p += (size_t)DSLA_CU_C * d;
    }
    s->A = p;
    s->DA = p + DSLA_CU_C * DSLA_CU_C;
}

/* dsla_cpu_dsla_chunk_intra_backward: adds the intra pairs s' < t of DA to DQ and DK. */
template <bool TC> __device__ void dsla_cu_intra_backward(const dsla_cu_bwd_scratch_t *s, int d) {
    const int lane = (int)threadIdx.x % DSLA_CUDA_WARP, warp = (int)threadIdx.x / DSLA_CUDA_WARP;
    const int warps = (int)blockDim.x / DSLA_CUDA_WARP;
    /* Inside a sub-chunk, dq side: one warp per reader t (it alone writes DQ row t). */
    for (int t = warp; t < DSLA_CU_C; t += warps) {
        const int start = (t / DSLA_CU_SUB) * DSLA_CU_SUB;
        float acc[DSLA_CU_LANE_CHANNELS];
#pragma unroll
        for (int m = 0; m < DSLA_CU_LANE_CHANNELS; m++)
            acc[m] = 1.0f;
        for (int j = t - 1; j >= start; j--) {
            const float da = s->DA[(size_t)t * DSLA_CU_C + j];
#pragma unroll
            for (int m = 0; m < DSLA_CU_LANE_CHANNELS; m++) {
                const int c = lane + m * DSLA_CUDA_WARP;
                if (c < d) {
                    acc[m] *= s->G[(size_t)(j + 1) * d + c];
                    s->DQ[(size_t)t * d + c] += (da * acc[m]) * s->K[(size_t)j * d + c];
                }
            }
        }
    }
    /* dk side: one warp per source j. */
    for (int j = warp; j < DSLA_CU_C; j += warps) {
        const int end = (j / DSLA_CU_SUB + 1) * DSLA_CU_SUB;
        float acc[DSLA_CU_LANE_CHANNELS];
#pragma unroll
        for (int m = 0; m < DSLA_CU_LANE_CHANNELS; m++)
            acc[m] = 1.0f;
        for (int t = j + 1; t < end; t++) {
            const float da = s->DA[(size_t)t * DSLA_CU_C + j];
#pragma unroll
            for (int m = 0; m < DSLA_CU_LANE_CHANNELS; m++) {
                const int c = lane + m * DSLA_CUDA_WARP;
                if (c < d) {
                    acc[m] *= s->G[(size_t)t * d + c];
                    s->DK[(size_t)j * d + c] += (da * acc[m]) * s->Q[(size_t)t * d + c];
                }
            }
        }
    }
    __syncthreads();
    /* Between sub-chunks, with the forward's factors: F holds fq (rows of I) and fk (rows < p),
     * Tm the rows times their factors, R the two GEMM results (disjoint rows again). */
    for (int p = DSLA_CU_SUB; p < DSLA_CU_C; p += DSLA_CU_SUB) {
        for (int c = (int)threadIdx.x; c < d; c += (int)blockDim.x) {
            float acc = 0.0f;
            for (int t = p; t < p + DSLA_CU_SUB; t++) {
                const size_t e = (size_t)t * d + c;
                acc += s->L[e];
                s->F[e] = expf(acc);
                s->Tm[e] = s->Q[e] * s->F[e];
            }
            acc = 0.0f;
            for (int t = p - 1; t >= 0; t--) {
                const size_t e = (size_t)t * d + c;
                s->F[e] = expf(acc);
                s->Tm[e] = s->K[e] * s->F[e];
                acc += s->L[e];
            }
        }
        __syncthreads();
        const float *da = s->DA + (size_t)p * DSLA_CU_C;
        dsla_cu_gemm<TC, false, false>(s->R + (size_t)p * d, d, da, DSLA_CU_C, s->Tm, d,
                                       DSLA_CU_SUB, d, p, false);
        dsla_cu_gemm<TC, true, false>(s->R, d, da, DSLA_CU_C, s->Tm + (size_t)p * d, d, p, d,
                                      DSLA_CU_SUB, false);
        for (int idx = (int)threadIdx.x; idx < (p + DSLA_CU_SUB) * d; idx += (int)blockDim.x) {
            if (idx >= p * d)
                s->DQ[idx] += s->R[idx] * s->F[idx];
            else
                s->DK[idx] += s->R[idx] * s->F[idx];
        }
        __syncthreads();
    }
}

template <typename T, bool TC>
static __global__ void __launch_bounds__(DSLA_CUDA_BLOCK)
    dsla_bwd_chunk(const T *q, const T *k, const T *v, const T *a1, const T *a2, const float *alpha,
                   const float *dout, const float *states, const float *dstates, float *dq,
                   float *dk, float *dv, float *da1, float *da2, double *gpart, float *scratch,
                   int batch, int tokens, int H, int d) {
    __shared__ float gl[DSLA_CU_MAX_CHUNK_D], rowsum[DSLA_CU_MAX_CHUNK_D];
    __shared__ double red[DSLA_CUDA_BLOCK / DSLA_CUDA_WARP];
    dsla_cu_bwd_scratch_t s;
    dsla_cu_bwd_carve(&s, scratch + (size_t)blockIdx.x * dsla_cu_bwd_block_floats(d), d);
    const int chunks = (tokens + DSLA_CU_C - 1) / DSLA_CU_C, hd = H * d;
    const size_t items = (size_t)batch * H * 2 * chunks, dd = (size_t)d * d;
    const size_t rows = (size_t)DSLA_CU_C * d;
    float w[2];
    dsla_cu_mix_weights(alpha, w);
    const float scale = 1.0f / sqrtf((float)d);

    for (size_t item = blockIdx.x; item < items; item += gridDim.x) {
        const int chunk = (int)(item % chunks), i = (int)(item / chunks % 2);
        const int h = (int)(item / chunks / 2 % H), b = (int)(item / chunks / 2 / H);
        const int t0 = chunk * DSLA_CU_C, n = tokens - t0 < DSLA_CU_C ? tokens - t0 : DSLA_CU_C;
        const size_t base = ((size_t)b * tokens + t0) * hd + (size_t)h * d;
        const float *S_prev = states + item * dd, *dS = dstates + item * dd;
        const T *a = i ? a2 : a1;
        float *da_out = i ? da2 : da1;

        dsla_cu_load_rows(s.Q, d, q, base, hd, n, d, scale);
        dsla_cu_load_rows(s.K, d, k, base, hd, n, d, 1.0f);
        dsla_cu_load_rows(s.V, d, v, base, hd, n, d, 1.0f);
        dsla_cu_load_rows(s.DO, d, dout, base, hd, n, d, 1.0f);
        dsla_cu_load_log_gates(s.L, d, a, base, hd, n, d);
        __syncthreads();
        for (int c = (int)threadIdx.x; c < d; c += (int)blockDim.x) {
            float acc = 0.0f;
            for (int t = 0; t < DSLA_CU_C; t++) {
                const size_t e = (size_t)t * d + c;
                s.Q[e] *= w[i];
                s.G[e] = expf(s.L[e]);
                acc += s.L[e];
                s.EB[e] = expf(acc);
            }
            gl[c] = expf(acc);
            acc = 0.0f;
            for (int t = DSLA_CU_C - 1; t >= 0; t--) {
                const size_t e = (size_t)t * d + c;
                s.ER[e] = expf(acc);
                acc += s.L[e];
            }
        }
        __syncthreads();
        dsla_cu_intra<TC>(s.A, DSLA_CU_C, s.Q, s.K, s.L, s.G, s.Tm, d, d);
        dsla_cu_gemm<TC, false, true>(s.DA, DSLA_CU_C, s.DO, d, s.V, d, DSLA_CU_C, DSLA_CU_C, d,
                                      false);
        for (int idx = (int)threadIdx.x; idx < DSLA_CU_C * DSLA_CU_C; idx += (int)blockDim.x)
            if (idx % DSLA_CU_C > idx / DSLA_CU_C) s.DA[idx] = 0.0f;
        for (size_t e = threadIdx.x; e < rows; e += blockDim.x)
            s.Tm[e] = s.K[e] * s.ER[e];
        __syncthreads();
        dsla_cu_gemm<TC, true, false>(s.DV, d, s.A, DSLA_CU_C, s.DO, d, DSLA_CU_C, d, DSLA_CU_C,
                                      false);
        dsla_cu_gemm<TC, false, false>(s.DV, d, s.Tm, d, dS, d, DSLA_CU_C, d, d, true);
        dsla_cu_gemm<TC, false, true>(s.DQ, d, s.DO, d, S_prev, d, DSLA_CU_C, d, d, false);
        dsla_cu_gemm<TC, false, true>(s.KS, d, s.V, d, dS, d, DSLA_CU_C, d, d, false);
        for (size_t e = threadIdx.x; e < rows; e += blockDim.x) {
            s.DQ[e] *= s.EB[e];
            s.KS[e] *= s.ER[e];
            s.DK[e] = 0.0f;
        }
        __syncthreads();
        /* sum_j S_prev[c, j] dS[c, j], a warp per row so that the reads coalesce */
        for (int c = (int)threadIdx.x / DSLA_CUDA_WARP; c < d;
             c += (int)blockDim.x / DSLA_CUDA_WARP) {
            float sum = 0.0f;
            for (int j = (int)threadIdx.x % DSLA_CUDA_WARP; j < d; j += DSLA_CUDA_WARP)
                sum += S_prev[(size_t)c * d + j] * dS[(size_t)c * d + j];
            sum = dsla_warp_sum(sum);
            if (threadIdx.x % DSLA_CUDA_WARP == 0) rowsum[c] = sum;
        }
        dsla_cu_intra_backward<TC>(&s, d);

        /* Log-gate gradient (dsla_cpu_dsla_chunked_backward's comment says which pairs): a prefix
         * sum for k_s -> S_next, the state pairs S_prev -> S_next, a suffix sum for the readers;
         * then the intra diagonal joins dq and dk. F holds the prefix. */
        for (int c = (int)threadIdx.x; c < d; c += (int)blockDim.x) {
            float acc = gl[c] * rowsum[c];
            for (int t = 0; t < DSLA_CU_C; t++) {
                const size_t e = (size_t)t * d + c;
                s.F[e] = acc;
                acc += s.K[e] * s.KS[e];
            }
            acc = 0.0f;
            for (int t = DSLA_CU_C - 1; t >= 0; t--) {
                const size_t e = (size_t)t * d + c;
                const float diag = s.DA[(size_t)t * DSLA_CU_C + t];
                acc += s.Q[e] * s.DQ[e] - s.K[e] * s.DK[e];
                if (t < n) {
                    const size_t g = base + (size_t)t * hd + c;
                    da_out[g] = (acc + s.F[e]) * dsla_cu_log_gate_grad(dsla_cu_load(a, g));
                }
                s.DQ[e] += diag * s.K[e];
                s.DK[e] += diag * s.Q[e] + s.KS[e];
            }
        }
        __syncthreads();

        const float wq = w[i] * scale;
        double g = 0.0;
        for (int idx = (int)threadIdx.x; idx < n * d; idx += (int)blockDim.x) {
            const int t = idx / d, c = idx % d;
            const size_t e = (size_t)t * d + c, o = base + (size_t)t * hd + c;
            g += (double)(scale * dsla_cu_load(q, o)) * s.DQ[e];
            atomicAdd(dq + o, wq * s.DQ[e]);
            atomicAdd(dk + o, s.DK[e]);
            atomicAdd(dv + o, s.DV[e]);
        }
        for (int off = DSLA_CUDA_WARP / 2; off > 0; off >>= 1)
            g += __shfl_xor_sync(0xffffffffu, g, off);
        if (threadIdx.x % DSLA_CUDA_WARP == 0) red[threadIdx.x / DSLA_CUDA_WARP] = g;
        __syncthreads();
        if (threadIdx.x == 0) {
            double total = 0.0;
            for (int wi = 0; wi < (int)blockDim.x / DSLA_CUDA_WARP; wi++)
                total += red[wi];
            gpart[item] = total;
        }
        __syncthreads();
    }
}

/* dalpha = w1 w2 (G_1 - G_2), G_i summed over the items of state i in a fixed order. */
static __global__ void dsla_dalpha(const double *gpart, size_t items, int chunks,
                                   const float *alpha, float *dalpha) {
    __shared__ double red[2][DSLA_CUDA_BLOCK];
    double g[2] = {0.0, 0.0};
    for (size_t it = threadIdx.x; it < items; it += blockDim.x)
        g[(it / (size_t)chunks) % 2] += gpart[it];
    red[0][threadIdx.x] = g[0];
    red[1][threadIdx.x] = g[1];
    __syncthreads();
    for (int half = (int)blockDim.x / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) {
            red[0][threadIdx.x] += red[0][threadIdx.x + half];
            red[1][threadIdx.x] += red[1][threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float w[2];
        dsla_cu_mix_weights(alpha, w);
        const double w1w2 = (double)w[0] * w[1];
        dalpha[0] = (float)(w1w2 * (red[0][0] - red[1][0]));
        dalpha[1] = -dalpha[0];
    }
}

/* ---- entry points ---- */

extern "C" int dsla_cuda_dsla_chunked_supports(int head_dim) {
    return head_dim >= DSLA_CU_TILE && head_dim % DSLA_CU_TILE == 0 &&
           head_dim <= DSLA_CU_MAX_CHUNK_D;
}

extern "C" size_t dsla_cuda_dsla_chunked_workspace_bytes(const dsla_dsla_dims_t *dims) {
    if (!dims || dims->batch < 1 || dims->tokens < 0 || dims->heads < 1 || dims->head_dim < 1)
        return 0;
    return dsla_cu_ws_carve(dims, NULL, NULL);
}

/* MATH_TF32 at head_dim 64 or 128 takes dsla_chunked_tc.cu's kernels (state deltas in parallel, a
 * memory-speed scan, mma.sync outputs); DSLA_CUDA_TC_PATH=0 keeps this file's for side-by-side
 * timings. */
static bool dsla_cu_tc_path(const dsla_dsla_dims_t *dims, dsla_cuda_dsla_math_t math) {
    static int enabled = -1;
    return dsla_cu_env_switch(&enabled, "DSLA_CUDA_TC_PATH", true) &&
           math == DSLA_CUDA_DSLA_MATH_TF32 && dsla_cu_tc_supports(dims->head_dim);
}

/* Variants of dsla_chunked_tc.cu's kernels, for side-by-side timings: DSLA_CUDA_TC_WALK=1, the
 * state passes as one fused walk (opt-in: held to the CPU, 4-6% faster than tc_delta + tc_scan on
 * an H100, 1% slower on an H200); DSLA_CUDA_TC_BWD_PAIRS=0, dsla_tc_bwd with one warp per sub-chunk
 * instead of two (the default two: ~2x faster at 32K tokens on an H100, docs/perf.md);
 * DSLA_CUDA_TC_OUT_PAIRS=0, dsla_tc_out with one warp per sub-chunk instead of two (the default
 * two: the forward 1.21x faster at 32K tokens on an H200). */
static dsla_cu_tc_ws_t dsla_cu_tc_ws(const dsla_cu_ws_t *ws) {
    static int walk = -1, bwd_pairs = -1, out_pairs = -1;
    const dsla_cu_tc_ws_t t = {ws->states,
                               ws->dstates,
                               ws->extra,
                               ws->gl,
                               ws->gpart,
                               dsla_cu_env_switch(&walk, "DSLA_CUDA_TC_WALK", false),
                               dsla_cu_env_switch(&bwd_pairs, "DSLA_CUDA_TC_BWD_PAIRS", true),
                               dsla_cu_env_switch(&out_pairs, "DSLA_CUDA_TC_OUT_PAIRS", true)};
    return t;
}

/* dsla_chunked_tc.cu's per-chunk backward in place of dsla_bwd_chunk (2.3x faster forward+backward
 * at 32K tokens on an H100, docs/perf.md); DSLA_CUDA_TC_BWD=0 keeps dsla_bwd_chunk. */
static bool dsla_cu_tc_bwd_path(const dsla_dsla_dims_t *dims, dsla_cuda_dsla_math_t math) {
    static int enabled = -1;
    return dsla_cu_env_switch(&enabled, "DSLA_CUDA_TC_BWD", true) && dsla_cu_tc_path(dims, math);
}

static dsla_status_t dsla_cu_check(const char *who, const dsla_dsla_dims_t *dims,
                                   const dsla_cuda_dsla_in_t *in, dsla_cuda_dsla_math_t math,
                                   void *workspace, size_t workspace_bytes) {
    if (!dims || !in || !in->q || !in->k || !in->v || !in->a1 || !in->a2 || !in->alpha)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: dims and in (q, k, v, a1, a2, alpha) are required", who);
    if (dims->batch < 1 || dims->tokens < 0 || dims->heads < 1 || dims->batch > 65535 ||
        dims->heads > 32767)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: batch %d (1..65535), tokens %d (>= 0), heads %d (1..32767)", who,
                          dims->batch, dims->tokens, dims->heads);
    if (!dsla_cuda_dsla_chunked_supports(dims->head_dim))
        return dsla_error(DSLA_ERR_UNSUPPORTED, "%s: head_dim %d (multiples of %d up to %d)", who,
                          dims->head_dim, DSLA_CU_TILE, DSLA_CU_MAX_CHUNK_D);
    if (in->dtype != DSLA_DTYPE_F32 && in->dtype != DSLA_DTYPE_BF16)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "%s: input dtype %s (f32 or bf16)", who,
                          dsla_dtype_name(in->dtype));
    if (math != DSLA_CUDA_DSLA_MATH_F32 && math != DSLA_CUDA_DSLA_MATH_TF32)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: math %d (F32 or TF32)", who, (int)math);
    const size_t need = dsla_cu_ws_carve(dims, NULL, NULL);
    if (!workspace || workspace_bytes < need)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: workspace of %zu bytes, need %zu (dsla_cuda_dsla_chunked_"
                          "workspace_bytes)",
                          who, workspace ? workspace_bytes : 0, need);
    return DSLA_OK;
}

template <typename T, bool TC>
static dsla_status_t dsla_cu_forward(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                     const dsla_cuda_dsla_in_t *in, const float *S1_0,
                                     const float *S2_0, float *out, float *S1_T, float *S2_T,
                                     const dsla_cu_ws_t *ws) {
    const T *q = (const T *)in->q, *k = (const T *)in->k, *v = (const T *)in->v;
    const T *a1 = (const T *)in->a1, *a2 = (const T *)in->a2;
    DSLA_TRY((dsla_cu_launch_state_pass<T, T, TC, false>(stream, dims, k, a1, a2, v, in->alpha,
                                                         S1_0, S2_0, S1_T, S2_T, ws->states, ws)));
    const int chunks = (int)dsla_cu_chunks(dims);
    if (chunks == 0) return DSLA_OK;
    const size_t smem = dsla_cu_fwd_out_smem(dims->head_dim);
    DSLA_CUDA_CHECK(cudaFuncSetAttribute(dsla_fwd_out<T, TC>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)chunks, (unsigned)dims->heads, (unsigned)dims->batch);
    dsla_fwd_out<T, TC><<<grid, DSLA_CUDA_BLOCK, smem, stream>>>(
        q, k, v, a1, a2, in->alpha, ws->states, out, dims->tokens, dims->heads, dims->head_dim);
    DSLA_CUDA_CHECK_LAUNCH("dsla_fwd_out");
    return DSLA_OK;
}

template <typename T, bool TC>
static dsla_status_t
dsla_cu_backward(cudaStream_t stream, const dsla_dsla_dims_t *dims, const dsla_cuda_dsla_in_t *in,
                 const float *S1_0, const float *S2_0, const float *dout, const float *dS1_T,
                 const float *dS2_T, const dsla_dsla_grad_t *grad, float *dS1_0, float *dS2_0,
                 const dsla_cu_ws_t *ws, bool states_kept) {
    const T *q = (const T *)in->q, *k = (const T *)in->k, *v = (const T *)in->v;
    const T *a1 = (const T *)in->a1, *a2 = (const T *)in->a2;
    const dsla_cuda_dsla_math_t math = TC ? DSLA_CUDA_DSLA_MATH_TF32 : DSLA_CUDA_DSLA_MATH_F32;
    const dsla_cu_tc_ws_t tws = dsla_cu_tc_ws(ws);
    /* ws->states: the state before every chunk, left by the forward when states_kept. Both paths
     * store them in the same layout, so either forward serves either backward. */
    if (dsla_cu_tc_path(dims, math)) {
        if (!states_kept)
            DSLA_TRY(dsla_cu_tc_states(stream, dims, in, S1_0, S2_0, NULL, NULL, &tws));
        DSLA_TRY(dsla_cu_tc_dstates(stream, dims, in, dout, dS1_T, dS2_T, dS1_0, dS2_0, &tws));
    } else {
        if (!states_kept)
            DSLA_TRY((dsla_cu_launch_state_pass<T, T, TC, false>(
                stream, dims, k, a1, a2, v, in->alpha, S1_0, S2_0, NULL, NULL, ws->states, ws)));
        DSLA_TRY((dsla_cu_launch_state_pass<T, float, TC, true>(stream, dims, q, a1, a2, dout,
                                                                in->alpha, dS1_T, dS2_T, dS1_0,
                                                                dS2_0, ws->dstates, ws)));
    }
    const size_t n = (size_t)dims->batch * dims->tokens * dims->heads * dims->head_dim;
    DSLA_CUDA_CHECK(cudaMemsetAsync(grad->dq, 0, n * sizeof(float), stream));
    DSLA_CUDA_CHECK(cudaMemsetAsync(grad->dk, 0, n * sizeof(float), stream));
    DSLA_CUDA_CHECK(cudaMemsetAsync(grad->dv, 0, n * sizeof(float), stream));
    const size_t items = dsla_cu_bwd_items(dims);
    if (dsla_cu_tc_bwd_path(dims, math)) {
        DSLA_TRY(dsla_cu_tc_bwd(stream, dims, in, dout, grad, &tws));
    } else if (items > 0) {
        dsla_bwd_chunk<T, TC><<<(unsigned)dsla_cu_bwd_blocks(dims), DSLA_CUDA_BLOCK, 0, stream>>>(
            q, k, v, a1, a2, in->alpha, dout, ws->states, ws->dstates, grad->dq, grad->dk, grad->dv,
            grad->da1, grad->da2, ws->gpart, ws->scratch, dims->batch, dims->tokens, dims->heads,
            dims->head_dim);
        DSLA_CUDA_CHECK_LAUNCH("dsla_bwd_chunk");
    }
    const int chunks = (int)dsla_cu_chunks(dims);
    dsla_dalpha<<<1, DSLA_CUDA_BLOCK, 0, stream>>>(ws->gpart, items, chunks > 0 ? chunks : 1,
                                                   in->alpha, grad->dalpha);
    DSLA_CUDA_CHECK_LAUNCH("dsla_dalpha");
    return DSLA_OK;
}

extern "C" dsla_status_t
dsla_cuda_dsla_chunked_forward(dsla_cuda_stream_t stream, const dsla_dsla_dims_t *dims,
                               const dsla_cuda_dsla_in_t *in, dsla_cuda_dsla_math_t math,
                               const float *S1_0, const float *S2_0, float *out, float *S1_T,
                               float *S2_T, void *workspace, size_t workspace_bytes) {
    static const char who[] = "dsla_cuda_dsla_chunked_forward";
    DSLA_TRY(dsla_cu_check(who, dims, in, math, workspace, workspace_bytes));
    if (!out && dims->tokens > 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: out is NULL", who);
    dsla_cu_ws_t ws;
    dsla_cu_ws_carve(dims, workspace, &ws);
    const bool tc = math == DSLA_CUDA_DSLA_MATH_TF32;
    if (dsla_cu_tc_path(dims, math)) {
        const dsla_cu_tc_ws_t tws = dsla_cu_tc_ws(&ws);
        DSLA_TRY(dsla_cu_tc_states(stream, dims, in, S1_0, S2_0, S1_T, S2_T, &tws));
        return dsla_cu_tc_out(stream, dims, in, out, &tws);
    }
    if (in->dtype == DSLA_DTYPE_BF16)
        return tc ? dsla_cu_forward<__nv_bfloat16, true>(stream, dims, in, S1_0, S2_0, out, S1_T,
                                                         S2_T, &ws)
                  : dsla_cu_forward<__nv_bfloat16, false>(stream, dims, in, S1_0, S2_0, out, S1_T,
                                                          S2_T, &ws);
    return tc ? dsla_cu_forward<float, true>(stream, dims, in, S1_0, S2_0, out, S1_T, S2_T, &ws)
              : dsla_cu_forward<float, false>(stream, dims, in, S1_0, S2_0, out, S1_T, S2_T, &ws);
}

static dsla_status_t
dsla_cu_backward_entry(const char *who, dsla_cuda_stream_t stream, const dsla_dsla_dims_t *dims,
                       const dsla_cuda_dsla_in_t *in, dsla_cuda_dsla_math_t math, const float *S1_0,
                       const float *S2_0, const float *dout, const float *dS1_T, const float *dS2_T,
                       const dsla_dsla_grad_t *grad, float *dS1_0, float *dS2_0, void *workspace,
                       size_t workspace_bytes, bool states_kept) {
    DSLA_TRY(dsla_cu_check(who, dims, in, math, workspace, workspace_bytes));
    if (!grad || !grad->dq || !grad->dk || !grad->dv || !grad->da1 || !grad->da2 || !grad->dalpha ||
        (!dout && dims->tokens > 0))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: dout and all of dq, dk, dv, da1, da2, dalpha are required", who);
    dsla_cu_ws_t ws;
    dsla_cu_ws_carve(dims, workspace, &ws);
    const bool tc = math == DSLA_CUDA_DSLA_MATH_TF32;
#define DSLA_CU_BACKWARD(T, TC)                                                                    \
    dsla_cu_backward<T, TC>(stream, dims, in, S1_0, S2_0, dout, dS1_T, dS2_T, grad, dS1_0, dS2_0,  \
                            &ws, states_kept)
    if (in->dtype == DSLA_DTYPE_BF16)
        return tc ? DSLA_CU_BACKWARD(__nv_bfloat16, true) : DSLA_CU_BACKWARD(__nv_bfloat16, false);
    return tc ? DSLA_CU_BACKWARD(float, true) : DSLA_CU_BACKWARD(float, false);
#undef DSLA_CU_BACKWARD
}

extern "C" dsla_status_t dsla_cuda_dsla_chunked_backward(
    dsla_cuda_stream_t stream, const dsla_dsla_dims_t *dims, const dsla_cuda_dsla_in_t *in,
    dsla_cuda_dsla_math_t math, const float *S1_0, const float *S2_0, const float *dout,
    const float *dS1_T, const float *dS2_T, const dsla_dsla_grad_t *grad, float *dS1_0,
    float *dS2_0, void *workspace, size_t workspace_bytes) {
    return dsla_cu_backward_entry("dsla_cuda_dsla_chunked_backward", stream, dims, in, math, S1_0,
                                  S2_0, dout, dS1_T, dS2_T, grad, dS1_0, dS2_0, workspace,
                                  workspace_bytes, false);
}

extern "C" dsla_status_t dsla_cuda_dsla_chunked_backward_after_forward(
    dsla_cuda_stream_t stream, const dsla_dsla_dims_t *dims, const dsla_cuda_dsla_in_t *in,
    dsla_cuda_dsla_math_t math, const float *S1_0, const float *S2_0, const float *dout,
    const float *dS1_T, const float *dS2_T, const dsla_dsla_grad_t *grad, float *dS1_0,
    float *dS2_0, void *workspace, size_t workspace_bytes) {
    return dsla_cu_backward_entry("dsla_cuda_dsla_chunked_backward_after_forward", stream, dims, in,
                                  math, S1_0, S2_0, dout, dS1_T, dS2_T, grad, dS1_0, dS2_0,
                                  workspace, workspace_bytes, true);
}

/* The chunked DSLA forward on tensor cores (MATH_TF32, head_dim 64 or 128), and the state passes
 * the backward shares with it. dsla_chunked.cu dispatches here; its kernels remain for F32 math and
 * other head dims.
 *
 * The state walk is split so that no launch waits on a serial chain of GEMMs:
 *   tc_delta  one block per (chunk, head, state), all chunks at once: the chunk's contribution
 *             dS = (k * exp(b_last - b))^T v (forward) or (qw * exp(b))^T dO (reverse), written to
 *             the slot of the state it lands in, and the chunk's decay gl = exp(b_last);
 *   tc_scan   a thread per 4 state elements walks the chunks: S_next = gl * S + dS. Elementwise,
 *             so it runs at memory speed; it overwrites each delta with the state stored there.
 *   tc_out    one block per (chunk, head, state), a warp per 16-row sub-chunk, mma.sync tf32:
 *             out += A V + (qw * exp(b)) S_prev with A the decayed intra-chunk scores. Key channels
 *             are taken 32 at a time, so two blocks fit an SM; both states' blocks add onto a
 *             zeroed out (two addends: the sum does not depend on their order).
 *
 * Numerics (see dsla_chunk_parts.c for the CPU's): b is the in-chunk cumulative log-gate. Scores of
 * sub-chunk I against earlier rows split the decay at I's start r: q * exp(b_t - r) and
 * k * exp(r - b_s), both <= 1. Against its own rows the key factor exp(r - b_s) is >= 1; it is used
 * while a sub-chunk's total decay stays under DSLA_TC_GUARD nats (any trained gate), otherwise that
 * 16 x 16 block is summed pair by pair with exp(b_t - b_s) <= 1, so gates at the -50 clamp stay
 * finite. */
#include "kernels/cuda/dsla_chunked_tc.cuh"

#include <stdint.h>

#include "kernels/cuda/dsla_common.cuh"

enum {
    DSLA_TC_SUB = DSLA_SUBCHUNK,
    /* Key channels per pass of tc_out: its shared memory holds q, k and b for 32 channels and the
     * matching 32 rows of S_prev, which keeps a block under half an SM. */
    DSLA_TC_QUARTER = 32,
    /* tc_out: one warp per sub-chunk. */
    DSLA_TC_OUT_THREADS = DSLA_CHUNK / DSLA_SUBCHUNK * DSLA_CUDA_WARP,
    DSLA_TC_SCAN_THREADS = 256,
    /* Chunks whose deltas each scan thread loads before it stores any state. */
    DSLA_TC_SCAN_BATCH = 4,
    /* Row padding (floats): m16n8k8 fragments read a row-major operand at (row g, col t) or
     * (row t, col g) for g < 8, t < 4; a stride of 4 (mod 32) makes the first conflict-free, a
     * stride of 8 (mod 32) the second. */
    DSLA_TC_PAD_ROWS = 4,
    DSLA_TC_PAD_COLS = 8,
};

/* Largest decay (nats) inside a sub-chunk for which its own block takes the tensor cores: the key
 * factor is then at most e^64 and every product stays in fp32's range. */
#define DSLA_TC_GUARD 64.0f

bool dsla_cu_tc_supports(int head_dim) {
    return head_dim == 64 || head_dim == 128;
}

/* ---- mma.sync m16n8k8 tf32 ---- */

__device__ __forceinline__ uint32_t dsla_tc_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

/* c += a b: a is 16 x 8 (a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)), b 8 x 8 (b0 (t, g),
 * b1 (t+4, g)), c 16 x 8 (c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)); g = lane / 4,
 * t = lane % 4. */
__device__ __forceinline__ void dsla_tc_mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void dsla_tc_add2(float *p, float x, float y) {
#if __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float2 *>(p), make_float2(x, y));
#else
    atomicAdd(p, x);
    atomicAdd(p + 1, y);
#endif
}

/* acc[nt] += a times rows k0..k0+7 of a row-major matrix, every one of its D columns: row0 points
 * at element (k0 + t, g) of it (t = lane % 4, g = lane / 4), ld its row stride. */
template <int D>
__device__ __forceinline__ void dsla_tc_mma_rows(float (&acc)[D / 8][4], const uint32_t a[4],
                                                 const float *row0, int ld) {
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        const uint32_t b[2] = {dsla_tc_tf32(row0[nt * 8]), dsla_tc_tf32(row0[4 * ld + nt * 8])};
        dsla_tc_mma(acc[nt], a, b);
    }
}

/* dst[t * hd + c] += acc for the 16 x D strip of rows p..p+15 (rows t < n only). */
template <int D>
__device__ __forceinline__ void dsla_tc_add_strip(float *dst, int hd, int p, int n,
                                                  const float (&acc)[D / 8][4], int g, int tq) {
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int t = p + g + 8 * half;
            if (t < n)
                dsla_tc_add2(dst + (size_t)t * hd + nt * 8 + 2 * tq, acc[nt][2 * half],
                             acc[nt][2 * half + 1]);
        }
}

/* ---- loads ---- */

/* Eight consecutive inputs as floats: one 16-byte load of bf16, two of fp32. */
__device__ __forceinline__ void dsla_tc_ld8(float x[8], const __nv_bfloat16 *p) {
    const uint4 u = __ldg(reinterpret_cast<const uint4 *>(p));
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const float2 f = __bfloat1622float2(h[j]);
        x[2 * j] = f.x;
        x[2 * j + 1] = f.y;
    }
}

__device__ __forceinline__ void dsla_tc_ld8(float x[8], const float *p) {
    const float4 a = __ldg(reinterpret_cast<const float4 *>(p));
    const float4 b = __ldg(reinterpret_cast<const float4 *>(p) + 1);
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

/* dsla_cu_log_gate with the hardware exp and log (a few instructions instead of ~50; log1p(x) as x
 * below 1e-3, where 1 + x would round it away): logsigmoid within ~4e-7 absolute, so a chunk's
 * decays within ~2e-6 relative, far below what TF32's 10-bit operands lose. For the state walk,
 * where every block recomputes a whole chunk's gates at each step. */
__device__ __forceinline__ float dsla_tc_log_gate_fast(float a) {
    const float x = __expf(-fabsf(a));
    const float ls = fminf(a, 0.0f) - (x < 1e-3f ? x : __logf(1.0f + x));
    return fmaxf(ls / DSLA_GATE_NORMALIZER, (float)DSLA_LOG_GATE_MIN);
}

/* One chunk's rows of COLS columns (src[base + t * hd + c], t < DSLA_CHUNK) in THREADS threads'
 * registers, 8 elements per load: load() issues every load, store() waits for them, so the loads
 * of several tiles share one memory round trip. Rows t >= n read as zeros (log g 0). */
template <typename T, int COLS, int THREADS> struct dsla_tc_tile {
    static constexpr int PER_ROW = COLS / 8, UNITS = DSLA_CU_C * PER_ROW / THREADS;
    float x[UNITS][8];

    __device__ __forceinline__ void load(const T *src, size_t base, int hd, int n) {
#pragma unroll
        for (int u = 0; u < UNITS; u++) {
            const int idx = (int)threadIdx.x + u * THREADS, t = idx / PER_ROW;
            if (t < n)
                dsla_tc_ld8(x[u], src + base + (size_t)t * hd + 8 * (idx % PER_ROW));
            else
#pragma unroll
                for (int j = 0; j < 8; j++)
                    x[u][j] = 0.0f;
        }
    }

    /* X[t * ld + c] = scale * x, or with GATE the log-gate of x (0 for t >= n); FAST takes it with
     * the hardware exp and log (dsla_tc_log_gate_fast). */
    template <bool GATE, bool FAST = false>
    __device__ __forceinline__ void store(float *X, int ld, int n, float scale) const {
#pragma unroll
        for (int u = 0; u < UNITS; u++) {
            const int idx = (int)threadIdx.x + u * THREADS, t = idx / PER_ROW;
            float y[8];
#pragma unroll
            for (int j = 0; j < 8; j++)
                y[j] = !GATE    ? scale * x[u][j]
                       : t >= n ? 0.0f
                       : FAST   ? dsla_tc_log_gate_fast(x[u][j])
                                : dsla_cu_log_gate(x[u][j]);
            float4 *dst = reinterpret_cast<float4 *>(X + t * ld + 8 * (idx % PER_ROW));
            dst[0] = make_float4(y[0], y[1], y[2], y[3]);
            dst[1] = make_float4(y[4], y[5], y[6], y[7]);
        }
    }
};

/* 16 bytes global -> shared without passing through registers. */
__device__ __forceinline__ void dsla_tc_cp16(float *smem, const float *src) {
    const unsigned dst = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src));
}

__device__ __forceinline__ void dsla_tc_cp_wait() {
    asm volatile("cp.async.wait_all;" ::: "memory");
}

/* ---- state deltas ---- */

/* Item (sequence, head, state, chunk) -> index into [B, H, 2, chunks]. */
__device__ __forceinline__ size_t dsla_tc_item(int b, int H, int h, int i, int chunks, int chunk) {
    return (((size_t)b * H + h) * 2 + i) * (size_t)chunks + (size_t)chunk;
}

/* Grid (chunks, 2H, B), 2D threads. Forward: X = k, Y = v, delta = (k * exp(b_last - b))^T v, to
 * slot chunk + 1 (the last chunk's to extra). Reverse: X = q, Y = dO, delta = (qw * exp(b))^T dO,
 * to slot chunk - 1 (the first chunk's to extra). Both write gl = exp(b_last). */
template <typename T, typename TY, int D, bool REV>
static __global__ void __launch_bounds__(2 * D)
    dsla_tc_delta(const T *x, const T *a1, const T *a2, const TY *y, const float *alpha,
                  float *slots, float *extra, float *gl, int tokens, int H) {
    constexpr int LD = D + DSLA_TC_PAD_COLS;
    extern __shared__ __align__(16) float sm[];
    float *X = sm, *L = X + DSLA_CU_C * LD, *Y = L + DSLA_CU_C * LD;
    const int chunk = (int)blockIdx.x, chunks = (int)gridDim.x, h = (int)blockIdx.y >> 1;
    const int i = (int)blockIdx.y & 1, b = (int)blockIdx.z, hd = H * D, t0 = chunk * DSLA_CU_C;
    const int n = tokens - t0 < DSLA_CU_C ? tokens - t0 : DSLA_CU_C;
    const size_t base = ((size_t)b * tokens + t0) * hd + (size_t)h * D, dd = (size_t)D * D;
    const size_t item = dsla_tc_item(b, H, h, i, chunks, chunk);
    float w[2];
    dsla_cu_mix_weights(alpha, w);

    {
        dsla_tc_tile<T, D, 2 * D> tx, ta;
        dsla_tc_tile<TY, D, 2 * D> ty;
        tx.load(x, base, hd, n);
        ta.load(i ? a2 : a1, base, hd, n);
        ty.load(y, base, hd, n);
        tx.template store<false>(X, LD, n, REV ? w[i] / sqrtf((float)D) : 1.0f);
        ta.template store<true>(L, LD, n, 1.0f);
        ty.template store<false>(Y, LD, n, 1.0f);
    }
    __syncthreads();
    if ((int)threadIdx.x < D) {
        const int c = (int)threadIdx.x;
        float acc = 0.0f;
        if (REV) {
            for (int t = 0; t < DSLA_CU_C; t++) {
                acc += L[t * LD + c];
                X[t * LD + c] *= expf(acc);
            }
        } else {
            for (int t = DSLA_CU_C - 1; t >= 0; t--) {
                X[t * LD + c] *= expf(acc);
                acc += L[t * LD + c];
            }
        }
        gl[item * D + c] = expf(acc);
    }
    __syncthreads();

    /* delta[m, j] = sum_t X[t, m] Y[t, j]: warp w takes rows 16w..16w+15, every column. */
    const int lane = (int)threadIdx.x % DSLA_CUDA_WARP, warp = (int)threadIdx.x / DSLA_CUDA_WARP;
    const int g = lane >> 2, tq = lane & 3, m0 = warp * 16;
    float acc[D / 8][4] = {};
#pragma unroll
    for (int k0 = 0; k0 < DSLA_CU_C; k0 += 8) {
        const float *x0 = X + (k0 + tq) * LD + m0, *x1 = x0 + 4 * LD;
        const uint32_t af[4] = {dsla_tc_tf32(x0[g]), dsla_tc_tf32(x0[g + 8]), dsla_tc_tf32(x1[g]),
                                dsla_tc_tf32(x1[g + 8])};
        dsla_tc_mma_rows<D>(acc, af, Y + (k0 + tq) * LD + g, LD);
    }
    const size_t hs = ((size_t)b * H + h) * 2 + i;
    const bool edge = REV ? chunk == 0 : chunk == chunks - 1;
    float *dst = edge ? extra + hs * dd : slots + (REV ? item - 1 : item + 1) * dd;
#pragma unroll
    for (int nt = 0; nt < D / 8; nt++) {
        float *row = dst + (size_t)(m0 + g) * D + nt * 8 + 2 * tq;
        *reinterpret_cast<float2 *>(row) = make_float2(acc[nt][0], acc[nt][1]);
        *reinterpret_cast<float2 *>(row + 8 * D) = make_float2(acc[nt][2], acc[nt][3]);
    }
}

/* Grid (2BH, d*d / (4 * threads)). Forward: slots[c] = S before chunk c, then S = gl_c S + delta_c
 * (read from slot c + 1, or extra for the last chunk); S_T = S. Reverse: slots[c] = dS after chunk
 * c, then dS = gl_c dS + delta_c (from slot c - 1, or extra for chunk 0); dS_0 = dS. Every slot is
 * read before it is written: a batch loads its deltas first, and they lie ahead of the walk. */
template <bool REV>
static __global__ void __launch_bounds__(DSLA_TC_SCAN_THREADS)
    dsla_tc_scan(const float *S1_in, const float *S2_in, float *S1_out, float *S2_out, float *slots,
                 const float *extra, const float *gl, int chunks, int d) {
    const size_t hs = blockIdx.x, dd = (size_t)d * d;
    const size_t e = ((size_t)blockIdx.y * blockDim.x + threadIdx.x) * 4;
    if (e >= dd) return;
    const int i = (int)(hs & 1);
    const size_t so = (hs >> 1) * dd + e;
    const float *S_in = i ? S2_in : S1_in;
    float *S_out = i ? S2_out : S1_out;
    float *walk = slots + hs * chunks * dd + e;
    const float *dl = extra + hs * dd + e, *decay = gl + hs * chunks * (size_t)d + e / d;
    float4 S = S_in ? *reinterpret_cast<const float4 *>(S_in + so) : make_float4(0, 0, 0, 0);
    for (int s0 = 0; s0 < chunks; s0 += DSLA_TC_SCAN_BATCH) {
        float4 D[DSLA_TC_SCAN_BATCH];
        float gv[DSLA_TC_SCAN_BATCH];
#pragma unroll
        for (int u = 0; u < DSLA_TC_SCAN_BATCH; u++) {
            const int s = s0 + u, c = REV ? chunks - 1 - s : s;
            if (s >= chunks) break;
            const bool edge = REV ? c == 0 : c == chunks - 1;
            const float *src = edge ? dl : walk + (size_t)(REV ? c - 1 : c + 1) * dd;
            D[u] = *reinterpret_cast<const float4 *>(src);
            gv[u] = decay[(size_t)c * d];
        }
#pragma unroll
        for (int u = 0; u < DSLA_TC_SCAN_BATCH; u++) {
            const int s = s0 + u, c = REV ? chunks - 1 - s : s;
            if (s >= chunks) break;
            *reinterpret_cast<float4 *>(walk + (size_t)c * dd) = S;
            S.x = fmaf(gv[u], S.x, D[u].x);
            S.y = fmaf(gv[u], S.y, D[u].y);
            S.z = fmaf(gv[u], S.z, D[u].z);
            S.w = fmaf(gv[u], S.w, D[u].w);
        }
    }
    if (S_out) *reinterpret_cast<float4 *>(S_out + so) = S;
}

/* The state walk in one launch, tc_delta and tc_scan fused: grid (2, 2H, B), 2D threads. Block
 * (half, 2h + i, b) walks every chunk of state i of head h for the value columns j0 = half * D/2 ..
 * j0 + D/2 - 1, that D x D/2 slice of the state in registers (warp w: rows 16w..16w+15, as mma
 * accumulators). Per chunk: the slice goes to the chunk's slot (forward: S before the chunk;
 * reverse: dS after it), the chunk's tiles go to shared memory while the next chunk's loads are
 * issued, X = k exp(b_last - b) (forward) or qw exp(b) (reverse), and S = exp(b_last) S + X^T Y.
 * The deltas never reach memory: against delta + scan this saves writing, reading and rewriting
 * them (~4.3 GB at 32K tokens, 7B heads), at the price of a serial walk of the chunks per block. */
template <typename T, typename TY, int D, bool REV>
static __global__ void __launch_bounds__(2 * D, 1)
    dsla_tc_walk(const T *x, const T *a1, const T *a2, const TY *y, const float *alpha,
                 const float *S1_in, const float *S2_in, float *S1_out, float *S2_out, float *slots,
                 int tokens, int H) {
    constexpr int THREADS = 2 * D, BV = D / 2, HALF = DSLA_CU_C / 2;
    constexpr int LX = D + DSLA_TC_PAD_COLS, LY = BV + DSLA_TC_PAD_COLS;
    extern __shared__ __align__(16) float sm[];
    float *X = sm, *L = X + DSLA_CU_C * LX, *Y = L + DSLA_CU_C * LX, *part = Y + DSLA_CU_C * LY;
    float *glv = part + 2 * D;
    const int j0 = (int)blockIdx.x * BV, h = (int)blockIdx.y >> 1, i = (int)blockIdx.y & 1;
    const int b = (int)blockIdx.z, hd = H * D, chunks = (tokens + DSLA_CU_C - 1) / DSLA_CU_C;
    const size_t dd = (size_t)D * D, hs = ((size_t)b * H + h) * 2 + i, so = (hs >> 1) * dd;
    const T *a = i ? a2 : a1;
    const float *S_in = i ? S2_in : S1_in;
    float *S_out = i ? S2_out : S1_out;
    const int tid = (int)threadIdx.x, lane = tid % DSLA_CUDA_WARP, warp = tid / DSLA_CUDA_WARP;
    const int g = lane >> 2, tq = lane & 3, m0 = warp * 16;
    float w[2];
    dsla_cu_mix_weights(alpha, w);
    const float xscale = REV ? w[i] / sqrtf((float)D) : 1.0f;

    /* acc[nt] holds rows m0 + g (+ 8) and columns j0 + nt * 8 + 2 tq (+ 1) of the slice. */
    float acc[BV / 8][4];
#pragma unroll
    for (int nt = 0; nt < BV / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const size_t o = (size_t)(m0 + g + 8 * (e >> 1)) * D + j0 + nt * 8 + 2 * tq + (e & 1);
            acc[nt][e] = S_in ? S_in[so + o] : 0.0f;
        }
    dsla_tc_tile<T, D, THREADS> tx, ta;
    dsla_tc_tile<TY, BV, THREADS> ty;
    const auto chunk_at = [&](int s) { return REV ? chunks - 1 - s : s; };
    const auto rows_of = [&](int c) {
        return tokens - c * DSLA_CU_C < DSLA_CU_C ? tokens - c * DSLA_CU_C : DSLA_CU_C;
    };
    const auto load = [&](int c) {
        const size_t base = ((size_t)b * tokens + (size_t)c * DSLA_CU_C) * hd + (size_t)h * D;
        const int n = rows_of(c);
        tx.load(x, base, hd, n);
        ta.load(a, base, hd, n);
        ty.load(y, base + j0, hd, n);
    };
    /* the slice into a D x D state matrix */
    const auto store_slice = [&](float *dst) {
#pragma unroll
        for (int nt = 0; nt < BV / 8; nt++)
#pragma unroll
            for (int half = 0; half < 2; half++)
                *reinterpret_cast<float2 *>(dst + (size_t)(m0 + g + 8 * half) * D + j0 + nt * 8 +
                                            2 * tq) =
                    make_float2(acc[nt][2 * half], acc[nt][2 * half + 1]);
    };
    if (chunks > 0) load(chunk_at(0));

    for (int s = 0; s < chunks; s++) {
        const int c = chunk_at(s), n = rows_of(c);
        store_slice(slots + (hs * chunks + c) * dd);
        __syncthreads(); /* the previous chunk's X, L and Y are read */
        tx.template store<false>(X, LX, n, xscale);
        ta.template store<true, true>(L, LX, n, 1.0f);
        ty.template store<false>(Y, LY, n, 1.0f);
        if (s + 1 < chunks) load(chunk_at(s + 1));
        __syncthreads();
        { /* the decays: thread (channel cc, half hf) over rows 32 hf .. 32 hf + 31, its log-gates
           * in registers (the loops unroll, so the loads issue together) */
            const int cc = tid % D, hf = tid / D, r0 = hf * HALF;
            float l[HALF], sum = 0.0f;
#pragma unroll
            for (int r = 0; r < HALF; r++) {
                l[r] = L[(r0 + r) * LX + cc];
                sum += l[r];
            }
            part[hf * D + cc] = sum;
            __syncthreads();
            if (REV) { /* X[t] *= exp(sum_{u <= t} L[u]) */
                float run = hf ? part[cc] : 0.0f;
#pragma unroll
                for (int r = 0; r < HALF; r++) {
                    run += l[r];
                    X[(r0 + r) * LX + cc] *= __expf(run);
                }
            } else { /* X[t] *= exp(sum_{u > t} L[u]) */
                float run = hf ? 0.0f : part[D + cc];
#pragma unroll
                for (int r = HALF - 1; r >= 0; r--) {
                    X[(r0 + r) * LX + cc] *= __expf(run);
                    run += l[r];
                }
            }
            if (!hf) glv[cc] = __expf(part[cc] + part[D + cc]);
        }
        __syncthreads();
        const float ga = glv[m0 + g], gb = glv[m0 + g + 8];
#pragma unroll
        for (int nt = 0; nt < BV / 8; nt++) {
            acc[nt][0] *= ga, acc[nt][1] *= ga;
            acc[nt][2] *= gb, acc[nt][3] *= gb;
        }
#pragma unroll
        for (int k0 = 0; k0 < DSLA_CU_C; k0 += 8) {
            const float *x0 = X + (k0 + tq) * LX + m0, *x1 = x0 + 4 * LX;
            const uint32_t af[4] = {dsla_tc_tf32(x0[g]), dsla_tc_tf32(x0[g + 8]),
                                    dsla_tc_tf32(x1[g]), dsla_tc_tf32(x1[g + 8])};
            dsla_tc_mma_rows<BV>(acc, af, Y + (k0 + tq) * LY + g, LY);
        }
    }
    if (S_out) store_slice(S_out + so);
}

template <typename T, typename TY, int D, bool REV>
static dsla_status_t dsla_tc_walk_launch(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                         const T *x, const T *a1, const T *a2, const TY *y,
                                         const float *alpha, const float *S1_in, const float *S2_in,
                                         float *S1_out, float *S2_out, float *slots) {
    const size_t smem =
        sizeof(float) *
        ((size_t)DSLA_CU_C * (2 * (D + DSLA_TC_PAD_COLS) + D / 2 + DSLA_TC_PAD_COLS) + 3 * D);
    DSLA_CUDA_CHECK(cudaFuncSetAttribute(dsla_tc_walk<T, TY, D, REV>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid(2u, (unsigned)dims->heads * 2, (unsigned)dims->batch);
    dsla_tc_walk<T, TY, D, REV><<<grid, 2 * D, smem, stream>>>(
        x, a1, a2, y, alpha, S1_in, S2_in, S1_out, S2_out, slots, dims->tokens, dims->heads);
    DSLA_CUDA_CHECK_LAUNCH("dsla_tc_walk");
    return DSLA_OK;
}

template <typename T, typename TY, int D, bool REV>
static dsla_status_t dsla_tc_pass(cudaStream_t stream, const dsla_dsla_dims_t *dims, const T *x,
                                  const T *a1, const T *a2, const TY *y, const float *alpha,
                                  const float *S1_in, const float *S2_in, float *S1_out,
                                  float *S2_out, float *slots, const dsla_cu_tc_ws_t *ws) {
    if (ws->walk)
        return dsla_tc_walk_launch<T, TY, D, REV>(stream, dims, x, a1, a2, y, alpha, S1_in, S2_in,
                                                  S1_out, S2_out, slots);
    float *extra = ws->extra, *gl = ws->gl;
    const int chunks = (dims->tokens + DSLA_CU_C - 1) / DSLA_CU_C;
    if (chunks > 0) {
        const size_t smem = sizeof(float) * 3 * DSLA_CU_C * (D + DSLA_TC_PAD_COLS);
        DSLA_CUDA_CHECK(cudaFuncSetAttribute(
            dsla_tc_delta<T, TY, D, REV>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        const dim3 grid((unsigned)chunks, (unsigned)dims->heads * 2, (unsigned)dims->batch);
        dsla_tc_delta<T, TY, D, REV><<<grid, 2 * D, smem, stream>>>(
            x, a1, a2, y, alpha, slots, extra, gl, dims->tokens, dims->heads);
        DSLA_CUDA_CHECK_LAUNCH("dsla_tc_delta");
    }
    const unsigned per = DSLA_TC_SCAN_THREADS * 4;
    const dim3 grid((unsigned)dims->batch * (unsigned)dims->heads * 2,
                    (unsigned)((D * D + per - 1) / per));
    dsla_tc_scan<REV><<<grid, DSLA_TC_SCAN_THREADS, 0, stream>>>(S1_in, S2_in, S1_out, S2_out,
                                                                 slots, extra, gl, chunks, D);
    DSLA_CUDA_CHECK_LAUNCH("dsla_tc_scan");
    return DSLA_OK;
}

/* ---- pieces of tc_out and tc_bwd (a warp per sub-chunk, key channels in passes of 32) ---- */

/* One pass's inputs: NS state matrices' rows c0..c0+31 (S[u] from src[u], by cp.async, ld LS),
 * q * qscale, k and the in-chunk cumulative log-gate b of channels c0..c0+31 (ld LQ), by THREADS
 * threads. Warp I < 4 scans sub-chunk I's b (a lane per channel) and adds the earlier sub-chunks'
 * totals (tot, 128 floats). Ends with a barrier. True when the caller's sub-chunk (warp % 4)
 * decays less than DSLA_TC_GUARD nats in every channel, so that its own block may split at its
 * start. */
template <typename T, int D, int NS, int THREADS = DSLA_TC_OUT_THREADS>
__device__ __forceinline__ bool
dsla_tc_pass_inputs(float *Qs, float *Ks, float *Bs, float *const *S, const float *const *src,
                    int LS, const T *q, const T *k, const T *a, size_t base, int c0, int hd, int n,
                    float qscale, float *tot) {
    constexpr int QC = DSLA_TC_QUARTER, LQ = QC + DSLA_TC_PAD_ROWS, SUBS = DSLA_CU_C / DSLA_TC_SUB;
    const int lane = (int)threadIdx.x % DSLA_CUDA_WARP, warp = (int)threadIdx.x / DSLA_CUDA_WARP;
    const int sub = warp % SUBS, p = sub * DSLA_TC_SUB;
    /* The state rows go straight to shared memory while q, k and a load. */
#pragma unroll
    for (int u = 0; u < NS; u++)
        for (int idx = (int)threadIdx.x; idx < QC * D / 4; idx += THREADS)
            dsla_tc_cp16(S[u] + (idx / (D / 4)) * LS + 4 * (idx % (D / 4)),
                         src[u] + (size_t)(c0 + idx / (D / 4)) * D + 4 * (idx % (D / 4)));
    {
        dsla_tc_tile<T, QC, THREADS> tq, tk, ta;
        tq.load(q, base + c0, hd, n);
        tk.load(k, base + c0, hd, n);
        ta.load(a, base + c0, hd, n);
        tq.template store<false>(Qs, LQ, n, qscale);
        tk.template store<false>(Ks, LQ, n, 1.0f);
        ta.template store<true>(Bs, LQ, n, 1.0f);
    }
    dsla_tc_cp_wait();
    __syncthreads();
    const bool scans = THREADS == DSLA_TC_OUT_THREADS || warp < SUBS; /* a warp per sub-chunk */
    float run = 0.0f;
    if (scans) {
        for (int r = p; r < p + DSLA_TC_SUB; r++) {
            run += Bs[r * LQ + lane];
            Bs[r * LQ + lane] = run;
        }
        tot[warp * DSLA_CUDA_WARP + lane] = run;
    }
    __syncthreads();
    if (scans) {
        float off = 0.0f;
        for (int u = 0; u < warp; u++)
            off += tot[u * DSLA_CUDA_WARP + lane];
        for (int r = p; r < p + DSLA_TC_SUB; r++)
            Bs[r * LQ + lane] += off;
    }
    /* Rows p-1 and p+15 are the warp's own or an earlier warp's finished rows: the earlier warps
     * add their offsets before the barrier below, so read them after it. */
    __syncthreads();
    const float ref = sub ? Bs[(p - 1) * LQ + lane] : 0.0f;
    return __all_sync(0xffffffffu, ref - Bs[(p + DSLA_TC_SUB - 1) * LQ + lane] <= DSLA_TC_GUARD);
}

/* One k-step (channels k0..k0+7 of the pass) of the warp's scores: accA[j] += (q e^(b_t - r))
 * (k e^(r - b_s))^T for source tile nt = STEP j + hf, r = ref (the log-decay before the warp's
 * sub-chunk; NULL: 0), for the source tiles up to the warp's last row, its own two only when
 * guarded. STEP 2 splits a strip's tiles between two warps (hf 0 and 1). */
template <int NJ = DSLA_CU_C / 8, int STEP = 1>
__device__ __forceinline__ void
dsla_tc_scores_step(float (&accA)[NJ][4], const float *Qs, const float *Ks, const float *Bs,
                    const float *ref, int k0, int p, int g, int tq, bool guarded, int hf = 0) {
    constexpr int LQ = DSLA_TC_QUARTER + DSLA_TC_PAD_ROWS;
    const int ca = k0 + tq, cb = ca + 4;
    const float ra = ref ? ref[ca] : 0.0f, rb = ref ? ref[cb] : 0.0f;
    const float *q0 = Qs + (p + g) * LQ, *q1 = q0 + 8 * LQ;
    const float *b0 = Bs + (p + g) * LQ, *b1 = b0 + 8 * LQ;
    const uint32_t aq[4] = {
        dsla_tc_tf32(q0[ca] * __expf(b0[ca] - ra)), dsla_tc_tf32(q1[ca] * __expf(b1[ca] - ra)),
        dsla_tc_tf32(q0[cb] * __expf(b0[cb] - rb)), dsla_tc_tf32(q1[cb] * __expf(b1[cb] - rb))};
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const int nt = j * STEP + hf;
        if (nt * 8 >= p + DSLA_TC_SUB) break;
        if (nt * 8 >= p && !guarded) continue;
        const int s = nt * 8 + g;
        const uint32_t bk[2] = {
            dsla_tc_tf32(Ks[s * LQ + ca] * __expf(fminf(ra - Bs[s * LQ + ca], 88.0f))),
            dsla_tc_tf32(Ks[s * LQ + cb] * __expf(fminf(rb - Bs[s * LQ + cb], 88.0f)))};
        dsla_tc_mma(accA[j], aq, bk);
    }
}

/* A pass's scores of the warp's own 16 x 16 block pair by pair (exp(b_t - b_s) <= 1), a lane per
 * channel, added into Aw[t * LA + p + s]: for sub-chunks that decay past the guard. */
__device__ __forceinline__ void dsla_tc_own_scores(float *Aw, int LA, const float *Qs,
                                                   const float *Ks, const float *Bs, int p,
                                                   int lane) {
    constexpr int LQ = DSLA_TC_QUARTER + DSLA_TC_PAD_ROWS;
    for (int t = 0; t < DSLA_TC_SUB; t++)
        for (int s = 0; s <= t; s++) {
            const int rt = (p + t) * LQ + lane, rs = (p + s) * LQ + lane;
            const float x = dsla_warp_sum(Qs[rt] * Ks[rs] * expf(Bs[rt] - Bs[rs]));
            if (lane == 0) Aw[t * LA + p + s] += x;
        }
}

/* The warp's strip of scores into Aw (rows p..p+15 of A, ld LA; tiles nt = STEP j + hf as in
 * dsla_tc_scores_step): the own block adds the pair-by-pair sums already there, s > t is zeroed. */
template <int NJ = DSLA_CU_C / 8, int STEP = 1>
__device__ __forceinline__ void dsla_tc_store_scores(float *Aw, int LA, const float (&accA)[NJ][4],
                                                     int p, int g, int tq, int hf = 0) {
#pragma unroll
    for (int j = 0; j < NJ; j++) {
        const int nt = j * STEP + hf;
        if (nt * 8 >= p + DSLA_TC_SUB) break;
        const int col = nt * 8 + 2 * tq;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int r = g + 8 * half, t = p + r;
            float x0 = accA[j][2 * half], x1 = accA[j][2 * half + 1];
            if (nt * 8 >= p) {
                x0 += Aw[r * LA + col];
                x1 += Aw[r * LA + col + 1];
            }
            Aw[r * LA + col] = col <= t ? x0 : 0.0f;
            Aw[r * LA + col + 1] = col + 1 <= t ? x1 : 0.0f;
        }
    }
    __syncwarp();
}

/* ---- forward output ---- */

/* Grid (2 * chunks, H, B): block (2 chunk + i) is state i of a chunk, so a chunk's two blocks run
 * side by side and share q, k, v in L2. Warp I owns rows 16I..16I+15 (sub-chunk I). Per pass over
 * 32 key channels: the in-chunk cumsum b, then A_I += (q exp(b_t - r)) (k exp(r - b_s))^T for
 * s < 16(I+1) and O_I += (q exp(b_t)) S_prev[channels, :]. Then A is masked (s <= t), staged in
 * the warp's shared strip and O_I += A_I V; out += O. q carries w_i / sqrt(d).
 *
 * HALVES 2 runs two warps per sub-chunk (8 per block), as tc_bwd does: warp w takes sub-chunk
 * w % 4 and half hf = w / 4 of the output tiles, A's column tiles alternately and the value
 * columns hf D/2 .. hf D/2 + D/2 - 1 of O; the own blocks' pair-by-pair sums stay with hf 0, and a
 * barrier lets both halves of the strip land before A V reads it. Same shared memory, so two
 * blocks still share an SM, now 16 warps instead of 8. The kernel is latency-bound (~26 TFLOP/s of
 * TF32, ~4 GB moved, 5.3 ms at 32K tokens, H100): predicted 1.3-1.7x on the kernel; measured the
 * whole forward 8.85 -> 7.32 ms at 32K on an H200 (the kernel ~5.3 -> ~3.8 ms, ~1.4x), so it is
 * the default (dsla_chunked.cu's dsla_cu_tc_ws). */
template <typename T, int D, int HALVES>
static __global__ void __launch_bounds__((DSLA_TC_OUT_THREADS * HALVES), 2)
    dsla_tc_out(const T *q, const T *k, const T *v, const T *a1, const T *a2, const float *alpha,
                const float *states, float *out, int tokens, int H) {
    constexpr int QC = DSLA_TC_QUARTER, LQ = QC + DSLA_TC_PAD_ROWS, LV = D + DSLA_TC_PAD_COLS;
    constexpr int LA = DSLA_CU_C + DSLA_TC_PAD_ROWS, SUB = DSLA_TC_SUB, SUBS = DSLA_CU_C / SUB;
    constexpr int THREADS = DSLA_TC_OUT_THREADS * HALVES;
    /* Per warp: score tiles (of C / 8) and value columns. */
    constexpr int NA = DSLA_CU_C / 8 / HALVES, DV = D / HALVES;
    extern __shared__ __align__(16) float sm[];
    float *Qs = sm, *Ks = Qs + DSLA_CU_C * LQ, *Bs = Ks + DSLA_CU_C * LQ, *Ss = Bs + DSLA_CU_C * LQ;
    float *Vs = Ss + QC * LV, *Ap = Vs + DSLA_CU_C * LV, *tot = Ap + DSLA_CU_C * LA;
    const int i = (int)blockIdx.x & 1, chunk = (int)blockIdx.x >> 1, chunks = (int)gridDim.x >> 1;
    const int h = (int)blockIdx.y, b = (int)blockIdx.z, hd = H * D, t0 = chunk * DSLA_CU_C;
    const int n = tokens - t0 < DSLA_CU_C ? tokens - t0 : DSLA_CU_C;
    const size_t base = ((size_t)b * tokens + t0) * hd + (size_t)h * D;
    const float *S_prev = states + dsla_tc_item(b, H, h, i, chunks, chunk) * D * D;
    const T *a = i ? a2 : a1;
    const int lane = (int)threadIdx.x % DSLA_CUDA_WARP, warp = (int)threadIdx.x / DSLA_CUDA_WARP;
    /* One warp per sub-chunk: hf is 0 at compile time, and the code is the 4-warp kernel's. */
    const int sub = HALVES > 1 ? warp % SUBS : warp, hf = HALVES > 1 ? warp / SUBS : 0;
    const int g = lane >> 2, tq = lane & 3, p = sub * SUB;
    float *Aw = Ap + p * LA; /* the sub-chunk's strip: rows p..p+15 of A */
    float w[2];
    dsla_cu_mix_weights(alpha, w);
    const float qscale = w[i] / sqrtf((float)D);

    {
        dsla_tc_tile<T, D, THREADS> tv;
        tv.load(v, base, hd, n);
        tv.template store<false>(Vs, LV, n, 1.0f);
    }
    /* The strip's own 16 x 16 block collects the pair-by-pair sums of unguarded passes. */
    if (hf == 0)
        for (int e = lane; e < SUB * SUB; e += DSLA_CUDA_WARP)
            Aw[(e / SUB) * LA + p + e % SUB] = 0.0f;
    float accO[DV / 8][4] = {}, accA[NA][4] = {};

    for (int c0 = 0; c0 < D; c0 += QC) {
        float *const S[1] = {Ss};
        const float *const src[1] = {S_prev};
        const bool guarded = dsla_tc_pass_inputs<T, D, 1, THREADS>(Qs, Ks, Bs, S, src, LV, q, k, a,
                                                                   base, c0, hd, n, qscale, tot);
        const float *ref = sub ? Bs + (p - 1) * LQ : NULL;
#pragma unroll
        for (int k0 = 0; k0 < QC; k0 += 8) {
            dsla_tc_scores_step<NA, HALVES>(accA, Qs, Ks, Bs, ref, k0, p, g, tq, guarded, hf);
            const int ca = k0 + tq, cb = ca + 4;
            const float *q0 = Qs + (p + g) * LQ, *q1 = q0 + 8 * LQ;
            const float *b0 = Bs + (p + g) * LQ, *b1 = b0 + 8 * LQ;
            const uint32_t ag[4] = {
                dsla_tc_tf32(q0[ca] * __expf(b0[ca])), dsla_tc_tf32(q1[ca] * __expf(b1[ca])),
                dsla_tc_tf32(q0[cb] * __expf(b0[cb])), dsla_tc_tf32(q1[cb] * __expf(b1[cb]))};
            dsla_tc_mma_rows<DV>(accO, ag, Ss + ca * LV + hf * DV + g, LV);
        }
        if (!guarded && hf == 0) dsla_tc_own_scores(Aw, LA, Qs, Ks, Bs, p, lane);
        __syncthreads(); /* the next pass overwrites Qs, Ks, Bs, Ss */
    }

    dsla_tc_store_scores<NA, HALVES>(Aw, LA, accA, p, g, tq, hf);
    /* A V reads the whole strip: with two warps per sub-chunk, both must have stored theirs. */
    if (HALVES > 1) __syncthreads();
#pragma unroll
    for (int k0 = 0; k0 < DSLA_CU_C; k0 += 8) {
        if (k0 >= p + SUB) break;
        const float *r0 = Aw + g * LA + k0 + tq, *r1 = r0 + 8 * LA;
        const uint32_t af[4] = {dsla_tc_tf32(r0[0]), dsla_tc_tf32(r1[0]), dsla_tc_tf32(r0[4]),
                                dsla_tc_tf32(r1[4])};
        dsla_tc_mma_rows<DV>(accO, af, Vs + (k0 + tq) * LV + hf * DV + g, LV);
    }
    dsla_tc_add_strip<DV>(out + base + hf * DV, hd, p, n, accO, g, tq);
}

static size_t dsla_tc_out_smem(int d) {
    return sizeof(float) * ((size_t)3 * DSLA_CU_C * (DSLA_TC_QUARTER + DSLA_TC_PAD_ROWS) +
                            (size_t)(DSLA_TC_QUARTER + DSLA_CU_C) * (d + DSLA_TC_PAD_COLS) +
                            (size_t)DSLA_CU_C * (DSLA_CU_C + DSLA_TC_PAD_ROWS) +
                            (size_t)(DSLA_CU_C / DSLA_TC_SUB) * DSLA_CUDA_WARP);
}

template <typename T, int D, int HALVES>
static dsla_status_t dsla_tc_out_run(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                     const dsla_cuda_dsla_in_t *in, float *out,
                                     const dsla_cu_tc_ws_t *ws) {
    const int chunks = (dims->tokens + DSLA_CU_C - 1) / DSLA_CU_C;
    if (chunks == 0) return DSLA_OK;
    const size_t smem = dsla_tc_out_smem(D);
    DSLA_CUDA_CHECK(cudaMemsetAsync(
        out, 0, (size_t)dims->batch * dims->tokens * dims->heads * D * sizeof(float), stream));
    DSLA_CUDA_CHECK(cudaFuncSetAttribute(dsla_tc_out<T, D, HALVES>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid(2u * (unsigned)chunks, (unsigned)dims->heads, (unsigned)dims->batch);
    dsla_tc_out<T, D, HALVES><<<grid, DSLA_TC_OUT_THREADS * HALVES, smem, stream>>>(
        (const T *)in->q, (const T *)in->k, (const T *)in->v, (const T *)in->a1, (const T *)in->a2,
        in->alpha, ws->states, out, dims->tokens, dims->heads);
    DSLA_CUDA_CHECK_LAUNCH("dsla_tc_out");
    return DSLA_OK;
}

template <typename T, int D>
static dsla_status_t dsla_tc_out_launch(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                        const dsla_cuda_dsla_in_t *in, float *out,
                                        const dsla_cu_tc_ws_t *ws) {
    return ws->out_pairs ? dsla_tc_out_run<T, D, 2>(stream, dims, in, out, ws)
                         : dsla_tc_out_run<T, D, 1>(stream, dims, in, out, ws);
}

/* ---- backward of the chunks ---- */

/* Grid (2 * chunks, H, B) as tc_out, a warp per sub-chunk; S_prev (the state before each chunk)
 * and dS (the gradient of the state after it) come from the two state passes. First DA = dO V^T
 * (s < t kept, the diagonal apart). Per pass over 32 key channels, for the warp's rows (reader
 * rows of sub-chunk I for q, source rows of I for k and v):
 *   A_I += (q e^(b_t - r_I)) (k e^(r_I - b_s))^T                       as in tc_out
 *   dq'  = e^(b_t - r_I) (DA k e^(r_I - b_s)) + e^(b_t) (dO S_prev^T)
 *   dk'  = sum over readers I2 >= I of e^(r_I2 - b_s) (DA^T q e^(b_t - r_I2))
 *   ks   = e^(b_last - b_s) (v dS^T);   dV += (k e^(b_last - b)) dS
 * then per channel (a lane each) the log-gate gradient, e^(b_last) sum_j S_prev dS + the prefix
 * of k ks + the suffix of q dq' - k dk' (dsla_chunked_backward.c's pairs), and dq = dq' + DA_tt k,
 * dk = dk' + DA_tt q + ks onto dq, dk. After the passes dV += A^T dO. dq, dk and dv of the two
 * states add onto zeros; da and the block's dalpha partial are its own. The own 16 x 16 blocks
 * follow tc_out's guard: past it, their pairs are summed one by one.
 *
 * HALVES 2 runs two warps per sub-chunk (8 per block): warp w takes sub-chunk w % 4 and half
 * hf = w / 4 of each product's output tiles (DA's and A's columns alternately, the pass's channels
 * 16 hf .. 16 hf + 15 for dq', dk' and ks, the value columns hf D/2 .. for dV) and of the gate
 * gradient's rows (8 hf .. 8 hf + 7 of the sub-chunk); the own blocks' pair-by-pair sums stay with
 * hf 0. The shared memory is the same, so a block still fills an SM, now with 8 warps. */
template <typename T, int D, int HALVES>
static __global__ void __launch_bounds__((DSLA_TC_OUT_THREADS * HALVES), 1)
    dsla_tc_bwd(const T *q, const T *k, const T *v, const T *a1, const T *a2, const float *alpha,
                const float *dout, const float *states, const float *dstates, float *dq, float *dk,
                float *dv, float *da1, float *da2, double *gpart, int tokens, int H) {
    constexpr int C = DSLA_CU_C, QC = DSLA_TC_QUARTER, SUB = DSLA_TC_SUB, SUBS = C / SUB;
    constexpr int THREADS = DSLA_TC_OUT_THREADS * HALVES, WARPS = THREADS / DSLA_CUDA_WARP;
    constexpr int LQ = QC + DSLA_TC_PAD_ROWS, LV = D + DSLA_TC_PAD_ROWS;
    constexpr int LDA = C + DSLA_TC_PAD_ROWS, LA = C + DSLA_TC_PAD_COLS;
    /* Per warp: score tiles (of C / 8), channel tiles of the pass (of QC / 8), value columns, and
     * the gate gradient's rows. */
    constexpr int NA = C / 8 / HALVES, NC = QC / 8 / HALVES, DV = D / HALVES, RS = SUB / HALVES;
    extern __shared__ __align__(16) float sm[];
    float *Vs = sm, *Os = Vs + C * LV, *DAs = Os + C * LV, *Ap = DAs + C * LDA;
    float *Qs = Ap + C * LA, *Ks = Qs + C * LQ, *Bs = Ks + C * LQ, *DQs = Bs + C * LQ;
    float *DKs = DQs + C * LQ, *KSs = DKs + C * LQ, *Ss = KSs + C * LQ, *dSs = Ss + QC * LV;
    float *diag = dSs + QC * LV, *rs = diag + C, *tot = rs + QC; /* tot: 3 x THREADS */
    __shared__ double red[WARPS];
    const int i = (int)blockIdx.x & 1, chunk = (int)blockIdx.x >> 1, chunks = (int)gridDim.x >> 1;
    const int h = (int)blockIdx.y, b = (int)blockIdx.z, hd = H * D, t0 = chunk * C;
    const int n = tokens - t0 < C ? tokens - t0 : C;
    const size_t base = ((size_t)b * tokens + t0) * hd + (size_t)h * D;
    const size_t item = dsla_tc_item(b, H, h, i, chunks, chunk);
    const float *S_prev = states + item * D * D, *dS = dstates + item * D * D;
    const T *a = i ? a2 : a1;
    float *da = i ? da2 : da1;
    const int lane = (int)threadIdx.x % DSLA_CUDA_WARP, warp = (int)threadIdx.x / DSLA_CUDA_WARP;
    /* One warp per sub-chunk: hf is 0 at compile time, and the code is the 4-warp kernel's. */
    const int sub = HALVES > 1 ? warp % SUBS : warp, hf = HALVES > 1 ? warp / SUBS : 0;
    const int g = lane >> 2, tq = lane & 3, p = sub * SUB;
    float *Aw = Ap + p * LA;
    float w[2];
    dsla_cu_mix_weights(alpha, w);
    const float scale = 1.0f / sqrtf((float)D), qscale = w[i] * scale;

    {
        dsla_tc_tile<T, D, THREADS> tv;
        dsla_tc_tile<float, D, THREADS> to;
        tv.load(v, base, hd, n);
        to.load(dout, base, hd, n);
        tv.template store<false>(Vs, LV, n, 1.0f);
        to.template store<false>(Os, LV, n, 1.0f);
    }
    if (hf == 0)
        for (int e = lane; e < SUB * SUB; e += DSLA_CUDA_WARP)
            Aw[(e / SUB) * LA + p + e % SUB] = 0.0f;
    __syncthreads();
    { /* DA for the warp's rows (column tiles nt = HALVES j + hf): s < t into DAs (zeros above),
       * DA_tt into diag */
        float acc[NA][4] = {};
#pragma unroll
        for (int k0 = 0; k0 < D; k0 += 8) {
            const float *o0 = Os + (p + g) * LV + k0 + tq, *o1 = o0 + 8 * LV;
            const uint32_t af[4] = {dsla_tc_tf32(o0[0]), dsla_tc_tf32(o1[0]), dsla_tc_tf32(o0[4]),
                                    dsla_tc_tf32(o1[4])};
#pragma unroll
            for (int j = 0; j < NA; j++) {
                const int nt = j * HALVES + hf;
                if (nt * 8 >= p + SUB) break;
                const float *vr = Vs + (nt * 8 + g) * LV + k0 + tq;
                const uint32_t bf[2] = {dsla_tc_tf32(vr[0]), dsla_tc_tf32(vr[4])};
                dsla_tc_mma(acc[j], af, bf);
            }
        }
#pragma unroll
        for (int j = 0; j < NA; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int t = p + g + 8 * (e >> 1), s = (j * HALVES + hf) * 8 + 2 * tq + (e & 1);
                DAs[t * LDA + s] = s < t ? acc[j][e] : 0.0f;
                if (s == t) diag[t] = acc[j][e];
            }
    }
    __syncthreads();

    float accA[NA][4] = {}, accV[DV / 8][4] = {};
    double gsum = 0.0;
    for (int c0 = 0; c0 < D; c0 += QC) {
        float *const S[2] = {Ss, dSs};
        const float *const src[2] = {S_prev, dS};
        const bool guarded = dsla_tc_pass_inputs<T, D, 2, THREADS>(Qs, Ks, Bs, S, src, LV, q, k, a,
                                                                   base, c0, hd, n, qscale, tot);
        const float *ref = sub ? Bs + (p - 1) * LQ : NULL, *blast = Bs + (C - 1) * LQ;
        /* A_I (tc_out's first product) */
#pragma unroll
        for (int k0 = 0; k0 < QC; k0 += 8)
            dsla_tc_scores_step<NA, HALVES>(accA, Qs, Ks, Bs, ref, k0, p, g, tq, guarded, hf);
        /* The warp's channel tiles of the pass: nt = NC hf + j. */
        const int cw = NC * hf * 8;
        { /* dq' of the reader rows */
            float in[NC][4] = {}, st[NC][4] = {};
            const int send = guarded ? p + SUB : p;
            for (int k0 = 0; k0 < send; k0 += 8) {
                const float *r0 = DAs + (p + g) * LDA + k0 + tq, *r1 = r0 + 8 * LDA;
                const uint32_t af[4] = {dsla_tc_tf32(r0[0]), dsla_tc_tf32(r1[0]),
                                        dsla_tc_tf32(r0[4]), dsla_tc_tf32(r1[4])};
                const int s0 = k0 + tq, s1 = s0 + 4;
#pragma unroll
                for (int j = 0; j < NC; j++) {
                    const int c = cw + j * 8 + g;
                    const float rc = ref ? ref[c] : 0.0f;
                    const uint32_t bf[2] = {
                        dsla_tc_tf32(Ks[s0 * LQ + c] * __expf(fminf(rc - Bs[s0 * LQ + c], 88.0f))),
                        dsla_tc_tf32(Ks[s1 * LQ + c] * __expf(fminf(rc - Bs[s1 * LQ + c], 88.0f)))};
                    dsla_tc_mma(in[j], af, bf);
                }
            }
#pragma unroll
            for (int k0 = 0; k0 < D; k0 += 8) {
                const float *o0 = Os + (p + g) * LV + k0 + tq, *o1 = o0 + 8 * LV;
                const uint32_t af[4] = {dsla_tc_tf32(o0[0]), dsla_tc_tf32(o1[0]),
                                        dsla_tc_tf32(o0[4]), dsla_tc_tf32(o1[4])};
#pragma unroll
                for (int j = 0; j < NC; j++) {
                    const float *sr = Ss + (cw + j * 8 + g) * LV + k0 + tq;
                    const uint32_t bf[2] = {dsla_tc_tf32(sr[0]), dsla_tc_tf32(sr[4])};
                    dsla_tc_mma(st[j], af, bf);
                }
            }
#pragma unroll
            for (int j = 0; j < NC; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int t = p + g + 8 * (e >> 1), c = cw + j * 8 + 2 * tq + (e & 1);
                    const float bt = Bs[t * LQ + c], rc = ref ? ref[c] : 0.0f;
                    DQs[t * LQ + c] = __expf(bt - rc) * in[j][e] + __expf(bt) * st[j][e];
                }
        }
        { /* dk' of the source rows, reader sub-chunk by reader sub-chunk */
            float acc[NC][4] = {};
            for (int I2 = guarded ? sub : sub + 1; I2 < SUBS; I2++) {
                const int p2 = I2 * SUB;
                const float *ref2 = I2 ? Bs + (p2 - 1) * LQ : NULL;
                float tmp[NC][4] = {};
#pragma unroll
                for (int k0 = 0; k0 < SUB; k0 += 8) {
                    const float *d0 = DAs + (p2 + k0 + tq) * LDA + p + g, *d1 = d0 + 4 * LDA;
                    const uint32_t af[4] = {dsla_tc_tf32(d0[0]), dsla_tc_tf32(d0[8]),
                                            dsla_tc_tf32(d1[0]), dsla_tc_tf32(d1[8])};
                    const int r0 = p2 + k0 + tq, r1 = r0 + 4;
#pragma unroll
                    for (int j = 0; j < NC; j++) {
                        const int c = cw + j * 8 + g;
                        const float rc = ref2 ? ref2[c] : 0.0f;
                        const uint32_t bf[2] = {
                            dsla_tc_tf32(Qs[r0 * LQ + c] * __expf(Bs[r0 * LQ + c] - rc)),
                            dsla_tc_tf32(Qs[r1 * LQ + c] * __expf(Bs[r1 * LQ + c] - rc))};
                        dsla_tc_mma(tmp[j], af, bf);
                    }
                }
#pragma unroll
                for (int j = 0; j < NC; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int s = p + g + 8 * (e >> 1), c = cw + j * 8 + 2 * tq + (e & 1);
                        const float rc = ref2 ? ref2[c] : 0.0f;
                        acc[j][e] += __expf(fminf(rc - Bs[s * LQ + c], 88.0f)) * tmp[j][e];
                    }
            }
#pragma unroll
            for (int j = 0; j < NC; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int s = p + g + 8 * (e >> 1), c = cw + j * 8 + 2 * tq + (e & 1);
                    DKs[s * LQ + c] = acc[j][e];
                }
        }
        { /* ks of the source rows */
            float acc[NC][4] = {};
#pragma unroll
            for (int k0 = 0; k0 < D; k0 += 8) {
                const float *v0 = Vs + (p + g) * LV + k0 + tq, *v1 = v0 + 8 * LV;
                const uint32_t af[4] = {dsla_tc_tf32(v0[0]), dsla_tc_tf32(v1[0]),
                                        dsla_tc_tf32(v0[4]), dsla_tc_tf32(v1[4])};
#pragma unroll
                for (int j = 0; j < NC; j++) {
                    const float *dr = dSs + (cw + j * 8 + g) * LV + k0 + tq;
                    const uint32_t bf[2] = {dsla_tc_tf32(dr[0]), dsla_tc_tf32(dr[4])};
                    dsla_tc_mma(acc[j], af, bf);
                }
            }
#pragma unroll
            for (int j = 0; j < NC; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int s = p + g + 8 * (e >> 1), c = cw + j * 8 + 2 * tq + (e & 1);
                    KSs[s * LQ + c] = __expf(blast[c] - Bs[s * LQ + c]) * acc[j][e];
                }
        }
        /* dV += (k e^(b_last - b)) dS over the pass's channels */
#pragma unroll
        for (int k0 = 0; k0 < QC; k0 += 8) {
            const int ca = k0 + tq, cb = ca + 4;
            const float *k0r = Ks + (p + g) * LQ, *k1r = k0r + 8 * LQ;
            const float *b0r = Bs + (p + g) * LQ, *b1r = b0r + 8 * LQ;
            const uint32_t af[4] = {dsla_tc_tf32(k0r[ca] * __expf(blast[ca] - b0r[ca])),
                                    dsla_tc_tf32(k1r[ca] * __expf(blast[ca] - b1r[ca])),
                                    dsla_tc_tf32(k0r[cb] * __expf(blast[cb] - b0r[cb])),
                                    dsla_tc_tf32(k1r[cb] * __expf(blast[cb] - b1r[cb]))};
            dsla_tc_mma_rows<DV>(accV, af, dSs + ca * LV + hf * DV + g, LV);
        }
        /* The pair-by-pair sums read DQs and DKs of every channel of the warp's rows: with two
         * warps per sub-chunk, both halves must have written theirs. */
        if (HALVES > 1)
            __syncthreads();
        else
            __syncwarp();
        if (!guarded && hf == 0) { /* the own block pair by pair (exp(b_t - b_s) <= 1) */
            dsla_tc_own_scores(Aw, LA, Qs, Ks, Bs, p, lane);
            for (int t = p + 1; t < p + SUB; t++)
                for (int s = p; s < t; s++) {
                    const int et = t * LQ + lane, es = s * LQ + lane;
                    const float x = DAs[t * LDA + s] * expf(Bs[et] - Bs[es]);
                    DQs[et] += x * Ks[es];
                    DKs[es] += x * Qs[et];
                }
        }
        /* sum_j S_prev[c, j] dS[c, j]: warp w takes QC / WARPS rows from w QC / WARPS */
        for (int r = warp * (QC / WARPS); r < (warp + 1) * (QC / WARPS); r++) {
            float x = 0.0f;
            for (int j = lane; j < D; j += DSLA_CUDA_WARP)
                x += Ss[r * LV + j] * dSs[r * LV + j];
            x = dsla_warp_sum(x);
            if (lane == 0) rs[r] = x;
        }
        __syncthreads();
        { /* a lane per channel: the log-gate gradient, then dq and dk, over the warp's RS rows
           * from r0 (the chunk's row segment u0 of RS rows) */
            const int u0 = sub * HALVES + hf, r0 = u0 * RS, e0 = r0 * LQ + lane;
            /* The raw gates and queries of the warp's rows, issued together here so that their
             * round trip overlaps the scans and the barrier below, not one per row. */
            float graw[RS], qraw[RS];
#pragma unroll
            for (int r = 0; r < RS; r++) {
                const size_t o = base + (size_t)(r0 + r) * hd + c0 + lane;
                graw[r] = r0 + r < n ? dsla_cu_load(a, o) : 0.0f;
                qraw[r] = r0 + r < n ? dsla_cu_load(q, o) : 0.0f;
            }
            float sfx[RS], pfx[RS], xs = 0.0f, kk = 0.0f;
#pragma unroll
            for (int r = RS - 1; r >= 0; r--) {
                const int e = e0 + r * LQ;
                xs += Qs[e] * DQs[e] - Ks[e] * DKs[e];
                sfx[r] = xs;
            }
#pragma unroll
            for (int r = 0; r < RS; r++) {
                const int e = e0 + r * LQ;
                pfx[r] = kk;
                kk += Ks[e] * KSs[e];
            }
            float *tx = tot + THREADS, *tk = tx + THREADS;
            tx[u0 * DSLA_CUDA_WARP + lane] = xs;
            tk[u0 * DSLA_CUDA_WARP + lane] = kk;
            __syncthreads();
            float later = 0.0f, earlier = expf(blast[lane]) * rs[lane];
            for (int u = u0 + 1; u < WARPS; u++)
                later += tx[u * DSLA_CUDA_WARP + lane];
            for (int u = 0; u < u0; u++)
                earlier += tk[u * DSLA_CUDA_WARP + lane];
#pragma unroll
            for (int r = 0; r < RS; r++) {
                const int t = r0 + r, e = e0 + r * LQ;
                if (t >= n) break;
                const size_t o = base + (size_t)t * hd + c0 + lane;
                da[o] = (earlier + pfx[r] + later + sfx[r]) * dsla_cu_log_gate_grad(graw[r]);
                const float dqv = DQs[e] + diag[t] * Ks[e];
                gsum += (double)(scale * qraw[r]) * dqv;
                atomicAdd(dq + o, qscale * dqv);
                atomicAdd(dk + o, DKs[e] + diag[t] * Qs[e] + KSs[e]);
            }
        }
        __syncthreads(); /* the next pass overwrites this one's arrays */
    }

    /* dV += A^T dO over the readers t >= the warp's first source row */
    dsla_tc_store_scores<NA, HALVES>(Aw, LA, accA, p, g, tq, hf);
    __syncthreads();
    for (int k0 = p; k0 < C; k0 += 8) {
        const float *a0 = Ap + (k0 + tq) * LA + p + g, *a1r = a0 + 4 * LA;
        const uint32_t af[4] = {dsla_tc_tf32(a0[0]), dsla_tc_tf32(a0[8]), dsla_tc_tf32(a1r[0]),
                                dsla_tc_tf32(a1r[8])};
        dsla_tc_mma_rows<DV>(accV, af, Os + (k0 + tq) * LV + hf * DV + g, LV);
    }
    dsla_tc_add_strip<DV>(dv + base + hf * DV, hd, p, n, accV, g, tq);
    for (int off = DSLA_CUDA_WARP / 2; off > 0; off >>= 1)
        gsum += __shfl_xor_sync(0xffffffffu, gsum, off);
    if (lane == 0) red[warp] = gsum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int u = 0; u < WARPS; u++)
            total += red[u];
        gpart[item] = total;
    }
}

static size_t dsla_tc_bwd_smem(int d, int threads) {
    const size_t C = DSLA_CU_C, QC = DSLA_TC_QUARTER, LV = (size_t)d + DSLA_TC_PAD_ROWS;
    return sizeof(float) *
           (2 * C * LV + C * (C + DSLA_TC_PAD_ROWS) + C * (C + DSLA_TC_PAD_COLS) +
            6 * C * (QC + DSLA_TC_PAD_ROWS) + 2 * QC * LV + C + QC + 3 * (size_t)threads);
}

template <typename T, int D, int HALVES>
static dsla_status_t dsla_tc_bwd_run(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                     const dsla_cuda_dsla_in_t *in, const float *dout,
                                     const dsla_dsla_grad_t *grad, const dsla_cu_tc_ws_t *ws) {
    const int chunks = (dims->tokens + DSLA_CU_C - 1) / DSLA_CU_C;
    if (chunks == 0) return DSLA_OK;
    const int threads = DSLA_TC_OUT_THREADS * HALVES;
    const size_t smem = dsla_tc_bwd_smem(D, threads);
    DSLA_CUDA_CHECK(cudaFuncSetAttribute(dsla_tc_bwd<T, D, HALVES>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid(2u * (unsigned)chunks, (unsigned)dims->heads, (unsigned)dims->batch);
    dsla_tc_bwd<T, D, HALVES><<<grid, threads, smem, stream>>>(
        (const T *)in->q, (const T *)in->k, (const T *)in->v, (const T *)in->a1, (const T *)in->a2,
        in->alpha, dout, ws->states, ws->dstates, grad->dq, grad->dk, grad->dv, grad->da1,
        grad->da2, ws->gpart, dims->tokens, dims->heads);
    DSLA_CUDA_CHECK_LAUNCH("dsla_tc_bwd");
    return DSLA_OK;
}

template <typename T, int D>
static dsla_status_t dsla_tc_bwd_launch(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                        const dsla_cuda_dsla_in_t *in, const float *dout,
                                        const dsla_dsla_grad_t *grad, const dsla_cu_tc_ws_t *ws) {
    return ws->bwd_pairs ? dsla_tc_bwd_run<T, D, 2>(stream, dims, in, dout, grad, ws)
                         : dsla_tc_bwd_run<T, D, 1>(stream, dims, in, dout, grad, ws);
}

/* ---- entry points (dsla_chunked_tc.cuh) ---- */

template <typename T, int D>
static dsla_status_t dsla_tc_states_typed(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                          const dsla_cuda_dsla_in_t *in, const float *S1_0,
                                          const float *S2_0, float *S1_T, float *S2_T,
                                          const dsla_cu_tc_ws_t *ws) {
    return dsla_tc_pass<T, T, D, false>(stream, dims, (const T *)in->k, (const T *)in->a1,
                                        (const T *)in->a2, (const T *)in->v, in->alpha, S1_0, S2_0,
                                        S1_T, S2_T, ws->states, ws);
}

template <typename T, int D>
static dsla_status_t dsla_tc_dstates_typed(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                           const dsla_cuda_dsla_in_t *in, const float *dout,
                                           const float *dS1_T, const float *dS2_T, float *dS1_0,
                                           float *dS2_0, const dsla_cu_tc_ws_t *ws) {
    return dsla_tc_pass<T, float, D, true>(stream, dims, (const T *)in->q, (const T *)in->a1,
                                           (const T *)in->a2, dout, in->alpha, dS1_T, dS2_T, dS1_0,
                                           dS2_0, ws->dstates, ws);
}

/* Instantiates F<T, D> for the input dtype and head dim (both checked by the caller). */
#define DSLA_TC_DISPATCH(F, ...)                                                                   \
    (in->dtype == DSLA_DTYPE_BF16                                                                  \
         ? (dims->head_dim == 128 ? F<__nv_bfloat16, 128>(__VA_ARGS__)                             \
                                  : F<__nv_bfloat16, 64>(__VA_ARGS__))                             \
         : (dims->head_dim == 128 ? F<float, 128>(__VA_ARGS__) : F<float, 64>(__VA_ARGS__)))

dsla_status_t dsla_cu_tc_states(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                const dsla_cuda_dsla_in_t *in, const float *S1_0, const float *S2_0,
                                float *S1_T, float *S2_T, const dsla_cu_tc_ws_t *ws) {
    return DSLA_TC_DISPATCH(dsla_tc_states_typed, stream, dims, in, S1_0, S2_0, S1_T, S2_T, ws);
}

dsla_status_t dsla_cu_tc_dstates(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                 const dsla_cuda_dsla_in_t *in, const float *dout,
                                 const float *dS1_T, const float *dS2_T, float *dS1_0, float *dS2_0,
                                 const dsla_cu_tc_ws_t *ws) {
    return DSLA_TC_DISPATCH(dsla_tc_dstates_typed, stream, dims, in, dout, dS1_T, dS2_T, dS1_0,
                            dS2_0, ws);
}

dsla_status_t dsla_cu_tc_out(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                             const dsla_cuda_dsla_in_t *in, float *out, const dsla_cu_tc_ws_t *ws) {
    return DSLA_TC_DISPATCH(dsla_tc_out_launch, stream, dims, in, out, ws);
}

dsla_status_t dsla_cu_tc_bwd(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                             const dsla_cuda_dsla_in_t *in, const float *dout,
                             const dsla_dsla_grad_t *grad, const dsla_cu_tc_ws_t *ws) {
    return DSLA_TC_DISPATCH(dsla_tc_bwd_launch, stream, dims, in, dout, grad, ws);
}

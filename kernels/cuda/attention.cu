/* Causal grouped-query attention over the paged KV cache on the GPU, in the layout of
 * dsla_cpu_attention (position t of a sequence in block block_table[t / block_tokens], slot
 * t % block_tokens, kv_heads * head_dim floats per slot).
 *
 * - kv_append writes new tokens' keys and values into their slots.
 * - prefill (version 1, fp32 on CUDA cores): FlashAttention's schedule. A block owns 32 queries of
 *   one head, walks the causally visible keys 16 at a time through shared memory, and keeps each
 *   row's running max, running sum and unnormalised output in registers (the online softmax), so no
 *   score row is ever stored beyond one 32 x 16 tile.
 * - decode (version 1, split-K "flash decoding"): one query per sequence. A block owns one KV head,
 *   all the query heads of its group (so K and V are read once per group) and one chunk of the
 *   context; a second kernel merges the chunks by their softmax statistics. Chunks are cut so that
 *   even one sequence fills the GPU, and K/V rows are read as 16-byte vectors, four tokens in
 * flight per lane group, since decode attention is a pure stream over the cache. Both use expf (not
 * __expf) so that fp32 results agree with the CPU to rounding. */
#include <math.h>

#include "kernels/cuda/cuda_check.h"

/* ---- kv_append ---- */

static __global__ void kv_append(float *k, float *v, const int32_t *table, int block_tokens,
                                 int width, int past, int n, const float *k_src, const float *v_src,
                                 int src_stride) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)n * width) return;
    const int i = (int)(idx / width), j = (int)(idx % width);
    const int pos = past + i;
    const size_t slot = (size_t)table[pos / block_tokens] * block_tokens + pos % block_tokens;
    k[slot * width + j] = k_src[(size_t)i * src_stride + j];
    v[slot * width + j] = v_src[(size_t)i * src_stride + j];
}

extern "C" dsla_status_t dsla_cuda_kv_append(dsla_cuda_stream_t stream, const dsla_paged_kv_t *kv,
                                             int token_width, int past, int n, const float *k_src,
                                             const float *v_src, int src_stride) {
    const size_t total = (size_t)n * token_width;
    if (total == 0) return DSLA_OK;
    /* The view is const for the attention readers; the pool itself is the caller's and writable. */
    kv_append<<<dsla_cuda_blocks_for(total, DSLA_CUDA_BLOCK), DSLA_CUDA_BLOCK, 0, stream>>>(
        (float *)kv->k, (float *)kv->v, kv->block_table, kv->block_tokens, token_width, past, n,
        k_src, v_src, src_stride);
    DSLA_CUDA_CHECK_LAUNCH("kv_append");
    return DSLA_OK;
}

extern "C" int dsla_cuda_attention_supports(int head_dim) {
    return head_dim == 8 || head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

static dsla_status_t check_shape(const char *op, const dsla_attn_shape_t *shape) {
    if (!dsla_cuda_attention_supports(shape->head_dim))
        return dsla_error(DSLA_ERR_UNSUPPORTED, "%s: head_dim %d (compiled for 8, 16, 32, 64, 128)",
                          op, shape->head_dim);
    if (shape->n_kv_heads <= 0 || shape->n_heads % shape->n_kv_heads != 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %d query heads over %d KV heads", op,
                          shape->n_heads, shape->n_kv_heads);
    return DSLA_OK;
}

/* ---- prefill ---- */

/* 32 query rows x 16 keys per tile, 4 threads per query row: the 16 KV tokens of one cache block,
 * and 128 threads whose row statistics reduce within 4 adjacent lanes. Shared memory for d = 128 is
 * 35 KB, under the 48 KB a block gets without opting in. */
enum { PF_BQ = 32, PF_BK = 16, PF_TPR = 4, PF_THREADS = PF_BQ * PF_TPR };

struct prefill_args {
    const float *k, *v;
    const int32_t *table;
    int block_tokens, width, n_new, past, group, q_stride, out_stride;
    float scale;
};

template <int D>
static __global__ void __launch_bounds__(PF_THREADS)
    prefill(float *out, const float *q, prefill_args a) {
    /* Rows padded by one float: the 8 rows a warp reads at once fall in different banks. */
    __shared__ float qs[PF_BQ][D + 1];
    __shared__ float ks[PF_BK][D + 1];
    __shared__ float vs[PF_BK][D];
    __shared__ float ps[PF_BQ][PF_BK + 1];

    const int h = blockIdx.y, kvh = h / a.group, q0 = blockIdx.x * PF_BQ;
    const int tid = threadIdx.x, r = tid / PF_TPR, sub = tid % PF_TPR;
    for (int idx = tid; idx < PF_BQ * D; idx += PF_THREADS) {
        const int rr = idx / D, j = idx % D;
        qs[rr][j] = q0 + rr < a.n_new
                        ? q[(size_t)(q0 + rr) * a.q_stride + (size_t)h * D + j] * a.scale
                        : 0.0f;
    }
    /* Rows past n_new compute as copies of the last row and are not stored, so no row is ever
     * fully masked in the first tile (key 0 is visible to all). */
    const int qpos = a.past + min(q0 + r, a.n_new - 1);
    const int last_key = a.past + min(q0 + PF_BQ, a.n_new) - 1;

    constexpr int COLS = PF_BK / PF_TPR, DIMS = D / PF_TPR;
    float m = -INFINITY, l = 0.0f, acc[DIMS];
#pragma unroll
    for (int jj = 0; jj < DIMS; jj++)
        acc[jj] = 0.0f;

    for (int k0 = 0; k0 <= last_key; k0 += PF_BK) {
        __syncthreads(); /* the previous tile's readers are done */
        for (int idx = tid; idx < PF_BK * D; idx += PF_THREADS) {
            const int c = idx / D, j = idx % D, t = k0 + c;
            float kv_k = 0.0f, kv_v = 0.0f;
            if (t <= last_key) {
                const size_t slot =
                    (size_t)a.table[t / a.block_tokens] * a.block_tokens + t % a.block_tokens;
                const size_t off = slot * a.width + (size_t)kvh * D + j;
                kv_k = a.k[off];
                kv_v = a.v[off];
            }
            ks[c][j] = kv_k;
            vs[c][j] = kv_v;
        }
        __syncthreads();

        float s[COLS];
#pragma unroll
        for (int jj = 0; jj < COLS; jj++)
            s[jj] = 0.0f;
        for (int j = 0; j < D; j++) {
            const float qv = qs[r][j];
#pragma unroll
            for (int jj = 0; jj < COLS; jj++)
                s[jj] += qv * ks[sub + PF_TPR * jj][j];
        }
        float row_max = -INFINITY;
#pragma unroll
        for (int jj = 0; jj < COLS; jj++) {
            if (k0 + sub + PF_TPR * jj > qpos) s[jj] = -INFINITY;
            row_max = fmaxf(row_max, s[jj]);
        }
        for (int o = 1; o < PF_TPR; o <<= 1)
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, o));
        const float m_new = fmaxf(m, row_max); /* finite: key 0 was in the first tile */
        const float alpha = expf(m - m_new);
        float row_sum = 0.0f;
#pragma unroll
        for (int jj = 0; jj < COLS; jj++) {
            const float p = expf(s[jj] - m_new);
            ps[r][sub + PF_TPR * jj] = p;
            row_sum += p;
        }
        for (int o = 1; o < PF_TPR; o <<= 1)
            row_sum += __shfl_xor_sync(0xffffffffu, row_sum, o);
        l = l * alpha + row_sum;
        m = m_new;
        /* A row's probabilities are written and read by the same 4 lanes of one warp. */
        __syncwarp();
#pragma unroll
        for (int jj = 0; jj < DIMS; jj++)
            acc[jj] *= alpha;
        for (int c = 0; c < PF_BK; c++) {
            const float p = ps[r][c];
#pragma unroll
            for (int jj = 0; jj < DIMS; jj++)
                acc[jj] += p * vs[c][sub + PF_TPR * jj];
        }
    }
    if (q0 + r >= a.n_new) return;
    const float inv = 1.0f / l;
    float *o = out + (size_t)(q0 + r) * a.out_stride + (size_t)h * D;
#pragma unroll
    for (int jj = 0; jj < DIMS; jj++)
        o[sub + PF_TPR * jj] = acc[jj] * inv;
}

template <int D>
static void launch_prefill(dim3 grid, dsla_cuda_stream_t stream, float *out, const float *q,
                           const prefill_args &a) {
    prefill<D><<<grid, PF_THREADS, 0, stream>>>(out, q, a);
}

extern "C" dsla_status_t dsla_cuda_attention_prefill(dsla_cuda_stream_t stream, float *out,
                                                     int out_stride, const float *q, int q_stride,
                                                     int n_new, int past,
                                                     const dsla_attn_shape_t *shape,
                                                     const dsla_paged_kv_t *kv) {
    DSLA_TRY(check_shape("dsla_cuda_attention_prefill", shape));
    if (n_new <= 0) return DSLA_OK;
    const int d = shape->head_dim;
    prefill_args a = {kv->k,
                      kv->v,
                      kv->block_table,
                      kv->block_tokens,
                      shape->n_kv_heads * d,
                      n_new,
                      past,
                      shape->n_heads / shape->n_kv_heads,
                      q_stride,
                      out_stride,
                      1.0f / sqrtf((float)d)};
    const dim3 grid(dsla_cuda_blocks_for((size_t)n_new, PF_BQ), shape->n_heads);
    switch (d) {
    case 8:
        launch_prefill<8>(grid, stream, out, q, a);
        break;
    case 16:
        launch_prefill<16>(grid, stream, out, q, a);
        break;
    case 32:
        launch_prefill<32>(grid, stream, out, q, a);
        break;
    case 64:
        launch_prefill<64>(grid, stream, out, q, a);
        break;
    default:
        launch_prefill<128>(grid, stream, out, q, a);
        break;
    }
    DSLA_CUDA_CHECK_LAUNCH("attention prefill");
    return DSLA_OK;
}

/* ---- decode (split-K) ---- */

enum {
    DEC_WARPS = 4,
    DEC_UNROLL = 4,    /* tokens per lane group per step: 8 vector loads in flight per lane */
    DEC_MAX_GROUP = 8, /* query heads per KV head (Llama-3-70B has 8) */
    DEC_TARGET_BLOCKS = 1024, /* enough blocks to fill 132 SMs several times over */
    DEC_MIN_CHUNK = 64,       /* below this a chunk's merge costs more than its keys */
};

struct decode_args {
    const float *k, *v;
    const int32_t *tables, *lens;
    int table_stride, block_tokens, n_heads, group, width, chunk, splits, q_stride;
    float scale;
};

/* How many chunks each sequence's context is cut into: enough for DEC_TARGET_BLOCKS blocks over
 * the batch, no chunk under DEC_MIN_CHUNK tokens. */
static int decode_splits(int n_seqs, int max_context, const dsla_attn_shape_t *shape) {
    const int base = n_seqs * shape->n_kv_heads;
    int want = (DEC_TARGET_BLOCKS + base - 1) / base;
    int most = (max_context + DEC_MIN_CHUNK - 1) / DEC_MIN_CHUNK;
    int splits = want < most ? want : most;
    return splits < 1 ? 1 : splits;
}

/* A lane group of LANES lanes holds one token's head row, EPL contiguous floats per lane (one or
 * two 16-byte loads); a warp covers 32 / LANES tokens at once. */
template <int D> struct decode_geom {
    static constexpr int LANES = D / 4 < DSLA_CUDA_WARP ? D / 4 : DSLA_CUDA_WARP;
    static constexpr int EPL = D / LANES;
    static constexpr int TPW = DSLA_CUDA_WARP / LANES;
};

template <int EPL> static __device__ __forceinline__ void load_row(float *dst, const float *src) {
#pragma unroll
    for (int e = 0; e < EPL; e += 4) {
        const float4 x = *reinterpret_cast<const float4 *>(src + e);
        dst[e] = x.x;
        dst[e + 1] = x.y;
        dst[e + 2] = x.z;
        dst[e + 3] = x.w;
    }
}

/* Merges softmax state (m2, l2, acc2) into (m, l, acc); -inf maxima (nothing seen) weigh 0. */
template <int EPL>
static __device__ __forceinline__ void merge(float &m, float &l, float *acc, float m2, float l2,
                                             const float *acc2) {
    const float mx = fmaxf(m, m2);
    const float a = m == -INFINITY ? 0.0f : expf(m - mx);
    const float b = m2 == -INFINITY ? 0.0f : expf(m2 - mx);
    l = l * a + l2 * b;
#pragma unroll
    for (int e = 0; e < EPL; e++)
        acc[e] = acc[e] * a + acc2[e] * b;
    m = mx;
}

template <int D>
static __global__ void __launch_bounds__(DEC_WARPS *DSLA_CUDA_WARP)
    decode_split(float *part_acc, float *part_m, float *part_l, const float *q, decode_args a) {
    using G = decode_geom<D>;
    constexpr int LANES = G::LANES, EPL = G::EPL, TPW = G::TPW;
    constexpr int STEP = DEC_WARPS * TPW; /* tokens the block covers per unrolled slot */
    __shared__ float sm_acc[DEC_WARPS][DEC_MAX_GROUP][D];
    __shared__ float sm_m[DEC_WARPS][DEC_MAX_GROUP], sm_l[DEC_WARPS][DEC_MAX_GROUP];

    const int s = blockIdx.x, kvh = blockIdx.y, c = blockIdx.z;
    const int warp = threadIdx.x / DSLA_CUDA_WARP, lane = threadIdx.x % DSLA_CUDA_WARP;
    const int sub = lane / LANES, dim0 = (lane % LANES) * EPL;
    const int ctx = a.lens[s];
    const int t0 = c * a.chunk, t1 = min(ctx, t0 + a.chunk);
    const int32_t *table = a.tables + (size_t)s * a.table_stride;
    const size_t head_off = (size_t)kvh * D + dim0;

    float qr[DEC_MAX_GROUP][EPL], m[DEC_MAX_GROUP], l[DEC_MAX_GROUP], acc[DEC_MAX_GROUP][EPL];
#pragma unroll
    for (int g = 0; g < DEC_MAX_GROUP; g++) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            acc[g][e] = 0.0f;
            qr[g][e] =
                g < a.group
                    ? q[(size_t)s * a.q_stride + (size_t)(kvh * a.group + g) * D + dim0 + e] *
                          a.scale
                    : 0.0f;
        }
    }

    /* The loop bound is uniform across the warp (the shuffles below need every lane). */
    for (int wbase = t0 + warp * TPW; wbase < t1; wbase += STEP * DEC_UNROLL) {
        float kk[DEC_UNROLL][EPL], vv[DEC_UNROLL][EPL];
        bool valid[DEC_UNROLL];
#pragma unroll
        for (int u = 0; u < DEC_UNROLL; u++) {
            const int t = wbase + sub + u * STEP;
            valid[u] = t < t1;
            if (valid[u]) {
                const size_t slot =
                    (size_t)table[t / a.block_tokens] * a.block_tokens + t % a.block_tokens;
                load_row<EPL>(kk[u], a.k + slot * a.width + head_off);
                load_row<EPL>(vv[u], a.v + slot * a.width + head_off);
            } else {
#pragma unroll
                for (int e = 0; e < EPL; e++)
                    kk[u][e] = vv[u][e] = 0.0f;
            }
        }
#pragma unroll
        for (int g = 0; g < DEC_MAX_GROUP; g++) {
            if (g >= a.group) break; /* uniform across the block */
            float sc[DEC_UNROLL], mx = m[g];
#pragma unroll
            for (int u = 0; u < DEC_UNROLL; u++) {
                float dot = 0.0f;
#pragma unroll
                for (int e = 0; e < EPL; e++)
                    dot += qr[g][e] * kk[u][e];
#pragma unroll
                for (int o = LANES / 2; o > 0; o >>= 1)
                    dot += __shfl_xor_sync(0xffffffffu, dot, o);
                sc[u] = valid[u] ? dot : -INFINITY;
                mx = fmaxf(mx, sc[u]);
            }
            if (mx == -INFINITY) continue; /* this lane group saw no token yet */
            const float alpha = expf(m[g] - mx);
            l[g] *= alpha;
#pragma unroll
            for (int e = 0; e < EPL; e++)
                acc[g][e] *= alpha;
#pragma unroll
            for (int u = 0; u < DEC_UNROLL; u++) {
                const float p = expf(sc[u] - mx);
                l[g] += p;
#pragma unroll
                for (int e = 0; e < EPL; e++)
                    acc[g][e] += p * vv[u][e];
            }
            m[g] = mx;
        }
    }

    /* Lane groups of the warp into lane group 0, then warps through shared memory. */
#pragma unroll
    for (int g = 0; g < DEC_MAX_GROUP; g++) {
        if (g >= a.group) break;
#pragma unroll
        for (int o = LANES; o < DSLA_CUDA_WARP; o <<= 1) {
            float acc2[EPL];
#pragma unroll
            for (int e = 0; e < EPL; e++)
                acc2[e] = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
            const float m2 = __shfl_xor_sync(0xffffffffu, m[g], o);
            const float l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
            merge<EPL>(m[g], l[g], acc[g], m2, l2, acc2);
        }
        if (sub == 0) {
#pragma unroll
            for (int e = 0; e < EPL; e++)
                sm_acc[warp][g][dim0 + e] = acc[g][e];
            if (lane == 0) {
                sm_m[warp][g] = m[g];
                sm_l[warp][g] = l[g];
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < a.group * D; i += DEC_WARPS * DSLA_CUDA_WARP) {
        const int g = i / D, e = i % D;
        float mx = -INFINITY;
        for (int w = 0; w < DEC_WARPS; w++)
            mx = fmaxf(mx, sm_m[w][g]);
        float lsum = 0.0f, asum = 0.0f;
        for (int w = 0; w < DEC_WARPS; w++) {
            const float wt = sm_m[w][g] == -INFINITY ? 0.0f : expf(sm_m[w][g] - mx);
            lsum += sm_l[w][g] * wt;
            asum += sm_acc[w][g][e] * wt;
        }
        const size_t part = ((size_t)s * a.n_heads + kvh * a.group + g) * a.splits + c;
        part_acc[part * D + e] = asum;
        if (e == 0) {
            part_m[part] = mx;
            part_l[part] = lsum;
        }
    }
}

template <int D>
static __global__ void decode_combine(float *out, int out_stride, const float *part_acc,
                                      const float *part_m, const float *part_l, int n_heads,
                                      int splits) {
    const int s = blockIdx.x / n_heads, h = blockIdx.x % n_heads;
    const size_t base = ((size_t)s * n_heads + h) * splits;
    float mx = -INFINITY;
    for (int c = 0; c < splits; c++)
        mx = fmaxf(mx, part_m[base + c]);
    for (int e = threadIdx.x; e < D; e += blockDim.x) {
        float lsum = 0.0f, asum = 0.0f;
        for (int c = 0; c < splits; c++) {
            const float mc = part_m[base + c];
            const float wt = mc == -INFINITY ? 0.0f : expf(mc - mx);
            lsum += part_l[base + c] * wt;
            asum += part_acc[(base + c) * D + e] * wt;
        }
        out[(size_t)s * out_stride + (size_t)h * D + e] = asum / lsum;
    }
}

extern "C" size_t dsla_cuda_attention_decode_workspace(int n_seqs, int max_context,
                                                       const dsla_attn_shape_t *shape) {
    const size_t parts =
        (size_t)n_seqs * shape->n_heads * (size_t)decode_splits(n_seqs, max_context, shape);
    return parts * ((size_t)shape->head_dim + 2) * sizeof(float);
}

template <int D>
static void launch_decode(dsla_cuda_stream_t stream, float *out, int out_stride, const float *q,
                          int n_seqs, const decode_args &a, float *ws) {
    float *part_acc = ws;
    const size_t parts = (size_t)n_seqs * a.n_heads * a.splits;
    float *part_m = ws + parts * D, *part_l = part_m + parts;
    const dim3 grid(n_seqs, a.n_heads / a.group, a.splits);
    decode_split<D>
        <<<grid, DEC_WARPS * DSLA_CUDA_WARP, 0, stream>>>(part_acc, part_m, part_l, q, a);
    decode_combine<D><<<n_seqs * a.n_heads, D, 0, stream>>>(out, out_stride, part_acc, part_m,
                                                            part_l, a.n_heads, a.splits);
}

extern "C" dsla_status_t dsla_cuda_attention_decode(dsla_cuda_stream_t stream, float *out,
                                                    int out_stride, const float *q, int q_stride,
                                                    int n_seqs, int max_context,
                                                    const dsla_attn_shape_t *shape,
                                                    const dsla_cuda_paged_batch_t *kv,
                                                    void *workspace, size_t workspace_bytes) {
    DSLA_TRY(check_shape("dsla_cuda_attention_decode", shape));
    if (n_seqs <= 0) return DSLA_OK;
    const int group = shape->n_heads / shape->n_kv_heads;
    if (group > DEC_MAX_GROUP)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "dsla_cuda_attention_decode: %d query heads per KV head (at most %d)",
                          group, DEC_MAX_GROUP);
    const size_t need = dsla_cuda_attention_decode_workspace(n_seqs, max_context, shape);
    if (workspace_bytes < need)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_attention_decode: workspace of %zu bytes, needs %zu",
                          workspace_bytes, need);
    const int splits = decode_splits(n_seqs, max_context, shape);
    const int chunk = (max_context + splits - 1) / splits;
    const int d = shape->head_dim;
    decode_args a = {kv->k,
                     kv->v,
                     kv->block_tables,
                     kv->context_lens,
                     kv->table_stride,
                     kv->block_tokens,
                     shape->n_heads,
                     group,
                     shape->n_kv_heads * d,
                     chunk,
                     splits,
                     q_stride,
                     1.0f / sqrtf((float)d)};
    float *ws = (float *)workspace;
    switch (d) {
    case 8:
        launch_decode<8>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    case 16:
        launch_decode<16>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    case 32:
        launch_decode<32>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    case 64:
        launch_decode<64>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    default:
        launch_decode<128>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    }
    DSLA_CUDA_CHECK_LAUNCH("attention decode");
    return DSLA_OK;
}

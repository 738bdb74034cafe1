/* Causal grouped-query attention over the paged KV cache on the GPU, in the layout of
 * dsla_cpu_attention (position t of a sequence in block block_table[t / block_tokens], slot
 * t % block_tokens, kv_heads * head_dim values per slot). The pool holds fp32 (the exactness path)
 * or bf16 (serving: half the bytes of every decode step); arithmetic is fp32 either way.
 *
 * - kv_append / kv_write write new tokens' keys and values into their slots.
 * - prefill_tc (version 2, bf16 pools, d = 64 or 128): FlashAttention-2 on tensor cores. A block of
 *   4 warps owns 64 queries of one head (16 per warp, one mma.sync m16n8k16 row tile), walks the
 *   visible keys 64 at a time through a two-stage cp.async pipeline, computes S = Q K^T and O += P
 * V with bf16 operands and fp32 accumulators, keeps the online-softmax statistics in registers and
 *   feeds P to the second product straight from the first product's accumulators.
 * - prefill (version 1, fp32 on CUDA cores; the fallback for fp32 pools and other head dims):
 * FlashAttention's schedule. A block owns 32 queries of one head, walks the causally visible keys
 * 16 at a time through shared memory, and keeps each row's running max, running sum and
 * unnormalised output in registers (the online softmax), so no score row is ever stored beyond one
 * 32 x 16 tile.
 * - decode (version 2, split-K "flash decoding"): one query per sequence. A block owns one KV head,
 *   all the query heads of its group (so K and V are read once per group) and one chunk of the
 *   context; a second kernel merges the chunks by their softmax statistics. Chunks are cut so that
 *   even one sequence fills the GPU, and K/V rows are read as 16-byte vectors, four tokens in
 * flight per lane group, since decode attention is a pure stream over the cache. Version 2 cuts
 * each sequence's chunks from its actual length on the device (version 1 cut them from the
 * caller's bound, a graph's power-of-two bucket, leaving up to half the blocks idle) and sizes the
 * registers for the group (1, 2, 4 or 8 query heads per KV head) instead of always 8. Both use expf
 * (not
 * __expf) so that fp32 results agree with the CPU to rounding. */
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>

#include "kernels/cuda/cuda_check.h"

static __device__ __forceinline__ float kv_load(const float *p) {
    return *p;
}

static __device__ __forceinline__ float kv_load(const __nv_bfloat16 *p) {
    return __bfloat162float(*p);
}

static __device__ __forceinline__ void kv_store(float *p, float v) {
    *p = v;
}

static __device__ __forceinline__ void kv_store(__nv_bfloat16 *p, float v) {
    *p = __float2bfloat16_rn(v);
}

/* ---- kv_append / kv_write ---- */

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

/* One block row per new token, threads across its width: the slot index is read once per row. */
template <typename T>
static __global__ void kv_write(T *k, T *v, const int32_t *slots, int width, const float *k_src,
                                const float *v_src, int src_stride) {
    const int i = blockIdx.x;
    const size_t dst = (size_t)slots[i] * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        kv_store(k + dst + j, k_src[(size_t)i * src_stride + j]);
        kv_store(v + dst + j, v_src[(size_t)i * src_stride + j]);
    }
}

extern "C" dsla_status_t dsla_cuda_kv_write(dsla_cuda_stream_t stream,
                                            const dsla_cuda_kv_pool_t *pool, const int32_t *slots,
                                            int n, int width, const float *k_src,
                                            const float *v_src, int src_stride) {
    if (n <= 0) return DSLA_OK;
    if (pool->dtype == DSLA_DTYPE_F32)
        kv_write<<<n, DSLA_CUDA_BLOCK, 0, stream>>>((float *)pool->k, (float *)pool->v, slots,
                                                    width, k_src, v_src, src_stride);
    else if (pool->dtype == DSLA_DTYPE_BF16)
        kv_write<<<n, DSLA_CUDA_BLOCK, 0, stream>>>((__nv_bfloat16 *)pool->k,
                                                    (__nv_bfloat16 *)pool->v, slots, width, k_src,
                                                    v_src, src_stride);
    else
        return dsla_error(DSLA_ERR_UNSUPPORTED, "dsla_cuda_kv_write: pool dtype %s (f32 or bf16)",
                          dsla_dtype_name(pool->dtype));
    DSLA_CUDA_CHECK_LAUNCH("kv_write");
    return DSLA_OK;
}

/* One block row per token: rows past n are zeroed; 16-byte copies (width is a multiple of 8). */
static __global__ void kv_gather(uint4 *k_out, uint4 *v_out, const uint4 *k, const uint4 *v,
                                 const int32_t *table, int block_tokens, int n, int vecs) {
    const int t = blockIdx.x;
    const size_t dst = (size_t)t * vecs;
    if (t >= n) {
        for (int j = threadIdx.x; j < vecs; j += blockDim.x)
            k_out[dst + j] = v_out[dst + j] = make_uint4(0, 0, 0, 0);
        return;
    }
    const size_t src = ((size_t)table[t / block_tokens] * block_tokens + t % block_tokens) * vecs;
    for (int j = threadIdx.x; j < vecs; j += blockDim.x) {
        k_out[dst + j] = k[src + j];
        v_out[dst + j] = v[src + j];
    }
}

extern "C" dsla_status_t dsla_cuda_kv_gather(dsla_cuda_stream_t stream,
                                             const dsla_cuda_kv_pool_t *pool,
                                             const int32_t *block_table, int n, int rows, int width,
                                             uint16_t *k_out, uint16_t *v_out) {
    if (pool->dtype != DSLA_DTYPE_BF16 || width % 8 != 0 || n < 0 || rows < n)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_kv_gather: pool %s (bf16), width %d (a multiple of 8), n %d "
                          "and rows %d (0 <= n <= rows)",
                          dsla_dtype_name(pool->dtype), width, n, rows);
    if (rows == 0) return DSLA_OK;
    kv_gather<<<rows, 128, 0, stream>>>((uint4 *)k_out, (uint4 *)v_out, (const uint4 *)pool->k,
                                        (const uint4 *)pool->v, block_table, pool->block_tokens, n,
                                        width / 8);
    DSLA_CUDA_CHECK_LAUNCH("kv_gather");
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

static dsla_status_t check_pool(const char *op, const dsla_cuda_kv_pool_t *pool) {
    if (pool->dtype != DSLA_DTYPE_F32 && pool->dtype != DSLA_DTYPE_BF16)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "%s: pool dtype %s (f32 or bf16)", op,
                          dsla_dtype_name(pool->dtype));
    return DSLA_OK;
}

/* ---- prefill, version 1 (CUDA cores) ---- */

/* 32 query rows x 16 keys per tile, 4 threads per query row: the 16 KV tokens of one cache block,
 * and 128 threads whose row statistics reduce within 4 adjacent lanes. Shared memory for d = 128 is
 * 35 KB, under the 48 KB a block gets without opting in. */
enum { PF_BQ = 32, PF_BK = 16, PF_TPR = 4, PF_THREADS = PF_BQ * PF_TPR };

template <typename T> struct prefill_args {
    const T *k, *v;
    const int32_t *table;
    int block_tokens, width, n_new, past, group, q_stride, out_stride;
    float scale;
};

template <int D, typename T>
static __global__ void __launch_bounds__(PF_THREADS)
    prefill(float *out, const float *q, prefill_args<T> a) {
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
                kv_k = kv_load(a.k + off);
                kv_v = kv_load(a.v + off);
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

template <typename T>
static void launch_prefill(int d, dim3 grid, dsla_cuda_stream_t stream, float *out, const float *q,
                           const prefill_args<T> &a) {
    switch (d) {
    case 8:
        prefill<8, T><<<grid, PF_THREADS, 0, stream>>>(out, q, a);
        break;
    case 16:
        prefill<16, T><<<grid, PF_THREADS, 0, stream>>>(out, q, a);
        break;
    case 32:
        prefill<32, T><<<grid, PF_THREADS, 0, stream>>>(out, q, a);
        break;
    case 64:
        prefill<64, T><<<grid, PF_THREADS, 0, stream>>>(out, q, a);
        break;
    default:
        prefill<128, T><<<grid, PF_THREADS, 0, stream>>>(out, q, a);
        break;
    }
}

template <typename T>
static dsla_status_t prefill_cuda_cores(dsla_cuda_stream_t stream, float *out, int out_stride,
                                        const float *q, int q_stride, int n_new, int past,
                                        const dsla_attn_shape_t *shape, const T *k, const T *v,
                                        const int32_t *table, int block_tokens) {
    const int d = shape->head_dim;
    prefill_args<T> a = {k,
                         v,
                         table,
                         block_tokens,
                         shape->n_kv_heads * d,
                         n_new,
                         past,
                         shape->n_heads / shape->n_kv_heads,
                         q_stride,
                         out_stride,
                         1.0f / sqrtf((float)d)};
    const dim3 grid(dsla_cuda_blocks_for((size_t)n_new, PF_BQ), shape->n_heads);
    launch_prefill<T>(d, grid, stream, out, q, a);
    DSLA_CUDA_CHECK_LAUNCH("attention prefill");
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_attention_prefill(dsla_cuda_stream_t stream, float *out,
                                                     int out_stride, const float *q, int q_stride,
                                                     int n_new, int past,
                                                     const dsla_attn_shape_t *shape,
                                                     const dsla_paged_kv_t *kv) {
    DSLA_TRY(check_shape("dsla_cuda_attention_prefill", shape));
    if (n_new <= 0) return DSLA_OK;
    return prefill_cuda_cores<float>(stream, out, out_stride, q, q_stride, n_new, past, shape,
                                     kv->k, kv->v, kv->block_table, kv->block_tokens);
}

/* ---- prefill, version 2 (tensor cores, bf16 pools) ---- */

/* 4 warps x 16 query rows (one m16 tile each) and 64-key tiles: S fits in 32 fp32 registers per
 * thread and O (d = 128) in 64, leaving room for the Q fragments without spilling. Rows of shared
 * memory are padded by 8 bf16 (16 bytes) so the 8 row addresses of one ldmatrix fall in different
 * banks. */
enum { TC_WARPS = 4, TC_BQ = 16 * TC_WARPS, TC_BK = 64, TC_PAD = 8, TC_STAGES = 2 };

struct tc_args {
    const __nv_bfloat16 *k, *v;
    const int32_t *table;
    int block_tokens, width, n_new, past, group, q_stride, out_stride;
    float scale_log2; /* 1/sqrt(d) * log2(e): the softmax runs on exp2 */
};

template <int D> constexpr size_t tc_smem_bytes() {
    return (size_t)(TC_BQ + 2 * TC_STAGES * TC_BK) * (D + TC_PAD) * sizeof(__nv_bfloat16);
}

static __device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate. */
static __device__ __forceinline__ void mma_bf16(float *c, const uint32_t *a, uint32_t b0,
                                                uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* 16 bytes global -> shared without a register round trip; src_bytes 0 writes zeros, so keys past
 * the visible range hold zeros rather than stale values (0 * NaN would poison P V). */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(src_bytes));
}

static __device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

static __device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* Copies keys k0..k0+TC_BK-1 of KV head kvh into a [TC_BK][D + TC_PAD] tile (zeros past
 * last_key), 16 bytes per cp.async. */
template <int D>
static __device__ __forceinline__ void tc_load_tile(__nv_bfloat16 *dst, const __nv_bfloat16 *pool,
                                                    const tc_args &a, int kvh, int k0,
                                                    int last_key) {
    constexpr int CHUNKS = D / 8; /* 16-byte pieces per row */
    for (int idx = threadIdx.x; idx < TC_BK * CHUNKS; idx += TC_WARPS * DSLA_CUDA_WARP) {
        const int r = idx / CHUNKS, c = idx % CHUNKS, t = k0 + r;
        const __nv_bfloat16 *src = pool;
        int bytes = 0;
        if (t <= last_key) {
            const size_t slot =
                (size_t)a.table[t / a.block_tokens] * a.block_tokens + t % a.block_tokens;
            src = pool + slot * a.width + (size_t)kvh * D + c * 8;
            bytes = 16;
        }
        cp_async16(dst + r * (D + TC_PAD) + c * 8, src, bytes);
    }
}

template <int D>
static __global__ void __launch_bounds__(TC_WARPS *DSLA_CUDA_WARP)
    prefill_tc(float *out, const float *q, tc_args a) {
    constexpr int LD = D + TC_PAD, KSTEPS = D / 16, NT_S = TC_BK / 8, NT_O = D / 8;
    extern __shared__ __align__(16) unsigned char tc_smem[];
    __nv_bfloat16 *qs = reinterpret_cast<__nv_bfloat16 *>(tc_smem);
    __nv_bfloat16 *ks = qs + TC_BQ * LD;             /* [TC_STAGES][TC_BK][LD] */
    __nv_bfloat16 *vs = ks + TC_STAGES * TC_BK * LD; /* [TC_STAGES][TC_BK][LD] */

    /* Longest query tiles first: under the causal mask their blocks walk the most keys. */
    const int q0 = (gridDim.x - 1 - blockIdx.x) * TC_BQ;
    const int h = blockIdx.y, kvh = h / a.group;
    const int warp = threadIdx.x / DSLA_CUDA_WARP, lane = threadIdx.x % DSLA_CUDA_WARP;
    const int g = lane / 4, tig = lane % 4;
    const int last_key = a.past + min(q0 + TC_BQ, a.n_new) - 1;
    const int n_tiles = last_key / TC_BK + 1;

    tc_load_tile<D>(ks, a.k, a, kvh, 0, last_key);
    tc_load_tile<D>(vs, a.v, a, kvh, 0, last_key);
    cp_async_commit();

    for (int idx = threadIdx.x; idx < TC_BQ * (D / 2); idx += TC_WARPS * DSLA_CUDA_WARP) {
        const int r = idx / (D / 2), c = (idx % (D / 2)) * 2;
        float2 x = make_float2(0.0f, 0.0f);
        if (q0 + r < a.n_new)
            x = *reinterpret_cast<const float2 *>(q + (size_t)(q0 + r) * a.q_stride +
                                                  (size_t)h * D + c);
        *reinterpret_cast<__nv_bfloat162 *>(qs + r * LD + c) = __floats2bfloat162_rn(x.x, x.y);
    }
    __syncthreads();

    /* A fragments of this warp's 16 rows: matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15). */
    uint32_t qf[KSTEPS][4];
    {
        const int mat = lane / 8, i = lane % 8;
        const __nv_bfloat16 *base = qs + (warp * 16 + (mat & 1) * 8 + i) * LD + (mat >> 1) * 8;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
            ldmatrix_x4(qf[kk], base + kk * 16);
    }

    /* Rows this thread holds: g and g + 8 of the warp's tile. Rows past n_new behave as the last
     * row (so none is fully masked) and are not stored. */
    int qpos[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++)
        qpos[rr] = a.past + min(q0 + warp * 16 + g + rr * 8, a.n_new - 1);

    float o[NT_O][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < NT_O; nt++)
        o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.0f;

    for (int j = 0; j < n_tiles; j++) {
        if (j + 1 < n_tiles) {
            const int st = (j + 1) % TC_STAGES;
            tc_load_tile<D>(ks + st * TC_BK * LD, a.k, a, kvh, (j + 1) * TC_BK, last_key);
            tc_load_tile<D>(vs + st * TC_BK * LD, a.v, a, kvh, (j + 1) * TC_BK, last_key);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const __nv_bfloat16 *kt = ks + (j % TC_STAGES) * TC_BK * LD;
        const __nv_bfloat16 *vt = vs + (j % TC_STAGES) * TC_BK * LD;
        const int k0 = j * TC_BK;

        float s[NT_S][4];
#pragma unroll
        for (int nt = 0; nt < NT_S; nt++)
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
        {
            /* B fragments of K^T: matrices (keys 0-7 | 8-15 of the pair) x (dims 0-7 | 8-15). */
            const int mat = lane / 8, i = lane % 8;
            const __nv_bfloat16 *base = kt + ((mat >> 1) * 8 + i) * LD + (mat & 1) * 8;
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
#pragma unroll
                for (int np = 0; np < NT_S / 2; np++) {
                    uint32_t b[4];
                    ldmatrix_x4(b, base + np * 16 * LD + kk * 16);
                    mma_bf16(s[2 * np], qf[kk], b[0], b[1]);
                    mma_bf16(s[2 * np + 1], qf[kk], b[2], b[3]);
                }
            }
        }

        /* Mask, scale into the exp2 domain, and run the online softmax per row. */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NT_S; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int t = k0 + nt * 8 + tig * 2 + (e & 1), rr = e >> 1;
                const float v = t <= qpos[rr] ? s[nt][e] * a.scale_log2 : -INFINITY;
                s[nt][e] = v;
                mx[rr] = fmaxf(mx[rr], v);
            }
        }
        float alpha[2];
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 1));
            mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 2));
            /* Finite after the first tile: key 0 is visible to every row. */
            const float m_new = fmaxf(m[rr], mx[rr]);
            alpha[rr] = fast_exp2(m[rr] - m_new);
            m[rr] = m_new;
            l[rr] *= alpha[rr];
        }
#pragma unroll
        for (int nt = 0; nt < NT_S; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rr = e >> 1;
                const float p = fast_exp2(s[nt][e] - m[rr]);
                s[nt][e] = p;
                l[rr] += p; /* this lane's columns; the quad's partial sums merge at the end */
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT_O; nt++) {
            o[nt][0] *= alpha[0];
            o[nt][1] *= alpha[0];
            o[nt][2] *= alpha[1];
            o[nt][3] *= alpha[1];
        }

        /* O += P V: P's accumulators are already laid out as the A fragments of the next product;
         * V's B fragments come transposed: matrices (keys 0-7 | 8-15) x (dims 0-7 | 8-15). */
        {
            const int mat = lane / 8, i = lane % 8;
            const __nv_bfloat16 *base = vt + ((mat & 1) * 8 + i) * LD + (mat >> 1) * 8;
#pragma unroll
            for (int kk = 0; kk < TC_BK / 16; kk++) {
                uint32_t pa[4];
                pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
                pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
                pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
                for (int dp = 0; dp < NT_O / 2; dp++) {
                    uint32_t b[4];
                    ldmatrix_x4_trans(b, base + kk * 16 * LD + dp * 16);
                    mma_bf16(o[2 * dp], pa, b[0], b[1]);
                    mma_bf16(o[2 * dp + 1], pa, b[2], b[3]);
                }
            }
        }
        __syncthreads(); /* every warp is done with this stage before it is refilled */
    }

#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 1);
        l[rr] += __shfl_xor_sync(0xffffffffu, l[rr], 2);
        const int row = q0 + warp * 16 + g + rr * 8;
        if (row >= a.n_new) continue;
        const float inv = 1.0f / l[rr];
        float *dst = out + (size_t)row * a.out_stride + (size_t)h * D + tig * 2;
#pragma unroll
        for (int nt = 0; nt < NT_O; nt++)
            *reinterpret_cast<float2 *>(dst + nt * 8) =
                make_float2(o[nt][rr * 2] * inv, o[nt][rr * 2 + 1] * inv);
    }
}

extern "C" dsla_status_t dsla_cuda_attention_prefill_pool(dsla_cuda_stream_t stream, float *out,
                                                          int out_stride, const float *q,
                                                          int q_stride, int n_new, int past,
                                                          const dsla_attn_shape_t *shape,
                                                          const dsla_cuda_kv_pool_t *pool,
                                                          const int32_t *block_table) {
    DSLA_TRY(check_shape("dsla_cuda_attention_prefill_pool", shape));
    DSLA_TRY(check_pool("dsla_cuda_attention_prefill_pool", pool));
    if (n_new <= 0) return DSLA_OK;
    const int d = shape->head_dim;
    if (pool->dtype == DSLA_DTYPE_F32)
        return prefill_cuda_cores<float>(stream, out, out_stride, q, q_stride, n_new, past, shape,
                                         (const float *)pool->k, (const float *)pool->v,
                                         block_table, pool->block_tokens);
    const __nv_bfloat16 *k = (const __nv_bfloat16 *)pool->k, *v = (const __nv_bfloat16 *)pool->v;
    if (d != 64 && d != 128)
        return prefill_cuda_cores<__nv_bfloat16>(stream, out, out_stride, q, q_stride, n_new, past,
                                                 shape, k, v, block_table, pool->block_tokens);
    const tc_args a = {k,
                       v,
                       block_table,
                       pool->block_tokens,
                       shape->n_kv_heads * d,
                       n_new,
                       past,
                       shape->n_heads / shape->n_kv_heads,
                       q_stride,
                       out_stride,
                       1.4426950408889634f / sqrtf((float)d)};
    const dim3 grid(dsla_cuda_blocks_for((size_t)n_new, TC_BQ), shape->n_heads);
    if (d == 64) {
        DSLA_CUDA_CHECK(cudaFuncSetAttribute(
            prefill_tc<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, tc_smem_bytes<64>()));
        prefill_tc<64><<<grid, TC_WARPS * DSLA_CUDA_WARP, tc_smem_bytes<64>(), stream>>>(out, q, a);
    } else {
        DSLA_CUDA_CHECK(cudaFuncSetAttribute(
            prefill_tc<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, tc_smem_bytes<128>()));
        prefill_tc<128>
            <<<grid, TC_WARPS * DSLA_CUDA_WARP, tc_smem_bytes<128>(), stream>>>(out, q, a);
    }
    DSLA_CUDA_CHECK_LAUNCH("attention prefill (tensor cores)");
    return DSLA_OK;
}

/* ---- decode (split-K) ---- */

enum {
    DEC_WARPS = 4,
    DEC_UNROLL = 4,    /* tokens per lane group per step: 8 vector loads in flight per lane */
    DEC_MAX_GROUP = 8, /* query heads per KV head (Llama-3-70B has 8) */
    DEC_TARGET_BLOCKS = 1024, /* enough blocks to fill 132 SMs several times over */
    DEC_MIN_CHUNK = 64,       /* below this a chunk's merge costs more than its keys */
    DEC_CHUNK_ALIGN = 32,     /* chunks start on whole rounds of a block's loads */
    DEC_BALANCE_CHUNK = 512,  /* the longest sequence is cut in chunks of at most about this */
};

/* DEC_BALANCE_CHUNK, or the environment's DSLA_DECODE_BALANCE_CHUNK when the first decode runs
 * (benchmarks compare values; 0 or unset keeps the default). */
static int balance_chunk(void) {
    static int chunk;
    if (chunk == 0) {
        const char *e = getenv("DSLA_DECODE_BALANCE_CHUNK");
        const int v = e ? atoi(e) : 0;
        chunk = v >= DEC_MIN_CHUNK ? v : DEC_BALANCE_CHUNK;
    }
    return chunk;
}

template <typename T> struct decode_args {
    const T *k, *v;
    const int32_t *tables, *rows, *lens;
    int table_stride, block_tokens, n_heads, group, width, splits, q_stride;
    float scale;
};

/* How many chunks each sequence's context is cut into: enough for DEC_TARGET_BLOCKS blocks over
 * the batch, no chunk under DEC_MIN_CHUNK tokens of max_context. The chunk length itself is cut
 * from each sequence's actual length on the device (decode_chunk), so a bound far above the real
 * context (a graph's bucket) leaves no block idle: version 1 cut chunks from max_context, and a
 * context just past a power-of-two bucket left half the blocks without keys. */
/* Version 3 adds a floor of max_context / DEC_BALANCE_CHUNK splits: a serving batch mixes
 * lengths, and with one split per sequence (64 sequences of 256..2304 tokens) the blocks of the
 * longest ran alone at the end, 0.67 of copy bandwidth on an H200 against 0.88 at 256 sequences. */
static int decode_splits(int n_seqs, int max_context, const dsla_attn_shape_t *shape) {
    const int base = n_seqs * shape->n_kv_heads;
    int want = (DEC_TARGET_BLOCKS + base - 1) / base;
    const int balance = (max_context + balance_chunk() - 1) / balance_chunk();
    if (want < balance) want = balance;
    int most = (max_context + DEC_MIN_CHUNK - 1) / DEC_MIN_CHUNK;
    int splits = want < most ? want : most;
    return splits < 1 ? 1 : splits;
}

/* Tokens per chunk for a context of ctx tokens in `splits` chunks: whole load rounds, no chunk
 * under DEC_MIN_CHUNK (short contexts leave the last chunks empty, which the merge ignores). */
static __device__ __forceinline__ int decode_chunk(int ctx, int splits) {
    int chunk = (ctx + splits - 1) / splits;
    chunk = (chunk + DEC_CHUNK_ALIGN - 1) / DEC_CHUNK_ALIGN * DEC_CHUNK_ALIGN;
    return chunk > DEC_MIN_CHUNK ? chunk : DEC_MIN_CHUNK;
}

/* A lane group of LANES lanes holds one token's head row, EPL contiguous values per lane: 16-byte
 * loads of either dtype (4 fp32 or 8 bf16 per load), so a bf16 cache keeps as many bytes in flight
 * per lane as an fp32 one; a warp covers 32 / LANES tokens at once. */
template <int D, typename T> struct decode_geom {
    static constexpr int VEC = 16 / (int)sizeof(T);
    static constexpr int LANES = D / VEC < DSLA_CUDA_WARP ? D / VEC : DSLA_CUDA_WARP;
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

/* EPL is a multiple of 8: eight bf16 are one 16-byte load. */
template <int EPL>
static __device__ __forceinline__ void load_row(float *dst, const __nv_bfloat16 *src) {
#pragma unroll
    for (int e = 0; e < EPL; e += 8) {
        const uint4 x = *reinterpret_cast<const uint4 *>(src + e);
        const uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&w[i]));
            dst[e + 2 * i] = f.x;
            dst[e + 2 * i + 1] = f.y;
        }
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

/* GMAX: query heads per KV head the registers are reserved for (1, 2, 4 or 8, >= a.group): a
 * Llama-2 (group 1) block then holds one head's accumulators instead of eight. */
/* Tokens in flight per lane group (UNROLL, so 2 x UNROLL 16-byte loads per lane) and blocks each
 * SM must be able to hold (MINB, which caps the registers). A bf16 cache with one query head per
 * KV head (Llama-2-7B) streams fastest with more, lighter blocks: UNROLL 2 at 8 blocks per SM (64
 * registers) against UNROLL 4 at 4 (111 registers) took batch-1 16K decode attention from ~2.5 to
 * ~3.7 TB/s on an H200, while UNROLL 8, or forcing 6 or 12 blocks (spills), lost (docs/perf.md).
 * Other cases keep the schedule they were measured with. */
template <typename T, int GMAX> struct decode_sched {
    static constexpr int UNROLL = DEC_UNROLL, MINB = 1;
};
template <> struct decode_sched<__nv_bfloat16, 1> { static constexpr int UNROLL = 2, MINB = 8; };

template <int D, typename T, int GMAX>
static __global__ void __launch_bounds__(DEC_WARPS *DSLA_CUDA_WARP, decode_sched<T, GMAX>::MINB)
    decode_split(float *part_acc, float *part_m, float *part_l, const float *q, decode_args<T> a) {
    constexpr int UNROLL = decode_sched<T, GMAX>::UNROLL;
    using G = decode_geom<D, T>;
    constexpr int LANES = G::LANES, EPL = G::EPL, TPW = G::TPW;
    constexpr int STEP = DEC_WARPS * TPW; /* tokens the block covers per unrolled slot */
    __shared__ float sm_acc[DEC_WARPS][GMAX][D];
    __shared__ float sm_m[DEC_WARPS][GMAX], sm_l[DEC_WARPS][GMAX];

    const int s = blockIdx.x, kvh = blockIdx.y, c = blockIdx.z;
    const int warp = threadIdx.x / DSLA_CUDA_WARP, lane = threadIdx.x % DSLA_CUDA_WARP;
    const int sub = lane / LANES, dim0 = (lane % LANES) * EPL;
    const int ctx = a.lens[s];
    const int chunk = decode_chunk(ctx, a.splits);
    const int t0 = c * chunk, t1 = min(ctx, t0 + chunk);
    const int32_t *table = a.tables + (size_t)(a.rows ? a.rows[s] : s) * a.table_stride;
    const size_t head_off = (size_t)kvh * D + dim0;

    float qr[GMAX][EPL], m[GMAX], l[GMAX], acc[GMAX][EPL];
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
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
    for (int wbase = t0 + warp * TPW; wbase < t1; wbase += STEP * UNROLL) {
        float kk[UNROLL][EPL], vv[UNROLL][EPL];
        bool valid[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
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
        for (int g = 0; g < GMAX; g++) {
            if (g >= a.group) break; /* uniform across the block */
            float sc[UNROLL], mx = m[g];
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
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
            for (int u = 0; u < UNROLL; u++) {
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
    for (int g = 0; g < GMAX; g++) {
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

template <int D, typename T>
static void launch_decode(dsla_cuda_stream_t stream, float *out, int out_stride, const float *q,
                          int n_seqs, const decode_args<T> &a, float *ws) {
    float *part_acc = ws;
    const size_t parts = (size_t)n_seqs * a.n_heads * a.splits;
    float *part_m = ws + parts * D, *part_l = part_m + parts;
    const dim3 grid(n_seqs, a.n_heads / a.group, a.splits);
    const int threads = DEC_WARPS * DSLA_CUDA_WARP;
    if (a.group == 1)
        decode_split<D, T, 1><<<grid, threads, 0, stream>>>(part_acc, part_m, part_l, q, a);
    else if (a.group == 2)
        decode_split<D, T, 2><<<grid, threads, 0, stream>>>(part_acc, part_m, part_l, q, a);
    else if (a.group <= 4)
        decode_split<D, T, 4><<<grid, threads, 0, stream>>>(part_acc, part_m, part_l, q, a);
    else
        decode_split<D, T, DEC_MAX_GROUP>
            <<<grid, threads, 0, stream>>>(part_acc, part_m, part_l, q, a);
    decode_combine<D><<<n_seqs * a.n_heads, D, 0, stream>>>(out, out_stride, part_acc, part_m,
                                                            part_l, a.n_heads, a.splits);
}

template <typename T>
static dsla_status_t decode_typed(dsla_cuda_stream_t stream, float *out, int out_stride,
                                  const float *q, int q_stride, int n_seqs, int max_context,
                                  const dsla_attn_shape_t *shape, const T *k, const T *v,
                                  int block_tokens, const dsla_cuda_decode_batch_t *batch,
                                  void *workspace, size_t workspace_bytes) {
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
    const int d = shape->head_dim;
    decode_args<T> a = {k,
                        v,
                        batch->block_tables,
                        batch->table_rows,
                        batch->context_lens,
                        batch->table_stride,
                        block_tokens,
                        shape->n_heads,
                        group,
                        shape->n_kv_heads * d,
                        splits,
                        q_stride,
                        1.0f / sqrtf((float)d)};
    float *ws = (float *)workspace;
    switch (d) {
    case 8:
        launch_decode<8, T>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    case 16:
        launch_decode<16, T>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    case 32:
        launch_decode<32, T>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    case 64:
        launch_decode<64, T>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    default:
        launch_decode<128, T>(stream, out, out_stride, q, n_seqs, a, ws);
        break;
    }
    DSLA_CUDA_CHECK_LAUNCH("attention decode");
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_attention_decode(dsla_cuda_stream_t stream, float *out,
                                                    int out_stride, const float *q, int q_stride,
                                                    int n_seqs, int max_context,
                                                    const dsla_attn_shape_t *shape,
                                                    const dsla_cuda_paged_batch_t *kv,
                                                    void *workspace, size_t workspace_bytes) {
    DSLA_TRY(check_shape("dsla_cuda_attention_decode", shape));
    if (n_seqs <= 0) return DSLA_OK;
    const dsla_cuda_decode_batch_t batch = {kv->block_tables, NULL, kv->context_lens,
                                            kv->table_stride};
    return decode_typed<float>(stream, out, out_stride, q, q_stride, n_seqs, max_context, shape,
                               kv->k, kv->v, kv->block_tokens, &batch, workspace, workspace_bytes);
}

extern "C" dsla_status_t dsla_cuda_attention_decode_pool(
    dsla_cuda_stream_t stream, float *out, int out_stride, const float *q, int q_stride, int n_seqs,
    int max_context, const dsla_attn_shape_t *shape, const dsla_cuda_kv_pool_t *pool,
    const dsla_cuda_decode_batch_t *batch, void *workspace, size_t workspace_bytes) {
    DSLA_TRY(check_shape("dsla_cuda_attention_decode_pool", shape));
    DSLA_TRY(check_pool("dsla_cuda_attention_decode_pool", pool));
    if (n_seqs <= 0) return DSLA_OK;
    if (pool->dtype == DSLA_DTYPE_F32)
        return decode_typed<float>(stream, out, out_stride, q, q_stride, n_seqs, max_context, shape,
                                   (const float *)pool->k, (const float *)pool->v,
                                   pool->block_tokens, batch, workspace, workspace_bytes);
    return decode_typed<__nv_bfloat16>(stream, out, out_stride, q, q_stride, n_seqs, max_context,
                                       shape, (const __nv_bfloat16 *)pool->k,
                                       (const __nv_bfloat16 *)pool->v, pool->block_tokens, batch,
                                       workspace, workspace_bytes);
}

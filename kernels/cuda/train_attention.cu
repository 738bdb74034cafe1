/* The distiller's logit-term ops on the GPU (kernels_cuda_train.h): causal grouped-query attention
 * for training, forward and backward, and the temperature KL of the final logits. Each mirrors its
 * reference in kernels/cpu/train_attention.c and train_loss.c step by step: the same fp32 stores
 * (a score, a probability, a dS entry is rounded to float where the CPU rounds it), every dot
 * product, softmax sum and log-sum-exp accumulated in double, double exp and log.
 *
 * Simple kernels, not FlashAttention: the logit term trains on short sequences (T up to ~2K) and
 * the backward needs the probabilities anyway, so probs [B, H, T, T] is materialised as on the CPU.
 * - Query-row kernels (forward; backward's dS and dq): one block per (b, h, query row i) holds the
 *   row's T scores in dynamic shared memory; a warp per key forms q_i . k_j, the block reduces the
 *   softmax statistics, and the output row sum_j w_j x_j is split over the threads by column.
 *   Blocks take the longest rows first, so the short rows fill the tail.
 * - Key-tile kernel (backward's dk and dv): one block per (b, KV head, 32 keys) walks the rows
 *   at or below its keys 32 at a time through shared memory, summing W^T X over the group's query
 *   heads in double (the CPU sums these two in float; the test allows for it).
 * - KL: one block per logit row, three passes over the row (max, sum of exponentials, terms).
 *
 * The double arithmetic costs throughput (fp64 runs at half the fp32 rate on H100, a fraction on
 * other cards); at these sizes the ops stay small next to the teacher's GEMMs. */
#include <math.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/kernels_cuda_train.h"

enum {
    ROW_THREADS = 128,                             /* query-row kernels */
    ROW_WARPS = ROW_THREADS / DSLA_CUDA_WARP,      /* keys scored at once */
    ATTN_MAX_D = 128,                              /* head dims the row kernels hold */
    KEY_TILE = 32,                                 /* keys (and query rows) per tile */
    KEY_THREADS = 256,                             /* key-tile kernel */
    KEY_ACC = KEY_TILE * ATTN_MAX_D / KEY_THREADS, /* outputs per thread at d = 128 */
    KL_THREADS = 512,                              /* a 32K-vocab row is 64 floats each */
};

/* The longest row must fit the 48 KiB of shared memory a block gets without opting in, beside the
 * row kernels' static arrays (a head-dim row, ROW_THREADS partial doubles, two reductions'). */
static_assert(DSLA_CUDA_TRAIN_ATTENTION_MAX_T * sizeof(float) + ATTN_MAX_D * sizeof(float) +
                      (ROW_THREADS + 2 * ROW_WARPS) * sizeof(double) <=
                  48 * 1024,
              "a score row of DSLA_CUDA_TRAIN_ATTENTION_MAX_T floats must fit shared memory");

/* Row (b, t) of a [B*T, heads*d] tensor, head h (as train_attention.c's at()). */
static __device__ __forceinline__ size_t at(int b, int t, int h, int T, int heads, int d) {
    return (((size_t)b * T + t) * heads + h) * (size_t)d;
}

static __device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = DSLA_CUDA_WARP / 2; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* A query-row block's (b, h, i): blockIdx.x counts rows longest first. */
struct query_row {
    int b, h, g, i;
};

static __device__ __forceinline__ query_row query_row_of_block(int T, int H, int Hkv) {
    const size_t bh = blockIdx.x / (unsigned)T;
    query_row r;
    r.b = (int)(bh / (unsigned)H);
    r.h = (int)(bh % (unsigned)H);
    r.g = r.h / (H / Hkv);
    r.i = T - 1 - (int)(blockIdx.x % (unsigned)T);
    return r;
}

/* dots[j] = (float)(x . m_j * scale) for j < n, m_j = m + j * stride, one warp per key; returns
 * this lane's share of sum_j (x . m_j) * weight[j] (unrounded dots, as the CPU's backward) when
 * weight is given. x: d floats in shared memory. */
static __device__ double row_dots(float *dots, const float *x, const float *m, size_t stride, int n,
                                  int d, double scale, const float *weight) {
    const int warp = threadIdx.x / DSLA_CUDA_WARP, lane = threadIdx.x % DSLA_CUDA_WARP;
    double weighted = 0.0;
    for (int j = warp; j < n; j += ROW_WARPS) {
        const float *mj = m + (size_t)j * stride;
        double s = 0.0;
        for (int c = lane; c < d; c += DSLA_CUDA_WARP)
            s += (double)x[c] * mj[c];
        s = warp_sum_d(s);
        if (lane == 0) {
            dots[j] = (float)(s * scale);
            if (weight) weighted += s * weight[j];
        }
    }
    return weighted;
}

/* out[c] = (float) sum_{j < n} w[j] m_j[c] in double, c < d <= ROW_THREADS: ROW_THREADS / d
 * threads share a column, each taking every (ROW_THREADS / d)-th j, then one adds their parts. */
static __device__ void row_weighted_sum(float *out, const float *w, const float *m, size_t stride,
                                        int n, int d) {
    __shared__ double part[ROW_THREADS];
    const int splits = ROW_THREADS / d, c = threadIdx.x % d, k = threadIdx.x / d;
    double acc = 0.0;
    if (k < splits)
        for (int j = k; j < n; j += splits)
            acc += (double)w[j] * m[(size_t)j * stride + c];
    part[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x < d) {
        double s = 0.0;
        for (int p = 0; p < splits; p++)
            s += part[p * d + threadIdx.x];
        out[threadIdx.x] = (float)s;
    }
}

static __device__ void load_row(float *dst, const float *src, int d) {
    for (int c = threadIdx.x; c < d; c += ROW_THREADS)
        dst[c] = src[c];
    __syncthreads();
}

/* ---- forward: one block per query row ---- */

static __global__ void __launch_bounds__(ROW_THREADS)
    attn_train_forward_row(float *out, float *probs, const float *q, const float *k, const float *v,
                           int T, int H, int Hkv, int d, double scale) {
    extern __shared__ float p[]; /* [T]: scores, then probabilities */
    __shared__ float qi[ATTN_MAX_D];
    const query_row r = query_row_of_block(T, H, Hkv);
    const int n = r.i + 1;
    const size_t kv_stride = (size_t)Hkv * d;
    load_row(qi, q + at(r.b, r.i, r.h, T, H, d), d);
    row_dots(p, qi, k + at(r.b, 0, r.g, T, Hkv, d), kv_stride, n, d, scale, NULL);
    __syncthreads();

    double max = -INFINITY;
    for (int j = threadIdx.x; j < n; j += ROW_THREADS)
        max = fmax(max, (double)p[j]);
    max = dsla_block_reduce<ROW_THREADS>(max, dsla_max_op());
    double sum = 0.0;
    for (int j = threadIdx.x; j < n; j += ROW_THREADS)
        sum += exp(p[j] - max);
    sum = dsla_block_reduce<ROW_THREADS>(sum, dsla_sum_op());

    float *prow = probs + (((size_t)r.b * H + r.h) * T + r.i) * T;
    for (int j = threadIdx.x; j < T; j += ROW_THREADS) {
        const float pj = j < n ? (float)(exp(p[j] - max) / sum) : 0.0f;
        if (j < n) p[j] = pj;
        prow[j] = pj;
    }
    __syncthreads();
    row_weighted_sum(out + at(r.b, r.i, r.h, T, H, d), p, v + at(r.b, 0, r.g, T, Hkv, d), kv_stride,
                     n, d);
}

/* ---- backward, query side: dS (into probs) and dq ---- */

static __global__ void __launch_bounds__(ROW_THREADS)
    attn_train_backward_row(float *dq, float *probs, const float *dout, const float *k,
                            const float *v, int T, int H, int Hkv, int d, double scale) {
    extern __shared__ float ds[]; /* [T]: dP, then dS */
    __shared__ float doi[ATTN_MAX_D];
    const query_row r = query_row_of_block(T, H, Hkv);
    const int n = r.i + 1;
    const size_t kv_stride = (size_t)Hkv * d;
    float *prow = probs + (((size_t)r.b * H + r.h) * T + r.i) * T;
    load_row(doi, dout + at(r.b, r.i, r.h, T, H, d), d);
    /* dP_ij = do_i . v_j, stored as the CPU stores it (float, unscaled) */
    double dot = row_dots(ds, doi, v + at(r.b, 0, r.g, T, Hkv, d), kv_stride, n, d, 1.0, prow);
    dot = dsla_block_reduce<ROW_THREADS>(dot, dsla_sum_op());

    for (int j = threadIdx.x; j < T; j += ROW_THREADS) {
        const float dsj = j < n ? (float)(prow[j] * (ds[j] - dot) * scale) : 0.0f;
        if (j < n) ds[j] = dsj;
        prow[j] = dsj;
    }
    __syncthreads();
    row_weighted_sum(dq + at(r.b, r.i, r.h, T, H, d), ds, k + at(r.b, 0, r.g, T, Hkv, d), kv_stride,
                     n, d);
}

/* ---- backward, key side: dkv_j = sum over the group's heads h and rows i >= j of w_hij x_hi */

static __global__ void __launch_bounds__(KEY_THREADS)
    attn_train_key_grad(float *dkv, const float *w, const float *x, int T, int H, int Hkv, int d) {
    __shared__ float wt[KEY_TILE][KEY_TILE + 1];
    __shared__ float xt[KEY_TILE][ATTN_MAX_D];
    const int b = blockIdx.x / Hkv, g = blockIdx.x % Hkv, group = H / Hkv;
    const int j0 = blockIdx.y * KEY_TILE, outputs = KEY_TILE * d;
    /* This thread's outputs: element e = threadIdx.x + m * KEY_THREADS of the KEY_TILE x d tile. */
    int jj[KEY_ACC], cc[KEY_ACC];
    double acc[KEY_ACC];
#pragma unroll
    for (int m = 0; m < KEY_ACC; m++) {
        const int e = threadIdx.x + m * KEY_THREADS;
        jj[m] = e < outputs ? e / d : 0;
        cc[m] = e < outputs ? e % d : 0;
        acc[m] = 0.0;
    }
    for (int h = g * group; h < (g + 1) * group; h++) {
        const float *W = w + ((size_t)b * H + h) * T * T;
        /* rows above the tile see none of its keys (causal) */
        for (int i0 = j0; i0 < T; i0 += KEY_TILE) {
            for (int e = threadIdx.x; e < KEY_TILE * KEY_TILE; e += KEY_THREADS) {
                const int i = i0 + e / KEY_TILE, j = j0 + e % KEY_TILE;
                wt[e / KEY_TILE][e % KEY_TILE] = i < T && j <= i ? W[(size_t)i * T + j] : 0.0f;
            }
            for (int e = threadIdx.x; e < outputs; e += KEY_THREADS) {
                const int i = i0 + e / d;
                xt[e / d][e % d] = i < T ? x[at(b, i, h, T, H, d) + e % d] : 0.0f;
            }
            __syncthreads();
            for (int ii = 0; ii < KEY_TILE; ii++)
#pragma unroll
                for (int m = 0; m < KEY_ACC; m++)
                    acc[m] += (double)wt[ii][jj[m]] * xt[ii][cc[m]];
            __syncthreads();
        }
    }
#pragma unroll
    for (int m = 0; m < KEY_ACC; m++) {
        const int e = threadIdx.x + m * KEY_THREADS, j = j0 + jj[m];
        if (e < outputs && j < T) dkv[at(b, j, g, T, Hkv, d) + cc[m]] = (float)acc[m];
    }
}

/* ---- host side ---- */

static dsla_status_t check_attention(const char *who, int B, int T, int H, int Hkv, int d) {
    if (B < 0 || T < 0 || H < 1 || Hkv < 1 || H % Hkv != 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: B %d and T %d (>= 0), H %d and Hkv %d (>= 1, H a multiple of Hkv)",
                          who, B, T, H, Hkv);
    if (d < 1 || d > ATTN_MAX_D)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "%s: head dim d %d (1..%d)", who, d, ATTN_MAX_D);
    if (T > DSLA_CUDA_TRAIN_ATTENTION_MAX_T)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: T %d exceeds %d, the longest sequence whose score row fits one "
                          "block's shared memory; train on shorter sequences",
                          who, T, DSLA_CUDA_TRAIN_ATTENTION_MAX_T);
    if ((size_t)B * H * T > 0x7fffffffu)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: B*H*T = %zu query rows exceeds %u, one launch's blocks", who,
                          (size_t)B * H * T, 0x7fffffffu);
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_causal_attention_train_forward(dsla_cuda_stream_t stream,
                                                                  float *out, float *probs,
                                                                  const float *q, const float *k,
                                                                  const float *v, int B, int T,
                                                                  int H, int Hkv, int d) {
    const dsla_status_t st =
        check_attention("dsla_cuda_causal_attention_train_forward", B, T, H, Hkv, d);
    if (st != DSLA_OK || B == 0 || T == 0) return st;
    const unsigned blocks = (unsigned)((size_t)B * H * T);
    attn_train_forward_row<<<blocks, ROW_THREADS, (size_t)T * sizeof(float), stream>>>(
        out, probs, q, k, v, T, H, Hkv, d, 1.0 / sqrt((double)d));
    DSLA_CUDA_CHECK_LAUNCH("attn_train_forward_row");
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_causal_attention_train_backward(
    dsla_cuda_stream_t stream, float *dq, float *dk, float *dv, const float *dout, float *probs,
    const float *q, const float *k, const float *v, int B, int T, int H, int Hkv, int d) {
    const dsla_status_t st =
        check_attention("dsla_cuda_causal_attention_train_backward", B, T, H, Hkv, d);
    if (st != DSLA_OK || B == 0 || T == 0) return st;
    const dim3 key_grid((unsigned)B * Hkv, dsla_cuda_blocks_for((size_t)T, KEY_TILE));
    /* dv reads P, so it goes before the row kernel turns P into dS; dk reads dS after. */
    attn_train_key_grad<<<key_grid, KEY_THREADS, 0, stream>>>(dv, probs, dout, T, H, Hkv, d);
    DSLA_CUDA_CHECK_LAUNCH("attn_train_key_grad(dv)");
    const unsigned rows = (unsigned)((size_t)B * H * T);
    attn_train_backward_row<<<rows, ROW_THREADS, (size_t)T * sizeof(float), stream>>>(
        dq, probs, dout, k, v, T, H, Hkv, d, 1.0 / sqrt((double)d));
    DSLA_CUDA_CHECK_LAUNCH("attn_train_backward_row");
    attn_train_key_grad<<<key_grid, KEY_THREADS, 0, stream>>>(dk, probs, q, T, H, Hkv, d);
    DSLA_CUDA_CHECK_LAUNCH("attn_train_key_grad(dk)");
    return DSLA_OK;
}

/* ---- KL of the logits at a temperature: one block per row ---- */

static __global__ void __launch_bounds__(KL_THREADS)
    kl_div_row(double *kl_acc, float *grad, const float *student, const float *teacher, int vocab,
               double T, double weight) {
    const double inv_t = 1.0 / T;
    const float *s = student + (size_t)blockIdx.x * vocab;
    const float *t = teacher + (size_t)blockIdx.x * vocab;
    double max_s = -INFINITY, max_t = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += KL_THREADS) {
        max_s = fmax(max_s, s[j] * inv_t);
        max_t = fmax(max_t, t[j] * inv_t);
    }
    max_s = dsla_block_reduce<KL_THREADS>(max_s, dsla_max_op());
    max_t = dsla_block_reduce<KL_THREADS>(max_t, dsla_max_op());
    double sum_s = 0.0, sum_t = 0.0;
    for (int j = threadIdx.x; j < vocab; j += KL_THREADS) {
        sum_s += exp(s[j] * inv_t - max_s);
        sum_t += exp(t[j] * inv_t - max_t);
    }
    const double lse_s = max_s + log(dsla_block_reduce<KL_THREADS>(sum_s, dsla_sum_op()));
    const double lse_t = max_t + log(dsla_block_reduce<KL_THREADS>(sum_t, dsla_sum_op()));

    float *g = grad ? grad + (size_t)blockIdx.x * vocab : NULL;
    const double grad_scale = weight * T;
    double total = 0.0;
    for (int j = threadIdx.x; j < vocab; j += KL_THREADS) {
        /* closed-form log-probabilities, as the CPU: an underflowing p_j gives 0 * finite */
        const double log_p = t[j] * inv_t - lse_t, log_q = s[j] * inv_t - lse_s;
        const double p = exp(log_p);
        total += p * (log_p - log_q);
        if (g) g[j] = (float)(grad_scale * (exp(log_q) - p));
    }
    total = dsla_block_reduce<KL_THREADS>(total, dsla_sum_op());
    if (threadIdx.x == 0) atomicAdd(kl_acc, weight * T * T * total);
}

extern "C" dsla_status_t dsla_cuda_kl_div_loss(dsla_cuda_stream_t stream, double *kl_acc,
                                               float *grad, const float *student,
                                               const float *teacher, int rows, int vocab,
                                               float temperature, double weight) {
    if (!kl_acc || rows < 0 || vocab < 1 || !(temperature > 0.0f))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_kl_div_loss: kl_acc is required, rows %d (>= 0), vocab %d "
                          "(>= 1), temperature %g (> 0)",
                          rows, vocab, (double)temperature);
    if (rows == 0) return DSLA_OK;
    kl_div_row<<<rows, KL_THREADS, 0, stream>>>(kl_acc, grad, student, teacher, vocab,
                                                (double)temperature, weight);
    DSLA_CUDA_CHECK_LAUNCH("kl_div_row");
    return DSLA_OK;
}

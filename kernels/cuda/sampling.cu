/* Token selection on the GPU: argmax, and temperature / top-k / top-p sampling with the exact
 * semantics of runtime/model/sampler.c, so that the same uniform draw picks the same token.
 *
 * Version 1 sorts nothing. The sampler's order (probability descending, lower id first on ties) is
 * the order of a 64-bit key, the probability's bits above the inverted id, and every question it
 * asks is "the largest key whose running mass (or count) from the top reaches x": a bitwise
 * radix select of 64 block-wide reductions. One block per row; top-k, top-p and the draw are one
 * select each. */
#include <math.h>

#include "kernels/cuda/cuda_check.h"

enum { SAMPLE_THREADS = 512, ARGMAX_THREADS = 256 };

/* ---- argmax ---- */

static __device__ __forceinline__ void better(float &bv, int &bi, float v, int i) {
    if (v > bv || (v == bv && i < bi)) {
        bv = v;
        bi = i;
    }
}

/* Block-wide (value, index) maximum, lowest index on ties; every thread gets the index. */
template <int THREADS> static __device__ int block_argmax(float bv, int bi) {
    __shared__ float sv[THREADS / DSLA_CUDA_WARP];
    __shared__ int si[THREADS / DSLA_CUDA_WARP];
    __shared__ int result;
    for (int o = DSLA_CUDA_WARP / 2; o > 0; o >>= 1)
        better(bv, bi, __shfl_xor_sync(0xffffffffu, bv, o), __shfl_xor_sync(0xffffffffu, bi, o));
    const int warp = threadIdx.x / DSLA_CUDA_WARP, lane = threadIdx.x % DSLA_CUDA_WARP;
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < THREADS / DSLA_CUDA_WARP; w++)
            better(sv[0], si[0], sv[w], si[w]);
        result = si[0];
    }
    __syncthreads();
    return result;
}

static __global__ void __launch_bounds__(ARGMAX_THREADS)
    argmax(int32_t *out, const float *logits, int n) {
    const float *x = logits + (size_t)blockIdx.x * n;
    float bv = -INFINITY;
    int bi = n; /* beyond every real index, so any element wins a tie with it */
    for (int i = threadIdx.x; i < n; i += ARGMAX_THREADS)
        better(bv, bi, x[i], i);
    const int best = block_argmax<ARGMAX_THREADS>(bv, bi);
    /* All -inf (or NaN) rows: element 0, as dsla_cpu_argmax. */
    if (threadIdx.x == 0) out[blockIdx.x] = best < n ? best : 0;
}

extern "C" dsla_status_t dsla_cuda_argmax(dsla_cuda_stream_t stream, int32_t *out,
                                          const float *logits, int rows, int n) {
    if (rows <= 0) return DSLA_OK;
    if (n < 1) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_cuda_argmax: n %d < 1", n);
    argmax<<<rows, ARGMAX_THREADS, 0, stream>>>(out, logits, n);
    DSLA_CUDA_CHECK_LAUNCH("argmax");
    return DSLA_OK;
}

/* ---- sampling ---- */

static __device__ double block_sum_d(double v) {
    return dsla_block_reduce<SAMPLE_THREADS>(v, dsla_sum_op());
}

static __device__ float block_max_f(float v) {
    return dsla_block_reduce<SAMPLE_THREADS>(v, dsla_max_op());
}

/* The sampler's order as one number: larger key = earlier (probabilities are >= 0, so their bits
 * order like the floats; the inverted id puts the lower id first on ties). */
static __device__ __forceinline__ unsigned long long order_key(float p, int i) {
    return ((unsigned long long)__float_as_uint(p) << 32) | (unsigned)~(unsigned)i;
}

/* Mass (by_count: number) of the elements with key >= t among those with key >= floor. */
static __device__ double mass_from(const float *p, int n, unsigned long long t,
                                   unsigned long long floor, bool by_count) {
    const unsigned long long lo = t > floor ? t : floor;
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS)
        if (order_key(p[i], i) >= lo) s += by_count ? 1.0 : (double)p[i];
    return block_sum_d(s);
}

/* The largest key t whose mass_from reaches target (strict: exceeds it); 0 when none does. */
static __device__ unsigned long long select_key(const float *p, int n, unsigned long long floor,
                                                double target, bool by_count, bool strict) {
    unsigned long long t = 0;
    for (int bit = 63; bit >= 0; bit--) {
        const unsigned long long cand = t | (1ull << bit);
        const double m = mass_from(p, n, cand, floor, by_count);
        if (strict ? m > target : m >= target) t = cand;
    }
    return t;
}

static __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample(int32_t *out, const float *logits, int vocab, const dsla_cuda_sample_row_t *params,
           float *probs_ws) {
    const dsla_cuda_sample_row_t prm = params[blockIdx.x];
    const float *x = logits + (size_t)blockIdx.x * vocab;
    float *p = probs_ws + (size_t)blockIdx.x * vocab;
    if (prm.temperature <= 0.0f || prm.top_k == 1) {
        float bv = -INFINITY;
        int bi = vocab;
        for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS)
            better(bv, bi, x[i], i);
        const int best = block_argmax<SAMPLE_THREADS>(bv, bi);
        if (threadIdx.x == 0) out[blockIdx.x] = best < vocab ? best : 0;
        return;
    }
    /* Softmax of logits / temperature as sampler.c computes it: the scaled logit rounded to fp32
     * (__fmul_rn: no fused multiply-add), fp32 exponentials, a double sum, one fp32 reciprocal. */
    const float inv_t = 1.0f / prm.temperature;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS)
        mx = fmaxf(mx, __fmul_rn(x[i], inv_t));
    mx = block_max_f(mx);
    double sum = 0.0;
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        const float e = expf(__fmul_rn(x[i], inv_t) - mx);
        p[i] = e;
        sum += e;
    }
    const float inv = (float)(1.0 / block_sum_d(sum));
    for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS)
        p[i] *= inv;
    __syncthreads();

    const bool use_top_k = prm.top_k > 0 && prm.top_k < vocab;
    const bool use_top_p = prm.top_p > 0.0f && prm.top_p < 1.0f;
    __shared__ int chosen;
    if (!use_top_k && !use_top_p) {
        /* The draw walks the candidates in id order: each thread owns a contiguous slice, a prefix
         * over the slices finds the one slice where the running mass passes the draw. */
        __shared__ double slice_start[SAMPLE_THREADS + 1];
        const int per = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
        const int lo = min(vocab, (int)threadIdx.x * per), hi = min(vocab, lo + per);
        double own = 0.0;
        for (int i = lo; i < hi; i++)
            own += p[i];
        slice_start[threadIdx.x + 1] = own;
        if (threadIdx.x == 0) chosen = vocab - 1; /* r on the rounding slack at the top */
        __syncthreads();
        if (threadIdx.x == 0) {
            slice_start[0] = 0.0;
            for (int t = 1; t <= SAMPLE_THREADS; t++)
                slice_start[t] += slice_start[t - 1];
        }
        __syncthreads();
        const double r = prm.uniform * slice_start[SAMPLE_THREADS];
        double acc = slice_start[threadIdx.x];
        if (r >= acc && r < slice_start[threadIdx.x + 1]) {
            for (int i = lo; i < hi; i++) {
                acc += p[i];
                if (r < acc) {
                    chosen = i;
                    break;
                }
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) out[blockIdx.x] = chosen;
        return;
    }

    unsigned long long floor = 0; /* every key is above 0: the inverted id is never all ones */
    if (use_top_k) floor = select_key(p, vocab, 0, (double)prm.top_k, true, false);
    if (use_top_p) {
        const double mass = mass_from(p, vocab, 0, floor, false);
        floor = select_key(p, vocab, floor, (double)prm.top_p * mass, false, false);
    }
    const double r = prm.uniform * mass_from(p, vocab, 0, floor, false);
    unsigned long long t = select_key(p, vocab, floor, r, false, true);
    if (t < floor) t = floor; /* r on the rounding slack: the last survivor, as the CPU */
    if (threadIdx.x == 0) out[blockIdx.x] = (int32_t) ~(unsigned)(t & 0xffffffffu);
}

extern "C" size_t dsla_cuda_sample_workspace(int rows, int vocab) {
    return (size_t)rows * vocab * sizeof(float);
}

extern "C" dsla_status_t dsla_cuda_sample(dsla_cuda_stream_t stream, int32_t *out,
                                          const float *logits, int rows, int vocab,
                                          const dsla_cuda_sample_row_t *params, void *workspace,
                                          size_t workspace_bytes) {
    if (rows <= 0) return DSLA_OK;
    if (vocab < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_cuda_sample: vocab %d", vocab);
    if (workspace_bytes < dsla_cuda_sample_workspace(rows, vocab))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_sample: workspace of %zu bytes, needs %zu", workspace_bytes,
                          dsla_cuda_sample_workspace(rows, vocab));
    sample<<<rows, SAMPLE_THREADS, 0, stream>>>(out, logits, vocab, params, (float *)workspace);
    DSLA_CUDA_CHECK_LAUNCH("sample");
    return DSLA_OK;
}

/* Training kernels on the GPU (kernels_cuda_train.h): the frozen MLP block's backward pieces
 * (RMSNorm and SwiGLU backward), bias gradients, the normalised-MSE loss and the sums behind
 * gradient clipping. Each mirrors kernels/cpu/train_*.c; reductions accumulate in double like the
 * CPU's (a block's partial sum in double, then one double atomicAdd per block), so sums over
 * millions of elements keep their small terms. Simple one-pass kernels: they are bandwidth-bound
 * and small next to the GEMMs and the DSLA core of a training step. */
#include "kernels/cuda/cuda_check.h"
#include "kernels/kernels_cuda_train.h"

enum { TRAIN_THREADS = 256, REDUCE_BLOCKS_MAX = 1024 };

/* Sum of v over the block in double; every thread gets the result. */
static __device__ double block_sum_d(double v) {
    return dsla_block_reduce<TRAIN_THREADS>(v, dsla_sum_op());
}

/* ---- RMSNorm backward: one block per row, the row's two sums in double, as the CPU ---- */

static __global__ void __launch_bounds__(TRAIN_THREADS)
    rmsnorm_backward_kernel(float *dx, const float *dy, const float *x, const float *w, int dim,
                            float eps, bool accumulate) {
    const size_t row = blockIdx.x;
    const float *xr = x + row * dim, *dyr = dy + row * dim;
    float *dxr = dx + row * dim;
    double ss = 0.0, dot = 0.0;
    for (int i = threadIdx.x; i < dim; i += TRAIN_THREADS) {
        ss += (double)xr[i] * xr[i];
        dot += (double)w[i] * dyr[i] * xr[i];
    }
    ss = block_sum_d(ss);
    dot = block_sum_d(dot);
    const double rs = 1.0 / sqrt(ss / dim + (double)eps);
    const double c = rs * rs * dot / dim;
    for (int i = threadIdx.x; i < dim; i += TRAIN_THREADS) {
        const float g = (float)(rs * ((double)w[i] * dyr[i] - (double)xr[i] * c));
        dxr[i] = accumulate ? dxr[i] + g : g;
    }
}

extern "C" dsla_status_t dsla_cuda_rmsnorm_backward(dsla_cuda_stream_t stream, float *dx,
                                                    const float *dy, const float *x, const float *w,
                                                    int rows, int dim, float eps, bool accumulate) {
    if (rows <= 0) return DSLA_OK;
    rmsnorm_backward_kernel<<<rows, TRAIN_THREADS, 0, stream>>>(dx, dy, x, w, dim, eps, accumulate);
    DSLA_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
    return DSLA_OK;
}

/* ---- SwiGLU backward: element-wise ---- */

static __global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dy,
                                              const float *gate, const float *up, int rows, int n,
                                              int stride) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * n) return;
    const size_t r = i / n, j = i % n, off = r * stride + j;
    const float g = gate[off], u = up[off], d = dy[i];
    const float s = 1.0f / (1.0f + expf(-g));
    dgate[off] = d * u * s * (1.0f + g * (1.0f - s));
    dup[off] = d * g * s;
}

extern "C" dsla_status_t dsla_cuda_swiglu_backward(dsla_cuda_stream_t stream, float *dgate,
                                                   float *dup, const float *dy, const float *gate,
                                                   const float *up, int rows, int n, int stride) {
    const size_t total = (size_t)rows * n;
    if (total == 0) return DSLA_OK;
    swiglu_backward_kernel<<<dsla_cuda_blocks_for(total, TRAIN_THREADS), TRAIN_THREADS, 0,
                             stream>>>(dgate, dup, dy, gate, up, rows, n, stride);
    DSLA_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
    return DSLA_OK;
}

/* ---- bias gradient: one thread per column walks the rows (coalesced across the warp) ---- */

static __global__ void bias_backward_kernel(float *db, const float *dy, int m, int n,
                                            bool accumulate) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    double s = 0.0;
    for (int r = 0; r < m; r++)
        s += dy[(size_t)r * n + j];
    db[j] = accumulate ? db[j] + (float)s : (float)s;
}

extern "C" dsla_status_t dsla_cuda_bias_backward(dsla_cuda_stream_t stream, float *db,
                                                 const float *dy, int m, int n, bool accumulate) {
    if (n <= 0) return DSLA_OK;
    bias_backward_kernel<<<dsla_cuda_blocks_for((size_t)n, TRAIN_THREADS), TRAIN_THREADS, 0,
                           stream>>>(db, dy, m, n, accumulate);
    DSLA_CUDA_CHECK_LAUNCH("bias_backward_kernel");
    return DSLA_OK;
}

/* ---- reductions into device doubles ---- */

static unsigned reduce_blocks(size_t n) {
    unsigned b = dsla_cuda_blocks_for(n, TRAIN_THREADS);
    return b > REDUCE_BLOCKS_MAX ? REDUCE_BLOCKS_MAX : (b ? b : 1);
}

static __global__ void __launch_bounds__(TRAIN_THREADS)
    nmse_sums_kernel(double *sums, const float *s, const float *t, size_t n) {
    double err = 0.0, norm = 0.0;
    for (size_t i = (size_t)blockIdx.x * TRAIN_THREADS + threadIdx.x; i < n;
         i += (size_t)gridDim.x * TRAIN_THREADS) {
        const double d = (double)s[i] - t[i];
        err += d * d;
        norm += (double)t[i] * t[i];
    }
    err = block_sum_d(err);
    norm = block_sum_d(norm);
    if (threadIdx.x == 0) {
        atomicAdd(sums, err);
        atomicAdd(sums + 1, norm);
    }
}

extern "C" dsla_status_t dsla_cuda_nmse_sums(dsla_cuda_stream_t stream, double *sums,
                                             const float *s, const float *t, size_t n) {
    if (n == 0) return DSLA_OK;
    nmse_sums_kernel<<<reduce_blocks(n), TRAIN_THREADS, 0, stream>>>(sums, s, t, n);
    DSLA_CUDA_CHECK_LAUNCH("nmse_sums_kernel");
    return DSLA_OK;
}

static __global__ void nmse_grad_kernel(float *grad, const float *s, const float *t, size_t n,
                                        const double *sums) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const double norm = sums[1] == 0.0 ? 1.0 : sums[1];
    grad[i] = (float)(2.0 / norm * ((double)s[i] - t[i]));
}

extern "C" dsla_status_t dsla_cuda_nmse_grad(dsla_cuda_stream_t stream, float *grad, const float *s,
                                             const float *t, size_t n, const double *sums) {
    if (n == 0) return DSLA_OK;
    nmse_grad_kernel<<<dsla_cuda_blocks_for(n, TRAIN_THREADS), TRAIN_THREADS, 0, stream>>>(
        grad, s, t, n, sums);
    DSLA_CUDA_CHECK_LAUNCH("nmse_grad_kernel");
    return DSLA_OK;
}

static __global__ void __launch_bounds__(TRAIN_THREADS)
    sum_squares_kernel(double *acc, const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * TRAIN_THREADS + threadIdx.x; i < n;
         i += (size_t)gridDim.x * TRAIN_THREADS)
        s += (double)x[i] * x[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0) atomicAdd(acc, s);
}

extern "C" dsla_status_t dsla_cuda_sum_squares(dsla_cuda_stream_t stream, double *acc,
                                               const float *x, size_t n) {
    if (n == 0) return DSLA_OK;
    sum_squares_kernel<<<reduce_blocks(n), TRAIN_THREADS, 0, stream>>>(acc, x, n);
    DSLA_CUDA_CHECK_LAUNCH("sum_squares_kernel");
    return DSLA_OK;
}

static __global__ void scale_kernel(float *x, float scale, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= scale;
}

extern "C" dsla_status_t dsla_cuda_scale(dsla_cuda_stream_t stream, float *x, float scale,
                                         size_t n) {
    if (n == 0) return DSLA_OK;
    scale_kernel<<<dsla_cuda_blocks_for(n, TRAIN_THREADS), TRAIN_THREADS, 0, stream>>>(x, scale, n);
    DSLA_CUDA_CHECK_LAUNCH("scale_kernel");
    return DSLA_OK;
}

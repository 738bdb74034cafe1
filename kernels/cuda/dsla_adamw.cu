/* AdamW on the GPU: dsla_cpu_adamw_step (kernels/cpu/train_optim.c) one element per thread. The
 * scalars are formed on the host exactly as the CPU forms them, and the per-element arithmetic uses
 * the _rn intrinsics so that nvcc does not contract it into FMAs: the result then matches the CPU
 * bit for bit, which keeps a GPU-trained layer identical to a CPU-trained one. */
#include <math.h>

#include "kernels/cuda/dsla_common.cuh"

static __global__ void dsla_adamw(float *param, float *m, float *v, const float *grad, size_t n,
                                  float b1, float one_b1, float b2, float one_b2, float decay,
                                  float step_size, float bc2_sqrt, float eps) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grad[i];
    const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(one_b1, g));
    const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(one_b2, g), g));
    m[i] = mi;
    v[i] = vi;
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
    param[i] = __fsub_rn(__fmul_rn(param[i], decay), __fmul_rn(step_size, __fdiv_rn(mi, denom)));
}

extern "C" dsla_status_t dsla_cuda_dsla_adamw_step(dsla_cuda_stream_t stream, float *param,
                                                   float *m, float *v, const float *grad, size_t n,
                                                   long step, double lr,
                                                   const dsla_adamw_params_t *p) {
    if (n == 0) return DSLA_OK;
    if (!param || !m || !v || !grad || !p || step < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_dsla_adamw_step: param, m, v, grad and p are required and "
                          "step %ld must be >= 1",
                          step);
    const double bc1 = 1.0 - pow(p->beta1, (double)step), bc2 = 1.0 - pow(p->beta2, (double)step);
    dsla_adamw<<<dsla_cuda_blocks_for(n, DSLA_CUDA_BLOCK), DSLA_CUDA_BLOCK, 0, stream>>>(
        param, m, v, grad, n, (float)p->beta1, (float)(1.0 - p->beta1), (float)p->beta2,
        (float)(1.0 - p->beta2), (float)(1.0 - lr * p->weight_decay), (float)(lr / bc1),
        (float)sqrt(bc2), (float)p->eps);
    DSLA_CUDA_CHECK_LAUNCH("dsla_adamw");
    return DSLA_OK;
}

/* Rotary position embedding on the GPU, rotate_half convention, in place. The cos/sin tables are
 * not stored: each thread forms its angle exactly as dsla_cpu_rope_tables does (fp32 product,
 * cos/sin in double, rounded to fp32), so the result matches the CPU bit for bit in the tables and
 * the kernel reads only x, the positions and head_dim/2 frequencies. */
#include "kernels/cuda/cuda_check.h"

static __global__ void rope(float *x, int n, int row_stride, int n_heads, int head_dim,
                            const int32_t *positions, const float *inv_freq) {
    const int half = head_dim / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    const size_t per_row = (size_t)n_heads * half;
    if (idx >= (size_t)n * per_row) return;
    const int r = (int)(idx / per_row);
    const int rem = (int)(idx % per_row);
    const int h = rem / half, i = rem % half;
    const float angle = (float)positions[r] * inv_freq[i];
    double s, c;
    sincos((double)angle, &s, &c);
    const float cf = (float)c, sf = (float)s;
    float *v = x + (size_t)r * row_stride + (size_t)h * head_dim;
    const float a = v[i], b = v[i + half];
    v[i] = a * cf - b * sf;
    v[i + half] = b * cf + a * sf;
}

extern "C" dsla_status_t dsla_cuda_rope(dsla_cuda_stream_t stream, float *x, int n, int row_stride,
                                        int n_heads, int head_dim, const int32_t *positions,
                                        const float *inv_freq) {
    const size_t total = (size_t)n * n_heads * (head_dim / 2);
    if (total == 0) return DSLA_OK;
    rope<<<dsla_cuda_blocks_for(total, DSLA_CUDA_BLOCK), DSLA_CUDA_BLOCK, 0, stream>>>(
        x, n, row_stride, n_heads, head_dim, positions, inv_freq);
    DSLA_CUDA_CHECK_LAUNCH("rope");
    return DSLA_OK;
}

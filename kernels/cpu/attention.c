/* Causal grouped-query attention over a paged KV cache on the CPU: the reference the CUDA kernel is
 * checked against. One query row at a time; scores for one head are formed, softmaxed and applied
 * before the next head, so the scratch is one context-length row. */
#include "kernels/kernels.h"

#include <math.h>
#include <string.h>

void dsla_cpu_attention(float *out, int out_stride, const float *q, int q_stride, int n_new,
                        int past, const dsla_attn_shape_t *shape, const dsla_paged_kv_t *kv,
                        float *scores) {
    const int d = shape->head_dim;
    const int group = shape->n_heads / shape->n_kv_heads;
    const size_t kv_row = (size_t)shape->n_kv_heads * d;
    const float scale = 1.0f / sqrtf((float)d);
    for (int i = 0; i < n_new; i++) {
        const int visible = past + i + 1;
        for (int h = 0; h < shape->n_heads; h++) {
            const float *qh = q + (size_t)i * q_stride + (size_t)h * d;
            const size_t head_off = (size_t)(h / group) * d;
            float max = -INFINITY;
            for (int t = 0; t < visible; t++) {
                size_t slot = (size_t)kv->block_table[t / kv->block_tokens] * kv->block_tokens +
                              (size_t)(t % kv->block_tokens);
                const float *kt = kv->k + slot * kv_row + head_off;
                float dot = 0.0f;
                for (int j = 0; j < d; j++)
                    dot += qh[j] * kt[j];
                scores[t] = dot * scale;
                max = scores[t] > max ? scores[t] : max;
            }
            float sum = 0.0f;
            for (int t = 0; t < visible; t++) {
                scores[t] = expf(scores[t] - max);
                sum += scores[t];
            }
            const float inv = 1.0f / sum;
            float *oh = out + (size_t)i * out_stride + (size_t)h * d;
            memset(oh, 0, (size_t)d * sizeof *oh);
            for (int t = 0; t < visible; t++) {
                size_t slot = (size_t)kv->block_table[t / kv->block_tokens] * kv->block_tokens +
                              (size_t)(t % kv->block_tokens);
                const float *vt = kv->v + slot * kv_row + head_off;
                const float p = scores[t] * inv;
                for (int j = 0; j < d; j++)
                    oh[j] += p * vt[j];
            }
        }
    }
}

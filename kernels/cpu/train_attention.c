/* Causal grouped-query softmax attention for training (kernels_train.h): a forward over whole
 * sequences that keeps its probabilities, and the exact backward of that forward. The serving
 * forward (attention.c) reads a paged cache one query at a time and keeps nothing; the distiller's
 * logit term needs the gradient through the teacher's later attention layers instead. */
#include "kernels/kernels_train.h"

#include <math.h>
#include <string.h>

/* Row (b, t) of a [B*T, heads*d] tensor, head h. */
static inline size_t at(int b, int t, int h, int T, int heads, int d) {
    return (((size_t)b * T + t) * heads + h) * (size_t)d;
}

void dsla_cpu_causal_attention_train_forward(float *out, float *probs, const float *q,
                                             const float *k, const float *v, int B, int T, int H,
                                             int Hkv, int d) {
    const int group = H / Hkv;
    const double scale = 1.0 / sqrt((double)d);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const int g = h / group;
            float *P = probs + ((size_t)b * H + h) * T * T;
            for (int i = 0; i < T; i++) {
                float *p = P + (size_t)i * T;
                const float *qi = q + at(b, i, h, T, H, d);
                double max = -INFINITY;
                for (int j = 0; j <= i; j++) {
                    const float *kj = k + at(b, j, g, T, Hkv, d);
                    double s = 0.0;
                    for (int c = 0; c < d; c++)
                        s += (double)qi[c] * kj[c];
                    p[j] = (float)(s * scale);
                    if (p[j] > max) max = p[j];
                }
                double sum = 0.0;
                for (int j = 0; j <= i; j++)
                    sum += exp(p[j] - max);
                for (int j = 0; j <= i; j++)
                    p[j] = (float)(exp(p[j] - max) / sum);
                for (int j = i + 1; j < T; j++)
                    p[j] = 0.0f;
                float *o = out + at(b, i, h, T, H, d);
                for (int c = 0; c < d; c++) {
                    double acc = 0.0;
                    for (int j = 0; j <= i; j++)
                        acc += (double)p[j] * v[at(b, j, g, T, Hkv, d) + c];
                    o[c] = (float)acc;
                }
            }
        }
}

void dsla_cpu_causal_attention_train_backward(float *dq, float *dk, float *dv, const float *dout,
                                              const float *probs, const float *q, const float *k,
                                              const float *v, int B, int T, int H, int Hkv, int d,
                                              float *scratch) {
    const int group = H / Hkv;
    const double scale = 1.0 / sqrt((double)d);
    memset(dk, 0, sizeof(float) * (size_t)B * T * Hkv * d);
    memset(dv, 0, sizeof(float) * (size_t)B * T * Hkv * d);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const int g = h / group;
            const float *P = probs + ((size_t)b * H + h) * T * T;
            for (int i = 0; i < T; i++) {
                const float *p = P + (size_t)i * T;
                const float *doi = dout + at(b, i, h, T, H, d);
                /* dP_ij = do_i . v_j; dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij) */
                float *ds = scratch;
                double dot = 0.0;
                for (int j = 0; j <= i; j++) {
                    const float *vj = v + at(b, j, g, T, Hkv, d);
                    double s = 0.0;
                    for (int c = 0; c < d; c++)
                        s += (double)doi[c] * vj[c];
                    ds[j] = (float)s;
                    dot += s * p[j];
                }
                for (int j = 0; j <= i; j++)
                    ds[j] = (float)(p[j] * (ds[j] - dot) * scale);
                float *dqi = dq + at(b, i, h, T, H, d);
                const float *qi = q + at(b, i, h, T, H, d);
                for (int c = 0; c < d; c++) {
                    double acc = 0.0;
                    for (int j = 0; j <= i; j++)
                        acc += (double)ds[j] * k[at(b, j, g, T, Hkv, d) + c];
                    dqi[c] = (float)acc;
                }
                for (int j = 0; j <= i; j++) {
                    float *dkj = dk + at(b, j, g, T, Hkv, d), *dvj = dv + at(b, j, g, T, Hkv, d);
                    for (int c = 0; c < d; c++) {
                        dkj[c] += ds[j] * qi[c];
                        dvj[c] += p[j] * doi[c];
                    }
                }
            }
        }
}

/* Recurrent DSLA forward in fp32: the decode path. Per token, head and key channel c, one pass over
 * row c of both states does the decay, the rank-1 update k[c] v, the read-out q[c] S[c] and the
 * mixing with (w1, w2), accumulating straight into out: no workspace, no second pass over the d x d
 * states. */
#include <math.h>
#include <string.h>

#include "kernels/cpu/dsla_internal.h"

dsla_status_t dsla_cpu_dsla_recurrent_forward(const dsla_dsla_dims_t *dims,
                                              const dsla_dsla_in_t *in, float *S1, float *S2,
                                              float *out) {
    static const char who[] = "dsla_cpu_dsla_recurrent_forward";
    DSLA_TRY(dsla_cpu_dsla_check_dims(dims, who));
    DSLA_TRY(dsla_cpu_dsla_check_in(in, S1, who));
    if (!S2 || (!out && dims->tokens > 0))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: S1, S2 and out are required", who);
    const int T = dims->tokens, H = dims->heads, d = dims->head_dim, hd = H * d;
    const size_t dd = (size_t)d * d;
    const float scale = 1.0f / sqrtf((float)d);
    float w[2];
    dsla_cpu_dsla_mix_weights(in->alpha, w);

    for (int b = 0; b < dims->batch; b++) {
        for (int t = 0; t < T; t++) {
            for (int h = 0; h < H; h++) {
                size_t ro = ((size_t)b * T + t) * hd + (size_t)h * d;
                const float *q = in->q + ro, *k = in->k + ro, *v = in->v + ro;
                const float *a1 = in->a1 + ro, *a2 = in->a2 + ro;
                float *o = out + ro;
                float *s1 = S1 + ((size_t)b * H + h) * dd, *s2 = S2 + ((size_t)b * H + h) * dd;
                memset(o, 0, sizeof(float) * d);
                for (int c = 0; c < d; c++) {
                    float g1 = expf(dsla_cpu_dsla_log_gate(a1[c]));
                    float g2 = expf(dsla_cpu_dsla_log_gate(a2[c]));
                    float kc = k[c], q1 = w[0] * scale * q[c], q2 = w[1] * scale * q[c];
                    float *r1 = s1 + (size_t)c * d, *r2 = s2 + (size_t)c * d;
                    for (int j = 0; j < d; j++) {
                        float x1 = g1 * r1[j] + kc * v[j];
                        float x2 = g2 * r2[j] + kc * v[j];
                        r1[j] = x1;
                        r2[j] = x2;
                        o[j] += q1 * x1 + q2 * x2;
                    }
                }
            }
        }
    }
    return DSLA_OK;
}

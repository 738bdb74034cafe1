/* Chunked DSLA forward in fp32 (GLA's chunk form): per chunk of DSLA_CHUNK tokens and per state,
 *   out   += A V + (qw * exp(b)) S_prev           A: intra-chunk scores, dsla_chunk_parts.c
 *   S_next = diag(exp(b_last)) S_prev + (k * exp(b_last - b))^T V
 * where qw = w_i q / sqrt(d), so that mixing the two states is a GEMM accumulation into out. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/dsla_internal.h"

static size_t dsla_cpu_dsla_chunks(const dsla_dsla_dims_t *dims) {
    return ((size_t)dims->tokens + DSLA_CHUNK - 1) / DSLA_CHUNK;
}

size_t dsla_cpu_dsla_chunked_workspace_floats(const dsla_dsla_dims_t *dims) {
    if (dsla_cpu_dsla_check_dims(dims, "dsla_cpu_dsla_chunked_workspace_floats") != DSLA_OK)
        return 0;
    size_t d = (size_t)dims->head_dim;
    size_t states = dsla_cpu_dsla_chunks(dims); /* the backward's state before each chunk */
    if (states < 2) states = 2;                 /* the forward's two states when S_T is NULL */
    /* chunk scratch, the chunk's decay exp(b_last) [d], states, and the carried state gradient */
    return dsla_cpu_dsla_chunk_scratch_floats(dims->head_dim) + d + states * d * d + d * d;
}

dsla_status_t dsla_cpu_dsla_chunked_forward(const dsla_dsla_dims_t *dims, const dsla_dsla_in_t *in,
                                            const float *S1_0, const float *S2_0, float *out,
                                            float *S1_T, float *S2_T, float *work) {
    static const char who[] = "dsla_cpu_dsla_chunked_forward";
    DSLA_TRY(dsla_cpu_dsla_check_dims(dims, who));
    DSLA_TRY(dsla_cpu_dsla_check_in(in, work, who));
    if (!out && dims->tokens > 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: out is NULL", who);
    const int T = dims->tokens, H = dims->heads, d = dims->head_dim, hd = H * d;
    const size_t dd = (size_t)d * d;
    dsla_dsla_chunk_scratch_t s;
    float *gl = dsla_cpu_dsla_chunk_scratch_carve(&s, d, work);
    float *own_states = gl + d;
    const float scale = 1.0f / sqrtf((float)d);
    float w[2];
    dsla_cpu_dsla_mix_weights(in->alpha, w);
    const float *a[2] = {in->a1, in->a2};

    for (int b = 0; b < dims->batch; b++) {
        for (int h = 0; h < H; h++) {
            size_t so = ((size_t)b * H + h) * dd;
            float *S[2] = {S1_T ? S1_T + so : own_states, S2_T ? S2_T + so : own_states + dd};
            const float *S0[2] = {S1_0 ? S1_0 + so : NULL, S2_0 ? S2_0 + so : NULL};
            for (int i = 0; i < 2; i++) {
                if (S0[i])
                    memmove(S[i], S0[i], sizeof(float) * dd);
                else
                    memset(S[i], 0, sizeof(float) * dd);
            }
            for (int t0 = 0; t0 < T; t0 += DSLA_CHUNK) {
                int n = T - t0 < DSLA_CHUNK ? T - t0 : DSLA_CHUNK;
                size_t ro = ((size_t)b * T + t0) * hd + (size_t)h * d;
                const float *v = in->v + ro;
                float *o = out + ro;
                dsla_cpu_dsla_gather(in->q, dims, b, h, t0, n, scale, s.q);
                dsla_cpu_dsla_gather(in->k, dims, b, h, t0, n, 1.0f, s.k);
                for (int t = 0; t < n; t++)
                    memset(o + (size_t)t * hd, 0, sizeof(float) * d);
                for (int i = 0; i < 2; i++) {
                    dsla_cpu_dsla_gather_log_gate(a[i], dims, b, h, t0, n, s.lg);
                    for (size_t j = 0; j < (size_t)n * d; j++)
                        s.qw[j] = w[i] * s.q[j];
                    dsla_cpu_dsla_chunk_decays(&s, n, d, gl);
                    dsla_cpu_dsla_chunk_intra(&s, n, d);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, s.a,
                                DSLA_CHUNK, v, hd, 1.0f, o, hd);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, d, 1.0f, s.qg, d,
                                S[i], d, 1.0f, o, hd);
                    for (int c = 0; c < d; c++)
                        for (int j = 0; j < d; j++)
                            S[i][(size_t)c * d + j] *= gl[c];
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, n, 1.0f, s.kg, d, v,
                                hd, 1.0f, S[i], d);
                }
            }
        }
    }
    return DSLA_OK;
}

/* Chunked DSLA backward in fp32. Per (sequence, head, state): a forward pass over the chunks
 * stores the state before every chunk, then the chunks run in reverse, carrying dS, the gradient
 * of the state after the chunk. With qg = qw * exp(b), kg = k * exp(b_last - b), A the intra
 * scores and dO the gradient of the mixed output:
 *   dA      = tril(dO V^T)
 *   dV     += A^T dO + kg dS
 *   dqw     = exp(b) * (dO S_prev^T) + intra
 *   dK     += exp(b_last - b) * (V dS^T) + intra
 *   dS_prev = diag(exp(b_last)) dS + qg^T dO
 * The log-gate gradient of token u sums the pairs (source, reader) whose decay passes through u.
 * GLA's usual identity (reverse cumulative sum of qw * dqw - k * dk, plus rowsum(S_next * dS))
 * adds and then subtracts every pair that does not pass through u; with gates near the -50 clamp
 * the pairs that do are ~exp(-50) while those cancelling are O(1), so the result would be rounding
 * noise. Here only the intra-chunk off-diagonal pairs use that identity (they carry a decay of
 * their own); the state pairs are summed directly.
 * dalpha comes from G_i = sum(dOut * o_i) = sum(q / sqrt(d) * dqw_i). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "kernels/cpu/dsla_internal.h"

typedef struct {
    const dsla_dsla_dims_t *dims;
    const dsla_dsla_in_t *in;
    const float *dout;
    const dsla_dsla_grad_t *grad;
    dsla_dsla_chunk_scratch_t s;
    float *gl;
    float *states; /* [chunks, d, d] */
    float *dS;     /* [d, d] */
    float w[2];
    float scale;
} dsla_dsla_bwd_t;

/* Loads chunk [t0, t0+n) of head h of sequence b for state i into the scratch, with its decays. */
static void dsla_cpu_dsla_bwd_load(dsla_dsla_bwd_t *c, int b, int h, int i, int t0, int n) {
    const dsla_dsla_dims_t *dims = c->dims;
    int d = dims->head_dim;
    dsla_cpu_dsla_gather(c->in->q, dims, b, h, t0, n, c->scale, c->s.q);
    dsla_cpu_dsla_gather(c->in->k, dims, b, h, t0, n, 1.0f, c->s.k);
    dsla_cpu_dsla_gather_log_gate(i == 0 ? c->in->a1 : c->in->a2, dims, b, h, t0, n, c->s.lg);
    for (size_t j = 0; j < (size_t)n * d; j++)
        c->s.qw[j] = c->w[i] * c->s.q[j];
    dsla_cpu_dsla_chunk_decays(&c->s, n, d, c->gl);
}

/* One chunk in reverse; returns its share of G_i. */
static double dsla_cpu_dsla_bwd_chunk(dsla_dsla_bwd_t *c, int b, int h, int i, int chunk) {
    const dsla_dsla_dims_t *dims = c->dims;
    const int T = dims->tokens, d = dims->head_dim, hd = dims->heads * d;
    const size_t dd = (size_t)d * d;
    const int t0 = chunk * DSLA_CHUNK;
    const int n = T - t0 < DSLA_CHUNK ? T - t0 : DSLA_CHUNK;
    const size_t ro = ((size_t)b * T + t0) * hd + (size_t)h * d;
    const float *v = c->in->v + ro, *dO = c->dout + ro, *a = (i == 0 ? c->in->a1 : c->in->a2) + ro;
    const float *S_prev = c->states + (size_t)chunk * dd;
    float *dq = c->grad->dq + ro, *dk = c->grad->dk + ro, *dv = c->grad->dv + ro;
    float *da = (i == 0 ? c->grad->da1 : c->grad->da2) + ro;
    dsla_dsla_chunk_scratch_t *s = &c->s;

    dsla_cpu_dsla_bwd_load(c, b, h, i, t0, n);
    dsla_cpu_dsla_chunk_intra(s, n, d);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, 1.0f, dO, hd, v, hd, 0.0f, s->da,
                DSLA_CHUNK);
    for (int t = 0; t < n; t++)
        for (int j = t + 1; j < n; j++)
            s->da[(size_t)t * DSLA_CHUNK + j] = 0.0f;

    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, d, n, 1.0f, s->a, DSLA_CHUNK, dO, hd,
                1.0f, dv, hd);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, d, 1.0f, s->kg, d, c->dS, d, 1.0f,
                dv, hd);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, d, 1.0f, dO, hd, S_prev, d, 0.0f,
                s->dq, d);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, d, 1.0f, v, hd, c->dS, d, 0.0f,
                s->ks, d);
    for (size_t j = 0; j < (size_t)n * d; j++) {
        s->dq[j] *= s->eb[j];
        s->ks[j] *= s->er[j];
    }
    memset(s->dk, 0, sizeof(float) * (size_t)n * d);
    dsla_cpu_dsla_chunk_intra_backward(s, n, d);

    /* log-gate gradient of token u: the pairs whose decay passes through u. S_prev -> t (t >= u)
     * and intra s' < u <= t: a suffix sum; S_prev -> S_next: every u; s' -> S_next (s' < u): a
     * prefix sum. Only the intra pairs use the add-then-subtract identity, and without their
     * diagonal. */
    float *prefix = s->t3;
    for (int ch = 0; ch < d; ch++) {
        float sum = 0.0f;
        for (int j = 0; j < d; j++)
            sum += S_prev[(size_t)ch * d + j] * c->dS[(size_t)ch * d + j];
        s->acc[ch] = c->gl[ch] * sum;
    }
    for (int t = 0; t < n; t++) {
        for (int ch = 0; ch < d; ch++) {
            size_t j = (size_t)t * d + ch;
            prefix[j] = s->acc[ch];
            s->acc[ch] += s->k[j] * s->ks[j];
        }
    }
    for (int ch = 0; ch < d; ch++)
        s->acc[ch] = 0.0f;
    for (int t = n - 1; t >= 0; t--) {
        float diag = s->da[(size_t)t * DSLA_CHUNK + t];
        for (int ch = 0; ch < d; ch++) {
            size_t j = (size_t)t * d + ch;
            s->acc[ch] += s->qw[j] * s->dq[j] - s->k[j] * s->dk[j];
            float dlg = s->acc[ch] + prefix[j];
            da[(size_t)t * hd + ch] = dlg * dsla_cpu_dsla_log_gate_grad(a[(size_t)t * hd + ch]);
            s->dq[j] += diag * s->k[j];
            s->dk[j] += diag * s->qw[j] + s->ks[j];
        }
    }

    double g = 0.0;
    const float wq = c->w[i] * c->scale;
    for (int t = 0; t < n; t++) {
        for (int ch = 0; ch < d; ch++) {
            size_t j = (size_t)t * d + ch;
            g += (double)s->q[j] * s->dq[j];
            dq[(size_t)t * hd + ch] += wq * s->dq[j];
            dk[(size_t)t * hd + ch] += s->dk[j];
        }
    }

    for (int ch = 0; ch < d; ch++)
        for (int j = 0; j < d; j++)
            c->dS[(size_t)ch * d + j] *= c->gl[ch];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, n, 1.0f, s->qg, d, dO, hd, 1.0f,
                c->dS, d);
    return g;
}

/* Fills c->states[0..chunks) (the state before each chunk) for state i of head h of sequence b. */
static void dsla_cpu_dsla_bwd_states(dsla_dsla_bwd_t *c, int b, int h, int i, const float *S0,
                                     int chunks) {
    const int T = c->dims->tokens, d = c->dims->head_dim, hd = c->dims->heads * d;
    const size_t dd = (size_t)d * d;
    if (S0)
        memcpy(c->states, S0, sizeof(float) * dd);
    else
        memset(c->states, 0, sizeof(float) * dd);
    for (int chunk = 0; chunk + 1 < chunks; chunk++) {
        int t0 = chunk * DSLA_CHUNK, n = T - t0 < DSLA_CHUNK ? T - t0 : DSLA_CHUNK;
        const float *v = c->in->v + ((size_t)b * T + t0) * hd + (size_t)h * d;
        float *S = c->states + (size_t)(chunk + 1) * dd;
        dsla_cpu_dsla_bwd_load(c, b, h, i, t0, n);
        for (int ch = 0; ch < d; ch++)
            for (int j = 0; j < d; j++)
                S[(size_t)ch * d + j] = c->gl[ch] * S[(size_t)ch * d + j - dd];
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d, d, n, 1.0f, c->s.kg, d, v, hd, 1.0f,
                    S, d);
    }
}

dsla_status_t dsla_cpu_dsla_chunked_backward(const dsla_dsla_dims_t *dims, const dsla_dsla_in_t *in,
                                             const float *S1_0, const float *S2_0,
                                             const float *dout, const float *dS1_T,
                                             const float *dS2_T, const dsla_dsla_grad_t *grad,
                                             float *dS1_0, float *dS2_0, float *work) {
    static const char who[] = "dsla_cpu_dsla_chunked_backward";
    DSLA_TRY(dsla_cpu_dsla_check_dims(dims, who));
    DSLA_TRY(dsla_cpu_dsla_check_in(in, work, who));
    if (!grad || !grad->dq || !grad->dk || !grad->dv || !grad->da1 || !grad->da2 || !grad->dalpha ||
        !dout)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: dout and all of dq, dk, dv, da1, da2, dalpha are required", who);
    const int T = dims->tokens, H = dims->heads, d = dims->head_dim, hd = H * d;
    const int chunks = (T + DSLA_CHUNK - 1) / DSLA_CHUNK;
    const size_t dd = (size_t)d * d;
    dsla_dsla_bwd_t c = {.dims = dims, .in = in, .dout = dout, .grad = grad};
    c.gl = dsla_cpu_dsla_chunk_scratch_carve(&c.s, d, work);
    c.dS = c.gl + d;
    c.states = c.dS + dd;
    c.scale = 1.0f / sqrtf((float)d);
    dsla_cpu_dsla_mix_weights(in->alpha, c.w);
    const float *S0[2] = {S1_0, S2_0}, *dST[2] = {dS1_T, dS2_T};
    float *dS0[2] = {dS1_0, dS2_0};
    double G[2] = {0.0, 0.0};

    for (int b = 0; b < dims->batch; b++) {
        for (int h = 0; h < H; h++) {
            size_t so = ((size_t)b * H + h) * dd;
            for (int t = 0; t < T; t++) {
                size_t ro = ((size_t)b * T + t) * hd + (size_t)h * d;
                memset(grad->dq + ro, 0, sizeof(float) * d);
                memset(grad->dk + ro, 0, sizeof(float) * d);
                memset(grad->dv + ro, 0, sizeof(float) * d);
            }
            for (int i = 0; i < 2; i++) {
                dsla_cpu_dsla_bwd_states(&c, b, h, i, S0[i] ? S0[i] + so : NULL, chunks);
                if (dST[i])
                    memcpy(c.dS, dST[i] + so, sizeof(float) * dd);
                else
                    memset(c.dS, 0, sizeof(float) * dd);
                for (int chunk = chunks - 1; chunk >= 0; chunk--)
                    G[i] += dsla_cpu_dsla_bwd_chunk(&c, b, h, i, chunk);
                if (dS0[i]) memcpy(dS0[i] + so, c.dS, sizeof(float) * dd);
            }
        }
    }
    double w1w2 = (double)c.w[0] * c.w[1];
    grad->dalpha[0] = (float)(w1w2 * (G[0] - G[1]));
    grad->dalpha[1] = -grad->dalpha[0];
    return DSLA_OK;
}

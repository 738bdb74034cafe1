/* The pieces of one chunk that the chunked DSLA forward and backward share: gathering a head's
 * rows, the decay factors of GLA's chunk form, and the intra-chunk scores with their backward.
 *
 * Numerics: a token's log-gate can be as low as -50, so over a 64-token chunk the cumulative
 * log-decay b_t reaches -3200 and exp(-b_s) overflows. No factor of the form exp(b_t) * exp(-b_s)
 * is ever formed: every exponent here is a sum of log-gates over a range that is accumulated from
 * its own start, so it is <= 0 (no overflow) and short (no cancellation between two large
 * cumulative sums). Between two different sub-chunks (DSLA_SUBCHUNK) the pairwise decay
 * exp(sum_{s<u<=t} lg_u) is split at the start of t's sub-chunk into two factors <= 1, which turns
 * that block into a GEMM; inside a sub-chunk it is a running product of the gates g_u <= 1 along
 * the pair, which can only underflow (to its true, negligible value) and needs no exp per pair. */
#include <cblas.h>
#include <string.h>

#include "kernels/cpu/dsla_internal.h"

enum { DSLA_CHUNK_ROWS_ARRAYS = 18 }; /* [DSLA_CHUNK, d] arrays in dsla_dsla_chunk_scratch_t */

size_t dsla_cpu_dsla_chunk_scratch_floats(int d) {
    return (size_t)DSLA_CHUNK_ROWS_ARRAYS * DSLA_CHUNK * (size_t)d +
           (size_t)2 * DSLA_CHUNK * DSLA_CHUNK + (size_t)d;
}

float *dsla_cpu_dsla_chunk_scratch_carve(dsla_dsla_chunk_scratch_t *s, int d, float *work) {
    size_t rows = (size_t)DSLA_CHUNK * (size_t)d;
    float **arrays[DSLA_CHUNK_ROWS_ARRAYS] = {&s->q,  &s->qw, &s->k,  &s->lg, &s->eb, &s->er,
                                              &s->qg, &s->kg, &s->fq, &s->fk, &s->t1, &s->t2,
                                              &s->t3, &s->t4, &s->dq, &s->dk, &s->ks, &s->g};
    for (int i = 0; i < DSLA_CHUNK_ROWS_ARRAYS; i++) {
        *arrays[i] = work;
        work += rows;
    }
    s->a = work;
    work += (size_t)DSLA_CHUNK * DSLA_CHUNK;
    s->da = work;
    work += (size_t)DSLA_CHUNK * DSLA_CHUNK;
    s->acc = work;
    return work + d;
}

static size_t dsla_cpu_dsla_row(const dsla_dsla_dims_t *dims, int b, int t, int h) {
    return ((size_t)b * (size_t)dims->tokens + (size_t)t) * (size_t)dims->heads *
               (size_t)dims->head_dim +
           (size_t)h * (size_t)dims->head_dim;
}

void dsla_cpu_dsla_gather(const float *src, const dsla_dsla_dims_t *dims, int b, int h, int t0,
                          int n, float scale, float *dst) {
    int d = dims->head_dim;
    for (int t = 0; t < n; t++) {
        const float *row = src + dsla_cpu_dsla_row(dims, b, t0 + t, h);
        for (int c = 0; c < d; c++)
            dst[(size_t)t * d + c] = scale * row[c];
    }
}

void dsla_cpu_dsla_gather_log_gate(const float *a, const dsla_dsla_dims_t *dims, int b, int h,
                                   int t0, int n, float *lg) {
    int d = dims->head_dim;
    for (int t = 0; t < n; t++) {
        const float *row = a + dsla_cpu_dsla_row(dims, b, t0 + t, h);
        for (int c = 0; c < d; c++)
            lg[(size_t)t * d + c] = dsla_cpu_dsla_log_gate(row[c]);
    }
}

void dsla_cpu_dsla_chunk_decays(dsla_dsla_chunk_scratch_t *s, int n, int d, float *gl) {
    for (int c = 0; c < d; c++)
        s->acc[c] = 0.0f;
    for (int t = 0; t < n; t++) {
        for (int c = 0; c < d; c++) {
            size_t i = (size_t)t * d + c;
            s->g[i] = expf(s->lg[i]);
            s->acc[c] += s->lg[i];
            s->eb[i] = expf(s->acc[c]);
            s->qg[i] = s->qw[i] * s->eb[i];
        }
    }
    for (int c = 0; c < d; c++)
        gl[c] = expf(s->acc[c]);
    for (int c = 0; c < d; c++)
        s->acc[c] = 0.0f;
    for (int t = n - 1; t >= 0; t--) {
        for (int c = 0; c < d; c++) {
            size_t i = (size_t)t * d + c;
            s->er[i] = expf(s->acc[c]);
            s->kg[i] = s->k[i] * s->er[i];
            s->acc[c] += s->lg[i];
        }
    }
}

/* For the sub-chunk [i0, i0 + il) with i0 > 0: fq[t] = exp(sum_{i0<=u<=t} lg_u) for its rows and
 * fk[s] = exp(sum_{s<u<i0} lg_u) for s < i0, so that the decay from s to t is fq[t] * fk[s]; t1
 * gets qw * fq and t2 gets k * fk. */
static void dsla_cpu_dsla_split_factors(dsla_dsla_chunk_scratch_t *s, int i0, int il, int d) {
    for (int c = 0; c < d; c++)
        s->acc[c] = 0.0f;
    for (int t = i0; t < i0 + il; t++) {
        for (int c = 0; c < d; c++) {
            size_t i = (size_t)t * d + c;
            s->acc[c] += s->lg[i];
            s->fq[i] = expf(s->acc[c]);
            s->t1[i] = s->qw[i] * s->fq[i];
        }
    }
    for (int c = 0; c < d; c++)
        s->acc[c] = 0.0f;
    for (int t = i0 - 1; t >= 0; t--) {
        for (int c = 0; c < d; c++) {
            size_t i = (size_t)t * d + c;
            s->fk[i] = expf(s->acc[c]);
            s->t2[i] = s->k[i] * s->fk[i];
            s->acc[c] += s->lg[i];
        }
    }
}

void dsla_cpu_dsla_chunk_intra(dsla_dsla_chunk_scratch_t *s, int n, int d) {
    memset(s->a, 0, sizeof(float) * (size_t)n * DSLA_CHUNK);
    for (int i0 = 0; i0 < n; i0 += DSLA_SUBCHUNK) {
        int il = n - i0 < DSLA_SUBCHUNK ? n - i0 : DSLA_SUBCHUNK;
        for (int j = i0; j < i0 + il; j++) {
            /* acc = k_j times the decay from j to t, one gate at a time */
            const float *kj = s->k + (size_t)j * d;
            for (int c = 0; c < d; c++)
                s->acc[c] = kj[c];
            for (int t = j; t < i0 + il; t++) {
                const float *qt = s->qw + (size_t)t * d;
                const float *gt = s->g + (size_t)t * d;
                float sum = 0.0f;
                for (int c = 0; c < d; c++) {
                    if (t > j) s->acc[c] *= gt[c];
                    sum += qt[c] * s->acc[c];
                }
                s->a[(size_t)t * DSLA_CHUNK + j] = sum;
            }
        }
        if (i0 == 0) continue;
        dsla_cpu_dsla_split_factors(s, i0, il, d);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, il, i0, d, 1.0f,
                    s->t1 + (size_t)i0 * d, d, s->t2, d, 0.0f, s->a + (size_t)i0 * DSLA_CHUNK,
                    DSLA_CHUNK);
    }
}

void dsla_cpu_dsla_chunk_intra_backward(dsla_dsla_chunk_scratch_t *s, int n, int d) {
    for (int i0 = 0; i0 < n; i0 += DSLA_SUBCHUNK) {
        int il = n - i0 < DSLA_SUBCHUNK ? n - i0 : DSLA_SUBCHUNK;
        for (int j = i0; j < i0 + il; j++) {
            const float *kj = s->k + (size_t)j * d;
            float *dkj = s->dk + (size_t)j * d;
            /* acc = the decay from j to t, one gate at a time */
            for (int c = 0; c < d; c++)
                s->acc[c] = 1.0f;
            for (int t = j + 1; t < i0 + il; t++) {
                const float *qt = s->qw + (size_t)t * d;
                const float *gt = s->g + (size_t)t * d;
                float *dqt = s->dq + (size_t)t * d;
                float dat = s->da[(size_t)t * DSLA_CHUNK + j];
                for (int c = 0; c < d; c++) {
                    s->acc[c] *= gt[c];
                    float f = dat * s->acc[c];
                    dqt[c] += f * kj[c];
                    dkj[c] += f * qt[c];
                }
            }
        }
        if (i0 == 0) continue;
        dsla_cpu_dsla_split_factors(s, i0, il, d);
        const float *da = s->da + (size_t)i0 * DSLA_CHUNK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, il, d, i0, 1.0f, da, DSLA_CHUNK,
                    s->t2, d, 0.0f, s->t3 + (size_t)i0 * d, d);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i0, d, il, 1.0f, da, DSLA_CHUNK,
                    s->t1 + (size_t)i0 * d, d, 0.0f, s->t4, d);
        for (size_t i = (size_t)i0 * d; i < (size_t)(i0 + il) * d; i++)
            s->dq[i] += s->t3[i] * s->fq[i];
        for (size_t i = 0; i < (size_t)i0 * d; i++)
            s->dk[i] += s->t4[i] * s->fk[i];
    }
}

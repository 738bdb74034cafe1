/* Private helpers of the CPU DSLA kernels (kernels/cpu/dsla*.c): the gate nonlinearity and its
 * derivative in both precisions, argument checks, and the intra-chunk pieces that the chunked
 * forward and backward share. Nothing outside kernels/cpu/dsla*.c may include this file. */
#ifndef DSLA_KERNELS_CPU_DSLA_INTERNAL_H
#define DSLA_KERNELS_CPU_DSLA_INTERNAL_H

#include <math.h>
#include <stddef.h>

#include "kernels/kernels_dsla.h"

/* logsigmoid(a) without overflow for large |a|. */
static inline double dsla_cpu_dsla_logsigmoid64(double a) {
    return fmin(a, 0.0) - log1p(exp(-fabs(a)));
}

static inline float dsla_cpu_dsla_logsigmoid(float a) {
    return fminf(a, 0.0f) - log1pf(expf(-fabsf(a)));
}

static inline double dsla_cpu_dsla_log_gate64(double a) {
    return fmax(dsla_cpu_dsla_logsigmoid64(a) / DSLA_GATE_NORMALIZER, (double)DSLA_LOG_GATE_MIN);
}

static inline float dsla_cpu_dsla_log_gate(float a) {
    return fmaxf(dsla_cpu_dsla_logsigmoid(a) / DSLA_GATE_NORMALIZER, (float)DSLA_LOG_GATE_MIN);
}

/* d log g / d a = sigmoid(-a) / 16 where the clamp is inactive, 0 where it holds (the clamp passes
 * the gradient at equality, like torch.clamp_min). */
static inline double dsla_cpu_dsla_log_gate_grad64(double a) {
    if (dsla_cpu_dsla_logsigmoid64(a) / DSLA_GATE_NORMALIZER < (double)DSLA_LOG_GATE_MIN)
        return 0.0;
    double s = a >= 0.0 ? exp(-a) / (1.0 + exp(-a)) : 1.0 / (1.0 + exp(a));
    return s / DSLA_GATE_NORMALIZER;
}

static inline float dsla_cpu_dsla_log_gate_grad(float a) {
    if (dsla_cpu_dsla_logsigmoid(a) / DSLA_GATE_NORMALIZER < (float)DSLA_LOG_GATE_MIN) return 0.0f;
    float s = a >= 0.0f ? expf(-a) / (1.0f + expf(-a)) : 1.0f / (1.0f + expf(a));
    return s / DSLA_GATE_NORMALIZER;
}

/* (w1, w2) = softmax(alpha) in fp64; a huge alpha2 - alpha1 (e = inf) gives (0, 1), not NaN. */
static inline void dsla_cpu_dsla_mix_weights(const float alpha[2], float w[2]) {
    double e = exp((double)alpha[1] - (double)alpha[0]);
    w[0] = isinf(e) ? 0.0f : (float)(1.0 / (1.0 + e));
    w[1] = isinf(e) ? 1.0f : (float)(e / (1.0 + e));
}

/* Checks dims (all positive, T >= 0, sizes that fit in memory arithmetic); who names the caller in
 * the error message. */
dsla_status_t dsla_cpu_dsla_check_dims(const dsla_dsla_dims_t *dims, const char *who);

/* Checks that the core inputs are present and work is not NULL. */
dsla_status_t dsla_cpu_dsla_check_in(const dsla_dsla_in_t *in, const void *work, const char *who);

/* Per-chunk scratch of the chunked form, carved from the caller's workspace. All [DSLA_CHUNK, d]
 * row-major unless noted. */
typedef struct {
    float *q;  /* q / sqrt(d), unmixed */
    float *qw; /* w_i q / sqrt(d): the state's query */
    float *k;
    float *lg; /* log g of the current state */
    float *g;  /* exp(lg) */
    float *eb; /* exp(cumulative log g from the chunk start, inclusive) */
    float *er; /* exp(log g summed after s to the chunk end) */
    float *qg; /* qw * eb */
    float *kg; /* k * er */
    float *fq; /* secondary split: decay from a sub-chunk's start to t */
    float *fk; /* secondary split: decay from s to a sub-chunk's start */
    float *t1; /* secondary split: query and key rows with their decay factors applied */
    float *t2;
    float *t3; /* GEMM results before scaling */
    float *t4;
    float *dq; /* backward: gradient of qw */
    float *dk;
    float *ks;  /* backward: gradient of k through the state passed on */
    float *a;   /* [DSLA_CHUNK, DSLA_CHUNK] intra-chunk scores */
    float *da;  /* [DSLA_CHUNK, DSLA_CHUNK] their gradient */
    float *acc; /* [d] running sums and products along the chunk */
} dsla_dsla_chunk_scratch_t;

/* Floats dsla_cpu_dsla_chunk_scratch_carve takes for head dim d. */
size_t dsla_cpu_dsla_chunk_scratch_floats(int d);
/* Carves s from work; returns the first float after it. */
float *dsla_cpu_dsla_chunk_scratch_carve(dsla_dsla_chunk_scratch_t *s, int d, float *work);

/* Fills s->eb, s->er, s->qg, s->kg for a chunk of n tokens from s->lg, s->qw, s->k; returns
 * exp(sum of log g over the chunk) per key channel into gl [d]. */
void dsla_cpu_dsla_chunk_decays(dsla_dsla_chunk_scratch_t *s, int n, int d, float *gl);

/* s->a[t][s'] = sum_c qw_t[c] k_s'[c] exp(sum_{s'<u<=t} lg_u[c]) for s' <= t, 0 above the diagonal.
 */
void dsla_cpu_dsla_chunk_intra(dsla_dsla_chunk_scratch_t *s, int n, int d);

/* Backward of dsla_cpu_dsla_chunk_intra without its diagonal: given s->da (zero above the
 * diagonal), adds the contributions of the pairs s' < t to s->dq and s->dk. The caller adds the
 * diagonal (decay 1) itself, after using the off-diagonal part for the log-gate gradient, where the
 * diagonal would only add and then subtract the same large term. */
void dsla_cpu_dsla_chunk_intra_backward(dsla_dsla_chunk_scratch_t *s, int n, int d);

/* Gathers rows [t0, t0+n) of head h of sequence b from an activation [B, T, H*d] into dst [n, d],
 * times scale. */
void dsla_cpu_dsla_gather(const float *src, const dsla_dsla_dims_t *dims, int b, int h, int t0,
                          int n, float scale, float *dst);

/* Fills s->lg for a chunk from gate pre-activations a [B, T, H*d]. */
void dsla_cpu_dsla_gather_log_gate(const float *a, const dsla_dsla_dims_t *dims, int b, int h,
                                   int t0, int n, float *lg);

#endif

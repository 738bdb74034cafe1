/* Sampling: probabilities in float, candidates sorted only when top-k or top-p needs an order. */
#include "runtime/model/sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "kernels/kernels.h"
#include "runtime/core/random.h"

typedef struct {
    float prob;
    int32_t id;
} candidate_t;

struct dsla_sampler {
    dsla_sampler_params_t params;
    int vocab_size;
    uint64_t rng[4];         /* xoshiro256** state */
    float *probs;            /* [vocab] */
    candidate_t *candidates; /* [vocab] */
};

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform01(uint64_t s[4]) {
    return (double)(xoshiro_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

void dsla_sampler_reseed(dsla_sampler_t *s, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = dsla_splitmix64(&x);
}

dsla_status_t dsla_sampler_create(dsla_sampler_t **out, const dsla_sampler_params_t *params,
                                  int vocab_size) {
    *out = NULL;
    if (vocab_size < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "sampler: vocab_size %d must be at least 1",
                          vocab_size);
    if (!isfinite(params->temperature) || !isfinite(params->top_p))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "sampler: temperature %g and top_p %g must be finite",
                          (double)params->temperature, (double)params->top_p);
    dsla_sampler_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error_oom("sampler");
    s->params = *params;
    s->vocab_size = vocab_size;
    s->probs = malloc((size_t)vocab_size * sizeof *s->probs);
    s->candidates = malloc((size_t)vocab_size * sizeof *s->candidates);
    if (!s->probs || !s->candidates) {
        dsla_sampler_destroy(&s);
        return dsla_error_oom("sampler: %d candidates", vocab_size);
    }
    dsla_sampler_reseed(s, params->seed);
    *out = s;
    return DSLA_OK;
}

void dsla_sampler_destroy(dsla_sampler_t **s) {
    if (!s || !*s) return;
    free((*s)->probs);
    free((*s)->candidates);
    free(*s);
    *s = NULL;
}

/* Most likely first; ties by lower id so the order (and the draw) does not depend on qsort. */
static int by_prob_desc(const void *a, const void *b) {
    const candidate_t *x = a, *y = b;
    if (x->prob != y->prob) return x->prob > y->prob ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Draws from the first n candidates in proportion to their prob (which need not sum to 1). */
static int32_t draw(dsla_sampler_t *s, const candidate_t *c, int n) {
    double mass = 0.0;
    for (int i = 0; i < n; i++)
        mass += c[i].prob;
    double r = uniform01(s->rng) * mass, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += c[i].prob;
        if (r < acc) return c[i].id;
    }
    return c[n - 1].id; /* r landed on the rounding slack at the top */
}

int32_t dsla_sampler_sample(dsla_sampler_t *s, const float *logits) {
    const dsla_sampler_params_t *p = &s->params;
    const int V = s->vocab_size;
    if (p->temperature <= 0.0f || p->top_k == 1) return dsla_cpu_argmax(logits, V);

    const float inv_t = 1.0f / p->temperature;
    for (int i = 0; i < V; i++)
        s->probs[i] = logits[i] * inv_t;
    dsla_cpu_softmax(s->probs, s->probs, 1, V);

    const bool use_top_k = p->top_k > 0 && p->top_k < V;
    const bool use_top_p = p->top_p > 0.0f && p->top_p < 1.0f;
    int n = 0;
    if (!use_top_k && use_top_p) {
        /* Without top-k, a token below (1 - top_p) / (V - 1) can never be inside the nucleus (the
         * tokens above it would already hold top_p), so skipping it before the sort is exact and
         * makes the sort short (llama2.c's trick). */
        const float cutoff = (1.0f - p->top_p) / (float)(V - 1);
        for (int i = 0; i < V; i++)
            if (s->probs[i] >= cutoff) s->candidates[n++] = (candidate_t){s->probs[i], i};
    } else {
        for (int i = 0; i < V; i++)
            s->candidates[n++] = (candidate_t){s->probs[i], i};
    }
    if (!use_top_k && !use_top_p) return draw(s, s->candidates, n);

    qsort(s->candidates, (size_t)n, sizeof *s->candidates, by_prob_desc);
    if (use_top_k && n > p->top_k) n = p->top_k;
    if (use_top_p) {
        /* The nucleus is measured against the mass top-p sees: the top-k survivors, or the whole
         * distribution (not just the prefiltered candidates). */
        double mass = 0.0, acc = 0.0;
        if (use_top_k)
            for (int i = 0; i < n; i++)
                mass += s->candidates[i].prob;
        else
            for (int i = 0; i < V; i++)
                mass += s->probs[i];
        int keep = n;
        for (int i = 0; i < n; i++) {
            acc += s->candidates[i].prob;
            if (acc >= p->top_p * mass) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    return draw(s, s->candidates, n);
}

void dsla_logprobs_compute(const float *logits, int vocab_size, int32_t token, int n_top,
                           dsla_token_logprobs_t *out) {
    double max = -INFINITY;
    for (int i = 0; i < vocab_size; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0;
    for (int i = 0; i < vocab_size; i++)
        sum += exp((double)logits[i] - max);
    const double lse = max + log(sum);
    out->logprob = (float)((double)logits[token] - lse);
    if (n_top < 0) n_top = 0;
    if (n_top > DSLA_LOGPROBS_TOP_MAX) n_top = DSLA_LOGPROBS_TOP_MAX;
    if (n_top > vocab_size) n_top = vocab_size;
    /* insertion into a short sorted list: n_top is at most 20 */
    int n = 0;
    for (int i = 0; i < vocab_size && n_top > 0; i++) {
        const float x = logits[i];
        if (n == n_top && !(x > logits[out->top_ids[n - 1]])) continue;
        int j = n < n_top ? n++ : n - 1;
        while (j > 0 && x > logits[out->top_ids[j - 1]]) {
            out->top_ids[j] = out->top_ids[j - 1];
            j--;
        }
        out->top_ids[j] = i;
    }
    out->n_top = n;
    for (int j = 0; j < n; j++)
        out->top_logprobs[j] = (float)((double)logits[out->top_ids[j]] - lse);
}

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
    bool adjusts;            /* a bias or penalty is on: logits are copied into adjusted first */
    float *adjusted;         /* [vocab] when adjusts */
    float *bias;             /* [vocab] when n_bias > 0 */
    int32_t *counts;         /* [vocab] generated counts, when a penalty is on */
    bool *seen;              /* [vocab] in the prompt or generated, with repetition_penalty */
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
    if (!(params->min_p >= 0.0f && params->min_p <= 1.0f) || !isfinite(params->presence_penalty) ||
        !isfinite(params->frequency_penalty) || !isfinite(params->repetition_penalty))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "sampler: min_p %g must be in [0, 1] and the penalties (%g, %g, %g) "
                          "finite",
                          (double)params->min_p, (double)params->presence_penalty,
                          (double)params->frequency_penalty, (double)params->repetition_penalty);
    for (int i = 0; i < params->n_bias; i++)
        if (params->bias_ids[i] < 0 || params->bias_ids[i] >= vocab_size ||
            !isfinite(params->bias_values[i]))
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "logit_bias: token %d is outside the vocabulary of %d (or its bias "
                              "is not finite)",
                              (int)params->bias_ids[i], vocab_size);
    dsla_sampler_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error_oom("sampler");
    s->params = *params;
    s->params.bias_ids = NULL;
    s->params.bias_values = NULL;
    s->vocab_size = vocab_size;
    s->probs = malloc((size_t)vocab_size * sizeof *s->probs);
    s->candidates = malloc((size_t)vocab_size * sizeof *s->candidates);
    const bool repetition = params->repetition_penalty > 0.0f && params->repetition_penalty != 1.0f;
    const bool penalties =
        repetition || params->presence_penalty != 0.0f || params->frequency_penalty != 0.0f;
    s->adjusts = penalties || params->n_bias > 0;
    bool ok = s->probs && s->candidates;
    if (ok && s->adjusts) ok = (s->adjusted = malloc((size_t)vocab_size * sizeof(float))) != NULL;
    if (ok && params->n_bias > 0) {
        ok = (s->bias = calloc((size_t)vocab_size, sizeof *s->bias)) != NULL;
        for (int i = 0; ok && i < params->n_bias; i++)
            s->bias[params->bias_ids[i]] += params->bias_values[i];
    }
    if (ok && penalties) ok = (s->counts = calloc((size_t)vocab_size, sizeof *s->counts)) != NULL;
    if (ok && repetition) ok = (s->seen = calloc((size_t)vocab_size, sizeof *s->seen)) != NULL;
    if (!ok) {
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
    free((*s)->adjusted);
    free((*s)->bias);
    free((*s)->counts);
    free((*s)->seen);
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

void dsla_sampler_observe(dsla_sampler_t *s, int32_t token, bool generated) {
    if (token < 0 || token >= s->vocab_size) return;
    if (s->seen) s->seen[token] = true;
    if (s->counts && generated) s->counts[token]++;
}

/* logits with the bias and the penalties applied, in s->adjusted. */
static const float *adjust(dsla_sampler_t *s, const float *logits) {
    const dsla_sampler_params_t *p = &s->params;
    float *a = s->adjusted;
    for (int i = 0; i < s->vocab_size; i++) {
        float x = logits[i] + (s->bias ? s->bias[i] : 0.0f);
        if (s->seen && s->seen[i])
            x = x > 0 ? x / p->repetition_penalty : x * p->repetition_penalty;
        if (s->counts && s->counts[i] > 0)
            x -= p->presence_penalty + p->frequency_penalty * (float)s->counts[i];
        a[i] = x;
    }
    return a;
}

/* min_p over the first n candidates, most likely first: those at least min_p times the first. */
static int min_p_keep(const dsla_sampler_t *s, const candidate_t *c, int n) {
    const float floor = s->params.min_p * c[0].prob;
    int keep = 1;
    while (keep < n && c[keep].prob >= floor)
        keep++;
    return keep;
}

int32_t dsla_sampler_sample(dsla_sampler_t *s, const float *logits) {
    const dsla_sampler_params_t *p = &s->params;
    const int V = s->vocab_size;
    if (s->adjusts) logits = adjust(s, logits);
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
    const bool use_min_p = p->min_p > 0.0f;
    if (!use_top_k && !use_top_p && !use_min_p) return draw(s, s->candidates, n);

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
    if (use_min_p) n = min_p_keep(s, s->candidates, n);
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

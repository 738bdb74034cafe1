/* Token sampling from one row of logits: greedy, temperature, top-k, top-p (nucleus), seeded.
 *
 * A sampler owns its random state (xoshiro256** seeded through splitmix64), so the same parameters,
 * seed and logits give the same tokens on any machine, and two requests never share a stream. The
 * filters apply in the order transformers uses: temperature, then top-k, then top-p over the
 * renormalised survivors. Stop tokens, stop strings and max tokens are the caller's business; this
 * module never looks at text. */
#ifndef DSLA_MODEL_SAMPLER_H
#define DSLA_MODEL_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/core/status.h"

typedef struct {
    float temperature; /* <= 0: greedy (argmax) */
    int top_k;         /* <= 0: off; 1 is greedy */
    float
        top_p; /* >= 1 (or <= 0): off; else keep the fewest most likely tokens with mass >= top_p */
    uint64_t seed;
    /* in [0, 1]; 0: off; else keep only tokens at least min_p times as likely as the likeliest
     * (after temperature, top-k and top-p) */
    float min_p;
    /* OpenAI's: each logit minus presence_penalty if the token was generated before and minus
     * frequency_penalty times how often; 0: off */
    float presence_penalty, frequency_penalty;
    /* HF's and vLLM's: the logit of a token seen in the prompt or the output divided by it when
     * positive, multiplied when negative; <= 0 or 1: off */
    float repetition_penalty;
    /* added to the logits of these tokens first (OpenAI's logit_bias); copied at create */
    const int32_t *bias_ids;
    const float *bias_values;
    int n_bias;
} dsla_sampler_params_t;

typedef struct dsla_sampler dsla_sampler_t;

/* INVALID_ARGUMENT for a non-finite temperature, top_p or penalty, min_p outside [0, 1], a biased
 * token outside the vocabulary, or vocab_size < 1. */
dsla_status_t dsla_sampler_create(dsla_sampler_t **out, const dsla_sampler_params_t *params,
                                  int vocab_size);
void dsla_sampler_destroy(dsla_sampler_t **s);

/* Samples a token id in [0, vocab_size) from logits[vocab_size] (not modified): logit_bias, then
 * the penalties, then temperature, top-k, top-p and min_p. */
int32_t dsla_sampler_sample(dsla_sampler_t *s, const float *logits);

/* Tells the penalties about a token: of the prompt (generated false: only the repetition penalty
 * sees it) or generated. A no-op when no penalty is on. */
void dsla_sampler_observe(dsla_sampler_t *s, int32_t token, bool generated);

/* Restarts the random stream from seed (the parameters stay). */
void dsla_sampler_reseed(dsla_sampler_t *s, uint64_t seed);

/* The most alternatives a token's logprobs list (OpenAI's top_logprobs limit of 20). */
#define DSLA_LOGPROBS_TOP_MAX 20

/* The log-probabilities of one position: of the token taken there, and of the n_top likeliest
 * tokens, likeliest first (ties by lower id). They are the log-softmax of the raw logits, before
 * temperature, top-k and top-p: the model's own distribution, as vLLM reports by default. */
typedef struct {
    float logprob;
    int n_top;
    int32_t top_ids[DSLA_LOGPROBS_TOP_MAX];
    float top_logprobs[DSLA_LOGPROBS_TOP_MAX];
} dsla_token_logprobs_t;

/* Fills *out for token (in [0, vocab_size)) from logits[vocab_size], with the n_top likeliest
 * (clamped to [0, min(DSLA_LOGPROBS_TOP_MAX, vocab_size)]). Computed in double, one pass for the
 * log-sum-exp and one for the top list: the same on every backend that hands rows to the host. */
void dsla_logprobs_compute(const float *logits, int vocab_size, int32_t token, int n_top,
                           dsla_token_logprobs_t *out);

#endif

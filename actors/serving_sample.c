/* Prompt sampling: choice, batch and rate cap (serving_sample.h). */
#include "actors/serving_sample.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/core/log.h"

struct dsla_serving_sample {
    dsla_serving_sample_config_t config;
    uint32_t tick_tokens, left; /* each interval's share of the cap, and what is left of it */
    uint64_t seen;
    int32_t *ids; /* DSLA_PROTO_SAMPLE_TOKENS_MAX */
    dsla_proto_prompt_samples_t batch;
};

dsla_status_t dsla_serving_sample_create(dsla_serving_sample_t **out,
                                         const dsla_serving_sample_config_t *config) {
    *out = NULL;
    if (config->every < 1 || config->tokens_per_s < 1 || config->flush_ms < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "serving: sampling 1 in %u prompts, %u tokens/s, every %u ms: each "
                          "must be at least 1",
                          config->every, config->tokens_per_s, config->flush_ms);
    dsla_serving_sample_t *s = calloc(1, sizeof *s);
    if (s) s->ids = malloc(DSLA_PROTO_SAMPLE_TOKENS_MAX * sizeof *s->ids);
    if (!s || !s->ids) {
        free(s);
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
    }
    s->config = *config;
    const uint64_t tick = (uint64_t)config->tokens_per_s * config->flush_ms / 1000;
    s->tick_tokens = tick < 1                              ? 1
                     : tick > DSLA_PROTO_SAMPLE_TOKENS_MAX ? DSLA_PROTO_SAMPLE_TOKENS_MAX
                                                           : (uint32_t)tick;
    s->left = s->tick_tokens;
    *out = s;
    return DSLA_OK;
}

void dsla_serving_sample_destroy(dsla_serving_sample_t **s) {
    if (!s || !*s) return;
    free((*s)->ids);
    free(*s);
    *s = NULL;
}

/* A mix of the seed and the arrival count: the choice does not follow a client's round-robin and
 * a seed repeats it. */
bool dsla_serving_sample_pick(dsla_serving_sample_t *s) {
    uint64_t x = (s->config.seed ^ s->seen++) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ull;
    return (x ^ (x >> 32)) % s->config.every == 0;
}

void dsla_serving_sample_add(dsla_serving_sample_t *s, const int32_t *ids, size_t n,
                             const char *text, size_t text_len) {
    int32_t *encoded = NULL;
    if (!ids) {
        const dsla_tokenizer_t *tok = s->config.tokenizer;
        if (!tok || dsla_tokenizer_encode(tok, text, text_len, dsla_tokenizer_add_bos_default(tok),
                                          &encoded, &n) != DSLA_OK)
            return;
        ids = encoded;
    }
    if (n > s->tick_tokens) n = s->tick_tokens;
    dsla_proto_prompt_samples_t *b = &s->batch;
    if (n == 0 || b->n_prompts == DSLA_PROTO_SAMPLES_MAX || n > s->left) {
        b->dropped += n > 0;
    } else {
        memcpy(s->ids + b->n_ids, ids, n * sizeof *ids);
        b->lens[b->n_prompts++] = (uint32_t)n;
        b->n_ids += (uint32_t)n;
        s->left -= (uint32_t)n;
    }
    free(encoded);
}

void dsla_serving_sample_flush(dsla_serving_sample_t *s, dsla_serving_sample_send_fn send,
                               void *user) {
    s->left = s->tick_tokens;
    dsla_proto_prompt_samples_t *b = &s->batch;
    if (b->n_prompts == 0) return;
    b->ids = s->ids;
    dsla_proto_buf_t body;
    if (dsla_proto_prompt_samples_encode(b, &body) != DSLA_OK ||
        send(user, body.data, body.len) != DSLA_OK)
        dsla_log_debug("serving: %u sampled prompts lost: %s", b->n_prompts, dsla_last_error());
    dsla_proto_buf_free(&body);
    memset(b, 0, sizeof *b);
}

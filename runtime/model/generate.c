#include "generate.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/core/clock.h"
#include "runtime/model/stop_strings.h"

const char *dsla_finish_reason_name(dsla_finish_reason_t reason) {
    switch (reason) {
    case DSLA_FINISH_LENGTH:
        return "length";
    case DSLA_FINISH_STOP:
        return "stop";
    case DSLA_FINISH_CANCELLED:
        return "cancelled";
    }
    return "?";
}

bool dsla_token_ends_stream(const dsla_model_config_t *cfg, const dsla_tokenizer_t *tokenizer,
                            int32_t id) {
    for (int i = 0; i < cfg->num_eos_token_ids; i++)
        if (cfg->eos_token_ids[i] == id) return true;
    return tokenizer && id == dsla_tokenizer_eos_id(tokenizer);
}

/* Everything one generation holds, so that every exit path frees it in one place. */
typedef struct {
    int32_t *prompt_ids;
    size_t n_prompt;
    dsla_kv_pool_t *pool;
    dsla_sequence_t *seq;
    dsla_sampler_t *sampler;
    dsla_detokenizer_t *detok;
    dsla_stop_matcher_t *stops;
    float *logits;
    int32_t *ids;
} generation_t;

static void generation_free(generation_t *g) {
    free(g->prompt_ids);
    dsla_sequence_destroy(&g->seq);
    dsla_kv_pool_destroy(&g->pool);
    dsla_sampler_destroy(&g->sampler);
    dsla_detokenizer_destroy(&g->detok);
    dsla_stop_matcher_destroy(&g->stops);
    free(g->logits);
    free(g->ids);
}

static dsla_status_t generation_setup(generation_t *g, dsla_model_t *model,
                                      const dsla_tokenizer_t *tok, const char *prompt,
                                      size_t prompt_len, const dsla_generate_params_t *p) {
    const dsla_model_config_t *cfg = dsla_model_config(model);
    DSLA_TRY(dsla_tokenizer_encode(tok, prompt, prompt_len, dsla_tokenizer_add_bos_default(tok),
                                   &g->prompt_ids, &g->n_prompt));
    if (g->n_prompt == 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "prompt is empty and the tokenizer has no BOS token to start from");
    long context = cfg->max_position_embeddings;
    if ((long)g->n_prompt >= context)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "prompt of %zu tokens leaves no room in the model's context of %ld",
                          g->n_prompt, context);
    if (p->max_tokens < 1 || p->max_tokens > context - (long)g->n_prompt)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "max_tokens %d exceeds the model's context of %ld minus the prompt's "
                          "%zu tokens",
                          p->max_tokens, context, g->n_prompt);
    long total = (long)g->n_prompt + p->max_tokens;
    long blocks_per_layer = dsla_kv_blocks_for(total);
    DSLA_TRY(dsla_kv_pool_create(&g->pool, cfg, (int)(blocks_per_layer * cfg->num_layers)));
    DSLA_TRY(dsla_sequence_create(&g->seq, g->pool, cfg));
    DSLA_TRY(dsla_sampler_create(&g->sampler, &p->sampling, cfg->vocab_size));
    DSLA_TRY(dsla_detokenizer_create(&g->detok, tok));
    DSLA_TRY(dsla_detokenizer_prime(g->detok, g->prompt_ids, g->n_prompt));
    DSLA_TRY(dsla_stop_matcher_create(&g->stops, p->stop, p->n_stop));
    g->logits = malloc((size_t)cfg->vocab_size * sizeof *g->logits);
    g->ids = malloc((size_t)p->max_tokens * sizeof *g->ids);
    if (!g->logits || !g->ids) return dsla_error_oom("generation buffers");
    return DSLA_OK;
}

/* Shows text through the stop matcher; true when generation must end (stop string or callback). */
static bool emit_text(generation_t *g, const char *piece, size_t len, dsla_text_callback_t on_text,
                      void *user, dsla_finish_reason_t *finish) {
    const char *out;
    size_t out_len;
    bool stopped = dsla_stop_matcher_feed(g->stops, piece, len, &out, &out_len);
    if (out_len && on_text && on_text(user, out, out_len)) {
        *finish = DSLA_FINISH_CANCELLED;
        return true;
    }
    if (stopped) *finish = DSLA_FINISH_STOP;
    return stopped;
}

dsla_status_t dsla_generate(dsla_model_t *model, const dsla_tokenizer_t *tokenizer,
                            const char *prompt, size_t prompt_len,
                            const dsla_generate_params_t *params, dsla_text_callback_t on_text,
                            void *user, dsla_generate_result_t *result) {
    memset(result, 0, sizeof *result);
    generation_t g = {0};
    dsla_status_t status = generation_setup(&g, model, tokenizer, prompt, prompt_len, params);
    if (status != DSLA_OK) goto done;
    const dsla_model_config_t *cfg = dsla_model_config(model);
    result->prompt_tokens = (int)g.n_prompt;

    double start = dsla_clock_seconds();
    dsla_batch_item_t item = {g.seq, g.prompt_ids, (int)g.n_prompt, false};
    status = dsla_model_forward(model, &item, 1, g.logits);
    if (status != DSLA_OK) goto done;
    double decode_start = dsla_clock_seconds();
    result->prefill_seconds = decode_start - start;

    dsla_finish_reason_t finish = DSLA_FINISH_LENGTH;
    bool ended = false;
    int n = 0;
    while (!ended && n < params->max_tokens) {
        int32_t id = dsla_sampler_sample(g.sampler, g.logits);
        if (!params->ignore_eos && dsla_token_ends_stream(cfg, tokenizer, id)) {
            finish = DSLA_FINISH_STOP;
            break;
        }
        g.ids[n++] = id;
        const char *piece;
        size_t len;
        status = dsla_detokenizer_push(g.detok, id, &piece, &len);
        if (status != DSLA_OK) goto done;
        ended = emit_text(&g, piece, len, on_text, user, &finish);
        if (ended || n == params->max_tokens) break;
        item = (dsla_batch_item_t){g.seq, &g.ids[n - 1], 1, false};
        status = dsla_model_forward(model, &item, 1, g.logits);
        if (status != DSLA_OK) goto done;
    }
    if (!ended) {
        const char *piece;
        size_t len;
        status = dsla_detokenizer_flush(g.detok, &piece, &len);
        if (status != DSLA_OK) goto done;
        if (!emit_text(&g, piece, len, on_text, user, &finish)) {
            dsla_stop_matcher_finish(g.stops, &piece, &len);
            if (len && on_text && on_text(user, piece, len)) finish = DSLA_FINISH_CANCELLED;
        }
    }
    result->decode_seconds = dsla_clock_seconds() - decode_start;
    result->completion_tokens = n;
    result->finish = finish;
    result->ids = g.ids;
    g.ids = NULL;
done:
    generation_free(&g);
    return status;
}

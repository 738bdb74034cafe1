/* Generation of one sequence from a text prompt: encode, prefill, sample, decode, stream text.
 *
 * This is the single-request path behind `dsla generate`; the serving engine (runtime/serve)
 * batches many requests with the same pieces (model forward, sampler, detokenizer, stop matcher).
 * Text reaches the callback as soon as it is complete UTF-8 and cannot be the start of a stop
 * string. Generation ends at an end-of-sequence token (never shown), a stop string (never shown),
 * max_tokens, the model's context, or when the callback asks to stop. It must not print: output
 * goes through the callback. */
#ifndef DSLA_MODEL_GENERATE_H
#define DSLA_MODEL_GENERATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/llama.h"
#include "runtime/model/sampler.h"
#include "runtime/model/tokenizer.h"

typedef enum {
    DSLA_FINISH_LENGTH = 0, /* max_tokens or the model's context */
    DSLA_FINISH_STOP,       /* an end-of-sequence token or a stop string */
    DSLA_FINISH_CANCELLED,  /* the callback returned non-zero */
} dsla_finish_reason_t;

const char *
dsla_finish_reason_name(dsla_finish_reason_t reason); /* "length", "stop", "cancelled" */

/* Whether id ends the stream: one of the config's eos_token_id list or the tokenizer's EOS
 * (tokenizer may be NULL). The one check dsla_generate and the serving engine share, so that a
 * model stops at the same token whichever path serves it. */
bool dsla_token_ends_stream(const dsla_model_config_t *cfg, const dsla_tokenizer_t *tokenizer,
                            int32_t id);

typedef struct {
    dsla_sampler_params_t sampling;
    int max_tokens;          /* new tokens at most; must fit the context after the prompt */
    const char *const *stop; /* stop strings (may be NULL) */
    int n_stop;
    bool ignore_eos; /* keep going past end-of-sequence tokens (benchmarks) */
} dsla_generate_params_t;

typedef struct {
    int prompt_tokens;
    int completion_tokens;
    double prefill_seconds;
    double decode_seconds;
    dsla_finish_reason_t finish;
    int32_t *ids; /* the generated ids (completion_tokens of them), malloc'd; caller frees */
} dsla_generate_result_t;

/* Receives each piece of text as it becomes final; return non-zero to stop generating. */
typedef int (*dsla_text_callback_t)(void *user, const char *piece, size_t len);

/* INVALID_ARGUMENT: invalid UTF-8 in the prompt (with the byte offset), an empty prompt for a
 * tokenizer without BOS, or max_tokens beyond the context left after the prompt (naming both). */
dsla_status_t dsla_generate(dsla_model_t *model, const dsla_tokenizer_t *tokenizer,
                            const char *prompt, size_t prompt_len,
                            const dsla_generate_params_t *params, dsla_text_callback_t on_text,
                            void *user, dsla_generate_result_t *result);

#endif

/* Llama-family model configuration, read from a Hugging Face config.json.
 *
 * Accepts model_type "llama" (and "mistral" without sliding window) / LlamaForCausalLM. RoPE theta
 * comes from `rope_theta` or `rope_parameters.rope_theta`; `rope_scaling` / `rope_parameters` of
 * type "default" or "llama3" (Llama-3.1 frequency scaling) are supported. Anything that would
 * change the maths and is not implemented (attention_bias, mlp_bias, other activations or rope
 * types, sliding windows) is a clear UNSUPPORTED error naming the key and value; harmless keys are
 * ignored. */
#ifndef DSLA_MODEL_CONFIG_H
#define DSLA_MODEL_CONFIG_H

#include <stdbool.h>

#include "runtime/core/status.h"

typedef enum {
    DSLA_ROPE_DEFAULT = 0,
    DSLA_ROPE_LLAMA3,
} dsla_rope_type_t;

typedef struct {
    int hidden_size; /* D */
    int num_layers;
    int num_heads;    /* H, query heads */
    int num_kv_heads; /* H_kv; H % H_kv == 0 */
    int head_dim;     /* d; defaults to D / H */
    int intermediate_size;
    int vocab_size;
    int max_position_embeddings;
    float rms_norm_eps;
    bool tie_word_embeddings;
    int bos_token_id;     /* -1 when absent */
    int eos_token_ids[8]; /* eos_token_id may be a list */
    int num_eos_token_ids;
    float rope_theta;
    dsla_rope_type_t rope_type;
    /* llama3 scaling parameters, valid when rope_type == DSLA_ROPE_LLAMA3 */
    float rope_factor;
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_original_max_position;
    char torch_dtype[16]; /* "float32", "bfloat16", "float16" as declared */
} dsla_model_config_t;

/* Parses a config.json file; on failure the message names the file and the key. */
dsla_status_t dsla_config_load(dsla_model_config_t *cfg, const char *path);
/* Parses config.json text already in memory (source names it in messages). */
dsla_status_t dsla_config_parse(dsla_model_config_t *cfg, const char *json, const char *source);
/* Checks internal consistency (positive sizes, H % H_kv, ...). Called by load and parse. */
dsla_status_t dsla_config_validate(const dsla_model_config_t *cfg, const char *source);
/* Llama-2-7B's shape (hidden 4096, 32 layers of 32 heads of 128, intermediate 11008, context 32768,
 * rope_theta 10000, BOS 1, no EOS) with vocab_size entries: the random models of
 * `dsla bench --device cuda` and `dsla-serve --random-model 7b`, no checkpoint being at hand. */
dsla_model_config_t dsla_model_config_llama2_7b(int vocab_size);
/* Writes config.json for cfg (used by `dsla import`). */
dsla_status_t dsla_config_save(const dsla_model_config_t *cfg, const char *path);

#endif

/* The Llama forward pass on the CPU: load a Hugging Face checkpoint, run batches of new tokens of
 * one or more sequences over their paged KV caches, return logits.
 *
 * Loading reads DIR/config.json and DIR's safetensors (one file or shards) and converts every
 * weight to float32. A forward pass concatenates the batch's tokens into one activation matrix for
 * the GEMMs, norms and MLP, and mixes tokens per sequence and per layer through a dispatch on the
 * sequence's layer kind (kv_cache.h): ATTN runs softmax attention over the sequence's KV blocks;
 * DSLA has no implementation yet and returns UNSUPPORTED.
 *
 * Contract: the model is immutable after load except for its scratch buffers, so one forward pass
 * runs at a time per model (the serving engine owns it from one thread). A failed forward pass
 * leaves every sequence's length and cached tokens unchanged. This module knows nothing of
 * tokenizers, sampling, requests or scheduling; it must not print. */
#ifndef DSLA_MODEL_LLAMA_H
#define DSLA_MODEL_LLAMA_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/config.h"
#include "runtime/model/kv_cache.h"

typedef struct dsla_model dsla_model_t;

/* One decoder layer's weights, float32, in the PyTorch Linear layout [out, in]. q, k and v rows are
 * stacked in one matrix so one GEMM projects all three; gate and up likewise. wq/wk/wv and
 * w_gate/w_up point into the stacked matrices (they are the checkpoint's q_proj, k_proj, ...
 * exactly). */
typedef struct {
    float *attn_norm; /* [D] input_layernorm */
    float *wqkv;      /* [(H + 2 H_kv) d, D] */
    float *wq;        /* [H d, D] */
    float *wk;        /* [H_kv d, D] */
    float *wv;        /* [H_kv d, D] */
    float *wo;        /* [D, H d] */
    float *mlp_norm;  /* [D] post_attention_layernorm */
    float *w_gate_up; /* [2 I, D] */
    float *w_gate;    /* [I, D] */
    float *w_up;      /* [I, D] */
    float *w_down;    /* [D, I] */
} dsla_llama_layer_t;

/* Loads DIR/config.json and the checkpoint in DIR. Errors name the file and the tensor (missing,
 * wrong shape, unsupported dtype). Unknown extra tensors are ignored. */
dsla_status_t dsla_model_load(dsla_model_t **out, const char *dir);
void dsla_model_destroy(dsla_model_t **m);

const dsla_model_config_t *dsla_model_config(const dsla_model_t *m);
/* Weights of one layer, for the DSLA initialisation and the distiller; NULL when out of range. */
const dsla_llama_layer_t *dsla_model_layer(const dsla_model_t *m, int layer);
const float *dsla_model_embeddings(const dsla_model_t *m); /* [V, D] */
const float *dsla_model_final_norm(const dsla_model_t *m); /* [D] */
const float *dsla_model_lm_head(const dsla_model_t *m);    /* [V, D]; the embeddings when tied */

/* One sequence's share of a batch: n_tokens new tokens at positions length..length+n_tokens-1.
 * want_all_logits: a logit row for every new token (prefill scoring), else only for the last. */
typedef struct {
    dsla_sequence_t *seq;
    const int32_t *tokens;
    int n_tokens;
    bool want_all_logits;
} dsla_batch_item_t;

/* Rows of logits a batch produces: sum over items of (want_all_logits ? n_tokens : 1). */
int dsla_batch_logit_rows(const dsla_batch_item_t *items, int n_items);

/* Runs the items' new tokens through the model, appends their keys and values to each sequence's
 * cache, and writes logits_out[rows][vocab] in item order. A sequence may appear once per batch.
 * INVALID_ARGUMENT: a token id outside the vocabulary, a context beyond max_position_embeddings, an
 * empty item. RESOURCE_EXHAUSTED: the KV pool cannot hold the new tokens (nothing changes). */
dsla_status_t dsla_model_forward(dsla_model_t *m, const dsla_batch_item_t *items, int n_items,
                                 float *logits_out);

#endif

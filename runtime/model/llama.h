/* The Llama forward pass on the CPU: load a Hugging Face checkpoint, run batches of new tokens of
 * one or more sequences over their paged KV caches, return logits.
 *
 * Loading reads DIR/config.json and DIR's safetensors (one file or shards) and converts every
 * weight to float32. A forward pass concatenates the batch's tokens into one activation matrix for
 * the GEMMs, norms and MLP, and mixes tokens per sequence and per layer through a dispatch on the
 * sequence's layer kind (kv_cache.h): ATTN runs softmax attention over the sequence's KV blocks;
 * DSLA runs a DSLA layer (dsla_layer.h, DESIGN.md section 4) over the sequence's fixed state slot,
 * with no RoPE. When the items of a batch run a layer with different kinds, the layer runs once
 * per kind over the gathered rows of its items, and the batch continues together (section 6's
 * per-layer sub-batching).
 *
 * DSLA path: a sequence's DSLA weights for layer l are the version it is pinned to
 * (dsla_sequence_create_pinned), else the layer the model has installed in slot l
 * (dsla_model_set_dsla_layer); a batch naming a DSLA layer with neither is INVALID_ARGUMENT. Items
 * that run the same weights share the projection GEMMs; each item's core then runs over its own
 * state: one new token takes the recurrent kernel, updating the state in place (decode); more take
 * the chunked kernel, from the state and back into it (prefill), so prefilling in one call, in
 * chunks or token by token gives the same result up to fp32 rounding.
 *
 * For the distiller, dsla_model_forward_capture also returns the residual stream entering each
 * layer (and leaving the last), and the entropy of the last query's attention row per layer.
 *
 * Contract: the model's weights are immutable after load; its scratch buffers and its installed
 * DSLA slots change, so one forward pass runs at a time per model (the serving engine owns it from
 * one thread). A failed forward pass leaves every sequence's length, cached tokens and DSLA states
 * unchanged: every check and allocation happens before the first layer runs. This module knows
 * nothing of tokenizers, sampling, requests or scheduling; it must not print. */
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
/* RoPE's inverse frequencies [head_dim / 2], as the forward pass's tables are built from them (the
 * distiller's logit term runs the later attention layers outside the forward pass). */
const float *dsla_model_inv_freq(const dsla_model_t *m);

/* The teacher checksum of DESIGN.md 5.5: xxh64 (seed 0) of all the model's weights as loaded into
 * float32, in this order: embeddings; per layer input_layernorm, q, k, v, o, post_attention_
 * layernorm, gate, up, down; the final norm; lm_head when untied. The whole model, not one layer,
 * because a DSLA layer is distilled on what every earlier layer feeds it. A bf16 checkpoint and its
 * exact float32 upcast hash alike. Reads every weight once: call it at start-up, not per step. */
uint64_t dsla_model_checksum(const dsla_model_t *m);

/* Installs w as the DSLA weights of layer for the sequences not pinned to their own. Borrowed: the
 * caller keeps w alive and unchanged while any forward pass may run it, and uninstalls it (NULL)
 * before destroying it. w must be made for that layer index and the model's shapes. Replacing the
 * slot changes what unpinned sequences run from their next token on: serving pins sequences
 * instead; the slot is for tools, tests and the distiller's hybrid. */
dsla_status_t dsla_model_set_dsla_layer(dsla_model_t *m, int layer, const dsla_dsla_layer_t *w);
/* The installed DSLA layer of layer; NULL when none (or out of range). */
const dsla_dsla_layer_t *dsla_model_dsla_layer(const dsla_model_t *m, int layer);

/* Batch invariance for serving: when on, every linear layer computes each token's row on its own
 * (a GEMV per row), so a sequence's logits are bitwise the same whatever shares its batch and
 * wherever it sits in it. Off (the default), the GEMMs run over the whole batch: faster for long
 * prefills, but rows round differently with the batch's shape, and greedy decoding can then flip
 * at near-ties (top-2 logits within ~1e-5). */
void dsla_model_set_batch_invariant(dsla_model_t *m, bool on);

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

/* What dsla_model_forward_capture records besides logits; every pointer may be NULL. Rows are the
 * batch's tokens in item order (item 0's n_tokens rows, then item 1's, ...). */
typedef struct {
    /* num_layers + 1 pointers: hidden[l] receives [rows, D], the residual stream entering layer l
     * (before its input RMSNorm), hidden[num_layers] the stream leaving the last layer (before
     * the final norm). A NULL entry skips that layer: the distiller asks only for the teacher's
     * output of layer l (hidden[l + 1]) and the hybrid's input to it (hidden[l]). */
    float *const *hidden;
    /* [n_items, num_layers]: for each item and ATTN layer, the entropy -sum p ln p of its last
     * token's attention row, averaged over the query heads (DESIGN.md 5.1); in [0, ln(context)].
     * NAN for layers the item runs as DSLA. */
    float *entropy;
    /* 0: run every layer. n > 0: stop after the first n layers, for capture passes that need
     * nothing later (the distiller's inputs to layer l need only layers 0..l-1). The sequences'
     * caches of the skipped layers are left unwritten, so such sequences serve no later pass; the
     * forward pass then requires logits_out == NULL and no entropy. */
    int layers_to_run;
} dsla_forward_capture_t;

/* dsla_model_forward with capture (NULL: none). logits_out may be NULL to skip the final norm and
 * the head (the distiller's teacher passes); the sequences advance either way. */
dsla_status_t dsla_model_forward_capture(dsla_model_t *m, const dsla_batch_item_t *items,
                                         int n_items, float *logits_out,
                                         const dsla_forward_capture_t *capture);

#endif

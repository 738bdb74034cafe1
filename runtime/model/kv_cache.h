/* Paged KV cache: a pool of fixed-size blocks and the sequences that hold them (DESIGN.md section
 * 6).
 *
 * The pool owns K and V storage for num_blocks blocks of DSLA_KV_BLOCK_TOKENS tokens, each token
 * kv_heads*head_dim floats (fp32, CPU). Blocks are not tied to a layer: a sequence keeps one block
 * table per layer, and only for the layers it runs as softmax attention, so a request whose plan
 * runs a layer as DSLA reserves no KV for it. A sequence's plan (one dsla_layer_kind_t per layer)
 * is fixed at creation, as a request is pinned to the plan current at its admission.
 *
 * For each layer it runs as DSLA, a sequence holds a fixed state slot instead: two fp32 states
 * [H, d, d] (history, recency), or one when the sequence is pinned to a single-state layer, zeroed
 * at creation and updated in place by the forward pass whatever the context length. A sequence
 * made with dsla_sequence_create_in_pool carves its slots out of the pool's blocks (the one arena
 * of kv_arena.h: a slot is a run of dsla_kv_pool_blocks_per_slot blocks, its history state over
 * their keys, its recency state over their values) and gives them back as KV when destroyed; the
 * other constructors allocate their states themselves.
 *
 * Which DSLA weights a sequence runs: a sequence made with dsla_sequence_create_pinned keeps, per
 * DSLA layer, a pointer to the layer version it was admitted with (the plan pinning of DESIGN.md
 * section 6), so a later plan change cannot alter a running request; one made with
 * dsla_sequence_create_planned runs whatever DSLA layer the model has installed at each forward
 * pass (dsla_model_set_dsla_layer, llama.h).
 *
 * Contract: the pool outlives every sequence created from it, and a pinned layer outlives every
 * sequence pinned to it; growing a sequence is all-or-nothing (dsla_sequence_reserve either finds
 * every block it needs or changes nothing). Neither object is thread-safe; the serving engine owns
 * them from one thread. This module computes nothing. */
#ifndef DSLA_MODEL_KV_CACHE_H
#define DSLA_MODEL_KV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/config.h"

/* 16 tokens: small enough that a sequence wastes at most 15 slots per layer, large enough that a
 * block table stays short and a block is a few contiguous KiB for the attention kernel. */
enum { DSLA_KV_BLOCK_TOKENS = 16 };

/* The blocks that hold tokens tokens: ceil(tokens / DSLA_KV_BLOCK_TOKENS), the one place that
 * rounds up, so that admission, the pools and the backends never disagree by a block. */
static inline int dsla_kv_blocks_for(long tokens) {
    return (int)((tokens + DSLA_KV_BLOCK_TOKENS - 1) / DSLA_KV_BLOCK_TOKENS);
}

/* How a sequence runs one layer's token mixing. */
typedef enum {
    DSLA_LAYER_ATTN = 0, /* softmax attention over the paged KV cache */
    DSLA_LAYER_DSLA,     /* dual-state linear attention (DESIGN.md section 4): a fixed-size state */
    DSLA_LAYER_KIND_COUNT,
} dsla_layer_kind_t;

typedef struct dsla_kv_pool dsla_kv_pool_t;
typedef struct dsla_sequence dsla_sequence_t;
typedef struct dsla_dsla_layer dsla_dsla_layer_t; /* dsla_layer.h */

dsla_status_t dsla_kv_pool_create(dsla_kv_pool_t **out, const dsla_model_config_t *cfg,
                                  int num_blocks);
void dsla_kv_pool_destroy(dsla_kv_pool_t **p);
/* Blocks neither KV nor in a state slot. */
int dsla_kv_pool_free_blocks(const dsla_kv_pool_t *p);
int dsla_kv_pool_num_blocks(const dsla_kv_pool_t *p);
/* State slots in the arena (kv_arena.h): blocks one takes, how many could be carved now, at most,
 * and in use. */
int dsla_kv_pool_blocks_per_slot(const dsla_kv_pool_t *p);
int dsla_kv_pool_free_slots(const dsla_kv_pool_t *p);
int dsla_kv_pool_max_slots(const dsla_kv_pool_t *p);
int dsla_kv_pool_slots_used(const dsla_kv_pool_t *p);
/* Floats per token slot: kv_heads * head_dim. */
int dsla_kv_pool_token_width(const dsla_kv_pool_t *p);
int dsla_kv_pool_num_layers(const dsla_kv_pool_t *p);
/* Base of the K (or V) storage: [num_blocks][DSLA_KV_BLOCK_TOKENS][token_width]. */
float *dsla_kv_pool_keys(dsla_kv_pool_t *p);
float *dsla_kv_pool_values(dsla_kv_pool_t *p);

/* A sequence running every layer as attention. */
dsla_status_t dsla_sequence_create(dsla_sequence_t **out, dsla_kv_pool_t *pool,
                                   const dsla_model_config_t *cfg);
/* A sequence with a plan: kinds[layer] for each of cfg->num_layers layers (NULL: all ATTN). */
dsla_status_t dsla_sequence_create_planned(dsla_sequence_t **out, dsla_kv_pool_t *pool,
                                           const dsla_model_config_t *cfg,
                                           const dsla_layer_kind_t *kinds);
/* A sequence pinned to DSLA layer versions: layers[l] (borrowed, non-NULL, shaped for cfg and made
 * for index l) for each layer that kinds runs as DSLA; entries for ATTN layers are ignored. A
 * single-state layer gets one state slot, others two. */
dsla_status_t dsla_sequence_create_pinned(dsla_sequence_t **out, dsla_kv_pool_t *pool,
                                          const dsla_model_config_t *cfg,
                                          const dsla_layer_kind_t *kinds,
                                          const dsla_dsla_layer_t *const *layers);
/* dsla_sequence_create_pinned (layers may be NULL: unpinned) with its DSLA states in state slots
 * carved from the pool, one per DSLA layer, all or none: RESOURCE_EXHAUSTED (naming the slots
 * needed and those that can be carved) when the pool is short. The serving engine's sequences. */
dsla_status_t dsla_sequence_create_in_pool(dsla_sequence_t **out, dsla_kv_pool_t *pool,
                                           const dsla_model_config_t *cfg,
                                           const dsla_layer_kind_t *kinds,
                                           const dsla_dsla_layer_t *const *layers);
/* Returns the sequence's blocks and slots to its pool, frees it and NULLs *s. */
void dsla_sequence_destroy(dsla_sequence_t **s);

int dsla_sequence_length(const dsla_sequence_t *s);
dsla_layer_kind_t dsla_sequence_layer_kind(const dsla_sequence_t *s, int layer);
dsla_kv_pool_t *dsla_sequence_pool(const dsla_sequence_t *s);
/* Blocks the sequence holds over all its layers. */
int dsla_sequence_num_blocks(const dsla_sequence_t *s);
/* Blocks that growing the sequence by n_tokens would take from the pool. */
int dsla_sequence_blocks_needed(const dsla_sequence_t *s, int n_tokens);

/* Makes room for n_tokens more tokens in every ATTN layer: all blocks or none. RESOURCE_EXHAUSTED
 * (naming needed and free) when the pool is short; the length does not change. */
dsla_status_t dsla_sequence_reserve(dsla_sequence_t *s, int n_tokens);
/* Returns blocks beyond those the current length needs (undoing a reserve whose forward pass did
 * not happen). */
void dsla_sequence_release_unused(dsla_sequence_t *s);
/* Records n_tokens more tokens as cached (after their K/V were written); they must be reserved. */
void dsla_sequence_advance(dsla_sequence_t *s, int n_tokens);

/* State slots of a layer: 0 for ATTN, 1 or 2 for DSLA. */
int dsla_sequence_dsla_states(const dsla_sequence_t *s, int layer);
/* State which (0: history, 1: recency) of a DSLA layer, [H, d, d] fp32, rows indexed by the key
 * channel; NULL when the layer has no such slot. */
float *dsla_sequence_dsla_state(dsla_sequence_t *s, int layer, int which);
/* The layer version the sequence is pinned to for layer; NULL when not pinned (or ATTN). */
const dsla_dsla_layer_t *dsla_sequence_dsla_layer(const dsla_sequence_t *s, int layer);
/* Bytes of DSLA state the sequence holds over all its layers (fixed for its lifetime). */
size_t dsla_sequence_state_bytes(const dsla_sequence_t *s);

/* One layer's cache view for the attention kernel; layer must be ATTN in the sequence's plan. */
const int32_t *dsla_sequence_block_table(const dsla_sequence_t *s, int layer);
/* Where position pos of layer keeps its key and value (reserved positions only). */
float *dsla_sequence_key_slot(dsla_sequence_t *s, int layer, int pos);
float *dsla_sequence_value_slot(dsla_sequence_t *s, int layer, int pos);

#endif

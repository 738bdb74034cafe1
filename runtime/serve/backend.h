/* Where the serving engine's sequences live and its forward passes run: the CPU model
 * (runtime/model/llama.h over a host arena) or the GPU model (runtime/model/llama_cuda.h over a
 * device arena). The scheduler (scheduler.c) is the same for both; only this interface differs.
 *
 * A backend owns one arena of kv_blocks DSLA_KV_BLOCK_TOKENS-token blocks, sized at creation,
 * that holds both the KV blocks of attention layers and the DSLA state slots of DSLA layers
 * (runtime/model/kv_arena.h: a slot is a run of blocks_per_slot blocks carved from free ones and
 * given back as KV when its sequence ends). A sequence is created under a frozen plan (it runs each
 * layer as the plan says, with the plan's DSLA layer versions, until destroyed), takes its state
 * slots at creation and grows only by forward passes. The engine asks free_blocks and free_slots
 * before it creates one, so that admission counts KV and states from the same arena.
 *
 * Contract: one thread; a failed forward pass changes no sequence; the backend's model is borrowed
 * and must outlive it; sequences must be destroyed before their backend. Backends never print and
 * know nothing of requests, tokenizers or sampling. */
#ifndef DSLA_SERVE_BACKEND_H
#define DSLA_SERVE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/config.h"
#include "runtime/model/llama.h"
#include "runtime/serve/plan.h"
#include "runtime/serve/step_stats.h"

typedef struct dsla_serve_backend dsla_serve_backend_t;
typedef struct dsla_serve_seq dsla_serve_seq_t; /* a backend's sequence, opaque to the engine */

/* One sequence's share of a forward pass: n_tokens new tokens (host memory). */
typedef struct {
    dsla_serve_seq_t *seq;
    const int32_t *tokens;
    int n_tokens;
    bool want_all_logits; /* a row for each of the n_tokens (prompt scoring), else the last only */
} dsla_serve_item_t;

typedef struct {
    void (*destroy)(dsla_serve_backend_t *b);
    /* A sequence with one state slot per DSLA layer of plan carved from the arena, all or none:
     * RESOURCE_EXHAUSTED when free_slots is short. */
    dsla_status_t (*seq_create)(dsla_serve_backend_t *b, const dsla_plan_t *plan,
                                dsla_serve_seq_t **out);
    void (*seq_destroy)(dsla_serve_backend_t *b, dsla_serve_seq_t *s);
    /* KV blocks that n_tokens more tokens would take from the pool. */
    int (*seq_blocks_needed)(const dsla_serve_backend_t *b, const dsla_serve_seq_t *s,
                             int n_tokens);
    /* Arena blocks neither KV nor in a slot. */
    int (*free_blocks)(const dsla_serve_backend_t *b);
    /* Slots that could be carved now (whole free runs of blocks_per_slot blocks), and in use. */
    int (*free_slots)(const dsla_serve_backend_t *b);
    int (*slots_used)(const dsla_serve_backend_t *b);
    /* Runs the items and writes their logit rows (vocab floats, host memory) in item order: one
     * per item, or n_tokens for an item that wants all (only when all_logits). */
    dsla_status_t (*forward)(dsla_serve_backend_t *b, const dsla_serve_item_t *items, int n_items,
                             float *logits);
} dsla_serve_backend_ops_t;

/* The part every backend shares; implementations embed it first. */
struct dsla_serve_backend {
    const dsla_serve_backend_ops_t *ops;
    const dsla_model_config_t *cfg;
    const char *name;    /* "cpu" or "cuda", for reports */
    int kv_blocks;       /* the arena's blocks, KV and slots together */
    int blocks_per_slot; /* blocks one DSLA state slot (2 H d d fp32) takes */
    int max_slots;       /* slots the arena holds at most: kv_blocks / blocks_per_slot */
    int max_context;     /* longest sequence the backend runs (prompt + output) */
    bool all_logits;     /* forward takes items that want a row for every token */
    int max_logit_rows;  /* rows one forward call returns at most; 0: no bound (the CPU's) */
    /* Step accounting (step_stats.h): the model's costs (set at creation), what the engine asks
     * the next forward call to time on the device, and what that call measured. */
    dsla_step_costs_t costs;
    dsla_step_timing_t timing;
    bool time_phases; /* split the device phases in the next call (it then runs no graph) */
    dsla_step_device_t measured;
};

/* The CPU model over a host arena of kv_blocks blocks; max_items bounds the items of one forward
 * pass. Sets the model's batch invariance (llama.h). */
dsla_status_t dsla_serve_backend_cpu_create(dsla_serve_backend_t **out, dsla_model_t *model,
                                            int kv_blocks, int max_items, bool batch_invariant);

/* Frees the backend (its sequences must be gone) and NULLs *b. */
void dsla_serve_backend_destroy(dsla_serve_backend_t **b);

#endif

/* The Llama forward pass on the GPU: a device copy of a model's weights (bf16 for serving, fp32 for
 * exactness tests), a device paged KV cache, batched forward passes over several sequences and
 * token selection on the device, all on one caller-provided CUDA stream.
 *
 * Same semantics as llama.h's dsla_model_forward: a batch names sequences and their new tokens (a
 * prompt, a chunk of one, or one decode token), appends their keys and values, and returns one
 * logit row per item (or per token with want_all_logits). A sequence has a plan, one
 * dsla_layer_kind_t per layer: ATTN layers keep 16-token blocks (DSLA_KV_BLOCK_TOKENS, the CPU's
 * layout) in the pool, DSLA layers a fixed pair of fp32 [H, d, d] states on the device and no KV at
 * all (DESIGN.md sections 4 and 6). A batch whose items all run one token is a decode step: it runs
 * as one captured CUDA graph per (batch size, context bucket, plan) when graphs are on, so the
 * ~10 launches per layer cost one launch.
 *
 * DSLA layers run through kernels_cuda_dsla.h: decode steps through its fused step, prompts through
 * its chunked form (token by token through the step for head dims the chunked kernel does not
 * take). Items of one batch may run a layer with different kinds (sequences admitted under
 * different plans): each layer takes its attention and DSLA items a run of consecutive items at a
 * time, and the MLP all rows at once (per-layer sub-batching, DESIGN.md section 6); such a mixed
 * decode step runs without a graph. The model holds one DSLA version a layer, which every item
 * running that layer as DSLA uses.
 *
 * Contract: weights are immutable after creation except the installed DSLA slots; one forward pass
 * runs at a time per model; everything is enqueued on the model's stream and the calls that return
 * host data synchronise it. A forward pass validates everything (token ids, lengths, capacities,
 * pool space, plans) before it changes anything. This module knows nothing of tokenizers,
 * requests or scheduling and must not print. Compiled only with DSLA_HAVE_CUDA. */
#ifndef DSLA_MODEL_LLAMA_CUDA_H
#define DSLA_MODEL_LLAMA_CUDA_H

#ifdef DSLA_HAVE_CUDA

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels_cuda.h"
#include "runtime/core/status.h"
#include "runtime/model/config.h"
#include "runtime/model/dsla_layer.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/llama.h"
#include "runtime/model/phase_timer_cuda.h"

typedef struct dsla_cuda_model dsla_cuda_model_t;
typedef struct dsla_cuda_kv dsla_cuda_kv_t;
typedef struct dsla_cuda_seq dsla_cuda_seq_t;

typedef struct {
    dsla_dtype_t weight_dtype; /* F32 (exact, for tests) or BF16 */
    int max_batch_tokens;      /* most new tokens in one forward pass (sizes the activations) */
    int max_logit_rows;        /* most logit rows one forward pass returns */
    int max_seqs;              /* most items in one batch */
    int max_context;           /* longest sequence the model will serve (<= the config's) */
    bool graphs; /* capture decode steps as CUDA graphs (never on the legacy NULL stream) */
} dsla_cuda_model_opts_t;

/* Uploads m's weights (converted to opts->weight_dtype; norms stay fp32). */
dsla_status_t dsla_cuda_model_create(dsla_cuda_model_t **out, const dsla_model_t *m,
                                     const dsla_cuda_model_opts_t *opts, dsla_cuda_stream_t stream);
/* A model of cfg's shape with weights drawn on the device, uniform in +-1/sqrt(fan_in) (norms 1),
 * from seed: for benchmarks of shapes no checkpoint is at hand for (Llama-2-7B: 13.5 GB). */
dsla_status_t dsla_cuda_model_create_random(dsla_cuda_model_t **out, const dsla_model_config_t *cfg,
                                            uint64_t seed, const dsla_cuda_model_opts_t *opts,
                                            dsla_cuda_stream_t stream);
void dsla_cuda_model_destroy(dsla_cuda_model_t **m);
const dsla_model_config_t *dsla_cuda_model_config(const dsla_cuda_model_t *m);
/* Bytes of device memory the weights take (DSLA slots included). */
size_t dsla_cuda_model_weight_bytes(const dsla_cuda_model_t *m);

/* Whether this build runs DSLA layers on the GPU for the model's head dim. */
bool dsla_cuda_model_dsla_supported(const dsla_cuda_model_t *m);
/* Uploads w as layer's DSLA weights (replacing any), or clears the slot with NULL. The upload is
 * ordered on the stream: later forward passes see it. UNSUPPORTED when the DSLA kernels are not
 * built for the model's head dim. */
dsla_status_t dsla_cuda_model_set_dsla_layer(dsla_cuda_model_t *m, int layer,
                                             const dsla_dsla_layer_t *w);
/* Random DSLA weights for layer (benchmarks), drawn as create_random draws. */
dsla_status_t dsla_cuda_model_set_dsla_random(dsla_cuda_model_t *m, int layer, uint64_t seed);

/* A device KV pool of num_blocks blocks for the model (dtype F32 or BF16), with room for max_seqs
 * live sequences. The model must outlive it, and it every sequence made from it. Its blocks are one
 * arena (kv_arena.h) for KV and DSLA state slots: a slot is a run of dsla_cuda_kv_blocks_per_slot
 * blocks, its history state over their keys and its recency state over their values, carved for a
 * sequence made with dsla_cuda_seq_create_in_pool and KV again when it is destroyed. */
dsla_status_t dsla_cuda_kv_create(dsla_cuda_kv_t **out, dsla_cuda_model_t *m, dsla_dtype_t dtype,
                                  int num_blocks, int max_seqs);
void dsla_cuda_kv_destroy(dsla_cuda_kv_t **kv);
/* Blocks neither KV nor in a state slot. */
int dsla_cuda_kv_free_blocks(const dsla_cuda_kv_t *kv);
/* State slots that could be carved now, in use, and at most. */
int dsla_cuda_kv_free_slots(const dsla_cuda_kv_t *kv);
int dsla_cuda_kv_slots_used(const dsla_cuda_kv_t *kv);
int dsla_cuda_kv_max_slots(const dsla_cuda_kv_t *kv);
/* Bytes one block takes (keys and values): a pool of n blocks takes n times this. */
size_t dsla_cuda_kv_block_bytes(const dsla_cuda_model_t *m, dsla_dtype_t dtype);
/* Blocks one state slot (2 H d d fp32) takes in a pool of dtype: ceil(slot bytes / block bytes). */
int dsla_cuda_kv_blocks_per_slot(const dsla_cuda_model_t *m, dsla_dtype_t dtype);

/* A sequence with a plan (kinds: num_layers entries, NULL for all ATTN); its DSLA states start at
 * zero. RESOURCE_EXHAUSTED when the pool's sequence slots are taken. */
dsla_status_t dsla_cuda_seq_create(dsla_cuda_seq_t **out, dsla_cuda_kv_t *kv,
                                   const dsla_layer_kind_t *kinds);
/* dsla_cuda_seq_create with its DSLA states in slots carved from the pool's arena (the serving
 * engine's sequences), one per DSLA layer, all or none: RESOURCE_EXHAUSTED when they cannot be
 * carved. They are zeroed here on the stream. */
dsla_status_t dsla_cuda_seq_create_in_pool(dsla_cuda_seq_t **out, dsla_cuda_kv_t *kv,
                                           const dsla_layer_kind_t *kinds);
/* Returns its blocks, state slots and sequence slot to the pool, frees it, NULLs *s. */
void dsla_cuda_seq_destroy(dsla_cuda_seq_t **s);
int dsla_cuda_seq_length(const dsla_cuda_seq_t *s);
/* Benchmarks: makes the sequence n_tokens long without running them, its KV blocks and DSLA states
 * filled with random values (so a decode step at context n_tokens can be timed without a prefill
 * first). The sequence must be empty. */
dsla_status_t dsla_cuda_seq_fill_synthetic(dsla_cuda_seq_t *s, int n_tokens, uint64_t seed);

typedef struct {
    dsla_cuda_seq_t *seq;
    const int32_t *tokens; /* host memory */
    int n_tokens;
    bool want_all_logits;
} dsla_cuda_batch_item_t;

/* Runs the batch and leaves its logits (dsla_batch_logit_rows rows, item order) on the device.
 * logits_host, when not NULL, receives a copy (rows x vocab floats) and the call synchronises.
 * INVALID_ARGUMENT: an empty item, a token outside the vocabulary, a context beyond max_context,
 * a repeated sequence, more tokens, rows or items than the options allow, a DSLA layer with no
 * weights installed. RESOURCE_EXHAUSTED: the pool cannot hold the new tokens (nothing changes).
 * UNSUPPORTED: items running one layer with different kinds. */
dsla_status_t dsla_cuda_model_forward(dsla_cuda_model_t *m, const dsla_cuda_batch_item_t *items,
                                      int n_items, float *logits_host);
/* The last forward pass's logits on the device ([rows, vocab] fp32). */
const float *dsla_cuda_model_logits(const dsla_cuda_model_t *m);

/* Picks one token per row of the last forward pass's logits on the device (params: host array of
 * rows entries, kernels_cuda.h's semantics: greedy rows take the argmax) and copies them to
 * tokens_host; synchronises. Unless every row is greedy, at most max_seqs rows (the sampler's
 * workspace; INVALID_ARGUMENT beyond). */
dsla_status_t dsla_cuda_model_sample(dsla_cuda_model_t *m, const dsla_cuda_sample_row_t *params,
                                     int rows, int32_t *tokens_host);

/* Distillation's hook (runtime/distill/distill_cuda.c): every later prompt forward pass (never a
 * decode graph) copies the residual stream entering layer l into hidden[l] (device memory, rows x
 * hidden_size fp32, the batch's tokens in item order), for each l in 0..num_layers whose entry is
 * not NULL (hidden[num_layers]: after the last layer run), and runs only the first layers_to_run
 * layers (0: all; fewer leave the logits without meaning). hidden NULL turns it off. The pointers
 * are kept, not the array. */
dsla_status_t dsla_cuda_model_set_capture(dsla_cuda_model_t *m, float *const *hidden,
                                          int layers_to_run);

/* Counters for benchmarks and tests: decode steps run through a graph replay, graphs captured,
 * whether capture failed (graphs are then off for the model's lifetime), and prefill attention
 * layers run through cuDNN. */
typedef struct {
    long graph_replays;
    long graph_captures;
    bool graphs_disabled;
    long cudnn_prefills; /* layers whose prefill attention ran through cuDNN */
} dsla_cuda_model_stats_t;
dsla_cuda_model_stats_t dsla_cuda_model_stats(const dsla_cuda_model_t *m);
/* Turns decode graphs on or off (benchmarks measure both). */
void dsla_cuda_model_set_graphs(dsla_cuda_model_t *m, bool on);

/* Device timing of the next forward passes, for step accounting (phase_timer_cuda.h): OFF; SPAN,
 * two events around each pass (graphs stay on); PHASES, events between its GEMMs, attention, DSLA
 * and other kernels (such a pass runs eagerly, without a graph). */
typedef enum {
    DSLA_CUDA_TIMING_OFF,
    DSLA_CUDA_TIMING_SPAN,
    DSLA_CUDA_TIMING_PHASES
} dsla_cuda_timing_t;
dsla_status_t dsla_cuda_model_set_timing(dsla_cuda_model_t *m, dsla_cuda_timing_t timing);
/* What the last forward pass measured, once it returned logits to the host: its device seconds
 * and, under PHASES, seconds per dsla_cuda_phase_t (phase_s[DSLA_CUDA_PHASES]). False when
 * nothing was measured. */
bool dsla_cuda_model_last_timing(dsla_cuda_model_t *m, double *device_s, double *phase_s,
                                 bool *split);

/* In a step that is not all decodes, consecutive one-token items run their attention and DSLA
 * layers as one batched decode call (on, the default) or one call per item (off: the version
 * before, kept for benchmarks and the test that compares the two). */
void dsla_cuda_model_set_decode_runs(dsla_cuda_model_t *m, bool on);

#endif /* DSLA_HAVE_CUDA */

#endif

/* The GPU backend of the serving engine (backend.h): dsla_cuda_model_forward (llama_cuda.h) over a
 * device KV pool allocated once at creation, whose blocks are one arena for the KV of attention
 * layers and the DSLA state slots of DSLA layers (llama_cuda.h, kv_arena.h).
 *
 * Plans: llama_cuda runs items of different plans in one forward pass (per-layer runs of each
 * kind) but holds one set of DSLA weights per layer. So a step's items go into one pass as long as
 * their plans agree on the version of every layer that more than one of them runs as DSLA (the
 * engine shares equal versions between plans, so the plans of a conversion and its reversion all
 * agree); a plan pinned to another version of such a layer waits for a second pass. Before a
 * plan's items join a pass, any version it is pinned to that the model does not hold is uploaded
 * (dsla_cuda_model_set_dsla_layer, which also drops the captured decode graphs). Pinning is
 * therefore exact, and costs a second pass per step (and uploads) only while requests pinned to
 * different versions of one layer run at once. A failure in a later pass leaves the earlier
 * passes' sequences advanced: callers treat a failed GPU forward pass as fatal for the engine.
 *
 * Logits come back to the host (one row per item, or one per token for an item that wants all:
 * prompt logprobs) and are sampled there by the engine's samplers, so sampling, stops and seeds
 * behave exactly as on the CPU. A call returns at most max_logit_rows rows, the size of the model's
 * device logits (rows x vocab fp32) and of the engine's host copy: a deployment takes the engine's
 * dsla_engine_logit_rows (max_running plus one scoring chunk, engine.h), so that echo with logprobs
 * works however long the prompt while memory stays bounded. Compiled only with DSLA_HAVE_CUDA. */
#ifndef DSLA_SERVE_BACKEND_CUDA_H
#define DSLA_SERVE_BACKEND_CUDA_H

#ifdef DSLA_HAVE_CUDA

#include "runtime/model/llama_cuda.h"
#include "runtime/serve/backend.h"

typedef struct {
    dsla_dtype_t kv_dtype; /* BF16 for serving, F32 for exactness tests */
    int kv_blocks;         /* the arena: KV blocks and state slots together */
    /* Sequences alive at once and items per forward pass (the engine's max_running); the model
     * must have been made with max_seqs and max_logit_rows at least this, and max_batch_tokens at
     * least the engine's step_tokens. */
    int max_seqs;
    int max_context; /* longest sequence; at most the model's max_context */
    /* Logit rows one forward call returns at most: the model's max_logit_rows, which must be at
     * least this. 0: max_seqs (one row per item), which leaves prompt logprobs refused by the
     * engine unless its dsla_engine_logit_rows fits. */
    int max_logit_rows;
} dsla_serve_cuda_opts_t;

/* Bytes of one state's data (2 H d d fp32); in the arena a slot takes
 * dsla_cuda_kv_blocks_per_slot blocks of dsla_cuda_kv_block_bytes. */
size_t dsla_serve_cuda_slot_bytes(const dsla_model_config_t *cfg);

/* model is borrowed and must outlive the backend. */
dsla_status_t dsla_serve_backend_cuda_create(dsla_serve_backend_t **out, dsla_cuda_model_t *model,
                                             const dsla_serve_cuda_opts_t *opts);

/* A deployment: the backend owns a device copy of a host model and its own stream, and sizes its
 * pools from the device's free memory (what `dsla-serve --device cuda` runs). */
typedef struct {
    dsla_dtype_t weight_dtype; /* BF16 to serve (KV bf16 too); F32 for exact comparisons (KV f32) */
    int max_running;           /* the engine's max_running (sequences and items per pass) */
    int step_tokens;           /* the engine's step_tokens (sizes the activations) */
    int max_context;           /* longest sequence; 0: the model's max_position_embeddings */
    size_t margin_bytes;       /* device memory left out of the pools */
    /* Logit rows a step returns at most: the engine's dsla_engine_logit_rows, so that it takes
     * echo with logprobs; 0: max_running (one row per item, prompt logprobs refused). The model's
     * device logits take this times the vocabulary in fp32, before the arena is sized. */
    int max_logit_rows;
} dsla_serve_cuda_deploy_t;

/* What a deployment got, for the operator's log line. */
typedef struct {
    char device[128];
    size_t weight_bytes, kv_block_bytes, slot_bytes; /* slot_bytes: blocks_per_slot blocks */
    int kv_blocks, blocks_per_slot, max_context;
    int max_logit_rows; /* rows of fp32 logits a step returns at most (device and host) */
} dsla_serve_cuda_deployed_t;

/* Uploads model's weights (model stays the caller's), then gives the arena the free memory less
 * margin_bytes, nothing set aside for states: at most enough blocks for max_running sequences
 * whose every layer holds a full context of KV or a state slot, whichever is larger.
 * RESOURCE_EXHAUSTED when not one full context fits. info may be NULL. Destroying the backend
 * frees the device model and stream too. */
dsla_status_t dsla_serve_backend_cuda_deploy(dsla_serve_backend_t **out, const dsla_model_t *model,
                                             const dsla_serve_cuda_deploy_t *d,
                                             dsla_serve_cuda_deployed_t *info);

/* dsla_serve_backend_cuda_deploy of a model of cfg's shape whose weights are drawn on the device
 * from seed (dsla_cuda_model_create_random): serving shapes no checkpoint is at hand for. */
dsla_status_t dsla_serve_backend_cuda_deploy_random(dsla_serve_backend_t **out,
                                                    const dsla_model_config_t *cfg, uint64_t seed,
                                                    const dsla_serve_cuda_deploy_t *d,
                                                    dsla_serve_cuda_deployed_t *info);

/* For benchmarks whose DSLA weights were drawn on the device (dsla_cuda_model_set_dsla_random):
 * declares that the model already holds, for every DSLA layer of plan, that layer's version in
 * plan, so no upload happens for it (such versions may carry no host weights at all). The backend
 * keeps a reference to plan. */
dsla_status_t dsla_serve_backend_cuda_adopt_plan(dsla_serve_backend_t *b, dsla_plan_t *plan);

#endif /* DSLA_HAVE_CUDA */

#include "runtime/serve/engine.h"

/* Untimed warm-up of an engine on this backend: one short prompt per cuDNN row bucket up to chunk,
 * and one per bucket of a second chunk after a whole first one (each bucket's plan takes 50-80 ms
 * to build once), stepped until idle, so that serving or a benchmark does not build plans inside
 * its first requests. Outputs are discarded; the engine's counters include these requests. From the
 * thread that steps the engine. DSLA_OK and nothing done in a build without CUDA. */
dsla_status_t dsla_serve_cuda_warmup(dsla_engine_t *e, int vocab, int chunk, int context);

#endif

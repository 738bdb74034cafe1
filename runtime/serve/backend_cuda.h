/* The GPU backend of the serving engine (backend.h): dsla_cuda_model_forward (llama_cuda.h) over a
 * device KV pool and a device state pool, both allocated once at creation.
 *
 * Plans: llama_cuda runs every item of one forward pass with the same kind per layer, and holds
 * one set of DSLA weights per layer. So a step's items are grouped by plan (same kinds and the same
 * DSLA layer versions) and each group runs as its own forward pass; before a group runs, any layer
 * version it is pinned to that the model does not hold is uploaded (dsla_cuda_model_set_dsla_layer,
 * which also drops the captured decode graphs). Pinning is therefore exact, and costs a second
 * pass per step (and uploads, when versions differ) only while requests of several plans run at
 * once. A failure in a later group leaves the earlier groups' sequences advanced: callers treat a
 * failed GPU forward pass as fatal for the engine.
 *
 * Logits come back to the host (one row per item) and are sampled there by the engine's samplers,
 * so sampling, stops and seeds behave exactly as on the CPU. Compiled only with DSLA_HAVE_CUDA. */
#ifndef DSLA_SERVE_BACKEND_CUDA_H
#define DSLA_SERVE_BACKEND_CUDA_H

#ifdef DSLA_HAVE_CUDA

#include "runtime/model/llama_cuda.h"
#include "runtime/serve/backend.h"

typedef struct {
    dsla_dtype_t kv_dtype; /* BF16 for serving, F32 for exactness tests */
    int kv_blocks;
    int state_slots;
    /* Sequences alive at once and items per forward pass (the engine's max_running); the model
     * must have been made with max_seqs and max_logit_rows at least this, and max_batch_tokens at
     * least the engine's step_tokens. */
    int max_seqs;
    int max_context; /* longest sequence; at most the model's max_context */
} dsla_serve_cuda_opts_t;

/* Bytes of one state slot (2 H d d fp32), for sizing pools (a KV block: dsla_cuda_kv_block_bytes).
 */
size_t dsla_serve_cuda_slot_bytes(const dsla_model_config_t *cfg);

/* model is borrowed and must outlive the backend. */
dsla_status_t dsla_serve_backend_cuda_create(dsla_serve_backend_t **out, dsla_cuda_model_t *model,
                                             const dsla_serve_cuda_opts_t *opts);

/* For benchmarks whose DSLA weights were drawn on the device (dsla_cuda_model_set_dsla_random):
 * declares that the model already holds, for every DSLA layer of plan, that layer's version in
 * plan, so no upload happens for it (such versions may carry no host weights at all). The backend
 * keeps a reference to plan. */
dsla_status_t dsla_serve_backend_cuda_adopt_plan(dsla_serve_backend_t *b, dsla_plan_t *plan);

#endif /* DSLA_HAVE_CUDA */

#endif

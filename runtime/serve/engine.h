/* The serving engine (DESIGN.md section 6): continuous batching of many requests over one hybrid
 * model, with chunked prefill, plan pinning, preemption by recomputation and streaming.
 *
 * The caller drives it one step at a time from one thread: dsla_engine_submit and
 * dsla_engine_cancel between steps (or from a callback), dsla_engine_step to run one scheduler
 * iteration (admit, run one batched forward pass, sample, stream). Callbacks run inside step and
 * cancel (never inside submit), on the caller's thread. The engine starts no threads, never sleeps
 * and never blocks: a serving actor, the bench and the tests are its loops.
 *
 * Memory is decided at creation: one arena of blocks (runtime/model/kv_arena.h) holds the paged KV
 * of the layers requests run as attention and the DSLA state slots of the others, carved from free
 * blocks as needed, plus bounded queues. The arena belongs to the backend (backend.h) that runs the
 * forward passes: the CPU model by default, or the GPU model (backend_cuda.h) through
 * dsla_engine_create_on; the scheduling is the same on both. A request is admitted when the running
 * set, the step's token budget and the arena allow: the KV blocks of its whole prefill in the
 * current plan's attention layers plus one state slot per DSLA layer, so capacity follows the plan
 * mix. It is pinned to that plan until it ends.
 * dsla_engine_set_plan changes the plan new admissions take from the next step on. When a running
 * request needs KV blocks that are not free, the scheduler preempts requests of the oldest plan
 * (the latest admitted among them first): their blocks and slots return at once, and they go back
 * to the front of the queue to recompute prompt and generated tokens under the newest plan. Text
 * already streamed is never streamed again, and the detokenizer, stop matcher and sampler carry
 * on where they were, so a client sees one uninterrupted stream.
 *
 * Determinism: a request's prefill is cut into chunks at the same positions whatever else runs
 * (prefill_chunk tokens from its start), and with batch_invariant (the default) every row of the
 * forward pass is computed alone, so a request's tokens under a seed do not depend on which
 * requests share its steps. Recomputation after preemption is the exception: it prefills what was
 * decoded token by token, equal only up to fp32 rounding (docs/serving.md).
 *
 * This module knows nothing of sockets, messages or actors, and must not print. */
#ifndef DSLA_SERVE_ENGINE_H
#define DSLA_SERVE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/generate.h"
#include "runtime/model/llama.h"
#include "runtime/model/sampler.h"
#include "runtime/model/tokenizer.h"
#include "runtime/serve/backend.h"
#include "runtime/serve/metrics.h"
#include "runtime/serve/plan.h"

typedef struct dsla_engine dsla_engine_t;

/* The default KV pool's ceiling (K and V together): 1 GiB keeps a default CPU engine modest
 * whatever the model; deployments size the pool with kv_blocks. */
#define DSLA_ENGINE_DEFAULT_KV_BYTES ((size_t)1 << 30)

/* A clock in seconds; monotonic. The bench passes a virtual one. */
typedef double (*dsla_clock_fn)(void *user);

typedef struct {
    int max_running;   /* sequences admitted at once; default 64 */
    int step_tokens;   /* tokens one step runs (decode + prefill); default 512 */
    int prefill_chunk; /* prefill tokens of one request per step; default 256 */
    /* Prompt tokens of one request per step while its prompt logprobs are computed (echo with
     * logprobs: a logit row per token), at most prefill_chunk; default DSLA_ENGINE_SCORE_CHUNK.
     * A step's rows beyond one per item are at most this too, so its logits stay within
     * dsla_engine_logit_rows rows whatever the prompts. */
    int score_chunk;
    int kv_blocks;  /* arena size in blocks of DSLA_KV_BLOCK_TOKENS (KV and states); 0: default */
    int max_queued; /* waiting requests at most; default 4096 */
    long max_queued_tokens; /* prompt tokens waiting at most; default 2097152 */
    /* A request still waiting for its first admission this long after submission ends with
     * RESOURCE_EXHAUSTED naming the bound (checked at each step); 0: no time bound. Default
     * 30000. Preempted requests, which have streamed already, never expire. */
    long max_queue_wait_ms;
    /* Each sequence's logits bitwise independent of its batch (dsla_model_set_batch_invariant,
     * which the engine sets on its model): greedy outputs then never depend on load; default on */
    bool batch_invariant;
    dsla_clock_fn clock; /* NULL: CLOCK_MONOTONIC */
    void *clock_user;
    /* Step accounting (step_stats.h): what the device times beyond host clocks (default HOST:
     * nothing), every how many steps PHASES splits the device phases (0 or 1: every step), and
     * the device's rates for the floor (zeros: no floor). */
    dsla_step_timing_t step_timing;
    int step_phase_every;
    dsla_step_rates_t step_rates;
} dsla_engine_config_t;

/* The defaults above. kv_blocks 0 becomes enough blocks for max_running full contexts over every
 * layer, capped at DSLA_ENGINE_DEFAULT_KV_BYTES of K and V. */
dsla_engine_config_t dsla_engine_config_default(void);
/* A GPU's prefill is GEMM-bound from ~1K rows: its default chunk is larger. */
#define DSLA_ENGINE_GPU_PREFILL_CHUNK 2048
/* The defaults for the device the engine steps on: dsla_engine_config_default, with
 * DSLA_ENGINE_GPU_PREFILL_CHUNK on a GPU. */
dsla_engine_config_t dsla_engine_config_for(bool gpu);
/* The default scoring chunk: 512 rows of fp32 logits are 64 MiB at a 32K vocabulary (256 MiB at
 * Llama 3's 128K), where a GPU's 2048-token prefill chunk would hold four times that on the device
 * and again on the host; 512-row prefill GEMMs still run near a GPU's rate. */
#define DSLA_ENGINE_SCORE_CHUNK 512
/* The most logit rows one step of an engine of config c returns: one per running sequence plus
 * one scoring chunk (min(score_chunk, prefill_chunk)) beyond those. A backend that returns fewer
 * (backend.h max_logit_rows) refuses prompt logprobs. */
int dsla_engine_logit_rows(const dsla_engine_config_t *c);
/* After max_running or prefill_chunk changed: raises step_tokens so that one step holds a whole
 * prefill chunk beside a decode token for every running sequence. */
void dsla_engine_config_fit(dsla_engine_config_t *c);

/* What a request has used, in every event. */
typedef struct {
    int prompt_tokens;
    int completion_tokens;
    int preemptions;  /* times it was preempted and recomputed */
    uint64_t plan_id; /* the plan it runs under now (0 while waiting) */
} dsla_usage_t;

/* One streamed event: a generated token with the text it makes safe to show, and/or the end. */
typedef struct {
    uint64_t request_id;
    int32_t token;    /* the new token, or -1 on a final event that carries none */
    const char *text; /* text now final (valid during the callback; not NUL-terminated) */
    size_t text_len;
    bool finished;
    dsla_finish_reason_t finish; /* when finished and status is OK */
    dsla_status_t status;        /* OK, or why the engine gave up on the request */
    /* When finished and status is not OK: the engine's sentence for it, naming the field, the
     * limit and the value, for the client unchanged (valid during the callback); unset on other
     * events */
    const char *message;
    dsla_usage_t usage;
    /* The log-probabilities of token's position (sampler.h) when the request asked for them and
     * token is not -1 (valid during the callback); NULL otherwise */
    const dsla_token_logprobs_t *logprobs;
    /* With prompt_logprobs, once (in the request's first event): the prompt's ids and, for each
     * position from 1 on, the logprobs of its token given the ones before (n_prompt - 1 of them;
     * position 0 has none). Valid during the callback; NULL otherwise. */
    const int32_t *prompt_ids;
    const dsla_token_logprobs_t *prompt_logprobs;
    int n_prompt;
} dsla_stream_event_t;

/* Return non-zero to cancel the request (a final event with reason "cancelled" follows). */
typedef int (*dsla_stream_fn)(void *user, const dsla_stream_event_t *event);

typedef struct {
    /* The prompt: token ids (copied), or, when prompt_ids is NULL, UTF-8 text encoded with the
     * tokenizer's default BOS. */
    const int32_t *prompt_ids;
    int n_prompt_ids;
    const char *prompt_text;
    size_t prompt_text_len;
    dsla_sampler_params_t sampling;
    int max_tokens;          /* >= 1; must fit the context after the prompt */
    const char *const *stop; /* stop strings (copied) */
    int n_stop;
    bool ignore_eos;
    /* Each generated token's log-probability in its event, with the top_logprobs likeliest
     * alternatives (0 to DSLA_LOGPROBS_TOP_MAX): the raw model distribution, before temperature,
     * top-k and top-p (dsla_logprobs_compute) */
    bool logprobs;
    int top_logprobs;
    /* The prompt's logprobs too (echo), with top_logprobs alternatives: the prefill then computes
     * a logit row per prompt token, in chunks of score_chunk tokens. Needs a backend with
     * all_logits whose max_logit_rows holds dsla_engine_logit_rows (the CPU's; the GPU's deployed
     * with it, backend_cuda.h); INVALID_ARGUMENT naming the backend and the rows otherwise. */
    bool prompt_logprobs;
    dsla_stream_fn on_event;
    void *user;
} dsla_request_params_t;

/* The model and tokenizer are borrowed and must outlive the engine; the engine runs the model's
 * forward pass and nobody else may while it lives. Starts with an all-attention plan (id 1). */
dsla_status_t dsla_engine_create(dsla_engine_t **out, dsla_model_t *model,
                                 const dsla_tokenizer_t *tokenizer,
                                 const dsla_engine_config_t *config);
/* The engine over another backend (backend.h, backend_cuda.h): borrowed, it must outlive the
 * engine and serve no other. Its arena replaces config's kv_blocks, and its
 * max_context bounds prompt plus max_tokens; batch_invariant is the backend's business. tokenizer
 * may be NULL (benchmarks of random-weight models): requests then give token ids, events carry no
 * text, stop strings are refused and only the model's EOS ids end a request. */
dsla_status_t dsla_engine_create_on(dsla_engine_t **out, dsla_serve_backend_t *backend,
                                    const dsla_tokenizer_t *tokenizer,
                                    const dsla_engine_config_t *config);
/* Drops every request without events and frees everything. */
void dsla_engine_destroy(dsla_engine_t **e);

/* Queues a request and returns its id (> 0). INVALID_ARGUMENT: an empty prompt, a token outside
 * the vocabulary, max_tokens beyond the context left after the prompt, a request whose KV blocks
 * and state slots could not fit the arena even alone, bad sampling parameters or stop strings.
 * RESOURCE_EXHAUSTED, at once: the queue holds max_queued requests, or the prompt would take the
 * waiting prompt tokens past max_queued_tokens. Both name the limit and the value. Within those
 * bounds a request waits for room, up to max_queue_wait_ms (dsla_engine_step ends it after). */
dsla_status_t dsla_engine_submit(dsla_engine_t *e, const dsla_request_params_t *params,
                                 uint64_t *id_out);
/* Ends a waiting or running request now: its KV blocks and state slots return before this
 * returns (or, when called from a callback, when the step that runs it ends), and a final event
 * with reason "cancelled" is streamed. NOT_FOUND for an unknown or finished id. */
dsla_status_t dsla_engine_cancel(dsla_engine_t *e, uint64_t id);

/* Installs a frozen copy of plan (sharing its layer versions) for the requests admitted from the
 * next step on, numbered with the engine's next plan id; the caller's plan stays its own.
 * INVALID_ARGUMENT for a plan with another number of layers or a DSLA layer shaped for another
 * model. */
dsla_status_t dsla_engine_set_plan(dsla_engine_t *e, const dsla_plan_t *plan);
/* The plan new requests get, with its id (borrowed; valid until the next set_plan). */
const dsla_plan_t *dsla_engine_plan(const dsla_engine_t *e);

/* One scheduler iteration: apply a pending plan, end the requests that waited beyond
 * max_queue_wait_ms, admit, preempt if short of KV blocks, run one
 * forward pass over every scheduled request, sample, stream. *progressed (may be NULL) is false
 * when there was nothing to run. A failed forward pass is returned and changes no request. */
dsla_status_t dsla_engine_step(dsla_engine_t *e, bool *progressed);
/* True when no request waits or runs. */
bool dsla_engine_idle(const dsla_engine_t *e);

void dsla_engine_metrics(const dsla_engine_t *e, dsla_engine_metrics_t *out);
/* The accounting of the last step that ran a forward pass (step_stats.h); false before the first.
 */
bool dsla_engine_last_step(const dsla_engine_t *e, dsla_step_record_t *out);

#endif

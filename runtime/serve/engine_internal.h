/* The engine's private state, shared by engine.c (requests, submission, cancellation, plans,
 * metrics) and scheduler.c (one step: admission, preemption, the batched forward pass, sampling).
 * Nothing outside runtime/serve includes it. */
#ifndef DSLA_SERVE_ENGINE_INTERNAL_H
#define DSLA_SERVE_ENGINE_INTERNAL_H

#include "runtime/model/kv_cache.h"
#include "runtime/model/stop_strings.h"
#include "runtime/serve/backend.h"
#include "runtime/serve/engine.h"

typedef struct request request_t;

/* One request from submission to its final event. tokens[] holds the prompt and then every
 * generated token; the sequence has computed the first n_computed of them. A waiting request has
 * no sequence (so no blocks or state slots) and no plan; admission gives it both, preemption takes
 * them back. */
struct request {
    uint64_t id;
    request_t *prev, *next; /* the waiting list */
    bool running;
    int32_t *tokens; /* [n_prompt + max_tokens] */
    int n_prompt;
    int n_generated;
    int max_tokens;
    int n_computed;
    int prefill_end; /* tokens known at admission: the prefill (or recomputation) */
    bool ignore_eos;
    bool logprobs;            /* lp is filled for each sampled token */
    int top_logprobs;         /* alternatives lp lists */
    dsla_token_logprobs_t lp; /* of the token sampled last */
    /* [n_prompt] with prompt_logprobs: entry p for prompt position p >= 1; filled up to
     * prompt_lp_done (exclusive) as prefill runs, handed over in the first event, then freed */
    dsla_token_logprobs_t *prompt_lp;
    int prompt_lp_done;
    dsla_sampler_t *sampler;
    dsla_detokenizer_t *detok;
    dsla_stop_matcher_t *stops;
    dsla_stream_fn on_event;
    void *user;
    dsla_plan_t *plan;
    dsla_serve_seq_t *seq; /* the backend's: its KV blocks and state slots */
    uint64_t admitted;     /* admission order: the latest admitted are preempted first */
    int preemptions;
    double t_submit;
    double t_last_token;  /* 0 before the first */
    bool queued_observed; /* its wait for the first admission went into the queue histogram */
    bool cancel_pending;  /* cancelled from a callback: ends when the step does */
    /* this step's share: n tokens taking need blocks, at item index item (-1: not scheduled) */
    int sched_item;
    int sched_tokens;
    int sched_blocks;
    char *text; /* the event's text, assembled from the detokenizer and the stop matcher */
    size_t text_len, text_cap;
};

struct dsla_engine {
    dsla_serve_backend_t *backend;
    bool owns_backend;
    const dsla_tokenizer_t *tokenizer;
    const dsla_model_config_t *mcfg;
    dsla_engine_config_t cfg;
    dsla_plan_t *plan;         /* new admissions take this one */
    dsla_plan_t *pending_plan; /* installed by set_plan, current from the next step */
    uint64_t last_plan_id;
    request_t *wait_head, *wait_tail;
    int n_waiting;
    long waiting_tokens;
    request_t **running; /* [max_running] in admission order */
    int n_running;
    uint64_t last_id;
    uint64_t last_admitted;
    bool in_step;
    bool cancels_pending;
    /* per-step scratch, sized for max_running items */
    dsla_serve_item_t *items;
    request_t **item_req;
    request_t **order;
    float *logits;     /* [logit_rows, vocab] */
    size_t logit_rows; /* rows logits holds: max_running, up to dsla_engine_logit_rows */
    int score_chunk;   /* min(cfg.score_chunk, prefill_chunk): a scoring request's chunk */
    int32_t *sampled;  /* [max_running] this step's tokens, by item */
    dsla_step_item_t *acct_items; /* [max_running] this step's items, for the accounting */
    dsla_step_record_t last_step; /* the last step that ran a forward pass */
    dsla_engine_metrics_t m;
    double rate_time[DSLA_METRICS_RATE_STEPS];
    uint64_t rate_tokens[DSLA_METRICS_RATE_STEPS];
};

double dsla_engine_now(const dsla_engine_t *e);
/* Tokens the request's sequence must hold before its next sample: prompt and generated. */
int dsla_request_total(const request_t *r);
/* Puts the prompt's logprobs into ev when the request asked for them, all are computed and none
 * went out yet. */
void dsla_request_prompt_logprobs(request_t *r, dsla_stream_event_t *ev);
/* Streams the final event (token -1 unless given, text from r->text) and frees the request and
 * everything it holds; it must already be off the waiting list and the running set. */
void dsla_request_finish(dsla_engine_t *e, request_t *r, int32_t token, dsla_finish_reason_t reason,
                         dsla_status_t status);
/* Takes r off the running set, keeping the order of the others. */
void dsla_engine_running_remove(dsla_engine_t *e, request_t *r);
void dsla_engine_waiting_push_front(dsla_engine_t *e, request_t *r);
void dsla_engine_waiting_remove(dsla_engine_t *e, request_t *r);
/* Returns the sequence's blocks and slots to the arena, and the plan reference. */
void dsla_request_release_memory(dsla_engine_t *e, request_t *r);
/* Ends the requests cancelled from callbacks during the step. */
void dsla_engine_run_pending_cancels(dsla_engine_t *e);

#endif

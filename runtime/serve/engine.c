/* The serving engine's requests, submission, cancellation, plans and metrics; one step of
 * scheduling lives in scheduler.c. */
#include "runtime/serve/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/core/clock.h"
#include "runtime/core/log.h"
#include "runtime/serve/engine_internal.h"

/* Defaults of dsla_engine_config_t: a batch wide enough to keep a CPU or GPU busy on decode, a step
 * budget that lets two prefill chunks share a step with the decodes, and a queue that holds what a
 * user would rather wait for than be refused. The queue's real bound is the time: a request not
 * admitted within 30 s ends RESOURCE_EXHAUSTED, about when a user gives up anyway. The count and
 * token bounds only cap memory, sized for tens of seconds of work at capacity on a GPU (an H200
 * serving a 7B model at 2x its production rate refused 15% of requests when the queue held 256):
 * 4096 requests is over a minute of arrivals at 50 requests/s, and 2M prompt tokens (8 MiB of ids)
 * is about 30 s of prefill at 70K tokens/s; a CPU engine stays within them by the time bound. */
enum {
    DEFAULT_MAX_RUNNING = 64,
    DEFAULT_STEP_TOKENS = 512,
    DEFAULT_PREFILL_CHUNK = 256,
    DEFAULT_MAX_QUEUED = 4096,
    DEFAULT_MAX_QUEUED_TOKENS = 2 << 20,
    DEFAULT_MAX_QUEUE_WAIT_MS = 30000,
};

dsla_engine_config_t dsla_engine_config_default(void) {
    return (dsla_engine_config_t){
        .max_running = DEFAULT_MAX_RUNNING,
        .step_tokens = DEFAULT_STEP_TOKENS,
        .prefill_chunk = DEFAULT_PREFILL_CHUNK,
        .score_chunk = DSLA_ENGINE_SCORE_CHUNK,
        .max_queued = DEFAULT_MAX_QUEUED,
        .max_queued_tokens = DEFAULT_MAX_QUEUED_TOKENS,
        .max_queue_wait_ms = DEFAULT_MAX_QUEUE_WAIT_MS,
        .batch_invariant = true,
    };
}

dsla_engine_config_t dsla_engine_config_for(bool gpu) {
    dsla_engine_config_t c = dsla_engine_config_default();
    if (gpu) c.prefill_chunk = DSLA_ENGINE_GPU_PREFILL_CHUNK;
    return c;
}

/* score_chunk 0 (a config not made by dsla_engine_config_default) takes the default. */
static int score_chunk_of(const dsla_engine_config_t *c) {
    const int sc = c->score_chunk > 0 ? c->score_chunk : DSLA_ENGINE_SCORE_CHUNK;
    return sc < c->prefill_chunk ? sc : c->prefill_chunk;
}

int dsla_engine_logit_rows(const dsla_engine_config_t *c) {
    return c->max_running + score_chunk_of(c);
}

void dsla_engine_config_fit(dsla_engine_config_t *c) {
    if (c->step_tokens < c->prefill_chunk + c->max_running)
        c->step_tokens = c->prefill_chunk + c->max_running;
}

static double monotonic_seconds(void *user) {
    (void)user;
    return dsla_clock_seconds();
}

double dsla_engine_now(const dsla_engine_t *e) {
    return e->cfg.clock(e->cfg.clock_user);
}

static dsla_status_t check_config(const dsla_engine_config_t *c) {
    if (c->max_running < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "engine: max_running %d must be at least 1",
                          c->max_running);
    if (c->step_tokens < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "engine: step_tokens %d must be at least 1",
                          c->step_tokens);
    if (c->prefill_chunk < 1 || c->prefill_chunk > c->step_tokens)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "engine: prefill_chunk %d must be 1..step_tokens (%d)", c->prefill_chunk,
                          c->step_tokens);
    if (c->kv_blocks < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "engine: kv_blocks %d must not be negative",
                          c->kv_blocks);
    if (c->score_chunk < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "engine: score_chunk %d must not be negative (0: the default)",
                          c->score_chunk);
    if (c->max_queued < 1 || c->max_queued_tokens < 1 || c->max_queue_wait_ms < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "engine: max_queued %d and max_queued_tokens %ld must be at least 1, "
                          "max_queue_wait_ms %ld at least 0",
                          c->max_queued, c->max_queued_tokens, c->max_queue_wait_ms);
    if (c->step_timing < DSLA_STEP_TIMING_HOST || c->step_timing > DSLA_STEP_TIMING_PHASES ||
        c->step_phase_every < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "engine: step_timing %d must be 0..2 and step_phase_every %d >= 0",
                          (int)c->step_timing, c->step_phase_every);
    return DSLA_OK;
}

/* kv_blocks 0: max_running full contexts over every layer, capped at the default byte budget. */
static int default_kv_blocks(const dsla_model_config_t *mc, int max_running) {
    size_t per_seq =
        (size_t)mc->num_layers * (size_t)dsla_kv_blocks_for(mc->max_position_embeddings);
    size_t block_bytes =
        2 * DSLA_KV_BLOCK_TOKENS * (size_t)mc->num_kv_heads * (size_t)mc->head_dim * sizeof(float);
    size_t blocks = per_seq * (size_t)max_running;
    size_t cap = DSLA_ENGINE_DEFAULT_KV_BYTES / block_bytes;
    if (blocks > cap) blocks = cap;
    if (blocks < per_seq) blocks = per_seq;
    return blocks > (size_t)INT32_MAX ? INT32_MAX : (int)blocks;
}

/* Everything but the backend: the plan, the scratch, the counters. */
static dsla_status_t engine_init(dsla_engine_t *e) {
    const dsla_model_config_t *mc = e->mcfg;
    dsla_plan_t *all_attention = NULL;
    dsla_status_t s = dsla_plan_create(&all_attention, mc->num_layers);
    if (s == DSLA_OK) s = dsla_plan_freeze_copy(&e->plan, all_attention, ++e->last_plan_id);
    dsla_plan_release(&all_attention);
    if (s != DSLA_OK) return s;
    const size_t n = (size_t)e->cfg.max_running;
    e->running = calloc(n, sizeof *e->running);
    e->items = calloc(n, sizeof *e->items);
    e->item_req = calloc(n, sizeof *e->item_req);
    e->order = calloc(n, sizeof *e->order);
    e->logits = malloc(n * (size_t)mc->vocab_size * sizeof *e->logits);
    e->logit_rows = n;
    e->sampled = calloc(n, sizeof *e->sampled);
    e->acct_items = calloc(n, sizeof *e->acct_items);
    if (!e->running || !e->items || !e->item_req || !e->order || !e->logits || !e->sampled ||
        !e->acct_items)
        return dsla_error_oom("engine: %d sequences", e->cfg.max_running);
    e->cfg.kv_blocks = e->backend->kv_blocks;
    e->score_chunk = score_chunk_of(&e->cfg);
    e->m.kv_blocks_total = e->cfg.kv_blocks;
    e->m.state_slots_total = e->backend->max_slots;
    e->m.blocks_per_slot = e->backend->blocks_per_slot;
    return DSLA_OK;
}

static dsla_status_t engine_new(dsla_engine_t **out, const dsla_engine_config_t *config,
                                dsla_engine_config_t *c) {
    *out = NULL;
    *c = config ? *config : dsla_engine_config_default();
    DSLA_TRY(check_config(c));
    if (!c->clock) c->clock = monotonic_seconds;
    *out = calloc(1, sizeof **out);
    if (!*out) return dsla_error_oom("engine");
    return DSLA_OK;
}

dsla_status_t dsla_engine_create(dsla_engine_t **out, dsla_model_t *model,
                                 const dsla_tokenizer_t *tokenizer,
                                 const dsla_engine_config_t *config) {
    dsla_engine_config_t c;
    dsla_engine_t *e = NULL;
    DSLA_TRY(engine_new(&e, config, &c));
    const dsla_model_config_t *mc = dsla_model_config(model);
    if (c.kv_blocks == 0) c.kv_blocks = default_kv_blocks(mc, c.max_running);
    e->tokenizer = tokenizer;
    e->mcfg = mc;
    e->cfg = c;
    e->owns_backend = true;
    dsla_status_t s = dsla_serve_backend_cpu_create(&e->backend, model, c.kv_blocks, c.max_running,
                                                    c.batch_invariant);
    if (s == DSLA_OK) s = engine_init(e);
    if (s != DSLA_OK) {
        dsla_engine_destroy(&e);
        return s;
    }
    *out = e;
    return DSLA_OK;
}

dsla_status_t dsla_engine_create_on(dsla_engine_t **out, dsla_serve_backend_t *backend,
                                    const dsla_tokenizer_t *tokenizer,
                                    const dsla_engine_config_t *config) {
    dsla_engine_config_t c;
    dsla_engine_t *e = NULL;
    DSLA_TRY(engine_new(&e, config, &c));
    e->backend = backend;
    e->tokenizer = tokenizer;
    e->mcfg = backend->cfg;
    e->cfg = c;
    dsla_status_t s = engine_init(e);
    if (s != DSLA_OK) {
        dsla_engine_destroy(&e);
        return s;
    }
    *out = e;
    return DSLA_OK;
}

static void request_free(dsla_engine_t *e, request_t **rp) {
    request_t *r = *rp;
    if (!r) return;
    dsla_request_release_memory(e, r);
    dsla_sampler_destroy(&r->sampler);
    dsla_detokenizer_destroy(&r->detok);
    dsla_stop_matcher_destroy(&r->stops);
    free(r->tokens);
    free(r->prompt_lp);
    free(r->text);
    free(r);
    *rp = NULL;
}

void dsla_engine_destroy(dsla_engine_t **ep) {
    if (!ep || !*ep) return;
    dsla_engine_t *e = *ep;
    while (e->wait_head) {
        request_t *r = e->wait_head;
        dsla_engine_waiting_remove(e, r);
        request_free(e, &r);
    }
    while (e->n_running > 0) {
        request_t *r = e->running[e->n_running - 1];
        dsla_engine_running_remove(e, r);
        request_free(e, &r);
    }
    dsla_plan_release(&e->plan);
    dsla_plan_release(&e->pending_plan);
    if (e->owns_backend) dsla_serve_backend_destroy(&e->backend);
    free(e->running);
    free(e->items);
    free(e->item_req);
    free(e->order);
    free(e->logits);
    free(e->sampled);
    free(e->acct_items);
    free(e);
    *ep = NULL;
}

/* ---- queues ---- */

int dsla_request_total(const request_t *r) {
    return r->n_prompt + r->n_generated;
}

static void waiting_push_back(dsla_engine_t *e, request_t *r) {
    r->prev = e->wait_tail;
    r->next = NULL;
    if (e->wait_tail)
        e->wait_tail->next = r;
    else
        e->wait_head = r;
    e->wait_tail = r;
    e->n_waiting++;
    e->waiting_tokens += dsla_request_total(r);
}

void dsla_engine_waiting_push_front(dsla_engine_t *e, request_t *r) {
    r->prev = NULL;
    r->next = e->wait_head;
    if (e->wait_head)
        e->wait_head->prev = r;
    else
        e->wait_tail = r;
    e->wait_head = r;
    e->n_waiting++;
    e->waiting_tokens += dsla_request_total(r);
}

void dsla_engine_waiting_remove(dsla_engine_t *e, request_t *r) {
    if (r->prev)
        r->prev->next = r->next;
    else
        e->wait_head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        e->wait_tail = r->prev;
    r->prev = r->next = NULL;
    e->n_waiting--;
    e->waiting_tokens -= dsla_request_total(r);
}

void dsla_engine_running_remove(dsla_engine_t *e, request_t *r) {
    int i = 0;
    while (i < e->n_running && e->running[i] != r)
        i++;
    if (i == e->n_running) return;
    memmove(&e->running[i], &e->running[i + 1],
            (size_t)(e->n_running - i - 1) * sizeof *e->running);
    e->n_running--;
    r->running = false;
}

void dsla_request_release_memory(dsla_engine_t *e, request_t *r) {
    if (r->seq) e->backend->ops->seq_destroy(e->backend, r->seq);
    r->seq = NULL;
    dsla_plan_release(&r->plan);
    r->n_computed = 0;
}

/* ---- events ---- */

static dsla_usage_t usage_of(const request_t *r) {
    return (dsla_usage_t){
        .prompt_tokens = r->n_prompt,
        .completion_tokens = r->n_generated,
        .preemptions = r->preemptions,
        .plan_id = r->plan ? dsla_plan_id(r->plan) : 0,
    };
}

void dsla_request_prompt_logprobs(request_t *r, dsla_stream_event_t *ev) {
    if (!r->prompt_lp || r->prompt_lp_done != r->n_prompt) return;
    ev->prompt_ids = r->tokens;
    ev->prompt_logprobs = r->prompt_lp;
    ev->n_prompt = r->n_prompt;
    r->prompt_lp_done = r->n_prompt + 1; /* handed over: never again */
}

void dsla_request_finish(dsla_engine_t *e, request_t *r, int32_t token, dsla_finish_reason_t reason,
                         dsla_status_t status) {
    /* The failure's message is this thread's last one; copied before anything can overwrite it. */
    char message[DSLA_ERROR_MESSAGE_MAX] = "";
    if (status != DSLA_OK) snprintf(message, sizeof message, "%s", dsla_last_error());
    dsla_stream_event_t ev = {
        .request_id = r->id,
        .token = token,
        .text = r->text ? r->text : "",
        .text_len = r->text_len,
        .finished = true,
        .finish = reason,
        .status = status,
        .message = message,
        .usage = usage_of(r),
        .logprobs = r->logprobs && token >= 0 ? &r->lp : NULL,
    };
    dsla_request_prompt_logprobs(r, &ev);
    e->m.requests_finished++;
    if (reason == DSLA_FINISH_CANCELLED) e->m.requests_cancelled++;
    if (status == DSLA_OK && reason != DSLA_FINISH_CANCELLED)
        dsla_histogram_observe(&e->m.e2e, dsla_engine_now(e) - r->t_submit);
    /* Memory first, so that a callback reading the metrics sees the request gone. */
    dsla_request_release_memory(e, r);
    if (r->on_event) r->on_event(r->user, &ev);
    request_free(e, &r);
}

/* ---- submission ---- */

static bool in_vocab(const dsla_model_config_t *mc, const int32_t *ids, int n, int *bad) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= mc->vocab_size) {
            *bad = i;
            return false;
        }
    return true;
}

static const dsla_plan_t *admission_plan(const dsla_engine_t *e) {
    return e->pending_plan ? e->pending_plan : e->plan;
}

const dsla_plan_t *dsla_engine_plan(const dsla_engine_t *e) {
    return admission_plan(e);
}

/* The prompt's ids into r (malloc'd with room for max_tokens more). */
static dsla_status_t take_prompt(dsla_engine_t *e, request_t *r, const dsla_request_params_t *p) {
    const dsla_model_config_t *mc = e->mcfg;
    int32_t *ids = NULL;
    size_t n = 0;
    if (p->prompt_ids) {
        if (p->n_prompt_ids < 1)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "request: the prompt has no tokens");
        n = (size_t)p->n_prompt_ids;
    } else {
        if (!p->prompt_text)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "request: no prompt ids or text");
        if (!e->tokenizer)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "request: a text prompt needs a tokenizer; this engine has none");
        DSLA_TRY(dsla_tokenizer_encode(e->tokenizer, p->prompt_text, p->prompt_text_len,
                                       dsla_tokenizer_add_bos_default(e->tokenizer), &ids, &n));
        if (n == 0) {
            free(ids);
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "request: the prompt is empty and the tokenizer has no BOS token");
        }
    }
    long context = e->backend->max_context;
    dsla_status_t s = DSLA_OK;
    if ((long)n >= context)
        s = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                       "request: a prompt of %zu tokens leaves no room in the model's context of "
                       "%ld",
                       n, context);
    else if (p->max_tokens < 1 || p->max_tokens > context - (long)n)
        s = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                       "max_tokens %d exceeds the model's context of %ld minus the prompt's %zu "
                       "tokens",
                       p->max_tokens, context, n);
    if (s == DSLA_OK) {
        r->tokens = malloc((n + (size_t)p->max_tokens) * sizeof *r->tokens);
        if (!r->tokens) s = dsla_error_oom("request");
    }
    if (s == DSLA_OK) {
        memcpy(r->tokens, p->prompt_ids ? p->prompt_ids : ids, n * sizeof *r->tokens);
        r->n_prompt = (int)n;
        int bad = 0;
        if (!in_vocab(mc, r->tokens, r->n_prompt, &bad))
            s = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                           "request: prompt token %d is id %d, outside the vocabulary of %d", bad,
                           (int)r->tokens[bad], mc->vocab_size);
    }
    free(ids);
    return s;
}

/* Whether the request could ever run alone under the plan new requests get: its KV blocks and
 * its state slots come from the one arena. */
static dsla_status_t check_fits(const dsla_engine_t *e, const request_t *r) {
    const dsla_plan_t *plan = admission_plan(e);
    const int dsla = dsla_plan_num_dsla(plan);
    int attn = dsla_plan_num_layers(plan) - dsla;
    long tokens = (long)r->n_prompt + r->max_tokens;
    long blocks = (long)attn * dsla_kv_blocks_for(tokens);
    long slot_blocks = (long)dsla * e->backend->blocks_per_slot;
    if (blocks + slot_blocks > e->cfg.kv_blocks)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "request: %ld tokens over %d attention layers need %ld KV blocks and %d "
                          "DSLA layers %ld blocks of state slots; the arena has %d",
                          tokens, attn, blocks, dsla, slot_blocks, e->cfg.kv_blocks);
    return DSLA_OK;
}

static dsla_status_t request_setup(dsla_engine_t *e, request_t *r, const dsla_request_params_t *p) {
    if (e->n_waiting >= e->cfg.max_queued)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "queue full: the queue holds %d requests (--max-queued %d)", e->n_waiting,
                          e->cfg.max_queued);
    DSLA_TRY(take_prompt(e, r, p));
    r->max_tokens = p->max_tokens;
    if (e->waiting_tokens + r->n_prompt > e->cfg.max_queued_tokens)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "queue full: the queue holds %ld prompt tokens and this prompt adds %d "
                          "(--max-queued-tokens %ld)",
                          e->waiting_tokens, r->n_prompt, e->cfg.max_queued_tokens);
    DSLA_TRY(check_fits(e, r));
    DSLA_TRY(dsla_sampler_create(&r->sampler, &p->sampling, e->mcfg->vocab_size));
    for (int i = 0; i < r->n_prompt; i++) /* the repetition penalty counts the prompt */
        dsla_sampler_observe(r->sampler, r->tokens[i], false);
    DSLA_TRY(dsla_stop_matcher_create(&r->stops, p->stop, p->n_stop));
    if (e->tokenizer) {
        DSLA_TRY(dsla_detokenizer_create(&r->detok, e->tokenizer));
        DSLA_TRY(dsla_detokenizer_prime(r->detok, r->tokens, (size_t)r->n_prompt));
    } else if (p->n_stop > 0) {
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "request: %d stop strings need a tokenizer; this engine has none",
                          p->n_stop);
    }
    if (p->logprobs && (p->top_logprobs < 0 || p->top_logprobs > DSLA_LOGPROBS_TOP_MAX))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "top_logprobs is %d; it must be in [0, %d]",
                          p->top_logprobs, DSLA_LOGPROBS_TOP_MAX);
    if (p->prompt_logprobs && !e->backend->all_logits)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "echo with logprobs: prompt logprobs need every position's logits, "
                          "which the %s backend does not return",
                          e->backend->name);
    const int rows = dsla_engine_logit_rows(&e->cfg);
    if (p->prompt_logprobs && e->backend->max_logit_rows > 0 && e->backend->max_logit_rows < rows)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "echo with logprobs: prompt logprobs need up to %d logit rows a step "
                          "(max_running %d plus a scoring chunk of %d), and the %s backend was "
                          "made for %d",
                          rows, e->cfg.max_running, e->score_chunk, e->backend->name,
                          e->backend->max_logit_rows);
    if (p->prompt_logprobs) {
        r->prompt_lp = calloc((size_t)r->n_prompt, sizeof *r->prompt_lp);
        if (!r->prompt_lp) return dsla_error_oom("request: prompt logprobs");
        r->prompt_lp_done = 1;
    }
    r->logprobs = p->logprobs || p->prompt_logprobs;
    r->top_logprobs = p->top_logprobs;
    r->ignore_eos = p->ignore_eos;
    r->on_event = p->on_event;
    r->user = p->user;
    r->sched_item = -1;
    return DSLA_OK;
}

dsla_status_t dsla_engine_submit(dsla_engine_t *e, const dsla_request_params_t *params,
                                 uint64_t *id_out) {
    if (id_out) *id_out = 0;
    request_t *r = calloc(1, sizeof *r);
    if (!r) return dsla_error_oom("request");
    dsla_status_t s = request_setup(e, r, params);
    if (s != DSLA_OK) {
        e->m.requests_rejected++;
        request_free(e, &r);
        return s;
    }
    r->id = ++e->last_id;
    r->t_submit = dsla_engine_now(e);
    waiting_push_back(e, r);
    e->m.requests_submitted++;
    if (id_out) *id_out = r->id;
    return DSLA_OK;
}

/* ---- cancellation ---- */

static request_t *find_request(const dsla_engine_t *e, uint64_t id) {
    for (int i = 0; i < e->n_running; i++)
        if (e->running[i]->id == id) return e->running[i];
    for (request_t *r = e->wait_head; r; r = r->next)
        if (r->id == id) return r;
    return NULL;
}

static void cancel_now(dsla_engine_t *e, request_t *r) {
    if (r->running)
        dsla_engine_running_remove(e, r);
    else
        dsla_engine_waiting_remove(e, r);
    r->text_len = 0;
    dsla_request_finish(e, r, -1, DSLA_FINISH_CANCELLED, DSLA_OK);
}

dsla_status_t dsla_engine_cancel(dsla_engine_t *e, uint64_t id) {
    request_t *r = find_request(e, id);
    if (!r || r->cancel_pending)
        return dsla_error(DSLA_ERR_NOT_FOUND, "cancel: no waiting or running request has id %llu",
                          (unsigned long long)id);
    if (e->in_step) {
        /* The step holds pointers to its requests: end this one when the step does. */
        r->cancel_pending = true;
        e->cancels_pending = true;
        return DSLA_OK;
    }
    cancel_now(e, r);
    return DSLA_OK;
}

void dsla_engine_run_pending_cancels(dsla_engine_t *e) {
    if (!e->cancels_pending) return;
    e->cancels_pending = false;
    for (;;) {
        request_t *found = NULL;
        for (int i = 0; i < e->n_running && !found; i++)
            if (e->running[i]->cancel_pending) found = e->running[i];
        for (request_t *r = e->wait_head; r && !found; r = r->next)
            if (r->cancel_pending) found = r;
        if (!found) return;
        cancel_now(e, found);
    }
}

/* ---- plans ---- */

/* Gives copy every loaded version of equal checksum that something still runs: the pending plan,
 * the current one, and the plans running requests are pinned to. The last matter after a revert:
 * when the load rises again, the controller re-sends versions that requests of the plan before the
 * revert still run, and without them a GPU would hold two copies of one layer and upload them in
 * turn at every mixed step. Every version alive is held by one of these. */
static dsla_status_t share_with_live_plans(dsla_engine_t *e, dsla_plan_t *copy, int *shared) {
    *shared = 0;
    int n = 0;
    DSLA_TRY(dsla_plan_share_versions(copy, e->pending_plan, &n));
    *shared += n;
    DSLA_TRY(dsla_plan_share_versions(copy, e->plan, &n));
    *shared += n;
    const dsla_plan_t *seen = e->plan;
    for (int i = 0; i < e->n_running; i++) {
        const dsla_plan_t *p = e->running[i]->plan;
        if (!p || p == seen || p == e->pending_plan) continue; /* runs of one plan: once */
        DSLA_TRY(dsla_plan_share_versions(copy, p, &n));
        *shared += n;
        seen = p;
    }
    return DSLA_OK;
}

dsla_status_t dsla_engine_set_plan(dsla_engine_t *e, const dsla_plan_t *plan) {
    const dsla_model_config_t *mc = e->mcfg;
    if (dsla_plan_num_layers(plan) != mc->num_layers)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "set plan: the plan has %d layers, the model %d",
                          dsla_plan_num_layers(plan), mc->num_layers);
    const dsla_dsla_layer_t *const *layers = dsla_plan_layers(plan);
    for (int l = 0; l < mc->num_layers; l++) {
        const dsla_dsla_layer_t *w = layers[l];
        if (w && (w->heads != mc->num_heads || w->head_dim != mc->head_dim ||
                  w->model_dim != mc->hidden_size))
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "set plan: layer %d's DSLA version has %d heads of %d over width "
                              "%d; the model has %d heads of %d over width %d",
                              l, w->heads, w->head_dim, w->model_dim, mc->num_heads, mc->head_dim,
                              mc->hidden_size);
    }
    dsla_plan_t *copy = NULL;
    DSLA_TRY(dsla_plan_freeze_copy(&copy, plan, e->last_plan_id + 1));
    int shared = 0;
    dsla_status_t st = share_with_live_plans(e, copy, &shared);
    if (st != DSLA_OK) {
        dsla_plan_release(&copy);
        return st;
    }
    if (shared)
        dsla_log_debug("engine: plan %llu shares %d layer versions with the plans before it",
                       (unsigned long long)(e->last_plan_id + 1), shared);
    e->last_plan_id++;
    dsla_plan_release(&e->pending_plan);
    e->pending_plan = copy;
    return DSLA_OK;
}

/* ---- metrics ---- */

bool dsla_engine_idle(const dsla_engine_t *e) {
    return e->n_waiting == 0 && e->n_running == 0;
}

void dsla_engine_metrics(const dsla_engine_t *e, dsla_engine_metrics_t *out) {
    *out = e->m;
    out->queue_length = e->n_waiting;
    out->waiting_prompt_tokens = e->waiting_tokens;
    out->running = e->n_running;
    out->state_slots_used = e->backend->ops->slots_used(e->backend);
    out->kv_blocks_used = e->cfg.kv_blocks - e->backend->ops->free_blocks(e->backend) -
                          out->state_slots_used * e->backend->blocks_per_slot;
    out->plan_id = dsla_plan_id(admission_plan(e));
}

bool dsla_engine_last_step(const dsla_engine_t *e, dsla_step_record_t *out) {
    *out = e->last_step;
    return e->last_step.step > 0;
}

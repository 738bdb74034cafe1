/* One engine step: schedule decodes, then prefill chunks, then admissions under the step's token
 * budget; preempt when KV blocks run short; run one batched forward pass; sample and stream.
 *
 * Order inside a step: running decodes first (one token each, so that time per output token stays
 * flat under load), then running prefills, then waiting requests in queue order. A request's
 * prefill advances by min(remaining, prefill_chunk) tokens or not at all: cutting it elsewhere to
 * fill the budget would make its numerics depend on its neighbours. Admission is FIFO (the head
 * blocks the queue, so nobody starves) and needs the KV blocks of the whole prefill plus one
 * token, so that an admitted request is not preempted at its first decode.
 *
 * Prompt scoring (echo with logprobs) takes a logit row per prompt token. A scoring request's
 * prompt is cut into score_chunk pieces instead (still from its start, whatever runs beside it),
 * and a step's rows beyond one per item are at most score_chunk: a scoring chunk that would pass
 * that waits for the next step, as one beyond the token budget does. So a step returns at most
 * max_running + score_chunk rows (dsla_engine_logit_rows), which sizes the engine's logits and a
 * GPU backend's device buffers, however long the prompts; the first scoring chunk of a step always
 * fits, so none starves. */
#include <stdlib.h>
#include <string.h>

#include "runtime/serve/engine_internal.h"

typedef struct {
    int budget; /* tokens left in this step */
    int blocks; /* KV blocks this step's items will take */
    int extra;  /* logit rows beyond one per item (scoring chunks), at most score_chunk */
    int n_items;
} step_plan_t;

/* Whether r's item computed from position n_computed needs a logit row per token: its prompt
 * logprobs are wanted and the chunk covers prompt positions not scored yet. */
static bool scores_from(const request_t *r, int n_computed) {
    return r->prompt_lp && r->prompt_lp_done < r->n_prompt && n_computed < r->n_prompt;
}

static bool scores_prompt(const request_t *r) {
    return scores_from(r, r->n_computed);
}

/* The tokens r's next item takes when computed from n_computed (remaining left): a prefill chunk,
 * or a scoring chunk while its prompt is scored. */
static int chunk_of(const dsla_engine_t *e, const request_t *r, int n_computed, int remaining) {
    const int chunk = scores_from(r, n_computed) ? e->score_chunk : e->cfg.prefill_chunk;
    return remaining < chunk ? remaining : chunk;
}

/* The rows beyond one that an item of n tokens of r adds (from n_computed). */
static int extra_rows(const request_t *r, int n_computed, int n) {
    return scores_from(r, n_computed) ? n - 1 : 0;
}

static int free_blocks(const dsla_engine_t *e, const step_plan_t *sp) {
    return e->backend->ops->free_blocks(e->backend) - sp->blocks;
}

static void schedule_item(dsla_engine_t *e, step_plan_t *sp, request_t *r, int n, int blocks) {
    r->sched_item = sp->n_items;
    r->sched_tokens = n;
    r->sched_blocks = blocks;
    e->item_req[sp->n_items++] = r;
    sp->budget -= n;
    sp->blocks += blocks;
    sp->extra += extra_rows(r, r->n_computed, n);
}

static void unschedule(dsla_engine_t *e, step_plan_t *sp, request_t *r) {
    int i = r->sched_item;
    memmove(&e->item_req[i], &e->item_req[i + 1],
            (size_t)(sp->n_items - i - 1) * sizeof *e->item_req);
    sp->n_items--;
    for (int j = i; j < sp->n_items; j++)
        e->item_req[j]->sched_item = j;
    sp->budget += r->sched_tokens;
    sp->blocks -= r->sched_blocks;
    sp->extra -= extra_rows(r, r->n_computed, r->sched_tokens);
    r->sched_item = -1;
}

/* The victim when r needs blocks: a running request of the oldest plan (DESIGN.md section 6:
 * those are the ones to move to the newest); among them one not yet scheduled in this step, then
 * the latest admitted. NULL when r runs alone. */
static bool better_victim(const request_t *c, const request_t *best) {
    uint64_t cp = dsla_plan_id(c->plan), bp = dsla_plan_id(best->plan);
    if (cp != bp) return cp < bp;
    bool c_sched = c->sched_item >= 0, b_sched = best->sched_item >= 0;
    if (c_sched != b_sched) return !c_sched;
    return c->admitted > best->admitted;
}

static request_t *pick_victim(const dsla_engine_t *e, const request_t *r) {
    request_t *best = NULL;
    for (int i = 0; i < e->n_running; i++) {
        request_t *c = e->running[i];
        if (c != r && (!best || better_victim(c, best))) best = c;
    }
    return best;
}

/* Frees v's blocks and slots now and queues it at the front to recompute under the newest plan. */
static void preempt(dsla_engine_t *e, step_plan_t *sp, request_t *v) {
    if (v->sched_item >= 0) unschedule(e, sp, v);
    dsla_engine_running_remove(e, v);
    dsla_request_release_memory(e, v);
    v->preemptions++;
    e->m.preemptions++;
    dsla_engine_waiting_push_front(e, v);
}

/* Schedules r's next tokens if the budget allows, preempting others for blocks. Returns false when
 * r itself cannot run at all (it is then finished with RESOURCE_EXHAUSTED). */
static bool schedule_running(dsla_engine_t *e, step_plan_t *sp, request_t *r) {
    int n = chunk_of(e, r, r->n_computed, dsla_request_total(r) - r->n_computed);
    if (n > sp->budget || sp->extra + extra_rows(r, r->n_computed, n) > e->score_chunk) return true;
    int need = e->backend->ops->seq_blocks_needed(e->backend, r->seq, n);
    while (need > free_blocks(e, sp)) {
        request_t *v = pick_victim(e, r);
        if (!v) break;
        preempt(e, sp, v);
    }
    if (need > free_blocks(e, sp)) {
        dsla_engine_running_remove(e, r);
        r->text_len = 0;
        dsla_request_finish(e, r, -1, DSLA_FINISH_LENGTH,
                            dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                                       "request needs %d KV blocks alone; %d are free", need,
                                       free_blocks(e, sp)));
        return false;
    }
    schedule_item(e, sp, r, n, need);
    return true;
}

static void schedule_running_set(dsla_engine_t *e, step_plan_t *sp) {
    for (int pass = 0; pass < 2; pass++) {
        /* A snapshot: preemption reorders the running set under our feet. */
        int n = e->n_running;
        memcpy(e->order, e->running, (size_t)n * sizeof *e->order);
        for (int i = 0; i < n; i++) {
            request_t *r = e->order[i];
            if (!r->running || r->sched_item >= 0) continue;
            bool decode = dsla_request_total(r) - r->n_computed == 1;
            if (decode != (pass == 0)) continue;
            schedule_running(e, sp, r);
        }
    }
}

/* Pins r to the current plan: a sequence with its state slots, the running set. */
static dsla_status_t admit(dsla_engine_t *e, request_t *r) {
    DSLA_TRY(e->backend->ops->seq_create(e->backend, e->plan, &r->seq));
    r->plan = dsla_plan_retain(e->plan);
    r->n_computed = 0;
    r->prefill_end = dsla_request_total(r);
    r->running = true;
    r->admitted = ++e->last_admitted;
    e->running[e->n_running++] = r;
    if (!r->queued_observed) { /* a preempted request's second wait is not queueing time */
        dsla_histogram_observe(&e->m.queue, dsla_engine_now(e) - r->t_submit);
        r->queued_observed = true;
    }
    return DSLA_OK;
}

/* Blocks that admitted requests will still take for their prefill (plus the first token) after
 * this step's share: admission promised them, so a newcomer must not count them as free, or a
 * nearly full pool would admit requests whose later chunks then preempt someone. */
static int promised_blocks(const dsla_engine_t *e) {
    int promised = 0;
    for (int i = 0; i < e->n_running; i++) {
        const request_t *r = e->running[i];
        const int scheduled = r->sched_item >= 0 ? r->sched_tokens : 0;
        const int left = r->prefill_end - r->n_computed - scheduled;
        if (left <= 0) continue;
        const int whole = e->backend->ops->seq_blocks_needed(e->backend, r->seq,
                                                             r->prefill_end - r->n_computed + 1);
        promised += whole - (r->sched_item >= 0 ? r->sched_blocks : 0);
    }
    return promised;
}

/* KV blocks and state slots come from one arena (backend.h): a request under a plan with k DSLA
 * layers needs (layers - k) layers' KV blocks and k slots of blocks_per_slot blocks, and the slots
 * also need whole free runs (free_slots). */
static void admit_waiting(dsla_engine_t *e, step_plan_t *sp) {
    const dsla_plan_t *plan = e->plan;
    const int attn = dsla_plan_num_layers(plan) - dsla_plan_num_dsla(plan);
    const int slots = dsla_plan_num_dsla(plan);
    const int slot_blocks = slots * e->backend->blocks_per_slot;
    int promised = promised_blocks(e);
    while (e->wait_head && e->n_running < e->cfg.max_running) {
        request_t *r = e->wait_head;
        int total = dsla_request_total(r);
        int n = chunk_of(e, r, 0, total); /* admitted, it computes from its start */
        if (n > sp->budget || sp->extra + extra_rows(r, 0, n) > e->score_chunk) return;
        int room = total + 1 <= r->n_prompt + r->max_tokens ? total + 1 : total;
        int need_kv = attn * dsla_kv_blocks_for(room);
        if (need_kv + slot_blocks > e->cfg.kv_blocks || slots > e->backend->max_slots) {
            /* The plan changed since submission and the request can never fit under it. */
            dsla_engine_waiting_remove(e, r);
            r->text_len = 0;
            dsla_request_finish(e, r, -1, DSLA_FINISH_LENGTH,
                                dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                                           "request needs %d KV blocks and %d state slots of %d "
                                           "blocks under plan %llu; the arena has %d blocks",
                                           need_kv, slots, e->backend->blocks_per_slot,
                                           (unsigned long long)dsla_plan_id(plan),
                                           e->cfg.kv_blocks));
            continue;
        }
        if (need_kv + slot_blocks > free_blocks(e, sp) - promised ||
            slots > e->backend->ops->free_slots(e->backend))
            return;
        dsla_engine_waiting_remove(e, r);
        if (admit(e, r) != DSLA_OK) {
            dsla_engine_waiting_push_front(e, r);
            return;
        }
        const int now = e->backend->ops->seq_blocks_needed(e->backend, r->seq, n);
        schedule_item(e, sp, r, n, now);
        if (n < total) promised += need_kv - now;
    }
}

static void text_append(request_t *r, const char *s, size_t len) {
    if (!len) return;
    if (r->text_len + len > r->text_cap) {
        size_t cap = 2 * (r->text_len + len);
        char *t = realloc(r->text, cap);
        if (!t) return; /* the text of this event is lost, the request goes on */
        r->text = t;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, s, len);
    r->text_len += len;
}

/* Feeds detokenized text through the stop matcher into the event text; true when a stop completed.
 */
static bool feed_text(request_t *r, const char *piece, size_t len) {
    const char *out;
    size_t out_len;
    bool stopped = dsla_stop_matcher_feed(r->stops, piece, len, &out, &out_len);
    text_append(r, out, out_len);
    return stopped;
}

static void observe_token(dsla_engine_t *e, request_t *r, double now) {
    if (r->t_last_token == 0.0)
        dsla_histogram_observe(&e->m.ttft, now - r->t_submit);
    else
        dsla_histogram_observe(&e->m.tpot, now - r->t_last_token);
    r->t_last_token = now;
}

/* Handles one sampled token of a running request: streams it, or ends the request (EOS, a stop
 * string, max_tokens, a callback asking to cancel), as dsla_generate does. */
static void take_token(dsla_engine_t *e, request_t *r, int32_t id, double now) {
    observe_token(e, r, now);
    r->text_len = 0;
    const bool eos = !r->ignore_eos && dsla_token_ends_stream(e->mcfg, e->tokenizer, id);
    const char *piece = ""; /* no detokenizer: no text */
    size_t len = 0;
    if (!eos) {
        r->tokens[dsla_request_total(r)] = id;
        dsla_sampler_observe(r->sampler, id, true);
        r->n_generated++;
        e->m.generated_tokens++;
        if (r->detok && dsla_detokenizer_push(r->detok, id, &piece, &len) != DSLA_OK) {
            dsla_engine_running_remove(e, r);
            dsla_request_finish(e, r, id, DSLA_FINISH_LENGTH, DSLA_ERR_INTERNAL);
            return;
        }
        if (feed_text(r, piece, len)) {
            dsla_engine_running_remove(e, r);
            dsla_request_finish(e, r, id, DSLA_FINISH_STOP, DSLA_OK);
            return;
        }
        if (r->n_generated < r->max_tokens) {
            dsla_stream_event_t ev = {
                .request_id = r->id,
                .token = id,
                .text = r->text ? r->text : "",
                .text_len = r->text_len,
                .usage = {r->n_prompt, r->n_generated, r->preemptions, dsla_plan_id(r->plan)},
                .logprobs = r->logprobs ? &r->lp : NULL,
            };
            dsla_request_prompt_logprobs(r, &ev);
            if (r->on_event && r->on_event(r->user, &ev) != 0) {
                dsla_engine_running_remove(e, r);
                r->text_len = 0;
                dsla_request_finish(e, r, -1, DSLA_FINISH_CANCELLED, DSLA_OK);
            }
            return;
        }
    }
    /* The end by EOS or max_tokens: release what the detokenizer and the matcher hold back. */
    bool stopped = false;
    if (r->detok && dsla_detokenizer_flush(r->detok, &piece, &len) == DSLA_OK)
        stopped = feed_text(r, piece, len);
    if (!stopped) {
        dsla_stop_matcher_finish(r->stops, &piece, &len);
        text_append(r, piece, len);
    }
    dsla_engine_running_remove(e, r);
    dsla_request_finish(e, r, eos ? -1 : id, eos || stopped ? DSLA_FINISH_STOP : DSLA_FINISH_LENGTH,
                        DSLA_OK);
}

/* Grows the logits buffer to rows rows (prompt scoring needs more than one per item; at most
 * dsla_engine_logit_rows). */
static dsla_status_t logits_room(dsla_engine_t *e, size_t rows) {
    if (rows <= e->logit_rows) return DSLA_OK;
    float *grown = realloc(e->logits, rows * (size_t)e->mcfg->vocab_size * sizeof *grown);
    if (!grown) return dsla_error_oom("engine: %zu logit rows", rows);
    e->logits = grown;
    e->logit_rows = rows;
    return DSLA_OK;
}

/* The prompt logprobs of r's chunk, from its rows (row j predicts position n_computed + j + 1):
 * each prompt position not scored yet gets its token's logprob and the top alternatives. */
static void score_prompt(dsla_engine_t *e, request_t *r, const float *rows) {
    const int V = e->mcfg->vocab_size;
    for (int j = 0; j < r->sched_tokens; j++) {
        const int p = r->n_computed + j + 1;
        if (p >= r->n_prompt) break;
        if (p < r->prompt_lp_done) continue;
        dsla_logprobs_compute(rows + (size_t)j * (size_t)V, V, r->tokens[p], r->top_logprobs,
                              &r->prompt_lp[p]);
        r->prompt_lp_done = p + 1;
    }
}

static void record_step(dsla_engine_t *e, double now) {
    dsla_engine_metrics_t *m = &e->m;
    m->steps++;
    int used_slots = e->backend->ops->slots_used(e->backend);
    int used_blocks = e->cfg.kv_blocks - e->backend->ops->free_blocks(e->backend) -
                      used_slots * e->backend->blocks_per_slot;
    if (e->n_running > m->peak_running) m->peak_running = e->n_running;
    if (used_blocks > m->peak_kv_blocks_used) m->peak_kv_blocks_used = used_blocks;
    if (used_slots > m->peak_state_slots_used) m->peak_state_slots_used = used_slots;
    /* A ring of (time, generated tokens) over the last steps gives the recent rate: after writing
     * step k, the ring holds steps k-N+1..k and the oldest sits where step k+1 will go. */
    uint64_t k = m->steps - 1;
    int slot = (int)(k % DSLA_METRICS_RATE_STEPS);
    int oldest = k < DSLA_METRICS_RATE_STEPS ? 0 : (int)((k + 1) % DSLA_METRICS_RATE_STEPS);
    e->rate_time[slot] = now;
    e->rate_tokens[slot] = m->generated_tokens;
    double dt = now - e->rate_time[oldest];
    m->tokens_per_second =
        dt > 0 ? (double)(m->generated_tokens - e->rate_tokens[oldest]) / dt : 0.0;
}

/* Ends the requests never admitted that have waited beyond max_queue_wait_ms. They are in
 * submission order once the preempted ones (at the front, never expired: they have streamed
 * already) are skipped, so the walk stops at the first that may still wait. */
static void expire_waiting(dsla_engine_t *e) {
    if (e->cfg.max_queue_wait_ms <= 0 || !e->wait_head) return;
    const double now = dsla_engine_now(e), limit = (double)e->cfg.max_queue_wait_ms / 1000.0;
    request_t *r = e->wait_head;
    while (r) {
        request_t *next = r->next;
        if (r->admitted == 0) {
            const double waited = now - r->t_submit;
            if (waited <= limit) return;
            dsla_engine_waiting_remove(e, r);
            r->text_len = 0;
            e->m.requests_expired++;
            dsla_request_finish(
                e, r, -1, DSLA_FINISH_LENGTH,
                dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                           "queue wait: the request waited %.0f ms without being admitted "
                           "(--max-queue-wait-ms %ld); the server is at capacity, retry later",
                           waited * 1000.0, e->cfg.max_queue_wait_ms));
        }
        r = next;
    }
}

/* The step's work and floor (step_stats.h), before its forward pass changes n_computed; and what
 * the backend should time on the device. */
static void account_items(dsla_engine_t *e, int n_items) {
    for (int i = 0; i < n_items; i++) {
        const request_t *r = e->item_req[i];
        e->acct_items[i] = (dsla_step_item_t){
            .past = r->n_computed,
            .n = r->sched_tokens,
            .dsla_layers = dsla_plan_num_dsla(r->plan),
            .samples = r->n_computed + r->sched_tokens >= dsla_request_total(r),
        };
    }
    dsla_step_record_t *rec = &e->last_step;
    dsla_step_account(rec, &e->backend->costs, &e->cfg.step_rates, e->acct_items, n_items);
    dsla_serve_backend_t *b = e->backend;
    const int every = e->cfg.step_phase_every > 1 ? e->cfg.step_phase_every : 1;
    b->timing = e->cfg.step_timing;
    b->time_phases = e->cfg.step_timing == DSLA_STEP_TIMING_PHASES && (e->m.steps + 1) % every == 0;
    b->measured = (dsla_step_device_t){0};
}

/* Closes the step's record: times, phases, fraction; adds it to the metrics. */
static void account_times(dsla_engine_t *e, double t0, double forward_s, double sampling_s,
                          double t_end) {
    dsla_step_record_t *rec = &e->last_step;
    const dsla_step_device_t *dev = &e->backend->measured;
    rec->step = e->m.steps;
    rec->step_s = t_end - t0;
    rec->forward_s = forward_s;
    rec->device_measured = dev->device_measured;
    rec->phases_measured = dev->phases_measured;
    rec->device_s = dev->device_s;
    double device = 0;
    for (int p = 0; p < DSLA_STEP_PHASES; p++)
        rec->phase_s[p] = 0;
    if (dev->phases_measured)
        for (int p = 0; p < DSLA_STEP_DEVICE_PHASES; p++)
            rec->phase_s[p] = dev->phase_s[p];
    if (dev->device_measured) device = dev->device_s;
    rec->phase_s[DSLA_STEP_FORWARD_HOST] = forward_s > device ? forward_s - device : 0.0;
    rec->phase_s[DSLA_STEP_SAMPLING] = sampling_s;
    const double sched = rec->step_s - forward_s - sampling_s;
    rec->phase_s[DSLA_STEP_SCHEDULING] = sched > 0 ? sched : 0.0;
    rec->fraction = rec->step_s > 0 && rec->floor_s > 0 ? rec->floor_s / rec->step_s : 0.0;
    dsla_step_totals_add(&e->m.step_totals, rec);
    dsla_histogram_observe(&e->m.step_time, rec->step_s);
}

dsla_status_t dsla_engine_step(dsla_engine_t *e, bool *progressed) {
    if (progressed) *progressed = false;
    const double t0 = dsla_engine_now(e);
    if (e->pending_plan) {
        dsla_plan_release(&e->plan);
        e->plan = e->pending_plan;
        e->pending_plan = NULL;
    }
    e->in_step = true;
    expire_waiting(e);
    step_plan_t sp = {.budget = e->cfg.step_tokens};
    schedule_running_set(e, &sp);
    admit_waiting(e, &sp);
    size_t rows = 0;
    for (int i = 0; i < sp.n_items; i++) {
        request_t *r = e->item_req[i];
        const bool all = scores_prompt(r);
        e->items[i] = (dsla_serve_item_t){r->seq, r->tokens + r->n_computed, r->sched_tokens, all};
        rows += all ? (size_t)r->sched_tokens : 1;
    }
    account_items(e, sp.n_items);
    dsla_status_t status = logits_room(e, rows);
    const double t_fwd = dsla_engine_now(e);
    if (sp.n_items > 0 && status == DSLA_OK)
        status = e->backend->ops->forward(e->backend, e->items, sp.n_items, e->logits);
    const double forward_s = dsla_engine_now(e) - t_fwd;
    for (int i = 0; i < sp.n_items; i++)
        e->item_req[i]->sched_item = -1;
    if (status == DSLA_OK && sp.n_items > 0) {
        double now = dsla_engine_now(e);
        const size_t V = (size_t)e->mcfg->vocab_size;
        /* Every row is sampled before any token is taken: a token can end its request, and the
         * sampling's time is then one interval of the step's accounting. */
        const float *item_rows = e->logits;
        for (int i = 0; i < sp.n_items; i++) {
            request_t *r = e->item_req[i];
            int end = r->n_computed + r->sched_tokens;
            const int n_rows = e->items[i].want_all_logits ? r->sched_tokens : 1;
            if (e->items[i].want_all_logits) score_prompt(e, r, item_rows);
            const float *row = item_rows + (size_t)(n_rows - 1) * V; /* the last token's */
            item_rows += (size_t)n_rows * V;
            if (r->n_computed < r->prefill_end)
                e->m.prompt_tokens_computed +=
                    (uint64_t)((end < r->prefill_end ? end : r->prefill_end) - r->n_computed);
            r->n_computed = end;
            if (end < dsla_request_total(r)) continue;
            e->sampled[i] = dsla_sampler_sample(r->sampler, row);
            if (r->logprobs)
                dsla_logprobs_compute(row, (int)V, e->sampled[i], r->top_logprobs, &r->lp);
        }
        const double sampling_s = dsla_engine_now(e) - now;
        for (int i = 0; i < sp.n_items; i++) {
            request_t *r = e->item_req[i];
            if (r->n_computed < dsla_request_total(r)) continue;
            take_token(e, r, e->sampled[i], now);
        }
        record_step(e, now);
        account_times(e, t0, forward_s, sampling_s, dsla_engine_now(e));
        if (progressed) *progressed = true;
    }
    e->in_step = false;
    dsla_engine_run_pending_cancels(e);
    return status;
}

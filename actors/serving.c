/* The serving actor: GENERATE/CANCEL handlers over dsla_engine_t, an idle-aware step driver, and
 * the controller's side of it: periodic LOAD_REPORTs and SET_PLAN. */
#include "actors/serving.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/cancel.h"
#include "actors/clock.h"
#include "actors/transfer.h"
#include "runtime/core/log.h"

/* A failed step is retried after this pause rather than at once, so a broken backend cannot make
 * the actor spin. */
enum { STEP_RETRY_MS = 10 };

/* One request in the engine: where its events go. */
typedef struct request {
    struct request *prev, *next;
    struct dsla_serving *s;
    uint64_t engine_id;
    uint64_t client_id; /* the GENERATE's correlation id */
    char client[DSLA_PROTO_NAME_MAX + 1];
    uint64_t submitted_ms;
    bool started; /* its first token (or its end) has come */
} request_t;

/* A SET_PLAN whose layer versions are being fetched into the layer cache, one chunk in flight. */
typedef struct {
    dsla_proto_set_plan_t plan;         /* its paths replaced by the cache's */
    char from[DSLA_PROTO_NAME_MAX + 1]; /* the SET_PLAN's sender: fetches and the answer go there */
    uint64_t id;                        /* the SET_PLAN's correlation id */
    uint32_t next;                      /* the entry of plan.layers being fetched */
    dsla_transfer_t *xfer;
    uint64_t fetch_id; /* the LAYER_FETCH in flight; other LAYER_CHUNKs and ERRORs are stale */
    dsla_actor_timer_t *timer;
} fetch_job_t;

struct dsla_serving {
    dsla_actor_t *actor; /* the creator's handle: create, endpoint, destroy */
    dsla_actor_t *self;  /* the same actor as its own thread sees it, set in on_start */
    dsla_engine_t *engine;
    dsla_actor_timer_t *step_timer;
    request_t *requests;
    const dsla_model_config_t *mcfg;
    const dsla_tokenizer_t *tokenizer;
    /* the controller's side: where reports go, and the plan's DSLA layers as SET_PLAN named them
     * (so that reports need not checksum the weights again) */
    char controller[DSLA_ACTOR_ENDPOINT_MAX];
    uint32_t report_ms;
    dsla_actor_timer_t *report_timer;
    dsla_histogram_t last_ttft, last_tpot; /* at the previous report, for windowed quantiles */
    uint32_t n_plan_dsla;
    dsla_proto_dsla_layer_t plan_dsla[DSLA_PROTO_LAYERS_MAX];
    /* chunked transfer: the cache ("" reads SET_PLAN paths) and the fetch in progress */
    char layer_cache[DSLA_PROTO_PATH_MAX - 64];
    uint32_t fetch_chunk, fetch_timeout_ms;
    uint64_t next_fetch_id;
    fetch_job_t *job;
    /* prompt sampling: the batch being filled (ids NULL: sampling off), the share of the rate
     * cap each flush gets and what is left of it */
    char distiller[DSLA_ACTOR_ENDPOINT_MAX];
    uint32_t sample_every, sample_tick_tokens, sample_left;
    uint64_t sample_seed, prompts_seen;
    int32_t *sample_ids; /* DSLA_PROTO_SAMPLE_TOKENS_MAX */
    dsla_proto_prompt_samples_t batch;
    dsla_actor_timer_t *sample_timer;
};

static void request_unlink(dsla_serving_t *s, request_t *r) {
    if (r->prev) r->prev->next = r->next;
    if (r->next) r->next->prev = r->prev;
    if (s->requests == r) s->requests = r->next;
    free(r);
}

static void send_error(dsla_actor_t *a, const char *dst, uint64_t id, dsla_proto_code_t code,
                       const char *message) {
    dsla_proto_error_t err = {.code = code};
    snprintf(err.message, sizeof err.message, "%s", message);
    dsla_proto_buf_t body;
    if (dsla_proto_error_encode(&err, &body) != DSLA_OK ||
        dsla_actor_send(a, dst, DSLA_MSG_ERROR, id, body.data, body.len) != DSLA_OK)
        dsla_log_warn("serving: could not tell %s of a failure: %s", dst, dsla_last_error());
    dsla_proto_buf_free(&body);
}

static dsla_status_t send_text(dsla_actor_t *a, const request_t *r, int32_t token, const char *text,
                               size_t len) {
    dsla_proto_token_t *t = malloc(sizeof *t);
    if (!t) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: TOKEN: out of memory");
    dsla_status_t st = DSLA_OK;
    size_t off = 0;
    do { /* pieces longer than a TOKEN holds go as several, the extra ones without a token */
        size_t n = len - off < DSLA_PROTO_PIECE_MAX ? len - off : DSLA_PROTO_PIECE_MAX;
        t->token = off == 0 ? token : -1;
        t->text_len = n;
        if (n) memcpy(t->text, text + off, n);
        dsla_proto_buf_t body;
        st = dsla_proto_token_encode(t, &body);
        if (st == DSLA_OK)
            st = dsla_actor_send(a, r->client, DSLA_MSG_TOKEN, r->client_id, body.data, body.len);
        dsla_proto_buf_free(&body);
        off += n;
    } while (st == DSLA_OK && off < len);
    free(t);
    return st;
}

static int on_event(void *user, const dsla_stream_event_t *ev) {
    request_t *r = user;
    dsla_serving_t *s = r->s;
    int cancel = 0;
    r->started = true;
    if (ev->token >= 0 || ev->text_len > 0) {
        if (send_text(s->self, r, ev->token, ev->text, ev->text_len) != DSLA_OK) {
            dsla_log_info("serving: cancelling request %llu of %s: %s",
                          (unsigned long long)r->engine_id, r->client, dsla_last_error());
            cancel = 1;
        }
    }
    if (!ev->finished) return cancel;
    if (ev->status == DSLA_OK) {
        dsla_proto_done_t done = {.finish = ev->finish == DSLA_FINISH_STOP ? DSLA_PROTO_FINISH_STOP
                                            : ev->finish == DSLA_FINISH_CANCELLED
                                                ? DSLA_PROTO_FINISH_CANCELLED
                                                : DSLA_PROTO_FINISH_LENGTH,
                                  .prompt_tokens = (uint32_t)ev->usage.prompt_tokens,
                                  .completion_tokens = (uint32_t)ev->usage.completion_tokens};
        dsla_proto_buf_t body;
        if (dsla_proto_done_encode(&done, &body) != DSLA_OK ||
            dsla_actor_send(s->self, r->client, DSLA_MSG_DONE, r->client_id, body.data, body.len) !=
                DSLA_OK)
            dsla_log_info("serving: DONE to %s lost: %s", r->client, dsla_last_error());
        dsla_proto_buf_free(&body);
    } else {
        send_error(s->self, r->client, r->client_id, dsla_proto_code_from_status(ev->status),
                   ev->message);
    }
    request_unlink(s, r);
    return 0;
}

static void on_step(dsla_actor_t *a, void *user);

static void kick(dsla_serving_t *s, uint64_t delay_ms) {
    if (s->step_timer) return;
    if (dsla_actor_timer_start(s->self, delay_ms, 0, on_step, s, &s->step_timer) != DSLA_OK)
        dsla_log_error("serving: cannot schedule a step: %s", dsla_last_error());
}

static void on_step(dsla_actor_t *a, void *user) {
    dsla_serving_t *s = user;
    dsla_actor_timer_stop(a, &s->step_timer);
    dsla_status_t st = dsla_engine_step(s->engine, NULL);
    if (st != DSLA_OK) dsla_log_error("serving: step failed: %s", dsla_last_error());
    if (!dsla_engine_idle(s->engine)) kick(s, st == DSLA_OK ? 0 : STEP_RETRY_MS);
}

/* ---- prompt sampling (DESIGN.md 5.4) ---- */

/* Whether the n-th prompt is sampled: a mix of the seed and n, so that the choice does not follow
 * a client's round-robin and a seed repeats it. */
static bool sample_chosen(const dsla_serving_t *s, uint64_t n) {
    uint64_t x = (s->sample_seed ^ n) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ull;
    return (x ^ (x >> 32)) % s->sample_every == 0;
}

/* Adds the accepted prompt g to the batch when sampled and within the cap. */
static void sample_prompt(dsla_serving_t *s, const dsla_proto_generate_t *g) {
    if (!s->sample_ids || !sample_chosen(s, s->prompts_seen++)) return;
    const int32_t *ids = g->prompt_ids;
    size_t n = (size_t)g->n_prompt_ids;
    int32_t *encoded = NULL;
    if (!ids) {
        if (dsla_tokenizer_encode(s->tokenizer, g->prompt, g->prompt_len,
                                  dsla_tokenizer_add_bos_default(s->tokenizer), &encoded,
                                  &n) != DSLA_OK)
            return;
        ids = encoded;
    }
    if (n > s->sample_tick_tokens) n = s->sample_tick_tokens;
    dsla_proto_prompt_samples_t *b = &s->batch;
    if (n == 0 || b->n_prompts == DSLA_PROTO_SAMPLES_MAX || n > s->sample_left) {
        b->dropped += n > 0;
    } else {
        memcpy(s->sample_ids + b->n_ids, ids, n * sizeof *ids);
        b->lens[b->n_prompts++] = (uint32_t)n;
        b->n_ids += (uint32_t)n;
        s->sample_left -= (uint32_t)n;
    }
    free(encoded);
}

/* Sends the batch, if any, and opens the next interval's share of the cap. */
static void on_sample_flush(dsla_actor_t *a, void *user) {
    dsla_serving_t *s = user;
    s->sample_left = s->sample_tick_tokens;
    dsla_proto_prompt_samples_t *b = &s->batch;
    if (b->n_prompts == 0) return;
    b->ids = s->sample_ids;
    dsla_proto_buf_t body;
    if (dsla_proto_prompt_samples_encode(b, &body) != DSLA_OK ||
        dsla_actor_send(a, "distiller", DSLA_MSG_PROMPT_SAMPLES, 0, body.data, body.len) != DSLA_OK)
        dsla_log_debug("serving: %u sampled prompts lost: %s", b->n_prompts, dsla_last_error());
    dsla_proto_buf_free(&body);
    memset(b, 0, sizeof *b);
}

static void on_generate(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    if (!msg->from[0]) {
        dsla_actor_reply_error(a, msg, DSLA_CODE_INVALID_ARGUMENT,
                               "GENERATE: the client's routing id must be a printable name of at "
                               "most 63 bytes, so that tokens can be streamed to it");
        return;
    }
    dsla_proto_generate_t g;
    dsla_status_t st = dsla_proto_generate_decode(msg->env->body, msg->env->body_len, &g);
    if (st != DSLA_OK) {
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
        return;
    }
    if (!g.stream) {
        dsla_actor_reply_error(a, msg, DSLA_CODE_INVALID_ARGUMENT,
                               "GENERATE: stream false is not served yet; send stream true");
        dsla_proto_generate_free(&g);
        return;
    }
    request_t *r = calloc(1, sizeof *r);
    if (!r) {
        dsla_actor_reply_error(a, msg, DSLA_CODE_RESOURCE_EXHAUSTED, "serving: out of memory");
        dsla_proto_generate_free(&g);
        return;
    }
    r->s = s;
    r->submitted_ms = dsla_actors_now_ms();
    r->client_id = msg->env->id;
    snprintf(r->client, sizeof r->client, "%s", msg->from);
    dsla_request_params_t p = {
        .prompt_ids = g.prompt_ids,
        .n_prompt_ids = g.n_prompt_ids,
        .prompt_text = g.prompt,
        .prompt_text_len = g.prompt_len,
        .sampling = {.temperature = g.temperature,
                     .top_k = g.top_k,
                     .top_p = g.top_p,
                     .seed = g.seed},
        .max_tokens = g.max_tokens,
        .stop = g.stop,
        .n_stop = g.n_stop,
        .ignore_eos = g.ignore_eos,
        .on_event = on_event,
        .user = r,
    };
    st = dsla_engine_submit(s->engine, &p, &r->engine_id);
    if (st == DSLA_OK) sample_prompt(s, &g);
    dsla_proto_generate_free(&g);
    if (st != DSLA_OK) {
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
        free(r);
        return;
    }
    r->next = s->requests;
    if (s->requests) s->requests->prev = r;
    s->requests = r;
    kick(s, 0);
}

static void *request_find(void *owner, const char *client, uint64_t client_id) {
    dsla_serving_t *s = owner;
    for (request_t *r = s->requests; r; r = r->next)
        if (r->client_id == client_id && strcmp(r->client, client) == 0) return r;
    return NULL;
}

static void on_cancel(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    request_t *r = dsla_cancel_lookup(a, msg, request_find, s);
    if (r && dsla_engine_cancel(s->engine, r->engine_id) != DSLA_OK) /* its DONE follows else */
        dsla_log_warn("serving: %s", dsla_last_error());
}

/* A client whose heartbeats stopped gets nothing more: its requests end now. */
static void on_peer(dsla_actor_t *a, const char *peer, bool alive, void *user) {
    (void)a;
    dsla_serving_t *s = user;
    if (alive) return;
    request_t *next;
    for (request_t *r = s->requests; r; r = next) {
        next = r->next;
        if (strcmp(r->client, peer) == 0) dsla_engine_cancel(s->engine, r->engine_id);
    }
}

/* ---- the controller's side ---- */

/* The p90 of what a cumulative histogram gained since *prev (then moved to now), in ms. */
static double window_p90_ms(const dsla_histogram_t *now, dsla_histogram_t *prev) {
    dsla_histogram_t d = *now;
    for (int i = 0; i <= DSLA_HISTOGRAM_BUCKETS; i++)
        d.counts[i] -= prev->counts[i];
    d.count -= prev->count;
    *prev = *now;
    return dsla_histogram_quantile(&d, 0.9) * 1e3;
}

static void on_report(dsla_actor_t *a, void *user) {
    dsla_serving_t *s = user;
    dsla_engine_metrics_t *m = malloc(sizeof *m);
    dsla_proto_load_report_t *r = calloc(1, sizeof *r);
    if (!m || !r) {
        free(m);
        free(r);
        return;
    }
    dsla_engine_metrics(s->engine, m);
    uint64_t now = dsla_actors_now_ms(), oldest = now;
    for (const request_t *q = s->requests; q; q = q->next)
        if (!q->started && q->submitted_ms < oldest) oldest = q->submitted_ms;
    *r = (dsla_proto_load_report_t){
        .num_layers = (uint32_t)s->mcfg->num_layers,
        .queue_length = (uint32_t)m->queue_length,
        .running = (uint32_t)m->running,
        .waiting_tokens = (uint64_t)m->waiting_prompt_tokens,
        .oldest_wait_ms = (uint32_t)(now - oldest),
        .kv_used = (uint32_t)m->kv_blocks_used,
        .kv_total = (uint32_t)m->kv_blocks_total,
        .slots_used = (uint32_t)m->state_slots_used,
        .slots_total = (uint32_t)m->state_slots_total,
        .ttft_p90_ms = window_p90_ms(&m->ttft, &s->last_ttft),
        .tpot_p90_ms = window_p90_ms(&m->tpot, &s->last_tpot),
        .tokens_per_s = m->tokens_per_second,
        .plan_id = dsla_plan_id(dsla_engine_plan(s->engine)),
        .n_dsla = s->n_plan_dsla,
    };
    memcpy(r->dsla, s->plan_dsla, s->n_plan_dsla * sizeof s->plan_dsla[0]);
    dsla_proto_buf_t body;
    if (dsla_proto_load_report_encode(r, &body) != DSLA_OK ||
        dsla_actor_send(a, "controller", DSLA_MSG_LOAD_REPORT, 0, body.data, body.len) != DSLA_OK)
        dsla_log_info("serving: LOAD_REPORT not sent: %s", dsla_last_error());
    dsla_proto_buf_free(&body);
    free(r);
    free(m);
}

/* Loads and verifies the layer versions p names and installs them as the engine's plan. */
static dsla_status_t adopt_plan(dsla_serving_t *s, const dsla_proto_set_plan_t *p) {
    const int num_layers = s->mcfg->num_layers;
    bool named[DSLA_PROTO_LAYERS_MAX] = {false};
    dsla_plan_t *plan = NULL;
    DSLA_TRY(dsla_plan_create(&plan, num_layers));
    dsla_status_t st = DSLA_OK;
    for (uint32_t i = 0; i < p->n_layers && st == DSLA_OK; i++) {
        const dsla_proto_plan_layer_t *e = &p->layers[i];
        if (e->layer >= num_layers || named[e->layer]) {
            st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                            "SET_PLAN: layer %d is %s (the model has %d layers)", e->layer,
                            e->layer >= num_layers ? "out of range" : "named twice", num_layers);
            break;
        }
        named[e->layer] = true;
        dsla_dsla_layer_t *w = NULL;
        st = dsla_dsla_layer_load(&w, e->path, s->mcfg, NULL);
        if (st == DSLA_OK && w->layer != e->layer)
            st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "SET_PLAN: %s holds layer %d, not %d",
                            e->path, w->layer, e->layer);
        uint64_t sum = st == DSLA_OK ? dsla_dsla_layer_checksum(w) : 0;
        if (st == DSLA_OK && sum != e->checksum)
            st = dsla_error(DSLA_ERR_FORMAT,
                            "SET_PLAN: layer %d: %s has checksum %016" PRIx64
                            ", the controller announced %016" PRIx64,
                            e->layer, e->path, sum, e->checksum);
        dsla_layer_ref_t *ref = NULL;
        if (st == DSLA_OK) st = dsla_layer_ref_create(&ref, &w);
        if (st == DSLA_OK) st = dsla_plan_set_layer(plan, e->layer, ref);
        dsla_layer_ref_release(&ref);
        dsla_dsla_layer_destroy(&w);
    }
    if (st == DSLA_OK) st = dsla_engine_set_plan(s->engine, plan);
    dsla_plan_release(&plan);
    if (st != DSLA_OK) return st;
    s->n_plan_dsla = 0; /* ascending by layer, as reports list them */
    for (int l = 0; l < num_layers; l++)
        for (uint32_t i = 0; named[l] && i < p->n_layers; i++)
            if (p->layers[i].layer == l)
                s->plan_dsla[s->n_plan_dsla++] =
                    (dsla_proto_dsla_layer_t){.layer = l, .checksum = p->layers[i].checksum};
    return DSLA_OK;
}

/* The PLAN_ACK (st DSLA_OK) or PLAN_NACK (code, and dsla_last_error as the reason) for SET_PLAN
 * seq, with the plan the engine now runs. */
static dsla_status_t plan_reply_encode(dsla_serving_t *s, uint64_t seq, dsla_status_t st,
                                       dsla_proto_code_t code, dsla_proto_buf_t *body) {
    dsla_proto_plan_reply_t *r = calloc(1, sizeof *r);
    if (!r) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
    r->seq = seq;
    if (st != DSLA_OK) {
        r->code = code;
        snprintf(r->reason, sizeof r->reason, "%s", dsla_last_error());
        dsla_log_warn("serving: plan refused, the old one stays: %s", r->reason);
    }
    r->plan_id = dsla_plan_id(dsla_engine_plan(s->engine));
    r->n_dsla = s->n_plan_dsla;
    memcpy(r->dsla, s->plan_dsla, s->n_plan_dsla * sizeof s->plan_dsla[0]);
    dsla_status_t est = dsla_proto_plan_reply_encode(r, body);
    free(r);
    return est;
}

/* Frees a job without touching the actor (its timer dies with the loop). */
static void job_free(fetch_job_t **job) {
    if (!*job) return;
    dsla_transfer_destroy(&(*job)->xfer);
    dsla_proto_set_plan_free(&(*job)->plan);
    free(*job);
    *job = NULL;
}

/* Ends the job: installs its plan when st is DSLA_OK and every file is in the cache, then answers
 * the SET_PLAN's sender. */
static void job_finish(dsla_serving_t *s, dsla_status_t st, dsla_proto_code_t code) {
    fetch_job_t *job = s->job;
    dsla_actor_timer_stop(s->self, &job->timer);
    if (st == DSLA_OK) {
        st = adopt_plan(s, &job->plan);
        code = dsla_proto_code_from_status(st);
    }
    dsla_proto_buf_t body = {0};
    if (plan_reply_encode(s, job->plan.seq, st, code, &body) != DSLA_OK ||
        dsla_actor_send(s->self, job->from, st == DSLA_OK ? DSLA_MSG_PLAN_ACK : DSLA_MSG_PLAN_NACK,
                        job->id, body.data, body.len) != DSLA_OK)
        dsla_log_warn("serving: the answer to SET_PLAN %" PRIu64 " is lost: %s", job->plan.seq,
                      dsla_last_error());
    dsla_proto_buf_free(&body);
    job_free(&s->job);
}

static void on_fetch_timeout(dsla_actor_t *a, void *user) {
    dsla_serving_t *s = user;
    (void)a;
    if (!s->job) return;
    const dsla_proto_plan_layer_t *l = &s->job->plan.layers[s->job->next];
    dsla_error(DSLA_ERR_IO, "layer transfer: no LAYER_CHUNK of layer %d from %s within %u ms",
               l->layer, s->job->from, s->fetch_timeout_ms);
    job_finish(s, DSLA_ERR_IO, DSLA_CODE_DEADLINE_EXCEEDED);
}

/* Sends the LAYER_FETCH for the transfer's next chunk and arms the timeout. */
static dsla_status_t job_request(dsla_serving_t *s) {
    fetch_job_t *job = s->job;
    dsla_proto_layer_fetch_t f;
    dsla_transfer_request(job->xfer, &f);
    dsla_proto_buf_t body;
    DSLA_TRY(dsla_proto_layer_fetch_encode(&f, &body));
    job->fetch_id = ++s->next_fetch_id;
    dsla_status_t st = dsla_actor_send(s->self, job->from, DSLA_MSG_LAYER_FETCH, job->fetch_id,
                                       body.data, body.len);
    dsla_proto_buf_free(&body);
    dsla_actor_timer_stop(s->self, &job->timer);
    if (st == DSLA_OK)
        st = dsla_actor_timer_start(s->self, s->fetch_timeout_ms, 0, on_fetch_timeout, s,
                                    &job->timer);
    return st;
}

/* Starts the fetch of the next layer version the cache lacks, or installs the plan when none. */
static void job_advance(dsla_serving_t *s) {
    fetch_job_t *job = s->job;
    for (; job->next < job->plan.n_layers; job->next++) {
        const dsla_proto_plan_layer_t *l = &job->plan.layers[job->next];
        if (dsla_transfer_cached(l->path, l)) continue; /* fetched before: not again */
        dsla_status_t st = dsla_transfer_begin(&job->xfer, l->path, l, s->fetch_chunk);
        if (st == DSLA_OK) st = job_request(s);
        if (st != DSLA_OK) job_finish(s, st, dsla_proto_code_from_status(st));
        return;
    }
    job_finish(s, DSLA_OK, DSLA_CODE_OK);
}

/* Points every entry of p at its file in the layer cache. */
static dsla_status_t plan_to_cache(dsla_serving_t *s, dsla_proto_set_plan_t *p) {
    for (uint32_t i = 0; i < p->n_layers; i++) {
        dsla_proto_plan_layer_t *l = &p->layers[i];
        if (l->size == 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "SET_PLAN: layer %d carries no file size and xxh64 to fetch it by "
                              "(a controller without transfers); run this replica with "
                              "--layer-cache off on the controller's filesystem",
                              l->layer);
        char path[DSLA_PROTO_PATH_MAX + 1];
        DSLA_TRY(dsla_transfer_cache_path(s->layer_cache, l, path, sizeof path));
        char *dup = strdup(path);
        if (!dup) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
        free((char *)l->path);
        l->path = dup;
    }
    return DSLA_OK;
}

/* With a layer cache, the plan's files come from the cache or from the SET_PLAN's sender, chunk by
 * chunk, and the answer follows when the last one is in; a newer SET_PLAN supersedes an
 * unfinished one. */
static void fetch_plan(dsla_serving_t *s, const dsla_actor_msg_t *msg, dsla_proto_set_plan_t *p) {
    if (s->job) {
        dsla_error(DSLA_ERR_CANCELLED,
                   "SET_PLAN %" PRIu64 " superseded by SET_PLAN %" PRIu64
                   " before its layers arrived",
                   s->job->plan.seq, p->seq);
        job_finish(s, DSLA_ERR_CANCELLED, DSLA_CODE_CANCELLED);
    }
    fetch_job_t *job = calloc(1, sizeof *job);
    dsla_status_t st = job ? DSLA_OK : dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
    if (st == DSLA_OK && !msg->from[0])
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                        "SET_PLAN: a replica with a layer cache fetches from the SET_PLAN's "
                        "sender, which must be a named peer");
    if (st == DSLA_OK) st = plan_to_cache(s, p);
    if (st != DSLA_OK) {
        dsla_proto_buf_t body = {0};
        if (plan_reply_encode(s, p->seq, st, dsla_proto_code_from_status(st), &body) == DSLA_OK)
            dsla_actor_reply(s->self, msg, DSLA_MSG_PLAN_NACK, body.data, body.len);
        dsla_proto_buf_free(&body);
        dsla_proto_set_plan_free(p);
        free(job);
        return;
    }
    job->plan = *p;
    memset(p, 0, sizeof *p);
    snprintf(job->from, sizeof job->from, "%s", msg->from);
    job->id = msg->env->id;
    s->job = job;
    job_advance(s);
}

static void on_set_plan(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    dsla_proto_set_plan_t p;
    dsla_status_t st = dsla_proto_set_plan_decode(msg->env->body, msg->env->body_len, &p);
    if (st != DSLA_OK) {
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
        return;
    }
    if (s->layer_cache[0]) {
        fetch_plan(s, msg, &p);
        return;
    }
    st = adopt_plan(s, &p);
    dsla_proto_buf_t body = {0};
    if (plan_reply_encode(s, p.seq, st, dsla_proto_code_from_status(st), &body) == DSLA_OK)
        dsla_actor_reply(a, msg, st == DSLA_OK ? DSLA_MSG_PLAN_ACK : DSLA_MSG_PLAN_NACK, body.data,
                         body.len);
    else
        dsla_actor_reply_error(a, msg, DSLA_CODE_RESOURCE_EXHAUSTED, dsla_last_error());
    dsla_proto_buf_free(&body);
    dsla_proto_set_plan_free(&p);
}

static void on_layer_chunk(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    dsla_serving_t *s = user;
    fetch_job_t *job = s->job;
    if (!job || msg->env->id != job->fetch_id || strcmp(msg->from, job->from) != 0) {
        dsla_log_debug("serving: a stale LAYER_CHUNK from '%s' (id %" PRIu64 ")", msg->from,
                       msg->env->id);
        return;
    }
    dsla_proto_layer_chunk_t c;
    bool done = false;
    dsla_status_t st = dsla_proto_layer_chunk_decode(msg->env->body, msg->env->body_len, &c);
    if (st == DSLA_OK) st = dsla_transfer_take(job->xfer, &c, &done);
    if (st == DSLA_OK && !done) st = job_request(s);
    if (st != DSLA_OK) {
        job_finish(s, st, dsla_proto_code_from_status(st));
        return;
    }
    if (!done) return;
    dsla_transfer_destroy(&job->xfer);
    job->next++;
    job_advance(s);
}

/* An ERROR answering the LAYER_FETCH in flight ends its SET_PLAN with a NACK carrying the
 * sender's code and message; any other ERROR is logged, as the actor would. */
static void on_error(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    dsla_serving_t *s = user;
    dsla_proto_error_t err;
    dsla_status_t st = dsla_proto_error_decode(msg->env->body, msg->env->body_len, &err);
    if (st != DSLA_OK) {
        dsla_log_warn("serving: malformed ERROR from '%s': %s", msg->from, dsla_last_error());
        return;
    }
    if (!s->job || msg->env->id != s->job->fetch_id || strcmp(msg->from, s->job->from) != 0) {
        dsla_log_warn("serving: ERROR from '%s' (id %" PRIu64 "): %s: %s", msg->from, msg->env->id,
                      dsla_proto_code_name(err.code), err.message);
        return;
    }
    const dsla_proto_plan_layer_t *l = &s->job->plan.layers[s->job->next];
    dsla_error(DSLA_ERR_IO, "layer transfer of layer %d refused by %s: %s", l->layer, msg->from,
               err.message);
    job_finish(s, DSLA_ERR_IO, (dsla_proto_code_t)err.code);
}

static void on_start(dsla_actor_t *a, void *user) {
    dsla_serving_t *s = user;
    s->self = a;
    if (s->sample_ids &&
        (dsla_actor_connect(a, "distiller", s->distiller) != DSLA_OK ||
         dsla_actor_timer_start(a, DSLA_SERVING_SAMPLE_FLUSH_MS, DSLA_SERVING_SAMPLE_FLUSH_MS,
                                on_sample_flush, s, &s->sample_timer) != DSLA_OK)) {
        dsla_log_error("serving: cannot sample prompts for the distiller at %s: %s", s->distiller,
                       dsla_last_error());
        free(s->sample_ids);
        s->sample_ids = NULL;
    }
    if (!s->controller[0]) return;
    if (dsla_actor_connect(a, "controller", s->controller) != DSLA_OK ||
        dsla_actor_timer_start(a, s->report_ms, s->report_ms, on_report, s, &s->report_timer) !=
            DSLA_OK)
        dsla_log_error("serving: cannot report to the controller at %s: %s", s->controller,
                       dsla_last_error());
}

dsla_status_t dsla_serving_create(dsla_serving_t **out, const dsla_serving_config_t *config) {
    *out = NULL;
    dsla_serving_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
    dsla_status_t st =
        config->backend
            ? dsla_engine_create_on(&s->engine, config->backend, config->tokenizer, &config->engine)
            : dsla_engine_create(&s->engine, config->model, config->tokenizer, &config->engine);
    if (st != DSLA_OK) {
        free(s);
        return st;
    }
    s->mcfg = dsla_model_config(config->model);
    s->tokenizer = config->tokenizer;
    s->report_ms = config->report_ms ? config->report_ms : DSLA_SERVING_REPORT_MS;
    if (config->controller) snprintf(s->controller, sizeof s->controller, "%s", config->controller);
    s->fetch_chunk = config->fetch_chunk ? config->fetch_chunk : DSLA_PROTO_CHUNK_MAX;
    s->fetch_timeout_ms =
        config->fetch_timeout_ms ? config->fetch_timeout_ms : DSLA_SERVING_FETCH_TIMEOUT_MS;
    if (config->layer_cache) {
        if (strlen(config->layer_cache) >= sizeof s->layer_cache) {
            dsla_engine_destroy(&s->engine);
            free(s);
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "serving: the layer cache path %s is longer than %zu bytes",
                              config->layer_cache, sizeof s->layer_cache - 1);
        }
        snprintf(s->layer_cache, sizeof s->layer_cache, "%s", config->layer_cache);
        st = dsla_transfer_cache_init(s->layer_cache);
        if (st == DSLA_OK && (s->fetch_chunk > DSLA_PROTO_CHUNK_MAX))
            st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                            "serving: fetch_chunk %u is above the limit of %u", s->fetch_chunk,
                            DSLA_PROTO_CHUNK_MAX);
        if (st != DSLA_OK) {
            dsla_engine_destroy(&s->engine);
            free(s);
            return st;
        }
    }
    if (config->distiller) {
        const uint64_t per_s = config->sample_tokens_per_s ? config->sample_tokens_per_s
                                                           : DSLA_SERVING_SAMPLE_TOKENS_PER_S;
        const uint64_t tick = per_s * DSLA_SERVING_SAMPLE_FLUSH_MS / 1000;
        snprintf(s->distiller, sizeof s->distiller, "%s", config->distiller);
        s->sample_every = config->sample_every ? config->sample_every : DSLA_SERVING_SAMPLE_EVERY;
        s->sample_seed = config->sample_seed;
        s->sample_tick_tokens = tick < 1                              ? 1
                                : tick > DSLA_PROTO_SAMPLE_TOKENS_MAX ? DSLA_PROTO_SAMPLE_TOKENS_MAX
                                                                      : (uint32_t)tick;
        s->sample_left = s->sample_tick_tokens;
        s->sample_ids = malloc(DSLA_PROTO_SAMPLE_TOKENS_MAX * sizeof *s->sample_ids);
        if (!s->sample_ids) {
            dsla_engine_destroy(&s->engine);
            free(s);
            return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
        }
    }
    static const dsla_actor_handler_t handlers[] = {{DSLA_MSG_GENERATE, on_generate},
                                                    {DSLA_MSG_CANCEL, on_cancel},
                                                    {DSLA_MSG_SET_PLAN, on_set_plan},
                                                    {DSLA_MSG_LAYER_CHUNK, on_layer_chunk},
                                                    {DSLA_MSG_ERROR, on_error}};
    dsla_actor_def_t def = {
        .name = config->name ? config->name : "serving",
        .ctx = config->ctx,
        .bind = {config->endpoint},
        .handlers = handlers,
        .n_handlers = sizeof handlers / sizeof handlers[0],
        .on_start = on_start,
        .on_peer = on_peer,
        .user = s,
        .heartbeat_ms = config->heartbeat_ms,
    };
    dsla_actor_t *actor = NULL;
    st = dsla_actor_create(&actor, &def);
    if (st != DSLA_OK) {
        dsla_engine_destroy(&s->engine);
        free(s->sample_ids);
        free(s);
        return st;
    }
    s->actor = actor;
    *out = s;
    return DSLA_OK;
}

void dsla_serving_destroy(dsla_serving_t **s) {
    if (!s || !*s) return;
    dsla_actor_destroy(&(*s)->actor);
    dsla_engine_destroy(&(*s)->engine);
    job_free(&(*s)->job);
    while ((*s)->requests)
        request_unlink(*s, (*s)->requests);
    free((*s)->sample_ids);
    free(*s);
    *s = NULL;
}

const char *dsla_serving_endpoint(const dsla_serving_t *s) {
    return dsla_actor_endpoint(s->actor, 0);
}

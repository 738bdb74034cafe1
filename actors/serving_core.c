/* The serving actor's requests: submit, stream, cancel, report (serving_core.h). */
#include "actors/serving_core.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/log.h"

/* Buckets of the key -> request table: a power of two well above a replica's requests in flight
 * (max_running + max_queued), so chains stay a few entries long. */
enum { KEY_BUCKETS = 1024 };

typedef struct request {
    struct request *prev, *next; /* every request, newest first */
    struct request *chain;       /* the next in its key bucket */
    uint64_t key;
    uint64_t client_id; /* the GENERATE's correlation id */
    char client[DSLA_PROTO_NAME_MAX + 1];
    uint64_t submitted_ms;
    bool started; /* its first event has come */
    /* a send to its client failed, or the client's heartbeats stopped: the request is being
     * cancelled, no TOKEN goes any more, and its end is an ERROR saying why (best effort: a
     * client that merely stalled, or an upstream gateway whose queue was full, still learns that
     * the stream ended rather than waiting for it forever) */
    bool unreachable;
    char why[DSLA_PROTO_MESSAGE_MAX / 2];
    /* a sampled prompt, kept until the engine accepts it (ids, or text when ids is NULL) */
    bool sampled;
    int32_t *sample_ids;
    size_t n_sample_ids;
    char *sample_text;
    size_t sample_text_len;
} request_t;

struct dsla_serving_core {
    dsla_serving_core_config_t config;
    char controller[DSLA_PROTO_NAME_MAX + 1];
    char distiller[DSLA_PROTO_NAME_MAX + 1];
    dsla_serving_core_ops_t ops;
    request_t *requests;
    request_t *buckets[KEY_BUCKETS];
    size_t n_requests;
    uint64_t next_key;
    dsla_histogram_t last_ttft, last_tpot; /* at the previous report, for windowed quantiles */
    dsla_log_limit_t unreachable_log, lost_log;
    /* the texts of listed tokens: a detokenizer primed with a plain token before each, so that a
     * token's leading space survives as it does mid-text (NULL until the first, or no tokenizer) */
    dsla_detokenizer_t *lp_detok;
    int32_t lp_context;
};

/* ---- the request table ---- */

static request_t **bucket(dsla_serving_core_t *c, uint64_t key) {
    return &c->buckets[key & (KEY_BUCKETS - 1)];
}

static request_t *find_key(dsla_serving_core_t *c, uint64_t key) {
    for (request_t *r = *bucket(c, key); r; r = r->chain)
        if (r->key == key) return r;
    return NULL;
}

static void sample_drop(request_t *r) {
    free(r->sample_ids);
    free(r->sample_text);
    r->sample_ids = NULL;
    r->sample_text = NULL;
    r->sampled = false;
}

static void request_remove(dsla_serving_core_t *c, request_t *r) {
    for (request_t **p = bucket(c, r->key); *p; p = &(*p)->chain)
        if (*p == r) {
            *p = r->chain;
            break;
        }
    if (r->prev) r->prev->next = r->next;
    if (r->next) r->next->prev = r->prev;
    if (c->requests == r) c->requests = r->next;
    c->n_requests--;
    sample_drop(r);
    free(r);
}

static void request_add(dsla_serving_core_t *c, request_t *r) {
    request_t **b = bucket(c, r->key);
    r->chain = *b;
    *b = r;
    r->next = c->requests;
    if (c->requests) c->requests->prev = r;
    c->requests = r;
    c->n_requests++;
}

/* ---- GENERATE and CANCEL ---- */

/* Keeps a copy of g's prompt for the sampler, to be added once the engine accepts it. */
static void sample_keep(request_t *r, const dsla_proto_generate_t *g) {
    if (g->prompt_ids) {
        r->sample_ids = malloc((size_t)g->n_prompt_ids * sizeof *r->sample_ids + 1);
        if (!r->sample_ids) return;
        memcpy(r->sample_ids, g->prompt_ids, (size_t)g->n_prompt_ids * sizeof *r->sample_ids);
        r->n_sample_ids = (size_t)g->n_prompt_ids;
    } else {
        r->sample_text = malloc(g->prompt_len + 1);
        if (!r->sample_text) return;
        memcpy(r->sample_text, g->prompt, g->prompt_len);
        r->sample_text_len = g->prompt_len;
    }
    r->sampled = true;
}

dsla_status_t dsla_serving_core_on_generate(dsla_serving_core_t *c, const char *from, uint64_t id,
                                            const void *body, size_t len) {
    if (!from[0])
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "GENERATE: the client's routing id must be a printable name of at most "
                          "63 bytes, so that tokens can be streamed to it");
    dsla_proto_generate_t g;
    DSLA_TRY(dsla_proto_generate_decode(body, len, &g));
    if (!g.stream) {
        dsla_proto_generate_free(&g);
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "GENERATE: stream false is not served yet; send stream true");
    }
    request_t *r = calloc(1, sizeof *r);
    if (!r) {
        dsla_proto_generate_free(&g);
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "serving: out of memory");
    }
    r->key = ++c->next_key;
    r->client_id = id;
    r->submitted_ms = c->ops.now_ms(c->ops.user);
    snprintf(r->client, sizeof r->client, "%s", from);
    if (c->config.sample && dsla_serving_sample_pick(c->config.sample)) sample_keep(r, &g);
    dsla_status_t st = c->ops.submit(c->ops.user, r->key, &g);
    if (st != DSLA_OK) {
        sample_drop(r);
        free(r);
        return st;
    }
    request_add(c, r);
    return DSLA_OK;
}

dsla_status_t dsla_serving_core_on_cancel(dsla_serving_core_t *c, const char *from,
                                          const void *body, size_t len) {
    dsla_proto_cancel_t m;
    DSLA_TRY(dsla_proto_cancel_decode(body, len, &m));
    for (request_t *r = c->requests; r; r = r->next)
        if (r->client_id == m.request && strcmp(r->client, from) == 0)
            return c->ops.cancel(c->ops.user, r->key); /* its DONE "cancelled" follows */
    return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "CANCEL: no running request %llu of this client",
                      (unsigned long long)m.request);
}

/* Cancels r because its client cannot be reached (why). */
static void abandon(dsla_serving_core_t *c, request_t *r, const char *why) {
    r->unreachable = true;
    snprintf(r->why, sizeof r->why, "serving: request cancelled: %s", why);
    c->ops.cancel(c->ops.user, r->key);
}

void dsla_serving_core_on_peer_gone(dsla_serving_core_t *c, const char *peer) {
    for (request_t *r = c->requests; r; r = r->next)
        if (!r->unreachable && strcmp(r->client, peer) == 0)
            abandon(c, r, "the client's heartbeats stopped");
}

/* ---- streaming ---- */

/* The first token whose vocabulary string is plain ASCII letters: the context the texts of listed
 * tokens are decoded after. -1: none. */
static int32_t plain_token(const dsla_tokenizer_t *t) {
    for (int32_t id = 0; id < dsla_tokenizer_vocab_size(t); id++) {
        size_t len = 0;
        const char *s = dsla_tokenizer_id_to_token(t, id, &len);
        bool plain = s && len > 0 && !dsla_tokenizer_is_special(t, id);
        for (size_t i = 0; plain && i < len; i++)
            plain = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z');
        if (plain) return id;
    }
    return -1;
}

/* Appends src to out (cut at DSLA_PROTO_TOKEN_TEXT_MAX). */
static void entry_text(dsla_proto_logprob_t *out, const char *src, size_t n) {
    size_t room = DSLA_PROTO_TOKEN_TEXT_MAX - out->text_len;
    n = n < room ? n : room;
    memcpy(out->text + out->text_len, src, n);
    out->text_len += n;
}

/* A listed token with its text as it reads mid-text (" there", not "there"); special tokens have
 * none, as in the streamed text. No tokenizer: no text. */
static void logprob_entry(dsla_serving_core_t *c, int32_t id, float logprob,
                          dsla_proto_logprob_t *out) {
    out->id = id;
    out->logprob = logprob;
    out->text_len = 0;
    const dsla_tokenizer_t *t = c->config.tokenizer;
    if (!t) return;
    if (!c->lp_detok) {
        if (dsla_detokenizer_create(&c->lp_detok, t) != DSLA_OK) return;
        c->lp_context = plain_token(t);
    }
    const char *piece;
    size_t len;
    if (c->lp_context >= 0 && dsla_detokenizer_prime(c->lp_detok, &c->lp_context, 1) != DSLA_OK)
        return;
    if (dsla_detokenizer_push(c->lp_detok, id, &piece, &len) == DSLA_OK)
        entry_text(out, piece, len);
    if (dsla_detokenizer_flush(c->lp_detok, &piece, &len) == DSLA_OK) entry_text(out, piece, len);
}

/* t's logprobs of token from lp, the listed tokens with their texts. */
static void fill_logprobs(dsla_serving_core_t *c, dsla_proto_token_t *t, int32_t token,
                          const dsla_token_logprobs_t *lp) {
    t->has_logprobs = true;
    logprob_entry(c, token, lp->logprob, &t->chosen);
    t->n_top = lp->n_top < DSLA_PROTO_LOGPROBS_MAX ? lp->n_top : DSLA_PROTO_LOGPROBS_MAX;
    for (int i = 0; i < t->n_top; i++)
        logprob_entry(c, lp->top_ids[i], lp->top_logprobs[i], &t->top[i]);
}

static dsla_status_t send_token(dsla_serving_core_t *c, const request_t *r,
                                const dsla_proto_token_t *t) {
    dsla_proto_buf_t body;
    dsla_status_t st = dsla_proto_token_encode(t, &body);
    if (st == DSLA_OK)
        st = c->ops.send(c->ops.user, r->client, DSLA_MSG_TOKEN, r->client_id, body.data, body.len);
    dsla_proto_buf_free(&body);
    return st;
}

/* The prompt's frames (echo with logprobs): each prompt token with its own text, and from the
 * second on its logprobs. */
static dsla_status_t send_prompt(dsla_serving_core_t *c, const request_t *r,
                                 const dsla_serving_event_t *ev, const dsla_serving_batch_t *b) {
    dsla_proto_token_t *t = malloc(sizeof *t);
    if (!t) return dsla_error_oom("serving: TOKEN");
    dsla_status_t st = DSLA_OK;
    for (int p = 0; p < ev->n_prompt && st == DSLA_OK; p++) {
        const int32_t id = b->prompt_ids[ev->prompt_off + (size_t)p];
        memset(t, 0, sizeof *t);
        t->token = id;
        t->prompt = true;
        if (p > 0)
            fill_logprobs(c, t, id, &b->prompt_lp[ev->prompt_off + (size_t)p]);
        else
            logprob_entry(c, id, 0.0f, &t->chosen);
        t->text_len = t->chosen.text_len;
        memcpy(t->text, t->chosen.text, t->text_len);
        st = send_token(c, r, t);
    }
    free(t);
    return st;
}

static dsla_status_t send_text(dsla_serving_core_t *c, const request_t *r,
                               const dsla_serving_event_t *ev, const char *text, size_t len) {
    dsla_proto_token_t *t = calloc(1, sizeof *t);
    if (!t) return dsla_error_oom("serving: TOKEN");
    const int32_t token = ev->token;
    if (ev->has_logprobs && token >= 0) fill_logprobs(c, t, token, &ev->logprobs);
    dsla_status_t st = DSLA_OK;
    size_t off = 0;
    do { /* pieces longer than a TOKEN holds go as several, the extra ones without a token */
        size_t n = len - off < DSLA_PROTO_PIECE_MAX ? len - off : DSLA_PROTO_PIECE_MAX;
        t->token = off == 0 ? token : -1;
        t->has_logprobs = t->has_logprobs && off == 0;
        t->text_len = n;
        if (n) memcpy(t->text, text + off, n);
        st = send_token(c, r, t);
        off += n;
    } while (st == DSLA_OK && off < len);
    free(t);
    return st;
}

static void send_end(dsla_serving_core_t *c, const request_t *r, const dsla_serving_event_t *ev,
                     const dsla_serving_batch_t *b) {
    dsla_proto_buf_t body = {0};
    dsla_status_t st;
    uint32_t type;
    if (ev->status == DSLA_OK && !r->unreachable) {
        dsla_proto_done_t done = {.finish = ev->finish == DSLA_FINISH_STOP ? DSLA_PROTO_FINISH_STOP
                                            : ev->finish == DSLA_FINISH_CANCELLED
                                                ? DSLA_PROTO_FINISH_CANCELLED
                                                : DSLA_PROTO_FINISH_LENGTH,
                                  .prompt_tokens = (uint32_t)ev->usage.prompt_tokens,
                                  .completion_tokens = (uint32_t)ev->usage.completion_tokens,
                                  .plan_id = ev->usage.plan_id,
                                  .preemptions = (uint32_t)ev->usage.preemptions};
        if (c->config.name) snprintf(done.replica, sizeof done.replica, "%s", c->config.name);
        type = DSLA_MSG_DONE;
        st = dsla_proto_done_encode(&done, &body);
    } else if (r->unreachable) {
        dsla_proto_error_t err = {.code = DSLA_CODE_UNAVAILABLE};
        snprintf(err.message, sizeof err.message, "%s", r->why);
        type = DSLA_MSG_ERROR;
        st = dsla_proto_error_encode(&err, &body);
    } else { /* the engine's own sentence, which names the field, the limit and the value */
        dsla_proto_error_t err = {.code = dsla_proto_code_from_status(ev->status)};
        if (ev->message_len)
            snprintf(err.message, sizeof err.message, "%.*s", (int)ev->message_len,
                     b->text + ev->message_off);
        else
            snprintf(err.message, sizeof err.message, "%s", dsla_status_name(ev->status));
        type = DSLA_MSG_ERROR;
        st = dsla_proto_error_encode(&err, &body);
    }
    if (st == DSLA_OK)
        st = c->ops.send(c->ops.user, r->client, type, r->client_id, body.data, body.len);
    if (st != DSLA_OK)
        DSLA_LOG_LIMITED(&c->lost_log, DSLA_LOG_INFO,
                         "serving: the end of request %" PRIu64 " of %s is lost: %s", r->client_id,
                         r->client, dsla_last_error());
    dsla_proto_buf_free(&body);
}

void dsla_serving_core_on_events(dsla_serving_core_t *c, const dsla_serving_batch_t *b) {
    for (size_t i = 0; i < b->n_events; i++) {
        const dsla_serving_event_t *ev = &b->events[i];
        request_t *r = find_key(c, ev->key);
        if (!r) continue;
        r->started = true;
        if (r->sampled) {
            if (!(ev->finished && ev->status != DSLA_OK)) /* accepted by the engine */
                dsla_serving_sample_add(c->config.sample, r->sample_ids, r->n_sample_ids,
                                        r->sample_text, r->sample_text_len);
            sample_drop(r);
        }
        if (!r->unreachable &&
            ((ev->n_prompt > 0 && send_prompt(c, r, ev, b) != DSLA_OK) ||
             ((ev->token >= 0 || ev->text_len > 0) &&
              send_text(c, r, ev, b->text + ev->text_off, ev->text_len) != DSLA_OK))) {
            DSLA_LOG_LIMITED(&c->unreachable_log, DSLA_LOG_INFO,
                             "serving: cancelling request %" PRIu64 " of %s: %s", r->client_id,
                             r->client, dsla_last_error());
            abandon(c, r, dsla_last_error());
        }
        if (!ev->finished) continue;
        send_end(c, r, ev, b);
        request_remove(c, r);
    }
}

/* ---- reports ---- */

/* The p90 of what a cumulative histogram gained since *prev (then moved to now), in ms. */
static double window_p90_ms(const dsla_histogram_t *now, dsla_histogram_t *prev) {
    dsla_histogram_t d = *now;
    for (int i = 0; i <= DSLA_HISTOGRAM_BUCKETS; i++)
        d.counts[i] -= prev->counts[i];
    d.count -= prev->count;
    *prev = *now;
    return dsla_histogram_quantile(&d, 0.9) * 1e3;
}

static void histogram_copy(dsla_proto_histogram_t *out, const dsla_histogram_t *h) {
    _Static_assert(DSLA_PROTO_HISTOGRAM_BUCKETS == DSLA_HISTOGRAM_BUCKETS,
                   "the wire's histogram is the engine's");
    memcpy(out->counts, h->counts, sizeof out->counts);
    out->count = h->count;
    out->sum = h->sum;
}

/* The engine's load, the plan and the totals into *r; window: the p90s of the requests since the
 * previous call with window (the controller's reports), else 0. */
static void load_fill(dsla_serving_core_t *c, const dsla_engine_metrics_t *m,
                      dsla_proto_load_report_t *r, bool window) {
    uint64_t now = c->ops.now_ms(c->ops.user), oldest = now;
    for (const request_t *q = c->requests; q; q = q->next)
        if (!q->started && q->submitted_ms < oldest) oldest = q->submitted_ms;
    *r = (dsla_proto_load_report_t){
        .num_layers = c->config.num_layers,
        .queue_length = (uint32_t)m->queue_length,
        .running = (uint32_t)m->running,
        .waiting_tokens = (uint64_t)m->waiting_prompt_tokens,
        .oldest_wait_ms = (uint32_t)(now - oldest),
        .kv_used = (uint32_t)m->kv_blocks_used,
        .kv_total = (uint32_t)m->kv_blocks_total,
        .slots_used = (uint32_t)m->state_slots_used,
        .slots_total = (uint32_t)m->state_slots_total,
        .ttft_p90_ms = window ? window_p90_ms(&m->ttft, &c->last_ttft) : 0.0,
        .tpot_p90_ms = window ? window_p90_ms(&m->tpot, &c->last_tpot) : 0.0,
        .tokens_per_s = m->tokens_per_second,
        .plan_id = m->plan_id,
        .has_totals = true,
        .requests_finished = m->requests_finished,
        .prompt_tokens = m->prompt_tokens_computed,
        .generated_tokens = m->generated_tokens,
        .preemptions = m->preemptions,
    };
    histogram_copy(&r->hist[DSLA_PROTO_HIST_TTFT], &m->ttft);
    histogram_copy(&r->hist[DSLA_PROTO_HIST_TPOT], &m->tpot);
    histogram_copy(&r->hist[DSLA_PROTO_HIST_E2E], &m->e2e);
    histogram_copy(&r->hist[DSLA_PROTO_HIST_QUEUE], &m->queue);
    if (c->config.plans) {
        const dsla_proto_dsla_layer_t *layers;
        r->plan_id = dsla_serving_plans_id(c->config.plans);
        r->n_dsla = dsla_serving_plans_dsla(c->config.plans, &layers);
        memcpy(r->dsla, layers, r->n_dsla * sizeof layers[0]);
    }
}

/* The load report, encoded into *body; window as for load_fill. */
static dsla_status_t load_encode(dsla_serving_core_t *c, bool window, dsla_proto_buf_t *body,
                                 dsla_proto_load_report_t **kept) {
    dsla_engine_metrics_t *m = malloc(sizeof *m);
    dsla_proto_load_report_t *r = calloc(1, sizeof *r);
    dsla_status_t st = dsla_error_oom("serving: a LOAD_REPORT");
    if (m && r) {
        c->ops.metrics(c->ops.user, m);
        load_fill(c, m, r, window);
        st = dsla_proto_load_report_encode(r, body);
    }
    free(m);
    if (kept && st == DSLA_OK)
        *kept = r;
    else
        free(r);
    return st;
}

void dsla_serving_core_on_report(dsla_serving_core_t *c) {
    if (!c->controller[0]) return;
    dsla_proto_buf_t body = {0};
    dsla_proto_load_report_t *r = NULL;
    if (load_encode(c, true, &body, &r) != DSLA_OK ||
        c->ops.send(c->ops.user, c->controller, DSLA_MSG_LOAD_REPORT, 0, body.data, body.len) !=
            DSLA_OK)
        dsla_log_info("serving: LOAD_REPORT not sent: %s", dsla_last_error());
    else /* the cadence under load, for operators and tests/integration/test_serve_load.c */
        dsla_log_debug("serving: LOAD_REPORT sent: queue %u, running %u, plan %" PRIu64
                       " with %u DSLA layers",
                       r->queue_length, r->running, r->plan_id, r->n_dsla);
    dsla_proto_buf_free(&body);
    free(r);
}

dsla_status_t dsla_serving_core_on_status(dsla_serving_core_t *c, dsla_proto_buf_t *body) {
    return load_encode(c, false, body, NULL);
}

static dsla_status_t send_samples(void *user, const void *body, size_t len) {
    dsla_serving_core_t *c = user;
    return c->ops.send(c->ops.user, c->distiller, DSLA_MSG_PROMPT_SAMPLES, 0, body, len);
}

void dsla_serving_core_on_sample_flush(dsla_serving_core_t *c) {
    if (c->config.sample) dsla_serving_sample_flush(c->config.sample, send_samples, c);
}

size_t dsla_serving_core_requests(const dsla_serving_core_t *c) {
    return c->n_requests;
}

/* ---- life cycle ---- */

dsla_status_t dsla_serving_core_create(dsla_serving_core_t **out,
                                       const dsla_serving_core_config_t *config,
                                       const dsla_serving_core_ops_t *ops) {
    *out = NULL;
    dsla_serving_core_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("serving");
    c->config = *config;
    c->ops = *ops;
    if (config->controller) snprintf(c->controller, sizeof c->controller, "%s", config->controller);
    if (config->distiller) snprintf(c->distiller, sizeof c->distiller, "%s", config->distiller);
    *out = c;
    return DSLA_OK;
}

void dsla_serving_core_destroy(dsla_serving_core_t **c) {
    if (!c || !*c) return;
    while ((*c)->requests)
        request_remove(*c, (*c)->requests);
    dsla_detokenizer_destroy(&(*c)->lp_detok);
    free(*c);
    *c = NULL;
}

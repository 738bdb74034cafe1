/* The serving actor: GENERATE/CANCEL handlers over dsla_engine_t, an idle-aware step driver, and
 * the controller's side of it: periodic LOAD_REPORTs and SET_PLAN. */
#include "actors/serving.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/cancel.h"
#include "actors/clock.h"
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

struct dsla_serving {
    dsla_actor_t *actor; /* the creator's handle: create, endpoint, destroy */
    dsla_actor_t *self;  /* the same actor as its own thread sees it, set in on_start */
    dsla_engine_t *engine;
    dsla_actor_timer_t *step_timer;
    request_t *requests;
    const dsla_model_config_t *mcfg;
    /* the controller's side: where reports go, and the plan's DSLA layers as SET_PLAN named them
     * (so that reports need not checksum the weights again) */
    char controller[DSLA_ACTOR_ENDPOINT_MAX];
    uint32_t report_ms;
    dsla_actor_timer_t *report_timer;
    dsla_histogram_t last_ttft, last_tpot; /* at the previous report, for windowed quantiles */
    uint32_t n_plan_dsla;
    dsla_proto_dsla_layer_t plan_dsla[DSLA_PROTO_LAYERS_MAX];
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
                   dsla_status_name(ev->status));
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

static void on_set_plan(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    dsla_proto_set_plan_t p;
    dsla_status_t st = dsla_proto_set_plan_decode(msg->env->body, msg->env->body_len, &p);
    if (st != DSLA_OK) {
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
        return;
    }
    dsla_proto_plan_reply_t *r = calloc(1, sizeof *r);
    if (!r) {
        dsla_proto_set_plan_free(&p);
        dsla_actor_reply_error(a, msg, DSLA_CODE_RESOURCE_EXHAUSTED, "serving: out of memory");
        return;
    }
    st = adopt_plan(s, &p);
    r->seq = p.seq;
    if (st != DSLA_OK) {
        r->code = dsla_proto_code_from_status(st);
        snprintf(r->reason, sizeof r->reason, "%s", dsla_last_error());
        dsla_log_warn("serving: plan refused, the old one stays: %s", r->reason);
    }
    r->plan_id = dsla_plan_id(dsla_engine_plan(s->engine));
    r->n_dsla = s->n_plan_dsla;
    memcpy(r->dsla, s->plan_dsla, s->n_plan_dsla * sizeof s->plan_dsla[0]);
    dsla_proto_buf_t body;
    if (dsla_proto_plan_reply_encode(r, &body) == DSLA_OK)
        dsla_actor_reply(a, msg, st == DSLA_OK ? DSLA_MSG_PLAN_ACK : DSLA_MSG_PLAN_NACK, body.data,
                         body.len);
    dsla_proto_buf_free(&body);
    dsla_proto_set_plan_free(&p);
    free(r);
}

static void on_start(dsla_actor_t *a, void *user) {
    dsla_serving_t *s = user;
    s->self = a;
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
    s->report_ms = config->report_ms ? config->report_ms : DSLA_SERVING_REPORT_MS;
    if (config->controller) snprintf(s->controller, sizeof s->controller, "%s", config->controller);
    static const dsla_actor_handler_t handlers[] = {{DSLA_MSG_GENERATE, on_generate},
                                                    {DSLA_MSG_CANCEL, on_cancel},
                                                    {DSLA_MSG_SET_PLAN, on_set_plan}};
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
    while ((*s)->requests)
        request_unlink(*s, (*s)->requests);
    free(*s);
    *s = NULL;
}

const char *dsla_serving_endpoint(const dsla_serving_t *s) {
    return dsla_actor_endpoint(s->actor, 0);
}

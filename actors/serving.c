/* The serving actor: GENERATE/CANCEL handlers over dsla_engine_t and an idle-aware step driver. */
#include "actors/serving.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/cancel.h"
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
} request_t;

struct dsla_serving {
    dsla_actor_t *actor; /* the creator's handle: create, endpoint, destroy */
    dsla_actor_t *self;  /* the same actor as its own thread sees it, set in on_start */
    dsla_engine_t *engine;
    dsla_actor_timer_t *step_timer;
    request_t *requests;
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

static void on_start(dsla_actor_t *a, void *user) {
    dsla_serving_t *s = user;
    s->self = a;
}

dsla_status_t dsla_serving_create(dsla_serving_t **out, const dsla_serving_config_t *config) {
    *out = NULL;
    dsla_serving_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
    dsla_status_t st =
        dsla_engine_create(&s->engine, config->model, config->tokenizer, &config->engine);
    if (st != DSLA_OK) {
        free(s);
        return st;
    }
    static const dsla_actor_handler_t handlers[] = {{DSLA_MSG_GENERATE, on_generate},
                                                    {DSLA_MSG_CANCEL, on_cancel}};
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

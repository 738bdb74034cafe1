/* The distiller's announcements, progress and sampled prompts (distiller_core.h). */
#include "actors/distiller_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/control/layer_catalogue.h"
#include "runtime/core/log.h"

struct dsla_distiller_core {
    dsla_distiller_core_config_t config;
    char controller[DSLA_PROTO_NAME_MAX + 1];
    dsla_distiller_core_ops_t ops;
    bool controller_alive;
    /* announcements, in the order the run finished them */
    dsla_proto_layer_ready_t *ready[DSLA_PROTO_LAYERS_MAX];
    int n_ready;
    int n_sent; /* of them, sent since the controller was last found alive */
    /* the latest progress, and what of it went out */
    dsla_proto_distill_progress_t progress;
    uint64_t progress_seq, progress_sent, progress_at_ms;
    bool progress_now; /* due whatever progress_ms says: the controller was just found */
    dsla_reservoir_t reservoir;
    uint64_t samples_received;
    dsla_log_limit_t send_log;
};

static uint32_t saturate_u32(uint64_t x) {
    return x > UINT32_MAX ? UINT32_MAX : (uint32_t)x;
}

/* Encodes and sends one message to the controller; false (logged, rate-limited) when it could not
 * leave, to be tried again. */
static bool send_body(dsla_distiller_core_t *c, uint32_t type, dsla_status_t encoded,
                      dsla_proto_buf_t *body) {
    dsla_status_t st = encoded;
    if (st == DSLA_OK) st = c->ops.send(c->ops.user, c->controller, type, 0, body->data, body->len);
    if (st != DSLA_OK)
        DSLA_LOG_LIMITED(&c->send_log, DSLA_LOG_WARN, "distiller: %s not sent (tried again): %s",
                         dsla_proto_type_name(type), dsla_last_error());
    dsla_proto_buf_free(body);
    return st == DSLA_OK;
}

/* Sends what the controller has not been sent: announcements in order, then the progress when it
 * changed and is due. */
static void send_pending(dsla_distiller_core_t *c, uint64_t now_ms) {
    if (!c->controller_alive) return;
    dsla_proto_buf_t body;
    while (c->n_sent < c->n_ready) {
        const dsla_proto_layer_ready_t *r = c->ready[c->n_sent];
        if (!send_body(c, DSLA_MSG_LAYER_READY, dsla_proto_layer_ready_encode(r, &body), &body))
            return; /* the rest after it, in order, at a later tick */
        dsla_log_info("distiller: announced layer %d version %u (%s)", r->layer, r->version,
                      r->path);
        c->n_sent++;
    }
    if (c->progress_seq == c->progress_sent) return;
    if (!c->progress_now && c->progress_sent && c->config.progress_ms &&
        now_ms < c->progress_at_ms + c->config.progress_ms)
        return;
    dsla_proto_distill_progress_t p = c->progress;
    const dsla_reservoir_t *res = &c->reservoir;
    p.layers_done = (uint32_t)c->n_ready;
    p.samples_received = saturate_u32(c->samples_received);
    p.samples_held = (uint32_t)res->n;
    p.sample_tokens_held = saturate_u32(dsla_reservoir_tokens(res));
    p.samples_used = saturate_u32(res->used);
    p.sample_tokens_used = saturate_u32(res->used_tokens);
    if (!send_body(c, DSLA_MSG_DISTILL_PROGRESS, dsla_proto_distill_progress_encode(&p, &body),
                   &body))
        return;
    c->progress_sent = c->progress_seq;
    c->progress_at_ms = now_ms;
    c->progress_now = false;
}

void dsla_distiller_core_on_progress(dsla_distiller_core_t *c,
                                     const dsla_proto_distill_progress_t *p, uint64_t now_ms) {
    c->progress = *p;
    c->progress_seq++;
    send_pending(c, now_ms);
}

void dsla_distiller_core_on_layer_ready(dsla_distiller_core_t *c, dsla_proto_layer_ready_t **a,
                                        uint64_t now_ms) {
    if (c->n_ready >= DSLA_PROTO_LAYERS_MAX) { /* a run converts at most that many layers */
        dsla_log_error("distiller: more than %d layer versions in one run; layer %d's is not "
                       "announced",
                       DSLA_PROTO_LAYERS_MAX, (*a)->layer);
        free(*a);
        *a = NULL;
        return;
    }
    c->ready[c->n_ready++] = *a;
    *a = NULL;
    c->progress_seq++; /* layers_done changed */
    send_pending(c, now_ms);
}

dsla_status_t dsla_distiller_core_on_samples(dsla_distiller_core_t *c, const void *body,
                                             size_t len) {
    dsla_proto_prompt_samples_t p;
    DSLA_TRY(dsla_proto_prompt_samples_decode(body, len, &p));
    const int32_t *ids = p.ids;
    dsla_status_t st = DSLA_OK;
    for (uint32_t i = 0; i < p.n_prompts && st == DSLA_OK; i++) {
        st = dsla_reservoir_offer(&c->reservoir, ids, (int)p.lens[i]);
        ids += p.lens[i];
    }
    c->samples_received += p.n_prompts;
    c->progress_seq++;
    if (st != DSLA_OK) dsla_log_warn("distiller: sampled prompts lost: %s", dsla_last_error());
    dsla_proto_prompt_samples_free(&p);
    return DSLA_OK;
}

void dsla_distiller_core_on_peer(dsla_distiller_core_t *c, const char *peer, bool alive,
                                 uint64_t now_ms) {
    if (strcmp(peer, c->controller) != 0) return;
    c->controller_alive = alive;
    if (!alive) return;
    c->n_sent = 0; /* a controller found (again) gets everything */
    c->progress_sent = 0;
    c->progress_now = true;
    send_pending(c, now_ms);
}

void dsla_distiller_core_on_tick(dsla_distiller_core_t *c, uint64_t now_ms) {
    send_pending(c, now_ms);
}

dsla_status_t dsla_distiller_core_pack(dsla_distiller_core_t *c, dsla_corpus_t *pool, int bos,
                                       int vocab, int *added) {
    *added = 0;
    dsla_status_t st = dsla_reservoir_pack(&c->reservoir, pool, bos, vocab, added);
    c->progress_seq++;
    return st;
}

/* ---- the run's reports, converted on the worker ---- */

void dsla_distiller_progress_update(dsla_proto_distill_progress_t *p,
                                    const dsla_distill_progress_t *g) {
    p->state = DSLA_PROTO_DISTILL_TRAINING;
    p->layers_total = (uint32_t)g->n_layers;
    p->layer = g->layer;
    p->step = (uint32_t)g->step;
    p->steps = (uint32_t)g->steps;
    p->loss = g->loss;
    p->tokens_per_s = g->tokens_per_second;
    p->seconds_left = g->seconds_left;
}

dsla_status_t dsla_distiller_announcement(const char *out_dir, int steps,
                                          const dsla_distill_layer_report_t *r,
                                          dsla_proto_layer_ready_t *a) {
    char name[DSLA_PROTO_PATH_MAX + 64];
    if (snprintf(name, sizeof name, "%s/layer-%d.safetensors", out_dir, r->layer) >=
        (int)sizeof name)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "distiller: %s: the path is too long",
                          out_dir);
    dsla_catalogue_entry_t e;
    int order[DSLA_PROTO_LAYERS_MAX], n_order = 0;
    DSLA_TRY(dsla_catalogue_read(name, &e, order, &n_order));
    *a = (dsla_proto_layer_ready_t){.layer = e.layer,
                                    .version = (uint32_t)e.version,
                                    .position = (uint32_t)r->k,
                                    .n_order = (uint32_t)n_order,
                                    .checksum = e.checksum,
                                    .steps = (uint32_t)steps,
                                    .init_eval_mse = r->init_eval_mse,
                                    .eval_mse = r->eval_mse,
                                    .train_loss = r->train_loss,
                                    .eval_ppl = r->eval_ppl};
    for (int i = 0; i < n_order; i++)
        a->order[i] = order[i];
    if (a->position >= a->n_order)
        return dsla_error(DSLA_ERR_FORMAT, "%s: order position %u outside its order of %u", name,
                          a->position, a->n_order);
    snprintf(a->path, sizeof a->path, "%s", e.path);
    return dsla_catalogue_file_digest(name, &a->size, &a->xxh64);
}

int dsla_distiller_core_ready(const dsla_distiller_core_t *c) {
    return c->n_ready;
}

int dsla_distiller_core_sent(const dsla_distiller_core_t *c) {
    return c->n_sent;
}

dsla_status_t dsla_distiller_core_create(dsla_distiller_core_t **out,
                                         const dsla_distiller_core_config_t *config,
                                         const dsla_distiller_core_ops_t *ops) {
    *out = NULL;
    if (!config->controller || strlen(config->controller) > DSLA_PROTO_NAME_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "distiller: the controller's peer name must be 1 to %d bytes",
                          DSLA_PROTO_NAME_MAX);
    dsla_distiller_core_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("distiller");
    c->config = *config;
    c->ops = *ops;
    snprintf(c->controller, sizeof c->controller, "%s", config->controller);
    c->config.controller = c->controller;
    c->config.first_message = NULL;
    dsla_status_t st = dsla_reservoir_init(&c->reservoir, config->reservoir_prompts,
                                           config->seq_len, config->seed);
    if (st != DSLA_OK) {
        free(c);
        return st;
    }
    c->progress = (dsla_proto_distill_progress_t){.state = DSLA_PROTO_DISTILL_LOADING, .layer = -1};
    if (config->first_message)
        snprintf(c->progress.message, sizeof c->progress.message, "%s", config->first_message);
    c->progress_seq = 1;
    *out = c;
    return DSLA_OK;
}

void dsla_distiller_core_destroy(dsla_distiller_core_t **c) {
    if (!c || !*c) return;
    for (int i = 0; i < (*c)->n_ready; i++)
        free((*c)->ready[i]);
    dsla_reservoir_free(&(*c)->reservoir);
    free(*c);
    *c = NULL;
}

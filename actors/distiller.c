/* The distiller actor: a worker thread running the distillation engine, an outbox it fills, and
 * the actor's timer that announces what it holds to the controller (distiller.h). */
#define _DEFAULT_SOURCE /* realpath */
#include "actors/distiller.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/control/layer_catalogue.h"
#include "runtime/core/log.h"
#include "runtime/model/tokenizer.h"

/* The controller as the actor names its peer. */
#define CONTROLLER_PEER "controller"

/* What the worker hands the actor; guarded by lock. */
typedef struct {
    dsla_proto_distill_progress_t progress;
    uint64_t progress_seq; /* bumped on every change */
    int n_ready;
    dsla_proto_layer_ready_t *ready[DSLA_PROTO_LAYERS_MAX];
} outbox_t;

struct dsla_distiller {
    dsla_actor_t *actor;
    dsla_actor_t *self;
    /* the run's configuration, owned copies */
    char model_dir[PATH_MAX];
    char out_dir[PATH_MAX];
    char *data[DSLA_DISTILLER_DATA_MAX];
    int n_data;
    dsla_distill_params_t params;
    int seq_len, max_sequences, eval_sequences;
    bool on_gpu;
    dsla_distill_cuda_opts_t cuda;
    /* worker */
    pthread_t worker;
    bool worker_started;
    atomic_bool stop;
    int bos, vocab; /* the teacher's, for packing samples; worker only */
    pthread_mutex_t lock;
    outbox_t box;
    /* prompts sampled from live traffic; guarded by lock */
    dsla_reservoir_t reservoir;
    uint64_t samples_received;
    /* actor thread only */
    dsla_actor_timer_t *poll_timer;
    bool controller_alive;
    int n_sent;             /* announcements sent since the controller was last found alive */
    uint64_t progress_sent; /* progress_seq last sent */
};

/* ---- the worker ---- */

static void post_progress(dsla_distiller_t *d, const dsla_proto_distill_progress_t *p) {
    pthread_mutex_lock(&d->lock);
    d->box.progress = *p;
    d->box.progress_seq++;
    pthread_mutex_unlock(&d->lock);
}

/* Updates the state (and the message) of the posted progress. */
static void post_state(dsla_distiller_t *d, dsla_proto_distill_state_t state, const char *message) {
    pthread_mutex_lock(&d->lock);
    dsla_proto_distill_progress_t p = d->box.progress;
    pthread_mutex_unlock(&d->lock);
    p.state = state;
    snprintf(p.message, sizeof p.message, "%s", message);
    post_progress(d, &p);
}

static void on_progress(void *user, const dsla_distill_progress_t *g) {
    dsla_distiller_t *d = user;
    pthread_mutex_lock(&d->lock);
    dsla_proto_distill_progress_t *p = &d->box.progress;
    p->state = DSLA_PROTO_DISTILL_TRAINING;
    p->layers_total = (uint32_t)g->n_layers;
    p->layer = g->layer;
    p->step = (uint32_t)g->step;
    p->steps = (uint32_t)g->steps;
    p->loss = g->loss;
    p->tokens_per_s = g->tokens_per_second;
    p->seconds_left = g->seconds_left;
    d->box.progress_seq++;
    pthread_mutex_unlock(&d->lock);
}

/* The announcement of a finished version: its header, and the size and hash of the whole file. */
static dsla_status_t build_ready(const dsla_distiller_t *d, const dsla_distill_layer_report_t *r,
                                 dsla_proto_layer_ready_t *a) {
    char name[PATH_MAX + 64];
    snprintf(name, sizeof name, "%s/layer-%d.safetensors", d->out_dir, r->layer);
    dsla_catalogue_entry_t e;
    int order[DSLA_PROTO_LAYERS_MAX], n_order = 0;
    DSLA_TRY(dsla_catalogue_read(name, &e, order, &n_order));
    *a = (dsla_proto_layer_ready_t){.layer = e.layer,
                                    .version = (uint32_t)e.version,
                                    .position = (uint32_t)r->k,
                                    .n_order = (uint32_t)n_order,
                                    .checksum = e.checksum,
                                    .steps = (uint32_t)d->params.steps,
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

static void on_layer_done(void *user, const dsla_distill_layer_report_t *r) {
    dsla_distiller_t *d = user;
    dsla_proto_layer_ready_t *a = malloc(sizeof *a);
    dsla_status_t st = a ? build_ready(d, r, a) : dsla_error_oom("distiller");
    if (st != DSLA_OK) { /* not announced; the controller still finds it by scanning */
        dsla_log_error("distiller: layer %d's version cannot be announced: %s", r->layer,
                       dsla_last_error());
        free(a);
        return;
    }
    pthread_mutex_lock(&d->lock);
    if (d->box.n_ready < DSLA_PROTO_LAYERS_MAX)
        d->box.ready[d->box.n_ready++] = a;
    else
        free(a);
    d->box.progress.layers_done = (uint32_t)d->box.n_ready;
    d->box.progress_seq++;
    pthread_mutex_unlock(&d->lock);
}

static bool should_stop(void *user) {
    dsla_distiller_t *d = user;
    return atomic_load(&d->stop);
}

/* The engine's extend_train: the reservoir's prompts as extra training sequences of this layer. */
static dsla_status_t extend_train(void *user, int k, int layer, dsla_corpus_t *pool) {
    (void)k;
    dsla_distiller_t *d = user;
    int added = 0;
    pthread_mutex_lock(&d->lock);
    const int held = d->reservoir.n;
    dsla_status_t st = dsla_reservoir_pack(&d->reservoir, pool, d->bos, d->vocab, &added);
    d->box.progress_seq++;
    pthread_mutex_unlock(&d->lock);
    if (held > 0)
        dsla_log_info("distiller: layer %d trains on %d more sequences from %d sampled prompts",
                      layer, added, held);
    return st;
}

/* Device bytes the run needs on its GPU: the corpus, and as many extra training sequences as the
 * reservoir may add to a layer's pool. */
static size_t gpu_need(const dsla_distiller_t *d, const dsla_model_t *model,
                       const dsla_corpus_t *train, const dsla_corpus_t *eval) {
    return dsla_distill_cuda_bytes(dsla_model_config(model), d->cuda.dtype, d->seq_len,
                                   d->params.batch, train->num_sequences + d->reservoir.capacity,
                                   eval->num_sequences);
}

/* Loads the teacher and the corpus, then runs; every outcome ends in the posted state. */
static void *worker_main(void *arg) {
    dsla_distiller_t *d = arg;
    dsla_model_t *model = NULL;
    dsla_tokenizer_t *tok = NULL;
    dsla_corpus_t train = {0}, eval = {0};
    dsla_distill_backend_t *backend = NULL;
    dsla_distill_report_t *report = calloc(1, sizeof *report);
    dsla_status_t st = report ? dsla_model_load(&model, d->model_dir) : dsla_error_oom("distiller");
    if (st == DSLA_OK) st = dsla_tokenizer_load_dir(&tok, d->model_dir);
    if (st == DSLA_OK)
        st = dsla_corpus_load(&train, tok, (const char *const *)d->data, d->n_data, d->seq_len,
                              d->max_sequences > 0 ? d->max_sequences + d->eval_sequences : 0);
    if (st == DSLA_OK) st = dsla_corpus_split(&train, &eval, d->eval_sequences);
    if (st == DSLA_OK) {
        d->bos = dsla_tokenizer_bos_id(tok);
        d->vocab = dsla_model_config(model)->vocab_size;
        const int n_layers = dsla_model_config(model)->num_layers;
        const int total = d->params.layers ? d->params.layers : n_layers;
        dsla_proto_distill_progress_t p = {
            .state = DSLA_PROTO_DISTILL_TRAINING, .layers_total = (uint32_t)total, .layer = -1};
        char device[96] = "";
        if (d->on_gpu) /* the backend binds this thread to the GPU: never the actor's loop */
            snprintf(device, sizeof device, " on GPU %d (%s, about %zu MiB of device memory)",
                     d->cuda.gpu, d->cuda.dtype == DSLA_DTYPE_F32 ? "fp32" : "bf16",
                     (gpu_need(d, model, &train, &eval) >> 20) + 1);
        snprintf(p.message, sizeof p.message,
                 "%d training and %d held-out sequences of %d tokens%s, into %.300s",
                 train.num_sequences, eval.num_sequences, d->seq_len, device, d->out_dir);
        post_progress(d, &p);
        if (d->on_gpu) dsla_log_info("distiller: %s", p.message);
        const dsla_distill_callbacks_t cb = {on_progress, on_layer_done, d, should_stop,
                                             extend_train};
        st = d->on_gpu ? dsla_distill_backend_cuda_create(&backend, model, &d->cuda)
                       : dsla_distill_backend_cpu_create(&backend, model);
        if (st == DSLA_OK)
            st = dsla_distill_run_on(backend, model, &train, &eval, &d->params, d->out_dir, &cb,
                                     report);
    }
    dsla_distill_backend_destroy(&backend);
    if (st == DSLA_OK) {
        char message[DSLA_PROTO_MESSAGE_MAX + 1];
        snprintf(message, sizeof message, "%d layer versions in %.400s (teacher ppl %.4f)",
                 report->n_converted, d->out_dir, report->teacher_ppl);
        post_state(d, DSLA_PROTO_DISTILL_DONE, message);
    } else {
        post_state(
            d, st == DSLA_ERR_CANCELLED ? DSLA_PROTO_DISTILL_STOPPED : DSLA_PROTO_DISTILL_FAILED,
            dsla_last_error());
        dsla_log_warn("distiller: %s", dsla_last_error());
    }
    dsla_corpus_free(&train);
    dsla_corpus_free(&eval);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&model);
    free(report);
    return NULL;
}

/* ---- the actor ---- */

static uint32_t saturate_u32(uint64_t x) {
    return x > UINT32_MAX ? UINT32_MAX : (uint32_t)x;
}

/* Fills p's sample counts; the caller holds the lock. */
static void sample_counts(const dsla_distiller_t *d, dsla_proto_distill_progress_t *p) {
    const dsla_reservoir_t *r = &d->reservoir;
    p->samples_received = saturate_u32(d->samples_received);
    p->samples_held = (uint32_t)r->n;
    p->sample_tokens_held = saturate_u32(dsla_reservoir_tokens(r));
    p->samples_used = saturate_u32(r->used);
    p->sample_tokens_used = saturate_u32(r->used_tokens);
}

/* PROMPT_SAMPLES from a serving actor: every prompt is offered to the reservoir. */
static void on_prompt_samples(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_distiller_t *d = user;
    dsla_proto_prompt_samples_t p;
    dsla_status_t st = dsla_proto_prompt_samples_decode(msg->env->body, msg->env->body_len, &p);
    if (st != DSLA_OK) {
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
        return;
    }
    const int32_t *ids = p.ids;
    pthread_mutex_lock(&d->lock);
    for (uint32_t i = 0; i < p.n_prompts && st == DSLA_OK; i++) {
        st = dsla_reservoir_offer(&d->reservoir, ids, (int)p.lens[i]);
        ids += p.lens[i];
    }
    d->samples_received += p.n_prompts;
    d->box.progress_seq++;
    pthread_mutex_unlock(&d->lock);
    if (st != DSLA_OK) dsla_log_warn("distiller: sampled prompts lost: %s", dsla_last_error());
    dsla_proto_prompt_samples_free(&p);
}

static void send_body(dsla_distiller_t *d, uint32_t type, dsla_status_t encoded,
                      dsla_proto_buf_t *body) {
    if (encoded != DSLA_OK ||
        dsla_actor_send(d->self, CONTROLLER_PEER, type, 0, body->data, body->len) != DSLA_OK)
        dsla_log_warn("distiller: %s not sent: %s", dsla_proto_type_name(type), dsla_last_error());
    dsla_proto_buf_free(body);
}

/* Sends what the outbox holds that the controller has not been sent. */
static void on_poll(dsla_actor_t *a, void *user) {
    (void)a;
    dsla_distiller_t *d = user;
    if (!d->controller_alive) return;
    dsla_proto_distill_progress_t p;
    dsla_proto_buf_t body;
    for (;;) { /* one lock per announcement, so the worker never waits on a send */
        pthread_mutex_lock(&d->lock);
        const dsla_proto_layer_ready_t *r =
            d->n_sent < d->box.n_ready ? d->box.ready[d->n_sent] : NULL;
        pthread_mutex_unlock(&d->lock);
        if (!r) break; /* announcements are never freed before the actor stops */
        send_body(d, DSLA_MSG_LAYER_READY, dsla_proto_layer_ready_encode(r, &body), &body);
        dsla_log_info("distiller: announced layer %d version %u (%s)", r->layer, r->version,
                      r->path);
        d->n_sent++;
    }
    pthread_mutex_lock(&d->lock);
    uint64_t seq = d->box.progress_seq;
    p = d->box.progress;
    sample_counts(d, &p);
    pthread_mutex_unlock(&d->lock);
    if (seq == d->progress_sent) return;
    d->progress_sent = seq;
    send_body(d, DSLA_MSG_DISTILL_PROGRESS, dsla_proto_distill_progress_encode(&p, &body), &body);
}

/* A controller found (again) gets every announcement of the run and the latest progress. */
static void on_peer(dsla_actor_t *a, const char *peer, bool alive, void *user) {
    dsla_distiller_t *d = user;
    if (strcmp(peer, CONTROLLER_PEER) != 0) return;
    d->controller_alive = alive;
    if (!alive) return;
    d->n_sent = 0;
    d->progress_sent = 0;
    on_poll(a, d);
}

static void on_start(dsla_actor_t *a, void *user) {
    dsla_distiller_t *d = user;
    d->self = a;
    if (dsla_actor_timer_start(a, DSLA_DISTILLER_POLL_MS, DSLA_DISTILLER_POLL_MS, on_poll, d,
                               &d->poll_timer) != DSLA_OK)
        dsla_log_error("distiller: cannot start its poll timer: %s", dsla_last_error());
}

/* mkdir -p, so that the controller can scan the directory before the first version lands. */
static dsla_status_t make_dirs(const char *dir) {
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s", dir) >= sizeof path)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "distiller: output directory name too long");
    for (char *s = path + 1;; s++) {
        char c = *s;
        if (c != '/' && c != '\0') continue;
        *s = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return dsla_error(DSLA_ERR_IO, "distiller: mkdir %s: %s", path, strerror(errno));
        *s = c;
        if (!c) return DSLA_OK;
    }
}

static dsla_status_t configure(dsla_distiller_t *d, const dsla_distiller_config_t *c) {
    if (!c->controller || !c->model_dir || !c->out_dir || c->n_data < 1 ||
        c->n_data > DSLA_DISTILLER_DATA_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "distiller: needs a controller, a teacher model, an output directory "
                          "and 1 to %d data files (got %d)",
                          DSLA_DISTILLER_DATA_MAX, c->n_data);
    if (c->seq_len < 2 || c->eval_sequences < 1 || c->max_sequences < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "distiller: seq_len %d must be at least 2, eval_sequences %d at least 1",
                          c->seq_len, c->eval_sequences);
    DSLA_TRY(make_dirs(c->out_dir));
    if (!realpath(c->out_dir, d->out_dir))
        return dsla_error(DSLA_ERR_IO, "distiller: %s: %s", c->out_dir, strerror(errno));
    snprintf(d->model_dir, sizeof d->model_dir, "%s", c->model_dir);
    for (int i = 0; i < c->n_data; i++)
        if (!(d->data[d->n_data++] = strdup(c->data[i]))) return dsla_error_oom("distiller");
    d->params = c->params;
    d->on_gpu = c->cuda != NULL;
    if (c->cuda) d->cuda = *c->cuda;
    DSLA_TRY(dsla_reservoir_init(&d->reservoir,
                                 c->reservoir_prompts > 0 ? c->reservoir_prompts
                                                          : DSLA_DISTILLER_RESERVOIR_PROMPTS,
                                 c->seq_len, c->params.seed));
    d->seq_len = c->seq_len;
    d->max_sequences = c->max_sequences;
    d->eval_sequences = c->eval_sequences;
    d->box.progress =
        (dsla_proto_distill_progress_t){.state = DSLA_PROTO_DISTILL_LOADING, .layer = -1};
    snprintf(d->box.progress.message, sizeof d->box.progress.message, "reading %.400s",
             c->model_dir);
    d->box.progress_seq = 1;
    return DSLA_OK;
}

dsla_status_t dsla_distiller_create(dsla_distiller_t **out, const dsla_distiller_config_t *c) {
    *out = NULL;
    dsla_distiller_t *d = calloc(1, sizeof *d);
    if (!d) return dsla_error_oom("distiller");
    pthread_mutex_init(&d->lock, NULL);
    atomic_init(&d->stop, false);
    dsla_status_t st = configure(d, c);
    const dsla_actor_peer_def_t peers[] = {{CONTROLLER_PEER, c->controller}};
    static const dsla_actor_handler_t handlers[] = {{DSLA_MSG_PROMPT_SAMPLES, on_prompt_samples}};
    static const dsla_actor_role_rule_t roles[] = {{DSLA_MSG_PROMPT_SAMPLES, DSLA_ROLE_REPLICA}};
    dsla_actor_def_t def = {
        .name = c->name ? c->name : "distiller",
        .ctx = c->ctx,
        .bind = {c->endpoint},
        .peers = peers,
        .n_peers = 1,
        .handlers = handlers,
        .n_handlers = 1,
        .role_rules = roles,
        .n_role_rules = 1,
        .on_start = on_start,
        .on_peer = on_peer,
        .user = d,
        .heartbeat_ms = c->heartbeat_ms,
    };
    if (st == DSLA_OK) st = dsla_actor_create(&d->actor, &def);
    if (st == DSLA_OK) {
        int rc = pthread_create(&d->worker, NULL, worker_main, d);
        d->worker_started = rc == 0;
        if (rc != 0)
            st = dsla_error(DSLA_ERR_INTERNAL, "distiller: cannot start its worker: %s",
                            strerror(rc));
    }
    if (st != DSLA_OK) {
        dsla_distiller_destroy(&d);
        return st;
    }
    *out = d;
    return DSLA_OK;
}

void dsla_distiller_destroy(dsla_distiller_t **dp) {
    if (!dp || !*dp) return;
    dsla_distiller_t *d = *dp;
    atomic_store(&d->stop, true);
    if (d->worker_started) pthread_join(d->worker, NULL);
    dsla_actor_destroy(&d->actor);
    for (int i = 0; i < d->box.n_ready; i++)
        free(d->box.ready[i]);
    for (int i = 0; i < d->n_data; i++)
        free(d->data[i]);
    dsla_reservoir_free(&d->reservoir);
    pthread_mutex_destroy(&d->lock);
    free(d);
    *dp = NULL;
}

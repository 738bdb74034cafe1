/* The distiller actor's shell: a worker thread running the distillation engine, whose reports it
 * hands to the state machine in distiller_core.c (announcements, progress, sampled prompts) on
 * the actor's loop (distiller.h). */
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

#include "actors/distiller_core.h"
#include "runtime/control/layer_catalogue.h"
#include "runtime/core/clock.h"
#include "runtime/core/log.h"
#include "runtime/model/tokenizer.h"

/* The controller as the actor names its peer. */
#define CONTROLLER_PEER "controller"

/* The run's latest progress, which the worker overwrites at every step and the loop's tick takes
 * when it changed; guarded by lock. */
typedef struct {
    dsla_proto_distill_progress_t progress;
    uint64_t seq; /* bumped on every change */
} progress_slot_t;

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
    int reservoir_prompts;
    pthread_mutex_t lock;
    progress_slot_t slot;
    /* actor thread only */
    dsla_distiller_core_t *core;
    dsla_actor_timer_t *poll_timer;
    uint64_t slot_taken; /* slot.seq last handed to the core */
};

/* ---- the worker ---- */

static void post_progress(dsla_distiller_t *d, const dsla_proto_distill_progress_t *p) {
    pthread_mutex_lock(&d->lock);
    d->slot.progress = *p;
    d->slot.seq++;
    pthread_mutex_unlock(&d->lock);
}

/* Updates the state (and the message) of the posted progress. */
static void post_state(dsla_distiller_t *d, dsla_proto_distill_state_t state, const char *message) {
    pthread_mutex_lock(&d->lock);
    dsla_proto_distill_progress_t p = d->slot.progress;
    pthread_mutex_unlock(&d->lock);
    p.state = state;
    snprintf(p.message, sizeof p.message, "%s", message);
    post_progress(d, &p);
}

static void on_progress(void *user, const dsla_distill_progress_t *g) {
    dsla_distiller_t *d = user;
    pthread_mutex_lock(&d->lock);
    dsla_distiller_progress_update(&d->slot.progress, g);
    d->slot.seq++;
    pthread_mutex_unlock(&d->lock);
}

/* On the loop: a finished version's announcement, built on the worker. */
static void ready_on_loop(dsla_actor_t *a, void *user) {
    dsla_distiller_t *d = dsla_actor_user(a);
    dsla_proto_layer_ready_t *r = user;
    dsla_distiller_core_on_layer_ready(d->core, &r, dsla_clock_ms());
}

static void on_layer_done(void *user, const dsla_distill_layer_report_t *r) {
    dsla_distiller_t *d = user;
    dsla_proto_layer_ready_t *a = malloc(sizeof *a);
    dsla_status_t st = a ? dsla_distiller_announcement(d->out_dir, d->params.steps, r, a)
                         : dsla_error_oom("distiller");
    if (st == DSLA_OK) st = dsla_actor_post(d->actor, ready_on_loop, a);
    if (st != DSLA_OK) { /* not announced; the controller still finds it by scanning */
        dsla_log_error("distiller: layer %d's version cannot be announced: %s", r->layer,
                       dsla_last_error());
        free(a);
    }
}

static bool should_stop(void *user) {
    dsla_distiller_t *d = user;
    return atomic_load(&d->stop);
}

/* The worker's request to pack the reservoir (the core's, on the loop) into its pool; the worker
 * waits for the loop's answer, a few microseconds of copying. */
typedef struct {
    dsla_distiller_t *d;
    dsla_corpus_t *pool;
    int added;
    dsla_status_t status;
    char message[DSLA_PROTO_MESSAGE_MAX + 1];
    bool done;
    pthread_cond_t cond;
} pack_request_t;

static void pack_on_loop(dsla_actor_t *a, void *user) {
    (void)a;
    pack_request_t *q = user;
    dsla_distiller_t *d = q->d;
    dsla_status_t st = dsla_distiller_core_pack(d->core, q->pool, d->bos, d->vocab, &q->added);
    pthread_mutex_lock(&d->lock);
    q->status = st;
    if (st != DSLA_OK) snprintf(q->message, sizeof q->message, "%s", dsla_last_error());
    q->done = true;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&d->lock);
}

/* The engine's extend_train: the reservoir's prompts as extra training sequences of this layer. */
static dsla_status_t extend_train(void *user, int k, int layer, dsla_corpus_t *pool) {
    (void)k;
    dsla_distiller_t *d = user;
    pack_request_t q = {.d = d, .pool = pool};
    pthread_cond_init(&q.cond, NULL);
    dsla_status_t st = DSLA_OK;
    if (dsla_actor_post(d->actor, pack_on_loop, &q) == DSLA_OK) {
        pthread_mutex_lock(&d->lock);
        while (!q.done)
            pthread_cond_wait(&q.cond, &d->lock);
        pthread_mutex_unlock(&d->lock);
        st = q.status == DSLA_OK ? DSLA_OK : dsla_error(q.status, "%s", q.message);
    } /* else the actor is stopping: the layer trains on the corpus alone */
    pthread_cond_destroy(&q.cond);
    if (q.added > 0)
        dsla_log_info("distiller: layer %d trains on %d more sequences from sampled prompts", layer,
                      q.added);
    return st;
}

/* Device bytes the run needs on its GPU: the corpus, and as many extra training sequences as the
 * reservoir may add to a layer's pool. */
static size_t gpu_need(const dsla_distiller_t *d, const dsla_model_t *model,
                       const dsla_corpus_t *train, const dsla_corpus_t *eval) {
    return dsla_distill_cuda_bytes(dsla_model_config(model), d->cuda.dtype, d->seq_len,
                                   d->params.batch, train->num_sequences + d->reservoir_prompts,
                                   eval->num_sequences, d->params.kl_weight > 0);
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
        const dsla_distill_callbacks_t cb = {on_progress, on_layer_done, d,
                                             should_stop, extend_train,  NULL};
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

/* PROMPT_SAMPLES from a serving actor: every prompt is offered to the reservoir. */
static void on_prompt_samples(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_distiller_t *d = user;
    dsla_status_t st = dsla_distiller_core_on_samples(d->core, msg->env->body, msg->env->body_len);
    if (st != DSLA_OK)
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
}

/* The tick: the run's progress when it changed, then whatever the core has pending. */
static void on_poll(dsla_actor_t *a, void *user) {
    (void)a;
    dsla_distiller_t *d = user;
    const uint64_t now = dsla_clock_ms();
    pthread_mutex_lock(&d->lock);
    const bool changed = d->slot.seq != d->slot_taken;
    const dsla_proto_distill_progress_t p = d->slot.progress;
    d->slot_taken = d->slot.seq;
    pthread_mutex_unlock(&d->lock);
    if (changed) dsla_distiller_core_on_progress(d->core, &p, now);
    dsla_distiller_core_on_tick(d->core, now);
}

static void on_peer(dsla_actor_t *a, const char *peer, bool alive, void *user) {
    (void)a;
    dsla_distiller_t *d = user;
    dsla_distiller_core_on_peer(d->core, peer, alive, dsla_clock_ms());
}

static dsla_status_t op_send(void *user, const char *dst, uint32_t type, uint64_t id,
                             const void *body, size_t len) {
    dsla_distiller_t *d = user;
    return dsla_actor_send(d->self, dst, type, id, body, len);
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
    d->reservoir_prompts =
        c->reservoir_prompts > 0 ? c->reservoir_prompts : DSLA_DISTILLER_RESERVOIR_PROMPTS;
    d->seq_len = c->seq_len;
    d->max_sequences = c->max_sequences;
    d->eval_sequences = c->eval_sequences;
    char first[DSLA_PROTO_MESSAGE_MAX + 1];
    snprintf(first, sizeof first, "reading %.400s", c->model_dir);
    d->slot.progress =
        (dsla_proto_distill_progress_t){.state = DSLA_PROTO_DISTILL_LOADING, .layer = -1};
    snprintf(d->slot.progress.message, sizeof d->slot.progress.message, "%s", first);
    const dsla_distiller_core_config_t cc = {.controller = CONTROLLER_PEER,
                                             .reservoir_prompts = d->reservoir_prompts,
                                             .seq_len = c->seq_len,
                                             .seed = c->params.seed,
                                             .first_message = first};
    const dsla_distiller_core_ops_t ops = {.send = op_send, .user = d};
    return dsla_distiller_core_create(&d->core, &cc, &ops);
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
    dsla_actor_destroy(&d->actor); /* what the worker posted has run */
    dsla_distiller_core_destroy(&d->core);
    for (int i = 0; i < d->n_data; i++)
        free(d->data[i]);
    pthread_mutex_destroy(&d->lock);
    free(d);
    *dp = NULL;
}

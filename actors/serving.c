/* The serving actor's shell (serving.h): the mailbox, the loop's timers, the engine thread and the
 * worker pool wired to the state machines in serving_core.c (requests), serving_plan.c (plan
 * changes) and serving_sample.c (prompt sampling). Every callback here is a hand-off. */
#include "actors/serving.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/clock.h"
#include "actors/serving_core.h"
#include "actors/serving_engine.h"
#include "actors/serving_plan.h"
#include "actors/serving_sample.h"
#include "kernels/kernels.h"
#include "runtime/core/log.h"

/* Fetch deadlines are checked this often: a small fraction of any sensible fetch timeout. */
enum { FETCH_TICK_MS = 100 };

struct dsla_serving {
    dsla_actor_t *actor; /* the creator's handle: create, endpoint, destroy */
    dsla_actor_t *self;  /* the same actor, set in on_start; what the engine thread posts to */
    dsla_serving_engine_t *engine;
    dsla_serving_core_t *core;
    dsla_serving_plans_t *plans;
    dsla_serving_sample_t *sample; /* NULL: no distiller */
    char controller[DSLA_ACTOR_ENDPOINT_MAX];
    char distiller[DSLA_ACTOR_ENDPOINT_MAX];
    uint32_t report_ms;
    bool fetching; /* a layer cache: fetch deadlines to check */
    uint64_t next_adoption;
    dsla_actor_timer_t *report_timer, *sample_timer, *fetch_timer;
    dsla_log_limit_t error_log, refused_log;
    void (*write_hook)(void *user);
    void *write_hook_user;
};

/* ---- what the state machines are given ---- */

static dsla_status_t op_send(void *user, const char *dst, uint32_t type, uint64_t id,
                             const void *body, size_t len) {
    dsla_serving_t *s = user;
    return dsla_actor_send(s->self, dst, type, id, body, len);
}

static uint64_t op_now_ms(void *user) {
    (void)user;
    return dsla_clock_ms();
}

static dsla_status_t op_submit(void *user, uint64_t key, dsla_proto_generate_t *g) {
    dsla_serving_t *s = user;
    return dsla_serving_engine_submit(s->engine, key, g);
}

static dsla_status_t op_cancel(void *user, uint64_t key) {
    dsla_serving_t *s = user;
    return dsla_serving_engine_cancel(s->engine, key);
}

static void op_metrics(void *user, dsla_engine_metrics_t *out) {
    dsla_serving_t *s = user;
    dsla_serving_engine_metrics(s->engine, out);
}

static void load_work(void *user) {
    dsla_serving_load_run(user);
}

static void load_done(dsla_actor_t *a, void *user, bool cancelled) {
    dsla_serving_t *s = dsla_actor_user(a);
    dsla_serving_plans_loaded(s->plans, user, cancelled, dsla_clock_ms());
}

static dsla_status_t op_load(void *user, dsla_serving_load_t *job) {
    dsla_serving_t *s = user;
    return dsla_actor_work(s->self, load_work, load_done, job);
}

/* Fetched chunks: written, and the last one synced, verified and renamed, on a worker. */
static void write_work(void *user) {
    dsla_serving_write_t *job = user;
    if (job->hook) job->hook(job->hook_user);
    dsla_serving_write_run(job);
}

static void write_done(dsla_actor_t *a, void *user, bool cancelled) {
    dsla_serving_t *s = dsla_actor_user(a);
    dsla_serving_plans_written(s->plans, user, cancelled, dsla_clock_ms());
}

static dsla_status_t op_write(void *user, dsla_serving_write_t *job) {
    dsla_serving_t *s = user;
    job->hook = s->write_hook;
    job->hook_user = s->write_hook_user;
    return dsla_actor_work(s->self, write_work, write_done, job);
}

static dsla_status_t op_adopt(void *user, dsla_plan_t **plan) {
    dsla_serving_t *s = user;
    return dsla_serving_engine_set_plan(s->engine, ++s->next_adoption, plan);
}

/* ---- the engine thread's hand-off: one post per step ---- */

static void on_batch(dsla_actor_t *a, void *user) {
    dsla_serving_t *s = dsla_actor_user(a);
    dsla_serving_batch_t *b = user;
    dsla_serving_core_on_events(s->core, b);
    for (size_t i = 0; i < b->n_adoptions; i++) {
        const dsla_serving_adoption_t *x = &b->adoptions[i];
        dsla_serving_plans_adopted(s->plans, x->status, x->plan_id, x->message, dsla_clock_ms());
    }
    dsla_serving_batch_free(&b);
}

/* On the engine thread. */
static void deliver(void *user, dsla_serving_batch_t *batch) {
    dsla_serving_t *s = user;
    if (dsla_actor_post(s->self, on_batch, batch) != DSLA_OK) dsla_serving_batch_free(&batch);
}

/* ---- handlers and timers ---- */

static void on_generate(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    dsla_status_t st = dsla_serving_core_on_generate(s->core, msg->from, msg->env->id,
                                                     msg->env->body, msg->env->body_len);
    if (st != DSLA_OK)
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
}

static void on_cancel(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    dsla_status_t st =
        dsla_serving_core_on_cancel(s->core, msg->from, msg->env->body, msg->env->body_len);
    if (st != DSLA_OK)
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
}

/* Plans and layer chunks are taken only from the controller this replica was configured with,
 * over the connection it opened to it: anyone can reach the mailbox under any name, and a plan
 * names files for this process to open. Without a controller no plan is taken at all. */
static bool from_controller(dsla_actor_t *a, const dsla_actor_msg_t *msg, const dsla_serving_t *s) {
    return s->controller[0] && dsla_actor_msg_from_peer(a, msg, "controller");
}

static void on_set_plan(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    if (!from_controller(a, msg, s)) {
        DSLA_LOG_LIMITED(&s->refused_log, DSLA_LOG_WARN,
                         "serving: refusing SET_PLAN from '%s': not the configured controller",
                         msg->from);
        dsla_actor_reply_error(a, msg, DSLA_CODE_PERMISSION_DENIED,
                               s->controller[0]
                                   ? "SET_PLAN: only the controller this replica reports to may "
                                     "send plans"
                                   : "SET_PLAN: this replica has no --controller and takes no "
                                     "plans");
        return;
    }
    dsla_status_t st = dsla_serving_plans_on_set_plan(
        s->plans, "controller", msg->env->id, msg->env->body, msg->env->body_len, dsla_clock_ms());
    if (st != DSLA_OK)
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
}

static void on_layer_chunk(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    if (!from_controller(a, msg, s)) {
        DSLA_LOG_LIMITED(&s->refused_log, DSLA_LOG_WARN,
                         "serving: dropping a LAYER_CHUNK from '%s': not the configured "
                         "controller",
                         msg->from);
        return;
    }
    dsla_serving_plans_on_chunk(s->plans, "controller", msg->env->id, msg->env->body,
                                msg->env->body_len, dsla_clock_ms());
}

/* An ERROR answering the LAYER_FETCH in flight ends its plan change; any other is logged. */
static void on_error(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    dsla_proto_error_t err;
    if (dsla_proto_error_decode(msg->env->body, msg->env->body_len, &err) != DSLA_OK) {
        DSLA_LOG_LIMITED(&s->error_log, DSLA_LOG_WARN, "serving: malformed ERROR from '%s': %s",
                         msg->from, dsla_last_error());
        return;
    }
    /* only the controller's own connection can end a fetch; other ERRORs are only logged */
    if (!from_controller(a, msg, s) ||
        !dsla_serving_plans_on_error(s->plans, "controller", msg->env->id, &err, dsla_clock_ms()))
        DSLA_LOG_LIMITED(&s->error_log, DSLA_LOG_WARN, "serving: ERROR from '%s' (id %llu): %s: %s",
                         msg->from, (unsigned long long)msg->env->id,
                         dsla_proto_code_name(err.code), err.message);
}

/* A client whose heartbeats stopped gets nothing more: its requests end now. */
static void on_peer(dsla_actor_t *a, const char *peer, bool alive, void *user) {
    (void)a;
    dsla_serving_t *s = user;
    if (!alive) dsla_serving_core_on_peer_gone(s->core, peer);
}

/* Anyone may ask (the load is no secret, and a gateway polls it for /metrics). */
static void on_status(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_serving_t *s = user;
    dsla_proto_buf_t body = {0};
    dsla_status_t st = dsla_serving_core_on_status(s->core, &body);
    if (st == DSLA_OK)
        st = dsla_actor_reply(a, msg, DSLA_MSG_LOAD_REPORT, body.data, body.len);
    else
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
    if (st != DSLA_OK) dsla_log_info("serving: no LOAD_REPORT for a STATUS: %s", dsla_last_error());
    dsla_proto_buf_free(&body);
}

static void on_report(dsla_actor_t *a, void *user) {
    (void)a;
    dsla_serving_t *s = user;
    dsla_serving_core_on_report(s->core);
}

static void on_sample_flush(dsla_actor_t *a, void *user) {
    (void)a;
    dsla_serving_t *s = user;
    dsla_serving_core_on_sample_flush(s->core);
}

static void on_fetch_tick(dsla_actor_t *a, void *user) {
    (void)a;
    dsla_serving_t *s = user;
    dsla_serving_plans_on_tick(s->plans, dsla_clock_ms());
}

static void on_start(dsla_actor_t *a, void *user) {
    dsla_serving_t *s = user;
    s->self = a;
    if (s->sample &&
        (dsla_actor_connect(a, "distiller", s->distiller) != DSLA_OK ||
         dsla_actor_timer_start(a, DSLA_SERVING_SAMPLE_FLUSH_MS, DSLA_SERVING_SAMPLE_FLUSH_MS,
                                on_sample_flush, s, &s->sample_timer) != DSLA_OK))
        dsla_log_error("serving: cannot sample prompts for the distiller at %s: %s", s->distiller,
                       dsla_last_error());
    if (s->fetching && dsla_actor_timer_start(a, FETCH_TICK_MS, FETCH_TICK_MS, on_fetch_tick, s,
                                              &s->fetch_timer) != DSLA_OK)
        dsla_log_error("serving: cannot time layer fetches: %s", dsla_last_error());
    if (!s->controller[0]) return;
    if (dsla_actor_connect(a, "controller", s->controller) != DSLA_OK ||
        dsla_actor_timer_start(a, s->report_ms, s->report_ms, on_report, s, &s->report_timer) !=
            DSLA_OK)
        dsla_log_error("serving: cannot report to the controller at %s: %s", s->controller,
                       dsla_last_error());
}

/* ---- life cycle ---- */

static void serving_free(dsla_serving_t *s) {
    if (s->engine) dsla_serving_engine_stop(s->engine); /* nothing is posted any more */
    dsla_actor_destroy(&s->actor);                      /* what was posted has run */
    dsla_serving_engine_destroy(&s->engine);
    dsla_serving_core_destroy(&s->core);
    dsla_serving_plans_destroy(&s->plans);
    dsla_serving_sample_destroy(&s->sample);
    free(s);
}

static dsla_status_t serving_init(dsla_serving_t *s, const dsla_serving_config_t *config) {
    const dsla_model_config_t *mcfg =
        config->backend ? config->backend->cfg : dsla_model_config(config->model);
    dsla_engine_t *engine = NULL;
    DSLA_TRY(
        config->backend
            ? dsla_engine_create_on(&engine, config->backend, config->tokenizer, &config->engine)
            : dsla_engine_create(&engine, config->model, config->tokenizer, &config->engine));
    const uint64_t plan_id = dsla_plan_id(dsla_engine_plan(engine));
    /* the engine thread steps on the device the backend was deployed to from this thread */
    const bool gpu = config->backend && strcmp(config->backend->name, "cuda") == 0;
    dsla_serving_engine_config_t ec = {
        .deliver = deliver, .user = s, .cuda_device = gpu ? dsla_cuda_device_current() : -1};
    if (gpu && config->gpu_warmup) {
        ec.warmup_vocab = mcfg->vocab_size;
        ec.warmup_chunk = config->engine.prefill_chunk;
        ec.warmup_context = config->backend->max_context;
    }
    DSLA_TRY(dsla_serving_engine_create(&s->engine, &engine, &ec));

    s->report_ms = config->report_ms ? config->report_ms : DSLA_SERVING_REPORT_MS;
    if (config->controller) snprintf(s->controller, sizeof s->controller, "%s", config->controller);
    s->fetching = config->layer_cache != NULL;
    s->write_hook = config->fetch_write_hook;
    s->write_hook_user = config->fetch_write_hook_user;
    const dsla_serving_plans_config_t pc = {
        .mcfg = mcfg,
        .layer_cache = config->layer_cache,
        .fetch_chunk = config->fetch_chunk ? config->fetch_chunk : DSLA_PROTO_CHUNK_MAX,
        .fetch_timeout_ms =
            config->fetch_timeout_ms ? config->fetch_timeout_ms : DSLA_SERVING_FETCH_TIMEOUT_MS,
        .plan_id = plan_id,
    };
    const dsla_serving_plan_ops_t po = {
        .send = op_send, .load = op_load, .write = op_write, .adopt = op_adopt, .user = s};
    DSLA_TRY(dsla_serving_plans_create(&s->plans, &pc, &po));

    if (config->distiller) {
        snprintf(s->distiller, sizeof s->distiller, "%s", config->distiller);
        const dsla_serving_sample_config_t sc = {
            .every = config->sample_every ? config->sample_every : DSLA_SERVING_SAMPLE_EVERY,
            .seed = config->sample_seed,
            .tokens_per_s = config->sample_tokens_per_s ? config->sample_tokens_per_s
                                                        : DSLA_SERVING_SAMPLE_TOKENS_PER_S,
            .flush_ms = DSLA_SERVING_SAMPLE_FLUSH_MS,
            .tokenizer = config->tokenizer,
        };
        DSLA_TRY(dsla_serving_sample_create(&s->sample, &sc));
    }
    const dsla_serving_core_config_t cc = {
        .num_layers = (uint32_t)mcfg->num_layers,
        .name = config->name ? config->name : "serving",
        .controller = config->controller ? "controller" : NULL,
        .plans = s->plans,
        .tokenizer = config->tokenizer,
        .sample = s->sample,
        .distiller = "distiller",
    };
    const dsla_serving_core_ops_t co = {.send = op_send,
                                        .now_ms = op_now_ms,
                                        .submit = op_submit,
                                        .cancel = op_cancel,
                                        .metrics = op_metrics,
                                        .user = s};
    DSLA_TRY(dsla_serving_core_create(&s->core, &cc, &co));

    static const dsla_actor_handler_t handlers[] = {
        {DSLA_MSG_GENERATE, on_generate}, {DSLA_MSG_CANCEL, on_cancel},
        {DSLA_MSG_SET_PLAN, on_set_plan}, {DSLA_MSG_LAYER_CHUNK, on_layer_chunk},
        {DSLA_MSG_ERROR, on_error},       {DSLA_MSG_STATUS, on_status}};
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
    return dsla_actor_create(&s->actor, &def);
}

dsla_status_t dsla_serving_create(dsla_serving_t **out, const dsla_serving_config_t *config) {
    *out = NULL;
    dsla_serving_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error_oom("serving");
    dsla_status_t st = serving_init(s, config);
    if (st != DSLA_OK) {
        serving_free(s);
        return st;
    }
    *out = s;
    return DSLA_OK;
}

void dsla_serving_destroy(dsla_serving_t **s) {
    if (!s || !*s) return;
    serving_free(*s);
    *s = NULL;
}

const char *dsla_serving_endpoint(const dsla_serving_t *s) {
    return dsla_actor_endpoint(s->actor, 0);
}

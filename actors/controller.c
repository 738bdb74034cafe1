/* The controller actor: the shell around controller_core.c. It decodes each message and steps the
 * core with it, encodes what the core sends, and runs the slow work on workers: verifying an
 * announced layer version, reading chunks (controller_chunks.h) and every SQLite job
 * (controller_writer.h). Nothing here decides anything (controller.h). */
#include "actors/controller.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "runtime/core/clock.h"
#include "actors/controller_admin.h"
#include "actors/controller_chunks.h"
#include "actors/controller_core.h"
#include "actors/controller_writer.h"
#include "runtime/core/log.h"

struct dsla_controller {
    dsla_actor_t *actor;
    dsla_actor_t *self; /* the same, once on_start ran: the core may send from then on */
    dsla_ctl_store_t *store;
    dsla_ctl_writer_t *writer;
    dsla_ctl_core_t *core;
    uint32_t tick_ms;
    char distiller[DSLA_PROTO_NAME_MAX + 1]; /* the one name LAYER_READY and progress come from */
    const dsla_http_auth_t *admin_auth;      /* NULL: no admin key required */
    bool has_layer_key;                      /* announced versions must carry its MAC */
    dsla_layer_key_t layer_key;
    /* lines a misbehaving peer can repeat once per message */
    dsla_log_limit_t reply_warn, send_warn, refused_warn;
};

/* ---- the core's environment ---- */

static uint64_t env_now_ms(void *user) {
    (void)user;
    return dsla_clock_ms();
}

static int64_t env_wall_ms(void *user) {
    (void)user;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static dsla_status_t env_send(void *user, const char *dst, uint32_t type, uint64_t id,
                              const void *msg) {
    dsla_controller_t *c = user;
    if (!c->self || type != DSLA_MSG_SET_PLAN)
        return dsla_error(DSLA_ERR_INTERNAL, "controller: cannot send type %u to %s now", type,
                          dst);
    dsla_proto_buf_t body = {0};
    dsla_status_t st = dsla_proto_set_plan_encode(msg, &body);
    if (st == DSLA_OK) st = dsla_actor_send(c->self, dst, type, id, body.data, body.len);
    dsla_proto_buf_free(&body);
    return st;
}

static void env_persist(void *user, const dsla_ctl_write_t *w) {
    dsla_controller_t *c = user;
    dsla_ctl_writer_write(c->writer, w);
}

/* An ERROR to a named peer, for answers that come after their handler returned. */
static void send_error(dsla_controller_t *c, dsla_actor_t *a, const char *to, uint64_t id,
                       dsla_status_t st, const char *message) {
    dsla_proto_error_t err = {.code = dsla_proto_code_from_status(st)};
    snprintf(err.message, sizeof err.message, "%s", message);
    dsla_proto_buf_t body = {0};
    if (dsla_proto_error_encode(&err, &body) == DSLA_OK &&
        dsla_actor_send(a, to, DSLA_MSG_ERROR, id, body.data, body.len) != DSLA_OK)
        DSLA_LOG_LIMITED(&c->send_warn, DSLA_LOG_WARN, "controller: ERROR to %s: %s", to,
                         dsla_last_error());
    dsla_proto_buf_free(&body);
}

static void reply_status(dsla_actor_t *a, const dsla_actor_msg_t *msg, dsla_status_t st) {
    dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
}

/* ---- replica messages ---- */

static void on_load_report(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    dsla_proto_load_report_t *rep = malloc(sizeof *rep);
    dsla_status_t st = rep ? dsla_proto_load_report_decode(msg->env->body, msg->env->body_len, rep)
                           : dsla_error_oom("controller");
    if (st == DSLA_OK)
        st = dsla_ctl_core_on_load_report(c->core, msg->from, rep, dsla_actor_hears(a, msg->from));
    if (st != DSLA_OK) reply_status(a, msg, st);
    free(rep);
}

static void on_plan_reply(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    dsla_controller_t *c = user;
    dsla_proto_plan_reply_t *p = malloc(sizeof *p);
    if (!p) return;
    if (dsla_proto_plan_reply_decode(msg->env->body, msg->env->body_len, p) != DSLA_OK)
        DSLA_LOG_LIMITED(&c->reply_warn, DSLA_LOG_WARN, "controller: plan reply from %s: %s",
                         msg->from, dsla_last_error());
    else
        dsla_ctl_core_on_plan_reply(c->core, msg->from, msg->env->type == DSLA_MSG_PLAN_ACK, p);
    free(p);
}

static void on_peer(dsla_actor_t *a, const char *peer, bool alive, void *user) {
    (void)a;
    dsla_controller_t *c = user;
    dsla_ctl_core_on_peer(c->core, peer, alive);
}

static void on_tick(dsla_actor_t *a, void *user) {
    (void)a;
    dsla_controller_t *c = user;
    dsla_ctl_core_on_tick(c->core);
}

/* ---- distiller messages ---- */

/* Verification reads the whole file: a worker's job; the core takes the result on the loop. */
typedef struct {
    dsla_controller_t *c;
    dsla_ctl_verify_t v;
} verify_job_t;

static void verify_work(void *user) {
    verify_job_t *j = user;
    dsla_ctl_verify_run(&j->v);
}

static void verify_done(dsla_actor_t *a, void *user, bool cancelled) {
    (void)a;
    verify_job_t *j = user;
    if (!cancelled) dsla_ctl_core_on_layer_verified(j->c->core, &j->v);
    free(j);
}

/* Announcements and progress come only from the configured distiller: anything else is refused
 * before it is decoded, and leaves no event (anonymous messages must not grow the event log). */
static bool from_distiller(dsla_controller_t *c, dsla_actor_t *a, const dsla_actor_msg_t *msg) {
    if (strcmp(msg->from, c->distiller) == 0) return true;
    DSLA_LOG_LIMITED(&c->refused_warn, DSLA_LOG_WARN,
                     "controller: refusing %s from '%s': only its distiller '%s' may send it",
                     dsla_proto_type_name(msg->env->type), msg->from, c->distiller);
    char text[DSLA_PROTO_MESSAGE_MAX + 1];
    snprintf(text, sizeof text, "%s: only the controller's distiller may send it",
             dsla_proto_type_name(msg->env->type));
    dsla_actor_reply_error(a, msg, DSLA_CODE_PERMISSION_DENIED, text);
    return false;
}

static void on_layer_ready(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    if (!from_distiller(c, a, msg)) return;
    verify_job_t *j = calloc(1, sizeof *j);
    dsla_status_t st =
        j ? dsla_proto_layer_ready_decode(msg->env->body, msg->env->body_len, &j->v.ready)
          : dsla_error_oom("controller");
    if (st == DSLA_OK) {
        j->c = c;
        snprintf(j->v.from, sizeof j->v.from, "%s", msg->from);
        snprintf(j->v.layers_dir, sizeof j->v.layers_dir, "%s", dsla_ctl_core_layers_dir(c->core));
        j->v.layer_key = c->has_layer_key ? &c->layer_key : NULL;
        st = dsla_actor_work(a, verify_work, verify_done, j);
        if (st == DSLA_OK) return;
    }
    reply_status(a, msg, st);
    free(j);
}

static void on_distill_progress(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    if (!from_distiller(c, a, msg)) return;
    dsla_proto_distill_progress_t p;
    dsla_status_t st = dsla_proto_distill_progress_decode(msg->env->body, msg->env->body_len, &p);
    if (st == DSLA_OK) st = dsla_ctl_core_on_distill_progress(c->core, msg->from, &p);
    if (st != DSLA_OK) reply_status(a, msg, st);
}

/* ---- chunked layer transfer ---- */

typedef struct {
    dsla_controller_t *c;
    dsla_ctl_chunk_t *chunk;
} chunk_job_t;

static void chunk_work(void *user) {
    chunk_job_t *j = user;
    dsla_ctl_chunk_read(j->chunk);
}

static void chunk_done(dsla_actor_t *a, void *user, bool cancelled) {
    chunk_job_t *j = user;
    dsla_ctl_chunk_t *k = j->chunk;
    if (!cancelled) {
        dsla_proto_buf_t body = {0};
        if (k->status == DSLA_OK) {
            k->status = dsla_proto_layer_chunk_encode(&k->chunk, &body);
            if (k->status == DSLA_OK)
                k->status =
                    dsla_actor_send(a, k->to, DSLA_MSG_LAYER_CHUNK, k->id, body.data, body.len);
            if (k->status != DSLA_OK) snprintf(k->error, sizeof k->error, "%s", dsla_last_error());
        } else {
            send_error(j->c, a, k->to, k->id, k->status, k->error);
        }
        dsla_proto_buf_free(&body);
        if (k->status == DSLA_OK)
            dsla_ctl_core_on_chunk_served(j->c->core, k->to, &k->chunk);
        else
            dsla_ctl_core_on_fetch_refused(j->c->core, k->to, k->fetch.offset, k->error);
    }
    dsla_ctl_chunk_free(&j->chunk);
    free(j);
}

/* The answer goes back by the fetcher's name once the worker is done: replicas are named peers. */
static void on_layer_fetch(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    chunk_job_t *j = calloc(1, sizeof *j);
    dsla_ctl_chunk_t *k = j ? calloc(1, sizeof *k) : NULL;
    dsla_status_t st =
        k ? dsla_proto_layer_fetch_decode(msg->env->body, msg->env->body_len, &k->fetch)
          : dsla_error_oom("controller");
    if (st == DSLA_OK && !msg->from[0])
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "LAYER_FETCH: only a named replica may fetch");
    /* only replicas that report to this controller fetch: not anyone who reaches the mailbox */
    if (st == DSLA_OK && !dsla_ctl_core_is_replica(c->core, msg->from))
        st = dsla_error(DSLA_ERR_PERMISSION_DENIED,
                        "LAYER_FETCH: '%s' is no replica of this controller (it has sent no "
                        "LOAD_REPORT)",
                        msg->from);
    if (st == DSLA_OK) {
        snprintf(k->to, sizeof k->to, "%s", msg->from);
        k->id = msg->env->id;
        st = dsla_ctl_chunk_check(c->core, k);
        if (st != DSLA_OK) { /* recording the refusal may log: answer with the words kept */
            dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), k->error);
            dsla_ctl_core_on_fetch_refused(c->core, k->to, k->fetch.offset, k->error);
            goto done;
        }
    }
    if (st == DSLA_OK) {
        j->c = c;
        j->chunk = k;
        st = dsla_actor_work(a, chunk_work, chunk_done, j);
        if (st == DSLA_OK) return;
    }
    reply_status(a, msg, st);
done:
    dsla_ctl_chunk_free(&k);
    free(j);
}

/* ---- admin ---- */

/* `history` reads the database: behind every write queued before it, on a worker. */
typedef struct {
    dsla_controller_t *c;
    char to[DSLA_PROTO_NAME_MAX + 1];
    uint64_t id;
    int limit;
    dsla_status_t status;
    char error[DSLA_PROTO_MESSAGE_MAX + 1];
    dsla_admin_text_t text;
} history_job_t;

static void send_text(dsla_actor_t *a, const char *to, uint64_t id, const dsla_admin_text_t *t) {
    dsla_proto_admin_reply_t reply = {.text = t->data, .text_len = t->len};
    dsla_proto_buf_t body = {0};
    if (dsla_proto_admin_reply_encode(&reply, &body) == DSLA_OK)
        dsla_actor_send(a, to, DSLA_MSG_ADMIN_REPLY, id, body.data, body.len);
    dsla_proto_buf_free(&body);
}

static void history_read(dsla_ctl_store_t *store, void *user) {
    history_job_t *h = user;
    h->status = dsla_ctl_store_each_event(store, h->limit, dsla_admin_history_line, &h->text);
    if (h->status == DSLA_OK && h->text.failed)
        h->status = dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                               "controller: the reply exceeds %u bytes", DSLA_PROTO_ADMIN_TEXT_MAX);
    if (h->status != DSLA_OK) snprintf(h->error, sizeof h->error, "%s", dsla_last_error());
}

static void history_done(dsla_actor_t *a, void *user) {
    history_job_t *h = user;
    if (a && h->status == DSLA_OK) send_text(a, h->to, h->id, &h->text);
    if (a && h->status != DSLA_OK) send_error(h->c, a, h->to, h->id, h->status, h->error);
    dsla_admin_text_free(&h->text);
    free(h);
}

static dsla_status_t queue_history(dsla_controller_t *c, const dsla_actor_msg_t *msg, long limit) {
    if (!msg->from[0])
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "history: the client's routing id is not a printable name, so the "
                          "answer could not find it; use dslactl or the client stub");
    history_job_t *h = calloc(1, sizeof *h);
    if (!h) return dsla_error_oom("controller");
    h->c = c;
    snprintf(h->to, sizeof h->to, "%s", msg->from);
    h->id = msg->env->id;
    h->limit = (int)limit;
    dsla_status_t st = dsla_ctl_writer_read(c->writer, history_read, history_done, h);
    if (st != DSLA_OK) free(h);
    return st;
}

/* Who sent an ADMIN, as far as the controller can tell, for its audit event: a CURVE key's role
 * and name; else, with admin keys configured, a fingerprint of the key it presented (8 hex digits
 * of its BLAKE2b: which key, without the key); else only the routing id it chose. */
static void admin_who(const dsla_controller_t *c, const dsla_actor_msg_t *msg, const char *key,
                      char *out, size_t cap) {
    const char *from = msg->from[0] ? msg->from : "?";
    char fp[16] = "";
    if (c->admin_auth && sodium_init() >= 0) {
        uint8_t h[4];
        crypto_generichash(h, sizeof h, (const uint8_t *)key, strlen(key), NULL, 0);
        snprintf(fp, sizeof fp, "%02x%02x%02x%02x", h[0], h[1], h[2], h[3]);
    }
    if (msg->key_name)
        snprintf(out, cap, "%s key '%s' (CURVE)%s%s", dsla_role_name(msg->role), msg->key_name,
                 fp[0] ? ", admin key " : "", fp);
    else if (fp[0])
        snprintf(out, cap, "admin key %s from '%s'", fp, from);
    else
        snprintf(out, cap, "'%s' (unauthenticated: no admin key or CURVE)", from);
}

static void on_admin(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    dsla_proto_admin_t *wire = malloc(sizeof *wire);
    dsla_admin_cmd_t *cmd = malloc(sizeof *cmd);
    dsla_admin_text_t t = {0};
    dsla_status_t st = wire && cmd
                           ? dsla_proto_admin_decode(msg->env->body, msg->env->body_len, wire)
                           : dsla_error_oom("controller");
    if (st == DSLA_OK && c->admin_auth &&
        !dsla_http_auth_has(c->admin_auth, wire->key, strlen(wire->key)))
        st = dsla_error(DSLA_ERR_UNAUTHENTICATED,
                        "ADMIN: missing or unknown admin key (dslactl --admin-key-file FILE or "
                        "DSLA_ADMIN_KEY)");
    if (st == DSLA_OK) st = dsla_admin_parse_msg(wire, cmd);
    if (st == DSLA_OK && cmd->op == DSLA_ADMIN_HISTORY) {
        st = queue_history(c, msg, cmd->n);
        if (st != DSLA_OK) reply_status(a, msg, st);
        goto done;
    }
    if (st == DSLA_OK) {
        admin_who(c, msg, wire->key, cmd->who, sizeof cmd->who);
        st = dsla_ctl_core_admin(c->core, cmd, &t);
    }
    if (st == DSLA_OK && t.failed)
        st = dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "controller: the reply exceeds %u bytes",
                        DSLA_PROTO_ADMIN_TEXT_MAX);
    if (st != DSLA_OK) {
        reply_status(a, msg, st);
    } else {
        dsla_proto_admin_reply_t reply = {.text = t.data, .text_len = t.len};
        dsla_proto_buf_t body = {0};
        if (dsla_proto_admin_reply_encode(&reply, &body) == DSLA_OK)
            dsla_actor_reply(a, msg, DSLA_MSG_ADMIN_REPLY, body.data, body.len);
        dsla_proto_buf_free(&body);
    }
done:
    dsla_admin_text_free(&t);
    free(cmd);
    free(wire);
}

/* ---- life cycle ---- */

static void on_start(dsla_actor_t *a, void *user) {
    dsla_controller_t *c = user;
    c->self = a;
    dsla_ctl_writer_attach(c->writer, a);
    dsla_actor_timer_t *tick = NULL; /* lives until the actor stops */
    if (dsla_actor_timer_start(a, c->tick_ms, c->tick_ms, on_tick, c, &tick) != DSLA_OK)
        dsla_log_error("controller: %s; unanswered SET_PLANs wait for the next report",
                       dsla_last_error());
}

static void on_stop(dsla_actor_t *a, void *user) {
    (void)a;
    dsla_controller_t *c = user;
    dsla_ctl_writer_detach(c->writer);
    c->self = NULL;
}

dsla_status_t dsla_controller_create(dsla_controller_t **out, const dsla_controller_config_t *cfg) {
    *out = NULL;
    if (!cfg->layers_dir || !cfg->db_path)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "controller: needs a layer version directory and a database path");
    dsla_controller_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("controller");
    c->tick_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : DSLA_ACTOR_HEARTBEAT_MS;
    snprintf(c->distiller, sizeof c->distiller, "%s",
             cfg->distiller ? cfg->distiller : "distiller");
    c->admin_auth = cfg->admin_auth;
    if (cfg->layer_key) {
        c->has_layer_key = true;
        c->layer_key = *cfg->layer_key;
    }
    dsla_ctl_env_t env = {.user = c,
                          .now_ms = env_now_ms,
                          .wall_ms = env_wall_ms,
                          .send = env_send,
                          .persist = env_persist};
    dsla_status_t st = dsla_ctl_store_open(&c->store, cfg->db_path);
    if (st == DSLA_OK) st = dsla_ctl_writer_create(&c->writer, c->store);
    if (st == DSLA_OK) st = dsla_ctl_core_create(&c->core, cfg->layers_dir, &env);
    if (st == DSLA_OK) dsla_ctl_core_set_layer_key(c->core, cfg->layer_key);
    if (st == DSLA_OK) st = dsla_ctl_core_start(c->core, c->store, cfg->policy);
    static const dsla_actor_handler_t handlers[] = {
        {DSLA_MSG_LOAD_REPORT, on_load_report}, {DSLA_MSG_PLAN_ACK, on_plan_reply},
        {DSLA_MSG_PLAN_NACK, on_plan_reply},    {DSLA_MSG_ADMIN, on_admin},
        {DSLA_MSG_LAYER_READY, on_layer_ready}, {DSLA_MSG_DISTILL_PROGRESS, on_distill_progress},
        {DSLA_MSG_LAYER_FETCH, on_layer_fetch}};
    /* with CURVE, each type only from keys of its role (runtime/actor/curve.h) */
    static const dsla_actor_role_rule_t roles[] = {
        {DSLA_MSG_LOAD_REPORT, DSLA_ROLE_REPLICA},
        {DSLA_MSG_PLAN_ACK, DSLA_ROLE_REPLICA},
        {DSLA_MSG_PLAN_NACK, DSLA_ROLE_REPLICA},
        {DSLA_MSG_LAYER_FETCH, DSLA_ROLE_REPLICA},
        {DSLA_MSG_ADMIN, DSLA_ROLE_ADMIN},
        {DSLA_MSG_LAYER_READY, DSLA_ROLE_DISTILLER},
        {DSLA_MSG_DISTILL_PROGRESS, DSLA_ROLE_DISTILLER}};
    dsla_actor_def_t def = {
        .name = cfg->name ? cfg->name : "controller",
        .ctx = cfg->ctx,
        .bind = {cfg->bind[0], cfg->bind[1], cfg->bind[2]},
        .handlers = handlers,
        .n_handlers = sizeof handlers / sizeof handlers[0],
        .role_rules = roles,
        .n_role_rules = sizeof roles / sizeof roles[0],
        .on_start = on_start,
        .on_stop = on_stop,
        .on_peer = on_peer,
        .user = c,
        .heartbeat_ms = cfg->heartbeat_ms,
    };
    if (st == DSLA_OK) st = dsla_actor_create(&c->actor, &def);
    if (st != DSLA_OK) {
        dsla_controller_destroy(&c);
        return st;
    }
    *out = c;
    return DSLA_OK;
}

void dsla_controller_destroy(dsla_controller_t **c) {
    if (!c || !*c) return;
    dsla_actor_destroy(&(*c)->actor);
    dsla_ctl_writer_destroy(&(*c)->writer);
    dsla_ctl_core_destroy(&(*c)->core);
    dsla_ctl_store_close(&(*c)->store);
    free(*c);
    *c = NULL;
}

const char *dsla_controller_endpoint(const dsla_controller_t *c, int i) {
    return dsla_actor_endpoint(c->actor, i);
}

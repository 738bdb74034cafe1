/* The gateway actor: the shell that wires its mailbox and its peers' liveness to the routing
 * state machine (gateway.h, gateway_core.h). */
#include "actors/gateway.h"

#include <stdlib.h>
#include <string.h>

#include "actors/gateway_core.h"
#include "runtime/core/log.h"

struct dsla_gateway {
    dsla_actor_t *actor; /* the creator's handle */
    dsla_actor_t *self;  /* the same actor on its own thread */
    dsla_gateway_core_t *core;
    dsla_log_limit_t reply_lost; /* a line load repeats once per refused request: rate-limited */
    uint32_t poll_ms;            /* STATUS to the replicas, for /metrics: the heartbeat interval */
    dsla_actor_timer_t *poll_timer;
};

static dsla_status_t core_send(void *user, const char *dst, uint32_t type, uint64_t id,
                               const void *body, size_t len) {
    dsla_gateway_t *g = user;
    return dsla_actor_send(g->self, dst, type, id, body, len);
}

/* ---- handlers ------------------------------------------------------------------------------ */

static void on_generate(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_gateway_t *g = user;
    dsla_status_t st = dsla_gateway_core_on_generate(g->core, msg->from, msg->env->id,
                                                     msg->env->body, msg->env->body_len);
    if (st != DSLA_OK && dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st),
                                                dsla_last_error()) != DSLA_OK)
        DSLA_LOG_LIMITED(&g->reply_lost, DSLA_LOG_INFO, "gateway: %s", dsla_last_error());
}

static void on_cancel(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_gateway_t *g = user;
    dsla_status_t st =
        dsla_gateway_core_on_cancel(g->core, msg->from, msg->env->body, msg->env->body_len);
    if (st != DSLA_OK)
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
}

/* A replica's answers are believed only from the connection the gateway opened to it: a name in
 * the mailbox is whatever the sender chose ("" matches no route). */
static const char *replica_of(dsla_actor_t *a, const dsla_actor_msg_t *msg) {
    const char *peer = dsla_actor_msg_peer(a, msg);
    return peer ? peer : "";
}

static void on_token(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_gateway_t *g = user;
    dsla_gateway_core_on_token(g->core, replica_of(a, msg), msg->env->id, msg->env->body,
                               msg->env->body_len);
}

static void on_done(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_gateway_t *g = user;
    dsla_gateway_core_on_done(g->core, replica_of(a, msg), msg->env->id, msg->env->body,
                              msg->env->body_len);
}

static void on_error(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_gateway_t *g = user;
    dsla_gateway_core_on_error(g->core, replica_of(a, msg), msg->env->id, msg->env->body,
                               msg->env->body_len);
}

static void on_status(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_gateway_t *g = user;
    dsla_proto_report_t *rep = malloc(sizeof *rep);
    if (!rep) {
        dsla_status_t st = dsla_error_oom("gateway: a REPORT");
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
        return;
    }
    dsla_gateway_core_report(g->core, rep);
    dsla_proto_buf_t body;
    if (dsla_proto_report_encode(rep, &body) != DSLA_OK ||
        dsla_actor_reply(a, msg, DSLA_MSG_REPORT, body.data, body.len) != DSLA_OK)
        dsla_log_info("gateway: REPORT lost: %s", dsla_last_error());
    dsla_proto_buf_free(&body);
    free(rep);
}

static void on_load(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_gateway_t *g = user;
    dsla_gateway_core_on_load(g->core, replica_of(a, msg), msg->env->body, msg->env->body_len);
}

static void on_poll(dsla_actor_t *a, void *user) {
    (void)a;
    dsla_gateway_t *g = user;
    dsla_gateway_core_poll(g->core);
}

static void on_peer(dsla_actor_t *a, const char *peer, bool alive, void *user) {
    (void)a;
    dsla_gateway_t *g = user;
    dsla_gateway_core_on_peer(g->core, peer, alive);
}

static void on_start(dsla_actor_t *a, void *user) {
    dsla_gateway_t *g = user;
    g->self = a;
    if (dsla_actor_timer_start(a, 0, g->poll_ms, on_poll, g, &g->poll_timer) != DSLA_OK)
        dsla_log_warn("gateway: no load polls, /metrics will lack the replicas' figures: %s",
                      dsla_last_error());
}

/* ---- life cycle ---------------------------------------------------------------------------- */

dsla_status_t dsla_gateway_create(dsla_gateway_t **out, const dsla_gateway_config_t *config) {
    *out = NULL;
    dsla_gateway_t *g = calloc(1, sizeof *g);
    if (!g) return dsla_error_oom("gateway");
    dsla_gateway_core_config_t cc = {.replicas = config->replicas,
                                     .n_replicas = config->n_replicas,
                                     .max_outstanding = config->max_outstanding};
    dsla_gateway_core_ops_t ops = {.send = core_send, .user = g};
    g->poll_ms = config->heartbeat_ms ? config->heartbeat_ms : DSLA_ACTOR_HEARTBEAT_MS;
    dsla_status_t st = dsla_gateway_core_create(&g->core, &cc, &ops);
    if (st != DSLA_OK) {
        free(g);
        return st;
    }
    dsla_actor_peer_def_t peers[DSLA_GATEWAY_REPLICA_MAX];
    for (size_t i = 0; i < config->n_replicas; i++)
        peers[i] = (dsla_actor_peer_def_t){config->replicas[i].name, config->replicas[i].endpoint};
    static const dsla_actor_handler_t handlers[] = {
        {DSLA_MSG_GENERATE, on_generate}, {DSLA_MSG_CANCEL, on_cancel},
        {DSLA_MSG_TOKEN, on_token},       {DSLA_MSG_DONE, on_done},
        {DSLA_MSG_ERROR, on_error},       {DSLA_MSG_STATUS, on_status},
        {DSLA_MSG_LOAD_REPORT, on_load},
    };
    dsla_actor_def_t def = {
        .name = config->name ? config->name : "gateway",
        .ctx = config->ctx,
        .peers = peers,
        .n_peers = config->n_replicas,
        .handlers = handlers,
        .n_handlers = sizeof handlers / sizeof handlers[0],
        .on_start = on_start,
        .on_peer = on_peer,
        .user = g,
        .heartbeat_ms = config->heartbeat_ms,
    };
    memcpy(def.bind, config->bind, sizeof def.bind);
    st = dsla_actor_create(&g->actor, &def);
    if (st != DSLA_OK) {
        dsla_gateway_core_destroy(&g->core);
        free(g);
        return st;
    }
    *out = g;
    return DSLA_OK;
}

void dsla_gateway_destroy(dsla_gateway_t **g) {
    if (!g || !*g) return;
    dsla_actor_destroy(&(*g)->actor);
    dsla_gateway_core_destroy(&(*g)->core);
    free(*g);
    *g = NULL;
}

const char *dsla_gateway_endpoint(const dsla_gateway_t *g, int i) {
    return dsla_actor_endpoint(g->actor, i);
}

/* The gateway actor: a table of routes (client request <-> replica request) and the handlers that
 * keep it (gateway.h). */
#include "actors/gateway.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/cancel.h"
#include "runtime/core/log.h"

/* A route's upstream id is (generation << ROUTE_SLOT_BITS) | slot: the slot finds it at once, and
 * the generation keeps a late frame for a finished route from matching the slot's next tenant. */
enum { ROUTE_SLOT_BITS = 32 };

typedef struct {
    char name[DSLA_PROTO_NAME_MAX + 1];
    char endpoint[DSLA_PROTO_ENDPOINT_MAX + 1];
    dsla_proto_replica_state_t state;
    uint32_t outstanding;
    uint64_t routed, failed;
} replica_t;

/* One client request in flight. */
typedef struct {
    bool used;
    uint64_t id; /* the id it travels under between the gateway and its replica */
    uint64_t client_id;
    char client[DSLA_PROTO_NAME_MAX + 1];
    int replica;
    uint32_t attempts; /* replicas it was sent to */
    bool streamed;     /* a TOKEN of it reached the client: it can no longer move */
    char *body;        /* the GENERATE body, kept until the first TOKEN for re-routing */
    size_t body_len;
} route_t;

struct dsla_gateway {
    dsla_actor_t *actor; /* the creator's handle */
    dsla_actor_t *self;  /* the same actor on its own thread */
    replica_t replicas[DSLA_GATEWAY_REPLICA_MAX];
    int n_replicas;
    int next_replica; /* where the search for the least loaded replica starts: ties rotate */
    route_t *routes;
    uint32_t *free_slots;
    uint32_t n_free, max_outstanding;
    uint64_t generation;
    dsla_proto_report_t counters; /* requests, tokens, errors, rerouted, in_flight */
    /* Lines that load repeats once per client or request: rate-limited, one limiter per line. */
    struct {
        dsla_log_limit_t tell, cancel_lost, unreachable, moved, reply, malformed, stray;
    } log;
};

/* ---- replicas and routes ------------------------------------------------------------------- */

static int replica_find(const dsla_gateway_t *g, const char *name) {
    for (int i = 0; i < g->n_replicas; i++)
        if (strcmp(g->replicas[i].name, name) == 0) return i;
    return -1;
}

/* The live replica with the fewest outstanding requests, else the one among those not heard from
 * yet (just started); -1 when every one is dead. exclude is skipped (-1: none). */
static int replica_pick(dsla_gateway_t *g, int exclude) {
    static const dsla_proto_replica_state_t preference[] = {DSLA_PROTO_REPLICA_ALIVE,
                                                            DSLA_PROTO_REPLICA_UNKNOWN};
    for (int p = 0; p < 2; p++) {
        int best = -1;
        for (int k = 0; k < g->n_replicas; k++) {
            int i = (g->next_replica + k) % g->n_replicas;
            const replica_t *r = &g->replicas[i];
            if (i == exclude || r->state != preference[p]) continue;
            if (best < 0 || r->outstanding < g->replicas[best].outstanding) best = i;
        }
        if (best >= 0) {
            g->next_replica = (best + 1) % g->n_replicas;
            return best;
        }
    }
    return -1;
}

static route_t *route_find(dsla_gateway_t *g, uint64_t id, const char *replica) {
    uint64_t slot = id & ((1ull << ROUTE_SLOT_BITS) - 1);
    if (slot >= g->max_outstanding) return NULL;
    route_t *r = &g->routes[slot];
    if (!r->used || r->id != id || strcmp(g->replicas[r->replica].name, replica) != 0) return NULL;
    return r;
}

static route_t *route_find_client(dsla_gateway_t *g, const char *client, uint64_t client_id) {
    for (uint32_t i = 0; i < g->max_outstanding; i++) {
        route_t *r = &g->routes[i];
        if (r->used && r->client_id == client_id && strcmp(r->client, client) == 0) return r;
    }
    return NULL;
}

static void route_drop_body(route_t *r) {
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

static void route_end(dsla_gateway_t *g, route_t *r) {
    if (r->attempts) g->replicas[r->replica].outstanding--;
    g->counters.in_flight--;
    route_drop_body(r);
    r->used = false;
    g->free_slots[g->n_free++] = (uint32_t)(r - g->routes);
}

/* Sends r's GENERATE to replica i under r's id; the replica's counters follow. */
static dsla_status_t route_send(dsla_gateway_t *g, route_t *r, int i) {
    dsla_status_t st = dsla_actor_send(g->self, g->replicas[i].name, DSLA_MSG_GENERATE, r->id,
                                       r->body, r->body_len);
    if (st != DSLA_OK) return st;
    r->replica = i;
    r->attempts++;
    g->replicas[i].outstanding++;
    g->replicas[i].routed++;
    return DSLA_OK;
}

/* ---- to clients and replicas ---------------------------------------------------------------- */

static void send_error(dsla_gateway_t *g, const char *dst, uint64_t id, dsla_proto_code_t code,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void send_error(dsla_gateway_t *g, const char *dst, uint64_t id, dsla_proto_code_t code,
                       const char *fmt, ...) {
    dsla_proto_error_t err = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err.message, sizeof err.message, fmt, ap);
    va_end(ap);
    dsla_proto_buf_t body;
    if (dsla_proto_error_encode(&err, &body) != DSLA_OK ||
        dsla_actor_send(g->self, dst, DSLA_MSG_ERROR, id, body.data, body.len) != DSLA_OK)
        DSLA_LOG_LIMITED(&g->log.tell, DSLA_LOG_INFO, "gateway: could not tell %s of a failure: %s",
                         dst, dsla_last_error());
    dsla_proto_buf_free(&body);
}

/* Ends r with an ERROR to its client. */
static void route_fail(dsla_gateway_t *g, route_t *r, dsla_proto_code_t code, const char *message) {
    send_error(g, r->client, r->client_id, code, "%s", message);
    g->replicas[r->replica].failed++;
    g->counters.errors++;
    route_end(g, r);
}

static void send_cancel(dsla_gateway_t *g, const route_t *r) {
    dsla_proto_cancel_t c = {.request = r->id};
    dsla_proto_buf_t body;
    if (dsla_proto_cancel_encode(&c, &body) != DSLA_OK ||
        dsla_actor_send(g->self, g->replicas[r->replica].name, DSLA_MSG_CANCEL, r->id, body.data,
                        body.len) != DSLA_OK)
        DSLA_LOG_LIMITED(&g->log.cancel_lost, DSLA_LOG_INFO, "gateway: CANCEL to %s lost: %s",
                         g->replicas[r->replica].name, dsla_last_error());
    dsla_proto_buf_free(&body);
}

/* Relays a replica's frame to r's client; a client that cannot be reached any more has its request
 * cancelled on the replica. False when the route ended. */
static bool relay(dsla_gateway_t *g, route_t *r, const dsla_actor_msg_t *msg) {
    if (dsla_actor_send(g->self, r->client, msg->env->type, r->client_id, msg->env->body,
                        msg->env->body_len) == DSLA_OK)
        return true;
    DSLA_LOG_LIMITED(&g->log.unreachable, DSLA_LOG_INFO,
                     "gateway: cancelling request %llu of %s: %s", (unsigned long long)r->client_id,
                     r->client, dsla_last_error());
    send_cancel(g, r);
    route_end(g, r);
    return false;
}

/* Sends r to another live replica than its own; false when none took it. */
static bool route_move(dsla_gateway_t *g, route_t *r) {
    if (!r->body || r->attempts >= (uint32_t)g->n_replicas) return false;
    int from = r->replica, to = replica_pick(g, from);
    if (to < 0 || route_send(g, r, to) != DSLA_OK) return false;
    g->replicas[from].outstanding--;
    g->counters.rerouted++;
    DSLA_LOG_LIMITED(
        &g->log.moved, DSLA_LOG_INFO, "gateway: request %llu of %s moved from %s to %s",
        (unsigned long long)r->client_id, r->client, g->replicas[from].name, g->replicas[to].name);
    return true;
}

/* ---- handlers ------------------------------------------------------------------------------ */

static void on_generate(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_gateway_t *g = user;
    if (!msg->from[0]) {
        dsla_actor_reply_error(a, msg, DSLA_CODE_INVALID_ARGUMENT,
                               "GENERATE: the client's routing id must be a printable name of at "
                               "most 63 bytes, so that tokens can be streamed to it");
        return;
    }
    /* every refusal is a status with this thread's message, so that it reaches the client as the
     * one sentence that explains it */
    dsla_status_t st = DSLA_OK;
    int i = -1;
    if (g->n_free == 0)
        st = dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                        "gateway: %u requests outstanding (its bound: --max-queued plus twice "
                        "--max-running per replica); retry later or elsewhere",
                        g->max_outstanding);
    else if ((i = replica_pick(g, -1)) < 0)
        st = dsla_error(DSLA_ERR_UNAVAILABLE, "gateway: none of its %d serving replicas is alive",
                        g->n_replicas);
    route_t *r = NULL;
    if (st == DSLA_OK) {
        uint32_t slot = g->free_slots[--g->n_free];
        r = &g->routes[slot];
        *r = (route_t){.used = true,
                       .id = (++g->generation << ROUTE_SLOT_BITS) | slot,
                       .client_id = msg->env->id,
                       .replica = i};
        snprintf(r->client, sizeof r->client, "%s", msg->from);
        g->counters.in_flight++;
        r->body = malloc(msg->env->body_len ? msg->env->body_len : 1);
        if (!r->body) {
            st = dsla_error_oom("gateway: a GENERATE of %zu bytes", msg->env->body_len);
        } else {
            memcpy(r->body, msg->env->body, msg->env->body_len);
            r->body_len = msg->env->body_len;
            if (route_send(g, r, i) != DSLA_OK)
                st = dsla_error_wrap(DSLA_ERR_UNAVAILABLE, "gateway: ");
        }
    }
    if (st != DSLA_OK) {
        if (r) route_end(g, r);
        g->counters.errors++;
        if (dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error()) !=
            DSLA_OK)
            DSLA_LOG_LIMITED(&g->log.reply, DSLA_LOG_INFO, "gateway: %s", dsla_last_error());
        return;
    }
    g->counters.requests++;
}

static void on_token(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    dsla_gateway_t *g = user;
    route_t *r = route_find(g, msg->env->id, msg->from);
    if (!r) return; /* the tail of a cancelled or moved request */
    r->streamed = true;
    route_drop_body(r);
    if (relay(g, r, msg)) g->counters.tokens++;
}

static void on_done(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    dsla_gateway_t *g = user;
    route_t *r = route_find(g, msg->env->id, msg->from);
    if (r && relay(g, r, msg)) route_end(g, r);
}

static void on_error(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    dsla_gateway_t *g = user;
    dsla_proto_error_t err;
    if (dsla_proto_error_decode(msg->env->body, msg->env->body_len, &err) != DSLA_OK) {
        DSLA_LOG_LIMITED(&g->log.malformed, DSLA_LOG_WARN, "gateway: malformed ERROR from '%s': %s",
                         msg->from, dsla_last_error());
        return;
    }
    route_t *r = route_find(g, msg->env->id, msg->from);
    if (!r) {
        DSLA_LOG_LIMITED(&g->log.stray, DSLA_LOG_INFO, "gateway: ERROR from '%s' (id %llu): %s: %s",
                         msg->from, (unsigned long long)msg->env->id,
                         dsla_proto_code_name(err.code), err.message);
        return;
    }
    /* a full replica is no reason to refuse while another has room */
    if (err.code == DSLA_CODE_RESOURCE_EXHAUSTED && !r->streamed && route_move(g, r)) return;
    route_fail(g, r, (dsla_proto_code_t)err.code, err.message);
}

static void *route_find_cancel(void *owner, const char *client, uint64_t request) {
    return route_find_client(owner, client, request);
}

static void on_cancel(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    route_t *r = dsla_cancel_lookup(a, msg, route_find_cancel, user);
    if (r) send_cancel(user, r); /* the replica's DONE ("cancelled") ends the route */
}

static void on_status(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_gateway_t *g = user;
    dsla_proto_report_t *rep = malloc(sizeof *rep);
    if (!rep) {
        dsla_status_t st = dsla_error_oom("gateway: a REPORT");
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
        return;
    }
    *rep = g->counters;
    rep->n_replicas = (uint32_t)g->n_replicas;
    for (int i = 0; i < g->n_replicas; i++) {
        const replica_t *r = &g->replicas[i];
        dsla_proto_replica_report_t *x = &rep->replicas[i];
        memcpy(x->name, r->name, sizeof x->name);
        memcpy(x->endpoint, r->endpoint, sizeof x->endpoint);
        x->state = r->state;
        x->outstanding = r->outstanding;
        x->routed = r->routed;
        x->failed = r->failed;
    }
    dsla_proto_buf_t body;
    if (dsla_proto_report_encode(rep, &body) != DSLA_OK ||
        dsla_actor_reply(a, msg, DSLA_MSG_REPORT, body.data, body.len) != DSLA_OK)
        dsla_log_info("gateway: REPORT lost: %s", dsla_last_error());
    dsla_proto_buf_free(&body);
    free(rep);
}

/* A dead replica's requests move or fail; a dead client's requests are cancelled. */
static void on_peer(dsla_actor_t *a, const char *peer, bool alive, void *user) {
    (void)a;
    dsla_gateway_t *g = user;
    int i = replica_find(g, peer);
    if (i >= 0) g->replicas[i].state = alive ? DSLA_PROTO_REPLICA_ALIVE : DSLA_PROTO_REPLICA_DEAD;
    if (alive) return;
    char why[DSLA_PROTO_MESSAGE_MAX + 1];
    for (uint32_t s = 0; s < g->max_outstanding; s++) {
        route_t *r = &g->routes[s];
        if (!r->used) continue;
        if (i < 0) {
            if (strcmp(r->client, peer) != 0) continue;
            send_cancel(g, r);
            route_end(g, r);
            continue;
        }
        if (r->replica != i || route_move(g, r)) continue;
        snprintf(why, sizeof why,
                 r->streamed ? "gateway: replica %s stopped answering mid-stream; the stream "
                               "cannot be resumed elsewhere"
                             : "gateway: replica %s stopped answering and no other replica is "
                               "alive to take the request",
                 peer);
        route_fail(g, r, DSLA_CODE_UNAVAILABLE, why);
    }
}

static void on_start(dsla_actor_t *a, void *user) {
    dsla_gateway_t *g = user;
    g->self = a;
}

/* ---- life cycle ---------------------------------------------------------------------------- */

static void gateway_free(dsla_gateway_t *g) {
    if (g->routes)
        for (uint32_t i = 0; i < g->max_outstanding; i++)
            free(g->routes[i].body);
    free(g->routes);
    free(g->free_slots);
    free(g);
}

static dsla_status_t check_config(const dsla_gateway_config_t *c) {
    if (c->n_replicas < 1 || c->n_replicas > DSLA_GATEWAY_REPLICA_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "gateway: %zu replicas; it needs 1 to %d (a --replica endpoint or "
                          "a --model to serve)",
                          c->n_replicas, DSLA_GATEWAY_REPLICA_MAX);
    for (size_t i = 0; i < c->n_replicas; i++) {
        if (!c->replicas[i].name || !c->replicas[i].endpoint ||
            strlen(c->replicas[i].endpoint) > DSLA_PROTO_ENDPOINT_MAX)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "gateway: replica %zu needs a name and an endpoint of at most %d "
                              "bytes",
                              i, DSLA_PROTO_ENDPOINT_MAX);
        for (size_t j = 0; j < i; j++)
            if (strcmp(c->replicas[i].name, c->replicas[j].name) == 0)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "gateway: two replicas are named '%s'",
                                  c->replicas[i].name);
    }
    if (c->max_outstanding > (1u << 24))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "gateway: max_outstanding %u above the limit of %u", c->max_outstanding,
                          1u << 24);
    return DSLA_OK;
}

dsla_status_t dsla_gateway_create(dsla_gateway_t **out, const dsla_gateway_config_t *config) {
    *out = NULL;
    DSLA_TRY(check_config(config));
    dsla_gateway_t *g = calloc(1, sizeof *g);
    if (!g) return dsla_error_oom("gateway");
    g->max_outstanding =
        config->max_outstanding ? config->max_outstanding : DSLA_GATEWAY_OUTSTANDING_MAX;
    g->routes = calloc(g->max_outstanding, sizeof *g->routes);
    g->free_slots = malloc(g->max_outstanding * sizeof *g->free_slots);
    if (!g->routes || !g->free_slots) {
        gateway_free(g);
        return dsla_error_oom("gateway");
    }
    for (uint32_t i = 0; i < g->max_outstanding; i++) /* lowest slots first */
        g->free_slots[i] = g->max_outstanding - 1 - i;
    g->n_free = g->max_outstanding;
    dsla_actor_peer_def_t peers[DSLA_GATEWAY_REPLICA_MAX];
    g->n_replicas = (int)config->n_replicas;
    for (int i = 0; i < g->n_replicas; i++) {
        replica_t *r = &g->replicas[i];
        snprintf(r->name, sizeof r->name, "%s", config->replicas[i].name);
        snprintf(r->endpoint, sizeof r->endpoint, "%s", config->replicas[i].endpoint);
        peers[i] = (dsla_actor_peer_def_t){config->replicas[i].name, config->replicas[i].endpoint};
    }
    static const dsla_actor_handler_t handlers[] = {
        {DSLA_MSG_GENERATE, on_generate}, {DSLA_MSG_CANCEL, on_cancel},
        {DSLA_MSG_TOKEN, on_token},       {DSLA_MSG_DONE, on_done},
        {DSLA_MSG_ERROR, on_error},       {DSLA_MSG_STATUS, on_status},
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
    dsla_status_t st = dsla_actor_create(&g->actor, &def);
    if (st != DSLA_OK) {
        gateway_free(g);
        return st;
    }
    *out = g;
    return DSLA_OK;
}

void dsla_gateway_destroy(dsla_gateway_t **g) {
    if (!g || !*g) return;
    dsla_actor_destroy(&(*g)->actor);
    gateway_free(*g);
    *g = NULL;
}

const char *dsla_gateway_endpoint(const dsla_gateway_t *g, int i) {
    return dsla_actor_endpoint(g->actor, i);
}

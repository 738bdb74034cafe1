/* The gateway's routes and replicas, stepped by messages (gateway_core.h). */
#include "actors/gateway_core.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/log.h"
#include "runtime/core/secret.h"

/* A route's upstream id is (tag << ROUTE_SLOT_BITS) | slot: the slot finds it at once, and the
 * tag, 32 random bits drawn per request, keeps a late frame for a finished route from matching the
 * slot's next tenant, and keeps anyone who has not seen the id from guessing it. */
enum { ROUTE_SLOT_BITS = 32 };

typedef struct {
    char name[DSLA_PROTO_NAME_MAX + 1];
    char endpoint[DSLA_PROTO_ENDPOINT_MAX + 1];
    dsla_proto_replica_state_t state;
    uint32_t outstanding;
    uint64_t routed, failed;
    bool has_load; /* its last answer to STATUS (dsla_gateway_core_poll) */
    dsla_proto_load_report_t load;
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

struct dsla_gateway_core {
    dsla_gateway_core_ops_t ops;
    replica_t replicas[DSLA_GATEWAY_REPLICA_MAX];
    int n_replicas;
    int next_replica; /* where the search for the least loaded replica starts: ties rotate */
    route_t *routes;
    uint32_t *free_slots;
    uint32_t n_free, max_outstanding;
    dsla_proto_report_t counters; /* requests, tokens, errors, rerouted, in_flight */
    /* Lines that load repeats once per client or request: rate-limited, one limiter per line. */
    struct {
        dsla_log_limit_t tell, cancel_lost, unreachable, moved, malformed, stray;
    } log;
};

static dsla_status_t core_send(dsla_gateway_core_t *c, const char *dst, uint32_t type, uint64_t id,
                               const void *body, size_t len) {
    return c->ops.send(c->ops.user, dst, type, id, body, len);
}

/* ---- replicas and routes ------------------------------------------------------------------- */

static int replica_find(const dsla_gateway_core_t *c, const char *name) {
    for (int i = 0; i < c->n_replicas; i++)
        if (strcmp(c->replicas[i].name, name) == 0) return i;
    return -1;
}

/* The live replica with the fewest outstanding requests, else the one among those not heard from
 * yet (just started); -1 when every one is dead. exclude is skipped (-1: none). */
static int replica_pick(dsla_gateway_core_t *c, int exclude) {
    static const dsla_proto_replica_state_t preference[] = {DSLA_PROTO_REPLICA_ALIVE,
                                                            DSLA_PROTO_REPLICA_UNKNOWN};
    for (int p = 0; p < 2; p++) {
        int best = -1;
        for (int k = 0; k < c->n_replicas; k++) {
            int i = (c->next_replica + k) % c->n_replicas;
            const replica_t *r = &c->replicas[i];
            if (i == exclude || r->state != preference[p]) continue;
            if (best < 0 || r->outstanding < c->replicas[best].outstanding) best = i;
        }
        if (best >= 0) {
            c->next_replica = (best + 1) % c->n_replicas;
            return best;
        }
    }
    return -1;
}

static route_t *route_find(dsla_gateway_core_t *c, uint64_t id, const char *replica) {
    uint64_t slot = id & ((1ull << ROUTE_SLOT_BITS) - 1);
    if (slot >= c->max_outstanding) return NULL;
    route_t *r = &c->routes[slot];
    if (!r->used || r->id != id || strcmp(c->replicas[r->replica].name, replica) != 0) return NULL;
    return r;
}

static route_t *route_find_client(dsla_gateway_core_t *c, const char *client, uint64_t client_id) {
    for (uint32_t i = 0; i < c->max_outstanding; i++) {
        route_t *r = &c->routes[i];
        if (r->used && r->client_id == client_id && strcmp(r->client, client) == 0) return r;
    }
    return NULL;
}

static void route_drop_body(route_t *r) {
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

static void route_end(dsla_gateway_core_t *c, route_t *r) {
    if (r->attempts) c->replicas[r->replica].outstanding--;
    c->counters.in_flight--;
    route_drop_body(r);
    r->used = false;
    c->free_slots[c->n_free++] = (uint32_t)(r - c->routes);
}

/* Sends r's GENERATE to replica i under r's id; the replica's counters follow. */
static dsla_status_t route_send(dsla_gateway_core_t *c, route_t *r, int i) {
    DSLA_TRY(core_send(c, c->replicas[i].name, DSLA_MSG_GENERATE, r->id, r->body, r->body_len));
    r->replica = i;
    r->attempts++;
    c->replicas[i].outstanding++;
    c->replicas[i].routed++;
    return DSLA_OK;
}

/* ---- to clients and replicas ---------------------------------------------------------------- */

static void send_error(dsla_gateway_core_t *c, const char *dst, uint64_t id, dsla_proto_code_t code,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void send_error(dsla_gateway_core_t *c, const char *dst, uint64_t id, dsla_proto_code_t code,
                       const char *fmt, ...) {
    dsla_proto_error_t err = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err.message, sizeof err.message, fmt, ap);
    va_end(ap);
    dsla_proto_buf_t body;
    if (dsla_proto_error_encode(&err, &body) != DSLA_OK ||
        core_send(c, dst, DSLA_MSG_ERROR, id, body.data, body.len) != DSLA_OK)
        DSLA_LOG_LIMITED(&c->log.tell, DSLA_LOG_INFO, "gateway: could not tell %s of a failure: %s",
                         dst, dsla_last_error());
    dsla_proto_buf_free(&body);
}

/* Ends r with an ERROR to its client. */
static void route_fail(dsla_gateway_core_t *c, route_t *r, dsla_proto_code_t code,
                       const char *message) {
    send_error(c, r->client, r->client_id, code, "%s", message);
    c->replicas[r->replica].failed++;
    c->counters.errors++;
    route_end(c, r);
}

static void send_cancel(dsla_gateway_core_t *c, const route_t *r) {
    dsla_proto_cancel_t m = {.request = r->id};
    dsla_proto_buf_t body;
    if (dsla_proto_cancel_encode(&m, &body) != DSLA_OK ||
        core_send(c, c->replicas[r->replica].name, DSLA_MSG_CANCEL, r->id, body.data, body.len) !=
            DSLA_OK)
        DSLA_LOG_LIMITED(&c->log.cancel_lost, DSLA_LOG_INFO, "gateway: CANCEL to %s lost: %s",
                         c->replicas[r->replica].name, dsla_last_error());
    dsla_proto_buf_free(&body);
}

/* Relays a replica's frame to r's client; a client that cannot be reached any more has its request
 * cancelled on the replica. False when the route ended. */
static bool relay(dsla_gateway_core_t *c, route_t *r, uint32_t type, const void *body, size_t len) {
    if (core_send(c, r->client, type, r->client_id, body, len) == DSLA_OK) return true;
    DSLA_LOG_LIMITED(&c->log.unreachable, DSLA_LOG_INFO,
                     "gateway: cancelling request %llu of %s: %s", (unsigned long long)r->client_id,
                     r->client, dsla_last_error());
    send_cancel(c, r);
    route_end(c, r);
    return false;
}

/* Sends r to another live replica than its own; false when none took it. */
static bool route_move(dsla_gateway_core_t *c, route_t *r) {
    if (!r->body || r->attempts >= (uint32_t)c->n_replicas) return false;
    int from = r->replica, to = replica_pick(c, from);
    if (to < 0 || route_send(c, r, to) != DSLA_OK) return false;
    c->replicas[from].outstanding--;
    c->counters.rerouted++;
    DSLA_LOG_LIMITED(
        &c->log.moved, DSLA_LOG_INFO, "gateway: request %llu of %s moved from %s to %s",
        (unsigned long long)r->client_id, r->client, c->replicas[from].name, c->replicas[to].name);
    return true;
}

/* ---- messages ------------------------------------------------------------------------------ */

/* Every refusal is a status with this thread's message, so that it reaches the client as the one
 * sentence that explains it. */
dsla_status_t dsla_gateway_core_on_generate(dsla_gateway_core_t *c, const char *from, uint64_t id,
                                            const void *body, size_t len) {
    if (!from[0])
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "GENERATE: the client's routing id must be a printable name of at most "
                          "63 bytes, so that tokens can be streamed to it");
    dsla_status_t st = DSLA_OK;
    int i = -1;
    /* checked before a slot is taken: forwarded under longer names it may no longer fit a frame,
     * and the replica could then only refuse it under an id that matches no route */
    if (len > DSLA_PROTO_BODY_MAX)
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                        "GENERATE: body of %zu bytes exceeds the limit of %u that the gateway can "
                        "forward",
                        len, DSLA_PROTO_BODY_MAX);
    else if (c->n_free == 0)
        st = dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                        "gateway: %u requests outstanding (its bound: --max-queued plus twice "
                        "--max-running per replica); retry later or elsewhere",
                        c->max_outstanding);
    else if ((i = replica_pick(c, -1)) < 0)
        st = dsla_error(DSLA_ERR_UNAVAILABLE, "gateway: none of its %d serving replicas is alive",
                        c->n_replicas);
    route_t *r = NULL;
    if (st == DSLA_OK) {
        uint32_t slot = c->free_slots[--c->n_free];
        r = &c->routes[slot];
        *r = (route_t){.used = true,
                       .id = (dsla_secret_u64() << ROUTE_SLOT_BITS) | slot,
                       .client_id = id,
                       .replica = i};
        snprintf(r->client, sizeof r->client, "%s", from);
        c->counters.in_flight++;
        r->body = malloc(len ? len : 1);
        if (!r->body) {
            st = dsla_error_oom("gateway: a GENERATE of %zu bytes", len);
        } else {
            memcpy(r->body, body, len);
            r->body_len = len;
            if (route_send(c, r, i) != DSLA_OK)
                st = dsla_error_wrap(DSLA_ERR_UNAVAILABLE, "gateway: ");
        }
    }
    if (st != DSLA_OK) {
        if (r) route_end(c, r);
        c->counters.errors++;
        return st;
    }
    c->counters.requests++;
    return DSLA_OK;
}

dsla_status_t dsla_gateway_core_on_cancel(dsla_gateway_core_t *c, const char *from,
                                          const void *body, size_t len) {
    dsla_proto_cancel_t m;
    DSLA_TRY(dsla_proto_cancel_decode(body, len, &m));
    route_t *r = route_find_client(c, from, m.request);
    if (!r)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "CANCEL: no running request %llu of this client",
                          (unsigned long long)m.request);
    send_cancel(c, r); /* the replica's DONE ("cancelled") ends the route */
    return DSLA_OK;
}

void dsla_gateway_core_on_token(dsla_gateway_core_t *c, const char *replica, uint64_t id,
                                const void *body, size_t len) {
    route_t *r = route_find(c, id, replica);
    if (!r) return; /* the tail of a cancelled or moved request */
    r->streamed = true;
    route_drop_body(r);
    if (relay(c, r, DSLA_MSG_TOKEN, body, len)) c->counters.tokens++;
}

void dsla_gateway_core_on_done(dsla_gateway_core_t *c, const char *replica, uint64_t id,
                               const void *body, size_t len) {
    route_t *r = route_find(c, id, replica);
    if (r && relay(c, r, DSLA_MSG_DONE, body, len)) route_end(c, r);
}

void dsla_gateway_core_on_error(dsla_gateway_core_t *c, const char *replica, uint64_t id,
                                const void *body, size_t len) {
    dsla_proto_error_t err;
    if (dsla_proto_error_decode(body, len, &err) != DSLA_OK) {
        DSLA_LOG_LIMITED(&c->log.malformed, DSLA_LOG_WARN, "gateway: malformed ERROR from '%s': %s",
                         replica, dsla_last_error());
        return;
    }
    route_t *r = route_find(c, id, replica);
    if (!r) {
        DSLA_LOG_LIMITED(&c->log.stray, DSLA_LOG_INFO, "gateway: ERROR from '%s' (id %llu): %s: %s",
                         replica, (unsigned long long)id, dsla_proto_code_name(err.code),
                         err.message);
        return;
    }
    /* a full replica is no reason to refuse while another has room */
    if (err.code == DSLA_CODE_RESOURCE_EXHAUSTED && !r->streamed && route_move(c, r)) return;
    route_fail(c, r, (dsla_proto_code_t)err.code, err.message);
}

void dsla_gateway_core_poll(dsla_gateway_core_t *c) {
    for (int i = 0; i < c->n_replicas; i++)
        if (c->replicas[i].state != DSLA_PROTO_REPLICA_DEAD &&
            core_send(c, c->replicas[i].name, DSLA_MSG_STATUS, 0, NULL, 0) != DSLA_OK)
            DSLA_LOG_LIMITED(&c->log.tell, DSLA_LOG_INFO, "gateway: STATUS to %s lost: %s",
                             c->replicas[i].name, dsla_last_error());
}

void dsla_gateway_core_on_load(dsla_gateway_core_t *c, const char *replica, const void *body,
                               size_t len) {
    int i = replica_find(c, replica);
    if (i < 0) return;
    replica_t *r = &c->replicas[i];
    r->has_load = dsla_proto_load_report_decode(body, len, &r->load) == DSLA_OK;
    if (!r->has_load)
        DSLA_LOG_LIMITED(&c->log.malformed, DSLA_LOG_WARN,
                         "gateway: malformed LOAD_REPORT from '%s': %s", replica,
                         dsla_last_error());
}

void dsla_gateway_core_on_peer(dsla_gateway_core_t *c, const char *peer, bool alive) {
    int i = replica_find(c, peer);
    if (i >= 0) c->replicas[i].state = alive ? DSLA_PROTO_REPLICA_ALIVE : DSLA_PROTO_REPLICA_DEAD;
    if (i >= 0 && !alive) c->replicas[i].has_load = false; /* its figures are history now */
    if (alive) return;
    char why[DSLA_PROTO_MESSAGE_MAX + 1];
    for (uint32_t s = 0; s < c->max_outstanding; s++) {
        route_t *r = &c->routes[s];
        if (!r->used) continue;
        if (i < 0) {
            if (strcmp(r->client, peer) != 0) continue;
            send_cancel(c, r);
            route_end(c, r);
            continue;
        }
        if (r->replica != i || route_move(c, r)) continue;
        snprintf(why, sizeof why,
                 r->streamed ? "gateway: replica %s stopped answering mid-stream; the stream "
                               "cannot be resumed elsewhere"
                             : "gateway: replica %s stopped answering and no other replica is "
                               "alive to take the request",
                 peer);
        route_fail(c, r, DSLA_CODE_UNAVAILABLE, why);
    }
}

void dsla_gateway_core_report(const dsla_gateway_core_t *c, dsla_proto_report_t *out) {
    *out = c->counters;
    out->n_replicas = (uint32_t)c->n_replicas;
    for (int i = 0; i < c->n_replicas; i++) {
        const replica_t *r = &c->replicas[i];
        dsla_proto_replica_report_t *x = &out->replicas[i];
        memcpy(x->name, r->name, sizeof x->name);
        memcpy(x->endpoint, r->endpoint, sizeof x->endpoint);
        x->state = r->state;
        x->outstanding = r->outstanding;
        x->routed = r->routed;
        x->failed = r->failed;
        x->has_load = r->has_load;
        if (r->has_load) x->load = r->load;
    }
}

size_t dsla_gateway_core_routes(const dsla_gateway_core_t *c) {
    return c->max_outstanding - c->n_free;
}

/* ---- life cycle ---------------------------------------------------------------------------- */

static dsla_status_t check_config(const dsla_gateway_core_config_t *c) {
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

void dsla_gateway_core_destroy(dsla_gateway_core_t **c) {
    if (!c || !*c) return;
    dsla_gateway_core_t *g = *c;
    if (g->routes)
        for (uint32_t i = 0; i < g->max_outstanding; i++)
            free(g->routes[i].body);
    free(g->routes);
    free(g->free_slots);
    free(g);
    *c = NULL;
}

dsla_status_t dsla_gateway_core_create(dsla_gateway_core_t **out,
                                       const dsla_gateway_core_config_t *config,
                                       const dsla_gateway_core_ops_t *ops) {
    *out = NULL;
    DSLA_TRY(check_config(config));
    dsla_gateway_core_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("gateway");
    c->ops = *ops;
    c->max_outstanding =
        config->max_outstanding ? config->max_outstanding : DSLA_GATEWAY_OUTSTANDING_MAX;
    c->routes = calloc(c->max_outstanding, sizeof *c->routes);
    c->free_slots = malloc(c->max_outstanding * sizeof *c->free_slots);
    if (!c->routes || !c->free_slots) {
        dsla_gateway_core_destroy(&c);
        return dsla_error_oom("gateway");
    }
    for (uint32_t i = 0; i < c->max_outstanding; i++) /* lowest slots first */
        c->free_slots[i] = c->max_outstanding - 1 - i;
    c->n_free = c->max_outstanding;
    c->n_replicas = (int)config->n_replicas;
    for (int i = 0; i < c->n_replicas; i++) {
        replica_t *r = &c->replicas[i];
        snprintf(r->name, sizeof r->name, "%s", config->replicas[i].name);
        snprintf(r->endpoint, sizeof r->endpoint, "%s", config->replicas[i].endpoint);
    }
    *out = c;
    return DSLA_OK;
}

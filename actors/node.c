/* One node's actors: distiller, controller, serving, gateway and HTTP front end, started and
 * stopped together (node.h). */
#define _DEFAULT_SOURCE /* realpath */
#include "actors/node.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/controller.h"
#include "actors/distiller.h"
#include "actors/http.h"
#include "actors/serving.h"
#include "kernels/kernels.h"

/* The local replicas' names and mailboxes: inproc, since they live in the gateway's process. */
#define NODE_LOCAL_REPLICA "serving%d"
#define NODE_LOCAL_ENDPOINT "inproc://serving%d"
/* HTTP clients reach the gateway over loopback on a port of its own: they run in libmicrohttpd's
 * threads with a ZeroMQ context of their own, which inproc:// cannot cross. */
#define NODE_HTTP_GATEWAY_BIND "tcp://127.0.0.1:*"
/* The controller's mailbox for the local serving actor. */
#define NODE_CONTROLLER_ENDPOINT "inproc://controller"
/* The distiller's mailbox: the local serving actor sends it sampled prompts (PROMPT_SAMPLES). */
#define NODE_DISTILLER_ENDPOINT "inproc://distiller"

struct dsla_node {
    dsla_actor_ctx_t *ctx;
    dsla_controller_t *controller;
    dsla_distiller_t *distiller;
    dsla_serving_t *serving[DSLA_GATEWAY_REPLICA_MAX];
    char names[DSLA_GATEWAY_REPLICA_MAX][DSLA_PROTO_NAME_MAX + 1];
    int n_serving;
    dsla_gateway_t *gateway;
    dsla_http_t *http;
    dsla_curve_keys_t *http_keys; /* the HTTP front end's CURVE keypair; NULL without CURVE */
};

/* Local replicas: the list, else one of model and backend, else none. */
static int local_count(const dsla_node_config_t *c) {
    return c->n_local > 0 ? c->n_local : (c->model || c->backend ? 1 : 0);
}

/* Each replica may hold its queue and its running set: the gateway and HTTP carry that many, plus
 * a running set's worth for replies still on their way, so that the engines' queues (bounded by
 * requests, tokens and time, refusals naming --max-queued) decide who waits. */
uint32_t dsla_node_request_bound(const dsla_node_config_t *c) {
    const uint64_t replicas = (uint64_t)local_count(c) + (uint64_t)c->n_replicas;
    uint64_t bound = (replicas ? replicas : 1) *
                     ((uint64_t)c->engine.max_queued + 2 * (uint64_t)c->engine.max_running);
    return bound > (1u << 24) ? 1u << 24 : (uint32_t)bound;
}

static dsla_status_t start_gateway(dsla_node_t *n, const dsla_node_config_t *c) {
    dsla_gateway_replica_t replicas[DSLA_GATEWAY_REPLICA_MAX];
    char names[DSLA_GATEWAY_REPLICA_MAX][DSLA_PROTO_NAME_MAX + 1];
    size_t count = 0;
    for (int i = 0; i < n->n_serving; i++)
        replicas[count++] =
            (dsla_gateway_replica_t){n->names[i], dsla_serving_endpoint(n->serving[i])};
    for (int i = 0; i < c->n_replicas; i++) {
        if (count == DSLA_GATEWAY_REPLICA_MAX)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "node: more than %d replicas",
                              DSLA_GATEWAY_REPLICA_MAX);
        snprintf(names[count], sizeof names[count], "replica%d", i + 1);
        replicas[count] = (dsla_gateway_replica_t){names[count], c->replicas[i]};
        count++;
    }
    const uint32_t bound = dsla_node_request_bound(c);
    dsla_gateway_config_t gc = {.ctx = n->ctx,
                                .bind = {c->endpoint, c->http ? NODE_HTTP_GATEWAY_BIND : NULL},
                                .replicas = replicas,
                                .n_replicas = count,
                                .max_outstanding = bound,
                                .heartbeat_ms = c->heartbeat_ms};
    DSLA_TRY(dsla_gateway_create(&n->gateway, &gc));
    if (!c->http) return DSLA_OK;
    dsla_http_config_t hc = {.address = c->http,
                             .gateway = dsla_gateway_endpoint(n->gateway, 1),
                             .model = c->model_name,
                             .max_in_flight = c->http_max_in_flight ? c->http_max_in_flight : bound,
                             .heartbeat_ms = c->heartbeat_ms,
                             .tokenizer = c->tokenizer,
                             .chat_template = c->chat_template,
                             .auth = c->http_auth,
                             .allow_insecure = c->http_allow_insecure,
                             .cors_origins = c->http_cors_origins,
                             .n_cors_origins = c->n_http_cors_origins};
    if (n->http_keys) { /* the gateway's mailbox is this node's CURVE server */
        hc.curve_server_key = c->curve->self.public_key;
        hc.curve_public_key = n->http_keys->self.public_key;
        hc.curve_secret_key = n->http_keys->secret_key;
    }
    return dsla_http_create(&n->http, &hc);
}

/* The controller takes announced versions only from inside its own directory: a distiller
 * writing elsewhere would have every announcement refused, so the pair is refused at start. */
static dsla_status_t same_directory(const char *layers, const char *out) {
    char a[PATH_MAX], b[PATH_MAX];
    if (realpath(layers, a) && realpath(out, b) && strcmp(a, b) == 0) return DSLA_OK;
    return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                      "node: the distiller's output directory %s must be the controller's layer "
                      "directory %s (give one of the two)",
                      out, layers);
}

/* CURVE for the node's context: its keys, plus a keypair made now for the HTTP front end (a
 * client of its own gateway, authorized under the name "http"). */
static dsla_status_t secure_node(dsla_node_t *n, const dsla_node_config_t *c) {
    if (!c->curve) {
        if (c->http_allow_insecure) dsla_actor_ctx_allow_insecure(n->ctx);
        return DSLA_OK;
    }
    dsla_curve_keys_t *keys = NULL;
    DSLA_TRY(dsla_curve_keys_new(&n->http_keys, DSLA_ROLE_CLIENT, "http"));
    dsla_status_t st = dsla_curve_keys_copy(&keys, c->curve);
    if (st == DSLA_OK)
        st = dsla_curve_keys_authorize(keys, DSLA_ROLE_CLIENT, "http",
                                       n->http_keys->self.public_key);
    if (st == DSLA_OK) st = dsla_actor_ctx_secure(n->ctx, keys);
    dsla_curve_keys_destroy(&keys);
    return st;
}

/* The next local serving actor, serving<n_serving>, on its own engine over r's model and backend;
 * r->gpu is current while it starts, so that its engine thread binds that device. */
static dsla_status_t start_serving(dsla_node_t *n, const dsla_node_config_t *config,
                                   const dsla_node_local_t *r) {
    const int i = n->n_serving;
    if (!r->model && !r->backend)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "node: local replica %d has neither a model nor a backend", i);
    if (r->gpu >= 0) DSLA_TRY(dsla_cuda_device_bind(r->gpu));
    char endpoint[64];
    snprintf(n->names[i], sizeof n->names[i], NODE_LOCAL_REPLICA, i);
    snprintf(endpoint, sizeof endpoint, NODE_LOCAL_ENDPOINT, i);
    const bool named = config->serving_name && local_count(config) == 1;
    dsla_serving_config_t sc = {
        .name = named ? config->serving_name : n->names[i],
        .ctx = n->ctx,
        .endpoint = config->serving_only ? config->endpoint : endpoint,
        .model = r->model,
        .tokenizer = config->tokenizer,
        .engine = config->engine,
        .backend = r->backend,
        .gpu_warmup = config->gpu_warmup,
        .heartbeat_ms = config->heartbeat_ms,
        .controller = n->controller ? NODE_CONTROLLER_ENDPOINT : config->controller,
        .report_ms = config->report_ms,
        .layer_cache = n->controller ? NULL : config->layer_cache,
        .fetch_chunk = config->fetch_chunk,
        .distiller = n->distiller && !config->no_sample_prompts ? NODE_DISTILLER_ENDPOINT : NULL,
        .sample_every = config->sample_every,
        /* distinct seeds: replicas serving alike traffic sample different prompts */
        .sample_seed = config->sample_seed + (uint64_t)i,
        .sample_tokens_per_s = config->sample_tokens_per_s,
        .layer_key = config->layer_key,
    };
    DSLA_TRY(dsla_serving_create(&n->serving[i], &sc));
    n->n_serving++;
    return DSLA_OK;
}

dsla_status_t dsla_node_create(dsla_node_t **out, const dsla_node_config_t *config) {
    *out = NULL;
    const bool local = local_count(config) > 0;
    if (config->serving_only && !local)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "node: a serving actor needs a model");
    if (config->n_local > 0 && (config->model || config->backend || config->serving_only))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "node: %d local replicas come with their own models and backends: not "
                          "with config.model, config.backend or serving_only",
                          config->n_local);
    if (config->n_local < 0 || config->n_local + config->n_replicas > DSLA_GATEWAY_REPLICA_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "node: %d local and %d remote replicas: at most %d in all (and "
                          "n_local >= 0)",
                          config->n_local, config->n_replicas, DSLA_GATEWAY_REPLICA_MAX);
    dsla_node_t *n = calloc(1, sizeof *n);
    if (!n) return dsla_error_oom("node");
    const bool distill = config->distiller.out_dir != NULL;
    if (distill && config->serving_only) {
        free(n);
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "node: a distiller reports to this node's controller; not with "
                          "serving_only");
    }
    const char *layers_dir = config->layers_dir ? config->layers_dir : config->distiller.out_dir;
    dsla_status_t st = dsla_actor_ctx_create(&n->ctx);
    if (st == DSLA_OK) st = secure_node(n, config);
    if (st == DSLA_OK && distill) { /* first: it creates the directory the controller scans */
        dsla_distiller_config_t dc = config->distiller;
        dc.ctx = n->ctx;
        dc.endpoint = NODE_DISTILLER_ENDPOINT;
        dc.controller = NODE_CONTROLLER_ENDPOINT;
        dc.heartbeat_ms = config->heartbeat_ms;
        dc.params.mac_key = config->layer_key;
        st = dsla_distiller_create(&n->distiller, &dc);
    }
    if (st == DSLA_OK && distill && config->layers_dir)
        st = same_directory(config->layers_dir, config->distiller.out_dir);
    if (st == DSLA_OK && layers_dir) {
        dsla_controller_config_t cc = {
            .ctx = n->ctx,
            .bind = {NODE_CONTROLLER_ENDPOINT, config->admin, config->controller_bind},
            .layers_dir = layers_dir,
            .db_path = config->controller_db,
            .policy = config->policy,
            .admin_auth = config->admin_auth,
            .layer_key = config->layer_key,
            .heartbeat_ms = config->heartbeat_ms};
        st = dsla_controller_create(&n->controller, &cc);
    }
    const dsla_node_local_t one = {config->model, config->backend, -1};
    const dsla_node_local_t *locals = config->n_local > 0 ? config->local : &one;
    for (int i = 0; st == DSLA_OK && local && i < local_count(config); i++)
        st = start_serving(n, config, &locals[i]);
    if (st == DSLA_OK && !config->serving_only) st = start_gateway(n, config);
    if (st != DSLA_OK) {
        dsla_node_destroy(&n);
        return st;
    }
    *out = n;
    return DSLA_OK;
}

void dsla_node_drain(dsla_node_t *n, uint32_t grace_ms) {
    if (n && n->http) dsla_http_drain(n->http, grace_ms);
}

void dsla_node_destroy(dsla_node_t **np) {
    if (!np || !*np) return;
    dsla_node_t *n = *np;
    dsla_http_destroy(&n->http);
    dsla_gateway_destroy(&n->gateway);
    for (int i = n->n_serving - 1; i >= 0; i--)
        dsla_serving_destroy(&n->serving[i]);
    dsla_distiller_destroy(&n->distiller);
    dsla_controller_destroy(&n->controller);
    dsla_actor_ctx_destroy(&n->ctx);
    dsla_curve_keys_destroy(&n->http_keys);
    free(n);
    *np = NULL;
}

const char *dsla_node_endpoint(const dsla_node_t *n) {
    return n->gateway ? dsla_gateway_endpoint(n->gateway, 0) : dsla_serving_endpoint(n->serving[0]);
}

int dsla_node_http_port(const dsla_node_t *n) {
    return n->http ? dsla_http_port(n->http) : 0;
}

const char *dsla_node_admin_endpoint(const dsla_node_t *n) {
    return n->controller ? dsla_controller_endpoint(n->controller, 1) : NULL;
}

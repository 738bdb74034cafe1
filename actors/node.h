/* One node's actors, started together (DESIGN.md section 3): with no cluster file, the embedded
 * single-node default of a gateway and a serving actor (or several: one per GPU, or CPU engines,
 * config.local) in one process, talking over inproc://,
 * with the HTTP front end on the gateway and, given a layer version directory, a controller that
 * converts the serving actor's layers, and, given calibration data, a distiller that writes new
 * layer versions and announces them to that controller (the serving actor sends it sampled
 * prompts directly, unless opted out); or a gateway alone in front of remote
 * replicas; or a serving actor alone (a replica for a gateway elsewhere, reporting to a remote
 * controller and, given a layer cache, fetching its layer versions from it).
 *
 * Contract: create starts every actor and returns once all are bound, or stops those it started
 * and names what failed. The model and tokenizer are borrowed and must outlive the node. It only
 * wires actors together: it parses no arguments and prints nothing. */
#ifndef DSLA_ACTORS_NODE_H
#define DSLA_ACTORS_NODE_H

#include <stdbool.h>
#include <stdint.h>

#include "actors/distiller.h"
#include "actors/gateway.h"
#include "actors/http_auth.h"
#include "runtime/model/chat_template.h"
#include "runtime/serve/engine.h"

typedef struct dsla_node dsla_node_t;

/* One local serving replica of several (dsla_node_config_t.local): its own model (a CPU engine
 * runs the host model and its scratch, so CPU replicas never share one) and backend (a GPU
 * deployment: its own device copy, pools, stream and CUDA context on gpu). */
typedef struct {
    dsla_model_t *model;           /* borrowed; NULL with a backend: the backend's shape */
    dsla_serve_backend_t *backend; /* borrowed; NULL: the CPU runs model */
    int gpu; /* made the current CUDA device while its serving actor starts, so that its engine
                thread binds it (the device the backend was deployed on); -1: none (CPU) */
} dsla_node_local_t;

typedef struct {
    /* model and backend NULL: no local serving actor (a gateway over remote replicas) */
    dsla_model_t *model; /* NULL with a backend: a model with no host copy (random weights) */
    const dsla_tokenizer_t *tokenizer;
    /* borrowed: the chat template HTTP chat requests render with (NULL: the plain one) */
    const dsla_chat_template_t *chat_template;
    dsla_engine_config_t engine;
    dsla_serve_backend_t *backend; /* the serving actor's backend (a GPU deployment); NULL: CPU */
    bool gpu_warmup;               /* dsla_serving_config_t.gpu_warmup */
    const char *endpoint; /* the clients' endpoint: the gateway's, or the serving actor's when
                             serving_only */
    const char *const *replicas; /* remote serving endpoints the gateway also routes to */
    int n_replicas;
    bool serving_only; /* no gateway, no HTTP: the model's serving actor binds endpoint */
    const char *http;  /* HTTP address "127.0.0.1:8000" (port 0 picks one); NULL: no HTTP */
    /* Generation requests HTTP carries at once, queued or running; 0: the gateway's bound, which
     * is engine.max_queued + 2 * engine.max_running per replica (remote ones assumed alike). */
    uint32_t http_max_in_flight;
    const dsla_http_auth_t *http_auth;    /* dsla_http_config_t.auth; borrowed */
    bool http_allow_insecure;             /* dsla_http_config_t.allow_insecure */
    const char *const *http_cors_origins; /* dsla_http_config_t.cors_origins; borrowed */
    size_t n_http_cors_origins;
    const dsla_http_auth_t *admin_auth; /* dsla_controller_config_t.admin_auth; borrowed */
    const char *model_name;             /* the model's id in the HTTP API */
    uint32_t heartbeat_ms; /* 0: DSLA_ACTOR_HEARTBEAT_MS, for every actor of the node */
    /* The controller (actors/controller.h), run when layers_dir is set: */
    const char *layers_dir;    /* layer versions from `dsla distill --out` */
    const char *controller_db; /* its SQLite database */
    const char *admin;         /* its mailbox for dslactl (and remote replicas) */
    const char *policy;        /* NULL: the stored policy */
    /* another mailbox of the controller, for replicas and a distiller on other hosts when dslactl
     * has admin to itself (a cluster file's controller port and admin_port); NULL: none */
    const char *controller_bind;
    /* The distiller (actors/distiller.h), run when distiller.out_dir is set; the node fills in its
     * context, mailbox, controller and heartbeat, and the controller's layers_dir defaults to its
     * out_dir. It needs the controller: not with serving_only. */
    dsla_distiller_config_t distiller;
    /* With a distiller, the local serving actor samples 1 in sample_every of the prompts it serves
     * (0: DSLA_SERVING_SAMPLE_EVERY) for it, at most sample_tokens_per_s tokens a second (0: the
     * default), seeded with sample_seed (serving.h); no_sample_prompts opts out: no prompt leaves
     * the serving actor. */
    bool no_sample_prompts;
    uint32_t sample_every;
    uint32_t sample_tokens_per_s;
    uint64_t sample_seed;
    /* serving_only: a remote controller's mailbox to report to; NULL: none */
    const char *controller;
    uint32_t report_ms; /* the serving actor's LOAD_REPORT interval; 0: the default */
    /* serving_only with a controller: the layer cache the serving actor fetches layer versions
     * into (serving.h); NULL: it opens the SET_PLAN's paths (a shared filesystem) */
    const char *layer_cache;
    /* the serving actor's name, its routing id at the controller; NULL: "serving0". Replicas
     * reporting to one controller need distinct names. */
    const char *serving_name;
    uint32_t fetch_chunk; /* bytes per LAYER_FETCH; 0: the default */
    /* CURVE on every tcp:// link of the node (dsla_actor_ctx_secure); borrowed. NULL: plaintext,
     * whose mailboxes bind only loopback unless http_allow_insecure (which then covers them too).
     * The HTTP front end reaches its gateway with a keypair of its own, made at start. */
    const dsla_curve_keys_t *curve;
    /* The layer key (layer_mac.h), borrowed: the distiller seals the versions it writes, the
     * controller and the serving actor accept only sealed ones. NULL: unauthenticated versions. */
    const dsla_layer_key_t *layer_key;
    /* Several local serving replicas in this process (n_local > 0; model and backend above then
     * stay NULL): serving0..serving{n_local-1} at inproc://servingI, each its own engine, all
     * routed to by the gateway (beside any remote replicas), all reporting to the controller and
     * adopting its plans, all sampling prompts for the distiller. Not with serving_only. */
    const dsla_node_local_t *local;
    int n_local;
} dsla_node_config_t;

dsla_status_t dsla_node_create(dsla_node_t **out, const dsla_node_config_t *config);
/* Requests the gateway keeps outstanding, and HTTP in flight unless http_max_in_flight says:
 * engine.max_queued + 2 * engine.max_running per replica (local and remote), at most 2^24. */
uint32_t dsla_node_request_bound(const dsla_node_config_t *config);
/* Stops HTTP, the gateway, the serving actor, the distiller (within a training step), then the
 * controller. Harmless on NULL. */
void dsla_node_destroy(dsla_node_t **n);
/* Before destroy on SIGTERM: HTTP stops accepting and its requests in flight get up to grace_ms
 * to finish (dsla_http_drain); a node without HTTP returns at once. */
#define DSLA_NODE_GRACE_MS 10000
void dsla_node_drain(dsla_node_t *n, uint32_t grace_ms);
/* The clients' endpoint as bound (a wildcard port resolved). */
const char *dsla_node_endpoint(const dsla_node_t *n);
/* The HTTP port as bound; 0 when HTTP is off. */
int dsla_node_http_port(const dsla_node_t *n);
/* The controller's admin mailbox as bound; NULL without a controller. */
const char *dsla_node_admin_endpoint(const dsla_node_t *n);

#endif

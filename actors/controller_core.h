/* The controller's logic as a plain state machine (DESIGN.md section 7): the replicas and their
 * liveness, load reports in, the policy's decisions, SET_PLAN out with increasing ids, PLAN_ACK and
 * PLAN_NACK in, drain, the catalogue of layer versions and what was announced of their files, the
 * distiller's progress, and every admin command but history. The actor (controller.c) decodes
 * messages and calls the dsla_ctl_core_on_* functions; tests call them directly with a fake send
 * and a virtual clock.
 *
 * Contract: runs on one thread and never blocks: it reads time only through env.now_ms and
 * env.wall_ms, sends only through env.send, and hands every durable change (settings, plans,
 * layer versions, events) to env.persist in order, which the actor applies on a worker. File work
 * is done elsewhere and its result handed in: verifying an announced version (dsla_ctl_verify_run,
 * then dsla_ctl_core_on_layer_verified) and reading chunks (controller_chunks.h). The one
 * exception is dsla_ctl_core_start, which reads the database and digests every catalogued file
 * once, before the actor's loop runs. */
#ifndef DSLA_ACTORS_CONTROLLER_CORE_H
#define DSLA_ACTORS_CONTROLLER_CORE_H

#include <stdbool.h>
#include <stdint.h>

#include "actors/controller_admin.h"
#include "proto/proto.h"
#include "runtime/control/controller_store.h"
#include "runtime/control/layer_catalogue.h"
#include "runtime/control/policy.h"
#include "runtime/core/status.h"

/* A replica whose SET_PLAN got no answer for this long may be sent one again. */
#define DSLA_CONTROLLER_PENDING_MS 10000
/* A refused plan is sent again this long after the refusal, then after twice as long at each
 * further refusal of the same target, up to 2^DSLA_CONTROLLER_RETRY_DOUBLINGS times as long (10 s
 * to 5 min 20 s). Many refusals are transient (a fetch cut by a dropped connection or a restarted
 * controller, a chunk corrupted on the wire); a lasting one (a bad version) then costs one
 * SET_PLAN and fetch attempt per interval. */
#define DSLA_CONTROLLER_RETRY_MS 10000
#define DSLA_CONTROLLER_RETRY_DOUBLINGS 5
/* A replica that has reported and then sent no LOAD_REPORT for this long (thirty of the replicas'
 * default report intervals) is dropped from the table, so that names which reported once (a
 * replica gone for good, or anyone's invented ones) cannot fill its DSLA_PROTO_REPLICAS_MAX slots
 * for good. It is added again at its next report. */
#define DSLA_CONTROLLER_REPLICA_EXPIRE_MS 30000

/* What the core may do to the world, injected. */
typedef struct {
    void *user;
    uint64_t (*now_ms)(void *user); /* monotonic: cooldowns and SET_PLAN timeouts */
    int64_t (*wall_ms)(void *user); /* event stamps, milliseconds since the epoch */
    /* One message to the actor named dst with correlation id: DSLA_MSG_SET_PLAN with msg a
     * dsla_proto_set_plan_t (borrowed for the call). Not OK: not sent; the core tries again at the
     * replica's next report. */
    dsla_status_t (*send)(void *user, const char *dst, uint32_t type, uint64_t id, const void *msg);
    /* One durable change, to be applied in call order (w is borrowed for the call). */
    void (*persist)(void *user, const dsla_ctl_write_t *w);
} dsla_ctl_env_t;

/* One replica as the controller knows it. */
typedef struct {
    char name[DSLA_PROTO_NAME_MAX + 1];
    bool alive;
    bool have_report;
    dsla_proto_load_report_t last; /* its latest report; the plan updated by its answers */
    int target;                    /* DSLA layers the controller chose for it */
    uint64_t last_change_ms;
    uint64_t last_report_ms; /* when its latest LOAD_REPORT came */
    uint64_t dead_since_ms;  /* when it was last counted dead (0: never) */
    uint64_t pending_seq;    /* SET_PLAN in flight; 0: none */
    uint64_t pending_since_ms;
    int pending_target;
    int refused_target; /* -1: none; a refused plan waits for its retry or a target change */
    int refusals;       /* of refused_target in a row */
    uint64_t refused_at_ms;
    char refusal[DSLA_PROTO_MESSAGE_MAX + 1];
} dsla_ctl_replica_t;

/* What was announced of the file of a catalogued layer version: replicas fetching it get its
 * bytes only while the file still has this size and xxh64. */
typedef struct {
    const char *path;
    int layer, version;
    uint64_t size, xxh64;
} dsla_ctl_file_t;

typedef struct dsla_ctl_core dsla_ctl_core_t;

/* Scans layers_dir into the catalogue; NOT_FOUND naming it when it cannot be read. */
dsla_status_t dsla_ctl_core_create(dsla_ctl_core_t **out, const char *layers_dir,
                                   const dsla_ctl_env_t *env);
void dsla_ctl_core_destroy(dsla_ctl_core_t **c);
/* Before start: catalogued versions must carry this key's MAC (layer_mac.h); copied. */
void dsla_ctl_core_set_layer_key(dsla_ctl_core_t *c, const dsla_layer_key_t *key);
/* Start-up, before any message: the policy, drain flag, announced layer versions and replicas'
 * last DSLA layer counts from store (NULL: a fresh start), then policy over them when given
 * (INVALID_ARGUMENT naming the field); digests every catalogued file; records `start`. */
dsla_status_t dsla_ctl_core_start(dsla_ctl_core_t *c, dsla_ctl_store_t *store, const char *policy);

/* ---- messages and timers ---- */

/* A LOAD_REPORT from the replica named from ("" for an anonymous client: refused); heard: whether
 * the mailbox hears its heartbeats now (dsla_actor_hears), which alone makes it alive. */
dsla_status_t dsla_ctl_core_on_load_report(dsla_ctl_core_t *c, const char *from,
                                           const dsla_proto_load_report_t *r, bool heard);
/* PLAN_ACK (ack) or PLAN_NACK; answers to anything but the SET_PLAN in flight are ignored. */
void dsla_ctl_core_on_plan_reply(dsla_ctl_core_t *c, const char *from, bool ack,
                                 const dsla_proto_plan_reply_t *p);
/* A peer's liveness changed (the actor's heartbeats). A replica that dies gives up the SET_PLAN in
 * flight; one that comes back is sent its target at once when it reported since it was counted
 * dead (a new replica's first report often precedes its first PING), else at its next report. */
void dsla_ctl_core_on_peer(dsla_ctl_core_t *c, const char *peer, bool alive);
/* Every so often (the actor: each heartbeat interval): SET_PLANs unanswered for
 * DSLA_CONTROLLER_PENDING_MS are given up and sent again. */
void dsla_ctl_core_on_tick(dsla_ctl_core_t *c);
dsla_status_t dsla_ctl_core_on_distill_progress(dsla_ctl_core_t *c, const char *from,
                                                const dsla_proto_distill_progress_t *p);

/* LAYER_READY in two halves: dsla_ctl_verify_run on a worker (it reads the whole file), then
 * dsla_ctl_core_on_layer_verified on the core's thread, which catalogues a verified version,
 * records it and evaluates every replica again, or records `layer_refused`. */
typedef struct {
    char from[DSLA_PROTO_NAME_MAX + 1];
    char layers_dir[DSLA_CATALOGUE_PATH_MAX + 1]; /* the announced file must lie directly inside */
    const dsla_layer_key_t *layer_key; /* its MAC is checked with it; NULL: none (borrowed) */
    dsla_proto_layer_ready_t ready;
    dsla_status_t status; /* of the verification */
    char error[DSLA_PROTO_MESSAGE_MAX + 1];
    dsla_catalogue_entry_t entry;
    int order[DSLA_CATALOGUE_LAYERS_MAX];
    int n_order;
} dsla_ctl_verify_t;

void dsla_ctl_verify_run(dsla_ctl_verify_t *v);
/* The layer version directory verification confines announced files to. */
const char *dsla_ctl_core_layers_dir(const dsla_ctl_core_t *c);
void dsla_ctl_core_on_layer_verified(dsla_ctl_core_t *c, const dsla_ctl_verify_t *v);

/* LAYER_FETCH bookkeeping (controller_chunks.h serves the bytes): the announced file of a
 * catalogued version (false when the catalogue does not hold it), and the outcome of one fetch. */
bool dsla_ctl_core_file(const dsla_ctl_core_t *c, int layer, int version, dsla_ctl_file_t *out);
/* Whether name is a replica in the table (it has reported): who may fetch layer versions. */
bool dsla_ctl_core_is_replica(const dsla_ctl_core_t *c, const char *name);
void dsla_ctl_core_on_chunk_served(dsla_ctl_core_t *c, const char *to,
                                   const dsla_proto_layer_chunk_t *chunk);
void dsla_ctl_core_on_fetch_refused(dsla_ctl_core_t *c, const char *to, uint64_t offset,
                                    const char *why);

/* Runs an admin command but history (the actor reads that from the database) and appends its reply
 * text to out; INVALID_ARGUMENT naming the field and the limit. A command that changes the policy
 * or the drain flag evaluates every replica again. */
dsla_status_t dsla_ctl_core_admin(dsla_ctl_core_t *c, const dsla_admin_cmd_t *cmd,
                                  dsla_admin_text_t *out);

/* ---- for status and tests ---- */

const dsla_ctl_replica_t *dsla_ctl_core_replica(const dsla_ctl_core_t *c, const char *name);
const dsla_catalogue_t *dsla_ctl_core_catalogue(const dsla_ctl_core_t *c);
const dsla_policy_config_t *dsla_ctl_core_policy(const dsla_ctl_core_t *c);
bool dsla_ctl_core_draining(const dsla_ctl_core_t *c);

#endif

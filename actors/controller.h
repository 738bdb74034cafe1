/* The controller actor (DESIGN.md sections 3, 7 and 8): decides how many layers of each serving
 * replica run DSLA and tells the replicas, and answers dslactl.
 *
 * It holds the catalogue of layer versions (runtime/control/layer_catalogue.h), one policy for all
 * replicas (runtime/control/policy.h) and, per replica, the DSLA layer count it chose (its target)
 * and the plan the replica last reported. On every LOAD_REPORT it evaluates the policy for that
 * replica; when the replica does not run the first `target` versions of the catalogue it sends
 * SET_PLAN with them and waits for PLAN_ACK or PLAN_NACK before sending another. A refused plan is
 * sent again after a backoff (DSLA_CONTROLLER_RETRY_MS, doubling) or at once when the target or the
 * policy changes. ADMIN commands (status, policy get/set,
 * convert/revert, history, drain) are answered with ADMIN_REPLY text, or ERROR naming the field and
 * the limit. Policy, drain flag, adopted plans, announced layer versions and the event history live
 * in SQLite (runtime/control/controller_store.h).
 *
 * A distiller (distiller.h) announces each layer version it writes with LAYER_READY: the controller
 * takes it only from its configured distiller, only for a regular file directly inside its layer
 * directory, and verifies the file (size and xxh64, then the header's layer, version and checksum),
 * adds it to the catalogue and the database, and evaluates every replica again. DISTILL_PROGRESS
 * feeds the distiller line of `dslactl status`.
 *
 * Replicas without its filesystem fetch the versions it names with LAYER_FETCH (DESIGN.md section
 * 7's chunked ZeroMQ transfer): it answers each with one LAYER_CHUNK of the catalogued file, only
 * while the file still has the size and xxh64 announced (LAYER_READY, or read at start-up), and
 * ERROR otherwise; `dslactl status` counts the chunks served.
 *
 * Built as a shell (controller.c: mailbox, timer, workers) around a state machine
 * (controller_core.h) that tests step in-process; the admin words are parsed in
 * controller_admin.h, chunks served by controller_chunks.h, SQLite jobs queued by
 * controller_writer.h.
 *
 * Contract: replicas and distillers reach it at any of its mailboxes (they connect; it never
 * connects to them) and are known by their actor names; answers that come from a worker (a chunk,
 * the history) go back by that name. Layer version paths travel as the controller sees them, with
 * the size and xxh64 a fetching replica needs. It never blocks on another actor and prints
 * nothing; its loop does no file or database work after start-up: verifying an announced file,
 * reading a chunk and every SQLite write or history read run on libuv's worker pool. */
#ifndef DSLA_ACTORS_CONTROLLER_H
#define DSLA_ACTORS_CONTROLLER_H

#include "actors/http_auth.h"
#include "runtime/model/layer_mac.h"
#include "runtime/actor/actor.h"

typedef struct dsla_controller dsla_controller_t;

typedef struct {
    const char *name; /* actor name; NULL: "controller" */
    dsla_actor_ctx_t *ctx;
    /* mailboxes: replicas and dslactl may use any ("inproc://controller",
     * "tcp://127.0.0.1:7071", a second tcp port apart from dslactl's); unused slots NULL */
    const char *bind[3];
    const char *layers_dir; /* layer versions written by `dsla distill --out` */
    /* the actor name of its distiller, the only sender of LAYER_READY and DISTILL_PROGRESS it
     * takes; NULL: "distiller" (a distiller's default name) */
    const char *distiller;
    /* keys an ADMIN must carry (dslactl --admin-key-file, DSLA_ADMIN_KEY); borrowed. NULL: the
     * admin mailbox is open to anyone who reaches it (loopback by default) */
    const dsla_http_auth_t *admin_auth;
    /* the layer key: announced versions must carry its MAC (layer_mac.h); copied. NULL: versions
     * are unauthenticated (xxh64 only) */
    const dsla_layer_key_t *layer_key;
    const char *db_path; /* SQLite database, created when absent */
    /* policy in text form ("manual layers=2"); replaces the stored one when given. NULL: the stored
     * one, else the threshold defaults */
    const char *policy;
    uint32_t heartbeat_ms; /* 0: DSLA_ACTOR_HEARTBEAT_MS; also the interval of its tick */
} dsla_controller_config_t;

/* Opens the database, scans the catalogue and starts the actor; errors name the file or field. */
dsla_status_t dsla_controller_create(dsla_controller_t **out, const dsla_controller_config_t *c);
void dsla_controller_destroy(dsla_controller_t **c);
/* Mailbox i as bound (a wildcard port resolved); NULL for an unused slot. */
const char *dsla_controller_endpoint(const dsla_controller_t *c, int i);

#endif

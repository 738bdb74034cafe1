/* The gateway's routing, as a state machine (DESIGN.md section 7: "the logic of an actor lives in a
 * state machine that tests drive in-process; the actor is its shell").
 *
 * It keeps the table of routes (a client's request <-> the id it travels under to its replica) and
 * the replicas' states and loads: it routes each GENERATE to the live replica with the fewest
 * outstanding requests, refuses one past the outstanding bound, relays a replica's TOKENs and its
 * DONE or ERROR to the client under the client's own id, moves a dead (or full) replica's requests
 * that have not streamed a token to another replica and ends the others with UNAVAILABLE, cancels
 * the requests of a client that died or cannot be reached, and counts what REPORT says.
 *
 * Contract: one thread (the actor's loop). Messages leave only through ops.send; GENERATE bodies
 * are forwarded byte for byte, never decoded. Nothing here blocks or knows sockets and timers. */
#ifndef DSLA_ACTORS_GATEWAY_CORE_H
#define DSLA_ACTORS_GATEWAY_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

/* Outstanding requests, all replicas together, beyond which a GENERATE is refused at once with
 * RESOURCE_EXHAUSTED, when the config gives none: one replica's default queue and twice its
 * running set (runtime/serve/engine.c; the slack covers replies on their way), so that the
 * replica's own admission control (a queue bounded by requests, tokens and time) speaks first.
 * dsla-serve sizes it for its replicas (actors/node.c). */
#define DSLA_GATEWAY_OUTSTANDING_MAX (4096 + 2 * 64)
/* Replicas one gateway routes to: one REPORT lists them all. */
#define DSLA_GATEWAY_REPLICA_MAX DSLA_PROTO_REPLICAS_MAX

typedef struct {
    const char *name;     /* the replica's actor name: "serving0" */
    const char *endpoint; /* its mailbox: "inproc://serving0", "tcp://10.0.0.2:7072" */
} dsla_gateway_replica_t;

typedef struct dsla_gateway_core dsla_gateway_core_t;

typedef struct {
    dsla_status_t (*send)(void *user, const char *dst, uint32_t type, uint64_t id, const void *body,
                          size_t len);
    void *user;
} dsla_gateway_core_ops_t;

typedef struct {
    const dsla_gateway_replica_t *replicas; /* at least one */
    size_t n_replicas;
    uint32_t max_outstanding; /* 0: DSLA_GATEWAY_OUTSTANDING_MAX */
} dsla_gateway_core_config_t;

dsla_status_t dsla_gateway_core_create(dsla_gateway_core_t **out,
                                       const dsla_gateway_core_config_t *config,
                                       const dsla_gateway_core_ops_t *ops);
/* Forgets every route without a word to anyone. Harmless on NULL. */
void dsla_gateway_core_destroy(dsla_gateway_core_t **c);

/* A GENERATE from client `from` with correlation id: sent on to a replica, or refused with the
 * status returned (its message the sentence for the shell's ERROR reply). */
dsla_status_t dsla_gateway_core_on_generate(dsla_gateway_core_t *c, const char *from, uint64_t id,
                                            const void *body, size_t len);
/* A CANCEL from `from`: forwarded to the replica, whose DONE ("cancelled") ends the route.
 * Malformed, or naming no request of that client: the error to answer with. */
dsla_status_t dsla_gateway_core_on_cancel(dsla_gateway_core_t *c, const char *from,
                                          const void *body, size_t len);
/* A replica's TOKEN, DONE or ERROR under the id the gateway gave it; one matching no route (the
 * tail of a cancelled or moved request) is dropped. */
void dsla_gateway_core_on_token(dsla_gateway_core_t *c, const char *replica, uint64_t id,
                                const void *body, size_t len);
void dsla_gateway_core_on_done(dsla_gateway_core_t *c, const char *replica, uint64_t id,
                               const void *body, size_t len);
void dsla_gateway_core_on_error(dsla_gateway_core_t *c, const char *replica, uint64_t id,
                                const void *body, size_t len);
/* A peer found alive or dead: a replica's state follows; a dead replica's requests move or fail,
 * a dead client's requests are cancelled. */
void dsla_gateway_core_on_peer(dsla_gateway_core_t *c, const char *peer, bool alive);
/* Asks every replica not known dead for its load (STATUS); their LOAD_REPORTs come back through
 * dsla_gateway_core_on_load and travel in REPORT, for /metrics. The shell calls it every
 * heartbeat interval. */
void dsla_gateway_core_poll(dsla_gateway_core_t *c);
/* A replica's LOAD_REPORT (the answer to STATUS): kept as its latest load. */
void dsla_gateway_core_on_load(dsla_gateway_core_t *c, const char *replica, const void *body,
                               size_t len);
/* The counters and the replicas, for a REPORT. */
void dsla_gateway_core_report(const dsla_gateway_core_t *c, dsla_proto_report_t *out);

/* Routes in flight (tests). */
size_t dsla_gateway_core_routes(const dsla_gateway_core_t *c);

#endif

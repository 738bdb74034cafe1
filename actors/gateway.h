/* The gateway actor (DESIGN.md sections 3, 7 and 8): the clients' one endpoint in front of the
 * serving replicas.
 *
 * It takes GENERATE and CANCEL from clients (the client stub of proto/dsla_client.h, `dsla
 * generate --endpoint`, the HTTP front end), routes each GENERATE to the live replica with the
 * fewest outstanding requests, relays that replica's TOKENs and its DONE or ERROR back to the
 * client under the client's own id, forwards CANCEL, and answers STATUS with a REPORT. It
 * heartbeats every replica; when one is found dead, its requests that have not streamed a token are
 * sent again to another live replica, and the others end with UNAVAILABLE (a stream cannot be
 * resumed elsewhere without repeating or losing text). Requests of a client whose heartbeats stop
 * are cancelled on their replicas.
 *
 * Contract: it is a plain message router: it never decodes a prompt, never tokenizes and holds no
 * engine, so it forwards GENERATE bodies byte for byte. It never blocks: a replica or client whose
 * queue is full gets the request failed, not waited on. Everything after create runs on the
 * actor's thread; nothing is shared with another thread. The routing itself lives in
 * gateway_core.h; this is its shell. */
#ifndef DSLA_ACTORS_GATEWAY_H
#define DSLA_ACTORS_GATEWAY_H

#include <stdint.h>

#include "actors/gateway_core.h"
#include "runtime/actor/actor.h"

typedef struct dsla_gateway dsla_gateway_t;

typedef struct {
    const char *name; /* actor name; NULL: "gateway" */
    dsla_actor_ctx_t *ctx;
    /* Mailboxes clients connect to, "tcp://127.0.0.1:7070" first (DESIGN.md section 8); unused
     * slots NULL; "tcp://127.0.0.1:*" picks a free port (dsla_gateway_endpoint). */
    const char *bind[DSLA_ACTOR_BIND_MAX];
    const dsla_gateway_replica_t *replicas; /* at least one */
    size_t n_replicas;
    uint32_t max_outstanding; /* 0: DSLA_GATEWAY_OUTSTANDING_MAX */
    uint32_t heartbeat_ms;    /* 0: DSLA_ACTOR_HEARTBEAT_MS */
} dsla_gateway_config_t;

dsla_status_t dsla_gateway_create(dsla_gateway_t **out, const dsla_gateway_config_t *config);
/* Stops the actor; requests in flight are dropped without events (their replicas cancel them
 * when the gateway's heartbeats stop). Harmless on NULL. */
void dsla_gateway_destroy(dsla_gateway_t **g);
/* Bind slot i as bound (a wildcard port resolved); NULL for an unused slot. */
const char *dsla_gateway_endpoint(const dsla_gateway_t *g, int i);

#endif

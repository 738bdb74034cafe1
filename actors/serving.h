/* The serving actor (DESIGN.md sections 6 and 7): one actor owning one serving engine, answering
 * GENERATE with streamed TOKENs and a DONE, and CANCEL by cancelling.
 *
 * Contract: after create, the engine belongs to the actor's thread. A step driver runs
 * dsla_engine_step from zero-timeout timers while the engine has work and stops when it is idle,
 * so an idle server never spins. Events go to the client's routing id; a client that cannot be
 * reached any more (gone, or its queue full) has its request cancelled, as does one whose
 * heartbeats stop. Refused requests are answered with ERROR and the engine's message. It never
 * blocks on another actor and prints nothing; the model and tokenizer are borrowed and must
 * outlive it. */
#ifndef DSLA_ACTORS_SERVING_H
#define DSLA_ACTORS_SERVING_H

#include "runtime/actor/actor.h"
#include "runtime/serve/engine.h"

typedef struct dsla_serving dsla_serving_t;

typedef struct {
    const char *name; /* actor name; NULL: "serving" */
    dsla_actor_ctx_t *ctx;
    const char *endpoint; /* mailbox, "tcp://127.0.0.1:7070"; "tcp://127.0.0.1:*" picks a port */
    dsla_model_t *model;
    const dsla_tokenizer_t *tokenizer;
    dsla_engine_config_t engine;
    uint32_t heartbeat_ms; /* 0: DSLA_ACTOR_HEARTBEAT_MS */
} dsla_serving_config_t;

dsla_status_t dsla_serving_create(dsla_serving_t **out, const dsla_serving_config_t *config);
/* Stops the actor (requests in flight are dropped without events), then frees the engine. */
void dsla_serving_destroy(dsla_serving_t **s);
/* The mailbox as bound (a wildcard port resolved). */
const char *dsla_serving_endpoint(const dsla_serving_t *s);

#endif

/* The serving actor's requests, as a state machine (DESIGN.md section 7: "the logic of an actor
 * lives in a state machine that tests drive in-process; the actor is its shell").
 *
 * It takes GENERATE and CANCEL from clients, hands requests to an engine under keys of its own,
 * streams the engine's events back as TOKENs and a DONE (or an ERROR carrying the engine's own
 * sentence), cancels the requests of a client that cannot be reached or whose heartbeats stopped,
 * samples accepted prompts for the distiller (serving_sample.h), and builds the LOAD_REPORT from
 * the engine's metrics snapshot, its own request ages and the plan (serving_plan.h).
 *
 * Contract: one thread (the actor's loop). Messages leave only through ops.send, time comes only
 * from ops.now_ms, the engine is reached only through ops.submit / ops.cancel / ops.metrics
 * (serving_engine.h in the actor, a fake in tests), and its events come back through
 * dsla_serving_core_on_events. Nothing here blocks, sleeps or knows sockets and timers. */
#ifndef DSLA_ACTORS_SERVING_CORE_H
#define DSLA_ACTORS_SERVING_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "actors/serving_engine.h"
#include "actors/serving_plan.h"
#include "actors/serving_sample.h"
#include "proto/proto.h"

typedef struct dsla_serving_core dsla_serving_core_t;

typedef struct {
    dsla_status_t (*send)(void *user, const char *dst, uint32_t type, uint64_t id, const void *body,
                          size_t len);
    uint64_t (*now_ms)(void *user); /* monotonic */
    /* g moves to the engine (zeroed); the request's events come back under key */
    dsla_status_t (*submit)(void *user, uint64_t key, dsla_proto_generate_t *g);
    dsla_status_t (*cancel)(void *user, uint64_t key);
    void (*metrics)(void *user, dsla_engine_metrics_t *out);
    void *user;
} dsla_serving_core_ops_t;

typedef struct {
    uint32_t num_layers;
    const char *name;              /* this replica's, told to clients in DONE; NULL: none */
    const char *controller;        /* where LOAD_REPORTs go (a peer name); NULL: nowhere */
    dsla_serving_plans_t *plans;   /* borrowed: the plan reports name; NULL: the engine's id */
    dsla_serving_sample_t *sample; /* borrowed; NULL: no prompt is sampled */
    const char *distiller;         /* where sampled prompts go, with sample */
    /* borrowed: the texts of the tokens that logprobs list; NULL: they go without text */
    const dsla_tokenizer_t *tokenizer;
} dsla_serving_core_config_t;

dsla_status_t dsla_serving_core_create(dsla_serving_core_t **out,
                                       const dsla_serving_core_config_t *config,
                                       const dsla_serving_core_ops_t *ops);
/* Forgets every request without a word to its client. Harmless on NULL. */
void dsla_serving_core_destroy(dsla_serving_core_t **c);

/* A GENERATE from client `from` (a printable name) with correlation id. A refusal the core can
 * make at once (malformed, stream false, out of memory) is returned with the message for the
 * shell's ERROR reply; an accepted request's answers come as TOKENs and DONE or ERROR. */
dsla_status_t dsla_serving_core_on_generate(dsla_serving_core_t *c, const char *from, uint64_t id,
                                            const void *body, size_t len);
/* A CANCEL from `from`: its request ends with DONE "cancelled". Malformed, or naming no running
 * request of that client: the error to answer with. */
dsla_status_t dsla_serving_core_on_cancel(dsla_serving_core_t *c, const char *from,
                                          const void *body, size_t len);
/* A client whose heartbeats stopped: its requests are cancelled, nothing more is sent to it. */
void dsla_serving_core_on_peer_gone(dsla_serving_core_t *c, const char *peer);
/* What one engine step produced (adoptions are the plan machine's business). */
void dsla_serving_core_on_events(dsla_serving_core_t *c, const dsla_serving_batch_t *batch);
/* The report interval came: one LOAD_REPORT to the controller. */
void dsla_serving_core_on_report(dsla_serving_core_t *c);
/* A STATUS (the gateway's poll for /metrics): the LOAD_REPORT body to answer with, cumulative
 * counters and histograms, no windowed p90s (those belong to the controller's reports). */
dsla_status_t dsla_serving_core_on_status(dsla_serving_core_t *c, dsla_proto_buf_t *body);
/* The sampling interval came: the batch of sampled prompts to the distiller. */
void dsla_serving_core_on_sample_flush(dsla_serving_core_t *c);

/* Requests in flight (tests). */
size_t dsla_serving_core_requests(const dsla_serving_core_t *c);

#endif

/* Plan changes of the serving actor (DESIGN.md section 7, "weight transfer"), as a state machine:
 * SET_PLAN -> fetch the layer versions the cache lacks (optional) -> load and verify them (off the
 * loop) -> the engine adopts the plan at a step boundary -> PLAN_ACK, or PLAN_NACK at any stage
 * with the reason, the old plan kept.
 *
 * Fetching (config.layer_cache set): a worker first checks which versions the cache holds (their
 * size and whole-file xxh64); each version the cache lacks is then fetched from the SET_PLAN's
 * sender with LAYER_FETCH, one chunk in flight. Each LAYER_CHUNK is checked on the loop and then
 * written, hashed and, the last one, fsync'd, checked against the announced size and xxh64 and
 * renamed into the cache off the loop (ops.write, a worker; transfer.h), one write at a time in
 * the chunks' order: the next LAYER_FETCH goes out as soon as a chunk is accepted, so the network
 * and the disk overlap, but at most one chunk waits behind the write in flight (a slow disk slows
 * the fetch, never the loop, and memory stays bounded). No chunk within fetch_timeout_ms of its
 * LAYER_FETCH (on_tick's clock; time spent waiting for the disk does not count), a chunk that
 * does not belong, a failed write, a hash mismatch or the sender's ERROR ends the change with
 * PLAN_NACK. Without a cache the SET_PLAN's paths are read as they are (a filesystem shared with
 * the controller).
 *
 * Loading (dsla_serving_load_run, which the shell runs on a worker): every file is read, its
 * layer index, shape and weight checksum checked against the SET_PLAN, and a dsla_plan_t built.
 *
 * One change runs at a time. A newer SET_PLAN supersedes one still fetching (PLAN_NACK CANCELLED);
 * one that arrives while a change is loading or being adopted waits for it, and a third supersedes
 * the waiting one.
 *
 * Contract: on the actor's thread; messages leave only through ops.send, time comes only from the
 * callers' now, loading, writing and adoption are asked of the shell through ops.load, ops.write
 * and ops.adopt, whose results come back through dsla_serving_plans_loaded, _written and
 * _adopted. No sockets, timers or threads
 * here. */
#ifndef DSLA_ACTORS_SERVING_PLAN_H
#define DSLA_ACTORS_SERVING_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "actors/transfer.h"
#include "proto/proto.h"
#include "runtime/model/config.h"
#include "runtime/serve/plan.h"

typedef struct dsla_serving_plans dsla_serving_plans_t;

/* A job for a worker: filled by the state machine, run by dsla_serving_load_run anywhere (it
 * touches nothing else), handed back with dsla_serving_plans_loaded. A probe (before fetching)
 * only checks which versions the layer cache already holds, which reads and hashes whole files;
 * a load reads and verifies them into a plan. */
typedef struct {
    bool probe;
    bool cached[DSLA_PROTO_LAYERS_MAX]; /* a probe's result, per entry of request */
    dsla_proto_set_plan_t request;      /* the paths to read (the job's own copy) */
    const dsla_model_config_t *mcfg;
    dsla_plan_t *plan; /* the result */
    dsla_status_t status;
    char message[DSLA_PROTO_MESSAGE_MAX + 1];
    uint32_t n_dsla; /* the plan's DSLA layers, ascending, with their checksums */
    dsla_proto_dsla_layer_t dsla[DSLA_PROTO_LAYERS_MAX];
} dsla_serving_load_t;

/* A probe: fills cached. A load: loads and verifies the versions job->request names into
 * job->plan (or status and message). */
void dsla_serving_load_run(dsla_serving_load_t *job);
void dsla_serving_load_free(dsla_serving_load_t **job);

/* A job for a worker: one accepted chunk's bytes to append to the file being fetched (the last
 * one also syncs, verifies and renames it), run by dsla_serving_write_run anywhere, handed back
 * with dsla_serving_plans_written. */
typedef struct {
    dsla_transfer_t *xfer; /* the change's; the job's own once the change ends while it runs */
    void *bytes;           /* the job's copy */
    size_t len;
    bool done; /* results: the file is complete, verified and in place */
    dsla_status_t status;
    char message[DSLA_PROTO_MESSAGE_MAX + 1];
    bool orphaned;            /* the loop's: the change ended while the job ran; it owns xfer */
    void (*hook)(void *user); /* the shell's: run on the worker first (tests: a slow disk) */
    void *hook_user;
} dsla_serving_write_t;

void dsla_serving_write_run(dsla_serving_write_t *job);
/* Frees the job (and, orphaned, its transfer, whose unfinished .part goes). Harmless on NULL. */
void dsla_serving_write_free(dsla_serving_write_t **job);

typedef struct {
    dsla_status_t (*send)(void *user, const char *dst, uint32_t type, uint64_t id, const void *body,
                          size_t len);
    /* Runs dsla_serving_load_run(job) off the loop and gives job back to
     * dsla_serving_plans_loaded; job is then the caller's until it does. */
    dsla_status_t (*load)(void *user, dsla_serving_load_t *job);
    /* Runs dsla_serving_write_run(job) off the loop and gives job back to
     * dsla_serving_plans_written; one job at a time is asked for. */
    dsla_status_t (*write)(void *user, dsla_serving_write_t *job);
    /* Hands plan to the engine (the reference moves); dsla_serving_plans_adopted follows. */
    dsla_status_t (*adopt)(void *user, dsla_plan_t **plan);
    void *user;
} dsla_serving_plan_ops_t;

typedef struct {
    const dsla_model_config_t *mcfg;
    const char *layer_cache;   /* created when missing; NULL: the SET_PLAN's paths */
    uint32_t fetch_chunk;      /* bytes per LAYER_FETCH, 1..DSLA_PROTO_CHUNK_MAX */
    uint32_t fetch_timeout_ms; /* for each LAYER_CHUNK */
    uint64_t plan_id;          /* the engine's plan at the start */
} dsla_serving_plans_config_t;

dsla_status_t dsla_serving_plans_create(dsla_serving_plans_t **out,
                                        const dsla_serving_plans_config_t *config,
                                        const dsla_serving_plan_ops_t *ops);
/* Drops every change in progress unanswered (a transfer's .part file removed; a write job still
 * out is orphaned: it owns its transfer, and dsla_serving_write_free or _written frees both). */
void dsla_serving_plans_destroy(dsla_serving_plans_t **p);

/* A SET_PLAN from `from` (a named peer: fetches and the answer go there) with correlation id.
 * A body that does not decode is returned (the caller answers ERROR, as for any malformed
 * frame); everything else is answered with PLAN_ACK or PLAN_NACK. */
dsla_status_t dsla_serving_plans_on_set_plan(dsla_serving_plans_t *p, const char *from, uint64_t id,
                                             const void *body, size_t len, uint64_t now_ms);
void dsla_serving_plans_on_chunk(dsla_serving_plans_t *p, const char *from, uint64_t id,
                                 const void *body, size_t len, uint64_t now_ms);
/* An ERROR; false when it does not answer the LAYER_FETCH in flight (the caller logs it). */
bool dsla_serving_plans_on_error(dsla_serving_plans_t *p, const char *from, uint64_t id,
                                 const dsla_proto_error_t *err, uint64_t now_ms);
/* Time passes: a fetch whose chunk is overdue ends. */
void dsla_serving_plans_on_tick(dsla_serving_plans_t *p, uint64_t now_ms);
/* A probe or load done (cancelled: the shell is stopping; nothing is sent). Takes job. */
void dsla_serving_plans_loaded(dsla_serving_plans_t *p, dsla_serving_load_t *job, bool cancelled,
                               uint64_t now_ms);
/* A write done (cancelled: the shell is stopping; nothing is sent). Takes job; an orphaned one
 * touches nothing but itself. */
void dsla_serving_plans_written(dsla_serving_plans_t *p, dsla_serving_write_t *job, bool cancelled,
                                uint64_t now_ms);
/* The engine's answer to ops.adopt: status OK and its new plan id, or why not (message). */
void dsla_serving_plans_adopted(dsla_serving_plans_t *p, dsla_status_t status, uint64_t plan_id,
                                const char *message, uint64_t now_ms);

/* The plan new requests get: its id and DSLA layers (for LOAD_REPORT). */
uint64_t dsla_serving_plans_id(const dsla_serving_plans_t *p);
uint32_t dsla_serving_plans_dsla(const dsla_serving_plans_t *p,
                                 const dsla_proto_dsla_layer_t **layers);
/* Whether a change is in progress (tests). */
bool dsla_serving_plans_busy(const dsla_serving_plans_t *p);

#endif

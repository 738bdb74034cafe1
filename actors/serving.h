/* The serving actor (DESIGN.md sections 6 and 7): one actor owning one serving engine, answering
 * GENERATE with streamed TOKENs and a DONE, and CANCEL by cancelling.
 *
 * Threads and hand-offs (docs/serving.md, "The serving actor's threads"):
 * - the actor's loop runs the mailbox, heartbeats and timers and the state machines: requests and
 *   streaming (serving_core.h), plan changes (serving_plan.h), prompt sampling (serving_sample.h).
 *   It never runs a model step, reads a layer file or hashes one.
 * - the engine thread (serving_engine.h) owns the engine: it takes submits, cancels and plans from
 *   a locked inbox at step boundaries, sleeps while idle, and posts each step's events to the loop
 *   as one batch (dsla_actor_post); it publishes a metrics snapshot that LOAD_REPORTs read. With
 *   a GPU backend it binds the device it was deployed on and alone runs (and captures) the
 *   model's kernels and graphs.
 * - libuv's worker pool (dsla_actor_work) checks the layer cache, writes each fetched chunk (and
 *   fsyncs, verifies and renames the finished file), and loads and verifies the layer versions of
 *   a SET_PLAN; the engine adopts the loaded plan at its next step boundary.
 * Heartbeats and load reports therefore keep their interval however long a step takes.
 *
 * Requests: events go to the client's routing id; a client that cannot be reached any more (gone,
 * or its queue full) has its request cancelled, as does one whose heartbeats stop. Refused
 * requests are answered with ERROR carrying the engine's own sentence.
 *
 * With a controller (DESIGN.md section 7) it connects to the controller's mailbox, sends it a
 * LOAD_REPORT every report interval, and answers SET_PLAN: each named layer version file is loaded
 * and verified (its xxh64 checksum, the file's and the one announced, and its shape) on a worker,
 * the engine installs the plan (new requests take it from the next step on, running ones finish on
 * theirs), then PLAN_ACK. Any failure is PLAN_NACK with the reason, and the old plan stays.
 *
 * With a layer cache (config.layer_cache), the files come from the cache instead of the
 * SET_PLAN's paths: a version the cache lacks is fetched from the SET_PLAN's sender with
 * LAYER_FETCH, one chunk in flight (GENERATE and heartbeats go on meanwhile), written, fsync'd,
 * checked against the announced xxh64 and renamed on a worker, one write at a time in order
 * (serving_plan.h, transfer.h); then the plan is loaded as above.
 * A timeout, a bad chunk, a checksum mismatch or the sender's ERROR is a PLAN_NACK; a newer
 * SET_PLAN supersedes an unfinished fetch (NACK CANCELLED).
 *
 * With a distiller (config.distiller, DESIGN.md 5.4), it samples 1 in sample_every of the prompts
 * the engine accepts and sends them to the distiller in batches, rate-capped (serving_sample.h).
 * Prompts leave the actor only to that distiller. No distiller: nothing is sampled.
 *
 * It never blocks on another actor and prints nothing but rate-limited warnings; the model and
 * tokenizer are borrowed and must outlive it. */
#ifndef DSLA_ACTORS_SERVING_H
#define DSLA_ACTORS_SERVING_H

#include "runtime/actor/actor.h"
#include "runtime/serve/backend.h"
#include "runtime/serve/engine.h"

typedef struct dsla_serving dsla_serving_t;

typedef struct {
    const char *name; /* actor name; NULL: "serving" */
    dsla_actor_ctx_t *ctx;
    const char *endpoint; /* mailbox, "tcp://127.0.0.1:7070"; "tcp://127.0.0.1:*" picks a port */
    dsla_model_t *model;  /* the host model: its shape checks layer versions; the CPU runs it
                             unless backend is set. NULL with a backend: the backend's shape */
    const dsla_tokenizer_t *tokenizer;
    dsla_engine_config_t engine;
    /* Another backend for the engine (runtime/serve/backend_cuda.h, a GPU deployment of model);
     * borrowed, it must outlive the actor. NULL: the CPU runs model. */
    dsla_serve_backend_t *backend;
    /* With a GPU backend: before its first request the engine thread runs the backend's warm-up
     * (dsla_serve_cuda_warmup: cuDNN's plans for every prompt bucket, 10-15 s at 7B), so that the
     * first minutes of traffic do not pay for plan building. */
    bool gpu_warmup;
    uint32_t heartbeat_ms;  /* 0: DSLA_ACTOR_HEARTBEAT_MS */
    const char *controller; /* the controller's mailbox; NULL: no reports, no plan changes */
    uint32_t report_ms;     /* LOAD_REPORT interval; 0: DSLA_SERVING_REPORT_MS */
    /* The layer cache (transfer.h), created when missing. Set: every SET_PLAN's layer versions are
     * taken from it or fetched into it from the SET_PLAN's sender, never read at the SET_PLAN's
     * paths. NULL: the paths are opened as they are (a filesystem shared with the controller). */
    const char *layer_cache;
    uint32_t fetch_chunk;      /* bytes per LAYER_FETCH; 0: DSLA_PROTO_CHUNK_MAX */
    uint32_t fetch_timeout_ms; /* for each LAYER_CHUNK; 0: DSLA_SERVING_FETCH_TIMEOUT_MS */
    /* Tests: runs on the worker before each fetched chunk is written (a slow disk). */
    void (*fetch_write_hook)(void *user);
    void *fetch_write_hook_user;
    /* Prompt sampling (above): the distiller's mailbox (NULL: no prompt leaves the actor), 1 in
     * how many prompts (0: DSLA_SERVING_SAMPLE_EVERY), the seed, and the rate cap in tokens per
     * second (0: DSLA_SERVING_SAMPLE_TOKENS_PER_S). */
    const char *distiller;
    uint32_t sample_every;
    uint64_t sample_seed;
    uint32_t sample_tokens_per_s;
} dsla_serving_config_t;

/* Once a second: the controller follows load within a few seconds and its policies' cooldowns are
 * seconds long. */
#define DSLA_SERVING_REPORT_MS 1000
/* A controller that does not answer a LAYER_FETCH within this long is given up on (PLAN_NACK
 * DEADLINE_EXCEEDED): ample for a 1 MiB chunk on any network, and below the controller's
 * DSLA_CONTROLLER_PENDING_MS, so the NACK arrives before it would send the plan again. */
#define DSLA_SERVING_FETCH_TIMEOUT_MS 5000

/* One prompt in eight: traffic quickly gives the distiller's reservoir more prompts than it
 * holds, and most prompts never leave the actor. */
#define DSLA_SERVING_SAMPLE_EVERY 8
/* 4096 sampled tokens a second at most: a negligible share of a replica's prefill work. */
#define DSLA_SERVING_SAMPLE_TOKENS_PER_S 4096
/* Sampled prompts go out ten times a second, batched, each batch within the rate cap's share. */
#define DSLA_SERVING_SAMPLE_FLUSH_MS 100

dsla_status_t dsla_serving_create(dsla_serving_t **out, const dsla_serving_config_t *config);
/* Stops the actor (requests in flight are dropped without events), then frees the engine. */
void dsla_serving_destroy(dsla_serving_t **s);
/* The mailbox as bound (a wildcard port resolved). */
const char *dsla_serving_endpoint(const dsla_serving_t *s);

#endif

/* The distiller actor (DESIGN.md sections 3, 5 and 7): owns one online distillation run (teacher,
 * calibration corpus, output directory, parameters) and announces each finished layer version to
 * the controller.
 *
 * The run is dsla_distill_run_on (runtime/distill/distill.h) on the CPU backend or, given cuda, on
 * a GPU (the teacher's forward passes, captures and training on the device: the worker creates the
 * backend, so the device is bound to the worker thread, never to the actor's loop); either trains
 * for seconds to hours and
 * blocks its caller, so it runs on a worker thread the actor owns, not in the actor's loop: slices
 * from the loop would need the engine to hand back control mid-layer (its capture and eval passes
 * are long too), and the loop must keep answering heartbeats. The worker loads its own copy of
 * the teacher (the engine installs DSLA layers into the model it trains, so it cannot share the
 * serving actor's) and the corpus, then runs. Its callbacks hand the loop what it needs: each
 * finished version's announcement (path, size and xxh64 of the whole file, the version's
 * checksum, order, eval numbers), built on the worker so that hashing never runs on the loop, is
 * posted to it (dsla_actor_post); the latest progress is overwritten in a mutex-guarded slot at
 * every step, which the loop's timer takes every DSLA_DISTILLER_POLL_MS when it changed (one lock
 * a tick, however fast the steps).
 *
 * The loop's side is a state machine, distiller_core.h (announcements, progress, the reservoir),
 * which tests/unit/test_distiller_core.c drives in-process with a fake send, a virtual clock and
 * the real distillation engine.
 *
 * The actor sends LAYER_READY for each version and DISTILL_PROGRESS when the progress changed, to
 * the controller while it answers heartbeats; when the controller comes (back) alive it announces
 * every version of the run again (the controller ignores what it already holds), so a restarted
 * controller misses nothing. A run started again on the same output directory resumes (the
 * engine keeps finished versions and the last checkpoint); its kept versions are announced too.
 *
 * Live traffic (DESIGN.md 5.4): serving actors send it PROMPT_SAMPLES, prompts they sampled. The
 * actor offers each to a bounded reservoir (runtime/distill/data.h: at most reservoir_prompts
 * prompts of at most seq_len tokens, seeded with params.seed) that the state machine owns.
 * Before the engine trains a layer it asks the worker (the engine's extend_train hook), which
 * posts a request to the loop and waits while the loop packs everything the reservoir then holds
 * into that layer's training pool, after the corpus (microseconds of copying);
 * layers already started keep their data, and held-out evaluation stays on the calibration
 * corpus so the numbers stay comparable. With no samples the layer versions are bit-identical to
 * offline `dsla distill`'s. The counts (received, held, used) travel in DISTILL_PROGRESS.
 *
 * Contract: destroy stops the run within one training step (the engine's should_stop hook), joins
 * the worker, then stops the actor. It never blocks its loop on the worker and prints nothing. */
#ifndef DSLA_ACTORS_DISTILLER_H
#define DSLA_ACTORS_DISTILLER_H

#include "runtime/actor/actor.h"
#include "runtime/distill/distill.h"

/* How often the actor drains the worker's outbox; see above. */
#define DSLA_DISTILLER_POLL_MS 100
/* Sampled prompts the reservoir holds by default: at most this many extra training sequences
 * per layer (each prompt is cut to seq_len tokens), next to a corpus of hundreds. */
#define DSLA_DISTILLER_RESERVOIR_PROMPTS 64
/* Data files one run reads. */
#define DSLA_DISTILLER_DATA_MAX 16

typedef struct dsla_distiller dsla_distiller_t;

typedef struct {
    const char *name; /* actor name; NULL: "distiller" */
    dsla_actor_ctx_t *ctx;
    const char *endpoint;    /* its mailbox ("inproc://distiller") */
    const char *controller;  /* the controller's mailbox (required) */
    const char *model_dir;   /* the teacher, Hugging Face layout */
    const char *const *data; /* calibration text or .tokens files */
    int n_data;
    const char *out_dir; /* layer versions and the checkpoint; created when absent */
    dsla_distill_params_t params;
    int seq_len;           /* tokens per training sequence */
    int max_sequences;     /* training sequences read at most; 0: all */
    int eval_sequences;    /* held out from the end of the data */
    uint32_t heartbeat_ms; /* 0: DSLA_ACTOR_HEARTBEAT_MS */
    int reservoir_prompts; /* sampled prompts held at most; 0: DSLA_DISTILLER_RESERVOIR_PROMPTS */
    /* Where the run computes: NULL, the CPU; else the GPU cuda->gpu in cuda->dtype (copied). The
     * worker logs the device memory the run needs (dsla_distill_cuda_bytes) before it starts: a
     * serving pool on the same GPU must leave that much out (--gpu-margin-mib). */
    const dsla_distill_cuda_opts_t *cuda;
} dsla_distiller_config_t;

/* Checks the configuration, starts the actor and the worker; the teacher and data are read on the
 * worker, so their failures arrive as a DISTILL_PROGRESS "failed" with the reason. */
dsla_status_t dsla_distiller_create(dsla_distiller_t **out, const dsla_distiller_config_t *c);
void dsla_distiller_destroy(dsla_distiller_t **d);

#endif

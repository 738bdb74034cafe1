/* The distiller actor's announcements and sampled prompts, as a state machine (DESIGN.md section
 * 7: "the logic of an actor lives in a state machine that tests drive in-process; the actor is
 * its shell"; distiller.h has the actor).
 *
 * It holds what the run has told the controller and what it still must:
 * - every finished layer version's announcement (LAYER_READY), in the order the run finished
 *   them, sent while the controller answers heartbeats; a send that fails (its queue full) is
 *   tried again at the next tick, so none is lost or reordered; when the controller comes (back)
 *   alive every announcement of the run is sent again (the controller ignores what it holds), so
 *   a restarted controller misses nothing;
 * - the run's latest progress, sent as DISTILL_PROGRESS when it changed, at most once per
 *   progress_ms of the caller's clock, with the layers done and the sample counts filled in here;
 * - the prompts serving actors sampled (PROMPT_SAMPLES) in a bounded reservoir
 *   (runtime/distill/data.h), which the run packs into a layer's training pool when the layer
 *   starts (dsla_distiller_core_pack).
 * A run started again on the same output directory resumes from its checkpoint: its worker reports
 * the versions it kept as finished again, and this machine (a new one: the process restarted)
 * announces them as any other.
 *
 * Contract: one thread (the actor's loop). Messages leave only through ops.send, time comes only
 * from the callers' now_ms; the run's reports reach it through the shell (a post from the worker),
 * and _pack is asked for by the worker through the shell too. Nothing here blocks or knows
 * sockets, timers or threads. */
#ifndef DSLA_ACTORS_DISTILLER_CORE_H
#define DSLA_ACTORS_DISTILLER_CORE_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/proto.h"
#include "runtime/distill/data.h"
#include "runtime/distill/distill.h"

typedef struct dsla_distiller_core dsla_distiller_core_t;

typedef struct {
    dsla_status_t (*send)(void *user, const char *dst, uint32_t type, uint64_t id, const void *body,
                          size_t len);
    void *user;
} dsla_distiller_core_ops_t;

typedef struct {
    const char *controller; /* the peer announcements go to */
    int reservoir_prompts;  /* sampled prompts held at most, >= 1 */
    int seq_len;            /* tokens a sampled prompt keeps at most */
    uint64_t seed;          /* the reservoir's */
    uint32_t progress_ms;   /* DISTILL_PROGRESS at most this often; 0: at every tick */
    /* the progress before the run reports any: LOADING with this message */
    const char *first_message;
} dsla_distiller_core_config_t;

dsla_status_t dsla_distiller_core_create(dsla_distiller_core_t **out,
                                         const dsla_distiller_core_config_t *config,
                                         const dsla_distiller_core_ops_t *ops);
void dsla_distiller_core_destroy(dsla_distiller_core_t **c);

/* The run's latest progress (state, layer, step, loss, message); layers_done and the sample
 * counts are this machine's. Sent at the next tick it may be. */
void dsla_distiller_core_on_progress(dsla_distiller_core_t *c,
                                     const dsla_proto_distill_progress_t *p, uint64_t now_ms);
/* A finished layer version's announcement (built on the worker: the file's size and xxh64 hashed
 * there); takes *a. Sent at once while the controller is alive, else when it comes. */
void dsla_distiller_core_on_layer_ready(dsla_distiller_core_t *c, dsla_proto_layer_ready_t **a,
                                        uint64_t now_ms);
/* PROMPT_SAMPLES from a serving actor: each prompt offered to the reservoir. A body that does not
 * decode is returned (the caller answers ERROR). */
dsla_status_t dsla_distiller_core_on_samples(dsla_distiller_core_t *c, const void *body,
                                             size_t len);
/* The controller's liveness (other peers are ignored): alive again, everything is sent anew. */
void dsla_distiller_core_on_peer(dsla_distiller_core_t *c, const char *peer, bool alive,
                                 uint64_t now_ms);
/* Time passes: what is pending (a failed send, a changed progress) goes out. */
void dsla_distiller_core_on_tick(dsla_distiller_core_t *c, uint64_t now_ms);
/* The run's extend_train: the reservoir's prompts appended to pool (dsla_reservoir_pack). */
dsla_status_t dsla_distiller_core_pack(dsla_distiller_core_t *c, dsla_corpus_t *pool, int bos,
                                       int vocab, int *added);

/* The run's reports as the wire carries them, on the worker (nothing here touches the machine):
 * a step's progress into p (its message and sample counts kept), and a finished version's
 * announcement: its catalogue header read from OUT/layer-L.safetensors and the size and xxh64 of
 * the whole file, which reads and hashes it (so never on the loop). */
void dsla_distiller_progress_update(dsla_proto_distill_progress_t *p,
                                    const dsla_distill_progress_t *g);
dsla_status_t dsla_distiller_announcement(const char *out_dir, int steps,
                                          const dsla_distill_layer_report_t *r,
                                          dsla_proto_layer_ready_t *a);

/* For tests and status: announcements held, and sent since the controller was last found. */
int dsla_distiller_core_ready(const dsla_distiller_core_t *c);
int dsla_distiller_core_sent(const dsla_distiller_core_t *c);

#endif

/* The serving engine on a thread of its own: what keeps a model step off the serving actor's loop
 * (DESIGN.md section 7: "model steps ... go to a worker (the engine's own thread)").
 *
 * dsla_engine_t is single-threaded and step-driven (runtime/serve/engine.h); a step takes
 * milliseconds on the CPU and ~100 ms on a loaded GPU. This module owns one engine and one thread
 * that alone touches it: the thread takes submits, cancels and plans from a locked inbox at step
 * boundaries, sleeps on a condition variable while the engine is idle and the inbox empty, steps,
 * and hands what each step produced to its caller as one batch (every token, end and refusal of
 * that step, plus plan adoptions) through the deliver function, which the serving actor turns into
 * one dsla_actor_post. After each step it publishes a metrics snapshot under a lock, which the
 * actor's LOAD_REPORT timer reads. The actor's loop therefore never waits for a step, and its
 * heartbeats and reports keep their interval however long steps take.
 *
 * GPU: CUDA's current device is per thread and decode graphs are captured on (and must be launched
 * from) the thread that steps; the engine thread binds cuda_device before its first step and is
 * the only thread that runs forward passes.
 *
 * Contract: submit, cancel, set_plan, metrics and destroy may be called from any one thread (the
 * actor's loop); deliver runs on the engine thread and must not block. Requests are named by the
 * caller's keys (never 0). This module knows the engine and the GENERATE body it submits from, but
 * nothing of sockets, envelopes or actors, and it never prints but rate-limited warnings of failed
 * steps. */
#ifndef DSLA_ACTORS_SERVING_ENGINE_H
#define DSLA_ACTORS_SERVING_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "runtime/serve/engine.h"

typedef struct dsla_serving_engine dsla_serving_engine_t;

/* One streamed event of a request: a token and the text it makes final, and/or its end. */
typedef struct {
    uint64_t key;
    int32_t token;               /* -1: none */
    size_t text_off, text_len;   /* into the batch's text */
    bool finished;               /* the last event of this key */
    dsla_finish_reason_t finish; /* when finished with status OK */
    /* OK, or why the request ended without finishing: refused at submit (the engine's sentence,
     * naming the field, the limit and the value) or given up by the engine */
    dsla_status_t status;
    size_t message_off, message_len; /* into text, when status is not OK */
    dsla_usage_t usage;
    bool has_logprobs; /* the request asked for them and token is not -1 */
    dsla_token_logprobs_t logprobs;
    /* > 0: the prompt's ids and logprobs (engine.h) at prompt_off in the batch's prompt arrays */
    int n_prompt;
    size_t prompt_off;
} dsla_serving_event_t;

/* A plan handed over with set_plan, adopted (status OK, plan_id the engine's new id) or refused
 * (the engine's message; plan_id the one kept). */
typedef struct {
    uint64_t token;
    dsla_status_t status;
    uint64_t plan_id;
    char message[DSLA_PROTO_MESSAGE_MAX + 1];
} dsla_serving_adoption_t;

/* What one step boundary produced, in order. Owned by whoever holds it; dsla_serving_batch_free. */
typedef struct {
    dsla_serving_event_t *events;
    size_t n_events, cap_events;
    char *text;
    size_t text_len, text_cap;
    dsla_serving_adoption_t *adoptions;
    size_t n_adoptions, cap_adoptions;
    int32_t *prompt_ids; /* the events' prompts, with their logprobs */
    dsla_token_logprobs_t *prompt_lp;
    size_t n_prompt, cap_prompt_ids, cap_prompt_lp;
} dsla_serving_batch_t;

void dsla_serving_batch_free(dsla_serving_batch_t **b);

/* Takes the batch (non-empty); on the engine thread. */
typedef void (*dsla_serving_deliver_fn)(void *user, dsla_serving_batch_t *batch);

typedef struct {
    dsla_serving_deliver_fn deliver;
    void *user;
    int cuda_device; /* bound on the engine thread before its first step; -1: none (CPU) */
    /* > 0: dsla_serve_cuda_warmup(engine, warmup_vocab, warmup_chunk, warmup_context) on the
     * engine thread before it takes any work (requests submitted meanwhile wait in the inbox) */
    int warmup_vocab, warmup_chunk, warmup_context;
    /* the engine's tokenizer (borrowed), to tokenise text prompts longer than
     * DSLA_SERVING_TOKENIZE_INLINE_MAX bytes on a thread of their own, in arrival order, so that
     * the engine's steps never wait for one; NULL: every prompt is tokenised by the engine */
    const dsla_tokenizer_t *tokenizer;
} dsla_serving_engine_config_t;

/* Text prompts up to this many bytes are tokenised on the engine thread (microseconds); longer
 * ones on the tokenizer thread. */
#define DSLA_SERVING_TOKENIZE_INLINE_MAX 4096

/* Takes engine (NULLs *engine, also on failure) and starts its thread. */
dsla_status_t dsla_serving_engine_create(dsla_serving_engine_t **out, dsla_engine_t **engine,
                                         const dsla_serving_engine_config_t *config);
/* Stops the thread after its current step and joins it; nothing is delivered afterwards, and what
 * is queued later waits for destroy. For shutting down in order: stop the thread that delivers,
 * then the actor that queues, then destroy. */
void dsla_serving_engine_stop(dsla_serving_engine_t *e);
/* Stops (when not yet), drops what the inbox still holds and destroys the engine (requests in
 * flight end without events). Harmless on NULL. */
void dsla_serving_engine_destroy(dsla_serving_engine_t **e);

/* Queues request key with the GENERATE's parameters, moved out of *g (zeroed). Its events, or one
 * finished event with the engine's refusal, come in a later batch. Fails only when out of memory
 * (g is then freed). */
dsla_status_t dsla_serving_engine_submit(dsla_serving_engine_t *e, uint64_t key,
                                         dsla_proto_generate_t *g);
/* Ends request key at the next step boundary (a final "cancelled" event follows); a key that has
 * already finished is ignored. */
dsla_status_t dsla_serving_engine_cancel(dsla_serving_engine_t *e, uint64_t key);
/* Installs plan (the reference is taken; *plan NULLed) at the next step boundary; an adoption
 * carrying token follows. */
dsla_status_t dsla_serving_engine_set_plan(dsla_serving_engine_t *e, uint64_t token,
                                           dsla_plan_t **plan);
/* The snapshot published after the latest step (zeros before the first). */
void dsla_serving_engine_metrics(dsla_serving_engine_t *e, dsla_engine_metrics_t *out);

#endif

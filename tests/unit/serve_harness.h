/* Shared by the serving engine's tests: loading stories260K-hf, plans of teacher-initialised DSLA
 * layers, requests that record their stream, and running requests one at a time as the reference.
 * Header-only (static inline) because each test is its own executable. */
#ifndef DSLA_TESTS_SERVE_HARNESS_H
#define DSLA_TESTS_SERVE_HARNESS_H

#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/model/dsla_layer.h"
#include "runtime/serve/engine.h"

/* Longest completion and text a test request records. */
enum { HARNESS_MAX_TOKENS = 512, HARNESS_MAX_TEXT = 8192 };

static inline void harness_ok(dsla_status_t s, const char *what) {
    if (s != DSLA_OK) fail_msg("%s: %s: %s", what, dsla_status_name(s), dsla_last_error());
}

/* What a request streamed. */
typedef struct {
    int32_t ids[HARNESS_MAX_TOKENS];
    uint64_t plan_of[HARNESS_MAX_TOKENS]; /* the plan each token was computed under */
    int n;
    char text[HARNESS_MAX_TEXT];
    size_t text_len;
    int events;
    bool finished;
    dsla_finish_reason_t finish;
    dsla_status_t status;
    char message[DSLA_ERROR_MESSAGE_MAX]; /* the engine's sentence when status is not OK */
    dsla_usage_t usage;
    int cancel_after; /* > 0: the callback cancels after this many tokens */
} harness_stream_t;

static inline int harness_on_event(void *user, const dsla_stream_event_t *ev) {
    harness_stream_t *s = user;
    if (s->finished)
        fail_msg("request %llu: an event after its final one", (unsigned long long)ev->request_id);
    s->events++;
    if (ev->token >= 0) {
        if (s->n >= HARNESS_MAX_TOKENS) fail_msg("too many tokens");
        s->plan_of[s->n] = ev->usage.plan_id;
        s->ids[s->n++] = ev->token;
    }
    if (s->text_len + ev->text_len > HARNESS_MAX_TEXT) fail_msg("too much text");
    memcpy(s->text + s->text_len, ev->text, ev->text_len);
    s->text_len += ev->text_len;
    s->usage = ev->usage;
    if (ev->finished) {
        s->finished = true;
        s->finish = ev->finish;
        s->status = ev->status;
        if (ev->status != DSLA_OK) snprintf(s->message, sizeof s->message, "%s", ev->message);
    }
    return s->cancel_after > 0 && s->n >= s->cancel_after;
}

/* A request: prompt ids and how far to go. */
typedef struct {
    int32_t prompt[HARNESS_MAX_TOKENS];
    int n_prompt;
    int max_tokens;
    bool ignore_eos;
} harness_request_t;

static inline dsla_model_t *harness_load_model(const char *dir) {
    dsla_model_t *m = NULL;
    harness_ok(dsla_model_load(&m, dir), "load model");
    return m;
}

/* A plan running the given layers as DSLA, each initialised from the teacher with seed + layer;
 * with checksummed, each version carries its checksum, as a serving actor's loads do. */
static inline dsla_plan_t *harness_plan_sums(const dsla_model_t *m, const int *layers, int n,
                                             uint64_t seed, bool checksummed) {
    const dsla_model_config_t *cfg = dsla_model_config(m);
    dsla_plan_t *p = NULL;
    harness_ok(dsla_plan_create(&p, cfg->num_layers), "plan");
    for (int i = 0; i < n; i++) {
        dsla_dsla_layer_t *w = NULL;
        harness_ok(dsla_dsla_layer_create(&w, cfg, layers[i]), "DSLA layer");
        harness_ok(dsla_dsla_layer_init_from_teacher(w, m, layers[i], seed + (uint64_t)layers[i]),
                   "init from teacher");
        const uint64_t sum = checksummed ? dsla_dsla_layer_checksum(w) : 0;
        dsla_layer_ref_t *ref = NULL;
        harness_ok(dsla_layer_ref_create(&ref, &w), "layer ref");
        dsla_layer_ref_set_checksum(ref, sum);
        harness_ok(dsla_plan_set_layer(p, layers[i], ref), "plan layer");
        dsla_layer_ref_release(&ref);
    }
    return p;
}

static inline dsla_plan_t *harness_plan(const dsla_model_t *m, const int *layers, int n,
                                        uint64_t seed) {
    return harness_plan_sums(m, layers, n, seed, false);
}

static inline dsla_request_params_t harness_params(const harness_request_t *q,
                                                   harness_stream_t *out) {
    return (dsla_request_params_t){
        .prompt_ids = q->prompt,
        .n_prompt_ids = q->n_prompt,
        .max_tokens = q->max_tokens,
        .ignore_eos = q->ignore_eos,
        .on_event = harness_on_event,
        .user = out,
    };
}

/* Steps until the engine is idle; fails after max_steps. */
static inline void harness_drain(dsla_engine_t *e, long max_steps) {
    for (long i = 0; !dsla_engine_idle(e); i++) {
        if (i >= max_steps) fail_msg("engine not idle after %ld steps", max_steps);
        harness_ok(dsla_engine_step(e, NULL), "step");
    }
}

/* The reference: each request alone in a fresh engine (same config) under plan (NULL: all ATTN). */
static inline void harness_run_solo(dsla_model_t *m, const dsla_tokenizer_t *tok,
                                    const dsla_engine_config_t *cfg, dsla_plan_t *plan,
                                    const harness_request_t *q, harness_stream_t *out) {
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, m, tok, cfg), "engine");
    if (plan) harness_ok(dsla_engine_set_plan(e, plan), "set plan");
    memset(out, 0, sizeof *out);
    dsla_request_params_t p = harness_params(q, out);
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    harness_drain(e, 100000);
    dsla_engine_destroy(&e);
    if (!out->finished) fail_msg("solo request did not finish");
}

static inline void harness_random_request(harness_request_t *q, uint64_t *rng, int vocab, int bos,
                                          int max_prompt, int max_out) {
    q->n_prompt = 1 + (int)(dsla_test_rand_u64(rng) % (uint64_t)max_prompt);
    q->prompt[0] = bos;
    for (int i = 1; i < q->n_prompt; i++)
        q->prompt[i] = 3 + (int32_t)(dsla_test_rand_u64(rng) % (uint64_t)(vocab - 3));
    q->max_tokens = 1 + (int)(dsla_test_rand_u64(rng) % (uint64_t)max_out);
    q->ignore_eos = dsla_test_rand_u64(rng) % 2 == 0;
}

static inline void harness_assert_same(const harness_stream_t *got, const harness_stream_t *want,
                                       int request) {
    if (got->n != want->n || memcmp(got->ids, want->ids, (size_t)got->n * sizeof got->ids[0])) {
        int first = 0;
        while (first < got->n && first < want->n && got->ids[first] == want->ids[first])
            first++;
        fail_msg("request %d: %d tokens vs %d solo, first difference at token %d", request, got->n,
                 want->n, first);
    }
    assert_int_equal(got->text_len, want->text_len);
    assert_memory_equal(got->text, want->text, got->text_len);
    assert_int_equal(got->finish, want->finish);
}

#endif

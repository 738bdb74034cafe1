/* runtime/serve admission, cancellation and accounting on stories260K-hf (CPU): 10,000 requests
 * with random cancellations (between steps and from callbacks) and plan changes leave every KV
 * block and state slot free; capacity follows the plan mix in the one arena; a burst beyond the
 * running set waits in the queue and completes; overload beyond the queue's bounds is refused at
 * once with RESOURCE_EXHAUSTED, and a request that waits too long ends so, naming the bound;
 * requests that can never fit are INVALID_ARGUMENT with the limit named; histograms bucket as
 * documented. */
#include "tests/unit/serve_harness.h"

#include <stdio.h>

#include "runtime/model/kv_cache.h"
#include "runtime/serve/metrics.h"

static char *model_dir;
static dsla_model_t *model;
static dsla_tokenizer_t *tokenizer;
static uint64_t rng;

static int setup(void **state) {
    (void)state;
    model = harness_load_model(model_dir);
    harness_ok(dsla_tokenizer_load_dir(&tokenizer, model_dir), "tokenizer");
    rng = dsla_test_seed();
    return 0;
}

static int teardown(void **state) {
    (void)state;
    dsla_tokenizer_destroy(&tokenizer);
    dsla_model_destroy(&model);
    return 0;
}

/* A slot of the stress test: a live request's stream, reused once it has finished. */
enum { STRESS_REQUESTS = 10000, STRESS_LIVE = 48 };

typedef struct {
    harness_stream_t stream;
    uint64_t id;
    bool live;
} live_t;

static void check_bounds(const dsla_engine_t *e, const dsla_engine_config_t *cfg) {
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_true(m.queue_length <= cfg->max_queued);
    assert_true(m.waiting_prompt_tokens <= cfg->max_queued_tokens + 64);
    assert_true(m.running <= cfg->max_running);
    assert_true(m.kv_blocks_used >= 0 && m.state_slots_used >= 0);
    assert_true(m.kv_blocks_used + m.state_slots_used * m.blocks_per_slot <= m.kv_blocks_total);
    assert_true(m.state_slots_used <= m.state_slots_total);
}

/* One arena for KV and states: with k of the 5 layers DSLA, a sequence of 31 prompt tokens (32
 * with its first output: 2 blocks per attention layer) needs (5 - k) * 2 KV blocks and k slots
 * (of 1 block on stories260K: 2 H d d floats are one block's K and V), so an arena of 120 blocks
 * admits floor(120 / ((5 - k) * 2 + k * blocks_per_slot)) of them at once; at k = 0 every block
 * is KV (12 sequences, the all-KV arithmetic). Plans change while they run (conversions and
 * reversions) and every block comes back. */
static void test_capacity_follows_plan_mix(void **state) {
    (void)state;
    enum { ARENA = 120, PROMPT = 31, BURST = 32, PER_LAYER = 2 };
    dsla_engine_config_t cfg = dsla_engine_config_default();
    cfg.kv_blocks = ARENA;
    cfg.max_running = BURST;
    cfg.step_tokens = BURST * PROMPT;
    cfg.max_queued = BURST;
    const int order[] = {3, 1, 4, 0, 2};
    static harness_stream_t streams[BURST];
    int admitted_at[6];
    for (int k = 0; k <= 5; k++) {
        dsla_engine_t *e = NULL;
        harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
        dsla_plan_t *plan = harness_plan(model, order, k, 7);
        harness_ok(dsla_engine_set_plan(e, plan), "set plan");
        harness_request_t q = {.n_prompt = PROMPT, .max_tokens = 8, .ignore_eos = true};
        for (int i = 0; i < PROMPT; i++)
            q.prompt[i] = 3 + i;
        memset(streams, 0, sizeof streams);
        for (int i = 0; i < BURST; i++) {
            dsla_request_params_t p = harness_params(&q, &streams[i]);
            harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
        }
        harness_ok(dsla_engine_step(e, NULL), "first step");
        dsla_engine_metrics_t m;
        dsla_engine_metrics(e, &m);
        const int per_seq = (5 - k) * PER_LAYER + k * m.blocks_per_slot;
        admitted_at[k] = m.running;
        assert_int_equal(m.running, ARENA / per_seq);
        assert_int_equal(m.state_slots_used, k * m.running);
        assert_int_equal(m.kv_blocks_used, (5 - k) * PER_LAYER * m.running);
        if (k == 0) assert_int_equal(m.running, ARENA / (5 * PER_LAYER));
        /* A conversion and a reversion while they run: the newcomers take the new plans, and
         * preemption under the tighter mix moves nobody's blocks anywhere but back. */
        const int k2 = (k + 2) % 6;
        dsla_plan_t *other = harness_plan(model, order, k2, 8);
        for (int step = 0; !dsla_engine_idle(e); step++) {
            if (step == 3) harness_ok(dsla_engine_set_plan(e, other), "convert");
            if (step == 9) harness_ok(dsla_engine_set_plan(e, plan), "revert");
            harness_ok(dsla_engine_step(e, NULL), "step");
            check_bounds(e, &cfg);
            if (step > 100000) fail_msg("not idle");
        }
        dsla_engine_metrics(e, &m);
        assert_int_equal(m.kv_blocks_used, 0);
        assert_int_equal(m.state_slots_used, 0);
        assert_int_equal(m.requests_finished, BURST);
        for (int i = 0; i < BURST; i++) {
            assert_true(streams[i].finished);
            assert_int_equal(streams[i].status, DSLA_OK);
            assert_int_equal(streams[i].n, 8);
        }
        dsla_plan_release(&other);
        dsla_plan_release(&plan);
        dsla_engine_destroy(&e);
    }
    for (int k = 1; k <= 5; k++)
        assert_true(admitted_at[k] > admitted_at[k - 1]);
    printf("arena of %d blocks, sequences of %d tokens admitted at once with 0..5 DSLA layers: "
           "%d %d %d %d %d %d\n",
           ARENA, PROMPT + 1, admitted_at[0], admitted_at[1], admitted_at[2], admitted_at[3],
           admitted_at[4], admitted_at[5]);
}

static void test_cancellation_stress_frees_everything(void **state) {
    (void)state;
    dsla_engine_config_t cfg = dsla_engine_config_default();
    cfg.max_running = 32;
    cfg.kv_blocks = 60; /* tight enough for preemptions; DSLA plans carve slots from it too */
    cfg.max_queued = 64;
    cfg.max_queued_tokens = 256;
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    const int plans[][5] = {{0}, {3, 1}, {3, 1, 4, 0, 2}};
    const int plan_sizes[] = {0, 2, 5};
    dsla_plan_t *plan[3];
    for (int i = 0; i < 3; i++)
        plan[i] = harness_plan(model, plans[i], plan_sizes[i], 5);
    const int vocab = dsla_model_config(model)->vocab_size;
    const int bos = dsla_tokenizer_bos_id(tokenizer);
    static live_t live[STRESS_LIVE];
    memset(live, 0, sizeof live);
    int submitted = 0, cancelled = 0, refused = 0;
    long steps = 0;
    while (submitted < STRESS_REQUESTS || !dsla_engine_idle(e)) {
        if (++steps > 20L * STRESS_REQUESTS) fail_msg("stress did not finish");
        for (int s = 0; s < STRESS_LIVE; s++) {
            live_t *l = &live[s];
            if (l->live && l->stream.finished) l->live = false;
            if (!l->live && submitted < STRESS_REQUESTS && dsla_test_rand_u64(&rng) % 2) {
                harness_request_t q;
                harness_random_request(&q, &rng, vocab, bos, 14, 6);
                memset(&l->stream, 0, sizeof l->stream);
                /* A tenth cancel themselves from their callback. */
                if (dsla_test_rand_u64(&rng) % 10 == 0) l->stream.cancel_after = 1;
                dsla_request_params_t p = harness_params(&q, &l->stream);
                dsla_status_t st = dsla_engine_submit(e, &p, &l->id);
                if (st == DSLA_ERR_RESOURCE_EXHAUSTED) {
                    refused++;
                    continue;
                }
                harness_ok(st, "submit");
                l->live = true;
                submitted++;
            } else if (l->live && dsla_test_rand_u64(&rng) % 8 == 0) {
                harness_ok(dsla_engine_cancel(e, l->id), "cancel");
                assert_true(l->stream.finished); /* at once, between steps */
                assert_int_equal(l->stream.finish, DSLA_FINISH_CANCELLED);
                assert_int_equal(dsla_engine_cancel(e, l->id), DSLA_ERR_NOT_FOUND);
                cancelled++;
                l->live = false;
            }
        }
        if (dsla_test_rand_u64(&rng) % 50 == 0)
            harness_ok(dsla_engine_set_plan(e, plan[dsla_test_rand_u64(&rng) % 3]), "set plan");
        harness_ok(dsla_engine_step(e, NULL), "step");
        check_bounds(e, &cfg);
    }
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_int_equal(m.kv_blocks_used, 0);
    assert_int_equal(m.state_slots_used, 0);
    assert_int_equal(m.queue_length, 0);
    assert_int_equal(m.waiting_prompt_tokens, 0);
    assert_int_equal(m.running, 0);
    assert_int_equal(m.requests_submitted, STRESS_REQUESTS);
    assert_int_equal(m.requests_finished, STRESS_REQUESTS);
    assert_true(m.requests_cancelled >= (uint64_t)cancelled);
    assert_true(m.peak_state_slots_used > 0);
    for (int s = 0; s < STRESS_LIVE; s++)
        assert_true(!live[s].live || live[s].stream.finished);
    printf("%d requests in %ld steps: %d cancelled between steps, %llu cancelled in all, %llu "
           "preemptions, %d refused; every block and slot free\n",
           STRESS_REQUESTS, steps, cancelled, (unsigned long long)m.requests_cancelled,
           (unsigned long long)m.preemptions, refused);
    dsla_engine_destroy(&e);
    for (int i = 0; i < 3; i++)
        dsla_plan_release(&plan[i]);
}

typedef struct {
    dsla_engine_t *engine;
    uint64_t victim;
    harness_stream_t own;
} canceller_t;

/* Cancels another request from inside a callback: it ends when the step does. */
static int cancel_other(void *user, const dsla_stream_event_t *ev) {
    canceller_t *c = user;
    if (c->victim) {
        harness_ok(dsla_engine_cancel(c->engine, c->victim), "cancel from callback");
        c->victim = 0;
    }
    return harness_on_event(&c->own, ev);
}

static void test_cancel_from_callback(void **state) {
    (void)state;
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, NULL), "engine");
    harness_request_t q;
    harness_random_request(&q, &rng, 512, 1, 8, 1);
    q.max_tokens = 20;
    q.ignore_eos = true;
    harness_stream_t victim = {0};
    canceller_t c = {.engine = e};
    dsla_request_params_t p = harness_params(&q, &victim);
    harness_ok(dsla_engine_submit(e, &p, &c.victim), "submit victim");
    p = harness_params(&q, &c.own);
    p.on_event = cancel_other;
    p.user = &c;
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    harness_drain(e, 100);
    assert_true(victim.finished);
    assert_int_equal(victim.finish, DSLA_FINISH_CANCELLED);
    assert_true(victim.n < 20);
    assert_int_equal(c.own.n, 20);
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_int_equal(m.kv_blocks_used, 0);
    dsla_engine_destroy(&e);
}

static void test_overload_refused_at_once(void **state) {
    (void)state;
    dsla_engine_config_t cfg = dsla_engine_config_default();
    cfg.max_running = 4;
    cfg.max_queued = 8;
    cfg.max_queued_tokens = 200;
    cfg.kv_blocks = 200;
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    static harness_stream_t streams[1000];
    harness_request_t q;
    harness_random_request(&q, &rng, 512, 1, 1, 1);
    for (int i = 1; i < 50; i++)
        q.prompt[i] = 3 + i;
    q.n_prompt = 10;
    q.max_tokens = 30;
    q.ignore_eos = true;
    int accepted = 0, refused_queue = 0, refused_tokens = 0;
    for (int i = 0; i < 1000; i++) {
        dsla_request_params_t p = harness_params(&q, &streams[i]);
        q.n_prompt = 10 + (i % 3) * 20; /* prompts of 10, 30 and 50 tokens */
        p.n_prompt_ids = q.n_prompt;
        dsla_status_t st = dsla_engine_submit(e, &p, NULL);
        if (st == DSLA_OK) {
            accepted++;
        } else {
            assert_int_equal(st, DSLA_ERR_RESOURCE_EXHAUSTED);
            if (strstr(dsla_last_error(), "(--max-queued-tokens 200)"))
                refused_tokens++;
            else if (strstr(dsla_last_error(), "queue holds 8 requests (--max-queued 8)"))
                refused_queue++;
            else
                fail_msg("unexpected message: %s", dsla_last_error());
            assert_true(streams[i].events == 0);
        }
        dsla_engine_metrics_t m;
        dsla_engine_metrics(e, &m);
        assert_true(m.queue_length <= 8);
        assert_true(m.waiting_prompt_tokens <= 200);
        if (i % 10 == 9) harness_ok(dsla_engine_step(e, NULL), "step");
        check_bounds(e, &cfg);
    }
    assert_true(refused_queue + refused_tokens > 0);
    harness_drain(e, 100000);
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_int_equal(m.requests_rejected, 1000 - accepted);
    assert_int_equal(m.requests_finished, accepted);
    assert_int_equal(m.kv_blocks_used, 0);
    assert_true(m.peak_kv_blocks_used <= 200);
    assert_true(m.peak_running <= 4);
    printf("overload: %d accepted, %d refused on the queue bound, %d on the token budget\n",
           accepted, refused_queue, refused_tokens);
    dsla_engine_destroy(&e);
}

/* Slots of several blocks, on tinystories-11M (6 heads of 64 over 2 KV heads: a slot's 2 H d d
 * floats are 12 fp32 blocks): the arithmetic holds with runs, and requests of changing plans with
 * cancellations, which mix KV blocks and slots in the arena, give every block back. */
static void test_slots_of_many_blocks(void **state) {
    (void)state;
    char *dir = dsla_test_data_path("models/tinystories-11M-hf/config.json");
    if (!dir) {
        printf("tinystories-11M-hf absent: skipped\n");
        return;
    }
    *strrchr(dir, '/') = '\0';
    dsla_model_t *m = harness_load_model(dir);
    dsla_tokenizer_t *tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&tok, dir), "tokenizer");
    free(dir);
    dsla_engine_config_t cfg = dsla_engine_config_default();
    cfg.kv_blocks = 200;
    cfg.max_running = 16;
    cfg.batch_invariant = false; /* outputs are not compared here */
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, m, tok, &cfg), "engine");
    const int order[] = {2, 5, 0, 3, 1, 4};
    dsla_plan_t *plans[4];
    for (int i = 0; i < 4; i++)
        plans[i] = harness_plan(m, order, 2 * i, 11);
    /* 3 DSLA layers, 63-token prompts (4 blocks per attention layer with the first output):
     * 3 * 4 + 3 * 12 = 48 blocks each, so 4 of 200; all attention would take 24 each (8 fit). */
    harness_ok(dsla_engine_set_plan(e, plans[0]), "set plan");
    dsla_plan_t *three = harness_plan(m, order, 3, 11);
    harness_ok(dsla_engine_set_plan(e, three), "set plan");
    static harness_stream_t streams[24];
    memset(streams, 0, sizeof streams);
    harness_request_t q = {.n_prompt = 63, .max_tokens = 2, .ignore_eos = true};
    for (int i = 0; i < q.n_prompt; i++)
        q.prompt[i] = 5 + i;
    for (int i = 0; i < 6; i++) {
        dsla_request_params_t p = harness_params(&q, &streams[i]);
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    }
    harness_ok(dsla_engine_step(e, NULL), "step");
    dsla_engine_metrics_t met;
    dsla_engine_metrics(e, &met);
    assert_int_equal(met.blocks_per_slot, 12);
    assert_int_equal(met.state_slots_total, 200 / 12);
    assert_int_equal(met.running, 200 / (3 * 4 + 3 * 12));
    harness_drain(e, 10000);
    /* Churn: plans of 0, 2, 4 and 6 DSLA layers in turn, short requests, some cancelled. */
    uint64_t ids[24] = {0};
    for (int i = 0; i < 24; i++) {
        harness_random_request(&q, &rng, dsla_model_config(m)->vocab_size, 1, 40, 6);
        memset(&streams[i], 0, sizeof streams[i]);
        dsla_request_params_t p = harness_params(&q, &streams[i]);
        harness_ok(dsla_engine_submit(e, &p, &ids[i]), "submit");
        if (i % 3 == 0) harness_ok(dsla_engine_set_plan(e, plans[(i / 3) % 4]), "set plan");
        if (i % 5 == 4 && !streams[i - 2].finished)
            harness_ok(dsla_engine_cancel(e, ids[i - 2]), "cancel");
        harness_ok(dsla_engine_step(e, NULL), "step");
        check_bounds(e, &cfg);
    }
    harness_drain(e, 10000);
    dsla_engine_metrics(e, &met);
    assert_int_equal(met.kv_blocks_used, 0);
    assert_int_equal(met.state_slots_used, 0);
    assert_true(met.peak_state_slots_used > 0);
    for (int i = 0; i < 24; i++)
        assert_true(streams[i].finished);
    dsla_engine_destroy(&e);
    for (int i = 0; i < 4; i++)
        dsla_plan_release(&plans[i]);
    dsla_plan_release(&three);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&m);
}

/* A burst of five times max_running requests within the queue's bounds: none is refused, all
 * complete, at most max_running at once. */
static void test_burst_waits_in_queue(void **state) {
    (void)state;
    enum { RUNNING = 4, BURST = 5 * RUNNING };
    dsla_engine_config_t cfg = dsla_engine_config_default();
    cfg.max_running = RUNNING;
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    static harness_stream_t streams[BURST];
    memset(streams, 0, sizeof streams);
    harness_request_t q = {.n_prompt = 12, .max_tokens = 6, .ignore_eos = true};
    for (int i = 0; i < q.n_prompt; i++)
        q.prompt[i] = 5 + i;
    for (int i = 0; i < BURST; i++) {
        dsla_request_params_t p = harness_params(&q, &streams[i]);
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit within the queue's bounds");
    }
    harness_drain(e, 10000);
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_int_equal(m.requests_rejected, 0);
    assert_int_equal(m.requests_expired, 0);
    assert_int_equal(m.requests_finished, BURST);
    assert_int_equal(m.peak_running, RUNNING);
    for (int i = 0; i < BURST; i++) {
        assert_true(streams[i].finished);
        assert_int_equal(streams[i].status, DSLA_OK);
        assert_int_equal(streams[i].n, 6);
    }
    dsla_engine_destroy(&e);
}

static double fake_now;
static double fake_clock(void *user) {
    (void)user;
    return fake_now;
}

/* With the running set full, a waiting request ends RESOURCE_EXHAUSTED once it has waited beyond
 * max_queue_wait_ms on the engine's clock, naming the bound; one submitted later still waits, and
 * the running ones are untouched. */
static void test_queue_wait_expires(void **state) {
    (void)state;
    dsla_engine_config_t cfg = dsla_engine_config_default();
    cfg.max_running = 1;
    cfg.max_queue_wait_ms = 500;
    cfg.clock = fake_clock;
    fake_now = 100.0;
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    harness_request_t q = {.n_prompt = 8, .max_tokens = 40, .ignore_eos = true};
    for (int i = 0; i < q.n_prompt; i++)
        q.prompt[i] = 5 + i;
    harness_stream_t running = {0}, early = {0}, late = {0};
    dsla_request_params_t p = harness_params(&q, &running);
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    p = harness_params(&q, &early);
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    harness_ok(dsla_engine_step(e, NULL), "step"); /* the first runs, the second waits */
    fake_now += 0.25;
    p = harness_params(&q, &late);
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    fake_now += 0.25; /* early has waited 500 ms: not beyond */
    harness_ok(dsla_engine_step(e, NULL), "step");
    assert_false(early.finished);
    fake_now += 0.001;
    harness_ok(dsla_engine_step(e, NULL), "step");
    assert_true(early.finished);
    assert_int_equal(early.status, DSLA_ERR_RESOURCE_EXHAUSTED);
    assert_int_equal(early.n, 0);
    assert_non_null(strstr(dsla_last_error(), "waited 501 ms without being admitted "
                                              "(--max-queue-wait-ms 500)"));
    assert_false(late.finished);
    assert_false(running.finished);
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_int_equal(m.requests_expired, 1);
    assert_int_equal(m.queue_length, 1);
    /* Without a time bound nothing expires however long it waits. */
    harness_drain(e, 10000);
    assert_int_equal(running.n, 40);
    assert_true(late.finished);
    dsla_engine_destroy(&e);
    cfg.max_queue_wait_ms = 0;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    memset(&running, 0, sizeof running);
    memset(&late, 0, sizeof late);
    p = harness_params(&q, &running);
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    p = harness_params(&q, &late);
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    harness_ok(dsla_engine_step(e, NULL), "step");
    fake_now += 1e6;
    harness_drain(e, 10000);
    assert_int_equal(late.status, DSLA_OK);
    assert_int_equal(late.n, 40);
    dsla_engine_destroy(&e);
}

static void test_invalid_requests(void **state) {
    (void)state;
    dsla_engine_config_t cfg = dsla_engine_config_default();
    cfg.kv_blocks = 20;
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    harness_stream_t s = {0};
    harness_request_t q = {.n_prompt = 12, .max_tokens = 9000};
    for (int i = 0; i < q.n_prompt; i++)
        q.prompt[i] = 1 + i;
    dsla_request_params_t p = harness_params(&q, &s);
    assert_int_equal(dsla_engine_submit(e, &p, NULL), DSLA_ERR_INVALID_ARGUMENT);
    assert_string_equal(dsla_last_error(),
                        "max_tokens 9000 exceeds the model's context of 512 minus the prompt's "
                        "12 tokens");
    p.max_tokens = 100; /* 112 tokens over 5 attention layers: 35 blocks, the pool has 20 */
    assert_int_equal(dsla_engine_submit(e, &p, NULL), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "need 35 KV blocks and 0 DSLA layers 0 blocks of "
                                              "state slots; the arena has 20"));
    p.max_tokens = 10;
    q.prompt[3] = 4000;
    assert_int_equal(dsla_engine_submit(e, &p, NULL), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "outside the vocabulary of 512"));
    q.prompt[3] = 5;
    p.n_prompt_ids = 0;
    assert_int_equal(dsla_engine_submit(e, &p, NULL), DSLA_ERR_INVALID_ARGUMENT);
    assert_int_equal(dsla_engine_cancel(e, 12345), DSLA_ERR_NOT_FOUND);
    /* Under a plan of 5 DSLA layers the same request needs no KV block at all. */
    const int all[] = {0, 1, 2, 3, 4};
    dsla_plan_t *plan = harness_plan(model, all, 5, 3);
    harness_ok(dsla_engine_set_plan(e, plan), "set plan");
    p.n_prompt_ids = q.n_prompt;
    p.max_tokens = 100;
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit under DSLA plan");
    harness_drain(e, 1000);
    assert_true(s.finished);
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_int_equal(m.peak_kv_blocks_used, 0);
    assert_int_equal(m.peak_state_slots_used, 5);
    assert_int_equal(m.requests_rejected, 4);
    dsla_plan_release(&plan);
    dsla_engine_destroy(&e);
}

static void test_histogram_buckets(void **state) {
    (void)state;
    dsla_histogram_t h = {0};
    assert_true(dsla_histogram_bound(0) == 1e-4);
    assert_true(dsla_histogram_bound(10) == 1e-4 * 1024);
    for (int i = 0; i < 100; i++)
        dsla_histogram_observe(&h, 0.01 * (i + 1)); /* 10 ms .. 1 s */
    dsla_histogram_observe(&h, 1e9);
    assert_int_equal(h.count, 101);
    assert_int_equal(h.counts[DSLA_HISTOGRAM_BUCKETS], 1);
    double p50 = dsla_histogram_quantile(&h, 0.5);
    assert_true(p50 > 0.3 && p50 < 0.7);
    assert_true(dsla_histogram_quantile(&h, 1.0) == 1e9);
    uint64_t total = 0;
    for (int i = 0; i <= DSLA_HISTOGRAM_BUCKETS; i++)
        total += h.counts[i];
    assert_int_equal(total, h.count);
}

int main(void) {
    model_dir = dsla_test_data_or_skip("models/stories260K-hf/config.json");
    *strrchr(model_dir, '/') = '\0';
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_histogram_buckets),
        cmocka_unit_test(test_invalid_requests),
        cmocka_unit_test(test_capacity_follows_plan_mix),
        cmocka_unit_test(test_slots_of_many_blocks),
        cmocka_unit_test(test_burst_waits_in_queue),
        cmocka_unit_test(test_queue_wait_expires),
        cmocka_unit_test(test_overload_refused_at_once),
        cmocka_unit_test(test_cancel_from_callback),
        cmocka_unit_test(test_cancellation_stress_frees_everything),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    free(model_dir);
    return rc;
}

/* runtime/serve engine on stories260K-hf (CPU): greedy outputs of requests served concurrently,
 * with random arrivals, chunked prefill and per-layer sub-batching, are token-identical to the same
 * requests served one at a time, under plans of 0, 2 and 5 teacher-initialised DSLA layers; a plan
 * change mid-run keeps running requests on their plan and gives new ones the new plan; preemption
 * under forced memory pressure recomputes requests (under the newest plan) and their streams go on
 * correctly; the engine agrees with dsla_generate on sampling, stop strings and text; prompt
 * logprobs (echo) are those of prefixes, and scoring several prompts at once stays within
 * dsla_engine_logit_rows rows a step (a backend made for fewer refuses them). */
#include "tests/unit/serve_harness.h"

#include <stdio.h>

#include "runtime/model/generate.h"
#include "runtime/model/kv_cache.h"

static char *model_dir;
static dsla_model_t *model;
static dsla_tokenizer_t *tokenizer;
static uint64_t rng;

/* Requests per scenario: enough to keep 8 sequences in flight with staggered arrivals. */
enum { N_REQUESTS = 16, MAX_PROMPT = 40, MAX_OUT = 48 };

/* Conversion orders for the plans: any fixed order does for the identity tests. */
static const int ORDER[] = {3, 1, 4, 0, 2};

/* A step budget and chunk that cut every longer prompt into several chunks and make prefill and
 * decode share steps. */
static dsla_engine_config_t small_config(void) {
    dsla_engine_config_t c = dsla_engine_config_default();
    c.max_running = 8;
    c.step_tokens = 48;
    c.prefill_chunk = 16;
    return c;
}

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

static void make_requests(harness_request_t *q, int n) {
    const dsla_model_config_t *cfg = dsla_model_config(model);
    for (int i = 0; i < n; i++)
        harness_random_request(&q[i], &rng, cfg->vocab_size, dsla_tokenizer_bos_id(tokenizer),
                               MAX_PROMPT, MAX_OUT);
}

/* Submits the requests at random steps (0 to 3 per step) and runs the engine dry. */
static void run_staggered(dsla_engine_t *e, const harness_request_t *q, harness_stream_t *got,
                          int n) {
    int next = 0;
    for (long step = 0; next < n || !dsla_engine_idle(e); step++) {
        if (step > 100000) fail_msg("engine did not finish");
        int arrivals = (int)(dsla_test_rand_u64(&rng) % 4);
        for (int a = 0; a < arrivals && next < n; a++, next++) {
            memset(&got[next], 0, sizeof got[next]);
            dsla_request_params_t p = harness_params(&q[next], &got[next]);
            harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
        }
        harness_ok(dsla_engine_step(e, NULL), "step");
    }
}

static void check_concurrent_matches_solo(int n_dsla) {
    dsla_engine_config_t cfg = small_config();
    dsla_plan_t *plan = n_dsla ? harness_plan(model, ORDER, n_dsla, 7) : NULL;
    harness_request_t q[N_REQUESTS];
    harness_stream_t want[N_REQUESTS], got[N_REQUESTS];
    make_requests(q, N_REQUESTS);
    for (int i = 0; i < N_REQUESTS; i++)
        harness_run_solo(model, tokenizer, &cfg, plan, &q[i], &want[i]);

    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    if (plan) harness_ok(dsla_engine_set_plan(e, plan), "set plan");
    run_staggered(e, q, got, N_REQUESTS);
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_true(m.peak_running > 2); /* requests really overlapped */
    assert_int_equal(m.kv_blocks_used, 0);
    assert_int_equal(m.state_slots_used, 0);
    assert_int_equal(m.requests_finished, N_REQUESTS);
    int tokens = 0;
    for (int i = 0; i < N_REQUESTS; i++) {
        assert_true(got[i].finished);
        harness_assert_same(&got[i], &want[i], i);
        tokens += got[i].n;
    }
    printf("plan with %d DSLA layers: %d requests, %d tokens identical, peak %d running\n", n_dsla,
           N_REQUESTS, tokens, m.peak_running);
    dsla_engine_destroy(&e);
    dsla_plan_release(&plan);
}

static void test_concurrent_matches_solo_all_attention(void **state) {
    (void)state;
    check_concurrent_matches_solo(0);
}

static void test_concurrent_matches_solo_2_dsla(void **state) {
    (void)state;
    check_concurrent_matches_solo(2);
}

static void test_concurrent_matches_solo_5_dsla(void **state) {
    (void)state;
    check_concurrent_matches_solo(5);
}

/* Under one plan, a KV pool far too small for the load forces preemptions; recomputed requests
 * still produce their solo outputs. */
static void test_preemption_same_plan(void **state) {
    (void)state;
    dsla_engine_config_t cfg = small_config();
    const int n_dsla = 2;
    /* Room for about two full requests over the three attention layers. */
    cfg.kv_blocks = 2 * 3 * ((MAX_PROMPT + MAX_OUT) / DSLA_KV_BLOCK_TOKENS + 1);
    dsla_plan_t *plan = harness_plan(model, ORDER, n_dsla, 11);
    harness_request_t q[N_REQUESTS];
    harness_stream_t want[N_REQUESTS], got[N_REQUESTS];
    make_requests(q, N_REQUESTS);
    for (int i = 0; i < N_REQUESTS; i++) {
        q[i].ignore_eos = true;
        harness_run_solo(model, tokenizer, &cfg, plan, &q[i], &want[i]);
    }
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    harness_ok(dsla_engine_set_plan(e, plan), "set plan");
    run_staggered(e, q, got, N_REQUESTS);
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_true(m.preemptions > 0);
    for (int i = 0; i < N_REQUESTS; i++)
        harness_assert_same(&got[i], &want[i], i);
    assert_int_equal(m.kv_blocks_used, 0);
    printf("same plan: %llu preemptions, every output identical to solo\n",
           (unsigned long long)m.preemptions);
    dsla_engine_destroy(&e);
    dsla_plan_release(&plan);
}

/* Plan A (2 DSLA layers) for a first wave, plan B (5) installed mid-run for a second wave: every
 * request runs to its end on the plan it was admitted under (first-wave requests still queued at
 * the change take B), and its output is its solo output under that plan. */
static void test_plan_change_mid_run(void **state) {
    (void)state;
    dsla_engine_config_t cfg = small_config();
    enum { WAVE = 8 };
    dsla_plan_t *a = harness_plan(model, ORDER, 2, 21), *b = harness_plan(model, ORDER, 5, 33);
    harness_request_t q[2 * WAVE];
    harness_stream_t got[2 * WAVE], want;
    make_requests(q, 2 * WAVE);
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    harness_ok(dsla_engine_set_plan(e, a), "set plan A");
    uint64_t a_id = dsla_plan_id(dsla_engine_plan(e));
    for (int i = 0; i < WAVE; i++) {
        memset(&got[i], 0, sizeof got[i]);
        dsla_request_params_t p = harness_params(&q[i], &got[i]);
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    }
    for (int s = 0; s < 4; s++)
        harness_ok(dsla_engine_step(e, NULL), "step");
    harness_ok(dsla_engine_set_plan(e, b), "set plan B");
    uint64_t b_id = dsla_plan_id(dsla_engine_plan(e));
    assert_true(b_id > a_id);
    run_staggered(e, q + WAVE, got + WAVE, WAVE);
    int on_a = 0;
    for (int i = 0; i < 2 * WAVE; i++) {
        uint64_t plan = got[i].plan_of[0];
        assert_true(plan == b_id || (plan == a_id && i < WAVE));
        for (int t = 0; t < got[i].n; t++)
            assert_int_equal(got[i].plan_of[t], plan);
        on_a += plan == a_id;
        harness_run_solo(model, tokenizer, &cfg, plan == a_id ? a : b, &q[i], &want);
        harness_assert_same(&got[i], &want, i);
    }
    assert_true(on_a > 0);
    printf("plan change mid-run: %d requests finished on plan %llu, %d on plan %llu\n", on_a,
           (unsigned long long)a_id, 2 * WAVE - on_a, (unsigned long long)b_id);
    dsla_engine_destroy(&e);
    dsla_plan_release(&a);
    dsla_plan_release(&b);
}

/* Runs e dry, then holds each of the n answers to the same request alone under plan. */
static void drain_as_solo(dsla_engine_t *e, const dsla_engine_config_t *cfg, dsla_plan_t *plan,
                          const harness_request_t *q, const harness_stream_t *got, int n) {
    harness_stream_t want;
    harness_drain(e, 10000);
    for (int i = 0; i < n; i++) {
        harness_run_solo(model, tokenizer, cfg, plan, &q[i], &want);
        harness_assert_same(&got[i], &want, i);
    }
}

/* Every SET_PLAN loads its versions afresh: a plan whose version of a layer has the checksum of the
 * running plan's takes the running one, so requests of both plans run one copy (a GPU holds one
 * version a layer and would upload the two in turn at every step). Versions of other weights, or
 * without a checksum, stay their own; the answers are unchanged. */
static void test_plan_versions_shared(void **state) {
    (void)state;
    dsla_engine_config_t cfg = small_config();
    dsla_plan_t *a = harness_plan_sums(model, ORDER, 2, 21, true);
    dsla_plan_t *b = harness_plan_sums(model, ORDER, 5, 21, true);  /* ORDER[0..1] as a's */
    dsla_plan_t *c = harness_plan_sums(model, ORDER, 5, 22, true);  /* other weights */
    dsla_plan_t *d = harness_plan_sums(model, ORDER, 5, 21, false); /* a's, no checksums */
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    harness_ok(dsla_engine_set_plan(e, a), "set plan A");
    const dsla_dsla_layer_t *la[64]; /* A's copy goes when B replaces it; a keeps the versions */
    assert_true(dsla_model_config(model)->num_layers <= 64);
    memcpy(la, dsla_plan_layers(dsla_engine_plan(e)),
           (size_t)dsla_model_config(model)->num_layers * sizeof la[0]);
    harness_ok(dsla_engine_set_plan(e, b), "set plan B");
    const dsla_dsla_layer_t *const *lb = dsla_plan_layers(dsla_engine_plan(e));
    for (int i = 0; i < 5; i++) {
        const int l = ORDER[i];
        if (i < 2)
            assert_ptr_equal(lb[l], la[l]);
        else
            assert_ptr_equal(lb[l], dsla_plan_layers(b)[l]);
    }
    harness_ok(dsla_engine_set_plan(e, c), "set plan C");
    const dsla_dsla_layer_t *const *lc = dsla_plan_layers(dsla_engine_plan(e));
    for (int i = 0; i < 5; i++)
        assert_ptr_equal(lc[ORDER[i]], dsla_plan_layers(c)[ORDER[i]]);
    harness_ok(dsla_engine_set_plan(e, d), "set plan D");
    const dsla_dsla_layer_t *const *ld = dsla_plan_layers(dsla_engine_plan(e));
    for (int i = 0; i < 5; i++)
        assert_ptr_equal(ld[ORDER[i]], dsla_plan_layers(d)[ORDER[i]]);
    /* B with A's versions shared answers as B alone */
    harness_ok(dsla_engine_set_plan(e, b), "set plan B again");
    harness_request_t q[2];
    harness_stream_t got[2];
    make_requests(q, 2);
    for (int i = 0; i < 2; i++) {
        memset(&got[i], 0, sizeof got[i]);
        dsla_request_params_t p = harness_params(&q[i], &got[i]);
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    }
    drain_as_solo(e, &cfg, b, q, got, 2);
    dsla_engine_destroy(&e);
    dsla_plan_release(&a);
    dsla_plan_release(&b);
    dsla_plan_release(&c);
    dsla_plan_release(&d);
}

/* Convert, revert, convert again: the controller re-sends the same versions while requests of the
 * first conversion still run. The third plan must take their copies (not only the current plan's,
 * which is all attention by then), so that one version of each layer is loaded; the requests of
 * both conversions answer as their plans do alone. */
static void test_plan_versions_shared_after_revert(void **state) {
    (void)state;
    dsla_engine_config_t cfg = small_config();
    dsla_plan_t *a = harness_plan_sums(model, ORDER, 3, 21, true);
    dsla_plan_t *a_again = harness_plan_sums(model, ORDER, 3, 21, true); /* loaded afresh */
    dsla_plan_t *attn = NULL;
    harness_ok(dsla_plan_create(&attn, dsla_model_config(model)->num_layers), "plan");
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    harness_ok(dsla_engine_set_plan(e, a), "set plan A");
    harness_request_t q[2];
    harness_stream_t got[2];
    make_requests(q, 2);
    for (int i = 0; i < 2; i++) {
        q[i].max_tokens = MAX_OUT;
        q[i].ignore_eos = true; /* still running when the third plan comes */
        memset(&got[i], 0, sizeof got[i]);
        dsla_request_params_t p = harness_params(&q[i], &got[i]);
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    }
    harness_ok(dsla_engine_step(e, NULL), "step under A");
    const dsla_dsla_layer_t *running[64];
    assert_true(dsla_model_config(model)->num_layers <= 64);
    memcpy(running, dsla_plan_layers(dsla_engine_plan(e)),
           (size_t)dsla_model_config(model)->num_layers * sizeof running[0]);
    harness_ok(dsla_engine_set_plan(e, attn), "revert");
    harness_ok(dsla_engine_step(e, NULL), "step after the revert");
    assert_int_equal(dsla_plan_num_dsla(dsla_engine_plan(e)), 0);
    assert_false(dsla_engine_idle(e));
    harness_ok(dsla_engine_set_plan(e, a_again), "convert again");
    const dsla_dsla_layer_t *const *now = dsla_plan_layers(dsla_engine_plan(e));
    for (int i = 0; i < 3; i++) {
        assert_ptr_equal(now[ORDER[i]], running[ORDER[i]]);
        assert_ptr_not_equal(now[ORDER[i]], dsla_plan_layers(a_again)[ORDER[i]]);
    }
    drain_as_solo(e, &cfg, a, q, got, 2);
    dsla_engine_destroy(&e);
    dsla_plan_release(&a);
    dsla_plan_release(&a_again);
    dsla_plan_release(&attn);
}

/* Memory pressure across a plan change: the first wave runs on an all-attention plan in a small KV
 * pool; plan B (2 DSLA layers) arrives and a second wave pushes the pool over. Preempted first-wave
 * requests recompute under B: their output is A's solo output up to the preemption, then B's solo
 * continuation of prompt + those tokens. */
static void test_plan_change_under_pressure(void **state) {
    (void)state;
    dsla_engine_config_t cfg = small_config();
    enum { WAVE = 8 };
    cfg.kv_blocks = 5 * 4 * ((MAX_PROMPT + MAX_OUT) / DSLA_KV_BLOCK_TOKENS + 1) / 2;
    harness_request_t q[2 * WAVE];
    harness_stream_t got[2 * WAVE], want;
    make_requests(q, 2 * WAVE);
    for (int i = 0; i < 2 * WAVE; i++) {
        q[i].ignore_eos = true;
        q[i].max_tokens = MAX_OUT;
    }
    dsla_plan_t *b = harness_plan(model, ORDER, 2, 45);
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    uint64_t a_id = dsla_plan_id(dsla_engine_plan(e));
    for (int i = 0; i < WAVE; i++) {
        memset(&got[i], 0, sizeof got[i]);
        dsla_request_params_t p = harness_params(&q[i], &got[i]);
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    }
    for (int s = 0; s < 6; s++)
        harness_ok(dsla_engine_step(e, NULL), "step");
    harness_ok(dsla_engine_set_plan(e, b), "set plan B");
    uint64_t b_id = dsla_plan_id(dsla_engine_plan(e));
    run_staggered(e, q + WAVE, got + WAVE, WAVE);
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_true(m.preemptions > 0);
    int moved = 0;
    for (int i = 0; i < 2 * WAVE; i++) {
        /* k: tokens computed under A before the request moved to B (all of them if it never did).
         */
        int k = 0;
        while (k < got[i].n && got[i].plan_of[k] == a_id)
            k++;
        for (int t = k; t < got[i].n; t++)
            assert_int_equal(got[i].plan_of[t], b_id);
        harness_stream_t ref_a;
        harness_run_solo(model, tokenizer, &cfg, NULL, &q[i], &ref_a);
        if (k == got[i].n && i < WAVE) {
            harness_assert_same(&got[i], &ref_a, i);
            continue;
        }
        harness_request_t cont = q[i];
        memcpy(cont.prompt + cont.n_prompt, got[i].ids, (size_t)k * sizeof got[i].ids[0]);
        cont.n_prompt += k;
        cont.max_tokens -= k;
        harness_run_solo(model, tokenizer, &cfg, b, &cont, &want);
        assert_memory_equal(got[i].ids, ref_a.ids, (size_t)k * sizeof got[i].ids[0]);
        assert_int_equal(got[i].n - k, want.n);
        assert_memory_equal(got[i].ids + k, want.ids, (size_t)want.n * sizeof want.ids[0]);
        if (i < WAVE) moved++;
        if (k > 0) assert_true(got[i].usage.preemptions > 0);
    }
    assert_true(moved > 0);
    printf("plan change under pressure: %llu preemptions, %d first-wave requests moved to plan "
           "%llu mid-stream\n",
           (unsigned long long)m.preemptions, moved, (unsigned long long)b_id);
    assert_int_equal(m.kv_blocks_used, 0);
    assert_int_equal(m.state_slots_used, 0);
    dsla_engine_destroy(&e);
    dsla_plan_release(&b);
}

typedef struct {
    char text[HARNESS_MAX_TEXT];
    size_t len;
} text_sink_t;

static int sink_text(void *user, const char *piece, size_t len) {
    text_sink_t *s = user;
    memcpy(s->text + s->len, piece, len);
    s->len += len;
    return 0;
}

/* One request through the engine gives what dsla_generate gives: seeded sampling, stop strings,
 * the streamed text. */
static void test_matches_generate(void **state) {
    (void)state;
    const char *prompt = "Once upon a time, there was a little girl";
    const char *stops[] = {"park", "."};
    for (int trial = 0; trial < 4; trial++) {
        dsla_generate_params_t gp = {
            .sampling = {.temperature = trial ? 0.9f : 0.0f,
                         .top_k = trial == 2 ? 20 : 0,
                         .top_p = trial == 3 ? 0.9f : 1.0f,
                         .seed = 100 + (uint64_t)trial},
            .max_tokens = 60,
            .stop = trial % 2 ? stops : NULL,
            .n_stop = trial % 2 ? 2 : 0,
        };
        text_sink_t sink = {0};
        dsla_generate_result_t res;
        harness_ok(
            dsla_generate(model, tokenizer, prompt, strlen(prompt), &gp, sink_text, &sink, &res),
            "generate");
        dsla_engine_config_t cfg = dsla_engine_config_default();
        dsla_engine_t *e = NULL;
        harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
        harness_stream_t got = {0};
        dsla_request_params_t p = {
            .prompt_text = prompt,
            .prompt_text_len = strlen(prompt),
            .sampling = gp.sampling,
            .max_tokens = gp.max_tokens,
            .stop = gp.stop,
            .n_stop = gp.n_stop,
            .on_event = harness_on_event,
            .user = &got,
        };
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
        harness_drain(e, 1000);
        assert_int_equal(got.n, res.completion_tokens);
        assert_memory_equal(got.ids, res.ids, (size_t)res.completion_tokens * sizeof *res.ids);
        assert_int_equal(got.text_len, sink.len);
        assert_memory_equal(got.text, sink.text, sink.len);
        assert_int_equal(got.finish, res.finish);
        assert_int_equal(got.usage.prompt_tokens, res.prompt_tokens);
        free(res.ids);
        dsla_engine_destroy(&e);
    }
}

/* A request the engine gives up on after admission ends with an event that carries the engine's
 * own sentence, which the serving actor sends to the client unchanged: here a waiting request
 * that fit under a 5-DSLA plan, which the all-attention plan that replaced it cannot hold. */
static void test_finish_with_error_carries_message(void **state) {
    (void)state;
    dsla_engine_config_t cfg = small_config();
    enum { PROMPT = 20, OUT = 40 };
    /* One block per DSLA layer's state slot (stories260K's slot fits one block): the request fits
     * under the all-DSLA plan it is submitted to, never under the all-attention one. */
    int blocks = dsla_model_config(model)->num_layers;
    assert_true(blocks < dsla_model_config(model)->num_layers * dsla_kv_blocks_for(PROMPT + OUT));
    cfg.kv_blocks = blocks;
    dsla_plan_t *all_dsla = harness_plan(model, ORDER, 5, 51);
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    harness_ok(dsla_engine_set_plan(e, all_dsla), "set plan");
    harness_request_t q = {.n_prompt = PROMPT, .max_tokens = OUT, .ignore_eos = true};
    for (int i = 0; i < PROMPT; i++)
        q.prompt[i] = 3 + i;
    harness_stream_t got = {0};
    dsla_request_params_t p = harness_params(&q, &got);
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    dsla_plan_t *all_attn = NULL;
    harness_ok(dsla_plan_create(&all_attn, dsla_model_config(model)->num_layers), "plan");
    harness_ok(dsla_engine_set_plan(e, all_attn), "set the all-attention plan");
    uint64_t attn_id = dsla_plan_id(dsla_engine_plan(e));
    dsla_clear_error();
    harness_drain(e, 100);
    assert_true(got.finished);
    assert_int_equal(got.status, DSLA_ERR_RESOURCE_EXHAUSTED);
    char want[160];
    snprintf(want, sizeof want,
             "KV blocks and 0 state slots of 1 blocks under plan %llu; the arena has %d blocks",
             (unsigned long long)attn_id, blocks);
    if (strncmp(got.message, "request needs ", 14) != 0 || !strstr(got.message, want))
        fail_msg("message '%s' is not the engine's sentence ('%s')", got.message, want);
    dsla_engine_destroy(&e);
    dsla_plan_release(&all_dsla);
    dsla_plan_release(&all_attn);
}

/* What a request with logprobs streamed: each token's own and its top list. */
typedef struct {
    int n;
    int32_t ids[64];
    dsla_token_logprobs_t lp[64];
    bool missing; /* an event with a token and no logprobs */
} lp_sink_t;

static int lp_event(void *user, const dsla_stream_event_t *ev) {
    lp_sink_t *s = user;
    if (ev->token < 0) return 0;
    if (!ev->logprobs) s->missing = true;
    if (s->n < 64 && ev->logprobs) {
        s->ids[s->n] = ev->token;
        s->lp[s->n++] = *ev->logprobs;
    }
    return 0;
}

static void run_logprobs(float temperature, int top_k, int top_logprobs, lp_sink_t *got) {
    const char *prompt = "Once upon a time";
    dsla_engine_config_t cfg = dsla_engine_config_default();
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    dsla_request_params_t p = {
        .prompt_text = prompt,
        .prompt_text_len = strlen(prompt),
        .sampling = {.temperature = temperature, .top_k = top_k, .top_p = 1.0f, .seed = 9},
        .max_tokens = 12,
        .ignore_eos = true,
        .logprobs = true,
        .top_logprobs = top_logprobs,
        .on_event = lp_event,
        .user = got,
    };
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    harness_drain(e, 1000);
    dsla_engine_destroy(&e);
}

/* Every generated token carries its logprobs; greedy takes the likeliest; the values are of the
 * raw distribution, so a greedy sampler that gets there through temperature and top-k reports the
 * same numbers; top_logprobs beyond the limit is refused naming the field. */
static void test_logprobs_in_events(void **state) {
    (void)state;
    lp_sink_t greedy = {0}, via_top_k = {0};
    run_logprobs(0.0f, 0, 5, &greedy);
    run_logprobs(0.5f, 1, 5, &via_top_k);
    assert_int_equal(greedy.n, 12);
    assert_false(greedy.missing);
    assert_int_equal(via_top_k.n, 12);
    for (int i = 0; i < greedy.n; i++) {
        const dsla_token_logprobs_t *lp = &greedy.lp[i];
        assert_int_equal(lp->n_top, 5);
        assert_int_equal(lp->top_ids[0], greedy.ids[i]);
        assert_float_equal(lp->logprob, lp->top_logprobs[0], 0);
        assert_true(lp->logprob <= 0);
        for (int j = 1; j < lp->n_top; j++)
            assert_true(lp->top_logprobs[j] <= lp->top_logprobs[j - 1]);
        assert_int_equal(via_top_k.ids[i], greedy.ids[i]);
        assert_memory_equal(&via_top_k.lp[i], lp, sizeof *lp);
    }
    dsla_engine_config_t cfg = dsla_engine_config_default();
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    dsla_request_params_t p = {.prompt_text = "x",
                               .prompt_text_len = 1,
                               .max_tokens = 1,
                               .logprobs = true,
                               .top_logprobs = DSLA_LOGPROBS_TOP_MAX + 1};
    assert_int_equal(dsla_engine_submit(e, &p, NULL), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "top_logprobs is 21; it must be in [0, 20]"));
    dsla_engine_destroy(&e);
}

/* The first event of a prompt-scoring request. */
typedef struct {
    int n_prompt, events_with_prompt;
    int32_t ids[32];
    dsla_token_logprobs_t lp[32];
    dsla_token_logprobs_t first; /* the first generated token's */
    bool have_first;
} prompt_sink_t;

static int prompt_event(void *user, const dsla_stream_event_t *ev) {
    prompt_sink_t *s = user;
    if (ev->prompt_logprobs) {
        s->events_with_prompt++;
        s->n_prompt = ev->n_prompt;
        for (int i = 0; i < ev->n_prompt && i < 32; i++) {
            s->ids[i] = ev->prompt_ids[i];
            s->lp[i] = ev->prompt_logprobs[i];
        }
    }
    if (ev->token >= 0 && ev->logprobs && !s->have_first) {
        s->first = *ev->logprobs;
        s->have_first = true;
    }
    return 0;
}

static void run_prompt(const int32_t *ids, int n, bool score, int prefill_chunk,
                       prompt_sink_t *got) {
    dsla_engine_config_t cfg = dsla_engine_config_default();
    cfg.prefill_chunk = prefill_chunk;
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tokenizer, &cfg), "engine");
    dsla_request_params_t p = {
        .prompt_ids = ids,
        .n_prompt_ids = n,
        .max_tokens = 2,
        .ignore_eos = true,
        .logprobs = true,
        .top_logprobs = 4,
        .prompt_logprobs = score,
        .on_event = prompt_event,
        .user = got,
    };
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    harness_drain(e, 1000);
    dsla_engine_destroy(&e);
}

/* echo's prompt logprobs: position p's are those of the next-token distribution after the first p
 * tokens, the same numbers a request whose prompt ends there gets for its first token; they come
 * once, whole, in the first event, also when the prefill runs in chunks of 3. */
static void test_prompt_logprobs(void **state) {
    (void)state;
    const int32_t ids[] = {1, 403, 407, 261, 300, 290, 288, 310};
    enum { N = 8 };
    prompt_sink_t scored = {0};
    run_prompt(ids, N, true, 3, &scored);
    assert_int_equal(scored.events_with_prompt, 1);
    assert_int_equal(scored.n_prompt, N);
    assert_memory_equal(scored.ids, ids, sizeof ids);
    for (int p = 1; p < N; p++) {
        prompt_sink_t prefix = {0};
        run_prompt(ids, p, false, 256, &prefix);
        assert_int_equal(prefix.events_with_prompt, 0);
        assert_true(prefix.have_first);
        const dsla_token_logprobs_t *a = &scored.lp[p], *b = &prefix.first;
        assert_int_equal(a->n_top, 4);
        for (int j = 0; j < 4; j++) {
            assert_int_equal(a->top_ids[j], b->top_ids[j]);
            assert_float_equal(a->top_logprobs[j], b->top_logprobs[j], 1e-4);
        }
        /* the prompt token's own logprob, checked against the list when it is in it */
        assert_true(a->logprob <= 0);
        for (int j = 0; j < 4; j++)
            if (b->top_ids[j] == ids[p]) assert_float_equal(a->logprob, b->top_logprobs[j], 1e-4);
    }
}

/* The CPU backend's forward pass, counting the rows of each call (a GPU backend's device logits
 * hold dsla_engine_logit_rows rows, so the scheduler must never ask for more). */
static dsla_serve_backend_ops_t counting_ops;
static dsla_status_t (*real_forward)(dsla_serve_backend_t *, const dsla_serve_item_t *, int,
                                     float *);
static int most_rows, scoring_calls;

static dsla_status_t counting_forward(dsla_serve_backend_t *b, const dsla_serve_item_t *items,
                                      int n_items, float *logits) {
    int rows = 0, scoring = 0;
    for (int i = 0; i < n_items; i++) {
        rows += items[i].want_all_logits ? items[i].n_tokens : 1;
        scoring += items[i].want_all_logits;
    }
    if (rows > most_rows) most_rows = rows;
    if (scoring > 1) scoring_calls++;
    return real_forward(b, items, n_items, logits);
}

enum { BOUND_REQS = 4, BOUND_PROMPT = 30 };

static void run_scoring(const dsla_engine_config_t *cfg, int max_logit_rows,
                        const int32_t (*ids)[BOUND_PROMPT], prompt_sink_t *got) {
    dsla_serve_backend_t *be = NULL;
    harness_ok(dsla_serve_backend_cpu_create(&be, model, 1024, cfg->max_running, true), "backend");
    counting_ops = *be->ops;
    real_forward = counting_ops.forward;
    counting_ops.forward = counting_forward;
    be->ops = &counting_ops;
    be->max_logit_rows = max_logit_rows;
    most_rows = scoring_calls = 0;
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create_on(&e, be, tokenizer, cfg), "engine");
    for (int i = 0; i < BOUND_REQS; i++) {
        const dsla_request_params_t p = {
            .prompt_ids = ids[i],
            .n_prompt_ids = BOUND_PROMPT,
            .max_tokens = 3,
            .ignore_eos = true,
            .logprobs = true,
            .top_logprobs = 2,
            .prompt_logprobs = true,
            .on_event = prompt_event,
            .user = &got[i],
        };
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    }
    harness_drain(e, 1000);
    dsla_engine_destroy(&e);
    dsla_serve_backend_destroy(&be);
}

/* Prompt scoring is bounded per step: several scoring requests at once never ask a forward pass
 * for more than dsla_engine_logit_rows rows (max_running + score_chunk), their prompts are cut in
 * score_chunk pieces, and the logprobs equal those of one whole-prompt chunk. A backend made for
 * fewer rows refuses echo with logprobs, naming the rows. */
static void test_prompt_scoring_bounds_rows(void **state) {
    (void)state;
    int32_t ids[BOUND_REQS][BOUND_PROMPT];
    const int V = dsla_model_config(model)->vocab_size;
    for (int i = 0; i < BOUND_REQS; i++) {
        ids[i][0] = dsla_tokenizer_bos_id(tokenizer);
        for (int t = 1; t < BOUND_PROMPT; t++)
            ids[i][t] = (int32_t)(2 + (dsla_test_rand_u64(&rng) % (uint64_t)(V - 2)));
    }
    dsla_engine_config_t whole = dsla_engine_config_default();
    whole.max_running = BOUND_REQS;
    static prompt_sink_t ref[BOUND_REQS], got[BOUND_REQS];
    memset(ref, 0, sizeof ref);
    memset(got, 0, sizeof got);
    run_scoring(&whole, 0, ids, ref); /* one chunk each: 30 < 256 */
    assert_int_equal(most_rows, BOUND_REQS * BOUND_PROMPT);

    dsla_engine_config_t cut = whole;
    cut.score_chunk = 8;
    cut.prefill_chunk = 16;
    cut.step_tokens = 64;
    const int bound = dsla_engine_logit_rows(&cut);
    assert_int_equal(bound, BOUND_REQS + 8);
    run_scoring(&cut, bound, ids, got);
    printf("scoring %d prompts of %d tokens in chunks of 8: at most %d rows a step (bound %d), "
           "%d steps scoring two or more\n",
           BOUND_REQS, BOUND_PROMPT, most_rows, bound, scoring_calls);
    assert_true(most_rows <= bound);
    assert_true(most_rows > BOUND_REQS); /* a whole scoring chunk ran */
    for (int i = 0; i < BOUND_REQS; i++) {
        assert_int_equal(got[i].events_with_prompt, 1);
        assert_int_equal(got[i].n_prompt, BOUND_PROMPT);
        for (int p = 1; p < BOUND_PROMPT && p < 32; p++) {
            assert_float_equal(got[i].lp[p].logprob, ref[i].lp[p].logprob, 1e-5);
            assert_float_equal(got[i].lp[p].top_logprobs[0], ref[i].lp[p].top_logprobs[0], 1e-5);
        }
        assert_float_equal(got[i].first.logprob, ref[i].first.logprob, 1e-5);
    }

    /* A backend of one row per sequence cannot hold a scoring chunk: refused at submit. */
    dsla_serve_backend_t *be = NULL;
    harness_ok(dsla_serve_backend_cpu_create(&be, model, 1024, cut.max_running, true), "backend");
    be->max_logit_rows = cut.max_running;
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create_on(&e, be, tokenizer, &cut), "engine");
    prompt_sink_t sink = {0};
    dsla_request_params_t p = {.prompt_ids = ids[0],
                               .n_prompt_ids = BOUND_PROMPT,
                               .max_tokens = 1,
                               .logprobs = true,
                               .prompt_logprobs = true,
                               .on_event = prompt_event,
                               .user = &sink};
    assert_int_equal(dsla_engine_submit(e, &p, NULL), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "12 logit rows"));
    p.prompt_logprobs = false; /* plain logprobs take one row: served */
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit without echo");
    harness_drain(e, 100);
    dsla_engine_destroy(&e);
    dsla_serve_backend_destroy(&be);
}

int main(void) {
    model_dir = dsla_test_data_or_skip("models/stories260K-hf/config.json");
    *strrchr(model_dir, '/') = '\0';
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_matches_solo_all_attention),
        cmocka_unit_test(test_concurrent_matches_solo_2_dsla),
        cmocka_unit_test(test_concurrent_matches_solo_5_dsla),
        cmocka_unit_test(test_preemption_same_plan),
        cmocka_unit_test(test_plan_change_mid_run),
        cmocka_unit_test(test_plan_versions_shared),
        cmocka_unit_test(test_plan_versions_shared_after_revert),
        cmocka_unit_test(test_plan_change_under_pressure),
        cmocka_unit_test(test_matches_generate),
        cmocka_unit_test(test_finish_with_error_carries_message),
        cmocka_unit_test(test_logprobs_in_events),
        cmocka_unit_test(test_prompt_logprobs),
        cmocka_unit_test(test_prompt_scoring_bounds_rows),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    free(model_dir);
    return rc;
}

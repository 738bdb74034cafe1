/* The serving engine on the GPU backend (runtime/serve/backend_cuda.h) against the CPU engine, on
 * stories260K-hf in fp32 (weights and KV): several concurrent requests, continuous batching, then
 * plan changes while they run (a hybrid plan, then a plan pinning another version of a shared
 * layer), so that one step holds requests of three plans and the GPU backend runs them as groups
 * with per-group layer versions. Greedy tokens, text and finish reasons must equal the CPU
 * engine's. Exits 77 without a CUDA device; skips without DSLA_TEST_DATA. */
#include "tests/unit/serve_harness.h"

#include <stdio.h>

#include "kernels/kernels_cuda.h"
#include "runtime/model/llama_cuda.h"
#include "runtime/model/tokenizer.h"
#include "runtime/serve/backend_cuda.h"

#ifdef DSLA_HAVE_CUDA

enum { N_REQ = 7, MAX_RUNNING = 8, KV_BLOCKS = 1024, STEPS_BEFORE_PLAN = 3 };

static dsla_cuda_stream_t stream;

typedef struct {
    harness_request_t req[N_REQ];
    dsla_plan_t *hybrid, *other; /* layers 1, 3 as DSLA; layer 1 as DSLA with another version */
    bool dsla;                   /* the GPU runs DSLA at this head dim */
} scenario_t;

static dsla_engine_config_t engine_config(void) {
    dsla_engine_config_t c = dsla_engine_config_default();
    c.max_running = MAX_RUNNING;
    c.kv_blocks = KV_BLOCKS;
    c.step_tokens = 64; /* prefills and decodes share steps */
    c.prefill_chunk = 32;
    return c;
}

/* Four requests, a plan change, two more, another plan change, one more; drained. */
static void run(dsla_engine_t *e, const scenario_t *sc, harness_stream_t *out) {
    memset(out, 0, N_REQ * sizeof *out);
    int next = 0;
    for (; next < 4; next++) {
        dsla_request_params_t p = harness_params(&sc->req[next], &out[next]);
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    }
    for (int i = 0; i < STEPS_BEFORE_PLAN; i++)
        harness_ok(dsla_engine_step(e, NULL), "step");
    if (sc->dsla) harness_ok(dsla_engine_set_plan(e, sc->hybrid), "set plan");
    for (; next < 6; next++) {
        dsla_request_params_t p = harness_params(&sc->req[next], &out[next]);
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    }
    for (int i = 0; i < STEPS_BEFORE_PLAN; i++)
        harness_ok(dsla_engine_step(e, NULL), "step");
    if (sc->dsla) harness_ok(dsla_engine_set_plan(e, sc->other), "set plan");
    dsla_request_params_t p = harness_params(&sc->req[next], &out[next]);
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    harness_drain(e, 100000);
}

static void test_engine_cuda_equals_cpu(void **state) {
    (void)state;
    char *cfg_path = dsla_test_data_path("models/stories260K-hf/config.json");
    if (!cfg_path) skip();
    *strrchr(cfg_path, '/') = '\0';
    dsla_model_t *m = harness_load_model(cfg_path);
    dsla_tokenizer_t *tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&tok, cfg_path), "tokenizer");
    const dsla_model_config_t *mc = dsla_model_config(m);
    const dsla_engine_config_t ec = engine_config();

    dsla_cuda_model_t *g = NULL;
    const dsla_cuda_model_opts_t mo = {DSLA_DTYPE_F32,
                                       ec.step_tokens,
                                       MAX_RUNNING,
                                       MAX_RUNNING,
                                       mc->max_position_embeddings,
                                       true};
    harness_ok(dsla_cuda_model_create(&g, m, &mo, stream), "gpu model");
    scenario_t sc = {.dsla = dsla_cuda_model_dsla_supported(g)};
    uint64_t rng = 20240611;
    for (int i = 0; i < N_REQ; i++) {
        harness_random_request(&sc.req[i], &rng, mc->vocab_size, dsla_tokenizer_bos_id(tok), 40,
                               48);
        sc.req[i].max_tokens += 16;
    }
    const int hybrid_layers[] = {1, 3}, other_layers[] = {1};
    sc.hybrid = harness_plan(m, hybrid_layers, 2, 17);
    sc.other = harness_plan(m, other_layers, 1, 99); /* layer 1: another version */

    static harness_stream_t cpu[N_REQ], gpu[N_REQ];
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, m, tok, &ec), "cpu engine");
    run(e, &sc, cpu);
    dsla_engine_metrics_t cpu_met;
    dsla_engine_metrics(e, &cpu_met);
    dsla_engine_destroy(&e);

    dsla_serve_backend_t *be = NULL;
    const dsla_serve_cuda_opts_t bo = {DSLA_DTYPE_F32, KV_BLOCKS, MAX_RUNNING,
                                       mc->max_position_embeddings, 0};
    harness_ok(dsla_serve_backend_cuda_create(&be, g, &bo), "cuda backend");
    harness_ok(dsla_engine_create_on(&e, be, tok, &ec), "cuda engine");
    run(e, &sc, gpu);
    dsla_engine_metrics_t met;
    dsla_engine_metrics(e, &met);
    dsla_engine_destroy(&e);
    dsla_serve_backend_destroy(&be);

    /* One arena on both, fp32 blocks of the same shape: the same accounting, step for step. */
    assert_int_equal(met.blocks_per_slot, cpu_met.blocks_per_slot);
    assert_int_equal(met.kv_blocks_total, cpu_met.kv_blocks_total);
    assert_int_equal(met.peak_kv_blocks_used, cpu_met.peak_kv_blocks_used);
    assert_int_equal(met.peak_state_slots_used, cpu_met.peak_state_slots_used);
    assert_int_equal(met.kv_blocks_used, 0);
    assert_int_equal(met.state_slots_used, 0);
    int tokens = 0;
    for (int i = 0; i < N_REQ; i++) {
        if (!gpu[i].finished || gpu[i].status != DSLA_OK)
            fail_msg("request %d on the GPU: finished %d, status %s", i, gpu[i].finished,
                     dsla_status_name(gpu[i].status));
        harness_assert_same(&gpu[i], &cpu[i], i);
        assert_int_equal(gpu[i].usage.plan_id, cpu[i].usage.plan_id);
        tokens += gpu[i].n;
    }
    printf("engine on cuda == engine on cpu: %d requests, %d greedy tokens, plans %s, peak "
           "running %d, %llu steps, arena peaks %d KV blocks and %d slots of %d blocks\n",
           N_REQ, tokens, sc.dsla ? "1 -> 2 (layers 1,3) -> 3 (layer 1, other version)" : "1 only",
           met.peak_running, (unsigned long long)met.steps, met.peak_kv_blocks_used,
           met.peak_state_slots_used, met.blocks_per_slot);
    dsla_plan_release(&sc.hybrid);
    dsla_plan_release(&sc.other);
    dsla_cuda_model_destroy(&g);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&m);
    free(cfg_path);
}

int main(void) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return DSLA_TEST_SKIP;
    }
    if (dsla_cuda_stream_create(&stream) != DSLA_OK) {
        fprintf(stderr, "stream: %s\n", dsla_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_cuda_equals_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else

int main(void) {
    fprintf(stderr, "built without CUDA: skipped\n");
    return DSLA_TEST_SKIP;
}

#endif

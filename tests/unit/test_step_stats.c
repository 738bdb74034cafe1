/* Step accounting (runtime/serve/step_stats.h): the floor arithmetic on a hand-made step, and the
 * engine's per-step records on stories260K-hf (CPU): prefill tokens, decode sequences, KV bytes and
 * floor of known steps, under an all-attention plan and one with two DSLA layers, and totals in
 * the metrics that add up. */
#include "tests/unit/serve_harness.h"

#include <math.h>
#include <stdio.h>

static char *model_dir;
static dsla_model_t *model;

static int setup(void **state) {
    (void)state;
    model = harness_load_model(model_dir);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    dsla_model_destroy(&model);
    return 0;
}

static void assert_near(double got, double want, const char *what) {
    if (!(fabs(got - want) <= 1e-9 * fmax(1.0, fabs(want))))
        fail_msg("%s: %.17g, expected %.17g", what, got, want);
}

/* Llama-2-7B's shape, bf16: 128 decodes of 1K plus a 512-token prompt, by hand. */
static void test_floor_arithmetic(void **state) {
    (void)state;
    dsla_model_config_t c = {0};
    c.hidden_size = 4096, c.num_layers = 32, c.num_heads = 32, c.num_kv_heads = 32;
    c.head_dim = 128, c.intermediate_size = 11008, c.vocab_size = 32000;
    const dsla_step_costs_t k = dsla_step_costs_for(&c, 2, 2);
    assert_near(k.attn_layer_params, 4.0 * 4096 * 4096 + 3.0 * 4096 * 11008, "attention params");
    assert_near(k.dsla_layer_params, 6.0 * 4096 * 4096 + 3.0 * 4096 * 11008, "DSLA params");
    assert_near(k.kv_token_bytes, 2.0 * 4096 * 2, "KV bytes per token and layer");
    dsla_step_item_t items[129];
    for (int i = 0; i < 128; i++)
        items[i] = (dsla_step_item_t){1024, 1, 0, true};
    items[128] = (dsla_step_item_t){0, 512, 0, true};
    const dsla_step_rates_t rates = {4.2e12, 7.9e14};
    dsla_step_record_t r = {0};
    dsla_step_account(&r, &k, &rates, items, 129);
    assert_int_equal(r.decode_seqs, 128);
    assert_int_equal(r.prefill_items, 1);
    assert_int_equal(r.prefill_tokens, 512);
    assert_int_equal(r.logit_rows, 129);
    assert_int_equal(r.context_tokens, 128L * 1025 + 512);
    assert_near(r.kv_read_bytes, 32.0 * (128.0 * 1025 + 512) * 16384, "KV read");
    assert_near(r.kv_write_bytes, 32.0 * (128 + 512) * 16384, "KV written");
    const double weights = 2.0 * (32 * k.attn_layer_params + k.lm_head_params);
    assert_near(r.weight_bytes, weights, "weights");
    const double flops = 2.0 * 640 * 32 * k.attn_layer_params + 2.0 * 129 * k.lm_head_params +
                         4.0 * 4096 * 32 * (128.0 * 1025 + 512.0 * 513 / 2);
    assert_near(r.flops, flops, "FLOPs");
    const double bytes = r.kv_read_bytes + r.kv_write_bytes + weights;
    assert_near(r.floor_s, fmax(bytes / rates.copy_bytes_per_s, flops / rates.matrix_flops_per_s),
                "floor");
    /* ~74 GB at 4.2 TB/s: about 18 ms, bandwidth-bound */
    if (!(r.floor_s > 0.015 && r.floor_s < 0.02)) fail_msg("floor %.4f s", r.floor_s);
    const dsla_step_rates_t none = {0, 0};
    dsla_step_account(&r, &k, &none, items, 129);
    assert_true(r.floor_s == 0.0);
}

typedef struct {
    int tokens;
} count_t;

static int count_event(void *user, const dsla_stream_event_t *ev) {
    if (ev->token >= 0) ((count_t *)user)->tokens++;
    return 0;
}

/* Two requests (20 and 5 prompt tokens) under chunks of 16: step 1 prefills 16 + 5 tokens and
 * samples B; step 2 decodes B first, then A's last 4 prompt tokens. */
static void check_engine_steps(int n_dsla) {
    const dsla_model_config_t *c = dsla_model_config(model);
    dsla_engine_config_t cfg = dsla_engine_config_default();
    cfg.max_running = 4;
    cfg.step_tokens = 64;
    cfg.prefill_chunk = 16;
    cfg.step_rates = (dsla_step_rates_t){1e9, 1e11};
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, NULL, &cfg), "engine");
    static const int layers[] = {1, 3};
    dsla_plan_t *plan = n_dsla ? harness_plan(model, layers, n_dsla, 5) : NULL;
    if (plan) harness_ok(dsla_engine_set_plan(e, plan), "set plan");
    dsla_step_record_t r;
    assert_false(dsla_engine_last_step(e, &r));
    int32_t ids[20];
    for (int i = 0; i < 20; i++)
        ids[i] = (int32_t)(1 + i * 7 % (c->vocab_size - 1));
    count_t got[2] = {{0}, {0}};
    const int prompt[2] = {20, 5};
    for (int i = 0; i < 2; i++) {
        const dsla_request_params_t p = {.prompt_ids = ids,
                                         .n_prompt_ids = prompt[i],
                                         .max_tokens = 3,
                                         .ignore_eos = true,
                                         .on_event = count_event,
                                         .user = &got[i]};
        harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
    }
    const double kvt = 2.0 * c->num_kv_heads * c->head_dim * sizeof(float);
    const double state = 2.0 * c->num_heads * c->head_dim * c->head_dim * sizeof(float);
    const int attn = c->num_layers - n_dsla;

    harness_ok(dsla_engine_step(e, NULL), "step 1");
    assert_true(dsla_engine_last_step(e, &r));
    assert_int_equal(r.step, 1);
    assert_int_equal(r.items, 2);
    assert_int_equal(r.prefill_items, 2);
    assert_int_equal(r.prefill_tokens, 21);
    assert_int_equal(r.decode_seqs, 0);
    assert_int_equal(r.logit_rows, 1);
    assert_near(r.kv_read_bytes, (double)attn * 21 * kvt, "step 1 KV read");
    assert_near(r.kv_write_bytes, (double)attn * 21 * kvt, "step 1 KV written");
    assert_near(r.state_bytes, 2.0 * 2 * n_dsla * state, "step 1 states");
    assert_true(r.floor_s > 0);
    assert_near(r.floor_s, fmax(r.bytes / 1e9, r.flops / 1e11), "step 1 floor");
    assert_false(r.device_measured);
    double sum = 0;
    for (int p = 0; p < DSLA_STEP_PHASES; p++)
        sum += r.phase_s[p];
    assert_near(sum, r.step_s, "phases add up to the step");
    assert_int_equal(got[1].tokens, 1);

    harness_ok(dsla_engine_step(e, NULL), "step 2");
    assert_true(dsla_engine_last_step(e, &r));
    assert_int_equal(r.step, 2);
    assert_int_equal(r.decode_seqs, 1);
    assert_int_equal(r.prefill_items, 1);
    assert_int_equal(r.prefill_tokens, 4);
    assert_int_equal(r.logit_rows, 2);
    assert_int_equal(r.context_tokens, 6 + 20);
    assert_near(r.kv_read_bytes, (double)attn * 26 * kvt, "step 2 KV read");
    assert_near(r.kv_write_bytes, (double)attn * 5 * kvt, "step 2 KV written");

    harness_drain(e, 1000);
    dsla_engine_metrics_t m;
    dsla_engine_metrics(e, &m);
    assert_int_equal(got[0].tokens, 3);
    assert_int_equal(got[1].tokens, 3);
    assert_int_equal(m.step_totals.steps, m.steps);
    assert_int_equal(m.step_totals.prefill_tokens, 25);
    /* every generated token but the first of each request came from a decode */
    assert_int_equal(m.step_totals.decode_tokens, 4);
    assert_int_equal(m.step_time.count, m.steps);
    assert_true(m.step_totals.floor_seconds > 0);
    dsla_engine_destroy(&e);
    dsla_plan_release(&plan);
}

static void test_engine_steps_attention(void **state) {
    (void)state;
    check_engine_steps(0);
}

static void test_engine_steps_dsla(void **state) {
    (void)state;
    check_engine_steps(2);
}

int main(void) {
    model_dir = dsla_test_data_or_skip("models/stories260K-hf/config.json");
    *strrchr(model_dir, '/') = '\0';
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_floor_arithmetic),
        cmocka_unit_test(test_engine_steps_attention),
        cmocka_unit_test(test_engine_steps_dsla),
    };
    const int rc = cmocka_run_group_tests(tests, setup, teardown);
    free(model_dir);
    return rc;
}

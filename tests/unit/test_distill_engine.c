/* The distillation engine's pieces on stories260K: the entropy order, held-out NLL, parameter
 * checks, the gate cosine term, that a short run lowers the held-out layer loss, that
 * should_stop stops a run within a step, the extend_train hook (nothing appended: the same
 * versions bit for bit; sequences appended: other versions; a pool changed: refused), and the
 * measured order (probe costs equal to single-layer runs, sorted, kept on resume). */
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/distill/distill.h"

typedef struct {
    dsla_model_t *model;
    dsla_tokenizer_t *tok;
    dsla_corpus_t train, eval;
    char *dir;
} fixture_t;

static int setup(void **state) {
    fixture_t *f = calloc(1, sizeof *f);
    char *model = dsla_test_data_path("models/stories260K-hf");
    char *text = dsla_test_data_path("data/tinystories_train_sample.txt");
    if (!model || !text) {
        free(model);
        free(text);
        free(f);
        *state = NULL;
        return 0;
    }
    assert_int_equal(dsla_model_load(&f->model, model), DSLA_OK);
    assert_int_equal(dsla_tokenizer_load_dir(&f->tok, model), DSLA_OK);
    const char *files[] = {text};
    assert_int_equal(dsla_corpus_load(&f->train, f->tok, files, 1, 64, 40), DSLA_OK);
    assert_int_equal(dsla_corpus_split(&f->train, &f->eval, 8), DSLA_OK);
    f->dir = dsla_test_tempdir();
    free(model);
    free(text);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture_t *f = *state;
    if (!f) return 0;
    dsla_corpus_free(&f->train);
    dsla_corpus_free(&f->eval);
    dsla_tokenizer_destroy(&f->tok);
    dsla_model_destroy(&f->model);
    dsla_test_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

#define FIXTURE_OR_SKIP(state)                                                                     \
    fixture_t *f = *(state);                                                                       \
    if (!f) skip()

static void test_entropy_order_is_an_ascending_permutation(void **state) {
    FIXTURE_OR_SKIP(state);
    float entropy[5];
    int order[5];
    assert_int_equal(dsla_distill_entropy_order(f->model, &f->train, 8, entropy, order), DSLA_OK);
    bool seen[5] = {false};
    for (int i = 0; i < 5; i++) {
        assert_true(order[i] >= 0 && order[i] < 5 && !seen[order[i]]);
        seen[order[i]] = true;
        assert_true(entropy[i] >= 0.0f && entropy[i] <= logf(64.0f) + 1e-4f);
        if (i) assert_true(entropy[order[i - 1]] <= entropy[order[i]]);
    }
}

static void test_eval_nll_matches_the_forward_pass(void **state) {
    FIXTURE_OR_SKIP(state);
    double nll = 0;
    assert_int_equal(dsla_distill_eval_nll(f->model, NULL, &f->eval, &nll), DSLA_OK);
    /* stories260K on TinyStories: around 1.5 nats per token (perplexity ~4.5). */
    assert_true(nll > 1.0 && nll < 2.5);
    /* One sequence by hand. */
    dsla_corpus_t one = f->eval;
    one.num_sequences = 1;
    double nll_one = 0;
    assert_int_equal(dsla_distill_eval_nll(f->model, NULL, &one, &nll_one), DSLA_OK);
    const dsla_model_config_t *cfg = dsla_model_config(f->model);
    dsla_kv_pool_t *pool = NULL;
    dsla_sequence_t *seq = NULL;
    assert_int_equal(dsla_kv_pool_create(&pool, cfg, 64), DSLA_OK);
    assert_int_equal(dsla_sequence_create(&seq, pool, cfg), DSLA_OK);
    float *logits = malloc(sizeof(float) * 64 * 512);
    const int32_t *tokens = dsla_corpus_sequence(&one, 0);
    dsla_batch_item_t item = {seq, tokens, 64, true};
    assert_int_equal(dsla_model_forward(f->model, &item, 1, logits), DSLA_OK);
    double total = 0;
    for (int t = 0; t < 63; t++) {
        const float *row = logits + (size_t)t * 512;
        double m = row[0], sum = 0;
        for (int j = 1; j < 512; j++)
            m = row[j] > m ? row[j] : m;
        for (int j = 0; j < 512; j++)
            sum += exp(row[j] - m);
        total += log(sum) + m - row[tokens[t + 1]];
    }
    assert_true(fabs(total / 63 - nll_one) < 1e-6);
    free(logits);
    dsla_sequence_destroy(&seq);
    dsla_kv_pool_destroy(&pool);
}

static void test_bad_parameters_are_named(void **state) {
    FIXTURE_OR_SKIP(state);
    dsla_distill_params_t p = dsla_distill_params_default();
    dsla_distill_report_t *r = calloc(1, sizeof *r);
    p.layers = 9;
    assert_int_equal(dsla_distill_run(f->model, &f->train, &f->eval, &p, f->dir, NULL, r),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "layers 9"));
    p = dsla_distill_params_default();
    p.order_mode = DSLA_ORDER_GIVEN;
    p.n_given_order = 5;
    memcpy(p.given_order, (int[]){0, 1, 1, 2, 3}, sizeof(int) * 5);
    assert_int_equal(dsla_distill_run(f->model, &f->train, &f->eval, &p, f->dir, NULL, r),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "repeated"));
    p = dsla_distill_params_default();
    p.order_mode = DSLA_ORDER_MEASURED;
    p.steps = 0;
    assert_int_equal(dsla_distill_run(f->model, &f->train, &f->eval, &p, f->dir, NULL, r),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "measured order"));
    p.steps = 10;
    p.probe_steps = 0;
    assert_int_equal(dsla_distill_run(f->model, &f->train, &f->eval, &p, f->dir, NULL, r),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "probe_steps 0"));
    free(r);
}

/* A run of the first n layers of the given order (2, 0), steps of batch, without checkpoints. */
static dsla_distill_params_t given_order_params(int n, int steps, int batch) {
    dsla_distill_params_t p = dsla_distill_params_default();
    p.layers = n;
    p.steps = steps;
    p.batch = batch;
    p.order_mode = DSLA_ORDER_GIVEN;
    p.n_given_order = 2;
    p.given_order[0] = 2;
    p.given_order[1] = 0;
    p.checkpoint_every = 0;
    p.optim = dsla_adamw_params_default(p.steps);
    return p;
}

/* Runs one layer of the given order for a few steps and returns the report's first entry. */
static dsla_distill_layer_report_t short_run(fixture_t *f, double gate_cosine, const char *sub,
                                             uint64_t *checksum) {
    dsla_distill_params_t p = given_order_params(1, 30, 4);
    p.gate_cosine_weight = gate_cosine;
    char out[1024];
    snprintf(out, sizeof out, "%s/%s", f->dir, sub);
    dsla_distill_report_t *r = calloc(1, sizeof *r);
    assert_int_equal(dsla_distill_run(f->model, &f->train, &f->eval, &p, out, NULL, r), DSLA_OK);
    assert_int_equal(r->n_converted, 1);
    assert_int_equal(r->converted[0].layer, 2);
    dsla_distill_layer_report_t c = r->converted[0];
    free(r);
    char path[1100];
    snprintf(path, sizeof path, "%s/layer-2.safetensors", out);
    dsla_dsla_layer_t *l = NULL;
    assert_int_equal(dsla_dsla_layer_load(&l, path, dsla_model_config(f->model), NULL), DSLA_OK);
    *checksum = dsla_dsla_layer_checksum(l);
    dsla_dsla_layer_destroy(&l);
    /* The model is handed back with no DSLA layer installed. */
    assert_null(dsla_model_dsla_layer(f->model, 2));
    return c;
}

static void test_short_run_lowers_loss_and_gate_cosine_changes_training(void **state) {
    FIXTURE_OR_SKIP(state);
    uint64_t plain_sum, cosine_sum;
    dsla_distill_layer_report_t plain = short_run(f, 0.0, "plain", &plain_sum);
    assert_true(plain.eval_mse < plain.init_eval_mse / 5);
    assert_true(isfinite(plain.eval_ppl));
    dsla_distill_layer_report_t cosine = short_run(f, 0.5, "cosine", &cosine_sum);
    assert_true(cosine.eval_mse < cosine.init_eval_mse / 5);
    assert_true(plain_sum != cosine_sum);
}

/* should_stop: counts the steps it was asked about and says stop at the third. */
static bool stop_at_third_step(void *user) {
    return ++*(int *)user == 3;
}

static void test_should_stop_cancels_within_a_step(void **state) {
    FIXTURE_OR_SKIP(state);
    dsla_distill_params_t p = dsla_distill_params_default();
    p.order_mode = DSLA_ORDER_ENTROPY; /* no probes: the third step asked is a training step */
    p.layers = 1;
    p.steps = 10;
    p.batch = 2;
    p.checkpoint_every = 0;
    p.optim = dsla_adamw_params_default(p.steps);
    int asked = 0;
    const dsla_distill_callbacks_t cb = {NULL, NULL, &asked, stop_at_third_step, NULL, NULL};
    char out[1024];
    snprintf(out, sizeof out, "%s/stopped", f->dir);
    dsla_distill_report_t *r = calloc(1, sizeof *r);
    assert_int_equal(dsla_distill_run(f->model, &f->train, &f->eval, &p, out, &cb, r),
                     DSLA_ERR_CANCELLED);
    assert_int_equal(asked, 3);
    assert_int_equal(r->n_converted, 0);
    assert_non_null(strstr(dsla_last_error(), "step 3 of 10"));
    for (int l = 0; l < 5; l++) /* handed back clean, no version written */
        assert_null(dsla_model_dsla_layer(f->model, l));
    char path[1100];
    snprintf(path, sizeof path, "%s/layer-%d.safetensors", out, r->order[0]);
    assert_int_equal(access(path, F_OK), -1);
    free(r);
}

/* What the extend_train hook below saw and appends. */
typedef struct {
    int calls, k[4], layer[4];
    int append;     /* sequences to append, copies of the pool's last with shifted ids */
    bool overwrite; /* change the pool instead */
} hook_t;

static dsla_status_t hook_extend(void *user, int k, int layer, dsla_corpus_t *pool) {
    hook_t *h = user;
    h->k[h->calls] = k;
    h->layer[h->calls++] = layer;
    if (h->overwrite) {
        pool->tokens[1] ^= 1;
        return DSLA_OK;
    }
    const int T = pool->seq_len;
    int32_t *stream = malloc((size_t)h->append * (size_t)(T - 1) * sizeof *stream);
    for (int i = 0; i < h->append * (T - 1); i++)
        stream[i] = 3 + (int32_t)(i * 7 % 500);
    int added = -1;
    dsla_status_t st = dsla_corpus_pack(pool, stream, (size_t)h->append * (size_t)(T - 1), 1,
                                        &added); /* stories260K's BOS */
    assert_int_equal(added, h->append);
    free(stream);
    return st;
}

/* Two layers (given order 2, 0) of three steps into f->dir/sub, with the hook when h is set;
 * returns the run's status and the two versions' checksums. */
static dsla_status_t hooked_run(fixture_t *f, hook_t *h, const char *sub, uint64_t sums[2]) {
    const dsla_distill_params_t p = given_order_params(2, 3, 2);
    const dsla_distill_callbacks_t cb = {NULL, NULL, h, NULL, hook_extend, NULL};
    char out[1024];
    snprintf(out, sizeof out, "%s/%s", f->dir, sub);
    dsla_distill_report_t *r = calloc(1, sizeof *r);
    dsla_status_t st = dsla_distill_run(f->model, &f->train, &f->eval, &p, out, h ? &cb : NULL, r);
    free(r);
    for (int i = 0; i < 2 && st == DSLA_OK; i++) {
        char path[1100];
        snprintf(path, sizeof path, "%s/layer-%d.safetensors", out, p.given_order[i]);
        dsla_dsla_layer_t *l = NULL;
        assert_int_equal(dsla_dsla_layer_load(&l, path, dsla_model_config(f->model), NULL),
                         DSLA_OK);
        sums[i] = dsla_dsla_layer_checksum(l);
        dsla_dsla_layer_destroy(&l);
    }
    return st;
}

static void test_extend_train_hook(void **state) {
    FIXTURE_OR_SKIP(state);
    uint64_t plain[2], none[2], more[2];
    assert_int_equal(hooked_run(f, NULL, "hook-plain", plain), DSLA_OK);
    hook_t h = {0};
    assert_int_equal(hooked_run(f, &h, "hook-none", none), DSLA_OK);
    assert_int_equal(h.calls, 2); /* before each trained layer, in the order */
    assert_int_equal(h.k[0], 0);
    assert_int_equal(h.layer[0], 2);
    assert_int_equal(h.k[1], 1);
    assert_int_equal(h.layer[1], 0);
    assert_memory_equal(plain, none, sizeof plain); /* nothing appended: bit-identical */
    h = (hook_t){.append = 16};
    assert_int_equal(hooked_run(f, &h, "hook-more", more), DSLA_OK);
    assert_int_equal(h.calls, 2);
    assert_true(more[0] != plain[0] && more[1] != plain[1]);
    h = (hook_t){.append = 16};
    assert_int_equal(hooked_run(f, &h, "hook-more", more), DSLA_OK);
    assert_int_equal(h.calls, 0); /* both versions kept: no layer trained, nothing asked */
    h = (hook_t){.overwrite = true};
    assert_int_equal(hooked_run(f, &h, "hook-overwrite", more), DSLA_ERR_INTERNAL);
    assert_non_null(strstr(dsla_last_error(), "instead of appending"));
    for (int l = 0; l < 5; l++)
        assert_null(dsla_model_dsla_layer(f->model, l));
}

/* What the probe callback saw. */
typedef struct {
    int calls, layer[8];
    double ppl[8];
} probes_seen_t;

static void count_probe(void *user, int layer, double ppl) {
    probes_seen_t *s = user;
    s->layer[s->calls] = layer;
    s->ppl[s->calls++] = ppl;
}

/* The measured order's run: probes of 10 steps, then the first n layers of the order for 10 steps
 * (so a probe's schedule equals a 10-step run's), into f->dir/sub. */
static dsla_status_t measured_run(fixture_t *f, int n, int probe_steps, const char *sub,
                                  probes_seen_t *seen, dsla_distill_report_t *r) {
    dsla_distill_params_t p = dsla_distill_params_default();
    p.order_mode = DSLA_ORDER_MEASURED;
    p.probe_steps = probe_steps;
    p.layers = n;
    p.steps = 10;
    p.batch = 2;
    p.checkpoint_every = 0;
    p.optim = dsla_adamw_params_default(p.steps);
    const dsla_distill_callbacks_t cb = {NULL, NULL, seen, NULL, NULL, count_probe};
    char out[1024];
    snprintf(out, sizeof out, "%s/%s", f->dir, sub);
    return dsla_distill_run(f->model, &f->train, &f->eval, &p, out, &cb, r);
}

/* The perplexity cost of one layer computed through the public API, as the measured order's probe
 * defines it: a run that converts only that layer (given order, teacher inputs) for 10 steps. */
static double one_layer_ppl(fixture_t *f, int layer) {
    dsla_distill_params_t p = given_order_params(1, 10, 2);
    p.n_given_order = 1;
    p.given_order[0] = layer;
    char out[1024];
    snprintf(out, sizeof out, "%s/alone-%d", f->dir, layer);
    dsla_distill_report_t *r = calloc(1, sizeof *r);
    assert_int_equal(dsla_distill_run(f->model, &f->train, &f->eval, &p, out, NULL, r), DSLA_OK);
    assert_int_equal(r->converted[0].layer, layer);
    const double ppl = r->converted[0].eval_ppl;
    free(r);
    return ppl;
}

static void test_measured_order_sorts_probe_costs(void **state) {
    FIXTURE_OR_SKIP(state);
    dsla_distill_report_t *r = calloc(1, sizeof *r);
    probes_seen_t seen = {0};
    assert_int_equal(measured_run(f, 2, 10, "measured", &seen, r), DSLA_OK);
    assert_int_equal(r->probe_steps, 10);
    assert_false(r->probes_resumed);
    assert_true(r->probe_seconds > 0.0);
    assert_int_equal(seen.calls, 5); /* every layer probed, in layer order, reported as measured */
    bool in_order[5] = {false};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(seen.layer[i], i);
        assert_true(seen.ppl[i] == r->probe_ppl[i]);
        assert_true(isfinite(r->probe_ppl[i]) && r->probe_ppl[i] > r->teacher_ppl);
        const int l = r->order[i];
        assert_true(l >= 0 && l < 5 && !in_order[l]); /* a permutation */
        in_order[l] = true;
        if (i) assert_true(r->probe_ppl[r->order[i - 1]] <= r->probe_ppl[l]); /* ascending */
    }
    /* The probes are layers trained alone: the first of the order and the most costly one, each
     * converted alone by a run of its own, cost what the probe said. */
    for (int i = 0; i < 5; i += 4) {
        const int l = r->order[i];
        const double alone = one_layer_ppl(f, l);
        assert_true(fabs(alone - r->probe_ppl[l]) <= 1e-9 * alone);
    }
    /* Chaining follows the order: the first conversion is the cheapest layer, and converting it
     * alone costs what its probe did (same steps, same inputs). */
    assert_int_equal(r->n_converted, 2);
    assert_int_equal(r->converted[0].layer, r->order[0]);
    assert_int_equal(r->converted[1].layer, r->order[1]);
    assert_true(fabs(r->converted[0].eval_ppl - r->probe_ppl[r->order[0]]) <=
                1e-9 * r->converted[0].eval_ppl);
    for (int l = 0; l < 5; l++)
        assert_null(dsla_model_dsla_layer(f->model, l));

    /* Resumed with a layer more: the stored order and probes, nothing probed again. */
    dsla_distill_report_t *again = calloc(1, sizeof *again);
    probes_seen_t seen_again = {0};
    assert_int_equal(measured_run(f, 3, 10, "measured", &seen_again, again), DSLA_OK);
    assert_int_equal(seen_again.calls, 0);
    assert_true(again->probes_resumed);
    assert_true(again->probe_seconds == 0.0);
    assert_memory_equal(again->order, r->order, sizeof(int) * 5);
    assert_memory_equal(again->probe_ppl, r->probe_ppl, sizeof(double) * 5);
    assert_true(again->converted[0].resumed_from_file && again->converted[1].resumed_from_file);
    assert_false(again->converted[2].resumed_from_file);
    assert_int_equal(again->converted[2].layer, r->order[2]);

    /* Probes of another length are not this run's: refused, not silently reordered. */
    assert_int_equal(measured_run(f, 3, 11, "measured", &seen_again, again), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "probe_steps 10"));
    free(again);
    free(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_should_stop_cancels_within_a_step),
        cmocka_unit_test(test_extend_train_hook),
        cmocka_unit_test(test_entropy_order_is_an_ascending_permutation),
        cmocka_unit_test(test_eval_nll_matches_the_forward_pass),
        cmocka_unit_test(test_bad_parameters_are_named),
        cmocka_unit_test(test_short_run_lowers_loss_and_gate_cosine_changes_training),
        cmocka_unit_test(test_measured_order_sorts_probe_costs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

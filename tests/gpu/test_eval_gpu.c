/* dsla eval on a GPU against the CPU (runtime/distill/plan_eval.c over both distill backends),
 * tinystories-11M-hf, 16 held-out sequences of 128 tokens:
 * - the teacher and a plan of two teacher-initialised layers (a --steps 0 distill output, loaded
 *   as --plan 2 loads it): fp32 on the GPU within 0.1% of the CPU's perplexity, bf16 within 3%;
 * - the plan changes the number (the layers reach the GPU's forward), and `dsla eval --device cuda
 *   --dtype f32 --json` prints what the library computes.
 * Exits 77 without a CUDA device or the shared models. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "kernels/kernels.h"
#include "runtime/distill/distill.h"
#include "runtime/model/llama.h"
#include "runtime/model/tokenizer.h"

#ifdef DSLA_HAVE_CUDA

#define F32_TOL 1e-3
#define BF16_TOL 0.03

enum { SEQ_LEN = 128, EVAL_SEQS = 16, PLAN_K = 2 };

typedef struct {
    dsla_model_t *model;
    dsla_corpus_t eval;
    char *model_dir, *eval_file, *dir;
    dsla_dsla_layer_t *plan[DSLA_LAYER_ORDER_MAX];
    dsla_dsla_layer_t *teacher[DSLA_LAYER_ORDER_MAX]; /* all NULL */
    int L;
} fixture_t;

static fixture_t fx;

static double rel(double a, double b) {
    return fabs(a - b) / fabs(b);
}

static dsla_distill_eval_t score(dsla_distill_backend_t *be, dsla_dsla_layer_t *const *layers,
                                 const char *what) {
    dsla_distill_eval_t e = {0};
    dsla_status_t st = dsla_distill_eval_plan(be, layers, fx.L, &fx.eval, &e);
    if (st != DSLA_OK) fail_msg("%s: %s: %s", what, dsla_status_name(st), dsla_last_error());
    fprintf(stderr, "%s: ppl %.5f (nll %.6f over %ld tokens)\n", what, e.ppl, e.nll, e.tokens);
    assert_int_equal(e.tokens, (long)EVAL_SEQS * (SEQ_LEN - 1));
    return e;
}

static void test_gpu_agrees_with_cpu(void **state) {
    (void)state;
    dsla_distill_backend_t *be = NULL;
    assert_int_equal(dsla_distill_backend_cpu_create(&be, fx.model), DSLA_OK);
    const dsla_distill_eval_t cpu_t = score(be, fx.teacher, "cpu teacher");
    const dsla_distill_eval_t cpu_p = score(be, fx.plan, "cpu plan 2");
    dsla_distill_backend_destroy(&be);
    assert_true(rel(cpu_p.ppl, cpu_t.ppl) > 0.01); /* the plan is another model */

    const dsla_distill_cuda_opts_t opts[2] = {{0, DSLA_DTYPE_F32}, {0, DSLA_DTYPE_BF16}};
    const double tol[2] = {F32_TOL, BF16_TOL};
    const char *names[2] = {"f32", "bf16"};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(dsla_distill_backend_cuda_create(&be, fx.model, &opts[i]), DSLA_OK);
        char what[64];
        snprintf(what, sizeof what, "gpu %s teacher", names[i]);
        const dsla_distill_eval_t gt = score(be, fx.teacher, what);
        snprintf(what, sizeof what, "gpu %s plan 2", names[i]);
        const dsla_distill_eval_t gp = score(be, fx.plan, what);
        /* Installed for the call only: the teacher again gives the teacher's number. */
        snprintf(what, sizeof what, "gpu %s teacher again", names[i]);
        const dsla_distill_eval_t gt2 = score(be, fx.teacher, what);
        dsla_distill_backend_destroy(&be);
        fprintf(stderr, "%s: teacher %.2e, plan %.2e relative difference from the CPU\n", names[i],
                rel(gt.ppl, cpu_t.ppl), rel(gp.ppl, cpu_p.ppl));
        assert_true(rel(gt.ppl, cpu_t.ppl) < tol[i]);
        assert_true(rel(gp.ppl, cpu_p.ppl) < tol[i]);
        assert_true(rel(gt2.ppl, gt.ppl) < 1e-6);
    }
}

static void test_cli_on_the_gpu(void **state) {
    (void)state;
    dsla_distill_backend_t *be = NULL;
    assert_int_equal(dsla_distill_backend_cpu_create(&be, fx.model), DSLA_OK);
    const dsla_distill_eval_t cpu_p = score(be, fx.plan, "cpu plan 2");
    dsla_distill_backend_destroy(&be);
    const char *bin = getenv("DSLA_BIN");
    if (!bin) bin = "build/bin";
    char cmd[8192], out_path[1024];
    snprintf(out_path, sizeof out_path, "%s/eval.json", fx.dir);
    snprintf(cmd, sizeof cmd,
             "%s/dsla eval --model '%s' --data '%s' --seq-len %d --max-sequences %d --layers "
             "'%s/out' --plan %d --device cuda --dtype f32 --json >'%s'",
             bin, fx.model_dir, fx.eval_file, SEQ_LEN, EVAL_SEQS, fx.dir, PLAN_K, out_path);
    int status = system(cmd);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail_msg("%s: status %d", cmd, status);
    json_t *root = dsla_test_load_json(out_path);
    const double ppl = json_real_value(json_object_get(root, "ppl"));
    fprintf(stderr, "dsla eval --device cuda --dtype f32: ppl %.5f (cpu %.5f)\n", ppl, cpu_p.ppl);
    assert_string_equal(json_string_value(json_object_get(root, "device")), "cuda-f32");
    assert_true(rel(ppl, cpu_p.ppl) < F32_TOL);
    json_decref(root);
}

int main(void) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return DSLA_TEST_SKIP;
    }
    fx.model_dir = dsla_test_data_or_skip("models/tinystories-11M-hf");
    fx.eval_file = dsla_test_data_or_skip("data/tinystories_valid.txt");
    fx.dir = dsla_test_tempdir();
    dsla_tokenizer_t *tok = NULL;
    const char *eval_files[1] = {fx.eval_file};
    char out[1024];
    snprintf(out, sizeof out, "%s/out", fx.dir);
    /* Teacher-initialised versions of layers 3 and 1 (dsla distill --steps 0 --order given). */
    dsla_distill_params_t p = dsla_distill_params_default();
    p.steps = 0;
    p.layers = PLAN_K;
    p.order_mode = DSLA_ORDER_GIVEN;
    p.given_order[0] = 3;
    p.given_order[1] = 1;
    p.n_given_order = 2;
    static dsla_distill_report_t report;
    int n_loaded = 0;
    if (dsla_model_load(&fx.model, fx.model_dir) != DSLA_OK ||
        dsla_tokenizer_load_dir(&tok, fx.model_dir) != DSLA_OK ||
        dsla_corpus_load(&fx.eval, tok, eval_files, 1, SEQ_LEN, EVAL_SEQS) != DSLA_OK ||
        dsla_distill_run(fx.model, NULL, NULL, &p, out, NULL, &report) != DSLA_OK ||
        dsla_distill_load_plan(fx.model, out, PLAN_K, NULL, 0, fx.plan, &n_loaded) != DSLA_OK) {
        fprintf(stderr, "setting up tinystories-11M-hf, its data and layers: %s\n",
                dsla_last_error());
        return 1;
    }
    fx.L = dsla_model_config(fx.model)->num_layers;
    if (n_loaded != PLAN_K || !fx.plan[3] || !fx.plan[1]) {
        fprintf(stderr, "--plan %d loaded %d layers\n", PLAN_K, n_loaded);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_agrees_with_cpu),
        cmocka_unit_test(test_cli_on_the_gpu),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dsla_distill_plan_free(fx.plan, fx.L);
    dsla_corpus_free(&fx.eval);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&fx.model);
    dsla_test_rmtree(fx.dir);
    free(fx.model_dir), free(fx.eval_file), free(fx.dir);
    return rc;
}

#else

int main(void) {
    return 77; /* built without CUDA: nothing to test */
}

#endif

/* Chained distillation on the GPU (runtime/distill/distill_cuda.c) against the CPU engine:
 * - tinystories-11M-hf, 2 layers chained in entropy order, the same seed, steps, batches and data
 * on both: with fp32 on the GPU every converted layer's held-out loss is within 2% of the CPU's and
 *   the hybrid's perplexity within 1% (the teacher's within 0.1%, the teacher-initialised layers'
 *   losses within 0.1%: the captures agree before any training);
 * - the GPU run stopped mid-layer (should_stop, as a SIGKILL leaves it: the first version written,
 *   a checkpoint of the second) and started again keeps the first version and resumes the second
 *   from its checkpoint to within 0.1% of the uninterrupted run's numbers;
 * - --dtype bf16 (bf16 teacher, TF32 training) converges too: each layer's loss falls 10x;
 * - the logit KL term (--kl-weight 0.5) on the GPU against the CPU, layers 3 then 1 (so that the
 *   second layer's tail runs through a DSLA layer as well as attention): the same bounds on the
 *   held-out losses and perplexities, the training KL within 2%, and the term visibly changing the
 *   result (each layer's held-out loss differs from the run without it by more than the bound);
 * - stories260K-hf (head dim 8) is refused with UNSUPPORTED, naming the head dim.
 * Exits 77 without a CUDA device or the shared models. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/kernels.h"
#include "runtime/distill/distill.h"
#include "runtime/model/llama.h"
#include "runtime/model/tokenizer.h"

#ifdef DSLA_HAVE_CUDA

/* The acceptance bounds (issue 12): fp32 on both sides, so what differs is summation order
 * (cuBLAS and the GPU's DSLA kernels against OpenBLAS), amplified by training. */
#define LAYER_LOSS_TOL 0.02
#define PPL_TOL 0.01
/* Before training the two sides compute the same forward passes. */
#define CAPTURE_TOL 1e-3

enum { LAYERS = 2, STEPS = 60, SEQ_LEN = 128, BATCH = 4, TRAIN_SEQS = 48, EVAL_SEQS = 8 };
/* The logit term's steps: each costs the CPU a forward and backward of every later layer. */
enum { KL_STEPS = 40 };

typedef struct {
    dsla_model_t *model;
    dsla_corpus_t train, eval;
} fixture_t;

static fixture_t fx;

static dsla_distill_params_t params(void) {
    dsla_distill_params_t p = dsla_distill_params_default();
    p.order_mode = DSLA_ORDER_ENTROPY; /* the GPU against the CPU on one order, no probes */
    p.layers = LAYERS;
    p.steps = STEPS;
    p.batch = BATCH;
    p.seed = 7;
    p.checkpoint_every = 10;
    p.optim = dsla_adamw_params_default(p.steps);
    return p;
}

static void run(dsla_distill_backend_t *be, const char *out, const dsla_distill_params_t *p,
                const dsla_distill_callbacks_t *cb, dsla_distill_report_t *rep,
                dsla_status_t want) {
    dsla_status_t st = dsla_distill_run_on(be, fx.model, &fx.train, &fx.eval, p, out, cb, rep);
    if (st != want)
        fail_msg("dsla_distill_run_on on %s: %s: %s", out, dsla_status_name(st), dsla_last_error());
}

static double rel(double a, double b) {
    return fabs(a - b) / fabs(b);
}

static void print_report(const char *what, const dsla_distill_report_t *r) {
    fprintf(stderr, "%s: teacher ppl %.4f\n", what, r->teacher_ppl);
    for (int k = 0; k < r->n_converted; k++) {
        const dsla_distill_layer_report_t *c = &r->converted[k];
        fprintf(stderr, "  k %d layer %d: eval mse %.5f -> %.5f, hybrid ppl %.4f, %.1f s\n", k + 1,
                c->layer, c->init_eval_mse, c->eval_mse, c->eval_ppl, c->seconds);
    }
}

typedef struct {
    int layer; /* stop once this layer has reached stop_step */
    int steps_seen;
    int stop_after;
} stopper_t;

static void count_step(void *user, const dsla_distill_progress_t *p) {
    stopper_t *s = user;
    if (p->k == 1) s->steps_seen = p->step;
}

static bool stop_now(void *user) {
    const stopper_t *s = user;
    return s->steps_seen >= s->stop_after;
}

static void test_gpu_matches_cpu_f32_and_resumes(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char cpu_out[512], gpu_out[512], resumed_out[512];
    snprintf(cpu_out, sizeof cpu_out, "%s/cpu", dir);
    snprintf(gpu_out, sizeof gpu_out, "%s/gpu", dir);
    snprintf(resumed_out, sizeof resumed_out, "%s/resumed", dir);
    const dsla_distill_params_t p = params();
    static dsla_distill_report_t cpu, gpu, resumed;

    dsla_distill_backend_t *be = NULL;
    assert_int_equal(dsla_distill_backend_cpu_create(&be, fx.model), DSLA_OK);
    run(be, cpu_out, &p, NULL, &cpu, DSLA_OK);
    dsla_distill_backend_destroy(&be);
    print_report("cpu", &cpu);

    const dsla_distill_cuda_opts_t f32 = {0, DSLA_DTYPE_F32};
    assert_int_equal(dsla_distill_backend_cuda_create(&be, fx.model, &f32), DSLA_OK);
    run(be, gpu_out, &p, NULL, &gpu, DSLA_OK);
    print_report("gpu f32", &gpu);

    assert_int_equal(gpu.n_converted, LAYERS);
    assert_true(rel(gpu.teacher_ppl, cpu.teacher_ppl) < CAPTURE_TOL);
    for (int k = 0; k < LAYERS; k++) {
        const dsla_distill_layer_report_t *g = &gpu.converted[k], *c = &cpu.converted[k];
        assert_int_equal(g->layer, c->layer);
        const double e_init = rel(g->init_eval_mse, c->init_eval_mse);
        const double e_mse = rel(g->eval_mse, c->eval_mse), e_ppl = rel(g->eval_ppl, c->eval_ppl);
        fprintf(stderr, "  k %d: init mse %.2e, eval mse %.2e, ppl %.2e relative difference\n",
                k + 1, e_init, e_mse, e_ppl);
        assert_true(e_init < CAPTURE_TOL);
        assert_true(e_mse < LAYER_LOSS_TOL);
        assert_true(e_ppl < PPL_TOL);
    }

    /* Stopped inside the second layer after its first checkpoint, then started again. */
    stopper_t stop = {0, 0, 15};
    const dsla_distill_callbacks_t cb = {count_step, NULL, &stop, stop_now, NULL, NULL};
    run(be, resumed_out, &p, &cb, &resumed, DSLA_ERR_CANCELLED);
    char ck[1024];
    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", resumed_out);
    struct stat sb;
    assert_int_equal(stat(ck, &sb), 0);
    run(be, resumed_out, &p, NULL, &resumed, DSLA_OK);
    print_report("gpu f32, stopped and resumed", &resumed);
    assert_true(resumed.converted[0].resumed_from_file);
    assert_false(resumed.converted[1].resumed_from_file);
    assert_true(rel(resumed.converted[1].eval_mse, gpu.converted[1].eval_mse) < CAPTURE_TOL);
    assert_true(rel(resumed.converted[1].eval_ppl, gpu.converted[1].eval_ppl) < CAPTURE_TOL);
    dsla_distill_backend_destroy(&be);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_gpu_bf16_converges(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    static dsla_distill_report_t rep;
    const dsla_distill_params_t p = params();
    dsla_distill_backend_t *be = NULL;
    const dsla_distill_cuda_opts_t bf16 = {0, DSLA_DTYPE_BF16};
    assert_int_equal(dsla_distill_backend_cuda_create(&be, fx.model, &bf16), DSLA_OK);
    run(be, dir, &p, NULL, &rep, DSLA_OK);
    print_report("gpu bf16/tf32", &rep);
    for (int k = 0; k < LAYERS; k++)
        assert_true(rep.converted[k].init_eval_mse / rep.converted[k].eval_mse >= 10.0);
    dsla_distill_backend_destroy(&be);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_gpu_logit_term_matches_cpu(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char out[512];
    dsla_distill_params_t p = params();
    p.order_mode = DSLA_ORDER_GIVEN;
    p.given_order[0] = 3;
    p.given_order[1] = 1;
    p.n_given_order = 2;
    p.steps = KL_STEPS;
    p.optim = dsla_adamw_params_default(p.steps);
    p.checkpoint_every = 0;
    static dsla_distill_report_t cpu, gpu, plain;
    const dsla_distill_cuda_opts_t f32 = {0, DSLA_DTYPE_F32};
    dsla_distill_backend_t *be = NULL;

    p.kl_weight = 0.5;
    assert_int_equal(dsla_distill_backend_cpu_create(&be, fx.model), DSLA_OK);
    snprintf(out, sizeof out, "%s/cpu", dir);
    run(be, out, &p, NULL, &cpu, DSLA_OK);
    dsla_distill_backend_destroy(&be);
    print_report("cpu, kl 0.5", &cpu);
    assert_int_equal(dsla_distill_backend_cuda_create(&be, fx.model, &f32), DSLA_OK);
    snprintf(out, sizeof out, "%s/gpu", dir);
    run(be, out, &p, NULL, &gpu, DSLA_OK);
    print_report("gpu f32, kl 0.5", &gpu);
    p.kl_weight = 0.0;
    snprintf(out, sizeof out, "%s/plain", dir);
    run(be, out, &p, NULL, &plain, DSLA_OK);
    print_report("gpu f32, no kl", &plain);
    dsla_distill_backend_destroy(&be);

    for (int k = 0; k < LAYERS; k++) {
        const dsla_distill_layer_report_t *g = &gpu.converted[k], *c = &cpu.converted[k];
        assert_int_equal(g->layer, c->layer);
        const double e_mse = rel(g->eval_mse, c->eval_mse), e_ppl = rel(g->eval_ppl, c->eval_ppl);
        const double e_kl = rel(g->train_kl, c->train_kl);
        const double moved = rel(plain.converted[k].eval_mse, c->eval_mse);
        fprintf(stderr,
                "  k %d: train kl %.5f (cpu %.5f), relative difference: eval mse %.2e, ppl %.2e, "
                "kl %.2e; without the term the eval mse moves %.2e\n",
                k + 1, g->train_kl, c->train_kl, e_mse, e_ppl, e_kl, moved);
        assert_true(isfinite(g->train_kl) && g->train_kl > 0);
        assert_true(e_mse < LAYER_LOSS_TOL);
        assert_true(e_ppl < PPL_TOL);
        assert_true(e_kl < LAYER_LOSS_TOL);
        assert_true(moved > LAYER_LOSS_TOL);
    }
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_head_dim_8_is_refused(void **state) {
    (void)state;
    char *path = dsla_test_data_path("models/stories260K-hf");
    dsla_model_t *m = NULL;
    if (!path || dsla_model_load(&m, path) != DSLA_OK) {
        free(path);
        skip();
    }
    dsla_distill_backend_t *be = NULL;
    const dsla_distill_cuda_opts_t o = {0, DSLA_DTYPE_F32};
    assert_int_equal(dsla_distill_backend_cuda_create(&be, m, &o), DSLA_ERR_UNSUPPORTED);
    assert_null(be);
    assert_non_null(strstr(dsla_last_error(), "head dim 8"));
    dsla_model_destroy(&m);
    free(path);
}

int main(void) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return DSLA_TEST_SKIP;
    }
    char *model_dir = dsla_test_data_or_skip("models/tinystories-11M-hf");
    char *train_file = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    char *eval_file = dsla_test_data_or_skip("data/tinystories_valid.txt");
    dsla_tokenizer_t *tok = NULL;
    const char *train_files[1] = {train_file}, *eval_files[1] = {eval_file};
    if (dsla_model_load(&fx.model, model_dir) != DSLA_OK ||
        dsla_tokenizer_load_dir(&tok, model_dir) != DSLA_OK ||
        dsla_corpus_load(&fx.train, tok, train_files, 1, SEQ_LEN, TRAIN_SEQS) != DSLA_OK ||
        dsla_corpus_load(&fx.eval, tok, eval_files, 1, SEQ_LEN, EVAL_SEQS) != DSLA_OK) {
        fprintf(stderr, "loading tinystories-11M-hf and its data: %s\n", dsla_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_matches_cpu_f32_and_resumes),
        cmocka_unit_test(test_gpu_bf16_converges),
        cmocka_unit_test(test_gpu_logit_term_matches_cpu),
        cmocka_unit_test(test_head_dim_8_is_refused),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dsla_corpus_free(&fx.train);
    dsla_corpus_free(&fx.eval);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&fx.model);
    free(model_dir), free(train_file), free(eval_file);
    return rc;
}

#else

int main(void) {
    return 77; /* built without CUDA: nothing to test */
}

#endif

/* The distiller's logit KL term (DESIGN.md 5.3) on stories260K, held to central finite differences:
 *  - the tail alone (runtime/distill/logit_tail.h): dKL/dh_out after layer 1, through attention
 *    layers 2 and 4 (RoPE, causal GQA) and DSLA layer 3, the final norm and the head, along random
 *    directions, the gradient's own direction and its largest coordinates;
 *  - the engine's CPU step (kl_weight 1): the KL's share of the trained layer's parameter gradient
 *    (the step's gradient with the term less the one without) and the whole loss's gradient, along
 *    the gradient's direction and a random one in several of the layer's tensors;
 *  - the parameter checks: a negative weight and a zero temperature are refused, naming the flag.
 * The forward passes are float32 with double reductions, so the differences are taken with steps
 * large enough for rounding to stay under a thousandth of the slopes they measure; a backward that
 * drops a term (RoPE's transpose, a norm's gradient, a residual) is off by far more. */
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/distill/backend.h"
#include "runtime/distill/distill.h"
#include "runtime/distill/logit_tail.h"

enum { SEQ_LEN = 16, BATCH = 2, TRAINED = 1, DSLA_LATER = 3 };
/* Finite differences: steps tried per direction, and the relative error allowed at the best. */
enum { STEPS = 5 };
#define MAX_REL 1e-3

typedef struct {
    dsla_model_t *model;
    dsla_corpus_t train, eval;
    dsla_dsla_layer_t *later; /* teacher-initialised DSLA weights of layer DSLA_LATER */
    dsla_layer_kind_t kinds[DSLA_LAYER_ORDER_MAX];
    char *dir;
} fixture_t;

static int setup(void **state) {
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *text = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    fixture_t *f = calloc(1, sizeof *f);
    dsla_tokenizer_t *tok = NULL;
    assert_int_equal(dsla_model_load(&f->model, model), DSLA_OK);
    assert_int_equal(dsla_tokenizer_load_dir(&tok, model), DSLA_OK);
    const char *files[] = {text};
    assert_int_equal(dsla_corpus_load(&f->train, tok, files, 1, SEQ_LEN, 8), DSLA_OK);
    assert_int_equal(dsla_corpus_split(&f->train, &f->eval, 2), DSLA_OK);
    dsla_tokenizer_destroy(&tok);
    const dsla_model_config_t *cfg = dsla_model_config(f->model);
    assert_int_equal(dsla_dsla_layer_create(&f->later, cfg, DSLA_LATER), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_init_from_teacher(f->later, f->model, DSLA_LATER, 7), DSLA_OK);
    assert_int_equal(dsla_model_set_dsla_layer(f->model, DSLA_LATER, f->later), DSLA_OK);
    for (int l = 0; l < cfg->num_layers; l++)
        f->kinds[l] = l == DSLA_LATER ? DSLA_LAYER_DSLA : DSLA_LAYER_ATTN;
    f->dir = dsla_test_tempdir();
    free(model);
    free(text);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture_t *f = *state;
    if (!f) return 0;
    dsla_model_set_dsla_layer(f->model, DSLA_LATER, NULL);
    dsla_dsla_layer_destroy(&f->later);
    dsla_corpus_free(&f->train);
    dsla_corpus_free(&f->eval);
    dsla_model_destroy(&f->model);
    dsla_test_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* The teacher's streams of the first BATCH training sequences: leaving layer TRAINED into h_out
 * and leaving the last layer into final, [BATCH * SEQ_LEN, D] each. */
static void teacher_streams(fixture_t *f, float *h_out, float *final) {
    const dsla_model_config_t *cfg = dsla_model_config(f->model);
    dsla_kv_pool_t *pool = NULL;
    dsla_sequence_t *seqs[BATCH];
    dsla_batch_item_t items[BATCH];
    assert_int_equal(dsla_kv_pool_create(&pool, cfg, BATCH * cfg->num_layers * 4), DSLA_OK);
    for (int i = 0; i < BATCH; i++) {
        assert_int_equal(dsla_sequence_create(&seqs[i], pool, cfg), DSLA_OK);
        items[i] = (dsla_batch_item_t){seqs[i], dsla_corpus_sequence(&f->train, i), SEQ_LEN, true};
    }
    float *hidden[DSLA_LAYER_ORDER_MAX + 1] = {0};
    hidden[TRAINED + 1] = h_out;
    hidden[cfg->num_layers] = final;
    const dsla_forward_capture_t cap = {hidden, NULL, cfg->num_layers};
    assert_int_equal(dsla_model_forward_capture(f->model, items, BATCH, NULL, &cap), DSLA_OK);
    for (int i = 0; i < BATCH; i++)
        dsla_sequence_destroy(&seqs[i]);
    dsla_kv_pool_destroy(&pool);
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* The tail's KL at h + eps * u (in a copy). */
static double tail_kl_at(dsla_logit_tail_t *t, const float *h, const float *u, double eps,
                         const float *final, size_t n) {
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(h[i] + eps * u[i]);
    double kl = NAN;
    assert_int_equal(dsla_logit_tail_kl(t, x, final, BATCH, &kl, NULL), DSLA_OK);
    free(x);
    return kl;
}

/* The central difference of the KL along u (unit length) against the analytic slope dh . u, at
 * the best of a few steps (from `largest` down by 3x): the float forward's rounding grows as the
 * step shrinks, the curvature's error as it grows, and which wins depends on the direction. A
 * gradient that misses a term misses at every step. */
static void check_slope(dsla_logit_tail_t *t, const float *h, const float *dh, const float *u,
                        double largest, const float *final, size_t n, const char *what) {
    const double an = dot(dh, u, n);
    double best = INFINITY, best_fd = NAN;
    for (int k = 0; k < STEPS; k++) {
        const double eps = largest / pow(3.0, k);
        const double fd =
            (tail_kl_at(t, h, u, eps, final, n) - tail_kl_at(t, h, u, -eps, final, n)) / (2 * eps);
        const double err = fabs(fd - an) / fabs(an);
        if (err < best) {
            best = err;
            best_fd = fd;
        }
    }
    if (!(best < MAX_REL))
        fail_msg("%s: finite difference %.8g, analytic %.8g (rel %.2e)", what, best_fd, an, best);
}

static void test_tail_gradient_matches_finite_differences(void **state) {
    fixture_t *f = *state;
    const dsla_model_config_t *cfg = dsla_model_config(f->model);
    const size_t n = (size_t)BATCH * SEQ_LEN * cfg->hidden_size;
    float *h = malloc(n * sizeof *h), *final = malloc(n * sizeof *final);
    float *dh = malloc(n * sizeof *dh), *u = malloc(n * sizeof *u);
    teacher_streams(f, h, final);
    /* Away from the teacher's stream, as a student's output is, so the KL has a slope to check. */
    uint64_t rng = 12;
    const double rms = sqrt(dot(h, h, n) / n);
    for (size_t i = 0; i < n; i++)
        h[i] += (float)(0.3 * rms * dsla_test_rand_normal(&rng));
    dsla_logit_tail_t *t = NULL;
    assert_int_equal(dsla_logit_tail_create(&t, f->model, TRAINED, f->kinds, BATCH, SEQ_LEN, 1.0f),
                     DSLA_OK);
    double kl = NAN;
    assert_int_equal(dsla_logit_tail_kl(t, h, final, BATCH, &kl, dh), DSLA_OK);
    assert_true(kl > 0.01 && isfinite(kl));
    /* Without the gradient the same KL. */
    double kl_only = NAN;
    assert_int_equal(dsla_logit_tail_kl(t, h, final, BATCH, &kl_only, NULL), DSLA_OK);
    assert_true(kl_only == kl);

    const double eps = 1e-1 * rms;
    for (int trial = 0; trial < 3; trial++) {
        for (size_t i = 0; i < n; i++)
            u[i] = dsla_test_rand_normal(&rng);
        const double norm = sqrt(dot(u, u, n));
        for (size_t i = 0; i < n; i++)
            u[i] = (float)(u[i] / norm);
        check_slope(t, h, dh, u, eps, final, n, "random direction");
    }
    const double gnorm = sqrt(dot(dh, dh, n));
    for (size_t i = 0; i < n; i++)
        u[i] = (float)(dh[i] / gnorm);
    check_slope(t, h, dh, u, eps, final, n, "the gradient's direction");
    /* The largest coordinates, one at a time, in the first and the second sequence. */
    for (int seq = 0; seq < BATCH; seq++) {
        const size_t half = n / BATCH, lo = seq * half;
        size_t best = lo;
        for (size_t i = lo; i < lo + half; i++)
            if (fabsf(dh[i]) > fabsf(dh[best])) best = i;
        memset(u, 0, n * sizeof *u);
        u[best] = 1.0f;
        check_slope(t, h, dh, u, eps, final, n, "largest coordinate");
    }
    dsla_logit_tail_destroy(&t);
    free(h);
    free(final);
    free(dh);
    free(u);
}

/* A CPU backend prepared to train layer TRAINED with the KL at kl_weight (later layers: the
 * fixture's plan), on the teacher-initialised weights w (borrowed). */
static dsla_distill_backend_t *prepared(fixture_t *f, dsla_dsla_layer_t *w, dsla_dsla_layer_t *m,
                                        dsla_dsla_layer_t *v, double kl_weight) {
    dsla_distill_backend_t *be = NULL;
    assert_int_equal(dsla_distill_backend_cpu_create(&be, f->model), DSLA_OK);
    const dsla_distill_terms_t terms = {0.0, kl_weight, 1.0};
    assert_int_equal(
        be->layer_begin(be, w, m, v, BATCH, false, &terms, f->kinds, &f->train, &f->eval), DSLA_OK);
    return be;
}

static void loss_at(dsla_distill_backend_t *be, double *loss, double *kl) {
    const int idx[BATCH] = {0, 1};
    const dsla_dsla_layer_t *g = NULL;
    assert_int_equal(dsla_distill_cpu_loss_grad(be, idx, loss, kl, &g), DSLA_OK);
}

static void test_step_gradient_matches_finite_differences(void **state) {
    fixture_t *f = *state;
    const dsla_model_config_t *cfg = dsla_model_config(f->model);
    dsla_dsla_layer_t *w = NULL, *m = NULL, *v = NULL, *g_with = NULL, *g_without = NULL;
    assert_int_equal(dsla_dsla_layer_create(&w, cfg, TRAINED), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_create(&m, cfg, TRAINED), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_create(&v, cfg, TRAINED), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_create(&g_with, cfg, TRAINED), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_create(&g_without, cfg, TRAINED), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_init_from_teacher(w, f->model, TRAINED, 3), DSLA_OK);
    const int idx[BATCH] = {0, 1};
    const dsla_dsla_layer_t *g = NULL;
    double loss0, kl0, loss_without, kl_without;
    dsla_distill_backend_t *be = prepared(f, w, m, v, 0.0);
    assert_int_equal(dsla_distill_cpu_loss_grad(be, idx, &loss_without, &kl_without, &g), DSLA_OK);
    assert_true(isnan(kl_without));
    memcpy(g_without->data, g->data, w->numel * sizeof(float));
    dsla_distill_backend_destroy(&be);
    be = prepared(f, w, m, v, 1.0);
    assert_int_equal(dsla_distill_cpu_loss_grad(be, idx, &loss0, &kl0, &g), DSLA_OK);
    memcpy(g_with->data, g->data, w->numel * sizeof(float));
    /* The hidden-state loss is the same; the term adds exactly its KL. */
    assert_true(fabs(loss0 - (loss_without + kl0)) <= 1e-9 * loss0);
    assert_true(kl0 > 0.01);

    dsla_distill_param_t params[DSLA_DISTILL_PARAMS_MAX];
    const int np = dsla_distill_params_of(w, false, params);
    float *saved = malloc(w->numel * sizeof(float));
    memcpy(saved, w->data, w->numel * sizeof(float));
    uint64_t rng = 5;
    int checked = 0;
    /* wq, wk, wo, wg1, wg2: the KL's slope through each kind of path (q/k through the state's
     * read and write, wo straight to h_out, the two gates). */
    const int tensors[] = {0, 1, 3, 4, 6};
    for (size_t ti = 0; ti < sizeof tensors / sizeof tensors[0]; ti++) {
        const dsla_distill_param_t *p = &params[tensors[ti]];
        assert_true(tensors[ti] < np);
        float *u = malloc(p->n * sizeof *u);
        for (int dir = 0; dir < 2; dir++) {
            /* dir 0: the KL gradient's own direction; 1: a random one. */
            double norm = 0.0;
            for (size_t i = 0; i < p->n; i++) {
                u[i] = dir == 0 ? g_with->data[p->offset + i] - g_without->data[p->offset + i]
                                : dsla_test_rand_normal(&rng);
                norm += (double)u[i] * u[i];
            }
            norm = sqrt(norm);
            double wnorm = 0.0;
            for (size_t i = 0; i < p->n; i++)
                wnorm += (double)saved[p->offset + i] * saved[p->offset + i];
            double best_kl = INFINITY, best_loss = INFINITY, fd_kl = NAN, an_kl = NAN;
            for (int k = 0; k < STEPS; k++) {
                const double eps = 1e-2 * sqrt(wnorm) / pow(3.0, k);
                double lp[2], kp[2], slope_kl = 0.0, slope_loss = 0.0;
                for (int side = 0; side < 2; side++) {
                    const double s = side == 0 ? eps : -eps;
                    for (size_t i = 0; i < p->n; i++)
                        w->data[p->offset + i] = (float)(saved[p->offset + i] + s * u[i] / norm);
                    loss_at(be, &lp[side], &kp[side]);
                    /* The slope along the displacement actually made: float weights round it. */
                    for (size_t i = 0; i < p->n; i++) {
                        const double d = (side == 0 ? 1 : -1) * (double)w->data[p->offset + i];
                        slope_kl += d * ((double)g_with->data[p->offset + i] -
                                         g_without->data[p->offset + i]);
                        slope_loss += d * g_with->data[p->offset + i];
                    }
                }
                memcpy(w->data, saved, w->numel * sizeof(float));
                slope_kl /= 2 * eps;
                slope_loss /= 2 * eps;
                const double fk = (kp[0] - kp[1]) / (2 * eps), fl = (lp[0] - lp[1]) / (2 * eps);
                const double ek = fabs(fk - slope_kl) / fabs(slope_kl);
                const double el = fabs(fl - slope_loss) / fabs(slope_loss);
                if (ek < best_kl) {
                    best_kl = ek;
                    fd_kl = fk;
                    an_kl = slope_kl;
                }
                if (el < best_loss) best_loss = el;
            }
            if (!(best_kl < MAX_REL && best_loss < MAX_REL))
                fail_msg("tensor %d, %s direction: KL slope fd %.8g analytic %.8g (rel %.2e); "
                         "whole loss rel %.2e",
                         tensors[ti], dir == 0 ? "gradient" : "random", fd_kl, an_kl, best_kl,
                         best_loss);
            checked++;
        }
        free(u);
    }
    assert_int_equal(checked, 10);
    free(saved);
    be->layer_end(be);
    dsla_distill_backend_destroy(&be);
    dsla_dsla_layer_destroy(&w);
    dsla_dsla_layer_destroy(&m);
    dsla_dsla_layer_destroy(&v);
    dsla_dsla_layer_destroy(&g_with);
    dsla_dsla_layer_destroy(&g_without);
}

/* The last layer's target and the teacher's final stream are the same stream, captured into two
 * arrays: the hidden-state part of the loss is the one without the term, and the KL of the
 * teacher-initialised layer is that of the hybrid's logits alone. */
static void test_last_layer_captures_target_and_final(void **state) {
    fixture_t *f = *state;
    const dsla_model_config_t *cfg = dsla_model_config(f->model);
    const int last = cfg->num_layers - 1, idx[BATCH] = {0, 1};
    dsla_dsla_layer_t *w = NULL, *m = NULL, *v = NULL;
    assert_int_equal(dsla_dsla_layer_create(&w, cfg, last), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_create(&m, cfg, last), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_create(&v, cfg, last), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_init_from_teacher(w, f->model, last, 3), DSLA_OK);
    const dsla_dsla_layer_t *g = NULL;
    double without, with, kl_none, kl;
    dsla_distill_backend_t *be = prepared(f, w, m, v, 0.0);
    assert_int_equal(dsla_distill_cpu_loss_grad(be, idx, &without, &kl_none, &g), DSLA_OK);
    dsla_distill_backend_destroy(&be);
    be = prepared(f, w, m, v, 1.0);
    assert_int_equal(dsla_distill_cpu_loss_grad(be, idx, &with, &kl, &g), DSLA_OK);
    dsla_distill_backend_destroy(&be);
    assert_true(kl > 0.0 && isfinite(kl));
    assert_true(fabs(with - (without + kl)) <= 1e-9 * with);
    dsla_dsla_layer_destroy(&w);
    dsla_dsla_layer_destroy(&m);
    dsla_dsla_layer_destroy(&v);
}

static void test_bad_kl_parameters_are_named(void **state) {
    fixture_t *f = *state;
    dsla_distill_params_t p = dsla_distill_params_default();
    dsla_distill_report_t *r = calloc(1, sizeof *r);
    p.kl_weight = -1;
    assert_int_equal(dsla_distill_run(f->model, &f->train, &f->eval, &p, f->dir, NULL, r),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "--kl-weight"));
    p.kl_weight = 0.5;
    p.kl_temperature = 0;
    assert_int_equal(dsla_distill_run(f->model, &f->train, &f->eval, &p, f->dir, NULL, r),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "--kl-temperature"));
    free(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tail_gradient_matches_finite_differences),
        cmocka_unit_test(test_step_gradient_matches_finite_differences),
        cmocka_unit_test(test_last_layer_captures_target_and_final),
        cmocka_unit_test(test_bad_kl_parameters_are_named),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

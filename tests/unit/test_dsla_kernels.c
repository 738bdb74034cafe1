/* DSLA kernels (kernels/kernels_dsla.h): the fp64 naive layer and the fp32 chunked layer against
 * the reference vectors (shared/testvectors, skipped when absent); recurrent and chunked against
 * naive on fresh random inputs, gates from the -50 clamp to no decay; every backward against finite
 * differences or the oracle; segments chained through their states and state gradients; argument
 * errors. Every output is poisoned with NaN before a run, so an element a kernel forgets to write
 * fails. */
#include "tests/testutil.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "runtime/model/safetensors.h"

static const char REF_FILE[] = "testvectors/dsla_reference_fp64.safetensors";
enum { REF_CASES = 3 };
/* fp32 against fp64: the acceptance bound of the fp32 forms (relative L2 error). */
static const double TOL_F32 = 1e-5;
/* fp64 against fp64 computed in another order (PyTorch autograd): rounding only. */
static const double TOL_F64 = 1e-12;
/* Central differences on the fp64 oracle: step and bound (truncation ~h^2, rounding ~eps |loss| /
 * h, which is absolute: gradients are compared relative to max(||grad||, FD_FLOOR), the loss's
 * scale). */
static const double FD_STEP = 1e-6;
static const double TOL_FD = 1e-7;
static const double FD_FLOOR = 1.0;

/* ---- helpers ---- */

static float *f32_poisoned(size_t n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

static double *f64_poisoned(size_t n) {
    double *p = malloc(sizeof(double) * (n ? n : 1));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

static float *f32_from(const double *src, size_t n) {
    if (!src) return NULL;
    float *p = f32_poisoned(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)src[i];
    return p;
}

/* ||a-b|| / ||b|| with b the fp64 truth; a NaN anywhere gives infinity. */
static double rel_err(const float *a32, const double *a64, const double *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double a = a32 ? (double)a32[i] : a64[i];
        num += (a - b[i]) * (a - b[i]);
        den += b[i] * b[i];
    }
    if (isnan(num)) return INFINITY;
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static double rel32(const float *a, const double *b, size_t n) {
    return rel_err(a, NULL, b, n);
}

static double rel64(const double *a, const double *b, size_t n) {
    return rel_err(NULL, a, b, n);
}

/* Copies rows [t0, t0+n) of every sequence of src [B, T, w] into a new [B, n, w]. */
static float *slice_tokens32(const float *src, int B, int T, int w, int t0, int n) {
    float *dst = f32_poisoned((size_t)B * n * w);
    for (int b = 0; b < B; b++)
        memcpy(dst + (size_t)b * n * w, src + ((size_t)b * T + t0) * w, sizeof(float) * n * w);
    return dst;
}

/* ---- random core problems ---- */

typedef enum {
    GATES_MODERATE, /* a ~ 2 N(0,1): log g around -0.04 */
    GATES_CLAMP,    /* a in [-2000, -700]: log g in [-125, -44], half of it clamped at -50 */
    GATES_OPEN,     /* a in [15, 40]: log g ~ -1e-8 and below, states never forget */
    GATES_MIXED,    /* each element from one of the three above */
    GATES_KINDS,
} gates_t;

static const char *const GATES_NAME[GATES_KINDS] = {"moderate", "clamp", "open", "mixed"};

static double sample_gate(uint64_t *rng, gates_t kind) {
    if (kind == GATES_MIXED) kind = (gates_t)(dsla_test_rand_u64(rng) % GATES_MIXED);
    switch (kind) {
    case GATES_CLAMP:
        return dsla_test_rand_uniform(rng, -2000.0f, -700.0f);
    case GATES_OPEN:
        return dsla_test_rand_uniform(rng, 15.0f, 40.0f);
    default:
        return 2.0 * dsla_test_rand_normal(rng);
    }
}

/* Inputs are drawn in fp32 and widened, so the fp64 oracle sees exactly what the fp32 forms see. */
typedef struct {
    dsla_dsla_dims_t dims;
    size_t n, ns; /* elements of an activation, of a state tensor */
    double *act[5], alpha[2], *S0[2], *dout, *dST[2];
    float *act32[5], alpha32[2], *S032[2], *dout32, *dST32[2];
} problem_t;

static double *random_f64(uint64_t *rng, size_t n, double scale) {
    double *p = f64_poisoned(n);
    for (size_t i = 0; i < n; i++)
        p[i] = (double)(float)(scale * dsla_test_rand_normal(rng));
    return p;
}

static void problem_init(problem_t *p, uint64_t *rng, dsla_dsla_dims_t dims, gates_t gates,
                         int with_states) {
    memset(p, 0, sizeof *p);
    p->dims = dims;
    p->n = (size_t)dims.batch * dims.tokens * dims.heads * dims.head_dim;
    p->ns = (size_t)dims.batch * dims.heads * dims.head_dim * dims.head_dim;
    for (int i = 0; i < 3; i++)
        p->act[i] = random_f64(rng, p->n, 1.0);
    for (int i = 3; i < 5; i++) {
        p->act[i] = f64_poisoned(p->n);
        for (size_t j = 0; j < p->n; j++)
            p->act[i][j] = (double)(float)sample_gate(rng, gates);
    }
    for (int i = 0; i < 2; i++) {
        p->alpha[i] = (double)dsla_test_rand_uniform(rng, -1.0f, 1.0f);
        p->alpha32[i] = (float)p->alpha[i];
        p->S0[i] = with_states ? random_f64(rng, p->ns, 1.0) : NULL;
        p->dST[i] = with_states ? random_f64(rng, p->ns, 1.0) : NULL;
        p->S032[i] = f32_from(p->S0[i], p->ns);
        p->dST32[i] = f32_from(p->dST[i], p->ns);
    }
    p->dout = random_f64(rng, p->n, 1.0);
    p->dout32 = f32_from(p->dout, p->n);
    for (int i = 0; i < 5; i++)
        p->act32[i] = f32_from(p->act[i], p->n);
}

static void problem_free(problem_t *p) {
    for (int i = 0; i < 5; i++) {
        free(p->act[i]);
        free(p->act32[i]);
    }
    for (int i = 0; i < 2; i++) {
        free(p->S0[i]);
        free(p->dST[i]);
        free(p->S032[i]);
        free(p->dST32[i]);
    }
    free(p->dout);
    free(p->dout32);
}

static dsla_dsla_in64_t problem_in64(const problem_t *p) {
    return (dsla_dsla_in64_t){p->act[0], p->act[1], p->act[2], p->act[3], p->act[4], p->alpha};
}

static dsla_dsla_in_t problem_in32(const problem_t *p) {
    return (dsla_dsla_in_t){p->act32[0], p->act32[1], p->act32[2],
                            p->act32[3], p->act32[4], p->alpha32};
}

/* Gradients of a core problem: dq, dk, dv, da1, da2, dalpha, dS1_0, dS2_0. */
enum { CORE_GRADS = 8 };
static const char *const CORE_GRAD_NAME[CORE_GRADS] = {"dq",  "dk",     "dv",    "da1",
                                                       "da2", "dalpha", "dS1_0", "dS2_0"};

static size_t core_grad_size(const problem_t *p, int i) {
    return i < 5 ? p->n : i == 5 ? 2 : p->ns;
}

/* ---- random forms against the oracle ---- */

/* dalpha = w1 w2 (G1 - G2), G_i = sum(dOut * o_i), is a reduction over B*T*H*d products whose terms
 * cancel (random signs; and the two states nearly agree when both gates are open and there are no
 * initial states), while the fp32 error of o_i is correlated along a sequence. Its error is
 * therefore measured against the reduction's condition, w1 w2 sqrt(2) sum(|dOut * o_1| + |dOut *
 * o_2|), where that is larger than |dalpha|: the usual bound for a computed sum. */
static double dalpha_condition_scale(const problem_t *p) {
    double G[2], w1w2;
    double e = exp(p->alpha[1] - p->alpha[0]);
    w1w2 = e / ((1.0 + e) * (1.0 + e));
    for (int i = 0; i < 2; i++) {
        /* alpha = (+-40, -+40) reads state i alone: its weight is 1 - 1.8e-35 */
        double one[2] = {i == 0 ? 40.0 : -40.0, i == 0 ? -40.0 : 40.0};
        dsla_dsla_in64_t in = problem_in64(p);
        in.alpha = one;
        double *o = f64_poisoned(p->n);
        assert_int_equal(
            dsla_cpu_dsla_naive_forward(&p->dims, &in, p->S0[0], p->S0[1], o, NULL, NULL), DSLA_OK);
        G[i] = 0.0;
        for (size_t j = 0; j < p->n; j++)
            G[i] += fabs(o[j] * p->dout[j]);
        free(o);
    }
    return w1w2 * sqrt(2.0) * (G[0] + G[1]);
}

/* Runs naive, recurrent and chunked forward and both backwards on p; returns the worst relative
 * error of the fp32 forms and prints one line. */
static double check_forms(const problem_t *p, const char *label) {
    const dsla_dsla_dims_t *dims = &p->dims;
    const size_t n = p->n, ns = p->ns;
    dsla_dsla_in64_t in64 = problem_in64(p);
    dsla_dsla_in_t in32 = problem_in32(p);

    double *out = f64_poisoned(n), *ST[2] = {f64_poisoned(ns), f64_poisoned(ns)};
    assert_int_equal(
        dsla_cpu_dsla_naive_forward(dims, &in64, p->S0[0], p->S0[1], out, ST[0], ST[1]), DSLA_OK);

    size_t wsf = dsla_cpu_dsla_chunked_workspace_floats(dims);
    assert_true(wsf > 0);
    float *work = f32_poisoned(wsf);
    float *cout = f32_poisoned(n), *cST[2] = {f32_poisoned(ns), f32_poisoned(ns)};
    assert_int_equal(dsla_cpu_dsla_chunked_forward(dims, &in32, p->S032[0], p->S032[1], cout,
                                                   cST[0], cST[1], work),
                     DSLA_OK);

    float *rout = f32_poisoned(n), *rS[2] = {f32_poisoned(ns), f32_poisoned(ns)};
    for (int i = 0; i < 2; i++) {
        if (p->S032[i])
            memcpy(rS[i], p->S032[i], sizeof(float) * ns);
        else
            memset(rS[i], 0, sizeof(float) * ns);
    }
    assert_int_equal(dsla_cpu_dsla_recurrent_forward(dims, &in32, rS[0], rS[1], rout), DSLA_OK);

    double fwd[6] = {rel32(cout, out, n), rel32(cST[0], ST[0], ns), rel32(cST[1], ST[1], ns),
                     rel32(rout, out, n), rel32(rS[0], ST[0], ns),  rel32(rS[1], ST[1], ns)};

    double *g64[CORE_GRADS];
    float *g32[CORE_GRADS];
    for (int i = 0; i < CORE_GRADS; i++) {
        g64[i] = f64_poisoned(core_grad_size(p, i));
        g32[i] = f32_poisoned(core_grad_size(p, i));
    }
    dsla_dsla_grad64_t gr64 = {g64[0], g64[1], g64[2], g64[3], g64[4], g64[5]};
    dsla_dsla_grad_t gr32 = {g32[0], g32[1], g32[2], g32[3], g32[4], g32[5]};
    assert_int_equal(dsla_cpu_dsla_naive_backward(dims, &in64, p->S0[0], p->S0[1], p->dout,
                                                  p->dST[0], p->dST[1], &gr64, g64[6], g64[7]),
                     DSLA_OK);
    for (size_t i = 0; i < wsf; i++)
        work[i] = NAN;
    assert_int_equal(dsla_cpu_dsla_chunked_backward(dims, &in32, p->S032[0], p->S032[1], p->dout32,
                                                    p->dST32[0], p->dST32[1], &gr32, g32[6], g32[7],
                                                    work),
                     DSLA_OK);

    double worst = 0.0, bwd_worst = 0.0;
    const char *bwd_name = "";
    for (int i = 0; i < 6; i++)
        worst = fmax(worst, fwd[i]);
    double dalpha_scale = dalpha_condition_scale(p);
    for (int i = 0; i < CORE_GRADS; i++) {
        double e = rel32(g32[i], g64[i], core_grad_size(p, i));
        if (i == 5) {
            double d0 = g32[5][0] - g64[5][0], d1 = g32[5][1] - g64[5][1];
            double ref = sqrt(g64[5][0] * g64[5][0] + g64[5][1] * g64[5][1]);
            e = sqrt(d0 * d0 + d1 * d1) / fmax(ref, dalpha_scale);
        }
        if (!(e <= bwd_worst)) {
            bwd_worst = e;
            bwd_name = CORE_GRAD_NAME[i];
        }
    }
    printf("  %-34s chunked out %.1e S %.1e %.1e | recurrent out %.1e S %.1e %.1e | backward worst "
           "%.1e (%s)\n",
           label, fwd[0], fwd[1], fwd[2], fwd[3], fwd[4], fwd[5], bwd_worst, bwd_name);

    free(out);
    free(work);
    free(cout);
    free(rout);
    for (int i = 0; i < 2; i++) {
        free(ST[i]);
        free(cST[i]);
        free(rS[i]);
    }
    for (int i = 0; i < CORE_GRADS; i++) {
        free(g64[i]);
        free(g32[i]);
    }
    return fmax(worst, bwd_worst);
}

static void test_forms_agree(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    static const int lengths[] = {1, 63, 64, 65, 1000};
    double worst = 0.0;
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
        for (int with_states = 0; with_states < 2; with_states++) {
            for (int g = 0; g < GATES_KINDS; g++) {
                problem_t p;
                dsla_dsla_dims_t dims = {2, lengths[li], 2, 16};
                problem_init(&p, &rng, dims, (gates_t)g, with_states);
                char label[64];
                snprintf(label, sizeof label, "T=%d d=16 %s%s", lengths[li], GATES_NAME[g],
                         with_states ? " +states" : "");
                worst = fmax(worst, check_forms(&p, label));
                problem_free(&p);
            }
        }
    }
    /* realistic head size (tinystories-11M) over several chunks, three heads */
    static const int long_lengths[] = {65, 300};
    for (size_t li = 0; li < 2; li++) {
        problem_t p;
        dsla_dsla_dims_t dims = {2, long_lengths[li], 3, 64};
        problem_init(&p, &rng, dims, GATES_MIXED, 1);
        char label[64];
        snprintf(label, sizeof label, "T=%d d=64 H=3 mixed +states", long_lengths[li]);
        worst = fmax(worst, check_forms(&p, label));
        problem_free(&p);
    }
    printf("  worst relative error of the fp32 forms: %.2e (bound %.0e)\n", worst, TOL_F32);
    assert_true(worst <= TOL_F32);
}

/* ---- decode: one token per call, states in place ---- */

static void test_decode_token_by_token(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    problem_t p;
    dsla_dsla_dims_t dims = {3, 70, 2, 16};
    problem_init(&p, &rng, dims, GATES_MIXED, 1);
    const int B = dims.batch, T = dims.tokens, hd = dims.heads * dims.head_dim;
    const size_t n = p.n, ns = p.ns;
    dsla_dsla_in64_t in64 = problem_in64(&p);
    double *out = f64_poisoned(n), *ST[2] = {f64_poisoned(ns), f64_poisoned(ns)};
    assert_int_equal(dsla_cpu_dsla_naive_forward(&dims, &in64, p.S0[0], p.S0[1], out, ST[0], ST[1]),
                     DSLA_OK);

    float *S[2] = {f32_poisoned(ns), f32_poisoned(ns)}, *dec = f32_poisoned(n);
    memcpy(S[0], p.S032[0], sizeof(float) * ns);
    memcpy(S[1], p.S032[1], sizeof(float) * ns);
    dsla_dsla_dims_t step = {B, 1, dims.heads, dims.head_dim};
    for (int t = 0; t < T; t++) {
        float *tok[5], *o = f32_poisoned((size_t)B * hd);
        for (int i = 0; i < 5; i++)
            tok[i] = slice_tokens32(p.act32[i], B, T, hd, t, 1);
        dsla_dsla_in_t in = {tok[0], tok[1], tok[2], tok[3], tok[4], p.alpha32};
        assert_int_equal(dsla_cpu_dsla_recurrent_forward(&step, &in, S[0], S[1], o), DSLA_OK);
        for (int b = 0; b < B; b++)
            memcpy(dec + ((size_t)b * T + t) * hd, o + (size_t)b * hd, sizeof(float) * hd);
        for (int i = 0; i < 5; i++)
            free(tok[i]);
        free(o);
    }
    double e[3] = {rel32(dec, out, n), rel32(S[0], ST[0], ns), rel32(S[1], ST[1], ns)};
    printf("  decode %d tokens one by one: out %.1e S1 %.1e S2 %.1e\n", T, e[0], e[1], e[2]);
    for (int i = 0; i < 3; i++)
        assert_true(e[i] <= TOL_F32);
    free(out);
    free(dec);
    for (int i = 0; i < 2; i++) {
        free(ST[i]);
        free(S[i]);
    }
    problem_free(&p);
}

/* ---- chained segments: states forward, state gradients backward ---- */

static void test_chained_segments(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    problem_t full;
    const int T = 150, cut = 70;
    dsla_dsla_dims_t dims = {2, T, 2, 16};
    problem_init(&full, &rng, dims, GATES_MIXED, 1);
    const int B = dims.batch, hd = dims.heads * dims.head_dim;
    const size_t ns = full.ns;
    dsla_dsla_in64_t fin = problem_in64(&full);
    double *fout = f64_poisoned(full.n);
    double *fg[CORE_GRADS];
    for (int i = 0; i < CORE_GRADS; i++)
        fg[i] = f64_poisoned(core_grad_size(&full, i));
    dsla_dsla_grad64_t fgr = {fg[0], fg[1], fg[2], fg[3], fg[4], fg[5]};
    assert_int_equal(
        dsla_cpu_dsla_naive_forward(&dims, &fin, full.S0[0], full.S0[1], fout, NULL, NULL),
        DSLA_OK);
    assert_int_equal(dsla_cpu_dsla_naive_backward(&dims, &fin, full.S0[0], full.S0[1], full.dout,
                                                  full.dST[0], full.dST[1], &fgr, fg[6], fg[7]),
                     DSLA_OK);

    /* fp32 chunked on [0, cut) then [cut, T): states handed forward, dS handed back */
    const int t0s[2] = {0, cut}, lens[2] = {cut, T - cut};
    float *seg_in[2][5], *seg_dout[2], *seg_out[2], *seg_g[2][6];
    float *mid[2] = {f32_poisoned(ns), f32_poisoned(ns)},
          *fin32[2] = {f32_poisoned(ns), f32_poisoned(ns)};
    float *dmid[2] = {f32_poisoned(ns), f32_poisoned(ns)},
          *d0[2] = {f32_poisoned(ns), f32_poisoned(ns)};
    dsla_dsla_dims_t sd[2];
    float *work = NULL;
    for (int s = 0; s < 2; s++) {
        sd[s] = (dsla_dsla_dims_t){B, lens[s], dims.heads, dims.head_dim};
        size_t sn = (size_t)B * lens[s] * hd;
        for (int i = 0; i < 5; i++)
            seg_in[s][i] = slice_tokens32(full.act32[i], B, T, hd, t0s[s], lens[s]);
        seg_dout[s] = slice_tokens32(full.dout32, B, T, hd, t0s[s], lens[s]);
        seg_out[s] = f32_poisoned(sn);
        for (int i = 0; i < 5; i++)
            seg_g[s][i] = f32_poisoned(sn);
        seg_g[s][5] = f32_poisoned(2);
    }
    work = f32_poisoned(dsla_cpu_dsla_chunked_workspace_floats(&dims));
    dsla_dsla_in_t in[2];
    for (int s = 0; s < 2; s++)
        in[s] = (dsla_dsla_in_t){seg_in[s][0], seg_in[s][1], seg_in[s][2],
                                 seg_in[s][3], seg_in[s][4], full.alpha32};
    assert_int_equal(dsla_cpu_dsla_chunked_forward(&sd[0], &in[0], full.S032[0], full.S032[1],
                                                   seg_out[0], mid[0], mid[1], work),
                     DSLA_OK);
    assert_int_equal(dsla_cpu_dsla_chunked_forward(&sd[1], &in[1], mid[0], mid[1], seg_out[1],
                                                   fin32[0], fin32[1], work),
                     DSLA_OK);
    dsla_dsla_grad_t g1 = {seg_g[1][0], seg_g[1][1], seg_g[1][2],
                           seg_g[1][3], seg_g[1][4], seg_g[1][5]};
    assert_int_equal(dsla_cpu_dsla_chunked_backward(&sd[1], &in[1], mid[0], mid[1], seg_dout[1],
                                                    full.dST32[0], full.dST32[1], &g1, dmid[0],
                                                    dmid[1], work),
                     DSLA_OK);
    dsla_dsla_grad_t g0 = {seg_g[0][0], seg_g[0][1], seg_g[0][2],
                           seg_g[0][3], seg_g[0][4], seg_g[0][5]};
    assert_int_equal(dsla_cpu_dsla_chunked_backward(&sd[0], &in[0], full.S032[0], full.S032[1],
                                                    seg_dout[0], dmid[0], dmid[1], &g0, d0[0],
                                                    d0[1], work),
                     DSLA_OK);

    /* stitch the segments back to full length and compare with the oracle */
    float *out32 = f32_poisoned(full.n), *g32[CORE_GRADS];
    for (int i = 0; i < 5; i++)
        g32[i] = f32_poisoned(full.n);
    for (int s = 0; s < 2; s++) {
        for (int b = 0; b < B; b++) {
            size_t dst = ((size_t)b * T + t0s[s]) * hd, src = (size_t)b * lens[s] * hd;
            size_t bytes = sizeof(float) * lens[s] * hd;
            memcpy(out32 + dst, seg_out[s] + src, bytes);
            for (int i = 0; i < 5; i++)
                memcpy(g32[i] + dst, seg_g[s][i] + src, bytes);
        }
    }
    float dalpha[2] = {seg_g[0][5][0] + seg_g[1][5][0], seg_g[0][5][1] + seg_g[1][5][1]};
    g32[5] = dalpha;
    g32[6] = d0[0];
    g32[7] = d0[1];
    double worst = rel32(out32, fout, full.n);
    for (int i = 0; i < CORE_GRADS; i++)
        worst = fmax(worst, rel32(g32[i], fg[i], core_grad_size(&full, i)));
    printf("  two chained segments (%d + %d tokens): worst relative error %.1e\n", cut, T - cut,
           worst);
    assert_true(worst <= TOL_F32);

    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < 5; i++) {
            free(seg_in[s][i]);
            free(seg_g[s][i]);
        }
        free(seg_g[s][5]);
        free(seg_dout[s]);
        free(seg_out[s]);
        free(mid[s]);
        free(fin32[s]);
        free(dmid[s]);
        free(d0[s]);
    }
    for (int i = 0; i < 5; i++)
        free(g32[i]);
    for (int i = 0; i < CORE_GRADS; i++)
        free(fg[i]);
    free(out32);
    free(fout);
    free(work);
    problem_free(&full);
}

/* ---- finite differences on the fp64 oracle ---- */

typedef struct {
    double *param;
    size_t n;
    const double *grad;
    const char *name;
} fd_param_t;

typedef double (*fd_loss_fn)(void *ctx);

/* Central differences of loss with respect to every element of every param, against grad. */
static void check_fd(fd_param_t *params, int count, fd_loss_fn loss, void *ctx, const char *what) {
    for (int p = 0; p < count; p++) {
        double *fd = f64_poisoned(params[p].n);
        for (size_t i = 0; i < params[p].n; i++) {
            double keep = params[p].param[i];
            double h = FD_STEP * fmax(1.0, fabs(keep));
            params[p].param[i] = keep + h;
            double up = loss(ctx);
            params[p].param[i] = keep - h;
            double down = loss(ctx);
            params[p].param[i] = keep;
            fd[i] = (up - down) / (2.0 * h);
        }
        double num = 0.0, den = 0.0;
        for (size_t i = 0; i < params[p].n; i++) {
            num += (params[p].grad[i] - fd[i]) * (params[p].grad[i] - fd[i]);
            den += fd[i] * fd[i];
        }
        double e = isnan(num) ? INFINITY : sqrt(num) / fmax(sqrt(den), FD_FLOOR);
        printf("  finite differences %s %-6s rel %.1e\n", what, params[p].name, e);
        assert_true(e <= TOL_FD);
        free(fd);
    }
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* loss = sum(out * dout) + sum(S1_T * dS1_T) + sum(S2_T * dS2_T) */
static double core_loss(void *ctx) {
    const problem_t *p = ctx;
    dsla_dsla_in64_t in = problem_in64(p);
    double *out = f64_poisoned(p->n), *S1 = f64_poisoned(p->ns), *S2 = f64_poisoned(p->ns);
    assert_int_equal(dsla_cpu_dsla_naive_forward(&p->dims, &in, p->S0[0], p->S0[1], out, S1, S2),
                     DSLA_OK);
    double l = dot(out, p->dout, p->n) + dot(S1, p->dST[0], p->ns) + dot(S2, p->dST[1], p->ns);
    free(out);
    free(S1);
    free(S2);
    return l;
}

static void test_core_backward_finite_differences(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    problem_t p;
    dsla_dsla_dims_t dims = {2, 5, 2, 3};
    problem_init(&p, &rng, dims, GATES_MODERATE, 1);
    /* a few gates just above the clamp (log g = -47.5, live) and below it (clamped: gradient 0) */
    p.act[3][1] = -760.0;
    p.act[3][7] = -1000.0;
    p.act[4][2] = -790.0;
    p.act[4][11] = 30.0;
    double *g[CORE_GRADS];
    for (int i = 0; i < CORE_GRADS; i++)
        g[i] = f64_poisoned(core_grad_size(&p, i));
    dsla_dsla_grad64_t gr = {g[0], g[1], g[2], g[3], g[4], g[5]};
    dsla_dsla_in64_t in = problem_in64(&p);
    assert_int_equal(dsla_cpu_dsla_naive_backward(&dims, &in, p.S0[0], p.S0[1], p.dout, p.dST[0],
                                                  p.dST[1], &gr, g[6], g[7]),
                     DSLA_OK);
    assert_true(g[3][7] == 0.0); /* clamped */
    fd_param_t params[CORE_GRADS];
    double *targets[CORE_GRADS] = {p.act[0], p.act[1], p.act[2], p.act[3],
                                   p.act[4], p.alpha,  p.S0[0],  p.S0[1]};
    for (int i = 0; i < CORE_GRADS; i++)
        params[i] = (fd_param_t){targets[i], core_grad_size(&p, i), g[i], CORE_GRAD_NAME[i]};
    check_fd(params, CORE_GRADS, core_loss, &p, "core");
    for (int i = 0; i < CORE_GRADS; i++)
        free(g[i]);
    problem_free(&p);
}

/* A whole layer in fp64: weights, input, states, and the loss's weights R, P1, P2. */
typedef struct {
    dsla_dsla_dims_t dims;
    int D;
    double *x, *W[9], *S0[2], *R, *P[2];
} layer_problem_t;

enum { LAYER_PARAMS = 9 }; /* wq wk wv wo wg1 bg1 wg2 bg2 alpha */

static dsla_dsla_layer_weights64_t layer_weights(const layer_problem_t *l) {
    return (dsla_dsla_layer_weights64_t){l->W[0], l->W[1], l->W[2], l->W[3], l->W[4],
                                         l->W[5], l->W[6], l->W[7], l->W[8]};
}

static double layer_loss(void *ctx) {
    const layer_problem_t *l = ctx;
    size_t ny = (size_t)l->dims.batch * l->dims.tokens * l->D;
    size_t ns = (size_t)l->dims.batch * l->dims.heads * l->dims.head_dim * l->dims.head_dim;
    double *y = f64_poisoned(ny), *S1 = f64_poisoned(ns), *S2 = f64_poisoned(ns);
    dsla_dsla_layer_weights64_t w = layer_weights(l);
    assert_int_equal(
        dsla_cpu_dsla_naive_layer_forward(&l->dims, l->D, &w, l->x, l->S0[0], l->S0[1], y, S1, S2),
        DSLA_OK);
    double loss = dot(y, l->R, ny) + dot(S1, l->P[0], ns) + dot(S2, l->P[1], ns);
    free(y);
    free(S1);
    free(S2);
    return loss;
}

static void test_layer_backward_finite_differences(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    layer_problem_t l = {.dims = {2, 4, 2, 3}, .D = 5};
    const int hd = l.dims.heads * l.dims.head_dim;
    size_t nx = (size_t)l.dims.batch * l.dims.tokens * l.D;
    size_t ns = (size_t)l.dims.batch * l.dims.heads * l.dims.head_dim * l.dims.head_dim;
    const size_t wn[LAYER_PARAMS] = {(size_t)hd * l.D, (size_t)hd * l.D, (size_t)hd * l.D,
                                     (size_t)l.D * hd, (size_t)hd * l.D, (size_t)hd,
                                     (size_t)hd * l.D, (size_t)hd,       2};
    static const char *const names[LAYER_PARAMS] = {"wq",  "wk",  "wv",  "wo",   "wg1",
                                                    "bg1", "wg2", "bg2", "alpha"};
    l.x = random_f64(&rng, nx, 1.0);
    for (int i = 0; i < LAYER_PARAMS; i++)
        l.W[i] = random_f64(&rng, wn[i], 0.5);
    l.R = random_f64(&rng, nx, 1.0);
    for (int i = 0; i < 2; i++) {
        l.S0[i] = random_f64(&rng, ns, 1.0);
        l.P[i] = random_f64(&rng, ns, 1.0);
    }
    double *dx = f64_poisoned(nx), *dW[LAYER_PARAMS],
           *dS0[2] = {f64_poisoned(ns), f64_poisoned(ns)};
    for (int i = 0; i < LAYER_PARAMS; i++)
        dW[i] = f64_poisoned(wn[i]);
    dsla_dsla_layer_grads64_t g = {dW[0], dW[1], dW[2], dW[3], dW[4], dW[5], dW[6], dW[7], dW[8]};
    dsla_dsla_layer_weights64_t w = layer_weights(&l);
    assert_int_equal(dsla_cpu_dsla_naive_layer_backward(&l.dims, l.D, &w, l.x, l.S0[0], l.S0[1],
                                                        l.R, l.P[0], l.P[1], dx, &g, dS0[0],
                                                        dS0[1]),
                     DSLA_OK);
    fd_param_t params[LAYER_PARAMS + 3];
    for (int i = 0; i < LAYER_PARAMS; i++)
        params[i] = (fd_param_t){l.W[i], wn[i], dW[i], names[i]};
    params[LAYER_PARAMS] = (fd_param_t){l.x, nx, dx, "x"};
    params[LAYER_PARAMS + 1] = (fd_param_t){l.S0[0], ns, dS0[0], "S1_0"};
    params[LAYER_PARAMS + 2] = (fd_param_t){l.S0[1], ns, dS0[1], "S2_0"};
    check_fd(params, LAYER_PARAMS + 3, layer_loss, &l, "layer");
    for (int i = 0; i < LAYER_PARAMS; i++) {
        free(l.W[i]);
        free(dW[i]);
    }
    for (int i = 0; i < 2; i++) {
        free(l.S0[i]);
        free(l.P[i]);
        free(dS0[i]);
    }
    free(l.x);
    free(l.R);
    free(dx);
}

/* ---- reference vectors ---- */

/* A malloc'd copy of tensor case<c>.<key> (F64), NULL when absent; n receives its element count. */
static double *ref_tensor(const dsla_safetensors_t *st, int c, const char *key, size_t *n) {
    char name[64];
    snprintf(name, sizeof name, "case%d.%s", c, key);
    const dsla_st_tensor_t *t = dsla_safetensors_find(st, name);
    if (!t) return NULL;
    assert_int_equal(t->dtype, DSLA_DTYPE_F64);
    double *p = f64_poisoned(t->bytes / sizeof(double));
    memcpy(p, t->data, t->bytes);
    if (n) *n = t->bytes / sizeof(double);
    return p;
}

/* Weights of the reference file, in dsla_dsla_layer_weights_t order, and their gradients. */
static const char *const REF_WEIGHT[LAYER_PARAMS] = {"q",   "k",   "v",   "o",    "g1w",
                                                     "g1b", "g2w", "g2b", "alpha"};
static const char *const REF_GRAD[LAYER_PARAMS] = {"dq",   "dk",   "dv",   "do",    "dg1w",
                                                   "dg1b", "dg2w", "dg2b", "dalpha"};

static void test_reference_vectors(void **state) {
    (void)state;
    char *path = dsla_test_data_path(REF_FILE);
    if (!path) {
        printf("  %s not found under DSLA_TEST_DATA: skipped\n", REF_FILE);
        skip();
    }
    dsla_safetensors_t *st = NULL;
    assert_int_equal(dsla_safetensors_open(&st, path), DSLA_OK);
    for (int c = 0; c < REF_CASES; c++) {
        char key[32];
        snprintf(key, sizeof key, "case%d.dims", c);
        const dsla_st_tensor_t *dt = dsla_safetensors_find(st, key);
        assert_non_null(dt);
        assert_int_equal(dt->dtype, DSLA_DTYPE_I64);
        int64_t dv[4];
        memcpy(dv, dt->data, sizeof dv);
        dsla_dsla_dims_t dims = {(int)dv[0], (int)dv[1], (int)dv[2], (int)dv[3]};
        size_t nx, ns = (size_t)dims.batch * dims.heads * dims.head_dim * dims.head_dim;
        double *x = ref_tensor(st, c, "x", &nx), *R = ref_tensor(st, c, "R", NULL);
        const int D = (int)(nx / ((size_t)dims.batch * dims.tokens));
        double *y = ref_tensor(st, c, "y", NULL), *dx = ref_tensor(st, c, "dx", NULL);
        double *S0[2] = {ref_tensor(st, c, "S1_init", NULL), ref_tensor(st, c, "S2_init", NULL)};
        double *ST[2] = {ref_tensor(st, c, "S1_final", NULL), ref_tensor(st, c, "S2_final", NULL)};
        double *W[LAYER_PARAMS], *G[LAYER_PARAMS];
        size_t wn[LAYER_PARAMS];
        for (int i = 0; i < LAYER_PARAMS; i++) {
            W[i] = ref_tensor(st, c, REF_WEIGHT[i], &wn[i]);
            G[i] = ref_tensor(st, c, REF_GRAD[i], NULL);
            assert_non_null(W[i]);
            assert_non_null(G[i]);
        }
        assert_true(x && R && y && dx && ST[0] && ST[1]);

        /* fp64 naive layer */
        double *y64 = f64_poisoned(nx), *dx64 = f64_poisoned(nx), *G64[LAYER_PARAMS];
        double *ST64[2] = {f64_poisoned(ns), f64_poisoned(ns)};
        for (int i = 0; i < LAYER_PARAMS; i++)
            G64[i] = f64_poisoned(wn[i]);
        dsla_dsla_layer_weights64_t w64 = {W[0], W[1], W[2], W[3], W[4], W[5], W[6], W[7], W[8]};
        dsla_dsla_layer_grads64_t g64 = {G64[0], G64[1], G64[2], G64[3], G64[4],
                                         G64[5], G64[6], G64[7], G64[8]};
        assert_int_equal(dsla_cpu_dsla_naive_layer_forward(&dims, D, &w64, x, S0[0], S0[1], y64,
                                                           ST64[0], ST64[1]),
                         DSLA_OK);
        assert_int_equal(dsla_cpu_dsla_naive_layer_backward(&dims, D, &w64, x, S0[0], S0[1], R,
                                                            NULL, NULL, dx64, &g64, NULL, NULL),
                         DSLA_OK);

        /* fp32 chunked layer */
        float *x32 = f32_from(x, nx), *R32 = f32_from(R, nx), *W32[LAYER_PARAMS],
              *G32[LAYER_PARAMS];
        float *S032[2] = {f32_from(S0[0], ns), f32_from(S0[1], ns)};
        float *y32 = f32_poisoned(nx), *dx32 = f32_poisoned(nx);
        float *ST32[2] = {f32_poisoned(ns), f32_poisoned(ns)};
        for (int i = 0; i < LAYER_PARAMS; i++) {
            W32[i] = f32_from(W[i], wn[i]);
            G32[i] = f32_poisoned(wn[i]);
        }
        dsla_dsla_layer_weights_t w32 = {W32[0], W32[1], W32[2], W32[3], W32[4],
                                         W32[5], W32[6], W32[7], W32[8]};
        dsla_dsla_layer_grads_t g32 = {G32[0], G32[1], G32[2], G32[3], G32[4],
                                       G32[5], G32[6], G32[7], G32[8]};
        size_t bytes = dsla_cpu_dsla_layer_workspace_bytes(&dims, D);
        assert_true(bytes > 0);
        float *mem = f32_poisoned(bytes / sizeof(float));
        dsla_dsla_layer_ws_t ws;
        assert_int_equal(dsla_cpu_dsla_layer_workspace_init(&ws, &dims, D, mem, bytes), DSLA_OK);
        assert_int_equal(
            dsla_cpu_dsla_layer_forward(&ws, &w32, x32, S032[0], S032[1], y32, ST32[0], ST32[1]),
            DSLA_OK);
        assert_int_equal(dsla_cpu_dsla_layer_backward(&ws, &w32, x32, S032[0], S032[1], R32, NULL,
                                                      NULL, dx32, &g32, NULL, NULL),
                         DSLA_OK);

        printf("  case%d B=%d T=%d H=%d d=%d D=%d%s\n", c, dims.batch, dims.tokens, dims.heads,
               dims.head_dim, D, S0[0] ? " (initial states)" : "");
        double worst64 = 0.0, worst32 = 0.0;
        const char *names[3 + 1 + LAYER_PARAMS] = {"y", "S1_final", "S2_final", "dx"};
        const double *truth[3 + 1 + LAYER_PARAMS] = {y, ST[0], ST[1], dx};
        const double *got64[3 + 1 + LAYER_PARAMS] = {y64, ST64[0], ST64[1], dx64};
        const float *got32[3 + 1 + LAYER_PARAMS] = {y32, ST32[0], ST32[1], dx32};
        size_t sizes[3 + 1 + LAYER_PARAMS] = {nx, ns, ns, nx};
        for (int i = 0; i < LAYER_PARAMS; i++) {
            names[4 + i] = REF_GRAD[i];
            truth[4 + i] = G[i];
            got64[4 + i] = G64[i];
            got32[4 + i] = G32[i];
            sizes[4 + i] = wn[i];
        }
        for (int i = 0; i < 4 + LAYER_PARAMS; i++) {
            double e64 = rel64(got64[i], truth[i], sizes[i]);
            double e32 = rel32(got32[i], truth[i], sizes[i]);
            printf("    %-9s fp64 naive %.2e   fp32 chunked %.2e\n", names[i], e64, e32);
            worst64 = fmax(worst64, e64);
            worst32 = fmax(worst32, e32);
        }
        assert_true(worst64 <= TOL_F64);
        assert_true(worst32 <= TOL_F32);

        free(mem);
        free(x);
        free(R);
        free(y);
        free(dx);
        free(x32);
        free(R32);
        free(y32);
        free(dx32);
        free(y64);
        free(dx64);
        for (int i = 0; i < 2; i++) {
            free(S0[i]);
            free(ST[i]);
            free(ST64[i]);
            free(S032[i]);
            free(ST32[i]);
        }
        for (int i = 0; i < LAYER_PARAMS; i++) {
            free(W[i]);
            free(G[i]);
            free(G64[i]);
            free(W32[i]);
            free(G32[i]);
        }
    }
    dsla_safetensors_close(&st);
    free(path);
}

/* ---- argument errors ---- */

static void test_invalid_arguments(void **state) {
    (void)state;
    float buf[64] = {0};
    float alpha[2] = {0.0f, 0.0f};
    dsla_dsla_in_t in = {buf, buf, buf, buf, buf, alpha};
    dsla_dsla_dims_t bad = {1, 4, 2, 0};
    assert_int_equal(dsla_cpu_dsla_recurrent_forward(&bad, &in, buf, buf, buf),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "head_dim 0"));
    assert_int_equal(dsla_cpu_dsla_chunked_workspace_floats(&bad), 0);
    dsla_dsla_dims_t neg = {1, -1, 1, 1};
    assert_int_equal(dsla_cpu_dsla_chunked_forward(&neg, &in, NULL, NULL, buf, NULL, NULL, buf),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "tokens -1"));
    dsla_dsla_dims_t ok = {1, 2, 1, 2};
    assert_int_equal(dsla_cpu_dsla_chunked_forward(&ok, &in, NULL, NULL, buf, NULL, NULL, NULL),
                     DSLA_ERR_INVALID_ARGUMENT);
    in.k = NULL;
    assert_int_equal(dsla_cpu_dsla_recurrent_forward(&ok, &in, buf, buf, buf),
                     DSLA_ERR_INVALID_ARGUMENT);
    dsla_dsla_layer_ws_t ws;
    assert_int_equal(dsla_cpu_dsla_layer_workspace_init(&ws, &ok, 4, buf, sizeof buf / 64),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "need"));
    assert_int_equal(dsla_cpu_dsla_layer_workspace_bytes(&ok, 0), 0);
}

int main(void) {
    /* the test machine's cores are shared; small GEMMs gain nothing from threads */
    openblas_set_num_threads(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_core_backward_finite_differences),
        cmocka_unit_test(test_layer_backward_finite_differences),
        cmocka_unit_test(test_forms_agree),
        cmocka_unit_test(test_decode_token_by_token),
        cmocka_unit_test(test_chained_segments),
        cmocka_unit_test(test_reference_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Training kernels (kernels/kernels_train.h): every backward and every loss gradient against
 * central finite differences of an fp64 reference forward written here; AdamW against a two-step
 * trajectory computed by hand with PyTorch's formulas; the schedule at its corners; clipping to
 * exactly max_norm. Inputs are fresh random values (DSLA_TEST_SEED replays a failure) and every
 * output is poisoned with NaN before a call, so an element a kernel forgets to write fails. */
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels_train.h"

/* Central differences on fp64 forwards of O(1) values: truncation ~h^2, rounding ~1e-16/h. */
static const double FD_STEP = 1e-6;
/* fp32 kernels against fp64 differences: a few float roundings (~1e-7 each) plus the cancellation
 * inside the RMSNorm and softmax gradients stay well below this (relative L2). */
static const double TOL_GRAD = 1e-5;
/* Values computed in double from the same inputs as the references (losses, norms, the schedule).
 */
static const double TOL_VALUE = 1e-9;
/* Values the kernels keep in float (parameters, optimizer moments, clipped gradients): a few
 * roundings of 6e-8 each, relative. */
static const double TOL_FLOAT = 1e-6;

/* ---- helpers ----------------------------------------------------------------------------------
 */

static float *f32_poisoned(size_t n) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

static float *f32_normal(uint64_t *rng, size_t n, float scale) {
    float *p = f32_poisoned(n);
    for (size_t i = 0; i < n; i++)
        p[i] = scale * dsla_test_rand_normal(rng);
    return p;
}

static double *f64_from(const float *src, size_t n) {
    double *p = malloc(sizeof(double) * (n ? n : 1));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = src[i];
    return p;
}

/* ||a-b|| / ||b|| with b the fp64 truth; a NaN anywhere gives infinity. */
static double rel_err(const float *a, const double *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    if (isnan(num)) return INFINITY;
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static double rel_diff(double a, double b) {
    return fabs(a - b) / fmax(fabs(b), 1e-300);
}

/* A scalar function of the arrays its context points into. */
typedef double (*scalar_fn_t)(const void *ctx);

/* grad[i] = dF/dx[i] by central differences, perturbing x (one of F's inputs) in place. */
static double *fd_grad(double *x, size_t n, scalar_fn_t f, const void *ctx) {
    double *g = malloc(sizeof(double) * (n ? n : 1));
    assert_non_null(g);
    for (size_t i = 0; i < n; i++) {
        const double keep = x[i];
        x[i] = keep + FD_STEP;
        const double up = f(ctx);
        x[i] = keep - FD_STEP;
        const double down = f(ctx);
        x[i] = keep;
        g[i] = (up - down) / (2.0 * FD_STEP);
    }
    return g;
}

static double silu64(double g) {
    return g / (1.0 + exp(-g));
}

/* ---- GEMM and bias backward --------------------------------------------------------------------
 */

/* F = sum(dy * (x w^T + b)): its gradients are the backward of y = x w^T + b for that dy. */
typedef struct {
    int m, n, k;
    double *x, *w, *b, *dy;
} gemm_ctx_t;

static double gemm_probe(const void *p) {
    const gemm_ctx_t *c = p;
    double F = 0.0;
    for (int i = 0; i < c->m; i++)
        for (int j = 0; j < c->n; j++) {
            double y = c->b[j];
            for (int l = 0; l < c->k; l++)
                y += c->x[i * c->k + l] * c->w[j * c->k + l];
            F += c->dy[i * c->n + j] * y;
        }
    return F;
}

static void test_gemm_backward(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    const int shapes[][3] = {{5, 7, 6}, {1, 3, 4}, {33, 17, 9}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        const size_t nx = (size_t)m * k, nw = (size_t)n * k, ny = (size_t)m * n;
        float *x = f32_normal(&rng, nx, 1.0f), *w = f32_normal(&rng, nw, 1.0f);
        float *b = f32_normal(&rng, n, 1.0f), *dy = f32_normal(&rng, ny, 1.0f);
        gemm_ctx_t c = {
            m, n, k, f64_from(x, nx), f64_from(w, nw), f64_from(b, n), f64_from(dy, ny)};
        double *dx_ref = fd_grad(c.x, nx, gemm_probe, &c);
        double *dw_ref = fd_grad(c.w, nw, gemm_probe, &c);
        double *db_ref = fd_grad(c.b, n, gemm_probe, &c);

        float *dx = f32_poisoned(nx), *dw = f32_poisoned(nw), *db = f32_poisoned(n);
        dsla_cpu_gemm_backward_input(dx, dy, w, m, n, k, false);
        dsla_cpu_gemm_backward_weight(dw, dy, x, m, n, k, false);
        dsla_cpu_bias_backward(db, dy, m, n, false);
        assert_true(rel_err(dx, dx_ref, nx) < TOL_GRAD);
        assert_true(rel_err(dw, dw_ref, nw) < TOL_GRAD);
        assert_true(rel_err(db, db_ref, n) < TOL_GRAD);

        /* Accumulating onto earlier gradients adds exactly this call's contribution. */
        float *base_x = f32_normal(&rng, nx, 1.0f), *base_w = f32_normal(&rng, nw, 1.0f);
        float *base_b = f32_normal(&rng, n, 1.0f);
        memcpy(dx, base_x, sizeof(float) * nx);
        memcpy(dw, base_w, sizeof(float) * nw);
        memcpy(db, base_b, sizeof(float) * n);
        dsla_cpu_gemm_backward_input(dx, dy, w, m, n, k, true);
        dsla_cpu_gemm_backward_weight(dw, dy, x, m, n, k, true);
        dsla_cpu_bias_backward(db, dy, m, n, true);
        for (size_t i = 0; i < nx; i++)
            dx_ref[i] += base_x[i];
        for (size_t i = 0; i < nw; i++)
            dw_ref[i] += base_w[i];
        for (int i = 0; i < n; i++)
            db_ref[i] += base_b[i];
        assert_true(rel_err(dx, dx_ref, nx) < TOL_GRAD);
        assert_true(rel_err(dw, dw_ref, nw) < TOL_GRAD);
        assert_true(rel_err(db, db_ref, n) < TOL_GRAD);

        free(x), free(w), free(b), free(dy), free(c.x), free(c.w), free(c.b), free(c.dy);
        free(dx_ref), free(dw_ref), free(db_ref), free(dx), free(dw), free(db);
        free(base_x), free(base_w), free(base_b);
    }
    /* No rows: the weight gradient of an empty batch is zero, not left as it was. */
    float dw0[6];
    for (int i = 0; i < 6; i++)
        dw0[i] = NAN;
    dsla_cpu_gemm_backward_weight(dw0, NULL, NULL, 0, 2, 3, false);
    for (int i = 0; i < 6; i++)
        assert_true(dw0[i] == 0.0f);
}

/* ---- RMSNorm backward -------------------------------------------------------------------------
 */

typedef struct {
    int rows, dim;
    double eps;
    double *x, *w, *dy;
} rms_ctx_t;

static double rms_probe(const void *p) {
    const rms_ctx_t *c = p;
    double F = 0.0;
    for (int r = 0; r < c->rows; r++) {
        const double *xr = c->x + (size_t)r * c->dim;
        double ss = 0.0;
        for (int i = 0; i < c->dim; i++)
            ss += xr[i] * xr[i];
        const double rs = 1.0 / sqrt(ss / c->dim + c->eps);
        for (int i = 0; i < c->dim; i++)
            F += c->dy[(size_t)r * c->dim + i] * xr[i] * rs * c->w[i];
    }
    return F;
}

static void test_rmsnorm_backward(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    /* Not dim 1: there the output is x/|x| up to eps, its derivative ~eps/|x|^3 is all cancellation
     * and the differences themselves lose four digits. */
    const int shapes[][2] = {{3, 16}, {2, 300}, {1, 3}};
    const float eps = 1e-5f;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], dim = shapes[s][1];
        const size_t nx = (size_t)rows * dim;
        float *x = f32_normal(&rng, nx, 2.0f), *dy = f32_normal(&rng, nx, 1.0f);
        float *w = f32_poisoned(dim);
        for (int i = 0; i < dim; i++)
            w[i] = dsla_test_rand_uniform(&rng, 0.5f, 1.5f);
        rms_ctx_t c = {rows, dim, eps, f64_from(x, nx), f64_from(w, dim), f64_from(dy, nx)};
        double *dx_ref = fd_grad(c.x, nx, rms_probe, &c);
        double *dw_ref = fd_grad(c.w, dim, rms_probe, &c);

        float *dx = f32_poisoned(nx), *dw = f32_poisoned(dim);
        dsla_cpu_rmsnorm_backward(dx, dw, dy, x, w, rows, dim, eps, false);
        assert_true(rel_err(dx, dx_ref, nx) < TOL_GRAD);
        assert_true(rel_err(dw, dw_ref, dim) < TOL_GRAD);

        /* In place over dy, and with a frozen weight (no dw). */
        float *inplace = f32_poisoned(nx);
        memcpy(inplace, dy, sizeof(float) * nx);
        dsla_cpu_rmsnorm_backward(inplace, NULL, inplace, x, w, rows, dim, eps, false);
        assert_true(rel_err(inplace, dx_ref, nx) < TOL_GRAD);

        /* Accumulating onto a residual gradient. */
        float *base = f32_normal(&rng, nx, 1.0f), *base_w = f32_normal(&rng, dim, 1.0f);
        memcpy(dx, base, sizeof(float) * nx);
        memcpy(dw, base_w, sizeof(float) * dim);
        dsla_cpu_rmsnorm_backward(dx, dw, dy, x, w, rows, dim, eps, true);
        for (size_t i = 0; i < nx; i++)
            dx_ref[i] += base[i];
        for (int i = 0; i < dim; i++)
            dw_ref[i] += base_w[i];
        assert_true(rel_err(dx, dx_ref, nx) < TOL_GRAD);
        assert_true(rel_err(dw, dw_ref, dim) < TOL_GRAD);

        free(x), free(dy), free(w), free(c.x), free(c.w), free(c.dy), free(dx_ref), free(dw_ref);
        free(dx), free(dw), free(inplace), free(base), free(base_w);
    }
}

/* ---- SwiGLU backward --------------------------------------------------------------------------
 */

/* gu holds rows of [gate | up] (the fused layout, stride 2n). */
typedef struct {
    int rows, n;
    double *gu, *dy;
} swiglu_ctx_t;

static double swiglu_probe(const void *p) {
    const swiglu_ctx_t *c = p;
    double F = 0.0;
    for (int r = 0; r < c->rows; r++) {
        const double *g = c->gu + (size_t)r * 2 * c->n, *u = g + c->n;
        for (int j = 0; j < c->n; j++)
            F += c->dy[(size_t)r * c->n + j] * silu64(g[j]) * u[j];
    }
    return F;
}

static void test_swiglu_backward(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    const int rows = 4, n = 24;
    const size_t ngu = (size_t)rows * 2 * n, ny = (size_t)rows * n;
    /* Gates from deep in the negative tail to saturation, where sigmoid's two branches differ. */
    float *gu = f32_normal(&rng, ngu, 3.0f), *dy = f32_normal(&rng, ny, 1.0f);
    swiglu_ctx_t c = {rows, n, f64_from(gu, ngu), f64_from(dy, ny)};
    double *ref = fd_grad(c.gu, ngu, swiglu_probe, &c);

    float *dgu = f32_poisoned(ngu);
    dsla_cpu_swiglu_backward(dgu, dgu + n, dy, gu, gu + n, rows, n, 2 * n);
    assert_true(rel_err(dgu, ref, ngu) < TOL_GRAD);

    /* Gradients written over the forward's buffers. */
    float *inplace = f32_poisoned(ngu);
    memcpy(inplace, gu, sizeof(float) * ngu);
    dsla_cpu_swiglu_backward(inplace, inplace + n, dy, inplace, inplace + n, rows, n, 2 * n);
    assert_memory_equal(inplace, dgu, sizeof(float) * ngu);

    free(gu), free(dy), free(c.gu), free(c.dy), free(ref), free(dgu), free(inplace);
}

/* ---- frozen MLP block -------------------------------------------------------------------------
 */

typedef struct {
    int rows, D, F;
    double eps;
    double *h, *norm_w, *wg, *wu, *wd, *dy;
} mlp_ctx_t;

/* h_out of every row into out (when not NULL); returns sum(dy * h_out). */
static double mlp_forward64(const mlp_ctx_t *c, double *out) {
    const int D = c->D, F = c->F;
    double *xn = malloc(sizeof(double) * D), *act = malloc(sizeof(double) * F);
    assert_non_null(xn);
    assert_non_null(act);
    double probe = 0.0;
    for (int r = 0; r < c->rows; r++) {
        const double *h = c->h + (size_t)r * D;
        double ss = 0.0;
        for (int i = 0; i < D; i++)
            ss += h[i] * h[i];
        const double rs = 1.0 / sqrt(ss / D + c->eps);
        for (int i = 0; i < D; i++)
            xn[i] = h[i] * rs * c->norm_w[i];
        for (int f = 0; f < F; f++) {
            double g = 0.0, u = 0.0;
            for (int i = 0; i < D; i++) {
                g += c->wg[(size_t)f * D + i] * xn[i];
                u += c->wu[(size_t)f * D + i] * xn[i];
            }
            act[f] = silu64(g) * u;
        }
        for (int i = 0; i < D; i++) {
            double y = h[i];
            for (int f = 0; f < F; f++)
                y += c->wd[(size_t)i * F + f] * act[f];
            if (out) out[(size_t)r * D + i] = y;
            probe += c->dy[(size_t)r * D + i] * y;
        }
    }
    free(xn), free(act);
    return probe;
}

static double mlp_probe(const void *p) {
    return mlp_forward64(p, NULL);
}

static void test_mlp_block(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    const int shapes[][3] = {{3, 16, 40}, {1, 8, 8}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], D = shapes[s][1], F = shapes[s][2];
        const size_t nh = (size_t)rows * D, nw = (size_t)F * D;
        float *h = f32_normal(&rng, nh, 1.0f), *dy = f32_normal(&rng, nh, 1.0f);
        float *norm_w = f32_poisoned(D);
        for (int i = 0; i < D; i++)
            norm_w[i] = dsla_test_rand_uniform(&rng, 0.5f, 1.5f);
        /* Scaled as a trained layer's so that the activations stay O(1). */
        float *wg = f32_normal(&rng, nw, 2.0f / sqrtf((float)D));
        float *wu = f32_normal(&rng, nw, 1.0f / sqrtf((float)D));
        float *wd = f32_normal(&rng, nw, 1.0f / sqrtf((float)F));
        dsla_mlp_block_t mlp = {norm_w, wg, wu, wd, D, F, 1e-5f};
        mlp_ctx_t c = {rows,
                       D,
                       F,
                       mlp.eps,
                       f64_from(h, nh),
                       f64_from(norm_w, D),
                       f64_from(wg, nw),
                       f64_from(wu, nw),
                       f64_from(wd, nw),
                       f64_from(dy, nh)};

        const size_t nwork = dsla_cpu_mlp_block_workspace_floats(&mlp, rows);
        assert_true(nwork > 0);
        float *work = f32_poisoned(nwork);

        double *out_ref = malloc(sizeof(double) * nh);
        assert_non_null(out_ref);
        mlp_forward64(&c, out_ref);
        float *out = f32_poisoned(nh);
        dsla_cpu_mlp_block_forward(out, h, &mlp, rows, work);
        assert_true(rel_err(out, out_ref, nh) < TOL_GRAD);

        double *dh_ref = fd_grad(c.h, nh, mlp_probe, &c);
        float *dh = f32_poisoned(nh);
        for (size_t i = 0; i < nwork; i++)
            work[i] = NAN;
        dsla_cpu_mlp_block_backward(dh, dy, h, &mlp, rows, work);
        assert_true(rel_err(dh, dh_ref, nh) < TOL_GRAD);

        /* In place: dh_out becomes dh_mid. */
        float *inplace = f32_poisoned(nh);
        memcpy(inplace, dy, sizeof(float) * nh);
        dsla_cpu_mlp_block_backward(inplace, inplace, h, &mlp, rows, work);
        assert_memory_equal(inplace, dh, sizeof(float) * nh);

        free(h), free(dy), free(norm_w), free(wg), free(wu), free(wd), free(c.h), free(c.norm_w);
        free(c.wg), free(c.wu), free(c.wd), free(c.dy), free(work), free(out_ref), free(out);
        free(dh_ref), free(dh), free(inplace);
    }
}

/* ---- causal attention ---------------------------------------------------------------------------
 */

/* F = sum(dout * attention(q, k, v)) in fp64, written from the definition. */
typedef struct {
    int B, T, H, Hkv, d;
    double *q, *k, *v, *dout;
} attn_ctx_t;

static double attn_probe(const void *p) {
    const attn_ctx_t *c = p;
    const int T = c->T, H = c->H, Hkv = c->Hkv, d = c->d;
    double F = 0.0, s[64];
    for (int b = 0; b < c->B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const double *qi = c->q + ((size_t)(b * T + i) * H + h) * d;
                double max = -INFINITY, sum = 0.0;
                for (int j = 0; j <= i; j++) {
                    const double *kj = c->k + ((size_t)(b * T + j) * Hkv + h / (H / Hkv)) * d;
                    s[j] = 0.0;
                    for (int e = 0; e < d; e++)
                        s[j] += qi[e] * kj[e] / sqrt((double)d);
                    max = fmax(max, s[j]);
                }
                for (int j = 0; j <= i; j++)
                    sum += exp(s[j] - max);
                for (int e = 0; e < d; e++) {
                    double o = 0.0;
                    for (int j = 0; j <= i; j++)
                        o += exp(s[j] - max) / sum *
                             c->v[((size_t)(b * T + j) * Hkv + h / (H / Hkv)) * d + e];
                    F += c->dout[((size_t)(b * T + i) * H + h) * d + e] * o;
                }
            }
    return F;
}

static void test_causal_attention(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    const int shapes[][5] = {{2, 5, 4, 2, 3}, {1, 7, 2, 2, 4}, {1, 1, 3, 1, 2}}; /* B T H Hkv d */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int B = shapes[s][0], T = shapes[s][1], H = shapes[s][2], Hkv = shapes[s][3];
        const int d = shapes[s][4];
        const size_t nq = (size_t)B * T * H * d, nk = (size_t)B * T * Hkv * d;
        float *q = f32_normal(&rng, nq, 1.0f), *k = f32_normal(&rng, nk, 1.0f);
        float *v = f32_normal(&rng, nk, 1.0f), *dout = f32_normal(&rng, nq, 1.0f);
        attn_ctx_t c = {
            B, T, H, Hkv, d, f64_from(q, nq), f64_from(k, nk), f64_from(v, nk), f64_from(dout, nq)};
        float *out = f32_poisoned(nq), *probs = f32_poisoned((size_t)B * H * T * T);
        dsla_cpu_causal_attention_train_forward(out, probs, q, k, v, B, T, H, Hkv, d);
        /* The forward against the probe: F's derivative in dout is the output itself. */
        double *out_ref = fd_grad(c.dout, nq, attn_probe, &c);
        assert_true(rel_err(out, out_ref, nq) < TOL_GRAD);
        for (int b = 0; b < B; b++) /* rows sum to 1, nothing above the diagonal */
            for (int h = 0; h < H; h++)
                for (int i = 0; i < T; i++) {
                    const float *p = probs + (((size_t)b * H + h) * T + i) * T;
                    double sum = 0.0;
                    for (int j = 0; j < T; j++) {
                        if (j > i) assert_true(p[j] == 0.0f);
                        sum += p[j];
                    }
                    assert_true(fabs(sum - 1.0) < 1e-6);
                }
        float *dq = f32_poisoned(nq), *dk = f32_poisoned(nk), *dv = f32_poisoned(nk);
        float *scratch = f32_poisoned((size_t)T);
        dsla_cpu_causal_attention_train_backward(dq, dk, dv, dout, probs, q, k, v, B, T, H, Hkv, d,
                                                 scratch);
        double *dq_ref = fd_grad(c.q, nq, attn_probe, &c);
        double *dk_ref = fd_grad(c.k, nk, attn_probe, &c);
        double *dv_ref = fd_grad(c.v, nk, attn_probe, &c);
        assert_true(rel_err(dq, dq_ref, nq) < TOL_GRAD);
        assert_true(rel_err(dk, dk_ref, nk) < TOL_GRAD);
        assert_true(rel_err(dv, dv_ref, nk) < TOL_GRAD);
        free(q), free(k), free(v), free(dout), free(c.q), free(c.k), free(c.v), free(c.dout);
        free(out), free(probs), free(out_ref), free(dq), free(dk), free(dv), free(scratch);
        free(dq_ref), free(dk_ref), free(dv_ref);
    }
}

/* ---- losses -----------------------------------------------------------------------------------
 */

typedef struct {
    size_t n;
    double *s, *t;
} nmse_ctx_t;

static double nmse_probe(const void *p) {
    const nmse_ctx_t *c = p;
    double err = 0.0, norm = 0.0;
    for (size_t i = 0; i < c->n; i++) {
        err += (c->s[i] - c->t[i]) * (c->s[i] - c->t[i]);
        norm += c->t[i] * c->t[i];
    }
    return (err / c->n) / (norm / c->n);
}

static void test_nmse_loss(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    const size_t n = 3 * 37;
    float *t = f32_normal(&rng, n, 3.0f), *s = f32_poisoned(n);
    for (size_t i = 0; i < n; i++)
        s[i] = t[i] + 0.3f * dsla_test_rand_normal(&rng);
    nmse_ctx_t c = {n, f64_from(s, n), f64_from(t, n)};
    const double want = nmse_probe(&c);
    double *ref = fd_grad(c.s, n, nmse_probe, &c);

    float *grad = f32_poisoned(n);
    assert_true(rel_diff(dsla_cpu_nmse_loss(grad, s, t, n), want) < TOL_VALUE);
    assert_true(rel_err(grad, ref, n) < TOL_GRAD);
    assert_true(rel_diff(dsla_cpu_nmse_loss(NULL, s, t, n), want) < TOL_VALUE);
    /* The gradient may overwrite the student. */
    float *inplace = f32_poisoned(n);
    memcpy(inplace, s, sizeof(float) * n);
    dsla_cpu_nmse_loss(inplace, inplace, t, n);
    assert_memory_equal(inplace, grad, sizeof(float) * n);
    /* A perfect student. */
    assert_true(dsla_cpu_nmse_loss(grad, t, t, n) == 0.0);
    for (size_t i = 0; i < n; i++)
        assert_true(grad[i] == 0.0f);
    /* An all-zero teacher: the plain sum of squares, finite. */
    float zeros[4] = {0}, s4[4] = {1.0f, -2.0f, 0.5f, 0.0f}, g4[4] = {NAN, NAN, NAN, NAN};
    assert_true(dsla_cpu_nmse_loss(g4, s4, zeros, 4) == 5.25);
    for (int i = 0; i < 4; i++)
        assert_true(g4[i] == 2.0f * s4[i]);

    free(t), free(s), free(c.s), free(c.t), free(ref), free(grad), free(inplace);
}

typedef struct {
    int rows, vocab;
    double T;
    double *s, *t;
} kl_ctx_t;

static double kl_probe(const void *p) {
    const kl_ctx_t *c = p;
    double total = 0.0;
    for (int r = 0; r < c->rows; r++) {
        const double *s = c->s + (size_t)r * c->vocab, *t = c->t + (size_t)r * c->vocab;
        double zs = 0.0, zt = 0.0;
        for (int j = 0; j < c->vocab; j++) {
            zs += exp(s[j] / c->T);
            zt += exp(t[j] / c->T);
        }
        for (int j = 0; j < c->vocab; j++) {
            const double pj = exp(t[j] / c->T) / zt, qj = exp(s[j] / c->T) / zs;
            total += pj * log(pj / qj);
        }
    }
    return c->T * c->T * total / c->rows;
}

static void test_kl_div_loss(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    const int rows = 3, vocab = 50;
    const size_t n = (size_t)rows * vocab;
    const float temperatures[] = {1.0f, 2.0f, 0.5f};
    for (size_t k = 0; k < sizeof temperatures / sizeof temperatures[0]; k++) {
        float *t = f32_normal(&rng, n, 2.0f), *s = f32_normal(&rng, n, 2.0f);
        kl_ctx_t c = {rows, vocab, temperatures[k], f64_from(s, n), f64_from(t, n)};
        const double want = kl_probe(&c);
        double *ref = fd_grad(c.s, n, kl_probe, &c);
        float *grad = f32_poisoned(n);
        const double got = dsla_cpu_kl_div_loss(grad, s, t, rows, vocab, temperatures[k]);
        assert_true(rel_diff(got, want) < TOL_VALUE);
        assert_true(rel_err(grad, ref, n) < TOL_GRAD);
        /* Equal distributions: no loss, no gradient. */
        assert_true(dsla_cpu_kl_div_loss(grad, t, t, rows, vocab, temperatures[k]) == 0.0);
        for (size_t i = 0; i < n; i++)
            assert_true(grad[i] == 0.0f);
        free(t), free(s), free(c.s), free(c.t), free(ref), free(grad);
    }
    /* Logits far beyond exp's range, with teacher probabilities that underflow to zero. */
    float big_s[3] = {1000.0f, -1000.0f, 0.0f}, big_t[3] = {-1000.0f, 1000.0f, 0.0f};
    float g[3] = {NAN, NAN, NAN};
    const double L = dsla_cpu_kl_div_loss(g, big_s, big_t, 1, 3, 1.0f);
    assert_true(isfinite(L) && L > 1999.0 && L < 2001.0);
    for (int i = 0; i < 3; i++)
        assert_true(isfinite(g[i]));
}

typedef struct {
    size_t n;
    double *a, *b;
} cos_ctx_t;

static double cos_probe(const void *p) {
    const cos_ctx_t *c = p;
    double ab = 0.0, aa = 0.0, bb = 0.0;
    for (size_t i = 0; i < c->n; i++) {
        ab += c->a[i] * c->b[i];
        aa += c->a[i] * c->a[i];
        bb += c->b[i] * c->b[i];
    }
    return ab / sqrt(aa * bb);
}

static void test_cosine_similarity(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    const size_t n = 24;
    float *a = f32_normal(&rng, n, 1.0f), *b = f32_normal(&rng, n, 1.0f);
    for (size_t i = 0; i < n; i++)
        b[i] += 0.5f * a[i]; /* correlated, as the two gates of one layer are */
    cos_ctx_t c = {n, f64_from(a, n), f64_from(b, n)};
    const double want = cos_probe(&c);
    double *da_ref = fd_grad(c.a, n, cos_probe, &c);
    double *db_ref = fd_grad(c.b, n, cos_probe, &c);
    float *da = f32_poisoned(n), *db = f32_poisoned(n);
    assert_true(rel_diff(dsla_cpu_cosine_similarity(da, db, a, b, n), want) < TOL_VALUE);
    assert_true(rel_err(da, da_ref, n) < TOL_GRAD);
    assert_true(rel_err(db, db_ref, n) < TOL_GRAD);
    assert_true(rel_diff(dsla_cpu_cosine_similarity(NULL, NULL, a, b, n), want) < TOL_VALUE);

    /* Parallel vectors: cosine 1, its maximum, where the gradient vanishes. */
    for (size_t i = 0; i < n; i++)
        b[i] = 2.0f * a[i];
    assert_true(fabs(dsla_cpu_cosine_similarity(da, db, a, b, n) - 1.0) < TOL_VALUE);
    for (size_t i = 0; i < n; i++)
        assert_true(fabs(da[i]) < TOL_FLOAT && fabs(db[i]) < TOL_FLOAT);
    /* A zero vector: the clamp gives 0, not NaN. */
    memset(b, 0, sizeof(float) * n);
    assert_true(dsla_cpu_cosine_similarity(da, db, a, b, n) == 0.0);
    for (size_t i = 0; i < n; i++)
        assert_true(da[i] == 0.0f && isfinite(db[i]));

    free(a), free(b), free(c.a), free(c.b), free(da_ref), free(db_ref), free(da), free(db);
}

/* ---- optimizer --------------------------------------------------------------------------------
 */

static void test_adamw_two_steps(void **state) {
    (void)state;
    dsla_adamw_params_t p = dsla_adamw_params_default(100);
    p.weight_decay = 0.1;
    const double lr = 0.01;
    float param[4] = {1.0f, -0.5f, 2.0f, 0.25f}, m[4] = {0}, v[4] = {0};
    const float g1[4] = {0.1f, -0.2f, 0.0f, 3.0f}, g2[4] = {-0.05f, 0.4f, 0.0f, 3.0f};
    /* torch.optim.AdamW by hand (lr 0.01, betas 0.9/0.999, eps 1e-8, weight_decay 0.1). Step 1:
     * m_hat = g, v_hat = g^2, so p1 = 0.999 p0 - 0.01 g / (|g| + 1e-8), e.g. 0.999 - 0.0099999999
     * for the first element; a zero gradient only decays (2.0 -> 1.998). */
    const double after1[4] = {0.989000001, -0.4895000005, 1.998, 0.239750000033};
    /* Step 2: m = 0.09 g1 + 0.1 g2, v = 0.000999 g1^2 + 0.001 g2^2, corrected by 1 - 0.9^2 and
     * 1 - 0.999^2. */
    const double after2[4] = {0.985347630939, -0.492671535654, 1.996002, 0.229510250067};
    const double m2[4] = {0.004, 0.022, 0.0, 0.57}, v2[4] = {1.249e-05, 0.00019996, 0.0, 0.017991};

    dsla_cpu_adamw_step(param, m, v, g1, 4, 1, lr, &p);
    for (int i = 0; i < 4; i++)
        assert_true(fabs(param[i] - after1[i]) <= TOL_FLOAT * fabs(after1[i]));
    dsla_cpu_adamw_step(param, m, v, g2, 4, 2, lr, &p);
    for (int i = 0; i < 4; i++) {
        assert_true(fabs(param[i] - after2[i]) <= TOL_FLOAT * fabs(after2[i]));
        assert_true(fabs(m[i] - m2[i]) <= TOL_FLOAT * fabs(m2[i]));
        assert_true(fabs(v[i] - v2[i]) <= TOL_FLOAT * fabs(v2[i]));
    }
}

static void test_adamw_defaults_and_schedule(void **state) {
    (void)state;
    dsla_adamw_params_t p = dsla_adamw_params_default(100);
    assert_true(p.lr == 1e-3 && p.min_lr == 1e-4 && p.beta1 == 0.9 && p.beta2 == 0.999);
    assert_true(p.eps == 1e-8 && p.weight_decay == 0.01 && p.max_grad_norm == 1.0);
    assert_int_equal(p.warmup_steps, 10);
    assert_int_equal(p.total_steps, 100);

    const double peak = p.lr, floor_lr = p.min_lr;
    assert_true(dsla_adamw_lr(&p, 0) == 0.0);
    assert_true(rel_diff(dsla_adamw_lr(&p, 1), peak / 10) < TOL_VALUE); /* warm-up start */
    assert_true(rel_diff(dsla_adamw_lr(&p, 5), peak / 2) < TOL_VALUE);  /* halfway up */
    assert_true(rel_diff(dsla_adamw_lr(&p, 10), peak) < TOL_VALUE);     /* warm-up end: the peak */
    assert_true(rel_diff(dsla_adamw_lr(&p, 55), (peak + floor_lr) / 2) <
                TOL_VALUE);                                               /* mid-cosine */
    assert_true(rel_diff(dsla_adamw_lr(&p, 100), floor_lr) < TOL_VALUE);  /* end */
    assert_true(rel_diff(dsla_adamw_lr(&p, 1000), floor_lr) < TOL_VALUE); /* past the end */
    for (long s = 11; s < 100; s++) /* the cosine only goes down, within [min_lr, lr] */
        assert_true(dsla_adamw_lr(&p, s) < dsla_adamw_lr(&p, s - 1) &&
                    dsla_adamw_lr(&p, s) > p.min_lr);

    /* A quarter of the way down the cosine: 100 decay steps after 10 of warm-up, step 35. */
    dsla_adamw_params_t q = p;
    q.total_steps = 110;
    const double quarter = floor_lr + (peak - floor_lr) * 0.5 * (1.0 + sqrt(0.5));
    assert_true(rel_diff(dsla_adamw_lr(&q, 35), quarter) < TOL_VALUE);

    /* Without warm-up the first step already runs at the peak's cosine. */
    p.warmup_steps = 0;
    assert_true(rel_diff(dsla_adamw_lr(&p, 0), peak) < TOL_VALUE);
    assert_true(rel_diff(dsla_adamw_lr(&p, 50), (peak + floor_lr) / 2) < TOL_VALUE);
}

static void test_clip_grad_norm(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    enum { ARRAYS = 3 };
    const size_t counts[ARRAYS] = {5, 17, 300};
    float *grads[ARRAYS], *copy[ARRAYS];
    double ss = 0.0;
    for (int a = 0; a < ARRAYS; a++) {
        grads[a] = f32_normal(&rng, counts[a], 1.0f);
        copy[a] = f32_poisoned(counts[a]);
        memcpy(copy[a], grads[a], sizeof(float) * counts[a]);
        for (size_t i = 0; i < counts[a]; i++)
            ss += (double)grads[a][i] * grads[a][i];
    }
    const double norm = sqrt(ss);

    /* Below the threshold, or with clipping off: the norm, nothing touched. */
    assert_true(rel_diff(dsla_cpu_clip_grad_norm(grads, counts, ARRAYS, 2 * norm), norm) <
                TOL_VALUE);
    assert_true(rel_diff(dsla_cpu_clip_grad_norm(grads, counts, ARRAYS, 0.0), norm) < TOL_VALUE);
    for (int a = 0; a < ARRAYS; a++)
        assert_memory_equal(grads[a], copy[a], sizeof(float) * counts[a]);

    /* Above: the norm before, then exactly max_norm after, direction kept. */
    const double max_norm = norm / 3.0;
    assert_true(rel_diff(dsla_cpu_clip_grad_norm(grads, counts, ARRAYS, max_norm), norm) <
                TOL_VALUE);
    double after = 0.0;
    for (int a = 0; a < ARRAYS; a++)
        for (size_t i = 0; i < counts[a]; i++) {
            after += (double)grads[a][i] * grads[a][i];
            assert_true(fabs(grads[a][i] - copy[a][i] * (max_norm / norm)) <= TOL_FLOAT);
        }
    assert_true(rel_diff(sqrt(after), max_norm) < TOL_FLOAT);

    /* A NaN gradient: reported, not spread. */
    memcpy(grads[1], copy[1], sizeof(float) * counts[1]);
    grads[1][3] = NAN;
    assert_true(isnan(dsla_cpu_clip_grad_norm(grads, counts, ARRAYS, 1e-3)));
    assert_true(grads[1][4] == copy[1][4]);

    for (int a = 0; a < ARRAYS; a++)
        free(grads[a]), free(copy[a]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_backward),    cmocka_unit_test(test_rmsnorm_backward),
        cmocka_unit_test(test_swiglu_backward),  cmocka_unit_test(test_mlp_block),
        cmocka_unit_test(test_causal_attention), cmocka_unit_test(test_nmse_loss),
        cmocka_unit_test(test_kl_div_loss),      cmocka_unit_test(test_cosine_similarity),
        cmocka_unit_test(test_adamw_two_steps),  cmocka_unit_test(test_adamw_defaults_and_schedule),
        cmocka_unit_test(test_clip_grad_norm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

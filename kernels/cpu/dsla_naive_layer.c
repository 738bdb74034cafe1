/* The whole DSLA layer in fp64 around the naive core: the oracle that the fp32 layer and the
 * reference vectors are held to. It allocates its activations per call (it is never on a serving
 * path) and recomputes the forward inside the backward, so it keeps nothing between calls. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dsla_internal.h"

/* q, k, v, a1, a2, mixed output, and the gradients of the same six. */
enum { DSLA_NAIVE_LAYER_ACTIVATIONS = 12, DSLA_NAIVE_LAYER_PROJECTIONS = 5 };

static int dsla_cpu_dsla_weights64_ok(const dsla_dsla_layer_weights64_t *w) {
    return w && w->wq && w->wk && w->wv && w->wo && w->wg1 && w->bg1 && w->wg2 && w->bg2 &&
           w->alpha;
}

/* act[0..5] = q, k, v, a1, a2, mix for x; one malloc of 12 activations, caller frees act[0]. */
static dsla_status_t dsla_cpu_dsla_naive_layer_run(const dsla_dsla_dims_t *dims, int model_dim,
                                                   const dsla_dsla_layer_weights64_t *w,
                                                   const double *x, const double *S1_0,
                                                   const double *S2_0, double *S1_T, double *S2_T,
                                                   double *act[DSLA_NAIVE_LAYER_ACTIVATIONS],
                                                   const char *who) {
    DSLA_TRY(dsla_cpu_dsla_check_dims(dims, who));
    if (model_dim < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: model_dim %d must be >= 1", who,
                          model_dim);
    if (!dsla_cpu_dsla_weights64_ok(w) || !x)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: every weight and x are required", who);
    const int rows = dims->batch * dims->tokens, D = model_dim;
    const int hd = dims->heads * dims->head_dim;
    size_t n = (size_t)rows * hd;
    double *mem = malloc(sizeof(double) * (n * DSLA_NAIVE_LAYER_ACTIVATIONS + 1));
    if (!mem) return dsla_error_oom("%s: activations of %zu doubles", who, n);
    for (int i = 0; i < DSLA_NAIVE_LAYER_ACTIVATIONS; i++)
        act[i] = mem + (size_t)i * n;
    const double *W[DSLA_NAIVE_LAYER_PROJECTIONS] = {w->wq, w->wk, w->wv, w->wg1, w->wg2};
    const double *bias[DSLA_NAIVE_LAYER_PROJECTIONS] = {NULL, NULL, NULL, w->bg1, w->bg2};
    for (int p = 0; p < DSLA_NAIVE_LAYER_PROJECTIONS; p++) {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, hd, D, 1.0, x, D, W[p], D, 0.0,
                    act[p], hd);
        if (!bias[p]) continue;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < hd; c++)
                act[p][(size_t)r * hd + c] += bias[p][c];
    }
    dsla_dsla_in64_t in = {act[0], act[1], act[2], act[3], act[4], w->alpha};
    dsla_status_t st = dsla_cpu_dsla_naive_forward(dims, &in, S1_0, S2_0, act[5], S1_T, S2_T);
    if (st != DSLA_OK) free(mem);
    return st;
}

dsla_status_t dsla_cpu_dsla_naive_layer_forward(const dsla_dsla_dims_t *dims, int model_dim,
                                                const dsla_dsla_layer_weights64_t *w,
                                                const double *x, const double *S1_0,
                                                const double *S2_0, double *y, double *S1_T,
                                                double *S2_T) {
    static const char who[] = "dsla_cpu_dsla_naive_layer_forward";
    if (!y) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: y is NULL", who);
    double *act[DSLA_NAIVE_LAYER_ACTIVATIONS];
    DSLA_TRY(
        dsla_cpu_dsla_naive_layer_run(dims, model_dim, w, x, S1_0, S2_0, S1_T, S2_T, act, who));
    const int rows = dims->batch * dims->tokens, hd = dims->heads * dims->head_dim;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, model_dim, hd, 1.0, act[5], hd,
                w->wo, hd, 0.0, y, model_dim);
    free(act[0]);
    return DSLA_OK;
}

dsla_status_t dsla_cpu_dsla_naive_layer_backward(const dsla_dsla_dims_t *dims, int model_dim,
                                                 const dsla_dsla_layer_weights64_t *w,
                                                 const double *x, const double *S1_0,
                                                 const double *S2_0, const double *dy,
                                                 const double *dS1_T, const double *dS2_T,
                                                 double *dx, const dsla_dsla_layer_grads64_t *g,
                                                 double *dS1_0, double *dS2_0) {
    static const char who[] = "dsla_cpu_dsla_naive_layer_backward";
    if (!dy || !dx || !g || !g->wq || !g->wk || !g->wv || !g->wo || !g->wg1 || !g->bg1 || !g->wg2 ||
        !g->bg2 || !g->alpha)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: dy, dx and every gradient are required",
                          who);
    double *act[DSLA_NAIVE_LAYER_ACTIVATIONS];
    DSLA_TRY(
        dsla_cpu_dsla_naive_layer_run(dims, model_dim, w, x, S1_0, S2_0, NULL, NULL, act, who));
    const int rows = dims->batch * dims->tokens, D = model_dim;
    const int hd = dims->heads * dims->head_dim;
    double *const *dact = act + DSLA_NAIVE_LAYER_ACTIVATIONS / 2; /* dq, dk, dv, da1, da2, dmix */
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, hd, rows, 1.0, dy, D, act[5], hd, 0.0,
                g->wo, hd);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, D, 1.0, dy, D, w->wo, hd, 0.0,
                dact[5], hd);
    dsla_dsla_in64_t in = {act[0], act[1], act[2], act[3], act[4], w->alpha};
    dsla_dsla_grad64_t cg = {dact[0], dact[1], dact[2], dact[3], dact[4], g->alpha};
    dsla_status_t st = dsla_cpu_dsla_naive_backward(dims, &in, S1_0, S2_0, dact[5], dS1_T, dS2_T,
                                                    &cg, dS1_0, dS2_0);
    if (st != DSLA_OK) {
        free(act[0]);
        return st;
    }
    const double *W[DSLA_NAIVE_LAYER_PROJECTIONS] = {w->wq, w->wk, w->wv, w->wg1, w->wg2};
    double *dW[DSLA_NAIVE_LAYER_PROJECTIONS] = {g->wq, g->wk, g->wv, g->wg1, g->wg2};
    for (int p = 0; p < DSLA_NAIVE_LAYER_PROJECTIONS; p++) {
        cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hd, D, rows, 1.0, dact[p], hd, x, D,
                    0.0, dW[p], D);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, hd, 1.0, dact[p], hd, W[p],
                    D, p == 0 ? 0.0 : 1.0, dx, D);
    }
    double *db[2] = {g->bg1, g->bg2};
    for (int i = 0; i < 2; i++) {
        for (int c = 0; c < hd; c++) {
            double sum = 0.0;
            for (int r = 0; r < rows; r++)
                sum += dact[3 + i][(size_t)r * hd + c];
            db[i][c] = sum;
        }
    }
    free(act[0]);
    return DSLA_OK;
}

/* The whole DSLA layer in fp32 around the chunked core: q, k, v = x W^T, a_i = x Wg_i^T + b_i, the
 * core, y = mix Wo^T; and its backward. Every buffer comes from the caller's workspace, carved once
 * by dsla_cpu_dsla_layer_workspace_init, so a training step allocates nothing. */
#include <cblas.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/dsla_internal.h"

/* Activation arrays in the layer workspace: q, k, v, a1, a2, mix and their six gradients. */
enum { DSLA_LAYER_ACTIVATIONS = 12 };
/* Each carved array starts on a 64-byte boundary (16 floats) for vector loads. */
enum { DSLA_LAYER_ALIGN_FLOATS = 16 };
/* Input projections: q, k, v, a1, a2. */
enum { DSLA_LAYER_PROJECTIONS = 5 };

static size_t dsla_cpu_dsla_round_up(size_t n) {
    return (n + DSLA_LAYER_ALIGN_FLOATS - 1) / DSLA_LAYER_ALIGN_FLOATS * DSLA_LAYER_ALIGN_FLOATS;
}

static size_t dsla_cpu_dsla_layer_floats(const dsla_dsla_dims_t *dims) {
    size_t act = (size_t)dims->batch * dims->tokens * dims->heads * dims->head_dim;
    return DSLA_LAYER_ACTIVATIONS * dsla_cpu_dsla_round_up(act) +
           dsla_cpu_dsla_round_up(dsla_cpu_dsla_chunked_workspace_floats(dims));
}

static dsla_status_t dsla_cpu_dsla_check_model_dim(int model_dim, const char *who) {
    if (model_dim < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: model_dim %d must be >= 1", who,
                          model_dim);
    return DSLA_OK;
}

size_t dsla_cpu_dsla_layer_workspace_bytes(const dsla_dsla_dims_t *dims, int model_dim) {
    static const char who[] = "dsla_cpu_dsla_layer_workspace_bytes";
    if (dsla_cpu_dsla_check_dims(dims, who) != DSLA_OK) return 0;
    if (dsla_cpu_dsla_check_model_dim(model_dim, who) != DSLA_OK) return 0;
    return sizeof(float) * dsla_cpu_dsla_layer_floats(dims);
}

dsla_status_t dsla_cpu_dsla_layer_workspace_init(dsla_dsla_layer_ws_t *ws,
                                                 const dsla_dsla_dims_t *dims, int model_dim,
                                                 void *mem, size_t bytes) {
    static const char who[] = "dsla_cpu_dsla_layer_workspace_init";
    DSLA_TRY(dsla_cpu_dsla_check_dims(dims, who));
    DSLA_TRY(dsla_cpu_dsla_check_model_dim(model_dim, who));
    size_t need = sizeof(float) * dsla_cpu_dsla_layer_floats(dims);
    if (!ws || !mem || bytes < need)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: workspace of %zu bytes, need %zu", who,
                          mem ? bytes : 0, need);
    if ((uintptr_t)mem % sizeof(float) != 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: workspace is not float-aligned", who);
    ws->dims = *dims;
    ws->model_dim = model_dim;
    size_t act =
        dsla_cpu_dsla_round_up((size_t)dims->batch * dims->tokens * dims->heads * dims->head_dim);
    float *p = mem;
    float **arrays[DSLA_LAYER_ACTIVATIONS] = {&ws->q,  &ws->k,   &ws->v,   &ws->a1,
                                              &ws->a2, &ws->mix, &ws->dq,  &ws->dk,
                                              &ws->dv, &ws->da1, &ws->da2, &ws->dmix};
    for (int i = 0; i < DSLA_LAYER_ACTIVATIONS; i++) {
        *arrays[i] = p;
        p += act;
    }
    ws->core = p;
    return DSLA_OK;
}

static int dsla_cpu_dsla_weights_ok(const dsla_dsla_layer_weights_t *w) {
    return w && w->wq && w->wk && w->wv && w->wo && w->wg1 && w->bg1 && w->wg2 && w->bg2 &&
           w->alpha;
}

/* dst [rows, hd] = x [rows, D] W^T (+ bias) */
static void dsla_cpu_dsla_project(const float *x, const float *W, const float *bias, int rows,
                                  int D, int hd, float *dst) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, hd, D, 1.0f, x, D, W, D, 0.0f, dst,
                hd);
    if (!bias) return;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < hd; c++)
            dst[(size_t)r * hd + c] += bias[c];
}

dsla_status_t dsla_cpu_dsla_layer_forward(dsla_dsla_layer_ws_t *ws,
                                          const dsla_dsla_layer_weights_t *w, const float *x,
                                          const float *S1_0, const float *S2_0, float *y,
                                          float *S1_T, float *S2_T) {
    static const char who[] = "dsla_cpu_dsla_layer_forward";
    if (!ws || !ws->core || !dsla_cpu_dsla_weights_ok(w) || !x || !y)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: ws (initialised), every weight, x and y are required", who);
    const dsla_dsla_dims_t *dims = &ws->dims;
    const int rows = dims->batch * dims->tokens, D = ws->model_dim;
    const int hd = dims->heads * dims->head_dim;
    dsla_cpu_dsla_project(x, w->wq, NULL, rows, D, hd, ws->q);
    dsla_cpu_dsla_project(x, w->wk, NULL, rows, D, hd, ws->k);
    dsla_cpu_dsla_project(x, w->wv, NULL, rows, D, hd, ws->v);
    dsla_cpu_dsla_project(x, w->wg1, w->bg1, rows, D, hd, ws->a1);
    dsla_cpu_dsla_project(x, w->wg2, w->bg2, rows, D, hd, ws->a2);
    dsla_dsla_in_t in = {ws->q, ws->k, ws->v, ws->a1, ws->a2, w->alpha};
    DSLA_TRY(dsla_cpu_dsla_chunked_forward(dims, &in, S1_0, S2_0, ws->mix, S1_T, S2_T, ws->core));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, D, hd, 1.0f, ws->mix, hd, w->wo, hd,
                0.0f, y, D);
    return DSLA_OK;
}

dsla_status_t dsla_cpu_dsla_layer_backward(dsla_dsla_layer_ws_t *ws,
                                           const dsla_dsla_layer_weights_t *w, const float *x,
                                           const float *S1_0, const float *S2_0, const float *dy,
                                           const float *dS1_T, const float *dS2_T, float *dx,
                                           const dsla_dsla_layer_grads_t *g, float *dS1_0,
                                           float *dS2_0) {
    static const char who[] = "dsla_cpu_dsla_layer_backward";
    if (!ws || !ws->core || !dsla_cpu_dsla_weights_ok(w) || !x || !dy || !dx || !g || !g->wq ||
        !g->wk || !g->wv || !g->wo || !g->wg1 || !g->bg1 || !g->wg2 || !g->bg2 || !g->alpha)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: ws, every weight, x, dy, dx and every gradient are required", who);
    const dsla_dsla_dims_t *dims = &ws->dims;
    const int rows = dims->batch * dims->tokens, D = ws->model_dim;
    const int hd = dims->heads * dims->head_dim;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, D, hd, rows, 1.0f, dy, D, ws->mix, hd,
                0.0f, g->wo, hd);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, D, 1.0f, dy, D, w->wo, hd,
                0.0f, ws->dmix, hd);
    dsla_dsla_in_t in = {ws->q, ws->k, ws->v, ws->a1, ws->a2, w->alpha};
    dsla_dsla_grad_t cg = {ws->dq, ws->dk, ws->dv, ws->da1, ws->da2, g->alpha};
    DSLA_TRY(dsla_cpu_dsla_chunked_backward(dims, &in, S1_0, S2_0, ws->dmix, dS1_T, dS2_T, &cg,
                                            dS1_0, dS2_0, ws->core));
    const float *dp[DSLA_LAYER_PROJECTIONS] = {ws->dq, ws->dk, ws->dv, ws->da1, ws->da2};
    const float *W[DSLA_LAYER_PROJECTIONS] = {w->wq, w->wk, w->wv, w->wg1, w->wg2};
    float *dW[DSLA_LAYER_PROJECTIONS] = {g->wq, g->wk, g->wv, g->wg1, g->wg2};
    for (int p = 0; p < DSLA_LAYER_PROJECTIONS; p++) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, hd, D, rows, 1.0f, dp[p], hd, x, D,
                    0.0f, dW[p], D);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, hd, 1.0f, dp[p], hd, W[p],
                    D, p == 0 ? 0.0f : 1.0f, dx, D);
    }
    const float *da[2] = {ws->da1, ws->da2};
    float *db[2] = {g->bg1, g->bg2};
    for (int i = 0; i < 2; i++) {
        for (int c = 0; c < hd; c++) {
            double sum = 0.0;
            for (int r = 0; r < rows; r++)
                sum += da[i][(size_t)r * hd + c];
            db[i][c] = (float)sum;
        }
    }
    return DSLA_OK;
}

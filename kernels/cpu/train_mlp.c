/* The frozen MLP half of a Llama decoder layer, forward and activation backward, so the distiller
 * can carry the loss gradient from a layer's output back to the DSLA sublayer's residual stream.
 *
 * Workspace (rows of each): xn [dim] the normed input, then its gradient; gate, up [hidden] the two
 * projections, then their gradients (in place); act [hidden] the SwiGLU output, then its gradient.
 */
#include "kernels/kernels_train.h"

#include <string.h>

#include "kernels/kernels.h"

typedef struct {
    float *xn, *gate, *up, *act;
} dsla_mlp_ws_t;

static dsla_mlp_ws_t dsla_mlp_ws_carve(const dsla_mlp_block_t *mlp, int rows, float *work) {
    const size_t d = (size_t)rows * mlp->dim, f = (size_t)rows * mlp->hidden;
    dsla_mlp_ws_t ws = {work, work + d, work + d + f, work + d + 2 * f};
    return ws;
}

size_t dsla_cpu_mlp_block_workspace_floats(const dsla_mlp_block_t *mlp, int rows) {
    if (rows <= 0) return 0;
    return (size_t)rows * ((size_t)mlp->dim + 3 * (size_t)mlp->hidden);
}

/* Normed input and the two projections: what both directions start from. */
static void dsla_mlp_front(const dsla_mlp_ws_t *ws, const float *h_mid, const dsla_mlp_block_t *mlp,
                           int rows) {
    dsla_cpu_rmsnorm(ws->xn, h_mid, mlp->norm_w, rows, mlp->dim, mlp->eps);
    dsla_cpu_gemm(ws->gate, ws->xn, mlp->w_gate, rows, mlp->hidden, mlp->dim);
    dsla_cpu_gemm(ws->up, ws->xn, mlp->w_up, rows, mlp->hidden, mlp->dim);
}

void dsla_cpu_mlp_block_forward(float *h_out, const float *h_mid, const dsla_mlp_block_t *mlp,
                                int rows, float *work) {
    if (rows <= 0) return;
    const dsla_mlp_ws_t ws = dsla_mlp_ws_carve(mlp, rows, work);
    dsla_mlp_front(&ws, h_mid, mlp, rows);
    dsla_cpu_swiglu(ws.act, ws.gate, ws.up, rows, mlp->hidden, mlp->hidden);
    dsla_cpu_gemm(h_out, ws.act, mlp->w_down, rows, mlp->dim, mlp->hidden);
    dsla_cpu_add(h_out, h_out, h_mid, (size_t)rows * mlp->dim);
}

void dsla_cpu_mlp_block_backward(float *dh_mid, const float *dh_out, const float *h_mid,
                                 const dsla_mlp_block_t *mlp, int rows, float *work) {
    if (rows <= 0) return;
    const int D = mlp->dim, F = mlp->hidden;
    const dsla_mlp_ws_t ws = dsla_mlp_ws_carve(mlp, rows, work);
    dsla_mlp_front(&ws, h_mid, mlp, rows);
    dsla_cpu_gemm_backward_input(ws.act, dh_out, mlp->w_down, rows, D, F, false);
    dsla_cpu_swiglu_backward(ws.gate, ws.up, ws.act, ws.gate, ws.up, rows, F, F);
    dsla_cpu_gemm_backward_input(ws.xn, ws.gate, mlp->w_gate, rows, F, D, false);
    dsla_cpu_gemm_backward_input(ws.xn, ws.up, mlp->w_up, rows, F, D, true);
    /* The residual path carries dh_out through unchanged; the norm's gradient adds onto it. */
    if (dh_mid != dh_out) memcpy(dh_mid, dh_out, sizeof(float) * (size_t)rows * D);
    dsla_cpu_rmsnorm_backward(dh_mid, NULL, ws.xn, h_mid, mlp->norm_w, rows, D, mlp->eps, true);
}

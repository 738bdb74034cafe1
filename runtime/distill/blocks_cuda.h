/* The device passes of a decoder layer's parts that both the trained layer (distill_cuda.c) and
 * the frozen layers after it (logit_tail_cuda.c, the logit KL term) run: the MLP block forward and
 * backward, and a DSLA mixer's forward. Activations are fp32 [rows, width] row-major, weights in
 * the Linear (out, in) layout, all device pointers; every op is enqueued on ctx->stream with
 * ctx->math for the GEMMs (F32: the CPU's numbers; TF32: tensor cores).
 *
 * Contract: no allocation, no synchronisation. Internal to runtime/distill; CUDA builds only. */
#ifndef DSLA_DISTILL_BLOCKS_CUDA_H
#define DSLA_DISTILL_BLOCKS_CUDA_H

#ifdef DSLA_HAVE_CUDA

#include "kernels/kernels_cuda_train.h"

typedef struct {
    dsla_cuda_stream_t stream;
    dsla_cuda_blas_t *blas;
    dsla_cuda_dsla_math_t math;
} dsla_dev_ctx_t;

/* The MLP block h_out = h_mid + W_down swiglu(W_gate xm, W_up xm), xm = RMSNorm(h_mid). */
typedef struct {
    const float *norm, *w_gate, *w_up, *w_down;
    int D, I;
    float eps;
} dsla_dev_mlp_t;

/* What the MLP block's forward leaves for its backward: xm [rows, D], gate, up, act [rows, I]. */
typedef struct {
    float *xm, *gate, *up, *act;
} dsla_dev_mlp_acts_t;

/* The block's forward from h_mid; h_out NULL stops before the down projection (a backward's
 * recomputation needs only gate and up). h_out must not alias h_mid. */
dsla_status_t dsla_dev_mlp_forward(const dsla_dev_ctx_t *x, const dsla_dev_mlp_t *m,
                                   const float *h_mid, float *h_out, const dsla_dev_mlp_acts_t *a,
                                   int rows);

/* dh_mid (=) the gradient at h_mid from dh_out's at h_out, after the forward left gate and up in
 * a (it overwrites a->gate, a->up, a->act with their gradients and a->xm with xm's). dh_mid may
 * alias dh_out. */
dsla_status_t dsla_dev_mlp_backward(const dsla_dev_ctx_t *x, const dsla_dev_mlp_t *m, float *dh_mid,
                                    const float *dh_out, const float *h_mid,
                                    const dsla_dev_mlp_acts_t *a, int rows);

/* A DSLA layer's weights on the device (dsla_dsla_layer_t's tensors; alpha: 2 floats). */
typedef struct {
    const float *wq, *wk, *wv, *wo, *wg1, *bg1, *wg2, *bg2, *alpha;
} dsla_dev_dsla_t;

/* The mixer's projections and core output: q, k, v, a1, a2, o [rows, H*d]. */
typedef struct {
    float *q, *k, *v, *a1, *a2, *o;
} dsla_dev_dsla_acts_t;

/* h_mid = h + Wo core(q, k, v, a1, a2) with q = Wq x, ..., a1 = Wg1 x + bg1, a2 = Wg2 x + bg2:
 * the DSLA mixer and its residual for the normed input x [rows, D] (rows = dims->batch *
 * dims->tokens). The chunked core's states stay in workspace for a backward right after. */
dsla_status_t dsla_dev_dsla_forward(const dsla_dev_ctx_t *x, const dsla_dev_dsla_t *w,
                                    const dsla_dsla_dims_t *dims, int D, const float *xn,
                                    const dsla_dev_dsla_acts_t *a, const float *h, float *h_mid,
                                    void *workspace, size_t workspace_bytes);

/* The core's inputs as the chunked kernels take them. */
dsla_cuda_dsla_in_t dsla_dev_dsla_in(const dsla_dev_dsla_t *w, const dsla_dev_dsla_acts_t *a);

#endif /* DSLA_HAVE_CUDA */

#endif

/* The device passes shared by the trained layer and the logit term's frozen layers
 * (blocks_cuda.h). */
#include "runtime/distill/blocks_cuda.h"

#ifdef DSLA_HAVE_CUDA

dsla_status_t dsla_dev_mlp_forward(const dsla_dev_ctx_t *x, const dsla_dev_mlp_t *m,
                                   const float *h_mid, float *h_out, const dsla_dev_mlp_acts_t *a,
                                   int rows) {
    dsla_cuda_stream_t s = x->stream;
    const int D = m->D, I = m->I;
    DSLA_TRY(dsla_cuda_rmsnorm(s, a->xm, DSLA_DTYPE_F32, h_mid, m->norm, rows, D, m->eps));
    DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, a->gate, a->xm, false, m->w_gate, true, rows, I, D,
                                0.0f, x->math));
    DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, a->up, a->xm, false, m->w_up, true, rows, I, D, 0.0f,
                                x->math));
    if (!h_out) return DSLA_OK;
    DSLA_TRY(dsla_cuda_swiglu(s, a->act, DSLA_DTYPE_F32, a->gate, a->up, rows, I, I));
    DSLA_TRY(dsla_cuda_copy(h_out, h_mid, (size_t)rows * D * sizeof(float), s));
    return dsla_cuda_gemm_f32(x->blas, s, h_out, a->act, false, m->w_down, true, rows, D, I, 1.0f,
                              x->math);
}

dsla_status_t dsla_dev_mlp_backward(const dsla_dev_ctx_t *x, const dsla_dev_mlp_t *m, float *dh_mid,
                                    const float *dh_out, const float *h_mid,
                                    const dsla_dev_mlp_acts_t *a, int rows) {
    dsla_cuda_stream_t s = x->stream;
    dsla_cuda_blas_t *h = x->blas;
    const int D = m->D, I = m->I;
    /* act <- d act, gate and up <- their gradients in place, xm <- d xm, then the norm's
     * gradient onto the residual's. */
    DSLA_TRY(dsla_cuda_gemm_f32(h, s, a->act, dh_out, false, m->w_down, false, rows, I, D, 0.0f,
                                x->math));
    DSLA_TRY(dsla_cuda_swiglu_backward(s, a->gate, a->up, a->act, a->gate, a->up, rows, I, I));
    DSLA_TRY(dsla_cuda_gemm_f32(h, s, a->xm, a->gate, false, m->w_gate, false, rows, D, I, 0.0f,
                                x->math));
    DSLA_TRY(
        dsla_cuda_gemm_f32(h, s, a->xm, a->up, false, m->w_up, false, rows, D, I, 1.0f, x->math));
    if (dh_mid != dh_out)
        DSLA_TRY(dsla_cuda_copy(dh_mid, dh_out, (size_t)rows * D * sizeof(float), s));
    return dsla_cuda_rmsnorm_backward(s, dh_mid, a->xm, h_mid, m->norm, rows, D, m->eps, true);
}

dsla_cuda_dsla_in_t dsla_dev_dsla_in(const dsla_dev_dsla_t *w, const dsla_dev_dsla_acts_t *a) {
    return (dsla_cuda_dsla_in_t){a->q, a->k, a->v, a->a1, a->a2, DSLA_DTYPE_F32, w->alpha};
}

dsla_status_t dsla_dev_dsla_forward(const dsla_dev_ctx_t *x, const dsla_dev_dsla_t *w,
                                    const dsla_dsla_dims_t *dims, int D, const float *xn,
                                    const dsla_dev_dsla_acts_t *a, const float *h, float *h_mid,
                                    void *workspace, size_t workspace_bytes) {
    dsla_cuda_stream_t s = x->stream;
    const int R = dims->batch * dims->tokens, hd = dims->heads * dims->head_dim;
    const float *proj_w[5] = {w->wq, w->wk, w->wv, w->wg1, w->wg2};
    float *proj_y[5] = {a->q, a->k, a->v, a->a1, a->a2};
    for (int i = 0; i < 5; i++)
        DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, proj_y[i], xn, false, proj_w[i], true, R, hd, D,
                                    0.0f, x->math));
    DSLA_TRY(dsla_cuda_add_row_bias(s, a->a1, hd, w->bg1, R, hd));
    DSLA_TRY(dsla_cuda_add_row_bias(s, a->a2, hd, w->bg2, R, hd));
    const dsla_cuda_dsla_in_t in = dsla_dev_dsla_in(w, a);
    DSLA_TRY(dsla_cuda_dsla_chunked_forward(s, dims, &in, x->math, NULL, NULL, a->o, NULL, NULL,
                                            workspace, workspace_bytes));
    DSLA_TRY(dsla_cuda_copy(h_mid, h, (size_t)R * D * sizeof(float), s));
    return dsla_cuda_gemm_f32(x->blas, s, h_mid, a->o, false, w->wo, true, R, D, hd, 1.0f, x->math);
}

#endif /* DSLA_HAVE_CUDA */

/* The frozen rest of the hybrid after a trained layer on the GPU, forward and backward to the
 * layer's output, for the logit KL term (logit_tail_cuda.h). The passes of logit_tail.c, layer by
 * layer:
 *   x = RMSNorm(h), h_mid = h + mixer(x), h_next = h_mid + MLP(RMSNorm(h_mid)).
 * RoPE's transpose, which the backward needs, is the rotation by the negated angle: the rope
 * kernel forms its angles from the positions, so the backward passes the negated positions. */
#include "runtime/distill/logit_tail_cuda.h"

#ifdef DSLA_HAVE_CUDA

#include <stdlib.h>

#include "runtime/distill/backend.h"
#include "runtime/distill/logit_tail.h"

/* Rows of logits formed at once: the teacher's, the hybrid's (then its gradient) are two blocks of
 * this many rows of vocab floats (256 MB at a 32K vocabulary), whatever the batch. */
enum { TAIL_CHUNK_ROWS = 1024 };

/* One later layer's frozen weights on the device. */
typedef struct {
    const float *attn_norm, *wq, *wk, *wv, *wo;
    dsla_dev_mlp_t mlp;
    dsla_dev_dsla_t dsla; /* when the layer runs as DSLA */
} tail_layer_t;

/* Device allocations the tail owns: every later layer's tensors (9 each), a DSLA block each, the
 * final norm, the head, the RoPE tables and positions, the activations. */
enum { TAIL_OWNED_MAX = 11 * DSLA_LAYER_ORDER_MAX + 48 };

struct dsla_logit_tail_cuda {
    dsla_dev_ctx_t x;
    int layer, L, batch, T, D, H, Hkv, d, V;
    float eps, temperature;
    dsla_layer_kind_t kinds[DSLA_LAYER_ORDER_MAX];
    tail_layer_t layers[DSLA_LAYER_ORDER_MAX];
    const float *final_norm, *head, *inv_freq, *alpha_one;
    int32_t *pos, *neg_pos; /* [batch * T]: each row's position, and its negation */
    /* stream(j): the stream entering layer j (layer + 1 .. L - 1), then leaving the last (j = L) */
    float *inputs;
    float *xn, *h_mid, *dxn, *attn, *probs, *logits_s, *logits_t, *xn_t, *dalpha;
    dsla_dev_dsla_acts_t a; /* q, k, v (attention: k, v narrower), a1, a2, o */
    float *dq, *dk, *dv, *da1, *da2;
    dsla_dev_mlp_acts_t m;
    void *ws;
    size_t ws_bytes;
    void *owned[TAIL_OWNED_MAX];
    int n_owned;
};

void dsla_logit_tail_cuda_destroy(dsla_logit_tail_cuda_t **tp) {
    if (!tp || !*tp) return;
    dsla_logit_tail_cuda_t *t = *tp;
    for (int i = 0; i < t->n_owned; i++)
        dsla_cuda_free(&t->owned[i]);
    free(t);
    *tp = NULL;
}

static dsla_status_t own(dsla_logit_tail_cuda_t *t, void **p, size_t bytes) {
    if (t->n_owned == TAIL_OWNED_MAX)
        return dsla_error(DSLA_ERR_INTERNAL, "logit term: more than %d device buffers",
                          TAIL_OWNED_MAX);
    DSLA_TRY(dsla_cuda_malloc(p, bytes));
    t->owned[t->n_owned++] = *p;
    return DSLA_OK;
}

static dsla_status_t alloc_f(dsla_logit_tail_cuda_t *t, float **p, size_t floats) {
    return own(t, (void **)p, floats * sizeof(float));
}

/* A device copy of n host floats, owned by the tail. */
static dsla_status_t upload(dsla_logit_tail_cuda_t *t, const float **dst, const float *src,
                            size_t n) {
    float *p;
    DSLA_TRY(alloc_f(t, &p, n));
    *dst = p;
    return dsla_cuda_copy(p, src, n * sizeof(float), t->x.stream);
}

static dsla_status_t upload_layer(dsla_logit_tail_cuda_t *t, const dsla_model_t *model, int j,
                                  const dsla_dsla_layer_t *installed) {
    const dsla_model_config_t *c = dsla_model_config(model);
    const dsla_llama_layer_t *w = dsla_model_layer(model, j);
    const size_t D = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    const size_t qw = (size_t)c->num_heads * c->head_dim,
                 kvw = (size_t)c->num_kv_heads * c->head_dim;
    tail_layer_t *l = &t->layers[j];
    l->mlp = (dsla_dev_mlp_t){.D = c->hidden_size, .I = c->intermediate_size, .eps = t->eps};
    DSLA_TRY(upload(t, &l->attn_norm, w->attn_norm, D));
    DSLA_TRY(upload(t, &l->mlp.norm, w->mlp_norm, D));
    DSLA_TRY(upload(t, &l->mlp.w_gate, w->w_gate, I * D));
    DSLA_TRY(upload(t, &l->mlp.w_up, w->w_up, I * D));
    DSLA_TRY(upload(t, &l->mlp.w_down, w->w_down, D * I));
    if (t->kinds[j] != DSLA_LAYER_DSLA) {
        DSLA_TRY(upload(t, &l->wq, w->wq, qw * D));
        DSLA_TRY(upload(t, &l->wk, w->wk, kvw * D));
        DSLA_TRY(upload(t, &l->wv, w->wv, kvw * D));
        return upload(t, &l->wo, w->wo, D * qw);
    }
    if (!installed)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "logit term: layer %d runs as DSLA but no DSLA layer is installed", j);
    const float *block;
    DSLA_TRY(upload(t, &block, installed->data, installed->numel));
#define AT(name) (block + (installed->name - installed->data))
    l->dsla =
        (dsla_dev_dsla_t){AT(wq),  AT(wk),  AT(wv),
                          AT(wo),  AT(wg1), AT(bg1),
                          AT(wg2), AT(bg2), installed->single_state ? t->alpha_one : AT(alpha)};
#undef AT
    return DSLA_OK;
}

static dsla_status_t create(dsla_logit_tail_cuda_t *t, const dsla_model_t *model,
                            const dsla_dsla_layer_t *const *installed) {
    const dsla_model_config_t *c = dsla_model_config(model);
    const size_t rows = (size_t)t->batch * t->T, D = (size_t)t->D;
    const size_t qw = (size_t)t->H * t->d, V = (size_t)t->V;
    const size_t chunk = rows < TAIL_CHUNK_ROWS ? rows : TAIL_CHUNK_ROWS;
    const size_t I = (size_t)c->intermediate_size;
    DSLA_TRY(upload(t, &t->alpha_one, dsla_distill_history_only_alpha, 2));
    for (int j = t->layer + 1; j < t->L; j++)
        DSLA_TRY(upload_layer(t, model, j, installed ? installed[j] : NULL));
    DSLA_TRY(upload(t, &t->final_norm, dsla_model_final_norm(model), D));
    DSLA_TRY(upload(t, &t->head, dsla_model_lm_head(model), V * D));
    DSLA_TRY(upload(t, &t->inv_freq, dsla_model_inv_freq(model), (size_t)t->d / 2));
    int32_t *pos = malloc(2 * rows * sizeof *pos);
    if (!pos) return dsla_error_oom("the logit term's positions");
    for (size_t r = 0; r < rows; r++) {
        pos[r] = (int32_t)(r % (size_t)t->T);
        pos[rows + r] = -pos[r];
    }
    dsla_status_t st = own(t, (void **)&t->pos, 2 * rows * sizeof *pos);
    if (st == DSLA_OK) st = dsla_cuda_copy(t->pos, pos, 2 * rows * sizeof *pos, t->x.stream);
    /* The copy from pageable memory is synchronous, so pos may go now. */
    free(pos);
    DSLA_TRY(st);
    t->neg_pos = t->pos + rows;
    const struct {
        float **p;
        size_t n;
    } bufs[] = {
        {&t->inputs, (size_t)(t->L - t->layer) * rows * D},
        {&t->xn, rows * D},
        {&t->h_mid, rows * D},
        {&t->dxn, rows * D},
        {&t->attn, rows * qw},
        {&t->probs, (size_t)t->batch * t->H * t->T * t->T},
        {&t->a.q, rows * qw},
        {&t->a.k, rows * qw},
        {&t->a.v, rows * qw},
        {&t->a.a1, rows * qw},
        {&t->a.a2, rows * qw},
        {&t->a.o, rows * qw},
        {&t->dq, rows * qw},
        {&t->dk, rows * qw},
        {&t->dv, rows * qw},
        {&t->da1, rows * qw},
        {&t->da2, rows * qw},
        {&t->m.xm, rows * D},
        {&t->m.gate, rows * I},
        {&t->m.up, rows * I},
        {&t->m.act, rows * I},
        {&t->logits_s, chunk * V},
        {&t->logits_t, chunk * V},
        {&t->xn_t, chunk * D},
        {&t->dalpha, 2},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        DSLA_TRY(alloc_f(t, bufs[i].p, bufs[i].n));
    const dsla_dsla_dims_t dims = {t->batch, t->T, t->H, t->d};
    t->ws_bytes = dsla_cuda_dsla_chunked_workspace_bytes(&dims);
    return own(t, &t->ws, t->ws_bytes);
}

dsla_status_t dsla_logit_tail_cuda_create(dsla_logit_tail_cuda_t **out, const dsla_dev_ctx_t *ctx,
                                          const dsla_model_t *model, int layer,
                                          const dsla_layer_kind_t *kinds,
                                          const dsla_dsla_layer_t *const *installed, int batch,
                                          int seq_len, float temperature) {
    *out = NULL;
    DSLA_TRY(dsla_logit_tail_check(model, layer, batch, seq_len, temperature));
    const dsla_model_config_t *c = dsla_model_config(model);
    const int L = c->num_layers;
    if (seq_len > DSLA_CUDA_TRAIN_ATTENTION_MAX_T)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "--seq-len %d: the logit term on the GPU takes sequences of at most %d "
                          "tokens (its attention keeps every score)",
                          seq_len, DSLA_CUDA_TRAIN_ATTENTION_MAX_T);
    dsla_logit_tail_cuda_t *t = calloc(1, sizeof *t);
    if (!t) return dsla_error_oom("the logit term");
    *t = (dsla_logit_tail_cuda_t){.x = *ctx,
                                  .layer = layer,
                                  .L = L,
                                  .batch = batch,
                                  .T = seq_len,
                                  .D = c->hidden_size,
                                  .H = c->num_heads,
                                  .Hkv = c->num_kv_heads,
                                  .d = c->head_dim,
                                  .V = c->vocab_size,
                                  .eps = c->rms_norm_eps,
                                  .temperature = temperature};
    for (int j = 0; j < L; j++)
        t->kinds[j] = kinds ? kinds[j] : DSLA_LAYER_ATTN;
    dsla_status_t st = create(t, model, installed);
    if (st == DSLA_OK) st = dsla_cuda_stream_sync(ctx->stream);
    if (st != DSLA_OK) {
        dsla_logit_tail_cuda_destroy(&t);
        return dsla_error_wrap(
            st, "the logit term on the GPU (%d sequences of %d tokens after layer %d)", batch,
            seq_len, layer);
    }
    *out = t;
    return DSLA_OK;
}

static float *stream(const dsla_logit_tail_cuda_t *t, int j) {
    return t->inputs + (size_t)(j - t->layer - 1) * t->batch * t->T * t->D;
}

/* Layer j's forward from h [rows, D] into h_next (NULL: stop after the MLP's gate and up), leaving
 * what its backward reads (xn, h_mid, the mixer's activations, the MLP's). */
static dsla_status_t layer_forward(dsla_logit_tail_cuda_t *t, int j, const float *h, float *h_next,
                                   int batch) {
    const tail_layer_t *w = &t->layers[j];
    const dsla_dev_ctx_t *x = &t->x;
    const int rows = batch * t->T, D = t->D, H = t->H, Hkv = t->Hkv, d = t->d;
    DSLA_TRY(dsla_cuda_rmsnorm(x->stream, t->xn, DSLA_DTYPE_F32, h, w->attn_norm, rows, D, t->eps));
    if (t->kinds[j] == DSLA_LAYER_DSLA) {
        const dsla_dsla_dims_t dims = {batch, t->T, H, d};
        DSLA_TRY(dsla_dev_dsla_forward(x, &w->dsla, &dims, D, t->xn, &t->a, h, t->h_mid, t->ws,
                                       t->ws_bytes));
    } else {
        const float *proj_w[3] = {w->wq, w->wk, w->wv};
        float *proj_y[3] = {t->a.q, t->a.k, t->a.v};
        const int width[3] = {H * d, Hkv * d, Hkv * d};
        for (int i = 0; i < 3; i++)
            DSLA_TRY(dsla_cuda_gemm_f32(x->blas, x->stream, proj_y[i], t->xn, false, proj_w[i],
                                        true, rows, width[i], D, 0.0f, x->math));
        DSLA_TRY(dsla_cuda_rope(x->stream, t->a.q, rows, H * d, H, d, t->pos, t->inv_freq));
        DSLA_TRY(dsla_cuda_rope(x->stream, t->a.k, rows, Hkv * d, Hkv, d, t->pos, t->inv_freq));
        DSLA_TRY(dsla_cuda_causal_attention_train_forward(x->stream, t->attn, t->probs, t->a.q,
                                                          t->a.k, t->a.v, batch, t->T, H, Hkv, d));
        DSLA_TRY(dsla_cuda_copy(t->h_mid, h, (size_t)rows * D * sizeof(float), x->stream));
        DSLA_TRY(dsla_cuda_gemm_f32(x->blas, x->stream, t->h_mid, t->attn, false, w->wo, true, rows,
                                    D, H * d, 1.0f, x->math));
    }
    return dsla_dev_mlp_forward(x, &w->mlp, t->h_mid, h_next, &t->m, rows);
}

/* dh [rows, D]: the gradient w.r.t. layer j's output in, w.r.t. its input h out (in place). */
static dsla_status_t layer_backward(dsla_logit_tail_cuda_t *t, int j, const float *h, float *dh,
                                    int batch) {
    const tail_layer_t *w = &t->layers[j];
    const dsla_dev_ctx_t *x = &t->x;
    dsla_cuda_stream_t s = x->stream;
    const int rows = batch * t->T, D = t->D, H = t->H, Hkv = t->Hkv, d = t->d;
    DSLA_TRY(layer_forward(t, j, h, NULL, batch));
    DSLA_TRY(dsla_dev_mlp_backward(x, &w->mlp, dh, dh, t->h_mid, &t->m, rows));
    if (t->kinds[j] == DSLA_LAYER_DSLA) {
        const dsla_dsla_dims_t dims = {batch, t->T, H, d};
        float *dout = t->attn; /* the mixer's core gradient */
        DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, dout, dh, false, w->dsla.wo, false, rows, H * d, D,
                                    0.0f, x->math));
        const dsla_cuda_dsla_in_t in = dsla_dev_dsla_in(&w->dsla, &t->a);
        const dsla_dsla_grad_t grad = {t->dq, t->dk, t->dv, t->da1, t->da2, t->dalpha};
        DSLA_TRY(dsla_cuda_dsla_chunked_backward_after_forward(s, &dims, &in, x->math, NULL, NULL,
                                                               dout, NULL, NULL, &grad, NULL, NULL,
                                                               t->ws, t->ws_bytes));
        const float *dproj[5] = {t->dq, t->dk, t->dv, t->da1, t->da2};
        const float *proj_w[5] = {w->dsla.wq, w->dsla.wk, w->dsla.wv, w->dsla.wg1, w->dsla.wg2};
        for (int i = 0; i < 5; i++)
            DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, t->dxn, dproj[i], false, proj_w[i], false, rows,
                                        D, H * d, i ? 1.0f : 0.0f, x->math));
    } else {
        float *dattn = t->attn; /* the forward's output is spent: its gradient goes there */
        DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, dattn, dh, false, w->wo, false, rows, H * d, D,
                                    0.0f, x->math));
        DSLA_TRY(dsla_cuda_causal_attention_train_backward(s, t->dq, t->dk, t->dv, dattn, t->probs,
                                                           t->a.q, t->a.k, t->a.v, batch, t->T, H,
                                                           Hkv, d));
        DSLA_TRY(dsla_cuda_rope(s, t->dq, rows, H * d, H, d, t->neg_pos, t->inv_freq));
        DSLA_TRY(dsla_cuda_rope(s, t->dk, rows, Hkv * d, Hkv, d, t->neg_pos, t->inv_freq));
        const float *dproj[3] = {t->dq, t->dk, t->dv};
        const float *proj_w[3] = {w->wq, w->wk, w->wv};
        const int width[3] = {H * d, Hkv * d, Hkv * d};
        for (int i = 0; i < 3; i++)
            DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, t->dxn, dproj[i], false, proj_w[i], false, rows,
                                        D, width[i], i ? 1.0f : 0.0f, x->math));
    }
    /* The residual carries dh through; the input norm's gradient adds onto it. */
    return dsla_cuda_rmsnorm_backward(s, dh, t->dxn, h, w->attn_norm, rows, D, t->eps, true);
}

/* The KL of the final norm and head over all rows, chunk by chunk, into *kl; with dh, its
 * gradient w.r.t. the final stream h (=). */
static dsla_status_t head_kl(dsla_logit_tail_cuda_t *t, const float *h, const float *teacher_final,
                             int rows, double *kl, float *dh) {
    const dsla_dev_ctx_t *x = &t->x;
    dsla_cuda_stream_t s = x->stream;
    const int D = t->D, V = t->V;
    DSLA_TRY(dsla_cuda_rmsnorm(s, t->xn, DSLA_DTYPE_F32, h, t->final_norm, rows, D, t->eps));
    for (int r0 = 0; r0 < rows; r0 += TAIL_CHUNK_ROWS) {
        const int n = rows - r0 < TAIL_CHUNK_ROWS ? rows - r0 : TAIL_CHUNK_ROWS;
        DSLA_TRY(dsla_cuda_rmsnorm(s, t->xn_t, DSLA_DTYPE_F32, teacher_final + (size_t)r0 * D,
                                   t->final_norm, n, D, t->eps));
        DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, t->logits_t, t->xn_t, false, t->head, true, n, V, D,
                                    0.0f, x->math));
        DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, t->logits_s, t->xn + (size_t)r0 * D, false, t->head,
                                    true, n, V, D, 0.0f, x->math));
        /* Averaged over all rows, not the chunk's; the student's logits become their gradient. */
        float *dlogits = dh ? t->logits_s : NULL;
        DSLA_TRY(dsla_cuda_kl_div_loss(s, kl, dlogits, t->logits_s, t->logits_t, n, V,
                                       t->temperature, 1.0 / rows));
        if (dh)
            DSLA_TRY(dsla_cuda_gemm_f32(x->blas, s, t->dxn + (size_t)r0 * D, dlogits, false,
                                        t->head, false, n, D, V, 0.0f, x->math));
    }
    if (!dh) return DSLA_OK;
    return dsla_cuda_rmsnorm_backward(s, dh, t->dxn, h, t->final_norm, rows, D, t->eps, false);
}

dsla_status_t dsla_logit_tail_cuda_kl(dsla_logit_tail_cuda_t *t, const float *h_out,
                                      const float *teacher_final, int batch, double *kl,
                                      float *dh_out) {
    if (batch < 1 || batch > t->batch)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "logit term: batch %d is outside 1..%d", batch,
                          t->batch);
    const int rows = batch * t->T;
    DSLA_TRY(dsla_cuda_copy(stream(t, t->layer + 1), h_out, (size_t)rows * t->D * sizeof(float),
                            t->x.stream));
    for (int j = t->layer + 1; j < t->L; j++)
        DSLA_TRY(layer_forward(t, j, stream(t, j), stream(t, j + 1), batch));
    DSLA_TRY(head_kl(t, stream(t, t->L), teacher_final, rows, kl, dh_out));
    if (!dh_out) return DSLA_OK;
    for (int j = t->L - 1; j > t->layer; j--)
        DSLA_TRY(layer_backward(t, j, stream(t, j), dh_out, batch));
    return DSLA_OK;
}

#endif /* DSLA_HAVE_CUDA */

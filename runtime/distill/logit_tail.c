/* The frozen rest of the hybrid after a trained layer, forward and backward to the layer's output,
 * for the logit KL term (logit_tail.h). One decoder layer at a time, as the forward pass runs it:
 *   x = RMSNorm(h), h_mid = h + mixer(x), h_next = h_mid + MLP(RMSNorm(h_mid)),
 * the mixer being attention (q, k, v projections, RoPE on q and k, causal GQA, Wo) or a DSLA layer.
 * RoPE rotates each (i, i + d/2) pair by the position's angle; its transpose, the backward, is the
 * same rotation with the sine negated. */
#include "logit_tail.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/kernels_dsla.h"
#include "kernels/kernels_train.h"
#include "runtime/core/tensor.h"
#include "runtime/distill/backend.h"

/* Rows of logits formed at once: the teacher's, the hybrid's and their gradient are three blocks
 * of this many rows of vocab floats (100 MB at a 32K vocabulary), whatever the batch. */
enum { KL_CHUNK_ROWS = 256 };

struct dsla_logit_tail {
    const dsla_model_t *model;
    const dsla_model_config_t *cfg;
    int layer, batch, seq_len;
    float temperature;
    dsla_layer_kind_t kinds[DSLA_LAYER_ORDER_MAX];
    float *cos_tab, *sin_tab, *neg_sin; /* [seq_len, d/2] */
    /* stream(j): the stream entering layer j (layer + 1 .. L - 1), then leaving the last (j = L):
     * L - layer blocks of [rows, D] */
    float *inputs;
    float *xn, *h_mid, *q, *k, *v, *attn, *dq, *dk, *dv, *dxn, *probs, *att_scratch;
    float *mlp_work;
    float *logits_s, *logits_t, *dlogits, *xn_t;
    void *dsla_mem;
    dsla_dsla_layer_ws_t ws;
    dsla_dsla_layer_t *dsla_grad; /* scratch: frozen layers' weight gradients land here */
};

static float *stream(const dsla_logit_tail_t *t, int j) {
    const size_t rows = (size_t)t->batch * t->seq_len;
    return t->inputs + (size_t)(j - t->layer - 1) * rows * t->cfg->hidden_size;
}

void dsla_logit_tail_destroy(dsla_logit_tail_t **tp) {
    if (!tp || !*tp) return;
    dsla_logit_tail_t *t = *tp;
    float *bufs[] = {t->cos_tab,  t->sin_tab, t->neg_sin, t->inputs,      t->xn,       t->h_mid,
                     t->q,        t->k,       t->v,       t->attn,        t->dq,       t->dk,
                     t->dv,       t->dxn,     t->probs,   t->att_scratch, t->mlp_work, t->logits_s,
                     t->logits_t, t->dlogits, t->xn_t};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dsla_free(bufs[i]);
    dsla_free(t->dsla_mem);
    dsla_dsla_layer_destroy(&t->dsla_grad);
    free(t);
    *tp = NULL;
}

static dsla_mlp_block_t mlp_of(const dsla_logit_tail_t *t, int j) {
    const dsla_llama_layer_t *w = dsla_model_layer(t->model, j);
    const dsla_model_config_t *c = t->cfg;
    return (dsla_mlp_block_t){w->mlp_norm,    w->w_gate,      w->w_up,
                              w->w_down,      c->hidden_size, c->intermediate_size,
                              c->rms_norm_eps};
}

dsla_status_t dsla_logit_tail_check(const dsla_model_t *model, int layer, int batch, int seq_len,
                                    float temperature) {
    const int L = dsla_model_config(model)->num_layers;
    if (layer < 0 || layer >= L || L > DSLA_LAYER_ORDER_MAX || batch < 1 || seq_len < 1 ||
        !(temperature > 0))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "logit tail: layer %d of %d, batch %d, seq_len %d, temperature %g", layer,
                          L, batch, seq_len, (double)temperature);
    return DSLA_OK;
}

dsla_status_t dsla_logit_tail_create(dsla_logit_tail_t **out, const dsla_model_t *model, int layer,
                                     const dsla_layer_kind_t *kinds, int batch, int seq_len,
                                     float temperature) {
    *out = NULL;
    DSLA_TRY(dsla_logit_tail_check(model, layer, batch, seq_len, temperature));
    const dsla_model_config_t *c = dsla_model_config(model);
    const int L = c->num_layers;
    dsla_logit_tail_t *t = calloc(1, sizeof *t);
    if (!t) return dsla_error_oom("the logit term");
    *t = (dsla_logit_tail_t){.model = model,
                             .cfg = c,
                             .layer = layer,
                             .batch = batch,
                             .seq_len = seq_len,
                             .temperature = temperature};
    for (int j = 0; j < L; j++)
        t->kinds[j] = kinds ? kinds[j] : DSLA_LAYER_ATTN;
    const size_t rows = (size_t)batch * seq_len, D = (size_t)c->hidden_size;
    const size_t qw = (size_t)c->num_heads * c->head_dim,
                 kvw = (size_t)c->num_kv_heads * c->head_dim;
    const size_t half = (size_t)c->head_dim / 2,
                 chunk = rows < KL_CHUNK_ROWS ? rows : KL_CHUNK_ROWS;
    const dsla_mlp_block_t mlp = mlp_of(t, layer);
    const struct {
        float **p;
        size_t n;
    } bufs[] = {
        {&t->cos_tab, (size_t)seq_len * half},
        {&t->sin_tab, (size_t)seq_len * half},
        {&t->neg_sin, (size_t)seq_len * half},
        {&t->inputs, (size_t)(L - layer) * rows * D},
        {&t->xn, rows * D},
        {&t->h_mid, rows * D},
        {&t->q, rows * qw},
        {&t->k, rows * kvw},
        {&t->v, rows * kvw},
        {&t->attn, rows * qw},
        {&t->dq, rows * qw},
        {&t->dk, rows * kvw},
        {&t->dv, rows * kvw},
        {&t->dxn, rows * D},
        {&t->probs, (size_t)batch * c->num_heads * seq_len * seq_len},
        {&t->att_scratch, (size_t)seq_len},
        {&t->mlp_work, dsla_cpu_mlp_block_workspace_floats(&mlp, (int)rows)},
        {&t->logits_s, chunk * c->vocab_size},
        {&t->logits_t, chunk * c->vocab_size},
        {&t->dlogits, chunk * c->vocab_size},
        {&t->xn_t, chunk * D},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (!(*bufs[i].p = dsla_alloc(bufs[i].n * sizeof(float)))) {
            dsla_logit_tail_destroy(&t);
            return dsla_error(DSLA_ERR_OUT_OF_MEMORY,
                              "out of memory for the logit term's activations (%d sequences of %d "
                              "tokens after layer %d)",
                              batch, seq_len, layer);
        }
    const dsla_dsla_dims_t dims = {batch, seq_len, c->num_heads, c->head_dim};
    const size_t bytes = dsla_cpu_dsla_layer_workspace_bytes(&dims, c->hidden_size);
    t->dsla_mem = dsla_alloc(bytes);
    dsla_status_t st = t->dsla_mem ? DSLA_OK : dsla_error_oom("the logit term's DSLA workspace");
    if (st == DSLA_OK)
        st = dsla_cpu_dsla_layer_workspace_init(&t->ws, &dims, c->hidden_size, t->dsla_mem, bytes);
    if (st == DSLA_OK) st = dsla_dsla_layer_create(&t->dsla_grad, c, layer);
    if (st != DSLA_OK) {
        dsla_logit_tail_destroy(&t);
        return st;
    }
    int32_t *positions = malloc((size_t)seq_len * sizeof *positions);
    if (!positions) {
        dsla_logit_tail_destroy(&t);
        return dsla_error_oom("the logit term's positions");
    }
    for (int p = 0; p < seq_len; p++)
        positions[p] = p;
    dsla_cpu_rope_tables(t->cos_tab, t->sin_tab, positions, seq_len, dsla_model_inv_freq(model),
                         c->head_dim);
    free(positions);
    for (size_t i = 0; i < (size_t)seq_len * half; i++)
        t->neg_sin[i] = -t->sin_tab[i];
    *out = t;
    return DSLA_OK;
}

/* RoPE (sin_tab: the forward; neg_sin: its transpose) on every sequence of x [rows, heads * d]. */
static void rope_rows(const dsla_logit_tail_t *t, float *x, int batch, int heads,
                      const float *sin_tab) {
    const int T = t->seq_len, d = t->cfg->head_dim;
    for (int b = 0; b < batch; b++)
        dsla_cpu_rope_apply(x + (size_t)b * T * heads * d, T, heads * d, heads, d, t->cos_tab,
                            sin_tab);
}

static dsla_status_t dsla_weights(const dsla_logit_tail_t *t, int j, dsla_dsla_layer_weights_t *w) {
    const dsla_dsla_layer_t *l = dsla_model_dsla_layer(t->model, j);
    if (!l)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "logit term: layer %d runs as DSLA but no DSLA layer is installed", j);
    *w = dsla_dsla_layer_weights(l);
    if (l->single_state) w->alpha = dsla_distill_history_only_alpha;
    return DSLA_OK;
}

/* The sizes one layer's passes use, for batch sequences. */
typedef struct {
    int rows, D, H, Hkv, d;
    float eps;
} dims_t;

static dims_t dims_of(const dsla_logit_tail_t *t, int batch) {
    const dsla_model_config_t *c = t->cfg;
    return (dims_t){batch * t->seq_len, c->hidden_size, c->num_heads,
                    c->num_kv_heads,    c->head_dim,    c->rms_norm_eps};
}

/* Layer j's forward from h [rows, D] into h_next (NULL: stop after h_mid), leaving what its
 * backward reads in t (xn, h_mid, and q, k, v, probs for attention or ws for DSLA). */
static dsla_status_t layer_forward(dsla_logit_tail_t *t, int j, const float *h, float *h_next,
                                   int batch) {
    const dsla_llama_layer_t *w = dsla_model_layer(t->model, j);
    const dims_t z = dims_of(t, batch);
    const int rows = z.rows, D = z.D, H = z.H, Hkv = z.Hkv, d = z.d;
    float *mix = t->dxn; /* free until the backward: the mixer's output */
    dsla_cpu_rmsnorm(t->xn, h, w->attn_norm, rows, D, z.eps);
    if (t->kinds[j] == DSLA_LAYER_DSLA) {
        dsla_dsla_layer_weights_t dw;
        DSLA_TRY(dsla_weights(t, j, &dw));
        t->ws.dims.batch = batch;
        DSLA_TRY(dsla_cpu_dsla_layer_forward(&t->ws, &dw, t->xn, NULL, NULL, mix, NULL, NULL));
    } else {
        dsla_cpu_gemm(t->q, t->xn, w->wq, rows, H * d, D);
        dsla_cpu_gemm(t->k, t->xn, w->wk, rows, Hkv * d, D);
        dsla_cpu_gemm(t->v, t->xn, w->wv, rows, Hkv * d, D);
        rope_rows(t, t->q, batch, H, t->sin_tab);
        rope_rows(t, t->k, batch, Hkv, t->sin_tab);
        dsla_cpu_causal_attention_train_forward(t->attn, t->probs, t->q, t->k, t->v, batch,
                                                t->seq_len, H, Hkv, d);
        dsla_cpu_gemm(mix, t->attn, w->wo, rows, D, H * d);
    }
    dsla_cpu_add(t->h_mid, h, mix, (size_t)rows * D);
    if (h_next) {
        const dsla_mlp_block_t mlp = mlp_of(t, j);
        dsla_cpu_mlp_block_forward(h_next, t->h_mid, &mlp, rows, t->mlp_work);
    }
    return DSLA_OK;
}

/* dh [rows, D]: the gradient w.r.t. layer j's output in, w.r.t. its input h out (in place). */
static dsla_status_t layer_backward(dsla_logit_tail_t *t, int j, const float *h, float *dh,
                                    int batch) {
    const dsla_llama_layer_t *w = dsla_model_layer(t->model, j);
    const dims_t z = dims_of(t, batch);
    const int rows = z.rows, D = z.D, H = z.H, Hkv = z.Hkv, d = z.d;
    DSLA_TRY(layer_forward(t, j, h, NULL, batch));
    const dsla_mlp_block_t mlp = mlp_of(t, j);
    dsla_cpu_mlp_block_backward(dh, dh, t->h_mid, &mlp, rows, t->mlp_work);
    if (t->kinds[j] == DSLA_LAYER_DSLA) {
        dsla_dsla_layer_weights_t dw;
        DSLA_TRY(dsla_weights(t, j, &dw));
        dsla_dsla_layer_t *g = t->dsla_grad;
        const dsla_dsla_layer_grads_t grads = {g->wq,  g->wk,  g->wv,  g->wo,   g->wg1,
                                               g->bg1, g->wg2, g->bg2, g->alpha};
        DSLA_TRY(dsla_cpu_dsla_layer_backward(&t->ws, &dw, t->xn, NULL, NULL, dh, NULL, NULL,
                                              t->dxn, &grads, NULL, NULL));
    } else {
        float *dattn = t->attn; /* the forward's output is spent: its gradient goes there */
        dsla_cpu_gemm_backward_input(dattn, dh, w->wo, rows, D, H * d, false);
        dsla_cpu_causal_attention_train_backward(t->dq, t->dk, t->dv, dattn, t->probs, t->q, t->k,
                                                 t->v, batch, t->seq_len, H, Hkv, d,
                                                 t->att_scratch);
        rope_rows(t, t->dq, batch, H, t->neg_sin);
        rope_rows(t, t->dk, batch, Hkv, t->neg_sin);
        dsla_cpu_gemm_backward_input(t->dxn, t->dq, w->wq, rows, H * d, D, false);
        dsla_cpu_gemm_backward_input(t->dxn, t->dk, w->wk, rows, Hkv * d, D, true);
        dsla_cpu_gemm_backward_input(t->dxn, t->dv, w->wv, rows, Hkv * d, D, true);
    }
    /* The residual carries dh through; the input norm's gradient adds onto it. */
    dsla_cpu_rmsnorm_backward(dh, NULL, t->dxn, h, w->attn_norm, rows, D, z.eps, true);
    return DSLA_OK;
}

/* The KL of the final norm and head over all rows, chunk by chunk; with dh, its gradient w.r.t.
 * the final stream h (=). */
static double head_kl(dsla_logit_tail_t *t, const float *h, const float *teacher_final, int rows,
                      float *dh) {
    const dsla_model_config_t *c = t->cfg;
    const int D = c->hidden_size, V = c->vocab_size;
    const float *norm = dsla_model_final_norm(t->model), *head = dsla_model_lm_head(t->model);
    float *xn = t->xn, *dxn = t->dxn;
    dsla_cpu_rmsnorm(xn, h, norm, rows, D, c->rms_norm_eps);
    double kl = 0.0;
    for (int r0 = 0; r0 < rows; r0 += KL_CHUNK_ROWS) {
        const int n = rows - r0 < KL_CHUNK_ROWS ? rows - r0 : KL_CHUNK_ROWS;
        dsla_cpu_rmsnorm(t->xn_t, teacher_final + (size_t)r0 * D, norm, n, D, c->rms_norm_eps);
        dsla_cpu_gemm(t->logits_t, t->xn_t, head, n, V, D);
        dsla_cpu_gemm(t->logits_s, xn + (size_t)r0 * D, head, n, V, D);
        /* The kernel averages over its n rows; the term averages over all rows. */
        const double share = (double)n / rows;
        kl += share * dsla_cpu_kl_div_loss(dh ? t->dlogits : NULL, t->logits_s, t->logits_t, n, V,
                                           t->temperature);
        if (!dh) continue;
        for (size_t i = 0; i < (size_t)n * V; i++)
            t->dlogits[i] *= (float)share;
        dsla_cpu_gemm_backward_input(dxn + (size_t)r0 * D, t->dlogits, head, n, V, D, false);
    }
    if (dh) dsla_cpu_rmsnorm_backward(dh, NULL, dxn, h, norm, rows, D, c->rms_norm_eps, false);
    return kl;
}

dsla_status_t dsla_logit_tail_kl(dsla_logit_tail_t *t, const float *h_out,
                                 const float *teacher_final, int batch, double *kl, float *dh_out) {
    if (batch < 1 || batch > t->batch)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "logit term: batch %d is outside 1..%d", batch,
                          t->batch);
    const int L = t->cfg->num_layers, rows = batch * t->seq_len;
    memcpy(stream(t, t->layer + 1), h_out, (size_t)rows * t->cfg->hidden_size * sizeof *h_out);
    for (int j = t->layer + 1; j < L; j++)
        DSLA_TRY(layer_forward(t, j, stream(t, j), stream(t, j + 1), batch));
    *kl = head_kl(t, stream(t, L), teacher_final, rows, dh_out);
    if (!dh_out) return DSLA_OK;
    for (int j = L - 1; j > t->layer; j--)
        DSLA_TRY(layer_backward(t, j, stream(t, j), dh_out, batch));
    return DSLA_OK;
}

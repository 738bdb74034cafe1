/* The distillation engine's GPU backend (backend.h, DESIGN.md section 5 on one GPU).
 *
 * Forward passes: a device copy of the teacher (llama_cuda.h, fp32 or bf16 weights) with the
 * engine's converted layers installed as they are finished; captures go straight from the model's
 * residual stream into device arrays (dsla_cuda_model_set_capture), so a layer's training pool, its
 * held-out streams and their teacher targets never leave the GPU. Perplexities copy logits to the
 * host and score them with the CPU's arithmetic; captures and scoring run the engine's loops
 * (dsla_distill_capture_layer, dsla_distill_score) over this backend's forward_batch.
 *
 * Training: the CPU trainer's step (distill.c) with kernels/cuda: RMSNorm, five projections and the
 * gates' biases by GEMM, the chunked DSLA forward, Wo with the residual, the frozen MLP block;
 * normalised MSE; the MLP block's activation backward, Wo's and the projections' GEMM backward,
 * the chunked DSLA backward, bias gradients; global-norm clipping (one host sync per step for the
 * loss and the norm, which the engine and the clip need anyway); AdamW per tensor with the CPU's
 * decay choices. Weights, moments, gradients and activations are fp32; the dtype option picks the
 * matrix math (F32: full fp32, the CPU's numbers; BF16: TF32 tensor cores in training, bf16 weights
 * in the teacher's forward). The engine's batch generator picks the sequences, so a CPU and a GPU
 * run with the same seed train on the same batches.
 *
 * Contract: runs on the calling thread, which it binds to opts->gpu; allocates the teacher's copy
 * on first use (its sizes depend on the sequence length) and a layer's buffers between layer_begin
 * and layer_end; prints nothing. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/distill/backend.h"

#ifdef DSLA_HAVE_CUDA
#include "kernels/kernels_cuda_train.h"
#include "runtime/distill/blocks_cuda.h"
#include "runtime/distill/logit_tail_cuda.h"
#endif

enum { CAPTURE_BATCH = DSLA_DISTILL_CAPTURE_BATCH };

size_t dsla_distill_cuda_bytes(const dsla_model_config_t *cfg, dsla_dtype_t dtype, int seq_len,
                               int batch, int n_train, int n_eval, bool logit_kl) {
    const size_t D = (size_t)cfg->hidden_size, I = (size_t)cfg->intermediate_size;
    const size_t V = (size_t)cfg->vocab_size, L = (size_t)cfg->num_layers, T = (size_t)seq_len;
    const size_t hd = (size_t)cfg->num_heads * cfg->head_dim;
    const size_t kvd = (size_t)cfg->num_kv_heads * cfg->head_dim;
    const size_t elt = dtype == DSLA_DTYPE_F32 ? 4 : 2, f = sizeof(float);
    /* the teacher: embeddings and head, each layer's projections, MLP and norms */
    const size_t weights = ((cfg->tie_word_embeddings ? 1 : 2) * V * D +
                            L * (2 * hd * D + 2 * kvd * D + 3 * D * I + 2 * D) + D) *
                           elt;
    const size_t rows = CAPTURE_BATCH * T;
    const size_t blocks = (T + DSLA_KV_BLOCK_TOKENS - 1) / DSLA_KV_BLOCK_TOKENS;
    const size_t kv = CAPTURE_BATCH * L * blocks * DSLA_KV_BLOCK_TOKENS * 2 * kvd * elt;
    const size_t forward = rows * (V + 4 * D + 3 * I + hd + 2 * kvd) * f;
    const size_t streams = 2 * ((size_t)n_train + (size_t)n_eval) * T * D * f;
    const size_t layer_numel = 6 * hd * D + 2 * hd + 2;
    const size_t R = (size_t)batch * T;
    size_t train = 4 * layer_numel * f + 3 * D * I * f + R * (8 * D + 12 * hd + 3 * I) * f;
#ifdef DSLA_HAVE_CUDA
    const dsla_dsla_dims_t dims = {batch, seq_len, cfg->num_heads, cfg->head_dim};
    const size_t core_ws = dsla_cuda_dsla_chunked_workspace_bytes(&dims);
#else
    /* the states before every 64-token chunk and their gradients, both DSLA states */
    const size_t core_ws =
        4 * (size_t)batch * cfg->num_heads * ((T + 63) / 64) * cfg->head_dim * cfg->head_dim * f;
#endif
    train += core_ws;
    if (logit_kl) {
        /* logit_tail_cuda.c after the order's first layer at worst (every other layer behind
         * it): fp32 weights of L - 1 layers (DSLA's block being the larger mixer) and the head,
         * the teacher's final streams, each later layer's input, one layer's activations and
         * attention probabilities, two blocks of logits, its own core workspace. */
        const size_t chunk = R < 1024 ? R : 1024;
        const size_t tail_w = ((L - 1) * (layer_numel + 3 * D * I + 2 * D) + V * D + D) * f;
        const size_t tail_acts =
            (L * R * D + 6 * R * D + 12 * R * hd + 3 * R * I +
             (size_t)batch * cfg->num_heads * T * T + 2 * chunk * V + chunk * D) *
            f;
        train += tail_w + (size_t)n_train * T * D * f + tail_acts + core_ws;
    }
    return weights + kv + forward + streams + train;
}

#ifdef DSLA_HAVE_CUDA

#include "runtime/model/llama_cuda.h"

typedef struct {
    float *h_in, *target; /* [n, T, D] */
    int n;
} streams_t;

typedef struct {
    dsla_distill_backend_t base;
    dsla_model_t *teacher;
    dsla_model_config_t cfg;
    dsla_distill_cuda_opts_t opts;
    dsla_dev_ctx_t ctx; /* the stream, cuBLAS handle and matrix math of every device op */
    /* the teacher on the device, sized for sequences of model_T tokens */
    dsla_cuda_model_t *cm;
    dsla_cuda_kv_t *kv;
    int model_T;
    const dsla_dsla_layer_t *installed[DSLA_LAYER_ORDER_MAX];
    float *logits_host;
    /* the layer in training */
    bool active, single_state;
    int layer, batch, T;
    dsla_dsla_layer_t *hw, *hm, *hv;  /* the engine's host copies */
    float *w, *g, *m, *v, *alpha_one; /* device: weights, gradients, moments; (0, -inf) */
    float *attn_norm, *mlp_norm, *w_gate, *w_up, *w_down;
    streams_t train, eval;
    float *hin, *tgt, *x, *q, *k, *vv, *a1, *a2, *o, *hmid, *xm, *gate, *up, *act, *hout, *dh;
    float *dmid, *dout, *dq, *dk, *dv, *da1, *da2;
    void *ws;
    size_t ws_bytes;
    double *sums; /* [4]: squared error, target square, gradient square, logit KL */
    /* the logit term (kl_weight > 0): the teacher's final streams of the training sequences
     * [n, T, D], the batch's, the hybrid after the layer and its gradient at h_out */
    double kl_weight;
    float *train_final, *fin, *dtail;
    dsla_logit_tail_cuda_t *tail;
} cuda_backend_t;

static size_t per_seq(const cuda_backend_t *c) {
    return (size_t)c->T * c->cfg.hidden_size;
}

static void free_dev(float **p) {
    dsla_cuda_free((void **)p);
}

static dsla_status_t alloc_dev(float **p, size_t floats) {
    return dsla_cuda_malloc((void **)p, floats * sizeof(float));
}

static dsla_status_t upload(float **p, const float *host, size_t floats, dsla_cuda_stream_t s) {
    DSLA_TRY(alloc_dev(p, floats));
    return dsla_cuda_copy(*p, host, floats * sizeof(float), s);
}

/* ---- the teacher on the device ---- */

static void free_model(cuda_backend_t *c) {
    dsla_cuda_kv_destroy(&c->kv);
    dsla_cuda_model_destroy(&c->cm);
    free(c->logits_host);
    c->logits_host = NULL;
    c->model_T = 0;
}

/* The device teacher for sequences of T tokens, with the installed layers uploaded. */
static dsla_status_t ensure_model(cuda_backend_t *c, int T) {
    if (c->cm && c->model_T == T) return DSLA_OK;
    free_model(c);
    const int L = c->cfg.num_layers;
    const dsla_cuda_model_opts_t mo = {
        .weight_dtype = c->opts.dtype,
        .max_batch_tokens = CAPTURE_BATCH * T,
        .max_logit_rows = CAPTURE_BATCH * T,
        .max_seqs = CAPTURE_BATCH,
        .max_context = T,
        .graphs = false,
    };
    DSLA_TRY(dsla_cuda_model_create(&c->cm, c->teacher, &mo, c->ctx.stream));
    const int blocks = CAPTURE_BATCH * L * ((T + DSLA_KV_BLOCK_TOKENS - 1) / DSLA_KV_BLOCK_TOKENS);
    DSLA_TRY(dsla_cuda_kv_create(&c->kv, c->cm, c->opts.dtype, blocks, CAPTURE_BATCH));
    c->logits_host = malloc((size_t)CAPTURE_BATCH * T * c->cfg.vocab_size * sizeof(float));
    if (!c->logits_host) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for eval logits");
    c->model_T = T;
    for (int l = 0; l < L; l++)
        if (c->installed[l]) DSLA_TRY(dsla_cuda_model_set_dsla_layer(c->cm, l, c->installed[l]));
    return DSLA_OK;
}

/* Runs sequences [first, first + n) of corpus under plan kinds: hidden (num_layers + 1 device
 * pointers or NULL) receives the captured streams at row offset first * T, logits_host (when not
 * NULL) every token's logits. */
static dsla_status_t forward_batch(void *ctx, const dsla_layer_kind_t *kinds,
                                   const dsla_corpus_t *corpus, int first, int n,
                                   float *const *hidden, int layers_to_run, float *logits_host) {
    cuda_backend_t *c = ctx;
    const int L = c->cfg.num_layers, T = corpus->seq_len;
    dsla_cuda_seq_t *seqs[CAPTURE_BATCH] = {0};
    dsla_cuda_batch_item_t items[CAPTURE_BATCH];
    float *at[DSLA_LAYER_ORDER_MAX + 1] = {0};
    dsla_status_t st = DSLA_OK;
    for (int i = 0; i < n && st == DSLA_OK; i++) {
        st = dsla_cuda_seq_create(&seqs[i], c->kv, kinds);
        items[i] = (dsla_cuda_batch_item_t){seqs[i], dsla_corpus_sequence(corpus, first + i), T,
                                            logits_host != NULL};
    }
    if (hidden)
        for (int l = 0; l <= L; l++)
            at[l] = hidden[l] ? hidden[l] + (size_t)first * T * c->cfg.hidden_size : NULL;
    if (st == DSLA_OK) st = dsla_cuda_model_set_capture(c->cm, hidden ? at : NULL, layers_to_run);
    if (st == DSLA_OK) st = dsla_cuda_model_forward(c->cm, items, n, logits_host);
    dsla_cuda_model_set_capture(c->cm, NULL, 0);
    for (int i = 0; i < n; i++)
        dsla_cuda_seq_destroy(&seqs[i]);
    return st;
}

static dsla_status_t cuda_install(dsla_distill_backend_t *b, int layer,
                                  const dsla_dsla_layer_t *w) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    c->installed[layer] = w;
    return c->cm ? dsla_cuda_model_set_dsla_layer(c->cm, layer, w) : DSLA_OK;
}

static dsla_status_t cuda_eval_nll(dsla_distill_backend_t *b, const dsla_layer_kind_t *kinds,
                                   const dsla_corpus_t *corpus, double *nll, double *token_nll) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    DSLA_TRY(ensure_model(c, corpus->seq_len));
    return dsla_distill_score(forward_batch, c, kinds, corpus, c->logits_host, c->cfg.vocab_size,
                              nll, token_nll);
}

/* ---- one layer's training ---- */

static void cuda_layer_end(dsla_distill_backend_t *b) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    float **bufs[] = {
        &c->w,         &c->g,           &c->m,    &c->v,      &c->alpha_one,  &c->attn_norm,
        &c->mlp_norm,  &c->w_gate,      &c->w_up, &c->w_down, &c->train.h_in, &c->train.target,
        &c->eval.h_in, &c->eval.target, &c->hin,  &c->tgt,    &c->x,          &c->q,
        &c->k,         &c->vv,          &c->a1,   &c->a2,     &c->o,          &c->hmid,
        &c->xm,        &c->gate,        &c->up,   &c->act,    &c->hout,       &c->dh,
        &c->dmid,      &c->dout,        &c->dq,   &c->dk,     &c->dv,         &c->da1,
        &c->da2,       &c->train_final, &c->fin,  &c->dtail};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free_dev(bufs[i]);
    dsla_cuda_free(&c->ws);
    dsla_cuda_free((void **)&c->sums);
    dsla_logit_tail_cuda_destroy(&c->tail);
    c->active = false;
    c->hw = c->hm = c->hv = NULL;
}

static const float *W(const cuda_backend_t *c, const float *host_tensor) {
    return c->w + (host_tensor - c->hw->data);
}

static float *G(const cuda_backend_t *c, const float *host_tensor) {
    return c->g + (host_tensor - c->hw->data);
}

static dsla_status_t cuda_push(dsla_distill_backend_t *b) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    const size_t bytes = c->hw->numel * sizeof(float);
    DSLA_TRY(dsla_cuda_copy(c->w, c->hw->data, bytes, c->ctx.stream));
    DSLA_TRY(dsla_cuda_copy(c->m, c->hm->data, bytes, c->ctx.stream));
    DSLA_TRY(dsla_cuda_copy(c->v, c->hv->data, bytes, c->ctx.stream));
    return dsla_cuda_stream_sync(c->ctx.stream);
}

static dsla_status_t cuda_pull(dsla_distill_backend_t *b) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    const size_t bytes = c->hw->numel * sizeof(float);
    DSLA_TRY(dsla_cuda_stream_sync(c->ctx.stream));
    DSLA_TRY(dsla_cuda_copy(c->hw->data, c->w, bytes, c->ctx.stream));
    DSLA_TRY(dsla_cuda_copy(c->hm->data, c->m, bytes, c->ctx.stream));
    DSLA_TRY(dsla_cuda_copy(c->hv->data, c->v, bytes, c->ctx.stream));
    return dsla_cuda_stream_sync(c->ctx.stream);
}

static dsla_status_t cuda_layer_begin(dsla_distill_backend_t *b, dsla_dsla_layer_t *w,
                                      dsla_dsla_layer_t *m, dsla_dsla_layer_t *v, int batch,
                                      bool single_state, const dsla_distill_terms_t *terms,
                                      const dsla_layer_kind_t *input_plan,
                                      const dsla_corpus_t *train, const dsla_corpus_t *eval) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    /* The engine refuses the gate cosine term first (base.gate_cosine is false); a caller of the
     * seam that does not is told, rather than trained on the hidden loss alone. */
    if (terms->gate_cosine_weight > 0)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "--gate-cosine %g: the gate cosine term is not implemented on the cuda "
                          "backend; leave it at 0 there",
                          terms->gate_cosine_weight);
    const dsla_model_config_t *cfg = &c->cfg;
    const int T = train->seq_len, layer = w->layer, D = cfg->hidden_size;
    const int I = cfg->intermediate_size, hd = cfg->num_heads * cfg->head_dim;
    cuda_layer_end(b);
    DSLA_TRY(ensure_model(c, T));
    c->active = true;
    c->layer = layer;
    c->batch = batch;
    c->T = T;
    c->single_state = single_state;
    c->hw = w;
    c->hm = m;
    c->hv = v;
    c->train.n = train->num_sequences;
    c->eval.n = eval->num_sequences;
    DSLA_TRY(alloc_dev(&c->train.h_in, (size_t)c->train.n * per_seq(c)));
    DSLA_TRY(alloc_dev(&c->train.target, (size_t)c->train.n * per_seq(c)));
    DSLA_TRY(alloc_dev(&c->eval.h_in, (size_t)c->eval.n * per_seq(c)));
    DSLA_TRY(alloc_dev(&c->eval.target, (size_t)c->eval.n * per_seq(c)));
    c->kl_weight = terms->kl_weight;
    if (c->kl_weight > 0) DSLA_TRY(alloc_dev(&c->train_final, (size_t)c->train.n * per_seq(c)));
    const dsla_distill_captures_t to = {c->train.h_in,  c->train.target, c->eval.h_in,
                                        c->eval.target, c->train_final,  cfg->num_layers};
    DSLA_TRY(dsla_distill_capture_layer(forward_batch, c, input_plan, layer, train, eval, &to));
    DSLA_TRY(dsla_cuda_stream_sync(c->ctx.stream));

    const dsla_llama_layer_t *tl = dsla_model_layer(c->teacher, layer);
    DSLA_TRY(upload(&c->attn_norm, tl->attn_norm, (size_t)D, c->ctx.stream));
    DSLA_TRY(upload(&c->mlp_norm, tl->mlp_norm, (size_t)D, c->ctx.stream));
    DSLA_TRY(upload(&c->w_gate, tl->w_gate, (size_t)I * D, c->ctx.stream));
    DSLA_TRY(upload(&c->w_up, tl->w_up, (size_t)I * D, c->ctx.stream));
    DSLA_TRY(upload(&c->w_down, tl->w_down, (size_t)D * I, c->ctx.stream));
    DSLA_TRY(upload(&c->alpha_one, dsla_distill_history_only_alpha, 2, c->ctx.stream));
    float **params[] = {&c->w, &c->g, &c->m, &c->v};
    for (size_t i = 0; i < 4; i++)
        DSLA_TRY(alloc_dev(params[i], w->numel));
    DSLA_TRY(dsla_cuda_zero(c->g, w->numel * sizeof(float), c->ctx.stream));
    DSLA_TRY(cuda_push(b));

    const size_t R = (size_t)batch * T;
    struct {
        float **p;
        size_t n;
    } acts[] = {{&c->hin, R * D},  {&c->tgt, R * D},   {&c->x, R * D},    {&c->q, R * hd},
                {&c->k, R * hd},   {&c->vv, R * hd},   {&c->a1, R * hd},  {&c->a2, R * hd},
                {&c->o, R * hd},   {&c->hmid, R * D},  {&c->xm, R * D},   {&c->gate, R * I},
                {&c->up, R * I},   {&c->act, R * I},   {&c->hout, R * D}, {&c->dh, R * D},
                {&c->dmid, R * D}, {&c->dout, R * hd}, {&c->dq, R * hd},  {&c->dk, R * hd},
                {&c->dv, R * hd},  {&c->da1, R * hd},  {&c->da2, R * hd}};
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
        DSLA_TRY(alloc_dev(acts[i].p, acts[i].n));
    const dsla_dsla_dims_t dims = {batch, T, cfg->num_heads, cfg->head_dim};
    c->ws_bytes = dsla_cuda_dsla_chunked_workspace_bytes(&dims);
    DSLA_TRY(dsla_cuda_malloc(&c->ws, c->ws_bytes));
    DSLA_TRY(dsla_cuda_malloc((void **)&c->sums, 4 * sizeof(double)));
    if (c->kl_weight <= 0) return DSLA_OK;
    DSLA_TRY(alloc_dev(&c->fin, R * D));
    DSLA_TRY(alloc_dev(&c->dtail, R * D));
    return dsla_logit_tail_cuda_create(&c->tail, &c->ctx, c->teacher, layer, input_plan,
                                       c->installed, batch, T, (float)terms->kl_temperature);
}

static dsla_dev_dsla_t student_weights(const cuda_backend_t *c) {
    const dsla_dsla_layer_t *hw = c->hw;
    return (dsla_dev_dsla_t){
        W(c, hw->wq),  W(c, hw->wk),  W(c, hw->wv),
        W(c, hw->wo),  W(c, hw->wg1), W(c, hw->bg1),
        W(c, hw->wg2), W(c, hw->bg2), c->single_state ? c->alpha_one : W(c, hw->alpha)};
}

static dsla_dev_dsla_acts_t student_acts(const cuda_backend_t *c) {
    return (dsla_dev_dsla_acts_t){c->q, c->k, c->vv, c->a1, c->a2, c->o};
}

static dsla_dev_mlp_t student_mlp(const cuda_backend_t *c) {
    return (dsla_dev_mlp_t){c->mlp_norm,        c->w_gate,          c->w_up,
                            c->w_down,          c->cfg.hidden_size, c->cfg.intermediate_size,
                            c->cfg.rms_norm_eps};
}

static dsla_dev_mlp_acts_t student_mlp_acts(const cuda_backend_t *c) {
    return (dsla_dev_mlp_acts_t){c->xm, c->gate, c->up, c->act};
}

/* h_out for the nb sequences in hin: distill.c's student_forward on the device. */
static dsla_status_t student_forward(cuda_backend_t *c, int nb) {
    const dsla_model_config_t *cfg = &c->cfg;
    const int R = nb * c->T, D = cfg->hidden_size;
    DSLA_TRY(dsla_cuda_rmsnorm(c->ctx.stream, c->x, DSLA_DTYPE_F32, c->hin, c->attn_norm, R, D,
                               cfg->rms_norm_eps));
    const dsla_dsla_dims_t dims = {nb, c->T, cfg->num_heads, cfg->head_dim};
    const dsla_dev_dsla_t w = student_weights(c);
    const dsla_dev_dsla_acts_t a = student_acts(c);
    DSLA_TRY(dsla_dev_dsla_forward(&c->ctx, &w, &dims, D, c->x, &a, c->hin, c->hmid, c->ws,
                                   c->ws_bytes));
    const dsla_dev_mlp_t mlp = student_mlp(c);
    const dsla_dev_mlp_acts_t ma = student_mlp_acts(c);
    return dsla_dev_mlp_forward(&c->ctx, &mlp, c->hmid, c->hout, &ma, R);
}

static dsla_status_t cuda_eval_mse(dsla_distill_backend_t *b, double *mse) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    const size_t ps = per_seq(c);
    DSLA_TRY(dsla_cuda_zero(c->sums, 3 * sizeof(double), c->ctx.stream));
    for (int first = 0; first < c->eval.n; first += c->batch) {
        const int n = c->eval.n - first < c->batch ? c->eval.n - first : c->batch;
        DSLA_TRY(dsla_cuda_copy(c->hin, c->eval.h_in + (size_t)first * ps, n * ps * sizeof(float),
                                c->ctx.stream));
        DSLA_TRY(dsla_cuda_copy(c->tgt, c->eval.target + (size_t)first * ps, n * ps * sizeof(float),
                                c->ctx.stream));
        DSLA_TRY(student_forward(c, n));
        DSLA_TRY(dsla_cuda_nmse_sums(c->ctx.stream, c->sums, c->hout, c->tgt, n * ps));
    }
    double sums[3];
    DSLA_TRY(dsla_cuda_stream_sync(c->ctx.stream));
    DSLA_TRY(dsla_cuda_copy(sums, c->sums, sizeof sums, c->ctx.stream));
    DSLA_TRY(dsla_cuda_stream_sync(c->ctx.stream));
    *mse = sums[1] > 0 ? sums[0] / sums[1] : sums[0];
    return DSLA_OK;
}

/* Gradients of every DSLA weight from dh, the loss gradient at h_out: the frozen MLP block's
 * activation backward, then the layer's (distill.c's mlp_block_backward + dsla_layer_backward).
 * Only right after student_forward of the whole batch: the core's backward reuses its states. */
static dsla_status_t student_backward(cuda_backend_t *c) {
    const dsla_model_config_t *cfg = &c->cfg;
    const int R = c->batch * c->T, D = cfg->hidden_size;
    const int hd = cfg->num_heads * cfg->head_dim;
    const dsla_dsla_layer_t *hw = c->hw;
    dsla_cuda_stream_t s = c->ctx.stream;
    dsla_cuda_blas_t *h = c->ctx.blas;
    const dsla_dev_mlp_t mlp = student_mlp(c);
    const dsla_dev_mlp_acts_t ma = student_mlp_acts(c);
    DSLA_TRY(dsla_dev_mlp_backward(&c->ctx, &mlp, c->dmid, c->dh, c->hmid, &ma, R));
    /* Wo, then the core, then the projections and biases. */
    DSLA_TRY(dsla_cuda_gemm_f32(h, s, G(c, hw->wo), c->dmid, true, c->o, false, D, hd, R, 0.0f,
                                c->ctx.math));
    DSLA_TRY(dsla_cuda_gemm_f32(h, s, c->dout, c->dmid, false, W(c, hw->wo), false, R, hd, D, 0.0f,
                                c->ctx.math));
    const dsla_dsla_dims_t dims = {c->batch, c->T, cfg->num_heads, cfg->head_dim};
    const dsla_dev_dsla_t w = student_weights(c);
    const dsla_dev_dsla_acts_t a = student_acts(c);
    const dsla_cuda_dsla_in_t in = dsla_dev_dsla_in(&w, &a);
    const dsla_dsla_grad_t grad = {c->dq, c->dk, c->dv, c->da1, c->da2, G(c, hw->alpha)};
    /* cuda_step ran student_forward on the whole batch just before: its states are in c->ws. */
    DSLA_TRY(dsla_cuda_dsla_chunked_backward_after_forward(s, &dims, &in, c->ctx.math, NULL, NULL,
                                                           c->dout, NULL, NULL, &grad, NULL, NULL,
                                                           c->ws, c->ws_bytes));
    const float *dproj[5] = {c->dq, c->dk, c->dv, c->da1, c->da2};
    const float *proj_w[5] = {hw->wq, hw->wk, hw->wv, hw->wg1, hw->wg2};
    for (int i = 0; i < 5; i++)
        DSLA_TRY(dsla_cuda_gemm_f32(h, s, G(c, proj_w[i]), dproj[i], true, c->x, false, hd, D, R,
                                    0.0f, c->ctx.math));
    DSLA_TRY(dsla_cuda_bias_backward(s, G(c, hw->bg1), c->da1, R, hd, false));
    return dsla_cuda_bias_backward(s, G(c, hw->bg2), c->da2, R, hd, false);
}

static dsla_status_t cuda_step(dsla_distill_backend_t *b, const int *idx, long step,
                               const dsla_adamw_params_t *optim, double *loss, double *kl) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    const size_t ps = per_seq(c), n = (size_t)c->batch * ps;
    dsla_cuda_stream_t s = c->ctx.stream;
    for (int i = 0; i < c->batch; i++) {
        const size_t from = (size_t)idx[i] * ps, bytes = ps * sizeof(float);
        DSLA_TRY(dsla_cuda_copy(c->hin + i * ps, c->train.h_in + from, bytes, s));
        DSLA_TRY(dsla_cuda_copy(c->tgt + i * ps, c->train.target + from, bytes, s));
        if (c->tail) DSLA_TRY(dsla_cuda_copy(c->fin + i * ps, c->train_final + from, bytes, s));
    }
    DSLA_TRY(student_forward(c, c->batch));
    DSLA_TRY(dsla_cuda_zero(c->sums, 4 * sizeof(double), s));
    DSLA_TRY(dsla_cuda_nmse_sums(s, c->sums, c->hout, c->tgt, n));
    DSLA_TRY(dsla_cuda_nmse_grad(s, c->dh, c->hout, c->tgt, n, c->sums));
    if (c->tail) { /* dh += kl_weight * dKL/dh_out (distill.c's trainer_loss_grad) */
        DSLA_TRY(
            dsla_logit_tail_cuda_kl(c->tail, c->hout, c->fin, c->batch, c->sums + 3, c->dtail));
        DSLA_TRY(dsla_cuda_scale(s, c->dtail, (float)c->kl_weight, n));
        DSLA_TRY(dsla_cuda_add(s, c->dh, c->dh, c->dtail, n));
    }
    DSLA_TRY(student_backward(c));
    dsla_distill_param_t params[DSLA_DISTILL_PARAMS_MAX];
    const int np = dsla_distill_params_of(c->hw, c->single_state, params);
    for (int i = 0; i < np; i++)
        DSLA_TRY(dsla_cuda_sum_squares(s, c->sums + 2, c->g + params[i].offset, params[i].n));
    double sums[4];
    DSLA_TRY(dsla_cuda_stream_sync(s));
    DSLA_TRY(dsla_cuda_copy(sums, c->sums, sizeof sums, s));
    DSLA_TRY(dsla_cuda_stream_sync(s));
    *loss = sums[0] / (sums[1] == 0.0 ? 1.0 : sums[1]);
    *kl = c->tail ? sums[3] : NAN;
    if (c->tail) *loss += c->kl_weight * *kl;
    const double norm = sqrt(sums[2]);
    if (!isfinite(norm) || !isfinite(*loss))
        return dsla_error(DSLA_ERR_INTERNAL,
                          "layer %d step %ld: non-finite loss %g or gradient norm %g", c->layer,
                          step, *loss, norm);
    if (optim->max_grad_norm > 0.0 && norm > optim->max_grad_norm)
        for (int i = 0; i < np; i++)
            DSLA_TRY(dsla_cuda_scale(s, c->g + params[i].offset,
                                     (float)(optim->max_grad_norm / norm), params[i].n));
    const double lr = dsla_adamw_lr(optim, step);
    dsla_adamw_params_t no_decay = *optim;
    no_decay.weight_decay = 0.0;
    for (int i = 0; i < np; i++) {
        const size_t o = params[i].offset;
        DSLA_TRY(dsla_cuda_dsla_adamw_step(s, c->w + o, c->m + o, c->v + o, c->g + o, params[i].n,
                                           step, lr, params[i].decay ? optim : &no_decay));
    }
    return DSLA_OK;
}

static void cuda_destroy(dsla_distill_backend_t *b) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    cuda_layer_end(b);
    free_model(c);
    dsla_cuda_blas_destroy(&c->ctx.blas);
    dsla_cuda_stream_destroy(&c->ctx.stream);
    free(c);
}

dsla_status_t dsla_distill_backend_cuda_create(dsla_distill_backend_t **out, dsla_model_t *teacher,
                                               const dsla_distill_cuda_opts_t *opts) {
    *out = NULL;
    const dsla_model_config_t *cfg = dsla_model_config(teacher);
    if (opts->dtype != DSLA_DTYPE_F32 && opts->dtype != DSLA_DTYPE_BF16)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "--dtype %s: the GPU trains with f32 or bf16",
                          dsla_dtype_name(opts->dtype));
    if (!dsla_cuda_dsla_chunked_supports(cfg->head_dim))
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "head dim %d: the GPU's chunked DSLA kernels take multiples of 16 up to "
                          "128; distil this model on the CPU (without --device cuda)",
                          cfg->head_dim);
    if (cfg->num_layers > DSLA_LAYER_ORDER_MAX)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "model has %d layers; at most %d", cfg->num_layers,
                          DSLA_LAYER_ORDER_MAX);
    DSLA_TRY(dsla_cuda_set_device(opts->gpu));
    cuda_backend_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for the CUDA backend");
    c->base = (dsla_distill_backend_t){
        "cuda",        false,     true,      cuda_install, cuda_eval_nll,  cuda_layer_begin,
        cuda_eval_mse, cuda_step, cuda_pull, cuda_push,    cuda_layer_end, cuda_destroy};
    c->teacher = teacher;
    c->cfg = *cfg;
    c->opts = *opts;
    c->ctx.math =
        opts->dtype == DSLA_DTYPE_F32 ? DSLA_CUDA_DSLA_MATH_F32 : DSLA_CUDA_DSLA_MATH_TF32;
    dsla_status_t st = dsla_cuda_stream_create(&c->ctx.stream);
    if (st == DSLA_OK) st = dsla_cuda_blas_create(&c->ctx.blas);
    if (st != DSLA_OK) {
        cuda_destroy(&c->base);
        return st;
    }
    *out = &c->base;
    return DSLA_OK;
}

#else /* !DSLA_HAVE_CUDA */

dsla_status_t dsla_distill_backend_cuda_create(dsla_distill_backend_t **out, dsla_model_t *teacher,
                                               const dsla_distill_cuda_opts_t *opts) {
    (void)teacher;
    (void)opts;
    *out = NULL;
    return dsla_error(DSLA_ERR_UNSUPPORTED,
                      "this build has no CUDA: --device cuda needs a build with -DDSLA_CUDA=ON");
}

#endif

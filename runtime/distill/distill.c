#include "distill.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/kernels.h"
#include "runtime/core/clock.h"
#include "runtime/core/random.h"
#include "runtime/core/tensor.h"
#include "runtime/distill/backend.h"
#include "runtime/distill/logit_tail.h"
#include "runtime/model/safetensors.h"

enum { CAPTURE_BATCH = DSLA_DISTILL_CAPTURE_BATCH };

static const char CHECKPOINT_FILE[] = "checkpoint.safetensors";

dsla_adamw_params_t dsla_distill_optim_default(int steps) {
    dsla_adamw_params_t o = dsla_adamw_params_default(steps);
    o.lr = DSLA_DISTILL_LR;
    o.min_lr = DSLA_DISTILL_LR / 10;
    return o;
}

dsla_distill_params_t dsla_distill_params_default(void) {
    dsla_distill_params_t p = {
        .layers = 0, /* all */
        .steps = 400,
        .batch = 8,
        .order_mode = DSLA_ORDER_MEASURED,
        .chained = true,
        .single_state = false,
        .calib_sequences = 16,
        .probe_steps = 30,
        .checkpoint_every = 50,
        .seed = 1234,
        .kl_temperature = 1.0,
    };
    p.optim = dsla_distill_optim_default(p.steps);
    return p;
}

/* ---- forward passes over a corpus --------------------------------------------------------------
 */

/* Runs sequences [first, first + n) of corpus through model under plan kinds. hidden (num_layers +
 * 1 entries, NULL to skip) receives each captured stream at row offset first * seq_len; logits,
 * when not NULL, every token's row. */
static dsla_status_t forward_sequences(dsla_model_t *model, const dsla_layer_kind_t *kinds,
                                       const dsla_corpus_t *corpus, int first, int n,
                                       float *const *hidden_base, int layers_to_run, float *logits,
                                       float *entropy) {
    const dsla_model_config_t *cfg = dsla_model_config(model);
    const int L = cfg->num_layers, T = corpus->seq_len;
    const size_t D = (size_t)cfg->hidden_size;
    int attn_layers = 0;
    for (int l = 0; l < L; l++)
        attn_layers += !kinds || kinds[l] == DSLA_LAYER_ATTN;
    int blocks = n * attn_layers * dsla_kv_blocks_for(T);
    dsla_kv_pool_t *pool = NULL;
    dsla_sequence_t *seqs[CAPTURE_BATCH] = {0};
    dsla_batch_item_t items[CAPTURE_BATCH];
    float *hidden[DSLA_LAYER_ORDER_MAX + 1] = {0};
    dsla_status_t st = dsla_kv_pool_create(&pool, cfg, blocks > 0 ? blocks : 1);
    for (int i = 0; i < n && st == DSLA_OK; i++) {
        st = dsla_sequence_create_planned(&seqs[i], pool, cfg, kinds);
        items[i] = (dsla_batch_item_t){seqs[i], dsla_corpus_sequence(corpus, first + i), T, true};
    }
    if (st == DSLA_OK) {
        for (int l = 0; l <= L; l++)
            hidden[l] =
                hidden_base && hidden_base[l] ? hidden_base[l] + (size_t)first * T * D : NULL;
        const dsla_forward_capture_t capture = {hidden, entropy, layers_to_run};
        st = dsla_model_forward_capture(model, items, n, logits, &capture);
    }
    for (int i = 0; i < n; i++)
        dsla_sequence_destroy(&seqs[i]);
    dsla_kv_pool_destroy(&pool);
    return st;
}

/* dsla_distill_forward_fn over the model in ctx. */
static dsla_status_t cpu_forward(void *ctx, const dsla_layer_kind_t *kinds,
                                 const dsla_corpus_t *corpus, int first, int n,
                                 float *const *hidden, int layers_to_run, float *logits) {
    return forward_sequences(ctx, kinds, corpus, first, n, hidden, layers_to_run, logits, NULL);
}

/* For every sequence of corpus, the streams hidden names (num_layers + 1 entries, [n, T, D] each),
 * running layers 0..last only. */
static dsla_status_t capture_pass(dsla_distill_forward_fn fwd, void *ctx,
                                  const dsla_layer_kind_t *kinds, const dsla_corpus_t *corpus,
                                  float *const *hidden, int last) {
    for (int first = 0; first < corpus->num_sequences; first += CAPTURE_BATCH) {
        int n = corpus->num_sequences - first;
        if (n > CAPTURE_BATCH) n = CAPTURE_BATCH;
        DSLA_TRY(fwd(ctx, kinds, corpus, first, n, hidden, last + 1, NULL));
    }
    return DSLA_OK;
}

/* For every sequence of corpus, the stream entering in_layer into h_in and the one leaving
 * out_layer into h_out (either NULL), [n, T, D]. */
static dsla_status_t capture_streams(dsla_distill_forward_fn fwd, void *ctx,
                                     const dsla_layer_kind_t *kinds, const dsla_corpus_t *corpus,
                                     int in_layer, float *h_in, int out_layer, float *h_out) {
    float *hidden[DSLA_LAYER_ORDER_MAX + 1] = {0};
    if (h_in) hidden[in_layer] = h_in;
    if (h_out) hidden[out_layer + 1] = h_out;
    /* Nothing past the last captured stream is needed. */
    const int last = h_out ? out_layer : (in_layer > 0 ? in_layer - 1 : 0);
    return capture_pass(fwd, ctx, kinds, corpus, hidden, last);
}

dsla_status_t dsla_distill_capture_layer(dsla_distill_forward_fn fwd, void *ctx,
                                         const dsla_layer_kind_t *input_plan, int layer,
                                         const dsla_corpus_t *train, const dsla_corpus_t *eval,
                                         const dsla_distill_captures_t *out) {
    DSLA_TRY(capture_streams(fwd, ctx, input_plan, train, layer, out->train_in, layer, NULL));
    if (out->train_final && layer + 1 < out->num_layers) {
        float *hidden[DSLA_LAYER_ORDER_MAX + 1] = {0};
        hidden[layer + 1] = out->train_target;
        hidden[out->num_layers] = out->train_final;
        DSLA_TRY(capture_pass(fwd, ctx, NULL, train, hidden, out->num_layers - 1));
    } else {
        /* The last layer's target is the final stream itself; one slot cannot take both, and the
         * buffers may be device memory, so the pass runs twice rather than copying. */
        DSLA_TRY(capture_streams(fwd, ctx, NULL, train, layer, NULL, layer, out->train_target));
        if (out->train_final)
            DSLA_TRY(capture_streams(fwd, ctx, NULL, train, layer, NULL, layer, out->train_final));
    }
    DSLA_TRY(capture_streams(fwd, ctx, input_plan, eval, layer, out->eval_in, layer, NULL));
    return capture_streams(fwd, ctx, NULL, eval, layer, NULL, layer, out->eval_target);
}

/* Adds the next-token negative log-likelihoods of n sequences of T tokens (logits: n * T rows of
 * vocab floats) to *total and their count to *count. */
static void add_nll(const float *logits, const dsla_corpus_t *corpus, int first, int n, int vocab,
                    double *total, long *count, double *token_nll) {
    const int T = corpus->seq_len, V = vocab;
    for (int i = 0; i < n; i++) {
        const int32_t *tokens = dsla_corpus_sequence(corpus, first + i);
        for (int t = 0; t + 1 < T; t++) {
            const float *row = logits + ((size_t)i * T + t) * V;
            float max = row[0];
            for (int j = 1; j < V; j++)
                max = row[j] > max ? row[j] : max;
            double sum = 0.0;
            for (int j = 0; j < V; j++)
                sum += exp((double)row[j] - max);
            const double nll = log(sum) + max - row[tokens[t + 1]];
            if (token_nll) token_nll[(size_t)(first + i) * (size_t)(T - 1) + (size_t)t] = nll;
            *total += nll;
            (*count)++;
        }
    }
}

dsla_status_t dsla_distill_score(dsla_distill_forward_fn fwd, void *ctx,
                                 const dsla_layer_kind_t *kinds, const dsla_corpus_t *corpus,
                                 float *logits, int vocab, double *nll, double *token_nll) {
    double total = 0.0;
    long count = 0;
    for (int first = 0; first < corpus->num_sequences; first += CAPTURE_BATCH) {
        int n = corpus->num_sequences - first;
        if (n > CAPTURE_BATCH) n = CAPTURE_BATCH;
        DSLA_TRY(fwd(ctx, kinds, corpus, first, n, NULL, 0, logits));
        add_nll(logits, corpus, first, n, vocab, &total, &count, token_nll);
    }
    *nll = count ? total / (double)count : NAN;
    return DSLA_OK;
}

static dsla_status_t eval_nll_tokens(dsla_model_t *model, const dsla_layer_kind_t *kinds,
                                     const dsla_corpus_t *corpus, double *nll, double *token_nll) {
    const int T = corpus->seq_len, V = dsla_model_config(model)->vocab_size;
    float *logits = malloc((size_t)CAPTURE_BATCH * T * V * sizeof *logits);
    if (!logits) return dsla_error_oom("eval logits");
    dsla_status_t st =
        dsla_distill_score(cpu_forward, model, kinds, corpus, logits, V, nll, token_nll);
    free(logits);
    return st;
}

dsla_status_t dsla_distill_eval_nll(dsla_model_t *model, const dsla_layer_kind_t *kinds,
                                    const dsla_corpus_t *corpus, double *nll) {
    return eval_nll_tokens(model, kinds, corpus, nll, NULL);
}

/* order[0..n) = the indices 0..n-1 by ascending cost; an insertion sort, stable, so equal costs
 * keep the layers' natural order. */
static void order_ascending(int *order, const double *cost, int n) {
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && cost[order[j]] < cost[order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
}

dsla_status_t dsla_distill_entropy_order(dsla_model_t *teacher, const dsla_corpus_t *corpus,
                                         int n_sequences, float *entropy, int *order) {
    const int L = dsla_model_config(teacher)->num_layers;
    if (n_sequences > corpus->num_sequences) n_sequences = corpus->num_sequences;
    if (n_sequences < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "entropy order needs calibration sequences");
    float *per_item = malloc((size_t)CAPTURE_BATCH * L * sizeof *per_item);
    double *sum = calloc((size_t)L, sizeof *sum);
    if (!per_item || !sum) {
        free(per_item);
        free(sum);
        return dsla_error_oom("entropies");
    }
    dsla_status_t st = DSLA_OK;
    for (int first = 0; first < n_sequences && st == DSLA_OK; first += CAPTURE_BATCH) {
        int n = n_sequences - first;
        if (n > CAPTURE_BATCH) n = CAPTURE_BATCH;
        st = forward_sequences(teacher, NULL, corpus, first, n, NULL, 0, NULL, per_item);
        for (int i = 0; i < n && st == DSLA_OK; i++)
            for (int l = 0; l < L; l++)
                sum[l] += per_item[(size_t)i * L + l];
    }
    if (st == DSLA_OK) {
        for (int l = 0; l < L; l++) {
            entropy[l] = (float)(sum[l] / n_sequences);
            sum[l] = entropy[l];
        }
        order_ascending(order, sum, L);
    }
    free(per_item);
    free(sum);
    return st;
}

/* ---- training one layer ------------------------------------------------------------------------
 */

/* The state of one layer's training: its weights, gradients and AdamW moments (four layers of one
 * shape, so one offset addresses a tensor in each), and the step's buffers. */
typedef struct {
    const dsla_model_config_t *cfg;
    int layer, batch, seq_len;
    bool single_state;
    dsla_dsla_layer_t *w, *grad, *m, *v;
    dsla_mlp_block_t mlp;
    const float *attn_norm;
    size_t rows, width; /* rows = batch * seq_len; width = D */
    float *h_in, *target, *x, *y, *h_mid, *h_out, *dh, *dx, *mlp_work;
    void *dsla_mem;
    dsla_dsla_layer_ws_t ws;
    dsla_distill_terms_t terms;
    /* The logit term (terms.kl_weight > 0): the hybrid after the layer, the batch's teacher final
     * stream and the KL's gradient w.r.t. h_out. */
    dsla_logit_tail_t *tail;
    float *final, *dtail;
} trainer_t;

static void trainer_free(trainer_t *t) {
    dsla_dsla_layer_destroy(&t->grad);
    dsla_logit_tail_destroy(&t->tail);
    float *bufs[] = {t->h_in, t->target, t->x,        t->y,     t->h_mid, t->h_out,
                     t->dh,   t->dx,     t->mlp_work, t->final, t->dtail};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dsla_free(bufs[i]);
    dsla_free(t->dsla_mem);
}

/* w, m, v are the engine's (the weights and moments it checkpoints); the trainer updates them in
 * place. With the logit term, the layers after w->layer run as plan says (NULL: attention). */
static dsla_status_t trainer_init(trainer_t *t, dsla_model_t *model, dsla_dsla_layer_t *w,
                                  dsla_dsla_layer_t *m, dsla_dsla_layer_t *v, int batch,
                                  int seq_len, bool single_state, const dsla_distill_terms_t *terms,
                                  const dsla_layer_kind_t *plan) {
    const dsla_model_config_t *cfg = dsla_model_config(model);
    memset(t, 0, sizeof *t);
    t->cfg = cfg;
    t->layer = w->layer;
    t->batch = batch;
    t->seq_len = seq_len;
    t->single_state = single_state;
    t->w = w;
    t->m = m;
    t->v = v;
    t->terms = *terms;
    DSLA_TRY(dsla_dsla_layer_create(&t->grad, cfg, w->layer));
    const dsla_llama_layer_t *teacher = dsla_model_layer(model, w->layer);
    t->attn_norm = teacher->attn_norm;
    t->mlp = (dsla_mlp_block_t){teacher->mlp_norm, teacher->w_gate,  teacher->w_up,
                                teacher->w_down,   cfg->hidden_size, cfg->intermediate_size,
                                cfg->rms_norm_eps};
    t->rows = (size_t)batch * seq_len;
    t->width = (size_t)cfg->hidden_size;
    const size_t act = t->rows * t->width;
    float **bufs[] = {&t->h_in, &t->target, &t->x, &t->y, &t->h_mid, &t->h_out, &t->dh, &t->dx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i] = dsla_alloc(act * sizeof(float));
        if (!*bufs[i]) return dsla_error_oom("training");
    }
    t->mlp_work =
        dsla_alloc(dsla_cpu_mlp_block_workspace_floats(&t->mlp, (int)t->rows) * sizeof(float));
    const dsla_dsla_dims_t dims = {batch, seq_len, cfg->num_heads, cfg->head_dim};
    size_t bytes = dsla_cpu_dsla_layer_workspace_bytes(&dims, cfg->hidden_size);
    t->dsla_mem = dsla_alloc(bytes);
    if (!t->mlp_work || !t->dsla_mem) return dsla_error_oom("training workspaces");
    DSLA_TRY(
        dsla_cpu_dsla_layer_workspace_init(&t->ws, &dims, cfg->hidden_size, t->dsla_mem, bytes));
    if (terms->kl_weight <= 0) return DSLA_OK;
    t->final = dsla_alloc(act * sizeof(float));
    t->dtail = dsla_alloc(act * sizeof(float));
    if (!t->final || !t->dtail) return dsla_error_oom("the logit term");
    return dsla_logit_tail_create(&t->tail, model, w->layer, plan, batch, seq_len,
                                  (float)terms->kl_temperature);
}

/* The weights the kernels run: a single-state layer mixes with softmax(0, -inf) = (1, 0), exactly
 * as the serving forward pass runs it (llama.c), so the recency state never reaches the output. */
const float dsla_distill_history_only_alpha[2] = {0.0f, -INFINITY};

static dsla_dsla_layer_weights_t trainer_weights(const trainer_t *t) {
    dsla_dsla_layer_weights_t w = dsla_dsla_layer_weights(t->w);
    if (t->single_state) w.alpha = dsla_distill_history_only_alpha;
    return w;
}

/* Student forward over the rows in t->h_in: h_out, keeping what the backward needs in ws. */
static dsla_status_t student_forward(trainer_t *t, int batch) {
    const int rows = batch * t->seq_len, D = (int)t->width;
    const dsla_dsla_layer_weights_t w = trainer_weights(t);
    t->ws.dims.batch = batch;
    dsla_cpu_rmsnorm(t->x, t->h_in, t->attn_norm, rows, D, t->cfg->rms_norm_eps);
    DSLA_TRY(dsla_cpu_dsla_layer_forward(&t->ws, &w, t->x, NULL, NULL, t->y, NULL, NULL));
    dsla_cpu_add(t->h_mid, t->h_in, t->y, (size_t)rows * D);
    dsla_cpu_mlp_block_forward(t->h_out, t->h_mid, &t->mlp, rows, t->mlp_work);
    return DSLA_OK;
}

static void gather(float *dst, const float *all, const int *idx, int n, size_t per_seq) {
    for (int i = 0; i < n; i++)
        memcpy(dst + (size_t)i * per_seq, all + (size_t)idx[i] * per_seq, per_seq * sizeof *dst);
}

typedef struct {
    float *w, *g, *m, *v;
    size_t n;
    bool decay;
} param_view_t;

int dsla_distill_params_of(const dsla_dsla_layer_t *w, bool single_state,
                           dsla_distill_param_t *out) {
    const size_t hd = (size_t)w->heads * w->head_dim, D = (size_t)w->model_dim;
    const struct {
        const float *p;
        size_t n;
        bool decay, history;
    } spec[] = {
        {w->wq, hd * D, true, true},   {w->wk, hd * D, true, true},  {w->wv, hd * D, true, true},
        {w->wo, D * hd, true, true},   {w->wg1, hd * D, true, true}, {w->bg1, hd, false, true},
        {w->wg2, hd * D, true, false}, {w->bg2, hd, false, false},   {w->alpha, 2, false, false},
    };
    int n = 0;
    for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
        if (single_state && !spec[i].history) continue;
        out[n++] = (dsla_distill_param_t){(size_t)(spec[i].p - w->data), spec[i].n, spec[i].decay};
    }
    return n;
}

/* The tensors AdamW updates, as views into the four layers of one shape. */
static int trainer_params(const trainer_t *t, param_view_t *out) {
    dsla_distill_param_t spec[DSLA_DISTILL_PARAMS_MAX];
    const int n = dsla_distill_params_of(t->w, t->single_state, spec);
    for (int i = 0; i < n; i++)
        out[i] = (param_view_t){t->w->data + spec[i].offset,
                                t->grad->data + spec[i].offset,
                                t->m->data + spec[i].offset,
                                t->v->data + spec[i].offset,
                                spec[i].n,
                                spec[i].decay};
    return n;
}

/* log g = max(logsigmoid(a) / 16, -50) elementwise, and d log g / d a (0 where clamped). */
static void log_gates(float *lg, float *dlg, const float *a, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double x = a[i];
        double ls = x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x));
        double v = ls / DSLA_GATE_NORMALIZER;
        bool clamped = v < DSLA_LOG_GATE_MIN;
        lg[i] = (float)(clamped ? DSLA_LOG_GATE_MIN : v);
        dlg[i] = clamped ? 0.0f : (float)(1.0 / (1.0 + exp(x)) / DSLA_GATE_NORMALIZER);
    }
}

/* Adds weight * cos(log g1, log g2) to the step's loss and its gradient to the gate projections'
 * gradients. Runs after the layer backward, whose saved gate pre-activations (ws.a1, ws.a2) it
 * reads and whose spent gradient buffers (dq, dk, dv, da1, da2, dmix) it reuses as scratch. */
static double gate_cosine_term(trainer_t *t, double weight) {
    const int rows = (int)t->rows, D = (int)t->width;
    const int hd = t->cfg->num_heads * t->cfg->head_dim;
    const size_t n = (size_t)rows * hd;
    float *lg1 = t->ws.dq, *lg2 = t->ws.dk, *dlg1 = t->ws.dv, *dlg2 = t->ws.da1;
    float *dcos1 = t->ws.da2, *dcos2 = t->ws.dmix;
    log_gates(lg1, dlg1, t->ws.a1, n);
    log_gates(lg2, dlg2, t->ws.a2, n);
    double cos = dsla_cpu_cosine_similarity(dcos1, dcos2, lg1, lg2, n);
    for (size_t i = 0; i < n; i++) {
        dcos1[i] *= (float)weight * dlg1[i];
        dcos2[i] *= (float)weight * dlg2[i];
    }
    dsla_dsla_layer_t *g = t->grad;
    dsla_cpu_gemm_backward_weight(g->wg1, dcos1, t->x, rows, hd, D, true);
    dsla_cpu_bias_backward(g->bg1, dcos1, rows, hd, true);
    dsla_cpu_gemm_backward_weight(g->wg2, dcos2, t->x, rows, hd, D, true);
    dsla_cpu_bias_backward(g->bg2, dcos2, rows, hd, true);
    return weight * cos;
}

/* The loss of the sequences idx[0..batch) of the captured streams (final_all: the teacher's final
 * streams, with the logit term) and its gradient in t->grad; *kl the logit term's KL (NaN when
 * off). */
static dsla_status_t trainer_loss_grad(trainer_t *t, const float *h_in_all, const float *target_all,
                                       const float *final_all, const int *idx, double *loss,
                                       double *kl) {
    const size_t per_seq = (size_t)t->seq_len * t->width, n = t->rows * t->width;
    gather(t->h_in, h_in_all, idx, t->batch, per_seq);
    gather(t->target, target_all, idx, t->batch, per_seq);
    DSLA_TRY(student_forward(t, t->batch));
    *loss = dsla_cpu_nmse_loss(t->dh, t->h_out, t->target, n);
    *kl = NAN;
    if (t->tail) {
        const double weight = t->terms.kl_weight;
        gather(t->final, final_all, idx, t->batch, per_seq);
        DSLA_TRY(dsla_logit_tail_kl(t->tail, t->h_out, t->final, t->batch, kl, t->dtail));
        *loss += weight * *kl;
        for (size_t i = 0; i < n; i++)
            t->dh[i] += (float)(weight * t->dtail[i]);
    }
    dsla_cpu_mlp_block_backward(t->dh, t->dh, t->h_mid, &t->mlp, (int)t->rows, t->mlp_work);
    const dsla_dsla_layer_weights_t w = trainer_weights(t);
    dsla_dsla_layer_t *g = t->grad;
    const dsla_dsla_layer_grads_t grads = {g->wq,  g->wk,  g->wv,  g->wo,   g->wg1,
                                           g->bg1, g->wg2, g->bg2, g->alpha};
    DSLA_TRY(dsla_cpu_dsla_layer_backward(&t->ws, &w, t->x, NULL, NULL, t->dh, NULL, NULL, t->dx,
                                          &grads, NULL, NULL));
    if (t->terms.gate_cosine_weight > 0 && !t->single_state)
        *loss += gate_cosine_term(t, t->terms.gate_cosine_weight);
    return DSLA_OK;
}

/* One optimizer step on the sequences idx[0..batch) of the captured streams; returns the loss. */
static dsla_status_t train_step(trainer_t *t, const float *h_in_all, const float *target_all,
                                const float *final_all, const int *idx, long step,
                                const dsla_adamw_params_t *optim, double *loss, double *kl) {
    DSLA_TRY(trainer_loss_grad(t, h_in_all, target_all, final_all, idx, loss, kl));
    param_view_t params[16];
    int np = trainer_params(t, params);
    float *garr[16];
    size_t counts[16];
    for (int i = 0; i < np; i++) {
        garr[i] = params[i].g;
        counts[i] = params[i].n;
    }
    double norm = dsla_cpu_clip_grad_norm(garr, counts, np, optim->max_grad_norm);
    if (!isfinite(norm) || !isfinite(*loss))
        return dsla_error(DSLA_ERR_INTERNAL,
                          "layer %d step %ld: non-finite loss %g or gradient norm %g", t->layer,
                          step, *loss, norm);
    double lr = dsla_adamw_lr(optim, step);
    dsla_adamw_params_t no_decay = *optim;
    no_decay.weight_decay = 0.0;
    for (int i = 0; i < np; i++)
        dsla_cpu_adamw_step(params[i].w, params[i].m, params[i].v, params[i].g, params[i].n, step,
                            lr, params[i].decay ? optim : &no_decay);
    return DSLA_OK;
}

/* Held-out layer loss: sum of squared errors over the sum of squared targets, over all of eval. */
static dsla_status_t eval_layer_mse(trainer_t *t, const float *h_in_all, const float *target_all,
                                    int n_seq, double *mse) {
    const size_t per_seq = (size_t)t->seq_len * t->width;
    double num = 0.0, den = 0.0;
    int idx[DSLA_LAYER_ORDER_MAX];
    for (int first = 0; first < n_seq; first += t->batch) {
        int n = n_seq - first < t->batch ? n_seq - first : t->batch;
        for (int i = 0; i < n; i++)
            idx[i] = first + i;
        gather(t->h_in, h_in_all, idx, n, per_seq);
        gather(t->target, target_all, idx, n, per_seq);
        DSLA_TRY(student_forward(t, n));
        for (size_t i = 0; i < (size_t)n * per_seq; i++) {
            double d = (double)t->h_out[i] - t->target[i];
            num += d * d;
            den += (double)t->target[i] * t->target[i];
        }
    }
    t->ws.dims.batch = t->batch;
    *mse = den > 0 ? num / den : num;
    return DSLA_OK;
}

/* ---- the CPU backend ---------------------------------------------------------------------------
 */

typedef struct {
    dsla_distill_backend_t base;
    dsla_model_t *model;
    trainer_t t;
    float *h_in, *target, *eval_in, *eval_target; /* the layer's captured streams */
    float *train_final; /* the teacher's final streams, for the logit term (else NULL) */
    int n_eval;
} cpu_backend_t;

static dsla_status_t cpu_install(dsla_distill_backend_t *b, int layer, const dsla_dsla_layer_t *w) {
    dsla_model_set_dsla_layer(((cpu_backend_t *)b)->model, layer, w);
    return DSLA_OK;
}

static dsla_status_t cpu_eval_nll(dsla_distill_backend_t *b, const dsla_layer_kind_t *kinds,
                                  const dsla_corpus_t *corpus, double *nll, double *token_nll) {
    return eval_nll_tokens(((cpu_backend_t *)b)->model, kinds, corpus, nll, token_nll);
}

static void cpu_layer_end(dsla_distill_backend_t *b) {
    cpu_backend_t *c = (cpu_backend_t *)b;
    trainer_free(&c->t);
    memset(&c->t, 0, sizeof c->t);
    float **bufs[] = {&c->h_in, &c->target, &c->eval_in, &c->eval_target, &c->train_final};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        dsla_free(*bufs[i]);
        *bufs[i] = NULL;
    }
}

static dsla_status_t cpu_layer_begin(dsla_distill_backend_t *b, dsla_dsla_layer_t *w,
                                     dsla_dsla_layer_t *m, dsla_dsla_layer_t *v, int batch,
                                     bool single_state, const dsla_distill_terms_t *terms,
                                     const dsla_layer_kind_t *input_plan,
                                     const dsla_corpus_t *train, const dsla_corpus_t *eval) {
    cpu_backend_t *c = (cpu_backend_t *)b;
    const int layer = w->layer, T = train->seq_len;
    const size_t per_seq = (size_t)T * w->model_dim;
    DSLA_TRY(trainer_init(&c->t, c->model, w, m, v, batch, T, single_state, terms, input_plan));
    if (terms->kl_weight > 0 &&
        !(c->train_final = dsla_alloc((size_t)train->num_sequences * per_seq * sizeof(float))))
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY,
                          "out of memory for the teacher's final hidden states (the logit term)");
    c->h_in = dsla_alloc((size_t)train->num_sequences * per_seq * sizeof(float));
    c->target = dsla_alloc((size_t)train->num_sequences * per_seq * sizeof(float));
    c->eval_in = dsla_alloc((size_t)eval->num_sequences * per_seq * sizeof(float));
    c->eval_target = dsla_alloc((size_t)eval->num_sequences * per_seq * sizeof(float));
    c->n_eval = eval->num_sequences;
    if (!c->h_in || !c->target || !c->eval_in || !c->eval_target)
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for layer %d's hidden states",
                          layer);
    const dsla_distill_captures_t to = {c->h_in,        c->target,
                                        c->eval_in,     c->eval_target,
                                        c->train_final, dsla_model_config(c->model)->num_layers};
    return dsla_distill_capture_layer(cpu_forward, c->model, input_plan, layer, train, eval, &to);
}

static dsla_status_t cpu_eval_mse(dsla_distill_backend_t *b, double *mse) {
    cpu_backend_t *c = (cpu_backend_t *)b;
    return eval_layer_mse(&c->t, c->eval_in, c->eval_target, c->n_eval, mse);
}

static dsla_status_t cpu_step(dsla_distill_backend_t *b, const int *idx, long step,
                              const dsla_adamw_params_t *optim, double *loss, double *kl) {
    cpu_backend_t *c = (cpu_backend_t *)b;
    return train_step(&c->t, c->h_in, c->target, c->train_final, idx, step, optim, loss, kl);
}

dsla_status_t dsla_distill_cpu_loss_grad(dsla_distill_backend_t *b, const int *idx, double *loss,
                                         double *kl, const dsla_dsla_layer_t **grad) {
    cpu_backend_t *c = (cpu_backend_t *)b;
    DSLA_TRY(trainer_loss_grad(&c->t, c->h_in, c->target, c->train_final, idx, loss, kl));
    *grad = c->t.grad;
    return DSLA_OK;
}

/* The CPU trainer works on the engine's w, m, v in place: nothing to copy. */
static dsla_status_t cpu_no_copy(dsla_distill_backend_t *b) {
    (void)b;
    return DSLA_OK;
}

static void cpu_destroy(dsla_distill_backend_t *b) {
    cpu_layer_end(b);
    free(b);
}

dsla_status_t dsla_distill_backend_cpu_create(dsla_distill_backend_t **out, dsla_model_t *teacher) {
    *out = NULL;
    cpu_backend_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for the CPU backend");
    c->base = (dsla_distill_backend_t){
        "cpu",        true,     true,        cpu_install, cpu_eval_nll,  cpu_layer_begin,
        cpu_eval_mse, cpu_step, cpu_no_copy, cpu_no_copy, cpu_layer_end, cpu_destroy};
    c->model = teacher;
    *out = &c->base;
    return DSLA_OK;
}

void dsla_distill_backend_destroy(dsla_distill_backend_t **b) {
    if (!b || !*b) return;
    (*b)->destroy(*b);
    *b = NULL;
}

/* ---- checkpoints inside a layer ----------------------------------------------------------------
 */

static void path_join(char *out, size_t cap, const char *dir, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
}

/* The weights and moments of a layer in training, the engine's host copies. */
typedef struct {
    int layer;
    dsla_dsla_layer_t *w, *m, *v;
} layer_state_t;

static dsla_status_t checkpoint_save(const layer_state_t *t, const char *out_dir, long step) {
    char path[4096], value[32];
    path_join(path, sizeof path, out_dir, CHECKPOINT_FILE);
    dsla_st_writer_t *wr = NULL;
    DSLA_TRY(dsla_st_writer_create(&wr));
    const int64_t shape[1] = {(int64_t)t->w->numel};
    dsla_status_t st = dsla_st_writer_add(wr, "weights", DSLA_DTYPE_F32, 1, shape, t->w->data);
    if (st == DSLA_OK) st = dsla_st_writer_add(wr, "adam_m", DSLA_DTYPE_F32, 1, shape, t->m->data);
    if (st == DSLA_OK) st = dsla_st_writer_add(wr, "adam_v", DSLA_DTYPE_F32, 1, shape, t->v->data);
    snprintf(value, sizeof value, "%d", t->layer);
    if (st == DSLA_OK) st = dsla_st_writer_set_metadata(wr, "layer", value);
    snprintf(value, sizeof value, "%ld", step);
    if (st == DSLA_OK) st = dsla_st_writer_set_metadata(wr, "step", value);
    if (st == DSLA_OK) st = dsla_st_writer_save(wr, path);
    dsla_st_writer_destroy(&wr);
    return st;
}

/* Restores weights and moments when out_dir holds a checkpoint of this layer; *step is the number
 * of steps it had done (0 when there is none to resume). */
static dsla_status_t checkpoint_load(layer_state_t *t, const char *out_dir, long *step) {
    char path[4096];
    path_join(path, sizeof path, out_dir, CHECKPOINT_FILE);
    *step = 0;
    struct stat sb;
    if (stat(path, &sb) != 0) return DSLA_OK;
    dsla_safetensors_t *st = NULL;
    DSLA_TRY(dsla_safetensors_open(&st, path));
    const char *layer = dsla_safetensors_metadata(st, "layer");
    const char *steps = dsla_safetensors_metadata(st, "step");
    dsla_status_t s = DSLA_OK;
    if (!layer || !steps) {
        s = dsla_error(DSLA_ERR_FORMAT, "%s: metadata 'layer' and 'step' are required", path);
    } else if (atoi(layer) == t->layer) {
        const int64_t shape[1] = {(int64_t)t->w->numel};
        s = dsla_safetensors_read_f32(st, "weights", 1, shape, t->w->data);
        if (s == DSLA_OK) s = dsla_safetensors_read_f32(st, "adam_m", 1, shape, t->m->data);
        if (s == DSLA_OK) s = dsla_safetensors_read_f32(st, "adam_v", 1, shape, t->v->data);
        if (s == DSLA_OK) *step = atol(steps);
    }
    dsla_safetensors_close(&st);
    return s;
}

/* ---- the run -----------------------------------------------------------------------------------
 */

typedef struct {
    dsla_model_t *model;
    const dsla_model_config_t *cfg;
    const dsla_distill_params_t *p;
    const dsla_corpus_t *train, *eval;
    const char *out_dir;
    const dsla_distill_callbacks_t *cb;
    dsla_distill_report_t *report;
    dsla_layer_kind_t kinds[DSLA_LAYER_ORDER_MAX];
    dsla_dsla_layer_t *converted[DSLA_LAYER_ORDER_MAX];
    int n_convert;
    dsla_distill_backend_t *be;
    uint64_t teacher_checksum;
    double step_seconds; /* running mean, for the time left */
    long steps_done;
} run_t;

/* steps 0 writes teacher-initialised versions without training or scoring them; with a given order
 * it needs no data at all (no entropy pass). */
static bool init_only(const dsla_distill_params_t *p) {
    return p->steps == 0;
}

static bool init_only_without_data(const dsla_distill_params_t *p) {
    return init_only(p) && p->order_mode == DSLA_ORDER_GIVEN;
}

static dsla_status_t validate_order(const dsla_model_config_t *cfg,
                                    const dsla_distill_params_t *p) {
    const int L = cfg->num_layers;
    if (p->order_mode == DSLA_ORDER_GIVEN && p->n_given_order > 0) {
        bool seen[DSLA_LAYER_ORDER_MAX] = {false};
        for (int i = 0; i < p->n_given_order; i++) {
            int l = p->given_order[i];
            if (l < 0 || l >= L || seen[l])
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "given order entry %d (layer %d) is out of 0..%d or repeated", i,
                                  l, L - 1);
            seen[l] = true;
        }
        if (p->n_given_order < (p->layers ? p->layers : L))
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "given order names %d layers but %d are to be converted",
                              p->n_given_order, p->layers ? p->layers : L);
    }
    return DSLA_OK;
}

static dsla_status_t validate(const dsla_model_config_t *cfg, const dsla_distill_params_t *p,
                              const dsla_corpus_t *train, const dsla_corpus_t *eval) {
    const int L = cfg->num_layers;
    if (L > DSLA_LAYER_ORDER_MAX)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "model has %d layers; at most %d", L,
                          DSLA_LAYER_ORDER_MAX);
    if (p->layers < 0 || p->layers > L)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "layers %d is outside 0..%d (0: all)",
                          p->layers, L);
    if (p->steps < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "steps %d must be at least 0", p->steps);
    if (p->batch < 1 || p->batch > DSLA_LAYER_ORDER_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "batch %d is outside 1..%d", p->batch,
                          DSLA_LAYER_ORDER_MAX);
    if (p->order_mode == DSLA_ORDER_MEASURED && init_only(p))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "the measured order trains and scores a probe per layer; an init-only "
                          "run (steps 0) takes the entropy, reverse or given order");
    if (p->order_mode == DSLA_ORDER_MEASURED && p->probe_steps < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "probe_steps %d must be at least 1 for the measured order",
                          p->probe_steps);
    if (!(p->kl_weight >= 0) || !isfinite(p->kl_weight))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "kl_weight %g (--kl-weight) must be a finite number of at least 0",
                          p->kl_weight);
    if (!(p->kl_temperature > 0) || !isfinite(p->kl_temperature))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "kl_temperature %g (--kl-temperature) must be a finite number above 0",
                          p->kl_temperature);
    if (init_only_without_data(p)) return validate_order(cfg, p);
    if (!train || !eval || train->num_sequences < 1 || eval->num_sequences < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "need training and held-out sequences (have %d and %d)",
                          train ? train->num_sequences : 0, eval ? eval->num_sequences : 0);
    if (train->seq_len != eval->seq_len)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "training and held-out sequences differ in length (%d and %d)",
                          train->seq_len, eval->seq_len);
    if (train->seq_len > cfg->max_position_embeddings)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "seq_len %d exceeds the model's context of %d",
                          train->seq_len, cfg->max_position_embeddings);
    return validate_order(cfg, p);
}

static dsla_status_t compute_order(run_t *r) {
    const int L = r->cfg->num_layers;
    dsla_distill_report_t *rep = r->report;
    for (int l = 0; l < L; l++)
        rep->probe_ppl[l] = NAN;
    if (init_only_without_data(r->p)) {
        for (int l = 0; l < L; l++) {
            rep->entropy[l] = NAN;
            rep->order[l] = l;
        }
    } else {
        DSLA_TRY(dsla_distill_entropy_order(r->model, r->train, r->p->calib_sequences, rep->entropy,
                                            rep->order));
    }
    if (r->p->order_mode == DSLA_ORDER_REVERSE) {
        for (int i = 0; i < L / 2; i++) {
            int tmp = rep->order[i];
            rep->order[i] = rep->order[L - 1 - i];
            rep->order[L - 1 - i] = tmp;
        }
    } else if (r->p->order_mode == DSLA_ORDER_GIVEN) {
        bool seen[DSLA_LAYER_ORDER_MAX] = {false};
        int n = 0;
        for (int i = 0; i < r->p->n_given_order; i++)
            seen[rep->order[n++] = r->p->given_order[i]] = true;
        for (int l = 0; l < L && n < L; l++)
            if (!seen[l]) rep->order[n++] = l;
    }
    return DSLA_OK;
}

static void version_path(char *out, size_t cap, const char *dir, int layer) {
    char name[64];
    snprintf(name, sizeof name, "layer-%d.safetensors", layer);
    path_join(out, cap, dir, name);
}

/* Loads the version of the k-th layer when an earlier run finished it; *found says whether. */
static dsla_status_t load_finished(run_t *r, int k, bool *found) {
    const int layer = r->report->order[k];
    char path[4096];
    version_path(path, sizeof path, r->out_dir, layer);
    struct stat sb;
    *found = stat(path, &sb) == 0;
    if (!*found) return DSLA_OK;
    dsla_layer_version_meta_t meta;
    dsla_dsla_layer_t *l = NULL;
    DSLA_TRY(dsla_dsla_layer_load(&l, path, r->cfg, &meta));
    bool same_order = meta.n_order == r->cfg->num_layers;
    for (int i = 0; same_order && i < meta.n_order; i++)
        same_order = meta.order[i] == r->report->order[i];
    /* An untrained (steps 0) version must not pass for a trained one, nor the reverse. */
    if (!same_order || meta.teacher_checksum != r->teacher_checksum ||
        l->single_state != r->p->single_state || (meta.steps == 0) != init_only(r->p)) {
        dsla_dsla_layer_destroy(&l);
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s was distilled with another order, teacher, state count or "
                          "init-only setting (--steps 0); use a fresh output directory",
                          path);
    }
    /* one run's trained versions share one loss (an init-only version trained with none) */
    if (!init_only(r->p) && meta.kl_weight != r->p->kl_weight) {
        dsla_dsla_layer_destroy(&l);
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s was trained with --kl-weight %g and this run has %g; use the same "
                          "weight or a fresh output directory",
                          path, meta.kl_weight, r->p->kl_weight);
    }
    r->converted[layer] = l;
    dsla_distill_layer_report_t *rep = &r->report->converted[k];
    *rep = (dsla_distill_layer_report_t){layer,           k,   true,          NAN, meta.eval_mse,
                                         meta.train_loss, NAN, meta.eval_ppl, 0.0};
    return DSLA_OK;
}

static dsla_status_t install(run_t *r, int layer) {
    DSLA_TRY(r->be->install(r->be, layer, r->converted[layer]));
    r->kinds[layer] = DSLA_LAYER_DSLA;
    return DSLA_OK;
}

/* One layer's fit: the k-th conversion of the order, or the k-th probe of a measured order. */
typedef struct {
    int k, layer;
    bool probe;
    int steps;
    const dsla_layer_kind_t *input_plan; /* NULL: the teacher's inputs */
    const dsla_corpus_t *train;
} fit_t;

/* Creates ls's weights (initialised from the teacher) and moments for f->layer and hands them to
 * the backend, which captures the layer's inputs under f->input_plan. */
static dsla_status_t fit_begin(run_t *r, layer_state_t *ls, const fit_t *f) {
    const dsla_distill_params_t *p = r->p;
    *ls = (layer_state_t){.layer = f->layer};
    DSLA_TRY(dsla_dsla_layer_create(&ls->w, r->cfg, f->layer));
    DSLA_TRY(dsla_dsla_layer_create(&ls->m, r->cfg, f->layer));
    DSLA_TRY(dsla_dsla_layer_create(&ls->v, r->cfg, f->layer));
    ls->w->single_state = p->single_state;
    DSLA_TRY(
        dsla_dsla_layer_init_from_teacher(ls->w, r->model, f->layer, p->seed + (uint64_t)f->layer));
    /* Probes rank layers by the hidden-state loss (their file does not depend on the logit term).
     */
    const dsla_distill_terms_t terms = {p->gate_cosine_weight, f->probe ? 0.0 : p->kl_weight,
                                        p->kl_temperature};
    return r->be->layer_begin(r->be, ls->w, ls->m, ls->v, p->batch, p->single_state, &terms,
                              f->input_plan, f->train, r->eval);
}

static void fit_end(run_t *r, layer_state_t *ls) {
    r->be->layer_end(r->be);
    dsla_dsla_layer_destroy(&ls->w);
    dsla_dsla_layer_destroy(&ls->m);
    dsla_dsla_layer_destroy(&ls->v);
}

/* Optimizer steps left in the whole run after step of f: the probes still to come, then the
 * conversions (all of them while probing). */
static long steps_left(const run_t *r, const fit_t *f, long step) {
    const dsla_distill_params_t *p = r->p;
    long left = f->steps - step;
    if (f->probe)
        left +=
            (long)(r->cfg->num_layers - f->k - 1) * p->probe_steps + (long)r->n_convert * p->steps;
    else
        left += (long)(r->n_convert - f->k - 1) * p->steps;
    return left;
}

/* Runs f's steps after `step` (those a checkpoint restored) on the backend's layer: batches drawn
 * by (seed, layer, step), the schedule over f->steps, checkpoints for conversions only (a probe is
 * short and runs again). *tail_loss, *tail_kl (either NULL): the mean loss and logit KL of the last
 * tenth of the steps. */
static dsla_status_t fit_steps(run_t *r, layer_state_t *ls, const fit_t *f, long step,
                               double *tail_loss, double *tail_kl) {
    const dsla_distill_params_t *p = r->p;
    dsla_distill_backend_t *be = r->be;
    const int layer = f->layer;
    dsla_adamw_params_t optim = p->optim;
    optim.total_steps = f->steps;
    /* A probe runs the run's schedule compressed to its length: the same share of warm-up. */
    if (f->probe) optim.warmup_steps = (int)((long)p->optim.warmup_steps * f->steps / p->steps);
    int tail = f->steps / 10 > 0 ? f->steps / 10 : 1;
    double tail_sum = 0.0, tail_kl_sum = 0.0;
    int tail_count = 0;
    int idx[DSLA_LAYER_ORDER_MAX];
    while (step < f->steps) {
        if (r->cb && r->cb->should_stop && r->cb->should_stop(r->cb->user)) {
            if (f->probe)
                return dsla_error(DSLA_ERR_CANCELLED,
                                  "distillation stopped during layer %d's probe (step %ld of %d); "
                                  "started again on %s it probes again",
                                  layer, step + 1, f->steps, r->out_dir);
            return dsla_error(DSLA_ERR_CANCELLED,
                              "distillation stopped before layer %d's step %ld of %d; started "
                              "again on %s it resumes from the last checkpoint",
                              layer, step + 1, f->steps, r->out_dir);
        }
        double t0 = dsla_clock_seconds();
        step++;
        uint64_t rng = p->seed ^ ((uint64_t)(layer + 1) << 40) ^ (uint64_t)step;
        for (int i = 0; i < p->batch; i++)
            idx[i] = (int)(dsla_splitmix64(&rng) % (uint64_t)f->train->num_sequences);
        double loss, kl;
        DSLA_TRY(be->step(be, idx, step, &optim, &loss, &kl));
        if (step > f->steps - tail) {
            tail_sum += loss;
            tail_kl_sum += kl;
            tail_count++;
        }
        if (!f->probe && p->checkpoint_every > 0 && step % p->checkpoint_every == 0 &&
            step < f->steps) {
            DSLA_TRY(be->pull(be));
            DSLA_TRY(checkpoint_save(ls, r->out_dir, step));
        }
        double dt = dsla_clock_seconds() - t0;
        r->steps_done++;
        r->step_seconds +=
            (dt - r->step_seconds) / (double)(r->steps_done < 20 ? r->steps_done : 20);
        if (r->cb && r->cb->on_progress) {
            const dsla_distill_progress_t prog = {
                .probe = f->probe,
                .k = f->k,
                .n_layers = f->probe ? r->cfg->num_layers : r->n_convert,
                .layer = layer,
                .step = (int)step,
                .steps = f->steps,
                .loss = loss,
                .kl = kl,
                .tokens_per_second = (double)p->batch * f->train->seq_len / dt,
                .seconds_left = (double)steps_left(r, f, step) * r->step_seconds,
            };
            r->cb->on_progress(r->cb->user, &prog);
        }
    }
    if (tail_loss) *tail_loss = tail_count ? tail_sum / tail_count : NAN;
    if (tail_kl) *tail_kl = tail_count ? tail_kl_sum / tail_count : NAN;
    return DSLA_OK;
}

/* Trains the k-th layer of the order on train, saves its version and installs it. */
static dsla_status_t train_layer(run_t *r, int k, const dsla_corpus_t *train) {
    const dsla_distill_params_t *p = r->p;
    const int layer = r->report->order[k];
    dsla_distill_backend_t *be = r->be;
    double started = dsla_clock_seconds();
    /* The student learns on what it will see when served: the hybrid's stream (chained), or the
     * teacher's (the unchained ablation). The target is always the teacher's. */
    const fit_t f = {k, layer, false, p->steps, p->chained ? r->kinds : NULL, train};
    layer_state_t ls;
    dsla_status_t st = fit_begin(r, &ls, &f);
    if (st != DSLA_OK) goto done;

    dsla_distill_layer_report_t *rep = &r->report->converted[k];
    *rep = (dsla_distill_layer_report_t){.layer = layer, .k = k};
    st = be->eval_mse(be, &rep->init_eval_mse);
    long step = 0;
    if (st == DSLA_OK) st = checkpoint_load(&ls, r->out_dir, &step);
    if (st == DSLA_OK && step > 0) st = be->push(be);
    rep->train_kl = NAN;
    if (st == DSLA_OK) st = fit_steps(r, &ls, &f, step, &rep->train_loss, &rep->train_kl);
    if (st == DSLA_OK) st = be->eval_mse(be, &rep->eval_mse);
    if (st == DSLA_OK) st = be->pull(be);
    if (st != DSLA_OK) goto done;
    be->layer_end(be);

    r->converted[layer] = ls.w;
    ls.w = NULL;
    st = install(r, layer);
    double nll = NAN;
    if (st == DSLA_OK) st = be->eval_nll(be, r->kinds, r->eval, &nll, NULL);
    if (st != DSLA_OK) goto done;
    rep->eval_ppl = exp(nll);

    dsla_layer_version_meta_t meta = {
        .version = 1,
        .n_order = r->cfg->num_layers,
        .steps = p->steps,
        .train_loss = rep->train_loss,
        .eval_mse = rep->eval_mse,
        .eval_ppl = rep->eval_ppl,
        .teacher_ppl = r->report->teacher_ppl,
        .teacher_checksum = r->teacher_checksum,
        .kl_weight = p->kl_weight,
    };
    memcpy(meta.order, r->report->order, sizeof(int) * (size_t)r->cfg->num_layers);
    char path[4096];
    version_path(path, sizeof path, r->out_dir, layer);
    st = dsla_dsla_layer_save_sealed(r->converted[layer], path, &meta, r->p->mac_key);
    if (st != DSLA_OK) goto done;
    path_join(path, sizeof path, r->out_dir, CHECKPOINT_FILE);
    remove(path);
    rep->seconds = dsla_clock_seconds() - started;
done:
    fit_end(r, &ls);
    return st;
}

/* ---- the measured order ------------------------------------------------------------------------
 */

static const char PROBES_FILE[] = "probes.safetensors";

/* The measured order's probe of layer (the k-th probed): trained alone on the teacher's inputs for
 * probe_steps, then the held-out perplexity of the hybrid with only it converted. */
static dsla_status_t probe_layer(run_t *r, int k, int layer, double *ppl) {
    dsla_distill_backend_t *be = r->be;
    const fit_t f = {k, layer, true, r->p->probe_steps, NULL, r->train};
    layer_state_t ls;
    dsla_status_t st = fit_begin(r, &ls, &f);
    if (st == DSLA_OK) st = fit_steps(r, &ls, &f, 0, NULL, NULL);
    if (st == DSLA_OK) st = be->pull(be);
    be->layer_end(be);
    dsla_layer_kind_t kinds[DSLA_LAYER_ORDER_MAX];
    for (int l = 0; l < r->cfg->num_layers; l++)
        kinds[l] = l == layer ? DSLA_LAYER_DSLA : DSLA_LAYER_ATTN;
    double nll = NAN;
    if (st == DSLA_OK) st = be->install(be, layer, ls.w);
    if (st == DSLA_OK) st = be->eval_nll(be, kinds, r->eval, &nll, NULL);
    be->install(be, layer, NULL);
    fit_end(r, &ls);
    *ppl = exp(nll);
    return st;
}

/* What makes two runs' probes the same, as the probe file's metadata. */
static void probes_key(const run_t *r, char keys[][24], char values[][32]) {
    const dsla_distill_params_t *p = r->p;
    snprintf(keys[0], 24, "teacher_checksum");
    snprintf(values[0], 32, "%016llx", (unsigned long long)r->teacher_checksum);
    snprintf(keys[1], 24, "probe_steps");
    snprintf(values[1], 32, "%d", p->probe_steps);
    snprintf(keys[2], 24, "seed");
    snprintf(values[2], 32, "%llu", (unsigned long long)p->seed);
    snprintf(keys[3], 24, "batch");
    snprintf(values[3], 32, "%d", p->batch);
    snprintf(keys[4], 24, "single_state");
    snprintf(values[4], 32, "%d", p->single_state ? 1 : 0);
    snprintf(keys[5], 24, "lr");
    snprintf(values[5], 32, "%.9g", p->optim.lr);
}
enum { PROBES_KEYS = 6 };

/* Writes the order and the probe perplexities (exactly: %.17g) beside the layer versions. */
static dsla_status_t probes_save(const run_t *r) {
    const int L = r->cfg->num_layers;
    char keys[PROBES_KEYS][24], values[PROBES_KEYS][32], path[4096];
    char *order = malloc((size_t)L * 8 + 1), *ppl = malloc((size_t)L * 32 + 1);
    if (!order || !ppl) {
        free(order);
        free(ppl);
        return dsla_error_oom("the probe file");
    }
    size_t no = 0, np = 0;
    for (int i = 0; i < L; i++) {
        no += (size_t)sprintf(order + no, "%s%d", i ? "," : "", r->report->order[i]);
        np += (size_t)sprintf(ppl + np, "%s%.17g", i ? "," : "", r->report->probe_ppl[i]);
    }
    probes_key(r, keys, values);
    dsla_st_writer_t *wr = NULL;
    dsla_status_t st = dsla_st_writer_create(&wr);
    for (int i = 0; i < PROBES_KEYS && st == DSLA_OK; i++)
        st = dsla_st_writer_set_metadata(wr, keys[i], values[i]);
    if (st == DSLA_OK) st = dsla_st_writer_set_metadata(wr, "order", order);
    if (st == DSLA_OK) st = dsla_st_writer_set_metadata(wr, "probe_ppl", ppl);
    path_join(path, sizeof path, r->out_dir, PROBES_FILE);
    if (st == DSLA_OK) st = dsla_st_writer_save(wr, path);
    dsla_st_writer_destroy(&wr);
    free(order);
    free(ppl);
    return st;
}

/* Parses n comma-separated numbers; false unless there are exactly n. */
static bool parse_list(const char *s, int n, double *out) {
    for (int i = 0; i < n; i++) {
        char *end;
        out[i] = strtod(s, &end);
        if (end == s || *end != (i + 1 < n ? ',' : '\0')) return false;
        s = end + (i + 1 < n);
    }
    return true;
}

/* Reads the probe file of an earlier run into the report, when out_dir holds one (*found). */
static dsla_status_t probes_load(run_t *r, bool *found) {
    const int L = r->cfg->num_layers;
    char keys[PROBES_KEYS][24], values[PROBES_KEYS][32], path[4096];
    path_join(path, sizeof path, r->out_dir, PROBES_FILE);
    struct stat sb;
    *found = stat(path, &sb) == 0;
    if (!*found) return DSLA_OK;
    dsla_safetensors_t *sf = NULL;
    DSLA_TRY(dsla_safetensors_open(&sf, path));
    probes_key(r, keys, values);
    dsla_status_t st = DSLA_OK;
    for (int i = 0; i < PROBES_KEYS && st == DSLA_OK; i++) {
        const char *v = dsla_safetensors_metadata(sf, keys[i]);
        if (!v || strcmp(v, values[i]) != 0)
            st = dsla_error(DSLA_ERR_FORMAT,
                            "%s holds probes with %s %s, this run's is %s; use a fresh output "
                            "directory or the same parameters",
                            path, keys[i], v ? v : "(none)", values[i]);
    }
    double *order = malloc((size_t)L * sizeof *order);
    if (st == DSLA_OK && !order) st = dsla_error_oom("the probe file");
    const char *o = dsla_safetensors_metadata(sf, "order");
    const char *p = dsla_safetensors_metadata(sf, "probe_ppl");
    bool seen[DSLA_LAYER_ORDER_MAX] = {false};
    bool ok = st == DSLA_OK && o && p && parse_list(o, L, order) &&
              parse_list(p, L, r->report->probe_ppl);
    for (int i = 0; ok && i < L; i++) {
        const int l = (int)order[i];
        ok = order[i] == l && l >= 0 && l < L && !seen[l];
        if (ok) seen[l] = true;
        r->report->order[i] = l;
    }
    if (st == DSLA_OK && !ok)
        st = dsla_error(DSLA_ERR_FORMAT,
                        "%s: 'order' must list the model's %d layers once each and 'probe_ppl' "
                        "hold %d numbers",
                        path, L, L);
    free(order);
    dsla_safetensors_close(&sf);
    return st;
}

/* DSLA_ORDER_MEASURED (distill.h): the stored order on resume, else a probe of every layer, the
 * layers sorted by ascending probe perplexity, and the order stored before anything trains. */
static dsla_status_t measured_order(run_t *r) {
    const int L = r->cfg->num_layers;
    dsla_distill_report_t *rep = r->report;
    rep->probe_steps = r->p->probe_steps;
    bool found = false;
    DSLA_TRY(probes_load(r, &found));
    if (found) {
        rep->probes_resumed = true;
        return DSLA_OK;
    }
    const double started = dsla_clock_seconds();
    for (int l = 0; l < L; l++) {
        DSLA_TRY(probe_layer(r, l, l, &rep->probe_ppl[l]));
        if (r->cb && r->cb->on_probe_done) r->cb->on_probe_done(r->cb->user, l, rep->probe_ppl[l]);
    }
    rep->probe_seconds = dsla_clock_seconds() - started;
    order_ascending(rep->order, rep->probe_ppl, L);
    return probes_save(r);
}

/* Writes the k-th layer of the order as the teacher initialises it (DESIGN.md section 4), untrained
 * and unscored (steps 0, NaN losses): layer versions for benchmarks that need DSLA layers of a
 * model's shape, not their quality. Same seed per layer as training starts from. */
static dsla_status_t init_layer(run_t *r, int k) {
    const int layer = r->report->order[k];
    double started = dsla_clock_seconds();
    dsla_dsla_layer_t *w = NULL;
    DSLA_TRY(dsla_dsla_layer_create(&w, r->cfg, layer));
    w->single_state = r->p->single_state;
    dsla_status_t st =
        dsla_dsla_layer_init_from_teacher(w, r->model, layer, r->p->seed + (uint64_t)layer);
    dsla_layer_version_meta_t meta = {
        .version = 1,
        .n_order = r->cfg->num_layers,
        .steps = 0,
        .train_loss = NAN,
        .eval_mse = NAN,
        .eval_ppl = NAN,
        .teacher_ppl = NAN,
        .teacher_checksum = r->teacher_checksum,
    };
    memcpy(meta.order, r->report->order, sizeof(int) * (size_t)r->cfg->num_layers);
    char path[4096];
    version_path(path, sizeof path, r->out_dir, layer);
    if (st == DSLA_OK) st = dsla_dsla_layer_save_sealed(w, path, &meta, r->p->mac_key);
    if (st == DSLA_OK) {
        r->converted[layer] = w;
        w = NULL;
        st = install(r, layer);
    }
    if (st == DSLA_OK) {
        r->report->converted[k] = (dsla_distill_layer_report_t){
            layer, k, false, NAN, NAN, NAN, NAN, NAN, dsla_clock_seconds() - started};
    }
    dsla_dsla_layer_destroy(&w);
    return st;
}

/* The k-th layer's training pool: train, and what callbacks->extend_train appends to a copy. */
static dsla_status_t train_layer_pooled(run_t *r, int k) {
    if (!r->cb || !r->cb->extend_train) return train_layer(r, k, r->train);
    const dsla_corpus_t *train = r->train;
    const size_t bytes = (size_t)train->num_sequences * (size_t)train->seq_len * sizeof(int32_t);
    dsla_corpus_t pool = {.seq_len = train->seq_len, .num_sequences = train->num_sequences};
    if (!(pool.tokens = malloc(bytes))) return dsla_error_oom("the training pool");
    memcpy(pool.tokens, train->tokens, bytes);
    const int layer = r->report->order[k];
    dsla_status_t st = r->cb->extend_train(r->cb->user, k, layer, &pool);
    if (st == DSLA_OK &&
        (pool.seq_len != train->seq_len || pool.num_sequences < train->num_sequences ||
         memcmp(pool.tokens, train->tokens, bytes) != 0))
        st =
            dsla_error(DSLA_ERR_INTERNAL,
                       "extend_train changed layer %d's training pool instead of appending", layer);
    if (st == DSLA_OK) st = train_layer(r, k, &pool);
    dsla_corpus_free(&pool);
    return st;
}

static dsla_status_t make_dir(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (char *s = path + 1; *s; s++)
        if (*s == '/') {
            *s = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST)
                return dsla_error(DSLA_ERR_IO, "mkdir %s: %s", path, strerror(errno));
            *s = '/';
        }
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return dsla_error(DSLA_ERR_IO, "mkdir %s: %s", path, strerror(errno));
    return DSLA_OK;
}

dsla_status_t dsla_distill_run(dsla_model_t *teacher, const dsla_corpus_t *train,
                               const dsla_corpus_t *eval, const dsla_distill_params_t *params,
                               const char *out_dir, const dsla_distill_callbacks_t *callbacks,
                               dsla_distill_report_t *report) {
    dsla_distill_backend_t *be = NULL;
    memset(report, 0, sizeof *report);
    DSLA_TRY(dsla_distill_backend_cpu_create(&be, teacher));
    dsla_status_t st =
        dsla_distill_run_on(be, teacher, train, eval, params, out_dir, callbacks, report);
    dsla_distill_backend_destroy(&be);
    return st;
}

dsla_status_t dsla_distill_run_on(dsla_distill_backend_t *be, dsla_model_t *teacher,
                                  const dsla_corpus_t *train, const dsla_corpus_t *eval,
                                  const dsla_distill_params_t *params, const char *out_dir,
                                  const dsla_distill_callbacks_t *callbacks,
                                  dsla_distill_report_t *report) {
    memset(report, 0, sizeof *report);
    const dsla_model_config_t *cfg = dsla_model_config(teacher);
    DSLA_TRY(validate(cfg, params, train, eval));
    if (params->gate_cosine_weight > 0 && !be->gate_cosine)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "the gate cosine term (weight %g) is not implemented on the %s backend; "
                          "leave it at 0 there or distil on the CPU",
                          params->gate_cosine_weight, be->name);
    if (params->kl_weight > 0 && !be->logit_kl)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "--kl-weight %g: the logit KL term is not implemented on the %s backend; "
                          "leave it at 0 there or distil on the CPU",
                          params->kl_weight, be->name);
    DSLA_TRY(make_dir(out_dir));
    run_t r = {
        .model = teacher,
        .cfg = cfg,
        .p = params,
        .train = train,
        .eval = eval,
        .out_dir = out_dir,
        .cb = callbacks,
        .report = report,
        .be = be,
        .n_convert = params->layers ? params->layers : cfg->num_layers,
    };
    report->n_layers = cfg->num_layers;
    report->kl_weight = params->kl_weight;
    report->kl_temperature = params->kl_temperature;
    for (int l = 0; l < cfg->num_layers; l++)
        r.kinds[l] = DSLA_LAYER_ATTN;
    r.teacher_checksum = dsla_model_checksum(teacher);
    dsla_status_t st = compute_order(&r);
    if (st == DSLA_OK && params->order_mode == DSLA_ORDER_MEASURED) st = measured_order(&r);
    double nll = NAN;
    if (st == DSLA_OK && !init_only(params)) st = be->eval_nll(be, NULL, eval, &nll, NULL);
    report->teacher_ppl = exp(nll);
    for (int k = 0; k < r.n_convert && st == DSLA_OK; k++) {
        bool found = false;
        st = load_finished(&r, k, &found);
        if (st != DSLA_OK) break;
        if (found) {
            st = install(&r, report->order[k]);
        } else if (init_only(params)) {
            st = init_layer(&r, k);
        } else {
            st = train_layer_pooled(&r, k);
        }
        if (st == DSLA_OK) {
            report->n_converted = k + 1;
            if (callbacks && callbacks->on_layer_done)
                callbacks->on_layer_done(callbacks->user, &report->converted[k]);
        }
    }
    for (int l = 0; l < cfg->num_layers; l++) {
        if (r.converted[l]) be->install(be, l, NULL);
        dsla_model_set_dsla_layer(teacher, l, NULL);
        dsla_dsla_layer_destroy(&r.converted[l]);
    }
    return st;
}

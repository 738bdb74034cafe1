/* The seam between the chained distillation engine (distill.c: order, data, batches, schedule,
 * checkpoints, layer versions, reports) and where its forward passes and training run: the CPU
 * (distill.c, over llama.h and the kernels/cpu training kernels) or a GPU (distill_cuda.c, over
 * llama_cuda.h and kernels/cuda). The engine decides everything that makes two runs comparable
 * (which sequences each step draws, the learning rate, when to checkpoint); a backend only
 * computes, so a CPU run and a GPU run with the same parameters see the same batches.
 *
 * Per layer the engine owns the host copies of the trained weights and the AdamW moments (w, m, v,
 * one dsla_dsla_layer_t each, same layout) and hands them to layer_begin; a backend that keeps its
 * own copies (on a device) pulls them into w, m, v on pull and takes them back on push.
 *
 * Internal to runtime/distill: callers use distill.h. */
#ifndef DSLA_DISTILL_BACKEND_H
#define DSLA_DISTILL_BACKEND_H

#include "runtime/distill/distill.h"

/* The optional loss terms of one layer's training (DESIGN.md 5.3; 0: off). */
typedef struct {
    double gate_cosine_weight;
    double kl_weight, kl_temperature;
} dsla_distill_terms_t;

struct dsla_distill_backend {
    const char *name; /* "cpu" or "cuda", for messages */
    bool gate_cosine; /* whether step supports the gate cosine term */
    bool logit_kl;    /* whether step supports the logit KL term */
    /* Installs w as the DSLA weights of layer for later forward passes (NULL: uninstalls). The
     * engine keeps w alive while installed. */
    dsla_status_t (*install)(dsla_distill_backend_t *b, int layer, const dsla_dsla_layer_t *w);
    /* dsla_distill_eval_nll on this backend; token_nll (NULL: not wanted) receives each scored
     * token's NLL, [num_sequences][seq_len - 1]. */
    dsla_status_t (*eval_nll)(dsla_distill_backend_t *b, const dsla_layer_kind_t *kinds,
                              const dsla_corpus_t *corpus, double *nll, double *token_nll);
    /* Prepares to train layer w->layer with the loss terms `terms`: captures, for every sequence
     * of train and of eval, the stream entering the layer under input_plan (NULL: the teacher's)
     * and the teacher's stream leaving it (with the logit term, also the teacher's final stream of
     * every training sequence; the layers after w->layer then run as input_plan says), and
     * uploads w, m, v. */
    dsla_status_t (*layer_begin)(dsla_distill_backend_t *b, dsla_dsla_layer_t *w,
                                 dsla_dsla_layer_t *m, dsla_dsla_layer_t *v, int batch,
                                 bool single_state, const dsla_distill_terms_t *terms,
                                 const dsla_layer_kind_t *input_plan, const dsla_corpus_t *train,
                                 const dsla_corpus_t *eval);
    /* Held-out layer loss of the current weights over all of eval. */
    dsla_status_t (*eval_mse)(dsla_distill_backend_t *b, double *mse);
    /* One AdamW step (1-based) on the training sequences idx[0..batch): forward, normalised MSE
     * plus layer_begin's optional terms, backward, clipping at optim->max_grad_norm, update at
     * dsla_adamw_lr(optim, step). *loss: the whole loss; *kl: the logit term's KL before its
     * weight (NaN without the term). */
    dsla_status_t (*step)(dsla_distill_backend_t *b, const int *idx, long step,
                          const dsla_adamw_params_t *optim, double *loss, double *kl);
    dsla_status_t (*pull)(dsla_distill_backend_t *b); /* backend's w, m, v -> the engine's */
    dsla_status_t (*push)(dsla_distill_backend_t *b); /* the engine's w, m, v -> backend's */
    void (*layer_end)(dsla_distill_backend_t *b);
    void (*destroy)(dsla_distill_backend_t *b);
};

/* The CPU backend's loss and gradient for the sequences idx[0..batch) of the layer that
 * layer_begin prepared, without an update: *grad (the backend's, valid until the next call) holds
 * d loss / d w for every trainable tensor, *kl the logit term's KL (NaN when off). For tests that
 * hold the gradient to finite differences of the loss. */
dsla_status_t dsla_distill_cpu_loss_grad(dsla_distill_backend_t *b, const int *idx, double *loss,
                                         double *kl, const dsla_dsla_layer_t **grad);

/* The trainable tensors of a DSLA layer as offsets into its data block, each with its weight-decay
 * choice (matrices decay; biases and alpha do not); a single-state layer leaves out what its output
 * never uses (wg2, bg2, alpha). Returns the count (at most DSLA_DISTILL_PARAMS_MAX). */
enum { DSLA_DISTILL_PARAMS_MAX = 9 };
typedef struct {
    size_t offset, n;
    bool decay;
} dsla_distill_param_t;
int dsla_distill_params_of(const dsla_dsla_layer_t *w, bool single_state,
                           dsla_distill_param_t *out);

/* Sequences per forward pass when capturing hidden states or scoring, on either backend: enough
 * rows for the GEMMs to run near their best, few enough that logits of a 32K vocabulary stay a few
 * hundred MB. */
enum { DSLA_DISTILL_CAPTURE_BATCH = 8 };

/* One forward pass of a backend over sequences [first, first + n) of corpus (n at most
 * DSLA_DISTILL_CAPTURE_BATCH) under plan kinds (NULL: the teacher's): hidden (num_layers + 1
 * entries, or NULL) receives each named stream at row offset first * seq_len, running only the
 * first layers_to_run layers when no logits are asked; logits (when not NULL) every token's row. */
typedef dsla_status_t (*dsla_distill_forward_fn)(void *ctx, const dsla_layer_kind_t *kinds,
                                                 const dsla_corpus_t *corpus, int first, int n,
                                                 float *const *hidden, int layers_to_run,
                                                 float *logits);

/* Where layer_begin's captures go, [sequences, T, D] each, in the backend's memory. train_final
 * (NULL: not wanted) takes the teacher's stream leaving its last layer, num_layers - 1. */
typedef struct {
    float *train_in, *train_target, *eval_in, *eval_target;
    float *train_final;
    int num_layers;
} dsla_distill_captures_t;

/* The captures of layer_begin on either backend, batch by batch through fwd (each pass stopping
 * after the last stream it captures): for every sequence of train and of eval, the stream entering
 * layer under input_plan (NULL: the teacher's) into *_in and the teacher's stream leaving it into
 * *_target (and its final stream into train_final, in the same pass). */
dsla_status_t dsla_distill_capture_layer(dsla_distill_forward_fn fwd, void *ctx,
                                         const dsla_layer_kind_t *input_plan, int layer,
                                         const dsla_corpus_t *train, const dsla_corpus_t *eval,
                                         const dsla_distill_captures_t *out);

/* eval_nll on either backend: the mean next-token negative log-likelihood of corpus under kinds,
 * batch by batch through fwd into logits (host memory for DSLA_DISTILL_CAPTURE_BATCH * seq_len
 * rows of vocab floats), scored on the host in double; each token's into token_nll when not
 * NULL ([num_sequences][seq_len - 1]). */
dsla_status_t dsla_distill_score(dsla_distill_forward_fn fwd, void *ctx,
                                 const dsla_layer_kind_t *kinds, const dsla_corpus_t *corpus,
                                 float *logits, int vocab, double *nll, double *token_nll);

/* The weights the kernels run for a single-state layer: softmax(0, -inf) = (1, 0), exactly as
 * serving runs it, so the recency state never reaches the output. */
extern const float dsla_distill_history_only_alpha[2];

#endif

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

struct dsla_distill_backend {
    const char *name; /* "cpu" or "cuda", for messages */
    bool gate_cosine; /* whether step supports the gate cosine term */
    /* Installs w as the DSLA weights of layer for later forward passes (NULL: uninstalls). The
     * engine keeps w alive while installed. */
    dsla_status_t (*install)(dsla_distill_backend_t *b, int layer, const dsla_dsla_layer_t *w);
    /* dsla_distill_eval_nll on this backend. */
    dsla_status_t (*eval_nll)(dsla_distill_backend_t *b, const dsla_layer_kind_t *kinds,
                              const dsla_corpus_t *corpus, double *nll);
    /* Prepares to train layer w->layer: captures, for every sequence of train and of eval, the
     * stream entering the layer under input_plan (NULL: the teacher's) and the teacher's stream
     * leaving it, and uploads w, m, v. */
    dsla_status_t (*layer_begin)(dsla_distill_backend_t *b, dsla_dsla_layer_t *w,
                                 dsla_dsla_layer_t *m, dsla_dsla_layer_t *v, int batch,
                                 bool single_state, const dsla_layer_kind_t *input_plan,
                                 const dsla_corpus_t *train, const dsla_corpus_t *eval);
    /* Held-out layer loss of the current weights over all of eval. */
    dsla_status_t (*eval_mse)(dsla_distill_backend_t *b, double *mse);
    /* One AdamW step (1-based) on the training sequences idx[0..batch): forward, normalised MSE,
     * backward, clipping at optim->max_grad_norm, update at dsla_adamw_lr(optim, step). */
    dsla_status_t (*step)(dsla_distill_backend_t *b, const int *idx, long step,
                          const dsla_adamw_params_t *optim, double gate_cosine_weight,
                          double *loss);
    dsla_status_t (*pull)(dsla_distill_backend_t *b); /* backend's w, m, v -> the engine's */
    dsla_status_t (*push)(dsla_distill_backend_t *b); /* the engine's w, m, v -> backend's */
    void (*layer_end)(dsla_distill_backend_t *b);
    void (*destroy)(dsla_distill_backend_t *b);
};

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

/* Adds the next-token negative log-likelihoods of n sequences of T tokens (logits: n * T rows of
 * vocab floats) to *total and their count to *count: eval_nll's arithmetic on either backend. */
void dsla_distill_add_nll(const float *logits, const dsla_corpus_t *corpus, int first, int n,
                          int vocab, double *total, long *count);

/* The weights the kernels run for a single-state layer: softmax(0, -inf) = (1, 0), exactly as
 * serving runs it, so the recency state never reaches the output. */
extern const float dsla_distill_history_only_alpha[2];

#endif

/* The rest of the hybrid after a layer in training, for the logit KL term of DESIGN.md 5.3: from
 * the student layer's output h_out (the residual stream leaving decoder layer `layer`), the frozen
 * layers layer+1 .. L-1 under a plan (attention with RoPE through the training attention kernels,
 * DSLA through the layer kernels, with the DSLA weights installed in the model), the final norm
 * and the head, then KL(teacher || hybrid) of the next-token distributions at a temperature
 * against the teacher's final stream, and the exact gradient of that KL back to h_out.
 *
 * Every later layer is frozen: the backward computes activation gradients only (the DSLA layer
 * backward's weight gradients go to a scratch layer). Each layer's input is kept from the forward
 * and the layer is recomputed in the backward, so the memory is a few activations of one batch
 * per layer plus one attention layer's probabilities, not every layer's. Logits are formed in
 * chunks of rows, so a large vocabulary costs a chunk's rows, not the batch's.
 *
 * Contract: CPU only; sequences are whole, starting at position 0 (how the engine captures them);
 * the model and its installed DSLA layers must stay unchanged while a tail uses them. Internal to
 * runtime/distill. */
#ifndef DSLA_DISTILL_LOGIT_TAIL_H
#define DSLA_DISTILL_LOGIT_TAIL_H

#include "runtime/core/status.h"
#include "runtime/model/llama.h"

typedef struct dsla_logit_tail dsla_logit_tail_t;

/* A tail after decoder layer `layer` of model for up to `batch` sequences of seq_len tokens;
 * kinds[j] (NULL: all attention) says how each later layer j runs (a DSLA layer must be installed
 * in the model when the tail runs). temperature > 0. */
dsla_status_t dsla_logit_tail_create(dsla_logit_tail_t **out, const dsla_model_t *model, int layer,
                                     const dsla_layer_kind_t *kinds, int batch, int seq_len,
                                     float temperature);
void dsla_logit_tail_destroy(dsla_logit_tail_t **t);

/* The checks both tails' create make (this one and logit_tail_cuda.h's): layer of the model,
 * batch and seq_len at least 1, temperature above 0; INVALID_ARGUMENT naming them otherwise. */
dsla_status_t dsla_logit_tail_check(const dsla_model_t *model, int layer, int batch, int seq_len,
                                    float temperature);

/* KL(softmax(teacher / T) || softmax(hybrid / T)) * T^2, averaged over the batch * seq_len rows
 * (dsla_cpu_kl_div_loss's batchmean semantics), of the hybrid's logits from h_out [batch * T, D]
 * against the teacher's from teacher_final [batch * T, D] (the teacher's stream leaving its last
 * layer); into *kl. When dh_out is not NULL, it receives (=) dKL/dh_out [batch * T, D]. */
dsla_status_t dsla_logit_tail_kl(dsla_logit_tail_t *t, const float *h_out,
                                 const float *teacher_final, int batch, double *kl, float *dh_out);

#endif

/* logit_tail.h on the GPU: the frozen rest of the hybrid after a layer in training (the layers
 * after it under a plan, the final norm and the head), forward and backward to the layer's
 * output, for the logit KL term of DESIGN.md 5.3 in the CUDA backend (distill_cuda.c).
 *
 * The same passes as the CPU tail, layer by layer: attention with RoPE through the training
 * attention kernels (kernels_cuda_train.h; probabilities materialised, so batch * heads *
 * seq_len^2 floats), DSLA layers through the chunked kernels, the MLP blocks and the head by GEMM,
 * KL(teacher || hybrid) at a temperature in chunks of rows. Every later layer is frozen: only
 * activation gradients are formed. Each layer's input is kept and the layer recomputed in the
 * backward. The tail keeps fp32 device copies of the later layers' weights and the head (the
 * model's, and the DSLA layers installed for the plan when it is created).
 *
 * Contract: CUDA builds only; all pointers are device pointers on the tail's stream; sequences are
 * whole, starting at position 0; the installed DSLA layers must not change while the tail lives.
 * Internal to runtime/distill. */
#ifndef DSLA_DISTILL_LOGIT_TAIL_CUDA_H
#define DSLA_DISTILL_LOGIT_TAIL_CUDA_H

#ifdef DSLA_HAVE_CUDA

#include "runtime/distill/blocks_cuda.h"
#include "runtime/model/llama.h"

typedef struct dsla_logit_tail_cuda dsla_logit_tail_cuda_t;

/* A tail after decoder layer `layer` for up to `batch` sequences of seq_len tokens; kinds[j]
 * (NULL: all attention) says how each later layer j runs, installed[j] the DSLA weights of those
 * that run as DSLA (host copies, uploaded here). temperature > 0. */
dsla_status_t dsla_logit_tail_cuda_create(dsla_logit_tail_cuda_t **out, const dsla_dev_ctx_t *ctx,
                                          const dsla_model_t *model, int layer,
                                          const dsla_layer_kind_t *kinds,
                                          const dsla_dsla_layer_t *const *installed, int batch,
                                          int seq_len, float temperature);
void dsla_logit_tail_cuda_destroy(dsla_logit_tail_cuda_t **t);

/* dsla_logit_tail_kl on the device: *kl (a device double the caller zeroes) += the KL of the
 * hybrid's logits from h_out [batch * T, D] against the teacher's from teacher_final; when dh_out
 * is not NULL it receives (=) dKL/dh_out. Nothing is synchronised. */
dsla_status_t dsla_logit_tail_cuda_kl(dsla_logit_tail_cuda_t *t, const float *h_out,
                                      const float *teacher_final, int batch, double *kl,
                                      float *dh_out);

#endif /* DSLA_HAVE_CUDA */

#endif

/* Training kernels on the GPU: the fast versions of kernels_train.h's operations that train one
 * DSLA layer against the teacher (runtime/distill/distill_cuda.c), besides the DSLA core and AdamW
 * of kernels_cuda_dsla.h.
 *
 * Each op mirrors its CPU reference in kernels/cpu/train_*.c (same layouts: row-major fp32, weights
 * in the (out, in) Linear layout; same formulas) and is held to it by tests/gpu/test_ops_harness.c.
 * Reductions accumulate in double, as on the CPU, into device doubles the caller zeroes and reads:
 * a loss or a norm stays on the device until the caller needs it on the host.
 *
 * Contract: as kernels_cuda.h: device pointers, enqueued on the caller's stream, no allocation, no
 * synchronisation, nothing of models or files. The header compiles without CUDA (it declares
 * nothing there). */
#ifndef DSLA_KERNELS_CUDA_TRAIN_H
#define DSLA_KERNELS_CUDA_TRAIN_H

#ifdef DSLA_HAVE_CUDA

#include <stdbool.h>
#include <stddef.h>

#include "kernels/kernels_cuda_dsla.h"

#ifdef __cplusplus
extern "C" {
#endif

/* c[m,n] = op(a)[m,k] op(b)[k,n] + beta c, row-major fp32, op(x) = x^T when trans_x: the three
 * GEMMs of a linear layer's training (forward y = x w^T: a = x, b = w, trans_b; input gradient
 * dx = dy w: a = dy, b = w; weight gradient dw = dy^T x: a = dy, trans_a, b = x). math F32 runs
 * full fp32 (the CPU's numbers to ~1e-6), TF32 the tensor cores (fp32 storage and sums, ~1e-3).
 * c must not alias a or b; beta = 0 never reads c. (kernels/cuda/gemm.cu) */
dsla_status_t dsla_cuda_gemm_f32(dsla_cuda_blas_t *h, dsla_cuda_stream_t stream, float *c,
                                 const float *a, bool trans_a, const float *b, bool trans_b, int m,
                                 int n, int k, float beta, dsla_cuda_dsla_math_t math);

/* dsla_cpu_rmsnorm_backward for a frozen norm (no weight gradient): dx (+)= per accumulate; dx may
 * alias dy when !accumulate. (kernels/cuda/train.cu, as the rest) */
dsla_status_t dsla_cuda_rmsnorm_backward(dsla_cuda_stream_t stream, float *dx, const float *dy,
                                         const float *x, const float *w, int rows, int dim,
                                         float eps, bool accumulate);

/* dsla_cpu_swiglu_backward: the same strides and the same permitted aliasing (dgate = gate,
 * dup = up). */
dsla_status_t dsla_cuda_swiglu_backward(dsla_cuda_stream_t stream, float *dgate, float *dup,
                                        const float *dy, const float *gate, const float *up,
                                        int rows, int n, int stride);

/* dsla_cpu_bias_backward: db[n] (+)= column sums of dy[m, n]. */
dsla_status_t dsla_cuda_bias_backward(dsla_cuda_stream_t stream, float *db, const float *dy, int m,
                                      int n, bool accumulate);

/* The normalised MSE of dsla_cpu_nmse_loss in two launches, so that held-out sums can span many
 * batches: sums[0] += sum((s - t)^2), sums[1] += sum(t^2) (sums: 2 device doubles the caller
 * zeroes); then, when grad is wanted, grad = 2 (s - t) / den with den = sums[1] (1 when 0), read on
 * the device. The loss is sums[0] / den. grad may alias s. */
dsla_status_t dsla_cuda_nmse_sums(dsla_cuda_stream_t stream, double *sums, const float *s,
                                  const float *t, size_t n);
dsla_status_t dsla_cuda_nmse_grad(dsla_cuda_stream_t stream, float *grad, const float *s,
                                  const float *t, size_t n, const double *sums);

/* *acc += sum(x^2) over n floats: one term of a global gradient norm. */
dsla_status_t dsla_cuda_sum_squares(dsla_cuda_stream_t stream, double *acc, const float *x,
                                    size_t n);

/* x *= scale over n floats (gradient clipping's rescale, with the CPU's float scale). */
dsla_status_t dsla_cuda_scale(dsla_cuda_stream_t stream, float *x, float scale, size_t n);

/* ---- the logit term: causal attention and the logits' KL (kernels/cuda/train_attention.cu) ----
 */

/* The longest T the two attention ops take: one block holds a query row's T fp32 scores in shared
 * memory, within the 48 KiB a block gets without opting in. probs is B*H*T*T floats (256 MiB per
 * (b, h) at this T), so the logit term's sequences stay far below it. */
#define DSLA_CUDA_TRAIN_ATTENTION_MAX_T 8192

/* dsla_cpu_causal_attention_train_forward: q [B*T, H*d], k and v [B*T, Hkv*d], out [B*T, H*d],
 * probs [B, H, T, T] (the softmax rows, zeros above the diagonal) for the backward. d <= 128 and T
 * <= DSLA_CUDA_TRAIN_ATTENTION_MAX_T, else DSLA_ERR_UNSUPPORTED naming the value and the limit.
 * Scores, the softmax sum and P V accumulate in double as on the CPU. Costs 2 B H T^2 d flops in
 * fp64 (Q K^T and P V over the causal half), reads K and V once per query row (from L2), writes 4 B
 * H T^2 bytes of probs. No output may alias an input. */
dsla_status_t dsla_cuda_causal_attention_train_forward(dsla_cuda_stream_t stream, float *out,
                                                       float *probs, const float *q, const float *k,
                                                       const float *v, int B, int T, int H, int Hkv,
                                                       int d);

/* dsla_cpu_causal_attention_train_backward given the forward's probs: dq [B*T, H*d] (=), dk and dv
 * [B*T, Hkv*d] (=, summed over each KV head's query heads), with no scratch: probs is overwritten.
 * On return it holds dS = P (dP - rowsum(P dP)) / sqrt(d), dP = dout V^T, the gradient of the
 * unscaled scores q_i . k_j (zeros above the diagonal), so run the forward again before another
 * backward. dk and dv accumulate in double where the CPU accumulates in float. Same limits as the
 * forward. Costs 4 B H T^2 d flops in fp64 (P^T dout, dout V^T, dS K, dS^T Q); reads probs' lower
 * triangle three times and writes all of it once (about 10 B H T^2 bytes). No output may alias an
 * input. */
dsla_status_t dsla_cuda_causal_attention_train_backward(dsla_cuda_stream_t stream, float *dq,
                                                        float *dk, float *dv, const float *dout,
                                                        float *probs, const float *q,
                                                        const float *k, const float *v, int B,
                                                        int T, int H, int Hkv, int d);

/* dsla_cpu_kl_div_loss with the batch mean left to the caller, so that rows can come in chunks:
 *   *kl_acc += weight * T^2 * sum over the rows of KL(softmax(teacher / T) || softmax(student / T))
 * (kl_acc: a device double the caller zeroes), and, when grad is not NULL, grad [rows, vocab] (=)
 * the gradient of that term, weight * T * (q - p). weight = 1 / rows is the CPU's value and
 * gradient; 1 / total_rows over chunks sums to it. Logit rows [rows, vocab]; temperature > 0.
 * Every max, sum and log-sum-exp in double as the CPU; the rows' totals meet in a double
 * atomicAdd, so the last bits of *kl_acc may vary run to run. Costs four fp64 exps per logit and
 * three passes over both rows. grad may alias student (each row's reductions finish before any of
 * its elements is written; the logit term's tail turns the hybrid's logits into their gradient in
 * place), not teacher. */
dsla_status_t dsla_cuda_kl_div_loss(dsla_cuda_stream_t stream, double *kl_acc, float *grad,
                                    const float *student, const float *teacher, int rows, int vocab,
                                    float temperature, double weight);

#ifdef __cplusplus
}
#endif

#endif /* DSLA_HAVE_CUDA */

#endif

/* Training kernels: what the distiller needs around the DSLA layer (whose forward and backward live
 * in kernels_dsla.h) to train one layer against the teacher (DESIGN.md section 5).
 *
 * The student's layer output is h_out = h_mid + MLP(RMSNorm(h_mid)), h_mid = h_in +
 * DSLA(RMSNorm(h_in)), MLP(x) = W_down (silu(W_gate x) * (W_up x)). Only the DSLA weights train, so
 * the frozen MLP and norms need activation gradients only; the GEMM and RMSNorm weight gradients
 * are here for completeness and for later trainable layers. Also here: the loss terms of
 * section 5.3, AdamW, its learning-rate schedule and global gradient-norm clipping.
 *
 * Conventions are those of kernels.h: row-major float32, PyTorch Linear (out, in) weight layout,
 * outputs first; an output may alias an input only where the comment says so. A gradient is
 * written (=) unless the function takes `accumulate` and it is true (+=). Reductions (norms, sums,
 * losses) are accumulated in double so that wide rows and large arrays keep their small terms.
 *
 * Contract: these kernels allocate nothing (the fused MLP block takes a caller's workspace sized by
 * its query), start no threads (OpenBLAS may), and know nothing of models, files or requests. The
 * hyper-parameters of a whole distillation run belong to runtime/distill; only the optimizer's and
 * the schedule's live here. */
#ifndef DSLA_KERNELS_TRAIN_H
#define DSLA_KERNELS_TRAIN_H

#include <stdbool.h>
#include <stddef.h>

/* ---- linear layers (kernels/cpu/train_backward.c) ---------------------------------------------
 */

/* Backward of y[m,n] = x[m,k] w[n,k]^T: dx[m,k] (+)= dy[m,n] w[n,k]. dx must not alias dy or w. */
void dsla_cpu_gemm_backward_input(float *dx, const float *dy, const float *w, int m, int n, int k,
                                  bool accumulate);

/* Backward of the same GEMM for the weight: dw[n,k] (+)= dy[m,n]^T x[m,k], i.e. summed over the m
 * rows. With m == 0 and !accumulate, dw is zeroed. dw must not alias dy or x. */
void dsla_cpu_gemm_backward_weight(float *dw, const float *dy, const float *x, int m, int n, int k,
                                   bool accumulate);

/* Backward of a bias added to every row of y[m,n]: db[n] (+)= sum over rows of dy. */
void dsla_cpu_bias_backward(float *db, const float *dy, int m, int n, bool accumulate);

/* Backward of dsla_cpu_rmsnorm (y = x * r * w, r = rsqrt(mean(x^2) + eps) per row):
 *   dx = r * (w * dy - x * r^2 * sum(w * dy * x) / dim),
 *   dw = sum over rows of dy * x * r.
 * dx (+)= per `accumulate`; dx may alias dy when !accumulate (each row's sum is taken before it is
 * written). dw may be NULL (frozen norm); otherwise it is written or accumulated like dx. */
void dsla_cpu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x,
                               const float *w, int rows, int dim, float eps, bool accumulate);

/* Backward of dsla_cpu_swiglu (y = silu(g) * u, y [rows, n] contiguous):
 *   dg = dy * u * s * (1 + g * (1 - s)), s = sigmoid(g);   du = dy * silu(g).
 * gate, up, dgate and dup rows all start every `stride` floats, so the two halves of a fused
 * gate/up GEMM output work as in the forward. dgate may alias gate and dup may alias up (each
 * element is read before it is written), which lets the fused block reuse its forward buffers. */
void dsla_cpu_swiglu_backward(float *dgate, float *dup, const float *dy, const float *gate,
                              const float *up, int rows, int n, int stride);

/* ---- frozen MLP block (kernels/cpu/train_mlp.c) -----------------------------------------------
 */

/* A Llama decoder layer's second half: h_out = h_mid + W_down (silu(W_gate x) * (W_up x)),
 * x = RMSNorm(h_mid; norm_w, eps). Weights in (out, in) layout. */
typedef struct {
    const float *norm_w; /* [dim]: post_attention_layernorm */
    const float *w_gate; /* [hidden, dim] */
    const float *w_up;   /* [hidden, dim] */
    const float *w_down; /* [dim, hidden] */
    int dim;
    int hidden;
    float eps;
} dsla_mlp_block_t;

/* Floats of workspace dsla_cpu_mlp_block_forward and _backward need for `rows` rows. */
size_t dsla_cpu_mlp_block_workspace_floats(const dsla_mlp_block_t *mlp, int rows);

/* h_out [rows, dim] from h_mid [rows, dim]. h_out must not alias h_mid. */
void dsla_cpu_mlp_block_forward(float *h_out, const float *h_mid, const dsla_mlp_block_t *mlp,
                                int rows, float *work);

/* dh_mid = dh_out + (d MLP(RMSNorm(h_mid)) / d h_mid)^T dh_out, all [rows, dim]. Recomputes the
 * block's forward from h_mid (nothing is saved between calls, the weights are frozen) and
 * produces no weight gradients. dh_mid may be dh_out itself (in place) or must not overlap it. */
void dsla_cpu_mlp_block_backward(float *dh_mid, const float *dh_out, const float *h_mid,
                                 const dsla_mlp_block_t *mlp, int rows, float *work);

/* ---- causal softmax attention (kernels/cpu/train_attention.c) ---------------------------------
 */

/* Causal grouped-query attention over B whole sequences of T positions, for training: q [B*T, H*d]
 * and k, v [B*T, Hkv*d] (RoPE already applied), query head h reading KV head h / (H / Hkv), scores
 * scaled by 1/sqrt(d); out [B*T, H*d]. probs [B, H, T, T] receives the softmax of every query row
 * (zeros above the diagonal), which the backward reads. Exact, not fast: the logit term's teacher
 * layers at the lengths distillation trains on (hundreds of tokens). */
void dsla_cpu_causal_attention_train_forward(float *out, float *probs, const float *q,
                                             const float *k, const float *v, int B, int T, int H,
                                             int Hkv, int d);

/* The backward of that forward given its probs: dq [B*T, H*d] (=), dk and dv [B*T, Hkv*d] (=,
 * summed over each KV head's query heads). scratch: T floats. No output may alias an input. */
void dsla_cpu_causal_attention_train_backward(float *dq, float *dk, float *dv, const float *dout,
                                              const float *probs, const float *q, const float *k,
                                              const float *v, int B, int T, int H, int Hkv, int d,
                                              float *scratch);

/* ---- losses (kernels/cpu/train_loss.c) --------------------------------------------------------
 */

/* The layer loss of DESIGN.md 5.3, the MSE normalised by the teacher's mean square:
 *   L = mean((s - t)^2) / mean(t^2) = sum((s - t)^2) / sum(t^2)   over all n elements,
 *   dL/ds = 2 (s - t) / sum(t^2).
 * An all-zero teacher (no real hidden state is) would divide by zero: the denominator is then taken
 * as 1, so L is the plain sum of squares and stays finite. grad may be NULL; it may alias student.
 */
double dsla_cpu_nmse_loss(float *grad, const float *student, const float *teacher, size_t n);

/* Distillation KL of the final logits at temperature T > 0, [rows, vocab] each:
 *   p = softmax(teacher / T), q = softmax(student / T),
 *   L = T^2 / rows * sum over rows of sum_j p_j (log p_j - log q_j),
 *   dL/dstudent = T / rows * (q - p).
 * That is PyTorch's kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") * T^2: the T^2
 * keeps the gradient's size independent of T (Hinton et al.). grad may be NULL; it must not alias
 * the logits. */
double dsla_cpu_kl_div_loss(float *grad, const float *student, const float *teacher, int rows,
                            int vocab, float temperature);

/* Below this product of norms the cosine's denominator is clamped, as torch.cosine_similarity does,
 * so that a zero vector gives 0 rather than NaN. */
#define DSLA_COSINE_EPS 1e-8

/* cos(a, b) = a.b / max(|a| |b|, DSLA_COSINE_EPS) over n elements (the two gate vectors of the
 * paper's optional contrastive term; the caller picks the sign and the weight). Writes
 *   da = b / (|a||b|) - cos * a / |a|^2,   db = a / (|a||b|) - cos * b / |b|^2
 * (b / eps and a / eps where the clamp applies). da and db may each be NULL; neither may alias an
 * input. */
double dsla_cpu_cosine_similarity(float *da, float *db, const float *a, const float *b, size_t n);

/* ---- optimizer (kernels/cpu/train_optim.c) --------------------------------------------------- */

/* AdamW and its schedule. Defaults (dsla_adamw_params_default) suit distilling one layer from a
 * teacher-initialised start: the update must move the copied weights, not overwrite them.
 * Scalars are double, as PyTorch's Python floats are: 1 - 0.999f is 1.3e-5 away from 0.001, an
 * error every second-moment update would carry. */
typedef struct {
    double lr;            /* peak learning rate; default 1e-3 */
    double min_lr;        /* where the cosine ends; default 1e-4 (a tenth of the peak) */
    double beta1;         /* default 0.9 */
    double beta2;         /* default 0.999 */
    double eps;           /* added to sqrt(v_hat); default 1e-8 */
    double weight_decay;  /* decoupled, scaled by the step's lr; default 0.01. Pass a copy with 0
                           * for parameters that should not decay (biases, alpha). */
    double max_grad_norm; /* global clipping threshold; default 1.0; <= 0 disables clipping */
    int warmup_steps;     /* linear warm-up; default a tenth of total_steps */
    int total_steps;      /* the cosine reaches min_lr here */
} dsla_adamw_params_t;

dsla_adamw_params_t dsla_adamw_params_default(int total_steps);

/* The learning rate of update `step` (1-based, the same count AdamW's bias correction uses):
 *   step <= warmup_steps:        lr * step / warmup_steps        (reaches lr at warmup_steps)
 *   warmup_steps < step < total: min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2,
 *                                progress = (step - warmup_steps) / (total_steps - warmup_steps)
 *   step >= total_steps:         min_lr.
 * Step 0 (before any update) gives 0 with a warm-up, lr without. */
double dsla_adamw_lr(const dsla_adamw_params_t *p, long step);

/* One AdamW update of n parameters with PyTorch's semantics (torch.optim.AdamW, amsgrad off):
 *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
 *   m_hat = m / (1 - beta1^step); v_hat = v / (1 - beta2^step)
 *   param -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * param)   (param before the step)
 * m and v start at zero and are updated in place; step is 1-based; lr is this step's rate
 * (dsla_adamw_lr); the other hyper-parameters come from p. grad is read only. */
void dsla_cpu_adamw_step(float *param, float *m, float *v, const float *grad, size_t n, long step,
                         double lr, const dsla_adamw_params_t *p);

/* Global L2 norm over n_arrays gradient arrays (grads[i] holds counts[i] floats), returned as it
 * was before clipping. When it exceeds max_norm > 0, every array is scaled in place by max_norm /
 * norm, so the norm becomes max_norm (torch.nn.utils.clip_grad_norm_ adds 1e-6 to the norm; this
 * does not). A non-finite norm is returned without scaling anything, so the caller can skip the
 * step. */
double dsla_cpu_clip_grad_norm(float *const *grads, const size_t *counts, int n_arrays,
                               double max_norm);

#endif

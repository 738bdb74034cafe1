/* Kernels: the numerical operations of dsla-serve, behind one backend-neutral interface.
 *
 * kernels/cpu/ holds the reference implementations (plain C, GEMMs through OpenBLAS); kernels/cuda/
 * the fast ones. Kernels take raw pointers and sizes, allocate nothing that outlives a call, and
 * know nothing of models, requests or files. The dual-state linear attention kernels are declared
 * in kernels_dsla.h, the training kernels in kernels_train.h, the CUDA ops in kernels_cuda.h; the
 * CUDA DSLA kernels (kernels_cuda_dsla.h, which builds on kernels_cuda.h) are included by their
 * users.
 *
 * Conventions of the CPU ops below: matrices are row-major float32; outputs come first in the
 * argument list; an output may alias an input only where the comment says so. Sizes are int (a row
 * count or a width never approaches 2^31) but offsets are computed in size_t. */
#ifndef DSLA_KERNELS_H
#define DSLA_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/core/tensor.h"

/* Number of usable CUDA devices; 0 when built without CUDA or when no driver/device is present. */
int dsla_cuda_device_count(void);
/* The calling thread's current CUDA device (0 without CUDA), and making device the current one of
 * the calling thread: CUDA's current device is per thread, so a thread that runs a model uploaded
 * by another binds that thread's device first. */
int dsla_cuda_device_current(void);
dsla_status_t dsla_cuda_device_bind(int device);

/* ---- linear algebra (kernels/cpu/gemm.c) ---- */

/* y[m,n] = x[m,k] @ w[n,k]^T: the PyTorch Linear layout, so checkpoint weights are used as stored.
 * m == 1 takes a GEMV path. y must not alias x or w. */
void dsla_cpu_gemm(float *y, const float *x, const float *w, int m, int n, int k);

/* Threads the CPU GEMMs use (OpenBLAS's setting: OPENBLAS_NUM_THREADS or the core count). */
int dsla_cpu_threads(void);

/* ---- normalisation (kernels/cpu/norm.c) ---- */

/* Hugging Face LlamaRMSNorm per row: y = x * rsqrt(mean(x^2) + eps) * w. y may alias x. */
void dsla_cpu_rmsnorm(float *y, const float *x, const float *w, int rows, int dim, float eps);

/* ---- rotary position embedding (kernels/cpu/rope.c) ---- */

/* What the inverse frequencies depend on; the model fills it from its config. */
typedef struct {
    float theta;
    bool llama3; /* Llama-3.1 frequency scaling; the fields below apply only then */
    float factor;
    float low_freq_factor;
    float high_freq_factor;
    int original_max_position;
} dsla_rope_params_t;

/* inv_freq[i] for i < head_dim/2, in float32 exactly as transformers computes it (default, or its
 * llama3 adjustment: wavelengths beyond original_max_position/low_freq_factor are divided by
 * factor, those below original_max_position/high_freq_factor kept, the band between interpolated).
 */
void dsla_cpu_rope_inv_freq(float *inv_freq, int head_dim, const dsla_rope_params_t *p);

/* cos/sin tables [n][head_dim/2] for the given positions: angle = (float)pos * inv_freq[i], rounded
 * to float32 before cos/sin as transformers does. Computed once per forward pass and shared by all
 * layers. */
void dsla_cpu_rope_tables(float *cos_out, float *sin_out, const int32_t *positions, int n,
                          const float *inv_freq, int head_dim);

/* Rotates n_heads heads of head_dim in each of n rows (row i starts at x + i*row_stride) in place,
 * in the rotate_half convention: pairs (j, j + head_dim/2) of each head, with row i's tables. */
void dsla_cpu_rope_apply(float *x, int n, int row_stride, int n_heads, int head_dim,
                         const float *cos_tab, const float *sin_tab);

/* ---- element-wise (kernels/cpu/activation.c) ---- */

/* y[r, j] = silu(gate[r*in_stride + j]) * up[r*in_stride + j] for j < n: gate and up may be the two
 * halves of one fused GEMM output (in_stride = 2n). y is [rows, n] and must not alias the inputs.
 */
void dsla_cpu_swiglu(float *y, const float *gate, const float *up, int rows, int n, int in_stride);

/* y = a + b over n elements; y may alias a or b. */
void dsla_cpu_add(float *y, const float *a, const float *b, size_t n);

/* Row-wise numerically stable softmax; y may alias x. */
void dsla_cpu_softmax(float *y, const float *x, int rows, int n);

/* Index of the largest of x[0..n) (the first one on ties, as torch.argmax and llama2.c); -1 if n<1.
 */
int dsla_cpu_argmax(const float *x, int n);

/* ---- attention (kernels/cpu/attention.c) ---- */

/* A sequence's keys and values for one layer in a paged pool: position t lives in block
 * block_table[t / block_tokens], slot t % block_tokens; each slot holds kv_heads*head_dim floats.
 */
typedef struct {
    const float *k; /* [pool blocks][block_tokens][kv_heads * head_dim] */
    const float *v;
    const int32_t *block_table;
    int block_tokens;
} dsla_paged_kv_t;

typedef struct {
    int n_heads;    /* H query heads */
    int n_kv_heads; /* H_kv; query head h reads KV head h / (H / H_kv) */
    int head_dim;
} dsla_attn_shape_t;

/* Causal grouped-query attention of n_new queries at positions past..past+n_new-1 over the cache's
 * positions 0..past+n_new-1 (which must already hold the new tokens' keys and values): query i sees
 * positions <= past + i, scores scaled by 1/sqrt(head_dim). q row i starts at q + i*q_stride, out
 * row i at out + i*out_stride (H*head_dim floats each). scores: caller's scratch of past + n_new
 * floats. */
void dsla_cpu_attention(float *out, int out_stride, const float *q, int q_stride, int n_new,
                        int past, const dsla_attn_shape_t *shape, const dsla_paged_kv_t *kv,
                        float *scores);

#include "kernels/kernels_dsla.h"
#include "kernels/kernels_train.h"
#include "kernels/kernels_cuda.h"

#endif

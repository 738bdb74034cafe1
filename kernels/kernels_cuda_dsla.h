/* DSLA kernels on the GPU: the fast versions of kernels_dsla.h's recurrent (decode) and chunked
 * (prefill, training) forms, their backward, and the AdamW step that trains a DSLA layer.
 *
 * The function is DESIGN.md section 4 exactly as kernels/cpu/dsla*.c computes it, with the same
 * layouts: activations [B, T, H*d] row-major (heads contiguous in the last dimension), states
 * [B, H, d, d] fp32 with rows indexed by the key channel, alpha [2]. tests/gpu/test_ops_harness.c
 * holds every op here to its CPU reference. All pointers are device memory (alpha too, so a step
 * can run inside a CUDA graph); ops enqueue on the caller's stream and return without
 * synchronising, as kernels_cuda.h says.
 *
 * Precision: states, accumulations and gates are fp32 whatever the input dtype. Chunked ops take a
 * math mode: F32 (CUDA cores, matches the CPU to ~1e-6) or TF32 (tensor cores for the chunk GEMMs,
 * ~1e-3). The decay factors follow the CPU's rule: no factor above 1 is ever formed (the secondary
 * split at DSLA_SUBCHUNK inside a chunk), so gates at the -50 clamp cannot overflow.
 *
 * Contract: ops allocate nothing (the chunked ops take a workspace sized by
 * dsla_cuda_dsla_chunked_workspace_bytes), never synchronise, and know nothing of models, requests
 * or slots' owners: a slot table is an array of pointers the caller keeps valid. The header
 * compiles without CUDA (it declares nothing there). */
#ifndef DSLA_KERNELS_CUDA_DSLA_H
#define DSLA_KERNELS_CUDA_DSLA_H

#ifdef DSLA_HAVE_CUDA

#include <stddef.h>

/* dsla_cuda_stream_t; through kernels.h also dsla_dsla_dims_t, dsla_dsla_grad_t and
 * dsla_adamw_params_t. kernels_cuda.h carries its own C++ guards. */
#include "kernels/kernels_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Core inputs on the device: q, k, v, a1, a2 [B, T, H*d], all of one dtype (F32 or BF16; gates
 * are pre-activations with their bias); alpha [2] fp32. */
typedef struct {
    const void *q, *k, *v, *a1, *a2;
    dsla_dtype_t dtype;
    const float *alpha;
} dsla_cuda_dsla_in_t;

/* Where a decode step finds each sequence's two states: either contiguous [B, H, d, d] arrays (s1,
 * s2), or, as serving keeps them, per-sequence slots: device arrays of B pointers, each to that
 * sequence's [H, d, d] state (s1_slots, s2_slots). Exactly one of the two forms is set. */
typedef struct {
    float *s1, *s2;
    float *const *s1_slots;
    float *const *s2_slots;
} dsla_cuda_dsla_states_t;

typedef enum {
    DSLA_CUDA_DSLA_MATH_F32 = 0,  /* CUDA cores, fp32 throughout */
    DSLA_CUDA_DSLA_MATH_TF32 = 1, /* chunk GEMMs on tensor cores (tf32 operands, fp32 sums) */
} dsla_cuda_dsla_math_t;

/* Head dims the kernels are built for: the decode step takes 4, 8, 16 or a multiple of 32 up to
 * 256; the chunked ops take multiples of 16 up to 128. Others are UNSUPPORTED. */
int dsla_cuda_dsla_decode_supports(int head_dim);
int dsla_cuda_dsla_chunked_supports(int head_dim);

/* One decode step: dims->tokens must be 1 (one new token per sequence, inputs [B, H*d]). Both
 * states are decayed, updated with k^T v and read out with q / sqrt(d) in one pass (each state
 * element read once and written once), mixed with softmax(alpha) into out [B, H*d] fp32. */
dsla_status_t dsla_cuda_dsla_decode(dsla_cuda_stream_t stream, const dsla_dsla_dims_t *dims,
                                    const dsla_cuda_dsla_in_t *in,
                                    const dsla_cuda_dsla_states_t *states, float *out);

/* Bytes of workspace the chunked forward and backward need (the state before every chunk, the
 * backward's state gradients and per-block scratch). */
size_t dsla_cuda_dsla_chunked_workspace_bytes(const dsla_dsla_dims_t *dims);

/* dsla_cpu_dsla_chunked_forward on the GPU. S1_0, S2_0 may be NULL (zeros); S1_T, S2_T may be NULL
 * (not written). out [B, T, H*d] fp32. */
dsla_status_t dsla_cuda_dsla_chunked_forward(dsla_cuda_stream_t stream,
                                             const dsla_dsla_dims_t *dims,
                                             const dsla_cuda_dsla_in_t *in,
                                             dsla_cuda_dsla_math_t math, const float *S1_0,
                                             const float *S2_0, float *out, float *S1_T,
                                             float *S2_T, void *workspace, size_t workspace_bytes);

/* dsla_cpu_dsla_chunked_backward on the GPU: dout [B, T, H*d] fp32, dS1_T / dS2_T may be NULL
 * (zeros), every gradient in grad is required (device pointers, fp32, written not accumulated),
 * dS1_0 / dS2_0 may be NULL. */
dsla_status_t dsla_cuda_dsla_chunked_backward(
    dsla_cuda_stream_t stream, const dsla_dsla_dims_t *dims, const dsla_cuda_dsla_in_t *in,
    dsla_cuda_dsla_math_t math, const float *S1_0, const float *S2_0, const float *dout,
    const float *dS1_T, const float *dS2_T, const dsla_dsla_grad_t *grad, float *dS1_0,
    float *dS2_0, void *workspace, size_t workspace_bytes);

/* dsla_cuda_dsla_chunked_backward right after dsla_cuda_dsla_chunked_forward of the same dims,
 * inputs, math and initial states on the same stream and workspace, nothing else having written the
 * workspace in between (a training step: forward, loss, backward): the per-chunk states the forward
 * left in the workspace are used instead of recomputed, one state pass less (~4 ms of ~50 at 32K
 * tokens, 7B heads). Anything else gives wrong gradients, undetected. */
dsla_status_t dsla_cuda_dsla_chunked_backward_after_forward(
    dsla_cuda_stream_t stream, const dsla_dsla_dims_t *dims, const dsla_cuda_dsla_in_t *in,
    dsla_cuda_dsla_math_t math, const float *S1_0, const float *S2_0, const float *dout,
    const float *dS1_T, const float *dS2_T, const dsla_dsla_grad_t *grad, float *dS1_0,
    float *dS2_0, void *workspace, size_t workspace_bytes);

/* dsla_cpu_adamw_step on n device floats (PyTorch's AdamW; scalars from p and lr as there). */
dsla_status_t dsla_cuda_dsla_adamw_step(dsla_cuda_stream_t stream, float *param, float *m, float *v,
                                        const float *grad, size_t n, long step, double lr,
                                        const dsla_adamw_params_t *p);

#ifdef __cplusplus
}
#endif

#endif /* DSLA_HAVE_CUDA */

#endif

/* Dual-state linear attention (DSLA) kernels: DESIGN.md section 4, forward and backward.
 *
 * For each head h and state i in {1 (history), 2 (recency)}:
 *   log g_i,t = max(logsigmoid(a_i,t) / 16, -50)        one gate per key channel (H*d per token)
 *   S_i,t     = diag(exp(log g_i,t)) S_i,t-1 + k_t^T v_t  (d x d, rows indexed by the key channel)
 *   o_i,t     = (q_t / sqrt(d)) S_i,t                     (update first, then read)
 *   out_t     = w1 o_1,t + w2 o_2,t,  (w1, w2) = softmax(alpha)
 * Three forms of that core, which the tests hold to one another:
 *   naive      fp64, the recurrence itself: the oracle (also a naive layer, with projections);
 *   recurrent  fp32, one token at a time, states updated in place: decode;
 *   chunked    fp32, GLA's chunk form (DSLA_CHUNK tokens, DSLA_SUBCHUNK secondary split):
 *              prefill and training, with the matching backward.
 *
 * Layouts: activations (q, k, v, a1, a2, out and their gradients) are [B, T, H*d] row-major with
 * the heads contiguous in the last dimension; states are [B, H, d, d] fp32 (fp64 for naive); alpha
 * is [2]. The layer wrappers take x [B, T, D] and weights in nn.Linear (out, in) layout. Optional
 * pointers (initial states, final states, incoming state gradients, state gradients out) may be
 * NULL: a NULL initial state or incoming gradient means zeros, a NULL output is not written.
 * Gradients are written, not accumulated.
 *
 * Contract: kernels allocate nothing that outlives a call; the fp32 paths allocate nothing at all
 * (the caller passes a workspace sized by the *_workspace_* functions). Only the fp64 oracle
 * mallocs. These kernels know nothing of models, files or requests, and they do not start threads
 * (OpenBLAS may). */
#ifndef DSLA_KERNELS_DSLA_H
#define DSLA_KERNELS_DSLA_H

#include <stddef.h>

#include "runtime/core/status.h"

enum {
    /* Tokens per chunk of the chunked form (DESIGN.md section 4). */
    DSLA_CHUNK = 64,
    /* Secondary split inside a chunk: intra-chunk decays between different sub-chunks are factored
     * through the boundary between them, so that both factors are <= 1 and nothing overflows;
     * inside a sub-chunk the pairwise decay is summed directly. 16 keeps that quadratic part small.
     */
    DSLA_SUBCHUNK = 16,
    /* log g = logsigmoid(a) / DSLA_GATE_NORMALIZER: slow decays by default (the reference's value).
     */
    DSLA_GATE_NORMALIZER = 16,
    /* Lower clamp of log g per token: a gate never forgets faster than exp(-50) per step. */
    DSLA_LOG_GATE_MIN = -50,
};

typedef struct {
    int batch;    /* B >= 1 sequences */
    int tokens;   /* T >= 0 tokens per sequence */
    int heads;    /* H >= 1 */
    int head_dim; /* d >= 1 */
} dsla_dsla_dims_t;

/* Core inputs: q, k, v, a1, a2 [B, T, H*d] (gates are pre-activations, projection bias included).
 */
typedef struct {
    const float *q, *k, *v, *a1, *a2;
    const float *alpha; /* [2] */
} dsla_dsla_in_t;

/* Core gradients, same shapes as the inputs. */
typedef struct {
    float *dq, *dk, *dv, *da1, *da2;
    float *dalpha; /* [2] */
} dsla_dsla_grad_t;

typedef struct {
    const double *q, *k, *v, *a1, *a2;
    const double *alpha;
} dsla_dsla_in64_t;

typedef struct {
    double *dq, *dk, *dv, *da1, *da2;
    double *dalpha;
} dsla_dsla_grad64_t;

/* ---- naive (fp64 oracle) ---- */

dsla_status_t dsla_cpu_dsla_naive_forward(const dsla_dsla_dims_t *dims, const dsla_dsla_in64_t *in,
                                          const double *S1_0, const double *S2_0, double *out,
                                          double *S1_T, double *S2_T);

/* Reverse mode over the recurrence; stores one head's T states at a time (T*d*d doubles, malloc'd).
 * dS1_T/dS2_T: gradient arriving at the final states (a later segment's dS_0), NULL = zeros. */
dsla_status_t dsla_cpu_dsla_naive_backward(const dsla_dsla_dims_t *dims, const dsla_dsla_in64_t *in,
                                           const double *S1_0, const double *S2_0,
                                           const double *dout, const double *dS1_T,
                                           const double *dS2_T, const dsla_dsla_grad64_t *grad,
                                           double *dS1_0, double *dS2_0);

/* ---- recurrent (fp32 decode) ---- */

/* Feeds T tokens one at a time; S1 and S2 [B, H, d, d] are read and updated in place. One pass over
 * each state row per token does decay, rank-1 update, read-out and mixing. Needs no workspace. */
dsla_status_t dsla_cpu_dsla_recurrent_forward(const dsla_dsla_dims_t *dims,
                                              const dsla_dsla_in_t *in, float *S1, float *S2,
                                              float *out);

/* ---- chunked (fp32 prefill and training) ---- */

/* Floats of workspace that chunked forward and backward need for these dims (backward keeps one
 * state per chunk boundary of one head, so this grows with T / DSLA_CHUNK). */
size_t dsla_cpu_dsla_chunked_workspace_floats(const dsla_dsla_dims_t *dims);

dsla_status_t dsla_cpu_dsla_chunked_forward(const dsla_dsla_dims_t *dims, const dsla_dsla_in_t *in,
                                            const float *S1_0, const float *S2_0, float *out,
                                            float *S1_T, float *S2_T, float *work);

/* Recomputes the chunk-boundary states from the inputs (nothing is saved between calls), then runs
 * the chunks in reverse with a carried state gradient. */
dsla_status_t dsla_cpu_dsla_chunked_backward(const dsla_dsla_dims_t *dims, const dsla_dsla_in_t *in,
                                             const float *S1_0, const float *S2_0,
                                             const float *dout, const float *dS1_T,
                                             const float *dS2_T, const dsla_dsla_grad_t *grad,
                                             float *dS1_0, float *dS2_0, float *work);

/* ---- whole layer: projections, chunked core, output projection ---- */

/* Weights in nn.Linear (out, in) layout: wq, wk, wv, wg1, wg2 [H*d, D]; wo [D, H*d];
 * bg1, bg2 [H*d]; alpha [2]. Their gradients have the same shapes. */
typedef struct {
    const float *wq, *wk, *wv, *wo, *wg1, *bg1, *wg2, *bg2, *alpha;
} dsla_dsla_layer_weights_t;

typedef struct {
    float *wq, *wk, *wv, *wo, *wg1, *bg1, *wg2, *bg2, *alpha;
} dsla_dsla_layer_grads_t;

typedef struct {
    const double *wq, *wk, *wv, *wo, *wg1, *bg1, *wg2, *bg2, *alpha;
} dsla_dsla_layer_weights64_t;

typedef struct {
    double *wq, *wk, *wv, *wo, *wg1, *bg1, *wg2, *bg2, *alpha;
} dsla_dsla_layer_grads64_t;

/* The caller's memory, carved by _init: what the forward saves for the backward (q, k, v, a1, a2,
 * the mixed core output), the backward's activation gradients, and the core's workspace. */
typedef struct {
    dsla_dsla_dims_t dims;
    int model_dim;
    float *q, *k, *v, *a1, *a2, *mix;
    float *dq, *dk, *dv, *da1, *da2, *dmix;
    float *core;
} dsla_dsla_layer_ws_t;

size_t dsla_cpu_dsla_layer_workspace_bytes(const dsla_dsla_dims_t *dims, int model_dim);
/* mem: at least dsla_cpu_dsla_layer_workspace_bytes(dims, model_dim) bytes, 64-byte aligned is
 * best; the caller keeps it alive as long as ws is used. */
dsla_status_t dsla_cpu_dsla_layer_workspace_init(dsla_dsla_layer_ws_t *ws,
                                                 const dsla_dsla_dims_t *dims, int model_dim,
                                                 void *mem, size_t bytes);

/* x, y [B, T, D]. Saves the activations in ws for dsla_cpu_dsla_layer_backward. */
dsla_status_t dsla_cpu_dsla_layer_forward(dsla_dsla_layer_ws_t *ws,
                                          const dsla_dsla_layer_weights_t *w, const float *x,
                                          const float *S1_0, const float *S2_0, float *y,
                                          float *S1_T, float *S2_T);

/* Must follow dsla_cpu_dsla_layer_forward on the same ws, weights, x and initial states. dy [B, T,
 * D]; writes dx [B, T, D] and every field of g (all required). */
dsla_status_t dsla_cpu_dsla_layer_backward(dsla_dsla_layer_ws_t *ws,
                                           const dsla_dsla_layer_weights_t *w, const float *x,
                                           const float *S1_0, const float *S2_0, const float *dy,
                                           const float *dS1_T, const float *dS2_T, float *dx,
                                           const dsla_dsla_layer_grads_t *g, float *dS1_0,
                                           float *dS2_0);

/* The fp64 oracle of the whole layer (naive core); allocates its activations internally. */
dsla_status_t dsla_cpu_dsla_naive_layer_forward(const dsla_dsla_dims_t *dims, int model_dim,
                                                const dsla_dsla_layer_weights64_t *w,
                                                const double *x, const double *S1_0,
                                                const double *S2_0, double *y, double *S1_T,
                                                double *S2_T);

dsla_status_t dsla_cpu_dsla_naive_layer_backward(const dsla_dsla_dims_t *dims, int model_dim,
                                                 const dsla_dsla_layer_weights64_t *w,
                                                 const double *x, const double *S1_0,
                                                 const double *S2_0, const double *dy,
                                                 const double *dS1_T, const double *dS2_T,
                                                 double *dx, const dsla_dsla_layer_grads64_t *g,
                                                 double *dS1_0, double *dS2_0);

#endif

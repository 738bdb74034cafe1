/* The tensor-core path of the chunked DSLA ops (dsla_chunked_tc.cu), for dsla_chunked.cu only: the
 * forward's states and output and the backward's state gradients at MATH_TF32. */
#ifndef DSLA_KERNELS_CUDA_DSLA_CHUNKED_TC_CUH
#define DSLA_KERNELS_CUDA_DSLA_CHUNKED_TC_CUH

#include "kernels/cuda/cuda_check.h"
#include "kernels/kernels_cuda_dsla.h"

/* Workspace regions the path uses: states and dstates [B, H, 2, chunks, d, d] (as dsla_chunked.cu
 * carves them), extra [B, H, 2, d, d] (the one delta per walk that has no slot of its own), gl
 * [B, H, 2, chunks, d] (each chunk's decay), gpart [B, H, 2, chunks] (dalpha's partials). */
typedef struct {
    float *states, *dstates, *extra, *gl;
    double *gpart;
    /* The state passes as one fused walk (dsla_tc_walk) instead of tc_delta + tc_scan; extra and
     * gl are then unused. */
    bool walk;
    /* dsla_tc_bwd with two warps per sub-chunk (8 per block) instead of one. */
    bool bwd_pairs;
    /* dsla_tc_out with two warps per sub-chunk (8 per block) instead of one. */
    bool out_pairs;
} dsla_cu_tc_ws_t;

/* Head dims the path is built for (64 and 128); others take dsla_chunked.cu's kernels. */
bool dsla_cu_tc_supports(int head_dim);

/* ws->states[c] = both states before chunk c; S1_T / S2_T (may be NULL) the final ones. */
dsla_status_t dsla_cu_tc_states(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                const dsla_cuda_dsla_in_t *in, const float *S1_0, const float *S2_0,
                                float *S1_T, float *S2_T, const dsla_cu_tc_ws_t *ws);

/* ws->dstates[c] = the gradient of both states after chunk c, from dout and dS1_T / dS2_T (NULL:
 * zeros); dS1_0 / dS2_0 (may be NULL) the gradient of the initial states. */
dsla_status_t dsla_cu_tc_dstates(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                                 const dsla_cuda_dsla_in_t *in, const float *dout,
                                 const float *dS1_T, const float *dS2_T, float *dS1_0, float *dS2_0,
                                 const dsla_cu_tc_ws_t *ws);

/* out [B, T, H*d] = the mixed output, from the states dsla_cu_tc_states stored in ws->states. */
dsla_status_t dsla_cu_tc_out(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                             const dsla_cuda_dsla_in_t *in, float *out, const dsla_cu_tc_ws_t *ws);

/* The backward's per-chunk gradients from the states both passes stored: dq, dk, dv (zeroed by
 * the caller: the two states add onto them), da1, da2, and dalpha's partial per (sequence, head,
 * state, chunk) into ws->gpart (dsla_chunked.cu's dsla_dalpha sums them). Opt-in
 * (DSLA_CUDA_TC_BWD=1) until a GPU run has held it to the CPU. */
dsla_status_t dsla_cu_tc_bwd(cudaStream_t stream, const dsla_dsla_dims_t *dims,
                             const dsla_cuda_dsla_in_t *in, const float *dout,
                             const dsla_dsla_grad_t *grad, const dsla_cu_tc_ws_t *ws);

#endif

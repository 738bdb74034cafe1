/* Every CUDA op against its CPU reference, one table (DESIGN.md section 11, llama.cpp's
 * test-backend-ops): each row names an operation, its shape, its dtype and a tolerance. A row draws
 * fresh random inputs, runs kernels/cpu (or the sampler) and the CUDA op on them, with every device
 * output poisoned with NaN first, and compares by ||gpu - cpu|| / ||cpu|| (NaN anywhere fails). The
 * argmax and sampling rows compare chosen tokens and report the fraction that differ.
 *
 * A second test runs stories260K-hf through a minimal fp32 GPU forward pass built from the ops
 * (embedding, layers, norm, lm_head) and checks its logits and greedy tokens against the CPU model.
 * Exits 77 (skipped) without a CUDA device. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/kernels_cuda.h"
#include "kernels/kernels_cuda_dsla.h"
#include "kernels/kernels_cuda_train.h"
#include "runtime/core/random.h"
#include "runtime/model/llama.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/sampler.h"

#ifdef DSLA_HAVE_CUDA

typedef enum {
    OP_GEMM,          /* a=m b=n c=k; dtype of x and w; e=1: bf16 output */
    OP_EMBEDDING,     /* a=tokens b=dim c=vocab; dtype of the table */
    OP_RMSNORM,       /* a=rows b=dim; dtype of the output */
    OP_ADD_RMSNORM,   /* a=rows b=dim; dtype of the output */
    OP_ROPE,          /* a=rows b=heads c=head_dim d=row_stride e=largest position */
    OP_SWIGLU,        /* a=rows b=n; dtype of the output */
    OP_ADD,           /* a=n */
    OP_PREFILL,       /* a=n_new b=past c=H d=H_kv e=head_dim */
    OP_DECODE,        /* a=sequences b=longest context c=H d=H_kv e=head_dim */
    OP_PREFILL_CUDNN, /* a=n_new b=past c=H d=H_kv e=head_dim: cuDNN's fused attention, bf16 */
    OP_ARGMAX,        /* a=rows b=n */
    OP_SAMPLE,        /* a=rows b=vocab c=top_k; temperature and top_p from the row */
    OP_DSLA_DECODE,   /* a=B b=H c=d d=steps e=DSLA_* flags; dtype of the inputs */
    OP_DSLA_FWD,      /* a=B b=T c=H d=d e=DSLA_* flags; dtype of the inputs */
    OP_DSLA_BWD,      /* a=B b=T c=H d=d e=DSLA_* flags; dtype of the inputs */
    OP_DSLA_ADAMW,    /* a=n b=step */
    OP_DSLA_REF,      /* the reference vectors' cases through the GPU core; e=DSLA_* flags */
    OP_GEMM_TRAIN,    /* a=m b=n c=k e=GEMM_* flags: dsla_cuda_gemm_f32 (training's GEMMs) */
    OP_RMSNORM_BWD,   /* a=rows b=dim e=1: accumulate */
    OP_SWIGLU_BWD,    /* a=rows b=n */
    OP_BIAS_BWD,      /* a=m b=n e=1: accumulate */
    OP_NMSE,          /* a=n: loss and gradient */
    OP_SUM_SQUARES,   /* a=n: sum of squares, then the clipping rescale */
    OP_CAUSAL_FWD,    /* a=B b=T c=H d=H_kv e=head_dim: training attention */
    OP_CAUSAL_BWD,    /* a=B b=T c=H d=H_kv e=head_dim: its dq, dk and dv */
    OP_KL_DIV,        /* a=rows b=vocab e=1: gradient too; temperature from the row */
} op_t;

/* Flags of OP_GEMM_TRAIN (field e). */
enum { GEMM_TRANS_A = 1, GEMM_TRANS_B = 2, GEMM_TF32 = 4, GEMM_BETA1 = 8 };

/* Flags of the DSLA rows (field e): the gate mix, then options. */
enum {
    DSLA_GATES_MODERATE = 0, /* a ~ 2 N(0,1): log g around -0.04 */
    DSLA_GATES_CLAMP = 1,    /* a in [-2000, -700]: log g from -125 to -44, most clamped at -50 */
    DSLA_GATES_MIXED = 2,    /* per element: moderate, clamp, at the clamp's edge, or open */
    DSLA_GATES_MASK = 3,
    DSLA_STATES = 4,     /* initial states (forward) and incoming state gradients (backward) */
    DSLA_TF32 = 8,       /* chunk GEMMs on tensor cores */
    DSLA_SLOTS = 16,     /* decode through per-sequence slot pointers */
    DSLA_AFTER_FWD = 32, /* backward: the GPU forward first, then ..._backward_after_forward */
};

typedef struct {
    op_t op;
    const char *name;
    int a, b, c, d, e;
    dsla_dtype_t dtype;
    double tol;
    float temperature, top_p; /* OP_SAMPLE; temperature also OP_KL_DIV */
} row_t;

/* fp32 ops land near 1e-7; reductions over long rows and the attention's softmax near 1e-6. The
 * bf16 rows round their output (2^-9 relative) or their operands. Token rows: fraction allowed to
 * differ (zero except sampling, where a draw within an ulp of a boundary may fall either way). */
#define TOL_F32 1e-5
#define TOL_F32_LONG 1e-4
#define TOL_BF16 1e-2
#define TOL_SAMPLE (1.0 / 32)
/* DSLA: the fp32 forms reorder long sums (chunk GEMMs, warp reductions); tf32 operands carry
 * 2^-11 relative rounding into every chunk GEMM. AdamW matches the CPU bit for bit. */
#define TOL_DSLA_F32 1e-4
#define TOL_DSLA_TF32 1e-2

static const row_t rows[] = {
    {OP_GEMM, "gemm", 1, 4096, 4096, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_GEMM, "gemm", 7, 33, 19, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_GEMM, "gemm", 128, 1024, 512, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_GEMM, "gemm", 33, 2048, 1024, 0, 0, DSLA_DTYPE_BF16, TOL_F32_LONG, 0, 0},
    {OP_GEMM, "gemm->bf16", 64, 512, 4096, 0, 1, DSLA_DTYPE_BF16, TOL_BF16, 0, 0},
    /* bf16 with m <= 8 takes the GEMV (kernels/cuda/gemm.cu): odd n, every m up to 8, a long k
     * that is not a multiple of its 256-element round, bf16 output; k % 8 != 0 falls back. */
    {OP_GEMM, "gemv", 1, 4096, 4096, 0, 0, DSLA_DTYPE_BF16, TOL_F32_LONG, 0, 0},
    {OP_GEMM, "gemv", 3, 333, 1000, 0, 0, DSLA_DTYPE_BF16, TOL_F32_LONG, 0, 0},
    {OP_GEMM, "gemv", 8, 4097, 11008, 0, 0, DSLA_DTYPE_BF16, TOL_F32_LONG, 0, 0},
    {OP_GEMM, "gemv", 5, 77, 8, 0, 0, DSLA_DTYPE_BF16, TOL_F32_LONG, 0, 0},
    {OP_GEMM, "gemv->bf16", 2, 512, 4096, 0, 1, DSLA_DTYPE_BF16, TOL_BF16, 0, 0},
    {OP_GEMM, "gemv k%8 -> cuBLAS", 1, 64, 36, 0, 0, DSLA_DTYPE_BF16, TOL_F32_LONG, 0, 0},
    {OP_EMBEDDING, "embedding", 37, 4096, 1000, 0, 0, DSLA_DTYPE_F32, 0.0, 0, 0},
    {OP_EMBEDDING, "embedding", 9, 64, 512, 0, 0, DSLA_DTYPE_BF16, 0.0, 0, 0},
    {OP_RMSNORM, "rmsnorm", 7, 4096, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_RMSNORM, "rmsnorm", 65, 64, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_RMSNORM, "rmsnorm", 3, 37, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_RMSNORM, "rmsnorm", 16, 4096, 0, 0, 0, DSLA_DTYPE_BF16, TOL_BF16, 0, 0},
    {OP_ADD_RMSNORM, "add_rmsnorm", 9, 4096, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_ADD_RMSNORM, "add_rmsnorm", 5, 8192, 0, 0, 0, DSLA_DTYPE_BF16, TOL_BF16, 0, 0},
    {OP_ADD_RMSNORM, "add_rmsnorm", 4, 43, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_ROPE, "rope", 33, 40, 128, 48 * 128, 16384, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_ROPE, "rope", 5, 12, 8, 16 * 8, 500, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_SWIGLU, "swiglu", 9, 11008, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_SWIGLU, "swiglu", 3, 172, 0, 0, 0, DSLA_DTYPE_BF16, TOL_BF16, 0, 0},
    {OP_ADD, "add", (1 << 20) + 3, 0, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_PREFILL, "attention_prefill", 100, 0, 8, 2, 64, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_PREFILL, "attention_prefill", 77, 50, 4, 4, 128, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_PREFILL, "attention_prefill", 40, 13, 8, 4, 8, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_PREFILL, "attention_prefill", 300, 0, 32, 8, 128, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_PREFILL, "attention_prefill", 1, 700, 16, 16, 32, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_PREFILL_CUDNN, "attention_cudnn", 300, 0, 32, 8, 128, DSLA_DTYPE_BF16, TOL_BF16, 0, 0},
    {OP_PREFILL_CUDNN, "attention_cudnn", 1031, 0, 8, 8, 64, DSLA_DTYPE_BF16, TOL_BF16, 0, 0},
    /* chunks after a cached past: keys gathered from the pool, the causal mask shifted */
    {OP_PREFILL_CUDNN, "attention_cudnn", 200, 300, 32, 8, 128, DSLA_DTYPE_BF16, TOL_BF16, 0, 0},
    {OP_PREFILL_CUDNN, "attention_cudnn", 77, 1100, 8, 8, 64, DSLA_DTYPE_BF16, TOL_BF16, 0, 0},
    {OP_DECODE, "attention_decode", 1, 1000, 32, 32, 128, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_DECODE, "attention_decode", 8, 3000, 32, 8, 128, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_DECODE, "attention_decode", 3, 37, 8, 4, 8, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_DECODE, "attention_decode", 64, 200, 8, 8, 64, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_DECODE, "attention_decode", 5, 5000, 16, 2, 16, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_ARGMAX, "argmax", 4, 32000, 0, 0, 0, DSLA_DTYPE_F32, 0.0, 0, 0},
    {OP_ARGMAX, "argmax", 3, 7, 0, 0, 0, DSLA_DTYPE_F32, 0.0, 0, 0},
    {OP_SAMPLE, "sample(greedy)", 16, 32000, 0, 0, 0, DSLA_DTYPE_F32, 0.0, 0.0f, 1.0f},
    {OP_SAMPLE, "sample(temperature)", 64, 32000, 0, 0, 0, DSLA_DTYPE_F32, TOL_SAMPLE, 0.8f, 1.0f},
    {OP_SAMPLE, "sample(top_k)", 64, 32000, 40, 0, 0, DSLA_DTYPE_F32, TOL_SAMPLE, 1.0f, 1.0f},
    {OP_SAMPLE, "sample(top_p)", 64, 32000, 0, 0, 0, DSLA_DTYPE_F32, TOL_SAMPLE, 0.7f, 0.9f},
    {OP_SAMPLE, "sample(top_k+top_p)", 64, 512, 50, 0, 0, DSLA_DTYPE_F32, TOL_SAMPLE, 1.2f, 0.8f},
    {OP_DSLA_DECODE, "dsla_decode", 1, 32, 128, 2, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_DSLA_DECODE, "dsla_decode", 64, 32, 128, 1, DSLA_SLOTS, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_DSLA_DECODE, "dsla_decode", 7, 3, 64, 3, DSLA_GATES_MIXED | DSLA_SLOTS, DSLA_DTYPE_F32,
     TOL_F32, 0, 0},
    {OP_DSLA_DECODE, "dsla_decode", 5, 2, 16, 2, DSLA_GATES_CLAMP, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_DSLA_DECODE, "dsla_decode", 9, 4, 32, 2, DSLA_GATES_MIXED, DSLA_DTYPE_BF16, TOL_F32, 0, 0},
    {OP_DSLA_FWD, "dsla_chunked_fwd", 2, 130, 3, 64, DSLA_STATES, DSLA_DTYPE_F32, TOL_DSLA_F32, 0,
     0},
    {OP_DSLA_FWD, "dsla_chunked_fwd", 1, 1000, 2, 128, DSLA_STATES | DSLA_GATES_MIXED,
     DSLA_DTYPE_F32, TOL_DSLA_F32, 0, 0},
    {OP_DSLA_FWD, "dsla_chunked_fwd", 2, 65, 2, 16, DSLA_GATES_CLAMP, DSLA_DTYPE_F32, TOL_DSLA_F32,
     0, 0},
    {OP_DSLA_FWD, "dsla_chunked_fwd", 3, 1, 2, 32, DSLA_STATES, DSLA_DTYPE_F32, TOL_DSLA_F32, 0, 0},
    {OP_DSLA_FWD, "dsla_chunked_fwd", 2, 200, 2, 32, DSLA_GATES_MIXED, DSLA_DTYPE_BF16,
     TOL_DSLA_F32, 0, 0},
    {OP_DSLA_FWD, "dsla_chunked_fwd(tf32)", 1, 300, 4, 128, DSLA_STATES | DSLA_TF32, DSLA_DTYPE_F32,
     TOL_DSLA_TF32, 0, 0},
    {OP_DSLA_FWD, "dsla_chunked_fwd(tf32)", 2, 150, 2, 64, DSLA_GATES_MIXED | DSLA_TF32,
     DSLA_DTYPE_BF16, TOL_DSLA_TF32, 0, 0},
    /* dsla_chunked_tc.cu: clamped gates take its pair-by-pair own blocks; batches with a short
     * tail; other head dims stay on dsla_chunked.cu's kernels. */
    {OP_DSLA_FWD, "dsla_chunked_fwd(tf32)", 2, 1000, 2, 128, DSLA_GATES_CLAMP | DSLA_TF32,
     DSLA_DTYPE_BF16, TOL_DSLA_TF32, 0, 0},
    {OP_DSLA_FWD, "dsla_chunked_fwd(tf32)", 3, 65, 3, 64, DSLA_STATES | DSLA_TF32, DSLA_DTYPE_F32,
     TOL_DSLA_TF32, 0, 0},
    {OP_DSLA_FWD, "dsla_chunked_fwd(tf32)", 1, 130, 2, 32, DSLA_GATES_MIXED | DSLA_TF32,
     DSLA_DTYPE_F32, TOL_DSLA_TF32, 0, 0},
    {OP_DSLA_BWD, "dsla_chunked_bwd", 2, 130, 2, 64, DSLA_STATES, DSLA_DTYPE_F32, TOL_DSLA_F32, 0,
     0},
    {OP_DSLA_BWD, "dsla_chunked_bwd", 1, 200, 2, 128, DSLA_GATES_CLAMP, DSLA_DTYPE_F32,
     TOL_DSLA_F32, 0, 0},
    {OP_DSLA_BWD, "dsla_chunked_bwd", 1, 257, 3, 16, DSLA_GATES_MIXED | DSLA_STATES, DSLA_DTYPE_F32,
     TOL_DSLA_F32, 0, 0},
    {OP_DSLA_BWD, "dsla_chunked_bwd", 2, 100, 2, 32, DSLA_GATES_MIXED, DSLA_DTYPE_BF16,
     TOL_DSLA_F32, 0, 0},
    {OP_DSLA_BWD, "dsla_chunked_bwd(tf32)", 1, 192, 2, 128, DSLA_STATES | DSLA_TF32, DSLA_DTYPE_F32,
     TOL_DSLA_TF32, 0, 0},
    {OP_DSLA_BWD, "dsla_chunked_bwd(tf32)", 2, 150, 2, 64,
     DSLA_GATES_MIXED | DSLA_STATES | DSLA_TF32, DSLA_DTYPE_BF16, TOL_DSLA_TF32, 0, 0},
    /* the backward on the states a forward left in the workspace, on both sets of kernels */
    {OP_DSLA_BWD, "dsla_chunked_bwd(after fwd)", 2, 130, 2, 64,
     DSLA_GATES_MIXED | DSLA_STATES | DSLA_AFTER_FWD, DSLA_DTYPE_F32, TOL_DSLA_F32, 0, 0},
    {OP_DSLA_BWD, "dsla_chunked_bwd(tf32, after fwd)", 1, 200, 2, 128,
     DSLA_STATES | DSLA_TF32 | DSLA_AFTER_FWD, DSLA_DTYPE_BF16, TOL_DSLA_TF32, 0, 0},
    {OP_DSLA_ADAMW, "dsla_adamw", (1 << 20) + 7, 3, 0, 0, 0, DSLA_DTYPE_F32, 0.0, 0, 0},
    {OP_DSLA_REF, "dsla_reference_vectors", 0, 0, 0, 0, 0, DSLA_DTYPE_F32, TOL_DSLA_F32, 0, 0},
    {OP_DSLA_REF, "dsla_reference(tf32)", 0, 0, 0, 0, DSLA_TF32, DSLA_DTYPE_F32, TOL_DSLA_TF32, 0,
     0},
    /* training (kernels_cuda_train.h): a linear layer's forward, input and weight gradients */
    {OP_GEMM_TRAIN, "gemm_f32 x w^T", 100, 96, 40, 0, GEMM_TRANS_B, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_GEMM_TRAIN, "gemm_f32 dy w", 257, 64, 384, 0, GEMM_BETA1, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_GEMM_TRAIN, "gemm_f32 dy^T x", 384, 64, 2048, 0, GEMM_TRANS_A, DSLA_DTYPE_F32, TOL_F32_LONG,
     0, 0},
    {OP_GEMM_TRAIN, "gemm_f32 a^T b^T", 33, 17, 65, 0, GEMM_TRANS_A | GEMM_TRANS_B, DSLA_DTYPE_F32,
     TOL_F32, 0, 0},
    {OP_GEMM_TRAIN, "gemm_tf32 dy^T x", 512, 256, 1024, 0, GEMM_TRANS_A | GEMM_TF32, DSLA_DTYPE_F32,
     TOL_BF16, 0, 0},
    {OP_RMSNORM_BWD, "rmsnorm_backward", 7, 4096, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_RMSNORM_BWD, "rmsnorm_backward+=", 65, 384, 0, 0, 1, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_SWIGLU_BWD, "swiglu_backward", 9, 1024, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_BIAS_BWD, "bias_backward", 1000, 384, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_BIAS_BWD, "bias_backward+=", 3, 77, 0, 0, 1, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_NMSE, "nmse_loss", (1 << 20) + 5, 0, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_SUM_SQUARES, "sum_squares+scale", (1 << 20) + 9, 0, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    /* the logit term: GQA, T off the 32-key tiles, a head dim that is no power of two. The forward
     * keeps the CPU's fp32 stores and double sums (rounding apart); the backward's dk and dv sum
     * up to group * T products in float on the CPU and in double on the GPU. */
    {OP_CAUSAL_FWD, "attention_train_fwd", 2, 37, 4, 2, 64, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_CAUSAL_FWD, "attention_train_fwd", 2, 130, 4, 2, 128, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_CAUSAL_FWD, "attention_train_fwd", 1, 1000, 4, 1, 64, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_CAUSAL_FWD, "attention_train_fwd", 1, 65, 6, 3, 80, DSLA_DTYPE_F32, TOL_F32, 0, 0},
    {OP_CAUSAL_BWD, "attention_train_bwd", 2, 37, 4, 2, 64, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_CAUSAL_BWD, "attention_train_bwd", 2, 130, 4, 2, 128, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_CAUSAL_BWD, "attention_train_bwd", 1, 1000, 4, 1, 64, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_CAUSAL_BWD, "attention_train_bwd", 1, 65, 6, 3, 80, DSLA_DTYPE_F32, TOL_F32_LONG, 0, 0},
    {OP_KL_DIV, "kl_div_loss", 37, 1000, 0, 0, 1, DSLA_DTYPE_F32, TOL_F32, 1.0f, 0},
    {OP_KL_DIV, "kl_div_loss", 9, 32000, 0, 0, 1, DSLA_DTYPE_F32, TOL_F32, 2.0f, 0},
    {OP_KL_DIV, "kl_div_loss(no grad)", 16, 32000, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 1.0f, 0},
    {OP_KL_DIV, "kl_div_loss(no grad)", 5, 1000, 0, 0, 0, DSLA_DTYPE_F32, TOL_F32, 2.0f, 0},
};

static uint64_t rng;

#define CUDA_OK(expr)                                                                              \
    do {                                                                                           \
        dsla_status_t st_ = (expr);                                                                \
        if (st_ != DSLA_OK)                                                                        \
            fail_msg("%s: %s: %s", #expr, dsla_status_name(st_), dsla_last_error());               \
    } while (0)

static float *host_random(size_t n, float scale) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = dsla_test_rand_normal(&rng) * scale;
    return p;
}

/* Rounds a host array to bf16 values in place, returning the bf16 bits. */
static uint16_t *round_bf16(float *x, size_t n) {
    uint16_t *b = malloc(n * sizeof *b);
    for (size_t i = 0; i < n; i++) {
        b[i] = dsla_f32_to_bf16(x[i]);
        x[i] = dsla_bf16_to_f32(b[i]);
    }
    return b;
}

static void *dev_copy(const void *host, size_t bytes) {
    void *d = NULL;
    CUDA_OK(dsla_cuda_malloc(&d, bytes));
    CUDA_OK(dsla_cuda_copy(d, host, bytes, NULL));
    return d;
}

static float *dev_poisoned(size_t n) {
    void *d = NULL;
    CUDA_OK(dsla_cuda_malloc(&d, n * sizeof(float)));
    CUDA_OK(dsla_cuda_fill_f32(d, NAN, n, NULL));
    return d;
}

/* Copies n device floats (or bf16 values when bf16) back as floats, after the stream's work. */
static float *host_result(const void *dev, size_t n, bool bf16) {
    CUDA_OK(dsla_cuda_stream_sync(NULL));
    float *h = malloc(n * sizeof *h);
    if (!bf16) {
        CUDA_OK(dsla_cuda_copy(h, dev, n * sizeof *h, NULL));
        return h;
    }
    uint16_t *b = malloc(n * sizeof *b);
    CUDA_OK(dsla_cuda_copy(b, dev, n * sizeof *b, NULL));
    for (size_t i = 0; i < n; i++)
        h[i] = dsla_bf16_to_f32(b[i]);
    free(b);
    return h;
}

/* ||got - want|| / ||want||; infinite when got holds a NaN or an infinity. */
static double rel_err(const float *got, const float *want, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static void dev_free(void *p) {
    dsla_cuda_free(&p);
}

/* A bf16 device output for a bf16 row; an fp32 one otherwise. Poisoned either way: 0xffff is a
 * bf16 NaN, and two of them are an fp32 NaN. */
static void *dev_output(size_t n, bool bf16) {
    return dev_poisoned(bf16 ? (n + 1) / 2 : n);
}

static double run_gemm(const row_t *r) {
    const int m = r->a, n = r->b, k = r->c;
    const bool bf16_in = r->dtype == DSLA_DTYPE_BF16, bf16_out = r->e == 1;
    float *x = host_random((size_t)m * k, 1.0f), *w = host_random((size_t)n * k, 0.05f);
    float *want = malloc((size_t)m * n * sizeof *want);
    void *dx, *dw;
    if (bf16_in) {
        uint16_t *bx = round_bf16(x, (size_t)m * k), *bw = round_bf16(w, (size_t)n * k);
        dx = dev_copy(bx, (size_t)m * k * 2);
        dw = dev_copy(bw, (size_t)n * k * 2);
        free(bx);
        free(bw);
    } else {
        dx = dev_copy(x, (size_t)m * k * 4);
        dw = dev_copy(w, (size_t)n * k * 4);
    }
    dsla_cpu_gemm(want, x, w, m, n, k);
    void *dy = dev_output((size_t)m * n, bf16_out);
    dsla_cuda_blas_t *h = NULL;
    CUDA_OK(dsla_cuda_blas_create(&h));
    CUDA_OK(dsla_cuda_gemm(h, NULL, dy, bf16_out ? DSLA_DTYPE_BF16 : DSLA_DTYPE_F32, dx, dw,
                           r->dtype, m, n, k, 0.0f));
    float *got = host_result(dy, (size_t)m * n, bf16_out);
    double err = rel_err(got, want, (size_t)m * n);

    /* beta = 1 accumulates: y (holding x w^T) + x w^T = 2 x w^T. */
    if (!bf16_out) {
        CUDA_OK(dsla_cuda_gemm(h, NULL, dy, DSLA_DTYPE_F32, dx, dw, r->dtype, m, n, k, 1.0f));
        float *twice = host_result(dy, (size_t)m * n, false);
        for (size_t i = 0; i < (size_t)m * n; i++)
            want[i] *= 2.0f;
        double e2 = rel_err(twice, want, (size_t)m * n);
        err = e2 > err ? e2 : err;
        free(twice);
    }
    dsla_cuda_blas_destroy(&h);
    free(x), free(w), free(want), free(got);
    dev_free(dx), dev_free(dw), dev_free(dy);
    return err;
}

static double run_embedding(const row_t *r) {
    const int n = r->a, dim = r->b, vocab = r->c;
    float *table = host_random((size_t)vocab * dim, 1.0f);
    void *dt;
    if (r->dtype == DSLA_DTYPE_BF16) {
        uint16_t *b = round_bf16(table, (size_t)vocab * dim);
        dt = dev_copy(b, (size_t)vocab * dim * 2);
        free(b);
    } else {
        dt = dev_copy(table, (size_t)vocab * dim * 4);
    }
    int32_t *tokens = malloc((size_t)n * sizeof *tokens);
    float *want = malloc((size_t)n * dim * sizeof *want);
    for (int i = 0; i < n; i++) {
        tokens[i] = (int32_t)(dsla_test_rand_u64(&rng) % (uint64_t)vocab);
        memcpy(want + (size_t)i * dim, table + (size_t)tokens[i] * dim, (size_t)dim * 4);
    }
    int32_t *dtok = dev_copy(tokens, (size_t)n * sizeof *tokens);
    float *dout = dev_poisoned((size_t)n * dim);
    CUDA_OK(dsla_cuda_embedding(NULL, dout, dt, r->dtype, dtok, n, dim, vocab));
    float *got = host_result(dout, (size_t)n * dim, false);
    double err = rel_err(got, want, (size_t)n * dim);
    free(table), free(tokens), free(want), free(got);
    dev_free(dt), dev_free(dtok), dev_free(dout);
    return err;
}

static double run_rmsnorm(const row_t *r, bool fused) {
    const int rows_n = r->a, dim = r->b;
    const size_t n = (size_t)rows_n * dim;
    const bool bf16 = r->dtype == DSLA_DTYPE_BF16;
    const float eps = 1e-5f;
    float *x = host_random(n, 1.0f), *delta = host_random(n, 0.5f), *w = host_random(dim, 1.0f);
    float *dx = dev_copy(x, n * 4), *dd = dev_copy(delta, n * 4), *dw = dev_copy(w, dim * 4);
    void *dy = dev_output(n, bf16);
    float *want = malloc(n * sizeof *want);
    if (fused) {
        dsla_cpu_add(x, x, delta, n);
        CUDA_OK(dsla_cuda_add_rmsnorm(NULL, dy, r->dtype, dx, dd, dw, rows_n, dim, eps));
    } else {
        CUDA_OK(dsla_cuda_rmsnorm(NULL, dy, r->dtype, dx, dw, rows_n, dim, eps));
    }
    dsla_cpu_rmsnorm(want, x, w, rows_n, dim, eps);
    float *got = host_result(dy, n, bf16);
    double err = rel_err(got, want, n);
    if (fused) { /* the residual stream itself must hold x + delta */
        float *res = host_result(dx, n, false);
        double e2 = rel_err(res, x, n);
        err = e2 > err ? e2 : err;
        free(res);
    }
    free(x), free(delta), free(w), free(want), free(got);
    dev_free(dx), dev_free(dd), dev_free(dw), dev_free(dy);
    return err;
}

static double run_rope(const row_t *r) {
    const int n = r->a, heads = r->b, d = r->c, stride = r->d;
    const size_t total = (size_t)n * stride;
    float *x = host_random(total, 1.0f);
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    for (int i = 0; i < n; i++)
        pos[i] = (int32_t)(dsla_test_rand_u64(&rng) % (uint64_t)(r->e + 1));
    dsla_rope_params_t p = {.theta = 10000.0f};
    float *inv = malloc((size_t)d / 2 * sizeof *inv);
    dsla_cpu_rope_inv_freq(inv, d, &p);
    float *cos_t = malloc((size_t)n * d / 2 * 4), *sin_t = malloc((size_t)n * d / 2 * 4);
    dsla_cpu_rope_tables(cos_t, sin_t, pos, n, inv, d);
    float *dx = dev_copy(x, total * 4), *dinv = dev_copy(inv, (size_t)d / 2 * 4);
    int32_t *dpos = dev_copy(pos, (size_t)n * 4);
    dsla_cpu_rope_apply(x, n, stride, heads, d, cos_t, sin_t);
    CUDA_OK(dsla_cuda_rope(NULL, dx, n, stride, heads, d, dpos, dinv));
    /* Lanes beyond the rotated heads must come back untouched, which the whole-row compare checks.
     */
    float *got = host_result(dx, total, false);
    double err = rel_err(got, x, total);
    free(x), free(pos), free(inv), free(cos_t), free(sin_t), free(got);
    dev_free(dx), dev_free(dinv), dev_free(dpos);
    return err;
}

static double run_swiglu(const row_t *r) {
    const int rows_n = r->a, n = r->b;
    const bool bf16 = r->dtype == DSLA_DTYPE_BF16;
    const size_t in = (size_t)rows_n * 2 * n, out = (size_t)rows_n * n;
    float *gu = host_random(in, 2.0f), *want = malloc(out * sizeof *want);
    float *dgu = dev_copy(gu, in * 4);
    void *dy = dev_output(out, bf16);
    dsla_cpu_swiglu(want, gu, gu + n, rows_n, n, 2 * n);
    CUDA_OK(dsla_cuda_swiglu(NULL, dy, r->dtype, dgu, dgu + n, rows_n, n, 2 * n));
    float *got = host_result(dy, out, bf16);
    double err = rel_err(got, want, out);
    free(gu), free(want), free(got);
    dev_free(dgu), dev_free(dy);
    return err;
}

static double run_add(const row_t *r) {
    const size_t n = (size_t)r->a;
    float *a = host_random(n, 1.0f), *b = host_random(n, 1.0f), *want = malloc(n * 4);
    float *da = dev_copy(a, n * 4), *db = dev_copy(b, n * 4), *dy = dev_poisoned(n);
    dsla_cpu_add(want, a, b, n);
    CUDA_OK(dsla_cuda_add(NULL, dy, da, db, n));
    float *got = host_result(dy, n, false);
    double err = rel_err(got, want, n);
    free(a), free(b), free(want), free(got);
    dev_free(da), dev_free(db), dev_free(dy);
    return err;
}

/* A pool of random K/V and a block table per sequence drawn as a random permutation of the pool's
 * blocks, so that neighbouring positions never sit in neighbouring memory by accident. */
typedef struct {
    float *k, *v;
    int32_t *tables; /* [n_seqs][table_stride] */
    int blocks, table_stride, width;
} kv_host_t;

static kv_host_t kv_random(int n_seqs, int max_context, int width) {
    kv_host_t kv;
    kv.table_stride = dsla_kv_blocks_for(max_context);
    kv.blocks = n_seqs * kv.table_stride;
    kv.width = width;
    const size_t floats = (size_t)kv.blocks * DSLA_KV_BLOCK_TOKENS * width;
    kv.k = host_random(floats, 1.0f);
    kv.v = host_random(floats, 1.0f);
    kv.tables = malloc((size_t)kv.blocks * sizeof *kv.tables);
    for (int i = 0; i < kv.blocks; i++)
        kv.tables[i] = i;
    for (int i = kv.blocks - 1; i > 0; i--) {
        int j = (int)(dsla_test_rand_u64(&rng) % (uint64_t)(i + 1));
        int32_t t = kv.tables[i];
        kv.tables[i] = kv.tables[j];
        kv.tables[j] = t;
    }
    return kv;
}

static void kv_free(kv_host_t *kv) {
    free(kv->k), free(kv->v), free(kv->tables);
}

static double run_prefill(const row_t *r) {
    const int n_new = r->a, past = r->b, d = r->e, ctx = past + n_new;
    const dsla_attn_shape_t shape = {r->c, r->d, d};
    const int qw = shape.n_heads * d, width = shape.n_kv_heads * d;
    kv_host_t kv = kv_random(1, ctx, width);
    /* q rows carry K and V beside them, as in a fused QKV activation, to exercise the strides. */
    const int q_stride = qw + 2 * width;
    float *q = host_random((size_t)n_new * q_stride, 1.0f);
    float *new_k = q + qw, *new_v = q + qw + width;
    /* The new tokens' K/V go in through kv_append on the GPU and by hand on the CPU. */
    for (int i = 0; i < n_new; i++) {
        const int pos = past + i;
        const size_t slot = (size_t)kv.tables[pos / DSLA_KV_BLOCK_TOKENS] * DSLA_KV_BLOCK_TOKENS +
                            pos % DSLA_KV_BLOCK_TOKENS;
        memcpy(kv.k + slot * width, new_k + (size_t)i * q_stride, (size_t)width * 4);
        memcpy(kv.v + slot * width, new_v + (size_t)i * q_stride, (size_t)width * 4);
    }
    const size_t pool = (size_t)kv.blocks * DSLA_KV_BLOCK_TOKENS * width * 4;
    float *dk = dev_copy(kv.k, pool), *dv = dev_copy(kv.v, pool);
    /* Poison the new slots on the device so that only kv_append can fill them. */
    for (int i = 0; i < n_new; i++) {
        const int pos = past + i;
        const size_t slot = (size_t)kv.tables[pos / DSLA_KV_BLOCK_TOKENS] * DSLA_KV_BLOCK_TOKENS +
                            pos % DSLA_KV_BLOCK_TOKENS;
        CUDA_OK(dsla_cuda_fill_f32(dk + slot * width, NAN, (size_t)width, NULL));
        CUDA_OK(dsla_cuda_fill_f32(dv + slot * width, NAN, (size_t)width, NULL));
    }
    int32_t *dt = dev_copy(kv.tables, (size_t)kv.table_stride * 4);
    float *dq = dev_copy(q, (size_t)n_new * q_stride * 4), *dout = dev_poisoned((size_t)n_new * qw);
    dsla_paged_kv_t cpu_kv = {kv.k, kv.v, kv.tables, DSLA_KV_BLOCK_TOKENS};
    dsla_paged_kv_t gpu_kv = {dk, dv, dt, DSLA_KV_BLOCK_TOKENS};
    float *want = malloc((size_t)n_new * qw * 4), *scores = malloc((size_t)ctx * 4);
    dsla_cpu_attention(want, qw, q, q_stride, n_new, past, &shape, &cpu_kv, scores);
    CUDA_OK(
        dsla_cuda_kv_append(NULL, &gpu_kv, width, past, n_new, dq + qw, dq + qw + width, q_stride));
    CUDA_OK(
        dsla_cuda_attention_prefill(NULL, dout, qw, dq, q_stride, n_new, past, &shape, &gpu_kv));
    float *got = host_result(dout, (size_t)n_new * qw, false);
    double err = rel_err(got, want, (size_t)n_new * qw);
    kv_free(&kv);
    free(q), free(want), free(scores), free(got);
    dev_free(dk), dev_free(dv), dev_free(dt), dev_free(dq), dev_free(dout);
    return err;
}

/* cuDNN's fused attention (bf16 q, k, v in one fused row, bf16 out) against the CPU's fp32
 * attention on the same bf16-rounded inputs: what is left is P's and the output's bf16 rounding.
 * Reports 0 (and says so) where libcudnn.so.9 does not load. */
/* Device copy of rows of bf16 bits, zero-padded to cap rows (the bucket cuDNN reads). */
static uint16_t *dev_rows_padded(const uint16_t *bits, size_t rows, size_t cap, size_t width) {
    uint16_t *h = calloc(cap * width, sizeof *h);
    memcpy(h, bits, rows * width * sizeof *h);
    uint16_t *d = dev_copy(h, cap * width * sizeof *h);
    free(h);
    return d;
}

/* cuDNN's fused attention against the CPU's fp32 attention: a prompt with no past through the fused
 * QKV rows, or (b > 0) a chunk of n tokens after b cached ones, its keys and values gathered from a
 * shuffled bf16 pool (dsla_cuda_kv_gather). Buffers hold the bucket's rows, as the model's do. */
static double run_prefill_cudnn(const row_t *r) {
    const int n = r->a, past = r->b, d = r->e, ctx = past + n;
    const dsla_attn_shape_t shape = {r->c, r->d, d};
    const int qw = shape.n_heads * d, width = shape.n_kv_heads * d, stride = qw + 2 * width;
    dsla_cuda_cudnn_t *c = NULL;
    if (dsla_cuda_cudnn_create(&c) != DSLA_OK) {
        printf("attention_cudnn: skipped: %s\n", dsla_last_error());
        dsla_clear_error();
        return 0.0;
    }
    /* Token t's q, k, v in row t (the model's fused layout); the chunk is the last n rows. */
    float *qkv = host_random((size_t)ctx * stride, 1.0f);
    uint16_t *bits = round_bf16(qkv, (size_t)ctx * stride);
    kv_host_t kv = kv_random(1, ctx, width);
    for (int t = 0; t < ctx; t++) {
        const size_t slot = (size_t)kv.tables[t / DSLA_KV_BLOCK_TOKENS] * DSLA_KV_BLOCK_TOKENS +
                            t % DSLA_KV_BLOCK_TOKENS;
        memcpy(kv.k + slot * width, qkv + (size_t)t * stride + qw, (size_t)width * 4);
        memcpy(kv.v + slot * width, qkv + (size_t)t * stride + qw + width, (size_t)width * 4);
    }
    dsla_paged_kv_t cpu_kv = {kv.k, kv.v, kv.tables, DSLA_KV_BLOCK_TOKENS};
    float *want = malloc((size_t)n * qw * 4), *scores = malloc((size_t)ctx * 4);
    dsla_cpu_attention(want, qw, qkv + (size_t)past * stride, stride, n, past, &shape, &cpu_kv,
                       scores);
    const size_t q_rows = (size_t)dsla_cuda_cudnn_rows(n);
    uint16_t *dqkv = dev_rows_padded(bits + (size_t)past * stride, (size_t)n, q_rows, stride);
    void *dout = dev_output(q_rows * qw, true);
    if (past == 0) {
        CUDA_OK(dsla_cuda_attention_prefill_cudnn(c, NULL, dout, qw, dqkv, dqkv + qw,
                                                  dqkv + qw + width, stride, n, &shape));
    } else {
        /* The pool in bf16, as the model keeps it; gathered back into packed rows. */
        const size_t pool_n = (size_t)kv.blocks * DSLA_KV_BLOCK_TOKENS * width;
        uint16_t *pk = round_bf16(kv.k, pool_n), *pv = round_bf16(kv.v, pool_n);
        uint16_t *dpk = dev_copy(pk, pool_n * 2), *dpv = dev_copy(pv, pool_n * 2);
        int32_t *dt = dev_copy(kv.tables, (size_t)kv.blocks * 4);
        const size_t kv_rows = (size_t)dsla_cuda_cudnn_kv_rows(ctx);
        uint16_t *dk = dev_output(kv_rows * width, true), *dv = dev_output(kv_rows * width, true);
        const dsla_cuda_kv_pool_t pool = {dpk, dpv, DSLA_DTYPE_BF16, DSLA_KV_BLOCK_TOKENS};
        CUDA_OK(dsla_cuda_kv_gather(NULL, &pool, dt, ctx, (int)kv_rows, width, dk, dv));
        CUDA_OK(dsla_cuda_attention_prefill_cudnn_past(c, NULL, dout, qw, dqkv, stride, dk, dv,
                                                       width, n, past, &shape));
        free(pk), free(pv);
        dev_free(dpk), dev_free(dpv), dev_free(dt), dev_free(dk), dev_free(dv);
    }
    float *got = host_result(dout, (size_t)n * qw, true);
    const double err = rel_err(got, want, (size_t)n * qw);
    printf("attention_cudnn: cuDNN %zu\n", dsla_cuda_cudnn_version(c));
    dsla_cuda_cudnn_destroy(&c);
    kv_free(&kv);
    free(qkv), free(bits), free(want), free(scores), free(got);
    dev_free(dqkv), dev_free(dout);
    return err;
}

static double run_decode(const row_t *r) {
    const int n_seqs = r->a, max_ctx = r->b, d = r->e;
    const dsla_attn_shape_t shape = {r->c, r->d, d};
    const int qw = shape.n_heads * d, width = shape.n_kv_heads * d;
    kv_host_t kv = kv_random(n_seqs, max_ctx, width);
    int32_t *lens = malloc((size_t)n_seqs * sizeof *lens);
    for (int s = 0; s < n_seqs; s++) /* the longest is max_ctx, the rest anywhere in 1..max_ctx */
        lens[s] = s == 0 ? max_ctx : 1 + (int32_t)(dsla_test_rand_u64(&rng) % (uint64_t)max_ctx);
    float *q = host_random((size_t)n_seqs * qw, 1.0f), *want = malloc((size_t)n_seqs * qw * 4);
    float *scores = malloc((size_t)max_ctx * 4);
    for (int s = 0; s < n_seqs; s++) {
        dsla_paged_kv_t one = {kv.k, kv.v, kv.tables + (size_t)s * kv.table_stride,
                               DSLA_KV_BLOCK_TOKENS};
        dsla_cpu_attention(want + (size_t)s * qw, qw, q + (size_t)s * qw, qw, 1, lens[s] - 1,
                           &shape, &one, scores);
    }
    const size_t pool = (size_t)kv.blocks * DSLA_KV_BLOCK_TOKENS * width * 4;
    float *dk = dev_copy(kv.k, pool), *dv = dev_copy(kv.v, pool);
    int32_t *dt = dev_copy(kv.tables, (size_t)kv.blocks * 4);
    int32_t *dl = dev_copy(lens, (size_t)n_seqs * 4);
    float *dq = dev_copy(q, (size_t)n_seqs * qw * 4), *dout = dev_poisoned((size_t)n_seqs * qw);
    const size_t ws_bytes = dsla_cuda_attention_decode_workspace(n_seqs, max_ctx, &shape);
    void *ws = NULL;
    CUDA_OK(dsla_cuda_malloc(&ws, ws_bytes));
    CUDA_OK(dsla_cuda_fill_f32(ws, NAN, ws_bytes / 4, NULL));
    dsla_cuda_paged_batch_t batch = {dk, dv, dt, dl, kv.table_stride, DSLA_KV_BLOCK_TOKENS};
    CUDA_OK(dsla_cuda_attention_decode(NULL, dout, qw, dq, qw, n_seqs, max_ctx, &shape, &batch, ws,
                                       ws_bytes));
    float *got = host_result(dout, (size_t)n_seqs * qw, false);
    double err = rel_err(got, want, (size_t)n_seqs * qw);
    kv_free(&kv);
    free(lens), free(q), free(want), free(scores), free(got);
    dev_free(dk), dev_free(dv), dev_free(dt), dev_free(dl), dev_free(dq), dev_free(dout);
    dev_free(ws);
    return err;
}

static int32_t *tokens_back(const int32_t *dev, int n) {
    CUDA_OK(dsla_cuda_stream_sync(NULL));
    int32_t *h = malloc((size_t)n * sizeof *h);
    CUDA_OK(dsla_cuda_copy(h, dev, (size_t)n * sizeof *h, NULL));
    return h;
}

static double run_argmax(const row_t *r) {
    const int rows_n = r->a, n = r->b;
    float *x = host_random((size_t)rows_n * n, 1.0f);
    float *dx = dev_copy(x, (size_t)rows_n * n * 4);
    int32_t *dout = (int32_t *)dev_poisoned((size_t)rows_n);
    CUDA_OK(dsla_cuda_argmax(NULL, dout, dx, rows_n, n));
    int32_t *got = tokens_back(dout, rows_n);
    int wrong = 0;
    for (int i = 0; i < rows_n; i++)
        wrong += got[i] != dsla_cpu_argmax(x + (size_t)i * n, n);
    free(x), free(got);
    dev_free(dx), dev_free(dout);
    return (double)wrong / rows_n;
}

/* The first uniform a dsla_sampler seeded with seed draws (sampler.c: splitmix64 seeding,
 * xoshiro256**, 53 bits), so the GPU gets the very number the CPU sampler uses. */
static double sampler_first_uniform(uint64_t seed) {
    uint64_t s[4], x = seed;
    for (int i = 0; i < 4; i++)
        s[i] = dsla_splitmix64(&x);
    const uint64_t m = s[1] * 5;
    const uint64_t result = ((m << 7) | (m >> 57)) * 9;
    return (double)(result >> 11) * (1.0 / 9007199254740992.0);
}

static double run_sample(const row_t *r) {
    const int rows_n = r->a, vocab = r->b;
    float *x = host_random((size_t)rows_n * vocab, 3.0f);
    dsla_cuda_sample_row_t *params = malloc((size_t)rows_n * sizeof *params);
    int32_t *want = malloc((size_t)rows_n * sizeof *want);
    for (int i = 0; i < rows_n; i++) {
        dsla_sampler_params_t sp = {.temperature = r->temperature,
                                    .top_k = r->c,
                                    .top_p = r->top_p,
                                    .seed = dsla_test_rand_u64(&rng)};
        dsla_sampler_t *s = NULL;
        CUDA_OK(dsla_sampler_create(&s, &sp, vocab));
        want[i] = dsla_sampler_sample(s, x + (size_t)i * vocab);
        dsla_sampler_destroy(&s);
        params[i] = (dsla_cuda_sample_row_t){sampler_first_uniform(sp.seed), sp.temperature,
                                             sp.top_k, sp.top_p};
    }
    float *dx = dev_copy(x, (size_t)rows_n * vocab * 4);
    dsla_cuda_sample_row_t *dp = dev_copy(params, (size_t)rows_n * sizeof *params);
    int32_t *dout = (int32_t *)dev_poisoned((size_t)rows_n);
    const size_t ws_bytes = dsla_cuda_sample_workspace(rows_n, vocab);
    void *ws = NULL;
    CUDA_OK(dsla_cuda_malloc(&ws, ws_bytes));
    CUDA_OK(dsla_cuda_sample(NULL, dout, dx, rows_n, vocab, dp, ws, ws_bytes));
    int32_t *got = tokens_back(dout, rows_n);
    int wrong = 0;
    for (int i = 0; i < rows_n; i++)
        wrong += got[i] != want[i];
    free(x), free(params), free(want), free(got);
    dev_free(dx), dev_free(dp), dev_free(dout), dev_free(ws);
    return (double)wrong / rows_n;
}

/* ---- DSLA (kernels/kernels_cuda_dsla.h against kernels/cpu/dsla*.c) ---- */

static float dsla_gate_sample(int kind) {
    if (kind == DSLA_GATES_MIXED) {
        switch (dsla_test_rand_u64(&rng) % 4) {
        case 0:
            kind = DSLA_GATES_MODERATE;
            break;
        case 1:
            kind = DSLA_GATES_CLAMP;
            break;
        case 2: /* log g within a few ulps of -50: logsigmoid(a) = -800 near a = -800 */
            return -800.0f + dsla_test_rand_uniform(&rng, -0.01f, 0.01f);
        default:
            return dsla_test_rand_uniform(&rng, 15.0f, 40.0f);
        }
    }
    if (kind == DSLA_GATES_CLAMP) return dsla_test_rand_uniform(&rng, -2000.0f, -700.0f);
    return 2.0f * dsla_test_rand_normal(&rng);
}

/* Host inputs q, k, v, a1, a2 (n each) and alpha, with their device copies in the row's dtype
 * (bf16 rows round the host values first, so the CPU sees what the GPU sees). */
typedef struct {
    float *h[5], alpha[2];
    void *d[5];
    float *dalpha;
    dsla_dsla_in_t cpu;
    dsla_cuda_dsla_in_t gpu;
} dsla_inputs_t;

static void dsla_inputs_init(dsla_inputs_t *x, size_t n, int gates, dsla_dtype_t dtype) {
    for (int i = 0; i < 5; i++) {
        x->h[i] = host_random(n, 1.0f);
        if (i >= 3)
            for (size_t j = 0; j < n; j++)
                x->h[i][j] = dsla_gate_sample(gates);
        if (dtype == DSLA_DTYPE_BF16) {
            uint16_t *b = round_bf16(x->h[i], n);
            x->d[i] = dev_copy(b, n * sizeof *b);
            free(b);
        } else {
            x->d[i] = dev_copy(x->h[i], n * sizeof(float));
        }
    }
    x->alpha[0] = dsla_test_rand_normal(&rng);
    x->alpha[1] = dsla_test_rand_normal(&rng);
    x->dalpha = dev_copy(x->alpha, sizeof x->alpha);
    x->cpu = (dsla_dsla_in_t){x->h[0], x->h[1], x->h[2], x->h[3], x->h[4], x->alpha};
    x->gpu = (dsla_cuda_dsla_in_t){x->d[0], x->d[1], x->d[2], x->d[3], x->d[4], dtype, x->dalpha};
}

static void dsla_inputs_free(dsla_inputs_t *x) {
    for (int i = 0; i < 5; i++) {
        free(x->h[i]);
        dev_free(x->d[i]);
    }
    dev_free(x->dalpha);
}

/* Worst of a row's several outputs; over-tolerance parts are named on stderr. */
static double dsla_worse(double worst, const char *what, double err, double tol) {
    if (!(err <= tol)) fprintf(stderr, "    %s: rel err %.3e\n", what, err);
    return err > worst || isnan(err) ? err : worst;
}

static double run_dsla_decode(const row_t *r) {
    const int B = r->a, H = r->b, d = r->c, steps = r->d, flags = r->e;
    const dsla_dsla_dims_t dims = {B, 1, H, d};
    const size_t n = (size_t)B * H * d, per_seq = (size_t)H * d * d, ns = (size_t)B * per_seq;
    float *S[2] = {host_random(ns, 0.5f), host_random(ns, 0.5f)};
    dsla_cuda_dsla_states_t st = {0};
    float *dS[2] = {NULL, NULL}, **slots[2] = {NULL, NULL};
    void *dslots[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        if (flags & DSLA_SLOTS) { /* one allocation per sequence, as a slot pool hands them out */
            slots[i] = malloc((size_t)B * sizeof *slots[i]);
            for (int b = 0; b < B; b++)
                slots[i][b] = dev_copy(S[i] + (size_t)b * per_seq, per_seq * sizeof(float));
            dslots[i] = dev_copy(slots[i], (size_t)B * sizeof *slots[i]);
        } else {
            dS[i] = dev_copy(S[i], ns * sizeof(float));
        }
    }
    st.s1 = dS[0], st.s2 = dS[1];
    st.s1_slots = dslots[0], st.s2_slots = dslots[1];
    double worst = 0.0;
    for (int step = 0; step < steps; step++) {
        dsla_inputs_t x;
        dsla_inputs_init(&x, n, flags & DSLA_GATES_MASK, r->dtype);
        float *want = malloc(n * sizeof *want), *dout = dev_poisoned(n);
        CUDA_OK(dsla_cpu_dsla_recurrent_forward(&dims, &x.cpu, S[0], S[1], want));
        CUDA_OK(dsla_cuda_dsla_decode(NULL, &dims, &x.gpu, &st, dout));
        float *got = host_result(dout, n, false);
        worst = dsla_worse(worst, "out", rel_err(got, want, n), r->tol);
        free(want), free(got);
        dev_free(dout);
        dsla_inputs_free(&x);
    }
    for (int i = 0; i < 2; i++) {
        float *got = malloc(ns * sizeof *got);
        CUDA_OK(dsla_cuda_stream_sync(NULL));
        for (int b = 0; b < B && slots[i]; b++)
            CUDA_OK(dsla_cuda_copy(got + (size_t)b * per_seq, slots[i][b], per_seq * sizeof(float),
                                   NULL));
        if (!slots[i]) CUDA_OK(dsla_cuda_copy(got, dS[i], ns * sizeof(float), NULL));
        worst = dsla_worse(worst, i ? "S2" : "S1", rel_err(got, S[i], ns), r->tol);
        free(got);
        for (int b = 0; b < B && slots[i]; b++)
            dev_free(slots[i][b]);
        free(slots[i]), free(S[i]);
        dev_free(dS[i]), dev_free(dslots[i]);
    }
    return worst;
}

static void *dsla_workspace(const dsla_dsla_dims_t *dims, size_t *bytes) {
    *bytes = dsla_cuda_dsla_chunked_workspace_bytes(dims);
    return dev_poisoned(*bytes / sizeof(float) + 1); /* NaN: nothing may read it unwritten */
}

/* The size of what cancels in dalpha. dL/dalpha = +-w1 w2 (g1 - g2) with g_i = sum dout . o_i (o_i
 * the unmixed output of state i): a difference of two sums of every output element, so its
 * relative error has no bound when g1 ~ g2 (a TF32 row measured 2.3e-2 in one draw and 3.3e-3 in
 * the next). dalpha's error is taken against w1 w2 (|g1| + |g2|) instead, from two CPU forwards
 * with the mix pinned to one state each. */
static double dsla_dalpha_scale(const dsla_dsla_dims_t *dims, const dsla_inputs_t *x,
                                float *const S0[2], const float *dout, size_t n, float *work) {
    const double e = exp((double)x->alpha[1] - (double)x->alpha[0]);
    const double w1 = 1.0 / (1.0 + e), w2 = e / (1.0 + e);
    float *o = malloc(n * sizeof *o);
    double sum = 0.0;
    for (int i = 0; i < 2; i++) {
        const float pin[2] = {0.0f, i ? 1e30f : -1e30f}; /* mix weights (1, 0) or (0, 1) */
        dsla_dsla_in_t in = x->cpu;
        in.alpha = pin;
        CUDA_OK(dsla_cpu_dsla_chunked_forward(dims, &in, S0[0], S0[1], o, NULL, NULL, work));
        double g = 0.0;
        for (size_t j = 0; j < n; j++)
            g += (double)dout[j] * o[j];
        sum += fabs(g);
    }
    free(o);
    return w1 * w2 * sum;
}

/* Chunked forward (bwd false) or backward against the CPU chunked kernels. */
static double run_dsla_chunked(const row_t *r, bool bwd) {
    const int flags = r->e;
    const dsla_dsla_dims_t dims = {r->a, r->b, r->c, r->d};
    const size_t n = (size_t)dims.batch * dims.tokens * dims.heads * dims.head_dim;
    const size_t ns = (size_t)dims.batch * dims.heads * dims.head_dim * dims.head_dim;
    const dsla_cuda_dsla_math_t math =
        flags & DSLA_TF32 ? DSLA_CUDA_DSLA_MATH_TF32 : DSLA_CUDA_DSLA_MATH_F32;
    dsla_inputs_t x;
    dsla_inputs_init(&x, n, flags & DSLA_GATES_MASK, r->dtype);
    float *S0[2] = {NULL, NULL}, *dS0[2] = {NULL, NULL};
    for (int i = 0; i < 2 && (flags & DSLA_STATES); i++) {
        S0[i] = host_random(ns, 0.5f);
        dS0[i] = dev_copy(S0[i], ns * sizeof(float));
    }
    float *cpu_work = malloc(dsla_cpu_dsla_chunked_workspace_floats(&dims) * sizeof(float));
    size_t ws_bytes;
    void *ws = dsla_workspace(&dims, &ws_bytes);
    double worst = 0.0;
    if (!bwd) {
        float *want = malloc(n * sizeof *want), *wantS[2], *gotS[2], *dST[2];
        for (int i = 0; i < 2; i++) {
            wantS[i] = malloc(ns * sizeof(float));
            dST[i] = dev_poisoned(ns);
        }
        float *dout = dev_poisoned(n);
        CUDA_OK(dsla_cpu_dsla_chunked_forward(&dims, &x.cpu, S0[0], S0[1], want, wantS[0], wantS[1],
                                              cpu_work));
        CUDA_OK(dsla_cuda_dsla_chunked_forward(NULL, &dims, &x.gpu, math, dS0[0], dS0[1], dout,
                                               dST[0], dST[1], ws, ws_bytes));
        float *got = host_result(dout, n, false);
        worst = dsla_worse(worst, "out", rel_err(got, want, n), r->tol);
        for (int i = 0; i < 2; i++) {
            gotS[i] = host_result(dST[i], ns, false);
            worst = dsla_worse(worst, i ? "S2_T" : "S1_T", rel_err(gotS[i], wantS[i], ns), r->tol);
            free(gotS[i]), free(wantS[i]);
            dev_free(dST[i]);
        }
        free(want), free(got);
        dev_free(dout);
    } else {
        float *g = host_random(n, 1.0f), *dST[2] = {NULL, NULL};
        float *ddST[2] = {NULL, NULL};
        for (int i = 0; i < 2 && (flags & DSLA_STATES); i++) {
            dST[i] = host_random(ns, 1.0f);
            ddST[i] = dev_copy(dST[i], ns * sizeof(float));
        }
        float *dg = dev_copy(g, n * sizeof(float));
        /* want[0..4]: dq, dk, dv, da1, da2; [5]: dalpha; [6], [7]: dS1_0, dS2_0 */
        const size_t sizes[8] = {n, n, n, n, n, 2, ns, ns};
        static const char *const names[8] = {"dq",  "dk",     "dv",    "da1",
                                             "da2", "dalpha", "dS1_0", "dS2_0"};
        float *want[8], *dev[8];
        for (int i = 0; i < 8; i++) {
            want[i] = malloc(sizes[i] * sizeof(float));
            dev[i] = dev_poisoned(sizes[i]);
        }
        const dsla_dsla_grad_t cg = {want[0], want[1], want[2], want[3], want[4], want[5]};
        const dsla_dsla_grad_t gg = {dev[0], dev[1], dev[2], dev[3], dev[4], dev[5]};
        CUDA_OK(dsla_cpu_dsla_chunked_backward(&dims, &x.cpu, S0[0], S0[1], g, dST[0], dST[1], &cg,
                                               want[6], want[7], cpu_work));
        if (flags & DSLA_AFTER_FWD) {
            float *out = dev_poisoned(n);
            CUDA_OK(dsla_cuda_dsla_chunked_forward(NULL, &dims, &x.gpu, math, dS0[0], dS0[1], out,
                                                   NULL, NULL, ws, ws_bytes));
            CUDA_OK(dsla_cuda_dsla_chunked_backward_after_forward(NULL, &dims, &x.gpu, math, dS0[0],
                                                                  dS0[1], dg, ddST[0], ddST[1], &gg,
                                                                  dev[6], dev[7], ws, ws_bytes));
            dev_free(out);
        } else {
            CUDA_OK(dsla_cuda_dsla_chunked_backward(NULL, &dims, &x.gpu, math, dS0[0], dS0[1], dg,
                                                    ddST[0], ddST[1], &gg, dev[6], dev[7], ws,
                                                    ws_bytes));
        }
        const double dalpha_scale = dsla_dalpha_scale(&dims, &x, S0, g, n, cpu_work);
        for (int i = 0; i < 8; i++) {
            float *got = host_result(dev[i], sizes[i], false);
            double err = rel_err(got, want[i], sizes[i]);
            if (i == 5 && dalpha_scale > 0.0)
                err = fmax(fabs((double)got[0] - want[5][0]), fabs((double)got[1] - want[5][1])) /
                      dalpha_scale;
            worst = dsla_worse(worst, names[i], err, r->tol);
            free(got), free(want[i]);
            dev_free(dev[i]);
        }
        for (int i = 0; i < 2; i++)
            free(dST[i]), dev_free(ddST[i]);
        free(g);
        dev_free(dg);
    }
    for (int i = 0; i < 2; i++)
        free(S0[i]), dev_free(dS0[i]);
    free(cpu_work);
    dev_free(ws);
    dsla_inputs_free(&x);
    return worst;
}

static double run_dsla_adamw(const row_t *r) {
    const size_t n = (size_t)r->a;
    const long step = r->b;
    float *p = host_random(n, 1.0f), *g = host_random(n, 0.1f), *m = host_random(n, 0.01f);
    float *v = host_random(n, 0.001f);
    for (size_t i = 0; i < n; i++)
        v[i] = v[i] * v[i]; /* a second moment is never negative */
    float *dp = dev_copy(p, n * 4), *dg = dev_copy(g, n * 4), *dm = dev_copy(m, n * 4);
    float *dv = dev_copy(v, n * 4);
    dsla_adamw_params_t prm = dsla_adamw_params_default(100);
    const double lr = dsla_adamw_lr(&prm, step);
    dsla_cpu_adamw_step(p, m, v, g, n, step, lr, &prm);
    CUDA_OK(dsla_cuda_dsla_adamw_step(NULL, dp, dm, dv, dg, n, step, lr, &prm));
    float *got[3] = {host_result(dp, n, false), host_result(dm, n, false),
                     host_result(dv, n, false)};
    const float *want[3] = {p, m, v};
    double worst = 0.0;
    for (int i = 0; i < 3; i++) {
        worst = dsla_worse(worst,
                           i == 0   ? "param"
                           : i == 1 ? "m"
                                    : "v",
                           rel_err(got[i], want[i], n), r->tol);
        free(got[i]);
    }
    free(p), free(g), free(m), free(v);
    dev_free(dp), dev_free(dg), dev_free(dm), dev_free(dv);
    return worst;
}

/* ---- the DSLA reference vectors (../shared/testvectors/dsla_reference_fp64.safetensors) ---- */

enum { DSLA_REF_CASES = 3 };
static const char DSLA_REF_FILE[] = "testvectors/dsla_reference_fp64.safetensors";

/* case<c>.<key> as doubles (F64 in the file); NULL when absent. */
static const double *dsla_ref(const dsla_safetensors_t *st, int c, const char *key) {
    char name[64];
    snprintf(name, sizeof name, "case%d.%s", c, key);
    const dsla_st_tensor_t *t = dsla_safetensors_find(st, name);
    return t && t->dtype == DSLA_DTYPE_F64 ? t->data : NULL;
}

/* y[m, n] = x[m, k] w[n, k]^T (+ bias), in double. */
static void dsla_ref_linear(double *y, const double *x, const double *w, const double *bias, int m,
                            int n, int k) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = bias ? bias[j] : 0.0;
            for (int l = 0; l < k; l++)
                s += x[(size_t)i * k + l] * w[(size_t)j * k + l];
            y[(size_t)i * n + j] = s;
        }
}

static double rel_err64(const double *got, const double *want, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY;
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static double *dsla_widen(const float *x, size_t n) {
    double *y = malloc(n * sizeof *y);
    for (size_t i = 0; i < n; i++)
        y[i] = x[i];
    return y;
}

/* Each case's layer around the GPU core: projections, output projection and the weight gradients
 * (sum over tokens of gradient x input) in double on the CPU, the core forward and backward on the
 * GPU. Compares y, the final states, dx and the gradients of wq, wk, wv, wg1, bg1, wg2, bg2, alpha
 * with the file's fp64 values. */
static double run_dsla_reference(const row_t *r) {
    char *path = dsla_test_data_path(DSLA_REF_FILE);
    if (!path) {
        printf("  %s not under DSLA_TEST_DATA: row skipped\n", DSLA_REF_FILE);
        return 0.0;
    }
    dsla_safetensors_t *st = NULL;
    CUDA_OK(dsla_safetensors_open(&st, path));
    free(path);
    const dsla_cuda_dsla_math_t math =
        r->e & DSLA_TF32 ? DSLA_CUDA_DSLA_MATH_TF32 : DSLA_CUDA_DSLA_MATH_F32;
    double worst = 0.0;
    for (int c = 0; c < DSLA_REF_CASES; c++) {
        char key[32];
        snprintf(key, sizeof key, "case%d.dims", c);
        const dsla_st_tensor_t *dt = dsla_safetensors_find(st, key);
        if (!dt || dt->dtype != DSLA_DTYPE_I64) fail_msg("%s: %s missing", DSLA_REF_FILE, key);
        int64_t dv[4];
        memcpy(dv, dt->data, sizeof dv);
        const dsla_dsla_dims_t dims = {(int)dv[0], (int)dv[1], (int)dv[2], (int)dv[3]};
        const int M = dims.batch * dims.tokens, W = dims.heads * dims.head_dim;
        snprintf(key, sizeof key, "case%d.x", c);
        const int D = (int)(dsla_safetensors_find(st, key)->bytes / sizeof(double) / (size_t)M);
        const size_t n = (size_t)M * W,
                     ns = (size_t)dims.batch * dims.heads * dims.head_dim * dims.head_dim;
        const double *x = dsla_ref(st, c, "x"), *R = dsla_ref(st, c, "R");
        const double *wts[5] = {dsla_ref(st, c, "q"), dsla_ref(st, c, "k"), dsla_ref(st, c, "v"),
                                dsla_ref(st, c, "g1w"), dsla_ref(st, c, "g2w")};
        const double *bias[5] = {NULL, NULL, NULL, dsla_ref(st, c, "g1b"), dsla_ref(st, c, "g2b")};
        const double *wo = dsla_ref(st, c, "o"), *alpha = dsla_ref(st, c, "alpha");
        const double *S0[2] = {dsla_ref(st, c, "S1_init"), dsla_ref(st, c, "S2_init")};
        if (!x || !R || !wo || !alpha || !wts[0] || !wts[1] || !wts[2] || !wts[3] || !wts[4])
            fail_msg("%s: case%d incomplete", DSLA_REF_FILE, c);

        /* core inputs in fp32, as the fp32 layer would feed the core */
        double *act = malloc(n * sizeof *act);
        float *act32[5];
        void *dact[5];
        for (int i = 0; i < 5; i++) {
            dsla_ref_linear(act, x, wts[i], bias[i], M, W, D);
            act32[i] = malloc(n * sizeof(float));
            for (size_t j = 0; j < n; j++)
                act32[i][j] = (float)act[j];
            dact[i] = dev_copy(act32[i], n * sizeof(float));
        }
        const float alpha32[2] = {(float)alpha[0], (float)alpha[1]};
        float *dalpha_in = dev_copy(alpha32, sizeof alpha32);
        float *dS0[2] = {NULL, NULL}, *dST[2];
        for (int i = 0; i < 2; i++) {
            if (S0[i]) {
                float *s = malloc(ns * sizeof *s);
                for (size_t j = 0; j < ns; j++)
                    s[j] = (float)S0[i][j];
                dS0[i] = dev_copy(s, ns * sizeof *s);
                free(s);
            }
            dST[i] = dev_poisoned(ns);
        }
        const dsla_cuda_dsla_in_t in = {dact[0], dact[1],        dact[2],  dact[3],
                                        dact[4], DSLA_DTYPE_F32, dalpha_in};
        size_t ws_bytes;
        void *ws = dsla_workspace(&dims, &ws_bytes);
        float *dmix = dev_poisoned(n);
        CUDA_OK(dsla_cuda_dsla_chunked_forward(NULL, &dims, &in, math, dS0[0], dS0[1], dmix, dST[0],
                                               dST[1], ws, ws_bytes));
        float *mix32 = host_result(dmix, n, false);
        double *mix = dsla_widen(mix32, n), *y = malloc((size_t)M * D * sizeof *y);
        dsla_ref_linear(y, mix, wo, NULL, M, D, W);
        worst = dsla_worse(worst, "y", rel_err64(y, dsla_ref(st, c, "y"), (size_t)M * D), r->tol);
        for (int i = 0; i < 2; i++) {
            float *s = host_result(dST[i], ns, false);
            double *s64 = dsla_widen(s, ns);
            worst = dsla_worse(worst, i ? "S2_final" : "S1_final",
                               rel_err64(s64, dsla_ref(st, c, i ? "S2_final" : "S1_final"), ns),
                               r->tol);
            free(s), free(s64);
        }

        /* backward of sum(y * R): dmix = R wo */
        float *g32 = malloc(n * sizeof *g32);
        for (int t = 0; t < M; t++)
            for (int j = 0; j < W; j++) {
                double s = 0.0;
                for (int o = 0; o < D; o++)
                    s += R[(size_t)t * D + o] * wo[(size_t)o * W + j];
                g32[(size_t)t * W + j] = (float)s;
            }
        float *dg = dev_copy(g32, n * sizeof(float)), *dgrad[6];
        for (int i = 0; i < 6; i++)
            dgrad[i] = dev_poisoned(i < 5 ? n : 2);
        const dsla_dsla_grad_t gg = {dgrad[0], dgrad[1], dgrad[2], dgrad[3], dgrad[4], dgrad[5]};
        CUDA_OK(dsla_cuda_dsla_chunked_backward(NULL, &dims, &in, math, dS0[0], dS0[1], dg, NULL,
                                                NULL, &gg, NULL, NULL, ws, ws_bytes));
        double *dx = calloc((size_t)M * D, sizeof *dx);
        static const char *const wname[5] = {"dq", "dk", "dv", "dg1w", "dg2w"};
        for (int i = 0; i < 5; i++) {
            float *ga = host_result(dgrad[i], n, false);
            double *dw = calloc((size_t)W * D, sizeof *dw), *db = calloc((size_t)W, sizeof *db);
            for (int t = 0; t < M; t++)
                for (int j = 0; j < W; j++) {
                    const double gj = ga[(size_t)t * W + j];
                    db[j] += gj;
                    for (int k = 0; k < D; k++) {
                        dw[(size_t)j * D + k] += gj * x[(size_t)t * D + k];
                        dx[(size_t)t * D + k] += gj * wts[i][(size_t)j * D + k];
                    }
                }
            worst = dsla_worse(worst, wname[i],
                               rel_err64(dw, dsla_ref(st, c, wname[i]), (size_t)W * D), r->tol);
            if (i >= 3)
                worst =
                    dsla_worse(worst, i == 3 ? "dg1b" : "dg2b",
                               rel_err64(db, dsla_ref(st, c, i == 3 ? "dg1b" : "dg2b"), W), r->tol);
            free(ga), free(dw), free(db);
        }
        /* y depends on x only through the five input projections, so dx is complete here. */
        worst =
            dsla_worse(worst, "dx", rel_err64(dx, dsla_ref(st, c, "dx"), (size_t)M * D), r->tol);
        float *da = host_result(dgrad[5], 2, false);
        double da64[2] = {da[0], da[1]};
        worst = dsla_worse(worst, "dalpha", rel_err64(da64, dsla_ref(st, c, "dalpha"), 2), r->tol);
        printf("  dsla reference case%d B=%d T=%d H=%d d=%d D=%d: ok so far (worst %.3e)\n", c,
               dims.batch, dims.tokens, dims.heads, dims.head_dim, D, worst);

        free(da), free(dx), free(g32), free(mix32), free(mix), free(y), free(act);
        for (int i = 0; i < 5; i++)
            free(act32[i]), dev_free(dact[i]);
        for (int i = 0; i < 6; i++)
            dev_free(dgrad[i]);
        for (int i = 0; i < 2; i++)
            dev_free(dS0[i]), dev_free(dST[i]);
        dev_free(dalpha_in), dev_free(dmix), dev_free(dg), dev_free(ws);
    }
    dsla_safetensors_close(&st);
    return worst;
}

/* ---- training kernels (kernels_cuda_train.h) ---- */

static double run_gemm_train(const row_t *r) {
    const int m = r->a, n = r->b, k = r->c, f = r->e;
    const bool ta = f & GEMM_TRANS_A, tb = f & GEMM_TRANS_B;
    const float beta = (f & GEMM_BETA1) ? 1.0f : 0.0f;
    float *a = host_random((size_t)m * k, 1.0f), *b = host_random((size_t)k * n, 0.05f);
    float *c0 = host_random((size_t)m * n, 1.0f), *want = malloc((size_t)m * n * sizeof *want);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = beta * c0[(size_t)i * n + j];
            for (int l = 0; l < k; l++)
                acc += (double)a[ta ? (size_t)l * m + i : (size_t)i * k + l] *
                       b[tb ? (size_t)j * k + l : (size_t)l * n + j];
            want[(size_t)i * n + j] = (float)acc;
        }
    float *da = dev_copy(a, (size_t)m * k * 4), *db = dev_copy(b, (size_t)k * n * 4);
    float *dc = beta != 0.0f ? dev_copy(c0, (size_t)m * n * 4) : dev_poisoned((size_t)m * n);
    dsla_cuda_blas_t *h = NULL;
    CUDA_OK(dsla_cuda_blas_create(&h));
    CUDA_OK(
        dsla_cuda_gemm_f32(h, NULL, dc, da, ta, db, tb, m, n, k, beta,
                           (f & GEMM_TF32) ? DSLA_CUDA_DSLA_MATH_TF32 : DSLA_CUDA_DSLA_MATH_F32));
    float *got = host_result(dc, (size_t)m * n, false);
    double err = rel_err(got, want, (size_t)m * n);
    dsla_cuda_blas_destroy(&h);
    free(a), free(b), free(c0), free(want), free(got);
    dev_free(da), dev_free(db), dev_free(dc);
    return err;
}

static double run_rmsnorm_bwd(const row_t *r) {
    const int rows_n = r->a, dim = r->b;
    const size_t n = (size_t)rows_n * dim;
    const bool acc = r->e == 1;
    const float eps = 1e-5f;
    float *x = host_random(n, 1.0f), *dy = host_random(n, 1.0f), *w = host_random(dim, 1.0f);
    float *want = host_random(n, 1.0f);
    float *dxd = acc ? dev_copy(want, n * 4) : dev_poisoned(n);
    float *xd = dev_copy(x, n * 4), *dyd = dev_copy(dy, n * 4), *wd = dev_copy(w, dim * 4);
    dsla_cpu_rmsnorm_backward(want, NULL, dy, x, w, rows_n, dim, eps, acc);
    CUDA_OK(dsla_cuda_rmsnorm_backward(NULL, dxd, dyd, xd, wd, rows_n, dim, eps, acc));
    float *got = host_result(dxd, n, false);
    double err = rel_err(got, want, n);
    free(x), free(dy), free(w), free(want), free(got);
    dev_free(dxd), dev_free(xd), dev_free(dyd), dev_free(wd);
    return err;
}

static double run_swiglu_bwd(const row_t *r) {
    const int rows_n = r->a, n = r->b;
    const size_t in = (size_t)rows_n * 2 * n, out = (size_t)rows_n * n;
    float *gu = host_random(in, 2.0f), *dy = host_random(out, 1.0f);
    float *want = malloc(in * sizeof *want);
    float *dgu = dev_copy(gu, in * 4), *ddy = dev_copy(dy, out * 4), *dgrad = dev_poisoned(in);
    dsla_cpu_swiglu_backward(want, want + n, dy, gu, gu + n, rows_n, n, 2 * n);
    CUDA_OK(dsla_cuda_swiglu_backward(NULL, dgrad, dgrad + n, ddy, dgu, dgu + n, rows_n, n, 2 * n));
    float *got = host_result(dgrad, in, false);
    double err = rel_err(got, want, in);
    free(gu), free(dy), free(want), free(got);
    dev_free(dgu), dev_free(ddy), dev_free(dgrad);
    return err;
}

static double run_bias_bwd(const row_t *r) {
    const int m = r->a, n = r->b;
    const bool acc = r->e == 1;
    float *dy = host_random((size_t)m * n, 1.0f), *want = host_random((size_t)n, 1.0f);
    float *ddy = dev_copy(dy, (size_t)m * n * 4);
    float *db = acc ? dev_copy(want, (size_t)n * 4) : dev_poisoned((size_t)n);
    dsla_cpu_bias_backward(want, dy, m, n, acc);
    CUDA_OK(dsla_cuda_bias_backward(NULL, db, ddy, m, n, acc));
    float *got = host_result(db, (size_t)n, false);
    double err = rel_err(got, want, (size_t)n);
    free(dy), free(want), free(got);
    dev_free(ddy), dev_free(db);
    return err;
}

/* A device double read back, after the stream's work. */
static double host_double(const double *dev) {
    double v = NAN;
    CUDA_OK(dsla_cuda_stream_sync(NULL));
    CUDA_OK(dsla_cuda_copy(&v, dev, sizeof v, NULL));
    return v;
}

static double run_nmse(const row_t *r) {
    const size_t n = (size_t)r->a;
    float *s = host_random(n, 1.0f), *t = host_random(n, 1.0f), *want = malloc(n * 4);
    float *ds = dev_copy(s, n * 4), *dt = dev_copy(t, n * 4), *dg = dev_poisoned(n);
    double *sums = NULL;
    CUDA_OK(dsla_cuda_malloc((void **)&sums, 2 * sizeof(double)));
    CUDA_OK(dsla_cuda_zero(sums, 2 * sizeof(double), NULL));
    const double loss = dsla_cpu_nmse_loss(want, s, t, n);
    CUDA_OK(dsla_cuda_nmse_sums(NULL, sums, ds, dt, n));
    CUDA_OK(dsla_cuda_nmse_grad(NULL, dg, ds, dt, n, sums));
    double got_sums[2];
    CUDA_OK(dsla_cuda_stream_sync(NULL));
    CUDA_OK(dsla_cuda_copy(got_sums, sums, sizeof got_sums, NULL));
    float *got = host_result(dg, n, false);
    double worst = dsla_worse(0.0, "grad", rel_err(got, want, n), r->tol);
    worst = dsla_worse(worst, "loss", fabs(got_sums[0] / got_sums[1] - loss) / loss, r->tol);
    free(s), free(t), free(want), free(got);
    dev_free(ds), dev_free(dt), dev_free(dg), dev_free(sums);
    return worst;
}

static double run_sum_squares(const row_t *r) {
    const size_t n = (size_t)r->a;
    float *x = host_random(n, 0.01f);
    float *dx = dev_copy(x, n * 4);
    double *acc = NULL;
    CUDA_OK(dsla_cuda_malloc((void **)&acc, sizeof(double)));
    CUDA_OK(dsla_cuda_zero(acc, sizeof(double), NULL));
    CUDA_OK(dsla_cuda_sum_squares(NULL, acc, dx, n));
    const double got_norm = sqrt(host_double(acc));
    /* The CPU clip: a max norm of half the norm rescales every element by a float 0.5-ish. */
    float *arrays[1] = {x};
    const size_t counts[1] = {n};
    const double norm = dsla_cpu_clip_grad_norm(arrays, counts, 1, 0.5);
    CUDA_OK(dsla_cuda_scale(NULL, dx, (float)(0.5 / norm), n));
    float *got = host_result(dx, n, false);
    double worst = dsla_worse(0.0, "norm", fabs(got_norm - norm) / norm, r->tol);
    worst = dsla_worse(worst, "scaled", rel_err(got, x, n), r->tol);
    free(x), free(got);
    dev_free(dx), dev_free(acc);
    return worst;
}

/* Folds the relative error of n device floats against want into worst. */
static double worse_result(double worst, const char *what, const float *dev, const float *want,
                           size_t n, double tol) {
    float *got = host_result(dev, n, false);
    worst = dsla_worse(worst, what, rel_err(got, want, n), tol);
    free(got);
    return worst;
}

/* Causal training attention: the forward's out and probs, or the backward's gradients from the CPU
 * forward's probs, so that the backward answers to its reference alone. The GPU backward gets its
 * own copy of those probs, which it overwrites with dS. */
static double run_attention_train(const row_t *r, bool bwd) {
    const int B = r->a, T = r->b, H = r->c, Hkv = r->d, d = r->e;
    const size_t nq = (size_t)B * T * H * d, nkv = (size_t)B * T * Hkv * d;
    const size_t np = (size_t)B * H * T * T;
    float *q = host_random(nq, 1.0f), *k = host_random(nkv, 1.0f), *v = host_random(nkv, 1.0f);
    float *out = malloc(nq * sizeof *out), *probs = malloc(np * sizeof *probs);
    float *qd = dev_copy(q, nq * 4), *kd = dev_copy(k, nkv * 4), *vd = dev_copy(v, nkv * 4);
    dsla_cpu_causal_attention_train_forward(out, probs, q, k, v, B, T, H, Hkv, d);
    double worst = 0.0;
    if (!bwd) {
        float *outd = dev_poisoned(nq), *pd = dev_poisoned(np);
        CUDA_OK(
            dsla_cuda_causal_attention_train_forward(NULL, outd, pd, qd, kd, vd, B, T, H, Hkv, d));
        worst = worse_result(worst, "out", outd, out, nq, r->tol);
        worst = worse_result(worst, "probs", pd, probs, np, r->tol);
        dev_free(outd), dev_free(pd);
    } else {
        float *dout = host_random(nq, 1.0f), *scratch = malloc((size_t)T * sizeof *scratch);
        float *dq = malloc(nq * 4), *dk = malloc(nkv * 4), *dv = malloc(nkv * 4);
        dsla_cpu_causal_attention_train_backward(dq, dk, dv, dout, probs, q, k, v, B, T, H, Hkv, d,
                                                 scratch);
        float *doutd = dev_copy(dout, nq * 4), *pd = dev_copy(probs, np * 4);
        float *dqd = dev_poisoned(nq), *dkd = dev_poisoned(nkv), *dvd = dev_poisoned(nkv);
        CUDA_OK(dsla_cuda_causal_attention_train_backward(NULL, dqd, dkd, dvd, doutd, pd, qd, kd,
                                                          vd, B, T, H, Hkv, d));
        worst = worse_result(worst, "dq", dqd, dq, nq, r->tol);
        worst = worse_result(worst, "dk", dkd, dk, nkv, r->tol);
        worst = worse_result(worst, "dv", dvd, dv, nkv, r->tol);
        free(dout), free(scratch), free(dq), free(dk), free(dv);
        dev_free(doutd), dev_free(pd), dev_free(dqd), dev_free(dkd), dev_free(dvd);
    }
    free(q), free(k), free(v), free(out), free(probs);
    dev_free(qd), dev_free(kd), dev_free(vd);
    return worst;
}

/* The logits' KL with weight 1 / rows, in two chunks of rows that accumulate into one device
 * double, as the distiller feeds it; their sum must be the CPU's batch mean. */
static double run_kl_div(const row_t *r) {
    const int n_rows = r->a, vocab = r->b, first = n_rows / 2;
    const bool with_grad = r->e == 1;
    const size_t n = (size_t)n_rows * vocab, off = (size_t)first * vocab;
    const double weight = 1.0 / n_rows;
    float *t = host_random(n, 3.0f), *s = host_random(n, 1.0f);
    for (size_t i = 0; i < n; i++)
        s[i] += t[i]; /* a student near its teacher */
    float *want = with_grad ? malloc(n * sizeof *want) : NULL;
    const double loss = dsla_cpu_kl_div_loss(want, s, t, n_rows, vocab, r->temperature);
    float *sd = dev_copy(s, n * 4), *td = dev_copy(t, n * 4);
    float *gd = with_grad ? dev_poisoned(n) : NULL;
    double *acc = NULL;
    CUDA_OK(dsla_cuda_malloc((void **)&acc, sizeof(double)));
    CUDA_OK(dsla_cuda_zero(acc, sizeof(double), NULL));
    CUDA_OK(dsla_cuda_kl_div_loss(NULL, acc, gd, sd, td, first, vocab, r->temperature, weight));
    CUDA_OK(dsla_cuda_kl_div_loss(NULL, acc, gd ? gd + off : NULL, sd + off, td + off,
                                  n_rows - first, vocab, r->temperature, weight));
    double worst = dsla_worse(0.0, "loss", fabs(host_double(acc) - loss) / loss, r->tol);
    if (with_grad) worst = worse_result(worst, "grad", gd, want, n, r->tol);
    free(t), free(s), free(want);
    dev_free(sd), dev_free(td), dev_free(gd), dev_free(acc);
    return worst;
}

static double run_row(const row_t *r) {
    switch (r->op) {
    case OP_GEMM:
        return run_gemm(r);
    case OP_EMBEDDING:
        return run_embedding(r);
    case OP_RMSNORM:
        return run_rmsnorm(r, false);
    case OP_ADD_RMSNORM:
        return run_rmsnorm(r, true);
    case OP_ROPE:
        return run_rope(r);
    case OP_SWIGLU:
        return run_swiglu(r);
    case OP_ADD:
        return run_add(r);
    case OP_PREFILL:
        return run_prefill(r);
    case OP_DECODE:
        return run_decode(r);
    case OP_PREFILL_CUDNN:
        return run_prefill_cudnn(r);
    case OP_ARGMAX:
        return run_argmax(r);
    case OP_SAMPLE:
        return run_sample(r);
    case OP_DSLA_DECODE:
        return run_dsla_decode(r);
    case OP_DSLA_FWD:
        return run_dsla_chunked(r, false);
    case OP_DSLA_BWD:
        return run_dsla_chunked(r, true);
    case OP_DSLA_ADAMW:
        return run_dsla_adamw(r);
    case OP_DSLA_REF:
        return run_dsla_reference(r);
    case OP_GEMM_TRAIN:
        return run_gemm_train(r);
    case OP_RMSNORM_BWD:
        return run_rmsnorm_bwd(r);
    case OP_SWIGLU_BWD:
        return run_swiglu_bwd(r);
    case OP_BIAS_BWD:
        return run_bias_bwd(r);
    case OP_NMSE:
        return run_nmse(r);
    case OP_SUM_SQUARES:
        return run_sum_squares(r);
    case OP_CAUSAL_FWD:
        return run_attention_train(r, false);
    case OP_CAUSAL_BWD:
        return run_attention_train(r, true);
    case OP_KL_DIV:
        return run_kl_div(r);
    }
    return INFINITY;
}

static void test_ops(void **state) {
    (void)state;
    int failed = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const row_t *r = &rows[i];
        const double err = run_row(r);
        const bool ok = err <= r->tol;
        failed += !ok;
        printf("%-22s %6d %6d %5d %6d %6d %-5s err %.3e tol %.1e %s\n", r->name, r->a, r->b, r->c,
               r->d, r->e, dsla_dtype_name(r->dtype), err, r->tol, ok ? "ok" : "FAIL");
    }
    fflush(stdout);
    if (failed) fail_msg("%d of %zu rows over tolerance", failed, sizeof rows / sizeof rows[0]);
}

/* ---- stories260K through a minimal fp32 GPU forward pass ---- */

/* Device copies of the model's fp32 weights, one KV pool per layer with an identity block table,
 * and activation buffers for up to max_tokens tokens at once. */
typedef struct {
    dsla_model_config_t cfg;
    float *embed, *final_norm, *lm_head;
    float **attn_norm, **wqkv, **wo, **mlp_norm, **w_gate_up, **w_down, **k, **v;
    int32_t *table, *positions, *tokens, *lens;
    float *inv_freq, *x, *h, *qkv, *att, *gu, *act, *logits;
    void *ws;
    size_t ws_bytes;
    int max_tokens, max_context;
    dsla_cuda_blas_t *blas;
} gpu_model_t;

static float *upload(const float *host, size_t n) {
    return dev_copy(host, n * sizeof(float));
}

static float *dev_alloc(size_t n) {
    return dev_poisoned(n);
}

static void gpu_model_init(gpu_model_t *g, const dsla_model_t *m, int max_tokens, int max_context) {
    memset(g, 0, sizeof *g);
    g->cfg = *dsla_model_config(m);
    const dsla_model_config_t *c = &g->cfg;
    const int D = c->hidden_size, L = c->num_layers, d = c->head_dim, I = c->intermediate_size;
    const int qw = c->num_heads * d, kvw = c->num_kv_heads * d, V = c->vocab_size;
    g->max_tokens = max_tokens;
    g->max_context = max_context;
    g->embed = upload(dsla_model_embeddings(m), (size_t)V * D);
    g->final_norm = upload(dsla_model_final_norm(m), (size_t)D);
    g->lm_head = upload(dsla_model_lm_head(m), (size_t)V * D);
    float ***per_layer[] = {&g->attn_norm, &g->wqkv,   &g->wo, &g->mlp_norm,
                            &g->w_gate_up, &g->w_down, &g->k,  &g->v};
    for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++)
        *per_layer[i] = calloc((size_t)L, sizeof(float *));
    const int blocks = dsla_kv_blocks_for(max_context);
    for (int l = 0; l < L; l++) {
        const dsla_llama_layer_t *w = dsla_model_layer(m, l);
        g->attn_norm[l] = upload(w->attn_norm, (size_t)D);
        g->wqkv[l] = upload(w->wqkv, (size_t)(qw + 2 * kvw) * D);
        g->wo[l] = upload(w->wo, (size_t)D * qw);
        g->mlp_norm[l] = upload(w->mlp_norm, (size_t)D);
        g->w_gate_up[l] = upload(w->w_gate_up, (size_t)2 * I * D);
        g->w_down[l] = upload(w->w_down, (size_t)D * I);
        g->k[l] = dev_alloc((size_t)blocks * DSLA_KV_BLOCK_TOKENS * kvw);
        g->v[l] = dev_alloc((size_t)blocks * DSLA_KV_BLOCK_TOKENS * kvw);
    }
    int32_t *table = malloc((size_t)blocks * sizeof *table);
    for (int b = 0; b < blocks; b++)
        table[b] = b;
    g->table = dev_copy(table, (size_t)blocks * sizeof *table);
    free(table);
    float *inv = malloc((size_t)d / 2 * sizeof *inv);
    dsla_rope_params_t rp = {
        c->rope_theta,           c->rope_type == DSLA_ROPE_LLAMA3, c->rope_factor,
        c->rope_low_freq_factor, c->rope_high_freq_factor,         c->rope_original_max_position};
    dsla_cpu_rope_inv_freq(inv, d, &rp);
    g->inv_freq = upload(inv, (size_t)d / 2);
    free(inv);
    const size_t T = (size_t)max_tokens;
    g->positions = (int32_t *)dev_alloc(T);
    g->tokens = (int32_t *)dev_alloc(T);
    g->lens = (int32_t *)dev_alloc(1);
    g->x = dev_alloc(T * D);
    g->h = dev_alloc(T * D);
    g->qkv = dev_alloc(T * (qw + 2 * kvw));
    g->att = dev_alloc(T * qw);
    g->gu = dev_alloc(T * 2 * I);
    g->act = dev_alloc(T * I);
    g->logits = dev_alloc((size_t)V);
    const dsla_attn_shape_t shape = {c->num_heads, c->num_kv_heads, d};
    g->ws_bytes = dsla_cuda_attention_decode_workspace(1, max_context, &shape);
    CUDA_OK(dsla_cuda_malloc(&g->ws, g->ws_bytes));
    CUDA_OK(dsla_cuda_blas_create(&g->blas));
}

static void gpu_model_free(gpu_model_t *g) {
    for (int l = 0; l < g->cfg.num_layers; l++) {
        dev_free(g->attn_norm[l]), dev_free(g->wqkv[l]), dev_free(g->wo[l]);
        dev_free(g->mlp_norm[l]), dev_free(g->w_gate_up[l]), dev_free(g->w_down[l]);
        dev_free(g->k[l]), dev_free(g->v[l]);
    }
    free(g->attn_norm), free(g->wqkv), free(g->wo), free(g->mlp_norm);
    free(g->w_gate_up), free(g->w_down), free(g->k), free(g->v);
    void *bufs[] = {g->embed, g->final_norm, g->lm_head, g->table, g->positions, g->tokens,
                    g->lens,  g->inv_freq,   g->x,       g->h,     g->qkv,       g->att,
                    g->gu,    g->act,        g->logits,  g->ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dev_free(bufs[i]);
    dsla_cuda_blas_destroy(&g->blas);
}

/* n tokens at positions past..past+n-1 of the one sequence; logits of the last token. Prompts go
 * through the prefill kernel, single tokens through the decode kernel. */
static void gpu_forward(gpu_model_t *g, const int32_t *tokens, int n, int past) {
    const dsla_model_config_t *c = &g->cfg;
    const int D = c->hidden_size, d = c->head_dim, I = c->intermediate_size;
    const int H = c->num_heads, Hkv = c->num_kv_heads, qw = H * d, kvw = Hkv * d;
    const int qkv_w = qw + 2 * kvw;
    const dsla_attn_shape_t shape = {H, Hkv, d};
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    for (int i = 0; i < n; i++)
        pos[i] = past + i;
    const int32_t len = past + n;
    CUDA_OK(dsla_cuda_copy(g->positions, pos, (size_t)n * sizeof *pos, NULL));
    CUDA_OK(dsla_cuda_copy(g->tokens, tokens, (size_t)n * sizeof *tokens, NULL));
    CUDA_OK(dsla_cuda_copy(g->lens, &len, sizeof len, NULL));
    free(pos);
    CUDA_OK(
        dsla_cuda_embedding(NULL, g->x, g->embed, DSLA_DTYPE_F32, g->tokens, n, D, c->vocab_size));
    for (int l = 0; l < c->num_layers; l++) {
        CUDA_OK(dsla_cuda_rmsnorm(NULL, g->h, DSLA_DTYPE_F32, g->x, g->attn_norm[l], n, D,
                                  c->rms_norm_eps));
        CUDA_OK(dsla_cuda_gemm(g->blas, NULL, g->qkv, DSLA_DTYPE_F32, g->h, g->wqkv[l],
                               DSLA_DTYPE_F32, n, qkv_w, D, 0.0f));
        CUDA_OK(dsla_cuda_rope(NULL, g->qkv, n, qkv_w, H + Hkv, d, g->positions, g->inv_freq));
        dsla_paged_kv_t kv = {g->k[l], g->v[l], g->table, DSLA_KV_BLOCK_TOKENS};
        CUDA_OK(
            dsla_cuda_kv_append(NULL, &kv, kvw, past, n, g->qkv + qw, g->qkv + qw + kvw, qkv_w));
        if (n > 1) {
            CUDA_OK(
                dsla_cuda_attention_prefill(NULL, g->att, qw, g->qkv, qkv_w, n, past, &shape, &kv));
        } else {
            dsla_cuda_paged_batch_t batch = {g->k[l], g->v[l], g->table,
                                             g->lens, 0,       DSLA_KV_BLOCK_TOKENS};
            CUDA_OK(dsla_cuda_attention_decode(NULL, g->att, qw, g->qkv, qkv_w, 1, g->max_context,
                                               &shape, &batch, g->ws, g->ws_bytes));
        }
        /* The residual adds ride on the output projections (beta = 1). */
        CUDA_OK(dsla_cuda_gemm(g->blas, NULL, g->x, DSLA_DTYPE_F32, g->att, g->wo[l],
                               DSLA_DTYPE_F32, n, D, qw, 1.0f));
        CUDA_OK(dsla_cuda_rmsnorm(NULL, g->h, DSLA_DTYPE_F32, g->x, g->mlp_norm[l], n, D,
                                  c->rms_norm_eps));
        CUDA_OK(dsla_cuda_gemm(g->blas, NULL, g->gu, DSLA_DTYPE_F32, g->h, g->w_gate_up[l],
                               DSLA_DTYPE_F32, n, 2 * I, D, 0.0f));
        CUDA_OK(dsla_cuda_swiglu(NULL, g->act, DSLA_DTYPE_F32, g->gu, g->gu + I, n, I, 2 * I));
        CUDA_OK(dsla_cuda_gemm(g->blas, NULL, g->x, DSLA_DTYPE_F32, g->act, g->w_down[l],
                               DSLA_DTYPE_F32, n, D, I, 1.0f));
    }
    const float *last = g->x + (size_t)(n - 1) * D;
    CUDA_OK(
        dsla_cuda_rmsnorm(NULL, g->h, DSLA_DTYPE_F32, last, g->final_norm, 1, D, c->rms_norm_eps));
    CUDA_OK(dsla_cuda_gemm(g->blas, NULL, g->logits, DSLA_DTYPE_F32, g->h, g->lm_head,
                           DSLA_DTYPE_F32, 1, c->vocab_size, D, 0.0f));
}

enum { STORIES_NEW_TOKENS = 100 };
#define STORIES_LOGIT_TOL 1e-4

static void test_stories_forward(void **state) {
    (void)state;
    char *dir = dsla_test_data_path("models/stories260K-hf/config.json");
    if (!dir) skip();
    *strrchr(dir, '/') = '\0';
    dsla_model_t *m = NULL;
    CUDA_OK(dsla_model_load(&m, dir));
    const dsla_model_config_t *cfg = dsla_model_config(m);
    const int V = cfg->vocab_size;
    const int32_t prompt[] = {1, 403, 407, 261, 378, 300, 415, 269};
    const int n_prompt = (int)(sizeof prompt / sizeof prompt[0]);
    const int max_context = n_prompt + STORIES_NEW_TOKENS;

    dsla_kv_pool_t *pool = NULL;
    dsla_sequence_t *seq = NULL;
    CUDA_OK(dsla_kv_pool_create(&pool, cfg, 2 * cfg->num_layers * (max_context / 16 + 1)));
    CUDA_OK(dsla_sequence_create(&seq, pool, cfg));
    gpu_model_t g;
    gpu_model_init(&g, m, n_prompt, max_context);

    float *cpu_logits = malloc((size_t)V * sizeof *cpu_logits);
    double worst = 0.0;
    int32_t cpu_tok = 0, gpu_tok = 0;
    const int32_t *feed = prompt;
    int n_feed = n_prompt, past = 0;
    for (int step = 0; step < STORIES_NEW_TOKENS; step++) {
        dsla_batch_item_t item = {seq, feed, n_feed, false};
        CUDA_OK(dsla_model_forward(m, &item, 1, cpu_logits));
        gpu_forward(&g, feed, n_feed, past);
        float *gpu_logits = host_result(g.logits, (size_t)V, false);
        const double err = rel_err(gpu_logits, cpu_logits, (size_t)V);
        worst = err > worst ? err : worst;
        int32_t *dtok = (int32_t *)g.positions; /* free after the forward pass */
        CUDA_OK(dsla_cuda_argmax(NULL, dtok, g.logits, 1, V));
        int32_t *tok = tokens_back(dtok, 1);
        gpu_tok = tok[0];
        cpu_tok = dsla_cpu_argmax(cpu_logits, V);
        free(tok);
        free(gpu_logits);
        if (err > STORIES_LOGIT_TOL || gpu_tok != cpu_tok)
            fail_msg("step %d: logits rel err %.3e (tol %.0e), tokens gpu %d cpu %d", step, err,
                     STORIES_LOGIT_TOL, gpu_tok, cpu_tok);
        past += n_feed;
        feed = &cpu_tok;
        n_feed = 1;
    }
    printf("stories260K-hf: %d greedy tokens agree, worst logits rel err %.3e (tol %.0e)\n",
           STORIES_NEW_TOKENS, worst, STORIES_LOGIT_TOL);
    free(cpu_logits);
    gpu_model_free(&g);
    dsla_sequence_destroy(&seq);
    dsla_kv_pool_destroy(&pool);
    dsla_model_destroy(&m);
    free(dir);
}

int main(void) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return DSLA_TEST_SKIP;
    }
    rng = dsla_test_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops),
        cmocka_unit_test(test_stories_forward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else

int main(void) {
    return 77; /* built without CUDA: nothing to test */
}

#endif

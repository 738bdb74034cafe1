/* CUDA kernels: the fast versions of the kernels.h operations, run on a caller's stream.
 *
 * Each op mirrors a CPU reference in kernels/cpu/ (same layouts, same conventions: row-major,
 * outputs first, float32 activations unless a dtype argument says otherwise) and is checked against
 * it by tests/gpu/test_ops_harness.c. Every pointer passed to an op is device memory unless its
 * comment says otherwise; ops enqueue work on the given stream and return without synchronising, so
 * a DSLA_OK means "launched", and a fault inside a kernel surfaces at the next synchronising call
 * (dsla_cuda_stream_sync, a copy to the host). Every CUDA call and every launch is checked; a
 * failure returns DSLA_ERR_INTERNAL naming the call and cudaGetErrorString's text.
 *
 * Contract: ops allocate nothing (scratch comes from the caller, sized by the *_workspace_bytes
 * helpers), never synchronise the device, and know nothing of models, requests or files. Index
 * arguments (token ids, block tables, context lengths) are trusted, as on the CPU: the caller
 * validates them; an out-of-range token id writes a NaN row rather than reading out of bounds.
 *
 * The header compiles in a build without CUDA (it declares nothing there), so C files may include
 * it unconditionally; only code built with DSLA_HAVE_CUDA may call these functions. */
#ifndef DSLA_KERNELS_CUDA_H
#define DSLA_KERNELS_CUDA_H

#ifdef DSLA_HAVE_CUDA

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* For dsla_status_t, dsla_dtype_t, dsla_paged_kv_t and dsla_attn_shape_t; inside the extern "C"
 * because those headers have no C++ guards of their own and the .cu files include them from here.
 * When kernels.h includes this header (at its end), the include guard makes this a no-op. */
#include "kernels/kernels.h"

/* cudaStream_t is `struct CUstream_st *`; naming the struct keeps this header free of CUDA headers
 * while a cudaStream_t still converts without a cast. NULL is the legacy default stream. */
typedef struct CUstream_st *dsla_cuda_stream_t;

/* Makes device the calling thread's current GPU (kernels/cuda/device.cu): what every later
 * allocation, stream and launch of the thread uses. INVALID_ARGUMENT names a device that is not
 * there. */
dsla_status_t dsla_cuda_set_device(int device);

/* ---- device memory and streams (kernels/cuda/memory.cu) ---- */

/* *out is NULL on failure (bytes == 0 gives NULL and DSLA_OK). */
dsla_status_t dsla_cuda_malloc(void **out, size_t bytes);
/* Frees *p and sets it to NULL; harmless on NULL. */
void dsla_cuda_free(void **p);
/* Copies bytes between any two of host and device memory (direction inferred from the pointers),
 * ordered on stream. A pageable host source or destination makes the copy synchronous. */
dsla_status_t dsla_cuda_copy(void *dst, const void *src, size_t bytes, dsla_cuda_stream_t stream);
/* Sets bytes of device memory to zero, ordered on stream. */
dsla_status_t dsla_cuda_zero(void *p, size_t bytes, dsla_cuda_stream_t stream);
/* Sets n floats to value (NaN to poison an output before a test). */
dsla_status_t dsla_cuda_fill_f32(float *p, float value, size_t n, dsla_cuda_stream_t stream);
dsla_status_t dsla_cuda_stream_create(dsla_cuda_stream_t *out);
void dsla_cuda_stream_destroy(dsla_cuda_stream_t *s);
/* Waits for the stream's work; reports any fault a kernel raised. */
dsla_status_t dsla_cuda_stream_sync(dsla_cuda_stream_t stream);

/* ---- linear algebra through cuBLAS (kernels/cuda/gemm.cu) ---- */

typedef struct dsla_cuda_blas dsla_cuda_blas_t;

dsla_status_t dsla_cuda_blas_create(dsla_cuda_blas_t **out);
void dsla_cuda_blas_destroy(dsla_cuda_blas_t **h);

/* y[m,n] = x[m,k] @ w[n,k]^T + beta * y (the PyTorch Linear layout, as dsla_cpu_gemm). x and w
 * share in_dtype: F32 (full fp32 arithmetic, no TF32) or BF16 (tensor cores, fp32 accumulation).
 * y is F32 or, with BF16 inputs, BF16. beta = 1 fuses a residual add into the GEMM; beta = 0 never
 * reads y. y must not alias x or w. */
dsla_status_t dsla_cuda_gemm(dsla_cuda_blas_t *h, dsla_cuda_stream_t stream, void *y,
                             dsla_dtype_t y_dtype, const void *x, const void *w,
                             dsla_dtype_t in_dtype, int m, int n, int k, float beta);

/* The bf16 GEMV behind dsla_cuda_gemm for decode-sized m (1..DSLA_CUDA_GEMV_MAX_ROWS), callable
 * directly (benchmarks): same contract as dsla_cuda_gemm with in_dtype BF16; it also needs k a
 * multiple of 8 and x, w 16-byte aligned (dsla_cuda_gemv_supports says), UNSUPPORTED otherwise. */
enum { DSLA_CUDA_GEMV_MAX_ROWS = 8 };
/* Where the GEMV beats cuBLAS on an H200 (docs/perf.md: m = 1 and 2; from m = 4 cuBLAS's
 * kernels, which reuse each weight across rows in shared memory, are faster). */
enum { DSLA_CUDA_GEMV_DEFAULT_ROWS = 2 };
int dsla_cuda_gemv_supports(const void *y, const void *x, const void *w, int m, int k);
dsla_status_t dsla_cuda_gemv(dsla_cuda_stream_t stream, void *y, dsla_dtype_t y_dtype,
                             const void *x, const void *w, int m, int n, int k, float beta);
/* bf16 GEMMs with m <= max_rows take the GEMV (default DSLA_CUDA_GEMV_MAX_ROWS, or the
 * environment's DSLA_CUDA_GEMV_ROWS when the handle is created; 0 sends every GEMM to cuBLAS, for
 * comparisons). */
void dsla_cuda_blas_set_gemv_rows(dsla_cuda_blas_t *h, int max_rows);

/* ---- element-wise (kernels/cuda/elementwise.cu) ---- */

/* out[i, :] = table[tokens[i], :] as float32; table is F32 or BF16 [vocab, dim]. */
dsla_status_t dsla_cuda_embedding(dsla_cuda_stream_t stream, float *out, const void *table,
                                  dsla_dtype_t table_dtype, const int32_t *tokens, int n, int dim,
                                  int vocab);
/* dsla_cpu_swiglu; y is F32 or BF16 (the next GEMM's input) and must not alias gate or up. */
dsla_status_t dsla_cuda_swiglu(dsla_cuda_stream_t stream, void *y, dsla_dtype_t y_dtype,
                               const float *gate, const float *up, int rows, int n, int in_stride);
/* y = a + b over n floats; y may alias a or b. */
dsla_status_t dsla_cuda_add(dsla_cuda_stream_t stream, float *y, const float *a, const float *b,
                            size_t n);
/* y = x rounded to bfloat16 (nearest even), for feeding a BF16 GEMM. */
dsla_status_t dsla_cuda_to_bf16(dsla_cuda_stream_t stream, uint16_t *y, const float *x, size_t n);

/* ---- normalisation (kernels/cuda/norm.cu) ---- */

/* dsla_cpu_rmsnorm; y is F32 or BF16. A F32 y may alias x. */
dsla_status_t dsla_cuda_rmsnorm(dsla_cuda_stream_t stream, void *y, dsla_dtype_t y_dtype,
                                const float *x, const float *w, int rows, int dim, float eps);
/* residual += delta, then y = rmsnorm(residual) in the same pass over the row (one read of each
 * input, one write of each output instead of the add's extra read and write). y must not alias
 * residual or delta. */
dsla_status_t dsla_cuda_add_rmsnorm(dsla_cuda_stream_t stream, void *y, dsla_dtype_t y_dtype,
                                    float *residual, const float *delta, const float *w, int rows,
                                    int dim, float eps);

/* ---- rotary position embedding (kernels/cuda/rope.cu) ---- */

/* dsla_cpu_rope_apply with the tables formed on the fly: row r uses angle (float)positions[r] *
 * inv_freq[i] (inv_freq from dsla_cpu_rope_inv_freq, copied to the device), cos/sin in double as
 * dsla_cpu_rope_tables does. Since k's heads follow q's in a fused QKV row, one call with n_heads =
 * H + H_kv rotates both. */
dsla_status_t dsla_cuda_rope(dsla_cuda_stream_t stream, float *x, int n, int row_stride,
                             int n_heads, int head_dim, const int32_t *positions,
                             const float *inv_freq);

/* ---- attention over the paged KV cache (kernels/cuda/attention.cu) ---- */

/* Head dims the attention kernels are compiled for; others are UNSUPPORTED. */
int dsla_cuda_attention_supports(int head_dim);

/* Writes n new tokens' keys and values (rows k_src + i*src_stride, kv_heads*head_dim floats) into
 * positions past..past+n-1 of a sequence's cache (kv: device pool and block table). */
dsla_status_t dsla_cuda_kv_append(dsla_cuda_stream_t stream, const dsla_paged_kv_t *kv,
                                  int token_width, int past, int n, const float *k_src,
                                  const float *v_src, int src_stride);

/* dsla_cpu_attention for one sequence's prefill, FlashAttention style: tiles of queries against
 * tiles of cached keys with an online softmax, so no score matrix is ever stored. kv holds device
 * pointers. */
dsla_status_t dsla_cuda_attention_prefill(dsla_cuda_stream_t stream, float *out, int out_stride,
                                          const float *q, int q_stride, int n_new, int past,
                                          const dsla_attn_shape_t *shape,
                                          const dsla_paged_kv_t *kv);

/* One decode step for a batch of sequences: query row s (q + s*q_stride) at position
 * context_lens[s]-1 attends to that sequence's positions 0..context_lens[s]-1, read through
 * block_tables + s*table_stride. Long contexts split into chunks processed in parallel and merged
 * by their softmax statistics (split-K, "flash decoding"). */
typedef struct {
    const float *k; /* [pool blocks][block_tokens][kv_heads * head_dim] */
    const float *v;
    const int32_t *block_tables; /* [n_seqs][table_stride] */
    const int32_t *context_lens; /* [n_seqs], each >= 1 */
    int table_stride;
    int block_tokens;
} dsla_cuda_paged_batch_t;

/* Scratch the decode kernel needs for n_seqs sequences whose longest context is max_context. */
size_t dsla_cuda_attention_decode_workspace(int n_seqs, int max_context,
                                            const dsla_attn_shape_t *shape);
dsla_status_t dsla_cuda_attention_decode(dsla_cuda_stream_t stream, float *out, int out_stride,
                                         const float *q, int q_stride, int n_seqs, int max_context,
                                         const dsla_attn_shape_t *shape,
                                         const dsla_cuda_paged_batch_t *kv, void *workspace,
                                         size_t workspace_bytes);

/* ---- the same attention over a pool of either dtype (kernels/cuda/attention.cu) ----
 *
 * A serving pool is bf16: half the bytes of every decode step and of the cache's footprint. The
 * ops above are the fp32 special case of these (kept for their callers). Arithmetic is fp32 in
 * both; a bf16 pool rounds keys and values once, when they are written. */

/* A paged pool of either dtype: position t of a sequence lives in block table[t / block_tokens],
 * slot t % block_tokens, width = kv_heads * head_dim values per slot. */
typedef struct {
    void *k; /* [pool blocks][block_tokens][width] of dtype */
    void *v;
    dsla_dtype_t dtype; /* F32 or BF16 */
    int block_tokens;
} dsla_cuda_kv_pool_t;

/* Writes n rows of keys and values (k_src + i*src_stride, width floats) into pool slots slots[i]
 * (block * block_tokens + offset): one launch for the new tokens of a whole batch. */
dsla_status_t dsla_cuda_kv_write(dsla_cuda_stream_t stream, const dsla_cuda_kv_pool_t *pool,
                                 const int32_t *slots, int n, int width, const float *k_src,
                                 const float *v_src, int src_stride);

/* The first n positions of one sequence's keys and values, copied out of a bf16 pool (through its
 * block table) into k_out and v_out, width values per row, rows packed; rows n..rows-1 are zeroed
 * (the padding dsla_cuda_attention_prefill_cudnn_past reads). width a multiple of 8. */
dsla_status_t dsla_cuda_kv_gather(dsla_cuda_stream_t stream, const dsla_cuda_kv_pool_t *pool,
                                  const int32_t *block_table, int n, int rows, int width,
                                  uint16_t *k_out, uint16_t *v_out);

/* dsla_cuda_attention_prefill over a pool of either dtype. A bf16 pool with head_dim 64 or 128
 * runs on tensor cores (bf16 Q, K, V and P; fp32 accumulation and softmax); other cases run the
 * fp32 kernel. */
dsla_status_t dsla_cuda_attention_prefill_pool(dsla_cuda_stream_t stream, float *out,
                                               int out_stride, const float *q, int q_stride,
                                               int n_new, int past, const dsla_attn_shape_t *shape,
                                               const dsla_cuda_kv_pool_t *pool,
                                               const int32_t *block_table);

/* A decode batch over a pool: row s reads its block table at block_tables + r*table_stride with
 * r = table_rows ? table_rows[s] : s (so a model can keep every sequence's table in one array and
 * name the batch's rows), and context_lens[s] (>= 1) positions. */
typedef struct {
    const int32_t *block_tables;
    const int32_t *table_rows; /* [n_seqs] or NULL */
    const int32_t *context_lens;
    int table_stride;
} dsla_cuda_decode_batch_t;

/* dsla_cuda_attention_decode over a pool; same workspace. max_context only sets the split of the
 * context into chunks: any value >= every context_lens[s] is correct, so a captured graph may
 * fix it to an upper bound. */
dsla_status_t dsla_cuda_attention_decode_pool(dsla_cuda_stream_t stream, float *out, int out_stride,
                                              const float *q, int q_stride, int n_seqs,
                                              int max_context, const dsla_attn_shape_t *shape,
                                              const dsla_cuda_kv_pool_t *pool,
                                              const dsla_cuda_decode_batch_t *batch,
                                              void *workspace, size_t workspace_bytes);

/* ---- prefill attention through cuDNN (kernels/cuda/attention_cudnn.c) ----
 *
 * Causal GQA attention of a prompt with no cached past, run by cuDNN's fused flash attention
 * (bf16 operands, fp32 accumulation and softmax, bf16 output), which reaches the matrix units'
 * rate where prefill_tc does not (docs/perf.md). libcudnn.so.9 is loaded at run time, so builds
 * need no cuDNN library and a machine without one simply reports UNSUPPORTED. The context owns a
 * cuDNN handle, one execution plan per shape bucket seen (a bounded cache: the first call of a
 * bucket builds its plan, 50-80 ms on an H200) and a workspace it grows on demand (the one
 * exception to "ops allocate nothing": the size is only known once cuDNN has picked its engine).
 * One context serves one stream at a time. */
typedef struct dsla_cuda_cudnn dsla_cuda_cudnn_t;

/* UNSUPPORTED when libcudnn.so.9 (cuDNN >= 9.0) cannot be loaded; *out is NULL then. */
dsla_status_t dsla_cuda_cudnn_create(dsla_cuda_cudnn_t **out);
void dsla_cuda_cudnn_destroy(dsla_cuda_cudnn_t **c);
/* The loaded library's version (e.g. 91300 for 9.13.0). */
size_t dsla_cuda_cudnn_version(const dsla_cuda_cudnn_t *c);
/* Whether the shape is one cuDNN's fused attention takes (head dim a multiple of 8 up to 128,
 * query heads a multiple of KV heads). */
int dsla_cuda_cudnn_attention_supports(const dsla_attn_shape_t *shape);
/* The rows a call for an n-token prompt touches: n rounded up to its bucket (64 rows up to 1K, 8
 * buckets per octave above, so at most 12.5% more there), one plan per bucket instead of one per
 * prompt length. */
int dsla_cuda_cudnn_rows(int n);
/* The key rows a chunk with a past reads for past + n keys: dsla_cuda_cudnn_rows(past + n) rounded
 * up to a power of two, so that chunks with a past need one plan per query bucket and octave of
 * context (8 per octave made ~190 plans for a 2K-4K server, each a 50-80 ms stall the first time
 * and more than the plan cache holds; a serving trace's prompt steps spent ~20 ms a step on them
 * on an H200, docs/perf.md). Padded keys are zeros and masked. */
int dsla_cuda_cudnn_kv_rows(int n);
/* out[t, h*d..] = softmax(q_t k_j^T / sqrt(d), j <= t) v_j for t < n, all bf16 (uint16_t bits):
 * token t's head h of q at q + t*in_stride + h*d, KV head h / (H / H_kv) of k and v likewise
 * (the layout of a fused QKV row: k = q + H*d, v = k + H_kv*d); out rows out_stride apart.
 * Strides must be multiples of 8 and the pointers 16-byte aligned. The call runs the bucket's
 * shape, N = dsla_cuda_cudnn_rows(n): q, k, v are read and out written for N rows, and out rows
 * n..N-1 receive values of no meaning. Rows t < n do not depend on rows >= n (causal), except that
 * v rows n..N-1 enter the P V product with weight exactly 0: they must be finite. */
dsla_status_t dsla_cuda_attention_prefill_cudnn(dsla_cuda_cudnn_t *c, dsla_cuda_stream_t stream,
                                                uint16_t *out, int out_stride, const uint16_t *q,
                                                const uint16_t *k, const uint16_t *v, int in_stride,
                                                int n, const dsla_attn_shape_t *shape);
/* The same for n new tokens after a cached past: q's n rows q_stride apart; k and v hold all
 * past + n tokens' rows kv_stride apart (the past first, gathered from the cache:
 * dsla_cuda_kv_gather). Query row t sees keys j <= past + t. Read and written: q and out for
 * dsla_cuda_cudnn_rows(n) rows, k and v for dsla_cuda_cudnn_kv_rows(past + n) rows, whose rows from
 * past + n on must be finite (zeros); one plan per pair of buckets serves every past. */
dsla_status_t dsla_cuda_attention_prefill_cudnn_past(dsla_cuda_cudnn_t *c,
                                                     dsla_cuda_stream_t stream, uint16_t *out,
                                                     int out_stride, const uint16_t *q,
                                                     int q_stride, const uint16_t *k,
                                                     const uint16_t *v, int kv_stride, int n,
                                                     int past, const dsla_attn_shape_t *shape);

/* ---- indexing and synthetic data (kernels/cuda/indexing.cu) ---- */

/* y[i, :] = x[rows[i], :] for i < n (width floats per row, strides in floats). */
dsla_status_t dsla_cuda_gather_rows(dsla_cuda_stream_t stream, float *y, int y_stride,
                                    const float *x, int x_stride, const int32_t *rows, int n,
                                    int width);
/* dst[idx[i]] = val[i] for i < n: patches a device table from one uploaded list. */
dsla_status_t dsla_cuda_scatter_i32(dsla_cuda_stream_t stream, int32_t *dst, const int32_t *idx,
                                    const int32_t *val, int n);
/* y[r, j] += bias[j] for r < rows, j < width (row stride y_stride floats). */
dsla_status_t dsla_cuda_add_row_bias(dsla_cuda_stream_t stream, float *y, int y_stride,
                                     const float *bias, int rows, int width);
/* n values uniform in [lo, hi) from a counter hash of (seed, index), as dtype (F32 or BF16):
 * synthetic weights for benchmarks, generated on the device so 13 GB need no host copy. */
dsla_status_t dsla_cuda_fill_uniform(dsla_cuda_stream_t stream, void *p, dsla_dtype_t dtype,
                                     size_t n, float lo, float hi, uint64_t seed);

/* ---- graphs, events, pinned memory (kernels/cuda/graph.cu) ----
 *
 * What a host-driven model needs around its kernels: capture a step once and replay it as one
 * launch, know when an upload has left its pinned staging buffer, time regions on the device. */

typedef struct dsla_cuda_graph dsla_cuda_graph_t;
typedef struct CUevent_st *dsla_cuda_event_t;

/* Starts capturing stream's work (nothing runs until the graph is launched). */
dsla_status_t dsla_cuda_capture_begin(dsla_cuda_stream_t stream);
/* Ends the capture and instantiates it; on failure the capture is ended and *out is NULL. */
dsla_status_t dsla_cuda_capture_end(dsla_cuda_stream_t stream, dsla_cuda_graph_t **out);
dsla_status_t dsla_cuda_graph_launch(dsla_cuda_graph_t *g, dsla_cuda_stream_t stream);
void dsla_cuda_graph_destroy(dsla_cuda_graph_t **g);

/* Page-locked host memory: copies from it are truly asynchronous. */
dsla_status_t dsla_cuda_host_alloc(void **out, size_t bytes);
void dsla_cuda_host_free(void **p);

dsla_status_t dsla_cuda_event_create(dsla_cuda_event_t *out);
void dsla_cuda_event_destroy(dsla_cuda_event_t *e);
dsla_status_t dsla_cuda_event_record(dsla_cuda_event_t e, dsla_cuda_stream_t stream);
dsla_status_t dsla_cuda_event_sync(dsla_cuda_event_t e);
/* Milliseconds between two recorded (and completed) events. */
dsla_status_t dsla_cuda_event_elapsed_ms(float *ms, dsla_cuda_event_t start, dsla_cuda_event_t end);
/* Free and total device memory of the current device. */
dsla_status_t dsla_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);
/* The current device's name (into buf, NUL-terminated). */
dsla_status_t dsla_cuda_device_name(char *buf, size_t len);

/* ---- sampling (kernels/cuda/sampling.cu) ---- */

/* out[r] = index of the largest of logits[r, 0..n) (the first on ties), as dsla_cpu_argmax. */
dsla_status_t dsla_cuda_argmax(dsla_cuda_stream_t stream, int32_t *out, const float *logits,
                               int rows, int n);

/* One row's sampling parameters, with the semantics of runtime/model/sampler.h: temperature <= 0
 * or top_k == 1 is greedy; else softmax(logits / temperature), top-k, then top-p over the
 * survivors, and the draw walks the survivors (most likely first, ties by lower id; in id order
 * when neither filter is on) until the running mass exceeds uniform * their mass. The caller draws
 * uniform in [0, 1) from its own generator, so a request's stream does not depend on the device. */
typedef struct {
    double uniform;
    float temperature;
    int32_t top_k;
    float top_p;
} dsla_cuda_sample_row_t;

/* Scratch for sampling rows x vocab logits (the probabilities). */
size_t dsla_cuda_sample_workspace(int rows, int vocab);
/* out[r] = token sampled from logits[r, 0..vocab) with params[r] (device array). */
dsla_status_t dsla_cuda_sample(dsla_cuda_stream_t stream, int32_t *out, const float *logits,
                               int rows, int vocab, const dsla_cuda_sample_row_t *params,
                               void *workspace, size_t workspace_bytes);

#ifdef __cplusplus
}
#endif

#endif /* DSLA_HAVE_CUDA */

#endif

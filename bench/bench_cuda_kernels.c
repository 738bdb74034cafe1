/* CUDA kernel throughput at Llama-2-7B shapes (D 4096, H 32, d 128, I 11008), after the device's
 * two ceilings: copy bandwidth (a large device-to-device copy, bytes read plus written) and the
 * bf16 matrix rate (an 8192^3 cuBLAS GEMM). One JSON object per measurement (DESIGN.md section 12):
 * what, shape, device, median_ms and either gbps or tflops with fraction_of_peak against the
 * measured ceiling that bounds that kernel.
 *
 * Timing: cudaEvents around each launch after warm-up, median of the repetitions. Before every
 * timed repetition an untimed write of twice the L2 size evicts the inputs, so repetitions never
 * read a cache the previous one filled (the same effect as rotating input copies, without holding
 * copies of the large ones). Inputs hold random values, never zeros.
 *
 * usage: bench_cuda_kernels [--quick] [--only dsla|gemm|decode] [--dsla-tokens T]   (--quick:
 * fewer reps and the smaller shapes only; --only: the ceilings, then the DSLA kernels, the GEMMs or
 * the serving batch's paged decode attention alone; --dsla-tokens: only the chunked DSLA rows of
 * T tokens, e.g. to put each of their kernels under Nsight Compute, scripts/gpu-run.sh's dsla_ncu)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/kernels_cuda.h"
#include "kernels/kernels_cuda_dsla.h"
#include "runtime/model/kv_cache.h" /* DSLA_KV_BLOCK_TOKENS: the block size the serving engine uses */

#ifdef DSLA_HAVE_CUDA

#include <cuda_runtime_api.h>

enum {
    MODEL_D = 4096,
    MODEL_H = 32,
    MODEL_HEAD_DIM = 128,
    MODEL_I = 11008,
    MODEL_VOCAB = 32000,
    PEAK_GEMM_SIZE = 8192,
    MAX_REPS = 50,
    WARMUP_REPS = 3,
    PATTERN_BYTES = 16 << 20, /* random bytes tiled over large buffers: cheap to make, not zeros */
};

static const size_t COPY_BYTES = (size_t)1 << 30;

static char device_name[256];
static size_t l2_bytes;
static void *l2_flush;
static double peak_gbps, peak_tflops;
static int reps = 20;
static bool quick;
static const char *only; /* --only: "dsla", "gemm" or "decode" after the ceilings; NULL: all */
static int dsla_tokens;  /* --dsla-tokens: the chunked DSLA rows of this length only; 0: all */

static void die(const char *what) {
    fprintf(stderr, "bench_cuda_kernels: %s: %s\n", what, dsla_last_error());
    exit(1);
}

#define OK(expr)                                                                                   \
    do {                                                                                           \
        if ((expr) != DSLA_OK) die(#expr);                                                         \
    } while (0)

#define CUDA(expr)                                                                                 \
    do {                                                                                           \
        cudaError_t e_ = (expr);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "bench_cuda_kernels: %s: %s\n", #expr, cudaGetErrorString(e_));        \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* A device buffer of bytes filled with a tiled random pattern whose every 16-bit word is a bf16
 * value in [-1, 1): read as bf16 or as fp32 (a bf16 word above a random low half), the values are
 * sane and never zero. */
static void *random_buffer(size_t bytes) {
    static uint16_t *pattern;
    if (!pattern) {
        pattern = malloc(PATTERN_BYTES);
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < PATTERN_BYTES / 2; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            pattern[i] = dsla_f32_to_bf16((float)((double)(x >> 11) / 9007199254740992.0 * 2 - 1));
        }
    }
    void *d = NULL;
    OK(dsla_cuda_malloc(&d, bytes));
    size_t first = bytes < PATTERN_BYTES ? bytes : PATTERN_BYTES;
    CUDA(cudaMemcpy(d, pattern, first, cudaMemcpyHostToDevice));
    /* Doubling copies fill the rest on the device. */
    for (size_t done = first; done < bytes;) {
        size_t n = done < bytes - done ? done : bytes - done;
        CUDA(cudaMemcpy((char *)d + done, d, n, cudaMemcpyDeviceToDevice));
        done += n;
    }
    return d;
}

typedef void (*bench_fn)(void *ctx);

/* Median milliseconds of fn over reps timed repetitions, each after an L2 eviction. */
static double time_ms(bench_fn fn, void *ctx) {
    cudaEvent_t start, stop;
    CUDA(cudaEventCreate(&start));
    CUDA(cudaEventCreate(&stop));
    for (int i = 0; i < WARMUP_REPS; i++)
        fn(ctx);
    float ms[MAX_REPS];
    for (int i = 0; i < reps; i++) {
        CUDA(cudaMemsetAsync(l2_flush, i & 0xff, 2 * l2_bytes, NULL));
        CUDA(cudaEventRecord(start, NULL));
        fn(ctx);
        CUDA(cudaEventRecord(stop, NULL));
        CUDA(cudaEventSynchronize(stop));
        CUDA(cudaEventElapsedTime(&ms[i], start, stop));
    }
    CUDA(cudaGetLastError());
    CUDA(cudaEventDestroy(start));
    CUDA(cudaEventDestroy(stop));
    qsort(ms, (size_t)reps, sizeof ms[0], cmp_float);
    return reps % 2 ? ms[reps / 2] : 0.5 * (ms[reps / 2 - 1] + ms[reps / 2]);
}

static void emit_bytes(const char *what, const char *shape, double ms, double bytes) {
    const double gbps = bytes / (ms * 1e-3) / 1e9;
    printf("{\"what\":\"%s\",\"shape\":\"%s\",\"device\":\"%s\",\"median_ms\":%.4f,\"gbps\":%.1f,"
           "\"fraction_of_peak\":%.3f}\n",
           what, shape, device_name, ms, gbps, peak_gbps > 0 ? gbps / peak_gbps : 1.0);
    fflush(stdout);
}

static void emit_flops(const char *what, const char *shape, double ms, double flops) {
    const double tflops = flops / (ms * 1e-3) / 1e12;
    printf("{\"what\":\"%s\",\"shape\":\"%s\",\"device\":\"%s\",\"median_ms\":%.4f,\"tflops\":%.1f,"
           "\"fraction_of_peak\":%.3f}\n",
           what, shape, device_name, ms, tflops, peak_tflops > 0 ? tflops / peak_tflops : 1.0);
    fflush(stdout);
}

/* ---- the two ceilings ---- */

typedef struct {
    void *dst, *src;
    size_t bytes;
} copy_ctx_t;

static void run_copy(void *p) {
    copy_ctx_t *c = p;
    CUDA(cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice, NULL));
}

typedef struct {
    dsla_cuda_blas_t *blas;
    void *y, *x, *w;
    dsla_dtype_t y_dtype, in_dtype;
    int m, n, k;
    float beta;
} gemm_ctx_t;

static void run_gemm(void *p) {
    gemm_ctx_t *g = p;
    OK(dsla_cuda_gemm(g->blas, NULL, g->y, g->y_dtype, g->x, g->w, g->in_dtype, g->m, g->n, g->k,
                      g->beta));
}

static void bench_ceilings(dsla_cuda_blas_t *blas) {
    copy_ctx_t c = {random_buffer(COPY_BYTES), random_buffer(COPY_BYTES), COPY_BYTES};
    double ms = time_ms(run_copy, &c);
    peak_gbps = 0; /* the copy is its own reference */
    emit_bytes("copy_d2d", "1GiB", ms, 2.0 * COPY_BYTES);
    peak_gbps = 2.0 * COPY_BYTES / (ms * 1e-3) / 1e9;
    dsla_cuda_free(&c.dst);
    dsla_cuda_free(&c.src);

    const size_t s = PEAK_GEMM_SIZE, bytes = s * s * 2;
    gemm_ctx_t g = {blas,
                    random_buffer(bytes),
                    random_buffer(bytes),
                    random_buffer(bytes),
                    DSLA_DTYPE_BF16,
                    DSLA_DTYPE_BF16,
                    (int)s,
                    (int)s,
                    (int)s,
                    0.0f};
    ms = time_ms(run_gemm, &g);
    emit_flops("gemm_bf16_peak", "m=n=k=8192", ms, 2.0 * s * s * s);
    peak_tflops = 2.0 * s * s * s / (ms * 1e-3) / 1e12;
    dsla_cuda_free(&g.y);
    dsla_cuda_free(&g.x);
    dsla_cuda_free(&g.w);
}

/* ---- GEMMs of a decoder layer ---- */

static void bench_gemms(dsla_cuda_blas_t *blas) {
    const struct {
        const char *name;
        int n, k;
    } layers[] = {{"qkv", 3 * MODEL_D, MODEL_D},
                  {"o_proj", MODEL_D, MODEL_D},
                  {"gate_up", 2 * MODEL_I, MODEL_D},
                  {"down", MODEL_D, MODEL_I}};
    const int tokens[] = {1, 2, 4, 8, 64, 1024, 4096, 8192};
    for (size_t l = 0; l < sizeof layers / sizeof layers[0]; l++) {
        const int n = layers[l].n, k = layers[l].k;
        void *w = random_buffer((size_t)n * k * 2);
        for (size_t t = 0; t < sizeof tokens / sizeof tokens[0]; t++) {
            const int m = tokens[t];
            if (quick && m > 1024) continue;
            void *x = random_buffer((size_t)m * k * 2);
            void *y = random_buffer((size_t)m * n * 4);
            gemm_ctx_t g = {blas, y, x, w, DSLA_DTYPE_F32, DSLA_DTYPE_BF16, m, n, k, 0.0f};
            /* Up to the GEMV's largest m, time it even where the default sends m to cuBLAS. */
            dsla_cuda_blas_set_gemv_rows(blas, DSLA_CUDA_GEMV_MAX_ROWS);
            const double ms = time_ms(run_gemm, &g);
            char shape[96];
            snprintf(shape, sizeof shape, "%s m=%d n=%d k=%d", layers[l].name, m, n, k);
            /* Few rows: the weight stream bounds it; many rows: the matrix rate. */
            const double bytes = 2.0 * n * k + 2.0 * m * k + 4.0 * m * n;
            if (m <= 64)
                emit_bytes(m <= DSLA_CUDA_GEMV_MAX_ROWS ? "gemm_bf16 (gemv)" : "gemm_bf16", shape,
                           ms, bytes);
            else
                emit_flops("gemm_bf16", shape, ms, 2.0 * m * n * k);
            if (m <= DSLA_CUDA_GEMV_MAX_ROWS) {
                /* The same shape through cuBLAS: what the GEMV replaced. */
                dsla_cuda_blas_set_gemv_rows(blas, 0);
                emit_bytes("gemm_bf16 (cublas)", shape, time_ms(run_gemm, &g), bytes);
            }
            dsla_cuda_blas_set_gemv_rows(blas, DSLA_CUDA_GEMV_DEFAULT_ROWS);
            dsla_cuda_free(&x);
            dsla_cuda_free(&y);
        }
        dsla_cuda_free(&w);
    }
    /* fp32 for scale: the path the exactness tests take. */
    void *w = random_buffer((size_t)3 * MODEL_D * MODEL_D * 4);
    void *x = random_buffer((size_t)1024 * MODEL_D * 4);
    void *y = random_buffer((size_t)1024 * 3 * MODEL_D * 4);
    gemm_ctx_t g = {blas, y, x, w, DSLA_DTYPE_F32, DSLA_DTYPE_F32, 1024, 3 * MODEL_D, MODEL_D, 0};
    emit_flops("gemm_f32", "qkv m=1024 n=12288 k=4096", time_ms(run_gemm, &g),
               2.0 * 1024 * 3 * MODEL_D * MODEL_D);
    dsla_cuda_free(&w), dsla_cuda_free(&x), dsla_cuda_free(&y);
}

/* ---- element-wise and row ops ---- */

typedef struct {
    int which, rows;
    void *a, *b, *c, *d;
} ew_ctx_t;

enum { EW_RMSNORM, EW_ADD_RMSNORM_BF16, EW_ROPE, EW_SWIGLU_BF16, EW_ADD, EW_EMBED_BF16 };

static void run_ew(void *p) {
    ew_ctx_t *e = p;
    const int T = e->rows;
    switch (e->which) {
    case EW_RMSNORM:
        OK(dsla_cuda_rmsnorm(NULL, e->a, DSLA_DTYPE_F32, e->b, e->c, T, MODEL_D, 1e-5f));
        break;
    case EW_ADD_RMSNORM_BF16:
        OK(dsla_cuda_add_rmsnorm(NULL, e->a, DSLA_DTYPE_BF16, e->b, e->d, e->c, T, MODEL_D, 1e-5f));
        break;
    case EW_ROPE:
        OK(dsla_cuda_rope(NULL, e->a, T, 3 * MODEL_D, 2 * MODEL_H, MODEL_HEAD_DIM, e->b, e->c));
        break;
    case EW_SWIGLU_BF16:
        OK(dsla_cuda_swiglu(NULL, e->a, DSLA_DTYPE_BF16, e->b, (float *)e->b + MODEL_I, T, MODEL_I,
                            2 * MODEL_I));
        break;
    case EW_ADD:
        OK(dsla_cuda_add(NULL, e->a, e->b, e->d, (size_t)T * MODEL_D));
        break;
    case EW_EMBED_BF16:
        OK(dsla_cuda_embedding(NULL, e->a, e->c, DSLA_DTYPE_BF16, e->b, T, MODEL_D, MODEL_VOCAB));
        break;
    }
}

static void bench_elementwise(void) {
    const int tokens[] = {1, 64, 1024, 4096, 8192};
    for (size_t t = 0; t < sizeof tokens / sizeof tokens[0]; t++) {
        const int T = tokens[t];
        if (quick && T > 1024) continue;
        const double D = MODEL_D, I = MODEL_I;
        char shape[64];
        ew_ctx_t e = {0, T, NULL, NULL, NULL, NULL};

        snprintf(shape, sizeof shape, "T=%d D=%d", T, MODEL_D);
        e.which = EW_RMSNORM;
        e.a = random_buffer((size_t)T * MODEL_D * 4);
        e.b = random_buffer((size_t)T * MODEL_D * 4);
        e.c = random_buffer((size_t)MODEL_D * 4);
        e.d = random_buffer((size_t)T * MODEL_D * 4);
        emit_bytes("rmsnorm_f32", shape, time_ms(run_ew, &e), T * D * 8 + D * 4);
        e.which = EW_ADD_RMSNORM_BF16; /* read x, delta; write x, y(bf16) */
        emit_bytes("add_rmsnorm_bf16out", shape, time_ms(run_ew, &e), T * D * (4 + 4 + 4 + 2));
        e.which = EW_ADD;
        emit_bytes("add_f32", shape, time_ms(run_ew, &e), T * D * 12);
        dsla_cuda_free(&e.a), dsla_cuda_free(&e.b), dsla_cuda_free(&e.c), dsla_cuda_free(&e.d);

        e.which = EW_ROPE; /* q and k heads of a fused QKV row, in place */
        e.a = random_buffer((size_t)T * 3 * MODEL_D * 4);
        int32_t *pos = malloc((size_t)T * sizeof *pos);
        for (int i = 0; i < T; i++)
            pos[i] = i;
        OK(dsla_cuda_malloc(&e.b, (size_t)T * 4));
        OK(dsla_cuda_copy(e.b, pos, (size_t)T * 4, NULL));
        e.c = random_buffer(MODEL_HEAD_DIM / 2 * 4);
        snprintf(shape, sizeof shape, "T=%d heads=%d d=%d", T, 2 * MODEL_H, MODEL_HEAD_DIM);
        emit_bytes("rope_f32", shape, time_ms(run_ew, &e), T * 2 * D * 8);
        dsla_cuda_free(&e.a), dsla_cuda_free(&e.c);

        e.which = EW_EMBED_BF16; /* token ids: the positions, all < vocab */
        e.a = random_buffer((size_t)T * MODEL_D * 4);
        e.c = random_buffer((size_t)MODEL_VOCAB * MODEL_D * 2);
        snprintf(shape, sizeof shape, "T=%d D=%d table=bf16", T, MODEL_D);
        emit_bytes("embedding_bf16", shape, time_ms(run_ew, &e), T * D * 6);
        dsla_cuda_free(&e.a), dsla_cuda_free(&e.b), dsla_cuda_free(&e.c);
        free(pos);

        e.which = EW_SWIGLU_BF16;
        e.a = random_buffer((size_t)T * MODEL_I * 2);
        e.b = random_buffer((size_t)T * 2 * MODEL_I * 4);
        snprintf(shape, sizeof shape, "T=%d I=%d", T, MODEL_I);
        emit_bytes("swiglu_bf16out", shape, time_ms(run_ew, &e), T * I * 10);
        dsla_cuda_free(&e.a), dsla_cuda_free(&e.b);
    }
}

/* ---- attention ---- */

/* A pool of `blocks` random K/V blocks, Llama-2-7B wide, and per-sequence block tables drawn as a
 * random permutation so that a sequence's blocks are scattered as a long-running pool's are. */
typedef struct {
    float *k, *v, *out, *q;
    int32_t *tables, *lens;
    void *ws;
    size_t ws_bytes;
    int n_seqs, ctx, table_stride;
    dsla_attn_shape_t shape;
} attn_ctx_t;

static void attn_setup(attn_ctx_t *a, int n_seqs, int ctx, int q_rows) {
    const size_t width = (size_t)MODEL_H * MODEL_HEAD_DIM;
    a->n_seqs = n_seqs;
    a->ctx = ctx;
    a->shape = (dsla_attn_shape_t){MODEL_H, MODEL_H, MODEL_HEAD_DIM};
    a->table_stride = (ctx + DSLA_KV_BLOCK_TOKENS - 1) / DSLA_KV_BLOCK_TOKENS;
    const size_t blocks = (size_t)n_seqs * a->table_stride;
    a->k = random_buffer(blocks * DSLA_KV_BLOCK_TOKENS * width * 4);
    a->v = random_buffer(blocks * DSLA_KV_BLOCK_TOKENS * width * 4);
    a->q = random_buffer((size_t)q_rows * width * 4);
    a->out = random_buffer((size_t)q_rows * width * 4);
    int32_t *t = malloc(blocks * sizeof *t), *lens = malloc((size_t)n_seqs * sizeof *lens);
    uint64_t x = 12345;
    for (size_t i = 0; i < blocks; i++)
        t[i] = (int32_t)i;
    for (size_t i = blocks - 1; i > 0; i--) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t j = (size_t)(x >> 33) % (i + 1);
        int32_t tmp = t[i];
        t[i] = t[j];
        t[j] = tmp;
    }
    for (int s = 0; s < n_seqs; s++)
        lens[s] = ctx;
    OK(dsla_cuda_malloc((void **)&a->tables, blocks * 4));
    OK(dsla_cuda_copy(a->tables, t, blocks * 4, NULL));
    OK(dsla_cuda_malloc((void **)&a->lens, (size_t)n_seqs * 4));
    OK(dsla_cuda_copy(a->lens, lens, (size_t)n_seqs * 4, NULL));
    free(t), free(lens);
    a->ws_bytes = dsla_cuda_attention_decode_workspace(n_seqs, ctx, &a->shape);
    OK(dsla_cuda_malloc(&a->ws, a->ws_bytes));
}

static void attn_free(attn_ctx_t *a) {
    void *p[] = {a->k, a->v, a->q, a->out, a->tables, a->lens, a->ws};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        dsla_cuda_free(&p[i]);
}

static void run_prefill(void *p) {
    attn_ctx_t *a = p;
    const int w = MODEL_H * MODEL_HEAD_DIM;
    dsla_paged_kv_t kv = {a->k, a->v, a->tables, DSLA_KV_BLOCK_TOKENS};
    OK(dsla_cuda_attention_prefill(NULL, a->out, w, a->q, w, a->ctx, 0, &a->shape, &kv));
}

static void run_decode(void *p) {
    attn_ctx_t *a = p;
    const int w = MODEL_H * MODEL_HEAD_DIM;
    dsla_cuda_paged_batch_t kv = {
        a->k, a->v, a->tables, a->lens, a->table_stride, DSLA_KV_BLOCK_TOKENS};
    OK(dsla_cuda_attention_decode(NULL, a->out, w, a->q, w, a->n_seqs, a->ctx, &a->shape, &kv,
                                  a->ws, a->ws_bytes));
}

static void bench_attention(void) {
    const double d = MODEL_HEAD_DIM, H = MODEL_H;
    const int prefill_T[] = {1024, 4096, 8192};
    for (size_t i = 0; i < sizeof prefill_T / sizeof prefill_T[0]; i++) {
        const int T = prefill_T[i];
        if (quick && T > 1024) continue;
        attn_ctx_t a;
        attn_setup(&a, 1, T, T);
        char shape[64];
        snprintf(shape, sizeof shape, "T=%d H=%d d=%d causal", T, MODEL_H, MODEL_HEAD_DIM);
        /* QK^T and PV over the causal triangle: 2 matrix products of T(T+1)/2 x d per head. */
        emit_flops("attention_prefill_f32", shape, time_ms(run_prefill, &a),
                   4.0 * H * d * (double)T * (T + 1) / 2.0);
        attn_free(&a);
    }
    const int batches[] = {1, 8, 64}, contexts[] = {1024, 4096, 16384};
    for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++)
        for (size_t c = 0; c < sizeof contexts / sizeof contexts[0]; c++) {
            const int B = batches[b], ctx = contexts[c];
            if (quick && (B > 8 || ctx > 4096)) continue;
            attn_ctx_t a;
            attn_setup(&a, B, ctx, B);
            char shape[64];
            snprintf(shape, sizeof shape, "batch=%d ctx=%d H=%d d=%d", B, ctx, MODEL_H,
                     MODEL_HEAD_DIM);
            /* The stream of K and V dominates; q and out are B rows. */
            emit_bytes("attention_decode_f32", shape, time_ms(run_decode, &a),
                       (double)B * ctx * H * d * 4 * 2 + 2.0 * B * H * d * 4);
            attn_free(&a);
        }
}

/* Paged decode attention of a serving batch (issue 11): n_seqs sequences of mixed lengths, uniform
 * in 256..2304 (mean ~1.3K, a chat-like running set), over a bf16 pool with scattered blocks, one
 * layer; the target is >= 0.70 of copy bandwidth from 64 to 256 sequences. */
enum { MIXED_LO = 256, MIXED_HI = 2304 };

typedef struct {
    dsla_cuda_kv_pool_t pool;
    float *q, *out;
    int32_t *tables, *lens;
    void *ws;
    size_t ws_bytes;
    int n_seqs, table_stride;
    long total_tokens;
    dsla_attn_shape_t shape;
} mixed_ctx_t;

static void mixed_setup(mixed_ctx_t *a, int n_seqs) {
    const size_t width = (size_t)MODEL_H * MODEL_HEAD_DIM;
    a->n_seqs = n_seqs;
    a->shape = (dsla_attn_shape_t){MODEL_H, MODEL_H, MODEL_HEAD_DIM};
    a->table_stride = (MIXED_HI + DSLA_KV_BLOCK_TOKENS - 1) / DSLA_KV_BLOCK_TOKENS;
    int32_t *lens = malloc((size_t)n_seqs * sizeof *lens);
    uint64_t x = 777 + (uint64_t)n_seqs;
    size_t blocks = 0;
    a->total_tokens = 0;
    for (int s = 0; s < n_seqs; s++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        lens[s] = MIXED_LO + (int)((x >> 33) % (MIXED_HI - MIXED_LO + 1));
        a->total_tokens += lens[s];
        blocks += (size_t)a->table_stride;
    }
    /* Every sequence's table is full width; its blocks are a random permutation of the pool. */
    int32_t *t = malloc(blocks * sizeof *t);
    for (size_t i = 0; i < blocks; i++)
        t[i] = (int32_t)i;
    for (size_t i = blocks - 1; i > 0; i--) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        size_t j = (size_t)(x >> 33) % (i + 1);
        int32_t tmp = t[i];
        t[i] = t[j];
        t[j] = tmp;
    }
    a->pool = (dsla_cuda_kv_pool_t){random_buffer(blocks * DSLA_KV_BLOCK_TOKENS * width * 2),
                                    random_buffer(blocks * DSLA_KV_BLOCK_TOKENS * width * 2),
                                    DSLA_DTYPE_BF16, DSLA_KV_BLOCK_TOKENS};
    a->q = random_buffer((size_t)n_seqs * width * 4);
    a->out = random_buffer((size_t)n_seqs * width * 4);
    OK(dsla_cuda_malloc((void **)&a->tables, blocks * 4));
    OK(dsla_cuda_copy(a->tables, t, blocks * 4, NULL));
    OK(dsla_cuda_malloc((void **)&a->lens, (size_t)n_seqs * 4));
    OK(dsla_cuda_copy(a->lens, lens, (size_t)n_seqs * 4, NULL));
    free(t), free(lens);
    a->ws_bytes = dsla_cuda_attention_decode_workspace(n_seqs, MIXED_HI, &a->shape);
    OK(dsla_cuda_malloc(&a->ws, a->ws_bytes));
}

static void mixed_free(mixed_ctx_t *a) {
    void *p[] = {a->pool.k, a->pool.v, a->q, a->out, a->tables, a->lens, a->ws};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        dsla_cuda_free(&p[i]);
}

static void run_decode_mixed(void *p) {
    mixed_ctx_t *a = p;
    const int w = MODEL_H * MODEL_HEAD_DIM;
    const dsla_cuda_decode_batch_t batch = {a->tables, NULL, a->lens, a->table_stride};
    OK(dsla_cuda_attention_decode_pool(NULL, a->out, w, a->q, w, a->n_seqs, MIXED_HI, &a->shape,
                                       &a->pool, &batch, a->ws, a->ws_bytes));
}

static void bench_decode_mixed(void) {
    const int batches[] = {64, 128, 192, 256};
    for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
        mixed_ctx_t a;
        mixed_setup(&a, batches[b]);
        char shape[96];
        snprintf(shape, sizeof shape, "batch=%d ctx=%d..%d mean=%ld H=%d d=%d bf16", a.n_seqs,
                 MIXED_LO, MIXED_HI, a.total_tokens / a.n_seqs, MODEL_H, MODEL_HEAD_DIM);
        const double width = (double)MODEL_H * MODEL_HEAD_DIM;
        emit_bytes("attention_decode_pool_mixed", shape, time_ms(run_decode_mixed, &a),
                   (double)a.total_tokens * width * 2 * 2 + 2.0 * a.n_seqs * width * 4);
        mixed_free(&a);
    }
}

/* ---- token selection ---- */

typedef struct {
    int rows;
    float *logits;
    int32_t *out;
    dsla_cuda_sample_row_t *params;
    void *ws;
    size_t ws_bytes;
    bool sample;
} pick_ctx_t;

static void run_pick(void *p) {
    pick_ctx_t *c = p;
    if (c->sample)
        OK(dsla_cuda_sample(NULL, c->out, c->logits, c->rows, MODEL_VOCAB, c->params, c->ws,
                            c->ws_bytes));
    else
        OK(dsla_cuda_argmax(NULL, c->out, c->logits, c->rows, MODEL_VOCAB));
}

static void bench_sampling(void) {
    const int rows[] = {1, 64};
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        pick_ctx_t c = {
            rows[r], random_buffer((size_t)rows[r] * MODEL_VOCAB * 4), NULL, NULL, NULL, 0, false};
        OK(dsla_cuda_malloc((void **)&c.out, (size_t)rows[r] * 4));
        dsla_cuda_sample_row_t *prm = malloc((size_t)rows[r] * sizeof *prm);
        for (int i = 0; i < rows[r]; i++)
            prm[i] = (dsla_cuda_sample_row_t){0.37 + 0.5 * i / rows[r], 0.8f, 40, 0.9f};
        OK(dsla_cuda_malloc((void **)&c.params, (size_t)rows[r] * sizeof *prm));
        OK(dsla_cuda_copy(c.params, prm, (size_t)rows[r] * sizeof *prm, NULL));
        free(prm);
        c.ws_bytes = dsla_cuda_sample_workspace(rows[r], MODEL_VOCAB);
        OK(dsla_cuda_malloc(&c.ws, c.ws_bytes));
        char shape[64];
        snprintf(shape, sizeof shape, "rows=%d vocab=%d", rows[r], MODEL_VOCAB);
        const double bytes = (double)rows[r] * MODEL_VOCAB * 4;
        emit_bytes("argmax", shape, time_ms(run_pick, &c), bytes);
        c.sample = true;
        snprintf(shape, sizeof shape, "rows=%d vocab=%d top_k=40 top_p=0.9", rows[r], MODEL_VOCAB);
        emit_bytes("sample_topk_topp", shape, time_ms(run_pick, &c), bytes);
        dsla_cuda_free((void **)&c.logits), dsla_cuda_free((void **)&c.out);
        dsla_cuda_free((void **)&c.params), dsla_cuda_free(&c.ws);
    }
}

/* ---- DSLA (kernels/kernels_cuda_dsla.h) ---- */

typedef struct {
    dsla_dsla_dims_t dims;
    dsla_cuda_dsla_in_t in;
    dsla_cuda_dsla_states_t st;
    dsla_cuda_dsla_math_t math;
    float *out, *S[2], *dout, *grad[6];
    void *ws;
    size_t ws_bytes;
} dsla_ctx_t;

static void dsla_bench_setup(dsla_ctx_t *c, int B, int T, dsla_dtype_t dtype, bool slots) {
    memset(c, 0, sizeof *c);
    c->dims = (dsla_dsla_dims_t){B, T, MODEL_H, MODEL_HEAD_DIM};
    const size_t n = (size_t)B * T * MODEL_H * MODEL_HEAD_DIM;
    const size_t per_seq = (size_t)MODEL_H * MODEL_HEAD_DIM * MODEL_HEAD_DIM;
    const size_t elt = dtype == DSLA_DTYPE_BF16 ? 2 : 4;
    const void **inputs[5] = {&c->in.q, &c->in.k, &c->in.v, &c->in.a1, &c->in.a2};
    for (int i = 0; i < 5; i++)
        *inputs[i] = random_buffer(n * elt);
    c->in.dtype = dtype;
    c->in.alpha = random_buffer(2 * sizeof(float));
    c->out = random_buffer(n * 4);
    for (int i = 0; i < 2; i++)
        c->S[i] = random_buffer((size_t)B * per_seq * 4);
    if (slots) { /* every sequence's slot at its own place in the pool, in shuffled order */
        for (int i = 0; i < 2; i++) {
            float **p = malloc((size_t)B * sizeof *p);
            for (int b = 0; b < B; b++)
                p[b] = c->S[i] + (size_t)((b * 7 + 3) % B) * per_seq;
            void *d = NULL;
            OK(dsla_cuda_malloc(&d, (size_t)B * sizeof *p));
            OK(dsla_cuda_copy(d, p, (size_t)B * sizeof *p, NULL));
            free(p);
            if (i == 0)
                c->st.s1_slots = d;
            else
                c->st.s2_slots = d;
        }
    } else {
        c->st.s1 = c->S[0];
        c->st.s2 = c->S[1];
    }
}

static void dsla_bench_free(dsla_ctx_t *c) {
    void *p[] = {(void *)c->in.q,
                 (void *)c->in.k,
                 (void *)c->in.v,
                 (void *)c->in.a1,
                 (void *)c->in.a2,
                 (void *)c->in.alpha,
                 c->out,
                 c->S[0],
                 c->S[1],
                 (void *)c->st.s1_slots,
                 (void *)c->st.s2_slots,
                 c->ws,
                 c->dout,
                 c->grad[0],
                 c->grad[1],
                 c->grad[2],
                 c->grad[3],
                 c->grad[4],
                 c->grad[5]};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        dsla_cuda_free(&p[i]);
}

static void run_dsla_decode(void *p) {
    dsla_ctx_t *c = p;
    OK(dsla_cuda_dsla_decode(NULL, &c->dims, &c->in, &c->st, c->out));
}

static void run_dsla_fwd(void *p) {
    dsla_ctx_t *c = p;
    OK(dsla_cuda_dsla_chunked_forward(NULL, &c->dims, &c->in, c->math, NULL, NULL, c->out, c->S[0],
                                      c->S[1], c->ws, c->ws_bytes));
}

static dsla_dsla_grad_t dsla_bench_grad(const dsla_ctx_t *c) {
    return (dsla_dsla_grad_t){c->grad[0], c->grad[1], c->grad[2],
                              c->grad[3], c->grad[4], c->grad[5]};
}

static void run_dsla_bwd(void *p) {
    dsla_ctx_t *c = p;
    const dsla_dsla_grad_t g = dsla_bench_grad(c);
    OK(dsla_cuda_dsla_chunked_backward(NULL, &c->dims, &c->in, c->math, NULL, NULL, c->dout, NULL,
                                       NULL, &g, c->S[0], c->S[1], c->ws, c->ws_bytes));
}

/* The backward as a training step runs it: on the states the forward left in the workspace (one
 * forward runs before the timing). */
static void run_dsla_bwd_after_fwd(void *p) {
    dsla_ctx_t *c = p;
    const dsla_dsla_grad_t g = dsla_bench_grad(c);
    OK(dsla_cuda_dsla_chunked_backward_after_forward(NULL, &c->dims, &c->in, c->math, NULL, NULL,
                                                     c->dout, NULL, NULL, &g, c->S[0], c->S[1],
                                                     c->ws, c->ws_bytes));
}

static void bench_dsla(void) {
    const double H = MODEL_H, d = MODEL_HEAD_DIM, C = DSLA_CHUNK;
    /* Decode: both states read and written once; the five input rows and out are ~0.1%. */
    const int batches[] = {1, 8, 64};
    for (size_t i = 0; i < sizeof batches / sizeof batches[0] && !dsla_tokens; i++)
        for (int slots = 0; slots < 2; slots++) {
            const int B = batches[i];
            dsla_ctx_t c;
            dsla_bench_setup(&c, B, 1, DSLA_DTYPE_F32, slots);
            char shape[96];
            snprintf(shape, sizeof shape, "batch=%d H=%d d=%d%s", B, MODEL_H, MODEL_HEAD_DIM,
                     slots ? " slots" : "");
            emit_bytes("dsla_decode_f32", shape, time_ms(run_dsla_decode, &c),
                       2.0 * 2 * B * H * d * d * 4 + 6.0 * B * H * d * 4);
            dsla_bench_free(&c);
        }

    /* Chunked forward and backward at one sequence of the 7B shape. FLOPs of the chunk form per
     * token, head and state: 4 C d (scores and A V) + 4 d^2 (read-out from S and the state
     * update); the backward ~10 d^2 + 8 C d (both state passes, dV, dQ, dK and the score
     * gradients). Bytes: the inputs, out, and the chunk-boundary states the workspace carries. */
    const struct {
        int T;
        dsla_dtype_t dtype;
        dsla_cuda_dsla_math_t math;
        bool bwd;
    } runs[] = {
        {4096, DSLA_DTYPE_F32, DSLA_CUDA_DSLA_MATH_TF32, false},
        {4096, DSLA_DTYPE_F32, DSLA_CUDA_DSLA_MATH_F32, false},
        {16384, DSLA_DTYPE_F32, DSLA_CUDA_DSLA_MATH_TF32, false},
        {4096, DSLA_DTYPE_F32, DSLA_CUDA_DSLA_MATH_F32, true},
        {4096, DSLA_DTYPE_F32, DSLA_CUDA_DSLA_MATH_TF32, true},
        /* The rows held to the peer (bench/peer_chunk_gla.py's chunk_gla x2, issue 12): bf16
         * inputs, TF32 math, 2K-32K tokens, forward then backward; after each backward the
         * backward on the forward's states and a dsla_chunked_fwd_bwd row, forward plus that. */
        {2048, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, false},
        {2048, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, true},
        {4096, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, false},
        {4096, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, true},
        {8192, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, false},
        {8192, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, true},
        {16384, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, false},
        {16384, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, true},
        {32768, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, false},
        {32768, DSLA_DTYPE_BF16, DSLA_CUDA_DSLA_MATH_TF32, true},
    };
    double fwd_ms = 0, fwd_flops = 0; /* the last forward row, for the fwd_bwd sum after it */
    for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
        const int T = runs[i].T;
        if ((quick && T > 4096) || (dsla_tokens && T != dsla_tokens)) continue;
        dsla_ctx_t c;
        dsla_bench_setup(&c, 1, T, runs[i].dtype, false);
        c.math = runs[i].math;
        c.ws_bytes = dsla_cuda_dsla_chunked_workspace_bytes(&c.dims);
        OK(dsla_cuda_malloc(&c.ws, c.ws_bytes));
        const double n = (double)T * H * d, elt = runs[i].dtype == DSLA_DTYPE_BF16 ? 2 : 4;
        const double chunk_states = 2.0 * H * ((T + C - 1) / C) * d * d * 4;
        char shape[96], what[64];
        snprintf(shape, sizeof shape, "T=%d H=%d d=%d in=%s math=%s", T, MODEL_H, MODEL_HEAD_DIM,
                 dsla_dtype_name(runs[i].dtype),
                 runs[i].math == DSLA_CUDA_DSLA_MATH_TF32 ? "tf32" : "f32");
        double ms, flops, bytes;
        if (runs[i].bwd) {
            c.dout = random_buffer((size_t)n * 4);
            for (int g = 0; g < 6; g++)
                c.grad[g] = random_buffer(g < 5 ? (size_t)n * 4 : 8);
            ms = time_ms(run_dsla_bwd, &c);
            flops = 2.0 * T * H * (10 * d * d + 8 * C * d);
            /* inputs and dout read, five gradients written, states and state gradients written
             * and read back */
            bytes = n * (5 * elt + 4 + 5 * 4) + 4 * chunk_states;
            snprintf(what, sizeof what, "dsla_chunked_bwd");
        } else {
            ms = fwd_ms = time_ms(run_dsla_fwd, &c);
            flops = fwd_flops = 2.0 * T * H * (4 * C * d + 4 * d * d);
            bytes = n * (5 * elt + 4) + 2 * chunk_states;
            snprintf(what, sizeof what, "dsla_chunked_fwd");
        }
        emit_flops(what, shape, ms, flops);
        emit_bytes(what, shape, ms, bytes);
        if (runs[i].bwd && i > 0 && !runs[i - 1].bwd && runs[i - 1].T == T &&
            runs[i - 1].dtype == runs[i].dtype && runs[i - 1].math == runs[i].math) {
            /* forward + backward as training runs them: the backward on the forward's states */
            run_dsla_fwd(&c);
            const double kept = time_ms(run_dsla_bwd_after_fwd, &c);
            emit_flops("dsla_chunked_bwd_after_fwd", shape, kept, flops);
            emit_flops("dsla_chunked_fwd_bwd", shape, fwd_ms + kept, fwd_flops + flops);
        }
        dsla_bench_free(&c);
    }
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = true;
            reps = 5;
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc &&
                   (!strcmp(argv[i + 1], "dsla") || !strcmp(argv[i + 1], "gemm") ||
                    !strcmp(argv[i + 1], "decode"))) {
            only = argv[++i];
        } else if (strcmp(argv[i], "--dsla-tokens") == 0 && i + 1 < argc) {
            char *end = NULL;
            const long t = strtol(argv[++i], &end, 10);
            if (*end || t < 1 || t > (1L << 24)) {
                fprintf(stderr,
                        "bench_cuda_kernels: --dsla-tokens '%s' is not a token count in "
                        "1..16777216\n",
                        argv[i]);
                return 2;
            }
            dsla_tokens = (int)t;
        } else {
            fprintf(stderr, "usage: bench_cuda_kernels [--quick] [--only dsla|gemm|decode] "
                            "[--dsla-tokens T]\n");
            return 2;
        }
    }
    if (dsla_cuda_device_count() == 0) {
        int n = 0;
        fprintf(stderr, "bench_cuda_kernels: no CUDA device (cudaGetDeviceCount: %s)\n",
                cudaGetErrorString(cudaGetDeviceCount(&n)));
        return 1;
    }
    struct cudaDeviceProp prop;
    CUDA(cudaGetDeviceProperties(&prop, 0));
    snprintf(device_name, sizeof device_name, "%s", prop.name);
    l2_bytes = (size_t)prop.l2CacheSize;
    OK(dsla_cuda_malloc(&l2_flush, 2 * l2_bytes));
    dsla_cuda_blas_t *blas = NULL;
    OK(dsla_cuda_blas_create(&blas));
    bench_ceilings(blas);
    if (!only || !strcmp(only, "gemm")) bench_gemms(blas);
    if (!only) {
        bench_elementwise();
        bench_attention();
        bench_sampling();
    }
    if (!only || !strcmp(only, "decode")) bench_decode_mixed();
    if (!only || !strcmp(only, "dsla")) bench_dsla();
    dsla_cuda_blas_destroy(&blas);
    dsla_cuda_free(&l2_flush);
    return 0;
}

#else

int main(void) {
    fprintf(stderr, "bench_cuda_kernels: built without CUDA\n");
    return 1;
}

#endif

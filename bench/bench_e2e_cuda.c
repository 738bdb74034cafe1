/* End-to-end GPU inference benchmark: a Llama-2-7B-shaped model (D 4096, 32 layers, 32 heads, d
 * 128, I 11008, vocab 32000) with random bf16 weights drawn on the device, bf16 KV cache; prefill
 * and decode at batch 1, 8, 64 and contexts 1K, 4K, 16K, with 0%, 50% and 100% of layers as DSLA
 * when the DSLA kernels run on this build. Also the prefill attention kernel alone at 1K-16K, and
 * the device's copy bandwidth (the floor's denominator).
 *
 * One JSON object per measurement (DESIGN.md section 12): what, shape, device, median ms, tokens/s,
 * achieved GB/s and the fraction of the bandwidth floor. A decode step's floor is the bytes it must
 * read (weights of the layers as they run, the KV of every attention layer, DSLA states read and
 * written) over the measured copy bandwidth. Combinations whose cache does not fit are printed as
 * skipped with the bytes they need. Decode contexts are synthetic (random KV and states): the work
 * of a step does not depend on the values, and it saves prefilling 1M tokens per row. Prefill rows
 * are one timed pass each, after an untimed first chunk of the same shape (cuDNN plans and
 * cuBLAS's first-call set-up are one-time costs, not prefill speed). `bench_e2e_cuda serving`
 * runs issue 11's shapes instead: decode at 128 x 1K and steps mixing 128 decodes with a prompt
 * chunk, against the step accounting's floor. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "runtime/model/llama_cuda.h"
#include "runtime/serve/step_stats.h"

#ifdef DSLA_HAVE_CUDA

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        dsla_status_t st_ = (expr);                                                                \
        if (st_ != DSLA_OK) {                                                                      \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, dsla_last_error());      \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* Prefill runs in chunks of this many tokens per forward pass (the serving engine's chunked
 * prefill); it bounds the activations (~1.5 GB for the 7B shape). */
enum { PREFILL_CHUNK = 8192 };
enum { DECODE_WARMUP = 3, DECODE_STEPS = 15, ATTN_REPS = 10, COPY_REPS = 10 };
/* Device memory left free for cuBLAS, graphs and the allocator's rounding. */
#define MEM_MARGIN (3ull << 30)

static char device[256];
static dsla_cuda_stream_t stream;

static int cmp_float(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static float median(float *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_float);
    return v[n / 2];
}

/* Device-to-device copy of 1 GiB, bytes read plus written: the bandwidth ceiling. */
static double copy_bandwidth(void) {
    const size_t bytes = 1ull << 30;
    void *a = NULL, *b = NULL;
    CHECK(dsla_cuda_malloc(&a, bytes));
    CHECK(dsla_cuda_malloc(&b, bytes));
    CHECK(dsla_cuda_fill_uniform(stream, a, DSLA_DTYPE_F32, bytes / 4, -1.0f, 1.0f, 1));
    dsla_cuda_event_t e0, e1;
    CHECK(dsla_cuda_event_create(&e0));
    CHECK(dsla_cuda_event_create(&e1));
    float t[COPY_REPS];
    for (int r = 0; r < COPY_REPS; r++) {
        CHECK(dsla_cuda_event_record(e0, stream));
        CHECK(dsla_cuda_copy(b, a, bytes, stream));
        CHECK(dsla_cuda_event_record(e1, stream));
        CHECK(dsla_cuda_event_sync(e1));
        CHECK(dsla_cuda_event_elapsed_ms(&t[r], e0, e1));
    }
    const double ms = median(t, COPY_REPS), gbps = 2.0 * bytes / (ms * 1e6);
    printf(
        "{\"what\":\"copy_bandwidth\",\"shape\":{\"bytes\":%zu},\"device\":\"%s\",\"median_ms\":%."
        "4f,\"achieved_gbps\":%.1f}\n",
        bytes, device, ms, gbps);
    dsla_cuda_event_destroy(&e0);
    dsla_cuda_event_destroy(&e1);
    dsla_cuda_free(&a);
    dsla_cuda_free(&b);
    return gbps;
}

/* The prefill attention kernel alone: one sequence of T tokens, 32 heads of 128, bf16 pool. */
static void attention_prefill(int T) {
    const int H = 32, d = 128, width = H * d, blocks = T / DSLA_KV_BLOCK_TOKENS;
    const size_t pool_n = (size_t)T * width;
    void *k = NULL, *v = NULL;
    float *q = NULL, *out = NULL;
    int32_t *table = NULL;
    CHECK(dsla_cuda_malloc(&k, pool_n * 2));
    CHECK(dsla_cuda_malloc(&v, pool_n * 2));
    CHECK(dsla_cuda_malloc((void **)&q, pool_n * 4));
    CHECK(dsla_cuda_malloc((void **)&out, pool_n * 4));
    CHECK(dsla_cuda_fill_uniform(stream, k, DSLA_DTYPE_BF16, pool_n, -1.0f, 1.0f, 11));
    CHECK(dsla_cuda_fill_uniform(stream, v, DSLA_DTYPE_BF16, pool_n, -1.0f, 1.0f, 12));
    CHECK(dsla_cuda_fill_uniform(stream, q, DSLA_DTYPE_F32, pool_n, -1.0f, 1.0f, 13));
    int32_t *ht = malloc((size_t)blocks * sizeof *ht);
    for (int b = 0; b < blocks; b++)
        ht[b] = b;
    CHECK(dsla_cuda_malloc((void **)&table, (size_t)blocks * sizeof *ht));
    CHECK(dsla_cuda_copy(table, ht, (size_t)blocks * sizeof *ht, stream));
    const dsla_cuda_kv_pool_t pool = {k, v, DSLA_DTYPE_BF16, DSLA_KV_BLOCK_TOKENS};
    const dsla_attn_shape_t shape = {H, H, d};
    dsla_cuda_event_t e0, e1;
    CHECK(dsla_cuda_event_create(&e0));
    CHECK(dsla_cuda_event_create(&e1));
    float t[ATTN_REPS];
    for (int r = -2; r < ATTN_REPS; r++) {
        CHECK(dsla_cuda_event_record(e0, stream));
        CHECK(dsla_cuda_attention_prefill_pool(stream, out, width, q, width, T, 0, &shape, &pool,
                                               table));
        CHECK(dsla_cuda_event_record(e1, stream));
        CHECK(dsla_cuda_event_sync(e1));
        if (r >= 0) CHECK(dsla_cuda_event_elapsed_ms(&t[r], e0, e1));
    }
    const double ms = median(t, ATTN_REPS);
    const double flops = 4.0 * H * d * (double)T * (T + 1) / 2.0; /* causal QK^T and PV */
    printf(
        "{\"what\":\"prefill_attention\",\"shape\":{\"batch\":1,\"tokens\":%d,\"heads\":%d,"
        "\"head_dim\":%d,\"causal\":true,\"kv\":\"bf16 paged\"},\"device\":\"%s\",\"median_ms\":%"
        ".4f,\"tflops\":%.1f}\n",
        T, H, d, device, ms, flops / (ms * 1e9));
    dsla_cuda_event_destroy(&e0);
    dsla_cuda_event_destroy(&e1);
    free(ht);
    void *bufs[] = {k, v, q, out, table};
    for (int i = 0; i < 5; i++)
        dsla_cuda_free(&bufs[i]);
}

/* The same attention through cuDNN's fused kernel (kernels/cuda/attention_cudnn.c): bf16 q, k, v
 * in one fused row per token (the model's layout), bf16 out; the first of the warm-up calls builds
 * the plan (first_call_ms: plan search and build plus one run, event-timed on the host
 * stream). Prints a skip line where libcudnn.so.9 does not load. */
static void attention_prefill_cudnn(int T) {
    const int H = 32, d = 128, width = H * d, stride = 3 * width;
    dsla_cuda_cudnn_t *c = NULL;
    if (dsla_cuda_cudnn_create(&c) != DSLA_OK) {
        printf("{\"what\":\"prefill_attention_cudnn\",\"device\":\"%s\",\"skipped\":\"%s\"}\n",
               device, dsla_last_error());
        dsla_clear_error();
        return;
    }
    uint16_t *qkv = NULL, *out = NULL;
    CHECK(dsla_cuda_malloc((void **)&qkv, (size_t)T * stride * 2));
    CHECK(dsla_cuda_malloc((void **)&out, (size_t)T * width * 2));
    CHECK(
        dsla_cuda_fill_uniform(stream, qkv, DSLA_DTYPE_BF16, (size_t)T * stride, -1.0f, 1.0f, 14));
    const dsla_attn_shape_t shape = {H, H, d};
    dsla_cuda_event_t e0, e1;
    CHECK(dsla_cuda_event_create(&e0));
    CHECK(dsla_cuda_event_create(&e1));
    float t[ATTN_REPS], first_ms = 0;
    int done = 0;
    for (int r = -2; r < ATTN_REPS; r++) {
        CHECK(dsla_cuda_event_record(e0, stream));
        if (dsla_cuda_attention_prefill_cudnn(c, stream, out, width, qkv, qkv + width,
                                              qkv + 2 * width, stride, T, &shape) != DSLA_OK) {
            printf("{\"what\":\"prefill_attention_cudnn\",\"device\":\"%s\",\"tokens\":%d,"
                   "\"error\":\"%s\"}\n",
                   device, T, dsla_last_error());
            dsla_clear_error();
            break;
        }
        CHECK(dsla_cuda_event_record(e1, stream));
        CHECK(dsla_cuda_event_sync(e1));
        if (r >= 0) CHECK(dsla_cuda_event_elapsed_ms(&t[done++], e0, e1));
        if (r == -2) CHECK(dsla_cuda_event_elapsed_ms(&first_ms, e0, e1));
    }
    const double flops = 4.0 * H * d * (double)T * (T + 1) / 2.0;
    if (done == ATTN_REPS) {
        const double ms = median(t, ATTN_REPS);
        printf("{\"what\":\"prefill_attention_cudnn\",\"shape\":{\"batch\":1,\"tokens\":%d,"
               "\"heads\":%d,\"head_dim\":%d,\"causal\":true,\"qkv\":\"bf16 fused rows\"},"
               "\"device\":\"%s\",\"cudnn_version\":%zu,\"median_ms\":%.4f,\"tflops\":%.1f,"
               "\"first_call_ms\":%.2f}\n",
               T, H, d, device, dsla_cuda_cudnn_version(c), ms, flops / (ms * 1e9), first_ms);
    }
    dsla_cuda_event_destroy(&e0);
    dsla_cuda_event_destroy(&e1);
    dsla_cuda_free((void **)&qkv);
    dsla_cuda_free((void **)&out);
    dsla_cuda_cudnn_destroy(&c);
}

typedef struct {
    dsla_model_config_t cfg;
    dsla_cuda_model_t *m;
    double copy_gbps;
    size_t block_bytes;
} bench_t;

static int count_attn(const dsla_layer_kind_t *kinds, int L) {
    int n = 0;
    for (int l = 0; l < L; l++)
        n += kinds[l] == DSLA_LAYER_ATTN;
    return n;
}

/* Weight bytes one decode step reads: every layer's projections as it runs, the MLPs, the head. */
static double step_weight_bytes(const dsla_model_config_t *c, int n_attn) {
    const double D = c->hidden_size, qw = (double)c->num_heads * c->head_dim;
    const double kvw = (double)c->num_kv_heads * c->head_dim, I = c->intermediate_size;
    const double attn = (qw + 2 * kvw) * D + D * qw, dsla = 5 * qw * D + D * qw;
    const double mlp = 3 * I * D, L = c->num_layers;
    return 2.0 * (n_attn * attn + (L - n_attn) * dsla + L * mlp + (double)c->vocab_size * D);
}

static const char *kind_label(double frac) {
    return frac == 0.0 ? "0" : frac == 1.0 ? "1" : "0.5";
}

static void prefill(bench_t *b, const dsla_layer_kind_t *kinds, int B, int C, double frac) {
    const int L = b->cfg.num_layers, n_attn = count_attn(kinds, L);
    const size_t blocks = (size_t)B * n_attn * ((C + DSLA_KV_BLOCK_TOKENS) / DSLA_KV_BLOCK_TOKENS);
    const size_t need = blocks * b->block_bytes;
    size_t free_b = 0, total = 0;
    CHECK(dsla_cuda_mem_info(&free_b, &total));
    if (need + MEM_MARGIN > free_b) {
        printf("{\"what\":\"prefill\",\"shape\":{\"batch\":%d,\"context\":%d,\"dsla_fraction\":%s},"
               "\"device\":\"%s\",\"skipped\":\"KV cache does not fit\",\"kv_bytes_needed\":%zu,"
               "\"device_bytes_free\":%zu}\n",
               B, C, kind_label(frac), device, need, free_b);
        return;
    }
    dsla_cuda_kv_t *kv = NULL;
    CHECK(dsla_cuda_kv_create(&kv, b->m, DSLA_DTYPE_BF16, (int)blocks, B));
    dsla_cuda_seq_t **seqs = calloc((size_t)B, sizeof *seqs);
    dsla_cuda_batch_item_t *items = calloc((size_t)B, sizeof *items);
    int32_t *tokens = malloc((size_t)C * sizeof *tokens);
    for (int t = 0; t < C; t++)
        tokens[t] = (int32_t)((t * 7919u + 13u) % (unsigned)b->cfg.vocab_size);
    const int chunk = PREFILL_CHUNK / B < C ? PREFILL_CHUNK / B : C;
    /* Warm-up, untimed: the first chunk once on sequences then dropped, so the timed pass does not
     * include a first shape's one-time costs (cuDNN's plan for a new bucket, ~50-80 ms; cuBLAS's
     * heuristics). Every timed chunk has the first one's shape or takes the same kernels. */
    for (int s = 0; s < B; s++) {
        CHECK(dsla_cuda_seq_create(&seqs[s], kv, kinds));
        items[s] = (dsla_cuda_batch_item_t){seqs[s], tokens, chunk, false};
    }
    CHECK(dsla_cuda_model_forward(b->m, items, B, NULL));
    for (int s = 0; s < B; s++) {
        dsla_cuda_seq_destroy(&seqs[s]);
        CHECK(dsla_cuda_seq_create(&seqs[s], kv, kinds));
    }
    dsla_cuda_event_t e0, e1;
    CHECK(dsla_cuda_event_create(&e0));
    CHECK(dsla_cuda_event_create(&e1));
    CHECK(dsla_cuda_event_record(e0, stream));
    for (int done = 0; done < C; done += chunk) {
        const int n = C - done < chunk ? C - done : chunk;
        for (int s = 0; s < B; s++)
            items[s] = (dsla_cuda_batch_item_t){seqs[s], tokens + done, n, false};
        CHECK(dsla_cuda_model_forward(b->m, items, B, NULL));
    }
    CHECK(dsla_cuda_event_record(e1, stream));
    CHECK(dsla_cuda_event_sync(e1));
    float ms = 0;
    CHECK(dsla_cuda_event_elapsed_ms(&ms, e0, e1));
    /* FLOPs: 2 per weight per token, plus causal attention over the attention layers. */
    const double tokens_total = (double)B * C;
    const double wflops = step_weight_bytes(&b->cfg, n_attn) * tokens_total; /* 2 B = 2 FLOPs */
    const double aflops =
        (double)n_attn * B * 4.0 * b->cfg.num_heads * b->cfg.head_dim * (double)C * (C + 1) / 2.0;
    printf("{\"what\":\"prefill\",\"shape\":{\"batch\":%d,\"context\":%d,\"chunk\":%d,"
           "\"dsla_fraction\":%s},\"device\":\"%s\",\"median_ms\":%.2f,\"tokens_per_s\":%.0f,"
           "\"tflops\":%.1f,\"repetitions\":1,\"warm\":true,\"cudnn_attention_layers\":%ld}\n",
           B, C, chunk, kind_label(frac), device, ms, tokens_total / (ms * 1e-3),
           (wflops + aflops) / (ms * 1e9), dsla_cuda_model_stats(b->m).cudnn_prefills);
    dsla_cuda_event_destroy(&e0);
    dsla_cuda_event_destroy(&e1);
    for (int s = 0; s < B; s++)
        dsla_cuda_seq_destroy(&seqs[s]);
    dsla_cuda_kv_destroy(&kv);
    free(seqs), free(items), free(tokens);
}

static void decode(bench_t *b, const dsla_layer_kind_t *kinds, int B, int C, double frac) {
    const dsla_model_config_t *c = &b->cfg;
    const int L = c->num_layers, n_attn = count_attn(kinds, L);
    const int steps = DECODE_WARMUP + DECODE_STEPS;
    const size_t blocks =
        (size_t)B * n_attn * ((C + 2 * steps + DSLA_KV_BLOCK_TOKENS) / DSLA_KV_BLOCK_TOKENS);
    const size_t state_bytes =
        (size_t)B * (L - n_attn) * 2 * c->num_heads * c->head_dim * c->head_dim * sizeof(float);
    const size_t need = blocks * b->block_bytes + state_bytes;
    size_t free_b = 0, total = 0;
    CHECK(dsla_cuda_mem_info(&free_b, &total));
    if (need + MEM_MARGIN > free_b) {
        printf("{\"what\":\"decode\",\"shape\":{\"batch\":%d,\"context\":%d,\"dsla_fraction\":%s},"
               "\"device\":\"%s\",\"skipped\":\"KV cache does not fit\",\"kv_bytes_needed\":%zu,"
               "\"device_bytes_free\":%zu}\n",
               B, C, kind_label(frac), device, need, free_b);
        return;
    }
    dsla_cuda_kv_t *kv = NULL;
    CHECK(dsla_cuda_kv_create(&kv, b->m, DSLA_DTYPE_BF16, (int)blocks, B));
    dsla_cuda_seq_t **seqs = calloc((size_t)B, sizeof *seqs);
    dsla_cuda_batch_item_t *items = calloc((size_t)B, sizeof *items);
    int32_t *tok = calloc((size_t)B, sizeof *tok);
    for (int s = 0; s < B; s++) {
        CHECK(dsla_cuda_seq_create(&seqs[s], kv, kinds));
        CHECK(dsla_cuda_seq_fill_synthetic(seqs[s], C, 1000u + (uint64_t)s));
        tok[s] = (int32_t)(s * 31 + 7);
        items[s] = (dsla_cuda_batch_item_t){seqs[s], &tok[s], 1, false};
    }
    const double bytes = step_weight_bytes(c, n_attn) +
                         (double)B * n_attn * (C + 1) * 2.0 * c->num_kv_heads * c->head_dim * 2 +
                         2.0 * state_bytes;
    const double floor_ms = bytes / (b->copy_gbps * 1e6);
    dsla_cuda_event_t e0, e1;
    CHECK(dsla_cuda_event_create(&e0));
    CHECK(dsla_cuda_event_create(&e1));
    for (int graphs = 0; graphs <= 1; graphs++) {
        dsla_cuda_model_set_graphs(b->m, graphs != 0);
        const dsla_cuda_model_stats_t before = dsla_cuda_model_stats(b->m);
        float t[DECODE_STEPS];
        for (int i = 0; i < steps; i++) {
            CHECK(dsla_cuda_event_record(e0, stream));
            CHECK(dsla_cuda_model_forward(b->m, items, B, NULL));
            CHECK(dsla_cuda_event_record(e1, stream));
            CHECK(dsla_cuda_event_sync(e1));
            if (i >= DECODE_WARMUP)
                CHECK(dsla_cuda_event_elapsed_ms(&t[i - DECODE_WARMUP], e0, e1));
        }
        const dsla_cuda_model_stats_t after = dsla_cuda_model_stats(b->m);
        const bool used_graphs = after.graph_replays > before.graph_replays;
        const double ms = median(t, DECODE_STEPS);
        printf("{\"what\":\"decode\",\"shape\":{\"batch\":%d,\"context\":%d,\"dsla_fraction\":%s,"
               "\"attn_layers\":%d},\"device\":\"%s\",\"graphs\":%s,\"median_ms\":%.3f,"
               "\"tokens_per_s\":%.1f,\"bytes_per_step\":%.0f,\"achieved_gbps\":%.1f,"
               "\"floor_ms\":%.3f,\"fraction_of_floor\":%.3f}\n",
               B, C, kind_label(frac), n_attn, device, used_graphs ? "true" : "false", ms,
               B / (ms * 1e-3), bytes, bytes / (ms * 1e6), floor_ms, floor_ms / ms);
        fflush(stdout);
    }
    dsla_cuda_event_destroy(&e0);
    dsla_cuda_event_destroy(&e1);
    for (int s = 0; s < B; s++)
        dsla_cuda_seq_destroy(&seqs[s]);
    dsla_cuda_kv_destroy(&kv);
    free(seqs), free(items), free(tok);
}

/* A serving step (issue 11): B decodes at context C plus one prompt chunk of P tokens after a
 * cached past, as the engine composes steps under load; timed with the one-token items run as one
 * batched decode call and, for comparison, one call per item (the version before). The floor is
 * the step accounting's (runtime/serve/step_stats.h): max(bytes / copy, FLOPs / bf16 rate). */
static void mixed(bench_t *b, int B, int C, int P, int past, const dsla_step_rates_t *rates) {
    const dsla_model_config_t *c = &b->cfg;
    const int L = c->num_layers, steps = DECODE_WARMUP + DECODE_STEPS;
    const size_t blocks =
        (size_t)L * ((size_t)B * ((C + 2 * steps + DSLA_KV_BLOCK_TOKENS) / DSLA_KV_BLOCK_TOKENS) +
                     (size_t)(past + P + DSLA_KV_BLOCK_TOKENS) / DSLA_KV_BLOCK_TOKENS + 1);
    dsla_cuda_kv_t *kv = NULL;
    CHECK(dsla_cuda_kv_create(&kv, b->m, DSLA_DTYPE_BF16, (int)blocks, B + 1));
    dsla_cuda_seq_t **seqs = calloc((size_t)B + 1, sizeof *seqs);
    dsla_cuda_batch_item_t *items = calloc((size_t)B + 1, sizeof *items);
    int32_t *tok = calloc((size_t)B + (size_t)P, sizeof *tok);
    for (int s = 0; s < B; s++) {
        CHECK(dsla_cuda_seq_create(&seqs[s], kv, NULL));
        CHECK(dsla_cuda_seq_fill_synthetic(seqs[s], C, 2000u + (uint64_t)s));
        tok[s] = (int32_t)(s * 31 + 7);
    }
    for (int t = 0; t < P; t++)
        tok[B + t] = (int32_t)((t * 7919u + 13u) % (unsigned)c->vocab_size);
    dsla_step_item_t *acct = calloc((size_t)B + 1, sizeof *acct);
    for (int s = 0; s < B; s++)
        acct[s] = (dsla_step_item_t){C, 1, 0, true};
    acct[B] = (dsla_step_item_t){past, P, 0, true};
    dsla_step_record_t rec;
    memset(&rec, 0, sizeof rec);
    const dsla_step_costs_t costs = dsla_step_costs_for(c, 2, 2);
    dsla_step_account(&rec, &costs, rates, acct, B + 1);
    dsla_cuda_event_t e0, e1;
    CHECK(dsla_cuda_event_create(&e0));
    CHECK(dsla_cuda_event_create(&e1));
    for (int runs = 0; runs <= 1; runs++) {
        dsla_cuda_model_set_decode_runs(b->m, runs != 0);
        float t[DECODE_STEPS];
        for (int i = 0; i < steps; i++) {
            CHECK(dsla_cuda_seq_create(&seqs[B], kv, NULL));
            if (past > 0) CHECK(dsla_cuda_seq_fill_synthetic(seqs[B], past, 99u + (uint64_t)i));
            for (int s = 0; s < B; s++)
                items[s] = (dsla_cuda_batch_item_t){seqs[s], &tok[s], 1, false};
            items[B] = (dsla_cuda_batch_item_t){seqs[B], tok + B, P, false};
            CHECK(dsla_cuda_event_record(e0, stream));
            CHECK(dsla_cuda_model_forward(b->m, items, B + 1, NULL));
            CHECK(dsla_cuda_event_record(e1, stream));
            CHECK(dsla_cuda_event_sync(e1));
            if (i >= DECODE_WARMUP)
                CHECK(dsla_cuda_event_elapsed_ms(&t[i - DECODE_WARMUP], e0, e1));
            dsla_cuda_seq_destroy(&seqs[B]);
        }
        const double ms = median(t, DECODE_STEPS);
        printf("{\"what\":\"mixed_step\",\"shape\":{\"batch\":%d,\"context\":%d,\"prefill\":%d,"
               "\"past\":%d},\"device\":\"%s\",\"decode_runs\":%s,\"median_ms\":%.3f,"
               "\"bytes_per_step\":%.0f,\"flops_per_step\":%.4g,\"floor_ms\":%.3f,"
               "\"fraction_of_floor\":%.3f}\n",
               B, C, P, past, device, runs ? "true" : "false", ms, rec.bytes, rec.flops,
               rec.floor_s * 1e3, rec.floor_s * 1e3 / ms);
        fflush(stdout);
    }
    dsla_cuda_model_set_decode_runs(b->m, true);
    dsla_cuda_event_destroy(&e0);
    dsla_cuda_event_destroy(&e1);
    for (int s = 0; s < B; s++)
        dsla_cuda_seq_destroy(&seqs[s]);
    dsla_cuda_kv_destroy(&kv);
    free(seqs), free(items), free(tok), free(acct);
}

/* "serving": the acceptance shapes of issue 11 on a model sized for a serving engine (256
 * sequences, 2304-token steps): decode at 128 x 1K with its floor, and mixed steps. */
static void serving_rows(bench_t *b) {
    dsla_step_rates_t rates;
    CHECK(dsla_step_rates_measure_cuda(&rates));
    printf("{\"what\":\"rates\",\"device\":\"%s\",\"copy_gbps\":%.1f,\"bf16_tflops\":%.1f}\n",
           device, rates.copy_bytes_per_s / 1e9, rates.matrix_flops_per_s / 1e12);
    dsla_layer_kind_t kinds[32];
    for (int l = 0; l < b->cfg.num_layers; l++)
        kinds[l] = DSLA_LAYER_ATTN;
    decode(b, kinds, 128, 1024, 0.0);
    decode(b, kinds, 64, 1024, 0.0);
    /* the shapes of the batch-1 and batch-8 tables at 4K, for the decode split's balance */
    decode(b, kinds, 1, 4000, 0.0);
    decode(b, kinds, 8, 4000, 0.0);
    mixed(b, 128, 1024, 512, 0, &rates);
    mixed(b, 128, 1024, 512, 1024, &rates);
    mixed(b, 128, 1024, 2048, 0, &rates);
}

int main(int argc, char **argv) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "bench_e2e_cuda: no CUDA device\n");
        return 0;
    }
    /* "quick": the 1K rows only, for a smoke run. "attention": prefill attention (ours and cuDNN's)
     * and batch-1 decode at each context, all attention layers (the attention targets). */
    const bool quick = argc > 1 && strcmp(argv[1], "quick") == 0;
    const bool attention_only = argc > 1 && strcmp(argv[1], "attention") == 0;
    const bool serving = argc > 1 && strcmp(argv[1], "serving") == 0;
    CHECK(dsla_cuda_stream_create(&stream));
    CHECK(dsla_cuda_device_name(device, sizeof device));
    bench_t b;
    memset(&b, 0, sizeof b);
    b.copy_gbps = copy_bandwidth();
    if (serving) {
        dsla_model_config_t *c = &b.cfg;
        c->hidden_size = 4096, c->num_layers = 32, c->num_heads = 32, c->num_kv_heads = 32;
        c->head_dim = 128, c->intermediate_size = 11008, c->vocab_size = 32000;
        c->max_position_embeddings = 32768, c->rms_norm_eps = 1e-5f, c->rope_theta = 10000.0f;
        c->bos_token_id = 1;
        const dsla_cuda_model_opts_t so = {DSLA_DTYPE_BF16, 2048 + 256, 256, 256, 4096, true};
        CHECK(dsla_cuda_model_create_random(&b.m, c, 7, &so, stream));
        b.block_bytes = dsla_cuda_kv_block_bytes(b.m, DSLA_DTYPE_BF16);
        serving_rows(&b);
        dsla_cuda_model_destroy(&b.m);
        dsla_cuda_stream_destroy(&stream);
        return 0;
    }
    const int attn_T[] = {1024, 4096, 8192, 16384};
    for (int i = 0; i < 4; i++)
        attention_prefill(attn_T[i]);
    for (int i = 0; i < 4; i++)
        attention_prefill_cudnn(attn_T[i]);

    dsla_model_config_t *c = &b.cfg;
    c->hidden_size = 4096, c->num_layers = 32, c->num_heads = 32, c->num_kv_heads = 32;
    c->head_dim = 128, c->intermediate_size = 11008, c->vocab_size = 32000;
    c->max_position_embeddings = 32768, c->rms_norm_eps = 1e-5f, c->rope_theta = 10000.0f;
    c->bos_token_id = 1;
    const int contexts[] = {1024, 4096, 16384}, batches[] = {1, 8, 64};
    const dsla_cuda_model_opts_t opts = {DSLA_DTYPE_BF16, PREFILL_CHUNK, 64, 64, 16384 + 128, true};
    CHECK(dsla_cuda_model_create_random(&b.m, c, 7, &opts, stream));
    b.block_bytes = dsla_cuda_kv_block_bytes(b.m, DSLA_DTYPE_BF16);
    printf("{\"what\":\"model\",\"shape\":{\"layers\":32,\"hidden\":4096,\"heads\":32,\"head_dim\":"
           "128,\"intermediate\":11008,\"vocab\":32000},\"device\":\"%s\",\"weight_bytes\":%zu,"
           "\"dsla_on_gpu\":%s}\n",
           device, dsla_cuda_model_weight_bytes(b.m),
           dsla_cuda_model_dsla_supported(b.m) ? "true" : "false");
    const int L = c->num_layers;
    dsla_layer_kind_t kinds[32];
    if (attention_only) {
        for (int l = 0; l < L; l++)
            kinds[l] = DSLA_LAYER_ATTN;
        prefill(&b, kinds, 1, 8192, 0.0);
        prefill(&b, kinds, 1, 8192, 0.0); /* the first pass builds cuBLAS's and cuDNN's plans */
        for (int ci = 0; ci < 3; ci++)
            decode(&b, kinds, 1, contexts[ci], 0.0);
        dsla_cuda_model_destroy(&b.m);
        dsla_cuda_stream_destroy(&stream);
        return 0;
    }
    const double fracs[] = {0.0, 0.5, 1.0};
    const int n_fracs = dsla_cuda_model_dsla_supported(b.m) ? 3 : 1;
    if (n_fracs == 1)
        printf("{\"what\":\"note\",\"text\":\"DSLA kernels not available: 0%% DSLA only\"}\n");
    for (int f = 0; f < n_fracs; f++) {
        /* 50%: every other layer (a conversion order interleaves in practice, too). */
        for (int l = 0; l < L; l++) {
            kinds[l] = (fracs[f] == 1.0 || (fracs[f] == 0.5 && l % 2 == 1)) ? DSLA_LAYER_DSLA
                                                                            : DSLA_LAYER_ATTN;
            if (kinds[l] == DSLA_LAYER_DSLA) CHECK(dsla_cuda_model_set_dsla_random(b.m, l, l));
        }
        for (int ci = 0; ci < (quick ? 1 : 3); ci++)
            for (int bi = 0; bi < 3; bi++) {
                prefill(&b, kinds, batches[bi], contexts[ci], fracs[f]);
                decode(&b, kinds, batches[bi], contexts[ci], fracs[f]);
            }
    }
    dsla_cuda_model_destroy(&b.m);
    dsla_cuda_stream_destroy(&stream);
    return 0;
}

#else

int main(void) {
    fprintf(stderr, "bench_e2e_cuda: built without CUDA\n");
    return 0;
}

#endif

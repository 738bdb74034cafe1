/* One layer's chained distillation on the GPU at Llama-2-7B's layer shape (D 4096, H 32, d 128,
 * I 11008, vocab 32000), timed end to end through the engine (runtime/distill, CUDA backend, bf16
 * teacher, TF32 training).
 *
 * The model has random bf16 weights (uniform +-1/sqrt(fan_in), norms 1) and --layers decoder layers
 * (default 2: layer 1 is then trained chained, on the hybrid whose layer 0 is already DSLA); it is
 * written as a Hugging Face directory under --dir and loaded like any teacher. Each of a 32-layer
 * model's layers trains exactly like this one; only its captures run more teacher layers, which
 * the row's per-layer forward cost accounts for.
 *
 * Prints JSON rows: the measured matrix rates (TF32 fp32 GEMM, bf16 GEMM at 8192^3), and per
 * converted layer: wall seconds, the training steps' tokens/s, the time outside the steps (captures
 * of the training pool and held-out streams, held-out scoring), the floor of a step (its GEMM
 * FLOPs at the measured TF32 rate; the DSLA core, element-wise work and the optimizer are left out,
 * so the floor is optimistic), the fraction reached, the projection to 2M training tokens, and the
 * same for the layer's whole run (teacher forwards of its captures and perplexity at the bf16
 * rate plus the steps: run_tokens_per_s, run_floor_s, run_fraction_of_floor).
 *
 * usage: bench_distill_cuda [--dir DIR] [--layers N] [--steps N] [--batch N] [--seq-len T]
 *                           [--train-seqs N] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kernels/kernels.h"
#include "runtime/core/clock.h"
#include "runtime/core/random.h"
#include "runtime/distill/distill.h"
#include "runtime/model/safetensors.h"

#ifdef DSLA_HAVE_CUDA

#include "kernels/kernels_cuda_train.h"

enum { D = 4096, H = 32, HD = 128, I = 11008, V = 32000, MAX_LAYERS = 8 };

static int fail(const char *what) {
    fprintf(stderr, "bench_distill_cuda: %s: %s\n", what, dsla_last_error());
    return 1;
}

/* Adds a [rows, cols] bf16 tensor of uniform(-1/sqrt(cols), 1/sqrt(cols)) values (or ones). */
static dsla_status_t add_random(dsla_st_writer_t *w, const char *name, int rows, int cols,
                                bool ones, uint64_t *rng) {
    const size_t n = (size_t)rows * (cols ? cols : 1);
    uint16_t *b = malloc(n * sizeof *b);
    if (!b) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for %s", name);
    const float scale = ones ? 0.0f : 1.0f / sqrtf((float)cols);
    for (size_t i = 0; i < n; i++) {
        const float u = (float)(dsla_splitmix64(rng) >> 40) / (float)(1 << 24) * 2.0f - 1.0f;
        b[i] = dsla_f32_to_bf16(ones ? 1.0f : u * scale);
    }
    const int64_t shape[2] = {rows, cols};
    dsla_status_t st = dsla_st_writer_add(w, name, DSLA_DTYPE_BF16, cols ? 2 : 1, shape, b);
    free(b);
    return st;
}

static dsla_status_t write_model(const char *dir, int layers) {
    char path[1024], name[128];
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return dsla_error(DSLA_ERR_IO, "cannot write %s", path);
    fprintf(f,
            "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
            "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_attention_heads\": %d, "
            "\"num_key_value_heads\": %d, \"head_dim\": %d, \"num_hidden_layers\": %d, "
            "\"vocab_size\": %d, \"max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-05, "
            "\"rope_theta\": 10000.0, \"hidden_act\": \"silu\", \"tie_word_embeddings\": false, "
            "\"bos_token_id\": 1, \"eos_token_id\": 2}\n",
            D, I, H, H, HD, layers, V);
    fclose(f);
    dsla_st_writer_t *w = NULL;
    DSLA_TRY(dsla_st_writer_create(&w));
    uint64_t rng = 42;
    dsla_status_t st = add_random(w, "model.embed_tokens.weight", V, D, false, &rng);
    static const char *attn[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    for (int l = 0; l < layers && st == DSLA_OK; l++) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        st = add_random(w, name, D, 0, true, &rng);
        for (int i = 0; i < 4 && st == DSLA_OK; i++) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.weight", l, attn[i]);
            st = add_random(w, name, D, D, false, &rng);
        }
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        if (st == DSLA_OK) st = add_random(w, name, D, 0, true, &rng);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate_proj.weight", l);
        if (st == DSLA_OK) st = add_random(w, name, I, D, false, &rng);
        snprintf(name, sizeof name, "model.layers.%d.mlp.up_proj.weight", l);
        if (st == DSLA_OK) st = add_random(w, name, I, D, false, &rng);
        snprintf(name, sizeof name, "model.layers.%d.mlp.down_proj.weight", l);
        if (st == DSLA_OK) st = add_random(w, name, D, I, false, &rng);
    }
    if (st == DSLA_OK) st = add_random(w, "model.norm.weight", D, 0, true, &rng);
    if (st == DSLA_OK) st = add_random(w, "lm_head.weight", V, D, false, &rng);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (st == DSLA_OK) st = dsla_st_writer_save(w, path);
    dsla_st_writer_destroy(&w);
    return st;
}

/* Median TFLOP/s of an n^3 GEMM: fp32 operands on TF32 tensor cores, or bf16 operands. */
static double gemm_rate(bool bf16, int n) {
    dsla_cuda_blas_t *h = NULL;
    void *a = NULL, *b = NULL, *c = NULL;
    const size_t e = bf16 ? 2 : 4, nn = (size_t)n * n;
    dsla_cuda_stream_t s = NULL;
    dsla_cuda_event_t t0 = NULL, t1 = NULL;
    double best = NAN;
    if (dsla_cuda_blas_create(&h) || dsla_cuda_malloc(&a, nn * e) || dsla_cuda_malloc(&b, nn * e) ||
        dsla_cuda_malloc(&c, nn * 4) || dsla_cuda_stream_create(&s) ||
        dsla_cuda_event_create(&t0) || dsla_cuda_event_create(&t1))
        goto out;
    dsla_cuda_fill_uniform(s, a, bf16 ? DSLA_DTYPE_BF16 : DSLA_DTYPE_F32, nn, -1, 1, 1);
    dsla_cuda_fill_uniform(s, b, bf16 ? DSLA_DTYPE_BF16 : DSLA_DTYPE_F32, nn, -1, 1, 2);
    float ms[9];
    for (int r = -2; r < 9; r++) {
        dsla_cuda_event_record(t0, s);
        dsla_status_t st =
            bf16 ? dsla_cuda_gemm(h, s, c, DSLA_DTYPE_F32, a, b, DSLA_DTYPE_BF16, n, n, n, 0.0f)
                 : dsla_cuda_gemm_f32(h, s, c, a, false, b, true, n, n, n, 0.0f,
                                      DSLA_CUDA_DSLA_MATH_TF32);
        dsla_cuda_event_record(t1, s);
        if (st != DSLA_OK || dsla_cuda_event_sync(t1) != DSLA_OK) goto out;
        if (r >= 0) dsla_cuda_event_elapsed_ms(&ms[r], t0, t1);
    }
    for (int i = 1; i < 9; i++) /* insertion sort for the median */
        for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
            float t = ms[j];
            ms[j] = ms[j - 1];
            ms[j - 1] = t;
        }
    best = 2.0 * n * (double)n * n / (ms[4] * 1e-3) / 1e12;
out:
    dsla_cuda_free(&a), dsla_cuda_free(&b), dsla_cuda_free(&c);
    dsla_cuda_event_destroy(&t0), dsla_cuda_event_destroy(&t1);
    dsla_cuda_stream_destroy(&s);
    dsla_cuda_blas_destroy(&h);
    return best;
}

typedef struct {
    double first[MAX_LAYERS], last[MAX_LAYERS]; /* times of step 1 and of the last step */
    int steps;
} timing_t;

static void on_progress(void *user, const dsla_distill_progress_t *p) {
    timing_t *t = user;
    if (p->step == 1) t->first[p->k] = dsla_clock_seconds();
    if (p->step == p->steps) t->last[p->k] = dsla_clock_seconds();
}

static long arg(int argc, char **argv, const char *name, long def) {
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0) return atol(argv[i + 1]);
    return def;
}

int main(int argc, char **argv) {
    if (dsla_cuda_device_count() == 0) {
        printf("{\"what\": \"distill_layer\", \"skipped\": \"no CUDA device\"}\n");
        return 0;
    }
    const char *dir = "/tmp/dsla-bench-7b-shaped";
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--dir") == 0) dir = argv[i + 1];
    const int layers = (int)arg(argc, argv, "--layers", 2);
    const int steps = (int)arg(argc, argv, "--steps", 200);
    const int batch = (int)arg(argc, argv, "--batch", 8);
    const int T = (int)arg(argc, argv, "--seq-len", 256);
    const int n_train = (int)arg(argc, argv, "--train-seqs", 64), n_eval = 8;
    if (layers < 1 || layers > MAX_LAYERS) return fail("--layers is outside 1..8");
    char name[64];
    dsla_cuda_device_name(name, sizeof name);
    const double tf32 = gemm_rate(false, 8192), bf16 = gemm_rate(true, 8192);
    printf("{\"what\": \"gemm_rate\", \"device\": \"%s\", \"shape\": \"8192^3\", "
           "\"tf32_tflops\": %.1f, \"bf16_tflops\": %.1f}\n",
           name, tf32, bf16);
    fflush(stdout);

    double t0 = dsla_clock_seconds();
    if (write_model(dir, layers) != DSLA_OK) return fail("writing the random model");
    dsla_model_t *model = NULL;
    if (dsla_model_load(&model, dir) != DSLA_OK) return fail("loading the random model");
    const double setup = dsla_clock_seconds() - t0;
    dsla_corpus_t train = {T, n_train, malloc((size_t)n_train * T * sizeof(int32_t))};
    dsla_corpus_t eval = {T, n_eval, malloc((size_t)n_eval * T * sizeof(int32_t))};
    uint64_t rng = 7;
    for (size_t i = 0; i < (size_t)n_train * T; i++)
        train.tokens[i] = (int32_t)(dsla_splitmix64(&rng) % V);
    for (size_t i = 0; i < (size_t)n_eval * T; i++)
        eval.tokens[i] = (int32_t)(dsla_splitmix64(&rng) % V);

    dsla_distill_params_t p = dsla_distill_params_default();
    p.layers = layers;
    p.steps = steps;
    p.batch = batch;
    p.order_mode = DSLA_ORDER_GIVEN; /* the entropy pass runs on the CPU */
    p.checkpoint_every = 0;
    p.optim = dsla_adamw_params_default(steps);
    dsla_distill_backend_t *be = NULL;
    const dsla_distill_cuda_opts_t o = {0, DSLA_DTYPE_BF16};
    if (dsla_distill_backend_cuda_create(&be, model, &o) != DSLA_OK) return fail("CUDA backend");
    static dsla_distill_report_t rep;
    timing_t tm = {{0}, {0}, steps};
    const dsla_distill_callbacks_t cb = {on_progress, NULL, &tm, NULL, NULL, NULL};
    char out[1100];
    /* A directory of this run's own: the engine would keep versions an earlier run left. */
    snprintf(out, sizeof out, "%s/versions-%ld", dir, (long)getpid());
    dsla_status_t st = dsla_distill_run_on(be, model, &train, &eval, &p, out, &cb, &rep);
    if (st != DSLA_OK) return fail("distillation");

    /* A step's GEMM FLOPs (2 per multiply-add): forward 5 projections + Wo + the MLP's 3; backward
     * Wo's 2, the projections' 5 weight gradients and the frozen MLP's 3 input gradients. */
    const double R = (double)batch * T, proj = 2.0 * R * D * H * HD, mlp = 2.0 * R * D * I;
    const double step_flops = (5 * proj + proj + 3 * mlp) + (2 * proj + 5 * proj + 3 * mlp);
    const double floor_ms = step_flops / (tf32 * 1e12) * 1e3;
    /* One teacher layer's forward per token at the bf16 rate (4 attention projections, the MLP;
     * the attention core left out). */
    const double layer_fwd_flops_per_token = 2.0 * (4.0 * D * D + 3.0 * D * I);
    /* The layer's whole run (captures, held-out scoring, steps): teacher-layer forwards of its
     * captures (inputs through max(l, 1) layers, targets through l + 1, for the pool and the
     * held-out sequences) and of the hybrid's held-out perplexity (all layers) at the bf16 rate,
     * the steps and two held-out student forwards at the TF32 rate. */
    const double attn_core_per_token = 2.0 * T * D; /* causal QK^T and PV, averaged over t */
    const double layer_fwd_per_token = layer_fwd_flops_per_token + attn_core_per_token;
    for (int k = 0; k < rep.n_converted; k++) {
        const dsla_distill_layer_report_t *c = &rep.converted[k];
        const int l = c->layer;
        const double pool_tokens = (double)(n_train + n_eval) * T;
        const double teacher_flops =
            layer_fwd_per_token *
            (pool_tokens * ((l > 0 ? l : 1) + (l + 1)) + (double)n_eval * T * layers);
        const double student_eval_flops = 2.0 * (double)n_eval * T / R * (6 * proj + 3 * mlp);
        const double run_floor_s = teacher_flops / (bf16 * 1e12) +
                                   (steps * step_flops + student_eval_flops) / (tf32 * 1e12);
        const double train_s = tm.last[k] - tm.first[k];
        const double step_ms = steps > 1 ? train_s / (steps - 1) * 1e3 : NAN;
        const double tok_s = R / (step_ms * 1e-3);
        const double captured_tokens = 2.0 * (n_train + n_eval) * T; /* inputs and targets */
        printf("{\"what\": \"distill_layer\", \"device\": \"%s\", \"shape\": {\"layer\": %d, "
               "\"k\": %d, \"chained_after\": %d, \"batch\": %d, \"tokens\": %d, \"steps\": %d, "
               "\"train_seqs\": %d, \"D\": %d, \"I\": %d}, \"seconds\": %.2f, "
               "\"step_ms\": %.2f, \"train_tokens_per_s\": %.0f, \"outside_steps_s\": %.2f, "
               "\"captured_tokens\": %.0f, \"teacher_layer_fwd_tflop_per_1k_tokens\": %.3f, "
               "\"floor_step_ms\": %.2f, \"fraction_of_floor\": %.3f, "
               "\"projected_s_for_2M_tokens\": %.0f, \"run_tokens_per_s\": %.0f, "
               "\"run_floor_s\": %.2f, \"run_fraction_of_floor\": %.3f, "
               "\"eval_mse_init\": %.4g, \"eval_mse\": %.4g}\n",
               name, c->layer, k + 1, k, batch, T, steps, n_train, D, I, c->seconds, step_ms, tok_s,
               c->seconds - train_s, captured_tokens, layer_fwd_flops_per_token * 1e3 / 1e12,
               floor_ms, floor_ms / step_ms, 2e6 / tok_s, steps * R / c->seconds, run_floor_s,
               run_floor_s / c->seconds, c->init_eval_mse, c->eval_mse);
    }
    printf("{\"what\": \"distill_setup\", \"model_write_and_load_s\": %.1f, \"bf16_rate_tflops\": "
           "%.1f}\n",
           setup, bf16);
    dsla_distill_backend_destroy(&be);
    dsla_model_destroy(&model);
    dsla_corpus_free(&train);
    dsla_corpus_free(&eval);
    return 0;
}

#else

int main(void) {
    printf("{\"what\": \"distill_layer\", \"skipped\": \"built without CUDA\"}\n");
    return 0;
}

#endif

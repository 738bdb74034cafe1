/* CPU inference throughput: prefill tokens/s for an N-token prompt and decode tokens/s over S steps
 * after it, for one or more Hugging Face model directories. One JSON object per measurement.
 *
 * usage: bench_cpu_infer [--tokens N] [--steps S] [--reps R] [MODEL_DIR...]
 * Model directories come from the arguments, else DSLA_MODEL, else ../shared/models/stories260K-hf.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "runtime/model/llama.h"

enum { MAX_REPS = 64 };

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static const char *basename_of(const char *path) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    const char *p = path + len;
    while (p > path && p[-1] != '/')
        p--;
    return p;
}

static void emit(const char *what, const char *model, int tokens, int context, double ms) {
    printf("{\"what\":\"%s\",\"model\":\"%s\",\"tokens\":%d,\"context\":%d,\"median_ms\":%.3f,"
           "\"tokens_per_s\":%.1f,\"device\":\"cpu\",\"threads\":%d}\n",
           what, model, tokens, context, ms, tokens / (ms / 1e3), dsla_cpu_threads());
    fflush(stdout);
}

static int fail(const char *what, dsla_status_t s) {
    fprintf(stderr, "bench_cpu_infer: %s: %s: %s\n", what, dsla_status_name(s), dsla_last_error());
    return 1;
}

static int bench_model(const char *dir, int n_prompt, int steps, int reps) {
    dsla_model_t *m = NULL;
    dsla_status_t s = dsla_model_load(&m, dir);
    if (s != DSLA_OK) return fail("load", s);
    const dsla_model_config_t *cfg = dsla_model_config(m);
    if (n_prompt + steps > cfg->max_position_embeddings) {
        fprintf(stderr, "bench_cpu_infer: %d prompt + %d decode tokens exceed %s's context of %d\n",
                n_prompt, steps, dir, cfg->max_position_embeddings);
        dsla_model_destroy(&m);
        return 2;
    }
    int32_t *prompt = malloc((size_t)n_prompt * sizeof *prompt);
    float *logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    uint64_t x = 0x243f6a8885a308d3ull; /* fixed prompt: any ids will do for timing */
    for (int i = 0; i < n_prompt; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = (int32_t)((x >> 33) % (uint64_t)cfg->vocab_size);
    }
    int blocks_per_layer = (n_prompt + steps + DSLA_KV_BLOCK_TOKENS - 1) / DSLA_KV_BLOCK_TOKENS;
    dsla_kv_pool_t *pool = NULL;
    s = dsla_kv_pool_create(&pool, cfg, blocks_per_layer * cfg->num_layers);
    double prefill[MAX_REPS], decode[MAX_REPS];
    /* One untimed round first: it grows the model's scratch and warms caches and BLAS threads. */
    for (int r = -1; r < reps && s == DSLA_OK; r++) {
        dsla_sequence_t *seq = NULL;
        s = dsla_sequence_create(&seq, pool, cfg);
        if (s != DSLA_OK) break;
        dsla_batch_item_t item = {seq, prompt, n_prompt, false};
        double t0 = now_ms();
        s = dsla_model_forward(m, &item, 1, logits);
        double t1 = now_ms();
        for (int i = 0; i < steps && s == DSLA_OK; i++) {
            int32_t next = dsla_cpu_argmax(logits, cfg->vocab_size);
            item = (dsla_batch_item_t){seq, &next, 1, false};
            s = dsla_model_forward(m, &item, 1, logits);
        }
        double t2 = now_ms();
        dsla_sequence_destroy(&seq);
        if (r >= 0) prefill[r] = t1 - t0, decode[r] = t2 - t1;
    }
    int rc = 0;
    if (s != DSLA_OK) {
        rc = fail("forward", s);
    } else {
        const char *name = basename_of(dir);
        emit("cpu_prefill", name, n_prompt, n_prompt, median(prefill, reps));
        emit("cpu_decode", name, steps, n_prompt + steps, median(decode, reps));
    }
    dsla_kv_pool_destroy(&pool);
    dsla_model_destroy(&m);
    free(prompt);
    free(logits);
    return rc;
}

int main(int argc, char **argv) {
    int n_prompt = 128, steps = 128, reps = 5;
    const char *dirs[64];
    int n_dirs = 0;
    for (int i = 1; i < argc; i++) {
        int *opt = !strcmp(argv[i], "--tokens")  ? &n_prompt
                   : !strcmp(argv[i], "--steps") ? &steps
                   : !strcmp(argv[i], "--reps")  ? &reps
                                                 : NULL;
        if (opt && i + 1 < argc) {
            *opt = atoi(argv[++i]);
        } else if (argv[i][0] != '-' && n_dirs < 64) {
            dirs[n_dirs++] = argv[i];
        } else {
            fprintf(stderr, "usage: %s [--tokens N] [--steps S] [--reps R] [MODEL_DIR...]\n",
                    argv[0]);
            return 2;
        }
    }
    if (n_prompt < 1 || steps < 0 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "bench_cpu_infer: need --tokens >= 1, --steps >= 0, 1 <= --reps <= %d\n",
                MAX_REPS);
        return 2;
    }
    if (n_dirs == 0) {
        const char *env = getenv("DSLA_MODEL");
        dirs[n_dirs++] = env && *env ? env : "../shared/models/stories260K-hf";
    }
    int rc = 0;
    for (int i = 0; i < n_dirs; i++)
        rc |= bench_model(dirs[i], n_prompt, steps, reps);
    return rc;
}

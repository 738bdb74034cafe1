/* Random Llama models on disk (random_model.h). */
#include "runtime/model/random_model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/core/random.h"
#include "runtime/core/tensor.h"
#include "runtime/model/safetensors.h"

enum { PATH_CAP = 4096, NAME_CAP = 128, THREADS_MAX = 64 };

typedef struct {
    char name[NAME_CAP];
    int64_t rows, cols; /* cols 0: a vector of rows values (a norm, all ones) */
    float bound;        /* uniform in +-bound */
} tensor_spec_t;

typedef struct {
    uint16_t *out;
    size_t n;
    float bound;
    uint64_t stream; /* (seed, tensor) folded; each block adds its index */
    int first, stride;
} fill_job_t;

static void *fill_blocks(void *arg) {
    const fill_job_t *j = arg;
    const size_t blocks = (j->n + DSLA_RANDOM_BLOCK - 1) / DSLA_RANDOM_BLOCK;
    for (size_t b = (size_t)j->first; b < blocks; b += (size_t)j->stride) {
        uint64_t state = j->stream ^ (b * 0xd1b54a32d192ed03ull);
        const size_t end = b * DSLA_RANDOM_BLOCK + DSLA_RANDOM_BLOCK < j->n
                               ? b * DSLA_RANDOM_BLOCK + DSLA_RANDOM_BLOCK
                               : j->n;
        for (size_t i = b * DSLA_RANDOM_BLOCK; i < end; i++) {
            const double u = (double)(dsla_splitmix64(&state) >> 11) * 0x1.0p-53; /* [0, 1) */
            j->out[i] = dsla_f32_to_bf16((float)((2.0 * u - 1.0) * j->bound));
        }
    }
    return NULL;
}

/* The tensor's bf16 values, drawn by threads workers. */
static dsla_status_t draw(const tensor_spec_t *t, uint64_t seed, uint64_t index, int threads,
                          uint16_t **out) {
    const size_t n = (size_t)t->rows * (size_t)(t->cols ? t->cols : 1);
    uint16_t *v = malloc(n * sizeof *v);
    if (!v) return dsla_error_oom("random model: %s (%zu values)", t->name, n);
    if (!t->cols) {
        const uint16_t one = dsla_f32_to_bf16(1.0f);
        for (size_t i = 0; i < n; i++)
            v[i] = one;
        *out = v;
        return DSLA_OK;
    }
    uint64_t s = seed;
    const uint64_t stream = dsla_splitmix64(&s) ^ (index * 0x9e3779b97f4a7c15ull);
    pthread_t tids[THREADS_MAX];
    fill_job_t jobs[THREADS_MAX];
    bool started[THREADS_MAX] = {false};
    for (int i = 0; i < threads; i++)
        jobs[i] = (fill_job_t){v, n, t->bound, stream, i, threads};
    for (int i = 1; i < threads; i++)
        started[i] = pthread_create(&tids[i], NULL, fill_blocks, &jobs[i]) == 0;
    fill_blocks(&jobs[0]);
    for (int i = 1; i < threads; i++) /* a worker that could not start: its blocks done here */
        started[i] ? (void)pthread_join(tids[i], NULL) : (void)fill_blocks(&jobs[i]);
    *out = v;
    return DSLA_OK;
}

static dsla_status_t write_shard(const tensor_spec_t *ts, int nt, uint64_t seed, uint64_t *index,
                                 int threads, const char *path, uint64_t *bytes) {
    dsla_st_writer_t *w = NULL;
    DSLA_TRY(dsla_st_writer_create(&w));
    dsla_status_t st = DSLA_OK;
    for (int i = 0; i < nt && st == DSLA_OK; i++) {
        uint16_t *v = NULL;
        st = draw(&ts[i], seed, (*index)++, threads, &v);
        const int64_t shape[2] = {ts[i].rows, ts[i].cols};
        if (st == DSLA_OK)
            st = dsla_st_writer_add(w, ts[i].name, DSLA_DTYPE_BF16, ts[i].cols ? 2 : 1, shape, v);
        *bytes += (uint64_t)ts[i].rows * (uint64_t)(ts[i].cols ? ts[i].cols : 1) * 2;
        free(v);
    }
    if (st == DSLA_OK) st = dsla_st_writer_set_metadata(w, "format", "pt");
    if (st == DSLA_OK) st = dsla_st_writer_save(w, path);
    dsla_st_writer_destroy(&w);
    return st;
}

static tensor_spec_t matrix(int64_t rows, int64_t cols, double bound, const char *fmt, int l) {
    tensor_spec_t t = {.rows = rows, .cols = cols, .bound = (float)bound};
    snprintf(t.name, sizeof t.name, fmt, l);
    return t;
}

/* The tensors of decoder layer l, in the loader's order. */
static int layer_tensors(const dsla_model_config_t *c, int l, tensor_spec_t *t) {
    const int64_t D = c->hidden_size, I = c->intermediate_size;
    const int64_t q = (int64_t)c->num_heads * c->head_dim,
                  kv = (int64_t)c->num_kv_heads * c->head_dim;
    const double in_d = 1.0 / sqrt((double)D), in_q = 1.0 / sqrt((double)q);
    int n = 0;
    t[n++] = matrix(D, 0, 0, "model.layers.%d.input_layernorm.weight", l);
    t[n++] = matrix(q, D, in_d, "model.layers.%d.self_attn.q_proj.weight", l);
    t[n++] = matrix(kv, D, in_d, "model.layers.%d.self_attn.k_proj.weight", l);
    t[n++] = matrix(kv, D, in_d, "model.layers.%d.self_attn.v_proj.weight", l);
    t[n++] = matrix(D, q, in_q, "model.layers.%d.self_attn.o_proj.weight", l);
    t[n++] = matrix(D, 0, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    t[n++] = matrix(I, D, in_d, "model.layers.%d.mlp.gate_proj.weight", l);
    t[n++] = matrix(I, D, in_d, "model.layers.%d.mlp.up_proj.weight", l);
    t[n++] = matrix(D, I, 1.0 / sqrt((double)I), "model.layers.%d.mlp.down_proj.weight", l);
    return n;
}

static int head_tensors(const dsla_model_config_t *c, tensor_spec_t *t) {
    const int64_t D = c->hidden_size, V = c->vocab_size;
    int n = 0;
    /* Embedding rows of unit scale, so that the first norm sees O(1) activations. */
    t[n++] = matrix(V, D, 1.0, "model.embed_tokens.weight", 0);
    t[n++] = matrix(D, 0, 0, "model.norm.weight", 0);
    if (!c->tie_word_embeddings) t[n++] = matrix(V, D, 1.0 / sqrt((double)D), "lm_head.weight", 0);
    return n;
}

static dsla_status_t index_add(json_t *map, const tensor_spec_t *t, int n, const char *file) {
    for (int i = 0; i < n; i++)
        if (json_object_set_new(map, t[i].name, json_string(file)) != 0)
            return dsla_error_oom("random model: the index");
    return DSLA_OK;
}

static dsla_status_t save_index(json_t *map, uint64_t total, const char *dir) {
    char path[PATH_CAP], tmp[PATH_CAP + 8];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    json_t *root =
        json_pack("{s:{s:I},s:O}", "metadata", "total_size", (json_int_t)total, "weight_map", map);
    if (!root) return dsla_error_oom("random model: the index");
    const int rc = json_dump_file(root, tmp, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    if (rc != 0 || rename(tmp, path) != 0)
        return dsla_error(DSLA_ERR_IO, "random model: writing %s: %s", path, strerror(errno));
    return DSLA_OK;
}

dsla_status_t dsla_random_model_write(const dsla_model_config_t *cfg, uint64_t seed,
                                      const char *dir, int threads) {
    if (!cfg || !dir)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_random_model_write: NULL argument");
    DSLA_TRY(dsla_config_validate(cfg, "random model"));
    char path[PATH_CAP];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (access(path, F_OK) == 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "random model: %s exists; give an empty or new directory", path);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return dsla_error(DSLA_ERR_IO, "random model: mkdir %s: %s", dir, strerror(errno));
    if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1) threads = 1;
    if (threads > THREADS_MAX) threads = THREADS_MAX;

    json_t *map = json_object();
    if (!map) return dsla_error_oom("random model: the index");
    const int shards = cfg->num_layers + 1;
    uint64_t index = 0, total = 0;
    tensor_spec_t t[9];
    dsla_status_t st = DSLA_OK;
    for (int s = 0; s < shards && st == DSLA_OK; s++) {
        char file[64];
        snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", s + 1, shards);
        const int n = s == 0 ? head_tensors(cfg, t) : layer_tensors(cfg, s - 1, t);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        st = write_shard(t, n, seed, &index, threads, path, &total);
        if (st == DSLA_OK) st = index_add(map, t, n, file);
    }
    if (st == DSLA_OK) st = save_index(map, total, dir);
    json_decref(map);
    /* config.json last: a directory with one is complete. */
    if (st == DSLA_OK) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        dsla_model_config_t c = *cfg;
        snprintf(c.torch_dtype, sizeof c.torch_dtype, "bfloat16");
        st = dsla_config_save(&c, path);
    }
    return st == DSLA_OK ? DSLA_OK : dsla_error_wrap(st, "writing a random model to %s: ", dir);
}

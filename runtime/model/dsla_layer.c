/* DSLA layer weights: creation, initialisation from the teacher, checksums, layer version files. */
#include "runtime/model/dsla_layer.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <unistd.h>
#include <xxhash.h>

#include "runtime/core/random.h"
#include "runtime/core/tensor.h"
#include "runtime/model/safetensors.h"

/* The tensors of a layer version, in ascending order of their names: the order of the checksum
 * and of the file. */
typedef enum {
    T_ALPHA,
    T_BG1,
    T_WG1,
    T_BG2,
    T_WG2,
    T_WK,
    T_WO,
    T_WQ,
    T_WV,
    T_COUNT,
} tensor_id_t;

static const char *const tensor_suffix[T_COUNT] = {
    [T_ALPHA] = "alpha_list",  [T_BG1] = "gk_proj.bias",    [T_WG1] = "gk_proj.weight",
    [T_BG2] = "gk_proj2.bias", [T_WG2] = "gk_proj2.weight", [T_WK] = "k_proj.weight",
    [T_WO] = "o_proj.weight",  [T_WQ] = "q_proj.weight",    [T_WV] = "v_proj.weight",
};

/* Where tensor id lives in l and its shape. */
static float *tensor_of(const dsla_dsla_layer_t *l, tensor_id_t id, int *ndim, int64_t shape[2]) {
    const int64_t hd = (int64_t)l->heads * l->head_dim, D = l->model_dim;
    *ndim = 2;
    shape[0] = hd;
    shape[1] = D;
    switch (id) {
    case T_ALPHA:
        *ndim = 1;
        shape[0] = 2;
        return l->alpha;
    case T_BG1:
    case T_BG2:
        *ndim = 1;
        return id == T_BG1 ? l->bg1 : l->bg2;
    case T_WG1:
        return l->wg1;
    case T_WG2:
        return l->wg2;
    case T_WK:
        return l->wk;
    case T_WO:
        shape[0] = D;
        shape[1] = hd;
        return l->wo;
    case T_WQ:
        return l->wq;
    case T_WV:
        return l->wv;
    case T_COUNT:
        break;
    }
    return NULL;
}

static size_t numel_of(int ndim, const int64_t *shape) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= (size_t)shape[i];
    return n;
}

static void tensor_name(char *dst, size_t cap, int layer, tensor_id_t id) {
    snprintf(dst, cap, "model.layers.%d.self_attn.%s", layer, tensor_suffix[id]);
}

dsla_status_t dsla_dsla_layer_create(dsla_dsla_layer_t **out, const dsla_model_config_t *cfg,
                                     int layer) {
    *out = NULL;
    if (layer < 0 || layer >= cfg->num_layers)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "DSLA layer: index %d is outside the model's %d layers", layer,
                          cfg->num_layers);
    dsla_dsla_layer_t *l = calloc(1, sizeof *l);
    if (!l) return dsla_error_oom("DSLA layer");
    l->layer = layer;
    l->heads = cfg->num_heads;
    l->head_dim = cfg->head_dim;
    l->model_dim = cfg->hidden_size;
    const size_t hd = (size_t)l->heads * (size_t)l->head_dim, D = (size_t)l->model_dim;
    /* Six matrices of [H d, D] or [D, H d], two biases, alpha. */
    l->numel = 6 * hd * D + 2 * hd + 2;
    l->data = dsla_calloc(l->numel, sizeof(float));
    if (!l->data) {
        size_t numel = l->numel;
        free(l);
        return dsla_error_oom("DSLA layer %d: %zu weights", layer, numel);
    }
    float *p = l->data;
    float **matrices[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->wg1, &l->wg2};
    for (size_t i = 0; i < sizeof matrices / sizeof matrices[0]; i++, p += hd * D)
        *matrices[i] = p;
    l->bg1 = p;
    l->bg2 = p + hd;
    l->alpha = p + 2 * hd;
    *out = l;
    return DSLA_OK;
}

void dsla_dsla_layer_destroy(dsla_dsla_layer_t **l) {
    if (!l || !*l) return;
    dsla_free((*l)->data);
    free(*l);
    *l = NULL;
}

/* Uniform in [lo, hi) from the top 24 bits: exactly representable as float. */
static float uniform(uint64_t *state, float lo, float hi) {
    float u = (float)(dsla_splitmix64(state) >> 40) * (1.0f / 16777216.0f);
    return lo + (hi - lo) * u;
}

static bool same_shape(const dsla_dsla_layer_t *l, const dsla_model_config_t *c) {
    return l->heads == c->num_heads && l->head_dim == c->head_dim && l->model_dim == c->hidden_size;
}

dsla_status_t dsla_dsla_layer_init_from_teacher(dsla_dsla_layer_t *l, const dsla_model_t *m,
                                                int layer_index, uint64_t seed) {
    const dsla_model_config_t *c = dsla_model_config(m);
    const dsla_llama_layer_t *t = dsla_model_layer(m, layer_index);
    if (!t)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "DSLA init: layer %d is outside the teacher's %d layers", layer_index,
                          c->num_layers);
    if (!same_shape(l, c))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "DSLA init: the layer has %d heads of %d over width %d, the teacher %d "
                          "heads of %d over width %d",
                          l->heads, l->head_dim, l->model_dim, c->num_heads, c->head_dim,
                          c->hidden_size);
    const size_t d = (size_t)c->head_dim, D = (size_t)c->hidden_size, H = (size_t)c->num_heads;
    const size_t hd = H * d, group = H / (size_t)c->num_kv_heads;
    const size_t head_rows = d * D; /* floats of one head's rows in a [*, D] projection */
    l->layer = layer_index;
    memcpy(l->wq, t->wq, hd * D * sizeof(float));
    memcpy(l->wo, t->wo, D * hd * sizeof(float));
    for (size_t h = 0; h < H; h++) {
        memcpy(l->wk + h * head_rows, t->wk + (h / group) * head_rows, head_rows * sizeof(float));
        memcpy(l->wv + h * head_rows, t->wv + (h / group) * head_rows, head_rows * sizeof(float));
    }
    memset(l->wg1, 0, hd * D * sizeof(float));
    for (size_t i = 0; i < hd && i < D; i++)
        l->wg1[i * D + i] = 1.0f;
    memset(l->bg1, 0, hd * sizeof(float));
    memset(l->bg2, 0, hd * sizeof(float));
    uint64_t rng = seed;
    const float bound = 1.0f / sqrtf((float)D);
    for (size_t i = 0; i < hd * D; i++)
        l->wg2[i] = uniform(&rng, -bound, bound);
    l->alpha[0] = uniform(&rng, 0.0f, 1.0f);
    l->alpha[1] = uniform(&rng, 0.0f, 1.0f);
    return DSLA_OK;
}

dsla_dsla_layer_weights_t dsla_dsla_layer_weights(const dsla_dsla_layer_t *l) {
    return (dsla_dsla_layer_weights_t){
        .wq = l->wq,
        .wk = l->wk,
        .wv = l->wv,
        .wo = l->wo,
        .wg1 = l->wg1,
        .bg1 = l->bg1,
        .wg2 = l->wg2,
        .bg2 = l->bg2,
        .alpha = l->alpha,
    };
}

uint64_t dsla_dsla_layer_checksum(const dsla_dsla_layer_t *l) {
    XXH64_state_t st;
    XXH64_reset(&st, 0);
    for (int id = 0; id < T_COUNT; id++) {
        int ndim;
        int64_t shape[2];
        const float *p = tensor_of(l, (tensor_id_t)id, &ndim, shape);
        XXH64_update(&st, p, numel_of(ndim, shape) * sizeof(float));
    }
    return XXH64_digest(&st);
}

/* ---- layer version files ---- */

static dsla_status_t set_meta(dsla_st_writer_t *w, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static dsla_status_t set_meta(dsla_st_writer_t *w, const char *key, const char *fmt, ...) {
    char value[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof value, fmt, ap);
    va_end(ap);
    return dsla_st_writer_set_metadata(w, key, value);
}

/* "3,1,4": one decimal index per layer; at most 11 characters each with the comma. */
static char *format_order(const dsla_layer_version_meta_t *meta) {
    size_t cap = (size_t)meta->n_order * 12 + 1;
    char *s = malloc(cap);
    if (!s) return NULL;
    size_t len = 0;
    s[0] = '\0';
    for (int i = 0; i < meta->n_order; i++)
        len += (size_t)snprintf(s + len, cap - len, i ? ",%d" : "%d", meta->order[i]);
    return s;
}

static dsla_status_t write_version(dsla_st_writer_t *w, const dsla_dsla_layer_t *l,
                                   const dsla_layer_version_meta_t *meta) {
    for (int id = 0; id < T_COUNT; id++) {
        char name[128];
        int ndim;
        int64_t shape[2];
        const float *p = tensor_of(l, (tensor_id_t)id, &ndim, shape);
        tensor_name(name, sizeof name, l->layer, (tensor_id_t)id);
        DSLA_TRY(dsla_st_writer_add(w, name, DSLA_DTYPE_F32, ndim, shape, p));
    }
    if (meta->n_order < 0 || meta->n_order > DSLA_LAYER_ORDER_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "n_order %d is outside 0..%d", meta->n_order,
                          DSLA_LAYER_ORDER_MAX);
    char *order = format_order(meta);
    if (!order) return dsla_error_oom("the order");
    dsla_status_t s = dsla_st_writer_set_metadata(w, "order", order);
    free(order);
    DSLA_TRY(s);
    /* %.17g round-trips every double exactly (and writes nan for unknown numbers). */
    DSLA_TRY(set_meta(w, "layer", "%d", l->layer));
    DSLA_TRY(set_meta(w, "version", "%d", meta->version));
    DSLA_TRY(set_meta(w, "steps", "%ld", meta->steps));
    DSLA_TRY(set_meta(w, "train_loss", "%.17g", meta->train_loss));
    DSLA_TRY(set_meta(w, "eval_mse", "%.17g", meta->eval_mse));
    DSLA_TRY(set_meta(w, "eval_ppl", "%.17g", meta->eval_ppl));
    DSLA_TRY(set_meta(w, "teacher_ppl", "%.17g", meta->teacher_ppl));
    DSLA_TRY(set_meta(w, "teacher_checksum", "%016" PRIx64, meta->teacher_checksum));
    DSLA_TRY(set_meta(w, "kl_weight", "%.17g", meta->kl_weight));
    DSLA_TRY(set_meta(w, "single_state", "%d", l->single_state ? 1 : 0));
    return set_meta(w, "checksum", "%016" PRIx64, dsla_dsla_layer_checksum(l));
}

static void meta_defaults(dsla_layer_version_meta_t *meta) {
    memset(meta, 0, sizeof *meta);
    meta->train_loss = meta->eval_mse = meta->eval_ppl = meta->teacher_ppl = NAN;
}

/* The rename of a sealed file into place, made durable like the writer's own. */
static dsla_status_t rename_durably(const char *from, const char *to) {
    if (rename(from, to) != 0)
        return dsla_error(DSLA_ERR_IO, "cannot rename %s to %s: %s", from, to, strerror(errno));
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", to);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    dsla_status_t st =
        fd >= 0 && fsync(fd) == 0
            ? DSLA_OK
            : dsla_error(DSLA_ERR_IO, "%s: cannot sync directory: %s", dir, strerror(errno));
    if (fd >= 0) close(fd);
    return st;
}

dsla_status_t dsla_dsla_layer_save_sealed(const dsla_dsla_layer_t *l, const char *path,
                                          const dsla_layer_version_meta_t *meta,
                                          const dsla_layer_key_t *key) {
    dsla_layer_version_meta_t defaults;
    if (!meta) {
        meta_defaults(&defaults);
        meta = &defaults;
    }
    char sealing[4096];
    if (key && (size_t)snprintf(sealing, sizeof sealing, "%s.seal", path) >= sizeof sealing)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "saving DSLA layer %d: path %s too long",
                          l->layer, path);
    dsla_st_writer_t *w = NULL;
    DSLA_TRY(dsla_st_writer_create(&w));
    dsla_status_t s = write_version(w, l, meta);
    if (s == DSLA_OK && key)
        s = dsla_st_writer_set_metadata(w, DSLA_LAYER_MAC_META, DSLA_LAYER_MAC_UNSEALED);
    if (s == DSLA_OK) s = dsla_st_writer_save(w, key ? sealing : path);
    dsla_st_writer_destroy(&w);
    if (s == DSLA_OK && key) {
        s = dsla_layer_mac_seal(key, sealing);
        if (s == DSLA_OK) s = rename_durably(sealing, path);
        if (s != DSLA_OK) unlink(sealing);
    }
    if (s != DSLA_OK) return dsla_error_wrap(s, "saving DSLA layer %d to %s: ", l->layer, path);
    return DSLA_OK;
}

dsla_status_t dsla_dsla_layer_save(const dsla_dsla_layer_t *l, const char *path,
                                   const dsla_layer_version_meta_t *meta) {
    return dsla_dsla_layer_save_sealed(l, path, meta, NULL);
}

/* Metadata parsers: absent keys keep the default; present ones must parse whole. */
static dsla_status_t meta_long(const dsla_safetensors_t *st, const char *key, long lo, long hi,
                               long *out) {
    const char *v = dsla_safetensors_metadata(st, key);
    if (!v) return DSLA_OK;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return dsla_error(DSLA_ERR_FORMAT,
                          "metadata '%s' is \"%s\", expected an integer in %ld..%ld", key, v, lo,
                          hi);
    *out = x;
    return DSLA_OK;
}

static dsla_status_t meta_int(const dsla_safetensors_t *st, const char *key, int lo, int hi,
                              int *out) {
    long x = *out;
    DSLA_TRY(meta_long(st, key, lo, hi, &x));
    *out = (int)x;
    return DSLA_OK;
}

static dsla_status_t meta_double(const dsla_safetensors_t *st, const char *key, double *out) {
    const char *v = dsla_safetensors_metadata(st, key);
    if (!v) return DSLA_OK;
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end)
        return dsla_error(DSLA_ERR_FORMAT, "metadata '%s' is \"%s\", expected a number", key, v);
    *out = x;
    return DSLA_OK;
}

static dsla_status_t meta_hex64(const dsla_safetensors_t *st, const char *key, bool *present,
                                uint64_t *out) {
    const char *v = dsla_safetensors_metadata(st, key);
    if (present) *present = v != NULL;
    if (!v) return DSLA_OK;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 16);
    if (errno || strlen(v) != 16 || *end)
        return dsla_error(DSLA_ERR_FORMAT, "metadata '%s' is \"%s\", expected 16 hex digits", key,
                          v);
    *out = (uint64_t)x;
    return DSLA_OK;
}

static dsla_status_t meta_order(const dsla_safetensors_t *st, int num_layers,
                                dsla_layer_version_meta_t *meta) {
    const char *v = dsla_safetensors_metadata(st, "order");
    if (!v || !*v) return DSLA_OK;
    const char *p = v;
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x >= num_layers || (*end && *end != ','))
            return dsla_error(DSLA_ERR_FORMAT,
                              "metadata 'order' is \"%s\", expected comma-separated layer "
                              "indices below %d",
                              v, num_layers);
        if (meta->n_order == DSLA_LAYER_ORDER_MAX)
            return dsla_error(DSLA_ERR_FORMAT, "metadata 'order' lists more than %d layers",
                              DSLA_LAYER_ORDER_MAX);
        meta->order[meta->n_order++] = (int)x;
        if (!*end) return DSLA_OK;
        p = end + 1;
    }
}

/* Without "layer" metadata (the reference's files), the file must hold exactly one layer. */
static dsla_status_t find_layer_index(const dsla_safetensors_t *st, int num_layers, int *layer) {
    if (dsla_safetensors_metadata(st, "layer"))
        return meta_int(st, "layer", 0, num_layers - 1, layer);
    int found = -1;
    for (size_t i = 0; i < dsla_safetensors_count(st); i++) {
        int idx, end = 0;
        const char *name = dsla_safetensors_at(st, i)->name;
        if (sscanf(name, "model.layers.%d.self_attn.q_proj.weight%n", &idx, &end) != 1 ||
            name[end] != '\0')
            continue;
        if (found >= 0 && idx != found)
            return dsla_error(DSLA_ERR_FORMAT,
                              "no 'layer' metadata, and the file holds layers %d and %d", found,
                              idx);
        found = idx;
    }
    if (found < 0 || found >= num_layers)
        return dsla_error(DSLA_ERR_FORMAT,
                          "no 'layer' metadata and no model.layers.N.self_attn.q_proj.weight "
                          "with N below %d",
                          num_layers);
    *layer = found;
    return DSLA_OK;
}

static dsla_status_t read_version(dsla_dsla_layer_t **out, const dsla_safetensors_t *st,
                                  const dsla_model_config_t *cfg, dsla_layer_version_meta_t *meta) {
    int layer = 0, single = 0;
    DSLA_TRY(find_layer_index(st, cfg->num_layers, &layer));
    DSLA_TRY(meta_int(st, "single_state", 0, 1, &single));
    long steps = 0;
    DSLA_TRY(meta_int(st, "version", 0, INT32_MAX, &meta->version));
    DSLA_TRY(meta_long(st, "steps", 0, LONG_MAX, &steps));
    meta->steps = steps;
    DSLA_TRY(meta_double(st, "train_loss", &meta->train_loss));
    DSLA_TRY(meta_double(st, "eval_mse", &meta->eval_mse));
    DSLA_TRY(meta_double(st, "eval_ppl", &meta->eval_ppl));
    DSLA_TRY(meta_double(st, "teacher_ppl", &meta->teacher_ppl));
    DSLA_TRY(meta_hex64(st, "teacher_checksum", NULL, &meta->teacher_checksum));
    DSLA_TRY(meta_double(st, "kl_weight", &meta->kl_weight));
    DSLA_TRY(meta_order(st, cfg->num_layers, meta));
    bool has_checksum = false;
    uint64_t want = 0;
    DSLA_TRY(meta_hex64(st, "checksum", &has_checksum, &want));

    dsla_dsla_layer_t *l = NULL;
    DSLA_TRY(dsla_dsla_layer_create(&l, cfg, layer));
    l->single_state = single != 0;
    dsla_status_t s = DSLA_OK;
    for (int id = 0; id < T_COUNT && s == DSLA_OK; id++) {
        char name[128];
        int ndim;
        int64_t shape[2];
        float *p = tensor_of(l, (tensor_id_t)id, &ndim, shape);
        tensor_name(name, sizeof name, layer, (tensor_id_t)id);
        s = dsla_safetensors_read_f32(st, name, ndim, shape, p);
    }
    if (s == DSLA_OK && has_checksum) {
        uint64_t got = dsla_dsla_layer_checksum(l);
        if (got != want)
            s = dsla_error(DSLA_ERR_FORMAT,
                           "checksum mismatch: the tensors hash to %016" PRIx64
                           ", the metadata says %016" PRIx64 " (the file is corrupt)",
                           got, want);
    }
    if (s != DSLA_OK) {
        dsla_dsla_layer_destroy(&l);
        return s;
    }
    *out = l;
    return DSLA_OK;
}

dsla_status_t dsla_dsla_layer_load(dsla_dsla_layer_t **out, const char *path,
                                   const dsla_model_config_t *cfg,
                                   dsla_layer_version_meta_t *meta_out) {
    *out = NULL;
    dsla_layer_version_meta_t meta;
    meta_defaults(&meta);
    dsla_safetensors_t *st = NULL;
    dsla_status_t s = dsla_safetensors_open(&st, path);
    if (s == DSLA_OK) s = read_version(out, st, cfg, &meta);
    dsla_safetensors_close(&st);
    if (s != DSLA_OK) return dsla_error_wrap(s, "loading DSLA layer version %s: ", path);
    if (meta_out) *meta_out = meta;
    return DSLA_OK;
}

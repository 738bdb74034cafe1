/* Llama checkpoint loading and the batched CPU forward pass with per-layer token-mixing dispatch:
 * softmax attention over the paged KV cache, or a DSLA layer over the sequence's fixed state. */
#include "runtime/model/llama.h"

#include <math.h>
#include <stdio.h>
#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "runtime/core/tensor.h"
#include "runtime/model/dsla_layer.h"
#include "runtime/model/safetensors.h"

/* Activations of one forward pass, kept in the model and grown on demand so that decode steps reuse
 * them instead of allocating. Capacities count tokens (rows) and items. */
typedef struct {
    int cap_rows;
    int cap_items;
    float *x;        /* [rows, D] residual stream */
    float *xn;       /* [rows, D] normalised input of a sub-layer; final-norm rows at the end */
    float *mix_out;  /* [rows, D] output of the token mixer (after its output projection) */
    float *qkv;      /* [rows, (H + 2 H_kv) d] */
    float *attn;     /* [rows, H d] */
    float *gate_up;  /* [rows, 2 I] */
    float *act;      /* [rows, I] */
    float *rope_cos; /* [rows, d/2] */
    float *rope_sin;
    int32_t *positions; /* [rows] */
    /* Gathered copies for a layer whose kinds differ across the batch (sub-batching). */
    float *sub_x;
    float *sub_out;
    float *sub_cos;
    float *sub_sin;
    int *row_start;               /* [items] first row of each item in the batch */
    dsla_batch_item_t *sub_items; /* [items] */
    int *sub_row_start;           /* [items] */
    int *item_ids;                /* [items] 0, 1, 2, ...: the ids of a whole batch */
    int *sub_ids;                 /* [items] batch index of each sub-batch item */
} forward_scratch_t;

/* Buffers only a batch with DSLA layers needs, so that an all-attention deployment never pays for
 * them; reserved before the first layer runs. */
typedef struct {
    size_t cap_rows;
    float *proj;     /* 5 x [rows, H d]: q, k, v, a1, a2 */
    size_t cap_work; /* floats */
    float *work;     /* the chunked kernel's workspace for the longest item */
    float *spare;    /* [H, d, d] the recurrent kernel's second state for single-state layers */
} dsla_scratch_t;

struct dsla_model {
    dsla_model_config_t cfg;
    float *embed;      /* [V, D] */
    float *final_norm; /* [D] */
    float *lm_head;    /* [V, D]; == embed when tied */
    dsla_llama_layer_t *layers;
    float *inv_freq; /* [d/2] */
    float *scores;   /* [max_position_embeddings] one attention row, sized once at load */
    /* [num_layers] installed DSLA layers (borrowed; NULL: none), run by unpinned sequences. */
    const dsla_dsla_layer_t **dsla_layers;
    forward_scratch_t scratch;
    dsla_scratch_t dsla;
    bool batch_invariant; /* dsla_model_set_batch_invariant */
};

/* ---- loading ---- */

static float *alloc_floats(size_t n) {
    return dsla_alloc(n * sizeof(float));
}

static dsla_status_t read_matrix(const dsla_safetensors_t *st, float *dst, int64_t rows,
                                 int64_t cols, const char *fmt, int layer) {
    char name[128];
    snprintf(name, sizeof name, fmt, layer);
    int64_t shape[2] = {rows, cols};
    return dsla_safetensors_read_f32(st, name, cols ? 2 : 1, shape, dst);
}

static dsla_status_t load_layer(dsla_model_t *m, const dsla_safetensors_t *st, int l) {
    const dsla_model_config_t *c = &m->cfg;
    const int64_t D = c->hidden_size, q_rows = (int64_t)c->num_heads * c->head_dim;
    const int64_t kv_rows = (int64_t)c->num_kv_heads * c->head_dim, I = c->intermediate_size;
    dsla_llama_layer_t *w = &m->layers[l];
    w->attn_norm = alloc_floats((size_t)D);
    w->mlp_norm = alloc_floats((size_t)D);
    w->wqkv = alloc_floats((size_t)((q_rows + 2 * kv_rows) * D));
    w->wo = alloc_floats((size_t)(D * q_rows));
    w->w_gate_up = alloc_floats((size_t)(2 * I * D));
    w->w_down = alloc_floats((size_t)(D * I));
    if (!w->attn_norm || !w->mlp_norm || !w->wqkv || !w->wo || !w->w_gate_up || !w->w_down)
        return dsla_error_oom("layer %d's weights", l);
    w->wq = w->wqkv;
    w->wk = w->wq + q_rows * D;
    w->wv = w->wk + kv_rows * D;
    w->w_gate = w->w_gate_up;
    w->w_up = w->w_gate_up + I * D;
    DSLA_TRY(read_matrix(st, w->attn_norm, D, 0, "model.layers.%d.input_layernorm.weight", l));
    DSLA_TRY(read_matrix(st, w->wq, q_rows, D, "model.layers.%d.self_attn.q_proj.weight", l));
    DSLA_TRY(read_matrix(st, w->wk, kv_rows, D, "model.layers.%d.self_attn.k_proj.weight", l));
    DSLA_TRY(read_matrix(st, w->wv, kv_rows, D, "model.layers.%d.self_attn.v_proj.weight", l));
    DSLA_TRY(read_matrix(st, w->wo, D, q_rows, "model.layers.%d.self_attn.o_proj.weight", l));
    DSLA_TRY(
        read_matrix(st, w->mlp_norm, D, 0, "model.layers.%d.post_attention_layernorm.weight", l));
    DSLA_TRY(read_matrix(st, w->w_gate, I, D, "model.layers.%d.mlp.gate_proj.weight", l));
    DSLA_TRY(read_matrix(st, w->w_up, I, D, "model.layers.%d.mlp.up_proj.weight", l));
    DSLA_TRY(read_matrix(st, w->w_down, D, I, "model.layers.%d.mlp.down_proj.weight", l));
    return DSLA_OK;
}

static dsla_status_t load_weights(dsla_model_t *m, const dsla_safetensors_t *st) {
    const dsla_model_config_t *c = &m->cfg;
    const int64_t D = c->hidden_size, V = c->vocab_size;
    m->embed = alloc_floats((size_t)(V * D));
    m->final_norm = alloc_floats((size_t)D);
    m->layers = calloc((size_t)c->num_layers, sizeof *m->layers);
    if (!m->embed || !m->final_norm || !m->layers) return dsla_error_oom("the embeddings");
    DSLA_TRY(read_matrix(st, m->embed, V, D, "model.embed_tokens.weight", 0));
    DSLA_TRY(read_matrix(st, m->final_norm, D, 0, "model.norm.weight", 0));
    for (int l = 0; l < c->num_layers; l++)
        DSLA_TRY(load_layer(m, st, l));
    /* transformers ties lm_head to the embeddings whenever tie_word_embeddings is set (a stored
     * lm_head.weight is then ignored); an untied model must carry its own head. */
    if (c->tie_word_embeddings) {
        m->lm_head = m->embed;
        return DSLA_OK;
    }
    m->lm_head = alloc_floats((size_t)(V * D));
    if (!m->lm_head) return dsla_error_oom("lm_head");
    return read_matrix(st, m->lm_head, V, D, "lm_head.weight", 0);
}

static dsla_status_t model_load(dsla_model_t *m, const char *dir) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "model directory path is too long");
    DSLA_TRY(dsla_config_load(&m->cfg, path));
    const dsla_model_config_t *c = &m->cfg;
    if (c->head_dim % 2 != 0)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "%s: head_dim %d must be even for RoPE", path,
                          c->head_dim);
    m->inv_freq = alloc_floats((size_t)c->head_dim / 2);
    m->scores = alloc_floats((size_t)c->max_position_embeddings);
    m->dsla_layers = calloc((size_t)c->num_layers, sizeof *m->dsla_layers);
    if (!m->inv_freq || !m->scores || !m->dsla_layers) return dsla_error_oom("the model's tables");
    dsla_rope_params_t rope = {
        .theta = c->rope_theta,
        .llama3 = c->rope_type == DSLA_ROPE_LLAMA3,
        .factor = c->rope_factor,
        .low_freq_factor = c->rope_low_freq_factor,
        .high_freq_factor = c->rope_high_freq_factor,
        .original_max_position = c->rope_original_max_position,
    };
    dsla_cpu_rope_inv_freq(m->inv_freq, c->head_dim, &rope);

    dsla_safetensors_t *st = NULL;
    DSLA_TRY(dsla_safetensors_open(&st, dir));
    dsla_status_t s = load_weights(m, st);
    dsla_safetensors_close(&st);
    return s;
}

dsla_status_t dsla_model_load(dsla_model_t **out, const char *dir) {
    *out = NULL;
    dsla_model_t *m = calloc(1, sizeof *m);
    if (!m) return dsla_error_oom("a model");
    dsla_status_t s = model_load(m, dir);
    if (s != DSLA_OK) {
        dsla_model_destroy(&m);
        return dsla_error_wrap(s, "loading model %s: ", dir);
    }
    *out = m;
    return DSLA_OK;
}

static void scratch_free(forward_scratch_t *s) {
    float *floats[] = {s->x,       s->xn,      s->mix_out,  s->qkv,      s->attn,
                       s->gate_up, s->act,     s->rope_cos, s->rope_sin, s->sub_x,
                       s->sub_out, s->sub_cos, s->sub_sin};
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++)
        dsla_free(floats[i]);
    free(s->positions);
    free(s->row_start);
    free(s->sub_items);
    free(s->sub_row_start);
    free(s->item_ids);
    free(s->sub_ids);
    memset(s, 0, sizeof *s);
}

static void dsla_scratch_free(dsla_scratch_t *s) {
    dsla_free(s->proj);
    dsla_free(s->work);
    dsla_free(s->spare);
    memset(s, 0, sizeof *s);
}

void dsla_model_destroy(dsla_model_t **m) {
    if (!m || !*m) return;
    dsla_model_t *p = *m;
    scratch_free(&p->scratch);
    dsla_scratch_free(&p->dsla);
    free(p->dsla_layers);
    dsla_free(p->scores);
    if (p->layers) {
        for (int l = 0; l < p->cfg.num_layers; l++) {
            dsla_llama_layer_t *w = &p->layers[l];
            dsla_free(w->attn_norm);
            dsla_free(w->mlp_norm);
            dsla_free(w->wqkv);
            dsla_free(w->wo);
            dsla_free(w->w_gate_up);
            dsla_free(w->w_down);
        }
        free(p->layers);
    }
    if (p->lm_head != p->embed) dsla_free(p->lm_head);
    dsla_free(p->embed);
    dsla_free(p->final_norm);
    dsla_free(p->inv_freq);
    free(p);
    *m = NULL;
}

const dsla_model_config_t *dsla_model_config(const dsla_model_t *m) {
    return &m->cfg;
}

const dsla_llama_layer_t *dsla_model_layer(const dsla_model_t *m, int layer) {
    if (layer < 0 || layer >= m->cfg.num_layers) return NULL;
    return &m->layers[layer];
}

const float *dsla_model_embeddings(const dsla_model_t *m) {
    return m->embed;
}

const float *dsla_model_final_norm(const dsla_model_t *m) {
    return m->final_norm;
}

const float *dsla_model_lm_head(const dsla_model_t *m) {
    return m->lm_head;
}

const float *dsla_model_inv_freq(const dsla_model_t *m) {
    return m->inv_freq;
}

uint64_t dsla_model_checksum(const dsla_model_t *m) {
    const dsla_model_config_t *c = &m->cfg;
    const size_t D = (size_t)c->hidden_size, V = (size_t)c->vocab_size;
    const size_t I = (size_t)c->intermediate_size, d = (size_t)c->head_dim;
    const size_t q_rows = (size_t)c->num_heads * d, kv_rows = (size_t)c->num_kv_heads * d;
    XXH64_state_t st;
    XXH64_reset(&st, 0);
    XXH64_update(&st, m->embed, V * D * sizeof(float));
    for (int l = 0; l < c->num_layers; l++) {
        const dsla_llama_layer_t *w = &m->layers[l];
        XXH64_update(&st, w->attn_norm, D * sizeof(float));
        XXH64_update(&st, w->wqkv, (q_rows + 2 * kv_rows) * D * sizeof(float));
        XXH64_update(&st, w->wo, D * q_rows * sizeof(float));
        XXH64_update(&st, w->mlp_norm, D * sizeof(float));
        XXH64_update(&st, w->w_gate_up, 2 * I * D * sizeof(float));
        XXH64_update(&st, w->w_down, D * I * sizeof(float));
    }
    XXH64_update(&st, m->final_norm, D * sizeof(float));
    if (m->lm_head != m->embed) XXH64_update(&st, m->lm_head, V * D * sizeof(float));
    return XXH64_digest(&st);
}

dsla_status_t dsla_model_set_dsla_layer(dsla_model_t *m, int layer, const dsla_dsla_layer_t *w) {
    const dsla_model_config_t *c = &m->cfg;
    if (layer < 0 || layer >= c->num_layers)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "set DSLA layer: index %d is outside the model's %d layers", layer,
                          c->num_layers);
    if (w && (w->layer != layer || w->heads != c->num_heads || w->head_dim != c->head_dim ||
              w->model_dim != c->hidden_size))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "set DSLA layer %d: the layer was made for layer %d with %d heads of %d "
                          "over width %d; the model has %d heads of %d over width %d",
                          layer, w->layer, w->heads, w->head_dim, w->model_dim, c->num_heads,
                          c->head_dim, c->hidden_size);
    m->dsla_layers[layer] = w;
    return DSLA_OK;
}

const dsla_dsla_layer_t *dsla_model_dsla_layer(const dsla_model_t *m, int layer) {
    if (layer < 0 || layer >= m->cfg.num_layers) return NULL;
    return m->dsla_layers[layer];
}

void dsla_model_set_batch_invariant(dsla_model_t *m, bool on) {
    m->batch_invariant = on;
}

/* y [rows, n] = x [rows, k] W^T. Batch-invariant: one GEMV per row, because OpenBLAS's SGEMM rounds
 * a row differently with the number of rows and the row's place among them, and its GEMV does not.
 */
static void linear(const dsla_model_t *m, float *y, const float *x, const float *w, int rows, int n,
                   int k) {
    if (!m->batch_invariant) {
        dsla_cpu_gemm(y, x, w, rows, n, k);
        return;
    }
    for (int r = 0; r < rows; r++)
        dsla_cpu_gemm(y + (size_t)r * n, x + (size_t)r * k, w, 1, n, k);
}

/* ---- scratch ---- */

static dsla_status_t scratch_reserve(dsla_model_t *m, int rows, int items) {
    forward_scratch_t *s = &m->scratch;
    if (rows <= s->cap_rows && items <= s->cap_items) return DSLA_OK;
    /* Grow geometrically so that a slowly growing batch does not reallocate every step. */
    int new_rows = rows > 2 * s->cap_rows ? rows : 2 * s->cap_rows;
    int new_items = items > 2 * s->cap_items ? items : 2 * s->cap_items;
    scratch_free(s);
    const dsla_model_config_t *c = &m->cfg;
    const size_t R = (size_t)new_rows, D = (size_t)c->hidden_size, d = (size_t)c->head_dim;
    const size_t qkv = (size_t)(c->num_heads + 2 * c->num_kv_heads) * d;
    const size_t I = (size_t)c->intermediate_size;
    s->x = alloc_floats(R * D);
    s->xn = alloc_floats(R * D);
    s->mix_out = alloc_floats(R * D);
    s->qkv = alloc_floats(R * qkv);
    s->attn = alloc_floats(R * (size_t)c->num_heads * d);
    s->gate_up = alloc_floats(R * 2 * I);
    s->act = alloc_floats(R * I);
    s->rope_cos = alloc_floats(R * d / 2);
    s->rope_sin = alloc_floats(R * d / 2);
    s->sub_x = alloc_floats(R * D);
    s->sub_out = alloc_floats(R * D);
    s->sub_cos = alloc_floats(R * d / 2);
    s->sub_sin = alloc_floats(R * d / 2);
    s->positions = malloc(R * sizeof *s->positions);
    s->row_start = malloc((size_t)new_items * sizeof *s->row_start);
    s->sub_items = malloc((size_t)new_items * sizeof *s->sub_items);
    s->sub_row_start = malloc((size_t)new_items * sizeof *s->sub_row_start);
    s->item_ids = malloc((size_t)new_items * sizeof *s->item_ids);
    s->sub_ids = malloc((size_t)new_items * sizeof *s->sub_ids);
    if (!s->x || !s->xn || !s->mix_out || !s->qkv || !s->attn || !s->gate_up || !s->act ||
        !s->rope_cos || !s->rope_sin || !s->sub_x || !s->sub_out || !s->sub_cos || !s->sub_sin ||
        !s->positions || !s->row_start || !s->sub_items || !s->sub_row_start || !s->item_ids ||
        !s->sub_ids) {
        scratch_free(s);
        return dsla_error_oom("the activations of %d tokens in %d sequences", rows, items);
    }
    for (int i = 0; i < new_items; i++)
        s->item_ids[i] = i;
    s->cap_rows = new_rows;
    s->cap_items = new_items;
    return DSLA_OK;
}

/* The DSLA weights a sequence runs layer with: its pinned version, else the model's installed one.
 */
static const dsla_dsla_layer_t *dsla_weights_for(const dsla_model_t *m, const dsla_sequence_t *seq,
                                                 int layer) {
    const dsla_dsla_layer_t *w = dsla_sequence_dsla_layer(seq, layer);
    return w ? w : m->dsla_layers[layer];
}

/* Sizes the DSLA buffers for this batch before any layer runs, so that a forward pass that has
 * started cannot fail half-way with some DSLA states already advanced. */
static dsla_status_t dsla_scratch_reserve(dsla_model_t *m, const dsla_batch_item_t *items,
                                          int n_items, int rows) {
    const dsla_model_config_t *c = &m->cfg;
    dsla_scratch_t *s = &m->dsla;
    size_t work = 0;
    bool any = false;
    for (int i = 0; i < n_items; i++) {
        bool has_dsla = false;
        for (int l = 0; l < c->num_layers && !has_dsla; l++)
            has_dsla = dsla_sequence_layer_kind(items[i].seq, l) == DSLA_LAYER_DSLA;
        if (!has_dsla) continue;
        any = true;
        const dsla_dsla_dims_t dims = {1, items[i].n_tokens, c->num_heads, c->head_dim};
        size_t need = dsla_cpu_dsla_chunked_workspace_floats(&dims);
        work = need > work ? need : work;
    }
    if (!any) return DSLA_OK;
    const size_t hd = (size_t)c->num_heads * (size_t)c->head_dim;
    if (!s->spare) s->spare = alloc_floats(hd * (size_t)c->head_dim);
    if ((size_t)rows > s->cap_rows) {
        dsla_free(s->proj);
        s->cap_rows = 0;
        s->proj = alloc_floats(5 * (size_t)rows * hd);
        if (s->proj) s->cap_rows = (size_t)rows;
    }
    if (work > s->cap_work) {
        dsla_free(s->work);
        s->cap_work = 0;
        s->work = alloc_floats(work);
        if (s->work) s->cap_work = work;
    }
    if (!s->spare || !s->proj || !s->work)
        return dsla_error_oom("the DSLA activations of %d tokens", rows);
    return DSLA_OK;
}

/* ---- token mixing, dispatched per layer on each sequence's plan ---- */

/* A sub-batch of items that run one layer with the same kind; their rows are back to back. */
typedef struct {
    const dsla_batch_item_t *items;
    int n_items;
    int n_rows;
    const float *x;        /* [n_rows, D] the layer's normalised input */
    const float *rope_cos; /* [n_rows, d/2] */
    const float *rope_sin;
    float *out;     /* [n_rows, D] the mixer's output after its output projection */
    const int *ids; /* [n_items] each item's index in the whole batch */
    float *entropy; /* NULL, or [batch items, num_layers]: see dsla_forward_capture_t */
} mix_batch_t;

typedef dsla_status_t (*layer_mixer_fn)(dsla_model_t *m, int layer, const mix_batch_t *b);

/* Mean over heads of the entropy -sum p ln p of query row q's attention over the first visible
 * cached positions of layer (DESIGN.md 5.1's conversion order). Scores are formed as the attention
 * kernel forms them; the sums run in double. */
static float attention_entropy(dsla_model_t *m, dsla_sequence_t *seq, int layer, const float *q,
                               int visible) {
    const dsla_model_config_t *c = &m->cfg;
    const int d = c->head_dim, group = c->num_heads / c->num_kv_heads;
    const float scale = 1.0f / sqrtf((float)d);
    float *scores = m->scores;
    double total = 0.0;
    for (int h = 0; h < c->num_heads; h++) {
        const float *qh = q + (size_t)h * d;
        float max = -INFINITY;
        for (int t = 0; t < visible; t++) {
            const float *kt = dsla_sequence_key_slot(seq, layer, t) + (size_t)(h / group) * d;
            float dot = 0.0f;
            for (int j = 0; j < d; j++)
                dot += qh[j] * kt[j];
            scores[t] = dot * scale;
            max = scores[t] > max ? scores[t] : max;
        }
        /* With p_t = e_t / Z and e_t = exp(s_t - max): -sum p ln p = ln Z - sum e_t (s_t - max) /
         * Z.
         */
        double z = 0.0, weighted = 0.0;
        for (int t = 0; t < visible; t++) {
            double e = exp((double)scores[t] - max);
            z += e;
            weighted += e * ((double)scores[t] - max);
        }
        total += log(z) - weighted / z;
    }
    /* Rounding may step a hair outside [0, ln visible], the range of any distribution's entropy. */
    double mean = total / c->num_heads;
    mean = mean < 0.0 ? 0.0 : mean;
    mean = mean > log((double)visible) ? log((double)visible) : mean;
    return (float)mean;
}

static dsla_status_t mix_attention(dsla_model_t *m, int layer, const mix_batch_t *b) {
    const dsla_model_config_t *c = &m->cfg;
    const dsla_llama_layer_t *w = &m->layers[layer];
    forward_scratch_t *s = &m->scratch;
    const int D = c->hidden_size, d = c->head_dim, H = c->num_heads, Hkv = c->num_kv_heads;
    const int q_width = H * d, kv_width = Hkv * d, qkv_width = q_width + 2 * kv_width;
    linear(m, s->qkv, b->x, w->wqkv, b->n_rows, qkv_width, D);
    dsla_cpu_rope_apply(s->qkv, b->n_rows, qkv_width, H, d, b->rope_cos, b->rope_sin);
    dsla_cpu_rope_apply(s->qkv + q_width, b->n_rows, qkv_width, Hkv, d, b->rope_cos, b->rope_sin);
    const dsla_attn_shape_t shape = {.n_heads = H, .n_kv_heads = Hkv, .head_dim = d};
    int row = 0;
    for (int it = 0; it < b->n_items; it++) {
        dsla_sequence_t *seq = b->items[it].seq;
        const int past = dsla_sequence_length(seq), n = b->items[it].n_tokens;
        const float *qkv = s->qkv + (size_t)row * qkv_width;
        for (int i = 0; i < n; i++) {
            const float *k = qkv + (size_t)i * qkv_width + q_width;
            memcpy(dsla_sequence_key_slot(seq, layer, past + i), k, (size_t)kv_width * sizeof *k);
            memcpy(dsla_sequence_value_slot(seq, layer, past + i), k + kv_width,
                   (size_t)kv_width * sizeof *k);
        }
        dsla_kv_pool_t *pool = dsla_sequence_pool(seq);
        const dsla_paged_kv_t kv = {
            .k = dsla_kv_pool_keys(pool),
            .v = dsla_kv_pool_values(pool),
            .block_table = dsla_sequence_block_table(seq, layer),
            .block_tokens = DSLA_KV_BLOCK_TOKENS,
        };
        dsla_cpu_attention(s->attn + (size_t)row * q_width, q_width, qkv, qkv_width, n, past,
                           &shape, &kv, m->scores);
        if (b->entropy)
            b->entropy[(size_t)b->ids[it] * c->num_layers + layer] =
                attention_entropy(m, seq, layer, qkv + (size_t)(n - 1) * qkv_width, past + n);
        row += n;
    }
    linear(m, b->out, s->attn, w->wo, b->n_rows, D, q_width);
    return DSLA_OK;
}

/* dst [rows, hd] = x [rows, D] W^T (+ bias). */
static void project(const dsla_model_t *m, float *dst, const float *x, const float *w,
                    const float *bias, int rows, int hd, int D) {
    linear(m, dst, x, w, rows, hd, D);
    for (int r = 0; bias && r < rows; r++)
        for (int j = 0; j < hd; j++)
            dst[(size_t)r * hd + j] += bias[j];
}

/* The DSLA core for one item's n tokens (rows starting at off in the projection arrays), over the
 * sequence's state: the recurrent form in place for one token (decode), the chunked form with the
 * state as initial and final state otherwise (prefill).
 *
 * A single-state layer runs through the same two-state kernels: softmax(alpha) = (1, 0) exactly
 * with alpha = (0, -inf), and the recency state is fed the history gates and starts from the
 * history state, so that it stays finite (0 * inf would poison the output) though it is never read.
 * The chunked kernel keeps that state in its workspace (S2_T NULL), the recurrent one in a spare
 * buffer. */
static dsla_status_t dsla_core(dsla_model_t *m, const dsla_dsla_layer_t *w, dsla_sequence_t *seq,
                               int layer, int n, float *const proj[5], size_t off, float *out) {
    static const float history_only[2] = {0.0f, -INFINITY};
    const dsla_model_config_t *c = &m->cfg;
    const bool single = w->single_state;
    const dsla_dsla_dims_t dims = {1, n, c->num_heads, c->head_dim};
    const dsla_dsla_in_t in = {
        .q = proj[0] + off,
        .k = proj[1] + off,
        .v = proj[2] + off,
        .a1 = proj[3] + off,
        .a2 = (single ? proj[3] : proj[4]) + off,
        .alpha = single ? history_only : w->alpha,
    };
    float *S1 = dsla_sequence_dsla_state(seq, layer, 0);
    float *S2 = single ? NULL : dsla_sequence_dsla_state(seq, layer, 1);
    if (n == 1) {
        if (single) {
            const size_t state = (size_t)c->num_heads * c->head_dim * c->head_dim;
            memcpy(m->dsla.spare, S1, state * sizeof *S1);
            S2 = m->dsla.spare;
        }
        return dsla_cpu_dsla_recurrent_forward(&dims, &in, S1, S2, out + off);
    }
    return dsla_cpu_dsla_chunked_forward(&dims, &in, S1, single ? S1 : S2, out + off, S1, S2,
                                         m->dsla.work);
}

/* Items next to each other that run the same DSLA weights (the common case: all of them) share
 * the projection GEMMs; the core runs per item over its own state. */
static dsla_status_t mix_dsla(dsla_model_t *m, int layer, const mix_batch_t *b) {
    const dsla_model_config_t *c = &m->cfg;
    const int D = c->hidden_size, hd = c->num_heads * c->head_dim;
    const size_t plane = (size_t)b->n_rows * hd;
    float *const proj[5] = {m->dsla.proj, m->dsla.proj + plane, m->dsla.proj + 2 * plane,
                            m->dsla.proj + 3 * plane, m->dsla.proj + 4 * plane};
    float *mix = m->scratch.attn; /* [rows, H d], free while attention is not running */
    int first = 0, row = 0;
    while (first < b->n_items) {
        const dsla_dsla_layer_t *w = dsla_weights_for(m, b->items[first].seq, layer);
        int end = first, rows = 0;
        while (end < b->n_items && dsla_weights_for(m, b->items[end].seq, layer) == w)
            rows += b->items[end++].n_tokens;
        const size_t off = (size_t)row * hd;
        const float *x = b->x + (size_t)row * D;
        project(m, proj[0] + off, x, w->wq, NULL, rows, hd, D);
        project(m, proj[1] + off, x, w->wk, NULL, rows, hd, D);
        project(m, proj[2] + off, x, w->wv, NULL, rows, hd, D);
        project(m, proj[3] + off, x, w->wg1, w->bg1, rows, hd, D);
        if (!w->single_state) project(m, proj[4] + off, x, w->wg2, w->bg2, rows, hd, D);
        for (int it = first, r = row; it < end; r += b->items[it++].n_tokens) {
            dsla_status_t s = dsla_core(m, w, b->items[it].seq, layer, b->items[it].n_tokens, proj,
                                        (size_t)r * hd, mix);
            if (s != DSLA_OK)
                return dsla_error_wrap(DSLA_ERR_INTERNAL, "forward: layer %d's DSLA core: ", layer);
        }
        linear(m, b->out + (size_t)row * D, mix + off, w->wo, rows, D, hd);
        row += rows;
        first = end;
    }
    return DSLA_OK;
}

/* One entry per dsla_layer_kind_t; NULL: the kind is not implemented on this backend yet. */
static const layer_mixer_fn layer_mixers[DSLA_LAYER_KIND_COUNT] = {
    [DSLA_LAYER_ATTN] = mix_attention,
    [DSLA_LAYER_DSLA] = mix_dsla,
};

/* Copies the rows of n items (item i's n_tokens rows start at row starts[i] of src) back to back.
 */
static void gather_rows(float *dst, const float *src, size_t width, const int *starts,
                        const dsla_batch_item_t *items, int n) {
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)items[i].n_tokens * width;
        memcpy(dst, src + (size_t)starts[i] * width, len * sizeof *dst);
        dst += len;
    }
}

/* Runs layer's token mixing for the whole batch: in one call when every item runs the layer with
 * the same kind (the common case), else once per kind over gathered rows, scattered back into
 * mix_out. */
static dsla_status_t mix_layer(dsla_model_t *m, int layer, const dsla_batch_item_t *items,
                               int n_items, int n_rows, float *entropy) {
    forward_scratch_t *s = &m->scratch;
    const size_t D = (size_t)m->cfg.hidden_size, half = (size_t)m->cfg.head_dim / 2;
    dsla_layer_kind_t first = dsla_sequence_layer_kind(items[0].seq, layer);
    bool uniform = true;
    for (int i = 1; i < n_items; i++)
        uniform = uniform && dsla_sequence_layer_kind(items[i].seq, layer) == first;
    if (uniform) {
        const mix_batch_t b = {items,       n_items,    n_rows,      s->xn,  s->rope_cos,
                               s->rope_sin, s->mix_out, s->item_ids, entropy};
        return layer_mixers[first](m, layer, &b);
    }
    for (int kind = 0; kind < DSLA_LAYER_KIND_COUNT; kind++) {
        int n_sub = 0, rows = 0;
        for (int i = 0; i < n_items; i++) {
            if ((int)dsla_sequence_layer_kind(items[i].seq, layer) != kind) continue;
            s->sub_items[n_sub] = items[i];
            s->sub_ids[n_sub] = i;
            s->sub_row_start[n_sub++] = s->row_start[i];
            rows += items[i].n_tokens;
        }
        if (n_sub == 0) continue;
        gather_rows(s->sub_x, s->xn, D, s->sub_row_start, s->sub_items, n_sub);
        gather_rows(s->sub_cos, s->rope_cos, half, s->sub_row_start, s->sub_items, n_sub);
        gather_rows(s->sub_sin, s->rope_sin, half, s->sub_row_start, s->sub_items, n_sub);
        const mix_batch_t b = {s->sub_items, n_sub,      rows,       s->sub_x, s->sub_cos,
                               s->sub_sin,   s->sub_out, s->sub_ids, entropy};
        DSLA_TRY(layer_mixers[kind](m, layer, &b));
        const float *src = s->sub_out;
        for (int i = 0; i < n_sub; i++) {
            size_t len = (size_t)s->sub_items[i].n_tokens * D;
            memcpy(s->mix_out + (size_t)s->sub_row_start[i] * D, src, len * sizeof *src);
            src += len;
        }
    }
    return DSLA_OK;
}

/* ---- forward ---- */

int dsla_batch_logit_rows(const dsla_batch_item_t *items, int n_items) {
    int rows = 0;
    for (int i = 0; i < n_items; i++)
        rows += items[i].want_all_logits ? items[i].n_tokens : 1;
    return rows;
}

static dsla_status_t validate_batch(const dsla_model_t *m, const dsla_batch_item_t *items,
                                    int n_items, int *total_rows) {
    const dsla_model_config_t *c = &m->cfg;
    if (n_items < 1 || !items)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "forward: the batch has no items");
    long total = 0;
    for (int i = 0; i < n_items; i++) {
        const dsla_batch_item_t *it = &items[i];
        if (!it->seq || !it->tokens || it->n_tokens < 1)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "forward: batch item %d needs a sequence and at least one token", i);
        dsla_kv_pool_t *pool = dsla_sequence_pool(it->seq);
        if (dsla_kv_pool_num_layers(pool) != c->num_layers ||
            dsla_kv_pool_token_width(pool) != c->num_kv_heads * c->head_dim)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "forward: batch item %d's KV pool was made for another model", i);
        for (int j = 0; j < i; j++)
            if (items[j].seq == it->seq)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "forward: batch items %d and %d share one sequence", j, i);
        for (int t = 0; t < it->n_tokens; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= c->vocab_size)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "forward: token id %d (item %d, token %d) is outside the "
                                  "vocabulary of %d",
                                  (int)it->tokens[t], i, t, c->vocab_size);
        long context = (long)dsla_sequence_length(it->seq) + it->n_tokens;
        if (context > c->max_position_embeddings)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "forward: a context of %ld tokens (%d cached + %d new, item %d) "
                              "exceeds max_position_embeddings %d",
                              context, dsla_sequence_length(it->seq), it->n_tokens, i,
                              c->max_position_embeddings);
        for (int l = 0; l < c->num_layers; l++) {
            dsla_layer_kind_t kind = dsla_sequence_layer_kind(it->seq, l);
            if (!layer_mixers[kind])
                return dsla_error(DSLA_ERR_UNSUPPORTED,
                                  "forward: layer %d of item %d runs as kind %d, which the CPU "
                                  "forward pass does not implement",
                                  l, i, (int)kind);
            if (kind == DSLA_LAYER_DSLA && !dsla_weights_for(m, it->seq, l))
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "forward: item %d runs layer %d as DSLA, but its sequence is "
                                  "not pinned to a DSLA layer there and the model has none "
                                  "installed (dsla_model_set_dsla_layer)",
                                  i, l);
        }
        total += it->n_tokens;
        if (total > INT32_MAX / 2)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "forward: the batch has too many tokens");
    }
    *total_rows = (int)total;
    return DSLA_OK;
}

/* All items' blocks or none: a batch that does not fit changes no sequence. */
static dsla_status_t reserve_batch(const dsla_batch_item_t *items, int n_items) {
    for (int i = 0; i < n_items; i++) {
        dsla_status_t s = dsla_sequence_reserve(items[i].seq, items[i].n_tokens);
        if (s != DSLA_OK) {
            for (int j = 0; j < i; j++)
                dsla_sequence_release_unused(items[j].seq);
            return dsla_error_wrap(s, "forward: batch item %d: ", i);
        }
    }
    return DSLA_OK;
}

static void run_layers(dsla_model_t *m, const dsla_batch_item_t *items, int n_items, int T,
                       const dsla_forward_capture_t *cap, dsla_status_t *status) {
    const dsla_model_config_t *c = &m->cfg;
    forward_scratch_t *s = &m->scratch;
    const int D = c->hidden_size, I = c->intermediate_size;
    float *const *hidden = cap ? cap->hidden : NULL;
    float *entropy = cap ? cap->entropy : NULL;
    const int n_layers = cap && cap->layers_to_run > 0 ? cap->layers_to_run : c->num_layers;
    for (int l = 0; l < n_layers && *status == DSLA_OK; l++) {
        const dsla_llama_layer_t *w = &m->layers[l];
        if (hidden && hidden[l]) memcpy(hidden[l], s->x, (size_t)T * D * sizeof *s->x);
        dsla_cpu_rmsnorm(s->xn, s->x, w->attn_norm, T, D, c->rms_norm_eps);
        *status = mix_layer(m, l, items, n_items, T, entropy);
        if (*status != DSLA_OK) return;
        dsla_cpu_add(s->x, s->x, s->mix_out, (size_t)T * D);
        dsla_cpu_rmsnorm(s->xn, s->x, w->mlp_norm, T, D, c->rms_norm_eps);
        linear(m, s->gate_up, s->xn, w->w_gate_up, T, 2 * I, D);
        dsla_cpu_swiglu(s->act, s->gate_up, s->gate_up + I, T, I, 2 * I);
        linear(m, s->mix_out, s->act, w->w_down, T, D, I);
        dsla_cpu_add(s->x, s->x, s->mix_out, (size_t)T * D);
    }
    if (*status == DSLA_OK && hidden && hidden[n_layers])
        memcpy(hidden[n_layers], s->x, (size_t)T * D * sizeof *s->x);
}

dsla_status_t dsla_model_forward(dsla_model_t *m, const dsla_batch_item_t *items, int n_items,
                                 float *logits_out) {
    if (!logits_out) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "forward: logits_out is NULL");
    return dsla_model_forward_capture(m, items, n_items, logits_out, NULL);
}

dsla_status_t dsla_model_forward_capture(dsla_model_t *m, const dsla_batch_item_t *items,
                                         int n_items, float *logits_out,
                                         const dsla_forward_capture_t *capture) {
    const dsla_model_config_t *c = &m->cfg;
    forward_scratch_t *s = &m->scratch;
    int T = 0;
    if (capture && capture->layers_to_run != 0 &&
        (capture->layers_to_run < 0 || capture->layers_to_run > c->num_layers || logits_out ||
         capture->entropy))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "forward: layers_to_run %d must be 1..%d, without logits or entropy",
                          capture->layers_to_run, c->num_layers);
    DSLA_TRY(validate_batch(m, items, n_items, &T));
    DSLA_TRY(scratch_reserve(m, T, n_items));
    DSLA_TRY(dsla_scratch_reserve(m, items, n_items, T));
    DSLA_TRY(reserve_batch(items, n_items));
    if (capture && capture->entropy)
        for (size_t i = 0; i < (size_t)n_items * c->num_layers; i++)
            capture->entropy[i] = NAN;

    const int D = c->hidden_size;
    int row = 0;
    for (int i = 0; i < n_items; i++) {
        s->row_start[i] = row;
        const int past = dsla_sequence_length(items[i].seq);
        for (int t = 0; t < items[i].n_tokens; t++, row++) {
            s->positions[row] = past + t;
            memcpy(s->x + (size_t)row * D, m->embed + (size_t)items[i].tokens[t] * D,
                   (size_t)D * sizeof(float));
        }
    }
    dsla_cpu_rope_tables(s->rope_cos, s->rope_sin, s->positions, T, m->inv_freq, c->head_dim);

    dsla_status_t status = DSLA_OK;
    run_layers(m, items, n_items, T, capture, &status);
    if (status != DSLA_OK) {
        for (int i = 0; i < n_items; i++)
            dsla_sequence_release_unused(items[i].seq);
        return status;
    }

    /* Final norm only for the rows whose logits were asked for, then one GEMM into logits_out. */
    if (!logits_out) {
        for (int i = 0; i < n_items; i++)
            dsla_sequence_advance(items[i].seq, items[i].n_tokens);
        return DSLA_OK;
    }
    int out_rows = 0;
    for (int i = 0; i < n_items; i++) {
        const int n = items[i].n_tokens;
        const int first = items[i].want_all_logits ? 0 : n - 1;
        for (int t = first; t < n; t++, out_rows++)
            dsla_cpu_rmsnorm(s->xn + (size_t)out_rows * D, s->x + (size_t)(s->row_start[i] + t) * D,
                             m->final_norm, 1, D, c->rms_norm_eps);
        dsla_sequence_advance(items[i].seq, n);
    }
    linear(m, logits_out, s->xn, m->lm_head, out_rows, c->vocab_size, D);
    return DSLA_OK;
}

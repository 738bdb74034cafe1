/* The GPU forward pass (llama_cuda.h): weights, pool and sequences on the device, one forward
 * pass = one upload of the step's indices, the kernels of every layer, and the logit rows. */
#include "runtime/model/llama_cuda.h"

#ifdef DSLA_HAVE_CUDA

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "kernels/kernels_cuda_dsla.h"
#include "runtime/model/kv_arena.h"

/* Decode graphs kept per model: one per (batch size, context bucket, plan) seen. A server under
 * load walks through every batch size up to its running set (256) in a few buckets, so the cache
 * holds many and evicts the least recently used one (version 1 kept 32 and flushed them all when
 * full, so a server past 32 shapes recaptured almost every step). */
enum { GRAPH_CACHE = 256 };
/* Smallest context bucket. A graph captured for a bucket serves every context up to it; the bucket
 * only bounds the decode kernel's split count (its chunks are cut from each sequence's length on
 * the device), so powers of two cost no speed and keep the count of graphs small. */
enum { CTX_BUCKET_MIN = 256 };
/* Prompts and prompt chunks at least this long (bf16 weights and pool) take cuDNN's fused attention
 * when libcudnn.so.9 loads; shorter ones stay on attention.cu's prefill_tc, where a new bucket's
 * plan (50-80 ms, once) would buy little. */
enum { CUDNN_MIN_TOKENS = 64 };
/* The five DSLA input projections, stacked in one weight: q, k, v, gate 1, gate 2. */
enum { DSLA_PROJ = 5 };

/* Rows past max_batch_tokens that a cuDNN call may touch: its bucket rounds an n-token prompt up by
 * less than n / 8, or less than 64 rows below 1K (kernels_cuda.h, dsla_cuda_cudnn_rows). */
static size_t cudnn_slack_rows(size_t max_batch_tokens) {
    return max_batch_tokens / 8 + 64;
}

typedef struct {
    float *attn_norm, *mlp_norm; /* fp32 */
    void *wqkv, *wo, *w_gate_up, *w_down;
} dev_layer_t;

typedef struct {
    void *w5;       /* [5][H d][D]: q, k, v, g1, g2 */
    void *wo;       /* [D][H d] */
    float *bias;    /* [2][H d] */
    float *alpha;   /* [2] */
    bool installed; /* weights present */
    bool single_state;
} dev_dsla_t;

typedef struct {
    int batch;
    int bucket;
    uint64_t plan; /* hash of the batch's plan */
    dsla_cuda_graph_t *graph;
    uint64_t used; /* the model's graph_clock at its last launch */
} graph_entry_t;

struct dsla_cuda_model {
    dsla_model_config_t cfg;
    dsla_cuda_model_opts_t opts;
    dsla_cuda_stream_t stream;
    dsla_cuda_blas_t *blas;
    size_t wsize; /* bytes per weight element */
    void *embed, *lm_head;
    float *final_norm, *inv_freq;
    dev_layer_t *layers;
    dev_dsla_t *dsla;
    size_t weight_bytes;
    /* activations */
    float *x, *qkv, *att, *gu, *logits, *last_x;
    void *xn, *att_c, *act, *last_xn;
    void *dec_ws;
    size_t dec_ws_bytes;
    float *dsla_s1, *dsla_s2; /* chunked DSLA: final states before they are copied back */
    void *dsla_ws;
    size_t dsla_ws_bytes;
    /* step upload: pinned staging, its device mirror, and when the last upload left staging */
    int32_t *stage, *dstep;
    size_t step_words;
    dsla_cuda_event_t uploaded;
    int32_t *tok_host, *tok_dev;
    dsla_cuda_sample_row_t *sample_host, *sample_dev;
    void *sample_ws;
    size_t sample_ws_bytes;
    int logit_rows;
    graph_entry_t graphs[GRAPH_CACHE];
    int n_graphs;
    /* cuDNN prefill attention: loaded on the first prompt that qualifies; off for the model's
     * lifetime once loading or a plan fails. qkv_c: the step's q, k, v rounded to bf16. */
    dsla_cuda_cudnn_t *cudnn;
    uint16_t *qkv_c;
    bool cudnn_off;
    /* Prompt chunks with a cached past: their keys and values gathered out of the pool into
     * kv_gk / kv_gv (bf16, allocated on first use, kv_g_rows rows); off on its own after a
     * failure, so prompts without a past keep cuDNN. */
    uint16_t *kv_gk, *kv_gv;
    size_t kv_g_rows;
    bool cudnn_past_off;
    bool att_c_ready; /* this layer's attention wrote att_c directly (no conversion needed) */
    dsla_cuda_model_stats_t stats;
    dsla_cuda_kv_t *kv_in_graphs; /* graphs bake in one pool's pointers */
    /* Distillation's capture (dsla_cuda_model_set_capture): where each layer's incoming stream
     * goes, and how many layers to run. */
    float *capture[DSLA_LAYER_ORDER_MAX + 1];
    int capture_layers;
    /* step accounting: device timing of the passes (NULL timer: off) */
    dsla_cuda_phase_timer_t *timer;
    dsla_cuda_timing_t timing;
    bool decode_runs_off; /* mixed steps run their one-token items one call each */
    uint64_t graph_clock; /* uses of the graph cache, for its least-recently-used eviction */
};

struct dsla_cuda_kv {
    dsla_cuda_model_t *m;
    dsla_cuda_kv_pool_t pool;
    int num_blocks, max_seqs, max_blocks; /* max_blocks: per sequence and layer */
    /* Which blocks are KV, which are DSLA state slots and which are free (kv_arena.h); a slot lays
     * its history state over its blocks' keys and its recency state over their values. */
    dsla_kv_arena_t *arena;
    size_t slot_stride; /* bytes from one slot's first key (or value) to the next's */
    bool *slot_used;
    int32_t *tables; /* device [max_seqs][L][max_blocks] */
};

struct dsla_cuda_seq {
    dsla_cuda_kv_t *kv;
    int slot, length, n_blocks;
    dsla_layer_kind_t *kinds;
    int32_t *blocks;  /* host [L][max_blocks] */
    float **states;   /* [L][2] device */
    int *state_slots; /* [L] the arena slot of layer l's states, -1 for none; NULL when the
                         sequence allocated its states itself */
};

/* ---- small helpers ---- */

static size_t dtype_size(dsla_dtype_t t) {
    return t == DSLA_DTYPE_BF16 ? 2 : 4;
}

static void *offset(void *p, size_t elems, size_t esize) {
    return (char *)p + elems * esize;
}

static dsla_status_t dev_alloc(void **p, size_t bytes, size_t *total) {
    DSLA_TRY(dsla_cuda_malloc(p, bytes));
    if (total) *total += bytes;
    return DSLA_OK;
}

/* Uploads n fp32 host values as dtype through a temporary fp32 device buffer. */
static dsla_status_t upload_as(dsla_cuda_model_t *m, void *dst, const float *src, size_t n,
                               dsla_dtype_t dtype) {
    if (dtype == DSLA_DTYPE_F32) {
        DSLA_TRY(dsla_cuda_copy(dst, src, n * sizeof(float), m->stream));
        return dsla_cuda_stream_sync(m->stream); /* pageable source: keep it alive until done */
    }
    float *tmp = NULL;
    DSLA_TRY(dsla_cuda_malloc((void **)&tmp, n * sizeof(float)));
    dsla_status_t st = dsla_cuda_copy(tmp, src, n * sizeof(float), m->stream);
    if (st == DSLA_OK) st = dsla_cuda_to_bf16(m->stream, dst, tmp, n);
    if (st == DSLA_OK) st = dsla_cuda_stream_sync(m->stream);
    dsla_cuda_free((void **)&tmp);
    return st;
}

static dsla_status_t alloc_weight(dsla_cuda_model_t *m, void **p, size_t n) {
    return dev_alloc(p, n * m->wsize, &m->weight_bytes);
}

/* Block-table patches one step can make: every item may open one block per layer beyond those its
 * new tokens fill. */
static size_t patch_capacity(int layers, int max_tokens, int max_seqs) {
    return (size_t)layers * ((size_t)max_tokens / DSLA_KV_BLOCK_TOKENS + (size_t)max_seqs + 1);
}

/* ---- creation ---- */

static dsla_status_t check_opts(const dsla_model_config_t *c, const dsla_cuda_model_opts_t *o) {
    if (o->weight_dtype != DSLA_DTYPE_F32 && o->weight_dtype != DSLA_DTYPE_BF16)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "dsla_cuda_model: weight dtype %s (f32 or bf16)",
                          dsla_dtype_name(o->weight_dtype));
    if (o->max_batch_tokens < 1 || o->max_logit_rows < 1 || o->max_seqs < 1 || o->max_context < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_model: max_batch_tokens %d, max_logit_rows %d, max_seqs %d, "
                          "max_context %d must all be >= 1",
                          o->max_batch_tokens, o->max_logit_rows, o->max_seqs, o->max_context);
    if (o->max_context > c->max_position_embeddings)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_model: max_context %d exceeds max_position_embeddings %d",
                          o->max_context, c->max_position_embeddings);
    if (!dsla_cuda_attention_supports(c->head_dim))
        return dsla_error(DSLA_ERR_UNSUPPORTED, "dsla_cuda_model: head_dim %d", c->head_dim);
    return DSLA_OK;
}

static dsla_status_t model_alloc(dsla_cuda_model_t **out, const dsla_model_config_t *cfg,
                                 const dsla_cuda_model_opts_t *opts, dsla_cuda_stream_t stream) {
    *out = NULL;
    DSLA_TRY(check_opts(cfg, opts));
    dsla_cuda_model_t *m = calloc(1, sizeof *m);
    if (!m) return dsla_error_oom("dsla_cuda_model");
    *out = m;
    m->cfg = *cfg;
    m->opts = *opts;
    m->stream = stream;
    /* The legacy default stream cannot be captured. */
    if (!stream) m->opts.graphs = false;
    m->wsize = dtype_size(opts->weight_dtype);
    const dsla_model_config_t *c = cfg;
    const int L = c->num_layers, D = c->hidden_size, d = c->head_dim, I = c->intermediate_size;
    const int qw = c->num_heads * d, kvw = c->num_kv_heads * d, V = c->vocab_size;
    m->layers = calloc((size_t)L, sizeof *m->layers);
    m->dsla = calloc((size_t)L, sizeof *m->dsla);
    if (!m->layers || !m->dsla) return dsla_error_oom("dsla_cuda_model");
    DSLA_TRY(dsla_cuda_blas_create(&m->blas));
    DSLA_TRY(alloc_weight(m, &m->embed, (size_t)V * D));
    if (c->tie_word_embeddings)
        m->lm_head = m->embed;
    else
        DSLA_TRY(alloc_weight(m, &m->lm_head, (size_t)V * D));
    DSLA_TRY(dev_alloc((void **)&m->final_norm, (size_t)D * sizeof(float), &m->weight_bytes));
    DSLA_TRY(dev_alloc((void **)&m->inv_freq, (size_t)d / 2 * sizeof(float), NULL));
    for (int l = 0; l < L; l++) {
        dev_layer_t *w = &m->layers[l];
        DSLA_TRY(dev_alloc((void **)&w->attn_norm, (size_t)D * sizeof(float), &m->weight_bytes));
        DSLA_TRY(dev_alloc((void **)&w->mlp_norm, (size_t)D * sizeof(float), &m->weight_bytes));
        DSLA_TRY(alloc_weight(m, &w->wqkv, (size_t)(qw + 2 * kvw) * D));
        DSLA_TRY(alloc_weight(m, &w->wo, (size_t)D * qw));
        DSLA_TRY(alloc_weight(m, &w->w_gate_up, (size_t)2 * I * D));
        DSLA_TRY(alloc_weight(m, &w->w_down, (size_t)D * I));
    }
    /* Activations for max_batch_tokens rows; the projection buffer also holds DSLA's five. */
    const size_t T = (size_t)opts->max_batch_tokens, R = (size_t)opts->max_logit_rows;
    const size_t proj_w = (size_t)(qw + 2 * kvw) > (size_t)DSLA_PROJ * qw ? (size_t)(qw + 2 * kvw)
                                                                          : (size_t)DSLA_PROJ * qw;
    DSLA_TRY(dev_alloc((void **)&m->x, T * D * sizeof(float), NULL));
    DSLA_TRY(dev_alloc(&m->xn, T * D * m->wsize, NULL));
    DSLA_TRY(dev_alloc((void **)&m->qkv, T * proj_w * sizeof(float), NULL));
    DSLA_TRY(dev_alloc((void **)&m->att, T * qw * sizeof(float), NULL));
    if (opts->weight_dtype == DSLA_DTYPE_BF16) /* cuDNN writes its padded rows here, too */
        DSLA_TRY(dev_alloc(&m->att_c, (T + cudnn_slack_rows(T)) * qw * m->wsize, NULL));
    else
        m->att_c = m->att;
    DSLA_TRY(dev_alloc((void **)&m->gu, T * 2 * I * sizeof(float), NULL));
    DSLA_TRY(dev_alloc(&m->act, T * I * m->wsize, NULL));
    DSLA_TRY(dev_alloc((void **)&m->last_x, R * D * sizeof(float), NULL));
    DSLA_TRY(dev_alloc(&m->last_xn, R * D * m->wsize, NULL));
    DSLA_TRY(dev_alloc((void **)&m->logits, R * V * sizeof(float), NULL));
    const dsla_attn_shape_t shape = {c->num_heads, c->num_kv_heads, d};
    m->dec_ws_bytes =
        dsla_cuda_attention_decode_workspace(opts->max_seqs, opts->max_context, &shape);
    /* Smaller batches at the same context cut more chunks: size for the largest split count. */
    const size_t one = dsla_cuda_attention_decode_workspace(1, opts->max_context, &shape);
    if (one * (size_t)opts->max_seqs > m->dec_ws_bytes)
        m->dec_ws_bytes = one * (size_t)opts->max_seqs;
    DSLA_TRY(dsla_cuda_malloc(&m->dec_ws, m->dec_ws_bytes));
    /* Step upload: tokens, positions, per-layer slots (T each), logit rows (R), context lengths,
     * per-layer table rows (S each), patches (2 * patch capacity), per-layer state pointers
     * (2 words each, 2 states, S items). */
    const size_t S = (size_t)opts->max_seqs;
    m->step_words = T * (2 + (size_t)L) + R + S * (1 + (size_t)L) + S * (size_t)L * 4 + 8 +
                    2 * patch_capacity(L, (int)T, (int)S);
    DSLA_TRY(dsla_cuda_host_alloc((void **)&m->stage, m->step_words * sizeof(int32_t)));
    DSLA_TRY(dsla_cuda_malloc((void **)&m->dstep, m->step_words * sizeof(int32_t)));
    DSLA_TRY(dsla_cuda_event_create(&m->uploaded));
    DSLA_TRY(dsla_cuda_host_alloc((void **)&m->tok_host, R * sizeof(int32_t)));
    DSLA_TRY(dsla_cuda_malloc((void **)&m->tok_dev, R * sizeof(int32_t)));
    DSLA_TRY(dsla_cuda_host_alloc((void **)&m->sample_host, R * sizeof(dsla_cuda_sample_row_t)));
    DSLA_TRY(dsla_cuda_malloc((void **)&m->sample_dev, R * sizeof(dsla_cuda_sample_row_t)));
    /* Sampling rows past max_seqs (prompt scoring's) go to the host: a workspace of R rows would
     * double the device logits' memory for nothing. */
    m->sample_ws_bytes = dsla_cuda_sample_workspace((int)(R < S ? R : S), V);
    DSLA_TRY(dsla_cuda_malloc(&m->sample_ws, m->sample_ws_bytes));

    float *inv = malloc((size_t)d / 2 * sizeof *inv);
    if (!inv) return dsla_error_oom("dsla_cuda_model");
    dsla_rope_params_t rp = {
        c->rope_theta,           c->rope_type == DSLA_ROPE_LLAMA3, c->rope_factor,
        c->rope_low_freq_factor, c->rope_high_freq_factor,         c->rope_original_max_position};
    dsla_cpu_rope_inv_freq(inv, d, &rp);
    dsla_status_t st = dsla_cuda_copy(m->inv_freq, inv, (size_t)d / 2 * sizeof(float), stream);
    if (st == DSLA_OK) st = dsla_cuda_stream_sync(stream);
    free(inv);
    return st;
}

dsla_status_t dsla_cuda_model_create(dsla_cuda_model_t **out, const dsla_model_t *src,
                                     const dsla_cuda_model_opts_t *opts,
                                     dsla_cuda_stream_t stream) {
    const dsla_model_config_t *c = dsla_model_config(src);
    dsla_status_t st = model_alloc(out, c, opts, stream);
    dsla_cuda_model_t *m = *out;
    if (st != DSLA_OK) {
        dsla_cuda_model_destroy(out);
        return st;
    }
    const int D = c->hidden_size, d = c->head_dim, I = c->intermediate_size, V = c->vocab_size;
    const int qw = c->num_heads * d, kvw = c->num_kv_heads * d;
    const dsla_dtype_t wt = opts->weight_dtype;
    st = upload_as(m, m->embed, dsla_model_embeddings(src), (size_t)V * D, wt);
    if (st == DSLA_OK && !c->tie_word_embeddings)
        st = upload_as(m, m->lm_head, dsla_model_lm_head(src), (size_t)V * D, wt);
    if (st == DSLA_OK)
        st = upload_as(m, m->final_norm, dsla_model_final_norm(src), (size_t)D, DSLA_DTYPE_F32);
    for (int l = 0; l < c->num_layers && st == DSLA_OK; l++) {
        const dsla_llama_layer_t *w = dsla_model_layer(src, l);
        dev_layer_t *dw = &m->layers[l];
        st = upload_as(m, dw->attn_norm, w->attn_norm, (size_t)D, DSLA_DTYPE_F32);
        if (st == DSLA_OK) st = upload_as(m, dw->mlp_norm, w->mlp_norm, (size_t)D, DSLA_DTYPE_F32);
        if (st == DSLA_OK) st = upload_as(m, dw->wqkv, w->wqkv, (size_t)(qw + 2 * kvw) * D, wt);
        if (st == DSLA_OK) st = upload_as(m, dw->wo, w->wo, (size_t)D * qw, wt);
        if (st == DSLA_OK) st = upload_as(m, dw->w_gate_up, w->w_gate_up, (size_t)2 * I * D, wt);
        if (st == DSLA_OK) st = upload_as(m, dw->w_down, w->w_down, (size_t)D * I, wt);
    }
    if (st != DSLA_OK) dsla_cuda_model_destroy(out);
    return st;
}

static dsla_status_t fill_weight(dsla_cuda_model_t *m, void *p, size_t n, int fan_in,
                                 uint64_t seed) {
    const float a = 1.0f / sqrtf((float)fan_in);
    return dsla_cuda_fill_uniform(m->stream, p, m->opts.weight_dtype, n, -a, a, seed);
}

dsla_status_t dsla_cuda_model_create_random(dsla_cuda_model_t **out, const dsla_model_config_t *c,
                                            uint64_t seed, const dsla_cuda_model_opts_t *opts,
                                            dsla_cuda_stream_t stream) {
    dsla_status_t st = model_alloc(out, c, opts, stream);
    dsla_cuda_model_t *m = *out;
    if (st != DSLA_OK) {
        dsla_cuda_model_destroy(out);
        return st;
    }
    const int D = c->hidden_size, d = c->head_dim, I = c->intermediate_size, V = c->vocab_size;
    const int qw = c->num_heads * d, kvw = c->num_kv_heads * d;
    uint64_t k = seed * 1000003u;
    /* Embedding rows of unit scale so the first norm sees O(1) activations. */
    st = dsla_cuda_fill_uniform(stream, m->embed, opts->weight_dtype, (size_t)V * D, -1.0f, 1.0f,
                                ++k);
    if (st == DSLA_OK && !c->tie_word_embeddings)
        st = fill_weight(m, m->lm_head, (size_t)V * D, D, ++k);
    if (st == DSLA_OK) st = dsla_cuda_fill_f32(m->final_norm, 1.0f, (size_t)D, stream);
    for (int l = 0; l < c->num_layers && st == DSLA_OK; l++) {
        dev_layer_t *w = &m->layers[l];
        st = dsla_cuda_fill_f32(w->attn_norm, 1.0f, (size_t)D, stream);
        if (st == DSLA_OK) st = dsla_cuda_fill_f32(w->mlp_norm, 1.0f, (size_t)D, stream);
        if (st == DSLA_OK) st = fill_weight(m, w->wqkv, (size_t)(qw + 2 * kvw) * D, D, ++k);
        if (st == DSLA_OK) st = fill_weight(m, w->wo, (size_t)D * qw, qw, ++k);
        if (st == DSLA_OK) st = fill_weight(m, w->w_gate_up, (size_t)2 * I * D, D, ++k);
        if (st == DSLA_OK) st = fill_weight(m, w->w_down, (size_t)D * I, I, ++k);
    }
    if (st == DSLA_OK) st = dsla_cuda_stream_sync(stream);
    if (st != DSLA_OK) dsla_cuda_model_destroy(out);
    return st;
}

static void free_graphs(dsla_cuda_model_t *m) {
    for (int i = 0; i < m->n_graphs; i++)
        dsla_cuda_graph_destroy(&m->graphs[i].graph);
    m->n_graphs = 0;
}

static void free_dsla(dev_dsla_t *s) {
    dsla_cuda_free(&s->w5);
    dsla_cuda_free(&s->wo);
    dsla_cuda_free((void **)&s->bias);
    dsla_cuda_free((void **)&s->alpha);
    s->installed = false;
}

void dsla_cuda_model_destroy(dsla_cuda_model_t **pm) {
    if (!pm || !*pm) return;
    dsla_cuda_model_t *m = *pm;
    if (m->stream) dsla_cuda_stream_sync(m->stream);
    free_graphs(m);
    dsla_cuda_cudnn_destroy(&m->cudnn);
    dsla_cuda_free((void **)&m->qkv_c);
    dsla_cuda_free((void **)&m->kv_gk);
    dsla_cuda_free((void **)&m->kv_gv);
    if (m->layers) {
        for (int l = 0; l < m->cfg.num_layers; l++) {
            dev_layer_t *w = &m->layers[l];
            dsla_cuda_free((void **)&w->attn_norm);
            dsla_cuda_free((void **)&w->mlp_norm);
            dsla_cuda_free(&w->wqkv);
            dsla_cuda_free(&w->wo);
            dsla_cuda_free(&w->w_gate_up);
            dsla_cuda_free(&w->w_down);
        }
    }
    if (m->dsla)
        for (int l = 0; l < m->cfg.num_layers; l++)
            free_dsla(&m->dsla[l]);
    if (m->lm_head != m->embed) dsla_cuda_free(&m->lm_head);
    dsla_cuda_free(&m->embed);
    if (m->att_c != m->att) dsla_cuda_free(&m->att_c);
    void **bufs[] = {
        (void **)&m->final_norm, (void **)&m->inv_freq, (void **)&m->x,          &m->xn,
        (void **)&m->qkv,        (void **)&m->att,      (void **)&m->gu,         &m->act,
        (void **)&m->last_x,     &m->last_xn,           (void **)&m->logits,     &m->dec_ws,
        (void **)&m->dstep,      (void **)&m->tok_dev,  (void **)&m->sample_dev, &m->sample_ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        dsla_cuda_free(bufs[i]);
    dsla_cuda_host_free((void **)&m->stage);
    dsla_cuda_host_free((void **)&m->tok_host);
    dsla_cuda_host_free((void **)&m->sample_host);
    dsla_cuda_event_destroy(&m->uploaded);
    dsla_cuda_phase_timer_destroy(&m->timer);
    dsla_cuda_blas_destroy(&m->blas);
    free(m->layers);
    free(m->dsla);
    free(m);
    *pm = NULL;
}

const dsla_model_config_t *dsla_cuda_model_config(const dsla_cuda_model_t *m) {
    return &m->cfg;
}

size_t dsla_cuda_model_weight_bytes(const dsla_cuda_model_t *m) {
    return m->weight_bytes;
}

dsla_cuda_model_stats_t dsla_cuda_model_stats(const dsla_cuda_model_t *m) {
    return m->stats;
}

void dsla_cuda_model_set_graphs(dsla_cuda_model_t *m, bool on) {
    m->opts.graphs = on && m->stream && !m->stats.graphs_disabled;
}

dsla_status_t dsla_cuda_model_set_timing(dsla_cuda_model_t *m, dsla_cuda_timing_t timing) {
    if (timing != DSLA_CUDA_TIMING_OFF && !m->timer)
        DSLA_TRY(dsla_cuda_phase_timer_create(&m->timer));
    m->timing = timing;
    return DSLA_OK;
}

bool dsla_cuda_model_last_timing(dsla_cuda_model_t *m, double *device_s, double *phase_s,
                                 bool *split) {
    if (!m->timer) return false;
    return dsla_cuda_phase_timer_read(m->timer, device_s, phase_s, split);
}

void dsla_cuda_model_set_decode_runs(dsla_cuda_model_t *m, bool on) {
    m->decode_runs_off = !on;
}

/* The work enqueued from here on belongs to phase p (when the pass is timed by phase). */
static void mark(dsla_cuda_model_t *m, dsla_cuda_phase_t p) {
    if (m->timer) dsla_cuda_phase_timer_mark(m->timer, m->stream, p);
}

const float *dsla_cuda_model_logits(const dsla_cuda_model_t *m) {
    return m->logits;
}

/* ---- DSLA slots ---- */

bool dsla_cuda_model_dsla_supported(const dsla_cuda_model_t *m) {
    return dsla_cuda_dsla_decode_supports(m->cfg.head_dim) != 0;
}

static dsla_status_t dsla_slot_alloc(dsla_cuda_model_t *m, int layer) {
    if (layer < 0 || layer >= m->cfg.num_layers)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "DSLA layer %d outside 0..%d", layer,
                          m->cfg.num_layers - 1);
    if (!dsla_cuda_model_dsla_supported(m))
        return dsla_error(DSLA_ERR_UNSUPPORTED, "DSLA on the GPU: head_dim %d not supported",
                          m->cfg.head_dim);
    dev_dsla_t *s = &m->dsla[layer];
    if (s->installed) return DSLA_OK;
    const int D = m->cfg.hidden_size, qw = m->cfg.num_heads * m->cfg.head_dim;
    DSLA_TRY(alloc_weight(m, &s->w5, (size_t)DSLA_PROJ * qw * D));
    DSLA_TRY(alloc_weight(m, &s->wo, (size_t)D * qw));
    DSLA_TRY(dev_alloc((void **)&s->bias, (size_t)2 * qw * sizeof(float), &m->weight_bytes));
    DSLA_TRY(dev_alloc((void **)&s->alpha, 2 * sizeof(float), &m->weight_bytes));
    s->installed = true;
    return DSLA_OK;
}

dsla_status_t dsla_cuda_model_set_dsla_layer(dsla_cuda_model_t *m, int layer,
                                             const dsla_dsla_layer_t *w) {
    if (layer < 0 || layer >= m->cfg.num_layers)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "DSLA layer %d outside 0..%d", layer,
                          m->cfg.num_layers - 1);
    DSLA_TRY(dsla_cuda_stream_sync(m->stream));
    free_graphs(m); /* graphs bake in the slot's pointers */
    if (!w) {
        free_dsla(&m->dsla[layer]);
        return DSLA_OK;
    }
    const int D = m->cfg.hidden_size, qw = m->cfg.num_heads * m->cfg.head_dim;
    if (w->model_dim != D || w->heads * w->head_dim != qw)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "DSLA layer %d: shaped for D %d, H*d %d; the model has D %d, H*d %d",
                          layer, w->model_dim, w->heads * w->head_dim, D, qw);
    DSLA_TRY(dsla_slot_alloc(m, layer));
    dev_dsla_t *s = &m->dsla[layer];
    const dsla_dtype_t wt = m->opts.weight_dtype;
    const float *proj[DSLA_PROJ] = {w->wq, w->wk, w->wv, w->wg1, w->wg2};
    const size_t pn = (size_t)qw * D;
    for (int p = 0; p < DSLA_PROJ; p++)
        DSLA_TRY(upload_as(m, offset(s->w5, p * pn, m->wsize), proj[p], pn, wt));
    DSLA_TRY(upload_as(m, s->wo, w->wo, (size_t)D * qw, wt));
    DSLA_TRY(upload_as(m, s->bias, w->bg1, (size_t)qw, DSLA_DTYPE_F32));
    DSLA_TRY(upload_as(m, s->bias + qw, w->bg2, (size_t)qw, DSLA_DTYPE_F32));
    /* The single-state ablation is softmax(alpha) = (1, 0): a large gap in alpha gives it. */
    float alpha[2] = {w->alpha[0], w->alpha[1]};
    if (w->single_state) alpha[0] = 0.0f, alpha[1] = -1e30f;
    s->single_state = w->single_state;
    return upload_as(m, s->alpha, alpha, 2, DSLA_DTYPE_F32);
}

dsla_status_t dsla_cuda_model_set_dsla_random(dsla_cuda_model_t *m, int layer, uint64_t seed) {
    DSLA_TRY(dsla_cuda_stream_sync(m->stream));
    free_graphs(m);
    DSLA_TRY(dsla_slot_alloc(m, layer));
    dev_dsla_t *s = &m->dsla[layer];
    const int D = m->cfg.hidden_size, qw = m->cfg.num_heads * m->cfg.head_dim;
    DSLA_TRY(fill_weight(m, s->w5, (size_t)DSLA_PROJ * qw * D, D, seed * 7919u + 1));
    DSLA_TRY(fill_weight(m, s->wo, (size_t)D * qw, qw, seed * 7919u + 2));
    DSLA_TRY(dsla_cuda_fill_f32(s->bias, 0.0f, (size_t)2 * qw, m->stream));
    DSLA_TRY(dsla_cuda_fill_f32(s->alpha, 0.5f, 2, m->stream));
    return dsla_cuda_stream_sync(m->stream);
}

/* ---- pool and sequences ---- */

size_t dsla_cuda_kv_block_bytes(const dsla_cuda_model_t *m, dsla_dtype_t dtype) {
    return (size_t)2 * DSLA_KV_BLOCK_TOKENS * m->cfg.num_kv_heads * m->cfg.head_dim *
           dtype_size(dtype);
}

dsla_status_t dsla_cuda_kv_create(dsla_cuda_kv_t **out, dsla_cuda_model_t *m, dsla_dtype_t dtype,
                                  int num_blocks, int max_seqs) {
    *out = NULL;
    if (dtype != DSLA_DTYPE_F32 && dtype != DSLA_DTYPE_BF16)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "dsla_cuda_kv_create: dtype %s (f32 or bf16)",
                          dsla_dtype_name(dtype));
    if (num_blocks < 0 || max_seqs < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_cuda_kv_create: %d blocks, %d sequences",
                          num_blocks, max_seqs);
    dsla_cuda_kv_t *kv = calloc(1, sizeof *kv);
    if (!kv) return dsla_error_oom("dsla_cuda_kv_create");
    kv->m = m;
    kv->num_blocks = num_blocks;
    kv->max_seqs = max_seqs;
    kv->max_blocks = dsla_kv_blocks_for(m->opts.max_context);
    kv->pool.dtype = dtype;
    kv->pool.block_tokens = DSLA_KV_BLOCK_TOKENS;
    const size_t half = dsla_cuda_kv_block_bytes(m, dtype) / 2 * (size_t)num_blocks;
    const size_t half_block = dsla_cuda_kv_block_bytes(m, dtype) / 2;
    const int per_slot = dsla_cuda_kv_blocks_per_slot(m, dtype);
    kv->slot_stride = (size_t)per_slot * half_block;
    kv->slot_used = calloc((size_t)max_seqs, sizeof *kv->slot_used);
    dsla_status_t st = kv->slot_used ? DSLA_OK : dsla_error_oom("dsla_cuda_kv_create");
    if (st == DSLA_OK) st = dsla_kv_arena_create(&kv->arena, num_blocks, per_slot);
    if (st == DSLA_OK) st = dsla_cuda_malloc(&kv->pool.k, half);
    if (st == DSLA_OK) st = dsla_cuda_malloc(&kv->pool.v, half);
    const size_t table_words = (size_t)max_seqs * m->cfg.num_layers * kv->max_blocks;
    if (st == DSLA_OK) st = dsla_cuda_malloc((void **)&kv->tables, table_words * sizeof(int32_t));
    /* Unused table entries point at block 0 so a stray read stays inside the pool. */
    if (st == DSLA_OK) st = dsla_cuda_fill_f32((float *)kv->tables, 0.0f, table_words, m->stream);
    if (st != DSLA_OK) {
        dsla_cuda_kv_destroy(&kv);
        return st;
    }
    *out = kv;
    return DSLA_OK;
}

void dsla_cuda_kv_destroy(dsla_cuda_kv_t **pkv) {
    if (!pkv || !*pkv) return;
    dsla_cuda_kv_t *kv = *pkv;
    if (kv->m->kv_in_graphs == kv) {
        free_graphs(kv->m);
        kv->m->kv_in_graphs = NULL;
    }
    dsla_cuda_stream_sync(kv->m->stream);
    dsla_cuda_free(&kv->pool.k);
    dsla_cuda_free(&kv->pool.v);
    dsla_cuda_free((void **)&kv->tables);
    dsla_kv_arena_destroy(&kv->arena);
    free(kv->slot_used);
    free(kv);
    *pkv = NULL;
}

int dsla_cuda_kv_free_blocks(const dsla_cuda_kv_t *kv) {
    return dsla_kv_arena_free_blocks(kv->arena);
}

int dsla_cuda_kv_free_slots(const dsla_cuda_kv_t *kv) {
    return dsla_kv_arena_free_slots(kv->arena);
}

int dsla_cuda_kv_slots_used(const dsla_cuda_kv_t *kv) {
    return dsla_kv_arena_slots_used(kv->arena);
}

int dsla_cuda_kv_max_slots(const dsla_cuda_kv_t *kv) {
    return dsla_kv_arena_max_slots(kv->arena);
}

int dsla_cuda_kv_blocks_per_slot(const dsla_cuda_model_t *m, dsla_dtype_t dtype) {
    const size_t state =
        (size_t)m->cfg.num_heads * m->cfg.head_dim * m->cfg.head_dim * sizeof(float);
    const size_t half_block = dsla_cuda_kv_block_bytes(m, dtype) / 2;
    return (int)((state + half_block - 1) / half_block);
}

/* The sequence's DSLA states: slots carved from the pool's arena (all or none), or its own. */
static dsla_status_t seq_states(dsla_cuda_seq_t *s, bool in_pool) {
    dsla_cuda_kv_t *kv = s->kv;
    const dsla_cuda_model_t *m = kv->m;
    const int L = m->cfg.num_layers;
    const size_t state_floats = (size_t)m->cfg.num_heads * m->cfg.head_dim * m->cfg.head_dim;
    if (in_pool) {
        int n = 0;
        for (int l = 0; l < L; l++)
            n += s->kinds[l] == DSLA_LAYER_DSLA;
        DSLA_TRY(dsla_kv_arena_take_slots(kv->arena, n, s->state_slots));
        /* Spread from the front of state_slots[] to the DSLA layers, last first. */
        for (int l = L - 1; l >= 0; l--)
            s->state_slots[l] = s->kinds[l] == DSLA_LAYER_DSLA ? s->state_slots[--n] : -1;
    }
    for (int l = 0; l < L; l++) {
        if (s->kinds[l] != DSLA_LAYER_DSLA) continue;
        for (int w = 0; w < 2; w++) {
            dsla_status_t st = DSLA_OK;
            if (in_pool)
                s->states[2 * l + w] = (float *)((char *)(w == 0 ? kv->pool.k : kv->pool.v) +
                                                 (size_t)s->state_slots[l] * kv->slot_stride);
            else
                st = dsla_cuda_malloc((void **)&s->states[2 * l + w], state_floats * sizeof(float));
            if (st == DSLA_OK)
                st = dsla_cuda_fill_f32(s->states[2 * l + w], 0.0f, state_floats, m->stream);
            if (st != DSLA_OK) return st;
        }
    }
    return DSLA_OK;
}

static dsla_status_t seq_create(dsla_cuda_seq_t **out, dsla_cuda_kv_t *kv,
                                const dsla_layer_kind_t *kinds, bool in_pool) {
    *out = NULL;
    const int L = kv->m->cfg.num_layers;
    int slot = -1;
    for (int i = 0; i < kv->max_seqs && slot < 0; i++)
        if (!kv->slot_used[i]) slot = i;
    if (slot < 0)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "dsla_cuda_seq_create: all %d slots in use",
                          kv->max_seqs);
    dsla_cuda_seq_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error_oom("dsla_cuda_seq_create");
    s->kv = kv;
    s->slot = slot;
    s->kinds = calloc((size_t)L, sizeof *s->kinds);
    s->blocks = calloc((size_t)L * kv->max_blocks, sizeof *s->blocks);
    s->states = calloc((size_t)L * 2, sizeof *s->states);
    if (in_pool) s->state_slots = malloc((size_t)L * sizeof *s->state_slots);
    for (int l = 0; s->state_slots && l < L; l++)
        s->state_slots[l] = -1; /* before any failure: destroy gives back only real slots */
    if (!s->kinds || !s->blocks || !s->states || (in_pool && !s->state_slots)) {
        dsla_cuda_seq_destroy(&s);
        return dsla_error_oom("dsla_cuda_seq_create");
    }
    kv->slot_used[slot] = true;
    for (int l = 0; l < L; l++) {
        s->kinds[l] = kinds ? kinds[l] : DSLA_LAYER_ATTN;
    }
    dsla_status_t st = seq_states(s, in_pool);
    if (st != DSLA_OK) {
        dsla_cuda_seq_destroy(&s);
        return st;
    }
    *out = s;
    return DSLA_OK;
}

dsla_status_t dsla_cuda_seq_create(dsla_cuda_seq_t **out, dsla_cuda_kv_t *kv,
                                   const dsla_layer_kind_t *kinds) {
    return seq_create(out, kv, kinds, false);
}

dsla_status_t dsla_cuda_seq_create_in_pool(dsla_cuda_seq_t **out, dsla_cuda_kv_t *kv,
                                           const dsla_layer_kind_t *kinds) {
    return seq_create(out, kv, kinds, true);
}

void dsla_cuda_seq_destroy(dsla_cuda_seq_t **ps) {
    if (!ps || !*ps) return;
    dsla_cuda_seq_t *s = *ps;
    dsla_cuda_kv_t *kv = s->kv;
    const int L = kv->m->cfg.num_layers;
    if (s->kinds) {
        for (int l = 0; l < L; l++) {
            if (s->kinds[l] != DSLA_LAYER_ATTN) continue;
            for (int b = 0; b < s->n_blocks; b++)
                dsla_kv_arena_give_block(kv->arena, s->blocks[(size_t)l * kv->max_blocks + b]);
        }
        kv->slot_used[s->slot] = false;
    }
    /* Slots go back at once: whatever reuses their blocks is ordered after this sequence's
     * pending work on the one stream. */
    if (s->state_slots) {
        for (int l = 0; l < L; l++)
            if (s->state_slots[l] >= 0) dsla_kv_arena_give_slots(kv->arena, &s->state_slots[l], 1);
    } else if (s->states) {
        dsla_cuda_stream_sync(kv->m->stream); /* a pending step may still use the states */
        for (int i = 0; i < 2 * L; i++)
            dsla_cuda_free((void **)&s->states[i]);
    }
    free(s->kinds);
    free(s->blocks);
    free(s->states);
    free(s->state_slots);
    free(s);
    *ps = NULL;
}

int dsla_cuda_seq_length(const dsla_cuda_seq_t *s) {
    return s->length;
}

static int attn_layers(const dsla_cuda_seq_t *s, int L) {
    int n = 0;
    for (int l = 0; l < L; l++)
        n += s->kinds[l] == DSLA_LAYER_ATTN;
    return n;
}

/* Takes blocks so the sequence holds new_len tokens; appends (table index, block) patches. The
 * caller has checked that the pool has them. */
static void seq_grow(dsla_cuda_seq_t *s, int new_len, int32_t *pidx, int32_t *pval, int *np) {
    dsla_cuda_kv_t *kv = s->kv;
    const int L = kv->m->cfg.num_layers, want = dsla_kv_blocks_for(new_len);
    for (int l = 0; l < L; l++) {
        if (s->kinds[l] != DSLA_LAYER_ATTN) continue;
        for (int b = s->n_blocks; b < want; b++) {
            const int32_t blk = dsla_kv_arena_take_block(kv->arena);
            const size_t at = (size_t)l * kv->max_blocks + b;
            s->blocks[at] = blk;
            pidx[*np] = (int32_t)((size_t)s->slot * L * kv->max_blocks + at);
            pval[*np] = blk;
            (*np)++;
        }
    }
    if (want > s->n_blocks) s->n_blocks = want;
}

dsla_status_t dsla_cuda_seq_fill_synthetic(dsla_cuda_seq_t *s, int n_tokens, uint64_t seed) {
    dsla_cuda_kv_t *kv = s->kv;
    dsla_cuda_model_t *m = kv->m;
    const int L = m->cfg.num_layers;
    if (s->length != 0 || n_tokens < 0 || n_tokens > m->opts.max_context)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_seq_fill_synthetic: %d tokens into a sequence of %d (max "
                          "context %d)",
                          n_tokens, s->length, m->opts.max_context);
    const int need = dsla_kv_blocks_for(n_tokens) * attn_layers(s, L);
    if (need > dsla_kv_arena_free_blocks(kv->arena))
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "dsla_cuda_seq_fill_synthetic: needs %d blocks, %d free", need,
                          dsla_kv_arena_free_blocks(kv->arena));
    int32_t *pidx = malloc((size_t)(need + 1) * 2 * sizeof *pidx);
    if (!pidx) return dsla_error_oom("fill_synthetic");
    int np = 0;
    seq_grow(s, n_tokens, pidx, pidx + need + 1, &np);
    dsla_status_t st = DSLA_OK;
    int32_t *dpatch = NULL;
    if (np > 0) {
        st = dsla_cuda_malloc((void **)&dpatch, (size_t)(need + 1) * 2 * sizeof *dpatch);
        if (st == DSLA_OK)
            st = dsla_cuda_copy(dpatch, pidx, (size_t)(need + 1) * 2 * sizeof *dpatch, m->stream);
        if (st == DSLA_OK)
            st = dsla_cuda_scatter_i32(m->stream, kv->tables, dpatch, dpatch + need + 1, np);
    }
    /* Values of a unit-scale key and value: the attention's work does not depend on them. */
    const size_t width = (size_t)m->cfg.num_kv_heads * m->cfg.head_dim;
    const size_t tok = (size_t)DSLA_KV_BLOCK_TOKENS * width;
    for (int l = 0; l < L && st == DSLA_OK; l++) {
        if (s->kinds[l] == DSLA_LAYER_ATTN) {
            for (int b = 0; b < s->n_blocks && st == DSLA_OK; b++) {
                const size_t blk = (size_t)s->blocks[(size_t)l * kv->max_blocks + b];
                void *kp = offset(kv->pool.k, blk * tok, dtype_size(kv->pool.dtype));
                void *vp = offset(kv->pool.v, blk * tok, dtype_size(kv->pool.dtype));
                st = dsla_cuda_fill_uniform(m->stream, kp, kv->pool.dtype, tok, -1.0f, 1.0f,
                                            seed + blk * 2);
                if (st == DSLA_OK)
                    st = dsla_cuda_fill_uniform(m->stream, vp, kv->pool.dtype, tok, -1.0f, 1.0f,
                                                seed + blk * 2 + 1);
            }
        } else {
            const size_t n = (size_t)m->cfg.num_heads * m->cfg.head_dim * m->cfg.head_dim;
            for (int w = 0; w < 2 && st == DSLA_OK; w++)
                st = dsla_cuda_fill_uniform(m->stream, s->states[2 * l + w], DSLA_DTYPE_F32, n,
                                            -0.01f, 0.01f, seed + 977u * (uint64_t)(l + 1) + w);
        }
    }
    if (st == DSLA_OK) st = dsla_cuda_stream_sync(m->stream);
    dsla_cuda_free((void **)&dpatch);
    free(pidx);
    if (st == DSLA_OK) s->length = n_tokens;
    return st;
}

/* ---- forward ---- */

/* Where each part of a step's upload lives, in int32 words from the start of the upload; fixed
 * by (rows, items, logit rows), so a decode graph of a batch size always finds its inputs. */
typedef struct {
    size_t tokens, positions, slots, logit_rows, ctx_lens, table_rows, states, patch_idx, patch_val,
        words;
} step_layout_t;

static step_layout_t step_layout(int L, int rows, int items, int n_logit, int n_patch) {
    step_layout_t y;
    size_t at = 0;
    y.tokens = at, at += (size_t)rows;
    y.positions = at, at += (size_t)rows;
    y.slots = at, at += (size_t)L * rows;
    y.logit_rows = at, at += (size_t)n_logit;
    y.ctx_lens = at, at += (size_t)items;
    y.table_rows = at, at += (size_t)L * items;
    at = (at + 1) & ~(size_t)1; /* pointers are 8-byte aligned */
    y.states = at, at += (size_t)L * 2 * items * 2;
    y.patch_idx = at, at += (size_t)n_patch;
    y.patch_val = at, at += (size_t)n_patch;
    y.words = at;
    return y;
}

/* What the layer loop needs about one item beyond the upload. */
typedef struct {
    int row0, n, past;
    dsla_cuda_seq_t *seq;
} item_plan_t;

/* A step, or one run of it: the consecutive items that run a layer with one kind (per-layer
 * sub-batching, DESIGN.md section 6). A run's items and rows are a window of the step's; the
 * upload is laid out by the whole step (all_items, all_rows), so a run indexes it from item0 and
 * row0. Rows index the activation buffers absolutely (an item's row0 is the step's). */
typedef struct {
    dsla_cuda_kv_t *kv;
    const item_plan_t *items;
    int n_items, rows, n_logit, bucket;
    bool decode;
    bool mixed;                     /* items run some layer with different kinds */
    const dsla_layer_kind_t *kinds; /* item 0's plan (the graphs' key when not mixed) */
    step_layout_t lay;
    int item0, row0, all_items, all_rows;
} step_t;

/* The run of st's items from i on that run layer l with item i's kind. */
static step_t layer_run(const step_t *st, int l, int i) {
    const dsla_layer_kind_t k = st->items[i].seq->kinds[l];
    int n = 1;
    while (i + n < st->n_items && st->items[i + n].seq->kinds[l] == k)
        n++;
    step_t run = *st;
    run.items = st->items + i;
    run.n_items = n;
    run.item0 = st->item0 + i;
    run.row0 = st->items[i].row0;
    const item_plan_t *last = &st->items[i + n - 1];
    run.rows = last->row0 + last->n - run.row0;
    return run;
}

/* Row r of a [rows][width] buffer of elem-byte elements. */
static void *row_at(void *base, int r, int width, size_t elem) {
    return (char *)base + (size_t)r * (size_t)width * elem;
}

/* A prompt (or a chunk of one, after a cached past) of at least CUDNN_MIN_TOKENS tokens: what
 * cuDNN's graphs compute, unless the route for chunks with a past has failed. */
static bool cudnn_item(const dsla_cuda_model_t *m, const item_plan_t *it) {
    return it->n >= CUDNN_MIN_TOKENS && (it->past == 0 || !m->cudnn_past_off);
}

/* Whether this step's prompts can run through cuDNN: bf16 weights (att_c is the bf16 input of
 * o_proj, which cuDNN then writes directly) and pool (the keys and values are rounded to bf16
 * either way, so the result does not depend on the route), a prefill step with at least one
 * prompt cuDNN takes. Loads cuDNN and the bf16 scratch on first use; any failure turns the route
 * off for good. */
static bool cudnn_usable(dsla_cuda_model_t *m, const step_t *st) {
    const dsla_model_config_t *c = &m->cfg;
    const dsla_attn_shape_t shape = {c->num_heads, c->num_kv_heads, c->head_dim};
    if (m->cudnn_off || st->decode || m->opts.weight_dtype != DSLA_DTYPE_BF16 ||
        st->kv->pool.dtype != DSLA_DTYPE_BF16)
        return false;
    bool any = false;
    for (int i = 0; i < st->n_items; i++) {
        any = any || cudnn_item(m, &st->items[i]);
        /* Padded rows of item i spill into item i + 1's, which must be computed after them. */
        if (i > 0 && st->items[i].row0 < st->items[i - 1].row0 + st->items[i - 1].n) return false;
    }
    if (!any) return false;
    if (!m->cudnn) {
        const size_t qkv_w = (size_t)(c->num_heads + 2 * c->num_kv_heads) * c->head_dim;
        const size_t rows =
            (size_t)m->opts.max_batch_tokens + cudnn_slack_rows((size_t)m->opts.max_batch_tokens);
        if (!dsla_cuda_cudnn_attention_supports(&shape) ||
            dsla_cuda_cudnn_create(&m->cudnn) != DSLA_OK ||
            dsla_cuda_malloc((void **)&m->qkv_c, rows * qkv_w * sizeof(uint16_t)) != DSLA_OK) {
            dsla_cuda_cudnn_destroy(&m->cudnn);
            m->cudnn_off = true;
            dsla_clear_error();
            return false;
        }
    }
    return true;
}

/* Prepares a cuDNN step: q, k, v rounded to bf16 once for the whole step, and the rows past the
 * step that the last prompt's bucket reads zeroed (its padded v rows enter the product with weight
 * 0 and must be finite; the earlier prompts' padded rows are the next prompt's real ones). */
static dsla_status_t cudnn_prepare(dsla_cuda_model_t *m, const step_t *st) {
    const dsla_model_config_t *c = &m->cfg;
    const size_t qkv_w = (size_t)(c->num_heads + 2 * c->num_kv_heads) * c->head_dim;
    const size_t row0 = (size_t)st->row0, stop = row0 + (size_t)st->rows;
    DSLA_TRY(dsla_cuda_to_bf16(m->stream, m->qkv_c + row0 * qkv_w, m->qkv + row0 * qkv_w,
                               (size_t)st->rows * qkv_w));
    size_t end = stop;
    for (int i = 0; i < st->n_items; i++) {
        const item_plan_t *it = &st->items[i];
        const size_t e = (size_t)it->row0 + (size_t)dsla_cuda_cudnn_rows(it->n);
        if (cudnn_item(m, it) && e > end) end = e;
    }
    if (end == stop) return DSLA_OK;
    return dsla_cuda_zero(m->qkv_c + stop * qkv_w, (end - stop) * qkv_w * sizeof(uint16_t),
                          m->stream);
}

/* A chunk with a past: its keys and values (past + n positions, from the pool the step has just
 * written) gathered into kv_gk / kv_gv, zero-padded to the bucket cuDNN reads. */
static dsla_status_t cudnn_gather(dsla_cuda_model_t *m, const step_t *st, int l,
                                  const item_plan_t *it) {
    const dsla_model_config_t *c = &m->cfg;
    const int kvw = c->num_kv_heads * c->head_dim;
    const size_t rows = (size_t)dsla_cuda_cudnn_kv_rows(it->past + it->n);
    if (rows > m->kv_g_rows) {
        dsla_cuda_free((void **)&m->kv_gk);
        dsla_cuda_free((void **)&m->kv_gv);
        m->kv_g_rows = 0;
        const size_t cap = (size_t)m->opts.max_context + cudnn_slack_rows(m->opts.max_context);
        const size_t want = rows > cap ? rows : cap;
        DSLA_TRY(dsla_cuda_malloc((void **)&m->kv_gk, want * kvw * sizeof(uint16_t)));
        DSLA_TRY(dsla_cuda_malloc((void **)&m->kv_gv, want * kvw * sizeof(uint16_t)));
        m->kv_g_rows = want;
    }
    const dsla_cuda_kv_t *kv = st->kv;
    const int32_t *table =
        kv->tables + ((size_t)it->seq->slot * c->num_layers + l) * (size_t)kv->max_blocks;
    return dsla_cuda_kv_gather(m->stream, &kv->pool, table, it->past + it->n, (int)rows, kvw,
                               m->kv_gk, m->kv_gv);
}

/* One prompt's attention through cuDNN, straight into att_c (o_proj's bf16 input); false when the
 * call failed, after which that route (with or without a past) stays off: attention.cu's kernels
 * compute the same function. */
static bool cudnn_prefill(dsla_cuda_model_t *m, const step_t *st, int l, const item_plan_t *it) {
    const dsla_model_config_t *c = &m->cfg;
    const int d = c->head_dim, qw = c->num_heads * d, kvw = c->num_kv_heads * d;
    const int qkv_w = qw + 2 * kvw;
    const dsla_attn_shape_t shape = {c->num_heads, c->num_kv_heads, d};
    const uint16_t *q = m->qkv_c + (size_t)it->row0 * qkv_w;
    uint16_t *out = (uint16_t *)m->att_c + (size_t)it->row0 * qw;
    dsla_status_t s;
    if (it->past == 0) {
        s = dsla_cuda_attention_prefill_cudnn(m->cudnn, m->stream, out, qw, q, q + qw, q + qw + kvw,
                                              qkv_w, it->n, &shape);
    } else {
        s = cudnn_gather(m, st, l, it);
        if (s == DSLA_OK)
            s = dsla_cuda_attention_prefill_cudnn_past(m->cudnn, m->stream, out, qw, q, qkv_w,
                                                       m->kv_gk, m->kv_gv, kvw, it->n, it->past,
                                                       &shape);
    }
    if (s == DSLA_OK) {
        m->stats.cudnn_prefills++;
        return true;
    }
    if (it->past == 0)
        m->cudnn_off = true;
    else
        m->cudnn_past_off = true;
    dsla_clear_error();
    return false;
}

/* Attention on attention.cu's kernels, into att, for item i or, when it is a lone token, for
 * the `count` one-token items from i on (their rows are consecutive): those take the decode
 * kernel as one batch, as in a decode step, so that a step mixing prompts with many decodes costs
 * one launch per layer for the decodes rather than one per decode (version 1 ran one per item:
 * with 140 decodes of ~1.2K tokens, ~20 us each, ~90 ms a step on an H200). Longer items take the
 * prefill kernel over the paged cache. */
static dsla_status_t own_attention(dsla_cuda_model_t *m, const step_t *st, int l,
                                   const item_plan_t *it, int i, int count) {
    const dsla_model_config_t *c = &m->cfg;
    const int d = c->head_dim, H = c->num_heads, Hkv = c->num_kv_heads, L = c->num_layers;
    const int qw = H * d, kvw = Hkv * d, qkv_w = qw + 2 * kvw;
    const dsla_attn_shape_t shape = {H, Hkv, d};
    dsla_cuda_kv_t *kv = st->kv;
    if (it->n == 1) {
        const dsla_cuda_decode_batch_t run = {
            kv->tables, m->dstep + st->lay.table_rows + (size_t)l * st->all_items + st->item0 + i,
            m->dstep + st->lay.ctx_lens + st->item0 + i, kv->max_blocks};
        return dsla_cuda_attention_decode_pool(
            m->stream, m->att + (size_t)it->row0 * qw, qw, m->qkv + (size_t)it->row0 * qkv_w, qkv_w,
            count, st->bucket, &shape, &kv->pool, &run, m->dec_ws, m->dec_ws_bytes);
    }
    const int32_t *table = kv->tables + ((size_t)it->seq->slot * L + l) * (size_t)kv->max_blocks;
    return dsla_cuda_attention_prefill_pool(m->stream, m->att + (size_t)it->row0 * qw, qw,
                                            m->qkv + (size_t)it->row0 * qkv_w, qkv_w, it->n,
                                            it->past, &shape, &kv->pool, table);
}

/* Items from i on that are lone tokens (at least 1 when item i is one; 1 for a prompt): one
 * batched decode call serves them, unless runs are off. */
static int decode_run(const dsla_cuda_model_t *m, const step_t *st, int i) {
    int n = 1;
    if (st->items[i].n != 1 || m->decode_runs_off) return n;
    while (i + n < st->n_items && st->items[i + n].n == 1)
        n++;
    return n;
}

static dsla_status_t run_attention(dsla_cuda_model_t *m, const step_t *st, int l) {
    const dsla_model_config_t *c = &m->cfg;
    const int d = c->head_dim, H = c->num_heads, Hkv = c->num_kv_heads;
    const int qw = H * d, kvw = Hkv * d, qkv_w = qw + 2 * kvw, D = c->hidden_size;
    const dsla_attn_shape_t shape = {H, Hkv, d};
    dsla_cuda_kv_t *kv = st->kv;
    float *qkv = m->qkv + (size_t)st->row0 * qkv_w;
    mark(m, DSLA_CUDA_PHASE_GEMM);
    DSLA_TRY(dsla_cuda_gemm(m->blas, m->stream, qkv, DSLA_DTYPE_F32,
                            row_at(m->xn, st->row0, D, m->wsize), m->layers[l].wqkv,
                            m->opts.weight_dtype, st->rows, qkv_w, D, 0.0f));
    mark(m, DSLA_CUDA_PHASE_ATTENTION);
    DSLA_TRY(dsla_cuda_rope(m->stream, qkv, st->rows, qkv_w, H + Hkv, d,
                            m->dstep + st->lay.positions + st->row0, m->inv_freq));
    DSLA_TRY(dsla_cuda_kv_write(m->stream, &kv->pool,
                                m->dstep + st->lay.slots + (size_t)l * st->all_rows + st->row0,
                                st->rows, kvw, qkv + qw, qkv + qw + kvw, qkv_w));
    if (st->decode) {
        const dsla_cuda_decode_batch_t batch = {
            kv->tables, m->dstep + st->lay.table_rows + (size_t)l * st->all_items + st->item0,
            m->dstep + st->lay.ctx_lens + st->item0, kv->max_blocks};
        return dsla_cuda_attention_decode_pool(m->stream, m->att + (size_t)st->row0 * qw, qw, qkv,
                                               qkv_w, st->n_items, st->bucket, &shape, &kv->pool,
                                               &batch, m->dec_ws, m->dec_ws_bytes);
    }
    /* Prompts cuDNN takes write att_c directly; the others run attention.cu's kernels into att, and
     * on a cuDNN step their rows are converted to att_c one item at a time (in row order: a
     * cuDNN item's padded rows land on the next item's, which are written after them). */
    const bool via_cudnn = cudnn_usable(m, st);
    if (via_cudnn) DSLA_TRY(cudnn_prepare(m, st));
    for (int i = 0, count; i < st->n_items; i += count) {
        const item_plan_t *it = &st->items[i];
        count = 1;
        if (via_cudnn && !m->cudnn_off && cudnn_item(m, it) && cudnn_prefill(m, st, l, it))
            continue;
        count = decode_run(m, st, i);
        DSLA_TRY(own_attention(m, st, l, it, i, count));
        const int rows = it->n == 1 ? count : it->n;
        if (via_cudnn)
            DSLA_TRY(dsla_cuda_to_bf16(m->stream, (uint16_t *)m->att_c + (size_t)it->row0 * qw,
                                       m->att + (size_t)it->row0 * qw, (size_t)rows * qw));
    }
    m->att_c_ready = via_cudnn;
    return DSLA_OK;
}

/* Scratch of the chunked DSLA forward, sized once for max_batch_tokens on first use. */
static dsla_status_t dsla_chunked_scratch(dsla_cuda_model_t *m) {
    if (m->dsla_ws) return DSLA_OK;
    const dsla_model_config_t *c = &m->cfg;
    const dsla_dsla_dims_t dims = {1, m->opts.max_batch_tokens, c->num_heads, c->head_dim};
    const size_t state_bytes = (size_t)c->num_heads * c->head_dim * c->head_dim * sizeof(float);
    m->dsla_ws_bytes = dsla_cuda_dsla_chunked_workspace_bytes(&dims);
    DSLA_TRY(dsla_cuda_malloc((void **)&m->dsla_s1, state_bytes));
    DSLA_TRY(dsla_cuda_malloc((void **)&m->dsla_s2, state_bytes));
    return dsla_cuda_malloc(&m->dsla_ws, m->dsla_ws_bytes);
}

static dsla_status_t run_dsla(dsla_cuda_model_t *m, const step_t *st, int l) {
    const dsla_model_config_t *c = &m->cfg;
    const int d = c->head_dim, H = c->num_heads, qw = H * d, D = c->hidden_size;
    const dev_dsla_t *w = &m->dsla[l];
    /* The five projections of the run's rows, one plane each (row j of a plane is the run's row
     * row0 + j); the outputs go to att at the step's rows. */
    const size_t pn = (size_t)st->rows * qw;
    float *att = m->att + (size_t)st->row0 * qw;
    mark(m, DSLA_CUDA_PHASE_GEMM);
    for (int p = 0; p < DSLA_PROJ; p++)
        DSLA_TRY(dsla_cuda_gemm(m->blas, m->stream, m->qkv + p * pn, DSLA_DTYPE_F32,
                                row_at(m->xn, st->row0, D, m->wsize),
                                offset(w->w5, (size_t)p * qw * D, m->wsize), m->opts.weight_dtype,
                                st->rows, qw, D, 0.0f));
    float *q = m->qkv, *k = q + pn, *v = k + pn, *a1 = v + pn, *a2 = a1 + pn;
    mark(m, DSLA_CUDA_PHASE_DSLA);
    DSLA_TRY(dsla_cuda_add_row_bias(m->stream, a1, qw, w->bias, st->rows, qw));
    DSLA_TRY(dsla_cuda_add_row_bias(m->stream, a2, qw, w->bias + qw, st->rows, qw));
    if (st->decode) {
        const dsla_dsla_dims_t dims = {st->n_items, 1, H, d};
        const dsla_cuda_dsla_in_t in = {q, k, v, a1, a2, DSLA_DTYPE_F32, w->alpha};
        float *const *slots =
            (float *const *)(m->dstep + st->lay.states + (size_t)l * 2 * st->all_items * 2) +
            st->item0;
        const dsla_cuda_dsla_states_t states = {NULL, NULL, slots, slots + st->all_items};
        return dsla_cuda_dsla_decode(m->stream, &dims, &in, &states, att);
    }
    const bool chunked = dsla_cuda_dsla_chunked_supports(d) != 0;
    const dsla_dsla_dims_t dims = {1, 1, H, d};
    const size_t state_bytes = (size_t)H * d * d * sizeof(float);
    float *const *slots =
        (float *const *)(m->dstep + st->lay.states + (size_t)l * 2 * st->all_items * 2) + st->item0;
    for (int i = 0, count; i < st->n_items; i += count) {
        const item_plan_t *it = &st->items[i];
        float *s1 = it->seq->states[2 * l], *s2 = it->seq->states[2 * l + 1];
        const dsla_cuda_dsla_states_t states = {s1, s2, NULL, NULL};
        count = decode_run(m, st, i);
        if (count > 1) {
            /* Consecutive lone tokens: one recurrent step over their slots, as a decode step. */
            const dsla_dsla_dims_t rd = {count, 1, H, d};
            const size_t r = (size_t)(it->row0 - st->row0) * qw;
            const dsla_cuda_dsla_in_t in = {q + r,  k + r,          v + r,   a1 + r,
                                            a2 + r, DSLA_DTYPE_F32, w->alpha};
            const dsla_cuda_dsla_states_t run = {NULL, NULL, slots + i, slots + st->all_items + i};
            DSLA_TRY(dsla_cuda_dsla_decode(m->stream, &rd, &in, &run, att + r));
            continue;
        }
        if (chunked && it->n > 1) {
            /* Prompts: the chunked form, from the sequence's states into scratch, copied back
             * (the kernel's final states must not alias its initial ones). */
            const dsla_dsla_dims_t cd = {1, it->n, H, d};
            const size_t r = (size_t)(it->row0 - st->row0) * qw;
            const dsla_cuda_dsla_in_t in = {q + r,  k + r,          v + r,   a1 + r,
                                            a2 + r, DSLA_DTYPE_F32, w->alpha};
            const dsla_cuda_dsla_math_t math = m->opts.weight_dtype == DSLA_DTYPE_F32
                                                   ? DSLA_CUDA_DSLA_MATH_F32
                                                   : DSLA_CUDA_DSLA_MATH_TF32;
            DSLA_TRY(dsla_chunked_scratch(m));
            DSLA_TRY(dsla_cuda_dsla_chunked_forward(m->stream, &cd, &in, math, s1, s2, att + r,
                                                    m->dsla_s1, m->dsla_s2, m->dsla_ws,
                                                    m->dsla_ws_bytes));
            DSLA_TRY(dsla_cuda_copy(s1, m->dsla_s1, state_bytes, m->stream));
            DSLA_TRY(dsla_cuda_copy(s2, m->dsla_s2, state_bytes, m->stream));
            continue;
        }
        /* Head dims the chunked kernel does not take: one recurrent step per token. */
        for (int t = 0; t < it->n; t++) {
            const size_t r = (size_t)(it->row0 - st->row0 + t) * qw;
            const dsla_cuda_dsla_in_t in = {q + r,  k + r,          v + r,   a1 + r,
                                            a2 + r, DSLA_DTYPE_F32, w->alpha};
            DSLA_TRY(dsla_cuda_dsla_decode(m->stream, &dims, &in, &states, att + r));
        }
    }
    return DSLA_OK;
}

/* Every kernel of one forward pass, in stream order (what a decode graph captures). */
static dsla_status_t run_body(dsla_cuda_model_t *m, const step_t *st) {
    const dsla_model_config_t *c = &m->cfg;
    const int D = c->hidden_size, d = c->head_dim, I = c->intermediate_size;
    const int qw = c->num_heads * d, V = c->vocab_size, rows = st->rows;
    const dsla_dtype_t wt = m->opts.weight_dtype;
    const float eps = c->rms_norm_eps;
    DSLA_TRY(
        dsla_cuda_embedding(m->stream, m->x, m->embed, wt, m->dstep + st->lay.tokens, rows, D, V));
    const int run_layers = m->capture_layers > 0 ? m->capture_layers : c->num_layers;
    for (int l = 0; l < run_layers; l++) {
        const dev_layer_t *w = &m->layers[l];
        if (m->capture[l])
            DSLA_TRY(
                dsla_cuda_copy(m->capture[l], m->x, (size_t)rows * D * sizeof(float), m->stream));
        mark(m, DSLA_CUDA_PHASE_OTHER);
        DSLA_TRY(dsla_cuda_rmsnorm(m->stream, m->xn, wt, m->x, w->attn_norm, rows, D, eps));
        /* Items that run this layer as attention and items that run it as DSLA take their own
         * projections and kernels, a run of consecutive items at a time (one run unless plans
         * mix); the MLP below takes every row at once. */
        for (int i = 0; i < st->n_items;) {
            const step_t run = layer_run(st, l, i);
            const bool dsla = run.items[0].seq->kinds[l] == DSLA_LAYER_DSLA;
            m->att_c_ready = false;
            DSLA_TRY(dsla ? run_dsla(m, &run, l) : run_attention(m, &run, l));
            void *att_c = row_at(m->att_c, run.row0, qw, m->wsize);
            if (m->att_c != m->att && !m->att_c_ready)
                DSLA_TRY(dsla_cuda_to_bf16(m->stream, att_c, m->att + (size_t)run.row0 * qw,
                                           (size_t)run.rows * qw));
            /* The residual adds ride on the output projections (beta = 1). */
            mark(m, DSLA_CUDA_PHASE_GEMM);
            DSLA_TRY(dsla_cuda_gemm(m->blas, m->stream, m->x + (size_t)run.row0 * D, DSLA_DTYPE_F32,
                                    att_c, dsla ? m->dsla[l].wo : w->wo, wt, run.rows, D, qw,
                                    1.0f));
            i += run.n_items;
        }
        mark(m, DSLA_CUDA_PHASE_OTHER);
        DSLA_TRY(dsla_cuda_rmsnorm(m->stream, m->xn, wt, m->x, w->mlp_norm, rows, D, eps));
        mark(m, DSLA_CUDA_PHASE_GEMM);
        DSLA_TRY(dsla_cuda_gemm(m->blas, m->stream, m->gu, DSLA_DTYPE_F32, m->xn, w->w_gate_up, wt,
                                rows, 2 * I, D, 0.0f));
        mark(m, DSLA_CUDA_PHASE_OTHER);
        DSLA_TRY(dsla_cuda_swiglu(m->stream, m->act, wt, m->gu, m->gu + I, rows, I, 2 * I));
        mark(m, DSLA_CUDA_PHASE_GEMM);
        DSLA_TRY(dsla_cuda_gemm(m->blas, m->stream, m->x, DSLA_DTYPE_F32, m->act, w->w_down, wt,
                                rows, D, I, 1.0f));
    }
    if (m->capture[run_layers])
        DSLA_TRY(dsla_cuda_copy(m->capture[run_layers], m->x, (size_t)rows * D * sizeof(float),
                                m->stream));
    mark(m, DSLA_CUDA_PHASE_OTHER);
    DSLA_TRY(dsla_cuda_gather_rows(m->stream, m->last_x, D, m->x, D, m->dstep + st->lay.logit_rows,
                                   st->n_logit, D));
    DSLA_TRY(dsla_cuda_rmsnorm(m->stream, m->last_xn, wt, m->last_x, m->final_norm, st->n_logit, D,
                               eps));
    mark(m, DSLA_CUDA_PHASE_GEMM);
    return dsla_cuda_gemm(m->blas, m->stream, m->logits, DSLA_DTYPE_F32, m->last_xn, m->lm_head, wt,
                          st->n_logit, V, D, 0.0f);
}

static uint64_t plan_hash(const dsla_layer_kind_t *kinds, int L) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (int l = 0; l < L; l++) {
        h ^= (uint64_t)kinds[l];
        h *= 1099511628211ull;
    }
    return h;
}

/* Replays (capturing first if needed) the decode graph for this step's shape. */
static dsla_status_t run_graph(dsla_cuda_model_t *m, const step_t *st, bool *ran) {
    *ran = false;
    if (m->kv_in_graphs != st->kv) {
        free_graphs(m);
        m->kv_in_graphs = st->kv;
    }
    const uint64_t plan = plan_hash(st->kinds, m->cfg.num_layers);
    for (int i = 0; i < m->n_graphs; i++) {
        graph_entry_t *g = &m->graphs[i];
        if (g->batch == st->n_items && g->bucket == st->bucket && g->plan == plan) {
            g->used = ++m->graph_clock;
            DSLA_TRY(dsla_cuda_graph_launch(g->graph, m->stream));
            m->stats.graph_replays++;
            *ran = true;
            return DSLA_OK;
        }
    }
    int at = m->n_graphs;
    if (at == GRAPH_CACHE) {
        at = 0;
        for (int i = 1; i < GRAPH_CACHE; i++)
            if (m->graphs[i].used < m->graphs[at].used) at = i;
        dsla_cuda_graph_destroy(&m->graphs[at].graph);
        m->graphs[at] = m->graphs[--m->n_graphs];
        at = m->n_graphs;
    }
    if (dsla_cuda_capture_begin(m->stream) != DSLA_OK) {
        m->stats.graphs_disabled = true;
        m->opts.graphs = false;
        dsla_clear_error();
        return DSLA_OK;
    }
    const dsla_status_t body = run_body(m, st);
    dsla_cuda_graph_t *graph = NULL;
    const dsla_status_t end = dsla_cuda_capture_end(m->stream, &graph);
    if (body != DSLA_OK || end != DSLA_OK) {
        /* Not fatal: the step runs uncaptured and graphs stay off from here on. */
        dsla_cuda_graph_destroy(&graph);
        m->stats.graphs_disabled = true;
        m->opts.graphs = false;
        dsla_clear_error();
        return DSLA_OK;
    }
    m->graphs[at] = (graph_entry_t){st->n_items, st->bucket, plan, graph, ++m->graph_clock};
    m->n_graphs = at + 1;
    m->stats.graph_captures++;
    DSLA_TRY(dsla_cuda_graph_launch(graph, m->stream));
    m->stats.graph_replays++;
    *ran = true;
    return DSLA_OK;
}

static int context_bucket(int len, int max_context) {
    int b = CTX_BUCKET_MIN;
    while (b < len)
        b *= 2;
    return b < max_context ? b : max_context;
}

static dsla_status_t validate(dsla_cuda_model_t *m, const dsla_cuda_batch_item_t *items,
                              int n_items, int *rows_out, int *logit_out, int *blocks_out) {
    const dsla_model_config_t *c = &m->cfg;
    const int L = c->num_layers;
    if (n_items < 1 || n_items > m->opts.max_seqs)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_model_forward: %d items (1..%d, max_seqs)", n_items,
                          m->opts.max_seqs);
    dsla_cuda_kv_t *kv = items[0].seq ? items[0].seq->kv : NULL;
    int rows = 0, logit = 0, blocks = 0;
    for (int i = 0; i < n_items; i++) {
        const dsla_cuda_batch_item_t *it = &items[i];
        if (!it->seq || it->seq->kv != kv || it->n_tokens < 1 || !it->tokens)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "dsla_cuda_model_forward: item %d: needs a sequence of the batch's "
                              "pool and >= 1 tokens (has %d)",
                              i, it->n_tokens);
        for (int j = 0; j < i; j++)
            if (items[j].seq == it->seq)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "dsla_cuda_model_forward: items %d and %d name one sequence", j,
                                  i);
        const int len = it->seq->length + it->n_tokens;
        if (len > m->opts.max_context)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "dsla_cuda_model_forward: item %d: context %d + %d tokens exceeds "
                              "max_context %d",
                              i, it->seq->length, it->n_tokens, m->opts.max_context);
        for (int t = 0; t < it->n_tokens; t++)
            if (it->tokens[t] < 0 || it->tokens[t] >= c->vocab_size)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "dsla_cuda_model_forward: item %d token %d: id %d outside the "
                                  "vocabulary of %d",
                                  i, t, it->tokens[t], c->vocab_size);
        for (int l = 0; l < L; l++) {
            const dsla_layer_kind_t k = it->seq->kinds[l];
            if (k == DSLA_LAYER_DSLA && !m->dsla[l].installed)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "dsla_cuda_model_forward: layer %d runs as DSLA but no DSLA "
                                  "weights are installed (dsla_cuda_model_set_dsla_layer)",
                                  l);
        }
        rows += it->n_tokens;
        logit += it->want_all_logits ? it->n_tokens : 1;
        blocks += (dsla_kv_blocks_for(len) - it->seq->n_blocks) * attn_layers(it->seq, L);
    }
    if (rows > m->opts.max_batch_tokens || logit > m->opts.max_logit_rows)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_model_forward: %d tokens and %d logit rows; the model was "
                          "made for %d and %d",
                          rows, logit, m->opts.max_batch_tokens, m->opts.max_logit_rows);
    if (blocks > dsla_kv_arena_free_blocks(kv->arena))
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "dsla_cuda_model_forward: needs %d KV blocks, the pool has %d free",
                          blocks, dsla_kv_arena_free_blocks(kv->arena));
    *rows_out = rows;
    *logit_out = logit;
    *blocks_out = blocks;
    return DSLA_OK;
}

dsla_status_t dsla_cuda_model_forward(dsla_cuda_model_t *m, const dsla_cuda_batch_item_t *items,
                                      int n_items, float *logits_host) {
    const dsla_model_config_t *c = &m->cfg;
    const int L = c->num_layers;
    int rows = 0, n_logit = 0, n_blocks = 0;
    DSLA_TRY(validate(m, items, n_items, &rows, &n_logit, &n_blocks));
    dsla_cuda_kv_t *kv = items[0].seq->kv;
    item_plan_t *plan = malloc((size_t)n_items * sizeof *plan);
    if (!plan) return dsla_error_oom("dsla_cuda_model_forward");

    /* The previous step's upload must have left the staging buffer before it is rewritten. */
    dsla_status_t status = dsla_cuda_event_sync(m->uploaded);
    const step_layout_t lay = step_layout(L, rows, n_items, n_logit, n_blocks);
    int32_t *stage = m->stage;
    int np = 0, row = 0, logit_row = 0, max_len = 0;
    bool decode = true;
    for (int i = 0; i < n_items && status == DSLA_OK; i++) {
        const dsla_cuda_batch_item_t *it = &items[i];
        dsla_cuda_seq_t *s = it->seq;
        const int past = s->length, n = it->n_tokens;
        plan[i] = (item_plan_t){row, n, past, s};
        seq_grow(s, past + n, stage + lay.patch_idx, stage + lay.patch_val, &np);
        for (int t = 0; t < n; t++) {
            const int pos = past + t;
            stage[lay.tokens + row + t] = it->tokens[t];
            stage[lay.positions + row + t] = pos;
            for (int l = 0; l < L; l++) {
                int32_t slot = 0;
                if (s->kinds[l] == DSLA_LAYER_ATTN)
                    slot = s->blocks[(size_t)l * kv->max_blocks + pos / DSLA_KV_BLOCK_TOKENS] *
                               DSLA_KV_BLOCK_TOKENS +
                           pos % DSLA_KV_BLOCK_TOKENS;
                stage[lay.slots + (size_t)l * rows + row + t] = slot;
            }
        }
        if (it->want_all_logits)
            for (int t = 0; t < n; t++)
                stage[lay.logit_rows + logit_row++] = row + t;
        else
            stage[lay.logit_rows + logit_row++] = row + n - 1;
        stage[lay.ctx_lens + i] = past + n;
        uint64_t *ptrs = (uint64_t *)(stage + lay.states);
        for (int l = 0; l < L; l++) {
            stage[lay.table_rows + (size_t)l * n_items + i] = s->slot * L + l;
            for (int w = 0; w < 2; w++)
                ptrs[((size_t)l * 2 + w) * n_items + i] = (uint64_t)(uintptr_t)s->states[2 * l + w];
        }
        row += n;
        max_len = past + n > max_len ? past + n : max_len;
        decode = decode && n == 1;
    }
    if (status == DSLA_OK)
        status = dsla_cuda_copy(m->dstep, stage, lay.words * sizeof(int32_t), m->stream);
    if (status == DSLA_OK) status = dsla_cuda_event_record(m->uploaded, m->stream);
    if (status == DSLA_OK)
        status = dsla_cuda_scatter_i32(m->stream, kv->tables, m->dstep + lay.patch_idx,
                                       m->dstep + lay.patch_val, np);
    bool mixed = false;
    for (int i = 1; i < n_items && !mixed; i++)
        mixed = memcmp(items[i].seq->kinds, items[0].seq->kinds,
                       (size_t)c->num_layers * sizeof(dsla_layer_kind_t)) != 0;
    const step_t st = {.kv = kv,
                       .items = plan,
                       .n_items = n_items,
                       .rows = rows,
                       .n_logit = n_logit,
                       .bucket = context_bucket(max_len, m->opts.max_context),
                       .decode = decode,
                       .mixed = mixed,
                       .kinds = items[0].seq->kinds,
                       .lay = lay,
                       .all_items = n_items,
                       .all_rows = rows};
    bool ran = false;
    const bool phases = m->timing == DSLA_CUDA_TIMING_PHASES;
    if (m->timing != DSLA_CUDA_TIMING_OFF)
        dsla_cuda_phase_timer_begin(m->timer, m->stream, phases, DSLA_CUDA_PHASE_OTHER);
    /* A pass split by phase records events between kernels, which a graph cannot hold. */
    /* Graphs are keyed by one plan: a step mixing plans runs uncaptured (its runs change with
     * the mix, step to step). */
    if (status == DSLA_OK && decode && m->opts.graphs && !phases && !mixed)
        status = run_graph(m, &st, &ran);
    if (status == DSLA_OK && !ran) status = run_body(m, &st);
    if (m->timing != DSLA_CUDA_TIMING_OFF) dsla_cuda_phase_timer_end(m->timer, m->stream);
    for (int i = 0; i < n_items; i++)
        items[i].seq->length = plan[i].past + plan[i].n;
    m->logit_rows = n_logit;
    free(plan);
    DSLA_TRY(status);
    if (logits_host) {
        DSLA_TRY(dsla_cuda_copy(logits_host, m->logits,
                                (size_t)n_logit * c->vocab_size * sizeof(float), m->stream));
        DSLA_TRY(dsla_cuda_stream_sync(m->stream));
    }
    return DSLA_OK;
}

dsla_status_t dsla_cuda_model_set_capture(dsla_cuda_model_t *m, float *const *hidden,
                                          int layers_to_run) {
    const int L = m->cfg.num_layers;
    if (layers_to_run < 0 || layers_to_run > L || L > DSLA_LAYER_ORDER_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "capture: layers_to_run %d is outside 0..%d",
                          layers_to_run, L);
    for (int l = 0; l <= L; l++)
        m->capture[l] = hidden ? hidden[l] : NULL;
    m->capture_layers = hidden ? layers_to_run : 0;
    return DSLA_OK;
}

dsla_status_t dsla_cuda_model_sample(dsla_cuda_model_t *m, const dsla_cuda_sample_row_t *params,
                                     int rows, int32_t *tokens_host) {
    if (rows < 1 || rows > m->logit_rows)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_model_sample: %d rows; the last forward pass made %d", rows,
                          m->logit_rows);
    const int V = m->cfg.vocab_size;
    bool greedy = true;
    for (int r = 0; r < rows; r++)
        greedy = greedy && (params[r].temperature <= 0.0f || params[r].top_k == 1);
    if (greedy) {
        DSLA_TRY(dsla_cuda_argmax(m->stream, m->tok_dev, m->logits, rows, V));
    } else {
        /* The staging copy must finish before the next call rewrites it: the sync below does. */
        memcpy(m->sample_host, params, (size_t)rows * sizeof *params);
        DSLA_TRY(dsla_cuda_copy(m->sample_dev, m->sample_host, (size_t)rows * sizeof *params,
                                m->stream));
        DSLA_TRY(dsla_cuda_sample(m->stream, m->tok_dev, m->logits, rows, V, m->sample_dev,
                                  m->sample_ws, m->sample_ws_bytes));
    }
    DSLA_TRY(dsla_cuda_copy(m->tok_host, m->tok_dev, (size_t)rows * sizeof(int32_t), m->stream));
    DSLA_TRY(dsla_cuda_stream_sync(m->stream));
    memcpy(tokens_host, m->tok_host, (size_t)rows * sizeof(int32_t));
    return DSLA_OK;
}

#endif /* DSLA_HAVE_CUDA */

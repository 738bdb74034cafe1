/* Paged KV cache: blocks from a KV arena (kv_arena.h), per-layer block tables per sequence, DSLA
 * states in the sequence's own memory or in slots carved from the pool's arena. */
#include "runtime/model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/core/tensor.h"
#include "runtime/model/dsla_layer.h"
#include "runtime/model/kv_arena.h"

struct dsla_kv_pool {
    int num_blocks;
    int num_layers;
    int token_width;          /* kv_heads * head_dim */
    int max_blocks_per_layer; /* a full context: ceil(max_position_embeddings / block) */
    float *keys;              /* [num_blocks][DSLA_KV_BLOCK_TOKENS][token_width] */
    float *values;
    size_t state_floats; /* H d d: one DSLA state */
    dsla_kv_arena_t *arena;
};

struct dsla_sequence {
    dsla_kv_pool_t *pool;
    int length;
    int num_layers;
    dsla_layer_kind_t *kinds; /* [num_layers] */
    int32_t *tables;     /* [num_layers][max_blocks_per_layer]: fixed, so decode never reallocs */
    int *table_len;      /* [num_layers] blocks held per layer */
    size_t state_floats; /* H d d: one state */
    int *n_states;       /* [num_layers] 0 (ATTN), 1 or 2 */
    float **states;      /* [num_layers][2]: the history and recency states, or NULL */
    const dsla_dsla_layer_t **pinned; /* [num_layers] pinned versions, or NULL when unpinned */
    int *slots; /* [num_layers] the pool's slot holding layer l's states, -1 when none; NULL when
                   the sequence allocated its states itself */
};

dsla_status_t dsla_kv_pool_create(dsla_kv_pool_t **out, const dsla_model_config_t *cfg,
                                  int num_blocks) {
    *out = NULL;
    if (num_blocks < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "KV pool: num_blocks %d must be at least 1",
                          num_blocks);
    dsla_kv_pool_t *p = calloc(1, sizeof *p);
    if (!p) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "KV pool: out of memory");
    p->num_blocks = num_blocks;
    p->num_layers = cfg->num_layers;
    p->token_width = cfg->num_kv_heads * cfg->head_dim;
    p->max_blocks_per_layer = dsla_kv_blocks_for(cfg->max_position_embeddings);
    p->state_floats = (size_t)cfg->num_heads * (size_t)cfg->head_dim * (size_t)cfg->head_dim;
    /* A slot lays its history state over the key halves of its blocks and its recency state over
     * the value halves. */
    const size_t half_block = (size_t)DSLA_KV_BLOCK_TOKENS * (size_t)p->token_width;
    const int per_slot = (int)((p->state_floats + half_block - 1) / half_block);
    dsla_status_t st = dsla_kv_arena_create(&p->arena, num_blocks, per_slot);
    if (st != DSLA_OK) {
        dsla_kv_pool_destroy(&p);
        return st;
    }
    size_t floats = (size_t)num_blocks * half_block;
    p->keys = dsla_alloc(floats * sizeof(float));
    p->values = dsla_alloc(floats * sizeof(float));
    if (!p->keys || !p->values) {
        dsla_kv_pool_destroy(&p);
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY,
                          "KV pool: out of memory for %d blocks of %zu bytes", num_blocks,
                          2 * DSLA_KV_BLOCK_TOKENS * (size_t)cfg->num_kv_heads *
                              (size_t)cfg->head_dim * sizeof(float));
    }
    *out = p;
    return DSLA_OK;
}

void dsla_kv_pool_destroy(dsla_kv_pool_t **p) {
    if (!p || !*p) return;
    dsla_free((*p)->keys);
    dsla_free((*p)->values);
    dsla_kv_arena_destroy(&(*p)->arena);
    free(*p);
    *p = NULL;
}

int dsla_kv_pool_free_blocks(const dsla_kv_pool_t *p) {
    return dsla_kv_arena_free_blocks(p->arena);
}

int dsla_kv_pool_blocks_per_slot(const dsla_kv_pool_t *p) {
    return dsla_kv_arena_blocks_per_slot(p->arena);
}

int dsla_kv_pool_free_slots(const dsla_kv_pool_t *p) {
    return dsla_kv_arena_free_slots(p->arena);
}

int dsla_kv_pool_max_slots(const dsla_kv_pool_t *p) {
    return dsla_kv_arena_max_slots(p->arena);
}

int dsla_kv_pool_slots_used(const dsla_kv_pool_t *p) {
    return dsla_kv_arena_slots_used(p->arena);
}

int dsla_kv_pool_num_blocks(const dsla_kv_pool_t *p) {
    return p->num_blocks;
}

int dsla_kv_pool_token_width(const dsla_kv_pool_t *p) {
    return p->token_width;
}

int dsla_kv_pool_num_layers(const dsla_kv_pool_t *p) {
    return p->num_layers;
}

float *dsla_kv_pool_keys(dsla_kv_pool_t *p) {
    return p->keys;
}

float *dsla_kv_pool_values(dsla_kv_pool_t *p) {
    return p->values;
}

dsla_status_t dsla_sequence_create(dsla_sequence_t **out, dsla_kv_pool_t *pool,
                                   const dsla_model_config_t *cfg) {
    return dsla_sequence_create_planned(out, pool, cfg, NULL);
}

dsla_status_t dsla_sequence_create_planned(dsla_sequence_t **out, dsla_kv_pool_t *pool,
                                           const dsla_model_config_t *cfg,
                                           const dsla_layer_kind_t *kinds) {
    return dsla_sequence_create_pinned(out, pool, cfg, kinds, NULL);
}

static dsla_status_t check_pinned(const dsla_model_config_t *cfg, const dsla_layer_kind_t *kinds,
                                  const dsla_dsla_layer_t *const *layers) {
    for (int l = 0; kinds && l < cfg->num_layers; l++) {
        if (kinds[l] != DSLA_LAYER_DSLA) continue;
        const dsla_dsla_layer_t *w = layers[l];
        if (!w)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "sequence: layer %d runs as DSLA but no DSLA layer is pinned for it",
                              l);
        if (w->layer != l || w->heads != cfg->num_heads || w->head_dim != cfg->head_dim ||
            w->model_dim != cfg->hidden_size)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "sequence: the DSLA layer pinned for layer %d was made for layer %d "
                              "with %d heads of %d over width %d; the model has %d heads of %d "
                              "over width %d",
                              l, w->layer, w->heads, w->head_dim, w->model_dim, cfg->num_heads,
                              cfg->head_dim, cfg->hidden_size);
    }
    return DSLA_OK;
}

/* The DSLA layers' zeroed states: carved from the pool's arena (all or none) or allocated. */
static dsla_status_t alloc_states(dsla_sequence_t *s, bool in_pool) {
    int n_dsla = 0;
    for (int l = 0; l < s->num_layers; l++) {
        if (s->kinds[l] != DSLA_LAYER_DSLA) continue;
        s->n_states[l] = s->pinned && s->pinned[l]->single_state ? 1 : 2;
        n_dsla++;
    }
    const size_t bytes = s->state_floats * sizeof(float);
    if (in_pool) {
        DSLA_TRY(dsla_kv_arena_take_slots(s->pool->arena, n_dsla, s->slots));
        /* Spread from the front of slots[] to the DSLA layers, last first. */
        for (int l = s->num_layers - 1; l >= 0; l--)
            s->slots[l] = s->kinds[l] == DSLA_LAYER_DSLA ? s->slots[--n_dsla] : -1;
        const size_t per_slot = (size_t)dsla_kv_arena_blocks_per_slot(s->pool->arena) *
                                DSLA_KV_BLOCK_TOKENS * (size_t)s->pool->token_width;
        for (int l = 0; l < s->num_layers; l++) {
            if (s->slots[l] < 0) continue;
            s->states[2 * l] = s->pool->keys + (size_t)s->slots[l] * per_slot;
            s->states[2 * l + 1] = s->pool->values + (size_t)s->slots[l] * per_slot;
            for (int w = 0; w < s->n_states[l]; w++)
                memset(s->states[2 * l + w], 0, bytes);
        }
        return DSLA_OK;
    }
    for (int l = 0; l < s->num_layers; l++) {
        if (s->kinds[l] != DSLA_LAYER_DSLA) continue;
        s->states[2 * l] = dsla_calloc((size_t)s->n_states[l] * s->state_floats, sizeof(float));
        if (!s->states[2 * l])
            return dsla_error(DSLA_ERR_OUT_OF_MEMORY,
                              "sequence: out of memory for layer %d's DSLA state (%zu bytes)", l,
                              (size_t)s->n_states[l] * bytes);
        if (s->n_states[l] == 2) s->states[2 * l + 1] = s->states[2 * l] + s->state_floats;
    }
    return DSLA_OK;
}

static dsla_status_t sequence_create(dsla_sequence_t **out, dsla_kv_pool_t *pool,
                                     const dsla_model_config_t *cfg, const dsla_layer_kind_t *kinds,
                                     const dsla_dsla_layer_t *const *layers, bool in_pool) {
    *out = NULL;
    if (cfg->num_layers != pool->num_layers ||
        cfg->num_kv_heads * cfg->head_dim != pool->token_width)
        return dsla_error(
            DSLA_ERR_INVALID_ARGUMENT,
            "sequence: the KV pool was made for %d layers of %d floats per token, the "
            "config has %d layers of %d",
            pool->num_layers, pool->token_width, cfg->num_layers,
            cfg->num_kv_heads * cfg->head_dim);
    for (int l = 0; kinds && l < cfg->num_layers; l++)
        if ((int)kinds[l] < 0 || kinds[l] >= DSLA_LAYER_KIND_COUNT)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "sequence: layer %d has unknown kind %d",
                              l, (int)kinds[l]);
    if (layers) DSLA_TRY(check_pinned(cfg, kinds, layers));
    dsla_sequence_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "sequence: out of memory");
    s->pool = pool;
    s->num_layers = cfg->num_layers;
    s->kinds = calloc((size_t)s->num_layers, sizeof *s->kinds);
    s->tables =
        malloc((size_t)s->num_layers * (size_t)pool->max_blocks_per_layer * sizeof *s->tables);
    s->table_len = calloc((size_t)s->num_layers, sizeof *s->table_len);
    s->n_states = calloc((size_t)s->num_layers, sizeof *s->n_states);
    s->states = calloc(2 * (size_t)s->num_layers, sizeof *s->states);
    s->state_floats = pool->state_floats;
    if (layers) s->pinned = calloc((size_t)s->num_layers, sizeof *s->pinned);
    if (in_pool) s->slots = malloc((size_t)s->num_layers * sizeof *s->slots);
    for (int l = 0; s->slots && l < s->num_layers; l++)
        s->slots[l] = -1; /* before any failure: destroy gives back only real slots */
    if (!s->kinds || !s->tables || !s->table_len || !s->n_states || !s->states ||
        (layers && !s->pinned) || (in_pool && !s->slots)) {
        dsla_sequence_destroy(&s);
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "sequence: out of memory for block tables");
    }
    for (int l = 0; l < s->num_layers; l++) {
        s->kinds[l] = kinds ? kinds[l] : DSLA_LAYER_ATTN;
        if (s->pinned && s->kinds[l] == DSLA_LAYER_DSLA) s->pinned[l] = layers[l];
    }
    dsla_status_t st = alloc_states(s, in_pool);
    if (st != DSLA_OK) {
        dsla_sequence_destroy(&s);
        return st;
    }
    *out = s;
    return DSLA_OK;
}

dsla_status_t dsla_sequence_create_pinned(dsla_sequence_t **out, dsla_kv_pool_t *pool,
                                          const dsla_model_config_t *cfg,
                                          const dsla_layer_kind_t *kinds,
                                          const dsla_dsla_layer_t *const *layers) {
    return sequence_create(out, pool, cfg, kinds, layers, false);
}

dsla_status_t dsla_sequence_create_in_pool(dsla_sequence_t **out, dsla_kv_pool_t *pool,
                                           const dsla_model_config_t *cfg,
                                           const dsla_layer_kind_t *kinds,
                                           const dsla_dsla_layer_t *const *layers) {
    return sequence_create(out, pool, cfg, kinds, layers, true);
}

static void release_blocks_from(dsla_sequence_t *s, int keep) {
    for (int l = 0; l < s->num_layers; l++) {
        int32_t *table = s->tables + (size_t)l * s->pool->max_blocks_per_layer;
        while (s->table_len[l] > keep)
            dsla_kv_arena_give_block(s->pool->arena, table[--s->table_len[l]]);
    }
}

void dsla_sequence_destroy(dsla_sequence_t **s) {
    if (!s || !*s) return;
    dsla_sequence_t *q = *s;
    if (q->table_len) release_blocks_from(q, 0);
    if (q->slots) {
        for (int l = 0; l < q->num_layers; l++)
            if (q->slots[l] >= 0) dsla_kv_arena_give_slots(q->pool->arena, &q->slots[l], 1);
    } else if (q->states) {
        for (int l = 0; l < q->num_layers; l++)
            dsla_free(q->states[2 * l]);
    }
    free((*s)->slots);
    free((*s)->states);
    free((*s)->n_states);
    free((*s)->pinned);
    free((*s)->kinds);
    free((*s)->tables);
    free((*s)->table_len);
    free(*s);
    *s = NULL;
}

int dsla_sequence_length(const dsla_sequence_t *s) {
    return s->length;
}

dsla_layer_kind_t dsla_sequence_layer_kind(const dsla_sequence_t *s, int layer) {
    return s->kinds[layer];
}

dsla_kv_pool_t *dsla_sequence_pool(const dsla_sequence_t *s) {
    return s->pool;
}

int dsla_sequence_num_blocks(const dsla_sequence_t *s) {
    int n = 0;
    for (int l = 0; l < s->num_layers; l++)
        n += s->table_len[l];
    return n;
}

int dsla_sequence_blocks_needed(const dsla_sequence_t *s, int n_tokens) {
    int want = dsla_kv_blocks_for(s->length + n_tokens);
    int needed = 0;
    for (int l = 0; l < s->num_layers; l++)
        if (s->kinds[l] == DSLA_LAYER_ATTN && s->table_len[l] < want)
            needed += want - s->table_len[l];
    return needed;
}

dsla_status_t dsla_sequence_reserve(dsla_sequence_t *s, int n_tokens) {
    int want = dsla_kv_blocks_for(s->length + n_tokens);
    if (want > s->pool->max_blocks_per_layer)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "sequence: %d tokens exceed the context of %d blocks of %d tokens",
                          s->length + n_tokens, s->pool->max_blocks_per_layer,
                          DSLA_KV_BLOCK_TOKENS);
    int needed = dsla_sequence_blocks_needed(s, n_tokens);
    int free_blocks = dsla_kv_arena_free_blocks(s->pool->arena);
    if (needed > free_blocks)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "KV pool exhausted: %d more tokens need %d blocks, %d of %d are free",
                          n_tokens, needed, free_blocks, s->pool->num_blocks);
    for (int l = 0; l < s->num_layers; l++) {
        if (s->kinds[l] != DSLA_LAYER_ATTN) continue;
        int32_t *table = s->tables + (size_t)l * s->pool->max_blocks_per_layer;
        while (s->table_len[l] < want)
            table[s->table_len[l]++] = dsla_kv_arena_take_block(s->pool->arena);
    }
    return DSLA_OK;
}

void dsla_sequence_release_unused(dsla_sequence_t *s) {
    release_blocks_from(s, dsla_kv_blocks_for(s->length));
}

void dsla_sequence_advance(dsla_sequence_t *s, int n_tokens) {
    s->length += n_tokens;
}

int dsla_sequence_dsla_states(const dsla_sequence_t *s, int layer) {
    return s->n_states[layer];
}

float *dsla_sequence_dsla_state(dsla_sequence_t *s, int layer, int which) {
    if (which < 0 || which >= s->n_states[layer]) return NULL;
    return s->states[2 * layer + which];
}

const dsla_dsla_layer_t *dsla_sequence_dsla_layer(const dsla_sequence_t *s, int layer) {
    return s->pinned ? s->pinned[layer] : NULL;
}

size_t dsla_sequence_state_bytes(const dsla_sequence_t *s) {
    size_t n = 0;
    for (int l = 0; l < s->num_layers; l++)
        n += (size_t)s->n_states[l] * s->state_floats * sizeof(float);
    return n;
}

const int32_t *dsla_sequence_block_table(const dsla_sequence_t *s, int layer) {
    return s->tables + (size_t)layer * s->pool->max_blocks_per_layer;
}

static size_t slot_offset(const dsla_sequence_t *s, int layer, int pos) {
    int32_t block = dsla_sequence_block_table(s, layer)[pos / DSLA_KV_BLOCK_TOKENS];
    return ((size_t)block * DSLA_KV_BLOCK_TOKENS + (size_t)(pos % DSLA_KV_BLOCK_TOKENS)) *
           (size_t)s->pool->token_width;
}

float *dsla_sequence_key_slot(dsla_sequence_t *s, int layer, int pos) {
    return s->pool->keys + slot_offset(s, layer, pos);
}

float *dsla_sequence_value_slot(dsla_sequence_t *s, int layer, int pos) {
    return s->pool->values + slot_offset(s, layer, pos);
}

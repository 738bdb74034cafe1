/* Paged KV cache: block pool with a free stack, per-layer block tables per sequence. */
#include "runtime/model/kv_cache.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/core/tensor.h"

struct dsla_kv_pool {
    int num_blocks;
    int num_layers;
    int token_width;          /* kv_heads * head_dim */
    int max_blocks_per_layer; /* a full context: ceil(max_position_embeddings / block) */
    float *keys;              /* [num_blocks][DSLA_KV_BLOCK_TOKENS][token_width] */
    float *values;
    int32_t *free_stack; /* ids of free blocks; the top is free_stack[num_free - 1] */
    int num_free;
};

struct dsla_sequence {
    dsla_kv_pool_t *pool;
    int length;
    int num_layers;
    dsla_layer_kind_t *kinds; /* [num_layers] */
    int32_t *tables; /* [num_layers][max_blocks_per_layer]: fixed, so decode never reallocs */
    int *table_len;  /* [num_layers] blocks held per layer */
};

static int blocks_for(int tokens) {
    return (tokens + DSLA_KV_BLOCK_TOKENS - 1) / DSLA_KV_BLOCK_TOKENS;
}

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
    p->max_blocks_per_layer = blocks_for(cfg->max_position_embeddings);
    size_t floats = (size_t)num_blocks * DSLA_KV_BLOCK_TOKENS * (size_t)p->token_width;
    p->keys = dsla_alloc(floats * sizeof(float));
    p->values = dsla_alloc(floats * sizeof(float));
    p->free_stack = malloc((size_t)num_blocks * sizeof *p->free_stack);
    if (!p->keys || !p->values || !p->free_stack) {
        dsla_kv_pool_destroy(&p);
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY,
                          "KV pool: out of memory for %d blocks of %zu bytes", num_blocks,
                          2 * DSLA_KV_BLOCK_TOKENS * (size_t)cfg->num_kv_heads *
                              (size_t)cfg->head_dim * sizeof(float));
    }
    /* Lowest ids on top, so a fresh pool hands out blocks in address order. */
    for (int i = 0; i < num_blocks; i++)
        p->free_stack[i] = num_blocks - 1 - i;
    p->num_free = num_blocks;
    *out = p;
    return DSLA_OK;
}

void dsla_kv_pool_destroy(dsla_kv_pool_t **p) {
    if (!p || !*p) return;
    dsla_free((*p)->keys);
    dsla_free((*p)->values);
    free((*p)->free_stack);
    free(*p);
    *p = NULL;
}

int dsla_kv_pool_free_blocks(const dsla_kv_pool_t *p) {
    return p->num_free;
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
    dsla_sequence_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "sequence: out of memory");
    s->pool = pool;
    s->num_layers = cfg->num_layers;
    s->kinds = calloc((size_t)s->num_layers, sizeof *s->kinds);
    s->tables =
        malloc((size_t)s->num_layers * (size_t)pool->max_blocks_per_layer * sizeof *s->tables);
    s->table_len = calloc((size_t)s->num_layers, sizeof *s->table_len);
    if (!s->kinds || !s->tables || !s->table_len) {
        dsla_sequence_destroy(&s);
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "sequence: out of memory for block tables");
    }
    for (int l = 0; l < s->num_layers; l++)
        s->kinds[l] = kinds ? kinds[l] : DSLA_LAYER_ATTN;
    *out = s;
    return DSLA_OK;
}

static void release_blocks_from(dsla_sequence_t *s, int keep) {
    for (int l = 0; l < s->num_layers; l++) {
        int32_t *table = s->tables + (size_t)l * s->pool->max_blocks_per_layer;
        while (s->table_len[l] > keep)
            s->pool->free_stack[s->pool->num_free++] = table[--s->table_len[l]];
    }
}

void dsla_sequence_destroy(dsla_sequence_t **s) {
    if (!s || !*s) return;
    if ((*s)->table_len) release_blocks_from(*s, 0);
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
    int want = blocks_for(s->length + n_tokens);
    int needed = 0;
    for (int l = 0; l < s->num_layers; l++)
        if (s->kinds[l] == DSLA_LAYER_ATTN && s->table_len[l] < want)
            needed += want - s->table_len[l];
    return needed;
}

dsla_status_t dsla_sequence_reserve(dsla_sequence_t *s, int n_tokens) {
    int want = blocks_for(s->length + n_tokens);
    if (want > s->pool->max_blocks_per_layer)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "sequence: %d tokens exceed the context of %d blocks of %d tokens",
                          s->length + n_tokens, s->pool->max_blocks_per_layer,
                          DSLA_KV_BLOCK_TOKENS);
    int needed = dsla_sequence_blocks_needed(s, n_tokens);
    if (needed > s->pool->num_free)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "KV pool exhausted: %d more tokens need %d blocks, %d of %d are free",
                          n_tokens, needed, s->pool->num_free, s->pool->num_blocks);
    for (int l = 0; l < s->num_layers; l++) {
        if (s->kinds[l] != DSLA_LAYER_ATTN) continue;
        int32_t *table = s->tables + (size_t)l * s->pool->max_blocks_per_layer;
        while (s->table_len[l] < want)
            table[s->table_len[l]++] = s->pool->free_stack[--s->pool->num_free];
    }
    return DSLA_OK;
}

void dsla_sequence_release_unused(dsla_sequence_t *s) {
    release_blocks_from(s, blocks_for(s->length));
}

void dsla_sequence_advance(dsla_sequence_t *s, int n_tokens) {
    s->length += n_tokens;
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

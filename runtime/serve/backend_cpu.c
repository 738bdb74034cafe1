/* The CPU backend (backend.h): dsla_model_forward over a host KV pool (kv_cache.h) whose arena
 * also holds the sequences' DSLA state slots; every layer of a batch is sub-batched per plan inside
 * the model (DESIGN.md section 6). */
#include <stdlib.h>

#include "runtime/model/kv_cache.h"
#include "runtime/serve/backend.h"

typedef struct {
    dsla_serve_backend_t base;
    dsla_model_t *model;
    dsla_kv_pool_t *kv;
    int max_items;
    dsla_batch_item_t *items; /* [max_items] */
} cpu_backend_t;

static void cpu_destroy(dsla_serve_backend_t *b) {
    cpu_backend_t *c = (cpu_backend_t *)b;
    dsla_kv_pool_destroy(&c->kv);
    free(c->items);
    free(c);
}

static dsla_status_t cpu_seq_create(dsla_serve_backend_t *b, const dsla_plan_t *plan,
                                    dsla_serve_seq_t **out) {
    cpu_backend_t *c = (cpu_backend_t *)b;
    dsla_sequence_t *seq = NULL;
    DSLA_TRY(dsla_sequence_create_in_pool(&seq, c->kv, b->cfg, dsla_plan_kinds(plan),
                                          dsla_plan_layers(plan)));
    *out = (dsla_serve_seq_t *)seq;
    return DSLA_OK;
}

static void cpu_seq_destroy(dsla_serve_backend_t *b, dsla_serve_seq_t *s) {
    (void)b;
    dsla_sequence_t *seq = (dsla_sequence_t *)s;
    dsla_sequence_destroy(&seq);
}

static int cpu_seq_blocks_needed(const dsla_serve_backend_t *b, const dsla_serve_seq_t *s,
                                 int n_tokens) {
    (void)b;
    return dsla_sequence_blocks_needed((const dsla_sequence_t *)s, n_tokens);
}

static int cpu_free_blocks(const dsla_serve_backend_t *b) {
    return dsla_kv_pool_free_blocks(((const cpu_backend_t *)b)->kv);
}

static int cpu_free_slots(const dsla_serve_backend_t *b) {
    return dsla_kv_pool_free_slots(((const cpu_backend_t *)b)->kv);
}

static int cpu_slots_used(const dsla_serve_backend_t *b) {
    return dsla_kv_pool_slots_used(((const cpu_backend_t *)b)->kv);
}

static dsla_status_t cpu_forward(dsla_serve_backend_t *b, const dsla_serve_item_t *items,
                                 int n_items, float *logits) {
    cpu_backend_t *c = (cpu_backend_t *)b;
    if (n_items > c->max_items)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "cpu backend: %d items, at most %d", n_items,
                          c->max_items);
    for (int i = 0; i < n_items; i++)
        c->items[i] = (dsla_batch_item_t){(dsla_sequence_t *)items[i].seq, items[i].tokens,
                                          items[i].n_tokens, items[i].want_all_logits};
    return dsla_model_forward(c->model, c->items, n_items, logits);
}

static const dsla_serve_backend_ops_t cpu_ops = {
    .destroy = cpu_destroy,
    .seq_create = cpu_seq_create,
    .seq_destroy = cpu_seq_destroy,
    .seq_blocks_needed = cpu_seq_blocks_needed,
    .free_blocks = cpu_free_blocks,
    .free_slots = cpu_free_slots,
    .slots_used = cpu_slots_used,
    .forward = cpu_forward,
};

dsla_status_t dsla_serve_backend_cpu_create(dsla_serve_backend_t **out, dsla_model_t *model,
                                            int kv_blocks, int max_items, bool batch_invariant) {
    *out = NULL;
    if (max_items < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "cpu backend: max_items %d must be >= 1",
                          max_items);
    cpu_backend_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("cpu backend");
    const dsla_model_config_t *mc = dsla_model_config(model);
    c->base = (dsla_serve_backend_t){
        .ops = &cpu_ops,
        .cfg = mc,
        .name = "cpu",
        .kv_blocks = kv_blocks,
        .max_context = mc->max_position_embeddings,
        .all_logits = true,
        .costs = dsla_step_costs_for(mc, sizeof(float), sizeof(float)), /* fp32 weights and KV */
    };
    c->model = model;
    c->max_items = max_items;
    dsla_model_set_batch_invariant(model, batch_invariant);
    dsla_status_t s = dsla_kv_pool_create(&c->kv, mc, kv_blocks);
    if (s == DSLA_OK) {
        c->base.blocks_per_slot = dsla_kv_pool_blocks_per_slot(c->kv);
        c->base.max_slots = dsla_kv_pool_max_slots(c->kv);
        c->items = calloc((size_t)max_items, sizeof *c->items);
        if (!c->items) s = dsla_error_oom("cpu backend");
    }
    if (s != DSLA_OK) {
        cpu_destroy(&c->base);
        return s;
    }
    *out = &c->base;
    return DSLA_OK;
}

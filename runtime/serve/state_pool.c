/* DSLA state slots: one contiguous allocation and a free stack of slot ids. */
#include "runtime/serve/state_pool.h"

#include <stdbool.h>
#include <stdlib.h>

#include "runtime/core/tensor.h"

struct dsla_state_pool {
    int num_slots;
    size_t slot_floats; /* 2 H d d */
    float *data;        /* [num_slots][slot_floats] */
    bool owns_data;
    int *free_stack; /* the top is free_stack[num_free - 1] */
    int num_free;
};

/* memory NULL: the pool allocates host memory of its own. */
static dsla_status_t pool_create(dsla_state_pool_t **out, const dsla_model_config_t *cfg,
                                 int num_slots, float *memory) {
    *out = NULL;
    if (num_slots < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "state pool: num_slots %d must not be negative", num_slots);
    dsla_state_pool_t *p = calloc(1, sizeof *p);
    if (!p) return dsla_error_oom("state pool");
    p->num_slots = num_slots;
    p->slot_floats = 2 * (size_t)cfg->num_heads * (size_t)cfg->head_dim * (size_t)cfg->head_dim;
    if (num_slots > 0) {
        p->owns_data = memory == NULL;
        p->data = memory ? memory : dsla_alloc((size_t)num_slots * p->slot_floats * sizeof(float));
        p->free_stack = malloc((size_t)num_slots * sizeof *p->free_stack);
        if (!p->data || !p->free_stack) {
            const size_t slot_bytes = p->slot_floats * sizeof(float);
            dsla_state_pool_destroy(&p);
            return dsla_error_oom("state pool: %d slots of %zu bytes", num_slots, slot_bytes);
        }
    }
    for (int i = 0; i < num_slots; i++)
        p->free_stack[i] = num_slots - 1 - i;
    p->num_free = num_slots;
    *out = p;
    return DSLA_OK;
}

dsla_status_t dsla_state_pool_create(dsla_state_pool_t **out, const dsla_model_config_t *cfg,
                                     int num_slots) {
    return pool_create(out, cfg, num_slots, NULL);
}

dsla_status_t dsla_state_pool_create_over(dsla_state_pool_t **out, const dsla_model_config_t *cfg,
                                          int num_slots, float *memory) {
    if (num_slots > 0 && !memory)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "state pool: %d slots over no memory",
                          num_slots);
    return pool_create(out, cfg, num_slots, memory);
}

void dsla_state_pool_destroy(dsla_state_pool_t **p) {
    if (!p || !*p) return;
    if ((*p)->owns_data) dsla_free((*p)->data);
    free((*p)->free_stack);
    free(*p);
    *p = NULL;
}

int dsla_state_pool_num_slots(const dsla_state_pool_t *p) {
    return p->num_slots;
}

int dsla_state_pool_free_slots(const dsla_state_pool_t *p) {
    return p->num_free;
}

size_t dsla_state_pool_slot_bytes(const dsla_state_pool_t *p) {
    return p->slot_floats * sizeof(float);
}

dsla_status_t dsla_state_pool_acquire(dsla_state_pool_t *p, int n, int *ids) {
    if (n > p->num_free)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "state pool exhausted: %d slots needed, %d of %d free", n, p->num_free,
                          p->num_slots);
    for (int i = 0; i < n; i++)
        ids[i] = p->free_stack[--p->num_free];
    return DSLA_OK;
}

void dsla_state_pool_release(dsla_state_pool_t *p, const int *ids, int n) {
    for (int i = 0; i < n; i++)
        p->free_stack[p->num_free++] = ids[i];
}

float *dsla_state_pool_slot(dsla_state_pool_t *p, int id) {
    return p->data + (size_t)id * p->slot_floats;
}

/* The DSLA state pool: fixed fp32 slots, one per sequence per layer it runs as DSLA (DESIGN.md
 * section 6).
 *
 * Every slot holds the two states [H, d, d] of one layer (history, recency; a single-state layer
 * uses the first half), allocated once at creation so that serving memory is bounded and decided
 * up front, like the KV pool's. Slots are handed out all-or-nothing for one request's DSLA layers
 * and returned when it finishes, is cancelled or is preempted. The pool only counts and hands out
 * memory; zeroing and use belong to the sequence (kv_cache.h, llama_cuda.h). Not thread-safe: the
 * engine owns it from one thread. */
#ifndef DSLA_SERVE_STATE_POOL_H
#define DSLA_SERVE_STATE_POOL_H

#include <stddef.h>

#include "runtime/core/status.h"
#include "runtime/model/config.h"

typedef struct dsla_state_pool dsla_state_pool_t;

/* num_slots may be 0 (an engine that never runs DSLA layers). */
dsla_status_t dsla_state_pool_create(dsla_state_pool_t **out, const dsla_model_config_t *cfg,
                                     int num_slots);
/* A pool over caller-owned memory of num_slots slots (device memory for the GPU backend: the pool
 * only computes slot addresses and never touches the memory, which must outlive the pool). */
dsla_status_t dsla_state_pool_create_over(dsla_state_pool_t **out, const dsla_model_config_t *cfg,
                                          int num_slots, float *memory);
void dsla_state_pool_destroy(dsla_state_pool_t **p);

int dsla_state_pool_num_slots(const dsla_state_pool_t *p);
int dsla_state_pool_free_slots(const dsla_state_pool_t *p);
/* Bytes of one slot: 2 * H * d * d floats. */
size_t dsla_state_pool_slot_bytes(const dsla_state_pool_t *p);

/* n slot ids into ids[], all or none: RESOURCE_EXHAUSTED (naming needed and free) when short. */
dsla_status_t dsla_state_pool_acquire(dsla_state_pool_t *p, int n, int *ids);
/* Returns n slots (ids from acquire). */
void dsla_state_pool_release(dsla_state_pool_t *p, const int *ids, int n);
float *dsla_state_pool_slot(dsla_state_pool_t *p, int id);

#endif

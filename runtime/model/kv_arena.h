/* The KV arena: one pool of blocks that serves both the paged KV cache and the DSLA state slots
 * (DESIGN.md section 6). It hands out block ids only; the memory belongs to its owner (the CPU
 * pool in kv_cache.c, the device pool in llama_cuda.c), which maps ids to addresses.
 *
 * A KV block is one DSLA_KV_BLOCK_TOKENS-token block of keys and values. A DSLA state slot (the
 * 2 H d d fp32 state of one layer of one sequence) is a run of blocks_per_slot contiguous blocks,
 * blocks_per_slot = ceil(slot bytes / block bytes): the owner lays the history state over the run's
 * key halves and the recency state over its value halves. Nothing is set aside for slots: while no
 * layer runs as DSLA every block is KV, a conversion carves slots out of free blocks and a slot
 * given back is KV again.
 *
 * Fragmentation. The arena is cut into chunks of blocks_per_slot contiguous blocks, aligned on
 * their first block (a shorter tail chunk takes KV only); a slot is always one whole chunk. Chunks
 * sit in buckets by how many of their blocks are free, and a KV block is taken from the fullest
 * chunk that still has one (best fit), so KV packs into chunks that are already mixed and leaves
 * the wholly free chunks whole for slots. Freed blocks go back to their own chunk, and a chunk
 * whose last KV block frees is whole again: nothing ever needs moving. What fragmentation remains
 * (free blocks scattered over partly used chunks) is still usable by KV, which every plan short of
 * all DSLA needs; it only delays a slot until a sequence holding blocks in that chunk ends, and
 * admission (runtime/serve/scheduler.c) asks both questions: enough free blocks for the request's
 * KV and slots together, and enough whole chunks for its slots. With blocks_per_slot 1 it is a
 * plain block pool.
 *
 * Every operation is O(blocks_per_slot) at worst. Not thread-safe: one owner, one thread. It
 * allocates nothing after create and never touches the memory it describes. */
#ifndef DSLA_MODEL_KV_ARENA_H
#define DSLA_MODEL_KV_ARENA_H

#include <stdint.h>

#include "runtime/core/status.h"

typedef struct dsla_kv_arena dsla_kv_arena_t;

/* num_blocks >= 0 blocks, slots of blocks_per_slot >= 1 blocks. */
dsla_status_t dsla_kv_arena_create(dsla_kv_arena_t **out, int num_blocks, int blocks_per_slot);
void dsla_kv_arena_destroy(dsla_kv_arena_t **a);

int dsla_kv_arena_num_blocks(const dsla_kv_arena_t *a);
int dsla_kv_arena_blocks_per_slot(const dsla_kv_arena_t *a);
/* Blocks neither KV nor part of a slot. */
int dsla_kv_arena_free_blocks(const dsla_kv_arena_t *a);
/* Blocks held as KV. */
int dsla_kv_arena_kv_blocks(const dsla_kv_arena_t *a);
/* Slots that could be carved now (whole free chunks), at most, and in use. */
int dsla_kv_arena_free_slots(const dsla_kv_arena_t *a);
int dsla_kv_arena_max_slots(const dsla_kv_arena_t *a);
int dsla_kv_arena_slots_used(const dsla_kv_arena_t *a);

/* One free block as KV; the caller has checked that free_blocks > 0. */
int32_t dsla_kv_arena_take_block(dsla_kv_arena_t *a);
void dsla_kv_arena_give_block(dsla_kv_arena_t *a, int32_t block);

/* n slots into ids[] (slot id s covers blocks s*blocks_per_slot ...), all or none:
 * RESOURCE_EXHAUSTED naming needed, carvable and free blocks when short. */
dsla_status_t dsla_kv_arena_take_slots(dsla_kv_arena_t *a, int n, int *ids);
void dsla_kv_arena_give_slots(dsla_kv_arena_t *a, const int *ids, int n);

#endif

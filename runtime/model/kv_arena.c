/* The KV arena (kv_arena.h): chunks of blocks_per_slot blocks in buckets by free count, a free
 * stack per chunk. */
#include "runtime/model/kv_arena.h"

#include <stdbool.h>
#include <stdlib.h>

struct dsla_kv_arena {
    int num_blocks;
    int per_slot; /* blocks per slot: the chunk size */
    int num_chunks;
    int free_total;
    int slots_used;
    int *nfree;     /* [num_chunks] free blocks of the chunk (0 for a slot) */
    int *cap;       /* [num_chunks] blocks of the chunk (per_slot, less for the tail) */
    bool *is_slot;  /* [num_chunks] */
    int *prev;      /* [num_chunks] the chunk's bucket list, -1 at the ends */
    int *next;      /* [num_chunks] */
    int *head;      /* [per_slot + 1] first chunk of bucket f (f free blocks), -1 when empty */
    int *count;     /* [per_slot + 1] chunks in bucket f */
    int32_t *stack; /* [num_blocks] chunk c's free blocks at stack[c*per_slot ..][0, nfree[c]) */
};

static void unlink_chunk(dsla_kv_arena_t *a, int c) {
    const int f = a->nfree[c];
    if (a->prev[c] >= 0)
        a->next[a->prev[c]] = a->next[c];
    else
        a->head[f] = a->next[c];
    if (a->next[c] >= 0) a->prev[a->next[c]] = a->prev[c];
    a->prev[c] = a->next[c] = -1;
    a->count[f]--;
}

/* At the front: the chunk just touched is the next one taken from, for locality. */
static void link_chunk(dsla_kv_arena_t *a, int c) {
    const int f = a->nfree[c];
    a->prev[c] = -1;
    a->next[c] = a->head[f];
    if (a->head[f] >= 0) a->prev[a->head[f]] = c;
    a->head[f] = c;
    a->count[f]++;
}

/* Every block of chunk c free, the lowest on top (a fresh arena hands out blocks in address
 * order). */
static void refill_chunk(dsla_kv_arena_t *a, int c) {
    const int first = c * a->per_slot;
    for (int i = 0; i < a->cap[c]; i++)
        a->stack[first + i] = first + a->cap[c] - 1 - i;
    a->nfree[c] = a->cap[c];
}

dsla_status_t dsla_kv_arena_create(dsla_kv_arena_t **out, int num_blocks, int blocks_per_slot) {
    *out = NULL;
    if (num_blocks < 0 || blocks_per_slot < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "KV arena: %d blocks (>= 0) in slots of %d blocks (>= 1)", num_blocks,
                          blocks_per_slot);
    dsla_kv_arena_t *a = calloc(1, sizeof *a);
    if (!a) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "KV arena: out of memory");
    a->num_blocks = num_blocks;
    a->per_slot = blocks_per_slot;
    a->num_chunks = (num_blocks + blocks_per_slot - 1) / blocks_per_slot;
    const size_t C = (size_t)a->num_chunks + 1, F = (size_t)blocks_per_slot + 1;
    a->nfree = calloc(C, sizeof *a->nfree);
    a->cap = calloc(C, sizeof *a->cap);
    a->is_slot = calloc(C, sizeof *a->is_slot);
    a->prev = calloc(C, sizeof *a->prev);
    a->next = calloc(C, sizeof *a->next);
    a->head = calloc(F, sizeof *a->head);
    a->count = calloc(F, sizeof *a->count);
    a->stack = calloc((size_t)num_blocks + 1, sizeof *a->stack);
    if (!a->nfree || !a->cap || !a->is_slot || !a->prev || !a->next || !a->head || !a->count ||
        !a->stack) {
        dsla_kv_arena_destroy(&a);
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "KV arena: out of memory for %d blocks",
                          num_blocks);
    }
    for (int f = 0; f <= blocks_per_slot; f++)
        a->head[f] = -1;
    /* Highest first, so that the lowest chunk ends up at the front of its bucket. */
    for (int c = a->num_chunks - 1; c >= 0; c--) {
        const int left = num_blocks - c * blocks_per_slot;
        a->cap[c] = left < blocks_per_slot ? left : blocks_per_slot;
        refill_chunk(a, c);
        link_chunk(a, c);
    }
    a->free_total = num_blocks;
    *out = a;
    return DSLA_OK;
}

void dsla_kv_arena_destroy(dsla_kv_arena_t **a) {
    if (!a || !*a) return;
    free((*a)->nfree);
    free((*a)->cap);
    free((*a)->is_slot);
    free((*a)->prev);
    free((*a)->next);
    free((*a)->head);
    free((*a)->count);
    free((*a)->stack);
    free(*a);
    *a = NULL;
}

int dsla_kv_arena_num_blocks(const dsla_kv_arena_t *a) {
    return a->num_blocks;
}

int dsla_kv_arena_blocks_per_slot(const dsla_kv_arena_t *a) {
    return a->per_slot;
}

int dsla_kv_arena_free_blocks(const dsla_kv_arena_t *a) {
    return a->free_total;
}

int dsla_kv_arena_kv_blocks(const dsla_kv_arena_t *a) {
    return a->num_blocks - a->free_total - a->slots_used * a->per_slot;
}

int dsla_kv_arena_free_slots(const dsla_kv_arena_t *a) {
    return a->count[a->per_slot];
}

int dsla_kv_arena_max_slots(const dsla_kv_arena_t *a) {
    return a->num_blocks / a->per_slot;
}

int dsla_kv_arena_slots_used(const dsla_kv_arena_t *a) {
    return a->slots_used;
}

int32_t dsla_kv_arena_take_block(dsla_kv_arena_t *a) {
    int c = -1;
    for (int f = 1; f <= a->per_slot && c < 0; f++)
        c = a->head[f];
    if (c < 0) return -1; /* the caller's check failed: no block */
    unlink_chunk(a, c);
    const int32_t block = a->stack[c * a->per_slot + --a->nfree[c]];
    link_chunk(a, c);
    a->free_total--;
    return block;
}

void dsla_kv_arena_give_block(dsla_kv_arena_t *a, int32_t block) {
    const int c = block / a->per_slot;
    unlink_chunk(a, c);
    a->stack[c * a->per_slot + a->nfree[c]++] = block;
    link_chunk(a, c);
    a->free_total++;
}

dsla_status_t dsla_kv_arena_take_slots(dsla_kv_arena_t *a, int n, int *ids) {
    if (n > dsla_kv_arena_free_slots(a))
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "KV arena: %d state slots needed, %d can be carved (whole free runs of "
                          "%d blocks); %d of %d blocks are free",
                          n, dsla_kv_arena_free_slots(a), a->per_slot, a->free_total,
                          a->num_blocks);
    for (int i = 0; i < n; i++) {
        const int c = a->head[a->per_slot];
        unlink_chunk(a, c);
        a->nfree[c] = 0;
        a->is_slot[c] = true;
        ids[i] = c;
    }
    a->free_total -= n * a->per_slot;
    a->slots_used += n;
    return DSLA_OK;
}

void dsla_kv_arena_give_slots(dsla_kv_arena_t *a, const int *ids, int n) {
    for (int i = 0; i < n; i++) {
        const int c = ids[i];
        a->is_slot[c] = false;
        refill_chunk(a, c);
        link_chunk(a, c);
    }
    a->free_total += n * a->per_slot;
    a->slots_used -= n;
}

/* runtime/model/kv_arena: KV blocks and DSLA state slots from one pool. A fresh arena is all KV;
 * slots are whole aligned runs; random traffic of blocks and slots against a shadow model never
 * hands out a block twice and leaves everything free; best fit keeps whole runs for slots when KV
 * churns. */
#include "tests/testutil.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model/kv_arena.h"

static void test_fresh_arena_is_all_kv(void **state) {
    (void)state;
    dsla_kv_arena_t *a = NULL;
    assert_int_equal(dsla_kv_arena_create(&a, 100, 16), DSLA_OK);
    assert_int_equal(dsla_kv_arena_free_blocks(a), 100);
    assert_int_equal(dsla_kv_arena_max_slots(a), 6); /* 6 runs of 16; the tail of 4 is KV only */
    assert_int_equal(dsla_kv_arena_free_slots(a), 6);
    /* Every block can be KV: the tail first (it can never be a slot), then in address order. */
    for (int i = 0; i < 100; i++)
        assert_int_equal(dsla_kv_arena_take_block(a), i < 4 ? 96 + i : i - 4);
    assert_int_equal(dsla_kv_arena_take_block(a), -1);
    assert_int_equal(dsla_kv_arena_kv_blocks(a), 100);
    assert_int_equal(dsla_kv_arena_free_slots(a), 0);
    for (int i = 0; i < 100; i++)
        dsla_kv_arena_give_block(a, i);
    int ids[7];
    assert_int_equal(dsla_kv_arena_take_slots(a, 7, ids), DSLA_ERR_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(dsla_last_error(), "7 state slots needed, 6 can be carved"));
    assert_int_equal(dsla_kv_arena_take_slots(a, 6, ids), DSLA_OK);
    assert_int_equal(dsla_kv_arena_free_blocks(a), 4);
    assert_int_equal(dsla_kv_arena_slots_used(a), 6);
    /* The tail still serves KV. */
    for (int i = 0; i < 4; i++)
        assert_true(dsla_kv_arena_take_block(a) >= 96);
    dsla_kv_arena_give_slots(a, ids, 6);
    assert_int_equal(dsla_kv_arena_free_blocks(a), 96);
    assert_int_equal(dsla_kv_arena_free_slots(a), 6);
    dsla_kv_arena_destroy(&a);
    assert_null(a);
    assert_int_equal(dsla_kv_arena_create(&a, 10, 0), DSLA_ERR_INVALID_ARGUMENT);
}

/* Sequences of KV blocks come and go; at most a run's worth of partly used runs per live
 * sequence stays mixed, so after half the sequences end most of their blocks are whole runs. */
static void test_best_fit_keeps_runs_whole(void **state) {
    (void)state;
    enum { RUN = 16, RUNS = 64, SEQS = 32 };
    dsla_kv_arena_t *a = NULL;
    assert_int_equal(dsla_kv_arena_create(&a, RUN * RUNS, RUN), DSLA_OK);
    static int32_t held[SEQS][RUN * RUNS / SEQS];
    /* Interleaved growth: each sequence takes one block in turn, as decodes do. */
    for (int b = 0; b < RUN * RUNS / SEQS; b++)
        for (int s = 0; s < SEQS; s++)
            held[s][b] = dsla_kv_arena_take_block(a);
    assert_int_equal(dsla_kv_arena_free_blocks(a), 0);
    for (int s = 0; s < SEQS; s += 2)
        for (int b = 0; b < RUN * RUNS / SEQS; b++)
            dsla_kv_arena_give_block(a, held[s][b]);
    /* Half the arena is free, scattered one block in two: no run is whole. */
    assert_int_equal(dsla_kv_arena_free_blocks(a), RUN * RUNS / 2);
    assert_int_equal(dsla_kv_arena_free_slots(a), 0);
    /* New KV fills the mixed runs first, so the blocks given back next form whole runs. */
    int32_t again[RUN * RUNS / 2];
    for (int i = 0; i < RUN * RUNS / 2; i++)
        again[i] = dsla_kv_arena_take_block(a);
    for (int s = 1; s < SEQS; s += 2)
        for (int b = 0; b < RUN * RUNS / SEQS; b++)
            dsla_kv_arena_give_block(a, held[s][b]);
    for (int i = 0; i < RUN * RUNS / 2; i++)
        dsla_kv_arena_give_block(a, again[i]);
    assert_int_equal(dsla_kv_arena_free_slots(a), RUNS);
    /* With a quarter of the blocks held by KV taken one by one, best fit leaves the other runs
     * whole: at least (free blocks / RUN) - 1 of them. */
    for (int i = 0; i < RUN * RUNS / 4; i++)
        again[i] = dsla_kv_arena_take_block(a);
    assert_true(dsla_kv_arena_free_slots(a) >= RUNS - RUNS / 4 - 1);
    for (int i = 0; i < RUN * RUNS / 4; i++)
        dsla_kv_arena_give_block(a, again[i]);
    dsla_kv_arena_destroy(&a);
}

/* Random blocks and slots against a shadow owner map: nothing is handed out twice, slots are
 * aligned runs of free blocks, the counters add up, and everything comes back. */
static void test_random_traffic(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    for (int round = 0; round < 20; round++) {
        const int per = 1 + (int)(dsla_test_rand_u64(&rng) % 12);
        const int n = (int)(dsla_test_rand_u64(&rng) % 300);
        dsla_kv_arena_t *a = NULL;
        assert_int_equal(dsla_kv_arena_create(&a, n, per), DSLA_OK);
        int *owner = calloc((size_t)n + 1, sizeof *owner); /* 0 free, 1 KV, 2 slot */
        int32_t *kv = malloc(((size_t)n + 1) * sizeof *kv);
        int *slots = malloc(((size_t)n + 1) * sizeof *slots);
        int n_kv = 0, n_slots = 0;
        for (int step = 0; step < 5000; step++) {
            const uint64_t op = dsla_test_rand_u64(&rng) % 4;
            if (op == 0 && dsla_kv_arena_free_blocks(a) > 0) {
                const int32_t b = dsla_kv_arena_take_block(a);
                assert_true(b >= 0 && b < n && owner[b] == 0);
                owner[b] = 1;
                kv[n_kv++] = b;
            } else if (op == 1 && n_kv > 0) {
                const int i = (int)(dsla_test_rand_u64(&rng) % (uint64_t)n_kv);
                owner[kv[i]] = 0;
                dsla_kv_arena_give_block(a, kv[i]);
                kv[i] = kv[--n_kv];
            } else if (op == 2) {
                const int want = 1 + (int)(dsla_test_rand_u64(&rng) % 3);
                int ids[3];
                const bool can = want <= dsla_kv_arena_free_slots(a);
                assert_int_equal(dsla_kv_arena_take_slots(a, want, ids),
                                 can ? DSLA_OK : DSLA_ERR_RESOURCE_EXHAUSTED);
                for (int i = 0; can && i < want; i++) {
                    assert_true(ids[i] >= 0 && (ids[i] + 1) * per <= n);
                    for (int b = ids[i] * per; b < (ids[i] + 1) * per; b++) {
                        assert_int_equal(owner[b], 0);
                        owner[b] = 2;
                    }
                    slots[n_slots++] = ids[i];
                }
            } else if (op == 3 && n_slots > 0) {
                const int i = (int)(dsla_test_rand_u64(&rng) % (uint64_t)n_slots);
                for (int b = slots[i] * per; b < (slots[i] + 1) * per; b++)
                    owner[b] = 0;
                dsla_kv_arena_give_slots(a, &slots[i], 1);
                slots[i] = slots[--n_slots];
            }
            assert_int_equal(dsla_kv_arena_kv_blocks(a), n_kv);
            assert_int_equal(dsla_kv_arena_slots_used(a), n_slots);
            assert_int_equal(dsla_kv_arena_free_blocks(a) + n_kv + n_slots * per, n);
        }
        while (n_kv > 0)
            dsla_kv_arena_give_block(a, kv[--n_kv]);
        dsla_kv_arena_give_slots(a, slots, n_slots);
        assert_int_equal(dsla_kv_arena_free_blocks(a), n);
        assert_int_equal(dsla_kv_arena_free_slots(a), n / per);
        free(owner);
        free(kv);
        free(slots);
        dsla_kv_arena_destroy(&a);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_arena_is_all_kv),
        cmocka_unit_test(test_best_fit_keeps_runs_whole),
        cmocka_unit_test(test_random_traffic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

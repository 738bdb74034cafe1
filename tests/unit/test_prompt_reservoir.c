/* The prompt reservoir and corpus packing of runtime/distill/data.h: prompts kept while there is
 * room, then a bounded uniform sample, the same for the same seed and offers; prompts cut to
 * max_len; packing drops a leading BOS, cuts BOS-led sequences, drops the tail and skips prompts
 * with ids outside the vocabulary; the used counts; parameters checked. Needs no model. */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/distill/data.h"

enum { BOS = 1, VOCAB = 512 };

static void test_corpus_pack_cuts_bos_led_sequences(void **state) {
    (void)state;
    dsla_corpus_t c = {.seq_len = 4};
    const int32_t stream[] = {10, 11, 12, 13, 14, 15, 16, 17};
    int added = -1;
    assert_int_equal(dsla_corpus_pack(&c, stream, 8, BOS, &added), DSLA_OK);
    assert_int_equal(added, 2); /* 3 tokens after each BOS; the eighth is dropped */
    assert_int_equal(c.num_sequences, 2);
    const int32_t want[] = {BOS, 10, 11, 12, BOS, 13, 14, 15};
    assert_memory_equal(c.tokens, want, sizeof want);
    assert_int_equal(dsla_corpus_pack(&c, stream, 2, BOS, &added), DSLA_OK);
    assert_int_equal(added, 0); /* too short for one sequence: nothing */
    assert_int_equal(dsla_corpus_pack(&c, stream, 4, -1, &added), DSLA_OK); /* no BOS */
    assert_int_equal(c.num_sequences, 3);
    assert_memory_equal(dsla_corpus_sequence(&c, 2), stream, 4 * sizeof stream[0]);
    dsla_corpus_free(&c);
    dsla_corpus_t bad = {.seq_len = 1};
    assert_int_equal(dsla_corpus_pack(&bad, stream, 8, BOS, &added), DSLA_ERR_INVALID_ARGUMENT);
}

static void test_reservoir_keeps_a_bounded_seeded_sample(void **state) {
    (void)state;
    dsla_reservoir_t a, b;
    assert_int_equal(dsla_reservoir_init(&a, 0, 8, 1), DSLA_ERR_INVALID_ARGUMENT);
    assert_int_equal(dsla_reservoir_init(&a, 4, 3, 42), DSLA_OK);
    assert_int_equal(dsla_reservoir_init(&b, 4, 3, 42), DSLA_OK);
    assert_int_equal(dsla_reservoir_offer(&a, NULL, 0), DSLA_OK); /* empty: ignored */
    assert_int_equal(a.offered, 0);
    const int32_t p[] = {BOS, 100, 101, 102, 103};
    for (int i = 0; i < 4; i++) /* room for all: every one kept, in order, cut to 3 tokens */
        assert_int_equal(dsla_reservoir_offer(&a, p, 2 + i % 4), DSLA_OK);
    assert_int_equal(a.n, 4);
    assert_int_equal(a.slots[0].len, 2);
    assert_int_equal(a.slots[3].len, 3);
    assert_int_equal(dsla_reservoir_tokens(&a), 2 + 3 + 3 + 3);
    int replaced = 0;
    for (int i = 0; i < 400; i++) { /* then a uniform sample: later prompts replace some */
        int32_t q[2] = {BOS, 1000 + i};
        assert_int_equal(dsla_reservoir_offer(&a, q, 2), DSLA_OK);
    }
    for (int i = 0; i < a.n; i++)
        replaced += a.slots[i].ids[1] >= 1000;
    assert_int_equal(a.n, 4);
    assert_int_equal(a.offered, 404);
    assert_true(replaced >= 3); /* each first prompt survives with probability 4/404 */
    for (int i = 0; i < 4; i++)
        assert_int_equal(dsla_reservoir_offer(&b, p, 2 + i % 4), DSLA_OK);
    for (int i = 0; i < 400; i++) {
        int32_t q[2] = {BOS, 1000 + i};
        assert_int_equal(dsla_reservoir_offer(&b, q, 2), DSLA_OK);
    }
    for (int i = 0; i < 4; i++) { /* same seed, same offers: same sample */
        assert_int_equal(a.slots[i].len, b.slots[i].len);
        assert_memory_equal(a.slots[i].ids, b.slots[i].ids, (size_t)a.slots[i].len * 4);
    }
    dsla_reservoir_free(&a);
    dsla_reservoir_free(&b);
    dsla_reservoir_free(&b); /* harmless twice */
}

static void test_reservoir_pack_and_used_counts(void **state) {
    (void)state;
    dsla_reservoir_t r;
    assert_int_equal(dsla_reservoir_init(&r, 8, 16, 7), DSLA_OK);
    dsla_corpus_t c = {.seq_len = 4};
    int added = -1;
    assert_int_equal(dsla_reservoir_pack(&r, &c, BOS, VOCAB, &added), DSLA_OK); /* empty: nothing */
    assert_int_equal(added, 0);
    assert_int_equal(c.num_sequences, 0);
    const int32_t p1[] = {BOS, 10, 11, 12, 13}, p2[] = {20, 21};
    assert_int_equal(dsla_reservoir_offer(&r, p1, 5), DSLA_OK);
    assert_int_equal(dsla_reservoir_offer(&r, p2, 2), DSLA_OK);
    assert_int_equal(dsla_reservoir_pack(&r, &c, BOS, VOCAB, &added), DSLA_OK);
    assert_int_equal(added, 2); /* 10 11 12 13 20 21: two sequences of BOS + 3 */
    const int32_t want[] = {BOS, 10, 11, 12, BOS, 13, 20, 21};
    assert_memory_equal(c.tokens, want, sizeof want);
    assert_int_equal(r.used, 2);
    assert_int_equal(r.used_tokens, 7);
    assert_int_equal(dsla_reservoir_pack(&r, &c, BOS, VOCAB, &added),
                     DSLA_OK); /* again: same data */
    assert_int_equal(c.num_sequences, 4);
    assert_int_equal(r.used, 2); /* counted once */
    const int32_t p3[] = {30};
    assert_int_equal(dsla_reservoir_offer(&r, p3, 1), DSLA_OK);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.used, 2); /* a new prompt is not used until packed */
    const int32_t bad[] = {BOS, 40, 41, VOCAB};
    assert_int_equal(dsla_reservoir_offer(&r, bad, 4), DSLA_OK);
    assert_int_equal(dsla_reservoir_pack(&r, &c, BOS, VOCAB, &added), DSLA_OK);
    assert_int_equal(added, 2); /* 10 11 12 13 20 21 30: the prompt with id VOCAB is skipped */
    assert_int_equal(r.used, 3);
    assert_int_equal(r.used_tokens, 8);
    dsla_corpus_free(&c);
    dsla_reservoir_free(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_corpus_pack_cuts_bos_led_sequences),
        cmocka_unit_test(test_reservoir_keeps_a_bounded_seeded_sample),
        cmocka_unit_test(test_reservoir_pack_and_used_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

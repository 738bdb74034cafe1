/* PROMPT_SAMPLES (proto.h): round trip, the limits on both sides, empty prompts and negative ids
 * refused, the required field, hostile input (every truncation, every bit of every byte flipped)
 * giving an error and never a crash; and DISTILL_PROGRESS's sample counts. Run under ASan+UBSan. */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

static const int32_t sample_ids[] = {1, 403, 407, 261, 1, 78, 29, 300, 7};

static dsla_proto_prompt_samples_t sample(void) {
    return (dsla_proto_prompt_samples_t){
        .n_prompts = 3, .lens = {4, 4, 1}, .ids = sample_ids, .n_ids = 9, .dropped = 5};
}

static void test_round_trip_and_hostile_input(void **state) {
    (void)state;
    dsla_proto_prompt_samples_t p = sample(), d;
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_prompt_samples_encode(&p, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_prompt_samples_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_int_equal(d.n_prompts, 3);
    assert_int_equal(d.n_ids, 9);
    assert_int_equal(d.dropped, 5);
    assert_memory_equal(d.lens, p.lens, sizeof p.lens);
    assert_memory_equal(d.ids, sample_ids, sizeof sample_ids);
    dsla_proto_prompt_samples_free(&d);
    for (size_t n = 0; n < buf.len; n++) /* no prefix decodes */
        assert_int_not_equal(dsla_proto_prompt_samples_decode(buf.data, n, &d), DSLA_OK);
    char *copy = malloc(buf.len);
    for (size_t i = 0; i < buf.len; i++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, buf.data, buf.len);
            copy[i] ^= (char)(1u << bit);
            if (dsla_proto_prompt_samples_decode(copy, buf.len, &d) == DSLA_OK) {
                assert_true(d.n_prompts <= DSLA_PROTO_SAMPLES_MAX);
                dsla_proto_prompt_samples_free(&d);
            }
        }
    free(copy);
    dsla_proto_buf_free(&buf);
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_PROMPT_SAMPLES), "PROMPT_SAMPLES");
}

static void test_limits_and_required_fields(void **state) {
    (void)state;
    dsla_proto_prompt_samples_t p = sample(), d;
    dsla_proto_buf_t buf;
    p.n_ids = 8; /* lengths that do not sum to n_ids */
    assert_int_equal(dsla_proto_prompt_samples_encode(&p, &buf), DSLA_ERR_INVALID_ARGUMENT);
    p = sample();
    p.n_prompts = DSLA_PROTO_SAMPLES_MAX + 1;
    assert_int_equal(dsla_proto_prompt_samples_encode(&p, &buf), DSLA_ERR_INVALID_ARGUMENT);
    /* {} lacks prompts */
    assert_int_equal(dsla_proto_prompt_samples_decode("\x80", 1, &d), DSLA_ERR_FORMAT);
    /* {"prompts": [[]]}: an empty prompt */
    static const char empty[] = "\x81\xa7prompts\x91\x90";
    assert_int_equal(dsla_proto_prompt_samples_decode(empty, sizeof empty - 1, &d),
                     DSLA_ERR_FORMAT);
    /* {"prompts": [[-1]]}: a negative id */
    static const char negative[] = "\x81\xa7prompts\x91\x91\xff";
    assert_int_equal(dsla_proto_prompt_samples_decode(negative, sizeof negative - 1, &d),
                     DSLA_ERR_FORMAT);
    /* {"prompts": "x"} */
    static const char text[] = "\x81\xa7prompts\xa1x";
    assert_int_equal(dsla_proto_prompt_samples_decode(text, sizeof text - 1, &d), DSLA_ERR_FORMAT);
    /* 65 prompts of one id: more prompts than a message carries */
    char many[16 + 2 * (DSLA_PROTO_SAMPLES_MAX + 1)];
    size_t n = 0;
    memcpy(many, "\x81\xa7prompts\xdc\x00\x41", 12);
    n = 12;
    for (int i = 0; i <= DSLA_PROTO_SAMPLES_MAX; i++) {
        many[n++] = (char)0x91;
        many[n++] = 5;
    }
    assert_int_equal(dsla_proto_prompt_samples_decode(many, n, &d), DSLA_ERR_FORMAT);
    /* one prompt of DSLA_PROTO_SAMPLE_TOKENS_MAX + 1 ids: too many */
    const size_t ids = DSLA_PROTO_SAMPLE_TOKENS_MAX + 1;
    char *big = malloc(16 + ids);
    memcpy(big, "\x81\xa7prompts\x91\xdd", 11);
    big[11] = 0;
    big[12] = 1;
    big[13] = 0;
    big[14] = 1; /* 65537 */
    memset(big + 15, 3, ids);
    assert_int_equal(dsla_proto_prompt_samples_decode(big, 15 + ids, &d), DSLA_ERR_FORMAT);
    free(big);
}

static void test_progress_carries_sample_counts(void **state) {
    (void)state;
    dsla_proto_distill_progress_t p = {.state = DSLA_PROTO_DISTILL_TRAINING,
                                       .layer = -1,
                                       .samples_received = 12,
                                       .samples_held = 8,
                                       .sample_tokens_held = 345,
                                       .samples_used = 6,
                                       .sample_tokens_used = 210},
                                  d;
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_distill_progress_encode(&p, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_distill_progress_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_memory_equal(&p, &d, sizeof p);
    dsla_proto_buf_free(&buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_and_hostile_input),
        cmocka_unit_test(test_limits_and_required_fields),
        cmocka_unit_test(test_progress_carries_sample_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

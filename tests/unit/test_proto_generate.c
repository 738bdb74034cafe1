/* proto's generation bodies (GENERATE, TOKEN, DONE, CANCEL): round trips, defaults, limits, and
 * mutated frames that must come back as errors, never as crashes or leaks. */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

enum { MUTATIONS = 20000 };

static void test_generate_round_trip(void **state) {
    (void)state;
    dsla_proto_generate_t g = {.prompt = "Once upon a time",
                               .prompt_len = 16,
                               .max_tokens = 64,
                               .temperature = 0.5f,
                               .top_k = 40,
                               .top_p = 0.9f,
                               .seed = UINT64_MAX,
                               .stop = {"The end", "\n\n"},
                               .n_stop = 2,
                               .ignore_eos = true,
                               .stream = true};
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_generate_encode(&g, &buf), DSLA_OK);
    dsla_proto_generate_t d;
    assert_int_equal(dsla_proto_generate_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_string_equal(d.prompt, "Once upon a time");
    assert_int_equal(d.prompt_len, 16);
    assert_null(d.prompt_ids);
    assert_int_equal(d.max_tokens, 64);
    assert_true(d.temperature == 0.5f && d.top_p == 0.9f);
    assert_int_equal(d.top_k, 40);
    assert_true(d.seed == UINT64_MAX);
    assert_int_equal(d.n_stop, 2);
    assert_string_equal(d.stop[0], "The end");
    assert_string_equal(d.stop[1], "\n\n");
    assert_true(d.ignore_eos && d.stream);
    assert_false(d.logprobs);
    dsla_proto_generate_free(&d);
    dsla_proto_buf_free(&buf);

    g.logprobs = true;
    g.top_logprobs = 7;
    assert_int_equal(dsla_proto_generate_encode(&g, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_generate_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_true(d.logprobs);
    assert_int_equal(d.top_logprobs, 7);
    assert_true(d.min_p == 0 && d.repetition_penalty == 0 && d.n_bias == 0);
    dsla_proto_generate_free(&d);
    dsla_proto_buf_free(&buf);

    const int32_t bias_ids[2] = {3, 400};
    const float bias_values[2] = {-100.0f, 2.5f};
    g.min_p = 0.05f;
    g.presence_penalty = 0.5f;
    g.frequency_penalty = -0.25f;
    g.repetition_penalty = 1.2f;
    g.bias_ids = bias_ids;
    g.bias_values = bias_values;
    g.n_bias = 2;
    assert_int_equal(dsla_proto_generate_encode(&g, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_generate_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_true(d.min_p == 0.05f && d.presence_penalty == 0.5f && d.frequency_penalty == -0.25f &&
                d.repetition_penalty == 1.2f);
    assert_int_equal(d.n_bias, 2);
    assert_memory_equal(d.bias_ids, bias_ids, sizeof bias_ids);
    assert_memory_equal(d.bias_values, bias_values, sizeof bias_values);
    dsla_proto_generate_free(&d);
    dsla_proto_buf_free(&buf);

    const int32_t ids[] = {1, 403, 407, -5};
    dsla_proto_generate_t h = {.prompt_ids = ids, .n_prompt_ids = 4, .max_tokens = 3};
    assert_int_equal(dsla_proto_generate_encode(&h, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_generate_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_int_equal(d.n_prompt_ids, 4);
    assert_memory_equal(d.prompt_ids, ids, sizeof ids);
    assert_false(d.stream);
    dsla_proto_generate_free(&d);
    dsla_proto_buf_free(&buf);
}

static void test_generate_refusals(void **state) {
    (void)state;
    dsla_proto_generate_t d;
    /* {} : no prompt; {"prompt": "x"} : no max_tokens */
    assert_int_equal(dsla_proto_generate_decode("\x80", 1, &d), DSLA_ERR_FORMAT);
    assert_int_equal(dsla_proto_generate_decode("\x81\xa6prompt\xa1x", 10, &d), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "max_tokens"));
    dsla_proto_generate_t g = {.prompt = "x", .prompt_len = 1, .n_stop = DSLA_PROTO_STOP_MAX + 1};
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_generate_encode(&g, &buf), DSLA_ERR_INVALID_ARGUMENT);
    assert_null(buf.data);
}

static void test_token_done_cancel_round_trip(void **state) {
    (void)state;
    dsla_proto_token_t t = {.token = 432, .text_len = 5};
    memcpy(t.text, ", the", 5);
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_token_encode(&t, &buf), DSLA_OK);
    dsla_proto_token_t td;
    assert_int_equal(dsla_proto_token_decode(buf.data, buf.len, &td), DSLA_OK);
    assert_int_equal(td.token, 432);
    assert_int_equal(td.text_len, 5);
    assert_string_equal(td.text, ", the");
    dsla_proto_buf_free(&buf);
    /* A model's byte token can be 0x00: the piece carries it, with its length. */
    memcpy(t.text, "a\0b", 3);
    t.text_len = 3;
    assert_int_equal(dsla_proto_token_encode(&t, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_token_decode(buf.data, buf.len, &td), DSLA_OK);
    assert_int_equal(td.text_len, 3);
    assert_memory_equal(td.text, "a\0b", 3);
    dsla_proto_buf_free(&buf);
    t.text_len = DSLA_PROTO_PIECE_MAX + 1;
    assert_int_equal(dsla_proto_token_encode(&t, &buf), DSLA_ERR_INVALID_ARGUMENT);

    dsla_proto_done_t done = {.finish = DSLA_PROTO_FINISH_STOP,
                              .prompt_tokens = 5,
                              .completion_tokens = 9,
                              .replica = "serving2",
                              .plan_id = 1ull << 40,
                              .preemptions = 2};
    assert_int_equal(dsla_proto_done_encode(&done, &buf), DSLA_OK);
    dsla_proto_done_t dd;
    assert_int_equal(dsla_proto_done_decode(buf.data, buf.len, &dd), DSLA_OK);
    assert_int_equal(dd.finish, DSLA_PROTO_FINISH_STOP);
    assert_int_equal(dd.prompt_tokens, 5);
    assert_int_equal(dd.completion_tokens, 9);
    assert_string_equal(dd.replica, "serving2");
    assert_true(dd.plan_id == 1ull << 40);
    assert_int_equal(dd.preemptions, 2);
    dsla_proto_buf_free(&buf);
    /* an older replica's DONE (finish and usage only) still decodes, naming nobody */
    assert_int_equal(dsla_proto_done_decode("\x83\xa6"
                                            "finish\xa4"
                                            "stop\xadprompt_tokens\x01\xb1"
                                            "completion_tokens\x02",
                                            47, &dd),
                     DSLA_OK);
    assert_int_equal(dd.completion_tokens, 2);
    assert_string_equal(dd.replica, "");
    assert_int_equal(dd.plan_id, 0);
    assert_int_equal(dsla_proto_done_decode("\x81\xa6"
                                            "finish\xa3"
                                            "odd",
                                            12, &dd),
                     DSLA_ERR_FORMAT);

    dsla_proto_cancel_t c = {.request = 77}, cd;
    assert_int_equal(dsla_proto_cancel_encode(&c, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_cancel_decode(buf.data, buf.len, &cd), DSLA_OK);
    assert_true(cd.request == 77);
    dsla_proto_buf_free(&buf);
    assert_int_equal(dsla_proto_cancel_decode("\x80", 1, &cd), DSLA_ERR_FORMAT);
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_GENERATE), "GENERATE");
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_CANCEL), "CANCEL");
}

/* Flipped and truncated bytes of a valid GENERATE decode or fail cleanly (ASan checks leaks). */
static void test_generate_mutations(void **state) {
    (void)state;
    dsla_proto_generate_t g = {
        .prompt = "hello", .prompt_len = 5, .max_tokens = 8, .stop = {"a", "bc"}, .n_stop = 2};
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_generate_encode(&g, &buf), DSLA_OK);
    uint64_t seed = dsla_test_seed();
    char *copy = malloc(buf.len);
    for (int i = 0; i < MUTATIONS; i++) {
        memcpy(copy, buf.data, buf.len);
        size_t len = buf.len;
        int flips = 1 + (int)(dsla_test_rand_u64(&seed) % 3);
        for (int f = 0; f < flips; f++)
            copy[dsla_test_rand_u64(&seed) % len] = (char)dsla_test_rand_u64(&seed);
        if (dsla_test_rand_u64(&seed) % 4 == 0) len = dsla_test_rand_u64(&seed) % len;
        dsla_proto_generate_t d;
        if (dsla_proto_generate_decode(copy, len, &d) == DSLA_OK) {
            assert_true(d.prompt || d.prompt_ids);
            dsla_proto_generate_free(&d);
        }
    }
    free(copy);
    dsla_proto_buf_free(&buf);
}

/* A TOKEN with logprobs: the token's own [id, logprob, text] and the alternatives, in order. */
static void test_token_logprobs_round_trip(void **state) {
    (void)state;
    dsla_proto_token_t *t = calloc(2, sizeof *t), *d = t + 1;
    assert_non_null(t);
    t->token = 12;
    t->text_len = 4;
    memcpy(t->text, " cat", 4);
    t->has_logprobs = true;
    t->chosen = (dsla_proto_logprob_t){.id = 12, .logprob = -0.25f, .text_len = 4};
    memcpy(t->chosen.text, " cat", 4);
    t->n_top = 3;
    for (int i = 0; i < 3; i++) {
        t->top[i] =
            (dsla_proto_logprob_t){.id = 100 + i, .logprob = -1.0f * (float)i, .text_len = 2};
        memcpy(t->top[i].text, "a\0", 2);
        t->top[i].text[0] = (char)('a' + i);
    }
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_token_encode(t, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_token_decode(buf.data, buf.len, d), DSLA_OK);
    assert_true(d->has_logprobs);
    assert_int_equal(d->chosen.id, 12);
    assert_true(d->chosen.logprob == -0.25f);
    assert_int_equal(d->chosen.text_len, 4);
    assert_memory_equal(d->chosen.text, " cat", 4);
    assert_int_equal(d->n_top, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(d->top[i].id, 100 + i);
        assert_true(d->top[i].logprob == -1.0f * (float)i);
        assert_int_equal(d->top[i].text_len, 2);
        assert_memory_equal(d->top[i].text, t->top[i].text, 2);
    }
    dsla_proto_buf_free(&buf);
    t->n_top = DSLA_PROTO_LOGPROBS_MAX + 1;
    assert_int_equal(dsla_proto_token_encode(t, &buf), DSLA_ERR_INVALID_ARGUMENT);
    /* without logprobs the frame has none */
    t->has_logprobs = false;
    assert_int_equal(dsla_proto_token_encode(t, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_token_decode(buf.data, buf.len, d), DSLA_OK);
    assert_false(d->has_logprobs);
    assert_int_equal(d->n_top, 0);
    dsla_proto_buf_free(&buf);
    free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generate_round_trip),
        cmocka_unit_test(test_generate_refusals),
        cmocka_unit_test(test_token_done_cancel_round_trip),
        cmocka_unit_test(test_token_logprobs_round_trip),
        cmocka_unit_test(test_generate_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

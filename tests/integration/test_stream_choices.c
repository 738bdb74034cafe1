/* Several choices streamed (docs/http.md, "Responses"), on a real dsla-serve (stories260K-hf):
 * with n > 1 and prompt arrays, the chunks of every choice come interleaved under their index, and
 * each choice's text, finish reason and usage equal what the same request gives unstreamed; the
 * usage chunk (include_usage) sums them before [DONE]; each chat choice's first delta carries the
 * role; a refused request is a plain error, never a stream. And best_of above n: the n samples of
 * highest cumulative logprob among best_of, best first, as the same seeds sampled with n = best_of
 * and logprobs rank them, usage counting every sample. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tests/serverutil.h"

enum { CHOICES_MAX = 8 };

static dsla_test_server_t srv;

typedef struct {
    char text[CHOICES_MAX][4096];
    char finish[CHOICES_MAX][16];
    int finishes[CHOICES_MAX];   /* chunks with a finish_reason */
    int roles[CHOICES_MAX];      /* chat: deltas with a role */
    int first_role[CHOICES_MAX]; /* chat: 1 when the choice's first delta had the role */
    int chunks[CHOICES_MAX];
    long usage_prompt, usage_completion; /* the usage chunk's; -1 when none */
    int switches;                        /* consecutive chunks of different choices */
} streamed_t;

static void append(char *dst, const char *s) {
    size_t n = strlen(dst);
    snprintf(dst + n, 4096 - n, "%s", s);
}

/* Reads the events of a stream: every one JSON but the last, "[DONE]". */
static void parse_stream(const char *body, bool chat, streamed_t *out) {
    memset(out, 0, sizeof *out);
    out->usage_prompt = out->usage_completion = -1;
    const char *p = body;
    bool done = false;
    int last = -1;
    while (*p) {
        assert_false(done); /* nothing after [DONE] */
        assert_memory_equal(p, "data: ", 6);
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        char *event = strndup(p + 6, (size_t)(end - p - 6));
        p = end + 2;
        if (strcmp(event, "[DONE]") == 0) {
            done = true;
            free(event);
            continue;
        }
        json_error_t err;
        json_t *e = json_loads(event, 0, &err);
        if (!e) fail_msg("not JSON: %s", event);
        json_t *choices = json_object_get(e, "choices");
        if (json_array_size(choices) == 0) { /* the usage chunk */
            json_t *u = json_object_get(e, "usage");
            out->usage_prompt = (long)json_integer_value(json_object_get(u, "prompt_tokens"));
            out->usage_completion =
                (long)json_integer_value(json_object_get(u, "completion_tokens"));
        } else {
            assert_int_equal(json_array_size(choices), 1);
            json_t *c = json_array_get(choices, 0);
            int i = (int)json_integer_value(json_object_get(c, "index"));
            assert_true(i >= 0 && i < CHOICES_MAX);
            json_t *piece = chat ? json_object_get(json_object_get(c, "delta"), "content")
                                 : json_object_get(c, "text");
            append(out->text[i], json_string_value(piece));
            if (chat && json_object_get(json_object_get(c, "delta"), "role")) {
                out->roles[i]++;
                if (out->chunks[i] == 0) out->first_role[i] = 1;
            }
            json_t *finish = json_object_get(c, "finish_reason");
            if (json_is_string(finish)) {
                out->finishes[i]++;
                snprintf(out->finish[i], sizeof out->finish[i], "%s", json_string_value(finish));
            }
            out->chunks[i]++;
            if (last >= 0 && last != i) out->switches++;
            last = i;
        }
        json_decref(e);
        free(event);
    }
    assert_true(done);
}

static json_t *post_json(const char *path, const char *body) {
    dsla_test_http_reply_t r = dsla_test_http(srv.http_port, "POST", path, body);
    if (r.status != 200) fail_msg("%s: %d %s", path, r.status, r.body ? r.body : "");
    json_error_t err;
    json_t *j = json_loads(r.body, 0, &err);
    if (!j) fail_msg("%s: not JSON: %s", path, r.body);
    dsla_test_http_reply_free(&r);
    return j;
}

/* The request body with "stream" set, and include_usage when streamed. */
static char *with_stream(const char *fields, bool stream) {
    char *b = malloc(strlen(fields) + 128);
    sprintf(b, "{%s, \"stream\": %s%s}", fields, stream ? "true" : "false",
            stream ? ", \"stream_options\": {\"include_usage\": true}" : "");
    return b;
}

static void compare(const char *path, const char *fields, bool chat, int choices) {
    char *whole_body = with_stream(fields, false), *stream_body = with_stream(fields, true);
    json_t *whole = post_json(path, whole_body);
    dsla_test_http_reply_t r = dsla_test_http(srv.http_port, "POST", path, stream_body);
    if (r.status != 200) fail_msg("stream: %d %s", r.status, r.body ? r.body : "");
    assert_non_null(strstr(r.head, "text/event-stream"));
    streamed_t *s = malloc(sizeof *s);
    parse_stream(r.body, chat, s);
    json_t *wc = json_object_get(whole, "choices");
    assert_int_equal(json_array_size(wc), choices);
    for (int i = 0; i < choices; i++) {
        json_t *c = json_array_get(wc, (size_t)i);
        assert_int_equal(json_integer_value(json_object_get(c, "index")), i);
        const char *text =
            chat ? json_string_value(json_object_get(json_object_get(c, "message"), "content"))
                 : json_string_value(json_object_get(c, "text"));
        if (strcmp(text, s->text[i]) != 0)
            fail_msg("choice %d: streamed '%s', whole '%s'", i, s->text[i], text);
        assert_int_equal(s->finishes[i], 1);
        assert_string_equal(s->finish[i], json_string_value(json_object_get(c, "finish_reason")));
        if (chat) {
            assert_int_equal(s->roles[i], 1);
            assert_int_equal(s->first_role[i], 1);
        }
    }
    for (int i = choices; i < CHOICES_MAX; i++)
        assert_int_equal(s->chunks[i], 0);
    json_t *u = json_object_get(whole, "usage");
    assert_int_equal(s->usage_prompt, json_integer_value(json_object_get(u, "prompt_tokens")));
    assert_int_equal(s->usage_completion,
                     json_integer_value(json_object_get(u, "completion_tokens")));
    assert_true(s->switches >= choices - 1); /* interleaved, not one choice after another */
    free(s);
    json_decref(whole);
    dsla_test_http_reply_free(&r);
    free(whole_body);
    free(stream_body);
}

static void test_completions_choices(void **state) {
    (void)state;
    compare("/v1/completions",
            "\"prompt\": [\"Once upon a time\", \"The dog\"], \"n\": 2, \"max_tokens\": 6, "
            "\"seed\": 11, \"ignore_eos\": true",
            false, 4);
    /* echo and logprobs ride along per choice */
    compare("/v1/completions",
            "\"prompt\": \"Once\", \"n\": 3, \"max_tokens\": 4, \"seed\": 3, \"echo\": true, "
            "\"logprobs\": 1",
            false, 3);
}

static void test_chat_choices(void **state) {
    (void)state;
    compare("/v1/chat/completions",
            "\"messages\": [{\"role\": \"user\", \"content\": \"A story\"}], \"n\": 2, "
            "\"max_tokens\": 5, \"seed\": 7",
            true, 2);
}

static void test_refused_is_not_a_stream(void **state) {
    (void)state;
    dsla_test_http_reply_t r = dsla_test_http(
        srv.http_port, "POST", "/v1/completions",
        "{\"prompt\": \"Once\", \"n\": 2, \"max_tokens\": 100000, \"stream\": true}");
    assert_int_equal(r.status, 400);
    assert_null(strstr(r.head, "text/event-stream"));
    assert_non_null(strstr(r.body, "max_tokens"));
    dsla_test_http_reply_free(&r);
}

/* The sum of a completion choice's token_logprobs. */
static double cumulative(json_t *choice) {
    json_t *lp = json_object_get(json_object_get(choice, "logprobs"), "token_logprobs");
    double sum = 0;
    for (size_t i = 0; i < json_array_size(lp); i++)
        sum += json_number_value(json_array_get(lp, i));
    return sum;
}

static void test_best_of(void **state) {
    (void)state;
    enum { BEST_OF = 4, N = 2 };
    const char *fields = "\"prompt\": [\"Once upon a time\", \"The cat\"], \"max_tokens\": 6, "
                         "\"seed\": 9, \"ignore_eos\": true, \"temperature\": 1.5";
    char body[512];
    snprintf(body, sizeof body, "{%s, \"n\": %d, \"logprobs\": 0}", fields, BEST_OF);
    json_t *all = post_json("/v1/completions", body);
    snprintf(body, sizeof body, "{%s, \"n\": %d, \"best_of\": %d}", fields, N, BEST_OF);
    json_t *best = post_json("/v1/completions", body);
    json_t *ac = json_object_get(all, "choices"), *bc = json_object_get(best, "choices");
    assert_int_equal(json_array_size(ac), 2 * BEST_OF);
    assert_int_equal(json_array_size(bc), 2 * N);
    for (int p = 0; p < 2; p++) {
        bool taken[BEST_OF] = {false};
        for (int k = 0; k < N; k++) { /* the k-th best of prompt p's samples */
            int top = -1;
            for (int j = 0; j < BEST_OF; j++)
                if (!taken[j] &&
                    (top < 0 || cumulative(json_array_get(ac, (size_t)(p * BEST_OF + j))) >
                                    cumulative(json_array_get(ac, (size_t)(p * BEST_OF + top)))))
                    top = j;
            taken[top] = true;
            json_t *want = json_array_get(ac, (size_t)(p * BEST_OF + top));
            json_t *got = json_array_get(bc, (size_t)(p * N + k));
            assert_int_equal(json_integer_value(json_object_get(got, "index")), p * N + k);
            if (strcmp(json_string_value(json_object_get(got, "text")),
                       json_string_value(json_object_get(want, "text"))) != 0)
                fail_msg("prompt %d, best %d: '%s', wanted sample %d '%s'", p, k,
                         json_string_value(json_object_get(got, "text")), top,
                         json_string_value(json_object_get(want, "text")));
            assert_true(json_is_null(json_object_get(got, "logprobs"))); /* not asked for */
        }
    }
    /* usage counts every sample, shown or not */
    json_t *au = json_object_get(all, "usage"), *bu = json_object_get(best, "usage");
    assert_int_equal(json_integer_value(json_object_get(bu, "completion_tokens")),
                     json_integer_value(json_object_get(au, "completion_tokens")));
    assert_int_equal(json_integer_value(json_object_get(bu, "prompt_tokens")),
                     json_integer_value(json_object_get(au, "prompt_tokens")));
    json_decref(all);
    json_decref(best);
    /* with stream it is refused, naming the field */
    dsla_test_http_reply_t r =
        dsla_test_http(srv.http_port, "POST", "/v1/completions",
                       "{\"prompt\": \"Once\", \"best_of\": 2, \"stream\": true}");
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "\"param\":\"best_of\""));
    dsla_test_http_reply_free(&r);
}

static int setup(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    const char *args[] = {"--model", model,         "--endpoint", "tcp://127.0.0.1:*",
                          "--http",  "127.0.0.1:0", NULL};
    srv = dsla_test_server_start(args);
    free(model);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    dsla_test_server_stop(&srv);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completions_choices),
        cmocka_unit_test(test_chat_choices),
        cmocka_unit_test(test_refused_is_not_a_stream),
        cmocka_unit_test(test_best_of),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

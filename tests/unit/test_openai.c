/* actors/openai: request parsing and checks (each refusal names its field and limit), the chat
 * template, wire codes as HTTP errors, and the response bodies (UTF-8 repaired, usage summed). */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "actors/openai.h"

static bool parse(dsla_openai_kind_t kind, const char *body, dsla_openai_request_t *r,
                  dsla_openai_error_t *e) {
    bool ok = dsla_openai_request_parse(kind, body, strlen(body), "tiny", 42, r, e);
    if (!ok) print_message("refused: %s\n", e->message);
    return ok;
}

static void test_completion_fields(void **state) {
    (void)state;
    dsla_openai_request_t r;
    dsla_openai_error_t e;
    assert_true(parse(DSLA_OPENAI_COMPLETION,
                      "{\"model\":\"tiny\",\"prompt\":\"Once\",\"max_tokens\":9,"
                      "\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,\"seed\":7,\"stop\":"
                      "[\"a\",\"bc\"],\"stream\":true,\"n\":1,\"ignore_eos\":true,\"user\":\"x\","
                      "\"logprobs\":null}",
                      &r, &e));
    assert_string_equal(r.generate.prompt, "Once");
    assert_int_equal(r.generate.prompt_len, 4);
    assert_int_equal(r.generate.max_tokens, 9);
    assert_true(r.generate.temperature == 0.5f && r.generate.top_p == 0.9f);
    assert_int_equal(r.generate.top_k, 40);
    assert_int_equal(r.generate.seed, 7);
    assert_int_equal(r.generate.n_stop, 2);
    assert_string_equal(r.generate.stop[1], "bc");
    assert_true(r.stream && r.generate.ignore_eos && r.generate.stream);
    dsla_openai_request_free(&r);

    /* defaults: 16 tokens, temperature 1, the caller's seed, no stops; null is "not given" */
    assert_true(
        parse(DSLA_OPENAI_COMPLETION, "{\"prompt\":\"\",\"stop\":null,\"seed\":null}", &r, &e));
    assert_int_equal(r.generate.max_tokens, DSLA_OPENAI_MAX_TOKENS_DEFAULT);
    assert_true(r.generate.temperature == 1.0f && r.generate.top_p == 1.0f);
    assert_int_equal(r.generate.seed, 42);
    assert_int_equal(r.generate.n_stop, 0);
    assert_false(r.stream);
    dsla_openai_request_free(&r);
    assert_true(parse(DSLA_OPENAI_COMPLETION, "{\"prompt\":\"x\",\"stop\":\"\\n\"}", &r, &e));
    assert_int_equal(r.generate.n_stop, 1);
    assert_string_equal(r.generate.stop[0], "\n");
    dsla_openai_request_free(&r);
}

static void test_refusals(void **state) {
    (void)state;
    static const struct {
        const char *body;
        int status;
        const char *param, *says;
    } cases[] = {
        {"", 400, "", "not valid JSON"},
        {"{\"prompt\":\"x\",}", 400, "", "not valid JSON"},
        {"{\"prompt\":\"x\",\"prompt\":\"y\"}", 400, "", "not valid JSON"},
        {"\"x\"", 400, "", "JSON object"},
        {"{}", 400, "prompt", "prompt is required"},
        {"{\"prompt\":[]}", 400, "prompt", "not empty"},
        {"{\"prompt\":[[]]}", 400, "prompt", "prompt[0] has 0 token ids"},
        {"{\"prompt\":[1,-2]}", 400, "prompt", "prompt[1] must be a token id"},
        {"{\"prompt\":[\"a\",7]}", 400, "prompt", "prompt[1] must be a string or an array"},
        {"{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\"],\"n\":16}", 400, "n",
         "5 prompts times n 16 make 80"},
        {"{\"prompt\":[5],\"echo\":true}", 400, "echo", "token ids is not served"},
        {"{\"prompt\":\"x\",\"n\":2,\"best_of\":1}", 400, "best_of", "must be at least n"},
        {"{\"prompt\":\"x\",\"best_of\":2,\"stream\":true}", 400, "best_of",
         "not served with stream"},
        {"{\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\"],\"n\":2,\"best_of\":13}", 400, "best_of",
         "5 prompts times best_of 13 make 65 samples"},
        {"{\"prompt\":7}", 400, "prompt", "must be a string"},
        {"{\"prompt\":\"x\",\"max_tokens\":0}", 400, "max_tokens", "is 0; it must be in [1, "},
        {"{\"prompt\":\"x\",\"max_tokens\":2.5}", 400, "max_tokens", "integer"},
        {"{\"prompt\":\"x\",\"max_tokens\":4294967296}", 400, "max_tokens", "4294967296"},
        {"{\"prompt\":\"x\",\"temperature\":-0.1}", 400, "temperature", "[0, 2]"},
        {"{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400, "temperature", "number"},
        {"{\"prompt\":\"x\",\"top_p\":0}", 400, "top_p", "(0, 1]"},
        {"{\"prompt\":\"x\",\"top_p\":1.5}", 400, "top_p", "(0, 1]"},
        {"{\"prompt\":\"x\",\"top_k\":-1}", 400, "top_k", "-1"},
        {"{\"prompt\":\"x\",\"seed\":-3}", 400, "seed", "-3"},
        {"{\"prompt\":\"x\",\"n\":17}", 400, "n", "n is 17; it must be in [1, 16]"},
        {"{\"prompt\":\"x\",\"stream\":1}", 400, "stream", "true or false"},
        {"{\"prompt\":\"x\",\"ignore_eos\":\"no\"}", 400, "ignore_eos", "true or false"},
        {"{\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "stop",
         "5 strings; the limit is 4"},
        {"{\"prompt\":\"x\",\"stop\":\"\"}", 400, "stop", "1 to 256 bytes"},
        {"{\"prompt\":\"x\",\"stop\":{}}", 400, "stop", "string or an array"},
        {"{\"prompt\":\"x\",\"model\":\"other\"}", 404, "model", "'other' does not exist"},
        {"{\"prompt\":\"x\",\"model\":3}", 400, "model", "string"},
        {"{\"prompt\":\"x\",\"logprobs\":21}", 400, "logprobs", "is 21; it must be in [0, 20]"},
        {"{\"prompt\":\"x\",\"logprobs\":true}", 400, "logprobs", "integer"},
        {"{\"prompt\":\"x\",\"echo\":1}", 400, "echo", "true or false"},
        {"{\"prompt\":\"x\",\"best_of\":17}", 400, "best_of", "is 17; it must be in [1, 16]"},
        {"{\"prompt\":\"x\",\"presence_penalty\":2.5}", 400, "presence_penalty", "[-2, 2]"},
        {"{\"prompt\":\"x\",\"repetition_penalty\":0}", 400, "repetition_penalty", "(0, 2]"},
        {"{\"prompt\":\"x\",\"min_p\":1.5}", 400, "min_p", "[0, 1]"},
        {"{\"prompt\":\"x\",\"logit_bias\":{\"5\":101}}", 400, "logit_bias", "[-100, 100]"},
        {"{\"prompt\":\"x\",\"logit_bias\":{\"a\":1}}", 400, "logit_bias", "token id"},
        {"{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_object\"}}", 400,
         "response_format", "only value taken is {\"type\":\"text\"}"},
        {"{\"prompt\":\"x\",\"tools\":[{\"type\":\"function\"}]}", 400, "tools", "not served"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dsla_openai_request_t r;
        dsla_openai_error_t e;
        if (parse(DSLA_OPENAI_COMPLETION, cases[i].body, &r, &e))
            fail_msg("case %zu accepted: %s", i, cases[i].body);
        assert_int_equal(e.status, cases[i].status);
        assert_string_equal(e.param, cases[i].param);
        if (!strstr(e.message, cases[i].says))
            fail_msg("case %zu: '%s' lacks '%s'", i, e.message, cases[i].says);
        assert_null(r.prompt); /* nothing left to free */
    }
}

/* logprobs as each kind takes it; neutral values of unserved fields pass */
static void test_logprobs_fields(void **state) {
    (void)state;
    dsla_openai_request_t r;
    dsla_openai_error_t e;
    assert_true(parse(DSLA_OPENAI_COMPLETION,
                      "{\"prompt\":\"x\",\"logprobs\":3,\"echo\":false,\"best_of\":1,"
                      "\"presence_penalty\":0.5,\"frequency_penalty\":-1,\"logit_bias\":{\"7\":"
                      "-100,\"9\":2.5},\"min_p\":0.1,\"repetition_penalty\":1.3,"
                      "\"tools\":[],\"response_format\":{\"type\":\"text\"}}",
                      &r, &e));
    assert_true(r.generate.logprobs);
    assert_int_equal(r.generate.top_logprobs, 3);
    assert_true(r.generate.presence_penalty == 0.5f && r.generate.frequency_penalty == -1.0f &&
                r.generate.min_p == 0.1f && r.generate.repetition_penalty == 1.3f);
    assert_int_equal(r.generate.n_bias, 2);
    assert_true(r.generate.bias_ids[0] + r.generate.bias_ids[1] == 16);
    dsla_openai_request_free(&r);
    assert_true(parse(DSLA_OPENAI_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":0}", &r, &e));
    assert_true(r.generate.logprobs);
    assert_int_equal(r.generate.top_logprobs, 0);
    dsla_openai_request_free(&r);
    assert_true(parse(DSLA_OPENAI_COMPLETION, "{\"prompt\":\"x\"}", &r, &e));
    assert_false(r.generate.logprobs);
    dsla_openai_request_free(&r);
    const char *msgs = "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]";
    char body[256];
    snprintf(body, sizeof body, "{%s,\"logprobs\":true,\"top_logprobs\":20}", msgs);
    assert_true(parse(DSLA_OPENAI_CHAT, body, &r, &e));
    assert_true(r.generate.logprobs);
    assert_int_equal(r.generate.top_logprobs, 20);
    dsla_openai_request_free(&r);
    snprintf(body, sizeof body, "{%s,\"echo\":true}", msgs);
    assert_false(parse(DSLA_OPENAI_CHAT, body, &r, &e));
    assert_string_equal(e.param, "echo");
    /* echo alone asks for no prompt logprobs; with logprobs it does */
    assert_true(parse(DSLA_OPENAI_COMPLETION, "{\"prompt\":\"x\",\"echo\":true}", &r, &e));
    assert_true(r.echo && !r.generate.prompt_logprobs);
    dsla_openai_request_free(&r);
    assert_true(
        parse(DSLA_OPENAI_COMPLETION, "{\"prompt\":\"x\",\"echo\":true,\"logprobs\":1}", &r, &e));
    assert_true(r.echo && r.generate.prompt_logprobs);
    dsla_openai_request_free(&r);
    snprintf(body, sizeof body, "{%s,\"top_logprobs\":2}", msgs);
    assert_false(parse(DSLA_OPENAI_CHAT, body, &r, &e));
    assert_string_equal(e.param, "top_logprobs");
    snprintf(body, sizeof body, "{%s,\"logprobs\":true,\"top_logprobs\":21}", msgs);
    assert_false(parse(DSLA_OPENAI_CHAT, body, &r, &e));
    assert_non_null(strstr(e.message, "top_logprobs is 21; it must be in [0, 20]"));
}

/* prompt arrays and n: one GENERATE per choice, prompt (i / n), seed plus (i % n) */
static void test_choices(void **state) {
    (void)state;
    dsla_openai_request_t r;
    dsla_openai_error_t e;
    assert_true(parse(DSLA_OPENAI_COMPLETION,
                      "{\"prompt\":[\"ab\",[5,6,7]],\"n\":2,\"best_of\":2,\"seed\":10}", &r, &e));
    assert_int_equal(dsla_openai_request_choices(&r), 4);
    dsla_proto_generate_t g;
    dsla_openai_request_choice(&r, 1, &g);
    assert_int_equal(g.prompt_len, 2);
    assert_memory_equal(g.prompt, "ab", 2);
    assert_null(g.prompt_ids);
    assert_int_equal(g.seed, 11);
    dsla_openai_request_choice(&r, 2, &g);
    assert_int_equal(g.n_prompt_ids, 3);
    assert_int_equal(g.prompt_ids[2], 7);
    assert_int_equal(g.seed, 10);
    assert_int_equal(r.generate.n_prompt_ids, 0); /* choice 0's */
    assert_memory_equal(r.generate.prompt, "ab", 2);
    dsla_openai_request_free(&r);
    assert_true(parse(DSLA_OPENAI_COMPLETION, "{\"prompt\":[1,2,3]}", &r, &e));
    assert_int_equal(dsla_openai_request_choices(&r), 1);
    assert_int_equal(r.generate.n_prompt_ids, 3);
    dsla_openai_request_free(&r);
    assert_true(parse(DSLA_OPENAI_COMPLETION, "{\"prompt\":\"x\"}", &r, &e));
    assert_int_equal(dsla_openai_request_choices(&r), 1);
    dsla_openai_request_free(&r);
    /* best_of: that many samples per prompt, the seed numbering them */
    assert_true(parse(DSLA_OPENAI_COMPLETION,
                      "{\"prompt\":[\"a\",\"b\"],\"n\":2,\"best_of\":3,\"seed\":4}", &r, &e));
    assert_int_equal(dsla_openai_request_choices(&r), 6);
    assert_int_equal(r.best_of, 3);
    dsla_openai_request_choice(&r, 5, &g);
    assert_memory_equal(g.prompt, "b", 1);
    assert_int_equal(g.seed, 6);
    dsla_openai_request_free(&r);
    /* chat has no best_of beyond n */
    assert_false(parse(DSLA_OPENAI_CHAT,
                       "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"best_of\":2}", &r,
                       &e));
    assert_string_equal(e.param, "best_of");

    dsla_openai_meta_t meta = {DSLA_OPENAI_COMPLETION, "cmpl-1", 1700000000, "tiny", false, 0};
    dsla_openai_choice_t c[2] = {{"a", 1, NULL, {"length", 3, 1, "serving0:plan-2"}},
                                 {"bc", 2, NULL, {"stop", 3, 2, "serving0:plan-2"}}};
    char *body = dsla_openai_response_body_n(&meta, c, 2, NULL);
    json_t *j = json_loads(body, 0, NULL);
    json_t *ch = json_object_get(j, "choices");
    assert_int_equal(json_array_size(ch), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(ch, 1), "index")), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ch, 1), "text")), "bc");
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 6);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 3);
    /* both choices from one replica and plan: it is named */
    assert_string_equal(json_string_value(json_object_get(j, "system_fingerprint")),
                        "serving0:plan-2");
    json_decref(j);
    free(body);
    /* from two plans: no fingerprint */
    c[1].end.fingerprint = "serving0:plan-3";
    body = dsla_openai_response_body_n(&meta, c, 2, NULL);
    j = json_loads(body, 0, NULL);
    assert_null(json_object_get(j, "system_fingerprint"));
    json_decref(j);
    free(body);
}

static dsla_proto_token_t *token_with(int32_t id, const char *text, float lp) {
    dsla_proto_token_t *t = calloc(1, sizeof *t);
    t->token = id;
    t->has_logprobs = true;
    t->chosen = (dsla_proto_logprob_t){.id = id, .logprob = lp, .text_len = strlen(text)};
    memcpy(t->chosen.text, text, strlen(text));
    t->n_top = 2;
    t->top[0] = (dsla_proto_logprob_t){.id = 9, .logprob = -0.25f, .text_len = 2};
    memcpy(t->top[0].text, " a", 2);
    t->top[1] = t->chosen;
    return t;
}

/* The completions shape (tokens, token_logprobs, top_logprobs, text_offset) and chat's
 * (content[] with bytes and top_logprobs), whole and chunk by chunk. */
static void test_logprobs_shapes(void **state) {
    (void)state;
    dsla_proto_token_t *t1 = token_with(5, " Once", -0.5f), *t2 = token_with(6, " up", -1.0f);
    dsla_openai_logprobs_t *lp = dsla_openai_logprobs_new(DSLA_OPENAI_COMPLETION);
    assert_true(dsla_openai_logprobs_add(lp, t1));
    assert_true(dsla_openai_logprobs_add(lp, t2));
    dsla_openai_meta_t meta = {DSLA_OPENAI_COMPLETION, "cmpl-1", 1700000000, "tiny", false, 0};
    dsla_openai_end_t end = {"length", 5, 2, NULL};
    char *body = dsla_openai_response_body(&meta, " Once up", 8, lp, &end);
    assert_non_null(strstr(body, "\"logprobs\":{\"tokens\":[\" Once\",\" up\"],"
                                 "\"token_logprobs\":[-0.5,-1.0],"
                                 "\"top_logprobs\":[{\" a\":-0.25,\" Once\":-0.5},"
                                 "{\" a\":-0.25,\" up\":-1.0}],\"text_offset\":[0,5]}"));
    free(body);
    /* a chunk has its own tokens; offsets run on */
    dsla_openai_logprobs_clear(lp);
    assert_true(dsla_openai_logprobs_add(lp, t1));
    body = dsla_openai_chunk(&meta, " Once", 5, lp, false, NULL);
    assert_non_null(strstr(body, "\"text_offset\":[8]"));
    free(body);
    dsla_openai_logprobs_free(&lp);

    meta.kind = DSLA_OPENAI_CHAT;
    lp = dsla_openai_logprobs_new(DSLA_OPENAI_CHAT);
    assert_true(dsla_openai_logprobs_add(lp, t2));
    body = dsla_openai_response_body(&meta, " up", 3, lp, &end);
    assert_non_null(strstr(body, "\"logprobs\":{\"content\":[{\"token\":\" up\",\"logprob\":-1.0,"
                                 "\"bytes\":[32,117,112],\"top_logprobs\":[{\"token\":\" a\","
                                 "\"logprob\":-0.25,\"bytes\":[32,97]},{\"token\":\" up\""));
    free(body);
    /* a token without logprobs adds nothing */
    t1->has_logprobs = false;
    dsla_openai_logprobs_clear(lp);
    assert_true(dsla_openai_logprobs_add(lp, t1));
    body = dsla_openai_chunk(&meta, " Once", 5, lp, false, NULL);
    assert_non_null(strstr(body, "\"logprobs\":{\"content\":[]}"));
    free(body);
    dsla_openai_logprobs_free(&lp);
    free(t1);
    free(t2);
}

static void test_chat_template(void **state) {
    (void)state;
    dsla_openai_request_t r;
    dsla_openai_error_t e;
    assert_true(parse(DSLA_OPENAI_CHAT,
                      "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                      "{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\","
                      "\"content\":\"Hello!\"},{\"role\":\"user\",\"content\":\"A story\"}],"
                      "\"stop\":\"END\",\"max_completion_tokens\":5}",
                      &r, &e));
    assert_string_equal(r.generate.prompt, "System: Be brief.\nUser: Hi\nAssistant: Hello!\n"
                                           "User: A story\nAssistant:");
    assert_int_equal(r.generate.prompt_len, strlen(r.generate.prompt));
    assert_int_equal(r.generate.n_stop, 2);
    assert_string_equal(r.generate.stop[0], "END");
    assert_string_equal(r.generate.stop[1], DSLA_OPENAI_CHAT_STOP);
    assert_int_equal(r.generate.max_tokens, 5);
    dsla_openai_request_free(&r);
    assert_true(
        parse(DSLA_OPENAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}", &r, &e));
    assert_int_equal(r.generate.max_tokens, DSLA_OPENAI_CHAT_MAX_TOKENS_DEFAULT);
    dsla_openai_request_free(&r);

    /* text parts joined by newlines; tool messages carried as "Tool:" */
    assert_true(parse(DSLA_OPENAI_CHAT,
                      "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
                      "\"text\":\"Hi\"},{\"type\":\"text\",\"text\":\"there\"}]},{\"role\":"
                      "\"tool\",\"content\":\"42\",\"tool_call_id\":\"c1\"}]}",
                      &r, &e));
    assert_string_equal(r.generate.prompt, "User: Hi\nthere\nTool: 42\nAssistant:");
    assert_int_equal(r.generate.prompt_len, strlen(r.generate.prompt));
    dsla_openai_request_free(&r);
    assert_false(parse(DSLA_OPENAI_CHAT,
                       "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                       "\"image_url\",\"image_url\":{}}]}]}",
                       &r, &e));
    assert_non_null(strstr(e.message, "content[0] is of type 'image_url'"));
    /* stream_options: include_usage only */
    assert_true(parse(DSLA_OPENAI_CHAT,
                      "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":true,"
                      "\"stream_options\":{\"include_usage\":true}}",
                      &r, &e));
    assert_true(r.include_usage);
    dsla_openai_request_free(&r);
    assert_false(parse(DSLA_OPENAI_COMPLETION,
                       "{\"prompt\":\"x\",\"stream_options\":{\"continuous_usage_stats\":true}}",
                       &r, &e));
    assert_string_equal(e.param, "stream_options");
    assert_false(parse(DSLA_OPENAI_COMPLETION,
                       "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":1}}", &r, &e));
    assert_string_equal(e.param, "stream_options");

    static const char *const bad[] = {
        "{}",
        "{\"messages\":{}}",
        "{\"messages\":[]}",
        "{\"messages\":[3]}",
        "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}",
        "{\"messages\":[{\"content\":\"x\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":null}]}",
        "{\"messages\":[{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{}]}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_false(parse(DSLA_OPENAI_CHAT, bad[i], &r, &e));
        assert_int_equal(e.status, 400);
        assert_string_equal(e.param, "messages");
    }
}

static void test_errors_from_codes(void **state) {
    (void)state;
    dsla_openai_error_t e;
    dsla_openai_error_from_code(DSLA_OPENAI_COMPLETION, DSLA_CODE_INVALID_ARGUMENT,
                                "max_tokens 900 exceeds the model's context", &e);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.param, "max_tokens");
    dsla_openai_error_from_code(DSLA_OPENAI_CHAT, DSLA_CODE_INVALID_ARGUMENT,
                                "request: the prompt has no tokens", &e);
    assert_string_equal(e.param, "messages");
    dsla_openai_error_from_code(DSLA_OPENAI_COMPLETION, DSLA_CODE_RESOURCE_EXHAUSTED, "full", &e);
    assert_int_equal(e.status, 429);
    assert_string_equal(e.param, "");
    dsla_openai_error_from_code(DSLA_OPENAI_COMPLETION, DSLA_CODE_UNAVAILABLE, "gone", &e);
    assert_int_equal(e.status, 503);
    dsla_openai_error_from_code(DSLA_OPENAI_COMPLETION, DSLA_CODE_INTERNAL, "bug", &e);
    assert_int_equal(e.status, 500);
    char *body = dsla_openai_error_body(&e);
    json_error_t je;
    json_t *j = json_loads(body, 0, &je);
    json_t *err = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(err, "message")), "bug");
    assert_string_equal(json_string_value(json_object_get(err, "type")), "server_error");
    assert_true(json_is_null(json_object_get(err, "param")));
    json_decref(j);
    free(body);
    /* local statuses go by the client code they travel as, their message unchanged; no memory on
     * this server is its own failure */
    dsla_openai_error_from_code(DSLA_OPENAI_COMPLETION, DSLA_ERR_NOT_FOUND, "no such layer", &e);
    assert_int_equal(e.status, 400);
    assert_string_equal(e.message, "no such layer");
    dsla_openai_error_from_code(DSLA_OPENAI_COMPLETION, DSLA_CODE_DEADLINE_EXCEEDED, "late", &e);
    assert_int_equal(e.status, 504);
    dsla_openai_error_from_status(DSLA_OPENAI_COMPLETION, dsla_error_oom("a prompt of 9 bytes"),
                                  &e);
    assert_int_equal(e.status, 500);
    assert_string_equal(e.type, "server_error");
    assert_string_equal(e.message, "a prompt of 9 bytes: out of memory");
}

static void test_responses(void **state) {
    (void)state;
    dsla_openai_meta_t meta = {DSLA_OPENAI_COMPLETION, "cmpl-1", 1700000000, "tiny", false, 0};
    dsla_openai_end_t end = {"length", 5, 3, NULL};
    /* a stray continuation byte and a cut 3-byte sequence become U+FFFD each */
    char *body = dsla_openai_response_body(&meta, "ok\x80 \xe2\x82", 6, NULL, &end);
    json_error_t je;
    json_t *j = json_loads(body, 0, &je);
    assert_non_null(j);
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c, "text")),
                        "ok\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "usage"), "total_tokens")), 8);
    json_decref(j);
    free(body);

    meta.kind = DSLA_OPENAI_CHAT;
    char *first = dsla_openai_chunk(&meta, "Hi", 2, NULL, true, NULL);
    char *next = dsla_openai_chunk(&meta, " there", 6, NULL, false, NULL);
    assert_memory_equal(first, "data: {", 7);
    assert_string_equal(first + strlen(first) - 2, "\n\n");
    assert_non_null(strstr(first, "\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"}"));
    assert_non_null(strstr(first, "\"finish_reason\":null"));
    assert_non_null(strstr(next, "\"delta\":{\"content\":\" there\"}"));
    assert_null(strstr(next, "usage"));
    assert_non_null(strstr(next, "chat.completion.chunk"));
    free(first);
    free(next);
    char *last = dsla_openai_chunk(&meta, "", 0, NULL, false, &end);
    assert_non_null(strstr(last, "\"finish_reason\":\"length\""));
    assert_non_null(strstr(last, "\"completion_tokens\":3"));
    free(last);
    /* include_usage: the last chunk without usage, then choices [] with it */
    meta.include_usage = true;
    last = dsla_openai_chunk(&meta, "", 0, NULL, false, &end);
    assert_null(strstr(last, "usage"));
    free(last);
    last = dsla_openai_usage_chunk(&meta, &end);
    assert_non_null(strstr(last, "\"choices\":[],\"usage\":{\"prompt_tokens\":5"));
    free(last);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_fields), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_chat_template),     cmocka_unit_test(test_errors_from_codes),
        cmocka_unit_test(test_responses),         cmocka_unit_test(test_logprobs_fields),
        cmocka_unit_test(test_logprobs_shapes),   cmocka_unit_test(test_choices),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

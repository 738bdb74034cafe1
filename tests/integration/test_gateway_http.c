/* The gateway and its HTTP API as real dsla-serve processes on loopback: OpenAI completions and
 * chat (whole and streamed) equal in-process greedy generation; models, health and metrics; bad
 * requests named; the client stub through a gateway equals a replica reached directly; a replica
 * killed mid-stream ends the stream UNAVAILABLE promptly; a replica that dies before its first
 * token has its request moved to another. */
#include "tests/testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto/dsla_client.h"
#include "runtime/actor/actor.h"
#include "runtime/core/clock.h"
#include "runtime/model/tokenizer.h"
#include "tests/serverutil.h"

/* Liveness tests use FAST_HEARTBEAT_MS; clients whose requests must succeed use the default 1 s,
 * since a loaded two-core CI machine can stall a process for longer than three short intervals
 * (at 100 ms, a sanitized build under ctest -j8 on two cores declared a live replica dead before
 * its first token). */
enum { FAST_HEARTBEAT_MS = 250, CLIENT_HEARTBEAT_MS = 1000 };
/* The re-route test needs the fake replica found dead (3 intervals) but the real one alive through
 * a whole generation: at 200 ms a sanitized build on a loaded machine missed three beats of the
 * real replica too and the request timed out (seen under ctest -j8 on two cores). */
enum { REROUTE_HEARTBEAT_MS = 500 };

static const char prompt[] = "Once upon a time";
enum { GREEDY_TOKENS = 40 };

static void sleep_ms(long ms) {
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static char *inprocess(const char *model, int max_tokens, int32_t *ids, int *n_ids) {
    return dsla_test_inprocess(model, prompt, max_tokens, ids, n_ids);
}

static json_t *json_body(const dsla_test_http_reply_t *r) {
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, 0, &e);
    if (!j) fail_msg("not JSON (%s): %.300s", e.text, r->body);
    return j;
}

static void wait_healthy(int port) {
    for (int i = 0; i < 200; i++) {
        dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/health", NULL);
        int status = r.status;
        dsla_test_http_reply_free(&r);
        if (status == 200) return;
        sleep_ms(50);
    }
    fail_msg("/health never answered 200");
}

static dsla_test_server_t start_embedded(const char *model) {
    const char *args[] = {"--model", model,         "--endpoint", "tcp://127.0.0.1:*",
                          "--http",  "127.0.0.1:0", NULL};
    dsla_test_server_t s = dsla_test_server_start(args);
    assert_true(s.http_port > 0);
    wait_healthy(s.http_port);
    return s;
}

/* The text of a streamed answer: choices[0].text (or .delta.content) of every "data:" event, which
 * must end with [DONE]; *finish gets the last finish_reason, *events the number of chunks. */
static char *sse_text(const char *body, bool chat, char *finish, int *events) {
    size_t cap = strlen(body) + 1, len = 0;
    char *text = calloc(1, cap);
    bool done = false;
    *events = 0;
    for (const char *p = body; (p = strstr(p, "data: ")) != NULL;) {
        p += 6;
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        assert_false(done); /* nothing after [DONE] */
        if (strncmp(p, "[DONE]", 6) == 0) {
            done = true;
        } else {
            json_error_t e;
            json_t *j = json_loadb(p, (size_t)(end - p), 0, &e);
            assert_non_null(j);
            json_t *c = json_array_get(json_object_get(j, "choices"), 0);
            json_t *t = chat ? json_object_get(json_object_get(c, "delta"), "content")
                             : json_object_get(c, "text");
            if (chat && *events == 0)
                assert_string_equal(
                    json_string_value(json_object_get(json_object_get(c, "delta"), "role")),
                    "assistant");
            if (t) {
                memcpy(text + len, json_string_value(t), json_string_length(t));
                len += json_string_length(t);
            }
            json_t *f = json_object_get(c, "finish_reason");
            if (json_is_string(f)) snprintf(finish, 16, "%s", json_string_value(f));
            (*events)++;
            json_decref(j);
        }
        p = end;
    }
    assert_true(done);
    return text;
}

/* POSTs body to path, expects 200 and returns the parsed JSON answer. */
static json_t *post_ok(int port, const char *path, const char *body) {
    dsla_test_http_reply_t r = dsla_test_http(port, "POST", path, body);
    if (r.status != 200) fail_msg("%s: status %d, body %s", path, r.status, r.body);
    json_t *j = json_body(&r);
    dsla_test_http_reply_free(&r);
    return j;
}

/* choices[0].logprobs[key] of an answer. */
static json_t *choice_logprobs(json_t *j, const char *key) {
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    return json_object_get(json_object_get(c, "logprobs"), key);
}

/* echo: the prompt before the text; with logprobs, the prompt's tokens first (the first with null
 * logprobs), then the generated ones with the same numbers as without echo; streamed, the prompt
 * is the first chunk. */
static void check_echo(int port, const char *want, const double *whole) {
    dsla_test_http_reply_t r;
    char req[512], full[1024];
    snprintf(full, sizeof full, "%s%s", prompt, want);
    snprintf(req, sizeof req,
             "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,"
             "\"echo\":true,\"logprobs\":1}",
             prompt, GREEDY_TOKENS);
    json_t *j = post_ok(port, "/v1/completions", req);
    json_t *c = json_array_get(json_object_get(j, "choices"), 0),
           *lp = json_object_get(c, "logprobs");
    assert_string_equal(json_string_value(json_object_get(c, "text")), full);
    size_t pt =
        (size_t)json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens"));
    json_t *lps = json_object_get(lp, "token_logprobs"),
           *tops = json_object_get(lp, "top_logprobs");
    assert_int_equal(json_array_size(lps), pt + GREEDY_TOKENS);
    assert_int_equal(json_array_size(json_object_get(lp, "tokens")), pt + GREEDY_TOKENS);
    assert_true(json_is_null(json_array_get(lps, 0)) && json_is_null(json_array_get(tops, 0)));
    for (size_t i = 1; i < pt; i++) {
        double x = json_real_value(json_array_get(lps, i));
        assert_true(x <= 0 && x > -100);
        assert_true(json_object_size(json_array_get(tops, i)) >= 1);
    }
    for (size_t i = 0; i < GREEDY_TOKENS; i++)
        assert_float_equal(json_real_value(json_array_get(lps, pt + i)), whole[i], 1e-6);
    json_decref(j);

    snprintf(req, sizeof req,
             "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,"
             "\"echo\":true,\"stream\":true}",
             prompt, GREEDY_TOKENS);
    r = dsla_test_http(port, "POST", "/v1/completions", req);
    assert_int_equal(r.status, 200);
    char finish[16] = "";
    int events = 0;
    char *text = sse_text(r.body, false, finish, &events);
    assert_string_equal(text, full);
    assert_non_null(strstr(r.body, prompt));
    free(text);
    dsla_test_http_reply_free(&r);
}

/* n and prompt arrays: one choice per prompt and sample, index in order, usage summed; the
 * token-id prompt of the same text gives the same greedy text; n = 2 samples differ by seed. */
static void check_choices(int port, const char *model, const char *want) {
    dsla_test_http_reply_t r;
    dsla_tokenizer_t *tok = NULL;
    assert_int_equal(dsla_tokenizer_load_dir(&tok, model), DSLA_OK);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(dsla_tokenizer_encode(tok, prompt, strlen(prompt),
                                           dsla_tokenizer_add_bos_default(tok), &ids, &n_ids),
                     DSLA_OK);
    dsla_tokenizer_destroy(&tok);
    char req[1024], list[512] = "";
    for (size_t i = 0; i < n_ids; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? "," : "", ids[i]);
    free(ids);
    snprintf(req, sizeof req,
             "{\"prompt\":[\"%s\",[%s]],\"max_tokens\":%d,\"temperature\":0,"
             "\"ignore_eos\":true}",
             prompt, list, GREEDY_TOKENS);
    json_t *j = post_ok(port, "/v1/completions", req);
    json_t *ch = json_object_get(j, "choices");
    assert_int_equal(json_array_size(ch), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *c = json_array_get(ch, i);
        assert_int_equal(json_integer_value(json_object_get(c, "index")), (json_int_t)i);
        assert_string_equal(json_string_value(json_object_get(c, "text")), want);
    }
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")),
                     2 * GREEDY_TOKENS);
    json_decref(j);

    snprintf(req, sizeof req,
             "{\"prompt\":\"%s\",\"max_tokens\":24,\"temperature\":1,\"seed\":5,\"n\":2,"
             "\"ignore_eos\":true}",
             prompt);
    j = post_ok(port, "/v1/completions", req);
    ch = json_object_get(j, "choices");
    assert_int_equal(json_array_size(ch), 2);
    assert_string_not_equal(json_string_value(json_object_get(json_array_get(ch, 0), "text")),
                            json_string_value(json_object_get(json_array_get(ch, 1), "text")));
    json_decref(j);

    /* logit_bias reaches the sampler: +100 on one token makes every token that one */
    snprintf(req, sizeof req,
             "{\"prompt\":\"%s\",\"max_tokens\":3,\"temperature\":0,\"ignore_eos\":true,"
             "\"logprobs\":0,\"logit_bias\":{\"300\":100},\"repetition_penalty\":1.1}",
             prompt);
    j = post_ok(port, "/v1/completions", req);
    json_t *toks = choice_logprobs(j, "tokens");
    assert_int_equal(json_array_size(toks), 3);
    for (size_t i = 1; i < 3; i++)
        assert_string_equal(json_string_value(json_array_get(toks, i)),
                            json_string_value(json_array_get(toks, 0)));
    json_decref(j);

    /* include_usage: a last chunk with choices [] and the usage, then [DONE] */
    snprintf(req, sizeof req,
             "{\"prompt\":\"%s\",\"max_tokens\":4,\"stream\":true,\"stream_options\":"
             "{\"include_usage\":true}}",
             prompt);
    r = dsla_test_http(port, "POST", "/v1/completions", req);
    assert_int_equal(r.status, 200);
    const char *u_chunk = strstr(r.body, "\"choices\":[],\"usage\":{");
    assert_non_null(u_chunk);
    assert_non_null(strstr(u_chunk, "data: [DONE]"));
    assert_int_equal(strstr(r.body, "\"usage\"") - r.body, strstr(u_chunk, "\"usage\"") - r.body);
    dsla_test_http_reply_free(&r);

    /* several choices stream too, interleaved under their index (test_stream_choices) */
    snprintf(req, sizeof req, "{\"prompt\":\"%s\",\"n\":2,\"stream\":true}", prompt);
    r = dsla_test_http(port, "POST", "/v1/completions", req);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"index\":1"));
    dsla_test_http_reply_free(&r);
}

/* logprobs through the whole path (engine, TOKEN, gateway, HTTP): greedy takes the likeliest
 * token, so each token's logprob is the largest of its top list; the tokens' texts make the text;
 * text_offset runs over them; streamed chunks carry the same numbers; chat has its own shape. */
static void check_logprobs(int port, const char *want) {
    dsla_test_http_reply_t r;
    char req[512];
    snprintf(req, sizeof req,
             "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,"
             "\"logprobs\":5}",
             prompt, GREEDY_TOKENS);
    json_t *j = post_ok(port, "/v1/completions", req);
    json_t *lp = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    json_t *tokens = json_object_get(lp, "tokens"), *lps = json_object_get(lp, "token_logprobs");
    json_t *tops = json_object_get(lp, "top_logprobs"), *offs = json_object_get(lp, "text_offset");
    assert_int_equal(json_array_size(tokens), GREEDY_TOKENS);
    assert_int_equal(json_array_size(lps), GREEDY_TOKENS);
    assert_int_equal(json_array_size(tops), GREEDY_TOKENS);
    assert_int_equal(json_array_size(offs), GREEDY_TOKENS);
    char joined[4096] = "";
    double whole[GREEDY_TOKENS];
    size_t off = 0;
    for (size_t i = 0; i < GREEDY_TOKENS; i++) {
        const char *tok = json_string_value(json_array_get(tokens, i));
        double x = json_real_value(json_array_get(lps, i));
        whole[i] = x;
        assert_true(x <= 0 && x > -100);
        json_t *top = json_array_get(tops, i);
        assert_true(json_object_size(top) >= 1 && json_object_size(top) <= 6);
        const char *key;
        json_t *v;
        json_object_foreach(top, key, v) assert_true(json_real_value(v) <= x + 1e-6);
        assert_float_equal(json_real_value(json_object_get(top, tok)), x, 1e-6);
        assert_int_equal(json_integer_value(json_array_get(offs, i)), (json_int_t)off);
        off += strlen(tok);
        strncat(joined, tok, sizeof joined - strlen(joined) - 1);
    }
    assert_string_equal(joined, want);
    json_decref(j);

    /* streamed: the same logprobs, spread over the chunks */
    snprintf(req, sizeof req,
             "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,"
             "\"logprobs\":2,\"stream\":true}",
             prompt, GREEDY_TOKENS);
    r = dsla_test_http(port, "POST", "/v1/completions", req);
    assert_int_equal(r.status, 200);
    size_t n = 0;
    for (const char *p = r.body; (p = strstr(p, "data: {")) != NULL; p++) {
        json_t *c = json_loadb(p + 6, (size_t)(strstr(p, "\n\n") - p - 6), 0, NULL);
        assert_non_null(c);
        json_t *l = json_object_get(json_array_get(json_object_get(c, "choices"), 0), "logprobs");
        json_t *x = json_object_get(l, "token_logprobs");
        for (size_t i = 0; i < json_array_size(x); i++, n++)
            assert_float_equal(json_real_value(json_array_get(x, i)), whole[n], 1e-6);
        json_decref(c);
    }
    assert_int_equal(n, GREEDY_TOKENS);
    dsla_test_http_reply_free(&r);

    snprintf(req, sizeof req,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],\"max_tokens\":6,"
             "\"temperature\":0,\"ignore_eos\":true,\"logprobs\":true,\"top_logprobs\":3}",
             prompt);
    j = post_ok(port, "/v1/chat/completions", req);
    json_t *content = choice_logprobs(j, "content");
    long long completion =
        json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens"));
    assert_true(completion >= 1);
    assert_int_equal(json_array_size(content), completion);
    json_t *first = json_array_get(content, 0);
    assert_int_equal(json_array_size(json_object_get(first, "top_logprobs")), 3);
    assert_int_equal(json_array_size(json_object_get(first, "bytes")),
                     strlen(json_string_value(json_object_get(first, "token"))));
    json_decref(j);
    check_echo(port, want, whole);
}

static void test_completions(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *want = inprocess(model, GREEDY_TOKENS, NULL, NULL);
    dsla_test_server_t srv = start_embedded(model);
    char req[512];
    snprintf(req, sizeof req,
             "{\"model\":\"stories260K-hf\",\"prompt\":\"%s\",\"max_tokens\":%d,"
             "\"temperature\":0,\"ignore_eos\":true}",
             prompt, GREEDY_TOKENS);
    dsla_test_http_reply_t r = dsla_test_http(srv.http_port, "POST", "/v1/completions", req);
    assert_int_equal(r.status, 200);
    json_t *j = json_body(&r);
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_string_equal(json_string_value(json_object_get(c, "text")), want);
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
    json_t *usage = json_object_get(j, "usage");
    long long pt = json_integer_value(json_object_get(usage, "prompt_tokens"));
    assert_true(pt > 0);
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")),
                     GREEDY_TOKENS);
    assert_int_equal(json_integer_value(json_object_get(usage, "total_tokens")),
                     pt + GREEDY_TOKENS);
    json_decref(j);
    dsla_test_http_reply_free(&r);

    /* streamed: the chunks concatenate to the same text and end with [DONE] */
    snprintf(req, sizeof req,
             "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"ignore_eos\":true,"
             "\"stream\":true}",
             prompt, GREEDY_TOKENS);
    r = dsla_test_http(srv.http_port, "POST", "/v1/completions", req);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "text/event-stream"));
    char finish[16] = "";
    int events = 0;
    char *text = sse_text(r.body, false, finish, &events);
    assert_string_equal(text, want);
    assert_string_equal(finish, "length");
    assert_true(events > 1);
    free(text);
    dsla_test_http_reply_free(&r);

    /* a stop string ends the text before it, finish_reason "stop" */
    char stop[8];
    snprintf(stop, sizeof stop, "%.5s", want + 10);
    snprintf(req, sizeof req,
             "{\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,\"stop\":[\"%s\"]}", prompt,
             GREEDY_TOKENS, stop);
    r = dsla_test_http(srv.http_port, "POST", "/v1/completions", req);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    const char *cut = json_string_value(json_object_get(c, "text"));
    assert_true(strlen(cut) <= 10 + 4 && strncmp(cut, want, strlen(cut)) == 0);
    json_decref(j);
    dsla_test_http_reply_free(&r);
    check_logprobs(srv.http_port, want);
    check_choices(srv.http_port, model, want);
    dsla_test_server_stop(&srv);
    free(want);
    free(model);
}

static void test_chat_models_health_metrics(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    dsla_test_server_t srv = start_embedded(model);
    const char *chat = "{\"messages\":[{\"role\":\"system\",\"content\":\"Tell stories.\"},"
                       "{\"role\":\"user\",\"content\":\"A story about a cat\"}],"
                       "\"max_tokens\":20,\"temperature\":0,\"seed\":7}";
    dsla_test_http_reply_t r = dsla_test_http(srv.http_port, "POST", "/v1/chat/completions", chat);
    assert_int_equal(r.status, 200);
    json_t *j = json_body(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    json_t *msg = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(msg, "role")), "assistant");
    char *whole = strdup(json_string_value(json_object_get(msg, "content")));
    assert_true(json_is_string(json_object_get(c, "finish_reason")));
    assert_true(json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")) >
                10);
    json_decref(j);
    dsla_test_http_reply_free(&r);

    char stream_req[512];
    snprintf(stream_req, sizeof stream_req, "%.*s,\"stream\":true}", (int)strlen(chat) - 1, chat);
    r = dsla_test_http(srv.http_port, "POST", "/v1/chat/completions", stream_req);
    assert_int_equal(r.status, 200);
    char finish[16] = "";
    int events = 0;
    char *text = sse_text(r.body, true, finish, &events);
    assert_string_equal(text, whole);
    free(text);
    free(whole);
    dsla_test_http_reply_free(&r);

    r = dsla_test_http(srv.http_port, "GET", "/v1/models", NULL);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(m, "id")), "stories260K-hf");
    assert_string_equal(json_string_value(json_object_get(m, "object")), "model");
    json_decref(j);
    dsla_test_http_reply_free(&r);

    r = dsla_test_http(srv.http_port, "GET", "/health", NULL);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
    json_decref(j);
    dsla_test_http_reply_free(&r);

    r = dsla_test_http(srv.http_port, "GET", "/metrics", NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "text/plain"));
    assert_non_null(
        strstr(r.body, "dsla_http_requests_total{path=\"/v1/chat/completions\",code=\"200\"} 2"));
    assert_non_null(strstr(r.body, "dsla_replica_up{replica=\"serving0\""));
    assert_non_null(strstr(r.body, "dsla_gateway_requests_total 2\n"));
    assert_non_null(strstr(r.body, "dsla_http_in_flight 0\n"));
    assert_non_null(strstr(r.body, "# TYPE dsla_gateway_tokens_total counter\n"));
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&srv);
    free(model);
}

/* The engine's refusal of max_tokens 100000 on stories260K-hf (runtime/serve/engine.c): clients
 * get this sentence, not a status name. */
#define ENGINE_CONTEXT_REFUSAL                                                                     \
    "max_tokens 100000 exceeds the model's context of 512 minus the prompt's"

/* Each refusal names its field; the server keeps serving. */
/* /tokenize and /detokenize round trip; /v1/models/{id}; /version. */
static void check_utility_endpoints(int port) {
    dsla_test_http_reply_t r =
        dsla_test_http(port, "POST", "/tokenize", "{\"prompt\":\"Once upon a time\"}");
    assert_int_equal(r.status, 200);
    json_t *j = json_body(&r);
    json_t *tokens = json_object_get(j, "tokens");
    assert_true(json_array_size(tokens) > 1);
    assert_int_equal(json_integer_value(json_object_get(j, "count")), json_array_size(tokens));
    char *list = json_dumps(tokens, JSON_COMPACT), body[512];
    snprintf(body, sizeof body, "{\"tokens\":%s}", list);
    free(list);
    json_decref(j);
    dsla_test_http_reply_free(&r);
    r = dsla_test_http(port, "POST", "/detokenize", body);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    assert_string_equal(json_string_value(json_object_get(j, "prompt")), "Once upon a time");
    json_decref(j);
    dsla_test_http_reply_free(&r);
    r = dsla_test_http(port, "GET", "/v1/models/stories260K-hf", NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"id\":\"stories260K-hf\""));
    dsla_test_http_reply_free(&r);
    r = dsla_test_http(port, "GET", "/version", NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"version\":\"" DSLA_VERSION "\""));
    dsla_test_http_reply_free(&r);
}

static void test_bad_requests(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    dsla_test_server_t srv = start_embedded(model);
    static const struct {
        const char *method, *path, *body;
        int status;
        const char *param, *says;
    } cases[] = {
        {"POST", "/v1/completions", "{bad", 400, NULL, "not valid JSON"},
        {"POST", "/v1/completions", "[1]", 400, NULL, "JSON object"},
        {"POST", "/v1/completions", "{\"max_tokens\":4}", 400, "prompt", "required"},
        {"POST", "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":0}", 400, "max_tokens",
         "[1, 2147483647]"},
        /* the engine's own sentence, carried unchanged through the gateway and the stub */
        {"POST", "/v1/completions", "{\"prompt\":\"x\",\"max_tokens\":100000}", 400, "max_tokens",
         ENGINE_CONTEXT_REFUSAL},
        {"POST", "/v1/completions", "{\"prompt\":\"x\",\"temperature\":3}", 400, "temperature",
         "3"},
        {"POST", "/v1/completions", "{\"prompt\":\"x\",\"n\":17}", 400, "n", "[1, 16]"},
        {"POST", "/v1/completions", "{\"prompt\":\"x\",\"stop\":[1]}", 400, "stop", "stop[0]"},
        {"POST", "/v1/completions", "{\"prompt\":\"x\",\"stream\":\"yes\"}", 400, "stream",
         "true or false"},
        {"POST", "/v1/completions", "{\"prompt\":\"x\",\"model\":\"gpt-4\"}", 404, "model",
         "gpt-4"},
        {"POST", "/v1/chat/completions", "{\"messages\":[]}", 400, "messages", "non-empty"},
        {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}",
         400, "messages", "role"},
        {"GET", "/v1/completions", NULL, 405, NULL, "POST"},
        {"GET", "/nowhere", NULL, 404, NULL, "no such path"},
        {"GET", "/v1/models/gpt-4", NULL, 404, "model", "'gpt-4' does not exist"},
        {"POST", "/tokenize", "{}", 400, "prompt", "required"},
        {"POST", "/detokenize", "{\"tokens\":[1,99999]}", 400, "tokens", "[0, 512)"},
        {"GET", "/tokenize", NULL, 405, NULL, "POST"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dsla_test_http_reply_t r =
            dsla_test_http(srv.http_port, cases[i].method, cases[i].path, cases[i].body);
        if (r.status != cases[i].status)
            fail_msg("case %zu (%s): status %d, body %s", i, cases[i].body, r.status, r.body);
        json_t *j = json_body(&r);
        json_t *e = json_object_get(j, "error");
        assert_non_null(strstr(json_string_value(json_object_get(e, "message")), cases[i].says));
        json_t *param = json_object_get(e, "param");
        if (cases[i].param)
            assert_string_equal(json_string_value(param), cases[i].param);
        else
            assert_true(json_is_null(param));
        if (cases[i].status == 400)
            assert_string_equal(json_string_value(json_object_get(e, "type")),
                                "invalid_request_error");
        json_decref(j);
        dsla_test_http_reply_free(&r);
    }
    dsla_test_http_reply_t r = dsla_test_http(srv.http_port, "POST", "/v1/completions",
                                              "{\"prompt\":\"Once\",\"max_tokens\":3}");
    assert_int_equal(r.status, 200);
    dsla_test_http_reply_free(&r);
    check_utility_endpoints(srv.http_port);
    dsla_test_server_stop(&srv);
    free(model);
}

/* The prompt, greedy, past end-of-sequence: what `dsla generate` runs in-process. */
static dsla_proto_generate_t greedy(int max_tokens) {
    return (dsla_proto_generate_t){.prompt = prompt,
                                   .prompt_len = strlen(prompt),
                                   .max_tokens = max_tokens,
                                   .temperature = 0,
                                   .top_p = 1,
                                   .ignore_eos = true};
}

static dsla_proto_code_t stub_generate(const char *endpoint, int max_tokens,
                                       dsla_test_collected_t *got, dsla_client_result_t *r) {
    dsla_client_options_t opt = {.heartbeat_ms = CLIENT_HEARTBEAT_MS};
    dsla_client_t *c = NULL;
    assert_int_equal(dsla_client_connect(&c, endpoint, &opt), DSLA_OK);
    dsla_proto_generate_t req = greedy(max_tokens);
    dsla_proto_code_t code = dsla_client_generate(c, &req, dsla_test_collect, got, 30000, r);
    dsla_client_close(&c);
    return code;
}

static dsla_test_server_t start_replica(const char *model, const char *heartbeat_ms) {
    const char *args[] = {
        "--model",    model, "--serving-only", "--endpoint", "tcp://127.0.0.1:*", "--heartbeat-ms",
        heartbeat_ms, NULL};
    return dsla_test_server_start(args);
}

static dsla_test_server_t start_gateway(const char *const *replicas, int n,
                                        const char *heartbeat_ms) {
    const char *args[16] = {"--endpoint", "tcp://127.0.0.1:*", "--http",
                            "off",        "--heartbeat-ms",    heartbeat_ms};
    int k = 6;
    for (int i = 0; i < n; i++) {
        args[k++] = "--replica";
        args[k++] = replicas[i];
    }
    args[k] = NULL;
    return dsla_test_server_start(args);
}

/* The stub through a gateway-only node to a remote replica gives the ids the replica gives
 * directly, which are the in-process ones. */
static void test_client_stub_through_gateway(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    static int32_t want[DSLA_TEST_IDS_MAX];
    int n_want = 0;
    free(inprocess(model, GREEDY_TOKENS, want, &n_want));
    assert_int_equal(n_want, GREEDY_TOKENS);
    dsla_test_server_t replica = start_replica(model, "1000");
    const char *eps[] = {replica.endpoint};
    dsla_test_server_t gw = start_gateway(eps, 1, "1000");
    dsla_test_collected_t *direct = calloc(1, sizeof *direct), *routed = calloc(1, sizeof *routed);
    dsla_client_result_t r;
    assert_int_equal(stub_generate(replica.endpoint, GREEDY_TOKENS, direct, &r), DSLA_CODE_OK);
    assert_int_equal(stub_generate(gw.endpoint, GREEDY_TOKENS, routed, &r), DSLA_CODE_OK);
    assert_int_equal(r.completion_tokens, GREEDY_TOKENS);
    assert_int_equal(r.finish, DSLA_PROTO_FINISH_LENGTH);
    assert_int_equal(direct->n, n_want);
    assert_int_equal(routed->n, n_want);
    assert_memory_equal(direct->ids, want, sizeof(int32_t) * (size_t)n_want);
    assert_memory_equal(routed->ids, want, sizeof(int32_t) * (size_t)n_want);
    /* a refusal by the replica reaches the client through the gateway unchanged */
    dsla_client_t *c = NULL;
    assert_int_equal(dsla_client_connect(&c, gw.endpoint, NULL), DSLA_OK);
    dsla_proto_generate_t bad = {.prompt = "Once", .prompt_len = 4, .max_tokens = 100000};
    assert_int_equal(dsla_client_generate(c, &bad, NULL, NULL, 10000, &r),
                     DSLA_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(r.message, ENGINE_CONTEXT_REFUSAL));
    assert_non_null(strstr(r.message, " minus the prompt's "));
    dsla_client_close(&c);
    free(direct);
    free(routed);
    dsla_test_server_stop(&gw);
    dsla_test_server_stop(&replica);
    free(model);
}

/* kill -9 of the replica mid-stream: the gateway notices within its liveness window and the
 * client gets UNAVAILABLE from it, well before its own deadline. */
static void test_replica_killed_mid_stream(void **state) {
    (void)state;
    /* slow enough on the CPU that the stream is still running when the kill lands */
    char *model = dsla_test_data_or_skip("models/tinystories-11M-hf");
    char hb[16];
    snprintf(hb, sizeof hb, "%d", FAST_HEARTBEAT_MS);
    dsla_test_server_t replica = start_replica(model, hb);
    const char *eps[] = {replica.endpoint};
    dsla_test_server_t gw = start_gateway(eps, 1, hb);
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    got->kill_on_first = replica.pid;
    dsla_client_result_t r;
    double t0 = dsla_clock_seconds();
    assert_int_equal(stub_generate(gw.endpoint, 1900, got, &r), DSLA_CODE_UNAVAILABLE);
    double took = dsla_clock_seconds() - t0;
    assert_true(got->n >= 1 && got->n < 1900);
    assert_non_null(strstr(r.message, "mid-stream"));
    /* three intervals to notice, plus start-up and the tokens before the kill */
    assert_true(took < 3.0);
    free(got);
    dsla_test_server_stop(&gw);
    free(model);
}

/* --log-level info --log-format json: one JSON line per finished request with its id, tokens,
 * TTFT, total time and status; a bad option value is a usage error naming it. */
static void test_request_log(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *dir = dsla_test_tempdir(), log[512];
    snprintf(log, sizeof log, "%s/serve.log", dir);
    const char *args[] = {"--model",      model,         "--endpoint",  "tcp://127.0.0.1:*",
                          "--http",       "127.0.0.1:0", "--log-level", "info",
                          "--log-format", "json",        NULL};
    dsla_test_server_t srv = dsla_test_server_start_logged(args, log);
    wait_healthy(srv.http_port);
    dsla_test_http_reply_t r = dsla_test_http(srv.http_port, "POST", "/v1/completions",
                                              "{\"prompt\":\"Once\",\"max_tokens\":5,"
                                              "\"ignore_eos\":true}");
    assert_int_equal(r.status, 200);
    json_t *j = json_body(&r);
    char want[96], served_by[160];
    snprintf(want, sizeof want, "request id=%s choice=0 status=200 prompt_tokens=",
             json_string_value(json_object_get(j, "id")));
    /* the replica and the plan that computed it, as the response's system_fingerprint says */
    const char *fp = json_string_value(json_object_get(j, "system_fingerprint"));
    assert_non_null(fp);
    assert_non_null(strstr(fp, ":plan-"));
    snprintf(served_by, sizeof served_by, "served_by=%s preemptions=0 ", fp);
    json_decref(j);
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&srv);
    char *text = dsla_test_read_file(log, NULL);
    assert_non_null(text);
    char *line = strstr(text, want);
    if (!line) fail_msg("no request line '%s' in:\n%s", want, text);
    assert_non_null(strstr(line, "output_tokens=5 ttft_ms="));
    assert_non_null(strstr(line, served_by));
    assert_non_null(strstr(line, "finish=length"));
    while (line > text && line[-1] != '\n')
        line--;
    char *end = strchr(line, '\n');
    json_t *obj = json_loadb(line, end ? (size_t)(end - line) : strlen(line), 0, NULL);
    assert_non_null(obj);
    assert_string_equal(json_string_value(json_object_get(obj, "level")), "info");
    json_decref(obj);
    free(text);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
}

/* A gateway whose only replica never answers: /health and generation are 503, each with
 * Retry-After so that clients know to come back. */
static void test_retry_after(void **state) {
    (void)state;
    const char *args[] = {"--endpoint",  "tcp://127.0.0.1:*", "--http",
                          "127.0.0.1:0", "--heartbeat-ms",    "100",
                          "--replica",   "tcp://127.0.0.1:9", NULL};
    dsla_test_server_t gw = dsla_test_server_start(args);
    assert_true(gw.http_port > 0);
    dsla_test_http_reply_t r = dsla_test_http(gw.http_port, "GET", "/health", NULL);
    assert_int_equal(r.status, 503);
    assert_non_null(strstr(r.head, "Retry-After: 1"));
    dsla_test_http_reply_free(&r);
    r = dsla_test_http(gw.http_port, "POST", "/v1/completions",
                       "{\"prompt\":\"x\",\"max_tokens\":2}");
    assert_true(r.status == 503 || r.status == 504);
    if (r.status == 503) assert_non_null(strstr(r.head, "Retry-After: 1"));
    dsla_test_http_reply_free(&r);
    /* without a local model there is no tokenizer */
    r = dsla_test_http(gw.http_port, "POST", "/tokenize", "{\"prompt\":\"x\"}");
    assert_int_equal(r.status, 501);
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&gw);
}

/* A replica in the test process that takes GENERATEs and never answers them; the main thread
 * destroys it once it has one, as if it had died. */
static atomic_int fake_got;

static void fake_generate(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    (void)msg;
    (void)user;
    atomic_store(&fake_got, 1);
}

static void test_dead_replica_rerouted(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    static int32_t want[DSLA_TEST_IDS_MAX];
    int n_want = 0;
    free(inprocess(model, GREEDY_TOKENS, want, &n_want));
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    static const dsla_actor_handler_t handlers[] = {{DSLA_MSG_GENERATE, fake_generate}};
    dsla_actor_def_t def = {.name = "fake",
                            .ctx = ctx,
                            .bind = {"tcp://127.0.0.1:*"},
                            .handlers = handlers,
                            .n_handlers = 1,
                            .heartbeat_ms = REROUTE_HEARTBEAT_MS};
    dsla_actor_t *fake = NULL;
    assert_int_equal(dsla_actor_create(&fake, &def), DSLA_OK);
    char hb[16];
    snprintf(hb, sizeof hb, "%d", REROUTE_HEARTBEAT_MS);
    dsla_test_server_t real = start_replica(model, hb);
    const char *eps[] = {dsla_actor_endpoint(fake, 0), real.endpoint}; /* the fake first */
    dsla_test_server_t gw = start_gateway(eps, 2, hb);
    /* wait until the gateway sees both alive, so that the tie goes to the first, the fake */
    dsla_client_t *c = NULL;
    assert_int_equal(dsla_client_connect(&c, gw.endpoint, NULL), DSLA_OK);
    dsla_proto_report_t *rep = calloc(1, sizeof *rep);
    dsla_client_result_t r;
    for (int i = 0;; i++) {
        assert_true(i < 100);
        assert_int_equal(dsla_client_status(c, rep, 5000, &r), DSLA_CODE_OK);
        assert_int_equal(rep->n_replicas, 2);
        if (rep->replicas[0].state == DSLA_PROTO_REPLICA_ALIVE &&
            rep->replicas[1].state == DSLA_PROTO_REPLICA_ALIVE)
            break;
        sleep_ms(50);
    }
    dsla_proto_generate_t req = greedy(GREEDY_TOKENS);
    assert_int_equal(dsla_client_start(c, &req, 30000), DSLA_OK);
    for (int i = 0; !atomic_load(&fake_got); i++) {
        assert_true(i < 1000);
        sleep_ms(5);
    }
    dsla_actor_destroy(&fake); /* dies holding the request, before any token */
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    dsla_client_piece_t p;
    while (dsla_client_next(c, &p, &r))
        dsla_test_collect(got, p.token, p.text, p.len);
    assert_int_equal(r.code, DSLA_CODE_OK);
    assert_int_equal(got->n, n_want);
    assert_memory_equal(got->ids, want, sizeof(int32_t) * (size_t)n_want);
    assert_int_equal(dsla_client_status(c, rep, 5000, &r), DSLA_CODE_OK);
    assert_int_equal(rep->rerouted, 1);
    assert_int_equal(rep->replicas[0].state, DSLA_PROTO_REPLICA_DEAD);
    assert_int_equal(rep->replicas[1].routed, 1);
    assert_int_equal(rep->in_flight, 0);
    free(got);
    free(rep);
    dsla_client_close(&c);
    dsla_test_server_stop(&gw);
    dsla_test_server_stop(&real);
    dsla_actor_ctx_destroy(&ctx);
    free(model);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completions),
        cmocka_unit_test(test_chat_models_health_metrics),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_client_stub_through_gateway),
        cmocka_unit_test(test_replica_killed_mid_stream),
        cmocka_unit_test(test_dead_replica_rerouted),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_request_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

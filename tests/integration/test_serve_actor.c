/* dsla-serve as a real process on loopback, driven through the client stub: greedy outputs equal
 * in-process generation, concurrent clients, a refused request, and a server killed mid-stream. */
#include "tests/testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proto/dsla_client.h"
#include "runtime/core/clock.h"
#include "tests/serverutil.h"

/* HEARTBEAT_MS makes the liveness tests fast; requests that must succeed use the slower
 * SERVING_HEARTBEAT_MS, because on a loaded two-core CI machine (ctest -j2 beside a distillation)
 * a server can stall for longer than three 100 ms heartbeats without being dead. */
enum { HEARTBEAT_MS = 100, SERVING_HEARTBEAT_MS = 1000 };

/* Starts dsla-serve (gateway and serving actor, HTTP off) on an ephemeral loopback port. */
static dsla_test_server_t server_start(const char *model) {
    const char *args[] = {"--model", model, "--endpoint", "tcp://127.0.0.1:*",
                          "--http",  "off", NULL};
    return dsla_test_server_start(args);
}

static int stop_at_once(void *user, int32_t token, const char *text, size_t len) {
    (void)user;
    (void)token;
    (void)text;
    (void)len;
    return 1;
}

/* In-process greedy ids from `dsla generate --print-ids`. */
static int inprocess_ids(const char *model, const char *prompt, int max_tokens, int32_t *ids) {
    int n = 0;
    free(dsla_test_inprocess(model, prompt, max_tokens, ids, &n));
    return n;
}

typedef struct {
    const char *endpoint;
    const char *prompt;
    int max_tokens;
    dsla_test_collected_t got;
    dsla_proto_code_t code;
} job_t;

static void run_job(job_t *j) {
    dsla_client_options_t opt = {.heartbeat_ms = SERVING_HEARTBEAT_MS};
    dsla_client_t *c = NULL;
    j->code = DSLA_CODE_INTERNAL;
    if (dsla_client_connect(&c, j->endpoint, &opt) != DSLA_OK) return;
    dsla_proto_generate_t req = {.prompt = j->prompt,
                                 .prompt_len = strlen(j->prompt),
                                 .max_tokens = j->max_tokens,
                                 .temperature = 0,
                                 .top_p = 1,
                                 .ignore_eos = true};
    dsla_client_result_t r;
    j->code = dsla_client_generate(c, &req, dsla_test_collect, &j->got, 20000, &r);
    dsla_client_close(&c);
}

static void *job_thread(void *arg) {
    run_job(arg);
    return NULL;
}

/* (a) sequential greedy requests equal in-process generation; (b) the same, all at once. */
static void test_greedy_and_concurrent(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *vectors = dsla_test_data_or_skip("testvectors/stories260K_llama2c.json");
    json_t *root = dsla_test_load_json(vectors);
    json_t *cases = json_object_get(root, "greedy");
    size_t n_cases = json_array_size(cases);
    assert_true(n_cases > 0 && n_cases <= 8);
    dsla_test_server_t srv = server_start(model);
    job_t *jobs = calloc(2 * n_cases, sizeof *jobs);
    static int32_t want[8][DSLA_TEST_IDS_MAX];
    int n_want[8];
    for (size_t i = 0; i < n_cases; i++) {
        json_t *c = json_array_get(cases, i);
        job_t *j = &jobs[i];
        j->endpoint = srv.endpoint;
        j->prompt = json_string_value(json_object_get(c, "prompt"));
        j->max_tokens = (int)json_array_size(json_object_get(c, "generated_ids"));
        n_want[i] = inprocess_ids(model, j->prompt, j->max_tokens, want[i]);
        run_job(j);
        assert_int_equal(j->code, DSLA_CODE_OK);
        assert_int_equal(j->got.n, n_want[i]);
        assert_memory_equal(j->got.ids, want[i], sizeof(int32_t) * (size_t)n_want[i]);
    }
    pthread_t threads[8];
    for (size_t i = 0; i < n_cases; i++) {
        jobs[n_cases + i] = jobs[i];
        memset(&jobs[n_cases + i].got, 0, sizeof jobs[i].got);
        assert_int_equal(pthread_create(&threads[i], NULL, job_thread, &jobs[n_cases + i]), 0);
    }
    for (size_t i = 0; i < n_cases; i++) {
        pthread_join(threads[i], NULL);
        job_t *j = &jobs[n_cases + i];
        assert_int_equal(j->code, DSLA_CODE_OK);
        assert_int_equal(j->got.n, n_want[i]);
        assert_memory_equal(j->got.ids, want[i], sizeof(int32_t) * (size_t)n_want[i]);
    }
    dsla_test_server_stop(&srv);
    free(jobs);
    json_decref(root);
    free(vectors);
    free(model);
}

/* (c) a request the engine refuses comes back as INVALID_ARGUMENT naming the field. */
static void test_invalid_request(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    dsla_test_server_t srv = server_start(model);
    dsla_client_options_t opt = {.heartbeat_ms = SERVING_HEARTBEAT_MS};
    dsla_client_t *c = NULL;
    assert_int_equal(dsla_client_connect(&c, srv.endpoint, &opt), DSLA_OK);
    dsla_proto_generate_t req = {.prompt = "Once", .prompt_len = 4, .max_tokens = 100000};
    dsla_client_result_t r;
    assert_int_equal(dsla_client_generate(c, &req, NULL, NULL, 10000, &r),
                     DSLA_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(r.message, "max_tokens"));
    const int32_t bad_ids[] = {1, 99999};
    dsla_proto_generate_t req2 = {.prompt_ids = bad_ids, .n_prompt_ids = 2, .max_tokens = 4};
    assert_int_equal(dsla_client_generate(c, &req2, NULL, NULL, 10000, &r),
                     DSLA_CODE_INVALID_ARGUMENT);
    assert_true(r.message[0] != '\0');
    /* the server still serves after refusing */
    dsla_test_collected_t got = {0};
    dsla_proto_generate_t ok = {.prompt = "Once", .prompt_len = 4, .max_tokens = 5};
    assert_int_equal(dsla_client_generate(c, &ok, dsla_test_collect, &got, 10000, &r),
                     DSLA_CODE_OK);
    assert_int_equal(r.completion_tokens, got.n);
    /* a callback that asks to stop ends the request CANCELLED; the server carries on */
    dsla_proto_generate_t long_req = {
        .prompt = "Once", .prompt_len = 4, .max_tokens = 400, .ignore_eos = true};
    assert_int_equal(dsla_client_generate(c, &long_req, stop_at_once, NULL, 10000, &r),
                     DSLA_CODE_CANCELLED);
    memset(&got, 0, sizeof got);
    assert_int_equal(dsla_client_generate(c, &ok, dsla_test_collect, &got, 10000, &r),
                     DSLA_CODE_OK);
    assert_int_equal(got.n, 5);
    dsla_client_close(&c);
    dsla_test_server_stop(&srv);
    free(model);
}

/* (d) kill -9 of the server mid-stream: UNAVAILABLE within the liveness window, never a hang. */
static void test_server_killed_mid_stream(void **state) {
    (void)state;
    /* A model slow enough on the CPU that the stream is still running when the kill lands. */
    char *model = dsla_test_data_or_skip("models/tinystories-11M-hf");
    dsla_test_server_t srv = server_start(model);
    /* Retries would each wait out the liveness window again; after a token there must be none. */
    dsla_client_options_t opt = {.heartbeat_ms = HEARTBEAT_MS, .retries = 5};
    dsla_client_t *c = NULL;
    assert_int_equal(dsla_client_connect(&c, srv.endpoint, &opt), DSLA_OK);
    dsla_proto_generate_t req = {
        .prompt = "Once upon a time", .prompt_len = 16, .max_tokens = 1900, .ignore_eos = true};
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    got->kill_on_first = srv.pid;
    dsla_client_result_t r;
    double t0 = dsla_clock_seconds();
    dsla_proto_code_t code = dsla_client_generate(c, &req, dsla_test_collect, got, 10000, &r);
    double took = dsla_clock_seconds() - t0;
    assert_int_equal(code, DSLA_CODE_UNAVAILABLE);
    assert_true(got->n >= 1 && got->n < 1900);
    assert_true(took < HEARTBEAT_MS * 1e-3 * DSLA_CLIENT_LIVENESS * 5);
    free(got);
    dsla_client_close(&c);
    free(model);
}

/* No server at all: UNAVAILABLE after each attempt's liveness window, never a hang. */
static void test_no_server(void **state) {
    (void)state;
    dsla_client_options_t opt = {.heartbeat_ms = HEARTBEAT_MS, .retries = 1};
    dsla_client_t *c = NULL;
    /* port 9 (discard) is privileged, so nothing of ours listens there */
    assert_int_equal(dsla_client_connect(&c, "tcp://127.0.0.1:9", &opt), DSLA_OK);
    dsla_proto_generate_t req = {.prompt = "Once", .prompt_len = 4, .max_tokens = 4};
    dsla_client_result_t r;
    double t0 = dsla_clock_seconds();
    assert_int_equal(dsla_client_generate(c, &req, NULL, NULL, 10000, &r), DSLA_CODE_UNAVAILABLE);
    double took = dsla_clock_seconds() - t0;
    assert_true(took >= 2 * HEARTBEAT_MS * 1e-3 * DSLA_CLIENT_LIVENESS * 0.9 && took < 5.0);
    assert_non_null(strstr(r.message, "127.0.0.1:9"));
    /* a deadline shorter than the liveness window wins */
    assert_int_equal(dsla_client_generate(c, &req, NULL, NULL, 50, &r),
                     DSLA_CODE_DEADLINE_EXCEEDED);
    dsla_client_close(&c);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_and_concurrent),
        cmocka_unit_test(test_invalid_request),
        cmocka_unit_test(test_server_killed_mid_stream),
        cmocka_unit_test(test_no_server),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

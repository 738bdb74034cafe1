/* dsla-serve --device cuda as a real process on loopback: the serving actor runs its engine on the
 * GPU backend (runtime/serve/backend_cuda.h, a deployment sized from free memory).
 * - fp32 weights and KV: greedy ids through the client stub equal in-process CPU generation for
 *   the stories260K prompts, one at a time and all at once;
 * - bf16: the OpenAI HTTP API answers a completion with the requested number of tokens.
 * Exits 77 without a CUDA device; skips without DSLA_TEST_DATA. */
#include "tests/testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "proto/dsla_client.h"
#include "tests/serverutil.h"

#ifdef DSLA_HAVE_CUDA

enum { HEARTBEAT_MS = 1000, MAX_CASES = 8 };

typedef struct {
    const char *endpoint, *prompt;
    int max_tokens;
    dsla_test_collected_t got;
    dsla_proto_code_t code;
} job_t;

static void *run_job(void *arg) {
    job_t *j = arg;
    dsla_client_options_t opt = {.heartbeat_ms = HEARTBEAT_MS};
    dsla_client_t *c = NULL;
    j->code = DSLA_CODE_INTERNAL;
    if (dsla_client_connect(&c, j->endpoint, &opt) != DSLA_OK) return NULL;
    dsla_proto_generate_t req = {.prompt = j->prompt,
                                 .prompt_len = strlen(j->prompt),
                                 .max_tokens = j->max_tokens,
                                 .temperature = 0,
                                 .top_p = 1,
                                 .ignore_eos = true};
    dsla_client_result_t r;
    j->code = dsla_client_generate(c, &req, dsla_test_collect, &j->got, 60000, &r);
    dsla_client_close(&c);
    return NULL;
}

static void test_f32_greedy_equals_cpu(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *vectors = dsla_test_data_or_skip("testvectors/stories260K_llama2c.json");
    json_t *root = dsla_test_load_json(vectors);
    json_t *cases = json_object_get(root, "greedy");
    const size_t n = json_array_size(cases);
    assert_true(n > 0 && n <= MAX_CASES);
    const char *args[] = {"--model", model, "--endpoint", "tcp://127.0.0.1:*",
                          "--http",  "off", "--device",   "cuda",
                          "--dtype", "f32", NULL};
    dsla_test_server_t srv = dsla_test_server_start(args);
    static job_t jobs[2 * MAX_CASES];
    static int32_t want[MAX_CASES][DSLA_TEST_IDS_MAX];
    int n_want[MAX_CASES];
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_array_get(cases, i);
        job_t *j = &jobs[i];
        *j = (job_t){.endpoint = srv.endpoint,
                     .prompt = json_string_value(json_object_get(c, "prompt")),
                     .max_tokens = (int)json_array_size(json_object_get(c, "generated_ids"))};
        free(dsla_test_inprocess(model, j->prompt, j->max_tokens, want[i], &n_want[i]));
        run_job(j);
        assert_int_equal(j->code, DSLA_CODE_OK);
        assert_int_equal(j->got.n, n_want[i]);
        assert_memory_equal(j->got.ids, want[i], sizeof(int32_t) * (size_t)n_want[i]);
    }
    pthread_t threads[MAX_CASES];
    for (size_t i = 0; i < n; i++) {
        jobs[n + i] = jobs[i];
        memset(&jobs[n + i].got, 0, sizeof jobs[i].got);
        assert_int_equal(pthread_create(&threads[i], NULL, run_job, &jobs[n + i]), 0);
    }
    for (size_t i = 0; i < n; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(jobs[n + i].code, DSLA_CODE_OK);
        assert_int_equal(jobs[n + i].got.n, n_want[i]);
        assert_memory_equal(jobs[n + i].got.ids, want[i], sizeof(int32_t) * (size_t)n_want[i]);
    }
    printf("dsla-serve --device cuda --dtype f32: %zu prompts, greedy ids == CPU, alone and at "
           "once\n",
           n);
    dsla_test_server_stop(&srv);
    json_decref(root);
    free(vectors);
    free(model);
}

static void test_bf16_http(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/tinystories-11M-hf");
    const char *args[] = {"--model",           model,    "--endpoint",
                          "tcp://127.0.0.1:*", "--http", "127.0.0.1:0",
                          "--device",          "cuda",   NULL};
    dsla_test_server_t srv = dsla_test_server_start(args);
    assert_true(srv.http_port > 0);
    dsla_test_http_reply_t r =
        dsla_test_http(srv.http_port, "POST", "/v1/completions",
                       "{\"prompt\":\"Once upon a time\",\"max_tokens\":24,\"temperature\":0}");
    assert_int_equal(r.status, 200);
    json_error_t err;
    json_t *body = json_loads(r.body, 0, &err);
    assert_non_null(body);
    json_t *usage = json_object_get(body, "usage");
    assert_int_equal(json_integer_value(json_object_get(usage, "completion_tokens")), 24);
    const char *text = json_string_value(
        json_object_get(json_array_get(json_object_get(body, "choices"), 0), "text"));
    assert_non_null(text);
    assert_true(strlen(text) > 0);
    printf("dsla-serve --device cuda (bf16), tinystories-11M over HTTP: \"%s\"\n", text);
    json_decref(body);
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&srv);
    free(model);
}

int main(void) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return DSLA_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_greedy_equals_cpu),
        cmocka_unit_test(test_bf16_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else

int main(void) {
    return 77; /* built without CUDA: nothing to test */
}

#endif

/* dsla-loadgen against a real dsla-serve on loopback (stories260K): a short Poisson workload over
 * HTTP and a bursty CSV trace over the client stub. Each run's JSON line parses, accounts for
 * every request of the workload (completed + refused + errors == sent == the workload's size, as
 * the library builds it here from the same options), its prompts have their exact token counts
 * (the server's usage says so), and the timeline CSV has one line per request; the burst keeps
 * dozens of requests in flight at once. */
#include "tests/testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/serve/workload.h"
#include "tests/serverutil.h"

/* The burst of the CSV trace: requests at t = 0, all in flight together. */
enum { BURST = 40, TAIL = 20 };

typedef struct {
    char *model, *dir;
    dsla_test_server_t server;
} fixture_t;

static fixture_t fx;

static void wait_healthy(int port) {
    for (int i = 0; i < 200; i++) {
        dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/health", NULL);
        const int status = r.status;
        dsla_test_http_reply_free(&r);
        if (status == 200) return;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    fail_msg("/health never answered 200");
}

static int setup(void **state) {
    (void)state;
    fx.dir = dsla_test_tempdir();
    const char *args[] = {"--model", fx.model,      "--endpoint", "tcp://127.0.0.1:*",
                          "--http",  "127.0.0.1:0", NULL};
    fx.server = dsla_test_server_start(args);
    wait_healthy(fx.server.http_port);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    dsla_test_server_stop(&fx.server);
    dsla_test_rmtree(fx.dir);
    free(fx.dir);
    return 0;
}

/* Runs dsla-loadgen with args and returns its JSON line, parsed; checks the counts against n. */
static json_t *run_loadgen(const char *args, const char *name, int n) {
    char cmd[4096], out[512], err[512], timeline[512];
    snprintf(out, sizeof out, "%s/%s.json", fx.dir, name);
    snprintf(err, sizeof err, "%s/%s.err", fx.dir, name);
    snprintf(timeline, sizeof timeline, "%s/%s.csv", fx.dir, name);
    snprintf(cmd, sizeof cmd, "%s/dsla-loadgen %s --tokenizer '%s' --timeline %s >%s 2>%s",
             dsla_test_bin_dir(), args, fx.model, timeline, out, err);
    const int rc = system(cmd);
    char *errors = dsla_test_read_file(err, NULL);
    fprintf(stderr, "%s", errors ? errors : "");
    free(errors);
    assert_int_equal(rc, 0);
    json_t *j = dsla_test_load_json(out);
    const json_int_t sent = json_integer_value(json_object_get(j, "sent"));
    const json_int_t completed = json_integer_value(json_object_get(j, "completed"));
    const json_int_t refused = json_integer_value(json_object_get(j, "refused"));
    const json_int_t errs = json_integer_value(json_object_get(j, "errors"));
    assert_int_equal(sent, n);
    assert_int_equal(completed + refused + errs, sent);
    assert_true(completed > 0);
    assert_true(json_is_true(json_object_get(j, "prompt_tokens_exact")));
    assert_true(json_is_object(json_object_get(j, "ttft_ms")));
    assert_true(json_real_value(json_object_get(j, "goodput_rps")) >= 0);
    /* the timeline: a header and one line per request; served prompts as long as asked */
    char *csv = dsla_test_read_file(timeline, NULL);
    assert_non_null(csv);
    int lines = 0, completed_lines = 0;
    for (char *line = strtok(csv, "\n"); line; line = strtok(NULL, "\n")) {
        if (lines++ == 0) continue;
        int prompt = 0, served = 0;
        char status[32] = "";
        /* index,arrival,sent,ttft,tpot,e2e,max_gap,prompt,served,asked,out,status,detail;
         * ttft..max_gap may be empty, so the prompt columns are found by counting commas. */
        const char *p = line;
        int commas = 0;
        for (; *p && commas < 7; p++)
            commas += *p == ',';
        assert_int_equal(sscanf(p, "%d,%d,%*d,%*d,%31[^,]", &prompt, &served, status), 3);
        if (strcmp(status, "completed") == 0) {
            completed_lines++;
            assert_int_equal(served, prompt);
        }
    }
    assert_int_equal(lines, n + 1);
    assert_int_equal(completed_lines, completed);
    free(csv);
    return j;
}

static void test_http_poisson(void **state) {
    (void)state;
    /* The workload the options describe, built here as the load generator builds it. */
    const dsla_workload_options_t wo = {.prompt_len = "16:128",
                                        .output_len = "48",
                                        .rate = 20,
                                        .duration_s = 3,
                                        .seed = 5,
                                        .max_total = 512};
    dsla_workload_t w;
    assert_int_equal(dsla_workload_build(&wo, &w, NULL, 0, NULL), DSLA_OK);
    const int n = w.n;
    dsla_workload_free(&w);
    assert_true(n > 20);
    char args[512];
    snprintf(args, sizeof args,
             "--url http://127.0.0.1:%d --rate 20 --duration 3 --prompt-len 16:128 "
             "--output-len 48 --seed 5 --max-context 512 --slo-ttft-ms 5000",
             fx.server.http_port);
    json_t *j = run_loadgen(args, "http", n);
    assert_string_equal(json_string_value(json_object_get(j, "transport")), "http");
    json_decref(j);
}

static void test_stub_burst_trace(void **state) {
    (void)state;
    char path[512], args[1024];
    snprintf(path, sizeof path, "%s/burst.csv", fx.dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "timestamp,prompt_tokens,output_tokens\n");
    for (int i = 0; i < BURST; i++)
        fprintf(f, "100.0,%d,32\n", 16 + 3 * i);
    for (int i = 0; i < TAIL; i++)
        fprintf(f, "%.3f,%d,16\n", 100.5 + 0.05 * i, 20 + i);
    fclose(f);
    snprintf(args, sizeof args, "--endpoint %s --trace %s", fx.server.endpoint, path);
    json_t *j = run_loadgen(args, "stub", BURST + TAIL);
    assert_string_equal(json_string_value(json_object_get(j, "transport")), "stub");
    /* Nothing here is refused (the engine queues 256): every request completed, each with the
     * tokens it asked for (ignore_eos). */
    assert_int_equal(json_integer_value(json_object_get(j, "completed")), BURST + TAIL);
    assert_int_equal(json_integer_value(json_object_get(j, "early_stops")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "output_tokens")),
                     BURST * 32 + TAIL * 16);
    json_decref(j);
    /* The burst was in flight at once: its requests' spans [arrival, arrival + e2e] overlap. */
    snprintf(path, sizeof path, "%s/stub.csv", fx.dir);
    char *csv = dsla_test_read_file(path, NULL);
    int at_once = 0, lines = 0;
    for (char *line = strtok(csv, "\n"); line; line = strtok(NULL, "\n")) {
        double arrival, e2e;
        if (lines++ > 0 && sscanf(line, "%*d,%lf,%*f,%*f,%*f,%lf", &arrival, &e2e) == 2)
            at_once += arrival == 0.0 && e2e > 0;
    }
    free(csv);
    assert_int_equal(at_once, BURST);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    fx.model = dsla_test_data_or_skip("models/stories260K-hf");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_poisson),
        cmocka_unit_test(test_stub_burst_trace),
    };
    const int rc = cmocka_run_group_tests(tests, setup, teardown);
    free(fx.model);
    return rc;
}

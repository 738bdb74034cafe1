/* /metrics of a real dsla-serve (stories260K-hf): after some completions, `promtool check metrics`
 * (Debian's prometheus package) passes on the exposition, and the engine's figures moved with the
 * requests served: each latency histogram's _count equals what was served (TTFT and end-to-end
 * one per request, inter-token one per token after the first), the token and request counters
 * match, the gauges are back at rest, and the plan lists every layer. Then the Grafana dashboard
 * (deploy/grafana/dsla-serve.json) parses and every metric its queries name is one /metrics
 * exposes. With a second replica over TCP (--serving-only, named to the gateway with --replica),
 * each replica has its own lines, their counts add up to the requests served, promtool still
 * passes, and a replica that dies loses its engine lines while dsla_replica_up says 0. Skipped
 * (77) only where promtool is absent. */
#define _DEFAULT_SOURCE /* mkstemp, popen */
#include "tests/testutil.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <jansson.h>

#include "tests/serverutil.h"

enum { REQUESTS = 4, MAX_TOKENS = 6, LAYERS = 5 /* stories260K */ };

static struct {
    dsla_test_server_t srv;
    char *dir;
    char *text; /* the last /metrics */
} fx;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* /metrics of the server on port (200, Prometheus text), malloc'd. */
static char *get_metrics(int port) {
    dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/metrics", NULL);
    if (r.status != 200) fail_msg("/metrics answered %d: %s", r.status, r.body ? r.body : "");
    if (!strstr(r.head, "text/plain; version=0.0.4"))
        fail_msg("/metrics has the wrong content type:\n%s", r.head);
    char *body = r.body;
    r.body = NULL;
    dsla_test_http_reply_free(&r);
    return body;
}

/* The value of the sample whose line starts with "name{...labels}" or "name " (labels given in
 * full, in the order the server writes them); -1 when absent. */
static double sample(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *p = text; *p;) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') return strtod(p + n + 1, NULL);
        const char *eol = strchr(p, '\n');
        if (!eol) break;
        p = eol + 1;
    }
    return -1;
}

#define REPLICA "{model_name=\"stories260K-hf\",replica=\"serving0\"}"

static int setup(void **state) {
    (void)state;
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        fprintf(stderr, "skipped: promtool not found (Debian package prometheus; "
                        "scripts/install-deps.sh installs it)\n");
        exit(77);
    }
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    const char *args[] = {"--model",           model,    "--endpoint",
                          "tcp://127.0.0.1:*", "--http", "127.0.0.1:0",
                          "--heartbeat-ms",    "100",    NULL};
    fx.srv = dsla_test_server_start(args);
    fx.dir = dsla_test_tempdir();
    free(model);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    dsla_test_server_stop(&fx.srv);
    dsla_test_rmtree(fx.dir);
    free(fx.dir);
    free(fx.text);
    return 0;
}

/* promtool check metrics on text, or the test fails with its verdict. */
static void promtool(const char *text) {
    char path[1024], cmd[1200];
    snprintf(path, sizeof path, "%s/metrics.txt", fx.dir);
    dsla_test_write_file(path, text, strlen(text));
    snprintf(cmd, sizeof cmd, "promtool check metrics < '%s' 2>&1", path);
    int rc = system(cmd);
    if (rc != 0) fail_msg("promtool check metrics failed (%d) on:\n%s", rc, text);
}

static void test_promtool_and_counts(void **state) {
    (void)state;
    char body[256];
    snprintf(body, sizeof body,
             "{\"prompt\": \"Once upon a time\", \"max_tokens\": %d, \"temperature\": 0, "
             "\"ignore_eos\": true}",
             MAX_TOKENS);
    for (int i = 0; i < REQUESTS; i++) {
        dsla_test_http_reply_t r =
            dsla_test_http(fx.srv.http_port, "POST", "/v1/completions", body);
        if (r.status != 200) fail_msg("completion %d: %d %s", i, r.status, r.body ? r.body : "");
        dsla_test_http_reply_free(&r);
    }
    /* the replica's figures reach /metrics with the gateway's next poll (every heartbeat) */
    const char *e2e = "dsla_e2e_request_latency_seconds_count" REPLICA;
    for (int tries = 0;; tries++) {
        free(fx.text);
        fx.text = get_metrics(fx.srv.http_port);
        if (sample(fx.text, e2e) == REQUESTS) break;
        if (tries == 300) fail_msg("%s never reached %d:\n%s", e2e, REQUESTS, fx.text);
        sleep_ms(100);
    }
    promtool(fx.text);

    static const struct {
        const char *series;
        double want;
    } want[] = {
        {"dsla_time_to_first_token_seconds_count" REPLICA, REQUESTS},
        {"dsla_inter_token_latency_seconds_count" REPLICA, REQUESTS * (MAX_TOKENS - 1)},
        {"dsla_e2e_request_latency_seconds_count" REPLICA, REQUESTS},
        {"dsla_request_queue_time_seconds_count" REPLICA, REQUESTS},
        {"dsla_requests_finished_total" REPLICA, REQUESTS},
        {"dsla_generation_tokens_total" REPLICA, REQUESTS * MAX_TOKENS},
        {"dsla_num_requests_running" REPLICA, 0},
        {"dsla_num_requests_waiting" REPLICA, 0},
        {"dsla_kv_cache_blocks_used" REPLICA, 0},
        {"dsla_num_layers" REPLICA, LAYERS},
        {"dsla_plan_dsla_layers" REPLICA, 0},
        {"dsla_http_requests_total{path=\"/v1/completions\",code=\"200\"}", REQUESTS},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (sample(fx.text, want[i].series) != want[i].want)
            fail_msg("%s is %g, wanted %g:\n%s", want[i].series, sample(fx.text, want[i].series),
                     want[i].want, fx.text);
    /* the +Inf bucket holds every observation; a prompt was prefilled for each request */
    assert_true(sample(fx.text, "dsla_time_to_first_token_seconds_bucket{model_name=\""
                                "stories260K-hf\",replica=\"serving0\",le=\"+Inf\"}") == REQUESTS);
    assert_true(sample(fx.text, "dsla_prompt_tokens_total" REPLICA) >= REQUESTS);
    assert_true(sample(fx.text, "dsla_kv_cache_blocks_capacity" REPLICA) > 0);
    assert_true(sample(fx.text, "dsla_time_to_first_token_seconds_sum" REPLICA) > 0);
    for (int layer = 0; layer < LAYERS; layer++) {
        char series[256];
        snprintf(series, sizeof series,
                 "dsla_plan_layer_info{model_name=\"stories260K-hf\",replica=\"serving0\","
                 "layer=\"%d\",mode=\"attn\"}",
                 layer);
        if (sample(fx.text, series) != 1) fail_msg("%s missing:\n%s", series, fx.text);
    }
}

/* True when text has "# TYPE name " for the metric (a histogram's series name its family). */
static bool exposed(const char *text, const char *name) {
    char line[256];
    snprintf(line, sizeof line, "# TYPE %s ", name);
    if (strstr(text, line)) return true;
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    size_t n = strlen(name);
    for (int i = 0; i < 3; i++) {
        size_t k = strlen(suffixes[i]);
        if (n > k && strcmp(name + n - k, suffixes[i]) == 0) {
            snprintf(line, sizeof line, "# TYPE %.*s histogram", (int)(n - k), name);
            if (strstr(text, line)) return true;
        }
    }
    return false;
}

/* Every dsla_* identifier in expr must be exposed; returns how many it named. */
static int check_expr(const char *expr, const char *text) {
    int named = 0;
    for (const char *p = expr; (p = strstr(p, "dsla_"));) {
        if (p > expr && (isalnum((unsigned char)p[-1]) || p[-1] == '_')) {
            p += 5;
            continue;
        }
        size_t n = 0;
        while (isalnum((unsigned char)p[n]) || p[n] == '_')
            n++;
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)n, p);
        if (!exposed(text, name))
            fail_msg("the dashboard's query '%s' names %s, which /metrics does not expose", expr,
                     name);
        named++;
        p += n;
    }
    return named;
}

/* Walks the dashboard for query strings ("expr", and "query" of the variables). */
static int walk(json_t *v, const char *text, int *queries) {
    int named = 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) {
            if (json_is_string(x) && (strcmp(key, "expr") == 0 || strcmp(key, "query") == 0)) {
                named += check_expr(json_string_value(x), text);
                (*queries)++;
            } else {
                named += walk(x, text, queries);
            }
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) named += walk(x, text, queries);
    }
    return named;
}

static void test_dashboard(void **state) {
    (void)state;
    assert_non_null(fx.text); /* the exposition of the test before, with every family in it */
    const char *src = getenv("DSLA_SOURCE");
    char path[1024];
    snprintf(path, sizeof path, "%s/deploy/grafana/dsla-serve.json", src ? src : ".");
    json_error_t err;
    json_t *dash = json_load_file(path, 0, &err);
    if (!dash) fail_msg("%s: line %d: %s", path, err.line, err.text);
    assert_true(json_is_array(json_object_get(dash, "panels")));
    int queries = 0, named = walk(dash, fx.text, &queries);
    assert_true(queries >= 12);
    assert_true(named >= queries);
    json_decref(dash);
}

/* The sum of a series over both replicas, -1 when either is absent. */
static double both(const char *text, const char *metric) {
    static const char *const names[] = {"serving0", "replica1"};
    double sum = 0;
    for (int i = 0; i < 2; i++) {
        char series[256];
        snprintf(series, sizeof series, "%s{model_name=\"stories260K-hf\",replica=\"%s\"}", metric,
                 names[i]);
        double v = sample(text, series);
        if (v < 0) return -1;
        sum += v;
    }
    return sum;
}

static void test_two_replicas(void **state) {
    (void)state;
    enum { SERVED = 6 };
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    const char *rargs[] = {"--model",           model, "--serving-only", "--endpoint",
                           "tcp://127.0.0.1:*", NULL};
    dsla_test_server_t replica = dsla_test_server_start(rargs);
    const char *gargs[] = {"--model",
                           model,
                           "--replica",
                           replica.endpoint,
                           "--endpoint",
                           "tcp://127.0.0.1:*",
                           "--http",
                           "127.0.0.1:0",
                           "--heartbeat-ms",
                           "100",
                           NULL};
    dsla_test_server_t gw = dsla_test_server_start(gargs);
    for (int i = 0; i < SERVED; i++) {
        dsla_test_http_reply_t r = dsla_test_http(gw.http_port, "POST", "/v1/completions",
                                                  "{\"prompt\": \"Once\", \"max_tokens\": 3}");
        if (r.status != 200) fail_msg("completion %d: %d %s", i, r.status, r.body ? r.body : "");
        dsla_test_http_reply_free(&r);
    }
    char *text = NULL;
    for (int tries = 0;; tries++) {
        free(text);
        text = get_metrics(gw.http_port);
        if (both(text, "dsla_e2e_request_latency_seconds_count") == SERVED) break;
        if (tries == 300)
            fail_msg("the replicas' e2e counts never added up to %d:\n%s", SERVED, text);
        sleep_ms(100);
    }
    promtool(text);
    /* least loaded, ties rotating: both served some */
    assert_true(sample(text, "dsla_requests_finished_total{model_name=\"stories260K-hf\","
                             "replica=\"replica1\"}") > 0);
    assert_true(sample(text, "dsla_requests_finished_total{model_name=\"stories260K-hf\","
                             "replica=\"serving0\"}") > 0);
    assert_true(both(text, "dsla_time_to_first_token_seconds_count") == SERVED);
    /* the replica dies: its engine lines go, its up line stays at 0 */
    dsla_test_server_kill(replica.pid);
    for (int tries = 0;; tries++) {
        free(text);
        text = get_metrics(gw.http_port);
        if (sample(text, "dsla_num_requests_running{model_name=\"stories260K-hf\","
                         "replica=\"replica1\"}") < 0)
            break;
        if (tries == 300) fail_msg("the dead replica's engine lines stayed:\n%s", text);
        sleep_ms(100);
    }
    char up[512];
    snprintf(up, sizeof up, "dsla_replica_up{replica=\"replica1\",endpoint=\"%s\"}",
             replica.endpoint);
    if (sample(text, up) != 0) fail_msg("%s is not 0:\n%s", up, text);
    assert_true(sample(text, "dsla_num_requests_running{model_name=\"stories260K-hf\","
                             "replica=\"serving0\"}") == 0);
    promtool(text);
    free(text);
    dsla_test_server_stop(&gw);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_promtool_and_counts),
        cmocka_unit_test(test_dashboard),
        cmocka_unit_test(test_two_replicas),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

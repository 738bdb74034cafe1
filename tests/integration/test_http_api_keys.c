/* dsla-serve's HTTP API keys (stories260K): with --api-key-file every route but /health answers
 * 401 with an OpenAI-style error to a request without the key or with another one, and serves
 * the one that carries it; DSLA_API_KEY adds a key; and HTTP refuses to listen beyond loopback
 * without a key unless --allow-insecure. */
#define _DEFAULT_SOURCE /* setenv */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/serverutil.h"

#define KEY "sk-test-0123456789abcdef"
#define ENV_KEY "sk-env-0123456789abcdef"

static void expect_status(int port, const char *method, const char *path, const char *headers,
                          const char *body, int status, const char *words) {
    dsla_test_http_reply_t r = dsla_test_http_with(port, method, path, headers, body);
    if (r.status != status || (words && (!r.body || !strstr(r.body, words))))
        fail_msg("%s %s with '%s': %d, wanted %d with '%s':\n%s", method, path, headers, r.status,
                 status, words ? words : "", r.body ? r.body : "");
    dsla_test_http_reply_free(&r);
}

static void test_keys_required(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *dir = dsla_test_tempdir(), keys[1024];
    snprintf(keys, sizeof keys, "%s/keys", dir);
    dsla_test_write_file(keys, KEY "\n", strlen(KEY) + 1);
    setenv("DSLA_API_KEY", ENV_KEY, 1);
    const char *args[] = {"--model",           model,    "--endpoint",
                          "tcp://127.0.0.1:*", "--http", "127.0.0.1:0",
                          "--api-key-file",    keys,     NULL};
    dsla_test_server_t srv = dsla_test_server_start(args);
    unsetenv("DSLA_API_KEY");
    int port = srv.http_port;
    /* /health needs no key: 200 once the replica has answered its first heartbeat */
    for (int i = 0; i < 100; i++) {
        dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/health", NULL);
        int status = r.status;
        dsla_test_http_reply_free(&r);
        assert_int_not_equal(status, 401);
        if (status == 200) break;
        struct timespec tick = {0, 100000000};
        nanosleep(&tick, NULL);
    }
    expect_status(port, "GET", "/health", "", NULL, 200, NULL);
    expect_status(port, "GET", "/v1/models", "", NULL, 401, "\"code\":\"invalid_api_key\"");
    expect_status(port, "GET", "/metrics", "Authorization: Bearer sk-wrong-0123456789abcdef\r\n",
                  NULL, 401, "Authorization: Bearer KEY");
    const char *body = "{\"prompt\":\"Once\",\"max_tokens\":2}";
    expect_status(port, "POST", "/v1/completions", "", body, 401, "invalid_api_key");
    expect_status(port, "GET", "/v1/models", "Authorization: Bearer " KEY "\r\n", NULL, 200, NULL);
    expect_status(port, "POST", "/v1/completions", "Authorization: Bearer " ENV_KEY "\r\n", body,
                  200, "\"choices\"");
    dsla_test_server_stop(&srv);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
}

/* dsla-serve's exit status and output for args (HTTP on every address, no key). */
static int run_refused(const char *model, const char *extra, char *out, size_t cap) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s/dsla-serve --model %s --endpoint tcp://127.0.0.1:0 --http 0.0.0.0:0 %s 2>&1 "
             "</dev/null & pid=$!; sleep 3; kill $pid 2>/dev/null; wait $pid; echo \"rc=$?\"",
             dsla_test_bin_dir(), model, extra);
    FILE *p = popen(cmd, "r");
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    pclose(p);
    const char *rc = strstr(out, "rc=");
    return rc ? atoi(rc + 3) : -1;
}

static void test_no_plaintext_beyond_loopback(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char out[8192];
    int rc = run_refused(model, "", out, sizeof out);
    if (rc != 2 || !strstr(out, "beyond loopback, without an API key"))
        fail_msg("rc %d:\n%s", rc, out);
    rc = run_refused(model, "--allow-insecure", out, sizeof out);
    if (!strstr(out, "http on http://0.0.0.0:")) fail_msg("rc %d:\n%s", rc, out);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_required),
        cmocka_unit_test(test_no_plaintext_beyond_loopback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

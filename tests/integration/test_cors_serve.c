/* CORS on a real dsla-serve (stories260K-hf), docs/http.md "CORS": off by default (a preflight is
 * a 405 and no response names an origin); with --cors-origin (and an API key), a listed origin's
 * preflight is answered 204 with the route's methods, the headers asked for and a max age,
 * without the key; its requests (a completion, a stream, an error, /metrics) carry
 * Access-Control-Allow-Origin with Vary: Origin; another origin's preflight is a 403 and its
 * answers carry no CORS header; "*" allows any origin; a malformed origin stops the start with
 * exit 2 naming the option. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>

#include "tests/serverutil.h"

#define KEY "sk-cors-0123456789abcdef"
#define AUTH "Authorization: Bearer " KEY "\r\n"
#define APP "https://app.example.com"
#define EVIL "https://evil.example.com"

static char *model;

/* The value of header name in head (case-insensitive name), copied; NULL when absent. */
static char *header(const char *head, const char *name) {
    size_t n = strlen(name);
    for (const char *p = head; *p;) {
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1;
            while (*v == ' ')
                v++;
            size_t len = strcspn(v, "\r\n");
            char *out = malloc(len + 1);
            memcpy(out, v, len);
            out[len] = '\0';
            return out;
        }
        const char *eol = strstr(p, "\r\n");
        if (!eol) break;
        p = eol + 2;
    }
    return NULL;
}

/* Fails unless the header is value (NULL: absent). */
static void expect_header(const dsla_test_http_reply_t *r, const char *name, const char *value) {
    char *got = header(r->head, name);
    if (!value && got) fail_msg("%s: unexpected '%s' in:\n%s", name, got, r->head);
    if (value && (!got || strcmp(got, value) != 0))
        fail_msg("%s is '%s', wanted '%s':\n%s", name, got ? got : "(absent)", value, r->head);
    free(got);
}

static dsla_test_http_reply_t request(int port, const char *method, const char *path,
                                      const char *origin, const char *more, const char *body) {
    char headers[1024];
    snprintf(headers, sizeof headers, "%s%s%s%s", origin ? "Origin: " : "", origin ? origin : "",
             origin ? "\r\n" : "", more ? more : "");
    return dsla_test_http_with(port, method, path, headers, body);
}

static void wait_healthy(int port) {
    for (int i = 0; i < 100; i++) {
        dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/health", NULL);
        int status = r.status;
        dsla_test_http_reply_free(&r);
        if (status == 200) return;
        struct timespec tick = {0, 100000000};
        nanosleep(&tick, NULL);
    }
    fail_msg("the server never became healthy");
}

/* dsla-serve on the model with HTTP on a free port and extra arguments (NULL-terminated; NULL:
 * none), once healthy. */
static dsla_test_server_t start(const char *const *extra) {
    const char *args[16] = {"--model",           model,    "--endpoint",
                            "tcp://127.0.0.1:*", "--http", "127.0.0.1:0"};
    int n = 6;
    for (; extra && *extra && n < 15; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    dsla_test_server_t srv = dsla_test_server_start(args);
    wait_healthy(srv.http_port);
    return srv;
}

/* The preflight of a POST /v1/completions from origin. */
static dsla_test_http_reply_t preflight_post(int port, const char *origin) {
    return request(port, "OPTIONS", "/v1/completions", origin,
                   "Access-Control-Request-Method: POST\r\n", NULL);
}

static const char *const completion = "{\"prompt\": \"Once\", \"max_tokens\": 2}";

static void test_off_by_default(void **state) {
    (void)state;
    dsla_test_server_t srv = start(NULL);
    dsla_test_http_reply_t r = preflight_post(srv.http_port, APP);
    assert_int_equal(r.status, 405);
    expect_header(&r, "Access-Control-Allow-Origin", NULL);
    dsla_test_http_reply_free(&r);
    r = request(srv.http_port, "POST", "/v1/completions", APP, NULL, completion);
    assert_int_equal(r.status, 200);
    expect_header(&r, "Access-Control-Allow-Origin", NULL);
    expect_header(&r, "Vary", NULL);
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&srv);
}

static void test_listed_origin(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir(), keys[1024];
    snprintf(keys, sizeof keys, "%s/keys", dir);
    dsla_test_write_file(keys, KEY "\n", strlen(KEY) + 1);
    const char *args[] = {"--api-key-file",        keys, "--cors-origin", APP, "--cors-origin",
                          "http://localhost:3000", NULL};
    dsla_test_server_t srv = start(args);
    const int port = srv.http_port;

    /* a preflight needs no key: the methods of the route, the headers asked for, a max age */
    dsla_test_http_reply_t r =
        request(port, "OPTIONS", "/v1/chat/completions", APP,
                "Access-Control-Request-Method: POST\r\n"
                "Access-Control-Request-Headers: authorization, content-type, x-stainless-os\r\n",
                NULL);
    assert_int_equal(r.status, 204);
    expect_header(&r, "Access-Control-Allow-Origin", APP);
    expect_header(&r, "Access-Control-Allow-Methods", "POST, OPTIONS");
    expect_header(&r, "Access-Control-Allow-Headers",
                  "authorization, content-type, x-stainless-os");
    expect_header(&r, "Access-Control-Max-Age", "600");
    expect_header(&r, "Vary", "Origin");
    dsla_test_http_reply_free(&r);
    r = request(port, "OPTIONS", "/v1/models", "http://localhost:3000",
                "Access-Control-Request-Method: GET\r\n", NULL);
    assert_int_equal(r.status, 204);
    expect_header(&r, "Access-Control-Allow-Origin", "http://localhost:3000");
    expect_header(&r, "Access-Control-Allow-Methods", "GET, OPTIONS");
    expect_header(&r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
    dsla_test_http_reply_free(&r);

    /* another origin: its preflight is refused, naming the option, and nothing names it */
    r = preflight_post(port, EVIL);
    assert_int_equal(r.status, 403);
    assert_non_null(strstr(r.body, "--cors-origin"));
    expect_header(&r, "Access-Control-Allow-Origin", NULL);
    dsla_test_http_reply_free(&r);
    r = request(port, "GET", "/v1/models", EVIL, AUTH, NULL);
    assert_int_equal(r.status, 200);
    expect_header(&r, "Access-Control-Allow-Origin", NULL);
    expect_header(&r, "Vary", "Origin");
    dsla_test_http_reply_free(&r);

    /* the listed origin's answers carry it: a completion, a stream, an error, /metrics */
    r = request(port, "POST", "/v1/completions", APP, AUTH, completion);
    assert_int_equal(r.status, 200);
    expect_header(&r, "Access-Control-Allow-Origin", APP);
    expect_header(&r, "Access-Control-Expose-Headers", "Retry-After");
    dsla_test_http_reply_free(&r);
    r = request(port, "POST", "/v1/completions", APP, AUTH,
                "{\"prompt\": \"Once\", \"max_tokens\": 2, \"stream\": true}");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "data: [DONE]"));
    expect_header(&r, "Access-Control-Allow-Origin", APP);
    dsla_test_http_reply_free(&r);
    r = request(port, "POST", "/v1/completions", APP, NULL, completion); /* no key */
    assert_int_equal(r.status, 401);
    expect_header(&r, "Access-Control-Allow-Origin", APP);
    dsla_test_http_reply_free(&r);
    r = request(port, "GET", "/metrics", APP, AUTH, NULL);
    assert_int_equal(r.status, 200);
    expect_header(&r, "Access-Control-Allow-Origin", APP);
    /* preflights and 403s are counted like any response */
    assert_non_null(strstr(r.body, "path=\"/v1/chat/completions\",code=\"204\"} 1"));
    assert_non_null(strstr(r.body, "path=\"/v1/completions\",code=\"403\"} 1"));
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&srv);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_any_origin(void **state) {
    (void)state;
    const char *args[] = {"--cors-origin", "*", NULL};
    dsla_test_server_t srv = start(args);
    dsla_test_http_reply_t r = preflight_post(srv.http_port, EVIL);
    assert_int_equal(r.status, 204);
    expect_header(&r, "Access-Control-Allow-Origin", "*");
    expect_header(&r, "Vary", NULL);
    dsla_test_http_reply_free(&r);
    r = request(srv.http_port, "POST", "/v1/completions", EVIL, NULL, completion);
    assert_int_equal(r.status, 200);
    expect_header(&r, "Access-Control-Allow-Origin", "*");
    dsla_test_http_reply_free(&r);
    /* no Origin: not a browser's cross-origin request, no header */
    r = request(srv.http_port, "GET", "/v1/models", NULL, NULL, NULL);
    expect_header(&r, "Access-Control-Allow-Origin", NULL);
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&srv);
}

static void test_bad_origin_refused(void **state) {
    (void)state;
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s/dsla-serve --model '%s' --endpoint 'tcp://127.0.0.1:*' --http 127.0.0.1:0 "
             "--cors-origin https://app.example.com/ 2>&1 | grep -q -- '--cors-origin' && exit 3",
             dsla_test_bin_dir(), model);
    int status = system(cmd);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 3); /* it stopped, and said why */
    snprintf(cmd, sizeof cmd,
             "%s/dsla-serve --model '%s' --endpoint 'tcp://127.0.0.1:*' --http 127.0.0.1:0 "
             "--cors-origin app.example.com >/dev/null 2>&1",
             dsla_test_bin_dir(), model);
    status = system(cmd);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 2);
}

int main(void) {
    model = dsla_test_data_or_skip("models/stories260K-hf");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_off_by_default),
        cmocka_unit_test(test_listed_origin),
        cmocka_unit_test(test_any_origin),
        cmocka_unit_test(test_bad_origin_refused),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free(model);
    return rc;
}

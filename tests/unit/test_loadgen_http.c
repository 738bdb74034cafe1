/* The load generator's HTTP client (bench/loadgen_http.h) against a canned server on loopback: a
 * chunked SSE stream delivered in fragments of every size from 1 byte (events, chunk headers and
 * CRLFs cut anywhere) gives the same events, usage and finish reason; a stream that breaks off
 * before [DONE] is an error; an error event mid-stream is an error with its message; a 429 is
 * read with its message; a refused connection is an error naming connect. */
#include "tests/testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/loadgen_http.h"

typedef struct {
    int listen_fd;
    const char *response;
    size_t fragment; /* bytes per write */
} canned_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Accepts one connection, reads the request head and body, writes the response in fragments. */
static void *serve_once(void *arg) {
    canned_t *c = arg;
    const int fd = accept(c->listen_fd, NULL, NULL);
    if (fd < 0) return NULL;
    char buf[8192];
    size_t got = 0;
    long body = -1;
    for (;;) {
        const ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
        buf[got] = '\0';
        char *sep = strstr(buf, "\r\n\r\n");
        const char *cl = strstr(buf, "Content-Length: ");
        if (sep && cl) body = atol(cl + 16);
        if (sep && body >= 0 && got >= (size_t)(sep + 4 - buf) + (size_t)body) break;
    }
    const size_t len = strlen(c->response);
    for (size_t off = 0; off < len; off += c->fragment) {
        const size_t n = len - off < c->fragment ? len - off : c->fragment;
        if (write(fd, c->response + off, n) != (ssize_t)n) break;
        if (c->fragment < 64) { /* separate reads on the client's side, mostly */
            const struct timespec pause = {0, 50000};
            nanosleep(&pause, NULL);
        }
    }
    close(fd);
    return NULL;
}

/* Serves response once on a fresh port and runs one request against it. */
static bool run_kept(const char *response, size_t fragment, bool keep_text,
                     loadgen_http_result_t *r) {
    canned_t c = {.response = response, .fragment = fragment};
    c.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(c.listen_fd, (struct sockaddr *)&addr, sizeof addr), 0);
    socklen_t alen = sizeof addr;
    assert_int_equal(getsockname(c.listen_fd, (struct sockaddr *)&addr, &alen), 0);
    assert_int_equal(listen(c.listen_fd, 1), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, serve_once, &c), 0);
    char url[64], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(addr.sin_port));
    loadgen_http_target_t target;
    assert_true(loadgen_http_target_parse(url, "/v1/completions", &target, err, sizeof err));
    target.keep_text = keep_text;
    const char body[] = "{\"prompt\": \"x\", \"stream\": true}";
    const bool ok = loadgen_http_stream(&target, body, sizeof body - 1, 10.0, now_s, r);
    pthread_join(t, NULL);
    close(c.listen_fd);
    return ok;
}

static bool run(const char *response, size_t fragment, loadgen_http_result_t *r) {
    return run_kept(response, fragment, false, r);
}

/* An SSE body as docs/http.md streams it, chunked: one chunk per event, plus a chunk extension
 * and upper-case hex to keep the de-chunker honest. */
static char *sse_response(bool complete) {
    static const char *const events[] = {
        "data: {\"choices\":[{\"index\":0,\"text\":\" Once\",\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"text\":\" upon\",\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"text\":\" a time, there was a little girl named "
        "Lily.\\u0000 She liked to play outside in the sun with her big red ball.\","
        "\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"cmpl-9\",\"system_fingerprint\":\"serving0:plan-4\","
        "\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}],"
        "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":30,\"total_tokens\":35}}\n\n",
        "data: [DONE]\n\n",
    };
    const int n = complete ? 6 : 3;
    char *out = malloc(8192), *p = out;
    p += sprintf(p, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < n; i++)
        p += sprintf(p, "%zX%s\r\n%s\r\n", strlen(events[i]), i == 1 ? ";ext=1" : "", events[i]);
    if (complete) p += sprintf(p, "0\r\n\r\n");
    return out;
}

static void test_stream_in_fragments(void **state) {
    (void)state;
    char *resp = sse_response(true);
    const size_t sizes[] = {1, 2, 3, 7, 13, 64, 4096};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        loadgen_http_result_t r;
        if (!run(resp, sizes[k], &r)) fail_msg("fragments of %zu: %s", sizes[k], r.error);
        assert_int_equal(r.status, 200);
        assert_true(r.done);
        assert_int_equal(r.events, 3); /* the empty pieces carry no text; a NUL (\\u0000) is text */
        assert_int_equal(r.prompt_tokens, 5);
        assert_int_equal(r.completion_tokens, 30);
        assert_string_equal(r.finish, "length");
        assert_true(r.first_s >= r.sent_s && r.last_s >= r.first_s && r.end_s >= r.last_s);
        assert_true(r.max_gap_s >= 0 && r.max_gap_s <= r.last_s - r.first_s);
        assert_null(r.text); /* not asked for */
        assert_string_equal(r.id, "cmpl-9");
        assert_string_equal(r.fingerprint, "serving0:plan-4");
    }
    /* keep_text gathers the pieces, the NUL byte included */
    loadgen_http_result_t r;
    if (!run_kept(resp, 5, true, &r)) fail_msg("keep_text: %s", r.error);
    const char want[] =
        " Once upon a time, there was a little girl named Lily.\0 She liked to play "
        "outside in the sun with her big red ball.";
    assert_int_equal(r.text_len, sizeof want - 1);
    assert_memory_equal(r.text, want, sizeof want - 1);
    assert_int_equal(r.text[r.text_len], '\0');
    free(r.text);
    free(resp);
}

static void test_broken_and_refused(void **state) {
    (void)state;
    loadgen_http_result_t r;
    char *resp = sse_response(false); /* the server went away after two pieces */
    assert_false(run(resp, 5, &r));
    assert_int_equal(r.status, 200);
    assert_int_equal(r.events, 2);
    assert_non_null(strstr(r.error, "without [DONE]"));
    free(resp);

    assert_false(run("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                     "data: {\"choices\":[{\"index\":0,\"text\":\"a\",\"finish_reason\":null}]}\n\n"
                     "data: {\"error\":{\"message\":\"replica serving0 stopped answering\"}}\n\n",
                     9, &r));
    assert_int_equal(r.events, 1);
    assert_non_null(strstr(r.error, "stopped answering"));

    const char refusal[] =
        "{\"error\":{\"message\":\"256 requests in flight\",\"type\":\"rate_limit_exceeded\"}}";
    char refused[512];
    snprintf(refused, sizeof refused,
             "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(refusal), refusal);
    assert_false(run(refused, 16, &r));
    assert_int_equal(r.status, 429);
    assert_non_null(strstr(r.error, "HTTP 429: 256 requests in flight"));

    /* nothing listens on a port just closed */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    socklen_t alen = sizeof addr;
    getsockname(fd, (struct sockaddr *)&addr, &alen);
    close(fd);
    char url[64], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", ntohs(addr.sin_port));
    loadgen_http_target_t t;
    assert_true(loadgen_http_target_parse(url, "/v1/completions", &t, err, sizeof err));
    assert_false(loadgen_http_stream(&t, "{}", 2, 5.0, now_s, &r));
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.error, "connect"));
    assert_false(loadgen_http_target_parse("https://x:1", "/", &t, err, sizeof err));
    assert_non_null(strstr(err, "http://HOST:PORT"));
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_in_fragments),
        cmocka_unit_test(test_broken_and_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

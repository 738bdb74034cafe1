/* Abandoned requests (issue 10): an HTTP client that goes away before its answer is complete
 * cancels its request on the gateway at once, and its place in flight is free again. Before, a
 * non-streamed request (and a streamed one before its first token) held its place until the
 * replica finished it (~40 s under load). In-process, against a fake gateway that answers pings
 * and never finishes a "long" request: without the cancellation the places are never freed. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "actors/http.h"
#include "proto/proto.h"
#include "runtime/core/clock.h"
#include "tests/serverutil.h"

enum { N = 4, BOUND_MS = 10000 };

typedef struct {
    void *zctx, *sock;
    char endpoint[256];
    atomic_bool stop;
    atomic_int hanging, cancels, quick;
} fake_t;

static void reply(fake_t *f, const void *rid, size_t rid_len, uint32_t type, uint64_t id,
                  const dsla_proto_buf_t *body) {
    dsla_proto_envelope_t env = {.type = type, .id = id, .body = body->data, .body_len = body->len};
    snprintf(env.src, sizeof env.src, "gateway");
    dsla_proto_buf_t frame;
    assert_int_equal(dsla_proto_envelope_encode(&env, &frame), DSLA_OK);
    zmq_send(f->sock, rid, rid_len, ZMQ_SNDMORE);
    zmq_send(f->sock, frame.data, frame.len, 0);
    dsla_proto_buf_free(&frame);
}

/* Answers PING, refuses STATUS, finishes "quick..." prompts, holds every other one forever. */
static void *fake_main(void *arg) {
    fake_t *f = arg;
    while (!atomic_load(&f->stop)) {
        zmq_pollitem_t item = {.socket = f->sock, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, 50) <= 0) continue;
        char rid[256];
        int rid_len = zmq_recv(f->sock, rid, sizeof rid, 0);
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (rid_len <= 0 || zmq_msg_recv(&m, f->sock, 0) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        dsla_proto_envelope_t env;
        dsla_proto_buf_t body = {0};
        if (dsla_proto_envelope_decode(zmq_msg_data(&m), zmq_msg_size(&m), &env) == DSLA_OK) {
            if (env.type == DSLA_MSG_PING) {
                dsla_proto_buf_t echo = {(void *)env.body, env.body_len};
                reply(f, rid, (size_t)rid_len, DSLA_MSG_PONG, env.id, &echo);
            } else if (env.type == DSLA_MSG_STATUS) {
                dsla_proto_error_t e = {.code = DSLA_CODE_UNAVAILABLE};
                snprintf(e.message, sizeof e.message, "a fake gateway");
                assert_int_equal(dsla_proto_error_encode(&e, &body), DSLA_OK);
                reply(f, rid, (size_t)rid_len, DSLA_MSG_ERROR, env.id, &body);
            } else if (env.type == DSLA_MSG_CANCEL) {
                atomic_fetch_add(&f->cancels, 1);
            } else if (env.type == DSLA_MSG_GENERATE) {
                dsla_proto_generate_t g;
                assert_int_equal(dsla_proto_generate_decode(env.body, env.body_len, &g), DSLA_OK);
                if (strncmp(g.prompt, "quick", 5) == 0) {
                    /* counted before the answer goes out: the client may check it at once */
                    atomic_fetch_add(&f->quick, 1);
                    dsla_proto_token_t t = {.token = 1, .text_len = 2};
                    memcpy(t.text, "ok", 2);
                    assert_int_equal(dsla_proto_token_encode(&t, &body), DSLA_OK);
                    reply(f, rid, (size_t)rid_len, DSLA_MSG_TOKEN, env.id, &body);
                    dsla_proto_buf_free(&body);
                    dsla_proto_done_t d = {.finish = DSLA_PROTO_FINISH_STOP,
                                           .prompt_tokens = 1,
                                           .completion_tokens = 1};
                    assert_int_equal(dsla_proto_done_encode(&d, &body), DSLA_OK);
                    reply(f, rid, (size_t)rid_len, DSLA_MSG_DONE, env.id, &body);
                } else {
                    atomic_fetch_add(&f->hanging, 1);
                }
                dsla_proto_generate_free(&g);
            }
        }
        dsla_proto_buf_free(&body);
        zmq_msg_close(&m);
    }
    return NULL;
}

static void post(int fd, const char *body) {
    char req[1024];
    int n =
        snprintf(req, sizeof req,
                 "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: %zu\r\n\r\n%s",
                 strlen(body), body);
    assert_int_equal(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
}

/* dsla_http_in_flight from /metrics; -1 when absent. */
static long in_flight(int port) {
    dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/metrics", NULL);
    assert_int_equal(r.status, 200);
    const char *at = strstr(r.body, "\ndsla_http_in_flight ");
    long v = at ? strtol(at + strlen("\ndsla_http_in_flight "), NULL, 10) : -1;
    dsla_test_http_reply_free(&r);
    return v;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_abandoned_requests_cancelled(void **state) {
    (void)state;
    fake_t f = {0};
    f.zctx = zmq_ctx_new();
    f.sock = zmq_socket(f.zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(f.sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(f.sock, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof f.endpoint;
    assert_int_equal(zmq_getsockopt(f.sock, ZMQ_LAST_ENDPOINT, f.endpoint, &len), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, fake_main, &f), 0);

    dsla_http_config_t hc = {
        .address = "127.0.0.1:0", .gateway = f.endpoint, .max_in_flight = N, .heartbeat_ms = 200};
    dsla_http_t *h = NULL;
    assert_int_equal(dsla_http_create(&h, &hc), DSLA_OK);
    int port = dsla_http_port(h);

    /* N long requests fill the places: N-1 whole answers and one stream before its first token */
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = dsla_test_connect(port);
        assert_true(fds[i] >= 0);
        post(fds[i], i == 0 ? "{\"prompt\": \"long\", \"max_tokens\": 100, \"stream\": true}"
                            : "{\"prompt\": \"long\", \"max_tokens\": 100}");
    }
    uint64_t t0 = dsla_clock_ms();
    while (atomic_load(&f.hanging) < N && dsla_clock_ms() - t0 < BOUND_MS)
        sleep_ms(20);
    assert_int_equal(atomic_load(&f.hanging), N);
    assert_int_equal(in_flight(port), N);
    dsla_test_http_reply_t r = dsla_test_http(port, "POST", "/v1/completions",
                                              "{\"prompt\": \"quick\", \"max_tokens\": 1}");
    assert_int_equal(r.status, 429); /* full */
    dsla_test_http_reply_free(&r);

    /* the clients go away: every request is cancelled upstream and its place freed */
    for (int i = 0; i < N; i++)
        close(fds[i]);
    t0 = dsla_clock_ms();
    long left = N;
    while ((atomic_load(&f.cancels) < N || (left = in_flight(port)) != 0) &&
           dsla_clock_ms() - t0 < BOUND_MS)
        sleep_ms(50);
    if (atomic_load(&f.cancels) < N || left != 0)
        fail_msg("after %d ms: %d of %d requests cancelled upstream, %ld still in flight", BOUND_MS,
                 atomic_load(&f.cancels), N, left);
    r = dsla_test_http(port, "POST", "/v1/completions",
                       "{\"prompt\": \"quick\", \"max_tokens\": 1}");
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"ok\""));
    dsla_test_http_reply_free(&r);
    assert_int_equal(atomic_load(&f.quick), 1);

    dsla_http_destroy(&h);
    atomic_store(&f.stop, true);
    pthread_join(th, NULL);
    zmq_close(f.sock);
    zmq_ctx_term(f.zctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_abandoned_requests_cancelled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

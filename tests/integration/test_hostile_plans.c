/* A --serving-only replica (dsla-serve as a process, stories260K) against anonymous plans:
 * without --controller it takes no SET_PLAN at all; with one it takes plans only over its own
 * connection to that controller, never from a stranger who claims the controller's name at its
 * mailbox. A plan from the real controller naming /etc/passwd or a FIFO is answered with a
 * PLAN_NACK at once (a FIFO blocked the replica in open() before) whose reason echoes nothing of
 * the file (the "header length" of /etc/shadow leaked its first 8 bytes before). */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "proto/proto.h"
#include "runtime/core/clock.h"
#include "tests/serverutil.h"

enum { WAIT_MS = 20000 };

static void ok(dsla_status_t st) {
    if (st != DSLA_OK) fail_msg("%s: %s", dsla_status_name(st), dsla_last_error());
}

/* A SET_PLAN naming path for layer 0. */
static void plan_body(const char *path, dsla_proto_buf_t *out) {
    dsla_proto_plan_layer_t layer = {.layer = 0, .checksum = 1, .path = path};
    dsla_proto_set_plan_t p = {.seq = 7, .n_layers = 1, .layers = &layer};
    ok(dsla_proto_set_plan_encode(&p, out));
}

static void send_envelope(void *sock, const char *route, const char *src, const char *dst,
                          uint32_t type, const dsla_proto_buf_t *body) {
    dsla_proto_envelope_t env = {.type = type, .id = 3, .body = body->data, .body_len = body->len};
    snprintf(env.src, sizeof env.src, "%s", src);
    snprintf(env.dst, sizeof env.dst, "%s", dst);
    dsla_proto_buf_t frame;
    ok(dsla_proto_envelope_encode(&env, &frame));
    if (route) assert_true(zmq_send(sock, route, strlen(route), ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(sock, frame.data, frame.len, 0) >= 0);
    dsla_proto_buf_free(&frame);
}

/* The next envelope of one of types on sock (a ROUTER's identity frame skipped), copied into
 * buf; its type, or 0 after WAIT_MS. */
static uint32_t next_of(void *sock, bool router, uint32_t t1, uint32_t t2, char *buf, size_t cap,
                        dsla_proto_envelope_t *env) {
    uint64_t end = dsla_clock_ms() + WAIT_MS;
    while (dsla_clock_ms() < end) {
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 100) <= 0) continue;
        if (router) {
            char id[256];
            assert_true(zmq_recv(sock, id, sizeof id, 0) >= 0);
        }
        int n = zmq_recv(sock, buf, cap, 0);
        if (n <= 0 || (size_t)n > cap) continue;
        if (dsla_proto_envelope_decode(buf, (size_t)n, env) != DSLA_OK) continue;
        if (env->type == t1 || env->type == t2) return env->type;
    }
    return 0;
}

/* A stranger's SET_PLAN, sent as "controller" to the replica's mailbox: PERMISSION_DENIED. */
static void expect_stranger_refused(const char *endpoint, void *zctx) {
    void *sock = zmq_socket(zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock, ZMQ_ROUTING_ID, "controller", 10);
    assert_int_equal(zmq_connect(sock, endpoint), 0);
    dsla_proto_buf_t body;
    plan_body("/etc/passwd", &body);
    send_envelope(sock, NULL, "controller", "serving0", DSLA_MSG_SET_PLAN, &body);
    dsla_proto_buf_free(&body);
    char *buf = malloc(1 << 16);
    dsla_proto_envelope_t env;
    assert_int_equal(next_of(sock, false, DSLA_MSG_ERROR, DSLA_MSG_PLAN_NACK, buf, 1 << 16, &env),
                     DSLA_MSG_ERROR);
    dsla_proto_error_t err;
    ok(dsla_proto_error_decode(env.body, env.body_len, &err));
    if (err.code != DSLA_CODE_PERMISSION_DENIED)
        fail_msg("%s: %s", dsla_proto_code_name(err.code), err.message);
    free(buf);
    zmq_close(sock);
}

static void test_no_controller_no_plans(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    const char *args[] = {"--model",           model, "--serving-only", "--endpoint",
                          "tcp://127.0.0.1:*", NULL};
    dsla_test_server_t srv = dsla_test_server_start(args);
    void *zctx = zmq_ctx_new();
    expect_stranger_refused(srv.endpoint, zctx);
    zmq_ctx_term(zctx);
    dsla_test_server_stop(&srv);
    free(model);
}

/* The NACK for a plan from the real controller naming path: quick, and without the file's bytes. */
static void expect_nack(void *ctl, const char *path, const char *forbidden) {
    dsla_proto_buf_t body;
    plan_body(path, &body);
    uint64_t t0 = dsla_clock_ms();
    send_envelope(ctl, "serving0", "controller", "serving0", DSLA_MSG_SET_PLAN, &body);
    dsla_proto_buf_free(&body);
    char *buf = malloc(1 << 16);
    dsla_proto_envelope_t env;
    assert_int_equal(next_of(ctl, true, DSLA_MSG_PLAN_NACK, DSLA_MSG_PLAN_ACK, buf, 1 << 16, &env),
                     DSLA_MSG_PLAN_NACK);
    dsla_proto_plan_reply_t *reply = calloc(1, sizeof *reply);
    ok(dsla_proto_plan_reply_decode(env.body, env.body_len, reply));
    if (dsla_clock_ms() - t0 > 5000 || (forbidden && strstr(reply->reason, forbidden)))
        fail_msg("%s after %llu ms: %s", path, (unsigned long long)(dsla_clock_ms() - t0),
                 reply->reason);
    free(reply);
    free(buf);
}

static void test_plans_only_from_the_controller(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    void *zctx = zmq_ctx_new(), *ctl = zmq_socket(zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(ctl, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(ctl, "tcp://127.0.0.1:*"), 0);
    char ctl_endpoint[256];
    size_t len = sizeof ctl_endpoint;
    assert_int_equal(zmq_getsockopt(ctl, ZMQ_LAST_ENDPOINT, ctl_endpoint, &len), 0);
    const char *args[] = {"--model",           model,          "--serving-only", "--endpoint",
                          "tcp://127.0.0.1:*", "--controller", ctl_endpoint,     NULL};
    dsla_test_server_t srv = dsla_test_server_start(args);
    char *buf = malloc(1 << 16);
    dsla_proto_envelope_t env;
    /* the replica's first report: its connection to the controller is up */
    assert_int_equal(
        next_of(ctl, true, DSLA_MSG_LOAD_REPORT, DSLA_MSG_LOAD_REPORT, buf, 1 << 16, &env),
        DSLA_MSG_LOAD_REPORT);
    free(buf);
    expect_stranger_refused(srv.endpoint, zctx);

    char *dir = dsla_test_tempdir(), fifo[1024];
    snprintf(fifo, sizeof fifo, "%s/layer-0.safetensors", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    expect_nack(ctl, fifo, NULL);
    /* what the "header length" of /etc/passwd was: its first 8 bytes as a number */
    size_t n = 0;
    unsigned char *head = (unsigned char *)dsla_test_read_file("/etc/passwd", &n);
    unsigned long long first = 0;
    for (int i = 0; i < 8 && (size_t)i < n; i++)
        first |= (unsigned long long)head[i] << (8 * i);
    char leak[32];
    snprintf(leak, sizeof leak, "%llu", first);
    free(head);
    expect_nack(ctl, "/etc/passwd", leak);
    zmq_close(ctl);
    zmq_ctx_term(zctx);
    dsla_test_server_stop(&srv);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_controller_no_plans),
        cmocka_unit_test(test_plans_only_from_the_controller),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

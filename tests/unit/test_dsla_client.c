/* The client stub (proto/dsla_client.c) against a server that dies and comes back on its port, in
 * process: a fake server takes the GENERATE, closes its socket (the connection drops, as when the
 * gateway is SIGKILLed) and binds again at once, answering whatever it hears, PINGs included. The
 * client's socket reconnects to the successor, whose answers keep the heartbeats happy, and which
 * never heard of the request: without watch_drops the request waits for its deadline (found by
 * the fault soak, where the stub's deadline is its hung limit); with it, it ends UNAVAILABLE at
 * the drop. */
#include "tests/testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "proto/dsla_client.h"
#include "runtime/core/clock.h"

enum { HEARTBEAT_MS = 100, DEADLINE_MS = 3000 };

typedef struct {
    void *ctx;
    char endpoint[64];
    void *first; /* bound by the test before the client connects */
    atomic_bool stop;
} server_t;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Receives [routing id][frame] from a ROUTER; the frame's size, or -1 after timeout_ms. */
static int recv_frame(void *sock, char *id, size_t *id_len, char *buf, size_t cap, int timeout_ms) {
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    int n = zmq_recv(sock, id, 256, 0);
    if (n < 0) return -1;
    *id_len = (size_t)n;
    return zmq_recv(sock, buf, cap, 0);
}

static void *serve(void *arg) {
    server_t *s = arg;
    static char id[256], buf[1 << 16];
    size_t id_len = 0;
    /* the first server: waits for the GENERATE (PINGs come first or not), then dies unanswering;
     * no cmocka assertion on this thread (the test's result shows what went wrong) */
    for (;;) {
        int n = recv_frame(s->first, id, &id_len, buf, sizeof buf, 5000);
        if (n < 0) break;
        dsla_proto_envelope_t env;
        if (dsla_proto_envelope_decode(buf, (size_t)n, &env) == DSLA_OK &&
            env.type == DSLA_MSG_GENERATE)
            break;
    }
    zmq_close(s->first);
    /* its successor on the same port (the old listener may take a moment to close) */
    void *next = zmq_socket(s->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(next, ZMQ_LINGER, &linger, sizeof linger);
    for (int tries = 0; zmq_bind(next, s->endpoint) != 0 && tries < 200; tries++)
        sleep_ms(10);
    while (!atomic_load(&s->stop)) {
        int n = recv_frame(next, id, &id_len, buf, sizeof buf, 50);
        if (n < 0) continue;
        zmq_send(next, id, id_len, ZMQ_SNDMORE);
        zmq_send(next, buf, (size_t)n, 0); /* heard: an echo is an answer to a PING */
    }
    zmq_close(next);
    return NULL;
}

/* Runs one GENERATE against a server that dies at it; returns its code and how long it took. */
static dsla_proto_code_t generate_across_restart(bool watch_drops, uint64_t *took_ms) {
    server_t s = {.ctx = zmq_ctx_new()};
    s.first = zmq_socket(s.ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(s.first, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_bind(s.first, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof s.endpoint;
    assert_int_equal(zmq_getsockopt(s.first, ZMQ_LAST_ENDPOINT, s.endpoint, &len), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, serve, &s), 0);

    dsla_client_options_t opt = {.heartbeat_ms = HEARTBEAT_MS, .watch_drops = watch_drops};
    dsla_client_t *c = NULL;
    assert_int_equal(dsla_client_connect(&c, s.endpoint, &opt), DSLA_OK);
    dsla_proto_generate_t g = {.prompt = "Once upon a time", .prompt_len = 16, .max_tokens = 4};
    dsla_client_result_t res;
    const uint64_t t0 = dsla_clock_ms();
    dsla_proto_code_t code = dsla_client_generate(c, &g, NULL, NULL, DEADLINE_MS, &res);
    *took_ms = dsla_clock_ms() - t0;
    dsla_client_close(&c);
    atomic_store(&s.stop, true);
    pthread_join(th, NULL);
    zmq_ctx_term(s.ctx);
    return code;
}

static void test_restarted_server_without_watch_waits_for_deadline(void **state) {
    (void)state;
    uint64_t took = 0;
    assert_int_equal(generate_across_restart(false, &took), DSLA_CODE_DEADLINE_EXCEEDED);
    assert_true(took >= DEADLINE_MS);
}

static void test_restarted_server_with_watch_drops_is_unavailable(void **state) {
    (void)state;
    uint64_t took = 0;
    assert_int_equal(generate_across_restart(true, &took), DSLA_CODE_UNAVAILABLE);
    if (took >= DEADLINE_MS / 2)
        fail_msg("UNAVAILABLE only after %llu ms", (unsigned long long)took);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restarted_server_without_watch_waits_for_deadline),
        cmocka_unit_test(test_restarted_server_with_watch_drops_is_unavailable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

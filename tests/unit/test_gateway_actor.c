/* The gateway actor (actors/gateway.c) against hostile peers, in-process and without a model: a
 * fake replica holds each GENERATE and answers when the test says. A stranger that connects to
 * the gateway's mailbox under the replica's name and sends TOKEN and DONE for the request in
 * flight, with the right id, reaches no client (it put text into other users' answers before);
 * the real replica's answer still does. A GENERATE body that would not fit a frame once forwarded
 * is refused without taking a slot (26 of them leaked 26 slots before). */
#include "tests/testutil.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <zmq.h>

#include "actors/gateway.h"
#include "proto/dsla_client.h"
#include "runtime/core/clock.h"

enum { WAIT_MS = 10000, BEAT_MS = 200 };

static void ok(dsla_status_t st) {
    if (st != DSLA_OK) fail_msg("%s: %s", dsla_status_name(st), dsla_last_error());
}

/* The fake replica's view, written on its thread. */
typedef struct {
    atomic_ullong id; /* the upstream id of the GENERATE it holds; 0: none yet */
    atomic_int sent;  /* its answer went out */
    char from[64];    /* the gateway's name, for the answer */
} replica_t;

static void on_generate(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    replica_t *r = user;
    snprintf(r->from, sizeof r->from, "%s", msg->from);
    atomic_store(&r->id, msg->env->id);
}

static void send_piece(dsla_actor_t *a, const char *to, uint64_t id, const char *text) {
    dsla_proto_token_t t = {.token = 7, .text_len = strlen(text)};
    memcpy(t.text, text, t.text_len);
    dsla_proto_buf_t body;
    ok(dsla_proto_token_encode(&t, &body));
    ok(dsla_actor_send(a, to, DSLA_MSG_TOKEN, id, body.data, body.len));
    dsla_proto_buf_free(&body);
}

/* Posted by the test: the real answer, one piece and DONE. */
static void answer(dsla_actor_t *a, void *user) {
    replica_t *r = user;
    uint64_t id = atomic_load(&r->id);
    send_piece(a, r->from, id, "real");
    dsla_proto_done_t d = {.finish = DSLA_PROTO_FINISH_LENGTH, .completion_tokens = 1};
    dsla_proto_buf_t body;
    ok(dsla_proto_done_encode(&d, &body));
    ok(dsla_actor_send(a, r->from, DSLA_MSG_DONE, id, body.data, body.len));
    dsla_proto_buf_free(&body);
    atomic_store(&r->sent, 1);
}

static bool wait_id(replica_t *r) {
    struct timespec tick = {0, 2000000};
    for (uint64_t end = dsla_clock_ms() + WAIT_MS; atomic_load(&r->id) == 0;) {
        if (dsla_clock_ms() > end) return false;
        nanosleep(&tick, NULL);
    }
    return true;
}

/* Sends one envelope from a raw socket that claims the name src, packed by hand as a hostile
 * peer would: dsla_proto_envelope_encode refuses bodies above DSLA_PROTO_BODY_MAX. */
static void raw_send(void *sock, const char *src, uint32_t type, uint64_t id,
                     const dsla_proto_buf_t *body) {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 6);
    const char *keys[] = {"v", "t", "id", "src", "dst", "body"};
    msgpack_pack_str_with_body(&pk, keys[0], 1);
    msgpack_pack_uint32(&pk, DSLA_PROTO_VERSION);
    msgpack_pack_str_with_body(&pk, keys[1], 1);
    msgpack_pack_uint32(&pk, type);
    msgpack_pack_str_with_body(&pk, keys[2], 2);
    msgpack_pack_uint64(&pk, id);
    msgpack_pack_str_with_body(&pk, keys[3], 3);
    msgpack_pack_str_with_body(&pk, src, strlen(src));
    msgpack_pack_str_with_body(&pk, keys[4], 3);
    msgpack_pack_str_with_body(&pk, "gateway", 7);
    msgpack_pack_str_with_body(&pk, keys[5], 4);
    msgpack_sbuffer_write(&sbuf, body->data, body->len);
    assert_true(zmq_send(sock, sbuf.data, sbuf.size, 0) >= 0);
    msgpack_sbuffer_destroy(&sbuf);
}

typedef struct {
    dsla_actor_ctx_t *ctx;
    replica_t r;
    dsla_actor_t *replica;
    dsla_gateway_t *gateway;
} rig_t;

static rig_t *rig_start(void) {
    rig_t *g = calloc(1, sizeof *g);
    ok(dsla_actor_ctx_create(&g->ctx));
    static const dsla_actor_handler_t handlers[] = {{DSLA_MSG_GENERATE, on_generate}};
    dsla_actor_def_t def = {.name = "replica1",
                            .ctx = g->ctx,
                            .bind = {"inproc://replica1"},
                            .handlers = handlers,
                            .n_handlers = 1,
                            .user = &g->r,
                            .heartbeat_ms = BEAT_MS};
    ok(dsla_actor_create(&g->replica, &def));
    static const dsla_gateway_replica_t replicas[] = {{"replica1", "inproc://replica1"}};
    dsla_gateway_config_t gc = {.ctx = g->ctx,
                                .bind = {"tcp://127.0.0.1:*"},
                                .replicas = replicas,
                                .n_replicas = 1,
                                .max_outstanding = 4,
                                .heartbeat_ms = BEAT_MS};
    ok(dsla_gateway_create(&g->gateway, &gc));
    return g;
}

static void rig_stop(rig_t *g) {
    dsla_gateway_destroy(&g->gateway);
    dsla_actor_destroy(&g->replica);
    dsla_actor_ctx_destroy(&g->ctx);
    free(g);
}

static void test_forged_tokens_reach_no_client(void **state) {
    (void)state;
    rig_t *g = rig_start();
    const char *endpoint = dsla_gateway_endpoint(g->gateway, 0);
    dsla_client_options_t opt = {.heartbeat_ms = BEAT_MS};
    dsla_client_t *client = NULL;
    ok(dsla_client_connect(&client, endpoint, &opt));
    dsla_proto_generate_t req = {
        .prompt = "Once", .prompt_len = 4, .max_tokens = 4, .stream = true};
    ok(dsla_client_start(client, &req, WAIT_MS));
    assert_true(wait_id(&g->r));

    /* the stranger knows the id (the worst case) and claims the replica's name */
    void *zctx = zmq_ctx_new(), *thief = zmq_socket(zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(thief, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(thief, ZMQ_ROUTING_ID, "replica1", 8);
    assert_int_equal(zmq_connect(thief, endpoint), 0);
    dsla_proto_token_t t = {.token = 9, .text_len = 6};
    memcpy(t.text, "FORGED", 6);
    dsla_proto_buf_t body;
    ok(dsla_proto_token_encode(&t, &body));
    raw_send(thief, "replica1", DSLA_MSG_TOKEN, atomic_load(&g->r.id), &body);
    dsla_proto_buf_free(&body);
    dsla_proto_done_t d = {.finish = DSLA_PROTO_FINISH_STOP};
    ok(dsla_proto_done_encode(&d, &body));
    raw_send(thief, "replica1", DSLA_MSG_DONE, atomic_load(&g->r.id), &body);
    dsla_proto_buf_free(&body);
    struct timespec settle = {0, 300000000}; /* the forgeries arrive before the real answer */
    nanosleep(&settle, NULL);

    ok(dsla_actor_post(g->replica, answer, &g->r));
    char got[256] = "";
    dsla_client_piece_t piece;
    dsla_client_result_t result = {0};
    while (dsla_client_next(client, &piece, &result))
        strncat(got, piece.text, piece.len < 64 ? piece.len : 64);
    if (result.code != DSLA_CODE_OK || strcmp(got, "real") != 0)
        fail_msg("the client got '%s' (%s: %s)", got, dsla_proto_code_name(result.code),
                 result.message);
    assert_int_equal(result.finish, DSLA_PROTO_FINISH_LENGTH);
    zmq_close(thief);
    zmq_ctx_term(zctx);
    dsla_client_close(&client);
    rig_stop(g);
}

/* A body just under the frame limit fits the client's envelope but not the gateway's: refused at
 * once, and every slot (max_outstanding 4) stays free for the next requests. */
static void test_unforwardable_generate_takes_no_slot(void **state) {
    (void)state;
    rig_t *g = rig_start();
    const char *endpoint = dsla_gateway_endpoint(g->gateway, 0);
    void *zctx = zmq_ctx_new(), *sock = zmq_socket(zctx, ZMQ_DEALER);
    int linger = 0, timeout = WAIT_MS;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock, ZMQ_ROUTING_ID, "c", 1);
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    assert_int_equal(zmq_connect(sock, endpoint), 0);
    /* the gateway forwards a GENERATE's body unread: one map {"pad": bin32} is enough */
    dsla_proto_buf_t body = {.len = DSLA_PROTO_BODY_MAX + 1};
    body.data = calloc(1, body.len);
    memcpy(body.data, "\x81\xa3pad\xc6", 6);
    uint32_t n_bin = (uint32_t)body.len - 10;
    for (int i = 0; i < 4; i++)
        body.data[6 + i] = (char)(n_bin >> (8 * (3 - i)));
    assert_true(body.len + 32 < DSLA_PROTO_FRAME_MAX); /* fits the client's own envelope */
    char *reply = malloc(4096);
    for (int i = 0; i < 8; i++) { /* twice the slots */
        raw_send(sock, "c", DSLA_MSG_GENERATE, (uint64_t)i + 1, &body);
        int n = zmq_recv(sock, reply, 4096, 0);
        assert_true(n > 0 && n <= 4096);
        dsla_proto_envelope_t env;
        ok(dsla_proto_envelope_decode(reply, (size_t)n, &env));
        dsla_proto_error_t err;
        assert_int_equal(env.type, DSLA_MSG_ERROR);
        ok(dsla_proto_error_decode(env.body, env.body_len, &err));
        assert_int_equal(err.code, DSLA_CODE_INVALID_ARGUMENT);
        assert_non_null(strstr(err.message, "exceeds the limit"));
    }
    dsla_proto_buf_free(&body);
    free(reply);
    /* every slot is free: a normal request still gets through */
    dsla_proto_report_t *rep = calloc(1, sizeof *rep);
    dsla_client_t *client = NULL;
    dsla_client_options_t opt = {.heartbeat_ms = BEAT_MS};
    ok(dsla_client_connect(&client, endpoint, &opt));
    dsla_client_result_t result = {0};
    assert_int_equal(dsla_client_status(client, rep, WAIT_MS, &result), DSLA_CODE_OK);
    assert_int_equal(rep->in_flight, 0);
    free(rep);
    dsla_client_close(&client);
    zmq_close(sock);
    zmq_ctx_term(zctx);
    rig_stop(g);
}

/* Client names were client-<pid>-<n>, and the pid is in ps: a stranger who claimed the next names
 * first had the real client's connection refused (a mailbox keeps a live name). Now the names
 * carry random bits, and the client is served whatever names were taken. */
static void test_client_names_cannot_be_taken_first(void **state) {
    (void)state;
    rig_t *g = rig_start();
    const char *endpoint = dsla_gateway_endpoint(g->gateway, 0);
    enum { CLAIMED = 64 };
    void *zctx = zmq_ctx_new(), *squatters[CLAIMED];
    for (int i = 0; i < CLAIMED; i++) {
        char name[64];
        snprintf(name, sizeof name, "client-%ld-%d", (long)getpid(), i + 1);
        squatters[i] = zmq_socket(zctx, ZMQ_DEALER);
        int linger = 0;
        zmq_setsockopt(squatters[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(squatters[i], ZMQ_ROUTING_ID, name, strlen(name));
        assert_int_equal(zmq_connect(squatters[i], endpoint), 0);
        dsla_proto_buf_t empty = {.data = "\x80", .len = 1};
        raw_send(squatters[i], name, DSLA_MSG_PING, 0, &empty); /* the name is live now */
    }
    struct timespec settle = {0, 200000000};
    nanosleep(&settle, NULL);
    dsla_client_options_t opt = {.heartbeat_ms = BEAT_MS};
    dsla_client_t *client = NULL;
    ok(dsla_client_connect(&client, endpoint, &opt));
    dsla_proto_report_t *rep = calloc(1, sizeof *rep);
    dsla_client_result_t result = {0};
    if (dsla_client_status(client, rep, 3000, &result) != DSLA_CODE_OK)
        fail_msg("the client was not served: %s", result.message);
    free(rep);
    dsla_client_close(&client);
    for (int i = 0; i < CLAIMED; i++)
        zmq_close(squatters[i]);
    zmq_ctx_term(zctx);
    rig_stop(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forged_tokens_reach_no_client),
        cmocka_unit_test(test_unforwardable_generate_takes_no_slot),
        cmocka_unit_test(test_client_names_cannot_be_taken_first),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

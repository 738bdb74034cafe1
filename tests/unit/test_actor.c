/* runtime/actor: ping-pong over inproc and tcp, ERROR replies to unknown types and malformed
 * frames, heartbeat death in both directions, and clean shutdown of many actors. Every wait is a
 * bounded poll on a counter the actors' threads set, never a sleep standing in for an event. */
#include "tests/testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "proto/proto.h"
#include "runtime/actor/actor.h"
#include "runtime/core/clock.h"
#include "runtime/core/log.h"

enum {
    PINGS = 1000,
    WAIT_MS = 10000,       /* generous: the suite also runs under ASan on shared cores */
    FAST_BEAT_MS = 100,    /* heartbeat interval in the liveness tests: short, yet three of them
                              outlast a thread starved by a loaded machine */
    QUIET_BEAT_MS = 60000, /* heartbeats that never fire during a test */
    RING = 16,
    UNKNOWN_TYPE = 4242,
};

/* Polls until *v reaches target or WAIT_MS passes; returns whether it did. */
static bool wait_for(atomic_int *v, int target) {
    return dsla_test_wait_atomic(v, target, WAIT_MS);
}

/* What one actor's callbacks saw; written on its thread, read by the test's. */
typedef struct {
    atomic_int pongs;
    atomic_int send_failures; /* cmocka's asserts must stay on the test's thread */
    atomic_int errors;
    atomic_uint last_error_code;
    atomic_ullong last_error_id;
    atomic_int alive;
    atomic_int dead;
    atomic_ullong dead_at_ms;
    char peer[DSLA_PROTO_NAME_MAX + 1]; /* whom on_start talks to */
    uint32_t first_type;                /* what on_start sends */
} seen_t;

static void send_ping(dsla_actor_t *a, seen_t *s, uint64_t id) {
    dsla_proto_ping_t ping = {.seq = id};
    dsla_proto_buf_t body;
    if (dsla_proto_ping_encode(&ping, &body) != DSLA_OK ||
        dsla_actor_send(a, s->peer, DSLA_MSG_PING, id, body.data, body.len) != DSLA_OK)
        atomic_fetch_add(&s->send_failures, 1);
    dsla_proto_buf_free(&body);
}

static void start_pinging(dsla_actor_t *a, void *user) {
    seen_t *s = user;
    if (s->first_type == DSLA_MSG_PING)
        send_ping(a, s, 1);
    else if (s->first_type && dsla_actor_send(a, s->peer, s->first_type, 77, NULL, 0) != DSLA_OK)
        atomic_fetch_add(&s->send_failures, 1);
}

/* Answers each PONG (heartbeats carry id 0) with the next PING until PINGS round trips. */
static void on_pong(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    seen_t *s = user;
    if (msg->env->id == 0) return;
    dsla_proto_ping_t ping;
    if (dsla_proto_ping_decode(msg->env->body, msg->env->body_len, &ping) != DSLA_OK ||
        ping.seq != msg->env->id || strcmp(msg->env->src, s->peer) != 0 ||
        !dsla_actor_msg_from_peer(a, msg, s->peer))
        return; /* a wrong echo leaves the count short and the test fails on it */
    int n = atomic_fetch_add(&s->pongs, 1) + 1;
    if (n < PINGS) send_ping(a, s, (uint64_t)n + 1);
}

static void on_error(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    seen_t *s = user;
    dsla_proto_error_t err;
    if (dsla_proto_error_decode(msg->env->body, msg->env->body_len, &err) != DSLA_OK) return;
    atomic_store(&s->last_error_code, err.code);
    atomic_store(&s->last_error_id, msg->env->id);
    atomic_fetch_add(&s->errors, 1);
}

static void on_peer(dsla_actor_t *a, const char *peer, bool alive, void *user) {
    (void)a;
    (void)peer;
    seen_t *s = user;
    if (alive) {
        atomic_fetch_add(&s->alive, 1);
    } else {
        atomic_store(&s->dead_at_ms, dsla_clock_ms());
        atomic_fetch_add(&s->dead, 1);
    }
}

static const dsla_actor_handler_t CLIENT_HANDLERS[] = {
    {DSLA_MSG_PONG, on_pong},
    {DSLA_MSG_ERROR, on_error},
};

static dsla_actor_t *start_actor(dsla_actor_ctx_t *ctx, const char *name, const char *bind,
                                 const char *peer, const char *peer_endpoint, seen_t *seen,
                                 uint32_t heartbeat_ms) {
    dsla_actor_peer_def_t peers[1] = {{peer, peer_endpoint}};
    dsla_actor_def_t def = {
        .name = name,
        .ctx = ctx,
        .bind = {bind},
        .peers = peers,
        .n_peers = peer ? 1 : 0,
        .handlers = CLIENT_HANDLERS,
        .n_handlers = 2,
        .on_start = start_pinging,
        .on_peer = on_peer,
        .user = seen,
        .heartbeat_ms = heartbeat_ms,
    };
    if (peer) snprintf(seen->peer, sizeof seen->peer, "%s", peer);
    dsla_actor_t *a = NULL;
    dsla_status_t st = dsla_actor_create(&a, &def);
    if (st != DSLA_OK) fail_msg("%s", dsla_last_error());
    return a;
}

static void ping_pong(const char *bind) {
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t sb = {0}, sa = {.first_type = DSLA_MSG_PING};
    dsla_actor_t *b = start_actor(ctx, "b", bind, NULL, NULL, &sb, QUIET_BEAT_MS);
    const char *endpoint = dsla_actor_endpoint(b, 0);
    assert_non_null(endpoint);
    assert_null(dsla_actor_endpoint(b, 1));
    if (strncmp(bind, "tcp", 3) == 0) assert_null(strchr(endpoint, '*')); /* port resolved */
    dsla_actor_t *a = start_actor(ctx, "a", NULL, "b", endpoint, &sa, QUIET_BEAT_MS);
    assert_true(wait_for(&sa.pongs, PINGS));
    assert_int_equal(atomic_load(&sa.errors), 0);
    assert_int_equal(atomic_load(&sa.send_failures), 0);
    dsla_actor_destroy(&a);
    dsla_actor_destroy(&b);
    assert_null(a);
    dsla_actor_destroy(&b); /* harmless twice */
    dsla_actor_ctx_destroy(&ctx);
    assert_null(ctx);
}

static void test_ping_pong_inproc(void **state) {
    (void)state;
    ping_pong("inproc://test-actor-b");
}

static void test_ping_pong_tcp(void **state) {
    (void)state;
    ping_pong("tcp://127.0.0.1:*");
}

static void test_unknown_type_gets_error(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t sb = {0}, sa = {.first_type = UNKNOWN_TYPE};
    dsla_actor_t *b =
        start_actor(ctx, "b", "inproc://test-unknown", NULL, NULL, &sb, QUIET_BEAT_MS);
    dsla_actor_t *a = start_actor(ctx, "a", NULL, "b", "inproc://test-unknown", &sa, QUIET_BEAT_MS);
    assert_true(wait_for(&sa.errors, 1));
    assert_int_equal(atomic_load(&sa.last_error_code), DSLA_CODE_INVALID_ARGUMENT);
    assert_int_equal(atomic_load(&sa.last_error_id), 77); /* correlated with the request */
    assert_int_equal(atomic_load(&sb.errors), 0);         /* and no error bounced back */
    assert_int_equal(atomic_load(&sa.send_failures), 0);
    dsla_actor_destroy(&a);
    dsla_actor_destroy(&b);
    dsla_actor_ctx_destroy(&ctx);
}

/* A raw ZeroMQ client (its own context, over tcp) feeds the mailbox garbage and expects one ERROR
 * per frame, then a PONG to prove the actor survived. */
static void expect_reply(void *sock, uint32_t type, uint32_t code) {
    zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&item, 1, WAIT_MS), 1);
    char buf[4096];
    int n = zmq_recv(sock, buf, sizeof buf, 0);
    assert_true(n > 0 && n < (int)sizeof buf);
    dsla_proto_envelope_t env;
    assert_int_equal(dsla_proto_envelope_decode(buf, (size_t)n, &env), DSLA_OK);
    assert_int_equal(env.type, type);
    assert_string_equal(env.src, "b");
    if (type == DSLA_MSG_ERROR) {
        dsla_proto_error_t err;
        assert_int_equal(dsla_proto_error_decode(env.body, env.body_len, &err), DSLA_OK);
        assert_int_equal(err.code, code);
        assert_true(err.message[0] != '\0');
    }
}

static void test_malformed_frames_get_errors(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t sb = {0};
    dsla_actor_t *b = start_actor(ctx, "b", "tcp://127.0.0.1:*", NULL, NULL, &sb, QUIET_BEAT_MS);
    void *zctx = zmq_ctx_new();
    void *sock = zmq_socket(zctx, ZMQ_DEALER); /* anonymous: ZeroMQ picks a binary routing id */
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(sock, dsla_actor_endpoint(b, 0)), 0);

    const unsigned char garbage[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0x01};
    assert_true(zmq_send(sock, garbage, sizeof garbage, 0) >= 0);
    expect_reply(sock, DSLA_MSG_ERROR, DSLA_CODE_INVALID_ARGUMENT);
    assert_true(zmq_send(sock, "", 0, 0) >= 0);
    expect_reply(sock, DSLA_MSG_ERROR, DSLA_CODE_INVALID_ARGUMENT);

    dsla_proto_envelope_t env = {.type = DSLA_MSG_PING, .id = 5, .src = "raw", .dst = "b"};
    dsla_proto_buf_t frame;
    assert_int_equal(dsla_proto_envelope_encode(&env, &frame), DSLA_OK);
    /* two frames where one envelope belongs */
    assert_true(zmq_send(sock, frame.data, frame.len, ZMQ_SNDMORE) >= 0);
    assert_true(zmq_send(sock, frame.data, frame.len, 0) >= 0);
    expect_reply(sock, DSLA_MSG_ERROR, DSLA_CODE_INVALID_ARGUMENT);
    /* truncated */
    assert_true(zmq_send(sock, frame.data, frame.len - 1, 0) >= 0);
    expect_reply(sock, DSLA_MSG_ERROR, DSLA_CODE_INVALID_ARGUMENT);
    dsla_proto_buf_free(&frame);
    /* a version from the future */
    env.version = DSLA_PROTO_VERSION + 1;
    assert_int_equal(dsla_proto_envelope_encode(&env, &frame), DSLA_OK);
    assert_true(zmq_send(sock, frame.data, frame.len, 0) >= 0);
    expect_reply(sock, DSLA_MSG_ERROR, DSLA_CODE_INVALID_ARGUMENT);
    dsla_proto_buf_free(&frame);
    /* an ERROR that nobody handles is not answered; the PING after it is */
    env.version = 0;
    env.type = DSLA_MSG_ERROR;
    assert_int_equal(dsla_proto_envelope_encode(&env, &frame), DSLA_OK);
    assert_true(zmq_send(sock, frame.data, frame.len, 0) >= 0);
    dsla_proto_buf_free(&frame);
    env.type = DSLA_MSG_PING;
    assert_int_equal(dsla_proto_envelope_encode(&env, &frame), DSLA_OK);
    assert_true(zmq_send(sock, frame.data, frame.len, 0) >= 0);
    expect_reply(sock, DSLA_MSG_PONG, 0);
    dsla_proto_buf_free(&frame);

    zmq_close(sock);
    zmq_ctx_term(zctx);
    dsla_actor_destroy(&b);
    dsla_actor_ctx_destroy(&ctx);
}

/* A raw DEALER on the test's own ZeroMQ context. */
static void *raw_dealer(void *zctx, const char *routing_id, const char *endpoint) {
    void *sock = zmq_socket(zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (routing_id) zmq_setsockopt(sock, ZMQ_ROUTING_ID, routing_id, strlen(routing_id));
    assert_int_equal(zmq_connect(sock, endpoint), 0);
    return sock;
}

/* A PING envelope from a raw socket, under whatever src it claims. */
static void raw_ping(void *sock, const char *src, uint64_t id) {
    dsla_proto_envelope_t env = {.type = DSLA_MSG_PING, .id = id, .dst = "b"};
    snprintf(env.src, sizeof env.src, "%s", src);
    dsla_proto_buf_t frame;
    assert_int_equal(dsla_proto_envelope_encode(&env, &frame), DSLA_OK);
    assert_true(zmq_send(sock, frame.data, frame.len, 0) >= 0);
    dsla_proto_buf_free(&frame);
}

/* Frames that reach sock within ms. */
static int frames_within(void *sock, int ms) {
    int n = 0;
    uint64_t deadline = dsla_clock_ms() + (uint64_t)ms;
    for (uint64_t now; (now = dsla_clock_ms()) < deadline;) {
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, (long)(deadline - now)) <= 0) continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) >= 0) n++;
        zmq_msg_close(&m);
    }
    return n;
}

/* A second connection that claims a live peer's routing id ("a", as anyone can see in a log)
 * must not take its traffic: with ZMQ_ROUTER_HANDOVER it got every PONG meant for a, and a saw
 * its server die. */
static void test_routing_id_not_captured(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t sb = {0}, sa = {0};
    dsla_actor_t *b = start_actor(ctx, "b", "tcp://127.0.0.1:*", NULL, NULL, &sb, FAST_BEAT_MS);
    dsla_actor_t *a =
        start_actor(ctx, "a", NULL, "b", dsla_actor_endpoint(b, 0), &sa, FAST_BEAT_MS);
    assert_true(wait_for(&sa.alive, 1));
    void *zctx = zmq_ctx_new();
    void *thief = raw_dealer(zctx, "a", dsla_actor_endpoint(b, 0));
    raw_ping(thief, "a", 9);
    /* ten heartbeats: b's PONGs to a keep going to a, none to the thief */
    assert_int_equal(frames_within(thief, 10 * FAST_BEAT_MS), 0);
    assert_int_equal(atomic_load(&sa.dead), 0);
    zmq_close(thief);
    zmq_ctx_term(zctx);
    dsla_actor_destroy(&a);
    dsla_actor_destroy(&b);
    dsla_actor_ctx_destroy(&ctx);
}

/* A frame above DSLA_ACTOR_FRAME_MAX is refused by ZeroMQ from its length prefix, never handed
 * to the actor (which would answer it with an ERROR after holding it whole); the actor then
 * serves the next client as before. */
static void test_oversized_frame_refused_unread(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t sb = {0};
    dsla_actor_t *b = start_actor(ctx, "b", "tcp://127.0.0.1:*", NULL, NULL, &sb, QUIET_BEAT_MS);
    void *zctx = zmq_ctx_new();
    void *big = raw_dealer(zctx, "big", dsla_actor_endpoint(b, 0));
    size_t len = (size_t)DSLA_ACTOR_FRAME_MAX + 1;
    char *junk = calloc(1, len);
    assert_true(zmq_send(big, junk, len, 0) >= 0);
    free(junk);
    assert_int_equal(frames_within(big, 1000), 0);
    void *next = raw_dealer(zctx, "next", dsla_actor_endpoint(b, 0));
    raw_ping(next, "next", 5);
    expect_reply(next, DSLA_MSG_PONG, 0);
    zmq_close(big);
    zmq_close(next);
    zmq_ctx_term(zctx);
    dsla_actor_destroy(&b);
    dsla_actor_ctx_destroy(&ctx);
}

/* A flood of malformed frames is each answered, but logged at most DSLA_LOG_LIMIT_BURST times a
 * window (5,000 frames wrote 5,000 lines before). */
static void test_frame_flood_log_bounded(void **state) {
    (void)state;
    enum { FLOOD = 300 };
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t sb = {0};
    dsla_actor_t *b = start_actor(ctx, "b", "tcp://127.0.0.1:*", NULL, NULL, &sb, QUIET_BEAT_MS);
    char *dir = dsla_test_tempdir(), path[1024];
    snprintf(path, sizeof path, "%s/stderr", dir);
    fflush(stderr);
    int saved = dup(STDERR_FILENO), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(saved >= 0 && fd >= 0 && dup2(fd, STDERR_FILENO) >= 0);
    void *zctx = zmq_ctx_new();
    void *sock = raw_dealer(zctx, "flood", dsla_actor_endpoint(b, 0));
    for (int i = 0; i < FLOOD; i++) {
        assert_true(zmq_send(sock, "\xc1", 1, 0) >= 0); /* a reserved msgpack byte */
        expect_reply(sock, DSLA_MSG_ERROR, DSLA_CODE_INVALID_ARGUMENT);
    }
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
    size_t len = 0;
    char *text = dsla_test_read_file(path, &len);
    int lines = 0;
    for (const char *p = text; (p = strstr(p, "refusing a frame")) != NULL; p++)
        lines++;
    if (lines < 1 || lines > DSLA_LOG_LIMIT_BURST + 1)
        fail_msg("%d lines for %d malformed frames:\n%s", lines, FLOOD, text);
    free(text);
    zmq_close(sock);
    zmq_ctx_term(zctx);
    dsla_actor_destroy(&b);
    dsla_actor_ctx_destroy(&ctx);
    dsla_test_rmtree(dir);
    free(dir);
}

/* a connects to b; both see each other alive; then the one named by kill stops and the other
 * must report it dead after about DSLA_ACTOR_HEARTBEAT_LIVENESS intervals. */
static void heartbeat_death(bool kill_server) {
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t sb = {0}, sa = {0};
    dsla_actor_t *b = start_actor(ctx, "b", "tcp://127.0.0.1:*", NULL, NULL, &sb, FAST_BEAT_MS);
    dsla_actor_t *a =
        start_actor(ctx, "a", NULL, "b", dsla_actor_endpoint(b, 0), &sa, FAST_BEAT_MS);
    assert_true(wait_for(&sa.alive, 1));
    assert_true(wait_for(&sb.alive, 1));
    char endpoint[DSLA_ACTOR_ENDPOINT_MAX];
    snprintf(endpoint, sizeof endpoint, "%s", dsla_actor_endpoint(b, 0));
    seen_t *survivor = kill_server ? &sa : &sb;
    int dead_before = atomic_load(&survivor->dead);
    uint64_t t0 = dsla_clock_ms();
    dsla_actor_destroy(kill_server ? &b : &a);
    assert_true(wait_for(&survivor->dead, dead_before + 1));
    uint64_t waited = atomic_load(&survivor->dead_at_ms) - t0;
    /* the last answer came at most one interval before the stop; a server this actor connected
     * to is dead as soon as its connection drops (the DEALER's monitor, read at a heartbeat) */
    if (!kill_server) assert_true(waited >= (DSLA_ACTOR_HEARTBEAT_LIVENESS - 2) * FAST_BEAT_MS);
    assert_true(waited < 40 * FAST_BEAT_MS);
    if (kill_server) { /* a server restarted on the same endpoint is found again */
        seen_t sb2 = {0};
        int alive_before = atomic_load(&sa.alive);
        b = start_actor(ctx, "b", endpoint, NULL, NULL, &sb2, FAST_BEAT_MS);
        assert_true(wait_for(&sa.alive, alive_before + 1));
        assert_true(wait_for(&sb2.alive, 1));
        dsla_actor_destroy(&b);
    }
    dsla_actor_destroy(&a);
    dsla_actor_destroy(&b);
    dsla_actor_ctx_destroy(&ctx);
}

static void test_dead_server_reported(void **state) {
    (void)state;
    heartbeat_death(true);
}

static void test_dead_client_reported(void **state) {
    (void)state;
    heartbeat_death(false);
}

/* A client that pings five times slower than the actor it connected to: the actor counts its
 * silence in the client's intervals (the PING says them), so it is not dead between two pings
 * (a replica beating every second flapped dead at a controller beating every 200 ms), and still
 * dead soon after it stops. */
static void test_slow_pinger_not_dead_between_pings(void **state) {
    (void)state;
    enum { SLOW = 5 };
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t hub = {0}, slow = {0};
    dsla_actor_t *h = start_actor(ctx, "hub", "tcp://127.0.0.1:*", NULL, NULL, &hub, FAST_BEAT_MS);
    dsla_actor_t *c = start_actor(ctx, "slow", NULL, "hub", dsla_actor_endpoint(h, 0), &slow,
                                  SLOW * FAST_BEAT_MS);
    assert_true(wait_for(&hub.alive, 1));
    const long ms = 4L * SLOW * FAST_BEAT_MS; /* four of its pings, twenty of the hub's beats */
    struct timespec four_pings = {ms / 1000, ms % 1000 * 1000000L};
    nanosleep(&four_pings, NULL);
    assert_int_equal(atomic_load(&hub.dead), 0);
    assert_int_equal(atomic_load(&hub.alive), 1);
    uint64_t t0 = dsla_clock_ms();
    dsla_actor_destroy(&c);
    assert_true(wait_for(&hub.dead, 1));
    assert_true(atomic_load(&hub.dead_at_ms) - t0 < 40 * SLOW * FAST_BEAT_MS);
    dsla_actor_destroy(&h);
    dsla_actor_ctx_destroy(&ctx);
}

/* RING actors, each connected to the next: every one sees two neighbours alive (the one it pings,
 * the one that pings it), then all stop; ASan's leak check covers the teardown. */
static void test_many_actors_clean_shutdown(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    dsla_actor_t *actors[RING];
    seen_t seen[RING];
    memset(seen, 0, sizeof seen);
    char names[RING][16], binds[RING][48];
    for (int i = 0; i < RING; i++) {
        snprintf(names[i], sizeof names[i], "r%d", i);
        snprintf(binds[i], sizeof binds[i], "inproc://test-ring-%d", i);
    }
    /* connecting before the peer binds is fine for inproc: ZeroMQ queues until it does */
    for (int i = 0; i < RING; i++)
        actors[i] = start_actor(ctx, names[i], binds[i], names[(i + 1) % RING],
                                binds[(i + 1) % RING], &seen[i], FAST_BEAT_MS);
    for (int i = 0; i < RING; i++)
        assert_true(wait_for(&seen[i].alive, 2));
    for (int i = 0; i < RING; i++) {
        dsla_actor_destroy(&actors[i]);
        assert_null(actors[i]);
    }
    dsla_actor_ctx_destroy(&ctx);
}

/* A repeating timer that stops itself after TICKS firings, and a one-shot timer far in the future
 * that the actor's stop must close without leaking. */
enum { TICKS = 5 };
typedef struct {
    atomic_int ticks;
    atomic_int stopped;
    atomic_int failures;
    dsla_actor_timer_t *repeat, *never;
} timers_t;

static void on_tick(dsla_actor_t *a, void *user) {
    timers_t *t = user;
    if (atomic_fetch_add(&t->ticks, 1) + 1 < TICKS) return;
    dsla_actor_timer_stop(a, &t->repeat);
    if (t->repeat) atomic_fetch_add(&t->failures, 1);
    atomic_store(&t->stopped, 1);
}

static void start_timers(dsla_actor_t *a, void *user) {
    timers_t *t = user;
    if (dsla_actor_timer_start(a, 1, 1, on_tick, t, &t->repeat) != DSLA_OK ||
        dsla_actor_timer_start(a, 3600 * 1000, 0, on_tick, t, &t->never) != DSLA_OK)
        atomic_fetch_add(&t->failures, 1);
}

static void test_timers_and_thread_contract(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    timers_t t = {0};
    dsla_actor_def_t def = {.name = "clock", .ctx = ctx, .on_start = start_timers, .user = &t};
    dsla_actor_t *a = NULL;
    assert_int_equal(dsla_actor_create(&a, &def), DSLA_OK);
    assert_true(wait_for(&t.stopped, 1));
    assert_int_equal(atomic_load(&t.ticks), TICKS);
    assert_int_equal(atomic_load(&t.failures), 0);
    /* the test's thread is not the actor's: sending from here is refused, not raced */
    assert_int_equal(dsla_actor_send(a, "x", DSLA_MSG_PING, 1, NULL, 0), DSLA_ERR_INTERNAL);
    assert_non_null(strstr(dsla_last_error(), "thread"));
    assert_string_equal(dsla_actor_name(a), "clock");
    dsla_actor_destroy(&a);
    assert_int_equal(atomic_load(&t.ticks), TICKS);
    dsla_actor_ctx_destroy(&ctx);
}

static void test_create_failures_name_the_cause(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t s1 = {0}, s2 = {0};
    dsla_actor_t *a = start_actor(ctx, "a", "tcp://127.0.0.1:*", NULL, NULL, &s1, QUIET_BEAT_MS);
    dsla_actor_def_t def = {
        .name = "b", .ctx = ctx, .bind = {dsla_actor_endpoint(a, 0)}, .user = &s2};
    dsla_actor_t *b = NULL;
    assert_int_equal(dsla_actor_create(&b, &def), DSLA_ERR_INVALID_ARGUMENT);
    assert_null(b);
    assert_non_null(strstr(dsla_last_error(), dsla_actor_endpoint(a, 0))); /* port in use */
    def.bind[0] = "nonsense://x";
    assert_int_equal(dsla_actor_create(&b, &def), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "nonsense://x"));
    def.bind[0] = NULL;
    def.name = "has space";
    assert_int_equal(dsla_actor_create(&b, &def), DSLA_ERR_INVALID_ARGUMENT);
    dsla_actor_destroy(&a);
    dsla_actor_ctx_destroy(&ctx);
}

/* ---- posts, workers and watched clients ---------------------------------------------------- */

enum { POSTERS = 2, POSTS = 5000, JOBS = 8, CANCEL_JOBS = 64, CLIENTS = 300 };

typedef struct {
    pthread_t loop_thread; /* the actor's thread, recorded in on_start */
    atomic_int started;
    atomic_int ran;
    atomic_int off_thread; /* posts or dones that ran elsewhere than the actor's thread */
    atomic_int out_of_order;
    int last_seq[POSTERS];   /* touched only on the actor's thread */
    atomic_int work_on_loop; /* work functions that ran on the actor's thread */
    atomic_int worked, done, cancelled;
    atomic_int stop_post_refused;
} async_t;

typedef struct {
    async_t *t;
    dsla_actor_t *a;
    int poster, seq;
} post_item_t;

static void record_thread(dsla_actor_t *a, void *user) {
    (void)a;
    async_t *t = user;
    t->loop_thread = pthread_self();
    atomic_store(&t->started, 1);
}

static void on_posted(dsla_actor_t *a, void *user) {
    (void)a;
    post_item_t *it = user;
    async_t *t = it->t;
    if (!pthread_equal(pthread_self(), t->loop_thread)) atomic_fetch_add(&t->off_thread, 1);
    if (it->seq != t->last_seq[it->poster] + 1) atomic_fetch_add(&t->out_of_order, 1);
    t->last_seq[it->poster] = it->seq;
    atomic_fetch_add(&t->ran, 1);
    free(it);
}

typedef struct {
    async_t *t;
    dsla_actor_t *a;
    int poster;
} poster_arg_t;

static void *poster_main(void *arg) {
    poster_arg_t *p = arg;
    for (int i = 1; i <= POSTS; i++) {
        post_item_t *it = malloc(sizeof *it);
        *it = (post_item_t){.t = p->t, .poster = p->poster, .seq = i};
        if (dsla_actor_post(p->a, on_posted, it) != DSLA_OK) free(it);
    }
    return NULL;
}

static void post_in_stop(dsla_actor_t *a, void *user) {
    async_t *t = user;
    post_item_t *it = malloc(sizeof *it);
    *it = (post_item_t){.t = t};
    if (dsla_actor_post(a, on_posted, it) == DSLA_ERR_CANCELLED) {
        atomic_store(&t->stop_post_refused, 1);
        free(it);
    }
}

/* Two threads post POSTS callbacks each: all run, on the actor's thread, each thread's in order;
 * once the actor has stopped a post is refused. */
static void test_posts_run_on_the_loop_in_order(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    async_t t = {0};
    dsla_actor_def_t def = {.name = "poster",
                            .ctx = ctx,
                            .on_start = record_thread,
                            .on_stop = post_in_stop,
                            .user = &t};
    dsla_actor_t *a = NULL;
    assert_int_equal(dsla_actor_create(&a, &def), DSLA_OK);
    assert_true(wait_for(&t.started, 1));
    pthread_t threads[POSTERS];
    poster_arg_t args[POSTERS];
    for (int i = 0; i < POSTERS; i++) {
        args[i] = (poster_arg_t){.t = &t, .a = a, .poster = i};
        assert_int_equal(pthread_create(&threads[i], NULL, poster_main, &args[i]), 0);
    }
    for (int i = 0; i < POSTERS; i++)
        pthread_join(threads[i], NULL);
    assert_true(wait_for(&t.ran, POSTERS * POSTS));
    assert_int_equal(atomic_load(&t.off_thread), 0);
    assert_int_equal(atomic_load(&t.out_of_order), 0);
    dsla_actor_destroy(&a);
    assert_int_equal(atomic_load(&t.stop_post_refused), 1);
    dsla_actor_ctx_destroy(&ctx);
}

typedef struct {
    async_t *t;
    int sleep_ms;
} job_t;

static void job_work(void *user) {
    job_t *j = user;
    if (pthread_equal(pthread_self(), j->t->loop_thread)) atomic_fetch_add(&j->t->work_on_loop, 1);
    struct timespec ts = {0, (long)j->sleep_ms * 1000000L};
    nanosleep(&ts, NULL);
    atomic_fetch_add(&j->t->worked, 1);
}

static void job_done(dsla_actor_t *a, void *user, bool cancelled) {
    (void)a;
    job_t *j = user;
    if (!pthread_equal(pthread_self(), j->t->loop_thread)) atomic_fetch_add(&j->t->off_thread, 1);
    if (cancelled) atomic_fetch_add(&j->t->cancelled, 1);
    atomic_fetch_add(&j->t->done, 1);
    free(j);
}

static int queue_jobs(dsla_actor_t *a, async_t *t, int n, int sleep_ms) {
    int failures = 0;
    for (int i = 0; i < n; i++) {
        job_t *j = malloc(sizeof *j);
        *j = (job_t){.t = t, .sleep_ms = sleep_ms};
        if (dsla_actor_work(a, job_work, job_done, j) != DSLA_OK) {
            free(j);
            failures++;
        }
    }
    return failures;
}

static void start_jobs(dsla_actor_t *a, void *user) {
    async_t *t = user;
    record_thread(a, user);
    if (queue_jobs(a, t, JOBS, 5)) atomic_fetch_add(&t->off_thread, 1000);
}

static void start_slow_jobs(dsla_actor_t *a, void *user) {
    async_t *t = user;
    record_thread(a, user);
    if (queue_jobs(a, t, CANCEL_JOBS, 50)) atomic_fetch_add(&t->off_thread, 1000);
}

/* Jobs run off the loop and finish on it; at a stop, jobs not yet started are cancelled and every
 * job's done still runs exactly once, before the actor is gone. */
static void test_work_runs_off_the_loop(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    async_t t = {0};
    dsla_actor_def_t def = {.name = "worker", .ctx = ctx, .on_start = start_jobs, .user = &t};
    dsla_actor_t *a = NULL;
    assert_int_equal(dsla_actor_create(&a, &def), DSLA_OK);
    assert_true(wait_for(&t.done, JOBS));
    assert_int_equal(atomic_load(&t.worked), JOBS);
    assert_int_equal(atomic_load(&t.cancelled), 0);
    assert_int_equal(atomic_load(&t.work_on_loop), 0);
    assert_int_equal(atomic_load(&t.off_thread), 0);
    dsla_actor_destroy(&a);

    async_t u = {0};
    def.on_start = start_slow_jobs;
    def.user = &u;
    assert_int_equal(dsla_actor_create(&a, &def), DSLA_OK);
    assert_true(wait_for(&u.started, 1));
    dsla_actor_destroy(&a); /* at once: most jobs are still queued */
    assert_int_equal(atomic_load(&u.done), CANCEL_JOBS);
    assert_true(atomic_load(&u.cancelled) > 0);
    assert_int_equal(atomic_load(&u.worked) + atomic_load(&u.cancelled), CANCEL_JOBS);
    assert_int_equal(atomic_load(&u.off_thread), 0);
    dsla_actor_ctx_destroy(&ctx);
}

/* CLIENTS sockets that only PING an actor (as a gateway's clients do) are all watched, far past
 * the connected-peer limit, and each is reported dead once it falls silent. */
static void test_clients_watched_without_a_cap(void **state) {
    (void)state;
    assert_true(CLIENTS > DSLA_ACTOR_PEER_MAX);
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    seen_t s = {0};
    dsla_actor_t *a = start_actor(ctx, "hub", "tcp://127.0.0.1:*", NULL, NULL, &s, FAST_BEAT_MS);
    void *zctx = zmq_ctx_new();
    void *socks[CLIENTS];
    dsla_proto_buf_t body;
    dsla_proto_ping_t ping = {.seq = 1};
    assert_int_equal(dsla_proto_ping_encode(&ping, &body), DSLA_OK);
    for (int i = 0; i < CLIENTS; i++) {
        char name[32];
        snprintf(name, sizeof name, "client-%d", i);
        socks[i] = zmq_socket(zctx, ZMQ_DEALER);
        int linger = 0;
        zmq_setsockopt(socks[i], ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(socks[i], ZMQ_ROUTING_ID, name, strlen(name));
        assert_int_equal(zmq_connect(socks[i], dsla_actor_endpoint(a, 0)), 0);
        dsla_proto_envelope_t env = {.version = DSLA_PROTO_VERSION,
                                     .type = DSLA_MSG_PING,
                                     .body = body.data,
                                     .body_len = body.len};
        snprintf(env.src, sizeof env.src, "%s", name);
        snprintf(env.dst, sizeof env.dst, "hub");
        dsla_proto_buf_t frame;
        assert_int_equal(dsla_proto_envelope_encode(&env, &frame), DSLA_OK);
        assert_true(zmq_send(socks[i], frame.data, frame.len, 0) >= 0);
        dsla_proto_buf_free(&frame);
    }
    dsla_proto_buf_free(&body);
    assert_true(wait_for(&s.alive, CLIENTS));
    /* silent from here: after the liveness intervals every one is dead and forgotten */
    assert_true(wait_for(&s.dead, CLIENTS));
    assert_int_equal(atomic_load(&s.alive), CLIENTS);
    for (int i = 0; i < CLIENTS; i++)
        zmq_close(socks[i]);
    zmq_ctx_term(zctx);
    dsla_actor_destroy(&a);
    dsla_actor_ctx_destroy(&ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_pong_inproc),
        cmocka_unit_test(test_ping_pong_tcp),
        cmocka_unit_test(test_unknown_type_gets_error),
        cmocka_unit_test(test_malformed_frames_get_errors),
        cmocka_unit_test(test_routing_id_not_captured),
        cmocka_unit_test(test_oversized_frame_refused_unread),
        cmocka_unit_test(test_frame_flood_log_bounded),
        cmocka_unit_test(test_dead_server_reported),
        cmocka_unit_test(test_dead_client_reported),
        cmocka_unit_test(test_slow_pinger_not_dead_between_pings),
        cmocka_unit_test(test_many_actors_clean_shutdown),
        cmocka_unit_test(test_timers_and_thread_contract),
        cmocka_unit_test(test_create_failures_name_the_cause),
        cmocka_unit_test(test_posts_run_on_the_loop_in_order),
        cmocka_unit_test(test_work_runs_off_the_loop),
        cmocka_unit_test(test_clients_watched_without_a_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

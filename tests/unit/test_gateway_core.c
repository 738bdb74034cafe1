/* actors/gateway_core: the gateway's routing driven in-process with a fake send that records every
 * message: routing to the least loaded replica; the outstanding bound refusing with
 * RESOURCE_EXHAUSTED naming the limit; a replica dying before any token (the request moves, or with
 * no replica left fails UNAVAILABLE naming the replica) and mid-stream (UNAVAILABLE, "cannot be
 * resumed"); a client dying (CANCEL to the replica, the route freed); a replica's ERROR reaching
 * the client unchanged; and no route leaking over a seeded run of random events. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/gateway_core.h"
#include "tests/unit/outbox.h"

static struct { outbox_t out; } t;

static dsla_status_t fake_send(void *user, const char *dst, uint32_t type, uint64_t id,
                               const void *body, size_t len) {
    (void)user;
    return outbox_send(&t.out, dst, type, id, body, len);
}

static int setup(void **state) {
    (void)state;
    memset(&t, 0, sizeof t);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    outbox_clear(&t.out);
    return 0;
}

static const dsla_gateway_replica_t replicas[] = {
    {"serving0", "inproc://serving0"},
    {"serving1", "inproc://serving1"},
    {"serving2", "inproc://serving2"},
};

static dsla_gateway_core_t *core_new(size_t n_replicas, uint32_t max_outstanding) {
    dsla_gateway_core_config_t cfg = {
        .replicas = replicas, .n_replicas = n_replicas, .max_outstanding = max_outstanding};
    dsla_gateway_core_ops_t ops = {.send = fake_send};
    dsla_gateway_core_t *c = NULL;
    assert_int_equal(dsla_gateway_core_create(&c, &cfg, &ops), DSLA_OK);
    for (size_t i = 0; i < n_replicas; i++)
        dsla_gateway_core_on_peer(c, replicas[i].name, true);
    return c;
}

static const char body[] = "a GENERATE body, forwarded unread";

/* The last message sent, which must be to dst of type. */
static const sent_t *last(const char *dst, uint32_t type) {
    assert_true(t.out.n > 0);
    const sent_t *s = &t.out.sent[t.out.n - 1];
    assert_string_equal(s->dst, dst);
    assert_int_equal(s->type, type);
    return s;
}

/* A GENERATE from client with id; returns the message that carried it to its replica. */
static const sent_t *generate(dsla_gateway_core_t *c, const char *client, uint64_t id) {
    int before = t.out.n;
    assert_int_equal(dsla_gateway_core_on_generate(c, client, id, body, sizeof body), DSLA_OK);
    assert_int_equal(t.out.n, before + 1);
    const sent_t *s = &t.out.sent[t.out.n - 1];
    assert_int_equal(s->type, DSLA_MSG_GENERATE);
    assert_int_equal(s->len, sizeof body);
    assert_memory_equal(s->body, body, sizeof body);
    return s;
}

static dsla_proto_error_t error_of(const sent_t *s) {
    dsla_proto_error_t err;
    assert_int_equal(s->type, DSLA_MSG_ERROR);
    assert_int_equal(dsla_proto_error_decode(s->body, s->len, &err), DSLA_OK);
    return err;
}

static void replica_error(dsla_gateway_core_t *c, const char *replica, uint64_t id,
                          dsla_proto_code_t code, const char *message) {
    dsla_proto_error_t err = {.code = code};
    snprintf(err.message, sizeof err.message, "%s", message);
    dsla_proto_buf_t b;
    assert_int_equal(dsla_proto_error_encode(&err, &b), DSLA_OK);
    dsla_gateway_core_on_error(c, replica, id, b.data, b.len);
    dsla_proto_buf_free(&b);
}

static void test_least_loaded(void **state) {
    (void)state;
    dsla_gateway_core_t *c = core_new(3, 0);
    char seen[3] = {0};
    uint64_t up[3];
    char where[3][64];
    for (int i = 0; i < 3; i++) {
        const sent_t *s = generate(c, "client-a", 10 + (uint64_t)i);
        up[i] = s->id;
        snprintf(where[i], sizeof where[i], "%s", s->dst);
        seen[s->dst[7] - '0'] = 1;
    }
    assert_true(seen[0] && seen[1] && seen[2]); /* one each */
    /* a TOKEN goes to the client under its own id, byte for byte; DONE ends the route */
    dsla_gateway_core_on_token(c, where[1], up[1], "tok", 3);
    const sent_t *s = last("client-a", DSLA_MSG_TOKEN);
    assert_int_equal(s->id, 11);
    assert_memory_equal(s->body, "tok", 3);
    dsla_gateway_core_on_done(c, where[1], up[1], "done", 4);
    assert_int_equal(last("client-a", DSLA_MSG_DONE)->id, 11);
    assert_int_equal(dsla_gateway_core_routes(c), 2);
    /* a frame under the id from the wrong replica matches nothing */
    int before = t.out.n;
    dsla_gateway_core_on_token(c, where[2], up[0], "x", 1);
    assert_int_equal(t.out.n, before);
    /* the replica that finished has the fewest outstanding now */
    assert_string_equal(generate(c, "client-b", 1)->dst, where[1]);
    dsla_proto_report_t rep;
    dsla_gateway_core_report(c, &rep);
    assert_int_equal(rep.requests, 4);
    assert_int_equal(rep.tokens, 1);
    assert_int_equal(rep.in_flight, 3);
    assert_int_equal(rep.n_replicas, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rep.replicas[i].outstanding, 1);
    dsla_gateway_core_destroy(&c);
    assert_null(c);
}

static void test_bound(void **state) {
    (void)state;
    dsla_gateway_core_t *c = core_new(2, 2);
    generate(c, "client-a", 1);
    generate(c, "client-a", 2);
    int before = t.out.n;
    assert_int_equal(dsla_gateway_core_on_generate(c, "client-a", 3, body, sizeof body),
                     DSLA_ERR_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(dsla_last_error(), "2 requests outstanding"));
    assert_non_null(strstr(dsla_last_error(), "--max-queued"));
    assert_int_equal(t.out.n, before); /* the shell answers the refusal */
    /* a nameless client cannot be streamed to */
    assert_int_equal(dsla_gateway_core_on_generate(c, "", 4, body, sizeof body),
                     DSLA_ERR_INVALID_ARGUMENT);
    dsla_proto_report_t rep;
    dsla_gateway_core_report(c, &rep);
    assert_int_equal(rep.errors, 1);
    assert_int_equal(rep.in_flight, 2);
    /* every replica dead: UNAVAILABLE, with the count */
    dsla_gateway_core_t *d = core_new(2, 0);
    dsla_gateway_core_on_peer(d, "serving0", false);
    dsla_gateway_core_on_peer(d, "serving1", false);
    assert_int_equal(dsla_gateway_core_on_generate(d, "client-a", 1, body, sizeof body),
                     DSLA_ERR_UNAVAILABLE);
    assert_non_null(strstr(dsla_last_error(), "none of its 2 serving replicas is alive"));
    assert_int_equal(dsla_gateway_core_routes(d), 0);
    dsla_gateway_core_destroy(&d);
    dsla_gateway_core_destroy(&c);
}

static void test_replica_dies_before_token(void **state) {
    (void)state;
    dsla_gateway_core_t *c = core_new(2, 0);
    const sent_t *s = generate(c, "client-a", 5);
    char first[64], second[64];
    snprintf(first, sizeof first, "%s", s->dst);
    uint64_t up = s->id;
    dsla_gateway_core_on_peer(c, first, false);
    s = last(strcmp(first, "serving0") == 0 ? "serving1" : "serving0", DSLA_MSG_GENERATE);
    snprintf(second, sizeof second, "%s", s->dst);
    assert_int_equal(s->id, up);
    assert_memory_equal(s->body, body, sizeof body);
    /* the dead replica's late frames are dropped */
    int before = t.out.n;
    dsla_gateway_core_on_token(c, first, up, "x", 1);
    assert_int_equal(t.out.n, before);
    dsla_proto_report_t rep;
    dsla_gateway_core_report(c, &rep);
    assert_int_equal(rep.rerouted, 1);
    /* no replica left to take it */
    dsla_gateway_core_on_peer(c, second, false);
    s = last("client-a", DSLA_MSG_ERROR);
    assert_int_equal(s->id, 5);
    dsla_proto_error_t err = error_of(s);
    assert_int_equal(err.code, DSLA_CODE_UNAVAILABLE);
    assert_non_null(strstr(err.message, second));
    assert_non_null(strstr(err.message, "no other replica is alive"));
    assert_int_equal(dsla_gateway_core_routes(c), 0);
    dsla_gateway_core_destroy(&c);
}

static void test_replica_dies_mid_stream(void **state) {
    (void)state;
    dsla_gateway_core_t *c = core_new(2, 0);
    const sent_t *s = generate(c, "client-a", 6);
    char replica[64];
    snprintf(replica, sizeof replica, "%s", s->dst);
    dsla_gateway_core_on_token(c, replica, s->id, "Once", 4);
    dsla_gateway_core_on_peer(c, replica, false);
    s = last("client-a", DSLA_MSG_ERROR); /* not sent again anywhere */
    assert_int_equal(s->id, 6);
    dsla_proto_error_t err = error_of(s);
    assert_int_equal(err.code, DSLA_CODE_UNAVAILABLE);
    assert_non_null(strstr(err.message, replica));
    assert_non_null(strstr(err.message, "cannot be resumed"));
    assert_int_equal(dsla_gateway_core_routes(c), 0);
    dsla_proto_report_t rep;
    dsla_gateway_core_report(c, &rep);
    assert_int_equal(rep.errors, 1);
    assert_int_equal(rep.rerouted, 0);
    dsla_gateway_core_destroy(&c);
}

static void test_client_dies(void **state) {
    (void)state;
    dsla_gateway_core_t *c = core_new(2, 0);
    const sent_t *s = generate(c, "client-a", 1);
    char replica[64];
    snprintf(replica, sizeof replica, "%s", s->dst);
    uint64_t up = s->id;
    generate(c, "client-b", 1);
    dsla_gateway_core_on_peer(c, "client-a", false);
    s = last(replica, DSLA_MSG_CANCEL);
    dsla_proto_cancel_t m;
    assert_int_equal(dsla_proto_cancel_decode(s->body, s->len, &m), DSLA_OK);
    assert_int_equal(m.request, up);
    assert_int_equal(dsla_gateway_core_routes(c), 1);
    /* the replica's DONE "cancelled" finds no route, and nothing goes to the dead client */
    int before = t.out.n;
    dsla_gateway_core_on_done(c, replica, up, "done", 4);
    assert_int_equal(t.out.n, before);
    /* a client's CANCEL goes on to the replica; one naming nothing of that client is refused */
    dsla_proto_cancel_t cb = {.request = 1};
    dsla_proto_buf_t b;
    assert_int_equal(dsla_proto_cancel_encode(&cb, &b), DSLA_OK);
    assert_int_equal(dsla_gateway_core_on_cancel(c, "client-b", b.data, b.len), DSLA_OK);
    assert_int_equal(t.out.sent[t.out.n - 1].type, DSLA_MSG_CANCEL);
    assert_int_equal(dsla_gateway_core_on_cancel(c, "client-a", b.data, b.len),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "no running request 1 of this client"));
    dsla_proto_buf_free(&b);
    /* a client that cannot be reached has its request cancelled on the first frame it misses */
    s = generate(c, "client-c", 9);
    snprintf(replica, sizeof replica, "%s", s->dst);
    up = s->id;
    snprintf(t.out.unreachable, sizeof t.out.unreachable, "client-c");
    dsla_gateway_core_on_token(c, replica, up, "x", 1);
    s = last(replica, DSLA_MSG_CANCEL);
    assert_int_equal(dsla_proto_cancel_decode(s->body, s->len, &m), DSLA_OK);
    assert_int_equal(m.request, up);
    assert_int_equal(dsla_gateway_core_routes(c), 1);
    dsla_gateway_core_destroy(&c);
}

static void test_error_forwarded(void **state) {
    (void)state;
    dsla_gateway_core_t *c = core_new(2, 0);
    const sent_t *s = generate(c, "client-a", 3);
    const char *why = "max_tokens 9000 exceeds the model's context of 4096 minus the prompt's 812 "
                      "tokens";
    replica_error(c, s->dst, s->id, DSLA_CODE_INVALID_ARGUMENT, why);
    s = last("client-a", DSLA_MSG_ERROR);
    assert_int_equal(s->id, 3);
    dsla_proto_error_t err = error_of(s);
    assert_int_equal(err.code, DSLA_CODE_INVALID_ARGUMENT);
    assert_string_equal(err.message, why);
    assert_int_equal(dsla_gateway_core_routes(c), 0);
    /* a full replica's refusal moves the request to one with room instead */
    s = generate(c, "client-a", 4);
    char full[64];
    snprintf(full, sizeof full, "%s", s->dst);
    replica_error(c, full, s->id, DSLA_CODE_RESOURCE_EXHAUSTED, "queue full");
    s = &t.out.sent[t.out.n - 1];
    assert_int_equal(s->type, DSLA_MSG_GENERATE);
    assert_string_not_equal(s->dst, full);
    assert_int_equal(dsla_gateway_core_routes(c), 1);
    dsla_gateway_core_destroy(&c);
}

/* ---- random events ---- */

enum { CLIENTS = 4, PENDING_MAX = 64, STEPS = 20000 };

typedef struct {
    char replica[64];
    uint64_t id;
} pending_t;

static uint64_t rng_state;

static uint32_t rnd(uint32_t n) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33) % n;
}

/* Outstanding per replica add up to the routes, and the report agrees. */
static void check_invariants(const dsla_gateway_core_t *c) {
    dsla_proto_report_t rep;
    dsla_gateway_core_report(c, &rep);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < rep.n_replicas; i++)
        sum += rep.replicas[i].outstanding;
    assert_int_equal(sum, dsla_gateway_core_routes(c));
    assert_int_equal(rep.in_flight, dsla_gateway_core_routes(c));
}

static void test_no_leaks(void **state) {
    (void)state;
    rng_state = 12345;
    dsla_gateway_core_t *c = core_new(3, 32);
    pending_t pending[PENDING_MAX];
    int n_pending = 0;
    uint64_t next_id = 1;
    char client[32];
    for (int step = 0; step < STEPS; step++) {
        outbox_clear(&t.out);
        snprintf(client, sizeof client, "client-%u", rnd(CLIENTS));
        pending_t *p = n_pending ? &pending[rnd((uint32_t)n_pending)] : NULL;
        switch (rnd(10)) {
        case 0:
        case 1:
        case 2:
            dsla_gateway_core_on_generate(c, client, next_id++, body, sizeof body);
            break;
        case 3:
            if (p) dsla_gateway_core_on_token(c, p->replica, p->id, "t", 1);
            break;
        case 4:
        case 5:
            if (p) dsla_gateway_core_on_done(c, p->replica, p->id, "d", 1);
            break;
        case 6:
            if (p)
                replica_error(c, p->replica, p->id,
                              rnd(2) ? DSLA_CODE_RESOURCE_EXHAUSTED : DSLA_CODE_INTERNAL, "no");
            break;
        case 7:
            dsla_gateway_core_on_peer(c, replicas[rnd(3)].name, rnd(3) != 0);
            break;
        case 8:
            dsla_gateway_core_on_peer(c, client, false);
            break;
        default:
            snprintf(t.out.unreachable, sizeof t.out.unreachable, "%s", rnd(4) ? "" : client);
            break;
        }
        for (int i = 0; i < t.out.n; i++) /* what reached a replica may answer later */
            if (t.out.sent[i].type == DSLA_MSG_GENERATE) {
                pending_t *q =
                    n_pending < PENDING_MAX ? &pending[n_pending++] : &pending[rnd(PENDING_MAX)];
                snprintf(q->replica, sizeof q->replica, "%s", t.out.sent[i].dst);
                q->id = t.out.sent[i].id;
            }
        check_invariants(c);
    }
    assert_true(dsla_gateway_core_routes(c) > 0); /* the run did leave work in flight */
    /* every route belongs to a client: with all of them gone, none is left */
    for (int i = 0; i < CLIENTS; i++) {
        snprintf(client, sizeof client, "client-%d", i);
        dsla_gateway_core_on_peer(c, client, false);
    }
    check_invariants(c);
    assert_int_equal(dsla_gateway_core_routes(c), 0);
    dsla_gateway_core_destroy(&c);
}

/* STATUS goes to every replica not known dead; a replica's LOAD_REPORT travels in REPORT until it
 * dies; a malformed one leaves no load. */
static void test_load_polls(void **state) {
    (void)state;
    dsla_gateway_core_t *c = core_new(3, 0);
    dsla_gateway_core_on_peer(c, "serving2", false);
    int before = t.out.n;
    dsla_gateway_core_poll(c);
    assert_int_equal(t.out.n, before + 2);
    assert_string_equal(t.out.sent[before].dst, "serving0");
    assert_int_equal(t.out.sent[before].type, DSLA_MSG_STATUS);
    assert_string_equal(t.out.sent[before + 1].dst, "serving1");
    dsla_proto_load_report_t *l = calloc(1, sizeof *l);
    *l = (dsla_proto_load_report_t){.num_layers = 4, .running = 3, .has_totals = true};
    l->hist[DSLA_PROTO_HIST_TTFT].counts[5] = 7;
    l->hist[DSLA_PROTO_HIST_TTFT].count = 7;
    dsla_proto_buf_t b;
    assert_int_equal(dsla_proto_load_report_encode(l, &b), DSLA_OK);
    dsla_gateway_core_on_load(c, "serving1", b.data, b.len);
    dsla_gateway_core_on_load(c, "nobody", b.data, b.len); /* ignored */
    dsla_gateway_core_on_load(c, "serving0", "\x01", 1);   /* malformed: no load */
    dsla_proto_buf_free(&b);
    dsla_proto_report_t *rep = calloc(1, sizeof *rep);
    dsla_gateway_core_report(c, rep);
    assert_false(rep->replicas[0].has_load);
    assert_true(rep->replicas[1].has_load);
    assert_int_equal(rep->replicas[1].load.running, 3);
    assert_int_equal(rep->replicas[1].load.hist[DSLA_PROTO_HIST_TTFT].count, 7);
    dsla_gateway_core_on_peer(c, "serving1", false); /* its figures are gone with it */
    dsla_gateway_core_report(c, rep);
    assert_false(rep->replicas[1].has_load);
    free(rep);
    free(l);
    dsla_gateway_core_destroy(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_least_loaded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replica_dies_before_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replica_dies_mid_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_dies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_forwarded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_leaks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_polls, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

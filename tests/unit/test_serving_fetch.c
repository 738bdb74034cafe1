/* The serving actor's layer fetch with a slow disk: a real serving actor (stories260K on the CPU,
 * a layer cache) and a fake controller actor that answers LAYER_FETCH from a layer version file.
 * The first chunk's write is held on the worker (the actor's fetch_write_hook) until the test lets
 * it go. Meanwhile the serving loop must keep going: LOAD_REPORTs keep arriving at the controller,
 * no second write starts before the first ends (order), and at most one more chunk is asked for
 * (one waits behind the write). Released, the fetch completes and the plan is ACKed, every chunk
 * written once, the cached file equal to the served one. Counts and ordering only, no timings:
 * every wait is a bounded poll on a counter. */
#include "tests/testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "actors/serving.h"
#include "actors/transfer.h"
#include "runtime/core/clock.h"
#include "runtime/model/dsla_layer.h"
#include "runtime/model/tokenizer.h"
#include "tests/unit/serve_harness.h"

enum {
    CHUNK = 4096,
    LAYER = 1,
    REPORT_MS = 20,
    WAIT_MS = 30000,         /* generous: shared cores, sanitizers */
    REPORTS_WHILE_HELD = 10, /* load reports the loop must send while the write is held */
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool released;
    atomic_int writes;      /* write jobs started on the worker */
    atomic_int reports;     /* LOAD_REPORTs the controller got */
    atomic_int fetches;     /* LAYER_FETCHes the controller got */
    atomic_int acks, nacks; /* answers to the SET_PLAN */
    atomic_int failures;    /* sends that failed on the controller's thread */
    atomic_bool plan_sent;  /* the controller's thread only */
    char *bytes;            /* the version the controller serves */
    size_t size;
    uint64_t xxh, checksum;
} w;

/* On the worker, before each chunk is written: the first write waits for the test. */
static void slow_disk(void *user) {
    (void)user;
    if (atomic_fetch_add(&w.writes, 1) != 0) return;
    pthread_mutex_lock(&w.lock);
    while (!w.released)
        pthread_cond_wait(&w.cond, &w.lock);
    pthread_mutex_unlock(&w.lock);
}

static void release_disk(void) {
    pthread_mutex_lock(&w.lock);
    w.released = true;
    pthread_cond_broadcast(&w.cond);
    pthread_mutex_unlock(&w.lock);
}

/* Polls until *v reaches target or WAIT_MS passes; returns whether it did. */
static bool wait_for(atomic_int *v, int target) {
    const uint64_t deadline = dsla_clock_ms() + WAIT_MS;
    const struct timespec tick = {0, 1000000};
    while (atomic_load(v) < target) {
        if (dsla_clock_ms() > deadline) return false;
        nanosleep(&tick, NULL);
    }
    return true;
}

/* ---- the fake controller (its own actor thread) ---- */

static void send_set_plan(dsla_actor_t *a, const char *to) {
    dsla_proto_plan_layer_t l = {.layer = LAYER,
                                 .checksum = w.checksum,
                                 .path = "/nonexistent/served-by-chunks.safetensors",
                                 .version = 3,
                                 .size = w.size,
                                 .xxh64 = w.xxh};
    dsla_proto_set_plan_t sp = {.seq = 1, .n_layers = 1, .layers = &l};
    dsla_proto_buf_t body;
    if (dsla_proto_set_plan_encode(&sp, &body) != DSLA_OK ||
        dsla_actor_send(a, to, DSLA_MSG_SET_PLAN, 1, body.data, body.len) != DSLA_OK)
        atomic_fetch_add(&w.failures, 1);
    dsla_proto_buf_free(&body);
}

static void on_report(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)user;
    atomic_fetch_add(&w.reports, 1);
    if (!atomic_exchange(&w.plan_sent, true)) send_set_plan(a, msg->from);
}

static void on_fetch(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)user;
    atomic_fetch_add(&w.fetches, 1);
    dsla_proto_layer_fetch_t f;
    if (dsla_proto_layer_fetch_decode(msg->env->body, msg->env->body_len, &f) != DSLA_OK ||
        f.offset > w.size) {
        atomic_fetch_add(&w.failures, 1);
        return;
    }
    const size_t n = w.size - f.offset < f.max_len ? w.size - f.offset : f.max_len;
    dsla_proto_layer_chunk_t c = {.layer = f.layer,
                                  .version = f.version,
                                  .xxh64 = f.xxh64,
                                  .offset = f.offset,
                                  .total_size = w.size,
                                  .bytes = w.bytes + f.offset,
                                  .len = n};
    dsla_proto_buf_t body;
    if (dsla_proto_layer_chunk_encode(&c, &body) != DSLA_OK ||
        dsla_actor_reply(a, msg, DSLA_MSG_LAYER_CHUNK, body.data, body.len) != DSLA_OK)
        atomic_fetch_add(&w.failures, 1);
    dsla_proto_buf_free(&body);
}

static void on_ack(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a, (void)msg, (void)user;
    atomic_fetch_add(&w.acks, 1);
}

static void on_nack(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a, (void)user;
    dsla_proto_plan_reply_t *r = malloc(sizeof *r);
    if (r && dsla_proto_plan_reply_decode(msg->env->body, msg->env->body_len, r) == DSLA_OK)
        fprintf(stderr, "PLAN_NACK: %s\n", r->reason);
    free(r);
    atomic_fetch_add(&w.nacks, 1);
}

static void test_slow_write_does_not_stall_the_loop(void **state) {
    (void)state;
    char *model_dir = dsla_test_data_or_skip("models/stories260K-hf");
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    dsla_model_t *model = harness_load_model(model_dir);
    dsla_tokenizer_t *tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&tok, model_dir), "tokenizer");
    char *dir = dsla_test_tempdir();
    char file[1024], cache[1024];
    snprintf(file, sizeof file, "%s/layer-%d.safetensors", dir, LAYER);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    dsla_dsla_layer_t *l = NULL;
    harness_ok(dsla_dsla_layer_create(&l, dsla_model_config(model), LAYER), "layer");
    harness_ok(dsla_dsla_layer_init_from_teacher(l, model, LAYER, 7), "init");
    w.checksum = dsla_dsla_layer_checksum(l);
    harness_ok(dsla_dsla_layer_save(l, file, NULL), "save");
    dsla_dsla_layer_destroy(&l);
    w.bytes = dsla_test_read_file(file, &w.size);
    assert_non_null(w.bytes);
    const int chunks = (int)((w.size + CHUNK - 1) / CHUNK);
    assert_true(chunks >= 4);
    w.xxh = XXH64(w.bytes, w.size, 0);

    dsla_actor_ctx_t *ctx = NULL;
    harness_ok(dsla_actor_ctx_create(&ctx), "context");
    static const dsla_actor_handler_t handlers[] = {{DSLA_MSG_LOAD_REPORT, on_report},
                                                    {DSLA_MSG_LAYER_FETCH, on_fetch},
                                                    {DSLA_MSG_PLAN_ACK, on_ack},
                                                    {DSLA_MSG_PLAN_NACK, on_nack}};
    dsla_actor_def_t cdef = {.name = "controller",
                             .ctx = ctx,
                             .bind = {"inproc://fetch-controller"},
                             .handlers = handlers,
                             .n_handlers = sizeof handlers / sizeof handlers[0]};
    dsla_actor_t *controller = NULL;
    harness_ok(dsla_actor_create(&controller, &cdef), "controller");
    dsla_serving_config_t sc = {.name = "serving0",
                                .ctx = ctx,
                                .endpoint = "inproc://fetch-serving",
                                .model = model,
                                .tokenizer = tok,
                                .engine = dsla_engine_config_default(),
                                .controller = "inproc://fetch-controller",
                                .report_ms = REPORT_MS,
                                .layer_cache = cache,
                                .fetch_chunk = CHUNK,
                                .fetch_write_hook = slow_disk};
    dsla_serving_t *serving = NULL;
    harness_ok(dsla_serving_create(&serving, &sc), "serving actor");

    /* the first chunk is on the (held) disk */
    assert_true(wait_for(&w.writes, 1));
    const int reports = atomic_load(&w.reports);
    /* the loop goes on: load reports keep coming while the write is held */
    if (!wait_for(&w.reports, reports + REPORTS_WHILE_HELD))
        fail_msg("%d LOAD_REPORTs while a chunk write was held: the loop waits for the disk",
                 atomic_load(&w.reports) - reports);
    assert_int_equal(atomic_load(&w.writes), 1); /* no write overtakes the held one */
    assert_true(atomic_load(&w.fetches) <= 2);   /* one chunk waits behind it, no more */
    assert_int_equal(atomic_load(&w.acks) + atomic_load(&w.nacks), 0);
    release_disk();
    assert_true(wait_for(&w.acks, 1));
    assert_int_equal(atomic_load(&w.nacks), 0);
    assert_int_equal(atomic_load(&w.failures), 0);
    assert_int_equal(atomic_load(&w.writes), chunks); /* each chunk written once */
    assert_int_equal(atomic_load(&w.fetches), chunks);

    dsla_serving_destroy(&serving);
    dsla_actor_destroy(&controller);
    dsla_actor_ctx_destroy(&ctx);
    const dsla_proto_plan_layer_t pl = {
        .layer = LAYER, .version = 3, .size = w.size, .xxh64 = w.xxh};
    char cached[1200];
    harness_ok(dsla_transfer_cache_path(cache, &pl, cached, sizeof cached), "cache path");
    size_t n = 0;
    char *copy = dsla_test_read_file(cached, &n);
    assert_non_null(copy);
    assert_int_equal(n, w.size);
    assert_memory_equal(copy, w.bytes, w.size);
    free(copy);
    free(w.bytes);
    dsla_test_rmtree(dir);
    free(dir);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&model);
    free(model_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slow_write_does_not_stall_the_loop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

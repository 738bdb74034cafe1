/* actors/serving_plan: the serving actor's plan changes driven in-process, with a fake send, a
 * virtual clock and the load and adoption run by the test where the actor would hand them to a
 * worker and to the engine thread. A layer version of stories260K (initialised from the teacher)
 * is the file a controller would serve.
 * - without a cache: load, adopt, PLAN_ACK naming the new plan; a wrong checksum is PLAN_NACK and
 *   the old plan stays; a refusal by the engine is PLAN_NACK; a plan of every layer, read by
 *   several threads, is the plan read in order, and its one bad checksum the NACK;
 * - with a cache: the file fetched chunk by chunk, PLAN_ACK; the controller dying mid-fetch
 *   (no chunk within the timeout) is PLAN_NACK DEADLINE_EXCEEDED; a corrupt chunk is a hash
 *   mismatch and PLAN_NACK; the controller's ERROR is PLAN_NACK with its code; stale chunks are
 *   ignored; a newer SET_PLAN supersedes a fetch (PLAN_NACK CANCELLED); a fetched version is not
 *   fetched again. Every NACK goes to the SET_PLAN's sender with the reason and the kept plan.
 * - the writes, which the actor runs on a worker: one at a time, in the chunks' order, the next
 *   LAYER_FETCH out while a chunk is written but none more while one waits behind it; time spent
 *   on the disk is no fetch timeout; a failed write is PLAN_NACK with its reason; a change ended
 *   while a write is out leaves the job owning its transfer, which goes with it. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "actors/serving_plan.h"
#include "runtime/model/dsla_layer.h"
#include "tests/unit/serve_harness.h"
#include "tests/unit/outbox.h"

enum { CHUNK = 4096, TIMEOUT_MS = 5000, LAYER = 1 };

static struct {
    outbox_t out;
    dsla_serving_load_t *job;   /* a load asked for, not yet run */
    dsla_serving_write_t *wjob; /* a write asked for, not yet run */
    int writes;                 /* write jobs asked for */
    dsla_plan_t *adopting;      /* a plan handed to the "engine" */
    uint64_t now;
    dsla_model_t *model;
    char *dir;
    char file[1024]; /* the layer version the "controller" serves */
    char *bytes;
    size_t size;
    uint64_t xxh, checksum;
} t;

static dsla_status_t fake_send(void *user, const char *dst, uint32_t type, uint64_t id,
                               const void *body, size_t len) {
    (void)user;
    return outbox_send(&t.out, dst, type, id, body, len);
}

static dsla_status_t fake_load(void *user, dsla_serving_load_t *job) {
    (void)user;
    assert_null(t.job);
    t.job = job;
    return DSLA_OK;
}

static dsla_status_t fake_write(void *user, dsla_serving_write_t *job) {
    (void)user;
    assert_null(t.wjob); /* one write at a time */
    t.wjob = job;
    t.writes++;
    return DSLA_OK;
}

/* The worker's write of the chunk handed out, then its done callback. */
static void run_write(dsla_serving_plans_t *p) {
    assert_non_null(t.wjob);
    dsla_serving_write_t *job = t.wjob;
    t.wjob = NULL;
    dsla_serving_write_run(job);
    dsla_serving_plans_written(p, job, false, t.now);
}

static dsla_status_t fake_adopt(void *user, dsla_plan_t **plan) {
    (void)user;
    assert_null(t.adopting);
    t.adopting = *plan;
    *plan = NULL;
    return DSLA_OK;
}

static const sent_t *last_sent(void) {
    assert_true(t.out.n > 0);
    return &t.out.sent[t.out.n - 1];
}

/* The worker's part, then its done callback. */
static void run_load(dsla_serving_plans_t *p) {
    assert_non_null(t.job);
    assert_false(t.job->probe);
    dsla_serving_load_t *job = t.job;
    t.job = NULL;
    dsla_serving_load_run(job);
    dsla_serving_plans_loaded(p, job, false, t.now);
}

/* The worker's check of the cache before a fetch; cached: what it must find. */
static void probe(dsla_serving_plans_t *p, bool cached) {
    assert_non_null(t.job);
    assert_true(t.job->probe);
    dsla_serving_load_t *job = t.job;
    t.job = NULL;
    dsla_serving_load_run(job);
    assert_int_equal(job->cached[0], cached);
    dsla_serving_plans_loaded(p, job, false, t.now);
}

/* The engine thread's adoption at its next step boundary. */
static void run_adopt(dsla_serving_plans_t *p, uint64_t plan_id) {
    assert_non_null(t.adopting);
    assert_int_equal(dsla_plan_num_dsla(t.adopting), 1);
    dsla_plan_release(&t.adopting);
    dsla_serving_plans_adopted(p, DSLA_OK, plan_id, "", t.now);
}

static dsla_serving_plans_t *plans_new(const char *cache) {
    dsla_serving_plans_config_t c = {.mcfg = dsla_model_config(t.model),
                                     .layer_cache = cache,
                                     .fetch_chunk = CHUNK,
                                     .fetch_timeout_ms = TIMEOUT_MS,
                                     .plan_id = 1};
    dsla_serving_plan_ops_t ops = {
        .send = fake_send, .load = fake_load, .write = fake_write, .adopt = fake_adopt};
    dsla_serving_plans_t *p = NULL;
    harness_ok(dsla_serving_plans_create(&p, &c, &ops), "plans");
    return p;
}

/* SET_PLAN seq naming layers[0..n) from "controller" with id 100+seq. */
static void set_plan_layers(dsla_serving_plans_t *p, uint64_t seq, dsla_proto_plan_layer_t *layers,
                            uint32_t n) {
    dsla_proto_set_plan_t sp = {.seq = seq, .n_layers = n, .layers = layers};
    dsla_proto_buf_t body;
    harness_ok(dsla_proto_set_plan_encode(&sp, &body), "encode SET_PLAN");
    harness_ok(
        dsla_serving_plans_on_set_plan(p, "controller", 100 + seq, body.data, body.len, t.now),
        "SET_PLAN");
    dsla_proto_buf_free(&body);
}

/* SET_PLAN seq naming the served version (checksum as given). */
static void set_plan(dsla_serving_plans_t *p, uint64_t seq, uint64_t checksum) {
    dsla_proto_plan_layer_t l = {.layer = LAYER,
                                 .checksum = checksum,
                                 .path = t.file,
                                 .version = 3,
                                 .size = t.size,
                                 .xxh64 = t.xxh};
    set_plan_layers(p, seq, &l, 1);
}

/* The last message must be the answer to SET_PLAN seq: ACK or NACK (with code and a reason
 * containing needle), naming plan_id. */
static void assert_answer(uint64_t seq, bool ack, dsla_proto_code_t code, const char *needle,
                          uint64_t plan_id, uint32_t n_dsla) {
    const sent_t *s = last_sent();
    assert_string_equal(s->dst, "controller");
    assert_int_equal(s->id, 100 + seq);
    assert_int_equal(s->type, ack ? DSLA_MSG_PLAN_ACK : DSLA_MSG_PLAN_NACK);
    dsla_proto_plan_reply_t *r = malloc(sizeof *r);
    harness_ok(dsla_proto_plan_reply_decode(s->body, s->len, r), "decode plan reply");
    assert_int_equal(r->seq, seq);
    assert_int_equal(r->plan_id, plan_id);
    assert_int_equal(r->n_dsla, n_dsla);
    if (!ack) {
        assert_int_equal(r->code, code);
        if (!strstr(r->reason, needle)) fail_msg("reason '%s' lacks '%s'", r->reason, needle);
    }
    free(r);
}

/* Answers the LAYER_FETCH last sent with its chunk of the file; corrupt flips a byte in it. */
static void answer_fetch(dsla_serving_plans_t *p, bool corrupt) {
    const sent_t *s = last_sent();
    assert_int_equal(s->type, DSLA_MSG_LAYER_FETCH);
    assert_string_equal(s->dst, "controller");
    dsla_proto_layer_fetch_t f;
    harness_ok(dsla_proto_layer_fetch_decode(s->body, s->len, &f), "decode LAYER_FETCH");
    assert_int_equal(f.layer, LAYER);
    assert_true(f.offset < t.size);
    size_t n = t.size - f.offset < f.max_len ? t.size - f.offset : f.max_len;
    char *bytes = malloc(n);
    memcpy(bytes, t.bytes + f.offset, n);
    if (corrupt) bytes[n / 2] ^= 0x5a;
    dsla_proto_layer_chunk_t c = {.layer = f.layer,
                                  .version = f.version,
                                  .xxh64 = f.xxh64,
                                  .offset = f.offset,
                                  .total_size = t.size,
                                  .bytes = bytes,
                                  .len = n};
    dsla_proto_buf_t body;
    harness_ok(dsla_proto_layer_chunk_encode(&c, &body), "encode LAYER_CHUNK");
    uint64_t id = s->id;
    dsla_serving_plans_on_chunk(p, "controller", id, body.data, body.len, t.now);
    dsla_proto_buf_free(&body);
    free(bytes);
}

/* One round trip: the chunk answered, then written by the "worker". */
static void fetch_chunk(dsla_serving_plans_t *p, bool corrupt) {
    answer_fetch(p, corrupt);
    run_write(p);
}

static int setup(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    memset(&t, 0, sizeof t);
    t.model = harness_load_model(model);
    free(model);
    t.dir = dsla_test_tempdir();
    snprintf(t.file, sizeof t.file, "%s/layer-%d.safetensors", t.dir, LAYER);
    dsla_dsla_layer_t *l = NULL;
    harness_ok(dsla_dsla_layer_create(&l, dsla_model_config(t.model), LAYER), "layer");
    harness_ok(dsla_dsla_layer_init_from_teacher(l, t.model, LAYER, 7), "init");
    t.checksum = dsla_dsla_layer_checksum(l);
    harness_ok(dsla_dsla_layer_save(l, t.file, NULL), "save");
    dsla_dsla_layer_destroy(&l);
    t.bytes = dsla_test_read_file(t.file, &t.size);
    assert_non_null(t.bytes);
    assert_true(t.size > 4 * CHUNK); /* several round trips */
    t.xxh = XXH64(t.bytes, t.size, 0);
    t.now = 1000000;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    outbox_clear(&t.out);
    free(t.bytes);
    dsla_test_rmtree(t.dir);
    free(t.dir);
    dsla_model_destroy(&t.model);
    return 0;
}

static void test_load_adopt_ack(void **state) {
    (void)state;
    dsla_serving_plans_t *p = plans_new(NULL);
    /* a body that does not decode is the caller's to answer with ERROR; nothing starts */
    assert_int_not_equal(dsla_serving_plans_on_set_plan(p, "controller", 9, "\xc1", 1, t.now),
                         DSLA_OK);
    assert_false(dsla_serving_plans_busy(p));
    assert_int_equal(t.out.n, 0);
    set_plan(p, 1, t.checksum);
    assert_int_equal(t.out.n, 0); /* nothing is answered before the engine adopts */
    run_load(p);
    assert_int_equal(t.out.n, 0);
    assert_true(dsla_serving_plans_busy(p));
    run_adopt(p, 2);
    assert_answer(1, true, DSLA_CODE_OK, "", 2, 1);
    const dsla_proto_dsla_layer_t *layers;
    assert_int_equal(dsla_serving_plans_dsla(p, &layers), 1);
    assert_int_equal(layers[0].layer, LAYER);
    assert_true(layers[0].checksum == t.checksum);
    assert_int_equal(dsla_serving_plans_id(p), 2);
    assert_false(dsla_serving_plans_busy(p));
    dsla_serving_plans_destroy(&p);
}

static void test_bad_checksum_nack_keeps_plan(void **state) {
    (void)state;
    dsla_serving_plans_t *p = plans_new(NULL);
    set_plan(p, 1, t.checksum ^ 1);
    run_load(p);
    assert_null(t.adopting); /* never reaches the engine */
    assert_answer(1, false, dsla_proto_code_from_status(DSLA_ERR_FORMAT), "checksum", 1, 0);
    /* the engine's refusal is a NACK too */
    set_plan(p, 2, t.checksum);
    run_load(p);
    assert_non_null(t.adopting);
    dsla_plan_release(&t.adopting);
    dsla_serving_plans_adopted(p, DSLA_ERR_INVALID_ARGUMENT, 1,
                               "plan: layer 1 shaped for another "
                               "model",
                               t.now);
    assert_answer(2, false, DSLA_CODE_INVALID_ARGUMENT, "another model", 1, 0);
    dsla_serving_plans_destroy(&p);
}

/* A SET_PLAN of every layer: its versions are read by several threads at once (LOAD_THREADS),
 * and the plan is the same as one read in order. A bad checksum in the middle is the NACK, naming
 * that layer, however the threads took the entries; the good ones are adopted together. */
static void test_versions_load_together(void **state) {
    (void)state;
    const dsla_model_config_t *cfg = dsla_model_config(t.model);
    const int n = cfg->num_layers;
    assert_true(n >= 3);
    dsla_proto_plan_layer_t *ls = calloc((size_t)n, sizeof *ls);
    char(*paths)[1024] = calloc((size_t)n, sizeof *paths);
    for (int i = 0; i < n; i++) { /* listed in descending order: the ACK lists them ascending */
        const int layer = n - 1 - i;
        snprintf(paths[i], sizeof paths[i], "%s/all-%d.safetensors", t.dir, layer);
        dsla_dsla_layer_t *l = NULL;
        harness_ok(dsla_dsla_layer_create(&l, cfg, layer), "layer");
        harness_ok(dsla_dsla_layer_init_from_teacher(l, t.model, layer, 11 + layer), "init");
        ls[i] = (dsla_proto_plan_layer_t){
            .layer = layer, .checksum = dsla_dsla_layer_checksum(l), .path = paths[i]};
        harness_ok(dsla_dsla_layer_save(l, paths[i], NULL), "save");
        dsla_dsla_layer_destroy(&l);
    }
    dsla_serving_plans_t *p = plans_new(NULL);
    const int bad = n / 2;
    for (uint64_t seq = 1; seq <= 2; seq++) {
        ls[bad].checksum ^= 1; /* wrong first, then right again */
        set_plan_layers(p, seq, ls, (uint32_t)n);
        run_load(p);
        if (seq == 1) {
            assert_null(t.adopting);
            char needle[64];
            snprintf(needle, sizeof needle, "layer %d: ", ls[bad].layer);
            assert_answer(1, false, dsla_proto_code_from_status(DSLA_ERR_FORMAT), needle, 1, 0);
            continue;
        }
        assert_non_null(t.adopting);
        const dsla_dsla_layer_t *const *w = dsla_plan_layers(t.adopting);
        for (int i = 0; i < n; i++) {
            assert_non_null(w[ls[i].layer]);
            assert_int_equal(w[ls[i].layer]->layer, ls[i].layer);
            assert_true(dsla_dsla_layer_checksum(w[ls[i].layer]) == ls[i].checksum);
        }
        dsla_plan_release(&t.adopting);
        dsla_serving_plans_adopted(p, DSLA_OK, 2, "", t.now);
        assert_answer(2, true, DSLA_CODE_OK, "", 2, (uint32_t)n);
        const dsla_proto_dsla_layer_t *layers;
        assert_int_equal(dsla_serving_plans_dsla(p, &layers), n);
        for (int l = 0; l < n; l++)
            assert_int_equal(layers[l].layer, l);
    }
    dsla_serving_plans_destroy(&p);
    free(paths);
    free(ls);
}

/* With a layer key the replica adopts only versions carrying its MAC: the unsealed file is NACKed
 * PERMISSION_DENIED naming the missing MAC, one sealed with another key too; sealed with the key,
 * the same layer is adopted. */
static void test_layer_mac_checked_before_adopting(void **state) {
    (void)state;
    dsla_layer_key_t key = {{1, 2, 3}}, other = {{9}};
    dsla_serving_plans_config_t c = {.mcfg = dsla_model_config(t.model),
                                     .fetch_chunk = CHUNK,
                                     .fetch_timeout_ms = TIMEOUT_MS,
                                     .plan_id = 1,
                                     .layer_key = &key};
    dsla_serving_plan_ops_t ops = {.send = fake_send, .load = fake_load, .adopt = fake_adopt};
    dsla_serving_plans_t *p = NULL;
    harness_ok(dsla_serving_plans_create(&p, &c, &ops), "plans");
    set_plan(p, 1, t.checksum);
    run_load(p);
    assert_null(t.adopting);
    assert_answer(1, false, DSLA_CODE_PERMISSION_DENIED, "no layer MAC", 1, 0);

    dsla_dsla_layer_t *l = NULL;
    harness_ok(dsla_dsla_layer_create(&l, dsla_model_config(t.model), LAYER), "layer");
    harness_ok(dsla_dsla_layer_init_from_teacher(l, t.model, LAYER, 7), "init");
    harness_ok(dsla_dsla_layer_save_sealed(l, t.file, NULL, &other), "save sealed");
    set_plan(p, 2, t.checksum);
    run_load(p);
    assert_null(t.adopting);
    assert_answer(2, false, DSLA_CODE_PERMISSION_DENIED, "does not match", 1, 0);

    harness_ok(dsla_dsla_layer_save_sealed(l, t.file, NULL, &key), "save sealed");
    dsla_dsla_layer_destroy(&l);
    set_plan(p, 3, t.checksum);
    run_load(p);
    run_adopt(p, 2);
    assert_answer(3, true, DSLA_CODE_OK, "", 2, 1);
    dsla_serving_plans_destroy(&p);
}

static void cache_dir(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", t.dir, name);
}

static void test_fetch_chunks_then_ack(void **state) {
    (void)state;
    char cache[1024];
    cache_dir(cache, sizeof cache, "cache-ok");
    dsla_serving_plans_t *p = plans_new(cache);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    int chunks = 0;
    while (!t.job) {
        fetch_chunk(p, false);
        chunks++;
        t.now += 10;
    }
    assert_int_equal(chunks, (int)((t.size + CHUNK - 1) / CHUNK));
    /* the load reads the cache's copy, not the controller's path */
    assert_non_null(strstr(t.job->request.layers[0].path, cache));
    run_load(p);
    run_adopt(p, 2);
    assert_answer(1, true, DSLA_CODE_OK, "", 2, 1);
    /* the same version again: straight from the cache, no LAYER_FETCH */
    int before = t.out.n;
    set_plan(p, 2, t.checksum);
    probe(p, true);
    assert_int_equal(t.out.n, before);
    run_load(p);
    run_adopt(p, 3);
    assert_answer(2, true, DSLA_CODE_OK, "", 3, 1);
    dsla_serving_plans_destroy(&p);
}

static void test_controller_dies_mid_fetch(void **state) {
    (void)state;
    char cache[1024];
    cache_dir(cache, sizeof cache, "cache-dead");
    dsla_serving_plans_t *p = plans_new(cache);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    fetch_chunk(p, false);
    fetch_chunk(p, false); /* then silence */
    const int fetches = t.out.n;
    t.now += TIMEOUT_MS - 1;
    dsla_serving_plans_on_tick(p, t.now);
    assert_int_equal(t.out.n, fetches);
    assert_true(dsla_serving_plans_busy(p));
    t.now += 1;
    dsla_serving_plans_on_tick(p, t.now);
    assert_answer(1, false, DSLA_CODE_DEADLINE_EXCEEDED, "within 5000 ms", 1, 0);
    assert_false(dsla_serving_plans_busy(p));
    assert_null(t.job);
    /* a chunk that arrives after the NACK changes nothing */
    const int after = t.out.n;
    dsla_serving_plans_on_chunk(p, "controller", t.out.sent[fetches - 1].id, "x", 1, t.now);
    assert_int_equal(t.out.n, after);
    dsla_serving_plans_destroy(&p);
}

static void test_corrupt_chunk_nack(void **state) {
    (void)state;
    char cache[1024];
    cache_dir(cache, sizeof cache, "cache-corrupt");
    dsla_serving_plans_t *p = plans_new(cache);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    fetch_chunk(p, true); /* the first chunk's bytes are damaged on the way */
    while (last_sent()->type == DSLA_MSG_LAYER_FETCH)
        fetch_chunk(p, false);
    assert_answer(1, false, dsla_proto_code_from_status(DSLA_ERR_FORMAT), "xxh64", 1, 0);
    assert_null(t.job);
    dsla_serving_plans_destroy(&p);
}

static void test_controller_error_and_stale_chunks(void **state) {
    (void)state;
    char cache[1024];
    cache_dir(cache, sizeof cache, "cache-error");
    dsla_serving_plans_t *p = plans_new(cache);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    const sent_t fetch = *last_sent();
    /* a chunk under another id, or from another peer, is stale */
    dsla_serving_plans_on_chunk(p, "controller", fetch.id + 7, "x", 1, t.now);
    dsla_serving_plans_on_chunk(p, "intruder", fetch.id, "x", 1, t.now);
    assert_int_equal(last_sent()->type, DSLA_MSG_LAYER_FETCH);
    dsla_proto_error_t other = {.code = DSLA_CODE_INTERNAL};
    assert_false(dsla_serving_plans_on_error(p, "controller", fetch.id + 7, &other, t.now));
    dsla_proto_error_t err = {.code = DSLA_CODE_UNAVAILABLE};
    snprintf(err.message, sizeof err.message, "layer 1 version 3 is no longer in the catalogue");
    assert_true(dsla_serving_plans_on_error(p, "controller", fetch.id, &err, t.now));
    assert_answer(1, false, DSLA_CODE_UNAVAILABLE, "no longer in the catalogue", 1, 0);
    dsla_serving_plans_destroy(&p);
}

static void test_newer_plan_supersedes(void **state) {
    (void)state;
    char cache[1024];
    cache_dir(cache, sizeof cache, "cache-super");
    dsla_serving_plans_t *p = plans_new(cache);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    fetch_chunk(p, false);
    set_plan(p, 2, t.checksum); /* the first is answered CANCELLED, the second starts afresh */
    probe(p, false);
    int nack = -1;
    for (int i = 0; i < t.out.n; i++)
        if (t.out.sent[i].type == DSLA_MSG_PLAN_NACK) nack = i;
    assert_true(nack >= 0);
    assert_int_equal(t.out.sent[nack].id, 101);
    assert_int_equal(last_sent()->type, DSLA_MSG_LAYER_FETCH);
    while (!t.job)
        fetch_chunk(p, false);
    run_load(p);
    /* while a change is being adopted a newer one waits, and a third replaces the waiting one */
    set_plan(p, 3, t.checksum);
    set_plan(p, 4, t.checksum);
    assert_answer(3, false, DSLA_CODE_CANCELLED, "superseded", 1, 0);
    run_adopt(p, 2);
    assert_int_equal(t.out.sent[t.out.n - 1].type, DSLA_MSG_PLAN_ACK);
    assert_int_equal(t.out.sent[t.out.n - 1].id, 102);
    probe(p, true); /* plan 4, from the cache */
    run_load(p);
    run_adopt(p, 3);
    assert_answer(4, true, DSLA_CODE_OK, "", 3, 1);
    dsla_serving_plans_destroy(&p);
}

static void test_destroy_mid_fetch_and_load(void **state) {
    (void)state;
    char cache[1024];
    cache_dir(cache, sizeof cache, "cache-destroy");
    dsla_serving_plans_t *p = plans_new(cache);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    fetch_chunk(p, false);
    dsla_serving_plans_destroy(&p); /* the .part goes with it; nothing leaks (ASan) */
    p = plans_new(NULL);
    set_plan(p, 1, t.checksum);
    dsla_serving_load_t *job = t.job;
    t.job = NULL;
    dsla_serving_plans_loaded(p, job, true, t.now); /* the actor stopping: cancelled, unanswered */
    assert_int_equal(last_sent()->type, DSLA_MSG_LAYER_FETCH);
    dsla_serving_plans_destroy(&p);
}

/* The offset of the LAYER_FETCH last sent. */
static uint64_t last_fetch_offset(void) {
    const sent_t *s = last_sent();
    assert_int_equal(s->type, DSLA_MSG_LAYER_FETCH);
    dsla_proto_layer_fetch_t f;
    harness_ok(dsla_proto_layer_fetch_decode(s->body, s->len, &f), "decode LAYER_FETCH");
    return f.offset;
}

static void test_writes_in_order_off_the_loop(void **state) {
    (void)state;
    char cache[1024];
    cache_dir(cache, sizeof cache, "cache-order");
    dsla_serving_plans_t *p = plans_new(cache);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    /* chunk 0 accepted: its write goes out and chunk 1 is asked for at once */
    answer_fetch(p, false);
    assert_non_null(t.wjob);
    assert_int_equal(t.writes, 1);
    assert_int_equal(t.wjob->len, CHUNK);
    assert_memory_equal(t.wjob->bytes, t.bytes, CHUNK);
    assert_int_equal(last_fetch_offset(), CHUNK);
    /* chunk 1 arrives while chunk 0 is still on the disk: it waits, and nothing more is asked */
    const int sent = t.out.n;
    answer_fetch(p, false);
    assert_int_equal(t.out.n, sent);
    assert_int_equal(t.writes, 1);
    /* a disk slower than the fetch timeout is no timeout: no LAYER_FETCH is outstanding */
    t.now += 10 * TIMEOUT_MS;
    dsla_serving_plans_on_tick(p, t.now);
    assert_int_equal(t.out.n, sent);
    assert_true(dsla_serving_plans_busy(p));
    /* chunk 0 written: chunk 1's write goes out, and chunk 2 is asked for */
    run_write(p);
    assert_int_equal(t.writes, 2);
    assert_memory_equal(t.wjob->bytes, t.bytes + CHUNK, CHUNK);
    assert_int_equal(last_fetch_offset(), 2 * CHUNK);
    /* the rest, each write finishing before the next chunk comes */
    run_write(p);
    while (!t.job)
        fetch_chunk(p, false);
    assert_int_equal(t.writes, (int)((t.size + CHUNK - 1) / CHUNK));
    size_t n = 0;
    char *copy = dsla_test_read_file(t.job->request.layers[0].path, &n);
    assert_non_null(copy);
    assert_int_equal(n, t.size);
    assert_memory_equal(copy, t.bytes, t.size); /* byte for byte, in order */
    free(copy);
    run_load(p);
    run_adopt(p, 2);
    assert_answer(1, true, DSLA_CODE_OK, "", 2, 1);
    dsla_serving_plans_destroy(&p);
}

static void test_failed_write_nack(void **state) {
    (void)state;
    char cache[1024];
    cache_dir(cache, sizeof cache, "cache-full");
    dsla_serving_plans_t *p = plans_new(cache);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    fetch_chunk(p, false);
    answer_fetch(p, false);
    /* the worker's write fails (a full disk) */
    dsla_serving_write_t *job = t.wjob;
    t.wjob = NULL;
    job->status = dsla_error(DSLA_ERR_IO, "layer transfer: cannot write x.part: No space left");
    snprintf(job->message, sizeof job->message, "%s", dsla_last_error());
    dsla_serving_plans_written(p, job, false, t.now);
    assert_answer(1, false, dsla_proto_code_from_status(DSLA_ERR_IO), "No space left", 1, 0);
    assert_false(dsla_serving_plans_busy(p));
    /* the chunk asked for before the failure is stale when it comes */
    const int after = t.out.n;
    dsla_serving_plans_on_chunk(p, "controller", t.out.sent[after - 2].id, "x", 1, t.now);
    assert_int_equal(t.out.n, after);
    assert_null(t.wjob);
    dsla_serving_plans_destroy(&p);
}

static void test_change_ends_while_writing(void **state) {
    (void)state;
    char cache[1024];
    cache_dir(cache, sizeof cache, "cache-orphan");
    dsla_serving_plans_t *p = plans_new(cache);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    answer_fetch(p, false);
    answer_fetch(p, false); /* one write out, one waiting */
    /* a newer SET_PLAN ends the fetch: NACK CANCELLED at once, the write job keeps its transfer */
    set_plan(p, 2, t.checksum);
    assert_int_equal(t.out.sent[t.out.n - 1].type, DSLA_MSG_PLAN_NACK);
    assert_int_equal(t.out.sent[t.out.n - 1].id, 101);
    dsla_serving_write_t *old = t.wjob;
    t.wjob = NULL;
    assert_true(old->orphaned);
    probe(p, false); /* plan 2 starts its own fetch */
    answer_fetch(p, false);
    assert_non_null(t.wjob); /* plan 2's first write: the old job does not hold it up */
    /* the old job comes back: it frees itself and its .part, touching nothing of plan 2 */
    const int sent = t.out.n;
    dsla_serving_write_run(old);
    dsla_serving_plans_written(p, old, false, t.now);
    assert_int_equal(t.out.n, sent);
    run_write(p);
    while (!t.job)
        fetch_chunk(p, false);
    run_load(p);
    run_adopt(p, 2);
    assert_answer(2, true, DSLA_CODE_OK, "", 2, 1);
    dsla_serving_plans_destroy(&p);
    /* destroyed with a write out: the job is orphaned and freed by whoever holds it */
    char cache2[1024];
    cache_dir(cache2, sizeof cache2, "cache-orphan2");
    p = plans_new(cache2);
    set_plan(p, 1, t.checksum);
    probe(p, false);
    answer_fetch(p, false);
    old = t.wjob;
    t.wjob = NULL;
    dsla_serving_plans_destroy(&p);
    assert_true(old->orphaned);
    dsla_serving_write_free(&old); /* the .part goes too; nothing leaks (ASan) */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_adopt_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_checksum_nack_keeps_plan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_versions_load_together, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layer_mac_checked_before_adopting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fetch_chunks_then_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_controller_dies_mid_fetch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_chunk_nack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_controller_error_and_stale_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_plan_supersedes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_mid_fetch_and_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writes_in_order_off_the_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_write_nack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_change_ends_while_writing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

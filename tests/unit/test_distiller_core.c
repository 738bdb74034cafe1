/* actors/distiller_core: the distiller actor's state machine driven in-process, with a fake send
 * (tests/unit/outbox.h), a virtual clock and, where a run is needed, the real distillation engine
 * on stories260K (two layers, a few steps) whose callbacks the test wires to the machine the way
 * the actor's worker and loop do.
 * - samples arriving: PROMPT_SAMPLES fill the reservoir, the counts travel in DISTILL_PROGRESS,
 *   the run's pack takes them (and marks them used); a malformed body is an error, nothing sent;
 * - a layer finishing: LAYER_READY at once with the version's header, size and xxh64, then the
 *   progress with layers_done; progress at most once per progress_ms of the clock;
 * - the controller not answering: nothing sent while it is dead, everything in order once it is
 *   alive; a send refused (its queue full) is tried again at the next tick, in order, none lost or
 *   repeated; a controller found again gets every announcement anew;
 * - a restart resuming from its checkpoint: a run stopped inside its second layer (after a
 *   checkpoint) and started again on the same directory by a new machine resumes that layer at
 *   the step after the checkpoint, reports the kept first version again (same file, same hash)
 *   and the new machine announces both, in order, to a controller that comes later. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/distiller_core.h"
#include "runtime/model/tokenizer.h"
#include "tests/unit/outbox.h"
#include "tests/unit/serve_harness.h"

enum { PROGRESS_MS = 1000, SEQ_LEN = 64, RESERVOIR = 4 };

static outbox_t out;

static dsla_status_t fake_send(void *user, const char *dst, uint32_t type, uint64_t id,
                               const void *body, size_t len) {
    (void)user;
    return outbox_send(&out, dst, type, id, body, len);
}

static dsla_distiller_core_t *core_new(uint32_t progress_ms) {
    const dsla_distiller_core_config_t c = {.controller = "controller",
                                            .reservoir_prompts = RESERVOIR,
                                            .seq_len = SEQ_LEN,
                                            .seed = 7,
                                            .progress_ms = progress_ms,
                                            .first_message = "reading the teacher"};
    const dsla_distiller_core_ops_t ops = {.send = fake_send};
    dsla_distiller_core_t *core = NULL;
    harness_ok(dsla_distiller_core_create(&core, &c, &ops), "distiller core");
    return core;
}

/* The messages of a type sent so far. */
static int count(uint32_t type) {
    int n = 0;
    for (int i = 0; i < out.n; i++)
        n += out.sent[i].type == type;
    return n;
}

static void decode_progress(const sent_t *s, dsla_proto_distill_progress_t *p) {
    assert_int_equal(s->type, DSLA_MSG_DISTILL_PROGRESS);
    assert_string_equal(s->dst, "controller");
    harness_ok(dsla_proto_distill_progress_decode(s->body, s->len, p), "decode progress");
}

/* The last DISTILL_PROGRESS sent. */
static void last_progress(dsla_proto_distill_progress_t *p) {
    for (int i = out.n - 1; i >= 0; i--)
        if (out.sent[i].type == DSLA_MSG_DISTILL_PROGRESS) {
            decode_progress(&out.sent[i], p);
            return;
        }
    fail_msg("no DISTILL_PROGRESS was sent");
}

/* The layers of the LAYER_READYs sent, in order, into layers (at most max); returns the count. */
static int announced(int *layers, int max) {
    int n = 0;
    for (int i = 0; i < out.n; i++) {
        if (out.sent[i].type != DSLA_MSG_LAYER_READY) continue;
        dsla_proto_layer_ready_t r;
        harness_ok(dsla_proto_layer_ready_decode(out.sent[i].body, out.sent[i].len, &r),
                   "decode LAYER_READY");
        assert_true(n < max);
        layers[n++] = r.layer;
    }
    return n;
}

/* An announcement as the worker would build it (no file: the machine only carries it). */
static dsla_proto_layer_ready_t *ready(int layer, uint32_t version) {
    dsla_proto_layer_ready_t *a = calloc(1, sizeof *a);
    *a = (dsla_proto_layer_ready_t){.layer = layer,
                                    .version = version,
                                    .position = 0,
                                    .n_order = 1,
                                    .checksum = 0x1234 + (uint64_t)layer,
                                    .size = 100,
                                    .xxh64 = 0xabc};
    snprintf(a->path, sizeof a->path, "/layers/layer-%d.safetensors", layer);
    return a;
}

static void samples_body(dsla_proto_buf_t *body, const int32_t *ids, const uint32_t *lens,
                         uint32_t n) {
    dsla_proto_prompt_samples_t p = {.n_prompts = n, .ids = ids};
    uint32_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        p.lens[i] = lens[i];
        total += lens[i];
    }
    p.n_ids = total;
    harness_ok(dsla_proto_prompt_samples_encode(&p, body), "encode PROMPT_SAMPLES");
}

static void test_samples_arrive_and_are_packed(void **state) {
    (void)state;
    dsla_distiller_core_t *c = core_new(0);
    uint64_t now = 1000;
    dsla_distiller_core_on_peer(c, "controller", true, now);
    dsla_proto_distill_progress_t p;
    last_progress(&p); /* found: the progress before the run's first report */
    assert_int_equal(p.state, DSLA_PROTO_DISTILL_LOADING);
    assert_string_equal(p.message, "reading the teacher");
    assert_int_equal(p.samples_received, 0);
    /* a malformed body is the caller's to answer; nothing changes */
    const int before = out.n;
    assert_int_not_equal(dsla_distiller_core_on_samples(c, "\xc1", 1), DSLA_OK);
    dsla_distiller_core_on_tick(c, ++now);
    assert_int_equal(out.n, before);
    /* three prompts (one with an id beyond the vocabulary: kept, never packed) */
    const int32_t ids[] = {1, 5, 6, 7, 8, 1, 9, 10, 11, 99999, 1, 12, 13};
    const uint32_t lens[] = {5, 5, 3};
    dsla_proto_buf_t body;
    samples_body(&body, ids, lens, 3);
    harness_ok(dsla_distiller_core_on_samples(c, body.data, body.len), "samples");
    dsla_proto_buf_free(&body);
    dsla_distiller_core_on_tick(c, ++now);
    last_progress(&p);
    assert_int_equal(p.samples_received, 3);
    assert_int_equal(p.samples_held, 3);
    assert_int_equal(p.sample_tokens_held, 13);
    assert_int_equal(p.samples_used, 0);
    /* the run starts a layer: what the reservoir holds joins its pool */
    dsla_corpus_t pool = {.seq_len = 4};
    int added = -1;
    harness_ok(dsla_distiller_core_pack(c, &pool, 1, 1000, &added), "pack");
    assert_true(added > 0);
    assert_int_equal(pool.num_sequences, added);
    for (int i = 0; i < pool.num_sequences * pool.seq_len; i++)
        assert_true(pool.tokens[i] < 1000);
    dsla_corpus_free(&pool);
    dsla_distiller_core_on_tick(c, ++now);
    last_progress(&p);
    assert_int_equal(p.samples_used, 2); /* the one with a bad id is skipped */
    /* more prompts than the reservoir holds: it stays bounded */
    const int32_t many[] = {1, 2, 1, 3, 1, 4, 1, 5, 1, 6, 1, 7};
    const uint32_t two[] = {2, 2, 2, 2, 2, 2};
    samples_body(&body, many, two, 6);
    harness_ok(dsla_distiller_core_on_samples(c, body.data, body.len), "samples");
    dsla_proto_buf_free(&body);
    dsla_distiller_core_on_tick(c, ++now);
    last_progress(&p);
    assert_int_equal(p.samples_received, 9);
    assert_int_equal(p.samples_held, RESERVOIR);
    dsla_distiller_core_destroy(&c);
    outbox_clear(&out);
}

static void test_layer_ready_and_progress_rate(void **state) {
    (void)state;
    dsla_distiller_core_t *c = core_new(PROGRESS_MS);
    uint64_t now = 5000;
    dsla_distiller_core_on_peer(c, "controller", true, now);
    assert_int_equal(count(DSLA_MSG_DISTILL_PROGRESS), 1);
    /* a step's progress: not before progress_ms has passed since the last one */
    dsla_distill_progress_t g = {.k = 0, .n_layers = 2, .layer = 3, .step = 1, .steps = 10};
    dsla_proto_distill_progress_t p = {0};
    dsla_distiller_progress_update(&p, &g);
    dsla_distiller_core_on_progress(c, &p, now + 10);
    dsla_distiller_core_on_tick(c, now + PROGRESS_MS - 1);
    assert_int_equal(count(DSLA_MSG_DISTILL_PROGRESS), 1);
    dsla_distiller_core_on_tick(c, now + PROGRESS_MS);
    assert_int_equal(count(DSLA_MSG_DISTILL_PROGRESS), 2);
    dsla_proto_distill_progress_t got;
    last_progress(&got);
    assert_int_equal(got.state, DSLA_PROTO_DISTILL_TRAINING);
    assert_int_equal(got.layer, 3);
    assert_int_equal(got.step, 1);
    assert_int_equal(got.layers_done, 0);
    /* nothing changed: nothing sent however long it waits */
    now += 10 * PROGRESS_MS;
    dsla_distiller_core_on_tick(c, now);
    assert_int_equal(count(DSLA_MSG_DISTILL_PROGRESS), 2);
    /* the layer finishes: LAYER_READY at once, with the version's header */
    dsla_proto_layer_ready_t *a = ready(3, 1);
    dsla_distiller_core_on_layer_ready(c, &a, now);
    assert_null(a);
    int layers[8];
    assert_int_equal(announced(layers, 8), 1);
    assert_int_equal(layers[0], 3);
    const sent_t *s = &out.sent[out.n - 2]; /* then the progress, due again */
    dsla_proto_layer_ready_t r;
    assert_int_equal(s->type, DSLA_MSG_LAYER_READY);
    harness_ok(dsla_proto_layer_ready_decode(s->body, s->len, &r), "decode");
    assert_int_equal(r.version, 1);
    assert_true(r.checksum == 0x1237);
    assert_true(r.xxh64 == 0xabc);
    assert_string_equal(r.path, "/layers/layer-3.safetensors");
    last_progress(&got);
    assert_int_equal(got.layers_done, 1);
    assert_int_equal(dsla_distiller_core_ready(c), 1);
    dsla_distiller_core_destroy(&c);
    outbox_clear(&out);
}

static void test_controller_not_answering(void **state) {
    (void)state;
    dsla_distiller_core_t *c = core_new(0);
    uint64_t now = 100;
    /* no controller yet: two versions finish, nothing leaves */
    dsla_proto_layer_ready_t *a = ready(0, 1);
    dsla_distiller_core_on_layer_ready(c, &a, ++now);
    a = ready(1, 1);
    dsla_distiller_core_on_layer_ready(c, &a, ++now);
    dsla_distiller_core_on_tick(c, ++now);
    dsla_distiller_core_on_peer(c, "serving0", true, ++now); /* not the controller */
    assert_int_equal(out.n, 0);
    /* it answers: both, in order, then the progress */
    dsla_distiller_core_on_peer(c, "controller", true, ++now);
    int layers[16];
    assert_int_equal(announced(layers, 16), 2);
    assert_int_equal(layers[0], 0);
    assert_int_equal(layers[1], 1);
    assert_int_equal(out.sent[out.n - 1].type, DSLA_MSG_DISTILL_PROGRESS);
    assert_int_equal(dsla_distiller_core_sent(c), 2);
    /* its queue is full: the next two wait, and go in order once it drains */
    snprintf(out.unreachable, sizeof out.unreachable, "controller");
    a = ready(2, 1);
    dsla_distiller_core_on_layer_ready(c, &a, ++now);
    a = ready(3, 1);
    dsla_distiller_core_on_layer_ready(c, &a, ++now);
    dsla_distiller_core_on_tick(c, ++now);
    assert_int_equal(announced(layers, 16), 2);
    assert_int_equal(dsla_distiller_core_sent(c), 2);
    out.unreachable[0] = '\0';
    dsla_distiller_core_on_tick(c, ++now);
    assert_int_equal(announced(layers, 16), 4);
    assert_int_equal(layers[2], 2);
    assert_int_equal(layers[3], 3);
    dsla_distiller_core_on_tick(c, ++now); /* nothing repeated */
    assert_int_equal(announced(layers, 16), 4);
    /* it dies; a version finishes meanwhile; it comes back (restarted): everything again */
    dsla_distiller_core_on_peer(c, "controller", false, ++now);
    a = ready(4, 2);
    dsla_distiller_core_on_layer_ready(c, &a, ++now);
    dsla_distiller_core_on_tick(c, ++now);
    assert_int_equal(announced(layers, 16), 4);
    dsla_distiller_core_on_peer(c, "controller", true, ++now);
    assert_int_equal(announced(layers, 16), 9);
    for (int i = 0; i < 5; i++)
        assert_int_equal(layers[4 + i], i);
    dsla_proto_distill_progress_t p;
    last_progress(&p);
    assert_int_equal(p.layers_done, 5);
    dsla_distiller_core_destroy(&c);
    outbox_clear(&out);
}

/* ---- a real run, wired as the actor wires it ---- */

typedef struct {
    dsla_distiller_core_t *core;
    const char *out_dir;
    int steps;
    uint64_t now;
    int stop_layer_k, stop_after_step; /* should_stop once the k-th layer reached that step */
    int last_k, last_step;
    int first_step[4]; /* the first step reported per conversion, 0: none */
    bool resumed[4];   /* per conversion: reported as loaded from the directory */
    uint64_t xxh[4];   /* per conversion: the announced file's hash */
} run_t;

static void run_progress(void *user, const dsla_distill_progress_t *g) {
    run_t *r = user;
    dsla_proto_distill_progress_t p = {0};
    dsla_distiller_progress_update(&p, g);
    r->now += 10;
    dsla_distiller_core_on_progress(r->core, &p, r->now);
    r->last_k = g->k;
    r->last_step = g->step;
    if (g->k < 4 && !r->first_step[g->k]) r->first_step[g->k] = g->step;
}

static void run_layer_done(void *user, const dsla_distill_layer_report_t *rep) {
    run_t *r = user;
    dsla_proto_layer_ready_t *a = malloc(sizeof *a);
    harness_ok(dsla_distiller_announcement(r->out_dir, r->steps, rep, a), "announcement");
    if (rep->k < 4) {
        r->resumed[rep->k] = rep->resumed_from_file;
        r->xxh[rep->k] = a->xxh64;
    }
    dsla_distiller_core_on_layer_ready(r->core, &a, r->now);
}

static bool run_should_stop(void *user) {
    run_t *r = user;
    return r->stop_layer_k >= 0 && r->last_k == r->stop_layer_k &&
           r->last_step >= r->stop_after_step;
}

static dsla_status_t run_extend(void *user, int k, int layer, dsla_corpus_t *pool) {
    (void)k, (void)layer;
    run_t *r = user;
    int added = 0;
    return dsla_distiller_core_pack(r->core, pool, 1, 512, &added);
}

static void test_restart_resumes_from_checkpoint(void **state) {
    (void)state;
    char *model_dir = dsla_test_data_or_skip("models/stories260K-hf");
    char *data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    dsla_model_t *model = harness_load_model(model_dir);
    dsla_tokenizer_t *tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&tok, model_dir), "tokenizer");
    dsla_corpus_t train = {0}, eval = {0};
    const char *files[] = {data};
    harness_ok(dsla_corpus_load(&train, tok, files, 1, SEQ_LEN, 10), "corpus");
    harness_ok(dsla_corpus_split(&train, &eval, 2), "split");
    char *dir = dsla_test_tempdir();
    dsla_distill_params_t params = dsla_distill_params_default();
    params.order_mode = DSLA_ORDER_ENTROPY; /* the progress counted here is the training's */
    params.layers = 2;
    params.steps = 6;
    params.batch = 2;
    params.checkpoint_every = 2;
    params.seed = 7;
    params.optim = dsla_adamw_params_default(params.steps);
    dsla_distill_report_t *report = calloc(1, sizeof *report);

    /* the first process: stopped in its second layer after step 3 (checkpoint at 2) */
    run_t r1 = {.core = core_new(0), .out_dir = dir, .steps = 6, .now = 1000};
    r1.stop_layer_k = 1;
    r1.stop_after_step = 3;
    dsla_distiller_core_on_peer(r1.core, "controller", true, r1.now);
    const dsla_distill_callbacks_t cb1 = {run_progress,    run_layer_done, &r1,
                                          run_should_stop, run_extend,     NULL};
    assert_int_equal(dsla_distill_run(model, &train, &eval, &params, dir, &cb1, report),
                     DSLA_ERR_CANCELLED);
    int layers[8];
    assert_int_equal(announced(layers, 8), 1);
    const int first_layer = layers[0];
    assert_int_equal(r1.first_step[1], 1);
    assert_false(r1.resumed[0]);
    dsla_distiller_core_destroy(&r1.core);
    outbox_clear(&out);

    /* the process again on the same directory, a new machine, the controller not yet there */
    run_t r2 = {.core = core_new(0), .out_dir = dir, .steps = 6, .now = 1000, .stop_layer_k = -1};
    const dsla_distill_callbacks_t cb2 = {run_progress,    run_layer_done, &r2,
                                          run_should_stop, run_extend,     NULL};
    memset(report, 0, sizeof *report);
    harness_ok(dsla_distill_run(model, &train, &eval, &params, dir, &cb2, report), "resume");
    assert_true(r2.resumed[0]);            /* the first version kept, not trained again */
    assert_true(r2.xxh[0] == r1.xxh[0]);   /* the same file */
    assert_int_equal(r2.first_step[0], 0); /* no step of it ran */
    assert_int_equal(r2.first_step[1], 3); /* the second resumed after its checkpoint */
    assert_false(r2.resumed[1]);
    assert_int_equal(out.n, 0); /* nobody to tell yet */
    assert_int_equal(dsla_distiller_core_ready(r2.core), 2);
    dsla_distiller_core_on_peer(r2.core, "controller", true, r2.now + 10);
    assert_int_equal(announced(layers, 8), 2);
    assert_int_equal(layers[0], first_layer);
    assert_int_equal(layers[1], report->order[1]);
    dsla_proto_distill_progress_t p;
    last_progress(&p);
    assert_int_equal(p.layers_done, 2);
    assert_int_equal(p.step, 6);
    dsla_distiller_core_destroy(&r2.core);
    outbox_clear(&out);

    free(report);
    dsla_test_rmtree(dir);
    free(dir);
    dsla_corpus_free(&train);
    dsla_corpus_free(&eval);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&model);
    free(data);
    free(model_dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_samples_arrive_and_are_packed),
        cmocka_unit_test(test_layer_ready_and_progress_rate),
        cmocka_unit_test(test_controller_not_answering),
        cmocka_unit_test(test_restart_resumes_from_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Online distillation end to end, on loopback: dsla-serve runs the distiller beside the controller
 * and the serving actor, distils two layers of stories260K while it serves (greedy output during
 * the run is the teacher's), and announces each layer version (LAYER_READY); the controller
 * verifies and catalogues them, and dslactl status and history show the distiller's progress and
 * events. With --no-sample-prompts no served prompt reaches the distiller, and the versions equal
 * what offline `dsla distill` writes with the same parameters;
 * `dslactl convert 2` converts the replica and greedy output through the client stub equals
 * in-process generation under that plan. An announcement whose file does not hash as announced is
 * refused. Started again on the same directory, the distiller keeps
 * the finished versions, the controller its catalogue, and nothing is announced twice. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "runtime/model/tokenizer.h"
#include "tests/integration/ctl_harness.h"

static char admin[64];

/* The distillation parameters of both runs, online and offline: small enough for a second. */
#define DISTILL_ARGS(prefix)                                                                       \
    prefix "layers", "2", prefix "steps", "3", prefix "seq-len", "64", prefix "batch", "2",        \
        prefix "max-sequences", "8", prefix "eval-sequences", "2", prefix "seed", "7"

static dsla_test_server_t start(const char *model, const char *data, const char *out,
                                const char *policy) {
    const char *args[] = {"--model",
                          model,
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "off",
                          "--admin",
                          admin,
                          "--report-ms=50",
                          "--distill-data",
                          data,
                          "--distill-out",
                          out,
                          DISTILL_ARGS("--distill-"),
                          "--no-sample-prompts",
                          policy ? "--policy" : NULL,
                          policy,
                          NULL};
    return dsla_test_server_start(args);
}

/* Announces cat's first version to the controller as a peer named "impostor" would, with the
 * whole-file hash off by one; returns the code of the controller's answer (an ERROR), which must
 * refuse it for its sender before any verification. */
static uint32_t announce_corrupt(const dsla_catalogue_entry_t *e) {
    dsla_proto_layer_ready_t *r = calloc(1, sizeof *r);
    *r = (dsla_proto_layer_ready_t){.layer = e->layer,
                                    .version = (uint32_t)e->version,
                                    .n_order = 1,
                                    .order = {e->layer},
                                    .checksum = e->checksum};
    snprintf(r->path, sizeof r->path, "%s", e->path);
    harness_ok(dsla_catalogue_file_digest(e->path, &r->size, &r->xxh64), "digest");
    r->xxh64 ^= 1;
    dsla_proto_buf_t body, frame;
    harness_ok(dsla_proto_layer_ready_encode(r, &body), "encode");
    dsla_proto_envelope_t env = {.type = DSLA_MSG_LAYER_READY,
                                 .src = "impostor",
                                 .dst = "controller",
                                 .body = body.data,
                                 .body_len = body.len};
    harness_ok(dsla_proto_envelope_encode(&env, &frame), "envelope");
    void *ctx = zmq_ctx_new(), *sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 1000;
    zmq_setsockopt(sock, ZMQ_ROUTING_ID, "impostor", 8);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(sock, admin), 0);
    assert_int_equal(zmq_send(sock, frame.data, frame.len, 0), (int)frame.len);
    int timeout = CTL_WAIT_MS;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    char reply[4096];
    int n = zmq_recv(sock, reply, sizeof reply, 0);
    dsla_proto_envelope_t renv;
    dsla_proto_error_t err = {0};
    assert_true(n > 0 && n <= (int)sizeof reply);
    harness_ok(dsla_proto_envelope_decode(reply, (size_t)n, &renv), "reply");
    assert_int_equal(renv.type, DSLA_MSG_ERROR);
    harness_ok(dsla_proto_error_decode(renv.body, renv.body_len, &err), "error");
    zmq_close(sock);
    zmq_ctx_term(ctx);
    dsla_proto_buf_free(&body);
    dsla_proto_buf_free(&frame);
    free(r);
    return err.code;
}

static int count(const char *text, const char *needle) {
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

static void test_distil_announce_convert_resume(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    char *dir = dsla_test_tempdir();
    char online[512], offline[512];
    snprintf(online, sizeof online, "%s/online", dir);
    snprintf(offline, sizeof offline, "%s/offline", dir);
    static char out[CTL_OUT_MAX];

    dsla_model_t *m = harness_load_model(model);
    dsla_tokenizer_t *tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&tok, model), "tokenizer");
    harness_stream_t *teacher = calloc(1, sizeof *teacher), *hybrid = calloc(1, sizeof *hybrid);
    dsla_catalogue_t *cat = calloc(1, sizeof *cat), *ref_cat = calloc(1, sizeof *ref_cat);
    ctl_reference(m, tok, cat, 0, teacher); /* an empty catalogue: the teacher */

    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    dsla_test_server_t srv = start(model, data, online, "manual layers=0");
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    ctl_generate(srv.endpoint, got); /* served while the distiller loads and trains */
    ctl_assert_same_ids(got, teacher, "during distillation");

    ctl_wait_status(admin, "distiller distiller alive: done, 2/2 layers done");
    ctl_wait_status(admin, "catalogue: 2 layer versions");
    /* --no-sample-prompts: the served prompt never reached the distiller */
    ctl_wait_status(admin, "prompt samples: 0 received, 0 held (0 tokens), 0 used (0 tokens)");
    assert_int_equal(ctl_dslactl(admin, out, "history", "--limit", "100"), 0);
    assert_int_equal(count(out, "layer_ready"), 2);
    assert_non_null(strstr(out, "distill        distiller: "));
    assert_non_null(strstr(out, "/online/layer-"));

    /* the versions are the offline engine's, bit for bit */
    const char *distill[] = {"distill", "--model",          model, "--data", data, "--out",
                             offline,   DISTILL_ARGS("--"), NULL};
    if (ctl_run_bin("dsla", distill, out, CTL_OUT_MAX) != 0) fail_msg("dsla distill:\n%s", out);
    harness_ok(dsla_catalogue_scan(cat, online), "online catalogue");
    harness_ok(dsla_catalogue_scan(ref_cat, offline), "offline catalogue");
    assert_int_equal(cat->n, 2);
    assert_int_equal(ref_cat->n, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(cat->entries[i].layer, ref_cat->entries[i].layer);
        assert_true(cat->entries[i].checksum == ref_cat->entries[i].checksum);
    }

    /* convert 2: the replica runs both announced versions, as in-process generation does */
    ctl_reference(m, tok, cat, 2, hybrid);
    assert_memory_not_equal(teacher->ids, hybrid->ids, sizeof teacher->ids[0] * CTL_MAX_TOKENS);
    assert_int_equal(ctl_dslactl(admin, out, "convert", "2", NULL), 0);
    ctl_wait_status(admin, "runs 2 DSLA layers");
    ctl_generate(srv.endpoint, got);
    ctl_assert_same_ids(got, hybrid, "2 distilled DSLA layers");

    /* an announcement from anyone but the distiller is refused unread, leaves no event and
     * changes nothing (a wrong hash from the distiller itself: test_controller_core) */
    assert_int_equal(announce_corrupt(&cat->entries[0]), DSLA_CODE_PERMISSION_DENIED);
    assert_int_equal(ctl_dslactl(admin, out, "history", "--limit", "100"), 0);
    assert_null(strstr(out, "impostor"));
    ctl_wait_status(admin, "catalogue: 2 layer versions");
    dsla_test_server_stop(&srv);

    /* started again: the run resumes on the same directory (nothing left to train), the
     * controller keeps its catalogue and plan, and re-announcements change nothing */
    srv = start(model, data, online, NULL);
    ctl_wait_status(admin, "distiller distiller alive: done, 2/2 layers done");
    ctl_wait_status(admin, "runs 2 DSLA layers");
    assert_int_equal(ctl_dslactl(admin, out, "history", "--limit", "1000"), 0);
    assert_int_equal(count(out, "layer_ready"), 2);
    ctl_generate(srv.endpoint, got);
    ctl_assert_same_ids(got, hybrid, "after a restart");
    dsla_test_server_stop(&srv);

    free(got);
    free(teacher);
    free(hybrid);
    free(cat);
    free(ref_cat);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&m);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distil_announce_convert_resume),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

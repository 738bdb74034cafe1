/* Online distillation end to end, on loopback: dsla-serve runs the distiller beside the controller
 * and the serving actor, distils two layers of stories260K while it serves (greedy output during
 * the run is the teacher's), and announces each layer version (LAYER_READY); the controller
 * verifies and catalogues them, and dslactl status and history show the distiller's progress and
 * events. With --no-sample-prompts no served prompt reaches the distiller, and the versions equal
 * what offline `dsla distill` writes with the same parameters (the logit KL term's weight
 * included: --distill-kl-weight reaches the engine);
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
        prefix "max-sequences", "8", prefix "eval-sequences", "2", prefix "seed", "7",             \
        prefix "kl-weight", "0.5"

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
    static ctl_distill_fx_t f;
    ctl_distill_fx_open(&f, "models/stories260K-hf");
    const char *model = f.model, *data = f.data, *online = f.online, *offline = f.offline;
    dsla_model_t *m = f.m;
    dsla_tokenizer_t *tok = f.tok;
    harness_stream_t *teacher = f.teacher, *hybrid = f.hybrid;
    dsla_catalogue_t *cat = f.cat, *ref_cat = f.ref_cat;
    static char out[CTL_OUT_MAX];

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
    ctl_distill_fx_close(&f);
}

/* --distill-device cuda wires the GPU backend into the distiller: dsla-serve prints what it needs
 * there, and a model the GPU cannot train (stories260K's head dim 8; or no CUDA in this build)
 * fails the run with the reason while the node keeps serving. Usage errors name the option. */
static void test_distill_device_cuda(void **state) {
    (void)state;
    static ctl_distill_fx_t f;
    ctl_distill_fx_open(&f, "models/stories260K-hf");
    const char *model = f.model, *data = f.data, *online = f.online;
    char log[512];
    snprintf(log, sizeof log, "%s/serve.log", f.dir);
    static char out[CTL_OUT_MAX];
    const char *bad[][4] = {{"--distill-device", "tpu", "'tpu' is not one of cpu, cuda", NULL},
                            {"--distill-gpu", "1", "--distill-device", NULL},
                            {"--distill-dtype=f32", NULL, "--distill-device", NULL},
                            {"--distill-dtype", "f16", "'f16' is not one of bf16, f32", NULL},
                            {"--distill-kl-weight", "-1", "--distill-kl-weight", NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *args[] = {"--model", model,     "--distill-data", data, "--distill-out",
                              online,    bad[i][0], bad[i][1],        NULL};
        /* a NULL value ends the arguments after the option */
        assert_int_equal(ctl_run_bin("dsla-serve", args, out, CTL_OUT_MAX), 2);
        if (!strstr(out, bad[i][2])) fail_msg("dsla-serve %s %s: %s", bad[i][0], bad[i][1], out);
    }

    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    const char *args[] = {"--model",
                          model,
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "off",
                          "--admin",
                          admin,
                          "--distill-data",
                          data,
                          "--distill-out",
                          online,
                          DISTILL_ARGS("--distill-"),
                          "--distill-device",
                          "cuda",
                          "--distill-dtype",
                          "f32",
                          NULL};
    dsla_test_server_t srv = dsla_test_server_start_logged(args, log);
    ctl_wait_status(admin, "distiller distiller alive: failed, 0/2 layers done");
    assert_int_equal(ctl_dslactl(admin, out, "status", NULL, NULL), 0);
    if (!strstr(out, "head dim 8") && !strstr(out, "no CUDA")) fail_msg("status: %s", out);
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    ctl_generate(srv.endpoint, got); /* the node serves on */
    ctl_assert_same_ids(got, f.teacher, "after the distiller failed");
    dsla_test_server_stop(&srv);
    char *text = dsla_test_read_file(log, NULL);
    if (!text || !strstr(text, "the distiller trains on GPU 0 (fp32): about ") ||
        !strstr(text, "MiB with --distill-max-sequences 8"))
        fail_msg("dsla-serve did not print the distiller's need:\n%s", text ? text : "(none)");
    free(text);
    free(got);
    ctl_distill_fx_close(&f);
}

/* --controller-bind on the distiller's node without --layers (the controller then runs over
 * --distill-out): it was refused as needing --layers. A --serving-only replica reports to the
 * controller through that mailbox. */
static void test_controller_bind_beside_distiller(void **state) {
    (void)state;
    static ctl_distill_fx_t f;
    ctl_distill_fx_open(&f, "models/stories260K-hf");
    char bind[64], replica_ep[64], cache[600];
    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    snprintf(bind, sizeof bind, "tcp://127.0.0.1:%d", ctl_free_port());
    snprintf(replica_ep, sizeof replica_ep, "tcp://127.0.0.1:%d", ctl_free_port());
    snprintf(cache, sizeof cache, "%s/cache", f.dir);
    const char *args[] = {"--model",
                          f.model,
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "off",
                          "--admin",
                          admin,
                          "--controller-bind",
                          bind,
                          "--distill-data",
                          f.data,
                          "--distill-out",
                          f.online,
                          DISTILL_ARGS("--distill-"),
                          NULL};
    dsla_test_server_t srv = dsla_test_server_start(args);
    const char *replica_args[] = {
        "--model", f.model,  "--serving-only", "--endpoint", replica_ep,    "--controller", bind,
        "--name",  "remote", "--layer-cache",  cache,        "--report-ms", "50",           NULL};
    dsla_test_server_t replica = dsla_test_server_start(replica_args);
    ctl_wait_status(admin, "replica remote alive");
    dsla_test_server_stop(&replica);
    dsla_test_server_stop(&srv);
    ctl_distill_fx_close(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_distil_announce_convert_resume),
        cmocka_unit_test(test_distill_device_cuda),
        cmocka_unit_test(test_controller_bind_beside_distiller),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

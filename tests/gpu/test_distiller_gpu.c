/* The distiller actor on a GPU beside a serving actor on the same GPU, tinystories-11M-hf.
 *
 * In one dsla-serve process (`--device cuda --dtype f32 --distill-device cuda --distill-dtype
 * f32`):
 * - served greedy ids during the run are the teacher's (in-process CPU generation);
 * - the distiller trains two layers on the GPU and announces both versions; the controller verifies
 * and catalogues them;
 * - `dslactl convert 2` converts the GPU replica, and its greedy ids equal in-process generation
 *   under that plan (the versions the GPU distiller wrote, run on the CPU);
 * - the versions' held-out numbers are within 1% of the CPU distiller's on the same data (an
 *   offline `dsla distill` with the same parameters).
 * In two processes on the one GPU: the node (controller, gateway, a CPU serving actor and the
 * distiller on the GPU) and a `--serving-only --device cuda` replica reporting to its controller:
 * - both replicas answer the teacher's greedy ids while the distiller trains;
 * - after `dslactl convert 2` the GPU replica fetches the two versions over ZeroMQ into its layer
 *   cache and converts, and both replicas answer the in-process ids of that plan.
 * Exits 77 without a CUDA device or the shared models. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "runtime/model/tokenizer.h"
#include "tests/integration/ctl_harness.h"
#include "tests/integration/replicas_harness.h"

#ifdef DSLA_HAVE_CUDA

static char admin[64];

/* The distillation parameters of both runs, online and offline: seconds on a GPU. */
#define DISTILL_ARGS(prefix)                                                                       \
    prefix "layers", "2", prefix "steps", "20", prefix "seq-len", "64", prefix "batch", "4",       \
        prefix "max-sequences", "24", prefix "eval-sequences", "4", prefix "seed", "7",            \
        prefix "order", "entropy"

/* A node's distiller on the GPU over data into online, fp32, with the manual policy at 0 layers
 * (the tests convert by hand) and no prompt sampling. */
#define GPU_DISTILLER_ARGS(data, online)                                                           \
    "--distill-data", data, "--distill-out", online, DISTILL_ARGS("--distill-"),                   \
        "--distill-device", "cuda", "--distill-dtype", "f32", "--no-sample-prompts", "--policy",   \
        "manual layers=0"

static void test_gpu_distiller_beside_gpu_serving(void **state) {
    (void)state;
    static ctl_distill_fx_t f;
    ctl_distill_fx_open(&f, "models/tinystories-11M-hf");
    const char *model = f.model, *data = f.data, *online = f.online, *offline = f.offline;
    dsla_model_t *m = f.m;
    dsla_tokenizer_t *tok = f.tok;
    harness_stream_t *teacher = f.teacher, *hybrid = f.hybrid;
    dsla_catalogue_t *cat = f.cat, *ref_cat = f.ref_cat;
    static char out[CTL_OUT_MAX];

    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    /* The serving arena leaves 4 GiB of the GPU to the distiller (it logs what it needs). */
    const char *args[] = {"--model",
                          model,
                          "--device",
                          "cuda",
                          "--dtype",
                          "f32",
                          "--gpu-margin-mib",
                          "4096",
                          "--max-context",
                          "1024",
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "off",
                          "--admin",
                          admin,
                          "--report-ms=50",
                          GPU_DISTILLER_ARGS(data, online),
                          NULL};
    /* stderr stays the test's: the stage log shows what dsla-serve said */
    dsla_test_server_t srv = dsla_test_server_start(args);
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    ctl_generate(srv.endpoint, got); /* served on the GPU while the GPU distiller works */
    ctl_assert_same_ids(got, teacher, "during distillation");

    ctl_wait_status(admin, "distiller distiller alive: done, 2/2 layers done");
    ctl_wait_status(admin, "catalogue: 2 layer versions");
    assert_int_equal(ctl_dslactl(admin, out, "status", NULL, NULL), 0);
    fprintf(stderr, "%s", out);

    harness_ok(dsla_catalogue_scan(cat, online), "online catalogue");
    assert_int_equal(cat->n, 2);
    ctl_reference(m, tok, cat, 2, hybrid);
    assert_memory_not_equal(teacher->ids, hybrid->ids, sizeof teacher->ids[0] * CTL_MAX_TOKENS);
    assert_int_equal(ctl_dslactl(admin, out, "convert", "2", NULL), 0);
    ctl_wait_status(admin, "runs 2 DSLA layers");
    ctl_generate(srv.endpoint, got);
    ctl_assert_same_ids(got, hybrid, "2 layers distilled on the GPU, served on the GPU");
    dsla_test_server_stop(&srv);

    /* the CPU distiller's versions of the same run: the same layers, numbers within 1% */
    const char *distill[] = {"distill", "--model",          model, "--data", data, "--out",
                             offline,   DISTILL_ARGS("--"), NULL};
    if (ctl_run_bin("dsla", distill, out, CTL_OUT_MAX) != 0) fail_msg("dsla distill:\n%s", out);
    harness_ok(dsla_catalogue_scan(ref_cat, offline), "offline catalogue");
    assert_int_equal(ref_cat->n, 2);
    for (int i = 0; i < 2; i++) {
        dsla_layer_version_meta_t *g = calloc(1, sizeof *g), *c = calloc(1, sizeof *c);
        dsla_dsla_layer_t *lg = NULL, *lc = NULL;
        harness_ok(dsla_dsla_layer_load(&lg, cat->entries[i].path, dsla_model_config(m), g), "gpu");
        harness_ok(dsla_dsla_layer_load(&lc, ref_cat->entries[i].path, dsla_model_config(m), c),
                   "cpu");
        fprintf(stderr, "layer %d: eval mse gpu %.5f cpu %.5f, hybrid ppl gpu %.4f cpu %.4f\n",
                lg->layer, g->eval_mse, c->eval_mse, g->eval_ppl, c->eval_ppl);
        assert_int_equal(lg->layer, lc->layer);
        assert_true(fabs(g->eval_ppl - c->eval_ppl) < 0.01 * c->eval_ppl);
        assert_true(fabs(g->eval_mse - c->eval_mse) < 0.02 * c->eval_mse);
        dsla_dsla_layer_destroy(&lg);
        dsla_dsla_layer_destroy(&lc);
        free(g);
        free(c);
    }

    free(got);
    ctl_distill_fx_close(&f);
}

/* Greedy answers through the gateway at endpoint, each the in-process run in want, until both the
 * GPU replica ("gpu") and the node's own ("serving0") have answered. */
static void answers_from_both(const char *endpoint, const harness_stream_t *want,
                              const char *what) {
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    bool gpu = false, cpu = false;
    for (int i = 0; i < 40 && !(gpu && cpu); i++) {
        char replica[64], label[160];
        ctl_generate_at(endpoint, got, replica, sizeof replica);
        snprintf(label, sizeof label, "%s, answered by %s", what, replica);
        ctl_assert_same_ids(got, want, label);
        gpu |= strcmp(replica, "gpu") == 0;
        cpu |= strcmp(replica, "serving0") == 0;
        if (!(gpu && cpu)) ctl_sleep_ms(100); /* the gateway may not see the other one alive yet */
    }
    free(got);
    if (!(gpu && cpu))
        fail_msg("%s: not both replicas answered (gpu %d, serving0 %d)", what, gpu, cpu);
}

static void test_gpu_distiller_and_gpu_replica_in_two_processes(void **state) {
    (void)state;
    static ctl_distill_fx_t f;
    ctl_distill_fx_open(&f, "models/tinystories-11M-hf");
    static char out[CTL_OUT_MAX];
    char replica_ep[64], cache[600];
    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    snprintf(replica_ep, sizeof replica_ep, "tcp://127.0.0.1:%d", ctl_free_port());
    snprintf(cache, sizeof cache, "%s/gpu-cache", f.dir);
    /* the replica first: its arena takes the GPU but 4 GiB, which the distiller's process uses */
    const char *replica_args[] = {
        "--model", f.model,      "--serving-only",   "--device",     "cuda",
        "--dtype", "f32",        "--gpu-margin-mib", "4096",         "--max-context",
        "1024",    "--endpoint", replica_ep,         "--controller", admin,
        "--name",  "gpu",        "--layer-cache",    cache,          "--report-ms",
        "50",      NULL};
    dsla_test_server_t replica = dsla_test_server_start(replica_args);
    const char *args[] = {
        "--model",   f.model,    "--endpoint",     "tcp://127.0.0.1:*",
        "--http",    "off",      "--admin",        admin,
        "--replica", replica_ep, "--report-ms=50", GPU_DISTILLER_ARGS(f.data, f.online),
        NULL};
    dsla_test_server_t srv = dsla_test_server_start(args);
    replicas_wait_runs(admin, "gpu", 0);
    answers_from_both(srv.endpoint, f.teacher, "while the GPU distiller trains");

    ctl_wait_status(admin, "distiller distiller alive: done, 2/2 layers done");
    ctl_wait_status(admin, "catalogue: 2 layer versions");
    harness_ok(dsla_catalogue_scan(f.cat, f.online), "online catalogue");
    assert_int_equal(f.cat->n, 2);
    ctl_reference(f.m, f.tok, f.cat, 2, f.hybrid);
    assert_int_equal(ctl_dslactl(admin, out, "convert", "2", NULL), 0);
    replicas_wait_runs(admin, "gpu", 2);
    replicas_wait_runs(admin, "serving0", 2);
    assert_int_equal(ctl_dslactl(admin, out, "status", NULL, NULL), 0);
    fprintf(stderr, "%s", out);
    answers_from_both(srv.endpoint, f.hybrid, "2 layers distilled on the GPU, fetched, converted");
    dsla_test_server_stop(&srv);
    dsla_test_server_stop(&replica);
    ctl_distill_fx_close(&f);
}

int main(void) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return DSLA_TEST_SKIP;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gpu_distiller_beside_gpu_serving),
        cmocka_unit_test(test_gpu_distiller_and_gpu_replica_in_two_processes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else

int main(void) {
    return 77; /* built without CUDA: nothing to test */
}

#endif

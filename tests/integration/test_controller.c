/* The conversion control loop end to end, on loopback: `dsla distill` writes two layer versions of
 * stories260K, dsla-serve runs the controller beside its serving actor, and dslactl converts two
 * layers (manual policy). The replica adopts the plan (dslactl status), greedy generation through
 * the client stub equals in-process generation under the same hybrid plan, and HTTP still
 * answers; revert brings back the teacher's output. A corrupt layer version is refused (PLAN_NACK)
 * and the old plan stays. A restarted controller keeps its policy and history and converts the
 * fresh replica again.
 *
 * DSLA_TEST_SERVE_DEVICE=cuda runs the served side on the GPU (`--device cuda --dtype f32`, the
 * layer versions uploaded on adoption) against the same in-process CPU references:
 * scripts/gpu-run.sh does so (stage controller_gpu); ctest runs the CPU form. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model/tokenizer.h"
#include "tests/integration/ctl_harness.h"

enum { MAX_TOKENS = CTL_MAX_TOKENS, OUT_MAX = CTL_OUT_MAX };

static char admin[64];

static int dslactl(char *out, const char *a1, const char *a2, const char *a3) {
    return ctl_dslactl(admin, out, a1, a2, a3);
}

static void wait_status(const char *needle) {
    ctl_wait_status(admin, needle);
}

/* Flips bytes in the tensor data of every layer version in dir; keeps the originals in saved. */
static int corrupt_all(const char *dir, char **saved, size_t *sizes, char paths[][1024]) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL && n < 8;) {
        if (strncmp(de->d_name, "layer-", 6) != 0) continue;
        snprintf(paths[n], 1024, "%s/%s", dir, de->d_name);
        saved[n] = dsla_test_read_file(paths[n], &sizes[n]);
        char *bad = malloc(sizes[n]);
        memcpy(bad, saved[n], sizes[n]);
        bad[sizes[n] - 5] ^= 0x5a; /* the last tensor's bytes: the header stays valid */
        dsla_test_write_file(paths[n], bad, sizes[n]);
        free(bad);
        n++;
    }
    closedir(d);
    return n;
}

static dsla_test_server_t start(const char *model, const char *layers, const char *db,
                                const char *policy) {
    const char *args[] = {"--model",
                          model,
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "127.0.0.1:0",
                          "--layers",
                          layers,
                          "--controller-db",
                          db,
                          "--admin",
                          admin,
                          "--report-ms",
                          "50",
                          NULL,
                          NULL,
                          NULL,
                          NULL,
                          NULL,
                          NULL,
                          NULL};
    int n = 14;
    const char *device = getenv("DSLA_TEST_SERVE_DEVICE");
    if (device && strcmp(device, "cuda") == 0) {
        static const char *const gpu[] = {"--device", "cuda", "--dtype", "f32"};
        for (int i = 0; i < 4; i++)
            args[n++] = gpu[i];
    }
    if (policy) {
        args[n++] = "--policy";
        args[n++] = policy;
    }
    return dsla_test_server_start(args);
}

static void test_convert_revert_refuse_restart(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    char *dir = dsla_test_tempdir();
    char layers[512], db[512];
    snprintf(layers, sizeof layers, "%s/layers", dir);
    snprintf(db, sizeof db, "%s/controller.db", dir);
    static char out[OUT_MAX];
    ctl_distill_two(model, data, layers);
    ctl_refs_t refs;
    ctl_refs_load(&refs, model, layers, 2);
    const harness_stream_t *teacher = refs.teacher, *hybrid = refs.hybrid;

    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    dsla_test_server_t srv = start(model, layers, db, "manual layers=0");
    wait_status("replica serving0 alive: plan 1 runs 0 DSLA layers");
    dsla_test_collected_t *got = calloc(1, sizeof *got);

    /* convert 2: the replica adopts the two versions, in distillation order */
    assert_int_equal(dslactl(out, "convert", "2", NULL), 0);
    wait_status("runs 2 DSLA layers");
    assert_int_equal(dslactl(out, "status", NULL, NULL), 0);
    assert_non_null(strstr(out, "policy: manual max_ratio=0.5 layers=2"));
    assert_non_null(strstr(out, "target 2"));
    ctl_generate(srv.endpoint, got);
    ctl_assert_same_ids(got, hybrid, "2 DSLA layers");
    dsla_test_http_reply_t h = dsla_test_http(srv.http_port, "POST", "/v1/completions",
                                              "{\"prompt\": \"Once upon\", \"max_tokens\": 8}");
    assert_int_equal(h.status, 200);
    dsla_test_http_reply_free(&h);

    /* bad input: named field and limit, exit 2 */
    assert_int_equal(dslactl(out, "convert", "1", NULL), 2);
    assert_non_null(strstr(out, "above the maximum of 2"));
    assert_int_equal(dslactl(out, "policy", "set", "slo"), 0);
    assert_int_equal(dslactl(out, "policy", "set", "manual"), 0); /* layers=0 */
    assert_int_equal(dslactl(out, "convert", "2", NULL), 0);
    assert_int_equal(dslactl(out, "revert", "x", NULL), 2);
    assert_non_null(strstr(out, "revert: N 'x' is not a whole number"));

    /* revert 2: the teacher again */
    assert_int_equal(dslactl(out, "revert", "2", NULL), 0);
    wait_status("runs 0 DSLA layers []; target 0\n");
    ctl_generate(srv.endpoint, got);
    ctl_assert_same_ids(got, teacher, "0 DSLA layers");

    /* corrupt versions: refused, the old plan stays and serves */
    char *saved[8];
    size_t sizes[8];
    char paths[8][1024];
    int n_files = corrupt_all(layers, saved, sizes, paths);
    assert_int_equal(n_files, 2);
    assert_int_equal(dslactl(out, "convert", "1", NULL), 0);
    wait_status("last refusal:");
    assert_int_equal(dslactl(out, "status", NULL, NULL), 0);
    assert_non_null(strstr(out, "runs 0 DSLA layers"));
    assert_non_null(strstr(out, "checksum"));
    assert_int_equal(dslactl(out, "history", "--limit", "50"), 0);
    assert_non_null(strstr(out, "plan_refused"));
    ctl_generate(srv.endpoint, got);
    ctl_assert_same_ids(got, teacher, "after a refused plan");
    dsla_test_server_stop(&srv);

    /* restart on the same database, without --policy: the pinned policy and the history stay,
     * and the fresh replica is converted again */
    for (int i = 0; i < n_files; i++) {
        dsla_test_write_file(paths[i], saved[i], sizes[i]);
        free(saved[i]);
    }
    srv = start(model, layers, db, NULL);
    wait_status("runs 1 DSLA layers");
    assert_int_equal(dslactl(out, "policy", "get", NULL), 0);
    assert_string_equal(out, "manual max_ratio=0.5 layers=1\n");
    assert_int_equal(dslactl(out, "history", "--limit", "100"), 0);
    assert_non_null(strstr(out, "plan_refused"));
    assert_non_null(strstr(out, "plan_adopted"));
    assert_int_equal(dslactl(out, "drain", NULL, NULL), 0);
    assert_int_equal(dslactl(out, "convert", "1", NULL), 2);
    assert_non_null(strstr(out, "draining"));
    dsla_test_server_stop(&srv);

    free(got);
    ctl_refs_free(&refs);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convert_revert_refuse_restart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

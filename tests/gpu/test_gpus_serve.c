/* dsla-serve --device cuda --gpus as a real process: one serving actor per GPU in one process.
 * - --gpus 0-1 (fp32): both replicas report to the controller and are routed to (each HTTP
 *   answer's system_fingerprint names its replica); `dslactl convert 2` converts both, and every
 *   greedy answer then equals the in-process CPU run under the same hybrid plan, whichever GPU
 *   served it;
 * - --gpus 0 alone: the same with one replica, serving0.
 * Exits 77 without a CUDA device, and after the one-GPU case passed with fewer than two GPUs;
 * skips without DSLA_TEST_DATA. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "tests/integration/replicas_harness.h"

enum { N_HTTP = 8, N_STUB = 6 };

static char admin[64];

/* dsla-serve over stories260K in fp32 on gpus, its controller over layers (manual layers=0). */
static dsla_test_server_t start(const char *model, const char *gpus, const char *layers,
                                const char *db) {
    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    const char *args[] = {"--model",
                          model,
                          "--device",
                          "cuda",
                          "--dtype",
                          "f32",
                          "--gpus",
                          gpus,
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
                          "--policy",
                          "manual layers=0",
                          NULL};
    return dsla_test_server_start(args);
}

/* n replicas on n GPUs: routed to, converted, and serving the hybrid's greedy ids. */
static void run_replicas(const char *gpus, int n) {
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    char *dir = dsla_test_tempdir();
    char layers[512], db[512], name[32];
    snprintf(layers, sizeof layers, "%s/layers", dir);
    snprintf(db, sizeof db, "%s/controller.db", dir);
    static char out[CTL_OUT_MAX];
    replicas_distill_init_only(model, data, layers);
    ctl_refs_t refs;
    ctl_refs_load(&refs, model, layers, 2);
    dsla_test_server_t srv = start(model, gpus, layers, db);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "serving%d", i);
        replicas_wait_runs(admin, name, 0);
    }
    replicas_wait_gateway_alive(srv.http_port, n);

    int served[8] = {0};
    for (int i = 0; i < N_HTTP; i++) {
        dsla_test_http_reply_t h = dsla_test_http(srv.http_port, "POST", "/v1/completions",
                                                  "{\"prompt\": \"Once upon\", \"max_tokens\": 4}");
        assert_int_equal(h.status, 200);
        char fp[128];
        replicas_fingerprint(h.body, fp, sizeof fp);
        int r = -1;
        if (sscanf(fp, "serving%d:", &r) != 1 || r < 0 || r >= n)
            fail_msg("fingerprint %s names no replica of this node", fp);
        served[r]++;
        dsla_test_http_reply_free(&h);
    }
    for (int i = 0; i < n; i++)
        if (served[i] == 0) fail_msg("serving%d (GPU %d) served none of %d requests", i, i, N_HTTP);

    assert_int_equal(ctl_dslactl(admin, out, "convert", "2", NULL), 0);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "serving%d", i);
        replicas_wait_runs(admin, name, 2);
    }
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    for (int i = 0; i < N_STUB; i++) {
        char replica[64];
        ctl_generate_at(srv.endpoint, got, replica, sizeof replica);
        ctl_assert_same_ids(got, refs.hybrid, replica);
    }
    dsla_test_server_stop(&srv);
    free(got);
    ctl_refs_free(&refs);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
    free(data);
}

static void test_two_gpus(void **state) {
    (void)state;
    run_replicas("0-1", 2);
}

static void test_one_gpu(void **state) {
    (void)state;
    run_replicas("0", 1);
}

int main(void) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "test_gpus_serve: no CUDA device, skipped\n");
        return 77;
    }
    const struct CMUnitTest one[] = {cmocka_unit_test(test_one_gpu)};
    const struct CMUnitTest two[] = {cmocka_unit_test(test_two_gpus)};
    const int rc = cmocka_run_group_tests(one, NULL, NULL);
    if (rc != 0) return rc;
    if (dsla_cuda_device_count() < 2) {
        fprintf(stderr, "test_gpus_serve: --gpus 0 passed; fewer than two GPUs: --gpus 0-1 "
                        "skipped\n");
        return 77;
    }
    return cmocka_run_group_tests(two, NULL, NULL);
}

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

/* n replicas on n GPUs: routed to, converted, and serving the hybrid's greedy ids. */
static void run_replicas(const char *gpus, int n) {
    replicas_fx_t fx;
    replicas_fx_init(&fx);
    char name[32];
    static char out[CTL_OUT_MAX];
    const char *extra[] = {"--device", "cuda", "--dtype", "f32", "--gpus", gpus, NULL};
    dsla_test_server_t srv = replicas_start(&fx, extra);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "serving%d", i);
        replicas_wait_runs(fx.admin, name, 0);
    }
    replicas_wait_gateway_alive(srv.http_port, n);

    static const char *const names[] = {"serving0", "serving1"};
    replicas_spread(srv.http_port, N_HTTP, names, n);

    assert_int_equal(ctl_dslactl(fx.admin, out, "convert", "2", NULL), 0);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "serving%d", i);
        replicas_wait_runs(fx.admin, name, 2);
    }
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    for (int i = 0; i < N_STUB; i++) {
        char replica[64];
        ctl_generate_at(srv.endpoint, got, replica, sizeof replica);
        ctl_assert_same_ids(got, fx.refs.hybrid, replica);
    }
    dsla_test_server_stop(&srv);
    free(got);
    replicas_fx_free(&fx);
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

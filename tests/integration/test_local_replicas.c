/* Several serving actors in one dsla-serve (`--local-replicas 3`, the CPU form of `--gpus 0-2`):
 * `dsla distill --steps 0` writes two layer versions of stories260K; one process runs the gateway,
 * the controller (manual policy) and three local replicas, plus a remote `--serving-only` replica
 * reporting to the same controller. HTTP requests spread over all the replicas (each answer's
 * system_fingerprint names its replica, and /metrics counts what the gateway routed to each);
 * `dslactl convert 2` converts all three local replicas, whose greedy outputs then equal the
 * in-process hybrid's; the remote replica's plan is refused (its layer cache is made unusable)
 * and it keeps the teacher's plan without holding the others back; killing it leaves the three
 * serving and still following the controller (revert). Bad --gpus and --local-replicas values are
 * refused naming the option and the value, as are more than one --distill-gpus and one GPU in both
 * lists. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/integration/replicas_harness.h"

enum { N_LOCAL = 3, N_HTTP = 12, N_STUB = 6 };

static char admin[64];

static void wait_runs(const char *name, int k) {
    replicas_wait_runs(admin, name, k);
}

static void test_bad_options(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    static char out[CTL_OUT_MAX];
    const struct {
        const char *args[12];
        const char *want;
    } cases[] = {
        {{"--device", "cuda", "--gpus", "2-1"}, "--gpus 2-1: the range 2-1 runs backwards"},
        {{"--device", "cuda", "--gpus", "0,a"}, "--gpus 0,a: 'a' is not a GPU index"},
        {{"--device", "cuda", "--gpus", "0,1,1"}, "--gpus 0,1,1: GPU 1 is named twice"},
        {{"--gpus", "0-1"}, "--gpus 0-1 serves on GPUs: it needs --device cuda"},
        {{"--local-replicas", "0"}, "--local-replicas: 0 is outside the allowed range 1..64"},
        {{"--local-replicas", "2", "--device", "cuda"}, "--local-replicas 2 runs CPU serving"},
        {{"--local-replicas", "2", "--serving-only"}, "--serving-only runs one serving actor"},
        {{"--distill-data", "d.txt", "--distill-out", "out", "--distill-gpus", "6,7"},
         "--distill-gpus 6,7: one distiller GPU for now"},
        {{"--distill-data", "d.txt", "--distill-out", "out", "--distill-gpus", "6", "--distill-gpu",
          "6"},
         "--distill-gpus 6 trains on CUDA GPUs: not with --distill-gpu"},
        {{"--device", "cuda", "--gpus", "0-1", "--distill-data", "d.txt", "--distill-out", "out",
          "--distill-gpus", "1"},
         "GPU 1 is in both --gpus 0-1 and --distill-gpus 1"},
        {{"--distill-gpus", "6"}, "--distill-gpus is for a node with the distiller"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[20] = {"--model", model, "--http", "off"};
        int n = 4;
        for (int k = 0; cases[i].args[k]; k++)
            args[n++] = cases[i].args[k];
        assert_int_equal(ctl_run_bin("dsla-serve", args, out, CTL_OUT_MAX), 2);
        if (!strstr(out, cases[i].want))
            fail_msg("case %zu: wanted '%s' in:\n%s", i, cases[i].want, out);
    }
    free(model);
}

static void test_three_local_replicas(void **state) {
    (void)state;
    replicas_fx_t fx;
    replicas_fx_init(&fx);
    snprintf(admin, sizeof admin, "%s", fx.admin);
    char cache[512], remote_ep[64];
    snprintf(cache, sizeof cache, "%s/remote-cache", fx.dir);
    snprintf(remote_ep, sizeof remote_ep, "tcp://127.0.0.1:%d", ctl_free_port());
    static char out[CTL_OUT_MAX];
    const char *remote_args[] = {
        "--model", fx.model, "--serving-only", "--endpoint", remote_ep,     "--controller", admin,
        "--name",  "remote", "--layer-cache",  cache,        "--report-ms", "50",           NULL};
    dsla_test_server_t remote = dsla_test_server_start(remote_args);
    const char *extra[] = {"--local-replicas", "3", "--replica", remote_ep, NULL};
    dsla_test_server_t srv = replicas_start(&fx, extra);
    wait_runs("serving0", 0);
    wait_runs("serving1", 0);
    wait_runs("serving2", 0);
    wait_runs("remote", 0);
    replicas_wait_gateway_alive(srv.http_port, 4);

    /* HTTP spreads over every replica: each answer names the one that served it */
    static const char *const names[] = {"serving0", "serving1", "serving2", "remote"};
    replicas_spread(srv.http_port, N_HTTP, names, 4);
    dsla_test_http_reply_t m = dsla_test_http(srv.http_port, "GET", "/metrics", NULL);
    assert_int_equal(m.status, 200);
    for (int i = 0; i < N_LOCAL; i++) {
        char want[128];
        snprintf(want, sizeof want, "replica=\"serving%d\",endpoint=\"inproc://serving%d\"", i, i);
        if (!strstr(m.body, want)) fail_msg("/metrics lacks %s:\n%s", want, m.body);
    }
    dsla_test_http_reply_free(&m);

    /* the remote replica's layer cache becomes a plain file: its fetch fails, it refuses the
     * plan, and the three local replicas adopt it all the same */
    dsla_test_rmtree(cache);
    dsla_test_write_file(cache, "not a directory", 15);
    assert_int_equal(ctl_dslactl(admin, out, "convert", "2", NULL), 0);
    wait_runs("serving0", 2);
    wait_runs("serving1", 2);
    wait_runs("serving2", 2);
    ctl_wait_status(admin, "last refusal:");
    assert_int_equal(ctl_dslactl(admin, out, "status", NULL, NULL), 0);
    if (!strstr(out, "replica remote alive: plan 1 runs 0 DSLA layers"))
        fail_msg("the remote replica left its plan:\n%s", out);
    assert_int_equal(ctl_dslactl(admin, out, "history", "--limit", "100"), 0);
    assert_non_null(strstr(out, "plan_refused"));

    /* every answer equals the in-process run of the plan its replica runs */
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    int hybrid_seen = 0;
    for (int i = 0; i < N_STUB; i++) {
        char replica[64];
        ctl_generate_at(srv.endpoint, got, replica, sizeof replica);
        const bool remote_one = strcmp(replica, "remote") == 0;
        ctl_assert_same_ids(got, remote_one ? fx.refs.teacher : fx.refs.hybrid, replica);
        hybrid_seen += !remote_one;
    }
    assert_true(hybrid_seen > 0);

    /* the remote replica dies: the local three serve on and still follow the controller */
    dsla_test_server_kill(remote.pid);
    ctl_wait_status(admin, "replica remote dead:");
    for (int i = 0; i < N_HTTP; i++) {
        dsla_test_http_reply_t h = dsla_test_http(srv.http_port, "POST", "/v1/completions",
                                                  "{\"prompt\": \"Once upon\", \"max_tokens\": 4}");
        assert_int_equal(h.status, 200);
        dsla_test_http_reply_free(&h);
    }
    assert_int_equal(ctl_dslactl(admin, out, "revert", "1", NULL), 0);
    wait_runs("serving0", 1);
    wait_runs("serving1", 1);
    wait_runs("serving2", 1);
    dsla_test_server_stop(&srv);

    free(got);
    replicas_fx_free(&fx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_three_local_replicas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

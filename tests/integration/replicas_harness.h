/* Shared by the tests of several serving replicas in one dsla-serve (test_local_replicas.c on the
 * CPU, tests/gpu/test_gpus_serve.c on GPUs): teacher-initialised layer versions, the replica an
 * answer names, and polling the controller and the gateway until every replica is ready.
 * Header-only (static inline) because each test is its own executable. */
#ifndef DSLA_TESTS_REPLICAS_HARNESS_H
#define DSLA_TESTS_REPLICAS_HARNESS_H

#include "tests/integration/ctl_harness.h"

/* `dsla distill --steps 0` (teacher-initialised versions) of two layers into out_dir. */
static inline void replicas_distill_init_only(const char *model, const char *data,
                                              const char *out_dir) {
    static char out[CTL_OUT_MAX];
    const char *args[] = {"distill", "--model",  model, "--data",          data, "--out",
                          out_dir,   "--layers", "2",   "--steps",         "0",  "--seq-len",
                          "64",      "--batch",  "2",   "--max-sequences", "8",  "--eval-sequences",
                          "2",       NULL};
    if (ctl_run_bin("dsla", args, out, CTL_OUT_MAX) != 0) fail_msg("dsla distill:\n%s", out);
}

/* The system_fingerprint of a completion's JSON body into out. */
static inline void replicas_fingerprint(const char *body, char *out, size_t cap) {
    const char *p = strstr(body, "\"system_fingerprint\"");
    if (!p) fail_msg("no system_fingerprint in %s", body);
    p = strchr(p + 20, '"');
    assert_non_null(p);
    const char *end = strchr(p + 1, '"');
    assert_non_null(end);
    snprintf(out, cap, "%.*s", (int)(end - p - 1), p + 1);
}

/* Polls `dslactl status` until replica name is alive and runs k DSLA layers, whatever its plan's
 * id; fails with the last status otherwise. */
static inline void replicas_wait_runs(const char *admin, const char *name, int k) {
    static char out[CTL_OUT_MAX];
    char head[96], runs[64];
    snprintf(head, sizeof head, "replica %s alive: plan ", name);
    snprintf(runs, sizeof runs, " runs %d DSLA layers", k);
    for (int waited = 0; waited < CTL_WAIT_MS; waited += 50) {
        if (ctl_dslactl(admin, out, "status", NULL, NULL) == 0) {
            const char *line = strstr(out, head);
            const char *eol = line ? strchr(line, '\n') : NULL;
            const char *hit = line ? strstr(line, runs) : NULL;
            if (hit && (!eol || hit < eol)) return;
        }
        ctl_sleep_ms(50);
    }
    fail_msg("replica %s never ran %d DSLA layers; last status:\n%s", name, k, out);
}

/* Polls /health until the gateway counts n replicas alive (it routes to those before the ones it
 * has not heard from yet). */
static inline void replicas_wait_gateway_alive(int port, int n) {
    int alive = 0;
    for (int waited = 0; waited < CTL_WAIT_MS; waited += 50) {
        dsla_test_http_reply_t h = dsla_test_http(port, "GET", "/health", NULL);
        alive = 0;
        for (const char *p = h.body; p && (p = strstr(p, "\"state\":\"alive\"")); p++)
            alive++;
        dsla_test_http_reply_free(&h);
        if (alive == n) return;
        ctl_sleep_ms(50);
    }
    fail_msg("the gateway never saw %d replicas alive (last %d)", n, alive);
}

#endif

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

/* Sends requests completions over HTTP to port and fails unless every answer names one of
 * names[0..n) (its system_fingerprint "NAME:plan-N") and each of them answered at least one. */
static inline void replicas_spread(int port, int requests, const char *const *names, int n) {
    int served[64] = {0};
    for (int i = 0; i < requests; i++) {
        dsla_test_http_reply_t h = dsla_test_http(port, "POST", "/v1/completions",
                                                  "{\"prompt\": \"Once upon\", \"max_tokens\": 4}");
        assert_int_equal(h.status, 200);
        char fp[128];
        replicas_fingerprint(h.body, fp, sizeof fp);
        int r = 0;
        while (r < n &&
               !(strncmp(fp, names[r], strlen(names[r])) == 0 && fp[strlen(names[r])] == ':'))
            r++;
        if (r == n) fail_msg("fingerprint %s names no replica of this node", fp);
        served[r]++;
        dsla_test_http_reply_free(&h);
    }
    for (int r = 0; r < n; r++)
        if (served[r] == 0) fail_msg("%s served none of %d requests", names[r], requests);
}

/* What both tests share: stories260K and its calibration data (skipping without them), a
 * temporary directory with two teacher-initialised layer versions in layers/, the in-process
 * references under none and both of them, and a free port for the controller's admin mailbox. */
typedef struct {
    char *model, *data, *dir;
    char layers[512], db[512], admin[64];
    ctl_refs_t refs;
} replicas_fx_t;

static inline void replicas_fx_init(replicas_fx_t *f) {
    f->model = dsla_test_data_or_skip("models/stories260K-hf");
    f->data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    f->dir = dsla_test_tempdir();
    snprintf(f->layers, sizeof f->layers, "%s/layers", f->dir);
    snprintf(f->db, sizeof f->db, "%s/controller.db", f->dir);
    snprintf(f->admin, sizeof f->admin, "tcp://127.0.0.1:%d", ctl_free_port());
    replicas_distill_init_only(f->model, f->data, f->layers);
    ctl_refs_load(&f->refs, f->model, f->layers, 2);
}

static inline void replicas_fx_free(replicas_fx_t *f) {
    ctl_refs_free(&f->refs);
    dsla_test_rmtree(f->dir);
    free(f->dir);
    free(f->model);
    free(f->data);
}

/* dsla-serve over f's model: its gateway on a free port, HTTP on another, the controller over
 * f->layers at f->admin (manual layers=0, reports every 50 ms), then extra (NULL-terminated, at
 * most 16: the replicas' options). */
static inline dsla_test_server_t replicas_start(const replicas_fx_t *f, const char *const *extra) {
    const char *args[48] = {"--model",         f->model,      "--endpoint", "tcp://127.0.0.1:*",
                            "--http",          "127.0.0.1:0", "--layers",   f->layers,
                            "--controller-db", f->db,         "--admin",    f->admin,
                            "--report-ms",     "50",          "--policy",   "manual layers=0"};
    int n = 16;
    for (int i = 0; extra[i] && i < 16; i++)
        args[n++] = extra[i];
    return dsla_test_server_start(args);
}

#endif

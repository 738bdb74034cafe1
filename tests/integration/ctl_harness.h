/* Shared by the integration tests of the control loop (test_controller.c, test_distiller.c): a free
 * loopback port, running $DSLA_BIN programs (dslactl above all) and polling `dslactl status`,
 * greedy generation through the client stub, the in-process reference under the first versions
 * of a catalogue, and the fast `dsla distill` run those catalogues come from. Header-only (static
 * inline) because each test is its own executable. */
#ifndef DSLA_TESTS_CTL_HARNESS_H
#define DSLA_TESTS_CTL_HARNESS_H

#include "tests/testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/control/layer_catalogue.h"
#include "proto/dsla_client.h"
#include "tests/serverutil.h"
#include "tests/unit/serve_harness.h"

enum { CTL_MAX_TOKENS = 24, CTL_WAIT_MS = 20000, CTL_OUT_MAX = 1 << 16 };

static const int32_t ctl_prompt_ids[] = {1, 403, 407, 261, 78, 29, 300};

/* A loopback TCP port free now (the kernel's pick for port 0). */
static inline int ctl_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Runs a program of $DSLA_BIN with argv (NULL-terminated, after argv[0]); stdout and stderr
 * together into out. Returns the exit code. */
static inline int ctl_run_bin(const char *prog, const char *const *args, char *out, size_t cap) {
    char path[1024], log[1024];
    snprintf(path, sizeof path, "%s/%s", dsla_test_bin_dir(), prog);
    char *dir = dsla_test_tempdir();
    snprintf(log, sizeof log, "%s/out", dir);
    const char *argv[48] = {path};
    for (int i = 0; args[i] && i < 46; i++)
        argv[i + 1] = args[i];
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen(log, "w", stdout) || dup2(fileno(stdout), 2) < 0) _exit(127);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    char *text = dsla_test_read_file(log, NULL);
    snprintf(out, cap, "%s", text ? text : "");
    free(text);
    dsla_test_rmtree(dir);
    free(dir);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* dslactl --admin ADMIN a1 [a2 [a3]] into out (CTL_OUT_MAX bytes). */
static inline int ctl_dslactl(const char *admin, char *out, const char *a1, const char *a2,
                              const char *a3) {
    const char *args[] = {"--admin", admin, a1, a2, a3, NULL};
    return ctl_run_bin("dslactl", args, out, CTL_OUT_MAX);
}

static inline void ctl_sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls `dslactl status` until it shows needle; fails with the last status otherwise. */
static inline void ctl_wait_status(const char *admin, const char *needle) {
    static char out[CTL_OUT_MAX];
    for (int waited = 0; waited < CTL_WAIT_MS; waited += 50) {
        if (ctl_dslactl(admin, out, "status", NULL, NULL) == 0 && strstr(out, needle)) return;
        ctl_sleep_ms(50);
    }
    fail_msg("dslactl status never showed '%s'; last:\n%s", needle, out);
}

/* Greedy ids of ctl_prompt_ids through the client stub; the answering replica's name into replica
 * (cap bytes) unless NULL. */
static inline void ctl_generate_at(const char *endpoint, dsla_test_collected_t *got, char *replica,
                                   size_t cap) {
    dsla_client_t *c = NULL;
    assert_int_equal(dsla_client_connect(&c, endpoint, NULL), DSLA_OK);
    dsla_proto_generate_t req = {.prompt_ids = ctl_prompt_ids,
                                 .n_prompt_ids = sizeof ctl_prompt_ids / sizeof ctl_prompt_ids[0],
                                 .max_tokens = CTL_MAX_TOKENS,
                                 .temperature = 0,
                                 .top_p = 1,
                                 .ignore_eos = true,
                                 .stream = true};
    dsla_client_result_t res;
    memset(got, 0, sizeof *got);
    dsla_proto_code_t code = dsla_client_generate(c, &req, dsla_test_collect, got, 30000, &res);
    if (code != DSLA_CODE_OK) fail_msg("generate: %s", res.message);
    if (replica) snprintf(replica, cap, "%s", res.replica);
    dsla_client_close(&c);
}

static inline void ctl_generate(const char *endpoint, dsla_test_collected_t *got) {
    ctl_generate_at(endpoint, got, NULL, 0);
}

/* Greedy ids in-process, under the first n_dsla versions of the catalogue. */
static inline void ctl_reference(dsla_model_t *m, const dsla_tokenizer_t *tok,
                                 const dsla_catalogue_t *cat, int n_dsla, harness_stream_t *out) {
    dsla_plan_t *plan = NULL;
    harness_ok(dsla_plan_create(&plan, dsla_model_config(m)->num_layers), "plan");
    for (int i = 0; i < n_dsla; i++) {
        dsla_dsla_layer_t *w = NULL;
        harness_ok(dsla_dsla_layer_load(&w, cat->entries[i].path, dsla_model_config(m), NULL),
                   "load layer version");
        dsla_layer_ref_t *ref = NULL;
        harness_ok(dsla_layer_ref_create(&ref, &w), "layer ref");
        harness_ok(dsla_plan_set_layer(plan, cat->entries[i].layer, ref), "plan layer");
        dsla_layer_ref_release(&ref);
    }
    harness_request_t q = {.n_prompt = sizeof ctl_prompt_ids / sizeof ctl_prompt_ids[0],
                           .max_tokens = CTL_MAX_TOKENS,
                           .ignore_eos = true};
    memcpy(q.prompt, ctl_prompt_ids, sizeof ctl_prompt_ids);
    dsla_engine_config_t cfg = dsla_engine_config_default();
    harness_run_solo(m, tok, &cfg, plan, &q, out);
    dsla_plan_release(&plan);
}

static inline void ctl_assert_same_ids(const dsla_test_collected_t *got,
                                       const harness_stream_t *want, const char *what) {
    if (got->n != want->n || memcmp(got->ids, want->ids, sizeof got->ids[0] * (size_t)got->n))
        fail_msg("%s: the served greedy ids differ from in-process generation (%d vs %d tokens)",
                 what, got->n, want->n);
}

/* `dsla distill` of two layers of model with the integration tests' fast settings (3 steps of
 * 2 x 64 tokens, seed 7) into out_dir; fails the test with its output otherwise. */
static inline void ctl_distill_two(const char *model, const char *data, const char *out_dir) {
    static char out[CTL_OUT_MAX];
    const char *args[] = {"distill", "--model",
                          model,     "--data",
                          data,      "--out",
                          out_dir,   "--layers",
                          "2",       "--steps",
                          "3",       "--seq-len",
                          "64",      "--batch",
                          "2",       "--max-sequences",
                          "8",       "--eval-sequences",
                          "2",       "--seed",
                          "7",       NULL};
    if (ctl_run_bin("dsla", args, out, CTL_OUT_MAX) != 0) fail_msg("dsla distill:\n%s", out);
}

/* The catalogue of a layer version directory of n entries, the model, and the in-process greedy
 * ids under none of them (teacher) and all n (hybrid), which must differ for a test to mean
 * anything. */
typedef struct {
    dsla_catalogue_t *cat;
    dsla_model_t *model;
    dsla_tokenizer_t *tok;
    harness_stream_t *teacher, *hybrid;
} ctl_refs_t;

static inline void ctl_refs_load(ctl_refs_t *r, const char *model, const char *layers, int n) {
    r->cat = calloc(1, sizeof *r->cat);
    harness_ok(dsla_catalogue_scan(r->cat, layers), "catalogue");
    assert_int_equal(r->cat->n, n);
    r->model = harness_load_model(model);
    r->tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&r->tok, model), "tokenizer");
    r->teacher = calloc(1, sizeof *r->teacher);
    r->hybrid = calloc(1, sizeof *r->hybrid);
    ctl_reference(r->model, r->tok, r->cat, 0, r->teacher);
    ctl_reference(r->model, r->tok, r->cat, n, r->hybrid);
    assert_memory_not_equal(r->teacher->ids, r->hybrid->ids,
                            sizeof r->teacher->ids[0] * CTL_MAX_TOKENS);
}

static inline void ctl_refs_free(ctl_refs_t *r) {
    free(r->teacher);
    free(r->hybrid);
    free(r->cat);
    dsla_tokenizer_destroy(&r->tok);
    dsla_model_destroy(&r->model);
}

/* What the distiller tests share: the model and calibration data, a temporary directory with the
 * online (dsla-serve's) and offline (dsla distill's) output paths, the model and tokenizer loaded,
 * the teacher's in-process greedy ids, and two empty catalogues. */
typedef struct {
    char *model, *data, *dir;
    char online[512], offline[512];
    dsla_model_t *m;
    dsla_tokenizer_t *tok;
    harness_stream_t *teacher, *hybrid;
    dsla_catalogue_t *cat, *ref_cat;
} ctl_distill_fx_t;

static inline void ctl_distill_fx_open(ctl_distill_fx_t *f, const char *model_rel) {
    f->model = dsla_test_data_or_skip(model_rel);
    f->data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    f->dir = dsla_test_tempdir();
    snprintf(f->online, sizeof f->online, "%s/online", f->dir);
    snprintf(f->offline, sizeof f->offline, "%s/offline", f->dir);
    f->m = harness_load_model(f->model);
    f->tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&f->tok, f->model), "tokenizer");
    f->teacher = calloc(1, sizeof *f->teacher);
    f->hybrid = calloc(1, sizeof *f->hybrid);
    f->cat = calloc(1, sizeof *f->cat);
    f->ref_cat = calloc(1, sizeof *f->ref_cat);
    ctl_reference(f->m, f->tok, f->cat, 0, f->teacher); /* an empty catalogue: the teacher */
}

static inline void ctl_distill_fx_close(ctl_distill_fx_t *f) {
    free(f->teacher);
    free(f->hybrid);
    free(f->cat);
    free(f->ref_cat);
    dsla_tokenizer_destroy(&f->tok);
    dsla_model_destroy(&f->m);
    dsla_test_rmtree(f->dir);
    free(f->dir);
    free(f->model);
    free(f->data);
}

#endif

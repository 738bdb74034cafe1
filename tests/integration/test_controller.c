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

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "actors/layer_catalogue.h"
#include "proto/dsla_client.h"
#include "runtime/model/tokenizer.h"
#include "tests/serverutil.h"
#include "tests/unit/serve_harness.h"

enum { MAX_TOKENS = 24, WAIT_MS = 20000, OUT_MAX = 1 << 16 };

static const int32_t prompt_ids[] = {1, 403, 407, 261, 78, 29, 300};

/* A loopback TCP port free now (the kernel's pick for port 0). */
static int free_port(void) {
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
static int run_bin(const char *prog, const char *const *args, char *out, size_t cap) {
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

static char admin[64];

static int dslactl(char *out, const char *a1, const char *a2, const char *a3) {
    const char *args[] = {"--admin", admin, a1, a2, a3, NULL};
    return run_bin("dslactl", args, out, OUT_MAX);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls `dslactl status` until it shows needle; fails with the last status otherwise. */
static void wait_status(const char *needle) {
    static char out[OUT_MAX];
    for (int waited = 0; waited < WAIT_MS; waited += 50) {
        if (dslactl(out, "status", NULL, NULL) == 0 && strstr(out, needle)) return;
        sleep_ms(50);
    }
    fail_msg("dslactl status never showed '%s'; last:\n%s", needle, out);
}

static void generate(const char *endpoint, dsla_test_collected_t *got) {
    dsla_client_t *c = NULL;
    assert_int_equal(dsla_client_connect(&c, endpoint, NULL), DSLA_OK);
    dsla_proto_generate_t req = {.prompt_ids = prompt_ids,
                                 .n_prompt_ids = sizeof prompt_ids / sizeof prompt_ids[0],
                                 .max_tokens = MAX_TOKENS,
                                 .temperature = 0,
                                 .top_p = 1,
                                 .ignore_eos = true,
                                 .stream = true};
    dsla_client_result_t res;
    memset(got, 0, sizeof *got);
    dsla_proto_code_t code = dsla_client_generate(c, &req, dsla_test_collect, got, 30000, &res);
    if (code != DSLA_CODE_OK) fail_msg("generate: %s", res.message);
    dsla_client_close(&c);
}

/* Greedy ids in-process, under the first n_dsla versions of the catalogue. */
static void reference(dsla_model_t *m, const dsla_tokenizer_t *tok, const dsla_catalogue_t *cat,
                      int n_dsla, harness_stream_t *out) {
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
    harness_request_t q = {.n_prompt = sizeof prompt_ids / sizeof prompt_ids[0],
                           .max_tokens = MAX_TOKENS,
                           .ignore_eos = true};
    memcpy(q.prompt, prompt_ids, sizeof prompt_ids);
    dsla_engine_config_t cfg = dsla_engine_config_default();
    harness_run_solo(m, tok, &cfg, plan, &q, out);
    dsla_plan_release(&plan);
}

static void assert_same_ids(const dsla_test_collected_t *got, const harness_stream_t *want,
                            const char *what) {
    if (got->n != want->n || memcmp(got->ids, want->ids, sizeof got->ids[0] * (size_t)got->n))
        fail_msg("%s: the served greedy ids differ from in-process generation (%d vs %d tokens)",
                 what, got->n, want->n);
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
    const char *distill[] = {"distill", "--model",
                             model,     "--data",
                             data,      "--out",
                             layers,    "--layers",
                             "2",       "--steps",
                             "3",       "--seq-len",
                             "64",      "--batch",
                             "2",       "--max-sequences",
                             "8",       "--eval-sequences",
                             "2",       "--seed",
                             "7",       NULL};
    if (run_bin("dsla", distill, out, OUT_MAX) != 0) fail_msg("dsla distill:\n%s", out);
    dsla_catalogue_t *cat = calloc(1, sizeof *cat);
    harness_ok(dsla_catalogue_scan(cat, layers), "catalogue");
    assert_int_equal(cat->n, 2);

    dsla_model_t *m = harness_load_model(model);
    dsla_tokenizer_t *tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&tok, model), "tokenizer");
    harness_stream_t *teacher = calloc(1, sizeof *teacher), *hybrid = calloc(1, sizeof *hybrid);
    reference(m, tok, cat, 0, teacher);
    reference(m, tok, cat, 2, hybrid);
    /* the test means something only if the plans can be told apart by their outputs */
    assert_memory_not_equal(teacher->ids, hybrid->ids, sizeof teacher->ids[0] * MAX_TOKENS);

    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", free_port());
    dsla_test_server_t srv = start(model, layers, db, "manual layers=0");
    wait_status("replica serving0 alive: plan 1 runs 0 DSLA layers");
    dsla_test_collected_t *got = calloc(1, sizeof *got);

    /* convert 2: the replica adopts the two versions, in distillation order */
    assert_int_equal(dslactl(out, "convert", "2", NULL), 0);
    wait_status("runs 2 DSLA layers");
    assert_int_equal(dslactl(out, "status", NULL, NULL), 0);
    assert_non_null(strstr(out, "policy: manual max_ratio=0.5 layers=2"));
    assert_non_null(strstr(out, "target 2"));
    generate(srv.endpoint, got);
    assert_same_ids(got, hybrid, "2 DSLA layers");
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
    generate(srv.endpoint, got);
    assert_same_ids(got, teacher, "0 DSLA layers");

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
    generate(srv.endpoint, got);
    assert_same_ids(got, teacher, "after a refused plan");
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
    free(teacher);
    free(hybrid);
    free(cat);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&m);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convert_revert_refuse_restart),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dsla_test_servers_kill_all();
    return rc;
}

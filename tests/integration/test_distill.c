/* dsla distill end to end: distilling one layer of each shared model cuts its held-out layer MSE by
 * at least 10x, and a run killed with SIGKILL mid-layer resumes to the same layer versions an
 * uninterrupted run writes, without redoing finished layers. --steps 0 writes teacher-initialised
 * versions (no data needed with --order given) that equal a training run's starting point.
 * --order measured reports its per-layer probes and stores them. --kl-weight adds the logit KL
 * term: the run writes its versions, reports the weight and each layer's KL, and a negative weight
 * or a temperature not above 0 is refused naming the flag. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include "runtime/model/dsla_layer.h"
#include "runtime/model/llama.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char *dsla_bin(void) {
    const char *dir = getenv("DSLA_BIN");
    if (!dir) dir = "build/bin";
    size_t n = strlen(dir) + 8;
    char *path = malloc(n);
    snprintf(path, n, "%s/dsla", dir);
    return path;
}

/* Starts dsla with argv (NULL-terminated, argv[0] ignored), stdout and stderr to log. */
static pid_t spawn_dsla(char **argv, const char *log) {
    pid_t pid = fork();
    if (pid == 0) {
        FILE *f = freopen(log, "w", stdout);
        if (!f || dup2(fileno(stdout), 2) < 0) _exit(127);
        char *bin = dsla_bin();
        argv[0] = bin;
        execv(bin, argv);
        _exit(127);
    }
    assert_true(pid > 0);
    return pid;
}

static int wait_exit(pid_t pid) {
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static bool exists(const char *dir, const char *name) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void show_log_and_fail(const char *log, int code) {
    char *text = dsla_test_read_file(log, NULL);
    fail_msg("dsla distill exited %d:\n%s", code, text ? text : "(no log)");
}

/* A fresh directory (returned; the caller removes and frees it) and, under it, the paths of a
 * run's output directory, JSON report and log (512 bytes each). */
static char *scratch(char *out, char *report, char *log) {
    char *dir = dsla_test_tempdir();
    snprintf(out, 512, "%s/out", dir);
    snprintf(report, 512, "%s/report.json", dir);
    snprintf(log, 512, "%s/log", dir);
    return dir;
}

/* Builds the argument vector of a small distillation of model_rel into out. */
typedef struct {
    char *argv[40];
    int argc;
    char *owned[8];
    int n_owned;
} args_t;

static void args_add(args_t *a, const char *arg) {
    a->argv[a->argc++] = (char *)arg;
    a->argv[a->argc] = NULL;
}

static args_t distill_args(const char *model_rel, const char *out, const char *layers,
                           const char *steps, const char *report) {
    args_t a = {.argc = 0};
    args_add(&a, "dsla");
    args_add(&a, "distill");
    a.owned[a.n_owned++] = dsla_test_data_or_skip(model_rel);
    a.owned[a.n_owned++] = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    a.owned[a.n_owned++] = dsla_test_data_or_skip("data/tinystories_valid.txt");
    const char *fixed[] = {"--model",
                           a.owned[0],
                           "--data",
                           a.owned[1],
                           "--eval-data",
                           a.owned[2],
                           "--out",
                           out,
                           "--layers",
                           layers,
                           "--steps",
                           steps,
                           "--seq-len",
                           "128",
                           "--batch",
                           "4",
                           "--max-sequences",
                           "48",
                           "--eval-sequences",
                           "8",
                           "--checkpoint-every",
                           "5",
                           "--seed",
                           "7",
                           "--order",
                           "entropy",
                           "--report",
                           report};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        args_add(&a, fixed[i]);
    return a;
}

static void args_free(args_t *a) {
    for (int i = 0; i < a->n_owned; i++)
        free(a->owned[i]);
}

static void check_one_layer_cuts_mse(const char *model_rel, const char *steps) {
    char out[512], report[512], log[512];
    char *dir = scratch(out, report, log);
    args_t a = distill_args(model_rel, out, "1", steps, report);
    int code = wait_exit(spawn_dsla(a.argv, log));
    if (code != 0) show_log_and_fail(log, code);
    json_t *root = dsla_test_load_json(report);
    json_t *first = json_array_get(json_object_get(root, "converted"), 0);
    double init = json_real_value(json_object_get(first, "init_eval_mse"));
    double final = json_real_value(json_object_get(first, "eval_mse"));
    fprintf(stderr, "%s: held-out layer MSE %.4f -> %.4f (%.1fx)\n", model_rel, init, final,
            init / final);
    assert_true(final > 0.0);
    assert_true(init / final >= 10.0);
    json_decref(root);
    args_free(&a);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_one_layer_stories260k(void **state) {
    (void)state;
    check_one_layer_cuts_mse("models/stories260K-hf", "60");
}

static void test_one_layer_tinystories11m(void **state) {
    (void)state;
    check_one_layer_cuts_mse("models/tinystories-11M-hf", "40");
}

static void test_sigkill_resume_gives_the_same_versions(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char whole[512], killed[512], report[512], log[512];
    snprintf(whole, sizeof whole, "%s/whole", dir);
    snprintf(killed, sizeof killed, "%s/killed", dir);
    snprintf(report, sizeof report, "%s/report.json", dir);
    snprintf(log, sizeof log, "%s/log", dir);

    args_t a = distill_args("models/stories260K-hf", whole, "2", "40", report);
    int code = wait_exit(spawn_dsla(a.argv, log));
    if (code != 0) show_log_and_fail(log, code);
    args_free(&a);
    json_t *root = dsla_test_load_json(report);
    json_t *order = json_object_get(root, "order");
    char first_name[64], second_name[64];
    snprintf(first_name, sizeof first_name, "layer-%d.safetensors",
             (int)json_integer_value(json_array_get(order, 0)));
    snprintf(second_name, sizeof second_name, "layer-%d.safetensors",
             (int)json_integer_value(json_array_get(order, 1)));
    json_decref(root);

    /* Kill the second run once it is inside the second layer: its first version is written and
     * a checkpoint of the second exists. */
    a = distill_args("models/stories260K-hf", killed, "2", "40", report);
    pid_t pid = spawn_dsla(a.argv, log);
    bool inside = false;
    for (int i = 0; i < 120000 && !inside; i++) {
        inside = exists(killed, first_name) && exists(killed, "checkpoint.safetensors");
        if (!inside) {
            int status;
            if (waitpid(pid, &status, WNOHANG) == pid)
                fail_msg("dsla distill finished before it could be killed mid-layer");
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    assert_true(inside);
    kill(pid, SIGKILL);
    assert_int_equal(wait_exit(pid), 128 + SIGKILL);
    assert_false(exists(killed, second_name));

    char first_path[1024];
    snprintf(first_path, sizeof first_path, "%s/%s", killed, first_name);
    struct stat before;
    assert_int_equal(stat(first_path, &before), 0);
    code = wait_exit(spawn_dsla(a.argv, log));
    if (code != 0) show_log_and_fail(log, code);
    args_free(&a);
    char *text = dsla_test_read_file(log, NULL);
    assert_non_null(strstr(text, "kept from an earlier run"));
    free(text);
    struct stat after;
    assert_int_equal(stat(first_path, &after), 0);
    assert_int_equal(before.st_ino, after.st_ino); /* not rewritten */
    assert_false(exists(killed, "checkpoint.safetensors"));

    const char *names[] = {first_name, second_name};
    for (int i = 0; i < 2; i++) {
        char p1[1024], p2[1024];
        snprintf(p1, sizeof p1, "%s/%s", whole, names[i]);
        snprintf(p2, sizeof p2, "%s/%s", killed, names[i]);
        size_t n1 = 0, n2 = 0;
        char *b1 = dsla_test_read_file(p1, &n1), *b2 = dsla_test_read_file(p2, &n2);
        assert_non_null(b1);
        assert_non_null(b2);
        if (n1 != n2 || memcmp(b1, b2, n1) != 0)
            fail_msg("%s differs between the uninterrupted and the resumed run", names[i]);
        free(b1);
        free(b2);
    }
    dsla_test_rmtree(dir);
    free(dir);
}

/* --order measured: every layer probed (their perplexities in the progress output and the report,
 * the order ascending in them), the probes stored beside the versions. */
static void test_measured_order_reports_its_probes(void **state) {
    (void)state;
    char out[512], report[512], log[512];
    char *dir = scratch(out, report, log);
    args_t a = distill_args("models/stories260K-hf", out, "1", "4", report);
    args_add(&a, "--order");
    args_add(&a, "measured");
    args_add(&a, "--probe-steps");
    args_add(&a, "4");
    int code = wait_exit(spawn_dsla(a.argv, log));
    if (code != 0) show_log_and_fail(log, code);
    args_free(&a);
    assert_true(exists(out, "probes.safetensors"));
    char *text = dsla_test_read_file(log, NULL);
    assert_non_null(strstr(text, "probe layer 4: held-out ppl"));
    free(text);
    json_t *root = dsla_test_load_json(report);
    assert_int_equal(json_integer_value(json_object_get(root, "probe_steps")), 4);
    json_t *order = json_object_get(root, "order"), *ppl = json_object_get(root, "probe_ppl");
    assert_int_equal(json_array_size(ppl), 5);
    double last = 0.0;
    for (size_t i = 0; i < 5; i++) {
        const double v = json_real_value(
            json_array_get(ppl, (size_t)json_integer_value(json_array_get(order, i))));
        assert_true(v > 1.0 && v >= last);
        last = v;
    }
    json_decref(root);
    dsla_test_rmtree(dir);
    free(dir);
}

/* --steps 0 --order given, no --data: every layer of the order written, untrained, equal to
 * DESIGN.md 4's initialisation with the run's seed; a training run refuses that directory. */
static void test_init_only_writes_teacher_initialised_versions(void **state) {
    (void)state;
    char *model_dir = dsla_test_data_or_skip("models/stories260K-hf");
    char out[512], report[512], log[512];
    char *dir = scratch(out, report, log);
    args_t a = {.argc = 0};
    const char *argv[] = {"dsla",     "distill", "--model", model_dir, "--out",         out,
                          "--steps",  "0",       "--order", "given",   "--layer-order", "3,1",
                          "--layers", "2",       "--seed",  "7",       "--report",      report};
    for (size_t i = 0; i < sizeof argv / sizeof argv[0]; i++)
        args_add(&a, argv[i]);
    int code = wait_exit(spawn_dsla(a.argv, log));
    if (code != 0) show_log_and_fail(log, code);
    assert_true(exists(out, "layer-3.safetensors"));
    assert_true(exists(out, "layer-1.safetensors"));
    assert_false(exists(out, "layer-0.safetensors"));
    json_t *root = dsla_test_load_json(report);
    json_t *conv = json_object_get(root, "converted");
    assert_int_equal(json_array_size(conv), 2);
    assert_true(json_is_null(json_object_get(json_array_get(conv, 0), "eval_mse")));
    assert_true(json_is_null(json_object_get(root, "teacher_ppl")));
    json_decref(root);

    dsla_model_t *m = NULL;
    assert_int_equal(dsla_model_load(&m, model_dir), DSLA_OK);
    const dsla_model_config_t *cfg = dsla_model_config(m);
    char path[1024];
    snprintf(path, sizeof path, "%s/layer-1.safetensors", out);
    dsla_dsla_layer_t *got = NULL, *want = NULL;
    dsla_layer_version_meta_t meta;
    assert_int_equal(dsla_dsla_layer_load(&got, path, cfg, &meta), DSLA_OK);
    assert_int_equal(meta.steps, 0);
    assert_int_equal(meta.order[0], 3);
    assert_int_equal(meta.order[1], 1);
    assert_int_equal(dsla_dsla_layer_create(&want, cfg, 1), DSLA_OK);
    assert_int_equal(dsla_dsla_layer_init_from_teacher(want, m, 1, 7 + 1), DSLA_OK);
    assert_int_equal(got->numel, want->numel);
    assert_memory_equal(got->data, want->data, got->numel * sizeof(float));
    dsla_dsla_layer_destroy(&got);
    dsla_dsla_layer_destroy(&want);
    dsla_model_destroy(&m);

    /* Training on top of init-only versions would keep untrained layers as finished: refused. */
    args_t t = distill_args("models/stories260K-hf", out, "2", "5", report);
    args_add(&t, "--order");
    args_add(&t, "given");
    args_add(&t, "--layer-order");
    args_add(&t, "3,1");
    code = wait_exit(spawn_dsla(t.argv, log));
    assert_int_equal(code, 1);
    char *text = dsla_test_read_file(log, NULL);
    assert_non_null(strstr(text, "init-only"));
    free(text);
    args_free(&t);
    free(model_dir);
    dsla_test_rmtree(dir);
    free(dir);
}

/* --device cuda where it cannot run (a build without CUDA, or stories260K's head dim 8, which the
 * GPU's DSLA kernels do not take) fails at once, saying why, before any work; a bad --device or
 * --dtype is a usage error. */
static void test_device_cuda_refusals_are_named(void **state) {
    (void)state;
    char out[512], report[512], log[512];
    char *dir = scratch(out, report, log);
    args_t a = distill_args("models/stories260K-hf", out, "1", "5", report);
    args_add(&a, "--device");
    args_add(&a, "cuda");
    assert_int_equal(wait_exit(spawn_dsla(a.argv, log)), 1);
    char *text = dsla_test_read_file(log, NULL);
    if (!strstr(text, "--device cuda")) fail_msg("no reason given:\n%s", text);
    free(text);
    assert_false(exists(out, "layer-1.safetensors"));
    args_free(&a);

    const char *bad[][2] = {{"--device", "tpu"}, {"--dtype", "f16"}, {"--gate-cosine", "0.1"}};
    for (int i = 0; i < 3; i++) {
        a = distill_args("models/stories260K-hf", out, "1", "5", report);
        args_add(&a, bad[i][0]);
        args_add(&a, bad[i][1]);
        if (i == 2) {
            args_add(&a, "--device");
            args_add(&a, "cuda");
        }
        assert_int_equal(wait_exit(spawn_dsla(a.argv, log)), 2);
        args_free(&a);
    }
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_kl_weight_runs_and_is_reported(void **state) {
    (void)state;
    char out[512], report[512], log[512];
    char *dir = scratch(out, report, log);
    args_t a = distill_args("models/stories260K-hf", out, "2", "6", report);
    args_add(&a, "--kl-weight");
    args_add(&a, "0.5");
    int code = wait_exit(spawn_dsla(a.argv, log));
    if (code != 0) show_log_and_fail(log, code);
    char *text = dsla_test_read_file(log, NULL);
    if (!strstr(text, "(kl ") || !strstr(text, "logit KL term: weight 0.5"))
        fail_msg("no KL in the progress or the summary:\n%s", text);
    free(text);
    json_t *root = dsla_test_load_json(report);
    assert_true(json_number_value(json_object_get(root, "kl_weight")) == 0.5);
    assert_true(json_number_value(json_object_get(root, "kl_temperature")) == 1.0);
    json_t *converted = json_object_get(root, "converted");
    assert_int_equal(json_array_size(converted), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *c = json_array_get(converted, i);
        char name[64];
        snprintf(name, sizeof name, "layer-%d.safetensors",
                 (int)json_integer_value(json_object_get(c, "layer")));
        assert_true(exists(out, name));
        const double kl = json_number_value(json_object_get(c, "train_kl"));
        assert_true(kl > 0.0 && kl < 100.0);
    }
    json_decref(root);

    /* The versions record the weight: the same run again resumes (both kept), one with another
     * weight is refused, naming the flag, and leaves them as they were. */
    code = wait_exit(spawn_dsla(a.argv, log));
    if (code != 0) show_log_and_fail(log, code);
    text = dsla_test_read_file(log, NULL);
    if (!strstr(text, "(kept)")) fail_msg("the rerun did not keep the versions:\n%s", text);
    free(text);
    args_t other = distill_args("models/stories260K-hf", out, "2", "6", report);
    assert_int_equal(wait_exit(spawn_dsla(other.argv, log)), 1);
    text = dsla_test_read_file(log, NULL);
    if (!strstr(text, "was trained with --kl-weight 0.5 and this run has 0"))
        fail_msg("another weight was not refused by name:\n%s", text);
    free(text);
    args_free(&other);
    args_free(&a);

    /* Out of range: refused by name (usage, 2). The GPU takes the term (tests/gpu). */
    const char *bad[][4] = {{"--kl-weight", "-1", NULL, NULL},
                            {"--kl-temperature", "0", NULL, NULL}};
    for (int i = 0; i < 2; i++) {
        a = distill_args("models/stories260K-hf", out, "1", "5", report);
        for (int j = 0; j < 4 && bad[i][j]; j++)
            args_add(&a, bad[i][j]);
        assert_int_equal(wait_exit(spawn_dsla(a.argv, log)), 2);
        text = dsla_test_read_file(log, NULL);
        if (!strstr(text, bad[i][0]))
            fail_msg("%s %s: the flag is not named:\n%s", bad[i][0], bad[i][1], text);
        free(text);
        args_free(&a);
    }
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_layer_stories260k),
        cmocka_unit_test(test_one_layer_tinystories11m),
        cmocka_unit_test(test_sigkill_resume_gives_the_same_versions),
        cmocka_unit_test(test_init_only_writes_teacher_initialised_versions),
        cmocka_unit_test(test_measured_order_reports_its_probes),
        cmocka_unit_test(test_device_cuda_refusals_are_named),
        cmocka_unit_test(test_kl_weight_runs_and_is_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* dsla eval end to end on stories260K-hf: after a small chained distillation of two layers, the
 * teacher's perplexity and plans 1 and 2 (the first layers of the stored order) equal the distill
 * report's teacher_ppl and eval_ppl for the same held-out data; --dsla naming the same layers and
 * the default (every stored version) give the same numbers; --plan passes over a layer of the order
 * without a version, as the controller does; bad plans are refused with exit 2 naming the option
 * and the limit. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

typedef struct {
    char *dir, *model, *train, *valid, *out, *report;
} fixture_t;

static fixture_t fx;

/* Runs "$DSLA_BIN/dsla <args>" (shell-quoted), stdout to *out and stderr to *err; exit code. */
static int run_dsla(const char *args, char **out, char **err) {
    const char *bin = getenv("DSLA_BIN");
    if (!bin) bin = "build/bin";
    char cmd[8192], out_path[1024], err_path[1024];
    snprintf(out_path, sizeof out_path, "%s/stdout", fx.dir);
    snprintf(err_path, sizeof err_path, "%s/stderr", fx.dir);
    snprintf(cmd, sizeof cmd, "%s/dsla %s >%s 2>%s", bin, args, out_path, err_path);
    int status = system(cmd);
    *out = dsla_test_read_file(out_path, NULL);
    *err = dsla_test_read_file(err_path, NULL);
    if (!*out || !*err) fail_msg("could not read the output of: %s", cmd);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Held-out data shared by both commands: the same file, sequence length and count. */
#define EVAL_DATA_ARGS "--seq-len 128"
enum { EVAL_SEQS = 8 };

static int setup(void **state) {
    (void)state;
    fx.model = dsla_test_data_or_skip("models/stories260K-hf");
    fx.train = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    fx.valid = dsla_test_data_or_skip("data/tinystories_valid.txt");
    fx.dir = dsla_test_tempdir();
    fx.out = join(fx.dir, "out");
    fx.report = join(fx.dir, "report.json");
    char args[8192], *out, *err;
    snprintf(
        args, sizeof args,
        "distill --model '%s' --data '%s' --eval-data '%s' --eval-sequences %d --out '%s' "
        "--layers 2 --steps 20 --batch 4 --max-sequences 24 --seed 7 --report '%s' " EVAL_DATA_ARGS,
        fx.model, fx.train, fx.valid, EVAL_SEQS, fx.out, fx.report);
    int code = run_dsla(args, &out, &err);
    if (code != 0) fail_msg("dsla %s: exit %d:\n%s", args, code, err);
    free(out);
    free(err);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    dsla_test_rmtree(fx.dir);
    char *owned[] = {fx.dir, fx.model, fx.train, fx.valid, fx.out, fx.report};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        free(owned[i]);
    return 0;
}

/* dsla eval --json with plan_args on the shared held-out data: its perplexity. */
static double eval_ppl(const char *plan_args, const char *want_layers) {
    char args[8192], *out, *err;
    snprintf(args, sizeof args,
             "eval --model '%s' --data '%s' --max-sequences %d --json %s " EVAL_DATA_ARGS, fx.model,
             fx.valid, EVAL_SEQS, plan_args);
    int code = run_dsla(args, &out, &err);
    if (code != 0) fail_msg("dsla %s: exit %d:\n%s", args, code, err);
    json_error_t jerr;
    json_t *root = json_loads(out, 0, &jerr);
    if (!root) fail_msg("dsla %s printed no JSON: %s", args, out);
    assert_int_equal(json_integer_value(json_object_get(root, "sequences")), EVAL_SEQS);
    assert_int_equal(json_integer_value(json_object_get(root, "tokens")), EVAL_SEQS * 127);
    double nll = json_real_value(json_object_get(root, "nll"));
    double ppl = json_real_value(json_object_get(root, "ppl"));
    assert_true(fabs(exp(nll) - ppl) <= 1e-8 * ppl);
    char *layers = json_dumps(json_object_get(root, "dsla_layers"), JSON_COMPACT);
    if (strcmp(layers, want_layers) != 0)
        fail_msg("dsla %s: dsla_layers %s, want %s", args, layers, want_layers);
    free(layers);
    json_decref(root);
    free(out);
    free(err);
    return ppl;
}

/* The report prints perplexities with 6 decimals. */
static void assert_same_ppl(double got, double want, const char *what) {
    fprintf(stderr, "%s: dsla eval %.6f, distill report %.6f\n", what, got, want);
    if (!(fabs(got - want) <= 1e-6 * want + 1e-6))
        fail_msg("%s: dsla eval %.9g, distill report %.9g", what, got, want);
}

static void test_numbers_equal_the_distill_report(void **state) {
    (void)state;
    json_t *rep = dsla_test_load_json(fx.report);
    json_t *conv = json_object_get(rep, "converted");
    assert_int_equal(json_array_size(conv), 2);
    const int first = (int)json_integer_value(json_object_get(json_array_get(conv, 0), "layer"));
    const int second = (int)json_integer_value(json_object_get(json_array_get(conv, 1), "layer"));
    const double ppl1 = json_real_value(json_object_get(json_array_get(conv, 0), "eval_ppl"));
    const double ppl2 = json_real_value(json_object_get(json_array_get(conv, 1), "eval_ppl"));
    char plan[4096], want1[32], want2[32];
    snprintf(want1, sizeof want1, "[%d]", first);
    snprintf(want2, sizeof want2, "[%d,%d]", first < second ? first : second,
             first < second ? second : first);

    assert_same_ppl(eval_ppl("", "[]"), json_real_value(json_object_get(rep, "teacher_ppl")),
                    "teacher");
    snprintf(plan, sizeof plan, "--layers '%s' --plan 0", fx.out);
    assert_same_ppl(eval_ppl(plan, "[]"), json_real_value(json_object_get(rep, "teacher_ppl")),
                    "plan 0");
    snprintf(plan, sizeof plan, "--layers '%s' --plan 1", fx.out);
    assert_same_ppl(eval_ppl(plan, want1), ppl1, "plan 1");
    snprintf(plan, sizeof plan, "--layers '%s' --plan 2", fx.out);
    assert_same_ppl(eval_ppl(plan, want2), ppl2, "plan 2");
    snprintf(plan, sizeof plan, "--layers '%s' --dsla %d", fx.out, first);
    assert_same_ppl(eval_ppl(plan, want1), ppl1, "--dsla first");
    snprintf(plan, sizeof plan, "--layers '%s' --dsla %d,%d", fx.out, second, first);
    assert_same_ppl(eval_ppl(plan, want2), ppl2, "--dsla second,first");
    snprintf(plan, sizeof plan, "--layers '%s'", fx.out);
    assert_same_ppl(eval_ppl(plan, want2), ppl2, "every stored version");
    /* The second layer alone is another hybrid than the pair: the plan reaches the forward. */
    char want_alone[32];
    snprintf(want_alone, sizeof want_alone, "[%d]", second);
    snprintf(plan, sizeof plan, "--layers '%s' --dsla %d", fx.out, second);
    const double alone = eval_ppl(plan, want_alone);
    assert_true(fabs(alone - ppl2) > 1e-3 * ppl2 && fabs(alone - ppl1) > 1e-3 * ppl1);
    /* A directory whose first layer of the order has no version: --plan 1 passes over it, as the
     * controller's catalogue does, and runs the second. */
    char gap[1024], cmd[4096];
    snprintf(gap, sizeof gap, "%s/gap", fx.dir);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s/layer-%d.safetensors' '%s/'", gap, fx.out,
             second, gap);
    assert_int_equal(system(cmd), 0);
    snprintf(plan, sizeof plan, "--layers '%s' --plan 1", gap);
    assert_same_ppl(eval_ppl(plan, want_alone), alone, "--plan 1 over a gap");
    json_decref(rep);
}

/* dsla eval with extra args exits 2 and its stderr holds want and want2. */
static void refused(const char *extra, const char *want, const char *want2) {
    char args[8192], *out, *err;
    snprintf(args, sizeof args, "eval --model '%s' --data '%s' --max-sequences 2 %s", fx.model,
             fx.valid, extra);
    int code = run_dsla(args, &out, &err);
    if (code != 2 || !strstr(err, want) || (want2 && !strstr(err, want2)))
        fail_msg("dsla %s: exit %d (want 2), stderr: %s", args, code, err);
    free(out);
    free(err);
}

static void test_bad_plans_are_refused(void **state) {
    (void)state;
    char extra[4096];
    snprintf(extra, sizeof extra, "--layers '%s' --plan 3", fx.out);
    refused(extra, "--plan 3", "holds 2 layer versions");
    snprintf(extra, sizeof extra, "--layers '%s' --plan 6", fx.out);
    refused(extra, "--plan 6", "5 layers");
    snprintf(extra, sizeof extra, "--layers '%s' --dsla 9", fx.out);
    refused(extra, "--dsla", "outside 0..4");
    snprintf(extra, sizeof extra, "--layers '%s' --dsla 1,x", fx.out);
    refused(extra, "--dsla", "comma-separated");
    snprintf(extra, sizeof extra, "--layers '%s' --plan 1 --dsla 1", fx.out);
    refused(extra, "--plan", "--dsla");
    refused("--plan 1", "--plan", "--layers");
    snprintf(extra, sizeof extra, "--layers '%s/nowhere'", fx.dir);
    refused(extra, "nowhere", "no layer-");
    refused("--seq-len 100000", "--seq-len 100000", "context");
    refused("--device tpu", "--device", "cpu, cuda");
}

/* The --dsla list names a layer the directory has no version of. */
static void test_missing_layer_is_named(void **state) {
    (void)state;
    json_t *rep = dsla_test_load_json(fx.report);
    json_t *order = json_object_get(rep, "order");
    const int third = (int)json_integer_value(json_array_get(order, 2));
    char extra[4096], want[64];
    snprintf(extra, sizeof extra, "--layers '%s' --dsla %d", fx.out, third);
    snprintf(want, sizeof want, "layer %d has no version", third);
    refused(extra, "--dsla", want);
    json_decref(rep);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numbers_equal_the_distill_report),
        cmocka_unit_test(test_bad_plans_are_refused),
        cmocka_unit_test(test_missing_layer_is_named),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

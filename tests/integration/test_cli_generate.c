/* The `dsla` binary end to end: usage errors and exit codes, greedy generation against llama2.c's
 * continuations, import then generate, and clear failures on broken model directories. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

typedef struct {
    int exit_code;
    char *out; /* stdout */
    char *err; /* stderr */
} run_result_t;

static void run_free(run_result_t *r) {
    free(r->out);
    free(r->err);
}

/* Runs "$DSLA_BIN/<prog> <args>" through the shell; args must already be shell-quoted. */
static run_result_t run_bin(const char *prog, const char *args) {
    const char *bin = getenv("DSLA_BIN");
    if (!bin) bin = "build/bin";
    char *dir = dsla_test_tempdir();
    char cmd[8192], out_path[512], err_path[512];
    snprintf(out_path, sizeof out_path, "%s/out", dir);
    snprintf(err_path, sizeof err_path, "%s/err", dir);
    snprintf(cmd, sizeof cmd, "%s/%s %s >%s 2>%s", bin, prog, args, out_path, err_path);
    int status = system(cmd);
    run_result_t r = {0};
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = dsla_test_read_file(out_path, NULL);
    r.err = dsla_test_read_file(err_path, NULL);
    dsla_test_rmtree(dir);
    free(dir);
    if (!r.out || !r.err) fail_msg("could not read the output of: %s", cmd);
    return r;
}

static run_result_t run_dsla(const char *args) {
    return run_bin("dsla", args);
}

/* Runs dsla-serve with args and checks that it exits with code, stderr naming want and want2. */
static void serve_fails(const char *args, int code, const char *want, const char *want2) {
    run_result_t r = run_bin("dsla-serve", args);
    if (r.exit_code != code || !strstr(r.err, want) || (want2 && !strstr(r.err, want2)))
        fail_msg("dsla-serve %s: exit %d (want %d), stderr: %s", args, r.exit_code, code, r.err);
    run_free(&r);
}

/* --random-model's usage errors, all before any GPU is touched (this build may have none). */
static void test_serve_random_model_usage(void **state) {
    (void)state;
    serve_fails("--random-model 7b --tokenizer /nonexistent --http off", 2, "--random-model",
                "--device cuda");
    serve_fails("--device cuda --random-model 13b --tokenizer /nonexistent", 2, "13b", NULL);
    serve_fails("--device cuda --random-model 7b", 2, "--tokenizer", NULL);
    serve_fails("--device cuda --random-model 7b --model /nonexistent --tokenizer /nonexistent", 2,
                "--model", "--random-model");
    serve_fails("--device cuda --random-model 7b --tokenizer /nonexistent --layers /nonexistent", 2,
                "--layers", "--random-model");
    serve_fails("--device cuda --random-model 7b --tokenizer /nonexistent --distill-data x "
                "--distill-out /nonexistent",
                2, "--distill-out", "--random-model");
    serve_fails("--device cuda --random-model 7b --tokenizer /nonexistent --serving-only "
                "--controller tcp://127.0.0.1:1",
                2, "--controller", "--random-model");
    serve_fails("--model /nonexistent --vocab 32000", 2, "--vocab", "--random-model");
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char args[4096];
    snprintf(args, sizeof args,
             "--device cuda --random-model 7b --tokenizer '%s' --vocab 100 --http off "
             "--endpoint 'tcp://127.0.0.1:*'",
             model);
    serve_fails(args, 2, "512", "--vocab 100");
    free(model);
}

static void test_usage_errors(void **state) {
    (void)state;
    run_result_t r = run_dsla("--help");
    assert_int_equal(r.exit_code, 0);
    assert_non_null(strstr(r.out, "generate"));
    run_free(&r);
    r = run_dsla("frobnicate");
    assert_int_equal(r.exit_code, 2);
    run_free(&r);
    r = run_dsla("generate --help");
    assert_int_equal(r.exit_code, 0);
    assert_non_null(strstr(r.out, "--temperature"));
    run_free(&r);
    r = run_dsla("generate --model /nonexistent");
    assert_int_equal(r.exit_code, 2);
    assert_non_null(strstr(r.err, "--prompt"));
    run_free(&r);
    r = run_dsla("generate --model /nonexistent --prompt hi --temperature -1");
    assert_int_equal(r.exit_code, 2);
    assert_non_null(strstr(r.err, "--temperature"));
    run_free(&r);
    r = run_dsla("generate --model /nonexistent --prompt hi --top-p 1.5");
    assert_int_equal(r.exit_code, 2);
    assert_non_null(strstr(r.err, "--top-p"));
    run_free(&r);
    r = run_dsla("generate --model /nonexistent --prompt hi --max-tokens many");
    assert_int_equal(r.exit_code, 2);
    run_free(&r);
    r = run_dsla("import llama2c onlyone");
    assert_int_equal(r.exit_code, 2);
    run_free(&r);
}

static void test_missing_model_is_a_clear_failure(void **state) {
    (void)state;
    run_result_t r = run_dsla("generate --model /nonexistent/model --prompt hi");
    assert_int_equal(r.exit_code, 1);
    assert_non_null(strstr(r.err, "/nonexistent/model"));
    run_free(&r);
}

/* Parses "ids: 1 2 3" from stderr. */
static size_t parse_ids(const char *err, int32_t *ids, size_t cap) {
    const char *p = strstr(err, "ids:");
    assert_non_null(p);
    p += 4;
    size_t n = 0;
    char *end;
    for (;;) {
        long v = strtol(p, &end, 10);
        if (end == p || n == cap) break;
        ids[n++] = (int32_t)v;
        p = end;
    }
    return n;
}

/* Greedy generation through the CLI reproduces every llama2.c continuation of a vector file. */
static void check_greedy_vectors(const char *model_args, const char *vectors_rel) {
    char *vectors = dsla_test_data_or_skip(vectors_rel);
    json_t *root = dsla_test_load_json(vectors);
    json_t *cases = json_object_get(root, "greedy");
    assert_true(json_array_size(cases) > 0);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *prompt = json_string_value(json_object_get(c, "prompt"));
        json_t *expected = json_object_get(c, "generated_ids");
        size_t n_expected = json_array_size(expected);
        /* llama2.c stops on its own only when it samples BOS (id 1); otherwise at the step limit.
         */
        char args[4096];
        snprintf(args, sizeof args,
                 "generate %s --prompt '%s' --temperature 0 --max-tokens %zu --ignore-eos "
                 "--print-ids",
                 model_args, prompt, n_expected);
        run_result_t r = run_dsla(args);
        if (r.exit_code != 0) fail_msg("exit %d: %s", r.exit_code, r.err);
        int32_t ids[4096];
        size_t n = parse_ids(r.err, ids, 4096);
        assert_int_equal(n, n_expected);
        for (size_t t = 0; t < n; t++) {
            int32_t want = (int32_t)json_integer_value(json_array_get(expected, t));
            if (ids[t] != want)
                fail_msg("%s case %zu ('%s'): token %zu is %d, llama2.c has %d", vectors_rel, i,
                         prompt, t, ids[t], want);
        }
        assert_true(strncmp(r.out, prompt, strlen(prompt)) == 0);
        run_free(&r);
    }
    json_decref(root);
    free(vectors);
}

static void test_greedy_stories260k_hf(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char args[1024];
    snprintf(args, sizeof args, "--model '%s'", model);
    check_greedy_vectors(args, "testvectors/stories260K_llama2c.json");
    free(model);
}

static void import_then_check(const char *ckpt_rel, const char *tok_rel, const char *vectors_rel) {
    char *ckpt = dsla_test_data_or_skip(ckpt_rel);
    char *tok = dsla_test_data_or_skip(tok_rel);
    char *dir = dsla_test_tempdir();
    char args[2048];
    snprintf(args, sizeof args, "import llama2c '%s' '%s' '%s/hf'", ckpt, tok, dir);
    run_result_t r = run_dsla(args);
    if (r.exit_code != 0) fail_msg("import: exit %d: %s", r.exit_code, r.err);
    run_free(&r);
    snprintf(args, sizeof args, "--model '%s/hf'", dir);
    check_greedy_vectors(args, vectors_rel);
    dsla_test_rmtree(dir);
    free(dir);
    free(ckpt);
    free(tok);
}

static void test_import_then_generate_stories260k(void **state) {
    (void)state;
    import_then_check("models/stories260K/stories260K.bin", "models/stories260K/tok512.bin",
                      "testvectors/stories260K_llama2c.json");
}

static void test_import_then_generate_babyllama105(void **state) {
    (void)state;
    import_then_check("models/babyllama105/model.bin", "models/babyllama105/tok105.bin",
                      "testvectors/babyllama105_llama2c.json");
}

static void test_invalid_utf8_prompt(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    /* The shell cannot portably spell a 0xff byte in an argument, so it comes from a file. */
    char *dir = dsla_test_tempdir();
    char prompt_path[512], args[2048];
    snprintf(prompt_path, sizeof prompt_path, "%s/prompt", dir);
    dsla_test_write_file(prompt_path, "bad \xff byte", 10);
    snprintf(args, sizeof args, "generate --model '%s' --prompt \"$(cat '%s')\"", model,
             prompt_path);
    run_result_t r = run_dsla(args);
    assert_int_equal(r.exit_code, 2);
    assert_non_null(strstr(r.err, "UTF-8"));
    run_free(&r);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
}

static void test_stop_string_and_max_tokens(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char args[1024];
    /* Greedy continuation of this prompt is ", there was a little girl named Lily." */
    snprintf(args, sizeof args,
             "generate --model '%s' --prompt 'Once upon a time' --temperature 0 --stop ' girl'",
             model);
    run_result_t r = run_dsla(args);
    assert_int_equal(r.exit_code, 0);
    assert_string_equal(r.out, "Once upon a time, there was a little\n");
    assert_non_null(strstr(r.err, "finish: stop"));
    run_free(&r);
    snprintf(
        args, sizeof args,
        "generate --model '%s' --prompt 'Once upon a time' --temperature 0 --max-tokens 100000",
        model);
    r = run_dsla(args);
    assert_int_equal(r.exit_code, 2);
    assert_non_null(strstr(r.err, "max_tokens 100000"));
    run_free(&r);
    free(model);
}

static void test_sampling_is_reproducible(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char args[1024];
    snprintf(args, sizeof args,
             "generate --model '%s' --prompt 'Lily' --temperature 0.9 --top-p 0.9 --top-k 40 "
             "--seed 7 --max-tokens 40",
             model);
    run_result_t a = run_dsla(args);
    run_result_t b = run_dsla(args);
    assert_int_equal(a.exit_code, 0);
    assert_string_equal(a.out, b.out);
    run_free(&a);
    run_free(&b);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_missing_model_is_a_clear_failure),
        cmocka_unit_test(test_serve_random_model_usage),
        cmocka_unit_test(test_greedy_stories260k_hf),
        cmocka_unit_test(test_import_then_generate_stories260k),
        cmocka_unit_test(test_import_then_generate_babyllama105),
        cmocka_unit_test(test_invalid_utf8_prompt),
        cmocka_unit_test(test_stop_string_and_max_tokens),
        cmocka_unit_test(test_sampling_is_reproducible),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

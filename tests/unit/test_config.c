/* runtime/model/config: the shared Hugging Face configs, both RoPE layouts, and refusals.
 *
 * Most cases start from one valid config and change a key or two, so each test shows only what it
 * is about. The shared-data tests skip (cmocka skip()) when DSLA_TEST_DATA lacks the models. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/status.h"
#include "runtime/model/config.h"

static const char BASE_CONFIG[] = "{\n"
                                  "  \"architectures\": [\"LlamaForCausalLM\"],\n"
                                  "  \"model_type\": \"llama\",\n"
                                  "  \"hidden_size\": 256,\n"
                                  "  \"intermediate_size\": 688,\n"
                                  "  \"num_hidden_layers\": 4,\n"
                                  "  \"num_attention_heads\": 8,\n"
                                  "  \"vocab_size\": 1000,\n"
                                  "  \"rms_norm_eps\": 1e-06\n"
                                  "}\n";

/* Parses BASE_CONFIG with the keys of overrides (a JSON object text) replacing or adding its own,
 * and key remove (if not NULL) deleted. */
static dsla_status_t parse_variant(dsla_model_config_t *cfg, const char *overrides,
                                   const char *remove) {
    json_error_t err;
    json_t *root = json_loads(BASE_CONFIG, 0, &err);
    assert_non_null(root);
    if (overrides) {
        json_t *o = json_loads(overrides, 0, &err);
        if (!o) fail_msg("bad test overrides %s: %s", overrides, err.text);
        json_object_update(root, o);
        json_decref(o);
    }
    if (remove) json_object_del(root, remove);
    char *text = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    dsla_clear_error();
    dsla_status_t s = dsla_config_parse(cfg, text, "test/config.json");
    free(text);
    return s;
}

/* Expects code and a message naming the source and needle. */
static void expect_refused(const char *overrides, const char *remove, dsla_status_t code,
                           const char *needle) {
    dsla_model_config_t cfg;
    dsla_status_t s = parse_variant(&cfg, overrides, remove);
    if (s != code)
        fail_msg("%s: expected %s, got %s: %s", overrides ? overrides : remove,
                 dsla_status_name(code), dsla_status_name(s), dsla_last_error());
    if (!strstr(dsla_last_error(), "test/config.json") || !strstr(dsla_last_error(), needle))
        fail_msg("message lacks the source or '%s': %s", needle, dsla_last_error());
}

static void test_stories260k_hf(void **state) {
    (void)state;
    char *path = dsla_test_data_path("models/stories260K-hf/config.json");
    if (!path) skip();
    dsla_model_config_t cfg;
    assert_int_equal(dsla_config_load(&cfg, path), DSLA_OK);
    assert_int_equal(cfg.hidden_size, 64);
    assert_int_equal(cfg.num_layers, 5);
    assert_int_equal(cfg.num_heads, 8);
    assert_int_equal(cfg.num_kv_heads, 4);
    assert_int_equal(cfg.head_dim, 8);
    assert_int_equal(cfg.intermediate_size, 172);
    assert_int_equal(cfg.vocab_size, 512);
    assert_int_equal(cfg.max_position_embeddings, 512);
    assert_true(cfg.rms_norm_eps == 1e-5f);
    assert_true(cfg.tie_word_embeddings);
    assert_int_equal(cfg.bos_token_id, 1);
    assert_int_equal(cfg.num_eos_token_ids, 1);
    assert_int_equal(cfg.eos_token_ids[0], 2);
    /* transformers 5 layout: rope_parameters {rope_theta, rope_type} */
    assert_true(cfg.rope_theta == 10000.0f);
    assert_int_equal(cfg.rope_type, DSLA_ROPE_DEFAULT);
    assert_string_equal(cfg.torch_dtype, "float32");
    free(path);
}

static void test_tinystories_hf(void **state) {
    (void)state;
    char *path = dsla_test_data_path("models/tinystories-11M-hf/config.json");
    if (!path) skip();
    dsla_model_config_t cfg;
    assert_int_equal(dsla_config_load(&cfg, path), DSLA_OK);
    assert_int_equal(cfg.hidden_size, 384);
    assert_int_equal(cfg.num_layers, 6);
    assert_int_equal(cfg.num_heads, 6);
    assert_int_equal(cfg.num_kv_heads, 2);
    assert_int_equal(cfg.head_dim, 64);
    assert_int_equal(cfg.vocab_size, 2048);
    assert_false(cfg.tie_word_embeddings);
    assert_int_equal(cfg.bos_token_id, 0);
    assert_int_equal(cfg.num_eos_token_ids, 1);
    assert_int_equal(cfg.eos_token_ids[0], 1);
    assert_string_equal(cfg.torch_dtype, "bfloat16");
    free(path);
}

static void test_defaults(void **state) {
    (void)state;
    dsla_model_config_t cfg;
    assert_int_equal(parse_variant(&cfg, NULL, NULL), DSLA_OK);
    assert_int_equal(cfg.num_kv_heads, 8);
    assert_int_equal(cfg.head_dim, 32);
    assert_int_equal(cfg.max_position_embeddings, 2048);
    assert_false(cfg.tie_word_embeddings);
    assert_int_equal(cfg.bos_token_id, -1);
    assert_int_equal(cfg.num_eos_token_ids, 0);
    assert_true(cfg.rope_theta == 10000.0f);
    assert_int_equal(cfg.rope_type, DSLA_ROPE_DEFAULT);
    assert_string_equal(cfg.torch_dtype, "");
    /* null means "default" too; head_dim need not be hidden_size / heads */
    assert_int_equal(parse_variant(&cfg,
                                   "{\"head_dim\": null, \"bos_token_id\": null, "
                                   "\"num_key_value_heads\": null, \"rope_scaling\": null}",
                                   NULL),
                     DSLA_OK);
    assert_int_equal(cfg.head_dim, 32);
    assert_int_equal(cfg.num_kv_heads, 8);
    assert_int_equal(parse_variant(&cfg, "{\"head_dim\": 64, \"torch_dtype\": \"float16\"}", NULL),
                     DSLA_OK);
    assert_int_equal(cfg.head_dim, 64);
    assert_string_equal(cfg.torch_dtype, "float16");
}

static void test_rope_theta_forms(void **state) {
    (void)state;
    dsla_model_config_t cfg;
    assert_int_equal(parse_variant(&cfg, "{\"rope_theta\": 500000.0}", NULL), DSLA_OK);
    assert_true(cfg.rope_theta == 500000.0f);
    assert_int_equal(parse_variant(&cfg,
                                   "{\"rope_parameters\": {\"rope_theta\": 250000, \"rope_type\": "
                                   "\"default\"}}",
                                   NULL),
                     DSLA_OK);
    assert_true(cfg.rope_theta == 250000.0f);
    assert_int_equal(cfg.rope_type, DSLA_ROPE_DEFAULT);
    assert_int_equal(
        parse_variant(&cfg, "{\"rope_scaling\": {\"type\": \"default\"}, \"rope_theta\": 1e4}",
                      NULL),
        DSLA_OK);
    assert_int_equal(cfg.rope_type, DSLA_ROPE_DEFAULT);
    expect_refused("{\"rope_theta\": 1e4, \"rope_parameters\": {\"rope_theta\": 5e5}}", NULL,
                   DSLA_ERR_INVALID_ARGUMENT, "rope_theta");
    expect_refused("{\"rope_theta\": \"big\"}", NULL, DSLA_ERR_FORMAT, "rope_theta");
    expect_refused("{\"rope_theta\": -1}", NULL, DSLA_ERR_INVALID_ARGUMENT, "rope_theta");
}

static void test_llama3_scaling(void **state) {
    (void)state;
    static const char *const forms[] = {
        /* transformers < 5 */
        "{\"rope_theta\": 500000.0, \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, "
        "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192, "
        "\"rope_type\": \"llama3\"}}",
        /* transformers >= 5 */
        "{\"rope_parameters\": {\"rope_theta\": 500000.0, \"factor\": 8.0, \"low_freq_factor\": "
        "1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192, "
        "\"rope_type\": \"llama3\"}}",
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        dsla_model_config_t cfg;
        assert_int_equal(parse_variant(&cfg, forms[i], NULL), DSLA_OK);
        assert_int_equal(cfg.rope_type, DSLA_ROPE_LLAMA3);
        assert_true(cfg.rope_theta == 500000.0f);
        assert_true(cfg.rope_factor == 8.0f);
        assert_true(cfg.rope_low_freq_factor == 1.0f);
        assert_true(cfg.rope_high_freq_factor == 4.0f);
        assert_int_equal(cfg.rope_original_max_position, 8192);
    }
    expect_refused("{\"rope_scaling\": {\"factor\": 8.0, \"high_freq_factor\": 4.0, "
                   "\"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}}",
                   NULL, DSLA_ERR_NOT_FOUND, "rope_scaling.low_freq_factor");
    expect_refused("{\"rope_parameters\": {\"factor\": 8.0, \"low_freq_factor\": 1.0, "
                   "\"high_freq_factor\": 4.0, \"rope_type\": \"llama3\"}}",
                   NULL, DSLA_ERR_NOT_FOUND, "rope_parameters.original_max_position_embeddings");
    expect_refused("{\"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 4.0, "
                   "\"high_freq_factor\": 1.0, \"original_max_position_embeddings\": 8192, "
                   "\"rope_type\": \"llama3\"}}",
                   NULL, DSLA_ERR_INVALID_ARGUMENT, "high_freq_factor");
}

static void test_unsupported_rope(void **state) {
    (void)state;
    expect_refused("{\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", NULL,
                   DSLA_ERR_UNSUPPORTED, "'linear'");
    expect_refused("{\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}}", NULL,
                   DSLA_ERR_UNSUPPORTED, "'dynamic'");
    expect_refused("{\"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 1e4}}", NULL,
                   DSLA_ERR_UNSUPPORTED, "'yarn'");
    expect_refused("{\"rope_scaling\": {\"factor\": 2.0}}", NULL, DSLA_ERR_FORMAT, "rope_scaling");
    expect_refused("{\"rope_scaling\": 2}", NULL, DSLA_ERR_FORMAT, "rope_scaling");
}

static void test_eos_forms(void **state) {
    (void)state;
    dsla_model_config_t cfg;
    assert_int_equal(parse_variant(&cfg,
                                   "{\"vocab_size\": 128256, \"bos_token_id\": 128000, "
                                   "\"eos_token_id\": [128001, 128008, 128009]}",
                                   NULL),
                     DSLA_OK);
    assert_int_equal(cfg.bos_token_id, 128000);
    assert_int_equal(cfg.num_eos_token_ids, 3);
    assert_int_equal(cfg.eos_token_ids[0], 128001);
    assert_int_equal(cfg.eos_token_ids[2], 128009);
    assert_int_equal(parse_variant(&cfg, "{\"eos_token_id\": []}", NULL), DSLA_OK);
    assert_int_equal(cfg.num_eos_token_ids, 0);
    expect_refused("{\"eos_token_id\": [1,2,3,4,5,6,7,8,9]}", NULL, DSLA_ERR_UNSUPPORTED,
                   "eos_token_id");
    expect_refused("{\"eos_token_id\": \"</s>\"}", NULL, DSLA_ERR_FORMAT, "eos_token_id");
    expect_refused("{\"eos_token_id\": [1, \"x\"]}", NULL, DSLA_ERR_FORMAT, "eos_token_id");
    expect_refused("{\"eos_token_id\": 1000}", NULL, DSLA_ERR_INVALID_ARGUMENT, "eos_token_id");
    expect_refused("{\"bos_token_id\": 5000}", NULL, DSLA_ERR_INVALID_ARGUMENT, "bos_token_id");
}

static void test_unsupported_models(void **state) {
    (void)state;
    expect_refused("{\"attention_bias\": true}", NULL, DSLA_ERR_UNSUPPORTED, "attention_bias");
    expect_refused("{\"mlp_bias\": true}", NULL, DSLA_ERR_UNSUPPORTED, "mlp_bias");
    expect_refused("{\"hidden_act\": \"gelu\"}", NULL, DSLA_ERR_UNSUPPORTED, "gelu");
    expect_refused("{\"architectures\": [\"GPT2LMHeadModel\"]}", NULL, DSLA_ERR_UNSUPPORTED,
                   "GPT2LMHeadModel");
    expect_refused("{\"model_type\": \"qwen2\"}", NULL, DSLA_ERR_UNSUPPORTED, "qwen2");
    expect_refused("{\"model_type\": \"mistral\", \"sliding_window\": 4096}", NULL,
                   DSLA_ERR_UNSUPPORTED, "sliding_window");
    dsla_model_config_t cfg;
    assert_int_equal(parse_variant(&cfg,
                                   "{\"model_type\": \"mistral\", \"sliding_window\": null, "
                                   "\"architectures\": [\"MistralForCausalLM\"]}",
                                   NULL),
                     DSLA_OK);
    assert_int_equal(parse_variant(&cfg, "{\"attention_bias\": false, \"mlp_bias\": false}", NULL),
                     DSLA_OK);
}

static void test_missing_and_wrong_types(void **state) {
    (void)state;
    expect_refused(NULL, "hidden_size", DSLA_ERR_NOT_FOUND, "hidden_size");
    expect_refused(NULL, "rms_norm_eps", DSLA_ERR_NOT_FOUND, "rms_norm_eps");
    expect_refused(NULL, "vocab_size", DSLA_ERR_NOT_FOUND, "vocab_size");
    expect_refused("{\"hidden_size\": \"256\"}", NULL, DSLA_ERR_FORMAT, "'hidden_size'");
    expect_refused("{\"hidden_size\": 256.5}", NULL, DSLA_ERR_FORMAT, "a real number");
    expect_refused("{\"tie_word_embeddings\": 1}", NULL, DSLA_ERR_FORMAT, "tie_word_embeddings");
    expect_refused("{\"architectures\": \"LlamaForCausalLM\"}", NULL, DSLA_ERR_FORMAT,
                   "architectures");
    expect_refused("{\"hidden_size\": 99999999999}", NULL, DSLA_ERR_INVALID_ARGUMENT,
                   "hidden_size");
}

static void test_validation(void **state) {
    (void)state;
    expect_refused("{\"num_key_value_heads\": 3}", NULL, DSLA_ERR_INVALID_ARGUMENT,
                   "num_key_value_heads");
    expect_refused("{\"num_hidden_layers\": 0}", NULL, DSLA_ERR_INVALID_ARGUMENT,
                   "num_hidden_layers");
    expect_refused("{\"intermediate_size\": -5}", NULL, DSLA_ERR_INVALID_ARGUMENT,
                   "intermediate_size");
    expect_refused("{\"rms_norm_eps\": 0}", NULL, DSLA_ERR_INVALID_ARGUMENT, "rms_norm_eps");
    expect_refused("{\"num_attention_heads\": 0}", NULL, DSLA_ERR_INVALID_ARGUMENT,
                   "num_attention_heads");
    expect_refused("{\"hidden_size\": 100, \"num_attention_heads\": 8}", NULL,
                   DSLA_ERR_INVALID_ARGUMENT, "head_dim");
}

static void test_bad_json(void **state) {
    (void)state;
    dsla_model_config_t cfg;
    dsla_status_t s = dsla_config_parse(&cfg, "{\n  \"hidden_size\": 64,\n  oops\n}", "bad.json");
    assert_int_equal(s, DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "bad.json:3:"));
    assert_int_equal(dsla_config_parse(&cfg, "[1]", "arr.json"), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "arr.json"));
    assert_int_equal(dsla_config_parse(&cfg, "", "empty.json"), DSLA_ERR_FORMAT);

    char *dir = dsla_test_tempdir();
    size_t n = strlen(dir) + 32;
    char *path = malloc(n);
    snprintf(path, n, "%s/config.json", dir);
    assert_int_equal(dsla_config_load(&cfg, path), DSLA_ERR_NOT_FOUND);
    assert_non_null(strstr(dsla_last_error(), path));
    dsla_test_write_file(path, "{\"a\": 1,}", 9);
    assert_int_equal(dsla_config_load(&cfg, path), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), path));
    assert_non_null(strstr(dsla_last_error(), ":1:"));
    free(path);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_save_round_trip(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    size_t n = strlen(dir) + 32;
    char *path = malloc(n);
    snprintf(path, n, "%s/config.json", dir);

    dsla_model_config_t cfg, back;
    assert_int_equal(
        parse_variant(&cfg,
                      "{\"num_key_value_heads\": 2, \"head_dim\": 48, \"bos_token_id\": 1, "
                      "\"eos_token_id\": [2, 3], \"tie_word_embeddings\": true, "
                      "\"rms_norm_eps\": 1e-5, \"rope_scaling\": {\"factor\": 32.0, "
                      "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                      "\"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}}",
                      NULL),
        DSLA_OK);
    assert_int_equal(dsla_config_save(&cfg, path), DSLA_OK);
    assert_int_equal(dsla_config_load(&back, path), DSLA_OK);
    dsla_test_assert_config_equal(&cfg, &back);
    assert_string_equal(back.torch_dtype, "float32");

    char *text = dsla_test_read_file(path, NULL);
    assert_non_null(text);
    assert_non_null(strstr(text, "{\n  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n"));
    assert_non_null(strstr(text, "\"model_type\": \"llama\""));
    assert_non_null(strstr(text, "\"rope_theta\": 10000.0,"));
    free(text);
    /* the shortest decimal for the float, not 9.99999975e-06 */
    json_t *saved = dsla_test_load_json(path);
    assert_true(json_real_value(json_object_get(saved, "rms_norm_eps")) == 1e-5);
    json_decref(saved);

    /* defaults survive too: no bos, no eos, default RoPE */
    assert_int_equal(parse_variant(&cfg, NULL, NULL), DSLA_OK);
    assert_int_equal(dsla_config_save(&cfg, path), DSLA_OK);
    assert_int_equal(dsla_config_load(&back, path), DSLA_OK);
    dsla_test_assert_config_equal(&cfg, &back);

    /* an invalid config is not written */
    cfg.num_kv_heads = 3;
    assert_int_equal(dsla_config_save(&cfg, path), DSLA_ERR_INVALID_ARGUMENT);

    char *shared = dsla_test_data_path("models/stories260K-hf/config.json");
    if (shared) {
        assert_int_equal(dsla_config_load(&cfg, shared), DSLA_OK);
        assert_int_equal(dsla_config_save(&cfg, path), DSLA_OK);
        assert_int_equal(dsla_config_load(&back, path), DSLA_OK);
        dsla_test_assert_config_equal(&cfg, &back);
        free(shared);
    }
    free(path);
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260k_hf),
        cmocka_unit_test(test_tinystories_hf),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_rope_theta_forms),
        cmocka_unit_test(test_llama3_scaling),
        cmocka_unit_test(test_unsupported_rope),
        cmocka_unit_test(test_eos_forms),
        cmocka_unit_test(test_unsupported_models),
        cmocka_unit_test(test_missing_and_wrong_types),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_save_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

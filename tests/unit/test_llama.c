/* runtime/model/llama: the CPU forward pass against transformers and llama2.c outputs, batching and
 * decode against prefill, KV pool exhaustion, and load/forward errors. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "runtime/model/llama.h"
#include "runtime/model/safetensors.h"

static char *stories_dir, *stories_logits, *stories_llama2c, *tiny_dir, *tiny_vectors;

static int32_t *json_ids(const json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    int32_t *ids = malloc((size_t)*n * sizeof *ids);
    for (int i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

static float *json_floats(const json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    float *v = malloc((size_t)*n * sizeof *v);
    for (int i = 0; i < *n; i++)
        v[i] = (float)json_number_value(json_array_get(arr, (size_t)i));
    return v;
}

/* rows[n][vocab] from a JSON array of rows. */
static float *json_rows(const json_t *arr, int vocab) {
    size_t n = json_array_size(arr);
    float *rows = malloc(n * (size_t)vocab * sizeof *rows);
    for (size_t r = 0; r < n; r++) {
        int len;
        float *row = json_floats(json_array_get(arr, r), &len);
        assert_int_equal(len, vocab);
        memcpy(rows + r * (size_t)vocab, row, (size_t)vocab * sizeof *row);
        free(row);
    }
    return rows;
}

static dsla_model_t *load(const char *dir) {
    dsla_model_t *m = NULL;
    dsla_status_t s = dsla_model_load(&m, dir);
    if (s != DSLA_OK) fail_msg("load %s: %s: %s", dir, dsla_status_name(s), dsla_last_error());
    return m;
}

static void forward_ok(dsla_model_t *m, const dsla_batch_item_t *items, int n, float *logits) {
    dsla_status_t s = dsla_model_forward(m, items, n, logits);
    if (s != DSLA_OK) fail_msg("forward: %s: %s", dsla_status_name(s), dsla_last_error());
}

/* Prefills prompt in one pass, then greedy-decodes: stops after max_new tokens or after emitting
 * stop (kept in the output, as transformers' generate and the llama2.c vectors keep it), or when
 * the context reaches max_positions. Returns the number generated. */
static int greedy(dsla_model_t *m, dsla_kv_pool_t *pool, const int32_t *prompt, int n_prompt,
                  int max_new, int stop, int max_positions, int32_t *out) {
    const dsla_model_config_t *cfg = dsla_model_config(m);
    dsla_sequence_t *seq = NULL;
    assert_int_equal(dsla_sequence_create(&seq, pool, cfg), DSLA_OK);
    float *logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    dsla_batch_item_t item = {seq, prompt, n_prompt, false};
    forward_ok(m, &item, 1, logits);
    int n = 0;
    while (n < max_new) {
        int32_t next = dsla_cpu_argmax(logits, cfg->vocab_size);
        out[n++] = next;
        if (next == stop || dsla_sequence_length(seq) >= max_positions) break;
        item = (dsla_batch_item_t){seq, &out[n - 1], 1, false};
        forward_ok(m, &item, 1, logits);
    }
    free(logits);
    dsla_sequence_destroy(&seq);
    return n;
}

/* (a) transformers' logits: one prefill, token-by-token decode, and a two-sequence batch in chunks.
 */
static void test_stories260k_hf_logits(void **state) {
    (void)state;
    json_t *root = dsla_test_load_json(stories_logits);
    int n;
    int32_t *ids = json_ids(json_object_get(root, "ids"), &n);
    dsla_model_t *m = load(stories_dir);
    const dsla_model_config_t *cfg = dsla_model_config(m);
    const int V = cfg->vocab_size;
    float *ref = json_rows(json_object_get(root, "logits"), V);
    float *got = malloc((size_t)n * V * sizeof *got);
    dsla_kv_pool_t *pool = NULL;
    assert_int_equal(dsla_kv_pool_create(&pool, cfg, 64), DSLA_OK);

    dsla_sequence_t *a = NULL, *b = NULL;
    assert_int_equal(dsla_sequence_create(&a, pool, cfg), DSLA_OK);
    dsla_batch_item_t item = {a, ids, n, true};
    for (int i = 0; i < n * V; i++)
        got[i] = NAN;
    forward_ok(m, &item, 1, got);
    double prefill_err = dsla_test_max_abs_diff(got, ref, (size_t)n * V);
    assert_int_equal(dsla_sequence_length(a), n);
    dsla_sequence_destroy(&a);
    assert_int_equal(dsla_kv_pool_free_blocks(pool), 64);

    assert_int_equal(dsla_sequence_create(&a, pool, cfg), DSLA_OK);
    double decode_err = 0.0;
    for (int t = 0; t < n; t++) {
        item = (dsla_batch_item_t){a, &ids[t], 1, false};
        forward_ok(m, &item, 1, got);
        decode_err = fmax(decode_err, dsla_test_max_abs_diff(got, ref + (size_t)t * V, (size_t)V));
    }
    dsla_sequence_destroy(&a);

    /* Two sequences, two steps: a gets 12 then 8 tokens with all rows; b gets 5 (last row) then 1.
     */
    assert_int_equal(dsla_sequence_create(&a, pool, cfg), DSLA_OK);
    assert_int_equal(dsla_sequence_create(&b, pool, cfg), DSLA_OK);
    dsla_batch_item_t step1[2] = {{a, ids, 12, true}, {b, ids, 5, false}};
    assert_int_equal(dsla_batch_logit_rows(step1, 2), 13);
    forward_ok(m, step1, 2, got);
    double batch_err = dsla_test_max_abs_diff(got, ref, (size_t)12 * V);
    batch_err = fmax(batch_err, dsla_test_max_abs_diff(got + 12 * V, ref + 4 * V, (size_t)V));
    dsla_batch_item_t step2[2] = {{b, ids + 5, 1, true}, {a, ids + 12, n - 12, true}};
    forward_ok(m, step2, 2, got);
    batch_err = fmax(batch_err, dsla_test_max_abs_diff(got, ref + 5 * V, (size_t)V));
    batch_err =
        fmax(batch_err, dsla_test_max_abs_diff(got + V, ref + 12 * V, (size_t)(n - 12) * V));
    assert_int_equal(dsla_sequence_length(a), n);
    assert_int_equal(dsla_sequence_length(b), 6);

    printf("stories260K-hf max |logit error|: prefill %.3g, decode %.3g, batched %.3g\n",
           prefill_err, decode_err, batch_err);
    assert_true(prefill_err < 1e-4);
    assert_true(decode_err < 1e-4);
    assert_true(batch_err < 1e-4);
    dsla_sequence_destroy(&a);
    dsla_sequence_destroy(&b);
    dsla_kv_pool_destroy(&pool);
    dsla_model_destroy(&m);
    assert_null(m);
    free(ids), free(ref), free(got);
    json_decref(root);
}

/* (b) llama2.c run.c: greedy continuations over "steps" = max_total_tokens positions including the
 * prompt (so at most steps - prompt + 1 tokens, the last never fed back), stopping after BOS = 1;
 * and its logits summary (first 16, argmax, logsumexp) for one prompt. */
static void test_stories260k_llama2c(void **state) {
    (void)state;
    json_t *root = dsla_test_load_json(stories_llama2c);
    dsla_model_t *m = load(stories_dir);
    const dsla_model_config_t *cfg = dsla_model_config(m);
    const int V = cfg->vocab_size;
    dsla_kv_pool_t *pool = NULL;
    assert_int_equal(dsla_kv_pool_create(&pool, cfg, 256), DSLA_OK);

    json_t *cases = json_object_get(root, "greedy");
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *g = json_array_get(cases, c);
        int n_prompt, n_want;
        int32_t *prompt = json_ids(json_object_get(g, "prompt_ids"), &n_prompt);
        int32_t *want = json_ids(json_object_get(g, "generated_ids"), &n_want);
        int steps = (int)json_integer_value(json_object_get(g, "max_total_tokens"));
        int32_t *got = malloc((size_t)steps * sizeof *got);
        int n_got = greedy(m, pool, prompt, n_prompt, steps - n_prompt + 1, 1, steps, got);
        int match = 0;
        while (match < n_got && match < n_want && got[match] == want[match])
            match++;
        printf("llama2.c greedy case %zu: %d/%d tokens match (generated %d)\n", c, match, n_want,
               n_got);
        assert_int_equal(n_got, n_want);
        assert_int_equal(match, n_want);
        free(prompt), free(want), free(got);
    }

    json_t *lg = json_object_get(root, "logits");
    int n;
    int32_t *ids = json_ids(json_object_get(lg, "ids"), &n);
    float *logits = malloc((size_t)n * V * sizeof *logits);
    dsla_sequence_t *seq = NULL;
    assert_int_equal(dsla_sequence_create(&seq, pool, cfg), DSLA_OK);
    dsla_batch_item_t item = {seq, ids, n, true};
    forward_ok(m, &item, 1, logits);
    json_t *positions = json_object_get(lg, "positions");
    double err16 = 0.0, err_lse = 0.0;
    for (size_t p = 0; p < json_array_size(positions); p++) {
        json_t *row = json_array_get(positions, p);
        int pos = (int)json_integer_value(json_object_get(row, "pos")), n16;
        const float *mine = logits + (size_t)pos * V;
        float *first16 = json_floats(json_object_get(row, "first16"), &n16);
        err16 = fmax(err16, dsla_test_max_abs_diff(mine, first16, (size_t)n16));
        assert_int_equal(dsla_cpu_argmax(mine, V),
                         (int)json_integer_value(json_object_get(row, "argmax")));
        double max = mine[dsla_cpu_argmax(mine, V)], sum = 0.0;
        for (int i = 0; i < V; i++)
            sum += exp((double)mine[i] - max);
        err_lse = fmax(err_lse,
                       fabs(max + log(sum) - json_number_value(json_object_get(row, "logsumexp"))));
        free(first16);
    }
    printf("llama2.c logits: max error first16 %.3g, logsumexp %.3g\n", err16, err_lse);
    assert_true(err16 < 1e-4);
    assert_true(err_lse < 1e-4);
    dsla_sequence_destroy(&seq);
    dsla_kv_pool_destroy(&pool);
    dsla_model_destroy(&m);
    free(ids), free(logits);
    json_decref(root);
}

/* (c) the bf16, sharded, GQA (3 query heads per KV head), untied-head model against transformers.
 */
static void test_tinystories11m(void **state) {
    (void)state;
    json_t *root = dsla_test_load_json(tiny_vectors);
    dsla_model_t *m = load(tiny_dir);
    const dsla_model_config_t *cfg = dsla_model_config(m);
    assert_int_equal(cfg->num_heads / cfg->num_kv_heads, 3);
    assert_ptr_not_equal(dsla_model_lm_head(m), dsla_model_embeddings(m));
    const int V = cfg->vocab_size;
    dsla_kv_pool_t *pool = NULL;
    assert_int_equal(dsla_kv_pool_create(&pool, cfg, 128), DSLA_OK);
    json_t *cases = json_object_get(root, "cases");
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *tc = json_array_get(cases, c);
        int n, n_want;
        int32_t *ids = json_ids(json_object_get(tc, "ids"), &n);
        int32_t *want = json_ids(json_object_get(tc, "greedy_ids"), &n_want);
        float *ref = json_rows(json_object_get(tc, "logits"), V);
        float *got = malloc((size_t)n * V * sizeof *got);
        dsla_sequence_t *seq = NULL;
        assert_int_equal(dsla_sequence_create(&seq, pool, cfg), DSLA_OK);
        dsla_batch_item_t item = {seq, ids, n, true};
        forward_ok(m, &item, 1, got);
        double err = dsla_test_max_abs_diff(got, ref, (size_t)n * V);
        dsla_sequence_destroy(&seq);

        /* transformers generated 120 new tokens or stopped after EOS */
        int32_t *gen = malloc(120 * sizeof *gen);
        int eos = cfg->num_eos_token_ids > 0 ? cfg->eos_token_ids[0] : -1;
        int n_gen = greedy(m, pool, ids, n, 120, eos, cfg->max_position_embeddings, gen);
        int match = 0;
        while (match < n_gen && match < n_want && gen[match] == want[match])
            match++;
        printf("tinystories-11M case %zu: max |logit error| %.3g, greedy %d/%d tokens match\n", c,
               err, match, n_want);
        assert_true(err < 1e-3);
        assert_true(match >= 50 || match == n_want);
        free(ids), free(want), free(ref), free(got), free(gen);
    }
    dsla_kv_pool_destroy(&pool);
    dsla_model_destroy(&m);
    json_decref(root);
}

/* (d) a pool that runs out refuses the batch and changes nothing; the survivor still computes
 * right. */
static void test_pool_exhaustion(void **state) {
    (void)state;
    json_t *root = dsla_test_load_json(stories_logits);
    int n;
    int32_t *ids = json_ids(json_object_get(root, "ids"), &n);
    dsla_model_t *m = load(stories_dir);
    const dsla_model_config_t *cfg = dsla_model_config(m);
    const int V = cfg->vocab_size, L = cfg->num_layers;
    float *ref = json_rows(json_object_get(root, "logits"), V);
    float *got = malloc((size_t)2 * n * V * sizeof *got);
    dsla_kv_pool_t *pool = NULL;
    assert_int_equal(dsla_kv_pool_create(&pool, cfg, 2 * L + 2), DSLA_OK);
    dsla_sequence_t *a = NULL, *c = NULL;
    assert_int_equal(dsla_sequence_create(&a, pool, cfg), DSLA_OK);
    assert_int_equal(dsla_sequence_create(&c, pool, cfg), DSLA_OK);
    dsla_batch_item_t item = {a, ids, DSLA_KV_BLOCK_TOKENS, false};
    forward_ok(m, &item, 1, got); /* one block per layer */
    assert_int_equal(dsla_kv_pool_free_blocks(pool), L + 2);
    assert_int_equal(dsla_sequence_num_blocks(a), L);

    /* c fits alone, a's 17th token does not fit after c: neither may change. */
    dsla_batch_item_t both[2] = {{c, ids, 3, false}, {a, ids + DSLA_KV_BLOCK_TOKENS, 1, false}};
    assert_int_equal(dsla_model_forward(m, both, 2, got), DSLA_ERR_RESOURCE_EXHAUSTED);
    assert_non_null(strstr(dsla_last_error(), "exhausted"));
    assert_int_equal(dsla_kv_pool_free_blocks(pool), L + 2);
    assert_int_equal(dsla_sequence_length(a), DSLA_KV_BLOCK_TOKENS);
    assert_int_equal(dsla_sequence_length(c), 0);
    assert_int_equal(dsla_sequence_num_blocks(c), 0);

    dsla_sequence_destroy(&c);
    item = (dsla_batch_item_t){a, ids + DSLA_KV_BLOCK_TOKENS, n - DSLA_KV_BLOCK_TOKENS, true};
    forward_ok(m, &item, 1, got);
    double err = dsla_test_max_abs_diff(got, ref + (size_t)DSLA_KV_BLOCK_TOKENS * V,
                                        (size_t)(n - DSLA_KV_BLOCK_TOKENS) * V);
    assert_true(err < 1e-4);
    assert_int_equal(dsla_kv_pool_free_blocks(pool), 2);
    dsla_sequence_destroy(&a);
    assert_int_equal(dsla_kv_pool_free_blocks(pool), 2 * L + 2);
    dsla_kv_pool_destroy(&pool);
    dsla_model_destroy(&m);
    free(ids), free(ref), free(got);
    json_decref(root);
}

static void test_forward_errors(void **state) {
    (void)state;
    dsla_model_t *m = load(stories_dir);
    const dsla_model_config_t *cfg = dsla_model_config(m);
    dsla_kv_pool_t *pool = NULL;
    assert_int_equal(dsla_kv_pool_create(&pool, cfg, 8), DSLA_OK);
    dsla_sequence_t *seq = NULL;
    assert_int_equal(dsla_sequence_create(&seq, pool, cfg), DSLA_OK);
    float *logits = malloc((size_t)cfg->vocab_size * sizeof *logits);

    const int32_t bad[] = {1, 512};
    dsla_batch_item_t item = {seq, bad, 2, false};
    assert_int_equal(dsla_model_forward(m, &item, 1, logits), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "token id 512"));
    assert_non_null(strstr(dsla_last_error(), "vocabulary of 512"));
    const int32_t negative[] = {-3};
    item = (dsla_batch_item_t){seq, negative, 1, false};
    assert_int_equal(dsla_model_forward(m, &item, 1, logits), DSLA_ERR_INVALID_ARGUMENT);

    int n_long = cfg->max_position_embeddings + 1;
    int32_t *long_prompt = calloc((size_t)n_long, sizeof *long_prompt);
    item = (dsla_batch_item_t){seq, long_prompt, n_long, false};
    assert_int_equal(dsla_model_forward(m, &item, 1, logits), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "513"));
    assert_non_null(strstr(dsla_last_error(), "max_position_embeddings 512"));

    dsla_batch_item_t twice[2] = {{seq, bad, 1, false}, {seq, bad, 1, false}};
    assert_int_equal(dsla_model_forward(m, twice, 2, logits), DSLA_ERR_INVALID_ARGUMENT);

    /* A layer planned as DSLA with no DSLA layer pinned or installed: refused up front, nothing
     * reserved. */
    dsla_layer_kind_t kinds[16] = {DSLA_LAYER_ATTN};
    kinds[2] = DSLA_LAYER_DSLA;
    dsla_sequence_t *planned = NULL;
    assert_int_equal(dsla_sequence_create_planned(&planned, pool, cfg, kinds), DSLA_OK);
    item = (dsla_batch_item_t){planned, bad, 1, false};
    assert_int_equal(dsla_model_forward(m, &item, 1, logits), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "layer 2 as DSLA"));
    assert_int_equal(dsla_sequence_blocks_needed(planned, 1), cfg->num_layers - 1);
    assert_int_equal(dsla_kv_pool_free_blocks(pool), 8);
    assert_int_equal(dsla_sequence_length(seq), 0);

    dsla_sequence_destroy(&planned);
    dsla_sequence_destroy(&seq);
    dsla_sequence_destroy(&seq); /* harmless twice */
    dsla_kv_pool_destroy(&pool);
    dsla_model_destroy(&m);
    free(logits), free(long_prompt);
}

/* Rewrites stories260K-hf into dir without `drop`, and with `reshape` (if any) cut to one row. */
static void write_altered_copy(const char *dir, const char *drop, const char *reshape) {
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", stories_dir);
    size_t len;
    char *config = dsla_test_read_file(path, &len);
    assert_non_null(config);
    snprintf(path, sizeof path, "%s/config.json", dir);
    dsla_test_write_file(path, config, len);
    free(config);
    dsla_safetensors_t *st = NULL;
    assert_int_equal(dsla_safetensors_open(&st, stories_dir), DSLA_OK);
    dsla_st_writer_t *w = NULL;
    assert_int_equal(dsla_st_writer_create(&w), DSLA_OK);
    for (size_t i = 0; i < dsla_safetensors_count(st); i++) {
        const dsla_st_tensor_t *t = dsla_safetensors_at(st, i);
        if (strcmp(t->name, drop) == 0) continue;
        int64_t shape[DSLA_TENSOR_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (reshape && strcmp(t->name, reshape) == 0) shape[0] = 1;
        assert_int_equal(dsla_st_writer_add(w, t->name, t->dtype, t->ndim, shape, t->data),
                         DSLA_OK);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    assert_int_equal(dsla_st_writer_save(w, path), DSLA_OK);
    dsla_st_writer_destroy(&w);
    dsla_safetensors_close(&st);
}

static void test_load_errors(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    dsla_model_t *m = NULL;
    const char *missing = "model.layers.2.mlp.up_proj.weight";
    write_altered_copy(dir, missing, NULL);
    dsla_status_t s = dsla_model_load(&m, dir);
    assert_int_not_equal(s, DSLA_OK);
    assert_null(m);
    if (!strstr(dsla_last_error(), missing))
        fail_msg("message lacks the tensor: %s", dsla_last_error());
    assert_non_null(strstr(dsla_last_error(), dir));

    const char *misshapen = "model.layers.1.self_attn.k_proj.weight";
    write_altered_copy(dir, "", misshapen);
    s = dsla_model_load(&m, dir);
    assert_int_not_equal(s, DSLA_OK);
    if (!strstr(dsla_last_error(), misshapen))
        fail_msg("message lacks the tensor: %s", dsla_last_error());

    assert_int_not_equal(dsla_model_load(&m, "/nonexistent/model"), DSLA_OK);
    assert_null(m);
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    stories_dir = dsla_test_data_or_skip("models/stories260K-hf");
    stories_logits = dsla_test_data_or_skip("testvectors/stories260K_hf_logits.json");
    stories_llama2c = dsla_test_data_or_skip("testvectors/stories260K_llama2c.json");
    tiny_dir = dsla_test_data_or_skip("models/tinystories-11M-hf");
    tiny_vectors = dsla_test_data_or_skip("testvectors/tinystories11M_hf_vectors.json");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260k_hf_logits), cmocka_unit_test(test_stories260k_llama2c),
        cmocka_unit_test(test_tinystories11m),        cmocka_unit_test(test_pool_exhaustion),
        cmocka_unit_test(test_forward_errors),        cmocka_unit_test(test_load_errors),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free(stories_dir), free(stories_logits), free(stories_llama2c), free(tiny_dir);
    free(tiny_vectors);
    return rc;
}

/* runtime/model/import_llama2c: llama2.c v0 checkpoints against their transformers conversion, the
 * llama2.c test vectors once imported, and malformed files. Tests needing ../shared skip on their
 * own so the synthetic ones still run without it. */
#include "tests/testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/core/status.h"
#include "runtime/model/config.h"
#include "runtime/model/import_llama2c.h"
#include "runtime/model/kv_cache.h"
#include "runtime/model/llama.h"
#include "runtime/model/safetensors.h"
#include "runtime/model/tokenizer.h"

/* ---- helpers ----------------------------------------------------------------------------------
 */

static char *join(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static char *data_or_skip(const char *relative) {
    char *p = dsla_test_data_path(relative);
    if (!p) skip();
    return p;
}

static void assert_exists(const char *dir, const char *file) {
    char *p = join(dir, file);
    struct stat st;
    if (stat(p, &st) != 0) fail_msg("%s was not written", p);
    free(p);
}

/* Every tensor of got equals want: same order, names, dtypes, shapes and bytes. */
static void assert_same_safetensors(const char *got_path, const char *want_path) {
    dsla_safetensors_t *got = NULL, *want = NULL;
    if (dsla_safetensors_open(&got, got_path) != DSLA_OK) fail_msg("%s", dsla_last_error());
    if (dsla_safetensors_open(&want, want_path) != DSLA_OK) fail_msg("%s", dsla_last_error());
    assert_int_equal(dsla_safetensors_count(got), dsla_safetensors_count(want));
    for (size_t i = 0; i < dsla_safetensors_count(want); i++) {
        const dsla_st_tensor_t *a = dsla_safetensors_at(got, i);
        const dsla_st_tensor_t *b = dsla_safetensors_at(want, i);
        assert_string_equal(a->name, b->name);
        assert_int_equal(a->dtype, b->dtype);
        assert_int_equal(a->ndim, b->ndim);
        for (int d = 0; d < b->ndim; d++)
            assert_int_equal(a->shape[d], b->shape[d]);
        assert_int_equal(a->bytes, b->bytes);
        if (memcmp(a->data, b->data, b->bytes) != 0) fail_msg("tensor %s differs", b->name);
    }
    dsla_safetensors_close(&got);
    dsla_safetensors_close(&want);
}

static void import_or_fail(const char *ckpt, const char *tok, const char *outdir) {
    if (dsla_import_llama2c(ckpt, tok, outdir) != DSLA_OK) fail_msg("%s", dsla_last_error());
}

/* ---- synthetic checkpoints --------------------------------------------------------------------
 */

enum { SYN_DIM = 8, SYN_HIDDEN = 12, SYN_LAYERS = 2, SYN_HEADS = 2, SYN_KV_HEADS = 1, SYN_SEQ = 4 };
enum { SYN_HEAD = SYN_DIM / SYN_HEADS, SYN_KV = SYN_KV_HEADS * SYN_HEAD };

/* A character-level vocabulary in llama2.c's tokenizer.bin format, the special tokens first. */
static const char *const syn_pieces[] = {"<unk>", "\n<s>\n", "\n</s>\n", " ",  "a",  "b",
                                         "c",     "d",       "e",        "ab", "cd", "abcd",
                                         "f",     "g",       "h",        "i"};
enum { SYN_VOCAB = sizeof syn_pieces / sizeof syn_pieces[0] };

static size_t syn_weight_floats(int untied) {
    size_t n = SYN_VOCAB * SYN_DIM + SYN_LAYERS * SYN_DIM;
    n += SYN_LAYERS * (SYN_DIM * SYN_DIM + 2 * SYN_KV * SYN_DIM + SYN_DIM * SYN_DIM);
    n += SYN_LAYERS * SYN_DIM + 3 * SYN_LAYERS * SYN_HIDDEN * SYN_DIM + SYN_DIM;
    n += SYN_SEQ * SYN_HEAD;
    if (untied) n += SYN_VOCAB * SYN_DIM;
    return n;
}

/* Header then weights whose value is their float index, so every tensor's source is recognisable.
 * extra_bytes (may be negative) truncates or pads the file. */
static void write_synthetic(const char *path, const int32_t header[7], int untied,
                            long extra_bytes) {
    size_t nf = syn_weight_floats(untied);
    size_t bytes = 28 + nf * 4;
    unsigned char *buf = calloc(bytes + 64, 1);
    memcpy(buf, header, 28);
    for (size_t i = 0; i < nf; i++) {
        float v = (float)i;
        memcpy(buf + 28 + i * 4, &v, 4);
    }
    dsla_test_write_file(path, buf, (size_t)((long)bytes + extra_bytes));
    free(buf);
}

static void syn_header(int32_t h[7], int untied) {
    const int32_t v[7] = {SYN_DIM,   SYN_HIDDEN,   SYN_LAYERS,
                          SYN_HEADS, SYN_KV_HEADS, untied ? -SYN_VOCAB : SYN_VOCAB,
                          SYN_SEQ};
    memcpy(h, v, sizeof v);
}

static void write_synthetic_tokenizer(const char *path) {
    unsigned char buf[1024];
    size_t n = 0;
    int32_t max_len = 6;
    memcpy(buf + n, &max_len, 4);
    n += 4;
    for (int i = 0; i < SYN_VOCAB; i++) {
        float score = i < 3 ? 0.0f : -(float)i;
        int32_t len = (int32_t)strlen(syn_pieces[i]);
        memcpy(buf + n, &score, 4);
        memcpy(buf + n + 4, &len, 4);
        memcpy(buf + n + 8, syn_pieces[i], (size_t)len);
        n += 8 + (size_t)len;
    }
    dsla_test_write_file(path, buf, n);
}

typedef struct {
    char *dir;
    char *ckpt;
    char *tok;
    char *out;
} syn_t;

static syn_t syn_setup(void) {
    syn_t s;
    s.dir = dsla_test_tempdir();
    s.ckpt = join(s.dir, "model.bin");
    s.tok = join(s.dir, "tokenizer.bin");
    s.out = join(s.dir, "out/nested");
    write_synthetic_tokenizer(s.tok);
    return s;
}

static void syn_teardown(syn_t *s) {
    dsla_test_rmtree(s->dir);
    free(s->dir);
    free(s->ckpt);
    free(s->tok);
    free(s->out);
}

/* ---- tests ------------------------------------------------------------------------------------
 */

static void test_stories260K_matches_hf(void **state) {
    (void)state;
    char *ckpt = data_or_skip("models/stories260K/stories260K.bin");
    char *tok = data_or_skip("models/stories260K/tok512.bin");
    char *hf = data_or_skip("models/stories260K-hf");
    char *dir = dsla_test_tempdir();
    import_or_fail(ckpt, tok, dir);

    char *got_st = join(dir, "model.safetensors"), *want_st = join(hf, "model.safetensors");
    assert_same_safetensors(got_st, want_st);

    dsla_model_config_t got, want;
    char *got_cfg = join(dir, "config.json"), *want_cfg = join(hf, "config.json");
    if (dsla_config_load(&got, got_cfg) != DSLA_OK) fail_msg("%s", dsla_last_error());
    if (dsla_config_load(&want, want_cfg) != DSLA_OK) fail_msg("%s", dsla_last_error());
    dsla_test_assert_config_equal(&got, &want);
    assert_string_equal(got.torch_dtype, want.torch_dtype);
    assert_exists(dir, "tokenizer.json");
    assert_exists(dir, "tokenizer_config.json");

    dsla_test_rmtree(dir);
    free(got_st), free(want_st), free(got_cfg), free(want_cfg);
    free(dir), free(ckpt), free(tok), free(hf);
}

/* An untied classifier becomes lm_head.weight; q and k rows are de-interleaved per head, v is not.
 */
static void test_untied_synthetic_layout(void **state) {
    (void)state;
    syn_t s = syn_setup();
    int32_t h[7];
    syn_header(h, 1);
    write_synthetic(s.ckpt, h, 1, 0);
    import_or_fail(s.ckpt, s.tok, s.out);

    char *st_path = join(s.out, "model.safetensors");
    dsla_safetensors_t *st = NULL;
    if (dsla_safetensors_open(&st, st_path) != DSLA_OK) fail_msg("%s", dsla_last_error());
    assert_int_equal(dsla_safetensors_count(st), 2 + 9 * SYN_LAYERS + 1);
    for (size_t i = 1; i < dsla_safetensors_count(st); i++)
        assert_true(strcmp(dsla_safetensors_at(st, i - 1)->name, dsla_safetensors_at(st, i)->name) <
                    0);

    /* File offsets (in floats) of layer 1's q and k and of wcls, from the v0 layout. */
    const size_t wq = SYN_VOCAB * SYN_DIM + SYN_LAYERS * SYN_DIM;
    const size_t wk = wq + SYN_LAYERS * SYN_DIM * SYN_DIM;
    const size_t wv = wk + SYN_LAYERS * SYN_KV * SYN_DIM;
    const size_t wcls = syn_weight_floats(0);
    const struct {
        const char *name;
        size_t src;
        int rows, heads;
    } cases[] = {
        {"model.layers.1.self_attn.q_proj.weight", wq + SYN_DIM * SYN_DIM, SYN_DIM, SYN_HEADS},
        {"model.layers.1.self_attn.k_proj.weight", wk + SYN_KV * SYN_DIM, SYN_KV, SYN_KV_HEADS},
        {"model.layers.1.self_attn.v_proj.weight", wv + SYN_KV * SYN_DIM, SYN_KV, 0},
        {"lm_head.weight", wcls, SYN_VOCAB, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const dsla_st_tensor_t *t = dsla_safetensors_find(st, cases[c].name);
        if (!t) fail_msg("%s missing", cases[c].name);
        assert_int_equal(t->shape[0], cases[c].rows);
        assert_int_equal(t->shape[1], SYN_DIM);
        const float *f = t->data;
        for (int r = 0; r < cases[c].rows; r++) {
            int src_row = r;
            if (cases[c].heads) {
                int head = cases[c].rows / cases[c].heads, half = head / 2;
                int hh = r / head, j = (r % head) / half, i = r % half;
                src_row = hh * head + 2 * i + j;
            }
            for (int col = 0; col < SYN_DIM; col++)
                assert_true(f[r * SYN_DIM + col] ==
                            (float)(cases[c].src + (size_t)src_row * SYN_DIM + (size_t)col));
        }
    }
    dsla_safetensors_close(&st);

    dsla_model_config_t cfg;
    char *cfg_path = join(s.out, "config.json");
    if (dsla_config_load(&cfg, cfg_path) != DSLA_OK) fail_msg("%s", dsla_last_error());
    assert_false(cfg.tie_word_embeddings);
    assert_int_equal(cfg.vocab_size, SYN_VOCAB);
    assert_int_equal(cfg.head_dim, SYN_HEAD);
    assert_int_equal(cfg.max_position_embeddings, SYN_SEQ);
    free(cfg_path);
    free(st_path);
    syn_teardown(&s);
}

static void expect_refused(const syn_t *s, dsla_status_t code, const char *needle) {
    assert_int_equal(dsla_import_llama2c(s->ckpt, s->tok, s->out), code);
    const char *msg = dsla_last_error();
    if (!strstr(msg, s->ckpt)) fail_msg("message does not name the file: %s", msg);
    if (needle && !strstr(msg, needle)) fail_msg("message lacks \"%s\": %s", needle, msg);
    struct stat st;
    /* Validation happens before anything is written. */
    assert_int_not_equal(stat(s->out, &st), 0);
}

static void test_malformed_checkpoints(void **state) {
    (void)state;
    syn_t s = syn_setup();
    int32_t h[7];
    char expected[64];
    snprintf(expected, sizeof expected, "implies %zu bytes", 28 + syn_weight_floats(0) * 4);

    syn_header(h, 0);
    write_synthetic(s.ckpt, h, 0, -1);
    expect_refused(&s, DSLA_ERR_FORMAT, "truncated");
    expect_refused(&s, DSLA_ERR_FORMAT, expected);

    write_synthetic(s.ckpt, h, 0, 4);
    expect_refused(&s, DSLA_ERR_FORMAT, "trailing");
    expect_refused(&s, DSLA_ERR_FORMAT, expected);

    /* A tied header followed by a classifier: the size says untied, the header says tied. */
    write_synthetic(s.ckpt, h, 1, 0);
    expect_refused(&s, DSLA_ERR_FORMAT, "trailing");

    /* An untied header without its classifier. */
    syn_header(h, 1);
    write_synthetic(s.ckpt, h, 0, 0);
    expect_refused(&s, DSLA_ERR_FORMAT, "truncated");

    dsla_test_write_file(s.ckpt, h, 10);
    expect_refused(&s, DSLA_ERR_FORMAT, "header");
    dsla_test_write_file(s.ckpt, h, 0);
    expect_refused(&s, DSLA_ERR_FORMAT, "header");

    const struct {
        int field;
        int32_t value;
        const char *needle;
    } bad[] = {
        {0, 0, "dim"},
        {1, -5, "hidden_dim"},
        {2, 0, "n_layers"},
        {3, -2, "n_heads"},
        {4, 0, "n_kv_heads"},
        {5, 0, "vocab_size"},
        {5, INT32_MIN, "vocab_size"},
        {6, -1, "seq_len"},
        {0, INT32_MAX, "dim"},
        {2, 1 << 30, "n_layers"},
        {3, 3, "does not divide dim"},
        {4, 3, "does not divide n_heads"},
        {3, 8, "odd"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        syn_header(h, 0);
        h[bad[i].field] = bad[i].value;
        write_synthetic(s.ckpt, h, 0, 0);
        expect_refused(&s, DSLA_ERR_FORMAT, bad[i].needle);
    }

    syn_header(h, 0);
    h[0] = 0x616b3432; /* llama2.c v1+ magic */
    write_synthetic(s.ckpt, h, 0, 0);
    expect_refused(&s, DSLA_ERR_UNSUPPORTED, "version");

    assert_int_equal(dsla_import_llama2c("/nonexistent/model.bin", s.tok, s.out),
                     DSLA_ERR_NOT_FOUND);
    syn_teardown(&s);
}

static int count_tmp_files(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".tmp")) n++;
    closedir(d);
    return n;
}

/* A second import into the same directory replaces every file and leaves no temporaries. */
static void test_import_twice_overwrites(void **state) {
    (void)state;
    syn_t s = syn_setup();
    int32_t h[7];
    syn_header(h, 1);
    write_synthetic(s.ckpt, h, 1, 0);
    import_or_fail(s.ckpt, s.tok, s.out);
    char *st_path = join(s.out, "model.safetensors");
    size_t n1 = 0, n2 = 0;
    char *first = dsla_test_read_file(st_path, &n1);
    assert_non_null(first);

    /* The same directory, now a tied model: lm_head must be gone, not left over. */
    syn_header(h, 0);
    write_synthetic(s.ckpt, h, 0, 0);
    import_or_fail(s.ckpt, s.tok, s.out);
    char *second = dsla_test_read_file(st_path, &n2);
    assert_non_null(second);
    assert_true(n2 < n1);
    dsla_safetensors_t *st = NULL;
    if (dsla_safetensors_open(&st, st_path) != DSLA_OK) fail_msg("%s", dsla_last_error());
    assert_null(dsla_safetensors_find(st, "lm_head.weight"));
    dsla_safetensors_close(&st);

    import_or_fail(s.ckpt, s.tok, s.out);
    size_t n3 = 0;
    char *third = dsla_test_read_file(st_path, &n3);
    assert_int_equal(n3, n2);
    assert_memory_equal(third, second, n2);
    assert_int_equal(count_tmp_files(s.out), 0);
    const char *files[] = {"config.json", "model.safetensors", "tokenizer.json",
                           "tokenizer_config.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        assert_exists(s.out, files[i]);

    free(first), free(second), free(third), free(st_path);
    syn_teardown(&s);
}

/* ---- llama2.c run.c vectors through the imported directory ----------------------------------- */

static int32_t *json_ids(const json_t *array, size_t *n) {
    *n = json_array_size(array);
    int32_t *ids = malloc((*n + 1) * sizeof *ids);
    for (size_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(array, i));
    return ids;
}

static void assert_ids_equal(const int32_t *got, size_t n_got, const int32_t *want, size_t n_want,
                             const char *what) {
    size_t n = n_got < n_want ? n_got : n_want;
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) fail_msg("%s: id %zu is %d, expected %d", what, i, got[i], want[i]);
    if (n_got != n_want) fail_msg("%s: %zu ids, expected %zu", what, n_got, n_want);
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0; /* the first maximum, as run.c's sample_argmax */
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* run.c's greedy loop: `steps` (max_total_tokens) forward passes at most, counting the prompt's,
 * and a stop after sampling BOS (id 1), which the vectors keep as the last generated id. */
static void check_greedy(dsla_model_t *m, dsla_kv_pool_t *pool, const json_t *c) {
    const dsla_model_config_t *cfg = dsla_model_config(m);
    const char *prompt = json_string_value(json_object_get(c, "prompt"));
    int max_total = (int)json_integer_value(json_object_get(c, "max_total_tokens"));
    size_t n_prompt = 0, n_want = 0;
    int32_t *prompt_ids = json_ids(json_object_get(c, "prompt_ids"), &n_prompt);
    int32_t *want = json_ids(json_object_get(c, "generated_ids"), &n_want);
    int32_t *got = malloc((size_t)max_total * sizeof *got);
    float *logits = malloc((size_t)cfg->vocab_size * sizeof *logits);
    dsla_sequence_t *seq = NULL;
    if (dsla_sequence_create(&seq, pool, cfg) != DSLA_OK) fail_msg("%s", dsla_last_error());

    dsla_batch_item_t item = {seq, prompt_ids, (int)n_prompt, false};
    if (dsla_model_forward(m, &item, 1, logits) != DSLA_OK) fail_msg("%s", dsla_last_error());
    size_t n_got = 0;
    for (int forwarded = (int)n_prompt;; forwarded++) {
        int32_t next = argmax(logits, cfg->vocab_size);
        got[n_got++] = next;
        if (next == 1 || forwarded == max_total) break;
        item = (dsla_batch_item_t){seq, &got[n_got - 1], 1, false};
        if (dsla_model_forward(m, &item, 1, logits) != DSLA_OK) fail_msg("%s", dsla_last_error());
    }
    assert_ids_equal(got, n_got, want, n_want, prompt);

    dsla_sequence_destroy(&seq);
    free(logits), free(got), free(want), free(prompt_ids);
}

static void check_encode(const dsla_tokenizer_t *tok, const json_t *c) {
    const char *text = json_string_value(json_object_get(c, "text"));
    bool bos = json_is_true(json_object_get(c, "bos"));
    size_t n_want = 0, n_got = 0;
    int32_t *want = json_ids(json_object_get(c, "ids"), &n_want);
    int32_t *got = NULL;
    if (dsla_tokenizer_encode(tok, text, strlen(text), bos, &got, &n_got) != DSLA_OK)
        fail_msg("%s", dsla_last_error());
    assert_ids_equal(got, n_got, want, n_want, text);
    free(got), free(want);
}

/* Imports a llama2.c model, then reproduces run.c's encodings (through the written tokenizer.json)
 * and greedy continuations (through the written config.json and model.safetensors). */
static void check_vectors(const char *ckpt_rel, const char *tok_rel, const char *vectors_rel) {
    char *ckpt = data_or_skip(ckpt_rel);
    char *tok_bin = data_or_skip(tok_rel);
    char *vectors_path = data_or_skip(vectors_rel);
    json_t *vectors = dsla_test_load_json(vectors_path);
    char *dir = dsla_test_tempdir();
    import_or_fail(ckpt, tok_bin, dir);

    char *tok_json = join(dir, "tokenizer.json");
    dsla_tokenizer_t *tok = NULL;
    if (dsla_tokenizer_load(&tok, tok_json) != DSLA_OK) fail_msg("%s", dsla_last_error());
    const json_t *encode = json_object_get(vectors, "encode");
    assert_true(json_array_size(encode) > 0);
    for (size_t i = 0; i < json_array_size(encode); i++)
        check_encode(tok, json_array_get(encode, i));

    dsla_model_t *m = NULL;
    if (dsla_model_load(&m, dir) != DSLA_OK) fail_msg("%s", dsla_last_error());
    const dsla_model_config_t *cfg = dsla_model_config(m);
    /* One sequence at a time, each layer holding at most a full context of blocks. */
    int blocks = cfg->num_layers * (cfg->max_position_embeddings / DSLA_KV_BLOCK_TOKENS + 1);
    dsla_kv_pool_t *pool = NULL;
    if (dsla_kv_pool_create(&pool, cfg, blocks) != DSLA_OK) fail_msg("%s", dsla_last_error());
    const json_t *greedy = json_object_get(vectors, "greedy");
    assert_true(json_array_size(greedy) > 0);
    for (size_t i = 0; i < json_array_size(greedy); i++) {
        const json_t *c = json_array_get(greedy, i);
        /* The prompt ids of the vector are the tokenizer's too. */
        json_t *as_encode = json_pack("{s:O, s:b, s:O}", "text", json_object_get(c, "prompt"),
                                      "bos", 1, "ids", json_object_get(c, "prompt_ids"));
        check_encode(tok, as_encode);
        json_decref(as_encode);
        check_greedy(m, pool, c);
    }

    dsla_kv_pool_destroy(&pool);
    dsla_model_destroy(&m);
    dsla_tokenizer_destroy(&tok);
    json_decref(vectors);
    dsla_test_rmtree(dir);
    free(tok_json), free(dir), free(vectors_path), free(tok_bin), free(ckpt);
}

static void test_stories260K_vectors(void **state) {
    (void)state;
    check_vectors("models/stories260K/stories260K.bin", "models/stories260K/tok512.bin",
                  "testvectors/stories260K_llama2c.json");
}

static void test_babyllama105_vectors(void **state) {
    (void)state;
    check_vectors("models/babyllama105/model.bin", "models/babyllama105/tok105.bin",
                  "testvectors/babyllama105_llama2c.json");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260K_matches_hf),
        cmocka_unit_test(test_untied_synthetic_layout),
        cmocka_unit_test(test_malformed_checkpoints),
        cmocka_unit_test(test_import_twice_overwrites),
        cmocka_unit_test(test_stories260K_vectors),
        cmocka_unit_test(test_babyllama105_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* runtime/model tokenizers: HF tokenizer.json (SentencePiece-style and byte-level) and llama2.c
 * tokenizer.bin against the shared vectors of `tokenizers` and run.c, the streaming detokenizer,
 * tokenizer.json export, and refusals of bad input and hostile files. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/core/status.h"
#include "runtime/model/tokenizer.h"

/* How many lines of TinyStories the .bin-versus-tokenizer.json cross-checks encode. */
enum { CROSS_CHECK_LINES = 200 };

static dsla_tokenizer_t *load_or_fail(const char *relative) {
    char *path = dsla_test_data_or_skip(relative);
    dsla_tokenizer_t *t = NULL;
    dsla_status_t s = dsla_tokenizer_load(&t, path);
    if (s != DSLA_OK) fail_msg("loading %s: %s", path, dsla_last_error());
    free(path);
    return t;
}

static void encode_or_fail(const dsla_tokenizer_t *t, const char *text, bool bos, int32_t **ids,
                           size_t *n) {
    dsla_status_t s = dsla_tokenizer_encode(t, text, strlen(text), bos, ids, n);
    if (s != DSLA_OK) fail_msg("encode \"%s\": %s", text, dsla_last_error());
}

static void assert_ids(const int32_t *got, size_t n, json_t *want, const char *text) {
    if (n != json_array_size(want)) {
        fprintf(stderr, "text \"%s\": %zu ids, want %zu:", text, n, json_array_size(want));
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", got[i]);
        fprintf(stderr, "\n");
    }
    assert_int_equal(n, json_array_size(want));
    for (size_t i = 0; i < n; i++) {
        if (got[i] != json_integer_value(json_array_get(want, i)))
            fail_msg("text \"%s\": id %zu is %d, want %lld", text, i, got[i],
                     (long long)json_integer_value(json_array_get(want, i)));
    }
}

/* A piece is whole characters only: valid UTF-8 on its own. */
static bool utf8_complete(const char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)p[i];
        size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
        if (c >= 0x80 && c < 0xC0) return false;
        if (i + need > n) return false;
        for (size_t k = 1; k < need; k++)
            if (((unsigned char)p[i + k] & 0xC0) != 0x80) return false;
        i += need;
    }
    return true;
}

/* Streams ids one by one and checks the concatenation against the full decode. */
static void check_stream(const dsla_tokenizer_t *t, const int32_t *ids, size_t n) {
    char *full = NULL;
    assert_int_equal(dsla_tokenizer_decode(t, ids, n, true, &full), DSLA_OK);
    dsla_detokenizer_t *d = NULL;
    assert_int_equal(dsla_detokenizer_create(&d, t), DSLA_OK);
    size_t cap = strlen(full) + 64, len = 0;
    char *cat = malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        const char *piece;
        size_t plen;
        if (i < n)
            assert_int_equal(dsla_detokenizer_push(d, ids[i], &piece, &plen), DSLA_OK);
        else
            assert_int_equal(dsla_detokenizer_flush(d, &piece, &plen), DSLA_OK);
        assert_true(utf8_complete(piece, plen));
        assert_true(len + plen < cap);
        memcpy(cat + len, piece, plen);
        len += plen;
    }
    cat[len] = '\0';
    assert_string_equal(cat, full);
    free(cat);
    free(full);
    dsla_detokenizer_destroy(&d);
    assert_null(d);
}

static void run_hf_vectors(const char *vectors, const char *tokenizer_dir) {
    char *vpath = dsla_test_data_or_skip(vectors);
    json_t *root = dsla_test_load_json(vpath);
    const char *tok = json_string_value(json_object_get(root, "tokenizer"));
    char rel[512];
    snprintf(rel, sizeof rel, "%s/%s", tokenizer_dir, tok);
    dsla_tokenizer_t *t = load_or_fail(rel);
    bool bos = json_is_true(json_object_get(root, "add_bos"));
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        int32_t *ids = NULL;
        size_t n = 0;
        encode_or_fail(t, text, bos, &ids, &n);
        assert_ids(ids, n, json_object_get(c, "ids"), text);
        char *dec = NULL;
        assert_int_equal(dsla_tokenizer_decode(t, ids, n, true, &dec), DSLA_OK);
        assert_string_equal(dec, json_string_value(json_object_get(c, "decoded")));
        free(dec);
        check_stream(t, ids, n);
        free(ids);
    }
    dsla_tokenizer_destroy(&t);
    json_decref(root);
    free(vpath);
}

static void test_tok512_hf_vectors(void **state) {
    (void)state;
    run_hf_vectors("testvectors/tokenizers/tok512_hf_vectors.json", "models");
}

static void test_bytelevel2k_vectors(void **state) {
    (void)state;
    run_hf_vectors("testvectors/tokenizers/bytelevel2k_vectors.json", "testvectors/tokenizers");
}

static void run_llama2c_vectors(const char *vectors, const char *bin) {
    char *vpath = dsla_test_data_or_skip(vectors);
    json_t *root = dsla_test_load_json(vpath);
    dsla_tokenizer_t *t = load_or_fail(bin);
    assert_int_equal(dsla_tokenizer_bos_id(t), 1);
    assert_int_equal(dsla_tokenizer_eos_id(t), 2);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "encode"), i, c) {
        const char *text = json_string_value(json_object_get(c, "text"));
        int32_t *ids = NULL;
        size_t n = 0;
        encode_or_fail(t, text, json_is_true(json_object_get(c, "bos")), &ids, &n);
        assert_ids(ids, n, json_object_get(c, "ids"), text);
        char *dec = NULL;
        assert_int_equal(dsla_tokenizer_decode(t, ids, n, true, &dec), DSLA_OK);
        assert_string_equal(dec, text);
        free(dec);
        check_stream(t, ids, n);
        free(ids);
    }
    dsla_tokenizer_destroy(&t);
    json_decref(root);
    free(vpath);
}

static void test_stories260K_llama2c_vectors(void **state) {
    (void)state;
    run_llama2c_vectors("testvectors/stories260K_llama2c.json", "models/stories260K/tok512.bin");
}

static void test_babyllama105_llama2c_vectors(void **state) {
    (void)state;
    run_llama2c_vectors("testvectors/babyllama105_llama2c.json", "models/babyllama105/tok105.bin");
}

/* The first CROSS_CHECK_LINES non-empty lines of the validation text, plus every vector text. */
static char **cross_check_texts(size_t *count) {
    char *path = dsla_test_data_or_skip("data/tinystories_valid.txt");
    size_t len = 0;
    char *data = dsla_test_read_file(path, &len);
    assert_non_null(data);
    char **texts = calloc(CROSS_CHECK_LINES + 64, sizeof *texts);
    size_t n = 0;
    for (char *line = strtok(data, "\n"); line && n < CROSS_CHECK_LINES; line = strtok(NULL, "\n"))
        if (*line) texts[n++] = strdup(line);
    free(data);
    free(path);
    char *vpath = dsla_test_data_or_skip("testvectors/tokenizers/tok512_hf_vectors.json");
    json_t *root = dsla_test_load_json(vpath);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "cases"), i, c) texts[n++] =
        strdup(json_string_value(json_object_get(c, "text")));
    json_decref(root);
    free(vpath);
    *count = n;
    return texts;
}

static void assert_same_encoding(const dsla_tokenizer_t *a, const dsla_tokenizer_t *b, char **texts,
                                 size_t n) {
    for (size_t i = 0; i < n; i++) {
        int32_t *x = NULL, *y = NULL;
        size_t nx = 0, ny = 0;
        encode_or_fail(a, texts[i], true, &x, &nx);
        encode_or_fail(b, texts[i], true, &y, &ny);
        if (nx != ny || memcmp(x, y, nx * sizeof *x) != 0)
            fail_msg("encodings differ on line %zu: \"%s\"", i, texts[i]);
        char *dx = NULL, *dy = NULL;
        assert_int_equal(dsla_tokenizer_decode(a, x, nx, true, &dx), DSLA_OK);
        assert_int_equal(dsla_tokenizer_decode(b, y, ny, true, &dy), DSLA_OK);
        assert_string_equal(dx, dy);
        free(dx);
        free(dy);
        free(x);
        free(y);
    }
}

static void free_texts(char **texts, size_t n) {
    for (size_t i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
}

static void test_hf_json_matches_llama2c_bin(void **state) {
    (void)state;
    dsla_tokenizer_t *bin = load_or_fail("models/stories260K/tok512.bin");
    dsla_tokenizer_t *hf = load_or_fail("models/stories260K-hf/tokenizer.json");
    size_t n = 0;
    char **texts = cross_check_texts(&n);
    assert_same_encoding(bin, hf, texts, n);
    free_texts(texts, n);
    dsla_tokenizer_destroy(&bin);
    dsla_tokenizer_destroy(&hf);
}

static void test_tinystories11M_prompts(void **state) {
    (void)state;
    char *vpath = dsla_test_data_or_skip("testvectors/tinystories11M_hf_vectors.json");
    char *dir = dsla_test_data_or_skip("models/tinystories-11M-hf");
    json_t *root = dsla_test_load_json(vpath);
    dsla_tokenizer_t *t = NULL;
    assert_int_equal(dsla_tokenizer_load_dir(&t, dir), DSLA_OK);
    assert_int_equal(dsla_tokenizer_vocab_size(t), 2048);
    assert_int_equal(dsla_tokenizer_bos_id(t), 0);
    assert_int_equal(dsla_tokenizer_eos_id(t), 1);
    assert_true(dsla_tokenizer_add_bos_default(t));
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        const char *text = json_string_value(json_object_get(c, "prompt"));
        int32_t *ids = NULL;
        size_t n = 0;
        encode_or_fail(t, text, true, &ids, &n);
        assert_ids(ids, n, json_object_get(c, "ids"), text);
        char *dec = NULL;
        assert_int_equal(dsla_tokenizer_decode(t, ids, n, true, &dec), DSLA_OK);
        assert_string_equal(dec, text);
        free(dec);
        free(ids);
    }
    dsla_tokenizer_destroy(&t);
    json_decref(root);
    free(vpath);
    free(dir);
}

static void test_load_dir(void **state) {
    (void)state;
    char *hf_dir = dsla_test_data_or_skip("models/stories260K-hf");
    char *bin_dir = dsla_test_data_or_skip("models/stories260K");
    dsla_tokenizer_t *t = NULL;
    assert_int_equal(dsla_tokenizer_load_dir(&t, hf_dir), DSLA_OK);
    assert_int_equal(dsla_tokenizer_vocab_size(t), 512);
    assert_int_equal(dsla_tokenizer_bos_id(t), 1);
    assert_int_equal(dsla_tokenizer_eos_id(t), 2);
    assert_true(dsla_tokenizer_add_bos_default(t));
    assert_true(dsla_tokenizer_is_special(t, 1));
    assert_false(dsla_tokenizer_is_special(t, 410));
    assert_int_equal(dsla_tokenizer_token_to_id(t, "\xe2\x96\x81the"), 265);
    dsla_tokenizer_destroy(&t);
    assert_int_equal(dsla_tokenizer_load_dir(&t, bin_dir), DSLA_OK); /* finds tok512.bin */
    assert_int_equal(dsla_tokenizer_vocab_size(t), 512);
    assert_int_equal(dsla_tokenizer_token_to_id(t, "<s>"), 1);
    size_t len = 0;
    const char *p = dsla_tokenizer_id_to_token(t, 265, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(p, " the", 4);
    assert_null(dsla_tokenizer_id_to_token(t, 512, &len));
    dsla_tokenizer_destroy(&t);
    assert_int_equal(dsla_tokenizer_load_dir(&t, "/nonexistent-dir"), DSLA_ERR_NOT_FOUND);
    free(hf_dir);
    free(bin_dir);
}

static void test_added_tokens_split_first(void **state) {
    (void)state;
    dsla_tokenizer_t *bl = load_or_fail("testvectors/tokenizers/bytelevel-2k/tokenizer.json");
    int32_t *ids = NULL;
    size_t n = 0;
    encode_or_fail(bl, "Hi<|end_of_text|><|begin_of_text|>Hi", false, &ids, &n);
    assert_true(n >= 4);
    bool saw_eos = false, saw_bos = false;
    for (size_t i = 0; i < n; i++) {
        saw_eos |= ids[i] == 1 && i + 1 < n && ids[i + 1] == 0;
        saw_bos |= ids[i] == 0;
    }
    assert_true(saw_eos && saw_bos);
    char *dec = NULL;
    assert_int_equal(dsla_tokenizer_decode(bl, ids, n, false, &dec), DSLA_OK);
    assert_string_equal(dec, "Hi<|end_of_text|><|begin_of_text|>Hi");
    free(dec);
    assert_int_equal(dsla_tokenizer_decode(bl, ids, n, true, &dec), DSLA_OK);
    assert_string_equal(dec, "HiHi");
    free(dec);
    free(ids);
    dsla_tokenizer_destroy(&bl);

    dsla_tokenizer_t *sp = load_or_fail("models/stories260K-hf/tokenizer.json");
    encode_or_fail(sp, "a</s>", false, &ids, &n);
    assert_int_equal(ids[n - 1], 2);
    assert_int_equal(dsla_tokenizer_decode(sp, ids, n, false, &dec), DSLA_OK);
    assert_string_equal(dec, "a</s>");
    free(dec);
    free(ids);
    dsla_tokenizer_destroy(&sp);
}

static void test_streaming_utf8(void **state) {
    (void)state;
    const char *text = "caf\xc3\xa9 costs 5\xe2\x82\xac \xf0\x9f\x98\x80\xf0\x9f\x98\x80 "
                       "\xe4\xb8\xad\xe6\x96\x87, na\xc3\xafve \xc3\x85ngstr\xc3\xb6m";
    const char *tokenizers[] = {"models/stories260K-hf/tokenizer.json",
                                "models/stories260K/tok512.bin",
                                "testvectors/tokenizers/bytelevel-2k/tokenizer.json"};
    for (size_t k = 0; k < 3; k++) {
        dsla_tokenizer_t *t = load_or_fail(tokenizers[k]);
        int32_t *ids = NULL;
        size_t n = 0;
        encode_or_fail(t, text, true, &ids, &n);
        char *dec = NULL;
        assert_int_equal(dsla_tokenizer_decode(t, ids, n, true, &dec), DSLA_OK);
        assert_string_equal(dec, text);
        free(dec);
        check_stream(t, ids, n);
        /* priming with the prompt keeps the leading space of the next piece */
        dsla_detokenizer_t *d = NULL;
        assert_int_equal(dsla_detokenizer_create(&d, t), DSLA_OK);
        assert_int_equal(dsla_detokenizer_prime(d, ids, 2), DSLA_OK);
        int32_t *more = NULL;
        size_t nm = 0;
        encode_or_fail(t, "x yes", false, &more, &nm);
        const char *piece;
        size_t plen;
        char out[64] = {0};
        for (size_t i = 0; i < nm; i++) {
            assert_int_equal(dsla_detokenizer_push(d, more[i], &piece, &plen), DSLA_OK);
            strncat(out, piece, plen);
        }
        assert_int_equal(dsla_detokenizer_flush(d, &piece, &plen), DSLA_OK);
        assert_int_equal(plen, 0);
        /* HF's SentencePiece encoding adds the dummy prefix; byte-level encoding does not */
        assert_true(strcmp(out, " x yes") == 0 || strcmp(out, "x yes") == 0);
        free(more);
        dsla_detokenizer_destroy(&d);
        free(ids);
        dsla_tokenizer_destroy(&t);
    }
}

static void test_incomplete_bytes_become_replacement(void **state) {
    (void)state;
    dsla_tokenizer_t *t = load_or_fail("models/stories260K-hf/tokenizer.json");
    /* <0xE2><0x82> (half of the euro sign) then "a": the held-back bytes become one U+FFFD */
    int32_t ids[] = {1, 0xE2 + 3, 0x82 + 3, 412};
    dsla_detokenizer_t *d = NULL;
    assert_int_equal(dsla_detokenizer_create(&d, t), DSLA_OK);
    const char *piece;
    size_t plen;
    assert_int_equal(dsla_detokenizer_push(d, ids[0], &piece, &plen), DSLA_OK);
    assert_int_equal(dsla_detokenizer_push(d, ids[1], &piece, &plen), DSLA_OK);
    assert_int_equal(plen, 0);
    assert_int_equal(dsla_detokenizer_push(d, ids[2], &piece, &plen), DSLA_OK);
    assert_int_equal(plen, 0);
    assert_int_equal(dsla_detokenizer_push(d, ids[3], &piece, &plen), DSLA_OK);
    assert_int_equal(plen, 4);
    assert_memory_equal(piece,
                        "\xef\xbf\xbd"
                        "a",
                        4);
    /* a stream that ends mid-character flushes U+FFFD */
    assert_int_equal(dsla_detokenizer_push(d, 0xF0 + 3, &piece, &plen), DSLA_OK);
    assert_int_equal(plen, 0);
    assert_int_equal(dsla_detokenizer_flush(d, &piece, &plen), DSLA_OK);
    assert_int_equal(plen, 3);
    assert_memory_equal(piece, "\xef\xbf\xbd", 3);
    assert_int_equal(dsla_detokenizer_push(d, 512, &piece, &plen), DSLA_ERR_INVALID_ARGUMENT);
    dsla_detokenizer_destroy(&d);
    char *dec = NULL;
    int32_t bad[] = {1, -1};
    assert_int_equal(dsla_tokenizer_decode(t, bad, 2, true, &dec), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "-1"));
    dsla_tokenizer_destroy(&t);
}

static void test_invalid_utf8_rejected(void **state) {
    (void)state;
    dsla_tokenizer_t *t = load_or_fail("models/stories260K/tok512.bin");
    dsla_tokenizer_t *bl = load_or_fail("testvectors/tokenizers/bytelevel-2k/tokenizer.json");
    const struct {
        const char *text;
        size_t offset;
    } cases[] = {
        {"ab\xff", 2},          {"\x80", 0},     {"ok \xc0\xaf", 3},
        {"x\xed\xa0\x80", 1},   {"\xe2\x82", 0}, {"\xf4\x90\x80\x80", 0},
        {"caf\xc3\xa9\xc3", 5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int k = 0; k < 2; k++) {
            int32_t *ids = (int32_t *)&ids;
            size_t n = 7;
            dsla_status_t s = dsla_tokenizer_encode(k ? bl : t, cases[i].text,
                                                    strlen(cases[i].text), true, &ids, &n);
            assert_int_equal(s, DSLA_ERR_INVALID_ARGUMENT);
            assert_null(ids);
            char want[64];
            snprintf(want, sizeof want, "offset %zu", cases[i].offset);
            if (!strstr(dsla_last_error(), want)) fail_msg("%s: %s", want, dsla_last_error());
        }
    }
    /* an embedded NUL is valid UTF-8: encoded by byte fallback, not truncated */
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(dsla_tokenizer_encode(t, "a\0b", 3, true, &ids, &n), DSLA_OK);
    char *dec = NULL;
    assert_int_equal(dsla_tokenizer_decode(t, ids, n, true, &dec), DSLA_OK);
    assert_memory_equal(dec, "a\0b", 4);
    free(dec);
    free(ids);
    dsla_tokenizer_destroy(&t);
    dsla_tokenizer_destroy(&bl);
}

static void expect_load_error(const char *dir, const char *name, const void *data, size_t len,
                              dsla_status_t want, const char *substring) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    dsla_test_write_file(path, data, len);
    dsla_tokenizer_t *t = NULL;
    dsla_status_t s = dsla_tokenizer_load(&t, path);
    if (s != want)
        fail_msg("%s: got %s (%s), want %s", name, dsla_status_name(s), dsla_last_error(),
                 dsla_status_name(want));
    assert_null(t);
    if (substring && !strstr(dsla_last_error(), substring))
        fail_msg("%s: message \"%s\" lacks \"%s\"", name, dsla_last_error(), substring);
}

static const char minimal_json[] =
    "{\"model\":{\"type\":\"%s\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]},"
    "\"normalizer\":%s,\"pre_tokenizer\":%s,\"decoder\":{\"type\":\"ByteLevel\"}}";

static void test_malformed_files(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char buf[1024];
    expect_load_error(dir, "bad.json", "{ \"model\": [1, 2,", 18, DSLA_ERR_FORMAT, "bad.json");
    snprintf(buf, sizeof buf, minimal_json, "WordPiece", "null", "null");
    expect_load_error(dir, "wp.json", buf, strlen(buf), DSLA_ERR_UNSUPPORTED, "WordPiece");
    snprintf(buf, sizeof buf, minimal_json, "Unigram", "null", "null");
    expect_load_error(dir, "uni.json", buf, strlen(buf), DSLA_ERR_UNSUPPORTED, "Unigram");
    snprintf(buf, sizeof buf, minimal_json, "BPE", "{\"type\":\"NFKC\"}", "null");
    expect_load_error(dir, "nfkc.json", buf, strlen(buf), DSLA_ERR_UNSUPPORTED, "NFKC");
    snprintf(buf, sizeof buf, minimal_json, "BPE", "null", "{\"type\":\"BertPreTokenizer\"}");
    expect_load_error(dir, "bert.json", buf, strlen(buf), DSLA_ERR_UNSUPPORTED, "BertPreTokenizer");
    const char *bad_merge = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a "
                            "q\"]},\"decoder\":{\"type\":\"ByteLevel\"}}";
    expect_load_error(dir, "merge.json", bad_merge, strlen(bad_merge), DSLA_ERR_FORMAT, "merge 0");
    const char *bad_id = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-4},\"merges\":[]},"
                         "\"decoder\":{\"type\":\"ByteLevel\"}}";
    expect_load_error(dir, "id.json", bad_id, strlen(bad_id), DSLA_ERR_FORMAT, NULL);

    /* a working minimal tokenizer, to show the cases above fail for the reason they name */
    snprintf(buf, sizeof buf, minimal_json, "BPE", "null", "null");
    snprintf(buf + 900, 100, "%s/ok.json", dir);
    dsla_test_write_file(buf + 900, buf, strlen(buf));
    dsla_tokenizer_t *t = NULL;
    assert_int_equal(dsla_tokenizer_load(&t, buf + 900), DSLA_OK);
    int32_t *ids = NULL;
    size_t n = 0;
    encode_or_fail(t, "abba", false, &ids, &n);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 1);
    assert_int_equal(ids[2], 0);
    free(ids);
    dsla_tokenizer_destroy(&t);

    /* llama2.c: every truncation of a real file, and hostile lengths */
    char *bin = dsla_test_data_or_skip("models/stories260K/tok512.bin");
    size_t len = 0;
    char *data = dsla_test_read_file(bin, &len);
    assert_non_null(data);
    expect_load_error(dir, "empty.bin", "", 0, DSLA_ERR_FORMAT, NULL);
    for (size_t cut = 1; cut < len; cut += (cut < 64 ? 1 : 97)) {
        snprintf(buf, sizeof buf, "%s/cut.bin", dir);
        dsla_test_write_file(buf, data, cut);
        dsla_status_t s = dsla_tokenizer_load(&t, buf);
        /* a cut that falls exactly between records is a shorter, valid vocabulary */
        if (s == DSLA_OK) {
            assert_true(dsla_tokenizer_vocab_size(t) < 512);
            dsla_tokenizer_destroy(&t);
        } else {
            assert_int_equal(s, DSLA_ERR_FORMAT);
        }
    }
    char hostile[16];
    int32_t max_len = 8, big = 0x7fffff00;
    float score = 0;
    memcpy(hostile, &max_len, 4);
    memcpy(hostile + 4, &score, 4);
    memcpy(hostile + 8, &big, 4);
    memcpy(hostile + 12, "abcd", 4);
    expect_load_error(dir, "hostile.bin", hostile, sizeof hostile, DSLA_ERR_FORMAT, "length");
    int32_t neg = -5;
    memcpy(hostile + 8, &neg, 4);
    expect_load_error(dir, "negative.bin", hostile, sizeof hostile, DSLA_ERR_FORMAT, "length");
    int32_t huge_max = -1;
    memcpy(hostile, &huge_max, 4);
    expect_load_error(dir, "max.bin", hostile, sizeof hostile, DSLA_ERR_FORMAT, "max_token_length");
    assert_int_equal(dsla_tokenizer_load(&t, "/nonexistent/tokenizer.json"), DSLA_ERR_NOT_FOUND);
    free(data);
    free(bin);
    dsla_test_rmtree(dir);
    free(dir);
}

/* tok512.bin -> tokenizer.json must reproduce the reference conversion and the .bin's encodings. */
static void test_save_json_round_trip(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    dsla_tokenizer_t *bin = load_or_fail("models/stories260K/tok512.bin");
    assert_int_equal(dsla_tokenizer_save_json(bin, path), DSLA_OK);
    dsla_tokenizer_t *json = NULL;
    assert_int_equal(dsla_tokenizer_load(&json, path), DSLA_OK);
    size_t n = 0;
    char **texts = cross_check_texts(&n);
    assert_same_encoding(bin, json, texts, n);

    /* same vocabulary and merges, in the same order, as stories260K-hf's tokenizer.json */
    char *ref_path = dsla_test_data_or_skip("models/stories260K-hf/tokenizer.json");
    json_t *ref = dsla_test_load_json(ref_path);
    json_t *mine = dsla_test_load_json(path);
    json_t *rm = json_object_get(ref, "model"), *mm = json_object_get(mine, "model");
    assert_true(json_equal(json_object_get(rm, "vocab"), json_object_get(mm, "vocab")));
    assert_true(json_equal(json_object_get(rm, "merges"), json_object_get(mm, "merges")));
    assert_true(
        json_equal(json_object_get(ref, "normalizer"), json_object_get(mine, "normalizer")));
    assert_true(json_equal(json_object_get(ref, "decoder"), json_object_get(mine, "decoder")));
    assert_true(
        json_equal(json_object_get(ref, "added_tokens"), json_object_get(mine, "added_tokens")));
    json_decref(ref);
    json_decref(mine);
    free(ref_path);
    dsla_tokenizer_destroy(&json);
    dsla_tokenizer_destroy(&bin);

    /* tok105: no byte fallback, no newline token: unknown characters are <unk> in both */
    bin = load_or_fail("models/babyllama105/tok105.bin");
    assert_int_equal(dsla_tokenizer_save_json(bin, path), DSLA_OK);
    assert_int_equal(dsla_tokenizer_load(&json, path), DSLA_OK);
    assert_same_encoding(bin, json, texts, n);
    int32_t *ids = NULL;
    size_t nid = 0;
    encode_or_fail(bin, "a\n\xe4\xb8\xad", false, &ids, &nid);
    assert_int_equal(nid, 4);
    assert_int_equal(ids[2], 0);
    assert_int_equal(ids[3], 0);
    free(ids);
    dsla_tokenizer_destroy(&json);
    dsla_tokenizer_destroy(&bin);

    /* an HF tokenizer saves as itself */
    dsla_tokenizer_t *hf = load_or_fail("testvectors/tokenizers/bytelevel-2k/tokenizer.json");
    assert_int_equal(dsla_tokenizer_save_json(hf, path), DSLA_OK);
    assert_int_equal(dsla_tokenizer_load(&json, path), DSLA_OK);
    assert_same_encoding(hf, json, texts, n);
    dsla_tokenizer_destroy(&json);
    dsla_tokenizer_destroy(&hf);
    free_texts(texts, n);
    dsla_test_rmtree(dir);
    free(dir);
}

/* One pre-token of 200k characters (SentencePiece-style has no pre-tokenizer) must not be
 * quadratic: run.c's loop would need minutes here. */
static void test_long_input_is_fast(void **state) {
    (void)state;
    enum { LONG_TEXT_BYTES = 200000 };
    char *text = malloc(LONG_TEXT_BYTES + 1);
    const char *words = "the cat sat on the mat and looked at the big dog. ";
    size_t wl = strlen(words);
    for (size_t i = 0; i < LONG_TEXT_BYTES; i++)
        text[i] = words[i % wl];
    text[LONG_TEXT_BYTES] = '\0';
    const char *tokenizers[] = {"models/stories260K-hf/tokenizer.json",
                                "models/stories260K/tok512.bin",
                                "testvectors/tokenizers/bytelevel-2k/tokenizer.json"};
    for (size_t k = 0; k < 3; k++) {
        dsla_tokenizer_t *t = load_or_fail(tokenizers[k]);
        clock_t start = clock();
        int32_t *ids = NULL;
        size_t n = 0;
        encode_or_fail(t, text, true, &ids, &n);
        double secs = (double)(clock() - start) / CLOCKS_PER_SEC;
        assert_true(n > 1000);
        assert_true(secs < 5.0);
        char *dec = NULL;
        assert_int_equal(dsla_tokenizer_decode(t, ids, n, true, &dec), DSLA_OK);
        assert_string_equal(dec, text);
        free(dec);
        free(ids);
        dsla_tokenizer_destroy(&t);
    }
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tok512_hf_vectors),
        cmocka_unit_test(test_bytelevel2k_vectors),
        cmocka_unit_test(test_stories260K_llama2c_vectors),
        cmocka_unit_test(test_babyllama105_llama2c_vectors),
        cmocka_unit_test(test_hf_json_matches_llama2c_bin),
        cmocka_unit_test(test_tinystories11M_prompts),
        cmocka_unit_test(test_load_dir),
        cmocka_unit_test(test_added_tokens_split_first),
        cmocka_unit_test(test_streaming_utf8),
        cmocka_unit_test(test_incomplete_bytes_become_replacement),
        cmocka_unit_test(test_invalid_utf8_rejected),
        cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_save_json_round_trip),
        cmocka_unit_test(test_long_input_is_fast),
    };
    /* every test needs the shared data: skip the whole file cleanly without it */
    free(dsla_test_data_or_skip("models/stories260K/tok512.bin"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}

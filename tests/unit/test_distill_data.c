/* Distillation data: packing text and token files into BOS-led sequences, held-out splits, errors.
 */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/distill/data.h"

static dsla_tokenizer_t *load_tok512(void) {
    char *dir = dsla_test_data_or_skip("models/stories260K-hf");
    dsla_tokenizer_t *tok = NULL;
    assert_int_equal(dsla_tokenizer_load_dir(&tok, dir), DSLA_OK);
    free(dir);
    return tok;
}

static void test_text_packs_into_bos_sequences(void **state) {
    (void)state;
    dsla_tokenizer_t *tok = load_tok512();
    char *path = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    const char *files[] = {path};
    dsla_corpus_t c;
    assert_int_equal(dsla_corpus_load(&c, tok, files, 1, 64, 0), DSLA_OK);
    assert_true(c.num_sequences > 100);
    for (int i = 0; i < c.num_sequences; i++) {
        const int32_t *row = dsla_corpus_sequence(&c, i);
        assert_int_equal(row[0], dsla_tokenizer_bos_id(tok));
        for (int t = 1; t < 64; t++)
            assert_true(row[t] >= 0 && row[t] < 512);
    }
    /* The first paragraph's tokens open the stream. */
    int32_t *ids = NULL;
    size_t n = 0;
    const char *first = "One day, a little girl named Lily found a needle in her room.";
    assert_int_equal(dsla_tokenizer_encode(tok, first, strlen(first), false, &ids, &n), DSLA_OK);
    assert_memory_equal(dsla_corpus_sequence(&c, 0) + 1, ids, (n - 1) * sizeof *ids);
    free(ids);

    dsla_corpus_t eval;
    int total = c.num_sequences;
    int32_t last = dsla_corpus_sequence(&c, total - 1)[5];
    assert_int_equal(dsla_corpus_split(&c, &eval, 10), DSLA_OK);
    assert_int_equal(c.num_sequences, total - 10);
    assert_int_equal(eval.num_sequences, 10);
    assert_int_equal(dsla_corpus_sequence(&eval, 9)[5], last);
    dsla_corpus_free(&eval);
    assert_int_equal(dsla_corpus_split(&c, &eval, c.num_sequences), DSLA_ERR_INVALID_ARGUMENT);

    dsla_corpus_t few;
    assert_int_equal(dsla_corpus_load(&few, tok, files, 1, 64, 3), DSLA_OK);
    assert_int_equal(few.num_sequences, 3);
    dsla_corpus_free(&few);
    dsla_corpus_free(&c);
    dsla_tokenizer_destroy(&tok);
    free(path);
}

static void test_token_files_and_errors(void **state) {
    (void)state;
    dsla_tokenizer_t *tok = load_tok512();
    char *dir = dsla_test_tempdir();
    char path[512];
    snprintf(path, sizeof path, "%s/a.tokens", dir);
    int32_t ids[10];
    for (int i = 0; i < 10; i++)
        ids[i] = 100 + i;
    dsla_test_write_file(path, ids, sizeof ids);
    const char *files[] = {path};
    dsla_corpus_t c;
    assert_int_equal(dsla_corpus_load(&c, tok, files, 1, 4, 0), DSLA_OK);
    assert_int_equal(c.num_sequences, 3); /* 10 tokens / 3 per sequence after BOS */
    assert_int_equal(dsla_corpus_sequence(&c, 1)[1], 103);
    dsla_corpus_free(&c);

    assert_int_equal(dsla_corpus_load(&c, tok, files, 1, 64, 0), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "not enough"));
    assert_int_equal(dsla_corpus_load(&c, tok, files, 1, 1, 0), DSLA_ERR_INVALID_ARGUMENT);

    ids[3] = 9999;
    dsla_test_write_file(path, ids, sizeof ids);
    assert_int_equal(dsla_corpus_load(&c, tok, files, 1, 4, 0), DSLA_ERR_FORMAT);
    if (!strstr(dsla_last_error(), "9999")) fail_msg("message: %s", dsla_last_error());
    dsla_test_write_file(path, ids, 7);
    assert_int_equal(dsla_corpus_load(&c, tok, files, 1, 4, 0), DSLA_ERR_FORMAT);

    const char *missing[] = {"/nonexistent/corpus.txt"};
    assert_int_equal(dsla_corpus_load(&c, tok, missing, 1, 4, 0), DSLA_ERR_NOT_FOUND);
    assert_non_null(strstr(dsla_last_error(), "/nonexistent/corpus.txt"));
    dsla_test_rmtree(dir);
    free(dir);
    dsla_tokenizer_destroy(&tok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_packs_into_bos_sequences),
        cmocka_unit_test(test_token_files_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

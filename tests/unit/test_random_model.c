/* runtime/model/random_model: a random model on disk loads as a model; the bytes depend on the
 * seed alone (not on the thread count); weights stay within +-1/sqrt(fan_in), norms are ones; an
 * existing model directory is refused. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model/llama.h"
#include "runtime/model/random_model.h"

static dsla_model_config_t tiny(void) {
    dsla_model_config_t c = dsla_model_config_llama2_7b(300);
    c.hidden_size = 64, c.num_layers = 2, c.num_heads = 4, c.num_kv_heads = 2, c.head_dim = 16;
    c.intermediate_size = 96, c.max_position_embeddings = 256;
    return c;
}

static void assert_within(const float *w, size_t n, float bound) {
    double sum = 0, big = 0;
    for (size_t i = 0; i < n; i++) {
        assert_true(fabsf(w[i]) <= bound * 1.004f); /* bf16 rounding */
        sum += w[i];
        big = fmax(big, fabs(w[i]));
    }
    assert_true(fabs(sum / (double)n) < 0.1 * bound); /* centred */
    assert_true(big > 0.9 * bound);                   /* and spread over the range */
}

static void test_seeded_loadable_bounded(void **state) {
    (void)state;
    char *a = dsla_test_tempdir(), *b = dsla_test_tempdir();
    const dsla_model_config_t cfg = tiny();
    assert_int_equal(dsla_random_model_write(&cfg, 7, a, 1), DSLA_OK);
    assert_int_equal(dsla_random_model_write(&cfg, 7, b, 3), DSLA_OK);
    for (int s = 1; s <= 3; s++) {
        char pa[4096], pb[4096];
        snprintf(pa, sizeof pa, "%s/model-%05d-of-00003.safetensors", a, s);
        snprintf(pb, sizeof pb, "%s/model-%05d-of-00003.safetensors", b, s);
        size_t na = 0, nb = 0;
        char *da = dsla_test_read_file(pa, &na), *db = dsla_test_read_file(pb, &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(da, db, na);
        free(da), free(db);
    }
    dsla_model_t *m = NULL;
    assert_int_equal(dsla_model_load(&m, a), DSLA_OK);
    dsla_model_config_t want = cfg;
    snprintf(want.torch_dtype, sizeof want.torch_dtype, "bfloat16");
    dsla_test_assert_config_equal(dsla_model_config(m), &want);
    const dsla_llama_layer_t *l = dsla_model_layer(m, 1);
    assert_within(l->wq, 64 * 64, 1.0f / 8.0f);
    assert_within(l->w_down, 64 * 96, 1.0f / sqrtf(96.0f));
    assert_within(dsla_model_embeddings(m), 300 * 64, 1.0f);
    for (int i = 0; i < 64; i++)
        assert_true(l->attn_norm[i] == 1.0f && l->mlp_norm[i] == 1.0f);
    const float first[2] = {l->wq[0], l->wq[1]};
    dsla_model_destroy(&m);
    /* Another seed, other weights; a directory holding a model is refused. */
    char *c = dsla_test_tempdir();
    assert_int_equal(dsla_random_model_write(&cfg, 8, c, 2), DSLA_OK);
    assert_int_equal(dsla_model_load(&m, c), DSLA_OK);
    const float *wq = dsla_model_layer(m, 1)->wq;
    assert_true(wq[0] != first[0] || wq[1] != first[1]);
    dsla_model_destroy(&m);
    assert_int_equal(dsla_random_model_write(&cfg, 7, a, 1), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "config.json exists"));
    dsla_test_rmtree(a), dsla_test_rmtree(b), dsla_test_rmtree(c);
    free(a), free(b), free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_seeded_loadable_bounded)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* runtime/core: status messages, dtype conversions, tensor lifetime. */
#include "tests/testutil.h"

#include <math.h>
#include <string.h>

#include "runtime/core/status.h"
#include "runtime/core/tensor.h"

static void test_error_message_and_wrap(void **state) {
    (void)state;
    dsla_status_t s = dsla_error(DSLA_ERR_FORMAT, "tensor %s: offset %d", "w", 7);
    assert_int_equal(s, DSLA_ERR_FORMAT);
    assert_string_equal(dsla_last_error(), "tensor w: offset 7");
    s = dsla_error_wrap(s, "loading %s: ", "m.safetensors");
    assert_int_equal(s, DSLA_ERR_FORMAT);
    assert_string_equal(dsla_last_error(), "loading m.safetensors: tensor w: offset 7");
    assert_string_equal(dsla_status_name(DSLA_ERR_RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED");
    assert_string_equal(dsla_status_name(DSLA_ERR_UNAVAILABLE), "UNAVAILABLE");
    assert_string_equal(dsla_status_name(12345), "UNKNOWN");
}

/* One table: a client code travels as itself, a local refinement as the code its row names. */
static void test_status_table(void **state) {
    (void)state;
    assert_int_equal(DSLA_ERR_DEADLINE_EXCEEDED, 4); /* gRPC's numbers, which the wire uses */
    assert_int_equal(dsla_status_client_code(DSLA_ERR_UNAVAILABLE), DSLA_ERR_UNAVAILABLE);
    assert_int_equal(dsla_status_client_code(DSLA_ERR_FORMAT), DSLA_ERR_INVALID_ARGUMENT);
    assert_int_equal(dsla_status_client_code(DSLA_ERR_OUT_OF_MEMORY), DSLA_ERR_RESOURCE_EXHAUSTED);
    assert_int_equal(dsla_status_client_code((dsla_status_t)777), DSLA_ERR_INTERNAL);
    assert_true(dsla_status_is_client_code(DSLA_OK));
    assert_true(dsla_status_is_client_code(DSLA_ERR_UNAUTHENTICATED));
    assert_false(dsla_status_is_client_code(DSLA_ERR_IO));
    assert_false(dsla_status_is_client_code(2));
}

/* One sentence shape for every failed allocation, cut to fit without losing its ending. */
static void test_error_oom(void **state) {
    (void)state;
    assert_int_equal(dsla_error_oom("plan of %d layers", 12), DSLA_ERR_OUT_OF_MEMORY);
    assert_string_equal(dsla_last_error(), "plan of 12 layers: out of memory");
    char long_what[2 * DSLA_ERROR_MESSAGE_MAX];
    memset(long_what, 'x', sizeof long_what - 1);
    long_what[sizeof long_what - 1] = '\0';
    dsla_error_oom("%s", long_what);
    assert_int_equal(strlen(dsla_last_error()), DSLA_ERROR_MESSAGE_MAX - 1);
    const char *m = dsla_last_error();
    assert_string_equal(m + strlen(m) - strlen(": out of memory"), ": out of memory");
}

static void test_bf16_round_trip(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    for (int i = 0; i < 10000; i++) {
        float x = dsla_test_rand_normal(&rng) * 100.0f;
        float y = dsla_bf16_to_f32(dsla_f32_to_bf16(x));
        assert_true(fabsf(x - y) <= fabsf(x) * (1.0f / 256.0f));
    }
    /* exactly representable values survive unchanged; ties go to even */
    assert_true(dsla_bf16_to_f32(dsla_f32_to_bf16(1.5f)) == 1.5f);
    assert_int_equal(dsla_f32_to_bf16(1.0f + 1.0f / 256.0f), dsla_f32_to_bf16(1.0f));
    assert_true(isnan(dsla_bf16_to_f32(dsla_f32_to_bf16(NAN))));
}

static void test_f16_round_trip(void **state) {
    (void)state;
    const float exact[] = {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        assert_true(dsla_f16_to_f32(dsla_f32_to_f16(exact[i])) == exact[i]);
    assert_true(isinf(dsla_f16_to_f32(dsla_f32_to_f16(1e6f))));
    uint64_t rng = dsla_test_seed();
    for (int i = 0; i < 10000; i++) {
        float x = dsla_test_rand_uniform(&rng, -1000.0f, 1000.0f);
        float y = dsla_f16_to_f32(dsla_f32_to_f16(x));
        assert_true(fabsf(x - y) <= fabsf(x) * (1.0f / 1024.0f) + 1e-7f);
    }
}

static void test_tensor_create_destroy(void **state) {
    (void)state;
    dsla_tensor_t *t = NULL;
    int64_t shape[2] = {3, 5};
    assert_int_equal(dsla_tensor_create(&t, DSLA_DTYPE_F32, 2, shape), DSLA_OK);
    assert_int_equal(dsla_tensor_numel(t), 15);
    assert_int_equal(dsla_tensor_bytes(t), 60);
    assert_int_equal((uintptr_t)t->data % DSLA_ALIGNMENT, 0);
    dsla_tensor_destroy(&t);
    assert_null(t);
    dsla_tensor_destroy(&t); /* harmless twice */
    int64_t bad[1] = {-1};
    assert_int_equal(dsla_tensor_create(&t, DSLA_DTYPE_F32, 1, bad), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "negative"));
    assert_int_equal(dsla_tensor_create(&t, DSLA_DTYPE_F32, 9, shape), DSLA_ERR_INVALID_ARGUMENT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_message_and_wrap),
        cmocka_unit_test(test_status_table),
        cmocka_unit_test(test_error_oom),
        cmocka_unit_test(test_bf16_round_trip),
        cmocka_unit_test(test_f16_round_trip),
        cmocka_unit_test(test_tensor_create_destroy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

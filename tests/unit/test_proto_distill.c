/* proto's online-distillation bodies (LAYER_READY, DISTILL_PROGRESS): round trips, NaN eval
 * numbers, required fields, and hostile input (every truncation, every bit of every byte flipped)
 * that gives an error and never a crash. Run under ASan+UBSan by make test. */
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

static dsla_status_t layer_ready_decode(const void *b, size_t n, void *o) {
    return dsla_proto_layer_ready_decode(b, n, o);
}
static dsla_status_t progress_decode(const void *b, size_t n, void *o) {
    return dsla_proto_distill_progress_decode(b, n, o);
}

/* No prefix of a body decodes, and no flipped bit crashes the decoder. */
static void assert_flips_safe(const dsla_proto_buf_t *buf,
                              dsla_status_t (*decode)(const void *, size_t, void *), void *out) {
    for (size_t n = 0; n < buf->len; n++)
        assert_int_not_equal(decode(buf->data, n, out), DSLA_OK);
    char *copy = malloc(buf->len);
    for (size_t i = 0; i < buf->len; i++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, buf->data, buf->len);
            copy[i] ^= (char)(1u << bit);
            (void)decode(copy, buf->len, out);
        }
    free(copy);
}

static dsla_proto_layer_ready_t *sample_layer_ready(void) {
    dsla_proto_layer_ready_t *r = calloc(1, sizeof *r);
    *r = (dsla_proto_layer_ready_t){.layer = 3,
                                    .version = 1,
                                    .position = 1,
                                    .n_order = 5,
                                    .order = {1, 3, 0, 4, 2},
                                    .size = 123456,
                                    .xxh64 = UINT64_MAX,
                                    .checksum = 0x554b18f9fd33d39aull,
                                    .steps = 200,
                                    .init_eval_mse = 0.5,
                                    .eval_mse = 0.01,
                                    .train_loss = 0.02,
                                    .eval_ppl = 7.25};
    snprintf(r->path, sizeof r->path, "/tmp/out/layer-3.safetensors");
    return r;
}

static void test_layer_ready(void **state) {
    (void)state;
    dsla_proto_layer_ready_t *r = sample_layer_ready(), *d = calloc(1, sizeof *d);
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_layer_ready_encode(r, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_layer_ready_decode(buf.data, buf.len, d), DSLA_OK);
    assert_memory_equal(r, d, sizeof *r);
    assert_flips_safe(&buf, layer_ready_decode, d);
    dsla_proto_buf_free(&buf);

    /* unknown eval numbers travel as absent fields and come back NaN */
    r->init_eval_mse = NAN;
    r->eval_ppl = INFINITY;
    assert_int_equal(dsla_proto_layer_ready_encode(r, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_layer_ready_decode(buf.data, buf.len, d), DSLA_OK);
    assert_true(isnan(d->init_eval_mse) && isnan(d->eval_ppl));
    assert_true(d->eval_mse == r->eval_mse);
    dsla_proto_buf_free(&buf);

    /* refused on encode: a position outside the order, a layer out of range */
    r->position = 5;
    assert_int_equal(dsla_proto_layer_ready_encode(r, &buf), DSLA_ERR_INVALID_ARGUMENT);
    assert_null(buf.data);
    r->position = 0;
    r->layer = DSLA_PROTO_LAYERS_MAX;
    assert_int_equal(dsla_proto_layer_ready_encode(r, &buf), DSLA_ERR_INVALID_ARGUMENT);

    /* {"layer": 1, "path": "p", "xxh64": 1}: no checksum */
    static const char no_sum[] = "\x83\xa5layer\x01\xa4path\xa1p\xa5xxh64\x01";
    assert_int_equal(dsla_proto_layer_ready_decode(no_sum, sizeof no_sum - 1, d), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "required"));
    /* {"order": [600]}: a layer index beyond the limit */
    static const char big[] = "\x81\xa5order\x91\xcd\x02\x58";
    assert_int_equal(dsla_proto_layer_ready_decode(big, sizeof big - 1, d), DSLA_ERR_FORMAT);
    free(r);
    free(d);
}

static void test_distill_progress(void **state) {
    (void)state;
    dsla_proto_distill_progress_t p = {.state = DSLA_PROTO_DISTILL_TRAINING,
                                       .layers_done = 1,
                                       .layers_total = 2,
                                       .layer = 3,
                                       .step = 17,
                                       .steps = 200,
                                       .loss = 0.125,
                                       .tokens_per_s = 4096,
                                       .seconds_left = 12.5},
                                  d;
    snprintf(p.message, sizeof p.message, "layer 3");
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_distill_progress_encode(&p, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_distill_progress_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_memory_equal(&p, &d, sizeof p);
    assert_flips_safe(&buf, progress_decode, &d);
    dsla_proto_buf_free(&buf);
    for (int s = DSLA_PROTO_DISTILL_LOADING; s <= DSLA_PROTO_DISTILL_STOPPED; s++)
        assert_string_not_equal(dsla_proto_distill_state_name(s), "unknown");
    /* {"state": "later"}: a state this build does not know reads as not running */
    static const char later[] = "\x81\xa5state\xa5later";
    assert_int_equal(dsla_proto_distill_progress_decode(later, sizeof later - 1, &d), DSLA_OK);
    assert_int_equal(d.state, DSLA_PROTO_DISTILL_FAILED);
    /* {} lacks state */
    assert_int_equal(dsla_proto_distill_progress_decode("\x80", 1, &d), DSLA_ERR_FORMAT);
}

static void test_types_are_registered(void **state) {
    (void)state;
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_LAYER_READY), "LAYER_READY");
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_DISTILL_PROGRESS), "DISTILL_PROGRESS");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer_ready),
        cmocka_unit_test(test_distill_progress),
        cmocka_unit_test(test_types_are_registered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

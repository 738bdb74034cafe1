/* proto's control-loop bodies (LOAD_REPORT, SET_PLAN, PLAN_ACK/NACK, ADMIN, ADMIN_REPLY): round
 * trips, and hostile input (every truncation, every flipped byte, wrong types, oversized claims)
 * gives an error and never a crash. Run under ASan+UBSan by make test. */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "tests/unit/proto_hostile.h"

static dsla_status_t load_report_decode(const void *b, size_t n, void *o) {
    return dsla_proto_load_report_decode(b, n, o);
}
static dsla_status_t set_plan_decode(const void *b, size_t n, void *o) {
    dsla_status_t st = dsla_proto_set_plan_decode(b, n, o);
    dsla_proto_set_plan_free(o);
    return st;
}
static dsla_status_t plan_reply_decode(const void *b, size_t n, void *o) {
    return dsla_proto_plan_reply_decode(b, n, o);
}
static dsla_status_t admin_decode(const void *b, size_t n, void *o) {
    return dsla_proto_admin_decode(b, n, o);
}
static dsla_status_t admin_reply_decode(const void *b, size_t n, void *o) {
    dsla_status_t st = dsla_proto_admin_reply_decode(b, n, o);
    dsla_proto_admin_reply_free(o);
    return st;
}

static void test_load_report(void **state) {
    (void)state;
    dsla_proto_load_report_t *r = calloc(1, sizeof *r), *d = calloc(1, sizeof *d);
    *r = (dsla_proto_load_report_t){.num_layers = 5,
                                    .queue_length = 12,
                                    .running = 64,
                                    .waiting_tokens = 1u << 20,
                                    .oldest_wait_ms = 2500,
                                    .kv_used = 10,
                                    .kv_total = 100,
                                    .slots_used = 3,
                                    .slots_total = 320,
                                    .ttft_p90_ms = 12.5,
                                    .tpot_p90_ms = 0.75,
                                    .tokens_per_s = 1234.5,
                                    .plan_id = 7,
                                    .n_dsla = 2};
    r->dsla[0] = (dsla_proto_dsla_layer_t){1, 0x554b18f9fd33d39aull};
    r->dsla[1] = (dsla_proto_dsla_layer_t){3, UINT64_MAX};
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_load_report_encode(r, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_load_report_decode(buf.data, buf.len, d), DSLA_OK);
    assert_memory_equal(r, d, sizeof *r);
    assert_hostile_safe(&buf, load_report_decode, d);
    dsla_proto_buf_free(&buf);
    /* the totals and histograms (an answer to STATUS) survive the trip, the count derived */
    r->has_totals = true;
    r->requests_finished = 9;
    r->prompt_tokens = 1u << 30;
    r->generated_tokens = 77;
    r->preemptions = 2;
    for (int k = 0; k < DSLA_PROTO_HISTS; k++) {
        r->hist[k].counts[k] = 2;
        r->hist[k].counts[DSLA_PROTO_HISTOGRAM_BUCKETS] = 1;
        r->hist[k].count = 3;
        r->hist[k].sum = 1e3 + k;
    }
    assert_int_equal(dsla_proto_load_report_encode(r, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_load_report_decode(buf.data, buf.len, d), DSLA_OK);
    assert_memory_equal(r, d, sizeof *r);
    assert_hostile_safe(&buf, load_report_decode, d);
    dsla_proto_buf_free(&buf);
    assert_string_equal(dsla_proto_hist_name(DSLA_PROTO_HIST_QUEUE), "queue");
    /* {"hist": {"ttft": {"counts": [1]}}}: another number of buckets is refused, not misread */
    static const char short_hist[] = "\x81\xa4hist\x81\xa4ttft\x81\xa6"
                                     "counts\x91\x01";
    assert_int_equal(dsla_proto_load_report_decode(short_hist, sizeof short_hist - 1, d),
                     DSLA_ERR_FORMAT);
    r->n_dsla = DSLA_PROTO_LAYERS_MAX + 1;
    assert_int_equal(dsla_proto_load_report_encode(r, &buf), DSLA_ERR_INVALID_ARGUMENT);
    assert_null(buf.data);
    /* {"dsla": [{"layer": 600}]}: a layer index beyond the limit */
    static const char big_layer[] = "\x81\xa4"
                                    "dsla\x91\x81\xa5layer\xcd\x02\x58";
    assert_int_equal(dsla_proto_load_report_decode(big_layer, sizeof big_layer - 1, d),
                     DSLA_ERR_FORMAT);
    /* {"dsla": [1]} and {"queue_length": "x"} */
    static const char not_map[] = "\x81\xa4"
                                  "dsla\x91\x01";
    assert_int_equal(dsla_proto_load_report_decode(not_map, sizeof not_map - 1, d),
                     DSLA_ERR_FORMAT);
    static const char wrong_type[] = "\x81\xacqueue_length\xa1x";
    assert_int_equal(dsla_proto_load_report_decode(wrong_type, sizeof wrong_type - 1, d),
                     DSLA_ERR_FORMAT);
    free(r);
    free(d);
}

static void test_set_plan(void **state) {
    (void)state;
    dsla_proto_plan_layer_t layers[2] = {
        {3, 0x46055f6cb2c70768ull, "/tmp/v/layer-3.safetensors", 4, 70144, 0x9e3779b97f4a7c15ull},
        {1, 1, "/tmp/v/layer-1.safetensors", 0, 0, 0}};
    dsla_proto_set_plan_t p = {.seq = 9, .n_layers = 2, .layers = layers}, d;
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_set_plan_encode(&p, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_set_plan_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_int_equal(d.seq, 9);
    assert_int_equal(d.n_layers, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(d.layers[i].layer, layers[i].layer);
        assert_true(d.layers[i].checksum == layers[i].checksum);
        assert_string_equal(d.layers[i].path, layers[i].path);
        assert_int_equal(d.layers[i].version, layers[i].version);
        assert_true(d.layers[i].size == layers[i].size && d.layers[i].xxh64 == layers[i].xxh64);
    }
    dsla_proto_set_plan_free(&d);
    dsla_proto_set_plan_free(&d); /* harmless twice */
    assert_hostile_safe(&buf, set_plan_decode, &d);
    dsla_proto_buf_free(&buf);

    /* the empty plan (every layer ATTN) is a plan */
    p.n_layers = 0;
    assert_int_equal(dsla_proto_set_plan_encode(&p, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_set_plan_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_int_equal(d.n_layers, 0);
    dsla_proto_buf_free(&buf);
    /* {} lacks layers; {"layers": [{"layer": 1}]} lacks a path */
    assert_int_equal(dsla_proto_set_plan_decode("\x80", 1, &d), DSLA_ERR_FORMAT);
    static const char no_path[] = "\x81\xa6layers\x91\x81\xa5layer\x01";
    assert_int_equal(dsla_proto_set_plan_decode(no_path, sizeof no_path - 1, &d), DSLA_ERR_FORMAT);
    assert_null(d.layers);
    /* an array claiming 2^32 - 1 entries in a few bytes */
    static const char huge[] = "\x81\xa6layers\xdd\xff\xff\xff\xff";
    assert_int_equal(dsla_proto_set_plan_decode(huge, sizeof huge - 1, &d), DSLA_ERR_FORMAT);
}

static void test_plan_reply(void **state) {
    (void)state;
    dsla_proto_plan_reply_t *r = calloc(1, sizeof *r), *d = calloc(1, sizeof *d);
    r->seq = 4;
    r->plan_id = 3;
    r->code = DSLA_CODE_INVALID_ARGUMENT;
    snprintf(r->reason, sizeof r->reason, "layer 3: checksum mismatch");
    r->n_dsla = 1;
    r->dsla[0] = (dsla_proto_dsla_layer_t){1, 77};
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_plan_reply_encode(r, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_plan_reply_decode(buf.data, buf.len, d), DSLA_OK);
    assert_memory_equal(r, d, sizeof *r);
    assert_hostile_safe(&buf, plan_reply_decode, d);
    dsla_proto_buf_free(&buf);
    free(r);
    free(d);
}

static void test_admin(void **state) {
    (void)state;
    dsla_proto_admin_t *a = calloc(1, sizeof *a), *d = calloc(1, sizeof *d);
    const char *words[] = {"policy", "set", "threshold", "queue_high=8"};
    for (int i = 0; i < 4; i++)
        snprintf(a->args[a->n_args++], sizeof a->args[0], "%s", words[i]);
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_admin_encode(a, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_admin_decode(buf.data, buf.len, d), DSLA_OK);
    assert_memory_equal(a, d, sizeof *a);
    assert_hostile_safe(&buf, admin_decode, d);
    dsla_proto_buf_free(&buf);
    /* with an admin key, which travels only when set */
    snprintf(a->key, sizeof a->key, "sk-admin-0123456789abcdef");
    assert_int_equal(dsla_proto_admin_encode(a, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_admin_decode(buf.data, buf.len, d), DSLA_OK);
    assert_memory_equal(a, d, sizeof *a);
    assert_hostile_safe(&buf, admin_decode, d);
    dsla_proto_buf_free(&buf);
    a->key[0] = '\0';
    a->n_args = 0;
    assert_int_equal(dsla_proto_admin_encode(a, &buf), DSLA_ERR_INVALID_ARGUMENT);
    /* {"args": []} and {"args": [1]} */
    assert_int_equal(dsla_proto_admin_decode("\x81\xa4"
                                             "args\x90",
                                             7, d),
                     DSLA_ERR_FORMAT);
    assert_int_equal(dsla_proto_admin_decode("\x81\xa4"
                                             "args\x91\x01",
                                             8, d),
                     DSLA_ERR_FORMAT);

    dsla_proto_admin_reply_t r = {.text = "replica serving0 alive\n", .text_len = 23}, rd;
    assert_int_equal(dsla_proto_admin_reply_encode(&r, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_admin_reply_decode(buf.data, buf.len, &rd), DSLA_OK);
    assert_int_equal(rd.text_len, r.text_len);
    assert_string_equal(rd.text, r.text);
    dsla_proto_admin_reply_free(&rd);
    assert_hostile_safe(&buf, admin_reply_decode, &rd);
    dsla_proto_buf_free(&buf);
    assert_int_equal(dsla_proto_admin_reply_decode("\x80", 1, &rd), DSLA_OK); /* no text: "" */
    assert_string_equal(rd.text, "");
    dsla_proto_admin_reply_free(&rd);
    free(a);
    free(d);
}

static void test_type_names(void **state) {
    (void)state;
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_LOAD_REPORT), "LOAD_REPORT");
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_PLAN_NACK), "PLAN_NACK");
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_ADMIN_REPLY), "ADMIN_REPLY");
    assert_null(dsla_proto_type_name(9999));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_report), cmocka_unit_test(test_set_plan),
        cmocka_unit_test(test_plan_reply),  cmocka_unit_test(test_admin),
        cmocka_unit_test(test_type_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

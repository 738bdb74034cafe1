/* proto's layer broadcast bodies (BCAST_OPEN/ID/JOIN, BCAST_ACK/NACK): round trips, absent fields
 * as zero, the bounds on ranks, layers, sizes and ids on both sides, and hostile input (every
 * truncation, every flipped byte, wrong types) gives an error and never a crash. */
#include "tests/testutil.h"

#include <string.h>

#include "proto/proto.h"
#include "tests/unit/proto_hostile.h"

static dsla_status_t bcast_decode(const void *b, size_t n, void *o) {
    return dsla_proto_bcast_decode(b, n, o);
}
static dsla_status_t reply_decode(const void *b, size_t n, void *o) {
    return dsla_proto_bcast_reply_decode(b, n, o);
}

/* Field by field: padding inside the structs is not guaranteed zero. */
static void assert_bcast_equal(const dsla_proto_bcast_t *a, const dsla_proto_bcast_t *b) {
    assert_true(a->session == b->session && a->comm == b->comm && a->fresh == b->fresh);
    assert_true(a->rank == b->rank && a->nranks == b->nranks && a->layer == b->layer);
    assert_true(a->version == b->version && a->size == b->size && a->xxh64 == b->xxh64);
    assert_int_equal(a->id_len, b->id_len);
    assert_memory_equal(a->id, b->id, a->id_len);
    assert_string_equal(a->path, b->path);
}

static void assert_reply_equal(const dsla_proto_bcast_reply_t *a,
                               const dsla_proto_bcast_reply_t *b) {
    assert_true(a->session == b->session && a->rank == b->rank && a->code == b->code);
    assert_string_equal(a->reason, b->reason);
}

static void test_bcast(void **state) {
    (void)state;
    dsla_proto_bcast_t b = {.session = 9,
                            .comm = 4,
                            .fresh = true,
                            .rank = 2,
                            .nranks = 4,
                            .layer = 11,
                            .version = 3,
                            .size = 123456789,
                            .xxh64 = 0x0123456789abcdefull,
                            .id_len = DSLA_PROTO_BCAST_ID_MAX},
                       d;
    for (uint32_t i = 0; i < b.id_len; i++)
        b.id[i] = (uint8_t)(i * 13 + 1);
    snprintf(b.path, sizeof b.path, "/layers/layer-11-v3.safetensors");
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_bcast_encode(&b, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_bcast_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_bcast_equal(&b, &d);
    assert_hostile_safe(&buf, bcast_decode, &d);
    dsla_proto_buf_free(&buf);

    /* BCAST_ID's use: session, comm and id only */
    dsla_proto_bcast_t id = {.session = 9, .comm = 4, .id_len = 3, .id = {1, 2, 3}};
    assert_int_equal(dsla_proto_bcast_encode(&id, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_bcast_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_bcast_equal(&id, &d);
    dsla_proto_buf_free(&buf);

    /* the encoder refuses what the decoder would */
    dsla_proto_bcast_t bad = b;
    bad.rank = 4;
    assert_int_equal(dsla_proto_bcast_encode(&bad, &buf), DSLA_ERR_INVALID_ARGUMENT);
    assert_null(buf.data);
    assert_non_null(strstr(dsla_last_error(), "rank 4 of nranks 4"));
    bad = b;
    bad.nranks = DSLA_PROTO_BCAST_RANKS_MAX + 1;
    assert_int_equal(dsla_proto_bcast_encode(&bad, &buf), DSLA_ERR_INVALID_ARGUMENT);
    bad = b;
    bad.size = DSLA_PROTO_LAYER_FILE_MAX + 1;
    assert_int_equal(dsla_proto_bcast_encode(&bad, &buf), DSLA_ERR_INVALID_ARGUMENT);
    bad = b;
    bad.id_len = DSLA_PROTO_BCAST_ID_MAX + 1;
    assert_int_equal(dsla_proto_bcast_encode(&bad, &buf), DSLA_ERR_INVALID_ARGUMENT);
    bad = b;
    bad.layer = -1;
    assert_int_equal(dsla_proto_bcast_encode(&bad, &buf), DSLA_ERR_INVALID_ARGUMENT);

    /* {session: 1}: the rest zero */
    static const char minimal[] = "\x81\xa7session\x01";
    assert_int_equal(dsla_proto_bcast_decode(minimal, sizeof minimal - 1, &d), DSLA_OK);
    assert_true(d.session == 1 && d.nranks == 0 && d.id_len == 0 && d.path[0] == '\0');
    /* no session; rank 3 of 2; an id of 129 bytes; an id as str; a layer as str */
    static const char no_session[] = "\x81\xa4"
                                     "comm\x01";
    static const char rank[] = "\x83\xa7session\x01\xa4rank\x03\xa6nranks\x02";
    char big_id[16 + 129] = "\x82\xa7session\x01\xa2id\xc4\x81";
    static const char str_id[] = "\x82\xa7session\x01\xa2id\xa1x";
    static const char str_layer[] = "\x82\xa7session\x01\xa5layer\xa1x";
    assert_int_equal(dsla_proto_bcast_decode(no_session, sizeof no_session - 1, &d),
                     DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "session"));
    assert_int_equal(dsla_proto_bcast_decode(rank, sizeof rank - 1, &d), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "rank 3 of nranks 2"));
    assert_int_equal(dsla_proto_bcast_decode(big_id, 15 + 129, &d), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "id"));
    assert_int_equal(dsla_proto_bcast_decode(str_id, sizeof str_id - 1, &d), DSLA_ERR_FORMAT);
    assert_int_equal(dsla_proto_bcast_decode(str_layer, sizeof str_layer - 1, &d), DSLA_ERR_FORMAT);
}

static void test_bcast_reply(void **state) {
    (void)state;
    dsla_proto_bcast_reply_t r = {.session = 7, .rank = 3}, d;
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_bcast_reply_encode(&r, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_bcast_reply_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_reply_equal(&r, &d);
    dsla_proto_buf_free(&buf);

    r.code = DSLA_CODE_INTERNAL;
    memset(r.reason, 'x', DSLA_PROTO_MESSAGE_MAX);
    assert_int_equal(dsla_proto_bcast_reply_encode(&r, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_bcast_reply_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_reply_equal(&r, &d);
    assert_hostile_safe(&buf, reply_decode, &d);
    dsla_proto_buf_free(&buf);

    /* no session; rank beyond any session; a reason too long */
    static const char no_session[] = "\x81\xa4rank\x01";
    static const char rank[] = "\x82\xa7session\x01\xa4rank\x40";
    assert_int_equal(dsla_proto_bcast_reply_decode(no_session, sizeof no_session - 1, &d),
                     DSLA_ERR_FORMAT);
    assert_int_equal(dsla_proto_bcast_reply_decode(rank, sizeof rank - 1, &d), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "rank 64"));

    assert_string_equal(dsla_proto_type_name(DSLA_MSG_BCAST_OPEN), "BCAST_OPEN");
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_BCAST_NACK), "BCAST_NACK");
    assert_int_equal(DSLA_MSG_BCAST_OPEN, 21);
    assert_int_equal(DSLA_MSG_BCAST_NACK, 25);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bcast),
        cmocka_unit_test(test_bcast_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

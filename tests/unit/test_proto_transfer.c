/* proto's chunked layer transfer bodies (LAYER_FETCH, LAYER_CHUNK): round trips, the bounds on
 * chunk and file sizes on both sides, and hostile input (every truncation, every flipped byte,
 * wrong types, ranges past the file's end) gives an error and never a crash. */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "tests/unit/proto_hostile.h"

static dsla_status_t fetch_decode(const void *b, size_t n, void *o) {
    return dsla_proto_layer_fetch_decode(b, n, o);
}
static dsla_status_t chunk_decode(const void *b, size_t n, void *o) {
    return dsla_proto_layer_chunk_decode(b, n, o);
}

static void test_layer_fetch(void **state) {
    (void)state;
    dsla_proto_layer_fetch_t f = {.layer = 7,
                                  .version = 3,
                                  .xxh64 = 0xfedcba9876543210ull,
                                  .offset = 1u << 20,
                                  .max_len = DSLA_PROTO_CHUNK_MAX},
                             d;
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_layer_fetch_encode(&f, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_layer_fetch_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_int_equal(d.layer, 7);
    assert_int_equal(d.version, 3);
    assert_true(d.xxh64 == f.xxh64 && d.offset == f.offset);
    assert_int_equal(d.max_len, DSLA_PROTO_CHUNK_MAX);
    assert_hostile_safe(&buf, fetch_decode, &d);
    dsla_proto_buf_free(&buf);

    /* the encoder refuses what the decoder would */
    f.max_len = DSLA_PROTO_CHUNK_MAX + 1;
    assert_int_equal(dsla_proto_layer_fetch_encode(&f, &buf), DSLA_ERR_INVALID_ARGUMENT);
    assert_null(buf.data);
    f.max_len = 1;
    f.layer = DSLA_PROTO_LAYERS_MAX;
    assert_int_equal(dsla_proto_layer_fetch_encode(&f, &buf), DSLA_ERR_INVALID_ARGUMENT);

    /* {layer: 1, xxh64: 5}: offset 0, the largest chunk */
    static const char minimal[] = "\x82\xa5layer\x01\xa5xxh64\x05";
    assert_int_equal(dsla_proto_layer_fetch_decode(minimal, sizeof minimal - 1, &d), DSLA_OK);
    assert_true(d.offset == 0 && d.max_len == DSLA_PROTO_CHUNK_MAX && d.xxh64 == 5);
    /* no xxh64; max_len 2^20 + 1; max_len 0; a string for a layer */
    static const char no_xxh[] = "\x81\xa5layer\x01";
    static const char big[] = "\x83\xa5layer\x01\xa5xxh64\x05\xa7max_len\xce\x00\x10\x00\x01";
    static const char zero[] = "\x83\xa5layer\x01\xa5xxh64\x05\xa7max_len\x00";
    static const char str_layer[] = "\x82\xa5layer\xa1x\xa5xxh64\x05";
    assert_int_equal(dsla_proto_layer_fetch_decode(no_xxh, sizeof no_xxh - 1, &d), DSLA_ERR_FORMAT);
    assert_int_equal(dsla_proto_layer_fetch_decode(big, sizeof big - 1, &d), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "max_len 1048577"));
    assert_int_equal(dsla_proto_layer_fetch_decode(zero, sizeof zero - 1, &d), DSLA_ERR_FORMAT);
    assert_int_equal(dsla_proto_layer_fetch_decode(str_layer, sizeof str_layer - 1, &d),
                     DSLA_ERR_FORMAT);
}

static void test_layer_chunk(void **state) {
    (void)state;
    char bytes[300];
    for (size_t i = 0; i < sizeof bytes; i++)
        bytes[i] = (char)(i * 7);
    dsla_proto_layer_chunk_t c = {.layer = 2,
                                  .version = 1,
                                  .xxh64 = 99,
                                  .offset = 4096,
                                  .total_size = 4096 + sizeof bytes,
                                  .bytes = bytes,
                                  .len = sizeof bytes},
                             d;
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_layer_chunk_encode(&c, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_layer_chunk_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_int_equal(d.layer, 2);
    assert_int_equal(d.version, 1);
    assert_true(d.xxh64 == 99 && d.offset == 4096 && d.total_size == c.total_size);
    assert_int_equal(d.len, sizeof bytes);
    assert_memory_equal(d.bytes, bytes, sizeof bytes);
    /* a view into the frame, not a copy */
    assert_true((const char *)d.bytes > buf.data && (const char *)d.bytes < buf.data + buf.len);
    assert_hostile_safe(&buf, chunk_decode, &d);
    dsla_proto_buf_free(&buf);

    /* an empty chunk at the end of the file is a chunk */
    c.offset = c.total_size;
    c.len = 0;
    assert_int_equal(dsla_proto_layer_chunk_encode(&c, &buf), DSLA_OK);
    assert_int_equal(dsla_proto_layer_chunk_decode(buf.data, buf.len, &d), DSLA_OK);
    assert_int_equal(d.len, 0);
    dsla_proto_buf_free(&buf);

    /* ranges past the file's end, chunks above the limit: refused on both sides */
    c.offset = 4097;
    c.len = sizeof bytes;
    assert_int_equal(dsla_proto_layer_chunk_encode(&c, &buf), DSLA_ERR_INVALID_ARGUMENT);
    char *huge = calloc(1, DSLA_PROTO_CHUNK_MAX + 1);
    c = (dsla_proto_layer_chunk_t){.layer = 0,
                                   .xxh64 = 1,
                                   .total_size = DSLA_PROTO_CHUNK_MAX + 1,
                                   .bytes = huge,
                                   .len = DSLA_PROTO_CHUNK_MAX + 1};
    assert_int_equal(dsla_proto_layer_chunk_encode(&c, &buf), DSLA_ERR_INVALID_ARGUMENT);
    free(huge);
    /* {layer: 0, xxh64: 1, total_size: 2, bytes: bin "abc"}: three bytes of a two-byte file */
    static const char past[] = "\x84\xa5layer\x00\xa5xxh64\x01\xaatotal_size\x02"
                               "\xa5"
                               "bytes\xc4\x03"
                               "abc";
    assert_int_equal(dsla_proto_layer_chunk_decode(past, sizeof past - 1, &d), DSLA_ERR_FORMAT);
    /* bytes as a str, not bin; bytes missing; a bin claiming 2^32 - 1 bytes in a few */
    static const char str_bytes[] = "\x84\xa5layer\x00\xa5xxh64\x01\xaatotal_size\x03"
                                    "\xa5"
                                    "bytes\xa3"
                                    "abc";
    static const char no_bytes[] = "\x83\xa5layer\x00\xa5xxh64\x01\xaatotal_size\x03";
    static const char claim[] = "\x84\xa5layer\x00\xa5xxh64\x01\xaatotal_size\x03"
                                "\xa5"
                                "bytes\xc6\xff\xff\xff\xff";
    assert_int_equal(dsla_proto_layer_chunk_decode(str_bytes, sizeof str_bytes - 1, &d),
                     DSLA_ERR_FORMAT);
    assert_int_equal(dsla_proto_layer_chunk_decode(no_bytes, sizeof no_bytes - 1, &d),
                     DSLA_ERR_FORMAT);
    assert_int_equal(dsla_proto_layer_chunk_decode(claim, sizeof claim - 1, &d), DSLA_ERR_FORMAT);
    /* the type names are registered */
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_LAYER_FETCH), "LAYER_FETCH");
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_LAYER_CHUNK), "LAYER_CHUNK");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer_fetch),
        cmocka_unit_test(test_layer_chunk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

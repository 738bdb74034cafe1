/* proto: envelope and body round trips, forward compatibility, and hostile frames that must come
 * back as errors, never as crashes or huge allocations. */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "proto/proto.h"

enum { RANDOM_FRAMES = 10000, RANDOM_FRAME_MAX = 300 };

static dsla_proto_buf_t encode_ping_envelope(uint64_t id, uint64_t seq) {
    dsla_proto_ping_t ping = {.seq = seq, .sent_ns = 123456789};
    dsla_proto_buf_t body, frame;
    assert_int_equal(dsla_proto_ping_encode(&ping, &body), DSLA_OK);
    dsla_proto_envelope_t env = {
        .type = DSLA_MSG_PING, .id = id, .src = "gateway", .dst = "serving0"};
    env.body = body.data;
    env.body_len = body.len;
    assert_int_equal(dsla_proto_envelope_encode(&env, &frame), DSLA_OK);
    dsla_proto_buf_free(&body);
    return frame;
}

static void test_envelope_round_trip(void **state) {
    (void)state;
    dsla_proto_buf_t frame = encode_ping_envelope(UINT64_MAX, 42);
    dsla_proto_envelope_t env;
    assert_int_equal(dsla_proto_envelope_decode(frame.data, frame.len, &env), DSLA_OK);
    assert_int_equal(env.version, DSLA_PROTO_VERSION);
    assert_int_equal(env.type, DSLA_MSG_PING);
    assert_true(env.id == UINT64_MAX);
    assert_string_equal(env.src, "gateway");
    assert_string_equal(env.dst, "serving0");
    dsla_proto_ping_t ping;
    assert_int_equal(dsla_proto_ping_decode(env.body, env.body_len, &ping), DSLA_OK);
    assert_int_equal(ping.seq, 42);
    assert_int_equal(ping.sent_ns, 123456789);
    dsla_proto_buf_free(&frame);
    assert_null(frame.data);

    /* no body: an empty map */
    dsla_proto_envelope_t bare = {.type = DSLA_MSG_PONG, .src = "a", .dst = "b"};
    assert_int_equal(dsla_proto_envelope_encode(&bare, &frame), DSLA_OK);
    assert_int_equal(dsla_proto_envelope_decode(frame.data, frame.len, &env), DSLA_OK);
    assert_int_equal(env.body_len, 1);
    assert_int_equal(dsla_proto_ping_decode(env.body, env.body_len, &ping), DSLA_OK);
    assert_int_equal(ping.seq, 0);
    dsla_proto_buf_free(&frame);
}

static void test_error_body_and_codes(void **state) {
    (void)state;
    dsla_proto_error_t err = {.code = DSLA_CODE_RESOURCE_EXHAUSTED}, back;
    snprintf(err.message, sizeof err.message, "queue of %d requests is full", 64);
    dsla_proto_buf_t body;
    assert_int_equal(dsla_proto_error_encode(&err, &body), DSLA_OK);
    assert_int_equal(dsla_proto_error_decode(body.data, body.len, &back), DSLA_OK);
    assert_int_equal(back.code, DSLA_CODE_RESOURCE_EXHAUSTED);
    assert_string_equal(back.message, "queue of 64 requests is full");
    dsla_proto_buf_free(&body);

    assert_string_equal(dsla_proto_code_name(DSLA_CODE_UNAVAILABLE), "UNAVAILABLE");
    assert_string_equal(dsla_proto_code_name(DSLA_CODE_DEADLINE_EXCEEDED), "DEADLINE_EXCEEDED");
    assert_string_equal(dsla_proto_code_name(999), "UNKNOWN");
    assert_int_equal(dsla_proto_code_from_status(DSLA_ERR_FORMAT), DSLA_CODE_INVALID_ARGUMENT);
    assert_int_equal(dsla_proto_code_from_status(DSLA_ERR_RESOURCE_EXHAUSTED),
                     DSLA_CODE_RESOURCE_EXHAUSTED);
    assert_int_equal(dsla_proto_code_from_status(DSLA_ERR_CANCELLED), DSLA_CODE_CANCELLED);
    /* every client code goes to the wire and back as itself; local refinements fold */
    static const dsla_status_t client[] = {DSLA_OK,
                                           DSLA_ERR_CANCELLED,
                                           DSLA_ERR_INVALID_ARGUMENT,
                                           DSLA_ERR_DEADLINE_EXCEEDED,
                                           DSLA_ERR_RESOURCE_EXHAUSTED,
                                           DSLA_ERR_INTERNAL,
                                           DSLA_ERR_UNAVAILABLE,
                                           DSLA_ERR_UNAUTHENTICATED};
    for (size_t i = 0; i < sizeof client / sizeof client[0]; i++) {
        assert_int_equal(dsla_proto_status_from_code(dsla_proto_code_from_status(client[i])),
                         client[i]);
        assert_string_equal(dsla_proto_code_name(dsla_proto_code_from_status(client[i])),
                            dsla_status_name(client[i]));
    }
    assert_int_equal(dsla_proto_code_from_status(DSLA_ERR_NOT_FOUND), DSLA_CODE_INVALID_ARGUMENT);
    assert_int_equal(dsla_proto_code_from_status(DSLA_ERR_OUT_OF_MEMORY),
                     DSLA_CODE_RESOURCE_EXHAUSTED);
    assert_int_equal(dsla_proto_code_from_status(DSLA_ERR_IO), DSLA_CODE_INTERNAL);
    assert_string_equal(dsla_proto_code_name(DSLA_ERR_NOT_FOUND), "UNKNOWN");
    assert_int_equal(dsla_proto_status_from_code(999), DSLA_ERR_INTERNAL);
    assert_string_equal(dsla_proto_type_name(DSLA_MSG_ERROR), "ERROR");
    assert_null(dsla_proto_type_name(0));
    assert_null(dsla_proto_type_name(9999));
}

/* Packs an envelope by hand, so that tests can add, drop or mistype fields. */
typedef struct {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
} packer_t;

static void packer_open(packer_t *p) {
    msgpack_sbuffer_init(&p->sbuf);
    msgpack_packer_init(&p->pk, &p->sbuf, msgpack_sbuffer_write);
}

static void pack_str(packer_t *p, const char *s) {
    msgpack_pack_str_with_body(&p->pk, s, strlen(s));
}

static dsla_status_t decode_packed(packer_t *p, dsla_proto_envelope_t *env) {
    dsla_status_t st = dsla_proto_envelope_decode(p->sbuf.data, p->sbuf.size, env);
    msgpack_sbuffer_destroy(&p->sbuf);
    return st;
}

static void test_unknown_fields_ignored(void **state) {
    (void)state;
    packer_t p;
    packer_open(&p);
    msgpack_pack_map(&p.pk, 8);
    pack_str(&p, "future");
    msgpack_pack_array(&p.pk, 2);
    msgpack_pack_nil(&p.pk);
    msgpack_pack_double(&p.pk, 1.5);
    pack_str(&p, "v");
    msgpack_pack_uint32(&p.pk, DSLA_PROTO_VERSION);
    pack_str(&p, "t");
    msgpack_pack_uint32(&p.pk, DSLA_MSG_PING);
    pack_str(&p, "id");
    msgpack_pack_uint64(&p.pk, 7);
    pack_str(&p, "src");
    pack_str(&p, "x");
    pack_str(&p, "dst");
    pack_str(&p, "y");
    pack_str(&p, "body");
    msgpack_pack_map(&p.pk, 2);
    pack_str(&p, "trace");
    pack_str(&p, "abc");
    pack_str(&p, "seq");
    msgpack_pack_uint64(&p.pk, 5);
    msgpack_pack_int(&p.pk, -3); /* a non-string key: ignored too */
    msgpack_pack_true(&p.pk);
    dsla_proto_envelope_t env;
    assert_int_equal(decode_packed(&p, &env), DSLA_OK);
    assert_int_equal(env.id, 7);
    /* body bytes are a view into the freed frame now; re-decode from a fresh encode instead */
    packer_open(&p);
    msgpack_pack_map(&p.pk, 2);
    pack_str(&p, "trace");
    pack_str(&p, "abc");
    pack_str(&p, "seq");
    msgpack_pack_uint64(&p.pk, 5);
    dsla_proto_ping_t ping;
    assert_int_equal(dsla_proto_ping_decode(p.sbuf.data, p.sbuf.size, &ping), DSLA_OK);
    assert_int_equal(ping.seq, 5);
    msgpack_sbuffer_destroy(&p.sbuf);
}

/* An envelope with version v, type t, an id, and optionally a mistyped field. */
static void pack_envelope(packer_t *p, uint32_t v, uint32_t t, const char *mistyped) {
    packer_open(p);
    msgpack_pack_map(&p->pk, 6);
    const char *keys[] = {"v", "t", "id", "src", "dst", "body"};
    for (int i = 0; i < 6; i++) {
        pack_str(p, keys[i]);
        if (mistyped && strcmp(mistyped, keys[i]) == 0) {
            msgpack_pack_int(&p->pk, -1); /* negative where no field allows it */
            continue;
        }
        switch (i) {
        case 0:
            msgpack_pack_uint32(&p->pk, v);
            break;
        case 1:
            msgpack_pack_uint32(&p->pk, t);
            break;
        case 2:
            msgpack_pack_uint64(&p->pk, 99);
            break;
        case 3:
            pack_str(p, "client");
            break;
        case 4:
            pack_str(p, "gateway");
            break;
        default:
            msgpack_pack_map(&p->pk, 0);
        }
    }
}

static void test_version_type_and_field_checks(void **state) {
    (void)state;
    packer_t p;
    dsla_proto_envelope_t env;
    pack_envelope(&p, DSLA_PROTO_VERSION + 1, DSLA_MSG_PING, NULL);
    assert_int_equal(decode_packed(&p, &env), DSLA_ERR_UNSUPPORTED);
    assert_non_null(strstr(dsla_last_error(), "protocol version"));
    assert_int_equal(env.id, 99); /* kept for the error reply */
    assert_string_equal(env.src, "client");
    assert_null(env.body);

    pack_envelope(&p, DSLA_PROTO_VERSION, 4242, NULL);
    assert_int_equal(decode_packed(&p, &env), DSLA_ERR_UNSUPPORTED);
    assert_non_null(strstr(dsla_last_error(), "type 4242"));
    assert_int_equal(env.id, 99);

    const char *fields[] = {"v", "t", "id", "src", "dst", "body"};
    for (int i = 0; i < 6; i++) {
        pack_envelope(&p, DSLA_PROTO_VERSION, DSLA_MSG_PING, fields[i]);
        assert_int_equal(decode_packed(&p, &env), DSLA_ERR_FORMAT);
    }

    /* a missing field, a non-map frame, a name too long to be an actor's */
    packer_open(&p);
    msgpack_pack_map(&p.pk, 1);
    pack_str(&p, "v");
    msgpack_pack_uint32(&p.pk, DSLA_PROTO_VERSION);
    assert_int_equal(decode_packed(&p, &env), DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "missing field"));
    packer_open(&p);
    msgpack_pack_array(&p.pk, 0);
    assert_int_equal(decode_packed(&p, &env), DSLA_ERR_FORMAT);

    dsla_proto_envelope_t big = {.type = DSLA_MSG_PING};
    memset(big.src, 'x', DSLA_PROTO_NAME_MAX);
    dsla_proto_buf_t frame;
    assert_int_equal(dsla_proto_envelope_encode(&big, &frame), DSLA_OK);
    dsla_proto_buf_free(&frame);
    const char not_one_object[2] = {(char)0x80, (char)0x80};
    big.body = not_one_object;
    big.body_len = sizeof not_one_object;
    assert_int_equal(dsla_proto_envelope_encode(&big, &frame), DSLA_ERR_INVALID_ARGUMENT);
}

static void test_truncated_and_hostile_frames(void **state) {
    (void)state;
    dsla_proto_buf_t frame = encode_ping_envelope(3, 4);
    dsla_proto_envelope_t env;
    for (size_t n = 0; n < frame.len; n++)
        assert_int_equal(dsla_proto_envelope_decode(frame.data, n, &env), DSLA_ERR_FORMAT);
    /* one trailing byte */
    char *longer = malloc(frame.len + 1);
    memcpy(longer, frame.data, frame.len);
    longer[frame.len] = 0;
    assert_int_equal(dsla_proto_envelope_decode(longer, frame.len + 1, &env), DSLA_ERR_FORMAT);
    free(longer);
    dsla_proto_buf_free(&frame);

    /* counts and lengths that claim far more than the frame holds */
    static const unsigned char hostile[][9] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff},       /* array of 2^32-1 */
        {0xdf, 0xff, 0xff, 0xff, 0xff},       /* map of 2^32-1 */
        {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'},  /* str of 4 GiB */
        {0xc6, 0x7f, 0xff, 0xff, 0xff},       /* bin of 2 GiB */
        {0xc9, 0xff, 0xff, 0xff, 0xff, 0x01}, /* ext of 4 GiB */
        {0x81, 0xa1, 'v', 0xdc, 0xff, 0xff},  /* map holding an array of 65535 */
        {0xc1},                               /* reserved */
        {0xcf, 1, 2, 3},                      /* truncated uint64 */
    };
    static const size_t hostile_len[] = {5, 5, 6, 5, 6, 6, 1, 4};
    for (size_t i = 0; i < sizeof hostile_len / sizeof hostile_len[0]; i++) {
        assert_int_equal(dsla_proto_envelope_decode(hostile[i], hostile_len[i], &env),
                         DSLA_ERR_FORMAT);
        dsla_proto_ping_t ping;
        assert_int_equal(dsla_proto_ping_decode(hostile[i], hostile_len[i], &ping),
                         DSLA_ERR_FORMAT);
    }
    /* nesting far deeper than any message: [[[[...]]]] */
    unsigned char deep[200];
    memset(deep, 0x91, sizeof deep);
    deep[sizeof deep - 1] = 0xc0;
    assert_int_equal(dsla_proto_envelope_decode(deep, sizeof deep, &env), DSLA_ERR_FORMAT);
    /* larger than any frame we accept: refused before it is read */
    assert_int_equal(dsla_proto_envelope_decode(deep, (size_t)DSLA_PROTO_FRAME_MAX + 1, &env),
                     DSLA_ERR_FORMAT);
    assert_int_equal(dsla_proto_envelope_decode(NULL, 0, &env), DSLA_ERR_FORMAT);
}

static void test_random_frames_never_crash(void **state) {
    (void)state;
    uint64_t rng = dsla_test_seed();
    dsla_proto_buf_t valid = encode_ping_envelope(11, 12);
    unsigned char buf[RANDOM_FRAME_MAX];
    int accepted = 0;
    for (int i = 0; i < RANDOM_FRAMES; i++) {
        size_t len;
        if (i % 2 == 0) { /* pure noise */
            len = dsla_test_rand_u64(&rng) % RANDOM_FRAME_MAX;
            for (size_t j = 0; j < len; j++)
                buf[j] = (unsigned char)dsla_test_rand_u64(&rng);
        } else { /* a valid frame with a few bytes changed and maybe cut short */
            len = valid.len;
            memcpy(buf, valid.data, len);
            int flips = 1 + (int)(dsla_test_rand_u64(&rng) % 4);
            for (int f = 0; f < flips; f++)
                buf[dsla_test_rand_u64(&rng) % len] = (unsigned char)dsla_test_rand_u64(&rng);
            if (dsla_test_rand_u64(&rng) % 4 == 0) len = dsla_test_rand_u64(&rng) % len;
        }
        dsla_proto_envelope_t env;
        dsla_status_t st = dsla_proto_envelope_decode(buf, len, &env);
        if (st == DSLA_OK) {
            accepted++;
            assert_non_null(dsla_proto_type_name(env.type));
            assert_true((const unsigned char *)env.body >= buf &&
                        (const unsigned char *)env.body + env.body_len <= buf + len);
            dsla_proto_error_t err;
            dsla_proto_ping_t ping;
            st = dsla_proto_error_decode(env.body, env.body_len, &err);
            assert_true(st == DSLA_OK || st == DSLA_ERR_FORMAT);
            st = dsla_proto_ping_decode(env.body, env.body_len, &ping);
            assert_true(st == DSLA_OK || st == DSLA_ERR_FORMAT);
        } else {
            assert_true(st == DSLA_ERR_FORMAT || st == DSLA_ERR_UNSUPPORTED);
            assert_true(dsla_last_error()[0] != '\0');
        }
        dsla_proto_error_t err;
        st = dsla_proto_error_decode(buf, len, &err);
        assert_true(st == DSLA_OK || st == DSLA_ERR_FORMAT);
    }
    /* mutations that only touch values (the id, a name's letter) still decode */
    assert_true(accepted > 0);
    dsla_proto_buf_free(&valid);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_envelope_round_trip),
        cmocka_unit_test(test_error_body_and_codes),
        cmocka_unit_test(test_unknown_fields_ignored),
        cmocka_unit_test(test_version_type_and_field_checks),
        cmocka_unit_test(test_truncated_and_hostile_frames),
        cmocka_unit_test(test_random_frames_never_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

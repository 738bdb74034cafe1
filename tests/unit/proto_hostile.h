/* Shared by the unit tests of proto's bodies: every prefix of a valid body must fail to decode,
 * and every single-byte corruption must decode or fail cleanly (never crash, never leak), which
 * ASan+UBSan check. Header-only (static) because each test is its own executable. */
#ifndef DSLA_TESTS_PROTO_HOSTILE_H
#define DSLA_TESTS_PROTO_HOSTILE_H

#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

/* Each body type behind one signature, so that the hostile-input loop runs over all of them. */
typedef dsla_status_t (*decode_fn)(const void *body, size_t len, void *out);

static void assert_hostile_safe(const dsla_proto_buf_t *buf, decode_fn decode, void *out) {
    for (size_t n = 0; n < buf->len; n++)
        assert_int_not_equal(decode(buf->data, n, out), DSLA_OK);
    char *copy = malloc(buf->len);
    uint64_t rng = 42;
    for (size_t i = 0; i < buf->len; i++)
        for (int k = 0; k < 4; k++) {
            memcpy(copy, buf->data, buf->len);
            copy[i] = (char)dsla_test_rand_u64(&rng);
            (void)decode(copy, buf->len, out);
        }
    free(copy);
}

#endif

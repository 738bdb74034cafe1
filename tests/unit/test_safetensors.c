/* runtime/model/safetensors: real checkpoints, writer round trip, and hostile files built here.
 *
 * The shared checkpoints are optional: their tests skip (cmocka skip()) when DSLA_TEST_DATA lacks
 * them, so that the hostile-input tests, which need no data, still run everywhere. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/core/status.h"
#include "runtime/core/tensor.h"
#include "runtime/model/safetensors.h"

/* ---- helpers ----------------------------------------------------------------------------------
 */

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Writes an 8-byte length (header_len, which may lie), the header text and data to dir/name. */
static char *write_st_raw(const char *dir, const char *name, uint64_t header_len,
                          const char *header, const void *data, size_t data_len) {
    size_t hlen = strlen(header);
    size_t total = 8 + hlen + data_len;
    unsigned char *buf = malloc(total);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)(header_len >> (8 * i));
    memcpy(buf + 8, header, hlen);
    if (data_len) memcpy(buf + 8 + hlen, data, data_len);
    char *path = join(dir, name);
    dsla_test_write_file(path, buf, total);
    free(buf);
    return path;
}

static char *write_st(const char *dir, const char *name, const char *header, size_t data_len) {
    unsigned char *data = calloc(1, data_len ? data_len : 1);
    char *path = write_st_raw(dir, name, strlen(header), header, data, data_len);
    free(data);
    return path;
}

/* Opens path, expects code, and checks the message mentions every non-NULL needle. */
static void expect_open_fails(const char *path, dsla_status_t code, const char *needle1,
                              const char *needle2) {
    dsla_safetensors_t *st = (dsla_safetensors_t *)0x1;
    dsla_clear_error();
    dsla_status_t s = dsla_safetensors_open(&st, path);
    if (s != code)
        fail_msg("%s: expected %s, got %s: %s", path, dsla_status_name(code), dsla_status_name(s),
                 dsla_last_error());
    assert_null(st);
    if (needle1 && !strstr(dsla_last_error(), needle1))
        fail_msg("message lacks '%s': %s", needle1, dsla_last_error());
    if (needle2 && !strstr(dsla_last_error(), needle2))
        fail_msg("message lacks '%s': %s", needle2, dsla_last_error());
}

/* ---- real checkpoints -------------------------------------------------------------------------
 */

static void test_stories260k_single_file(void **state) {
    (void)state;
    char *dir = dsla_test_data_path("models/stories260K-hf");
    if (!dir) skip();
    dsla_safetensors_t *st = NULL;
    assert_int_equal(dsla_safetensors_open(&st, dir), DSLA_OK);
    /* 5 layers x 9 tensors + embeddings + final norm; the head is tied, so absent */
    assert_int_equal(dsla_safetensors_count(st), 47);
    assert_null(dsla_safetensors_find(st, "lm_head.weight"));
    assert_null(dsla_safetensors_at(st, 47));
    assert_string_equal(dsla_safetensors_metadata(st, "format"), "pt");
    assert_null(dsla_safetensors_metadata(st, "absent"));

    const dsla_st_tensor_t *t = NULL;
    assert_int_equal(
        dsla_safetensors_expect(st, "model.embed_tokens.weight", 2, (int64_t[]){512, 64}, &t),
        DSLA_OK);
    assert_int_equal(t->dtype, DSLA_DTYPE_F32);
    assert_int_equal(t->bytes, 512 * 64 * 4);
    assert_int_equal(dsla_safetensors_expect(st, "model.layers.4.self_attn.k_proj.weight", 2,
                                             (int64_t[]){32, 64}, NULL),
                     DSLA_OK);
    assert_int_equal(dsla_safetensors_expect(st, "model.layers.0.mlp.gate_proj.weight", 2,
                                             (int64_t[]){172, 64}, NULL),
                     DSLA_OK);
    /* every tensor listed is findable by name and its data lies inside the set */
    for (size_t i = 0; i < dsla_safetensors_count(st); i++) {
        const dsla_st_tensor_t *a = dsla_safetensors_at(st, i);
        assert_ptr_equal(dsla_safetensors_find(st, a->name), a);
    }

    float norm[64];
    assert_int_equal(dsla_safetensors_read_f32(st, "model.norm.weight", 1, (int64_t[]){64}, norm),
                     DSLA_OK);
    t = dsla_safetensors_find(st, "model.norm.weight");
    assert_memory_equal(norm, t->data, sizeof norm);

    /* the mismatch message names the tensor, what was found and what was expected */
    assert_int_equal(
        dsla_safetensors_expect(st, "model.embed_tokens.weight", 2, (int64_t[]){64, 512}, NULL),
        DSLA_ERR_FORMAT);
    assert_non_null(strstr(dsla_last_error(), "tensor 'model.embed_tokens.weight': shape [512, 64] "
                                              "does not match the expected [64, 512]"));
    assert_int_equal(dsla_safetensors_expect(st, "nope", 1, (int64_t[]){1}, NULL),
                     DSLA_ERR_NOT_FOUND);
    assert_non_null(strstr(dsla_last_error(), "'nope'"));

    dsla_safetensors_close(&st);
    assert_null(st);
    dsla_safetensors_close(&st); /* harmless twice */

    /* the file itself opens too */
    char *file = join(dir, "model.safetensors");
    assert_int_equal(dsla_safetensors_open(&st, file), DSLA_OK);
    assert_int_equal(dsla_safetensors_count(st), 47);
    dsla_safetensors_close(&st);
    free(file);
    free(dir);
}

static void test_tinystories_sharded_bf16(void **state) {
    (void)state;
    char *dir = dsla_test_data_path("models/tinystories-11M-hf");
    if (!dir) skip();
    dsla_safetensors_t *st = NULL;
    assert_int_equal(dsla_safetensors_open(&st, dir), DSLA_OK);
    /* 6 layers x 9 + embeddings + final norm + untied head, over two shards */
    assert_int_equal(dsla_safetensors_count(st), 57);
    const dsla_st_tensor_t *head = NULL;
    assert_int_equal(
        dsla_safetensors_expect(st, "lm_head.weight", 2, (int64_t[]){2048, 384}, &head), DSLA_OK);
    assert_int_equal(head->dtype, DSLA_DTYPE_BF16);
    assert_non_null(dsla_safetensors_find(st, "model.embed_tokens.weight"));
    assert_string_equal(dsla_safetensors_metadata(st, "format"), "pt");

    const dsla_st_tensor_t *q = dsla_safetensors_find(st, "model.layers.5.self_attn.q_proj.weight");
    assert_non_null(q);
    assert_int_equal(q->ndim, 2);
    assert_int_equal(q->shape[0], 384);
    assert_int_equal(q->shape[1], 384);

    /* bf16 -> f32 is exact: compare with the raw bits widened by hand */
    float *w = malloc(2048 * 384 * sizeof *w);
    assert_int_equal(dsla_safetensors_read_f32(st, "lm_head.weight", 2, (int64_t[]){2048, 384}, w),
                     DSLA_OK);
    const unsigned char *raw = head->data;
    int nonzero = 0;
    for (size_t i = 0; i < 2048 * 384; i += 997) {
        uint16_t bits = (uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
        uint32_t u = (uint32_t)bits << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        assert_true(w[i] == f);
        nonzero += f != 0.0f;
    }
    assert_true(nonzero > 0);
    free(w);
    dsla_safetensors_close(&st);
    free(dir);
}

/* ---- writer -----------------------------------------------------------------------------------
 */

static void test_writer_round_trip(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char *path = join(dir, "rt.safetensors");
    uint64_t rng = dsla_test_seed();
    float a[6];
    for (int i = 0; i < 6; i++)
        a[i] = dsla_test_rand_normal(&rng);
    uint16_t b[5];
    for (int i = 0; i < 5; i++)
        b[i] = dsla_f32_to_bf16(dsla_test_rand_normal(&rng));
    int64_t c[3] = {-1, 0, INT64_MAX};
    double scalar = 3.25;

    dsla_st_writer_t *w = NULL;
    assert_int_equal(dsla_st_writer_create(&w), DSLA_OK);
    assert_int_equal(dsla_st_writer_add(w, "z.first", DSLA_DTYPE_F32, 2, (int64_t[]){2, 3}, a),
                     DSLA_OK);
    assert_int_equal(dsla_st_writer_add(w, "b \"quoted\"", DSLA_DTYPE_BF16, 1, (int64_t[]){5}, b),
                     DSLA_OK);
    assert_int_equal(dsla_st_writer_add(w, "empty", DSLA_DTYPE_F16, 2, (int64_t[]){0, 4}, NULL),
                     DSLA_OK);
    assert_int_equal(dsla_st_writer_add(w, "ints", DSLA_DTYPE_I64, 1, (int64_t[]){3}, c), DSLA_OK);
    assert_int_equal(dsla_st_writer_add(w, "scalar", DSLA_DTYPE_F64, 0, NULL, &scalar), DSLA_OK);
    assert_int_equal(dsla_st_writer_set_metadata(w, "format", "pt"), DSLA_OK);
    assert_int_equal(dsla_st_writer_set_metadata(w, "note", "first"), DSLA_OK);
    assert_int_equal(dsla_st_writer_set_metadata(w, "note", "second"), DSLA_OK);
    /* bad adds are refused and leave the writer usable */
    assert_int_equal(dsla_st_writer_add(w, "neg", DSLA_DTYPE_F32, 1, (int64_t[]){-2}, a),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_int_equal(dsla_st_writer_add(w, "__metadata__", DSLA_DTYPE_F32, 1, (int64_t[]){1}, a),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_int_equal(dsla_st_writer_save(w, path), DSLA_OK);
    dsla_st_writer_destroy(&w);
    assert_null(w);

    char *tmp = join(dir, "rt.safetensors.tmp");
    assert_int_not_equal(access(tmp, F_OK), 0);
    free(tmp);

    /* on-disk layout: header padded to 8, metadata first, tensors in insertion order */
    size_t len = 0;
    char *bytes = dsla_test_read_file(path, &len);
    assert_non_null(bytes);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)(unsigned char)bytes[i] << (8 * i);
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(len, 8 + hlen + sizeof a + sizeof b + sizeof c + sizeof scalar);
    assert_memory_equal(bytes + 8, "{\"__metadata__\"", 15);
    char *header = strndup(bytes + 8, (size_t)hlen);
    assert_true(strstr(header, "z.first") < strstr(header, "ints"));
    assert_memory_equal(bytes + 8 + hlen, a, sizeof a);
    free(header);
    free(bytes);

    dsla_safetensors_t *st = NULL;
    assert_int_equal(dsla_safetensors_open(&st, path), DSLA_OK);
    assert_int_equal(dsla_safetensors_count(st), 5);
    assert_string_equal(dsla_safetensors_at(st, 0)->name, "z.first");
    assert_string_equal(dsla_safetensors_metadata(st, "note"), "second");
    const dsla_st_tensor_t *t = NULL;
    assert_int_equal(dsla_safetensors_expect(st, "z.first", 2, (int64_t[]){2, 3}, &t), DSLA_OK);
    assert_memory_equal(t->data, a, sizeof a);
    assert_int_equal(dsla_safetensors_expect(st, "b \"quoted\"", 1, (int64_t[]){5}, &t), DSLA_OK);
    assert_int_equal(t->dtype, DSLA_DTYPE_BF16);
    assert_memory_equal(t->data, b, sizeof b);
    assert_int_equal(dsla_safetensors_expect(st, "empty", 2, (int64_t[]){0, 4}, &t), DSLA_OK);
    assert_int_equal(t->bytes, 0);
    assert_int_equal(dsla_safetensors_expect(st, "ints", 1, (int64_t[]){3}, &t), DSLA_OK);
    assert_memory_equal(t->data, c, sizeof c);
    assert_int_equal(dsla_safetensors_expect(st, "scalar", 0, NULL, &t), DSLA_OK);
    assert_memory_equal(t->data, &scalar, sizeof scalar);

    float bf[5];
    assert_int_equal(dsla_safetensors_read_f32(st, "b \"quoted\"", 1, (int64_t[]){5}, bf), DSLA_OK);
    for (int i = 0; i < 5; i++)
        assert_true(bf[i] == dsla_bf16_to_f32(b[i]));
    float one;
    assert_int_equal(dsla_safetensors_read_f32(st, "scalar", 0, NULL, &one), DSLA_OK);
    assert_true(one == 3.25f);
    float ints[3];
    assert_int_equal(dsla_safetensors_read_f32(st, "ints", 1, (int64_t[]){3}, ints),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "'ints'"));
    dsla_safetensors_close(&st);

    /* a duplicate name is refused at save time, and nothing is left behind */
    char *dup_path = join(dir, "dup.safetensors");
    assert_int_equal(dsla_st_writer_create(&w), DSLA_OK);
    assert_int_equal(dsla_st_writer_add(w, "x", DSLA_DTYPE_F32, 1, (int64_t[]){1}, a), DSLA_OK);
    assert_int_equal(dsla_st_writer_add(w, "x", DSLA_DTYPE_F32, 1, (int64_t[]){1}, a), DSLA_OK);
    assert_int_equal(dsla_st_writer_save(w, dup_path), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "'x'"));
    assert_int_not_equal(access(dup_path, F_OK), 0);
    dsla_st_writer_destroy(&w);
    free(dup_path);

    dsla_test_rmtree(dir);
    free(path);
    free(dir);
}

/* A header whose length is not a multiple of 8 leaves f32 data misaligned; reading must still be
 * exact (and clean under UBSan). */
static void test_misaligned_data(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    const char *header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}";
    assert_true(strlen(header) % 4 != 0);
    float v[3] = {1.5f, -2.0f, 0.25f};
    char *path = write_st_raw(dir, "m.safetensors", strlen(header), header, v, sizeof v);
    dsla_safetensors_t *st = NULL;
    assert_int_equal(dsla_safetensors_open(&st, path), DSLA_OK);
    float out[3];
    assert_int_equal(dsla_safetensors_read_f32(st, "w", 1, (int64_t[]){3}, out), DSLA_OK);
    assert_memory_equal(out, v, sizeof v);
    dsla_safetensors_close(&st);
    dsla_test_rmtree(dir);
    free(path);
    free(dir);
}

/* ---- hostile and malformed files --------------------------------------------------------------
 */

static void test_truncated_files(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char *good = join(dir, "good.safetensors");
    float a[16] = {0};
    dsla_st_writer_t *w = NULL;
    assert_int_equal(dsla_st_writer_create(&w), DSLA_OK);
    assert_int_equal(dsla_st_writer_add(w, "alpha", DSLA_DTYPE_F32, 2, (int64_t[]){4, 4}, a),
                     DSLA_OK);
    assert_int_equal(dsla_st_writer_add(w, "beta", DSLA_DTYPE_F32, 1, (int64_t[]){8}, a), DSLA_OK);
    assert_int_equal(dsla_st_writer_save(w, good), DSLA_OK);
    dsla_st_writer_destroy(&w);

    size_t len = 0;
    char *bytes = dsla_test_read_file(good, &len);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)(unsigned char)bytes[i] << (8 * i);
    size_t cuts[] = {0,
                     1,
                     7,
                     8,
                     9,
                     8 + (size_t)hlen / 2,
                     8 + (size_t)hlen - 1,
                     8 + (size_t)hlen,
                     8 + (size_t)hlen + 3,
                     8 + (size_t)hlen + 64,
                     len - 1};
    char *cut_path = join(dir, "cut.safetensors");
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        assert_true(cuts[i] < len);
        dsla_test_write_file(cut_path, bytes, cuts[i]);
        expect_open_fails(cut_path, DSLA_ERR_FORMAT, "cut.safetensors", NULL);
    }
    /* a cut inside the data names the tensor that no longer fits */
    dsla_test_write_file(cut_path, bytes, len - 1);
    expect_open_fails(cut_path, DSLA_ERR_FORMAT, "'beta'", NULL);

    /* trailing garbage after the last tensor is a hole the format forbids */
    char *longer = malloc(len + 5);
    memcpy(longer, bytes, len);
    memcpy(longer + len, "extra", 5);
    dsla_test_write_file(cut_path, longer, len + 5);
    expect_open_fails(cut_path, DSLA_ERR_FORMAT, "trailing", NULL);
    free(longer);

    free(cut_path);
    free(bytes);
    free(good);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_bad_header_length(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    const char *h = "{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    float one = 1.0f;
    char *p = write_st_raw(dir, "long.safetensors", strlen(h) + 100, h, &one, 4);
    expect_open_fails(p, DSLA_ERR_FORMAT, "long.safetensors", "header length");
    free(p);
    p = write_st_raw(dir, "huge.safetensors", (uint64_t)1 << 40, h, &one, 4);
    expect_open_fails(p, DSLA_ERR_FORMAT, "huge.safetensors", "limit");
    free(p);
    p = write_st_raw(dir, "max.safetensors", UINT64_MAX, h, &one, 4);
    expect_open_fails(p, DSLA_ERR_FORMAT, "max.safetensors", NULL);
    free(p);
    /* a length that cuts the JSON short leaves invalid JSON */
    p = write_st_raw(dir, "short.safetensors", strlen(h) - 3, h, &one, 4);
    expect_open_fails(p, DSLA_ERR_FORMAT, "short.safetensors", NULL);
    free(p);
    dsla_test_rmtree(dir);
    free(dir);
}

typedef struct {
    const char *header;
    size_t data_len;
    dsla_status_t code;
    const char *needle; /* must appear in the message, besides the file name */
} bad_header_case_t;

static void test_bad_headers(void **state) {
    (void)state;
    static const bad_header_case_t cases[] = {
        {"{not json", 0, DSLA_ERR_FORMAT, "JSON"},
        {"[1, 2]", 0, DSLA_ERR_FORMAT, "object"},
        {"{\"t\": 5}", 0, DSLA_ERR_FORMAT, "'t'"},
        {"{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DSLA_ERR_FORMAT, "dtype"},
        {"{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, DSLA_ERR_FORMAT, "shape"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, DSLA_ERR_FORMAT, "data_offsets"},
        {"{\"t\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DSLA_ERR_FORMAT, "'t'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4000]}}", 4, DSLA_ERR_FORMAT,
         "'t'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, DSLA_ERR_FORMAT,
         "'t'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, DSLA_ERR_FORMAT,
         "'t'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, DSLA_ERR_FORMAT,
         "'t'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e3]}}", 4, DSLA_ERR_FORMAT,
         "'t'"},
        /* size vs shape */
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, DSLA_ERR_FORMAT,
         "needs 12"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, DSLA_ERR_FORMAT,
         "negative"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, DSLA_ERR_FORMAT,
         "'t'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", 4, DSLA_ERR_FORMAT,
         "'t'"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         DSLA_ERR_UNSUPPORTED, "5 dimensions"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,4]}}",
         4, DSLA_ERR_FORMAT, "overflow"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[9223372036854775807,2],\"data_offsets\":[0,4]}}", 4,
         DSLA_ERR_FORMAT, "overflow"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}", 4,
         DSLA_ERR_FORMAT, "JSON"},
        /* dtypes: not a safetensors dtype at all, versus valid but unsupported */
        {"{\"t\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, DSLA_ERR_FORMAT,
         "Q4"},
        {"{\"t\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, DSLA_ERR_UNSUPPORTED,
         "U8"},
        {"{\"t\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
         DSLA_ERR_UNSUPPORTED, "F8_E4M3"},
        {"{\"t\":{\"dtype\":\"BOOL\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4,
         DSLA_ERR_UNSUPPORTED, "BOOL"},
        /* layout */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, DSLA_ERR_FORMAT, "overlap"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         8, DSLA_ERR_FORMAT, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
         20, DSLA_ERR_FORMAT, "hole"},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, DSLA_ERR_FORMAT, "t"},
        /* metadata */
        {"{\"__metadata__\":{\"format\":1},"
         "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4, DSLA_ERR_FORMAT, "format"},
        {"{\"__metadata__\":[\"pt\"]}", 0, DSLA_ERR_FORMAT, "__metadata__"},
    };
    char *dir = dsla_test_tempdir();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "bad%zu.safetensors", i);
        char *path = write_st(dir, name, cases[i].header, cases[i].data_len);
        print_message("case %zu: %s\n", i, cases[i].header);
        expect_open_fails(path, cases[i].code, name, cases[i].needle);
        free(path);
    }
    /* an empty checkpoint is well-formed */
    char *path = write_st(dir, "empty.safetensors", "{}      ", 0);
    dsla_safetensors_t *st = NULL;
    assert_int_equal(dsla_safetensors_open(&st, path), DSLA_OK);
    assert_int_equal(dsla_safetensors_count(st), 0);
    assert_null(dsla_safetensors_find(st, "x"));
    dsla_safetensors_close(&st);
    free(path);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_missing_paths(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char *missing = join(dir, "nothing.safetensors");
    expect_open_fails(missing, DSLA_ERR_NOT_FOUND, "nothing.safetensors", NULL);
    expect_open_fails(dir, DSLA_ERR_NOT_FOUND, dir, "model.safetensors");
    free(missing);
    dsla_test_rmtree(dir);
    free(dir);
}

static void write_index(const char *dir, const char *weight_map) {
    char *path = join(dir, "model.safetensors.index.json");
    char text[1024];
    snprintf(text, sizeof text, "{\"metadata\": {}, \"weight_map\": %s}", weight_map);
    dsla_test_write_file(path, text, strlen(text));
    free(path);
}

static void test_sharded_index(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    free(write_st(dir, "s1.safetensors",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4));
    free(write_st(dir, "s2.safetensors",
                  "{\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4));

    write_index(dir, "{\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}");
    dsla_safetensors_t *st = NULL;
    assert_int_equal(dsla_safetensors_open(&st, dir), DSLA_OK);
    assert_int_equal(dsla_safetensors_count(st), 2);
    assert_non_null(dsla_safetensors_find(st, "a"));
    assert_non_null(dsla_safetensors_find(st, "b"));
    dsla_safetensors_close(&st);

    write_index(dir, "{\"a\": \"s1.safetensors\", \"b\": \"s3.safetensors\"}");
    expect_open_fails(dir, DSLA_ERR_NOT_FOUND, "s3.safetensors", NULL);
    write_index(dir, "{\"a\": \"s1.safetensors\", \"c\": \"s2.safetensors\"}");
    expect_open_fails(dir, DSLA_ERR_FORMAT, "'c'", "s2.safetensors");
    write_index(dir, "{\"a\": \"s2.safetensors\", \"b\": \"s2.safetensors\"}");
    expect_open_fails(dir, DSLA_ERR_FORMAT, "'a'", "s2.safetensors");
    write_index(dir, "{\"a\": \"../x\"}");
    expect_open_fails(dir, DSLA_ERR_FORMAT, "../x", "'a'");
    write_index(dir, "{\"a\": \"/etc/passwd\"}");
    expect_open_fails(dir, DSLA_ERR_FORMAT, "/etc/passwd", NULL);
    write_index(dir, "{\"a\": \"..\"}");
    expect_open_fails(dir, DSLA_ERR_FORMAT, "'..'", NULL);
    write_index(dir, "{\"a\": 3}");
    expect_open_fails(dir, DSLA_ERR_FORMAT, "'a'", NULL);
    write_index(dir, "[]");
    expect_open_fails(dir, DSLA_ERR_FORMAT, "weight_map", NULL);

    /* a shard that is itself hostile fails the whole set */
    free(write_st(dir, "s4.safetensors",
                  "{\"d\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4));
    write_index(dir, "{\"a\": \"s1.safetensors\", \"d\": \"s4.safetensors\"}");
    expect_open_fails(dir, DSLA_ERR_FORMAT, "s4.safetensors", "'d'");

    /* the same tensor in two shards is ambiguous */
    free(write_st(dir, "s5.safetensors",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4));
    write_index(dir, "{\"a\": \"s1.safetensors\", \"b\": \"s5.safetensors\"}");
    expect_open_fails(dir, DSLA_ERR_FORMAT, "'a'", NULL);

    char *index = join(dir, "model.safetensors.index.json");
    dsla_test_write_file(index, "{\"weight_map\": ", 15);
    expect_open_fails(dir, DSLA_ERR_FORMAT, "model.safetensors.index.json", NULL);
    free(index);

    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories260k_single_file),
        cmocka_unit_test(test_tinystories_sharded_bf16),
        cmocka_unit_test(test_writer_round_trip),
        cmocka_unit_test(test_misaligned_data),
        cmocka_unit_test(test_truncated_files),
        cmocka_unit_test(test_bad_header_length),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_missing_paths),
        cmocka_unit_test(test_sharded_index),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

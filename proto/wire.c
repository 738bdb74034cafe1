/* Bounds-checked msgpack walking and field reading; see wire.h for why the walk comes first. */
#include "proto/wire.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t read_be(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Skips a fixed-size payload or a length-prefixed one (len_bytes of length, then extra bytes of
 * ext type, then the payload). */
static const char *skip_sized(const char *p, const char *end, int len_bytes, int extra) {
    if (end - p < len_bytes + extra) return NULL;
    uint64_t n = read_be((const unsigned char *)p, len_bytes);
    p += len_bytes + extra;
    if (n > (uint64_t)(end - p)) return NULL;
    return p + n;
}

static const char *skip_items(const char *p, const char *end, uint64_t items, int depth) {
    /* Every item takes at least one byte: a larger count is a lie, refused before any work. */
    if (items > (uint64_t)(end - p)) return NULL;
    for (uint64_t i = 0; i < items && p; i++)
        p = dsla_wire_skip(p, end, depth + 1);
    return p;
}

static const char *skip_container(const char *p, const char *end, int count_bytes, int per_entry,
                                  int depth) {
    if (end - p < count_bytes) return NULL;
    uint64_t n = read_be((const unsigned char *)p, count_bytes);
    return skip_items(p + count_bytes, end, n * (uint64_t)per_entry, depth);
}

const char *dsla_wire_skip(const char *p, const char *end, int depth) {
    if (!p || p >= end || depth > DSLA_WIRE_DEPTH_MAX) return NULL;
    unsigned char b = (unsigned char)*p++;
    if (b <= 0x7f || b >= 0xe0) return p; /* fixints */
    if (b <= 0x8f) return skip_items(p, end, 2u * (b & 0x0f), depth);
    if (b <= 0x9f) return skip_items(p, end, b & 0x0f, depth);
    if (b <= 0xbf) return (uint64_t)(end - p) < (b & 0x1fu) ? NULL : p + (b & 0x1f);
    switch (b) {
    case 0xc0: /* nil */
    case 0xc2: /* false */
    case 0xc3: /* true */
        return p;
    case 0xc4:
        return skip_sized(p, end, 1, 0); /* bin 8/16/32 */
    case 0xc5:
        return skip_sized(p, end, 2, 0);
    case 0xc6:
        return skip_sized(p, end, 4, 0);
    case 0xc7:
        return skip_sized(p, end, 1, 1); /* ext 8/16/32 */
    case 0xc8:
        return skip_sized(p, end, 2, 1);
    case 0xc9:
        return skip_sized(p, end, 4, 1);
    case 0xca:
        return end - p < 4 ? NULL : p + 4;
    case 0xcb:
        return end - p < 8 ? NULL : p + 8;
    case 0xcc:
    case 0xd0:
        return end - p < 1 ? NULL : p + 1;
    case 0xcd:
    case 0xd1:
        return end - p < 2 ? NULL : p + 2;
    case 0xce:
    case 0xd2:
        return end - p < 4 ? NULL : p + 4;
    case 0xcf:
    case 0xd3:
        return end - p < 8 ? NULL : p + 8;
    case 0xd4:
        return end - p < 2 ? NULL : p + 2; /* fixext 1/2/4/8/16: type byte + data */
    case 0xd5:
        return end - p < 3 ? NULL : p + 3;
    case 0xd6:
        return end - p < 5 ? NULL : p + 5;
    case 0xd7:
        return end - p < 9 ? NULL : p + 9;
    case 0xd8:
        return end - p < 17 ? NULL : p + 17;
    case 0xd9:
        return skip_sized(p, end, 1, 0); /* str 8/16/32 */
    case 0xda:
        return skip_sized(p, end, 2, 0);
    case 0xdb:
        return skip_sized(p, end, 4, 0);
    case 0xdc:
        return skip_container(p, end, 2, 1, depth); /* array 16/32 */
    case 0xdd:
        return skip_container(p, end, 4, 1, depth);
    case 0xde:
        return skip_container(p, end, 2, 2, depth); /* map 16/32 */
    case 0xdf:
        return skip_container(p, end, 4, 2, depth);
    default:
        return NULL; /* 0xc1 is reserved */
    }
}

dsla_status_t dsla_wire_unpack(const char *data, size_t len, msgpack_unpacked *result,
                               const char *what) {
    if (!data || len == 0) return dsla_error(DSLA_ERR_FORMAT, "%s: empty frame", what);
    if (len > DSLA_PROTO_FRAME_MAX)
        return dsla_error(DSLA_ERR_FORMAT, "%s: %zu bytes exceeds the frame limit of %u", what, len,
                          DSLA_PROTO_FRAME_MAX);
    const char *end = dsla_wire_skip(data, data + len, 0);
    if (!end)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: not one well-formed msgpack object (truncated, a count beyond its "
                          "%zu bytes, nested deeper than %d, or a reserved byte)",
                          what, len, DSLA_WIRE_DEPTH_MAX);
    if (end != data + len)
        return dsla_error(DSLA_ERR_FORMAT, "%s: %zu trailing bytes after the object", what,
                          (size_t)(data + len - end));
    msgpack_unpacked_init(result);
    size_t off = 0;
    if (msgpack_unpack_next(result, data, len, &off) != MSGPACK_UNPACK_SUCCESS || off != len) {
        msgpack_unpacked_destroy(result);
        return dsla_error(DSLA_ERR_FORMAT, "%s: msgpack-c refused the frame", what);
    }
    return DSLA_OK;
}

bool dsla_wire_key_is(const msgpack_object *key, const char *name) {
    size_t n = strlen(name);
    return key->type == MSGPACK_OBJECT_STR && key->via.str.size == n &&
           memcmp(key->via.str.ptr, name, n) == 0;
}

dsla_status_t dsla_wire_get_u64(const msgpack_object *v, uint64_t *out, const char *what,
                                const char *field) {
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s must be a non-negative integer (type %d)",
                          what, field, (int)v->type);
    *out = v->via.u64;
    return DSLA_OK;
}

dsla_status_t dsla_wire_get_u32(const msgpack_object *v, uint32_t *out, const char *what,
                                const char *field) {
    uint64_t x = 0;
    DSLA_TRY(dsla_wire_get_u64(v, &x, what, field));
    if (x > UINT32_MAX)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s is %llu, above the limit %u", what, field,
                          (unsigned long long)x, (unsigned)UINT32_MAX);
    *out = (uint32_t)x;
    return DSLA_OK;
}

/* A str of at most max bytes without NUL bytes, or the error naming what.field. */
static dsla_status_t check_str(const msgpack_object *v, size_t max, bool allow_nul,
                               const char *what, const char *field) {
    if (v->type != MSGPACK_OBJECT_STR)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s must be a string (type %d)", what, field,
                          (int)v->type);
    size_t n = v->via.str.size;
    if (n > max)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s is %zu bytes, above the limit of %zu",
                          what, field, n, max);
    if (!allow_nul && n && memchr(v->via.str.ptr, '\0', n))
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s contains a NUL byte", what, field);
    return DSLA_OK;
}

static dsla_status_t copy_str(const msgpack_object *v, char *out, size_t max, bool allow_nul,
                              const char *what, const char *field) {
    DSLA_TRY(check_str(v, max, allow_nul, what, field));
    size_t n = v->via.str.size;
    if (n) memcpy(out, v->via.str.ptr, n);
    out[n] = '\0';
    return DSLA_OK;
}

dsla_status_t dsla_wire_get_str(const msgpack_object *v, char *out, size_t max, const char *what,
                                const char *field) {
    return copy_str(v, out, max, false, what, field);
}

dsla_status_t dsla_wire_get_bytes(const msgpack_object *v, char *out, size_t max, size_t *len,
                                  const char *what, const char *field) {
    DSLA_TRY(copy_str(v, out, max, true, what, field));
    *len = v->via.str.size;
    return DSLA_OK;
}

int dsla_wire_pack_key(msgpack_packer *pk, const char *key) {
    return msgpack_pack_str_with_body(pk, key, strlen(key));
}

dsla_status_t dsla_wire_finish(msgpack_sbuffer *sbuf, int pack_rc, dsla_proto_buf_t *out,
                               const char *what) {
    out->data = NULL;
    out->len = 0;
    if (pack_rc != 0 || !sbuf->data) {
        msgpack_sbuffer_destroy(sbuf);
        return dsla_error_oom("%s: encoding", what);
    }
    out->len = sbuf->size;
    out->data = msgpack_sbuffer_release(sbuf);
    return DSLA_OK;
}

void dsla_wire_packer_open(msgpack_sbuffer *sbuf, msgpack_packer *pk) {
    msgpack_sbuffer_init(sbuf);
    msgpack_packer_init(pk, sbuf, msgpack_sbuffer_write);
}

dsla_status_t dsla_wire_body_map(const void *body, size_t len, msgpack_unpacked *u,
                                 const char *what) {
    DSLA_TRY(dsla_wire_unpack(body, len, u, what));
    if (u->data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(u);
        return dsla_error(DSLA_ERR_FORMAT, "%s: body must be a map (type %d)", what,
                          (int)u->data.type);
    }
    return DSLA_OK;
}

dsla_status_t dsla_wire_get_i64(const msgpack_object *v, int64_t lo, int64_t hi, int64_t *out,
                                const char *what, const char *field) {
    int64_t x;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= (uint64_t)INT64_MAX)
        x = (int64_t)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        x = v->via.i64;
    else
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s must be an integer (type %d)", what, field,
                          (int)v->type);
    if (x < lo || x > hi)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s is %lld, outside [%lld, %lld]", what,
                          field, (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return DSLA_OK;
}

dsla_status_t dsla_wire_get_f64(const msgpack_object *v, double *out, const char *what,
                                const char *field) {
    double x;
    if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
        x = v->via.f64;
    else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        x = (double)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        x = (double)v->via.i64;
    else
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s must be a number (type %d)", what, field,
                          (int)v->type);
    if (!isfinite(x))
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s must be finite", what, field);
    *out = x;
    return DSLA_OK;
}

dsla_status_t dsla_wire_get_bool(const msgpack_object *v, bool *out, const char *what,
                                 const char *field) {
    if (v->type != MSGPACK_OBJECT_BOOLEAN)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s must be a boolean (type %d)", what, field,
                          (int)v->type);
    *out = v->via.boolean;
    return DSLA_OK;
}

dsla_status_t dsla_wire_dup_str(const msgpack_object *v, size_t max, char **out, size_t *len_out,
                                const char *what, const char *field) {
    DSLA_TRY(check_str(v, max, false, what, field));
    size_t n = v->via.str.size;
    char *s = malloc(n + 1);
    if (!s) return dsla_error_oom("%s: field %s", what, field);
    if (n) memcpy(s, v->via.str.ptr, n);
    s[n] = '\0';
    *out = s;
    if (len_out) *len_out = n;
    return DSLA_OK;
}

dsla_status_t dsla_wire_get_float(const msgpack_object *v, float *out, const char *what,
                                  const char *field) {
    double x = 0;
    DSLA_TRY(dsla_wire_get_f64(v, &x, what, field));
    *out = (float)x;
    return DSLA_OK;
}

int dsla_wire_pack_u64_field(msgpack_packer *pk, const char *key, uint64_t v) {
    return dsla_wire_pack_key(pk, key) | msgpack_pack_uint64(pk, v);
}

int dsla_wire_pack_str_field(msgpack_packer *pk, const char *key, const char *v) {
    return dsla_wire_pack_key(pk, key) | msgpack_pack_str_with_body(pk, v, strlen(v));
}

int dsla_wire_pack_f64_field(msgpack_packer *pk, const char *key, double v) {
    return dsla_wire_pack_key(pk, key) | msgpack_pack_double(pk, v);
}

dsla_status_t dsla_wire_get_listed(const msgpack_object *key, const msgpack_object *v,
                                   const dsla_wire_u32_field_t *u32s, size_t n_u32,
                                   const dsla_wire_f64_field_t *f64s, size_t n_f64,
                                   const char *what) {
    for (size_t f = 0; f < n_u32; f++)
        if (dsla_wire_key_is(key, u32s[f].key))
            return dsla_wire_get_u32(v, u32s[f].dst, what, u32s[f].key);
    for (size_t f = 0; f < n_f64; f++)
        if (dsla_wire_key_is(key, f64s[f].key))
            return dsla_wire_get_f64(v, f64s[f].dst, what, f64s[f].key);
    return DSLA_OK;
}

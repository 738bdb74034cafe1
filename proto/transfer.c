/* Bodies of the chunked layer transfer: LAYER_FETCH and LAYER_CHUNK (proto.h, docs/protocol.md).
 * Both name a byte range of one layer version file by {layer, version, xxh64, offset}; the
 * decoders read those four with one helper, bound the range by DSLA_PROTO_CHUNK_MAX and
 * DSLA_PROTO_LAYER_FILE_MAX, and never copy a chunk's bytes: LAYER_CHUNK's decode points into the
 * frame. */
#include <stdint.h>
#include <string.h>

#include "proto/proto.h"
#include "proto/wire.h"

/* The fields of both types: the range both start with (layer and xxh64 required), then
 * LAYER_FETCH's max_len or LAYER_CHUNK's total_size and bytes. */
typedef struct {
    int32_t layer;
    uint32_t version;
    uint64_t xxh64;
    uint64_t offset;
    uint32_t max_len;
    uint64_t total;
    const char *bytes;
    size_t n;
    bool have_layer, have_xxh64, have_bytes;
} range_t;

static int pack_range(msgpack_packer *pk, uint32_t n_fields, int32_t layer, uint32_t version,
                      uint64_t xxh64, uint64_t offset) {
    int rc = msgpack_pack_map(pk, n_fields);
    rc |= dsla_wire_pack_key(pk, "layer") | msgpack_pack_int32(pk, layer);
    rc |= dsla_wire_pack_u64_field(pk, "version", version);
    rc |= dsla_wire_pack_u64_field(pk, "xxh64", xxh64);
    rc |= dsla_wire_pack_u64_field(pk, "offset", offset);
    return rc;
}

static dsla_status_t check_layer(int32_t layer, const char *what) {
    if (layer < 0 || layer >= DSLA_PROTO_LAYERS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: layer %d outside [0, %d)", what, layer,
                          DSLA_PROTO_LAYERS_MAX);
    return DSLA_OK;
}

/* Reads k/v into r when k names one of the shared fields; *taken says whether it did. */
static dsla_status_t range_field(const msgpack_object *k, const msgpack_object *v, range_t *r,
                                 bool *taken, const char *what) {
    *taken = true;
    if (dsla_wire_key_is(k, "layer")) {
        int64_t x = 0;
        DSLA_TRY(dsla_wire_get_i64(v, 0, DSLA_PROTO_LAYERS_MAX - 1, &x, what, "layer"));
        r->layer = (int32_t)x;
        r->have_layer = true;
        return DSLA_OK;
    }
    if (dsla_wire_key_is(k, "version")) return dsla_wire_get_u32(v, &r->version, what, "version");
    if (dsla_wire_key_is(k, "xxh64")) {
        r->have_xxh64 = true;
        return dsla_wire_get_u64(v, &r->xxh64, what, "xxh64");
    }
    if (dsla_wire_key_is(k, "offset")) {
        DSLA_TRY(dsla_wire_get_u64(v, &r->offset, what, "offset"));
        if (r->offset > DSLA_PROTO_LAYER_FILE_MAX)
            return dsla_error(DSLA_ERR_FORMAT, "%s: offset %llu is above the limit of %llu", what,
                              (unsigned long long)r->offset,
                              (unsigned long long)DSLA_PROTO_LAYER_FILE_MAX);
        return DSLA_OK;
    }
    *taken = false;
    return DSLA_OK;
}

/* bytes of a LAYER_CHUNK: msgpack-c's unpack leaves bin objects pointing into its input; a
 * pointer outside body would be a copy that dies with the unpacked object, so it is refused. */
static dsla_status_t get_bytes(const msgpack_object *v, const void *body, size_t len, range_t *r,
                               const char *what) {
    const uintptr_t lo = (uintptr_t)body, hi = lo + len;
    const uintptr_t at = v->type == MSGPACK_OBJECT_BIN ? (uintptr_t)v->via.bin.ptr : 0;
    if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size > DSLA_PROTO_CHUNK_MAX ||
        (v->via.bin.size && (at < lo || at + v->via.bin.size > hi)))
        return dsla_error(DSLA_ERR_FORMAT, "%s: field bytes must be bin of at most %u bytes", what,
                          DSLA_PROTO_CHUNK_MAX);
    r->bytes = v->via.bin.ptr;
    r->n = v->via.bin.size;
    r->have_bytes = true;
    return DSLA_OK;
}

/* Reads a LAYER_FETCH (chunk false) or LAYER_CHUNK body into r; keys of the other type are
 * ignored like any unknown key. */
static dsla_status_t range_decode(const void *body, size_t len, bool chunk, range_t *r,
                                  const char *what) {
    *r = (range_t){.max_len = DSLA_PROTO_CHUNK_MAX};
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, what));
    dsla_status_t st = DSLA_OK;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        bool taken = false;
        st = range_field(k, v, r, &taken, what);
        if (st != DSLA_OK || taken) continue;
        if (!chunk && dsla_wire_key_is(k, "max_len"))
            st = dsla_wire_get_u32(v, &r->max_len, what, "max_len");
        else if (chunk && dsla_wire_key_is(k, "total_size"))
            st = dsla_wire_get_u64(v, &r->total, what, "total_size");
        else if (chunk && dsla_wire_key_is(k, "bytes"))
            st = get_bytes(v, body, len, r, what);
    }
    msgpack_unpacked_destroy(&u);
    if (st == DSLA_OK && (!r->have_layer || !r->have_xxh64))
        st = dsla_error(DSLA_ERR_FORMAT, "%s: fields layer and xxh64 are required", what);
    if (st == DSLA_OK && chunk && !r->have_bytes)
        st = dsla_error(DSLA_ERR_FORMAT, "%s: field bytes is required", what);
    return st;
}

/* ---- LAYER_FETCH ---- */

dsla_status_t dsla_proto_layer_fetch_encode(const dsla_proto_layer_fetch_t *f,
                                            dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    DSLA_TRY(check_layer(f->layer, "LAYER_FETCH"));
    if (f->max_len == 0 || f->max_len > DSLA_PROTO_CHUNK_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "LAYER_FETCH: max_len %u outside [1, %u]",
                          f->max_len, DSLA_PROTO_CHUNK_MAX);
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = pack_range(&pk, 5, f->layer, f->version, f->xxh64, f->offset);
    rc |= dsla_wire_pack_u64_field(&pk, "max_len", f->max_len);
    return dsla_wire_finish(&sbuf, rc, out, "LAYER_FETCH");
}

dsla_status_t dsla_proto_layer_fetch_decode(const void *body, size_t len,
                                            dsla_proto_layer_fetch_t *out) {
    static const char what[] = "LAYER_FETCH";
    memset(out, 0, sizeof *out);
    range_t r;
    DSLA_TRY(range_decode(body, len, false, &r, what));
    if (r.max_len == 0 || r.max_len > DSLA_PROTO_CHUNK_MAX)
        return dsla_error(DSLA_ERR_FORMAT, "%s: max_len %u outside [1, %u]", what, r.max_len,
                          DSLA_PROTO_CHUNK_MAX);
    *out = (dsla_proto_layer_fetch_t){r.layer, r.version, r.xxh64, r.offset, r.max_len};
    return DSLA_OK;
}

/* ---- LAYER_CHUNK ---- */

static dsla_status_t check_chunk(uint64_t offset, size_t len, uint64_t total, const char *what,
                                 dsla_status_t code) {
    if (len > DSLA_PROTO_CHUNK_MAX || total > DSLA_PROTO_LAYER_FILE_MAX || offset > total ||
        len > total - offset)
        return dsla_error(code,
                          "%s: %zu bytes at offset %llu of a %llu-byte file (chunks of at most %u "
                          "bytes, files of at most %llu)",
                          what, len, (unsigned long long)offset, (unsigned long long)total,
                          DSLA_PROTO_CHUNK_MAX, (unsigned long long)DSLA_PROTO_LAYER_FILE_MAX);
    return DSLA_OK;
}

dsla_status_t dsla_proto_layer_chunk_encode(const dsla_proto_layer_chunk_t *c,
                                            dsla_proto_buf_t *out) {
    static const char what[] = "LAYER_CHUNK";
    out->data = NULL;
    out->len = 0;
    DSLA_TRY(check_layer(c->layer, what));
    DSLA_TRY(check_chunk(c->offset, c->len, c->total_size, what, DSLA_ERR_INVALID_ARGUMENT));
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = pack_range(&pk, 6, c->layer, c->version, c->xxh64, c->offset);
    rc |= dsla_wire_pack_u64_field(&pk, "total_size", c->total_size);
    rc |= dsla_wire_pack_key(&pk, "bytes") | msgpack_pack_bin(&pk, c->len);
    if (c->len) rc |= msgpack_pack_bin_body(&pk, c->bytes, c->len);
    return dsla_wire_finish(&sbuf, rc, out, what);
}

dsla_status_t dsla_proto_layer_chunk_decode(const void *body, size_t len,
                                            dsla_proto_layer_chunk_t *out) {
    static const char what[] = "LAYER_CHUNK";
    memset(out, 0, sizeof *out);
    range_t r;
    DSLA_TRY(range_decode(body, len, true, &r, what));
    DSLA_TRY(check_chunk(r.offset, r.n, r.total, what, DSLA_ERR_FORMAT));
    *out = (dsla_proto_layer_chunk_t){r.layer, r.version, r.xxh64, r.offset, r.total, r.bytes, r.n};
    return DSLA_OK;
}

/* Bodies of the layer broadcast (proto.h, docs/protocol.md): BCAST_OPEN, BCAST_ID and BCAST_JOIN
 * share dsla_proto_bcast_t, BCAST_ACK and BCAST_NACK dsla_proto_bcast_reply_t. Absent fields decode
 * as zero; every present one is range-checked (a rank below its nranks, a layer within
 * DSLA_PROTO_LAYERS_MAX, a file within DSLA_PROTO_LAYER_FILE_MAX, an id of at most
 * DSLA_PROTO_BCAST_ID_MAX bytes), so that no receiver sizes anything by a peer's claim. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "proto/proto.h"
#include "proto/wire.h"

/* What both sides refuse: the encoder with INVALID_ARGUMENT, the decoder with FORMAT. */
static dsla_status_t check_bcast(const dsla_proto_bcast_t *b, dsla_status_t code) {
    static const char what[] = "BCAST";
    if (b->nranks > DSLA_PROTO_BCAST_RANKS_MAX || (b->nranks && b->rank >= b->nranks))
        return dsla_error(code, "%s: rank %u of nranks %u (nranks at most %u)", what, b->rank,
                          b->nranks, DSLA_PROTO_BCAST_RANKS_MAX);
    if (b->layer < 0 || b->layer >= DSLA_PROTO_LAYERS_MAX)
        return dsla_error(code, "%s: layer %d outside [0, %d)", what, b->layer,
                          DSLA_PROTO_LAYERS_MAX);
    if (b->size > DSLA_PROTO_LAYER_FILE_MAX)
        return dsla_error(code, "%s: size %" PRIu64 " is above the limit of %llu", what, b->size,
                          (unsigned long long)DSLA_PROTO_LAYER_FILE_MAX);
    if (b->id_len > DSLA_PROTO_BCAST_ID_MAX)
        return dsla_error(code, "%s: id of %u bytes is above the limit of %u", what, b->id_len,
                          DSLA_PROTO_BCAST_ID_MAX);
    return DSLA_OK;
}

dsla_status_t dsla_proto_bcast_encode(const dsla_proto_bcast_t *b, dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    DSLA_TRY(check_bcast(b, DSLA_ERR_INVALID_ARGUMENT));
    size_t path_len = strnlen(b->path, sizeof b->path);
    if (path_len > DSLA_PROTO_PATH_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "BCAST: path longer than %d bytes",
                          DSLA_PROTO_PATH_MAX);
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, 9 + (b->id_len > 0) + (path_len > 0));
    rc |= dsla_wire_pack_u64_field(&pk, "session", b->session);
    rc |= dsla_wire_pack_u64_field(&pk, "comm", b->comm);
    rc |= dsla_wire_pack_key(&pk, "fresh") |
          (b->fresh ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk));
    rc |= dsla_wire_pack_u64_field(&pk, "rank", b->rank);
    rc |= dsla_wire_pack_u64_field(&pk, "nranks", b->nranks);
    rc |= dsla_wire_pack_key(&pk, "layer") | msgpack_pack_int32(&pk, b->layer);
    rc |= dsla_wire_pack_u64_field(&pk, "version", b->version);
    rc |= dsla_wire_pack_u64_field(&pk, "size", b->size);
    rc |= dsla_wire_pack_u64_field(&pk, "xxh64", b->xxh64);
    if (b->id_len)
        rc |= dsla_wire_pack_key(&pk, "id") | msgpack_pack_bin(&pk, b->id_len) |
              msgpack_pack_bin_body(&pk, b->id, b->id_len);
    if (path_len) rc |= dsla_wire_pack_str_field(&pk, "path", b->path);
    return dsla_wire_finish(&sbuf, rc, out, "BCAST");
}

static dsla_status_t get_id(const msgpack_object *v, dsla_proto_bcast_t *b, const char *what) {
    if (v->type != MSGPACK_OBJECT_BIN || v->via.bin.size > DSLA_PROTO_BCAST_ID_MAX)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field id must be bin of at most %u bytes", what,
                          DSLA_PROTO_BCAST_ID_MAX);
    b->id_len = v->via.bin.size;
    memcpy(b->id, v->via.bin.ptr, b->id_len);
    return DSLA_OK;
}

/* Reads one field other than session into a body struct. */
typedef dsla_status_t (*field_fn)(const msgpack_object *k, const msgpack_object *v, void *out,
                                  const char *what);

/* Walks a body map of either struct: session (required) into *session, every other key through
 * field (unknown ones ignored there). */
static dsla_status_t walk(const void *body, size_t len, uint64_t *session, field_fn field,
                          void *out, const char *what) {
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, what));
    dsla_status_t st = DSLA_OK;
    bool have_session = false;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (dsla_wire_key_is(k, "session")) {
            have_session = true;
            st = dsla_wire_get_u64(v, session, what, "session");
        } else
            st = field(k, v, out, what);
    }
    msgpack_unpacked_destroy(&u);
    if (st == DSLA_OK && !have_session)
        st = dsla_error(DSLA_ERR_FORMAT, "%s: field session is required", what);
    return st;
}

static dsla_status_t bcast_field(const msgpack_object *k, const msgpack_object *v, void *out,
                                 const char *what) {
    dsla_proto_bcast_t *b = out;
    if (dsla_wire_key_is(k, "comm")) return dsla_wire_get_u64(v, &b->comm, what, "comm");
    if (dsla_wire_key_is(k, "fresh")) return dsla_wire_get_bool(v, &b->fresh, what, "fresh");
    if (dsla_wire_key_is(k, "layer")) {
        int64_t x = 0;
        DSLA_TRY(dsla_wire_get_i64(v, 0, DSLA_PROTO_LAYERS_MAX - 1, &x, what, "layer"));
        b->layer = (int32_t)x;
        return DSLA_OK;
    }
    if (dsla_wire_key_is(k, "size")) return dsla_wire_get_u64(v, &b->size, what, "size");
    if (dsla_wire_key_is(k, "xxh64")) return dsla_wire_get_u64(v, &b->xxh64, what, "xxh64");
    if (dsla_wire_key_is(k, "id")) return get_id(v, b, what);
    if (dsla_wire_key_is(k, "path"))
        return dsla_wire_get_str(v, b->path, DSLA_PROTO_PATH_MAX, what, "path");
    const dsla_wire_u32_field_t u32s[] = {
        {"rank", &b->rank}, {"nranks", &b->nranks}, {"version", &b->version}};
    return dsla_wire_get_listed(k, v, u32s, sizeof u32s / sizeof u32s[0], NULL, 0, what);
}

dsla_status_t dsla_proto_bcast_decode(const void *body, size_t len, dsla_proto_bcast_t *out) {
    memset(out, 0, sizeof *out);
    dsla_status_t st = walk(body, len, &out->session, bcast_field, out, "BCAST");
    if (st == DSLA_OK) st = check_bcast(out, DSLA_ERR_FORMAT);
    if (st != DSLA_OK) memset(out, 0, sizeof *out);
    return st;
}

dsla_status_t dsla_proto_bcast_reply_encode(const dsla_proto_bcast_reply_t *r,
                                            dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    const bool nack = r->code != DSLA_CODE_OK;
    int rc = msgpack_pack_map(&pk, nack ? 4 : 2);
    rc |= dsla_wire_pack_u64_field(&pk, "session", r->session);
    rc |= dsla_wire_pack_u64_field(&pk, "rank", r->rank);
    if (nack) {
        char reason[DSLA_PROTO_MESSAGE_MAX + 1]; /* cut, as ERROR's message is */
        snprintf(reason, sizeof reason, "%s", r->reason);
        rc |= dsla_wire_pack_u64_field(&pk, "code", r->code);
        rc |= dsla_wire_pack_str_field(&pk, "reason", reason);
    }
    return dsla_wire_finish(&sbuf, rc, out, "BCAST_ACK");
}

static dsla_status_t reply_field(const msgpack_object *k, const msgpack_object *v, void *out,
                                 const char *what) {
    dsla_proto_bcast_reply_t *r = out;
    if (dsla_wire_key_is(k, "rank")) {
        DSLA_TRY(dsla_wire_get_u32(v, &r->rank, what, "rank"));
        if (r->rank >= DSLA_PROTO_BCAST_RANKS_MAX)
            return dsla_error(DSLA_ERR_FORMAT, "%s: rank %u is not below %u", what, r->rank,
                              DSLA_PROTO_BCAST_RANKS_MAX);
        return DSLA_OK;
    }
    if (dsla_wire_key_is(k, "code")) return dsla_wire_get_u32(v, &r->code, what, "code");
    if (dsla_wire_key_is(k, "reason"))
        return dsla_wire_get_str(v, r->reason, DSLA_PROTO_MESSAGE_MAX, what, "reason");
    return DSLA_OK;
}

dsla_status_t dsla_proto_bcast_reply_decode(const void *body, size_t len,
                                            dsla_proto_bcast_reply_t *out) {
    memset(out, 0, sizeof *out);
    return walk(body, len, &out->session, reply_field, out, "BCAST_ACK");
}

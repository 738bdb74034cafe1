/* Bodies of the registered types: one encode and one decode function each (proto.h). Decoders
 * ignore keys they do not know, so a later version may add fields without breaking this one. */
#include "proto/proto.h"

#include <string.h>

#include "proto/wire.h"

dsla_status_t dsla_proto_ping_encode(const dsla_proto_ping_t *ping, dsla_proto_buf_t *out) {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, ping->interval_ms ? 3 : 2);
    rc |= dsla_wire_pack_key(&pk, "seq");
    rc |= msgpack_pack_uint64(&pk, ping->seq);
    rc |= dsla_wire_pack_key(&pk, "sent_ns");
    rc |= msgpack_pack_uint64(&pk, ping->sent_ns);
    if (ping->interval_ms) {
        rc |= dsla_wire_pack_key(&pk, "interval_ms");
        rc |= msgpack_pack_uint32(&pk, ping->interval_ms);
    }
    return dsla_wire_finish(&sbuf, rc, out, "PING");
}

dsla_status_t dsla_proto_ping_decode(const void *body, size_t len, dsla_proto_ping_t *out) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "PING"));
    dsla_status_t st = DSLA_OK;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        if (dsla_wire_key_is(&m->ptr[i].key, "seq"))
            st = dsla_wire_get_u64(&m->ptr[i].val, &out->seq, "PING", "seq");
        else if (dsla_wire_key_is(&m->ptr[i].key, "sent_ns"))
            st = dsla_wire_get_u64(&m->ptr[i].val, &out->sent_ns, "PING", "sent_ns");
        else if (dsla_wire_key_is(&m->ptr[i].key, "interval_ms"))
            st = dsla_wire_get_u32(&m->ptr[i].val, &out->interval_ms, "PING", "interval_ms");
    }
    msgpack_unpacked_destroy(&u);
    return st;
}

dsla_status_t dsla_proto_error_encode(const dsla_proto_error_t *err, dsla_proto_buf_t *out) {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    size_t n = strnlen(err->message, DSLA_PROTO_MESSAGE_MAX);
    int rc = msgpack_pack_map(&pk, 2);
    rc |= dsla_wire_pack_key(&pk, "code");
    rc |= msgpack_pack_uint32(&pk, err->code);
    rc |= dsla_wire_pack_key(&pk, "message");
    rc |= msgpack_pack_str_with_body(&pk, err->message, n);
    return dsla_wire_finish(&sbuf, rc, out, "ERROR");
}

dsla_status_t dsla_proto_error_decode(const void *body, size_t len, dsla_proto_error_t *out) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "ERROR"));
    dsla_status_t st = DSLA_OK;
    bool have_code = false;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        if (dsla_wire_key_is(&m->ptr[i].key, "code")) {
            st = dsla_wire_get_u32(&m->ptr[i].val, &out->code, "ERROR", "code");
            have_code = true;
        } else if (dsla_wire_key_is(&m->ptr[i].key, "message")) {
            st = dsla_wire_get_str(&m->ptr[i].val, out->message, DSLA_PROTO_MESSAGE_MAX, "ERROR",
                                   "message");
        }
    }
    msgpack_unpacked_destroy(&u);
    if (st == DSLA_OK && !have_code) st = dsla_error(DSLA_ERR_FORMAT, "ERROR: missing field code");
    return st;
}

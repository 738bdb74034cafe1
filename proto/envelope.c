/* The envelope, the type registry and the wire status codes. */
#include "proto/proto.h"

#include <stdlib.h>
#include <string.h>

#include "proto/wire.h"

/* The envelope's keys, short because every message carries them. */
#define KEY_VERSION "v"
#define KEY_TYPE "t"
#define KEY_ID "id"
#define KEY_SRC "src"
#define KEY_DST "dst"
#define KEY_BODY "body"
#define ENVELOPE_KEYS 6
/* msgpack's encoding of an empty map: the body of a message that has none. */
static const char EMPTY_MAP[1] = {(char)0x80};

const char *dsla_proto_type_name(uint32_t type) {
    switch (type) {
#define DSLA_PROTO_TYPE_NAME_(name, num, summary)                                                  \
    case num:                                                                                      \
        return #name;
        DSLA_PROTO_TYPES(DSLA_PROTO_TYPE_NAME_)
#undef DSLA_PROTO_TYPE_NAME_
    default:
        return NULL;
    }
}

const char *dsla_proto_code_name(uint32_t code) {
    return dsla_status_is_client_code(code) ? dsla_status_name(code) : "UNKNOWN";
}

dsla_proto_code_t dsla_proto_code_from_status(dsla_status_t status) {
    return (dsla_proto_code_t)dsla_status_client_code(status);
}

dsla_status_t dsla_proto_status_from_code(uint32_t code) {
    return dsla_status_is_client_code(code) ? (dsla_status_t)code : DSLA_ERR_INTERNAL;
}

void dsla_proto_buf_free(dsla_proto_buf_t *buf) {
    if (!buf) return;
    free(buf->data);
    buf->data = NULL;
    buf->len = 0;
}

static dsla_status_t check_name(const char *name, const char *field) {
    size_t n = strlen(name);
    if (n > DSLA_PROTO_NAME_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "envelope: %s '%.16s...' is %zu bytes, above "
                          "the limit of %d",
                          field, name, n, DSLA_PROTO_NAME_MAX);
    return DSLA_OK;
}

dsla_status_t dsla_proto_envelope_encode(const dsla_proto_envelope_t *env, dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    DSLA_TRY(check_name(env->src, "src"));
    DSLA_TRY(check_name(env->dst, "dst"));
    if (env->body_len > DSLA_PROTO_BODY_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "envelope: body of %zu bytes exceeds the limit of %u (the frame limit "
                          "of %u less the envelope's own bytes)",
                          env->body_len, DSLA_PROTO_BODY_MAX, DSLA_PROTO_FRAME_MAX);
    const char *body = env->body_len ? env->body : EMPTY_MAP;
    size_t body_len = env->body_len ? env->body_len : sizeof EMPTY_MAP;
    /* The body is spliced in as bytes, so it must be exactly one object or the frame would lie. */
    if (!body || dsla_wire_skip(body, body + body_len, 0) != body + body_len)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "envelope: body of %zu bytes is not one msgpack object", body_len);

    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    int rc = msgpack_pack_map(&pk, ENVELOPE_KEYS);
    rc |= dsla_wire_pack_key(&pk, KEY_VERSION);
    rc |= msgpack_pack_uint32(&pk, env->version ? env->version : DSLA_PROTO_VERSION);
    rc |= dsla_wire_pack_key(&pk, KEY_TYPE);
    rc |= msgpack_pack_uint32(&pk, env->type);
    rc |= dsla_wire_pack_key(&pk, KEY_ID);
    rc |= msgpack_pack_uint64(&pk, env->id);
    rc |= dsla_wire_pack_key(&pk, KEY_SRC);
    rc |= msgpack_pack_str_with_body(&pk, env->src, strlen(env->src));
    rc |= dsla_wire_pack_key(&pk, KEY_DST);
    rc |= msgpack_pack_str_with_body(&pk, env->dst, strlen(env->dst));
    rc |= dsla_wire_pack_key(&pk, KEY_BODY);
    rc |= msgpack_sbuffer_write(&sbuf, body, body_len);
    return dsla_wire_finish(&sbuf, rc, out, "envelope");
}

/* Reads the top-level map by hand so that the body's byte range is known without re-encoding it;
 * the header values are unpacked one at a time from their validated ranges. */
dsla_status_t dsla_proto_envelope_decode(const void *data, size_t len, dsla_proto_envelope_t *out) {
    memset(out, 0, sizeof *out);
    const char *p = data;
    msgpack_unpacked whole;
    DSLA_TRY(dsla_wire_unpack(p, len, &whole, "envelope"));
    const msgpack_object *map = &whole.data;
    dsla_status_t st = DSLA_OK;
    bool have_version = false, have_type = false, have_body = false;
    if (map->type != MSGPACK_OBJECT_MAP) {
        st = dsla_error(DSLA_ERR_FORMAT, "envelope: a map is required (type %d)", (int)map->type);
        goto done;
    }
    /* Walk the same map over the raw bytes to find where each value starts and ends. */
    const char *end = p + len;
    unsigned char b = (unsigned char)p[0];
    const char *cur = p + (b <= 0x8f ? 1 : b == 0xde ? 3 : 5);
    for (uint32_t i = 0; i < map->via.map.size && st == DSLA_OK; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        const msgpack_object *v = &map->via.map.ptr[i].val;
        const char *vstart = dsla_wire_skip(cur, end, 1);
        const char *vend = dsla_wire_skip(vstart, end, 1);
        cur = vend;
        if (dsla_wire_key_is(k, KEY_VERSION)) {
            st = dsla_wire_get_u32(v, &out->version, "envelope", KEY_VERSION);
            have_version = st == DSLA_OK;
        } else if (dsla_wire_key_is(k, KEY_TYPE)) {
            st = dsla_wire_get_u32(v, &out->type, "envelope", KEY_TYPE);
            have_type = st == DSLA_OK;
        } else if (dsla_wire_key_is(k, KEY_ID)) {
            st = dsla_wire_get_u64(v, &out->id, "envelope", KEY_ID);
        } else if (dsla_wire_key_is(k, KEY_SRC)) {
            st = dsla_wire_get_str(v, out->src, DSLA_PROTO_NAME_MAX, "envelope", KEY_SRC);
        } else if (dsla_wire_key_is(k, KEY_DST)) {
            st = dsla_wire_get_str(v, out->dst, DSLA_PROTO_NAME_MAX, "envelope", KEY_DST);
        } else if (dsla_wire_key_is(k, KEY_BODY)) {
            if (v->type != MSGPACK_OBJECT_MAP)
                st = dsla_error(DSLA_ERR_FORMAT, "envelope: body must be a map (type %d)",
                                (int)v->type);
            out->body = vstart;
            out->body_len = (size_t)(vend - vstart);
            have_body = true;
        } /* other keys: fields of a later version, ignored */
    }
    if (st != DSLA_OK) goto done;
    if (!have_version || !have_type || !have_body) {
        st = dsla_error(DSLA_ERR_FORMAT, "envelope: missing field %s",
                        !have_version ? KEY_VERSION
                        : !have_type  ? KEY_TYPE
                                      : KEY_BODY);
    } else if (out->version != DSLA_PROTO_VERSION) {
        st = dsla_error(DSLA_ERR_UNSUPPORTED,
                        "envelope: protocol version %u from '%s'; this build speaks %d",
                        out->version, out->src, DSLA_PROTO_VERSION);
    } else if (!dsla_proto_type_name(out->type)) {
        st = dsla_error(DSLA_ERR_UNSUPPORTED, "envelope: type %u from '%s' is not registered",
                        out->type, out->src);
    }
done:
    msgpack_unpacked_destroy(&whole);
    if (st != DSLA_OK) {
        out->body = NULL;
        out->body_len = 0;
    }
    return st;
}

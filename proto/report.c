/* The REPORT body (proto.h, docs/protocol.md): a gateway's counters and its replicas. Like every
 * decoder here it ignores unknown keys and bounds every length before copying. */
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "proto/wire.h"

static const char *const state_names[] = {"unknown", "alive", "dead"};
enum { N_STATES = sizeof state_names / sizeof state_names[0] };

const char *dsla_proto_replica_state_name(dsla_proto_replica_state_t state) {
    return (unsigned)state < N_STATES ? state_names[state] : "unknown";
}

dsla_status_t dsla_proto_report_encode(const dsla_proto_report_t *r, dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    if (r->n_replicas > DSLA_PROTO_REPLICAS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "REPORT: %u replicas, above the limit of %d",
                          r->n_replicas, DSLA_PROTO_REPLICAS_MAX);
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, 6);
    rc |= dsla_wire_pack_u64_field(&pk, "requests", r->requests);
    rc |= dsla_wire_pack_u64_field(&pk, "tokens", r->tokens);
    rc |= dsla_wire_pack_u64_field(&pk, "errors", r->errors);
    rc |= dsla_wire_pack_u64_field(&pk, "rerouted", r->rerouted);
    rc |= dsla_wire_pack_u64_field(&pk, "in_flight", r->in_flight);
    rc |= dsla_wire_pack_key(&pk, "replicas");
    rc |= msgpack_pack_array(&pk, r->n_replicas);
    for (uint32_t i = 0; i < r->n_replicas; i++) {
        const dsla_proto_replica_report_t *x = &r->replicas[i];
        dsla_proto_buf_t load = {0};
        if (x->has_load && dsla_proto_load_report_encode(&x->load, &load) != DSLA_OK) {
            msgpack_sbuffer_destroy(&sbuf);
            return dsla_error_wrap(DSLA_ERR_INVALID_ARGUMENT, "REPORT: replica %s: ", x->name);
        }
        rc |= msgpack_pack_map(&pk, x->has_load ? 7 : 6);
        if (x->has_load) {
            rc |= dsla_wire_pack_key(&pk, "load") | msgpack_pack_bin(&pk, load.len);
            rc |= msgpack_pack_bin_body(&pk, load.data, load.len);
            dsla_proto_buf_free(&load);
        }
        rc |= dsla_wire_pack_str_field(&pk, "name", x->name);
        rc |= dsla_wire_pack_str_field(&pk, "endpoint", x->endpoint);
        rc |= dsla_wire_pack_str_field(&pk, "state", dsla_proto_replica_state_name(x->state));
        rc |= dsla_wire_pack_u64_field(&pk, "outstanding", x->outstanding);
        rc |= dsla_wire_pack_u64_field(&pk, "routed", x->routed);
        rc |= dsla_wire_pack_u64_field(&pk, "failed", x->failed);
    }
    return dsla_wire_finish(&sbuf, rc, out, "REPORT");
}

static dsla_status_t replica_decode(const msgpack_object *o, dsla_proto_replica_report_t *x) {
    static const char what[] = "REPORT replica";
    if (o->type != MSGPACK_OBJECT_MAP)
        return dsla_error(DSLA_ERR_FORMAT, "REPORT: each replica must be a map (type %d)",
                          (int)o->type);
    dsla_status_t st = DSLA_OK;
    const msgpack_object_map *m = &o->via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (dsla_wire_key_is(k, "name")) {
            st = dsla_wire_get_str(v, x->name, DSLA_PROTO_NAME_MAX, what, "name");
        } else if (dsla_wire_key_is(k, "endpoint")) {
            st = dsla_wire_get_str(v, x->endpoint, DSLA_PROTO_ENDPOINT_MAX, what, "endpoint");
        } else if (dsla_wire_key_is(k, "state")) {
            char name[16];
            st = dsla_wire_get_str(v, name, sizeof name - 1, what, "state");
            x->state = DSLA_PROTO_REPLICA_UNKNOWN; /* a state from a newer peer reads as unknown */
            for (unsigned s = 0; st == DSLA_OK && s < N_STATES; s++)
                if (strcmp(name, state_names[s]) == 0) x->state = (dsla_proto_replica_state_t)s;
        } else if (dsla_wire_key_is(k, "outstanding")) {
            st = dsla_wire_get_u32(v, &x->outstanding, what, "outstanding");
        } else if (dsla_wire_key_is(k, "routed")) {
            st = dsla_wire_get_u64(v, &x->routed, what, "routed");
        } else if (dsla_wire_key_is(k, "failed")) {
            st = dsla_wire_get_u64(v, &x->failed, what, "failed");
        } else if (dsla_wire_key_is(k, "load")) {
            if (v->type != MSGPACK_OBJECT_BIN)
                return dsla_error(DSLA_ERR_FORMAT, "REPORT: a replica's load must be bytes");
            st = dsla_proto_load_report_decode(v->via.bin.ptr, v->via.bin.size, &x->load);
            x->has_load = st == DSLA_OK;
        }
    }
    return st;
}

dsla_status_t dsla_proto_report_decode(const void *body, size_t len, dsla_proto_report_t *out) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "REPORT"));
    dsla_status_t st = DSLA_OK;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (dsla_wire_key_is(k, "requests")) {
            st = dsla_wire_get_u64(v, &out->requests, "REPORT", "requests");
        } else if (dsla_wire_key_is(k, "tokens")) {
            st = dsla_wire_get_u64(v, &out->tokens, "REPORT", "tokens");
        } else if (dsla_wire_key_is(k, "errors")) {
            st = dsla_wire_get_u64(v, &out->errors, "REPORT", "errors");
        } else if (dsla_wire_key_is(k, "rerouted")) {
            st = dsla_wire_get_u64(v, &out->rerouted, "REPORT", "rerouted");
        } else if (dsla_wire_key_is(k, "in_flight")) {
            st = dsla_wire_get_u32(v, &out->in_flight, "REPORT", "in_flight");
        } else if (dsla_wire_key_is(k, "replicas")) {
            if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size > DSLA_PROTO_REPLICAS_MAX) {
                st = dsla_error(DSLA_ERR_FORMAT,
                                "REPORT: field replicas must be an array of at most %d",
                                DSLA_PROTO_REPLICAS_MAX);
                break;
            }
            out->n_replicas = v->via.array.size;
            for (uint32_t j = 0; j < out->n_replicas && st == DSLA_OK; j++)
                st = replica_decode(&v->via.array.ptr[j], &out->replicas[j]);
        }
    }
    msgpack_unpacked_destroy(&u);
    return st;
}

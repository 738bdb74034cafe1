/* Bodies of online distillation: LAYER_READY and DISTILL_PROGRESS (proto.h, docs/protocol.md).
 * Like every decoder here they ignore unknown keys and bound every count and length by the limits
 * in proto.h. Non-finite eval numbers travel as absent fields and decode as NaN. */
#include <math.h>
#include <string.h>

#include "proto/proto.h"
#include "proto/wire.h"

/* ---- LAYER_READY ---- */

enum { LAYER_READY_FIXED_FIELDS = 9 }; /* layer .. steps; the eval numbers come when finite */

dsla_status_t dsla_proto_layer_ready_encode(const dsla_proto_layer_ready_t *r,
                                            dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    if (r->n_order > DSLA_PROTO_LAYERS_MAX || r->position >= r->n_order)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "LAYER_READY: position %u in an order of %u layers (at most %d)",
                          r->position, r->n_order, DSLA_PROTO_LAYERS_MAX);
    if (r->layer < 0 || r->layer >= DSLA_PROTO_LAYERS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "LAYER_READY: layer %d outside [0, %d)",
                          r->layer, DSLA_PROTO_LAYERS_MAX);
    const struct {
        const char *key;
        double v;
    } evals[] = {{"init_eval_mse", r->init_eval_mse},
                 {"eval_mse", r->eval_mse},
                 {"train_loss", r->train_loss},
                 {"eval_ppl", r->eval_ppl}};
    uint32_t n_fields = LAYER_READY_FIXED_FIELDS;
    for (size_t i = 0; i < sizeof evals / sizeof evals[0]; i++)
        n_fields += isfinite(evals[i].v) ? 1 : 0;
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, n_fields);
    rc |= dsla_wire_pack_key(&pk, "layer") | msgpack_pack_int32(&pk, r->layer);
    rc |= dsla_wire_pack_u64_field(&pk, "version", r->version);
    rc |= dsla_wire_pack_u64_field(&pk, "position", r->position);
    rc |= dsla_wire_pack_key(&pk, "order") | msgpack_pack_array(&pk, r->n_order);
    for (uint32_t i = 0; i < r->n_order; i++)
        rc |= msgpack_pack_int32(&pk, r->order[i]);
    rc |= dsla_wire_pack_key(&pk, "path") |
          msgpack_pack_str_with_body(&pk, r->path, strnlen(r->path, DSLA_PROTO_PATH_MAX));
    rc |= dsla_wire_pack_u64_field(&pk, "size", r->size);
    rc |= dsla_wire_pack_u64_field(&pk, "xxh64", r->xxh64);
    rc |= dsla_wire_pack_u64_field(&pk, "checksum", r->checksum);
    rc |= dsla_wire_pack_u64_field(&pk, "steps", r->steps);
    for (size_t i = 0; i < sizeof evals / sizeof evals[0]; i++)
        if (isfinite(evals[i].v)) rc |= dsla_wire_pack_f64_field(&pk, evals[i].key, evals[i].v);
    return dsla_wire_finish(&sbuf, rc, out, "LAYER_READY");
}

static dsla_status_t order_decode(const msgpack_object *v, dsla_proto_layer_ready_t *out,
                                  const char *what) {
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size > DSLA_PROTO_LAYERS_MAX)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field order must be an array of at most %d", what,
                          DSLA_PROTO_LAYERS_MAX);
    out->n_order = v->via.array.size;
    for (uint32_t i = 0; i < out->n_order; i++) {
        int64_t x = 0;
        DSLA_TRY(dsla_wire_get_i64(&v->via.array.ptr[i], 0, DSLA_PROTO_LAYERS_MAX - 1, &x, what,
                                   "order"));
        out->order[i] = (int32_t)x;
    }
    return DSLA_OK;
}

dsla_status_t dsla_proto_layer_ready_decode(const void *body, size_t len,
                                            dsla_proto_layer_ready_t *out) {
    static const char what[] = "LAYER_READY";
    memset(out, 0, sizeof *out);
    out->layer = -1;
    out->init_eval_mse = out->eval_mse = out->train_loss = out->eval_ppl = NAN;
    const dsla_wire_f64_field_t f64s[] = {{"init_eval_mse", &out->init_eval_mse},
                                          {"eval_mse", &out->eval_mse},
                                          {"train_loss", &out->train_loss},
                                          {"eval_ppl", &out->eval_ppl}};
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, what));
    dsla_status_t st = DSLA_OK;
    bool have_sum = false, have_xxh = false;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        int64_t x = 0;
        st = dsla_wire_get_listed(k, v, NULL, 0, f64s, sizeof f64s / sizeof f64s[0], what);
        if (st != DSLA_OK) break;
        if (dsla_wire_key_is(k, "layer")) {
            st = dsla_wire_get_i64(v, 0, DSLA_PROTO_LAYERS_MAX - 1, &x, what, "layer");
            out->layer = (int32_t)x;
        } else if (dsla_wire_key_is(k, "version")) {
            st = dsla_wire_get_u32(v, &out->version, what, "version");
        } else if (dsla_wire_key_is(k, "position")) {
            st = dsla_wire_get_u32(v, &out->position, what, "position");
        } else if (dsla_wire_key_is(k, "order")) {
            st = order_decode(v, out, what);
        } else if (dsla_wire_key_is(k, "path")) {
            st = dsla_wire_get_str(v, out->path, DSLA_PROTO_PATH_MAX, what, "path");
        } else if (dsla_wire_key_is(k, "size")) {
            st = dsla_wire_get_u64(v, &out->size, what, "size");
        } else if (dsla_wire_key_is(k, "xxh64")) {
            have_xxh = true;
            st = dsla_wire_get_u64(v, &out->xxh64, what, "xxh64");
        } else if (dsla_wire_key_is(k, "checksum")) {
            have_sum = true;
            st = dsla_wire_get_u64(v, &out->checksum, what, "checksum");
        } else if (dsla_wire_key_is(k, "steps")) {
            st = dsla_wire_get_u32(v, &out->steps, what, "steps");
        }
    }
    msgpack_unpacked_destroy(&u);
    if (st == DSLA_OK && (out->layer < 0 || !out->path[0] || !have_sum || !have_xxh))
        st = dsla_error(DSLA_ERR_FORMAT, "%s: fields layer, path, xxh64 and checksum are required",
                        what);
    if (st == DSLA_OK && out->n_order && out->position >= out->n_order)
        st = dsla_error(DSLA_ERR_FORMAT, "%s: position %u is outside an order of %u layers", what,
                        out->position, out->n_order);
    return st;
}

/* ---- DISTILL_PROGRESS ---- */

static const char *const state_names[] = {"loading", "training", "done", "failed", "stopped"};
enum { N_STATES = sizeof state_names / sizeof state_names[0] };

const char *dsla_proto_distill_state_name(dsla_proto_distill_state_t state) {
    return (unsigned)state < N_STATES ? state_names[state] : "unknown";
}

dsla_status_t dsla_proto_distill_progress_encode(const dsla_proto_distill_progress_t *p,
                                                 dsla_proto_buf_t *out) {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    out->data = NULL;
    out->len = 0;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, 15);
    rc |= dsla_wire_pack_str_field(&pk, "state", dsla_proto_distill_state_name(p->state));
    rc |= dsla_wire_pack_u64_field(&pk, "layers_done", p->layers_done);
    rc |= dsla_wire_pack_u64_field(&pk, "layers_total", p->layers_total);
    rc |= dsla_wire_pack_key(&pk, "layer") | msgpack_pack_int32(&pk, p->layer);
    rc |= dsla_wire_pack_u64_field(&pk, "step", p->step);
    rc |= dsla_wire_pack_u64_field(&pk, "steps", p->steps);
    rc |= dsla_wire_pack_f64_field(&pk, "loss", isfinite(p->loss) ? p->loss : 0.0);
    rc |= dsla_wire_pack_f64_field(&pk, "tokens_per_s", p->tokens_per_s);
    rc |= dsla_wire_pack_f64_field(&pk, "seconds_left", p->seconds_left);
    rc |= dsla_wire_pack_key(&pk, "message") |
          msgpack_pack_str_with_body(&pk, p->message, strnlen(p->message, DSLA_PROTO_MESSAGE_MAX));
    rc |= dsla_wire_pack_u64_field(&pk, "samples_received", p->samples_received);
    rc |= dsla_wire_pack_u64_field(&pk, "samples_held", p->samples_held);
    rc |= dsla_wire_pack_u64_field(&pk, "sample_tokens_held", p->sample_tokens_held);
    rc |= dsla_wire_pack_u64_field(&pk, "samples_used", p->samples_used);
    rc |= dsla_wire_pack_u64_field(&pk, "sample_tokens_used", p->sample_tokens_used);
    return dsla_wire_finish(&sbuf, rc, out, "DISTILL_PROGRESS");
}

dsla_status_t dsla_proto_distill_progress_decode(const void *body, size_t len,
                                                 dsla_proto_distill_progress_t *out) {
    static const char what[] = "DISTILL_PROGRESS";
    memset(out, 0, sizeof *out);
    out->layer = -1;
    const dsla_wire_u32_field_t u32s[] = {{"layers_done", &out->layers_done},
                                          {"layers_total", &out->layers_total},
                                          {"step", &out->step},
                                          {"steps", &out->steps},
                                          {"samples_received", &out->samples_received},
                                          {"samples_held", &out->samples_held},
                                          {"sample_tokens_held", &out->sample_tokens_held},
                                          {"samples_used", &out->samples_used},
                                          {"sample_tokens_used", &out->sample_tokens_used}};
    const dsla_wire_f64_field_t f64s[] = {{"loss", &out->loss},
                                          {"tokens_per_s", &out->tokens_per_s},
                                          {"seconds_left", &out->seconds_left}};
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, what));
    dsla_status_t st = DSLA_OK;
    bool have_state = false;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        st = dsla_wire_get_listed(k, v, u32s, sizeof u32s / sizeof u32s[0], f64s,
                                  sizeof f64s / sizeof f64s[0], what);
        if (st != DSLA_OK) break;
        if (dsla_wire_key_is(k, "layer")) {
            int64_t x = 0;
            st = dsla_wire_get_i64(v, -1, DSLA_PROTO_LAYERS_MAX - 1, &x, what, "layer");
            out->layer = (int32_t)x;
        } else if (dsla_wire_key_is(k, "message")) {
            st = dsla_wire_get_str(v, out->message, DSLA_PROTO_MESSAGE_MAX, what, "message");
        } else if (dsla_wire_key_is(k, "state")) {
            char name[16];
            st = dsla_wire_get_str(v, name, sizeof name - 1, what, "state");
            have_state = st == DSLA_OK;
            out->state = DSLA_PROTO_DISTILL_FAILED; /* a state from a newer peer: not running */
            for (unsigned s = 0; st == DSLA_OK && s < N_STATES; s++)
                if (strcmp(name, state_names[s]) == 0) out->state = (dsla_proto_distill_state_t)s;
        }
    }
    msgpack_unpacked_destroy(&u);
    if (st == DSLA_OK && !have_state)
        st = dsla_error(DSLA_ERR_FORMAT, "%s: field state is required", what);
    return st;
}

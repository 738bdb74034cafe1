/* Bodies of the conversion control loop: LOAD_REPORT, SET_PLAN, PLAN_ACK/PLAN_NACK, ADMIN and
 * ADMIN_REPLY (proto.h, docs/protocol.md). Like every decoder here they ignore unknown keys, bound
 * every count and length by the limits in proto.h and allocate only what the frame's bytes hold. */
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "proto/wire.h"

/* The "dsla" array of LOAD_REPORT and the plan replies: [{layer, checksum}, ...]. */
static int pack_dsla(msgpack_packer *pk, const dsla_proto_dsla_layer_t *dsla, uint32_t n) {
    int rc = dsla_wire_pack_key(pk, "dsla") | msgpack_pack_array(pk, n);
    for (uint32_t i = 0; i < n; i++) {
        rc |= msgpack_pack_map(pk, 2);
        rc |= dsla_wire_pack_key(pk, "layer") | msgpack_pack_int32(pk, dsla[i].layer);
        rc |= dsla_wire_pack_u64_field(pk, "checksum", dsla[i].checksum);
    }
    return rc;
}

static dsla_status_t get_layer(const msgpack_object *v, int32_t *out, const char *what) {
    int64_t x = 0;
    DSLA_TRY(dsla_wire_get_i64(v, 0, DSLA_PROTO_LAYERS_MAX - 1, &x, what, "layer"));
    *out = (int32_t)x;
    return DSLA_OK;
}

/* An array of at most DSLA_PROTO_LAYERS_MAX maps; its size in *n. */
static dsla_status_t check_layer_array(const msgpack_object *v, uint32_t *n, const char *what,
                                       const char *field) {
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size > DSLA_PROTO_LAYERS_MAX)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field %s must be an array of at most %d", what,
                          field, DSLA_PROTO_LAYERS_MAX);
    for (uint32_t i = 0; i < v->via.array.size; i++)
        if (v->via.array.ptr[i].type != MSGPACK_OBJECT_MAP)
            return dsla_error(DSLA_ERR_FORMAT, "%s: each entry of %s must be a map (type %d)", what,
                              field, (int)v->via.array.ptr[i].type);
    *n = v->via.array.size;
    return DSLA_OK;
}

static dsla_status_t dsla_decode(const msgpack_object *v, dsla_proto_dsla_layer_t *dsla,
                                 uint32_t *n, const char *what) {
    DSLA_TRY(check_layer_array(v, n, what, "dsla"));
    dsla_status_t st = DSLA_OK;
    for (uint32_t i = 0; i < *n && st == DSLA_OK; i++) {
        const msgpack_object_map *m = &v->via.array.ptr[i].via.map;
        for (uint32_t j = 0; j < m->size && st == DSLA_OK; j++) {
            const msgpack_object *k = &m->ptr[j].key, *x = &m->ptr[j].val;
            if (dsla_wire_key_is(k, "layer"))
                st = get_layer(x, &dsla[i].layer, what);
            else if (dsla_wire_key_is(k, "checksum"))
                st = dsla_wire_get_u64(x, &dsla[i].checksum, what, "checksum");
        }
    }
    return st;
}

/* Starts the body of a type with a "dsla" array: out emptied, the count checked. */
static dsla_status_t encode_begin(dsla_proto_buf_t *out, uint32_t n_dsla, const char *what,
                                  msgpack_sbuffer *sbuf, msgpack_packer *pk) {
    out->data = NULL;
    out->len = 0;
    if (n_dsla > DSLA_PROTO_LAYERS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %u DSLA layers, above the limit of %d",
                          what, n_dsla, DSLA_PROTO_LAYERS_MAX);
    dsla_wire_packer_open(sbuf, pk);
    return DSLA_OK;
}

/* ---- LOAD_REPORT ---- */

static const char *const hist_names[DSLA_PROTO_HISTS] = {"ttft", "tpot", "e2e", "queue"};

const char *dsla_proto_hist_name(dsla_proto_hist_kind_t kind) {
    return (unsigned)kind < DSLA_PROTO_HISTS ? hist_names[kind] : "unknown";
}

/* The counters under "totals", in one table for both directions. */
typedef struct {
    const char *key;
    size_t offset;
} total_field_t;
static const total_field_t totals[] = {
    {"requests_finished", offsetof(dsla_proto_load_report_t, requests_finished)},
    {"prompt_tokens", offsetof(dsla_proto_load_report_t, prompt_tokens)},
    {"generated_tokens", offsetof(dsla_proto_load_report_t, generated_tokens)},
    {"preemptions", offsetof(dsla_proto_load_report_t, preemptions)},
};
enum { N_TOTALS = sizeof totals / sizeof totals[0] };

static uint64_t *total_of(dsla_proto_load_report_t *r, int i) {
    return (uint64_t *)((char *)r + totals[i].offset);
}

static uint64_t total_get(const dsla_proto_load_report_t *r, int i) {
    return *(const uint64_t *)((const char *)r + totals[i].offset);
}

static int pack_totals(msgpack_packer *pk, const dsla_proto_load_report_t *r) {
    int rc = dsla_wire_pack_key(pk, "totals") | msgpack_pack_map(pk, N_TOTALS);
    for (int i = 0; i < N_TOTALS; i++)
        rc |= dsla_wire_pack_u64_field(pk, totals[i].key, total_get(r, i));
    rc |= dsla_wire_pack_key(pk, "hist") | msgpack_pack_map(pk, DSLA_PROTO_HISTS);
    for (int k = 0; k < DSLA_PROTO_HISTS; k++) {
        const dsla_proto_histogram_t *h = &r->hist[k];
        rc |= dsla_wire_pack_key(pk, hist_names[k]) | msgpack_pack_map(pk, 2);
        rc |= dsla_wire_pack_key(pk, "counts") |
              msgpack_pack_array(pk, DSLA_PROTO_HISTOGRAM_BUCKETS + 1);
        for (int i = 0; i <= DSLA_PROTO_HISTOGRAM_BUCKETS; i++)
            rc |= msgpack_pack_uint64(pk, h->counts[i]);
        rc |= dsla_wire_pack_f64_field(pk, "sum", h->sum);
    }
    return rc;
}

static dsla_status_t totals_decode(const msgpack_object *v, dsla_proto_load_report_t *out,
                                   const char *what) {
    if (v->type != MSGPACK_OBJECT_MAP)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field totals must be a map", what);
    out->has_totals = true;
    dsla_status_t st = DSLA_OK;
    for (uint32_t i = 0; i < v->via.map.size && st == DSLA_OK; i++)
        for (int t = 0; t < N_TOTALS && st == DSLA_OK; t++)
            if (dsla_wire_key_is(&v->via.map.ptr[i].key, totals[t].key))
                st = dsla_wire_get_u64(&v->via.map.ptr[i].val, total_of(out, t), what,
                                       totals[t].key);
    return st;
}

static dsla_status_t histogram_decode(const msgpack_object *v, dsla_proto_histogram_t *h,
                                      const char *what, const char *name) {
    if (v->type != MSGPACK_OBJECT_MAP)
        return dsla_error(DSLA_ERR_FORMAT, "%s: histogram %s must be a map", what, name);
    dsla_status_t st = DSLA_OK;
    for (uint32_t i = 0; i < v->via.map.size && st == DSLA_OK; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key, *x = &v->via.map.ptr[i].val;
        if (dsla_wire_key_is(k, "sum")) {
            st = dsla_wire_get_f64(x, &h->sum, what, "sum");
        } else if (dsla_wire_key_is(k, "counts")) {
            if (x->type != MSGPACK_OBJECT_ARRAY ||
                x->via.array.size != DSLA_PROTO_HISTOGRAM_BUCKETS + 1)
                return dsla_error(DSLA_ERR_FORMAT,
                                  "%s: histogram %s's counts must be an array of %d integers", what,
                                  name, DSLA_PROTO_HISTOGRAM_BUCKETS + 1);
            h->count = 0;
            for (int b = 0; b <= DSLA_PROTO_HISTOGRAM_BUCKETS && st == DSLA_OK; b++) {
                st = dsla_wire_get_u64(&x->via.array.ptr[b], &h->counts[b], what, "counts");
                h->count += h->counts[b];
            }
        }
    }
    return st;
}

static dsla_status_t hists_decode(const msgpack_object *v, dsla_proto_load_report_t *out,
                                  const char *what) {
    if (v->type != MSGPACK_OBJECT_MAP)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field hist must be a map", what);
    dsla_status_t st = DSLA_OK;
    for (uint32_t i = 0; i < v->via.map.size && st == DSLA_OK; i++)
        for (int k = 0; k < DSLA_PROTO_HISTS && st == DSLA_OK; k++)
            if (dsla_wire_key_is(&v->via.map.ptr[i].key, hist_names[k]))
                st = histogram_decode(&v->via.map.ptr[i].val, &out->hist[k], what, hist_names[k]);
    return st;
}

dsla_status_t dsla_proto_load_report_encode(const dsla_proto_load_report_t *r,
                                            dsla_proto_buf_t *out) {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    DSLA_TRY(encode_begin(out, r->n_dsla, "LOAD_REPORT", &sbuf, &pk));
    int rc = msgpack_pack_map(&pk, r->has_totals ? 16 : 14);
    rc |= dsla_wire_pack_u64_field(&pk, "num_layers", r->num_layers);
    rc |= dsla_wire_pack_u64_field(&pk, "queue_length", r->queue_length);
    rc |= dsla_wire_pack_u64_field(&pk, "running", r->running);
    rc |= dsla_wire_pack_u64_field(&pk, "waiting_tokens", r->waiting_tokens);
    rc |= dsla_wire_pack_u64_field(&pk, "oldest_wait_ms", r->oldest_wait_ms);
    rc |= dsla_wire_pack_u64_field(&pk, "kv_used", r->kv_used);
    rc |= dsla_wire_pack_u64_field(&pk, "kv_total", r->kv_total);
    rc |= dsla_wire_pack_u64_field(&pk, "slots_used", r->slots_used);
    rc |= dsla_wire_pack_u64_field(&pk, "slots_total", r->slots_total);
    rc |= dsla_wire_pack_f64_field(&pk, "ttft_p90_ms", r->ttft_p90_ms);
    rc |= dsla_wire_pack_f64_field(&pk, "tpot_p90_ms", r->tpot_p90_ms);
    rc |= dsla_wire_pack_f64_field(&pk, "tokens_per_s", r->tokens_per_s);
    rc |= dsla_wire_pack_u64_field(&pk, "plan_id", r->plan_id);
    rc |= pack_dsla(&pk, r->dsla, r->n_dsla);
    if (r->has_totals) rc |= pack_totals(&pk, r);
    return dsla_wire_finish(&sbuf, rc, out, "LOAD_REPORT");
}

dsla_status_t dsla_proto_load_report_decode(const void *body, size_t len,
                                            dsla_proto_load_report_t *out) {
    static const char what[] = "LOAD_REPORT";
    memset(out, 0, sizeof *out);
    const dsla_wire_u32_field_t u32s[] = {
        {"num_layers", &out->num_layers}, {"queue_length", &out->queue_length},
        {"running", &out->running},       {"oldest_wait_ms", &out->oldest_wait_ms},
        {"kv_used", &out->kv_used},       {"kv_total", &out->kv_total},
        {"slots_used", &out->slots_used}, {"slots_total", &out->slots_total}};
    const dsla_wire_f64_field_t f64s[] = {{"ttft_p90_ms", &out->ttft_p90_ms},
                                          {"tpot_p90_ms", &out->tpot_p90_ms},
                                          {"tokens_per_s", &out->tokens_per_s}};
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, what));
    dsla_status_t st = DSLA_OK;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        st = dsla_wire_get_listed(k, v, u32s, sizeof u32s / sizeof u32s[0], f64s,
                                  sizeof f64s / sizeof f64s[0], what);
        if (st != DSLA_OK) break;
        if (dsla_wire_key_is(k, "waiting_tokens"))
            st = dsla_wire_get_u64(v, &out->waiting_tokens, what, "waiting_tokens");
        else if (dsla_wire_key_is(k, "plan_id"))
            st = dsla_wire_get_u64(v, &out->plan_id, what, "plan_id");
        else if (dsla_wire_key_is(k, "dsla"))
            st = dsla_decode(v, out->dsla, &out->n_dsla, what);
        else if (dsla_wire_key_is(k, "totals"))
            st = totals_decode(v, out, what);
        else if (dsla_wire_key_is(k, "hist"))
            st = hists_decode(v, out, what);
    }
    msgpack_unpacked_destroy(&u);
    return st;
}

/* ---- SET_PLAN ---- */

dsla_status_t dsla_proto_set_plan_encode(const dsla_proto_set_plan_t *p, dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    if (p->n_layers > DSLA_PROTO_LAYERS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "SET_PLAN: %u DSLA layers, above the limit of %d", p->n_layers,
                          DSLA_PROTO_LAYERS_MAX);
    for (uint32_t i = 0; i < p->n_layers; i++)
        if (strlen(p->layers[i].path) > DSLA_PROTO_PATH_MAX)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "SET_PLAN: layer %d's path is %zu bytes, above the limit of %d",
                              p->layers[i].layer, strlen(p->layers[i].path), DSLA_PROTO_PATH_MAX);
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, 2);
    rc |= dsla_wire_pack_u64_field(&pk, "seq", p->seq);
    rc |= dsla_wire_pack_key(&pk, "layers") | msgpack_pack_array(&pk, p->n_layers);
    for (uint32_t i = 0; i < p->n_layers; i++) {
        const dsla_proto_plan_layer_t *l = &p->layers[i];
        rc |= msgpack_pack_map(&pk, 6);
        rc |= dsla_wire_pack_key(&pk, "layer") | msgpack_pack_int32(&pk, l->layer);
        rc |= dsla_wire_pack_u64_field(&pk, "checksum", l->checksum);
        rc |= dsla_wire_pack_str_field(&pk, "path", l->path);
        rc |= dsla_wire_pack_u64_field(&pk, "version", l->version);
        rc |= dsla_wire_pack_u64_field(&pk, "size", l->size);
        rc |= dsla_wire_pack_u64_field(&pk, "xxh64", l->xxh64);
    }
    return dsla_wire_finish(&sbuf, rc, out, "SET_PLAN");
}

void dsla_proto_set_plan_free(dsla_proto_set_plan_t *p) {
    if (!p) return;
    for (uint32_t i = 0; p->layers && i < p->n_layers; i++)
        free((char *)p->layers[i].path);
    free(p->layers);
    memset(p, 0, sizeof *p);
}

static dsla_status_t plan_layers_decode(const msgpack_object *v, dsla_proto_set_plan_t *out) {
    static const char what[] = "SET_PLAN";
    uint32_t n = 0;
    DSLA_TRY(check_layer_array(v, &n, what, "layers"));
    if (n == 0) return DSLA_OK;
    out->layers = calloc(n, sizeof *out->layers);
    if (!out->layers) return dsla_error_oom("SET_PLAN");
    out->n_layers = n;
    dsla_status_t st = DSLA_OK;
    for (uint32_t i = 0; i < n && st == DSLA_OK; i++) {
        dsla_proto_plan_layer_t *l = &out->layers[i];
        l->layer = -1;
        const msgpack_object_map *m = &v->via.array.ptr[i].via.map;
        for (uint32_t j = 0; j < m->size && st == DSLA_OK; j++) {
            const msgpack_object *k = &m->ptr[j].key, *x = &m->ptr[j].val;
            if (dsla_wire_key_is(k, "layer")) {
                st = get_layer(x, &l->layer, what);
            } else if (dsla_wire_key_is(k, "checksum")) {
                st = dsla_wire_get_u64(x, &l->checksum, what, "checksum");
            } else if (dsla_wire_key_is(k, "version")) {
                st = dsla_wire_get_u32(x, &l->version, what, "version");
            } else if (dsla_wire_key_is(k, "size")) {
                st = dsla_wire_get_u64(x, &l->size, what, "size");
                if (st == DSLA_OK && l->size > DSLA_PROTO_LAYER_FILE_MAX)
                    st = dsla_error(DSLA_ERR_FORMAT,
                                    "SET_PLAN: size %" PRIu64 " is above the limit of %llu",
                                    l->size, (unsigned long long)DSLA_PROTO_LAYER_FILE_MAX);
            } else if (dsla_wire_key_is(k, "xxh64")) {
                st = dsla_wire_get_u64(x, &l->xxh64, what, "xxh64");
            } else if (dsla_wire_key_is(k, "path")) {
                free((char *)l->path);
                l->path = NULL;
                char *path = NULL;
                st = dsla_wire_dup_str(x, DSLA_PROTO_PATH_MAX, &path, NULL, what, "path");
                l->path = path;
            }
        }
        if (st == DSLA_OK && (l->layer < 0 || !l->path))
            st = dsla_error(DSLA_ERR_FORMAT, "SET_PLAN: layers entry %u lacks layer or path", i);
    }
    return st;
}

dsla_status_t dsla_proto_set_plan_decode(const void *body, size_t len, dsla_proto_set_plan_t *out) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "SET_PLAN"));
    dsla_status_t st = DSLA_OK;
    bool have_layers = false;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (dsla_wire_key_is(k, "seq")) {
            st = dsla_wire_get_u64(v, &out->seq, "SET_PLAN", "seq");
        } else if (dsla_wire_key_is(k, "layers") && !have_layers) {
            have_layers = true;
            st = plan_layers_decode(v, out);
        }
    }
    if (st == DSLA_OK && !have_layers)
        st = dsla_error(DSLA_ERR_FORMAT, "SET_PLAN: field layers is required");
    msgpack_unpacked_destroy(&u);
    if (st != DSLA_OK) dsla_proto_set_plan_free(out);
    return st;
}

/* ---- PLAN_ACK / PLAN_NACK ---- */

dsla_status_t dsla_proto_plan_reply_encode(const dsla_proto_plan_reply_t *r,
                                           dsla_proto_buf_t *out) {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    DSLA_TRY(encode_begin(out, r->n_dsla, "PLAN reply", &sbuf, &pk));
    int rc = msgpack_pack_map(&pk, 5);
    rc |= dsla_wire_pack_u64_field(&pk, "seq", r->seq);
    rc |= dsla_wire_pack_u64_field(&pk, "plan_id", r->plan_id);
    rc |= dsla_wire_pack_u64_field(&pk, "code", r->code);
    rc |= dsla_wire_pack_key(&pk, "reason") |
          msgpack_pack_str_with_body(&pk, r->reason, strnlen(r->reason, DSLA_PROTO_MESSAGE_MAX));
    rc |= pack_dsla(&pk, r->dsla, r->n_dsla);
    return dsla_wire_finish(&sbuf, rc, out, "PLAN reply");
}

dsla_status_t dsla_proto_plan_reply_decode(const void *body, size_t len,
                                           dsla_proto_plan_reply_t *out) {
    static const char what[] = "PLAN reply";
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, what));
    dsla_status_t st = DSLA_OK;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (dsla_wire_key_is(k, "seq"))
            st = dsla_wire_get_u64(v, &out->seq, what, "seq");
        else if (dsla_wire_key_is(k, "plan_id"))
            st = dsla_wire_get_u64(v, &out->plan_id, what, "plan_id");
        else if (dsla_wire_key_is(k, "code"))
            st = dsla_wire_get_u32(v, &out->code, what, "code");
        else if (dsla_wire_key_is(k, "reason"))
            st = dsla_wire_get_str(v, out->reason, DSLA_PROTO_MESSAGE_MAX, what, "reason");
        else if (dsla_wire_key_is(k, "dsla"))
            st = dsla_decode(v, out->dsla, &out->n_dsla, what);
    }
    msgpack_unpacked_destroy(&u);
    return st;
}

/* ---- ADMIN / ADMIN_REPLY ---- */

dsla_status_t dsla_proto_admin_encode(const dsla_proto_admin_t *a, dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    if (a->n_args == 0 || a->n_args > DSLA_PROTO_ADMIN_ARGS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "ADMIN: %u words; give 1 to %d", a->n_args,
                          DSLA_PROTO_ADMIN_ARGS_MAX);
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    size_t key_len = strnlen(a->key, DSLA_PROTO_ADMIN_KEY_MAX);
    int rc = msgpack_pack_map(&pk, key_len ? 2 : 1);
    rc |= dsla_wire_pack_key(&pk, "args") | msgpack_pack_array(&pk, a->n_args);
    for (uint32_t i = 0; i < a->n_args; i++)
        rc |= msgpack_pack_str_with_body(&pk, a->args[i],
                                         strnlen(a->args[i], DSLA_PROTO_ADMIN_ARG_LEN_MAX));
    if (key_len)
        rc |= dsla_wire_pack_key(&pk, "key") | msgpack_pack_str_with_body(&pk, a->key, key_len);
    return dsla_wire_finish(&sbuf, rc, out, "ADMIN");
}

dsla_status_t dsla_proto_admin_decode(const void *body, size_t len, dsla_proto_admin_t *out) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "ADMIN"));
    dsla_status_t st = DSLA_OK;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        if (dsla_wire_key_is(k, "key")) {
            st = dsla_wire_get_str(v, out->key, DSLA_PROTO_ADMIN_KEY_MAX, "ADMIN", "key");
            continue;
        }
        if (!dsla_wire_key_is(k, "args")) continue;
        if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size == 0 ||
            v->via.array.size > DSLA_PROTO_ADMIN_ARGS_MAX) {
            st = dsla_error(DSLA_ERR_FORMAT, "ADMIN: field args must be an array of 1 to %d",
                            DSLA_PROTO_ADMIN_ARGS_MAX);
            break;
        }
        out->n_args = v->via.array.size;
        for (uint32_t j = 0; j < out->n_args && st == DSLA_OK; j++)
            st = dsla_wire_get_str(&v->via.array.ptr[j], out->args[j], DSLA_PROTO_ADMIN_ARG_LEN_MAX,
                                   "ADMIN", "args");
    }
    if (st == DSLA_OK && out->n_args == 0)
        st = dsla_error(DSLA_ERR_FORMAT, "ADMIN: field args is required");
    msgpack_unpacked_destroy(&u);
    return st;
}

dsla_status_t dsla_proto_admin_reply_encode(const dsla_proto_admin_reply_t *r,
                                            dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    if (r->text_len > DSLA_PROTO_ADMIN_TEXT_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "ADMIN_REPLY: %zu bytes of text, above the limit of %u", r->text_len,
                          DSLA_PROTO_ADMIN_TEXT_MAX);
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, 1);
    rc |= dsla_wire_pack_key(&pk, "text") |
          msgpack_pack_str_with_body(&pk, r->text ? r->text : "", r->text ? r->text_len : 0);
    return dsla_wire_finish(&sbuf, rc, out, "ADMIN_REPLY");
}

dsla_status_t dsla_proto_admin_reply_decode(const void *body, size_t len,
                                            dsla_proto_admin_reply_t *out) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "ADMIN_REPLY"));
    dsla_status_t st = DSLA_OK;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++)
        if (dsla_wire_key_is(&m->ptr[i].key, "text") && !out->text)
            st = dsla_wire_dup_str(&m->ptr[i].val, DSLA_PROTO_ADMIN_TEXT_MAX, &out->text,
                                   &out->text_len, "ADMIN_REPLY", "text");
    if (st == DSLA_OK && !out->text && !(out->text = calloc(1, 1)))
        st = dsla_error_oom("ADMIN_REPLY");
    msgpack_unpacked_destroy(&u);
    if (st != DSLA_OK) dsla_proto_admin_reply_free(out);
    return st;
}

void dsla_proto_admin_reply_free(dsla_proto_admin_reply_t *r) {
    if (!r) return;
    free(r->text);
    r->text = NULL;
    r->text_len = 0;
}

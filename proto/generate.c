/* Bodies of the generation types: GENERATE, TOKEN, DONE and CANCEL (proto.h, docs/protocol.md).
 * Like every decoder here they ignore unknown keys, bound every length by the limits in proto.h
 * and allocate only what the frame's bytes actually hold. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "proto/wire.h"

static const char *const finish_names[] = {"length", "stop", "cancelled"};

const char *dsla_proto_finish_name(dsla_proto_finish_t finish) {
    return (unsigned)finish < sizeof finish_names / sizeof finish_names[0] ? finish_names[finish]
                                                                           : "unknown";
}

/* The optional sampling keys a GENERATE carries (those not off). */
static int n_sampling_extras(const dsla_proto_generate_t *g) {
    return (g->min_p != 0.0f) + (g->presence_penalty != 0.0f) + (g->frequency_penalty != 0.0f) +
           (g->repetition_penalty != 0.0f) + (g->n_bias > 0);
}

dsla_status_t dsla_proto_generate_encode(const dsla_proto_generate_t *g, dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    if (g->prompt_len > DSLA_PROTO_PROMPT_MAX || g->n_prompt_ids < 0 ||
        g->n_prompt_ids > DSLA_PROTO_PROMPT_IDS_MAX || g->n_stop < 0 ||
        g->n_stop > DSLA_PROTO_STOP_MAX || g->n_bias < 0 || g->n_bias > DSLA_PROTO_LOGIT_BIAS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "GENERATE: prompt of %zu bytes (limit %u), %d prompt ids (limit %d), "
                          "%d stop strings (limit %d) or %d logit_bias entries (limit %d) out of "
                          "range",
                          g->prompt_len, DSLA_PROTO_PROMPT_MAX, g->n_prompt_ids,
                          DSLA_PROTO_PROMPT_IDS_MAX, g->n_stop, DSLA_PROTO_STOP_MAX, g->n_bias,
                          DSLA_PROTO_LOGIT_BIAS_MAX);
    for (int i = 0; i < g->n_stop; i++)
        if (!g->stop[i] || strlen(g->stop[i]) > DSLA_PROTO_STOP_LEN_MAX)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "GENERATE: stop string %d missing or longer than %d bytes", i,
                              DSLA_PROTO_STOP_LEN_MAX);
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    bool have_text = g->prompt && !g->prompt_ids;
    int rc = msgpack_pack_map(&pk, 8 + (have_text ? 1 : 0) + (g->prompt_ids ? 1 : 0) +
                                       (g->logprobs ? 1 : 0) + (g->prompt_logprobs ? 1 : 0) +
                                       n_sampling_extras(g));
    if (have_text) {
        rc |= dsla_wire_pack_key(&pk, "prompt");
        rc |= msgpack_pack_str_with_body(&pk, g->prompt, g->prompt_len);
    }
    if (g->prompt_ids) {
        rc |= dsla_wire_pack_key(&pk, "prompt_ids");
        rc |= msgpack_pack_array(&pk, (size_t)g->n_prompt_ids);
        for (int i = 0; i < g->n_prompt_ids; i++)
            rc |= msgpack_pack_int32(&pk, g->prompt_ids[i]);
    }
    rc |= dsla_wire_pack_key(&pk, "max_tokens");
    rc |= msgpack_pack_int32(&pk, g->max_tokens);
    rc |= dsla_wire_pack_key(&pk, "temperature");
    rc |= msgpack_pack_float(&pk, g->temperature);
    rc |= dsla_wire_pack_key(&pk, "top_k");
    rc |= msgpack_pack_int32(&pk, g->top_k);
    rc |= dsla_wire_pack_key(&pk, "top_p");
    rc |= msgpack_pack_float(&pk, g->top_p);
    rc |= dsla_wire_pack_key(&pk, "seed");
    rc |= msgpack_pack_uint64(&pk, g->seed);
    rc |= dsla_wire_pack_key(&pk, "stop");
    rc |= msgpack_pack_array(&pk, (size_t)g->n_stop);
    for (int i = 0; i < g->n_stop; i++)
        rc |= msgpack_pack_str_with_body(&pk, g->stop[i], strlen(g->stop[i]));
    rc |= dsla_wire_pack_key(&pk, "ignore_eos");
    rc |= g->ignore_eos ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
    rc |= dsla_wire_pack_key(&pk, "stream");
    rc |= g->stream ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
    if (g->logprobs) { /* absent: none; an old server ignores it */
        rc |= dsla_wire_pack_key(&pk, "top_logprobs");
        rc |= msgpack_pack_int32(&pk, g->top_logprobs);
    }
    if (g->prompt_logprobs) {
        rc |= dsla_wire_pack_key(&pk, "prompt_logprobs");
        rc |= msgpack_pack_true(&pk);
    }
    const struct {
        const char *key;
        float value, off;
    } extras[] = {{"min_p", g->min_p, 0.0f},
                  {"presence_penalty", g->presence_penalty, 0.0f},
                  {"frequency_penalty", g->frequency_penalty, 0.0f},
                  {"repetition_penalty", g->repetition_penalty, 0.0f}};
    for (size_t i = 0; i < sizeof extras / sizeof extras[0]; i++)
        if (extras[i].value != extras[i].off) {
            rc |= dsla_wire_pack_key(&pk, extras[i].key);
            rc |= msgpack_pack_float(&pk, extras[i].value);
        }
    if (g->n_bias > 0) {
        rc |= dsla_wire_pack_key(&pk, "logit_bias");
        rc |= msgpack_pack_array(&pk, (size_t)g->n_bias);
        for (int i = 0; i < g->n_bias; i++) {
            rc |= msgpack_pack_array(&pk, 2);
            rc |= msgpack_pack_int32(&pk, g->bias_ids[i]);
            rc |= msgpack_pack_float(&pk, g->bias_values[i]);
        }
    }
    return dsla_wire_finish(&sbuf, rc, out, "GENERATE");
}

void dsla_proto_generate_free(dsla_proto_generate_t *g) {
    if (!g) return;
    free((void *)g->prompt);
    free((void *)g->prompt_ids);
    free((void *)g->bias_ids);
    free((void *)g->bias_values);
    for (int i = 0; i < g->n_stop; i++)
        free((void *)g->stop[i]);
    memset(g, 0, sizeof *g);
}

/* logit_bias: an array of [id, bias] pairs. */
static dsla_status_t logit_bias_field(const msgpack_object *v, dsla_proto_generate_t *out) {
    if (v->type != MSGPACK_OBJECT_ARRAY || out->bias_ids ||
        v->via.array.size > DSLA_PROTO_LOGIT_BIAS_MAX)
        return dsla_error(DSLA_ERR_FORMAT,
                          "GENERATE: field logit_bias must be one array of at most %d pairs",
                          DSLA_PROTO_LOGIT_BIAS_MAX);
    const uint32_t n = v->via.array.size;
    int32_t *ids = malloc(sizeof *ids * (n ? n : 1));
    float *values = malloc(sizeof *values * (n ? n : 1));
    out->bias_ids = ids;
    out->bias_values = values;
    if (!ids || !values) return dsla_error_oom("GENERATE: logit_bias");
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *pair = &v->via.array.ptr[i];
        if (pair->type != MSGPACK_OBJECT_ARRAY || pair->via.array.size != 2)
            return dsla_error(DSLA_ERR_FORMAT, "GENERATE: logit_bias[%u] must be [id, bias]", i);
        int64_t id = 0;
        DSLA_TRY(dsla_wire_get_i64(&pair->via.array.ptr[0], 0, INT32_MAX, &id, "GENERATE",
                                   "logit_bias id"));
        DSLA_TRY(dsla_wire_get_float(&pair->via.array.ptr[1], &values[i], "GENERATE",
                                     "logit_bias value"));
        ids[i] = (int32_t)id;
        out->n_bias = (int)i + 1;
    }
    return DSLA_OK;
}

static dsla_status_t generate_field(const msgpack_object *k, const msgpack_object *v,
                                    dsla_proto_generate_t *out, bool *have_prompt, bool *have_max) {
    static const char what[] = "GENERATE";
    int64_t x = 0;
    if (dsla_wire_key_is(k, "prompt")) {
        if (out->prompt) return dsla_error(DSLA_ERR_FORMAT, "GENERATE: field prompt repeated");
        char *s = NULL;
        DSLA_TRY(dsla_wire_dup_str(v, DSLA_PROTO_PROMPT_MAX, &s, &out->prompt_len, what, "prompt"));
        out->prompt = s;
        *have_prompt = true;
    } else if (dsla_wire_key_is(k, "prompt_ids")) {
        if (v->type != MSGPACK_OBJECT_ARRAY || out->prompt_ids)
            return dsla_error(DSLA_ERR_FORMAT, "GENERATE: field prompt_ids must be one array");
        uint32_t n = v->via.array.size;
        if (n > DSLA_PROTO_PROMPT_IDS_MAX)
            return dsla_error(DSLA_ERR_FORMAT,
                              "GENERATE: field prompt_ids has %u ids, above the limit of %d", n,
                              DSLA_PROTO_PROMPT_IDS_MAX);
        int32_t *ids = malloc(sizeof *ids * (n ? n : 1));
        if (!ids) return dsla_error_oom("GENERATE: prompt_ids");
        out->prompt_ids = ids;
        for (uint32_t i = 0; i < n; i++) {
            DSLA_TRY(dsla_wire_get_i64(&v->via.array.ptr[i], INT32_MIN, INT32_MAX, &x, what,
                                       "prompt_ids"));
            ids[i] = (int32_t)x;
        }
        out->n_prompt_ids = (int)n;
        *have_prompt = true;
    } else if (dsla_wire_key_is(k, "max_tokens")) {
        DSLA_TRY(dsla_wire_get_i64(v, INT32_MIN, INT32_MAX, &x, what, "max_tokens"));
        out->max_tokens = (int32_t)x;
        *have_max = true;
    } else if (dsla_wire_key_is(k, "top_k")) {
        DSLA_TRY(dsla_wire_get_i64(v, INT32_MIN, INT32_MAX, &x, what, "top_k"));
        out->top_k = (int32_t)x;
    } else if (dsla_wire_key_is(k, "temperature")) {
        DSLA_TRY(dsla_wire_get_float(v, &out->temperature, what, "temperature"));
    } else if (dsla_wire_key_is(k, "top_p")) {
        DSLA_TRY(dsla_wire_get_float(v, &out->top_p, what, "top_p"));
    } else if (dsla_wire_key_is(k, "seed")) {
        DSLA_TRY(dsla_wire_get_u64(v, &out->seed, what, "seed"));
    } else if (dsla_wire_key_is(k, "ignore_eos")) {
        DSLA_TRY(dsla_wire_get_bool(v, &out->ignore_eos, what, "ignore_eos"));
    } else if (dsla_wire_key_is(k, "top_logprobs")) {
        DSLA_TRY(dsla_wire_get_i64(v, 0, DSLA_PROTO_LOGPROBS_MAX, &x, what, "top_logprobs"));
        out->logprobs = true;
        out->top_logprobs = (int32_t)x;
    } else if (dsla_wire_key_is(k, "min_p")) {
        DSLA_TRY(dsla_wire_get_float(v, &out->min_p, what, "min_p"));
    } else if (dsla_wire_key_is(k, "presence_penalty")) {
        DSLA_TRY(dsla_wire_get_float(v, &out->presence_penalty, what, "presence_penalty"));
    } else if (dsla_wire_key_is(k, "frequency_penalty")) {
        DSLA_TRY(dsla_wire_get_float(v, &out->frequency_penalty, what, "frequency_penalty"));
    } else if (dsla_wire_key_is(k, "repetition_penalty")) {
        DSLA_TRY(dsla_wire_get_float(v, &out->repetition_penalty, what, "repetition_penalty"));
    } else if (dsla_wire_key_is(k, "logit_bias")) {
        DSLA_TRY(logit_bias_field(v, out));
    } else if (dsla_wire_key_is(k, "prompt_logprobs")) {
        DSLA_TRY(dsla_wire_get_bool(v, &out->prompt_logprobs, what, "prompt_logprobs"));
    } else if (dsla_wire_key_is(k, "stream")) {
        DSLA_TRY(dsla_wire_get_bool(v, &out->stream, what, "stream"));
    } else if (dsla_wire_key_is(k, "stop")) {
        if (v->type != MSGPACK_OBJECT_ARRAY || out->n_stop)
            return dsla_error(DSLA_ERR_FORMAT, "GENERATE: field stop must be one array");
        if (v->via.array.size > DSLA_PROTO_STOP_MAX)
            return dsla_error(DSLA_ERR_FORMAT,
                              "GENERATE: field stop has %u strings, above the limit of %d",
                              v->via.array.size, DSLA_PROTO_STOP_MAX);
        for (uint32_t i = 0; i < v->via.array.size; i++) {
            char *s = NULL;
            DSLA_TRY(dsla_wire_dup_str(&v->via.array.ptr[i], DSLA_PROTO_STOP_LEN_MAX, &s, NULL,
                                       what, "stop"));
            out->stop[out->n_stop++] = s;
        }
    }
    return DSLA_OK;
}

dsla_status_t dsla_proto_generate_decode(const void *body, size_t len, dsla_proto_generate_t *out) {
    memset(out, 0, sizeof *out);
    out->top_p = 1.0f;
    out->temperature = 1.0f;
    out->stream = true;
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "GENERATE"));
    dsla_status_t st = DSLA_OK;
    bool have_prompt = false, have_max = false;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++)
        st = generate_field(&m->ptr[i].key, &m->ptr[i].val, out, &have_prompt, &have_max);
    msgpack_unpacked_destroy(&u);
    if (st == DSLA_OK && !have_prompt)
        st = dsla_error(DSLA_ERR_FORMAT, "GENERATE: missing field prompt or prompt_ids");
    if (st == DSLA_OK && !have_max)
        st = dsla_error(DSLA_ERR_FORMAT, "GENERATE: missing field max_tokens");
    if (st != DSLA_OK) dsla_proto_generate_free(out);
    return st;
}

static int pack_logprob(msgpack_packer *pk, const dsla_proto_logprob_t *l) {
    int rc = msgpack_pack_array(pk, 3);
    rc |= msgpack_pack_int32(pk, l->id);
    rc |= msgpack_pack_float(pk, l->logprob);
    return rc | msgpack_pack_str_with_body(pk, l->text, l->text_len);
}

static dsla_status_t unpack_logprob(const msgpack_object *v, dsla_proto_logprob_t *l) {
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 3)
        return dsla_error(DSLA_ERR_FORMAT, "TOKEN: a logprob must be [id, logprob, text]");
    const msgpack_object *a = v->via.array.ptr;
    int64_t id = 0;
    DSLA_TRY(dsla_wire_get_i64(&a[0], 0, INT32_MAX, &id, "TOKEN", "logprob id"));
    l->id = (int32_t)id;
    DSLA_TRY(dsla_wire_get_float(&a[1], &l->logprob, "TOKEN", "logprob"));
    return dsla_wire_get_bytes(&a[2], l->text, DSLA_PROTO_TOKEN_TEXT_MAX, &l->text_len, "TOKEN",
                               "logprob text");
}

dsla_status_t dsla_proto_token_encode(const dsla_proto_token_t *t, dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    bool bad_lp = t->has_logprobs && (t->n_top < 0 || t->n_top > DSLA_PROTO_LOGPROBS_MAX ||
                                      t->chosen.text_len > DSLA_PROTO_TOKEN_TEXT_MAX);
    for (int i = 0; t->has_logprobs && !bad_lp && i < t->n_top; i++)
        bad_lp = t->top[i].text_len > DSLA_PROTO_TOKEN_TEXT_MAX;
    if (t->text_len > DSLA_PROTO_PIECE_MAX || bad_lp)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "TOKEN: text of %zu bytes (limit %d), %d alternatives (limit %d) or a "
                          "token text above %d bytes",
                          t->text_len, DSLA_PROTO_PIECE_MAX, t->n_top, DSLA_PROTO_LOGPROBS_MAX,
                          DSLA_PROTO_TOKEN_TEXT_MAX);
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, (t->has_logprobs ? 4 : 2) + (t->prompt ? 1 : 0));
    if (t->prompt) {
        rc |= dsla_wire_pack_key(&pk, "prompt");
        rc |= msgpack_pack_true(&pk);
    }
    rc |= dsla_wire_pack_key(&pk, "token");
    rc |= msgpack_pack_int32(&pk, t->token);
    rc |= dsla_wire_pack_key(&pk, "text");
    rc |= msgpack_pack_str_with_body(&pk, t->text, t->text_len);
    if (t->has_logprobs) {
        rc |= dsla_wire_pack_key(&pk, "logprob");
        rc |= pack_logprob(&pk, &t->chosen);
        rc |= dsla_wire_pack_key(&pk, "top");
        rc |= msgpack_pack_array(&pk, (size_t)t->n_top);
        for (int i = 0; i < t->n_top; i++)
            rc |= pack_logprob(&pk, &t->top[i]);
    }
    return dsla_wire_finish(&sbuf, rc, out, "TOKEN");
}

dsla_status_t dsla_proto_token_decode(const void *body, size_t len, dsla_proto_token_t *out) {
    memset(out, 0, sizeof *out);
    out->token = -1;
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "TOKEN"));
    dsla_status_t st = DSLA_OK;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *v = &m->ptr[i].val;
        if (dsla_wire_key_is(&m->ptr[i].key, "token")) {
            int64_t x = 0;
            st = dsla_wire_get_i64(v, -1, INT32_MAX, &x, "TOKEN", "token");
            out->token = (int32_t)x;
        } else if (dsla_wire_key_is(&m->ptr[i].key, "text")) {
            st = dsla_wire_get_bytes(v, out->text, DSLA_PROTO_PIECE_MAX, &out->text_len, "TOKEN",
                                     "text");
        } else if (dsla_wire_key_is(&m->ptr[i].key, "prompt")) {
            st = dsla_wire_get_bool(v, &out->prompt, "TOKEN", "prompt");
        } else if (dsla_wire_key_is(&m->ptr[i].key, "logprob")) {
            st = unpack_logprob(v, &out->chosen);
            out->has_logprobs = true;
        } else if (dsla_wire_key_is(&m->ptr[i].key, "top")) {
            if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size > DSLA_PROTO_LOGPROBS_MAX) {
                st = dsla_error(DSLA_ERR_FORMAT, "TOKEN: field top must be an array of at most %d",
                                DSLA_PROTO_LOGPROBS_MAX);
                break;
            }
            out->n_top = 0;
            for (uint32_t j = 0; j < v->via.array.size && st == DSLA_OK; j++)
                st = unpack_logprob(&v->via.array.ptr[j], &out->top[out->n_top++]);
        }
    }
    msgpack_unpacked_destroy(&u);
    return st;
}

dsla_status_t dsla_proto_done_encode(const dsla_proto_done_t *d, dsla_proto_buf_t *out) {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    const char *finish = dsla_proto_finish_name(d->finish);
    const size_t replica_len = strnlen(d->replica, DSLA_PROTO_REPLICA_MAX);
    int rc = msgpack_pack_map(&pk, replica_len ? 6 : 5);
    rc |= dsla_wire_pack_key(&pk, "finish");
    rc |= msgpack_pack_str_with_body(&pk, finish, strlen(finish));
    rc |= dsla_wire_pack_key(&pk, "prompt_tokens");
    rc |= msgpack_pack_uint32(&pk, d->prompt_tokens);
    rc |= dsla_wire_pack_key(&pk, "completion_tokens");
    rc |= msgpack_pack_uint32(&pk, d->completion_tokens);
    rc |= dsla_wire_pack_key(&pk, "plan_id");
    rc |= msgpack_pack_uint64(&pk, d->plan_id);
    rc |= dsla_wire_pack_key(&pk, "preemptions");
    rc |= msgpack_pack_uint32(&pk, d->preemptions);
    if (replica_len) {
        rc |= dsla_wire_pack_key(&pk, "replica");
        rc |= msgpack_pack_str_with_body(&pk, d->replica, replica_len);
    }
    return dsla_wire_finish(&sbuf, rc, out, "DONE");
}

dsla_status_t dsla_proto_done_decode(const void *body, size_t len, dsla_proto_done_t *out) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "DONE"));
    dsla_status_t st = DSLA_OK;
    bool have_finish = false;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *v = &m->ptr[i].val;
        if (dsla_wire_key_is(&m->ptr[i].key, "finish")) {
            char name[16];
            st = dsla_wire_get_str(v, name, sizeof name - 1, "DONE", "finish");
            for (unsigned f = 0; st == DSLA_OK && f < sizeof finish_names / sizeof finish_names[0];
                 f++)
                if (strcmp(name, finish_names[f]) == 0) {
                    out->finish = (dsla_proto_finish_t)f;
                    have_finish = true;
                }
            if (st == DSLA_OK && !have_finish)
                st = dsla_error(DSLA_ERR_FORMAT, "DONE: unknown finish reason '%s'", name);
        } else if (dsla_wire_key_is(&m->ptr[i].key, "prompt_tokens")) {
            st = dsla_wire_get_u32(v, &out->prompt_tokens, "DONE", "prompt_tokens");
        } else if (dsla_wire_key_is(&m->ptr[i].key, "completion_tokens")) {
            st = dsla_wire_get_u32(v, &out->completion_tokens, "DONE", "completion_tokens");
        } else if (dsla_wire_key_is(&m->ptr[i].key, "plan_id")) {
            st = dsla_wire_get_u64(v, &out->plan_id, "DONE", "plan_id");
        } else if (dsla_wire_key_is(&m->ptr[i].key, "preemptions")) {
            st = dsla_wire_get_u32(v, &out->preemptions, "DONE", "preemptions");
        } else if (dsla_wire_key_is(&m->ptr[i].key, "replica")) {
            st = dsla_wire_get_str(v, out->replica, DSLA_PROTO_REPLICA_MAX, "DONE", "replica");
        }
    }
    msgpack_unpacked_destroy(&u);
    if (st == DSLA_OK && !have_finish)
        st = dsla_error(DSLA_ERR_FORMAT, "DONE: missing field finish");
    return st;
}

dsla_status_t dsla_proto_cancel_encode(const dsla_proto_cancel_t *c, dsla_proto_buf_t *out) {
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, 1);
    rc |= dsla_wire_pack_key(&pk, "request");
    rc |= msgpack_pack_uint64(&pk, c->request);
    return dsla_wire_finish(&sbuf, rc, out, "CANCEL");
}

dsla_status_t dsla_proto_cancel_decode(const void *body, size_t len, dsla_proto_cancel_t *out) {
    memset(out, 0, sizeof *out);
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, "CANCEL"));
    dsla_status_t st = DSLA_OK;
    bool have = false;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++)
        if (dsla_wire_key_is(&m->ptr[i].key, "request")) {
            st = dsla_wire_get_u64(&m->ptr[i].val, &out->request, "CANCEL", "request");
            have = true;
        }
    msgpack_unpacked_destroy(&u);
    if (st == DSLA_OK && !have) st = dsla_error(DSLA_ERR_FORMAT, "CANCEL: missing field request");
    return st;
}

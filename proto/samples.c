/* PROMPT_SAMPLES: token ids of prompts a serving actor sampled for its distiller (proto.h,
 * docs/protocol.md). The decoder bounds the prompts and ids by the limits in proto.h before it
 * allocates, and refuses empty prompts and negative ids; unknown keys are ignored. */
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "proto/wire.h"

static const char what[] = "PROMPT_SAMPLES";

dsla_status_t dsla_proto_prompt_samples_encode(const dsla_proto_prompt_samples_t *p,
                                               dsla_proto_buf_t *out) {
    out->data = NULL;
    out->len = 0;
    uint64_t total = 0;
    for (uint32_t i = 0; i < p->n_prompts && i < DSLA_PROTO_SAMPLES_MAX; i++)
        total += p->lens[i];
    if (p->n_prompts > DSLA_PROTO_SAMPLES_MAX || total != p->n_ids ||
        p->n_ids > DSLA_PROTO_SAMPLE_TOKENS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: %u prompts (limit %d) of %u ids (limit %d; their lengths sum to "
                          "%llu)",
                          what, p->n_prompts, DSLA_PROTO_SAMPLES_MAX, p->n_ids,
                          DSLA_PROTO_SAMPLE_TOKENS_MAX, (unsigned long long)total);
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    dsla_wire_packer_open(&sbuf, &pk);
    int rc = msgpack_pack_map(&pk, 2);
    rc |= dsla_wire_pack_key(&pk, "prompts") | msgpack_pack_array(&pk, p->n_prompts);
    const int32_t *ids = p->ids;
    for (uint32_t i = 0; i < p->n_prompts; i++) {
        rc |= msgpack_pack_array(&pk, p->lens[i]);
        for (uint32_t j = 0; j < p->lens[i]; j++)
            rc |= msgpack_pack_int32(&pk, *ids++);
    }
    rc |= dsla_wire_pack_u64_field(&pk, "dropped", p->dropped);
    return dsla_wire_finish(&sbuf, rc, out, what);
}

/* prompts: an array of at most DSLA_PROTO_SAMPLES_MAX non-empty arrays of ids. */
static dsla_status_t prompts_decode(const msgpack_object *v, dsla_proto_prompt_samples_t *out) {
    if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size > DSLA_PROTO_SAMPLES_MAX || out->ids)
        return dsla_error(DSLA_ERR_FORMAT, "%s: field prompts must be one array of at most %d",
                          what, DSLA_PROTO_SAMPLES_MAX);
    const msgpack_object_array *a = &v->via.array;
    uint64_t total = 0;
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object *p = &a->ptr[i];
        if (p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size == 0)
            return dsla_error(DSLA_ERR_FORMAT, "%s: prompt %u must be a non-empty array of ids",
                              what, i);
        total += p->via.array.size;
    }
    if (total > DSLA_PROTO_SAMPLE_TOKENS_MAX)
        return dsla_error(DSLA_ERR_FORMAT, "%s: %llu ids exceed the limit of %d", what,
                          (unsigned long long)total, DSLA_PROTO_SAMPLE_TOKENS_MAX);
    int32_t *ids = malloc((total ? total : 1) * sizeof *ids);
    if (!ids) return dsla_error_oom("%s", what);
    out->ids = ids;
    for (uint32_t i = 0; i < a->size; i++) {
        const msgpack_object_array *p = &a->ptr[i].via.array;
        for (uint32_t j = 0; j < p->size; j++) {
            int64_t x = 0;
            DSLA_TRY(dsla_wire_get_i64(&p->ptr[j], 0, INT32_MAX, &x, what, "prompts"));
            ids[out->n_ids++] = (int32_t)x;
        }
        out->lens[out->n_prompts++] = p->size;
    }
    return DSLA_OK;
}

dsla_status_t dsla_proto_prompt_samples_decode(const void *body, size_t len,
                                               dsla_proto_prompt_samples_t *out) {
    memset(out, 0, sizeof *out);
    const dsla_wire_u32_field_t u32s[] = {{"dropped", &out->dropped}};
    msgpack_unpacked u;
    DSLA_TRY(dsla_wire_body_map(body, len, &u, what));
    dsla_status_t st = DSLA_OK;
    bool have_prompts = false;
    const msgpack_object_map *m = &u.data.via.map;
    for (uint32_t i = 0; i < m->size && st == DSLA_OK; i++) {
        const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
        st = dsla_wire_get_listed(k, v, u32s, 1, NULL, 0, what);
        if (st == DSLA_OK && dsla_wire_key_is(k, "prompts")) {
            have_prompts = true;
            st = prompts_decode(v, out);
        }
    }
    msgpack_unpacked_destroy(&u);
    if (st == DSLA_OK && !have_prompts)
        st = dsla_error(DSLA_ERR_FORMAT, "%s: field prompts is required", what);
    if (st != DSLA_OK) dsla_proto_prompt_samples_free(out);
    return st;
}

void dsla_proto_prompt_samples_free(dsla_proto_prompt_samples_t *p) {
    free((void *)p->ids);
    memset(p, 0, sizeof *p);
}

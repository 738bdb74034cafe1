/* Reference-counted layer versions and plans. */
#include "runtime/serve/plan.h"

#include <stdlib.h>

struct dsla_layer_ref {
    int refs;
    uint64_t checksum; /* 0: unknown */
    dsla_dsla_layer_t *layer;
};

struct dsla_plan {
    int refs;
    uint64_t id;
    bool frozen;
    int num_layers;
    int num_dsla;
    dsla_layer_kind_t *kinds;         /* [num_layers] */
    const dsla_dsla_layer_t **layers; /* [num_layers] */
    dsla_layer_ref_t **versions;      /* [num_layers] held references, NULL for ATTN */
};

dsla_status_t dsla_layer_ref_create(dsla_layer_ref_t **out, dsla_dsla_layer_t **layer) {
    *out = NULL;
    if (!layer || !*layer)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "layer version: no DSLA layer given");
    dsla_layer_ref_t *r = calloc(1, sizeof *r);
    if (!r) return dsla_error_oom("layer version");
    r->refs = 1;
    r->layer = *layer;
    *layer = NULL;
    *out = r;
    return DSLA_OK;
}

dsla_layer_ref_t *dsla_layer_ref_retain(dsla_layer_ref_t *r) {
    if (r) r->refs++;
    return r;
}

void dsla_layer_ref_release(dsla_layer_ref_t **r) {
    if (!r || !*r) return;
    if (--(*r)->refs == 0) {
        dsla_dsla_layer_destroy(&(*r)->layer);
        free(*r);
    }
    *r = NULL;
}

const dsla_dsla_layer_t *dsla_layer_ref_layer(const dsla_layer_ref_t *r) {
    return r->layer;
}

void dsla_layer_ref_set_checksum(dsla_layer_ref_t *r, uint64_t checksum) {
    r->checksum = checksum;
}

uint64_t dsla_layer_ref_checksum(const dsla_layer_ref_t *r) {
    return r->checksum;
}

dsla_status_t dsla_plan_create(dsla_plan_t **out, int num_layers) {
    *out = NULL;
    if (num_layers < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "plan: num_layers %d must be at least 1",
                          num_layers);
    dsla_plan_t *p = calloc(1, sizeof *p);
    if (!p) return dsla_error_oom("plan");
    p->refs = 1;
    p->num_layers = num_layers;
    p->kinds = calloc((size_t)num_layers, sizeof *p->kinds);
    p->layers = calloc((size_t)num_layers, sizeof *p->layers);
    p->versions = calloc((size_t)num_layers, sizeof *p->versions);
    if (!p->kinds || !p->layers || !p->versions) {
        dsla_plan_release(&p);
        return dsla_error_oom("plan: %d layers", num_layers);
    }
    *out = p;
    return DSLA_OK;
}

dsla_status_t dsla_plan_set_layer(dsla_plan_t *p, int layer, dsla_layer_ref_t *version) {
    if (p->frozen)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "plan %llu is installed and frozen: build a new plan to change layer %d",
                          (unsigned long long)p->id, layer);
    if (layer < 0 || layer >= p->num_layers)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "plan: layer %d is outside the %d layers",
                          layer, p->num_layers);
    if (version && version->layer->layer != layer)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "plan: the DSLA layer version given for layer %d was made for layer %d",
                          layer, version->layer->layer);
    dsla_layer_ref_t *old = p->versions[layer];
    p->versions[layer] = dsla_layer_ref_retain(version);
    p->num_dsla += (version != NULL) - (old != NULL);
    dsla_layer_ref_release(&old);
    p->kinds[layer] = version ? DSLA_LAYER_DSLA : DSLA_LAYER_ATTN;
    p->layers[layer] = version ? version->layer : NULL;
    return DSLA_OK;
}

dsla_plan_t *dsla_plan_retain(dsla_plan_t *p) {
    if (p) p->refs++;
    return p;
}

void dsla_plan_release(dsla_plan_t **p) {
    if (!p || !*p) return;
    dsla_plan_t *q = *p;
    *p = NULL;
    if (--q->refs > 0) return;
    for (int l = 0; q->versions && l < q->num_layers; l++)
        dsla_layer_ref_release(&q->versions[l]);
    free(q->versions);
    free(q->layers);
    free(q->kinds);
    free(q);
}

uint64_t dsla_plan_id(const dsla_plan_t *p) {
    return p->id;
}

int dsla_plan_num_layers(const dsla_plan_t *p) {
    return p->num_layers;
}

const dsla_layer_kind_t *dsla_plan_kinds(const dsla_plan_t *p) {
    return p->kinds;
}

const dsla_dsla_layer_t *const *dsla_plan_layers(const dsla_plan_t *p) {
    return p->layers;
}

int dsla_plan_num_dsla(const dsla_plan_t *p) {
    return p->num_dsla;
}

bool dsla_plan_frozen(const dsla_plan_t *p) {
    return p->frozen;
}

dsla_status_t dsla_plan_freeze_copy(dsla_plan_t **out, const dsla_plan_t *p, uint64_t id) {
    DSLA_TRY(dsla_plan_create(out, p->num_layers));
    for (int l = 0; l < p->num_layers; l++)
        if (p->versions[l]) DSLA_TRY(dsla_plan_set_layer(*out, l, p->versions[l]));
    (*out)->id = id;
    (*out)->frozen = true;
    return DSLA_OK;
}

dsla_status_t dsla_plan_share_versions(dsla_plan_t *p, const dsla_plan_t *from, int *shared) {
    if (shared) *shared = 0;
    if (p->refs != 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "plan %llu: %d holders; versions are shared only before anything runs it",
                          (unsigned long long)p->id, p->refs);
    if (!from || from->num_layers != p->num_layers) return DSLA_OK;
    for (int l = 0; l < p->num_layers; l++) {
        dsla_layer_ref_t *mine = p->versions[l], *theirs = from->versions[l];
        if (!mine || !theirs || mine == theirs || !mine->checksum ||
            mine->checksum != theirs->checksum)
            continue;
        p->versions[l] = dsla_layer_ref_retain(theirs);
        p->layers[l] = theirs->layer;
        dsla_layer_ref_release(&mine);
        if (shared) (*shared)++;
    }
    return DSLA_OK;
}

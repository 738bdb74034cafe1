/* Scoring a plan of distilled layers (dsla eval): loading a distill output directory's versions
 * for a plan, and the held-out perplexity of that plan on a backend's eval_nll (distill.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/distill/backend.h"
#include "runtime/distill/distill.h"

dsla_status_t dsla_distill_eval_plan(dsla_distill_backend_t *b, dsla_dsla_layer_t *const *layers,
                                     int n_layers, const dsla_corpus_t *corpus,
                                     dsla_distill_eval_t *out) {
    return dsla_distill_eval_plan_tokens(b, layers, n_layers, corpus, NULL, out);
}

dsla_status_t dsla_distill_eval_plan_tokens(dsla_distill_backend_t *b,
                                            dsla_dsla_layer_t *const *layers, int n_layers,
                                            const dsla_corpus_t *corpus, double *token_nll,
                                            dsla_distill_eval_t *out) {
    if (n_layers < 1 || n_layers > DSLA_LAYER_ORDER_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "plan of %d layers is outside 1..%d", n_layers,
                          DSLA_LAYER_ORDER_MAX);
    if (!corpus || corpus->num_sequences < 1 || corpus->seq_len < 2)
        return dsla_error(
            DSLA_ERR_INVALID_ARGUMENT,
            "scoring needs at least one sequence of at least 2 tokens (have %d of %d)",
            corpus ? corpus->num_sequences : 0, corpus ? corpus->seq_len : 0);
    dsla_layer_kind_t kinds[DSLA_LAYER_ORDER_MAX];
    int n_dsla = 0;
    for (int l = 0; l < n_layers; l++) {
        if (layers[l] && layers[l]->layer != l)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "plan entry %d holds the DSLA layer of decoder layer %d", l,
                              layers[l]->layer);
        kinds[l] = layers[l] ? DSLA_LAYER_DSLA : DSLA_LAYER_ATTN;
        n_dsla += layers[l] != NULL;
    }
    dsla_status_t st = DSLA_OK;
    for (int l = 0; l < n_layers && st == DSLA_OK; l++)
        if (layers[l]) st = b->install(b, l, layers[l]);
    double nll = 0.0;
    if (st == DSLA_OK) st = b->eval_nll(b, n_dsla ? kinds : NULL, corpus, &nll, token_nll);
    for (int l = 0; l < n_layers; l++)
        if (layers[l]) b->install(b, l, NULL);
    if (st != DSLA_OK) return st;
    *out = (dsla_distill_eval_t){nll, exp(nll), (long)corpus->num_sequences * (corpus->seq_len - 1),
                                 corpus->num_sequences};
    return DSLA_OK;
}

void dsla_distill_plan_free(dsla_dsla_layer_t **layers, int n_layers) {
    for (int l = 0; l < n_layers; l++)
        dsla_dsla_layer_destroy(&layers[l]);
}

/* What every version of one plan must share: the teacher and the conversion order. */
typedef struct {
    const dsla_model_t *teacher;
    const dsla_model_config_t *cfg;
    const char *dir;
    uint64_t checksum;
    int order[DSLA_LAYER_ORDER_MAX];
    int n_order; /* -1 until the first version is read */
} plan_loader_t;

static bool version_exists(const plan_loader_t *p, int layer, char *path, size_t cap) {
    snprintf(path, cap, "%s/layer-%d.safetensors", p->dir, layer);
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Loads layer's version into *out, checking it against the teacher and the order seen so far. */
static dsla_status_t load_version(plan_loader_t *p, int layer, const char *option,
                                  dsla_dsla_layer_t **out) {
    char path[4096];
    if (!version_exists(p, layer, path, sizeof path))
        return dsla_error(DSLA_ERR_NOT_FOUND, "%s: layer %d has no version in %s (no %s)", option,
                          layer, p->dir, path);
    dsla_layer_version_meta_t *meta = malloc(sizeof *meta);
    if (!meta) return dsla_error_oom("layer version metadata");
    dsla_status_t st = dsla_dsla_layer_load(out, path, p->cfg, meta);
    if (st == DSLA_OK && meta->teacher_checksum != p->checksum)
        st = dsla_error(DSLA_ERR_FORMAT,
                        "%s was distilled from another teacher (checksum %016llx, this model "
                        "%016llx)",
                        path, (unsigned long long)meta->teacher_checksum,
                        (unsigned long long)p->checksum);
    if (st == DSLA_OK && p->n_order < 0) {
        p->n_order = meta->n_order;
        memcpy(p->order, meta->order, sizeof(int) * (size_t)meta->n_order);
    } else if (st == DSLA_OK &&
               (meta->n_order != p->n_order ||
                memcmp(meta->order, p->order, sizeof(int) * (size_t)p->n_order) != 0)) {
        st = dsla_error(DSLA_ERR_FORMAT,
                        "%s records another conversion order than the directory's other versions",
                        path);
    }
    free(meta);
    if (st != DSLA_OK) dsla_dsla_layer_destroy(out);
    return st;
}

/* The first K layers of the stored order: the order comes from the first version on disk. */
static dsla_status_t load_prefix(plan_loader_t *p, int plan_k, dsla_dsla_layer_t **layers) {
    const int L = p->cfg->num_layers;
    if (plan_k > L)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "--plan %d exceeds the model's %d layers",
                          plan_k, L);
    if (plan_k == 0) return DSLA_OK;
    char path[4096];
    int first = 0;
    while (first < L && !version_exists(p, first, path, sizeof path))
        first++;
    if (first == L)
        return dsla_error(DSLA_ERR_NOT_FOUND, "%s holds no layer-<l>.safetensors", p->dir);
    DSLA_TRY(load_version(p, first, "--plan", &layers[first]));
    if (p->n_order != L)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: the versions record an order of %d layers, the model has %d; "
                          "--plan needs a dsla distill output of this model",
                          p->dir, p->n_order, L);
    /* As the controller converts them: the first plan_k versions present, in the stored order
     * (a layer of the order without a version is passed over, as its catalogue has no entry). */
    int picked[DSLA_LAYER_ORDER_MAX], n_picked = 0;
    for (int i = 0; i < L && n_picked < plan_k; i++)
        if (version_exists(p, p->order[i], path, sizeof path)) picked[n_picked++] = p->order[i];
    if (n_picked < plan_k)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "--plan %d: %s holds %d layer versions of the stored order", plan_k,
                          p->dir, n_picked);
    bool wanted[DSLA_LAYER_ORDER_MAX] = {false};
    for (int i = 0; i < plan_k; i++)
        wanted[picked[i]] = true;
    if (!wanted[first]) dsla_dsla_layer_destroy(&layers[first]);
    for (int i = 0; i < plan_k; i++)
        if (!layers[picked[i]]) DSLA_TRY(load_version(p, picked[i], "--plan", &layers[picked[i]]));
    return DSLA_OK;
}

static dsla_status_t load_picked(plan_loader_t *p, const int *pick, int n_pick,
                                 dsla_dsla_layer_t **layers) {
    const int L = p->cfg->num_layers;
    for (int i = 0; i < n_pick; i++) {
        const int l = pick[i];
        if (l < 0 || l >= L)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "--dsla: layer %d is outside 0..%d", l,
                              L - 1);
        if (layers[l])
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "--dsla: layer %d is named twice", l);
        DSLA_TRY(load_version(p, l, "--dsla", &layers[l]));
    }
    return DSLA_OK;
}

static dsla_status_t load_all(plan_loader_t *p, dsla_dsla_layer_t **layers) {
    char path[4096];
    int found = 0;
    for (int l = 0; l < p->cfg->num_layers; l++) {
        if (!version_exists(p, l, path, sizeof path)) continue;
        DSLA_TRY(load_version(p, l, "--layers", &layers[l]));
        found++;
    }
    if (!found) return dsla_error(DSLA_ERR_NOT_FOUND, "%s holds no layer-<l>.safetensors", p->dir);
    return DSLA_OK;
}

dsla_status_t dsla_distill_load_plan(const dsla_model_t *teacher, const char *dir, int plan_k,
                                     const int *pick, int n_pick, dsla_dsla_layer_t **layers,
                                     int *n_out) {
    const dsla_model_config_t *cfg = dsla_model_config(teacher);
    const int L = cfg->num_layers;
    if (L > DSLA_LAYER_ORDER_MAX)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "model has %d layers; at most %d", L,
                          DSLA_LAYER_ORDER_MAX);
    if (plan_k >= 0 && n_pick > 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "--plan and --dsla name a plan each; give one");
    for (int l = 0; l < L; l++)
        layers[l] = NULL;
    plan_loader_t p = {teacher, cfg, dir, dsla_model_checksum(teacher), {0}, -1};
    dsla_status_t st = plan_k >= 0  ? load_prefix(&p, plan_k, layers)
                       : n_pick > 0 ? load_picked(&p, pick, n_pick, layers)
                                    : load_all(&p, layers);
    if (st != DSLA_OK) {
        dsla_distill_plan_free(layers, L);
        return st;
    }
    *n_out = 0;
    for (int l = 0; l < L; l++)
        *n_out += layers[l] != NULL;
    return DSLA_OK;
}

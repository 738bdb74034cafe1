/* The GPU backend (backend_cuda.h): a device arena for KV and states, plan groups, pinned layer
 * versions. */
#include "runtime/serve/backend_cuda.h"

#ifdef DSLA_HAVE_CUDA

#include <stdlib.h>
#include <string.h>

#include "kernels/kernels_cuda.h"
#include "runtime/core/log.h"

typedef struct {
    dsla_cuda_seq_t *seq;
    dsla_plan_t *plan; /* retained: its versions stay alive while the sequence runs them */
    int attn;          /* layers it runs as attention */
} cuda_seq_t;

typedef struct {
    dsla_serve_backend_t base;
    dsla_cuda_model_t *m;
    /* A deployment's own model and stream (dsla_serve_backend_cuda_deploy); NULL when borrowed. */
    dsla_cuda_model_t *owned_model;
    dsla_cuda_stream_t owned_stream;
    dsla_cuda_kv_t *kv; /* its blocks hold the KV and the DSLA state slots */
    int max_items;
    /* Per layer: the version whose weights the model holds, and a plan that keeps it alive (so
     * that a freed version's address cannot come back as a different one). */
    const dsla_dsla_layer_t **held;
    dsla_plan_t **held_plan;
    const dsla_dsla_layer_t **pass_ver; /* [layers] the running pass's DSLA versions (or NULL) */
    dsla_cuda_batch_item_t *citems;     /* [max_items] */
    int *group;                         /* [max_items] item indices of the running pass */
    bool *done;                         /* [max_items] */
    int *offset;                        /* [max_items] each item's first row in the call's logits */
    /* A pass's rows when a step needs several passes or reorders its items, to scatter by item:
     * grown on demand up to the rows of one call (max_logit_rows) */
    float *rows;
    size_t rows_cap;
    uint64_t uploads; /* layer versions uploaded, for the log */
    dsla_log_limit_t upload_log;
} cuda_backend_t;

size_t dsla_serve_cuda_slot_bytes(const dsla_model_config_t *cfg) {
    return 2 * (size_t)cfg->num_heads * (size_t)cfg->head_dim * (size_t)cfg->head_dim *
           sizeof(float);
}

static void cuda_destroy(dsla_serve_backend_t *b) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    if (c->held_plan)
        for (int l = 0; l < b->cfg->num_layers; l++)
            dsla_plan_release(&c->held_plan[l]);
    dsla_cuda_kv_destroy(&c->kv);
    free(c->held);
    free(c->held_plan);
    free(c->pass_ver);
    free(c->citems);
    free(c->group);
    free(c->done);
    free(c->offset);
    free(c->rows);
    dsla_cuda_model_destroy(&c->owned_model);
    if (c->owned_stream) dsla_cuda_stream_destroy(&c->owned_stream);
    free(c);
}

static dsla_status_t cuda_seq_create(dsla_serve_backend_t *b, const dsla_plan_t *plan,
                                     dsla_serve_seq_t **out) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    cuda_seq_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error_oom("cuda backend");
    dsla_status_t st = dsla_cuda_seq_create_in_pool(&s->seq, c->kv, dsla_plan_kinds(plan));
    if (st != DSLA_OK) {
        free(s);
        return st;
    }
    /* The engine's plans are frozen and refcounted; the const only says the backend never
     * changes it. */
    s->plan = dsla_plan_retain((dsla_plan_t *)plan);
    s->attn = dsla_plan_num_layers(plan) - dsla_plan_num_dsla(plan);
    *out = (dsla_serve_seq_t *)s;
    return DSLA_OK;
}

static void cuda_seq_destroy(dsla_serve_backend_t *b, dsla_serve_seq_t *ss) {
    (void)b;
    cuda_seq_t *s = (cuda_seq_t *)ss;
    dsla_cuda_seq_destroy(&s->seq);
    dsla_plan_release(&s->plan);
    free(s);
}

static int cuda_seq_blocks_needed(const dsla_serve_backend_t *b, const dsla_serve_seq_t *ss,
                                  int n_tokens) {
    (void)b;
    const cuda_seq_t *s = (const cuda_seq_t *)ss;
    const int len = dsla_cuda_seq_length(s->seq);
    return s->attn * (dsla_kv_blocks_for(len + n_tokens) - dsla_kv_blocks_for(len));
}

static int cuda_free_blocks(const dsla_serve_backend_t *b) {
    return dsla_cuda_kv_free_blocks(((const cuda_backend_t *)b)->kv);
}

static int cuda_free_slots(const dsla_serve_backend_t *b) {
    return dsla_cuda_kv_free_slots(((const cuda_backend_t *)b)->kv);
}

static int cuda_slots_used(const dsla_serve_backend_t *b) {
    return dsla_cuda_kv_slots_used(((const cuda_backend_t *)b)->kv);
}

/* Whether sequences of plans a and b run alike: the same kinds, the same versions. */
static bool same_group(const dsla_plan_t *a, const dsla_plan_t *b) {
    if (a == b) return true;
    const int L = dsla_plan_num_layers(a);
    return memcmp(dsla_plan_kinds(a), dsla_plan_kinds(b), (size_t)L * sizeof(dsla_layer_kind_t)) ==
               0 &&
           memcmp(dsla_plan_layers(a), dsla_plan_layers(b),
                  (size_t)L * sizeof(const dsla_dsla_layer_t *)) == 0;
}

/* Whether plan can join a pass whose DSLA layers run the versions of ver (NULL: no item of the
 * pass runs that layer as DSLA yet): the model holds one version a layer, so plans whose DSLA
 * layers overlap must agree on the versions there (the engine shares equal versions between
 * plans, dsla_plan_share_versions); their kinds may differ (llama_cuda's per-layer runs). */
static bool fits_pass(const dsla_plan_t *plan, const dsla_dsla_layer_t *const *ver, int L) {
    const dsla_layer_kind_t *kinds = dsla_plan_kinds(plan);
    const dsla_dsla_layer_t *const *layers = dsla_plan_layers(plan);
    for (int l = 0; l < L; l++)
        if (kinds[l] == DSLA_LAYER_DSLA && ver[l] && ver[l] != layers[l]) return false;
    return true;
}

static void join_pass(const dsla_plan_t *plan, const dsla_dsla_layer_t **ver, int L) {
    const dsla_layer_kind_t *kinds = dsla_plan_kinds(plan);
    for (int l = 0; l < L; l++)
        if (kinds[l] == DSLA_LAYER_DSLA) ver[l] = dsla_plan_layers(plan)[l];
}

static void hold(cuda_backend_t *c, int l, dsla_plan_t *plan) {
    dsla_plan_release(&c->held_plan[l]);
    c->held_plan[l] = dsla_plan_retain(plan);
    c->held[l] = dsla_plan_layers(plan)[l];
}

/* Uploads the versions of plan's DSLA layers that the model does not hold. */
static dsla_status_t install(cuda_backend_t *c, dsla_plan_t *plan) {
    const dsla_layer_kind_t *kinds = dsla_plan_kinds(plan);
    const dsla_dsla_layer_t *const *layers = dsla_plan_layers(plan);
    for (int l = 0; l < c->base.cfg->num_layers; l++) {
        if (kinds[l] != DSLA_LAYER_DSLA || c->held[l] == layers[l]) continue;
        if (!layers[l]->data)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "cuda backend: layer %d's DSLA version has no weights on the host "
                              "and the model does not hold it (dsla_serve_backend_cuda_adopt_plan)",
                              l);
        DSLA_TRY(dsla_cuda_model_set_dsla_layer(c->m, l, layers[l]));
        hold(c, l, plan);
        c->uploads++;
        /* A few per conversion; many a second means two versions of one layer run together (the
         * model holds one a layer), each step uploading them in turn. */
        DSLA_LOG_LIMITED(&c->upload_log, DSLA_LOG_INFO,
                         "cuda backend: layer %d's DSLA version uploaded (%.0f MB; %llu uploads "
                         "so far)",
                         l, (double)layers[l]->numel * sizeof(float) / 1e6,
                         (unsigned long long)c->uploads);
    }
    return DSLA_OK;
}

/* Adds what the model timed in its last pass to the call's measurement (step_stats.h). */
static void account_pass(cuda_backend_t *c) {
    double device = 0, phase[DSLA_CUDA_PHASES];
    bool split = false;
    dsla_step_device_t *out = &c->base.measured;
    if (!dsla_cuda_model_last_timing(c->m, &device, phase, &split)) return;
    out->device_measured = true;
    out->device_s += device;
    if (!split) return;
    out->phases_measured = true;
    out->phase_s[DSLA_STEP_GEMM] += phase[DSLA_CUDA_PHASE_GEMM];
    out->phase_s[DSLA_STEP_ATTENTION] += phase[DSLA_CUDA_PHASE_ATTENTION];
    out->phase_s[DSLA_STEP_DSLA] += phase[DSLA_CUDA_PHASE_DSLA];
    out->phase_s[DSLA_STEP_OTHER_GPU] += phase[DSLA_CUDA_PHASE_OTHER];
}

static dsla_status_t cuda_forward(dsla_serve_backend_t *b, const dsla_serve_item_t *items,
                                  int n_items, float *logits) {
    cuda_backend_t *c = (cuda_backend_t *)b;
    if (n_items > c->max_items)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "cuda backend: %d items, at most %d (max_seqs)", n_items, c->max_items);
    const size_t V = (size_t)b->cfg->vocab_size;
    DSLA_TRY(dsla_cuda_model_set_timing(c->m, b->time_phases ? DSLA_CUDA_TIMING_PHASES
                                              : b->timing != DSLA_STEP_TIMING_HOST
                                                  ? DSLA_CUDA_TIMING_SPAN
                                                  : DSLA_CUDA_TIMING_OFF));
    const int L = b->cfg->num_layers;
    memset(c->done, 0, (size_t)n_items * sizeof *c->done);
    /* Rows in item order: n_tokens for an item that wants all, else one (backend.h). */
    int total = 0;
    for (int i = 0; i < n_items; i++) {
        c->offset[i] = total;
        total += items[i].want_all_logits ? items[i].n_tokens : 1;
    }
    if (total > b->max_logit_rows)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "cuda backend: %d logit rows, at most %d (max_logit_rows)", total,
                          b->max_logit_rows);
    for (int i = 0; i < n_items; i++) {
        if (c->done[i]) continue;
        /* One pass takes every item whose plan agrees with the pass's versions: in practice all
         * of them, since the engine shares versions between plans. Items of one plan are kept
         * together, so that each layer's runs of one kind are few. */
        memset(c->pass_ver, 0, (size_t)L * sizeof *c->pass_ver);
        int n = 0;
        bool in_order = true;
        size_t pass_rows = 0;
        for (int j = i; j < n_items; j++) {
            dsla_plan_t *plan = ((cuda_seq_t *)items[j].seq)->plan;
            if (c->done[j] || !fits_pass(plan, c->pass_ver, L)) continue;
            DSLA_TRY(install(c, plan));
            join_pass(plan, c->pass_ver, L);
            for (int k = j; k < n_items; k++) {
                if (c->done[k] || !same_group(plan, ((cuda_seq_t *)items[k].seq)->plan)) continue;
                in_order = in_order && k == n;
                c->group[n] = k;
                c->citems[n++] =
                    (dsla_cuda_batch_item_t){((cuda_seq_t *)items[k].seq)->seq, items[k].tokens,
                                             items[k].n_tokens, items[k].want_all_logits};
                pass_rows += items[k].want_all_logits ? (size_t)items[k].n_tokens : 1;
                c->done[k] = true;
            }
        }
        /* One pass in the items' order (the usual case) lands in place; else rows are scattered
         * by item, each its rows (one, or n_tokens when it wants all). */
        float *dst = n == n_items && in_order ? logits : c->rows;
        if (dst != logits && pass_rows > c->rows_cap) {
            float *grown = realloc(c->rows, pass_rows * V * sizeof *grown);
            if (!grown) return dsla_error_oom("cuda backend: %zu logit rows", pass_rows);
            c->rows = dst = grown;
            c->rows_cap = pass_rows;
        }
        DSLA_TRY(dsla_cuda_model_forward(c->m, c->citems, n, dst));
        account_pass(c);
        if (dst == logits) continue;
        size_t at = 0;
        for (int g = 0; g < n; g++) {
            const dsla_serve_item_t *it = &items[c->group[g]];
            const size_t k = it->want_all_logits ? (size_t)it->n_tokens : 1;
            memcpy(logits + (size_t)c->offset[c->group[g]] * V, c->rows + at * V,
                   k * V * sizeof *logits);
            at += k;
        }
    }
    return DSLA_OK;
}

static const dsla_serve_backend_ops_t cuda_ops = {
    .destroy = cuda_destroy,
    .seq_create = cuda_seq_create,
    .seq_destroy = cuda_seq_destroy,
    .seq_blocks_needed = cuda_seq_blocks_needed,
    .free_blocks = cuda_free_blocks,
    .free_slots = cuda_free_slots,
    .slots_used = cuda_slots_used,
    .forward = cuda_forward,
};

dsla_status_t dsla_serve_backend_cuda_create(dsla_serve_backend_t **out, dsla_cuda_model_t *model,
                                             const dsla_serve_cuda_opts_t *o) {
    *out = NULL;
    const dsla_model_config_t *mc = dsla_cuda_model_config(model);
    if (o->kv_blocks < 0 || o->max_seqs < 1 || o->max_context < 1 ||
        (o->max_logit_rows != 0 && o->max_logit_rows < o->max_seqs))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "cuda backend: kv_blocks %d must be >= 0, max_seqs %d and max_context "
                          "%d >= 1, max_logit_rows %d 0 or >= max_seqs",
                          o->kv_blocks, o->max_seqs, o->max_context, o->max_logit_rows);
    cuda_backend_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("cuda backend");
    c->base = (dsla_serve_backend_t){
        .ops = &cuda_ops,
        .cfg = mc,
        .name = "cuda",
        .kv_blocks = o->kv_blocks,
        .max_context = o->max_context,
        /* Items that want all rows are taken; the engine asks max_logit_rows whether its steps
         * fit (engine.h dsla_engine_logit_rows). */
        .all_logits = true,
        .max_logit_rows = o->max_logit_rows ? o->max_logit_rows : o->max_seqs,
        /* deployments store weights and KV in one dtype */
        .costs = dsla_step_costs_for(mc, o->kv_dtype == DSLA_DTYPE_BF16 ? 2 : 4,
                                     o->kv_dtype == DSLA_DTYPE_BF16 ? 2 : 4),
    };
    c->m = model;
    c->max_items = o->max_seqs;
    const size_t L = (size_t)mc->num_layers, n = (size_t)o->max_seqs;
    c->held = calloc(L, sizeof *c->held);
    c->held_plan = calloc(L, sizeof *c->held_plan);
    c->pass_ver = calloc(L, sizeof *c->pass_ver);
    c->citems = calloc(n, sizeof *c->citems);
    c->group = calloc(n, sizeof *c->group);
    c->done = calloc(n, sizeof *c->done);
    c->offset = calloc(n, sizeof *c->offset);
    c->rows = malloc(n * (size_t)mc->vocab_size * sizeof *c->rows);
    c->rows_cap = n;
    dsla_status_t s = c->held && c->held_plan && c->pass_ver && c->citems && c->group && c->done &&
                              c->offset && c->rows
                          ? DSLA_OK
                          : dsla_error_oom("cuda backend");
    if (s == DSLA_OK)
        s = dsla_cuda_kv_create(&c->kv, model, o->kv_dtype, o->kv_blocks, o->max_seqs);
    if (s == DSLA_OK) {
        c->base.blocks_per_slot = dsla_cuda_kv_blocks_per_slot(model, o->kv_dtype);
        c->base.max_slots = dsla_cuda_kv_max_slots(c->kv);
    }
    if (s != DSLA_OK) {
        cuda_destroy(&c->base);
        return s;
    }
    *out = &c->base;
    return DSLA_OK;
}

static dsla_status_t deploy_pools(const dsla_cuda_model_t *m, const dsla_serve_cuda_deploy_t *d,
                                  dsla_serve_cuda_opts_t *o, dsla_serve_cuda_deployed_t *info) {
    const dsla_model_config_t *mc = dsla_cuda_model_config(m);
    const int L = mc->num_layers;
    size_t free_b = 0, total = 0;
    DSLA_TRY(dsla_cuda_mem_info(&free_b, &total));
    const size_t block = dsla_cuda_kv_block_bytes(m, o->kv_dtype);
    const int per_slot = dsla_cuda_kv_blocks_per_slot(m, o->kv_dtype);
    const size_t full_context = (size_t)L * (size_t)dsla_kv_blocks_for(o->max_context) * block;
    size_t avail = free_b > d->margin_bytes ? free_b - d->margin_bytes : 0;
    if (avail < full_context)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "cuda deploy: %.2f GiB free less a margin of %.2f GiB cannot hold one "
                          "%d-token context (%.1f MiB); lower --max-context or the margin",
                          (double)free_b / (1u << 30), (double)d->margin_bytes / (1u << 30),
                          o->max_context, (double)full_context / (1u << 20));
    /* One arena for KV and states: nothing is set aside for states, which conversions carve from
     * free blocks. It never needs more than max_running sequences of the hungrier kind per layer,
     * a full context of KV or a state slot. */
    size_t blocks = avail / block;
    const int per_layer = dsla_kv_blocks_for(o->max_context) > per_slot
                              ? dsla_kv_blocks_for(o->max_context)
                              : per_slot;
    const size_t most = (size_t)d->max_running * (size_t)L * (size_t)per_layer;
    if (blocks > most) blocks = most;
    if (blocks > 0x7fffffff) blocks = 0x7fffffff;
    o->kv_blocks = (int)blocks;
    if (info) {
        info->kv_block_bytes = block;
        info->slot_bytes = (size_t)per_slot * block;
        info->blocks_per_slot = per_slot;
        info->kv_blocks = o->kv_blocks;
        info->max_context = o->max_context;
        info->max_logit_rows = o->max_logit_rows;
        info->weight_bytes = dsla_cuda_model_weight_bytes(m);
    }
    return DSLA_OK;
}

/* A deployment of model's weights or, model NULL, of random weights of mc's shape from seed. */
static dsla_status_t deploy(dsla_serve_backend_t **out, const dsla_model_t *model,
                            const dsla_model_config_t *mc, uint64_t seed,
                            const dsla_serve_cuda_deploy_t *d, dsla_serve_cuda_deployed_t *info) {
    *out = NULL;
    if (d->weight_dtype != DSLA_DTYPE_BF16 && d->weight_dtype != DSLA_DTYPE_F32)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "cuda deploy: weights %s (bf16 or f32)",
                          dsla_dtype_name(d->weight_dtype));
    if (d->max_running < 1 || d->step_tokens < 1 || d->max_context < 0 ||
        d->max_context > mc->max_position_embeddings ||
        (d->max_logit_rows != 0 && d->max_logit_rows < d->max_running))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "cuda deploy: max_running %d and step_tokens %d must be >= 1, "
                          "max_context %d in [0, %d] (0: the model's), max_logit_rows %d 0 or "
                          ">= max_running",
                          d->max_running, d->step_tokens, d->max_context,
                          mc->max_position_embeddings, d->max_logit_rows);
    if (dsla_cuda_device_count() == 0)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "cuda deploy: no CUDA device");
    if (info) {
        memset(info, 0, sizeof *info);
        DSLA_TRY(dsla_cuda_device_name(info->device, sizeof info->device));
    }
    dsla_serve_cuda_opts_t o = {
        .kv_dtype = d->weight_dtype,
        .max_seqs = d->max_running,
        .max_context = d->max_context ? d->max_context : mc->max_position_embeddings,
        .max_logit_rows = d->max_logit_rows ? d->max_logit_rows : d->max_running,
    };
    const dsla_cuda_model_opts_t mo = {d->weight_dtype, d->step_tokens, o.max_logit_rows,
                                       d->max_running,  o.max_context,  true};
    dsla_cuda_stream_t stream = NULL;
    dsla_cuda_model_t *m = NULL;
    dsla_status_t s = dsla_cuda_stream_create(&stream);
    if (s == DSLA_OK)
        s = model ? dsla_cuda_model_create(&m, model, &mo, stream)
                  : dsla_cuda_model_create_random(&m, mc, seed, &mo, stream);
    if (s == DSLA_OK) s = deploy_pools(m, d, &o, info);
    if (s == DSLA_OK) s = dsla_serve_backend_cuda_create(out, m, &o);
    if (s != DSLA_OK) {
        dsla_cuda_model_destroy(&m);
        if (stream) dsla_cuda_stream_destroy(&stream);
        return s;
    }
    cuda_backend_t *c = (cuda_backend_t *)*out;
    c->owned_model = m;
    c->owned_stream = stream;
    return DSLA_OK;
}

dsla_status_t dsla_serve_backend_cuda_deploy(dsla_serve_backend_t **out, const dsla_model_t *model,
                                             const dsla_serve_cuda_deploy_t *d,
                                             dsla_serve_cuda_deployed_t *info) {
    return deploy(out, model, dsla_model_config(model), 0, d, info);
}

dsla_status_t dsla_serve_backend_cuda_deploy_random(dsla_serve_backend_t **out,
                                                    const dsla_model_config_t *cfg, uint64_t seed,
                                                    const dsla_serve_cuda_deploy_t *d,
                                                    dsla_serve_cuda_deployed_t *info) {
    return deploy(out, NULL, cfg, seed, d, info);
}

dsla_status_t dsla_serve_backend_cuda_adopt_plan(dsla_serve_backend_t *b, dsla_plan_t *plan) {
    if (b->ops != &cuda_ops)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "adopt plan: the backend is %s, not cuda",
                          b->name);
    if (dsla_plan_num_layers(plan) != b->cfg->num_layers)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "adopt plan: %d layers, the model has %d",
                          dsla_plan_num_layers(plan), b->cfg->num_layers);
    cuda_backend_t *c = (cuda_backend_t *)b;
    const dsla_layer_kind_t *kinds = dsla_plan_kinds(plan);
    for (int l = 0; l < b->cfg->num_layers; l++)
        if (kinds[l] == DSLA_LAYER_DSLA) hold(c, l, plan);
    return DSLA_OK;
}

dsla_status_t dsla_serve_cuda_warmup(dsla_engine_t *e, int vocab, int chunk, int context) {
    int32_t *ids = malloc((size_t)context * sizeof *ids);
    if (!ids) return dsla_error_oom("warm-up: %d prompt ids", context);
    for (int t = 0; t < context; t++)
        ids[t] = (int32_t)(1 + (t * 7919) % (vocab - 1));
    dsla_status_t s = DSLA_OK;
    for (int pass = 0; pass < 2; pass++) {
        const int base = pass ? chunk : 0, most = pass ? context - 2 - chunk : chunk;
        for (int n = 64; n <= most && s == DSLA_OK; n = dsla_cuda_cudnn_rows(n) + 1) {
            const int len =
                base + (dsla_cuda_cudnn_rows(n) < most ? dsla_cuda_cudnn_rows(n) : most);
            const dsla_request_params_t p = {
                .prompt_ids = ids, .n_prompt_ids = len, .max_tokens = 2, .ignore_eos = true};
            s = dsla_engine_submit(e, &p, NULL);
        }
    }
    while (s == DSLA_OK && !dsla_engine_idle(e))
        s = dsla_engine_step(e, NULL);
    free(ids);
    return s;
}

#else

dsla_status_t dsla_serve_cuda_warmup(dsla_engine_t *e, int vocab, int chunk, int context) {
    (void)e;
    (void)vocab;
    (void)chunk;
    (void)context;
    return DSLA_OK;
}

#endif /* DSLA_HAVE_CUDA */

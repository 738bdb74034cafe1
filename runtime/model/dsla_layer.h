/* One DSLA layer's weights (DESIGN.md section 4) and its layer versions on disk (section 5.5).
 *
 * A dsla_dsla_layer_t replaces the self-attention of one decoder layer: projections wq, wk, wv,
 * gates wg1/bg1 (history) and wg2/bg2 (recency), the state mix alpha and the output projection wo,
 * all float32 in the nn.Linear (out, in) layout, held in one contiguous block (data, numel) so that
 * a version can be checksummed and broadcast as one buffer. It is created zeroed, then either
 * initialised from the teacher layer (section 4's recipe) or loaded from a layer version file.
 *
 * single_state is the ablation that keeps only the history state: the layer's output is
 * Wo concat_h(o_1,t[h]), as if softmax(alpha) were (1, 0). alpha, wg2 and bg2 are then ignored by
 * the forward pass (they are still stored, saved and checksummed), and a sequence pinned to such a
 * layer keeps one state per layer instead of two.
 *
 * A layer version file is safetensors with the reference implementation's tensor names
 * (model.layers.{i}.self_attn.{q,k,v,o}_proj.weight, ...gk_proj.{weight,bias},
 * ...gk_proj2.{weight,bias}, ...alpha_list), so the reference's checkpoints of one layer load
 * here, and string metadata: layer, version, order (comma-separated layer indices), steps,
 * train_loss, eval_mse, eval_ppl, teacher_ppl, teacher_checksum (16 hex digits), single_state
 * (0 or 1) and checksum (16 hex digits: dsla_dsla_layer_checksum). Files are written atomically
 * (fsync and rename, safetensors.h).
 *
 * Contract: this module computes no forward pass (llama.c runs the layer through the kernels) and
 * keeps no global state; a layer is plain data that the caller owns. */
#ifndef DSLA_MODEL_DSLA_LAYER_H
#define DSLA_MODEL_DSLA_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels_dsla.h"
#include "runtime/core/status.h"
#include "runtime/model/config.h"
#include "runtime/model/layer_mac.h"
#include "runtime/model/llama.h"

/* Longest conversion order a version file records: far beyond the 126 layers of the largest
 * Llama, and small enough that the metadata struct lives on the stack. */
enum { DSLA_LAYER_ORDER_MAX = 512 };

typedef struct dsla_dsla_layer {
    int layer;     /* index of the decoder layer it replaces */
    int heads;     /* H: DSLA always has H key/value heads, whatever the teacher's H_kv */
    int head_dim;  /* d */
    int model_dim; /* D */
    bool single_state;
    float *wq, *wk, *wv; /* [H d, D] */
    float *wo;           /* [D, H d] */
    float *wg1, *wg2;    /* [H d, D] gate projections: history, recency */
    float *bg1, *bg2;    /* [H d] */
    float *alpha;        /* [2] state mix, softmaxed */
    float *data;         /* the block every pointer above points into */
    size_t numel;
} dsla_dsla_layer_t;

/* What a layer version records besides its tensors. Numbers unknown to the writer may be NAN. */
typedef struct {
    int version;
    int order[DSLA_LAYER_ORDER_MAX]; /* the conversion order (DESIGN.md 5.1) */
    int n_order;
    long steps;
    double train_loss;
    double eval_mse;
    double eval_ppl;
    double teacher_ppl;
    uint64_t teacher_checksum; /* dsla_model_checksum of the teacher it was distilled from */
    double kl_weight; /* the logit KL term's weight it trained with (0: none, and in older files) */
} dsla_layer_version_meta_t;

/* A zeroed layer shaped for cfg (H = num_heads, d = head_dim, D = hidden_size) at index layer. */
dsla_status_t dsla_dsla_layer_create(dsla_dsla_layer_t **out, const dsla_model_config_t *cfg,
                                     int layer);
void dsla_dsla_layer_destroy(dsla_dsla_layer_t **l);

/* Section 4's initialisation from the teacher's layer layer_index (l must be shaped for the
 * model's config; its index becomes layer_index): Wq, Wo copied; Wk, Wv copied with KV head
 * h / (H / H_kv) for query head h; Wg1 the identity, rectangular ([H d, D], ones at (i, i)) when
 * H d != D; b1 = b2 = 0; Wg2 uniform(-1/sqrt(D), 1/sqrt(D)); alpha uniform(0, 1). The random
 * draws come from a generator seeded by seed alone, so one seed always gives the same layer.
 * single_state is left as it is. */
dsla_status_t dsla_dsla_layer_init_from_teacher(dsla_dsla_layer_t *l, const dsla_model_t *m,
                                                int layer_index, uint64_t seed);

/* The layer's weights as the kernels take them (kernels_dsla.h). */
dsla_dsla_layer_weights_t dsla_dsla_layer_weights(const dsla_dsla_layer_t *l);

/* xxh64 (seed 0) of the tensors' float32 bytes, in ascending order of their names (alpha_list,
 * gk_proj.bias, gk_proj.weight, gk_proj2.bias, gk_proj2.weight, k_proj, o_proj, q_proj, v_proj):
 * the checksum of a layer version (DESIGN.md section 2). */
uint64_t dsla_dsla_layer_checksum(const dsla_dsla_layer_t *l);

/* Writes a layer version to path (atomically). meta may be NULL: version 0, empty order, unknown
 * numbers. The layer index, single_state and checksum come from l. */
dsla_status_t dsla_dsla_layer_save(const dsla_dsla_layer_t *l, const char *path,
                                   const dsla_layer_version_meta_t *meta);
/* As save, with the keyed MAC of layer_mac.h (key NULL: save). The file is written as path.seal,
 * sealed, then renamed to path (and the directory fsync'd): under its name it is always sealed. */
dsla_status_t dsla_dsla_layer_save_sealed(const dsla_dsla_layer_t *l, const char *path,
                                          const dsla_layer_version_meta_t *meta,
                                          const dsla_layer_key_t *key);

/* Reads a layer version shaped for cfg. The layer index is the "layer" metadata or, without it,
 * the one layer whose q_proj the file holds. Every tensor must be present with its exact shape
 * (errors name the tensor and both shapes); any floating dtype is converted to float32. When the
 * file carries a checksum it must match (FORMAT otherwise); files without metadata (the
 * reference's) load with version 0 and unknown numbers. meta_out may be NULL. */
dsla_status_t dsla_dsla_layer_load(dsla_dsla_layer_t **out, const char *path,
                                   const dsla_model_config_t *cfg,
                                   dsla_layer_version_meta_t *meta_out);

#endif

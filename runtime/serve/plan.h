/* Serving plans (DESIGN.md sections 2 and 6): for each layer, softmax attention or a DSLA layer
 * version, and the reference counts that keep layer versions alive while anything runs them.
 *
 * A layer version (dsla_layer_ref_t) wraps a dsla_dsla_layer_t that the serving side owns: it is
 * destroyed when its last reference goes, whether that is a plan or a request pinned through one.
 * A plan holds one reference per DSLA layer; the engine holds the current plan and each admitted
 * request holds the plan it was admitted under, so a version replaced by a plan change lives
 * exactly as long as the last request that runs it.
 *
 * A plan is built (dsla_plan_set_layer) and handed to an engine (dsla_engine_set_plan), which keeps
 * a frozen copy with its own id (the copy shares the layer versions): a frozen plan refuses
 * changes, because requests pinned to it must see the same layers to the end, while the caller's
 * plan stays free to be changed or handed to other engines. Reference counts are plain integers:
 * plans and versions belong to the engine's thread. This module runs nothing and knows nothing of
 * requests or scheduling. */
#ifndef DSLA_SERVE_PLAN_H
#define DSLA_SERVE_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/dsla_layer.h"
#include "runtime/model/kv_cache.h"

typedef struct dsla_layer_ref dsla_layer_ref_t;
typedef struct dsla_plan dsla_plan_t;

/* Takes ownership of *layer (NULLs it) and returns a reference count of 1. */
dsla_status_t dsla_layer_ref_create(dsla_layer_ref_t **out, dsla_dsla_layer_t **layer);
dsla_layer_ref_t *dsla_layer_ref_retain(dsla_layer_ref_t *r);
/* Drops one reference and NULLs *r; the last one destroys the layer. */
void dsla_layer_ref_release(dsla_layer_ref_t **r);
const dsla_dsla_layer_t *dsla_layer_ref_layer(const dsla_layer_ref_t *r);
/* The version's dsla_dsla_layer_checksum, when its loader computed it (0: unknown). Two versions of
 * one layer with equal nonzero checksums hold the same weights (dsla_plan_share_versions). */
void dsla_layer_ref_set_checksum(dsla_layer_ref_t *r, uint64_t checksum);
uint64_t dsla_layer_ref_checksum(const dsla_layer_ref_t *r);

/* A plan of num_layers layers, all ATTN, id 0 (engines number their copies); reference count 1. */
dsla_status_t dsla_plan_create(dsla_plan_t **out, int num_layers);
/* Runs layer as DSLA with version (retained; the plan's earlier one for layer is released), or as
 * ATTN when version is NULL. INVALID_ARGUMENT for a frozen plan, a layer out of range, or a version
 * made for another layer index. */
dsla_status_t dsla_plan_set_layer(dsla_plan_t *p, int layer, dsla_layer_ref_t *version);
dsla_plan_t *dsla_plan_retain(dsla_plan_t *p);
void dsla_plan_release(dsla_plan_t **p);

uint64_t dsla_plan_id(const dsla_plan_t *p);
int dsla_plan_num_layers(const dsla_plan_t *p);
/* kinds[num_layers], for dsla_sequence_create_in_pool. */
const dsla_layer_kind_t *dsla_plan_kinds(const dsla_plan_t *p);
/* layers[num_layers]: the version's weights for DSLA layers, NULL for ATTN ones. */
const dsla_dsla_layer_t *const *dsla_plan_layers(const dsla_plan_t *p);
int dsla_plan_num_dsla(const dsla_plan_t *p);
bool dsla_plan_frozen(const dsla_plan_t *p);
/* For the engine: a frozen copy of p with id (its versions retained, not copied). */
dsla_status_t dsla_plan_freeze_copy(dsla_plan_t **out, const dsla_plan_t *p, uint64_t id);
/* For the engine, on a copy nothing holds but its caller (INVALID_ARGUMENT otherwise): each DSLA
 * layer of p whose version has the checksum of from's version of that layer takes from's (p's
 * own is released), and *shared (may be NULL) counts them. Every SET_PLAN loads its versions
 * afresh; without this, requests of two plans that run one version each hold it twice, and a GPU
 * (which holds one version a layer) uploads them in turn at every step. The engine calls it with
 * every plan still alive: pending, current, and each running request's. */
dsla_status_t dsla_plan_share_versions(dsla_plan_t *p, const dsla_plan_t *from, int *shared);

#endif

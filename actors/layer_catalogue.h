/* The controller's catalogue of layer versions: the files `dsla distill` wrote into one directory
 * (layer-<i>.safetensors), read by their metadata only, in conversion order (DESIGN.md section 2):
 * the distillation order the files record, first-distilled first. Converting k layers means
 * running the first k entries as DSLA; reverting drops them from the end.
 *
 * Contract: reads headers, never tensors, so a scan is cheap and a corrupt tensor is found by the
 * replica that verifies it (section 7's verify step), not here. Files without the metadata of a
 * layer version, and second versions of one layer (the highest version wins), are skipped. */
#ifndef DSLA_ACTORS_LAYER_CATALOGUE_H
#define DSLA_ACTORS_LAYER_CATALOGUE_H

#include <stdint.h>

#include "proto/proto.h"
#include "runtime/core/status.h"

typedef struct {
    int layer;
    int version;
    uint64_t checksum;
    char path[DSLA_PROTO_PATH_MAX + 1]; /* absolute */
} dsla_catalogue_entry_t;

typedef struct {
    int n;
    dsla_catalogue_entry_t entries[DSLA_PROTO_LAYERS_MAX]; /* in conversion order */
} dsla_catalogue_t;

/* Scans dir; an unreadable directory is NOT_FOUND naming it. */
dsla_status_t dsla_catalogue_scan(dsla_catalogue_t *out, const char *dir);

#endif

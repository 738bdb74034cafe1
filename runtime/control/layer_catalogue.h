/* The controller's catalogue of layer versions: the files `dsla distill` wrote into one directory
 * (layer-<i>.safetensors), read by their metadata only, in conversion order (DESIGN.md section 2):
 * the distillation order the files record, first-distilled first. Converting k layers means
 * running the first k entries as DSLA; reverting drops them from the end.
 *
 * It also holds what is done to one layer version's file: its digest (size and xxh64), the
 * verification of an announced version against its file, and bounded reads of it for the chunked
 * transfer.
 *
 * Contract: a scan reads headers, never tensors, so it is cheap and a corrupt tensor is found by
 * the replica that verifies it (section 7's verify step), not here. Files without the metadata of
 * a layer version, and second versions of one layer (the highest version wins), are skipped.
 * Digests, verification and range reads do file I/O whose time grows with the file: an actor
 * runs them on a worker, never on its loop. Plain structs only; no messages, no actors. */
#ifndef DSLA_CONTROL_LAYER_CATALOGUE_H
#define DSLA_CONTROL_LAYER_CATALOGUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/layer_mac.h"

/* Layer versions one catalogue holds and bytes of one path: what one plan message may name
 * (DSLA_PROTO_LAYERS_MAX, DSLA_PROTO_PATH_MAX; the controller checks they agree). */
#define DSLA_CATALOGUE_LAYERS_MAX 512
#define DSLA_CATALOGUE_PATH_MAX 1023
/* The largest layer version file digested or verified: a DSLA layer of a 405B-parameter Llama is
 * under 4 GiB; the bound keeps a sparse file of exabytes from occupying a worker for hours. */
#define DSLA_CATALOGUE_FILE_MAX (64ull << 30)

typedef struct {
    int layer;
    int version;
    uint64_t checksum;
    char path[DSLA_CATALOGUE_PATH_MAX + 1]; /* absolute */
} dsla_catalogue_entry_t;

typedef struct {
    int n;
    dsla_catalogue_entry_t entries[DSLA_CATALOGUE_LAYERS_MAX]; /* in conversion order */
    int n_order; /* the longest order any entry recorded: it knows every layer distilled */
    int order[DSLA_CATALOGUE_LAYERS_MAX];
} dsla_catalogue_t;

/* Scans dir; an unreadable directory is NOT_FOUND naming it. */
dsla_status_t dsla_catalogue_scan(dsla_catalogue_t *out, const char *dir);

/* Reads one layer version's header into e (path as given) and its recorded order (order may be
 * NULL). FORMAT naming the file when it is no layer version, IO when it cannot be read. */
dsla_status_t dsla_catalogue_read(const char *path, dsla_catalogue_entry_t *e, int *order,
                                  int *n_order);

/* The size and xxh64 (seed 0) of a whole file, read in bounded chunks: what LAYER_READY announces
 * and the controller verifies. Only a regular file is read, opened without following a final
 * symbolic link and without blocking (a FIFO or a device such as /dev/zero is refused at once, as
 * FORMAT), and only up to DSLA_CATALOGUE_FILE_MAX bytes. IO naming the file when it cannot be
 * read. */
dsla_status_t dsla_catalogue_file_digest(const char *path, uint64_t *size, uint64_t *xxh64);

/* A layer version as announced (LAYER_READY): the file, what it holds, and its size and xxh64. */
typedef struct {
    const char *dir; /* the layer version directory the file must lie directly inside */
    const char *path;
    int layer;
    int version;
    uint64_t checksum; /* the layer version's own */
    uint64_t size;
    uint64_t xxh64;
    /* the layer key (layer_mac.h): the file must carry its MAC, PERMISSION_DENIED otherwise;
     * NULL: none checked */
    const dsla_layer_key_t *key;
} dsla_catalogue_announce_t;

/* The verify phase of an announced version (DESIGN.md section 7): the path, once every symbolic
 * link in it is resolved, names a version file (layer-*.safetensors) directly inside a->dir
 * (PERMISSION_DENIED otherwise: an announcement names files for this process to read and serve);
 * the file is a regular one of the announced size and xxh64, and its header names the announced
 * layer, version and checksum. On success e (its path the resolved one) and order
 * (DSLA_CATALOGUE_LAYERS_MAX entries) describe it; otherwise FORMAT (or IO) naming the file and
 * both values, never the file's contents. Reads the whole file. */
dsla_status_t dsla_catalogue_verify(const dsla_catalogue_announce_t *a, dsla_catalogue_entry_t *e,
                                    int *order, int *n_order);

/* Resolves path (every symbolic link, "..") into resolved (PATH_MAX bytes), which must then name
 * a version file (layer-*.safetensors) directly inside dir, itself resolved: PERMISSION_DENIED
 * naming both otherwise, NOT_FOUND when either cannot be resolved. Opens nothing. What the scan,
 * the verification of an announcement and a restart's restore all apply. */
dsla_status_t dsla_catalogue_confine(const char *dir, const char *path, char *resolved);

/* Reads exactly n bytes at offset of path into buf; IO naming the file and range otherwise. */
dsla_status_t dsla_catalogue_file_read(const char *path, uint64_t offset, void *buf, size_t n);

typedef enum {
    DSLA_CATALOGUE_ADDED = 0, /* a layer the catalogue did not hold */
    DSLA_CATALOGUE_REPLACED,  /* a higher version of a layer it held */
    DSLA_CATALOGUE_KEPT,      /* it holds this version or a higher one: nothing changed */
} dsla_catalogue_change_t;

/* Adds one entry with the order its file recorded, keeping conversion order. */
dsla_catalogue_change_t dsla_catalogue_add(dsla_catalogue_t *c, const dsla_catalogue_entry_t *e,
                                           const int *order, int n_order);

#endif

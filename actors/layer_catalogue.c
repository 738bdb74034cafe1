/* Scanning a directory of layer versions into conversion order (layer_catalogue.h). */
#define _DEFAULT_SOURCE /* realpath */
#include "actors/layer_catalogue.h"

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/log.h"
#include "runtime/model/safetensors.h"

/* A non-negative integer metadata value; -1 when absent or malformed. */
static long meta_long(const dsla_safetensors_t *st, const char *key, int base) {
    const char *v = dsla_safetensors_metadata(st, key);
    if (!v || !*v) return -1;
    char *end = NULL;
    unsigned long long x = strtoull(v, &end, base);
    return *end || x > LONG_MAX ? -1 : (long)x;
}

/* Reads one file's header into e and its recorded order into order/n_order. false: not a layer
 * version (no layer, version or checksum metadata). */
static bool read_entry(const char *path, dsla_catalogue_entry_t *e, int *order, int *n_order) {
    dsla_safetensors_t *st = NULL;
    if (dsla_safetensors_open(&st, path) != DSLA_OK) {
        dsla_log_warn("controller: skipping %s: %s", path, dsla_last_error());
        return false;
    }
    const char *sum = dsla_safetensors_metadata(st, "checksum");
    long layer = meta_long(st, "layer", 10), version = meta_long(st, "version", 10);
    bool ok = layer >= 0 && layer < DSLA_PROTO_LAYERS_MAX && version >= 0 && sum &&
              strlen(sum) == 16 && strspn(sum, "0123456789abcdefABCDEF") == 16;
    if (ok) {
        e->layer = (int)layer;
        e->version = (int)version;
        e->checksum = strtoull(sum, NULL, 16);
        const char *o = dsla_safetensors_metadata(st, "order");
        *n_order = 0;
        for (char *end = NULL; o && *o && *n_order < DSLA_PROTO_LAYERS_MAX;
             o = end + (*end == ',')) {
            long x = strtol(o, &end, 10);
            if (end == o) break;
            order[(*n_order)++] = (int)x;
        }
    } else {
        dsla_log_warn("controller: skipping %s: no layer, version or checksum metadata", path);
    }
    dsla_safetensors_close(&st);
    return ok;
}

/* Position of a layer in the recorded order; layers it does not name go after it, by index. */
static int rank_of(int layer, const int *order, int n_order) {
    for (int i = 0; i < n_order; i++)
        if (order[i] == layer) return i;
    return n_order + layer;
}

static bool is_version_file(const char *name) {
    size_t n = strlen(name);
    const char suffix[] = ".safetensors";
    return strncmp(name, "layer-", 6) == 0 && n > sizeof suffix - 1 &&
           strcmp(name + n - (sizeof suffix - 1), suffix) == 0;
}

dsla_status_t dsla_catalogue_scan(dsla_catalogue_t *out, const char *dir) {
    out->n = 0;
    char root[PATH_MAX];
    DIR *d = realpath(dir, root) ? opendir(root) : NULL;
    if (!d)
        return dsla_error(DSLA_ERR_NOT_FOUND,
                          "layer versions: cannot read directory %s (write it with dsla distill "
                          "--out)",
                          dir);
    int order[DSLA_PROTO_LAYERS_MAX];
    int n_order = 0;
    int ranks[DSLA_PROTO_LAYERS_MAX];
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (!is_version_file(de->d_name)) continue;
        dsla_catalogue_entry_t e;
        int file_order[DSLA_PROTO_LAYERS_MAX], n_file_order = 0;
        if ((size_t)snprintf(e.path, sizeof e.path, "%s/%s", root, de->d_name) >= sizeof e.path ||
            !read_entry(e.path, &e, file_order, &n_file_order))
            continue;
        if (n_file_order > n_order) { /* the longest recorded order knows every layer distilled */
            memcpy(order, file_order, sizeof(int) * (size_t)n_file_order);
            n_order = n_file_order;
        }
        int same = -1;
        for (int i = 0; i < out->n; i++)
            if (out->entries[i].layer == e.layer) same = i;
        if (same >= 0) {
            if (out->entries[same].version < e.version) out->entries[same] = e;
        } else if (out->n < DSLA_PROTO_LAYERS_MAX) {
            out->entries[out->n++] = e;
        }
    }
    closedir(d);
    for (int i = 0; i < out->n; i++)
        ranks[i] = rank_of(out->entries[i].layer, order, n_order);
    for (int i = 1; i < out->n; i++) /* insertion sort by rank: a few dozen entries at most */
        for (int j = i; j > 0 && ranks[j - 1] > ranks[j]; j--) {
            dsla_catalogue_entry_t t = out->entries[j];
            out->entries[j] = out->entries[j - 1];
            out->entries[j - 1] = t;
            int r = ranks[j];
            ranks[j] = ranks[j - 1];
            ranks[j - 1] = r;
        }
    return DSLA_OK;
}

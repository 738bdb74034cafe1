/* Scanning a directory of layer versions into conversion order (layer_catalogue.h). */
#define _DEFAULT_SOURCE /* realpath, fseeko */
#include "runtime/control/layer_catalogue.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>

#include "runtime/core/log.h"
#include "runtime/model/safetensors.h"

/* Bytes read at a time while hashing a file: bounded memory for any layer size. */
enum { DIGEST_CHUNK = 1 << 20 };

static bool is_version_file(const char *name);

/* A non-negative integer metadata value; -1 when absent or malformed. */
static long meta_long(const dsla_safetensors_t *st, const char *key, int base) {
    const char *v = dsla_safetensors_metadata(st, key);
    if (!v || !*v) return -1;
    char *end = NULL;
    unsigned long long x = strtoull(v, &end, base);
    return *end || x > LONG_MAX ? -1 : (long)x;
}

dsla_status_t dsla_catalogue_read(const char *path, dsla_catalogue_entry_t *e, int *order,
                                  int *n_order) {
    dsla_safetensors_t *st = NULL;
    DSLA_TRY(dsla_safetensors_open(&st, path));
    const char *sum = dsla_safetensors_metadata(st, "checksum");
    long layer = meta_long(st, "layer", 10), version = meta_long(st, "version", 10);
    bool ok = layer >= 0 && layer < DSLA_CATALOGUE_LAYERS_MAX && version >= 0 && sum &&
              strlen(sum) == 16 && strspn(sum, "0123456789abcdefABCDEF") == 16 &&
              strlen(path) <= DSLA_CATALOGUE_PATH_MAX;
    if (ok) {
        e->layer = (int)layer;
        e->version = (int)version;
        e->checksum = strtoull(sum, NULL, 16);
        snprintf(e->path, sizeof e->path, "%s", path);
        const char *o = dsla_safetensors_metadata(st, "order");
        int n = 0;
        for (char *end = NULL; order && o && *o && n < DSLA_CATALOGUE_LAYERS_MAX;
             o = end + (*end == ',')) {
            long x = strtol(o, &end, 10);
            if (end == o) break;
            order[n++] = (int)x;
        }
        if (n_order) *n_order = n;
    }
    dsla_safetensors_close(&st);
    if (!ok)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: no layer, version or checksum metadata (not a layer version)", path);
    return DSLA_OK;
}

dsla_status_t dsla_catalogue_file_digest(const char *path, uint64_t *size, uint64_t *xxh64) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return dsla_error(errno == ELOOP ? DSLA_ERR_FORMAT : DSLA_ERR_IO, "%s: cannot read: %s",
                          path, errno == ELOOP ? "a symbolic link" : strerror(errno));
    struct stat sb;
    dsla_status_t st = DSLA_OK;
    if (fstat(fd, &sb) != 0)
        st = dsla_error(DSLA_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = dsla_error(DSLA_ERR_FORMAT, "%s: not a regular file", path);
    else if ((uint64_t)sb.st_size > DSLA_CATALOGUE_FILE_MAX)
        st = dsla_error(DSLA_ERR_FORMAT, "%s: %lld bytes exceeds the layer file limit of %llu",
                        path, (long long)sb.st_size, (unsigned long long)DSLA_CATALOGUE_FILE_MAX);
    FILE *f = st == DSLA_OK ? fdopen(fd, "rb") : NULL;
    if (!f) {
        if (st == DSLA_OK)
            st = dsla_error(DSLA_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
        close(fd);
        return st;
    }
    char *buf = malloc(DIGEST_CHUNK);
    if (!buf) {
        fclose(f);
        return dsla_error_oom("%s: a read buffer", path);
    }
    XXH64_state_t h;
    XXH64_reset(&h, 0);
    uint64_t total = 0;
    size_t n;
    /* the size limit holds for a file that grows while it is read, too */
    while (total <= DSLA_CATALOGUE_FILE_MAX && (n = fread(buf, 1, DIGEST_CHUNK, f)) > 0) {
        XXH64_update(&h, buf, n);
        total += n;
    }
    bool failed = ferror(f) != 0;
    fclose(f);
    free(buf);
    if (failed) return dsla_error(DSLA_ERR_IO, "%s: read error", path);
    if (total > DSLA_CATALOGUE_FILE_MAX)
        return dsla_error(DSLA_ERR_FORMAT, "%s: grew past the layer file limit of %llu bytes", path,
                          (unsigned long long)DSLA_CATALOGUE_FILE_MAX);
    *size = total;
    *xxh64 = XXH64_digest(&h);
    return DSLA_OK;
}

dsla_status_t dsla_catalogue_confine(const char *dir, const char *path, char *resolved) {
    char root[PATH_MAX];
    if (!dir || !realpath(dir, root))
        return dsla_error(DSLA_ERR_NOT_FOUND, "layer versions: cannot resolve directory %s",
                          dir ? dir : "(none)");
    if (!realpath(path, resolved))
        return dsla_error(DSLA_ERR_NOT_FOUND, "%s: cannot resolve: %s", path, strerror(errno));
    size_t n = strlen(root);
    const char *slash = strrchr(resolved, '/');
    if (strncmp(resolved, root, n) != 0 || resolved + n != slash || !is_version_file(slash + 1) ||
        strlen(resolved) > DSLA_CATALOGUE_PATH_MAX)
        return dsla_error(DSLA_ERR_PERMISSION_DENIED,
                          "%s: not a layer version file (layer-*.safetensors) directly inside the "
                          "controller's layer directory %s",
                          path, root);
    return DSLA_OK;
}

dsla_status_t dsla_catalogue_verify(const dsla_catalogue_announce_t *a, dsla_catalogue_entry_t *e,
                                    int *order, int *n_order) {
    char path[PATH_MAX];
    DSLA_TRY(dsla_catalogue_confine(a->dir, a->path, path));
    uint64_t size = 0, xxh = 0;
    DSLA_TRY(dsla_catalogue_file_digest(path, &size, &xxh));
    if (size != a->size || xxh != a->xxh64)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: %" PRIu64 " bytes with xxh64 %016" PRIx64 ", announced %" PRIu64
                          " bytes with xxh64 %016" PRIx64,
                          path, size, xxh, a->size, a->xxh64);
    if (a->key) DSLA_TRY(dsla_layer_mac_check(a->key, path));
    DSLA_TRY(dsla_catalogue_read(path, e, order, n_order));
    if (e->layer != a->layer || e->version != a->version || e->checksum != a->checksum)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: holds layer %d version %d checksum %016" PRIx64
                          ", announced layer %d version %d checksum %016" PRIx64,
                          path, e->layer, e->version, e->checksum, a->layer, a->version,
                          a->checksum);
    return DSLA_OK;
}

dsla_status_t dsla_catalogue_file_read(const char *path, uint64_t offset, void *buf, size_t n) {
    FILE *fp = fopen(path, "rb");
    bool ok = fp && fseeko(fp, (off_t)offset, SEEK_SET) == 0 && fread(buf, 1, n, fp) == n;
    if (fp) fclose(fp);
    if (!ok)
        return dsla_error(DSLA_ERR_IO, "%s: cannot read %zu bytes at %" PRIu64, path, n, offset);
    return DSLA_OK;
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

/* Insertion sort by rank in the recorded order: a few dozen entries at most. */
static void sort_entries(dsla_catalogue_t *c) {
    for (int i = 1; i < c->n; i++)
        for (int j = i; j > 0; j--) {
            dsla_catalogue_entry_t *a = &c->entries[j - 1], *b = &c->entries[j];
            if (rank_of(a->layer, c->order, c->n_order) <= rank_of(b->layer, c->order, c->n_order))
                break;
            dsla_catalogue_entry_t t = *a;
            *a = *b;
            *b = t;
        }
}

static dsla_catalogue_change_t add_unsorted(dsla_catalogue_t *c, const dsla_catalogue_entry_t *e,
                                            const int *order, int n_order) {
    if (n_order > c->n_order) {
        memcpy(c->order, order, sizeof(int) * (size_t)n_order);
        c->n_order = n_order;
    }
    for (int i = 0; i < c->n; i++) {
        if (c->entries[i].layer != e->layer) continue;
        if (c->entries[i].version >= e->version) return DSLA_CATALOGUE_KEPT;
        c->entries[i] = *e;
        return DSLA_CATALOGUE_REPLACED;
    }
    if (c->n == DSLA_CATALOGUE_LAYERS_MAX) return DSLA_CATALOGUE_KEPT;
    c->entries[c->n++] = *e;
    return DSLA_CATALOGUE_ADDED;
}

dsla_catalogue_change_t dsla_catalogue_add(dsla_catalogue_t *c, const dsla_catalogue_entry_t *e,
                                           const int *order, int n_order) {
    dsla_catalogue_change_t change = add_unsorted(c, e, order, n_order);
    sort_entries(c);
    return change;
}

dsla_status_t dsla_catalogue_scan(dsla_catalogue_t *out, const char *dir) {
    out->n = 0;
    out->n_order = 0;
    char root[PATH_MAX];
    DIR *d = realpath(dir, root) ? opendir(root) : NULL;
    if (!d)
        return dsla_error(DSLA_ERR_NOT_FOUND,
                          "layer versions: cannot read directory %s (write it with dsla distill "
                          "--out)",
                          dir);
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (!is_version_file(de->d_name)) continue;
        char path[PATH_MAX + 256];
        dsla_catalogue_entry_t e;
        int order[DSLA_CATALOGUE_LAYERS_MAX], n_order = 0;
        snprintf(path, sizeof path, "%s/%s", root, de->d_name);
        char resolved[PATH_MAX];
        if (dsla_catalogue_confine(root, path, resolved) != DSLA_OK ||
            dsla_catalogue_read(resolved, &e, order, &n_order) != DSLA_OK) {
            dsla_log_warn("controller: skipping %s", dsla_last_error());
            continue;
        }
        add_unsorted(out, &e, order, n_order);
    }
    closedir(d);
    sort_entries(out);
    return DSLA_OK;
}

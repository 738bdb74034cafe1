/* The replica's side of chunked layer transfer: the cache's names and one file's fetch
 * (transfer.h). */
#include "actors/transfer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t inside the struct */
#include <xxhash.h>

#include "runtime/control/layer_catalogue.h"

struct dsla_transfer {
    dsla_proto_plan_layer_t layer; /* path not kept */
    char path[DSLA_PROTO_PATH_MAX + 1];
    char part[DSLA_PROTO_PATH_MAX + 32];
    uint32_t chunk;
    uint64_t received; /* the loop's: bytes accepted, the next LAYER_FETCH's offset */
    int fd;            /* the worker's, from here on */
    uint64_t written;
    bool done;
    XXH64_state_t hash;
};

dsla_status_t dsla_transfer_cache_init(const char *dir) {
    char path[DSLA_PROTO_PATH_MAX + 1];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "layer cache: the path %s is too long", dir);
    for (char *p = path + 1;; p++) { /* each parent, then the whole path */
        if (*p && *p != '/') continue;
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return dsla_error(DSLA_ERR_IO, "layer cache: cannot create %s: %s", path,
                              strerror(errno));
        *p = c;
        if (!c) break;
    }
    DIR *d = opendir(dir); /* what a crash left mid-fetch: never resumed, so removed */
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "layer-", 6) == 0 && n > 5 &&
            strcmp(e->d_name + n - 5, ".part") == 0 &&
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path)
            unlink(path);
    }
    if (d) closedir(d);
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK) != 0)
        return dsla_error(DSLA_ERR_IO, "layer cache: %s is not a writable directory", dir);
    return DSLA_OK;
}

dsla_status_t dsla_transfer_cache_path(const char *dir, const dsla_proto_plan_layer_t *l, char *out,
                                       size_t cap) {
    int n = snprintf(out, cap, "%s/layer-%d-v%u-%016" PRIx64 ".safetensors", dir, l->layer,
                     l->version, l->xxh64);
    if (n < 0 || (size_t)n >= cap)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "layer cache: paths under %s are too long",
                          dir);
    return DSLA_OK;
}

bool dsla_transfer_cached(const char *path, const dsla_proto_plan_layer_t *l) {
    if (access(path, F_OK) != 0) return false;
    uint64_t size = 0, xxh = 0;
    if (dsla_catalogue_file_digest(path, &size, &xxh) == DSLA_OK && size == l->size &&
        xxh == l->xxh64)
        return true;
    unlink(path); /* never trusted again: fetched afresh */
    return false;
}

dsla_status_t dsla_transfer_begin(dsla_transfer_t **out, const char *path,
                                  const dsla_proto_plan_layer_t *l, uint32_t chunk) {
    *out = NULL;
    if (chunk == 0 || chunk > DSLA_PROTO_CHUNK_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "layer transfer: chunk %u outside [1, %u]",
                          chunk, DSLA_PROTO_CHUNK_MAX);
    if (l->size > DSLA_PROTO_LAYER_FILE_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "layer transfer: layer %d's file of %" PRIu64
                          " bytes is above the limit of %llu",
                          l->layer, l->size, (unsigned long long)DSLA_PROTO_LAYER_FILE_MAX);
    dsla_transfer_t *t = calloc(1, sizeof *t);
    if (!t) return dsla_error_oom("layer transfer");
    t->layer = *l;
    t->layer.path = NULL;
    t->chunk = chunk;
    snprintf(t->path, sizeof t->path, "%s", path);
    /* a name of its own: a superseded fetch of the same version may still be writing its own */
    static atomic_uint next_part;
    snprintf(t->part, sizeof t->part, "%s.%u.part", path, atomic_fetch_add(&next_part, 1));
    XXH64_reset(&t->hash, 0);
    t->fd = open(t->part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (t->fd < 0) {
        dsla_status_t st = dsla_error(DSLA_ERR_IO, "layer transfer: cannot create %s: %s", t->part,
                                      strerror(errno));
        free(t);
        return st;
    }
    *out = t;
    return DSLA_OK;
}

void dsla_transfer_request(const dsla_transfer_t *t, dsla_proto_layer_fetch_t *out) {
    uint64_t left = t->layer.size - t->received;
    *out =
        (dsla_proto_layer_fetch_t){.layer = t->layer.layer,
                                   .version = t->layer.version,
                                   .xxh64 = t->layer.xxh64,
                                   .offset = t->received,
                                   .max_len = left && left < t->chunk ? (uint32_t)left : t->chunk};
}

/* fsync of the file, the rename, fsync of its directory: the file survives a crash whole. */
static dsla_status_t commit(dsla_transfer_t *t) {
    if (fsync(t->fd) != 0 || close(t->fd) != 0) {
        t->fd = -1;
        return dsla_error(DSLA_ERR_IO, "layer transfer: cannot sync %s: %s", t->part,
                          strerror(errno));
    }
    t->fd = -1;
    uint64_t xxh = XXH64_digest(&t->hash);
    if (xxh != t->layer.xxh64)
        return dsla_error(DSLA_ERR_FORMAT,
                          "layer transfer: layer %d version %u arrived with xxh64 %016" PRIx64
                          ", announced %016" PRIx64,
                          t->layer.layer, t->layer.version, xxh, t->layer.xxh64);
    if (rename(t->part, t->path) != 0)
        return dsla_error(DSLA_ERR_IO, "layer transfer: cannot rename %s: %s", t->part,
                          strerror(errno));
    char dir[DSLA_PROTO_PATH_MAX + 1];
    snprintf(dir, sizeof dir, "%s", t->path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd); /* best effort: some filesystems refuse to sync directories */
        close(dfd);
    }
    t->done = true;
    return DSLA_OK;
}

dsla_status_t dsla_transfer_accept(dsla_transfer_t *t, const dsla_proto_layer_chunk_t *c,
                                   bool *last) {
    *last = false;
    if (t->received >= t->layer.size && t->layer.size > 0)
        return dsla_error(DSLA_ERR_INTERNAL, "layer transfer: %s is complete", t->path);
    if (c->layer != t->layer.layer || c->version != t->layer.version ||
        c->xxh64 != t->layer.xxh64 || c->offset != t->received)
        return dsla_error(DSLA_ERR_FORMAT,
                          "layer transfer: got layer %d version %u offset %" PRIu64
                          ", asked for layer %d version %u offset %" PRIu64,
                          c->layer, c->version, c->offset, t->layer.layer, t->layer.version,
                          t->received);
    if (c->total_size != t->layer.size || (c->len == 0 && t->received < t->layer.size) ||
        c->len > t->layer.size - t->received)
        return dsla_error(DSLA_ERR_FORMAT,
                          "layer transfer: layer %d's file is %" PRIu64
                          " bytes at the controller, announced %" PRIu64,
                          t->layer.layer, c->total_size, t->layer.size);
    t->received += c->len;
    *last = t->received == t->layer.size;
    return DSLA_OK;
}

dsla_status_t dsla_transfer_write(dsla_transfer_t *t, const void *bytes, size_t len, bool *done) {
    *done = false;
    if (t->fd < 0 || t->done)
        return dsla_error(DSLA_ERR_INTERNAL, "layer transfer: %s is finished", t->path);
    for (size_t off = 0; off < len;) {
        ssize_t n = write(t->fd, (const char *)bytes + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            return dsla_error(DSLA_ERR_IO, "layer transfer: cannot write %s: %s", t->part,
                              n < 0 ? strerror(errno) : "no space");
        off += (size_t)n;
    }
    XXH64_update(&t->hash, bytes, len);
    t->written += len;
    if (t->written < t->layer.size) return DSLA_OK;
    DSLA_TRY(commit(t));
    *done = true;
    return DSLA_OK;
}

void dsla_transfer_destroy(dsla_transfer_t **t) {
    if (!t || !*t) return;
    if ((*t)->fd >= 0) close((*t)->fd);
    if (!(*t)->done) unlink((*t)->part);
    free(*t);
    *t = NULL;
}

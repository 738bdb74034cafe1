/* safetensors reader and writer; see safetensors.h for the contract.
 *
 * The reader trusts nothing in a file until the whole header has been checked: every number that
 * later becomes a pointer (header length, data_offsets, shape x dtype size) is bounded against the
 * mapping first, with overflow checks, so that a hostile file ends in DSLA_ERR_FORMAT, not a fault.
 */
#include "runtime/model/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/model/json_util.h"

/* The 8-byte little-endian header length that opens every safetensors file. */
enum { ST_LENGTH_BYTES = 8 };
/* Real headers are ~100 bytes per tensor (a 1000-tensor Llama has ~150 KB); the reference
 * implementation refuses more than 100 MB, and so do we, before handing the text to a parser. */
#define ST_MAX_HEADER_BYTES ((uint64_t)100 * 1000 * 1000)
/* The header is padded so that the data section starts 8-byte aligned, as the reference writer
 * does. */
enum { ST_HEADER_ALIGN = 8 };

static const char ST_INDEX_NAME[] = "model.safetensors.index.json";
static const char ST_SINGLE_NAME[] = "model.safetensors";
static const char ST_METADATA_KEY[] = "__metadata__";

typedef struct {
    char *path;
    void *map;
    size_t size;
} st_file_t;

/* pub first so that a dsla_st_tensor_t pointer handed out is also an st_entry_t pointer. */
typedef struct {
    dsla_st_tensor_t pub;
    size_t file;         /* index into files[], for messages and the index.json cross-check */
    uint64_t begin, end; /* data_offsets, relative to the file's data section */
} st_entry_t;

typedef struct {
    char *key;
    char *value;
} st_meta_t;

struct dsla_safetensors {
    char *path; /* what the caller opened: a file or a directory */
    st_file_t *files;
    size_t num_files;
    st_entry_t *entries;
    size_t num_entries, cap_entries;
    st_entry_t **by_name; /* entries sorted by name, for bsearch */
    st_meta_t *meta;      /* __metadata__ of files[0] */
    size_t num_meta;
};

/* ---- small helpers ----------------------------------------------------------------------------
 */

static char *st_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static char *st_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Formats shape as "[a, b, c]" into buf (always NUL-terminated). */
static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t used = 0;
    int n = snprintf(buf, cap, "[");
    used = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < ndim && used < cap; i++) {
        n = snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
    if (used < cap) snprintf(buf + used, cap - used, "]");
}

typedef struct {
    const char *name;
    bool supported;
    dsla_dtype_t dtype;
} st_dtype_entry_t;

/* Every dtype the safetensors format defines; only the supported ones map to a dsla dtype. */
static const st_dtype_entry_t ST_DTYPES[] = {
    {"F32", true, DSLA_DTYPE_F32},
    {"F16", true, DSLA_DTYPE_F16},
    {"BF16", true, DSLA_DTYPE_BF16},
    {"I32", true, DSLA_DTYPE_I32},
    {"I64", true, DSLA_DTYPE_I64},
    {"F64", true, DSLA_DTYPE_F64},
    {"BOOL", false, 0},
    {"U8", false, 0},
    {"I8", false, 0},
    {"U16", false, 0},
    {"I16", false, 0},
    {"U32", false, 0},
    {"U64", false, 0},
    {"F8_E4M3", false, 0},
    {"F8_E5M2", false, 0},
    {"F8_E8M0", false, 0},
    {"F6_E2M3", false, 0},
    {"F6_E3M2", false, 0},
    {"F4", false, 0},
    {"C64", false, 0},
};

static const st_dtype_entry_t *dtype_lookup(const char *name) {
    for (size_t i = 0; i < sizeof ST_DTYPES / sizeof ST_DTYPES[0]; i++)
        if (strcmp(ST_DTYPES[i].name, name) == 0) return &ST_DTYPES[i];
    return NULL;
}

static bool dtype_is_valid(dsla_dtype_t dtype) {
    switch (dtype) {
    case DSLA_DTYPE_F32:
    case DSLA_DTYPE_F16:
    case DSLA_DTYPE_BF16:
    case DSLA_DTYPE_I32:
    case DSLA_DTYPE_F64:
    case DSLA_DTYPE_I64:
        return true;
    }
    return false;
}

/* numel x dtype size with overflow checks; false when the product does not fit. */
static bool shape_bytes(int ndim, const int64_t *shape, size_t elem, uint64_t *out) {
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && n > (uint64_t)INT64_MAX / d) return false;
        n *= d;
    }
    if (n > SIZE_MAX / elem || n > (uint64_t)INT64_MAX / elem) return false;
    *out = n * elem;
    return true;
}

/* ---- reading one file ------------------------------------------------------------------------ */

static dsla_status_t map_file(st_file_t *f, const char *path) {
    f->path = st_strdup(path);
    if (!f->path) return dsla_error_oom("a path");
    /* O_NONBLOCK: a FIFO opens at once (and is then refused as no regular file) instead of
     * blocking until a writer comes; it changes nothing for a regular file. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        dsla_status_t code = errno == ENOENT ? DSLA_ERR_NOT_FOUND : DSLA_ERR_IO;
        return dsla_error(code, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return dsla_error(DSLA_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return dsla_error(DSLA_ERR_FORMAT, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size < ST_LENGTH_BYTES) {
        close(fd);
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: file is %lld bytes, too short for the %d-byte header length "
                          "(truncated?)",
                          path, (long long)sb.st_size, ST_LENGTH_BYTES);
    }
    f->size = (size_t)sb.st_size;
    void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) {
        dsla_status_t status =
            dsla_error(DSLA_ERR_IO, "%s: cannot mmap %zu bytes: %s", path, f->size, strerror(e));
        f->size = 0;
        return status;
    }
    f->map = map;
    return DSLA_OK;
}

static dsla_status_t push_entry(dsla_safetensors_t *st, st_entry_t **out) {
    if (st->num_entries == st->cap_entries) {
        size_t cap = st->cap_entries ? st->cap_entries * 2 : 64;
        st_entry_t *grown = realloc(st->entries, cap * sizeof *grown);
        if (!grown) return dsla_error_oom("tensor entries");
        st->entries = grown;
        st->cap_entries = cap;
    }
    *out = &st->entries[st->num_entries];
    memset(*out, 0, sizeof **out);
    return DSLA_OK;
}

static dsla_status_t parse_metadata(dsla_safetensors_t *st, const char *path, json_t *meta,
                                    bool keep) {
    if (!json_is_object(meta))
        return dsla_error(DSLA_ERR_FORMAT, "%s: '%s' must be an object of strings, found %s", path,
                          ST_METADATA_KEY, dsla_json_type_name(meta));
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return dsla_error(DSLA_ERR_FORMAT, "%s: '%s' key '%s' must be a string, found %s", path,
                              ST_METADATA_KEY, key, dsla_json_type_name(value));
    }
    if (!keep) return DSLA_OK;
    size_t n = json_object_size(meta);
    if (n == 0) return DSLA_OK;
    st->meta = calloc(n, sizeof *st->meta);
    if (!st->meta) return dsla_error_oom("metadata");
    json_object_foreach(meta, key, value) {
        st_meta_t *m = &st->meta[st->num_meta++];
        m->key = st_strdup(key);
        m->value = st_strdup(json_string_value(value));
        if (!m->key || !m->value) return dsla_error_oom("metadata");
    }
    return DSLA_OK;
}

/* Validates one header entry and appends it. data is the start of the data section. */
static dsla_status_t parse_tensor(dsla_safetensors_t *st, size_t file_index, const char *name,
                                  json_t *desc, const uint8_t *data, uint64_t data_size) {
    const char *path = st->files[file_index].path;
    if (!json_is_object(desc))
        return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': entry must be an object, found %s",
                          path, name, dsla_json_type_name(desc));

    json_t *jdtype = json_object_get(desc, "dtype");
    if (!jdtype) return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': missing 'dtype'", path, name);
    if (!json_is_string(jdtype))
        return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': 'dtype' must be a string, found %s",
                          path, name, dsla_json_type_name(jdtype));
    const char *dtype_name = json_string_value(jdtype);
    const st_dtype_entry_t *dt = dtype_lookup(dtype_name);
    if (!dt)
        return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path, name,
                          dtype_name);
    if (!dt->supported)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: tensor '%s': dtype %s is not supported (F32, F16, BF16, I32, I64 "
                          "and F64 are)",
                          path, name, dtype_name);

    json_t *jshape = json_object_get(desc, "shape");
    if (!jshape) return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': missing 'shape'", path, name);
    if (!json_is_array(jshape))
        return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': 'shape' must be an array, found %s",
                          path, name, dsla_json_type_name(jshape));
    size_t ndim = json_array_size(jshape);
    if (ndim > DSLA_TENSOR_MAX_DIMS)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: tensor '%s': %zu dimensions, at most %d are supported", path, name,
                          ndim, DSLA_TENSOR_MAX_DIMS);
    int64_t shape[DSLA_TENSOR_MAX_DIMS] = {0};
    for (size_t i = 0; i < ndim; i++) {
        json_t *d = json_array_get(jshape, i);
        if (!json_is_integer(d))
            return dsla_error(DSLA_ERR_FORMAT,
                              "%s: tensor '%s': shape[%zu] must be an integer, found %s", path,
                              name, i, dsla_json_type_name(d));
        json_int_t v = json_integer_value(d);
        if (v < 0)
            return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': shape[%zu] = %lld is negative",
                              path, name, i, (long long)v);
        shape[i] = (int64_t)v;
    }
    size_t elem = dsla_dtype_size(dt->dtype);
    uint64_t bytes;
    if (!shape_bytes((int)ndim, shape, elem, &bytes)) {
        char buf[160];
        format_shape(buf, sizeof buf, (int)ndim, shape);
        return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': shape %s x %zu bytes overflows", path,
                          name, buf, elem);
    }

    json_t *joff = json_object_get(desc, "data_offsets");
    if (!joff)
        return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': missing 'data_offsets'", path, name);
    if (!json_is_array(joff) || json_array_size(joff) != 2 ||
        !json_is_integer(json_array_get(joff, 0)) || !json_is_integer(json_array_get(joff, 1)))
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: tensor '%s': 'data_offsets' must be [begin, end] integers", path,
                          name);
    json_int_t begin = json_integer_value(json_array_get(joff, 0));
    json_int_t end = json_integer_value(json_array_get(joff, 1));
    if (begin < 0 || end < begin || (uint64_t)end > data_size)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%lld, %lld] are outside the %llu-byte "
                          "data section (truncated file?)",
                          path, name, (long long)begin, (long long)end,
                          (unsigned long long)data_size);
    if ((uint64_t)(end - begin) != bytes) {
        char buf[160];
        format_shape(buf, sizeof buf, (int)ndim, shape);
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%lld, %lld] span %lld bytes, but %s %s "
                          "needs %llu",
                          path, name, (long long)begin, (long long)end, (long long)(end - begin),
                          dtype_name, buf, (unsigned long long)bytes);
    }

    st_entry_t *e = NULL;
    DSLA_TRY(push_entry(st, &e));
    char *owned = st_strdup(name);
    if (!owned) return dsla_error_oom("a tensor name");
    e->pub.name = owned;
    e->pub.dtype = dt->dtype;
    e->pub.ndim = (int)ndim;
    memcpy(e->pub.shape, shape, sizeof shape);
    e->pub.data = data + begin;
    e->pub.bytes = (size_t)bytes;
    e->file = file_index;
    e->begin = (uint64_t)begin;
    e->end = (uint64_t)end;
    st->num_entries++;
    return DSLA_OK;
}

static int cmp_entry_offset(const void *a, const void *b) {
    const st_entry_t *x = *(const st_entry_t *const *)a, *y = *(const st_entry_t *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* The format requires the tensors to tile the data section exactly: no overlaps (two names for the
 * same bytes) and no holes or trailing bytes (room for a second, hidden payload). */
static dsla_status_t check_layout(dsla_safetensors_t *st, const char *path, size_t first,
                                  uint64_t data_size) {
    size_t n = st->num_entries - first;
    if (n == 0) {
        if (data_size != 0)
            return dsla_error(DSLA_ERR_FORMAT, "%s: no tensors, but %llu bytes follow the header",
                              path, (unsigned long long)data_size);
        return DSLA_OK;
    }
    st_entry_t **sorted = malloc(n * sizeof *sorted);
    if (!sorted) return dsla_error_oom("sorting tensors");
    for (size_t i = 0; i < n; i++)
        sorted[i] = &st->entries[first + i];
    qsort(sorted, n, sizeof *sorted, cmp_entry_offset);
    dsla_status_t status = DSLA_OK;
    uint64_t covered = 0;
    const char *covered_by = NULL;
    for (size_t i = 0; i < n && status == DSLA_OK; i++) {
        const st_entry_t *e = sorted[i];
        if (e->begin < covered)
            status =
                dsla_error(DSLA_ERR_FORMAT,
                           "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' "
                           "(which ends at %llu)",
                           path, e->pub.name, (unsigned long long)e->begin,
                           (unsigned long long)e->end, covered_by, (unsigned long long)covered);
        else if (e->begin > covered)
            status = dsla_error(DSLA_ERR_FORMAT,
                                "%s: tensor '%s': data_offsets begin at %llu, leaving a hole "
                                "after byte %llu",
                                path, e->pub.name, (unsigned long long)e->begin,
                                (unsigned long long)covered);
        if (e->end > covered || !covered_by) {
            covered = e->end;
            covered_by = e->pub.name;
        }
    }
    if (status == DSLA_OK && covered != data_size)
        status = dsla_error(DSLA_ERR_FORMAT,
                            "%s: tensors end at byte %llu of a %llu-byte data section "
                            "(trailing bytes)",
                            path, (unsigned long long)covered, (unsigned long long)data_size);
    free(sorted);
    return status;
}

/* Maps and validates one file, appending its tensors; keep_meta for the first file only. */
static dsla_status_t add_file(dsla_safetensors_t *st, const char *path, bool keep_meta) {
    st_file_t *grown = realloc(st->files, (st->num_files + 1) * sizeof *grown);
    if (!grown) return dsla_error_oom("a file entry");
    st->files = grown;
    size_t file_index = st->num_files++;
    st_file_t *f = &st->files[file_index];
    memset(f, 0, sizeof *f);
    DSLA_TRY(map_file(f, path));

    const uint8_t *bytes = f->map;
    uint64_t header_len = 0;
    for (int i = 0; i < ST_LENGTH_BYTES; i++)
        header_len |= (uint64_t)bytes[i] << (8 * i);
    uint64_t available = (uint64_t)f->size - ST_LENGTH_BYTES;
    /* The length's value is never printed, nor the parser's view of the text: for a file that is
     * no safetensors file they are its first bytes, and a refusal may travel to a peer that named
     * the path (a plan naming /etc/shadow must not read its first 8 bytes back). */
    if (header_len > ST_MAX_HEADER_BYTES)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: header length exceeds the %llu-byte limit (not a safetensors "
                          "file?)",
                          path, (unsigned long long)ST_MAX_HEADER_BYTES);
    if (header_len > available)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: header length exceeds the %llu bytes after the length field "
                          "(truncated file?)",
                          path, (unsigned long long)available);
    if (header_len < 2)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: header length is below 2, too short for a JSON object", path);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)bytes + ST_LENGTH_BYTES, (size_t)header_len,
                              JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return dsla_error(DSLA_ERR_FORMAT, "%s: header is not valid JSON (line %d, column %d)",
                          path, jerr.line, jerr.column);
    dsla_status_t status = DSLA_OK;
    if (!json_is_object(root)) {
        status = dsla_error(DSLA_ERR_FORMAT, "%s: header must be a JSON object, found %s", path,
                            dsla_json_type_name(root));
        json_decref(root);
        return status;
    }

    const uint8_t *data = bytes + ST_LENGTH_BYTES + header_len;
    uint64_t data_size = available - header_len;
    size_t first = st->num_entries;
    const char *name;
    json_t *desc;
    json_object_foreach(root, name, desc) {
        if (strcmp(name, ST_METADATA_KEY) == 0)
            status = parse_metadata(st, path, desc, keep_meta);
        else
            status = parse_tensor(st, file_index, name, desc, data, data_size);
        if (status != DSLA_OK) break;
    }
    json_decref(root);
    if (status != DSLA_OK) return status;
    return check_layout(st, path, first, data_size);
}

static int cmp_entry_name(const void *a, const void *b) {
    const st_entry_t *x = *(const st_entry_t *const *)a, *y = *(const st_entry_t *const *)b;
    return strcmp(x->pub.name, y->pub.name);
}

static dsla_status_t build_name_index(dsla_safetensors_t *st) {
    if (st->num_entries == 0) return DSLA_OK;
    st->by_name = malloc(st->num_entries * sizeof *st->by_name);
    if (!st->by_name) return dsla_error_oom("a name index");
    for (size_t i = 0; i < st->num_entries; i++)
        st->by_name[i] = &st->entries[i];
    qsort(st->by_name, st->num_entries, sizeof *st->by_name, cmp_entry_name);
    for (size_t i = 1; i < st->num_entries; i++) {
        const st_entry_t *a = st->by_name[i - 1], *b = st->by_name[i];
        if (strcmp(a->pub.name, b->pub.name) == 0)
            return dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s' appears in both %s and %s",
                              st->path, a->pub.name, st->files[a->file].path,
                              st->files[b->file].path);
    }
    return DSLA_OK;
}

static const st_entry_t *find_entry(const dsla_safetensors_t *st, const char *name) {
    if (!st || !name || !st->by_name) return NULL;
    size_t lo = 0, hi = st->num_entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, st->by_name[mid]->pub.name);
        if (c == 0) return st->by_name[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* ---- sharded checkpoints ----------------------------------------------------------------------
 */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard name comes from a file we do not trust: it must name a file beside the index. */
static bool shard_name_is_safe(const char *name) {
    return name[0] != '\0' && !strchr(name, '/') && !strstr(name, "..");
}

static dsla_status_t open_index(dsla_safetensors_t *st, const char *dir, const char *index_path) {
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return dsla_error(DSLA_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", index_path, jerr.line,
                          jerr.column, jerr.text);
    dsla_status_t status = DSLA_OK;
    const char **shards = NULL;
    json_t *map = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!map || !json_is_object(map)) {
        status = dsla_error(DSLA_ERR_FORMAT, "%s: 'weight_map' must be an object, found %s",
                            index_path, map ? dsla_json_type_name(map) : "nothing");
        goto done;
    }
    size_t n = json_object_size(map);
    if (n == 0) {
        status = dsla_error(DSLA_ERR_FORMAT, "%s: 'weight_map' names no tensors", index_path);
        goto done;
    }
    shards = malloc(n * sizeof *shards);
    if (!shards) {
        status = dsla_error_oom("reading %s", index_path);
        goto done;
    }
    size_t k = 0;
    const char *tensor;
    json_t *shard;
    json_object_foreach(map, tensor, shard) {
        if (!json_is_string(shard)) {
            status =
                dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s': shard must be a file name, found %s",
                           index_path, tensor, dsla_json_type_name(shard));
            goto done;
        }
        const char *s = json_string_value(shard);
        if (!shard_name_is_safe(s)) {
            status = dsla_error(DSLA_ERR_FORMAT,
                                "%s: tensor '%s': shard '%s' must be a plain file name in the "
                                "same directory (no '/' or '..')",
                                index_path, tensor, s);
            goto done;
        }
        shards[k++] = s;
    }
    /* Sorted, so that files[0] (whose __metadata__ we keep) is the first shard by name. */
    qsort(shards, k, sizeof *shards, cmp_str);
    for (size_t i = 0; i < k && status == DSLA_OK; i++) {
        if (i > 0 && strcmp(shards[i], shards[i - 1]) == 0) continue;
        char *shard_path = st_join(dir, shards[i]);
        if (!shard_path) {
            status = dsla_error_oom("a path");
            break;
        }
        status = add_file(st, shard_path, st->num_files == 0);
        if (status == DSLA_ERR_NOT_FOUND)
            dsla_error_wrap(status, "%s names shard %s, which is missing: ", index_path, shards[i]);
        free(shard_path);
    }
    if (status == DSLA_OK) status = build_name_index(st);
    if (status != DSLA_OK) goto done;
    json_object_foreach(map, tensor, shard) {
        const st_entry_t *e = find_entry(st, tensor);
        const char *want = json_string_value(shard);
        if (!e) {
            status = dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s' is mapped to %s, which lacks it",
                                index_path, tensor, want);
            break;
        }
        const char *have = strrchr(st->files[e->file].path, '/');
        have = have ? have + 1 : st->files[e->file].path;
        if (strcmp(have, want) != 0) {
            status = dsla_error(DSLA_ERR_FORMAT, "%s: tensor '%s' is mapped to %s but found in %s",
                                index_path, tensor, want, have);
            break;
        }
    }
done:
    free(shards);
    json_decref(root);
    return status;
}

/* ---- public reader API ----------------------------------------------------------------------- */

dsla_status_t dsla_safetensors_open(dsla_safetensors_t **out, const char *path) {
    if (!out || !path)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_safetensors_open: NULL argument");
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        dsla_status_t code = errno == ENOENT ? DSLA_ERR_NOT_FOUND : DSLA_ERR_IO;
        return dsla_error(code, "%s: cannot open: %s", path, strerror(errno));
    }
    dsla_safetensors_t *st = calloc(1, sizeof *st);
    if (!st || !(st->path = st_strdup(path))) {
        free(st);
        return dsla_error_oom("opening %s", path);
    }
    dsla_status_t status;
    if (S_ISDIR(sb.st_mode)) {
        char *index_path = st_join(path, ST_INDEX_NAME);
        char *single_path = st_join(path, ST_SINGLE_NAME);
        if (!index_path || !single_path) {
            status = dsla_error_oom("opening %s", path);
        } else if (access(index_path, F_OK) == 0) {
            status = open_index(st, path, index_path);
        } else if (access(single_path, F_OK) == 0) {
            status = add_file(st, single_path, true);
            if (status == DSLA_OK) status = build_name_index(st);
        } else {
            status = dsla_error(DSLA_ERR_NOT_FOUND, "%s: neither %s nor %s exists", path,
                                ST_INDEX_NAME, ST_SINGLE_NAME);
        }
        free(index_path);
        free(single_path);
    } else {
        status = add_file(st, path, true);
        if (status == DSLA_OK) status = build_name_index(st);
    }
    if (status != DSLA_OK) {
        dsla_safetensors_close(&st);
        return status;
    }
    *out = st;
    return DSLA_OK;
}

void dsla_safetensors_close(dsla_safetensors_t **pst) {
    if (!pst || !*pst) return;
    dsla_safetensors_t *st = *pst;
    for (size_t i = 0; i < st->num_files; i++) {
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
        free(st->files[i].path);
    }
    for (size_t i = 0; i < st->num_entries; i++)
        free((char *)st->entries[i].pub.name);
    for (size_t i = 0; i < st->num_meta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->meta);
    free(st->by_name);
    free(st->entries);
    free(st->files);
    free(st->path);
    free(st);
    *pst = NULL;
}

size_t dsla_safetensors_count(const dsla_safetensors_t *st) {
    return st ? st->num_entries : 0;
}

const dsla_st_tensor_t *dsla_safetensors_at(const dsla_safetensors_t *st, size_t index) {
    if (!st || index >= st->num_entries) return NULL;
    return &st->entries[index].pub;
}

const dsla_st_tensor_t *dsla_safetensors_find(const dsla_safetensors_t *st, const char *name) {
    const st_entry_t *e = find_entry(st, name);
    return e ? &e->pub : NULL;
}

const char *dsla_safetensors_metadata(const dsla_safetensors_t *st, const char *key) {
    if (!st || !key) return NULL;
    for (size_t i = 0; i < st->num_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
    return NULL;
}

dsla_status_t dsla_safetensors_expect(const dsla_safetensors_t *st, const char *name, int ndim,
                                      const int64_t *shape, const dsla_st_tensor_t **out) {
    if (out) *out = NULL;
    if (!st || !name || (ndim > 0 && !shape))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_safetensors_expect: NULL argument");
    const st_entry_t *e = find_entry(st, name);
    if (!e) return dsla_error(DSLA_ERR_NOT_FOUND, "%s: tensor '%s' not found", st->path, name);
    bool same = e->pub.ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = e->pub.shape[i] == shape[i];
    if (!same) {
        char found[160], expected[160];
        format_shape(found, sizeof found, e->pub.ndim, e->pub.shape);
        format_shape(expected, sizeof expected, ndim < 0 ? 0 : ndim, shape);
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: tensor '%s': shape %s does not match the expected %s",
                          st->files[e->file].path, name, found, expected);
    }
    if (out) *out = &e->pub;
    return DSLA_OK;
}

dsla_status_t dsla_safetensors_read_f32(const dsla_safetensors_t *st, const char *name, int ndim,
                                        const int64_t *shape, float *dst) {
    const dsla_st_tensor_t *t = NULL;
    DSLA_TRY(dsla_safetensors_expect(st, name, ndim, shape, &t));
    if (t->dtype != DSLA_DTYPE_F32 && t->dtype != DSLA_DTYPE_F16 && t->dtype != DSLA_DTYPE_BF16 &&
        t->dtype != DSLA_DTYPE_F64)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: tensor '%s': dtype %s is not a floating type", st->path, name,
                          dsla_dtype_name(t->dtype));
    size_t elem = dsla_dtype_size(t->dtype);
    size_t n = t->bytes / elem;
    if (n > 0 && !dst)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_safetensors_read_f32: NULL dst");
    if ((uintptr_t)t->data % elem == 0) {
        dsla_convert_to_f32(dst, t->data, t->dtype, n);
        return DSLA_OK;
    }
    /* A header length that is not a multiple of 8 leaves the data misaligned; converting straight
     * from it would be undefined behaviour, so go through an aligned bounce buffer. */
    enum { BOUNCE_ELEMS = 1024 };
    double bounce[BOUNCE_ELEMS];
    size_t chunk = sizeof bounce / elem;
    const uint8_t *src = t->data;
    for (size_t i = 0; i < n; i += chunk) {
        size_t m = n - i < chunk ? n - i : chunk;
        memcpy(bounce, src + i * elem, m * elem);
        dsla_convert_to_f32(dst + i, bounce, t->dtype, m);
    }
    return DSLA_OK;
}

/* ---- writer -----------------------------------------------------------------------------------
 */

typedef struct {
    char *name;
    dsla_dtype_t dtype;
    int ndim;
    int64_t shape[DSLA_TENSOR_MAX_DIMS];
    void *data;
    size_t bytes;
} st_wtensor_t;

struct dsla_st_writer {
    st_wtensor_t *tensors;
    size_t num, cap;
    st_meta_t *meta;
    size_t num_meta;
};

dsla_status_t dsla_st_writer_create(dsla_st_writer_t **out) {
    if (!out) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_st_writer_create: NULL out");
    *out = calloc(1, sizeof **out);
    if (!*out) return dsla_error_oom("a safetensors writer");
    return DSLA_OK;
}

void dsla_st_writer_destroy(dsla_st_writer_t **pw) {
    if (!pw || !*pw) return;
    dsla_st_writer_t *w = *pw;
    for (size_t i = 0; i < w->num; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    for (size_t i = 0; i < w->num_meta; i++) {
        free(w->meta[i].key);
        free(w->meta[i].value);
    }
    free(w->tensors);
    free(w->meta);
    free(w);
    *pw = NULL;
}

dsla_status_t dsla_st_writer_add(dsla_st_writer_t *w, const char *name, dsla_dtype_t dtype,
                                 int ndim, const int64_t *shape, const void *data) {
    if (!w || !name || (ndim > 0 && !shape))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_st_writer_add: NULL argument");
    if (name[0] == '\0' || strcmp(name, ST_METADATA_KEY) == 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "safetensors writer: invalid tensor name '%s'",
                          name);
    if (!dtype_is_valid(dtype))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "safetensors writer: tensor '%s': bad dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > DSLA_TENSOR_MAX_DIMS)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "safetensors writer: tensor '%s': ndim %d is outside 0..%d", name, ndim,
                          DSLA_TENSOR_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "safetensors writer: tensor '%s': shape[%d] = %lld is negative", name,
                              i, (long long)shape[i]);
    uint64_t bytes;
    if (!shape_bytes(ndim, shape, dsla_dtype_size(dtype), &bytes))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "safetensors writer: tensor '%s': size overflows", name);
    if (bytes > 0 && !data)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "safetensors writer: tensor '%s': NULL data",
                          name);
    if (w->num == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        st_wtensor_t *grown = realloc(w->tensors, cap * sizeof *grown);
        if (!grown) return dsla_error_oom("adding '%s'", name);
        w->tensors = grown;
        w->cap = cap;
    }
    st_wtensor_t *t = &w->tensors[w->num];
    memset(t, 0, sizeof *t);
    t->name = st_strdup(name);
    t->data = bytes ? malloc((size_t)bytes) : NULL;
    if (!t->name || (bytes && !t->data)) {
        free(t->name);
        free(t->data);
        return dsla_error_oom("copying tensor '%s' (%llu bytes)", name, (unsigned long long)bytes);
    }
    if (bytes) memcpy(t->data, data, (size_t)bytes);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->bytes = (size_t)bytes;
    w->num++;
    return DSLA_OK;
}

dsla_status_t dsla_st_writer_set_metadata(dsla_st_writer_t *w, const char *key, const char *value) {
    if (!w || !key || !value)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_st_writer_set_metadata: NULL argument");
    for (size_t i = 0; i < w->num_meta; i++) {
        if (strcmp(w->meta[i].key, key) == 0) {
            char *v = st_strdup(value);
            if (!v) return dsla_error_oom("metadata");
            free(w->meta[i].value);
            w->meta[i].value = v;
            return DSLA_OK;
        }
    }
    st_meta_t *grown = realloc(w->meta, (w->num_meta + 1) * sizeof *grown);
    if (!grown) return dsla_error_oom("metadata");
    w->meta = grown;
    st_meta_t *m = &w->meta[w->num_meta];
    m->key = st_strdup(key);
    m->value = st_strdup(value);
    if (!m->key || !m->value) {
        free(m->key);
        free(m->value);
        return dsla_error_oom("metadata");
    }
    w->num_meta++;
    return DSLA_OK;
}

static const char *dtype_st_name(dsla_dtype_t dtype) {
    for (size_t i = 0; i < sizeof ST_DTYPES / sizeof ST_DTYPES[0]; i++)
        if (ST_DTYPES[i].supported && ST_DTYPES[i].dtype == dtype) return ST_DTYPES[i].name;
    return "?";
}

static int cmp_wtensor_name(const void *a, const void *b) {
    return strcmp((*(const st_wtensor_t *const *)a)->name, (*(const st_wtensor_t *const *)b)->name);
}

static dsla_status_t check_unique_names(const dsla_st_writer_t *w, const char *path) {
    if (w->num < 2) return DSLA_OK;
    const st_wtensor_t **sorted = malloc(w->num * sizeof *sorted);
    if (!sorted) return dsla_error_oom("saving %s", path);
    for (size_t i = 0; i < w->num; i++)
        sorted[i] = &w->tensors[i];
    qsort(sorted, w->num, sizeof *sorted, cmp_wtensor_name);
    dsla_status_t status = DSLA_OK;
    for (size_t i = 1; i < w->num; i++) {
        if (strcmp(sorted[i]->name, sorted[i - 1]->name) == 0) {
            status = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: tensor '%s' was added twice", path,
                                sorted[i]->name);
            break;
        }
    }
    free(sorted);
    return status;
}

/* The header JSON, padded with spaces to a multiple of 8 bytes. Caller frees *out. */
static dsla_status_t build_header(const dsla_st_writer_t *w, const char *path, char **out,
                                  size_t *out_len) {
    *out = NULL;
    json_t *root = json_object();
    if (!root) return dsla_error_oom("saving %s", path);
    bool ok = true;
    if (w->num_meta > 0) {
        json_t *meta = json_object();
        ok = meta && json_object_set_new(root, ST_METADATA_KEY, meta) == 0;
        for (size_t i = 0; ok && i < w->num_meta; i++)
            ok = json_object_set_new(meta, w->meta[i].key, json_string(w->meta[i].value)) == 0;
    }
    uint64_t offset = 0;
    for (size_t i = 0; ok && i < w->num; i++) {
        const st_wtensor_t *t = &w->tensors[i];
        json_t *shape = json_array();
        ok = shape != NULL;
        for (int d = 0; ok && d < t->ndim; d++)
            ok = json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) == 0;
        json_t *offsets = json_array();
        ok = ok && offsets &&
             json_array_append_new(offsets, json_integer((json_int_t)offset)) == 0 &&
             json_array_append_new(offsets, json_integer((json_int_t)(offset + t->bytes))) == 0;
        json_t *desc = json_object();
        /* set_new takes each reference even when it fails, so nothing leaks on the error path. */
        ok = ok && desc &&
             json_object_set_new(desc, "dtype", json_string(dtype_st_name(t->dtype))) == 0;
        ok = json_object_set_new(desc, "shape", shape) == 0 && ok;
        ok = json_object_set_new(desc, "data_offsets", offsets) == 0 && ok;
        ok = json_object_set_new(root, t->name, desc) == 0 && ok;
        offset += t->bytes;
    }
    char *text = ok ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!text) return dsla_error_oom("building the header of %s", path);
    size_t len = strlen(text);
    size_t padded = (len + ST_HEADER_ALIGN - 1) / ST_HEADER_ALIGN * ST_HEADER_ALIGN;
    char *buf = malloc(padded ? padded : 1);
    if (!buf) {
        free(text);
        return dsla_error_oom("building the header of %s", path);
    }
    memcpy(buf, text, len);
    memset(buf + len, ' ', padded - len);
    free(text);
    *out = buf;
    *out_len = padded;
    return DSLA_OK;
}

static dsla_status_t write_all(int fd, const void *buf, size_t len, const char *path) {
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            return dsla_error(DSLA_ERR_IO, "%s: write failed: %s", path,
                              n < 0 ? strerror(errno) : "no progress");
        p += n;
        len -= (size_t)n;
    }
    return DSLA_OK;
}

/* fsync the directory holding path, so that the rename itself survives a crash. */
static dsla_status_t sync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir;
    if (!slash) {
        dir = st_strdup(".");
    } else if (slash == path) {
        dir = st_strdup("/");
    } else {
        size_t n = (size_t)(slash - path);
        dir = malloc(n + 1);
        if (dir) {
            memcpy(dir, path, n);
            dir[n] = '\0';
        }
    }
    if (!dir) return dsla_error_oom("a path");
    dsla_status_t status = DSLA_OK;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0)
        status = dsla_error(DSLA_ERR_IO, "%s: cannot sync directory: %s", dir, strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return status;
}

dsla_status_t dsla_st_writer_save(dsla_st_writer_t *w, const char *path) {
    if (!w || !path)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_st_writer_save: NULL argument");
    DSLA_TRY(check_unique_names(w, path));
    char *header = NULL;
    size_t header_len = 0;
    DSLA_TRY(build_header(w, path, &header, &header_len));
    char *tmp = malloc(strlen(path) + 5);
    if (!tmp) {
        free(header);
        return dsla_error_oom("a path");
    }
    snprintf(tmp, strlen(path) + 5, "%s.tmp", path);
    dsla_status_t status = DSLA_OK;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        status = dsla_error(DSLA_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    uint8_t length[ST_LENGTH_BYTES];
    for (int i = 0; i < ST_LENGTH_BYTES; i++)
        length[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    status = write_all(fd, length, sizeof length, tmp);
    if (status == DSLA_OK) status = write_all(fd, header, header_len, tmp);
    for (size_t i = 0; status == DSLA_OK && i < w->num; i++)
        status = write_all(fd, w->tensors[i].data, w->tensors[i].bytes, tmp);
    if (status == DSLA_OK && fsync(fd) != 0)
        status = dsla_error(DSLA_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && status == DSLA_OK)
        status = dsla_error(DSLA_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (status == DSLA_OK && rename(tmp, path) != 0)
        status = dsla_error(DSLA_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (status == DSLA_OK)
        status = sync_parent_dir(path);
    else
        unlink(tmp);
done:
    free(tmp);
    free(header);
    return status;
}

/* The tokenizer handle: loading by content, the shared tables, the BPE merge engine that both
 * formats use, UTF-8 validation, decoding and the streaming detokenizer. Format specifics live in
 * tokenizer_bpe.c (HF tokenizer.json) and tokenizer_llama2c.c (llama2.c tokenizer.bin). */
#include "runtime/model/tokenizer_internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <xxhash.h>

/* ---- hash tables ---------------------------------------------------------------------------- */

static dsla_status_t strmap_grow(dsla_tok_strmap_t *m) {
    size_t cap = m->slots ? (m->mask + 1) * 2 : 64;
    dsla_tok_slot_t *slots = malloc(cap * sizeof *slots);
    if (!slots) return dsla_error_oom("tokenizer: vocabulary table");
    for (size_t i = 0; i < cap; i++)
        slots[i].id = -1;
    for (size_t i = 0; m->slots && i <= m->mask; i++) {
        dsla_tok_slot_t *o = &m->slots[i];
        if (o->id < 0) continue;
        size_t j = XXH3_64bits(o->key, o->len) & (cap - 1);
        while (slots[j].id >= 0)
            j = (j + 1) & (cap - 1);
        slots[j] = *o;
    }
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    return DSLA_OK;
}

dsla_status_t dsla_tok_strmap_put(dsla_tok_strmap_t *m, const char *key, uint32_t len, int32_t id) {
    if (!m->slots || (m->count + 1) * 2 > m->mask + 1) DSLA_TRY(strmap_grow(m));
    size_t j = XXH3_64bits(key, len) & m->mask;
    for (; m->slots[j].id >= 0; j = (j + 1) & m->mask) {
        const dsla_tok_slot_t *s = &m->slots[j];
        if (s->len == len && memcmp(s->key, key, len) == 0) return DSLA_OK; /* first id wins */
    }
    m->slots[j] = (dsla_tok_slot_t){key, len, id};
    m->count++;
    return DSLA_OK;
}

int32_t dsla_tok_strmap_get(const dsla_tok_strmap_t *m, const char *key, size_t len) {
    if (!m->slots) return -1;
    for (size_t j = XXH3_64bits(key, len) & m->mask; m->slots[j].id >= 0; j = (j + 1) & m->mask) {
        const dsla_tok_slot_t *s = &m->slots[j];
        if (s->len == len && memcmp(s->key, key, len) == 0) return s->id;
    }
    return -1;
}

void dsla_tok_strmap_free(dsla_tok_strmap_t *m) {
    free(m->slots);
    *m = (dsla_tok_strmap_t){0};
}

static uint64_t pair_key(int32_t left, int32_t right) {
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

static size_t pair_hash(uint64_t key, size_t mask) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL; /* murmur3's finaliser: ids are small and sequential */
    key ^= key >> 33;
    return (size_t)key & mask;
}

static dsla_status_t pairmap_grow(dsla_tok_pairmap_t *m) {
    size_t cap = m->slots ? (m->mask + 1) * 2 : 64;
    dsla_tok_pair_t *slots = malloc(cap * sizeof *slots);
    if (!slots) return dsla_error_oom("tokenizer: merge table");
    for (size_t i = 0; i < cap; i++)
        slots[i].key = UINT64_MAX;
    for (size_t i = 0; m->slots && i <= m->mask; i++) {
        if (m->slots[i].key == UINT64_MAX) continue;
        size_t j = pair_hash(m->slots[i].key, cap - 1);
        while (slots[j].key != UINT64_MAX)
            j = (j + 1) & (cap - 1);
        slots[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = slots;
    m->mask = cap - 1;
    return DSLA_OK;
}

dsla_status_t dsla_tok_pairmap_put(dsla_tok_pairmap_t *m, int32_t left, int32_t right, double prio,
                                   int32_t new_id) {
    if (!m->slots || (m->count + 1) * 2 > m->mask + 1) DSLA_TRY(pairmap_grow(m));
    uint64_t key = pair_key(left, right);
    size_t j = pair_hash(key, m->mask);
    for (; m->slots[j].key != UINT64_MAX; j = (j + 1) & m->mask) {
        if (m->slots[j].key == key) { /* a repeated pair: the later entry wins, as HF's map does */
            m->slots[j].prio = prio;
            m->slots[j].new_id = new_id;
            return DSLA_OK;
        }
    }
    m->slots[j] = (dsla_tok_pair_t){key, prio, new_id};
    m->count++;
    return DSLA_OK;
}

const dsla_tok_pair_t *dsla_tok_pairmap_get(const dsla_tok_pairmap_t *m, int32_t left,
                                            int32_t right) {
    if (!m->slots) return NULL;
    uint64_t key = pair_key(left, right);
    for (size_t j = pair_hash(key, m->mask); m->slots[j].key != UINT64_MAX; j = (j + 1) & m->mask)
        if (m->slots[j].key == key) return &m->slots[j];
    return NULL;
}

void dsla_tok_pairmap_free(dsla_tok_pairmap_t *m) {
    free(m->slots);
    *m = (dsla_tok_pairmap_t){0};
}

dsla_status_t dsla_tok_ids_push(dsla_tok_ids_t *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return dsla_error_oom("tokenizer: %zu ids", cap);
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return DSLA_OK;
}

/* ---- shared tables -------------------------------------------------------------------------- */

dsla_status_t dsla_tok_alloc_tables(dsla_tokenizer_t *t, int32_t n) {
    size_t un = (size_t)n;
    t->n_vocab = n;
    t->piece = calloc(un, sizeof *t->piece);
    t->piece_len = calloc(un, sizeof *t->piece_len);
    t->special = calloc(un, 1);
    t->dec = calloc(un, sizeof *t->dec);
    t->dec_len = calloc(un, sizeof *t->dec_len);
    t->dec_is_byte = calloc(un, 1);
    if (!t->piece || !t->piece_len || !t->special || !t->dec || !t->dec_len || !t->dec_is_byte)
        return dsla_error_oom("tokenizer: tables for %d tokens", n);
    for (int32_t i = 0; i < n; i++)
        t->piece[i] = t->dec[i] = "";
    return DSLA_OK;
}

int dsla_tok_parse_byte_token(const char *s, size_t len) {
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9')   ? c - '0'
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                         : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

dsla_status_t dsla_tok_index_vocab(dsla_tokenizer_t *t) {
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (t->piece_len[i] > 0)
            DSLA_TRY(dsla_tok_strmap_put(&t->vocab, t->piece[i], t->piece_len[i], i));
    int found = 0;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = dsla_tok_strmap_get(&t->vocab, name, 6);
        found += t->byte_id[b] >= 0;
    }
    t->has_byte_tokens = found == 256;
    return DSLA_OK;
}

/* ---- the merge engine ----------------------------------------------------------------------- */

typedef struct {
    double prio;
    int32_t pos, left, right, new_id;
} merge_t;

typedef struct {
    int32_t id, prev, next; /* id -1: merged into its left neighbour */
} symbol_t;

static bool merge_before(const merge_t *a, const merge_t *b) {
    return a->prio < b->prio || (a->prio == b->prio && a->pos < b->pos);
}

static void heap_push(merge_t *heap, size_t *n, merge_t m) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_before(&m, &heap[p])) break;
        heap[i] = heap[p];
        i = p;
    }
    heap[i] = m;
}

static merge_t heap_pop(merge_t *heap, size_t *n) {
    merge_t top = heap[0], last = heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && merge_before(&heap[c + 1], &heap[c])) c++;
        if (!merge_before(&heap[c], &last)) break;
        heap[i] = heap[c];
        i = c;
    }
    if (*n > 0) heap[i] = last;
    return top;
}

static void push_pair(const dsla_tokenizer_t *t, const symbol_t *sym, int32_t pos, merge_t *heap,
                      size_t *n) {
    int32_t next = sym[pos].next;
    const dsla_tok_pair_t *p = dsla_tok_pairmap_get(&t->merges, sym[pos].id, sym[next].id);
    if (p) heap_push(heap, n, (merge_t){p->prio, pos, sym[pos].id, sym[next].id, p->new_id});
}

dsla_status_t dsla_tok_bpe_merge(const dsla_tokenizer_t *t, dsla_tok_ids_t *ids, size_t from) {
    size_t n = ids->n - from;
    if (n < 2 || t->merges.count == 0) return DSLA_OK;
    symbol_t *sym = malloc(n * sizeof *sym);
    /* every merge pushes at most two entries, on top of the n-1 initial pairs */
    merge_t *heap = malloc(3 * n * sizeof *heap);
    if (!sym || !heap) {
        free(sym);
        free(heap);
        return dsla_error_oom("tokenizer: merging %zu symbols", n);
    }
    for (size_t i = 0; i < n; i++)
        sym[i] = (symbol_t){ids->v[from + i], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    size_t nheap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        push_pair(t, sym, (int32_t)i, heap, &nheap);
    while (nheap > 0) {
        merge_t m = heap_pop(heap, &nheap);
        symbol_t *s = &sym[m.pos];
        /* entries go stale when either side has merged since they were pushed */
        if (s->id != m.left || s->next < 0 || sym[s->next].id != m.right) continue;
        int32_t right = s->next;
        s->id = m.new_id;
        s->next = sym[right].next;
        if (s->next >= 0) sym[s->next].prev = m.pos;
        sym[right].id = -1;
        if (s->prev >= 0) push_pair(t, sym, s->prev, heap, &nheap);
        if (s->next >= 0) push_pair(t, sym, m.pos, heap, &nheap);
    }
    size_t out = from;
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        ids->v[out++] = sym[i].id;
    ids->n = out;
    free(sym);
    free(heap);
    return DSLA_OK;
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

size_t dsla_tok_utf8_len(unsigned char lead) {
    return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

/* The allowed range of the second byte of a sequence led by `lead` (Unicode table 3-7): excludes
 * overlong forms, surrogates and code points above U+10FFFF. */
static void utf8_second_range(unsigned char lead, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (lead == 0xE0) *lo = 0xA0;
    if (lead == 0xED) *hi = 0x9F;
    if (lead == 0xF0) *lo = 0x90;
    if (lead == 0xF4) *hi = 0x8F;
}

static int utf8_need(unsigned char lead) {
    if (lead < 0x80) return 1;
    if (lead >= 0xC2 && lead <= 0xDF) return 2;
    if (lead >= 0xE0 && lead <= 0xEF) return 3;
    if (lead >= 0xF0 && lead <= 0xF4) return 4;
    return 0;
}

size_t dsla_tok_utf8_validate(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        int need = utf8_need(s[i]);
        if (need == 0 || i + (size_t)need > len) return i;
        unsigned char lo, hi;
        utf8_second_range(s[i], &lo, &hi);
        if (need > 1 && (s[i + 1] < lo || s[i + 1] > hi)) return i;
        for (int k = 2; k < need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += (size_t)need;
    }
    return len;
}

/* ---- loading -------------------------------------------------------------------------------- */

static dsla_status_t read_file(const char *path, unsigned char **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return dsla_error(errno == ENOENT ? DSLA_ERR_NOT_FOUND : DSLA_ERR_IO,
                          "tokenizer %s: cannot open: %s", path, strerror(errno));
    unsigned char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 1 << 16;
            unsigned char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return dsla_error_oom("tokenizer %s: reading", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        return dsla_error(DSLA_ERR_IO, "tokenizer %s: read failed", path);
    }
    buf[len] = '\0';
    *data = buf;
    *size = len;
    return DSLA_OK;
}

static dsla_tokenizer_t *tokenizer_new(void) {
    dsla_tokenizer_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->bos_id = t->eos_id = t->unk_id = t->space_id = -1;
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = -1;
    return t;
}

dsla_status_t dsla_tokenizer_load(dsla_tokenizer_t **out, const char *path) {
    if (!out || !path) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "tokenizer: NULL argument");
    *out = NULL;
    unsigned char *data = NULL;
    size_t size = 0;
    DSLA_TRY(read_file(path, &data, &size));
    dsla_tokenizer_t *t = tokenizer_new();
    if (!t) {
        free(data);
        return dsla_error_oom("tokenizer %s", path);
    }
    size_t i = 0;
    while (i < size && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r'))
        i++;
    dsla_status_t s;
    if (i < size && data[i] == '{') {
        t->kind = DSLA_TOK_HF;
        json_error_t jerr;
        json_t *root = json_loadb((const char *)data, size, 0, &jerr);
        if (!root)
            s = dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: malformed JSON at line %d column %d: %s",
                           path, jerr.line, jerr.column, jerr.text);
        else
            s = dsla_tok_hf_parse(t, root, path);
        /* the parsed tables replace the JSON tree, which is many times the file's size */
        json_decref(root);
        t->json_text = (char *)data;
        t->json_len = size;
    } else {
        t->kind = DSLA_TOK_LLAMA2C;
        s = dsla_tok_llama2c_parse(t, data, size, path);
        free(data);
    }
    if (s != DSLA_OK) {
        dsla_tokenizer_destroy(&t);
        return s;
    }
    if (t->kind == DSLA_TOK_LLAMA2C) t->add_bos_default = t->bos_id >= 0;
    *out = t;
    return DSLA_OK;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* llama2.c ships its tokenizers as tok<N>.bin; accept exactly one such file. */
static char *find_tok_bin(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return NULL;
    char *found = NULL;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n > 7 && strncmp(e->d_name, "tok", 3) == 0 && strcmp(e->d_name + n - 4, ".bin") == 0) {
            count++;
            free(found);
            found = join_path(dir, e->d_name);
        }
    }
    closedir(d);
    if (count != 1) {
        free(found);
        return NULL;
    }
    return found;
}

/* bos_token / eos_token in tokenizer_config.json are a string or an AddedToken object. */
static const char *config_token(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_string_value(v);
}

static dsla_status_t apply_config(dsla_tokenizer_t *t, const char *path) {
    json_error_t jerr;
    json_t *cfg = json_load_file(path, 0, &jerr);
    if (!cfg)
        return dsla_error(DSLA_ERR_FORMAT, "%s: malformed JSON at line %d column %d: %s", path,
                          jerr.line, jerr.column, jerr.text);
    dsla_status_t s = DSLA_OK;
    const char *keys[2] = {"bos_token", "eos_token"};
    int32_t *ids[2] = {&t->bos_id, &t->eos_id};
    for (int k = 0; k < 2 && s == DSLA_OK; k++) {
        const char *name = config_token(cfg, keys[k]);
        if (!name) continue;
        int32_t id = dsla_tokenizer_token_to_id(t, name);
        if (id < 0)
            s = dsla_error(DSLA_ERR_FORMAT, "%s: %s \"%s\" is not in the tokenizer's vocabulary",
                           path, keys[k], name);
        else
            *ids[k] = id;
    }
    json_t *add_bos = json_object_get(cfg, "add_bos_token");
    if (s == DSLA_OK && json_is_boolean(add_bos)) t->add_bos_default = json_is_true(add_bos);
    json_decref(cfg);
    return s;
}

dsla_status_t dsla_tokenizer_load_dir(dsla_tokenizer_t **out, const char *model_dir) {
    if (!out || !model_dir)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "tokenizer: NULL argument");
    *out = NULL;
    char *path = join_path(model_dir, "tokenizer.json");
    if (path && !file_exists(path)) {
        free(path);
        path = join_path(model_dir, "tokenizer.bin");
        if (path && !file_exists(path)) {
            free(path);
            path = find_tok_bin(model_dir);
            if (!path)
                return dsla_error(DSLA_ERR_NOT_FOUND,
                                  "%s: no tokenizer.json, tokenizer.bin or single tok*.bin found",
                                  model_dir);
        }
    }
    if (!path) return dsla_error_oom("tokenizer: path");
    dsla_tokenizer_t *t = NULL;
    dsla_status_t s = dsla_tokenizer_load(&t, path);
    free(path);
    if (s != DSLA_OK) return s;
    char *cfg = join_path(model_dir, "tokenizer_config.json");
    if (!cfg)
        s = dsla_error_oom("tokenizer: path");
    else if (file_exists(cfg))
        s = apply_config(t, cfg);
    free(cfg);
    if (s != DSLA_OK) {
        dsla_tokenizer_destroy(&t);
        return s;
    }
    *out = t;
    return DSLA_OK;
}

void dsla_tokenizer_destroy(dsla_tokenizer_t **tp) {
    if (!tp || !*tp) return;
    dsla_tokenizer_t *t = *tp;
    free(t->arena);
    free(t->piece);
    free(t->piece_len);
    free(t->special);
    dsla_tok_strmap_free(&t->vocab);
    dsla_tok_pairmap_free(&t->merges);
    free(t->dec_arena);
    free(t->dec);
    free(t->dec_len);
    free(t->dec_is_byte);
    free(t->scores);
    free(t->json_text);
    dsla_tok_hf_free(t->hf);
    free(t);
    *tp = NULL;
}

/* ---- accessors ------------------------------------------------------------------------------ */

int dsla_tokenizer_vocab_size(const dsla_tokenizer_t *t) {
    return t->n_vocab;
}

int dsla_tokenizer_bos_id(const dsla_tokenizer_t *t) {
    return t->bos_id;
}

int dsla_tokenizer_eos_id(const dsla_tokenizer_t *t) {
    return t->eos_id;
}

bool dsla_tokenizer_add_bos_default(const dsla_tokenizer_t *t) {
    return t->add_bos_default && t->bos_id >= 0;
}

bool dsla_tokenizer_is_special(const dsla_tokenizer_t *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->special[id];
}

int32_t dsla_tokenizer_token_to_id(const dsla_tokenizer_t *t, const char *token) {
    size_t len = strlen(token);
    int32_t id = dsla_tok_strmap_get(&t->vocab, token, len);
    if (id >= 0) return id;
    /* llama2.c stores BOS/EOS as "\n<s>\n": their decoded form is the name configs use */
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (t->special[i] && t->dec_len[i] == len && memcmp(t->dec[i], token, len) == 0) return i;
    return -1;
}

const char *dsla_tokenizer_id_to_token(const dsla_tokenizer_t *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    if (len) *len = t->piece_len[id];
    return t->piece[id];
}

/* ---- encoding ------------------------------------------------------------------------------- */

dsla_status_t dsla_tokenizer_encode(const dsla_tokenizer_t *t, const char *text, size_t len,
                                    bool add_bos, int32_t **ids, size_t *n_ids) {
    if (!t || (!text && len > 0) || !ids || !n_ids)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "tokenizer encode: NULL argument");
    *ids = NULL;
    *n_ids = 0;
    if (!text) text = "";
    size_t bad = dsla_tok_utf8_validate((const unsigned char *)text, len);
    if (bad < len)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "tokenizer encode: text is not valid UTF-8 at byte offset %zu (0x%02X)",
                          bad, (unsigned char)text[bad]);
    dsla_tok_ids_t out = {0};
    dsla_status_t s = dsla_tok_ids_push(&out, 0); /* guarantees a non-NULL buffer */
    out.n = 0;
    if (s == DSLA_OK) {
        if (t->kind == DSLA_TOK_LLAMA2C) {
            s = dsla_tok_llama2c_encode(t, text, len, add_bos, &out);
        } else {
            if (add_bos && t->bos_id >= 0) s = dsla_tok_ids_push(&out, t->bos_id);
            if (s == DSLA_OK) s = dsla_tok_hf_encode(t, text, len, &out);
        }
    }
    if (s != DSLA_OK) {
        free(out.v);
        return s;
    }
    *ids = out.v;
    *n_ids = out.n;
    return DSLA_OK;
}

/* ---- decoding ------------------------------------------------------------------------------- */

struct dsla_detokenizer {
    const dsla_tokenizer_t *t;
    bool skip_special;
    bool at_start;         /* nothing but stripped spaces seen yet */
    int strip_left;        /* leading spaces still to strip (DSLA_TOK_STRIP_AT_START) */
    int32_t prev_id;       /* for run.c's after-BOS rule */
    unsigned char pend[4]; /* an incomplete but so far valid UTF-8 sequence */
    int npend, need;
    char *out;
    size_t out_len, out_cap;
};

static dsla_status_t out_put(dsla_detokenizer_t *d, const void *p, size_t n) {
    if (d->out_len + n + 1 > d->out_cap) {
        size_t cap = d->out_cap ? d->out_cap : 256;
        while (d->out_len + n + 1 > cap)
            cap *= 2;
        char *o = realloc(d->out, cap);
        if (!o) return dsla_error_oom("detokenizer: %zu bytes", cap);
        d->out = o;
        d->out_cap = cap;
    }
    memcpy(d->out + d->out_len, p, n);
    d->out_len += n;
    d->out[d->out_len] = '\0';
    return DSLA_OK;
}

static const char replacement_char[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

/* One byte into the lossy UTF-8 decoder: each maximal invalid subsequence becomes one U+FFFD, the
 * substitution Rust's from_utf8_lossy and Python's errors="replace" make. */
static dsla_status_t feed_byte(dsla_detokenizer_t *d, unsigned char b) {
    if (d->npend > 0) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (d->npend == 1) utf8_second_range(d->pend[0], &lo, &hi);
        if (b >= lo && b <= hi) {
            d->pend[d->npend++] = b;
            if (d->npend < d->need) return DSLA_OK;
            d->npend = 0;
            return out_put(d, d->pend, (size_t)d->need);
        }
        d->npend = 0;
        DSLA_TRY(out_put(d, replacement_char, 3));
    }
    int need = utf8_need(b);
    if (need == 0) return out_put(d, replacement_char, 3);
    if (need == 1) return out_put(d, &b, 1);
    d->pend[0] = b;
    d->npend = 1;
    d->need = need;
    return DSLA_OK;
}

static void detok_reset(dsla_detokenizer_t *d) {
    d->at_start = true;
    d->strip_left = d->t->strip == DSLA_TOK_STRIP_AT_START ? d->t->strip_count : 0;
    d->prev_id = -1;
    d->npend = 0;
}

static dsla_status_t detok_feed(dsla_detokenizer_t *d, int32_t id) {
    const dsla_tokenizer_t *t = d->t;
    if (id < 0 || id >= t->n_vocab)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "tokenizer decode: id %d is outside the vocabulary of %d tokens", id,
                          t->n_vocab);
    int32_t prev = d->prev_id;
    d->prev_id = id;
    if (d->skip_special && t->special[id]) return DSLA_OK;
    const unsigned char *p = (const unsigned char *)t->dec[id];
    size_t n = t->dec_len[id];
    if (t->strip == DSLA_TOK_STRIP_AFTER_BOS && prev == t->bos_id && prev >= 0 &&
        !t->dec_is_byte[id] && n > 0 && p[0] == ' ') {
        p++;
        n--;
    }
    for (size_t i = 0; i < n; i++) {
        if (d->at_start) {
            if (p[i] == ' ' && d->strip_left > 0) {
                d->strip_left--;
                continue;
            }
            d->at_start = false;
        }
        DSLA_TRY(feed_byte(d, p[i]));
    }
    return DSLA_OK;
}

static dsla_status_t detok_finish(dsla_detokenizer_t *d) {
    dsla_status_t s = DSLA_OK;
    if (d->npend > 0) s = out_put(d, replacement_char, 3);
    detok_reset(d);
    return s;
}

static dsla_status_t detok_init(dsla_detokenizer_t *d, const dsla_tokenizer_t *t, bool skip) {
    *d = (dsla_detokenizer_t){.t = t, .skip_special = skip};
    detok_reset(d);
    return out_put(d, "", 0);
}

dsla_status_t dsla_tokenizer_decode(const dsla_tokenizer_t *t, const int32_t *ids, size_t n_ids,
                                    bool skip_special, char **text) {
    if (!t || (!ids && n_ids > 0) || !text)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "tokenizer decode: NULL argument");
    *text = NULL;
    dsla_detokenizer_t d;
    dsla_status_t s = detok_init(&d, t, skip_special);
    for (size_t i = 0; i < n_ids && s == DSLA_OK; i++)
        s = detok_feed(&d, ids[i]);
    if (s == DSLA_OK) s = detok_finish(&d);
    if (s != DSLA_OK) {
        free(d.out);
        return s;
    }
    *text = d.out;
    return DSLA_OK;
}

dsla_status_t dsla_detokenizer_create(dsla_detokenizer_t **out, const dsla_tokenizer_t *t) {
    if (!out || !t) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "detokenizer: NULL argument");
    dsla_detokenizer_t *d = malloc(sizeof *d);
    if (!d) return dsla_error_oom("detokenizer");
    dsla_status_t s = detok_init(d, t, true);
    if (s != DSLA_OK) {
        free(d);
        return s;
    }
    *out = d;
    return DSLA_OK;
}

void dsla_detokenizer_destroy(dsla_detokenizer_t **d) {
    if (!d || !*d) return;
    free((*d)->out);
    free(*d);
    *d = NULL;
}

dsla_status_t dsla_detokenizer_prime(dsla_detokenizer_t *d, const int32_t *ids, size_t n_ids) {
    if (!d || (!ids && n_ids > 0))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "detokenizer: NULL argument");
    for (size_t i = 0; i < n_ids; i++) {
        d->out_len = 0;
        DSLA_TRY(detok_feed(d, ids[i]));
    }
    d->out_len = 0;
    return DSLA_OK;
}

dsla_status_t dsla_detokenizer_push(dsla_detokenizer_t *d, int32_t id, const char **piece,
                                    size_t *piece_len) {
    if (!d || !piece || !piece_len)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "detokenizer: NULL argument");
    d->out_len = 0;
    d->out[0] = '\0';
    dsla_status_t s = detok_feed(d, id);
    *piece = d->out;
    *piece_len = s == DSLA_OK ? d->out_len : 0;
    return s;
}

dsla_status_t dsla_detokenizer_flush(dsla_detokenizer_t *d, const char **piece, size_t *piece_len) {
    if (!d || !piece || !piece_len)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "detokenizer: NULL argument");
    d->out_len = 0;
    d->out[0] = '\0';
    dsla_status_t s = detok_finish(d);
    *piece = d->out;
    *piece_len = s == DSLA_OK ? d->out_len : 0;
    return s;
}

/* ---- saving --------------------------------------------------------------------------------- */

dsla_status_t dsla_tokenizer_save_json(const dsla_tokenizer_t *t, const char *path) {
    if (!t || !path) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "tokenizer save: NULL argument");
    if (t->kind == DSLA_TOK_LLAMA2C) return dsla_tok_llama2c_save_json(t, path);
    FILE *f = fopen(path, "wb");
    if (!f)
        return dsla_error(DSLA_ERR_IO, "tokenizer save: cannot create %s: %s", path,
                          strerror(errno));
    bool ok = fwrite(t->json_text, 1, t->json_len, f) == t->json_len;
    ok = fclose(f) == 0 && ok;
    if (!ok) return dsla_error(DSLA_ERR_IO, "tokenizer save: cannot write %s", path);
    return DSLA_OK;
}

#include "data.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/random.h"

typedef struct {
    int32_t *ids;
    size_t len, cap;
} token_stream_t;

static dsla_status_t stream_append(token_stream_t *s, const int32_t *ids, size_t n) {
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n)
            cap *= 2;
        int32_t *grown = realloc(s->ids, cap * sizeof *grown);
        if (!grown) return dsla_error_oom("%zu tokens", cap);
        s->ids = grown;
        s->cap = cap;
    }
    memcpy(s->ids + s->len, ids, n * sizeof *ids);
    s->len += n;
    return DSLA_OK;
}

static dsla_status_t read_whole_file(const char *path, char **data, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return dsla_error(DSLA_ERR_NOT_FOUND, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t used = 0, cap = 0;
    for (;;) {
        if (used + 65536 + 1 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                fclose(f);
                return dsla_error_oom("%s", path);
            }
            buf = grown;
        }
        size_t got = fread(buf + used, 1, 65536, f);
        used += got;
        if (got < 65536) break;
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        return dsla_error(DSLA_ERR_IO, "%s: read error", path);
    }
    buf[used] = '\0';
    *data = buf;
    *len = used;
    return DSLA_OK;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A paragraph ends at a blank line (two newlines, possibly with \r). */
static dsla_status_t append_text(token_stream_t *s, const dsla_tokenizer_t *tok, const char *path,
                                 const char *text, size_t len) {
    size_t start = 0;
    while (start < len) {
        const char *sep = strstr(text + start, "\n\n");
        size_t end = sep ? (size_t)(sep - text) : len;
        size_t a = start, b = end;
        while (a < b && (text[a] == '\n' || text[a] == '\r'))
            a++;
        while (b > a && (text[b - 1] == '\n' || text[b - 1] == '\r'))
            b--;
        if (b > a) {
            int32_t *ids = NULL;
            size_t n = 0;
            dsla_status_t st = dsla_tokenizer_encode(tok, text + a, b - a, false, &ids, &n);
            if (st != DSLA_OK) return dsla_error_wrap(st, "%s at byte %zu: ", path, a);
            st = stream_append(s, ids, n);
            free(ids);
            DSLA_TRY(st);
        }
        start = sep ? end + 2 : len;
    }
    return DSLA_OK;
}

static dsla_status_t append_tokens(token_stream_t *s, const dsla_tokenizer_t *tok, const char *path,
                                   const char *data, size_t len) {
    if (len % sizeof(int32_t))
        return dsla_error(DSLA_ERR_FORMAT, "%s: %zu bytes is not a whole number of int32 tokens",
                          path, len);
    size_t n = len / sizeof(int32_t);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) return dsla_error_oom("%s", path);
    memcpy(ids, data, n * sizeof *ids);
    int vocab = dsla_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) {
            int32_t bad = ids[i];
            free(ids);
            return dsla_error(DSLA_ERR_FORMAT, "%s: token %zu is %d, outside the vocabulary of %d",
                              path, i, bad, vocab);
        }
    dsla_status_t st = stream_append(s, ids, n);
    free(ids);
    return st;
}

dsla_status_t dsla_corpus_load(dsla_corpus_t *corpus, const dsla_tokenizer_t *tokenizer,
                               const char *const *files, int n_files, int seq_len,
                               int max_sequences) {
    memset(corpus, 0, sizeof *corpus);
    if (seq_len < 2)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "seq_len %d must be at least 2", seq_len);
    int bos = dsla_tokenizer_bos_id(tokenizer);
    int body = bos >= 0 ? seq_len - 1 : seq_len;
    token_stream_t stream = {0};
    dsla_status_t st = DSLA_OK;
    for (int f = 0; f < n_files && st == DSLA_OK; f++) {
        if (max_sequences > 0 && stream.len >= (size_t)max_sequences * (size_t)body) break;
        char *data = NULL;
        size_t len = 0;
        st = read_whole_file(files[f], &data, &len);
        if (st != DSLA_OK) break;
        st = ends_with(files[f], ".tokens") ? append_tokens(&stream, tokenizer, files[f], data, len)
                                            : append_text(&stream, tokenizer, files[f], data, len);
        free(data);
    }
    if (st != DSLA_OK) {
        free(stream.ids);
        return st;
    }
    size_t n = stream.len / (size_t)body;
    if (max_sequences > 0 && n > (size_t)max_sequences) n = (size_t)max_sequences;
    if (n == 0) {
        free(stream.ids);
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "the data gives %zu tokens, not enough for one sequence of %d",
                          stream.len, seq_len);
    }
    corpus->seq_len = seq_len;
    st = dsla_corpus_pack(corpus, stream.ids, n * (size_t)body, bos, NULL);
    free(stream.ids);
    return st;
}

dsla_status_t dsla_corpus_pack(dsla_corpus_t *corpus, const int32_t *stream, size_t n, int bos,
                               int *added) {
    if (added) *added = 0;
    const int seq_len = corpus->seq_len;
    if (seq_len < 2)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "seq_len %d must be at least 2", seq_len);
    const size_t body = bos >= 0 ? (size_t)seq_len - 1 : (size_t)seq_len;
    const size_t rows = n / body, have = (size_t)corpus->num_sequences;
    if (rows == 0) return DSLA_OK;
    if (have + rows > INT_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "a corpus holds at most %d sequences",
                          INT_MAX);
    int32_t *grown =
        realloc(corpus->tokens, (have + rows) * (size_t)seq_len * sizeof *corpus->tokens);
    if (!grown) return dsla_error_oom("%zu sequences", have + rows);
    corpus->tokens = grown;
    for (size_t i = 0; i < rows; i++) {
        int32_t *row = grown + (have + i) * (size_t)seq_len;
        size_t off = 0;
        if (bos >= 0) row[off++] = bos;
        memcpy(row + off, stream + i * body, body * sizeof *row);
    }
    corpus->num_sequences = (int)(have + rows);
    if (added) *added = (int)rows;
    return DSLA_OK;
}

dsla_status_t dsla_corpus_split(dsla_corpus_t *corpus, dsla_corpus_t *eval, int n_eval) {
    memset(eval, 0, sizeof *eval);
    if (n_eval < 1 || n_eval >= corpus->num_sequences)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "held-out split of %d sequences must leave 1..%d for training", n_eval,
                          corpus->num_sequences - 1);
    size_t row = (size_t)corpus->seq_len;
    eval->tokens = malloc((size_t)n_eval * row * sizeof *eval->tokens);
    if (!eval->tokens) return dsla_error_oom("the split");
    int keep = corpus->num_sequences - n_eval;
    memcpy(eval->tokens, corpus->tokens + (size_t)keep * row,
           (size_t)n_eval * row * sizeof *eval->tokens);
    eval->seq_len = corpus->seq_len;
    eval->num_sequences = n_eval;
    corpus->num_sequences = keep;
    return DSLA_OK;
}

void dsla_corpus_free(dsla_corpus_t *corpus) {
    free(corpus->tokens);
    memset(corpus, 0, sizeof *corpus);
}

/* ---- the prompt reservoir ---- */

dsla_status_t dsla_reservoir_init(dsla_reservoir_t *r, int capacity, int max_len, uint64_t seed) {
    memset(r, 0, sizeof *r);
    if (capacity < 1 || max_len < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "reservoir: capacity %d and max_len %d must be at least 1", capacity,
                          max_len);
    r->slots = calloc((size_t)capacity, sizeof *r->slots);
    if (!r->slots) return dsla_error_oom("reservoir");
    r->capacity = capacity;
    r->max_len = max_len;
    r->rng = seed;
    return DSLA_OK;
}

dsla_status_t dsla_reservoir_offer(dsla_reservoir_t *r, const int32_t *ids, int n) {
    if (n <= 0) return DSLA_OK;
    r->offered++;
    int at = r->n;
    if (r->n == r->capacity) {
        uint64_t j = dsla_splitmix64(&r->rng) % r->offered;
        if (j >= (uint64_t)r->capacity) return DSLA_OK;
        at = (int)j;
    }
    if (n > r->max_len) n = r->max_len;
    int32_t *copy = malloc((size_t)n * sizeof *copy);
    if (!copy) return dsla_error_oom("reservoir");
    memcpy(copy, ids, (size_t)n * sizeof *copy);
    dsla_reservoir_slot_t *s = &r->slots[at];
    free(s->ids);
    *s = (dsla_reservoir_slot_t){copy, n, false};
    if (at == r->n) r->n++;
    return DSLA_OK;
}

size_t dsla_reservoir_tokens(const dsla_reservoir_t *r) {
    size_t n = 0;
    for (int i = 0; i < r->n; i++)
        n += (size_t)r->slots[i].len;
    return n;
}

static bool slot_in_vocab(const dsla_reservoir_slot_t *s, int vocab) {
    for (int i = 0; i < s->len; i++)
        if (s->ids[i] < 0 || s->ids[i] >= vocab) return false;
    return true;
}

dsla_status_t dsla_reservoir_pack(dsla_reservoir_t *r, dsla_corpus_t *corpus, int bos, int vocab,
                                  int *added) {
    *added = 0;
    token_stream_t stream = {0};
    dsla_status_t st = DSLA_OK;
    bool *packed = calloc((size_t)r->capacity, sizeof *packed);
    if (!packed) return dsla_error_oom("reservoir");
    for (int i = 0; i < r->n && st == DSLA_OK; i++) {
        const dsla_reservoir_slot_t *s = &r->slots[i];
        if (!(packed[i] = slot_in_vocab(s, vocab))) continue;
        const int skip = bos >= 0 && s->ids[0] == bos ? 1 : 0;
        if (s->len > skip) st = stream_append(&stream, s->ids + skip, (size_t)(s->len - skip));
    }
    if (st == DSLA_OK) st = dsla_corpus_pack(corpus, stream.ids, stream.len, bos, added);
    free(stream.ids);
    for (int i = 0; i < r->n && st == DSLA_OK; i++) {
        dsla_reservoir_slot_t *s = &r->slots[i];
        if (s->used || !packed[i]) continue;
        s->used = true;
        r->used++;
        r->used_tokens += (uint64_t)s->len;
    }
    free(packed);
    return st;
}

void dsla_reservoir_free(dsla_reservoir_t *r) {
    for (int i = 0; i < r->n; i++)
        free(r->slots[i].ids);
    free(r->slots);
    memset(r, 0, sizeof *r);
}

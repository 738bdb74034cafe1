#include "data.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
        if (!grown) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for %zu tokens", cap);
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
                return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
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
    if (!ids) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
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
    corpus->tokens = malloc(n * (size_t)seq_len * sizeof *corpus->tokens);
    if (!corpus->tokens) {
        free(stream.ids);
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for %zu sequences", n);
    }
    for (size_t i = 0; i < n; i++) {
        int32_t *row = corpus->tokens + i * (size_t)seq_len;
        int off = 0;
        if (bos >= 0) row[off++] = bos;
        memcpy(row + off, stream.ids + i * (size_t)body, (size_t)body * sizeof *row);
    }
    corpus->seq_len = seq_len;
    corpus->num_sequences = (int)n;
    free(stream.ids);
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
    if (!eval->tokens) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for the split");
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

/* llama2.c tokenizer.bin: loading (bounds-checked against the file size), encoding exactly as
 * run.c's encode() and conversion to an equivalent HF tokenizer.json.
 *
 * run.c merges, again and again, the adjacent pair whose concatenation is a vocabulary string with
 * the highest score (leftmost on ties). Here that is the shared merge engine with a pair table
 * built from every split of every vocabulary string and priority -score: the same choice in O(n log
 * n). */
#include "runtime/model/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* run.c starts its search at this score and only merges pairs that beat it. */
#define LLAMA2C_MIN_SCORE (-1e10f)

/* Longest vocabulary string accepted: run.c sizes its buffers from max_token_length, and real
 * tokenizers stay far below this. */
enum { LLAMA2C_MAX_TOKEN_BYTES = 1 << 16 };

static const unsigned char byte_values[256] = {
#define B4(n) n, n + 1, n + 2, n + 3
#define B16(n) B4(n), B4(n + 4), B4(n + 8), B4(n + 12)
#define B64(n) B16(n), B16(n + 16), B16(n + 32), B16(n + 48)
    B64(0), B64(64), B64(128), B64(192)
#undef B64
#undef B16
#undef B4
};

static int32_t read_i32(const unsigned char *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* run.c's export writes BOS/EOS as "\n<s>\n" and "\n</s>\n"; their names are what lies inside. */
static void trim_newlines(const char *s, uint32_t len, const char **out, uint32_t *out_len) {
    while (len > 0 && s[0] == '\n')
        s++, len--;
    while (len > 0 && s[len - 1] == '\n')
        len--;
    *out = s;
    *out_len = len;
}

static bool is_named(const char *s, uint32_t len, const char *name) {
    return len == strlen(name) && memcmp(s, name, len) == 0;
}

static dsla_status_t build_pairs(dsla_tokenizer_t *t) {
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!(t->scores[id] > LLAMA2C_MIN_SCORE)) continue;
        const char *s = t->piece[id];
        uint32_t len = t->piece_len[id];
        for (uint32_t k = 1; k < len; k++) {
            int32_t a = dsla_tok_strmap_get(&t->vocab, s, k);
            if (a < 0) continue;
            int32_t b = dsla_tok_strmap_get(&t->vocab, s + k, len - k);
            if (b < 0) continue;
            /* the string id a+b resolves to is what run.c's lookup finds */
            int32_t merged = dsla_tok_strmap_get(&t->vocab, s, len);
            DSLA_TRY(dsla_tok_pairmap_put(&t->merges, a, b, -(double)t->scores[merged], merged));
        }
    }
    return DSLA_OK;
}

dsla_status_t dsla_tok_llama2c_parse(dsla_tokenizer_t *t, const unsigned char *data, size_t size,
                                     const char *path) {
    if (size < 4)
        return dsla_error(DSLA_ERR_FORMAT,
                          "tokenizer %s: %zu bytes is too short for a llama2.c tokenizer.bin", path,
                          size);
    int32_t max_len = read_i32(data);
    if (max_len <= 0 || max_len > LLAMA2C_MAX_TOKEN_BYTES)
        return dsla_error(DSLA_ERR_FORMAT,
                          "tokenizer %s: max_token_length %d is outside 1..%d (not a llama2.c "
                          "tokenizer.bin?)",
                          path, max_len, LLAMA2C_MAX_TOKEN_BYTES);
    /* first pass: validate every record against the file size and count them */
    size_t off = 4, count = 0, total = 0;
    while (off < size) {
        if (size - off < 8)
            return dsla_error(DSLA_ERR_FORMAT,
                              "tokenizer %s: truncated at byte %zu: token %zu needs a score and a "
                              "length (8 bytes), %zu left",
                              path, off, count, size - off);
        int32_t len = read_i32(data + off + 4);
        if (len < 0 || len > max_len)
            return dsla_error(
                DSLA_ERR_FORMAT,
                "tokenizer %s: token %zu has length %d, outside 0..max_token_length %d", path,
                count, len, max_len);
        if ((size_t)len > size - off - 8)
            return dsla_error(
                DSLA_ERR_FORMAT,
                "tokenizer %s: truncated: token %zu needs %d bytes at offset %zu, the "
                "file has %zu",
                path, count, len, off + 8, size - off - 8);
        off += 8 + (size_t)len;
        total += (size_t)len;
        count++;
        if (count > INT32_MAX / 2)
            return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: too many tokens", path);
    }
    if (count == 0) return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: no tokens", path);

    DSLA_TRY(dsla_tok_alloc_tables(t, (int32_t)count));
    t->arena = malloc(total + 1);
    t->scores = malloc(count * sizeof *t->scores);
    if (!t->arena || !t->scores) return dsla_error_oom("tokenizer %s: %zu tokens", path, count);
    off = 4;
    size_t at = 0;
    for (size_t i = 0; i < count; i++) {
        memcpy(&t->scores[i], data + off, sizeof(float));
        uint32_t len = (uint32_t)read_i32(data + off + 4);
        memcpy(t->arena + at, data + off + 8, len);
        t->piece[i] = t->dec[i] = t->arena + at;
        t->piece_len[i] = t->dec_len[i] = len;
        off += 8 + len;
        at += len;
    }
    DSLA_TRY(dsla_tok_index_vocab(t));

    for (int32_t i = 0; i < t->n_vocab; i++) {
        int b = dsla_tok_parse_byte_token(t->piece[i], t->piece_len[i]);
        if (b >= 0) {
            t->dec[i] = (const char *)&byte_values[b];
            t->dec_len[i] = 1;
            t->dec_is_byte[i] = 1;
            continue;
        }
        const char *name;
        uint32_t name_len;
        trim_newlines(t->piece[i], t->piece_len[i], &name, &name_len);
        int32_t *slot = is_named(name, name_len, "<unk>")  ? &t->unk_id
                        : is_named(name, name_len, "<s>")  ? &t->bos_id
                        : is_named(name, name_len, "</s>") ? &t->eos_id
                                                           : NULL;
        if (slot && *slot < 0) {
            *slot = i;
            t->special[i] = 1;
            t->dec[i] = name;
            t->dec_len[i] = name_len;
        }
    }
    t->space_id = dsla_tok_strmap_get(&t->vocab, " ", 1);
    t->strip = DSLA_TOK_STRIP_AFTER_BOS;
    return build_pairs(t);
}

dsla_status_t dsla_tok_llama2c_encode(const dsla_tokenizer_t *t, const char *text, size_t len,
                                      bool add_bos, dsla_tok_ids_t *ids) {
    size_t from = ids->n;
    if (add_bos && t->bos_id >= 0) DSLA_TRY(dsla_tok_ids_push(ids, t->bos_id));
    /* run.c's add_dummy_prefix; a vocabulary without " " has nothing to add */
    if (len > 0 && t->space_id >= 0) DSLA_TRY(dsla_tok_ids_push(ids, t->space_id));
    for (size_t i = 0; i < len;) {
        size_t n = dsla_tok_utf8_len((unsigned char)text[i]);
        int32_t id = dsla_tok_strmap_get(&t->vocab, text + i, n);
        if (id >= 0) {
            DSLA_TRY(dsla_tok_ids_push(ids, id));
        } else if (t->has_byte_tokens) {
            for (size_t k = 0; k < n; k++)
                DSLA_TRY(dsla_tok_ids_push(ids, t->byte_id[(unsigned char)text[i + k]]));
        } else if (t->unk_id >= 0) {
            /* run.c would emit byte+3, which names unrelated tokens (or none) without <0xXX> ones
             */
            DSLA_TRY(dsla_tok_ids_push(ids, t->unk_id));
        }
        i += n;
    }
    /* BOS takes part in run.c's merge loop, so it does here */
    return dsla_tok_bpe_merge(t, ids, from);
}

/* ---- conversion to tokenizer.json ---------------------------------------------------------- */

typedef struct {
    int32_t left, right;
    float score;
    size_t order;
} json_merge_t;

static int merge_by_ids(const void *a, const void *b) {
    const json_merge_t *x = a, *y = b;
    if (x->left != y->left) return x->left < y->left ? -1 : 1;
    return (x->right > y->right) - (x->right < y->right);
}

/* score descending, stable: transformers' SentencePieceExtractor sorts with Python's stable sort */
static int merge_by_score(const void *a, const void *b) {
    const json_merge_t *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->order > y->order) - (x->order < y->order);
}

/* The HF spelling of a llama2.c piece: specials by name, spaces as U+2581 ("▁"). */
static char *hf_piece(const dsla_tokenizer_t *t, int32_t id, uint32_t *out_len) {
    const char *s = t->piece[id];
    uint32_t len = t->piece_len[id];
    if (t->special[id]) trim_newlines(s, len, &s, &len);
    char *p = malloc((size_t)len * 3 + 1);
    if (!p) return NULL;
    uint32_t n = 0;
    for (uint32_t i = 0; i < len; i++) {
        if (s[i] == ' ' && !t->special[id]) {
            memcpy(p + n, "\xe2\x96\x81", 3);
            n += 3;
        } else {
            p[n++] = s[i];
        }
    }
    p[n] = '\0';
    *out_len = n;
    return p;
}

typedef struct {
    char **pieces;
    uint32_t *lens;
    dsla_tok_strmap_t map;
    json_merge_t *merges;
    size_t n_merges, cap_merges;
} json_build_t;

static void json_build_free(json_build_t *b, int32_t n) {
    for (int32_t i = 0; b->pieces && i < n; i++)
        free(b->pieces[i]);
    free(b->pieces);
    free(b->lens);
    free(b->merges);
    dsla_tok_strmap_free(&b->map);
}

static dsla_status_t collect_merges(const dsla_tokenizer_t *t, json_build_t *b) {
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!(t->scores[id] > LLAMA2C_MIN_SCORE)) continue;
        const char *s = b->pieces[id];
        uint32_t len = b->lens[id];
        size_t first = b->n_merges;
        /* splits at character boundaries, as Python slices the piece */
        for (uint32_t k = dsla_tok_utf8_len((unsigned char)s[0]); k < len;
             k += dsla_tok_utf8_len((unsigned char)s[k])) {
            int32_t l = dsla_tok_strmap_get(&b->map, s, k);
            int32_t r = dsla_tok_strmap_get(&b->map, s + k, len - k);
            if (l < 0 || r < 0) continue;
            if (b->n_merges == b->cap_merges) {
                size_t cap = b->cap_merges ? b->cap_merges * 2 : 1024;
                json_merge_t *m = realloc(b->merges, cap * sizeof *m);
                if (!m) return dsla_error_oom("tokenizer save: merges");
                b->merges = m;
                b->cap_merges = cap;
            }
            b->merges[b->n_merges++] = (json_merge_t){l, r, t->scores[id], 0};
        }
        if (b->n_merges - first > 1)
            qsort(b->merges + first, b->n_merges - first, sizeof *b->merges, merge_by_ids);
    }
    for (size_t i = 0; i < b->n_merges; i++)
        b->merges[i].order = i;
    if (b->n_merges > 1) qsort(b->merges, b->n_merges, sizeof *b->merges, merge_by_score);
    return DSLA_OK;
}

static json_t *str_json(const char *s) {
    return json_string(s);
}

static json_t *build_json(const dsla_tokenizer_t *t, const json_build_t *b) {
    const char *meta = "\xe2\x96\x81";
    json_t *root = json_object();
    json_object_set_new(root, "version", str_json("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_t *added = json_array();
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (!t->special[i]) continue;
        json_array_append_new(added, json_pack("{s:i,s:s%,s:b,s:b,s:b,s:b,s:b}", "id",
                                               (json_int_t)i, "content", b->pieces[i],
                                               (size_t)b->lens[i], "single_word", 0, "lstrip", 0,
                                               "rstrip", 0, "normalized", 0, "special", 1));
    }
    json_object_set_new(root, "added_tokens", added);
    json_object_set_new(root, "normalizer",
                        json_pack("{s:s,s:[{s:s,s:s},{s:s,s:{s:s},s:s}]}", "type", "Sequence",
                                  "normalizers", "type", "Prepend", "prepend", meta, "type",
                                  "Replace", "pattern", "String", " ", "content", meta));
    json_object_set_new(root, "pre_tokenizer", json_null());
    if (t->bos_id >= 0) {
        const char *bos = b->pieces[t->bos_id];
        json_t *special = json_object();
        json_object_set_new(
            special, bos,
            json_pack("{s:s,s:[i],s:[s]}", "id", bos, "ids", (json_int_t)t->bos_id, "tokens", bos));
        json_object_set_new(
            root, "post_processor",
            json_pack("{s:s,s:[{s:{s:s,s:i}},{s:{s:s,s:i}}],"
                      "s:[{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}},{s:{s:s,s:i}}],s:o}",
                      "type", "TemplateProcessing", "single", "SpecialToken", "id", bos, "type_id",
                      0, "Sequence", "id", "A", "type_id", 0, "pair", "SpecialToken", "id", bos,
                      "type_id", 0, "Sequence", "id", "A", "type_id", 0, "SpecialToken", "id", bos,
                      "type_id", 0, "Sequence", "id", "B", "type_id", 0, "special_tokens",
                      special));
    } else {
        json_object_set_new(root, "post_processor", json_null());
    }
    json_object_set_new(root, "decoder",
                        json_pack("{s:s,s:[{s:s,s:{s:s},s:s},{s:s},{s:s},{s:s,s:s,s:i,s:i}]}",
                                  "type", "Sequence", "decoders", "type", "Replace", "pattern",
                                  "String", meta, "content", " ", "type", "ByteFallback", "type",
                                  "Fuse", "type", "Strip", "content", " ", "start", 1, "stop", 0));
    json_t *vocab = json_object();
    for (int32_t i = 0; i < t->n_vocab; i++)
        json_object_set_new(vocab, b->pieces[i], json_integer(i));
    json_t *merges = json_array();
    for (size_t i = 0; i < b->n_merges; i++)
        json_array_append_new(merges, json_pack("[s,s]", b->pieces[b->merges[i].left],
                                                b->pieces[b->merges[i].right]));
    json_t *model = json_object();
    json_object_set_new(model, "type", str_json("BPE"));
    json_object_set_new(model, "dropout", json_null());
    json_object_set_new(model, "unk_token",
                        t->unk_id >= 0 ? str_json(b->pieces[t->unk_id]) : json_null());
    json_object_set_new(model, "continuing_subword_prefix", json_null());
    json_object_set_new(model, "end_of_word_suffix", json_null());
    /* run.c emits one <unk> per unknown character: fusing them would not be equivalent */
    json_object_set_new(model, "fuse_unk", json_boolean(t->has_byte_tokens));
    json_object_set_new(model, "byte_fallback", json_boolean(t->has_byte_tokens));
    json_object_set_new(model, "ignore_merges", json_false());
    json_object_set_new(model, "vocab", vocab);
    json_object_set_new(model, "merges", merges);
    json_object_set_new(root, "model", model);
    return root;
}

dsla_status_t dsla_tok_llama2c_save_json(const dsla_tokenizer_t *t, const char *path) {
    int32_t n = t->n_vocab;
    json_build_t b = {0};
    dsla_status_t s = DSLA_OK;
    b.pieces = calloc((size_t)n, sizeof *b.pieces);
    b.lens = calloc((size_t)n, sizeof *b.lens);
    if (!b.pieces || !b.lens) s = dsla_error_oom("tokenizer save: %d tokens", n);
    for (int32_t i = 0; i < n && s == DSLA_OK; i++) {
        b.pieces[i] = hf_piece(t, i, &b.lens[i]);
        if (!b.pieces[i]) {
            s = dsla_error_oom("tokenizer save: token %d", i);
        } else if (b.lens[i] == 0 || strlen(b.pieces[i]) != b.lens[i] ||
                   dsla_tok_utf8_validate((const unsigned char *)b.pieces[i], b.lens[i]) !=
                       b.lens[i]) {
            s = dsla_error(DSLA_ERR_UNSUPPORTED,
                           "tokenizer save %s: token %d is empty, holds a NUL byte or is not valid "
                           "UTF-8; tokenizer.json cannot spell it",
                           path, i);
        } else {
            size_t before = b.map.count;
            s = dsla_tok_strmap_put(&b.map, b.pieces[i], b.lens[i], i);
            if (s == DSLA_OK && b.map.count == before)
                s = dsla_error(DSLA_ERR_UNSUPPORTED,
                               "tokenizer save %s: token %d (\"%s\") repeats an earlier token once "
                               "spaces are spelled U+2581",
                               path, i, b.pieces[i]);
        }
    }
    if (s == DSLA_OK) s = collect_merges(t, &b);
    if (s == DSLA_OK) {
        json_t *root = build_json(t, &b);
        if (!root || json_dump_file(root, path, JSON_INDENT(2)) != 0)
            s = dsla_error(DSLA_ERR_IO, "tokenizer save: cannot write %s", path);
        json_decref(root);
    }
    json_build_free(&b, n);
    return s;
}

/* Hugging Face tokenizer.json with a BPE model: parsing, and the encoding pipeline of `tokenizers`
 * (added tokens split first, then per segment: normalizers, pre-tokenizers, BPE per word).
 *
 * Implemented: normalizers Prepend, Replace (string pattern) and Sequence; pre-tokenizers Split
 * (regex via PCRE2 or string; Isolated, Removed, MergedWithPrevious, MergedWithNext), ByteLevel,
 * Metaspace and Sequence; decoders ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip and
 * Sequence. Anything else is UNSUPPORTED by name: a silently different tokenization would be worse
 * than a refusal. */
#include "runtime/model/tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

/* HF ids beyond this would mean a vocabulary far larger than any Llama's: a hostile file. */
enum { HF_MAX_VOCAB = 1 << 24 };

/* GPT-2's pre-tokenizer regex, which ByteLevel applies when use_regex is true. */
static const char gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static const char metaspace_default[] = "\xe2\x96\x81"; /* U+2581 */

typedef enum { NORM_PREPEND, NORM_REPLACE } norm_kind_t;

typedef struct {
    norm_kind_t kind;
    char *from, *to; /* PREPEND: to only */
} norm_t;

typedef enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE } pre_kind_t;

typedef enum {
    SPLIT_ISOLATED,
    SPLIT_REMOVED,
    SPLIT_MERGED_WITH_PREVIOUS,
    SPLIT_MERGED_WITH_NEXT,
} split_behavior_t;

typedef enum { PREPEND_NEVER, PREPEND_FIRST, PREPEND_ALWAYS } prepend_t;

typedef struct {
    pre_kind_t kind;
    pcre2_code *re; /* SPLIT, and BYTELEVEL with use_regex */
    split_behavior_t behavior;
    bool add_prefix_space; /* BYTELEVEL */
    char *replacement;     /* METASPACE */
    prepend_t prepend;
    bool split;
} pre_t;

typedef struct {
    int32_t id;
    char *content;
    size_t len;
    bool lstrip, rstrip, single_word;
} added_t;

struct dsla_tok_hf {
    norm_t *norms;
    size_t n_norms;
    pre_t *pres;
    size_t n_pres;
    added_t *added; /* longest first, so the first match at a position is the longest */
    size_t n_added;
    bool added_first_byte[256];
    bool byte_fallback, fuse_unk, ignore_merges;
    char b2u[256][3]; /* ByteLevel: each byte as the UTF-8 of its printable stand-in */
    uint8_t b2u_len[256];
};

/* ---- small helpers -------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
} sbuf_t;

static dsla_status_t sbuf_put(sbuf_t *b, const void *p, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) return dsla_error_oom("tokenizer: %zu bytes", cap);
        b->p = np;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return DSLA_OK;
}

/* Appends s with every occurrence of `from` replaced by `to` (left to right, non-overlapping). */
static dsla_status_t sbuf_put_replaced(sbuf_t *b, const char *s, size_t n, const char *from,
                                       const char *to) {
    size_t fl = strlen(from), tl = strlen(to);
    size_t i = 0, run = 0;
    while (i < n) {
        if (fl > 0 && n - i >= fl && memcmp(s + i, from, fl) == 0) {
            DSLA_TRY(sbuf_put(b, s + run, i - run));
            DSLA_TRY(sbuf_put(b, to, tl));
            i += fl;
            run = i;
        } else {
            i++;
        }
    }
    return sbuf_put(b, s + run, n - run);
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static size_t encode_utf8(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

static uint32_t decode_utf8(const unsigned char *s, size_t n) {
    if (n == 1) return s[0];
    uint32_t cp = s[0] & (0xFF >> (n + 1));
    for (size_t i = 1; i < n; i++)
        cp = (cp << 6) | (s[i] & 0x3F);
    return cp;
}

/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes map
 * to U+0100 onwards in byte order. */
static void build_byte_map(uint32_t b2u[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        b2u[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

static const char *type_of(json_t *obj) {
    const char *type = json_string_value(json_object_get(obj, "type"));
    return type ? type : "(no type)";
}

static dsla_status_t compile_regex(pcre2_code **out, const char *pattern, bool literal,
                                   const char *path) {
    int err;
    PCRE2_SIZE erroff;
    uint32_t opts = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &err, &erroff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return dsla_error(
            DSLA_ERR_UNSUPPORTED,
            "tokenizer %s: pre_tokenizer regex \"%s\" does not compile at offset %zu: "
            "%s",
            path, pattern, (size_t)erroff, (const char *)msg);
    }
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
    *out = re;
    return DSLA_OK;
}

/* ---- parsing: normalizer, pre-tokenizer, decoder ------------------------------------------- */

static dsla_status_t add_norm(dsla_tok_hf_t *hf, norm_t n) {
    norm_t *v = realloc(hf->norms, (hf->n_norms + 1) * sizeof *v);
    if (!v) {
        free(n.from);
        free(n.to);
        return dsla_error_oom("tokenizer: normalizers");
    }
    hf->norms = v;
    hf->norms[hf->n_norms++] = n;
    return DSLA_OK;
}

static dsla_status_t parse_normalizer(dsla_tok_hf_t *hf, json_t *n, const char *path) {
    if (json_is_null(n) || !n) return DSLA_OK;
    const char *type = type_of(n);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(n, "normalizers");
        if (!json_is_array(list))
            return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: normalizer Sequence has no list",
                              path);
        size_t i;
        json_t *item;
        json_array_foreach(list, i, item) DSLA_TRY(parse_normalizer(hf, item, path));
        return DSLA_OK;
    }
    if (strcmp(type, "Prepend") == 0) {
        const char *p = json_string_value(json_object_get(n, "prepend"));
        if (!p) return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: Prepend has no string", path);
        char *to = dup_str(p);
        if (!to) return dsla_error_oom("tokenizer");
        return add_norm(hf, (norm_t){NORM_PREPEND, NULL, to});
    }
    if (strcmp(type, "Replace") == 0) {
        json_t *pat = json_object_get(n, "pattern");
        const char *from = json_string_value(json_object_get(pat, "String"));
        const char *to = json_string_value(json_object_get(n, "content"));
        if (!from && json_object_get(pat, "Regex"))
            return dsla_error(DSLA_ERR_UNSUPPORTED,
                              "tokenizer %s: normalizer Replace with a Regex pattern", path);
        if (!from || !to || !*from)
            return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: Replace needs pattern and content",
                              path);
        norm_t nm = {NORM_REPLACE, dup_str(from), dup_str(to)};
        if (!nm.from || !nm.to) {
            free(nm.from);
            free(nm.to);
            return dsla_error_oom("tokenizer");
        }
        return add_norm(hf, nm);
    }
    return dsla_error(DSLA_ERR_UNSUPPORTED, "tokenizer %s: normalizer type \"%s\" is not supported",
                      path, type);
}

static dsla_status_t add_pre(dsla_tok_hf_t *hf, pre_t p) {
    pre_t *v = realloc(hf->pres, (hf->n_pres + 1) * sizeof *v);
    if (!v) {
        pcre2_code_free(p.re);
        free(p.replacement);
        return dsla_error_oom("tokenizer: pre-tokenizers");
    }
    hf->pres = v;
    hf->pres[hf->n_pres++] = p;
    return DSLA_OK;
}

static bool bool_field(json_t *obj, const char *key, bool dflt) {
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static dsla_status_t parse_metaspace(json_t *n, pre_t *p, const char *path) {
    const char *rep = json_string_value(json_object_get(n, "replacement"));
    if (!rep) rep = metaspace_default;
    if (dsla_tok_utf8_len((unsigned char)rep[0]) != strlen(rep))
        return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: Metaspace replacement must be one char",
                          path);
    const char *scheme = json_string_value(json_object_get(n, "prepend_scheme"));
    if (!scheme) scheme = bool_field(n, "add_prefix_space", true) ? "always" : "never";
    if (strcmp(scheme, "always") == 0)
        p->prepend = PREPEND_ALWAYS;
    else if (strcmp(scheme, "first") == 0)
        p->prepend = PREPEND_FIRST;
    else if (strcmp(scheme, "never") == 0)
        p->prepend = PREPEND_NEVER;
    else
        return dsla_error(DSLA_ERR_UNSUPPORTED, "tokenizer %s: Metaspace prepend_scheme \"%s\"",
                          path, scheme);
    p->split = bool_field(n, "split", true);
    p->replacement = dup_str(rep);
    return p->replacement ? DSLA_OK : dsla_error_oom("tokenizer");
}

static dsla_status_t parse_pre_tokenizer(dsla_tok_hf_t *hf, json_t *n, const char *path) {
    if (json_is_null(n) || !n) return DSLA_OK;
    const char *type = type_of(n);
    pre_t p = {0};
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(n, "pretokenizers");
        if (!json_is_array(list))
            return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: pre_tokenizer Sequence has no list",
                              path);
        size_t i;
        json_t *item;
        json_array_foreach(list, i, item) DSLA_TRY(parse_pre_tokenizer(hf, item, path));
        return DSLA_OK;
    }
    if (strcmp(type, "Split") == 0) {
        json_t *pat = json_object_get(n, "pattern");
        const char *regex = json_string_value(json_object_get(pat, "Regex"));
        const char *literal = json_string_value(json_object_get(pat, "String"));
        const char *behavior = json_string_value(json_object_get(n, "behavior"));
        if ((!regex && !literal) || !behavior)
            return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: Split needs pattern and behavior",
                              path);
        if (bool_field(n, "invert", false))
            return dsla_error(DSLA_ERR_UNSUPPORTED, "tokenizer %s: Split with invert true", path);
        p.kind = PRE_SPLIT;
        if (strcmp(behavior, "Isolated") == 0)
            p.behavior = SPLIT_ISOLATED;
        else if (strcmp(behavior, "Removed") == 0)
            p.behavior = SPLIT_REMOVED;
        else if (strcmp(behavior, "MergedWithPrevious") == 0)
            p.behavior = SPLIT_MERGED_WITH_PREVIOUS;
        else if (strcmp(behavior, "MergedWithNext") == 0)
            p.behavior = SPLIT_MERGED_WITH_NEXT;
        else
            return dsla_error(DSLA_ERR_UNSUPPORTED, "tokenizer %s: Split behavior \"%s\"", path,
                              behavior);
        DSLA_TRY(compile_regex(&p.re, regex ? regex : literal, !regex, path));
        return add_pre(hf, p);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        p.kind = PRE_BYTELEVEL;
        p.add_prefix_space = bool_field(n, "add_prefix_space", true);
        if (bool_field(n, "use_regex", true))
            DSLA_TRY(compile_regex(&p.re, gpt2_regex, false, path));
        return add_pre(hf, p);
    }
    if (strcmp(type, "Metaspace") == 0) {
        p.kind = PRE_METASPACE;
        dsla_status_t s = parse_metaspace(n, &p, path);
        if (s != DSLA_OK) {
            free(p.replacement);
            return s;
        }
        return add_pre(hf, p);
    }
    return dsla_error(DSLA_ERR_UNSUPPORTED,
                      "tokenizer %s: pre_tokenizer type \"%s\" is not supported", path, type);
}

/* The decoder, folded into what each id contributes to the text (the decoders here act per token)
 * plus the leading-space strip at the start of the text. */
typedef struct {
    sbuf_t arena;
    size_t *off;
} dec_build_t;

static dsla_status_t decoder_steps(json_t *d, json_t ***steps, size_t *n, const char *path) {
    if (strcmp(type_of(d), "Sequence") != 0) {
        *steps = malloc(sizeof **steps);
        if (!*steps) return dsla_error_oom("tokenizer");
        (*steps)[0] = d;
        *n = 1;
        return DSLA_OK;
    }
    json_t *list = json_object_get(d, "decoders");
    if (!json_is_array(list))
        return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: decoder Sequence has no list", path);
    *n = json_array_size(list);
    *steps = malloc((*n + 1) * sizeof **steps);
    if (!*steps) return dsla_error_oom("tokenizer");
    for (size_t i = 0; i < *n; i++) {
        (*steps)[i] = json_array_get(list, i);
        if (strcmp(type_of((*steps)[i]), "Sequence") == 0)
            return dsla_error(DSLA_ERR_UNSUPPORTED, "tokenizer %s: nested decoder Sequence", path);
    }
    return DSLA_OK;
}

static dsla_status_t check_decoder(dsla_tokenizer_t *t, json_t **steps, size_t n,
                                   const char *path) {
    bool fused = false;
    for (size_t i = 0; i < n; i++) {
        const char *type = type_of(steps[i]);
        if (strcmp(type, "Fuse") == 0 || strcmp(type, "ByteLevel") == 0) {
            fused = true;
        } else if (strcmp(type, "Strip") == 0) {
            const char *content = json_string_value(json_object_get(steps[i], "content"));
            json_int_t start = json_integer_value(json_object_get(steps[i], "start"));
            json_int_t stop = json_integer_value(json_object_get(steps[i], "stop"));
            /* after Fuse, Strip sees the whole text: only its start can be streamed */
            if (!fused || !content || strcmp(content, " ") != 0 || stop != 0 || start < 0 ||
                start > 64)
                return dsla_error(DSLA_ERR_UNSUPPORTED,
                                  "tokenizer %s: decoder Strip is supported only after Fuse, "
                                  "stripping leading spaces (content \" \", stop 0)",
                                  path);
            t->strip = DSLA_TOK_STRIP_AT_START;
            t->strip_count = (int)start;
        } else if (strcmp(type, "Metaspace") == 0) {
            const char *scheme = json_string_value(json_object_get(steps[i], "prepend_scheme"));
            bool prepends = scheme ? strcmp(scheme, "never") != 0
                                   : bool_field(steps[i], "add_prefix_space", true);
            if (prepends) {
                t->strip = DSLA_TOK_STRIP_AT_START;
                t->strip_count = 1;
            }
        } else if (strcmp(type, "Replace") == 0) {
            json_t *pat = json_object_get(steps[i], "pattern");
            if (!json_string_value(json_object_get(pat, "String")) ||
                !json_string_value(json_object_get(steps[i], "content")))
                return dsla_error(DSLA_ERR_UNSUPPORTED,
                                  "tokenizer %s: decoder Replace needs a String pattern", path);
        } else if (strcmp(type, "ByteFallback") != 0) {
            return dsla_error(DSLA_ERR_UNSUPPORTED,
                              "tokenizer %s: decoder type \"%s\" is not supported", path, type);
        }
    }
    return DSLA_OK;
}

/* What token s contributes to decoded text, appended to out. */
static dsla_status_t decode_piece(const int16_t *u2b, json_t **steps, size_t n, const char *s,
                                  size_t len, sbuf_t *out, bool *is_byte) {
    sbuf_t cur = {0}, next = {0};
    dsla_status_t st = sbuf_put(&cur, s, len);
    *is_byte = false;
    for (size_t i = 0; i < n && st == DSLA_OK && !*is_byte; i++) {
        const char *type = type_of(steps[i]);
        next.len = 0;
        if (strcmp(type, "Replace") == 0) {
            const char *from =
                json_string_value(json_object_get(json_object_get(steps[i], "pattern"), "String"));
            const char *to = json_string_value(json_object_get(steps[i], "content"));
            st = sbuf_put_replaced(&next, cur.p, cur.len, from, to);
        } else if (strcmp(type, "Metaspace") == 0) {
            const char *rep = json_string_value(json_object_get(steps[i], "replacement"));
            st = sbuf_put_replaced(&next, cur.p, cur.len, rep ? rep : metaspace_default, " ");
        } else if (strcmp(type, "ByteFallback") == 0) {
            int b = dsla_tok_parse_byte_token(cur.p, cur.len);
            if (b >= 0) {
                unsigned char c = (unsigned char)b;
                *is_byte = true;
                st = sbuf_put(&next, &c, 1);
            } else {
                st = sbuf_put(&next, cur.p, cur.len);
            }
        } else if (strcmp(type, "ByteLevel") == 0) {
            /* a token with a character outside the byte map decodes to its own UTF-8, as HF */
            bool mapped = true;
            for (size_t k = 0; k < cur.len && st == DSLA_OK;) {
                size_t cl = dsla_tok_utf8_len((unsigned char)cur.p[k]);
                uint32_t cp = decode_utf8((const unsigned char *)cur.p + k, cl);
                if (cp >= 512 || u2b[cp] < 0) {
                    mapped = false;
                    break;
                }
                unsigned char c = (unsigned char)u2b[cp];
                st = sbuf_put(&next, &c, 1);
                k += cl;
            }
            if (!mapped) {
                next.len = 0;
                st = sbuf_put(&next, cur.p, cur.len);
            }
        } else {
            st = sbuf_put(&next, cur.p, cur.len); /* Fuse, Strip: handled across tokens */
        }
        sbuf_t tmp = cur;
        cur = next;
        next = tmp;
    }
    if (st == DSLA_OK) st = sbuf_put(out, cur.p, cur.len);
    free(cur.p);
    free(next.p);
    return st;
}

static dsla_status_t build_decoder(dsla_tokenizer_t *t, json_t *d, const char *path) {
    if (!json_is_object(d))
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "tokenizer %s: no decoder (HF would join tokens with spaces)", path);
    json_t **steps = NULL;
    size_t n = 0;
    dsla_status_t s = decoder_steps(d, &steps, &n, path);
    if (s == DSLA_OK) s = check_decoder(t, steps, n, path);
    int16_t u2b[512];
    for (int i = 0; i < 512; i++)
        u2b[i] = -1;
    uint32_t b2u[256];
    build_byte_map(b2u);
    for (int b = 0; b < 256; b++)
        u2b[b2u[b]] = (int16_t)b;
    sbuf_t arena = {0};
    size_t *off = malloc(((size_t)t->n_vocab + 1) * sizeof *off);
    if (!off && s == DSLA_OK) s = dsla_error_oom("tokenizer");
    for (int32_t i = 0; i < t->n_vocab && s == DSLA_OK; i++) {
        bool is_byte = false;
        off[i] = arena.len;
        s = decode_piece(u2b, steps, n, t->piece[i], t->piece_len[i], &arena, &is_byte);
        t->dec_is_byte[i] = is_byte;
    }
    if (s == DSLA_OK) {
        off[t->n_vocab] = arena.len;
        s = sbuf_put(&arena, "", 0); /* non-NULL even when every token decodes to nothing */
    }
    if (s == DSLA_OK) {
        t->dec_arena = arena.p;
        arena.p = NULL;
        for (int32_t i = 0; i < t->n_vocab; i++) {
            t->dec[i] = t->dec_arena + off[i];
            t->dec_len[i] = (uint32_t)(off[i + 1] - off[i]);
        }
    }
    free(arena.p);
    free(off);
    free(steps);
    return s;
}

/* ---- parsing: vocabulary, added tokens, merges ---------------------------------------------- */

static dsla_status_t json_id(json_t *v, int32_t *id, const char *what, const char *path) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= HF_MAX_VOCAB)
        return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: %s has no id in 0..%d", path, what,
                          HF_MAX_VOCAB - 1);
    *id = (int32_t)json_integer_value(v);
    return DSLA_OK;
}

static dsla_status_t load_vocab(dsla_tokenizer_t *t, json_t *vocab, json_t *added,
                                const char *path) {
    int32_t max_id = -1;
    size_t total = 0;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        int32_t id;
        DSLA_TRY(json_id(v, &id, "a vocab entry", path));
        if (id > max_id) max_id = id;
        total += strlen(key);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        int32_t id;
        const char *content = json_string_value(json_object_get(v, "content"));
        if (!content)
            return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: added token %zu has no content", path,
                              i);
        DSLA_TRY(json_id(json_object_get(v, "id"), &id, "an added token", path));
        if (id > max_id) max_id = id;
        total += strlen(content);
    }
    if (max_id < 0) return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: empty vocabulary", path);
    DSLA_TRY(dsla_tok_alloc_tables(t, max_id + 1));
    t->arena = malloc(total + 1);
    if (!t->arena) return dsla_error_oom("tokenizer %s", path);
    size_t at = 0;
    json_object_foreach(vocab, key, v) {
        int32_t id = (int32_t)json_integer_value(v);
        size_t len = strlen(key);
        memcpy(t->arena + at, key, len);
        t->piece[id] = t->arena + at;
        t->piece_len[id] = (uint32_t)len;
        at += len;
    }
    json_array_foreach(added, i, v) {
        int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
        const char *content = json_string_value(json_object_get(v, "content"));
        size_t len = strlen(content);
        memcpy(t->arena + at, content, len);
        if (t->piece_len[id] == 0) {
            t->piece[id] = t->arena + at;
            t->piece_len[id] = (uint32_t)len;
        }
        if (json_is_true(json_object_get(v, "special"))) t->special[id] = 1;
        at += len;
    }
    DSLA_TRY(dsla_tok_index_vocab(t));
    /* added tokens whose content differs from the model's string for the id still name it */
    at = 0;
    json_object_foreach(vocab, key, v) at += strlen(key);
    json_array_foreach(added, i, v) {
        int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
        size_t len = strlen(json_string_value(json_object_get(v, "content")));
        if (len > 0) DSLA_TRY(dsla_tok_strmap_put(&t->vocab, t->arena + at, (uint32_t)len, id));
        at += len;
    }
    return DSLA_OK;
}

static int added_longest_first(const void *a, const void *b) {
    const added_t *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static dsla_status_t load_added(dsla_tokenizer_t *t, json_t *added) {
    dsla_tok_hf_t *hf = t->hf;
    size_t n = json_array_size(added);
    if (n == 0) return DSLA_OK;
    hf->added = calloc(n, sizeof *hf->added);
    if (!hf->added) return dsla_error_oom("tokenizer: added tokens");
    size_t i;
    json_t *v;
    json_array_foreach(added, i, v) {
        int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
        const char *content = json_string_value(json_object_get(v, "content"));
        size_t len = strlen(content);
        if (len == 0) continue;
        char *copy = dup_str(content); /* the JSON is freed once loaded */
        if (!copy) return dsla_error_oom("tokenizer: added tokens");
        hf->added[hf->n_added++] = (added_t){id,
                                             copy,
                                             len,
                                             json_is_true(json_object_get(v, "lstrip")),
                                             json_is_true(json_object_get(v, "rstrip")),
                                             json_is_true(json_object_get(v, "single_word"))};
        hf->added_first_byte[(unsigned char)content[0]] = true;
    }
    qsort(hf->added, hf->n_added, sizeof *hf->added, added_longest_first);
    return DSLA_OK;
}

static dsla_status_t load_merges(dsla_tokenizer_t *t, json_t *merges, const char *path) {
    size_t rank;
    json_t *m;
    sbuf_t both = {0};
    dsla_status_t s = DSLA_OK;
    json_array_foreach(merges, rank, m) {
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        if (json_is_array(m) && json_array_size(m) == 2) {
            a = json_string_value(json_array_get(m, 0));
            b = json_string_value(json_array_get(m, 1));
            if (a && b) alen = strlen(a), blen = strlen(b);
        } else if (json_is_string(m)) {
            a = json_string_value(m);
            const char *sp = strchr(a, ' ');
            if (sp && !strchr(sp + 1, ' ')) {
                alen = (size_t)(sp - a);
                b = sp + 1;
                blen = strlen(b);
            } else {
                a = NULL;
            }
        }
        if (!a || !b) {
            s = dsla_error(DSLA_ERR_FORMAT,
                           "tokenizer %s: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", path,
                           rank);
            break;
        }
        both.len = 0;
        if ((s = sbuf_put(&both, a, alen)) != DSLA_OK || (s = sbuf_put(&both, b, blen)) != DSLA_OK)
            break;
        int32_t ia = dsla_tok_strmap_get(&t->vocab, a, alen);
        int32_t ib = dsla_tok_strmap_get(&t->vocab, b, blen);
        int32_t im = dsla_tok_strmap_get(&t->vocab, both.p, both.len);
        if (ia < 0 || ib < 0 || im < 0) {
            s = dsla_error(DSLA_ERR_FORMAT,
                           "tokenizer %s: merge %zu (\"%.*s\" \"%.*s\") names a token that is not "
                           "in the vocabulary",
                           path, rank, (int)alen, a, (int)blen, b);
            break;
        }
        if ((s = dsla_tok_pairmap_put(&t->merges, ia, ib, (double)rank, im)) != DSLA_OK) break;
    }
    free(both.p);
    return s;
}

static int32_t find_added(const dsla_tokenizer_t *t, const char *const *names) {
    for (; *names; names++) {
        int32_t id = dsla_tok_strmap_get(&t->vocab, *names, strlen(*names));
        if (id >= 0 && t->special[id]) return id;
    }
    return -1;
}

/* BOS is what the post-processor's single-sequence template puts first; add_bos_default follows it.
 */
static void find_bos_eos(dsla_tokenizer_t *t, json_t *post) {
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>",
                                            NULL};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>",
                                            NULL};
    json_t *tmpl = NULL;
    if (strcmp(type_of(post), "TemplateProcessing") == 0) tmpl = post;
    if (strcmp(type_of(post), "Sequence") == 0) {
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(post, "processors"), i, p) {
            if (strcmp(type_of(p), "TemplateProcessing") == 0) tmpl = p;
        }
    }
    t->bos_id = find_added(t, bos_names);
    t->eos_id = find_added(t, eos_names);
    t->add_bos_default = t->bos_id >= 0;
    if (!tmpl) return;
    json_t *first = json_array_get(json_object_get(tmpl, "single"), 0);
    const char *name =
        json_string_value(json_object_get(json_object_get(first, "SpecialToken"), "id"));
    json_t *spec = json_object_get(json_object_get(tmpl, "special_tokens"), name ? name : "");
    json_t *ids = json_object_get(spec, "ids");
    if (json_array_size(ids) == 1 && json_is_integer(json_array_get(ids, 0))) {
        json_int_t id = json_integer_value(json_array_get(ids, 0));
        if (id >= 0 && id < t->n_vocab) t->bos_id = (int32_t)id;
        t->add_bos_default = true;
    } else {
        t->add_bos_default = false;
    }
}

dsla_status_t dsla_tok_hf_parse(dsla_tokenizer_t *t, json_t *root, const char *path) {
    t->hf = calloc(1, sizeof *t->hf);
    if (!t->hf) return dsla_error_oom("tokenizer %s", path);
    dsla_tok_hf_t *hf = t->hf;
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: no \"model\" object", path);
    const char *type = json_string_value(json_object_get(model, "type"));
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!type && json_is_object(vocab) && json_is_array(merges)) type = "BPE";
    if (!type || strcmp(type, "BPE") != 0)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "tokenizer %s: model type \"%s\" is not supported (only BPE)", path,
                          type ? type : "(none)");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: BPE model needs vocab and merges", path);
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added))
        return dsla_error(DSLA_ERR_FORMAT, "tokenizer %s: added_tokens is not an array", path);
    const char *prefix = json_string_value(json_object_get(model, "continuing_subword_prefix"));
    const char *suffix = json_string_value(json_object_get(model, "end_of_word_suffix"));
    if ((prefix && *prefix) || (suffix && *suffix))
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "tokenizer %s: BPE continuing_subword_prefix/end_of_word_suffix", path);
    json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "tokenizer %s: BPE dropout", path);
    hf->byte_fallback = bool_field(model, "byte_fallback", false);
    hf->fuse_unk = bool_field(model, "fuse_unk", false);
    hf->ignore_merges = bool_field(model, "ignore_merges", false);
    uint32_t b2u[256];
    build_byte_map(b2u);
    for (int b = 0; b < 256; b++)
        hf->b2u_len[b] = (uint8_t)encode_utf8(b2u[b], hf->b2u[b]);

    DSLA_TRY(load_vocab(t, vocab, added, path));
    DSLA_TRY(load_added(t, added));
    DSLA_TRY(load_merges(t, merges, path));
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) t->unk_id = dsla_tok_strmap_get(&t->vocab, unk, strlen(unk));
    DSLA_TRY(parse_normalizer(hf, json_object_get(root, "normalizer"), path));
    DSLA_TRY(parse_pre_tokenizer(hf, json_object_get(root, "pre_tokenizer"), path));
    DSLA_TRY(build_decoder(t, json_object_get(root, "decoder"), path));
    find_bos_eos(t, json_object_get(root, "post_processor"));
    return DSLA_OK;
}

void dsla_tok_hf_free(dsla_tok_hf_t *hf) {
    if (!hf) return;
    for (size_t i = 0; i < hf->n_norms; i++) {
        free(hf->norms[i].from);
        free(hf->norms[i].to);
    }
    free(hf->norms);
    for (size_t i = 0; i < hf->n_pres; i++) {
        pcre2_code_free(hf->pres[i].re);
        free(hf->pres[i].replacement);
    }
    free(hf->pres);
    for (size_t i = 0; i < hf->n_added; i++)
        free(hf->added[i].content);
    free(hf->added);
    free(hf);
}

/* ---- encoding ------------------------------------------------------------------------------- */

/* A list of pieces: pre-tokenizers refine it step by step. `origin` marks the piece that starts at
 * offset 0 of the whole text (Metaspace's prepend_scheme "first"). */
typedef struct {
    size_t start, end;
    bool origin;
} span_t;

typedef struct {
    sbuf_t buf;
    span_t *sp;
    size_t n, cap;
} plist_t;

static void plist_free(plist_t *l) {
    free(l->buf.p);
    free(l->sp);
    *l = (plist_t){0};
}

static dsla_status_t plist_add(plist_t *l, const char *s, size_t n, bool origin) {
    if (n == 0) return DSLA_OK;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        span_t *sp = realloc(l->sp, cap * sizeof *sp);
        if (!sp) return dsla_error_oom("tokenizer: pieces");
        l->sp = sp;
        l->cap = cap;
    }
    size_t start = l->buf.len;
    DSLA_TRY(sbuf_put(&l->buf, s, n));
    l->sp[l->n++] = (span_t){start, l->buf.len, origin};
    return DSLA_OK;
}

typedef struct {
    size_t start, end;
} range_t;

typedef struct {
    range_t *v;
    size_t n, cap;
} ranges_t;

static dsla_status_t find_matches(const pcre2_code *re, pcre2_match_data *md, const char *s,
                                  size_t n, ranges_t *out) {
    out->n = 0;
    size_t off = 0;
    while (off <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, off, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return dsla_error(DSLA_ERR_INTERNAL, "tokenizer: pre_tokenizer regex failed: %s",
                              (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] <= ov[0]) { /* an empty match splits nothing; step over one character */
            if (ov[0] >= n) break;
            off = ov[0] + dsla_tok_utf8_len((unsigned char)s[ov[0]]);
            continue;
        }
        if (out->n == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 64;
            range_t *v = realloc(out->v, cap * sizeof *v);
            if (!v) return dsla_error_oom("tokenizer: matches");
            out->v = v;
            out->cap = cap;
        }
        out->v[out->n++] = (range_t){ov[0], ov[1]};
        off = ov[1];
    }
    return DSLA_OK;
}

/* Splits one piece at the matches according to behavior, appending the parts to out. */
static dsla_status_t split_piece(const char *s, size_t n, bool origin, const ranges_t *m,
                                 split_behavior_t behavior, plist_t *out) {
    size_t cur = 0;
    for (size_t i = 0; i < m->n; i++) {
        range_t r = m->v[i];
        switch (behavior) {
        case SPLIT_ISOLATED:
        case SPLIT_REMOVED:
            DSLA_TRY(plist_add(out, s + cur, r.start - cur, origin && cur == 0));
            if (behavior == SPLIT_ISOLATED)
                DSLA_TRY(plist_add(out, s + r.start, r.end - r.start, origin && r.start == 0));
            cur = r.end;
            break;
        case SPLIT_MERGED_WITH_PREVIOUS:
            DSLA_TRY(plist_add(out, s + cur, r.end - cur, origin && cur == 0));
            cur = r.end;
            break;
        case SPLIT_MERGED_WITH_NEXT:
            DSLA_TRY(plist_add(out, s + cur, r.start - cur, origin && cur == 0));
            cur = r.start;
            break;
        }
    }
    return plist_add(out, s + cur, n - cur, origin && cur == 0);
}

/* Split on every occurrence of a literal string, the delimiter starting the following piece. */
static dsla_status_t literal_matches(const char *s, size_t n, const char *lit, ranges_t *out) {
    size_t ll = strlen(lit);
    out->n = 0;
    for (size_t i = 0; i + ll <= n;) {
        if (memcmp(s + i, lit, ll) != 0) {
            i++;
            continue;
        }
        if (out->n == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : 64;
            range_t *v = realloc(out->v, cap * sizeof *v);
            if (!v) return dsla_error_oom("tokenizer: matches");
            out->v = v;
            out->cap = cap;
        }
        out->v[out->n++] = (range_t){i, i + ll};
        i += ll;
    }
    return DSLA_OK;
}

static dsla_status_t apply_pre(const dsla_tok_hf_t *hf, const pre_t *p, pcre2_match_data *md,
                               ranges_t *m, sbuf_t *tmp, const plist_t *in, plist_t *out) {
    for (size_t i = 0; i < in->n; i++) {
        const char *s = in->buf.p + in->sp[i].start;
        size_t n = in->sp[i].end - in->sp[i].start;
        bool origin = in->sp[i].origin;
        if (p->kind == PRE_SPLIT) {
            DSLA_TRY(find_matches(p->re, md, s, n, m));
            DSLA_TRY(split_piece(s, n, origin, m, p->behavior, out));
        } else if (p->kind == PRE_METASPACE) {
            size_t rl = strlen(p->replacement);
            tmp->len = 0;
            bool starts = n >= 1 && s[0] == ' ';
            bool prepend =
                (p->prepend == PREPEND_ALWAYS || (p->prepend == PREPEND_FIRST && origin)) &&
                !starts && !(n >= rl && memcmp(s, p->replacement, rl) == 0);
            if (prepend) DSLA_TRY(sbuf_put(tmp, p->replacement, rl));
            DSLA_TRY(sbuf_put_replaced(tmp, s, n, " ", p->replacement));
            if (p->split) {
                DSLA_TRY(literal_matches(tmp->p, tmp->len, p->replacement, m));
                DSLA_TRY(split_piece(tmp->p, tmp->len, origin, m, SPLIT_MERGED_WITH_NEXT, out));
            } else {
                DSLA_TRY(plist_add(out, tmp->p, tmp->len, origin));
            }
        } else { /* PRE_BYTELEVEL */
            tmp->len = 0;
            if (p->add_prefix_space && !(n > 0 && s[0] == ' ')) DSLA_TRY(sbuf_put(tmp, " ", 1));
            DSLA_TRY(sbuf_put(tmp, s, n));
            plist_t parts = {0};
            dsla_status_t st = DSLA_OK;
            if (p->re) {
                st = find_matches(p->re, md, tmp->p, tmp->len, m);
                if (st == DSLA_OK)
                    st = split_piece(tmp->p, tmp->len, origin, m, SPLIT_ISOLATED, &parts);
            } else {
                st = plist_add(&parts, tmp->p, tmp->len, origin);
            }
            for (size_t k = 0; k < parts.n && st == DSLA_OK; k++) {
                sbuf_t mapped = {0};
                for (size_t j = parts.sp[k].start; j < parts.sp[k].end && st == DSLA_OK; j++) {
                    unsigned char b = (unsigned char)parts.buf.p[j];
                    st = sbuf_put(&mapped, hf->b2u[b], hf->b2u_len[b]);
                }
                if (st == DSLA_OK) st = plist_add(out, mapped.p, mapped.len, parts.sp[k].origin);
                free(mapped.p);
            }
            plist_free(&parts);
            DSLA_TRY(st);
        }
    }
    return DSLA_OK;
}

/* BPE on one pre-token: characters (or their <0xXX> bytes, or <unk>) merged by rank. */
static dsla_status_t encode_word(const dsla_tokenizer_t *t, const char *s, size_t n,
                                 dsla_tok_ids_t *ids) {
    const dsla_tok_hf_t *hf = t->hf;
    if (hf->ignore_merges) {
        int32_t id = dsla_tok_strmap_get(&t->vocab, s, n);
        if (id >= 0) return dsla_tok_ids_push(ids, id);
    }
    size_t from = ids->n;
    bool prev_unk = false;
    for (size_t i = 0; i < n;) {
        size_t cl = dsla_tok_utf8_len((unsigned char)s[i]);
        int32_t id = dsla_tok_strmap_get(&t->vocab, s + i, cl);
        bool bytes = false;
        if (id < 0 && hf->byte_fallback) {
            bytes = true;
            for (size_t k = 0; k < cl; k++)
                bytes = bytes && t->byte_id[(unsigned char)s[i + k]] >= 0;
        }
        if (id >= 0) {
            DSLA_TRY(dsla_tok_ids_push(ids, id));
            prev_unk = false;
        } else if (bytes) {
            for (size_t k = 0; k < cl; k++)
                DSLA_TRY(dsla_tok_ids_push(ids, t->byte_id[(unsigned char)s[i + k]]));
            prev_unk = false;
        } else if (t->unk_id >= 0) {
            if (!(hf->fuse_unk && prev_unk)) DSLA_TRY(dsla_tok_ids_push(ids, t->unk_id));
            prev_unk = true;
        }
        i += cl;
    }
    return dsla_tok_bpe_merge(t, ids, from);
}

typedef struct {
    pcre2_match_data *md;
    ranges_t m;
    sbuf_t norm, tmp;
    plist_t a, b;
} work_t;

static dsla_status_t encode_segment(const dsla_tokenizer_t *t, work_t *w, const char *s, size_t n,
                                    bool origin, dsla_tok_ids_t *ids) {
    const dsla_tok_hf_t *hf = t->hf;
    if (n == 0) return DSLA_OK;
    w->norm.len = 0;
    DSLA_TRY(sbuf_put(&w->norm, s, n));
    for (size_t i = 0; i < hf->n_norms; i++) {
        const norm_t *nm = &hf->norms[i];
        w->tmp.len = 0;
        if (nm->kind == NORM_PREPEND) {
            if (w->norm.len > 0) DSLA_TRY(sbuf_put(&w->tmp, nm->to, strlen(nm->to)));
            DSLA_TRY(sbuf_put(&w->tmp, w->norm.p, w->norm.len));
        } else {
            DSLA_TRY(sbuf_put_replaced(&w->tmp, w->norm.p, w->norm.len, nm->from, nm->to));
        }
        sbuf_t x = w->norm;
        w->norm = w->tmp;
        w->tmp = x;
    }
    w->a.n = 0;
    w->a.buf.len = 0;
    DSLA_TRY(plist_add(&w->a, w->norm.p, w->norm.len, origin));
    for (size_t i = 0; i < hf->n_pres; i++) {
        w->b.n = 0;
        w->b.buf.len = 0;
        DSLA_TRY(apply_pre(hf, &hf->pres[i], w->md, &w->m, &w->tmp, &w->a, &w->b));
        plist_t x = w->a;
        w->a = w->b;
        w->b = x;
    }
    for (size_t i = 0; i < w->a.n; i++)
        DSLA_TRY(
            encode_word(t, w->a.buf.p + w->a.sp[i].start, w->a.sp[i].end - w->a.sp[i].start, ids));
    return DSLA_OK;
}

static bool is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static bool is_word_byte(unsigned char c) {
    return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           c >= 0x80;
}

/* The leftmost, then longest, added token at or after pos: [*ms, *me) with lstrip/rstrip spaces. */
static int32_t next_added(const dsla_tok_hf_t *hf, const char *s, size_t n, size_t pos,
                          size_t floor, size_t *ms, size_t *me) {
    for (size_t i = pos; i < n; i++) {
        if (!hf->added_first_byte[(unsigned char)s[i]]) continue;
        for (size_t k = 0; k < hf->n_added; k++) {
            const added_t *a = &hf->added[k];
            if (n - i < a->len || memcmp(s + i, a->content, a->len) != 0) continue;
            size_t start = i, end = i + a->len;
            if (a->single_word && ((start > 0 && is_word_byte((unsigned char)s[start - 1])) ||
                                   (end < n && is_word_byte((unsigned char)s[end]))))
                continue;
            if (a->lstrip)
                while (start > floor && is_space((unsigned char)s[start - 1]))
                    start--;
            if (a->rstrip)
                while (end < n && is_space((unsigned char)s[end]))
                    end++;
            *ms = start;
            *me = end;
            return a->id;
        }
    }
    return -1;
}

dsla_status_t dsla_tok_hf_encode(const dsla_tokenizer_t *t, const char *text, size_t len,
                                 dsla_tok_ids_t *ids) {
    work_t w = {0};
    w.md = pcre2_match_data_create(1, NULL);
    if (!w.md) return dsla_error_oom("tokenizer: match data");
    dsla_status_t s = DSLA_OK;
    size_t seg = 0;
    while (s == DSLA_OK) {
        size_t ms = len, me = len;
        int32_t id = next_added(t->hf, text, len, seg, seg, &ms, &me);
        s = encode_segment(t, &w, text + seg, ms - seg, seg == 0, ids);
        if (id < 0 || s != DSLA_OK) break;
        s = dsla_tok_ids_push(ids, id);
        seg = me;
    }
    pcre2_match_data_free(w.md);
    free(w.m.v);
    free(w.norm.p);
    free(w.tmp.p);
    plist_free(&w.a);
    plist_free(&w.b);
    return s;
}

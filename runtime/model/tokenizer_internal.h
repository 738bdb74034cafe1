/* The inside of dsla_tokenizer_t, shared by tokenizer.c (handle, decoding, BPE merge engine),
 * tokenizer_bpe.c (HF tokenizer.json) and tokenizer_llama2c.c (llama2.c tokenizer.bin).
 *
 * Only runtime/model/tokenizer*.c include this. Both formats load into the same tables: a
 * vocabulary (id -> string, string -> id), a pair table ((left, right) -> merged id and priority,
 * lower merges first) and, per id, the bytes it contributes to decoded text. Encoding differs per
 * format only in how text becomes the initial symbols; the merging is one engine. */
#ifndef DSLA_MODEL_TOKENIZER_INTERNAL_H
#define DSLA_MODEL_TOKENIZER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "runtime/core/status.h"
#include "runtime/model/tokenizer.h"

/* string -> id, open addressing; keys point into memory the tokenizer owns. */
typedef struct {
    const char *key;
    uint32_t len;
    int32_t id; /* -1: empty slot */
} dsla_tok_slot_t;

typedef struct {
    dsla_tok_slot_t *slots;
    size_t mask;
    size_t count;
} dsla_tok_strmap_t;

/* (left, right) -> merged id; prio orders merges (HF: rank; llama2.c: minus the score). */
typedef struct {
    uint64_t key; /* UINT64_MAX: empty slot */
    double prio;
    int32_t new_id;
} dsla_tok_pair_t;

typedef struct {
    dsla_tok_pair_t *slots;
    size_t mask;
    size_t count;
} dsla_tok_pairmap_t;

typedef struct {
    int32_t *v;
    size_t n, cap;
} dsla_tok_ids_t;

typedef enum { DSLA_TOK_HF = 1, DSLA_TOK_LLAMA2C = 2 } dsla_tok_kind_t;

typedef enum {
    DSLA_TOK_STRIP_NONE = 0,
    DSLA_TOK_STRIP_AT_START,  /* HF Strip/Metaspace decoders: leading spaces of the whole text */
    DSLA_TOK_STRIP_AFTER_BOS, /* run.c: the leading space of the piece that follows BOS */
} dsla_tok_strip_t;

typedef struct dsla_tok_hf dsla_tok_hf_t; /* the HF pipeline, private to tokenizer_bpe.c */

struct dsla_tokenizer {
    dsla_tok_kind_t kind;
    int32_t n_vocab;
    /* vocabulary strings, all in one arena; an id without a string has length 0 */
    char *arena;
    const char **piece;
    uint32_t *piece_len;
    uint8_t *special;
    dsla_tok_strmap_t vocab;
    dsla_tok_pairmap_t merges;
    /* decoding: the bytes each id contributes, in their own arena */
    char *dec_arena;
    const char **dec;
    uint32_t *dec_len;
    uint8_t *dec_is_byte; /* a <0xXX> byte-fallback token */
    dsla_tok_strip_t strip;
    int strip_count;
    int32_t bos_id, eos_id, unk_id;
    bool add_bos_default;
    int32_t byte_id[256]; /* <0xXX> token per byte, -1 when absent */
    bool has_byte_tokens; /* all 256 present */
    /* llama2.c */
    float *scores;
    int32_t space_id;
    /* HF */
    char *json_text; /* the tokenizer.json as read: save_json writes it back unchanged */
    size_t json_len;
    dsla_tok_hf_t *hf;
};

/* tokenizer.c. strmap_put keeps the first id for a repeated string; pairmap_put lets a repeated
 * pair's later entry win (HF builds its merge map that way). */
dsla_status_t dsla_tok_strmap_put(dsla_tok_strmap_t *m, const char *key, uint32_t len, int32_t id);
int32_t dsla_tok_strmap_get(const dsla_tok_strmap_t *m, const char *key, size_t len);
void dsla_tok_strmap_free(dsla_tok_strmap_t *m);
dsla_status_t dsla_tok_pairmap_put(dsla_tok_pairmap_t *m, int32_t left, int32_t right, double prio,
                                   int32_t new_id);
const dsla_tok_pair_t *dsla_tok_pairmap_get(const dsla_tok_pairmap_t *m, int32_t left,
                                            int32_t right);
void dsla_tok_pairmap_free(dsla_tok_pairmap_t *m);
dsla_status_t dsla_tok_ids_push(dsla_tok_ids_t *ids, int32_t id);
/* Allocates the per-id tables for n ids (pieces empty, nothing special). */
dsla_status_t dsla_tok_alloc_tables(dsla_tokenizer_t *t, int32_t n);
/* Builds the string -> id map and byte_id[] from the pieces (first id wins on duplicates). */
dsla_status_t dsla_tok_index_vocab(dsla_tokenizer_t *t);
/* Merges symbols ids[from..n) in place by the pair table, lowest prio first, leftmost on ties (the
 * order of both HF's BPE and run.c's loop); shrinks ids->n. */
dsla_status_t dsla_tok_bpe_merge(const dsla_tokenizer_t *t, dsla_tok_ids_t *ids, size_t from);
/* Length of the UTF-8 character starting at s (1..4), for text already validated. */
size_t dsla_tok_utf8_len(unsigned char lead);
/* Returns the offset of the first invalid byte, or len when s is valid UTF-8. */
size_t dsla_tok_utf8_validate(const unsigned char *s, size_t len);
/* Parses "<0xXX>" exactly; returns the byte or -1. */
int dsla_tok_parse_byte_token(const char *s, size_t len);

/* tokenizer_bpe.c; root is only read, the caller frees it */
dsla_status_t dsla_tok_hf_parse(dsla_tokenizer_t *t, json_t *root, const char *path);
dsla_status_t dsla_tok_hf_encode(const dsla_tokenizer_t *t, const char *text, size_t len,
                                 dsla_tok_ids_t *ids);
void dsla_tok_hf_free(dsla_tok_hf_t *hf);

/* tokenizer_llama2c.c */
dsla_status_t dsla_tok_llama2c_parse(dsla_tokenizer_t *t, const unsigned char *data, size_t size,
                                     const char *path);
dsla_status_t dsla_tok_llama2c_encode(const dsla_tokenizer_t *t, const char *text, size_t len,
                                      bool add_bos, dsla_tok_ids_t *ids);
dsla_status_t dsla_tok_llama2c_save_json(const dsla_tokenizer_t *t, const char *path);

#endif

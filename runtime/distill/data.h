/* Distillation data: text or token files turned into packed training sequences (DESIGN.md 5.4).
 *
 * Text files are split into paragraphs at blank lines and each paragraph is encoded without BOS;
 * the token streams are concatenated and cut into sequences of seq_len tokens, each starting with
 * BOS (when the tokenizer has one) as a served prompt does. Token files (extension .tokens) are raw
 * little-endian int32 ids, packed the same way. A corpus holds its sequences in one [n, seq_len]
 * array; a held-out split takes the last sequences so that train and eval never share text.
 *
 * A prompt reservoir keeps a bounded, uniform sample of token sequences offered one at a time
 * (prompts sampled from live traffic, DESIGN.md 5.4): reservoir sampling (Vitter's algorithm R)
 * over at most capacity prompts of at most max_len tokens each, with a seeded generator, so the
 * same offers in the same order keep the same prompts. It packs what it holds into a corpus the
 * way text is packed (leading BOS dropped, streams concatenated, cut into BOS-led sequences).
 * This module only prepares tokens: it runs no model, knows nothing of layers and takes no
 * locks (its owner does). */
#ifndef DSLA_DISTILL_DATA_H
#define DSLA_DISTILL_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/tokenizer.h"

typedef struct {
    int seq_len;
    int num_sequences;
    int32_t *tokens; /* [num_sequences][seq_len] */
} dsla_corpus_t;

/* Reads and packs files[0..n_files). max_sequences > 0 stops after that many (the rest is not
 * read). INVALID_ARGUMENT when seq_len < 2 or the files give not even one sequence (naming the
 * count). */
dsla_status_t dsla_corpus_load(dsla_corpus_t *corpus, const dsla_tokenizer_t *tokenizer,
                               const char *const *files, int n_files, int seq_len,
                               int max_sequences);
/* Moves the last n_eval sequences of corpus into eval (a new corpus). n_eval must leave at least
 * one training sequence. */
dsla_status_t dsla_corpus_split(dsla_corpus_t *corpus, dsla_corpus_t *eval, int n_eval);
void dsla_corpus_free(dsla_corpus_t *corpus);
/* Cuts stream[0..n) into sequences of corpus->seq_len tokens, each led by bos when bos >= 0, and
 * appends them to corpus (grown with realloc; seq_len must be set). A tail too short for a whole
 * sequence is dropped; *added (may be NULL) receives the count appended. */
dsla_status_t dsla_corpus_pack(dsla_corpus_t *corpus, const int32_t *stream, size_t n, int bos,
                               int *added);

/* One prompt of a reservoir. */
typedef struct {
    int32_t *ids;
    int len;
    bool used; /* packed into a corpus at least once */
} dsla_reservoir_slot_t;

typedef struct {
    int capacity, max_len;
    uint64_t rng;
    dsla_reservoir_slot_t *slots; /* [capacity]; the first n hold prompts */
    int n;
    uint64_t offered;           /* prompts offered in all */
    uint64_t used, used_tokens; /* prompts (and their tokens) packed at least once */
} dsla_reservoir_t;

/* capacity >= 1 prompts of at most max_len >= 1 tokens (longer ones keep their first max_len). */
dsla_status_t dsla_reservoir_init(dsla_reservoir_t *r, int capacity, int max_len, uint64_t seed);
/* Offers one prompt: kept while there is room, else in place of a random one with probability
 * capacity / offered. Empty prompts are ignored. */
dsla_status_t dsla_reservoir_offer(dsla_reservoir_t *r, const int32_t *ids, int n);
/* Tokens the held prompts have together. */
size_t dsla_reservoir_tokens(const dsla_reservoir_t *r);
/* Packs every held prompt whose ids all lie in [0, vocab) (in slot order, a leading bos dropped)
 * into corpus with dsla_corpus_pack and marks them used; the others (a peer's bad ids) are skipped.
 * *added receives the sequences appended. */
dsla_status_t dsla_reservoir_pack(dsla_reservoir_t *r, dsla_corpus_t *corpus, int bos, int vocab,
                                  int *added);
void dsla_reservoir_free(dsla_reservoir_t *r);

static inline const int32_t *dsla_corpus_sequence(const dsla_corpus_t *c, int i) {
    return c->tokens + (size_t)i * (size_t)c->seq_len;
}

#endif

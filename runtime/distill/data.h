/* Distillation data: text or token files turned into packed training sequences (DESIGN.md 5.4).
 *
 * Text files are split into paragraphs at blank lines and each paragraph is encoded without BOS;
 * the token streams are concatenated and cut into sequences of seq_len tokens, each starting with
 * BOS (when the tokenizer has one) as a served prompt does. Token files (extension .tokens) are raw
 * little-endian int32 ids, packed the same way. A corpus holds its sequences in one [n, seq_len]
 * array; a held-out split takes the last sequences so that train and eval never share text.
 * This module only prepares tokens: it runs no model and knows nothing of layers. */
#ifndef DSLA_DISTILL_DATA_H
#define DSLA_DISTILL_DATA_H

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

static inline const int32_t *dsla_corpus_sequence(const dsla_corpus_t *c, int i) {
    return c->tokens + (size_t)i * (size_t)c->seq_len;
}

#endif

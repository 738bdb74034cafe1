/* Tokenizers: text <-> token ids for the Llama family, and a streaming detokenizer for generation.
 *
 * Two file formats, one handle:
 *  - Hugging Face tokenizer.json with model type "BPE", either SentencePiece-style (Prepend/Replace
 *    normalizers or a Metaspace pre-tokenizer, <0xXX> byte fallback,
 * Replace/ByteFallback/Fuse/Strip decoder) or byte-level (Split-regex + ByteLevel pre-tokenizer,
 * ByteLevel decoder, as Llama-3 and GPT-2). Added tokens are split out of the text first, as
 * Hugging Face `tokenizers` does.
 *  - llama2.c tokenizer.bin (max_token_length, then score/len/bytes per token), encoded and decoded
 *    exactly as llama2.c run.c does (dummy prefix space, byte fallback, best-score merges).
 *
 * Contract: ids and decoded text reproduce the reference implementations (`tokenizers` and run.c)
 * on the shared test vectors; anything the loader does not implement (WordPiece, Unigram, NFKC,
 * ...) is an UNSUPPORTED error naming the type, never a silent approximation. A loaded tokenizer is
 * immutable: encode and decode may run concurrently from several threads. This module must not
 * print, must not read past a file's end whatever the file says, and knows nothing of models or
 * serving. */
#ifndef DSLA_MODEL_TOKENIZER_H
#define DSLA_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"

typedef struct dsla_tokenizer dsla_tokenizer_t;

/* path: a tokenizer.json (HF) or a llama2.c tokenizer.bin, told apart by content (JSON starts with
 * '{' after whitespace). */
dsla_status_t dsla_tokenizer_load(dsla_tokenizer_t **out, const char *path);
/* model_dir: tokenizer.json if present, else tokenizer.bin (else a single tok*.bin, as llama2.c
 * ships them); tokenizer_config.json, when present, supplies add_bos_token and bos/eos tokens. */
dsla_status_t dsla_tokenizer_load_dir(dsla_tokenizer_t **out, const char *model_dir);
void dsla_tokenizer_destroy(dsla_tokenizer_t **t);

int dsla_tokenizer_vocab_size(const dsla_tokenizer_t *t);
int dsla_tokenizer_bos_id(const dsla_tokenizer_t *t); /* -1 if none */
int dsla_tokenizer_eos_id(const dsla_tokenizer_t *t); /* -1 if none */
/* Whether callers should prepend BOS by default: tokenizer_config.json's add_bos_token, else true
 * when the tokenizer has a BOS token. */
bool dsla_tokenizer_add_bos_default(const dsla_tokenizer_t *t);
/* Special tokens (BOS, EOS, <unk>, HF added tokens marked special) are what skip_special drops. */
bool dsla_tokenizer_is_special(const dsla_tokenizer_t *t, int32_t id);
/* The id of a vocabulary string (as stored in the vocabulary: "▁the", "Ġthe", "<s>"), or -1. */
int32_t dsla_tokenizer_token_to_id(const dsla_tokenizer_t *t, const char *token);
/* The vocabulary string of id (not NUL-terminated: *len bytes); NULL when id is out of range. */
const char *dsla_tokenizer_id_to_token(const dsla_tokenizer_t *t, int32_t id, size_t *len);

/* Encodes UTF-8 text (len bytes). Invalid UTF-8 -> DSLA_ERR_INVALID_ARGUMENT naming the byte
 * offset. *ids is malloc'd (never NULL on success), caller frees. add_bos prepends BOS when the
 * tokenizer has one. Special/added tokens appearing literally in text are matched as in HF (added
 * tokens split first); llama2.c tokenizers have no added tokens, as in run.c. */
dsla_status_t dsla_tokenizer_encode(const dsla_tokenizer_t *t, const char *text, size_t len,
                                    bool add_bos, int32_t **ids, size_t *n_ids);

/* Decodes ids like HF tokenizer.decode(ids, skip_special_tokens=skip_special) (the vectors use
 * true); llama2.c tokenizers strip the leading space of the piece after BOS as run.c does. Bytes
 * that do not form valid UTF-8 become U+FFFD (one per maximal invalid subsequence, as Rust's
 * from_utf8_lossy; HF's ByteFallback decoder writes one per byte of an invalid <0xXX> run instead,
 * a difference only in how garbage shows, kept so that streaming and whole decoding always agree).
 * *text is malloc'd and NUL-terminated. Out-of-range id -> INVALID_ARGUMENT. */
dsla_status_t dsla_tokenizer_decode(const dsla_tokenizer_t *t, const int32_t *ids, size_t n_ids,
                                    bool skip_special, char **text);

/* Writes an HF tokenizer.json equivalent to t. For a llama2.c tokenizer: a SentencePiece-style BPE
 * (byte fallback when the vocabulary has <0xXX> tokens) whose merges, ranked as HF BPE ranks them,
 * reproduce llama2.c's best-score merging, laid out as transformers' SentencePiece converter does.
 */
dsla_status_t dsla_tokenizer_save_json(const dsla_tokenizer_t *t, const char *path);

/* Streaming decode for generation. Pushing ids one at a time and concatenating every piece and the
 * final flush gives exactly dsla_tokenizer_decode(all ids, skip_special=true); a piece never ends
 * inside a UTF-8 character (incomplete byte sequences are held back). The tokenizer must outlive
 * the detokenizer. */
typedef struct dsla_detokenizer dsla_detokenizer_t;
dsla_status_t dsla_detokenizer_create(dsla_detokenizer_t **out, const dsla_tokenizer_t *t);
void dsla_detokenizer_destroy(dsla_detokenizer_t **d);
/* Feeds ids that were already shown (the prompt) without emitting them, so that the first generated
 * piece keeps its leading space: the leading-space rule applies only at the start of the text. */
dsla_status_t dsla_detokenizer_prime(dsla_detokenizer_t *d, const int32_t *ids, size_t n_ids);
/* Appends the text that id completes; returns pointer+length of newly complete text, valid until
 * the next call. */
dsla_status_t dsla_detokenizer_push(dsla_detokenizer_t *d, int32_t id, const char **piece,
                                    size_t *piece_len);
/* Emits what is held back at end of stream (invalid trailing bytes become U+FFFD) and resets the
 * detokenizer for a new stream. */
dsla_status_t dsla_detokenizer_flush(dsla_detokenizer_t *d, const char **piece, size_t *piece_len);

#endif

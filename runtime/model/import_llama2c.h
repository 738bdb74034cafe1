/* import_llama2c: converts a llama2.c "v0" checkpoint and its tokenizer.bin to the Hugging Face
 * layout.
 *
 * The v0 format (llama2.c run.c) is a header of 7 int32 (dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size, seq_len; a negative vocab_size means an untied classifier follows at the
 * end) and then raw float32 matrices in PyTorch (out, in) order. The importer writes config.json,
 * model.safetensors (float32, tensors named and ordered as transformers' save_pretrained does) and
 * tokenizer.json + tokenizer_config.json, so that the rest of dsla-serve only ever loads one
 * layout. q and k rows are permuted from llama2.c's interleaved RoPE pairs to HF's rotate_half
 * halves.
 *
 * Contract: the checkpoint is validated completely (header sanity, file size exactly what the
 * header implies) before anything is written; a malformed file is DSLA_ERR_FORMAT naming the file,
 * and the importer never reads outside it. It must not guess: a v1+ llama2.c file (magic "ak42") or
 * anything whose size does not match is refused, not partially converted. Files in outdir are
 * overwritten. */
#ifndef DSLA_MODEL_IMPORT_LLAMA2C_H
#define DSLA_MODEL_IMPORT_LLAMA2C_H

#include "runtime/core/status.h"

/* Converts a llama2.c v0 checkpoint (ckpt) and its tokenizer.bin into outdir (created if missing):
 * config.json, model.safetensors (float32) and tokenizer.json (+ tokenizer_config.json). */
dsla_status_t dsla_import_llama2c(const char *ckpt_path, const char *tokenizer_path,
                                  const char *outdir);

#endif

/* Llama models of a given shape with random weights, written to disk in the Hugging Face layout,
 * for benchmarks of shapes no checkpoint is at hand for (Llama-2-7B: 13.5 GB, not downloadable
 * here). Written once, such a directory is a model like any other: `dsla distill`, `dsla eval`,
 * `dsla-serve --model` and the controller's layer versions all take it, so the adaptive loop can
 * run end to end at a serving-sized shape (bench/adaptive/).
 *
 * Weights are bf16, uniform in +-1/sqrt(fan_in) (embedding rows in +-1, norms 1), one shard per
 * decoder layer plus one for the embeddings, head and final norm, with the sharded index. Each
 * block of DSLA_RANDOM_BLOCK values draws from a splitmix64 stream seeded by (seed, tensor, block),
 * so the bytes depend on the seed alone, never on the thread count.
 *
 * Contract: writes config.json and the weights only (the caller adds a tokenizer); refuses a
 * directory that already holds a config.json; no global state. */
#ifndef DSLA_MODEL_RANDOM_MODEL_H
#define DSLA_MODEL_RANDOM_MODEL_H

#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/config.h"

enum { DSLA_RANDOM_BLOCK = 1 << 20 };

/* Writes cfg's config.json and weights into dir (created if missing), drawing with threads
 * threads (0: one per online CPU). */
dsla_status_t dsla_random_model_write(const dsla_model_config_t *cfg, uint64_t seed,
                                      const char *dir, int threads);

#endif

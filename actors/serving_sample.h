/* Prompt sampling for the distiller (DESIGN.md 5.4): which prompts a serving actor keeps as
 * distillation data, batched and rate-capped.
 *
 * 1 in `every` accepted prompts is sampled (a hash of the seed and the prompt's arrival count
 * decides, so a seed repeats the choice and a client's round-robin does not steer it); its token
 * ids (text prompts encoded again with the tokenizer's default BOS) join one batch, which flush
 * sends as one PROMPT_SAMPLES every DSLA_SERVING_SAMPLE_FLUSH_MS. Each interval takes at most
 * tick_tokens ids (a prompt is cut to that much) and DSLA_PROTO_SAMPLES_MAX prompts; what does not
 * fit is dropped and counted, and a send that fails loses the batch: sampling never delays
 * serving.
 *
 * Contract: one thread (the actor's); messages leave only through the send function given to
 * flush. No sockets, timers or clocks here. */
#ifndef DSLA_ACTORS_SERVING_SAMPLE_H
#define DSLA_ACTORS_SERVING_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "runtime/model/tokenizer.h"

typedef struct dsla_serving_sample dsla_serving_sample_t;

typedef struct {
    uint32_t every; /* 1 in how many prompts, >= 1 */
    uint64_t seed;
    uint32_t tokens_per_s;             /* the rate cap, >= 1 */
    uint32_t flush_ms;                 /* the interval flush is called at, >= 1 */
    const dsla_tokenizer_t *tokenizer; /* borrowed */
} dsla_serving_sample_config_t;

typedef dsla_status_t (*dsla_serving_sample_send_fn)(void *user, const void *body, size_t len);

dsla_status_t dsla_serving_sample_create(dsla_serving_sample_t **out,
                                         const dsla_serving_sample_config_t *config);
void dsla_serving_sample_destroy(dsla_serving_sample_t **s);
/* Whether the next prompt to arrive is sampled (each call is one arrival). */
bool dsla_serving_sample_pick(dsla_serving_sample_t *s);
/* A picked prompt the engine accepted, as ids or (ids NULL) text: kept when within the cap. */
void dsla_serving_sample_add(dsla_serving_sample_t *s, const int32_t *ids, size_t n_ids,
                             const char *text, size_t text_len);
/* Sends the batch, if any, through send, and opens the next interval's share of the cap. */
void dsla_serving_sample_flush(dsla_serving_sample_t *s, dsla_serving_sample_send_fn send,
                               void *user);

#endif

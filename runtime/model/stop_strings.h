/* Stop strings over streamed text: decides how much generated text is safe to show.
 *
 * Text arrives piece by piece. A piece may end with the beginning of a stop string ("\n\nUs" while
 * "\n\nUser:" is a stop string), so the matcher holds back the longest suffix that could still grow
 * into one, and releases it once it cannot. When a stop string completes, everything before it is
 * released and nothing after: the stop string itself is never shown, as in the OpenAI API. The
 * matcher copies its strings; it knows nothing of tokens. */
#ifndef DSLA_MODEL_STOP_STRINGS_H
#define DSLA_MODEL_STOP_STRINGS_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/core/status.h"

typedef struct dsla_stop_matcher dsla_stop_matcher_t;

/* Empty stop strings are refused (INVALID_ARGUMENT naming the index): they would match at once. */
dsla_status_t dsla_stop_matcher_create(dsla_stop_matcher_t **out, const char *const *stops,
                                       int n_stops);
void dsla_stop_matcher_destroy(dsla_stop_matcher_t **m);

/* Appends text; emit and emit_len receive the text now safe to show (valid until the next call).
 * Returns true when a stop string completed: the emitted text ends just before it, and later calls
 * emit nothing. */
bool dsla_stop_matcher_feed(dsla_stop_matcher_t *m, const char *text, size_t len, const char **emit,
                            size_t *emit_len);
/* At the end of generation: releases whatever is held back (nothing if a stop string matched). */
void dsla_stop_matcher_finish(dsla_stop_matcher_t *m, const char **emit, size_t *emit_len);

#endif

/* The vLLM-style utility endpoints of the HTTP front end (docs/http.md): POST /tokenize
 * {prompt | messages} -> {tokens, count}, POST /detokenize {tokens} -> {prompt},
 * GET /version -> {version}. Like openai.h this only transforms bytes: the tokenizer is borrowed
 * from the process that serves the model, and a front end without one refuses both (501). */
#ifndef DSLA_ACTORS_OPENAI_TOKENS_H
#define DSLA_ACTORS_OPENAI_TOKENS_H

#include <stddef.h>

#include "actors/openai.h"
#include "runtime/model/tokenizer.h"

/* The body of a 200 answer, or NULL with *err filled (400 naming the field, 501 without a
 * tokenizer, 500 out of memory). model: the served id, checked as generation checks it. */
char *dsla_openai_tokenize(const dsla_tokenizer_t *t, const char *model, const char *body,
                           size_t len, dsla_openai_error_t *err);
char *dsla_openai_detokenize(const dsla_tokenizer_t *t, const char *model, const char *body,
                             size_t len, dsla_openai_error_t *err);
/* {"version": DSLA_VERSION} */
char *dsla_openai_version(void);

#endif

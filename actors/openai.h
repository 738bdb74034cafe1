/* The OpenAI-compatible request and response bodies of the HTTP front end (docs/http.md): JSON in,
 * a GENERATE out; pieces of text and usage in, JSON out.
 *
 * A request body is parsed and checked field by field: a refusal names the field, the limit and
 * the value in OpenAI's error shape ({"error": {message, type, param, code}}). Chat messages become
 * one prompt through a plain-text template (the tiny models have no chat template of their own):
 *
 *     System: <content>\n   User: <content>\n   Assistant: <content>\n   ...   Assistant:
 *
 * with "\nUser:" added to the stop strings so that the model's answer ends before it speaks for
 * the user. This module only transforms bytes: no sockets, no threads, no engine; the text it
 * formats is whatever the serving actor streamed (the tokenizer lives there). */
#ifndef DSLA_ACTORS_OPENAI_H
#define DSLA_ACTORS_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

/* OpenAI's defaults where it has one (completions: 16 tokens); a chat answer gets more room. */
#define DSLA_OPENAI_MAX_TOKENS_DEFAULT 16
#define DSLA_OPENAI_CHAT_MAX_TOKENS_DEFAULT 128
/* OpenAI's limits for temperature and for stop strings. */
#define DSLA_OPENAI_TEMPERATURE_MAX 2.0
#define DSLA_OPENAI_STOP_MAX 4
#define DSLA_OPENAI_CHAT_STOP "\nUser:"
/* Alternatives per token that logprobs (completions) and top_logprobs (chat) may ask for: chat's
 * OpenAI limit, also taken for completions (OpenAI's legacy limit there is 5). */
#define DSLA_OPENAI_LOGPROBS_MAX 20
/* Choices per prompt (n), and choices of one request in all (prompts times n): each is one
 * engine request. */
#define DSLA_OPENAI_N_MAX 16
#define DSLA_OPENAI_CHOICES_MAX 64

typedef enum { DSLA_OPENAI_COMPLETION, DSLA_OPENAI_CHAT } dsla_openai_kind_t;

typedef struct {
    int status;       /* HTTP status */
    const char *type; /* "invalid_request_error", "rate_limit_exceeded", ... */
    const char *code; /* OpenAI's error code ("model_not_found"); NULL: none */
    char param[32];   /* the field at fault; "" for none */
    char message[DSLA_PROTO_MESSAGE_MAX + 1];
} dsla_openai_error_t;

/* One prompt of a completions request: text, or token ids (ids non-NULL). */
typedef struct {
    char *text;
    size_t len;
    int32_t *ids;
    int n_ids;
} dsla_openai_prompt_t;

typedef struct {
    dsla_openai_kind_t kind;
    bool stream;
    bool echo;          /* completions: the prompt goes before the text (and its logprobs before) */
    bool include_usage; /* stream_options.include_usage */
    char *prompt;       /* the prompt, or the chat template's rendering */
    char *stop[DSLA_PROTO_STOP_MAX];
    dsla_proto_generate_t generate; /* borrows prompt and stop: choice 0's */
    int n;                          /* choices per prompt */
    int best_of;   /* samples per prompt (>= n; completions): the n of highest cumulative logprob
                      are the choices */
    int n_prompts; /* completions: prompts (an array of them), else 1 */
    dsla_openai_prompt_t *prompts; /* [n_prompts] when the prompt was an array or token ids */
    int32_t *bias_ids;             /* logit_bias, borrowed by generate */
    float *bias_values;
} dsla_openai_request_t;

/* Engine requests the request makes: n_prompts times best_of (n unless best_of is larger),
 * index i = prompt (i / best_of), sample (i % best_of). */
int dsla_openai_request_choices(const dsla_openai_request_t *r);
/* The GENERATE of engine request i (borrowing from r): its prompt, and the seed plus its sample
 * number, so that the samples of one prompt differ and a seed repeats them all. */
void dsla_openai_request_choice(const dsla_openai_request_t *r, int i, dsla_proto_generate_t *g);

/* Parses a request body of the given kind. model is the served model's id: a request naming
 * another is refused (404, model_not_found); NULL accepts any. seed is used when the request gives
 * none. False with *err filled when the body is refused; *out then holds nothing to free. */
bool dsla_openai_request_parse(dsla_openai_kind_t kind, const char *body, size_t len,
                               const char *model, uint64_t seed, dsla_openai_request_t *out,
                               dsla_openai_error_t *err);
void dsla_openai_request_free(dsla_openai_request_t *r);

/* err for a request that ended with a status or a wire code (the same numbers, runtime/core/
 * status.h): INVALID_ARGUMENT 400 (param guessed from the field the message names),
 * RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, CANCELLED 499, UNAUTHENTICATED
 * 401, anything else 500. A local status goes as the client code it travels as, except
 * OUT_OF_MEMORY, which is this server's failure (500), not the client's to retry. The message is
 * carried unchanged. */
void dsla_openai_error_from_code(dsla_openai_kind_t kind, uint32_t code, const char *message,
                                 dsla_openai_error_t *err);
/* The same for a local failure st, with this thread's message (dsla_last_error). */
void dsla_openai_error_from_status(dsla_openai_kind_t kind, dsla_status_t st,
                                   dsla_openai_error_t *err);
/* A refusal made here: type "invalid_request_error" unless status says otherwise. */
void dsla_openai_error_set(dsla_openai_error_t *err, int status, const char *param, const char *fmt,
                           ...) __attribute__((format(printf, 4, 5)));

/* The response bodies, malloc'd NUL-terminated JSON (NULL when out of memory). Text that is not
 * valid UTF-8 has each bad byte replaced by U+FFFD. */
typedef struct {
    dsla_openai_kind_t kind;
    const char *id; /* "cmpl-7", "chatcmpl-7" */
    long long created;
    const char *model;
    /* stream_options.include_usage: the last chunk has no usage; dsla_openai_usage_chunk follows
     * it (else usage rides on the last chunk, an extension) */
    bool include_usage;
    int index; /* the choice a chunk or a single answer belongs to (choices[0].index) */
} dsla_openai_meta_t;

typedef struct {
    const char *finish; /* "stop", "length"; NULL in chunks before the last */
    uint32_t prompt_tokens, completion_tokens;
    /* "system_fingerprint": the replica and the plan that computed the answer ("serving0:plan-7",
     * docs/http.md); NULL or "": none is given */
    const char *fingerprint;
} dsla_openai_end_t;

/* The logprobs of a choice, gathered token by token from the TOKENs that carry them: OpenAI's
 * completions shape ({tokens, token_logprobs, top_logprobs, text_offset}) or chat's
 * ({content: [{token, logprob, bytes, top_logprobs}]}). text_offset counts bytes of the text from
 * the first token on; a chunk takes what was gathered since the last one (clear). The prompt's
 * frames (echo) come first, the first of them with null logprobs. */
typedef struct dsla_openai_logprobs dsla_openai_logprobs_t;

dsla_openai_logprobs_t *dsla_openai_logprobs_new(dsla_openai_kind_t kind); /* NULL: no memory */
void dsla_openai_logprobs_free(dsla_openai_logprobs_t **l);
/* Adds t's token when it carries logprobs (others are skipped); false when out of memory. */
bool dsla_openai_logprobs_add(dsla_openai_logprobs_t *l, const dsla_proto_token_t *t);
/* Forgets the tokens gathered so far (the text offset runs on). */
void dsla_openai_logprobs_clear(dsla_openai_logprobs_t *l);

char *dsla_openai_error_body(const dsla_openai_error_t *err);
/* The whole answer of a request with stream false; lp NULL: "logprobs": null. */
char *dsla_openai_response_body(const dsla_openai_meta_t *meta, const char *text, size_t len,
                                const dsla_openai_logprobs_t *lp, const dsla_openai_end_t *end);
/* The same with several choices (choices[i].index is i); usage is the sum of theirs, the prompt
 * tokens counted once per engine request as vLLM counts them, unless usage (not NULL) says
 * otherwise (best_of: every sample counts, shown or not). */
typedef struct {
    const char *text;
    size_t len;
    const dsla_openai_logprobs_t *lp;
    dsla_openai_end_t end;
} dsla_openai_choice_t;
char *dsla_openai_response_body_n(const dsla_openai_meta_t *meta, const dsla_openai_choice_t *c,
                                  int n, const dsla_openai_end_t *usage);
/* One server-sent event "data: {...}\n\n" with a piece of text and its tokens' logprobs (lp NULL:
 * null); first marks the chat's first chunk (it carries the role), end the last (finish_reason and
 * usage). */
char *dsla_openai_chunk(const dsla_openai_meta_t *meta, const char *text, size_t len,
                        const dsla_openai_logprobs_t *lp, bool first, const dsla_openai_end_t *end);
/* OpenAI's usage chunk of include_usage: "choices": [] and the usage. */
char *dsla_openai_usage_chunk(const dsla_openai_meta_t *meta, const dsla_openai_end_t *end);

#endif

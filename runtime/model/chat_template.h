/* Chat templates: a model's own Jinja chat template (tokenizer_config.json's "chat_template", or a
 * file) rendered as Hugging Face transformers' apply_chat_template renders it, byte for byte.
 *
 * The engine implements the subset of Jinja2 that chat templates use, with the environment
 * transformers sets up (trim_blocks, lstrip_blocks, loopcontrols, no trailing newline kept): text,
 * {{ }}, {% if/elif/else %}, {% for a[, b] in x [if c] %} with loop.index/index0/revindex/
 * revindex0/first/last/length/previtem/nextitem and {% else %}, {% break/continue %}, {% set %}
 * (names, namespace() attributes, blocks), {% macro %}, {% generation %}, {% raw %}, {# #},
 * whitespace control ({%- -%}, {{- -}}, {%+ %}); strings, numbers, booleans, none, lists, dicts;
 * member, subscript and slice access; arithmetic, comparisons, and/or/not, in, ~, conditional
 * expressions; the tests, filters and string/dict methods templates use (docs/http.md lists them),
 * with transformers' tojson (json.dumps, ensure_ascii off) and raise_exception, strftime_now, range
 * and namespace. Anything else is a clear error at load (syntax) or at render (an unknown filter,
 * method or test), never a silent approximation.
 *
 * Contract: a template is immutable once created and may render from several threads at once.
 * A render is bounded against hostile templates: output bytes (the caller's limit, also the limit
 * of every string made), loop iterations and calls (DSLA_CHAT_TEMPLATE_STEPS_MAX), nesting
 * (DSLA_CHAT_TEMPLATE_DEPTH_MAX); passing one is an INVALID_ARGUMENT naming it. A template's own
 * raise_exception(msg) is an INVALID_ARGUMENT whose message is "chat template: " + msg. This
 * module knows nothing of HTTP, requests or tokenizers; it must not print. */
#ifndef DSLA_MODEL_CHAT_TEMPLATE_H
#define DSLA_MODEL_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "runtime/core/status.h"

/* A template file or tokenizer_config.json larger than this is refused (real ones are < 20 kB). */
#define DSLA_CHAT_TEMPLATE_SOURCE_MAX (1u << 20)
/* Loop iterations, macro calls and range() items of one render: generous for any conversation
 * a prompt limit admits, and a stop for loops that would run for hours. */
#define DSLA_CHAT_TEMPLATE_STEPS_MAX 1000000
/* Nesting of blocks and expressions in the source, and of macro calls at render. */
#define DSLA_CHAT_TEMPLATE_DEPTH_MAX 100

typedef struct dsla_chat_template dsla_chat_template_t;

/* Parses source (len bytes of UTF-8); name says where it came from in messages ("FILE",
 * "DIR/tokenizer_config.json"). bos_token/eos_token (NULL: none) are the template's variables of
 * those names. A syntax error is a FORMAT error naming the line. */
dsla_status_t dsla_chat_template_create(dsla_chat_template_t **out, const char *source, size_t len,
                                        const char *name, const char *bos_token,
                                        const char *eos_token);
/* A template file (--chat-template FILE); the tokens from model_dir's tokenizer_config.json when
 * model_dir is not NULL and has one. */
dsla_status_t dsla_chat_template_load_file(dsla_chat_template_t **out, const char *path,
                                           const char *model_dir);
/* model_dir/tokenizer_config.json's chat_template: a string, or a list of {name, template} from
 * which "default" is taken. DSLA_OK with *out NULL when the directory has no such file or the file
 * no chat_template (the caller's plain template then applies). */
dsla_status_t dsla_chat_template_load_dir(dsla_chat_template_t **out, const char *model_dir);
void dsla_chat_template_destroy(dsla_chat_template_t **t);

const char *dsla_chat_template_name(const dsla_chat_template_t *t);
const char *dsla_chat_template_bos_token(const dsla_chat_template_t *t); /* NULL: none */

/* Renders with the variables of vars (an object: messages, add_generation_prompt, tools, ...);
 * bos_token and eos_token are added unless vars has them. *out is malloc'd, NUL-terminated,
 * *len bytes, at most max_output. */
dsla_status_t dsla_chat_template_render(const dsla_chat_template_t *t, const json_t *vars,
                                        size_t max_output, char **out, size_t *len);

#endif

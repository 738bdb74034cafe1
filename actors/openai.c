/* OpenAI-compatible bodies: request parsing and checks, the chat template, responses (openai.h). */
#include "actors/openai.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

void dsla_openai_error_set(dsla_openai_error_t *err, int status, const char *param, const char *fmt,
                           ...) {
    memset(err, 0, sizeof *err);
    err->status = status;
    err->type = "invalid_request_error";
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

void dsla_openai_request_free(dsla_openai_request_t *r) {
    if (!r) return;
    free(r->prompt);
    for (int i = 0; i < DSLA_PROTO_STOP_MAX; i++)
        free(r->stop[i]);
    for (int i = 0; r->prompts && i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    free(r->bias_ids);
    free(r->bias_values);
    memset(r, 0, sizeof *r);
}

/* ---- request fields ------------------------------------------------------------------------ */

/* A field's value, NULL when absent or null (OpenAI clients send null for "not set"). */
static json_t *field(json_t *root, const char *name) {
    json_t *v = json_object_get(root, name);
    return json_is_null(v) ? NULL : v;
}

static bool get_number(json_t *root, const char *name, double lo, double hi, bool lo_open,
                       double *out, dsla_openai_error_t *err) {
    json_t *v = field(root, name);
    if (!v) return true;
    if (!json_is_number(v)) {
        dsla_openai_error_set(err, 400, name, "%s must be a number", name);
        return false;
    }
    double x = json_number_value(v);
    if (!isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo)) {
        dsla_openai_error_set(err, 400, name, "%s is %g; it must be in %s%g, %g]", name, x,
                              lo_open ? "(" : "[", lo, hi);
        return false;
    }
    *out = x;
    return true;
}

static bool get_integer(json_t *root, const char *name, long long lo, long long hi, long long *out,
                        dsla_openai_error_t *err) {
    json_t *v = field(root, name);
    if (!v) return true;
    if (!json_is_integer(v)) {
        dsla_openai_error_set(err, 400, name, "%s must be an integer", name);
        return false;
    }
    long long x = json_integer_value(v);
    if (x < lo || x > hi) {
        dsla_openai_error_set(err, 400, name, "%s is %lld; it must be in [%lld, %lld]", name, x, lo,
                              hi);
        return false;
    }
    *out = x;
    return true;
}

static bool get_bool(json_t *root, const char *name, bool *out, dsla_openai_error_t *err) {
    json_t *v = field(root, name);
    if (!v) return true;
    if (!json_is_boolean(v)) {
        dsla_openai_error_set(err, 400, name, "%s must be true or false", name);
        return false;
    }
    *out = json_is_true(v);
    return true;
}

static bool add_stop(dsla_openai_request_t *r, const char *s, size_t n, dsla_openai_error_t *err) {
    if (n == 0 || n > DSLA_PROTO_STOP_LEN_MAX) {
        dsla_openai_error_set(err, 400, "stop",
                              "stop strings must be 1 to %d bytes; one is %zu bytes",
                              DSLA_PROTO_STOP_LEN_MAX, n);
        return false;
    }
    char *copy = malloc(n + 1);
    if (!copy) {
        dsla_openai_error_from_status(r->kind, dsla_error_oom("a stop string of %zu bytes", n),
                                      err);
        return false;
    }
    memcpy(copy, s, n);
    copy[n] = '\0';
    r->stop[r->generate.n_stop] = copy;
    r->generate.stop[r->generate.n_stop++] = copy;
    return true;
}

static bool get_stop(json_t *root, dsla_openai_request_t *r, dsla_openai_error_t *err) {
    json_t *v = field(root, "stop");
    if (!v) return true;
    if (json_is_string(v)) return add_stop(r, json_string_value(v), json_string_length(v), err);
    if (!json_is_array(v)) {
        dsla_openai_error_set(err, 400, "stop", "stop must be a string or an array of strings");
        return false;
    }
    if (json_array_size(v) > DSLA_OPENAI_STOP_MAX) {
        dsla_openai_error_set(err, 400, "stop", "stop has %zu strings; the limit is %d",
                              json_array_size(v), DSLA_OPENAI_STOP_MAX);
        return false;
    }
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s)) {
            dsla_openai_error_set(err, 400, "stop", "stop[%zu] must be a string", i);
            return false;
        }
        if (!add_stop(r, json_string_value(s), json_string_length(s), err)) return false;
    }
    return true;
}

/* ---- prompts ------------------------------------------------------------------------------- */

static bool set_prompt(dsla_openai_request_t *r, const char *text, size_t n, const char *param,
                       dsla_openai_error_t *err) {
    if (n > DSLA_PROTO_PROMPT_MAX) {
        dsla_openai_error_set(err, 400, param, "%s is %zu bytes; the limit is %u", param, n,
                              DSLA_PROTO_PROMPT_MAX);
        return false;
    }
    r->prompt = malloc(n + 1);
    if (!r->prompt) {
        dsla_openai_error_from_status(r->kind, dsla_error_oom("a prompt of %zu bytes", n), err);
        return false;
    }
    memcpy(r->prompt, text, n);
    r->prompt[n] = '\0';
    r->generate.prompt = r->prompt;
    r->generate.prompt_len = n;
    return true;
}

/* A prompt of token ids (an array of integers) into *p. */
static bool get_ids(json_t *v, const char *where, dsla_openai_prompt_t *p,
                    dsla_openai_error_t *err) {
    size_t n = json_array_size(v), i;
    if (n == 0 || n > DSLA_PROTO_PROMPT_IDS_MAX) {
        dsla_openai_error_set(err, 400, "prompt", "%s has %zu token ids; it must have 1 to %d",
                              where, n, DSLA_PROTO_PROMPT_IDS_MAX);
        return false;
    }
    p->ids = malloc(n * sizeof *p->ids);
    if (!p->ids) {
        dsla_openai_error_set(err, 500, "prompt", "out of memory for %zu token ids", n);
        return false;
    }
    json_t *x;
    json_array_foreach(v, i, x) {
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) > INT32_MAX) {
            dsla_openai_error_set(err, 400, "prompt",
                                  "%s[%zu] must be a token id (an integer >= 0)", where, i);
            return false;
        }
        p->ids[i] = (int32_t)json_integer_value(x);
    }
    p->n_ids = (int)n;
    return true;
}

/* prompt: a string, an array of strings, an array of token ids, or an array of arrays of them. */
static bool get_prompt(json_t *root, dsla_openai_request_t *r, dsla_openai_error_t *err) {
    json_t *v = field(root, "prompt");
    if (!v) {
        dsla_openai_error_set(err, 400, "prompt", "prompt is required");
        return false;
    }
    if (json_is_string(v))
        return set_prompt(r, json_string_value(v), json_string_length(v), "prompt", err);
    if (!json_is_array(v) || json_array_size(v) == 0) {
        dsla_openai_error_set(err, 400, "prompt",
                              "prompt must be a string, an array of strings, an array of token "
                              "ids or an array of arrays of token ids, and not empty");
        return false;
    }
    const bool one_ids = json_is_integer(json_array_get(v, 0));
    const size_t n = one_ids ? 1 : json_array_size(v);
    if (n > DSLA_OPENAI_CHOICES_MAX) {
        dsla_openai_error_set(err, 400, "prompt", "prompt has %zu prompts; the limit is %d", n,
                              DSLA_OPENAI_CHOICES_MAX);
        return false;
    }
    r->prompts = calloc(n, sizeof *r->prompts);
    if (!r->prompts) {
        dsla_openai_error_set(err, 500, "prompt", "out of memory for %zu prompts", n);
        return false;
    }
    r->n_prompts = (int)n;
    if (one_ids) return get_ids(v, "prompt", &r->prompts[0], err);
    size_t i;
    json_t *x;
    char where[32];
    json_array_foreach(v, i, x) {
        snprintf(where, sizeof where, "prompt[%zu]", i);
        dsla_openai_prompt_t *p = &r->prompts[i];
        if (json_is_array(x)) {
            if (!get_ids(x, where, p, err)) return false;
        } else if (json_is_string(x)) {
            if (json_string_length(x) > DSLA_PROTO_PROMPT_MAX) {
                dsla_openai_error_set(err, 400, "prompt", "%s is %zu bytes; the limit is %u", where,
                                      json_string_length(x), DSLA_PROTO_PROMPT_MAX);
                return false;
            }
            p->text = strndup(json_string_value(x), json_string_length(x));
            p->len = json_string_length(x);
            if (!p->text) {
                dsla_openai_error_set(err, 500, "prompt", "out of memory for %s", where);
                return false;
            }
        } else {
            dsla_openai_error_set(err, 400, "prompt",
                                  "%s must be a string or an array of token ids", where);
            return false;
        }
    }
    return true;
}

/* Samples per prompt: best_of, else n. */
static int samples(const dsla_openai_request_t *r) {
    return r->best_of > r->n ? r->best_of : r->n > 0 ? r->n : 1;
}

int dsla_openai_request_choices(const dsla_openai_request_t *r) {
    return (r->n_prompts > 0 ? r->n_prompts : 1) * samples(r);
}

void dsla_openai_request_choice(const dsla_openai_request_t *r, int i, dsla_proto_generate_t *g) {
    const int n = samples(r);
    *g = r->generate;
    g->seed = r->generate.seed + (uint64_t)(i % n);
    if (!r->prompts) return;
    const dsla_openai_prompt_t *p = &r->prompts[i / n];
    g->prompt = p->text;
    g->prompt_len = p->len;
    g->prompt_ids = p->ids;
    g->n_prompt_ids = p->ids ? p->n_ids : 0;
}

static const char *role_label(const char *role) {
    static const char *const roles[][2] = {{"system", "System"},
                                           {"developer", "System"},
                                           {"user", "User"},
                                           {"assistant", "Assistant"},
                                           {"tool", "Tool"}};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
        if (strcmp(role, roles[i][0]) == 0) return roles[i][1];
    return NULL;
}

/* messages[i].content: a string, or an array of {"type": "text", "text": ...} parts joined by
 * "\n" (as vLLM joins them). Writes into out (when not NULL) and sets *len; false with *err for
 * another shape or part type. */
static bool content_text(json_t *content, size_t i, char *out, size_t *len,
                         dsla_openai_error_t *err) {
    if (json_is_string(content)) {
        *len = json_string_length(content);
        if (out) memcpy(out, json_string_value(content), *len);
        return true;
    }
    if (!json_is_array(content)) {
        dsla_openai_error_set(err, 400, "messages",
                              "messages[%zu].content must be a string or an array of text parts",
                              i);
        return false;
    }
    size_t n = 0, k;
    json_t *part;
    json_array_foreach(content, k, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text)) {
            dsla_openai_error_set(err, 400, "messages",
                                  "messages[%zu].content[%zu] is of type '%.32s'; only "
                                  "{\"type\": \"text\", \"text\": ...} parts are served",
                                  i, k, json_is_string(type) ? json_string_value(type) : "?");
            return false;
        }
        if (k > 0 && out) out[n] = '\n';
        n += k > 0;
        if (out) memcpy(out + n, json_string_value(text), json_string_length(text));
        n += json_string_length(text);
    }
    *len = n;
    return true;
}

/* The chat template of openai.h into r->prompt. */
static bool get_messages(json_t *root, dsla_openai_request_t *r, dsla_openai_error_t *err) {
    static const char tail[] = "Assistant:";
    json_t *v = field(root, "messages");
    if (!json_is_array(v) || json_array_size(v) == 0) {
        dsla_openai_error_set(err, 400, "messages",
                              "messages is required: a non-empty array of {role, content}");
        return false;
    }
    size_t total = strlen(tail), i, len;
    json_t *m;
    json_array_foreach(v, i, m) {
        json_t *role = json_object_get(m, "role");
        const char *label = json_is_string(role) ? role_label(json_string_value(role)) : NULL;
        if (!label) {
            dsla_openai_error_set(err, 400, "messages",
                                  "messages[%zu].role must be \"system\", \"developer\", "
                                  "\"user\", \"assistant\" or \"tool\"",
                                  i);
            return false;
        }
        if (field(m, "tool_calls") || field(m, "function_call")) {
            dsla_openai_error_set(err, 400, "messages",
                                  "messages[%zu] has tool calls; tools are not served", i);
            return false;
        }
        if (!content_text(json_object_get(m, "content"), i, NULL, &len, err)) return false;
        total += strlen(label) + strlen(": \n") + len;
    }
    if (total > DSLA_PROTO_PROMPT_MAX) {
        dsla_openai_error_set(err, 400, "messages",
                              "messages make a prompt of %zu bytes; the limit is %u", total,
                              DSLA_PROTO_PROMPT_MAX);
        return false;
    }
    r->prompt = malloc(total + 1);
    if (!r->prompt) {
        dsla_openai_error_from_status(r->kind, dsla_error_oom("a prompt of %zu bytes", total), err);
        return false;
    }
    size_t n = 0;
    json_array_foreach(v, i, m) {
        const char *label = role_label(json_string_value(json_object_get(m, "role")));
        n += (size_t)snprintf(r->prompt + n, total + 1 - n, "%s: ", label);
        content_text(json_object_get(m, "content"), i, r->prompt + n, &len, err);
        n += len;
        r->prompt[n++] = '\n';
    }
    n += (size_t)snprintf(r->prompt + n, total + 1 - n, "%s", tail);
    r->generate.prompt = r->prompt;
    r->generate.prompt_len = n;
    return add_stop(r, DSLA_OPENAI_CHAT_STOP, strlen(DSLA_OPENAI_CHAT_STOP), err);
}

/* logprobs: an integer of alternatives (completions), or true with top_logprobs (chat). */
static bool get_logprobs(dsla_openai_kind_t kind, json_t *root, dsla_proto_generate_t *g,
                         dsla_openai_error_t *err) {
    long long top = -1;
    if (kind == DSLA_OPENAI_COMPLETION) {
        if (!get_integer(root, "logprobs", 0, DSLA_OPENAI_LOGPROBS_MAX, &top, err)) return false;
        g->logprobs = top >= 0;
    } else {
        if (!get_bool(root, "logprobs", &g->logprobs, err) ||
            !get_integer(root, "top_logprobs", 0, DSLA_OPENAI_LOGPROBS_MAX, &top, err))
            return false;
        if (top >= 0 && !g->logprobs) {
            dsla_openai_error_set(err, 400, "top_logprobs",
                                  "top_logprobs is %lld but logprobs is not true; set logprobs "
                                  "to true to get them",
                                  top);
            return false;
        }
    }
    g->top_logprobs = top > 0 ? (int32_t)top : 0;
    return true;
}

/* logit_bias: {"token id": bias in [-100, 100]}, at most DSLA_PROTO_LOGIT_BIAS_MAX entries; the
 * arrays are the request's (freed with it). */
static bool get_logit_bias(json_t *root, dsla_openai_request_t *r, dsla_openai_error_t *err) {
    json_t *v = field(root, "logit_bias");
    if (!v) return true;
    if (!json_is_object(v) || json_object_size(v) > DSLA_PROTO_LOGIT_BIAS_MAX) {
        dsla_openai_error_set(err, 400, "logit_bias",
                              "logit_bias must be an object of at most %d token ids to biases",
                              DSLA_PROTO_LOGIT_BIAS_MAX);
        return false;
    }
    const size_t n = json_object_size(v);
    r->bias_ids = malloc((n ? n : 1) * sizeof *r->bias_ids);
    r->bias_values = malloc((n ? n : 1) * sizeof *r->bias_values);
    if (!r->bias_ids || !r->bias_values) {
        dsla_openai_error_set(err, 500, "logit_bias", "out of memory for logit_bias");
        return false;
    }
    const char *key;
    json_t *b;
    int i = 0;
    json_object_foreach(v, key, b) {
        char *end = NULL;
        long id = strtol(key, &end, 10);
        if (!*key || *end || id < 0 || id > INT32_MAX) {
            dsla_openai_error_set(err, 400, "logit_bias",
                                  "logit_bias key '%.32s' must be a token id (an integer >= 0)",
                                  key);
            return false;
        }
        double x = json_is_number(b) ? json_number_value(b) : NAN;
        if (!(x >= -100 && x <= 100)) {
            dsla_openai_error_set(err, 400, "logit_bias",
                                  "logit_bias[%ld] must be a number in [-100, 100]", id);
            return false;
        }
        r->bias_ids[i] = (int32_t)id;
        r->bias_values[i++] = (float)x;
    }
    r->generate.bias_ids = r->bias_ids;
    r->generate.bias_values = r->bias_values;
    r->generate.n_bias = i;
    return true;
}

/* The sampling extensions: min_p, the penalties, logit_bias. */
static bool get_sampling(json_t *root, dsla_openai_request_t *r, dsla_openai_error_t *err) {
    double min_p = 0, presence = 0, frequency = 0, repetition = 0;
    if (!get_number(root, "min_p", 0, 1, false, &min_p, err) ||
        !get_number(root, "presence_penalty", -2, 2, false, &presence, err) ||
        !get_number(root, "frequency_penalty", -2, 2, false, &frequency, err) ||
        !get_number(root, "repetition_penalty", 0, 2, true, &repetition, err) ||
        !get_logit_bias(root, r, err))
        return false;
    r->generate.min_p = (float)min_p;
    r->generate.presence_penalty = (float)presence;
    r->generate.frequency_penalty = (float)frequency;
    r->generate.repetition_penalty = (float)repetition;
    return true;
}

/* stream_options: {"include_usage": bool}; other keys are not served. */
static bool get_stream_options(json_t *root, dsla_openai_request_t *r, dsla_openai_error_t *err) {
    json_t *v = field(root, "stream_options");
    if (!v) return true;
    const char *key;
    json_t *x;
    if (json_is_object(v)) json_object_foreach(v, key, x) if (strcmp(key, "include_usage") != 0) {
            dsla_openai_error_set(err, 400, "stream_options",
                                  "stream_options.%.32s is not served; only include_usage is", key);
            return false;
        }
    if (!json_is_object(v) || !get_bool(v, "include_usage", &r->include_usage, err)) {
        if (json_is_object(v))
            snprintf(err->param, sizeof err->param, "stream_options");
        else
            dsla_openai_error_set(err, 400, "stream_options",
                                  "stream_options must be an object {\"include_usage\": bool}");
        return false;
    }
    return true;
}

/* best_of (completions): samples per prompt, of which the n of highest cumulative logprob are
 * returned; at least n, and not with stream (the best are known only at the end), as in vLLM and
 * OpenAI. Chat has no best_of: only n itself. */
static bool get_best_of(dsla_openai_kind_t kind, json_t *root, dsla_openai_request_t *r,
                        long long n, dsla_openai_error_t *err) {
    long long best_of = n;
    if (!get_integer(root, "best_of", 1, DSLA_OPENAI_N_MAX, &best_of, err)) return false;
    if (best_of != n && kind == DSLA_OPENAI_CHAT) {
        dsla_openai_error_set(err, 400, "best_of",
                              "best_of is %lld and n is %lld; chat takes only best_of equal to n "
                              "(best_of is a completions field)",
                              best_of, n);
        return false;
    }
    if (best_of < n) {
        dsla_openai_error_set(err, 400, "best_of",
                              "best_of is %lld and n is %lld; best_of must be at least n", best_of,
                              n);
        return false;
    }
    if (best_of > n && r->stream) {
        dsla_openai_error_set(err, 400, "best_of",
                              "best_of %lld above n %lld is not served with stream (the best are "
                              "known only when every sample has ended)",
                              best_of, n);
        return false;
    }
    r->best_of = (int)best_of;
    return true;
}

/* echo (completions): the prompt before the text, and with logprobs the prompt's logprobs. */
static bool get_echo(dsla_openai_kind_t kind, json_t *root, dsla_openai_request_t *r,
                     dsla_openai_error_t *err) {
    if (!get_bool(root, "echo", &r->echo, err)) return false;
    if (r->echo && kind == DSLA_OPENAI_CHAT) {
        dsla_openai_error_set(err, 400, "echo",
                              "echo is served for completions only; chat takes only false");
        return false;
    }
    r->generate.prompt_logprobs = r->echo && r->generate.logprobs;
    return true;
}

/* Fields this server does not serve: a request that gives one other than its neutral value is
 * refused naming it, rather than answered as if it had not been given. */
static bool refuse_unserved(json_t *root, dsla_openai_error_t *err) {
    static const struct {
        const char *name, *neutral; /* neutral: the JSON value accepted, NULL: none */
    } unserved[] = {
        {"suffix", "\"\""},  {"response_format", "{\"type\":\"text\"}"},
        {"tools", "[]"},     {"tool_choice", "\"none\""},
        {"functions", "[]"}, {"function_call", "\"none\""},
    };
    for (size_t i = 0; i < sizeof unserved / sizeof unserved[0]; i++) {
        json_t *v = field(root, unserved[i].name);
        if (!v) continue;
        json_t *neutral =
            unserved[i].neutral ? json_loads(unserved[i].neutral, JSON_DECODE_ANY, NULL) : NULL;
        bool ok = neutral && (json_is_number(v) && json_is_number(neutral)
                                  ? json_number_value(v) == json_number_value(neutral)
                                  : json_equal(v, neutral));
        json_decref(neutral);
        if (ok) continue;
        dsla_openai_error_set(err, 400, unserved[i].name,
                              "%s is not served by this server%s%s (docs/http.md lists the "
                              "fields)",
                              unserved[i].name,
                              unserved[i].neutral ? "; the only value taken is " : "",
                              unserved[i].neutral ? unserved[i].neutral : "");
        return false;
    }
    return true;
}

static bool parse_fields(dsla_openai_kind_t kind, json_t *root, const char *model,
                         dsla_openai_request_t *r, dsla_openai_error_t *err) {
    json_t *m = field(root, "model");
    if (m && !json_is_string(m)) {
        dsla_openai_error_set(err, 400, "model", "model must be a string");
        return false;
    }
    if (m && model && strcmp(json_string_value(m), model) != 0) {
        dsla_openai_error_set(err, 404, "model",
                              "the model '%.64s' does not exist; this server serves '%.64s'",
                              json_string_value(m), model);
        err->code = "model_not_found";
        return false;
    }
    long long n = 1, max_tokens = kind == DSLA_OPENAI_CHAT ? DSLA_OPENAI_CHAT_MAX_TOKENS_DEFAULT
                                                           : DSLA_OPENAI_MAX_TOKENS_DEFAULT;
    long long top_k = 0, seed = (long long)(r->generate.seed & INT64_MAX);
    double temperature = 1.0, top_p = 1.0;
    const char *max_name = kind == DSLA_OPENAI_CHAT && field(root, "max_completion_tokens")
                               ? "max_completion_tokens"
                               : "max_tokens";
    if (!get_integer(root, "n", 1, DSLA_OPENAI_N_MAX, &n, err) ||
        !get_integer(root, max_name, 1, INT32_MAX, &max_tokens, err) ||
        !get_number(root, "temperature", 0, DSLA_OPENAI_TEMPERATURE_MAX, false, &temperature,
                    err) ||
        !get_number(root, "top_p", 0, 1, true, &top_p, err) ||
        !get_integer(root, "top_k", 0, INT32_MAX, &top_k, err) ||
        !get_integer(root, "seed", 0, INT64_MAX, &seed, err) ||
        !get_bool(root, "stream", &r->stream, err) ||
        !get_bool(root, "ignore_eos", &r->generate.ignore_eos, err) || !get_stop(root, r, err) ||
        !get_logprobs(kind, root, &r->generate, err) || !get_echo(kind, root, r, err) ||
        !get_sampling(root, r, err) || !get_stream_options(root, r, err) ||
        !refuse_unserved(root, err))
        return false;
    if (kind == DSLA_OPENAI_CHAT ? !get_messages(root, r, err) : !get_prompt(root, r, err))
        return false;
    if (!get_best_of(kind, root, r, n, err)) return false;
    r->n = (int)n;
    if (r->prompts) {
        if (r->n_prompts * r->best_of > DSLA_OPENAI_CHOICES_MAX) {
            const bool by_n = r->best_of == r->n;
            dsla_openai_error_set(err, 400, by_n ? "n" : "best_of",
                                  "%d prompts times %s %d make %d samples; the limit is %d",
                                  r->n_prompts, by_n ? "n" : "best_of", r->best_of,
                                  r->n_prompts * r->best_of, DSLA_OPENAI_CHOICES_MAX);
            return false;
        }
        for (int i = 0; r->echo && i < r->n_prompts; i++)
            if (r->prompts[i].ids) {
                dsla_openai_error_set(err, 400, "echo",
                                      "echo with a prompt of token ids is not served (the text "
                                      "to echo is the tokenizer's, on the replica)");
                return false;
            }
        dsla_openai_request_choice(r, 0, &r->generate);
    }
    r->generate.max_tokens = (int32_t)max_tokens;
    r->generate.temperature = (float)temperature;
    r->generate.top_p = (float)top_p;
    r->generate.top_k = (int32_t)top_k;
    r->generate.seed = (uint64_t)seed;
    r->generate.stream = true;
    return true;
}

bool dsla_openai_request_parse(dsla_openai_kind_t kind, const char *body, size_t len,
                               const char *model, uint64_t seed, dsla_openai_request_t *out,
                               dsla_openai_error_t *err) {
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    out->kind = kind;
    out->generate.seed = seed;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    bool ok = false;
    if (!root)
        dsla_openai_error_set(err, 400, NULL,
                              "the request body is not valid JSON: %s (line %d, column %d)",
                              jerr.text, jerr.line, jerr.column);
    else if (!json_is_object(root))
        dsla_openai_error_set(err, 400, NULL, "the request body must be a JSON object");
    else
        ok = parse_fields(kind, root, model, out, err);
    json_decref(root);
    if (!ok) dsla_openai_request_free(out);
    return ok;
}

/* ---- errors -------------------------------------------------------------------------------- */

void dsla_openai_error_from_code(dsla_openai_kind_t kind, uint32_t code, const char *message,
                                 dsla_openai_error_t *err) {
    static const struct {
        dsla_status_t code;
        int status;
        const char *type;
    } map[] = {
        {DSLA_ERR_INVALID_ARGUMENT, 400, "invalid_request_error"},
        {DSLA_ERR_RESOURCE_EXHAUSTED, 429, "rate_limit_exceeded"},
        {DSLA_ERR_UNAVAILABLE, 503, "service_unavailable"},
        {DSLA_ERR_DEADLINE_EXCEEDED, 504, "timeout"},
        {DSLA_ERR_CANCELLED, 499, "cancelled"},
        {DSLA_ERR_UNAUTHENTICATED, 401, "authentication_error"},
    };
    if (code != DSLA_ERR_OUT_OF_MEMORY && !dsla_status_is_client_code(code))
        code = dsla_status_client_code((dsla_status_t)code);
    dsla_openai_error_set(err, 500, NULL, "%s", message);
    err->type = "server_error";
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (map[i].code == code) {
            err->status = map[i].status;
            err->type = map[i].type;
        }
    if (code != DSLA_ERR_INVALID_ARGUMENT) return;
    /* the serving actor names the field it refused ("max_tokens 900 exceeds the context ...") */
    static const char *const fields[] = {"max_tokens", "top_k", "top_p", "temperature",
                                         "seed",       "stop",  "prompt"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (strstr(message, fields[i])) {
            const char *f = fields[i];
            if (strcmp(f, "prompt") == 0 && kind == DSLA_OPENAI_CHAT) f = "messages";
            snprintf(err->param, sizeof err->param, "%s", f);
            break;
        }
}

void dsla_openai_error_from_status(dsla_openai_kind_t kind, dsla_status_t st,
                                   dsla_openai_error_t *err) {
    dsla_openai_error_from_code(kind, st, dsla_last_error(), err);
}

/* ---- responses ----------------------------------------------------------------------------- */

/* The length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, no surrogates, nothing
 * above U+10FFFF), 0 when the bytes there are not one. */
static size_t utf8_sequence(const unsigned char *p, size_t avail) {
    unsigned char c = p[0];
    size_t k = c < 0x80                 ? 1
               : c >= 0xc2 && c <= 0xdf ? 2
               : (c >> 4) == 0xe        ? 3
               : c >= 0xf0 && c <= 0xf4 ? 4
                                        : 0;
    if (k == 0 || k > avail) return 0;
    for (size_t j = 1; j < k; j++)
        if ((p[j] >> 6) != 2) return 0;
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0) || (c == 0xf0 && p[1] < 0x90) ||
        (c == 0xf4 && p[1] >= 0x90))
        return 0;
    return k;
}

/* A JSON string of text with each byte that does not start a valid UTF-8 sequence replaced by
 * U+FFFD: a piece cut inside a character must not make the whole answer unencodable. */
static json_t *utf8_string(const char *text, size_t len) {
    char *clean = malloc(3 * len + 1);
    if (!clean) return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_sequence((const unsigned char *)text + i, len - i);
        if (k) {
            memcpy(clean + n, text + i, k);
            n += k;
            i += k;
        } else {
            memcpy(clean + n, "\xef\xbf\xbd", 3);
            n += 3;
            i++;
        }
    }
    json_t *s = json_stringn(clean, n);
    free(clean);
    return s;
}

/* ---- logprobs ----------------------------------------------------------------------------- */

struct dsla_openai_logprobs {
    dsla_openai_kind_t kind;
    size_t offset; /* text_offset of the next token */
    json_t *root;  /* {tokens, token_logprobs, top_logprobs, text_offset} or {content} */
};

static json_t *logprobs_root(dsla_openai_kind_t kind) {
    return kind == DSLA_OPENAI_COMPLETION
               ? json_pack("{s:[], s:[], s:[], s:[]}", "tokens", "token_logprobs", "top_logprobs",
                           "text_offset")
               : json_pack("{s:[]}", "content");
}

dsla_openai_logprobs_t *dsla_openai_logprobs_new(dsla_openai_kind_t kind) {
    dsla_openai_logprobs_t *l = calloc(1, sizeof *l);
    if (l) l->kind = kind;
    if (l) l->root = logprobs_root(kind);
    if (l && !l->root) dsla_openai_logprobs_free(&l);
    return l;
}

void dsla_openai_logprobs_free(dsla_openai_logprobs_t **l) {
    if (!l || !*l) return;
    json_decref((*l)->root);
    free(*l);
    *l = NULL;
}

void dsla_openai_logprobs_clear(dsla_openai_logprobs_t *l) {
    json_t *fresh = logprobs_root(l->kind);
    if (!fresh) return; /* out of memory: the old ones stay, repeated rather than lost */
    json_decref(l->root);
    l->root = fresh;
}

/* A logprob as JSON: -9999 stands for minus infinity (a token the model rules out), as OpenAI's
 * and vLLM's answers have it, since JSON has no infinity. */
static json_t *logprob_json(float x) {
    return json_real(isfinite(x) ? (double)x : -9999.0);
}

/* chat's {token, logprob, bytes} */
static json_t *chat_entry(const dsla_proto_logprob_t *e) {
    json_t *bytes = json_array();
    for (size_t i = 0; bytes && i < e->text_len; i++)
        json_array_append_new(bytes, json_integer((unsigned char)e->text[i]));
    return json_pack("{s:o, s:o, s:o}", "token", utf8_string(e->text, e->text_len), "logprob",
                     logprob_json(e->logprob), "bytes", bytes);
}

bool dsla_openai_logprobs_add(dsla_openai_logprobs_t *l, const dsla_proto_token_t *t) {
    if (!t->has_logprobs && !t->prompt) return true;
    const dsla_proto_logprob_t *c = &t->chosen;
    int rc = 0;
    if (!t->has_logprobs) { /* the prompt's first token: nothing before it to predict it */
        rc |= json_array_append_new(json_object_get(l->root, "tokens"),
                                    utf8_string(t->text, t->text_len));
        rc |= json_array_append_new(json_object_get(l->root, "token_logprobs"), json_null());
        rc |= json_array_append_new(json_object_get(l->root, "top_logprobs"), json_null());
        rc |= json_array_append_new(json_object_get(l->root, "text_offset"),
                                    json_integer((json_int_t)l->offset));
        l->offset += t->text_len;
        return rc == 0;
    }
    if (l->kind == DSLA_OPENAI_COMPLETION) {
        /* the alternatives by their text, the taken token among them as vLLM lists it */
        json_t *top = json_object();
        for (int i = 0; top && i <= t->n_top; i++) {
            const dsla_proto_logprob_t *e = i < t->n_top ? &t->top[i] : c;
            json_t *s = utf8_string(e->text, e->text_len);
            if (s && !json_object_get(top, json_string_value(s)))
                rc |= json_object_set_new(top, json_string_value(s), logprob_json(e->logprob));
            json_decref(s);
        }
        rc |= json_array_append_new(json_object_get(l->root, "tokens"),
                                    utf8_string(c->text, c->text_len));
        rc |= json_array_append_new(json_object_get(l->root, "token_logprobs"),
                                    logprob_json(c->logprob));
        rc |= json_array_append_new(json_object_get(l->root, "top_logprobs"), top);
        rc |= json_array_append_new(json_object_get(l->root, "text_offset"),
                                    json_integer((json_int_t)l->offset));
    } else {
        json_t *entry = chat_entry(c), *top = json_array();
        for (int i = 0; top && i < t->n_top; i++)
            rc |= json_array_append_new(top, chat_entry(&t->top[i]));
        rc |= json_object_set_new(entry, "top_logprobs", top);
        rc |= json_array_append_new(json_object_get(l->root, "content"), entry);
    }
    l->offset += c->text_len;
    return rc == 0;
}

static json_t *usage_json(const dsla_openai_end_t *end) {
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)end->prompt_tokens,
                     "completion_tokens", (json_int_t)end->completion_tokens, "total_tokens",
                     (json_int_t)end->prompt_tokens + (json_int_t)end->completion_tokens);
}

/* One entry of choices: the text (completion), the message (chat answer) or the delta (chat
 * chunk), under its index. */
static json_t *choice_json(dsla_openai_kind_t kind, int index, bool chunk, bool first,
                           const char *text, size_t len, const dsla_openai_logprobs_t *lp,
                           const char *finish) {
    json_t *t = utf8_string(text, text ? len : 0);
    json_t *f = finish ? json_string(finish) : json_null();
    json_t *l = lp ? json_deep_copy(lp->root) : json_null();
    if (kind == DSLA_OPENAI_COMPLETION)
        return json_pack("{s:i, s:o, s:o, s:o}", "index", index, "text", t, "logprobs", l,
                         "finish_reason", f);
    json_t *content = chunk && !first ? json_pack("{s:o}", "content", t)
                                      : json_pack("{s:s, s:o}", "role", "assistant", "content", t);
    return json_pack("{s:i, s:o, s:o, s:o}", "index", index, chunk ? "delta" : "message", content,
                     "logprobs", l, "finish_reason", f);
}

static char *body_json(const dsla_openai_meta_t *meta, bool chunk, bool first, const char *text,
                       size_t len, const dsla_openai_logprobs_t *lp, const dsla_openai_end_t *end) {
    const char *object = meta->kind == DSLA_OPENAI_COMPLETION ? "text_completion"
                         : chunk                              ? "chat.completion.chunk"
                                                              : "chat.completion";
    json_t *root =
        json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", meta->id, "object", object, "created",
                  (json_int_t)meta->created, "model", meta->model ? meta->model : "", "choices",
                  choice_json(meta->kind, meta->index, chunk, first, text, len, lp,
                              end ? end->finish : NULL));
    if (root && end && !(chunk && meta->include_usage))
        json_object_set_new(root, "usage", usage_json(end));
    if (root && end && end->fingerprint && end->fingerprint[0])
        json_object_set_new(root, "system_fingerprint", json_string(end->fingerprint));
    char *out = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return out;
}

char *dsla_openai_response_body(const dsla_openai_meta_t *meta, const char *text, size_t len,
                                const dsla_openai_logprobs_t *lp, const dsla_openai_end_t *end) {
    return body_json(meta, false, true, text, len, lp, end);
}

char *dsla_openai_response_body_n(const dsla_openai_meta_t *meta, const dsla_openai_choice_t *c,
                                  int n, const dsla_openai_end_t *usage) {
    json_t *choices = json_array();
    dsla_openai_end_t total = {0};
    for (int i = 0; choices && i < n; i++) {
        json_t *one =
            choice_json(meta->kind, i, false, true, c[i].text, c[i].len, c[i].lp, c[i].end.finish);
        if (json_array_append_new(choices, one) != 0) {
            json_decref(choices);
            choices = NULL;
        }
        total.prompt_tokens += c[i].end.prompt_tokens;
        total.completion_tokens += c[i].end.completion_tokens;
    }
    json_t *root =
        json_pack("{s:s, s:s, s:I, s:s, s:o, s:o}", "id", meta->id, "object",
                  meta->kind == DSLA_OPENAI_COMPLETION ? "text_completion" : "chat.completion",
                  "created", (json_int_t)meta->created, "model", meta->model ? meta->model : "",
                  "choices", choices, "usage", usage_json(usage ? usage : &total));
    /* one fingerprint when every choice came from the same replica and plan, else none */
    const char *fp = n > 0 ? c[0].end.fingerprint : NULL;
    for (int i = 1; fp && i < n; i++)
        if (!c[i].end.fingerprint || strcmp(c[i].end.fingerprint, fp) != 0) fp = NULL;
    if (root && fp && fp[0]) json_object_set_new(root, "system_fingerprint", json_string(fp));
    char *out = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return out;
}

/* "data: <json>\n\n", taking json (NULL in, NULL out). */
static char *sse_event(char *json) {
    if (!json) return NULL;
    size_t n = strlen(json);
    char *e = malloc(n + sizeof "data: \n\n");
    if (e) snprintf(e, n + sizeof "data: \n\n", "data: %s\n\n", json);
    free(json);
    return e;
}

char *dsla_openai_usage_chunk(const dsla_openai_meta_t *meta, const dsla_openai_end_t *end) {
    json_t *root = json_pack("{s:s, s:s, s:I, s:s, s:[], s:o}", "id", meta->id, "object",
                             meta->kind == DSLA_OPENAI_COMPLETION ? "text_completion"
                                                                  : "chat.completion.chunk",
                             "created", (json_int_t)meta->created, "model",
                             meta->model ? meta->model : "", "choices", "usage", usage_json(end));
    char *out = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return sse_event(out);
}

char *dsla_openai_chunk(const dsla_openai_meta_t *meta, const char *text, size_t len,
                        const dsla_openai_logprobs_t *lp, bool first,
                        const dsla_openai_end_t *end) {
    return sse_event(body_json(meta, true, first, text, len, lp, end));
}

char *dsla_openai_error_body(const dsla_openai_error_t *err) {
    json_t *root = json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", err->message, "type",
                             err->type ? err->type : "server_error", "param",
                             err->param[0] ? json_string(err->param) : json_null(), "code",
                             err->code ? json_string(err->code) : json_null());
    char *out = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return out;
}

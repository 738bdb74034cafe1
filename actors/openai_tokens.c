/* /tokenize, /detokenize, /version (openai_tokens.h). */
#include "actors/openai_tokens.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

static char *dump(json_t *root) {
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

/* The body as an object with the model checked; NULL with *err. */
static json_t *load(const dsla_tokenizer_t *t, const char *model, const char *body, size_t len,
                    dsla_openai_error_t *err) {
    if (!t) {
        dsla_openai_error_set(err, 501, NULL,
                              "this front end has no tokenizer (a gateway without a local model)");
        err->type = "not_implemented";
        return NULL;
    }
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        dsla_openai_error_set(err, 400, NULL, "the request body must be a JSON object");
        return NULL;
    }
    json_t *m = json_object_get(root, "model");
    if (json_is_string(m) && model && strcmp(json_string_value(m), model) != 0) {
        dsla_openai_error_set(err, 404, "model",
                              "the model '%.64s' does not exist; this server serves '%.64s'",
                              json_string_value(m), model);
        err->code = "model_not_found";
        json_decref(root);
        return NULL;
    }
    return root;
}

char *dsla_openai_tokenize(const dsla_tokenizer_t *t, const char *model, const char *body,
                           size_t len, dsla_openai_error_t *err) {
    json_t *root = load(t, model, body, len, err);
    if (!root) return NULL;
    json_t *p = json_object_get(root, "prompt");
    bool bos = dsla_tokenizer_add_bos_default(t);
    json_t *add = json_object_get(root, "add_special_tokens");
    if (json_is_boolean(add)) bos = bos && json_is_true(add);
    if (!json_is_string(p)) {
        dsla_openai_error_set(err, 400, "prompt", "prompt is required: a string");
        json_decref(root);
        return NULL;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    dsla_status_t st =
        dsla_tokenizer_encode(t, json_string_value(p), json_string_length(p), bos, &ids, &n);
    json_decref(root);
    if (st != DSLA_OK) {
        dsla_openai_error_set(err, st == DSLA_ERR_OUT_OF_MEMORY ? 500 : 400, "prompt", "%s",
                              dsla_last_error());
        return NULL;
    }
    json_t *tokens = json_array();
    for (size_t i = 0; tokens && i < n; i++)
        json_array_append_new(tokens, json_integer(ids[i]));
    free(ids);
    char *out = dump(json_pack("{s:o, s:I}", "tokens", tokens, "count", (json_int_t)n));
    if (!out) dsla_openai_error_set(err, 500, NULL, "out of memory");
    return out;
}

char *dsla_openai_detokenize(const dsla_tokenizer_t *t, const char *model, const char *body,
                             size_t len, dsla_openai_error_t *err) {
    json_t *root = load(t, model, body, len, err);
    if (!root) return NULL;
    json_t *v = json_object_get(root, "tokens");
    size_t n = json_array_size(v), i;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    json_t *x;
    bool ok = json_is_array(v) && ids;
    json_array_foreach(v, i, x) {
        if (!ok) break;
        ok = json_is_integer(x) && json_integer_value(x) >= 0 &&
             json_integer_value(x) < dsla_tokenizer_vocab_size(t);
        if (ok) ids[i] = (int32_t)json_integer_value(x);
    }
    json_decref(root);
    if (!ok) {
        free(ids);
        dsla_openai_error_set(err, 400, "tokens", "tokens must be an array of token ids in [0, %d)",
                              dsla_tokenizer_vocab_size(t));
        return NULL;
    }
    char *text = NULL;
    dsla_status_t st = dsla_tokenizer_decode(t, ids, n, true, &text);
    free(ids);
    if (st != DSLA_OK) {
        dsla_openai_error_set(err, 400, "tokens", "%s", dsla_last_error());
        return NULL;
    }
    char *out = dump(json_pack("{s:s}", "prompt", text));
    free(text);
    if (!out) dsla_openai_error_set(err, 500, NULL, "out of memory");
    return out;
}

char *dsla_openai_version(void) {
    return dump(json_pack("{s:s}", "version", DSLA_VERSION));
}

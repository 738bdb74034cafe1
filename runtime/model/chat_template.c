/* Chat templates (chat_template.h): where a template comes from (a file, tokenizer_config.json)
 * and its handle; parsing and rendering are chat_template_parse.c and chat_template_eval.c. */
#include "runtime/model/chat_template.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/model/chat_template_internal.h"

static bool valid_utf8(const char *s, size_t len, size_t *bad) {
    json_t *v = json_stringn(s, len);
    if (v) {
        json_decref(v);
        return true;
    }
    for (*bad = 0; *bad < len && s[*bad]; (*bad)++)
        ;
    return false;
}

static char *dup_or_null(const char *s, bool *oom) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = true;
    return d;
}

dsla_status_t dsla_chat_template_create(dsla_chat_template_t **out, const char *source, size_t len,
                                        const char *name, const char *bos_token,
                                        const char *eos_token) {
    if (!out || !source || !name)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "chat template: NULL argument");
    *out = NULL;
    if (len > DSLA_CHAT_TEMPLATE_SOURCE_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "chat template %s: %zu bytes; the limit is %u "
                          "(DSLA_CHAT_TEMPLATE_SOURCE_MAX)",
                          name, len, DSLA_CHAT_TEMPLATE_SOURCE_MAX);
    size_t bad = 0;
    if (!valid_utf8(source, len, &bad))
        return dsla_error(DSLA_ERR_FORMAT, "chat template %s: not valid UTF-8 (or a NUL byte)",
                          name);
    dsla_chat_template_t *t = calloc(1, sizeof *t);
    if (!t) return dsla_error_oom("chat template %s", name);
    bool oom = false;
    t->name = dup_or_null(name, &oom);
    t->bos_token = dup_or_null(bos_token, &oom);
    t->eos_token = dup_or_null(eos_token, &oom);
    if (oom) {
        dsla_chat_template_destroy(&t);
        return dsla_error_oom("chat template %s", name);
    }
    char err[512] = "";
    t->root = ct_parse(source, len, err, sizeof err);
    if (!t->root) {
        dsla_chat_template_destroy(&t);
        return dsla_error(DSLA_ERR_FORMAT, "chat template %s: %s", name, err);
    }
    *out = t;
    return DSLA_OK;
}

void dsla_chat_template_destroy(dsla_chat_template_t **tp) {
    if (!tp || !*tp) return;
    dsla_chat_template_t *t = *tp;
    ct_node_free(t->root);
    free(t->name);
    free(t->bos_token);
    free(t->eos_token);
    free(t);
    *tp = NULL;
}

const char *dsla_chat_template_name(const dsla_chat_template_t *t) {
    return t->name;
}

const char *dsla_chat_template_bos_token(const dsla_chat_template_t *t) {
    return t->bos_token;
}

/* A regular file of at most DSLA_CHAT_TEMPLATE_SOURCE_MAX bytes, read whole. */
static dsla_status_t read_file(const char *path, char **out, size_t *len) {
    struct stat st;
    if (stat(path, &st) != 0)
        return dsla_error(errno == ENOENT ? DSLA_ERR_NOT_FOUND : DSLA_ERR_IO, "%s: %s", path,
                          strerror(errno));
    if (!S_ISREG(st.st_mode))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: not a regular file", path);
    if ((unsigned long long)st.st_size > DSLA_CHAT_TEMPLATE_SOURCE_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: %lld bytes; a chat template file is at most %u "
                          "(DSLA_CHAT_TEMPLATE_SOURCE_MAX)",
                          path, (long long)st.st_size, DSLA_CHAT_TEMPLATE_SOURCE_MAX);
    FILE *f = fopen(path, "rb");
    if (!f) return dsla_error(DSLA_ERR_IO, "%s: %s", path, strerror(errno));
    char *buf = malloc((size_t)st.st_size + 1);
    size_t n = buf ? fread(buf, 1, (size_t)st.st_size, f) : 0;
    bool err = ferror(f);
    fclose(f);
    if (!buf) return dsla_error_oom("%s", path);
    if (err) {
        free(buf);
        return dsla_error(DSLA_ERR_IO, "%s: read error", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return DSLA_OK;
}

/* bos_token / eos_token: a string or an AddedToken object ({"content": ...}). */
static const char *config_token(json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_string_value(v);
}

/* model_dir/tokenizer_config.json parsed (*cfg NULL when absent). */
static dsla_status_t load_config(const char *model_dir, char **path, json_t **cfg) {
    *cfg = NULL;
    size_t n = strlen(model_dir) + sizeof "/tokenizer_config.json";
    if (!(*path = malloc(n))) return dsla_error_oom("chat template: path");
    snprintf(*path, n, "%s/tokenizer_config.json", model_dir);
    char *text;
    size_t len;
    dsla_status_t st = read_file(*path, &text, &len);
    if (st == DSLA_ERR_NOT_FOUND) return DSLA_OK;
    if (st != DSLA_OK) return st;
    json_error_t jerr;
    *cfg = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!*cfg)
        return dsla_error(DSLA_ERR_FORMAT, "%s: malformed JSON at line %d column %d: %s", *path,
                          jerr.line, jerr.column, jerr.text);
    return DSLA_OK;
}

dsla_status_t dsla_chat_template_load_file(dsla_chat_template_t **out, const char *path,
                                           const char *model_dir) {
    if (!out || !path) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "chat template: NULL argument");
    *out = NULL;
    char *cfg_path = NULL, *text = NULL;
    json_t *cfg = NULL;
    size_t len;
    dsla_status_t st = model_dir ? load_config(model_dir, &cfg_path, &cfg) : DSLA_OK;
    if (st == DSLA_OK) st = read_file(path, &text, &len);
    if (st == DSLA_OK)
        st = dsla_chat_template_create(out, text, len, path, config_token(cfg, "bos_token"),
                                       config_token(cfg, "eos_token"));
    free(text);
    free(cfg_path);
    json_decref(cfg);
    return st;
}

dsla_status_t dsla_chat_template_load_dir(dsla_chat_template_t **out, const char *model_dir) {
    if (!out || !model_dir)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "chat template: NULL argument");
    *out = NULL;
    char *path = NULL;
    json_t *cfg = NULL;
    dsla_status_t st = load_config(model_dir, &path, &cfg);
    json_t *tmpl = cfg ? json_object_get(cfg, "chat_template") : NULL;
    if (st == DSLA_OK && json_is_array(tmpl)) { /* [{name, template}, ...]: "default" */
        json_t *pick = NULL, *item;
        size_t i;
        json_array_foreach(
            tmpl, i, item) if (json_is_string(json_object_get(item, "name")) &&
                               strcmp(json_string_value(json_object_get(item, "name")),
                                      "default") == 0) pick = json_object_get(item, "template");
        if (!json_is_string(pick))
            st = dsla_error(DSLA_ERR_FORMAT,
                            "%s: chat_template is a list without a \"default\" {name, template}; "
                            "give one with --chat-template FILE",
                            path);
        tmpl = pick;
    } else if (st == DSLA_OK && tmpl && !json_is_string(tmpl) && !json_is_null(tmpl)) {
        st = dsla_error(DSLA_ERR_FORMAT,
                        "%s: chat_template must be a string or a list of {name, template}", path);
    }
    if (st == DSLA_OK && json_is_string(tmpl)) {
        char name[512];
        snprintf(name, sizeof name, "%s chat_template", path);
        st = dsla_chat_template_create(out, json_string_value(tmpl), json_string_length(tmpl), name,
                                       config_token(cfg, "bos_token"),
                                       config_token(cfg, "eos_token"));
    }
    free(path);
    json_decref(cfg);
    if (st != DSLA_OK || *out) return st;
    /* transformers from 4.43 on may save the template beside the config instead */
    size_t n = strlen(model_dir) + sizeof "/chat_template.jinja";
    if (!(path = malloc(n))) return dsla_error_oom("chat template: path");
    snprintf(path, n, "%s/chat_template.jinja", model_dir);
    struct stat sb;
    if (stat(path, &sb) == 0) st = dsla_chat_template_load_file(out, path, model_dir);
    free(path);
    return st;
}

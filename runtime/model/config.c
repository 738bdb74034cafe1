/* Hugging Face config.json <-> dsla_model_config_t; see config.h for what is accepted.
 *
 * Error codes: bad JSON or a key of the wrong JSON type is FORMAT, a required key that is absent is
 * NOT_FOUND, a value outside its range is INVALID_ARGUMENT, and a well-formed feature we do not
 * implement is UNSUPPORTED. Every message starts with the source (file name) and names the key. */
#include "runtime/model/config.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/model/json_util.h"

/* Defaults transformers' LlamaConfig applies when a key is absent. */
enum { CONFIG_DEFAULT_MAX_POSITIONS = 2048 };
#define CONFIG_DEFAULT_ROPE_THETA 10000.0
enum { CONFIG_MAX_EOS = (int)(sizeof(((dsla_model_config_t *)0)->eos_token_ids) / sizeof(int)) };

/* Looks key up in obj; absent and JSON null both count as absent (transformers writes null for
 * "use the default"). */
static json_t *get_present(json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

static dsla_status_t json_int_value(json_t *v, const char *source, const char *key, int *out) {
    if (!json_is_integer(v))
        return dsla_error(DSLA_ERR_FORMAT, "%s: '%s' must be an integer, found %s", source, key,
                          dsla_json_type_name(v));
    json_int_t x = json_integer_value(v);
    if (x < INT_MIN || x > INT_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: '%s' = %lld does not fit in an int",
                          source, key, (long long)x);
    *out = (int)x;
    return DSLA_OK;
}

/* An integer key: required ones give NOT_FOUND when absent, optional ones take def. */
static dsla_status_t get_int(json_t *obj, const char *source, const char *prefix, const char *key,
                             bool required, int def, int *out) {
    json_t *v = get_present(obj, key);
    if (!v) {
        if (required)
            return dsla_error(DSLA_ERR_NOT_FOUND, "%s: required key '%s%s' is missing", source,
                              prefix, key);
        *out = def;
        return DSLA_OK;
    }
    char label[128];
    snprintf(label, sizeof label, "%s%s", prefix, key);
    return json_int_value(v, source, label, out);
}

static dsla_status_t get_number(json_t *obj, const char *source, const char *prefix,
                                const char *key, bool required, double def, double *out) {
    json_t *v = get_present(obj, key);
    if (!v) {
        if (required)
            return dsla_error(DSLA_ERR_NOT_FOUND, "%s: required key '%s%s' is missing", source,
                              prefix, key);
        *out = def;
        return DSLA_OK;
    }
    if (!json_is_number(v))
        return dsla_error(DSLA_ERR_FORMAT, "%s: '%s%s' must be a number, found %s", source, prefix,
                          key, dsla_json_type_name(v));
    *out = json_number_value(v);
    return DSLA_OK;
}

static dsla_status_t get_bool(json_t *obj, const char *source, const char *key, bool def,
                              bool *out) {
    json_t *v = get_present(obj, key);
    if (!v) {
        *out = def;
        return DSLA_OK;
    }
    if (!json_is_boolean(v))
        return dsla_error(DSLA_ERR_FORMAT, "%s: '%s' must be true or false, found %s", source, key,
                          dsla_json_type_name(v));
    *out = json_is_true(v);
    return DSLA_OK;
}

/* A string key; *out is NULL when absent. */
static dsla_status_t get_string(json_t *obj, const char *source, const char *prefix,
                                const char *key, const char **out) {
    json_t *v = get_present(obj, key);
    *out = NULL;
    if (!v) return DSLA_OK;
    if (!json_is_string(v))
        return dsla_error(DSLA_ERR_FORMAT, "%s: '%s%s' must be a string, found %s", source, prefix,
                          key, dsla_json_type_name(v));
    *out = json_string_value(v);
    return DSLA_OK;
}

static dsla_status_t parse_model_kind(json_t *root, const char *source) {
    const char *model_type = NULL;
    DSLA_TRY(get_string(root, source, "", "model_type", &model_type));
    if (model_type && strcmp(model_type, "llama") != 0 && strcmp(model_type, "mistral") != 0)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: model_type '%s' is not supported (only 'llama' and 'mistral')",
                          source, model_type);
    if (model_type && strcmp(model_type, "mistral") == 0) {
        json_t *window = get_present(root, "sliding_window");
        if (window) {
            char *text = json_dumps(window, JSON_ENCODE_ANY | JSON_COMPACT);
            dsla_status_t s = dsla_error(DSLA_ERR_UNSUPPORTED,
                                         "%s: sliding_window %s is not supported (only null)",
                                         source, text ? text : "?");
            free(text);
            return s;
        }
    }

    json_t *archs = json_object_get(root, "architectures");
    if (archs && !json_is_null(archs)) {
        if (!json_is_array(archs))
            return dsla_error(DSLA_ERR_FORMAT, "%s: 'architectures' must be an array, found %s",
                              source, dsla_json_type_name(archs));
        size_t i;
        json_t *a;
        json_array_foreach(archs, i, a) {
            const char *name = json_string_value(a);
            if (name &&
                (strcmp(name, "LlamaForCausalLM") == 0 || strcmp(name, "MistralForCausalLM") == 0))
                return DSLA_OK;
        }
        char *text = json_dumps(archs, JSON_COMPACT);
        dsla_status_t s = dsla_error(DSLA_ERR_UNSUPPORTED,
                                     "%s: architectures %s is not supported (needs "
                                     "LlamaForCausalLM or MistralForCausalLM)",
                                     source, text ? text : "?");
        free(text);
        return s;
    }
    return DSLA_OK;
}

/* Rejects keys that would change the maths in ways the forward pass does not implement. */
static dsla_status_t parse_unsupported_features(json_t *root, const char *source) {
    const char *act = NULL;
    DSLA_TRY(get_string(root, source, "", "hidden_act", &act));
    if (act && strcmp(act, "silu") != 0)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: hidden_act '%s' is not supported (only 'silu')", source, act);
    static const char *const bias_keys[] = {"attention_bias", "mlp_bias"};
    for (size_t i = 0; i < sizeof bias_keys / sizeof bias_keys[0]; i++) {
        bool on = false;
        DSLA_TRY(get_bool(root, source, bias_keys[i], false, &on));
        if (on)
            return dsla_error(DSLA_ERR_UNSUPPORTED, "%s: %s = true is not supported", source,
                              bias_keys[i]);
    }
    return DSLA_OK;
}

static dsla_status_t parse_eos(json_t *root, const char *source, dsla_model_config_t *cfg) {
    json_t *eos = get_present(root, "eos_token_id");
    cfg->num_eos_token_ids = 0;
    if (!eos) return DSLA_OK;
    if (json_is_integer(eos)) {
        cfg->num_eos_token_ids = 1;
        return json_int_value(eos, source, "eos_token_id", &cfg->eos_token_ids[0]);
    }
    if (!json_is_array(eos))
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: 'eos_token_id' must be an integer or a list of integers, found %s",
                          source, dsla_json_type_name(eos));
    size_t n = json_array_size(eos);
    if (n > CONFIG_MAX_EOS)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: 'eos_token_id' lists %zu ids; at most %d are supported", source, n,
                          CONFIG_MAX_EOS);
    for (size_t i = 0; i < n; i++)
        DSLA_TRY(json_int_value(json_array_get(eos, i), source, "eos_token_id[]",
                                &cfg->eos_token_ids[i]));
    cfg->num_eos_token_ids = (int)n;
    return DSLA_OK;
}

/* rope_theta lives at the top level (transformers < 5) or inside rope_parameters (>= 5); the
 * scaling block is rope_scaling (< 5) or rope_parameters (>= 5), whose type key is rope_type or,
 * in old configs, type. */
static dsla_status_t parse_rope(json_t *root, const char *source, dsla_model_config_t *cfg) {
    json_t *params = get_present(root, "rope_parameters");
    json_t *scaling = get_present(root, "rope_scaling");
    if (params && !json_is_object(params))
        return dsla_error(DSLA_ERR_FORMAT, "%s: 'rope_parameters' must be an object, found %s",
                          source, dsla_json_type_name(params));
    if (scaling && !json_is_object(scaling))
        return dsla_error(DSLA_ERR_FORMAT, "%s: 'rope_scaling' must be an object or null, found %s",
                          source, dsla_json_type_name(scaling));

    double theta = CONFIG_DEFAULT_ROPE_THETA;
    bool top_theta = get_present(root, "rope_theta") != NULL;
    DSLA_TRY(get_number(root, source, "", "rope_theta", false, CONFIG_DEFAULT_ROPE_THETA, &theta));
    if (params && get_present(params, "rope_theta")) {
        double inner = 0;
        DSLA_TRY(
            get_number(params, source, "rope_parameters.", "rope_theta", false, theta, &inner));
        if (top_theta && inner != theta)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s: rope_theta %g and rope_parameters.rope_theta %g disagree",
                              source, theta, inner);
        theta = inner;
    }
    cfg->rope_theta = (float)theta;

    json_t *block = params ? params : scaling;
    const char *block_name = params ? "rope_parameters" : "rope_scaling";
    char prefix[32];
    snprintf(prefix, sizeof prefix, "%s.", block_name);
    cfg->rope_type = DSLA_ROPE_DEFAULT;
    if (!block) return DSLA_OK;
    const char *type = NULL;
    DSLA_TRY(get_string(block, source, prefix, "rope_type", &type));
    if (!type) DSLA_TRY(get_string(block, source, prefix, "type", &type));
    if (!type) {
        /* rope_parameters may carry only rope_theta; a rope_scaling block must say its type. */
        if (params) return DSLA_OK;
        return dsla_error(DSLA_ERR_FORMAT, "%s: 'rope_scaling' has no 'rope_type' or 'type'",
                          source);
    }
    if (strcmp(type, "default") == 0) return DSLA_OK;
    if (strcmp(type, "llama3") != 0)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: %s type '%s' is not supported (only 'default' and 'llama3')", source,
                          block_name, type);

    cfg->rope_type = DSLA_ROPE_LLAMA3;
    double factor = 0, low = 0, high = 0;
    DSLA_TRY(get_number(block, source, prefix, "factor", true, 0, &factor));
    DSLA_TRY(get_number(block, source, prefix, "low_freq_factor", true, 0, &low));
    DSLA_TRY(get_number(block, source, prefix, "high_freq_factor", true, 0, &high));
    DSLA_TRY(get_int(block, source, prefix, "original_max_position_embeddings", true, 0,
                     &cfg->rope_original_max_position));
    cfg->rope_factor = (float)factor;
    cfg->rope_low_freq_factor = (float)low;
    cfg->rope_high_freq_factor = (float)high;
    return DSLA_OK;
}

static dsla_status_t parse_root(json_t *root, const char *source, dsla_model_config_t *cfg) {
    if (!json_is_object(root))
        return dsla_error(DSLA_ERR_FORMAT, "%s: config must be a JSON object, found %s", source,
                          dsla_json_type_name(root));
    DSLA_TRY(parse_model_kind(root, source));
    DSLA_TRY(parse_unsupported_features(root, source));

    DSLA_TRY(get_int(root, source, "", "hidden_size", true, 0, &cfg->hidden_size));
    DSLA_TRY(get_int(root, source, "", "num_hidden_layers", true, 0, &cfg->num_layers));
    DSLA_TRY(get_int(root, source, "", "num_attention_heads", true, 0, &cfg->num_heads));
    DSLA_TRY(get_int(root, source, "", "intermediate_size", true, 0, &cfg->intermediate_size));
    DSLA_TRY(get_int(root, source, "", "vocab_size", true, 0, &cfg->vocab_size));
    double eps = 0;
    DSLA_TRY(get_number(root, source, "", "rms_norm_eps", true, 0, &eps));
    cfg->rms_norm_eps = (float)eps;
    DSLA_TRY(get_int(root, source, "", "num_key_value_heads", false, cfg->num_heads,
                     &cfg->num_kv_heads));

    if (!get_present(root, "head_dim")) {
        /* validate() reports a non-positive head count; avoid dividing by it here */
        if (cfg->num_heads <= 0) return dsla_config_validate(cfg, source);
        if (cfg->hidden_size % cfg->num_heads != 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s: head_dim is absent and hidden_size %d is not a multiple of "
                              "num_attention_heads %d; set head_dim",
                              source, cfg->hidden_size, cfg->num_heads);
        cfg->head_dim = cfg->hidden_size / cfg->num_heads;
    } else {
        DSLA_TRY(get_int(root, source, "", "head_dim", true, 0, &cfg->head_dim));
    }
    DSLA_TRY(get_int(root, source, "", "max_position_embeddings", false,
                     CONFIG_DEFAULT_MAX_POSITIONS, &cfg->max_position_embeddings));
    DSLA_TRY(get_bool(root, source, "tie_word_embeddings", false, &cfg->tie_word_embeddings));
    DSLA_TRY(get_int(root, source, "", "bos_token_id", false, -1, &cfg->bos_token_id));
    DSLA_TRY(parse_eos(root, source, cfg));
    DSLA_TRY(parse_rope(root, source, cfg));

    const char *dtype = NULL;
    DSLA_TRY(get_string(root, source, "", "torch_dtype", &dtype));
    if (!dtype) DSLA_TRY(get_string(root, source, "", "dtype", &dtype));
    if (dtype) {
        if (strlen(dtype) >= sizeof cfg->torch_dtype)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: torch_dtype '%s' is too long", source,
                              dtype);
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", dtype);
    }
    return dsla_config_validate(cfg, source);
}

dsla_status_t dsla_config_parse(dsla_model_config_t *cfg, const char *json, const char *source) {
    if (!cfg || !json)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_config_parse: NULL argument");
    if (!source) source = "config";
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return dsla_error(DSLA_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", source, jerr.line,
                          jerr.column, jerr.text);
    dsla_model_config_t parsed = {0};
    dsla_status_t status = parse_root(root, source, &parsed);
    json_decref(root);
    if (status == DSLA_OK) *cfg = parsed;
    return status;
}

dsla_status_t dsla_config_load(dsla_model_config_t *cfg, const char *path) {
    if (!cfg || !path)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_config_load: NULL argument");
    FILE *f = fopen(path, "rb");
    if (!f)
        return dsla_error(errno == ENOENT ? DSLA_ERR_NOT_FOUND : DSLA_ERR_IO, "%s: cannot open: %s",
                          path, strerror(errno));
    /* Configs are a few KB; anything past 16 MB is not a config. */
    enum { CONFIG_MAX_BYTES = 16 << 20 };
    char *text = malloc(CONFIG_MAX_BYTES + 1);
    if (!text) {
        fclose(f);
        return dsla_error_oom("reading %s", path);
    }
    size_t n = fread(text, 1, CONFIG_MAX_BYTES + 1, f);
    int read_error = ferror(f);
    fclose(f);
    dsla_status_t status;
    if (read_error) {
        status = dsla_error(DSLA_ERR_IO, "%s: read failed", path);
    } else if (n > CONFIG_MAX_BYTES) {
        status = dsla_error(DSLA_ERR_FORMAT, "%s: larger than %d bytes; not a config.json", path,
                            CONFIG_MAX_BYTES);
    } else if (memchr(text, '\0', n)) {
        status = dsla_error(DSLA_ERR_FORMAT, "%s: contains a NUL byte; not a JSON text", path);
    } else {
        text[n] = '\0';
        status = dsla_config_parse(cfg, text, path);
    }
    free(text);
    return status;
}

dsla_model_config_t dsla_model_config_llama2_7b(int vocab_size) {
    dsla_model_config_t cfg = {0};
    cfg.hidden_size = 4096, cfg.num_layers = 32, cfg.num_heads = 32, cfg.num_kv_heads = 32;
    cfg.head_dim = 128, cfg.intermediate_size = 11008, cfg.vocab_size = vocab_size;
    cfg.max_position_embeddings = 32768, cfg.rms_norm_eps = 1e-5f, cfg.rope_theta = 10000.0f;
    cfg.bos_token_id = 1;
    return cfg;
}

dsla_status_t dsla_config_validate(const dsla_model_config_t *cfg, const char *source) {
    if (!cfg) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_config_validate: NULL config");
    if (!source) source = "config";
    const struct {
        const char *key;
        int value;
    } sizes[] = {
        {"hidden_size", cfg->hidden_size},
        {"num_hidden_layers", cfg->num_layers},
        {"num_attention_heads", cfg->num_heads},
        {"num_key_value_heads", cfg->num_kv_heads},
        {"head_dim", cfg->head_dim},
        {"intermediate_size", cfg->intermediate_size},
        {"vocab_size", cfg->vocab_size},
        {"max_position_embeddings", cfg->max_position_embeddings},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].value <= 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %s = %d must be positive", source,
                              sizes[i].key, sizes[i].value);
    if (cfg->num_heads % cfg->num_kv_heads != 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                          source, cfg->num_heads, cfg->num_kv_heads);
    if (!(cfg->rms_norm_eps > 0.0f) || !isfinite(cfg->rms_norm_eps))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: rms_norm_eps %g must be positive", source,
                          (double)cfg->rms_norm_eps);
    if (!(cfg->rope_theta > 0.0f) || !isfinite(cfg->rope_theta))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: rope_theta %g must be positive", source,
                          (double)cfg->rope_theta);
    if (cfg->bos_token_id < -1 || cfg->bos_token_id >= cfg->vocab_size)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: bos_token_id %d is outside the vocabulary of %d", source,
                          cfg->bos_token_id, cfg->vocab_size);
    if (cfg->num_eos_token_ids < 0 || cfg->num_eos_token_ids > CONFIG_MAX_EOS)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %d eos ids; at most %d are supported",
                          source, cfg->num_eos_token_ids, CONFIG_MAX_EOS);
    for (int i = 0; i < cfg->num_eos_token_ids; i++)
        if (cfg->eos_token_ids[i] < 0 || cfg->eos_token_ids[i] >= cfg->vocab_size)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s: eos_token_id %d is outside the vocabulary of %d", source,
                              cfg->eos_token_ids[i], cfg->vocab_size);
    if (cfg->rope_type == DSLA_ROPE_LLAMA3) {
        /* The llama3 rule interpolates between the two wavelength bounds, dividing by
         * high_freq_factor - low_freq_factor. */
        if (!(cfg->rope_factor > 0.0f) || !(cfg->rope_low_freq_factor > 0.0f) ||
            !(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor) ||
            cfg->rope_original_max_position <= 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s: llama3 rope scaling needs factor > 0, 0 < low_freq_factor < "
                              "high_freq_factor and original_max_position_embeddings > 0; found "
                              "%g, %g, %g, %d",
                              source, (double)cfg->rope_factor, (double)cfg->rope_low_freq_factor,
                              (double)cfg->rope_high_freq_factor, cfg->rope_original_max_position);
    } else if (cfg->rope_type != DSLA_ROPE_DEFAULT) {
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: unknown rope_type %d", source,
                          (int)cfg->rope_type);
    }
    return DSLA_OK;
}

/* The shortest decimal that reads back as the same float, so that 1e-5f is written as 1e-05 and
 * not 9.99999975e-06. */
static json_t *json_float(float value) {
    char buf[32];
    for (int digits = 6; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)value);
        if ((float)strtod(buf, NULL) == value) break;
    }
    return json_real(strtod(buf, NULL));
}

static json_t *config_to_json(const dsla_model_config_t *cfg) {
    json_t *root = json_object();
    if (!root) return NULL;
    json_t *eos;
    if (cfg->num_eos_token_ids == 0) {
        eos = json_null();
    } else if (cfg->num_eos_token_ids == 1) {
        eos = json_integer(cfg->eos_token_ids[0]);
    } else {
        eos = json_array();
        for (int i = 0; eos && i < cfg->num_eos_token_ids; i++)
            json_array_append_new(eos, json_integer(cfg->eos_token_ids[i]));
    }
    json_t *scaling = json_null();
    if (cfg->rope_type == DSLA_ROPE_LLAMA3) {
        scaling = json_object();
        json_object_set_new(scaling, "rope_type", json_string("llama3"));
        json_object_set_new(scaling, "factor", json_float(cfg->rope_factor));
        json_object_set_new(scaling, "low_freq_factor", json_float(cfg->rope_low_freq_factor));
        json_object_set_new(scaling, "high_freq_factor", json_float(cfg->rope_high_freq_factor));
        json_object_set_new(scaling, "original_max_position_embeddings",
                            json_integer(cfg->rope_original_max_position));
    }
    /* Saved checkpoints hold float32 weights unless the caller declared otherwise. */
    const char *dtype = cfg->torch_dtype[0] ? cfg->torch_dtype : "float32";
    json_t *archs = json_array();
    json_array_append_new(archs, json_string("LlamaForCausalLM"));
    /* The older layout (top-level rope_theta and rope_scaling): transformers 4.x reads it, and 5.x
     * converts it to rope_parameters on load. */
    struct {
        const char *key;
        json_t *value;
    } fields[] = {
        {"architectures", archs},
        {"model_type", json_string("llama")},
        {"hidden_size", json_integer(cfg->hidden_size)},
        {"intermediate_size", json_integer(cfg->intermediate_size)},
        {"num_hidden_layers", json_integer(cfg->num_layers)},
        {"num_attention_heads", json_integer(cfg->num_heads)},
        {"num_key_value_heads", json_integer(cfg->num_kv_heads)},
        {"head_dim", json_integer(cfg->head_dim)},
        {"hidden_act", json_string("silu")},
        {"max_position_embeddings", json_integer(cfg->max_position_embeddings)},
        {"rms_norm_eps", json_float(cfg->rms_norm_eps)},
        {"vocab_size", json_integer(cfg->vocab_size)},
        {"bos_token_id", cfg->bos_token_id >= 0 ? json_integer(cfg->bos_token_id) : json_null()},
        {"eos_token_id", eos},
        {"tie_word_embeddings", json_boolean(cfg->tie_word_embeddings)},
        {"rope_theta", json_float(cfg->rope_theta)},
        {"rope_scaling", scaling},
        {"attention_bias", json_false()},
        {"mlp_bias", json_false()},
        {"torch_dtype", json_string(dtype)},
    };
    bool ok = true;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        ok = json_object_set_new(root, fields[i].key, fields[i].value) == 0 && ok;
    if (!ok) {
        json_decref(root);
        return NULL;
    }
    return root;
}

dsla_status_t dsla_config_save(const dsla_model_config_t *cfg, const char *path) {
    if (!cfg || !path)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "dsla_config_save: NULL argument");
    DSLA_TRY(dsla_config_validate(cfg, path));
    json_t *root = config_to_json(cfg);
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(root);
    if (!text) return dsla_error_oom("writing %s", path);

    /* Written beside the target and renamed, so that a crash never leaves half a config. */
    size_t tmp_len = strlen(path) + 5;
    char *tmp = malloc(tmp_len);
    dsla_status_t status = DSLA_OK;
    int fd = -1;
    if (!tmp) {
        status = dsla_error_oom("writing %s", path);
        goto done;
    }
    snprintf(tmp, tmp_len, "%s.tmp", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        status = dsla_error(DSLA_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: files end with a newline; len + 1 bytes are written */
    const char *p = text;
    size_t left = len + 1;
    while (left > 0 && status == DSLA_OK) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0)
            status = dsla_error(DSLA_ERR_IO, "%s: write failed: %s", tmp,
                                n < 0 ? strerror(errno) : "no progress");
        else {
            p += n;
            left -= (size_t)n;
        }
    }
    if (status == DSLA_OK && fsync(fd) != 0)
        status = dsla_error(DSLA_ERR_IO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && status == DSLA_OK)
        status = dsla_error(DSLA_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (status == DSLA_OK && rename(tmp, path) != 0)
        status = dsla_error(DSLA_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (status != DSLA_OK) unlink(tmp);
done:
    free(tmp);
    free(text);
    return status;
}

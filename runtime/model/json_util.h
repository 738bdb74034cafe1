/* Small helpers for the JSON files a model directory holds (config.json, tokenizer.json,
 * safetensors headers and indexes), so that every parser words its errors the same way.
 * Parsing itself is Jansson's; this module only describes values. */
#ifndef DSLA_MODEL_JSON_UTIL_H
#define DSLA_MODEL_JSON_UTIL_H

#include <jansson.h>

/* "an object", "a string", "an integer", ...: for messages like "key 'x' is a string, expected an
 * integer". */
const char *dsla_json_type_name(const json_t *v);

#endif

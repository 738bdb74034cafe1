/* libFuzzer target: a config.json (Hugging Face Llama) through the parser and its validation. */
#include <stdlib.h>
#include <string.h>

#include "runtime/model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = malloc(size + 1);
    if (!json) return 0;
    memcpy(json, data, size);
    json[size] = '\0';
    dsla_model_config_t cfg;
    if (dsla_config_parse(&cfg, json, "fuzz") == DSLA_OK) (void)dsla_config_validate(&cfg, "fuzz");
    free(json);
    return 0;
}

/* libFuzzer target: an HTTP request body as /v1/completions and /v1/chat/completions parse it
 * (actors/openai.c): JSON, every field's type and range, the chat template's rendering. */
#include <stdbool.h>

#include "actors/openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const dsla_openai_kind_t kinds[] = {DSLA_OPENAI_COMPLETION, DSLA_OPENAI_CHAT};
    for (int k = 0; k < 2; k++) {
        dsla_openai_request_t req;
        dsla_openai_error_t err;
        if (dsla_openai_request_parse(kinds[k], (const char *)data, size, NULL, 7, &req, &err))
            dsla_openai_request_free(&req);
    }
    return 0;
}

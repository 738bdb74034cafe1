/* libFuzzer target: a chat template's source (runtime/model/chat_template.h) parsed and, when it
 * parses, rendered over a fixed conversation with tools: every syntax path, the whitespace rules,
 * the evaluator, and the limits that stop a hostile template (output, steps, depth). */
#include <stdlib.h>

#include "runtime/model/chat_template.h"

/* Small, so that a template that repeats its output hits the limit quickly. */
#define FUZZ_OUTPUT_MAX (64u << 10)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static json_t *vars;
    if (!vars)
        vars = json_loads(
            "{\"messages\": [{\"role\": \"system\", \"content\": \" Be brief. \"},"
            "{\"role\": \"user\", \"content\": \"Weather in Paris?\"},"
            "{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [{\"id\": \"call12345\","
            "\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"arguments\":"
            "{\"city\": \"Paris\"}}}]},"
            "{\"role\": \"tool\", \"tool_call_id\": \"call12345\", \"content\": \"21 \\u00b0C\"}],"
            "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\","
            "\"parameters\": {\"type\": \"object\", \"required\": [\"city\"]}}}],"
            "\"add_generation_prompt\": true}",
            0, NULL);
    dsla_chat_template_t *t = NULL;
    if (dsla_chat_template_create(&t, (const char *)data, size, "fuzz", "<s>", "</s>") == DSLA_OK) {
        char *out = NULL;
        size_t len = 0;
        if (dsla_chat_template_render(t, vars, FUZZ_OUTPUT_MAX, &out, &len) == DSLA_OK) free(out);
    }
    dsla_chat_template_destroy(&t);
    return 0;
}

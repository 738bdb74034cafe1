/* libFuzzer target: a tokenizer.json (or a llama2.c tokenizer.bin: the loader tells them apart by
 * content) through dsla_tokenizer_load, then one encode and decode with whatever loaded. */
#include "tests/fuzz/fuzz_file.h"

#include <stdlib.h>

#include "runtime/model/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);
    if (fd < 0) return 0;
    dsla_tokenizer_t *t = NULL;
    if (dsla_tokenizer_load(&t, path) == DSLA_OK) {
        static const char sample[] = "Once upon a time, 123 \xc3\xa9t\xc3\xa9! <s>";
        int32_t *ids = NULL;
        size_t n = 0;
        if (dsla_tokenizer_encode(t, sample, sizeof sample - 1, true, &ids, &n) == DSLA_OK) {
            char *text = NULL;
            if (dsla_tokenizer_decode(t, ids, n, true, &text) == DSLA_OK) free(text);
        }
        free(ids);
    }
    dsla_tokenizer_destroy(&t);
    close(fd);
    return 0;
}

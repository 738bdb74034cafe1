/* libFuzzer target: a safetensors file as dsla_safetensors_open reads it (the 8-byte header
 * length, the JSON header, every tensor's dtype, shape and data_offsets against the file), then a
 * tensor lookup that must stay inside the mapping; and the same file through the layer MAC check
 * (layer_mac.h), which finds its MAC in the header without the safetensors parser. */
#include "tests/fuzz/fuzz_file.h"

#include "runtime/model/layer_mac.h"
#include "runtime/model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    int fd = fuzz_file(data, size, path, sizeof path);
    if (fd < 0) return 0;
    dsla_safetensors_t *st = NULL;
    if (dsla_safetensors_open(&st, path) == DSLA_OK) {
        (void)dsla_safetensors_metadata(st, "checksum");
        float out[16];
        int64_t shape[1] = {16};
        (void)dsla_safetensors_read_f32(st, "w", 1, shape, out);
    }
    dsla_safetensors_close(&st);
    static const dsla_layer_key_t key = {{1, 2, 3}};
    (void)dsla_layer_mac_check(&key, path);
    close(fd);
    return 0;
}

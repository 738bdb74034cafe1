/* runtime/model/layer_mac.h: layer key files (generated, loaded, refused when readable by others
 * or malformed), sealing a layer version and checking it (another key, an altered byte anywhere,
 * an altered MAC, an unsealed file and a link are refused, naming the file and never its bytes),
 * and the controller's verification of an announced version with a key (layer_catalogue.h). */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "runtime/control/layer_catalogue.h"
#include "runtime/core/keyfile.h"
#include "runtime/model/dsla_layer.h"
#include "runtime/model/layer_mac.h"

static const dsla_model_config_t cfg = {
    .hidden_size = 8, .num_layers = 4, .num_heads = 2, .head_dim = 4};

static void ok(dsla_status_t st) {
    if (st != DSLA_OK) fail_msg("%s", dsla_last_error());
}

static void refused(dsla_status_t st, dsla_status_t want, const char *needle) {
    assert_int_equal(st, want);
    if (!strstr(dsla_last_error(), needle))
        fail_msg("error '%s' lacks '%s'", dsla_last_error(), needle);
}

/* Writes layer 1, version 2 into dir/name, sealed with key (NULL: unsealed). */
static void write_version(const char *dir, const char *name, const dsla_layer_key_t *key,
                          char *path, size_t cap) {
    dsla_dsla_layer_t *l = NULL;
    ok(dsla_dsla_layer_create(&l, &cfg, 1));
    for (size_t i = 0; i < l->numel; i++)
        l->data[i] = (float)(i % 7) * 0.25f;
    dsla_layer_version_meta_t meta = {.version = 2, .order = {1, 0, 2, 3}, .n_order = 4};
    snprintf(path, cap, "%s/%s", dir, name);
    ok(dsla_dsla_layer_save_sealed(l, path, &meta, key));
    dsla_dsla_layer_destroy(&l);
}

static void flip_byte(const char *path, long at_from_end) {
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, -at_from_end, SEEK_END), 0);
    int c = fgetc(f);
    assert_int_equal(fseek(f, -at_from_end, SEEK_END), 0);
    fputc(c ^ 0x01, f);
    fclose(f);
}

static void test_key_files(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char path[1024];
    snprintf(path, sizeof path, "%s/layer.key", dir);
    ok(dsla_layer_key_generate(path));
    refused(dsla_layer_key_generate(path), DSLA_ERR_INVALID_ARGUMENT, "never overwritten");
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    dsla_layer_key_t a, b;
    ok(dsla_layer_key_load(path, &a));
    assert_int_equal(chmod(path, 0640), 0);
    refused(dsla_layer_key_load(path, &b), DSLA_ERR_PERMISSION_DENIED, "chmod 600");

    snprintf(path, sizeof path, "%s/short.key", dir);
    ok(dsla_keyfile_write(path, true, "abcdef\n"));
    refused(dsla_layer_key_load(path, &b), DSLA_ERR_INVALID_ARGUMENT, "64 hex digits");
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_seal_and_check(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    dsla_layer_key_t key = {{7, 7, 7}}, other = {{8}};
    char sealed[1024], plain[1024], moved[1100];
    write_version(dir, "layer-1.safetensors", &key, sealed, sizeof sealed);
    write_version(dir, "layer-9.safetensors", NULL, plain, sizeof plain);
    snprintf(moved, sizeof moved, "%s.seal", sealed);
    assert_int_not_equal(access(moved, F_OK), 0); /* nothing left under the sealing name */

    ok(dsla_layer_mac_check(&key, sealed));
    dsla_dsla_layer_t *l = NULL; /* the MAC is metadata a loader passes over */
    ok(dsla_dsla_layer_load(&l, sealed, &cfg, NULL));
    dsla_dsla_layer_destroy(&l);
    refused(dsla_layer_mac_check(&other, sealed), DSLA_ERR_PERMISSION_DENIED, "does not match");
    refused(dsla_layer_mac_check(&key, plain), DSLA_ERR_PERMISSION_DENIED, "no layer MAC");

    flip_byte(sealed, 3); /* a tensor byte */
    refused(dsla_layer_mac_check(&key, sealed), DSLA_ERR_PERMISSION_DENIED, "does not match");
    flip_byte(sealed, 3);
    ok(dsla_layer_mac_check(&key, sealed));

    /* the MAC's own digits: one changed is a mismatch */
    size_t len = 0;
    char *bytes = dsla_test_read_file(sealed, &len);
    char *at = strstr(bytes + 8, "\"" DSLA_LAYER_MAC_META "\":\"");
    assert_non_null(at);
    long offset = (long)(at - bytes) + (long)strlen("\"" DSLA_LAYER_MAC_META "\":\"");
    bytes[offset] = bytes[offset] == 'a' ? 'b' : 'a';
    dsla_test_write_file(sealed, bytes, len);
    free(bytes);
    refused(dsla_layer_mac_check(&key, sealed), DSLA_ERR_PERMISSION_DENIED, "does not match");

    /* a link to a sealed file is not followed */
    write_version(dir, "layer-2.safetensors", &key, sealed, sizeof sealed);
    snprintf(moved, sizeof moved, "%s/link.safetensors", dir);
    assert_int_equal(symlink(sealed, moved), 0);
    refused(dsla_layer_mac_check(&key, moved), DSLA_ERR_FORMAT, "symbolic link");
    dsla_test_rmtree(dir);
    free(dir);
}

/* What LAYER_READY announces for path, checked with key. */
static dsla_status_t verify(const char *dir, const char *path, const dsla_layer_key_t *key) {
    size_t len = 0;
    char *bytes = dsla_test_read_file(path, &len);
    dsla_catalogue_entry_t probe;
    ok(dsla_catalogue_read(path, &probe, NULL, NULL));
    dsla_catalogue_announce_t a = {.dir = dir,
                                   .path = path,
                                   .layer = 1,
                                   .version = 2,
                                   .checksum = probe.checksum,
                                   .size = len,
                                   .xxh64 = XXH64(bytes, len, 0),
                                   .key = key};
    free(bytes);
    dsla_catalogue_entry_t e;
    int order[DSLA_CATALOGUE_LAYERS_MAX], n_order = 0;
    return dsla_catalogue_verify(&a, &e, order, &n_order);
}

static void test_controller_verifies_mac(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    dsla_layer_key_t key = {{5}}, other = {{6}};
    char sealed[1024], plain[1024];
    write_version(dir, "layer-1.safetensors", &key, sealed, sizeof sealed);
    ok(verify(dir, sealed, &key));
    ok(verify(dir, sealed, NULL)); /* no key configured: as before, xxh64 only */
    refused(verify(dir, sealed, &other), DSLA_ERR_PERMISSION_DENIED, "does not match");
    write_version(dir, "layer-3.safetensors", NULL, plain, sizeof plain);
    refused(verify(dir, plain, &key), DSLA_ERR_PERMISSION_DENIED, "no layer MAC");
    ok(verify(dir, plain, NULL));
    dsla_test_rmtree(dir);
    free(dir);
}

/* A file sealed by an independent implementation (Python's hmac with SHA-512, truncated to 32
 * bytes: what libsodium's HMAC-SHA-512-256 is), key 01 02 03 00..., checked here. */
static void test_independent_vector(void **state) {
    (void)state;
    static const char header[] =
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
        "\"__metadata__\":{\"layer\":\"1\",\"dsla_mac\":"
        "\"aa7eedc089f6c02fc579cbf2c599956da0f27ec16c77a99c7ce83a1978ab99d8\"}}";
    const float data[4] = {1, 2, 3, 4};
    uint8_t file[8 + sizeof header - 1 + sizeof data];
    const uint64_t len = sizeof header - 1;
    for (int i = 0; i < 8; i++)
        file[i] = (uint8_t)(len >> (8 * i));
    memcpy(file + 8, header, len);
    memcpy(file + 8 + len, data, sizeof data);
    char *dir = dsla_test_tempdir(), path[1024];
    snprintf(path, sizeof path, "%s/layer-1.safetensors", dir);
    dsla_test_write_file(path, file, sizeof file);
    const dsla_layer_key_t key = {{1, 2, 3}};
    ok(dsla_layer_mac_check(&key, path));
    file[sizeof file - 1] ^= 0x80;
    dsla_test_write_file(path, file, sizeof file);
    refused(dsla_layer_mac_check(&key, path), DSLA_ERR_PERMISSION_DENIED, "does not match");
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_files),
        cmocka_unit_test(test_seal_and_check),
        cmocka_unit_test(test_controller_verifies_mac),
        cmocka_unit_test(test_independent_vector),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

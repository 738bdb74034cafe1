/* Sealed layer versions end to end (runtime/model/layer_mac.h): `dslactl keygen --layer-key`
 * makes a key, `dsla distill --layer-key-file` seals what it writes, and a dsla-serve given the
 * same key catalogues and converts to them; given another key, its controller catalogues none
 * (and says why in its history), so nothing converts. */
#include "tests/integration/ctl_harness.h"

#include <sys/stat.h>

static char admin[64];

static dsla_test_server_t start(const char *model, const char *layers, const char *key) {
    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    char db[1100];
    snprintf(db, sizeof db, "%s/controller.db", layers);
    const char *args[] = {"--model",
                          model,
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "off",
                          "--layers",
                          layers,
                          "--admin",
                          admin,
                          "--controller-db",
                          db,
                          "--policy",
                          "manual layers=2",
                          "--report-ms",
                          "50",
                          "--layer-key-file",
                          key,
                          NULL};
    return dsla_test_server_start(args);
}

static void test_sealed_versions_served(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    char *dir = dsla_test_tempdir();
    char key[1024], other[1024], layers[1024], out[CTL_OUT_MAX];
    snprintf(key, sizeof key, "%s/layer.key", dir);
    snprintf(other, sizeof other, "%s/other.key", dir);
    snprintf(layers, sizeof layers, "%s/layers", dir);
    const char *kg[] = {"keygen", "--layer-key", key, NULL};
    const char *kg_other[] = {"keygen", "--layer-key", other, NULL};
    assert_int_equal(ctl_run_bin("dslactl", kg, out, sizeof out), 0);
    assert_int_equal(ctl_run_bin("dslactl", kg_other, out, sizeof out), 0);
    const char *distill[] = {
        "distill", "--model",  model, "--data",           data, "--out",
        layers,    "--layers", "2",   "--steps",          "3",  "--seq-len",
        "64",      "--batch",  "2",   "--max-sequences",  "8",  "--eval-sequences",
        "2",       "--seed",   "7",   "--layer-key-file", key,  NULL};
    if (ctl_run_bin("dsla", distill, out, sizeof out) != 0) fail_msg("dsla distill:\n%s", out);

    dsla_test_server_t srv = start(model, layers, key);
    ctl_wait_status(admin, "runs 2 DSLA layers");
    dsla_test_server_stop(&srv);

    srv = start(model, layers, other);
    ctl_wait_status(admin, "replica serving0 alive: plan 1 runs 0 DSLA layers");
    assert_int_equal(ctl_dslactl(admin, out, "history", NULL, NULL), 0);
    if (!strstr(out, "layer_refused") || !strstr(out, "does not match this --layer-key-file"))
        fail_msg("history without the refusal:\n%s", out);
    assert_int_equal(ctl_dslactl(admin, out, "status", NULL, NULL), 0);
    assert_non_null(strstr(out, "runs 0 DSLA layers"));
    dsla_test_server_stop(&srv);
    dsla_test_rmtree(dir);
    free(dir);
    free(data);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_sealed_versions_served)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

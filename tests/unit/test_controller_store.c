/* The controller's durable state and catalogue: settings, plans and events survive closing and
 * reopening the SQLite database (a controller restart); the catalogue orders layer versions by
 * the distillation order their metadata records, keeps the highest version of a layer and skips
 * files that are not layer versions. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/control/controller_store.h"
#include "runtime/control/layer_catalogue.h"
#include "runtime/model/dsla_layer.h"

static void ok(dsla_status_t st) {
    if (st != DSLA_OK) fail_msg("%s: %s", dsla_status_name(st), dsla_last_error());
}

typedef struct {
    char text[4096];
    int n;
} collected_t;

static void collect_event(void *user, int64_t id, int64_t time_ms, const char *event,
                          const char *details) {
    collected_t *c = user;
    size_t len = strlen(c->text);
    snprintf(c->text + len, sizeof c->text - len, "%lld %lld %s %s\n", (long long)id,
             (long long)time_ms, event, details);
    c->n++;
}

static void collect_plan(void *user, const dsla_ctl_plan_row_t *row) {
    collected_t *c = user;
    size_t len = strlen(c->text);
    snprintf(c->text + len, sizeof c->text - len, "%s %d %llu %s\n", row->replica, row->n_dsla,
             (unsigned long long)row->plan_id, row->layers);
    c->n++;
}

static void collect_layer(void *user, const dsla_ctl_layer_row_t *row) {
    collected_t *c = user;
    size_t len = strlen(c->text);
    snprintf(c->text + len, sizeof c->text - len, "%s %d %d %016llx %llu %016llx\n", row->path,
             row->layer, row->version, (unsigned long long)row->checksum,
             (unsigned long long)row->size, (unsigned long long)row->xxh64);
    c->n++;
}

static void test_restart_keeps_state(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char path[512];
    snprintf(path, sizeof path, "%s/controller.db", dir);
    dsla_ctl_store_t *s = NULL;
    ok(dsla_ctl_store_open(&s, path));
    ok(dsla_ctl_store_set(s, "policy", "manual max_ratio=0.5 layers=2"));
    ok(dsla_ctl_store_set(s, "policy", "manual max_ratio=0.5 layers=1")); /* replaced */
    dsla_ctl_plan_row_t row = {.replica = "serving0", .n_dsla = 1, .plan_id = 3};
    snprintf(row.layers, sizeof row.layers, "1@1:554b18f9fd33d39a");
    ok(dsla_ctl_store_put_plan(s, &row));
    dsla_ctl_layer_row_t lr = {.path = "/v/layer-3.safetensors",
                               .layer = 3,
                               .version = 1,
                               .checksum = UINT64_MAX,
                               .size = 4096,
                               .xxh64 = 0x8000000000000001ull};
    ok(dsla_ctl_store_put_layer(s, &lr));
    lr.version = 2; /* the same path announced again replaces its row */
    ok(dsla_ctl_store_put_layer(s, &lr));
    for (int i = 0; i < 30; i++) {
        char details[32];
        snprintf(details, sizeof details, "event %d", i);
        ok(dsla_ctl_store_add_event(s, 1000 + i, "test", details));
    }
    dsla_ctl_store_close(&s);
    dsla_ctl_store_close(&s); /* harmless twice */

    ok(dsla_ctl_store_open(&s, path));
    char value[256];
    bool found = false;
    ok(dsla_ctl_store_get(s, "policy", value, sizeof value, &found));
    assert_true(found);
    assert_string_equal(value, "manual max_ratio=0.5 layers=1");
    ok(dsla_ctl_store_get(s, "drain", value, sizeof value, &found));
    assert_false(found);
    assert_string_equal(value, "");
    collected_t plans = {0}, events = {0};
    ok(dsla_ctl_store_each_plan(s, collect_plan, &plans));
    assert_int_equal(plans.n, 1);
    assert_string_equal(plans.text, "serving0 1 3 1@1:554b18f9fd33d39a\n");
    collected_t layers = {0};
    ok(dsla_ctl_store_each_layer(s, collect_layer, &layers));
    assert_int_equal(layers.n, 1);
    assert_string_equal(layers.text, "/v/layer-3.safetensors 3 2 ffffffffffffffff 4096 "
                                     "8000000000000001\n");
    ok(dsla_ctl_store_each_event(s, 3, collect_event, &events));
    assert_int_equal(events.n, 3); /* the newest three, oldest first */
    assert_string_equal(events.text,
                        "28 1027 test event 27\n29 1028 test event 28\n30 1029 test event 29\n");
    /* retention: with 5 kept, the 30 events above and 10 more leave the newest 5 */
    dsla_ctl_store_set_events_keep(s, 5);
    for (int i = 30; i < 40; i++) {
        char details[32];
        snprintf(details, sizeof details, "event %d", i);
        ok(dsla_ctl_store_add_event(s, 1000 + i, "test", details));
    }
    collected_t kept = {0};
    ok(dsla_ctl_store_each_event(s, 100, collect_event, &kept));
    assert_int_equal(kept.n, 5);
    assert_non_null(strstr(kept.text, "40 1039 test event 39\n"));
    assert_null(strstr(kept.text, "event 34\n"));
    dsla_ctl_store_close(&s);

    /* a directory that does not exist: an error naming the file */
    snprintf(path, sizeof path, "%s/no/such/dir/controller.db", dir);
    assert_int_equal(dsla_ctl_store_open(&s, path), DSLA_ERR_IO);
    assert_non_null(strstr(dsla_last_error(), path));
    assert_null(s);
    dsla_test_rmtree(dir);
    free(dir);
}

static void write_version(const char *dir, const dsla_model_config_t *cfg, int layer, int version,
                          const char *name) {
    dsla_dsla_layer_t *l = NULL;
    ok(dsla_dsla_layer_create(&l, cfg, layer));
    for (size_t i = 0; i < l->numel; i++)
        l->data[i] = (float)(i % 7) * 0.25f + (float)version;
    dsla_layer_version_meta_t meta = {.version = version, .order = {2, 0, 1}, .n_order = 3};
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ok(dsla_dsla_layer_save(l, path, &meta));
    dsla_dsla_layer_destroy(&l);
}

static void test_catalogue_order(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    dsla_model_config_t cfg = {.hidden_size = 8, .num_layers = 4, .num_heads = 2, .head_dim = 4};
    write_version(dir, &cfg, 0, 1, "layer-0.safetensors");
    write_version(dir, &cfg, 1, 1, "layer-1.safetensors");
    write_version(dir, &cfg, 2, 1, "layer-2.safetensors");
    write_version(dir, &cfg, 0, 2, "layer-0-v2.safetensors"); /* a later version of layer 0 */
    char junk[1024];
    snprintf(junk, sizeof junk, "%s/layer-9.safetensors", dir);
    dsla_test_write_file(junk, "not safetensors", 15);
    snprintf(junk, sizeof junk, "%s/checkpoint.safetensors", dir);
    dsla_test_write_file(junk, "ignored by name", 15);

    dsla_catalogue_t *cat = calloc(1, sizeof *cat);
    ok(dsla_catalogue_scan(cat, dir));
    assert_int_equal(cat->n, 3);
    const int want_layer[] = {2, 0, 1}, want_version[] = {1, 2, 1};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cat->entries[i].layer, want_layer[i]);
        assert_int_equal(cat->entries[i].version, want_version[i]);
        assert_non_null(strstr(cat->entries[i].path, "/layer-"));
        assert_true(cat->entries[i].path[0] == '/');
        /* the checksum is the file's, as the replica will compute it */
        dsla_dsla_layer_t *l = NULL;
        ok(dsla_dsla_layer_load(&l, cat->entries[i].path, &cfg, NULL));
        assert_true(dsla_dsla_layer_checksum(l) == cat->entries[i].checksum);
        dsla_dsla_layer_destroy(&l);
    }
    /* adding announced versions: one kept (not newer), one replacing, one new at its rank */
    dsla_catalogue_entry_t e = cat->entries[1];
    int order[] = {2, 0, 3, 1};
    assert_int_equal(dsla_catalogue_add(cat, &e, order, 3), DSLA_CATALOGUE_KEPT);
    e.version = 3;
    assert_int_equal(dsla_catalogue_add(cat, &e, order, 3), DSLA_CATALOGUE_REPLACED);
    assert_int_equal(cat->entries[1].version, 3);
    e.layer = 3;
    assert_int_equal(dsla_catalogue_add(cat, &e, order, 4), DSLA_CATALOGUE_ADDED);
    const int want_after[] = {2, 0, 3, 1};
    assert_int_equal(cat->n, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(cat->entries[i].layer, want_after[i]);
    assert_int_equal(dsla_catalogue_read(junk, &e, NULL, NULL), DSLA_ERR_FORMAT);
    char missing[1024];
    snprintf(missing, sizeof missing, "%s/none", dir);
    assert_int_equal(dsla_catalogue_scan(cat, missing), DSLA_ERR_NOT_FOUND);
    assert_non_null(strstr(dsla_last_error(), missing));
    free(cat);
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_restart_keeps_state),
        cmocka_unit_test(test_catalogue_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

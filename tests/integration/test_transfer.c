/* Chunked layer transfer end to end, on loopback (DESIGN.md section 7): `dsla distill` writes two
 * layer versions of stories260K; one dsla-serve runs the controller over them, a second runs a
 * --serving-only replica reporting to it with a layer cache of its own, so it must fetch every
 * version over ZeroMQ (LAYER_FETCH / LAYER_CHUNK, 4 KiB chunks to make each file many chunks).
 *
 * A version whose file changed after its announce is refused by the controller and NACKed by the
 * replica, which keeps its old plan and caches nothing. Once the files are back, convert 2 makes
 * the replica fetch both, its cache then holds byte-for-byte copies, the controller counts exactly
 * the chunks the files make, and the replica's greedy output through the client stub equals
 * in-process generation under the plan. Revert and convert again take the cache: no chunk more. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model/tokenizer.h"
#include "tests/integration/ctl_harness.h"

enum { CHUNK = 4096, OUT_MAX = CTL_OUT_MAX };

static char admin[64];

/* Polls `dslactl status` until the line of replica name contains needle. */
static void wait_replica(const char *name, const char *needle) {
    static char out[OUT_MAX];
    char head[128];
    snprintf(head, sizeof head, "replica %s ", name);
    for (int waited = 0; waited < CTL_WAIT_MS; waited += 50) {
        if (ctl_dslactl(admin, out, "status", NULL, NULL) == 0) {
            const char *line = strstr(out, head);
            const char *end = line ? strchr(line, '\n') : NULL;
            const char *hit = line ? strstr(line, needle) : NULL;
            if (hit && end && hit < end) return;
        }
        ctl_sleep_ms(50);
    }
    fail_msg("replica %s never showed '%s'; last status:\n%s", name, needle, out);
}

/* The controller's count of chunks served, from `dslactl status`. */
static uint64_t chunks_served(void) {
    static char out[OUT_MAX];
    assert_int_equal(ctl_dslactl(admin, out, "status", NULL, NULL), 0);
    const char *t = strstr(out, "transfers: ");
    assert_non_null(t);
    return strtoull(t + strlen("transfers: "), NULL, 10);
}

/* Files in dir whose names start with prefix and end with suffix. */
static int count_files(const char *dir, const char *prefix, const char *suffix) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        size_t len = strlen(de->d_name), sl = strlen(suffix);
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0 && len >= sl &&
            strcmp(de->d_name + len - sl, suffix) == 0)
            n++;
    }
    closedir(d);
    return n;
}

static void test_fetch_over_zeromq(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    char *dir = dsla_test_tempdir();
    char layers[512], db[512], cache[512];
    snprintf(layers, sizeof layers, "%s/layers", dir);
    snprintf(db, sizeof db, "%s/controller.db", dir);
    snprintf(cache, sizeof cache, "%s/replica/cache", dir);
    static char out[OUT_MAX];
    ctl_distill_two(model, data, layers);
    ctl_refs_t refs;
    ctl_refs_load(&refs, model, layers, 2);
    const dsla_catalogue_t *cat = refs.cat;
    uint64_t want_chunks = 0;
    char *originals[2];
    size_t sizes[2];
    for (int i = 0; i < 2; i++) {
        originals[i] = dsla_test_read_file(cat->entries[i].path, &sizes[i]);
        assert_non_null(originals[i]);
        want_chunks += (sizes[i] + CHUNK - 1) / CHUNK;
    }
    assert_true(want_chunks > 2); /* each file takes several round trips */

    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    const char *ctl_args[] = {"--model",
                              model,
                              "--endpoint",
                              "tcp://127.0.0.1:*",
                              "--http",
                              "off",
                              "--layers",
                              layers,
                              "--controller-db",
                              db,
                              "--admin",
                              admin,
                              "--report-ms",
                              "50",
                              "--policy",
                              "manual layers=0",
                              NULL};
    dsla_test_server_t ctl = dsla_test_server_start(ctl_args);
    char chunk[16];
    snprintf(chunk, sizeof chunk, "%d", CHUNK);
    const char *rep_args[] = {"--model",
                              model,
                              "--serving-only",
                              "--name",
                              "remote1",
                              "--endpoint",
                              "tcp://127.0.0.1:*",
                              "--controller",
                              admin,
                              "--layer-cache",
                              cache,
                              "--fetch-chunk",
                              chunk,
                              "--report-ms",
                              "50",
                              NULL};
    dsla_test_server_t rep = dsla_test_server_start(rep_args);
    wait_replica("remote1", "alive: plan 1 runs 0 DSLA layers");
    wait_replica("serving0", "alive: plan 1 runs 0 DSLA layers");
    dsla_test_collected_t *got = calloc(1, sizeof *got);

    /* the files change after their announce: the controller refuses the fetch, the replica
     * NACKs, keeps its plan and caches nothing */
    for (int i = 0; i < 2; i++) {
        originals[i][sizes[i] - 5] ^= 0x5a;
        dsla_test_write_file(cat->entries[i].path, originals[i], sizes[i]);
        originals[i][sizes[i] - 5] ^= 0x5a;
    }
    assert_int_equal(ctl_dslactl(admin, out, "convert", "1", NULL), 0);
    for (int waited = 0;; waited += 50) {
        assert_int_equal(ctl_dslactl(admin, out, "status", NULL, NULL), 0);
        if (strstr(out, "changed since it was announced")) break;
        if (waited > CTL_WAIT_MS) fail_msg("remote1 never refused the plan; last:\n%s", out);
        ctl_sleep_ms(50);
    }
    wait_replica("remote1", "runs 0 DSLA layers");
    assert_int_equal(chunks_served(), 0);
    assert_int_equal(ctl_dslactl(admin, out, "history", "100", NULL), 0);
    assert_non_null(strstr(out, "fetch_refused"));
    assert_non_null(strstr(out, "plan_refused   remote1:"));
    assert_int_equal(count_files(cache, "layer-", ".safetensors"), 0);
    assert_int_equal(count_files(cache, "layer-", ".part"), 0);
    ctl_generate(rep.endpoint, got);
    ctl_assert_same_ids(got, refs.teacher, "remote1 after a refused transfer");

    /* the files back: convert 2 (manual layers=2) fetches both, chunk by chunk */
    for (int i = 0; i < 2; i++)
        dsla_test_write_file(cat->entries[i].path, originals[i], sizes[i]);
    assert_int_equal(ctl_dslactl(admin, out, "convert", "1", NULL), 0);
    wait_replica("remote1", "runs 2 DSLA layers");
    wait_replica("serving0", "runs 2 DSLA layers");
    assert_int_equal(chunks_served(), want_chunks);
    assert_int_equal(count_files(cache, "layer-", ".safetensors"), 2);
    assert_int_equal(count_files(cache, "layer-", ".part"), 0);
    for (int i = 0; i < 2; i++) { /* byte-for-byte copies under the announced names */
        uint64_t size = 0, xxh = 0;
        harness_ok(dsla_catalogue_file_digest(cat->entries[i].path, &size, &xxh), "digest");
        char path[1024];
        snprintf(path, sizeof path, "%s/layer-%d-v%d-%016" PRIx64 ".safetensors", cache,
                 cat->entries[i].layer, cat->entries[i].version, xxh);
        size_t n = 0;
        char *copy = dsla_test_read_file(path, &n);
        if (!copy) fail_msg("%s is not in the replica's cache", path);
        assert_int_equal(n, sizes[i]);
        assert_memory_equal(copy, originals[i], n);
        free(copy);
    }
    assert_int_equal(ctl_dslactl(admin, out, "history", "100", NULL), 0);
    assert_non_null(strstr(out, "layer_sent"));
    ctl_generate(rep.endpoint, got);
    ctl_assert_same_ids(got, refs.hybrid, "remote1 with 2 fetched DSLA layers");

    /* revert, convert again: the versions come from the cache, no chunk is fetched again */
    assert_int_equal(ctl_dslactl(admin, out, "revert", "2", NULL), 0);
    wait_replica("remote1", "runs 0 DSLA layers");
    assert_int_equal(ctl_dslactl(admin, out, "convert", "2", NULL), 0);
    wait_replica("remote1", "runs 2 DSLA layers");
    assert_int_equal(chunks_served(), want_chunks);
    ctl_generate(rep.endpoint, got);
    ctl_assert_same_ids(got, refs.hybrid, "remote1 from its cache");

    dsla_test_server_stop(&rep);
    dsla_test_server_stop(&ctl);
    for (int i = 0; i < 2; i++)
        free(originals[i]);
    free(got);
    ctl_refs_free(&refs);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fetch_over_zeromq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

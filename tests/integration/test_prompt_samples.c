/* Prompts sampled from live traffic as distillation data (DESIGN.md 5.4), end to end on loopback:
 * dsla-serve with the distiller on stories260K and --sample-every 1 serves greedy requests while
 * the distiller trains (output still the teacher's); the serving actor sends their token ids to
 * the distiller (PROMPT_SAMPLES), and `dslactl status` shows them received, held in its reservoir
 * and, once a later layer started, packed into its training data. The opt-out
 * (--no-sample-prompts) and its bit-identity with offline `dsla distill` are test_distiller.c's. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/model/tokenizer.h"
#include "tests/integration/ctl_harness.h"

enum { REQUESTS = 4 };

/* The number after needle in text, or -1. */
static long number_after(const char *text, const char *needle) {
    const char *p = strstr(text, needle);
    return p ? strtol(p + strlen(needle), NULL, 10) : -1;
}

static void test_served_prompts_reach_the_distiller(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    char *dir = dsla_test_tempdir();
    char out_dir[512], admin[64];
    snprintf(out_dir, sizeof out_dir, "%s/online", dir);
    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    static char out[CTL_OUT_MAX];

    dsla_model_t *m = harness_load_model(model);
    dsla_tokenizer_t *tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&tok, model), "tokenizer");
    harness_stream_t *teacher = calloc(1, sizeof *teacher);
    dsla_catalogue_t *cat = calloc(1, sizeof *cat);
    ctl_reference(m, tok, cat, 0, teacher);

    /* every layer of the model, so that layers start after the first samples arrive */
    const char *args[] = {"--model",
                          model,
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "off",
                          "--admin",
                          admin,
                          "--report-ms=50",
                          "--distill-data",
                          data,
                          "--distill-out",
                          out_dir,
                          "--distill-layers=3",
                          "--distill-steps=100",
                          "--distill-seq-len=64",
                          "--distill-batch=2",
                          "--distill-max-sequences=8",
                          "--distill-eval-sequences=2",
                          "--distill-seed=7",
                          "--sample-every=1",
                          "--sample-seed=3",
                          "--policy",
                          "manual layers=0",
                          NULL};
    dsla_test_server_t srv = dsla_test_server_start(args);
    dsla_test_collected_t *got = calloc(1, sizeof *got);
    for (int i = 0; i < REQUESTS; i++) {
        ctl_generate(srv.endpoint, got);
        ctl_assert_same_ids(got, teacher, "while sampling");
    }
    char want[128];
    snprintf(want, sizeof want, "prompt samples: %d received, %d held (%d tokens)", REQUESTS,
             REQUESTS, REQUESTS * (int)(sizeof ctl_prompt_ids / sizeof ctl_prompt_ids[0]));
    ctl_wait_status(admin, want);
    ctl_wait_status(admin, "distiller distiller alive: done, 3/3 layers done");
    assert_int_equal(ctl_dslactl(admin, out, "status", NULL, NULL), 0);
    /* the run's later layers trained on them too */
    assert_int_equal(number_after(out, "held (28 tokens), "), REQUESTS);
    assert_non_null(strstr(out, "used (28 tokens)"));
    dsla_test_server_stop(&srv);

    free(got);
    free(teacher);
    free(cat);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&m);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_served_prompts_reach_the_distiller),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* dsla-serve's options: `dsla-serve --help` prints each default from the value the code uses, and
 * docs/serving.md carries the same table.
 * - every default --help shows for a sizing or interval option equals the owning layer's constant
 *   or defaults struct (the engine's, the distillation's, the serving actor's, the actor
 *   runtime's, the protocol's), so that a default changed in code cannot leave the help behind;
 *   no option line says its default twice (one written by hand beside the printed one);
 * - docs/serving.md's options table, between its two markers, is exactly the table made from
 *   --help. Run with DSLA_UPDATE_DOCS=1 to rewrite it after an option changed. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/distiller.h"
#include "actors/serving.h"
#include "runtime/distill/distill.h"
#include "runtime/serve/engine.h"

#define BEGIN_MARK "<!-- options: generated from dsla-serve --help -->\n"
#define END_MARK "<!-- options: end -->\n"

enum { HELP_MAX = 1 << 16, OPTIONS_MAX = 128 };

static char help[HELP_MAX];

typedef struct {
    char option[64]; /* "--max-running N" */
    char text[512];  /* its help, the default included */
} option_t;

static option_t options[OPTIONS_MAX];
static int n_options;

/* Runs dsla-serve --help and splits its option lines. */
static void read_help(void) {
    const char *bin = getenv("DSLA_BIN");
    if (!bin) {
        fprintf(stderr, "DSLA_BIN unset\n");
        exit(77);
    }
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "'%s/dsla-serve' --help", bin);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(help, 1, sizeof help - 1, p);
    help[n] = '\0';
    assert_int_equal(pclose(p), 0);
    n_options = 0;
    for (char *line = strstr(help, "\noptions:\n"); line && *line;) {
        char *end = strchr(line + 1, '\n');
        if (!end) break;
        line = end + 1;
        if (strncmp(line, "  --", 4) != 0) continue;
        char *eol = strchr(line, '\n');
        if (!eol) eol = line + strlen(line);
        /* "  --name[ N| TEXT| X]  help" (args.c's dsla_args_print_help) */
        char *p2 = line + 2, *sp = strchr(p2, ' ');
        assert_non_null(sp);
        static const char *const placeholders[] = {"N ", "TEXT ", "X "};
        for (int k = 0; k < 3; k++)
            if (strncmp(sp + 1, placeholders[k], strlen(placeholders[k])) == 0) {
                sp += strlen(placeholders[k]); /* the space after the placeholder */
                break;
            }
        assert_true(n_options < OPTIONS_MAX);
        option_t *o = &options[n_options++];
        snprintf(o->option, sizeof o->option, "%.*s", (int)(sp - p2), p2);
        while (*sp == ' ')
            sp++;
        snprintf(o->text, sizeof o->text, "%.*s", (int)(eol - sp), sp);
    }
    assert_true(n_options > 40);
}

static const option_t *find(const char *name) {
    const size_t n = strlen(name);
    for (int i = 0; i < n_options; i++)
        if (strncmp(options[i].option, name, n) == 0 &&
            (options[i].option[n] == ' ' || options[i].option[n] == '\0'))
            return &options[i];
    fail_msg("dsla-serve --help lists no %s", name);
    return NULL;
}

static void expect_default(const char *name, long value) {
    const option_t *o = find(name);
    char want[64];
    snprintf(want, sizeof want, "(default %ld)", value);
    if (!strstr(o->text, want))
        fail_msg("%s: --help says '%s', the code's default is %ld", name, o->text, value);
}

static void test_help_defaults_are_the_code_s(void **state) {
    (void)state;
    read_help();
    const dsla_engine_config_t e = dsla_engine_config_default();
    expect_default("--max-running", e.max_running);
    expect_default("--max-queued", e.max_queued);
    expect_default("--max-queued-tokens", e.max_queued_tokens);
    expect_default("--max-queue-wait-ms", e.max_queue_wait_ms);
    char prefill[96];
    snprintf(prefill, sizeof prefill, "(default %d on the CPU, %d on a GPU)", e.prefill_chunk,
             dsla_engine_config_for(true).prefill_chunk);
    assert_non_null(strstr(find("--prefill-chunk")->text, prefill));
    expect_default("--heartbeat-ms", DSLA_ACTOR_HEARTBEAT_MS);
    expect_default("--report-ms", DSLA_SERVING_REPORT_MS);
    expect_default("--fetch-chunk", DSLA_PROTO_CHUNK_MAX);
    const dsla_distill_params_t d = dsla_distill_params_default();
    expect_default("--distill-steps", d.steps);
    expect_default("--distill-batch", d.batch);
    expect_default("--distill-seed", (long)d.seed);
    expect_default("--distill-checkpoint-every", d.checkpoint_every);
    expect_default("--distill-samples", DSLA_DISTILLER_RESERVOIR_PROMPTS);
    expect_default("--sample-every", DSLA_SERVING_SAMPLE_EVERY);
    expect_default("--sample-tokens-per-s", DSLA_SERVING_SAMPLE_TOKENS_PER_S);
    for (int i = 0; i < n_options; i++) {
        const char *first = strstr(options[i].text, "(default");
        if (first && strstr(first + 1, "(default"))
            fail_msg("%s states its default twice: %s", options[i].option, options[i].text);
    }
}

/* The markdown table of the options, as docs/serving.md must carry it. */
static char *table(void) {
    size_t cap = HELP_MAX * 2, len = 0;
    char *t = malloc(cap);
    len += (size_t)snprintf(t + len, cap - len, "| Option | Meaning |\n|---|---|\n");
    for (int i = 0; i < n_options; i++) {
        len += (size_t)snprintf(t + len, cap - len, "| `%s` | ", options[i].option);
        for (const char *c = options[i].text; *c && len + 4 < cap; c++) {
            if (*c == '|') t[len++] = '\\';
            t[len++] = *c;
        }
        len += (size_t)snprintf(t + len, cap - len, " |\n");
    }
    assert_true(len + 1 < cap);
    return t;
}

static void test_docs_table_matches_help(void **state) {
    (void)state;
    read_help();
    const char *src = getenv("DSLA_SOURCE");
    if (!src) skip();
    char path[4096];
    snprintf(path, sizeof path, "%s/docs/serving.md", src);
    size_t n = 0;
    char *doc = dsla_test_read_file(path, &n);
    assert_non_null(doc);
    char *begin = strstr(doc, BEGIN_MARK), *end = begin ? strstr(begin, END_MARK) : NULL;
    if (!begin || !end) fail_msg("%s has no options table between its markers", path);
    begin += strlen(BEGIN_MARK);
    char *want = table();
    const size_t have_len = (size_t)(end - begin);
    if (have_len != strlen(want) || memcmp(begin, want, have_len) != 0) {
        if (getenv("DSLA_UPDATE_DOCS")) {
            FILE *f = fopen(path, "w");
            assert_non_null(f);
            fwrite(doc, 1, (size_t)(begin - doc), f);
            fputs(want, f);
            fputs(end, f);
            fclose(f);
            fprintf(stderr, "rewrote the options table of %s\n", path);
        } else {
            fail_msg("docs/serving.md's options table differs from dsla-serve --help; rerun with "
                     "DSLA_UPDATE_DOCS=1 to rewrite it. Expected:\n%s",
                     want);
        }
    }
    free(want);
    free(doc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_defaults_are_the_code_s),
        cmocka_unit_test(test_docs_table_matches_help),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

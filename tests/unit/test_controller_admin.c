/* dslactl's commands (actors/controller_admin.h): every command parses and formats back to the same
 * words (optional fields spelt out), a command parsed from its formatted words is the same command,
 * bad words are refused naming the command, the field and the value, and the usage lists every
 * command from the same table. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/controller_admin.h"

/* Splits line into words in buf. */
static int split(const char *line, char *buf, size_t cap, const char **words) {
    snprintf(buf, cap, "%s", line);
    int n = 0;
    for (char *save = NULL, *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save))
        words[n++] = w;
    return n;
}

static dsla_status_t parse(const char *line, dsla_admin_cmd_t *cmd) {
    char buf[1024];
    const char *words[64];
    int n = split(line, buf, sizeof buf, words);
    return dsla_admin_parse(words, n, cmd);
}

static void joined(const dsla_proto_admin_t *msg, char *out, size_t cap) {
    size_t len = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < msg->n_args; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%s", i ? " " : "", msg->args[i]);
}

static void test_round_trip(void **state) {
    (void)state;
    struct {
        const char *line, *formatted;
        dsla_admin_op_t op;
    } cases[] = {
        {"status", "status", DSLA_ADMIN_STATUS},
        {"policy get", "policy get", DSLA_ADMIN_POLICY_GET},
        {"policy set threshold queue_high=16 cooldown_ms=10000",
         "policy set threshold queue_high=16 cooldown_ms=10000", DSLA_ADMIN_POLICY_SET},
        {"policy set manual", "policy set manual", DSLA_ADMIN_POLICY_SET},
        {"convert 2", "convert 2", DSLA_ADMIN_CONVERT},
        {"revert 512", "revert 512", DSLA_ADMIN_REVERT},
        {"history", "history 20", DSLA_ADMIN_HISTORY},
        {"history 10000", "history 10000", DSLA_ADMIN_HISTORY},
        {"drain", "drain on", DSLA_ADMIN_DRAIN},
        {"drain off", "drain off", DSLA_ADMIN_DRAIN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dsla_admin_cmd_t *cmd = calloc(1, sizeof *cmd), *again = calloc(1, sizeof *again);
        if (parse(cases[i].line, cmd) != DSLA_OK)
            fail_msg("'%s': %s", cases[i].line, dsla_last_error());
        assert_int_equal(cmd->op, cases[i].op);
        dsla_proto_admin_t *msg = calloc(1, sizeof *msg);
        dsla_admin_format(cmd, msg);
        char text[1024];
        joined(msg, text, sizeof text);
        assert_string_equal(text, cases[i].formatted);
        if (dsla_admin_parse_msg(msg, again) != DSLA_OK)
            fail_msg("'%s' formatted: %s", text, dsla_last_error());
        assert_memory_equal(cmd, again, sizeof *cmd);
        free(msg);
        free(cmd);
        free(again);
    }
    dsla_admin_cmd_t cmd;
    assert_int_equal(parse("convert 7", &cmd), DSLA_OK);
    assert_int_equal(cmd.n, 7);
    assert_int_equal(parse("drain off", &cmd), DSLA_OK);
    assert_false(cmd.on);
    assert_int_equal(parse("policy set slo ttft_ms=200", &cmd), DSLA_OK);
    assert_int_equal(cmd.n_words, 2);
    assert_string_equal(cmd.words[0], "slo");
    assert_string_equal(cmd.words[1], "ttft_ms=200");
}

static void test_errors_name_the_field(void **state) {
    (void)state;
    struct {
        const char *line, *says;
    } cases[] = {
        {"convert", "convert: give the number of layers, as in 'convert 2' (N in [1, 512])"},
        {"convert x", "convert: N 'x' is not a whole number"},
        {"convert 0", "convert: N 0 is outside [1, 512]"},
        {"revert 2x", "revert: N '2x' is not a whole number"},
        {"convert 1 2", "convert: '2' is one word too many (usage: convert N)"},
        {"history 0", "history: limit 0 is outside [1, 10000]"},
        {"history 10001", "history: limit 10001 is outside [1, 10000]"},
        {"history ten", "history: limit 'ten' is not a whole number"},
        {"drain maybe", "drain: 'maybe' is neither on nor off"},
        {"status now", "status: 'now' is one word too many"},
        {"policy get all", "policy get: 'all' is one word too many"},
        {"policy set", "policy: use 'policy get' or 'policy set threshold|slo|manual"},
        {"policy", "policy: use 'policy get' or 'policy set"},
        {"policy put x", "policy: use 'policy get' or 'policy set"},
        {"frobnicate", "'frobnicate' is not a command; use status, policy get, policy set ..., "
                       "convert N, revert N, history limit, drain on|off"},
        {"", "'' is not a command"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dsla_admin_cmd_t cmd;
        assert_int_equal(parse(cases[i].line, &cmd), DSLA_ERR_INVALID_ARGUMENT);
        if (!strstr(dsla_last_error(), cases[i].says))
            fail_msg("'%s': got '%s', want '%s'", cases[i].line, dsla_last_error(), cases[i].says);
    }
}

static void test_usage_and_text(void **state) {
    (void)state;
    char usage[2048];
    dsla_admin_usage(usage, sizeof usage);
    const char *lines[] = {"  status ",        "  policy get ", "  policy set KIND [key=value]... ",
                           "  convert N ",     "  revert N ",   "  history [limit] ",
                           "  drain [on|off] "};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        if (!strstr(usage, lines[i])) fail_msg("usage lacks '%s':\n%s", lines[i], usage);
    /* a reply grows, and stops at the limit instead of growing without bound */
    dsla_admin_text_t t = {0};
    dsla_admin_history_line(&t, 7, 1700000000123, "convert", "serving0: 0 -> 1");
    assert_string_equal(t.data,
                        "     7  2023-11-14T22:13:20.123Z  convert        serving0: 0 -> 1\n");
    char *big = malloc(65536);
    memset(big, 'x', 65535);
    big[65535] = '\0';
    for (int i = 0; i < 40 && !t.failed; i++)
        dsla_admin_text_add(&t, "%s", big);
    assert_true(t.failed);
    assert_true(t.len <= DSLA_PROTO_ADMIN_TEXT_MAX);
    dsla_admin_text_free(&t);
    dsla_admin_text_free(&t);
    free(big);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_errors_name_the_field),
        cmocka_unit_test(test_usage_and_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

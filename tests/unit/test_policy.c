/* The controller's load policies (runtime/control/policy.h) as pure functions: threshold with
 * hysteresis and cooldown driven by a synthetic stream of load reports, slo, manual, the maximum
 * conversion ratio, the arena guard on reverting, and the text form (parse errors name the field
 * and the limit; format reads back). */
#include "tests/testutil.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/control/policy.h"

static dsla_policy_load_t *load(uint32_t queue, uint32_t wait_ms) {
    static dsla_policy_load_t r;
    memset(&r, 0, sizeof r);
    r.num_layers = 8;
    r.queue_length = queue;
    r.oldest_wait_ms = wait_ms;
    return &r;
}

static dsla_policy_config_t parse(const char *line) {
    dsla_policy_config_t c;
    if (dsla_policy_parse_line(NULL, line, &c) != DSLA_OK) fail_msg("%s", dsla_last_error());
    return c;
}

/* A replica's life under the threshold policy: one report every 100 ms, the controller's loop
 * (current follows the target; a change stamps the time) run by hand. */
static void test_threshold_hysteresis_and_cooldown(void **state) {
    (void)state;
    dsla_policy_config_t c =
        parse("threshold queue_high=8 queue_low=2 wait_high_ms=1000 wait_low_ms=100 "
              "cooldown_ms=500 max_ratio=0.5");
    struct {
        uint32_t queue, wait_ms;
        int want; /* the target after this report */
    } steps[] = {
        {0, 0, 0},  /* idle: nothing to revert */
        {9, 50, 1}, /* queue above high: convert one */
        {9, 50, 1}, /* still high, but cooling down (100 ms since the change) */
        {9, 50, 1},  {9, 50, 1},  {9, 50, 1},  {9, 50, 2},   /* 500 ms later: the next */
        {5, 50, 2},                                          /* inside the band: hold */
        {5, 50, 2},  {5, 50, 2},  {5, 50, 2},  {0, 2000, 3}, /* a prompt waited too long: convert */
        {1, 50, 3},                                          /* low again, cooling down */
        {1, 50, 3},  {1, 50, 3},  {1, 50, 3},  {1, 50, 2},   /* light load: revert one */
        {20, 50, 2}, {20, 50, 2}, {20, 50, 2}, {20, 50, 2},  {20, 50, 3}, {20, 50, 3},
        {20, 50, 3}, {20, 50, 3}, {20, 50, 3}, {20, 50, 4}, /* at the cap: floor(0.5 * 8) */
        {20, 50, 4}, {20, 50, 4}, {20, 50, 4}, {20, 50, 4},  {20, 50, 4}, {20, 50, 4},
    };
    dsla_policy_state_t ps = {.current = 0, .available = 6};
    char why[256];
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        ps.now_ms = 1000 + 100 * (uint64_t)i;
        int t =
            dsla_policy_target(&c, load(steps[i].queue, steps[i].wait_ms), &ps, why, sizeof why);
        if (t != steps[i].want)
            fail_msg("report %zu (queue %u, wait %u): target %d, want %d (%s)", i, steps[i].queue,
                     steps[i].wait_ms, t, steps[i].want, why);
        if (t != ps.current) {
            ps.current = t;
            ps.last_change_ms = ps.now_ms;
        }
    }
    assert_non_null(strstr(why, "threshold: queue 20"));
    /* the cap fell below what runs: obeyed at once, cooldown or not */
    c.max_ratio = 0.25;
    assert_int_equal(dsla_policy_target(&c, load(20, 0), &ps, NULL, 0), 2);
    /* fewer versions than the ratio allows: capped by them */
    c.max_ratio = 1.0;
    ps = (dsla_policy_state_t){.current = 1, .available = 1, .now_ms = 1};
    assert_int_equal(dsla_policy_target(&c, load(20, 0), &ps, NULL, 0), 1);
}

static void test_slo(void **state) {
    (void)state;
    dsla_policy_config_t c = parse("slo ttft_ms=200 tpot_ms=20 slack=0.5 cooldown_ms=0 step=2");
    dsla_policy_state_t ps = {.current = 0, .available = 8, .now_ms = 10};
    dsla_policy_load_t *l = load(0, 0);
    l->ttft_p90_ms = 250; /* TTFT over target */
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 2);
    ps.current = 2;
    l->ttft_p90_ms = 150; /* between slack * target and target: hold */
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 2);
    l->tpot_p90_ms = 30; /* TPOT over target */
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 4);
    ps.current = 4;
    l->ttft_p90_ms = 90;
    l->tpot_p90_ms = 9; /* both well below: revert */
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 2);
    l->ttft_p90_ms = 0; /* no requests in the window: light load */
    l->tpot_p90_ms = 0;
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 2);
    c.tpot_ms = 0; /* no TPOT target: only TTFT counts */
    l->tpot_p90_ms = 1e6;
    l->ttft_p90_ms = 10;
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 2);
}

/* The arena guard on reverting (memory_low): a conversion empties the queue while the arena is
 * still full, and that must not revert it; the load falling (the arena draining) does. */
static void test_revert_waits_for_the_arena(void **state) {
    (void)state;
    dsla_policy_config_t c =
        parse("threshold queue_high=4 queue_low=0 wait_high_ms=1000 wait_low_ms=300 "
              "cooldown_ms=0 step=8 max_ratio=1");
    assert_true(c.memory_low == dsla_policy_default(DSLA_POLICY_THRESHOLD).memory_low);
    dsla_policy_state_t ps = {.current = 8, .available = 8, .now_ms = 10, .last_change_ms = 1};
    dsla_policy_load_t *l = load(0, 0);
    char why[256];
    l->memory_used = 0.99; /* the queue emptied right after converting: hold */
    assert_int_equal(dsla_policy_target(&c, l, &ps, why, sizeof why), 8);
    assert_non_null(strstr(why, "arena 99% in use (revert at most 80%)"));
    l->memory_used = 0.8; /* drained to the bound: revert one step */
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 0);
    l->memory_used = 0.99; /* a full arena never blocks converting */
    l->queue_length = 5;
    ps.current = 0;
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 8);
    /* memory_low=1 is the queue rule alone; slo has the same guard */
    c = parse("threshold queue_high=4 queue_low=0 cooldown_ms=0 step=8 max_ratio=1 "
              "memory_low=1");
    ps.current = 8;
    l->queue_length = 0;
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 0);
    c = parse("slo ttft_ms=200 tpot_ms=20 cooldown_ms=0 step=8 max_ratio=1 memory_low=0.5");
    l->ttft_p90_ms = 10;
    l->tpot_p90_ms = 1;
    l->memory_used = 0.6;
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 8);
    l->memory_used = 0.4;
    assert_int_equal(dsla_policy_target(&c, l, &ps, NULL, 0), 0);
}

static void test_manual_and_max_ratio(void **state) {
    (void)state;
    dsla_policy_config_t c = parse("manual layers=3 max_ratio=0.5");
    dsla_policy_state_t ps = {.current = 0, .available = 8, .now_ms = 1, .last_change_ms = 1};
    char why[128];
    assert_int_equal(dsla_policy_target(&c, load(100, 100000), &ps, why, sizeof why), 3);
    assert_non_null(strstr(why, "manual"));
    c.layers = 6; /* above floor(0.5 * 8) */
    assert_int_equal(dsla_policy_target(&c, load(0, 0), &ps, NULL, 0), 4);
    assert_int_equal(dsla_policy_max_layers(&c, 8, 8), 4);
    assert_int_equal(dsla_policy_max_layers(&c, 8, 2), 2);
    assert_int_equal(dsla_policy_max_layers(&c, 5, 8), 2);
    c.max_ratio = 0.0;
    assert_int_equal(dsla_policy_target(&c, load(0, 0), &ps, NULL, 0), 0);
}

static void assert_refused(const char *line, const char *needle) {
    dsla_policy_config_t c;
    assert_int_equal(dsla_policy_parse_line(NULL, line, &c), DSLA_ERR_INVALID_ARGUMENT);
    if (!strstr(dsla_last_error(), needle))
        fail_msg("'%s': message '%s' lacks '%s'", line, dsla_last_error(), needle);
}

static void test_text_form(void **state) {
    (void)state;
    assert_refused("", "name one of threshold");
    assert_refused("adaptive", "'adaptive' is not a policy");
    assert_refused("manual layers", "not key=value");
    assert_refused("manual queue_high=3", "no field 'queue_high'; it takes max_ratio, layers");
    assert_refused("threshold max_ratio=1.5", "max_ratio 1.5 is outside [0, 1]");
    assert_refused("threshold queue_high=2.5", "queue_high '2.5' is not a whole number");
    assert_refused("threshold queue_high=0", "queue_high 0 is outside [1, 1000000]");
    assert_refused("threshold queue_high=4 queue_low=4", "queue_low 4 must be below queue_high 4");
    assert_refused("threshold wait_low_ms=5000", "wait_low_ms 5000 must be below wait_high_ms");
    assert_refused("slo slack=1", "slack 1 is outside [0.01, 0.99]");
    assert_refused("slo ttft_ms=nan", "is not a number");
    assert_refused("threshold memory_low=1.2", "memory_low 1.2 is outside [0, 1]");
    assert_refused("manual memory_low=0.5", "no field 'memory_low'");

    const char *lines[] = {"threshold queue_high=4 queue_low=1 cooldown_ms=0 max_ratio=0.3",
                           "slo ttft_ms=250.5 tpot_ms=0 slack=0.25 step=2 memory_low=0.65",
                           "manual layers=7"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        dsla_policy_config_t a = parse(lines[i]), b;
        char text[512], again[512];
        dsla_policy_format(&a, text, sizeof text);
        assert_int_equal(dsla_policy_parse_line(NULL, text, &b), DSLA_OK);
        dsla_policy_format(&b, again, sizeof again);
        assert_string_equal(text, again);
        assert_true(a.max_ratio == b.max_ratio && a.ttft_ms == b.ttft_ms && a.slack == b.slack);
    }
    /* unnamed fields come from the base of the same kind, else the defaults */
    dsla_policy_config_t base = parse("threshold queue_high=30 queue_low=10"), c;
    assert_int_equal(dsla_policy_parse_line(&base, "threshold cooldown_ms=7", &c), DSLA_OK);
    assert_int_equal(c.queue_high, 30);
    assert_int_equal(c.cooldown_ms, 7);
    assert_int_equal(dsla_policy_parse_line(&base, "manual", &c), DSLA_OK);
    assert_int_equal(c.kind, DSLA_POLICY_MANUAL);
    assert_true(c.max_ratio == dsla_policy_default(DSLA_POLICY_MANUAL).max_ratio);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threshold_hysteresis_and_cooldown),
        cmocka_unit_test(test_slo),
        cmocka_unit_test(test_revert_waits_for_the_arena),
        cmocka_unit_test(test_manual_and_max_ratio),
        cmocka_unit_test(test_text_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Stop strings over streamed text: held-back prefixes, matches across pieces, never showing the
 * stop. */
#include "tests/testutil.h"

#include <string.h>

#include "runtime/model/stop_strings.h"

/* Feeds pieces one by one and returns everything emitted (static buffer). */
static const char *feed_all(dsla_stop_matcher_t *m, const char *const *pieces, int n,
                            bool *stopped) {
    static char out[1024];
    size_t used = 0;
    *stopped = false;
    for (int i = 0; i < n; i++) {
        const char *emit;
        size_t len;
        bool hit = dsla_stop_matcher_feed(m, pieces[i], strlen(pieces[i]), &emit, &len);
        memcpy(out + used, emit, len);
        used += len;
        if (hit) *stopped = true;
    }
    const char *emit;
    size_t len;
    dsla_stop_matcher_finish(m, &emit, &len);
    memcpy(out + used, emit, len);
    used += len;
    out[used] = '\0';
    return out;
}

static void test_stop_across_pieces(void **state) {
    (void)state;
    const char *stops[] = {"\n\nUser:", "END"};
    dsla_stop_matcher_t *m = NULL;
    assert_int_equal(dsla_stop_matcher_create(&m, stops, 2), DSLA_OK);
    const char *pieces[] = {"Hello", " there\n", "\nUs", "er: more", " never"};
    bool stopped;
    assert_string_equal(feed_all(m, pieces, 5, &stopped), "Hello there");
    assert_true(stopped);
    dsla_stop_matcher_destroy(&m);
    assert_null(m);
}

static void test_false_prefix_is_released(void **state) {
    (void)state;
    const char *stops[] = {"ENDX"};
    dsla_stop_matcher_t *m = NULL;
    assert_int_equal(dsla_stop_matcher_create(&m, stops, 1), DSLA_OK);
    const char *emit;
    size_t len;
    assert_false(dsla_stop_matcher_feed(m, "abcEN", 5, &emit, &len));
    assert_int_equal(len, 3); /* "EN" is held back */
    assert_memory_equal(emit, "abc", 3);
    assert_false(dsla_stop_matcher_feed(m, "Dy", 2, &emit, &len));
    assert_int_equal(len, 4);
    assert_memory_equal(emit, "ENDy", 4);
    assert_false(dsla_stop_matcher_feed(m, "END", 3, &emit, &len));
    assert_int_equal(len, 0);
    dsla_stop_matcher_finish(m, &emit, &len); /* end of stream: the held prefix is text after all */
    assert_int_equal(len, 3);
    dsla_stop_matcher_destroy(&m);
}

static void test_earliest_match_wins(void **state) {
    (void)state;
    const char *stops[] = {"cd", "b"};
    dsla_stop_matcher_t *m = NULL;
    assert_int_equal(dsla_stop_matcher_create(&m, stops, 2), DSLA_OK);
    const char *pieces[] = {"abcd"};
    bool stopped;
    assert_string_equal(feed_all(m, pieces, 1, &stopped), "a");
    assert_true(stopped);
    dsla_stop_matcher_destroy(&m);
}

static void test_no_stops_passes_through(void **state) {
    (void)state;
    dsla_stop_matcher_t *m = NULL;
    assert_int_equal(dsla_stop_matcher_create(&m, NULL, 0), DSLA_OK);
    const char *pieces[] = {"a", "b", "c"};
    bool stopped;
    assert_string_equal(feed_all(m, pieces, 3, &stopped), "abc");
    assert_false(stopped);
    dsla_stop_matcher_destroy(&m);
}

static void test_empty_stop_refused(void **state) {
    (void)state;
    const char *stops[] = {"ok", ""};
    dsla_stop_matcher_t *m = NULL;
    assert_int_equal(dsla_stop_matcher_create(&m, stops, 2), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "stop string 1"));
    assert_null(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_across_pieces),  cmocka_unit_test(test_false_prefix_is_released),
        cmocka_unit_test(test_earliest_match_wins), cmocka_unit_test(test_no_stops_passes_through),
        cmocka_unit_test(test_empty_stop_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

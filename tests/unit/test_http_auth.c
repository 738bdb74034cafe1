/* actors/http_auth: key files and DSLA_API_KEY load, bad keys and files are refused naming the
 * line and the limit, and only an exact Bearer key passes. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "actors/http_auth.h"

static const dsla_http_auth_source_t SRC = {"--api-key-file", "DSLA_API_KEY"};

#define KEY_A "sk-aaaaaaaaaaaaaaaaaaaaaaaa"
#define KEY_B "sk-bbbbbbbbbbbbbbbbbbbbbbbb"

static void test_keys_load_and_check(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir(), path[1024];
    snprintf(path, sizeof path, "%s/keys", dir);
    const char text[] = "# the team's keys\n" KEY_A "\r\n\n  \n" KEY_B "  \n";
    dsla_test_write_file(path, text, sizeof text - 1);
    dsla_http_auth_t *a = NULL;
    assert_int_equal(dsla_http_auth_load(&a, path, "sk-from-the-environment", &SRC), DSLA_OK);
    assert_int_equal(dsla_http_auth_count(a), 3);
    assert_true(dsla_http_auth_check(a, "Bearer " KEY_A));
    assert_true(dsla_http_auth_check(a, "bearer  " KEY_B " "));
    assert_true(dsla_http_auth_check(a, "Bearer sk-from-the-environment"));
    assert_false(dsla_http_auth_check(a, NULL));
    assert_false(dsla_http_auth_check(a, KEY_A));               /* no scheme */
    assert_false(dsla_http_auth_check(a, "Basic " KEY_A));      /* another scheme */
    assert_false(dsla_http_auth_check(a, "Bearer " KEY_A "x")); /* longer */
    assert_false(dsla_http_auth_check(a, "Bearer sk-aaaaaaaaaaaaaaaaaaaaaaab")); /* last byte */
    assert_false(dsla_http_auth_check(a, "Bearer "));
    dsla_http_auth_destroy(&a);
    assert_null(a);

    /* neither: no key required */
    assert_int_equal(dsla_http_auth_load(&a, NULL, "", &SRC), DSLA_OK);
    assert_null(a);
    assert_false(dsla_http_auth_check(NULL, "Bearer " KEY_A));
    dsla_test_rmtree(dir);
    free(dir);
}

static void expect_refused(const char *text, const char *words) {
    char *dir = dsla_test_tempdir(), path[1024];
    snprintf(path, sizeof path, "%s/keys", dir);
    dsla_test_write_file(path, text, strlen(text));
    dsla_http_auth_t *a = NULL;
    assert_int_equal(dsla_http_auth_load(&a, path, NULL, &SRC), DSLA_ERR_INVALID_ARGUMENT);
    assert_null(a);
    if (!strstr(dsla_last_error(), words)) fail_msg("'%s': %s", text, dsla_last_error());
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_bad_keys_refused(void **state) {
    (void)state;
    expect_refused(KEY_A "\nshort\n", "line 2: 5 bytes; a key must be 16 to 256 bytes");
    expect_refused("sk-with a space-inside\n", "line 1: byte 8 is not a printable");
    expect_refused("# only comments\n\n", "holds no key");
    dsla_http_auth_t *a = NULL;
    assert_int_equal(dsla_http_auth_load(&a, NULL, "tiny", &SRC), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "DSLA_API_KEY"));
    assert_int_equal(dsla_http_auth_load(&a, "/nonexistent/keys", NULL, &SRC), DSLA_ERR_NOT_FOUND);
    assert_non_null(strstr(dsla_last_error(), "/nonexistent/keys"));
    /* a FIFO or a device is refused without blocking or reading forever */
    char *dir = dsla_test_tempdir(), fifo[1024];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_int_equal(dsla_http_auth_load(&a, fifo, NULL, &SRC), DSLA_ERR_INVALID_ARGUMENT);
    assert_int_equal(dsla_http_auth_load(&a, "/dev/zero", NULL, &SRC), DSLA_ERR_INVALID_ARGUMENT);
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys_load_and_check),
        cmocka_unit_test(test_bad_keys_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

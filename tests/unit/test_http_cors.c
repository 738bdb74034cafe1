/* actors/http_cors: which origins a list allows ("*", exact origins, nothing else), the origins
 * refused at start with a message naming the option and the rule, and the preflight's header list
 * check. */
#include "tests/testutil.h"

#include <string.h>

#include "actors/http_cors.h"

static void test_listed_origins(void **state) {
    (void)state;
    const char *const origins[] = {"https://app.example.com", "http://localhost:3000",
                                   "http://[::1]:8080"};
    dsla_http_cors_t *c = NULL;
    assert_int_equal(dsla_http_cors_create(&c, origins, 3), DSLA_OK);
    assert_false(dsla_http_cors_any(c));
    assert_string_equal(dsla_http_cors_allow(c, "https://app.example.com"),
                        "https://app.example.com");
    assert_string_equal(dsla_http_cors_allow(c, "http://localhost:3000"), "http://localhost:3000");
    assert_non_null(dsla_http_cors_allow(c, "http://[::1]:8080"));
    /* another scheme, port or host, a suffix, no Origin at all: nothing */
    assert_null(dsla_http_cors_allow(c, "http://app.example.com"));
    assert_null(dsla_http_cors_allow(c, "http://localhost:3001"));
    assert_null(dsla_http_cors_allow(c, "https://app.example.com.evil.io"));
    assert_null(dsla_http_cors_allow(c, "null"));
    assert_null(dsla_http_cors_allow(c, NULL));
    dsla_http_cors_destroy(&c);
    assert_null(c);
    dsla_http_cors_destroy(&c); /* harmless twice */
    /* off: no list */
    assert_null(dsla_http_cors_allow(NULL, "https://app.example.com"));
}

static void test_any_origin(void **state) {
    (void)state;
    const char *const origins[] = {"*"};
    dsla_http_cors_t *c = NULL;
    assert_int_equal(dsla_http_cors_create(&c, origins, 1), DSLA_OK);
    assert_true(dsla_http_cors_any(c));
    assert_string_equal(dsla_http_cors_allow(c, "https://anyone.example"), "*");
    assert_null(dsla_http_cors_allow(c, NULL)); /* not a browser's cross-origin request */
    dsla_http_cors_destroy(&c);
}

static void test_bad_origins(void **state) {
    (void)state;
    static const char *const bad[] = {
        "app.example.com",     "https://app.example.com/", "https://",      "ftp://app.example.com",
        "https://a b.example", "https://host:123456",      "https://host:", "http://[]:80",
        "https://host/path",   "https://host\r\nX-Evil: 1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dsla_http_cors_t *c = NULL;
        assert_int_equal(dsla_http_cors_create(&c, &bad[i], 1), DSLA_ERR_INVALID_ARGUMENT);
        assert_null(c);
        assert_non_null(strstr(dsla_last_error(), "--cors-origin"));
    }
    const char *many[DSLA_HTTP_CORS_ORIGINS_MAX + 1];
    for (int i = 0; i <= DSLA_HTTP_CORS_ORIGINS_MAX; i++)
        many[i] = "https://a.example";
    dsla_http_cors_t *c = NULL;
    assert_int_equal(dsla_http_cors_create(&c, many, DSLA_HTTP_CORS_ORIGINS_MAX + 1),
                     DSLA_ERR_INVALID_ARGUMENT);
    char long_origin[DSLA_HTTP_CORS_ORIGIN_MAX + 16] = "https://";
    memset(long_origin + 8, 'a', sizeof long_origin - 9);
    long_origin[sizeof long_origin - 1] = '\0';
    const char *one[] = {long_origin};
    assert_int_equal(dsla_http_cors_create(&c, one, 1), DSLA_ERR_INVALID_ARGUMENT);
}

static void test_request_headers(void **state) {
    (void)state;
    assert_true(dsla_http_cors_headers_ok(NULL));
    assert_true(dsla_http_cors_headers_ok("authorization, content-type, x-stainless-os"));
    assert_false(dsla_http_cors_headers_ok("authorization\r\nX-Evil: 1"));
    assert_false(dsla_http_cors_headers_ok("a:b"));
    char big[DSLA_HTTP_CORS_REQUEST_HEADERS_MAX + 2];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_false(dsla_http_cors_headers_ok(big));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listed_origins),
        cmocka_unit_test(test_any_origin),
        cmocka_unit_test(test_bad_origins),
        cmocka_unit_test(test_request_headers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

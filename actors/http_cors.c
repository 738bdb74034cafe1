/* The allowed origins and the checks on what a preflight asks (http_cors.h). */
#include "actors/http_cors.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

struct dsla_http_cors {
    bool any;
    size_t n;
    char origins[DSLA_HTTP_CORS_ORIGINS_MAX][DSLA_HTTP_CORS_ORIGIN_MAX + 1];
};

/* scheme://host[:port]: http or https, then host characters (letters, digits, '-', '.', and the
 * brackets and colons of an IPv6 literal), an optional port of digits, nothing after. */
static bool origin_ok(const char *o) {
    const char *p = strncmp(o, "http://", 7) == 0    ? o + 7
                    : strncmp(o, "https://", 8) == 0 ? o + 8
                                                     : NULL;
    if (!p || !*p) return false;
    if (*p == '[') { /* [v6]:port */
        const char *end = strchr(p, ']');
        if (!end || end == p + 1) return false;
        for (const char *q = p + 1; q < end; q++)
            if (!isxdigit((unsigned char)*q) && *q != ':' && *q != '.') return false;
        p = end + 1;
    } else {
        const char *start = p;
        while (isalnum((unsigned char)*p) || *p == '-' || *p == '.')
            p++;
        if (p == start) return false;
    }
    if (*p == ':') {
        const char *digits = ++p;
        while (isdigit((unsigned char)*p))
            p++;
        if (p == digits || p - digits > 5) return false;
    }
    return *p == '\0';
}

dsla_status_t dsla_http_cors_create(dsla_http_cors_t **out, const char *const *origins, size_t n) {
    *out = NULL;
    if (n > DSLA_HTTP_CORS_ORIGINS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "--cors-origin given %zu times; at most %d", n,
                          DSLA_HTTP_CORS_ORIGINS_MAX);
    dsla_http_cors_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("CORS origins");
    for (size_t i = 0; i < n; i++) {
        const char *o = origins[i];
        if (strcmp(o, "*") == 0) {
            c->any = true;
            continue;
        }
        if (strlen(o) > DSLA_HTTP_CORS_ORIGIN_MAX || !origin_ok(o)) {
            free(c);
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "--cors-origin '%.300s' must be * or an origin as browsers send it: "
                              "http:// or https://, a host, an optional :port, no path or "
                              "trailing slash (at most %d bytes), e.g. https://app.example.com",
                              o, DSLA_HTTP_CORS_ORIGIN_MAX);
        }
        memcpy(c->origins[c->n++], o, strlen(o) + 1);
    }
    *out = c;
    return DSLA_OK;
}

void dsla_http_cors_destroy(dsla_http_cors_t **c) {
    if (!c) return;
    free(*c);
    *c = NULL;
}

const char *dsla_http_cors_allow(const dsla_http_cors_t *c, const char *origin) {
    if (!c || !origin) return NULL;
    if (c->any) return "*";
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->origins[i], origin) == 0) return origin;
    return NULL;
}

bool dsla_http_cors_any(const dsla_http_cors_t *c) {
    return c && c->any;
}

bool dsla_http_cors_headers_ok(const char *requested) {
    if (!requested) return true;
    if (strlen(requested) > DSLA_HTTP_CORS_REQUEST_HEADERS_MAX) return false;
    for (const char *p = requested; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("!#$%&'*+-.^_`|~, ", *p)) return false;
    return true;
}

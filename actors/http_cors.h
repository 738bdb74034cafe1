/* CORS for the HTTP front end (docs/http.md, "CORS"): which browser origins may call the API.
 *
 * Off unless dsla-serve is given --cors-origin: then a preflight (OPTIONS with Origin and
 * Access-Control-Request-Method) from a listed origin is answered with the methods and headers
 * allowed, and every response to a listed origin carries Access-Control-Allow-Origin; an origin
 * not listed gets no CORS header (the browser then refuses the answer) and its preflight a 403.
 * "*" allows every origin. This module only decides; http.c writes the headers. */
#ifndef DSLA_ACTORS_HTTP_CORS_H
#define DSLA_ACTORS_HTTP_CORS_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/core/status.h"

/* Origins one server lists at most, and bytes of one ("https://host:port"). */
#define DSLA_HTTP_CORS_ORIGINS_MAX 64
#define DSLA_HTTP_CORS_ORIGIN_MAX 255
/* Bytes of an Access-Control-Request-Headers value that a preflight may ask for. */
#define DSLA_HTTP_CORS_REQUEST_HEADERS_MAX 1024
/* How long a browser may cache a preflight's answer, in seconds. */
#define DSLA_HTTP_CORS_MAX_AGE_S 600

typedef struct dsla_http_cors dsla_http_cors_t;

/* origins[0..n): each "*" or scheme://host[:port] (http or https, no path, no trailing slash).
 * INVALID_ARGUMENT naming the option, the origin and the rule otherwise. */
dsla_status_t dsla_http_cors_create(dsla_http_cors_t **out, const char *const *origins, size_t n);
void dsla_http_cors_destroy(dsla_http_cors_t **c);

/* The Access-Control-Allow-Origin value for a request that sent Origin: origin (NULL when it sent
 * none): "*" when every origin is allowed, origin itself when listed, NULL otherwise (no header).
 */
const char *dsla_http_cors_allow(const dsla_http_cors_t *c, const char *origin);
/* True when "*" was listed: the answer is the same for every origin (no Vary: Origin needed). */
bool dsla_http_cors_any(const dsla_http_cors_t *c);
/* True when a preflight's Access-Control-Request-Headers value (NULL: none) is a list of header
 * names (token characters, commas, spaces) of at most DSLA_HTTP_CORS_REQUEST_HEADERS_MAX bytes,
 * so that it can be echoed as Access-Control-Allow-Headers. */
bool dsla_http_cors_headers_ok(const char *requested);

#endif

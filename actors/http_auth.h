/* API keys for the HTTP front end, and the admin keys of the controller (docs/security.md): the
 * set of keys a request may present as
 * `Authorization: Bearer KEY`, loaded from a key file (one key per line; blank lines and lines
 * starting with # skipped) and from one key given directly (DSLA_API_KEY).
 *
 * Contract: a check compares the presented key with every key in time that does not depend on
 * where they first differ, and never logs or returns a key. The file is read once at start-up: a
 * regular file, at most DSLA_HTTP_AUTH_FILE_MAX bytes. Keys are DSLA_HTTP_KEY_MIN to
 * DSLA_HTTP_KEY_MAX printable bytes without spaces; anything else is refused naming the line. No
 * HTTP here: http.c asks, this answers. */
#ifndef DSLA_ACTORS_HTTP_AUTH_H
#define DSLA_ACTORS_HTTP_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/core/status.h"

/* Shorter keys are guessable; longer ones are no key anyone typed. */
#define DSLA_HTTP_KEY_MIN 16
#define DSLA_HTTP_KEY_MAX 256
#define DSLA_HTTP_KEYS_MAX 1024
#define DSLA_HTTP_AUTH_FILE_MAX (1u << 20)

typedef struct dsla_http_auth dsla_http_auth_t;

/* Where keys come from, for the errors: the option naming the file and the variable of the key. */
typedef struct {
    const char *option; /* "--api-key-file" */
    const char *env;    /* "DSLA_API_KEY" */
} dsla_http_auth_source_t;

/* Loads the keys of key_file (NULL: none) and key (NULL or "": none). With neither, *out is NULL
 * and DSLA_OK: no key is required. Errors name the option or variable, the line and the limit. */
dsla_status_t dsla_http_auth_load(dsla_http_auth_t **out, const char *key_file, const char *key,
                                  const dsla_http_auth_source_t *source);
void dsla_http_auth_destroy(dsla_http_auth_t **a);
size_t dsla_http_auth_count(const dsla_http_auth_t *a);

/* Whether key (len bytes) is one of the keys: the comparison behind both checks. */
bool dsla_http_auth_has(const dsla_http_auth_t *a, const char *key, size_t len);
/* Whether an Authorization header value ("Bearer KEY"; NULL when absent) carries one of the keys.
 */
bool dsla_http_auth_check(const dsla_http_auth_t *a, const char *authorization);

#endif

/* API keys for the HTTP front end (http_auth.h). */
#include "actors/http_auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct dsla_http_auth {
    size_t n;
    char keys[DSLA_HTTP_KEYS_MAX][DSLA_HTTP_KEY_MAX + 1];
    size_t lens[DSLA_HTTP_KEYS_MAX];
};

/* Adds one key; where says where it came from, for the error. */
static dsla_status_t add_key(dsla_http_auth_t *a, const char *key, size_t len, const char *where) {
    if (len < DSLA_HTTP_KEY_MIN || len > DSLA_HTTP_KEY_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "API key %s: %zu bytes; a key must be %d to %d bytes (openssl rand -hex "
                          "32 makes one)",
                          where, len, DSLA_HTTP_KEY_MIN, DSLA_HTTP_KEY_MAX);
    for (size_t i = 0; i < len; i++)
        if (key[i] < 0x21 || key[i] > 0x7e)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "API key %s: byte %zu is not a printable character (no spaces)",
                              where, i + 1);
    if (a->n == DSLA_HTTP_KEYS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "API key %s: more than %d keys", where,
                          DSLA_HTTP_KEYS_MAX);
    memcpy(a->keys[a->n], key, len);
    a->keys[a->n][len] = '\0';
    a->lens[a->n++] = len;
    return DSLA_OK;
}

/* Reads the whole key file: a regular file (no FIFO to block on), within the size limit. */
static dsla_status_t read_file(const char *option, const char *path, char **out, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return dsla_error(DSLA_ERR_NOT_FOUND, "%s %s: %s", option, path, strerror(errno));
    struct stat sb;
    dsla_status_t st = DSLA_OK;
    char *buf = NULL;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) ||
        (uint64_t)sb.st_size > DSLA_HTTP_AUTH_FILE_MAX)
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                        "%s %s: must be a regular file of at most %u bytes", option, path,
                        DSLA_HTTP_AUTH_FILE_MAX);
    else if (!(buf = malloc((size_t)sb.st_size + 1)))
        st = dsla_error_oom("%s %s", option, path);
    size_t n = 0;
    while (st == DSLA_OK && n < (size_t)sb.st_size) {
        ssize_t got = read(fd, buf + n, (size_t)sb.st_size - n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break; /* shrank meanwhile: what was read */
        n += (size_t)got;
    }
    close(fd);
    if (st != DSLA_OK) {
        free(buf);
        return st;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return DSLA_OK;
}

static dsla_status_t load_file(dsla_http_auth_t *a, const char *option, const char *path) {
    char *text = NULL;
    size_t len = 0;
    DSLA_TRY(read_file(option, path, &text, &len));
    dsla_status_t st = DSLA_OK;
    int line = 0;
    for (char *p = text; st == DSLA_OK && p < text + len;) {
        char *end = memchr(p, '\n', (size_t)(text + len - p));
        if (!end) end = text + len;
        line++;
        size_t n = (size_t)(end - p);
        while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n > 0 && p[0] != '#') {
            char where[1100];
            snprintf(where, sizeof where, "in %.1000s line %d", path, line);
            st = add_key(a, p, n, where);
        }
        p = end + 1;
    }
    free(text);
    if (st == DSLA_OK && a->n == 0)
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s %s: holds no key", option, path);
    return st;
}

dsla_status_t dsla_http_auth_load(dsla_http_auth_t **out, const char *key_file, const char *key,
                                  const dsla_http_auth_source_t *source) {
    *out = NULL;
    bool have_key = key && *key;
    if (!key_file && !have_key) return DSLA_OK;
    dsla_http_auth_t *a = calloc(1, sizeof *a);
    if (!a) return dsla_error_oom("API keys");
    dsla_status_t st = key_file ? load_file(a, source->option, key_file) : DSLA_OK;
    if (st == DSLA_OK && have_key) st = add_key(a, key, strlen(key), source->env);
    if (st != DSLA_OK) {
        dsla_http_auth_destroy(&a);
        return st;
    }
    *out = a;
    return DSLA_OK;
}

void dsla_http_auth_destroy(dsla_http_auth_t **a) {
    if (!a || !*a) return;
    memset(*a, 0, sizeof **a); /* keys do not outlive their use in freed memory */
    free(*a);
    *a = NULL;
}

size_t dsla_http_auth_count(const dsla_http_auth_t *a) {
    return a ? a->n : 0;
}

bool dsla_http_auth_has(const dsla_http_auth_t *a, const char *key, size_t len) {
    if (!a || !key) return false;
    unsigned found = 0;
    for (size_t i = 0; i < a->n; i++) {
        if (a->lens[i] != len) continue; /* a key's length is no secret worth the bytes */
        /* every byte is compared: no early exit at the first difference */
        unsigned diff = 0;
        for (size_t j = 0; j < len; j++)
            diff |= (unsigned)(unsigned char)(a->keys[i][j] ^ key[j]);
        found |= diff == 0;
    }
    return found != 0;
}

bool dsla_http_auth_check(const dsla_http_auth_t *a, const char *authorization) {
    if (!a || !authorization || strncasecmp(authorization, "Bearer ", 7) != 0) return false;
    const char *key = authorization + 7;
    while (*key == ' ')
        key++;
    size_t len = strnlen(key, DSLA_HTTP_KEY_MAX + 1);
    while (len > 0 && key[len - 1] == ' ')
        len--;
    return dsla_http_auth_has(a, key, len);
}

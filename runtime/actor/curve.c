/* CURVE key directories (curve.h). */
#include "runtime/actor/curve.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "runtime/core/keyfile.h"

/* The largest authorized_keys or known_servers file: DSLA_CURVE_ENTRIES_MAX lines of about 100
 * bytes, and comments. */
#define CURVE_FILE_MAX (256u << 10)
#define CURVE_PATH_MAX 4096

const char *dsla_role_name(uint32_t role) {
#define DSLA_ROLE_NAME_(name, text, bit)                                                           \
    if (role == DSLA_ROLE_##name) return text;
    DSLA_ROLE_TABLE(DSLA_ROLE_NAME_)
#undef DSLA_ROLE_NAME_
    return "?";
}

uint32_t dsla_role_parse(const char *text) {
#define DSLA_ROLE_PARSE_(name, t, bit)                                                             \
    if (strcmp(text, t) == 0) return DSLA_ROLE_##name;
    DSLA_ROLE_TABLE(DSLA_ROLE_PARSE_)
#undef DSLA_ROLE_PARSE_
    return 0;
}

dsla_status_t dsla_curve_available(void) {
    if (zmq_has("curve")) return DSLA_OK;
    return dsla_error(DSLA_ERR_UNSUPPORTED,
                      "this libzmq has no CURVE (built without libsodium); install Debian's "
                      "libzmq5, which has it, or run without --curve-keys on loopback");
}

static bool valid_key(const char *key) {
    uint8_t raw[32];
    return strlen(key) == DSLA_CURVE_KEY_LEN && zmq_z85_decode(raw, key) != NULL;
}

static bool valid_name(const char *name) {
    size_t len = strlen(name);
    if (len == 0 || len > DSLA_PROTO_NAME_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if (name[i] < 0x21 || name[i] > 0x7e) return false;
    return true;
}

static dsla_status_t check_identity(uint32_t role, const char *name, const char *public_key) {
    if (!dsla_role_parse(dsla_role_name(role)))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "role must be one of gateway, replica, controller, distiller, admin, "
                          "client");
    if (!valid_name(name))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "key name '%.16s' must be 1 to %d printable bytes without spaces", name,
                          DSLA_PROTO_NAME_MAX);
    if (!valid_key(public_key))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "public key '%.8s...' is not %d characters of Z85 text", public_key,
                          DSLA_CURVE_KEY_LEN);
    return DSLA_OK;
}

dsla_status_t dsla_curve_keys_authorize(dsla_curve_keys_t *k, uint32_t role, const char *name,
                                        const char *public_key) {
    DSLA_TRY(check_identity(role, name, public_key));
    if (k->n_authorized == DSLA_CURVE_ENTRIES_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "more than %d authorized keys",
                          DSLA_CURVE_ENTRIES_MAX);
    dsla_curve_identity_t *a = realloc(k->authorized, (k->n_authorized + 1) * sizeof *a);
    if (!a) return dsla_error_oom("authorized keys");
    k->authorized = a;
    dsla_curve_identity_t *e = &a[k->n_authorized++];
    e->role = role;
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->public_key, sizeof e->public_key, "%s", public_key);
    return DSLA_OK;
}

dsla_status_t dsla_curve_keys_add_server(dsla_curve_keys_t *k, const char *endpoint,
                                         const char *public_key) {
    if (strncmp(endpoint, "tcp://", 6) != 0 || strlen(endpoint) >= DSLA_CURVE_ENDPOINT_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "server endpoint '%.32s' must be tcp://HOST:PORT, under %d bytes",
                          endpoint, DSLA_CURVE_ENDPOINT_MAX);
    if (!valid_key(public_key))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "public key '%.8s...' of %s is not %d characters of Z85 text", public_key,
                          endpoint, DSLA_CURVE_KEY_LEN);
    if (k->n_servers == DSLA_CURVE_ENTRIES_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "more than %d known servers",
                          DSLA_CURVE_ENTRIES_MAX);
    dsla_curve_server_t *s = realloc(k->servers, (k->n_servers + 1) * sizeof *s);
    if (!s) return dsla_error_oom("known servers");
    k->servers = s;
    dsla_curve_server_t *e = &s[k->n_servers++];
    snprintf(e->endpoint, sizeof e->endpoint, "%s", endpoint);
    snprintf(e->public_key, sizeof e->public_key, "%s", public_key);
    return DSLA_OK;
}

const char *dsla_curve_server_key(const dsla_curve_keys_t *k, const char *endpoint) {
    for (size_t i = 0; i < k->n_servers; i++)
        if (strcmp(k->servers[i].endpoint, endpoint) == 0) return k->servers[i].public_key;
    return NULL;
}

const dsla_curve_identity_t *dsla_curve_lookup(const dsla_curve_keys_t *k, const char *public_key) {
    if (strcmp(k->self.public_key, public_key) == 0) return &k->self;
    for (size_t i = 0; i < k->n_authorized; i++)
        if (strcmp(k->authorized[i].public_key, public_key) == 0) return &k->authorized[i];
    return NULL;
}

void dsla_curve_keys_destroy(dsla_curve_keys_t **k) {
    if (!k || !*k) return;
    free((*k)->authorized);
    free((*k)->servers);
    /* the secret key must not linger in freed memory */
    memset((*k)->secret_key, 0, sizeof(*k)->secret_key);
    free(*k);
    *k = NULL;
}

dsla_status_t dsla_curve_keys_new(dsla_curve_keys_t **out, uint32_t role, const char *name) {
    *out = NULL;
    DSLA_TRY(dsla_curve_available());
    dsla_curve_keys_t *k = calloc(1, sizeof *k);
    if (!k) return dsla_error_oom("CURVE keys");
    if (zmq_curve_keypair(k->self.public_key, k->secret_key) != 0) {
        free(k);
        return dsla_error(DSLA_ERR_INTERNAL, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
    }
    k->self.role = role;
    snprintf(k->self.name, sizeof k->self.name, "%s", name);
    dsla_status_t st = check_identity(role, name, k->self.public_key);
    if (st != DSLA_OK) {
        dsla_curve_keys_destroy(&k);
        return st;
    }
    *out = k;
    return DSLA_OK;
}

dsla_status_t dsla_curve_keys_copy(dsla_curve_keys_t **out, const dsla_curve_keys_t *keys) {
    *out = NULL;
    dsla_curve_keys_t *k = calloc(1, sizeof *k);
    if (!k) return dsla_error_oom("CURVE keys");
    k->self = keys->self;
    memcpy(k->secret_key, keys->secret_key, sizeof k->secret_key);
    dsla_status_t st = DSLA_OK;
    for (size_t i = 0; st == DSLA_OK && i < keys->n_authorized; i++)
        st = dsla_curve_keys_authorize(k, keys->authorized[i].role, keys->authorized[i].name,
                                       keys->authorized[i].public_key);
    for (size_t i = 0; st == DSLA_OK && i < keys->n_servers; i++)
        st = dsla_curve_keys_add_server(k, keys->servers[i].endpoint, keys->servers[i].public_key);
    if (st != DSLA_OK) {
        dsla_curve_keys_destroy(&k);
        return st;
    }
    *out = k;
    return DSLA_OK;
}

dsla_status_t dsla_curve_keys_save(const dsla_curve_keys_t *k, const char *dir) {
    char path[CURVE_PATH_MAX], text[256];
    snprintf(path, sizeof path, "%s/node.key", dir);
    snprintf(text, sizeof text, "%s\n", k->secret_key);
    dsla_status_t st = dsla_keyfile_write(path, true, text);
    memset(text, 0, sizeof text);
    DSLA_TRY(st);
    snprintf(path, sizeof path, "%s/node.pub", dir);
    snprintf(text, sizeof text, "%s %s %s\n", dsla_role_name(k->self.role), k->self.public_key,
             k->self.name);
    return dsla_keyfile_write(path, false, text);
}

/* Splits line into at most max whitespace-separated words (in place); their count, max + 1 when
 * there are more. */
static int split_words(char *line, char **words, int max) {
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(line, " \t\r\n", &save); tok;
         tok = strtok_r(NULL, " \t\r\n", &save)) {
        if (n == max) return max + 1;
        words[n++] = tok;
    }
    return n;
}

typedef dsla_status_t (*line_fn)(dsla_curve_keys_t *k, char **words, int n);

static dsla_status_t authorized_line(dsla_curve_keys_t *k, char **w, int n) {
    if (n < 2 || n > 3)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "expected 'ROLE PUBLIC-KEY [NAME]'");
    uint32_t role = dsla_role_parse(w[0]);
    if (!role)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "role '%.16s' is not one of gateway, replica, controller, distiller, "
                          "admin, client",
                          w[0]);
    return dsla_curve_keys_authorize(k, role, n == 3 ? w[2] : w[0], w[1]);
}

static dsla_status_t server_line(dsla_curve_keys_t *k, char **w, int n) {
    if (n != 2) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "expected 'tcp://HOST:PORT KEY'");
    return dsla_curve_keys_add_server(k, w[0], w[1]);
}

/* Each non-empty, non-comment line of text through fn; failures name path and line. */
static dsla_status_t each_line(dsla_curve_keys_t *k, const char *path, char *text, line_fn fn) {
    int lineno = 0;
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        lineno++;
        /* only whole-line comments: '#' is a Z85 digit */
        if (line[strspn(line, " \t")] == '#') *line = '\0';
        char *w[4];
        int n = split_words(line, w, 3);
        if (n > 0) {
            dsla_status_t st = fn(k, w, n);
            if (st != DSLA_OK) return dsla_error_wrap(st, "%s line %d: ", path, lineno);
        }
        line = next;
    }
    return DSLA_OK;
}

static dsla_status_t load_file(dsla_curve_keys_t *k, const char *dir, const char *file,
                               bool optional, line_fn fn) {
    char path[CURVE_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char *text = malloc(CURVE_FILE_MAX);
    if (!text) return dsla_error_oom("%s", path);
    dsla_status_t st = dsla_keyfile_read(path, false, text, CURVE_FILE_MAX, NULL);
    if (st == DSLA_ERR_NOT_FOUND && optional)
        st = DSLA_OK;
    else if (st == DSLA_OK)
        st = each_line(k, path, text, fn);
    free(text);
    return st;
}

static dsla_status_t load_self(dsla_curve_keys_t *k, const char *dir) {
    char path[CURVE_PATH_MAX], text[256];
    snprintf(path, sizeof path, "%s/node.pub", dir);
    DSLA_TRY(dsla_keyfile_read(path, false, text, sizeof text, NULL));
    char *w[4];
    int n = split_words(text, w, 3);
    uint32_t role = n == 3 ? dsla_role_parse(w[0]) : 0;
    if (!role || check_identity(role, w[2], w[1]) != DSLA_OK)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: expected one line 'ROLE PUBLIC-KEY NAME' (dslactl keygen writes it)",
                          path);
    k->self.role = role;
    snprintf(k->self.name, sizeof k->self.name, "%s", w[2]);
    snprintf(k->self.public_key, sizeof k->self.public_key, "%s", w[1]);
    snprintf(path, sizeof path, "%s/node.key", dir);
    dsla_status_t st = dsla_keyfile_read(path, true, text, sizeof text, NULL);
    if (st == DSLA_OK) {
        n = split_words(text, w, 1);
        char derived[DSLA_CURVE_KEY_LEN + 1];
        if (n != 1 || !valid_key(w[0]))
            st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                            "%s: expected one line of %d characters of Z85 text", path,
                            DSLA_CURVE_KEY_LEN);
        else if (zmq_curve_public(derived, w[0]) != 0 || strcmp(derived, k->self.public_key) != 0)
            st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                            "%s does not belong to the public key in %s/node.pub", path, dir);
        else
            snprintf(k->secret_key, sizeof k->secret_key, "%s", w[0]);
    }
    memset(text, 0, sizeof text);
    return st;
}

dsla_status_t dsla_curve_keys_load(dsla_curve_keys_t **out, const char *dir) {
    *out = NULL;
    DSLA_TRY(dsla_curve_available());
    dsla_curve_keys_t *k = calloc(1, sizeof *k);
    if (!k) return dsla_error_oom("CURVE keys");
    dsla_status_t st = load_self(k, dir);
    if (st == DSLA_OK) st = load_file(k, dir, "authorized_keys", true, authorized_line);
    if (st == DSLA_OK) st = load_file(k, dir, "known_servers", true, server_line);
    if (st != DSLA_OK) {
        dsla_curve_keys_destroy(&k);
        return dsla_error_wrap(st, "--curve-keys %s: ", dir);
    }
    *out = k;
    return DSLA_OK;
}

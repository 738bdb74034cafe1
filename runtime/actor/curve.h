/* CURVE keys: who may connect to this process's tcp:// mailboxes, in which role, and the public
 * keys of the servers it connects to (libzmq's CURVE, RFC 26, over libsodium).
 *
 * A key directory (dsla-serve --curve-keys DIR, dslactl --curve-keys DIR) holds:
 * - node.key: this process's Z85 secret key, one line; mode 0600 (keyfile.h refuses more).
 * - node.pub: "ROLE PUBLIC-KEY NAME", the line other nodes add to their authorized_keys.
 * - authorized_keys (optional: none but its own): "ROLE PUBLIC-KEY [NAME]" per line, the
 *   clients this process's mailboxes accept; NAME defaults to ROLE; its own key is always
 *   accepted. Lines starting with '#' are comments ('#' is also a Z85 digit: none after a key).
 * - known_servers (optional): "tcp://HOST:PORT PUBLIC-KEY" per line, the server key a
 *   connection to that endpoint must find, the endpoint exactly as written.
 * `dslactl keygen --out DIR --role ROLE [--name NAME]` writes node.key and node.pub.
 *
 * Contract: parsing only, and the keypair generator; the ZAP handler that applies the table lives
 * in actor.c. Every malformed line is refused with its file and line number. */
#ifndef DSLA_ACTOR_CURVE_H
#define DSLA_ACTOR_CURVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "runtime/core/status.h"

/* Z85 text of a 32-byte CURVE key. */
#define DSLA_CURVE_KEY_LEN 40
/* Lines of authorized_keys and known_servers: a cluster has far fewer processes. */
#define DSLA_CURVE_ENTRIES_MAX 1024
#define DSLA_CURVE_ENDPOINT_MAX 256

/* Roles a key may hold, one bit each so that a handler can name the set it accepts. */
#define DSLA_ROLE_TABLE(X)                                                                         \
    X(GATEWAY, "gateway", 0)                                                                       \
    X(REPLICA, "replica", 1)                                                                       \
    X(CONTROLLER, "controller", 2)                                                                 \
    X(DISTILLER, "distiller", 3)                                                                   \
    X(ADMIN, "admin", 4)                                                                           \
    X(CLIENT, "client", 5)
enum {
#define DSLA_ROLE_ENUM_(name, text, bit) DSLA_ROLE_##name = 1u << bit,
    DSLA_ROLE_TABLE(DSLA_ROLE_ENUM_)
#undef DSLA_ROLE_ENUM_
};

/* "replica" for DSLA_ROLE_REPLICA; "?" for anything but one role bit. */
const char *dsla_role_name(uint32_t role);
/* 0 when text names no role. */
uint32_t dsla_role_parse(const char *text);

typedef struct {
    uint32_t role;
    char name[DSLA_PROTO_NAME_MAX + 1];
    char public_key[DSLA_CURVE_KEY_LEN + 1];
} dsla_curve_identity_t;

typedef struct {
    char endpoint[DSLA_CURVE_ENDPOINT_MAX];
    char public_key[DSLA_CURVE_KEY_LEN + 1];
} dsla_curve_server_t;

typedef struct {
    dsla_curve_identity_t self;
    char secret_key[DSLA_CURVE_KEY_LEN + 1];
    dsla_curve_identity_t *authorized;
    size_t n_authorized;
    dsla_curve_server_t *servers;
    size_t n_servers;
} dsla_curve_keys_t;

/* DSLA_OK when this libzmq was built with CURVE; else UNSUPPORTED naming the fix. */
dsla_status_t dsla_curve_available(void);
/* Loads a key directory (above). */
dsla_status_t dsla_curve_keys_load(dsla_curve_keys_t **out, const char *dir);
/* A fresh keypair of that role and name, nothing authorized, no servers: for keygen and tests. */
dsla_status_t dsla_curve_keys_new(dsla_curve_keys_t **out, uint32_t role, const char *name);
/* A deep copy. */
dsla_status_t dsla_curve_keys_copy(dsla_curve_keys_t **out, const dsla_curve_keys_t *keys);
dsla_status_t dsla_curve_keys_authorize(dsla_curve_keys_t *k, uint32_t role, const char *name,
                                        const char *public_key);
dsla_status_t dsla_curve_keys_add_server(dsla_curve_keys_t *k, const char *endpoint,
                                         const char *public_key);
/* Writes k's node.key (0600) and node.pub into dir, which must exist; never overwrites. */
dsla_status_t dsla_curve_keys_save(const dsla_curve_keys_t *k, const char *dir);
void dsla_curve_keys_destroy(dsla_curve_keys_t **k);

/* The server key known for endpoint; NULL when none. */
const char *dsla_curve_server_key(const dsla_curve_keys_t *k, const char *endpoint);
/* The identity a client public key (Z85) is authorized as, this process's own included; NULL
 * when it is unknown. */
const dsla_curve_identity_t *dsla_curve_lookup(const dsla_curve_keys_t *k, const char *public_key);

#endif

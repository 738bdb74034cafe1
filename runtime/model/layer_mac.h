/* The keyed MAC of a layer version file: proof that the holder of the layer key (the distiller)
 * wrote it, checked by the controller before it catalogues an announced version and by a replica
 * on the bytes it holds before it adopts one. xxh64 only catches accidents; anyone can compute it.
 *
 * The MAC is HMAC-SHA-512-256 (libsodium crypto_auth) over the whole file, and it lives in the
 * file itself: the safetensors "__metadata__" entry "dsla_mac" holds it as 64 hex digits, which
 * count as 64 '0' digits while the MAC is computed. So the MAC travels with the file through
 * every copy and chunked transfer, with nothing beside it to fetch or lose, and the size and
 * xxh64 that LAYER_READY announces cover the sealed file.
 *
 * The key file (--layer-key-file) holds 64 hex digits (32 bytes) on one line, mode 0600
 * (keyfile.h); `dslactl keygen --layer-key FILE` writes one. Without a key nothing is sealed or
 * checked: layer versions are then unauthenticated (docs/security.md).
 *
 * Contract: reads and writes only the file it is given, which must be a regular file (opened
 * without following a final link); time grows with the file, so actors call it on a worker. */
#ifndef DSLA_MODEL_LAYER_MAC_H
#define DSLA_MODEL_LAYER_MAC_H

#include <stdint.h>

#include "runtime/core/status.h"

#define DSLA_LAYER_KEY_BYTES 32
#define DSLA_LAYER_MAC_BYTES 32
/* The metadata key, and the value a file carries until it is sealed. */
#define DSLA_LAYER_MAC_META "dsla_mac"
#define DSLA_LAYER_MAC_UNSEALED "0000000000000000000000000000000000000000000000000000000000000000"

typedef struct {
    uint8_t bytes[DSLA_LAYER_KEY_BYTES];
} dsla_layer_key_t;

/* Reads a key file; errors name the file and what is wrong (mode, length, not hex). */
dsla_status_t dsla_layer_key_load(const char *path, dsla_layer_key_t *key);
/* Writes a fresh random key to path (0600; never overwrites). */
dsla_status_t dsla_layer_key_generate(const char *path);

/* Seals path in place: its "dsla_mac" metadata, written as DSLA_LAYER_MAC_UNSEALED, becomes the
 * MAC; fsync'd. FORMAT when the file has no such entry. */
dsla_status_t dsla_layer_mac_seal(const dsla_layer_key_t *key, const char *path);
/* PERMISSION_DENIED naming the file when its MAC is missing or does not match key (never the
 * file's contents); IO or FORMAT when it cannot be read as a layer file. */
dsla_status_t dsla_layer_mac_check(const dsla_layer_key_t *key, const char *path);

#endif

/* Keyed MACs of layer version files (layer_mac.h). */
#include "runtime/model/layer_mac.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "runtime/core/keyfile.h"

/* A layer version's header is a few kilobytes of names, shapes and metadata; the bound keeps a
 * hostile length prefix from making this read gigabytes before the MAC is even looked at. */
#define MAC_HEADER_MAX (16u << 20)
#define MAC_CHUNK (1u << 20)
#define MAC_HEX (2 * DSLA_LAYER_MAC_BYTES)
/* The bytes that open the MAC's value in the header's JSON: the writer's compact form. A '"' in
 * a JSON string is always escaped, so these bytes can only be the key itself. */
static const char MAC_OPENING[] = "\"" DSLA_LAYER_MAC_META "\":\"";

static dsla_status_t sodium_ready(void) {
    if (sodium_init() < 0)
        return dsla_error(DSLA_ERR_INTERNAL, "libsodium could not initialise (sodium_init)");
    return DSLA_OK;
}

dsla_status_t dsla_layer_key_load(const char *path, dsla_layer_key_t *key) {
    DSLA_TRY(sodium_ready());
    char text[256];
    size_t len = 0;
    DSLA_TRY(dsla_keyfile_read(path, true, text, sizeof text, &len));
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        text[--len] = '\0';
    size_t got = 0;
    const bool ok =
        len == 2 * DSLA_LAYER_KEY_BYTES &&
        sodium_hex2bin(key->bytes, sizeof key->bytes, text, len, NULL, &got, NULL) == 0 &&
        got == DSLA_LAYER_KEY_BYTES;
    sodium_memzero(text, sizeof text);
    if (!ok)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "layer key %s: expected one line of %d hex digits (%d bytes); "
                          "`dslactl keygen --layer-key FILE` writes one",
                          path, 2 * DSLA_LAYER_KEY_BYTES, DSLA_LAYER_KEY_BYTES);
    return DSLA_OK;
}

dsla_status_t dsla_layer_key_generate(const char *path) {
    DSLA_TRY(sodium_ready());
    uint8_t raw[DSLA_LAYER_KEY_BYTES];
    char text[2 * DSLA_LAYER_KEY_BYTES + 2];
    crypto_auth_hmacsha512256_keygen(raw);
    sodium_bin2hex(text, sizeof text - 1, raw, sizeof raw);
    strcat(text, "\n");
    dsla_status_t st = dsla_keyfile_write(path, true, text);
    sodium_memzero(raw, sizeof raw);
    sodium_memzero(text, sizeof text);
    return st;
}

/* An open layer file: where the MAC's 64 hex digits lie (offset into the file), and the digits. */
typedef struct {
    int fd;
    uint64_t size;
    uint64_t mac_offset; /* 0: the header has no MAC entry */
    char mac_hex[MAC_HEX + 1];
} mac_file_t;

static dsla_status_t read_at(int fd, const char *path, uint64_t offset, void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t got = pread(fd, (char *)buf + done, n - done, (off_t)(offset + done));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0)
            return dsla_error(DSLA_ERR_IO, "%s: cannot read %zu bytes at %llu: %s", path, n,
                              (unsigned long long)offset, got < 0 ? strerror(errno) : "short file");
        done += (size_t)got;
    }
    return DSLA_OK;
}

/* Opens path (regular file, no final link, never blocking) and finds the MAC entry's digits. */
static dsla_status_t mac_open(const char *path, bool writable, mac_file_t *m) {
    memset(m, 0, sizeof *m);
    DSLA_TRY(dsla_keyfile_open(path, writable, &m->fd, &m->size, NULL));
    uint8_t prefix[8];
    if (m->size < sizeof prefix)
        return dsla_error(DSLA_ERR_FORMAT, "%s: %llu bytes, too short for safetensors", path,
                          (unsigned long long)m->size);
    DSLA_TRY(read_at(m->fd, path, 0, prefix, sizeof prefix));
    uint64_t header_len = 0;
    for (int i = 0; i < 8; i++)
        header_len |= (uint64_t)prefix[i] << (8 * i);
    if (header_len > MAC_HEADER_MAX || header_len > m->size - sizeof prefix)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: a header of %llu bytes (the limit is %u and the file's size)", path,
                          (unsigned long long)header_len, MAC_HEADER_MAX);
    char *header = malloc(header_len + 1);
    if (!header) return dsla_error_oom("%s: its header", path);
    dsla_status_t st = read_at(m->fd, path, sizeof prefix, header, header_len);
    header[st == DSLA_OK ? header_len : 0] = '\0';
    const char *at = st == DSLA_OK ? strstr(header, MAC_OPENING) : NULL;
    if (at && strstr(at + 1, MAC_OPENING)) at = NULL; /* two entries: neither counts */
    if (at) {
        const char *digits = at + strlen(MAC_OPENING);
        if ((size_t)(digits - header) + MAC_HEX < header_len && digits[MAC_HEX] == '"' &&
            strspn(digits, "0123456789abcdef") >= MAC_HEX) {
            m->mac_offset = sizeof prefix + (uint64_t)(digits - header);
            memcpy(m->mac_hex, digits, MAC_HEX);
        }
    }
    free(header);
    return st;
}

/* HMAC-SHA-512-256 of the file with the MAC's digits read as '0's. */
static dsla_status_t mac_compute(const dsla_layer_key_t *key, const char *path, const mac_file_t *m,
                                 uint8_t mac[DSLA_LAYER_MAC_BYTES]) {
    uint8_t *buf = malloc(MAC_CHUNK);
    if (!buf) return dsla_error_oom("%s: a read buffer", path);
    crypto_auth_hmacsha512256_state h;
    crypto_auth_hmacsha512256_init(&h, key->bytes, sizeof key->bytes);
    dsla_status_t st = DSLA_OK;
    for (uint64_t off = 0; st == DSLA_OK && off < m->size;) {
        size_t n = m->size - off < MAC_CHUNK ? (size_t)(m->size - off) : MAC_CHUNK;
        st = read_at(m->fd, path, off, buf, n);
        for (uint64_t i = m->mac_offset; st == DSLA_OK && i < m->mac_offset + MAC_HEX; i++)
            if (i >= off && i < off + n) buf[i - off] = '0';
        if (st == DSLA_OK) crypto_auth_hmacsha512256_update(&h, buf, n);
        off += n;
    }
    crypto_auth_hmacsha512256_final(&h, mac);
    sodium_memzero(&h, sizeof h);
    free(buf);
    return st;
}

dsla_status_t dsla_layer_mac_seal(const dsla_layer_key_t *key, const char *path) {
    DSLA_TRY(sodium_ready());
    mac_file_t m;
    dsla_status_t st = mac_open(path, true, &m);
    if (st == DSLA_OK && (!m.mac_offset || strcmp(m.mac_hex, DSLA_LAYER_MAC_UNSEALED) != 0))
        st = dsla_error(DSLA_ERR_FORMAT, "%s: no unsealed \"%s\" metadata to write the MAC into",
                        path, DSLA_LAYER_MAC_META);
    uint8_t mac[DSLA_LAYER_MAC_BYTES];
    if (st == DSLA_OK) st = mac_compute(key, path, &m, mac);
    if (st == DSLA_OK) {
        char hex[MAC_HEX + 1];
        sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
        if (pwrite(m.fd, hex, MAC_HEX, (off_t)m.mac_offset) != MAC_HEX || fsync(m.fd) != 0)
            st = dsla_error(DSLA_ERR_IO, "%s: cannot write its MAC: %s", path, strerror(errno));
    }
    if (m.fd >= 0) close(m.fd);
    return st;
}

dsla_status_t dsla_layer_mac_check(const dsla_layer_key_t *key, const char *path) {
    DSLA_TRY(sodium_ready());
    mac_file_t m;
    dsla_status_t st = mac_open(path, false, &m);
    uint8_t want[DSLA_LAYER_MAC_BYTES], got[DSLA_LAYER_MAC_BYTES];
    size_t len = 0;
    if (st == DSLA_OK &&
        (!m.mac_offset || strcmp(m.mac_hex, DSLA_LAYER_MAC_UNSEALED) == 0 ||
         sodium_hex2bin(want, sizeof want, m.mac_hex, MAC_HEX, NULL, &len, NULL) != 0 ||
         len != sizeof want))
        st = dsla_error(DSLA_ERR_PERMISSION_DENIED,
                        "%s: no layer MAC (\"%s\" metadata), but a layer key is configured: only "
                        "versions written with that --layer-key-file are accepted",
                        path, DSLA_LAYER_MAC_META);
    if (st == DSLA_OK) st = mac_compute(key, path, &m, got);
    if (st == DSLA_OK && crypto_verify_32(want, got) != 0)
        st = dsla_error(DSLA_ERR_PERMISSION_DENIED,
                        "%s: its layer MAC does not match this --layer-key-file (written with "
                        "another key, or altered since)",
                        path);
    if (m.fd >= 0) close(m.fd);
    return st;
}

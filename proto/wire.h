/* proto's private msgpack helpers: a bounds-checking walk that every frame passes before msgpack-c
 * sees it, and small readers for map fields.
 *
 * msgpack-c allocates the elements of an array or map as soon as it reads the count, so a five-byte
 * frame claiming 2^32 entries would ask for hundreds of gigabytes. dsla_wire_unpack therefore walks
 * the bytes first and refuses any count larger than the bytes left could hold, any depth beyond
 * DSLA_WIRE_DEPTH_MAX and any trailing byte. Only the sources of proto include this header. */
#ifndef DSLA_PROTO_WIRE_H
#define DSLA_PROTO_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "proto/proto.h"

/* Deeper than any body we define and below msgpack-c's own parse stack (32). */
#define DSLA_WIRE_DEPTH_MAX 16

/* The end of the single msgpack object starting at p, or NULL when it runs past end, nests deeper
 * than DSLA_WIRE_DEPTH_MAX, claims more elements than bytes remain, or uses the reserved byte. */
const char *dsla_wire_skip(const char *p, const char *end, int depth);

/* Validates [data, data+len) as exactly one object, then unpacks it into result (initialised here;
 * the caller destroys it with msgpack_unpacked_destroy on success). what names the frame in the
 * error message. */
dsla_status_t dsla_wire_unpack(const char *data, size_t len, msgpack_unpacked *result,
                               const char *what);

/* True when key (a str object) equals name. */
bool dsla_wire_key_is(const msgpack_object *key, const char *name);

/* Field readers: a wrong type or range is DSLA_ERR_FORMAT naming what.field. */
dsla_status_t dsla_wire_get_u64(const msgpack_object *v, uint64_t *out, const char *what,
                                const char *field);
dsla_status_t dsla_wire_get_u32(const msgpack_object *v, uint32_t *out, const char *what,
                                const char *field);
/* Copies a str of at most max bytes, without NUL bytes, into out[max + 1]. */
dsla_status_t dsla_wire_get_str(const msgpack_object *v, char *out, size_t max, const char *what,
                                const char *field);
/* Copies a str of at most max bytes that may hold NUL bytes (text a model produced: a byte token
 * can be 0x00) into out[max + 1]; its length goes to *len. */
dsla_status_t dsla_wire_get_bytes(const msgpack_object *v, char *out, size_t max, size_t *len,
                                  const char *what, const char *field);

/* An integer in [lo, hi] (either msgpack integer type). */
dsla_status_t dsla_wire_get_i64(const msgpack_object *v, int64_t lo, int64_t hi, int64_t *out,
                                const char *what, const char *field);
/* A finite number: any msgpack integer or float. */
dsla_status_t dsla_wire_get_f64(const msgpack_object *v, double *out, const char *what,
                                const char *field);
dsla_status_t dsla_wire_get_float(const msgpack_object *v, float *out, const char *what,
                                  const char *field);
dsla_status_t dsla_wire_get_bool(const msgpack_object *v, bool *out, const char *what,
                                 const char *field);
/* A malloc'd, NUL-terminated copy of a str of at most max bytes (NUL bytes refused); len_out may
 * be NULL. */
dsla_status_t dsla_wire_dup_str(const msgpack_object *v, size_t max, char **out, size_t *len_out,
                                const char *what, const char *field);

/* Tables of plain numeric fields of a body, for dsla_wire_get_listed. */
typedef struct {
    const char *key;
    uint32_t *dst;
} dsla_wire_u32_field_t;
typedef struct {
    const char *key;
    double *dst;
} dsla_wire_f64_field_t;

/* Reads v into the field of the tables that key names (a u32 or a finite number); DSLA_OK and
 * nothing read when it names none of them. */
dsla_status_t dsla_wire_get_listed(const msgpack_object *key, const msgpack_object *v,
                                   const dsla_wire_u32_field_t *u32s, size_t n_u32,
                                   const dsla_wire_f64_field_t *f64s, size_t n_f64,
                                   const char *what);

/* Packs a str key; returns msgpack's result. */
int dsla_wire_pack_key(msgpack_packer *pk, const char *key);
/* Packs key and value; return msgpack's results ORed. */
int dsla_wire_pack_u64_field(msgpack_packer *pk, const char *key, uint64_t v);
int dsla_wire_pack_str_field(msgpack_packer *pk, const char *key, const char *v);
int dsla_wire_pack_f64_field(msgpack_packer *pk, const char *key, double v);
/* Starts a body: an empty sbuffer and a packer writing into it (dsla_wire_finish ends it). */
void dsla_wire_packer_open(msgpack_sbuffer *sbuf, msgpack_packer *pk);
/* Unpacks a body that must be a map; the caller destroys *u on success. */
dsla_status_t dsla_wire_body_map(const void *body, size_t len, msgpack_unpacked *u,
                                 const char *what);
/* Hands the packed bytes of sbuf to out (msgpack_sbuffer allocates with malloc); pack_rc is the OR
 * of the msgpack_pack_* results, non-zero when an allocation failed on the way. */
dsla_status_t dsla_wire_finish(msgpack_sbuffer *sbuf, int pack_rc, dsla_proto_buf_t *out,
                               const char *what);

#endif

/* The controller's side of the layer broadcast (DESIGN.md section 7, docs/broadcast.md), as a
 * state machine: one session moves one layer version file from its owner (rank 0) to receivers
 * (ranks 1..n) over a communicator, and ends with each receiver's outcome.
 *
 *   start -> BCAST_OPEN to the owner -> its BCAST_ID -> BCAST_JOIN to every receiver ->
 *   a BCAST_ACK or BCAST_NACK from every rank, or the deadline -> ops.done(outcome)
 *
 * A session only fills layer caches: a receiver that ACKed holds the verified file under the
 * chunked transfer's name (transfer.h), so that the SET_PLAN the controller sends next finds it and
 * only loads it; a receiver that did not fetches the file in chunks as before. No plan changes
 * here, so a failure anywhere (an owner or receiver that dies, NACKs or stays silent) leaves every
 * replica's plan as it was and costs only the chunked transfer's time.
 *
 * Communicators are kept per topology: the owner and receivers in rank order. A session over the
 * same members as the last one, with no failure and no death of a member since, reuses its
 * communicator (fresh false, same key); any other makes a fresh one under a new key.
 *
 * Contract: one thread, never blocks; messages leave only through ops.send, time comes only from
 * the callers' now. The caller checks that a BCAST_ID or reply comes from a peer that may send it
 * (a replica or the distiller); the core checks that it is the session's member of that rank and
 * ignores everything else. One session at a time. */
#ifndef DSLA_ACTORS_BCAST_CORE_H
#define DSLA_ACTORS_BCAST_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "runtime/core/status.h"

typedef enum {
    DSLA_BCAST_PENDING = 0,
    DSLA_BCAST_ACKED, /* the owner sent the file; a receiver holds it verified */
    DSLA_BCAST_FAILED,
} dsla_bcast_rank_state_t;

/* One session: what was sent where, and each rank's state; ops.done gets it when it ends. */
typedef struct {
    uint64_t session;
    uint64_t comm;
    bool fresh;
    int32_t layer;
    uint32_t version;
    uint64_t size, xxh64;
    char path[DSLA_PROTO_PATH_MAX + 1]; /* the owner's file */
    uint32_t nranks;                    /* rank 0 is the owner */
    char names[DSLA_PROTO_BCAST_RANKS_MAX][DSLA_PROTO_NAME_MAX + 1];
    dsla_bcast_rank_state_t state[DSLA_PROTO_BCAST_RANKS_MAX];
    char reason[DSLA_PROTO_BCAST_RANKS_MAX][DSLA_PROTO_MESSAGE_MAX + 1]; /* a FAILED rank's */
} dsla_bcast_session_t;

typedef struct {
    /* One encoded message to dst; the envelope's id is the session. */
    dsla_status_t (*send)(void *user, const char *dst, uint32_t type, uint64_t id, const void *body,
                          size_t len);
    /* The session ended; s is borrowed for the call. */
    void (*done)(void *user, const dsla_bcast_session_t *s);
    void *user;
} dsla_bcast_core_ops_t;

typedef struct {
    uint32_t id_timeout_ms;       /* for the owner's BCAST_ID */
    uint32_t transfer_timeout_ms; /* from the BCAST_ID to the last rank's answer */
} dsla_bcast_core_config_t;

typedef struct dsla_bcast_core dsla_bcast_core_t;

dsla_status_t dsla_bcast_core_create(dsla_bcast_core_t **out, const dsla_bcast_core_config_t *cfg,
                                     const dsla_bcast_core_ops_t *ops);
/* Ends a session in progress without calling done. */
void dsla_bcast_core_destroy(dsla_bcast_core_t **c);

/* A layer version file to broadcast, as announced. */
typedef struct {
    int32_t layer;
    uint32_t version;
    uint64_t size, xxh64;
    const char *path; /* the owner's */
} dsla_bcast_file_t;

/* Starts a session from owner to the n receivers (1..DSLA_PROTO_BCAST_RANKS_MAX - 1 distinct
 * names, none the owner's); its number goes to *session. UNAVAILABLE while one is in progress,
 * INVALID_ARGUMENT for a bad set of names or file (nothing sent). A failed send of the OPEN ends
 * the session at once (done called before this returns). */
dsla_status_t dsla_bcast_core_start(dsla_bcast_core_t *c, const dsla_bcast_file_t *file,
                                    const char *owner, const char *const *receivers, uint32_t n,
                                    uint64_t now_ms, uint64_t *session);
/* A BCAST_ID (from `from`); an undecodable body is returned for the caller's ERROR reply. */
dsla_status_t dsla_bcast_core_on_id(dsla_bcast_core_t *c, const char *from, const void *body,
                                    size_t len, uint64_t now_ms);
/* A BCAST_ACK (nack false) or BCAST_NACK. */
dsla_status_t dsla_bcast_core_on_reply(dsla_bcast_core_t *c, const char *from, bool nack,
                                       const void *body, size_t len, uint64_t now_ms);
/* A peer died (heartbeats): its rank fails (the owner's: every rank's), and communicators it was a
 * member of are not reused. */
void dsla_bcast_core_on_peer_dead(dsla_bcast_core_t *c, const char *name, uint64_t now_ms);
/* Time passes: a session past its deadline ends, its silent ranks failed. */
void dsla_bcast_core_on_tick(dsla_bcast_core_t *c, uint64_t now_ms);
/* Whether a session is in progress. */
bool dsla_bcast_core_busy(const dsla_bcast_core_t *c);

#endif

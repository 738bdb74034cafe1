/* The layer broadcast's owner and receiver sides (DESIGN.md section 7, docs/broadcast.md), as a
 * state machine over a transport.
 *
 * The owner (rank 0; the process that holds the layer version file) answers a BCAST_OPEN with a
 * BCAST_ID (a fresh communicator's unique id, made on a worker, or none to reuse the one it holds
 * under that key), then a worker joins the communicator and broadcasts the file in slices, hashing
 * what it sent: BCAST_ACK when the bytes had the announced size and xxh64, BCAST_NACK otherwise.
 *
 * A receiver answers a BCAST_JOIN by handing a worker the job of joining the communicator,
 * receiving the slices and writing them into its layer cache through the chunked transfer's writer
 * (transfer.h: a ".part" hashed as it grows, fsync'd, checked against the announced size and
 * xxh64, renamed), so that the file appears under its cache name only whole and verified:
 * BCAST_ACK then, BCAST_NACK with the reason otherwise (the .part removed). The SET_PLAN that
 * follows finds the file cached and adopts it at a step boundary (serving_plan.h); a receiver that
 * NACKed fetches it in chunks.
 *
 * A communicator is held between sessions under the controller's key and dropped (on a worker)
 * when a fresh one is asked for or a session on it failed. One session at a time: another OPEN or
 * JOIN meanwhile is NACKed UNAVAILABLE.
 *
 * Contract: on the actor's thread; messages leave only through ops.send, jobs go to the shell
 * through ops.run and come back through dsla_bcast_peer_done. The shell checks that OPEN and JOIN
 * come from its controller. The transport's calls block and run only inside
 * dsla_bcast_job_run. */
#ifndef DSLA_ACTORS_BCAST_PEER_H
#define DSLA_ACTORS_BCAST_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "runtime/core/status.h"

/* The bytes' way between the ranks: NCCL (bcast_nccl.h) or a test's fake. Every call may block
 * (up to timeout_ms) and runs on a worker. */
typedef struct {
    /* A fresh communicator's unique id, at most DSLA_PROTO_BCAST_ID_MAX bytes. */
    dsla_status_t (*unique_id)(void *user, uint8_t *id, uint32_t *len);
    /* Joins the communicator of id as rank of nranks; returns when every rank has. */
    dsla_status_t (*comm_create)(void *user, const uint8_t *id, uint32_t len, uint32_t rank,
                                 uint32_t nranks, uint32_t timeout_ms, void **comm);
    /* len bytes of buf from rank 0 to every rank: read on rank 0, written on the others. */
    dsla_status_t (*broadcast)(void *user, void *comm, void *buf, size_t len, uint32_t timeout_ms);
    void (*comm_destroy)(void *user, void *comm);
    void *user;
} dsla_bcast_transport_t;

typedef enum {
    DSLA_BCAST_JOB_ID,      /* the owner: a fresh unique id */
    DSLA_BCAST_JOB_SEND,    /* the owner: join and send the file */
    DSLA_BCAST_JOB_RECEIVE, /* a receiver: join, receive, verify, write into the cache */
} dsla_bcast_job_kind_t;

/* A job for a worker: filled by the state machine, run by dsla_bcast_job_run anywhere (it touches
 * nothing else), handed back with dsla_bcast_peer_done. */
typedef struct {
    dsla_bcast_job_kind_t kind;
    dsla_proto_bcast_t msg;             /* the OPEN or JOIN */
    char path[DSLA_PROTO_PATH_MAX + 1]; /* the file sent (OPEN's) or the cache path written */
    const dsla_bcast_transport_t *transport;
    uint32_t timeout_ms;
    size_t slice;
    void *comm;     /* the communicator to use (NULL: make it from msg.id); the result's */
    void *old_comm; /* one to drop first */
    uint8_t id[DSLA_PROTO_BCAST_ID_MAX]; /* JOB_ID's result */
    uint32_t id_len;
    dsla_status_t status;
    char message[DSLA_PROTO_MESSAGE_MAX + 1];
} dsla_bcast_job_t;

void dsla_bcast_job_run(dsla_bcast_job_t *job);

typedef struct {
    dsla_status_t (*send)(void *user, const char *dst, uint32_t type, uint64_t id, const void *body,
                          size_t len);
    /* Runs dsla_bcast_job_run(job) off the loop and gives job back to dsla_bcast_peer_done. */
    dsla_status_t (*run)(void *user, dsla_bcast_job_t *job);
    void *user;
} dsla_bcast_peer_ops_t;

typedef struct {
    const char *layer_cache; /* a receiver's; NULL: every JOIN is NACKed */
    const char *owner_dir;   /* an owner's: OPENs name regular files inside it; NULL: none taken */
    const dsla_bcast_transport_t *transport; /* NULL: every OPEN and JOIN is NACKed */
    uint32_t timeout_ms;                     /* for joining, and for each slice */
    size_t slice;                            /* bytes per broadcast call, at least 1 */
} dsla_bcast_peer_config_t;

typedef struct dsla_bcast_peer dsla_bcast_peer_t;

dsla_status_t dsla_bcast_peer_create(dsla_bcast_peer_t **out, const dsla_bcast_peer_config_t *cfg,
                                     const dsla_bcast_peer_ops_t *ops);
/* Drops the held communicator; a job still out is the shell's to cancel first. */
void dsla_bcast_peer_destroy(dsla_bcast_peer_t **p);

/* A BCAST_OPEN or BCAST_JOIN from `from` (the caller checked it is the controller): a body that
 * does not decode is returned for the caller's ERROR; anything else is answered. */
dsla_status_t dsla_bcast_peer_on_open(dsla_bcast_peer_t *p, const char *from, const void *body,
                                      size_t len);
dsla_status_t dsla_bcast_peer_on_join(dsla_bcast_peer_t *p, const char *from, const void *body,
                                      size_t len);
/* A job back (cancelled: the shell is stopping; nothing is sent, the job is freed). */
void dsla_bcast_peer_done(dsla_bcast_peer_t *p, dsla_bcast_job_t *job, bool cancelled);
/* Whether a job is out, and the key of the communicator held (0: none). Tests. */
bool dsla_bcast_peer_busy(const dsla_bcast_peer_t *p);
uint64_t dsla_bcast_peer_comm(const dsla_bcast_peer_t *p);

#endif

/* A bound on the TCP connections one ZeroMQ socket accepts (issue 10: 1,100 idle connections to a
 * mailbox used up the process's descriptors; libzmq's listener then retries its failing accept in
 * a loop, and so did libmicrohttpd's). libzmq has no such option, so the guard watches the
 * socket's monitor: each accepted connection is counted until it closes, and one accepted beyond
 * the limit is shut down at once (libzmq then closes it), so that connections from strangers
 * cannot take the descriptors the rest of the process needs.
 *
 * Contract: used by the one thread that owns the socket (an actor's loop); drain whenever the
 * returned descriptor (the monitor's ZMQ_FD, edge-triggered) is readable. */
#ifndef DSLA_ACTOR_CONN_GUARD_H
#define DSLA_ACTOR_CONN_GUARD_H

#include "runtime/core/status.h"

/* Descriptors the rest of a process keeps (model files, its own sockets, logs); each bound
 * mailbox may take a quarter of what its open-files limit leaves beyond them. */
#define DSLA_CONN_GUARD_FDS_KEPT 128
#define DSLA_CONN_GUARD_MIN 16

typedef struct dsla_conn_guard dsla_conn_guard_t;

/* Connections one mailbox may hold under this process's RLIMIT_NOFILE. */
unsigned dsla_conn_guard_limit(void);

/* Monitors sock (a bound socket of zctx) under name (for the log); *fd is the descriptor to poll.
 */
dsla_status_t dsla_conn_guard_open(dsla_conn_guard_t **out, void *zctx, void *sock,
                                   const char *name, unsigned limit, int *fd);
/* Reads every pending event, shedding connections beyond the limit. */
void dsla_conn_guard_drain(dsla_conn_guard_t *g);
/* Connections counted open now. */
unsigned dsla_conn_guard_open_count(const dsla_conn_guard_t *g);
void dsla_conn_guard_close(dsla_conn_guard_t **g);

#endif

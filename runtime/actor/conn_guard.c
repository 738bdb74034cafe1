/* The mailbox connection bound (conn_guard.h). */
#include "runtime/actor/conn_guard.h"

#include <netinet/in.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <zmq.h>

#include "runtime/core/log.h"

struct dsla_conn_guard {
    void *sock; /* the socket watched */
    void *mon;  /* the PAIR end of the monitor */
    char name[64];
    unsigned limit;
    int *fds; /* the accepted connections' descriptors, unordered */
    unsigned n, cap;
    unsigned long long shed;
    dsla_log_limit_t log;
};

static atomic_uint monitors;

unsigned dsla_conn_guard_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return UINT32_MAX;
    rlim_t left =
        rl.rlim_cur > DSLA_CONN_GUARD_FDS_KEPT ? rl.rlim_cur - DSLA_CONN_GUARD_FDS_KEPT : 0;
    rlim_t limit = left / 4;
    if (limit < DSLA_CONN_GUARD_MIN) limit = DSLA_CONN_GUARD_MIN;
    return limit > UINT32_MAX ? UINT32_MAX : (unsigned)limit;
}

dsla_status_t dsla_conn_guard_open(dsla_conn_guard_t **out, void *zctx, void *sock,
                                   const char *name, unsigned limit, int *fd) {
    *out = NULL;
    dsla_conn_guard_t *g = calloc(1, sizeof *g);
    if (!g) return dsla_error_oom("connection guard");
    snprintf(g->name, sizeof g->name, "%s", name);
    g->limit = limit;
    g->sock = sock;
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://dsla-conn-guard-%u", atomic_fetch_add(&monitors, 1));
    int linger = 0;
    size_t fd_len = sizeof *fd;
    if (zmq_socket_monitor(sock, ep,
                           ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CLOSED) != 0 ||
        !(g->mon = zmq_socket(zctx, ZMQ_PAIR)) ||
        zmq_setsockopt(g->mon, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(g->mon, ep) != 0 || zmq_getsockopt(g->mon, ZMQ_FD, fd, &fd_len) != 0) {
        dsla_status_t st = dsla_error(DSLA_ERR_INTERNAL, "actor %s: the connection monitor: %s",
                                      name, zmq_strerror(zmq_errno()));
        dsla_conn_guard_close(&g);
        return st;
    }
    *out = g;
    return DSLA_OK;
}

static void forget(dsla_conn_guard_t *g, int fd) {
    for (unsigned i = 0; i < g->n; i++)
        if (g->fds[i] == fd) {
            g->fds[i] = g->fds[--g->n];
            return;
        }
}

/* Shuts fd down if it still is a connection accepted on the port of endpoint (the monitor's event
 * may come after libzmq closed it and the number went to another socket). */
static void shed(dsla_conn_guard_t *g, int fd, const char *endpoint) {
    const char *colon = strrchr(endpoint, ':');
    long port = colon ? strtol(colon + 1, NULL, 10) : -1;
    struct sockaddr_storage local, peer;
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (getsockname(fd, (struct sockaddr *)&local, &ll) != 0 ||
        getpeername(fd, (struct sockaddr *)&peer, &pl) != 0)
        return;
    const long lport = local.ss_family == AF_INET6
                           ? ntohs(((struct sockaddr_in6 *)&local)->sin6_port)
                           : ntohs(((struct sockaddr_in *)&local)->sin_port);
    if (lport != port) return;
    shutdown(fd, SHUT_RDWR);
    g->shed++;
    DSLA_LOG_LIMITED(&g->log, DSLA_LOG_WARN,
                     "actor %s: %u connections open, the limit for this process's open files: "
                     "%llu closed at once so far",
                     g->name, g->limit, g->shed);
}

void dsla_conn_guard_drain(dsla_conn_guard_t *g) {
    for (;;) {
        zmq_msg_t head, where;
        zmq_msg_init(&head);
        if (zmq_msg_recv(&head, g->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&head);
            return;
        }
        zmq_msg_init(&where);
        bool two = zmq_msg_more(&head) && zmq_msg_recv(&where, g->mon, ZMQ_DONTWAIT) >= 0;
        if (zmq_msg_size(&head) >= 6) {
            uint16_t event;
            uint32_t value;
            memcpy(&event, zmq_msg_data(&head), 2);
            memcpy(&value, (const char *)zmq_msg_data(&head) + 2, 4);
            char endpoint[256] = "";
            if (two) {
                size_t n = zmq_msg_size(&where) < sizeof endpoint - 1 ? zmq_msg_size(&where)
                                                                      : sizeof endpoint - 1;
                memcpy(endpoint, zmq_msg_data(&where), n);
                endpoint[n] = '\0';
            }
            const int fd = (int)value;
            if (event == ZMQ_EVENT_ACCEPTED) {
                if (g->n >= g->limit) {
                    shed(g, fd, endpoint);
                } else {
                    if (g->n == g->cap) {
                        unsigned cap = g->cap ? 2 * g->cap : 64;
                        int *grown = realloc(g->fds, cap * sizeof *grown);
                        if (grown) {
                            g->fds = grown;
                            g->cap = cap;
                        }
                    }
                    if (g->n < g->cap) g->fds[g->n++] = fd;
                }
            } else {
                forget(g, fd);
            }
        }
        zmq_msg_close(&where);
        zmq_msg_close(&head);
    }
}

unsigned dsla_conn_guard_open_count(const dsla_conn_guard_t *g) {
    return g->n;
}

void dsla_conn_guard_close(dsla_conn_guard_t **gp) {
    if (!gp || !*gp) return;
    dsla_conn_guard_t *g = *gp;
    /* the monitor stops first: a mailbox closed while still monitored was not released (a server
     * restarted on its endpoint was never reached again, test_actor) */
    if (g->sock) zmq_socket_monitor(g->sock, NULL, 0);
    if (g->mon) zmq_close(g->mon);
    free(g->fds);
    free(g);
    *gp = NULL;
}

/* A loopback TCP proxy for the fault soak (test_soak.c) that corrupts a layer chunk in transfer: a
 * replica's --controller points at it, and it forwards each connection to the controller's
 * mailbox. Bytes from the replica pass untouched; bytes from the controller are read as ZMTP 3
 * (a 64-byte greeting, then frames: a flags byte, a 1- or 8-byte size, the body), and once armed,
 * the next message frame that decodes as a LAYER_CHUNK envelope has its last byte flipped, which
 * is the chunk's last data byte (the envelope's body and the chunk's bytes both come last). The
 * frame is otherwise whole, so the replica sees a well-formed chunk whose file does not hash as
 * announced.
 *
 * One acceptor thread and two pump threads per connection (joined when the next connection comes,
 * or at stop); a connection whose upstream cannot be reached (the controller killed) is closed at
 * once. Header-only (static inline) because each test
 * is its own executable. Nothing here talks to anything but 127.0.0.1. */
#ifndef DSLA_TESTS_CHUNK_PROXY_H
#define DSLA_TESTS_CHUNK_PROXY_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto/proto.h"

enum {
    CHUNK_PROXY_CONNS = 64,    /* connections open at once; a closed one's slot is reused */
    CHUNK_PROXY_GREETING = 64, /* ZMTP 3's greeting, each way */
    CHUNK_PROXY_FLAG_LONG = 2, /* an 8-byte size follows the flags */
    CHUNK_PROXY_FLAG_COMMAND = 4,
};

typedef struct chunk_proxy chunk_proxy_t;

typedef struct {
    chunk_proxy_t *proxy;
    int client, server; /* the replica's connection, and ours to the controller */
    pthread_t up, down;
    bool used;
    atomic_int pumps_done; /* 2: both threads have ended, the slot may be reclaimed */
} chunk_proxy_conn_t;

struct chunk_proxy {
    int listen_fd, port, upstream_port;
    pthread_t acceptor;
    atomic_bool stop;
    atomic_int armed;   /* LAYER_CHUNKs still to corrupt */
    atomic_int flipped; /* LAYER_CHUNKs corrupted so far */
    atomic_long chunks; /* LAYER_CHUNKs seen */
    pthread_mutex_t mu;
    chunk_proxy_conn_t conns[CHUNK_PROXY_CONNS];
};

static inline bool chunk_proxy_read(int fd, void *buf, size_t n) {
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0) return false;
        got += (size_t)r;
    }
    return true;
}

static inline bool chunk_proxy_write(int fd, const void *buf, size_t n) {
    for (size_t put = 0; put < n;) {
        ssize_t w = send(fd, (const char *)buf + put, n - put, MSG_NOSIGNAL);
        if (w <= 0) return false;
        put += (size_t)w;
    }
    return true;
}

/* Ends both directions of c: each pump's read then fails. */
static inline void chunk_proxy_hang_up(chunk_proxy_conn_t *c) {
    shutdown(c->client, SHUT_RDWR);
    shutdown(c->server, SHUT_RDWR);
}

/* Replica to controller: bytes as they come. */
static inline void *chunk_proxy_up(void *arg) {
    chunk_proxy_conn_t *c = arg;
    char buf[16384];
    for (;;) {
        ssize_t r = read(c->client, buf, sizeof buf);
        if (r <= 0 || !chunk_proxy_write(c->server, buf, (size_t)r)) break;
    }
    chunk_proxy_hang_up(c);
    atomic_fetch_add(&c->pumps_done, 1);
    return NULL;
}

/* Controller to replica: the greeting as it comes (each side sends the rest of its own only after
 * the peer's first bytes), then whole frames, a LAYER_CHUNK corrupted when armed. */
static inline void *chunk_proxy_down(void *arg) {
    chunk_proxy_conn_t *c = arg;
    chunk_proxy_t *p = c->proxy;
    char head[9];
    for (size_t passed = 0; passed < CHUNK_PROXY_GREETING;) {
        ssize_t r = read(c->server, head, 1);
        if (r <= 0 || !chunk_proxy_write(c->client, head, 1)) goto out;
        passed++;
    }
    for (;;) {
        if (!chunk_proxy_read(c->server, head, 1)) break;
        const bool is_long = head[0] & CHUNK_PROXY_FLAG_LONG;
        const size_t head_len = is_long ? 9 : 2;
        if (!chunk_proxy_read(c->server, head + 1, head_len - 1)) break;
        uint64_t size = 0;
        for (size_t i = 1; i < head_len; i++)
            size = size << 8 | (uint8_t)head[i];
        if (size > DSLA_PROTO_FRAME_MAX + 1024) break; /* not a frame of ours */
        char *body = malloc(size ? size : 1);
        if (!body || !chunk_proxy_read(c->server, body, size)) {
            free(body);
            break;
        }
        dsla_proto_envelope_t env;
        if (!(head[0] & CHUNK_PROXY_FLAG_COMMAND) && size > 0 &&
            dsla_proto_envelope_decode(body, size, &env) == DSLA_OK &&
            env.type == DSLA_MSG_LAYER_CHUNK) {
            atomic_fetch_add(&p->chunks, 1);
            int left = atomic_load(&p->armed);
            while (left > 0 && !atomic_compare_exchange_weak(&p->armed, &left, left - 1)) {
            }
            if (left > 0) {
                body[size - 1] ^= 0x01;
                atomic_fetch_add(&p->flipped, 1);
            }
        }
        const bool ok = chunk_proxy_write(c->client, head, head_len) &&
                        chunk_proxy_write(c->client, body, size);
        free(body);
        if (!ok) break;
    }
out:
    chunk_proxy_hang_up(c);
    atomic_fetch_add(&c->pumps_done, 1);
    return NULL;
}

/* Joins a used slot's threads and closes its sockets. */
static inline void chunk_proxy_reclaim(chunk_proxy_conn_t *c) {
    pthread_join(c->up, NULL);
    pthread_join(c->down, NULL);
    close(c->client);
    close(c->server);
    c->used = false;
}

/* A free slot, reclaiming those whose connection has ended; NULL when all are open. */
static inline chunk_proxy_conn_t *chunk_proxy_slot(chunk_proxy_t *p) {
    chunk_proxy_conn_t *free_slot = NULL;
    for (int i = 0; i < CHUNK_PROXY_CONNS; i++) {
        chunk_proxy_conn_t *c = &p->conns[i];
        if (c->used && atomic_load(&c->pumps_done) == 2) chunk_proxy_reclaim(c);
        if (!c->used && !free_slot) free_slot = c;
    }
    return free_slot;
}

static inline void *chunk_proxy_accept(void *arg) {
    chunk_proxy_t *p = arg;
    while (!atomic_load(&p->stop)) {
        int client = accept(p->listen_fd, NULL, NULL);
        if (client < 0) continue; /* stopping (the listener shut down), or a transient error */
        int server = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)p->upstream_port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        pthread_mutex_lock(&p->mu);
        chunk_proxy_conn_t *c = chunk_proxy_slot(p);
        if (atomic_load(&p->stop) || !c || server < 0 ||
            connect(server, (struct sockaddr *)&a, sizeof a) != 0) {
            pthread_mutex_unlock(&p->mu);
            close(client); /* the controller is down: the replica retries, as it would */
            if (server >= 0) close(server);
            continue;
        }
        c->proxy = p;
        c->client = client;
        c->server = server;
        c->used = true;
        atomic_store(&c->pumps_done, 0);
        pthread_create(&c->up, NULL, chunk_proxy_up, c);
        pthread_create(&c->down, NULL, chunk_proxy_down, c);
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

/* Listens on a loopback port of its own (p->port) and forwards to upstream_port. */
static inline void chunk_proxy_start(chunk_proxy_t *p, int upstream_port) {
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->mu, NULL);
    p->upstream_port = upstream_port;
    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_true(p->listen_fd >= 0);
    assert_int_equal(bind(p->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(p->listen_fd, 16), 0);
    assert_int_equal(getsockname(p->listen_fd, (struct sockaddr *)&a, &len), 0);
    p->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&p->acceptor, NULL, chunk_proxy_accept, p), 0);
}

/* The next n LAYER_CHUNKs through the proxy get one byte flipped. */
static inline void chunk_proxy_arm(chunk_proxy_t *p, int n) {
    atomic_store(&p->armed, n);
}

/* Closes the listener and every connection, and joins the threads. */
static inline void chunk_proxy_stop(chunk_proxy_t *p) {
    atomic_store(&p->stop, true);
    shutdown(p->listen_fd, SHUT_RDWR);
    pthread_join(p->acceptor, NULL);
    close(p->listen_fd);
    for (int i = 0; i < CHUNK_PROXY_CONNS; i++)
        if (p->conns[i].used) {
            chunk_proxy_hang_up(&p->conns[i]);
            chunk_proxy_reclaim(&p->conns[i]);
        }
    pthread_mutex_destroy(&p->mu);
}

#endif

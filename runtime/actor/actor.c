/* Actor threads: libuv loop, ZeroMQ ROUTER mailbox and DEALER peers, dispatch and heartbeats. */
#include "runtime/actor/actor.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>
#include <zmq.h>

#include "runtime/actor/conn_guard.h"
#include "runtime/core/clock.h"
#include "runtime/core/log.h"

/* Messages taken from the sockets before the loop gets a turn, so that heartbeats and timers still
 * run while a flood arrives. */
#define DSLA_ACTOR_DRAIN_BATCH 256
/* A start-up failure's message, carried from the actor's thread to its creator's. */
#define DSLA_ACTOR_START_ERROR_MAX 512

/* RFC 27's fixed endpoint of a context's ZAP handler. */
#define DSLA_ACTOR_ZAP_ENDPOINT "inproc://zeromq.zap.01"
/* Frames of a ZAP request: version, request id, domain, address, routing id, mechanism and, for
 * CURVE, one credential (the client's public key); more are refused. */
#define DSLA_ACTOR_ZAP_FRAMES 7
#define DSLA_ACTOR_ZAP_DOMAIN "dsla"

struct dsla_actor_ctx {
    void *zmq;
    dsla_curve_keys_t *keys; /* NULL: no CURVE */
    bool allow_insecure;
    void *zap; /* the ZAP handler's REP socket, used only by its thread once started */
    pthread_t zap_thread;
    bool zap_running;
    dsla_log_limit_t zap_warn;
};

typedef enum { PEER_UNKNOWN, PEER_ALIVE, PEER_DEAD } peer_state_t;

/* A peer this actor connected to (sock set). */
typedef struct {
    bool used;
    char name[DSLA_PROTO_NAME_MAX + 1];
    char endpoint[DSLA_ACTOR_ENDPOINT_MAX];
    void *sock;
    uv_poll_t *poll; /* its own allocation: a closing handle outlives the socket it watched */
    void *mon;       /* the DEALER's monitor (its disconnections), read at each heartbeat */
    int liveness;    /* heartbeat intervals left before the peer counts as dead */
    peer_state_t state;
} peer_t;

/* A client that heartbeats this actor from outside (it connected; we did not). There may be
 * thousands (every HTTP request of a gateway is one), so they live in a growable array indexed by a
 * chained hash of their names; a dead one is removed by moving the last entry into its place. */
typedef struct {
    char name[DSLA_PROTO_NAME_MAX + 1];
    int liveness;      /* heartbeat intervals (this actor's) left before it counts as dead */
    int liveness_full; /* what hearing from it resets liveness to: its own pings' pace */
    int next;          /* the next entry of its hash bucket, -1 at the end */
} watched_t;

typedef struct {
    watched_t *items;
    size_t n, cap;
    int *buckets; /* n_buckets heads, -1 when empty */
    size_t n_buckets;
} watch_table_t;

/* A callback handed to the loop from another thread. */
typedef struct post {
    dsla_actor_post_fn fn;
    void *user;
    struct post *next;
} post_t;

/* A job on libuv's worker pool. */
typedef struct work {
    uv_work_t req;
    dsla_actor_t *actor;
    dsla_actor_work_fn work;
    dsla_actor_done_fn done;
    void *user;
    struct work *prev, *next;
} work_t;

struct dsla_actor_timer {
    uv_timer_t handle;
    dsla_actor_t *actor;
    dsla_actor_timer_fn fn;
    void *user;
    struct dsla_actor_timer *prev, *next;
};

struct dsla_actor {
    char name[DSLA_PROTO_NAME_MAX + 1];
    dsla_actor_ctx_t *ctx;
    char endpoints[DSLA_ACTOR_BIND_MAX][DSLA_ACTOR_ENDPOINT_MAX];
    dsla_actor_handler_t *handlers;
    size_t n_handlers;
    dsla_actor_role_rule_t *role_rules;
    size_t n_role_rules;
    dsla_actor_start_fn on_start, on_stop;
    dsla_actor_peer_fn on_peer;
    void *user;
    uint32_t heartbeat_ms;
    uint64_t heartbeat_seq;

    pthread_t thread; /* as the creator sees it, for join */
    pthread_t self;   /* as the actor's thread sees itself, for the on-thread checks */
    uv_loop_t loop;
    bool loop_open;
    uv_async_t stop;
    uv_timer_t heartbeat;
    uv_idle_t idle;
    void *router;
    uv_poll_t router_poll;
    dsla_conn_guard_t *guard; /* a bound on the mailbox's TCP connections (conn_guard.h) */
    uv_poll_t guard_poll;
    peer_t peers[DSLA_ACTOR_PEER_MAX];
    watch_table_t watched;
    dsla_log_limit_t watch_warn;
    dsla_log_limit_t frame_warn; /* lines any peer can repeat once per frame it sends */
    struct dsla_actor_timer *timers;

    /* Cross-thread posts: a queue under post_mu, drained by post_async on the loop. */
    pthread_mutex_t post_mu;
    uv_async_t post_async;
    post_t *post_head, *post_tail;
    bool post_closed;
    /* Worker jobs not yet done, and whether a stop waits for them. */
    work_t *works;
    bool stopping;

    /* Start-up hand-shake with the creator; def is valid only until ready is set. */
    const dsla_actor_def_t *def;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready;
    dsla_status_t start_status;
    char start_error[DSLA_ACTOR_START_ERROR_MAX];
};

static void drain_all(dsla_actor_t *a);
static dsla_status_t open_dealer(dsla_actor_t *a, peer_t *p);
static bool dealer_dropped(peer_t *p);
static void close_dealer(peer_t *p);

static bool valid_name(const char *name, size_t len) {
    if (len == 0 || len > DSLA_PROTO_NAME_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if (name[i] < 0x21 || name[i] > 0x7e) return false;
    return true;
}

static dsla_status_t zmq_failure(const char *what, const char *detail) {
    return dsla_error(DSLA_ERR_INTERNAL, "%s %s: %s", what, detail, zmq_strerror(zmq_errno()));
}

static bool on_actor_thread(const dsla_actor_t *a) {
    return pthread_equal(pthread_self(), a->self);
}

/* ---- context ---------------------------------------------------------------------------- */

dsla_status_t dsla_actor_ctx_create(dsla_actor_ctx_t **out) {
    *out = NULL;
    dsla_actor_ctx_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("actor context");
    c->zmq = zmq_ctx_new();
    if (!c->zmq) {
        free(c);
        return zmq_failure("actor context:", "zmq_ctx_new");
    }
    *out = c;
    return DSLA_OK;
}

/* The ZAP handler's thread closes its socket once zmq_ctx_term has woken it with ETERM. */
void dsla_actor_ctx_destroy(dsla_actor_ctx_t **ctx) {
    if (!ctx || !*ctx) return;
    dsla_actor_ctx_t *c = *ctx;
    if (c->zap && !c->zap_running) zmq_close(c->zap);
    while (zmq_ctx_term(c->zmq) != 0 && zmq_errno() == EINTR) {
    }
    if (c->zap_running) pthread_join(c->zap_thread, NULL);
    dsla_curve_keys_destroy(&c->keys);
    free(c);
    *ctx = NULL;
}

void dsla_actor_ctx_allow_insecure(dsla_actor_ctx_t *ctx) {
    ctx->allow_insecure = true;
}

/* Every request is answered, even one too short to carry its id (libzmq sends none such): a REP
 * socket that skipped an answer would refuse every later request. */
static void zap_reply(void *sock, zmq_msg_t *f, int n, const char *code, const char *text,
                      const char *user_id) {
    zmq_send(sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(sock, n >= 2 ? zmq_msg_data(&f[1]) : "", n >= 2 ? zmq_msg_size(&f[1]) : 0,
             ZMQ_SNDMORE);
    zmq_send(sock, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(sock, user_id, strlen(user_id), ZMQ_SNDMORE);
    zmq_send(sock, "", 0, 0);
}

/* One handshake's question: is this public key authorized, and as whom? The answer's user id,
 * "ROLE NAME", comes back with every message of the connection as its "User-Id" property. */
static void zap_answer(dsla_actor_ctx_t *c, zmq_msg_t *f, int n) {
    char key[DSLA_CURVE_KEY_LEN + 1] = "", address[64] = "";
    const char *mechanism_ok = "CURVE";
    if (n == DSLA_ACTOR_ZAP_FRAMES && zmq_msg_size(&f[5]) == strlen(mechanism_ok) &&
        memcmp(zmq_msg_data(&f[5]), mechanism_ok, strlen(mechanism_ok)) == 0 &&
        zmq_msg_size(&f[6]) == 32)
        zmq_z85_encode(key, zmq_msg_data(&f[6]), 32);
    if (n >= 4) {
        size_t len =
            zmq_msg_size(&f[3]) < sizeof address ? zmq_msg_size(&f[3]) : sizeof address - 1;
        memcpy(address, zmq_msg_data(&f[3]), len);
        address[len] = '\0';
    }
    const dsla_curve_identity_t *who = key[0] ? dsla_curve_lookup(c->keys, key) : NULL;
    if (!who) {
        DSLA_LOG_LIMITED(&c->zap_warn, DSLA_LOG_WARN,
                         "CURVE: refusing a connection from %s: key %s is not in authorized_keys",
                         address[0] ? address : "?", key[0] ? key : "(not a CURVE handshake)");
        zap_reply(c->zap, f, n, "400", "key not authorized", "");
        return;
    }
    char user_id[DSLA_PROTO_NAME_MAX + 32];
    snprintf(user_id, sizeof user_id, "%s %s", dsla_role_name(who->role), who->name);
    zap_reply(c->zap, f, n, "200", "OK", user_id);
}

static void *zap_main(void *arg) {
    dsla_actor_ctx_t *c = arg;
    for (;;) {
        zmq_msg_t f[DSLA_ACTOR_ZAP_FRAMES], scratch;
        int n = 0, more = 1;
        bool ok = true;
        while (more) {
            zmq_msg_t *m = n < DSLA_ACTOR_ZAP_FRAMES ? &f[n] : &scratch;
            zmq_msg_init(m);
            if (zmq_msg_recv(m, c->zap, 0) < 0) {
                zmq_msg_close(m);
                ok = false;
                break;
            }
            more = zmq_msg_more(m);
            if (m == &scratch) zmq_msg_close(m);
            n++;
        }
        int err = zmq_errno();
        if (ok) zap_answer(c, f, n);
        for (int i = 0; i < n && i < DSLA_ACTOR_ZAP_FRAMES; i++)
            zmq_msg_close(&f[i]);
        if (!ok && err == ETERM) break;
    }
    zmq_close(c->zap);
    return NULL;
}

dsla_status_t dsla_actor_ctx_secure(dsla_actor_ctx_t *ctx, const dsla_curve_keys_t *keys) {
    if (ctx->keys)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "actor context: CURVE is already on");
    DSLA_TRY(dsla_curve_available());
    DSLA_TRY(dsla_curve_keys_copy(&ctx->keys, keys));
    int linger = 0;
    ctx->zap = zmq_socket(ctx->zmq, ZMQ_REP);
    dsla_status_t st = DSLA_OK;
    if (!ctx->zap || zmq_setsockopt(ctx->zap, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_bind(ctx->zap, DSLA_ACTOR_ZAP_ENDPOINT) != 0)
        st = zmq_failure("actor context:", "the ZAP handler's socket");
    else if (pthread_create(&ctx->zap_thread, NULL, zap_main, ctx) != 0)
        st = dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "actor context: cannot start the ZAP thread");
    else
        ctx->zap_running = true;
    if (st != DSLA_OK) {
        if (ctx->zap) zmq_close(ctx->zap);
        ctx->zap = NULL;
        dsla_curve_keys_destroy(&ctx->keys);
    }
    return st;
}

/* ---- peers and heartbeats --------------------------------------------------------------- */

static uint64_t name_hash(const char *name) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *name; name++)
        h = (h ^ (uint8_t)*name) * 1099511628211ull;
    return h;
}

static int *watch_bucket(const watch_table_t *w, const char *name) {
    return &w->buckets[name_hash(name) & (w->n_buckets - 1)];
}

static int watch_find(const watch_table_t *w, const char *name) {
    if (!w->n_buckets) return -1;
    for (int i = *watch_bucket(w, name); i >= 0; i = w->items[i].next)
        if (strcmp(w->items[i].name, name) == 0) return i;
    return -1;
}

/* Rebuilds the buckets for at least cap entries (a power of two, load factor <= 1). */
static bool watch_rehash(watch_table_t *w, size_t cap) {
    size_t nb = 64;
    while (nb < cap)
        nb *= 2;
    int *b = malloc(nb * sizeof *b);
    if (!b) return false;
    for (size_t i = 0; i < nb; i++)
        b[i] = -1;
    free(w->buckets);
    w->buckets = b;
    w->n_buckets = nb;
    for (size_t i = 0; i < w->n; i++) {
        int *head = watch_bucket(w, w->items[i].name);
        w->items[i].next = *head;
        *head = (int)i;
    }
    return true;
}

static int watch_add(watch_table_t *w, const char *name) {
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        watched_t *items = realloc(w->items, cap * sizeof *items);
        if (!items) return -1;
        w->items = items;
        w->cap = cap;
    }
    if (w->n + 1 > w->n_buckets && !watch_rehash(w, w->n + 1)) return -1;
    watched_t *e = &w->items[w->n];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->liveness = e->liveness_full = DSLA_ACTOR_HEARTBEAT_LIVENESS;
    int *head = watch_bucket(w, name);
    e->next = *head;
    *head = (int)w->n;
    return (int)w->n++;
}

/* Unlinks entry i from its bucket, then moves the last entry into its place. */
static void watch_remove(watch_table_t *w, int i) {
    for (int *link = watch_bucket(w, w->items[i].name); *link >= 0; link = &w->items[*link].next)
        if (*link == i) {
            *link = w->items[i].next;
            break;
        }
    int last = (int)w->n - 1;
    if (i != last) {
        for (int *link = watch_bucket(w, w->items[last].name); *link >= 0;
             link = &w->items[*link].next)
            if (*link == last) {
                *link = i;
                break;
            }
        w->items[i] = w->items[last];
    }
    w->n--;
}

static void watch_free(watch_table_t *w) {
    free(w->items);
    free(w->buckets);
    memset(w, 0, sizeof *w);
}

size_t dsla_actor_watched(const dsla_actor_t *a) {
    return a->watched.n;
}

static const peer_t *peer_find_const(const dsla_actor_t *a, const char *name) {
    for (int i = 0; i < DSLA_ACTOR_PEER_MAX; i++)
        if (a->peers[i].used && strcmp(a->peers[i].name, name) == 0) return &a->peers[i];
    return NULL;
}

bool dsla_actor_hears(const dsla_actor_t *a, const char *name) {
    const peer_t *p = peer_find_const(a, name);
    if (p) return p->state == PEER_ALIVE;
    return watch_find(&a->watched, name) >= 0;
}

static peer_t *peer_find(dsla_actor_t *a, const char *name) {
    return (peer_t *)peer_find_const(a, name);
}

static peer_t *peer_add(dsla_actor_t *a, const char *name) {
    for (int i = 0; i < DSLA_ACTOR_PEER_MAX; i++) {
        peer_t *p = &a->peers[i];
        if (p->used) continue;
        memset(p, 0, sizeof *p);
        p->used = true;
        snprintf(p->name, sizeof p->name, "%s", name);
        p->liveness = DSLA_ACTOR_HEARTBEAT_LIVENESS;
        p->state = PEER_UNKNOWN;
        return p;
    }
    return NULL;
}

static void peer_report(dsla_actor_t *a, peer_t *p, peer_state_t state) {
    if (p->state == state) return;
    p->state = state;
    /* a peer's death is news at the default level (it was logged below it, unseen) */
    if (state == PEER_ALIVE)
        dsla_log_info("actor %s: peer %s is alive", a->name, p->name);
    else
        dsla_log_warn("actor %s: peer %s is dead", a->name, p->name);
    if (a->on_peer) a->on_peer(a, p->name, state == PEER_ALIVE, a->user);
}

static void watched_report(dsla_actor_t *a, const char *name, bool alive) {
    dsla_log_debug("actor %s: client %s is %s", a->name, name, alive ? "alive" : "dead");
    if (a->on_peer) a->on_peer(a, name, alive, a->user);
}

/* A client counts as dead after DSLA_ACTOR_HEARTBEAT_LIVENESS of its own intervals of silence,
 * in this actor's heartbeats: a replica pinging every second is not dead to a controller beating
 * every 200 ms just because a load report came late. */
static int watch_liveness(const dsla_actor_t *a, uint32_t interval_ms) {
    uint32_t own = a->heartbeat_ms;
    if (interval_ms <= own) return DSLA_ACTOR_HEARTBEAT_LIVENESS;
    uint64_t beats = ((uint64_t)interval_ms * DSLA_ACTOR_HEARTBEAT_LIVENESS + own - 1) / own;
    return beats > INT_MAX ? INT_MAX : (int)beats;
}

/* Any message proves its sender alive; a PING (ping, NULL for any other message) from an unknown
 * sender starts watching it, so that liveness is watched both ways even when only one side
 * connected. */
static void peer_heard(dsla_actor_t *a, const char *from, const dsla_proto_ping_t *ping) {
    if (!from[0]) return;
    peer_t *p = peer_find(a, from);
    if (p) {
        p->liveness = DSLA_ACTOR_HEARTBEAT_LIVENESS;
        peer_report(a, p, PEER_ALIVE);
        return;
    }
    int i = watch_find(&a->watched, from);
    if (i < 0 && !ping) return;
    bool added = i < 0;
    if (added && (i = watch_add(&a->watched, from)) < 0) {
        DSLA_LOG_LIMITED(&a->watch_warn, DSLA_LOG_WARN,
                         "actor %s: out of memory watching %zu clients; not watching %s", a->name,
                         a->watched.n, from);
        return;
    }
    watched_t *w = &a->watched.items[i];
    if (ping) w->liveness_full = watch_liveness(a, ping->interval_ms);
    w->liveness = w->liveness_full;
    if (added) watched_report(a, from, true);
}

static dsla_status_t send_frame(dsla_actor_t *a, void *sock, const void *route_id, size_t route_len,
                                const char *dst, uint32_t type, uint64_t id, const void *body,
                                size_t body_len) {
    if (strlen(dst) > DSLA_PROTO_NAME_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "actor %s: destination '%.16s...' longer than %d bytes", a->name, dst,
                          DSLA_PROTO_NAME_MAX);
    dsla_proto_envelope_t env = {
        .version = DSLA_PROTO_VERSION, .type = type, .id = id, .body = body, .body_len = body_len};
    snprintf(env.src, sizeof env.src, "%s", a->name);
    snprintf(env.dst, sizeof env.dst, "%s", dst);
    dsla_proto_buf_t buf;
    DSLA_TRY(dsla_proto_envelope_encode(&env, &buf));
    int rc = 0;
    if (route_id) rc = zmq_send(sock, route_id, route_len, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc >= 0) rc = zmq_send(sock, buf.data, buf.len, ZMQ_DONTWAIT);
    int err = zmq_errno();
    dsla_proto_buf_free(&buf);
    if (rc >= 0) return DSLA_OK;
    if (err == EAGAIN)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "actor %s: the queue to '%s' is full; message type %u dropped", a->name,
                          dst, type);
    if (err == EHOSTUNREACH)
        return dsla_error(DSLA_ERR_NOT_FOUND,
                          "actor %s: no route to '%s' (not a connected peer, not a client)",
                          a->name, dst);
    return dsla_error(DSLA_ERR_INTERNAL, "actor %s: sending to '%s': %s", a->name, dst,
                      zmq_strerror(err));
}

/* Paranoid Pirate's recovery: a fresh socket drops whatever queued up for the dead peer, so that
 * a restarted peer is not greeted by a burst of stale messages. */
static void reconnect(dsla_actor_t *a, peer_t *p) {
    close_dealer(p);
    if (open_dealer(a, p) != DSLA_OK)
        dsla_log_error("actor %s: %s; peer %s stays disconnected", a->name, dsla_last_error(),
                       p->name);
}

/* A watched client silent for the liveness intervals is dead and forgotten: it must find us
 * again. */
static void watched_tick(dsla_actor_t *a) {
    watch_table_t *w = &a->watched;
    for (int i = (int)w->n - 1; i >= 0; i--) {
        if (w->items[i].liveness > 0) w->items[i].liveness--;
        if (w->items[i].liveness > 0) continue;
        char name[DSLA_PROTO_NAME_MAX + 1];
        snprintf(name, sizeof name, "%s", w->items[i].name);
        watch_remove(w, i);
        watched_report(a, name, false);
    }
}

static void on_heartbeat(uv_timer_t *t) {
    dsla_actor_t *a = t->loop->data;
    watched_tick(a);
    for (int i = 0; i < DSLA_ACTOR_PEER_MAX; i++) {
        peer_t *p = &a->peers[i];
        if (!p->used) continue;
        if (p->sock) {
            dsla_proto_ping_t ping = {.seq = ++a->heartbeat_seq,
                                      .sent_ns = dsla_clock_ns(),
                                      .interval_ms = a->heartbeat_ms};
            dsla_proto_buf_t body;
            if (dsla_proto_ping_encode(&ping, &body) == DSLA_OK) {
                /* A full queue to a silent peer drops the PING: its silence is the signal. */
                if (send_frame(a, p->sock, NULL, 0, p->name, DSLA_MSG_PING, 0, body.data,
                               body.len) != DSLA_OK)
                    dsla_log_debug("%s", dsla_last_error());
                dsla_proto_buf_free(&body);
            }
        }
        if (p->liveness > 0) p->liveness--;
        if (dealer_dropped(p)) p->liveness = 0;
        /* Dead, and every liveness period it stays unanswered, a fresh connection: the peer's
         * mailbox may still hold this actor's routing id on a connection cut off by the network,
         * and libzmq's ROUTER then keeps a new connection claiming that id anonymous (neither
         * refused nor heard) for as long as it lasts; the next one, begun after the stale
         * connection's ZMTP heartbeats closed it, is heard (cluster_netns.sh: the gateway saw a
         * rejoined replica dead for good in 1 run of 8). */
        if (p->liveness == 0) {
            if (p->state != PEER_DEAD) peer_report(a, p, PEER_DEAD);
            reconnect(a, p);
            p->liveness = DSLA_ACTOR_HEARTBEAT_LIVENESS;
        }
    }
    if (a->guard) dsla_conn_guard_drain(a->guard); /* an edge of its ZMQ_FD may have been missed */
    drain_all(a);
}

/* ---- receiving and dispatch ------------------------------------------------------------- */

static dsla_actor_handler_fn handler_for(const dsla_actor_t *a, uint32_t type) {
    for (size_t i = 0; i < a->n_handlers; i++)
        if (a->handlers[i].type == type) return a->handlers[i].fn;
    return NULL;
}

/* The roles that may send type; 0: any. */
static uint32_t roles_for(const dsla_actor_t *a, uint32_t type) {
    for (size_t i = 0; i < a->n_role_rules; i++)
        if (a->role_rules[i].type == type) return a->role_rules[i].roles;
    return 0;
}

/* The ZAP handler's user id "ROLE NAME" into role and name; false when it is not one. */
static bool parse_user_id(const char *user_id, uint32_t *role, char *name, size_t cap) {
    const char *space = strchr(user_id, ' ');
    char text[16];
    if (!space || (size_t)(space - user_id) >= sizeof text) return false;
    memcpy(text, user_id, (size_t)(space - user_id));
    text[space - user_id] = '\0';
    *role = dsla_role_parse(text);
    snprintf(name, cap, "%s", space + 1);
    return *role != 0 && valid_name(name, strlen(name));
}

/* A key of a cluster role (not a client or admin) speaks only under its own name: routing ids are
 * the sender's choice, and the controller and the gateway address replicas, distillers and
 * gateways by them. */
static bool name_matches_key(uint32_t role, const char *key_name, const char *from) {
    return (role & (DSLA_ROLE_CLIENT | DSLA_ROLE_ADMIN)) || strcmp(key_name, from) == 0;
}

static void dispatch(dsla_actor_t *a, int peer_index, const void *route_id, size_t route_len,
                     const void *data, size_t len, int extra_frames, const char *user_id) {
    char from[DSLA_PROTO_NAME_MAX + 1] = "", key_name[DSLA_PROTO_NAME_MAX + 1] = "";
    if (peer_index >= 0)
        snprintf(from, sizeof from, "%s", a->peers[peer_index].name);
    else if (valid_name(route_id, route_len)) {
        memcpy(from, route_id, route_len);
        from[route_len] = '\0';
    }
    uint32_t role = 0;
    if (user_id && (!parse_user_id(user_id, &role, key_name, sizeof key_name) ||
                    !name_matches_key(role, key_name, from))) {
        DSLA_LOG_LIMITED(&a->frame_warn, DSLA_LOG_WARN,
                         "actor %s: dropping a message from '%s': its CURVE key is '%s', and a %s "
                         "key speaks only under its own name",
                         a->name, from, user_id, role ? dsla_role_name(role) : "cluster");
        return;
    }
    dsla_proto_envelope_t env;
    dsla_actor_msg_t msg = {.env = &env,
                            .from = from,
                            .role = role,
                            .key_name = role ? key_name : NULL,
                            .route_id_ = route_id,
                            .route_id_len_ = route_len,
                            .route_peer_ = peer_index};
    dsla_status_t st = dsla_proto_envelope_decode(data, len, &env);
    if (st == DSLA_OK && extra_frames > 0)
        st = dsla_error(DSLA_ERR_FORMAT, "%d frames where one envelope was expected",
                        1 + extra_frames);
    dsla_proto_ping_t ping;
    bool is_ping = st == DSLA_OK && env.type == DSLA_MSG_PING &&
                   dsla_proto_ping_decode(env.body, env.body_len, &ping) == DSLA_OK;
    peer_heard(a, from, is_ping ? &ping : NULL);
    if (st != DSLA_OK) {
        DSLA_LOG_LIMITED(&a->frame_warn, DSLA_LOG_WARN, "actor %s: refusing a frame from '%s': %s",
                         a->name, from, dsla_last_error());
        /* never answer an error with an error */
        if (env.type != DSLA_MSG_ERROR &&
            dsla_actor_reply_error(a, &msg, dsla_proto_code_from_status(st), dsla_last_error()) !=
                DSLA_OK)
            dsla_log_debug("%s", dsla_last_error());
        return;
    }
    const uint32_t allowed = role ? roles_for(a, env.type) : 0;
    if (allowed && !(allowed & role)) {
        char text[DSLA_PROTO_MESSAGE_MAX + 1];
        snprintf(text, sizeof text, "%s: the key '%s' has the role %s, which may not send it here",
                 dsla_proto_type_name(env.type), key_name, dsla_role_name(role));
        DSLA_LOG_LIMITED(&a->frame_warn, DSLA_LOG_WARN, "actor %s: refusing from '%s': %s", a->name,
                         from, text);
        if (dsla_actor_reply_error(a, &msg, DSLA_CODE_PERMISSION_DENIED, text) != DSLA_OK)
            dsla_log_debug("%s", dsla_last_error());
        return;
    }
    dsla_actor_handler_fn fn = handler_for(a, env.type);
    if (fn) {
        fn(a, &msg, a->user);
        return;
    }
    switch (env.type) {
    case DSLA_MSG_PING:
        if (dsla_actor_reply(a, &msg, DSLA_MSG_PONG, env.body, env.body_len) != DSLA_OK)
            dsla_log_debug("%s", dsla_last_error());
        return;
    case DSLA_MSG_PONG:
        return; /* its arrival was the point */
    case DSLA_MSG_ERROR: {
        dsla_proto_error_t err;
        if (dsla_proto_error_decode(env.body, env.body_len, &err) == DSLA_OK)
            DSLA_LOG_LIMITED(&a->frame_warn, DSLA_LOG_WARN,
                             "actor %s: unhandled ERROR from '%s' (id %llu): %s: %s", a->name, from,
                             (unsigned long long)env.id, dsla_proto_code_name(err.code),
                             err.message);
        else
            DSLA_LOG_LIMITED(&a->frame_warn, DSLA_LOG_WARN,
                             "actor %s: malformed ERROR from '%s': %s", a->name, from,
                             dsla_last_error());
        return;
    }
    default: {
        char text[DSLA_PROTO_MESSAGE_MAX + 1];
        snprintf(text, sizeof text, "actor '%s' has no handler for message type %s (%u)", a->name,
                 dsla_proto_type_name(env.type), env.type);
        if (dsla_actor_reply_error(a, &msg, DSLA_CODE_INVALID_ARGUMENT, text) != DSLA_OK)
            dsla_log_debug("%s", dsla_last_error());
    }
    }
}

static bool more_frames(void *sock) {
    int more = 0;
    size_t sz = sizeof more;
    return zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more;
}

/* Receives one whole message from sock (ROUTER when peer_index < 0: identity frame first) and
 * dispatches it; false when none was waiting. */
static bool receive_one(dsla_actor_t *a, void *sock, int peer_index) {
    int events = 0;
    size_t sz = sizeof events;
    if (zmq_getsockopt(sock, ZMQ_EVENTS, &events, &sz) != 0 || !(events & ZMQ_POLLIN)) return false;
    zmq_msg_t id, content;
    zmq_msg_init(&id);
    zmq_msg_init(&content);
    bool ok = true;
    if (peer_index < 0) ok = zmq_msg_recv(&id, sock, ZMQ_DONTWAIT) >= 0 && more_frames(sock);
    if (ok) ok = zmq_msg_recv(&content, sock, ZMQ_DONTWAIT) >= 0;
    int extra = 0;
    while (ok && more_frames(sock)) {
        zmq_msg_t skip;
        zmq_msg_init(&skip);
        ok = zmq_msg_recv(&skip, sock, ZMQ_DONTWAIT) >= 0;
        zmq_msg_close(&skip);
        extra++;
    }
    /* CURVE's proof of the sender, from the ZAP handler; absent on inproc:// and plaintext */
    const char *user_id = ok && peer_index < 0 ? zmq_msg_gets(&content, "User-Id") : NULL;
    if (ok)
        dispatch(a, peer_index, zmq_msg_data(&id), zmq_msg_size(&id), zmq_msg_data(&content),
                 zmq_msg_size(&content), extra, user_id);
    else
        DSLA_LOG_LIMITED(&a->frame_warn, DSLA_LOG_WARN, "actor %s: receive failed: %s", a->name,
                         zmq_strerror(zmq_errno()));
    zmq_msg_close(&id);
    zmq_msg_close(&content);
    return true;
}

static void on_idle(uv_idle_t *h) {
    drain_all(h->loop->data);
}

/* ZMQ_FD only signals edges, and any ZeroMQ call on a socket (a handler's send included) may
 * consume one, so every libuv callback ends here and keeps receiving until a whole pass over the
 * sockets finds nothing. A spent budget leaves an idle handle running, which keeps the loop from
 * sleeping in poll while messages still wait. */
static void drain_all(dsla_actor_t *a) {
    int budget = DSLA_ACTOR_DRAIN_BATCH;
    bool progress = true;
    while (progress && budget > 0) {
        progress = false;
        while (budget > 0 && receive_one(a, a->router, -1)) {
            budget--;
            progress = true;
        }
        for (int i = 0; i < DSLA_ACTOR_PEER_MAX; i++) {
            while (budget > 0 && a->peers[i].used && a->peers[i].sock &&
                   receive_one(a, a->peers[i].sock, i)) {
                budget--;
                progress = true;
            }
        }
    }
    if (budget <= 0)
        uv_idle_start(&a->idle, on_idle);
    else
        uv_idle_stop(&a->idle);
}

static void on_poll(uv_poll_t *h, int status, int events) {
    (void)events;
    dsla_actor_t *a = h->loop->data;
    if (status < 0) dsla_log_warn("actor %s: poll: %s", a->name, uv_strerror(status));
    drain_all(a);
}

/* ---- public: connect, send, reply ------------------------------------------------------- */

static void free_on_close(uv_handle_t *h) {
    free(h);
}

/* With CURVE, a DEALER to a tcp:// endpoint proves the server by the key known_servers names for
 * it (server, NULL for a link without CURVE). */
static int curve_client(const dsla_curve_keys_t *keys, void *sock, const char *server) {
    if (!server) return 0;
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, server, DSLA_CURVE_KEY_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, keys->self.public_key, DSLA_CURVE_KEY_LEN) != 0 ||
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, keys->secret_key, DSLA_CURVE_KEY_LEN) != 0)
        return -1;
    return 0;
}

/* A peer whose connection drops has lost whatever was in flight on it, even when it is back (a
 * restarted process on the same endpoint) before its silence shows: the DEALER's monitor tells of
 * the drop, and the next heartbeat reports the peer dead (the soak found requests of a replica
 * killed and restarted within its liveness waiting forever). Without a monitor, silence alone. */
static void monitor_dealer(dsla_actor_t *a, peer_t *p) {
    static atomic_uint monitors;
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://dsla-peer-monitor-%u", atomic_fetch_add(&monitors, 1));
    int linger = 0;
    if (zmq_socket_monitor(p->sock, ep, ZMQ_EVENT_DISCONNECTED) != 0 ||
        !(p->mon = zmq_socket(a->ctx->zmq, ZMQ_PAIR)) ||
        zmq_setsockopt(p->mon, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(p->mon, ep) != 0) {
        dsla_log_warn("actor %s: no monitor on peer %s (%s): its death shows by silence only",
                      a->name, p->name, zmq_strerror(zmq_errno()));
        zmq_socket_monitor(p->sock, NULL, 0);
        if (p->mon) zmq_close(p->mon);
        p->mon = NULL;
    }
}

/* Whether the peer's connection dropped since the last look. */
static bool dealer_dropped(peer_t *p) {
    bool dropped = false;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (!p->mon || zmq_msg_recv(&m, p->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return dropped;
        }
        uint16_t event = 0;
        if (zmq_msg_size(&m) >= 2) memcpy(&event, zmq_msg_data(&m), 2);
        dropped = dropped || event == ZMQ_EVENT_DISCONNECTED;
        zmq_msg_close(&m);
    }
}

/* How long a connection may stay silent, or a connect unanswered, before libzmq gives it up: the
 * actors' own liveness (three heartbeats). */
static int link_timeout_ms(const dsla_actor_t *a) {
    return (int)a->heartbeat_ms * DSLA_ACTOR_HEARTBEAT_LIVENESS;
}

/* Opens p's DEALER to p->endpoint and polls it. */
static dsla_status_t open_dealer(dsla_actor_t *a, peer_t *p) {
    const dsla_curve_keys_t *keys = a->ctx->keys;
    const char *server = NULL;
    if (keys && strncmp(p->endpoint, "tcp://", 6) == 0) {
        server = dsla_curve_server_key(keys, p->endpoint);
        if (!server)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "actor %s: connecting to peer %s at %s: CURVE needs that server's "
                              "public key; add the line '%s PUBLIC-KEY' to known_servers in the "
                              "--curve-keys directory",
                              a->name, p->name, p->endpoint, p->endpoint);
    }
    void *sock = zmq_socket(a->ctx->zmq, ZMQ_DEALER);
    if (!sock) return zmq_failure(a->name, "zmq_socket(DEALER)");
    int linger = 0, hwm = DSLA_ACTOR_QUEUE_MAX;
    /* A connect begun while the peer's host is cut off would wait on the kernel's SYN backoff
     * (1, 2, 4, 8, ... s) long after the network is back: libzmq gives it up after
     * link_timeout_ms and tries again with a fresh one. */
    int connect_timeout = link_timeout_ms(a);
    int64_t max_frame = DSLA_ACTOR_FRAME_MAX;
    int fd = -1;
    size_t fd_len = sizeof fd;
    if (zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(sock, ZMQ_CONNECT_TIMEOUT, &connect_timeout, sizeof connect_timeout) != 0 ||
        zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max_frame, sizeof max_frame) != 0 ||
        zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(sock, ZMQ_ROUTING_ID, a->name, strlen(a->name)) != 0 ||
        curve_client(keys, sock, server) != 0 || zmq_connect(sock, p->endpoint) != 0 ||
        zmq_getsockopt(sock, ZMQ_FD, &fd, &fd_len) != 0) {
        dsla_status_t st =
            dsla_error(DSLA_ERR_INVALID_ARGUMENT, "actor %s: connecting to peer %s at %s: %s",
                       a->name, p->name, p->endpoint, zmq_strerror(zmq_errno()));
        zmq_close(sock);
        return st;
    }
    uv_poll_t *poll = malloc(sizeof *poll);
    int rc = poll ? uv_poll_init(&a->loop, poll, fd) : UV_ENOMEM;
    if (rc != 0) { /* the handle never joined the loop: plain free */
        free(poll);
        zmq_close(sock);
        return dsla_error(DSLA_ERR_INTERNAL, "actor %s: polling peer %s: %s", a->name, p->name,
                          uv_strerror(rc));
    }
    rc = uv_poll_start(poll, UV_READABLE, on_poll);
    /* Should starting ever fail, the socket is still drained by the pass that ends every
     * heartbeat, so the peer keeps working, only slower. */
    if (rc != 0)
        dsla_log_warn("actor %s: polling peer %s: %s; serving it from heartbeats only", a->name,
                      p->name, uv_strerror(rc));
    p->sock = sock;
    p->poll = poll;
    monitor_dealer(a, p);
    return DSLA_OK;
}

/* uv_close stops watching the descriptor at once, so the socket may close before the handle's
 * close callback runs. */
static void close_dealer(peer_t *p) {
    if (p->poll) uv_close((uv_handle_t *)p->poll, free_on_close);
    if (p->mon) { /* stopped first: a socket closed while monitored is not released */
        zmq_socket_monitor(p->sock, NULL, 0);
        zmq_close(p->mon);
        p->mon = NULL;
    }
    if (p->sock) zmq_close(p->sock);
    p->poll = NULL;
    p->sock = NULL;
}

dsla_status_t dsla_actor_connect(dsla_actor_t *a, const char *peer, const char *endpoint) {
    if (!on_actor_thread(a))
        return dsla_error(DSLA_ERR_INTERNAL, "actor %s: connect called off the actor's thread",
                          a->name);
    if (!valid_name(peer, strlen(peer)))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "actor %s: peer name '%.16s' must be 1 to %d printable bytes without "
                          "spaces",
                          a->name, peer, DSLA_PROTO_NAME_MAX);
    if (strlen(endpoint) >= DSLA_ACTOR_ENDPOINT_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "actor %s: endpoint of peer %s is %zu bytes, above the limit of %d",
                          a->name, peer, strlen(endpoint), DSLA_ACTOR_ENDPOINT_MAX - 1);
    peer_t *p = peer_find(a, peer);
    if (p && p->sock)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "actor %s: already connected to peer %s",
                          a->name, peer);
    bool added = !p;
    if (!p) p = peer_add(a, peer);
    if (p && added) {
        int w = watch_find(&a->watched, peer);
        if (w >= 0) {
            watch_remove(&a->watched, w);
            p->state = PEER_ALIVE; /* it was heard from; its connection does not change that */
        }
    }
    if (!p)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "actor %s: more than %d peers", a->name,
                          DSLA_ACTOR_PEER_MAX);
    snprintf(p->endpoint, sizeof p->endpoint, "%s", endpoint);
    dsla_status_t st = open_dealer(a, p);
    if (st != DSLA_OK) {
        if (added) p->used = false;
        return st;
    }
    p->liveness = DSLA_ACTOR_HEARTBEAT_LIVENESS;
    return DSLA_OK;
}

dsla_status_t dsla_actor_send(dsla_actor_t *a, const char *dst, uint32_t type, uint64_t id,
                              const void *body, size_t body_len) {
    if (!on_actor_thread(a))
        return dsla_error(DSLA_ERR_INTERNAL, "actor %s: send called off the actor's thread",
                          a->name);
    peer_t *p = peer_find(a, dst);
    if (p && p->sock) return send_frame(a, p->sock, NULL, 0, dst, type, id, body, body_len);
    return send_frame(a, a->router, dst, strlen(dst), dst, type, id, body, body_len);
}

dsla_status_t dsla_actor_reply(dsla_actor_t *a, const dsla_actor_msg_t *msg, uint32_t type,
                               const void *body, size_t body_len) {
    if (!on_actor_thread(a))
        return dsla_error(DSLA_ERR_INTERNAL, "actor %s: reply called off the actor's thread",
                          a->name);
    const char *dst = msg->env->src[0] ? msg->env->src : msg->from;
    if (msg->route_peer_ >= 0)
        return send_frame(a, a->peers[msg->route_peer_].sock, NULL, 0, dst, type, msg->env->id,
                          body, body_len);
    return send_frame(a, a->router, msg->route_id_, msg->route_id_len_, dst, type, msg->env->id,
                      body, body_len);
}

const char *dsla_actor_msg_peer(const dsla_actor_t *a, const dsla_actor_msg_t *msg) {
    return msg->route_peer_ >= 0 ? a->peers[msg->route_peer_].name : NULL;
}

bool dsla_actor_msg_from_peer(const dsla_actor_t *a, const dsla_actor_msg_t *msg,
                              const char *peer) {
    const char *via = dsla_actor_msg_peer(a, msg);
    return via && peer && strcmp(via, peer) == 0;
}

dsla_status_t dsla_actor_reply_error(dsla_actor_t *a, const dsla_actor_msg_t *msg,
                                     dsla_proto_code_t code, const char *message) {
    dsla_proto_error_t err = {.code = code};
    snprintf(err.message, sizeof err.message, "%s", message);
    dsla_proto_buf_t body;
    DSLA_TRY(dsla_proto_error_encode(&err, &body));
    dsla_status_t st = dsla_actor_reply(a, msg, DSLA_MSG_ERROR, body.data, body.len);
    dsla_proto_buf_free(&body);
    return st;
}

/* ---- timers ----------------------------------------------------------------------------- */

static void on_user_timer(uv_timer_t *h) {
    struct dsla_actor_timer *t = (struct dsla_actor_timer *)h;
    dsla_actor_t *a = t->actor;
    t->fn(a, t->user);
    drain_all(a);
}

dsla_status_t dsla_actor_timer_start(dsla_actor_t *a, uint64_t timeout_ms, uint64_t repeat_ms,
                                     dsla_actor_timer_fn fn, void *user, dsla_actor_timer_t **out) {
    *out = NULL;
    if (!on_actor_thread(a))
        return dsla_error(DSLA_ERR_INTERNAL, "actor %s: timer started off the actor's thread",
                          a->name);
    struct dsla_actor_timer *t = calloc(1, sizeof *t);
    if (!t) return dsla_error_oom("actor %s: timer", a->name);
    t->actor = a;
    t->fn = fn;
    t->user = user;
    uv_timer_init(&a->loop, &t->handle);
    uv_timer_start(&t->handle, on_user_timer, timeout_ms, repeat_ms);
    t->next = a->timers;
    if (a->timers) a->timers->prev = t;
    a->timers = t;
    *out = t;
    return DSLA_OK;
}

static void timer_close(dsla_actor_t *a, struct dsla_actor_timer *t) {
    if (t->prev) t->prev->next = t->next;
    if (t->next) t->next->prev = t->prev;
    if (a->timers == t) a->timers = t->next;
    uv_timer_stop(&t->handle);
    uv_close((uv_handle_t *)&t->handle, free_on_close);
}

void dsla_actor_timer_stop(dsla_actor_t *a, dsla_actor_timer_t **t) {
    if (!t || !*t) return;
    timer_close(a, *t);
    *t = NULL;
}

/* ---- posts from other threads and worker jobs -------------------------------------------- */

/* Runs the posts queued so far, in order; later ones wake the loop again. */
static void run_posts(dsla_actor_t *a) {
    pthread_mutex_lock(&a->post_mu);
    post_t *p = a->post_head;
    a->post_head = a->post_tail = NULL;
    pthread_mutex_unlock(&a->post_mu);
    while (p) {
        post_t *next = p->next;
        p->fn(a, p->user);
        free(p);
        p = next;
    }
}

static void on_post(uv_async_t *h) {
    dsla_actor_t *a = h->loop->data;
    run_posts(a);
    drain_all(a);
}

dsla_status_t dsla_actor_post(dsla_actor_t *a, dsla_actor_post_fn fn, void *user) {
    post_t *p = malloc(sizeof *p);
    if (!p) return dsla_error_oom("actor %s: post", a->name);
    p->fn = fn;
    p->user = user;
    p->next = NULL;
    pthread_mutex_lock(&a->post_mu);
    bool closed = a->post_closed;
    if (!closed) {
        if (a->post_tail)
            a->post_tail->next = p;
        else
            a->post_head = p;
        a->post_tail = p;
        /* under the lock: the handle is closed only after post_closed is set */
        uv_async_send(&a->post_async);
    }
    pthread_mutex_unlock(&a->post_mu);
    if (!closed) return DSLA_OK;
    free(p);
    return dsla_error(DSLA_ERR_CANCELLED, "actor %s has stopped; post refused", a->name);
}

static void work_run(uv_work_t *req) {
    work_t *w = req->data;
    w->work(w->user);
}

static void work_after(uv_work_t *req, int status) {
    work_t *w = req->data;
    dsla_actor_t *a = w->actor;
    if (w->prev) w->prev->next = w->next;
    if (w->next) w->next->prev = w->prev;
    if (a->works == w) a->works = w->next;
    w->done(a, w->user, status == UV_ECANCELED);
    free(w);
    if (a->stopping && !a->works) {
        uv_stop(&a->loop);
        return;
    }
    drain_all(a);
}

dsla_status_t dsla_actor_work(dsla_actor_t *a, dsla_actor_work_fn work, dsla_actor_done_fn done,
                              void *user) {
    if (!on_actor_thread(a))
        return dsla_error(DSLA_ERR_INTERNAL, "actor %s: work queued off the actor's thread",
                          a->name);
    if (a->stopping) return dsla_error(DSLA_ERR_CANCELLED, "actor %s is stopping", a->name);
    work_t *w = calloc(1, sizeof *w);
    if (!w) return dsla_error_oom("actor %s: work", a->name);
    w->actor = a;
    w->work = work;
    w->done = done;
    w->user = user;
    w->req.data = w;
    int rc = uv_queue_work(&a->loop, &w->req, work_run, work_after);
    if (rc != 0) {
        free(w);
        return dsla_error(DSLA_ERR_INTERNAL, "actor %s: uv_queue_work: %s", a->name,
                          uv_strerror(rc));
    }
    w->next = a->works;
    if (a->works) a->works->prev = w;
    a->works = w;
    return DSLA_OK;
}

/* ---- the thread ------------------------------------------------------------------------- */

/* Jobs not yet started are cancelled; the loop stops once every job's done has run. */
static void on_stop_signal(uv_async_t *h) {
    dsla_actor_t *a = h->loop->data;
    a->stopping = true;
    for (work_t *w = a->works; w; w = w->next)
        uv_cancel((uv_req_t *)&w->req);
    if (!a->works) uv_stop(h->loop);
}

static void on_guard_poll(uv_poll_t *h, int status, int events) {
    (void)status;
    (void)events;
    dsla_actor_t *a = h->loop->data;
    dsla_conn_guard_drain(a->guard);
}

/* A mailbox bound to TCP accepts at most dsla_conn_guard_limit() connections at once. */
static dsla_status_t guard_mailbox(dsla_actor_t *a, const dsla_actor_def_t *def) {
    bool tcp = false;
    for (int i = 0; i < DSLA_ACTOR_BIND_MAX && def->bind[i]; i++)
        tcp = tcp || strncmp(def->bind[i], "tcp://", 6) == 0;
    if (!tcp) return DSLA_OK;
    int fd = -1;
    DSLA_TRY(dsla_conn_guard_open(&a->guard, a->ctx->zmq, a->router, a->name,
                                  dsla_conn_guard_limit(), &fd));
    int rc = uv_poll_init(&a->loop, &a->guard_poll, fd);
    if (rc == 0) rc = uv_poll_start(&a->guard_poll, UV_READABLE, on_guard_poll);
    if (rc != 0)
        return dsla_error(DSLA_ERR_INTERNAL, "polling the connection monitor: %s", uv_strerror(rc));
    return DSLA_OK;
}

/* tcp://127.x.x.x:P, tcp://localhost:P, tcp://[::1]:P: what only this host can reach. */
static bool loopback_endpoint(const char *endpoint) {
    const char *host = endpoint + strlen("tcp://");
    const char *colon = strrchr(host, ':');
    size_t len = colon ? (size_t)(colon - host) : strlen(host);
    if (len == 5 && strncmp(host, "[::1]", 5) == 0) return true;
    if (len == 9 && strncmp(host, "localhost", 9) == 0) return true;
    return len > 4 && strncmp(host, "127.", 4) == 0 && strspn(host, "0123456789.") == len;
}

static dsla_status_t open_mailbox(dsla_actor_t *a, const dsla_actor_def_t *def) {
    a->router = zmq_socket(a->ctx->zmq, ZMQ_ROUTER);
    if (!a->router) return zmq_failure(a->name, "zmq_socket(ROUTER)");
    int linger = 0, on = 1, fd = -1, backlog = DSLA_ACTOR_BACKLOG, hwm = DSLA_ACTOR_QUEUE_MAX;
    int64_t max_frame = DSLA_ACTOR_FRAME_MAX;
    size_t fd_len = sizeof fd;
    /* A peer cut off by the network (a host unplugged, a link down), not killed, sends no FIN: its
     * connection would stay open here, holding its routing id, and refuse its reconnection once
     * the network is back (below). libzmq's own ZMTP heartbeats close a connection silent for
     * link_timeout_ms; they run on libzmq's I/O thread, whatever this loop is doing. */
    const int hb_ivl = (int)a->heartbeat_ms, hb_timeout = link_timeout_ms(a);
    /* MANDATORY turns a send to an unknown client into an error instead of a silent drop.
     * ZMQ_ROUTER_HANDOVER stays off (libzmq's default): with it the newest connection claiming a
     * routing id takes the name and every reply meant for it, so anyone who can reach the
     * mailbox could capture a live peer's traffic. Without it a second connection claiming a
     * live id is refused, and a restarted peer gets its name back once the dead one's connection
     * has closed (at once for a killed process: its kernel closes the socket). */
    if (zmq_setsockopt(a->router, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(a->router, ZMQ_ROUTER_MANDATORY, &on, sizeof on) != 0 ||
        zmq_setsockopt(a->router, ZMQ_MAXMSGSIZE, &max_frame, sizeof max_frame) != 0 ||
        zmq_setsockopt(a->router, ZMQ_BACKLOG, &backlog, sizeof backlog) != 0 ||
        zmq_setsockopt(a->router, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(a->router, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(a->router, ZMQ_HEARTBEAT_IVL, &hb_ivl, sizeof hb_ivl) != 0 ||
        zmq_setsockopt(a->router, ZMQ_HEARTBEAT_TIMEOUT, &hb_timeout, sizeof hb_timeout) != 0)
        return zmq_failure(a->name, "mailbox options");
    const dsla_curve_keys_t *keys = a->ctx->keys;
    int server = 1;
    if (keys && (zmq_setsockopt(a->router, ZMQ_CURVE_SERVER, &server, sizeof server) != 0 ||
                 zmq_setsockopt(a->router, ZMQ_CURVE_SECRETKEY, keys->secret_key,
                                DSLA_CURVE_KEY_LEN) != 0 ||
                 zmq_setsockopt(a->router, ZMQ_ZAP_DOMAIN, DSLA_ACTOR_ZAP_DOMAIN,
                                strlen(DSLA_ACTOR_ZAP_DOMAIN)) != 0))
        return zmq_failure(a->name, "CURVE server options");
    for (int i = 0; i < DSLA_ACTOR_BIND_MAX && def->bind[i]; i++) {
        size_t len = sizeof a->endpoints[i];
        if (!keys && !a->ctx->allow_insecure && strncmp(def->bind[i], "tcp://", 6) == 0 &&
            !loopback_endpoint(def->bind[i]))
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "binding mailbox to %s: beyond loopback a mailbox needs CURVE "
                              "(--curve-keys DIR); --allow-insecure binds it in plaintext",
                              def->bind[i]);
        if (zmq_bind(a->router, def->bind[i]) != 0)
            return dsla_error(
                DSLA_ERR_INVALID_ARGUMENT,
                "binding mailbox to %s: %s (is the address in use or the endpoint misspelt?)",
                def->bind[i], zmq_strerror(zmq_errno()));
        if (zmq_getsockopt(a->router, ZMQ_LAST_ENDPOINT, a->endpoints[i], &len) != 0)
            return zmq_failure(def->bind[i], "ZMQ_LAST_ENDPOINT");
    }
    if (zmq_getsockopt(a->router, ZMQ_FD, &fd, &fd_len) != 0) return zmq_failure(a->name, "ZMQ_FD");
    int rc = uv_poll_init(&a->loop, &a->router_poll, fd);
    if (rc == 0) rc = uv_poll_start(&a->router_poll, UV_READABLE, on_poll);
    if (rc != 0) return dsla_error(DSLA_ERR_INTERNAL, "polling the mailbox: %s", uv_strerror(rc));
    return guard_mailbox(a, def);
}

static dsla_status_t actor_open(dsla_actor_t *a, const dsla_actor_def_t *def) {
    int rc = uv_loop_init(&a->loop);
    if (rc != 0) return dsla_error(DSLA_ERR_INTERNAL, "uv_loop_init: %s", uv_strerror(rc));
    a->loop_open = true;
    a->loop.data = a;
    rc = uv_async_init(&a->loop, &a->stop, on_stop_signal);
    if (rc == 0) rc = uv_async_init(&a->loop, &a->post_async, on_post);
    if (rc != 0) return dsla_error(DSLA_ERR_INTERNAL, "uv_async_init: %s", uv_strerror(rc));
    uv_idle_init(&a->loop, &a->idle);
    uv_timer_init(&a->loop, &a->heartbeat);
    DSLA_TRY(open_mailbox(a, def));
    for (size_t i = 0; i < def->n_peers; i++)
        DSLA_TRY(dsla_actor_connect(a, def->peers[i].name, def->peers[i].endpoint));
    uv_timer_start(&a->heartbeat, on_heartbeat, a->heartbeat_ms, a->heartbeat_ms);
    return DSLA_OK;
}

static void close_handle(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* libuv handles first (they watch ZeroMQ's descriptors), then the sockets. */
static void actor_close(dsla_actor_t *a) {
    if (a->loop_open) {
        while (a->timers)
            timer_close(a, a->timers);
        for (int i = 0; i < DSLA_ACTOR_PEER_MAX; i++)
            close_dealer(&a->peers[i]);
        uv_walk(&a->loop, close_handle, NULL);
        uv_run(&a->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&a->loop) != 0)
            dsla_log_error("actor %s: a libuv handle outlived its loop", a->name);
    }
    dsla_conn_guard_close(&a->guard);
    if (a->router) zmq_close(a->router);
    watch_free(&a->watched);
}

static void *actor_main(void *arg) {
    dsla_actor_t *a = arg;
    a->self = pthread_self();
    dsla_status_t st = actor_open(a, a->def);
    pthread_mutex_lock(&a->mu);
    a->start_status = st;
    if (st != DSLA_OK) snprintf(a->start_error, sizeof a->start_error, "%s", dsla_last_error());
    a->ready = true;
    a->def = NULL;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    if (st == DSLA_OK) {
        if (a->on_start) a->on_start(a, a->user);
        drain_all(a);
        uv_run(&a->loop, UV_RUN_DEFAULT);
        run_posts(a);
    }
    /* From here posts are refused; those that raced in still run, before on_stop. */
    pthread_mutex_lock(&a->post_mu);
    a->post_closed = true;
    pthread_mutex_unlock(&a->post_mu);
    if (st == DSLA_OK) {
        run_posts(a);
        if (a->on_stop) a->on_stop(a, a->user);
    }
    actor_close(a);
    return NULL;
}

dsla_status_t dsla_actor_create(dsla_actor_t **out, const dsla_actor_def_t *def) {
    *out = NULL;
    if (!def->name || !valid_name(def->name, strlen(def->name)))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "actor name '%.16s' must be 1 to %d printable bytes without spaces",
                          def->name ? def->name : "(null)", DSLA_PROTO_NAME_MAX);
    if (!def->ctx) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "actor %s: no context", def->name);
    if (def->n_peers > DSLA_ACTOR_PEER_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "actor %s: %zu peers, above the limit of %d",
                          def->name, def->n_peers, DSLA_ACTOR_PEER_MAX);
    dsla_actor_t *a = calloc(1, sizeof *a);
    if (!a) return dsla_error_oom("actor %s", def->name);
    snprintf(a->name, sizeof a->name, "%s", def->name);
    a->ctx = def->ctx;
    a->on_start = def->on_start;
    a->on_stop = def->on_stop;
    a->on_peer = def->on_peer;
    a->user = def->user;
    a->heartbeat_ms = def->heartbeat_ms ? def->heartbeat_ms : DSLA_ACTOR_HEARTBEAT_MS;
    if (def->n_handlers) {
        a->handlers = malloc(def->n_handlers * sizeof *a->handlers);
        if (!a->handlers) {
            free(a);
            return dsla_error_oom("actor %s", def->name);
        }
        memcpy(a->handlers, def->handlers, def->n_handlers * sizeof *a->handlers);
        a->n_handlers = def->n_handlers;
    }
    if (def->n_role_rules) {
        a->role_rules = malloc(def->n_role_rules * sizeof *a->role_rules);
        if (!a->role_rules) {
            free(a->handlers);
            free(a);
            return dsla_error_oom("actor %s", def->name);
        }
        memcpy(a->role_rules, def->role_rules, def->n_role_rules * sizeof *a->role_rules);
        a->n_role_rules = def->n_role_rules;
    }
    a->def = def;
    pthread_mutex_init(&a->mu, NULL);
    pthread_mutex_init(&a->post_mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    dsla_status_t st = DSLA_OK;
    if (pthread_create(&a->thread, NULL, actor_main, a) != 0) {
        st = dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "actor %s: cannot start a thread", a->name);
    } else {
        pthread_mutex_lock(&a->mu);
        while (!a->ready)
            pthread_cond_wait(&a->cv, &a->mu);
        pthread_mutex_unlock(&a->mu);
        if (a->start_status != DSLA_OK) {
            pthread_join(a->thread, NULL);
            st = dsla_error(a->start_status, "actor %s: %s", a->name, a->start_error);
        }
    }
    if (st != DSLA_OK) {
        pthread_mutex_destroy(&a->post_mu);
        pthread_mutex_destroy(&a->mu);
        pthread_cond_destroy(&a->cv);
        free(a->handlers);
        free(a->role_rules);
        free(a);
        return st;
    }
    *out = a;
    return DSLA_OK;
}

void dsla_actor_destroy(dsla_actor_t **a) {
    if (!a || !*a) return;
    dsla_actor_t *x = *a;
    if (on_actor_thread(x)) {
        dsla_log_error("actor %s: destroy called on its own thread; ignored", x->name);
        return;
    }
    uv_async_send(&x->stop);
    pthread_join(x->thread, NULL);
    pthread_mutex_destroy(&x->post_mu);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    free(x->handlers);
    free(x->role_rules);
    free(x);
    *a = NULL;
}

const char *dsla_actor_endpoint(const dsla_actor_t *a, int i) {
    if (i < 0 || i >= DSLA_ACTOR_BIND_MAX || !a->endpoints[i][0]) return NULL;
    return a->endpoints[i];
}

const char *dsla_actor_name(const dsla_actor_t *a) {
    return a->name;
}

void *dsla_actor_user(const dsla_actor_t *a) {
    return a->user;
}

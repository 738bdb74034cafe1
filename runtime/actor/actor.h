/* An actor: one OS thread running one libuv loop around one ZeroMQ ROUTER mailbox (DESIGN.md 7).
 *
 * The loop polls the mailbox and one DEALER per connected peer, decodes each frame's envelope
 * (proto/proto.h) and calls the handler registered for its type. Frames that do not decode, and
 * types without a handler, are answered with ERROR, never a crash; an ERROR nobody handles is only
 * logged, so that two actors cannot bounce errors forever. Heartbeats follow zguide's Paranoid
 * Pirate: every interval an actor PINGs each peer it connected to and answers PINGs with PONG; any
 * message from a peer proves it alive, and a peer silent for DSLA_ACTOR_HEARTBEAT_LIVENESS
 * intervals is reported dead through on_peer. A dead peer this actor connected to gets a fresh
 * DEALER (what was queued for it is dropped) and keeps being pinged, so a restart is noticed.
 *
 * Contract: everything but dsla_actor_create, dsla_actor_destroy, dsla_actor_endpoint and
 * dsla_actor_post runs on the actor's own thread, from its callbacks (on_start, handlers, timers,
 * posted and work-done callbacks). An actor shares no mutable state with another; it only sends
 * messages.
 *
 * What may run on the loop: a callback runs for microseconds (a decode, a table update, a send).
 * Anything whose time grows with data (reading, hashing or writing a file, a SQLite write, a model
 * step) goes to dsla_actor_work (libuv's worker pool; its done callback comes back to the loop) or
 * to a thread of the caller's own that hands results back with dsla_actor_post. Heartbeats and
 * timers then keep their interval whatever the load. This module knows the envelope but no engine
 * and no body beyond PING, PONG and ERROR. */
#ifndef DSLA_ACTOR_ACTOR_H
#define DSLA_ACTOR_ACTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "runtime/actor/curve.h"
#include "runtime/core/status.h"

/* DESIGN.md section 7: heartbeats every second, a peer missing three is dead. */
#define DSLA_ACTOR_HEARTBEAT_MS 1000
#define DSLA_ACTOR_HEARTBEAT_LIVENESS 3
/* Endpoints one actor may bind, and peers it may connect to: a node runs few actors. Peers that
 * only heartbeat this actor from outside (clients) are tracked without a limit. */
#define DSLA_ACTOR_BIND_MAX 4
#define DSLA_ACTOR_PEER_MAX 64
/* Pending TCP connections a mailbox's listener queues (ZMQ_BACKLOG; the kernel caps it at
 * net.core.somaxconn): ZeroMQ's default of 100 drops the SYNs of a burst of clients, whose
 * connections then come seconds later, after the clients' own heartbeats have given up. */
#define DSLA_ACTOR_BACKLOG 4096
/* Messages queued per connection each way (ZMQ_SNDHWM / ZMQ_RCVHWM) before a send reports a full
 * queue: a replica streaming 300 sequences on a GPU sends ~15,000 TOKENs a second to its gateway,
 * so ZeroMQ's default of 1,000 overflowed whenever the gateway's loop paused for 70 ms (measured:
 * 270 of 8,954 streams cut on an H200). 65,536 is seconds of such traffic in a few MB. */
#define DSLA_ACTOR_QUEUE_MAX 65536
/* The largest frame a socket takes (ZMQ_MAXMSGSIZE): the envelope's own limit. ZeroMQ refuses a
 * longer one from its length prefix and drops the connection, before any of it is buffered, so
 * a peer cannot make this process hold gigabytes to be refused afterwards. (inproc:// frames are
 * not checked by ZeroMQ; they come from this process.) */
#define DSLA_ACTOR_FRAME_MAX DSLA_PROTO_FRAME_MAX
/* ZMQ_LAST_ENDPOINT of a tcp bind: "tcp://" + an IPv6 address + ":port" fits easily. */
#define DSLA_ACTOR_ENDPOINT_MAX 256

/* The process's ZeroMQ context: inproc:// endpoints only reach actors of the same context. Destroy
 * it after every actor created on it. */
typedef struct dsla_actor_ctx dsla_actor_ctx_t;
dsla_status_t dsla_actor_ctx_create(dsla_actor_ctx_t **out);
void dsla_actor_ctx_destroy(dsla_actor_ctx_t **ctx);
/* Turns CURVE on for every tcp:// link of the actors created on ctx afterwards (call it before
 * the first): each mailbox is a CURVE server with keys' secret key; each DEALER to a tcp://
 * endpoint a CURVE client with keys' keypair, refused at connect unless known_servers names the
 * endpoint's key; and a ZAP handler (a thread of the context's, answering one lookup per
 * handshake) accepts only the public keys in keys (authorized_keys and its own), whose role and
 * name then come with every message (dsla_actor_msg_t.role and key_name). inproc:// links stay
 * as they are: they never leave the process. keys is copied. UNSUPPORTED when libzmq lacks
 * CURVE. */
dsla_status_t dsla_actor_ctx_secure(dsla_actor_ctx_t *ctx, const dsla_curve_keys_t *keys);
/* Without CURVE a mailbox refuses to bind a tcp:// address beyond loopback (127.0.0.0/8, ::1,
 * localhost), as HTTP does without a key; this lets it (dsla-serve --allow-insecure). */
void dsla_actor_ctx_allow_insecure(dsla_actor_ctx_t *ctx);

typedef struct dsla_actor dsla_actor_t;

/* One received message, valid only during the handler call. */
typedef struct {
    const dsla_proto_envelope_t *env;
    /* Who sent it on the wire: the peer's name (its ZeroMQ routing id), "" for an anonymous
     * client whose routing id is not a printable name. Replies go back the way it came. */
    const char *from;
    /* Who sent it, as CURVE proved (dsla_actor_ctx_secure): its key's role (one DSLA_ROLE_* bit)
     * and name from authorized_keys; 0 and NULL on a link without CURVE (inproc://, plaintext
     * loopback) and on messages from a peer this actor connected to (whose server key CURVE
     * checked instead). A non-client key's name is also its routing id: a message whose routing
     * id differs from its key's name never reaches a handler. */
    uint32_t role;
    const char *key_name;
    /* Private: the return route. */
    const void *route_id_;
    size_t route_id_len_;
    int route_peer_;
} dsla_actor_msg_t;

typedef void (*dsla_actor_handler_fn)(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user);
typedef void (*dsla_actor_start_fn)(dsla_actor_t *a, void *user);
/* alive is true when a peer first answers or comes back, false once it has been silent for
 * DSLA_ACTOR_HEARTBEAT_LIVENESS intervals (or never answered within them). */
typedef void (*dsla_actor_peer_fn)(dsla_actor_t *a, const char *peer, bool alive, void *user);
typedef void (*dsla_actor_timer_fn)(dsla_actor_t *a, void *user);

typedef struct {
    uint32_t type;
    dsla_actor_handler_fn fn;
} dsla_actor_handler_t;

/* With CURVE on, a message of this type through the mailbox must come from a key holding one of
 * the DSLA_ROLE_* bits in roles; anything else is answered PERMISSION_DENIED before its handler
 * runs. Types without a rule take any authorized key. Messages from peers this actor connected
 * to (whose server key CURVE checked), and links without CURVE, are not checked here. */
typedef struct {
    uint32_t type;
    uint32_t roles;
} dsla_actor_role_rule_t;

typedef struct {
    const char *name;     /* peer's name as this actor addresses it */
    const char *endpoint; /* "inproc://serving0", "tcp://127.0.0.1:7072" */
} dsla_actor_peer_def_t;

typedef struct {
    const char *name; /* unique per cluster, at most DSLA_PROTO_NAME_MAX printable bytes */
    dsla_actor_ctx_t *ctx;
    const char *bind[DSLA_ACTOR_BIND_MAX]; /* mailbox endpoints; unused slots NULL; "tcp://h:*"
                                              takes an ephemeral port (dsla_actor_endpoint) */
    const dsla_actor_peer_def_t *peers;    /* connected before on_start */
    size_t n_peers;
    /* PING and PONG handlers replace the built-in answer (a PING handler must reply itself) and
     * also see heartbeats, which carry id 0; liveness is recorded before any handler runs.
     * Copied at create. */
    const dsla_actor_handler_t *handlers;
    size_t n_handlers;
    const dsla_actor_role_rule_t *role_rules; /* copied at create */
    size_t n_role_rules;
    dsla_actor_start_fn on_start; /* first callback on the actor's thread, after binds/connects */
    dsla_actor_start_fn on_stop;  /* last callback on the actor's thread */
    dsla_actor_peer_fn on_peer;
    void *user;            /* passed to every callback */
    uint32_t heartbeat_ms; /* 0: DSLA_ACTOR_HEARTBEAT_MS; tests use tens of milliseconds */
} dsla_actor_def_t;

/* Starts the thread and returns once its mailbox is bound and its peers connected, or with the
 * reason it could not (a bind that failed names the endpoint). */
dsla_status_t dsla_actor_create(dsla_actor_t **out, const dsla_actor_def_t *def);
/* Stops the loop (through a uv_async the thread listens to), runs on_stop, closes every handle and
 * socket, joins the thread, frees, NULLs *a. Harmless on NULL. Never from the actor's own thread.
 */
void dsla_actor_destroy(dsla_actor_t **a);

/* The endpoint of bind slot i as bound (a tcp wildcard port resolved); NULL for an unused slot.
 * Any thread, after create. */
const char *dsla_actor_endpoint(const dsla_actor_t *a, int i);
const char *dsla_actor_name(const dsla_actor_t *a);
/* The def's user pointer: what posted and work-done callbacks, whose own user is the job, reach
 * their actor's state by. */
void *dsla_actor_user(const dsla_actor_t *a);

/* Connects a DEALER to a peer's mailbox and starts heartbeating it. ZeroMQ queues messages until
 * the connection is up, so sending right after connecting is fine. */
dsla_status_t dsla_actor_connect(dsla_actor_t *a, const char *peer, const char *endpoint);

/* Sends one envelope {type, id, src: this actor, dst, body} to dst: through the DEALER when dst is
 * a connected peer, else through the mailbox to the client of that routing id. Never blocks: a full
 * queue is DSLA_ERR_RESOURCE_EXHAUSTED, an unknown destination DSLA_ERR_NOT_FOUND. */
dsla_status_t dsla_actor_send(dsla_actor_t *a, const char *dst, uint32_t type, uint64_t id,
                              const void *body, size_t body_len);
/* Sends back along msg's route with msg's correlation id. */
dsla_status_t dsla_actor_reply(dsla_actor_t *a, const dsla_actor_msg_t *msg, uint32_t type,
                               const void *body, size_t body_len);
/* Who sent msg, as far as this actor can vouch for it: the name of the peer whose connection
 * (one this actor opened, to the endpoint it was configured with) the message arrived on; NULL
 * when it came in through the mailbox, where the name in msg->from is the routing id the sender
 * chose for itself. Messages only a configured peer may send (a plan from the controller,
 * tokens from a replica) are checked with this, never with msg->from. */
const char *dsla_actor_msg_peer(const dsla_actor_t *a, const dsla_actor_msg_t *msg);
/* True when msg arrived on this actor's connection to the peer of that name. */
bool dsla_actor_msg_from_peer(const dsla_actor_t *a, const dsla_actor_msg_t *msg, const char *peer);

/* Replies with ERROR {code, message}. */
dsla_status_t dsla_actor_reply_error(dsla_actor_t *a, const dsla_actor_msg_t *msg,
                                     dsla_proto_code_t code, const char *message);

/* A uv_timer on the actor's loop: first after timeout_ms, then every repeat_ms (0: once). Timers
 * live until stopped or until the actor stops. */
typedef struct dsla_actor_timer dsla_actor_timer_t;
dsla_status_t dsla_actor_timer_start(dsla_actor_t *a, uint64_t timeout_ms, uint64_t repeat_ms,
                                     dsla_actor_timer_fn fn, void *user, dsla_actor_timer_t **out);
void dsla_actor_timer_stop(dsla_actor_t *a, dsla_actor_timer_t **t);

/* Runs fn(a, user) on the actor's thread at its loop's next turn. The one call any thread may
 * make: it is how a worker or an engine thread hands results back. Posts from one thread run in
 * their order. Once the actor has stopped it returns DSLA_ERR_CANCELLED and fn never runs (the
 * caller still owns user); every post accepted before the stop runs before on_stop. */
typedef void (*dsla_actor_post_fn)(dsla_actor_t *a, void *user);
dsla_status_t dsla_actor_post(dsla_actor_t *a, dsla_actor_post_fn fn, void *user);

/* Runs work(user) on libuv's worker pool, then done(a, user, cancelled) on the actor's thread.
 * work must not touch the actor (no send, no timers): it gets only user. When the actor stops,
 * jobs not yet started are cancelled (work never runs, done sees cancelled true); done always runs,
 * before on_stop, so user is freed in exactly one place. From the actor's thread only. The pool is
 * libuv's (UV_THREADPOOL_SIZE threads, 4 by default, shared by the process): long-running loops
 * (an engine) take a thread of their own instead. */
typedef void (*dsla_actor_work_fn)(void *user);
typedef void (*dsla_actor_done_fn)(dsla_actor_t *a, void *user, bool cancelled);
dsla_status_t dsla_actor_work(dsla_actor_t *a, dsla_actor_work_fn work, dsla_actor_done_fn done,
                              void *user);

/* Clients watched through their heartbeats (peers that found this actor), for tests and status. */
size_t dsla_actor_watched(const dsla_actor_t *a);

/* Whether name's heartbeats reach this actor now: a peer it connected to that answers, or a client
 * that pings it. What a message other than a PING claims about its sender is not proof: a
 * cut-off sender's last report may arrive after its death was noticed. From the actor's thread. */
bool dsla_actor_hears(const dsla_actor_t *a, const char *name);

#endif

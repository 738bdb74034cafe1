/* The client stub: one DEALER, one request at a time, heartbeats while it waits (dsla_client.h).
 * dsla_client_generate is dsla_client_start and a loop of dsla_client_next; every wait goes
 * through wait_frame, which pings the server and watches its silence. */
#include "proto/dsla_client.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <zmq.h>

#include "runtime/core/clock.h"
#include "runtime/core/secret.h"

enum { DEFAULT_HEARTBEAT_MS = 1000, ENDPOINT_MAX = 256 };
/* a Z85 CURVE key and its NUL */
enum { CURVE_KEY_TEXT = 41 };

struct dsla_client {
    void *zctx;
    bool own_zctx;
    void *sock;
    char endpoint[ENDPOINT_MAX];
    char name[DSLA_PROTO_NAME_MAX + 1];
    uint64_t next_id;
    uint32_t heartbeat_ms;
    int retries;
    bool curve;
    bool watch_drops;
    void *monitor; /* with watch_drops: a PAIR receiving the socket's DISCONNECTED events */
    char curve_server[CURVE_KEY_TEXT], curve_public[CURVE_KEY_TEXT], curve_secret[CURVE_KEY_TEXT];

    /* The request or STATUS in flight. */
    bool active;
    uint64_t id;
    dsla_proto_buf_t body; /* the encoded GENERATE, kept for retries */
    int64_t deadline;      /* -1: none */
    int retries_left;
    bool got_token;
    bool send_failed; /* the last send did not leave; its message is in send_error */
    char send_error[DSLA_PROTO_MESSAGE_MAX + 1];
    int64_t last_heard, next_ping;
    int watch_fd;             /* the caller's connection, watched while a request runs; -1: none */
    dsla_proto_token_t piece; /* what dsla_client_next hands out */
};

/* Routing ids are unique within the process: a ROUTER refuses a second connection that claims an
 * id still in use, and a closed client's connection may linger on the server's side. */
static atomic_uint sockets_opened;

static void close_socket(dsla_client_t *c) {
    if (c->monitor) zmq_close(c->monitor);
    if (c->sock) zmq_close(c->sock);
    c->monitor = c->sock = NULL;
}

/* With watch_drops, a PAIR connected to sock's monitor: DISCONNECTED events only (a session that
 * was up and dropped; failed connection attempts are heartbeat silence). */
static dsla_status_t open_monitor(dsla_client_t *c) {
    char at[DSLA_PROTO_NAME_MAX + 64];
    snprintf(at, sizeof at, "inproc://dsla-client-monitor-%s", c->name);
    c->monitor = zmq_socket(c->zctx, ZMQ_PAIR);
    if (!c->monitor || zmq_socket_monitor(c->sock, at, ZMQ_EVENT_DISCONNECTED) != 0 ||
        zmq_connect(c->monitor, at) != 0)
        return dsla_error(DSLA_ERR_INTERNAL, "client: monitoring its socket: %s",
                          zmq_strerror(zmq_errno()));
    return DSLA_OK;
}

/* Whether the monitor reported a drop since the last call; reads every event waiting. */
static bool dropped(dsla_client_t *c) {
    bool any = false;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->monitor, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return any;
        }
        any = true; /* the event's first frame (its number and value); the address follows */
        while (zmq_msg_more(&m)) {
            zmq_msg_close(&m);
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, c->monitor, 0) < 0) break;
        }
        zmq_msg_close(&m);
    }
}

/* A fresh DEALER under a fresh routing id. */
static dsla_status_t open_socket(dsla_client_t *c) {
    close_socket(c);
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    if (!c->sock)
        return dsla_error(DSLA_ERR_INTERNAL, "client: zmq_socket: %s", zmq_strerror(zmq_errno()));
    /* 64 random bits besides the pid and counter: a mailbox refuses a second connection under a
     * live name, so a guessable name (the pid is in ps) could be claimed first and this client's
     * requests refused */
    snprintf(c->name, sizeof c->name, "client-%ld-%u-%016llx", (long)getpid(),
             atomic_fetch_add(&sockets_opened, 1) + 1, (unsigned long long)dsla_secret_u64());
    int linger = 0;
    if (zmq_setsockopt(c->sock, ZMQ_ROUTING_ID, c->name, strlen(c->name)) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        (c->curve &&
         (zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, c->curve_server, CURVE_KEY_TEXT - 1) != 0 ||
          zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, c->curve_public, CURVE_KEY_TEXT - 1) != 0 ||
          zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, c->curve_secret, CURVE_KEY_TEXT - 1) != 0)))
        return dsla_error(DSLA_ERR_INTERNAL, "client: socket options: %s",
                          zmq_strerror(zmq_errno()));
    if (c->watch_drops) DSLA_TRY(open_monitor(c));
    if (zmq_connect(c->sock, c->endpoint) != 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "client: cannot connect to '%s': %s",
                          c->endpoint, zmq_strerror(zmq_errno()));
    return DSLA_OK;
}

dsla_status_t dsla_client_connect(dsla_client_t **out, const char *endpoint,
                                  const dsla_client_options_t *options) {
    *out = NULL;
    if (!endpoint || strlen(endpoint) >= ENDPOINT_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "client: endpoint missing or longer than %d",
                          ENDPOINT_MAX - 1);
    dsla_client_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("client");
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    c->watch_fd = -1;
    c->heartbeat_ms =
        options && options->heartbeat_ms ? options->heartbeat_ms : DEFAULT_HEARTBEAT_MS;
    c->retries = options && options->retries > 0 ? options->retries : 0;
    c->watch_drops = options && options->watch_drops;
    c->zctx = options ? options->zmq_context : NULL;
    if (options &&
        (options->curve_server_key || options->curve_public_key || options->curve_secret_key)) {
        const char *keys[3] = {options->curve_server_key, options->curve_public_key,
                               options->curve_secret_key};
        for (int i = 0; i < 3; i++)
            if (!keys[i] || strlen(keys[i]) != CURVE_KEY_TEXT - 1) {
                free(c);
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "client: CURVE needs the server's public key and a keypair, "
                                  "each %d characters of Z85 text",
                                  CURVE_KEY_TEXT - 1);
            }
        c->curve = true;
        snprintf(c->curve_server, sizeof c->curve_server, "%s", keys[0]);
        snprintf(c->curve_public, sizeof c->curve_public, "%s", keys[1]);
        snprintf(c->curve_secret, sizeof c->curve_secret, "%s", keys[2]);
    }
    if (!c->zctx) {
        c->zctx = zmq_ctx_new();
        c->own_zctx = true;
    }
    dsla_status_t st = c->zctx ? open_socket(c)
                               : dsla_error(DSLA_ERR_INTERNAL, "client: zmq_ctx_new: %s",
                                            zmq_strerror(zmq_errno()));
    if (st != DSLA_OK) {
        dsla_client_close(&c);
        return st;
    }
    *out = c;
    return DSLA_OK;
}

void dsla_client_close(dsla_client_t **c) {
    if (!c || !*c) return;
    close_socket(*c);
    if ((*c)->zctx && (*c)->own_zctx) zmq_ctx_term((*c)->zctx);
    dsla_proto_buf_free(&(*c)->body);
    memset((*c)->curve_secret, 0, sizeof(*c)->curve_secret);
    free(*c);
    *c = NULL;
}

static dsla_status_t send_msg(dsla_client_t *c, uint32_t type, uint64_t id,
                              const dsla_proto_buf_t *body) {
    dsla_proto_envelope_t env = {.version = DSLA_PROTO_VERSION,
                                 .type = type,
                                 .id = id,
                                 .body = body->data,
                                 .body_len = body->len};
    snprintf(env.src, sizeof env.src, "%s", c->name);
    snprintf(env.dst, sizeof env.dst, "serving");
    dsla_proto_buf_t frame;
    DSLA_TRY(dsla_proto_envelope_encode(&env, &frame));
    int rc = zmq_send(c->sock, frame.data, frame.len, ZMQ_DONTWAIT);
    int err = zmq_errno();
    dsla_proto_buf_free(&frame);
    if (rc < 0)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "client: sending to %s: %s", c->endpoint,
                          zmq_strerror(err));
    return DSLA_OK;
}

static void send_ping(dsla_client_t *c) {
    dsla_proto_ping_t ping = {.seq = 0, .sent_ns = dsla_clock_ns(), .interval_ms = c->heartbeat_ms};
    dsla_proto_buf_t body;
    if (dsla_proto_ping_encode(&ping, &body) == DSLA_OK) {
        send_msg(c, DSLA_MSG_PING, 0, &body); /* a PING that cannot leave is silence all the same */
        dsla_proto_buf_free(&body);
    }
}

static void send_cancel(dsla_client_t *c, uint64_t id) {
    dsla_proto_cancel_t cancel = {.request = id};
    dsla_proto_buf_t body;
    if (dsla_proto_cancel_encode(&cancel, &body) == DSLA_OK) {
        send_msg(c, DSLA_MSG_CANCEL, id, &body);
        dsla_proto_buf_free(&body);
    }
}

static dsla_proto_code_t fail(dsla_client_result_t *r, dsla_proto_code_t code, const char *msg) {
    r->code = code;
    size_t n = strnlen(msg, sizeof r->message - 1); /* a long message is cut, not refused */
    memcpy(r->message, msg, n);
    r->message[n] = '\0';
    return code;
}

static int64_t min64(int64_t a, int64_t b) {
    return a < b ? a : b;
}

/* Sends one message of a fresh id and restarts the liveness clock; a failure to send is kept for
 * the wait that follows, so that it is retried like any other UNAVAILABLE. */
static void send_fresh(dsla_client_t *c, uint32_t type, const dsla_proto_buf_t *body) {
    if (c->monitor) dropped(c); /* a drop before this message is none of its business */
    c->id = ++c->next_id;
    c->last_heard = (int64_t)dsla_clock_ms();
    c->next_ping = c->last_heard + c->heartbeat_ms;
    c->send_failed = send_msg(c, type, c->id, body) != DSLA_OK;
    if (c->send_failed) snprintf(c->send_error, sizeof c->send_error, "%s", dsla_last_error());
}

/* Whether the watched connection, found readable, was closed by its peer (end of file or an
 * error). Bytes waiting (a pipelined request) are no close: the watch stops, so that they do not
 * wake every poll. */
static bool watched_closed(dsla_client_t *c) {
    char byte;
    ssize_t n = recv(c->watch_fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return true;
    if (n > 0) c->watch_fd = -1;
    return false;
}

/* Waits for the next frame of the message in flight (c->id), pinging the server meanwhile. OK
 * with *frame holding it (the caller closes it) and env decoded from it; otherwise the failure in
 * r: DEADLINE_EXCEEDED, or UNAVAILABLE after DSLA_CLIENT_LIVENESS silent intervals. */
static dsla_proto_code_t wait_frame(dsla_client_t *c, zmq_msg_t *frame, dsla_proto_envelope_t *env,
                                    dsla_client_result_t *r) {
    if (c->send_failed) return fail(r, DSLA_CODE_UNAVAILABLE, c->send_error);
    int64_t hb = c->heartbeat_ms, silent_limit = hb * DSLA_CLIENT_LIVENESS;
    char msg[DSLA_PROTO_MESSAGE_MAX + 1];
    for (;;) {
        int64_t now = (int64_t)dsla_clock_ms();
        if (c->deadline >= 0 && now >= c->deadline)
            return fail(r, DSLA_CODE_DEADLINE_EXCEEDED, "client: the request's deadline passed");
        if (now - c->last_heard >= silent_limit) {
            snprintf(msg, sizeof msg, "client: no answer from %s for %lld ms", c->endpoint,
                     (long long)(now - c->last_heard));
            return fail(r, DSLA_CODE_UNAVAILABLE, msg);
        }
        if (now >= c->next_ping) {
            send_ping(c);
            c->next_ping = now + hb;
        }
        int64_t wake = min64(c->next_ping, c->last_heard + silent_limit);
        if (c->deadline >= 0) wake = min64(wake, c->deadline);
        zmq_pollitem_t items[3] = {{.socket = c->sock, .events = ZMQ_POLLIN}};
        int n_items = 1, watch_at = -1, monitor_at = -1;
        if (c->watch_fd >= 0) {
            watch_at = n_items;
            items[n_items++] = (zmq_pollitem_t){.fd = c->watch_fd, .events = ZMQ_POLLIN};
        }
        if (c->monitor) {
            monitor_at = n_items;
            items[n_items++] = (zmq_pollitem_t){.socket = c->monitor, .events = ZMQ_POLLIN};
        }
        int n = zmq_poll(items, n_items, (long)(wake > now ? wake - now : 0));
        if (n < 0 && zmq_errno() == ETERM)
            return fail(r, DSLA_CODE_UNAVAILABLE, "client: its ZeroMQ context was shut down");
        if (n <= 0) continue; /* a timeout, or EINTR: the checks above decide */
        if (watch_at > 0 && items[watch_at].revents && watched_closed(c))
            return fail(r, DSLA_CODE_CANCELLED, "client: the caller's connection closed");
        if (monitor_at > 0 && items[monitor_at].revents && dropped(c)) {
            snprintf(msg, sizeof msg, "client: the connection to %s dropped", c->endpoint);
            return fail(r, DSLA_CODE_UNAVAILABLE, msg);
        }
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        zmq_msg_init(frame);
        if (zmq_msg_recv(frame, c->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(frame);
            continue;
        }
        c->last_heard = (int64_t)dsla_clock_ms();
        if (dsla_proto_envelope_decode(zmq_msg_data(frame), zmq_msg_size(frame), env) == DSLA_OK &&
            env->id == c->id)
            return DSLA_CODE_OK;
        zmq_msg_close(frame); /* a heartbeat answer, or the tail of an earlier request */
    }
}

/* An ERROR frame's code and message into r. */
static dsla_proto_code_t read_error(const dsla_proto_envelope_t *env, dsla_client_result_t *r) {
    dsla_proto_error_t e;
    if (dsla_proto_error_decode(env->body, env->body_len, &e) == DSLA_OK)
        return fail(r, (dsla_proto_code_t)e.code, e.message);
    char msg[DSLA_PROTO_MESSAGE_MAX + 1];
    snprintf(msg, sizeof msg, "client: a malformed ERROR: %s", dsla_last_error());
    return fail(r, DSLA_CODE_INTERNAL, msg);
}

static void finish_request(dsla_client_t *c) {
    c->active = false;
    c->watch_fd = -1;
    dsla_proto_buf_free(&c->body);
}

dsla_status_t dsla_client_start(dsla_client_t *c, const dsla_proto_generate_t *request,
                                int deadline_ms) {
    finish_request(c);
    dsla_proto_generate_t req = *request;
    req.stream = true;
    DSLA_TRY(dsla_proto_generate_encode(&req, &c->body));
    c->active = true;
    c->got_token = false;
    c->retries_left = c->retries;
    c->deadline = deadline_ms > 0 ? (int64_t)dsla_clock_ms() + deadline_ms : -1;
    send_fresh(c, DSLA_MSG_GENERATE, &c->body);
    return DSLA_OK;
}

bool dsla_client_next(dsla_client_t *c, dsla_client_piece_t *piece, dsla_client_result_t *r) {
    if (!c->active) {
        fail(r, DSLA_CODE_INTERNAL, "client: no request was started");
        return false;
    }
    char msg[DSLA_PROTO_MESSAGE_MAX + 1];
    for (;;) {
        zmq_msg_t frame;
        dsla_proto_envelope_t env;
        dsla_proto_code_t code = wait_frame(c, &frame, &env, r);
        if (code == DSLA_CODE_UNAVAILABLE && !c->got_token && c->retries_left > 0) {
            /* nothing of it was streamed, so sending it again cannot repeat a piece */
            c->retries_left--;
            if (open_socket(c) == DSLA_OK) {
                send_fresh(c, DSLA_MSG_GENERATE, &c->body);
                continue;
            }
            code = fail(r, DSLA_CODE_UNAVAILABLE, dsla_last_error());
        }
        if (code != DSLA_CODE_OK) {
            if (code == DSLA_CODE_DEADLINE_EXCEEDED || code == DSLA_CODE_CANCELLED)
                send_cancel(c, c->id);
            finish_request(c);
            return false;
        }
        bool more = false, done = true;
        if (env.type == DSLA_MSG_TOKEN) {
            if (dsla_proto_token_decode(env.body, env.body_len, &c->piece) == DSLA_OK) {
                c->got_token = true;
                *piece = (dsla_client_piece_t){c->piece.token, c->piece.text, c->piece.text_len,
                                               &c->piece};
                more = true;
            } else {
                snprintf(msg, sizeof msg, "client: a malformed TOKEN: %s", dsla_last_error());
                fail(r, DSLA_CODE_INTERNAL, msg);
            }
        } else if (env.type == DSLA_MSG_DONE) {
            dsla_proto_done_t d;
            if (dsla_proto_done_decode(env.body, env.body_len, &d) == DSLA_OK) {
                r->finish = d.finish;
                r->prompt_tokens = d.prompt_tokens;
                r->completion_tokens = d.completion_tokens;
                memcpy(r->replica, d.replica, sizeof r->replica);
                r->plan_id = d.plan_id;
                r->preemptions = d.preemptions;
                if (d.finish == DSLA_PROTO_FINISH_CANCELLED)
                    fail(r, DSLA_CODE_CANCELLED, "the server cancelled the request");
                else
                    fail(r, DSLA_CODE_OK, "");
            } else {
                snprintf(msg, sizeof msg, "client: a malformed DONE: %s", dsla_last_error());
                fail(r, DSLA_CODE_INTERNAL, msg);
            }
        } else if (env.type == DSLA_MSG_ERROR) {
            read_error(&env, r);
        } else {
            done = false; /* another type under this id: not ours to read */
        }
        zmq_msg_close(&frame);
        if (more) return true;
        if (done) {
            finish_request(c);
            return false;
        }
    }
}

void dsla_client_watch(dsla_client_t *c, int fd) {
    if (c->active) c->watch_fd = fd;
}

void dsla_client_cancel(dsla_client_t *c, dsla_client_result_t *result) {
    if (c->active) send_cancel(c, c->id);
    finish_request(c);
    fail(result, DSLA_CODE_CANCELLED, "client: cancelled by the caller");
}

dsla_proto_code_t dsla_client_generate(dsla_client_t *c, const dsla_proto_generate_t *request,
                                       dsla_client_token_fn on_token, void *user, int deadline_ms,
                                       dsla_client_result_t *result) {
    memset(result, 0, sizeof *result);
    if (dsla_client_start(c, request, deadline_ms) != DSLA_OK)
        return fail(result, DSLA_CODE_INVALID_ARGUMENT, dsla_last_error());
    dsla_client_piece_t p;
    while (dsla_client_next(c, &p, result)) {
        if (on_token && on_token(user, p.token, p.text, p.len)) {
            dsla_client_cancel(c, result);
            return fail(result, DSLA_CODE_CANCELLED, "client: cancelled by the token callback");
        }
    }
    return result->code;
}

dsla_proto_code_t dsla_client_call(dsla_client_t *c, uint32_t type, const dsla_proto_buf_t *body,
                                   uint32_t reply_type, dsla_client_decode_fn decode, void *out,
                                   int deadline_ms, dsla_client_result_t *result) {
    memset(result, 0, sizeof *result);
    if (c->active) return fail(result, DSLA_CODE_INTERNAL, "client: a request is in flight");
    c->deadline = deadline_ms > 0 ? (int64_t)dsla_clock_ms() + deadline_ms : -1;
    send_fresh(c, type, body);
    for (;;) {
        zmq_msg_t frame;
        dsla_proto_envelope_t env;
        dsla_proto_code_t code = wait_frame(c, &frame, &env, result);
        if (code != DSLA_CODE_OK) return code;
        bool done = true;
        if (env.type == reply_type) {
            if (decode(env.body, env.body_len, out) == DSLA_OK)
                fail(result, DSLA_CODE_OK, "");
            else
                fail(result, DSLA_CODE_INTERNAL, dsla_last_error());
        } else if (env.type == DSLA_MSG_ERROR) {
            read_error(&env, result);
        } else {
            done = false;
        }
        zmq_msg_close(&frame);
        if (done) return result->code;
    }
}

static dsla_status_t report_decode(const void *body, size_t len, void *out) {
    return dsla_proto_report_decode(body, len, out);
}

dsla_proto_code_t dsla_client_status(dsla_client_t *c, dsla_proto_report_t *report, int deadline_ms,
                                     dsla_client_result_t *result) {
    dsla_proto_buf_t empty = {0};
    return dsla_client_call(c, DSLA_MSG_STATUS, &empty, DSLA_MSG_REPORT, report_decode, report,
                            deadline_ms, result);
}

/* The client stub: one DEALER, one request at a time, heartbeats while it waits (dsla_client.h). */
#include "proto/dsla_client.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

enum { DEFAULT_HEARTBEAT_MS = 1000, ENDPOINT_MAX = 256 };

struct dsla_client {
    void *zctx;
    void *sock;
    char endpoint[ENDPOINT_MAX];
    char name[DSLA_PROTO_NAME_MAX + 1];
    uint64_t next_id;
    uint32_t heartbeat_ms;
    int retries;
};

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Routing ids are unique within the process: a ROUTER refuses a second connection that claims an
 * id still in use, and a closed client's connection may linger on the server's side. */
static atomic_uint sockets_opened;

/* A fresh DEALER under a fresh routing id. */
static dsla_status_t open_socket(dsla_client_t *c) {
    if (c->sock) zmq_close(c->sock);
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    if (!c->sock)
        return dsla_error(DSLA_ERR_INTERNAL, "client: zmq_socket: %s", zmq_strerror(zmq_errno()));
    snprintf(c->name, sizeof c->name, "client-%ld-%u", (long)getpid(),
             atomic_fetch_add(&sockets_opened, 1) + 1);
    int linger = 0;
    if (zmq_setsockopt(c->sock, ZMQ_ROUTING_ID, c->name, strlen(c->name)) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) != 0)
        return dsla_error(DSLA_ERR_INTERNAL, "client: socket options: %s",
                          zmq_strerror(zmq_errno()));
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
    if (!c) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "client: out of memory");
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    c->heartbeat_ms =
        options && options->heartbeat_ms ? options->heartbeat_ms : DEFAULT_HEARTBEAT_MS;
    c->retries = options && options->retries > 0 ? options->retries : 0;
    c->zctx = zmq_ctx_new();
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
    if ((*c)->sock) zmq_close((*c)->sock);
    if ((*c)->zctx) zmq_ctx_term((*c)->zctx);
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
    dsla_proto_ping_t ping = {.seq = 0, .sent_ns = (uint64_t)now_ms() * 1000000u};
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

/* One attempt; *got_token tells the caller whether it may retry an UNAVAILABLE. */
static dsla_proto_code_t attempt(dsla_client_t *c, const dsla_proto_buf_t *body,
                                 dsla_client_token_fn on_token, void *user, int64_t deadline,
                                 dsla_client_result_t *r, bool *got_token) {
    uint64_t id = ++c->next_id;
    if (send_msg(c, DSLA_MSG_GENERATE, id, body) != DSLA_OK)
        return fail(r, DSLA_CODE_UNAVAILABLE, dsla_last_error());
    int64_t hb = c->heartbeat_ms, silent_limit = hb * DSLA_CLIENT_LIVENESS;
    int64_t last_heard = now_ms(), next_ping = last_heard + hb;
    char msg[DSLA_PROTO_MESSAGE_MAX + 128];
    for (;;) {
        int64_t now = now_ms();
        if (deadline >= 0 && now >= deadline) {
            send_cancel(c, id);
            return fail(r, DSLA_CODE_DEADLINE_EXCEEDED, "client: the request's deadline passed");
        }
        if (now - last_heard >= silent_limit) {
            snprintf(msg, sizeof msg, "client: no answer from %s for %lld ms", c->endpoint,
                     (long long)(now - last_heard));
            return fail(r, DSLA_CODE_UNAVAILABLE, msg);
        }
        if (now >= next_ping) {
            send_ping(c);
            next_ping = now + hb;
        }
        int64_t wake = min64(next_ping, last_heard + silent_limit);
        if (deadline >= 0) wake = min64(wake, deadline);
        zmq_pollitem_t item = {.socket = c->sock, .events = ZMQ_POLLIN};
        int n = zmq_poll(&item, 1, (long)(wake > now ? wake - now : 0));
        if (n <= 0) continue; /* a timeout, or EINTR: the checks above decide */
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, c->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&frame);
            continue;
        }
        last_heard = now_ms();
        dsla_proto_envelope_t env;
        dsla_status_t st =
            dsla_proto_envelope_decode(zmq_msg_data(&frame), zmq_msg_size(&frame), &env);
        dsla_proto_code_t done = DSLA_CODE_OK;
        bool finished = false;
        if (st != DSLA_OK || env.id != id) {
            /* a heartbeat answer, or the tail of an earlier request: only proof of life */
        } else if (env.type == DSLA_MSG_TOKEN) {
            dsla_proto_token_t *tok = malloc(sizeof *tok);
            st =
                tok ? dsla_proto_token_decode(env.body, env.body_len, tok) : DSLA_ERR_OUT_OF_MEMORY;
            if (st == DSLA_OK) {
                *got_token = true;
                if (on_token && on_token(user, tok->token, tok->text, tok->text_len)) {
                    send_cancel(c, id);
                    finished = true;
                    done = fail(r, DSLA_CODE_CANCELLED, "client: cancelled by the token callback");
                }
            } else {
                finished = true;
                snprintf(msg, sizeof msg, "client: a malformed TOKEN: %s", dsla_last_error());
                done = fail(r, DSLA_CODE_INTERNAL, msg);
            }
            free(tok);
        } else if (env.type == DSLA_MSG_DONE) {
            dsla_proto_done_t d;
            finished = true;
            if (dsla_proto_done_decode(env.body, env.body_len, &d) == DSLA_OK) {
                r->finish = d.finish;
                r->prompt_tokens = d.prompt_tokens;
                r->completion_tokens = d.completion_tokens;
                done = d.finish == DSLA_PROTO_FINISH_CANCELLED
                           ? fail(r, DSLA_CODE_CANCELLED, "the server cancelled the request")
                           : fail(r, DSLA_CODE_OK, "");
            } else {
                snprintf(msg, sizeof msg, "client: a malformed DONE: %s", dsla_last_error());
                done = fail(r, DSLA_CODE_INTERNAL, msg);
            }
        } else if (env.type == DSLA_MSG_ERROR) {
            dsla_proto_error_t e;
            finished = true;
            if (dsla_proto_error_decode(env.body, env.body_len, &e) == DSLA_OK) {
                done = fail(r, (dsla_proto_code_t)e.code, e.message);
            } else {
                snprintf(msg, sizeof msg, "client: a malformed ERROR: %s", dsla_last_error());
                done = fail(r, DSLA_CODE_INTERNAL, msg);
            }
        }
        zmq_msg_close(&frame);
        if (finished) return done;
    }
}

dsla_proto_code_t dsla_client_generate(dsla_client_t *c, const dsla_proto_generate_t *request,
                                       dsla_client_token_fn on_token, void *user, int deadline_ms,
                                       dsla_client_result_t *result) {
    memset(result, 0, sizeof *result);
    dsla_proto_generate_t req = *request;
    req.stream = true;
    dsla_proto_buf_t body;
    if (dsla_proto_generate_encode(&req, &body) != DSLA_OK)
        return fail(result, DSLA_CODE_INVALID_ARGUMENT, dsla_last_error());
    int64_t deadline = deadline_ms > 0 ? now_ms() + deadline_ms : -1;
    dsla_proto_code_t code = DSLA_CODE_UNAVAILABLE;
    for (int i = 0; i <= c->retries; i++) {
        bool got_token = false;
        code = attempt(c, &body, on_token, user, deadline, result, &got_token);
        if (code != DSLA_CODE_UNAVAILABLE || got_token) break;
        if (i < c->retries && open_socket(c) != DSLA_OK) break;
    }
    dsla_proto_buf_free(&body);
    return code;
}

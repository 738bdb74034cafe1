/* The client stub (DESIGN.md section 8), minimal and gRPC-like: connect to a gateway's (or a
 * serving actor's) mailbox, send one GENERATE, receive its TOKENs through a callback (or pull them
 * one at a time) and its DONE or ERROR; ask a gateway for its REPORT.
 *
 * Contract: one client is used by one thread at a time, for one request at a time;
 * dsla_client_generate (and each dsla_client_next) blocks that thread until the request ends (or
 * its next piece comes), its deadline passes or the server is found gone. While it waits it
 * PINGs the server every heartbeat interval; silence for DSLA_CLIENT_LIVENESS intervals means
 * UNAVAILABLE. A request that got UNAVAILABLE before its first token is sent again (up to
 * `retries` times, over a fresh socket); after a token it is not, since the stream would repeat.
 * The client is not an actor and knows nothing of engines: it speaks proto/ over one ZeroMQ
 * DEALER whose routing id is a printable name, so that the server can stream to it. */
#ifndef DSLA_PROTO_DSLA_CLIENT_H
#define DSLA_PROTO_DSLA_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"

/* Heartbeats missed before the server counts as gone (as actors count, DESIGN.md section 7). */
#define DSLA_CLIENT_LIVENESS 3

typedef struct dsla_client dsla_client_t;

typedef struct {
    uint32_t heartbeat_ms; /* 0: 1000 (DSLA_ACTOR_HEARTBEAT_MS); tests use less */
    int retries;           /* sends again after UNAVAILABLE before the first token; default 0 */
    /* A ZeroMQ context (zmq_ctx_new) to open the socket in, borrowed; NULL: the client makes and
     * owns one. Many clients of one process share one, so that each need not start I/O threads;
     * zmq_ctx_shutdown on it wakes every client blocked in it with UNAVAILABLE. */
    void *zmq_context;
    /* CURVE (40-character Z85 keys, all three or none): the server's public key and this client's
     * keypair, which the server's authorized_keys must list (runtime/actor/curve.h). NULL:
     * plaintext, which a CURVE server refuses. Copied. */
    const char *curve_server_key, *curve_public_key, *curve_secret_key;
    /* A dropped connection ends the request in flight UNAVAILABLE (retried as any UNAVAILABLE),
     * rather than waiting for its answer. Heartbeats alone miss a server that is killed and
     * restarted on its port within DSLA_CLIENT_LIVENESS intervals: the socket reconnects, the
     * successor answers the PINGs, and the request it never heard of waits for its deadline. Off
     * by default: it watches the socket through a monitor, two more ZeroMQ sockets per client,
     * which a process of thousands of clients on one server (the HTTP front end, in the same
     * process as its gateway) does not need. */
    bool watch_drops;
} dsla_client_options_t;

/* One streamed piece; return non-zero to cancel the request (it then ends CANCELLED). text is
 * valid during the call and not NUL-terminated; token is -1 for text-only pieces. */
typedef int (*dsla_client_token_fn)(void *user, int32_t token, const char *text, size_t len);

typedef struct {
    dsla_proto_code_t code;
    char message[DSLA_PROTO_MESSAGE_MAX + 1];  /* why, when code is not OK */
    dsla_proto_finish_t finish;                /* when OK */
    uint32_t prompt_tokens, completion_tokens; /* when OK */
    /* when OK, where the answer came from (DONE's; empty and 0 from an older replica) */
    char replica[DSLA_PROTO_REPLICA_MAX + 1];
    uint64_t plan_id;
    uint32_t preemptions;
} dsla_client_result_t;

/* endpoint: "tcp://127.0.0.1:7070". ZeroMQ connects in the background, so a server that is not
 * up yet is no error here; a malformed endpoint is INVALID_ARGUMENT. options may be NULL. */
dsla_status_t dsla_client_connect(dsla_client_t **out, const char *endpoint,
                                  const dsla_client_options_t *options);
void dsla_client_close(dsla_client_t **c);

/* Runs request (its stream flag is forced on) and returns result->code. deadline_ms <= 0: none;
 * past it the client sends CANCEL and returns DEADLINE_EXCEEDED. */
dsla_proto_code_t dsla_client_generate(dsla_client_t *c, const dsla_proto_generate_t *request,
                                       dsla_client_token_fn on_token, void *user, int deadline_ms,
                                       dsla_client_result_t *result);

/* The same request pulled piece by piece, for callers that cannot hand over their thread to a
 * callback (an HTTP response written as the client asks for more). dsla_client_start sends it
 * (INVALID_ARGUMENT when it does not encode; a send failure shows in the first next);
 * dsla_client_next blocks for the next piece: true with *piece filled (valid until the next call),
 * or false once the request has ended, with result filled as dsla_client_generate fills it.
 * dsla_client_cancel ends a started request early: it sends CANCEL and fills result CANCELLED. */
typedef struct {
    int32_t token; /* -1 for a text-only piece */
    const char *text;
    size_t len;
    const dsla_proto_token_t *frame; /* the whole TOKEN (its logprobs), valid as text is */
} dsla_client_piece_t;

dsla_status_t dsla_client_start(dsla_client_t *c, const dsla_proto_generate_t *request,
                                int deadline_ms);
bool dsla_client_next(dsla_client_t *c, dsla_client_piece_t *piece, dsla_client_result_t *result);
void dsla_client_cancel(dsla_client_t *c, dsla_client_result_t *result);
/* Watches fd (a socket: the caller's own client connection) for the rest of the started request:
 * once its peer closes it, the waiting dsla_client_next sends CANCEL and ends the request
 * CANCELLED, rather than waiting for an answer nobody will read. Bytes arriving on fd (a
 * pipelined request) end the watch instead. */
void dsla_client_watch(dsla_client_t *c, int fd);

/* Sends STATUS to a gateway and waits for its REPORT; returns result->code (an actor without a
 * STATUS handler answers INVALID_ARGUMENT). Never while a request is started. */
dsla_proto_code_t dsla_client_status(dsla_client_t *c, dsla_proto_report_t *report, int deadline_ms,
                                     dsla_client_result_t *result);

/* Decodes a reply body into out; the type's decode function, adapted. */
typedef dsla_status_t (*dsla_client_decode_fn)(const void *body, size_t len, void *out);

/* One request and its one reply: sends body as type and waits for reply_type (decoded into out by
 * decode) or an ERROR; returns result->code. dslactl's ADMIN goes this way. Never while a request
 * is started. */
dsla_proto_code_t dsla_client_call(dsla_client_t *c, uint32_t type, const dsla_proto_buf_t *body,
                                   uint32_t reply_type, dsla_client_decode_fn decode, void *out,
                                   int deadline_ms, dsla_client_result_t *result);

#endif

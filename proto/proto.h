/* proto: the message envelope every actor speaks (DESIGN.md section 7), and the body of each type.
 *
 * A message is one msgpack map {v: protocol version, t: type, id: correlation id, src, dst, body}.
 * dsla_proto_envelope_decode reads the header and hands back the body as the raw msgpack bytes of
 * that map entry, still inside the frame; each type's own decode function reads them. Every type
 * has exactly one encode and one decode function, listed in DSLA_PROTO_TYPES and documented in
 * docs/protocol.md. Decoders treat every frame as hostile: unknown fields are ignored, anything
 * malformed, truncated, oversized or of an unregistered type is a status with a message, never a
 * crash and never an allocation sized by the frame's claims. proto must not know about engines,
 * sockets or threads. */
#ifndef DSLA_PROTO_PROTO_H
#define DSLA_PROTO_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"

/* Bumped on any change an older peer would misread; a frame of another version is refused. */
#define DSLA_PROTO_VERSION 1

/* The largest frame a decoder accepts: a bound on what a hostile peer can make us parse. Weight
 * chunks (section 7) are sized below it. */
#define DSLA_PROTO_FRAME_MAX (16u << 20)
/* Actor names travel in src/dst and as ZeroMQ routing ids; short and printable keeps logs sane. */
#define DSLA_PROTO_NAME_MAX 63
/* The envelope's own bytes around a body: its map, six one-to-four-byte keys, three integers and
 * two names of DSLA_PROTO_NAME_MAX bytes take at most 170; rounded up. */
#define DSLA_PROTO_ENVELOPE_OVERHEAD_MAX 256
/* The largest body an envelope carries: what any envelope around it keeps within
 * DSLA_PROTO_FRAME_MAX. A relay (the gateway forwarding a GENERATE under its own names and ids)
 * checks a body against it before taking any resource, since a frame that fits under the sender's
 * short names may not fit under the relay's. */
#define DSLA_PROTO_BODY_MAX (DSLA_PROTO_FRAME_MAX - DSLA_PROTO_ENVELOPE_OVERHEAD_MAX)
/* An ERROR's message is for people; longer ones are cut on encode and refused on decode. */
#define DSLA_PROTO_MESSAGE_MAX 511

/* The type registry: X(NAME, number, summary). A new type adds one line here, a body struct with
 * an encode/decode pair below, and a section in docs/protocol.md. Numbers are never reused. */
#define DSLA_PROTO_TYPES(X)                                                                        \
    X(PING, 1, "heartbeat probe; answered by PONG with the same body")                             \
    X(PONG, 2, "heartbeat answer")                                                                 \
    X(ERROR, 3, "a request failed: status code and message")                                       \
    X(GENERATE, 4, "client -> serving: generate from a prompt; answered by TOKENs, then DONE")     \
    X(TOKEN, 5, "serving -> client: one streamed token and the text it makes final")               \
    X(DONE, 6, "serving -> client: the generation ended: finish reason and usage")                 \
    X(CANCEL, 7, "client -> serving: cancel a GENERATE of the same client")                        \
    X(STATUS, 8, "client -> gateway: ask for its routing state; empty body, answered by REPORT")   \
    X(REPORT, 9, "gateway -> client: counters and the state of each serving replica")              \
    X(LOAD_REPORT, 10, "serving -> controller: periodic load and the plan new requests get")       \
    X(SET_PLAN, 11, "controller -> serving: adopt a plan; answered by PLAN_ACK or PLAN_NACK")      \
    X(PLAN_ACK, 12, "serving -> controller: the SET_PLAN's plan is adopted at a step boundary")    \
    X(PLAN_NACK, 13, "serving -> controller: the SET_PLAN was refused; the old plan stays")        \
    X(ADMIN, 14, "dslactl -> controller: an admin command; answered by ADMIN_REPLY or ERROR")      \
    X(ADMIN_REPLY, 15, "controller -> dslactl: the command's result, as text for people")          \
    X(LAYER_READY, 16, "distiller -> controller: a layer version is written; verify, catalogue")   \
    X(DISTILL_PROGRESS, 17, "distiller -> controller: the run's state, layer, step and loss")      \
    X(LAYER_FETCH, 18, "serving -> controller: ask for a byte range of a layer version file")      \
    X(LAYER_CHUNK, 19, "controller -> serving: that byte range; ERROR when it cannot be served")   \
    X(PROMPT_SAMPLES, 20, "serving -> distiller: token ids of prompts sampled from live traffic")  \
    X(BCAST_OPEN, 21, "controller -> owner: send a layer version file over a broadcast session")   \
    X(BCAST_ID, 22, "owner -> controller: the session's communicator id (or: ready on the old)")   \
    X(BCAST_JOIN, 23, "controller -> receiver: join a broadcast session and receive its file")     \
    X(BCAST_ACK, 24, "owner/receiver -> controller: the file went out, or landed verified")        \
    X(BCAST_NACK, 25, "owner/receiver -> controller: the session failed here; fall back to chunks")

typedef enum {
#define DSLA_PROTO_TYPE_ENUM_(name, num, summary) DSLA_MSG_##name = num,
    DSLA_PROTO_TYPES(DSLA_PROTO_TYPE_ENUM_)
#undef DSLA_PROTO_TYPE_ENUM_
} dsla_msg_type_t;

/* "PING" for a registered type, NULL otherwise. */
const char *dsla_proto_type_name(uint32_t type);

/* Wire status codes: the client codes of runtime/core/status.h's DSLA_STATUS_TABLE (DESIGN.md
 * section 8), whose numbers are gRPC's, so that tooling reads them without a table and a status
 * travels as its own number. docs/protocol.md ("Status codes") lists them. */
typedef enum {
    DSLA_CODE_OK = DSLA_OK,
    DSLA_CODE_CANCELLED = DSLA_ERR_CANCELLED,
    DSLA_CODE_INVALID_ARGUMENT = DSLA_ERR_INVALID_ARGUMENT,
    DSLA_CODE_DEADLINE_EXCEEDED = DSLA_ERR_DEADLINE_EXCEEDED,
    DSLA_CODE_PERMISSION_DENIED = DSLA_ERR_PERMISSION_DENIED,
    DSLA_CODE_RESOURCE_EXHAUSTED = DSLA_ERR_RESOURCE_EXHAUSTED,
    DSLA_CODE_INTERNAL = DSLA_ERR_INTERNAL,
    DSLA_CODE_UNAVAILABLE = DSLA_ERR_UNAVAILABLE,
    DSLA_CODE_UNAUTHENTICATED = DSLA_ERR_UNAUTHENTICATED,
} dsla_proto_code_t;

/* "INVALID_ARGUMENT"; "UNKNOWN" for a number that is not a client code of this build. */
const char *dsla_proto_code_name(uint32_t code);
/* The wire code a local failure travels as (dsla_status_client_code): a client code as itself,
 * NOT_FOUND, FORMAT and UNSUPPORTED as INVALID_ARGUMENT, OUT_OF_MEMORY as RESOURCE_EXHAUSTED, IO as
 * INTERNAL. */
dsla_proto_code_t dsla_proto_code_from_status(dsla_status_t status);
/* The status a wire code stands for: the same number for a client code, so that
 * dsla_proto_status_from_code(dsla_proto_code_from_status(s)) == s for every client code s;
 * INTERNAL for a number this build does not know. */
dsla_status_t dsla_proto_status_from_code(uint32_t code);

/* An encoded frame: malloc'd bytes owned by the holder, released by dsla_proto_buf_free. Encoders
 * leave it empty ({NULL, 0}) when they fail, so freeing it is always safe. */
typedef struct {
    char *data;
    size_t len;
} dsla_proto_buf_t;

void dsla_proto_buf_free(dsla_proto_buf_t *buf);

typedef struct {
    uint32_t version;
    uint32_t type;
    uint64_t id; /* correlation id: a reply carries its request's; 0 means none */
    char src[DSLA_PROTO_NAME_MAX + 1];
    char dst[DSLA_PROTO_NAME_MAX + 1];
    /* The body's msgpack bytes: on encode, the output of the type's encode function (NULL with
     * body_len 0 encodes an empty map); on decode, a view into the decoded frame. */
    const void *body;
    size_t body_len;
} dsla_proto_envelope_t;

/* Encodes env (version taken from env->version; 0 means DSLA_PROTO_VERSION) into a fresh buffer.
 * A body above DSLA_PROTO_BODY_MAX is refused (INVALID_ARGUMENT naming both), so that no frame
 * leaves that its receiver would refuse without knowing its id. Any type number encodes, so that
 * tests can speak types a peer does not know. */
dsla_status_t dsla_proto_envelope_encode(const dsla_proto_envelope_t *env, dsla_proto_buf_t *out);

/* Decodes one frame. Fails with DSLA_ERR_FORMAT for a malformed frame and DSLA_ERR_UNSUPPORTED for
 * another protocol version or an unregistered type; even then, the header fields that could be
 * read are left in out (id 0 and empty names otherwise), so that an ERROR reply can carry them.
 * out->body points into data, which must outlive its use. */
dsla_status_t dsla_proto_envelope_decode(const void *data, size_t len, dsla_proto_envelope_t *out);

/* PING and PONG share one body: PONG echoes the PING's. */
typedef struct {
    uint64_t seq;     /* the sender's heartbeat counter */
    uint64_t sent_ns; /* the sender's monotonic clock when sent, for round-trip times */
    /* How often the sender pings, so that a receiver beating faster does not count it dead
     * between two of its pings; 0 (or absent, from older peers): unknown, the receiver's own. */
    uint32_t interval_ms;
} dsla_proto_ping_t;

dsla_status_t dsla_proto_ping_encode(const dsla_proto_ping_t *ping, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_ping_decode(const void *body, size_t len, dsla_proto_ping_t *out);

typedef struct {
    uint32_t code; /* a dsla_proto_code_t; numbers from newer peers are kept as they are */
    char message[DSLA_PROTO_MESSAGE_MAX + 1];
} dsla_proto_error_t;

dsla_status_t dsla_proto_error_encode(const dsla_proto_error_t *err, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_error_decode(const void *body, size_t len, dsla_proto_error_t *out);

/* Bounds on what one GENERATE may claim: far above any model we serve, far below what would let
 * one frame exhaust a server. */
#define DSLA_PROTO_PROMPT_MAX (1u << 20) /* prompt text bytes */
#define DSLA_PROTO_PROMPT_IDS_MAX 65536  /* prompt token ids */
#define DSLA_PROTO_STOP_MAX 8            /* stop strings */
#define DSLA_PROTO_STOP_LEN_MAX 256      /* bytes of one stop string */
#define DSLA_PROTO_PIECE_MAX 4096        /* bytes of text in one TOKEN; longer text is split */
#define DSLA_PROTO_LOGIT_BIAS_MAX 300    /* logit_bias entries (OpenAI's limit) */

/* GENERATE: the prompt is text (encoded by the server's tokenizer with its default BOS) or token
 * ids, the ids winning when both are given. On encode every pointer is borrowed; on decode they
 * point into allocations released by dsla_proto_generate_free. Range checks beyond the bounds
 * above (max_tokens against the context, sampling parameters) are the server's business. */
typedef struct {
    const char *prompt; /* NUL-terminated after decode */
    size_t prompt_len;
    const int32_t *prompt_ids;
    int n_prompt_ids;
    int32_t max_tokens;
    float temperature; /* <= 0: greedy */
    int32_t top_k;     /* <= 0: off */
    float top_p;       /* >= 1: off */
    uint64_t seed;
    const char *stop[DSLA_PROTO_STOP_MAX];
    int n_stop;
    bool ignore_eos;
    bool stream; /* TOKENs as they come; the only mode served so far */
    /* each TOKEN carries its token's logprob and the top_logprobs likeliest alternatives (the
     * server refuses more than its limit, 20) */
    bool logprobs;
    int32_t top_logprobs;
    /* with logprobs: the prompt's too (echo), as TOKENs marked prompt before the first generated */
    bool prompt_logprobs;
    /* sampler.h's; zero (and repetition_penalty 1) are off and go unsent */
    float min_p, presence_penalty, frequency_penalty, repetition_penalty;
    int n_bias; /* logit_bias: [id, bias] pairs, at most DSLA_PROTO_LOGIT_BIAS_MAX */
    const int32_t *bias_ids;
    const float *bias_values;
} dsla_proto_generate_t;

dsla_status_t dsla_proto_generate_encode(const dsla_proto_generate_t *g, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_generate_decode(const void *body, size_t len, dsla_proto_generate_t *out);
/* Frees what decode allocated and zeroes *g; harmless on a zeroed struct. Never on an encode-side
 * struct whose pointers are borrowed. */
void dsla_proto_generate_free(dsla_proto_generate_t *g);

/* Alternatives one TOKEN lists at most, and bytes of one token's own text. */
#define DSLA_PROTO_LOGPROBS_MAX 20
#define DSLA_PROTO_TOKEN_TEXT_MAX 256

/* A token's log-probability with its own text (the token decoded alone, cut to
 * DSLA_PROTO_TOKEN_TEXT_MAX bytes); on the wire as [id, logprob, text]. */
typedef struct {
    int32_t id;
    float logprob;
    size_t text_len;
    char text[DSLA_PROTO_TOKEN_TEXT_MAX + 1];
} dsla_proto_logprob_t;

/* TOKEN: the envelope's id is the GENERATE's. token is -1 when the frame only carries text (the
 * detokenizer's last flush, or the rest of a piece longer than DSLA_PROTO_PIECE_MAX). A request
 * with logprobs gets them in the frames that carry a token: "logprob" (the token's) and "top". */
typedef struct {
    int32_t token;
    size_t text_len;
    char text[DSLA_PROTO_PIECE_MAX + 1];
    /* a prompt token's frame (prompt_logprobs): text is the token's own, not part of the
     * completion; every prompt position has one, in order, the first without logprobs */
    bool prompt;
    bool has_logprobs;
    dsla_proto_logprob_t chosen;
    int n_top;
    dsla_proto_logprob_t top[DSLA_PROTO_LOGPROBS_MAX];
} dsla_proto_token_t;

dsla_status_t dsla_proto_token_encode(const dsla_proto_token_t *t, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_token_decode(const void *body, size_t len, dsla_proto_token_t *out);

/* DONE's finish reasons; on the wire as "length", "stop", "cancelled". */
typedef enum {
    DSLA_PROTO_FINISH_LENGTH = 0,
    DSLA_PROTO_FINISH_STOP,
    DSLA_PROTO_FINISH_CANCELLED,
} dsla_proto_finish_t;

const char *dsla_proto_finish_name(dsla_proto_finish_t finish);

/* DONE: the envelope's id is the GENERATE's; no TOKEN of that id follows it. Where the answer
 * was computed (optional on the wire; a decoder of an older sender leaves them 0 and empty): the
 * replica's name, the id of the plan the request ran under at its end (the id the replica's
 * PLAN_ACKs and the controller's plan_adopted events carry) and the times it was preempted and
 * recomputed (0: the whole answer ran under that one plan). */
#define DSLA_PROTO_REPLICA_MAX 63
typedef struct {
    dsla_proto_finish_t finish;
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
    char replica[DSLA_PROTO_REPLICA_MAX + 1];
    uint64_t plan_id;
    uint32_t preemptions;
} dsla_proto_done_t;

dsla_status_t dsla_proto_done_encode(const dsla_proto_done_t *d, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_done_decode(const void *body, size_t len, dsla_proto_done_t *out);

/* CANCEL: request is the id of a GENERATE the same client sent. */
typedef struct {
    uint64_t request;
} dsla_proto_cancel_t;

dsla_status_t dsla_proto_cancel_encode(const dsla_proto_cancel_t *c, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_cancel_decode(const void *body, size_t len, dsla_proto_cancel_t *out);

/* ---- the conversion control loop (DESIGN.md section 7): serving <-> controller <- dslactl ---- */

/* Layers one plan message names: far beyond the 126 layers of the largest Llama. */
#define DSLA_PROTO_LAYERS_MAX 512
/* Bytes of a layer version file's path in SET_PLAN. */
#define DSLA_PROTO_PATH_MAX 1023

/* A layer running DSLA in a plan: its index and its version's xxh64 checksum. */
typedef struct {
    int32_t layer;
    uint64_t checksum;
} dsla_proto_dsla_layer_t;

/* A latency histogram as the engine keeps it (runtime/serve/metrics.h), cumulative since the
 * replica started: counts[i] for i < DSLA_PROTO_HISTOGRAM_BUCKETS holds the values in
 * (bound(i-1), bound(i)] with bound(i) = DSLA_PROTO_HISTOGRAM_FIRST_BOUND * 2^i seconds, the last
 * one those above every bound. On the wire {"counts": [...], "sum": seconds}; other bounds would
 * travel under another key, so a peer never misreads them. */
#define DSLA_PROTO_HISTOGRAM_BUCKETS 24
#define DSLA_PROTO_HISTOGRAM_FIRST_BOUND 1e-4
typedef struct {
    uint64_t counts[DSLA_PROTO_HISTOGRAM_BUCKETS + 1];
    uint64_t count;
    double sum;
} dsla_proto_histogram_t;

/* The histograms a LOAD_REPORT carries, under "hist": submit to first token, between tokens,
 * submit to the end (requests that ended by length or stop), submit to the first admission. */
typedef enum {
    DSLA_PROTO_HIST_TTFT = 0,
    DSLA_PROTO_HIST_TPOT,
    DSLA_PROTO_HIST_E2E,
    DSLA_PROTO_HIST_QUEUE,
    DSLA_PROTO_HISTS
} dsla_proto_hist_kind_t;

/* "ttft", "tpot", "e2e", "queue": the keys under "hist". */
const char *dsla_proto_hist_name(dsla_proto_hist_kind_t kind);

/* LOAD_REPORT: a serving replica's load, sent to its controller every report interval and to
 * whoever asks with STATUS (its gateway, for /metrics). The latency quantiles cover the requests
 * since the previous report to the controller (0: none in that window, or an answer to STATUS).
 * The counters and histograms are cumulative; has_totals is false when the sender sent none (an
 * older replica). */
typedef struct {
    uint32_t num_layers;     /* the model's decoder layers */
    uint32_t queue_length;   /* requests waiting for admission */
    uint32_t running;        /* admitted sequences */
    uint64_t waiting_tokens; /* prompt tokens the waiting requests will prefill */
    uint32_t
        oldest_wait_ms; /* longest a request now in the replica has waited for its first token */
    uint32_t kv_used, kv_total;       /* KV blocks */
    uint32_t slots_used, slots_total; /* DSLA state slots */
    double ttft_p90_ms, tpot_p90_ms;
    double tokens_per_s;
    uint64_t plan_id; /* the engine's id of the plan new requests get */
    uint32_t n_dsla;  /* its DSLA layers, ascending */
    dsla_proto_dsla_layer_t dsla[DSLA_PROTO_LAYERS_MAX];
    bool has_totals;
    uint64_t requests_finished; /* every end: length, stop, cancelled, error */
    uint64_t prompt_tokens;     /* prefill tokens run, recomputation included */
    uint64_t generated_tokens;
    uint64_t preemptions;
    dsla_proto_histogram_t hist[DSLA_PROTO_HISTS];
} dsla_proto_load_report_t;

dsla_status_t dsla_proto_load_report_encode(const dsla_proto_load_report_t *r,
                                            dsla_proto_buf_t *out);
dsla_status_t dsla_proto_load_report_decode(const void *body, size_t len,
                                            dsla_proto_load_report_t *out);

/* STATUS (8) has no body struct: its body is the empty map, which the envelope encodes for an
 * absent body. REPORT (9) answers it. */
#define DSLA_PROTO_REPLICAS_MAX 64  /* replicas one REPORT lists */
#define DSLA_PROTO_ENDPOINT_MAX 255 /* bytes of a replica's endpoint */

/* A replica's liveness as its gateway sees it; on the wire "unknown", "alive", "dead". */
typedef enum {
    DSLA_PROTO_REPLICA_UNKNOWN = 0, /* connected, not heard from yet */
    DSLA_PROTO_REPLICA_ALIVE,
    DSLA_PROTO_REPLICA_DEAD, /* silent for the liveness window */
} dsla_proto_replica_state_t;

const char *dsla_proto_replica_state_name(dsla_proto_replica_state_t state);

typedef struct {
    char name[DSLA_PROTO_NAME_MAX + 1];
    char endpoint[DSLA_PROTO_ENDPOINT_MAX + 1];
    dsla_proto_replica_state_t state;
    uint32_t outstanding; /* requests routed to it that have not ended */
    uint64_t routed;      /* requests ever routed to it (re-routes included) */
    uint64_t failed;      /* requests that ended in an ERROR from it or because it died */
    /* the replica's last answer to the gateway's STATUS polls (on the wire "load": the
     * LOAD_REPORT body as bytes); has_load is false before the first, after the replica died, or
     * from a gateway that does not poll */
    bool has_load;
    dsla_proto_load_report_t load;
} dsla_proto_replica_report_t;

/* REPORT: the gateway's counters since it started, and its replicas in configuration order. */
typedef struct {
    uint64_t requests; /* GENERATEs accepted from clients */
    uint64_t tokens;   /* TOKENs with a token id relayed to clients */
    uint64_t errors;   /* ERRORs sent to clients for GENERATEs */
    uint64_t rerouted; /* requests sent again to another replica after theirs died */
    uint32_t in_flight;
    uint32_t n_replicas;
    dsla_proto_replica_report_t replicas[DSLA_PROTO_REPLICAS_MAX];
} dsla_proto_report_t;

dsla_status_t dsla_proto_report_encode(const dsla_proto_report_t *r, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_report_decode(const void *body, size_t len, dsla_proto_report_t *out);

/* One DSLA layer of a SET_PLAN: the layer version file to load and the checksum it must have, and
 * what a replica without the controller's filesystem needs to fetch it (LAYER_FETCH): the version
 * and the file's size and xxh64 as announced. version, size and xxh64 are 0 when unknown (a peer
 * that does not send them). */
typedef struct {
    int32_t layer;
    uint64_t checksum;
    const char *path; /* NUL-terminated; borrowed on encode, allocated by decode */
    uint32_t version;
    uint64_t size;  /* bytes of the file */
    uint64_t xxh64; /* of the whole file, seed 0 */
} dsla_proto_plan_layer_t;

/* SET_PLAN: the layers listed run DSLA with those versions, every other layer ATTN. seq is the
 * controller's number for this change, echoed by PLAN_ACK or PLAN_NACK. On decode, layers points
 * into an allocation released by dsla_proto_set_plan_free. */
typedef struct {
    uint64_t seq;
    uint32_t n_layers;
    dsla_proto_plan_layer_t *layers;
} dsla_proto_set_plan_t;

dsla_status_t dsla_proto_set_plan_encode(const dsla_proto_set_plan_t *p, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_set_plan_decode(const void *body, size_t len, dsla_proto_set_plan_t *out);
/* Frees what decode allocated and zeroes *p; harmless on a zeroed struct. */
void dsla_proto_set_plan_free(dsla_proto_set_plan_t *p);

/* PLAN_ACK and PLAN_NACK share one body: the plan the replica runs for new requests after the
 * SET_PLAN (the new one for an ACK, the kept one for a NACK) and, for a NACK, why. */
typedef struct {
    uint64_t seq;     /* the SET_PLAN's */
    uint64_t plan_id; /* the engine's id of the plan it now runs */
    uint32_t code;    /* NACK: a dsla_proto_code_t */
    char reason[DSLA_PROTO_MESSAGE_MAX + 1];
    uint32_t n_dsla;
    dsla_proto_dsla_layer_t dsla[DSLA_PROTO_LAYERS_MAX];
} dsla_proto_plan_reply_t;

dsla_status_t dsla_proto_plan_reply_encode(const dsla_proto_plan_reply_t *r, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_plan_reply_decode(const void *body, size_t len,
                                           dsla_proto_plan_reply_t *out);

/* ADMIN: a command and its words, as dslactl takes them ("policy", "set", "threshold",
 * "queue_high=8"); the controller parses and checks them, so limits live in one place. */
#define DSLA_PROTO_ADMIN_ARGS_MAX 32
#define DSLA_PROTO_ADMIN_ARG_LEN_MAX 255
/* The text of one ADMIN_REPLY: a long history fits, a hostile frame cannot claim more. */
#define DSLA_PROTO_ADMIN_TEXT_MAX (1u << 20)

/* The admin key an ADMIN may carry: a controller configured with admin keys answers only those
 * that carry one of them (UNAUTHENTICATED otherwise). */
#define DSLA_PROTO_ADMIN_KEY_MAX 256

typedef struct {
    uint32_t n_args;
    char args[DSLA_PROTO_ADMIN_ARGS_MAX][DSLA_PROTO_ADMIN_ARG_LEN_MAX + 1];
    char key[DSLA_PROTO_ADMIN_KEY_MAX + 1]; /* "" : none; travels only when set */
} dsla_proto_admin_t;

dsla_status_t dsla_proto_admin_encode(const dsla_proto_admin_t *a, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_admin_decode(const void *body, size_t len, dsla_proto_admin_t *out);

/* ADMIN_REPLY: the result for people. text is borrowed on encode; decode allocates it
 * (NUL-terminated), dsla_proto_admin_reply_free releases it. */
typedef struct {
    char *text;
    size_t text_len;
} dsla_proto_admin_reply_t;

dsla_status_t dsla_proto_admin_reply_encode(const dsla_proto_admin_reply_t *r,
                                            dsla_proto_buf_t *out);
dsla_status_t dsla_proto_admin_reply_decode(const void *body, size_t len,
                                            dsla_proto_admin_reply_t *out);
void dsla_proto_admin_reply_free(dsla_proto_admin_reply_t *r);

/* ---- online distillation (DESIGN.md sections 5.5 and 7): distiller -> controller ---- */

/* LAYER_READY: the announce phase of a layer version. The file at path is complete (fsync'd and
 * renamed); size and xxh64 cover its bytes, checksum is the layer version's own (the tensors',
 * dsla_layer.h), the one SET_PLAN and the reports carry. order is the conversion order the run
 * recorded, position this layer's place in it. The eval numbers are NaN when unknown. */
typedef struct {
    int32_t layer;
    uint32_t version;
    uint32_t position; /* 0-based place in order */
    uint32_t n_order;
    int32_t order[DSLA_PROTO_LAYERS_MAX];
    char path[DSLA_PROTO_PATH_MAX + 1];
    uint64_t size;     /* bytes of the file */
    uint64_t xxh64;    /* of the whole file, seed 0 */
    uint64_t checksum; /* the layer version's */
    uint32_t steps;
    double init_eval_mse, eval_mse, train_loss, eval_ppl;
} dsla_proto_layer_ready_t;

dsla_status_t dsla_proto_layer_ready_encode(const dsla_proto_layer_ready_t *r,
                                            dsla_proto_buf_t *out);
dsla_status_t dsla_proto_layer_ready_decode(const void *body, size_t len,
                                            dsla_proto_layer_ready_t *out);

/* A distillation run's state; on the wire "loading", "training", "done", "failed", "stopped". */
typedef enum {
    DSLA_PROTO_DISTILL_LOADING = 0, /* reading the teacher and the corpus */
    DSLA_PROTO_DISTILL_TRAINING,
    DSLA_PROTO_DISTILL_DONE,
    DSLA_PROTO_DISTILL_FAILED, /* message says why */
    DSLA_PROTO_DISTILL_STOPPED,
} dsla_proto_distill_state_t;

const char *dsla_proto_distill_state_name(dsla_proto_distill_state_t state);

/* DISTILL_PROGRESS: where a run stands. layer, step and loss are the latest step's (layer -1
 * before the first). */
typedef struct {
    dsla_proto_distill_state_t state;
    uint32_t layers_done, layers_total;
    int32_t layer;
    uint32_t step, steps;
    double loss, tokens_per_s, seconds_left;
    char message[DSLA_PROTO_MESSAGE_MAX + 1];
    /* prompts sampled from live traffic (PROMPT_SAMPLES): received in all, held in the
     * distiller's reservoir (and their tokens), packed into a layer's training pool at least once
     * (and their tokens) */
    uint32_t samples_received, samples_held, sample_tokens_held, samples_used, sample_tokens_used;
} dsla_proto_distill_progress_t;

dsla_status_t dsla_proto_distill_progress_encode(const dsla_proto_distill_progress_t *p,
                                                 dsla_proto_buf_t *out);
dsla_status_t dsla_proto_distill_progress_decode(const void *body, size_t len,
                                                 dsla_proto_distill_progress_t *out);

/* Prompts one PROMPT_SAMPLES carries at most, and token ids of all of them together: a few
 * hundred KiB, far below DSLA_PROTO_FRAME_MAX, so that a batch never holds up heartbeats. */
#define DSLA_PROTO_SAMPLES_MAX 64
#define DSLA_PROTO_SAMPLE_TOKENS_MAX 65536

/* PROMPT_SAMPLES: prompts a serving actor served, sampled for distillation (DESIGN.md 5.4), as
 * token ids, concatenated in ids: prompt i is lens[i] ids, every one at least 1. dropped counts
 * prompts sampled since the last message but left out by the rate cap. ids is borrowed on encode,
 * malloc'd on decode (dsla_proto_prompt_samples_free); decode checks every id is in
 * [0, INT32_MAX] and the counts against the limits above. */
typedef struct {
    uint32_t n_prompts;
    uint32_t lens[DSLA_PROTO_SAMPLES_MAX];
    const int32_t *ids;
    uint32_t n_ids; /* the sum of lens */
    uint32_t dropped;
} dsla_proto_prompt_samples_t;

dsla_status_t dsla_proto_prompt_samples_encode(const dsla_proto_prompt_samples_t *p,
                                               dsla_proto_buf_t *out);
dsla_status_t dsla_proto_prompt_samples_decode(const void *body, size_t len,
                                               dsla_proto_prompt_samples_t *out);
void dsla_proto_prompt_samples_free(dsla_proto_prompt_samples_t *p);

/* ---- chunked layer transfer (DESIGN.md section 7's "chunked ZeroMQ"): serving -> controller ----
 */

/* The most bytes one LAYER_CHUNK carries: a fraction of DSLA_PROTO_FRAME_MAX, small enough that a
 * chunk in flight does not hold up heartbeats, large enough that a layer of a large model takes a
 * few hundred round trips. */
#define DSLA_PROTO_CHUNK_MAX (1u << 20)
/* The largest layer version file a transfer may announce: far above one layer of the largest
 * Llama, a bound on what a hostile SET_PLAN can make a replica write. */
#define DSLA_PROTO_LAYER_FILE_MAX (16ull << 30)

/* LAYER_FETCH: max_len bytes (1..DSLA_PROTO_CHUNK_MAX) of the file of layer version (layer,
 * version) from offset on, which must still have the announced xxh64. */
typedef struct {
    int32_t layer;
    uint32_t version;
    uint64_t xxh64;
    uint64_t offset;
    uint32_t max_len;
} dsla_proto_layer_fetch_t;

dsla_status_t dsla_proto_layer_fetch_encode(const dsla_proto_layer_fetch_t *f,
                                            dsla_proto_buf_t *out);
dsla_status_t dsla_proto_layer_fetch_decode(const void *body, size_t len,
                                            dsla_proto_layer_fetch_t *out);

/* LAYER_CHUNK: the bytes [offset, offset + len) of a file of total_size bytes; fewer than asked
 * only at its end. bytes is borrowed on encode; on decode it points into body, which must outlive
 * its use. Decode checks that offset + len <= total_size <= DSLA_PROTO_LAYER_FILE_MAX. */
typedef struct {
    int32_t layer;
    uint32_t version;
    uint64_t xxh64;
    uint64_t offset;
    uint64_t total_size;
    const void *bytes;
    size_t len; /* at most DSLA_PROTO_CHUNK_MAX */
} dsla_proto_layer_chunk_t;

dsla_status_t dsla_proto_layer_chunk_encode(const dsla_proto_layer_chunk_t *c,
                                            dsla_proto_buf_t *out);
dsla_status_t dsla_proto_layer_chunk_decode(const void *body, size_t len,
                                            dsla_proto_layer_chunk_t *out);

/* ---- layer broadcast (DESIGN.md section 7's "NCCL broadcast"; docs/broadcast.md) ---- */

/* Bytes of a communicator's unique id: NCCL's NCCL_UNIQUE_ID_BYTES, which proto must not include.
 */
#define DSLA_PROTO_BCAST_ID_MAX 128
/* Ranks of one broadcast session (the owner and its receivers): a node's GPUs, with room. */
#define DSLA_PROTO_BCAST_RANKS_MAX 64

/* BCAST_OPEN, BCAST_ID and BCAST_JOIN share one body; each type uses the fields docs/protocol.md
 * lists for it and leaves the others zero and empty (absent on the wire). session is the
 * controller's number for one broadcast of one file; comm names a communicator (same key, same
 * members in the same ranks), fresh says it is to be made from id rather than reused. */
typedef struct {
    uint64_t session;
    uint64_t comm;
    bool fresh;
    uint32_t rank, nranks; /* rank 0 is the owner; nranks 0 when absent (BCAST_ID) */
    int32_t layer;
    uint32_t version;
    uint64_t size, xxh64; /* of the file */
    uint32_t id_len;      /* 0: none */
    uint8_t id[DSLA_PROTO_BCAST_ID_MAX];
    char path[DSLA_PROTO_PATH_MAX + 1]; /* BCAST_OPEN: the file to send; "" otherwise */
} dsla_proto_bcast_t;

dsla_status_t dsla_proto_bcast_encode(const dsla_proto_bcast_t *b, dsla_proto_buf_t *out);
dsla_status_t dsla_proto_bcast_decode(const void *body, size_t len, dsla_proto_bcast_t *out);

/* BCAST_ACK and BCAST_NACK share one body: the session and the sender's rank in it, and for a
 * NACK the code and why. */
typedef struct {
    uint64_t session;
    uint32_t rank;
    uint32_t code; /* NACK: a dsla_proto_code_t */
    char reason[DSLA_PROTO_MESSAGE_MAX + 1];
} dsla_proto_bcast_reply_t;

dsla_status_t dsla_proto_bcast_reply_encode(const dsla_proto_bcast_reply_t *r,
                                            dsla_proto_buf_t *out);
dsla_status_t dsla_proto_bcast_reply_decode(const void *body, size_t len,
                                            dsla_proto_bcast_reply_t *out);

#endif

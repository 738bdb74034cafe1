/* The HTTP front end: libmicrohttpd's handlers over clients of the gateway (http.h). */
#include "actors/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>
#include <zmq.h>

#include "actors/http_cors.h"
#include "actors/http_metrics.h"
#include "actors/openai.h"
#include "actors/openai_tokens.h"
#include "proto/dsla_client.h"
#include "runtime/core/clock.h"
#include "runtime/core/log.h"

/* Idle gateway clients kept for the next request: a new one costs a socket and a handshake. */
enum { CLIENT_POOL_MAX = 64 };
/* How long health and metrics wait for the gateway's REPORT. */
enum { REPORT_DEADLINE_MS = 2000 };
/* Bytes MHD asks the stream reader for at most; an event longer than that goes in several. */
enum { STREAM_BLOCK = 16 * 1024 };
/* Idle keep-alive connections are closed after this many seconds. */
enum { CONNECTION_TIMEOUT_S = 120 };
/* How often the slow-reader sweep runs, at most: a fraction of any sensible read deadline. */
enum { SWEEP_MS = 100 };
/* Descriptors: a connection carrying a request holds about four (its own, a ZeroMQ client socket
 * and its mailbox, the gateway's end), and the rest of the process keeps some (the model, the
 * actors' sockets, the log): connections are limited to what the open-files limit leaves. */
enum { FDS_PER_CONNECTION = 4, FDS_KEPT = 128, CONNECTIONS_MIN = 16 };
/* HTTP takes half of what the open-files limit leaves (a bound mailbox a quarter, conn_guard.h).
 * Within that, twice max_in_flight connections and CONNECTIONS_SLACK more: beyond max_in_flight a
 * request is answered 429 with Retry-After, which a connection closed unserved cannot say. */
enum { CONNECTIONS_SLACK = 256 };
/* Accepting with descriptors exhausted fails at once while the connection waits: the accept
 * thread then sheds it (with a descriptor kept in reserve for that) and waits before the next try,
 * from ACCEPT_BACKOFF_MIN_MS doubling to ACCEPT_BACKOFF_MAX_MS, rather than retrying in a loop. */
enum { ACCEPT_BACKOFF_MIN_MS = 10, ACCEPT_BACKOFF_MAX_MS = 1000, ACCEPT_BACKLOG = 1024 };

/* Routes and the status codes counted in /metrics. */
typedef enum {
    R_COMPLETIONS,
    R_CHAT,
    R_MODELS,
    R_HEALTH,
    R_METRICS,
    R_TOKENIZE,
    R_DETOKENIZE,
    R_VERSION,
    R_MODEL, /* "/v1/models/{id}", matched by prefix */
    R_OTHER,
    N_ROUTES
} route_t;
static const char *const route_paths[N_ROUTES] = {
    "/v1/completions", "/v1/chat/completions", "/v1/models", "/health",         "/metrics",
    "/tokenize",       "/detokenize",          "/version",   "/v1/models/{id}", "other"};
static const int counted_codes[] = {200, 204, 400, 401, 403, 404, 405,
                                    413, 429, 499, 500, 503, 504};
enum { N_CODES = sizeof counted_codes / sizeof counted_codes[0] };

/* One open connection, for the read deadline: since when it has been reading a request (its
 * headers and body), or not reading (a request being answered). */
typedef struct conn {
    int fd;
    bool reading;
    uint64_t since_ms;
    struct conn *prev, *next;
} conn_t;

struct dsla_http {
    struct MHD_Daemon *daemon;
    void *zctx;
    char gateway[DSLA_PROTO_ENDPOINT_MAX + 1];
    char model[256];
    const dsla_tokenizer_t *tokenizer; /* /tokenize, /detokenize; NULL: 501 */
    dsla_openai_chat_template_t chat;  /* the model's chat template (tmpl NULL: the plain one) */
    uint32_t heartbeat_ms, max_in_flight;
    const dsla_http_auth_t *auth; /* NULL: no key required */
    bool curve;                   /* CURVE to the gateway with these keys (Z85 and NUL) */
    char curve_server[41], curve_public[41], curve_secret[41];
    dsla_http_cors_t *cors; /* NULL: CORS off */
    long long started;
    int port;

    pthread_mutex_t mu; /* guards the pool */
    dsla_client_t *pool[CLIENT_POOL_MAX];
    int n_pool;

    /* The read deadline: a sweeper thread shuts the socket of a connection that has been reading
     * one request for longer than read_deadline_ms, so slow senders (slowloris) cannot hold
     * connections open by trickling bytes; ZeroMQ-style idle timeouts restart at every byte. */
    uint32_t read_deadline_ms;
    pthread_mutex_t conn_mu; /* guards conns and stopping */
    pthread_cond_t conn_cv;
    conn_t *conns;
    bool stopping, sweeper_on;
    pthread_t sweeper;
    dsla_log_limit_t slow_log, mhd_log; /* under conn_mu */

    /* The listening socket is this front end's, not libmicrohttpd's: its accept thread backs off
     * when descriptors run out (libmicrohttpd retried at once, a busy loop) and hands each
     * connection over with MHD_add_connection, up to conn_limit of them. */
    int listen_fd, reserve_fd; /* reserve_fd: /dev/null, given up to shed a connection */
    bool acceptor_on;
    pthread_t acceptor;
    atomic_bool accept_stop;
    unsigned conn_limit;
    atomic_uint n_conns;         /* handed to MHD and not yet closed */
    dsla_log_limit_t accept_log; /* the accept thread's own */

    atomic_uint in_flight;
    atomic_ullong next_id;
    atomic_ullong responses[N_ROUTES][N_CODES + 1]; /* the last column: any other code */
    atomic_ullong prompt_tokens, completion_tokens;
};

/* ---- the read deadline --------------------------------------------------------------------- */

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static conn_t *conn_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

/* A connection starts reading (true) or stops (false, its request read whole). */
static void conn_reading(dsla_http_t *h, struct MHD_Connection *c, bool reading) {
    conn_t *e = conn_of(c);
    if (!e) return;
    pthread_mutex_lock(&h->conn_mu);
    e->reading = reading;
    e->since_ms = now_ms();
    pthread_mutex_unlock(&h->conn_mu);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    dsla_http_t *h = cls;
    pthread_mutex_lock(&h->conn_mu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        conn_t *e = info ? calloc(1, sizeof *e) : NULL;
        if (e) {
            *e = (conn_t){.fd = info->connect_fd, .reading = true, .since_ms = now_ms()};
            e->next = h->conns;
            if (h->conns) h->conns->prev = e;
            h->conns = e;
        }
        *socket_context = e;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && atomic_load(&h->n_conns) > 0) {
        atomic_fetch_sub(&h->n_conns, 1);
    }
    if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        /* closed: MHD closes the socket only after this */
        conn_t *e = *socket_context;
        if (e->prev) e->prev->next = e->next;
        if (e->next) e->next->prev = e->prev;
        if (h->conns == e) h->conns = e->next;
        free(e);
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&h->conn_mu);
}

static void *sweep(void *arg) {
    dsla_http_t *h = arg;
    uint32_t every = h->read_deadline_ms / 4 < SWEEP_MS ? h->read_deadline_ms / 4 + 1 : SWEEP_MS;
    pthread_mutex_lock(&h->conn_mu);
    while (!h->stopping) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)every * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&h->conn_cv, &h->conn_mu, &until);
        uint64_t now = now_ms();
        unsigned cut = 0;
        for (conn_t *e = h->conns; e; e = e->next)
            if (e->reading && now - e->since_ms > h->read_deadline_ms) {
                shutdown(e->fd, SHUT_RDWR); /* its thread's read ends; MHD closes it */
                e->reading = false;
                cut++;
            }
        if (cut)
            DSLA_LOG_LIMITED(&h->slow_log, DSLA_LOG_WARN,
                             "http: closed %u connections that took over %u ms to send one "
                             "request",
                             cut, h->read_deadline_ms);
    }
    pthread_mutex_unlock(&h->conn_mu);
    return NULL;
}

/* ---- the accept thread ----------------------------------------------------------------------- */

static void sleep_ms(uint32_t ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Out of descriptors with a connection waiting: take it with the reserve descriptor and close it
 * at once (its client sees the close rather than waiting in the backlog), then get the reserve
 * back. */
static void shed_one(dsla_http_t *h) {
    if (h->reserve_fd < 0) return;
    close(h->reserve_fd);
    int fd = accept(h->listen_fd, NULL, NULL);
    if (fd >= 0) close(fd);
    h->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void *accept_main(void *arg) {
    dsla_http_t *h = arg;
    uint32_t backoff = 0;
    unsigned long long shed = 0, over = 0;
    while (!atomic_load(&h->accept_stop)) {
        struct pollfd p = {h->listen_fd, POLLIN, 0};
        if (poll(&p, 1, (int)SWEEP_MS) <= 0) continue;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept(h->listen_fd, (struct sockaddr *)&ss, &len);
        if (fd < 0) {
            int err = errno;
            if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) continue;
            shed_one(h);
            shed++;
            DSLA_LOG_LIMITED(&h->accept_log, DSLA_LOG_WARN,
                             "http: out of descriptors (%s): %llu connections closed unserved so "
                             "far; accepting again in %u ms",
                             strerror(err), shed, backoff ? backoff : ACCEPT_BACKOFF_MIN_MS);
            backoff = backoff ? backoff * 2 : ACCEPT_BACKOFF_MIN_MS;
            if (backoff > ACCEPT_BACKOFF_MAX_MS) backoff = ACCEPT_BACKOFF_MAX_MS;
            sleep_ms(backoff);
            continue;
        }
        backoff = 0;
        (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
        /* counted from the add to MHD's close notice, earlier than MHD's own count (which is
         * taken on its polling thread, and dropped only once a closed connection's thread is
         * joined): libmicrohttpd 0.9.75, made to meet its own limit by MHD_add_connection, kept
         * one of its locks held and every connection thread stuck on it */
        if (atomic_load(&h->n_conns) >= h->conn_limit) {
            close(fd);
            over++;
            DSLA_LOG_LIMITED(&h->accept_log, DSLA_LOG_WARN,
                             "http: %u connections open (the limit for this process's open-files "
                             "limit): %llu closed unserved so far",
                             h->conn_limit, over);
            continue;
        }
        atomic_fetch_add(&h->n_conns, 1);
        if (MHD_add_connection(h->daemon, fd, (struct sockaddr *)&ss, len) != MHD_YES)
            atomic_fetch_sub(&h->n_conns, 1); /* it closed fd */
    }
    return NULL;
}

/* The listening socket for address, bound, into *out. */
static dsla_status_t listen_on(const struct sockaddr_storage *ss, bool v6, const char *address,
                               int *out) {
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    int one = 1;
    if (fd >= 0) (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    socklen_t len = v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (v6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) ||
        bind(fd, (const struct sockaddr *)ss, len) != 0 || listen(fd, ACCEPT_BACKLOG) != 0) {
        const int err = errno;
        if (fd >= 0) close(fd);
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "http: cannot listen on %s: %s (is the port in use? --http off "
                          "disables HTTP)",
                          address, strerror(err));
    }
    *out = fd;
    return DSLA_OK;
}

/* Connections this process's open-files limit can carry, within 2 * max_in_flight + slack. */
static unsigned connection_limit(uint32_t max_in_flight) {
    unsigned limit = 2 * max_in_flight + CONNECTIONS_SLACK;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        rlim_t fit = rl.rlim_cur > FDS_KEPT ? (rl.rlim_cur - FDS_KEPT) / 2 / FDS_PER_CONNECTION : 0;
        if (fit < CONNECTIONS_MIN) fit = CONNECTIONS_MIN;
        if (fit < limit) limit = (unsigned)fit;
    }
    return limit;
}

/* ---- small helpers ------------------------------------------------------------------------- */

static dsla_client_t *client_get(dsla_http_t *h) {
    dsla_client_t *c = NULL;
    pthread_mutex_lock(&h->mu);
    if (h->n_pool > 0) c = h->pool[--h->n_pool];
    pthread_mutex_unlock(&h->mu);
    if (c) return c;
    dsla_client_options_t opt = {.heartbeat_ms = h->heartbeat_ms, .zmq_context = h->zctx};
    if (h->curve) {
        opt.curve_server_key = h->curve_server;
        opt.curve_public_key = h->curve_public;
        opt.curve_secret_key = h->curve_secret;
    }
    if (dsla_client_connect(&c, h->gateway, &opt) != DSLA_OK) return NULL;
    return c;
}

static void client_put(dsla_http_t *h, dsla_client_t *c) {
    pthread_mutex_lock(&h->mu);
    if (h->n_pool < CLIENT_POOL_MAX) {
        h->pool[h->n_pool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&h->mu);
    dsla_client_close(&c);
}

static void count(dsla_http_t *h, route_t route, int status) {
    int k = N_CODES;
    for (int i = 0; i < N_CODES; i++)
        if (counted_codes[i] == status) k = i;
    atomic_fetch_add(&h->responses[route][k], 1);
}

/* Access-Control-Allow-Origin for a request from an allowed origin (http_cors.h); with a list of
 * origins the answer depends on Origin, which caches must know (Vary). */
static void add_cors(const dsla_http_t *h, struct MHD_Connection *conn, struct MHD_Response *resp) {
    if (!h->cors) return;
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    const char *allow = dsla_http_cors_allow(h->cors, origin);
    if (!dsla_http_cors_any(h->cors)) MHD_add_response_header(resp, "Vary", "Origin");
    if (!allow) return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin", allow);
    MHD_add_response_header(resp, "Access-Control-Expose-Headers", "Retry-After");
}

static enum MHD_Result respond_with(dsla_http_t *h, struct MHD_Connection *conn, route_t route,
                                    int status, const char *type, char *body,
                                    const char *const *extra);

/* Queues body (malloc'd, taken over; NULL is a 500) with its status and type. */
static enum MHD_Result respond(dsla_http_t *h, struct MHD_Connection *conn, route_t route,
                               int status, const char *type, char *body) {
    return respond_with(h, conn, route, status, type, body, NULL);
}

/* respond, with extra headers: name, value pairs ending in NULL. */
static enum MHD_Result respond_with(dsla_http_t *h, struct MHD_Connection *conn, route_t route,
                                    int status, const char *type, char *body,
                                    const char *const *extra) {
    if (!body) {
        status = 500;
        type = "application/json";
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\","
                      "\"param\":null,\"code\":null}}");
        if (!body) return MHD_NO;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    if (type) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    /* overload and unavailability pass: a client may come back in a second */
    if (status == 429 || status == 503) MHD_add_response_header(resp, "Retry-After", "1");
    for (; extra && extra[0]; extra += 2)
        MHD_add_response_header(resp, extra[0], extra[1]);
    add_cors(h, conn, resp);
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    count(h, route, status);
    return rc;
}

static enum MHD_Result respond_error(dsla_http_t *h, struct MHD_Connection *conn, route_t route,
                                     const dsla_openai_error_t *err) {
    return respond(h, conn, route, err->status, "application/json", dsla_openai_error_body(err));
}

/* a + b in a fresh buffer; NULL when either is NULL or memory is short. */
static char *concat(const char *a, const char *b) {
    if (!a || !b) return NULL;
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 1);
    if (!s) return NULL;
    memcpy(s, a, na);
    memcpy(s + na, b, nb + 1);
    return s;
}

static char *json_text(json_t *root) {
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

/* ---- generation ---------------------------------------------------------------------------- */

/* One generation request from its start on the gateway to its last byte. */
typedef struct {
    dsla_http_t *h;
    dsla_client_t *client;
    bool running; /* the request still runs on the gateway */
    bool first;   /* no piece has been formatted yet */
    bool failed;  /* it ended with an error (err) */
    dsla_openai_error_t err;
    dsla_client_result_t result;
    char id[40];
    char fingerprint[DSLA_PROTO_REPLICA_MAX + 32]; /* "serving0:plan-7" once ended; "": none */
    dsla_openai_meta_t meta;
    dsla_openai_logprobs_t *lp; /* NULL: the request asked for no logprobs */
    char *echo;                 /* the prompt to put before the text (echo); NULL: none */
    size_t echo_len;
    int choice; /* its index among the request's choices */
    bool tail;  /* its stream's end is its own ([DONE], the usage chunk): one choice streamed */
    double cum_logprob;           /* of its generated tokens, for best_of's ranking */
    uint64_t t_start, t_first_ms; /* monotonic ms: started, first generated piece (0: none) */
    /* What the stream reader hands out next. */
    char *pending;
    size_t pending_len, pending_off;
} gen_t;

static dsla_openai_end_t gen_end(const gen_t *g);

/* The request's line at info level (docs/http.md, "Logs"): one per choice that was started. */
static void gen_log(const gen_t *g, bool cancelled) {
    if (!g->t_start || DSLA_LOG_INFO > dsla_log_level()) return;
    const uint64_t now = dsla_clock_ms();
    char ttft[32] = "none";
    if (g->t_first_ms)
        snprintf(ttft, sizeof ttft, "%llu", (unsigned long long)(g->t_first_ms - g->t_start));
    const bool ok = !cancelled && !g->failed;
    dsla_log_info("request id=%s choice=%d status=%d prompt_tokens=%u output_tokens=%u "
                  "ttft_ms=%s total_ms=%llu served_by=%s preemptions=%u finish=%s%s%.200s",
                  g->id, g->choice,
                  cancelled   ? 499
                  : g->failed ? g->err.status
                              : 200,
                  g->result.prompt_tokens, g->result.completion_tokens, ttft,
                  (unsigned long long)(now - g->t_start),
                  g->fingerprint[0] ? g->fingerprint : "none", g->result.preemptions,
                  cancelled ? "cancelled"
                  : ok      ? gen_end(g).finish
                            : "error",
                  ok ? "" : " error=",
                  ok          ? ""
                  : cancelled ? "client went away"
                              : g->err.message);
}

static void gen_free(gen_t *g) {
    if (!g) return;
    gen_log(g, g->running);
    if (g->client) {
        if (g->running) dsla_client_cancel(g->client, &g->result);
        client_put(g->h, g->client);
    }
    atomic_fetch_sub(&g->h->in_flight, 1);
    dsla_openai_logprobs_free(&g->lp);
    free(g->echo);
    free(g->pending);
    free(g);
}

/* Records how the request ended: usage on success, the error otherwise. */
static void gen_ended(gen_t *g) {
    g->running = false;
    if (g->result.code == DSLA_CODE_OK) {
        atomic_fetch_add(&g->h->prompt_tokens, g->result.prompt_tokens);
        atomic_fetch_add(&g->h->completion_tokens, g->result.completion_tokens);
        if (g->result.replica[0])
            snprintf(g->fingerprint, sizeof g->fingerprint, "%s:plan-%" PRIu64, g->result.replica,
                     g->result.plan_id);
        return;
    }
    g->failed = true;
    dsla_openai_error_from_code(g->meta.kind, g->result.code, g->result.message, &g->err);
}

static dsla_openai_end_t gen_end(const gen_t *g) {
    return (dsla_openai_end_t){.finish =
                                   g->result.finish == DSLA_PROTO_FINISH_LENGTH ? "length" : "stop",
                               .prompt_tokens = g->result.prompt_tokens,
                               .completion_tokens = g->result.completion_tokens,
                               .fingerprint = g->fingerprint};
}

/* Pulls the next piece from the gateway into g->pending as one or more server-sent events; the
 * last piece carries finish_reason and usage, then "data: [DONE]". False when out of memory. */
static bool gen_produce(gen_t *g) {
    free(g->pending);
    g->pending = NULL;
    g->pending_len = g->pending_off = 0;
    dsla_client_piece_t p;
    bool more;
    /* the prompt's frames (echo with logprobs) go into the echo's chunk */
    while ((more = dsla_client_next(g->client, &p, &g->result)) && p.frame->prompt)
        if (g->lp && !dsla_openai_logprobs_add(g->lp, p.frame)) return false;
    if (more && !g->t_first_ms) g->t_first_ms = dsla_clock_ms();
    if (!more) gen_ended(g);
    char *echoed = NULL;
    if (g->echo && !g->failed) { /* the prompt as the first chunk, with its logprobs */
        echoed = dsla_openai_chunk(&g->meta, g->echo, g->echo_len, g->lp, g->first, NULL);
        if (g->lp) dsla_openai_logprobs_clear(g->lp);
        free(g->echo);
        g->echo = NULL;
        g->first = false;
        if (!echoed) return false;
    }
    if (more) {
        if (g->lp && !dsla_openai_logprobs_add(g->lp, p.frame)) return false;
        g->pending = dsla_openai_chunk(&g->meta, p.text, p.len, g->lp, g->first, NULL);
        if (g->lp) dsla_openai_logprobs_clear(g->lp);
        g->first = false;
    } else {
        if (g->failed) { /* an error event, and no [DONE]: the stream did not complete */
            char *body = dsla_openai_error_body(&g->err), *line = concat("data: ", body);
            g->pending = concat(line, "\n\n");
            free(body);
            free(line);
        } else {
            dsla_openai_end_t end = gen_end(g);
            char *last = dsla_openai_chunk(&g->meta, "", 0, g->lp, g->first, &end);
            char *usage = g->meta.include_usage && g->tail ? dsla_openai_usage_chunk(&g->meta, &end)
                                                           : strdup("");
            char *both = concat(last, usage);
            g->pending = concat(both, g->tail ? "data: [DONE]\n\n" : "");
            free(last);
            free(usage);
            free(both);
        }
    }
    if (echoed) {
        char *both = g->pending ? concat(echoed, g->pending) : NULL;
        free(echoed);
        free(g->pending);
        g->pending = both;
    }
    if (!g->pending) return false;
    g->pending_len = strlen(g->pending);
    return true;
}

/* A stream reader's next bytes: as many of pending[*off..len) as fit in max. */
static ssize_t hand_out(const char *pending, size_t len, size_t *off, char *buf, size_t max) {
    size_t n = len - *off < max ? len - *off : max;
    memcpy(buf, pending + *off, n);
    *off += n;
    return (ssize_t)n;
}

static ssize_t gen_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    gen_t *g = cls;
    while (g->pending_off == g->pending_len) {
        if (!g->running) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!gen_produce(g)) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    return hand_out(g->pending, g->pending_len, &g->pending_off, buf, max);
}

static void gen_read_done(void *cls) {
    gen_free(cls);
}

/* A 200 text/event-stream whose events read(cls) writes; done(cls) when it ends (or at once,
 * when the response cannot be made). */
static enum MHD_Result respond_stream(dsla_http_t *h, struct MHD_Connection *conn, route_t route,
                                      MHD_ContentReaderCallback read, void *cls,
                                      MHD_ContentReaderFreeCallback done) {
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, read, cls, done);
    if (!resp) {
        done(cls);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    add_cors(h, conn, resp);
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    count(h, route, 200);
    return rc;
}

/* Several choices streamed as one: their chunks interleaved (each under its index), taken from
 * the running choices in turn, then the usage chunk (include_usage) and [DONE]. A choice's failure
 * ends the whole stream with its error event, as one choice's does. */
typedef struct {
    gen_t **gs;
    int n, next;
    bool done;
    char *pending;
    size_t pending_len, pending_off;
} multi_t;

static void multi_free(void *cls) {
    multi_t *m = cls;
    for (int i = 0; i < m->n; i++)
        gen_free(m->gs[i]);
    free(m->gs);
    free(m->pending);
    free(m);
}

/* The next choice's next piece into m->pending, or the tail once every choice ended; false when
 * out of memory. */
static bool multi_produce(multi_t *m) {
    free(m->pending);
    m->pending = NULL;
    m->pending_len = m->pending_off = 0;
    for (int k = 0; k < m->n; k++) {
        gen_t *g = m->gs[(m->next + k) % m->n];
        if (!g->running) continue;
        m->next = (m->next + k + 1) % m->n;
        if (!gen_produce(g)) return false;
        m->pending = g->pending;
        m->pending_len = g->pending_len;
        g->pending = NULL;
        g->pending_len = g->pending_off = 0;
        m->done = g->failed;
        return true;
    }
    dsla_openai_end_t total = {0};
    for (int i = 0; i < m->n; i++) {
        total.prompt_tokens += m->gs[i]->result.prompt_tokens;
        total.completion_tokens += m->gs[i]->result.completion_tokens;
    }
    char *usage = m->gs[0]->meta.include_usage ? dsla_openai_usage_chunk(&m->gs[0]->meta, &total)
                                               : strdup("");
    m->pending = concat(usage, "data: [DONE]\n\n");
    free(usage);
    m->done = true;
    if (!m->pending) return false;
    m->pending_len = strlen(m->pending);
    return true;
}

static ssize_t multi_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    multi_t *m = cls;
    while (m->pending_off == m->pending_len) {
        if (m->done) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!multi_produce(m)) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    return hand_out(m->pending, m->pending_len, &m->pending_off, buf, max);
}

/* stream true with several choices: each choice's first piece decides the status (a refusal of
 * any is a plain error, not a stream); then multi_read. */
static enum MHD_Result gen_stream_n(gen_t **gs, int n, struct MHD_Connection *conn, route_t route) {
    dsla_http_t *h = gs[0]->h;
    multi_t *m = calloc(1, sizeof *m);
    size_t len = 0;
    bool oom = !m;
    const gen_t *failed = NULL;
    for (int i = 0; i < n && !oom && !failed; i++) {
        oom = !gen_produce(gs[i]);
        if (gs[i]->failed && gs[i]->first) failed = gs[i];
        len += gs[i]->pending_len;
    }
    char *first = oom || failed ? NULL : malloc(len + 1);
    if (!first || !m) {
        dsla_openai_error_t e;
        if (failed)
            e = failed->err;
        else
            dsla_openai_error_from_status(gs[0]->meta.kind, dsla_error_oom("http: a stream"), &e);
        free(first);
        free(m);
        for (int i = 0; i < n; i++)
            gen_free(gs[i]);
        free(gs);
        return respond_error(h, conn, route, &e);
    }
    len = 0;
    for (int i = 0; i < n; i++) { /* the first pieces, in order of index */
        if (gs[i]->pending_len) memcpy(first + len, gs[i]->pending, gs[i]->pending_len);
        len += gs[i]->pending_len;
        gs[i]->pending_len = gs[i]->pending_off = 0;
        m->done = m->done || gs[i]->failed;
    }
    first[len] = '\0';
    *m = (multi_t){.gs = gs, .n = n, .done = m->done, .pending = first, .pending_len = len};
    return respond_stream(h, conn, route, multi_read, m, multi_free);
}

/* stream false: every piece into *text (malloc'd); false when out of memory. */
static bool gen_collect(gen_t *g, char **text_out, size_t *len_out) {
    char *text = NULL;
    size_t len = 0, cap = 0;
    dsla_client_piece_t p;
    bool oom = false;
    if (g->echo) { /* the prompt before the text */
        text = g->echo;
        len = cap = g->echo_len;
        g->echo = NULL;
    }
    while (dsla_client_next(g->client, &p, &g->result)) {
        if (g->lp && !dsla_openai_logprobs_add(g->lp, p.frame)) {
            oom = true;
            dsla_client_cancel(g->client, &g->result);
            break;
        }
        if (p.frame->prompt) continue; /* its text is the echo's */
        if (p.frame->has_logprobs) g->cum_logprob += p.frame->chosen.logprob;
        if (!g->t_first_ms) g->t_first_ms = dsla_clock_ms();
        if (len + p.len > cap) {
            size_t want = 2 * (len + p.len) + 256;
            char *grown = realloc(text, want);
            if (!grown) {
                oom = true;
                dsla_client_cancel(g->client, &g->result);
                break;
            }
            text = grown;
            cap = want;
        }
        if (p.len) memcpy(text + len, p.text, p.len); /* text is NULL until a piece has some */
        len += p.len;
    }
    gen_ended(g);
    *text_out = text;
    *len_out = len;
    return !oom;
}

/* best_of: for each of the prompts, the n of its best_of samples with the highest cumulative
 * logprob, best first (a tie keeps the earlier sample), into order[prompts * n]. */
static void rank_samples(gen_t *const *gs, int prompts, int best_of, int n, int *order) {
    for (int p = 0; p < prompts; p++) {
        gen_t *const *s = gs + p * best_of;
        bool taken[DSLA_OPENAI_N_MAX] = {false};
        for (int k = 0; k < n; k++) {
            int best = -1;
            for (int j = 0; j < best_of; j++)
                if (!taken[j] && (best < 0 || s[j]->cum_logprob > s[best]->cum_logprob)) best = j;
            taken[best] = true;
            order[p * n + k] = p * best_of + best;
        }
    }
}

/* stream false: every sample's pieces, then one JSON body (the first failure's error if any):
 * with best_of above n, the best n of each prompt's samples, usage counting them all. */
static enum MHD_Result gen_whole(gen_t **gs, int n, int per_prompt, int best_of,
                                 struct MHD_Connection *conn, route_t route) {
    const int prompts = n / best_of, shown = prompts * per_prompt;
    dsla_openai_choice_t *c = calloc((size_t)n, sizeof *c), *out = calloc((size_t)n, sizeof *out);
    int *order = calloc((size_t)n, sizeof *order);
    bool oom = !c || !out || !order;
    const gen_t *failed = NULL;
    for (int i = 0; i < n && !oom && !failed; i++) {
        char *text = NULL;
        oom = !gen_collect(gs[i], &text, &c[i].len);
        c[i] = (dsla_openai_choice_t){text, c[i].len, gs[i]->lp, gen_end(gs[i])};
        if (gs[i]->failed) failed = gs[i];
    }
    dsla_openai_end_t usage = {0};
    for (int i = 0; !oom && i < n; i++) {
        usage.prompt_tokens += c[i].end.prompt_tokens;
        usage.completion_tokens += c[i].end.completion_tokens;
        order[i] = i;
    }
    if (!oom && !failed && best_of > per_prompt)
        rank_samples(gs, prompts, best_of, per_prompt, order);
    for (int i = 0; !oom && i < shown; i++)
        out[i] = c[order[i]];
    char *body = oom      ? NULL
                 : failed ? dsla_openai_error_body(&failed->err)
                          : dsla_openai_response_body_n(&gs[0]->meta, out, shown, &usage);
    int status = failed ? failed->err.status : 200;
    dsla_http_t *h = gs[0]->h;
    for (int i = 0; c && i < n; i++)
        free((char *)c[i].text);
    free(c);
    free(out);
    free(order);
    for (int i = 0; i < n; i++)
        gen_free(gs[i]);
    free(gs);
    return respond(h, conn, route, status, "application/json", body);
}

/* Starts choice i of req on a gateway client of its own: NULL with *err filled on failure. */
static gen_t *gen_start(dsla_http_t *h, struct MHD_Connection *conn, dsla_openai_kind_t kind,
                        const dsla_openai_request_t *req, int i, unsigned long long n,
                        dsla_openai_error_t *err) {
    gen_t *g = calloc(1, sizeof *g);
    if (!g) {
        dsla_openai_error_from_status(kind, dsla_error_oom("http: a generation request"), err);
        atomic_fetch_sub(&h->in_flight, 1);
        return NULL;
    }
    g->h = h;
    snprintf(g->id, sizeof g->id, "%s-%llu", kind == DSLA_OPENAI_CHAT ? "chatcmpl" : "cmpl", n);
    g->meta =
        (dsla_openai_meta_t){kind, g->id, (long long)time(NULL), h->model, req->include_usage, i};
    g->tail = dsla_openai_request_choices(req) == 1;
    g->first = true;
    dsla_proto_generate_t gen;
    dsla_openai_request_choice(req, i, &gen);
    const bool shown_logprobs = gen.logprobs;
    gen.logprobs = gen.logprobs || req->best_of > req->n; /* best_of ranks by them */
    if (!(g->client = client_get(h))) {
        dsla_openai_error_set(err, 500, NULL, "cannot reach the gateway: %s", dsla_last_error());
        err->type = "server_error";
        gen_free(g);
        return NULL;
    }
    if ((req->echo && !(g->echo = strndup(gen.prompt, gen.prompt_len))) ||
        (shown_logprobs && !(g->lp = dsla_openai_logprobs_new(kind)))) {
        dsla_openai_error_from_status(kind, dsla_error_oom("http: echo or logprobs"), err);
        gen_free(g);
        return NULL;
    }
    g->echo_len = g->echo ? gen.prompt_len : 0;
    dsla_status_t st = dsla_client_start(g->client, &gen, 0);
    if (st != DSLA_OK) {
        dsla_openai_error_from_status(kind, st, err);
        gen_free(g);
        return NULL;
    }
    /* a client that goes away cancels the request at once, answered or not yet (an abandoned
     * non-streamed request held its place in flight until it finished, ~40 s under load) */
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (info) dsla_client_watch(g->client, info->connect_fd);
    g->running = true;
    g->choice = i;
    g->t_start = dsla_clock_ms();
    return g;
}

static enum MHD_Result generate(dsla_http_t *h, struct MHD_Connection *conn, route_t route,
                                const char *body, size_t len) {
    dsla_openai_kind_t kind = route == R_CHAT ? DSLA_OPENAI_CHAT : DSLA_OPENAI_COMPLETION;
    dsla_openai_error_t err;
    unsigned long long n = atomic_fetch_add(&h->next_id, 1) + 1;
    /* a request without a seed samples differently from the last one, as OpenAI's does */
    uint64_t seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ n;
    dsla_openai_request_t req;
    if (!dsla_openai_request_parse_chat(kind, body, len, h->model, seed, &h->chat, &req, &err))
        return respond_error(h, conn, route, &err);
    const int choices = dsla_openai_request_choices(&req);
    /* each choice is one request in flight */
    if (atomic_fetch_add(&h->in_flight, (unsigned)choices) + (unsigned)choices > h->max_in_flight) {
        atomic_fetch_sub(&h->in_flight, (unsigned)choices);
        dsla_openai_request_free(&req);
        dsla_openai_error_set(&err, 429, NULL,
                              "%u requests in flight on this server (--http-max-in-flight %u); "
                              "retry later",
                              h->max_in_flight, h->max_in_flight);
        err.type = "rate_limit_exceeded";
        return respond_error(h, conn, route, &err);
    }
    gen_t **gs = calloc((size_t)choices, sizeof *gs);
    if (!gs) {
        atomic_fetch_sub(&h->in_flight, (unsigned)choices);
        dsla_openai_request_free(&req);
        dsla_openai_error_from_status(kind, dsla_error_oom("http: choices"), &err);
        return respond_error(h, conn, route, &err);
    }
    int started = 0;
    while (started < choices && (gs[started] = gen_start(h, conn, kind, &req, started, n, &err)))
        started++;
    const bool stream = req.stream;
    const int per_prompt = req.n, best_of = req.best_of > req.n ? req.best_of : req.n;
    dsla_openai_request_free(&req);
    if (started < choices) {
        atomic_fetch_sub(&h->in_flight, (unsigned)(choices - started - 1));
        for (int i = 0; i < started; i++)
            gen_free(gs[i]);
        free(gs);
        return respond_error(h, conn, route, &err);
    }
    if (!stream) return gen_whole(gs, choices, per_prompt, best_of, conn, route);
    if (choices > 1) return gen_stream_n(gs, choices, conn, route);
    gen_t *g = gs[0];
    free(gs);
    /* the first piece decides the status: a refusal is a plain error, not a stream */
    if (!gen_produce(g) || (g->failed && g->first)) {
        dsla_openai_error_t e = g->err;
        if (!g->failed) dsla_openai_error_from_status(kind, dsla_error_oom("http: a stream"), &e);
        gen_free(g);
        return respond_error(h, conn, route, &e);
    }
    return respond_stream(h, conn, route, gen_read, g, gen_read_done);
}

/* ---- models, health, metrics --------------------------------------------------------------- */

static json_t *model_json(const dsla_http_t *h) {
    return json_pack("{s:s, s:s, s:I, s:s}", "id", h->model, "object", "model", "created",
                     (json_int_t)h->started, "owned_by", "dsla-serve");
}

static enum MHD_Result models(dsla_http_t *h, struct MHD_Connection *conn) {
    json_t *root = json_pack("{s:s, s:[o]}", "object", "list", "data", model_json(h));
    return respond(h, conn, R_MODELS, 200, "application/json", json_text(root));
}

/* GET /v1/models/{id}: the served model, 404 for any other id. */
static enum MHD_Result model_by_id(dsla_http_t *h, struct MHD_Connection *conn, const char *id) {
    if (strcmp(id, h->model) == 0)
        return respond(h, conn, R_MODEL, 200, "application/json", json_text(model_json(h)));
    dsla_openai_error_t err;
    dsla_openai_error_set(&err, 404, "model",
                          "the model '%.64s' does not exist; this server serves '%.64s'", id,
                          h->model);
    err.code = "model_not_found";
    return respond_error(h, conn, R_MODEL, &err);
}

/* /tokenize, /detokenize, /version (openai_tokens.h). */
static enum MHD_Result utility(dsla_http_t *h, struct MHD_Connection *conn, route_t route,
                               const char *body, size_t len) {
    dsla_openai_error_t err;
    memset(&err, 0, sizeof err);
    char *out = route == R_VERSION ? dsla_openai_version()
                : route == R_TOKENIZE
                    ? dsla_openai_tokenize(h->tokenizer, h->model, body, len, &err)
                    : dsla_openai_detokenize(h->tokenizer, h->model, body, len, &err);
    if (!out && err.status) return respond_error(h, conn, route, &err);
    return respond(h, conn, route, 200, "application/json", out);
}

/* The gateway's REPORT, or why it could not be had. */
static dsla_proto_code_t report(dsla_http_t *h, dsla_proto_report_t *rep,
                                dsla_client_result_t *res) {
    dsla_client_t *c = client_get(h);
    if (!c) {
        res->code = DSLA_CODE_INTERNAL;
        snprintf(res->message, sizeof res->message, "%s", dsla_last_error());
        return res->code;
    }
    dsla_proto_code_t code = dsla_client_status(c, rep, REPORT_DEADLINE_MS, res);
    client_put(h, c);
    return code;
}

static enum MHD_Result health(dsla_http_t *h, struct MHD_Connection *conn) {
    dsla_proto_report_t *rep = calloc(1, sizeof *rep);
    if (!rep) return respond(h, conn, R_HEALTH, 500, "application/json", NULL);
    dsla_client_result_t res;
    json_t *replicas = json_array();
    int alive = 0;
    if (report(h, rep, &res) == DSLA_CODE_OK)
        for (uint32_t i = 0; i < rep->n_replicas; i++) {
            const dsla_proto_replica_report_t *r = &rep->replicas[i];
            alive += r->state == DSLA_PROTO_REPLICA_ALIVE;
            json_array_append_new(replicas, json_pack("{s:s, s:s, s:s, s:I}", "name", r->name,
                                                      "endpoint", r->endpoint, "state",
                                                      dsla_proto_replica_state_name(r->state),
                                                      "outstanding", (json_int_t)r->outstanding));
        }
    json_t *root =
        json_pack("{s:s, s:o}", "status", alive ? "ok" : "unavailable", "replicas", replicas);
    if (res.code != DSLA_CODE_OK) json_object_set_new(root, "error", json_string(res.message));
    free(rep);
    return respond(h, conn, R_HEALTH, alive ? 200 : 503, "application/json", json_text(root));
}

static void metric_head(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void replica_metric(FILE *f, const dsla_proto_report_t *rep, const char *name,
                           const char *type, const char *help, int field) {
    metric_head(f, name, type, help);
    for (uint32_t i = 0; i < rep->n_replicas; i++) {
        const dsla_proto_replica_report_t *r = &rep->replicas[i];
        unsigned long long v = field == 0   ? (r->state == DSLA_PROTO_REPLICA_ALIVE)
                               : field == 1 ? r->outstanding
                               : field == 2 ? r->routed
                                            : r->failed;
        fprintf(f, "%s{replica=\"", name);
        dsla_http_metrics_label(f, r->name);
        fputs("\",endpoint=\"", f);
        dsla_http_metrics_label(f, r->endpoint);
        fprintf(f, "\"} %llu\n", v);
    }
}

static void gateway_metrics(FILE *f, const dsla_proto_report_t *rep, bool up) {
    metric_head(f, "dsla_gateway_up", "gauge", "1 when the gateway answered STATUS");
    fprintf(f, "dsla_gateway_up %d\n", up);
    if (!up) return;
    static const struct {
        const char *name, *type, *help;
    } g[] = {
        {"dsla_gateway_requests_total", "counter", "GENERATE requests accepted by the gateway"},
        {"dsla_gateway_tokens_total", "counter", "TOKEN frames relayed to clients"},
        {"dsla_gateway_errors_total", "counter", "requests that ended with an ERROR"},
        {"dsla_gateway_rerouted_total", "counter", "requests moved to another replica"},
        {"dsla_gateway_in_flight", "gauge", "requests routed and not yet ended"},
    };
    const unsigned long long v[] = {rep->requests, rep->tokens, rep->errors, rep->rerouted,
                                    rep->in_flight};
    for (size_t i = 0; i < sizeof g / sizeof g[0]; i++) {
        metric_head(f, g[i].name, g[i].type, g[i].help);
        fprintf(f, "%s %llu\n", g[i].name, v[i]);
    }
    replica_metric(f, rep, "dsla_replica_up", "gauge", "1 while the replica answers heartbeats", 0);
    replica_metric(f, rep, "dsla_replica_outstanding", "gauge",
                   "requests routed to the replica and not yet ended", 1);
    replica_metric(f, rep, "dsla_replica_routed_total", "counter", "requests routed to the replica",
                   2);
    replica_metric(f, rep, "dsla_replica_failed_total", "counter",
                   "requests that failed on the replica or with it", 3);
}

static enum MHD_Result metrics(dsla_http_t *h, struct MHD_Connection *conn) {
    dsla_proto_report_t *rep = calloc(1, sizeof *rep);
    char *text = NULL;
    size_t len = 0;
    FILE *f = rep ? open_memstream(&text, &len) : NULL;
    if (!f) {
        free(rep);
        return respond(h, conn, R_METRICS, 500, "application/json", NULL);
    }
    dsla_client_result_t res;
    bool up = report(h, rep, &res) == DSLA_CODE_OK;
    count(h, R_METRICS, 200); /* counted before it is written, so that it counts itself */
    metric_head(f, "dsla_http_requests_total", "counter", "HTTP responses by path and status");
    for (int r = 0; r < N_ROUTES; r++)
        for (int k = 0; k <= N_CODES; k++) {
            unsigned long long v = atomic_load(&h->responses[r][k]);
            if (!v) continue;
            fprintf(f, "dsla_http_requests_total{path=\"%s\",code=\"", route_paths[r]);
            if (k < N_CODES)
                fprintf(f, "%d\"} %llu\n", counted_codes[k], v);
            else
                fprintf(f, "other\"} %llu\n", v);
        }
    metric_head(f, "dsla_http_in_flight", "gauge", "generation requests in progress");
    fprintf(f, "dsla_http_in_flight %u\n", atomic_load(&h->in_flight));
    metric_head(f, "dsla_http_prompt_tokens_total", "counter",
                "prompt tokens of finished requests");
    fprintf(f, "dsla_http_prompt_tokens_total %llu\n", atomic_load(&h->prompt_tokens));
    metric_head(f, "dsla_http_completion_tokens_total", "counter",
                "tokens generated for finished requests");
    fprintf(f, "dsla_http_completion_tokens_total %llu\n", atomic_load(&h->completion_tokens));
    gateway_metrics(f, rep, up);
    if (up) dsla_http_metrics_engines(f, rep, h->model);
    fclose(f);
    free(rep);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8");
    add_cors(h, conn, resp);
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

/* A CORS preflight (OPTIONS, with CORS on): 204 with what the route allows for a listed origin,
 * 403 for another. No key needed: browsers send none with a preflight. */
static enum MHD_Result preflight(dsla_http_t *h, struct MHD_Connection *conn, route_t route,
                                 bool post) {
    const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
    const char *asked =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Access-Control-Request-Headers");
    dsla_openai_error_t err;
    if (!dsla_http_cors_allow(h->cors, origin)) {
        dsla_openai_error_set(&err, 403, NULL,
                              "origin '%.200s' may not call this API from a browser: dsla-serve "
                              "--cors-origin lists the origins that may",
                              origin ? origin : "(none sent)");
        return respond_error(h, conn, route, &err);
    }
    if (!dsla_http_cors_headers_ok(asked)) {
        dsla_openai_error_set(&err, 400, NULL,
                              "Access-Control-Request-Headers must be a list of header names of "
                              "at most %d bytes",
                              DSLA_HTTP_CORS_REQUEST_HEADERS_MAX);
        return respond_error(h, conn, route, &err);
    }
    char max_age[16];
    snprintf(max_age, sizeof max_age, "%d", DSLA_HTTP_CORS_MAX_AGE_S);
    const char *const extra[] = {"Access-Control-Allow-Methods",
                                 post ? "POST, OPTIONS" : "GET, OPTIONS",
                                 "Access-Control-Allow-Headers",
                                 asked && *asked ? asked : "Authorization, Content-Type",
                                 "Access-Control-Max-Age",
                                 max_age,
                                 NULL};
    return respond_with(h, conn, route, 204, NULL, strdup(""), extra);
}

/* A request's body as it arrives. */
typedef struct {
    char *data;
    size_t len, cap;
    bool too_large;
    bool unauthorized; /* decided from the headers: the body is dropped unread */
} upload_t;

static bool upload_add(upload_t *u, const char *data, size_t n) {
    if (u->unauthorized) return true;
    if (u->too_large || u->len + n > DSLA_HTTP_BODY_MAX) {
        u->too_large = true;
        return true; /* read and drop the rest, then answer 413 */
    }
    if (u->len + n + 1 > u->cap) {
        size_t cap = 2 * (u->len + n) + 1024;
        char *grown = realloc(u->data, cap);
        if (!grown) return false;
        u->data = grown;
        u->cap = cap;
    }
    memcpy(u->data + u->len, data, n);
    u->len += n;
    u->data[u->len] = '\0';
    return true;
}

static route_t route_of(const char *url) {
    for (int r = 0; r < R_OTHER; r++)
        if (strcmp(url, route_paths[r]) == 0) return (route_t)r;
    if (strncmp(url, "/v1/models/", 11) == 0 && url[11]) return R_MODEL;
    return R_OTHER;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *data_size, void **con_cls) {
    (void)version;
    dsla_http_t *h = cls;
    upload_t *u = *con_cls;
    if (!u) {
        u = calloc(1, sizeof *u);
        *con_cls = u;
        /* a preflight carries no key (browsers send none), and grants nothing by itself */
        bool preflight_ok = h->cors && strcmp(method, "OPTIONS") == 0;
        if (u && h->auth && route_of(url) != R_HEALTH && !preflight_ok)
            u->unauthorized = !dsla_http_auth_check(
                h->auth,
                MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION));
        return u ? MHD_YES : MHD_NO;
    }
    if (*data_size) {
        bool ok = upload_add(u, data, *data_size);
        *data_size = 0;
        return ok ? MHD_YES : MHD_NO;
    }
    conn_reading(h, conn, false); /* the request is read whole: the deadline stops */
    route_t route = route_of(url);
    bool post =
        route == R_COMPLETIONS || route == R_CHAT || route == R_TOKENIZE || route == R_DETOKENIZE;
    dsla_openai_error_t err;
    if (u->unauthorized) {
        dsla_openai_error_set(&err, 401, NULL,
                              "missing or unknown API key: send it as 'Authorization: Bearer "
                              "KEY' (/health needs none)");
        err.type = "invalid_request_error";
        err.code = "invalid_api_key";
        return respond_error(h, conn, route, &err);
    }
    if (route == R_OTHER) {
        dsla_openai_error_set(&err, 404, NULL, "no such path: %.200s (see docs/http.md)", url);
        return respond_error(h, conn, route, &err);
    }
    if (h->cors && strcmp(method, "OPTIONS") == 0) return preflight(h, conn, route, post);
    if (strcmp(method, post ? "POST" : "GET") != 0) {
        dsla_openai_error_set(&err, 405, NULL, "%s takes %s, not %.16s", url, post ? "POST" : "GET",
                              method);
        return respond_error(h, conn, route, &err);
    }
    if (u->too_large) {
        dsla_openai_error_set(&err, 413, NULL, "the request body is larger than %u bytes",
                              DSLA_HTTP_BODY_MAX);
        return respond_error(h, conn, route, &err);
    }
    switch (route) {
    case R_MODELS:
        return models(h, conn);
    case R_HEALTH:
        return health(h, conn);
    case R_METRICS:
        return metrics(h, conn);
    case R_MODEL:
        return model_by_id(h, conn, url + 11);
    case R_TOKENIZE:
    case R_DETOKENIZE:
    case R_VERSION:
        return utility(h, conn, route, u->data ? u->data : "", u->len);
    default:
        return generate(h, conn, route, u->data ? u->data : "", u->len);
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode why) {
    (void)why;
    conn_reading(cls, conn, true); /* a kept-alive connection's next request starts now */
    upload_t *u = *con_cls;
    if (u) free(u->data);
    free(u);
    *con_cls = NULL;
}

/* Rate-limited: with descriptors exhausted libmicrohttpd logs every failed accept, and it retries
 * at once (a flood of 59 MB/s of log was measured). */
static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    dsla_http_t *h = cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    pthread_mutex_lock(&h->conn_mu); /* MHD logs from any connection's thread */
    DSLA_LOG_LIMITED(&h->mhd_log, DSLA_LOG_WARN, "http: %s", line);
    pthread_mutex_unlock(&h->conn_mu);
}

/* ---- life cycle ---------------------------------------------------------------------------- */

/* "127.0.0.1:8000", "[::1]:8000", "localhost:8000", with or without "http://". */
static dsla_status_t parse_address(const char *address, struct sockaddr_storage *ss, bool *v6) {
    const char *a = strncmp(address, "http://", 7) == 0 ? address + 7 : address;
    const char *colon = strrchr(a, ':');
    char host[64];
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    size_t host_len = colon ? (size_t)(colon - a) : 0;
    if (!colon || !end || end == colon + 1 || (*end && strcmp(end, "/") != 0) || port < 0 ||
        port > 65535 || host_len == 0 || host_len >= sizeof host)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "HTTP address '%s' must be HOST:PORT (127.0.0.1:8000, [::1]:8000; port "
                          "0 picks a free one)",
                          address);
    memcpy(host, a, host_len);
    host[host_len] = '\0';
    memset(ss, 0, sizeof *ss);
    *v6 = host[0] == '[';
    if (*v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        bool closed = host[host_len - 1] == ']';
        host[host_len - 1] = '\0';
        if (!closed || inet_pton(AF_INET6, host + 1, &s6->sin6_addr) != 1)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "HTTP address '%s': bad IPv6 host",
                              address);
        return DSLA_OK;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0) snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "HTTP address '%s': host '%s' is not an IPv4 address, [IPv6] or "
                          "localhost",
                          address, host);
    return DSLA_OK;
}

/* 127.0.0.0/8 and ::1: the only addresses where a front end without keys may listen. */
static bool is_loopback(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

dsla_status_t dsla_http_create(dsla_http_t **out, const dsla_http_config_t *config) {
    *out = NULL;
    struct sockaddr_storage ss;
    bool v6 = false;
    DSLA_TRY(parse_address(config->address, &ss, &v6));
    if (!config->auth && !config->allow_insecure && !is_loopback(&ss))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "http: refusing to listen on %s, beyond loopback, without an API key: "
                          "give --api-key-file FILE or DSLA_API_KEY (or --allow-insecure to "
                          "serve anyone who can reach it)",
                          config->address);
    if (!config->gateway || strlen(config->gateway) > DSLA_PROTO_ENDPOINT_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "http: the gateway endpoint is missing");
    dsla_http_t *h = calloc(1, sizeof *h);
    if (!h) return dsla_error_oom("http");
    h->listen_fd = h->reserve_fd = -1;
    snprintf(h->gateway, sizeof h->gateway, "%s", config->gateway);
    snprintf(h->model, sizeof h->model, "%s", config->model ? config->model : "dsla");
    h->tokenizer = config->tokenizer;
    h->chat = (dsla_openai_chat_template_t){config->chat_template,
                                            !config->tokenizer ||
                                                dsla_tokenizer_add_bos_default(config->tokenizer)};
    h->heartbeat_ms = config->heartbeat_ms;
    h->auth = config->auth;
    if (config->curve_server_key && config->curve_public_key && config->curve_secret_key) {
        h->curve = true;
        snprintf(h->curve_server, sizeof h->curve_server, "%s", config->curve_server_key);
        snprintf(h->curve_public, sizeof h->curve_public, "%s", config->curve_public_key);
        snprintf(h->curve_secret, sizeof h->curve_secret, "%s", config->curve_secret_key);
    }
    if (config->n_cors_origins) {
        dsla_status_t st =
            dsla_http_cors_create(&h->cors, config->cors_origins, config->n_cors_origins);
        if (st != DSLA_OK) {
            free(h);
            return st;
        }
    }
    h->max_in_flight = config->max_in_flight ? config->max_in_flight : DSLA_HTTP_IN_FLIGHT_MAX;
    h->read_deadline_ms =
        config->read_deadline_ms ? config->read_deadline_ms : DSLA_HTTP_READ_DEADLINE_MS;
    h->started = (long long)time(NULL);
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->conn_mu, NULL);
    pthread_cond_init(&h->conn_cv, NULL);
    h->zctx = zmq_ctx_new();
    if (!h->zctx) {
        dsla_status_t st =
            dsla_error(DSLA_ERR_INTERNAL, "http: zmq_ctx_new: %s", zmq_strerror(zmq_errno()));
        dsla_http_destroy(&h);
        return st;
    }
    /* One client socket per request in flight (plus the pool and the health checks): ZeroMQ's
     * default of 1023 sockets would fail requests well inside max_in_flight. */
    zmq_ctx_set(h->zctx, ZMQ_MAX_SOCKETS, (int)h->max_in_flight + CLIENT_POOL_MAX + 64);
    h->conn_limit = connection_limit(h->max_in_flight);
    dsla_status_t lst = listen_on(&ss, v6, config->address, &h->listen_fd);
    if (lst != DSLA_OK) {
        dsla_http_destroy(&h);
        return lst;
    }
    h->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC |
                     (v6 ? MHD_USE_IPv6 : 0);
    /* MHD's own limit stays above the accept thread's (conn_limit), never met (see accept_main)
     */
    h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER,
                                 on_mhd_log, h, MHD_OPTION_CONNECTION_LIMIT, 2 * h->conn_limit + 64,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT_S,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                                 MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_END);
    if (!h->daemon) {
        dsla_http_destroy(&h);
        return dsla_error(DSLA_ERR_INTERNAL, "http: libmicrohttpd did not start on %s",
                          config->address);
    }
    h->sweeper_on = pthread_create(&h->sweeper, NULL, sweep, h) == 0;
    h->acceptor_on = h->sweeper_on && pthread_create(&h->acceptor, NULL, accept_main, h) == 0;
    if (!h->acceptor_on) {
        dsla_http_destroy(&h);
        return dsla_error(DSLA_ERR_INTERNAL, "http: cannot start the front end's threads");
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (getsockname(h->listen_fd, (struct sockaddr *)&bound, &blen) == 0)
        h->port = ntohs(v6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                           : ((struct sockaddr_in *)&bound)->sin_port);
    *out = h;
    return DSLA_OK;
}

unsigned dsla_http_drain(dsla_http_t *h, uint32_t grace_ms) {
    atomic_store(&h->accept_stop, true); /* no new connection: its clients are refused */
    if (h->acceptor_on) pthread_join(h->acceptor, NULL);
    h->acceptor_on = false;
    if (h->listen_fd >= 0) close(h->listen_fd);
    h->listen_fd = -1;
    unsigned left = atomic_load(&h->in_flight);
    if (left) dsla_log_info("http: draining %u requests in flight (at most %u ms)", left, grace_ms);
    const uint64_t until = now_ms() + grace_ms;
    while ((left = atomic_load(&h->in_flight)) > 0 && now_ms() < until)
        sleep_ms(10);
    if (left)
        dsla_log_warn("http: %u requests still in flight after %u ms; they end UNAVAILABLE", left,
                      grace_ms);
    return left;
}

void dsla_http_destroy(dsla_http_t **hp) {
    if (!hp || !*hp) return;
    dsla_http_t *h = *hp;
    pthread_mutex_lock(&h->conn_mu);
    h->stopping = true;
    pthread_cond_signal(&h->conn_cv);
    pthread_mutex_unlock(&h->conn_mu);
    if (h->sweeper_on) pthread_join(h->sweeper, NULL);
    atomic_store(&h->accept_stop, true);
    if (h->acceptor_on) pthread_join(h->acceptor, NULL);
    if (h->listen_fd >= 0) close(h->listen_fd);
    if (h->reserve_fd >= 0) close(h->reserve_fd);
    if (h->zctx) zmq_ctx_shutdown(h->zctx); /* requests waiting on the gateway end now */
    if (h->daemon) MHD_stop_daemon(h->daemon);
    for (int i = 0; i < h->n_pool; i++)
        dsla_client_close(&h->pool[i]);
    if (h->zctx) zmq_ctx_term(h->zctx);
    pthread_cond_destroy(&h->conn_cv);
    pthread_mutex_destroy(&h->conn_mu);
    pthread_mutex_destroy(&h->mu);
    dsla_http_cors_destroy(&h->cors);
    free(h);
    *hp = NULL;
}

int dsla_http_port(const dsla_http_t *h) {
    return h->port;
}

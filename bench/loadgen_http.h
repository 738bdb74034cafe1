/* One streamed completion over HTTP/1.1 for the load generator: POST a JSON body with
 * Connection: close, read the status, de-chunk the body and walk its server-sent events as they
 * arrive, timing the first and the last event that carries text, and reading the usage and the
 * finish reason of the last chunk (docs/http.md, "Responses").
 *
 * Plain POSIX sockets, one blocking connection per call, safe to call from many threads at once:
 * the load generator runs one call per worker thread. It only speaks to the address it is given
 * and knows nothing of engines or of the load generator's workload. */
#ifndef DSLA_BENCH_LOADGEN_HTTP_H
#define DSLA_BENCH_LOADGEN_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

typedef struct {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char host[192]; /* the Host header: "127.0.0.1:8000" */
    char path[256]; /* "/v1/completions" */
    bool keep_text; /* gather the answer's text into the result's text (the caller frees it) */
} loadgen_http_target_t;

typedef struct {
    int status;             /* HTTP status; 0 when no response was read */
    double sent_s;          /* when the request was written */
    double first_s, last_s; /* first and last event with text; -1 when none */
    double end_s;           /* when the response ended */
    int events;             /* events that carried text */
    double max_gap_s;       /* the longest wait between two of them */
    int prompt_tokens;      /* from usage; 0 when absent */
    int completion_tokens;  /* from usage; -1 when absent */
    bool done;              /* [DONE] was seen: the stream completed */
    char finish[16];        /* finish_reason of the last chunk */
    char error[96];         /* why it failed, short: "connect: Connection refused" */
    char id[64];            /* the response's id ("cmpl-7"); "" when absent */
    char fingerprint[128];  /* its system_fingerprint (the replica and plan); "" when absent */
    char *text;             /* with keep_text: the text, NUL-terminated (malloc'd); else NULL */
    size_t text_len;
} loadgen_http_result_t;

/* "http://HOST:PORT[/]" (an IPv4 address or a name) into t, with path as the request path. */
bool loadgen_http_target_parse(const char *url, const char *path, loadgen_http_target_t *t,
                               char *err, size_t err_size);

/* Sends body and reads the streamed answer; a recv that waits more than timeout_s fails it.
 * now() is the caller's monotonic clock in seconds. Returns result->status == 200 && done. */
bool loadgen_http_stream(const loadgen_http_target_t *t, const char *body, size_t len,
                         double timeout_s, double (*now)(void), loadgen_http_result_t *result);

#endif

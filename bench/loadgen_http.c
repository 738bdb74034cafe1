/* One streamed completion over HTTP/1.1 (loadgen_http.h). */
#include "bench/loadgen_http.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <jansson.h>

/* Response head and one SSE line at most: far above what docs/http.md's server sends (an event is
 * one piece of at most DSLA_PROTO_PIECE_MAX bytes, JSON-escaped). */
enum { HEAD_MAX = 16384, LINE_MAX_BYTES = 1 << 20, ERROR_BODY_MAX = 4096, RECV_BYTES = 16384 };

bool loadgen_http_target_parse(const char *url, const char *path, loadgen_http_target_t *t,
                               char *err, size_t err_size) {
    memset(t, 0, sizeof *t);
    if (strncmp(url, "http://", 7) != 0) {
        snprintf(err, err_size, "--url '%s' must be http://HOST:PORT", url);
        return false;
    }
    char host[128];
    snprintf(host, sizeof host, "%s", url + 7);
    char *slash = strchr(host, '/');
    if (slash) *slash = '\0';
    char *colon = strrchr(host, ':');
    const char *port = "80";
    if (colon) {
        *colon = '\0';
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    const int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, err_size, "--url '%s': %s", url, gai_strerror(rc));
        return false;
    }
    memcpy(&t->addr, res->ai_addr, res->ai_addrlen);
    t->addr_len = res->ai_addrlen;
    freeaddrinfo(res);
    snprintf(t->host, sizeof t->host, "%s:%s", host, port);
    snprintf(t->path, sizeof t->path, "%s", path);
    return true;
}

/* ---- the response, walked as it arrives ---------------------------------------------------- */

typedef enum { CHUNK_SIZE, CHUNK_DATA, CHUNK_END, BODY_DONE } chunk_state_t;

typedef struct {
    loadgen_http_result_t *res;
    double (*now)(void);
    bool keep_text;
    size_t text_cap;
    bool chunked;
    chunk_state_t state;
    size_t chunk_left;
    char size_line[32];
    size_t size_len;
    char *line; /* the SSE line being read (or, after a refusal, the error body) */
    size_t line_len, line_cap;
    bool overflow;
} reader_t;

static void set_error(loadgen_http_result_t *r, const char *fmt, const char *what) {
    if (!r->error[0]) snprintf(r->error, sizeof r->error, fmt, what);
}

/* Adds a piece of the answer to the result's text (a failure to grow it fails the request). */
static void append_text(reader_t *rd, const json_t *piece) {
    loadgen_http_result_t *r = rd->res;
    const size_t n = json_string_length(piece);
    if (r->text_len + n + 1 > rd->text_cap) {
        const size_t cap = 2 * (r->text_len + n + 1) + 256;
        char *grown = realloc(r->text, cap);
        if (!grown) {
            set_error(r, "%s", "out of memory for the answer's text");
            return;
        }
        r->text = grown;
        rd->text_cap = cap;
    }
    memcpy(r->text + r->text_len, json_string_value(piece), n);
    r->text_len += n;
    r->text[r->text_len] = '\0';
}

/* One `data: ...` payload. */
static void on_event(reader_t *rd, const char *data, size_t len) {
    loadgen_http_result_t *r = rd->res;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->done = true;
        return;
    }
    json_t *j = json_loadb(data, len, JSON_ALLOW_NUL, NULL); /* "\u0000" is valid JSON */
    if (!j) {
        set_error(r, "%s", "an event that is not JSON");
        return;
    }
    json_t *error = json_object_get(j, "error");
    if (error) {
        const char *msg = json_string_value(json_object_get(error, "message"));
        set_error(r, "stream error: %.80s", msg ? msg : "?");
    }
    json_t *choice = json_array_get(json_object_get(j, "choices"), 0);
    json_t *text = json_object_get(choice, "text");
    if (!text) text = json_object_get(json_object_get(choice, "delta"), "content");
    if (json_string_length(text) > 0 && rd->keep_text) append_text(rd, text);
    if (json_string_length(text) > 0) {
        const double t = rd->now();
        if (r->events++ == 0)
            r->first_s = t;
        else if (t - r->last_s > r->max_gap_s)
            r->max_gap_s = t - r->last_s;
        r->last_s = t;
    }
    const char *id = json_string_value(json_object_get(j, "id"));
    if (id) snprintf(r->id, sizeof r->id, "%s", id);
    const char *fp = json_string_value(json_object_get(j, "system_fingerprint"));
    if (fp) snprintf(r->fingerprint, sizeof r->fingerprint, "%s", fp);
    const char *finish = json_string_value(json_object_get(choice, "finish_reason"));
    if (finish) snprintf(r->finish, sizeof r->finish, "%s", finish);
    json_t *usage = json_object_get(j, "usage");
    if (usage) {
        r->prompt_tokens = (int)json_integer_value(json_object_get(usage, "prompt_tokens"));
        r->completion_tokens = (int)json_integer_value(json_object_get(usage, "completion_tokens"));
    }
    json_decref(j);
}

/* Body bytes after de-chunking: SSE lines on success, the error body otherwise. */
static void on_body(reader_t *rd, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (rd->res->status == 200 && p[i] == '\n') {
            size_t len = rd->line_len;
            if (len && rd->line[len - 1] == '\r') len--;
            if (!rd->overflow && len >= 6 && memcmp(rd->line, "data: ", 6) == 0)
                on_event(rd, rd->line + 6, len - 6);
            if (rd->overflow) set_error(rd->res, "%s", "an event line above 1 MiB");
            rd->line_len = 0;
            rd->overflow = false;
            continue;
        }
        const size_t limit = rd->res->status == 200 ? LINE_MAX_BYTES : ERROR_BODY_MAX;
        if (rd->line_len + 1 >= limit) {
            rd->overflow = true;
            continue;
        }
        if (rd->line_len + 1 >= rd->line_cap) {
            const size_t cap = rd->line_cap ? 2 * rd->line_cap : 1024;
            char *grown = realloc(rd->line, cap);
            if (!grown) {
                rd->overflow = true;
                continue;
            }
            rd->line = grown;
            rd->line_cap = cap;
        }
        rd->line[rd->line_len++] = p[i];
    }
}

static void feed(reader_t *rd, const char *p, size_t n) {
    if (!rd->chunked) {
        on_body(rd, p, n);
        return;
    }
    size_t i = 0;
    while (i < n && rd->state != BODY_DONE) {
        if (rd->state == CHUNK_SIZE) {
            const char c = p[i++];
            if (c == '\n') {
                rd->size_line[rd->size_len] = '\0';
                rd->chunk_left = strtoul(rd->size_line, NULL, 16);
                rd->size_len = 0;
                rd->state = rd->chunk_left ? CHUNK_DATA : BODY_DONE;
            } else if (rd->size_len + 1 < sizeof rd->size_line) {
                rd->size_line[rd->size_len++] = c;
            }
        } else if (rd->state == CHUNK_DATA) {
            const size_t take = n - i < rd->chunk_left ? n - i : rd->chunk_left;
            on_body(rd, p + i, take);
            i += take;
            rd->chunk_left -= take;
            if (rd->chunk_left == 0) rd->state = CHUNK_END;
        } else { /* the CRLF after a chunk's data */
            if (p[i++] == '\n') rd->state = CHUNK_SIZE;
        }
    }
}

/* The error body's message ("{"error": {"message": ...}}"), else its first bytes. */
static void error_from_body(reader_t *rd) {
    loadgen_http_result_t *r = rd->res;
    json_t *j = rd->line ? json_loadb(rd->line, rd->line_len, 0, NULL) : NULL;
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    char what[64];
    snprintf(what, sizeof what, "%.60s", msg ? msg : "");
    snprintf(r->error, sizeof r->error, "HTTP %d: %s", r->status, what);
    json_decref(j);
}

static bool write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        const ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

bool loadgen_http_stream(const loadgen_http_target_t *t, const char *body, size_t len,
                         double timeout_s, double (*now)(void), loadgen_http_result_t *r) {
    memset(r, 0, sizeof *r);
    r->first_s = r->last_s = -1;
    r->completion_tokens = -1;
    const int fd = socket(t->addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        set_error(r, "socket: %s", strerror(errno));
        r->end_s = now();
        return false;
    }
    struct timeval tv = {.tv_sec = (time_t)timeout_s,
                         .tv_usec = (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char head[512];
    const int hn = snprintf(head, sizeof head,
                            "POST %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                            "Content-Length: %zu\r\n\r\n",
                            t->path, t->host, len);
    reader_t rd = {.res = r, .now = now, .keep_text = t->keep_text};
    char *buf = malloc(RECV_BYTES), *hbuf = malloc(HEAD_MAX + 1);
    size_t hlen = 0;
    bool in_body = false;
    if (!buf || !hbuf) {
        set_error(r, "%s", "out of memory");
    } else if (connect(fd, (const struct sockaddr *)&t->addr, t->addr_len) != 0) {
        set_error(r, "connect: %s", strerror(errno));
    } else if (r->sent_s = now(), !write_all(fd, head, (size_t)hn) || !write_all(fd, body, len)) {
        set_error(r, "send: %s", strerror(errno));
    } else {
        for (;;) {
            const ssize_t got = recv(fd, buf, RECV_BYTES, 0);
            if (got < 0 && errno == EINTR) continue;
            if (got < 0) {
                set_error(r, "%s",
                          errno == EAGAIN || errno == EWOULDBLOCK ? "timeout" : strerror(errno));
                break;
            }
            if (got == 0) break;
            size_t off = 0;
            if (!in_body) {
                const size_t take = hlen + (size_t)got > HEAD_MAX ? HEAD_MAX - hlen : (size_t)got;
                memcpy(hbuf + hlen, buf, take);
                hlen += take;
                hbuf[hlen] = '\0';
                char *sep = strstr(hbuf, "\r\n\r\n");
                if (!sep) {
                    if (hlen == HEAD_MAX) {
                        set_error(r, "%s", "a response head above 16 KiB");
                        break;
                    }
                    continue;
                }
                *sep = '\0';
                if (sscanf(hbuf, "HTTP/1.%*d %d", &r->status) != 1) {
                    set_error(r, "%s", "not an HTTP response");
                    break;
                }
                for (char *p = hbuf; *p; p++)
                    *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
                rd.chunked = strstr(hbuf, "transfer-encoding: chunked") != NULL;
                in_body = true;
                /* what followed the head in this read */
                const size_t body_at = (size_t)(sep + 4 - hbuf);
                off = take - (hlen - body_at);
            }
            feed(&rd, buf + off, (size_t)got - off);
            if (rd.state == BODY_DONE) break;
        }
    }
    r->end_s = now();
    if (r->status != 0 && r->status != 200)
        error_from_body(&rd);
    else if (r->status == 200 && !r->done)
        set_error(r, "%s", "the stream ended without [DONE]");
    else if (r->status == 0)
        set_error(r, "%s", "no response");
    close(fd);
    free(buf);
    free(hbuf);
    free(rd.line);
    return r->status == 200 && r->done && !r->error[0];
}

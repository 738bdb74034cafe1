/* Helpers for tests that drive dsla-serve processes on loopback: start one with its arguments and
 * read the endpoints it prints, stop or kill it, and a tiny HTTP/1.1 client (raw sockets, chunked
 * bodies decoded) so that the HTTP API is tested without a new dependency.
 *
 * Servers still running when the test process exits are killed (dsla_test_servers_kill_all,
 * registered with atexit by the first start), so that a failed assertion leaves no orphan holding
 * ctest's output pipe open; tests need not call it. Nothing here talks to anything but
 * 127.0.0.1. */
#ifndef DSLA_TESTS_SERVERUTIL_H
#define DSLA_TESTS_SERVERUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;
    char endpoint[256]; /* "listening on ENDPOINT" */
    int http_port;      /* from "http on http://HOST:PORT"; 0 when HTTP is off */
} dsla_test_server_t;

/* Runs $DSLA_BIN/dsla-serve with the NULL-terminated arguments after argv[0]; returns once it
 * printed its endpoints (fails the test otherwise). */
dsla_test_server_t dsla_test_server_start(const char *const *args);
/* The same with the server's stderr appended to log_path (NULL: the test's stderr), for tests
 * that read what it logs. */
dsla_test_server_t dsla_test_server_start_logged(const char *const *args, const char *log_path);
/* SIGTERM, and the test fails unless it exits 0. */
void dsla_test_server_stop(dsla_test_server_t *s);
/* SIGKILL, reaped; safe from a callback in the middle of a request. */
void dsla_test_server_kill(pid_t pid);
void dsla_test_servers_kill_all(void);
/* $DSLA_BIN, default build/bin. */
const char *dsla_test_bin_dir(void);

enum { DSLA_TEST_IDS_MAX = 4096 };

/* Token ids streamed to a client stub callback (dsla_test_collect as the callback, this as user).
 */
typedef struct {
    int32_t ids[DSLA_TEST_IDS_MAX];
    int n;
    pid_t kill_on_first; /* > 0: SIGKILL this process when the first token arrives */
} dsla_test_collected_t;

int dsla_test_collect(void *user, int32_t token, const char *text, size_t len);

/* `dsla generate` in-process, greedy, past end-of-sequence: the text after the prompt (malloc'd),
 * and its token ids when ids is not NULL. */
char *dsla_test_inprocess(const char *model, const char *prompt, int max_tokens, int32_t *ids,
                          int *n_ids);

typedef struct {
    int status; /* 0 when no response could be read */
    char *head; /* status line and headers, NUL-terminated */
    char *body; /* de-chunked, NUL-terminated */
    size_t body_len;
} dsla_test_http_reply_t;

/* One request on a fresh connection (Connection: close) to 127.0.0.1:port; body may be NULL.
 * Gives up after 60 s. */
dsla_test_http_reply_t dsla_test_http(int port, const char *method, const char *path,
                                      const char *body);
/* The same with extra header lines, each ending in \r\n ("Authorization: Bearer K\r\n"). */
dsla_test_http_reply_t dsla_test_http_with(int port, const char *method, const char *path,
                                           const char *headers, const char *body);
void dsla_test_http_reply_free(dsla_test_http_reply_t *r);
/* Waits (up to 10 s) until GET /health answers 200; fails the test otherwise. */
void dsla_test_http_wait_healthy(int port);

#endif

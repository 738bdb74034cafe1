#include "tests/serverutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/testutil.h"

enum { LIVE_MAX = 8, HTTP_TIMEOUT_S = 60, ARGS_MAX = 96 };

static pid_t live[LIVE_MAX];

const char *dsla_test_bin_dir(void) {
    const char *bin = getenv("DSLA_BIN");
    return bin ? bin : "build/bin";
}

static void forget(pid_t pid) {
    for (int i = 0; i < LIVE_MAX; i++)
        if (live[i] == pid) live[i] = 0;
}

void dsla_test_server_kill(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    forget(pid);
}

void dsla_test_servers_kill_all(void) {
    for (int i = 0; i < LIVE_MAX; i++)
        if (live[i] > 0) dsla_test_server_kill(live[i]);
}

dsla_test_server_t dsla_test_server_start(const char *const *args) {
    return dsla_test_server_start_logged(args, NULL);
}

dsla_test_server_t dsla_test_server_start_logged(const char *const *args, const char *log_path) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    dsla_test_server_t s = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/dsla-serve", dsla_test_bin_dir());
    const char *argv[ARGS_MAX] = {path};
    int n = 1;
    while (args[n - 1]) { /* never cut short: a missing value reads as a usage error */
        if (n == ARGS_MAX - 1) fail_msg("dsla-serve: more than %d arguments", ARGS_MAX - 2);
        argv[n] = args[n - 1];
        n++;
    }
    s.pid = fork();
    assert_true(s.pid >= 0);
    if (s.pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        if (log_path) {
            int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd < 0 || dup2(fd, STDERR_FILENO) < 0) _exit(127);
            close(fd);
        }
        close(fds[0]);
        close(fds[1]);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    static bool reaper_registered;
    if (!reaper_registered) /* a failed assertion must not leave servers holding ctest's pipe */
        reaper_registered = atexit(dsla_test_servers_kill_all) == 0;
    for (int i = 0; i < LIVE_MAX; i++)
        if (live[i] == 0) {
            live[i] = s.pid;
            break;
        }
    close(fds[1]);
    FILE *out = fdopen(fds[0], "r");
    char line[512] = "";
    if (!fgets(line, sizeof line, out)) {
        int status = 0; /* how it ended says where to look: a usage error, a failure, a signal */
        waitpid(s.pid, &status, 0);
        fail_msg("dsla-serve printed no endpoint (%s %d%s%s)",
                 WIFSIGNALED(status) ? "killed by signal" : "exit code",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                 log_path ? "; its stderr is in " : "", log_path ? log_path : "");
    }
    if (sscanf(line, "listening on %255s", s.endpoint) != 1) fail_msg("dsla-serve said: %s", line);
    bool http = true;
    for (int i = 0; args[i]; i++)
        if ((strcmp(args[i], "--http") == 0 && args[i + 1] && strcmp(args[i + 1], "off") == 0) ||
            strcmp(args[i], "--serving-only") == 0)
            http = false;
    if (http) {
        if (!fgets(line, sizeof line, out)) fail_msg("dsla-serve printed no HTTP address");
        const char *colon = strrchr(line, ':');
        if (strncmp(line, "http on http://", 15) != 0 || !colon)
            fail_msg("dsla-serve said: %s", line);
        s.http_port = atoi(colon + 1);
    }
    fclose(out);
    return s;
}

void dsla_test_server_stop(dsla_test_server_t *s) {
    kill(s->pid, SIGTERM);
    int status = 0;
    assert_int_equal(waitpid(s->pid, &status, 0), s->pid);
    forget(s->pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int dsla_test_collect(void *user, int32_t token, const char *text, size_t len) {
    (void)text;
    (void)len;
    dsla_test_collected_t *c = user;
    if (token >= 0 && c->n < DSLA_TEST_IDS_MAX) c->ids[c->n++] = token;
    if (c->kill_on_first > 0 && c->n == 1) dsla_test_server_kill(c->kill_on_first);
    return 0;
}

char *dsla_test_inprocess(const char *model, const char *prompt, int max_tokens, int32_t *ids,
                          int *n_ids) {
    char *dir = dsla_test_tempdir();
    char cmd[4096], out_path[512], err_path[512];
    snprintf(out_path, sizeof out_path, "%s/out", dir);
    snprintf(err_path, sizeof err_path, "%s/err", dir);
    snprintf(cmd, sizeof cmd,
             "%s/dsla generate --model '%s' --prompt '%s' --temperature 0 --max-tokens %d "
             "--ignore-eos --print-ids >%s 2>%s",
             dsla_test_bin_dir(), model, prompt, max_tokens, out_path, err_path);
    assert_int_equal(system(cmd), 0);
    char *out = dsla_test_read_file(out_path, NULL);
    char *err = dsla_test_read_file(err_path, NULL);
    assert_non_null(out);
    assert_non_null(err);
    assert_memory_equal(out, prompt, strlen(prompt)); /* it echoes the prompt first */
    char *text = strdup(out + strlen(prompt));
    size_t n = strlen(text);
    if (n && text[n - 1] == '\n') text[n - 1] = '\0'; /* and ends the line */
    if (ids) {
        const char *p = strstr(err, "ids:");
        assert_non_null(p);
        p += 4;
        char *end;
        *n_ids = 0;
        for (long v = strtol(p, &end, 10); end != p && *n_ids < DSLA_TEST_IDS_MAX;
             v = strtol(p, &end, 10)) {
            ids[(*n_ids)++] = (int32_t)v;
            p = end;
        }
    }
    free(out);
    free(err);
    dsla_test_rmtree(dir);
    free(dir);
    return text;
}

/* Decodes a chunked body in place; returns its length. */
static size_t dechunk(char *body, size_t len) {
    size_t in = 0, out = 0;
    while (in < len) {
        char *end = NULL;
        unsigned long n = strtoul(body + in, &end, 16);
        char *crlf = strstr(body + in, "\r\n");
        if (!crlf || n == 0 || (size_t)(crlf - body) + 2 + n > len) break;
        (void)end;
        memmove(body + out, crlf + 2, n);
        out += n;
        in = (size_t)(crlf - body) + 2 + n + 2;
    }
    body[out] = '\0';
    return out;
}

dsla_test_http_reply_t dsla_test_http(int port, const char *method, const char *path,
                                      const char *body) {
    return dsla_test_http_with(port, method, path, "", body);
}

dsla_test_http_reply_t dsla_test_http_with(int port, const char *method, const char *path,
                                           const char *headers, const char *body) {
    dsla_test_http_reply_t r = {0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = HTTP_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return r;
    }
    size_t blen = body ? strlen(body) : 0;
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n",
                      method, path, port, blen, headers);
    assert_true(hn > 0 && hn < (int)sizeof head);
    assert_int_equal(write(fd, head, (size_t)hn), hn);
    if (blen) assert_int_equal(write(fd, body, blen), (ssize_t)blen);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 1024 > cap) buf = realloc(buf, cap *= 2);
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", &r.status) != 1) {
        free(buf);
        r.status = 0;
        return r;
    }
    *sep = '\0';
    r.head = strdup(buf);
    size_t off = (size_t)(sep + 4 - buf);
    r.body_len = len - off;
    r.body = malloc(r.body_len + 1);
    memcpy(r.body, buf + off, r.body_len);
    r.body[r.body_len] = '\0';
    if (strstr(r.head, "chunked") || strstr(r.head, "Chunked"))
        r.body_len = dechunk(r.body, r.body_len);
    free(buf);
    return r;
}

void dsla_test_http_reply_free(dsla_test_http_reply_t *r) {
    free(r->head);
    free(r->body);
    r->head = r->body = NULL;
}

void dsla_test_http_wait_healthy(int port) {
    for (int i = 0; i < 200; i++) {
        dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/health", NULL);
        int status = r.status;
        dsla_test_http_reply_free(&r);
        if (status == 200) return;
        nanosleep(&(struct timespec){.tv_sec = 0, .tv_nsec = 50 * 1000000L}, NULL);
    }
    fail_msg("/health never answered 200");
}

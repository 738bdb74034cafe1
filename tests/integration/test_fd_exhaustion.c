/* Descriptor exhaustion (issue 10): 1,100 idle ZeroMQ connections used up dsla-serve's descriptors
 * and libmicrohttpd then retried its failing accept in a loop, logging each failure (59 MB/s of
 * log, a core busy). Here dsla-serve runs with an open-files limit of NOFILE (soft and hard, so
 * that it cannot raise it); idle HTTP connections beyond its connection limit and idle TCP
 * connections to its ZeroMQ mailbox use up what is left, while fresh HTTP clients keep knocking.
 * Meanwhile the server stays nearly idle (CPU time over a window, not a busy loop) and logs a
 * bounded number of lines; once the connections close it answers /health again. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "runtime/core/clock.h"
#include "tests/serverutil.h"

enum {
    NOFILE = 256,
    IDLE_HTTP = 100, /* well above the connection limit NOFILE leaves */
    IDLE_ZMQ = 400,  /* more than the descriptors left */
    KNOCKS = 60,     /* fresh HTTP connections while exhausted */
    WINDOW_MS = 3000,
    CPU_MAX_MS = 1000, /* a busy loop takes the whole window */
    LOG_LINES_MAX = 40,
    RECOVER_MS = 20000,
};

/* The process's user + system CPU time in ms (/proc/PID/stat). */
static long cpu_ms(pid_t pid) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    assert_non_null(p);
    unsigned long ut = 0, st = 0; /* fields 14 and 15; p is at field 2's end */
    int field = 2;
    for (const char *q = p + 1; *q && field < 15; q++)
        if (*q == ' ') {
            field++;
            if (field == 14) ut = strtoul(q + 1, NULL, 10);
            if (field == 15) st = strtoul(q + 1, NULL, 10);
        }
    return (long)((ut + st) * 1000 / (unsigned long)sysconf(_SC_CLK_TCK));
}

static long count_lines(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long n = 0;
    int c;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* /health's status once it is 200, or the last one after ms. */
static int health_within(int port, long ms) {
    const uint64_t t0 = dsla_clock_ms();
    int status = 0;
    while (status != 200 && dsla_clock_ms() - t0 < (uint64_t)ms) {
        dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/health", NULL);
        status = r.status;
        dsla_test_http_reply_free(&r);
        if (status != 200) sleep_ms(100);
    }
    return status;
}

static void test_descriptors_exhausted(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 4 * (IDLE_HTTP + IDLE_ZMQ + KNOCKS)) skip();
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);

    char log_path[] = "/tmp/dsla-fd-exhaustion-XXXXXX";
    int lfd = mkstemp(log_path);
    assert_true(lfd >= 0);
    close(lfd);
    dsla_test_server_nofile = NOFILE;
    const char *args[] = {"--model", model,         "--endpoint", "tcp://127.0.0.1:0",
                          "--http",  "127.0.0.1:0", NULL};
    dsla_test_server_t s = dsla_test_server_start_logged(args, log_path);
    dsla_test_server_nofile = 0;
    assert_int_equal(health_within(s.http_port, RECOVER_MS), 200); /* the replica is up */
    dsla_test_http_reply_t r;
    int zport = atoi(strrchr(s.endpoint, ':') + 1);

    int *fds = malloc((IDLE_HTTP + IDLE_ZMQ + KNOCKS) * sizeof *fds);
    int n = 0, zmq_open = 0;
    for (int i = 0; i < IDLE_HTTP; i++)
        if ((fds[n] = dsla_test_connect(s.http_port)) >= 0) n++;
    for (int i = 0; i < IDLE_ZMQ; i++)
        if ((fds[n] = dsla_test_connect(zport)) >= 0) {
            n++;
            zmq_open++;
        }
    sleep_ms(500);
    const long lines0 = count_lines(log_path), cpu0 = cpu_ms(s.pid);
    const uint64_t t0 = dsla_clock_ms();
    for (int i = 0; i < KNOCKS; i++) { /* new clients keep coming while nothing is left */
        if ((fds[n] = dsla_test_connect(s.http_port)) >= 0) {
            const char req[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
            (void)send(fds[n], req, sizeof req - 1, MSG_NOSIGNAL);
            n++;
        }
        sleep_ms(WINDOW_MS / KNOCKS);
    }
    const long cpu = cpu_ms(s.pid) - cpu0, lines = count_lines(log_path) - lines0;
    print_message("%d idle connections (%d to the mailbox); over %llu ms the server used %ld ms of "
                  "CPU and logged %ld lines\n",
                  n, zmq_open, (unsigned long long)(dsla_clock_ms() - t0), cpu, lines);
    if (cpu > CPU_MAX_MS)
        fail_msg("the server used %ld ms of CPU in %d ms while out of descriptors (a busy loop?)",
                 cpu, WINDOW_MS);
    if (lines > LOG_LINES_MAX)
        fail_msg("the server logged %ld lines in %d ms while out of descriptors (see %s)", lines,
                 WINDOW_MS, log_path);

    for (int i = 0; i < n; i++)
        close(fds[i]);
    free(fds);
    int status = health_within(s.http_port, RECOVER_MS);
    if (status != 200) fail_msg("/health answers %d after the connections closed", status);
    r = dsla_test_http(s.http_port, "POST", "/v1/completions",
                       "{\"prompt\": \"Once upon a time\", \"max_tokens\": 8}");
    assert_int_equal(r.status, 200);
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&s);
    unlink(log_path);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_descriptors_exhausted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

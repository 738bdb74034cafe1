/* The HTTP front end against slow senders (slowloris), in-process and without a gateway: 512
 * connections that each trickle an unfinished request hold no one else out (a request on a fresh
 * connection is answered at once), and each is closed by the server once the read deadline
 * passes, though it kept sending. 512 such connections locked out every client, /health
 * included, before. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "actors/http.h"
#include "runtime/core/clock.h"
#include "tests/serverutil.h"

enum { SLOW = 512, DEADLINE_MS = 1500 };

/* Whether the server closed fd (a read sees the end or a reset). */
static bool closed_by_server(int fd) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 0) <= 0) return false;
    char buf[256];
    return recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0;
}

static void test_slow_senders_cut(void **state) {
    (void)state;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max < 4 * SLOW) skip(); /* client and server ends, with room */
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    dsla_http_config_t hc = {.address = "127.0.0.1:0",
                             .gateway = "tcp://127.0.0.1:1", /* nothing: not needed here */
                             .read_deadline_ms = DEADLINE_MS};
    dsla_http_t *h = NULL;
    assert_int_equal(dsla_http_create(&h, &hc), DSLA_OK);
    int port = dsla_http_port(h);
    int *fds = malloc(SLOW * sizeof *fds);
    int opened = 0;
    for (int i = 0; i < SLOW; i++) {
        fds[i] = dsla_test_connect(port);
        if (fds[i] < 0) break;
        opened++;
        const char part[] = "GET /health HTTP/1.1\r\nHost: x\r\n";
        assert_int_equal(send(fds[i], part, sizeof part - 1, MSG_NOSIGNAL), sizeof part - 1);
    }
    assert_int_equal(opened, SLOW);
    uint64_t t0 = dsla_clock_ms();
    /* others are served meanwhile: a request on a fresh connection answers (404: no such path) */
    dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/nowhere", NULL);
    assert_int_equal(r.status, 404);
    dsla_test_http_reply_free(&r);
    /* a byte every 200 ms from each: an idle timeout never fires; the deadline does */
    int cut = 0;
    while (dsla_clock_ms() - t0 < 3 * DEADLINE_MS && cut < SLOW) {
        cut = 0;
        for (int i = 0; i < SLOW; i++) {
            if (fds[i] < 0) {
                cut++;
                continue;
            }
            if (closed_by_server(fds[i])) {
                close(fds[i]);
                fds[i] = -1;
                cut++;
                continue;
            }
            (void)send(fds[i], "X", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        struct timespec tick = {0, 200000000};
        nanosleep(&tick, NULL);
    }
    uint64_t waited = dsla_clock_ms() - t0;
    if (cut < SLOW)
        fail_msg("%d of %d slow connections still open after %llu ms", SLOW - cut, SLOW,
                 (unsigned long long)waited);
    assert_true(waited >= DEADLINE_MS - 200);
    r = dsla_test_http(port, "GET", "/nowhere", NULL);
    assert_int_equal(r.status, 404);
    dsla_test_http_reply_free(&r);
    for (int i = 0; i < SLOW; i++)
        if (fds[i] >= 0) close(fds[i]);
    free(fds);
    dsla_http_destroy(&h);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slow_senders_cut),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

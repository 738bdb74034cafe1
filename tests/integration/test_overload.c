/* Twice the sustainable load (issue 10's acceptance): dsla-serve on stories260K (CPU) with a small
 * engine (--max-running 4, --max-queued 8). A closed loop of 8 clients first measures what it
 * sustains (requests finished per second, X); then requests arrive open-loop at 2X for LOAD_MS
 * (X measured on a busy machine can be low: while 2X is served without a refusal, the load runs
 * again at twice that, twice at most). The excess must be refused with 429 and `Retry-After`,
 * nothing else may fail or go unanswered,
 * and the server's resident memory (sampled from /proc) must stay bounded: its peak over the
 * second half of the load at most 25% (plus 16 MB) above its peak over the first half. The
 * figures are printed for docs/reliability.md. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/core/clock.h"
#include "tests/serverutil.h"

enum {
    CALIBRATE_MS = 5000,
    CALIBRATE_CLIENTS = 8, /* max_running + max_queued: saturated, never refused */
    LOAD_MS = 20000,
    OVERLOAD_ROUNDS = 3, /* 2X, then 4X and 8X of the calibrated X while nothing is refused */
    WORKERS = 96,
    SAMPLE_MS = 250,
    SAMPLES_MAX = 1024,
};

static const char body[] =
    "{\"prompt\": \"Once upon a time\", \"max_tokens\": 48, \"ignore_eos\": true}";

typedef struct {
    int port;
    uint64_t end_ms;
    double rate;    /* open loop: arrivals per second; 0: closed loop */
    uint64_t start; /* the open loop's first arrival */
    atomic_long next_arrival, ok, refused, refused_without_retry, other, unanswered;
    int last_other;
} load_t;

static void sleep_until(uint64_t t) {
    uint64_t now = dsla_clock_ms();
    if (t <= now) return;
    struct timespec ts = {(time_t)((t - now) / 1000), (long)((t - now) % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void *worker(void *arg) {
    load_t *l = arg;
    for (;;) {
        if (l->rate > 0) { /* take the next arrival time, wait for it */
            long k = atomic_fetch_add(&l->next_arrival, 1);
            uint64_t at = l->start + (uint64_t)((double)k * 1000.0 / l->rate);
            if (at >= l->end_ms) return NULL;
            sleep_until(at);
        } else if (dsla_clock_ms() >= l->end_ms) {
            return NULL;
        }
        dsla_test_http_reply_t r = dsla_test_http(l->port, "POST", "/v1/completions", body);
        if (r.status == 200) {
            atomic_fetch_add(&l->ok, 1);
        } else if (r.status == 429) {
            atomic_fetch_add(&l->refused, 1);
            if (!strstr(r.head, "Retry-After: ") && !strstr(r.head, "retry-after: "))
                atomic_fetch_add(&l->refused_without_retry, 1);
        } else if (r.status == 0) {
            atomic_fetch_add(&l->unanswered, 1);
        } else {
            atomic_fetch_add(&l->other, 1);
            l->last_other = r.status;
        }
        dsla_test_http_reply_free(&r);
    }
}

static void run(load_t *l, int workers) {
    pthread_t *th = calloc((size_t)workers, sizeof *th);
    for (int i = 0; i < workers; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker, l), 0);
    for (int i = 0; i < workers; i++)
        pthread_join(th[i], NULL);
    free(th);
}

/* VmRSS in kB. */
static long rss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

typedef struct {
    pid_t pid;
    uint64_t end_ms;
    long kb[SAMPLES_MAX];
    int n;
} sampler_t;

static void *sample(void *arg) {
    sampler_t *s = arg;
    while (dsla_clock_ms() < s->end_ms && s->n < SAMPLES_MAX) {
        s->kb[s->n++] = rss_kb(s->pid);
        sleep_until(dsla_clock_ms() + SAMPLE_MS);
    }
    return NULL;
}

static long peak(const long *kb, int from, int to) {
    long m = 0;
    for (int i = from; i < to; i++)
        if (kb[i] > m) m = kb[i];
    return m;
}

static void test_twice_the_sustainable_load(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    const char *args[] = {
        "--model",     model,           "--endpoint", "tcp://127.0.0.1:0", "--http",
        "127.0.0.1:0", "--max-running", "4",          "--max-queued",      "8",
        NULL};
    dsla_test_server_t s = dsla_test_server_start(args);
    for (int tries = 0; tries < 100; tries++) { /* the replica is up */
        dsla_test_http_reply_t r = dsla_test_http(s.http_port, "GET", "/health", NULL);
        int status = r.status;
        dsla_test_http_reply_free(&r);
        if (status == 200) break;
        sleep_until(dsla_clock_ms() + 100);
    }

    load_t cal = {.port = s.http_port, .end_ms = dsla_clock_ms() + CALIBRATE_MS};
    run(&cal, CALIBRATE_CLIENTS);
    assert_int_equal(atomic_load(&cal.refused) + atomic_load(&cal.other), 0);
    double x = (double)atomic_load(&cal.ok) * 1000.0 / CALIBRATE_MS;
    assert_true(x > 0);
    const long rss_calm = rss_kb(s.pid);

    /* X measured while the machine was busy (other tests run beside this one) can be low: if 2X
     * is served without a refusal it was not twice the sustainable load, and the server has
     * shown it sustains 2X. Then the load runs again at twice that, up to OVERLOAD_ROUNDS times;
     * every round is held to the same answers. */
    load_t l;
    sampler_t *sm = calloc(1, sizeof *sm);
    for (int round = 0;; round++) {
        l = (load_t){.port = s.http_port, .rate = 2 * x};
        l.start = dsla_clock_ms();
        l.end_ms = l.start + LOAD_MS;
        *sm = (sampler_t){.pid = s.pid, .end_ms = l.end_ms};
        pthread_t st;
        assert_int_equal(pthread_create(&st, NULL, sample, sm), 0);
        run(&l, WORKERS);
        pthread_join(st, NULL);
        assert_int_equal(atomic_load(&l.refused_without_retry), 0);
        if (atomic_load(&l.other) || atomic_load(&l.unanswered))
            fail_msg("%ld answers other than 200 and 429 (the last %d), %ld unanswered",
                     atomic_load(&l.other), l.last_other, atomic_load(&l.unanswered));
        if (atomic_load(&l.refused) > 0 || round + 1 == OVERLOAD_ROUNDS) break;
        print_message("2X = %.1f req/s served without a refusal: X was measured low; again at "
                      "%.1f req/s\n",
                      2 * x, 4 * x);
        x *= 2;
    }

    const long sent = atomic_load(&l.ok) + atomic_load(&l.refused) + atomic_load(&l.other) +
                      atomic_load(&l.unanswered);
    const long first = peak(sm->kb, 0, sm->n / 2), second = peak(sm->kb, sm->n / 2, sm->n);
    print_message("sustained %.1f req/s; at %.1f req/s for %d ms: %ld sent, %ld ok, %ld 429, "
                  "%ld other, %ld unanswered; RSS %ld kB calm, peak %ld kB (first half) and "
                  "%ld kB (second half), %d samples\n",
                  x, 2 * x, LOAD_MS, sent, atomic_load(&l.ok), atomic_load(&l.refused),
                  atomic_load(&l.other), atomic_load(&l.unanswered), rss_calm, first, second,
                  sm->n);
    assert_true(atomic_load(&l.refused) > 0); /* the excess is refused, saying when to retry */
    assert_true(atomic_load(&l.ok) > 0);
    if (second > first + first / 4 + 16 * 1024)
        fail_msg("RSS grew under steady overload: peak %ld kB in the first half, %ld kB in the "
                 "second",
                 first, second);
    free(sm);
    dsla_test_server_stop(&s);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_twice_the_sustainable_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

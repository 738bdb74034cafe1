/* Issue 9's acceptance test on the CPU: liveness and control under load. dsla-serve (gateway,
 * serving actor and controller with two layer versions of stories260K from a fast `dsla distill`)
 * serves 300 concurrent long requests through the client stub for 30 s. Meanwhile:
 * - the replica never reads as dead (`dslactl status` polled throughout, and no replica_dead in
 *   the controller's history), and no client is failed for it;
 * - LOAD_REPORTs leave at their interval +-50% (the serving actor's debug line for each, read
 *   from its stderr);
 * - the threshold policy converts layers during the load and reverts them after it.
 * Before the engine ran on a thread of its own, the serving actor stepped the engine from 0 ms
 * timers on its loop and, on libuv 1.44, heartbeats and reports stopped within seconds: this test
 * failed there (the load line froze at queue 0, no report left during the load, nothing was
 * converted). DSLA_TEST_SERVE_DEVICE=cuda runs the server on the GPU backend (`--device cuda
 * --dtype f32`), as test_controller.c does. */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "tests/integration/ctl_harness.h"

enum {
    CLIENTS = 300,
    LOAD_MS = 30000,
    REPORT_MS = 500,
    /* long: with the prompt, just under stories260K's 512 positions, so requests outlive many
     * reports and the queue stays full */
    MAX_TOKENS = 480,
    POLL_MS = 250,
    REPORTS_MAX = 4096,
};

/* CLOCK_REALTIME in ms since midnight UTC: what the server's log lines are stamped with. */
static long wall_ms_of_day(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long)(ts.tv_sec % 86400) * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef struct {
    const char *endpoint;
    void *zctx;
    uint64_t end_ms;
    atomic_long tokens, done, deadline, refused, failed;
    pthread_mutex_t mu;
    char first_failure[DSLA_PROTO_MESSAGE_MAX + 64];
} load_t;

static int count_token(void *user, int32_t token, const char *text, size_t len) {
    (void)token;
    (void)text;
    (void)len;
    atomic_fetch_add(&((load_t *)user)->tokens, 1);
    return 0;
}

/* One client: long requests back to back until the load ends, the last cut by its deadline. */
static void *client_main(void *arg) {
    load_t *l = arg;
    /* a client on a loaded machine may find the gateway slow to answer before its first token;
     * the stub then sends again, as a client should. Streams cut after it count as failures. */
    dsla_client_options_t opt = {.zmq_context = l->zctx, .heartbeat_ms = 2000, .retries = 2};
    dsla_client_t *c = NULL;
    if (dsla_client_connect(&c, l->endpoint, &opt) != DSLA_OK) {
        atomic_fetch_add(&l->failed, 1);
        return NULL;
    }
    for (uint64_t now = mono_ms(); now + 100 < l->end_ms; now = mono_ms()) {
        dsla_proto_generate_t req = {.prompt_ids = ctl_prompt_ids,
                                     .n_prompt_ids =
                                         (int)(sizeof ctl_prompt_ids / sizeof ctl_prompt_ids[0]),
                                     .max_tokens = MAX_TOKENS,
                                     /* greedy: a sampled byte-fallback token <0x00> would
                                      * stream a NUL, which TOKEN's decoder refuses (a
                                      * separate issue) */
                                     .temperature = 0,
                                     .top_p = 1,
                                     .ignore_eos = true,
                                     .stream = true};
        dsla_client_result_t res;
        dsla_proto_code_t code =
            dsla_client_generate(c, &req, count_token, l, (int)(l->end_ms - now), &res);
        if (code == DSLA_CODE_OK) {
            atomic_fetch_add(&l->done, 1);
        } else if (code == DSLA_CODE_DEADLINE_EXCEEDED) {
            atomic_fetch_add(&l->deadline, 1);
        } else if (code == DSLA_CODE_RESOURCE_EXHAUSTED) {
            /* admission control: 300 arriving at once outrun the first steps' admissions while
             * the queue holds 256 */
            atomic_fetch_add(&l->refused, 1);
            ctl_sleep_ms(50);
        } else {
            pthread_mutex_lock(&l->mu);
            if (atomic_fetch_add(&l->failed, 1) == 0)
                snprintf(l->first_failure, sizeof l->first_failure, "%s: %s",
                         dsla_proto_code_name(code), res.message);
            pthread_mutex_unlock(&l->mu);
        }
    }
    dsla_client_close(&c);
    return NULL;
}

/* The number after needle in text, or -1. */
static long number_after(const char *text, const char *needle) {
    const char *p = strstr(text, needle);
    return p ? strtol(p + strlen(needle), NULL, 10) : -1;
}

/* The times (ms of day) of the LOAD_REPORT lines of the log within [from, to]. */
static int report_times(const char *log, long from, long to, long *t, int cap) {
    int n = 0;
    for (const char *line = log; line && *line && n < cap;) {
        const char *end = strchr(line, '\n');
        int h, m, s, ms;
        if (strstr(line, "LOAD_REPORT sent") && (!end || strstr(line, "LOAD_REPORT sent") < end) &&
            sscanf(line, "%d:%d:%d.%d", &h, &m, &s, &ms) == 4) {
            long x = ((long)h * 3600 + m * 60 + s) * 1000 + ms;
            if (x < from - 43200000L) x += 86400000L; /* past midnight */
            if (x >= from && x <= to) t[n++] = x;
        }
        line = end ? end + 1 : NULL;
    }
    return n;
}

static void test_liveness_and_conversion_under_load(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *data = dsla_test_data_or_skip("data/tinystories_train_sample.txt");
    char *dir = dsla_test_tempdir();
    char layers[512], db[512], log_path[512], admin[64];
    snprintf(layers, sizeof layers, "%s/layers", dir);
    snprintf(db, sizeof db, "%s/controller.db", dir);
    snprintf(log_path, sizeof log_path, "%s/serve.log", dir);
    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    ctl_distill_two(model, data, layers);

    char report_ms[16];
    snprintf(report_ms, sizeof report_ms, "%d", REPORT_MS);
    const char *args[] = {"--model",
                          model,
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "off",
                          "--layers",
                          layers,
                          "--controller-db",
                          db,
                          "--admin",
                          admin,
                          "--report-ms",
                          report_ms,
                          "--policy",
                          "threshold queue_high=32 queue_low=4 wait_high_ms=5000 wait_low_ms=1000 "
                          "cooldown_ms=1000 step=1",
                          NULL,
                          NULL,
                          NULL,
                          NULL,
                          NULL};
    const char *device = getenv("DSLA_TEST_SERVE_DEVICE");
    if (device && strcmp(device, "cuda") == 0) { /* the engine thread on the GPU backend */
        static const char *const gpu[] = {"--device", "cuda", "--dtype", "f32"};
        for (int i = 0; i < 4; i++)
            args[16 + i] = gpu[i];
    }
    setenv("DSLA_LOG", "debug", 1); /* the server's LOAD_REPORT lines */
    dsla_test_server_t srv = dsla_test_server_start_logged(args, log_path);
    unsetenv("DSLA_LOG");
    ctl_wait_status(admin, "replica serving0 alive: plan 1 runs 0 DSLA layers");

    static load_t l;
    l.endpoint = srv.endpoint;
    l.zctx = zmq_ctx_new();
    assert_non_null(l.zctx);
    assert_int_equal(zmq_ctx_set(l.zctx, ZMQ_MAX_SOCKETS, 4 * CLIENTS), 0);
    pthread_mutex_init(&l.mu, NULL);
    const long load_from = wall_ms_of_day();
    const uint64_t t0 = mono_ms();
    l.end_ms = t0 + LOAD_MS;
    static pthread_t threads[CLIENTS];
    for (int i = 0; i < CLIENTS; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, client_main, &l), 0);

    /* the controller's view while the load lasts */
    static char out[CTL_OUT_MAX];
    static char last_load[1024];
    long most_dsla = 0, polls = 0, load_changes = 0, most_queue = 0;
    uint64_t converted_at = 0;
    while (mono_ms() < l.end_ms) {
        if (ctl_dslactl(admin, out, "status", NULL, NULL) == 0) {
            polls++;
            if (strstr(out, "replica serving0 dead"))
                fail_msg("%.1f s into the load the replica reads as dead:\n%s",
                         (double)(mono_ms() - t0) / 1e3, out);
            long n = number_after(out, "runs ");
            if (n > most_dsla) most_dsla = n;
            if (n > 0 && !converted_at) converted_at = mono_ms();
            long q = number_after(out, "load: queue ");
            if (q > most_queue) most_queue = q;
            const char *load = strstr(out, "load: "), *eol = load ? strchr(load, '\n') : NULL;
            if (load && eol &&
                ((size_t)(eol - load) >= sizeof last_load ||
                 strncmp(last_load, load, (size_t)(eol - load)) != 0)) {
                load_changes++;
                snprintf(last_load, sizeof last_load, "%.*s", (int)(eol - load), load);
            }
        }
        ctl_sleep_ms(POLL_MS);
    }
    const long load_to = wall_ms_of_day();
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(threads[i], NULL);
    const uint64_t joined = mono_ms();

    /* after it: the layers come back */
    ctl_wait_status(admin, "runs 0 DSLA layers []");
    const uint64_t reverted = mono_ms();
    assert_int_equal(ctl_dslactl(admin, out, "history", "--limit", "500"), 0);
    if (strstr(out, "replica_dead")) fail_msg("the controller saw the replica die:\n%s", out);
    dsla_test_server_stop(&srv);
    zmq_ctx_term(l.zctx);

    char *log = dsla_test_read_file(log_path, NULL);
    assert_non_null(log);
    static long t[REPORTS_MAX];
    /* the window's first report may be the tail of the idle ones; skip a report interval */
    int n = report_times(log, load_from + REPORT_MS, load_to, t, REPORTS_MAX);
    long lo = 1L << 30, hi = 0;
    for (int i = 1; i < n; i++) {
        long d = t[i] - t[i - 1];
        if (d < lo) lo = d;
        if (d > hi) hi = d;
    }
    printf("load: %d clients, %.1f s: %ld requests done, %ld cut at the end, %ld refused (queue "
           "full) and retried, %ld failed, %ld tokens; %ld status polls, most DSLA layers %ld "
           "(first at %.1f s), reverted %.1f s after the clients left; the load line changed %ld "
           "times, longest queue %ld\n",
           CLIENTS, (double)(joined - t0) / 1e3, atomic_load(&l.done), atomic_load(&l.deadline),
           atomic_load(&l.refused), atomic_load(&l.failed), atomic_load(&l.tokens), polls,
           most_dsla, converted_at ? (double)(converted_at - t0) / 1e3 : -1.0,
           (double)(reverted - joined) / 1e3, load_changes, most_queue);
    if (atomic_load(&l.failed)) printf("first failure: %s\n", l.first_failure);
    printf("LOAD_REPORTs during the load: %d, intervals %ld..%ld ms (set: %d ms)\n", n, lo, hi,
           REPORT_MS);
    /* every failure at once: a broken actor usually shows several */
    char why[2048] = "";
    size_t w = 0;
    if (atomic_load(&l.failed))
        w += (size_t)snprintf(why + w, sizeof why - w, "\n%ld requests failed; first: %s",
                              atomic_load(&l.failed), l.first_failure);
    if (atomic_load(&l.tokens) == 0) w += (size_t)snprintf(why + w, sizeof why - w, "\nno tokens");
    if (load_changes < polls / 3 || most_queue < 32)
        w += (size_t)snprintf(why + w, sizeof why - w,
                              "\nthe controller's load line changed %ld times in %ld polls and "
                              "its longest queue was %ld: the reports froze",
                              load_changes, polls, most_queue);
    if (n < (LOAD_MS - 2 * REPORT_MS) / REPORT_MS * 8 / 10)
        w += (size_t)snprintf(why + w, sizeof why - w,
                              "\n%d LOAD_REPORTs in %d ms of load; expected about %d", n, LOAD_MS,
                              LOAD_MS / REPORT_MS);
    else if (lo < REPORT_MS / 2 || hi > REPORT_MS * 3 / 2)
        w += (size_t)snprintf(why + w, sizeof why - w,
                              "\nLOAD_REPORT intervals %ld..%ld ms, outside %d ms +-50%%", lo, hi,
                              REPORT_MS);
    if (most_dsla < 1)
        w += (size_t)snprintf(why + w, sizeof why - w,
                              "\nthe threshold policy converted nothing during the load");
    if (w) fail_msg("%s", why);
    free(log);
    pthread_mutex_destroy(&l.mu);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
    free(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_liveness_and_conversion_under_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

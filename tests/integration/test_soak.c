/* The fault-injection soak (issue 10), on loopback with stories260K on the CPU: two replicas
 * (`dsla-serve --serving-only`) behind a gateway-only node with HTTP, under steady load from HTTP
 * clients (non-streamed completions) and client-stub clients (streamed GENERATEs), while a driver
 * SIGKILLs and restarts a replica, SIGSTOPs and SIGCONTs the other, SIGKILLs and restarts the
 * gateway, and SIGSTOPs and SIGCONTs the gateway, in turn, for DSLA_SOAK_SECONDS (default 60).
 *
 * Every request ends in one of four ways, counted and printed:
 * - ok: a complete answer (HTTP 200 with usage.completion_tokens = max_tokens; the stub's DONE
 *   after as many TOKENs as DONE counts);
 * - error: the client was told it failed (an error status or ERROR, a refused or reset
 *   connection), so it can retry;
 * - lost: an answer that claims success but is incomplete (fewer tokens than its usage says, a 200
 *   without its usage);
 * - hung: no answer within HUNG_MS.
 * lost and hung must be 0; after the faults the cluster must serve again. Last, SIGTERM stops the
 * gateway while four long requests are in flight: they finish (200, all their tokens) before it
 * exits 0 (a graceful stop: HTTP stops accepting and drains, DSLA_NODE_GRACE_MS at most). */
#define _DEFAULT_SOURCE
#include "tests/testutil.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto/dsla_client.h"
#include "runtime/core/clock.h"
#include "tests/serverutil.h"

enum {
    HTTP_CLIENTS = 4,
    STUB_CLIENTS = 4,
    MAX_TOKENS = 16,
    HUNG_MS = 30000, /* the stub's deadline; HTTP's client gives up at 60 s */
    FAULT_EVERY_MS = 3000,
    RECOVER_MS = 30000,
};

static const char http_body[] =
    "{\"prompt\": \"Once upon a time\", \"max_tokens\": 16, \"ignore_eos\": true}";

typedef struct {
    atomic_bool stop;
    char gateway[256];
    int http_port;
    atomic_long sent, ok, error, lost, hung;
    pthread_mutex_t mu;
    char first_lost[256];
} soak_t;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void note_lost(soak_t *s, const char *what) {
    atomic_fetch_add(&s->lost, 1);
    pthread_mutex_lock(&s->mu);
    if (!s->first_lost[0]) snprintf(s->first_lost, sizeof s->first_lost, "%s", what);
    pthread_mutex_unlock(&s->mu);
}

static void *http_client(void *arg) {
    soak_t *s = arg;
    while (!atomic_load(&s->stop)) {
        atomic_fetch_add(&s->sent, 1);
        const uint64_t t0 = dsla_clock_ms();
        dsla_test_http_reply_t r =
            dsla_test_http(s->http_port, "POST", "/v1/completions", http_body);
        if (r.status == 200) {
            const char *u = r.body ? strstr(r.body, "\"completion_tokens\":") : NULL;
            if (u && atoi(u + strlen("\"completion_tokens\":")) == MAX_TOKENS)
                atomic_fetch_add(&s->ok, 1);
            else
                note_lost(s, r.body ? r.body : "a 200 without a body");
        } else if (r.status == 0 && dsla_clock_ms() - t0 >= HUNG_MS) {
            atomic_fetch_add(&s->hung, 1);
        } else {
            atomic_fetch_add(&s->error, 1);
            if (r.status == 0) sleep_ms(100); /* the gateway is down: knock again shortly */
        }
        dsla_test_http_reply_free(&r);
    }
    return NULL;
}

typedef struct {
    int tokens;
} count_t;

static int count(void *user, int32_t token, const char *text, size_t len) {
    (void)token;
    (void)text;
    (void)len;
    ((count_t *)user)->tokens++;
    return 0;
}

static void *stub_client(void *arg) {
    soak_t *s = arg;
    dsla_client_options_t opt = {.heartbeat_ms = 500, .retries = 2};
    dsla_client_t *c = NULL;
    while (!atomic_load(&s->stop)) {
        if (!c && dsla_client_connect(&c, s->gateway, &opt) != DSLA_OK) {
            sleep_ms(100);
            continue;
        }
        atomic_fetch_add(&s->sent, 1);
        dsla_proto_generate_t g = {.prompt = "Once upon a time",
                                   .prompt_len = 16,
                                   .max_tokens = MAX_TOKENS,
                                   .top_p = 1,
                                   .ignore_eos = true,
                                   .stream = true};
        count_t n = {0};
        dsla_client_result_t res;
        dsla_proto_code_t code = dsla_client_generate(c, &g, count, &n, HUNG_MS, &res);
        if (code == DSLA_CODE_OK) {
            if (n.tokens >= 1 && res.completion_tokens == MAX_TOKENS) {
                atomic_fetch_add(&s->ok, 1);
            } else {
                char what[128];
                snprintf(what, sizeof what, "stub: DONE after %d pieces, usage %u", n.tokens,
                         res.completion_tokens);
                note_lost(s, what);
            }
        } else if (code == DSLA_CODE_DEADLINE_EXCEEDED) {
            atomic_fetch_add(&s->hung, 1);
        } else {
            atomic_fetch_add(&s->error, 1);
            dsla_client_close(&c); /* a fresh socket for the next */
            sleep_ms(100);
        }
    }
    dsla_client_close(&c);
    return NULL;
}

static long env_long(const char *name, long def) {
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : def;
}

typedef struct {
    const char *model;
    char ep[2][256]; /* the replicas' endpoints, kept over restarts */
    char gw_ep[256]; /* the gateway's */
    char http[64];   /* its HTTP address */
    dsla_test_server_t replica[2], gateway;
} cluster_t;

static dsla_test_server_t start_replica(cluster_t *cl, int i) {
    const char *args[] = {"--model", cl->model, "--serving-only", "--endpoint", cl->ep[i], NULL};
    dsla_test_server_t r = dsla_test_server_start(args);
    snprintf(cl->ep[i], sizeof cl->ep[i], "%s", r.endpoint);
    return r;
}

static dsla_test_server_t start_gateway(cluster_t *cl) {
    const char *args[] = {"--replica", cl->ep[0], "--replica", cl->ep[1], "--endpoint",
                          cl->gw_ep,   "--http",  cl->http,    NULL};
    dsla_test_server_t g = dsla_test_server_start(args);
    snprintf(cl->gw_ep, sizeof cl->gw_ep, "%s", g.endpoint);
    snprintf(cl->http, sizeof cl->http, "127.0.0.1:%d", g.http_port);
    return g;
}

static int health(int port) {
    dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/health", NULL);
    int status = r.status;
    dsla_test_http_reply_free(&r);
    return status;
}

enum { GRACEFUL = 4, LONG_TOKENS = 400 };

typedef struct {
    int port, status, tokens;
} graceful_t;

static void *long_request(void *arg) {
    graceful_t *g = arg;
    dsla_test_http_reply_t r = dsla_test_http(
        g->port, "POST", "/v1/completions",
        "{\"prompt\": \"Once upon a time\", \"max_tokens\": 400, \"ignore_eos\": true}");
    g->status = r.status;
    const char *u = r.body ? strstr(r.body, "\"completion_tokens\":") : NULL;
    g->tokens = u ? atoi(u + strlen("\"completion_tokens\":")) : -1;
    dsla_test_http_reply_free(&r);
    return NULL;
}

/* dsla_http_in_flight from /metrics; -1 when it cannot be read. */
static long in_flight(int port) {
    dsla_test_http_reply_t r = dsla_test_http(port, "GET", "/metrics", NULL);
    const char *at = r.body ? strstr(r.body, "\ndsla_http_in_flight ") : NULL;
    long v = at ? strtol(at + strlen("\ndsla_http_in_flight "), NULL, 10) : -1;
    dsla_test_http_reply_free(&r);
    return v;
}

static void test_soak(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    const long seconds = env_long("DSLA_SOAK_SECONDS", 60);
    cluster_t cl = {.model = model};
    snprintf(cl.ep[0], sizeof cl.ep[0], "tcp://127.0.0.1:0");
    snprintf(cl.ep[1], sizeof cl.ep[1], "tcp://127.0.0.1:0");
    snprintf(cl.gw_ep, sizeof cl.gw_ep, "tcp://127.0.0.1:0");
    snprintf(cl.http, sizeof cl.http, "127.0.0.1:0");
    cl.replica[0] = start_replica(&cl, 0);
    cl.replica[1] = start_replica(&cl, 1);
    cl.gateway = start_gateway(&cl);
    uint64_t t0 = dsla_clock_ms();
    while (health(cl.gateway.http_port) != 200 && dsla_clock_ms() - t0 < RECOVER_MS)
        sleep_ms(100);

    soak_t s = {0};
    pthread_mutex_init(&s.mu, NULL);
    snprintf(s.gateway, sizeof s.gateway, "%s", cl.gw_ep);
    s.http_port = cl.gateway.http_port;
    pthread_t th[HTTP_CLIENTS + STUB_CLIENTS];
    for (int i = 0; i < HTTP_CLIENTS + STUB_CLIENTS; i++)
        assert_int_equal(
            pthread_create(&th[i], NULL, i < HTTP_CLIENTS ? http_client : stub_client, &s), 0);

    int faults[4] = {0};
    const char *names[4] = {"replica SIGKILL+restart", "replica SIGSTOP/SIGCONT",
                            "gateway SIGKILL+restart", "gateway SIGSTOP/SIGCONT"};
    const uint64_t end = dsla_clock_ms() + (uint64_t)seconds * 1000;
    for (int k = 0; dsla_clock_ms() < end; k++) {
        sleep_ms(FAULT_EVERY_MS);
        const int what = k % 4;
        faults[what]++;
        switch (what) {
        case 0: /* a replica dies and comes back on its endpoint */
            dsla_test_server_kill(cl.replica[0].pid);
            sleep_ms(1000);
            cl.replica[0] = start_replica(&cl, 0);
            break;
        case 1: /* a replica freezes past the gateway's liveness (3 heartbeats), then thaws */
            kill(cl.replica[1].pid, SIGSTOP);
            sleep_ms(4000);
            kill(cl.replica[1].pid, SIGCONT);
            break;
        case 2: /* the gateway dies with its HTTP front end, and comes back on its ports */
            dsla_test_server_kill(cl.gateway.pid);
            sleep_ms(500);
            cl.gateway = start_gateway(&cl);
            break;
        default: /* the gateway freezes for two seconds */
            kill(cl.gateway.pid, SIGSTOP);
            sleep_ms(2000);
            kill(cl.gateway.pid, SIGCONT);
            break;
        }
    }
    atomic_store(&s.stop, true);
    for (int i = 0; i < HTTP_CLIENTS + STUB_CLIENTS; i++)
        pthread_join(th[i], NULL);

    /* after the faults, the cluster serves again */
    t0 = dsla_clock_ms();
    int status = 0;
    while ((status = health(cl.gateway.http_port)) != 200 && dsla_clock_ms() - t0 < RECOVER_MS)
        sleep_ms(200);
    assert_int_equal(status, 200);
    dsla_test_http_reply_t r =
        dsla_test_http(cl.gateway.http_port, "POST", "/v1/completions", http_body);
    assert_int_equal(r.status, 200);
    dsla_test_http_reply_free(&r);

    print_message("soak %lds: faults %s %d, %s %d, %s %d, %s %d; requests sent %ld ok %ld "
                  "error %ld lost %ld hung %ld\n",
                  seconds, names[0], faults[0], names[1], faults[1], names[2], faults[2], names[3],
                  faults[3], atomic_load(&s.sent), atomic_load(&s.ok), atomic_load(&s.error),
                  atomic_load(&s.lost), atomic_load(&s.hung));
    if (atomic_load(&s.lost))
        fail_msg("%ld lost; the first: %s", atomic_load(&s.lost), s.first_lost);
    assert_int_equal(atomic_load(&s.hung), 0);
    assert_true(atomic_load(&s.ok) > 0);
    assert_int_equal(atomic_load(&s.sent), atomic_load(&s.ok) + atomic_load(&s.error));

    /* graceful stop: SIGTERM with requests in flight; they finish, then the gateway exits 0 */
    graceful_t gr[GRACEFUL] = {0};
    pthread_t gth[GRACEFUL];
    for (int i = 0; i < GRACEFUL; i++) {
        gr[i].port = cl.gateway.http_port;
        assert_int_equal(pthread_create(&gth[i], NULL, long_request, &gr[i]), 0);
    }
    t0 = dsla_clock_ms();
    while (in_flight(cl.gateway.http_port) < GRACEFUL && dsla_clock_ms() - t0 < RECOVER_MS)
        sleep_ms(10);
    dsla_test_server_stop(&cl.gateway); /* SIGTERM; fails unless it exits 0 */
    for (int i = 0; i < GRACEFUL; i++) {
        pthread_join(gth[i], NULL);
        if (gr[i].status != 200 || gr[i].tokens != LONG_TOKENS)
            fail_msg("a request in flight at SIGTERM ended %d with %d tokens", gr[i].status,
                     gr[i].tokens);
    }
    dsla_test_server_stop(&cl.replica[0]);
    dsla_test_server_stop(&cl.replica[1]);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_soak),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

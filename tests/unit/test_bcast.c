/* The layer broadcast in-process (bcast_core.h, bcast_peer.h): a controller core, an owner and
 * three receivers wired by a fake send (a message queue this test pumps), their worker jobs run by
 * the test in the order a real collective would let them finish, over a fake transport whose
 * "network" is a buffer this test owns. Covers: every rank ACKs and every receiver holds the
 * verified file under its cache name; the communicator reused for the same members; one receiver's
 * bytes corrupted (its NACK, its file absent, the others' files there, a fresh communicator next);
 * the owner dying mid-way (everyone fails, no file anywhere); a receiver dying (the next session
 * makes a fresh communicator); an owner without a transport; an owner asked for a file outside
 * its directory; silence past the deadlines; replies from the wrong peer ignored. */
#include "tests/testutil.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "actors/bcast_core.h"
#include "actors/bcast_peer.h"
#include "actors/transfer.h"

enum { RECEIVERS = 3, PEERS = RECEIVERS + 1, QUEUE_MAX = 256, JOBS_MAX = 8 };
static const char *const NAMES[PEERS] = {"distiller", "r1", "r2", "r3"};

/* ---- the fake transport: rank 0's slices appended to one buffer, read back by the others ---- */

typedef struct {
    uint64_t ids; /* unique ids made */
    uint64_t id;  /* the current one: communicators of another are stale */
    char *data;   /* every byte rank 0 broadcast on the current communicator */
    size_t len;
    int creates, destroys;
    int corrupt_rank; /* its received bytes get one flipped; -1: none */
} net_t;

typedef struct {
    net_t *net;
    uint64_t id;
    uint32_t rank;
    size_t read; /* bytes of net->data this rank has received */
} fake_comm_t;

static dsla_status_t fake_unique_id(void *user, uint8_t *id, uint32_t *len) {
    net_t *net = user;
    net->id = ++net->ids;
    free(net->data);
    net->data = NULL;
    net->len = 0;
    memcpy(id, &net->id, sizeof net->id);
    *len = sizeof net->id;
    return DSLA_OK;
}

static dsla_status_t fake_comm_create(void *user, const uint8_t *id, uint32_t len, uint32_t rank,
                                      uint32_t nranks, uint32_t timeout_ms, void **comm) {
    (void)nranks;
    net_t *net = user;
    uint64_t want = 0;
    if (len != sizeof want)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "fake: id of %u bytes", len);
    memcpy(&want, id, sizeof want);
    if (want != net->id)
        return dsla_error(DSLA_ERR_DEADLINE_EXCEEDED, "fake: no rank 0 for id %" PRIu64 " in %u ms",
                          want, timeout_ms);
    fake_comm_t *c = calloc(1, sizeof *c);
    *c = (fake_comm_t){net, want, rank, 0};
    net->creates++;
    *comm = c;
    return DSLA_OK;
}

static dsla_status_t fake_broadcast(void *user, void *comm, void *buf, size_t len,
                                    uint32_t timeout_ms) {
    net_t *net = user;
    fake_comm_t *c = comm;
    if (c->id != net->id)
        return dsla_error(DSLA_ERR_UNAVAILABLE, "fake: communicator %" PRIu64 " is gone", c->id);
    if (c->rank == 0) {
        net->data = realloc(net->data, net->len + len);
        memcpy(net->data + net->len, buf, len);
        net->len += len;
        return DSLA_OK;
    }
    if (net->len - c->read < len)
        return dsla_error(DSLA_ERR_DEADLINE_EXCEEDED, "fake: rank 0 sent nothing within %u ms",
                          timeout_ms);
    memcpy(buf, net->data + c->read, len);
    if ((int)c->rank == net->corrupt_rank) ((char *)buf)[len / 2] ^= 0x20;
    c->read += len;
    return DSLA_OK;
}

static void fake_comm_destroy(void *user, void *comm) {
    net_t *net = user;
    net->destroys++;
    free(comm);
}

/* ---- the world: a controller core, four peers, a message queue, their jobs ---- */

typedef struct {
    char src[64], dst[64];
    uint32_t type;
    void *body;
    size_t len;
} msg_t;

typedef struct world world_t;

typedef struct {
    world_t *w;
    int index; /* into NAMES */
    dsla_bcast_peer_t *peer;
    dsla_bcast_job_t *jobs[JOBS_MAX];
    int n_jobs;
    char cache[512];
} peer_t;

struct world {
    net_t net;
    dsla_bcast_transport_t transport;
    dsla_bcast_core_t *core;
    peer_t peers[PEERS];
    msg_t queue[QUEUE_MAX];
    int head, tail;
    int done_calls;
    dsla_bcast_session_t last; /* the latest done's */
    char *dir;
    uint64_t now;
};

static dsla_status_t enqueue(world_t *w, const char *src, const char *dst, uint32_t type,
                             const void *body, size_t len) {
    assert_true(w->tail < QUEUE_MAX);
    msg_t *m = &w->queue[w->tail++];
    snprintf(m->src, sizeof m->src, "%s", src);
    snprintf(m->dst, sizeof m->dst, "%s", dst);
    m->type = type;
    m->body = malloc(len ? len : 1);
    memcpy(m->body, body, len);
    m->len = len;
    return DSLA_OK;
}

static dsla_status_t core_send(void *user, const char *dst, uint32_t type, uint64_t id,
                               const void *body, size_t len) {
    (void)id;
    return enqueue(user, "ctl", dst, type, body, len);
}

static void core_done(void *user, const dsla_bcast_session_t *s) {
    world_t *w = user;
    w->done_calls++;
    w->last = *s;
}

static dsla_status_t peer_send(void *user, const char *dst, uint32_t type, uint64_t id,
                               const void *body, size_t len) {
    (void)id;
    peer_t *p = user;
    return enqueue(p->w, NAMES[p->index], dst, type, body, len);
}

static dsla_status_t peer_run(void *user, dsla_bcast_job_t *job) {
    peer_t *p = user;
    assert_true(p->n_jobs < JOBS_MAX);
    p->jobs[p->n_jobs++] = job;
    return DSLA_OK;
}

static world_t *world_create(bool owner_has_transport) {
    world_t *w = calloc(1, sizeof *w);
    w->net.corrupt_rank = -1;
    w->transport = (dsla_bcast_transport_t){fake_unique_id, fake_comm_create, fake_broadcast,
                                            fake_comm_destroy, &w->net};
    w->dir = dsla_test_tempdir();
    w->now = 1000;
    const dsla_bcast_core_config_t cc = {.id_timeout_ms = 5000, .transfer_timeout_ms = 30000};
    const dsla_bcast_core_ops_t cops = {core_send, core_done, w};
    assert_int_equal(dsla_bcast_core_create(&w->core, &cc, &cops), DSLA_OK);
    for (int i = 0; i < PEERS; i++) {
        peer_t *p = &w->peers[i];
        p->w = w;
        p->index = i;
        snprintf(p->cache, sizeof p->cache, "%s/cache-%s", w->dir, NAMES[i]);
        assert_int_equal(dsla_transfer_cache_init(p->cache), DSLA_OK);
        const dsla_bcast_peer_config_t pc = {
            .layer_cache = i ? p->cache : NULL,
            .owner_dir = i ? NULL : w->dir,
            .transport = i || owner_has_transport ? &w->transport : NULL,
            .timeout_ms = 2000,
            .slice = 64 * 1024 + 3}; /* slices that straddle the writer's chunks */
        const dsla_bcast_peer_ops_t pops = {peer_send, peer_run, p};
        assert_int_equal(dsla_bcast_peer_create(&p->peer, &pc, &pops), DSLA_OK);
    }
    return w;
}

static void world_destroy(world_t **w) {
    for (int i = 0; i < PEERS; i++) {
        peer_t *p = &(*w)->peers[i];
        for (int j = 0; j < p->n_jobs; j++)
            dsla_bcast_peer_done(p->peer, p->jobs[j], true);
        dsla_bcast_peer_destroy(&p->peer);
    }
    for (int i = (*w)->head; i < (*w)->tail; i++)
        free((*w)->queue[i].body);
    dsla_bcast_core_destroy(&(*w)->core);
    free((*w)->net.data);
    dsla_test_rmtree((*w)->dir);
    free((*w)->dir);
    free(*w);
    *w = NULL;
}

static peer_t *peer_named(world_t *w, const char *name) {
    for (int i = 0; i < PEERS; i++)
        if (strcmp(NAMES[i], name) == 0) return &w->peers[i];
    return NULL;
}

/* Delivers every queued message; dropped: messages to or from this peer vanish (it is dead). */
static void deliver(world_t *w, const char *dropped) {
    while (w->head < w->tail) {
        msg_t m = w->queue[w->head++];
        if (dropped && (strcmp(m.dst, dropped) == 0 || strcmp(m.src, dropped) == 0)) {
            free(m.body);
            continue;
        }
        if (strcmp(m.dst, "ctl") == 0) {
            if (m.type == DSLA_MSG_BCAST_ID)
                assert_int_equal(dsla_bcast_core_on_id(w->core, m.src, m.body, m.len, w->now),
                                 DSLA_OK);
            else
                assert_int_equal(dsla_bcast_core_on_reply(w->core, m.src,
                                                          m.type == DSLA_MSG_BCAST_NACK, m.body,
                                                          m.len, w->now),
                                 DSLA_OK);
        } else {
            peer_t *p = peer_named(w, m.dst);
            assert_non_null(p);
            if (m.type == DSLA_MSG_BCAST_OPEN)
                assert_int_equal(dsla_bcast_peer_on_open(p->peer, m.src, m.body, m.len), DSLA_OK);
            else
                assert_int_equal(m.type, DSLA_MSG_BCAST_JOIN);
            if (m.type == DSLA_MSG_BCAST_JOIN)
                assert_int_equal(dsla_bcast_peer_on_join(p->peer, m.src, m.body, m.len), DSLA_OK);
        }
        free(m.body);
    }
}

/* Runs peer i's oldest job and hands it back. */
static bool run_one(world_t *w, int i) {
    peer_t *p = &w->peers[i];
    if (!p->n_jobs) return false;
    dsla_bcast_job_t *job = p->jobs[0];
    memmove(p->jobs, p->jobs + 1, (size_t)--p->n_jobs * sizeof p->jobs[0]);
    dsla_bcast_job_run(job);
    dsla_bcast_peer_done(p->peer, job, false);
    return true;
}

/* Messages and jobs until quiet, the owner's jobs first (a collective's root finishes sending
 * before the others finish receiving); peers listed in `skip` run no job. */
static void pump(world_t *w, const char *skip) {
    for (bool any = true; any;) {
        deliver(w, NULL);
        any = false;
        for (int i = 0; i < PEERS && !any; i++)
            if (!skip || strcmp(skip, NAMES[i]) != 0) any = run_one(w, i);
    }
}

static char *make_file(world_t *w, size_t size, uint64_t seed, dsla_bcast_file_t *f) {
    char *bytes = malloc(size);
    uint64_t rng = seed;
    for (size_t i = 0; i < size; i++)
        bytes[i] = (char)(dsla_test_rand_u64(&rng) >> 24);
    char *path = malloc(strlen(w->dir) + 32);
    sprintf(path, "%s/layer-%" PRIu64 ".safetensors", w->dir, seed);
    dsla_test_write_file(path, bytes, size);
    *f = (dsla_bcast_file_t){.layer = 5,
                             .version = (uint32_t)seed,
                             .size = size,
                             .xxh64 = XXH64(bytes, size, 0),
                             .path = path};
    free(bytes);
    return path;
}

/* Whether receiver i's cache holds f's file, verified; and no partial copy of anything. */
static bool cached(world_t *w, int i, const dsla_bcast_file_t *f) {
    const dsla_proto_plan_layer_t l = {
        .layer = f->layer, .version = f->version, .size = f->size, .xxh64 = f->xxh64};
    char path[1024];
    assert_int_equal(dsla_transfer_cache_path(w->peers[i].cache, &l, path, sizeof path), DSLA_OK);
    DIR *d = opendir(w->peers[i].cache);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));)
        assert_null(strstr(e->d_name, ".part"));
    closedir(d);
    return dsla_transfer_cached(path, &l);
}

/* The latest session's ranks all ended in state. */
static void assert_every_rank(const world_t *w, dsla_bcast_rank_state_t state) {
    assert_int_equal(w->last.nranks, PEERS);
    for (int r = 0; r < PEERS; r++)
        assert_int_equal(w->last.state[r], state);
}

static uint64_t start(world_t *w, const dsla_bcast_file_t *f, uint32_t n) {
    static const char *const receivers[] = {"r1", "r2", "r3"};
    uint64_t session = 0;
    assert_int_equal(dsla_bcast_core_start(w->core, f, "distiller", receivers, n, w->now, &session),
                     DSLA_OK);
    return session;
}

static void test_all_ack_then_reuse(void **state) {
    (void)state;
    world_t *w = world_create(true);
    dsla_bcast_file_t f;
    char *path = make_file(w, 300 * 1000 + 17, 1, &f);
    uint64_t s = start(w, &f, RECEIVERS);
    assert_true(dsla_bcast_core_busy(w->core));
    pump(w, NULL);
    assert_false(dsla_bcast_core_busy(w->core));
    assert_int_equal(w->done_calls, 1);
    assert_true(w->last.session == s && w->last.fresh && w->last.nranks == PEERS);
    assert_every_rank(w, DSLA_BCAST_ACKED);
    for (int i = 1; i < PEERS; i++)
        assert_true(cached(w, i, &f));
    assert_int_equal(w->net.creates, PEERS);
    const uint64_t comm = w->last.comm;
    for (int i = 0; i < PEERS; i++)
        assert_true(dsla_bcast_peer_comm(w->peers[i].peer) == comm);

    /* the same members again: the communicator is reused, nobody joins anew */
    dsla_bcast_file_t g;
    char *path2 = make_file(w, 4096, 2, &g);
    start(w, &g, RECEIVERS);
    pump(w, NULL);
    assert_int_equal(w->done_calls, 2);
    assert_true(!w->last.fresh && w->last.comm == comm);
    assert_every_rank(w, DSLA_BCAST_ACKED);
    for (int i = 1; i < PEERS; i++)
        assert_true(cached(w, i, &g));
    assert_int_equal(w->net.creates, PEERS);
    assert_int_equal(w->net.destroys, 0);

    /* other members (r3 left out): a fresh communicator, the old ones dropped */
    dsla_bcast_file_t h;
    char *path3 = make_file(w, 1000, 3, &h);
    start(w, &h, 2);
    pump(w, NULL);
    assert_true(w->last.fresh && w->last.comm != comm && w->last.nranks == 3);
    assert_true(w->last.state[0] == DSLA_BCAST_ACKED && w->last.state[1] == DSLA_BCAST_ACKED &&
                w->last.state[2] == DSLA_BCAST_ACKED);
    assert_true(cached(w, 1, &h) && cached(w, 2, &h) && !cached(w, 3, &h));
    free(path);
    free(path2);
    free(path3);
    world_destroy(&w);
}

static void test_corrupt_receiver(void **state) {
    (void)state;
    world_t *w = world_create(true);
    dsla_bcast_file_t f;
    char *path = make_file(w, 200 * 1000, 4, &f);
    w->net.corrupt_rank = 2;
    start(w, &f, RECEIVERS);
    pump(w, NULL);
    assert_int_equal(w->done_calls, 1);
    assert_int_equal(w->last.state[0], DSLA_BCAST_ACKED);
    assert_int_equal(w->last.state[1], DSLA_BCAST_ACKED);
    assert_int_equal(w->last.state[2], DSLA_BCAST_FAILED);
    assert_int_equal(w->last.state[3], DSLA_BCAST_ACKED);
    assert_non_null(strstr(w->last.reason[2], "xxh64"));
    assert_true(cached(w, 1, &f) && !cached(w, 2, &f) && cached(w, 3, &f));
    /* r2 dropped its communicator; the next session over the same members makes a fresh one */
    assert_true(dsla_bcast_peer_comm(w->peers[2].peer) == 0);
    const uint64_t comm = w->last.comm;
    w->net.corrupt_rank = -1;
    start(w, &f, RECEIVERS);
    pump(w, NULL);
    assert_true(w->last.fresh && w->last.comm != comm);
    assert_every_rank(w, DSLA_BCAST_ACKED);
    assert_true(cached(w, 2, &f));
    free(path);
    world_destroy(&w);
}

static void test_owner_dies(void **state) {
    (void)state;
    world_t *w = world_create(true);
    dsla_bcast_file_t f;
    char *path = make_file(w, 100 * 1000, 5, &f);
    start(w, &f, RECEIVERS);
    /* the OPEN, the owner's id job, the ID, the JOINs: then the owner dies before sending */
    deliver(w, NULL);
    assert_true(run_one(w, 0));
    deliver(w, NULL);
    assert_int_equal(w->peers[0].n_jobs, 1); /* its send, never to run */
    dsla_bcast_core_on_peer_dead(w->core, "distiller", w->now);
    assert_int_equal(w->done_calls, 1);
    assert_every_rank(w, DSLA_BCAST_FAILED);
    assert_non_null(strstr(w->last.reason[1], "owner died"));
    /* the receivers' jobs time out on their own; their late NACKs change nothing */
    pump(w, "distiller");
    assert_int_equal(w->done_calls, 1);
    for (int i = 1; i < PEERS; i++) {
        assert_false(cached(w, i, &f));
        assert_false(dsla_bcast_peer_busy(w->peers[i].peer));
        assert_true(dsla_bcast_peer_comm(w->peers[i].peer) == 0);
    }
    free(path);
    world_destroy(&w);
}

static void test_receiver_dies(void **state) {
    (void)state;
    world_t *w = world_create(true);
    dsla_bcast_file_t f;
    char *path = make_file(w, 50 * 1000, 6, &f);
    start(w, &f, RECEIVERS);
    pump(w, NULL);
    const uint64_t comm = w->last.comm;
    /* between sessions: r3 dies; the next session over the same names rebuilds the communicator */
    dsla_bcast_core_on_peer_dead(w->core, "r3", w->now);
    start(w, &f, RECEIVERS);
    pump(w, NULL);
    assert_true(w->last.fresh && w->last.comm != comm);

    /* mid-session: r2 dies after its JOIN; it fails, the others still finish */
    const uint64_t comm2 = w->last.comm;
    start(w, &f, RECEIVERS);
    deliver(w, NULL);
    dsla_bcast_core_on_peer_dead(w->core, "r2", w->now);
    assert_int_equal(w->last.state[2], DSLA_BCAST_ACKED); /* still the previous session's */
    pump(w, "r2");
    assert_int_equal(w->done_calls, 3);
    assert_int_equal(w->last.state[2], DSLA_BCAST_FAILED);
    assert_non_null(strstr(w->last.reason[2], "died"));
    assert_true(w->last.state[0] == DSLA_BCAST_ACKED && w->last.state[1] == DSLA_BCAST_ACKED &&
                w->last.state[3] == DSLA_BCAST_ACKED);
    start(w, &f, RECEIVERS);
    assert_true(w->last.comm == comm2); /* done not yet called for the new one */
    deliver(w, "r2");
    free(path);
    world_destroy(&w);
}

static void test_no_transport_and_timeouts(void **state) {
    (void)state;
    world_t *w = world_create(false);
    dsla_bcast_file_t f;
    char *path = make_file(w, 1000, 7, &f);
    start(w, &f, RECEIVERS);
    pump(w, NULL);
    assert_int_equal(w->done_calls, 1);
    assert_every_rank(w, DSLA_BCAST_FAILED);
    assert_non_null(strstr(w->last.reason[0], "no transport"));
    world_destroy(&w);

    /* an owner that never answers; receivers that never answer */
    w = world_create(true);
    free(path);
    path = make_file(w, 1000, 8, &f);
    start(w, &f, RECEIVERS);
    dsla_bcast_core_on_tick(w->core, w->now + 4999);
    assert_true(dsla_bcast_core_busy(w->core));
    dsla_bcast_core_on_tick(w->core, w->now + 5000);
    assert_false(dsla_bcast_core_busy(w->core));
    assert_non_null(strstr(w->last.reason[0], "no BCAST_ID within 5000 ms"));
    deliver(w, "distiller");

    start(w, &f, RECEIVERS);
    deliver(w, NULL);
    assert_true(run_one(w, 0)); /* the id */
    deliver(w, NULL);           /* the JOINs out; nobody runs a job */
    dsla_bcast_core_on_tick(w->core, w->now + 30000);
    assert_false(dsla_bcast_core_busy(w->core));
    assert_every_rank(w, DSLA_BCAST_FAILED);
    free(path);
    world_destroy(&w);
}

static void test_wrong_senders_and_bad_starts(void **state) {
    (void)state;
    world_t *w = world_create(true);
    dsla_bcast_file_t f;
    char *path = make_file(w, 1000, 9, &f);
    uint64_t s = start(w, &f, RECEIVERS);
    /* an ID from a receiver, an ACK for rank 1 from r2, an ACK from a stranger: all ignored */
    dsla_proto_bcast_t id = {.session = s, .comm = 1, .id_len = 8};
    dsla_proto_buf_t buf;
    assert_int_equal(dsla_proto_bcast_encode(&id, &buf), DSLA_OK);
    assert_int_equal(dsla_bcast_core_on_id(w->core, "r1", buf.data, buf.len, w->now), DSLA_OK);
    dsla_proto_buf_free(&buf);
    dsla_proto_bcast_reply_t ack = {.session = s, .rank = 1};
    assert_int_equal(dsla_proto_bcast_reply_encode(&ack, &buf), DSLA_OK);
    assert_int_equal(dsla_bcast_core_on_reply(w->core, "r2", false, buf.data, buf.len, w->now),
                     DSLA_OK);
    assert_int_equal(dsla_bcast_core_on_reply(w->core, "mallory", true, buf.data, buf.len, w->now),
                     DSLA_OK);
    assert_int_equal(dsla_bcast_core_on_reply(w->core, "r1", false, "\xc1", 1, w->now),
                     DSLA_ERR_FORMAT);
    dsla_proto_buf_free(&buf);
    assert_int_equal(w->done_calls, 0);
    /* one session at a time */
    uint64_t other = 0;
    static const char *const dup[] = {"r1", "r1"};
    static const char *const own[] = {"distiller"};
    assert_int_equal(dsla_bcast_core_start(w->core, &f, "distiller", dup, 1, w->now, &other),
                     DSLA_ERR_UNAVAILABLE);
    pump(w, NULL);
    assert_int_equal(w->done_calls, 1);
    assert_every_rank(w, DSLA_BCAST_ACKED);
    /* bad sets of names, a bad file */
    assert_int_equal(dsla_bcast_core_start(w->core, &f, "distiller", dup, 2, w->now, &other),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "named twice"));
    assert_int_equal(dsla_bcast_core_start(w->core, &f, "distiller", own, 1, w->now, &other),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_int_equal(dsla_bcast_core_start(w->core, &f, "distiller", dup, 0, w->now, &other),
                     DSLA_ERR_INVALID_ARGUMENT);
    dsla_bcast_file_t empty = f;
    empty.size = 0;
    assert_int_equal(dsla_bcast_core_start(w->core, &empty, "distiller", dup, 1, w->now, &other),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_false(dsla_bcast_core_busy(w->core));
    /* the owner sends only files under its directory */
    dsla_bcast_file_t outside = f;
    outside.path = "/etc/passwd";
    start(w, &outside, RECEIVERS);
    pump(w, NULL);
    assert_int_equal(w->done_calls, 2);
    assert_every_rank(w, DSLA_BCAST_FAILED);
    assert_non_null(strstr(w->last.reason[0], "PERMISSION_DENIED"));
    assert_non_null(strstr(w->last.reason[0], "not a file under"));
    /* a JOIN to a peer as rank 0, a reused communicator a peer does not hold: NACKed */
    dsla_proto_bcast_t join = {.session = 77, .comm = 999, .rank = 0, .nranks = 2, .size = 10};
    assert_int_equal(dsla_proto_bcast_encode(&join, &buf), DSLA_OK);
    assert_int_equal(dsla_bcast_peer_on_join(w->peers[1].peer, "ctl", buf.data, buf.len), DSLA_OK);
    dsla_proto_buf_free(&buf);
    join.rank = 1;
    assert_int_equal(dsla_proto_bcast_encode(&join, &buf), DSLA_OK);
    assert_int_equal(dsla_bcast_peer_on_join(w->peers[1].peer, "ctl", buf.data, buf.len), DSLA_OK);
    dsla_proto_buf_free(&buf);
    assert_int_equal(w->tail - w->head, 2);
    for (int i = w->head; i < w->tail; i++) {
        assert_int_equal(w->queue[i].type, DSLA_MSG_BCAST_NACK);
        dsla_proto_bcast_reply_t r;
        assert_int_equal(dsla_proto_bcast_reply_decode(w->queue[i].body, w->queue[i].len, &r),
                         DSLA_OK);
        assert_non_null(strstr(r.reason, i == w->head ? "not a receiver" : "not held here"));
    }
    deliver(w, NULL); /* stale NACKs: ignored */
    assert_int_equal(w->done_calls, 2);
    free(path);
    world_destroy(&w);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_ack_then_reuse),
        cmocka_unit_test(test_corrupt_receiver),
        cmocka_unit_test(test_owner_dies),
        cmocka_unit_test(test_receiver_dies),
        cmocka_unit_test(test_no_transport_and_timeouts),
        cmocka_unit_test(test_wrong_senders_and_bad_starts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The controller's state machine (actors/controller_core.h) stepped in-process: a fake send that
 * records every SET_PLAN, a virtual clock, and simulated replicas that answer. Load rising converts
 * layers in catalogue order, one per cooldown, up to the cap; an empty queue over a full arena
 * reverts nothing; load falling reverts them in reverse.
 * A PLAN_NACK keeps the old plan, is recorded and is sent again only after a backoff (10 s,
 * doubling at each refusal of the same target) or when the operator changes something. A replica
 * dying mid-rollout gives up its SET_PLAN, ignores its late answer and is sent its target again
 * when it comes back; an unanswered SET_PLAN times out on the tick. A restart on the same SQLite
 * file brings back the policy, the drain flag, the plans and the announced versions. A corrupt or
 * misannounced version is refused by verification; chunks are served only from catalogued,
 * unchanged files. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "actors/controller_chunks.h"
#include "actors/controller_core.h"
#include "runtime/core/clock.h"
#include "runtime/model/dsla_layer.h"

enum { NUM_LAYERS = 8, SENT_MAX = 64 };

static void ok(dsla_status_t st) {
    if (st != DSLA_OK) fail_msg("%s: %s", dsla_status_name(st), dsla_last_error());
}

/* A SET_PLAN as the fake send saw it. */
typedef struct {
    char dst[64];
    uint64_t seq;
    uint32_t n_layers;
    int layers[16];
    uint64_t checksums[16];
} sent_t;

typedef struct {
    uint64_t now_ms; /* the virtual clock */
    int n_sent;
    sent_t sent[SENT_MAX];
    dsla_ctl_store_t *store; /* persist applies here when set */
    char events[16384];      /* event names, space-separated, in order */
    int n_writes;
} fake_t;

static uint64_t fake_now(void *user) {
    return ((fake_t *)user)->now_ms;
}

static int64_t fake_wall(void *user) {
    return 1700000000000 + (int64_t)((fake_t *)user)->now_ms;
}

static dsla_status_t fake_send(void *user, const char *dst, uint32_t type, uint64_t id,
                               const void *msg) {
    fake_t *f = user;
    assert_int_equal(type, DSLA_MSG_SET_PLAN);
    const dsla_proto_set_plan_t *p = msg;
    assert_int_equal(p->seq, id);
    assert_true(f->n_sent < SENT_MAX);
    sent_t *s = &f->sent[f->n_sent++];
    snprintf(s->dst, sizeof s->dst, "%s", dst);
    s->seq = p->seq;
    s->n_layers = p->n_layers;
    for (uint32_t i = 0; i < p->n_layers && i < 16; i++) {
        s->layers[i] = p->layers[i].layer;
        s->checksums[i] = p->layers[i].checksum;
        assert_non_null(strstr(p->layers[i].path, "/layer-"));
        assert_true(p->layers[i].size > 0); /* a fetching replica needs size and xxh64 */
    }
    return DSLA_OK;
}

static void fake_persist(void *user, const dsla_ctl_write_t *w) {
    fake_t *f = user;
    f->n_writes++;
    if (w->kind == DSLA_CTL_WRITE_EVENT) {
        size_t len = strlen(f->events);
        snprintf(f->events + len, sizeof f->events - len, "%s ", w->event.name);
    }
    if (f->store) ok(dsla_ctl_store_apply(f->store, w));
}

static dsla_ctl_env_t env_of(fake_t *f) {
    return (dsla_ctl_env_t){f, fake_now, fake_wall, fake_send, fake_persist};
}

/* ---- layer versions on disk ---- */

static const dsla_model_config_t cfg = {
    .hidden_size = 8, .num_layers = NUM_LAYERS, .num_heads = 2, .head_dim = 4};

/* Writes layer's version into dir as name; conversion order 2, 0, 1, 3. */
static void write_version(const char *dir, int layer, int version, const char *name) {
    dsla_dsla_layer_t *l = NULL;
    ok(dsla_dsla_layer_create(&l, &cfg, layer));
    for (size_t i = 0; i < l->numel; i++)
        l->data[i] = (float)(i % 5) * 0.5f + (float)version + 0.1f * (float)layer;
    dsla_layer_version_meta_t meta = {.version = version, .order = {2, 0, 1, 3}, .n_order = 4};
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ok(dsla_dsla_layer_save(l, path, &meta));
    dsla_dsla_layer_destroy(&l);
}

/* A directory of four layer versions. */
static char *versions_dir(void) {
    char *dir = dsla_test_tempdir();
    const int layers[] = {0, 1, 2, 3};
    for (int i = 0; i < 4; i++) {
        char name[64];
        snprintf(name, sizeof name, "layer-%d.safetensors", layers[i]);
        write_version(dir, layers[i], 1, name);
    }
    return dir;
}

static dsla_ctl_core_t *core_new(fake_t *f, const char *dir, const char *policy) {
    dsla_ctl_core_t *c = NULL;
    dsla_ctl_env_t env = env_of(f);
    ok(dsla_ctl_core_create(&c, dir, &env));
    ok(dsla_ctl_core_start(c, f->store, policy));
    return c;
}

/* ---- a simulated replica ---- */

typedef struct {
    const char *name;
    uint64_t plan_id;
    uint32_t n_dsla;
    dsla_proto_dsla_layer_t dsla[16];
    uint32_t kv_used, slots_used; /* of ARENA_KV blocks and ARENA_SLOTS slots, one arena */
} replica_t;

enum { ARENA_KV = 1000, ARENA_SLOTS = 100 };

static void report(dsla_ctl_core_t *c, const replica_t *r, uint32_t queue, uint32_t wait_ms) {
    static dsla_proto_load_report_t rep;
    memset(&rep, 0, sizeof rep);
    rep.num_layers = NUM_LAYERS;
    rep.queue_length = queue;
    rep.oldest_wait_ms = wait_ms;
    rep.kv_used = r->kv_used;
    rep.kv_total = ARENA_KV;
    rep.slots_used = r->slots_used;
    rep.slots_total = ARENA_SLOTS;
    rep.plan_id = r->plan_id;
    rep.n_dsla = r->n_dsla;
    memcpy(rep.dsla, r->dsla, sizeof r->dsla);
    ok(dsla_ctl_core_on_load_report(c, r->name, &rep, true));
}

/* Answers the latest SET_PLAN: ACK adopts it, NACK keeps the plan the replica had. */
static void answer(dsla_ctl_core_t *c, fake_t *f, replica_t *r, bool ack, const char *reason) {
    assert_true(f->n_sent > 0);
    const sent_t *s = &f->sent[f->n_sent - 1];
    assert_string_equal(s->dst, r->name);
    if (ack) {
        r->plan_id++;
        r->n_dsla = s->n_layers;
        for (uint32_t i = 0; i < s->n_layers; i++)
            r->dsla[i] = (dsla_proto_dsla_layer_t){s->layers[i], s->checksums[i]};
    }
    static dsla_proto_plan_reply_t p;
    memset(&p, 0, sizeof p);
    p.seq = s->seq;
    p.plan_id = r->plan_id;
    p.n_dsla = r->n_dsla;
    memcpy(p.dsla, r->dsla, sizeof r->dsla);
    if (!ack) {
        p.code = DSLA_CODE_INVALID_ARGUMENT;
        snprintf(p.reason, sizeof p.reason, "%s", reason);
    }
    dsla_ctl_core_on_plan_reply(c, r->name, ack, &p);
}

static dsla_status_t admin(dsla_ctl_core_t *c, const char *line, dsla_admin_text_t *out) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", line);
    const char *words[32];
    int n = 0;
    for (char *save = NULL, *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save))
        words[n++] = w;
    dsla_admin_cmd_t cmd;
    DSLA_TRY(dsla_admin_parse(words, n, &cmd));
    return dsla_ctl_core_admin(c, &cmd, out);
}

static void admin_ok(dsla_ctl_core_t *c, const char *line) {
    dsla_admin_text_t t = {0};
    ok(admin(c, line, &t));
    dsla_admin_text_free(&t);
}

static int count(const char *haystack, const char *needle) {
    int n = 0;
    for (const char *p = strstr(haystack, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* ---- tests ---- */

static void test_load_rises_then_falls(void **state) {
    (void)state;
    char *dir = versions_dir();
    fake_t *f = calloc(1, sizeof *f);
    dsla_ctl_core_t *c =
        core_new(f, dir,
                 "threshold queue_high=8 queue_low=0 wait_high_ms=1000 wait_low_ms=100 "
                 "cooldown_ms=1000 max_ratio=0.5");
    const dsla_catalogue_t *cat = dsla_ctl_core_catalogue(c);
    assert_int_equal(cat->n, 4);
    const int order[] = {2, 0, 1, 3}; /* the recorded conversion order */
    for (int i = 0; i < 4; i++)
        assert_int_equal(cat->entries[i].layer, order[i]);
    replica_t r = {.name = "serving0", .plan_id = 1};
    f->now_ms = 1000;
    report(c, &r, 0, 0); /* idle: nothing to do */
    assert_int_equal(f->n_sent, 0);

    /* load rises: one more layer per cooldown, in the catalogue's order, up to floor(0.5 * 8) */
    for (int k = 1; k <= 4; k++) {
        report(c, &r, 20, 0);
        assert_int_equal(f->n_sent, k);
        const sent_t *s = &f->sent[k - 1];
        assert_int_equal(s->n_layers, k);
        for (int i = 0; i < k; i++) {
            assert_int_equal(s->layers[i], order[i]);
            assert_true(s->checksums[i] == cat->entries[i].checksum);
        }
        assert_true(s->seq > (k > 1 ? f->sent[k - 2].seq : 0)); /* plan ids increase */
        answer(c, f, &r, true, NULL);
        assert_int_equal(r.n_dsla, k);
        for (int t = 100; t < 1000; t += 100) { /* cooling down: nothing moves */
            f->now_ms += 100;
            report(c, &r, 20, 0);
            assert_int_equal(f->n_sent, k);
        }
        f->now_ms += 100;
    }
    report(c, &r, 20, 5000); /* at the cap: still 4 */
    assert_int_equal(f->n_sent, 4);
    assert_int_equal(dsla_ctl_core_replica(c, "serving0")->target, 4);

    /* the queue empties while the arena is still full (60% KV blocks and 30% state slots, which
     * share it): nothing is reverted, however long it stays so */
    r.kv_used = 600;
    r.slots_used = 30;
    for (int t = 0; t < 5; t++) {
        f->now_ms += 1000;
        report(c, &r, 0, 0);
    }
    assert_int_equal(f->n_sent, 4);
    r.kv_used = 500; /* drained to 70%, under the default memory_low of 80% */
    r.slots_used = 20;
    /* load falls: reverted from the end of the order, one per cooldown */
    for (int k = 3; k >= 0; k--) {
        f->now_ms += 1000;
        report(c, &r, 0, 0);
        const sent_t *s = &f->sent[f->n_sent - 1];
        assert_int_equal(s->n_layers, k);
        for (int i = 0; i < k; i++)
            assert_int_equal(s->layers[i], order[i]);
        answer(c, f, &r, true, NULL);
        report(c, &r, 0, 0); /* runs its target: nothing sent */
        assert_int_equal(s - f->sent, f->n_sent - 1);
    }
    assert_int_equal(r.n_dsla, 0);
    assert_int_equal(count(f->events, "convert "), 4);
    assert_int_equal(count(f->events, "revert "), 4);
    assert_int_equal(count(f->events, "plan_adopted "), 8);
    dsla_admin_text_t t = {0};
    ok(admin(c, "status", &t));
    assert_non_null(strstr(t.data, "replica serving0 alive: plan 9 runs 0 DSLA layers [];"));
    dsla_admin_text_free(&t);
    dsla_ctl_core_destroy(&c);
    dsla_ctl_core_destroy(&c); /* harmless twice */
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

/* A refusal may be transient (the soak saw fetches cut by a dropped connection and by a restarted
 * controller, and a chunk corrupted on the wire): the refused plan was never sent again while the
 * target stayed, leaving a replica on its old plan for as long as the policy held. It is now sent
 * again after DSLA_CONTROLLER_RETRY_MS, then twice as long at each further refusal. */
static void test_nack_retried_after_backoff(void **state) {
    (void)state;
    char *dir = versions_dir();
    fake_t *f = calloc(1, sizeof *f);
    dsla_ctl_core_t *c = core_new(f, dir, "manual layers=1");
    replica_t r = {.name = "serving0", .plan_id = 5};
    report(c, &r, 0, 0);
    assert_int_equal(f->n_sent, 1);
    answer(c, f, &r, false, "layer transfer: no LAYER_CHUNK of layer 2 from controller");
    const int waits[] = {DSLA_CONTROLLER_RETRY_MS, 2 * DSLA_CONTROLLER_RETRY_MS};
    for (int k = 0; k < 2; k++) {
        const uint64_t refused = f->now_ms;
        while (f->now_ms + 1000 < refused + (uint64_t)waits[k]) { /* nothing before the wait */
            f->now_ms += 1000;
            report(c, &r, 0, 0);
            assert_int_equal(f->n_sent, 1 + k);
        }
        f->now_ms = refused + (uint64_t)waits[k];
        report(c, &r, 0, 0);
        assert_int_equal(f->n_sent, 2 + k);
        if (k == 0) answer(c, f, &r, false, "layer 2 version 1 arrived with xxh64 1, announced 2");
    }
    assert_non_null(strstr(f->events, "plan_retry"));
    answer(c, f, &r, true, NULL); /* adopted: nothing more to send */
    assert_int_equal(dsla_ctl_core_replica(c, "serving0")->refusal[0], '\0');
    f->now_ms += 10 * DSLA_CONTROLLER_RETRY_MS;
    report(c, &r, 0, 0);
    assert_int_equal(f->n_sent, 3);
    dsla_ctl_core_destroy(&c);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_nack_keeps_old_plan(void **state) {
    (void)state;
    char *dir = versions_dir();
    fake_t *f = calloc(1, sizeof *f);
    char db[1024];
    snprintf(db, sizeof db, "%s/controller.db", dir);
    ok(dsla_ctl_store_open(&f->store, db));
    dsla_ctl_core_t *c = core_new(f, dir, "manual layers=1");
    replica_t r = {.name = "serving0", .plan_id = 5};
    report(c, &r, 0, 0);
    assert_int_equal(f->n_sent, 1);
    answer(c, f, &r, false, "layer 2: checksum mismatch");
    const dsla_ctl_replica_t *cr = dsla_ctl_core_replica(c, "serving0");
    assert_string_equal(cr->refusal, "layer 2: checksum mismatch");
    assert_int_equal(cr->last.n_dsla, 0); /* the kept plan */
    assert_int_equal(cr->last.plan_id, 5);
    assert_int_equal(cr->pending_seq, 0);
    assert_non_null(strstr(f->events, "plan_refused"));
    for (int i = 0; i < 5; i++) { /* not sent again while nothing changes */
        f->now_ms += 1000;
        report(c, &r, 0, 0);
    }
    assert_int_equal(f->n_sent, 1);
    dsla_admin_text_t t = {0};
    ok(admin(c, "status", &t));
    assert_non_null(strstr(t.data, "last refusal: layer 2: checksum mismatch"));
    dsla_admin_text_free(&t);
    /* the refusal and the kept plan are in the database */
    dsla_admin_text_t h = {0};
    ok(dsla_ctl_store_each_event(f->store, 50, dsla_admin_history_line, &h));
    assert_non_null(strstr(h.data, "plan_refused   serving0: layer 2: checksum mismatch; keeps "
                                   "plan 5, 0 DSLA layers []"));
    dsla_admin_text_free(&h);
    /* an operator's change retries it */
    admin_ok(c, "policy set manual layers=1 max_ratio=0.5");
    assert_int_equal(f->n_sent, 2);
    answer(c, f, &r, true, NULL);
    assert_int_equal(dsla_ctl_core_replica(c, "serving0")->refusal[0], '\0');
    dsla_ctl_core_destroy(&c);
    dsla_ctl_store_close(&f->store);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_replica_dies_mid_rollout(void **state) {
    (void)state;
    char *dir = versions_dir();
    fake_t *f = calloc(1, sizeof *f);
    dsla_ctl_core_t *c = core_new(f, dir, "manual layers=2");
    replica_t r = {.name = "serving0", .plan_id = 1}, other = {.name = "serving1", .plan_id = 1};
    report(c, &other, 0, 0);
    answer(c, f, &other, true, NULL);
    report(c, &r, 0, 0);
    assert_int_equal(f->n_sent, 2);
    uint64_t lost_seq = f->sent[1].seq;
    dsla_ctl_core_on_peer(c, "serving0", false); /* dies before answering */
    const dsla_ctl_replica_t *cr = dsla_ctl_core_replica(c, "serving0");
    assert_false(cr->alive);
    assert_int_equal(cr->pending_seq, 0);
    assert_non_null(strstr(f->events, "replica_dead"));
    /* its late answer changes nothing; the other replica is untouched */
    answer(c, f, &r, true, NULL);
    assert_int_equal(cr->last.n_dsla, 0);
    assert_int_equal(dsla_ctl_core_replica(c, "serving1")->last.n_dsla, 2);
    /* while dead it is sent nothing, even when the operator changes the policy */
    admin_ok(c, "policy set manual layers=3");
    assert_int_equal(f->n_sent, 3); /* to serving1 only */
    assert_string_equal(f->sent[2].dst, "serving1");
    answer(c, f, &other, true, NULL);
    /* a report whose sender the mailbox does not hear (a late one, or one sent before its next
     * PING) is no proof of life: it stays dead and is sent nothing (cluster_netns.sh found a
     * replica revived so that stayed alive in dslactl status long after its link was cut) */
    static dsla_proto_load_report_t late;
    late.num_layers = NUM_LAYERS;
    late.plan_id = 1;
    ok(dsla_ctl_core_on_load_report(c, "serving0", &late, false));
    assert_false(cr->alive);
    assert_int_equal(f->n_sent, 3);
    /* back, restarted with the teacher's plan: sent its target again under a new id */
    r = (replica_t){.name = "serving0", .plan_id = 1};
    dsla_ctl_core_on_peer(c, "serving0", true);
    report(c, &r, 0, 0);
    assert_int_equal(f->n_sent, 4);
    assert_string_equal(f->sent[3].dst, "serving0");
    assert_int_equal(f->sent[3].n_layers, 3);
    assert_true(f->sent[3].seq > lost_seq);
    /* no answer at all: the tick gives it up after DSLA_CONTROLLER_PENDING_MS and sends again */
    f->now_ms += DSLA_CONTROLLER_PENDING_MS - 1;
    dsla_ctl_core_on_tick(c);
    assert_int_equal(f->n_sent, 4);
    f->now_ms += 1;
    dsla_ctl_core_on_tick(c);
    assert_int_equal(f->n_sent, 5);
    assert_non_null(strstr(f->events, "plan_timeout"));
    answer(c, f, &r, true, NULL);
    assert_int_equal(dsla_ctl_core_replica(c, "serving0")->last.n_dsla, 3);
    dsla_ctl_core_destroy(&c);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

/* An announced version, written into the controller's directory by a distiller after its scan. */
static void announce(const dsla_ctl_core_t *c, const char *path, dsla_ctl_verify_t *v) {
    memset(v, 0, sizeof *v);
    snprintf(v->from, sizeof v->from, "distiller");
    snprintf(v->layers_dir, sizeof v->layers_dir, "%s", dsla_ctl_core_layers_dir(c));
    dsla_catalogue_entry_t e;
    ok(dsla_catalogue_read(path, &e, NULL, NULL));
    dsla_proto_layer_ready_t *r = &v->ready;
    r->layer = e.layer;
    r->version = (uint32_t)e.version;
    r->checksum = e.checksum;
    snprintf(r->path, sizeof r->path, "%s", path);
    ok(dsla_catalogue_file_digest(path, &r->size, &r->xxh64));
}

static void test_restart_from_sqlite(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    write_version(dir, 2, 1, "layer-2.safetensors");
    write_version(dir, 0, 1, "layer-0.safetensors");
    char db[1024], path[1024];
    snprintf(db, sizeof db, "%s/controller.db", dir);
    snprintf(path, sizeof path, "%s/layer-1.safetensors", dir);
    fake_t *f = calloc(1, sizeof *f);
    ok(dsla_ctl_store_open(&f->store, db));
    dsla_ctl_core_t *c = core_new(f, dir, NULL);
    assert_int_equal(dsla_ctl_core_policy(c)->kind, DSLA_POLICY_THRESHOLD); /* fresh: defaults */
    write_version(dir, 1, 1, "layer-1.safetensors"); /* announced after the scan by a distiller */
    dsla_ctl_verify_t *v = malloc(sizeof *v);
    announce(c, path, v);
    dsla_ctl_verify_run(v);
    ok(v->status);
    dsla_ctl_core_on_layer_verified(c, v);
    assert_int_equal(dsla_ctl_core_catalogue(c)->n, 3);
    replica_t r = {.name = "serving0", .plan_id = 1};
    report(c, &r, 0, 0);
    admin_ok(c, "convert 3");
    answer(c, f, &r, true, NULL);
    admin_ok(c, "drain on");
    dsla_ctl_core_destroy(&c);
    dsla_ctl_store_close(&f->store);

    /* the same database, a fresh core: state back, the replica not yet heard from */
    fake_t *g = calloc(1, sizeof *g);
    ok(dsla_ctl_store_open(&g->store, db));
    c = core_new(g, dir, NULL);
    const dsla_policy_config_t *p = dsla_ctl_core_policy(c);
    assert_int_equal(p->kind, DSLA_POLICY_MANUAL);
    assert_int_equal(p->layers, 3);
    assert_true(dsla_ctl_core_draining(c));
    const dsla_catalogue_t *cat = dsla_ctl_core_catalogue(c);
    assert_int_equal(cat->n, 3);
    const int order[] = {2, 0, 1};
    for (int i = 0; i < 3; i++)
        assert_int_equal(cat->entries[i].layer, order[i]);
    assert_string_equal(cat->entries[2].path, path);
    const dsla_ctl_replica_t *cr = dsla_ctl_core_replica(c, "serving0");
    assert_non_null(cr);
    assert_int_equal(cr->target, 3);
    assert_false(cr->alive);
    /* it comes back restarted with no DSLA layers: sent its target again, nothing converted anew */
    replica_t fresh = {.name = "serving0", .plan_id = 1};
    report(c, &fresh, 20, 0);
    assert_int_equal(g->n_sent, 1);
    assert_int_equal(g->sent[0].n_layers, 3);
    assert_null(strstr(g->events, "convert"));
    dsla_admin_text_t h = {0};
    ok(dsla_ctl_store_each_event(g->store, 100, dsla_admin_history_line, &h));
    assert_int_equal(count(h.data, " start "), 2);
    assert_non_null(strstr(h.data, "layer_ready    distiller: layer 1 version 1"));
    assert_non_null(strstr(h.data, "plan_adopted   serving0: plan 2, 3 DSLA layers"));
    dsla_admin_text_free(&h);
    dsla_ctl_core_destroy(&c);
    dsla_ctl_store_close(&g->store);
    free(v);
    free(f);
    free(g);
    dsla_test_rmtree(dir);
    free(dir);
}

static void test_corrupt_version_refused(void **state) {
    (void)state;
    char *dir = versions_dir();
    char path[1024];
    snprintf(path, sizeof path, "%s/layer-5.safetensors", dir);
    fake_t *f = calloc(1, sizeof *f);
    dsla_ctl_core_t *c = core_new(f, dir, NULL);
    write_version(dir, 5, 2, "layer-5.safetensors");
    dsla_ctl_verify_t *v = malloc(sizeof *v);

    /* a byte of its tensors flipped after the announce: size and xxh64 disagree */
    announce(c, path, v);
    size_t len = 0;
    char *bytes = dsla_test_read_file(path, &len);
    bytes[len - 5] ^= 0x5a;
    dsla_test_write_file(path, bytes, len);
    dsla_ctl_verify_run(v);
    assert_int_equal(v->status, DSLA_ERR_FORMAT);
    assert_non_null(strstr(v->error, path));
    assert_non_null(strstr(v->error, "announced"));
    dsla_ctl_core_on_layer_verified(c, v);
    assert_int_equal(dsla_ctl_core_catalogue(c)->n, 4);
    assert_non_null(strstr(f->events, "layer_refused"));

    /* the file as announced, but its header names another checksum than the announce */
    announce(c, path, v);
    v->ready.checksum ^= 1;
    dsla_ctl_verify_run(v);
    assert_int_equal(v->status, DSLA_ERR_FORMAT);
    assert_non_null(strstr(v->error, "announced layer 5 version 2 checksum"));
    /* and a file that is gone */
    announce(c, path, v);
    snprintf(v->ready.path, sizeof v->ready.path, "%s/layer-7.safetensors", dir);
    dsla_ctl_verify_run(v);
    assert_int_equal(v->status, DSLA_ERR_NOT_FOUND);
    dsla_ctl_core_on_layer_verified(c, v);
    assert_int_equal(count(f->events, "layer_refused"), 2);
    assert_int_equal(dsla_ctl_core_catalogue(c)->n, 4);
    free(bytes);
    free(v);
    dsla_ctl_core_destroy(&c);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

/* Announcements that name anything but a version file inside the layer directory are refused
 * before the file is read: a device that never ends (/dev/zero pinned a worker), a FIFO (blocked
 * open), a file outside by path, by "..", or by a symbolic link inside; none of the refusals
 * echoes the file's contents, and none takes time. */
static void test_hostile_announcements_refused(void **state) {
    (void)state;
    char *dir = versions_dir(), *outside = dsla_test_tempdir();
    fake_t *f = calloc(1, sizeof *f);
    dsla_ctl_core_t *c = core_new(f, dir, NULL);
    char good[1024], fifo[1024], link[1024], dotdot[1024], other[1024], stray[1024];
    snprintf(good, sizeof good, "%s/layer-1.safetensors", dir);
    write_version(outside, 6, 1, "layer-6.safetensors");
    snprintf(fifo, sizeof fifo, "%s/layer-9.safetensors", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    snprintf(link, sizeof link, "%s/layer-8.safetensors", dir);
    assert_int_equal(symlink("/etc/passwd", link), 0);
    snprintf(dotdot, sizeof dotdot, "%s/../%s/layer-6.safetensors", dir, strrchr(outside, '/') + 1);
    snprintf(other, sizeof other, "%s/layer-6.safetensors", outside);
    snprintf(stray, sizeof stray, "%s/notes.txt", dir);
    dsla_test_write_file(stray, "secret", 6);
    const struct {
        const char *path;
        dsla_status_t status;
    } cases[] = {{"/dev/zero", DSLA_ERR_PERMISSION_DENIED},
                 {"/etc/passwd", DSLA_ERR_PERMISSION_DENIED},
                 {fifo, DSLA_ERR_FORMAT},
                 {link, DSLA_ERR_PERMISSION_DENIED},
                 {dotdot, DSLA_ERR_PERMISSION_DENIED},
                 {other, DSLA_ERR_PERMISSION_DENIED},
                 {stray, DSLA_ERR_PERMISSION_DENIED}};
    dsla_ctl_verify_t *v = malloc(sizeof *v);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        announce(c, good, v);
        snprintf(v->ready.path, sizeof v->ready.path, "%s", cases[i].path);
        uint64_t t0 = dsla_clock_ms();
        dsla_ctl_verify_run(v);
        if (v->status != cases[i].status || dsla_clock_ms() - t0 > 1000)
            fail_msg("%s: %s after %llu ms: %s", cases[i].path, dsla_status_name(v->status),
                     (unsigned long long)(dsla_clock_ms() - t0), v->error);
        if (strstr(v->error, "root:") || strstr(v->error, "secret"))
            fail_msg("%s: the refusal echoes the file: %s", cases[i].path, v->error);
        dsla_ctl_core_on_layer_verified(c, v);
    }
    assert_int_equal(dsla_ctl_core_catalogue(c)->n, 4);
    assert_int_equal(count(f->events, "layer_refused"), 7);
    free(v);
    dsla_ctl_core_destroy(&c);
    free(f);
    dsla_test_rmtree(dir);
    dsla_test_rmtree(outside);
    free(dir);
    free(outside);
}

/* A database from before announcements were confined may record a version outside the layer
 * directory: a restart does not catalogue it (a zero-weight layer in /tmp was served again). */
static void test_restore_refuses_outside(void **state) {
    (void)state;
    char *dir = versions_dir(), *outside = dsla_test_tempdir();
    write_version(outside, 5, 1, "layer-5.safetensors");
    char db[1024], path[1024];
    snprintf(db, sizeof db, "%s/controller.db", dir);
    snprintf(path, sizeof path, "%s/layer-5.safetensors", outside);
    dsla_catalogue_entry_t e;
    ok(dsla_catalogue_read(path, &e, NULL, NULL));
    fake_t *f = calloc(1, sizeof *f);
    ok(dsla_ctl_store_open(&f->store, db));
    dsla_ctl_layer_row_t row = {.layer = 5, .version = 1, .checksum = e.checksum};
    snprintf(row.path, sizeof row.path, "%s", path);
    ok(dsla_ctl_store_put_layer(f->store, &row));
    dsla_ctl_core_t *c = core_new(f, dir, NULL);
    assert_int_equal(dsla_ctl_core_catalogue(c)->n, 4);
    for (int i = 0; i < 4; i++)
        assert_int_not_equal(dsla_ctl_core_catalogue(c)->entries[i].layer, 5);
    dsla_ctl_core_destroy(&c);
    dsla_ctl_store_close(&f->store);
    free(f);
    dsla_test_rmtree(dir);
    dsla_test_rmtree(outside);
    free(dir);
    free(outside);
}

/* Names that reported once and fell silent leave the replica table: 64 invented names filled it
 * for good before. A replica that keeps reporting stays. */
static void test_silent_replicas_expire(void **state) {
    (void)state;
    char *dir = versions_dir();
    fake_t *f = calloc(1, sizeof *f);
    dsla_ctl_core_t *c = core_new(f, dir, "manual layers=0");
    replica_t real = {.name = "serving0", .plan_id = 1};
    report(c, &real, 0, 0);
    char names[DSLA_PROTO_REPLICAS_MAX][16];
    for (int i = 0; i < DSLA_PROTO_REPLICAS_MAX - 1; i++) {
        snprintf(names[i], sizeof names[i], "fake%d", i);
        replica_t r = {.name = names[i], .plan_id = 1};
        report(c, &r, 0, 0);
    }
    static dsla_proto_load_report_t rep;
    rep.num_layers = NUM_LAYERS;
    assert_int_equal(dsla_ctl_core_on_load_report(c, "late", &rep, true),
                     DSLA_ERR_RESOURCE_EXHAUSTED);
    for (uint64_t t = 0; t < DSLA_CONTROLLER_REPLICA_EXPIRE_MS; t += 1000) {
        f->now_ms += 1000;
        report(c, &real, 0, 0);
        dsla_ctl_core_on_tick(c);
    }
    ok(dsla_ctl_core_on_load_report(c, "late", &rep, true));
    dsla_admin_text_t t = {0};
    ok(admin(c, "status", &t));
    if (!strstr(t.data, "serving0") || strstr(t.data, "fake0"))
        fail_msg("status after expiry:\n%s", t.data);
    dsla_admin_text_free(&t);
    dsla_ctl_core_destroy(&c);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

static dsla_ctl_chunk_t *fetch(const dsla_ctl_core_t *c, int layer, uint32_t version,
                               uint64_t xxh64, uint64_t offset, uint32_t max_len) {
    dsla_ctl_chunk_t *k = calloc(1, sizeof *k);
    snprintf(k->to, sizeof k->to, "remote1");
    k->fetch = (dsla_proto_layer_fetch_t){layer, version, xxh64, offset, max_len};
    if (dsla_ctl_chunk_check(c, k) == DSLA_OK) dsla_ctl_chunk_read(k);
    return k;
}

static void test_chunks(void **state) {
    (void)state;
    char *dir = versions_dir();
    fake_t *f = calloc(1, sizeof *f);
    dsla_ctl_core_t *c = core_new(f, dir, NULL);
    dsla_ctl_file_t file;
    assert_true(dsla_ctl_core_file(c, 2, 1, &file));
    assert_false(dsla_ctl_core_file(c, 2, 7, &file) || dsla_ctl_core_file(c, 6, 1, &file));
    assert_true(dsla_ctl_core_file(c, 2, 1, &file));
    size_t len = 0;
    char *bytes = dsla_test_read_file(file.path, &len);
    assert_int_equal(len, file.size);

    /* the whole file in 100-byte chunks, equal to its bytes */
    uint64_t offset = 0;
    while (offset < file.size) {
        dsla_ctl_chunk_t *k = fetch(c, 2, 1, file.xxh64, offset, 100);
        ok(k->status);
        assert_int_equal(k->chunk.total_size, file.size);
        assert_memory_equal(k->chunk.bytes, bytes + offset, k->chunk.len);
        offset += k->chunk.len;
        dsla_ctl_core_on_chunk_served(c, k->to, &k->chunk);
        dsla_ctl_chunk_free(&k);
    }
    assert_int_equal(count(f->events, "layer_sent"), 1);

    struct {
        int layer;
        uint32_t version;
        uint64_t xxh64, offset;
        dsla_status_t want;
        const char *says;
    } bad[] = {
        {6, 1, file.xxh64, 0, DSLA_ERR_NOT_FOUND, "is not in the catalogue"},
        {2, 9, file.xxh64, 0, DSLA_ERR_NOT_FOUND, "is not in the catalogue"},
        {2, 1, file.xxh64 ^ 1, 0, DSLA_ERR_INVALID_ARGUMENT, "not the"},
        {2, 1, file.xxh64, file.size + 1, DSLA_ERR_INVALID_ARGUMENT, "past the end"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dsla_ctl_chunk_t *k =
            fetch(c, bad[i].layer, bad[i].version, bad[i].xxh64, bad[i].offset, 100);
        assert_int_equal(k->status, bad[i].want);
        assert_non_null(strstr(k->error, bad[i].says));
        dsla_ctl_chunk_free(&k);
    }
    /* changed since its announce: the first chunk is refused, naming the file */
    bytes[len - 3] ^= 1;
    dsla_test_write_file(file.path, bytes, len);
    dsla_ctl_chunk_t *k = fetch(c, 2, 1, file.xxh64, 0, 100);
    assert_int_equal(k->status, DSLA_ERR_FORMAT);
    assert_non_null(strstr(k->error, "changed since it was announced"));
    dsla_ctl_core_on_fetch_refused(c, k->to, 0, k->error);
    dsla_ctl_chunk_free(&k);
    dsla_admin_text_t t = {0};
    ok(admin(c, "status", &t));
    assert_non_null(strstr(t.data, "fetches refused"));
    assert_non_null(strstr(t.data, "; 1 fetches refused"));
    dsla_admin_text_free(&t);
    free(bytes);
    dsla_ctl_core_destroy(&c);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

/* Commands whose answer depends on the state: the maximum, the drain flag, the policy's fields. */
static void test_admin_against_state(void **state) {
    (void)state;
    char *dir = versions_dir();
    fake_t *f = calloc(1, sizeof *f);
    dsla_ctl_core_t *c = core_new(f, dir, NULL);
    replica_t r = {.name = "serving0", .plan_id = 1};
    report(c, &r, 0, 0);
    dsla_admin_text_t t = {0};
    ok(admin(c, "convert 2", &t));
    assert_non_null(strstr(t.data, "manual policy pinned at 2 DSLA layers"));
    dsla_admin_text_free(&t);
    assert_int_equal(admin(c, "convert 3", &t), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "convert: N 3 would make 5 DSLA layers, above the "
                                              "maximum of 4"));
    assert_int_equal(admin(c, "revert 3", &t), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "revert: N 3 is more than the 2"));
    assert_int_equal(admin(c, "policy set threshold queue_high=4 queue_low=9", &t),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "queue_low 9 must be below queue_high 4"));
    ok(admin(c, "drain", &t));
    assert_int_equal(admin(c, "convert 1", &t), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "draining"));
    dsla_admin_text_free(&t);
    ok(admin(c, "policy get", &t));
    assert_string_equal(t.data, "manual max_ratio=0.5 layers=2\n");
    dsla_admin_text_free(&t);
    dsla_ctl_core_destroy(&c);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

/* The audit trail: a change made through ADMIN leaves an "admin" event with the command's words
 * and its sender as the controller proved it; reads and refused commands leave none. */
static void test_admin_audited(void **state) {
    (void)state;
    char *dir = versions_dir(), db[1024];
    snprintf(db, sizeof db, "%s/controller.db", dir);
    fake_t *f = calloc(1, sizeof *f);
    ok(dsla_ctl_store_open(&f->store, db));
    dsla_ctl_core_t *c = core_new(f, dir, NULL);
    const char *words[] = {"policy", "set", "manual", "layers=1"};
    dsla_admin_cmd_t cmd;
    ok(dsla_admin_parse(words, 4, &cmd));
    snprintf(cmd.who, sizeof cmd.who, "admin key 'alice' (CURVE)");
    dsla_admin_text_t t = {0};
    ok(dsla_ctl_core_admin(c, &cmd, &t));
    assert_int_equal(admin(c, "convert 9", &t), DSLA_ERR_INVALID_ARGUMENT); /* refused: no event */
    ok(admin(c, "policy get", &t));
    ok(admin(c, "drain", &t)); /* sent by nobody the controller knows */
    dsla_admin_text_free(&t);
    dsla_admin_text_t h = {0};
    ok(dsla_ctl_store_each_event(f->store, 50, dsla_admin_history_line, &h));
    assert_non_null(strstr(h.data, "admin          policy set manual layers=1 by admin key 'alice' "
                                   "(CURVE)"));
    assert_non_null(strstr(h.data, "admin          drain on by an unknown sender"));
    assert_null(strstr(h.data, "convert 9"));
    assert_null(strstr(h.data, "policy get"));
    dsla_admin_text_free(&h);
    dsla_ctl_core_destroy(&c);
    dsla_ctl_store_close(&f->store);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

/* With a layer key, versions in the directory without its MAC stay out of the catalogue (an
 * event says why) and a sealed one is catalogued. */
static void test_start_with_layer_key(void **state) {
    (void)state;
    char *dir = versions_dir(); /* four unsealed versions */
    const dsla_layer_key_t key = {{42}};
    dsla_dsla_layer_t *l = NULL;
    ok(dsla_dsla_layer_create(&l, &cfg, 0));
    dsla_layer_version_meta_t meta = {.version = 2, .order = {2, 0, 1, 3}, .n_order = 4};
    char path[1024];
    snprintf(path, sizeof path, "%s/layer-0.safetensors", dir);
    ok(dsla_dsla_layer_save_sealed(l, path, &meta, &key));
    dsla_dsla_layer_destroy(&l);
    fake_t *f = calloc(1, sizeof *f);
    dsla_ctl_core_t *c = NULL;
    dsla_ctl_env_t env = env_of(f);
    ok(dsla_ctl_core_create(&c, dir, &env));
    dsla_ctl_core_set_layer_key(c, &key);
    ok(dsla_ctl_core_start(c, NULL, NULL));
    dsla_ctl_file_t file;
    assert_true(dsla_ctl_core_file(c, 0, 2, &file));
    assert_false(dsla_ctl_core_file(c, 1, 1, &file) || dsla_ctl_core_file(c, 2, 1, &file));
    assert_non_null(strstr(f->events, "layer_refused layer_refused layer_refused start"));
    dsla_ctl_core_destroy(&c);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_rises_then_falls),
        cmocka_unit_test(test_nack_keeps_old_plan),
        cmocka_unit_test(test_nack_retried_after_backoff),
        cmocka_unit_test(test_replica_dies_mid_rollout),
        cmocka_unit_test(test_restart_from_sqlite),
        cmocka_unit_test(test_hostile_announcements_refused),
        cmocka_unit_test(test_silent_replicas_expire),
        cmocka_unit_test(test_restore_refuses_outside),
        cmocka_unit_test(test_corrupt_version_refused),
        cmocka_unit_test(test_chunks),
        cmocka_unit_test(test_admin_against_state),
        cmocka_unit_test(test_admin_audited),
        cmocka_unit_test(test_start_with_layer_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

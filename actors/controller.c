/* The controller actor: policy evaluation per load report, SET_PLAN and its answers, the admin
 * commands of dslactl, and the SQLite state behind them (controller.h). */
#include "actors/controller.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actors/clock.h"
#include "actors/controller_store.h"
#include "actors/layer_catalogue.h"
#include "actors/policy.h"
#include "runtime/core/log.h"

/* Settings keys in the database. */
#define KEY_POLICY "policy"
#define KEY_DRAIN "drain"

typedef struct {
    char name[DSLA_PROTO_NAME_MAX + 1];
    bool alive;
    bool have_report;
    dsla_proto_load_report_t last; /* its latest report; dsla updated by its PLAN_ACKs */
    int target;                    /* DSLA layers the controller chose for it */
    uint64_t last_change_ms;
    uint64_t pending_seq; /* SET_PLAN in flight; 0: none */
    uint64_t pending_since_ms;
    int pending_target;
    int refused_target; /* -1: none; a refused plan is not sent again until the target moves */
    char refusal[DSLA_PROTO_MESSAGE_MAX + 1];
} replica_t;

/* What was announced of the file of a catalogued layer version: replicas fetching it (LAYER_FETCH)
 * get its bytes only while the file still has this xxh64. */
typedef struct {
    bool known;
    int version;
    uint64_t size, xxh64;
} layer_file_t;

/* The distiller that reports to this controller (one per controller in this slice). */
typedef struct {
    char name[DSLA_PROTO_NAME_MAX + 1]; /* "" until one reports */
    bool alive;
    bool have_progress;
    dsla_proto_distill_progress_t progress;
} distiller_t;

struct dsla_controller {
    dsla_actor_t *actor;
    dsla_actor_t *self;
    dsla_ctl_store_t *store;
    dsla_catalogue_t catalogue;
    char layers_dir[DSLA_PROTO_PATH_MAX + 1];
    dsla_policy_config_t policy;
    bool drain;
    uint64_t next_seq;
    int n_replicas;
    replica_t replicas[DSLA_PROTO_REPLICAS_MAX];
    distiller_t distiller;
    layer_file_t files[DSLA_PROTO_LAYERS_MAX]; /* by layer: the catalogued version's file */
    uint64_t chunks_served, bytes_served, fetches_refused;
};

static int64_t wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void event(dsla_controller_t *c, const char *name, const char *fmt, ...) {
    char details[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(details, sizeof details, fmt, ap);
    va_end(ap);
    dsla_log_info("controller: %s: %s", name, details);
    if (dsla_ctl_store_add_event(c->store, wall_ms(), name, details) != DSLA_OK)
        dsla_log_error("%s", dsla_last_error());
}

/* "3@1:0123456789abcdef,1@2:..." for the entries of a plan (versions from the catalogue, ? when
 * a layer's version is not in it). */
static void layers_text(const dsla_controller_t *c, const dsla_proto_dsla_layer_t *dsla, uint32_t n,
                        char *out, size_t cap) {
    size_t len = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < n && len < cap; i++) {
        int version = -1;
        for (int k = 0; k < c->catalogue.n; k++)
            if (c->catalogue.entries[k].layer == dsla[i].layer &&
                c->catalogue.entries[k].checksum == dsla[i].checksum)
                version = c->catalogue.entries[k].version;
        char v[16] = "?";
        if (version >= 0) snprintf(v, sizeof v, "%d", version);
        len += (size_t)snprintf(out + len, cap - len, "%s%d@%s:%016" PRIx64, i ? "," : "",
                                dsla[i].layer, v, dsla[i].checksum);
    }
}

static replica_t *replica_find(dsla_controller_t *c, const char *name, bool create) {
    for (int i = 0; i < c->n_replicas; i++)
        if (strcmp(c->replicas[i].name, name) == 0) return &c->replicas[i];
    if (!create || c->n_replicas == DSLA_PROTO_REPLICAS_MAX) return NULL;
    replica_t *r = &c->replicas[c->n_replicas++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->refused_target = -1;
    return r;
}

/* True when the replica's plan is exactly the first k catalogue entries. */
static bool runs_prefix(const dsla_controller_t *c, const replica_t *r, int k) {
    if ((int)r->last.n_dsla != k) return false;
    for (int i = 0; i < k; i++) {
        bool found = false;
        for (uint32_t j = 0; j < r->last.n_dsla && !found; j++)
            found = r->last.dsla[j].layer == c->catalogue.entries[i].layer &&
                    r->last.dsla[j].checksum == c->catalogue.entries[i].checksum;
        if (!found) return false;
    }
    return true;
}

static void send_plan(dsla_controller_t *c, replica_t *r, int k) {
    dsla_proto_plan_layer_t layers[DSLA_PROTO_LAYERS_MAX];
    for (int i = 0; i < k; i++) {
        const dsla_catalogue_entry_t *e = &c->catalogue.entries[i];
        const layer_file_t *f = &c->files[e->layer];
        const bool known = f->known && f->version == e->version;
        layers[i] = (dsla_proto_plan_layer_t){.layer = e->layer,
                                              .checksum = e->checksum,
                                              .path = e->path,
                                              .version = (uint32_t)e->version,
                                              .size = known ? f->size : 0,
                                              .xxh64 = known ? f->xxh64 : 0};
    }
    dsla_proto_set_plan_t p = {.seq = ++c->next_seq, .n_layers = (uint32_t)k, .layers = layers};
    dsla_proto_buf_t body;
    dsla_status_t st = dsla_proto_set_plan_encode(&p, &body);
    if (st == DSLA_OK)
        st = dsla_actor_send(c->self, r->name, DSLA_MSG_SET_PLAN, p.seq, body.data, body.len);
    dsla_proto_buf_free(&body);
    if (st != DSLA_OK) {
        dsla_log_warn("controller: SET_PLAN to %s: %s", r->name, dsla_last_error());
        return;
    }
    r->pending_seq = p.seq;
    r->pending_since_ms = dsla_actors_now_ms();
    r->pending_target = k;
    event(c, "plan_sent", "%s: %d DSLA layers (SET_PLAN %" PRIu64 ")", r->name, k, p.seq);
}

/* The policy's verdict for one replica, and a SET_PLAN when its plan differs from the target. */
static void evaluate(dsla_controller_t *c, replica_t *r) {
    uint64_t now = dsla_actors_now_ms();
    if (!r->have_report) return;
    if (r->pending_seq && now - r->pending_since_ms < DSLA_CONTROLLER_PENDING_MS) return;
    r->pending_seq = 0;
    dsla_policy_state_t ps = {.current = r->target,
                              .now_ms = now,
                              .last_change_ms = r->last_change_ms,
                              .available = c->catalogue.n};
    char why[512];
    int target = dsla_policy_target(&c->policy, &r->last, &ps, why, sizeof why);
    if (c->drain && target > r->target) target = r->target; /* draining: no new conversions */
    if (target != r->target) {
        event(c, target > r->target ? "convert" : "revert", "%s: %d -> %d DSLA layers (%s)",
              r->name, r->target, target, why);
        r->target = target;
        r->last_change_ms = now;
        r->refused_target = -1;
    }
    if (r->target == r->refused_target || runs_prefix(c, r, r->target)) return;
    send_plan(c, r, r->target);
}

static void evaluate_all(dsla_controller_t *c) {
    for (int i = 0; i < c->n_replicas; i++) {
        c->replicas[i].refused_target = -1; /* an operator's change retries refused plans */
        evaluate(c, &c->replicas[i]);
    }
}

/* ---- replica messages ---- */

static void on_load_report(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    dsla_proto_load_report_t *rep = malloc(sizeof *rep);
    if (!rep) return;
    dsla_status_t st = dsla_proto_load_report_decode(msg->env->body, msg->env->body_len, rep);
    replica_t *r = st == DSLA_OK && msg->from[0] ? replica_find(c, msg->from, true) : NULL;
    if (st != DSLA_OK)
        dsla_actor_reply_error(a, msg, DSLA_CODE_INVALID_ARGUMENT, dsla_last_error());
    else if (!r)
        dsla_actor_reply_error(a, msg, DSLA_CODE_RESOURCE_EXHAUSTED,
                               "controller: a named replica, at most 64 of them, may report");
    if (r) {
        r->last = *rep;
        r->have_report = true;
        r->alive = true;
        evaluate(c, r);
    }
    free(rep);
}

static void record_plan(dsla_controller_t *c, replica_t *r, const dsla_proto_plan_reply_t *p) {
    dsla_ctl_plan_row_t row = {.n_dsla = (int)p->n_dsla, .plan_id = p->plan_id};
    snprintf(row.replica, sizeof row.replica, "%s", r->name);
    layers_text(c, p->dsla, p->n_dsla, row.layers, sizeof row.layers);
    if (dsla_ctl_store_put_plan(c->store, &row) != DSLA_OK) dsla_log_error("%s", dsla_last_error());
}

static void on_plan_reply(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    dsla_controller_t *c = user;
    replica_t *r = replica_find(c, msg->from, false);
    dsla_proto_plan_reply_t *p = malloc(sizeof *p);
    if (!p) return;
    if (dsla_proto_plan_reply_decode(msg->env->body, msg->env->body_len, p) != DSLA_OK) {
        dsla_log_warn("controller: plan reply from %s: %s", msg->from, dsla_last_error());
    } else if (r && p->seq == r->pending_seq) {
        bool ack = msg->env->type == DSLA_MSG_PLAN_ACK;
        r->pending_seq = 0;
        r->last.plan_id = p->plan_id;
        r->last.n_dsla = p->n_dsla;
        memcpy(r->last.dsla, p->dsla, p->n_dsla * sizeof p->dsla[0]);
        char layers[2048];
        layers_text(c, p->dsla, p->n_dsla, layers, sizeof layers);
        if (ack) {
            r->refusal[0] = '\0';
            event(c, "plan_adopted", "%s: plan %" PRIu64 ", %u DSLA layers [%s]", r->name,
                  p->plan_id, p->n_dsla, layers);
        } else {
            r->refused_target = r->pending_target;
            snprintf(r->refusal, sizeof r->refusal, "%s", p->reason);
            event(c, "plan_refused", "%s: %s; keeps plan %" PRIu64 ", %u DSLA layers [%s]", r->name,
                  p->reason, p->plan_id, p->n_dsla, layers);
        }
        record_plan(c, r, p);
    }
    free(p);
}

static void on_peer(dsla_actor_t *a, const char *peer, bool alive, void *user) {
    (void)a;
    dsla_controller_t *c = user;
    if (c->distiller.name[0] && strcmp(peer, c->distiller.name) == 0) {
        if (c->distiller.alive != alive)
            event(c, alive ? "distiller_alive" : "distiller_dead", "%s", peer);
        c->distiller.alive = alive;
        return;
    }
    replica_t *r = replica_find(c, peer, false);
    if (!r || r->alive == alive) return;
    r->alive = alive;
    event(c, alive ? "replica_alive" : "replica_dead", "%s", peer);
}

/* ---- distiller messages ---- */

/* The verify phase of an announced version (DESIGN.md section 7): the file is there, of the
 * announced size and xxh64, and its header names the announced layer, version and checksum. */
static dsla_status_t verify_ready(const dsla_proto_layer_ready_t *r, dsla_catalogue_entry_t *e,
                                  int *order, int *n_order) {
    uint64_t size = 0, xxh = 0;
    DSLA_TRY(dsla_catalogue_file_digest(r->path, &size, &xxh));
    if (size != r->size || xxh != r->xxh64)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: %" PRIu64 " bytes with xxh64 %016" PRIx64 ", announced %" PRIu64
                          " bytes with xxh64 %016" PRIx64,
                          r->path, size, xxh, r->size, r->xxh64);
    DSLA_TRY(dsla_catalogue_read(r->path, e, order, n_order));
    if (e->layer != r->layer || e->version != (int)r->version || e->checksum != r->checksum)
        return dsla_error(DSLA_ERR_FORMAT,
                          "%s: holds layer %d version %d checksum %016" PRIx64
                          ", announced layer %d version %u checksum %016" PRIx64,
                          r->path, e->layer, e->version, e->checksum, r->layer, r->version,
                          r->checksum);
    return DSLA_OK;
}

/* Verified versions join the catalogue and the database; every replica is then evaluated again,
 * since a policy may now convert further. Versions the catalogue holds already change nothing. */
static void on_layer_ready(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    dsla_proto_layer_ready_t *r = malloc(sizeof *r);
    int *order = malloc(sizeof(int) * DSLA_PROTO_LAYERS_MAX);
    dsla_status_t st = r && order
                           ? dsla_proto_layer_ready_decode(msg->env->body, msg->env->body_len, r)
                           : dsla_error(DSLA_ERR_OUT_OF_MEMORY, "controller: out of memory");
    if (st != DSLA_OK) {
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
        goto done;
    }
    dsla_catalogue_entry_t e;
    int n_order = 0;
    if (verify_ready(r, &e, order, &n_order) != DSLA_OK) {
        event(c, "layer_refused", "%s: layer %d version %u: %s", msg->from, r->layer, r->version,
              dsla_last_error());
        goto done;
    }
    if (dsla_catalogue_add(&c->catalogue, &e, order, n_order) == DSLA_CATALOGUE_KEPT) goto done;
    c->files[e.layer] = (layer_file_t){true, e.version, r->size, r->xxh64};
    dsla_ctl_layer_row_t row = {.layer = e.layer,
                                .version = e.version,
                                .checksum = e.checksum,
                                .size = r->size,
                                .xxh64 = r->xxh64};
    snprintf(row.path, sizeof row.path, "%s", e.path);
    if (dsla_ctl_store_put_layer(c->store, &row) != DSLA_OK)
        dsla_log_error("%s", dsla_last_error());
    event(c, "layer_ready",
          "%s: layer %d version %u (%u of %u in the order): %s, %" PRIu64
          " bytes, xxh64 %016" PRIx64 "; held-out layer MSE %.5g, hybrid ppl %.4f",
          msg->from, r->layer, r->version, r->position + 1, r->n_order, r->path, r->size, r->xxh64,
          r->eval_mse, r->eval_ppl);
    evaluate_all(c);
done:
    free(order);
    free(r);
}

static void on_distill_progress(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    dsla_proto_distill_progress_t p;
    dsla_status_t st = dsla_proto_distill_progress_decode(msg->env->body, msg->env->body_len, &p);
    if (st != DSLA_OK || !msg->from[0]) {
        dsla_actor_reply_error(a, msg, DSLA_CODE_INVALID_ARGUMENT,
                               st != DSLA_OK ? dsla_last_error()
                                             : "controller: a distiller must be a named peer");
        return;
    }
    distiller_t *d = &c->distiller;
    if (strcmp(d->name, msg->from) != 0) {
        snprintf(d->name, sizeof d->name, "%s", msg->from);
        d->have_progress = false;
    }
    d->alive = true;
    if (!d->have_progress || d->progress.state != p.state)
        event(c, "distill", "%s: %s, %u/%u layers done: %s", d->name,
              dsla_proto_distill_state_name(p.state), p.layers_done, p.layers_total, p.message);
    d->progress = p;
    d->have_progress = true;
}

/* ---- chunked layer transfer ---- */

/* Reads the range f asks for into buf (DSLA_PROTO_CHUNK_MAX bytes) and describes it in out. The
 * version must be catalogued with the xxh64 asked for; a transfer's first chunk (offset 0) also
 * checks the whole file against it, so that a file changed since its announce is refused before
 * a replica writes a byte of it (later changes fail the replica's own xxh64 check). */
static dsla_status_t read_chunk(dsla_controller_t *c, const dsla_proto_layer_fetch_t *f, char *buf,
                                dsla_proto_layer_chunk_t *out) {
    const layer_file_t *lf = &c->files[f->layer];
    const dsla_catalogue_entry_t *e = NULL;
    for (int i = 0; i < c->catalogue.n && !e; i++)
        if (c->catalogue.entries[i].layer == f->layer &&
            c->catalogue.entries[i].version == (int)f->version)
            e = &c->catalogue.entries[i];
    if (!e || !lf->known || lf->version != (int)f->version)
        return dsla_error(DSLA_ERR_NOT_FOUND,
                          "LAYER_FETCH: layer %d version %u is not in the catalogue", f->layer,
                          f->version);
    if (lf->xxh64 != f->xxh64)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "LAYER_FETCH: layer %d version %u has xxh64 %016" PRIx64
                          ", not the %016" PRIx64 " asked for",
                          f->layer, f->version, lf->xxh64, f->xxh64);
    if (f->offset > lf->size)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "LAYER_FETCH: offset %" PRIu64 " is past the end of %s (%" PRIu64
                          " bytes)",
                          f->offset, e->path, lf->size);
    if (f->offset == 0) {
        uint64_t size = 0, xxh = 0;
        DSLA_TRY(dsla_catalogue_file_digest(e->path, &size, &xxh));
        if (size != lf->size || xxh != lf->xxh64)
            return dsla_error(DSLA_ERR_FORMAT,
                              "LAYER_FETCH: %s changed since it was announced: %" PRIu64
                              " bytes with xxh64 %016" PRIx64 ", announced %" PRIu64
                              " bytes with xxh64 %016" PRIx64,
                              e->path, size, xxh, lf->size, lf->xxh64);
    }
    uint64_t left = lf->size - f->offset;
    size_t n = left < f->max_len ? (size_t)left : f->max_len;
    FILE *fp = fopen(e->path, "rb");
    bool ok = fp && fseeko(fp, (off_t)f->offset, SEEK_SET) == 0 && fread(buf, 1, n, fp) == n;
    if (fp) fclose(fp);
    if (!ok)
        return dsla_error(DSLA_ERR_IO, "LAYER_FETCH: cannot read %zu bytes at %" PRIu64 " of %s", n,
                          f->offset, e->path);
    *out = (dsla_proto_layer_chunk_t){f->layer, f->version, f->xxh64, f->offset, lf->size, buf, n};
    return DSLA_OK;
}

static void on_layer_fetch(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    dsla_proto_layer_fetch_t f = {0};
    dsla_proto_layer_chunk_t chunk = {0};
    char *buf = malloc(DSLA_PROTO_CHUNK_MAX);
    dsla_proto_buf_t body = {0};
    dsla_status_t st = buf ? dsla_proto_layer_fetch_decode(msg->env->body, msg->env->body_len, &f)
                           : dsla_error(DSLA_ERR_OUT_OF_MEMORY, "controller: out of memory");
    if (st == DSLA_OK) st = read_chunk(c, &f, buf, &chunk);
    if (st == DSLA_OK) st = dsla_proto_layer_chunk_encode(&chunk, &body);
    if (st == DSLA_OK) st = dsla_actor_reply(a, msg, DSLA_MSG_LAYER_CHUNK, body.data, body.len);
    if (st == DSLA_OK) {
        c->chunks_served++;
        c->bytes_served += chunk.len;
        if (chunk.offset + chunk.len == chunk.total_size)
            event(c, "layer_sent",
                  "%s: layer %d version %u, %" PRIu64 " bytes (%" PRIu64 " chunks served in all)",
                  msg->from, chunk.layer, chunk.version, chunk.total_size, c->chunks_served);
    } else {
        c->fetches_refused++;
        char why[DSLA_PROTO_MESSAGE_MAX + 1];
        snprintf(why, sizeof why, "%s", dsla_last_error());
        if (f.offset == 0) event(c, "fetch_refused", "%s: %s", msg->from, why);
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), why);
    }
    dsla_proto_buf_free(&body);
    free(buf);
}

/* Records the file of every catalogued version as it is now: the announce of versions found by
 * the start-up scan or kept from before a restart. Reads each file once, at start-up. */
static dsla_status_t digest_catalogue(dsla_controller_t *c) {
    for (int i = 0; i < c->catalogue.n; i++) {
        const dsla_catalogue_entry_t *e = &c->catalogue.entries[i];
        layer_file_t *f = &c->files[e->layer];
        DSLA_TRY(dsla_catalogue_file_digest(e->path, &f->size, &f->xxh64));
        f->version = e->version;
        f->known = true;
    }
    return DSLA_OK;
}

/* ---- admin ---- */

/* A growing text reply. */
typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} text_t;

static void text_add(text_t *t, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        size_t room = t->cap - t->len;
        va_start(ap, fmt);
        int n = t->data ? vsnprintf(t->data + t->len, room, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && (size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (n >= 0 && cap < t->len + (size_t)n + 1)
            cap *= 2;
        char *d = cap <= DSLA_PROTO_ADMIN_TEXT_MAX ? realloc(t->data, cap) : NULL;
        if (!d) {
            t->failed = true;
            return;
        }
        t->data = d;
        t->cap = cap;
    }
}

static int max_layers(const dsla_controller_t *c) {
    int num_layers = 0;
    for (int i = 0; i < c->n_replicas; i++)
        if (c->replicas[i].have_report) num_layers = (int)c->replicas[i].last.num_layers;
    return num_layers ? dsla_policy_max_layers(&c->policy, num_layers, c->catalogue.n)
                      : c->catalogue.n;
}

static void status_text(const dsla_controller_t *c, text_t *t) {
    char policy[512];
    dsla_policy_format(&c->policy, policy, sizeof policy);
    text_add(t, "policy: %s\ndrain: %s\n", policy, c->drain ? "on" : "off");
    text_add(t, "catalogue: %d layer versions in %s, conversion order", c->catalogue.n,
             c->layers_dir);
    for (int i = 0; i < c->catalogue.n; i++)
        text_add(t, "%s%d@%d", i ? "," : " ", c->catalogue.entries[i].layer,
                 c->catalogue.entries[i].version);
    text_add(t, "\n");
    const distiller_t *d = &c->distiller;
    if (d->have_progress) {
        const dsla_proto_distill_progress_t *p = &d->progress;
        text_add(t, "distiller %s %s: %s, %u/%u layers done", d->name, d->alive ? "alive" : "dead",
                 dsla_proto_distill_state_name(p->state), p->layers_done, p->layers_total);
        if (p->state == DSLA_PROTO_DISTILL_TRAINING && p->layer >= 0)
            text_add(t, "; layer %d step %u/%u, loss %.5f, %.0f tokens/s, %.0f s left", p->layer,
                     p->step, p->steps, p->loss, p->tokens_per_s, p->seconds_left);
        text_add(t, "\n  %s\n", p->message);
        text_add(t, "  prompt samples: %u received, %u held (%u tokens), %u used (%u tokens)\n",
                 p->samples_received, p->samples_held, p->sample_tokens_held, p->samples_used,
                 p->sample_tokens_used);
    }
    text_add(
        t, "transfers: %" PRIu64 " chunks, %" PRIu64 " bytes served; %" PRIu64 " fetches refused\n",
        c->chunks_served, c->bytes_served, c->fetches_refused);
    text_add(t, "replicas: %d\n", c->n_replicas);
    for (int i = 0; i < c->n_replicas; i++) {
        const replica_t *r = &c->replicas[i];
        const dsla_proto_load_report_t *l = &r->last;
        char layers[2048];
        layers_text(c, l->dsla, l->n_dsla, layers, sizeof layers);
        text_add(t, "replica %s %s: plan %" PRIu64 " runs %u DSLA layers [%s]; target %d%s\n",
                 r->name, r->alive ? "alive" : "dead", l->plan_id, l->n_dsla, layers, r->target,
                 r->pending_seq ? ", SET_PLAN pending" : "");
        if (r->have_report)
            text_add(t,
                     "  load: queue %u, running %u, waiting tokens %" PRIu64
                     ", longest wait %u ms, KV blocks %u/%u, state slots %u/%u, TTFT p90 %.1f "
                     "ms, TPOT p90 %.2f ms, %.1f tokens/s\n",
                     l->queue_length, l->running, l->waiting_tokens, l->oldest_wait_ms, l->kv_used,
                     l->kv_total, l->slots_used, l->slots_total, l->ttft_p90_ms, l->tpot_p90_ms,
                     l->tokens_per_s);
        if (r->refusal[0]) text_add(t, "  last refusal: %s\n", r->refusal);
    }
}

static void history_line(void *user, int64_t id, int64_t time_ms, const char *event,
                         const char *details) {
    time_t secs = (time_t)(time_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    text_add(user, "%6" PRId64 "  %s.%03dZ  %-14s %s\n", id, when, (int)(time_ms % 1000), event,
             details);
}

/* Parses a whole number in [lo, hi] for field, or fails naming both. */
static dsla_status_t parse_count(const char *what, const char *field, const char *s, long lo,
                                 long hi, long *out) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %s '%s' is not a whole number", what,
                          field, s);
    if (v < lo || v > hi)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %s %ld is outside [%ld, %ld]", what,
                          field, v, lo, hi);
    *out = v;
    return DSLA_OK;
}

static dsla_status_t save_policy(dsla_controller_t *c, const dsla_policy_config_t *p,
                                 const char *origin) {
    char text[512];
    dsla_policy_format(p, text, sizeof text);
    DSLA_TRY(dsla_ctl_store_set(c->store, KEY_POLICY, text));
    c->policy = *p;
    event(c, "policy", "%s (%s)", text, origin);
    return DSLA_OK;
}

/* convert N / revert N: pins the manual policy at the layers now chosen, plus or minus N. */
static dsla_status_t admin_shift(dsla_controller_t *c, const dsla_proto_admin_t *a, int sign,
                                 text_t *t) {
    const char *what = sign > 0 ? "convert" : "revert";
    if (a->n_args != 2)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: give the number of layers, as in '%s 2'",
                          what, what);
    if (sign > 0 && c->drain)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "convert: the controller is draining (no new conversions); run "
                          "'dslactl drain off' first");
    long n = 0;
    DSLA_TRY(parse_count(what, "N", a->args[1], 1, DSLA_PROTO_LAYERS_MAX, &n));
    int base = c->policy.kind == DSLA_POLICY_MANUAL ? (int)c->policy.layers : 0;
    if (c->policy.kind != DSLA_POLICY_MANUAL)
        for (int i = 0; i < c->n_replicas; i++)
            if (c->replicas[i].target > base) base = c->replicas[i].target;
    int want = base + sign * (int)n, max = max_layers(c);
    if (want > max)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "convert: N %ld would make %d DSLA layers, above the maximum of %d "
                          "(max_ratio %g, %d layer versions available)",
                          n, want, max, c->policy.max_ratio, c->catalogue.n);
    if (want < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "revert: N %ld is more than the %d DSLA layers now chosen", n, base);
    dsla_policy_config_t p = dsla_policy_default(DSLA_POLICY_MANUAL);
    p.max_ratio = c->policy.max_ratio;
    p.layers = (uint32_t)want;
    DSLA_TRY(save_policy(c, &p, what));
    text_add(t,
             "manual policy pinned at %d DSLA layers; replicas adopt it at their next step "
             "(see dslactl status)\n",
             want);
    return DSLA_OK;
}

static dsla_status_t admin_policy(dsla_controller_t *c, const dsla_proto_admin_t *a, text_t *t) {
    if (a->n_args >= 2 && strcmp(a->args[1], "get") == 0 && a->n_args == 2) {
        char text[512];
        dsla_policy_format(&c->policy, text, sizeof text);
        text_add(t, "%s\n", text);
        return DSLA_OK;
    }
    if (a->n_args < 3 || strcmp(a->args[1], "set") != 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "policy: use 'policy get' or 'policy set threshold|slo|manual "
                          "[key=value]...'");
    const char *words[DSLA_PROTO_ADMIN_ARGS_MAX];
    for (uint32_t i = 2; i < a->n_args; i++)
        words[i - 2] = a->args[i];
    dsla_policy_config_t p;
    DSLA_TRY(dsla_policy_parse(&c->policy, words, (int)a->n_args - 2, &p));
    DSLA_TRY(save_policy(c, &p, "dslactl"));
    char text[512];
    dsla_policy_format(&p, text, sizeof text);
    text_add(t, "%s\n", text);
    return DSLA_OK;
}

static dsla_status_t admin_run(dsla_controller_t *c, const dsla_proto_admin_t *a, text_t *t) {
    const char *cmd = a->args[0];
    if (strcmp(cmd, "status") == 0 && a->n_args == 1) {
        status_text(c, t);
        return DSLA_OK;
    }
    if (strcmp(cmd, "history") == 0 && a->n_args <= 2) {
        long limit = 20;
        if (a->n_args == 2)
            DSLA_TRY(parse_count("history", "limit", a->args[1], 1, DSLA_CONTROLLER_HISTORY_MAX,
                                 &limit));
        return dsla_ctl_store_each_event(c->store, (int)limit, history_line, t);
    }
    if (strcmp(cmd, "drain") == 0 && a->n_args <= 2) {
        bool on = a->n_args == 1 || strcmp(a->args[1], "on") == 0;
        if (a->n_args == 2 && !on && strcmp(a->args[1], "off") != 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "drain: '%s' is neither on nor off",
                              a->args[1]);
        DSLA_TRY(dsla_ctl_store_set(c->store, KEY_DRAIN, on ? "1" : "0"));
        c->drain = on;
        event(c, "drain", "%s", on ? "on: no new conversions" : "off");
        text_add(t, "drain %s\n", on ? "on: no new conversions; reverts go on" : "off");
        return DSLA_OK;
    }
    if (strcmp(cmd, "policy") == 0) return admin_policy(c, a, t);
    if (strcmp(cmd, "convert") == 0) return admin_shift(c, a, +1, t);
    if (strcmp(cmd, "revert") == 0) return admin_shift(c, a, -1, t);
    return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                      "'%s' with %u words is not a command; use status, policy get, policy set, "
                      "convert N, revert N, history [N], drain [on|off]",
                      cmd, a->n_args - 1);
}

static void on_admin(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    dsla_controller_t *c = user;
    dsla_proto_admin_t *cmd = malloc(sizeof *cmd);
    text_t t = {0};
    dsla_status_t st = cmd ? dsla_proto_admin_decode(msg->env->body, msg->env->body_len, cmd)
                           : dsla_error(DSLA_ERR_OUT_OF_MEMORY, "controller: out of memory");
    if (st == DSLA_OK) st = admin_run(c, cmd, &t);
    if (st == DSLA_OK && t.failed)
        st = dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "controller: the reply exceeds %u bytes",
                        DSLA_PROTO_ADMIN_TEXT_MAX);
    if (st != DSLA_OK) {
        dsla_actor_reply_error(a, msg, dsla_proto_code_from_status(st), dsla_last_error());
    } else {
        dsla_proto_admin_reply_t reply = {.text = t.data, .text_len = t.len};
        dsla_proto_buf_t body;
        if (dsla_proto_admin_reply_encode(&reply, &body) == DSLA_OK)
            dsla_actor_reply(a, msg, DSLA_MSG_ADMIN_REPLY, body.data, body.len);
        dsla_proto_buf_free(&body);
        if (strcmp(cmd->args[0], "status") && strcmp(cmd->args[0], "history")) evaluate_all(c);
    }
    free(t.data);
    free(cmd);
}

/* ---- life cycle ---- */

static void on_start(dsla_actor_t *a, void *user) {
    dsla_controller_t *c = user;
    c->self = a;
}

static void restore_plan(void *user, const dsla_ctl_plan_row_t *row) {
    dsla_controller_t *c = user;
    replica_t *r = replica_find(c, row->replica, true);
    if (r) r->target = row->n_dsla;
}

/* A version announced before a restart, where its file still holds what was announced. */
static void restore_layer(void *user, const dsla_ctl_layer_row_t *row) {
    dsla_controller_t *c = user;
    dsla_catalogue_entry_t e;
    int order[DSLA_PROTO_LAYERS_MAX], n_order = 0;
    if (dsla_catalogue_read(row->path, &e, order, &n_order) != DSLA_OK ||
        e.checksum != row->checksum) {
        dsla_log_warn("controller: layer version %s is gone or changed; not catalogued", row->path);
        return;
    }
    dsla_catalogue_add(&c->catalogue, &e, order, n_order);
}

/* Policy and drain flag from the database, then --policy over them; the replicas' last targets and
 * the layer versions announced to it. */
static dsla_status_t restore(dsla_controller_t *c, const dsla_controller_config_t *cfg) {
    char text[512];
    bool found = false;
    c->policy = dsla_policy_default(DSLA_POLICY_THRESHOLD);
    DSLA_TRY(dsla_ctl_store_get(c->store, KEY_POLICY, text, sizeof text, &found));
    if (found && dsla_policy_parse_line(NULL, text, &c->policy) != DSLA_OK)
        dsla_log_warn("controller: stored policy '%s' unreadable (%s); using the defaults", text,
                      dsla_last_error());
    DSLA_TRY(dsla_ctl_store_get(c->store, KEY_DRAIN, text, sizeof text, &found));
    c->drain = found && strcmp(text, "1") == 0;
    if (cfg->policy) {
        dsla_policy_config_t p;
        DSLA_TRY(dsla_policy_parse_line(NULL, cfg->policy, &p));
        DSLA_TRY(save_policy(c, &p, "--policy"));
    }
    DSLA_TRY(dsla_ctl_store_each_layer(c->store, restore_layer, c));
    return dsla_ctl_store_each_plan(c->store, restore_plan, c);
}

dsla_status_t dsla_controller_create(dsla_controller_t **out, const dsla_controller_config_t *cfg) {
    *out = NULL;
    if (!cfg->layers_dir || !cfg->db_path)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "controller: needs a layer version directory and a database path");
    dsla_controller_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "controller: out of memory");
    snprintf(c->layers_dir, sizeof c->layers_dir, "%s", cfg->layers_dir);
    dsla_status_t st = dsla_catalogue_scan(&c->catalogue, cfg->layers_dir);
    if (st == DSLA_OK) st = dsla_ctl_store_open(&c->store, cfg->db_path);
    if (st == DSLA_OK) st = restore(c, cfg);
    if (st == DSLA_OK) st = digest_catalogue(c);
    if (st == DSLA_OK) event(c, "start", "%d layer versions in %s", c->catalogue.n, c->layers_dir);
    static const dsla_actor_handler_t handlers[] = {
        {DSLA_MSG_LOAD_REPORT, on_load_report}, {DSLA_MSG_PLAN_ACK, on_plan_reply},
        {DSLA_MSG_PLAN_NACK, on_plan_reply},    {DSLA_MSG_ADMIN, on_admin},
        {DSLA_MSG_LAYER_READY, on_layer_ready}, {DSLA_MSG_DISTILL_PROGRESS, on_distill_progress},
        {DSLA_MSG_LAYER_FETCH, on_layer_fetch}};
    dsla_actor_def_t def = {
        .name = cfg->name ? cfg->name : "controller",
        .ctx = cfg->ctx,
        .bind = {cfg->bind[0], cfg->bind[1]},
        .handlers = handlers,
        .n_handlers = sizeof handlers / sizeof handlers[0],
        .on_start = on_start,
        .on_peer = on_peer,
        .user = c,
        .heartbeat_ms = cfg->heartbeat_ms,
    };
    if (st == DSLA_OK) st = dsla_actor_create(&c->actor, &def);
    if (st != DSLA_OK) {
        dsla_controller_destroy(&c);
        return st;
    }
    *out = c;
    return DSLA_OK;
}

void dsla_controller_destroy(dsla_controller_t **c) {
    if (!c || !*c) return;
    dsla_actor_destroy(&(*c)->actor);
    dsla_ctl_store_close(&(*c)->store);
    free(*c);
    *c = NULL;
}

const char *dsla_controller_endpoint(const dsla_controller_t *c, int i) {
    return dsla_actor_endpoint(c->actor, i);
}

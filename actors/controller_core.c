/* The controller's state machine: replicas, policy, plans, catalogue, admin (controller_core.h). */
#include "actors/controller_core.h"

#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/log.h"
#include "runtime/core/secret.h"

/* The domain's limits are the wire's: a catalogue fits one plan message, its paths one field. */
_Static_assert(DSLA_CATALOGUE_LAYERS_MAX == DSLA_PROTO_LAYERS_MAX, "catalogue and plan sizes");
_Static_assert(DSLA_CATALOGUE_PATH_MAX == DSLA_PROTO_PATH_MAX, "catalogue and plan paths");
_Static_assert(DSLA_POLICY_LAYERS_MAX == DSLA_PROTO_LAYERS_MAX, "policy and plan sizes");

/* Settings keys in the database. */
#define KEY_POLICY "policy"
#define KEY_DRAIN "drain"

/* The announced file of the catalogued version of one layer. */
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

struct dsla_ctl_core {
    dsla_ctl_env_t env;
    dsla_catalogue_t catalogue;
    char layers_dir[DSLA_CATALOGUE_PATH_MAX + 1];
    dsla_policy_config_t policy;
    bool drain;
    uint64_t next_seq;
    int n_replicas;
    dsla_ctl_replica_t replicas[DSLA_PROTO_REPLICAS_MAX];
    distiller_t distiller;
    layer_file_t files[DSLA_CATALOGUE_LAYERS_MAX]; /* by layer */
    bool has_layer_key;                            /* catalogued versions must carry its MAC */
    dsla_layer_key_t layer_key;
    uint64_t chunks_served, bytes_served, fetches_refused;
    dsla_log_limit_t send_warn; /* a replica gone from the network fails every report's SET_PLAN */
};

static uint64_t now_ms(const dsla_ctl_core_t *c) {
    return c->env.now_ms(c->env.user);
}

static void persist(dsla_ctl_core_t *c, const dsla_ctl_write_t *w) {
    c->env.persist(c->env.user, w);
}

static void event(dsla_ctl_core_t *c, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void event(dsla_ctl_core_t *c, const char *name, const char *fmt, ...) {
    dsla_ctl_write_t *w = calloc(1, sizeof *w);
    if (!w) {
        dsla_log_error("controller: out of memory recording event %s", name);
        return;
    }
    w->kind = DSLA_CTL_WRITE_EVENT;
    w->event.time_ms = c->env.wall_ms(c->env.user);
    snprintf(w->event.name, sizeof w->event.name, "%s", name);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->event.details, sizeof w->event.details, fmt, ap);
    va_end(ap);
    dsla_log_info("controller: %s: %s", name, w->event.details);
    persist(c, w);
    free(w);
}

static void persist_setting(dsla_ctl_core_t *c, const char *key, const char *value) {
    dsla_ctl_write_t w = {.kind = DSLA_CTL_WRITE_SETTING};
    snprintf(w.setting.key, sizeof w.setting.key, "%s", key);
    snprintf(w.setting.value, sizeof w.setting.value, "%s", value);
    persist(c, &w);
}

/* "3@1:0123456789abcdef,1@2:..." for the entries of a plan (versions from the catalogue, ? when
 * a layer's version is not in it). */
static void layers_text(const dsla_ctl_core_t *c, const dsla_proto_dsla_layer_t *dsla, uint32_t n,
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

static dsla_ctl_replica_t *replica_find(dsla_ctl_core_t *c, const char *name, bool create) {
    for (int i = 0; i < c->n_replicas; i++)
        if (strcmp(c->replicas[i].name, name) == 0) return &c->replicas[i];
    if (!create || c->n_replicas == DSLA_PROTO_REPLICAS_MAX) return NULL;
    dsla_ctl_replica_t *r = &c->replicas[c->n_replicas++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->refused_target = -1;
    return r;
}

/* True when the replica's plan is exactly the first k catalogue entries. */
static bool runs_prefix(const dsla_ctl_core_t *c, const dsla_ctl_replica_t *r, int k) {
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

static void send_plan(dsla_ctl_core_t *c, dsla_ctl_replica_t *r, int k) {
    dsla_proto_plan_layer_t *layers = calloc((size_t)k + 1, sizeof *layers);
    if (!layers) {
        dsla_log_error("controller: SET_PLAN to %s: out of memory", r->name);
        return;
    }
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
    dsla_status_t st = c->env.send(c->env.user, r->name, DSLA_MSG_SET_PLAN, p.seq, &p);
    free(layers);
    if (st != DSLA_OK) {
        DSLA_LOG_LIMITED(&c->send_warn, DSLA_LOG_WARN, "controller: SET_PLAN to %s: %s", r->name,
                         dsla_last_error());
        return;
    }
    r->pending_seq = p.seq;
    r->pending_since_ms = now_ms(c);
    r->pending_target = k;
    event(c, "plan_sent", "%s: %d DSLA layers (SET_PLAN %" PRIu64 ")", r->name, k, p.seq);
}

/* KV blocks and state slots share one arena (runtime/serve/backend.h: slots_total is the arena's
 * blocks over a slot's), so the two fractions add up to the arena's. */
static double memory_used(const dsla_proto_load_report_t *r) {
    double used = 0;
    if (r->kv_total) used += (double)r->kv_used / r->kv_total;
    if (r->slots_total) used += (double)r->slots_used / r->slots_total;
    return used < 1 ? used : 1;
}

static dsla_policy_load_t policy_load(const dsla_proto_load_report_t *r) {
    return (dsla_policy_load_t){.num_layers = r->num_layers,
                                .queue_length = r->queue_length,
                                .oldest_wait_ms = r->oldest_wait_ms,
                                .ttft_p90_ms = r->ttft_p90_ms,
                                .tpot_p90_ms = r->tpot_p90_ms,
                                .memory_used = memory_used(r)};
}

/* The policy's verdict for one replica, and a SET_PLAN when its plan differs from the target. */
static void evaluate(dsla_ctl_core_t *c, dsla_ctl_replica_t *r) {
    uint64_t now = now_ms(c);
    if (!r->have_report || !r->alive) return;
    if (r->pending_seq && now - r->pending_since_ms < DSLA_CONTROLLER_PENDING_MS) return;
    r->pending_seq = 0;
    dsla_policy_state_t ps = {.current = r->target,
                              .now_ms = now,
                              .last_change_ms = r->last_change_ms,
                              .available = c->catalogue.n};
    dsla_policy_load_t load = policy_load(&r->last);
    char why[512];
    int target = dsla_policy_target(&c->policy, &load, &ps, why, sizeof why);
    if (c->drain && target > r->target) target = r->target; /* draining: no new conversions */
    if (target != r->target) {
        event(c, target > r->target ? "convert" : "revert", "%s: %d -> %d DSLA layers (%s)",
              r->name, r->target, target, why);
        r->target = target;
        r->last_change_ms = now;
        r->refused_target = -1;
        r->refusals = 0;
    }
    if (runs_prefix(c, r, r->target)) return;
    if (r->target == r->refused_target) {
        const int doublings = r->refusals - 1 < DSLA_CONTROLLER_RETRY_DOUBLINGS
                                  ? r->refusals - 1
                                  : DSLA_CONTROLLER_RETRY_DOUBLINGS;
        const uint64_t wait = (uint64_t)DSLA_CONTROLLER_RETRY_MS << (doublings > 0 ? doublings : 0);
        if (now - r->refused_at_ms < wait) return;
        event(c, "plan_retry", "%s: %d DSLA layers again, %" PRIu64 " ms after refusal %d: %s",
              r->name, r->target, now - r->refused_at_ms, r->refusals, r->refusal);
    }
    send_plan(c, r, r->target);
}

static void evaluate_all(dsla_ctl_core_t *c) {
    for (int i = 0; i < c->n_replicas; i++) {
        c->replicas[i].refused_target = -1; /* an operator's change retries refused plans */
        c->replicas[i].refusals = 0;
        evaluate(c, &c->replicas[i]);
    }
}

/* ---- replica messages ---- */

static void set_alive(dsla_ctl_core_t *c, dsla_ctl_replica_t *r, bool alive) {
    if (r->alive == alive) return;
    r->alive = alive;
    if (!alive) r->dead_since_ms = now_ms(c);
    if (!alive && r->pending_seq) {
        /* its answer, if it ever comes, is ignored; its next report says what it runs */
        event(c, "replica_dead", "%s; SET_PLAN %" PRIu64 " (%d DSLA layers) given up", r->name,
              r->pending_seq, r->pending_target);
        r->pending_seq = 0;
        return;
    }
    event(c, alive ? "replica_alive" : "replica_dead", "%s", r->name);
}

dsla_status_t dsla_ctl_core_on_load_report(dsla_ctl_core_t *c, const char *from,
                                           const dsla_proto_load_report_t *rep, bool heard) {
    dsla_ctl_replica_t *r = from[0] ? replica_find(c, from, true) : NULL;
    if (!r)
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                          "controller: a named replica, at most %d of them, may report",
                          DSLA_PROTO_REPLICAS_MAX);
    r->last = *rep;
    r->have_report = true;
    r->last_report_ms = now_ms(c);
    /* The report itself is no proof of life, only the mailbox's verdict is: a replica revived by
     * a report its mailbox no longer watched would never be reported dead again. */
    set_alive(c, r, heard);
    evaluate(c, r);
    return DSLA_OK;
}

static void record_plan(dsla_ctl_core_t *c, const dsla_ctl_replica_t *r,
                        const dsla_proto_plan_reply_t *p) {
    dsla_ctl_write_t *w = calloc(1, sizeof *w);
    if (!w) {
        dsla_log_error("controller: out of memory recording the plan of %s", r->name);
        return;
    }
    w->kind = DSLA_CTL_WRITE_PLAN;
    w->plan.n_dsla = (int)p->n_dsla;
    w->plan.plan_id = p->plan_id;
    snprintf(w->plan.replica, sizeof w->plan.replica, "%s", r->name);
    layers_text(c, p->dsla, p->n_dsla, w->plan.layers, sizeof w->plan.layers);
    persist(c, w);
    free(w);
}

void dsla_ctl_core_on_plan_reply(dsla_ctl_core_t *c, const char *from, bool ack,
                                 const dsla_proto_plan_reply_t *p) {
    dsla_ctl_replica_t *r = replica_find(c, from, false);
    if (!r || !r->pending_seq || p->seq != r->pending_seq) return;
    r->pending_seq = 0;
    r->last.plan_id = p->plan_id;
    r->last.n_dsla = p->n_dsla;
    memcpy(r->last.dsla, p->dsla, p->n_dsla * sizeof p->dsla[0]);
    char layers[2048];
    layers_text(c, p->dsla, p->n_dsla, layers, sizeof layers);
    if (ack) {
        r->refusal[0] = '\0';
        r->refused_target = -1;
        r->refusals = 0;
        event(c, "plan_adopted", "%s: plan %" PRIu64 ", %u DSLA layers [%s]", r->name, p->plan_id,
              p->n_dsla, layers);
    } else {
        r->refusals = r->refused_target == r->pending_target ? r->refusals + 1 : 1;
        r->refused_target = r->pending_target;
        r->refused_at_ms = now_ms(c);
        snprintf(r->refusal, sizeof r->refusal, "%s", p->reason);
        event(c, "plan_refused", "%s: %s; keeps plan %" PRIu64 ", %u DSLA layers [%s]", r->name,
              p->reason, p->plan_id, p->n_dsla, layers);
    }
    record_plan(c, r, p);
}

void dsla_ctl_core_on_peer(dsla_ctl_core_t *c, const char *peer, bool alive) {
    if (c->distiller.name[0] && strcmp(peer, c->distiller.name) == 0) {
        if (c->distiller.alive != alive)
            event(c, alive ? "distiller_alive" : "distiller_dead", "%s", peer);
        c->distiller.alive = alive;
        return;
    }
    dsla_ctl_replica_t *r = replica_find(c, peer, false);
    if (!r || r->alive == alive) return;
    set_alive(c, r, alive);
    if (alive && r->have_report && r->last_report_ms >= r->dead_since_ms) evaluate(c, r);
}

/* Drops replica i by moving the last one into its place. */
static void replica_forget(dsla_ctl_core_t *c, int i) {
    dsla_log_info("controller: forgetting replica %s: no LOAD_REPORT for %d ms",
                  c->replicas[i].name, DSLA_CONTROLLER_REPLICA_EXPIRE_MS);
    c->replicas[i] = c->replicas[--c->n_replicas];
}

void dsla_ctl_core_on_tick(dsla_ctl_core_t *c) {
    uint64_t now = now_ms(c);
    for (int i = c->n_replicas - 1; i >= 0; i--)
        if (c->replicas[i].have_report &&
            now - c->replicas[i].last_report_ms >= DSLA_CONTROLLER_REPLICA_EXPIRE_MS)
            replica_forget(c, i);
    for (int i = 0; i < c->n_replicas; i++) {
        dsla_ctl_replica_t *r = &c->replicas[i];
        if (!r->pending_seq || now - r->pending_since_ms < DSLA_CONTROLLER_PENDING_MS) continue;
        event(c, "plan_timeout", "%s: no answer to SET_PLAN %" PRIu64 " within %d ms", r->name,
              r->pending_seq, DSLA_CONTROLLER_PENDING_MS);
        r->pending_seq = 0;
        evaluate(c, r);
    }
}

/* ---- distiller messages ---- */

void dsla_ctl_verify_run(dsla_ctl_verify_t *v) {
    const dsla_proto_layer_ready_t *r = &v->ready;
    dsla_catalogue_announce_t a = {.dir = v->layers_dir,
                                   .path = r->path,
                                   .layer = r->layer,
                                   .version = (int)r->version,
                                   .checksum = r->checksum,
                                   .size = r->size,
                                   .xxh64 = r->xxh64,
                                   .key = v->layer_key};
    v->status = dsla_catalogue_verify(&a, &v->entry, v->order, &v->n_order);
    if (v->status != DSLA_OK) snprintf(v->error, sizeof v->error, "%s", dsla_last_error());
}

/* Verified versions join the catalogue and the database; every replica is then evaluated again,
 * since a policy may now convert further. Versions the catalogue holds already change nothing. */
void dsla_ctl_core_on_layer_verified(dsla_ctl_core_t *c, const dsla_ctl_verify_t *v) {
    const dsla_proto_layer_ready_t *r = &v->ready;
    if (v->status != DSLA_OK) {
        event(c, "layer_refused", "%s: layer %d version %u: %s", v->from, r->layer, r->version,
              v->error);
        return;
    }
    const dsla_catalogue_entry_t *e = &v->entry;
    if (dsla_catalogue_add(&c->catalogue, e, v->order, v->n_order) == DSLA_CATALOGUE_KEPT) return;
    c->files[e->layer] = (layer_file_t){true, e->version, r->size, r->xxh64};
    dsla_ctl_write_t *w = calloc(1, sizeof *w);
    if (w) {
        w->kind = DSLA_CTL_WRITE_LAYER;
        w->layer = (dsla_ctl_layer_row_t){.layer = e->layer,
                                          .version = e->version,
                                          .checksum = e->checksum,
                                          .size = r->size,
                                          .xxh64 = r->xxh64};
        snprintf(w->layer.path, sizeof w->layer.path, "%s", e->path);
        persist(c, w);
        free(w);
    }
    event(c, "layer_ready",
          "%s: layer %d version %u (%u of %u in the order): %s, %" PRIu64
          " bytes, xxh64 %016" PRIx64 "; held-out layer MSE %.5g, hybrid ppl %.4f",
          v->from, r->layer, r->version, r->position + 1, r->n_order, r->path, r->size, r->xxh64,
          r->eval_mse, r->eval_ppl);
    evaluate_all(c);
}

dsla_status_t dsla_ctl_core_on_distill_progress(dsla_ctl_core_t *c, const char *from,
                                                const dsla_proto_distill_progress_t *p) {
    if (!from[0])
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "controller: a distiller must be a named peer");
    distiller_t *d = &c->distiller;
    if (strcmp(d->name, from) != 0) {
        snprintf(d->name, sizeof d->name, "%s", from);
        d->have_progress = false;
    }
    d->alive = true;
    if (!d->have_progress || d->progress.state != p->state)
        event(c, "distill", "%s: %s, %u/%u layers done: %s", d->name,
              dsla_proto_distill_state_name(p->state), p->layers_done, p->layers_total, p->message);
    d->progress = *p;
    d->have_progress = true;
    return DSLA_OK;
}

/* ---- chunked layer transfer ---- */

bool dsla_ctl_core_is_replica(const dsla_ctl_core_t *c, const char *name) {
    for (int i = 0; i < c->n_replicas; i++)
        if (strcmp(c->replicas[i].name, name) == 0) return c->replicas[i].have_report;
    return false;
}

bool dsla_ctl_core_file(const dsla_ctl_core_t *c, int layer, int version, dsla_ctl_file_t *out) {
    if (layer < 0 || layer >= DSLA_CATALOGUE_LAYERS_MAX) return false;
    const layer_file_t *f = &c->files[layer];
    for (int i = 0; i < c->catalogue.n; i++) {
        const dsla_catalogue_entry_t *e = &c->catalogue.entries[i];
        if (e->layer != layer || e->version != version) continue;
        if (!f->known || f->version != version) return false;
        *out = (dsla_ctl_file_t){e->path, layer, version, f->size, f->xxh64};
        return true;
    }
    return false;
}

void dsla_ctl_core_on_chunk_served(dsla_ctl_core_t *c, const char *to,
                                   const dsla_proto_layer_chunk_t *chunk) {
    c->chunks_served++;
    c->bytes_served += chunk->len;
    if (chunk->offset + chunk->len == chunk->total_size)
        event(c, "layer_sent",
              "%s: layer %d version %u, %" PRIu64 " bytes (%" PRIu64 " chunks served in all)", to,
              chunk->layer, chunk->version, chunk->total_size, c->chunks_served);
}

void dsla_ctl_core_on_fetch_refused(dsla_ctl_core_t *c, const char *to, uint64_t offset,
                                    const char *why) {
    c->fetches_refused++;
    if (offset == 0) event(c, "fetch_refused", "%s: %s", to, why);
}

/* ---- admin ---- */

static int max_layers(const dsla_ctl_core_t *c) {
    int num_layers = 0;
    for (int i = 0; i < c->n_replicas; i++)
        if (c->replicas[i].have_report) num_layers = (int)c->replicas[i].last.num_layers;
    return num_layers ? dsla_policy_max_layers(&c->policy, num_layers, c->catalogue.n)
                      : c->catalogue.n;
}

static void status_text(const dsla_ctl_core_t *c, dsla_admin_text_t *t) {
    char policy[512];
    dsla_policy_format(&c->policy, policy, sizeof policy);
    dsla_admin_text_add(t, "policy: %s\ndrain: %s\n", policy, c->drain ? "on" : "off");
    dsla_admin_text_add(t, "catalogue: %d layer versions in %s, conversion order", c->catalogue.n,
                        c->layers_dir);
    for (int i = 0; i < c->catalogue.n; i++)
        dsla_admin_text_add(t, "%s%d@%d", i ? "," : " ", c->catalogue.entries[i].layer,
                            c->catalogue.entries[i].version);
    dsla_admin_text_add(t, "\n");
    const distiller_t *d = &c->distiller;
    if (d->have_progress) {
        const dsla_proto_distill_progress_t *p = &d->progress;
        dsla_admin_text_add(t, "distiller %s %s: %s, %u/%u layers done", d->name,
                            d->alive ? "alive" : "dead", dsla_proto_distill_state_name(p->state),
                            p->layers_done, p->layers_total);
        if (p->state == DSLA_PROTO_DISTILL_TRAINING && p->layer >= 0)
            dsla_admin_text_add(t, "; layer %d step %u/%u, loss %.5f, %.0f tokens/s, %.0f s left",
                                p->layer, p->step, p->steps, p->loss, p->tokens_per_s,
                                p->seconds_left);
        dsla_admin_text_add(t, "\n  %s\n", p->message);
        dsla_admin_text_add(
            t, "  prompt samples: %u received, %u held (%u tokens), %u used (%u tokens)\n",
            p->samples_received, p->samples_held, p->sample_tokens_held, p->samples_used,
            p->sample_tokens_used);
    }
    dsla_admin_text_add(
        t, "transfers: %" PRIu64 " chunks, %" PRIu64 " bytes served; %" PRIu64 " fetches refused\n",
        c->chunks_served, c->bytes_served, c->fetches_refused);
    dsla_admin_text_add(t, "replicas: %d\n", c->n_replicas);
    for (int i = 0; i < c->n_replicas; i++) {
        const dsla_ctl_replica_t *r = &c->replicas[i];
        const dsla_proto_load_report_t *l = &r->last;
        char layers[2048];
        layers_text(c, l->dsla, l->n_dsla, layers, sizeof layers);
        dsla_admin_text_add(
            t, "replica %s %s: plan %" PRIu64 " runs %u DSLA layers [%s]; target %d%s\n", r->name,
            r->alive ? "alive" : "dead", l->plan_id, l->n_dsla, layers, r->target,
            r->pending_seq ? ", SET_PLAN pending" : "");
        if (r->have_report)
            dsla_admin_text_add(t,
                                "  load: queue %u, running %u, waiting tokens %" PRIu64
                                ", longest wait %u ms, KV blocks %u/%u, state slots %u/%u, TTFT "
                                "p90 %.1f ms, TPOT p90 %.2f ms, %.1f tokens/s\n",
                                l->queue_length, l->running, l->waiting_tokens, l->oldest_wait_ms,
                                l->kv_used, l->kv_total, l->slots_used, l->slots_total,
                                l->ttft_p90_ms, l->tpot_p90_ms, l->tokens_per_s);
        if (r->refusal[0]) dsla_admin_text_add(t, "  last refusal: %s\n", r->refusal);
    }
}

static void set_policy(dsla_ctl_core_t *c, const dsla_policy_config_t *p, const char *origin) {
    char text[512];
    dsla_policy_format(p, text, sizeof text);
    persist_setting(c, KEY_POLICY, text);
    c->policy = *p;
    event(c, "policy", "%s (%s)", text, origin);
}

/* convert N / revert N: pins the manual policy at the layers now chosen, plus or minus N. */
static dsla_status_t admin_shift(dsla_ctl_core_t *c, const dsla_admin_cmd_t *cmd, int sign,
                                 dsla_admin_text_t *t) {
    const char *what = dsla_admin_op_name(cmd->op);
    if (sign > 0 && c->drain)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "convert: the controller is draining (no new conversions); run "
                          "'dslactl drain off' first");
    int base = c->policy.kind == DSLA_POLICY_MANUAL ? (int)c->policy.layers : 0;
    if (c->policy.kind != DSLA_POLICY_MANUAL)
        for (int i = 0; i < c->n_replicas; i++)
            if (c->replicas[i].target > base) base = c->replicas[i].target;
    int want = base + sign * (int)cmd->n, max = max_layers(c);
    if (want > max)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "convert: N %ld would make %d DSLA layers, above the maximum of %d "
                          "(max_ratio %g, %d layer versions available)",
                          cmd->n, want, max, c->policy.max_ratio, c->catalogue.n);
    if (want < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "revert: N %ld is more than the %d DSLA layers now chosen", cmd->n, base);
    dsla_policy_config_t p = dsla_policy_default(DSLA_POLICY_MANUAL);
    p.max_ratio = c->policy.max_ratio;
    p.layers = (uint32_t)want;
    set_policy(c, &p, what);
    dsla_admin_text_add(t,
                        "manual policy pinned at %d DSLA layers; replicas adopt it at their next "
                        "step (see dslactl status)\n",
                        want);
    return DSLA_OK;
}

static dsla_status_t admin_run(dsla_ctl_core_t *c, const dsla_admin_cmd_t *cmd,
                               dsla_admin_text_t *t) {
    char text[512];
    switch (cmd->op) {
    case DSLA_ADMIN_STATUS:
        status_text(c, t);
        return DSLA_OK;
    case DSLA_ADMIN_POLICY_GET:
        dsla_policy_format(&c->policy, text, sizeof text);
        dsla_admin_text_add(t, "%s\n", text);
        return DSLA_OK;
    case DSLA_ADMIN_POLICY_SET: {
        const char *words[DSLA_PROTO_ADMIN_ARGS_MAX];
        for (int i = 0; i < cmd->n_words; i++)
            words[i] = cmd->words[i];
        dsla_policy_config_t p;
        DSLA_TRY(dsla_policy_parse(&c->policy, words, cmd->n_words, &p));
        set_policy(c, &p, "dslactl");
        dsla_policy_format(&p, text, sizeof text);
        dsla_admin_text_add(t, "%s\n", text);
        return DSLA_OK;
    }
    case DSLA_ADMIN_CONVERT:
        return admin_shift(c, cmd, +1, t);
    case DSLA_ADMIN_REVERT:
        return admin_shift(c, cmd, -1, t);
    case DSLA_ADMIN_DRAIN:
        persist_setting(c, KEY_DRAIN, cmd->on ? "1" : "0");
        c->drain = cmd->on;
        event(c, "drain", "%s", cmd->on ? "on: no new conversions" : "off");
        dsla_admin_text_add(t, "drain %s\n",
                            cmd->on ? "on: no new conversions; reverts go on" : "off");
        return DSLA_OK;
    case DSLA_ADMIN_HISTORY:
        break;
    }
    return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: not run by the controller's core",
                      dsla_admin_op_name(cmd->op));
}

/* The audit trail: every command that changed something, its words and who sent it, one
 * "admin" event (kept like every event: the newest DSLA_CTL_EVENTS_KEEP). Refused commands leave
 * none, so that strangers cannot grow the log. */
static void audit(dsla_ctl_core_t *c, const dsla_admin_cmd_t *cmd) {
    dsla_proto_admin_t *words = calloc(1, sizeof *words);
    if (!words) {
        dsla_log_error("controller: out of memory auditing %s", dsla_admin_op_name(cmd->op));
        return;
    }
    dsla_admin_format(cmd, words);
    char text[512] = "";
    for (uint32_t i = 0; i < words->n_args; i++) {
        size_t len = strlen(text);
        snprintf(text + len, sizeof text - len, "%s%s", i ? " " : "", words->args[i]);
    }
    free(words);
    event(c, "admin", "%s by %s", text, cmd->who[0] ? cmd->who : "an unknown sender");
}

dsla_status_t dsla_ctl_core_admin(dsla_ctl_core_t *c, const dsla_admin_cmd_t *cmd,
                                  dsla_admin_text_t *out) {
    DSLA_TRY(admin_run(c, cmd, out));
    if (cmd->op != DSLA_ADMIN_STATUS && cmd->op != DSLA_ADMIN_POLICY_GET) {
        audit(c, cmd);
        evaluate_all(c);
    }
    return DSLA_OK;
}

/* ---- life cycle ---- */

const char *dsla_ctl_core_layers_dir(const dsla_ctl_core_t *c) {
    return c->layers_dir;
}

dsla_status_t dsla_ctl_core_create(dsla_ctl_core_t **out, const char *layers_dir,
                                   const dsla_ctl_env_t *env) {
    *out = NULL;
    dsla_ctl_core_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "controller: out of memory");
    c->env = *env;
    c->policy = dsla_policy_default(DSLA_POLICY_THRESHOLD);
    /* plan sequence numbers rise from a random start: a PLAN_ACK must name the one in flight,
     * which no one who did not see the SET_PLAN can guess */
    c->next_seq = dsla_secret_u64() >> 2;
    snprintf(c->layers_dir, sizeof c->layers_dir, "%s", layers_dir);
    dsla_status_t st = dsla_catalogue_scan(&c->catalogue, layers_dir);
    if (st != DSLA_OK) {
        free(c);
        return st;
    }
    *out = c;
    return DSLA_OK;
}

void dsla_ctl_core_destroy(dsla_ctl_core_t **c) {
    if (!c || !*c) return;
    free(*c);
    *c = NULL;
}

static void restore_plan(void *user, const dsla_ctl_plan_row_t *row) {
    dsla_ctl_core_t *c = user;
    dsla_ctl_replica_t *r = replica_find(c, row->replica, true);
    if (r) r->target = row->n_dsla;
}

/* A version announced before a restart, where its file still holds what was announced. */
/* A recorded version is restored only from inside the layer directory: a database written
 * before announcements were confined may name any file (a zero-weight layer in /tmp was still
 * served after a restart). */
static void restore_layer(void *user, const dsla_ctl_layer_row_t *row) {
    dsla_ctl_core_t *c = user;
    dsla_catalogue_entry_t e;
    int order[DSLA_CATALOGUE_LAYERS_MAX], n_order = 0;
    char path[PATH_MAX];
    if (dsla_catalogue_confine(c->layers_dir, row->path, path) != DSLA_OK) {
        dsla_log_warn("controller: recorded layer version %s: %s; not catalogued", row->path,
                      dsla_last_error());
        return;
    }
    if (dsla_catalogue_read(path, &e, order, &n_order) != DSLA_OK || e.checksum != row->checksum) {
        dsla_log_warn("controller: layer version %s is gone or changed; not catalogued", row->path);
        return;
    }
    dsla_catalogue_add(&c->catalogue, &e, order, n_order);
}

/* Records the file of every catalogued version as it is now: the announce of versions found by
 * the start-up scan or kept from before a restart. */
/* With a layer key, a version found in the directory or restored from the database without its
 * MAC is left out of the catalogue (with an event): no replica would adopt it. */
static dsla_status_t digest_catalogue(dsla_ctl_core_t *c) {
    int kept = 0;
    for (int i = 0; i < c->catalogue.n; i++) {
        const dsla_catalogue_entry_t *e = &c->catalogue.entries[i];
        if (c->has_layer_key && dsla_layer_mac_check(&c->layer_key, e->path) != DSLA_OK) {
            event(c, "layer_refused", "layer %d version %d: %s", e->layer, e->version,
                  dsla_last_error());
            continue;
        }
        layer_file_t *f = &c->files[e->layer];
        DSLA_TRY(dsla_catalogue_file_digest(e->path, &f->size, &f->xxh64));
        f->version = e->version;
        f->known = true;
        c->catalogue.entries[kept++] = *e;
    }
    c->catalogue.n = kept;
    return DSLA_OK;
}

void dsla_ctl_core_set_layer_key(dsla_ctl_core_t *c, const dsla_layer_key_t *key) {
    c->has_layer_key = key != NULL;
    if (key) c->layer_key = *key;
}

dsla_status_t dsla_ctl_core_start(dsla_ctl_core_t *c, dsla_ctl_store_t *store, const char *policy) {
    char text[512];
    bool found = false;
    if (store) {
        DSLA_TRY(dsla_ctl_store_get(store, KEY_POLICY, text, sizeof text, &found));
        if (found && dsla_policy_parse_line(NULL, text, &c->policy) != DSLA_OK)
            dsla_log_warn("controller: stored policy '%s' unreadable (%s); using the defaults",
                          text, dsla_last_error());
        DSLA_TRY(dsla_ctl_store_get(store, KEY_DRAIN, text, sizeof text, &found));
        c->drain = found && strcmp(text, "1") == 0;
        DSLA_TRY(dsla_ctl_store_each_layer(store, restore_layer, c));
        DSLA_TRY(dsla_ctl_store_each_plan(store, restore_plan, c));
    }
    if (policy) {
        dsla_policy_config_t p;
        DSLA_TRY(dsla_policy_parse_line(NULL, policy, &p));
        set_policy(c, &p, "--policy");
    }
    DSLA_TRY(digest_catalogue(c));
    event(c, "start", "%d layer versions in %s", c->catalogue.n, c->layers_dir);
    return DSLA_OK;
}

const dsla_ctl_replica_t *dsla_ctl_core_replica(const dsla_ctl_core_t *c, const char *name) {
    for (int i = 0; i < c->n_replicas; i++)
        if (strcmp(c->replicas[i].name, name) == 0) return &c->replicas[i];
    return NULL;
}

const dsla_catalogue_t *dsla_ctl_core_catalogue(const dsla_ctl_core_t *c) {
    return &c->catalogue;
}

const dsla_policy_config_t *dsla_ctl_core_policy(const dsla_ctl_core_t *c) {
    return &c->policy;
}

bool dsla_ctl_core_draining(const dsla_ctl_core_t *c) {
    return c->drain;
}

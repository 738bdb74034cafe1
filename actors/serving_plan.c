/* Plan changes: SET_PLAN -> fetch -> load -> adopt -> PLAN_ACK/NACK (serving_plan.h). */
#include "actors/serving_plan.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/transfer.h"
#include "runtime/core/log.h"
#include "runtime/model/dsla_layer.h"

typedef enum { STAGE_PROBE, STAGE_FETCH, STAGE_LOAD, STAGE_ADOPT } stage_t;

/* One SET_PLAN on its way. */
typedef struct {
    dsla_proto_set_plan_t plan;         /* its paths the cache's when there is one */
    char from[DSLA_PROTO_NAME_MAX + 1]; /* the sender: fetches and the answer go there */
    uint64_t id;                        /* the SET_PLAN's correlation id */
    stage_t stage;
    uint32_t next;                      /* the entry of plan.layers being fetched */
    bool cached[DSLA_PROTO_LAYERS_MAX]; /* the probe's answer: entries not to fetch */
    dsla_transfer_t *xfer;
    uint64_t fetch_id; /* the last LAYER_FETCH; other LAYER_CHUNKs and ERRORs are stale */
    bool awaiting;     /* its chunk has not come yet: the deadline runs */
    uint64_t deadline_ms;
    bool received_all;             /* the file's last chunk accepted: no LAYER_FETCH more */
    dsla_serving_write_t *writing; /* the write job out on a worker */
    dsla_serving_write_t *queued;  /* the chunk accepted after it, waiting */
    uint32_t n_dsla;               /* what the loaded plan runs, for the ACK */
    dsla_proto_dsla_layer_t dsla[DSLA_PROTO_LAYERS_MAX];
} change_t;

struct dsla_serving_plans {
    dsla_serving_plans_config_t config;
    bool check_mac;
    dsla_layer_key_t layer_key;
    char layer_cache[DSLA_PROTO_PATH_MAX - 64]; /* "": none */
    dsla_serving_plan_ops_t ops;
    change_t *cur, *waiting;
    uint64_t next_fetch_id;
    uint64_t plan_id;
    uint32_t n_dsla; /* the plan the engine runs */
    dsla_proto_dsla_layer_t dsla[DSLA_PROTO_LAYERS_MAX];
};

/* ---- loading (any thread) ---- */

enum {
    /* Threads that read a SET_PLAN's versions at once. A 7B layer version is ~400 MB of fp32,
     * read from the page cache and hashed at ~0.8 GB/s by one thread; one thread per version
     * (up to this many) takes a 24-layer change from ~10 s to what memory bandwidth allows. */
    LOAD_THREADS = 8,
};

/* One entry of a SET_PLAN, read and verified by whichever loader thread takes it. */
typedef struct {
    const dsla_proto_plan_layer_t *e;
    dsla_dsla_layer_t *w;
    uint64_t sum;
    dsla_status_t st;
    char message[DSLA_PROTO_MESSAGE_MAX + 1]; /* the thread's dsla_last_error when st fails */
} entry_load_t;

typedef struct {
    const dsla_serving_load_t *job;
    entry_load_t *entries;
    uint32_t n;
    atomic_uint next; /* the next entry to take */
} entries_t;

static void load_entry(const dsla_serving_load_t *job, entry_load_t *x) {
    const dsla_proto_plan_layer_t *e = x->e;
    /* the MAC first: nothing of a file the distiller did not seal is parsed */
    dsla_status_t st = job->check_mac ? dsla_layer_mac_check(&job->layer_key, e->path) : DSLA_OK;
    if (st == DSLA_OK) st = dsla_dsla_layer_load(&x->w, e->path, job->mcfg, NULL);
    if (st == DSLA_OK && x->w->layer != e->layer)
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "SET_PLAN: %s holds layer %d, not %d", e->path,
                        x->w->layer, e->layer);
    x->sum = st == DSLA_OK ? dsla_dsla_layer_checksum(x->w) : 0;
    if (st == DSLA_OK && x->sum != e->checksum)
        st = dsla_error(DSLA_ERR_FORMAT,
                        "SET_PLAN: layer %d: %s has checksum %016" PRIx64
                        ", the controller announced %016" PRIx64,
                        e->layer, e->path, x->sum, e->checksum);
    x->st = st;
    if (st != DSLA_OK) snprintf(x->message, sizeof x->message, "%s", dsla_last_error());
}

static void *load_entries(void *arg) {
    entries_t *es = arg;
    for (unsigned i; (i = atomic_fetch_add(&es->next, 1)) < es->n;)
        load_entry(es->job, &es->entries[i]);
    return NULL;
}

static dsla_status_t load(dsla_serving_load_t *job) {
    const dsla_proto_set_plan_t *p = &job->request;
    const int num_layers = job->mcfg->num_layers;
    bool named[DSLA_PROTO_LAYERS_MAX] = {false};
    for (uint32_t i = 0; i < p->n_layers; i++) {
        const int layer = p->layers[i].layer;
        if (layer < 0 || layer >= num_layers || named[layer])
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "SET_PLAN: layer %d is %s (the model has %d layers)", layer,
                              layer < 0 || layer >= num_layers ? "out of range" : "named twice",
                              num_layers);
        named[layer] = true;
    }
    entries_t es = {.job = job, .n = p->n_layers};
    atomic_init(&es.next, 0);
    if (p->n_layers && !(es.entries = calloc(p->n_layers, sizeof *es.entries)))
        return dsla_error_oom("SET_PLAN: loading %u layers", p->n_layers);
    for (uint32_t i = 0; i < p->n_layers; i++)
        es.entries[i].e = &p->layers[i];
    /* Helpers beside this thread, which loads too; one that cannot start leaves its share to the
     * others. */
    pthread_t helpers[LOAD_THREADS - 1];
    int started = 0;
    while (started < LOAD_THREADS - 1 && (uint32_t)started + 1 < p->n_layers &&
           pthread_create(&helpers[started], NULL, load_entries, &es) == 0)
        started++;
    load_entries(&es);
    for (int t = 0; t < started; t++)
        pthread_join(helpers[t], NULL);

    /* The plan, in the SET_PLAN's order; the first failing entry (in that order) is the error. */
    dsla_status_t st = dsla_plan_create(&job->plan, num_layers);
    for (uint32_t i = 0; i < p->n_layers; i++) {
        entry_load_t *x = &es.entries[i];
        if (st == DSLA_OK && x->st != DSLA_OK) st = dsla_error(x->st, "%s", x->message);
        dsla_layer_ref_t *ref = NULL;
        if (st == DSLA_OK) st = dsla_layer_ref_create(&ref, &x->w);
        if (st == DSLA_OK) dsla_layer_ref_set_checksum(ref, x->sum);
        if (st == DSLA_OK) st = dsla_plan_set_layer(job->plan, x->e->layer, ref);
        dsla_layer_ref_release(&ref);
        dsla_dsla_layer_destroy(&x->w);
    }
    free(es.entries);
    if (st != DSLA_OK) return st;
    job->n_dsla = 0; /* ascending by layer, as reports list them */
    for (int l = 0; l < num_layers; l++)
        for (uint32_t i = 0; named[l] && i < p->n_layers; i++)
            if (p->layers[i].layer == l)
                job->dsla[job->n_dsla++] =
                    (dsla_proto_dsla_layer_t){.layer = l, .checksum = p->layers[i].checksum};
    return DSLA_OK;
}

void dsla_serving_load_run(dsla_serving_load_t *job) {
    if (job->probe) {
        for (uint32_t i = 0; i < job->request.n_layers; i++) /* a mismatching file is removed */
            job->cached[i] =
                dsla_transfer_cached(job->request.layers[i].path, &job->request.layers[i]);
        return;
    }
    job->status = load(job);
    if (job->status != DSLA_OK) {
        snprintf(job->message, sizeof job->message, "%s", dsla_last_error());
        dsla_plan_release(&job->plan);
    }
}

void dsla_serving_load_free(dsla_serving_load_t **job) {
    if (!job || !*job) return;
    dsla_proto_set_plan_free(&(*job)->request);
    dsla_plan_release(&(*job)->plan);
    free(*job);
    *job = NULL;
}

void dsla_serving_write_run(dsla_serving_write_t *job) {
    job->status = dsla_transfer_write(job->xfer, job->bytes, job->len, &job->done);
    if (job->status != DSLA_OK)
        snprintf(job->message, sizeof job->message, "%s", dsla_last_error());
}

void dsla_serving_write_free(dsla_serving_write_t **job) {
    if (!job || !*job) return;
    if ((*job)->orphaned) dsla_transfer_destroy(&(*job)->xfer);
    free((*job)->bytes);
    free(*job);
    *job = NULL;
}

/* ---- the state machine (the actor's thread) ---- */

static void change_free(change_t **c) {
    if (!*c) return;
    dsla_serving_write_free(&(*c)->queued);
    if ((*c)->writing) { /* the worker still writes into the transfer: the job takes it */
        (*c)->writing->orphaned = true;
        (*c)->writing = NULL;
        (*c)->xfer = NULL;
    }
    dsla_transfer_destroy(&(*c)->xfer);
    dsla_proto_set_plan_free(&(*c)->plan);
    free(*c);
    *c = NULL;
}

/* PLAN_ACK (st OK) or PLAN_NACK (code, and reason) for SET_PLAN seq from `to`, with the plan the
 * engine now runs. */
static void reply(dsla_serving_plans_t *p, const char *to, uint64_t id, uint64_t seq,
                  dsla_status_t st, dsla_proto_code_t code, const char *reason) {
    dsla_proto_plan_reply_t *r = calloc(1, sizeof *r);
    if (!r) {
        dsla_log_error("serving: the answer to SET_PLAN %" PRIu64 " is lost: out of memory", seq);
        return;
    }
    r->seq = seq;
    if (st != DSLA_OK) {
        r->code = code;
        snprintf(r->reason, sizeof r->reason, "%s", reason);
        dsla_log_warn("serving: plan refused, the old one stays: %s", r->reason);
    }
    r->plan_id = p->plan_id;
    r->n_dsla = p->n_dsla;
    memcpy(r->dsla, p->dsla, p->n_dsla * sizeof p->dsla[0]);
    dsla_proto_buf_t body = {0};
    if (dsla_proto_plan_reply_encode(r, &body) != DSLA_OK ||
        p->ops.send(p->ops.user, to, st == DSLA_OK ? DSLA_MSG_PLAN_ACK : DSLA_MSG_PLAN_NACK, id,
                    body.data, body.len) != DSLA_OK)
        dsla_log_warn("serving: the answer to SET_PLAN %" PRIu64 " is lost: %s", seq,
                      dsla_last_error());
    dsla_proto_buf_free(&body);
    free(r);
}

static void start(dsla_serving_plans_t *p, uint64_t now_ms);

/* A worker job over a copy of c's layers (paths included): the change may be answered and freed
 * while the job runs. */
static dsla_status_t job_new(dsla_serving_plans_t *p, const change_t *c, bool probe,
                             dsla_serving_load_t **out) {
    dsla_serving_load_t *job = calloc(1, sizeof *job);
    if (!job) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
    job->probe = probe;
    job->mcfg = p->config.mcfg;
    job->check_mac = p->check_mac;
    job->layer_key = p->layer_key;
    job->request.seq = c->plan.seq;
    if (c->plan.n_layers) {
        job->request.layers = calloc(c->plan.n_layers, sizeof *job->request.layers);
        if (!job->request.layers) {
            free(job);
            return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
        }
    }
    for (uint32_t i = 0; i < c->plan.n_layers; i++) {
        job->request.layers[i] = c->plan.layers[i];
        job->request.layers[i].path = strdup(c->plan.layers[i].path);
        job->request.n_layers = i + 1;
        if (!job->request.layers[i].path) {
            dsla_serving_load_free(&job);
            return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
        }
    }
    *out = job;
    return DSLA_OK;
}

/* Ends the current change with its answer and starts the waiting one. */
static void finish(dsla_serving_plans_t *p, dsla_status_t st, dsla_proto_code_t code,
                   const char *reason, uint64_t now_ms) {
    change_t *c = p->cur;
    reply(p, c->from, c->id, c->plan.seq, st, code, reason);
    change_free(&p->cur);
    if (p->waiting) {
        p->cur = p->waiting;
        p->waiting = NULL;
        start(p, now_ms);
    }
}

static void fail(dsla_serving_plans_t *p, dsla_status_t st, uint64_t now_ms) {
    finish(p, st, dsla_proto_code_from_status(st), dsla_last_error(), now_ms);
}

static void begin_load(dsla_serving_plans_t *p, uint64_t now_ms) {
    change_t *c = p->cur;
    dsla_serving_load_t *job = NULL;
    dsla_status_t st = job_new(p, c, false, &job);
    if (st == DSLA_OK) {
        c->stage = STAGE_LOAD;
        st = p->ops.load(p->ops.user, job);
        if (st != DSLA_OK) dsla_serving_load_free(&job);
    }
    if (st != DSLA_OK) fail(p, st, now_ms);
}

/* Sends the LAYER_FETCH for the transfer's next chunk and sets its deadline. */
static dsla_status_t request_chunk(dsla_serving_plans_t *p, uint64_t now_ms) {
    change_t *c = p->cur;
    dsla_proto_layer_fetch_t f;
    dsla_transfer_request(c->xfer, &f);
    dsla_proto_buf_t body;
    DSLA_TRY(dsla_proto_layer_fetch_encode(&f, &body));
    c->fetch_id = ++p->next_fetch_id;
    dsla_status_t st =
        p->ops.send(p->ops.user, c->from, DSLA_MSG_LAYER_FETCH, c->fetch_id, body.data, body.len);
    dsla_proto_buf_free(&body);
    c->awaiting = true;
    c->deadline_ms = now_ms + p->config.fetch_timeout_ms;
    return st;
}

/* Starts the fetch of the next version the cache lacks, or the load when none is left. */
static void advance(dsla_serving_plans_t *p, uint64_t now_ms) {
    change_t *c = p->cur;
    for (; c->next < c->plan.n_layers; c->next++) {
        const dsla_proto_plan_layer_t *l = &c->plan.layers[c->next];
        if (c->cached[c->next]) continue; /* fetched before: not again */
        c->received_all = false;
        dsla_status_t st = dsla_transfer_begin(&c->xfer, l->path, l, p->config.fetch_chunk);
        if (st == DSLA_OK) st = request_chunk(p, now_ms);
        if (st != DSLA_OK) fail(p, st, now_ms);
        return;
    }
    begin_load(p, now_ms);
}

/* Points every entry of the plan at its file in the layer cache. */
static dsla_status_t plan_to_cache(dsla_serving_plans_t *p, dsla_proto_set_plan_t *sp) {
    for (uint32_t i = 0; i < sp->n_layers; i++) {
        dsla_proto_plan_layer_t *l = &sp->layers[i];
        if (l->size == 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "SET_PLAN: layer %d carries no file size and xxh64 to fetch it by "
                              "(a controller without transfers); run this replica with "
                              "--layer-cache off on the controller's filesystem",
                              l->layer);
        char path[DSLA_PROTO_PATH_MAX + 1];
        DSLA_TRY(dsla_transfer_cache_path(p->layer_cache, l, path, sizeof path));
        char *dup = strdup(path);
        if (!dup) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
        free((char *)l->path);
        l->path = dup;
    }
    return DSLA_OK;
}

static void start(dsla_serving_plans_t *p, uint64_t now_ms) {
    change_t *c = p->cur;
    if (!p->layer_cache[0]) {
        begin_load(p, now_ms);
        return;
    }
    dsla_status_t st = plan_to_cache(p, &c->plan);
    dsla_serving_load_t *job = NULL;
    if (st == DSLA_OK) st = job_new(p, c, true, &job);
    if (st == DSLA_OK) {
        c->stage = STAGE_PROBE;
        st = p->ops.load(p->ops.user, job);
        if (st != DSLA_OK) dsla_serving_load_free(&job);
    }
    if (st != DSLA_OK) fail(p, st, now_ms);
}

dsla_status_t dsla_serving_plans_on_set_plan(dsla_serving_plans_t *p, const char *from, uint64_t id,
                                             const void *body, size_t len, uint64_t now_ms) {
    change_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: SET_PLAN: out of memory");
    snprintf(c->from, sizeof c->from, "%s", from);
    c->id = id;
    dsla_status_t st = dsla_proto_set_plan_decode(body, len, &c->plan);
    if (st != DSLA_OK) {
        change_free(&c);
        return st;
    }
    if (p->cur && p->cur->stage == STAGE_FETCH) {
        dsla_error(DSLA_ERR_CANCELLED,
                   "SET_PLAN %" PRIu64 " superseded by SET_PLAN %" PRIu64
                   " before its layers arrived",
                   p->cur->plan.seq, c->plan.seq);
        change_t *old = p->cur;
        p->cur = NULL;
        reply(p, old->from, old->id, old->plan.seq, DSLA_ERR_CANCELLED, DSLA_CODE_CANCELLED,
              dsla_last_error());
        change_free(&old);
    }
    if (!p->cur) {
        p->cur = c;
        start(p, now_ms);
        return DSLA_OK;
    }
    if (p->waiting) {
        dsla_error(DSLA_ERR_CANCELLED,
                   "SET_PLAN %" PRIu64 " superseded by SET_PLAN %" PRIu64
                   " while the one before it was loading",
                   p->waiting->plan.seq, c->plan.seq);
        reply(p, p->waiting->from, p->waiting->id, p->waiting->plan.seq, DSLA_ERR_CANCELLED,
              DSLA_CODE_CANCELLED, dsla_last_error());
        change_free(&p->waiting);
    }
    p->waiting = c;
    return DSLA_OK;
}

/* The accepted chunk's bytes as a write job: to the worker when none is out, else queued. */
static dsla_status_t write_chunk(dsla_serving_plans_t *p, const dsla_proto_layer_chunk_t *chunk) {
    change_t *c = p->cur;
    dsla_serving_write_t *job = calloc(1, sizeof *job);
    if (!job) return dsla_error_oom("serving: layer transfer");
    job->xfer = c->xfer;
    job->len = chunk->len;
    job->bytes = malloc(chunk->len ? chunk->len : 1);
    if (!job->bytes) {
        free(job);
        return dsla_error_oom("serving: layer transfer");
    }
    memcpy(job->bytes, chunk->bytes, chunk->len);
    if (c->writing) { /* at most one waits: the next LAYER_FETCH waits for the disk */
        c->queued = job;
        return DSLA_OK;
    }
    dsla_status_t st = p->ops.write(p->ops.user, job);
    if (st != DSLA_OK) {
        dsla_serving_write_free(&job);
        return st;
    }
    c->writing = job;
    return DSLA_OK;
}

void dsla_serving_plans_on_chunk(dsla_serving_plans_t *p, const char *from, uint64_t id,
                                 const void *body, size_t len, uint64_t now_ms) {
    change_t *c = p->cur;
    if (!c || c->stage != STAGE_FETCH || !c->awaiting || id != c->fetch_id ||
        strcmp(from, c->from) != 0) {
        dsla_log_debug("serving: a stale LAYER_CHUNK from '%s' (id %" PRIu64 ")", from, id);
        return;
    }
    dsla_proto_layer_chunk_t chunk;
    dsla_status_t st = dsla_proto_layer_chunk_decode(body, len, &chunk);
    if (st == DSLA_OK) st = dsla_transfer_accept(c->xfer, &chunk, &c->received_all);
    if (st == DSLA_OK) {
        c->awaiting = false;
        st = write_chunk(p, &chunk);
    }
    if (st == DSLA_OK && !c->received_all && !c->queued) st = request_chunk(p, now_ms);
    if (st != DSLA_OK) fail(p, st, now_ms);
}

void dsla_serving_plans_written(dsla_serving_plans_t *p, dsla_serving_write_t *job, bool cancelled,
                                uint64_t now_ms) {
    if (job->orphaned || cancelled) { /* its change is gone, or the shell is stopping */
        if (!job->orphaned && p->cur && p->cur->writing == job) p->cur->writing = NULL;
        dsla_serving_write_free(&job);
        return;
    }
    change_t *c = p->cur;
    c->writing = NULL; /* not orphaned: the current change's */
    const bool done = job->done;
    if (job->status != DSLA_OK) {
        finish(p, job->status, dsla_proto_code_from_status(job->status), job->message, now_ms);
        dsla_serving_write_free(&job);
        return;
    }
    dsla_serving_write_free(&job);
    if (done) {
        dsla_transfer_destroy(&c->xfer);
        c->next++;
        advance(p, now_ms);
        return;
    }
    if (!c->queued) return; /* the next chunk is on its way */
    dsla_serving_write_t *next = c->queued;
    c->queued = NULL;
    dsla_status_t st = p->ops.write(p->ops.user, next);
    if (st != DSLA_OK)
        dsla_serving_write_free(&next);
    else
        c->writing = next;
    if (st == DSLA_OK && !c->received_all) st = request_chunk(p, now_ms);
    if (st != DSLA_OK) fail(p, st, now_ms);
}

bool dsla_serving_plans_on_error(dsla_serving_plans_t *p, const char *from, uint64_t id,
                                 const dsla_proto_error_t *err, uint64_t now_ms) {
    change_t *c = p->cur;
    if (!c || c->stage != STAGE_FETCH || !c->awaiting || id != c->fetch_id ||
        strcmp(from, c->from) != 0)
        return false;
    const dsla_proto_plan_layer_t *l = &c->plan.layers[c->next];
    dsla_error(DSLA_ERR_IO, "layer transfer of layer %d refused by %s: %s", l->layer, from,
               err->message);
    finish(p, DSLA_ERR_IO, (dsla_proto_code_t)err->code, dsla_last_error(), now_ms);
    return true;
}

void dsla_serving_plans_on_tick(dsla_serving_plans_t *p, uint64_t now_ms) {
    change_t *c = p->cur;
    if (!c || c->stage != STAGE_FETCH || !c->awaiting || now_ms < c->deadline_ms) return;
    const dsla_proto_plan_layer_t *l = &c->plan.layers[c->next];
    dsla_error(DSLA_ERR_IO, "layer transfer: no LAYER_CHUNK of layer %d from %s within %u ms",
               l->layer, c->from, p->config.fetch_timeout_ms);
    finish(p, DSLA_ERR_IO, DSLA_CODE_DEADLINE_EXCEEDED, dsla_last_error(), now_ms);
}

void dsla_serving_plans_loaded(dsla_serving_plans_t *p, dsla_serving_load_t *job, bool cancelled,
                               uint64_t now_ms) {
    change_t *c = p->cur;
    if (!cancelled && c && c->stage == STAGE_PROBE && job->probe) {
        memcpy(c->cached, job->cached, c->plan.n_layers * sizeof c->cached[0]);
        dsla_serving_load_free(&job);
        c->stage = STAGE_FETCH;
        advance(p, now_ms);
        return;
    }
    if (cancelled || !c || c->stage != STAGE_LOAD || job->probe) {
        dsla_serving_load_free(&job);
        return;
    }
    if (job->status != DSLA_OK) {
        finish(p, job->status, dsla_proto_code_from_status(job->status), job->message, now_ms);
        dsla_serving_load_free(&job);
        return;
    }
    c->n_dsla = job->n_dsla;
    memcpy(c->dsla, job->dsla, job->n_dsla * sizeof job->dsla[0]);
    c->stage = STAGE_ADOPT;
    dsla_status_t st = p->ops.adopt(p->ops.user, &job->plan);
    dsla_serving_load_free(&job);
    if (st != DSLA_OK) fail(p, st, now_ms);
}

void dsla_serving_plans_adopted(dsla_serving_plans_t *p, dsla_status_t status, uint64_t plan_id,
                                const char *message, uint64_t now_ms) {
    p->plan_id = plan_id;
    change_t *c = p->cur;
    if (!c || c->stage != STAGE_ADOPT) return;
    if (status == DSLA_OK) {
        p->n_dsla = c->n_dsla;
        memcpy(p->dsla, c->dsla, c->n_dsla * sizeof c->dsla[0]);
    }
    finish(p, status, dsla_proto_code_from_status(status), message, now_ms);
}

uint64_t dsla_serving_plans_id(const dsla_serving_plans_t *p) {
    return p->plan_id;
}

uint32_t dsla_serving_plans_dsla(const dsla_serving_plans_t *p,
                                 const dsla_proto_dsla_layer_t **layers) {
    *layers = p->dsla;
    return p->n_dsla;
}

bool dsla_serving_plans_busy(const dsla_serving_plans_t *p) {
    return p->cur != NULL;
}

dsla_status_t dsla_serving_plans_create(dsla_serving_plans_t **out,
                                        const dsla_serving_plans_config_t *config,
                                        const dsla_serving_plan_ops_t *ops) {
    *out = NULL;
    dsla_serving_plans_t *p = calloc(1, sizeof *p);
    if (!p) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "serving: out of memory");
    p->config = *config;
    p->ops = *ops;
    p->plan_id = config->plan_id;
    dsla_status_t st = DSLA_OK;
    if (config->layer_cache) {
        if (strlen(config->layer_cache) >= sizeof p->layer_cache)
            st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                            "serving: the layer cache path %s is longer than %zu bytes",
                            config->layer_cache, sizeof p->layer_cache - 1);
        else if (config->fetch_chunk < 1 || config->fetch_chunk > DSLA_PROTO_CHUNK_MAX)
            st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "serving: fetch_chunk %u is outside 1..%u",
                            config->fetch_chunk, DSLA_PROTO_CHUNK_MAX);
        if (st == DSLA_OK) {
            snprintf(p->layer_cache, sizeof p->layer_cache, "%s", config->layer_cache);
            st = dsla_transfer_cache_init(p->layer_cache);
        }
    }
    if (st != DSLA_OK) {
        free(p);
        return st;
    }
    p->config.layer_cache = NULL; /* p->layer_cache holds it */
    if (config->layer_key) {
        p->check_mac = true;
        p->layer_key = *config->layer_key;
    }
    p->config.layer_key = NULL; /* p->layer_key holds it */
    *out = p;
    return DSLA_OK;
}

void dsla_serving_plans_destroy(dsla_serving_plans_t **p) {
    if (!p || !*p) return;
    change_free(&(*p)->cur);
    change_free(&(*p)->waiting);
    free(*p);
    *p = NULL;
}

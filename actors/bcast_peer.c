/* The layer broadcast's owner and receiver sides (bcast_peer.h). */
#define _DEFAULT_SOURCE /* realpath */
#include "actors/bcast_peer.h"

#include <limits.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "actors/transfer.h"
#include "runtime/core/log.h"

struct dsla_bcast_peer {
    dsla_bcast_peer_config_t cfg;
    char layer_cache[DSLA_PROTO_PATH_MAX - 64]; /* "": none */
    char owner_dir[PATH_MAX];                   /* resolved; "": none */
    dsla_bcast_peer_ops_t ops;
    bool busy;
    char from[DSLA_PROTO_NAME_MAX + 1]; /* the controller of the job out */
    void *comm;                         /* held between sessions */
    uint64_t comm_key;
};

/* ---- the jobs (any thread) ---- */

static dsla_status_t join(dsla_bcast_job_t *job) {
    const dsla_bcast_transport_t *t = job->transport;
    if (job->old_comm) t->comm_destroy(t->user, job->old_comm);
    job->old_comm = NULL;
    if (job->comm) return DSLA_OK;
    return t->comm_create(t->user, job->msg.id, job->msg.id_len, job->msg.rank, job->msg.nranks,
                          job->timeout_ms, &job->comm);
}

static dsla_status_t send_file(dsla_bcast_job_t *job, char *buf) {
    const dsla_bcast_transport_t *t = job->transport;
    const dsla_proto_bcast_t *m = &job->msg;
    int fd = open(job->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dsla_error(DSLA_ERR_IO, "broadcast: cannot open %s: %s", job->path, strerror(errno));
    struct stat sb;
    dsla_status_t st = DSLA_OK;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != m->size)
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                        "broadcast: %s is not a regular file of the announced %" PRIu64 " bytes",
                        job->path, m->size);
    if (st == DSLA_OK) st = join(job);
    XXH64_state_t *h = XXH64_createState();
    if (!h && st == DSLA_OK) st = dsla_error_oom("broadcast hash");
    if (h) XXH64_reset(h, 0);
    for (uint64_t off = 0; st == DSLA_OK && off < m->size;) {
        size_t n = m->size - off < job->slice ? (size_t)(m->size - off) : job->slice;
        ssize_t got = pread(fd, buf, n, (off_t)off);
        if (got != (ssize_t)n) {
            st = dsla_error(DSLA_ERR_IO, "broadcast: cannot read %zu bytes at %" PRIu64 " of %s", n,
                            off, job->path);
            break;
        }
        XXH64_update(h, buf, n);
        st = t->broadcast(t->user, job->comm, buf, n, job->timeout_ms);
        off += n;
    }
    uint64_t xxh = h && st == DSLA_OK ? XXH64_digest(h) : 0;
    if (st == DSLA_OK && xxh != m->xxh64)
        st = dsla_error(DSLA_ERR_FORMAT,
                        "broadcast: %s was sent with xxh64 %016" PRIx64 ", announced %016" PRIx64,
                        job->path, xxh, m->xxh64);
    XXH64_freeState(h);
    close(fd);
    return st;
}

/* Each slice goes to the chunked transfer's writer as one chunk, so that the file is hashed,
 * synced, checked and renamed exactly as a fetched one; its ".part" name is unique to this
 * transfer, so a chunked fetch of the same version running meanwhile never shares a file with it,
 * and whichever verified file is renamed to the cache name last wins. */
static dsla_status_t receive_file(dsla_bcast_job_t *job, char *buf) {
    const dsla_bcast_transport_t *t = job->transport;
    const dsla_proto_bcast_t *m = &job->msg;
    const dsla_proto_plan_layer_t l = {
        .layer = m->layer, .version = m->version, .size = m->size, .xxh64 = m->xxh64};
    DSLA_TRY(join(job));
    dsla_transfer_t *x = NULL;
    DSLA_TRY(dsla_transfer_begin(&x, job->path, &l, DSLA_PROTO_CHUNK_MAX));
    dsla_status_t st = DSLA_OK;
    bool last = false, done = false;
    for (uint64_t off = 0; st == DSLA_OK && off < m->size;) {
        size_t n = m->size - off < job->slice ? (size_t)(m->size - off) : job->slice;
        const dsla_proto_layer_chunk_t c = {m->layer, m->version, m->xxh64, off, m->size, buf, n};
        st = t->broadcast(t->user, job->comm, buf, n, job->timeout_ms);
        if (st == DSLA_OK) st = dsla_transfer_accept(x, &c, &last);
        if (st == DSLA_OK) st = dsla_transfer_write(x, buf, n, &done);
        off += n;
    }
    if (st == DSLA_OK && !done)
        st = dsla_error(DSLA_ERR_INTERNAL, "broadcast: %s incomplete after %" PRIu64 " bytes",
                        job->path, m->size);
    dsla_transfer_destroy(&x);
    return st;
}

void dsla_bcast_job_run(dsla_bcast_job_t *job) {
    const dsla_bcast_transport_t *t = job->transport;
    char *buf = NULL;
    if (job->kind == DSLA_BCAST_JOB_ID) {
        job->id_len = 0;
        job->status = t->unique_id(t->user, job->id, &job->id_len);
        if (job->status == DSLA_OK && (job->id_len == 0 || job->id_len > DSLA_PROTO_BCAST_ID_MAX))
            job->status =
                dsla_error(DSLA_ERR_INTERNAL, "broadcast: a unique id of %u bytes", job->id_len);
    } else if (!(buf = malloc(job->slice)))
        job->status = dsla_error_oom("broadcast slice");
    else if (job->kind == DSLA_BCAST_JOB_SEND)
        job->status = send_file(job, buf);
    else
        job->status = receive_file(job, buf);
    free(buf);
    if (job->status != DSLA_OK) {
        snprintf(job->message, sizeof job->message, "%s", dsla_last_error());
        if (job->comm) t->comm_destroy(t->user, job->comm); /* unfit after a failed collective */
        if (job->old_comm) t->comm_destroy(t->user, job->old_comm);
        job->comm = job->old_comm = NULL;
    }
}

/* ---- the state machine (the actor's thread) ---- */

dsla_status_t dsla_bcast_peer_create(dsla_bcast_peer_t **out, const dsla_bcast_peer_config_t *cfg,
                                     const dsla_bcast_peer_ops_t *ops) {
    *out = NULL;
    if (!cfg->slice || !cfg->timeout_ms)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "broadcast: slice %zu and timeout_ms %u must be above 0", cfg->slice,
                          cfg->timeout_ms);
    dsla_bcast_peer_t *p = calloc(1, sizeof *p);
    if (!p) return dsla_error_oom("broadcast peer");
    if (cfg->layer_cache && snprintf(p->layer_cache, sizeof p->layer_cache, "%s",
                                     cfg->layer_cache) >= (int)sizeof p->layer_cache) {
        free(p);
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "broadcast: layer cache path %s is too long",
                          cfg->layer_cache);
    }
    if (cfg->owner_dir && !realpath(cfg->owner_dir, p->owner_dir)) {
        dsla_status_t st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "broadcast: owner dir %s: %s",
                                      cfg->owner_dir, strerror(errno));
        free(p);
        return st;
    }
    p->cfg = *cfg;
    p->cfg.layer_cache = p->cfg.owner_dir = NULL;
    p->ops = *ops;
    *out = p;
    return DSLA_OK;
}

void dsla_bcast_peer_destroy(dsla_bcast_peer_t **p) {
    if (!p || !*p) return;
    const dsla_bcast_transport_t *t = (*p)->cfg.transport;
    if ((*p)->comm) t->comm_destroy(t->user, (*p)->comm);
    free(*p);
    *p = NULL;
}

bool dsla_bcast_peer_busy(const dsla_bcast_peer_t *p) {
    return p->busy;
}
uint64_t dsla_bcast_peer_comm(const dsla_bcast_peer_t *p) {
    return p->comm ? p->comm_key : 0;
}

/* BCAST_ACK (st OK) or BCAST_NACK with st's code and message, to `to`. */
static void reply(dsla_bcast_peer_t *p, const char *to, const dsla_proto_bcast_t *m,
                  dsla_status_t st, const char *message) {
    dsla_proto_bcast_reply_t r = {.session = m->session, .rank = m->rank};
    if (st != DSLA_OK) {
        r.code = dsla_proto_code_from_status(st);
        snprintf(r.reason, sizeof r.reason, "%s", message);
        dsla_log_warn("broadcast %" PRIu64 ": rank %u fails: %s", m->session, m->rank, message);
    }
    dsla_proto_buf_t body = {0};
    if (dsla_proto_bcast_reply_encode(&r, &body) != DSLA_OK ||
        p->ops.send(p->ops.user, to, st == DSLA_OK ? DSLA_MSG_BCAST_ACK : DSLA_MSG_BCAST_NACK,
                    m->session, body.data, body.len) != DSLA_OK)
        dsla_log_warn("broadcast %" PRIu64 ": the answer to %s is lost: %s", m->session, to,
                      dsla_last_error());
    dsla_proto_buf_free(&body);
}

static void refuse(dsla_bcast_peer_t *p, const char *to, const dsla_proto_bcast_t *m,
                   dsla_status_t st) {
    reply(p, to, m, st, dsla_last_error());
}

/* The BCAST_ID: the fresh id, or none to reuse the held communicator. */
static dsla_status_t send_id(dsla_bcast_peer_t *p, const char *to, const dsla_proto_bcast_t *m,
                             const uint8_t *id, uint32_t id_len) {
    dsla_proto_bcast_t *b = calloc(1, sizeof *b);
    if (!b) return dsla_error_oom("BCAST_ID");
    b->session = m->session;
    b->comm = m->comm;
    b->id_len = id_len;
    if (id_len) memcpy(b->id, id, id_len);
    dsla_proto_buf_t body = {0};
    dsla_status_t st = dsla_proto_bcast_encode(b, &body);
    if (st == DSLA_OK)
        st = p->ops.send(p->ops.user, to, DSLA_MSG_BCAST_ID, m->session, body.data, body.len);
    dsla_proto_buf_free(&body);
    free(b);
    return st;
}

/* Frees a job that will not run, with the communicators it holds. */
static void drop(dsla_bcast_peer_t *p, dsla_bcast_job_t *job) {
    const dsla_bcast_transport_t *t = p->cfg.transport;
    if (job->comm) t->comm_destroy(t->user, job->comm);
    if (job->old_comm) t->comm_destroy(t->user, job->old_comm);
    free(job);
}

/* Hands job to a worker; on failure answers NACK and frees it. */
static void run(dsla_bcast_peer_t *p, dsla_bcast_job_t *job) {
    p->busy = true;
    dsla_status_t st = p->ops.run(p->ops.user, job);
    if (st == DSLA_OK) return;
    p->busy = false;
    refuse(p, p->from, &job->msg, st);
    drop(p, job);
}

/* The file an OPEN names, resolved into out, when it lies inside the owner's directory (a path a
 * message names is hostile until checked: no "..", no link, leads out of it). */
static dsla_status_t owned(const dsla_bcast_peer_t *p, const char *path, char *out, size_t cap) {
    char real[PATH_MAX];
    const size_t n = strlen(p->owner_dir);
    if (!p->owner_dir[0])
        return dsla_error(DSLA_ERR_UNAVAILABLE, "broadcast: this peer sends no files");
    if (!realpath(path, real))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "broadcast: %s: %s", path, strerror(errno));
    if (strncmp(real, p->owner_dir, n) != 0 || real[n] != '/' ||
        snprintf(out, cap, "%s", real) >= (int)cap)
        return dsla_error(DSLA_ERR_PERMISSION_DENIED, "broadcast: %s is not a file under %s", path,
                          p->owner_dir);
    return DSLA_OK;
}

/* A job for m, the held communicator moved into it (reused) or to be dropped (fresh); NULL and
 * the reason when m cannot be taken. */
static dsla_bcast_job_t *take(dsla_bcast_peer_t *p, const char *from, const dsla_proto_bcast_t *m,
                              dsla_bcast_job_kind_t kind) {
    dsla_status_t st = DSLA_OK;
    if (!p->cfg.transport)
        st = dsla_error(DSLA_ERR_UNAVAILABLE, "broadcast: no transport here (built without NCCL, "
                                              "or no GPU); fetch in chunks");
    else if (p->busy)
        st = dsla_error(DSLA_ERR_UNAVAILABLE, "broadcast: another session is in progress here");
    else if (m->nranks < 2 || (kind == DSLA_BCAST_JOB_RECEIVE) != (m->rank > 0))
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "broadcast: rank %u of %u is not a %s", m->rank,
                        m->nranks, kind == DSLA_BCAST_JOB_RECEIVE ? "receiver" : "owner");
    else if (m->size == 0)
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "broadcast: size 0");
    else if (!m->fresh && (!p->comm || p->comm_key != m->comm))
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                        "broadcast: communicator %" PRIu64 " is not held here (%" PRIu64 " is)",
                        m->comm, p->comm ? p->comm_key : 0);
    else if (m->fresh && kind == DSLA_BCAST_JOB_RECEIVE && m->id_len == 0)
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "broadcast: a fresh BCAST_JOIN without id");
    dsla_bcast_job_t *job = st == DSLA_OK ? calloc(1, sizeof *job) : NULL;
    if (st == DSLA_OK && !job) st = dsla_error_oom("broadcast job");
    if (st == DSLA_OK && kind == DSLA_BCAST_JOB_RECEIVE) {
        if (!p->layer_cache[0])
            st = dsla_error(DSLA_ERR_UNAVAILABLE, "broadcast: this replica has no layer cache");
        else {
            const dsla_proto_plan_layer_t l = {
                .layer = m->layer, .version = m->version, .xxh64 = m->xxh64};
            st = dsla_transfer_cache_path(p->layer_cache, &l, job->path, sizeof job->path);
        }
    } else if (st == DSLA_OK)
        st = owned(p, m->path, job->path, sizeof job->path);
    if (st != DSLA_OK) {
        free(job);
        refuse(p, from, m, st);
        return NULL;
    }
    snprintf(p->from, sizeof p->from, "%s", from);
    job->kind = kind;
    job->msg = *m;
    job->transport = p->cfg.transport;
    job->timeout_ms = p->cfg.timeout_ms;
    job->slice = p->cfg.slice;
    if (m->fresh)
        job->old_comm = p->comm;
    else
        job->comm = p->comm;
    p->comm = NULL;
    p->comm_key = 0;
    return job;
}

static dsla_status_t decode(const void *body, size_t len, dsla_proto_bcast_t **m) {
    *m = malloc(sizeof **m);
    if (!*m) return dsla_error_oom("broadcast message");
    dsla_status_t st = dsla_proto_bcast_decode(body, len, *m);
    if (st != DSLA_OK) {
        free(*m);
        *m = NULL;
    }
    return st;
}

dsla_status_t dsla_bcast_peer_on_open(dsla_bcast_peer_t *p, const char *from, const void *body,
                                      size_t len) {
    dsla_proto_bcast_t *m = NULL;
    DSLA_TRY(decode(body, len, &m));
    dsla_bcast_job_t *job = take(p, from, m, m->fresh ? DSLA_BCAST_JOB_ID : DSLA_BCAST_JOB_SEND);
    if (job && !m->fresh && send_id(p, from, m, NULL, 0) != DSLA_OK) {
        /* the controller will time the session out; the communicator stays usable */
        dsla_log_warn("broadcast %" PRIu64 ": BCAST_ID to %s not sent: %s", m->session, from,
                      dsla_last_error());
        p->comm = job->comm;
        p->comm_key = m->comm;
        free(job);
        job = NULL;
    }
    if (job) run(p, job);
    free(m);
    return DSLA_OK;
}

dsla_status_t dsla_bcast_peer_on_join(dsla_bcast_peer_t *p, const char *from, const void *body,
                                      size_t len) {
    dsla_proto_bcast_t *m = NULL;
    DSLA_TRY(decode(body, len, &m));
    dsla_bcast_job_t *job = take(p, from, m, DSLA_BCAST_JOB_RECEIVE);
    if (job) run(p, job);
    free(m);
    return DSLA_OK;
}

void dsla_bcast_peer_done(dsla_bcast_peer_t *p, dsla_bcast_job_t *job, bool cancelled) {
    p->busy = false;
    if (cancelled) {
        drop(p, job);
        return;
    }
    if (job->status != DSLA_OK) {
        reply(p, p->from, &job->msg, job->status, job->message);
        free(job);
        return;
    }
    if (job->kind == DSLA_BCAST_JOB_ID) { /* the id out, then the sending */
        if (send_id(p, p->from, &job->msg, job->id, job->id_len) != DSLA_OK) {
            refuse(p, p->from, &job->msg, DSLA_ERR_UNAVAILABLE);
            drop(p, job);
            return;
        }
        job->msg.id_len = job->id_len;
        memcpy(job->msg.id, job->id, job->id_len);
        job->kind = DSLA_BCAST_JOB_SEND;
        run(p, job);
        return;
    }
    p->comm = job->comm;
    p->comm_key = job->msg.comm;
    dsla_log_info("broadcast %" PRIu64 ": rank %u %s layer %d version %u (%" PRIu64 " bytes)",
                  job->msg.session, job->msg.rank,
                  job->kind == DSLA_BCAST_JOB_SEND ? "sent" : "received and verified",
                  job->msg.layer, job->msg.version, job->msg.size);
    reply(p, p->from, &job->msg, DSLA_OK, "");
    free(job);
}

/* The controller's broadcast sessions: OPEN -> ID -> JOIN -> ACK/NACK (bcast_core.h). */
#include "actors/bcast_core.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/log.h"

typedef enum { STAGE_WAIT_ID, STAGE_TRANSFER } stage_t;

struct dsla_bcast_core {
    dsla_bcast_core_config_t cfg;
    dsla_bcast_core_ops_t ops;
    bool active;
    stage_t stage;
    uint64_t deadline_ms;
    dsla_bcast_session_t s;
    uint64_t next_session, next_comm;
    /* the communicator of the last session that ended with every rank ACKed: reused by a session
     * of the same members in the same ranks until a member dies */
    bool comm_valid;
    uint64_t comm_key;
    uint32_t comm_nranks;
    char comm_names[DSLA_PROTO_BCAST_RANKS_MAX][DSLA_PROTO_NAME_MAX + 1];
};

dsla_status_t dsla_bcast_core_create(dsla_bcast_core_t **out, const dsla_bcast_core_config_t *cfg,
                                     const dsla_bcast_core_ops_t *ops) {
    *out = NULL;
    if (!cfg->id_timeout_ms || !cfg->transfer_timeout_ms)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "broadcast: id_timeout_ms %u and transfer_timeout_ms %u must be above 0",
                          cfg->id_timeout_ms, cfg->transfer_timeout_ms);
    dsla_bcast_core_t *c = calloc(1, sizeof *c);
    if (!c) return dsla_error_oom("broadcast core");
    c->cfg = *cfg;
    c->ops = *ops;
    *out = c;
    return DSLA_OK;
}

void dsla_bcast_core_destroy(dsla_bcast_core_t **c) {
    if (!c || !*c) return;
    free(*c);
    *c = NULL;
}

bool dsla_bcast_core_busy(const dsla_bcast_core_t *c) {
    return c->active;
}

static void fail_rank(dsla_bcast_core_t *c, uint32_t rank, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_rank(dsla_bcast_core_t *c, uint32_t rank, const char *fmt, ...) {
    if (c->s.state[rank] != DSLA_BCAST_PENDING) return;
    c->s.state[rank] = DSLA_BCAST_FAILED;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->s.reason[rank], sizeof c->s.reason[rank], fmt, ap);
    va_end(ap);
    dsla_log_warn("broadcast %" PRIu64 ": %s (rank %u) fails: %s", c->s.session, c->s.names[rank],
                  rank, c->s.reason[rank]);
}

/* Without the owner nothing is sent: every rank still pending fails with the owner's reason. */
static void fail_all(dsla_bcast_core_t *c, const char *why) {
    for (uint32_t r = 0; r < c->s.nranks; r++)
        fail_rank(c, r, "%s", why);
}

/* Ends the session once no rank is pending: the communicator is kept for reuse only when every
 * rank ACKed. */
static void maybe_finish(dsla_bcast_core_t *c) {
    bool all_acked = true;
    for (uint32_t r = 0; r < c->s.nranks; r++) {
        if (c->s.state[r] == DSLA_BCAST_PENDING) return;
        all_acked &= c->s.state[r] == DSLA_BCAST_ACKED;
    }
    c->comm_valid = all_acked;
    if (all_acked) {
        c->comm_key = c->s.comm;
        c->comm_nranks = c->s.nranks;
        memcpy(c->comm_names, c->s.names, sizeof c->comm_names);
    }
    c->active = false;
    if (c->ops.done) c->ops.done(c->ops.user, &c->s);
}

/* The BCAST_OPEN or BCAST_JOIN for rank; not OK: not sent. */
static dsla_status_t send_to_rank(dsla_bcast_core_t *c, uint32_t rank, const uint8_t *id,
                                  uint32_t id_len) {
    dsla_proto_bcast_t *b = calloc(1, sizeof *b);
    if (!b) return dsla_error_oom("broadcast message");
    *b = (dsla_proto_bcast_t){.session = c->s.session,
                              .comm = c->s.comm,
                              .fresh = c->s.fresh,
                              .rank = rank,
                              .nranks = c->s.nranks,
                              .layer = c->s.layer,
                              .version = c->s.version,
                              .size = c->s.size,
                              .xxh64 = c->s.xxh64,
                              .id_len = id_len};
    if (id_len) memcpy(b->id, id, id_len);
    if (rank == 0) snprintf(b->path, sizeof b->path, "%s", c->s.path);
    dsla_proto_buf_t body = {0};
    dsla_status_t st = dsla_proto_bcast_encode(b, &body);
    if (st == DSLA_OK)
        st = c->ops.send(c->ops.user, c->s.names[rank],
                         rank == 0 ? DSLA_MSG_BCAST_OPEN : DSLA_MSG_BCAST_JOIN, c->s.session,
                         body.data, body.len);
    dsla_proto_buf_free(&body);
    free(b);
    return st;
}

static dsla_status_t check_name(const char *name, const char *what) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > DSLA_PROTO_NAME_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "broadcast: %s's name must be 1 to %d bytes, not %zu", what,
                          DSLA_PROTO_NAME_MAX, n);
    return DSLA_OK;
}

static dsla_status_t check_start(const dsla_bcast_file_t *f, const char *owner,
                                 const char *const *receivers, uint32_t n) {
    if (n == 0 || n >= DSLA_PROTO_BCAST_RANKS_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "broadcast: %u receivers outside [1, %d]", n,
                          DSLA_PROTO_BCAST_RANKS_MAX - 1);
    if (f->layer < 0 || f->layer >= DSLA_PROTO_LAYERS_MAX || f->size == 0 ||
        f->size > DSLA_PROTO_LAYER_FILE_MAX || !f->path || !f->path[0] ||
        strlen(f->path) > DSLA_PROTO_PATH_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "broadcast: layer %d, a file of %" PRIu64
                          " bytes (1 to %llu) at a path of 1 to %d bytes is required",
                          f->layer, f->size, (unsigned long long)DSLA_PROTO_LAYER_FILE_MAX,
                          DSLA_PROTO_PATH_MAX);
    DSLA_TRY(check_name(owner, "the owner"));
    for (uint32_t i = 0; i < n; i++) {
        DSLA_TRY(check_name(receivers[i], "a receiver"));
        if (strcmp(receivers[i], owner) == 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "broadcast: %s is the owner and a receiver", owner);
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(receivers[i], receivers[j]) == 0)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "broadcast: receiver %s named twice",
                                  receivers[i]);
    }
    return DSLA_OK;
}

dsla_status_t dsla_bcast_core_start(dsla_bcast_core_t *c, const dsla_bcast_file_t *file,
                                    const char *owner, const char *const *receivers, uint32_t n,
                                    uint64_t now_ms, uint64_t *session) {
    if (c->active)
        return dsla_error(DSLA_ERR_UNAVAILABLE, "broadcast: session %" PRIu64 " is in progress",
                          c->s.session);
    DSLA_TRY(check_start(file, owner, receivers, n));
    dsla_bcast_session_t *s = &c->s;
    memset(s, 0, sizeof *s);
    s->session = ++c->next_session;
    s->layer = file->layer;
    s->version = file->version;
    s->size = file->size;
    s->xxh64 = file->xxh64;
    snprintf(s->path, sizeof s->path, "%s", file->path);
    s->nranks = n + 1;
    snprintf(s->names[0], sizeof s->names[0], "%s", owner);
    for (uint32_t i = 0; i < n; i++)
        snprintf(s->names[i + 1], sizeof s->names[i + 1], "%s", receivers[i]);
    const bool same = c->comm_valid && c->comm_nranks == s->nranks &&
                      memcmp(c->comm_names, s->names, sizeof s->names) == 0;
    s->fresh = !same;
    s->comm = same ? c->comm_key : ++c->next_comm;
    c->comm_valid = false; /* until this session ends with every rank ACKed */
    c->active = true;
    c->stage = STAGE_WAIT_ID;
    c->deadline_ms = now_ms + c->cfg.id_timeout_ms;
    *session = s->session;
    dsla_log_info("broadcast %" PRIu64 ": layer %d version %u (%" PRIu64 " bytes) from %s to %u "
                  "receivers, %s communicator %" PRIu64,
                  s->session, s->layer, s->version, s->size, owner, n, s->fresh ? "fresh" : "kept",
                  s->comm);
    if (send_to_rank(c, 0, NULL, 0) != DSLA_OK) {
        char why[DSLA_PROTO_MESSAGE_MAX + 1];
        snprintf(why, sizeof why, "BCAST_OPEN to the owner not sent: %s", dsla_last_error());
        fail_all(c, why);
        maybe_finish(c);
    }
    return DSLA_OK;
}

/* The rank of `from` in the session in progress, or -1. */
static int rank_of(const dsla_bcast_core_t *c, const char *from) {
    for (uint32_t r = 0; c->active && r < c->s.nranks; r++)
        if (strcmp(c->s.names[r], from) == 0) return (int)r;
    return -1;
}

dsla_status_t dsla_bcast_core_on_id(dsla_bcast_core_t *c, const char *from, const void *body,
                                    size_t len, uint64_t now_ms) {
    dsla_proto_bcast_t *b = malloc(sizeof *b);
    if (!b) return dsla_error_oom("BCAST_ID");
    dsla_status_t st = dsla_proto_bcast_decode(body, len, b);
    if (st != DSLA_OK) {
        free(b);
        return st;
    }
    if (!c->active || c->stage != STAGE_WAIT_ID || b->session != c->s.session ||
        rank_of(c, from) != 0 || b->comm != c->s.comm) {
        dsla_log_warn("broadcast: BCAST_ID for session %" PRIu64 " from %s ignored (stale or not "
                      "the owner's)",
                      b->session, from);
        free(b);
        return DSLA_OK;
    }
    if (c->s.fresh && b->id_len == 0) {
        fail_all(c, "the owner's BCAST_ID carries no id for a fresh communicator");
        free(b);
        maybe_finish(c);
        return DSLA_OK;
    }
    c->stage = STAGE_TRANSFER;
    c->deadline_ms = now_ms + c->cfg.transfer_timeout_ms;
    for (uint32_t r = 1; r < c->s.nranks; r++)
        if (send_to_rank(c, r, b->id, c->s.fresh ? b->id_len : 0) != DSLA_OK)
            fail_rank(c, r, "BCAST_JOIN not sent: %s", dsla_last_error());
    free(b);
    maybe_finish(c);
    return DSLA_OK;
}

dsla_status_t dsla_bcast_core_on_reply(dsla_bcast_core_t *c, const char *from, bool nack,
                                       const void *body, size_t len, uint64_t now_ms) {
    (void)now_ms;
    dsla_proto_bcast_reply_t *r = malloc(sizeof *r);
    if (!r) return dsla_error_oom("BCAST_ACK");
    dsla_status_t st = dsla_proto_bcast_reply_decode(body, len, r);
    const int rank = st == DSLA_OK ? rank_of(c, from) : -1;
    if (st == DSLA_OK && (rank < 0 || r->session != c->s.session || (uint32_t)rank != r->rank)) {
        dsla_log_warn("broadcast: %s for session %" PRIu64 " rank %u from %s ignored (stale or "
                      "not that rank's)",
                      nack ? "BCAST_NACK" : "BCAST_ACK", r->session, r->rank, from);
    } else if (st == DSLA_OK && nack) {
        fail_rank(c, r->rank, "%s: %s", dsla_proto_code_name(r->code), r->reason);
        if (rank == 0) fail_all(c, "the owner failed; nothing was sent");
        maybe_finish(c);
    } else if (st == DSLA_OK && c->s.state[rank] == DSLA_BCAST_PENDING) {
        c->s.state[rank] = DSLA_BCAST_ACKED;
        maybe_finish(c);
    }
    free(r);
    return st;
}

void dsla_bcast_core_on_peer_dead(dsla_bcast_core_t *c, const char *name, uint64_t now_ms) {
    (void)now_ms;
    for (uint32_t r = 0; c->comm_valid && r < c->comm_nranks; r++)
        if (strcmp(c->comm_names[r], name) == 0) c->comm_valid = false;
    const int rank = rank_of(c, name);
    if (rank < 0) return;
    fail_rank(c, (uint32_t)rank, "the peer died");
    if (rank == 0) fail_all(c, "the owner died");
    maybe_finish(c);
}

void dsla_bcast_core_on_tick(dsla_bcast_core_t *c, uint64_t now_ms) {
    if (!c->active || now_ms < c->deadline_ms) return;
    const uint32_t ms =
        c->stage == STAGE_WAIT_ID ? c->cfg.id_timeout_ms : c->cfg.transfer_timeout_ms;
    char why[128];
    snprintf(why, sizeof why, "no answer within %u ms", ms);
    if (c->stage == STAGE_WAIT_ID) fail_rank(c, 0, "no BCAST_ID within %u ms", ms);
    fail_all(c, why);
    maybe_finish(c);
}

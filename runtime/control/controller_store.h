/* The controller's durable state (DESIGN.md section 7) in one SQLite database in WAL mode: settings
 * (the policy in its text form, the drain flag), each replica's adopted plan, the layer versions
 * announced to it (LAYER_READY) and the event history.
 * A controller started again on the same file picks up where the last one stopped.
 *
 * Contract: one store is used by one thread at a time (the controller's queue runs its jobs one
 * after another on workers, so that its loop never waits on SQLite); every write is its own
 * transaction, so a crash loses at most the write in progress. It stores text and numbers; it
 * knows nothing of policies, plans or messages. */
#ifndef DSLA_CONTROL_CONTROLLER_STORE_H
#define DSLA_CONTROL_CONTROLLER_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"

typedef struct dsla_ctl_store dsla_ctl_store_t;

/* Opens (creating when absent) the database at path; ":memory:" keeps nothing. */
dsla_status_t dsla_ctl_store_open(dsla_ctl_store_t **out, const char *path);
void dsla_ctl_store_close(dsla_ctl_store_t **s);

/* Settings: a value per key. get leaves out empty and *found false when the key is absent. */
dsla_status_t dsla_ctl_store_set(dsla_ctl_store_t *s, const char *key, const char *value);
dsla_status_t dsla_ctl_store_get(dsla_ctl_store_t *s, const char *key, char *out, size_t cap,
                                 bool *found);

/* A replica's plan as the controller last knew it adopted: its DSLA layer count, the engine's plan
 * id and its layers in text ("3@1:0123456789abcdef,1@1:..."). */
typedef struct {
    char replica[64];
    int n_dsla;
    uint64_t plan_id;
    char layers[4096];
} dsla_ctl_plan_row_t;

dsla_status_t dsla_ctl_store_put_plan(dsla_ctl_store_t *s, const dsla_ctl_plan_row_t *row);
typedef void (*dsla_ctl_plan_fn)(void *user, const dsla_ctl_plan_row_t *row);
dsla_status_t dsla_ctl_store_each_plan(dsla_ctl_store_t *s, dsla_ctl_plan_fn fn, void *user);

/* A layer version the controller verified and catalogued: where it lies, what it is, and the
 * size and xxh64 of the whole file. One row per path; a newer announcement replaces it. */
typedef struct {
    char path[1024];
    int layer;
    int version;
    uint64_t checksum; /* the layer version's own */
    uint64_t size;
    uint64_t xxh64;
} dsla_ctl_layer_row_t;

dsla_status_t dsla_ctl_store_put_layer(dsla_ctl_store_t *s, const dsla_ctl_layer_row_t *row);
typedef void (*dsla_ctl_layer_fn)(void *user, const dsla_ctl_layer_row_t *row);
/* Visits them in the order they were first stored. */
dsla_status_t dsla_ctl_store_each_layer(dsla_ctl_store_t *s, dsla_ctl_layer_fn fn, void *user);

/* Events the history keeps: the newest this many, older ones deleted as new ones come. At most
 * ~600 bytes each, a few tens of MB; months of a busy cluster's plan changes. */
#define DSLA_CTL_EVENTS_KEEP 100000

/* The event history: wall-clock time in milliseconds since the epoch, a short event name and its
 * details. each_event visits the newest limit events, oldest first. Only the newest
 * DSLA_CTL_EVENTS_KEEP (or set_events_keep's number) are kept. */
dsla_status_t dsla_ctl_store_add_event(dsla_ctl_store_t *s, int64_t time_ms, const char *event,
                                       const char *details);
/* Changes the retention (keep <= 0: DSLA_CTL_EVENTS_KEEP); tests use a few. */
void dsla_ctl_store_set_events_keep(dsla_ctl_store_t *s, int64_t keep);
typedef void (*dsla_ctl_event_fn)(void *user, int64_t id, int64_t time_ms, const char *event,
                                  const char *details);
dsla_status_t dsla_ctl_store_each_event(dsla_ctl_store_t *s, int limit, dsla_ctl_event_fn fn,
                                        void *user);

/* One write as a value, so that it can be queued and applied later on another thread. */
typedef enum {
    DSLA_CTL_WRITE_SETTING = 0,
    DSLA_CTL_WRITE_PLAN,
    DSLA_CTL_WRITE_LAYER,
    DSLA_CTL_WRITE_EVENT,
} dsla_ctl_write_kind_t;

typedef struct {
    dsla_ctl_write_kind_t kind;
    union {
        struct {
            char key[32];
            char value[512];
        } setting;
        dsla_ctl_plan_row_t plan;
        dsla_ctl_layer_row_t layer;
        struct {
            int64_t time_ms;
            char name[32];
            char details[1024];
        } event;
    };
} dsla_ctl_write_t;

/* Applies w with the set, put or add call of its kind. */
dsla_status_t dsla_ctl_store_apply(dsla_ctl_store_t *s, const dsla_ctl_write_t *w);

#endif

/* SQLite jobs one at a time on the actor's workers (controller_writer.h). */
#include "actors/controller_writer.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/core/log.h"

typedef struct job {
    struct job *next;
    dsla_ctl_writer_t *writer;
    dsla_ctl_read_fn read; /* NULL: a write */
    dsla_ctl_read_done_fn done;
    void *user;
    dsla_status_t status;
    char error[512];
    dsla_ctl_write_t write;
} job_t;

struct dsla_ctl_writer {
    dsla_ctl_store_t *store;
    dsla_actor_t *actor;        /* NULL: jobs run inline */
    job_t *head, *tail;         /* waiting */
    bool busy;                  /* one job on a worker */
    dsla_log_limit_t fail_warn; /* a broken database fails every write */
};

/* The store half: on a worker, or inline. */
static void job_run(job_t *j) {
    if (j->read) {
        j->read(j->writer->store, j->user);
        return;
    }
    j->status = dsla_ctl_store_apply(j->writer->store, &j->write);
    if (j->status != DSLA_OK) snprintf(j->error, sizeof j->error, "%s", dsla_last_error());
}

static void job_finish(dsla_actor_t *a, job_t *j) {
    if (j->read && j->done) j->done(a, j->user);
    if (!j->read && j->status != DSLA_OK)
        DSLA_LOG_LIMITED(&j->writer->fail_warn, DSLA_LOG_ERROR, "%s", j->error);
    free(j);
}

static void pump(dsla_ctl_writer_t *w);

static void on_work(void *user) {
    job_run(user);
}

static void on_work_done(dsla_actor_t *a, void *user, bool cancelled) {
    job_t *j = user;
    dsla_ctl_writer_t *w = j->writer;
    if (cancelled) job_run(j); /* the actor is stopping: finish it here, still in order */
    w->busy = false;
    job_finish(a, j);
    pump(w);
}

static void pump(dsla_ctl_writer_t *w) {
    while (!w->busy && w->head) {
        job_t *j = w->head;
        w->head = j->next;
        if (!w->head) w->tail = NULL;
        if (w->actor && dsla_actor_work(w->actor, on_work, on_work_done, j) == DSLA_OK) {
            w->busy = true;
            return;
        }
        job_run(j); /* no actor yet, or it is stopping */
        job_finish(w->actor, j);
    }
}

static void push(dsla_ctl_writer_t *w, job_t *j) {
    j->writer = w;
    if (w->tail)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    pump(w);
}

dsla_status_t dsla_ctl_writer_create(dsla_ctl_writer_t **out, dsla_ctl_store_t *store) {
    *out = calloc(1, sizeof **out);
    if (!*out) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "controller: out of memory");
    (*out)->store = store;
    return DSLA_OK;
}

void dsla_ctl_writer_destroy(dsla_ctl_writer_t **w) {
    if (!w || !*w) return;
    dsla_ctl_writer_detach(*w);
    free(*w);
    *w = NULL;
}

void dsla_ctl_writer_attach(dsla_ctl_writer_t *w, dsla_actor_t *a) {
    w->actor = a;
}

void dsla_ctl_writer_detach(dsla_ctl_writer_t *w) {
    w->actor = NULL;
    pump(w);
}

void dsla_ctl_writer_write(dsla_ctl_writer_t *w, const dsla_ctl_write_t *write) {
    job_t *j = calloc(1, sizeof *j);
    if (!j) {
        dsla_log_error("controller: out of memory queueing a database write; it is lost");
        return;
    }
    j->write = *write;
    push(w, j);
}

dsla_status_t dsla_ctl_writer_read(dsla_ctl_writer_t *w, dsla_ctl_read_fn read,
                                   dsla_ctl_read_done_fn done, void *user) {
    job_t *j = calloc(1, sizeof *j);
    if (!j) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "controller: out of memory");
    j->read = read;
    j->done = done;
    j->user = user;
    push(w, j);
    return DSLA_OK;
}

/* The controller's SQLite work off its loop: a queue of jobs on one store (controller_store.h),
 * run one at a time, in the order they were queued, on the actor's worker pool
 * (dsla_actor_work). Writes are values (dsla_ctl_write_t) copied in; reads (the history) run a
 * function on the worker and hand their result back through a done callback on the loop. Since
 * reads queue behind writes, a read sees every write queued before it.
 *
 * Contract: everything but the worker half runs on the actor's thread, or on its creator's before
 * the actor starts and after it stops; without an attached actor (start-up) and once detached
 * (dsla_ctl_writer_detach, from on_stop) jobs run inline, so no write is lost at either end. A
 * write that fails is logged; the controller goes on with its state in memory. */
#ifndef DSLA_ACTORS_CONTROLLER_WRITER_H
#define DSLA_ACTORS_CONTROLLER_WRITER_H

#include "runtime/actor/actor.h"
#include "runtime/control/controller_store.h"

typedef struct dsla_ctl_writer dsla_ctl_writer_t;

/* store is borrowed: close it after destroying the writer. */
dsla_status_t dsla_ctl_writer_create(dsla_ctl_writer_t **out, dsla_ctl_store_t *store);
/* Runs what is still queued inline, then frees. */
void dsla_ctl_writer_destroy(dsla_ctl_writer_t **w);

/* From on_start: jobs go to a's workers from now on. */
void dsla_ctl_writer_attach(dsla_ctl_writer_t *w, dsla_actor_t *a);
/* From on_stop: what is still queued runs now, inline, and later jobs too. */
void dsla_ctl_writer_detach(dsla_ctl_writer_t *w);

void dsla_ctl_writer_write(dsla_ctl_writer_t *w, const dsla_ctl_write_t *write);

/* read(store, user) on a worker after every job queued before it, then done(a, user) on the
 * actor's thread (a is NULL when the writer ran it inline without an actor). */
typedef void (*dsla_ctl_read_fn)(dsla_ctl_store_t *store, void *user);
typedef void (*dsla_ctl_read_done_fn)(dsla_actor_t *a, void *user);
dsla_status_t dsla_ctl_writer_read(dsla_ctl_writer_t *w, dsla_ctl_read_fn read,
                                   dsla_ctl_read_done_fn done, void *user);

#endif

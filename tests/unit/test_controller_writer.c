/* The controller's SQLite queue (actors/controller_writer.h) on a real actor: writes before the
 * actor starts run inline; on the actor they run on workers one at a time and in order, a read
 * queued behind writes sees every one of them, and writes still queued when the actor stops are
 * applied before it is gone. */
#include "tests/testutil.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actors/controller_writer.h"
#include "runtime/actor/actor.h"

enum { BEFORE = 3, BURST = 200, AFTER = 50, WAIT_MS = 10000 };

typedef struct {
    dsla_ctl_writer_t *writer;
    atomic_int read_done;
    atomic_int read_count; /* events the read saw */
    atomic_int in_order;   /* 1 when their details were e0, e1, ... */
    int seen, expect_next;
    bool ordered;
} fixture_t;

static void write_event(dsla_ctl_writer_t *w, int i) {
    dsla_ctl_write_t ev = {.kind = DSLA_CTL_WRITE_EVENT};
    ev.event.time_ms = 1000 + i;
    snprintf(ev.event.name, sizeof ev.event.name, "test");
    snprintf(ev.event.details, sizeof ev.event.details, "e%d", i);
    dsla_ctl_writer_write(w, &ev);
}

static void visit(void *user, int64_t id, int64_t time_ms, const char *event, const char *details) {
    (void)id;
    (void)event;
    fixture_t *f = user;
    char want[32];
    snprintf(want, sizeof want, "e%d", f->expect_next++);
    if (strcmp(details, want) != 0 || time_ms != 1000 + f->expect_next - 1) f->ordered = false;
    f->seen++;
}

static void read_all(dsla_ctl_store_t *s, void *user) {
    fixture_t *f = user;
    f->ordered = true;
    if (dsla_ctl_store_each_event(s, 100000, visit, f) != DSLA_OK) f->seen = -1;
}

static void read_done(dsla_actor_t *a, void *user) {
    (void)a;
    fixture_t *f = user;
    atomic_store(&f->read_count, f->seen);
    atomic_store(&f->in_order, f->ordered ? 1 : 0);
    atomic_store(&f->read_done, 1);
}

static void on_start(dsla_actor_t *a, void *user) {
    fixture_t *f = user;
    dsla_ctl_writer_attach(f->writer, a);
    for (int i = BEFORE; i < BEFORE + BURST; i++)
        write_event(f->writer, i);
    dsla_ctl_writer_read(f->writer, read_all, read_done, f);
    for (int i = BEFORE + BURST; i < BEFORE + BURST + AFTER; i++)
        write_event(f->writer, i);
}

static void on_stop(dsla_actor_t *a, void *user) {
    (void)a;
    dsla_ctl_writer_detach(((fixture_t *)user)->writer);
}

static void count_event(void *user, int64_t id, int64_t time_ms, const char *event,
                        const char *details) {
    (void)id;
    (void)time_ms;
    (void)event;
    (void)details;
    (*(int *)user)++;
}

static void test_order_and_stop(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char db[1024];
    snprintf(db, sizeof db, "%s/controller.db", dir);
    dsla_ctl_store_t *store = NULL;
    assert_int_equal(dsla_ctl_store_open(&store, db), DSLA_OK);
    fixture_t *f = calloc(1, sizeof *f);
    assert_int_equal(dsla_ctl_writer_create(&f->writer, store), DSLA_OK);
    for (int i = 0; i < BEFORE; i++) /* no actor yet: applied at once */
        write_event(f->writer, i);
    int n = 0;
    assert_int_equal(dsla_ctl_store_each_event(store, 100, count_event, &n), DSLA_OK);
    assert_int_equal(n, BEFORE);

    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    dsla_actor_def_t def = {.name = "writer",
                            .ctx = ctx,
                            .bind = {"inproc://writer-test"},
                            .on_start = on_start,
                            .on_stop = on_stop,
                            .user = f};
    dsla_actor_t *a = NULL;
    assert_int_equal(dsla_actor_create(&a, &def), DSLA_OK);
    struct timespec tick = {0, 1000000};
    for (int ms = 0; !atomic_load(&f->read_done) && ms < WAIT_MS; ms++)
        nanosleep(&tick, NULL);
    assert_int_equal(atomic_load(&f->read_done), 1);
    assert_int_equal(atomic_load(&f->read_count), BEFORE + BURST); /* all before it, none after */
    assert_int_equal(atomic_load(&f->in_order), 1);
    dsla_actor_destroy(&a); /* at once: writes still queued are applied on the way out */
    n = 0;
    assert_int_equal(dsla_ctl_store_each_event(store, 100000, count_event, &n), DSLA_OK);
    assert_int_equal(n, BEFORE + BURST + AFTER);
    dsla_ctl_writer_destroy(&f->writer);
    dsla_ctl_writer_destroy(&f->writer);
    dsla_actor_ctx_destroy(&ctx);
    dsla_ctl_store_close(&store);
    free(f);
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

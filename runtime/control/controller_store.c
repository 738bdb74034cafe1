/* The controller's SQLite database (controller_store.h). */
#include "runtime/control/controller_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

/* A writer of another process holding the lock is waited for this long before the write fails. */
enum { STORE_BUSY_TIMEOUT_MS = 5000 };

struct dsla_ctl_store {
    sqlite3 *db;
    char path[512];
    int64_t events_keep;
};

static const char schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS plans (replica TEXT PRIMARY KEY, n_dsla INTEGER NOT NULL,"
    " plan_id INTEGER NOT NULL, layers TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS layers (path TEXT PRIMARY KEY, layer INTEGER NOT NULL,"
    " version INTEGER NOT NULL, checksum INTEGER NOT NULL, size INTEGER NOT NULL,"
    " xxh64 INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " time_ms INTEGER NOT NULL, event TEXT NOT NULL, details TEXT NOT NULL);";

static dsla_status_t fail(dsla_ctl_store_t *s, const char *what) {
    return dsla_error(DSLA_ERR_IO, "controller database %s: %s: %s", s->path, what,
                      sqlite3_errmsg(s->db));
}

dsla_status_t dsla_ctl_store_open(dsla_ctl_store_t **out, const char *path) {
    *out = NULL;
    dsla_ctl_store_t *s = calloc(1, sizeof *s);
    if (!s) return dsla_error_oom("controller database");
    s->events_keep = DSLA_CTL_EVENTS_KEEP;
    snprintf(s->path, sizeof s->path, "%s", path);
    dsla_status_t st = DSLA_OK;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK)
        st = fail(s, "cannot open (check the directory exists and is writable)");
    else if (sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS) != SQLITE_OK ||
             sqlite3_exec(s->db, schema, NULL, NULL, NULL) != SQLITE_OK)
        st = fail(s, "cannot set up its tables");
    if (st != DSLA_OK) {
        dsla_ctl_store_close(&s);
        return st;
    }
    *out = s;
    return DSLA_OK;
}

void dsla_ctl_store_close(dsla_ctl_store_t **s) {
    if (!s || !*s) return;
    sqlite3_close((*s)->db);
    free(*s);
    *s = NULL;
}

static dsla_status_t prepare(dsla_ctl_store_t *s, const char *sql, sqlite3_stmt **stmt) {
    if (sqlite3_prepare_v2(s->db, sql, -1, stmt, NULL) != SQLITE_OK) return fail(s, sql);
    return DSLA_OK;
}

/* Steps a statement that returns no rows and finalises it. */
static dsla_status_t run(dsla_ctl_store_t *s, sqlite3_stmt *stmt, const char *what) {
    int rc = sqlite3_step(stmt);
    dsla_status_t st = rc == SQLITE_DONE ? DSLA_OK : fail(s, what);
    sqlite3_finalize(stmt);
    return st;
}

dsla_status_t dsla_ctl_store_set(dsla_ctl_store_t *s, const char *key, const char *value) {
    sqlite3_stmt *stmt = NULL;
    DSLA_TRY(prepare(s, "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)", &stmt));
    sqlite3_bind_text(stmt, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt, 2, value, -1, SQLITE_TRANSIENT);
    return run(s, stmt, "writing a setting");
}

static void copy_text(sqlite3_stmt *stmt, int col, char *out, size_t cap) {
    const unsigned char *t = sqlite3_column_text(stmt, col);
    snprintf(out, cap, "%s", t ? (const char *)t : "");
}

dsla_status_t dsla_ctl_store_get(dsla_ctl_store_t *s, const char *key, char *out, size_t cap,
                                 bool *found) {
    *found = false;
    if (cap) out[0] = '\0';
    sqlite3_stmt *stmt = NULL;
    DSLA_TRY(prepare(s, "SELECT value FROM settings WHERE key = ?1", &stmt));
    sqlite3_bind_text(stmt, 1, key, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        copy_text(stmt, 0, out, cap);
        *found = true;
    }
    dsla_status_t st =
        rc == SQLITE_ROW || rc == SQLITE_DONE ? DSLA_OK : fail(s, "reading a setting");
    sqlite3_finalize(stmt);
    return st;
}

dsla_status_t dsla_ctl_store_put_plan(dsla_ctl_store_t *s, const dsla_ctl_plan_row_t *row) {
    sqlite3_stmt *stmt = NULL;
    DSLA_TRY(prepare(s,
                     "INSERT OR REPLACE INTO plans (replica, n_dsla, plan_id, layers) "
                     "VALUES (?1, ?2, ?3, ?4)",
                     &stmt));
    sqlite3_bind_text(stmt, 1, row->replica, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(stmt, 2, row->n_dsla);
    sqlite3_bind_int64(stmt, 3, (sqlite3_int64)row->plan_id);
    sqlite3_bind_text(stmt, 4, row->layers, -1, SQLITE_TRANSIENT);
    return run(s, stmt, "writing a plan");
}

dsla_status_t dsla_ctl_store_each_plan(dsla_ctl_store_t *s, dsla_ctl_plan_fn fn, void *user) {
    sqlite3_stmt *stmt = NULL;
    DSLA_TRY(
        prepare(s, "SELECT replica, n_dsla, plan_id, layers FROM plans ORDER BY replica", &stmt));
    dsla_ctl_plan_row_t *row = malloc(sizeof *row);
    if (!row) {
        sqlite3_finalize(stmt);
        return dsla_error_oom("controller database");
    }
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        copy_text(stmt, 0, row->replica, sizeof row->replica);
        row->n_dsla = sqlite3_column_int(stmt, 1);
        row->plan_id = (uint64_t)sqlite3_column_int64(stmt, 2);
        copy_text(stmt, 3, row->layers, sizeof row->layers);
        fn(user, row);
    }
    free(row);
    dsla_status_t st = rc == SQLITE_DONE ? DSLA_OK : fail(s, "reading plans");
    sqlite3_finalize(stmt);
    return st;
}

/* 64-bit checksums are stored as SQLite's signed integers, bit for bit. */
dsla_status_t dsla_ctl_store_put_layer(dsla_ctl_store_t *s, const dsla_ctl_layer_row_t *row) {
    sqlite3_stmt *stmt = NULL;
    DSLA_TRY(prepare(s,
                     "INSERT OR REPLACE INTO layers (path, layer, version, checksum, size, xxh64) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                     &stmt));
    sqlite3_bind_text(stmt, 1, row->path, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(stmt, 2, row->layer);
    sqlite3_bind_int(stmt, 3, row->version);
    sqlite3_bind_int64(stmt, 4, (sqlite3_int64)row->checksum);
    sqlite3_bind_int64(stmt, 5, (sqlite3_int64)row->size);
    sqlite3_bind_int64(stmt, 6, (sqlite3_int64)row->xxh64);
    return run(s, stmt, "writing a layer version");
}

dsla_status_t dsla_ctl_store_each_layer(dsla_ctl_store_t *s, dsla_ctl_layer_fn fn, void *user) {
    sqlite3_stmt *stmt = NULL;
    DSLA_TRY(prepare(s,
                     "SELECT path, layer, version, checksum, size, xxh64 FROM layers ORDER BY "
                     "rowid",
                     &stmt));
    dsla_ctl_layer_row_t row;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        copy_text(stmt, 0, row.path, sizeof row.path);
        row.layer = sqlite3_column_int(stmt, 1);
        row.version = sqlite3_column_int(stmt, 2);
        row.checksum = (uint64_t)sqlite3_column_int64(stmt, 3);
        row.size = (uint64_t)sqlite3_column_int64(stmt, 4);
        row.xxh64 = (uint64_t)sqlite3_column_int64(stmt, 5);
        fn(user, &row);
    }
    dsla_status_t st = rc == SQLITE_DONE ? DSLA_OK : fail(s, "reading layer versions");
    sqlite3_finalize(stmt);
    return st;
}

dsla_status_t dsla_ctl_store_add_event(dsla_ctl_store_t *s, int64_t time_ms, const char *event,
                                       const char *details) {
    sqlite3_stmt *stmt = NULL;
    DSLA_TRY(prepare(s, "INSERT INTO events (time_ms, event, details) VALUES (?1, ?2, ?3)", &stmt));
    sqlite3_bind_int64(stmt, 1, time_ms);
    sqlite3_bind_text(stmt, 2, event, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(stmt, 3, details, -1, SQLITE_TRANSIENT);
    DSLA_TRY(run(s, stmt, "writing an event"));
    /* retention: the oldest rows beyond events_keep go with each insert (a primary-key range,
     * one row in the steady state), so no sender can grow the file without bound */
    DSLA_TRY(prepare(s, "DELETE FROM events WHERE id <= ?1", &stmt));
    sqlite3_bind_int64(stmt, 1, sqlite3_last_insert_rowid(s->db) - s->events_keep);
    return run(s, stmt, "pruning old events");
}

void dsla_ctl_store_set_events_keep(dsla_ctl_store_t *s, int64_t keep) {
    s->events_keep = keep > 0 ? keep : DSLA_CTL_EVENTS_KEEP;
}

dsla_status_t dsla_ctl_store_each_event(dsla_ctl_store_t *s, int limit, dsla_ctl_event_fn fn,
                                        void *user) {
    sqlite3_stmt *stmt = NULL;
    DSLA_TRY(prepare(s,
                     "SELECT id, time_ms, event, details FROM (SELECT * FROM events ORDER BY id "
                     "DESC LIMIT ?1) ORDER BY id",
                     &stmt));
    sqlite3_bind_int(stmt, 1, limit);
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW)
        fn(user, sqlite3_column_int64(stmt, 0), sqlite3_column_int64(stmt, 1),
           (const char *)sqlite3_column_text(stmt, 2), (const char *)sqlite3_column_text(stmt, 3));
    dsla_status_t st = rc == SQLITE_DONE ? DSLA_OK : fail(s, "reading events");
    sqlite3_finalize(stmt);
    return st;
}

dsla_status_t dsla_ctl_store_apply(dsla_ctl_store_t *s, const dsla_ctl_write_t *w) {
    switch (w->kind) {
    case DSLA_CTL_WRITE_SETTING:
        return dsla_ctl_store_set(s, w->setting.key, w->setting.value);
    case DSLA_CTL_WRITE_PLAN:
        return dsla_ctl_store_put_plan(s, &w->plan);
    case DSLA_CTL_WRITE_LAYER:
        return dsla_ctl_store_put_layer(s, &w->layer);
    case DSLA_CTL_WRITE_EVENT:
        return dsla_ctl_store_add_event(s, w->event.time_ms, w->event.name, w->event.details);
    }
    return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "controller database: write of kind %d",
                      (int)w->kind);
}

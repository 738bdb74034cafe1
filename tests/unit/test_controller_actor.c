/* The controller actor's shell (actors/controller.c) in-process, without a model: a fake replica
 * actor over inproc reports its load (SET_PLAN comes back), fetches a chunk and a version the
 * catalogue lacks (LAYER_CHUNK and ERROR come back by its name from the worker), and announces a
 * version, which is refused (PERMISSION_DENIED: only the distiller may); a fake distiller's
 * announcement of it is verified on a worker and catalogued; an admin client over tcp reads the
 * status and the history, which the SQLite queue answers behind the writes before it. */
#include "tests/testutil.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actors/controller.h"
#include "proto/dsla_client.h"
#include "runtime/control/layer_catalogue.h"
#include "runtime/model/dsla_layer.h"

enum { WAIT_MS = 20000, BEAT_MS = 100, CHUNK = 64 };

static void ok(dsla_status_t st) {
    if (st != DSLA_OK) fail_msg("%s: %s", dsla_status_name(st), dsla_last_error());
}

/* What the fake replica saw, written on its thread. */
typedef struct {
    dsla_proto_layer_fetch_t good; /* a catalogued version's first chunk */
    dsla_proto_layer_ready_t ready;
    atomic_int plans, chunks, errors, send_failures;
    atomic_uint chunk_len;
    atomic_ullong chunk_id;
    atomic_uint error_ids; /* bit i: an ERROR answered the message of id i */
} replica_t;

static void send_body(dsla_actor_t *a, replica_t *r, uint32_t type, uint64_t id, dsla_status_t st,
                      dsla_proto_buf_t *body) {
    if (st != DSLA_OK ||
        dsla_actor_send(a, "controller", type, id, body->data, body->len) != DSLA_OK)
        atomic_fetch_add(&r->send_failures, 1);
    dsla_proto_buf_free(body);
}

static void replica_start(dsla_actor_t *a, void *user) {
    replica_t *r = user;
    dsla_proto_buf_t body = {0};
    dsla_proto_load_report_t *rep = calloc(1, sizeof *rep);
    rep->num_layers = 8;
    send_body(a, r, DSLA_MSG_LOAD_REPORT, 1, dsla_proto_load_report_encode(rep, &body), &body);
    free(rep);
    send_body(a, r, DSLA_MSG_LAYER_FETCH, 2, dsla_proto_layer_fetch_encode(&r->good, &body), &body);
    dsla_proto_layer_fetch_t bad = r->good;
    bad.layer = 99;
    send_body(a, r, DSLA_MSG_LAYER_FETCH, 3, dsla_proto_layer_fetch_encode(&bad, &body), &body);
    /* refused: only the controller's distiller may announce versions */
    send_body(a, r, DSLA_MSG_LAYER_READY, 4, dsla_proto_layer_ready_encode(&r->ready, &body),
              &body);
}

/* The fake distiller announces the same version, which is taken. */
static void distiller_start(dsla_actor_t *a, void *user) {
    replica_t *r = user;
    dsla_proto_buf_t body = {0};
    send_body(a, r, DSLA_MSG_LAYER_READY, 5, dsla_proto_layer_ready_encode(&r->ready, &body),
              &body);
}

static void on_set_plan(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    replica_t *r = user;
    dsla_proto_set_plan_t p = {0};
    if (dsla_proto_set_plan_decode(msg->env->body, msg->env->body_len, &p) == DSLA_OK &&
        p.n_layers == 1)
        atomic_fetch_add(&r->plans, 1);
    dsla_proto_set_plan_free(&p);
}

static void on_chunk(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    replica_t *r = user;
    dsla_proto_layer_chunk_t c;
    if (dsla_proto_layer_chunk_decode(msg->env->body, msg->env->body_len, &c) != DSLA_OK) return;
    atomic_store(&r->chunk_len, (unsigned)c.len);
    atomic_store(&r->chunk_id, msg->env->id);
    atomic_fetch_add(&r->chunks, 1);
}

static void on_error(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    replica_t *r = user;
    if (msg->env->id < 32) atomic_fetch_or(&r->error_ids, 1u << msg->env->id);
    atomic_fetch_add(&r->errors, 1);
}

static bool wait_for(atomic_int *v, int target) {
    struct timespec tick = {0, 2000000};
    for (int waited = 0; atomic_load(v) < target; waited += 2) {
        if (waited > WAIT_MS) return false;
        nanosleep(&tick, NULL);
    }
    return true;
}

static dsla_status_t chunk_decode(const void *body, size_t len, void *out) {
    return dsla_proto_layer_chunk_decode(body, len, out);
}

static dsla_status_t admin_reply_decode(const void *body, size_t len, void *out) {
    return dsla_proto_admin_reply_decode(body, len, out);
}

/* One admin command; returns the reply text (caller frees) or NULL with result's message. */
static char *admin(dsla_client_t *client, const char *w1, const char *w2) {
    dsla_proto_admin_t *cmd = calloc(1, sizeof *cmd);
    snprintf(cmd->args[cmd->n_args++], sizeof cmd->args[0], "%s", w1);
    if (w2) snprintf(cmd->args[cmd->n_args++], sizeof cmd->args[0], "%s", w2);
    dsla_proto_buf_t body = {0};
    ok(dsla_proto_admin_encode(cmd, &body));
    dsla_proto_admin_reply_t reply = {0};
    dsla_client_result_t result = {0};
    dsla_proto_code_t code = dsla_client_call(client, DSLA_MSG_ADMIN, &body, DSLA_MSG_ADMIN_REPLY,
                                              admin_reply_decode, &reply, 10000, &result);
    dsla_proto_buf_free(&body);
    free(cmd);
    if (code != DSLA_CODE_OK) fail_msg("admin %s: %s", w1, result.message);
    return reply.text;
}

static void write_version(const char *dir, int layer) {
    dsla_model_config_t cfg = {.hidden_size = 8, .num_layers = 8, .num_heads = 2, .head_dim = 4};
    dsla_dsla_layer_t *l = NULL;
    ok(dsla_dsla_layer_create(&l, &cfg, layer));
    for (size_t i = 0; i < l->numel; i++)
        l->data[i] = (float)(i % 3) + 0.5f * (float)layer;
    dsla_layer_version_meta_t meta = {.version = 1, .order = {1, 0, 2}, .n_order = 3};
    char path[1024];
    snprintf(path, sizeof path, "%s/layer-%d.safetensors", dir, layer);
    ok(dsla_dsla_layer_save(l, path, &meta));
    dsla_dsla_layer_destroy(&l);
}

static void test_shell(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    write_version(dir, 0);
    write_version(dir, 1);
    replica_t *r = calloc(1, sizeof *r);
    dsla_catalogue_t *cat = calloc(1, sizeof *cat);
    ok(dsla_catalogue_scan(cat, dir));
    assert_int_equal(cat->entries[0].layer, 1);
    uint64_t size = 0, xxh = 0;
    ok(dsla_catalogue_file_digest(cat->entries[0].path, &size, &xxh));
    r->good = (dsla_proto_layer_fetch_t){1, 1, xxh, 0, CHUNK};

    dsla_actor_ctx_t *ctx = NULL;
    ok(dsla_actor_ctx_create(&ctx));
    char db[1024];
    snprintf(db, sizeof db, "%s/controller.db", dir);
    dsla_controller_config_t cc = {.ctx = ctx,
                                   .bind = {"inproc://controller", "tcp://127.0.0.1:*"},
                                   .layers_dir = dir,
                                   .db_path = db,
                                   .policy = "manual layers=1",
                                   .heartbeat_ms = BEAT_MS};
    dsla_controller_t *ctl = NULL;
    ok(dsla_controller_create(&ctl, &cc));
    write_version(dir, 2); /* after the scan: announced, as a distiller does */
    char path[1024];
    snprintf(path, sizeof path, "%s/layer-2.safetensors", dir);
    dsla_catalogue_entry_t e;
    ok(dsla_catalogue_read(path, &e, NULL, NULL));
    r->ready = (dsla_proto_layer_ready_t){
        .layer = 2, .version = 1, .checksum = e.checksum, .position = 2, .n_order = 3};
    r->ready.order[0] = 1;
    r->ready.order[2] = 2;
    snprintf(r->ready.path, sizeof r->ready.path, "%s", path);
    ok(dsla_catalogue_file_digest(path, &r->ready.size, &r->ready.xxh64));
    static const dsla_actor_handler_t handlers[] = {{DSLA_MSG_SET_PLAN, on_set_plan},
                                                    {DSLA_MSG_LAYER_CHUNK, on_chunk},
                                                    {DSLA_MSG_ERROR, on_error}};
    dsla_actor_peer_def_t peer = {"controller", "inproc://controller"};
    dsla_actor_def_t def = {.name = "serving0",
                            .ctx = ctx,
                            .bind = {"inproc://serving0"},
                            .peers = &peer,
                            .n_peers = 1,
                            .handlers = handlers,
                            .n_handlers = 3,
                            .on_start = replica_start,
                            .user = r,
                            .heartbeat_ms = BEAT_MS};
    dsla_actor_t *replica = NULL;
    ok(dsla_actor_create(&replica, &def));

    assert_true(wait_for(&r->plans, 1));
    assert_true(wait_for(&r->chunks, 1));
    assert_true(wait_for(&r->errors, 2));
    assert_int_equal(atomic_load(&r->send_failures), 0);
    assert_int_equal(atomic_load(&r->chunk_len), CHUNK);
    assert_int_equal(atomic_load(&r->chunk_id), 2); /* answers keep the fetch's id */
    /* the bad fetch and the replica's announcement */
    assert_int_equal(atomic_load(&r->error_ids), (1u << 3) | (1u << 4));
    dsla_actor_def_t ddef = {.name = "distiller",
                             .ctx = ctx,
                             .peers = &peer,
                             .n_peers = 1,
                             .on_start = distiller_start,
                             .user = r,
                             .heartbeat_ms = BEAT_MS};
    dsla_actor_t *distiller = NULL;
    ok(dsla_actor_create(&distiller, &ddef));

    dsla_client_t *client = NULL;
    ok(dsla_client_connect(&client, dsla_controller_endpoint(ctl, 1), NULL));
    char *text = NULL;
    for (int waited = 0; waited < WAIT_MS; waited += 20) { /* the announce is verified meanwhile */
        free(text);
        text = admin(client, "status", NULL);
        if (strstr(text, "catalogue: 3 layer versions")) break;
        struct timespec tick = {0, 20000000};
        nanosleep(&tick, NULL);
    }
    if (!strstr(text, "catalogue: 3 layer versions in ") || !strstr(text, "order 1@1,0@1,2@1") ||
        !strstr(text, "transfers: 1 chunks, 64 bytes served; 1 fetches refused"))
        fail_msg("status:\n%s", text);
    free(text);
    /* a stranger who never reported as a replica fetches nothing */
    dsla_proto_buf_t fetch = {0};
    ok(dsla_proto_layer_fetch_encode(&r->good, &fetch));
    dsla_client_result_t refused = {0};
    dsla_proto_layer_chunk_t stolen;
    assert_int_equal(dsla_client_call(client, DSLA_MSG_LAYER_FETCH, &fetch, DSLA_MSG_LAYER_CHUNK,
                                      chunk_decode, &stolen, 10000, &refused),
                     DSLA_CODE_PERMISSION_DENIED);
    dsla_proto_buf_free(&fetch);
    text = admin(client, "history", "50");
    const char *events[] = {"start", "plan_sent", "fetch_refused", "layer_ready"};
    for (size_t i = 0; i < sizeof events / sizeof events[0]; i++)
        if (!strstr(text, events[i])) fail_msg("history lacks %s:\n%s", events[i], text);
    free(text);
    dsla_client_close(&client);
    dsla_actor_destroy(&replica);
    dsla_actor_destroy(&distiller);
    dsla_controller_destroy(&ctl);
    dsla_controller_destroy(&ctl);
    dsla_actor_ctx_destroy(&ctx);
    free(cat);
    free(r);
    dsla_test_rmtree(dir);
    free(dir);
}

/* With admin keys configured, an ADMIN without one, or with another, is UNAUTHENTICATED; with
 * one it is answered. */
static void test_admin_key(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    write_version(dir, 0);
    dsla_actor_ctx_t *ctx = NULL;
    ok(dsla_actor_ctx_create(&ctx));
    char db[1024];
    snprintf(db, sizeof db, "%s/controller.db", dir);
    dsla_http_auth_t *keys = NULL;
    ok(dsla_http_auth_load(&keys, NULL, "sk-admin-0123456789abcdef",
                           &(dsla_http_auth_source_t){"--admin-key-file", "DSLA_ADMIN_KEY"}));
    dsla_controller_config_t cc = {.ctx = ctx,
                                   .bind = {"tcp://127.0.0.1:*"},
                                   .layers_dir = dir,
                                   .db_path = db,
                                   .admin_auth = keys,
                                   .heartbeat_ms = BEAT_MS};
    dsla_controller_t *ctl = NULL;
    ok(dsla_controller_create(&ctl, &cc));
    dsla_client_t *client = NULL;
    ok(dsla_client_connect(&client, dsla_controller_endpoint(ctl, 0), NULL));
    const char *tries[] = {"", "sk-admin-0123456789abcdeX", "sk-admin-0123456789abcdef"};
    for (int i = 0; i < 3; i++) {
        dsla_proto_admin_t *cmd = calloc(1, sizeof *cmd);
        snprintf(cmd->args[cmd->n_args++], sizeof cmd->args[0], "status");
        snprintf(cmd->key, sizeof cmd->key, "%s", tries[i]);
        dsla_proto_buf_t body = {0};
        ok(dsla_proto_admin_encode(cmd, &body));
        dsla_proto_admin_reply_t reply = {0};
        dsla_client_result_t result = {0};
        dsla_proto_code_t code =
            dsla_client_call(client, DSLA_MSG_ADMIN, &body, DSLA_MSG_ADMIN_REPLY,
                             admin_reply_decode, &reply, 10000, &result);
        if (i < 2 && (code != DSLA_CODE_UNAUTHENTICATED || !strstr(result.message, "admin key")))
            fail_msg("key '%s': %s: %s", tries[i], dsla_proto_code_name(code), result.message);
        if (i == 2 && (code != DSLA_CODE_OK || !strstr(reply.text, "catalogue")))
            fail_msg("the key: %s: %s", dsla_proto_code_name(code), result.message);
        dsla_proto_admin_reply_free(&reply);
        dsla_proto_buf_free(&body);
        free(cmd);
    }
    dsla_client_close(&client);
    dsla_controller_destroy(&ctl);
    dsla_actor_ctx_destroy(&ctx);
    dsla_http_auth_destroy(&keys);
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shell),
        cmocka_unit_test(test_admin_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

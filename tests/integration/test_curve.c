/* CURVE on actor links (runtime/actor/curve.h, dsla_actor_ctx_secure): two actors with keys talk
 * and the receiver sees the sender's role and key name; a known key of the wrong role is refused
 * for a role-checked message; an unknown key and a plaintext peer never complete the handshake;
 * a connection to a server whose key is unknown is refused at start; a plaintext mailbox does not
 * bind beyond loopback; key files are checked (mode, links, malformed lines). Every wait is a
 * bounded poll for an event, never a sleep standing in for one. */
#include "tests/integration/ctl_harness.h"
#include "tests/testutil.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "proto/proto.h"
#include "runtime/actor/actor.h"
#include "runtime/actor/curve.h"
#include "runtime/core/clock.h"

enum { WAIT_MS = 10000, MSG_ID = 77 };

static bool wait_for(atomic_int *v, int target) {
    return dsla_test_wait_atomic(v, target, WAIT_MS);
}

/* The server's view: what reached its handlers, with the sender's proven identity. */
typedef struct {
    atomic_int plans, statuses;
    atomic_uint role;
    char key_name[DSLA_PROTO_NAME_MAX + 1];
} server_seen_t;

static void record(const dsla_actor_msg_t *msg, server_seen_t *s) {
    atomic_store(&s->role, msg->role);
    snprintf(s->key_name, sizeof s->key_name, "%s", msg->key_name ? msg->key_name : "");
}

static void on_plan(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    server_seen_t *s = user;
    record(msg, s);
    atomic_fetch_add(&s->plans, 1);
    dsla_actor_reply(a, msg, DSLA_MSG_PONG, NULL, 0);
}

static void on_status(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    server_seen_t *s = user;
    record(msg, s);
    atomic_fetch_add(&s->statuses, 1);
    dsla_actor_reply(a, msg, DSLA_MSG_PONG, NULL, 0);
}

static const dsla_actor_handler_t SERVER_HANDLERS[] = {
    {DSLA_MSG_SET_PLAN, on_plan},
    {DSLA_MSG_STATUS, on_status},
};
static const dsla_actor_role_rule_t SERVER_ROLES[] = {{DSLA_MSG_SET_PLAN, DSLA_ROLE_CONTROLLER}};

/* The client's view: answers to what its on_start sent. */
typedef struct {
    uint32_t first_type;
    atomic_int pongs, errors, send_failures;
    atomic_uint error_code;
} client_seen_t;

static void client_start(dsla_actor_t *a, void *user) {
    client_seen_t *c = user;
    if (dsla_actor_send(a, "replica1", c->first_type, MSG_ID, NULL, 0) != DSLA_OK)
        atomic_fetch_add(&c->send_failures, 1);
}

static void client_pong(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    client_seen_t *c = user;
    if (msg->env->id == MSG_ID) atomic_fetch_add(&c->pongs, 1);
}

static void client_error(dsla_actor_t *a, const dsla_actor_msg_t *msg, void *user) {
    (void)a;
    client_seen_t *c = user;
    dsla_proto_error_t err;
    if (msg->env->id != MSG_ID ||
        dsla_proto_error_decode(msg->env->body, msg->env->body_len, &err) != DSLA_OK)
        return;
    atomic_store(&c->error_code, err.code);
    atomic_fetch_add(&c->errors, 1);
}

static const dsla_actor_handler_t CLIENT_HANDLERS[] = {
    {DSLA_MSG_PONG, client_pong},
    {DSLA_MSG_ERROR, client_error},
};

/* A server actor "replica1" on a CURVE context of its own, bound to a loopback port. */
typedef struct {
    dsla_curve_keys_t *keys;
    dsla_actor_ctx_t *ctx;
    dsla_actor_t *actor;
    server_seen_t seen;
} server_t;

static void server_start(server_t *s, const dsla_curve_keys_t *authorize) {
    memset(s, 0, sizeof *s);
    assert_int_equal(dsla_curve_keys_new(&s->keys, DSLA_ROLE_REPLICA, "replica1"), DSLA_OK);
    if (authorize)
        assert_int_equal(dsla_curve_keys_authorize(s->keys, authorize->self.role,
                                                   authorize->self.name,
                                                   authorize->self.public_key),
                         DSLA_OK);
    assert_int_equal(dsla_actor_ctx_create(&s->ctx), DSLA_OK);
    assert_int_equal(dsla_actor_ctx_secure(s->ctx, s->keys), DSLA_OK);
    dsla_actor_def_t def = {.name = "replica1",
                            .ctx = s->ctx,
                            .bind = {"tcp://127.0.0.1:*"},
                            .handlers = SERVER_HANDLERS,
                            .n_handlers = 2,
                            .role_rules = SERVER_ROLES,
                            .n_role_rules = 1,
                            .user = &s->seen,
                            .heartbeat_ms = 60000};
    if (dsla_actor_create(&s->actor, &def) != DSLA_OK) fail_msg("%s", dsla_last_error());
}

static void server_stop(server_t *s) {
    dsla_actor_destroy(&s->actor);
    dsla_actor_ctx_destroy(&s->ctx);
    dsla_curve_keys_destroy(&s->keys);
}

/* A fresh keypair of role and name, and a server that authorizes it. */
static dsla_curve_keys_t *key_and_server(uint32_t role, const char *name, server_t *s) {
    dsla_curve_keys_t *keys = NULL;
    assert_int_equal(dsla_curve_keys_new(&keys, role, name), DSLA_OK);
    server_start(s, keys);
    return keys;
}

static void key_and_server_stop(dsla_curve_keys_t **keys, server_t *s) {
    server_stop(s);
    dsla_curve_keys_destroy(keys);
}

/* A client actor holding keys that knows the server's key, sending first_type on start. */
typedef struct {
    dsla_actor_ctx_t *ctx;
    dsla_actor_t *actor;
    client_seen_t seen;
} client_t;

static dsla_status_t client_start_with(client_t *c, dsla_curve_keys_t *keys, const server_t *s,
                                       uint32_t first_type, bool know_server) {
    memset(c, 0, sizeof *c);
    c->seen.first_type = first_type;
    const char *endpoint = dsla_actor_endpoint(s->actor, 0);
    if (know_server)
        assert_int_equal(dsla_curve_keys_add_server(keys, endpoint, s->keys->self.public_key),
                         DSLA_OK);
    assert_int_equal(dsla_actor_ctx_create(&c->ctx), DSLA_OK);
    assert_int_equal(dsla_actor_ctx_secure(c->ctx, keys), DSLA_OK);
    dsla_actor_peer_def_t peer = {"replica1", endpoint};
    dsla_actor_def_t def = {.name = keys->self.name,
                            .ctx = c->ctx,
                            .peers = &peer,
                            .n_peers = 1,
                            .handlers = CLIENT_HANDLERS,
                            .n_handlers = 2,
                            .on_start = client_start,
                            .user = &c->seen,
                            .heartbeat_ms = 60000};
    return dsla_actor_create(&c->actor, &def);
}

/* client_start_with that must succeed. */
static void client_open(client_t *c, dsla_curve_keys_t *keys, const server_t *s,
                        uint32_t first_type, bool know_server) {
    if (client_start_with(c, keys, s, first_type, know_server) != DSLA_OK)
        fail_msg("%s", dsla_last_error());
}

static void client_stop(client_t *c) {
    dsla_actor_destroy(&c->actor);
    dsla_actor_ctx_destroy(&c->ctx);
}

static void test_curve_peers_talk(void **state) {
    (void)state;
    server_t s;
    dsla_curve_keys_t *keys = key_and_server(DSLA_ROLE_CONTROLLER, "controller", &s);
    client_t c;
    client_open(&c, keys, &s, DSLA_MSG_SET_PLAN, true);
    assert_true(wait_for(&c.seen.pongs, 1));
    assert_int_equal(atomic_load(&s.seen.plans), 1);
    assert_int_equal(atomic_load(&s.seen.role), DSLA_ROLE_CONTROLLER);
    assert_string_equal(s.seen.key_name, "controller");
    assert_int_equal(atomic_load(&c.seen.send_failures), 0);
    client_stop(&c);
    key_and_server_stop(&keys, &s);
}

/* A "client" key may reach the mailbox (STATUS is open to every role) but not send SET_PLAN. */
static void test_wrong_role_refused(void **state) {
    (void)state;
    server_t s;
    dsla_curve_keys_t *keys = key_and_server(DSLA_ROLE_CLIENT, "client-x", &s);
    client_t c;
    client_open(&c, keys, &s, DSLA_MSG_SET_PLAN, true);
    assert_true(wait_for(&c.seen.errors, 1));
    assert_int_equal(atomic_load(&c.seen.error_code), DSLA_CODE_PERMISSION_DENIED);
    assert_int_equal(atomic_load(&s.seen.plans), 0);
    client_stop(&c);

    client_open(&c, keys, &s, DSLA_MSG_STATUS, false);
    assert_true(wait_for(&c.seen.pongs, 1));
    assert_int_equal(atomic_load(&s.seen.role), DSLA_ROLE_CLIENT);
    assert_string_equal(s.seen.key_name, "client-x");
    assert_int_equal(atomic_load(&s.seen.plans), 0);
    client_stop(&c);
    key_and_server_stop(&keys, &s);
}

/* A cluster-role key speaks only under its own name: a replica key named "other" connecting as
 * "controller" reaches no handler (its STATUS, sent first, is never answered), while the same key
 * under its own name is. */
static void test_key_name_binds_routing_id(void **state) {
    (void)state;
    server_t s;
    dsla_curve_keys_t *keys = key_and_server(DSLA_ROLE_REPLICA, "other", &s);
    snprintf(keys->self.name, sizeof keys->self.name, "controller"); /* the routing id it uses */
    client_t liar;
    client_open(&liar, keys, &s, DSLA_MSG_STATUS, true);
    snprintf(keys->self.name, sizeof keys->self.name, "other");
    client_t honest;
    client_open(&honest, keys, &s, DSLA_MSG_STATUS, false);
    assert_true(wait_for(&honest.seen.pongs, 1));
    assert_int_equal(atomic_load(&liar.seen.pongs), 0);
    assert_int_equal(atomic_load(&s.seen.statuses), 1);
    assert_string_equal(s.seen.key_name, "other");
    client_stop(&liar);
    client_stop(&honest);
    key_and_server_stop(&keys, &s);
}

/* A raw DEALER (curve_server NULL: plaintext) with a monitor: the first handshake event. */
static int handshake_event(const char *endpoint, const char *curve_server) {
    void *zctx = zmq_ctx_new();
    void *sock = zmq_socket(zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (curve_server) {
        char pub[41], sec[41];
        assert_int_equal(zmq_curve_keypair(pub, sec), 0);
        zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, curve_server, 40);
        zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, pub, 40);
        zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 40);
    }
    assert_int_equal(zmq_socket_monitor(sock, "inproc://monitor", ZMQ_EVENT_ALL), 0);
    void *mon = zmq_socket(zctx, ZMQ_PAIR);
    assert_int_equal(zmq_connect(mon, "inproc://monitor"), 0);
    assert_int_equal(zmq_connect(sock, endpoint), 0);
    zmq_send(sock, "hello", 5, ZMQ_DONTWAIT);
    const int wanted = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                       ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                       ZMQ_EVENT_DISCONNECTED;
    int event = 0;
    uint64_t deadline = dsla_clock_ms() + WAIT_MS;
    while (!(event & wanted) && dsla_clock_ms() < deadline) {
        zmq_pollitem_t item = {mon, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 100) <= 0) continue;
        uint8_t head[6];
        char addr[256];
        if (zmq_recv(mon, head, sizeof head, 0) < 6) continue;
        zmq_recv(mon, addr, sizeof addr, 0);
        event = head[0] | head[1] << 8;
    }
    zmq_close(mon);
    zmq_close(sock);
    zmq_ctx_term(zctx);
    return event;
}

static void test_unknown_key_and_plaintext_refused(void **state) {
    (void)state;
    server_t s;
    server_start(&s, NULL);
    const char *endpoint = dsla_actor_endpoint(s.actor, 0);
    assert_int_equal(handshake_event(endpoint, s.keys->self.public_key),
                     ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
    int plain = handshake_event(endpoint, NULL);
    assert_true(plain != 0 && plain != ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
    assert_int_equal(atomic_load(&s.seen.statuses) + atomic_load(&s.seen.plans), 0);
    server_stop(&s);
}

static void test_unknown_server_key_refused_at_start(void **state) {
    (void)state;
    server_t s;
    dsla_curve_keys_t *keys = key_and_server(DSLA_ROLE_CONTROLLER, "controller", &s);
    client_t c;
    assert_int_equal(client_start_with(&c, keys, &s, DSLA_MSG_STATUS, false),
                     DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "known_servers"));
    client_stop(&c);
    key_and_server_stop(&keys, &s);
}

static void test_plaintext_bind_stays_on_loopback(void **state) {
    (void)state;
    dsla_actor_ctx_t *ctx = NULL;
    assert_int_equal(dsla_actor_ctx_create(&ctx), DSLA_OK);
    dsla_actor_def_t def = {.name = "open", .ctx = ctx, .bind = {"tcp://0.0.0.0:*"}};
    dsla_actor_t *a = NULL;
    assert_int_equal(dsla_actor_create(&a, &def), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "--allow-insecure"));
    def.bind[0] = "tcp://127.0.0.1:*";
    assert_int_equal(dsla_actor_create(&a, &def), DSLA_OK);
    dsla_actor_destroy(&a);
    dsla_actor_ctx_allow_insecure(ctx);
    def.bind[0] = "tcp://0.0.0.0:*";
    assert_int_equal(dsla_actor_create(&a, &def), DSLA_OK);
    dsla_actor_destroy(&a);
    dsla_actor_ctx_destroy(&ctx);
}

static void write_text(const char *dir, const char *file, const char *text) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    dsla_test_write_file(path, text, strlen(text));
}

static void test_key_files(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    dsla_curve_keys_t *made = NULL, *peer = NULL, *loaded = NULL;
    assert_int_equal(dsla_curve_keys_new(&made, DSLA_ROLE_GATEWAY, "gw1"), DSLA_OK);
    assert_int_equal(dsla_curve_keys_new(&peer, DSLA_ROLE_ADMIN, "alice"), DSLA_OK);
    assert_int_equal(dsla_curve_keys_save(made, dir), DSLA_OK);
    assert_int_equal(dsla_curve_keys_save(made, dir), DSLA_ERR_INVALID_ARGUMENT); /* no overwrite */
    char text[512], path[4096];
    snprintf(text, sizeof text, "# admins\n%s %s %s\nclient %s\n", "admin", peer->self.public_key,
             "alice", made->self.public_key);
    write_text(dir, "authorized_keys", text);
    snprintf(text, sizeof text, "tcp://10.0.0.2:7071 %s\n", peer->self.public_key);
    write_text(dir, "known_servers", text);
    assert_int_equal(dsla_curve_keys_load(&loaded, dir), DSLA_OK);
    assert_string_equal(loaded->self.public_key, made->self.public_key);
    assert_string_equal(loaded->secret_key, made->secret_key);
    assert_int_equal(loaded->self.role, DSLA_ROLE_GATEWAY);
    assert_string_equal(loaded->self.name, "gw1");
    assert_int_equal(loaded->n_authorized, 2);
    const dsla_curve_identity_t *alice = dsla_curve_lookup(loaded, peer->self.public_key);
    assert_non_null(alice);
    assert_int_equal(alice->role, DSLA_ROLE_ADMIN);
    assert_string_equal(alice->name, "alice");
    assert_string_equal(dsla_curve_server_key(loaded, "tcp://10.0.0.2:7071"),
                        peer->self.public_key);
    assert_null(dsla_curve_server_key(loaded, "tcp://10.0.0.2:7070"));
    dsla_curve_keys_destroy(&loaded);

    snprintf(path, sizeof path, "%s/node.key", dir);
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_not_equal(dsla_curve_keys_load(&loaded, dir), DSLA_OK);
    assert_non_null(strstr(dsla_last_error(), "chmod 600"));
    assert_int_equal(chmod(path, 0600), 0);

    write_text(dir, "known_servers", "tcp://10.0.0.2:7071 not-a-key\n");
    assert_int_not_equal(dsla_curve_keys_load(&loaded, dir), DSLA_OK);
    assert_non_null(strstr(dsla_last_error(), "known_servers line 1"));
    write_text(dir, "known_servers", "");
    snprintf(text, sizeof text, "admin %s\nwizard %s\n", peer->self.public_key,
             peer->self.public_key);
    write_text(dir, "authorized_keys", text);
    assert_int_not_equal(dsla_curve_keys_load(&loaded, dir), DSLA_OK);
    assert_non_null(strstr(dsla_last_error(), "authorized_keys line 2"));
    assert_null(loaded);

    snprintf(path, sizeof path, "%s/node.key", dir);
    char moved[4096];
    snprintf(moved, sizeof moved, "%s/real.key", dir);
    assert_int_equal(rename(path, moved), 0);
    assert_int_equal(symlink(moved, path),
                     0); /* a link to a key is refused, like a link to a layer */
    write_text(dir, "authorized_keys", "");
    assert_int_not_equal(dsla_curve_keys_load(&loaded, dir), DSLA_OK);
    assert_non_null(strstr(dsla_last_error(), "symbolic link"));
    dsla_curve_keys_destroy(&made);
    dsla_curve_keys_destroy(&peer);
    dsla_test_rmtree(dir);
    free(dir);
}

/* Appends dir/node.pub (a keygen's public line) to file. */
static void append_pub(const char *dir, const char *file) {
    char path[1100];
    snprintf(path, sizeof path, "%s/node.pub", dir);
    char *line = dsla_test_read_file(path, NULL);
    assert_non_null(line);
    FILE *f = fopen(file, "a");
    assert_non_null(f);
    fputs(line, f);
    fclose(f);
    free(line);
}

/* The public key in dir/node.pub ("ROLE KEY NAME"). */
static void pub_key(const char *dir, char key[DSLA_CURVE_KEY_LEN + 1]) {
    char path[1100];
    snprintf(path, sizeof path, "%s/node.pub", dir);
    char *line = dsla_test_read_file(path, NULL);
    assert_non_null(line);
    assert_int_equal(sscanf(line, "%*s %40s", key), 1);
    free(line);
}

/* dsla-serve --curve-keys end to end: keys made by `dslactl keygen`; an admin key changes the
 * policy through dslactl --curve-keys and the history names it; a client key is refused the
 * admin command by role, and dslactl without keys gets no answer; HTTP still serves (its front
 * end reaches the gateway over CURVE with a keypair of its own). */
static void test_dsla_serve_with_curve(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *dir = dsla_test_tempdir();
    char node[1024], adm[1024], cli[1024], layers[1024], db[1024], file[1100], out[CTL_OUT_MAX];
    snprintf(node, sizeof node, "%s/node", dir);
    snprintf(adm, sizeof adm, "%s/admin", dir);
    snprintf(cli, sizeof cli, "%s/client", dir);
    snprintf(layers, sizeof layers, "%s/layers", dir);
    snprintf(db, sizeof db, "%s/controller.db", dir);
    assert_int_equal(mkdir(layers, 0700), 0);
    const char *kg_node[] = {"keygen",     "--out",  node,    "--role",
                             "controller", "--name", "node1", NULL};
    const char *kg_admin[] = {"keygen", "--out", adm, "--role", "admin", "--name", "alice", NULL};
    const char *kg_client[] = {"keygen", "--out", cli, "--role", "client", "--name", "bob", NULL};
    assert_int_equal(ctl_run_bin("dslactl", kg_node, out, sizeof out), 0);
    assert_int_equal(ctl_run_bin("dslactl", kg_admin, out, sizeof out), 0);
    assert_non_null(strstr(out, "admin ")); /* the line it prints is node.pub's */
    assert_int_equal(ctl_run_bin("dslactl", kg_client, out, sizeof out), 0);
    snprintf(file, sizeof file, "%s/authorized_keys", node);
    append_pub(adm, file);
    append_pub(cli, file);
    char admin[64], server[DSLA_CURVE_KEY_LEN + 1], line[256];
    snprintf(admin, sizeof admin, "tcp://127.0.0.1:%d", ctl_free_port());
    pub_key(node, server);
    snprintf(line, sizeof line, "%s %s\n", admin, server);
    snprintf(file, sizeof file, "%s/known_servers", adm);
    dsla_test_write_file(file, line, strlen(line));
    snprintf(file, sizeof file, "%s/known_servers", cli);
    dsla_test_write_file(file, line, strlen(line));

    const char *args[] = {"--model",
                          model,
                          "--endpoint",
                          "tcp://127.0.0.1:*",
                          "--http",
                          "127.0.0.1:0",
                          "--layers",
                          layers,
                          "--controller-db",
                          db,
                          "--admin",
                          admin,
                          "--curve-keys",
                          node,
                          NULL};
    dsla_test_server_t srv = dsla_test_server_start(args);

    const char *as_alice[] = {"--admin", admin,    "--curve-keys", adm, "policy",
                              "set",     "manual", "layers=0",     NULL};
    assert_int_equal(ctl_run_bin("dslactl", as_alice, out, sizeof out), 0);
    const char *history[] = {"--admin", admin, "--curve-keys", adm, "history", NULL};
    assert_int_equal(ctl_run_bin("dslactl", history, out, sizeof out), 0);
    if (!strstr(out, "policy set manual layers=0 by admin key 'alice' (CURVE)"))
        fail_msg("history lacks the audit line:\n%s", out);

    const char *as_bob[] = {"--admin", admin, "--curve-keys", cli, "drain", NULL};
    assert_int_equal(ctl_run_bin("dslactl", as_bob, out, sizeof out), 1);
    if (!strstr(out, "PERMISSION_DENIED") || !strstr(out, "role client"))
        fail_msg("a client key's ADMIN: %s", out);
    const char *plain[] = {"--admin", admin, "--timeout-ms", "1500", "drain", NULL};
    assert_int_not_equal(ctl_run_bin("dslactl", plain, out, sizeof out), 0);
    assert_non_null(strstr(out, "no answer"));

    dsla_test_http_reply_t r =
        dsla_test_http(srv.http_port, "POST", "/v1/completions",
                       "{\"model\":\"stories260K-hf\",\"prompt\":\"Once\",\"max_tokens\":4}");
    if (r.status != 200) fail_msg("HTTP over a CURVE gateway: %d %s", r.status, r.body);
    dsla_test_http_reply_free(&r);
    dsla_test_server_stop(&srv);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
}

/* Saves a fresh keypair into base/sub; the keys stay the caller's. */
static dsla_curve_keys_t *keys_in(const char *base, const char *sub, uint32_t role,
                                  const char *name, char *dir, size_t cap) {
    snprintf(dir, cap, "%s/%s", base, sub);
    assert_int_equal(mkdir(dir, 0700), 0);
    dsla_curve_keys_t *k = NULL;
    assert_int_equal(dsla_curve_keys_new(&k, role, name), DSLA_OK);
    assert_int_equal(dsla_curve_keys_save(k, dir), DSLA_OK);
    return k;
}

/* A gateway node and a --serving-only replica in two processes, every link CURVE: the gateway
 * proves the replica by known_servers, the replica takes GENERATE from the gateway key, and a
 * client stub with a client key (then `dsla generate --curve-keys`) streams tokens through both. */
static void test_gateway_and_replica_over_curve(void **state) {
    (void)state;
    char *model = dsla_test_data_or_skip("models/stories260K-hf");
    char *dir = dsla_test_tempdir();
    char gw_dir[1024], rep_dir[1024], cl_dir[1024], file[1100], line[512], replica[64];
    dsla_curve_keys_t *gw = keys_in(dir, "gw", DSLA_ROLE_GATEWAY, "gateway", gw_dir, sizeof gw_dir);
    dsla_curve_keys_t *rep =
        keys_in(dir, "rep", DSLA_ROLE_REPLICA, "serving0", rep_dir, sizeof rep_dir);
    dsla_curve_keys_t *cl = keys_in(dir, "cl", DSLA_ROLE_CLIENT, "carol", cl_dir, sizeof cl_dir);
    snprintf(file, sizeof file, "%s/authorized_keys", rep_dir);
    append_pub(gw_dir, file);
    snprintf(file, sizeof file, "%s/authorized_keys", gw_dir);
    append_pub(cl_dir, file);
    snprintf(replica, sizeof replica, "tcp://127.0.0.1:%d", ctl_free_port());
    snprintf(line, sizeof line, "%s %s\n", replica, rep->self.public_key);
    snprintf(file, sizeof file, "%s/known_servers", gw_dir);
    dsla_test_write_file(file, line, strlen(line));

    const char *rep_args[] = {"--model", model,          "--serving-only", "--endpoint",
                              replica,   "--curve-keys", rep_dir,          NULL};
    dsla_test_server_t r = dsla_test_server_start(rep_args);
    const char *gw_args[] = {"--endpoint", "tcp://127.0.0.1:*", "--http", "off", "--replica",
                             replica,      "--curve-keys",      gw_dir,   NULL};
    dsla_test_server_t g = dsla_test_server_start(gw_args);

    dsla_client_options_t opt = {.curve_server_key = gw->self.public_key,
                                 .curve_public_key = cl->self.public_key,
                                 .curve_secret_key = cl->secret_key};
    dsla_client_t *c = NULL;
    assert_int_equal(dsla_client_connect(&c, g.endpoint, &opt), DSLA_OK);
    dsla_proto_generate_t req = {.prompt_ids = ctl_prompt_ids,
                                 .n_prompt_ids = sizeof ctl_prompt_ids / sizeof ctl_prompt_ids[0],
                                 .max_tokens = 4,
                                 .top_p = 1,
                                 .ignore_eos = true,
                                 .stream = true};
    dsla_test_collected_t got = {0};
    dsla_client_result_t res;
    if (dsla_client_generate(c, &req, dsla_test_collect, &got, 30000, &res) != DSLA_CODE_OK)
        fail_msg("generate through CURVE links: %s", res.message);
    assert_int_equal(got.n, 4);
    dsla_client_close(&c);
    /* dsla generate --curve-keys: the same through the command line client */
    snprintf(line, sizeof line, "%s %s\n", g.endpoint, gw->self.public_key);
    snprintf(file, sizeof file, "%s/known_servers", cl_dir);
    dsla_test_write_file(file, line, strlen(line));
    char out[CTL_OUT_MAX];
    const char *gen[] = {"generate", "--endpoint",    g.endpoint, "--curve-keys",
                         cl_dir,     "--prompt",      "Once",     "--max-tokens",
                         "3",        "--temperature", "0",        NULL};
    if (ctl_run_bin("dsla", gen, out, sizeof out) != 0) fail_msg("dsla generate: %s", out);
    assert_non_null(strstr(out, "3 new tokens"));
    dsla_test_server_stop(&g);
    dsla_test_server_stop(&r);
    dsla_curve_keys_destroy(&gw);
    dsla_curve_keys_destroy(&rep);
    dsla_curve_keys_destroy(&cl);
    dsla_test_rmtree(dir);
    free(dir);
    free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_curve_peers_talk),
        cmocka_unit_test(test_wrong_role_refused),
        cmocka_unit_test(test_key_name_binds_routing_id),
        cmocka_unit_test(test_unknown_key_and_plaintext_refused),
        cmocka_unit_test(test_unknown_server_key_refused_at_start),
        cmocka_unit_test(test_plaintext_bind_stays_on_loopback),
        cmocka_unit_test(test_key_files),
        cmocka_unit_test(test_dsla_serve_with_curve),
        cmocka_unit_test(test_gateway_and_replica_over_curve),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

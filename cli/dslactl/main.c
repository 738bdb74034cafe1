/* dslactl: the admin command of the controller (DESIGN.md section 8). Parses its own options,
 * sends the command's words as one ADMIN message (the controller checks them, so that every limit
 * lives in one place: the command table of actors/controller_admin.c, whose usage lines it
 * prints) and prints the ADMIN_REPLY text. Exit codes: 0 ok, 1 failure (the controller
 * unreachable, or it failed), 2 usage (a bad command or value; the message names it). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "actors/cluster_file.h"
#include "actors/controller_admin.h"
#include "cli/dsla/args.h"
#include "proto/dsla_client.h"
#include "runtime/actor/curve.h"
#include "runtime/control/policy.h"
#include "runtime/model/layer_mac.h"

/* The usage text, from the tables the controller parses with (controller_admin.c, policy.c). */
static void build_usage(char *out, size_t cap) {
    size_t n = (size_t)snprintf(
        out, cap,
        "usage: dslactl [--admin tcp://127.0.0.1:7071 | --cluster FILE] [--timeout-ms N] "
        "[--admin-key-file F] [--curve-keys DIR] COMMAND\n"
        "       dslactl keygen --out DIR --role ROLE [--name NAME]  (a CURVE keypair: "
        "DIR/node.key, DIR/node.pub; roles gateway, replica, controller, distiller, admin, "
        "client)\n"
        "       dslactl keygen --layer-key FILE  (a layer MAC key for --layer-key-file, mode "
        "0600)\n\n--cluster finds the controller's admin mailbox (and the admin key file) in a "
        "cluster file (docs/operations.md).\n\ncommands (docs/controller.md):\n");
    if (n < cap) dsla_admin_usage(out + n, cap - n);
    n = strlen(out);
    if (n < cap) n += (size_t)snprintf(out + n, cap - n, "policy fields:");
    const dsla_policy_kind_t kinds[] = {DSLA_POLICY_THRESHOLD, DSLA_POLICY_SLO, DSLA_POLICY_MANUAL};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0] && n < cap; i++) {
        char fields[256];
        dsla_policy_fields(kinds[i], fields, sizeof fields);
        n += (size_t)snprintf(out + n, cap - n, "\n  %-9s %s", dsla_policy_kind_name(kinds[i]),
                              fields);
    }
}

/* The admin key: the first line of path that is neither blank nor a # comment, trimmed; else
 * DSLA_ADMIN_KEY; else none. False (with a message) when the file cannot be read or holds none. */
static bool admin_key(const char *path, char *key, size_t cap) {
    key[0] = '\0';
    if (!path) {
        const char *env = getenv("DSLA_ADMIN_KEY");
        if (env && strlen(env) >= cap) {
            fprintf(stderr, "dslactl: DSLA_ADMIN_KEY is %zu bytes, above %zu\n", strlen(env),
                    cap - 1);
            return false;
        }
        snprintf(key, cap, "%s", env ? env : "");
        return true;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "dslactl: --admin-key-file %s: cannot read it\n", path);
        return false;
    }
    char line[1024];
    while (!key[0] && fgets(line, sizeof line, f)) {
        size_t n = strcspn(line, "\r\n");
        while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t'))
            n--;
        line[n] = '\0';
        if (n == 0 || line[0] == '#') continue;
        if (n >= cap) {
            fprintf(stderr, "dslactl: --admin-key-file %s: the key is %zu bytes, above %zu\n", path,
                    n, cap - 1);
            break;
        }
        snprintf(key, cap, "%.*s", (int)(cap - 1), line);
    }
    fclose(f);
    if (!key[0]) fprintf(stderr, "dslactl: --admin-key-file %s: holds no key\n", path);
    return key[0] != '\0';
}

static dsla_status_t admin_reply_decode(const void *body, size_t len, void *out) {
    return dsla_proto_admin_reply_decode(body, len, out);
}

/* dslactl keygen: a fresh keypair into out (made 0700 when missing); the name defaults to the
 * role. Returns the exit code. */
static int keygen(const char *out, const char *role_text, const char *name) {
    uint32_t role = role_text ? dsla_role_parse(role_text) : 0;
    if (!out || !role) {
        fprintf(stderr, "dslactl: keygen needs --out DIR and --role gateway|replica|controller|"
                        "distiller|admin|client\n");
        return 2;
    }
    if (mkdir(out, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "dslactl: keygen: cannot make %s: %s\n", out, strerror(errno));
        return 1;
    }
    dsla_curve_keys_t *keys = NULL;
    dsla_status_t st = dsla_curve_keys_new(&keys, role, name ? name : role_text);
    if (st == DSLA_OK) st = dsla_curve_keys_save(keys, out);
    if (st == DSLA_OK)
        printf("%s %s %s\n", dsla_role_name(keys->self.role), keys->self.public_key,
               keys->self.name);
    else
        fprintf(stderr, "dslactl: keygen: %s\n", dsla_last_error());
    dsla_curve_keys_destroy(&keys);
    return st == DSLA_OK ? 0 : (st == DSLA_ERR_INVALID_ARGUMENT ? 2 : 1);
}

/* With --curve-keys, the client options that prove the controller by its key in known_servers. */
static dsla_status_t curve_options(const dsla_curve_keys_t *keys, const char *admin,
                                   dsla_client_options_t *opt) {
    const char *server = dsla_curve_server_key(keys, admin);
    if (!server)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "--curve-keys: known_servers has no key for %s; add the line '%s "
                          "PUBLIC-KEY' (the controller's node.pub)",
                          admin, admin);
    opt->curve_server_key = server;
    opt->curve_public_key = keys->self.public_key;
    opt->curve_secret_key = keys->secret_key;
    return DSLA_OK;
}

int main(int argc, char **argv) {
    char usage[2048];
    build_usage(usage, sizeof usage);
    const char *admin = NULL, *key_file = NULL, *cluster_path = NULL, *curve_dir = NULL;
    const char *out = NULL, *role = NULL, *name = NULL, *layer_key = NULL;
    long timeout_ms = 10000, limit = 0;
    const dsla_arg_spec_t specs[] = {
        {"admin", DSLA_ARG_STRING, "the controller's admin mailbox (default tcp://127.0.0.1:7071)",
         0, 0, &admin},
        {"timeout-ms", DSLA_ARG_INT, "give up after this long (default 10000)", 1, 3600000,
         &timeout_ms},
        {"limit", DSLA_ARG_INT, "history: events to show (default 20)", 1, 10000, &limit},
        {"admin-key-file", DSLA_ARG_STRING,
         "the controller's admin key, its first line (default: DSLA_ADMIN_KEY)", 0, 0, &key_file},
        {"curve-keys", DSLA_ARG_STRING, "CURVE key directory (an admin key; known_servers)", 0, 0,
         &curve_dir},
        {"out", DSLA_ARG_STRING, "keygen: the directory to write node.key and node.pub into", 0, 0,
         &out},
        {"role", DSLA_ARG_STRING, "keygen: the key's role", 0, 0, &role},
        {"name", DSLA_ARG_STRING, "keygen: the key's name (default: the role)", 0, 0, &name},
        {"layer-key", DSLA_ARG_STRING, "keygen: write a layer MAC key to this file instead", 0, 0,
         &layer_key},
        {"cluster", DSLA_ARG_STRING,
         "a cluster file: the controller's admin mailbox and admin key file come from it", 0, 0,
         &cluster_path},
    };
    const char *words[DSLA_PROTO_ADMIN_ARGS_MAX];
    int n_words = 0;
    int rc = dsla_args_parse(argc, argv, 1, specs, (int)(sizeof specs / sizeof specs[0]), words,
                             DSLA_PROTO_ADMIN_ARGS_MAX - 1, &n_words, usage);
    if (rc == -1) return 0;
    if (rc != 0) return rc;
    char cluster_admin[512];
    dsla_cluster_t *cluster = NULL;
    if (cluster_path && admin) {
        fprintf(stderr, "dslactl: --cluster and --admin both name the controller; give one\n");
        return 2;
    }
    if (cluster_path) {
        if (dsla_cluster_load(&cluster, cluster_path) != DSLA_OK) {
            fprintf(stderr, "dslactl: %s\n", dsla_last_error());
            return 2;
        }
        const bool found =
            dsla_cluster_admin_endpoint(cluster, cluster_admin, sizeof cluster_admin);
        if (found && !key_file && cluster->admin_key_file) {
            static char key_path[4096]; /* outlives the cluster */
            snprintf(key_path, sizeof key_path, "%s", cluster->admin_key_file);
            key_file = key_path;
        }
        dsla_cluster_destroy(&cluster);
        if (!found) {
            fprintf(stderr, "dslactl: %s: no node runs a controller\n", cluster_path);
            return 2;
        }
        admin = cluster_admin;
    }
    if (!admin) admin = "tcp://127.0.0.1:7071";
    if (n_words == 0) {
        fprintf(stderr, "dslactl: name a command (dslactl --help lists them)\n");
        return 2;
    }
    if (strcmp(words[0], "keygen") == 0 && layer_key) {
        if (dsla_layer_key_generate(layer_key) == DSLA_OK) return 0;
        fprintf(stderr, "dslactl: keygen: %s\n", dsla_last_error());
        return 1;
    }
    if (strcmp(words[0], "keygen") == 0) return keygen(out, role, name);
    if (limit && strcmp(words[0], "history") != 0) {
        fprintf(stderr, "dslactl: --limit is for history only\n");
        return 2;
    }
    dsla_proto_admin_t *cmd = calloc(1, sizeof *cmd);
    if (!cmd) return 1;
    for (int i = 0; i < n_words; i++) {
        if (strlen(words[i]) > DSLA_PROTO_ADMIN_ARG_LEN_MAX) {
            fprintf(stderr, "dslactl: word %d is %zu bytes, above the limit of %d\n", i + 1,
                    strlen(words[i]), DSLA_PROTO_ADMIN_ARG_LEN_MAX);
            free(cmd);
            return 2;
        }
        snprintf(cmd->args[cmd->n_args++], sizeof cmd->args[0], "%s", words[i]);
    }
    if (limit) snprintf(cmd->args[cmd->n_args++], sizeof cmd->args[0], "%ld", limit);
    if (!admin_key(key_file, cmd->key, sizeof cmd->key)) {
        free(cmd);
        return 2;
    }

    dsla_proto_buf_t body = {0};
    dsla_client_t *client = NULL;
    dsla_client_result_t result = {0};
    dsla_proto_admin_reply_t reply = {0};
    dsla_curve_keys_t *keys = NULL;
    dsla_client_options_t opt = {0};
    dsla_status_t st = dsla_proto_admin_encode(cmd, &body);
    if (st == DSLA_OK && curve_dir) st = dsla_curve_keys_load(&keys, curve_dir);
    if (st == DSLA_OK && keys) st = curve_options(keys, admin, &opt);
    if (st == DSLA_OK) st = dsla_client_connect(&client, admin, &opt);
    if (st != DSLA_OK) {
        fprintf(stderr, "dslactl: %s\n", dsla_last_error());
        rc = 2;
    } else if (dsla_client_call(client, DSLA_MSG_ADMIN, &body, DSLA_MSG_ADMIN_REPLY,
                                admin_reply_decode, &reply, (int)timeout_ms,
                                &result) != DSLA_CODE_OK) {
        if (result.code == DSLA_CODE_DEADLINE_EXCEEDED || result.code == DSLA_CODE_UNAVAILABLE)
            fprintf(stderr,
                    "dslactl: no answer from the controller at %s within %ld ms (is dsla-serve "
                    "running with --layers, its admin mailbox at --admin %s?)\n",
                    admin, timeout_ms, admin);
        else
            fprintf(stderr, "dslactl: %s: %s\n", dsla_proto_code_name(result.code), result.message);
        rc = result.code == DSLA_CODE_INVALID_ARGUMENT ? 2 : 1;
    } else {
        fwrite(reply.text, 1, reply.text_len, stdout);
        rc = 0;
    }
    dsla_proto_admin_reply_free(&reply);
    dsla_client_close(&client);
    dsla_curve_keys_destroy(&keys);
    dsla_proto_buf_free(&body);
    free(cmd);
    return rc;
}

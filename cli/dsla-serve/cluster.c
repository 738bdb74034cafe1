/* A cluster file's node as dsla-serve's command line (cluster.h): which actors the node runs
 * decides --serving-only, --layers, --replica and the endpoints; its options: maps become options
 * after each value has passed dsla-serve's own table on its own. */
#define _DEFAULT_SOURCE /* setenv */
#include "cli/dsla-serve/cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/cluster_file.h"

/* Options the cluster file sets from its own fields: in an options: map or beside --cluster they
 * would say a second thing. */
static const char *const owned[] = {
    "model",          "model-name",    "random-model",    "tokenizer",    "vocab",
    "endpoint",       "http",          "replica",         "serving-only", "layers",
    "controller",     "controller-db", "admin",           "policy",       "name",
    "device",         "api-key-file",  "admin-key-file",  "distill-data", "distill-out",
    "distill-device", "distill-gpu",   "controller-bind", "cluster",      "node",
};

struct dsla_serve_cluster {
    dsla_cluster_t *file;
    char **argv;
    int argc, cap;
};

static bool push(dsla_serve_cluster_t *c, const char *word) {
    if (c->argc + 2 > c->cap) {
        const int cap = c->cap ? 2 * c->cap : 64;
        char **argv = realloc(c->argv, (size_t)cap * sizeof *argv);
        if (!argv) return false;
        c->argv = argv;
        c->cap = cap;
    }
    char *copy = strdup(word);
    if (!copy) return false;
    c->argv[c->argc++] = copy;
    c->argv[c->argc] = NULL;
    return true;
}

static bool push2(dsla_serve_cluster_t *c, const char *option, const char *value) {
    return push(c, option) && push(c, value);
}

static bool pushf(dsla_serve_cluster_t *c, const char *option, const char *fmt, const char *host,
                  int port) {
    char value[512];
    snprintf(value, sizeof value, fmt, host, port);
    return push2(c, option, value);
}

static const dsla_arg_spec_t *find_spec(const dsla_arg_spec_t *specs, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(specs[i].name, name) == 0) return &specs[i];
    return NULL;
}

static bool is_owned(const char *name) {
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        if (strcmp(owned[i], name) == 0) return true;
    return false;
}

/* One option checked the way the command line is: parsed alone into scratch storage. */
static int check_value(const dsla_arg_spec_t *spec, const char *value) {
    union {
        const char *s;
        long l;
        double d;
        bool b;
        dsla_arg_list_t list;
    } scratch;
    memset(&scratch, 0, sizeof scratch);
    dsla_arg_spec_t one = *spec;
    one.dest = &scratch;
    char option[128];
    snprintf(option, sizeof option, "--%s", spec->name);
    char *argv[] = {"dsla-serve", option, (char *)value, NULL};
    int n_positional = 0;
    return dsla_args_parse(value ? 3 : 2, argv, 1, &one, 1, NULL, 0, &n_positional, "");
}

/* An options: map's entries appended as --name value, each checked against specs. */
static int add_options(dsla_serve_cluster_t *c, const dsla_cluster_options_t *o, const char *where,
                       const dsla_arg_spec_t *specs, int n_specs) {
    const char *file = c->file->path;
    for (int i = 0; i < o->count; i++) {
        const dsla_cluster_option_t *opt = &o->items[i];
        const dsla_arg_spec_t *spec = find_spec(specs, n_specs, opt->name);
        if (!spec) {
            fprintf(stderr,
                    "dsla-serve: %s:%d: %s.options.%s: not a dsla-serve option (dsla-serve "
                    "--help lists them)\n",
                    file, opt->line, where, opt->name);
            return 2;
        }
        if (is_owned(opt->name)) {
            fprintf(stderr,
                    "dsla-serve: %s:%d: %s.options.%s: the cluster file sets --%s from its own "
                    "fields (docs/operations.md)\n",
                    file, opt->line, where, opt->name, opt->name);
            return 2;
        }
        for (int k = 1; k < c->argc; k++)
            if (c->argv[k][0] == '-' && strcmp(c->argv[k] + 2, opt->name) == 0) {
                fprintf(stderr,
                        "dsla-serve: %s:%d: %s.options.%s: another actor of the node sets "
                        "it too (one process, one value)\n",
                        file, opt->line, where, opt->name);
                return 2;
            }
        if (opt->is_list && spec->kind != DSLA_ARG_STRING_LIST) {
            fprintf(stderr, "dsla-serve: %s:%d: %s.options.%s: takes one value, not a list\n", file,
                    opt->line, where, opt->name);
            return 2;
        }
        char option[128];
        snprintf(option, sizeof option, "--%s", opt->name);
        for (int v = 0; v < opt->n_values; v++) {
            const char *value = opt->values[v];
            if (spec->kind == DSLA_ARG_FLAG) {
                if (strcmp(value, "true") != 0 && strcmp(value, "false") != 0) {
                    fprintf(stderr, "dsla-serve: %s:%d: %s.options.%s: a flag: true or false\n",
                            file, opt->line, where, opt->name);
                    return 2;
                }
                if (strcmp(value, "true") == 0 && !push(c, option)) return 1;
                continue;
            }
            if (check_value(spec, value) != 0) {
                fprintf(stderr, "dsla-serve: %s:%d: %s.options.%s: refused (the line above)\n",
                        file, opt->line, where, opt->name);
                return 2;
            }
            if (!push2(c, option, value)) return 1;
        }
    }
    return 0;
}

/* CUDA_VISIBLE_DEVICES with the serving GPU first (a process serves on its first device), then the
 * node's other GPUs; *distill_index is where distill_gpu lands. Indices in the file count the
 * devices this process sees: an existing CUDA_VISIBLE_DEVICES (a scheduler's) is indexed. */
static int order_gpus(const dsla_cluster_node_t *node, int serving_gpu, int distill_gpu,
                      int *distill_index) {
    int order[DSLA_CLUSTER_GPUS_MAX + 2], n = 0;
    order[n++] = serving_gpu;
    for (int i = 0; i < node->n_gpus; i++)
        if (node->gpus[i] != serving_gpu) order[n++] = node->gpus[i];
    if (node->n_gpus == 0 && distill_gpu >= 0 && distill_gpu != serving_gpu)
        order[n++] = distill_gpu;
    *distill_index = 0;
    for (int i = 0; i < n; i++)
        if (order[i] == distill_gpu) *distill_index = i;
    const char *seen = getenv("CUDA_VISIBLE_DEVICES");
    char before[1024], out[1024];
    const char *entries[256];
    int n_entries = 0;
    if (seen && *seen) {
        snprintf(before, sizeof before, "%s", seen);
        for (char *save = NULL, *t = strtok_r(before, ",", &save); t && n_entries < 256;
             t = strtok_r(NULL, ",", &save))
            entries[n_entries++] = t;
    }
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (seen && *seen && order[i] >= n_entries) {
            fprintf(stderr,
                    "dsla-serve: node %s: GPU %d, but CUDA_VISIBLE_DEVICES=%s shows this process "
                    "%d devices (the file's indices count those)\n",
                    node->name, order[i], seen, n_entries);
            return 2;
        }
        char one[64];
        if (seen && *seen)
            snprintf(one, sizeof one, "%s", entries[order[i]]);
        else
            snprintf(one, sizeof one, "%d", order[i]);
        used += (size_t)snprintf(out + used, sizeof out - used, "%s%s", i ? "," : "", one);
    }
    setenv("CUDA_VISIBLE_DEVICES", out, 1);
    fprintf(stderr, "dsla-serve: node %s: CUDA_VISIBLE_DEVICES=%s (its serving GPU first)\n",
            node->name, out);
    return 0;
}

/* The node's command line, options: maps last. */
static int build(dsla_serve_cluster_t *c, const dsla_cluster_node_t *node, int ni,
                 const dsla_arg_spec_t *specs, int n_specs) {
    const dsla_cluster_t *f = c->file;
    const dsla_cluster_serving_t *sv = node->n_serving ? &node->serving[0] : NULL;
    const dsla_cluster_node_t *ctl = f->controller_node >= 0 ? &f->nodes[f->controller_node] : NULL;
    char db[4096];
    /* dsla-serve takes the last part of a path as the model's id */
    bool ok =
        push(c, "dsla-serve") && push2(c, "--model-name", f->model_name ? f->model_name : f->model);
    if (ok && sv) ok = push2(c, "--model", f->model) && push2(c, "--name", sv->name);
    if (ok && sv && strcmp(sv->device, "cuda") == 0) ok = push2(c, "--device", "cuda");
    if (ok && node->gateway.present) {
        ok = pushf(c, "--endpoint", "tcp://%s:%d", "*", node->gateway.port) &&
             push2(c, "--http", node->gateway.http ? node->gateway.http : "off");
        for (int i = 0; ok && i < f->n_nodes; i++)
            for (int s = 0; ok && i != ni && s < f->nodes[i].n_serving; s++)
                ok = pushf(c, "--replica", "tcp://%s:%d", f->nodes[i].host,
                           f->nodes[i].serving[s].port);
        if (ok && f->api_key_file && node->gateway.http)
            ok = push2(c, "--api-key-file", f->api_key_file);
    } else if (ok && sv) {
        ok = push(c, "--serving-only") && pushf(c, "--endpoint", "tcp://%s:%d", "*", sv->port);
        if (ok && ctl)
            ok = pushf(c, "--controller", "tcp://%s:%d", ctl->host, ctl->controller.port);
    }
    if (ok && node->controller.present) {
        const dsla_cluster_controller_t *cc = &node->controller;
        snprintf(db, sizeof db, "%s/controller.db", f->state ? f->state : f->layers);
        ok = push2(c, "--layers", f->layers) && push2(c, "--controller-db", db) &&
             pushf(c, "--admin", "tcp://%s:%d", "*", cc->admin_port ? cc->admin_port : cc->port);
        if (ok && cc->admin_port) ok = pushf(c, "--controller-bind", "tcp://%s:%d", "*", cc->port);
        if (ok && f->policy) ok = push2(c, "--policy", f->policy);
        if (ok && f->admin_key_file) ok = push2(c, "--admin-key-file", f->admin_key_file);
    }
    if (ok && f->curve_keys) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", f->curve_keys, node->name);
        ok = push2(c, "--curve-keys", dir);
    }
    if (ok && f->allow_insecure) ok = push(c, "--allow-insecure");
    const dsla_cluster_distiller_t *d = node->distiller.present ? &node->distiller : NULL;
    for (int i = 0; ok && d && i < d->n_data; i++)
        ok = push2(c, "--distill-data", d->data[i]);
    if (ok && d) ok = push2(c, "--distill-out", f->layers);
    if (!ok) return 1;
    int distill_index = d ? d->gpu : -1;
    if (sv && strcmp(sv->device, "cuda") == 0 &&
        order_gpus(node, sv->gpu, d ? d->gpu : -1, &distill_index) != 0)
        return 2;
    if (d && strcmp(d->device, "cuda") == 0) {
        char gpu[16];
        snprintf(gpu, sizeof gpu, "%d", distill_index);
        if (!push2(c, "--distill-device", "cuda") || !push2(c, "--distill-gpu", gpu)) return 1;
    }
    char where[128];
    int rc = 0;
    if (node->gateway.present) {
        snprintf(where, sizeof where, "nodes[%d].actors.gateway", ni);
        rc = add_options(c, &node->gateway.options, where, specs, n_specs);
    }
    if (rc == 0 && node->controller.present) {
        snprintf(where, sizeof where, "nodes[%d].actors.controller", ni);
        rc = add_options(c, &node->controller.options, where, specs, n_specs);
    }
    if (rc == 0 && sv) {
        snprintf(where, sizeof where, "nodes[%d].actors.serving[0]", ni);
        rc = add_options(c, &sv->options, where, specs, n_specs);
    }
    if (rc == 0 && d) {
        snprintf(where, sizeof where, "nodes[%d].actors.distiller", ni);
        rc = add_options(c, &d->options, where, specs, n_specs);
    }
    return rc;
}

/* The value of --NAME in argv ("--NAME V" or "--NAME=V"); NULL when absent. *missing when the
 * option is there without a value. */
static const char *find_arg(int argc, char **argv, const char *name, bool *missing) {
    const size_t len = strlen(name);
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0 || strncmp(argv[i] + 2, name, len) != 0) continue;
        if (argv[i][2 + len] == '=') return argv[i] + 3 + len;
        if (argv[i][2 + len] != '\0') continue;
        if (i + 1 < argc) return argv[i + 1];
        *missing = true;
    }
    return NULL;
}

int dsla_serve_cluster_args(int *argc, char ***argv, const dsla_arg_spec_t *specs, int n_specs,
                            dsla_serve_cluster_t **out) {
    *out = NULL;
    bool missing = false;
    const char *path = find_arg(*argc, *argv, "cluster", &missing);
    const char *node_name = find_arg(*argc, *argv, "node", &missing);
    if (!path && !node_name && !missing) return -1;
    if (!path || !node_name) {
        fprintf(stderr, "dsla-serve: --cluster FILE and --node NAME go together\n");
        return 2;
    }
    dsla_serve_cluster_t *c = calloc(1, sizeof *c);
    if (!c) return 1;
    *out = c;
    if (dsla_cluster_load(&c->file, path) != DSLA_OK) {
        fprintf(stderr, "dsla-serve: %s\n", dsla_last_error());
        return 2;
    }
    const dsla_cluster_node_t *node = dsla_cluster_node(c->file, node_name);
    if (!node) {
        fprintf(stderr, "dsla-serve: --node: %s\n", dsla_last_error());
        return 2;
    }
    const int rc = build(c, node, (int)(node - c->file->nodes), specs, n_specs);
    if (rc != 0) return rc;
    /* the other options given: after the file's, and none that the file sets */
    for (int i = 1; i < *argc; i++) {
        const char *a = (*argv)[i];
        const bool is_option = strncmp(a, "--", 2) == 0;
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(a + (is_option ? 2 : 0), "="),
                 a + (is_option ? 2 : 0));
        if (is_option && (strcmp(name, "cluster") == 0 || strcmp(name, "node") == 0)) {
            i += strchr(a, '=') ? 0 : 1;
            continue;
        }
        if (is_option && is_owned(name)) {
            fprintf(stderr,
                    "dsla-serve: --%s: the cluster file %s sets it for node %s; change the "
                    "file\n",
                    name, path, node_name);
            return 2;
        }
        if (!push(c, a)) return 1;
    }
    fprintf(stderr, "dsla-serve: node %s of %s:", node_name, path);
    for (int i = 1; i < c->argc; i++)
        fprintf(stderr, " %s", c->argv[i]);
    fputc('\n', stderr);
    *argc = c->argc;
    *argv = c->argv;
    return -1;
}

void dsla_serve_cluster_free(dsla_serve_cluster_t **cp) {
    if (!cp || !*cp) return;
    dsla_serve_cluster_t *c = *cp;
    for (int i = 0; i < c->argc; i++)
        free(c->argv[i]);
    free(c->argv);
    dsla_cluster_destroy(&c->file);
    free(c);
    *cp = NULL;
}

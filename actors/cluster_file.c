/* The cluster file: libyaml's document tree walked against the shape of cluster_file.h, one table
 * of keys per mapping, every refusal naming the file, the line and the field. */
#include "actors/cluster_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* A string the file gave longer than this is refused: paths, hosts, policies and option values
 * all fit. */
#define CLUSTER_STRING_MAX 4095
#define CLUSTER_PORT_MAX 65535
#define CLUSTER_GPU_MAX 1023

struct dsla_cluster_strings {
    char **items;
    size_t count, cap;
};

typedef struct {
    yaml_document_t *doc;
    const char *file;
    dsla_cluster_t *c;
} walk_t;

static int line_of(const yaml_node_t *n) {
    return n ? (int)n->start_mark.line + 1 : 1;
}

/* "FILE:LINE: FIELD: what" as this thread's message. */
static dsla_status_t fail(const walk_t *w, const yaml_node_t *n, const char *field, const char *fmt,
                          ...) __attribute__((format(printf, 4, 5)));
static dsla_status_t fail(const walk_t *w, const yaml_node_t *n, const char *field, const char *fmt,
                          ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s:%d: %s: %s", w->file, line_of(n), field, what);
}

/* A field's path ("nodes[1].actors.gateway.port") into out; cut at cap, which no real path
 * reaches. */
static void field_name(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void field_name(char *out, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

static const char *kind_name(const yaml_node_t *n) {
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return "a scalar";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "empty";
    }
}

static dsla_status_t keep(walk_t *w, const char *text, size_t len, const char **out) {
    struct dsla_cluster_strings *s = w->c->strings;
    if (s->count == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        char **items = realloc(s->items, cap * sizeof *items);
        if (!items) return dsla_error_oom("cluster file strings");
        s->items = items;
        s->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy) return dsla_error_oom("cluster file string of %zu bytes", len);
    memcpy(copy, text, len);
    copy[len] = '\0';
    s->items[s->count++] = copy;
    *out = copy;
    return DSLA_OK;
}

static const char *scalar_text(const yaml_node_t *n) {
    return (const char *)n->data.scalar.value;
}

/* A non-empty string scalar without control characters. */
static dsla_status_t get_string(walk_t *w, const yaml_node_t *n, const char *field,
                                const char **out) {
    if (n->type != YAML_SCALAR_NODE)
        return fail(w, n, field, "must be a string, not %s", kind_name(n));
    const size_t len = n->data.scalar.length;
    if (len == 0) return fail(w, n, field, "is empty");
    if (len > CLUSTER_STRING_MAX)
        return fail(w, n, field, "is %zu bytes, above the limit of %d", len, CLUSTER_STRING_MAX);
    for (size_t i = 0; i < len; i++)
        if (n->data.scalar.value[i] < 0x20 || n->data.scalar.value[i] == 0x7f)
            return fail(w, n, field, "holds a control character (byte %zu)", i);
    return keep(w, scalar_text(n), len, out);
}

/* true or false. */
static dsla_status_t get_bool(walk_t *w, const yaml_node_t *n, const char *field, bool *out) {
    if (n->type != YAML_SCALAR_NODE)
        return fail(w, n, field, "must be true or false, not %s", kind_name(n));
    const char *t = scalar_text(n);
    if (strcmp(t, "true") != 0 && strcmp(t, "false") != 0)
        return fail(w, n, field, "'%.40s' is not true or false", t);
    *out = t[0] == 't';
    return DSLA_OK;
}

/* A decimal integer scalar within [min, max]. */
static dsla_status_t get_int(walk_t *w, const yaml_node_t *n, const char *field, long min, long max,
                             int *out) {
    if (n->type != YAML_SCALAR_NODE)
        return fail(w, n, field, "must be an integer, not %s", kind_name(n));
    const char *t = scalar_text(n);
    const size_t len = n->data.scalar.length;
    size_t i = t[0] == '-' ? 1 : 0;
    if (len == i || len > 12) return fail(w, n, field, "'%.40s' is not an integer", t);
    for (size_t k = i; k < len; k++)
        if (t[k] < '0' || t[k] > '9') return fail(w, n, field, "'%.40s' is not an integer", t);
    const long v = strtol(t, NULL, 10);
    if (v < min || v > max) return fail(w, n, field, "%ld is outside %ld..%ld", v, min, max);
    *out = (int)v;
    return DSLA_OK;
}

/* A name that is a routing id at the controller and a word in messages. */
static dsla_status_t get_name(walk_t *w, const yaml_node_t *n, const char *field,
                              const char **out) {
    DSLA_TRY(get_string(w, n, field, out));
    const size_t len = strlen(*out);
    if (len > DSLA_CLUSTER_NAME_MAX)
        return fail(w, n, field, "'%s' is %zu bytes, above the limit of %d", *out, len,
                    DSLA_CLUSTER_NAME_MAX);
    for (size_t i = 0; i < len; i++) {
        const char ch = (*out)[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.'))
            return fail(w, n, field, "'%s': letters, digits, '-', '_' and '.' only", *out);
    }
    return DSLA_OK;
}

/* The values of a mapping's known keys, by their index in keys[]; NULL where absent. An unknown
 * key or one given twice is refused. */
static dsla_status_t walk_map(walk_t *w, const yaml_node_t *map, const char *field,
                              const char *const *keys, int n_keys, yaml_node_t **values) {
    if (map->type != YAML_MAPPING_NODE)
        return fail(w, map, field, "must be a mapping (key: value), not %s", kind_name(map));
    for (int i = 0; i < n_keys; i++)
        values[i] = NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(w->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(w->doc, p->value);
        if (!k || !v) return fail(w, map, field, "malformed entry");
        if (k->type != YAML_SCALAR_NODE)
            return fail(w, k, field, "a key must be a word, not %s", kind_name(k));
        int found = -1;
        for (int i = 0; i < n_keys && found < 0; i++)
            if (strcmp(scalar_text(k), keys[i]) == 0) found = i;
        if (found < 0) {
            char known[512];
            size_t used = 0;
            known[0] = '\0';
            for (int i = 0; i < n_keys && used < sizeof known; i++)
                used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "",
                                         keys[i]);
            return fail(w, k, field, "unknown key '%.64s' (known: %s)", scalar_text(k), known);
        }
        if (values[found])
            return fail(w, k, field, "'%s' is given twice (first on line %d)", keys[found],
                        line_of(values[found]));
        values[found] = v;
    }
    return DSLA_OK;
}

static dsla_status_t need(walk_t *w, const yaml_node_t *map, const yaml_node_t *value,
                          const char *field, const char *key) {
    if (!value) return fail(w, map, field, "'%s' is required", key);
    return DSLA_OK;
}

static dsla_status_t walk_seq(walk_t *w, const yaml_node_t *n, const char *field, int max,
                              int *count) {
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(w, n, field, "must be a list, not %s", kind_name(n));
    const long len = n->data.sequence.items.top - n->data.sequence.items.start;
    if (len == 0) return fail(w, n, field, "is an empty list");
    if (len > max) return fail(w, n, field, "holds %ld entries, above the limit of %d", len, max);
    *count = (int)len;
    return DSLA_OK;
}

static yaml_node_t *seq_item(walk_t *w, const yaml_node_t *n, int i) {
    return yaml_document_get_node(w->doc, n->data.sequence.items.start[i]);
}

/* A list of strings, or one string standing for a list of one. */
static dsla_status_t get_strings(walk_t *w, const yaml_node_t *n, const char *field,
                                 const char **out, int *count) {
    if (n->type != YAML_SCALAR_NODE && n->type != YAML_SEQUENCE_NODE)
        return fail(w, n, field, "must be a string or a list of strings, not %s", kind_name(n));
    if (n->type == YAML_SCALAR_NODE) {
        *count = 1;
        return get_string(w, n, field, &out[0]);
    }
    DSLA_TRY(walk_seq(w, n, field, DSLA_CLUSTER_VALUES_MAX, count));
    char item[160];
    for (int i = 0; i < *count; i++) {
        field_name(item, sizeof item, "%s[%d]", field, i);
        DSLA_TRY(get_string(w, seq_item(w, n, i), item, &out[i]));
    }
    return DSLA_OK;
}

/* options: {name: value | [value...]}. Names are dsla-serve's options without "--"; the command
 * checks them against its own table. */
static dsla_status_t get_options(walk_t *w, const yaml_node_t *n, const char *field,
                                 dsla_cluster_options_t *o) {
    if (n->type != YAML_MAPPING_NODE)
        return fail(w, n, field, "must be a mapping of dsla-serve options, not %s", kind_name(n));
    char item[160];
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(w->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(w->doc, p->value);
        if (!k || !v) return fail(w, n, field, "malformed entry");
        if (o->count == DSLA_CLUSTER_OPTIONS_MAX)
            return fail(w, k, field, "more than %d options", DSLA_CLUSTER_OPTIONS_MAX);
        dsla_cluster_option_t *opt = &o->items[o->count];
        DSLA_TRY(get_name(w, k, field, &opt->name));
        if (opt->name[0] == '-')
            return fail(w, k, field, "'%s': an option's name without the leading \"--\"",
                        opt->name);
        for (int i = 0; i < o->count; i++)
            if (strcmp(o->items[i].name, opt->name) == 0)
                return fail(w, k, field, "'%s' is given twice (first on line %d)", opt->name,
                            o->items[i].line);
        field_name(item, sizeof item, "%s.%s", field, opt->name);
        opt->line = line_of(k);
        opt->is_list = v->type == YAML_SEQUENCE_NODE;
        DSLA_TRY(get_strings(w, v, item, opt->values, &opt->n_values));
        o->count++;
    }
    return DSLA_OK;
}

/* device: cpu|cuda and gpu: N (an index the node lists in gpus:, when it lists any). */
static dsla_status_t get_device(walk_t *w, const dsla_cluster_node_t *node, const yaml_node_t *map,
                                const yaml_node_t *device, const yaml_node_t *gpu,
                                const char *field, const char **out_device, int *out_gpu) {
    char item[160];
    *out_device = "cpu";
    *out_gpu = -1;
    if (device) {
        field_name(item, sizeof item, "%s.device", field);
        DSLA_TRY(get_string(w, device, item, out_device));
        if (strcmp(*out_device, "cpu") != 0 && strcmp(*out_device, "cuda") != 0)
            return fail(w, device, item, "'%s': cpu or cuda", *out_device);
    }
    const bool cuda = strcmp(*out_device, "cuda") == 0;
    field_name(item, sizeof item, "%s.gpu", field);
    if (gpu && !cuda) return fail(w, gpu, item, "is for device: cuda");
    if (!cuda) return DSLA_OK;
    *out_gpu = node->n_gpus ? node->gpus[0] : 0;
    if (gpu) DSLA_TRY(get_int(w, gpu, item, 0, CLUSTER_GPU_MAX, out_gpu));
    bool listed = node->n_gpus == 0;
    for (int i = 0; i < node->n_gpus; i++)
        listed = listed || node->gpus[i] == *out_gpu;
    if (!listed)
        return fail(w, gpu ? gpu : map, item, "GPU %d is not among the node's gpus", *out_gpu);
    return DSLA_OK;
}

/* key's value v of a mapping as a port in field.key; 0 when absent and not required */
static dsla_status_t get_port(walk_t *w, const yaml_node_t *map, const yaml_node_t *v,
                              const char *field, const char *key, bool required, int *out) {
    char item[160];
    field_name(item, sizeof item, "%s.%s", field, key);
    *out = 0;
    if (required) DSLA_TRY(need(w, map, v, field, key));
    return v ? get_int(w, v, item, 1, CLUSTER_PORT_MAX, out) : DSLA_OK;
}

/* an actor's options: map, when v is there */
static dsla_status_t get_actor_options(walk_t *w, const yaml_node_t *v, const char *field,
                                       dsla_cluster_options_t *o) {
    char item[160];
    field_name(item, sizeof item, "%s.options", field);
    return v ? get_options(w, v, item, o) : DSLA_OK;
}

static dsla_status_t walk_gateway(walk_t *w, const yaml_node_t *n, const char *field,
                                  dsla_cluster_gateway_t *g) {
    static const char *const keys[] = {"http", "port", "options"};
    yaml_node_t *v[3];
    char item[160];
    DSLA_TRY(walk_map(w, n, field, keys, 3, v));
    g->present = true;
    g->line = line_of(n);
    DSLA_TRY(get_port(w, n, v[1], field, "port", true, &g->port));
    field_name(item, sizeof item, "%s.http", field);
    if (v[0]) DSLA_TRY(get_string(w, v[0], item, &g->http));
    if (g->http && strcmp(g->http, "off") == 0)
        return fail(w, v[0], item, "leave http out for no HTTP");
    return get_actor_options(w, v[2], field, &g->options);
}

static dsla_status_t walk_controller(walk_t *w, const yaml_node_t *n, const char *field,
                                     dsla_cluster_controller_t *c) {
    static const char *const keys[] = {"port", "admin_port", "options"};
    yaml_node_t *v[3];
    DSLA_TRY(walk_map(w, n, field, keys, 3, v));
    c->present = true;
    c->line = line_of(n);
    DSLA_TRY(get_port(w, n, v[0], field, "port", true, &c->port));
    DSLA_TRY(get_port(w, n, v[1], field, "admin_port", false, &c->admin_port));
    if (c->admin_port == c->port) c->admin_port = 0;
    return get_actor_options(w, v[2], field, &c->options);
}

static dsla_status_t walk_serving(walk_t *w, const dsla_cluster_node_t *node, const yaml_node_t *n,
                                  const char *field, dsla_cluster_serving_t *s) {
    static const char *const keys[] = {"name", "port", "device", "gpu", "options"};
    yaml_node_t *v[5];
    char item[160];
    DSLA_TRY(walk_map(w, n, field, keys, 5, v));
    s->line = line_of(n);
    field_name(item, sizeof item, "%s.name", field);
    DSLA_TRY(need(w, n, v[0], field, "name"));
    DSLA_TRY(get_name(w, v[0], item, &s->name));
    DSLA_TRY(get_port(w, n, v[1], field, "port", false, &s->port));
    DSLA_TRY(get_device(w, node, n, v[2], v[3], field, &s->device, &s->gpu));
    return get_actor_options(w, v[4], field, &s->options);
}

static dsla_status_t walk_distiller(walk_t *w, const dsla_cluster_node_t *node,
                                    const yaml_node_t *n, const char *field,
                                    dsla_cluster_distiller_t *d) {
    static const char *const keys[] = {"device", "gpu", "data", "options"};
    yaml_node_t *v[4];
    char item[160];
    DSLA_TRY(walk_map(w, n, field, keys, 4, v));
    d->present = true;
    d->line = line_of(n);
    DSLA_TRY(get_device(w, node, n, v[0], v[1], field, &d->device, &d->gpu));
    field_name(item, sizeof item, "%s.data", field);
    DSLA_TRY(need(w, n, v[2], field, "data"));
    DSLA_TRY(get_strings(w, v[2], item, d->data, &d->n_data));
    return get_actor_options(w, v[3], field, &d->options);
}

static dsla_status_t walk_actors(walk_t *w, dsla_cluster_node_t *node, const yaml_node_t *n,
                                 const char *field) {
    static const char *const keys[] = {"gateway", "controller", "serving", "distiller"};
    yaml_node_t *v[4];
    char item[160];
    DSLA_TRY(walk_map(w, n, field, keys, 4, v));
    if (!v[0] && !v[1] && !v[2] && !v[3])
        return fail(w, n, field, "names no actor (gateway, controller, serving, distiller)");
    field_name(item, sizeof item, "%s.gateway", field);
    if (v[0]) DSLA_TRY(walk_gateway(w, v[0], item, &node->gateway));
    field_name(item, sizeof item, "%s.controller", field);
    if (v[1]) DSLA_TRY(walk_controller(w, v[1], item, &node->controller));
    if (v[2]) {
        field_name(item, sizeof item, "%s.serving", field);
        DSLA_TRY(walk_seq(w, v[2], item, DSLA_CLUSTER_SERVING_MAX, &node->n_serving));
        for (int i = 0; i < node->n_serving; i++) {
            field_name(item, sizeof item, "%s.serving[%d]", field, i);
            DSLA_TRY(walk_serving(w, node, seq_item(w, v[2], i), item, &node->serving[i]));
        }
    }
    field_name(item, sizeof item, "%s.distiller", field);
    if (v[3]) DSLA_TRY(walk_distiller(w, node, v[3], item, &node->distiller));
    return DSLA_OK;
}

static dsla_status_t walk_node(walk_t *w, const yaml_node_t *n, const char *field,
                               dsla_cluster_node_t *node) {
    static const char *const keys[] = {"name", "host", "gpus", "actors"};
    yaml_node_t *v[4];
    char item[160];
    DSLA_TRY(walk_map(w, n, field, keys, 4, v));
    node->line = line_of(n);
    field_name(item, sizeof item, "%s.name", field);
    DSLA_TRY(need(w, n, v[0], field, "name"));
    DSLA_TRY(get_name(w, v[0], item, &node->name));
    field_name(item, sizeof item, "%s.host", field);
    DSLA_TRY(need(w, n, v[1], field, "host"));
    DSLA_TRY(get_string(w, v[1], item, &node->host));
    if (strlen(node->host) > 253 || strpbrk(node->host, " /:@*[]"))
        return fail(w, v[1], item, "'%.64s' is not a host name or IPv4 address", node->host);
    if (v[2]) {
        field_name(item, sizeof item, "%s.gpus", field);
        DSLA_TRY(walk_seq(w, v[2], item, DSLA_CLUSTER_GPUS_MAX, &node->n_gpus));
        for (int i = 0; i < node->n_gpus; i++) {
            field_name(item, sizeof item, "%s.gpus[%d]", field, i);
            DSLA_TRY(get_int(w, seq_item(w, v[2], i), item, 0, CLUSTER_GPU_MAX, &node->gpus[i]));
            for (int j = 0; j < i; j++)
                if (node->gpus[j] == node->gpus[i])
                    return fail(w, seq_item(w, v[2], i), item, "GPU %d is listed twice",
                                node->gpus[i]);
        }
    }
    field_name(item, sizeof item, "%s.actors", field);
    DSLA_TRY(need(w, n, v[3], field, "actors"));
    return walk_actors(w, node, v[3], item);
}

/* Each port once per node: two actors cannot bind one. */
static dsla_status_t check_ports(walk_t *w, int ni) {
    const dsla_cluster_node_t *node = &w->c->nodes[ni];
    int ports[DSLA_CLUSTER_SERVING_MAX + 3], lines[DSLA_CLUSTER_SERVING_MAX + 3], n = 0;
    const char *what[DSLA_CLUSTER_SERVING_MAX + 3];
    if (node->gateway.present)
        ports[n] = node->gateway.port, lines[n] = node->gateway.line, what[n++] = "gateway.port";
    if (node->controller.present) {
        ports[n] = node->controller.port, lines[n] = node->controller.line;
        what[n++] = "controller.port";
        if (node->controller.admin_port)
            ports[n] = node->controller.admin_port, lines[n] = node->controller.line,
            what[n++] = "controller.admin_port";
    }
    for (int i = 0; i < node->n_serving; i++)
        if (node->serving[i].port)
            ports[n] = node->serving[i].port, lines[n] = node->serving[i].line,
            what[n++] = "serving.port";
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (ports[i] == ports[j])
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "%s:%d: nodes[%d].actors.%s: port %d is also %s (line %d) on "
                                  "node %s",
                                  w->file, lines[i], ni, what[i], ports[i], what[j], lines[j],
                                  node->name);
    return DSLA_OK;
}

/* What the cluster as a whole must hold: one gateway, at most one controller, unique names, and
 * the placements dsla-serve can start (cluster_file.h; docs/operations.md). */
static dsla_status_t check_cluster(walk_t *w, const yaml_node_t *root) {
    dsla_cluster_t *c = w->c;
    c->controller_node = c->gateway_node = -1;
    for (int i = 0; i < c->n_nodes; i++) {
        const dsla_cluster_node_t *node = &c->nodes[i];
        for (int j = 0; j < i; j++)
            if (strcmp(c->nodes[j].name, node->name) == 0)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "%s:%d: nodes[%d].name: '%s' is also node %d's (line %d)",
                                  w->file, node->line, i, node->name, j, c->nodes[j].line);
        if (node->gateway.present) {
            if (c->gateway_node >= 0)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "%s:%d: nodes[%d].actors.gateway: a second gateway (the first "
                                  "is node %s's, line %d); a cluster has one",
                                  w->file, node->gateway.line, i, c->nodes[c->gateway_node].name,
                                  c->nodes[c->gateway_node].gateway.line);
            c->gateway_node = i;
        }
        if (node->controller.present) {
            if (c->controller_node >= 0)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "%s:%d: nodes[%d].actors.controller: a second controller (the "
                                  "first is node %s's, line %d); a cluster has one",
                                  w->file, node->controller.line, i,
                                  c->nodes[c->controller_node].name,
                                  c->nodes[c->controller_node].controller.line);
            c->controller_node = i;
        }
        DSLA_TRY(check_ports(w, i));
    }
    if (c->gateway_node < 0)
        return fail(w, root, "nodes", "no node runs the gateway; a cluster has one");
    for (int i = 0; i < c->n_nodes; i++) {
        const dsla_cluster_node_t *node = &c->nodes[i];
        /* dsla-serve runs one engine a process: a node per serving actor (one per GPU). */
        if (node->n_serving > 1)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s:%d: nodes[%d].actors.serving[1]: node %s runs %d serving actors; "
                              "one per node (give each GPU a node of its own, same host)",
                              w->file, node->serving[1].line, i, node->name, node->n_serving);
        for (int s = 0; s < node->n_serving; s++) {
            const dsla_cluster_serving_t *sv = &node->serving[s];
            for (int j = 0; j <= i; j++)
                for (int t = 0; t < (j == i ? s : c->nodes[j].n_serving); t++)
                    if (strcmp(c->nodes[j].serving[t].name, sv->name) == 0)
                        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                          "%s:%d: nodes[%d].actors.serving[%d].name: '%s' is also "
                                          "the name of the serving actor on line %d",
                                          w->file, sv->line, i, s, sv->name,
                                          c->nodes[j].serving[t].line);
            if (strcmp(sv->name, "distiller") == 0)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "%s:%d: nodes[%d].actors.serving[%d].name: 'distiller' is the "
                                  "distiller's name at the controller",
                                  w->file, sv->line, i, s);
            const bool with_gateway = node->gateway.present;
            if (with_gateway && sv->port)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "%s:%d: nodes[%d].actors.serving[%d].port: this serving actor "
                                  "runs in the gateway's process (inproc); leave port out",
                                  w->file, sv->line, i, s);
            if (!with_gateway && !sv->port)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "%s:%d: nodes[%d].actors.serving[%d]: 'port' is required: the "
                                  "gateway reaches it at %s:PORT",
                                  w->file, sv->line, i, s, node->host);
        }
        if (node->controller.present && !node->gateway.present)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s:%d: nodes[%d].actors.controller: the controller runs on the "
                              "gateway's node (%s) for now",
                              w->file, node->controller.line, i, c->nodes[c->gateway_node].name);
        if (node->distiller.present && !node->controller.present)
            return dsla_error(
                DSLA_ERR_INVALID_ARGUMENT,
                "%s:%d: nodes[%d].actors.distiller: the distiller runs on the controller's "
                "node%s%s: it writes layer versions into the controller's layer directory",
                w->file, node->distiller.line, i, c->controller_node >= 0 ? " " : "",
                c->controller_node >= 0 ? c->nodes[c->controller_node].name : " (there is none)");
        /* dsla-serve's distiller trains beside a local serving actor, which feeds it prompts */
        if (node->distiller.present && node->controller.present && node->n_serving == 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s:%d: nodes[%d].actors.distiller: the distiller runs beside a "
                              "serving actor of its node (it samples the prompts that one "
                              "serves); add one to node %s",
                              w->file, node->distiller.line, i, node->name);
        if (node->controller.present && !c->layers)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s:%d: layers: required with a controller (nodes[%d], line %d): "
                              "its layer version directory",
                              w->file, line_of(root), i, node->controller.line);
        if (!node->gateway.present && node->n_serving == 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s:%d: nodes[%d].actors: node %s runs no gateway and no serving "
                              "actor: nothing to start",
                              w->file, node->line, i, node->name);
    }
    return DSLA_OK;
}

static dsla_status_t walk_root(walk_t *w, const yaml_node_t *root) {
    static const char *const keys[] = {"version", "model", "model_name", "layers",
                                       "state",   "keys",  "policy",     "nodes"};
    enum { VERSION, MODEL, MODEL_NAME, LAYERS, STATE, KEYS, POLICY, NODES, N_KEYS };
    yaml_node_t *v[N_KEYS];
    dsla_cluster_t *c = w->c;
    DSLA_TRY(walk_map(w, root, "the file", keys, N_KEYS, v));
    DSLA_TRY(need(w, root, v[VERSION], "the file", "version"));
    DSLA_TRY(get_int(w, v[VERSION], "version", 0, 1 << 20, &c->version));
    if (c->version != DSLA_CLUSTER_VERSION)
        return fail(w, v[VERSION], "version", "%d: this dsla-serve reads version %d", c->version,
                    DSLA_CLUSTER_VERSION);
    DSLA_TRY(need(w, root, v[MODEL], "the file", "model"));
    DSLA_TRY(get_string(w, v[MODEL], "model", &c->model));
    if (v[MODEL_NAME]) DSLA_TRY(get_name(w, v[MODEL_NAME], "model_name", &c->model_name));
    if (v[LAYERS]) DSLA_TRY(get_string(w, v[LAYERS], "layers", &c->layers));
    if (v[STATE]) DSLA_TRY(get_string(w, v[STATE], "state", &c->state));
    if (v[POLICY]) DSLA_TRY(get_string(w, v[POLICY], "policy", &c->policy));
    if (v[KEYS]) {
        static const char *const key_keys[] = {"api_key_file", "admin_key_file", "curve_keys",
                                               "allow_insecure"};
        yaml_node_t *k[4];
        DSLA_TRY(walk_map(w, v[KEYS], "keys", key_keys, 4, k));
        if (k[0]) DSLA_TRY(get_string(w, k[0], "keys.api_key_file", &c->api_key_file));
        if (k[1]) DSLA_TRY(get_string(w, k[1], "keys.admin_key_file", &c->admin_key_file));
        if (k[2]) DSLA_TRY(get_string(w, k[2], "keys.curve_keys", &c->curve_keys));
        if (k[3]) DSLA_TRY(get_bool(w, k[3], "keys.allow_insecure", &c->allow_insecure));
        if (c->curve_keys && c->allow_insecure)
            return fail(w, k[3], "keys.allow_insecure",
                        "contradicts keys.curve_keys: links are either CURVE or plaintext");
    }
    DSLA_TRY(need(w, root, v[NODES], "the file", "nodes"));
    DSLA_TRY(walk_seq(w, v[NODES], "nodes", DSLA_CLUSTER_NODES_MAX, &c->n_nodes));
    c->nodes = calloc((size_t)c->n_nodes, sizeof *c->nodes);
    if (!c->nodes) return dsla_error_oom("cluster file: %d nodes", c->n_nodes);
    char item[64];
    for (int i = 0; i < c->n_nodes; i++) {
        field_name(item, sizeof item, "nodes[%d]", i);
        DSLA_TRY(walk_node(w, seq_item(w, v[NODES], i), item, &c->nodes[i]));
    }
    return check_cluster(w, root);
}

/* libyaml's own refusal, with its line. */
static dsla_status_t yaml_failure(const yaml_parser_t *p, const char *file) {
    const yaml_mark_t *m =
        p->problem_mark.line || p->problem_mark.column ? &p->problem_mark : &p->context_mark;
    return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s:%d: not YAML: %s%s%s", file, (int)m->line + 1,
                      p->problem ? p->problem : "malformed", p->context ? " " : "",
                      p->context ? p->context : "");
}

dsla_status_t dsla_cluster_parse(dsla_cluster_t **out, const char *text, size_t len,
                                 const char *name) {
    *out = NULL;
    if (len > DSLA_CLUSTER_FILE_BYTES_MAX)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %zu bytes, above the limit of %d", name,
                          len, DSLA_CLUSTER_FILE_BYTES_MAX);
    dsla_cluster_t *c = calloc(1, sizeof *c);
    if (!c || !(c->strings = calloc(1, sizeof *c->strings))) {
        free(c);
        return dsla_error_oom("cluster file");
    }
    walk_t w = {.file = name, .c = c};
    dsla_status_t st = keep(&w, name, strlen(name), &c->path);
    yaml_parser_t parser;
    yaml_document_t doc;
    bool have_parser = false, have_doc = false;
    if (st == DSLA_OK && !yaml_parser_initialize(&parser)) st = dsla_error_oom("YAML parser");
    if (st == DSLA_OK) {
        have_parser = true;
        yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
        if (!yaml_parser_load(&parser, &doc))
            st = yaml_failure(&parser, name);
        else
            have_doc = true;
    }
    w.doc = &doc;
    yaml_node_t *root = have_doc ? yaml_document_get_root_node(&doc) : NULL;
    if (st == DSLA_OK && !root)
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s:1: the file is empty", name);
    if (st == DSLA_OK) st = walk_root(&w, root);
    if (st == DSLA_OK) { /* one document: a second is a mistake, not something to ignore */
        yaml_document_t next;
        if (!yaml_parser_load(&parser, &next)) {
            st = yaml_failure(&parser, name);
        } else {
            yaml_node_t *extra = yaml_document_get_root_node(&next);
            if (extra)
                st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                "%s:%d: a second YAML document; the cluster file is one", name,
                                line_of(extra));
            yaml_document_delete(&next);
        }
    }
    if (have_doc) yaml_document_delete(&doc);
    if (have_parser) yaml_parser_delete(&parser);
    if (st != DSLA_OK) {
        dsla_cluster_destroy(&c);
        return st;
    }
    *out = c;
    return DSLA_OK;
}

dsla_status_t dsla_cluster_load(dsla_cluster_t **out, const char *path) {
    *out = NULL;
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return dsla_error(DSLA_ERR_NOT_FOUND, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    dsla_status_t st = DSLA_OK;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: not a regular file", path);
    else if (sb.st_size > DSLA_CLUSTER_FILE_BYTES_MAX)
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %lld bytes, above the limit of %d", path,
                        (long long)sb.st_size, DSLA_CLUSTER_FILE_BYTES_MAX);
    char *text = st == DSLA_OK ? malloc((size_t)sb.st_size + 1) : NULL;
    if (st == DSLA_OK && !text) st = dsla_error_oom("%s", path);
    size_t got = 0;
    while (st == DSLA_OK && got < (size_t)sb.st_size) {
        const ssize_t r = read(fd, text + got, (size_t)sb.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) st = dsla_error(DSLA_ERR_IO, "%s: read failed", path);
        got += r > 0 ? (size_t)r : 0;
    }
    close(fd);
    if (st == DSLA_OK) st = dsla_cluster_parse(out, text, got, path);
    free(text);
    return st;
}

void dsla_cluster_destroy(dsla_cluster_t **cp) {
    if (!cp || !*cp) return;
    dsla_cluster_t *c = *cp;
    if (c->strings) {
        for (size_t i = 0; i < c->strings->count; i++)
            free(c->strings->items[i]);
        free(c->strings->items);
        free(c->strings);
    }
    free(c->nodes);
    free(c);
    *cp = NULL;
}

const dsla_cluster_node_t *dsla_cluster_node(const dsla_cluster_t *c, const char *name) {
    char names[512];
    size_t used = 0;
    names[0] = '\0';
    for (int i = 0; i < c->n_nodes; i++) {
        if (strcmp(c->nodes[i].name, name) == 0) return &c->nodes[i];
        if (used < sizeof names)
            used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                                     c->nodes[i].name);
    }
    dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: no node is called '%s' (the file's nodes: %s)",
               c->path, name, names);
    return NULL;
}

bool dsla_cluster_admin_endpoint(const dsla_cluster_t *c, char *out, size_t cap) {
    if (c->controller_node < 0) return false;
    const dsla_cluster_node_t *n = &c->nodes[c->controller_node];
    snprintf(out, cap, "tcp://%s:%d", n->host,
             n->controller.admin_port ? n->controller.admin_port : n->controller.port);
    return true;
}

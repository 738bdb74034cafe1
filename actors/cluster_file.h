/* The cluster file (docs/operations.md): one YAML file, read with libyaml, naming the model, the
 * layer and state directories, the key files, the load policy and, per node, its host and the
 * actors it runs with their ports, devices and dsla-serve options. Every node of a cluster reads
 * the same file; `dsla-serve --cluster FILE --node NAME` starts one node's actors from it and
 * `dslactl --cluster FILE` finds the controller.
 *
 * Contract: load reads and checks the whole file (shape, types, limits, unknown keys, duplicate
 * names and ports, cross-references) and fails with "FILE:LINE: FIELD: what is wrong" for the
 * first problem; what it returns is consistent. An `options:` map is kept as text: its names and
 * values are dsla-serve's options, which only dsla-serve's own table can check (cli/dsla-serve).
 * It must not open the files the cluster file names, resolve hosts or start anything. */
#ifndef DSLA_ACTORS_CLUSTER_FILE_H
#define DSLA_ACTORS_CLUSTER_FILE_H

#include <stdbool.h>
#include <stddef.h>

#include "runtime/core/status.h"

/* Limits of one file: more than a deployment needs, few enough that a hostile file stays small. */
#define DSLA_CLUSTER_FILE_BYTES_MAX (1 << 20)
#define DSLA_CLUSTER_NODES_MAX 256
#define DSLA_CLUSTER_SERVING_MAX 16 /* serving actors per node */
#define DSLA_CLUSTER_GPUS_MAX 16    /* GPUs per node */
#define DSLA_CLUSTER_OPTIONS_MAX 32 /* entries of one options: map */
#define DSLA_CLUSTER_VALUES_MAX 16  /* values of one option (a list) or distiller data files */
#define DSLA_CLUSTER_NAME_MAX 63    /* node and actor names: the controller's routing ids */
#define DSLA_CLUSTER_VERSION 1

/* One entry of an options: map: `--name value` (one value), repeated for a list, or a flag
 * (flag_value true or false). */
typedef struct {
    const char *name;
    const char *values[DSLA_CLUSTER_VALUES_MAX];
    int n_values;
    bool is_list;
    int line;
} dsla_cluster_option_t;

typedef struct {
    dsla_cluster_option_t items[DSLA_CLUSTER_OPTIONS_MAX];
    int count;
} dsla_cluster_options_t;

typedef struct {
    bool present;
    int line;
    const char *http; /* HTTP address, e.g. "0.0.0.0:8000"; NULL: no HTTP */
    int port;         /* the clients' mailbox, bound on every interface */
    dsla_cluster_options_t options;
} dsla_cluster_gateway_t;

typedef struct {
    bool present;
    int line;
    int port;       /* its mailbox for serving actors and the distiller */
    int admin_port; /* its mailbox for dslactl; 0: port */
    dsla_cluster_options_t options;
} dsla_cluster_controller_t;

typedef struct {
    const char *name;
    int line;
    int port;           /* its mailbox, on every interface, reached at the node's host */
    const char *device; /* "cpu" or "cuda" */
    int gpu;            /* an index of the node's gpus; -1: none (cpu) */
    dsla_cluster_options_t options;
} dsla_cluster_serving_t;

typedef struct {
    bool present;
    int line;
    const char *device;
    int gpu;
    const char *data[DSLA_CLUSTER_VALUES_MAX]; /* calibration text files */
    int n_data;
    dsla_cluster_options_t options;
} dsla_cluster_distiller_t;

typedef struct {
    const char *name;
    const char *host; /* the address other nodes reach this node's mailboxes at */
    int line;
    int gpus[DSLA_CLUSTER_GPUS_MAX];
    int n_gpus;
    dsla_cluster_gateway_t gateway;
    dsla_cluster_controller_t controller;
    dsla_cluster_serving_t serving[DSLA_CLUSTER_SERVING_MAX];
    int n_serving;
    dsla_cluster_distiller_t distiller;
} dsla_cluster_node_t;

typedef struct dsla_cluster {
    const char *path; /* as given to load, for messages */
    int version;
    const char *model;      /* model directory, the same path on every node */
    const char *model_name; /* NULL: the model directory's name */
    const char *layers;     /* layer versions: the controller's directory, the distiller's out */
    const char *state;      /* the controller's state directory (controller.db); NULL: layers */
    const char *api_key_file, *admin_key_file; /* NULL: none */
    /* keys.curve_keys: a directory with one CURVE key directory per node, DIR/NODE (node.key,
     * node.pub, authorized_keys, known_servers: docs/security.md); NULL: plaintext links, which
     * bind beyond loopback only with keys.allow_insecure: true */
    const char *curve_keys;
    bool allow_insecure;
    const char *policy; /* NULL: the stored one */
    dsla_cluster_node_t *nodes;
    int n_nodes;
    /* the one controller's node and the gateway's; -1 when the file has none */
    int controller_node, gateway_node;
    struct dsla_cluster_strings *strings; /* owns every string above */
} dsla_cluster_t;

/* Reads and checks path (a regular file of at most DSLA_CLUSTER_FILE_BYTES_MAX bytes). */
dsla_status_t dsla_cluster_load(dsla_cluster_t **out, const char *path);
/* The same from text in memory; name stands for the file in messages. */
dsla_status_t dsla_cluster_parse(dsla_cluster_t **out, const char *text, size_t len,
                                 const char *name);
/* Harmless on NULL; sets *c to NULL. */
void dsla_cluster_destroy(dsla_cluster_t **c);
/* The node called name; NULL (with a message listing the file's nodes) when there is none. */
const dsla_cluster_node_t *dsla_cluster_node(const dsla_cluster_t *c, const char *name);
/* "tcp://HOST:PORT" of the controller's admin mailbox; false without a controller. */
bool dsla_cluster_admin_endpoint(const dsla_cluster_t *c, char *out, size_t cap);

#endif

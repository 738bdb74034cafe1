/* dsla-serve --cluster FILE --node NAME: the node's part of a cluster file (actors/cluster_file.h)
 * turned into the command line that starts its actors, so that the file's settings and its
 * options: maps pass through the same option table, limits and checks as typed options.
 *
 * Contract: it reads the file and the environment only; it sets CUDA_VISIBLE_DEVICES when the
 * node's serving actor runs on a GPU other than the first it sees (a process serves on its first
 * device). The argv it builds lives until dsla_serve_cluster_free. */
#ifndef DSLA_CLI_DSLA_SERVE_CLUSTER_H
#define DSLA_CLI_DSLA_SERVE_CLUSTER_H

#include "cli/dsla/args.h"

typedef struct dsla_serve_cluster dsla_serve_cluster_t;

/* When argv holds --cluster (with --node), replaces *argc and *argv with the node's command line
 * followed by the other options given (which may not repeat what the file sets) and returns -1:
 * go on. Without --cluster it changes nothing and returns -1. Else the exit code: 2 after a
 * message naming FILE:LINE and the field, or the option, that is wrong. specs is dsla-serve's
 * option table: option names and values in the file are checked against it. */
int dsla_serve_cluster_args(int *argc, char ***argv, const dsla_arg_spec_t *specs, int n_specs,
                            dsla_serve_cluster_t **out);
void dsla_serve_cluster_free(dsla_serve_cluster_t **c);

#endif

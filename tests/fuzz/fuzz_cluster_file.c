/* libFuzzer target: a cluster file (actors/cluster_file.h) through libyaml and the walk that checks
 * it; an accepted file is looked up as dslactl and dsla-serve would. */
#include <stdint.h>

#include "actors/cluster_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dsla_cluster_t *c = NULL;
    if (dsla_cluster_parse(&c, (const char *)data, size, "fuzz.yaml") == DSLA_OK) {
        char admin[512];
        (void)dsla_cluster_admin_endpoint(c, admin, sizeof admin);
        for (int i = 0; i < c->n_nodes; i++)
            (void)dsla_cluster_node(c, c->nodes[i].name);
        dsla_cluster_destroy(&c);
    }
    return 0;
}

/* What every serving backend shares (backend.h). */
#include "runtime/serve/backend.h"

#include <stddef.h>

void dsla_serve_backend_destroy(dsla_serve_backend_t **b) {
    if (!b || !*b) return;
    (*b)->ops->destroy(*b);
    *b = NULL;
}

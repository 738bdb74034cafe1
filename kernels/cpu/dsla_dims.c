/* Argument checks shared by the DSLA kernel forms. */
#include <limits.h>

#include "kernels/cpu/dsla_internal.h"

/* Largest activation accepted, in elements: offsets are size_t, BLAS leading dimensions are int,
 * and 2^40 elements is far beyond any batch this runtime serves, so a larger request is a caller
 * bug. */
#define DSLA_DSLA_MAX_ELEMENTS 1099511627776.0

dsla_status_t dsla_cpu_dsla_check_dims(const dsla_dsla_dims_t *dims, const char *who) {
    if (!dims) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: dims is NULL", who);
    if (dims->batch < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: batch %d must be >= 1", who, dims->batch);
    if (dims->tokens < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: tokens %d must be >= 0", who,
                          dims->tokens);
    if (dims->heads < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: heads %d must be >= 1", who, dims->heads);
    if (dims->head_dim < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: head_dim %d must be >= 1", who,
                          dims->head_dim);
    double width = (double)dims->heads * dims->head_dim;
    double numel = (double)dims->batch * dims->tokens * width;
    if (width > INT_MAX || numel > DSLA_DSLA_MAX_ELEMENTS)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: B %d x T %d x H %d x d %d = %.0f elements exceeds the limit of %.0f",
                          who, dims->batch, dims->tokens, dims->heads, dims->head_dim, numel,
                          DSLA_DSLA_MAX_ELEMENTS);
    return DSLA_OK;
}

dsla_status_t dsla_cpu_dsla_check_in(const dsla_dsla_in_t *in, const void *work, const char *who) {
    if (!in || !in->q || !in->k || !in->v || !in->a1 || !in->a2 || !in->alpha)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: q, k, v, a1, a2 and alpha are required",
                          who);
    if (!work) return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: work is NULL", who);
    return DSLA_OK;
}

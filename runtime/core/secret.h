/* Unguessable numbers from the kernel (getrandom(2)): what request ids, routing ids and anything
 * else a hostile peer must not predict are drawn from. Not seedable and not reproducible: for
 * reproducible numbers use random.h's splitmix64, never for these.
 *
 * Contract: blocks only before the kernel's pool is first initialised (early boot); never falls
 * back to a weaker source. */
#ifndef DSLA_CORE_SECRET_H
#define DSLA_CORE_SECRET_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"

/* Fills buf with n random bytes; DSLA_ERR_INTERNAL naming the reason when the kernel refuses. */
dsla_status_t dsla_secret_bytes(void *buf, size_t n);
/* 64 random bits. Aborts the process when the kernel cannot supply them: a caller that needs an
 * unguessable id has no safe way to go on without one. */
uint64_t dsla_secret_u64(void);

#endif

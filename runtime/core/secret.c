/* Kernel randomness (secret.h). */
#include "runtime/core/secret.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

dsla_status_t dsla_secret_bytes(void *buf, size_t n) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0)
            return dsla_error(DSLA_ERR_INTERNAL, "getrandom(%zu bytes): %s", n, strerror(errno));
        p += got;
        n -= (size_t)got;
    }
    return DSLA_OK;
}

uint64_t dsla_secret_u64(void) {
    uint64_t x;
    if (dsla_secret_bytes(&x, sizeof x) != DSLA_OK) {
        fprintf(stderr, "dsla: %s\n", dsla_last_error());
        abort();
    }
    return x;
}

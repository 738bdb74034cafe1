/* The actors' monotonic clock in milliseconds, for request ages, report windows and policy
 * cooldowns. Header-only: one inline function. It must not be used for wall-clock times (event
 * history stamps use CLOCK_REALTIME). */
#ifndef DSLA_ACTORS_CLOCK_H
#define DSLA_ACTORS_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t dsla_actors_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

#endif

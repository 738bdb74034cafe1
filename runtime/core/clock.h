/* The monotonic clock, in the units its callers want: nanoseconds for heartbeats and round trips,
 * milliseconds for deadlines, request ages and cooldowns, seconds for throughput and schedules.
 * One definition for every layer above. It must not be used for wall-clock times (event history
 * stamps, "created" fields use CLOCK_REALTIME or time()), and it never fails: CLOCK_MONOTONIC is
 * always there on the systems we build for. */
#ifndef DSLA_CORE_CLOCK_H
#define DSLA_CORE_CLOCK_H

#include <stdint.h>

uint64_t dsla_clock_ns(void);
uint64_t dsla_clock_ms(void);
double dsla_clock_seconds(void);

#endif

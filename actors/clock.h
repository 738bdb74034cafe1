/* The actors' monotonic clock in milliseconds, for request ages, report windows and policy
 * cooldowns: runtime/core/clock.h's, under the name actors/serving.c and actors/controller.c still
 * call. It must not be used for wall-clock times (event history stamps use CLOCK_REALTIME). */
#ifndef DSLA_ACTORS_CLOCK_H
#define DSLA_ACTORS_CLOCK_H

#include "runtime/core/clock.h"

#define dsla_actors_now_ms dsla_clock_ms

#endif

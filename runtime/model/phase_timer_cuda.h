/* Device time of one forward pass split into phases (GEMMs, attention, DSLA, other kernels), for
 * the serving engine's step accounting (runtime/serve/step_stats.h).
 *
 * A pass is begun, marked at every change of phase and ended on its stream; each mark records a
 * CUDA event, and once the stream has synchronised, the time between consecutive events goes to
 * the phase that began at the first of them. Without phases only begin and end are recorded (the
 * pass's device time), which works around a graph launch too; with phases the pass must run
 * eagerly (events are not recorded inside a capture). Events are preallocated; marks beyond them
 * fold into the last phase. Timing never fails a pass: a failed event call only loses the
 * measurement. Compiled only with DSLA_HAVE_CUDA. */
#ifndef DSLA_MODEL_PHASE_TIMER_CUDA_H
#define DSLA_MODEL_PHASE_TIMER_CUDA_H

#ifdef DSLA_HAVE_CUDA

#include <stdbool.h>

#include "kernels/kernels_cuda.h"
#include "runtime/core/status.h"

typedef enum {
    DSLA_CUDA_PHASE_GEMM,
    DSLA_CUDA_PHASE_ATTENTION,
    DSLA_CUDA_PHASE_DSLA,
    DSLA_CUDA_PHASE_OTHER,
    DSLA_CUDA_PHASES
} dsla_cuda_phase_t;

typedef struct dsla_cuda_phase_timer dsla_cuda_phase_timer_t;

dsla_status_t dsla_cuda_phase_timer_create(dsla_cuda_phase_timer_t **out);
void dsla_cuda_phase_timer_destroy(dsla_cuda_phase_timer_t **t);
/* Starts a pass in phase `phase`; marks split it only when `phases`. */
void dsla_cuda_phase_timer_begin(dsla_cuda_phase_timer_t *t, dsla_cuda_stream_t stream, bool phases,
                                 dsla_cuda_phase_t phase);
/* The work enqueued from here on is `phase`'s (a no-op without phases, or outside a pass). */
void dsla_cuda_phase_timer_mark(dsla_cuda_phase_timer_t *t, dsla_cuda_stream_t stream,
                                dsla_cuda_phase_t phase);
void dsla_cuda_phase_timer_end(dsla_cuda_phase_timer_t *t, dsla_cuda_stream_t stream);
/* After the stream has synchronised: the pass's device seconds and, when it was split, seconds
 * per phase (phase_s[DSLA_CUDA_PHASES], zeros otherwise). False when nothing was measured. */
bool dsla_cuda_phase_timer_read(dsla_cuda_phase_timer_t *t, double *device_s, double *phase_s,
                                bool *split);

#endif /* DSLA_HAVE_CUDA */

#endif

/* Phase timing of a forward pass with CUDA events (phase_timer_cuda.h). */
#include "runtime/model/phase_timer_cuda.h"

#ifdef DSLA_HAVE_CUDA

#include <stdlib.h>

/* Events per pass: a Llama layer changes phase 8 times, so 70B's 80 layers fit with room for
 * prompt items' own marks. */
enum { TIMER_EVENTS = 1024 };

struct dsla_cuda_phase_timer {
    dsla_cuda_event_t ev[TIMER_EVENTS];
    dsla_cuda_phase_t phase[TIMER_EVENTS];
    int n;          /* events recorded in this pass; the last one is the end once ended */
    bool active;    /* begun and not ended */
    bool phases;    /* marks split the pass */
    bool ok, ended; /* every record succeeded; the pass was ended */
};

dsla_status_t dsla_cuda_phase_timer_create(dsla_cuda_phase_timer_t **out) {
    dsla_cuda_phase_timer_t *t = calloc(1, sizeof *t);
    if (!t) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "phase timer: out of memory");
    for (int i = 0; i < TIMER_EVENTS; i++) {
        const dsla_status_t s = dsla_cuda_event_create(&t->ev[i]);
        if (s != DSLA_OK) {
            dsla_cuda_phase_timer_destroy(&t);
            return s;
        }
    }
    *out = t;
    return DSLA_OK;
}

void dsla_cuda_phase_timer_destroy(dsla_cuda_phase_timer_t **pt) {
    if (!pt || !*pt) return;
    for (int i = 0; i < TIMER_EVENTS; i++)
        if ((*pt)->ev[i]) dsla_cuda_event_destroy(&(*pt)->ev[i]);
    free(*pt);
    *pt = NULL;
}

static void record(dsla_cuda_phase_timer_t *t, dsla_cuda_stream_t stream, dsla_cuda_phase_t p) {
    if (dsla_cuda_event_record(t->ev[t->n], stream) != DSLA_OK) {
        t->ok = false;
        dsla_clear_error();
    }
    t->phase[t->n++] = p;
}

void dsla_cuda_phase_timer_begin(dsla_cuda_phase_timer_t *t, dsla_cuda_stream_t stream, bool phases,
                                 dsla_cuda_phase_t phase) {
    t->n = 0;
    t->ok = true;
    t->ended = false;
    t->active = true;
    t->phases = phases;
    record(t, stream, phase);
}

void dsla_cuda_phase_timer_mark(dsla_cuda_phase_timer_t *t, dsla_cuda_stream_t stream,
                                dsla_cuda_phase_t phase) {
    /* One slot stays free for the end. */
    if (!t->active || !t->phases || t->phase[t->n - 1] == phase || t->n >= TIMER_EVENTS - 1) return;
    record(t, stream, phase);
}

void dsla_cuda_phase_timer_end(dsla_cuda_phase_timer_t *t, dsla_cuda_stream_t stream) {
    if (!t->active) return;
    record(t, stream, DSLA_CUDA_PHASE_OTHER);
    t->active = false;
    t->ended = true;
}

bool dsla_cuda_phase_timer_read(dsla_cuda_phase_timer_t *t, double *device_s, double *phase_s,
                                bool *split) {
    *device_s = 0;
    *split = false;
    for (int p = 0; p < DSLA_CUDA_PHASES; p++)
        phase_s[p] = 0;
    if (!t->ended || !t->ok || t->n < 2) return false;
    t->ended = false;
    for (int i = 0; i + 1 < t->n; i++) {
        float ms = 0;
        if (dsla_cuda_event_elapsed_ms(&ms, t->ev[i], t->ev[i + 1]) != DSLA_OK) {
            dsla_clear_error();
            return false;
        }
        if (t->phases) phase_s[t->phase[i]] += ms * 1e-3;
        *device_s += ms * 1e-3;
    }
    *split = t->phases;
    return true;
}

#endif /* DSLA_HAVE_CUDA */

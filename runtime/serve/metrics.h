/* Serving metrics: latency histograms with fixed log-spaced buckets and the engine's counters.
 *
 * Buckets are the same for every histogram and every process (upper bounds 100 us * 2^i), so that
 * histograms from several replicas add bucket by bucket and map one to one onto a Prometheus
 * histogram (they travel in LOAD_REPORT and become /metrics' dsla_*_seconds, docs/http.md).
 * Quantiles read from buckets are estimates (linear inside the bucket); exact percentiles need the
 * raw samples, which the bench keeps itself. This module only counts: it never reads a clock and
 * never prints. */
#ifndef DSLA_SERVE_METRICS_H
#define DSLA_SERVE_METRICS_H

#include <stdint.h>

#include "runtime/serve/step_stats.h"

/* 100 us .. 100 us * 2^23 (about 14 minutes): from a fast CPU decode step to a request that sat in
 * a long queue; anything slower lands in the overflow bucket. */
#define DSLA_HISTOGRAM_FIRST_BOUND 1e-4
enum { DSLA_HISTOGRAM_BUCKETS = 24 };

typedef struct {
    uint64_t counts[DSLA_HISTOGRAM_BUCKETS + 1]; /* the last one counts values above every bound */
    uint64_t count;
    double sum;
    double max;
} dsla_histogram_t;

/* Upper bound of bucket i in seconds (i < DSLA_HISTOGRAM_BUCKETS). */
double dsla_histogram_bound(int i);
void dsla_histogram_observe(dsla_histogram_t *h, double seconds);
/* Estimated q-quantile (q in [0, 1]); 0 when empty. */
double dsla_histogram_quantile(const dsla_histogram_t *h, double q);
double dsla_histogram_mean(const dsla_histogram_t *h);

/* A snapshot of one engine (dsla_engine_metrics, engine.h). Counters are cumulative since the
 * engine's creation; gauges are as of the snapshot. */
typedef struct {
    /* gauges */
    int queue_length;           /* requests waiting for admission (preempted ones included) */
    long waiting_prompt_tokens; /* tokens those requests will prefill */
    int running;                /* admitted sequences */
    /* One arena holds both (backend.h): kv_blocks_total blocks, of which kv_blocks_used hold KV and
     * state_slots_used * blocks_per_slot hold DSLA states; state_slots_total is the most slots it
     * could hold (every block a state), not a reservation. */
    int kv_blocks_used, kv_blocks_total;
    int state_slots_used, state_slots_total;
    int blocks_per_slot;
    uint64_t plan_id; /* the plan new requests are admitted under */
    /* counters */
    uint64_t requests_submitted; /* accepted by dsla_engine_submit */
    uint64_t requests_rejected;  /* refused: RESOURCE_EXHAUSTED or INVALID_ARGUMENT */
    uint64_t requests_expired;   /* waited beyond max_queue_wait_ms and ended RESOURCE_EXHAUSTED */
    uint64_t requests_finished;  /* every end: length, stop, cancelled, error */
    uint64_t requests_cancelled;
    uint64_t preemptions;
    uint64_t steps;
    uint64_t prompt_tokens_computed; /* prefill tokens run, recomputation included */
    uint64_t generated_tokens;
    /* generated tokens per second over the recent steps (a window of DSLA_METRICS_RATE_STEPS) */
    double tokens_per_second;
    int peak_running;
    int peak_kv_blocks_used;
    int peak_state_slots_used;
    dsla_histogram_t ttft;  /* submit to first generated token */
    dsla_histogram_t tpot;  /* between consecutive generated tokens of one request */
    dsla_histogram_t e2e;   /* submit to the end, for requests that ended by length or stop */
    dsla_histogram_t queue; /* submit to the first admission (a preempted request's later waits
                               are not counted again) */
    /* Step accounting (step_stats.h): sums over every step (phase seconds, bytes, FLOPs, the
     * floor) and the distribution of step times. Export as counters and a histogram:
     * dsla_step_phase_seconds_total{phase}, dsla_step_floor_seconds_total, dsla_step_seconds. */
    dsla_step_totals_t step_totals;
    dsla_histogram_t step_time;
} dsla_engine_metrics_t;

/* Steps over which tokens_per_second is measured: long enough to smooth prefill bursts, short
 * enough to follow a change of load within seconds. */
enum { DSLA_METRICS_RATE_STEPS = 64 };

#endif

/* Step accounting: what one engine step ran, where its time went, and how far it is from its
 * floor.
 *
 * Per step: the prefill tokens and items, the decode sequences, the KV bytes the step's attention
 * layers must read (every cached key and value of every attention item, once) and write, the
 * weights and DSLA states it must move, its FLOPs; the floor is max(bytes / copy bandwidth,
 * FLOPs / bf16 matrix rate) at rates measured once on the device (dsla_step_rates_measure_cuda)
 * or given; fraction = floor / measured step time. Time is split into phases: GEMMs, attention,
 * DSLA and other device work (CUDA events around each phase on the GPU, on the steps the engine
 * asks for; the CPU backend does not split its forward pass), the rest of the forward call on the
 * host (uploads, launches, the logits' copy back), sampling, and the engine's own host work
 * (scheduling, admission, streaming callbacks).
 *
 * The engine fills one record per step (dsla_engine_last_step) and adds it to cumulative totals
 * in its metrics (metrics.h), which a /metrics endpoint exports as counters. This module is
 * arithmetic only: it never reads a clock (except the rate measurement), never prints and knows
 * nothing of requests. */
#ifndef DSLA_SERVE_STEP_STATS_H
#define DSLA_SERVE_STEP_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/core/status.h"
#include "runtime/model/config.h"

typedef enum {
    DSLA_STEP_GEMM,         /* device: every matrix product (projections, MLP, lm_head) */
    DSLA_STEP_ATTENTION,    /* device: RoPE, KV writes, attention kernels, their conversions */
    DSLA_STEP_DSLA,         /* device: DSLA recurrent and chunked kernels, gate biases */
    DSLA_STEP_OTHER_GPU,    /* device: norms, SwiGLU, embedding, row gathers */
    DSLA_STEP_FORWARD_HOST, /* the forward call less its device phases: uploads, launches, copies */
    DSLA_STEP_SAMPLING,     /* the engine's samplers over the logit rows */
    DSLA_STEP_SCHEDULING,   /* the engine: scheduling, admission, streaming, callbacks */
    DSLA_STEP_PHASES
} dsla_step_phase_t;

/* The first device phase and the count of them. */
enum { DSLA_STEP_DEVICE_PHASES = DSLA_STEP_OTHER_GPU + 1 };

const char *dsla_step_phase_name(dsla_step_phase_t p);

/* How much the engine measures (dsla_engine_config_t.step_timing). Counts, bytes, the floor and
 * host clocks are always kept (a few additions per item); the levels add device events. */
typedef enum {
    DSLA_STEP_TIMING_HOST = 0,   /* host clocks only: nothing on the device */
    DSLA_STEP_TIMING_SPAN = 1,   /* + two events per forward pass: its device time */
    DSLA_STEP_TIMING_PHASES = 2, /* + events between phases on every phase_every-th step, which
                                    then runs without a CUDA graph */
} dsla_step_timing_t;

/* The device's two ceilings (METHOD.md's "two numbers"): 0 means unknown (no floor then). */
typedef struct {
    double copy_bytes_per_s;   /* large device-to-device copy, bytes read + written per second */
    double matrix_flops_per_s; /* large bf16 GEMM (fp32 accumulate) */
} dsla_step_rates_t;

/* What a forward pass costs for a model on a backend, per unit of work. */
typedef struct {
    int layers, heads, head_dim;
    double weight_elem_bytes; /* bytes per weight element as stored (2 for bf16) */
    double attn_layer_params; /* matmul weights of one attention layer (projections + MLP) */
    double dsla_layer_params; /* matmul weights of one DSLA layer (6 projections + MLP) */
    double lm_head_params;    /* hidden x vocab: read once, 2 FLOPs per weight per logit row */
    double kv_token_bytes;    /* K and V of one token in one layer, as stored in the pool */
    double state_bytes;       /* one sequence's two states in one DSLA layer */
} dsla_step_costs_t;

/* The costs of cfg's shape with weights of weight_bytes bytes per element and a KV pool of
 * kv_bytes per element. */
dsla_step_costs_t dsla_step_costs_for(const dsla_model_config_t *cfg, int weight_bytes,
                                      int kv_bytes);

/* One item of a step: n new tokens after past cached ones, in a sequence that runs dsla_layers of
 * the model's layers as DSLA. */
typedef struct {
    int past, n, dsla_layers;
    bool samples; /* its last token is sampled (it produces a logit row) */
} dsla_step_item_t;

typedef struct {
    uint64_t step; /* the engine's step counter (1 for its first step) */
    /* what ran */
    int items;
    int prefill_items, prefill_tokens; /* items of more than one token, and their tokens */
    int decode_seqs;                   /* items of one token */
    int logit_rows;
    long context_tokens; /* keys attention reads per attention layer, summed over the items */
    /* the floor */
    double kv_read_bytes, kv_write_bytes, weight_bytes, state_bytes, bytes, flops;
    double floor_s; /* max(bytes / copy rate, flops / matrix rate); 0 when rates are unknown */
    /* time (seconds) */
    double step_s;                    /* the whole dsla_engine_step */
    double forward_s;                 /* the backend's forward call, wall clock */
    double device_s;                  /* device time of the forward pass(es), when measured */
    double phase_s[DSLA_STEP_PHASES]; /* device phases only when phases_measured */
    bool device_measured, phases_measured;
    double fraction; /* floor_s / step_s (0 when either is unknown) */
} dsla_step_record_t;

/* Resets rec's work and floor and sets them from the items (one forward pass over them). */
void dsla_step_account(dsla_step_record_t *rec, const dsla_step_costs_t *costs,
                       const dsla_step_rates_t *rates, const dsla_step_item_t *items, int n);

/* What a backend measured on the device during one forward call (all its passes). */
typedef struct {
    bool device_measured, phases_measured;
    double device_s;
    double phase_s[DSLA_STEP_DEVICE_PHASES];
} dsla_step_device_t;

/* Cumulative sums over steps (the engine's metrics; Prometheus counters). */
typedef struct {
    uint64_t steps;
    uint64_t prefill_tokens, decode_tokens;
    double kv_read_bytes, bytes, flops;
    double step_seconds, floor_seconds, forward_seconds, device_seconds;
    double phase_seconds[DSLA_STEP_PHASES];
    uint64_t phase_steps; /* steps whose device phases were measured */
} dsla_step_totals_t;

void dsla_step_totals_add(dsla_step_totals_t *t, const dsla_step_record_t *rec);

/* The device's rates, measured once: a 1 GiB device-to-device copy and a bf16 8192^3 GEMM
 * through dsla_cuda_gemm, each the best of several after a warm-up (about 50 ms). UNSUPPORTED
 * without a CUDA build or device. */
dsla_status_t dsla_step_rates_measure_cuda(dsla_step_rates_t *out);

#endif

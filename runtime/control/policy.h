/* Load policies of the controller (DESIGN.md section 7): how many layers of a replica should run
 * DSLA, given its latest load report. threshold is the paper's (queue length and the longest
 * waiting prompt, with hysteresis and a cooldown), slo follows TTFT / time-per-token targets,
 * manual pins a number of layers; every policy is capped by a maximum conversion ratio and by the
 * layer versions available.
 *
 * Contract: pure functions over plain structs (a replica's load, its policy state, the config); no
 * clock, no I/O, no threads, no messages (the controller translates a LOAD_REPORT into
 * dsla_policy_load_t), so that every rule is unit-tested without an actor. The
 * text form ("threshold queue_high=8 cooldown_ms=5000") is the one way a policy is written, by
 * dslactl, by `dsla-serve --policy` and in the controller's database; parse errors name the field,
 * the limit and the value. */
#ifndef DSLA_CONTROL_POLICY_H
#define DSLA_CONTROL_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"

/* The most layers a policy may pin or step: as many as one plan names (DSLA_PROTO_LAYERS_MAX). */
#define DSLA_POLICY_LAYERS_MAX 512

typedef enum {
    DSLA_POLICY_THRESHOLD = 0,
    DSLA_POLICY_SLO,
    DSLA_POLICY_MANUAL,
} dsla_policy_kind_t;

typedef struct {
    dsla_policy_kind_t kind;
    double max_ratio;     /* at most this fraction of the model's layers runs DSLA */
    uint32_t cooldown_ms; /* threshold, slo: least time between two changes of one replica */
    uint32_t step;        /* threshold, slo: layers converted or reverted per change */
    /* threshold: convert when queue >= queue_high or the longest wait >= wait_high_ms; revert
     * when queue <= queue_low and the longest wait <= wait_low_ms; hold in between */
    uint32_t queue_high, queue_low;
    uint32_t wait_high_ms, wait_low_ms;
    /* slo: convert when a p90 exceeds its target (0: no target); revert when both are at most
     * slack times their targets */
    double ttft_ms, tpot_ms;
    double slack;
    /* threshold, slo: revert only while at most this fraction of the replica's arena (KV blocks
     * and state slots) is in use. Right after a conversion the queue empties because the cheaper
     * plan admits more, while the arena is still full of the sequences the load brought: without
     * this guard that empty queue reverted the plan seconds later, and the queue came back
     * (measured on an H100, docs/perf.md). 1: no guard, the paper's rule. */
    double memory_low;
    /* manual: the pinned number of DSLA layers */
    uint32_t layers;
} dsla_policy_config_t;

/* What a policy reads of one replica's latest load report. The latency quantiles cover the
 * requests of the report's window (0: none in it). */
typedef struct {
    uint32_t num_layers;   /* the model's decoder layers */
    uint32_t queue_length; /* requests waiting for admission */
    uint32_t
        oldest_wait_ms; /* longest a request now in the replica has waited for its first token */
    double ttft_p90_ms, tpot_p90_ms;
    double memory_used; /* fraction of the arena in use, KV blocks and state slots (0: unknown) */
} dsla_policy_load_t;

/* What the policy knows of one replica besides its load. */
typedef struct {
    int current;             /* DSLA layers the controller last chose for it */
    uint64_t now_ms;         /* the controller's monotonic clock */
    uint64_t last_change_ms; /* when current last changed; 0: never */
    int available;           /* layer versions in the catalogue */
} dsla_policy_state_t;

/* The defaults of a kind (docs/controller.md lists them). */
dsla_policy_config_t dsla_policy_default(dsla_policy_kind_t kind);
/* "threshold", "slo", "manual". */
const char *dsla_policy_kind_name(dsla_policy_kind_t kind);

/* The fields kind takes, comma-separated ("max_ratio, layers"): for errors and usage. */
void dsla_policy_fields(dsla_policy_kind_t kind, char *out, size_t cap);

/* The most DSLA layers the config allows on a model of num_layers layers with available versions:
 * floor(max_ratio * num_layers), at most available. */
int dsla_policy_max_layers(const dsla_policy_config_t *c, int num_layers, int available);

/* The DSLA layer count the replica should run now. why (may be NULL) gets one line for the event
 * history: the rule that fired, with the numbers. */
int dsla_policy_target(const dsla_policy_config_t *c, const dsla_policy_load_t *load,
                       const dsla_policy_state_t *state, char *why, size_t why_cap);

/* Parses words[0] (the kind) and key=value words after it. Keys the kind does not use, values out
 * of range and hysteresis bands that are empty are INVALID_ARGUMENT naming the field and the
 * limit. Unnamed fields come from base when it is of the same kind, else from the kind's defaults.
 */
dsla_status_t dsla_policy_parse(const dsla_policy_config_t *base, const char *const *words, int n,
                                dsla_policy_config_t *out);
/* The same, from one line of space-separated words ("manual layers=2"). */
dsla_status_t dsla_policy_parse_line(const dsla_policy_config_t *base, const char *line,
                                     dsla_policy_config_t *out);
/* The text form of c, every field of its kind: what dsla_policy_parse_line reads back. */
void dsla_policy_format(const dsla_policy_config_t *c, char *out, size_t cap);

#endif

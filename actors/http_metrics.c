/* The engines' figures as Prometheus text (http_metrics.h). */
#include "actors/http_metrics.h"

#include <math.h>
#include <stdint.h>

void dsla_http_metrics_label(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') fputc('\\', f);
        if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

static void head(FILE *f, const char *name, const char *type, const char *help) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{model_name="...",replica="..." then the caller's own labels or "}". */
static void labels(FILE *f, const char *name, const char *suffix, const char *model,
                   const dsla_proto_replica_report_t *r) {
    fprintf(f, "%s%s{model_name=\"", name, suffix);
    dsla_http_metrics_label(f, model);
    fputs("\",replica=\"", f);
    dsla_http_metrics_label(f, r->name);
    fputc('"', f);
}

static double fraction(uint32_t used, uint32_t total) {
    return total ? (double)used / (double)total : 0.0;
}

/* The gauges and counters: one line per replica with a load. */
typedef enum {
    RUNNING,
    WAITING,
    WAITING_TOKENS,
    KV_USAGE,
    KV_USED,
    KV_TOTAL,
    STATE_USAGE,
    SLOTS_USED,
    SLOTS_TOTAL,
    NUM_LAYERS,
    DSLA_LAYERS,
    PLAN_ID,
    TOKENS_PER_S,
    FINISHED,
    PROMPT_TOKENS,
    GENERATED_TOKENS,
    PREEMPTIONS,
} field_t;

static double value_of(field_t field, const dsla_proto_load_report_t *l) {
    switch (field) {
    case RUNNING:
        return l->running;
    case WAITING:
        return l->queue_length;
    case WAITING_TOKENS:
        return (double)l->waiting_tokens;
    case KV_USAGE:
        return fraction(l->kv_used, l->kv_total);
    case KV_USED:
        return l->kv_used;
    case KV_TOTAL:
        return l->kv_total;
    case STATE_USAGE:
        return fraction(l->slots_used, l->slots_total);
    case SLOTS_USED:
        return l->slots_used;
    case SLOTS_TOTAL:
        return l->slots_total;
    case NUM_LAYERS:
        return l->num_layers;
    case DSLA_LAYERS:
        return l->n_dsla;
    case PLAN_ID:
        return (double)l->plan_id;
    case TOKENS_PER_S:
        return l->tokens_per_s;
    case FINISHED:
        return (double)l->requests_finished;
    case PROMPT_TOKENS:
        return (double)l->prompt_tokens;
    case GENERATED_TOKENS:
        return (double)l->generated_tokens;
    case PREEMPTIONS:
        return (double)l->preemptions;
    }
    return 0.0;
}

typedef struct {
    const char *name, *type, *help;
    field_t field;
} series_t;

static const series_t series[] = {
    {"dsla_num_requests_running", "gauge", "requests admitted and running on the engine", RUNNING},
    {"dsla_num_requests_waiting", "gauge", "requests waiting for admission (preempted included)",
     WAITING},
    {"dsla_num_waiting_prompt_tokens", "gauge", "prompt tokens the waiting requests will prefill",
     WAITING_TOKENS},
    {"dsla_kv_cache_usage_perc", "gauge",
     "fraction of the arena's blocks holding KV (1 is full; DSLA states take the rest)", KV_USAGE},
    {"dsla_kv_cache_blocks_used", "gauge", "arena blocks holding KV", KV_USED},
    {"dsla_kv_cache_blocks_capacity", "gauge",
     "blocks of the arena (KV and DSLA states share them)", KV_TOTAL},
    {"dsla_state_usage_perc", "gauge", "DSLA state slots in use over the most the arena could hold",
     STATE_USAGE},
    {"dsla_state_slots_used", "gauge", "DSLA state slots in use", SLOTS_USED},
    {"dsla_state_slots_capacity", "gauge", "DSLA state slots the arena could hold at most",
     SLOTS_TOTAL},
    {"dsla_num_layers", "gauge", "decoder layers of the model", NUM_LAYERS},
    {"dsla_plan_dsla_layers", "gauge", "layers that run DSLA in the plan new requests get",
     DSLA_LAYERS},
    {"dsla_plan_id", "gauge", "the engine's id of the plan new requests get", PLAN_ID},
    {"dsla_generation_tokens_per_second", "gauge", "tokens generated per second, recent steps",
     TOKENS_PER_S},
    {"dsla_requests_finished_total", "counter",
     "requests that ended on the engine: length, stop, cancelled or error", FINISHED},
    {"dsla_prompt_tokens_total", "counter", "prefill tokens computed, recomputation included",
     PROMPT_TOKENS},
    {"dsla_generation_tokens_total", "counter", "tokens generated", GENERATED_TOKENS},
    {"dsla_num_preemptions_total", "counter", "requests preempted and recomputed later",
     PREEMPTIONS},
};

/* The histograms, in the order of dsla_proto_hist_kind_t. */
static const struct {
    const char *name, *help;
} hists[DSLA_PROTO_HISTS] = {
    {"dsla_time_to_first_token_seconds", "time from submission to the first generated token"},
    {"dsla_inter_token_latency_seconds", "time between consecutive generated tokens of a request"},
    {"dsla_e2e_request_latency_seconds",
     "time from submission to the end, for requests that ended by length or stop"},
    {"dsla_request_queue_time_seconds", "time from submission to the first admission"},
};

static void histogram(FILE *f, int kind, const char *model, const dsla_proto_report_t *rep) {
    head(f, hists[kind].name, "histogram", hists[kind].help);
    for (uint32_t i = 0; i < rep->n_replicas; i++) {
        const dsla_proto_replica_report_t *r = &rep->replicas[i];
        if (!r->has_load || !r->load.has_totals) continue;
        const dsla_proto_histogram_t *h = &r->load.hist[kind];
        uint64_t cumulative = 0;
        for (int b = 0; b <= DSLA_PROTO_HISTOGRAM_BUCKETS; b++) {
            cumulative += h->counts[b];
            labels(f, hists[kind].name, "_bucket", model, r);
            if (b < DSLA_PROTO_HISTOGRAM_BUCKETS)
                fprintf(f, ",le=\"%.10g\"} %llu\n", ldexp(DSLA_PROTO_HISTOGRAM_FIRST_BOUND, b),
                        (unsigned long long)cumulative);
            else
                fprintf(f, ",le=\"+Inf\"} %llu\n", (unsigned long long)cumulative);
        }
        labels(f, hists[kind].name, "_sum", model, r);
        fprintf(f, "} %.9g\n", h->sum);
        labels(f, hists[kind].name, "_count", model, r);
        fprintf(f, "} %llu\n", (unsigned long long)cumulative);
    }
}

void dsla_http_metrics_engines(FILE *f, const dsla_proto_report_t *rep, const char *model) {
    for (size_t s = 0; s < sizeof series / sizeof series[0]; s++) {
        head(f, series[s].name, series[s].type, series[s].help);
        for (uint32_t i = 0; i < rep->n_replicas; i++) {
            const dsla_proto_replica_report_t *r = &rep->replicas[i];
            if (!r->has_load) continue;
            /* counters an older replica does not send are left out, not shown as 0 */
            if (series[s].type[0] == 'c' && !r->load.has_totals) continue;
            labels(f, series[s].name, "", model, r);
            fprintf(f, "} %.10g\n", value_of(series[s].field, &r->load));
        }
    }
    /* The plan layer by layer: one line per layer, mode "dsla" or "attn", value 1. */
    head(f, "dsla_plan_layer_info", "gauge",
         "1 for each layer of the plan new requests get, with its mode (attn or dsla)");
    for (uint32_t i = 0; i < rep->n_replicas; i++) {
        const dsla_proto_replica_report_t *r = &rep->replicas[i];
        if (!r->has_load) continue;
        for (uint32_t layer = 0; layer < r->load.num_layers && layer < DSLA_PROTO_LAYERS_MAX;
             layer++) {
            const char *mode = "attn";
            for (uint32_t d = 0; d < r->load.n_dsla; d++)
                if (r->load.dsla[d].layer == (int32_t)layer) mode = "dsla";
            labels(f, "dsla_plan_layer_info", "", model, r);
            fprintf(f, ",layer=\"%u\",mode=\"%s\"} 1\n", layer, mode);
        }
    }
    for (int k = 0; k < DSLA_PROTO_HISTS; k++)
        histogram(f, k, model, rep);
}

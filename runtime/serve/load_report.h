/* The report of a load test: what happened to each request of a workload (workload.h), summed up
 * as throughput, goodput under TTFT and TPOT targets, latency percentiles, refusals and errors,
 * and written as one JSON line, a table for people and a per-request timeline CSV.
 *
 * Both `dsla bench --trace` and `dsla-loadgen` fill one record per request and hand them here, so
 * that the in-process and the over-the-network numbers are computed the same way. Definitions:
 * TTFT is from the request's scheduled arrival (not its send: a load generator that falls behind
 * shows as latency, not as a lighter load) to its first token; TPOT is (last token - first token)
 * / (tokens - 1) per request; E2E from arrival to the last token; the max gap is a request's
 * longest wait between two consecutive tokens (a stall TPOT averages away); goodput is the
 * completed requests meeting both targets per second of the run. This module knows nothing of
 * engines, actors or sockets; it writes only to the streams and paths its caller names. */
#ifndef DSLA_SERVE_LOAD_REPORT_H
#define DSLA_SERVE_LOAD_REPORT_H

#include <stdbool.h>
#include <stdio.h>

#include "runtime/core/status.h"

typedef enum {
    DSLA_LOAD_PENDING = 0, /* never sent or never ended: counted as an error */
    DSLA_LOAD_COMPLETED,
    DSLA_LOAD_REFUSED, /* 429 or RESOURCE_EXHAUSTED: the server's admission control said no */
    DSLA_LOAD_ERROR,   /* anything else: a status, a broken stream, a timeout */
} dsla_load_outcome_t;

enum { DSLA_LOAD_DETAIL_MAX = 48 };

typedef struct {
    double arrival_s;  /* scheduled, from the start of the run */
    double sent_s;     /* when it actually went out (a late generator shows here) */
    double first_s;    /* first token; < 0 when none came */
    double last_s;     /* last token or the end of the request */
    int prompt_tokens; /* as asked (the workload's) */
    int output_tokens_asked;
    int prompt_tokens_served; /* as the server counted them; 0 when unknown */
    int output_tokens;        /* received */
    double max_gap_s;         /* the longest wait between two tokens (pieces over HTTP): stalls */
    dsla_load_outcome_t outcome;
    char detail[DSLA_LOAD_DETAIL_MAX]; /* "200", "429", "RESOURCE_EXHAUSTED", "timeout" */
} dsla_load_record_t;

typedef struct {
    double ttft_s, tpot_s; /* targets for goodput */
} dsla_load_slo_t;

typedef struct {
    double p50, p90, p99, mean;
} dsla_load_pct_t;

typedef struct {
    int sent, completed, refused, errors;
    int early_stops; /* completed with fewer tokens than asked (end of sequence, stop) */
    int met_slo;
    long prompt_tokens, output_tokens;
    double elapsed_s; /* first arrival to the last request's end */
    double requests_per_s, output_tokens_per_s, goodput_rps;
    dsla_load_pct_t ttft_ms, tpot_ms, e2e_ms, max_gap_ms, send_lag_ms;
    dsla_load_slo_t slo;
} dsla_load_summary_t;

/* Sums n records (out of memory is the only failure). elapsed_s <= 0: from the records. */
dsla_status_t dsla_load_summarize(const dsla_load_record_t *r, int n, double elapsed_s,
                                  const dsla_load_slo_t *slo, dsla_load_summary_t *out);

/* One JSON object on one line: {"what": what, <extra fields>, ...the summary...}. extra is
 * inserted as is (already JSON: `"model":"x","transport":"http"`), or NULL. */
void dsla_load_print_json(FILE *f, const char *what, const char *extra,
                          const dsla_load_summary_t *s);
/* The readable table, title first. */
void dsla_load_print_table(FILE *f, const char *title, const dsla_load_summary_t *s);

/* The timeline: one CSV line per request, in arrival order, with a header:
 * index,arrival_s,sent_s,ttft_s,tpot_s,e2e_s,max_gap_s,prompt_tokens,prompt_tokens_served,
 * output_tokens_asked,output_tokens,status,detail (ttft..max_gap empty unless completed).
 * bench/plot_latency.py reads it.
 */
dsla_status_t dsla_load_write_timeline(const char *path, const dsla_load_record_t *r, int n);

#endif

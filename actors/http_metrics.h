/* The serving engines' figures in /metrics (docs/http.md, "/metrics"): per replica gauges (running,
 * waiting, KV and DSLA state usage, the plan), token and preemption counters, and the TTFT,
 * inter-token, end-to-end and queue-time histograms, named after vLLM's (dsla_ for vllm:, since
 * Prometheus keeps colons for recording rules and promtool refuses them in exposition) so that
 * dashboards and alerts written for vLLM carry over with a change of prefix.
 *
 * The figures are the replicas' answers to the gateway's STATUS polls, as its REPORT carries them
 * (proto.h, dsla_proto_replica_report_t.load): at most one heartbeat interval old. A replica the
 * gateway has no answer from (not polled yet, dead, or an older build) has no lines. This module
 * only formats: it never talks to anyone. */
#ifndef DSLA_ACTORS_HTTP_METRICS_H
#define DSLA_ACTORS_HTTP_METRICS_H

#include <stdio.h>

#include "proto/proto.h"

/* Writes the engine metrics of rep's replicas to f (Prometheus text format 0.0.4), each line
 * labelled model_name (the served model's id) and replica. */
void dsla_http_metrics_engines(FILE *f, const dsla_proto_report_t *rep, const char *model);

/* "\\", "\"" and newline escaped, as Prometheus label values need. */
void dsla_http_metrics_label(FILE *f, const char *s);

#endif

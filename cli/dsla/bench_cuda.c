/* dsla bench --device cuda: the serving engine on the GPU backend (runtime/serve/backend_cuda.h)
 * with a Llama-2-7B-shaped model of random bf16 weights drawn on the device, bf16 KV.
 *
 * For each DSLA ratio (--ratios, percent of the layers, spread evenly over depth; DSLA weights
 * random too), with the engine's pools sized to the card's free memory less --margin-mib:
 *  1. capacity: sequences of --context tokens that fit, by arithmetic (free bytes over attention
 *     layers x blocks x block bytes + DSLA layers x state slot bytes);
 *  2. admission run: that many plus one requests submitted at once, each of context tokens with
 *     n + 8 of them outputs (a step prefills one prompt, so the first is still decoding when the
 *     last starts); records the most that held their whole context and decoded in the same steps;
 *  3. fixed workload: --requests requests of context - --output-len prompt tokens and --output-len
 *     outputs, submitted at once; output tokens/s, TTFT and TPOT.
 *  3'. or, with --trace FILE (or --rate [--cv] [--preset]), that workload on the wall clock
 *     (runtime/serve/workload.h; requests cut to --context), reported as dsla-loadgen reports
 *     (runtime/serve/load_report.h): goodput under --slo-ttft-ms/--slo-tpot-ms, percentiles,
 *     refusals; --timeline PATH writes PATH.dsla<percent>.csv per ratio. The trace runs on an
 *     engine of its own: prompts in --prefill-chunk pieces, --step-tokens a step, an untimed
 *     warm-up that builds cuDNN's plans first, and the step accounting (runtime/serve/
 *     step_stats.h) summarised over all steps, decode-only steps and steps with a prefill: step
 *     time percentiles, floor, fraction of floor, phases (--step-timing, --phase-every).
 * A step takes one whole prompt (prefill chunk = context) plus every running decode, so admission
 * never promises blocks that another prompt's later chunks will take. Prints one JSON line per
 * measurement and a table last. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "commands.h"
#include "runtime/core/clock.h"
#include "runtime/serve/engine.h"
#include "runtime/serve/load_report.h"
#include "runtime/serve/workload.h"

#ifdef DSLA_HAVE_CUDA

#include "kernels/kernels_cuda.h"
#include "runtime/model/llama_cuda.h"
#include "runtime/serve/backend_cuda.h"
#include "runtime/serve/step_stats.h"

static const char usage[] =
    "usage: dsla bench --device cuda --random-model 7b [options]\n\n"
    "The serving engine on the GPU with a Llama-2-7B-shaped random bf16 model: how many sequences\n"
    "of --context tokens fit at each DSLA ratio (arithmetic and an admission run), and throughput\n"
    "of a fixed workload at each ratio.";

/* Admission run: outputs beyond the one per later prompt, i.e. decode steps with every sequence
 * full. */
enum { ADMIT_SLACK = 8, MAX_RATIOS = 8 };

typedef struct run run_t;
typedef struct {
    double submit, first, done;
    int tokens;
    run_t *run;
} rec_t;

struct run {
    rec_t *recs;
    int n;
    int decoding, peak_decoding; /* requests past their first token and not finished */
    int finished;
};

static int on_event(void *user, const dsla_stream_event_t *ev) {
    rec_t *r = user;
    const double t = dsla_clock_seconds();
    if (ev->token >= 0) {
        if (r->tokens++ == 0) {
            r->first = t;
            if (++r->run->decoding > r->run->peak_decoding)
                r->run->peak_decoding = r->run->decoding;
        }
    }
    if (ev->finished) {
        r->done = t;
        r->run->finished++;
        if (r->tokens > 0) r->run->decoding--;
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    double elapsed, out_tps, ttft_p50, ttft_p90, tpot_p50, tpot_p90;
    int completed, peak_decoding, peak_running;
    long out_tokens;
} result_t;

/* Submits n requests of prompt + output tokens at once and steps the engine until all end. */
static dsla_status_t run_workload(dsla_engine_t *e, int vocab, int n, int prompt, int output,
                                  uint64_t seed, result_t *res) {
    run_t run = {.n = n};
    run.recs = calloc((size_t)n, sizeof *run.recs);
    int32_t *ids = malloc((size_t)prompt * sizeof *ids);
    double *ttft = malloc((size_t)n * sizeof *ttft), *tpot = malloc((size_t)n * sizeof *tpot);
    dsla_status_t s = run.recs && ids && ttft && tpot ? DSLA_OK : dsla_error_oom("bench");
    const double t0 = dsla_clock_seconds();
    for (int i = 0; i < n && s == DSLA_OK; i++) {
        uint64_t x = seed * 0x9e3779b97f4a7c15ULL + (uint64_t)i;
        for (int t = 0; t < prompt; t++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            ids[t] = t == 0 ? 1 : (int32_t)(3 + (x >> 33) % (uint64_t)(vocab - 3));
        }
        run.recs[i] = (rec_t){.submit = dsla_clock_seconds(), .run = &run};
        const dsla_request_params_t p = {
            .prompt_ids = ids,
            .n_prompt_ids = prompt,
            .max_tokens = output,
            .ignore_eos = true,
            .on_event = on_event,
            .user = &run.recs[i],
        };
        s = dsla_engine_submit(e, &p, NULL);
    }
    while (s == DSLA_OK && !dsla_engine_idle(e))
        s = dsla_engine_step(e, NULL);
    memset(res, 0, sizeof *res);
    if (s == DSLA_OK) {
        res->elapsed = dsla_clock_seconds() - t0;
        for (int i = 0; i < n; i++) {
            const rec_t *r = &run.recs[i];
            if (r->tokens == 0) continue;
            ttft[res->completed] = r->first - r->submit;
            tpot[res->completed] = r->tokens > 1 ? (r->done - r->first) / (r->tokens - 1) : 0.0;
            res->out_tokens += r->tokens;
            res->completed++;
        }
        qsort(ttft, (size_t)res->completed, sizeof *ttft, cmp_double);
        qsort(tpot, (size_t)res->completed, sizeof *tpot, cmp_double);
        const int c = res->completed;
        if (c > 0) {
            res->ttft_p50 = ttft[c / 2], res->ttft_p90 = ttft[(c * 9) / 10];
            res->tpot_p50 = tpot[c / 2], res->tpot_p90 = tpot[(c * 9) / 10];
        }
        res->out_tps = res->out_tokens / res->elapsed;
        res->peak_decoding = run.peak_decoding;
        dsla_engine_metrics_t m;
        dsla_engine_metrics(e, &m);
        res->peak_running = m.peak_running;
    }
    free(run.recs);
    free(ids);
    free(ttft);
    free(tpot);
    return s;
}

/* One request of a trace run: its record, on the run's clock. */
typedef struct {
    dsla_load_record_t *rec;
    double t0;
} trace_req_t;

static int on_trace_event(void *user, const dsla_stream_event_t *ev) {
    trace_req_t *q = user;
    const double t = dsla_clock_seconds() - q->t0;
    if (ev->token >= 0) {
        if (q->rec->output_tokens++ == 0)
            q->rec->first_s = t;
        else if (t - q->rec->last_s > q->rec->max_gap_s)
            q->rec->max_gap_s = t - q->rec->last_s;
        q->rec->last_s = t;
    }
    if (ev->finished) {
        if (q->rec->output_tokens == 0) q->rec->last_s = t;
        q->rec->outcome = ev->status == DSLA_OK ? DSLA_LOAD_COMPLETED : DSLA_LOAD_ERROR;
        snprintf(q->rec->detail, sizeof q->rec->detail, "%s", dsla_status_name(ev->status));
    }
    return 0;
}

/* Submits each request of w at its arrival (wall clock; random prompt ids) and steps the engine
 * until every one has ended; fills recs (w->n of them). */
typedef struct {
    dsla_step_record_t *recs;
    int n, cap;
} step_log_t;

static dsla_status_t run_trace(dsla_engine_t *e, int vocab, const dsla_workload_t *w,
                               dsla_load_record_t *recs, step_log_t *steps) {
    trace_req_t *q = calloc((size_t)(w->n > 0 ? w->n : 1), sizeof *q);
    int max_prompt = 1;
    for (int i = 0; i < w->n; i++)
        max_prompt =
            w->requests[i].prompt_tokens > max_prompt ? w->requests[i].prompt_tokens : max_prompt;
    int32_t *ids = malloc((size_t)max_prompt * sizeof *ids);
    dsla_status_t s =
        q && ids ? DSLA_OK : dsla_error(DSLA_ERR_OUT_OF_MEMORY, "bench: out of memory");
    const double t0 = dsla_clock_seconds();
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    int next = 0;
    while (s == DSLA_OK && (next < w->n || !dsla_engine_idle(e))) {
        const double now = dsla_clock_seconds() - t0;
        for (; next < w->n && w->requests[next].arrival_s <= now; next++) {
            const dsla_workload_request_t *r = &w->requests[next];
            for (int t = 0; t < r->prompt_tokens; t++) {
                x = x * 6364136223846793005ULL + 1442695040888963407ULL;
                ids[t] = t == 0 ? 1 : (int32_t)(3 + (x >> 33) % (uint64_t)(vocab - 3));
            }
            dsla_load_record_t *rec = &recs[next];
            *rec = (dsla_load_record_t){.arrival_s = r->arrival_s,
                                        .sent_s = now,
                                        .first_s = -1,
                                        .prompt_tokens = r->prompt_tokens,
                                        .prompt_tokens_served = r->prompt_tokens,
                                        .output_tokens_asked = r->output_tokens};
            q[next] = (trace_req_t){rec, t0};
            const dsla_request_params_t p = {.prompt_ids = ids,
                                             .n_prompt_ids = r->prompt_tokens,
                                             .max_tokens = r->output_tokens,
                                             .ignore_eos = true,
                                             .on_event = on_trace_event,
                                             .user = &q[next]};
            const dsla_status_t sub = dsla_engine_submit(e, &p, NULL);
            if (sub != DSLA_OK) {
                rec->outcome =
                    sub == DSLA_ERR_RESOURCE_EXHAUSTED ? DSLA_LOAD_REFUSED : DSLA_LOAD_ERROR;
                rec->last_s = now;
                snprintf(rec->detail, sizeof rec->detail, "%s", dsla_status_name(sub));
            }
        }
        if (!dsla_engine_idle(e)) {
            bool progressed = false;
            s = dsla_engine_step(e, &progressed);
            if (s == DSLA_OK && progressed && steps->n < steps->cap &&
                dsla_engine_last_step(e, &steps->recs[steps->n]))
                steps->n++;
        } else if (next < w->n) { /* nothing to run before the next arrival */
            const double gap = w->requests[next].arrival_s - (dsla_clock_seconds() - t0);
            if (gap > 0) {
                struct timespec ts = {(time_t)gap, (long)((gap - (double)(time_t)gap) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
    free(q);
    free(ids);
    return s;
}

/* A DSLA layer version carrying its shape and no host weights: the device holds random ones. */
static double pct(double *v, int n, double q) {
    if (n == 0) return 0.0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    const int i = (int)(q * (n - 1) + 0.5);
    return v[i];
}

/* One JSON line summarising the steps that `keep` selects (0 all, 1 decode-only, 2 with prefill).
 */
static void print_steps(const char *device, const char *label, const dsla_step_record_t *recs,
                        int n, int keep, double *scratch) {
    int k = 0, kp = 0;
    double floor_sum = 0, step_sum = 0, dec = 0, pre = 0, kv = 0;
    double ph[DSLA_STEP_PHASES] = {0}, ph_step = 0;
    for (int i = 0; i < n; i++) {
        const dsla_step_record_t *r = &recs[i];
        if ((keep == 1 && r->prefill_tokens > 0) || (keep == 2 && r->prefill_tokens == 0)) continue;
        scratch[k++] = r->step_s;
        floor_sum += r->floor_s;
        step_sum += r->step_s;
        dec += r->decode_seqs;
        pre += r->prefill_tokens;
        kv += r->kv_read_bytes;
        if (r->phases_measured) {
            kp++;
            ph_step += r->step_s;
            for (int p = 0; p < DSLA_STEP_PHASES; p++)
                ph[p] += r->phase_s[p];
        }
    }
    if (k == 0) return;
    const double p50 = pct(scratch, k, 0.5), p90 = pct(scratch, k, 0.9),
                 p99 = pct(scratch, k, 0.99);
    int j = 0;
    for (int i = 0; i < n; i++) {
        const dsla_step_record_t *r = &recs[i];
        if ((keep == 1 && r->prefill_tokens > 0) || (keep == 2 && r->prefill_tokens == 0)) continue;
        scratch[j++] = r->fraction;
    }
    const double frac_p50 = pct(scratch, k, 0.5);
    j = 0;
    for (int i = 0; i < n; i++) {
        const dsla_step_record_t *r = &recs[i];
        if ((keep == 1 && r->prefill_tokens > 0) || (keep == 2 && r->prefill_tokens == 0)) continue;
        scratch[j++] = r->floor_s;
    }
    const double floor_p50 = pct(scratch, k, 0.5);
    printf(
        "{\"what\":\"serve_steps\",\"device\":\"%s\",\"run\":\"%s\",\"steps\":\"%s\",\"count\":%d,"
        "\"step_ms\":{\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"mean\":%.2f},"
        "\"floor_ms\":{\"p50\":%.2f,\"mean\":%.2f},\"fraction_of_floor\":{\"p50\":%.3f,"
        "\"of_sums\":%.3f},\"decode_seqs_mean\":%.1f,\"prefill_tokens_mean\":%.1f,"
        "\"kv_read_gb_mean\":%.2f,\"phase_steps\":%d,\"phase_ms_mean\":{",
        device, label,
        keep == 0   ? "all"
        : keep == 1 ? "decode"
                    : "mixed",
        k, 1e3 * p50, 1e3 * p90, 1e3 * p99, 1e3 * step_sum / k, 1e3 * floor_p50,
        1e3 * floor_sum / k, frac_p50, step_sum > 0 ? floor_sum / step_sum : 0.0, dec / k, pre / k,
        kv / k / 1e9, kp);
    for (int p = 0; p < DSLA_STEP_PHASES; p++)
        printf("%s\"%s\":%.3f", p ? "," : "", dsla_step_phase_name(p), kp ? 1e3 * ph[p] / kp : 0.0);
    printf("},\"phase_step_ms_mean\":%.3f}\n", kp ? 1e3 * ph_step / kp : 0.0);
}

static dsla_status_t shape_only_version(dsla_layer_ref_t **out, const dsla_model_config_t *c,
                                        int layer) {
    dsla_dsla_layer_t *w = calloc(1, sizeof *w);
    if (!w) return dsla_error_oom("bench");
    *w = (dsla_dsla_layer_t){.layer = layer,
                             .heads = c->num_heads,
                             .head_dim = c->head_dim,
                             .model_dim = c->hidden_size};
    return dsla_layer_ref_create(out, &w);
}

typedef struct {
    int ratio, n_dsla, n_fit, n_pool, capped;
    double per_seq_mib, free_gib;
    long kv_blocks;
    int state_slots;
    result_t admit, work;
} ratio_row_t;

typedef struct {
    dsla_cuda_model_t *m;
    const dsla_model_config_t *cfg;
    int context, max_seqs, requests, output;
    size_t margin;
    const char *device;
    const dsla_workload_t *trace; /* NULL: the fixed workload */
    const char *trace_desc, *timeline;
    dsla_load_slo_t slo;
    /* the trace's engine and its step accounting */
    int prefill_chunk, step_tokens, phase_every;
    dsla_step_timing_t step_timing;
    dsla_step_rates_t rates;
} bench_t;

static dsla_status_t run_ratio(const bench_t *b, ratio_row_t *row) {
    const dsla_model_config_t *c = b->cfg;
    const int L = c->num_layers;
    const int n_dsla = (int)lround(row->ratio * L / 100.0);
    row->n_dsla = n_dsla;
    dsla_plan_t *plan = NULL;
    DSLA_TRY(dsla_plan_create(&plan, L));
    dsla_status_t s = DSLA_OK;
    /* Spread over depth: layer l converts when the running share crosses an integer. */
    for (int l = 0; l < L && s == DSLA_OK; l++) {
        const bool dsla = ((l + 1) * n_dsla) / L != (l * n_dsla) / L;
        if (!dsla) {
            s = dsla_cuda_model_set_dsla_layer(b->m, l, NULL);
            continue;
        }
        dsla_layer_ref_t *ref = NULL;
        s = dsla_cuda_model_set_dsla_random(b->m, l, 100u + (uint64_t)l);
        if (s == DSLA_OK) s = shape_only_version(&ref, c, l);
        if (s == DSLA_OK) s = dsla_plan_set_layer(plan, l, ref);
        dsla_layer_ref_release(&ref);
    }
    size_t free_b = 0, total = 0;
    if (s == DSLA_OK) s = dsla_cuda_mem_info(&free_b, &total);
    /* One arena: a state slot takes whole blocks. */
    const size_t block = dsla_cuda_kv_block_bytes(b->m, DSLA_DTYPE_BF16);
    const size_t slot = (size_t)dsla_cuda_kv_blocks_per_slot(b->m, DSLA_DTYPE_BF16) * block;
    const size_t per_seq = (size_t)(L - n_dsla) * (size_t)dsla_kv_blocks_for(b->context) * block +
                           (size_t)n_dsla * slot;
    const size_t avail = free_b > b->margin ? free_b - b->margin : 0;
    row->free_gib = (double)free_b / (1u << 30);
    row->per_seq_mib = (double)per_seq / (1u << 20);
    row->n_fit = (int)(avail / per_seq);
    row->capped = row->n_fit > b->max_seqs;
    row->n_pool = row->capped ? b->max_seqs : row->n_fit;
    row->state_slots = row->n_pool * n_dsla;
    row->kv_blocks = (long)(avail / block);
    if (row->kv_blocks > 0x7fffffffL) row->kv_blocks = 0x7fffffffL;
    dsla_serve_backend_t *be = NULL;
    dsla_engine_t *e = NULL;
    /* one logit row per sequence: the bench never asks for prompt logprobs */
    const dsla_serve_cuda_opts_t o = {DSLA_DTYPE_BF16, (int)row->kv_blocks, b->max_seqs, b->context,
                                      0};
    if (s == DSLA_OK && row->n_pool < 1)
        s = dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                       "bench: not one sequence of %d tokens fits: %.2f GiB free, %.1f MiB each",
                       b->context, row->free_gib, row->per_seq_mib);
    if (s == DSLA_OK) s = dsla_serve_backend_cuda_create(&be, b->m, &o);
    if (s == DSLA_OK) s = dsla_serve_backend_cuda_adopt_plan(be, plan);
    dsla_engine_config_t ec = dsla_engine_config_default();
    ec.max_running = b->max_seqs;
    ec.prefill_chunk = b->context;
    ec.step_tokens = b->context + b->max_seqs;
    ec.max_queued = 4 * b->max_seqs + b->requests;
    ec.max_queued_tokens = (long)ec.max_queued * b->context;
    ec.max_queue_wait_ms = 0; /* the admission test's last request waits by design */
    if (s == DSLA_OK) s = dsla_engine_create_on(&e, be, NULL, &ec);
    if (s == DSLA_OK) s = dsla_engine_set_plan(e, plan);
    const int admit_n = row->capped ? row->n_pool : row->n_pool + 1;
    const int admit_out = row->n_pool + ADMIT_SLACK;
    if (s == DSLA_OK && admit_out >= b->context)
        s = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                       "bench: %d sequences need %d outputs each, beyond --context %d", row->n_pool,
                       admit_out, b->context);
    if (s == DSLA_OK)
        s = run_workload(e, c->vocab_size, admit_n, b->context - admit_out, admit_out, 1,
                         &row->admit);
    if (s == DSLA_OK)
        printf("{\"what\":\"serve_capacity\",\"device\":\"%s\",\"dsla_percent\":%d,"
               "\"dsla_layers\":%d,\"context\":%d,\"free_gib\":%.2f,\"per_seq_mib\":%.1f,"
               "\"fit_by_arithmetic\":%d,\"capped_at\":%d,\"kv_blocks\":%ld,\"state_slots\":%d,"
               "\"submitted\":%d,\"peak_decoding_at_once\":%d,\"peak_running\":%d,"
               "\"elapsed_s\":%.2f}\n",
               b->device, row->ratio, n_dsla, b->context, row->free_gib, row->per_seq_mib,
               row->n_fit, row->capped ? b->max_seqs : 0, row->kv_blocks, row->state_slots, admit_n,
               row->admit.peak_decoding, row->admit.peak_running, row->admit.elapsed);
    fflush(stdout);
    if (s == DSLA_OK && b->trace) {
        /* A serving engine, not the admission test's: prompts in chunks under a step budget. */
        dsla_engine_destroy(&e);
        ec.prefill_chunk = b->prefill_chunk;
        ec.step_tokens = b->step_tokens;
        ec.max_queued = 1 << 16;
        ec.max_queued_tokens = (long)ec.max_queued * b->context;
        ec.max_queue_wait_ms = dsla_engine_config_default().max_queue_wait_ms;
        ec.batch_invariant = false;
        ec.step_timing = b->step_timing;
        ec.step_phase_every = b->phase_every;
        ec.step_rates = b->rates;
        s = dsla_engine_create_on(&e, be, NULL, &ec);
        if (s == DSLA_OK) s = dsla_engine_set_plan(e, plan);
        if (s == DSLA_OK)
            s = dsla_serve_cuda_warmup(e, c->vocab_size, b->prefill_chunk, b->context);
        dsla_load_record_t *recs = calloc((size_t)b->trace->n, sizeof *recs);
        step_log_t steps = {.cap = 1 << 16};
        steps.recs = malloc((size_t)steps.cap * sizeof *steps.recs);
        dsla_load_summary_t sum;
        if (s == DSLA_OK)
            s = recs && steps.recs ? run_trace(e, c->vocab_size, b->trace, recs, &steps)
                                   : dsla_error_oom("bench: %d requests", b->trace->n);
        if (s == DSLA_OK) s = dsla_load_summarize(recs, b->trace->n, 0, &b->slo, &sum);
        char path[4096];
        snprintf(path, sizeof path, "%s.dsla%d.csv", b->timeline ? b->timeline : "", row->ratio);
        if (s == DSLA_OK && b->timeline) s = dsla_load_write_timeline(path, recs, b->trace->n);
        if (s == DSLA_OK) {
            char extra[1024], title[1024];
            snprintf(extra, sizeof extra,
                     "\"device\":\"%s\",\"dsla_percent\":%d,\"context\":%d,\"workload\":\"%s\"",
                     b->device, row->ratio, b->context, b->trace_desc);
            dsla_load_print_json(stdout, "serve_trace", extra, &sum);
            snprintf(title, sizeof title, "dsla bench --device cuda: %s, %d%% DSLA, %s", b->device,
                     row->ratio, b->trace_desc);
            dsla_load_print_table(stderr, title, &sum);
            row->work.out_tps = sum.output_tokens_per_s;
            row->work.ttft_p50 = 1e-3 * sum.ttft_ms.p50;
            row->work.tpot_p50 = 1e-3 * sum.tpot_ms.p50;
            row->work.elapsed = sum.elapsed_s;
            char label[64];
            snprintf(label, sizeof label, "dsla%d", row->ratio);
            double *scratch = malloc((size_t)(steps.n + 1) * sizeof *scratch);
            for (int keep = 0; keep < 3 && scratch; keep++)
                print_steps(b->device, label, steps.recs, steps.n, keep, scratch);
            free(scratch);
        }
        free(recs);
        free(steps.recs);
    }
    if (s == DSLA_OK && !b->trace && b->requests > 0)
        s = run_workload(e, c->vocab_size, b->requests, b->context - b->output, b->output, 2,
                         &row->work);
    if (s == DSLA_OK && !b->trace && b->requests > 0) {
        const result_t *w = &row->work;
        printf("{\"what\":\"serve_throughput\",\"device\":\"%s\",\"dsla_percent\":%d,"
               "\"requests\":%d,\"prompt\":%d,\"output\":%d,\"completed\":%d,\"elapsed_s\":%.3f,"
               "\"output_tokens_per_s\":%.1f,\"total_tokens_per_s\":%.1f,"
               "\"ttft_ms\":{\"p50\":%.1f,\"p90\":%.1f},\"tpot_ms\":{\"p50\":%.2f,\"p90\":%.2f},"
               "\"peak_decoding_at_once\":%d}\n",
               b->device, row->ratio, b->requests, b->context - b->output, b->output, w->completed,
               w->elapsed, w->out_tps,
               (w->out_tokens + (double)w->completed * (b->context - b->output)) / w->elapsed,
               1e3 * w->ttft_p50, 1e3 * w->ttft_p90, 1e3 * w->tpot_p50, 1e3 * w->tpot_p90,
               w->peak_decoding);
    }
    fflush(stdout);
    dsla_engine_destroy(&e);
    dsla_serve_backend_destroy(&be);
    dsla_plan_release(&plan);
    return s;
}

int dsla_cmd_bench_cuda(int argc, char **argv) {
    const char *device_arg = "cuda", *random_model = NULL, *ratios_arg = "0,25,50,75";
    long context = 8192, requests = -1, output = 128, max_seqs = 128, margin_mib = 2048, seed = 7;
    dsla_workload_options_t wo = {0};
    double slo_ttft_ms = 1000, slo_tpot_ms = 100;
    long prefill_chunk = 2048, step_tokens = 0, step_timing = 2, phase_every = 8, decode_runs = 1;
    long vocab = 32000;
    const char *timeline = NULL;
    const dsla_arg_spec_t specs[] = {
        {"device", DSLA_ARG_STRING, "cuda (this mode) or cpu", 0, 0, &device_arg},
        {"random-model", DSLA_ARG_STRING, "7b: Llama-2-7B's shape, random bf16 weights", 0, 0,
         &random_model},
        {"ratios", DSLA_ARG_STRING, "DSLA percentages, comma-separated (default 0,25,50,75)", 0, 0,
         &ratios_arg},
        {"context", DSLA_ARG_INT, "tokens per sequence, prompt + output (default 8192)", 64, 32768,
         &context},
        {"requests", DSLA_ARG_INT, "fixed workload: requests (default 16; 0 skips it)", 0, 4096,
         &requests},
        {"output-len", DSLA_ARG_INT, "fixed workload: output tokens (default 128)", 1, 4096,
         &output},
        {"max-seqs", DSLA_ARG_INT, "sequences at once at most (default 128)", 1, 1024, &max_seqs},
        {"margin-mib", DSLA_ARG_INT, "device memory left out of the pools (default 2048)", 0,
         1 << 20, &margin_mib},
        {"seed", DSLA_ARG_INT, "weights and the synthetic workload (default 7)", 0, 9.2e18, &seed},
        {"trace", DSLA_ARG_STRING, "replaces the fixed workload: a CSV trace (wall clock)", 0, 0,
         &wo.trace},
        {"rate", DSLA_ARG_FLOAT, "replaces the fixed workload: Poisson arrivals per second", 1e-6,
         1e6, &wo.rate},
        {"cv", DSLA_ARG_FLOAT, "with --rate: inter-arrival CV (1 Poisson, else gamma)", 0.01, 100,
         &wo.cv},
        {"preset", DSLA_ARG_STRING,
         "with --rate: chat or long-doc lengths (default: the fixed "
         "workload's)",
         0, 0, &wo.preset},
        {"rate-scale", DSLA_ARG_FLOAT, "multiply the arrival rate of --trace or --rate", 1e-6, 1e6,
         &wo.scale},
        {"duration", DSLA_ARG_FLOAT, "with --trace or --rate: seconds of arrivals", 0, 1e7,
         &wo.duration_s},
        {"slo-ttft-ms", DSLA_ARG_FLOAT, "goodput: TTFT target (default 1000)", 0, 1e9,
         &slo_ttft_ms},
        {"slo-tpot-ms", DSLA_ARG_FLOAT, "goodput: time-per-output-token target (default 100)", 0,
         1e9, &slo_tpot_ms},
        {"timeline", DSLA_ARG_STRING, "per-request CSVs: PATH.dsla<percent>.csv per ratio", 0, 0,
         &timeline},
        {"vocab", DSLA_ARG_INT, "vocabulary of the random model (default 32000)", 16, 1 << 20,
         &vocab},
        {"prefill-chunk", DSLA_ARG_INT, "trace: prefill chunk (default 2048)", 16, 1 << 20,
         &prefill_chunk},
        {"step-tokens", DSLA_ARG_INT, "trace: tokens per step (default chunk + max-seqs)", 0,
         1 << 20, &step_tokens},
        {"step-timing", DSLA_ARG_INT, "trace: 0 host clocks, 1 + device span, 2 + phases (2)", 0, 2,
         &step_timing},
        {"phase-every", DSLA_ARG_INT, "trace: phases on every Nth step (default 8)", 0, 1 << 20,
         &phase_every},
        {"decode-runs", DSLA_ARG_INT,
         "trace: 1 batches a mixed step's decodes (default), 0 one call each (before)", 0, 1,
         &decode_runs},
    };
    int rc =
        dsla_args_parse_options(argc, argv, specs, (int)(sizeof specs / sizeof specs[0]), usage);
    if (rc >= 0) return rc;
    rc = 0; /* parsed: from here on, the exit status of the run */
    if (!random_model || strcmp(random_model, "7b") != 0) {
        fprintf(stderr, "dsla bench: --device cuda needs --random-model 7b (the only shape)\n");
        return 2;
    }
    const bool workload = wo.trace || wo.rate > 0;
    if (requests < 0) requests = workload ? 0 : 16;
    if (output >= context) {
        fprintf(stderr, "dsla bench: --output-len %ld must be below --context %ld\n", output,
                context);
        return 2;
    }
    int ratios[MAX_RATIOS], n_ratios = 0;
    for (const char *p = ratios_arg; *p && n_ratios < MAX_RATIOS;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 100) {
            fprintf(stderr, "dsla bench: --ratios '%s' must be percentages 0..100\n", ratios_arg);
            return 2;
        }
        ratios[n_ratios++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "dsla bench: no CUDA device\n");
        return 1;
    }
    char device[256];
    dsla_cuda_stream_t stream = NULL;
    bench_t b = {.context = (int)context,
                 .max_seqs = (int)max_seqs,
                 .requests = (int)requests,
                 .output = (int)output,
                 .margin = (size_t)margin_mib << 20,
                 .device = device};
    dsla_workload_t trace = {0};
    char trace_desc[768] = "", plen[32], olen[32];
    if (workload) {
        snprintf(plen, sizeof plen, "%ld", context - output);
        snprintf(olen, sizeof olen, "%ld", output);
        wo.prompt_len = wo.preset ? NULL : plen;
        wo.output_len = wo.preset ? NULL : olen;
        wo.max_requests = requests;
        wo.seed = (uint64_t)seed;
        wo.max_total = (int)context;
        if (dsla_workload_build(&wo, &trace, trace_desc, sizeof trace_desc, NULL) != DSLA_OK) {
            fprintf(stderr, "dsla bench: %s\n", dsla_last_error());
            return 2;
        }
        /* the fixed workload's queue bound grows with --requests; a trace's stays the engine's */
        b.requests = 0;
        b.trace = &trace;
        b.trace_desc = trace_desc;
        b.timeline = timeline;
        b.slo = (dsla_load_slo_t){slo_ttft_ms * 1e-3, slo_tpot_ms * 1e-3};
        b.prefill_chunk = (int)(prefill_chunk < context ? prefill_chunk : context);
        b.step_tokens = step_tokens ? (int)step_tokens : b.prefill_chunk + (int)max_seqs;
        b.step_timing = (dsla_step_timing_t)step_timing;
        b.phase_every = (int)phase_every;
    }
    const dsla_model_config_t cfg = dsla_model_config_llama2_7b((int)vocab);
    const dsla_cuda_model_opts_t mo = {DSLA_DTYPE_BF16, (int)(context + max_seqs),
                                       (int)max_seqs,   (int)max_seqs,
                                       (int)context,    true};
    ratio_row_t rows[MAX_RATIOS];
    memset(rows, 0, sizeof rows);
    const double t0 = dsla_clock_seconds();
    dsla_status_t s = dsla_cuda_device_name(device, sizeof device);
    if (s == DSLA_OK) s = dsla_cuda_stream_create(&stream);
    if (s == DSLA_OK) s = dsla_cuda_model_create_random(&b.m, &cfg, (uint64_t)seed, &mo, stream);
    if (s == DSLA_OK && workload) {
        dsla_cuda_model_set_decode_runs(b.m, decode_runs != 0);
        s = dsla_step_rates_measure_cuda(&b.rates);
    }
    if (s == DSLA_OK) {
        b.cfg = dsla_cuda_model_config(b.m);
        size_t free_b = 0, total = 0;
        s = dsla_cuda_mem_info(&free_b, &total);
        printf("{\"what\":\"serve_model\",\"device\":\"%s\",\"device_gib\":%.1f,"
               "\"weight_bytes\":%zu,\"kv_block_bytes\":%zu,\"state_slot_bytes\":%zu,"
               "\"dsla_on_gpu\":%s,\"init_s\":%.1f}\n",
               device, (double)total / (1u << 30), dsla_cuda_model_weight_bytes(b.m),
               dsla_cuda_kv_block_bytes(b.m, DSLA_DTYPE_BF16), dsla_serve_cuda_slot_bytes(b.cfg),
               dsla_cuda_model_dsla_supported(b.m) ? "true" : "false", dsla_clock_seconds() - t0);
    }
    int done = 0;
    for (; done < n_ratios && s == DSLA_OK; done++) {
        rows[done].ratio = ratios[done];
        s = run_ratio(&b, &rows[done]);
    }
    if (s != DSLA_OK) {
        fprintf(stderr, "dsla bench: %s\n", dsla_last_error());
        rc = 1;
    }
    if (b.trace)
        printf("\ndsla bench --device cuda: %s, 7B shape (random bf16), bf16 KV, context %ld, "
               "workload %s\n",
               device, context, trace_desc);
    else
        printf("\ndsla bench --device cuda: %s, 7B shape (random bf16), bf16 KV, context %ld, "
               "workload %ld x (%ld prompt + %ld output)\n",
               device, context, requests, context - output, output);
    printf("  %-5s %-6s %-9s %-8s %-9s %-10s %-9s %-9s %-9s\n", "DSLA", "layers", "MiB/seq", "fit",
           "at once", "out tok/s", "TTFT p50", "TPOT p50", "elapsed");
    for (int i = 0; i < done; i++) {
        const ratio_row_t *r = &rows[i];
        printf("  %3d%%  %-6d %-9.1f %-3d%-5s %-9d %-10.1f %-9.0f %-9.1f %-9.1f\n", r->ratio,
               r->n_dsla, r->per_seq_mib, r->n_fit, r->capped ? "(cap)" : "",
               r->admit.peak_decoding, r->work.out_tps, 1e3 * r->work.ttft_p50,
               1e3 * r->work.tpot_p50, r->work.elapsed);
    }
    dsla_workload_free(&trace);
    dsla_cuda_model_destroy(&b.m);
    if (stream) dsla_cuda_stream_destroy(&stream);
    return rc;
}

#else

int dsla_cmd_bench_cuda(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "dsla bench: --device cuda needs a build with CUDA (-DDSLA_CUDA=ON)\n");
    return 1;
}

#endif

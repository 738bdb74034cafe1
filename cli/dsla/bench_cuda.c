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
 * A step takes one whole prompt (prefill chunk = context) plus every running decode, so admission
 * never promises blocks that another prompt's later chunks will take. Prints one JSON line per
 * measurement and a table last.
 *
 * With --rate R it runs a serving trace instead (issue 11): Poisson arrivals at R requests/s for
 * --duration seconds, lognormal prompt and output lengths (chat-like defaults: means 1200 and
 * 200), all-attention, pools sized to the card, wall-clock steps (idle gaps skipped); it prints
 * TTFT and TPOT percentiles from each request's arrival, and the step accounting
 * (runtime/serve/step_stats.h) summarised over all steps, decode-only steps and steps with a
 * prefill: step time percentiles, floor, fraction of floor, phases. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "commands.h"
#include "runtime/serve/engine.h"

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
enum { ADMIT_SLACK = 8, MAX_RATIOS = 8, MODEL_LAYERS = 32 };

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

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int on_event(void *user, const dsla_stream_event_t *ev) {
    rec_t *r = user;
    const double t = now_s();
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
    dsla_status_t s = run.recs && ids && ttft && tpot
                          ? DSLA_OK
                          : dsla_error(DSLA_ERR_OUT_OF_MEMORY, "bench: out of memory");
    const double t0 = now_s();
    for (int i = 0; i < n && s == DSLA_OK; i++) {
        uint64_t x = seed * 0x9e3779b97f4a7c15ULL + (uint64_t)i;
        for (int t = 0; t < prompt; t++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            ids[t] = t == 0 ? 1 : (int32_t)(3 + (x >> 33) % (uint64_t)(vocab - 3));
        }
        run.recs[i] = (rec_t){.submit = now_s(), .run = &run};
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
        res->elapsed = now_s() - t0;
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

/* A DSLA layer version carrying its shape and no host weights: the device holds random ones. */
static dsla_status_t shape_only_version(dsla_layer_ref_t **out, const dsla_model_config_t *c,
                                        int layer) {
    dsla_dsla_layer_t *w = calloc(1, sizeof *w);
    if (!w) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "bench: out of memory");
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
    const size_t block = dsla_cuda_kv_block_bytes(b->m, DSLA_DTYPE_BF16);
    const size_t slot = dsla_serve_cuda_slot_bytes(c);
    const size_t per_seq =
        (size_t)(L - n_dsla) *
            (size_t)((b->context + DSLA_KV_BLOCK_TOKENS - 1) / DSLA_KV_BLOCK_TOKENS) * block +
        (size_t)n_dsla * slot;
    const size_t avail = free_b > b->margin ? free_b - b->margin : 0;
    row->free_gib = (double)free_b / (1u << 30);
    row->per_seq_mib = (double)per_seq / (1u << 20);
    row->n_fit = (int)(avail / per_seq);
    row->capped = row->n_fit > b->max_seqs;
    row->n_pool = row->capped ? b->max_seqs : row->n_fit;
    row->state_slots = row->n_pool * n_dsla;
    row->kv_blocks = (long)((avail - (size_t)row->state_slots * slot) / block);
    if (row->kv_blocks > 0x7fffffffL) row->kv_blocks = 0x7fffffffL;
    dsla_serve_backend_t *be = NULL;
    dsla_engine_t *e = NULL;
    const dsla_serve_cuda_opts_t o = {DSLA_DTYPE_BF16, (int)row->kv_blocks, row->state_slots,
                                      b->max_seqs, b->context};
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
    if (s == DSLA_OK && b->requests > 0)
        s = run_workload(e, c->vocab_size, b->requests, b->context - b->output, b->output, 2,
                         &row->work);
    if (s == DSLA_OK && b->requests > 0) {
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

/* ---- the serving trace: Poisson arrivals of chat-like requests (issue 11) ---- */

typedef struct {
    double rate, duration, prompt_mean, prompt_sigma, output_mean, output_sigma;
    int max_running, prefill_chunk, step_tokens, context, step_timing, phase_every;
    bool decode_runs;
    uint64_t seed;
} trace_opts_t;

typedef struct {
    double arrival, first, done;
    int prompt, output, tokens;
    bool refused;
} trace_req_t;

static double g_skipped; /* idle time the trace skipped instead of sleeping */

static double trace_now(void *user) {
    (void)user;
    return now_s() + g_skipped;
}

static int trace_event(void *user, const dsla_stream_event_t *ev) {
    trace_req_t *r = user;
    const double t = trace_now(NULL);
    if (ev->token >= 0 && r->tokens++ == 0) r->first = t;
    if (ev->finished) r->done = t;
    return 0;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double uniform01(uint64_t *s) {
    return ((double)(splitmix(s) >> 11) + 0.5) * 0x1.0p-53;
}

/* A lognormal draw with the given mean (not median): exp(N(ln mean - sigma^2 / 2, sigma^2)). */
static int lognormal(uint64_t *s, double mean, double sigma, int lo, int hi) {
    const double z = sqrt(-2.0 * log(uniform01(s))) * cos(6.283185307179586 * uniform01(s));
    const double v = exp(log(mean) - 0.5 * sigma * sigma + sigma * z);
    const int n = (int)lround(v);
    return n < lo ? lo : n > hi ? hi : n;
}

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

/* Untimed: one prompt per cuDNN row bucket up to the prefill chunk, and one per bucket of a second
 * chunk after a whole first one (each bucket's plan takes 50-80 ms once), so that the run measures
 * serving, not plan building. */
static dsla_status_t trace_warmup(dsla_engine_t *e, int vocab, int chunk, int context) {
    int32_t *ids = malloc((size_t)context * sizeof *ids);
    if (!ids) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "bench: out of memory");
    for (int t = 0; t < context; t++)
        ids[t] = (int32_t)(1 + (t * 7919) % (vocab - 1));
    dsla_status_t s = DSLA_OK;
    for (int pass = 0; pass < 2; pass++) {
        const int base = pass ? chunk : 0, most = pass ? context - 2 - chunk : chunk;
        for (int n = 64; n <= most && s == DSLA_OK; n = dsla_cuda_cudnn_rows(n) + 1) {
            const int len =
                base + (dsla_cuda_cudnn_rows(n) < most ? dsla_cuda_cudnn_rows(n) : most);
            const dsla_request_params_t p = {
                .prompt_ids = ids, .n_prompt_ids = len, .max_tokens = 2, .ignore_eos = true};
            s = dsla_engine_submit(e, &p, NULL);
        }
    }
    while (s == DSLA_OK && !dsla_engine_idle(e))
        s = dsla_engine_step(e, NULL);
    free(ids);
    return s;
}

static dsla_status_t run_trace(dsla_cuda_model_t *m, const trace_opts_t *o, const char *device,
                               const char *label) {
    const dsla_model_config_t *c = dsla_cuda_model_config(m);
    dsla_step_rates_t rates;
    DSLA_TRY(dsla_step_rates_measure_cuda(&rates));
    size_t free_b = 0, total = 0;
    DSLA_TRY(dsla_cuda_mem_info(&free_b, &total));
    const size_t block = dsla_cuda_kv_block_bytes(m, DSLA_DTYPE_BF16);
    const size_t margin = (size_t)3 << 30;
    long blocks = free_b > margin ? (long)((free_b - margin) / block) : 0;
    if (blocks > 0x7fffffffL) blocks = 0x7fffffffL;
    dsla_cuda_model_set_decode_runs(m, o->decode_runs);
    const dsla_serve_cuda_opts_t so = {DSLA_DTYPE_BF16, (int)blocks, 0, o->max_running, o->context};
    dsla_serve_backend_t *be = NULL;
    dsla_engine_t *e = NULL;
    dsla_engine_config_t ec = dsla_engine_config_default();
    ec.max_running = o->max_running;
    ec.prefill_chunk = o->prefill_chunk;
    ec.step_tokens = o->step_tokens;
    ec.max_queued = 1 << 16;
    ec.max_queued_tokens = (long)ec.max_queued * o->context;
    ec.batch_invariant = false;
    ec.clock = trace_now;
    ec.step_timing = (dsla_step_timing_t)o->step_timing;
    ec.step_phase_every = o->phase_every;
    ec.step_rates = rates;
    dsla_status_t s = dsla_serve_backend_cuda_create(&be, m, &so);
    if (s == DSLA_OK) s = dsla_engine_create_on(&e, be, NULL, &ec);
    if (s == DSLA_OK) s = trace_warmup(e, c->vocab_size, o->prefill_chunk, o->context);
    /* The arrivals and lengths, drawn up front. */
    uint64_t rng = o->seed;
    int n = (int)(o->rate * o->duration * 1.5) + 16, count = 0;
    trace_req_t *reqs = calloc((size_t)n, sizeof *reqs);
    int cap_steps = 1 << 16, n_steps = 0;
    dsla_step_record_t *recs = malloc((size_t)cap_steps * sizeof *recs);
    /* Prompts are windows of one id sequence starting at different offsets. */
    enum { WINDOW_OFFSETS = 512 };
    int32_t *ids = malloc((size_t)(o->context + WINDOW_OFFSETS) * sizeof *ids);
    if (!reqs || !recs || !ids) s = dsla_error(DSLA_ERR_OUT_OF_MEMORY, "bench: out of memory");
    for (double t = 0; s == DSLA_OK && count < n;) {
        t += -log(uniform01(&rng)) / o->rate;
        if (t > o->duration) break;
        trace_req_t *r = &reqs[count++];
        r->arrival = t;
        r->output = lognormal(&rng, o->output_mean, o->output_sigma, 4, o->context / 4);
        r->prompt =
            lognormal(&rng, o->prompt_mean, o->prompt_sigma, 16, o->context - r->output - 1);
    }
    for (int t = 0; t < o->context + WINDOW_OFFSETS; t++)
        ids[t] = (int32_t)(1 + (t * 2654435761u) % (unsigned)(c->vocab_size - 1));
    dsla_cuda_model_stats_t st0 = dsla_cuda_model_stats(m);
    dsla_engine_metrics_t m0;
    if (s == DSLA_OK) dsla_engine_metrics(e, &m0);
    const double t0 = trace_now(NULL);
    int next = 0, refused = 0;
    while (s == DSLA_OK && (next < count || !dsla_engine_idle(e))) {
        double now = trace_now(NULL) - t0;
        for (; next < count && reqs[next].arrival <= now; next++) {
            trace_req_t *r = &reqs[next];
            r->arrival += t0;
            const dsla_request_params_t p = {.prompt_ids = ids + (next * 97) % WINDOW_OFFSETS,
                                             .n_prompt_ids = r->prompt,
                                             .max_tokens = r->output,
                                             .ignore_eos = true,
                                             .on_event = trace_event,
                                             .user = r};
            if (dsla_engine_submit(e, &p, NULL) != DSLA_OK) {
                r->refused = true;
                refused++;
                dsla_clear_error();
            }
        }
        if (dsla_engine_idle(e)) {
            if (next < count) g_skipped += reqs[next].arrival - now;
            continue;
        }
        bool progressed = false;
        s = dsla_engine_step(e, &progressed);
        if (s == DSLA_OK && progressed && n_steps < cap_steps &&
            dsla_engine_last_step(e, &recs[n_steps]))
            n_steps++;
    }
    const double elapsed = trace_now(NULL) - t0;
    if (s == DSLA_OK) {
        double *a = malloc((size_t)(count + n_steps + 1) * sizeof *a);
        double *b = malloc((size_t)(count + 1) * sizeof *b);
        int done = 0, late = 0;
        long out_tokens = 0;
        double last_done = t0;
        /* Sustained rate: completions in the second half of the arrival window (the offered rate
         * below saturation, the capacity above it, without the drain after the last arrival). */
        const double half = t0 + 0.5 * o->duration, end = t0 + o->duration;
        for (int i = 0; i < count; i++) {
            const trace_req_t *r = &reqs[i];
            if (r->refused || r->tokens == 0) continue;
            a[done] = r->first - r->arrival;
            b[done] = r->tokens > 1 ? (r->done - r->first) / (r->tokens - 1) : 0.0;
            out_tokens += r->tokens;
            if (r->done > last_done) last_done = r->done;
            late += r->done >= half && r->done < end;
            done++;
        }
        const double ttft50 = pct(a, done, 0.5), ttft90 = pct(a, done, 0.9),
                     ttft99 = pct(a, done, 0.99);
        const double tpot50 = pct(b, done, 0.5), tpot90 = pct(b, done, 0.9),
                     tpot99 = pct(b, done, 0.99);
        const dsla_cuda_model_stats_t st1 = dsla_cuda_model_stats(m);
        dsla_engine_metrics_t m1;
        dsla_engine_metrics(e, &m1);
        printf("{\"what\":\"serve_trace\",\"device\":\"%s\",\"run\":\"%s\",\"rate\":%.2f,"
               "\"duration_s\":%.1f,\"prompt_mean\":%.0f,\"prompt_sigma\":%.2f,"
               "\"output_mean\":%.0f,\"output_sigma\":%.2f,\"max_running\":%d,"
               "\"prefill_chunk\":%d,\"step_tokens\":%d,\"decode_runs\":%s,\"vocab\":%d,"
               "\"copy_gbps\":%.1f,\"bf16_tflops\":%.1f,\"requests\":%d,\"completed\":%d,"
               "\"refused\":%d,\"elapsed_s\":%.2f,\"offered_req_per_s\":%.2f,"
               "\"sustained_req_per_s\":%.2f,\"served_req_per_s\":%.2f,"
               "\"output_tokens_per_s\":%.1f,\"ttft_ms\":{\"p50\":%.1f,\"p90\":%.1f,"
               "\"p99\":%.1f},\"tpot_ms\":{\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f},"
               "\"peak_running\":%d,\"steps\":%llu,\"graph_replays\":%ld,"
               "\"graph_captures\":%ld,\"preemptions\":%llu}\n",
               device, label, o->rate, o->duration, o->prompt_mean, o->prompt_sigma, o->output_mean,
               o->output_sigma, o->max_running, o->prefill_chunk, o->step_tokens,
               o->decode_runs ? "true" : "false", c->vocab_size, rates.copy_bytes_per_s / 1e9,
               rates.matrix_flops_per_s / 1e12, count, done, refused, elapsed, count / o->duration,
               late / (0.5 * o->duration), done / (last_done - t0), out_tokens / (last_done - t0),
               1e3 * ttft50, 1e3 * ttft90, 1e3 * ttft99, 1e3 * tpot50, 1e3 * tpot90, 1e3 * tpot99,
               m1.peak_running, (unsigned long long)(m1.steps - m0.steps),
               st1.graph_replays - st0.graph_replays, st1.graph_captures - st0.graph_captures,
               (unsigned long long)(m1.preemptions - m0.preemptions));
        for (int keep = 0; keep < 3; keep++)
            print_steps(device, label, recs, n_steps, keep, a);
        fflush(stdout);
        free(a);
        free(b);
    }
    dsla_engine_destroy(&e);
    dsla_serve_backend_destroy(&be);
    free(reqs);
    free(recs);
    free(ids);
    return s;
}

int dsla_cmd_bench_cuda(int argc, char **argv) {
    const char *device_arg = "cuda", *random_model = NULL, *ratios_arg = "0,25,50,75";
    long context = 8192, requests = 16, output = 128, max_seqs = 128, margin_mib = 2048, seed = 7;
    double rate = 0, duration = 30, prompt_mean = 1200, prompt_sigma = 0.7, output_mean = 200,
           output_sigma = 0.6;
    long vocab = 32000, prefill_chunk = 2048, step_tokens = 0, step_timing = 2, phase_every = 8,
         decode_runs = 1;
    const char *label = "trace";
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
        {"seed", DSLA_ARG_INT, "weights (default 7)", 0, 9.2e18, &seed},
        {"rate", DSLA_ARG_FLOAT,
         "serving trace instead: Poisson arrivals of R requests/s (chat-like lengths)", 0, 1e6,
         &rate},
        {"duration", DSLA_ARG_FLOAT, "trace: seconds of arrivals (default 30)", 0.1, 1e5,
         &duration},
        {"prompt-mean", DSLA_ARG_FLOAT, "trace: lognormal prompt tokens, mean (default 1200)", 1,
         1e6, &prompt_mean},
        {"prompt-sigma", DSLA_ARG_FLOAT, "trace: its sigma (default 0.7)", 0, 5, &prompt_sigma},
        {"output-mean", DSLA_ARG_FLOAT, "trace: lognormal output tokens, mean (default 200)", 1,
         1e6, &output_mean},
        {"output-sigma", DSLA_ARG_FLOAT, "trace: its sigma (default 0.6)", 0, 5, &output_sigma},
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
        {"label", DSLA_ARG_STRING, "trace: a name for the run in the JSON", 0, 0, &label},
    };
    int rc =
        dsla_args_parse_options(argc, argv, specs, (int)(sizeof specs / sizeof specs[0]), usage);
    if (rc >= 0) return rc;
    rc = 0; /* parsed: from here on, the exit status of the run */
    if (!random_model || strcmp(random_model, "7b") != 0) {
        fprintf(stderr, "dsla bench: --device cuda needs --random-model 7b (the only shape)\n");
        return 2;
    }
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
    dsla_model_config_t cfg = {0};
    cfg.hidden_size = 4096, cfg.num_layers = MODEL_LAYERS, cfg.num_heads = 32;
    cfg.num_kv_heads = 32, cfg.head_dim = 128, cfg.intermediate_size = 11008;
    cfg.vocab_size = 32000, cfg.max_position_embeddings = 32768, cfg.rms_norm_eps = 1e-5f;
    cfg.rope_theta = 10000.0f, cfg.bos_token_id = 1;
    cfg.vocab_size = (int)vocab;
    if (step_tokens == 0) step_tokens = prefill_chunk + max_seqs;
    const int batch_tokens = rate > 0 ? (int)step_tokens : (int)(context + max_seqs);
    const dsla_cuda_model_opts_t mo = {DSLA_DTYPE_BF16, batch_tokens, (int)max_seqs,
                                       (int)max_seqs,   (int)context, true};
    ratio_row_t rows[MAX_RATIOS];
    memset(rows, 0, sizeof rows);
    const double t0 = now_s();
    dsla_status_t s = dsla_cuda_device_name(device, sizeof device);
    if (s == DSLA_OK) s = dsla_cuda_stream_create(&stream);
    if (s == DSLA_OK) s = dsla_cuda_model_create_random(&b.m, &cfg, (uint64_t)seed, &mo, stream);
    if (s == DSLA_OK) {
        b.cfg = dsla_cuda_model_config(b.m);
        size_t free_b = 0, total = 0;
        s = dsla_cuda_mem_info(&free_b, &total);
        printf("{\"what\":\"serve_model\",\"device\":\"%s\",\"device_gib\":%.1f,"
               "\"weight_bytes\":%zu,\"kv_block_bytes\":%zu,\"state_slot_bytes\":%zu,"
               "\"dsla_on_gpu\":%s,\"init_s\":%.1f}\n",
               device, (double)total / (1u << 30), dsla_cuda_model_weight_bytes(b.m),
               dsla_cuda_kv_block_bytes(b.m, DSLA_DTYPE_BF16), dsla_serve_cuda_slot_bytes(b.cfg),
               dsla_cuda_model_dsla_supported(b.m) ? "true" : "false", now_s() - t0);
    }
    if (rate > 0) {
        const trace_opts_t to = {rate,
                                 duration,
                                 prompt_mean,
                                 prompt_sigma,
                                 output_mean,
                                 output_sigma,
                                 (int)max_seqs,
                                 (int)prefill_chunk,
                                 (int)step_tokens,
                                 (int)context,
                                 (int)step_timing,
                                 (int)phase_every,
                                 decode_runs != 0,
                                 (uint64_t)seed};
        if (s == DSLA_OK) s = run_trace(b.m, &to, device, label);
        if (s != DSLA_OK) fprintf(stderr, "dsla bench: %s\n", dsla_last_error());
        dsla_cuda_model_destroy(&b.m);
        if (stream) dsla_cuda_stream_destroy(&stream);
        return s == DSLA_OK ? 0 : 1;
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

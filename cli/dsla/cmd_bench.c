/* dsla bench: an offline load generator against the serving engine, in process.
 *
 * Requests (random token ids, or windows of a text file) arrive as a workload says
 * (runtime/serve/workload.h: a CSV trace with --trace, or Poisson/gamma arrivals at --rate with
 * fixed, uniform or lognormal lengths; on a virtual clock that skips idle time, or the wall clock)
 * or in a closed loop of --concurrency; the engine runs them with continuous batching, optionally
 * over a hybrid plan. Prints throughput, goodput under TTFT/TPOT targets, latency percentiles,
 * peak concurrency and memory as a table, then one JSON line; --timeline writes the per-request
 * CSV (runtime/serve/load_report.h), as dsla-loadgen does over the network. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "commands.h"
#include "runtime/distill/data.h"
#include "runtime/distill/distill.h"
#include "runtime/model/dsla_layer.h"
#include "runtime/serve/engine.h"
#include "runtime/serve/load_report.h"
#include "runtime/serve/workload.h"

static const char usage[] =
    "usage: dsla bench [--model DIR] [options]\n\n"
    "Drives the serving engine in process with synthetic requests and reports throughput and\n"
    "latency. Lengths are N or LO:HI (uniform), or with --rate lognormal:MEAN:SIGMA[:MIN:MAX].\n"
    "--rate R: Poisson arrivals of R requests/s (gamma with --cv), --trace FILE: a CSV trace\n"
    "(timestamp,prompt_tokens,output_tokens), both on a virtual clock unless --wall-clock;\n"
    "otherwise a closed loop of --concurrency requests.\n"
    "--device cuda runs the GPU mode (its own options: dsla bench --device cuda --help).";

/* Default model: the shared test model beside the repository. */
static const char DEFAULT_MODEL[] = "../shared/models/stories260K-hf";
/* Default closed-loop concurrency: enough to batch, small enough for a laptop CPU. */
enum { DEFAULT_CONCURRENCY = 8, DEFAULT_REQUESTS = 64, MAX_LAYERS = 512 };

typedef struct {
    int lo, hi;
} range_t;

static int parse_range(const char *s, const char *name, range_t *r) {
    char *end;
    long lo = strtol(s, &end, 10), hi = lo;
    if (*end == ':') hi = strtol(end + 1, &end, 10);
    if (*end || lo < 1 || hi < lo || hi > 1 << 20) {
        fprintf(stderr, "dsla bench: --%s '%s' must be N or LO:HI with 1 <= LO <= HI\n", name, s);
        return 2;
    }
    r->lo = (int)lo;
    r->hi = (int)hi;
    return 0;
}

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int draw(uint64_t *s, range_t r) {
    return r.lo + (int)(rng_next(s) % (uint64_t)(r.hi - r.lo + 1));
}

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The virtual clock: wall time plus the idle gaps the bench skipped instead of sleeping. */
typedef struct {
    double skipped;
    bool wall;
} bench_clock_t;

static double bench_now(void *user) {
    return wall_seconds() + ((bench_clock_t *)user)->skipped;
}

typedef struct {
    double submit, first, done, last, max_gap;
    int tokens, asked, prompt;
    bool finished;
    bool rejected;
    dsla_status_t submit_status;
    bool expired; /* ended RESOURCE_EXHAUSTED after --max-queue-wait-ms in the queue */
    int *in_flight;
} record_t;

static bench_clock_t *g_clock; /* the callbacks' clock: one bench per process */

static int record_event(void *user, const dsla_stream_event_t *ev) {
    record_t *r = user;
    double now = bench_now(g_clock);
    if (ev->token >= 0) {
        if (r->tokens == 0)
            r->first = now;
        else if (now - r->last > r->max_gap)
            r->max_gap = now - r->last;
        r->last = now;
        r->tokens++;
    }
    if (ev->finished) {
        r->done = now;
        r->finished = true;
        r->expired = ev->status != DSLA_OK;
        (*r->in_flight)--;
    }
    return 0;
}

/* The engine's step accounting (runtime/serve/step_stats.h) as one JSON line: the CPU backend
 * splits no device phases, so the forward call, sampling and scheduling. */
static void print_step_totals(const dsla_engine_metrics_t *m) {
    const dsla_step_totals_t *t = &m->step_totals;
    const double n = t->steps ? (double)t->steps : 1.0;
    printf("{\"what\":\"serve_bench_steps\",\"steps\":%llu,\"prefill_tokens\":%llu,"
           "\"decode_tokens\":%llu,\"step_ms\":{\"mean\":%.4f,\"p50\":%.4f,\"p99\":%.4f},"
           "\"kv_read_mib_mean\":%.4f,\"phase_ms_mean\":{",
           (unsigned long long)t->steps, (unsigned long long)t->prefill_tokens,
           (unsigned long long)t->decode_tokens, 1e3 * t->step_seconds / n,
           1e3 * dsla_histogram_quantile(&m->step_time, 0.5),
           1e3 * dsla_histogram_quantile(&m->step_time, 0.99), t->kv_read_bytes / n / (1 << 20));
    for (int p = 0; p < DSLA_STEP_PHASES; p++)
        printf("%s\"%s\":%.4f", p ? "," : "", dsla_step_phase_name(p),
               1e3 * t->phase_seconds[p] / n);
    printf("}}\n");
}

/* Installs the plan: layer versions from a distill output directory, or the first n layers of
 * order initialised from the teacher. */
static dsla_status_t build_plan(dsla_engine_t *e, dsla_model_t *model, const char *dsla_dir,
                                const int *order, int n) {
    const dsla_model_config_t *cfg = dsla_model_config(model);
    dsla_plan_t *plan = NULL;
    DSLA_TRY(dsla_plan_create(&plan, cfg->num_layers));
    dsla_status_t s = DSLA_OK;
    int installed = 0;
    for (int l = 0; l < cfg->num_layers && s == DSLA_OK; l++) {
        dsla_dsla_layer_t *w = NULL;
        if (dsla_dir) {
            char path[4096];
            snprintf(path, sizeof path, "%s/layer-%d.safetensors", dsla_dir, l);
            FILE *f = fopen(path, "rb");
            if (!f) continue;
            fclose(f);
            s = dsla_dsla_layer_load(&w, path, cfg, NULL);
        } else {
            bool wanted = false;
            for (int i = 0; i < n; i++)
                wanted = wanted || order[i] == l;
            if (!wanted) continue;
            s = dsla_dsla_layer_create(&w, cfg, l);
            if (s == DSLA_OK)
                s = dsla_dsla_layer_init_from_teacher(w, model, l, 1234 + (uint64_t)l);
        }
        dsla_layer_ref_t *ref = NULL;
        if (s == DSLA_OK) s = dsla_layer_ref_create(&ref, &w);
        if (s == DSLA_OK) s = dsla_plan_set_layer(plan, l, ref);
        dsla_layer_ref_release(&ref);
        dsla_dsla_layer_destroy(&w);
        installed += s == DSLA_OK;
    }
    if (s == DSLA_OK && dsla_dir && installed == 0)
        s = dsla_error(DSLA_ERR_NOT_FOUND, "%s holds no layer-<l>.safetensors", dsla_dir);
    if (s == DSLA_OK) s = dsla_engine_set_plan(e, plan);
    dsla_plan_release(&plan);
    return s;
}

/* Prompt ids for request i: random ids after BOS, or a window of the text corpus. */
static void make_prompt(int32_t *ids, int n, const dsla_corpus_t *corpus, int vocab, int bos,
                        uint64_t *rng) {
    if (corpus) {
        const int32_t *seq =
            dsla_corpus_sequence(corpus, (int)(rng_next(rng) % (uint64_t)corpus->num_sequences));
        memcpy(ids, seq, (size_t)n * sizeof *ids);
        return;
    }
    for (int i = 0; i < n; i++)
        ids[i] = i == 0 && bos >= 0 ? bos : (int32_t)(3 + rng_next(rng) % (uint64_t)(vocab - 3));
}

/* Whether argv asks for the GPU mode (bench_cuda.c), which has options of its own. */
static bool wants_cuda(int argc, char **argv) {
    for (int i = 2; i < argc; i++)
        if ((strcmp(argv[i], "--device") == 0 && i + 1 < argc &&
             strcmp(argv[i + 1], "cuda") == 0) ||
            strcmp(argv[i], "--device=cuda") == 0)
            return true;
    return false;
}

int dsla_cmd_bench(int argc, char **argv) {
    if (wants_cuda(argc, argv)) return dsla_cmd_bench_cuda(argc, argv);
    const char *model_dir = DEFAULT_MODEL, *prompt_lens = NULL, *output_lens = NULL;
    const char *prompt_file = NULL, *dsla_dir = NULL, *order_arg = NULL;
    long requests = 0, concurrency = 0, seed = 1, dsla_layers = 0;
    long max_running = 0, step_tokens = 0, prefill_chunk = 0, kv_blocks = 0, max_queued = 0;
    double rate = 0.0, cv = 1.0, rate_scale = 1.0, duration = 0.0;
    double slo_ttft_ms = 1000, slo_tpot_ms = 100;
    const char *trace = NULL, *preset = NULL, *timeline = NULL;
    long max_queued_tokens = 0, max_queue_wait_ms = 0;
    bool wall_clock = false, no_batch_invariance = false;
    const char *device = "cpu";
    const dsla_arg_spec_t specs[] = {
        {"device", DSLA_ARG_STRING,
         "cpu (default) or cuda (a 7B-shaped random model: dsla bench --device cuda --help)", 0, 0,
         &device},
        {"model", DSLA_ARG_STRING, "model directory (default ../shared/models/stories260K-hf)", 0,
         0, &model_dir},
        {"requests", DSLA_ARG_INT, "requests to run (default 64)", 1, 1e7, &requests},
        {"prompt-len", DSLA_ARG_STRING, "prompt tokens: N or LO:HI (default 32)", 0, 0,
         &prompt_lens},
        {"output-len", DSLA_ARG_STRING, "output tokens: N or LO:HI (default 32)", 0, 0,
         &output_lens},
        {"prompt-file", DSLA_ARG_STRING, "take prompts from this text file (default: random ids)",
         0, 0, &prompt_file},
        {"rate", DSLA_ARG_FLOAT, "Poisson arrivals, requests per second (default: closed loop)", 0,
         1e9, &rate},
        {"cv", DSLA_ARG_FLOAT, "with --rate: inter-arrival CV (1 Poisson, else gamma)", 0.01, 100,
         &cv},
        {"trace", DSLA_ARG_STRING, "arrivals and lengths from a CSV trace", 0, 0, &trace},
        {"preset", DSLA_ARG_STRING,
         "with --rate: lengths of chat (1.2K/0.2K) or long-doc (8K/0.3K)", 0, 0, &preset},
        {"rate-scale", DSLA_ARG_FLOAT, "multiply the arrival rate of --rate or --trace", 1e-6, 1e6,
         &rate_scale},
        {"duration", DSLA_ARG_FLOAT, "with --rate or --trace: seconds of arrivals", 0, 1e7,
         &duration},
        {"slo-ttft-ms", DSLA_ARG_FLOAT, "goodput: TTFT target (default 1000)", 0, 1e9,
         &slo_ttft_ms},
        {"slo-tpot-ms", DSLA_ARG_FLOAT, "goodput: time-per-output-token target (default 100)", 0,
         1e9, &slo_tpot_ms},
        {"timeline", DSLA_ARG_STRING, "write the per-request CSV here (bench/plot_latency.py)", 0,
         0, &timeline},
        {"wall-clock", DSLA_ARG_FLAG,
         "with --rate: sleep until arrivals instead of skipping idle "
         "time",
         0, 0, &wall_clock},
        {"concurrency", DSLA_ARG_INT, "closed loop: requests in flight (default 8)", 1, 1e6,
         &concurrency},
        {"dsla-layers", DSLA_ARG_INT,
         "run the first N layers of the order as DSLA, initialised "
         "from the teacher",
         0, MAX_LAYERS, &dsla_layers},
        {"order", DSLA_ARG_STRING,
         "conversion order, comma-separated (default: attention entropy "
         "on --prompt-file, else 0,1,2,...)",
         0, 0, &order_arg},
        {"dsla-dir", DSLA_ARG_STRING, "load layer versions from a dsla distill output directory", 0,
         0, &dsla_dir},
        {"max-running", DSLA_ARG_INT, "engine: sequences at once (default 64)", 1, 1e6,
         &max_running},
        {"step-tokens", DSLA_ARG_INT, "engine: tokens per step (default 512)", 1, 1e7,
         &step_tokens},
        {"prefill-chunk", DSLA_ARG_INT, "engine: prefill chunk (default 256)", 1, 1e7,
         &prefill_chunk},
        {"kv-blocks", DSLA_ARG_INT, "engine: KV pool blocks (default: engine's)", 1, 1e9,
         &kv_blocks},
        {"max-queued", DSLA_ARG_INT, "engine: queue bound (default: --requests)", 1, 1e9,
         &max_queued},
        {"max-queued-tokens", DSLA_ARG_INT,
         "engine: queued prompt tokens (default: --max-queued x longest prompt)", 1, 1e12,
         &max_queued_tokens},
        {"max-queue-wait-ms", DSLA_ARG_INT,
         "engine: a request not admitted after this long (engine clock) fails (default: none)", 0,
         1e9, &max_queue_wait_ms},
        {"no-batch-invariance", DSLA_ARG_FLAG,
         "engine: batched GEMMs (faster prefill, outputs may "
         "depend on load)",
         0, 0, &no_batch_invariance},
        {"seed", DSLA_ARG_INT, "lengths, prompts and arrivals (default 1)", 0, 9.2e18, &seed},
    };
    int rc =
        dsla_args_parse_options(argc, argv, specs, (int)(sizeof specs / sizeof specs[0]), usage);
    if (rc >= 0) return rc;
    if (strcmp(device, "cpu") != 0) {
        fprintf(stderr, "dsla bench: --device '%s' must be cpu or cuda\n", device);
        return 2;
    }
    /* Open loop: a workload (runtime/serve/workload.h) says when requests arrive. */
    const bool open_loop = rate > 0 || trace;
    range_t plen = {0, 0}, olen = {0, 0};
    if (!open_loop && (parse_range(prompt_lens ? prompt_lens : "32", "prompt-len", &plen) ||
                       parse_range(output_lens ? output_lens : "32", "output-len", &olen)))
        return 2;
    if (open_loop && concurrency > 0) {
        fprintf(stderr, "dsla bench: --%s and --concurrency exclude each other\n",
                trace ? "trace" : "rate");
        return 2;
    }
    if (trace && rate > 0) {
        fprintf(stderr, "dsla bench: --trace and --rate exclude each other (--rate-scale scales "
                        "a trace)\n");
        return 2;
    }
    if (!open_loop && (preset || duration > 0 || cv != 1.0 || rate_scale != 1.0)) {
        fprintf(stderr, "dsla bench: --preset, --cv, --duration and --rate-scale need --rate or "
                        "--trace\n");
        return 2;
    }
    if (!open_loop && concurrency == 0) concurrency = DEFAULT_CONCURRENCY;
    if (!open_loop && requests == 0) requests = DEFAULT_REQUESTS;
    int order[MAX_LAYERS], n_order = 0;
    for (const char *p = order_arg; p && *p && n_order < MAX_LAYERS;) {
        char *end;
        order[n_order++] = (int)strtol(p, &end, 10);
        if (end == p) {
            fprintf(stderr, "dsla bench: --order '%s' must be comma-separated layers\n", order_arg);
            return 2;
        }
        p = *end == ',' ? end + 1 : end;
    }

    dsla_model_t *model = NULL;
    dsla_tokenizer_t *tok = NULL;
    dsla_engine_t *engine = NULL;
    dsla_corpus_t corpus = {0};
    record_t *recs = NULL;
    int32_t *prompt = NULL;
    dsla_workload_t work = {0};
    dsla_load_record_t *lrecs = NULL;
    char workload_desc[768] = "";
    int fitted = 0;
    dsla_status_t s = dsla_model_load(&model, model_dir);
    if (s == DSLA_OK) s = dsla_tokenizer_load_dir(&tok, model_dir);
    if (s != DSLA_OK) goto fail;
    const dsla_model_config_t *mc = dsla_model_config(model);
    if (open_loop) {
        const dsla_workload_options_t wo = {
            .trace = trace,
            .preset = preset,
            .prompt_len = prompt_lens ? prompt_lens
                          : preset    ? NULL
                                      : "32",
            .output_len = output_lens ? output_lens
                          : preset    ? NULL
                                      : "32",
            .rate = rate,
            .cv = cv,
            .scale = rate_scale,
            .duration_s = duration,
            .max_requests = requests,
            .seed = (uint64_t)seed,
            .max_total = mc->max_position_embeddings, /* the engine refuses what does not fit */
        };
        s = dsla_workload_build(&wo, &work, workload_desc, sizeof workload_desc, &fitted);
        if (s != DSLA_OK) goto fail;
        requests = work.n;
        plen = (range_t){work.requests[0].prompt_tokens, work.requests[0].prompt_tokens};
        olen = (range_t){work.requests[0].output_tokens, work.requests[0].output_tokens};
        for (int i = 1; i < work.n; i++) {
            const dsla_workload_request_t *q = &work.requests[i];
            plen.lo = q->prompt_tokens < plen.lo ? q->prompt_tokens : plen.lo;
            plen.hi = q->prompt_tokens > plen.hi ? q->prompt_tokens : plen.hi;
            olen.lo = q->output_tokens < olen.lo ? q->output_tokens : olen.lo;
            olen.hi = q->output_tokens > olen.hi ? q->output_tokens : olen.hi;
        }
        if (fitted)
            fprintf(stderr, "dsla bench: %d requests cut to the model's context of %d tokens\n",
                    fitted, mc->max_position_embeddings);
    }
    if (prompt_file) {
        s = dsla_corpus_load(&corpus, tok, &prompt_file, 1, plen.hi, 0);
        if (s != DSLA_OK) goto fail;
    }
    if (dsla_layers > mc->num_layers) dsla_layers = mc->num_layers;
    if (dsla_layers > 0 && n_order == 0) {
        if (prompt_file) {
            float entropy[MAX_LAYERS];
            int n_cal = corpus.num_sequences < 16 ? corpus.num_sequences : 16;
            s = dsla_distill_entropy_order(model, &corpus, n_cal, entropy, order);
            if (s != DSLA_OK) goto fail;
        } else {
            for (int l = 0; l < mc->num_layers; l++)
                order[l] = l;
        }
        n_order = mc->num_layers;
    }
    if (dsla_layers > n_order) dsla_layers = n_order;

    bench_clock_t clk = {.wall = wall_clock};
    g_clock = &clk;
    dsla_engine_config_t cfg = dsla_engine_config_default();
    if (max_running) cfg.max_running = (int)max_running;
    if (step_tokens) cfg.step_tokens = (int)step_tokens;
    if (prefill_chunk) cfg.prefill_chunk = (int)prefill_chunk;
    if (cfg.prefill_chunk > cfg.step_tokens) cfg.prefill_chunk = cfg.step_tokens;
    if (kv_blocks) cfg.kv_blocks = (int)kv_blocks;
    cfg.max_queued = max_queued ? (int)max_queued : (int)requests;
    cfg.max_queued_tokens = max_queued_tokens ? max_queued_tokens : (long)cfg.max_queued * plen.hi;
    cfg.max_queue_wait_ms = max_queue_wait_ms;
    cfg.batch_invariant = !no_batch_invariance;
    cfg.clock = bench_now;
    cfg.clock_user = &clk;
    s = dsla_engine_create(&engine, model, tok, &cfg);
    if (s == DSLA_OK && (dsla_dir || dsla_layers > 0))
        s = build_plan(engine, model, dsla_dir, order, (int)dsla_layers);
    if (s != DSLA_OK) goto fail;

    recs = calloc((size_t)requests, sizeof *recs);
    prompt = malloc((size_t)plen.hi * sizeof *prompt);
    if (!recs || !prompt) {
        s = dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for %ld requests", requests);
        goto fail;
    }
    uint64_t rng = (uint64_t)seed;
    int in_flight = 0, next = 0, rejected = 0;
    const double start = bench_now(&clk);
    double next_arrival = open_loop ? start + work.requests[0].arrival_s : start;
    while (next < requests || in_flight > 0) {
        double now = bench_now(&clk);
        while (next < requests && (open_loop ? next_arrival <= now : in_flight < concurrency)) {
            const int i = next++;
            record_t *r = &recs[i];
            r->prompt = open_loop ? work.requests[i].prompt_tokens : draw(&rng, plen);
            r->asked = open_loop ? work.requests[i].output_tokens : draw(&rng, olen);
            make_prompt(prompt, r->prompt, prompt_file ? &corpus : NULL, mc->vocab_size,
                        dsla_tokenizer_bos_id(tok), &rng);
            r->in_flight = &in_flight;
            r->submit = open_loop ? next_arrival : now;
            dsla_request_params_t p = {
                .prompt_ids = prompt,
                .n_prompt_ids = r->prompt,
                .max_tokens = r->asked,
                .ignore_eos = true,
                .on_event = record_event,
                .user = r,
            };
            r->submit_status = dsla_engine_submit(engine, &p, NULL);
            if (r->submit_status == DSLA_OK) {
                in_flight++;
            } else {
                r->rejected = true;
                rejected++;
            }
            if (open_loop && next < requests) next_arrival = start + work.requests[next].arrival_s;
        }
        if (dsla_engine_idle(engine)) {
            if (next >= requests) break;
            /* Nothing to run before the next arrival: skip to it, or sleep on the wall clock. */
            double gap = next_arrival - bench_now(&clk);
            if (gap > 0 && !clk.wall) clk.skipped += gap;
            if (gap > 0 && clk.wall) {
                struct timespec ts = {(time_t)gap, (long)((gap - (double)(time_t)gap) * 1e9)};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        s = dsla_engine_step(engine, NULL);
        if (s != DSLA_OK) goto fail;
    }
    double elapsed = bench_now(&clk) - start;
    /* Every request as the load report counts it (runtime/serve/load_report.h), the same sums
     * dsla-loadgen makes over the network. */
    lrecs = calloc((size_t)requests, sizeof *lrecs);
    if (!lrecs) {
        s = dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for %ld requests", requests);
        goto fail;
    }
    for (int i = 0; i < requests; i++) {
        const record_t *r = &recs[i];
        dsla_load_record_t *l = &lrecs[i];
        l->arrival_s = l->sent_s = r->submit - start;
        l->first_s = r->tokens > 0 ? r->first - start : -1;
        l->last_s = r->finished ? r->done - start : l->arrival_s;
        l->prompt_tokens = l->prompt_tokens_served = r->prompt;
        l->output_tokens_asked = r->asked;
        l->output_tokens = r->tokens;
        l->max_gap_s = r->max_gap;
        /* a request that timed out in the queue was refused, only later than at submit */
        l->outcome = r->expired                                        ? DSLA_LOAD_REFUSED
                     : r->finished                                     ? DSLA_LOAD_COMPLETED
                     : r->submit_status == DSLA_ERR_RESOURCE_EXHAUSTED ? DSLA_LOAD_REFUSED
                                                                       : DSLA_LOAD_ERROR;
        snprintf(l->detail, sizeof l->detail, "%s",
                 r->expired    ? "queue wait"
                 : r->finished ? "ok"
                               : dsla_status_name(r->submit_status));
    }
    const dsla_load_slo_t slo = {slo_ttft_ms * 1e-3, slo_tpot_ms * 1e-3};
    dsla_load_summary_t sum;
    s = dsla_load_summarize(lrecs, (int)requests, elapsed, &slo, &sum);
    if (s == DSLA_OK && timeline) s = dsla_load_write_timeline(timeline, lrecs, (int)requests);
    if (s != DSLA_OK) goto fail;
    const int n_ok = sum.completed;
    const long out_tokens = sum.output_tokens;
    dsla_engine_metrics_t m;
    dsla_engine_metrics(engine, &m);
    const long in_tokens = (long)m.prompt_tokens_computed;
    const double kv_block_mib = 2.0 * DSLA_KV_BLOCK_TOKENS * mc->num_kv_heads * mc->head_dim *
                                sizeof(float) / (1024.0 * 1024.0);
    const double slot_mib =
        2.0 * mc->num_heads * mc->head_dim * mc->head_dim * sizeof(float) / (1024.0 * 1024.0);
    const double peak_mib =
        m.peak_kv_blocks_used * kv_block_mib + m.peak_state_slots_used * slot_mib;
    char mode[900];
    if (open_loop)
        snprintf(mode, sizeof mode, "%s (%s clock)", workload_desc,
                 wall_clock ? "wall" : "virtual");
    else
        snprintf(mode, sizeof mode, "closed loop x%ld", concurrency);
    printf("dsla bench: %s, %s, %ld requests, prompt %d..%d, output %d..%d, plan %llu (%d DSLA)\n",
           model_dir, mode, requests, plen.lo, plen.hi, olen.lo, olen.hi,
           (unsigned long long)m.plan_id, dsla_plan_num_dsla(dsla_engine_plan(engine)));
    char goodput[64];
    snprintf(goodput, sizeof goodput, "goodput req/s (%.0f/%.0f ms)", slo_ttft_ms, slo_tpot_ms);
    printf("  %-26s %12s\n", "metric", "value");
    printf("  %-26s %12d\n", "completed", n_ok);
    printf("  %-26s %12d (%d refused, %d errors)\n", "rejected", rejected, sum.refused, sum.errors);
    printf("  %-26s %12.3f\n", "elapsed s", elapsed);
    printf("  %-26s %12.1f\n", "requests/s", n_ok / elapsed);
    printf("  %-26s %12.1f\n", "output tokens/s", out_tokens / elapsed);
    printf("  %-26s %12.1f\n", "total tokens/s", (out_tokens + in_tokens) / elapsed);
    printf("  %-26s %12.2f (%d met both)\n", goodput, sum.goodput_rps, sum.met_slo);
    printf("  %-26s %12.2f %8.2f %8.2f\n", "TTFT ms p50 p90 p99", sum.ttft_ms.p50, sum.ttft_ms.p90,
           sum.ttft_ms.p99);
    printf("  %-26s %12.3f %8.3f %8.3f\n", "TPOT ms p50 p90 p99", sum.tpot_ms.p50, sum.tpot_ms.p90,
           sum.tpot_ms.p99);
    printf("  %-26s %12.2f %8.2f %8.2f\n", "latency ms p50 p90 p99", sum.e2e_ms.p50, sum.e2e_ms.p90,
           sum.e2e_ms.p99);
    printf("  %-26s %12d\n", "peak running", m.peak_running);
    printf("  %-26s %12d / %d\n", "peak KV blocks", m.peak_kv_blocks_used, m.kv_blocks_total);
    printf("  %-26s %12d / %d\n", "peak state slots", m.peak_state_slots_used, m.state_slots_total);
    printf("  %-26s %12.2f\n", "peak KV+state MiB", peak_mib);
    printf("  %-26s %12llu\n", "preemptions", (unsigned long long)m.preemptions);
    printf("{\"what\":\"serve_bench\",\"model\":\"%s\",\"mode\":\"%s\",\"requests\":%ld,"
           "\"completed\":%d,\"rejected\":%d,\"refused\":%d,\"errors\":%d,\"dsla_layers\":%ld,"
           "\"elapsed_s\":%.6f,\"requests_per_s\":%.3f,\"output_tokens_per_s\":%.3f,"
           "\"total_tokens_per_s\":%.3f,\"slo_ttft_ms\":%.1f,\"slo_tpot_ms\":%.1f,"
           "\"slo_met\":%d,\"goodput_rps\":%.3f,"
           "\"ttft_ms\":{\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f},"
           "\"tpot_ms\":{\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f},"
           "\"e2e_ms\":{\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f},\"peak_running\":%d,"
           "\"peak_kv_blocks\":%d,\"kv_blocks_total\":%d,\"peak_state_slots\":%d,"
           "\"peak_memory_mib\":%.4f,\"preemptions\":%llu}\n",
           model_dir, mode, requests, n_ok, rejected, sum.refused, sum.errors, dsla_layers, elapsed,
           n_ok / elapsed, out_tokens / elapsed, (out_tokens + in_tokens) / elapsed, slo_ttft_ms,
           slo_tpot_ms, sum.met_slo, sum.goodput_rps, sum.ttft_ms.p50, sum.ttft_ms.p90,
           sum.ttft_ms.p99, sum.tpot_ms.p50, sum.tpot_ms.p90, sum.tpot_ms.p99, sum.e2e_ms.p50,
           sum.e2e_ms.p90, sum.e2e_ms.p99, m.peak_running, m.peak_kv_blocks_used, m.kv_blocks_total,
           m.peak_state_slots_used, peak_mib, (unsigned long long)m.preemptions);
    print_step_totals(&m);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "dsla bench: %s\n", dsla_last_error());
    rc = s == DSLA_ERR_INVALID_ARGUMENT ? 2 : 1;
done:
    free(recs);
    free(lrecs);
    free(prompt);
    dsla_workload_free(&work);
    dsla_corpus_free(&corpus);
    dsla_engine_destroy(&engine);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&model);
    return rc;
}

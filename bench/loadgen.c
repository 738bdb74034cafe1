/* dsla-loadgen: an open-loop load generator for a running dsla-serve, over its OpenAI-compatible
 * HTTP API (streamed completions, docs/http.md) or over the client stub (proto/dsla_client.h).
 *
 * The workload (runtime/serve/workload.h: a CSV trace, or Poisson/gamma arrivals with fixed,
 * uniform or lognormal lengths and the chat and long-doc presets) is built and every prompt is
 * made before the clock starts; a dispatcher then hands each request to a pool of worker threads
 * at its arrival time, whatever the server's state (open loop: a slow server sees the same
 * arrivals, and latency is counted from the scheduled arrival, so a generator that falls behind
 * shows as latency and as send lag, never as a lighter load). Each worker holds one request at a
 * time: a fresh HTTP connection, or its own client stub. Every request asks for ignore_eos, so it
 * runs to its output length; one that stops early is counted (early stops).
 *
 * Prompts have an exact token count when --tokenizer names the served model's directory: they are
 * made of words that are one token each in that vocabulary, checked by encoding the whole prompt
 * (BOS included, as the server counts it); over the stub they travel as those token ids. Without
 * a tokenizer they are common English words, about one token each, and the report says so.
 *
 * Prints one JSON line on stdout (runtime/serve/load_report.h) and a table on stderr; --timeline
 * writes the per-request CSV that bench/plot_latency.py draws. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <zmq.h>

#include "bench/loadgen_http.h"
#include "cli/dsla/args.h"
#include "proto/dsla_client.h"
#include "runtime/model/tokenizer.h"
#include "runtime/core/clock.h"
#include "runtime/serve/load_report.h"
#include "runtime/serve/workload.h"

static const char usage[] =
    "usage: dsla-loadgen [--url http://HOST:PORT | --endpoint tcp://HOST:PORT] [options]\n\n"
    "Sends a workload to a running dsla-serve at its arrival times (open loop) and reports\n"
    "goodput under TTFT and TPOT targets, throughput, TTFT/TPOT/E2E percentiles, refusals and\n"
    "errors: one JSON line on stdout, a table on stderr. The workload is a CSV trace\n"
    "(--trace: timestamp,prompt_tokens,output_tokens) or synthetic (--rate, --cv, --preset,\n"
    "--prompt-len, --output-len). Lengths are N, LO:HI or lognormal:MEAN:SIGMA[:MIN:MAX].\n"
    "--tokenizer MODEL_DIR makes prompts of exactly the asked token count.";

/* Words that are one token in most Llama vocabularies; the fallback without --tokenizer. */
static const char *const common_words[] = {
    "the",  "and",  "was",   "to",   "a",    "he",   "she",  "it",   "they", "with", "in",
    "on",   "of",   "his",   "her",  "said", "day",  "big",  "had",  "for",  "you",  "not",
    "at",   "but",  "one",   "all",  "saw",  "went", "time", "very", "tree", "sun",  "dog",
    "cat",  "ball", "play",  "home", "mom",  "dad",  "girl", "boy",  "box",  "red",  "blue",
    "park", "toy",  "happy", "sad",  "look", "help", "run",  "jump", "fun",  "good", "new",
};
enum {
    N_COMMON = sizeof common_words / sizeof common_words[0],
    WORD_MAX = 24,
    /* A vocabulary with fewer single-token words than this falls back to common_words. */
    MIN_VOCAB_WORDS = 16,
    /* Attempts to land a prompt on its token count by adding or removing words. */
    FIT_ROUNDS = 6,
    DEFAULT_CONNECTIONS = 256,
};

typedef enum { TRANSPORT_HTTP, TRANSPORT_STUB } transport_t;

/* ---- prompts ------------------------------------------------------------------------------- */

typedef struct {
    char (*words)[WORD_MAX + 1];
    int n_words;
    bool lead_space; /* byte-level vocabularies mark the space in the token ("Ġword") */
    const dsla_tokenizer_t *tok;
    bool add_bos;
} prompter_t;

/* A vocabulary entry "▁word" or "Ġword" (lower-case ASCII letters) that encodes alone to itself. */
static bool single_token_word(const dsla_tokenizer_t *tok, int32_t id, char *word, bool *lead) {
    size_t len = 0;
    const char *s = dsla_tokenizer_id_to_token(tok, id, &len);
    size_t skip = 0;
    if (len > 3 && memcmp(s, "\xe2\x96\x81", 3) == 0)
        skip = 3, *lead = false;
    else if (len > 2 && memcmp(s, "\xc4\xa0", 2) == 0)
        skip = 2, *lead = true;
    if (!skip || len - skip < 2 || len - skip > WORD_MAX) return false;
    for (size_t i = skip; i < len; i++)
        if (s[i] < 'a' || s[i] > 'z') return false;
    char text[WORD_MAX + 2];
    const int n =
        snprintf(text, sizeof text, "%s%.*s", *lead ? " " : "", (int)(len - skip), s + skip);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    const bool one = dsla_tokenizer_encode(tok, text, (size_t)n, false, &ids, &n_ids) == DSLA_OK &&
                     n_ids == 1 && ids[0] == id;
    free(ids);
    if (one) snprintf(word, WORD_MAX + 1, "%.*s", (int)(len - skip), s + skip);
    return one;
}

static dsla_status_t prompter_init(prompter_t *p, const dsla_tokenizer_t *tok) {
    memset(p, 0, sizeof *p);
    p->tok = tok;
    const int vocab = tok ? dsla_tokenizer_vocab_size(tok) : 0;
    p->words = malloc((size_t)(vocab > N_COMMON ? vocab : N_COMMON) * sizeof *p->words);
    if (!p->words) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for the vocabulary");
    for (int32_t id = 0; id < vocab; id++) {
        bool lead = false;
        if (single_token_word(tok, id, p->words[p->n_words], &lead)) {
            p->lead_space = lead;
            p->n_words++;
        }
    }
    if (p->n_words < MIN_VOCAB_WORDS) {
        p->n_words = N_COMMON;
        for (int i = 0; i < N_COMMON; i++)
            snprintf(p->words[i], WORD_MAX + 1, "%s", common_words[i]);
    }
    p->add_bos = tok ? dsla_tokenizer_add_bos_default(tok) : true;
    return DSLA_OK;
}

static uint64_t mix(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* n words chosen by seed (the same seed gives the same prefix, so a retry only adds or drops
 * words at the end). */
static char *join_words(const prompter_t *p, int n, uint64_t seed) {
    char *text = malloc((size_t)n * (WORD_MAX + 1) + 2), *q = text;
    if (!text) return NULL;
    for (int i = 0; i < n; i++) {
        const char *w =
            p->words[mix(seed + (uint64_t)i * 0x9e3779b97f4a7c15ULL) % (uint64_t)p->n_words];
        if (i > 0 || p->lead_space) *q++ = ' ';
        const size_t len = strlen(w);
        memcpy(q, w, len);
        q += len;
    }
    *q = '\0';
    return text;
}

typedef struct {
    char *text;
    int32_t *ids; /* with a tokenizer: what the text encodes to, BOS included */
    int n_ids;
    int tokens; /* as built: exact with a tokenizer, estimated without */
} prompt_t;

static dsla_status_t prompt_build(const prompter_t *p, int want, uint64_t seed, prompt_t *out) {
    memset(out, 0, sizeof *out);
    int words = want - (p->add_bos ? 1 : 0);
    if (words < 1) words = 1;
    for (int round = 0; round < FIT_ROUNDS; round++) {
        free(out->text);
        free(out->ids);
        out->ids = NULL;
        out->text = join_words(p, words, seed);
        if (!out->text) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for a prompt");
        out->tokens = words + (p->add_bos ? 1 : 0);
        if (!p->tok) return DSLA_OK;
        size_t n = 0;
        DSLA_TRY(
            dsla_tokenizer_encode(p->tok, out->text, strlen(out->text), p->add_bos, &out->ids, &n));
        out->n_ids = (int)n;
        out->tokens = (int)n;
        if ((int)n == want) break;
        words += want - (int)n;
        if (words < 1) words = 1;
    }
    return DSLA_OK;
}

/* ---- the run ------------------------------------------------------------------------------- */

typedef struct {
    transport_t transport;
    loadgen_http_target_t http;
    bool chat; /* /v1/chat/completions: the prompt goes as one user message */
    const char *endpoint;
    void *zmq;
    const char *model;
    double temperature, timeout_s;
    int retries; /* the stub's resends after UNAVAILABLE before a first token */
    const dsla_workload_t *w;
    FILE *outputs; /* --outputs: one JSON line per completed HTTP request; NULL: none */
    prompt_t *prompts;
    dsla_load_record_t *recs;
    double t0;
    /* the queue of request indexes handed to workers */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int *queue;
    int head, tail;
    bool closed;
} run_t;

static int queue_pop(run_t *r) {
    pthread_mutex_lock(&r->mu);
    while (r->head == r->tail && !r->closed)
        pthread_cond_wait(&r->cv, &r->mu);
    const int i = r->head < r->tail ? r->queue[r->head++] : -1;
    pthread_mutex_unlock(&r->mu);
    return i;
}

/* --outputs: the request, what answered it and the answer, for bench/adaptive/replay.py. */
static void write_output(run_t *r, int i, json_t *request, const loadgen_http_result_t *res) {
    json_t *o =
        json_pack("{s:i, s:O, s:s, s:s, s:s%, s:i}", "index", i, "request", request, "id", res->id,
                  "system_fingerprint", res->fingerprint, "text", res->text ? res->text : "",
                  res->text ? res->text_len : 0, "completion_tokens", res->completion_tokens);
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(o);
    pthread_mutex_lock(&r->mu);
    if (line) fprintf(r->outputs, "%s\n", line);
    pthread_mutex_unlock(&r->mu);
    if (!line) fprintf(stderr, "dsla-loadgen: out of memory for request %d's output line\n", i);
    free(line);
}

static void run_http(run_t *r, int i) {
    const dsla_workload_request_t *q = &r->w->requests[i];
    dsla_load_record_t *rec = &r->recs[i];
    json_t *body = json_object();
    if (r->chat) { /* the chat template adds a few tokens around the prompt (docs/http.md) */
        json_t *msg = json_pack("{s:s, s:s}", "role", "user", "content", r->prompts[i].text);
        json_object_set_new(body, "messages", json_pack("[o]", msg));
    } else {
        json_object_set_new(body, "prompt", json_string(r->prompts[i].text));
    }
    json_object_set_new(body, "max_tokens", json_integer(q->output_tokens));
    json_object_set_new(body, "stream", json_true());
    json_object_set_new(body, "ignore_eos", json_true());
    json_object_set_new(body, "temperature", json_real(r->temperature));
    json_object_set_new(body, "seed", json_integer(i));
    if (r->model) json_object_set_new(body, "model", json_string(r->model));
    char *text = json_dumps(body, JSON_COMPACT);
    loadgen_http_result_t res;
    const bool ok = text && loadgen_http_stream(&r->http, text, strlen(text), r->timeout_s,
                                                dsla_clock_seconds, &res);
    if (!text) snprintf(res.error, sizeof res.error, "out of memory");
    if (ok && r->outputs) write_output(r, i, body, &res);
    json_decref(body);
    free(res.text);
    free(text);
    rec->sent_s = res.sent_s - r->t0;
    rec->first_s = res.first_s >= 0 ? res.first_s - r->t0 : -1;
    rec->last_s = (res.last_s >= 0 && ok ? res.last_s : res.end_s) - r->t0;
    rec->prompt_tokens_served = res.prompt_tokens;
    rec->output_tokens = res.completion_tokens >= 0 ? res.completion_tokens : res.events;
    rec->max_gap_s = res.max_gap_s;
    rec->outcome = ok                  ? DSLA_LOAD_COMPLETED
                   : res.status == 429 ? DSLA_LOAD_REFUSED
                                       : DSLA_LOAD_ERROR;
    if (ok || res.status == 429)
        snprintf(rec->detail, sizeof rec->detail, "%d", res.status);
    else
        snprintf(rec->detail, sizeof rec->detail, "%.47s", res.error);
}

typedef struct {
    double first, last, max_gap;
    int tokens;
} stub_times_t;

static int on_stub_token(void *user, int32_t token, const char *text, size_t len) {
    (void)text;
    (void)len;
    stub_times_t *st = user;
    if (token < 0) return 0;
    const double t = dsla_clock_seconds();
    if (st->tokens++ == 0)
        st->first = t;
    else if (t - st->last > st->max_gap)
        st->max_gap = t - st->last;
    st->last = t;
    return 0;
}

static void run_stub(run_t *r, dsla_client_t *c, int i) {
    const dsla_workload_request_t *q = &r->w->requests[i];
    const prompt_t *p = &r->prompts[i];
    dsla_load_record_t *rec = &r->recs[i];
    dsla_proto_generate_t g = {
        .prompt = p->text,
        .prompt_len = strlen(p->text),
        .prompt_ids = p->ids,
        .n_prompt_ids = p->ids ? p->n_ids : 0,
        .max_tokens = q->output_tokens,
        .temperature = (float)r->temperature,
        .top_p = 1.0f,
        .seed = (uint64_t)i,
        .ignore_eos = true,
        .stream = true,
    };
    if (p->ids) g.prompt = NULL, g.prompt_len = 0;
    stub_times_t st = {.first = -1, .last = -1};
    dsla_client_result_t res;
    rec->sent_s = dsla_clock_seconds() - r->t0;
    const dsla_proto_code_t code =
        dsla_client_generate(c, &g, on_stub_token, &st, (int)(1e3 * r->timeout_s), &res);
    const double end = dsla_clock_seconds();
    rec->first_s = st.first >= 0 ? st.first - r->t0 : -1;
    rec->last_s = (code == DSLA_CODE_OK && st.last >= 0 ? st.last : end) - r->t0;
    rec->output_tokens = code == DSLA_CODE_OK ? (int)res.completion_tokens : st.tokens;
    rec->prompt_tokens_served = code == DSLA_CODE_OK ? (int)res.prompt_tokens : 0;
    rec->max_gap_s = st.max_gap;
    rec->outcome = code == DSLA_CODE_OK                   ? DSLA_LOAD_COMPLETED
                   : code == DSLA_CODE_RESOURCE_EXHAUSTED ? DSLA_LOAD_REFUSED
                                                          : DSLA_LOAD_ERROR;
    if (code == DSLA_CODE_OK)
        snprintf(rec->detail, sizeof rec->detail, "OK");
    else
        snprintf(rec->detail, sizeof rec->detail, "%s: %.40s", dsla_proto_code_name(code),
                 res.message);
}

static void *worker_main(void *arg) {
    run_t *r = arg;
    dsla_client_t *c = NULL;
    if (r->transport == TRANSPORT_STUB) {
        const dsla_client_options_t o = {.retries = r->retries, .zmq_context = r->zmq};
        if (dsla_client_connect(&c, r->endpoint, &o) != DSLA_OK) c = NULL;
    }
    for (int i; (i = queue_pop(r)) >= 0;) {
        if (r->transport == TRANSPORT_HTTP) {
            run_http(r, i);
        } else if (c) {
            run_stub(r, c, i);
        } else {
            r->recs[i].outcome = DSLA_LOAD_ERROR;
            snprintf(r->recs[i].detail, sizeof r->recs[i].detail, "connect failed");
        }
        free(r->prompts[i].text); /* the largest part of the prompt: freed as soon as sent */
        r->prompts[i].text = NULL;
    }
    dsla_client_close(&c);
    return NULL;
}

static void sleep_until(double t) {
    struct timespec ts = {.tv_sec = (time_t)t, .tv_nsec = (long)((t - (double)(time_t)t) * 1e9)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* The JSON fields beside the summary: what was measured and how. */
static char *extra_fields(transport_t transport, const char *target, const char *desc,
                          int connections, bool exact, int off_by, int fitted) {
    json_t *o = json_object();
    json_object_set_new(o, "transport", json_string(transport == TRANSPORT_HTTP ? "http" : "stub"));
    json_object_set_new(o, "target", json_string(target));
    json_object_set_new(o, "workload", json_string(desc));
    json_object_set_new(o, "connections", json_integer(connections));
    json_object_set_new(o, "prompt_tokens_exact", json_boolean(exact));
    /* unknown without a tokenizer: the server's counts are in the timeline */
    json_object_set_new(o, "prompt_tokens_max_off", exact ? json_integer(off_by) : json_null());
    json_object_set_new(o, "requests_fitted", json_integer(fitted));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!s) return NULL;
    const size_t n = strlen(s); /* the fields without the braces */
    memmove(s, s + 1, n - 2);
    s[n - 2] = '\0';
    return s;
}

int main(int argc, char **argv) {
    const char *url = NULL, *endpoint = NULL, *tokenizer_dir = NULL, *timeline = NULL,
               *outputs = NULL;
    const char *model = NULL, *path = "/v1/completions";
    dsla_workload_options_t wo = {0};
    long requests = 0, seed = 1, connections = DEFAULT_CONNECTIONS, max_context = 0;
    double slo_ttft_ms = 1000, slo_tpot_ms = 100, temperature = 0, timeout_s = 600;
    long retries = 1;
    const dsla_arg_spec_t specs[] = {
        {"url", DSLA_ARG_STRING, "HTTP API base (default http://127.0.0.1:8000)", 0, 0, &url},
        {"endpoint", DSLA_ARG_STRING, "client stub endpoint instead of HTTP (tcp://HOST:PORT)", 0,
         0, &endpoint},
        {"path", DSLA_ARG_STRING, "HTTP path (default /v1/completions)", 0, 0, &path},
        {"model", DSLA_ARG_STRING, "the request's model field (default: none, the served one)", 0,
         0, &model},
        {"trace", DSLA_ARG_STRING, "CSV trace: timestamp,prompt_tokens,output_tokens", 0, 0,
         &wo.trace},
        {"preset", DSLA_ARG_STRING, "lengths of a preset: chat (1.2K/0.2K) or long-doc (8K/0.3K)",
         0, 0, &wo.preset},
        {"rate", DSLA_ARG_FLOAT, "synthetic arrivals, requests/s (default 1)", 1e-6, 1e6, &wo.rate},
        {"rate-profile", DSLA_ARG_STRING,
         "--rate times a piecewise-linear multiplier, SECONDS:MULT,... (e.g. 0:0.5,60:4,120:0.5); "
         "--duration defaults to its last point",
         0, 0, &wo.rate_profile},
        {"cv", DSLA_ARG_FLOAT, "inter-arrival CV: 1 Poisson (default), else gamma", 0.01, 100,
         &wo.cv},
        {"prompt-len", DSLA_ARG_STRING, "prompt tokens (default 128, or the preset's)", 0, 0,
         &wo.prompt_len},
        {"output-len", DSLA_ARG_STRING, "output tokens (default 128, or the preset's)", 0, 0,
         &wo.output_len},
        {"rate-scale", DSLA_ARG_FLOAT, "multiply the arrival rate (traces too; default 1)", 1e-6,
         1e6, &wo.scale},
        {"duration", DSLA_ARG_FLOAT, "seconds of arrivals", 0, 1e7, &wo.duration_s},
        {"requests", DSLA_ARG_INT, "requests at most (default 100 without --duration)", 1,
         DSLA_WORKLOAD_REQUESTS_MAX, &requests},
        {"seed", DSLA_ARG_INT, "the synthetic workload and prompts (default 1)", 0, 9.2e18, &seed},
        {"max-context", DSLA_ARG_INT, "cut prompt + output to fit this context", 2, 1 << 22,
         &max_context},
        {"tokenizer", DSLA_ARG_STRING, "model directory: prompts of exact token counts", 0, 0,
         &tokenizer_dir},
        {"slo-ttft-ms", DSLA_ARG_FLOAT, "goodput: TTFT target (default 1000)", 0, 1e9,
         &slo_ttft_ms},
        {"slo-tpot-ms", DSLA_ARG_FLOAT, "goodput: time-per-output-token target (default 100)", 0,
         1e9, &slo_tpot_ms},
        {"connections", DSLA_ARG_INT, "requests in flight at most (workers; default 256)", 1, 4096,
         &connections},
        {"temperature", DSLA_ARG_FLOAT, "sampling temperature (default 0)", 0, 2, &temperature},
        {"timeout", DSLA_ARG_FLOAT, "seconds a request may wait for its next piece (600)", 0.1, 1e6,
         &timeout_s},
        {"retries", DSLA_ARG_INT,
         "stub: resend after UNAVAILABLE before the first token (default 1)", 0, 10, &retries},
        {"timeline", DSLA_ARG_STRING, "write the per-request CSV here (bench/plot_latency.py)", 0,
         0, &timeline},
        {"outputs", DSLA_ARG_STRING,
         "http: write each answer (request, text, system_fingerprint) here, one JSON per line", 0,
         0, &outputs},
    };
    int n_pos = 0;
    const int prc = dsla_args_parse(argc, argv, 1, specs, (int)(sizeof specs / sizeof specs[0]),
                                    NULL, 0, &n_pos, usage);
    if (prc == -1) return 0;
    if (prc != 0) return prc;
    if (url && endpoint) {
        fprintf(stderr, "dsla-loadgen: --url and --endpoint exclude each other\n");
        return 2;
    }
    const transport_t transport = endpoint ? TRANSPORT_STUB : TRANSPORT_HTTP;
    if (!url) url = "http://127.0.0.1:8000";
    wo.max_requests = requests;
    wo.seed = (uint64_t)seed;
    wo.max_total = (int)max_context;

    run_t r = {.transport = transport,
               .endpoint = endpoint,
               .model = model,
               .temperature = temperature,
               .timeout_s = timeout_s,
               .retries = (int)retries};
    r.chat = strstr(path, "chat") != NULL;
    if (outputs && transport != TRANSPORT_HTTP) {
        fprintf(stderr, "dsla-loadgen: --outputs needs --url (HTTP answers)\n");
        return 2;
    }
    if (transport == TRANSPORT_HTTP) {
        char err[256];
        if (!loadgen_http_target_parse(url, path, &r.http, err, sizeof err)) {
            fprintf(stderr, "dsla-loadgen: %s\n", err);
            return 2;
        }
        r.http.keep_text = outputs != NULL;
    }
    if (outputs && !(r.outputs = fopen(outputs, "w"))) {
        fprintf(stderr, "dsla-loadgen: --outputs %s: %s\n", outputs, strerror(errno));
        return 1;
    }
    dsla_workload_t w = {0};
    dsla_tokenizer_t *tok = NULL;
    prompter_t pr = {0};
    char desc[768];
    int fitted = 0, rc = 1;
    dsla_status_t s = dsla_workload_build(&wo, &w, desc, sizeof desc, &fitted);
    if (s == DSLA_OK && tokenizer_dir) s = dsla_tokenizer_load_dir(&tok, tokenizer_dir);
    if (s == DSLA_OK) s = prompter_init(&pr, tok);
    if (s != DSLA_OK) {
        fprintf(stderr, "dsla-loadgen: %s\n", dsla_last_error());
        rc = s == DSLA_ERR_INVALID_ARGUMENT ? 2 : 1;
        goto out;
    }
    const int n = w.n;
    r.w = &w;
    r.prompts = calloc((size_t)n, sizeof *r.prompts);
    r.recs = calloc((size_t)n, sizeof *r.recs);
    r.queue = malloc((size_t)n * sizeof *r.queue);
    if (!r.prompts || !r.recs || !r.queue) {
        fprintf(stderr, "dsla-loadgen: out of memory for %d requests\n", n);
        goto out;
    }
    fprintf(stderr, "dsla-loadgen: %s; making %d prompts (%s)\n", desc, n,
            tok ? "exact token counts" : "about one token per word: no --tokenizer");
    const double t_prep = dsla_clock_seconds();
    int off_by = 0;
    for (int i = 0; i < n && s == DSLA_OK; i++) {
        s = prompt_build(&pr, w.requests[i].prompt_tokens, mix((uint64_t)seed * 1000003u + i),
                         &r.prompts[i]);
        const int off = abs(r.prompts[i].tokens - w.requests[i].prompt_tokens);
        off_by = off > off_by ? off : off_by;
        r.recs[i] = (dsla_load_record_t){.arrival_s = w.requests[i].arrival_s,
                                         .first_s = -1,
                                         .prompt_tokens = w.requests[i].prompt_tokens,
                                         .output_tokens_asked = w.requests[i].output_tokens};
    }
    if (s != DSLA_OK) {
        fprintf(stderr, "dsla-loadgen: %s\n", dsla_last_error());
        goto out;
    }
    if (off_by)
        fprintf(stderr, "dsla-loadgen: prompts off their token count by up to %d (%s)\n", off_by,
                tok ? "the vocabulary did not allow closer" : "estimated");
    fprintf(stderr, "dsla-loadgen: prompts ready in %.1f s; sending to %s\n",
            dsla_clock_seconds() - t_prep, transport == TRANSPORT_HTTP ? url : endpoint);

    if (transport == TRANSPORT_STUB && !(r.zmq = zmq_ctx_new())) {
        fprintf(stderr, "dsla-loadgen: zmq_ctx_new: %s\n", zmq_strerror(errno));
        goto out;
    }
    /* Jansson's only global state is its hash seed: set it before the workers make objects. */
    json_object_seed(0);
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);
    const int n_workers = (int)(connections < n ? connections : n);
    pthread_t *workers = calloc((size_t)n_workers, sizeof *workers);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 << 10); /* hundreds of workers, shallow stacks */
    int started = 0;
    for (; workers && started < n_workers; started++)
        if (pthread_create(&workers[started], &attr, worker_main, &r) != 0) break;
    pthread_attr_destroy(&attr);
    r.t0 = dsla_clock_seconds() + 0.05; /* the first arrival a little after every worker is up */
    for (int i = 0; i < n && started > 0; i++) {
        sleep_until(r.t0 + w.requests[i].arrival_s);
        pthread_mutex_lock(&r.mu);
        r.queue[r.tail++] = i;
        pthread_cond_signal(&r.cv);
        pthread_mutex_unlock(&r.mu);
    }
    pthread_mutex_lock(&r.mu);
    r.closed = true;
    pthread_cond_broadcast(&r.cv);
    pthread_mutex_unlock(&r.mu);
    for (int i = 0; i < started; i++)
        pthread_join(workers[i], NULL);
    free(workers);
    pthread_cond_destroy(&r.cv);
    pthread_mutex_destroy(&r.mu);
    if (started == 0) fprintf(stderr, "dsla-loadgen: no worker thread started\n");

    const dsla_load_slo_t slo = {slo_ttft_ms * 1e-3, slo_tpot_ms * 1e-3};
    dsla_load_summary_t sum;
    if (dsla_load_summarize(r.recs, n, 0, &slo, &sum) != DSLA_OK) {
        fprintf(stderr, "dsla-loadgen: %s\n", dsla_last_error());
        goto out;
    }
    const char *target = transport == TRANSPORT_HTTP ? url : endpoint;
    char *extra = extra_fields(transport, target, desc, n_workers, tok != NULL, off_by, fitted);
    dsla_load_print_json(stdout, "loadgen", extra, &sum);
    free(extra);
    char title[1024];
    snprintf(title, sizeof title, "dsla-loadgen: %s %s, %s",
             transport == TRANSPORT_HTTP ? "http" : "stub", target, desc);
    dsla_load_print_table(stderr, title, &sum);
    if (sum.send_lag_ms.p99 > 50)
        fprintf(stderr,
                "dsla-loadgen: sends lagged their arrivals by %.0f ms (p99): more "
                "--connections, or a less loaded client machine\n",
                sum.send_lag_ms.p99);
    for (int i = 0, shown = 0; i < n && shown < 3; i++)
        if (r.recs[i].outcome == DSLA_LOAD_ERROR)
            fprintf(stderr, "dsla-loadgen: request %d failed: %s\n", i, r.recs[i].detail), shown++;
    if (timeline && dsla_load_write_timeline(timeline, r.recs, n) != DSLA_OK) {
        fprintf(stderr, "dsla-loadgen: %s\n", dsla_last_error());
        goto out;
    }
    rc = sum.completed > 0 ? 0 : 1;
    if (rc)
        fprintf(stderr, "dsla-loadgen: no request completed: is the server at %s up?\n", target);
out:
    if (r.prompts)
        for (int i = 0; i < w.n; i++) {
            free(r.prompts[i].text);
            free(r.prompts[i].ids);
        }
    free(r.prompts);
    free(r.recs);
    free(r.queue);
    if (r.outputs && fclose(r.outputs) != 0) {
        fprintf(stderr, "dsla-loadgen: --outputs %s: %s\n", outputs, strerror(errno));
        rc = 1;
    }
    if (r.zmq) zmq_ctx_term(r.zmq);
    free(pr.words);
    dsla_tokenizer_destroy(&tok);
    dsla_workload_free(&w);
    return rc;
}

/* Workloads for load tests: when each request arrives and how many prompt and output tokens it
 * has, read from a trace file or drawn from distributions with a seed.
 *
 * A workload is a plain array of (arrival second, prompt tokens, output tokens), sorted by
 * arrival, first arrival at 0 for traces. Traces are CSV, `timestamp,prompt_tokens,output_tokens`
 * (seconds; a header line, blank lines and `#` comments allowed; times may start anywhere and come
 * in any order: they are shifted to start at 0 and sorted). Synthetic workloads draw arrivals
 * from a Poisson process or, with a coefficient of variation other than 1, a gamma renewal
 * process (bursty above 1, regular below), and lengths fixed, uniform or lognormal, all from
 * one splitmix64 stream: a seed gives the same workload on every machine.
 *
 * Both `dsla bench --trace` (in process) and `dsla-loadgen` (over HTTP or the client stub) read
 * workloads here. This module knows nothing of engines, actors, sockets or tokenizers, and must
 * not print: errors name the file, the line, the field and the value through dsla_error. */
#ifndef DSLA_SERVE_WORKLOAD_H
#define DSLA_SERVE_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/status.h"

/* A trace's lengths and counts are refused beyond these: far above any context we serve, low
 * enough that a hostile file cannot make us allocate without bound. */
#define DSLA_WORKLOAD_TOKENS_MAX (1 << 22)
#define DSLA_WORKLOAD_REQUESTS_MAX (1 << 24)

typedef struct {
    double arrival_s; /* from the workload's start */
    int prompt_tokens;
    int output_tokens;
} dsla_workload_request_t;

typedef struct {
    dsla_workload_request_t *requests; /* malloc'd, sorted by arrival */
    int n;
} dsla_workload_t;

typedef enum {
    DSLA_LENGTH_FIXED,     /* a */
    DSLA_LENGTH_UNIFORM,   /* integers in [a, b] */
    DSLA_LENGTH_LOGNORMAL, /* mean a tokens, sigma b of the underlying normal */
} dsla_length_kind_t;

typedef struct {
    dsla_length_kind_t kind;
    double a, b;
    int min, max; /* draws are clamped here (lognormal tails); 0 max: no upper clamp */
} dsla_length_dist_t;

/* A rate that changes over the run: the rate times a multiplier that is piecewise linear between
 * points (seconds from the start, multiplier >= 0) and holds its last value after them. Written
 * "0:0.5,60:4,120:0.5" (0.5x at 0 s, rising to 4x at 60 s, back to 0.5x at 120 s). */
enum { DSLA_RATE_PROFILE_MAX = 64 };
typedef struct {
    int n; /* 0: a constant rate */
    double t[DSLA_RATE_PROFILE_MAX], mult[DSLA_RATE_PROFILE_MAX];
} dsla_rate_profile_t;

/* Parses the text form; the message names option and the offending point. Times start at 0 and
 * increase; at least two points. */
dsla_status_t dsla_rate_profile_parse(const char *s, const char *option, dsla_rate_profile_t *out);
/* The multiplier at time t. */
double dsla_rate_profile_at(const dsla_rate_profile_t *p, double t);

typedef struct {
    double rate;  /* requests per second, > 0 (times profile's multiplier, when it has points) */
    double cv;    /* coefficient of variation of inter-arrival times; 1 is Poisson */
    double scale; /* rate multiplier (arrival times divided by it); 0 or 1: none */
    dsla_length_dist_t prompt, output;
    double duration_s; /* arrivals before this; 0: no limit */
    int max_requests;  /* at most this many; 0: no limit (duration_s must then be set) */
    uint64_t seed;
    dsla_rate_profile_t profile; /* arrivals are the constant-rate process's, time-rescaled */
} dsla_workload_spec_t;

/* "N" (fixed), "LO:HI" (uniform), "lognormal:MEAN:SIGMA" or "lognormal:MEAN:SIGMA:MIN:MAX"; the
 * message names option (e.g. "--prompt-len") and the value. */
dsla_status_t dsla_length_parse(const char *s, const char *option, dsla_length_dist_t *out);
/* "1200", "16:64", "lognormal(1200, 1.0) in [16, 8192]": for reports. */
void dsla_length_format(const dsla_length_dist_t *d, char *buf, size_t size);

/* Fills spec->prompt and spec->output with a preset's lengths, leaving arrivals alone:
 *   chat      prompts lognormal mean 1200 sigma 1.0 in [16, 8192], outputs mean 200 sigma 0.8 in
 *             [8, 2048] (a production chat trace's shape: long-tailed both ways);
 *   long-doc  prompts lognormal mean 8000 sigma 0.4 in [1024, 32000], outputs mean 300 sigma 0.6
 *             in [16, 2048] (summaries and questions over documents).
 * An unknown name is INVALID_ARGUMENT listing the known ones. */
dsla_status_t dsla_workload_preset(const char *name, dsla_workload_spec_t *spec);

/* Draws the workload spec describes; the first arrival is one inter-arrival time after 0. */
dsla_status_t dsla_workload_generate(const dsla_workload_spec_t *spec, dsla_workload_t *out);

/* Parses a CSV trace of len bytes; name (a path) prefixes messages: "t.csv:7: field 2
 * (prompt_tokens) is 'x'; it must be an integer in [1, 4194304]". */
dsla_status_t dsla_workload_parse_csv(const char *text, size_t len, const char *name,
                                      dsla_workload_t *out);
dsla_status_t dsla_workload_load_csv(const char *path, dsla_workload_t *out);

/* Arrivals times 1/scale (scale 2 doubles the rate); then only arrivals before duration_s
 * (> 0) and at most max_requests (> 0) are kept. */
void dsla_workload_scale(dsla_workload_t *w, double scale);
void dsla_workload_limit(dsla_workload_t *w, double duration_s, int max_requests);
/* Fits every request into a context of max_total tokens: outputs above half of it are cut to
 * half, then prompts to what is left. Returns how many requests changed. */
int dsla_workload_fit(dsla_workload_t *w, int max_total);

void dsla_workload_free(dsla_workload_t *w);

/* What a load tool's options say, in one place for every tool: a trace (then rate, cv and the
 * lengths are ignored) or a synthetic spec; NULL strings and zero numbers take the defaults. */
typedef struct {
    const char *trace;        /* CSV path */
    const char *preset;       /* "chat", "long-doc" */
    const char *prompt_len;   /* dsla_length_parse forms; over the preset's; default "128" */
    const char *output_len;   /* default "128" */
    double rate;              /* default 1 request/s */
    const char *rate_profile; /* dsla_rate_profile_parse form; duration defaults to its end */
    double cv;                /* default 1 (Poisson) */
    double scale;             /* rate multiplier, traces too; default 1 */
    double duration_s;        /* arrivals before this */
    long max_requests;        /* at most this many; default 100 when duration_s is 0 too */
    uint64_t seed;
    int max_total; /* > 0: dsla_workload_fit to it */
} dsla_workload_options_t;

enum { DSLA_WORKLOAD_DEFAULT_REQUESTS = 100 };

/* Builds the workload o describes and a one-line description of it for reports ("poisson 5/s,
 * prompt 128, output lognormal(200, 0.8), seed 1, 100 requests"); *fitted (may be NULL) counts
 * the requests cut to max_total. */
dsla_status_t dsla_workload_build(const dsla_workload_options_t *o, dsla_workload_t *out,
                                  char *desc, size_t desc_size, int *fitted);

/* The generator's draws, exposed for the statistical tests. rng is splitmix64 state. */
double dsla_workload_uniform(uint64_t *rng); /* [0, 1) */
double dsla_workload_normal(uint64_t *rng);
double dsla_workload_gamma(uint64_t *rng, double shape); /* scale 1 */
/* An inter-arrival time of a renewal process of rate and cv (exponential when cv is 1). */
double dsla_workload_interarrival(uint64_t *rng, double rate, double cv);
int dsla_length_draw(const dsla_length_dist_t *d, uint64_t *rng);

#endif

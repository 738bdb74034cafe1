/* Workloads for load tests: traces and synthetic arrivals and lengths (workload.h). */
#include "runtime/serve/workload.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/core/random.h"

/* Traces larger than this are refused before reading: a million-request trace is ~30 MB. */
#define TRACE_BYTES_MAX (1u << 30)
#define TWO_PI 6.283185307179586

/* ---- draws --------------------------------------------------------------------------------- */

double dsla_workload_uniform(uint64_t *rng) {
    return (double)(dsla_splitmix64(rng) >> 11) * 0x1.0p-53;
}

double dsla_workload_normal(uint64_t *rng) { /* Box-Muller; the second value is dropped */
    const double u = 1.0 - dsla_workload_uniform(rng), v = dsla_workload_uniform(rng);
    return sqrt(-2.0 * log(u)) * cos(TWO_PI * v);
}

/* Marsaglia and Tsang (2000); shapes below 1 through gamma(shape + 1) * U^(1/shape). */
double dsla_workload_gamma(uint64_t *rng, double shape) {
    if (shape < 1.0) {
        const double u = 1.0 - dsla_workload_uniform(rng);
        return dsla_workload_gamma(rng, shape + 1.0) * pow(u, 1.0 / shape);
    }
    const double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = dsla_workload_normal(rng);
            v = 1.0 + c * x;
        } while (v <= 0.0);
        v = v * v * v;
        const double u = 1.0 - dsla_workload_uniform(rng);
        if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
    }
}

double dsla_workload_interarrival(uint64_t *rng, double rate, double cv) {
    if (fabs(cv - 1.0) < 1e-12) return -log(1.0 - dsla_workload_uniform(rng)) / rate;
    /* Gamma with shape k = 1/cv^2 and mean 1/rate: its CV is 1/sqrt(k) = cv. */
    const double k = 1.0 / (cv * cv);
    return dsla_workload_gamma(rng, k) / (k * rate);
}

int dsla_length_draw(const dsla_length_dist_t *d, uint64_t *rng) {
    double x;
    switch (d->kind) {
    case DSLA_LENGTH_UNIFORM:
        x = d->a + (double)(dsla_splitmix64(rng) % (uint64_t)(d->b - d->a + 1));
        break;
    case DSLA_LENGTH_LOGNORMAL: /* mean a: mu = ln a - sigma^2 / 2 */
        x = round(exp(log(d->a) - 0.5 * d->b * d->b + d->b * dsla_workload_normal(rng)));
        break;
    default:
        x = d->a;
        break;
    }
    const int lo = d->min > 0 ? d->min : 1;
    if (x < lo) x = lo;
    if (d->max > 0 && x > d->max) x = d->max;
    if (x > DSLA_WORKLOAD_TOKENS_MAX) x = DSLA_WORKLOAD_TOKENS_MAX;
    return (int)x;
}

/* ---- lengths ------------------------------------------------------------------------------- */

static bool parse_double(const char **p, double *out) {
    char *end;
    errno = 0;
    *out = strtod(*p, &end);
    if (end == *p || errno || !isfinite(*out)) return false;
    *p = end;
    return true;
}

dsla_status_t dsla_length_parse(const char *s, const char *option, dsla_length_dist_t *out) {
    memset(out, 0, sizeof *out);
    const char *p = s;
    double v[4];
    int n = 0;
    const bool lognormal = strncmp(s, "lognormal:", 10) == 0;
    if (lognormal) p += 10;
    bool dangling = false; /* a ':' with no number after it */
    while (n < 4 && parse_double(&p, &v[n])) {
        n++;
        dangling = *p == ':';
        if (!dangling) break;
        p++;
    }
    const double max = DSLA_WORKLOAD_TOKENS_MAX;
    bool ok = *p == '\0' && !dangling;
    if (lognormal) {
        ok = ok && (n == 2 || n == 4) && v[0] >= 1 && v[0] <= max && v[1] >= 0 && v[1] <= 4;
        if (ok && n == 4)
            ok = v[2] >= 1 && v[3] >= v[2] && v[3] <= max && v[2] == floor(v[2]) &&
                 v[3] == floor(v[3]);
        if (!ok)
            return dsla_error(
                DSLA_ERR_INVALID_ARGUMENT,
                "%s '%s' must be lognormal:MEAN:SIGMA[:MIN:MAX] with MEAN in [1, %d], "
                "SIGMA in [0, 4] and integers 1 <= MIN <= MAX",
                option, s, DSLA_WORKLOAD_TOKENS_MAX);
        *out = (dsla_length_dist_t){DSLA_LENGTH_LOGNORMAL, v[0], v[1], n == 4 ? (int)v[2] : 1,
                                    n == 4 ? (int)v[3] : 0};
        return DSLA_OK;
    }
    ok = ok && (n == 1 || n == 2);
    for (int i = 0; ok && i < n; i++)
        ok = v[i] >= 1 && v[i] <= max && v[i] == floor(v[i]);
    if (ok && n == 2) ok = v[1] >= v[0];
    if (!ok)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s '%s' must be N, LO:HI (1 <= LO <= HI <= %d) or "
                          "lognormal:MEAN:SIGMA[:MIN:MAX]",
                          option, s, DSLA_WORKLOAD_TOKENS_MAX);
    *out = n == 1 ? (dsla_length_dist_t){DSLA_LENGTH_FIXED, v[0], v[0], 1, 0}
                  : (dsla_length_dist_t){DSLA_LENGTH_UNIFORM, v[0], v[1], 1, 0};
    return DSLA_OK;
}

void dsla_length_format(const dsla_length_dist_t *d, char *buf, size_t size) {
    switch (d->kind) {
    case DSLA_LENGTH_UNIFORM:
        snprintf(buf, size, "%.0f:%.0f", d->a, d->b);
        break;
    case DSLA_LENGTH_LOGNORMAL:
        if (d->max > 0)
            snprintf(buf, size, "lognormal(%.0f, %.2g) in [%d, %d]", d->a, d->b, d->min, d->max);
        else
            snprintf(buf, size, "lognormal(%.0f, %.2g)", d->a, d->b);
        break;
    default:
        snprintf(buf, size, "%.0f", d->a);
        break;
    }
}

/* ---- presets ------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    dsla_length_dist_t prompt, output;
} preset_t;

static const preset_t presets[] = {
    {"chat",
     {DSLA_LENGTH_LOGNORMAL, 1200, 1.0, 16, 8192},
     {DSLA_LENGTH_LOGNORMAL, 200, 0.8, 8, 2048}},
    {"long-doc",
     {DSLA_LENGTH_LOGNORMAL, 8000, 0.4, 1024, 32000},
     {DSLA_LENGTH_LOGNORMAL, 300, 0.6, 16, 2048}},
};

dsla_status_t dsla_workload_preset(const char *name, dsla_workload_spec_t *spec) {
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (strcmp(name, presets[i].name) == 0) {
            spec->prompt = presets[i].prompt;
            spec->output = presets[i].output;
            return DSLA_OK;
        }
    return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "preset '%s' is unknown; known: chat, long-doc",
                      name);
}

/* ---- building ------------------------------------------------------------------------------ */

static dsla_status_t push(dsla_workload_t *w, int *cap, dsla_workload_request_t r) {
    if (w->n == *cap) {
        if (*cap >= DSLA_WORKLOAD_REQUESTS_MAX)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "a workload holds at most %d requests",
                              DSLA_WORKLOAD_REQUESTS_MAX);
        const int grown = *cap ? 2 * *cap : 256;
        dsla_workload_request_t *p = realloc(w->requests, (size_t)grown * sizeof *p);
        if (!p) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for %d requests", grown);
        w->requests = p;
        *cap = grown;
    }
    w->requests[w->n++] = r;
    return DSLA_OK;
}

dsla_status_t dsla_rate_profile_parse(const char *s, const char *option, dsla_rate_profile_t *out) {
    memset(out, 0, sizeof *out);
    const char *p = s;
    while (*p) {
        char *end = NULL;
        const double t = strtod(p, &end);
        if (end == p || *end != ':')
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s '%s': point %d is not SECONDS:MULTIPLIER", option, s, out->n + 1);
        p = end + 1;
        const double m = strtod(p, &end);
        if (end == p || (*end && *end != ','))
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s '%s': point %d is not SECONDS:MULTIPLIER", option, s, out->n + 1);
        if (out->n == DSLA_RATE_PROFILE_MAX)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: more than %d points", option,
                              DSLA_RATE_PROFILE_MAX);
        const double prev = out->n ? out->t[out->n - 1] : -1.0;
        if (!isfinite(t) || (out->n == 0 && t != 0) || (out->n > 0 && !(t > prev)))
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s '%s': point %d at %g s; times start at 0 and increase", option, s,
                              out->n + 1, t);
        if (!isfinite(m) || m < 0 || m > 1e6)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "%s '%s': point %d multiplier %g; it must be in [0, 1e6]", option, s,
                              out->n + 1, m);
        out->t[out->n] = t, out->mult[out->n] = m, out->n++;
        p = *end ? end + 1 : end;
    }
    if (out->n < 2)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s '%s': at least two points", option, s);
    return DSLA_OK;
}

double dsla_rate_profile_at(const dsla_rate_profile_t *p, double t) {
    if (t >= p->t[p->n - 1]) return p->mult[p->n - 1];
    int i = 0;
    while (t >= p->t[i + 1])
        i++;
    const double f = (t - p->t[i]) / (p->t[i + 1] - p->t[i]);
    return p->mult[i] + f * (p->mult[i + 1] - p->mult[i]);
}

/* The time by which the multiplier's integral reaches u (time-rescaling: a process of constant
 * rate r at operational time u is one of rate r m(t) at real time t); INFINITY if never. */
static double profile_invert(const dsla_rate_profile_t *p, double u) {
    for (int i = 0; i + 1 < p->n; i++) {
        const double dt = p->t[i + 1] - p->t[i], m0 = p->mult[i], m1 = p->mult[i + 1];
        const double area = 0.5 * (m0 + m1) * dt;
        if (u > area) {
            u -= area;
            continue;
        }
        /* m0 x + (m1 - m0) x^2 / (2 dt) = u on [0, dt] */
        const double a = 0.5 * (m1 - m0) / dt;
        const double x = fabs(a) < 1e-12 ? u / m0 : (-m0 + sqrt(m0 * m0 + 4 * a * u)) / (2 * a);
        return p->t[i] + fmin(fmax(x, 0.0), dt);
    }
    const double last = p->mult[p->n - 1];
    return last > 0 ? p->t[p->n - 1] + u / last : INFINITY;
}

dsla_status_t dsla_workload_generate(const dsla_workload_spec_t *spec, dsla_workload_t *out) {
    memset(out, 0, sizeof *out);
    if (!(spec->rate > 0) || !isfinite(spec->rate))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "rate is %g; it must be above 0", spec->rate);
    if (!(spec->cv > 0) || spec->cv > 100)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "cv is %g; it must be in (0, 100]", spec->cv);
    if (spec->duration_s <= 0 && spec->max_requests <= 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "a synthetic workload needs a duration or a request count");
    uint64_t rng = spec->seed;
    int cap = 0;
    double u = 0.0; /* operational time: the constant-rate process's */
    for (;;) {
        u += dsla_workload_interarrival(&rng, spec->rate, spec->cv);
        const double t = spec->profile.n ? profile_invert(&spec->profile, u) : u;
        if (!isfinite(t) || (spec->duration_s > 0 && t >= spec->duration_s)) break;
        if (spec->max_requests > 0 && out->n >= spec->max_requests) break;
        dsla_workload_request_t r = {.arrival_s = t};
        r.prompt_tokens = dsla_length_draw(&spec->prompt, &rng);
        r.output_tokens = dsla_length_draw(&spec->output, &rng);
        dsla_status_t s = push(out, &cap, r);
        if (s != DSLA_OK) {
            dsla_workload_free(out);
            return s;
        }
    }
    if (spec->scale > 0) dsla_workload_scale(out, spec->scale);
    return DSLA_OK;
}

/* ---- CSV ----------------------------------------------------------------------------------- */

static const char *const csv_fields[] = {"timestamp", "prompt_tokens", "output_tokens"};

typedef struct {
    dsla_workload_request_t r;
    int line; /* ties keep file order */
} ranked_t;

static int cmp_arrival(const void *a, const void *b) {
    const ranked_t *x = a, *y = b;
    if (x->r.arrival_s != y->r.arrival_s) return (x->r.arrival_s > y->r.arrival_s) ? 1 : -1;
    return (x->line > y->line) - (x->line < y->line);
}

/* Sorts by arrival, ties in file order. */
static dsla_status_t sort_stable(dsla_workload_t *w) {
    ranked_t *tmp = malloc((size_t)w->n * sizeof *tmp);
    if (!tmp) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory for %d requests", w->n);
    for (int i = 0; i < w->n; i++)
        tmp[i] = (ranked_t){w->requests[i], i};
    qsort(tmp, (size_t)w->n, sizeof *tmp, cmp_arrival);
    for (int i = 0; i < w->n; i++)
        w->requests[i] = tmp[i].r;
    free(tmp);
    return DSLA_OK;
}

/* Whether the line (without its end) is a header naming the three fields. */
static bool is_header(const char *line, size_t len) {
    char buf[128];
    if (len >= sizeof buf) return false;
    memcpy(buf, line, len);
    buf[len] = '\0';
    return strstr(buf, "timestamp") != NULL || strstr(buf, "prompt") != NULL;
}

dsla_status_t dsla_workload_parse_csv(const char *text, size_t len, const char *name,
                                      dsla_workload_t *out) {
    memset(out, 0, sizeof *out);
    int cap = 0, line_no = 0;
    bool first_data = true;
    dsla_status_t s = DSLA_OK;
    size_t pos = 0;
    while (pos < len && s == DSLA_OK) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl ? 1 : 0);
        line_no++;
        while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
            n--;
        size_t lead = 0;
        while (lead < n && (line[lead] == ' ' || line[lead] == '\t'))
            lead++;
        if (lead == n || line[lead] == '#') continue;
        if (first_data && is_header(line, n)) {
            first_data = false;
            continue;
        }
        first_data = false;
        if (memchr(line, '\0', n)) {
            s = dsla_error(DSLA_ERR_FORMAT, "%s:%d: a NUL byte: not a text file", name, line_no);
            break;
        }
        char buf[256];
        if (n >= sizeof buf) {
            s = dsla_error(DSLA_ERR_FORMAT, "%s:%d: the line is %zu bytes; the limit is %zu", name,
                           line_no, n, sizeof buf - 1);
            break;
        }
        memcpy(buf, line, n);
        buf[n] = '\0';
        double v[3];
        char *p = buf;
        for (int f = 0; f < 3 && s == DSLA_OK; f++) {
            char *comma = strchr(p, ',');
            if (f < 2 && !comma) {
                s = dsla_error(DSLA_ERR_FORMAT,
                               "%s:%d: %d field%s; a line is timestamp,prompt_tokens,output_tokens",
                               name, line_no, f + 1, f ? "s" : "");
                break;
            }
            if (f == 2 && comma) {
                s = dsla_error(DSLA_ERR_FORMAT,
                               "%s:%d: more than 3 fields; a line is "
                               "timestamp,prompt_tokens,output_tokens",
                               name, line_no);
                break;
            }
            if (comma) *comma = '\0';
            while (*p == ' ' || *p == '\t')
                p++;
            char *end;
            errno = 0;
            v[f] = strtod(p, &end);
            while (*end == ' ' || *end == '\t')
                end++;
            const bool number = end != p && *end == '\0' && !errno && isfinite(v[f]);
            if (f == 0 && (!number || v[f] < 0))
                s = dsla_error(DSLA_ERR_FORMAT,
                               "%s:%d: field 1 (timestamp) is '%s'; it must be a number of "
                               "seconds >= 0",
                               name, line_no, p);
            else if (f > 0 && (!number || v[f] != floor(v[f]) || v[f] < 1 ||
                               v[f] > DSLA_WORKLOAD_TOKENS_MAX))
                s = dsla_error(DSLA_ERR_FORMAT,
                               "%s:%d: field %d (%s) is '%s'; it must be an integer in [1, %d]",
                               name, line_no, f + 1, csv_fields[f], p, DSLA_WORKLOAD_TOKENS_MAX);
            if (comma) p = comma + 1;
        }
        if (s == DSLA_OK)
            s = push(out, &cap, (dsla_workload_request_t){v[0], (int)v[1], (int)v[2]});
    }
    if (s == DSLA_OK && out->n == 0)
        s = dsla_error(DSLA_ERR_FORMAT,
                       "%s: no requests (lines of timestamp,prompt_tokens,"
                       "output_tokens)",
                       name);
    if (s != DSLA_OK) {
        dsla_workload_free(out);
        return s;
    }
    bool sorted = true;
    for (int i = 1; i < out->n && sorted; i++)
        sorted = out->requests[i].arrival_s >= out->requests[i - 1].arrival_s;
    if (!sorted && (s = sort_stable(out)) != DSLA_OK) {
        dsla_workload_free(out);
        return s;
    }
    const double t0 = out->requests[0].arrival_s;
    for (int i = 0; i < out->n; i++)
        out->requests[i].arrival_s -= t0;
    return DSLA_OK;
}

dsla_status_t dsla_workload_load_csv(const char *path, dsla_workload_t *out) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return dsla_error(DSLA_ERR_NOT_FOUND, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > TRACE_BYTES_MAX) {
        fclose(f);
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: a trace must be a regular file of at most %u bytes", path,
                          TRACE_BYTES_MAX);
    }
    char *text = malloc((size_t)st.st_size + 1);
    if (!text) {
        fclose(f);
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    const size_t n = fread(text, 1, (size_t)st.st_size, f);
    fclose(f);
    dsla_status_t s =
        n == (size_t)st.st_size
            ? dsla_workload_parse_csv(text, n, path, out)
            : dsla_error(DSLA_ERR_IO, "%s: read %zu of %lld bytes", path, n, (long long)st.st_size);
    free(text);
    return s;
}

/* ---- transforms ---------------------------------------------------------------------------- */

void dsla_workload_scale(dsla_workload_t *w, double scale) {
    if (!(scale > 0)) return;
    for (int i = 0; i < w->n; i++)
        w->requests[i].arrival_s /= scale;
}

void dsla_workload_limit(dsla_workload_t *w, double duration_s, int max_requests) {
    int n = w->n;
    if (max_requests > 0 && n > max_requests) n = max_requests;
    if (duration_s > 0)
        while (n > 0 && w->requests[n - 1].arrival_s >= duration_s)
            n--;
    w->n = n;
}

int dsla_workload_fit(dsla_workload_t *w, int max_total) {
    int changed = 0;
    const int half = max_total / 2 > 0 ? max_total / 2 : 1;
    for (int i = 0; i < w->n; i++) {
        dsla_workload_request_t *r = &w->requests[i];
        const dsla_workload_request_t before = *r;
        if (r->output_tokens > half) r->output_tokens = half;
        if (r->prompt_tokens > max_total - r->output_tokens)
            r->prompt_tokens = max_total - r->output_tokens > 0 ? max_total - r->output_tokens : 1;
        changed +=
            before.prompt_tokens != r->prompt_tokens || before.output_tokens != r->output_tokens;
    }
    return changed;
}

void dsla_workload_free(dsla_workload_t *w) {
    if (!w) return;
    free(w->requests);
    w->requests = NULL;
    w->n = 0;
}

dsla_status_t dsla_workload_build(const dsla_workload_options_t *o, dsla_workload_t *out,
                                  char *desc, size_t desc_size, int *fitted) {
    memset(out, 0, sizeof *out);
    char what[512];
    if (o->trace) {
        DSLA_TRY(dsla_workload_load_csv(o->trace, out));
        dsla_workload_scale(out, o->scale);
        snprintf(what, sizeof what, "trace %s x%g", o->trace, o->scale > 0 ? o->scale : 1.0);
    } else {
        dsla_workload_spec_t spec = {
            .rate = o->rate > 0 ? o->rate : 1.0,
            .cv = o->cv > 0 ? o->cv : 1.0,
            .scale = o->scale,
            .duration_s = o->duration_s,
            .max_requests = (int)o->max_requests,
            .seed = o->seed,
        };
        if (o->rate_profile) {
            DSLA_TRY(dsla_rate_profile_parse(o->rate_profile, "--rate-profile", &spec.profile));
            if (spec.duration_s <= 0) spec.duration_s = spec.profile.t[spec.profile.n - 1];
        }
        if (spec.duration_s <= 0 && spec.max_requests <= 0)
            spec.max_requests = DSLA_WORKLOAD_DEFAULT_REQUESTS;
        DSLA_TRY(dsla_length_parse("128", "--prompt-len", &spec.prompt));
        DSLA_TRY(dsla_length_parse("128", "--output-len", &spec.output));
        if (o->preset) DSLA_TRY(dsla_workload_preset(o->preset, &spec));
        if (o->prompt_len) DSLA_TRY(dsla_length_parse(o->prompt_len, "--prompt-len", &spec.prompt));
        if (o->output_len) DSLA_TRY(dsla_length_parse(o->output_len, "--output-len", &spec.output));
        DSLA_TRY(dsla_workload_generate(&spec, out));
        char pl[64], ol[64];
        dsla_length_format(&spec.prompt, pl, sizeof pl);
        dsla_length_format(&spec.output, ol, sizeof ol);
        const double rate = spec.rate * (spec.scale > 0 ? spec.scale : 1.0);
        if (o->rate_profile)
            snprintf(what, sizeof what, "%s %g/s x profile %s, prompt %s, output %s, seed %llu%s%s",
                     spec.cv == 1.0 ? "poisson" : "gamma", rate, o->rate_profile, pl, ol,
                     (unsigned long long)spec.seed, o->preset ? ", preset " : "",
                     o->preset ? o->preset : "");
        else if (spec.cv == 1.0)
            snprintf(what, sizeof what, "poisson %g/s, prompt %s, output %s, seed %llu%s%s", rate,
                     pl, ol, (unsigned long long)spec.seed, o->preset ? ", preset " : "",
                     o->preset ? o->preset : "");
        else
            snprintf(what, sizeof what, "gamma %g/s cv %g, prompt %s, output %s, seed %llu%s%s",
                     rate, spec.cv, pl, ol, (unsigned long long)spec.seed,
                     o->preset ? ", preset " : "", o->preset ? o->preset : "");
    }
    dsla_workload_limit(out, o->duration_s, (int)o->max_requests);
    const int cut = o->max_total > 0 ? dsla_workload_fit(out, o->max_total) : 0;
    if (fitted) *fitted = cut;
    if (out->n == 0) {
        dsla_workload_free(out);
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: no requests within the limits", what);
    }
    if (desc)
        snprintf(desc, desc_size, "%s, %d requests over %.1f s", what, out->n,
                 out->requests[out->n - 1].arrival_s);
    return DSLA_OK;
}

/* The report of a load test (load_report.h). */
#include "runtime/serve/load_report.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentiles by linear interpolation between order statistics (numpy's default); sorts v. */
static dsla_load_pct_t percentiles_ms(double *v, int n) {
    dsla_load_pct_t p = {0};
    if (n == 0) return p;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    const double q[3] = {0.5, 0.9, 0.99};
    double out[3];
    for (int k = 0; k < 3; k++) {
        const double pos = q[k] * (n - 1);
        const int i = (int)pos;
        out[k] = i + 1 < n ? v[i] + (pos - i) * (v[i + 1] - v[i]) : v[n - 1];
    }
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += v[i];
    p = (dsla_load_pct_t){1e3 * out[0], 1e3 * out[1], 1e3 * out[2], 1e3 * sum / n};
    return p;
}

static double tpot_of(const dsla_load_record_t *r) {
    return r->output_tokens > 1 ? (r->last_s - r->first_s) / (r->output_tokens - 1) : 0.0;
}

dsla_status_t dsla_load_summarize(const dsla_load_record_t *r, int n, double elapsed_s,
                                  const dsla_load_slo_t *slo, dsla_load_summary_t *out) {
    memset(out, 0, sizeof *out);
    out->slo = *slo;
    const size_t cap = n > 0 ? (size_t)n : 1;
    double *ttft = malloc(cap * sizeof *ttft), *tpot = malloc(cap * sizeof *tpot);
    double *e2e = malloc(cap * sizeof *e2e), *lag = malloc(cap * sizeof *lag);
    double *gap = malloc(cap * sizeof *gap);
    if (!ttft || !tpot || !e2e || !lag || !gap) {
        free(ttft), free(tpot), free(e2e), free(lag), free(gap);
        return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "out of memory summarising %d requests", n);
    }
    int n_ttft = 0, n_tpot = 0, n_e2e = 0, n_lag = 0, n_gap = 0;
    double start = n > 0 ? r[0].arrival_s : 0, end = start;
    for (int i = 0; i < n; i++) {
        const dsla_load_record_t *x = &r[i];
        if (x->arrival_s < start) start = x->arrival_s;
        if (x->last_s > end) end = x->last_s;
        if (x->outcome != DSLA_LOAD_PENDING) {
            out->sent++;
            lag[n_lag++] = x->sent_s > x->arrival_s ? x->sent_s - x->arrival_s : 0.0;
        }
        if (x->outcome == DSLA_LOAD_REFUSED) out->refused++;
        if (x->outcome == DSLA_LOAD_ERROR || x->outcome == DSLA_LOAD_PENDING) out->errors++;
        if (x->outcome != DSLA_LOAD_COMPLETED) continue;
        out->completed++;
        out->prompt_tokens +=
            x->prompt_tokens_served > 0 ? x->prompt_tokens_served : x->prompt_tokens;
        out->output_tokens += x->output_tokens;
        if (x->output_tokens < x->output_tokens_asked) out->early_stops++;
        const double t1 = x->first_s >= 0 ? x->first_s - x->arrival_s : x->last_s - x->arrival_s;
        const double tp = tpot_of(x);
        ttft[n_ttft++] = t1;
        if (x->output_tokens > 1) tpot[n_tpot++] = tp, gap[n_gap++] = x->max_gap_s;
        e2e[n_e2e++] = x->last_s - x->arrival_s;
        if (t1 <= slo->ttft_s && tp <= slo->tpot_s) out->met_slo++;
    }
    /* Requests never sent are counted with the errors and as sent: every request of the workload
     * is accounted for, so that completed + refused + errors == sent == n. */
    out->sent = n;
    out->elapsed_s = elapsed_s > 0 ? elapsed_s : end - start;
    if (out->elapsed_s > 0) {
        out->requests_per_s = out->completed / out->elapsed_s;
        out->output_tokens_per_s = out->output_tokens / out->elapsed_s;
        out->goodput_rps = out->met_slo / out->elapsed_s;
    }
    out->ttft_ms = percentiles_ms(ttft, n_ttft);
    out->tpot_ms = percentiles_ms(tpot, n_tpot);
    out->e2e_ms = percentiles_ms(e2e, n_e2e);
    out->max_gap_ms = percentiles_ms(gap, n_gap);
    out->send_lag_ms = percentiles_ms(lag, n_lag);
    free(ttft), free(tpot), free(e2e), free(lag), free(gap);
    return DSLA_OK;
}

static void print_pct(FILE *f, const char *name, const dsla_load_pct_t *p) {
    fprintf(f, "\"%s\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"mean\":%.3f}", name, p->p50,
            p->p90, p->p99, p->mean);
}

void dsla_load_print_json(FILE *f, const char *what, const char *extra,
                          const dsla_load_summary_t *s) {
    fprintf(f, "{\"what\":\"%s\",", what);
    if (extra && *extra) fprintf(f, "%s,", extra);
    fprintf(f,
            "\"sent\":%d,\"completed\":%d,\"refused\":%d,\"errors\":%d,\"early_stops\":%d,"
            "\"elapsed_s\":%.3f,\"requests_per_s\":%.3f,\"output_tokens_per_s\":%.1f,"
            "\"prompt_tokens\":%ld,\"output_tokens\":%ld,\"slo_ttft_ms\":%.1f,"
            "\"slo_tpot_ms\":%.1f,\"slo_met\":%d,\"goodput_rps\":%.3f,",
            s->sent, s->completed, s->refused, s->errors, s->early_stops, s->elapsed_s,
            s->requests_per_s, s->output_tokens_per_s, s->prompt_tokens, s->output_tokens,
            1e3 * s->slo.ttft_s, 1e3 * s->slo.tpot_s, s->met_slo, s->goodput_rps);
    print_pct(f, "ttft_ms", &s->ttft_ms);
    fputc(',', f);
    print_pct(f, "tpot_ms", &s->tpot_ms);
    fputc(',', f);
    print_pct(f, "e2e_ms", &s->e2e_ms);
    fputc(',', f);
    print_pct(f, "max_gap_ms", &s->max_gap_ms);
    fputc(',', f);
    print_pct(f, "send_lag_ms", &s->send_lag_ms);
    fputs("}\n", f);
    fflush(f);
}

void dsla_load_print_table(FILE *f, const char *title, const dsla_load_summary_t *s) {
    fprintf(f, "%s\n", title);
    fprintf(f, "  %-28s %10s %10s %10s\n", "metric", "value", "", "");
    fprintf(f, "  %-28s %10d\n", "sent", s->sent);
    fprintf(f, "  %-28s %10d\n", "completed", s->completed);
    fprintf(f, "  %-28s %10d\n", "refused (429/EXHAUSTED)", s->refused);
    fprintf(f, "  %-28s %10d\n", "errors", s->errors);
    fprintf(f, "  %-28s %10d\n", "early stops (< asked)", s->early_stops);
    fprintf(f, "  %-28s %10.3f\n", "elapsed s", s->elapsed_s);
    fprintf(f, "  %-28s %10.2f\n", "requests/s", s->requests_per_s);
    fprintf(f, "  %-28s %10.1f\n", "output tokens/s", s->output_tokens_per_s);
    char slo[64];
    snprintf(slo, sizeof slo, "goodput req/s (%.0f/%.0f ms)", 1e3 * s->slo.ttft_s,
             1e3 * s->slo.tpot_s);
    fprintf(f, "  %-28s %10.2f   (%d of %d met both)\n", slo, s->goodput_rps, s->met_slo,
            s->completed);
    fprintf(f, "  %-28s %10s %10s %10s\n", "", "p50", "p90", "p99");
    const struct {
        const char *name;
        const dsla_load_pct_t *p;
    } rows[] = {{"TTFT ms", &s->ttft_ms},
                {"TPOT ms", &s->tpot_ms},
                {"E2E ms", &s->e2e_ms},
                {"max token gap ms", &s->max_gap_ms},
                {"send lag ms", &s->send_lag_ms}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        fprintf(f, "  %-28s %10.2f %10.2f %10.2f\n", rows[i].name, rows[i].p->p50, rows[i].p->p90,
                rows[i].p->p99);
    fflush(f);
}

static const char *outcome_name(dsla_load_outcome_t o) {
    switch (o) {
    case DSLA_LOAD_COMPLETED:
        return "completed";
    case DSLA_LOAD_REFUSED:
        return "refused";
    case DSLA_LOAD_ERROR:
        return "error";
    default:
        return "not_sent";
    }
}

dsla_status_t dsla_load_write_timeline(const char *path, const dsla_load_record_t *r, int n) {
    FILE *f = fopen(path, "w");
    if (!f) return dsla_error(DSLA_ERR_IO, "%s: %s", path, strerror(errno));
    fprintf(f, "index,arrival_s,sent_s,ttft_s,tpot_s,e2e_s,max_gap_s,prompt_tokens,"
               "prompt_tokens_served,output_tokens_asked,output_tokens,status,detail\n");
    for (int i = 0; i < n; i++) {
        const dsla_load_record_t *x = &r[i];
        fprintf(f, "%d,%.6f,%.6f,", i, x->arrival_s, x->sent_s);
        if (x->outcome == DSLA_LOAD_COMPLETED) {
            const double t1 =
                x->first_s >= 0 ? x->first_s - x->arrival_s : x->last_s - x->arrival_s;
            fprintf(f, "%.6f,", t1);
            if (x->output_tokens > 1)
                fprintf(f, "%.6f,", tpot_of(x));
            else
                fputc(',', f);
            fprintf(f, "%.6f,%.6f,", x->last_s - x->arrival_s, x->max_gap_s);
        } else {
            fputs(",,,,", f);
        }
        /* detail is ours ("429", "timeout"); commas would break the CSV, so none are written */
        char detail[DSLA_LOAD_DETAIL_MAX];
        snprintf(detail, sizeof detail, "%s", x->detail);
        for (char *p = detail; *p; p++)
            if (*p == ',' || *p == '\n' || *p == '"') *p = ' ';
        fprintf(f, "%d,%d,%d,%d,%s,%s\n", x->prompt_tokens, x->prompt_tokens_served,
                x->output_tokens_asked, x->output_tokens, outcome_name(x->outcome), detail);
    }
    const bool ok = !ferror(f);
    if (fclose(f) != 0 || !ok) return dsla_error(DSLA_ERR_IO, "%s: write failed", path);
    return DSLA_OK;
}

/* Load-test workloads (runtime/serve/workload.h) and their report (load_report.h): CSV traces
 * (header optional, comments, unsorted times, errors naming the line and the field), arrivals
 * whose mean and CV match the asked rate and CV (Poisson and gamma, checked statistically with
 * fixed seeds), lognormal lengths of the asked mean, the rate scale, limits, presets, length
 * specs, determinism, and the summary's counts, goodput and percentiles. */
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/serve/load_report.h"
#include "runtime/serve/workload.h"

static dsla_workload_t parse_ok(const char *text) {
    dsla_workload_t w;
    if (dsla_workload_parse_csv(text, strlen(text), "t.csv", &w) != DSLA_OK)
        fail_msg("%s", dsla_last_error());
    return w;
}

static void parse_fails(const char *text, const char *want) {
    dsla_workload_t w = {(void *)1, 1};
    assert_int_not_equal(dsla_workload_parse_csv(text, strlen(text), "t.csv", &w), DSLA_OK);
    assert_null(w.requests); /* nothing left to free */
    if (!strstr(dsla_last_error(), want)) fail_msg("'%s' lacks '%s'", dsla_last_error(), want);
}

static void test_csv(void **state) {
    (void)state;
    dsla_workload_t w = parse_ok("timestamp,prompt_tokens,output_tokens\r\n"
                                 "# a comment\n"
                                 "100.5, 12, 3\n"
                                 "\n"
                                 "100.0,7,1\n"
                                 "101,5,9"); /* no final newline */
    assert_int_equal(w.n, 3);
    /* shifted to start at 0 and sorted */
    assert_true(w.requests[0].arrival_s == 0.0);
    assert_int_equal(w.requests[0].prompt_tokens, 7);
    assert_true(fabs(w.requests[1].arrival_s - 0.5) < 1e-12);
    assert_int_equal(w.requests[1].prompt_tokens, 12);
    assert_int_equal(w.requests[1].output_tokens, 3);
    assert_true(fabs(w.requests[2].arrival_s - 1.0) < 1e-12);
    dsla_workload_free(&w);
    dsla_workload_free(&w); /* harmless twice */

    w = parse_ok("0,1,1\n0,2,2\n0,3,3\n"); /* no header; ties keep file order */
    for (int i = 0; i < 3; i++)
        assert_int_equal(w.requests[i].prompt_tokens, i + 1);
    dsla_workload_free(&w);

    parse_fails("timestamp,prompt_tokens,output_tokens\n0,5,5\n1,x,5\n",
                "t.csv:3: field 2 (prompt_tokens) is 'x'");
    parse_fails("0,5,5\n1,5,0\n", "t.csv:2: field 3 (output_tokens) is '0'");
    parse_fails("0,5,5\n1,5.5,3\n", "t.csv:2: field 2 (prompt_tokens) is '5.5'");
    parse_fails("-1,5,5\n", "t.csv:1: field 1 (timestamp) is '-1'");
    parse_fails("abc,5,5\n", "t.csv:1: field 1 (timestamp)");
    parse_fails("0,5\n", "t.csv:1: 2 fields");
    parse_fails("0,5,5,5\n", "t.csv:1: more than 3 fields");
    parse_fails("0,5,99999999\n", "field 3 (output_tokens)");
    parse_fails("timestamp,prompt_tokens,output_tokens\n", "no requests");
    parse_fails("", "no requests");
}

static void test_csv_file(void **state) {
    (void)state;
    char *dir = dsla_test_tempdir();
    char path[512];
    snprintf(path, sizeof path, "%s/trace.csv", dir);
    dsla_test_write_file(path, "0,4,2\n0.25,8,4\n", 15);
    dsla_workload_t w;
    assert_int_equal(dsla_workload_load_csv(path, &w), DSLA_OK);
    assert_int_equal(w.n, 2);
    dsla_workload_scale(&w, 2.0); /* twice the rate: half the gaps */
    assert_true(fabs(w.requests[1].arrival_s - 0.125) < 1e-12);
    dsla_workload_free(&w);
    snprintf(path, sizeof path, "%s/absent.csv", dir);
    assert_int_equal(dsla_workload_load_csv(path, &w), DSLA_ERR_NOT_FOUND);
    assert_non_null(strstr(dsla_last_error(), "absent.csv"));
    assert_int_not_equal(dsla_workload_load_csv(dir, &w), DSLA_OK); /* a directory */
    dsla_test_rmtree(dir);
    free(dir);
}

/* Mean and CV of the inter-arrival times of n draws. */
static void gap_stats(const dsla_workload_t *w, double *mean, double *cv) {
    double sum = 0, sq = 0, prev = 0;
    for (int i = 0; i < w->n; i++) {
        const double g = w->requests[i].arrival_s - prev;
        prev = w->requests[i].arrival_s;
        sum += g;
        sq += g * g;
    }
    *mean = sum / w->n;
    *cv = sqrt(sq / w->n - *mean * *mean) / *mean;
}

static void test_arrivals(void **state) {
    (void)state;
    enum { N = 40000 };
    /* With 40000 gaps the sample mean's relative error is cv/sqrt(N) (0.5% at cv 1, 1% at cv 2);
     * the CV's is about that too: 3% bounds hold far beyond 3 sigma for these fixed seeds. */
    const double cvs[] = {1.0, 2.0, 0.5, 4.0};
    for (size_t k = 0; k < sizeof cvs / sizeof cvs[0]; k++) {
        dsla_workload_spec_t spec = {.rate = 20.0, .cv = cvs[k], .max_requests = N, .seed = 7 + k};
        spec.prompt = spec.output = (dsla_length_dist_t){DSLA_LENGTH_FIXED, 10, 10, 1, 0};
        dsla_workload_t w;
        assert_int_equal(dsla_workload_generate(&spec, &w), DSLA_OK);
        assert_int_equal(w.n, N);
        double mean, cv;
        gap_stats(&w, &mean, &cv);
        const double tol = cvs[k] > 2 ? 0.06 : 0.03;
        if (fabs(mean * 20.0 - 1.0) > tol || fabs(cv / cvs[k] - 1.0) > tol)
            fail_msg("cv %g: mean gap %g (want 0.05), cv %g", cvs[k], mean, cv);
        dsla_workload_free(&w);
    }
}

/* A ramp 0.5x -> 4x -> 0.5x of 100/s: each 10 s window holds the profile's integral over it
 * (within 5 sigma of Poisson noise), and nothing arrives after the last point's time when the
 * duration is the profile's. Bad profiles name the option and the point. */
static void test_rate_profile(void **state) {
    (void)state;
    dsla_workload_options_t o = {.rate = 100, .rate_profile = "0:0.5,60:4,120:0.5", .seed = 3};
    dsla_workload_t w;
    char desc[512];
    assert_int_equal(dsla_workload_build(&o, &w, desc, sizeof desc, NULL), DSLA_OK);
    assert_non_null(strstr(desc, "profile 0:0.5,60:4,120:0.5"));
    dsla_rate_profile_t p;
    assert_int_equal(dsla_rate_profile_parse(o.rate_profile, "--rate-profile", &p), DSLA_OK);
    assert_true(fabs(dsla_rate_profile_at(&p, 30) - 2.25) < 1e-12);
    assert_true(fabs(dsla_rate_profile_at(&p, 500) - 0.5) < 1e-12);
    int counts[12] = {0};
    for (int i = 0; i < w.n; i++) {
        assert_true(w.requests[i].arrival_s < 120.0);
        counts[(int)(w.requests[i].arrival_s / 10)]++;
    }
    for (int k = 0; k < 12; k++) {
        const double want =
            100 * 5 * (dsla_rate_profile_at(&p, 10 * k) + dsla_rate_profile_at(&p, 10 * k + 10));
        if (fabs(counts[k] - want) > 5 * sqrt(want))
            fail_msg("window %d: %d arrivals, want %g", k, counts[k], want);
    }
    dsla_workload_free(&w);
    const char *bad[] = {"0:1", "1:1,2:2", "0:1,0:2", "0:1,5:-1", "0:1,x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(dsla_rate_profile_parse(bad[i], "--rate-profile", &p),
                         DSLA_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(dsla_last_error(), "--rate-profile"));
    }
}

static void test_determinism_scale_limit(void **state) {
    (void)state;
    dsla_workload_spec_t spec = {.rate = 5.0, .cv = 1.5, .duration_s = 20.0, .seed = 42};
    assert_int_equal(dsla_length_parse("lognormal:300:0.5", "--prompt-len", &spec.prompt), DSLA_OK);
    assert_int_equal(dsla_length_parse("4:64", "--output-len", &spec.output), DSLA_OK);
    dsla_workload_t a, b;
    assert_int_equal(dsla_workload_generate(&spec, &a), DSLA_OK);
    assert_int_equal(dsla_workload_generate(&spec, &b), DSLA_OK);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.requests, b.requests, (size_t)a.n * sizeof *a.requests);
    assert_true(a.requests[a.n - 1].arrival_s < 20.0);
    for (int i = 0; i < a.n; i++)
        assert_true(a.requests[i].output_tokens >= 4 && a.requests[i].output_tokens <= 64);
    /* a scale of 2 halves every arrival time */
    spec.scale = 2.0;
    dsla_workload_t c;
    assert_int_equal(dsla_workload_generate(&spec, &c), DSLA_OK);
    assert_int_equal(c.n, a.n);
    for (int i = 0; i < a.n; i++)
        assert_true(fabs(c.requests[i].arrival_s - a.requests[i].arrival_s / 2) < 1e-12);
    dsla_workload_limit(&c, 5.0, 0);
    assert_true(c.n > 0 && c.requests[c.n - 1].arrival_s < 5.0);
    dsla_workload_limit(&c, 0, 3);
    assert_int_equal(c.n, 3);
    /* fit: outputs to half the context, then prompts to the rest */
    c.requests[0].prompt_tokens = 1000, c.requests[0].output_tokens = 10;
    c.requests[1].prompt_tokens = 10, c.requests[1].output_tokens = 1000;
    c.requests[2].prompt_tokens = 10, c.requests[2].output_tokens = 10;
    assert_int_equal(dsla_workload_fit(&c, 256), 2);
    assert_int_equal(c.requests[0].prompt_tokens, 246);
    assert_int_equal(c.requests[1].output_tokens, 128);
    assert_int_equal(c.requests[2].prompt_tokens, 10);
    dsla_workload_free(&a);
    dsla_workload_free(&b);
    dsla_workload_free(&c);
    spec.duration_s = 0;
    assert_int_equal(dsla_workload_generate(&spec, &a), DSLA_ERR_INVALID_ARGUMENT);
    spec.max_requests = 5, spec.rate = 0;
    assert_int_equal(dsla_workload_generate(&spec, &a), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "rate"));
}

static void test_lengths(void **state) {
    (void)state;
    enum { N = 50000 };
    /* lognormal mean 1200, sigma 1: the sample mean's relative error is sqrt(e - 1)/sqrt(N) =
     * 0.6%; 3% is far outside it. Unclamped so that the mean is the asked one. */
    dsla_length_dist_t d;
    assert_int_equal(dsla_length_parse("lognormal:1200:1.0", "--prompt-len", &d), DSLA_OK);
    uint64_t rng = 3;
    double sum = 0;
    int lo = 1 << 30, hi = 0;
    for (int i = 0; i < N; i++) {
        const int x = dsla_length_draw(&d, &rng);
        sum += x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    if (fabs(sum / N / 1200.0 - 1.0) > 0.03) fail_msg("lognormal mean %g, want 1200", sum / N);
    assert_true(lo >= 1 && hi > 5000); /* a long tail */
    assert_int_equal(dsla_length_parse("lognormal:1200:1.0:16:2000", "--prompt-len", &d), DSLA_OK);
    for (int i = 0; i < 1000; i++) {
        const int x = dsla_length_draw(&d, &rng);
        assert_true(x >= 16 && x <= 2000);
    }
    assert_int_equal(dsla_length_parse("7:9", "--output-len", &d), DSLA_OK);
    int seen[3] = {0};
    for (int i = 0; i < 3000; i++) {
        const int x = dsla_length_draw(&d, &rng);
        assert_true(x >= 7 && x <= 9);
        seen[x - 7]++;
    }
    assert_true(seen[0] > 900 && seen[1] > 900 && seen[2] > 900);
    assert_int_equal(dsla_length_parse("32", "--output-len", &d), DSLA_OK);
    assert_int_equal(dsla_length_draw(&d, &rng), 32);
    char buf[96];
    dsla_length_format(&d, buf, sizeof buf);
    assert_string_equal(buf, "32");
    const char *bad[] = {"0", "9:3", "x", "1.5", "lognormal:100", "lognormal:100:9", "4:", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(dsla_length_parse(bad[i], "--prompt-len", &d), DSLA_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(dsla_last_error(), "--prompt-len"));
    }
    dsla_workload_spec_t spec = {0};
    assert_int_equal(dsla_workload_preset("chat", &spec), DSLA_OK);
    assert_true(spec.prompt.kind == DSLA_LENGTH_LOGNORMAL && spec.prompt.a == 1200);
    assert_int_equal(dsla_workload_preset("long-doc", &spec), DSLA_OK);
    assert_true(spec.prompt.a == 8000 && spec.output.a == 300);
    assert_int_equal(dsla_workload_preset("nope", &spec), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "chat, long-doc"));
    /* gamma draws: mean shape, variance shape (scale 1), below and above shape 1 */
    const double shapes[] = {0.25, 3.0};
    for (int k = 0; k < 2; k++) {
        double s1 = 0, s2 = 0;
        for (int i = 0; i < N; i++) {
            const double g = dsla_workload_gamma(&rng, shapes[k]);
            s1 += g, s2 += g * g;
        }
        const double mean = s1 / N, var = s2 / N - mean * mean;
        if (fabs(mean / shapes[k] - 1) > 0.03 || fabs(var / shapes[k] - 1) > 0.06)
            fail_msg("gamma(%g): mean %g var %g", shapes[k], mean, var);
    }
}

static void test_report(void **state) {
    (void)state;
    /* 4 requests: two completed (one within the SLO, one whose TTFT is too slow), a refusal and
     * an error; the fifth was never sent and counts with the errors. */
    dsla_load_record_t r[5] = {
        {.arrival_s = 0,
         .sent_s = 0,
         .first_s = 0.1,
         .last_s = 1.0,
         .prompt_tokens = 10,
         .output_tokens_asked = 10,
         .output_tokens = 10,
         .max_gap_s = 0.2,
         .outcome = DSLA_LOAD_COMPLETED},
        {.arrival_s = 1,
         .sent_s = 1.5,
         .first_s = 3.0,
         .last_s = 3.9,
         .prompt_tokens = 10,
         .output_tokens_asked = 20,
         .output_tokens = 10,
         .max_gap_s = 0.3,
         .outcome = DSLA_LOAD_COMPLETED},
        {.arrival_s = 2, .sent_s = 2, .first_s = -1, .last_s = 2.01, .outcome = DSLA_LOAD_REFUSED},
        {.arrival_s = 3, .sent_s = 3, .first_s = -1, .last_s = 3.02, .outcome = DSLA_LOAD_ERROR},
        {.arrival_s = 4, .first_s = -1},
    };
    snprintf(r[2].detail, sizeof r[2].detail, "429");
    snprintf(r[3].detail, sizeof r[3].detail, "a,b"); /* commas must not break the CSV */
    const dsla_load_slo_t slo = {.ttft_s = 0.5, .tpot_s = 0.2};
    dsla_load_summary_t s;
    assert_int_equal(dsla_load_summarize(r, 5, 0, &slo, &s), DSLA_OK);
    assert_int_equal(s.sent, 5);
    assert_int_equal(s.completed, 2);
    assert_int_equal(s.refused, 1);
    assert_int_equal(s.errors, 2);
    assert_int_equal(s.completed + s.refused + s.errors, s.sent);
    assert_int_equal(s.early_stops, 1);
    assert_int_equal(s.met_slo, 1);
    assert_true(fabs(s.elapsed_s - 3.9) < 1e-9); /* the first arrival to the last end */
    assert_true(fabs(s.goodput_rps - 1 / 3.9) < 1e-9);
    assert_true(fabs(s.ttft_ms.p50 - 1050.0) < 1e-6); /* 100 and 2000 ms: the midpoint */
    assert_true(fabs(s.tpot_ms.p50 - 100.0) < 1e-6);  /* 0.9 s over 9 gaps, both */
    assert_true(fabs(s.send_lag_ms.p99 - 1e3 * 0.5 * 0.97) < 1e-6);
    assert_true(fabs(s.max_gap_ms.p50 - 250.0) < 1e-6); /* 0.2 and 0.3 s */
    char *dir = dsla_test_tempdir();
    char path[512];
    snprintf(path, sizeof path, "%s/timeline.csv", dir);
    assert_int_equal(dsla_load_write_timeline(path, r, 5), DSLA_OK);
    char *text = dsla_test_read_file(path, NULL);
    int lines = 0;
    for (char *p = text; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 6);
    assert_non_null(strstr(text, ",refused,429\n"));
    assert_non_null(strstr(text, ",error,a b\n"));
    assert_non_null(strstr(text, "4,4.000000,0.000000,,,,,0,0,0,0,not_sent,\n"));
    free(text);
    /* the JSON line parses and carries the counts */
    snprintf(path, sizeof path, "%s/line.json", dir);
    FILE *f = fopen(path, "w");
    dsla_load_print_json(f, "loadgen", "\"transport\":\"http\"", &s);
    fclose(f);
    json_t *j = dsla_test_load_json(path);
    assert_string_equal(json_string_value(json_object_get(j, "transport")), "http");
    assert_int_equal(json_integer_value(json_object_get(j, "refused")), 1);
    assert_true(json_is_object(json_object_get(j, "ttft_ms")));
    json_decref(j);
    dsla_test_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_csv),          cmocka_unit_test(test_csv_file),
        cmocka_unit_test(test_arrivals),     cmocka_unit_test(test_determinism_scale_limit),
        cmocka_unit_test(test_lengths),      cmocka_unit_test(test_report),
        cmocka_unit_test(test_rate_profile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

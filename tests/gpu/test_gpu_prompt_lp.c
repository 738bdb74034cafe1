/* Prompt logprobs (echo with logprobs) from the serving engine on the GPU backend against the CPU
 * engine's, tinystories-11M-hf in fp32 (weights and KV), on TinyStories text:
 * - a backend whose device logits hold dsla_engine_logit_rows rows and a scoring chunk of 64
 *   tokens: a 300-token prompt (five scoring chunks, sharing steps with another request's
 *   decodes), then, under a hybrid plan (layers 1 and 3 DSLA), a 150-token prompt scored in steps
 *   where the first request still decodes under the all-attention plan, so that the backend runs
 *   two plan groups and scatters a scoring item's 64 rows by item;
 * - a deployment as dsla-serve --device cuda makes it (dsla_serve_backend_cuda_deploy with
 *   max_logit_rows from the engine's config, the GPU's defaults: scoring chunk 512) scoring a
 *   700-token prompt beside a plain request; a deployment of one row per sequence refuses echo
 *   with logprobs, naming the rows.
 * Every prompt position's logprob (and its likeliest alternative's) must be within LP_TOL nats of
 * the CPU's, their mean within LP_MEAN_TOL. Exits 77 without a CUDA device; skips without
 * DSLA_TEST_DATA's model or text. */
#include "tests/unit/serve_harness.h"

#include <math.h>
#include <stdio.h>

#include "kernels/kernels_cuda.h"
#include "runtime/model/llama_cuda.h"
#include "runtime/model/tokenizer.h"
#include "runtime/serve/backend_cuda.h"

#ifdef DSLA_HAVE_CUDA

/* The tolerance: fp32 GPU logits of this model are within 1e-4 relative (norm) of the CPU's
 * (test_gpu_forward's TOL_LOGITS over a prompt and 23 decode steps), and TinyStories text puts
 * logits at magnitudes up to ~20, so one logit can move by ~2e-3 while the log-sum-exp, dominated
 * by the likeliest few, moves by as much: 5e-3 nats per position (a 0.5% change of a probability)
 * bounds that with room for cuBLAS's choice of kernels by row count. The mean over a prompt of
 * hundreds of positions must be ten times tighter, as dsla eval's fp32 perplexity is (0.1%, 1e-3 of
 * the NLL, test_eval_gpu). A wrong row (a scatter off by one, a row of another item) moves
 * logprobs by nats, far beyond both. */
#define LP_TOL 5e-3
#define LP_MEAN_TOL 5e-4

enum { MAX_RUNNING = 4, SCORE_CHUNK = 64, PREFILL_CHUNK = 128, KV_BLOCKS = 1024, MAX_STEPS = 5000 };

static dsla_cuda_stream_t stream;
static dsla_model_t *model;
static dsla_tokenizer_t *tok;
static int32_t *text_ids; /* TinyStories validation text, BOS first */
static size_t n_text_ids;
static long step_no; /* the step the engine is running, for the events' record */

/* What one request streamed: its prompt logprobs, its first token's logprobs, and the step of
 * each token event. */
typedef struct {
    int n_prompt, prompt_events, n_tokens;
    dsla_token_logprobs_t *lp; /* [n_prompt] */
    dsla_token_logprobs_t first;
    long token_step[64];
    bool finished;
    dsla_status_t status;
} sink_t;

static int on_event(void *user, const dsla_stream_event_t *ev) {
    sink_t *s = user;
    if (ev->prompt_logprobs) {
        s->prompt_events++;
        s->n_prompt = ev->n_prompt;
        free(s->lp);
        s->lp = malloc((size_t)ev->n_prompt * sizeof *s->lp);
        if (!s->lp) fail_msg("oom");
        memcpy(s->lp, ev->prompt_logprobs, (size_t)ev->n_prompt * sizeof *s->lp);
    }
    if (ev->token >= 0) {
        if (s->n_tokens == 0 && ev->logprobs) s->first = *ev->logprobs;
        if (s->n_tokens < 64) s->token_step[s->n_tokens] = step_no;
        s->n_tokens++;
    }
    if (ev->finished) {
        s->finished = true;
        s->status = ev->status;
    }
    return 0;
}

/* A request over text_ids[from, from + n) (the first also starting with BOS when from is 0). */
typedef struct {
    size_t from;
    int n_prompt, max_tokens;
    bool score;
} req_t;

static void submit(dsla_engine_t *e, const req_t *q, sink_t *out) {
    if (q->from + (size_t)q->n_prompt > n_text_ids) fail_msg("the text is too short");
    const dsla_request_params_t p = {
        .prompt_ids = text_ids + q->from,
        .n_prompt_ids = q->n_prompt,
        .max_tokens = q->max_tokens,
        .ignore_eos = true,
        .logprobs = true,
        .top_logprobs = 2,
        .prompt_logprobs = q->score,
        .on_event = on_event,
        .user = out,
    };
    harness_ok(dsla_engine_submit(e, &p, NULL), "submit");
}

static void step(dsla_engine_t *e) {
    step_no++;
    harness_ok(dsla_engine_step(e, NULL), "step");
}

static void drain(dsla_engine_t *e) {
    for (long i = 0; !dsla_engine_idle(e); i++) {
        if (i >= MAX_STEPS) fail_msg("engine not idle after %d steps", MAX_STEPS);
        step(e);
    }
}

/* Checks got's prompt logprobs against ref's; returns the worst difference and adds to *sum and
 * *n the absolute differences. */
static double compare(const sink_t *got, const sink_t *ref, const req_t *q, const char *what,
                      double *sum, long *n) {
    if (!got->finished || got->status != DSLA_OK || !ref->finished || ref->status != DSLA_OK)
        fail_msg("%s: finished %d/%d, status %s/%s", what, got->finished, ref->finished,
                 dsla_status_name(got->status), dsla_status_name(ref->status));
    if (!q->score) {
        assert_int_equal(got->prompt_events, 0);
        return 0;
    }
    assert_int_equal(got->prompt_events, 1);
    assert_int_equal(ref->prompt_events, 1);
    assert_int_equal(got->n_prompt, q->n_prompt);
    double worst = 0;
    for (int p = 1; p < q->n_prompt; p++) {
        const dsla_token_logprobs_t *a = &got->lp[p], *b = &ref->lp[p];
        const double d = fabs((double)a->logprob - b->logprob);
        const double dt = fabs((double)a->top_logprobs[0] - b->top_logprobs[0]);
        if (!(d < LP_TOL) || !(dt < LP_TOL))
            fail_msg("%s: prompt position %d (token %d): logprob %.6f on the GPU, %.6f on the CPU; "
                     "likeliest %.6f vs %.6f (tolerance %.0e)",
                     what, p, (int)text_ids[q->from + (size_t)p], a->logprob, b->logprob,
                     a->top_logprobs[0], b->top_logprobs[0], LP_TOL);
        if (d > worst) worst = d;
        *sum += d;
        ++*n;
    }
    /* The first generated token: the last prompt row, as before this change. */
    const double df = fabs((double)got->first.top_logprobs[0] - ref->first.top_logprobs[0]);
    if (!(df < LP_TOL))
        fail_msg("%s: first token's likeliest %.6f vs %.6f", what, got->first.top_logprobs[0],
                 ref->first.top_logprobs[0]);
    return worst;
}

static void sinks_free(sink_t *s, int n) {
    for (int i = 0; i < n; i++)
        free(s[i].lp);
}

/* A: 300 tokens scored (five chunks of 64) beside D0's decodes under plan 1; after step 1 the
 * hybrid plan; C: 150 tokens scored (three chunks) under it while A and D0 decode under plan 1,
 * beside D's plain prefill. */
enum { A, D0, C, D, N_GROUPS_REQ };
static const req_t group_reqs[N_GROUPS_REQ] = {
    [A] = {0, 300, 12, true},
    [D0] = {400, 24, 24, false},
    [C] = {600, 150, 4, true},
    [D] = {900, 30, 4, false},
};

static void run_groups(dsla_engine_t *e, const dsla_plan_t *hybrid, sink_t *out) {
    memset(out, 0, N_GROUPS_REQ * sizeof *out);
    step_no = 0;
    submit(e, &group_reqs[A], &out[A]);
    submit(e, &group_reqs[D0], &out[D0]);
    step(e);
    if (hybrid) harness_ok(dsla_engine_set_plan(e, hybrid), "set plan");
    submit(e, &group_reqs[C], &out[C]);
    submit(e, &group_reqs[D], &out[D]);
    drain(e);
}

static dsla_engine_config_t groups_config(void) {
    dsla_engine_config_t c = dsla_engine_config_default();
    c.max_running = MAX_RUNNING;
    c.kv_blocks = KV_BLOCKS;
    c.prefill_chunk = PREFILL_CHUNK;
    c.score_chunk = SCORE_CHUNK;
    dsla_engine_config_fit(&c);
    return c;
}

static void test_groups_and_chunks(void **state) {
    (void)state;
    const dsla_model_config_t *mc = dsla_model_config(model);
    const dsla_engine_config_t ec = groups_config();
    const int rows = dsla_engine_logit_rows(&ec);
    assert_int_equal(rows, MAX_RUNNING + SCORE_CHUNK);
    dsla_cuda_model_t *g = NULL;
    const dsla_cuda_model_opts_t mo = {
        DSLA_DTYPE_F32, ec.step_tokens, rows, MAX_RUNNING, mc->max_position_embeddings, true};
    harness_ok(dsla_cuda_model_create(&g, model, &mo, stream), "gpu model");
    const bool dsla = dsla_cuda_model_dsla_supported(g);
    const int hybrid_layers[] = {1, 3};
    dsla_plan_t *hybrid = dsla ? harness_plan(model, hybrid_layers, 2, 17) : NULL;

    static sink_t cpu[N_GROUPS_REQ], gpu[N_GROUPS_REQ];
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tok, &ec), "cpu engine");
    run_groups(e, hybrid, cpu);
    dsla_engine_destroy(&e);

    dsla_serve_backend_t *be = NULL;
    const dsla_serve_cuda_opts_t bo = {DSLA_DTYPE_F32, KV_BLOCKS, MAX_RUNNING,
                                       mc->max_position_embeddings, rows};
    harness_ok(dsla_serve_backend_cuda_create(&be, g, &bo), "cuda backend");
    assert_true(be->all_logits);
    assert_int_equal(be->max_logit_rows, rows);
    harness_ok(dsla_engine_create_on(&e, be, tok, &ec), "cuda engine");
    run_groups(e, hybrid, gpu);
    dsla_engine_destroy(&e);
    dsla_serve_backend_destroy(&be);

    double sum = 0, worst = 0;
    long n = 0;
    const char *names[N_GROUPS_REQ] = {"A (300 tokens, plan 1)", "D0", "C (150 tokens, hybrid)",
                                       "D"};
    for (int i = 0; i < N_GROUPS_REQ; i++) {
        const double w = compare(&gpu[i], &cpu[i], &group_reqs[i], names[i], &sum, &n);
        if (w > worst) worst = w;
        assert_int_equal(gpu[i].n_tokens, group_reqs[i].max_tokens);
    }
    if (hybrid) {
        assert_int_equal(gpu[C].n_tokens, cpu[C].n_tokens);
        /* C's three scoring chunks end at the step of its first token: A decoded in one of them
         * (under plan 1), so that step ran two plan groups with C's 64 rows scattered. */
        const long c_end = gpu[C].token_step[0];
        bool overlap = false;
        for (int t = 0; t < gpu[A].n_tokens && t < 64; t++)
            overlap |= gpu[A].token_step[t] >= c_end - 2 && gpu[A].token_step[t] <= c_end;
        if (!overlap)
            fail_msg("A's tokens (steps %ld..%ld) never shared a step with C's scoring (ending "
                     "at step %ld): the scenario no longer mixes plan groups",
                     gpu[A].token_step[0], gpu[A].token_step[gpu[A].n_tokens - 1], c_end);
    }
    printf("prompt logprobs, cuda vs cpu (fp32, scoring chunk %d, %d logit rows a step, %s): "
           "%ld positions, worst |diff| %.2e, mean %.2e nats\n",
           SCORE_CHUNK, rows,
           hybrid ? "a step of two plan groups" : "one plan (no DSLA on this GPU build)", n, worst,
           sum / (double)n);
    if (!(sum / (double)n < LP_MEAN_TOL)) fail_msg("mean |diff| %.3e", sum / (double)n);
    sinks_free(cpu, N_GROUPS_REQ);
    sinks_free(gpu, N_GROUPS_REQ);
    dsla_plan_release(&hybrid);
    dsla_cuda_model_destroy(&g);
}

/* The deployment dsla-serve makes, with the GPU's engine defaults (prefill chunk 2048, scoring
 * chunk 512): a 700-token prompt is two scoring chunks. */
enum { LONG, PLAIN, N_DEPLOY_REQ };
static const req_t deploy_reqs[N_DEPLOY_REQ] = {
    [LONG] = {0, 700, 3, true},
    [PLAIN] = {1000, 40, 6, false},
};

static void run_deploy(dsla_engine_t *e, sink_t *out) {
    memset(out, 0, N_DEPLOY_REQ * sizeof *out);
    step_no = 0;
    for (int i = 0; i < N_DEPLOY_REQ; i++)
        submit(e, &deploy_reqs[i], &out[i]);
    drain(e);
}

static void test_deployed(void **state) {
    (void)state;
    dsla_engine_config_t ec = dsla_engine_config_for(true);
    ec.max_running = 2;
    dsla_engine_config_fit(&ec);
    assert_int_equal(dsla_engine_logit_rows(&ec), 2 + DSLA_ENGINE_SCORE_CHUNK);
    dsla_serve_cuda_deploy_t d = {
        .weight_dtype = DSLA_DTYPE_F32,
        .max_running = ec.max_running,
        .step_tokens = ec.step_tokens,
        .max_context = 1024,
        .margin_bytes = (size_t)1 << 30,
        .max_logit_rows = dsla_engine_logit_rows(&ec),
    };
    static sink_t cpu[N_DEPLOY_REQ], gpu[N_DEPLOY_REQ];
    dsla_engine_t *e = NULL;
    harness_ok(dsla_engine_create(&e, model, tok, &ec), "cpu engine");
    run_deploy(e, cpu);
    dsla_engine_destroy(&e);

    dsla_serve_backend_t *be = NULL;
    dsla_serve_cuda_deployed_t info;
    harness_ok(dsla_serve_backend_cuda_deploy(&be, model, &d, &info), "deploy");
    assert_int_equal(info.max_logit_rows, d.max_logit_rows);
    harness_ok(dsla_engine_create_on(&e, be, tok, &ec), "cuda engine");
    run_deploy(e, gpu);
    dsla_engine_destroy(&e);
    dsla_serve_backend_destroy(&be);
    double sum = 0, worst = 0;
    long n = 0;
    for (int i = 0; i < N_DEPLOY_REQ; i++) {
        const double w = compare(&gpu[i], &cpu[i], &deploy_reqs[i],
                                 i == LONG ? "700 tokens" : "plain", &sum, &n);
        if (w > worst) worst = w;
    }
    printf("deployed (f32, scoring chunk %d, %d logit rows a step): %ld positions, worst |diff| "
           "%.2e, mean %.2e nats\n",
           DSLA_ENGINE_SCORE_CHUNK, info.max_logit_rows, n, worst, sum / (double)n);
    if (!(sum / (double)n < LP_MEAN_TOL)) fail_msg("mean |diff| %.3e", sum / (double)n);
    sinks_free(cpu, N_DEPLOY_REQ);
    sinks_free(gpu, N_DEPLOY_REQ);

    /* One row per sequence (max_logit_rows 0): echo with logprobs is refused, naming the rows. */
    d.max_logit_rows = 0;
    harness_ok(dsla_serve_backend_cuda_deploy(&be, model, &d, &info), "deploy without rows");
    harness_ok(dsla_engine_create_on(&e, be, tok, &ec), "cuda engine");
    sink_t s = {0};
    const dsla_request_params_t p = {.prompt_ids = text_ids,
                                     .n_prompt_ids = 8,
                                     .max_tokens = 1,
                                     .logprobs = true,
                                     .prompt_logprobs = true,
                                     .on_event = on_event,
                                     .user = &s};
    assert_int_equal(dsla_engine_submit(e, &p, NULL), DSLA_ERR_INVALID_ARGUMENT);
    printf("without the rows: %s\n", dsla_last_error());
    assert_non_null(strstr(dsla_last_error(), "logit rows"));
    dsla_engine_destroy(&e);
    dsla_serve_backend_destroy(&be);
    free(s.lp);
}

static int setup(void **state) {
    (void)state;
    char *cfg = dsla_test_data_path("models/tinystories-11M-hf/config.json");
    char *text_path = dsla_test_data_path("data/tinystories_valid.txt");
    if (!cfg || !text_path) {
        free(cfg);
        free(text_path);
        return 0;
    }
    *strrchr(cfg, '/') = '\0';
    model = harness_load_model(cfg);
    harness_ok(dsla_tokenizer_load_dir(&tok, cfg), "tokenizer");
    size_t len = 0;
    char *text = dsla_test_read_file(text_path, &len);
    if (!text) fail_msg("read %s", text_path);
    if (len > 16384) len = 16384; /* ~4K tokens: enough for every prompt */
    while (len > 0 && ((unsigned char)text[len] & 0xC0) == 0x80)
        len--; /* whole UTF-8 characters */
    harness_ok(dsla_tokenizer_encode(tok, text, len, true, &text_ids, &n_text_ids), "encode");
    free(text);
    free(text_path);
    free(cfg);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    free(text_ids);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&model);
    return 0;
}

static void with_data(void (*body)(void **), void **state) {
    if (!model) skip();
    body(state);
}

static void groups_and_chunks(void **state) {
    with_data(test_groups_and_chunks, state);
}

static void deployed(void **state) {
    with_data(test_deployed, state);
}

int main(void) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return DSLA_TEST_SKIP;
    }
    if (dsla_cuda_stream_create(&stream) != DSLA_OK) {
        fprintf(stderr, "stream: %s\n", dsla_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(groups_and_chunks),
        cmocka_unit_test(deployed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

#else

int main(void) {
    fprintf(stderr, "built without CUDA: skipped\n");
    return DSLA_TEST_SKIP;
}

#endif

/* actors/serving_engine: the engine on its own thread, with stories260K on the CPU. Requests
 * submitted from the test's thread stream back in batches, one per step (never two tokens of one
 * request in a batch); greedy tokens equal the engine driven in-process; the engine's refusal
 * comes back as a finished event with its sentence; a cancel mid-stream ends the request
 * "cancelled"; a plan is adopted at a step boundary with the engine's new id; the metrics
 * snapshot follows the steps. Destroying with requests in flight ends them without events. */
#include "tests/testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actors/serving_engine.h"
#include "runtime/core/clock.h"
#include "tests/unit/serve_harness.h"

enum { KEYS = 8, WAIT_MS = 30000, TOKENS = 12 };

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int batches;
    int tokens[KEYS + 1];
    int32_t ids[KEYS + 1][64];
    bool finished[KEYS + 1];
    int ends, order[KEYS + 1]; /* finished events so far; each key's 1-based position among them */
    dsla_serving_event_t end[KEYS + 1];
    char message[KEYS + 1][256];
    bool two_in_a_batch;
    int adoptions;
    dsla_serving_adoption_t adoption;
} t;

static void deliver(void *user, dsla_serving_batch_t *b) {
    (void)user;
    pthread_mutex_lock(&t.mu);
    t.batches++;
    bool seen[KEYS + 1] = {false};
    for (size_t i = 0; i < b->n_events; i++) {
        const dsla_serving_event_t *ev = &b->events[i];
        assert_true(ev->key >= 1 && ev->key <= KEYS);
        if (ev->token >= 0) {
            if (seen[ev->key]) t.two_in_a_batch = true;
            seen[ev->key] = true;
            if (t.tokens[ev->key] < 64) t.ids[ev->key][t.tokens[ev->key]] = ev->token;
            t.tokens[ev->key]++;
        }
        if (ev->finished) {
            t.finished[ev->key] = true;
            t.order[ev->key] = ++t.ends;
            t.end[ev->key] = *ev;
            snprintf(t.message[ev->key], sizeof t.message[0], "%.*s", (int)ev->message_len,
                     b->text + ev->message_off);
        }
    }
    for (size_t i = 0; i < b->n_adoptions; i++) {
        t.adoptions++;
        t.adoption = b->adoptions[i];
    }
    pthread_cond_broadcast(&t.cv);
    pthread_mutex_unlock(&t.mu);
    dsla_serving_batch_free(&b);
}

/* Waits until pred holds (under the lock) or WAIT_MS passes. */
static bool wait_until(bool (*pred)(void *), void *arg) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&t.mu);
    bool ok = true;
    while (!pred(arg))
        if (pthread_cond_timedwait(&t.cv, &t.mu, &deadline) != 0) {
            ok = pred(arg);
            break;
        }
    pthread_mutex_unlock(&t.mu);
    return ok;
}

static bool finished(void *arg) {
    return t.finished[*(int *)arg];
}

static bool started(void *arg) {
    return t.tokens[*(int *)arg] > 0;
}

static bool adopted(void *arg) {
    (void)arg;
    return t.adoptions > 0;
}

static const int32_t prompt[] = {1, 403, 407, 261, 78, 29, 300};

/* The test prompt's ids, or text (len bytes) when text is not NULL, allocated as GENERATE's decode
 * allocates them (the engine frees). */
static void submit_prompt(dsla_serving_engine_t *e, uint64_t key, const char *text, size_t len,
                          int max_tokens) {
    dsla_proto_generate_t g = {
        .max_tokens = max_tokens, .top_p = 1, .ignore_eos = true, .stream = true};
    if (text) {
        char *p = malloc(len + 1);
        memcpy(p, text, len);
        p[len] = '\0';
        g.prompt = p;
        g.prompt_len = len;
    } else {
        int32_t *ids = malloc(sizeof prompt);
        memcpy(ids, prompt, sizeof prompt);
        g.prompt_ids = ids;
        g.n_prompt_ids = 7;
    }
    assert_int_equal(dsla_serving_engine_submit(e, key, &g), DSLA_OK);
    assert_null(g.prompt_ids); /* moved */
    assert_null(g.prompt);
}

static void submit(dsla_serving_engine_t *e, uint64_t key, int max_tokens) {
    submit_prompt(e, key, NULL, 0, max_tokens);
}

/* The test's state afresh, and the model and tokenizer of stories260K (dir to free). */
static char *setup(dsla_model_t **m, dsla_tokenizer_t **tok) {
    char *dir = dsla_test_data_or_skip("models/stories260K-hf");
    *m = harness_load_model(dir);
    *tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(tok, dir), "tokenizer");
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    pthread_cond_init(&t.cv, NULL);
    return dir;
}

static void test_engine_thread(void **state) {
    (void)state;
    dsla_model_t *m = NULL;
    dsla_tokenizer_t *tok = NULL;
    char *dir = setup(&m, &tok);

    /* the in-process reference first: the engine thread then owns the model */
    harness_request_t q = {.n_prompt = 7, .max_tokens = TOKENS, .ignore_eos = true};
    memcpy(q.prompt, prompt, sizeof prompt);
    dsla_engine_config_t cfg = dsla_engine_config_default();
    harness_stream_t *want = calloc(1, sizeof *want);
    harness_run_solo(m, tok, &cfg, NULL, &q, want);

    dsla_engine_t *engine = NULL;
    harness_ok(dsla_engine_create(&engine, m, tok, &cfg), "engine");
    dsla_serving_engine_t *e = NULL;
    dsla_serving_engine_config_t ec = {.deliver = deliver, .cuda_device = -1};
    harness_ok(dsla_serving_engine_create(&e, &engine, &ec), "engine thread");
    assert_null(engine);
    dsla_engine_metrics_t snap;
    dsla_serving_engine_metrics(e, &snap);
    assert_int_equal(snap.plan_id, 1);

    for (uint64_t k = 1; k <= 4; k++)
        submit(e, k, TOKENS);
    submit(e, 5, 100000); /* beyond the context */
    for (int k = 1; k <= 5; k++)
        assert_true(wait_until(finished, &k));
    pthread_mutex_lock(&t.mu);
    assert_false(t.two_in_a_batch);
    assert_true(t.batches >= TOKENS);
    for (int k = 1; k <= 4; k++) {
        assert_int_equal(t.tokens[k], TOKENS);
        assert_int_equal(t.end[k].status, DSLA_OK);
        assert_int_equal(t.end[k].finish, DSLA_FINISH_LENGTH);
        assert_memory_equal(t.ids[k], want->ids, sizeof(int32_t) * TOKENS);
    }
    assert_int_equal(t.end[5].status, DSLA_ERR_INVALID_ARGUMENT);
    if (!strstr(t.message[5], "max_tokens"))
        fail_msg("the refusal says '%s', not the engine's sentence", t.message[5]);
    pthread_mutex_unlock(&t.mu);
    dsla_serving_engine_metrics(e, &snap);
    assert_true(snap.requests_finished >= 4);
    assert_true(snap.steps >= TOKENS);

    /* cancel mid-stream */
    int k6 = 6;
    submit(e, 6, 400);
    assert_true(wait_until(started, &k6));
    assert_int_equal(dsla_serving_engine_cancel(e, 6), DSLA_OK);
    assert_int_equal(dsla_serving_engine_cancel(e, 99), DSLA_OK); /* unknown: ignored */
    assert_true(wait_until(finished, &k6));
    assert_int_equal(t.end[6].finish, DSLA_FINISH_CANCELLED);
    assert_true(t.tokens[6] < 400);

    /* a plan, adopted at a step boundary */
    const int layers[] = {1};
    dsla_plan_t *plan = harness_plan(m, layers, 1, 7);
    assert_int_equal(dsla_serving_engine_set_plan(e, 77, &plan), DSLA_OK);
    assert_null(plan);
    assert_true(wait_until(adopted, NULL));
    assert_int_equal(t.adoption.token, 77);
    assert_int_equal(t.adoption.status, DSLA_OK);
    assert_int_equal(t.adoption.plan_id, 2);

    /* destroyed with a request running: no event after, nothing leaks */
    submit(e, 7, 400);
    int k7 = 7;
    assert_true(wait_until(started, &k7));
    dsla_serving_engine_destroy(&e);
    assert_false(t.finished[7]);

    free(want);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&m);
    free(dir);
}

/* Long prompts are tokenised off the engine thread (issue 10: prompts tokenised on the serving
 * thread starved small requests, 8-token TTFT 29 s): five 1 MiB text prompts submitted first, an
 * 8-token request after them; the small one finishes before the last big one has even been refused
 * (its prompt, once tokenised, exceeds the context), which cannot happen when the engine thread
 * tokenises its inbox in order. A request cancelled while it waits for the tokenizer ends
 * "cancelled" without being run. */
enum { BIG = 1 << 20, SMALL_TOKENS = 8 };

static void test_long_prompts_tokenised_aside(void **state) {
    (void)state;
    dsla_model_t *m = NULL;
    dsla_tokenizer_t *tok = NULL;
    char *dir = setup(&m, &tok);

    dsla_engine_config_t cfg = dsla_engine_config_default();
    dsla_engine_t *engine = NULL;
    harness_ok(dsla_engine_create(&engine, m, tok, &cfg), "engine");
    dsla_serving_engine_t *e = NULL;
    dsla_serving_engine_config_t ec = {.deliver = deliver, .cuda_device = -1, .tokenizer = tok};
    harness_ok(dsla_serving_engine_create(&e, &engine, &ec), "engine thread");

    char *big = malloc(BIG);
    uint64_t rng = 7;
    for (int i = 0; i < BIG; i++) /* words of 1..8 letters */
        big[i] = (dsla_test_rand_u64(&rng) & 7) == 0 ? ' ' : (char)('a' + (int)(rng >> 40) % 26);
    const char small[] = "Once upon a time";
    const uint64_t t0 = dsla_clock_ms();
    submit_prompt(e, 1, big, BIG, 8);
    submit_prompt(e, 3, big, BIG, 8); /* waits behind key 1 for the tokenizer: cancelled there */
    for (uint64_t k = 4; k <= 7; k++)
        submit_prompt(e, k, big, BIG, 8);
    submit_prompt(e, 2, small, sizeof small - 1, SMALL_TOKENS);
    assert_int_equal(dsla_serving_engine_cancel(e, 3), DSLA_OK);
    for (int k = 1; k <= 7; k++)
        assert_true(wait_until(finished, &k));
    print_message("small request done at position %d of 7, the last big prompt refused at %d; "
                  "%llu ms in all\n",
                  t.order[2], t.order[7], (unsigned long long)(dsla_clock_ms() - t0));

    pthread_mutex_lock(&t.mu);
    /* the small one ran whole while the big ones were still being tokenised (the first of them
     * may be done before it: the tokenizer thread and the engine's share the cores) */
    assert_int_equal(t.end[2].status, DSLA_OK);
    assert_int_equal(t.tokens[2], SMALL_TOKENS);
    if (!(t.order[2] < t.order[7]))
        fail_msg("the 8-token request ended after the last 1 MiB prompt (positions %d, %d)",
                 t.order[2], t.order[7]);
    /* the big ones, tokenised aside, meet the engine's own checks */
    const int bigs[] = {1, 4, 5, 6, 7};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(t.end[bigs[i]].status, DSLA_ERR_INVALID_ARGUMENT);
        if (!strstr(t.message[bigs[i]], "context"))
            fail_msg("the refusal says '%s', not the engine's sentence", t.message[bigs[i]]);
    }
    /* cancelled while waiting for the tokenizer: ended, never run */
    assert_int_equal(t.end[3].status, DSLA_OK);
    assert_int_equal(t.end[3].finish, DSLA_FINISH_CANCELLED);
    assert_int_equal(t.tokens[3], 0);
    pthread_mutex_unlock(&t.mu);

    /* destroyed with a long prompt waiting for the tokenizer: nothing leaks */
    submit_prompt(e, 8, big, BIG, 8);
    dsla_serving_engine_destroy(&e);

    free(big);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&m);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_thread),
        cmocka_unit_test(test_long_prompts_tokenised_aside),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

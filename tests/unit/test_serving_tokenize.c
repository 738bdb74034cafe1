/* Long prompts are tokenised off the engine thread (issue 10: prompts tokenised on the serving
 * thread starved small requests, 8-token TTFT 29 s). With stories260K on the CPU: five 1 MiB
 * text prompts submitted first, an 8-token request after them; the small one finishes before the
 * last big one has even been refused (its prompt, once tokenised, exceeds the context), which
 * cannot happen when the engine thread tokenises its inbox in order. A request cancelled while it
 * waits for the tokenizer ends "cancelled" without being run. */
#include "tests/testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actors/serving_engine.h"
#include "runtime/core/clock.h"
#include "tests/unit/serve_harness.h"

enum { KEYS = 8, WAIT_MS = 120000, BIG = 1 << 20, SMALL_TOKENS = 8 };

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ends;            /* finished events so far */
    int order[KEYS + 1]; /* 1-based position of each key's finished event; 0: not yet */
    int tokens[KEYS + 1];
    dsla_serving_event_t end[KEYS + 1];
    char message[KEYS + 1][256];
} t;

static void deliver(void *user, dsla_serving_batch_t *b) {
    (void)user;
    pthread_mutex_lock(&t.mu);
    for (size_t i = 0; i < b->n_events; i++) {
        const dsla_serving_event_t *ev = &b->events[i];
        assert_true(ev->key >= 1 && ev->key <= KEYS);
        if (ev->token >= 0) t.tokens[ev->key]++;
        if (ev->finished) {
            t.order[ev->key] = ++t.ends;
            t.end[ev->key] = *ev;
            snprintf(t.message[ev->key], sizeof t.message[0], "%.*s", (int)ev->message_len,
                     b->text + ev->message_off);
        }
    }
    pthread_cond_broadcast(&t.cv);
    pthread_mutex_unlock(&t.mu);
    dsla_serving_batch_free(&b);
}

static bool wait_ends(int n) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&t.mu);
    while (t.ends < n)
        if (pthread_cond_timedwait(&t.cv, &t.mu, &deadline) != 0) break;
    bool ok = t.ends >= n;
    pthread_mutex_unlock(&t.mu);
    return ok;
}

/* A text prompt, allocated as GENERATE's decode allocates it (the engine frees it). */
static void submit_text(dsla_serving_engine_t *e, uint64_t key, const char *text, size_t len,
                        int max_tokens) {
    char *p = malloc(len + 1);
    memcpy(p, text, len);
    p[len] = '\0';
    dsla_proto_generate_t g = {.prompt = p,
                               .prompt_len = len,
                               .max_tokens = max_tokens,
                               .top_p = 1,
                               .ignore_eos = true,
                               .stream = true};
    assert_int_equal(dsla_serving_engine_submit(e, key, &g), DSLA_OK);
    assert_null(g.prompt); /* moved */
}

static void test_long_prompts_tokenised_aside(void **state) {
    (void)state;
    char *dir = dsla_test_data_or_skip("models/stories260K-hf");
    dsla_model_t *m = harness_load_model(dir);
    dsla_tokenizer_t *tok = NULL;
    harness_ok(dsla_tokenizer_load_dir(&tok, dir), "tokenizer");
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    pthread_cond_init(&t.cv, NULL);

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
    submit_text(e, 1, big, BIG, 8);
    submit_text(e, 3, big, BIG, 8); /* waits behind key 1 for the tokenizer: cancelled there */
    for (uint64_t k = 4; k <= 7; k++)
        submit_text(e, k, big, BIG, 8);
    submit_text(e, 2, small, sizeof small - 1, SMALL_TOKENS);
    assert_int_equal(dsla_serving_engine_cancel(e, 3), DSLA_OK);
    assert_true(wait_ends(7));
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
    submit_text(e, 8, big, BIG, 8);
    dsla_serving_engine_destroy(&e);

    free(big);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&m);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_long_prompts_tokenised_aside),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* runtime/model/sampler: greedy, reproducibility, top-k / top-p limits, and the sampled
 * distribution. */
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "runtime/model/sampler.h"

enum { VOCAB = 300 };

static uint64_t rng;

static int setup(void **state) {
    (void)state;
    rng = dsla_test_seed();
    return 0;
}

static void random_logits(float *logits, int n, float scale) {
    for (int i = 0; i < n; i++)
        logits[i] = dsla_test_rand_normal(&rng) * scale;
}

static dsla_sampler_t *make(float temperature, int top_k, float top_p, uint64_t seed, int vocab) {
    dsla_sampler_params_t p = {
        .temperature = temperature, .top_k = top_k, .top_p = top_p, .seed = seed};
    dsla_sampler_t *s = NULL;
    assert_int_equal(dsla_sampler_create(&s, &p, vocab), DSLA_OK);
    return s;
}

static void test_greedy_and_its_equivalents(void **state) {
    (void)state;
    dsla_sampler_t *greedy = make(0.0f, 0, 1.0f, 1, VOCAB);
    dsla_sampler_t *top1 = make(1.0f, 1, 1.0f, 2, VOCAB);
    dsla_sampler_t *tiny_p = make(0.8f, 0, 1e-6f, 3, VOCAB);
    dsla_sampler_t *tiny_p_k = make(0.8f, 50, 1e-6f, 4, VOCAB);
    float logits[VOCAB];
    for (int trial = 0; trial < 200; trial++) {
        random_logits(logits, VOCAB, 3.0f);
        int want = dsla_cpu_argmax(logits, VOCAB);
        assert_int_equal(dsla_sampler_sample(greedy, logits), want);
        assert_int_equal(dsla_sampler_sample(top1, logits), want);
        assert_int_equal(dsla_sampler_sample(tiny_p, logits), want);
        assert_int_equal(dsla_sampler_sample(tiny_p_k, logits), want);
    }
    dsla_sampler_destroy(&greedy);
    dsla_sampler_destroy(&top1);
    dsla_sampler_destroy(&tiny_p);
    dsla_sampler_destroy(&tiny_p_k);
    assert_null(greedy);
    dsla_sampler_destroy(&greedy); /* harmless twice */
}

static void test_seed_reproducibility(void **state) {
    (void)state;
    float logits[VOCAB];
    random_logits(logits, VOCAB, 1.0f);
    dsla_sampler_t *a = make(1.0f, 40, 0.9f, 1234, VOCAB), *b = make(1.0f, 40, 0.9f, 1234, VOCAB);
    dsla_sampler_t *c = make(1.0f, 40, 0.9f, 1235, VOCAB);
    int32_t first[64];
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        first[i] = dsla_sampler_sample(a, logits);
        assert_int_equal(first[i], dsla_sampler_sample(b, logits));
        differ += first[i] != dsla_sampler_sample(c, logits);
        assert_true(first[i] >= 0 && first[i] < VOCAB);
    }
    assert_true(differ > 0);
    dsla_sampler_reseed(a, 1234);
    for (int i = 0; i < 64; i++)
        assert_int_equal(dsla_sampler_sample(a, logits), first[i]);
    dsla_sampler_destroy(&a);
    dsla_sampler_destroy(&b);
    dsla_sampler_destroy(&c);
}

/* Draws never leave the top-k set, nor the nucleus. */
static void test_top_k_top_p_support(void **state) {
    (void)state;
    const float logits[6] = {2.0f, 1.0f, 0.5f, 3.0f, -1.0f, 0.0f};
    /* probabilities at T=1: id3 .605, id0 .223, id1 .082, id2 .050, id5 .030, id4 .011 */
    dsla_sampler_t *k2 = make(1.0f, 2, 1.0f, 7, 6), *p85 = make(1.0f, 0, 0.85f, 8, 6);
    dsla_sampler_t *k3p = make(1.0f, 3, 0.9f, 9, 6);
    int seen_k2[6] = {0}, seen_p85[6] = {0}, seen_k3p[6] = {0};
    for (int i = 0; i < 4000; i++) {
        seen_k2[dsla_sampler_sample(k2, logits)]++;
        seen_p85[dsla_sampler_sample(p85, logits)]++;
        seen_k3p[dsla_sampler_sample(k3p, logits)]++;
    }
    /* top-2: {3, 0}; top-p 0.85: .605 + .223 = .828 < .85, so {3, 0, 1}; top-3 renormalised to
     * {.665, .245, .090}, then top-p 0.9 keeps {3, 0} (.910 >= .9). */
    for (int id = 0; id < 6; id++) {
        assert_true((seen_k2[id] > 0) == (id == 3 || id == 0));
        assert_true((seen_p85[id] > 0) == (id == 3 || id == 0 || id == 1));
        assert_true((seen_k3p[id] > 0) == (id == 3 || id == 0));
    }
    dsla_sampler_destroy(&k2);
    dsla_sampler_destroy(&p85);
    dsla_sampler_destroy(&k3p);
}

/* Counts over many draws against softmax(logits / T): Pearson chi-square with 7 degrees of freedom
 * stays far below 40 (p < 1e-5) for a correct sampler; a wrong temperature gives thousands. */
static void test_temperature_distribution(void **state) {
    (void)state;
    enum { N = 8, DRAWS = 40000 };
    const float logits[N] = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f, 1.5f, -0.5f, 0.25f};
    const float temps[] = {0.5f, 1.0f, 2.0f};
    for (size_t ti = 0; ti < sizeof temps / sizeof temps[0]; ti++) {
        dsla_sampler_t *s = make(temps[ti], 0, 1.0f, 42 + ti, N);
        int counts[N] = {0};
        for (int i = 0; i < DRAWS; i++)
            counts[dsla_sampler_sample(s, logits)]++;
        double p[N], sum = 0.0, chi2 = 0.0;
        for (int i = 0; i < N; i++)
            sum += p[i] = exp(logits[i] / temps[ti]);
        for (int i = 0; i < N; i++) {
            double expected = DRAWS * p[i] / sum;
            chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
        }
        if (chi2 > 40.0)
            fail_msg("temperature %g: chi-square %g over %d draws", temps[ti], chi2, DRAWS);
        dsla_sampler_destroy(&s);
    }
}

static void test_invalid_parameters(void **state) {
    (void)state;
    dsla_sampler_params_t p = {.temperature = NAN, .top_p = 1.0f};
    dsla_sampler_t *s = NULL;
    assert_int_equal(dsla_sampler_create(&s, &p, 10), DSLA_ERR_INVALID_ARGUMENT);
    assert_null(s);
    p.temperature = 1.0f;
    assert_int_equal(dsla_sampler_create(&s, &p, 0), DSLA_ERR_INVALID_ARGUMENT);
}

static dsla_sampler_t *make_p(dsla_sampler_params_t p, int vocab) {
    dsla_sampler_t *s = NULL;
    assert_int_equal(dsla_sampler_create(&s, &p, vocab), DSLA_OK);
    return s;
}

/* logit_bias, the penalties and min_p on hand-computed cases. */
static void test_bias_penalties_min_p(void **state) {
    (void)state;
    /* bias: +5 on token 0 makes it the argmax; -100 on token 2 leaves token 1 */
    const float l3[3] = {0, 1, 2};
    const int32_t ids[2] = {0, 2};
    const float up[2] = {5, 0}, down[2] = {0, -100};
    dsla_sampler_t *s =
        make_p((dsla_sampler_params_t){.bias_ids = ids, .bias_values = up, .n_bias = 2}, 3);
    assert_int_equal(dsla_sampler_sample(s, l3), 0);
    dsla_sampler_destroy(&s);
    s = make_p((dsla_sampler_params_t){.bias_ids = ids, .bias_values = down, .n_bias = 2}, 3);
    assert_int_equal(dsla_sampler_sample(s, l3), 1);
    dsla_sampler_destroy(&s);

    /* repetition 2: a seen positive logit 2.0 becomes 1.0 (< 1.5); a seen negative -1 becomes -2 */
    const float pos[2] = {2.0f, 1.5f}, neg[2] = {-1.0f, -1.5f};
    s = make_p((dsla_sampler_params_t){.repetition_penalty = 2.0f}, 2);
    assert_int_equal(dsla_sampler_sample(s, pos), 0);
    dsla_sampler_observe(s, 0, false); /* a prompt token counts for repetition */
    assert_int_equal(dsla_sampler_sample(s, pos), 1);
    assert_int_equal(dsla_sampler_sample(s, neg), 1);
    dsla_sampler_destroy(&s);

    /* frequency 0.1: token 0 generated 3 times, 1.0 - 0.3 = 0.7 < 0.8 */
    const float near[2] = {1.0f, 0.8f};
    s = make_p((dsla_sampler_params_t){.frequency_penalty = 0.1f}, 2);
    dsla_sampler_observe(s, 0, true);
    dsla_sampler_observe(s, 0, true);
    assert_int_equal(dsla_sampler_sample(s, near), 0); /* 0.8 vs 0.8: the lower id */
    dsla_sampler_observe(s, 0, true);
    assert_int_equal(dsla_sampler_sample(s, near), 1);
    dsla_sampler_destroy(&s);
    /* presence 0.3: once generated is enough; a prompt token is not "present" */
    s = make_p((dsla_sampler_params_t){.presence_penalty = 0.3f}, 2);
    dsla_sampler_observe(s, 0, false);
    assert_int_equal(dsla_sampler_sample(s, near), 0);
    dsla_sampler_observe(s, 0, true);
    assert_int_equal(dsla_sampler_sample(s, near), 1);
    dsla_sampler_destroy(&s);

    /* min_p over probabilities {0.5, 0.3, 0.2}: 0.5 keeps tokens >= 0.25 (0 and 1, about 5:3),
     * 0.7 only token 0 */
    const float l[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    s = make_p(
        (dsla_sampler_params_t){.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.5f, .seed = 3}, 3);
    int hits[3] = {0};
    for (int i = 0; i < 4000; i++)
        hits[dsla_sampler_sample(s, l)]++;
    assert_int_equal(hits[2], 0);
    assert_true(hits[0] > 2300 && hits[0] < 2700); /* 2500 expected */
    dsla_sampler_destroy(&s);
    s = make_p(
        (dsla_sampler_params_t){.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.7f, .seed = 4}, 3);
    for (int i = 0; i < 100; i++)
        assert_int_equal(dsla_sampler_sample(s, l), 0);
    dsla_sampler_destroy(&s);

    /* refusals name the field and the limit */
    dsla_sampler_params_t bad = {.bias_ids = (const int32_t[]){3}, .bias_values = up, .n_bias = 1};
    assert_int_equal(dsla_sampler_create(&s, &bad, 3), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(
        strstr(dsla_last_error(), "logit_bias: token 3 is outside the vocabulary of 3"));
    bad = (dsla_sampler_params_t){.min_p = 1.5f};
    assert_int_equal(dsla_sampler_create(&s, &bad, 3), DSLA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(dsla_last_error(), "min_p 1.5 must be in [0, 1]"));
}

/* Hand-computed: logits {1, 2, 3, 2} have log-sum-exp log(e + 2e^2 + e^3); the top 2 are id 2
 * and, of the tie at 2, the lower id 1. */
static void test_logprobs(void **state) {
    (void)state;
    const float logits[4] = {1, 2, 3, 2};
    const double lse = log(exp(1.0) + 2 * exp(2.0) + exp(3.0));
    dsla_token_logprobs_t lp;
    dsla_logprobs_compute(logits, 4, 0, 2, &lp);
    assert_float_equal(lp.logprob, 1.0 - lse, 1e-6);
    assert_int_equal(lp.n_top, 2);
    assert_int_equal(lp.top_ids[0], 2);
    assert_int_equal(lp.top_ids[1], 1);
    assert_float_equal(lp.top_logprobs[0], 3.0 - lse, 1e-6);
    assert_float_equal(lp.top_logprobs[1], 2.0 - lse, 1e-6);
    /* n_top clamps to the vocabulary, and the list is in order */
    dsla_logprobs_compute(logits, 4, 3, 50, &lp);
    assert_int_equal(lp.n_top, 4);
    const int32_t want[4] = {2, 1, 3, 0};
    for (int i = 0; i < 4; i++)
        assert_int_equal(lp.top_ids[i], want[i]);
    dsla_logprobs_compute(logits, 4, 3, 0, &lp);
    assert_int_equal(lp.n_top, 0);
    /* a large vocabulary: the top list matches a full sort, and exp of the logprobs sums to 1 */
    enum { V = 1000 };
    float big[V];
    random_logits(big, V, 4.0f);
    dsla_logprobs_compute(big, V, 7, DSLA_LOGPROBS_TOP_MAX, &lp);
    assert_int_equal(lp.n_top, DSLA_LOGPROBS_TOP_MAX);
    for (int j = 1; j < lp.n_top; j++)
        assert_true(lp.top_logprobs[j] <= lp.top_logprobs[j - 1]);
    int above = 0;
    for (int i = 0; i < V; i++)
        above += big[i] > big[lp.top_ids[lp.n_top - 1]];
    assert_int_equal(above, DSLA_LOGPROBS_TOP_MAX - 1);
    double total = 0;
    dsla_token_logprobs_t one;
    for (int i = 0; i < V; i++) {
        dsla_logprobs_compute(big, V, i, 0, &one);
        total += exp((double)one.logprob);
    }
    assert_float_equal(total, 1.0, 1e-4);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_and_its_equivalents),
        cmocka_unit_test(test_seed_reproducibility),
        cmocka_unit_test(test_top_k_top_p_support),
        cmocka_unit_test(test_temperature_distribution),
        cmocka_unit_test(test_invalid_parameters),
        cmocka_unit_test(test_logprobs),
        cmocka_unit_test(test_bias_penalties_min_p),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

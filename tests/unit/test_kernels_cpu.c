/* kernels/cpu: every op against a naive double-precision reference on fresh random inputs, outputs
 * poisoned with NaN before each call so that an unwritten element fails the comparison. */
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

static uint64_t rng;

static int setup(void **state) {
    (void)state;
    rng = dsla_test_seed();
    return 0;
}

static float *random_floats(size_t n, float scale) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = dsla_test_rand_normal(&rng) * scale;
    return p;
}

static float *poisoned(size_t n) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

/* max |got - want| with NaN counting as infinitely wrong. */
static double max_err(const float *got, const double *want, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (isnan(d)) return INFINITY;
        if (d > m) m = d;
    }
    return m;
}

static void test_gemm(void **state) {
    (void)state;
    const int shapes[][3] = {{1, 37, 64}, {1, 5, 1}, {7, 33, 19}, {33, 64, 128}, {128, 172, 64}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        float *x = random_floats((size_t)m * k, 1.0f), *w = random_floats((size_t)n * k, 1.0f);
        float *y = poisoned((size_t)m * n);
        double *ref = malloc((size_t)m * n * sizeof *ref);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double acc = 0.0;
                for (int t = 0; t < k; t++)
                    acc += (double)x[i * k + t] * w[j * k + t];
                ref[i * n + j] = acc;
            }
        dsla_cpu_gemm(y, x, w, m, n, k);
        double err = max_err(y, ref, (size_t)m * n);
        if (err > 1e-5 * sqrt((double)k) * 4) fail_msg("gemm %dx%dx%d: max error %g", m, n, k, err);
        free(x), free(w), free(y), free(ref);
    }
}

static void test_rmsnorm(void **state) {
    (void)state;
    const int rows = 5, dim = 67;
    const float eps = 1e-5f;
    float *x = random_floats((size_t)rows * dim, 3.0f), *w = random_floats(dim, 1.0f);
    float *y = poisoned((size_t)rows * dim);
    double ref[5 * 67];
    for (int r = 0; r < rows; r++) {
        double ss = 0.0;
        for (int i = 0; i < dim; i++)
            ss += (double)x[r * dim + i] * x[r * dim + i];
        double scale = 1.0 / sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++)
            ref[r * dim + i] = x[r * dim + i] * scale * w[i];
    }
    dsla_cpu_rmsnorm(y, x, w, rows, dim, eps);
    assert_true(max_err(y, ref, (size_t)rows * dim) < 1e-5);
    dsla_cpu_rmsnorm(x, x, w, rows, dim, eps); /* in place gives the same */
    assert_true(max_err(x, ref, (size_t)rows * dim) < 1e-5);
    free(x), free(w), free(y);
}

static void test_rope_default(void **state) {
    (void)state;
    enum { D = 16, HALF = D / 2, H = 3, N = 4, STRIDE = H * D + 5 };
    const dsla_rope_params_t p = {.theta = 10000.0f};
    float inv[HALF];
    dsla_cpu_rope_inv_freq(inv, D, &p);
    for (int i = 0; i < HALF; i++)
        assert_true(fabs(inv[i] - pow(10000.0, -2.0 * i / D)) <= 1e-6 * pow(10000.0, -2.0 * i / D));
    const int32_t pos[N] = {0, 1, 17, 211};
    float cos_t[N * HALF], sin_t[N * HALF];
    dsla_cpu_rope_tables(cos_t, sin_t, pos, N, inv, D);
    float *x = random_floats((size_t)N * STRIDE, 1.0f);
    double ref[N * STRIDE];
    for (int r = 0; r < N; r++)
        for (int c = 0; c < STRIDE; c++)
            ref[r * STRIDE + c] = x[r * STRIDE + c];
    for (int r = 0; r < N; r++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < HALF; i++) {
                double angle = (double)pos[r] * inv[i];
                double a = x[r * STRIDE + h * D + i], b = x[r * STRIDE + h * D + i + HALF];
                ref[r * STRIDE + h * D + i] = a * cos(angle) - b * sin(angle);
                ref[r * STRIDE + h * D + i + HALF] = b * cos(angle) + a * sin(angle);
            }
    dsla_cpu_rope_apply(x, N, STRIDE, H, D, cos_t, sin_t);
    /* float angles at position 211 are off by up to half an ulp (~1e-5) */
    double err = max_err(x, ref, (size_t)N * STRIDE);
    if (err > 1e-4) fail_msg("rope max error %g", err);
    free(x);
}

/* Llama-3.1's own settings (theta 500000, head_dim 128, factor 8, low 1, high 4, original 8192),
 * with expected values worked out by hand in double from the transformers formula: i = 0 and 20 are
 * short wavelengths (kept), 29, 30 and 34 fall in the smoothed band, 35 and 63 are long (divided by
 * 8). */
static void test_rope_llama3(void **state) {
    (void)state;
    const dsla_rope_params_t p = {.theta = 500000.0f,
                                  .llama3 = true,
                                  .factor = 8.0f,
                                  .low_freq_factor = 1.0f,
                                  .high_freq_factor = 4.0f,
                                  .original_max_position = 8192};
    float inv[64];
    dsla_cpu_rope_inv_freq(inv, 128, &p);
    const struct {
        int i;
        double want;
    } cases[] = {{0, 1.0},
                 {20, 1.656044008e-02},
                 {29, 2.166570764e-03}, /* smooth 0.803621 */
                 {30, 1.371893568e-03}, /* smooth 0.592849 */
                 {34, 1.785078128e-04}, /* smooth 0.074527 */
                 {35, 9.556212354e-05},
                 {63, 3.068925989e-07}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double got = inv[cases[c].i], want = cases[c].want;
        if (fabs(got - want) > 2e-6 * want)
            fail_msg("llama3 inv_freq[%d] = %.9e, want %.9e", cases[c].i, got, want);
    }
}

static void test_swiglu_add(void **state) {
    (void)state;
    enum { R = 3, N = 41 };
    float *gu = random_floats((size_t)R * 2 * N, 4.0f);
    float *y = poisoned((size_t)R * N);
    double ref[R * N];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < N; j++) {
            double g = gu[r * 2 * N + j], u = gu[r * 2 * N + N + j];
            ref[r * N + j] = g / (1.0 + exp(-g)) * u;
        }
    dsla_cpu_swiglu(y, gu, gu + N, R, N, 2 * N);
    assert_true(max_err(y, ref, (size_t)R * N) < 1e-5);

    float *a = random_floats(N, 1.0f), *b = random_floats(N, 1.0f), *s = poisoned(N);
    double sum[N];
    for (int j = 0; j < N; j++)
        sum[j] = (double)a[j] + b[j];
    dsla_cpu_add(s, a, b, N);
    assert_true(max_err(s, sum, N) < 1e-6);
    free(gu), free(y), free(a), free(b), free(s);
}

static void test_softmax_argmax(void **state) {
    (void)state;
    enum { R = 4, N = 29 };
    float *x = random_floats((size_t)R * N, 10.0f);
    x[N + 3] = 1e4f; /* a row that would overflow exp without the max shift */
    float *y = poisoned((size_t)R * N);
    double ref[R * N];
    for (int r = 0; r < R; r++) {
        double max = -INFINITY, sum = 0.0;
        for (int j = 0; j < N; j++)
            max = fmax(max, x[r * N + j]);
        for (int j = 0; j < N; j++)
            sum += exp(x[r * N + j] - max);
        for (int j = 0; j < N; j++)
            ref[r * N + j] = exp(x[r * N + j] - max) / sum;
    }
    dsla_cpu_softmax(y, x, R, N);
    assert_true(max_err(y, ref, (size_t)R * N) < 1e-6);

    const float ties[] = {1.0f, 3.0f, -2.0f, 3.0f};
    assert_int_equal(dsla_cpu_argmax(ties, 4), 1);
    assert_int_equal(dsla_cpu_argmax(x + N, N), 3);
    assert_int_equal(dsla_cpu_argmax(x, 0), -1);
    free(x), free(y);
}

/* Attention of n_new queries after past cached tokens, cache scattered over shuffled blocks of a
 * pool whose unused blocks are NaN, so a wrong block or slot shows. */
static void check_attention(int H, int Hkv, int d, int past, int n_new) {
    enum { BLOCK = 16 };
    const int ctx = past + n_new, n_blocks = (ctx + BLOCK - 1) / BLOCK, pool_blocks = n_blocks + 3;
    const int kvw = Hkv * d, qw = H * d, q_stride = qw + 3;
    float *k_lin = random_floats((size_t)ctx * kvw, 1.0f),
          *v_lin = random_floats((size_t)ctx * kvw, 1.0f);
    float *q = random_floats((size_t)n_new * q_stride, 1.0f);
    float *k_pool = poisoned((size_t)pool_blocks * BLOCK * kvw);
    float *v_pool = poisoned((size_t)pool_blocks * BLOCK * kvw);
    int32_t *table = malloc((size_t)n_blocks * sizeof *table);
    int32_t *perm = malloc((size_t)pool_blocks * sizeof *perm);
    for (int i = 0; i < pool_blocks; i++)
        perm[i] = i;
    for (int i = pool_blocks - 1; i > 0; i--) {
        int j = (int)(dsla_test_rand_u64(&rng) % (uint64_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int b = 0; b < n_blocks; b++)
        table[b] = perm[b];
    for (int t = 0; t < ctx; t++) {
        size_t slot = ((size_t)table[t / BLOCK] * BLOCK + t % BLOCK) * kvw;
        memcpy(k_pool + slot, k_lin + (size_t)t * kvw, (size_t)kvw * sizeof(float));
        memcpy(v_pool + slot, v_lin + (size_t)t * kvw, (size_t)kvw * sizeof(float));
    }
    const int out_stride = qw + 1;
    float *out = poisoned((size_t)n_new * out_stride);
    float *scores = poisoned((size_t)ctx);
    double *ref = malloc((size_t)n_new * out_stride * sizeof *ref);
    double *p = malloc((size_t)ctx * sizeof *p);
    for (int i = 0; i < n_new; i++) {
        ref[i * out_stride + qw] = NAN; /* the pad column is not written */
        for (int h = 0; h < H; h++) {
            const int kh = h / (H / Hkv), visible = past + i + 1;
            double max = -INFINITY, sum = 0.0;
            for (int t = 0; t < visible; t++) {
                double dot = 0.0;
                for (int j = 0; j < d; j++)
                    dot += (double)q[i * q_stride + h * d + j] * k_lin[t * kvw + kh * d + j];
                p[t] = dot / sqrt((double)d);
                max = fmax(max, p[t]);
            }
            for (int t = 0; t < visible; t++)
                sum += (p[t] = exp(p[t] - max));
            for (int j = 0; j < d; j++) {
                double acc = 0.0;
                for (int t = 0; t < visible; t++)
                    acc += p[t] / sum * v_lin[t * kvw + kh * d + j];
                ref[i * out_stride + h * d + j] = acc;
            }
        }
    }
    const dsla_attn_shape_t shape = {.n_heads = H, .n_kv_heads = Hkv, .head_dim = d};
    const dsla_paged_kv_t kv = {
        .k = k_pool, .v = v_pool, .block_table = table, .block_tokens = BLOCK};
    dsla_cpu_attention(out, out_stride, q, q_stride, n_new, past, &shape, &kv, scores);
    for (int i = 0; i < n_new; i++) {
        double err = max_err(out + i * out_stride, ref + i * out_stride, (size_t)qw);
        if (err > 1e-5)
            fail_msg("attention H=%d Hkv=%d d=%d past=%d n=%d: row %d max error %g", H, Hkv, d,
                     past, n_new, i, err);
        assert_true(isnan(out[i * out_stride + qw]));
    }
    free(k_lin), free(v_lin), free(q), free(k_pool), free(v_pool), free(table), free(perm);
    free(out), free(scores), free(ref), free(p);
}

static void test_attention_gqa(void **state) {
    (void)state;
    check_attention(6, 2, 16, 0, 21); /* prefill over two blocks, 3 query heads per KV head */
    check_attention(6, 2, 16, 37, 5); /* a chunk after an odd cached length, spanning blocks */
    check_attention(8, 4, 8, 50, 1);  /* decode */
    check_attention(4, 4, 32, 15, 2); /* no grouping, crossing a block edge */
    check_attention(8, 1, 8, 0, 1);   /* multi-query, first token */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm),          cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope_default),  cmocka_unit_test(test_rope_llama3),
        cmocka_unit_test(test_swiglu_add),    cmocka_unit_test(test_softmax_argmax),
        cmocka_unit_test(test_attention_gqa),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}

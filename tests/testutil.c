#define _XOPEN_SOURCE 700
#include "testutil.h"

#include "runtime/core/clock.h"

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runtime/core/random.h"

char *dsla_test_data_path(const char *relative) {
    const char *root = getenv("DSLA_TEST_DATA");
    if (!root || !*root) root = "../shared";
    size_t n = strlen(root) + strlen(relative) + 2;
    char *path = malloc(n);
    snprintf(path, n, "%s/%s", root, relative);
    struct stat sb;
    if (stat(path, &sb) != 0) {
        free(path);
        return NULL;
    }
    return path;
}

char *dsla_test_data_or_skip(const char *relative) {
    char *path = dsla_test_data_path(relative);
    if (!path) {
        fprintf(stderr, "skipped: test data %s not found under DSLA_TEST_DATA\n", relative);
        exit(DSLA_TEST_SKIP);
    }
    return path;
}

json_t *dsla_test_load_json(const char *path) {
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) fail_msg("%s:%d: %s", path, err.line, err.text);
    return root;
}

char *dsla_test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size + 1);
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        fclose(f);
        return NULL;
    }
    buf[size] = '\0';
    fclose(f);
    if (len) *len = (size_t)size;
    return buf;
}

void dsla_test_write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot write %s: %s", path, strerror(errno));
    if (fwrite(data, 1, len, f) != len) fail_msg("short write to %s", path);
    fclose(f);
}

char *dsla_test_tempdir(void) {
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    size_t n = strlen(base) + 32;
    char *path = malloc(n);
    snprintf(path, n, "%s/dsla-test-XXXXXX", base);
    if (!mkdtemp(path)) fail_msg("mkdtemp %s: %s", path, strerror(errno));
    return path;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void dsla_test_rmtree(const char *path) {
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void dsla_test_assert_config_equal(const dsla_model_config_t *a, const dsla_model_config_t *b) {
    assert_int_equal(a->hidden_size, b->hidden_size);
    assert_int_equal(a->num_layers, b->num_layers);
    assert_int_equal(a->num_heads, b->num_heads);
    assert_int_equal(a->num_kv_heads, b->num_kv_heads);
    assert_int_equal(a->head_dim, b->head_dim);
    assert_int_equal(a->intermediate_size, b->intermediate_size);
    assert_int_equal(a->vocab_size, b->vocab_size);
    assert_int_equal(a->max_position_embeddings, b->max_position_embeddings);
    assert_true(a->rms_norm_eps == b->rms_norm_eps);
    assert_int_equal(a->tie_word_embeddings, b->tie_word_embeddings);
    assert_int_equal(a->bos_token_id, b->bos_token_id);
    assert_int_equal(a->num_eos_token_ids, b->num_eos_token_ids);
    for (int i = 0; i < a->num_eos_token_ids; i++)
        assert_int_equal(a->eos_token_ids[i], b->eos_token_ids[i]);
    assert_true(a->rope_theta == b->rope_theta);
    assert_int_equal(a->rope_type, b->rope_type);
    if (a->rope_type == DSLA_ROPE_LLAMA3) {
        assert_true(a->rope_factor == b->rope_factor);
        assert_true(a->rope_low_freq_factor == b->rope_low_freq_factor);
        assert_true(a->rope_high_freq_factor == b->rope_high_freq_factor);
        assert_int_equal(a->rope_original_max_position, b->rope_original_max_position);
    }
}

double dsla_test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d)) m = isnan(d) ? INFINITY : d;
    }
    return m;
}

double dsla_test_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (isnan(num)) return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

uint64_t dsla_test_rand_u64(uint64_t *state) {
    return dsla_splitmix64(state);
}

float dsla_test_rand_uniform(uint64_t *state, float lo, float hi) {
    double u = (double)(dsla_test_rand_u64(state) >> 11) * (1.0 / 9007199254740992.0);
    return lo + (float)u * (hi - lo);
}

float dsla_test_rand_normal(uint64_t *state) {
    double u1 = ((double)(dsla_test_rand_u64(state) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(dsla_test_rand_u64(state) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t dsla_test_seed(void) {
    const char *s = getenv("DSLA_TEST_SEED");
    uint64_t seed;
    if (s && *s) {
        seed = strtoull(s, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec;
    }
    fprintf(stderr, "DSLA_TEST_SEED=%llu\n", (unsigned long long)seed);
    return seed;
}

bool dsla_test_wait_atomic(atomic_int *v, int target, int ms) {
    const uint64_t deadline = dsla_clock_ms() + (uint64_t)ms;
    const struct timespec tick = {0, 1000000};
    while (atomic_load(v) < target) {
        if (dsla_clock_ms() > deadline) return false;
        nanosleep(&tick, NULL);
    }
    return true;
}

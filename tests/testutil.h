/* Helpers shared by the tests: locating shared test data, reading JSON vectors, comparing floats.
 *
 * Tests that need ../shared call dsla_test_data_or_skip() before cmocka runs: it exits 77 (ctest's
 * "skipped") when DSLA_TEST_DATA or the named file is absent, so a checkout without the data stays
 * green without pretending to pass. */
#ifndef DSLA_TESTS_TESTUTIL_H
#define DSLA_TESTS_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "runtime/model/config.h"

enum { DSLA_TEST_SKIP = 77 };

/* "<DSLA_TEST_DATA>/<relative>" in a static buffer per call site is fragile, so this returns a
 * malloc'd string the caller frees. Exits 77 when the file does not exist. */
char *dsla_test_data_or_skip(const char *relative);
/* Same, returning NULL instead of exiting. */
char *dsla_test_data_path(const char *relative);

/* Loads a JSON file or fails the test. */
json_t *dsla_test_load_json(const char *path);

/* Reads a whole file into a malloc'd, NUL-terminated buffer; NULL on failure. */
char *dsla_test_read_file(const char *path, size_t *len);
/* Writes bytes to path or fails the test. */
void dsla_test_write_file(const char *path, const void *data, size_t len);
/* A fresh directory under $TMPDIR (or /tmp), removed by dsla_test_rmtree. Caller frees. */
char *dsla_test_tempdir(void);
void dsla_test_rmtree(const char *path);
/* Polls every millisecond until *v reaches target or ms pass; returns whether it did. */
bool dsla_test_wait_atomic(atomic_int *v, int target, int ms);

/* Fails the test unless every field that changes the maths is equal (llama3 scaling included). */
void dsla_test_assert_config_equal(const dsla_model_config_t *a, const dsla_model_config_t *b);

/* max |a-b| over n elements. */
double dsla_test_max_abs_diff(const float *a, const float *b, size_t n);
/* ||a-b|| / ||b||. */
double dsla_test_rel_l2(const float *a, const float *b, size_t n);

/* A small deterministic generator for fresh random inputs (splitmix64). */
uint64_t dsla_test_rand_u64(uint64_t *state);
float dsla_test_rand_uniform(uint64_t *state, float lo, float hi);
float dsla_test_rand_normal(uint64_t *state);
/* A seed from DSLA_TEST_SEED, else from the clock; printed so a failure can be replayed. */
uint64_t dsla_test_seed(void);

#endif

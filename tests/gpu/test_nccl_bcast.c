/* The layer broadcast's NCCL transport on GPUs (kernels_nccl.h, bcast_nccl.h, bcast_peer.h's
 * jobs). One GPU: a one-rank communicator broadcasts a buffer of several staging slices and leaves
 * it intact, and its staging buffer alone; the transport is made on device 0 and refused on a
 * device that does not exist. Two GPUs: an owner thread on GPU 0 and a receiver thread on GPU 1
 * run the real SEND and RECEIVE jobs; the file lands in the receiver's cache under its cache name,
 * verified; a second file goes over the kept communicator; a receiver whose owner never joins
 * gives up at its timeout (DEADLINE_EXCEEDED, the communicator aborted) instead of hanging. Exits
 * 77 without a CUDA device or without a loadable libnccl.so.2; the two-GPU part is skipped (with
 * a message) on one GPU. */
#include "tests/testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "actors/bcast_nccl.h"
#include "actors/bcast_peer.h"
#include "actors/transfer.h"
#include "kernels/kernels.h"
#include "kernels/kernels_nccl.h"

#ifdef DSLA_HAVE_CUDA

/* Small staging, so that a file of a few MiB crosses many slices and a partial last one. */
enum { STAGING = 1 << 20, SLICE = 3 << 20, TIMEOUT_MS = 20000 };

static void test_one_rank(void **state) {
    (void)state;
    uint8_t id[DSLA_NCCL_ID_BYTES];
    assert_int_equal(dsla_nccl_unique_id(id), DSLA_OK);
    dsla_nccl_comm_t *c = NULL;
    assert_int_equal(dsla_nccl_comm_create(&c, id, 0, 1, 0, STAGING, TIMEOUT_MS), DSLA_OK);
    const size_t n = 3 * STAGING + 12345;
    char *buf = malloc(n), *want = malloc(n);
    uint64_t rng = dsla_test_seed();
    for (size_t i = 0; i < n; i++)
        want[i] = (char)dsla_test_rand_u64(&rng);
    memcpy(buf, want, n);
    assert_int_equal(dsla_nccl_broadcast(c, buf, n, TIMEOUT_MS), DSLA_OK);
    assert_memory_equal(buf, want, n);
    /* the staging buffer alone (the benchmark's NCCL-only row); never more than it holds */
    assert_int_equal(dsla_nccl_broadcast_staging(c, STAGING, TIMEOUT_MS), DSLA_OK);
    assert_int_equal(dsla_nccl_broadcast_staging(c, STAGING + 1, TIMEOUT_MS),
                     DSLA_ERR_INVALID_ARGUMENT);
    dsla_nccl_comm_destroy(&c);
    assert_null(c);
    /* a rank outside the communicator is refused before anything is made */
    assert_int_equal(dsla_nccl_comm_create(&c, id, 1, 1, 0, STAGING, TIMEOUT_MS),
                     DSLA_ERR_INVALID_ARGUMENT);
    free(buf);
    free(want);
    /* the actors' transport: on an existing device only */
    dsla_bcast_nccl_t *t = NULL;
    assert_int_equal(dsla_bcast_nccl_create(&t, 0, STAGING), DSLA_OK);
    assert_non_null(dsla_bcast_nccl_transport(t)->unique_id);
    dsla_bcast_nccl_destroy(&t);
    assert_null(t);
    assert_int_equal(dsla_bcast_nccl_create(&t, dsla_cuda_device_count(), STAGING),
                     DSLA_ERR_UNSUPPORTED);
    assert_null(t);
}

static void *run_job(void *job) {
    dsla_bcast_job_run(job);
    return NULL;
}

static dsla_bcast_job_t *job_for(const dsla_bcast_transport_t *t, dsla_bcast_job_kind_t kind,
                                 const dsla_proto_bcast_t *m, const char *path, void *comm) {
    dsla_bcast_job_t *j = calloc(1, sizeof *j);
    j->kind = kind;
    j->msg = *m;
    snprintf(j->path, sizeof j->path, "%s", path);
    j->transport = t;
    j->timeout_ms = TIMEOUT_MS;
    j->slice = SLICE;
    j->comm = comm;
    return j;
}

/* One broadcast of a random file of size bytes from GPU 0 to GPU 1 (fresh: over a new
 * communicator, else over *comms); the file must land verified in cache. */
static void broadcast_file(const dsla_bcast_transport_t *t[2], void *comms[2], const char *dir,
                           const char *cache, size_t size, uint32_t version) {
    char *bytes = malloc(size);
    uint64_t rng = dsla_test_seed() + version;
    for (size_t i = 0; i < size; i++)
        bytes[i] = (char)dsla_test_rand_u64(&rng);
    char src[512];
    snprintf(src, sizeof src, "%s/src-%u.safetensors", dir, version);
    dsla_test_write_file(src, bytes, size);
    dsla_proto_bcast_t m = {.session = version,
                            .comm = 1,
                            .nranks = 2,
                            .layer = 3,
                            .version = version,
                            .size = size,
                            .xxh64 = XXH64(bytes, size, 0)};
    if (!comms[0]) {
        m.fresh = true;
        assert_int_equal(t[0]->unique_id(t[0]->user, m.id, &m.id_len), DSLA_OK);
    }
    const dsla_proto_plan_layer_t l = {
        .layer = 3, .version = version, .size = size, .xxh64 = m.xxh64};
    char dst[1024];
    assert_int_equal(dsla_transfer_cache_path(cache, &l, dst, sizeof dst), DSLA_OK);
    dsla_bcast_job_t *send = job_for(t[0], DSLA_BCAST_JOB_SEND, &m, src, comms[0]);
    m.rank = 1;
    dsla_bcast_job_t *recv = job_for(t[1], DSLA_BCAST_JOB_RECEIVE, &m, dst, comms[1]);
    pthread_t a, b;
    assert_int_equal(pthread_create(&a, NULL, run_job, send), 0);
    assert_int_equal(pthread_create(&b, NULL, run_job, recv), 0);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    if (send->status != DSLA_OK || recv->status != DSLA_OK)
        fprintf(stderr, "owner: %s\nreceiver: %s\n", send->message, recv->message);
    assert_int_equal(send->status, DSLA_OK);
    assert_int_equal(recv->status, DSLA_OK);
    assert_true(dsla_transfer_cached(dst, &l));
    comms[0] = send->comm;
    comms[1] = recv->comm;
    free(send);
    free(recv);
    free(bytes);
}

static void test_two_ranks(void **state) {
    (void)state;
    if (dsla_cuda_device_count() < 2) {
        fprintf(stderr, "one CUDA device: the two-rank broadcast is skipped\n");
        skip();
    }
    dsla_bcast_nccl_t *n[2] = {NULL, NULL};
    for (int d = 0; d < 2; d++)
        assert_int_equal(dsla_bcast_nccl_create(&n[d], d, STAGING), DSLA_OK);
    const dsla_bcast_transport_t *t[2] = {dsla_bcast_nccl_transport(n[0]),
                                          dsla_bcast_nccl_transport(n[1])};
    char *dir = dsla_test_tempdir();
    char cache[512];
    snprintf(cache, sizeof cache, "%s/cache", dir);
    assert_int_equal(dsla_transfer_cache_init(cache), DSLA_OK);
    void *comms[2] = {NULL, NULL};
    broadcast_file(t, comms, dir, cache, 7 * STAGING + 999, 1); /* a fresh communicator */
    assert_non_null(comms[0]);
    assert_non_null(comms[1]);
    broadcast_file(t, comms, dir, cache, 2 * SLICE + 1, 2); /* the kept one */
    for (int r = 0; r < 2; r++)
        t[r]->comm_destroy(t[r]->user, comms[r]);

    /* a receiver whose owner never joins gives up at its timeout */
    dsla_proto_bcast_t m = {.session = 3,
                            .comm = 2,
                            .fresh = true,
                            .rank = 1,
                            .nranks = 2,
                            .layer = 3,
                            .version = 3,
                            .size = 100,
                            .xxh64 = 1};
    assert_int_equal(t[0]->unique_id(t[0]->user, m.id, &m.id_len), DSLA_OK);
    char dst[1024];
    snprintf(dst, sizeof dst, "%s/orphan.safetensors", cache);
    dsla_bcast_job_t *recv = job_for(t[1], DSLA_BCAST_JOB_RECEIVE, &m, dst, NULL);
    recv->timeout_ms = 2000;
    dsla_bcast_job_run(recv);
    assert_int_equal(recv->status, DSLA_ERR_DEADLINE_EXCEEDED);
    assert_null(recv->comm);
    free(recv);
    dsla_test_rmtree(dir);
    free(dir);
    for (int d = 0; d < 2; d++)
        dsla_bcast_nccl_destroy(&n[d]);
}

int main(void) {
    if (dsla_cuda_device_count() == 0) {
        fprintf(stderr, "no CUDA device: skipped\n");
        return DSLA_TEST_SKIP;
    }
    int version = 0;
    if (dsla_nccl_load(&version) != DSLA_OK) {
        fprintf(stderr, "skipped: %s\n", dsla_last_error());
        return DSLA_TEST_SKIP;
    }
    fprintf(stderr, "NCCL %d, %d CUDA devices\n", version, dsla_cuda_device_count());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_rank),
        cmocka_unit_test(test_two_ranks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

#else

int main(void) {
    return 77; /* built without CUDA: nothing to test */
}

#endif

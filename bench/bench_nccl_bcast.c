/* The layer broadcast's rate on one node (docs/broadcast.md; issue 14's measurements): for 1, 3 and
 * 7 receivers (as many as the GPUs allow, one rank per GPU, ranks as threads of this process), a
 * 7B-shaped layer's bytes from GPU 0 to the others three ways:
 *
 *   nccl_bcast_device  ncclBroadcast of a device buffer alone, in the transport's 64 MiB slices:
 *                      NCCL's own rate here (what nccl-tests' broadcast_perf reports)
 *   nccl_bcast_host    dsla_nccl_broadcast: host bytes staged through pinned memory and the
 *                      device buffer, as the transport moves a file
 *   bcast_file         the peers' real jobs (bcast_peer.h): the owner reads and hashes its file,
 *                      every receiver writes, hashes, fsyncs and renames it into its layer cache
 *                      (what a broadcast costs between BCAST_JOIN and BCAST_ACK)
 *
 * plus the communicator's creation (nccl_comm_create: every rank joined). One JSON object per
 * measurement (DESIGN.md section 12): what, receivers, bytes, device, median ms over REPS after a
 * warm-up, GB/s (bytes over time: for a broadcast nccl-tests' algorithm and bus bandwidth are the
 * same). A rep's time is the slowest rank's, between a barrier and its return.
 *
 * Usage: bench_nccl_bcast [BYTES [DIR]] (default: the 7B layer; files under DIR, default /tmp). */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "actors/bcast_nccl.h"
#include "actors/bcast_peer.h"
#include "actors/transfer.h"
#include "kernels/kernels.h"
#include "kernels/kernels_cuda.h"
#include "kernels/kernels_nccl.h"
#include "runtime/core/clock.h"

#ifdef DSLA_HAVE_CUDA

/* A Llama-2-7B decoder layer in bf16: q, k, v, o (4 x 4096 x 4096), gate, up, down
 * (3 x 4096 x 11008) and two norms (2 x 4096), 2 bytes each. */
#define LAYER_7B_BYTES ((4ull * 4096 * 4096 + 3ull * 4096 * 11008 + 2ull * 4096) * 2)
enum { REPS = 5, MAX_RANKS = 8, TIMEOUT_MS = 60000 };

typedef enum { MODE_CREATE, MODE_DEVICE, MODE_HOST, MODE_FILE } bench_mode_t;
static const char *const MODE_NAMES[] = {"nccl_comm_create", "nccl_bcast_device", "nccl_bcast_host",
                                         "bcast_file"};

typedef struct {
    int rank, nranks;
    pthread_barrier_t *barrier;
    const dsla_bcast_transport_t *t;
    const uint8_t *id;
    size_t bytes;
    char *host;
    const char *src, *cache;
    uint64_t xxh64;
    dsla_nccl_comm_t *comm;
    void *job_comm;      /* the jobs' own communicator (bcast_file) */
    char received[1100]; /* the file the last bcast_file rep wrote into the cache */
    double ms[REPS + 1];
    dsla_status_t status;
    char error[512];
} rank_t;

static void fail(rank_t *r, dsla_status_t st) {
    if (r->status == DSLA_OK && st != DSLA_OK) {
        r->status = st;
        snprintf(r->error, sizeof r->error, "%s", dsla_last_error());
    }
}

/* One rep of mode on this rank; the caller times it. */
static dsla_status_t once(rank_t *r, bench_mode_t mode, int rep) {
    if (mode == MODE_DEVICE) {
        for (size_t off = 0; off < r->bytes; off += DSLA_BCAST_NCCL_STAGING) {
            size_t n =
                r->bytes - off < DSLA_BCAST_NCCL_STAGING ? r->bytes - off : DSLA_BCAST_NCCL_STAGING;
            DSLA_TRY(dsla_nccl_broadcast_staging(r->comm, n, TIMEOUT_MS));
        }
        return DSLA_OK;
    }
    if (mode == MODE_HOST) return dsla_nccl_broadcast(r->comm, r->host, r->bytes, TIMEOUT_MS);
    /* MODE_FILE: the peers' jobs, as bcast_peer.c builds them; the first rep makes their
     * communicator, the rest reuse it */
    dsla_bcast_job_t *job = calloc(1, sizeof *job);
    if (!job) return dsla_error_oom("bench job");
    job->kind = r->rank ? DSLA_BCAST_JOB_RECEIVE : DSLA_BCAST_JOB_SEND;
    job->msg = (dsla_proto_bcast_t){.session = (uint64_t)rep + 1,
                                    .comm = 1,
                                    .fresh = !r->job_comm,
                                    .rank = (uint32_t)r->rank,
                                    .nranks = (uint32_t)r->nranks,
                                    .layer = 0,
                                    .version = (uint32_t)rep,
                                    .size = r->bytes,
                                    .xxh64 = r->xxh64,
                                    .id_len = DSLA_NCCL_ID_BYTES};
    memcpy(job->msg.id, r->id, DSLA_NCCL_ID_BYTES);
    if (r->rank) {
        const dsla_proto_plan_layer_t l = {
            .layer = 0, .version = (uint32_t)rep, .size = r->bytes, .xxh64 = r->xxh64};
        DSLA_TRY(dsla_transfer_cache_path(r->cache, &l, job->path, sizeof job->path));
    } else
        snprintf(job->path, sizeof job->path, "%s", r->src);
    job->transport = r->t;
    job->timeout_ms = TIMEOUT_MS;
    job->slice = DSLA_BCAST_NCCL_STAGING;
    job->comm = r->job_comm;
    dsla_bcast_job_run(job);
    dsla_status_t st = job->status;
    if (st != DSLA_OK) dsla_error(st, "%s", job->message);
    r->job_comm = job->comm;
    if (r->rank) snprintf(r->received, sizeof r->received, "%s", job->path);
    free(job);
    return st;
}

static void *rank_main(void *arg) {
    rank_t *r = arg;
    dsla_cuda_device_bind(r->rank);
    for (int m = MODE_CREATE; m <= MODE_FILE; m++)
        for (int rep = 0; rep < (m == MODE_CREATE ? 1 : REPS + 1); rep++) {
            pthread_barrier_wait(r->barrier);
            const uint64_t t0 = dsla_clock_ns();
            if (r->status == DSLA_OK) {
                if (m == MODE_CREATE)
                    fail(r, dsla_nccl_comm_create(&r->comm, r->id, r->rank, r->nranks, r->rank,
                                                  DSLA_BCAST_NCCL_STAGING, TIMEOUT_MS));
                else
                    fail(r, once(r, (bench_mode_t)m, rep));
            }
            r->ms[rep] = (double)(dsla_clock_ns() - t0) / 1e6;
            if (r->received[0]) remove(r->received); /* a layer's worth of disk per rep */
            r->received[0] = '\0';
            pthread_barrier_wait(r->barrier); /* the main thread reads ms[] */
        }
    dsla_nccl_comm_destroy(&r->comm);
    if (r->job_comm) r->t->comm_destroy(r->t->user, r->job_comm);
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_row(const char *what, int receivers, size_t bytes, const char *device,
                      double ms) {
    printf("{\"what\":\"%s\",\"receivers\":%d,\"bytes\":%zu,\"device\":\"%s\",\"median_ms\":%.3f,"
           "\"gbps\":%.2f}\n",
           what, receivers, bytes, device, ms, ms > 0 ? (double)bytes / ms / 1e6 : 0.0);
    fflush(stdout);
}

/* Runs every mode over nranks ranks; 1 when any rank failed. */
static int run(int nranks, size_t bytes, const char *dir, const char *device,
               dsla_bcast_nccl_t **transports) {
    static rank_t ranks[MAX_RANKS];
    pthread_t threads[MAX_RANKS];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)nranks + 1);
    uint8_t id[DSLA_NCCL_ID_BYTES];
    if (dsla_nccl_unique_id(id) != DSLA_OK) {
        fprintf(stderr, "bench_nccl_bcast: %s\n", dsla_last_error());
        return 1;
    }
    char *host = malloc(bytes);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < bytes; i += 8) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        memcpy(host + i, &rng, bytes - i < 8 ? bytes - i : 8);
    }
    char src[512];
    snprintf(src, sizeof src, "%s/bench-nccl-src.safetensors", dir);
    FILE *f = fopen(src, "wb");
    if (!f || fwrite(host, 1, bytes, f) != bytes || fclose(f) != 0) {
        fprintf(stderr, "bench_nccl_bcast: cannot write %s\n", src);
        return 1;
    }
    const uint64_t xxh = XXH64(host, bytes, 0);
    char caches[MAX_RANKS][512];
    for (int r = 0; r < nranks; r++) {
        snprintf(caches[r], sizeof caches[r], "%s/bench-nccl-cache-%d", dir, r);
        if (r && dsla_transfer_cache_init(caches[r]) != DSLA_OK) {
            fprintf(stderr, "bench_nccl_bcast: %s\n", dsla_last_error());
            return 1;
        }
        ranks[r] = (rank_t){.rank = r,
                            .nranks = nranks,
                            .barrier = &barrier,
                            .t = dsla_bcast_nccl_transport(transports[r]),
                            .id = id,
                            .bytes = bytes,
                            .host = r ? calloc(1, bytes) : host,
                            .src = src,
                            .cache = caches[r],
                            .xxh64 = xxh};
        pthread_create(&threads[r], NULL, rank_main, &ranks[r]);
    }
    int failed = 0;
    for (int m = MODE_CREATE; m <= MODE_FILE; m++) {
        const int reps = m == MODE_CREATE ? 1 : REPS + 1;
        double worst[REPS + 1];
        for (int rep = 0; rep < reps; rep++) {
            pthread_barrier_wait(&barrier);
            pthread_barrier_wait(&barrier);
            worst[rep] = 0;
            for (int r = 0; r < nranks; r++)
                worst[rep] = ranks[r].ms[rep] > worst[rep] ? ranks[r].ms[rep] : worst[rep];
        }
        if (m == MODE_CREATE) {
            printf("{\"what\":\"%s\",\"receivers\":%d,\"device\":\"%s\",\"ms\":%.1f}\n",
                   MODE_NAMES[m], nranks - 1, device, worst[0]);
            continue;
        }
        qsort(worst + 1, REPS, sizeof worst[0], cmp_double); /* rep 0 is the warm-up */
        print_row(MODE_NAMES[m], nranks - 1, bytes, device, worst[1 + REPS / 2]);
    }
    for (int r = 0; r < nranks; r++) {
        pthread_join(threads[r], NULL);
        if (ranks[r].status != DSLA_OK) {
            fprintf(stderr, "bench_nccl_bcast: rank %d: %s\n", r, ranks[r].error);
            failed = 1;
        }
        if (r && memcmp(ranks[r].host, host, bytes) != 0 && ranks[r].status == DSLA_OK) {
            fprintf(stderr, "bench_nccl_bcast: rank %d received other bytes\n", r);
            failed = 1;
        }
        if (r) {
            free(ranks[r].host);
            remove(caches[r]); /* empty: every received file was removed */
        }
    }
    remove(src);
    free(host);
    pthread_barrier_destroy(&barrier);
    return failed;
}

int main(int argc, char **argv) {
    const size_t bytes = argc > 1 ? strtoull(argv[1], NULL, 10) : LAYER_7B_BYTES;
    const char *dir = argc > 2 ? argv[2] : "/tmp";
    const int gpus = dsla_cuda_device_count();
    int version = 0;
    if (gpus < 2 || bytes == 0 || dsla_nccl_load(&version) != DSLA_OK) {
        printf("{\"what\":\"nccl_bcast\",\"skipped\":\"%s\"}\n", gpus < 2 ? "needs 2 or more GPUs"
                                                                 : bytes == 0
                                                                     ? "BYTES must be above 0"
                                                                     : dsla_last_error());
        return gpus < 2 ? 0 : 1;
    }
    char device[256] = "";
    dsla_cuda_device_name(device, sizeof device);
    fprintf(stderr, "NCCL %d, %d GPUs, %zu bytes\n", version, gpus, bytes);
    dsla_bcast_nccl_t *transports[MAX_RANKS] = {NULL};
    const int ranks = gpus < MAX_RANKS ? gpus : MAX_RANKS;
    for (int r = 0; r < ranks; r++)
        if (dsla_bcast_nccl_create(&transports[r], r, DSLA_BCAST_NCCL_STAGING) != DSLA_OK) {
            fprintf(stderr, "bench_nccl_bcast: %s\n", dsla_last_error());
            return 1;
        }
    static const int receivers[] = {1, 3, 7};
    int failed = 0;
    for (size_t i = 0; i < sizeof receivers / sizeof receivers[0]; i++)
        if (receivers[i] + 1 <= ranks)
            failed |= run(receivers[i] + 1, bytes, dir, device, transports);
    for (int r = 0; r < ranks; r++)
        dsla_bcast_nccl_destroy(&transports[r]);
    return failed;
}

#else

int main(void) {
    printf("{\"what\":\"nccl_bcast\",\"skipped\":\"built without CUDA\"}\n");
    return 0;
}

#endif

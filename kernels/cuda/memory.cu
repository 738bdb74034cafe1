/* Device memory, copies and streams with status codes: the thin layer every CUDA caller uses so
 * that a failure names the call instead of surfacing later as a bad pointer. */
#include "kernels/cuda/cuda_check.h"

extern "C" dsla_status_t dsla_cuda_malloc(void **out, size_t bytes) {
    *out = NULL;
    if (bytes == 0) return DSLA_OK;
    cudaError_t e = cudaMalloc(out, bytes);
    if (e != cudaSuccess) {
        *out = NULL;
        return dsla_error(e == cudaErrorMemoryAllocation ? DSLA_ERR_OUT_OF_MEMORY
                                                         : DSLA_ERR_INTERNAL,
                          "cudaMalloc(%zu bytes): %s", bytes, cudaGetErrorString(e));
    }
    return DSLA_OK;
}

extern "C" void dsla_cuda_free(void **p) {
    if (!p || !*p) return;
    /* A failing free means an earlier fault poisoned the context; the fault was or will be
     * reported by the call that synchronises, so there is nothing useful to add here. */
    if (cudaFree(*p) != cudaSuccess) cudaGetLastError();
    *p = NULL;
}

extern "C" dsla_status_t dsla_cuda_copy(void *dst, const void *src, size_t bytes,
                                        dsla_cuda_stream_t stream) {
    if (bytes == 0) return DSLA_OK;
    DSLA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream));
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_zero(void *p, size_t bytes, dsla_cuda_stream_t stream) {
    if (bytes == 0) return DSLA_OK;
    DSLA_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
    return DSLA_OK;
}

static __global__ void fill_f32(float *p, float value, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = value;
}

extern "C" dsla_status_t dsla_cuda_fill_f32(float *p, float value, size_t n,
                                            dsla_cuda_stream_t stream) {
    if (n == 0) return DSLA_OK;
    fill_f32<<<dsla_cuda_blocks_for(n, DSLA_CUDA_BLOCK), DSLA_CUDA_BLOCK, 0, stream>>>(p, value, n);
    DSLA_CUDA_CHECK_LAUNCH("fill_f32");
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_stream_create(dsla_cuda_stream_t *out) {
    *out = NULL;
    cudaStream_t s;
    DSLA_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    *out = s;
    return DSLA_OK;
}

extern "C" void dsla_cuda_stream_destroy(dsla_cuda_stream_t *s) {
    if (!s || !*s) return;
    if (cudaStreamDestroy(*s) != cudaSuccess) cudaGetLastError();
    *s = NULL;
}

extern "C" dsla_status_t dsla_cuda_stream_sync(dsla_cuda_stream_t stream) {
    DSLA_CUDA_CHECK(cudaStreamSynchronize(stream));
    return DSLA_OK;
}

/* CUDA graphs, events, pinned host memory and device queries with status codes: the stream
 * plumbing around the kernels that a host-driven model and its benchmarks need. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_check.h"

struct dsla_cuda_graph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
};

extern "C" dsla_status_t dsla_cuda_capture_begin(dsla_cuda_stream_t stream) {
    /* Thread-local mode: another thread's unrelated CUDA calls neither break nor join the capture.
     */
    DSLA_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_capture_end(dsla_cuda_stream_t stream, dsla_cuda_graph_t **out) {
    *out = NULL;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(stream, &graph);
    if (e != cudaSuccess) {
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError(); /* an invalidated capture leaves a sticky-looking error behind */
        return dsla_error(DSLA_ERR_INTERNAL, "cudaStreamEndCapture: %s", cudaGetErrorString(e));
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiate(&exec, graph, 0);
    if (e != cudaSuccess) {
        cudaGraphDestroy(graph);
        cudaGetLastError();
        return dsla_error(DSLA_ERR_INTERNAL, "cudaGraphInstantiate: %s", cudaGetErrorString(e));
    }
    dsla_cuda_graph_t *g = (dsla_cuda_graph_t *)calloc(1, sizeof *g);
    if (!g) {
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        return dsla_error_oom("CUDA graph");
    }
    g->graph = graph;
    g->exec = exec;
    *out = g;
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_graph_launch(dsla_cuda_graph_t *g, dsla_cuda_stream_t stream) {
    DSLA_CUDA_CHECK(cudaGraphLaunch(g->exec, stream));
    return DSLA_OK;
}

extern "C" void dsla_cuda_graph_destroy(dsla_cuda_graph_t **g) {
    if (!g || !*g) return;
    cudaGraphExecDestroy((*g)->exec);
    cudaGraphDestroy((*g)->graph);
    free(*g);
    *g = NULL;
}

extern "C" dsla_status_t dsla_cuda_host_alloc(void **out, size_t bytes) {
    *out = NULL;
    if (bytes == 0) return DSLA_OK;
    DSLA_CUDA_CHECK(cudaMallocHost(out, bytes));
    return DSLA_OK;
}

extern "C" void dsla_cuda_host_free(void **p) {
    if (!p || !*p) return;
    if (cudaFreeHost(*p) != cudaSuccess) cudaGetLastError();
    *p = NULL;
}

extern "C" dsla_status_t dsla_cuda_event_create(dsla_cuda_event_t *out) {
    *out = NULL;
    cudaEvent_t e;
    DSLA_CUDA_CHECK(cudaEventCreate(&e));
    *out = e;
    return DSLA_OK;
}

extern "C" void dsla_cuda_event_destroy(dsla_cuda_event_t *e) {
    if (!e || !*e) return;
    if (cudaEventDestroy(*e) != cudaSuccess) cudaGetLastError();
    *e = NULL;
}

extern "C" dsla_status_t dsla_cuda_event_record(dsla_cuda_event_t e, dsla_cuda_stream_t stream) {
    DSLA_CUDA_CHECK(cudaEventRecord(e, stream));
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_event_sync(dsla_cuda_event_t e) {
    DSLA_CUDA_CHECK(cudaEventSynchronize(e));
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_event_elapsed_ms(float *ms, dsla_cuda_event_t start,
                                                    dsla_cuda_event_t end) {
    DSLA_CUDA_CHECK(cudaEventElapsedTime(ms, start, end));
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
    DSLA_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return DSLA_OK;
}

extern "C" dsla_status_t dsla_cuda_device_name(char *buf, size_t len) {
    int dev = 0;
    DSLA_CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp prop;
    DSLA_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    if (len == 0) return DSLA_OK;
    strncpy(buf, prop.name, len - 1);
    buf[len - 1] = '\0';
    return DSLA_OK;
}

/* CUDA device discovery for backend selection. Kernels live in their own files beside this one. */
#include <cuda_runtime.h>

extern "C" {
#include "runtime/core/status.h"
}

extern "C" int dsla_cuda_device_count(void) {
    int count = 0;
    /* No driver or no device is not an error here: the caller falls back to the CPU. */
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return count;
}

extern "C" int dsla_cuda_device_current(void) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return device;
}

extern "C" dsla_status_t dsla_cuda_device_bind(int device) {
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "cuda: cannot make device %d current: %s", device,
                          cudaGetErrorString(e));
    return DSLA_OK;
}

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

#include "kernels/cuda/cuda_check.h"

extern "C" dsla_status_t dsla_cuda_set_device(int device) {
    const int count = dsla_cuda_device_count();
    if (device < 0 || device >= count)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "GPU %d does not exist (this machine has %d)",
                          device, count);
    DSLA_CUDA_CHECK(cudaSetDevice(device));
    return DSLA_OK;
}

extern "C" int dsla_cuda_device_current(void) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return device;
}

/* kernels.h's backend-neutral name for dsla_cuda_set_device. */
extern "C" dsla_status_t dsla_cuda_device_bind(int device) {
    DSLA_TRY(dsla_cuda_set_device(device));
    return DSLA_OK;
}

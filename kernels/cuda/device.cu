/* CUDA device discovery for backend selection. Kernels live in their own files beside this one. */
#include <cuda_runtime.h>

extern "C" int dsla_cuda_device_count(void) {
    int count = 0;
    /* No driver or no device is not an error here: the caller falls back to the CPU. */
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return count;
}

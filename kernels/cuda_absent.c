/* The CUDA backend's entry points when dsla-serve is built without CUDA (-DDSLA_CUDA=OFF or no
 * nvcc): every query reports "no device", so callers fall back to the CPU. */
#include "kernels/kernels.h"

int dsla_cuda_device_count(void) {
    return 0;
}

int dsla_cuda_device_current(void) {
    return 0;
}

dsla_status_t dsla_cuda_device_bind(int device) {
    return dsla_error(DSLA_ERR_UNSUPPORTED, "cuda: device %d: built without CUDA", device);
}

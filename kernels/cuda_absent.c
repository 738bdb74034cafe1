/* The CUDA backend's entry points when dsla-serve is built without CUDA (-DDSLA_CUDA=OFF or no
 * nvcc): every query reports "no device", so callers fall back to the CPU. */
#include "kernels/kernels.h"

int dsla_cuda_device_count(void) {
    return 0;
}

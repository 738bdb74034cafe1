/* RMSNorm on the CPU with Hugging Face LlamaRMSNorm semantics. */
#include "kernels/kernels.h"

#include <math.h>

void dsla_cpu_rmsnorm(float *y, const float *x, const float *w, int rows, int dim, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *yr = y + (size_t)r * dim;
        /* The sum of squares in double keeps wide rows (D = 8192) from losing the small terms. */
        double ss = 0.0;
        for (int i = 0; i < dim; i++)
            ss += (double)xr[i] * xr[i];
        float scale = 1.0f / sqrtf((float)(ss / dim) + eps);
        for (int i = 0; i < dim; i++)
            yr[i] = w[i] * (xr[i] * scale);
    }
}

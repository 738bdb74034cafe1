/* Linear layers on the CPU through OpenBLAS: y = x @ W^T with W in the PyTorch Linear layout. */
#include "kernels/kernels.h"

#include <cblas.h>

void dsla_cpu_gemm(float *y, const float *x, const float *w, int m, int n, int k) {
    if (m <= 0 || n <= 0) return;
    /* Decode runs one row per sequence: GEMV streams W once without GEMM's packing overhead. */
    if (m == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.0f, w, k, x, 1, 0.0f, y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, 0.0f, y, n);
}

int dsla_cpu_threads(void) {
    return openblas_get_num_threads();
}

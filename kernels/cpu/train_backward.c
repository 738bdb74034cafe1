/* Backward passes of the frozen layers around a trained one: linear layers (through OpenBLAS),
 * RMSNorm and SwiGLU, each the exact derivative of its forward in
 * kernels/cpu/{gemm,norm,activation}.c.
 */
#include "kernels/kernels_train.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

void dsla_cpu_gemm_backward_input(float *dx, const float *dy, const float *w, int m, int n, int k,
                                  bool accumulate) {
    if (m <= 0 || k <= 0) return;
    /* BLAS may skip scaling C by beta when the inner dimension is empty; do it here so that n == 0
     * still leaves dx defined. */
    if (n <= 0) {
        if (!accumulate) memset(dx, 0, sizeof(float) * (size_t)m * k);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, k, n, 1.0f, dy, n, w, k,
                accumulate ? 1.0f : 0.0f, dx, k);
}

void dsla_cpu_gemm_backward_weight(float *dw, const float *dy, const float *x, int m, int n, int k,
                                   bool accumulate) {
    if (n <= 0 || k <= 0) return;
    if (m <= 0) {
        if (!accumulate) memset(dw, 0, sizeof(float) * (size_t)n * k);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, k, m, 1.0f, dy, n, x, k,
                accumulate ? 1.0f : 0.0f, dw, k);
}

void dsla_cpu_bias_backward(float *db, const float *dy, int m, int n, bool accumulate) {
    for (int j = 0; j < n; j++) {
        double sum = accumulate ? (double)db[j] : 0.0;
        for (int r = 0; r < m; r++)
            sum += dy[(size_t)r * n + j];
        db[j] = (float)sum;
    }
}

void dsla_cpu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x,
                               const float *w, int rows, int dim, float eps, bool accumulate) {
    if (dw && !accumulate)
        for (int i = 0; i < dim; i++)
            dw[i] = 0.0f;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        const float *dyr = dy + (size_t)r * dim;
        float *dxr = dx + (size_t)r * dim;
        /* r = rsqrt(mean(x^2) + eps) as in the forward, but kept in double: the bracket below is a
         * difference of two similar sizes when dy is nearly parallel to the output. */
        double ss = 0.0, dot = 0.0;
        for (int i = 0; i < dim; i++) {
            ss += (double)xr[i] * xr[i];
            dot += (double)w[i] * dyr[i] * xr[i];
        }
        const double rs = 1.0 / sqrt(ss / dim + (double)eps);
        const double c = rs * rs * dot / dim;
        if (dw)
            for (int i = 0; i < dim; i++)
                dw[i] += (float)((double)dyr[i] * xr[i] * rs);
        for (int i = 0; i < dim; i++) {
            const float g = (float)(rs * ((double)w[i] * dyr[i] - (double)xr[i] * c));
            dxr[i] = accumulate ? dxr[i] + g : g;
        }
    }
}

void dsla_cpu_swiglu_backward(float *dgate, float *dup, const float *dy, const float *gate,
                              const float *up, int rows, int n, int stride) {
    for (int r = 0; r < rows; r++) {
        const float *dyr = dy + (size_t)r * n;
        const size_t off = (size_t)r * stride;
        for (int j = 0; j < n; j++) {
            const float g = gate[off + j], u = up[off + j];
            const float s = 1.0f / (1.0f + expf(-g));
            dgate[off + j] = dyr[j] * u * s * (1.0f + g * (1.0f - s));
            dup[off + j] = dyr[j] * g * s;
        }
    }
}

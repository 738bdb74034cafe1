/* Element-wise and row-wise CPU ops: SwiGLU, residual add, softmax, argmax. */
#include "kernels/kernels.h"

#include <math.h>

void dsla_cpu_swiglu(float *y, const float *gate, const float *up, int rows, int n, int in_stride) {
    for (int r = 0; r < rows; r++) {
        const float *g = gate + (size_t)r * in_stride;
        const float *u = up + (size_t)r * in_stride;
        float *yr = y + (size_t)r * n;
        for (int j = 0; j < n; j++)
            yr[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}

void dsla_cpu_add(float *y, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        y[i] = a[i] + b[i];
}

void dsla_cpu_softmax(float *y, const float *x, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        float max = -INFINITY;
        for (int j = 0; j < n; j++)
            max = xr[j] > max ? xr[j] : max;
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            yr[j] = expf(xr[j] - max);
            sum += yr[j];
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < n; j++)
            yr[j] *= inv;
    }
}

int dsla_cpu_argmax(const float *x, int n) {
    if (n < 1) return -1;
    int best = 0;
    for (int j = 1; j < n; j++)
        if (x[j] > x[best]) best = j;
    return best;
}

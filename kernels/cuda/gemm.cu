/* Linear layers on the GPU through cuBLAS: y = x @ W^T with W in the PyTorch Linear layout, fp32
 * for exactness checks, bf16 operands with fp32 accumulation for speed. */
#include <cublas_v2.h>
#include <stdlib.h>

#include "kernels/cuda/cuda_check.h"

struct dsla_cuda_blas {
    cublasHandle_t handle;
};

#define DSLA_CUBLAS_CHECK(call)                                                                    \
    do {                                                                                           \
        cublasStatus_t dsla_blas_st_ = (call);                                                     \
        if (dsla_blas_st_ != CUBLAS_STATUS_SUCCESS)                                                \
            return dsla_error(DSLA_ERR_INTERNAL, "%s: %s", #call,                                  \
                              cublasGetStatusString(dsla_blas_st_));                               \
    } while (0)

extern "C" dsla_status_t dsla_cuda_blas_create(dsla_cuda_blas_t **out) {
    *out = NULL;
    dsla_cuda_blas_t *h = (dsla_cuda_blas_t *)calloc(1, sizeof *h);
    if (!h) return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "cuBLAS handle: out of memory");
    cublasStatus_t st = cublasCreate(&h->handle);
    if (st != CUBLAS_STATUS_SUCCESS) {
        free(h);
        return dsla_error(DSLA_ERR_INTERNAL, "cublasCreate: %s", cublasGetStatusString(st));
    }
    *out = h;
    return DSLA_OK;
}

extern "C" void dsla_cuda_blas_destroy(dsla_cuda_blas_t **h) {
    if (!h || !*h) return;
    cublasDestroy((*h)->handle);
    free(*h);
    *h = NULL;
}

extern "C" dsla_status_t dsla_cuda_gemm(dsla_cuda_blas_t *h, dsla_cuda_stream_t stream, void *y,
                                        dsla_dtype_t y_dtype, const void *x, const void *w,
                                        dsla_dtype_t in_dtype, int m, int n, int k, float beta) {
    if (m <= 0 || n <= 0) return DSLA_OK;
    cudaDataType_t in_type, out_type;
    if (in_dtype == DSLA_DTYPE_F32 && y_dtype == DSLA_DTYPE_F32) {
        in_type = out_type = CUDA_R_32F;
    } else if (in_dtype == DSLA_DTYPE_BF16 &&
               (y_dtype == DSLA_DTYPE_F32 || y_dtype == DSLA_DTYPE_BF16)) {
        in_type = CUDA_R_16BF;
        out_type = y_dtype == DSLA_DTYPE_F32 ? CUDA_R_32F : CUDA_R_16BF;
    } else {
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "dsla_cuda_gemm: inputs %s with output %s; supported: f32->f32, "
                          "bf16->f32, bf16->bf16",
                          dsla_dtype_name(in_dtype), dsla_dtype_name(y_dtype));
    }
    DSLA_CUBLAS_CHECK(cublasSetStream(h->handle, stream));
    const float alpha = 1.0f;
    /* cuBLAS is column-major: row-major y[m,n] is its y^T [n,m] = w [n,k] x^T [k,m], where it reads
     * row-major w as a k x n matrix (so op T) and row-major x as k x m (op N). CUBLAS_COMPUTE_32F
     * (not ..._FAST_TF32) keeps fp32 inputs in full fp32: they are the GPU side of the CPU check.
     */
    DSLA_CUBLAS_CHECK(cublasGemmEx(h->handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, in_type,
                                   k, x, in_type, k, &beta, y, out_type, n, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    return DSLA_OK;
}

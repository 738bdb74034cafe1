/* Causal grouped-query prefill attention through cuDNN's fused flash attention (kernels_cuda.h,
 * dsla_cuda_cudnn_*): the well-kept library kernel preferred over kernels/cuda/attention.cu's
 * hand-written prefill_tc where the shapes allow (docs/perf.md has the numbers).
 *
 * The attention is described to cuDNN's backend (graph) API as the operation graph its flash
 * attention engine matches, as cudnn-frontend's SDPA node emits it: S = Q K^T (bf16 operands, fp32
 * accumulation), S *= scale, causal mask (generated row and column indices, row >= col, masked
 * scores replaced by the lowest float), softmax as max / subtract / exp / sum / divide, O = P V in
 * bf16. cuDNN fuses all of it into one kernel; no T x T matrix exists in memory. Finding an engine
 * and finalising its plan costs 50-80 ms, so prompt lengths are bucketed (dsla_cuda_cudnn_rows)
 * and plans cached per bucket.
 *
 * libcudnn.so.9 is opened at run time (dlopen): builds link without cuDNN, and a machine without it
 * gets UNSUPPORTED from dsla_cuda_cudnn_create, so the caller falls back to its own kernel. Only
 * the types and enums come from the cuDNN headers. Every cuDNN call is checked; a failure returns
 * DSLA_ERR_INTERNAL naming the call, cuDNN's status and its last error message. */
#include "kernels/kernels_cuda.h"

/* Buckets of 64 rows up to 1024, then 8 per octave (granularity g < n / 8): at most 56 plans up to
 * 32K tokens, at most 12.5% padded rows above 1K. */
enum { CUDNN_ROW_QUANTUM = 64, CUDNN_BUCKETS_PER_OCTAVE = 8 };

int dsla_cuda_cudnn_rows(int n) {
    if (n <= 0) return 0;
    int g = CUDNN_ROW_QUANTUM;
    while ((long)g * 2 * CUDNN_BUCKETS_PER_OCTAVE < n)
        g *= 2;
    return (int)(((long)n + g - 1) / g * g);
}

int dsla_cuda_cudnn_kv_rows(int n) {
    const int rows = dsla_cuda_cudnn_rows(n);
    int p = CUDNN_ROW_QUANTUM;
    while (p < rows)
        p *= 2;
    return p;
}

#ifdef DSLA_HAVE_CUDNN_HEADERS

#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <cudnn_graph.h>

/* Plans kept; the oldest is dropped when full. Prompt lengths are bucketed (dsla_cuda_cudnn_rows:
 * 56 buckets up to 32K tokens), and finding and finalising a plan took ~80 ms per bucket on an
 * H200, so the cache holds every bucket a server is likely to see, and chunks with a past (one plan
 * per query bucket and power-of-two key bucket, dsla_cuda_cudnn_kv_rows) beside them. */
enum { CUDNN_PLAN_CACHE = 128 };
/* cuDNN's fused flash attention takes head dims that are multiples of 8 up to 128 on Hopper. */
enum { CUDNN_MAX_HEAD_DIM = 128, CUDNN_HEAD_DIM_ALIGN = 8 };
/* Unique ids of the tensors the caller binds at execution. */
enum { UID_Q = 1, UID_K, UID_V, UID_O, UID_SCALE, UID_NEG_INF, UID_SHIFT, UID_VIRTUAL = 100 };

typedef struct {
    cudnnStatus_t (*create)(cudnnHandle_t *);
    cudnnStatus_t (*destroy)(cudnnHandle_t);
    cudnnStatus_t (*set_stream)(cudnnHandle_t, cudaStream_t);
    size_t (*get_version)(void);
    const char *(*error_string)(cudnnStatus_t);
    void (*last_error)(char *, size_t);
    cudnnStatus_t (*create_desc)(cudnnBackendDescriptorType_t, cudnnBackendDescriptor_t *);
    cudnnStatus_t (*destroy_desc)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*finalize)(cudnnBackendDescriptor_t);
    cudnnStatus_t (*set_attr)(cudnnBackendDescriptor_t, cudnnBackendAttributeName_t,
                              cudnnBackendAttributeType_t, int64_t, const void *);
    cudnnStatus_t (*get_attr)(cudnnBackendDescriptor_t const, cudnnBackendAttributeName_t,
                              cudnnBackendAttributeType_t, int64_t, int64_t *, void *);
    cudnnStatus_t (*execute)(cudnnHandle_t, cudnnBackendDescriptor_t, cudnnBackendDescriptor_t);
} cudnn_api_t;

/* A plan's shape. kv_n == 0: q, k and v are the rows of one fused buffer (in_stride apart), n of
 * each, causal from the top left. kv_n > 0: k and v are kv_n rows kv_stride apart, and the mask
 * is shifted by a run-time past (query row i sees keys <= i + past). */
typedef struct {
    int n, heads, kv_heads, head_dim, in_stride, out_stride, kv_n, kv_stride;
    cudnnBackendDescriptor_t plan;
    int64_t workspace;
} plan_entry_t;

struct dsla_cuda_cudnn {
    void *lib;
    cudnn_api_t api;
    cudnnHandle_t handle;
    plan_entry_t plans[CUDNN_PLAN_CACHE];
    int n_plans, next_evict;
    void *workspace;
    size_t workspace_bytes;
};

/* ---- errors ---- */

static dsla_status_t cudnn_fail(const dsla_cuda_cudnn_t *c, const char *call, cudnnStatus_t st) {
    char detail[512] = "";
    if (c->api.last_error) c->api.last_error(detail, sizeof detail);
    return dsla_error(DSLA_ERR_INTERNAL, "%s: %s%s%s", call,
                      c->api.error_string ? c->api.error_string(st) : "cuDNN error",
                      detail[0] ? ": " : "", detail);
}

#define CUDNN_TRY(c, call)                                                                         \
    do {                                                                                           \
        cudnnStatus_t cudnn_st_ = (call);                                                          \
        if (cudnn_st_ != CUDNN_STATUS_SUCCESS) return cudnn_fail((c), #call, cudnn_st_);           \
    } while (0)

/* ---- loading ---- */

static dsla_status_t load_symbol(void *lib, const char *name, void **out) {
    *out = dlsym(lib, name);
    if (!*out)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "dsla_cuda_cudnn_create: libcudnn.so.9 lacks %s",
                          name);
    return DSLA_OK;
}

static dsla_status_t load_api(void *lib, cudnn_api_t *a) {
    /* ISO C has no conversion between object and function pointers; POSIX guarantees dlsym's
     * result converts, and copying the bytes says so without a cast the compiler may warn on. */
    static const char *const names[] = {"cudnnCreate",
                                        "cudnnDestroy",
                                        "cudnnSetStream",
                                        "cudnnGetVersion",
                                        "cudnnGetErrorString",
                                        "cudnnGetLastErrorString",
                                        "cudnnBackendCreateDescriptor",
                                        "cudnnBackendDestroyDescriptor",
                                        "cudnnBackendFinalize",
                                        "cudnnBackendSetAttribute",
                                        "cudnnBackendGetAttribute",
                                        "cudnnBackendExecute"};
    void (**slots[])(void) = {
        (void (**)(void)) & a->create,       (void (**)(void)) & a->destroy,
        (void (**)(void)) & a->set_stream,   (void (**)(void)) & a->get_version,
        (void (**)(void)) & a->error_string, (void (**)(void)) & a->last_error,
        (void (**)(void)) & a->create_desc,  (void (**)(void)) & a->destroy_desc,
        (void (**)(void)) & a->finalize,     (void (**)(void)) & a->set_attr,
        (void (**)(void)) & a->get_attr,     (void (**)(void)) & a->execute};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *p = NULL;
        DSLA_TRY(load_symbol(lib, names[i], &p));
        memcpy(slots[i], &p, sizeof p);
    }
    return DSLA_OK;
}

/* DSLA_CUDNN_ATTENTION=0 keeps callers on attention.cu's kernels (comparisons, or a cuDNN that
 * misbehaves); anything else, or unset, lets them use cuDNN where it loads. */
static bool cudnn_disabled(void) {
    const char *v = getenv("DSLA_CUDNN_ATTENTION");
    return v && strcmp(v, "0") == 0;
}

dsla_status_t dsla_cuda_cudnn_create(dsla_cuda_cudnn_t **out) {
    *out = NULL;
    if (cudnn_disabled())
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "dsla_cuda_cudnn_create: cuDNN attention turned off by "
                          "DSLA_CUDNN_ATTENTION=0");
    void *lib = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "dsla_cuda_cudnn_create: cannot open libcudnn.so.9 (%s); put cuDNN 9's "
                          "lib directory on LD_LIBRARY_PATH",
                          dlerror());
    dsla_cuda_cudnn_t *c = calloc(1, sizeof *c);
    if (!c) {
        dlclose(lib);
        return dsla_error_oom("dsla_cuda_cudnn_create");
    }
    c->lib = lib;
    dsla_status_t st = load_api(lib, &c->api);
    if (st == DSLA_OK && c->api.get_version() < 90000)
        st = dsla_error(DSLA_ERR_UNSUPPORTED,
                        "dsla_cuda_cudnn_create: cuDNN %zu, needs 9.0 or later",
                        c->api.get_version());
    if (st == DSLA_OK) {
        const cudnnStatus_t cs = c->api.create(&c->handle);
        if (cs != CUDNN_STATUS_SUCCESS) st = cudnn_fail(c, "cudnnCreate", cs);
    }
    if (st != DSLA_OK) {
        dsla_cuda_cudnn_destroy(&c);
        return st;
    }
    *out = c;
    return DSLA_OK;
}

void dsla_cuda_cudnn_destroy(dsla_cuda_cudnn_t **cp) {
    dsla_cuda_cudnn_t *c = *cp;
    if (!c) return;
    for (int i = 0; i < c->n_plans; i++)
        c->api.destroy_desc(c->plans[i].plan);
    if (c->handle) c->api.destroy(c->handle);
    cudaFree(c->workspace);
    dlclose(c->lib);
    free(c);
    *cp = NULL;
}

size_t dsla_cuda_cudnn_version(const dsla_cuda_cudnn_t *c) {
    return c->api.get_version();
}

int dsla_cuda_cudnn_attention_supports(const dsla_attn_shape_t *shape) {
    return shape->head_dim % CUDNN_HEAD_DIM_ALIGN == 0 && shape->head_dim <= CUDNN_MAX_HEAD_DIM &&
           shape->n_kv_heads > 0 && shape->n_heads % shape->n_kv_heads == 0;
}

/* ---- building the operation graph ---- */

/* Every descriptor made while building one plan, destroyed together once the plan is final (the
 * plan keeps what it needs). */
enum { BUILD_MAX_DESCS = 64 };
typedef struct {
    dsla_cuda_cudnn_t *c;
    cudnnBackendDescriptor_t descs[BUILD_MAX_DESCS];
    int n;
    int64_t next_uid;
} build_t;

static dsla_status_t make_desc(build_t *b, cudnnBackendDescriptorType_t type,
                               cudnnBackendDescriptor_t *out) {
    if (b->n == BUILD_MAX_DESCS)
        return dsla_error(DSLA_ERR_INTERNAL, "cuDNN attention: more than %d descriptors",
                          BUILD_MAX_DESCS);
    CUDNN_TRY(b->c, b->c->api.create_desc(type, out));
    b->descs[b->n++] = *out;
    return DSLA_OK;
}

static void build_release(build_t *b) {
    for (int i = 0; i < b->n; i++)
        b->c->api.destroy_desc(b->descs[i]);
    b->n = 0;
}

#define SET(b, d, name, type, count, ptr)                                                          \
    CUDNN_TRY((b)->c, (b)->c->api.set_attr((d), (name), (type), (count), (ptr)))

/* A 4-d tensor; uid 0 makes it virtual (an intermediate inside the fused kernel). */
static dsla_status_t tensor4(build_t *b, cudnnBackendDescriptor_t *out, int64_t uid,
                             cudnnDataType_t dtype, const int64_t dims[4], const int64_t strides[4],
                             bool by_value) {
    const bool is_virtual = uid == 0;
    const int64_t id = is_virtual ? b->next_uid++ : uid, align = 16;
    DSLA_TRY(make_desc(b, CUDNN_BACKEND_TENSOR_DESCRIPTOR, out));
    SET(b, *out, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype);
    SET(b, *out, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    SET(b, *out, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    SET(b, *out, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &id);
    SET(b, *out, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    SET(b, *out, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) SET(b, *out, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    CUDNN_TRY(b->c, b->c->api.finalize(*out));
    return DSLA_OK;
}

/* A virtual tensor of the given dims, packed row-major. */
static dsla_status_t virtual4(build_t *b, cudnnBackendDescriptor_t *out, cudnnDataType_t dtype,
                              const int64_t dims[4]) {
    const int64_t strides[4] = {dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1};
    return tensor4(b, out, 0, dtype, dims, strides, false);
}

/* y = mode(x[, b[, t]]) computed in math precision. axis >= 0 only for GEN_INDEX. */
static dsla_status_t pointwise(build_t *b, cudnnBackendDescriptor_t *op, cudnnPointwiseMode_t mode,
                               cudnnDataType_t math, int64_t axis, cudnnBackendDescriptor_t x,
                               cudnnBackendDescriptor_t bb, cudnnBackendDescriptor_t t,
                               cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t pw;
    DSLA_TRY(make_desc(b, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, &pw));
    SET(b, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    SET(b, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math);
    if (axis >= 0) SET(b, pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    CUDNN_TRY(b->c, b->c->api.finalize(pw));
    DSLA_TRY(make_desc(b, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, op));
    SET(b, *op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
        &pw);
    SET(b, *op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (bb)
        SET(b, *op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bb);
    if (t) SET(b, *op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    SET(b, *op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    CUDNN_TRY(b->c, b->c->api.finalize(*op));
    return DSLA_OK;
}

static dsla_status_t matmul(build_t *b, cudnnBackendDescriptor_t *op, cudnnBackendDescriptor_t a,
                            cudnnBackendDescriptor_t bb, cudnnBackendDescriptor_t y) {
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t mm;
    DSLA_TRY(make_desc(b, CUDNN_BACKEND_MATMUL_DESCRIPTOR, &mm));
    SET(b, mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    CUDNN_TRY(b->c, b->c->api.finalize(mm));
    DSLA_TRY(make_desc(b, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, op));
    SET(b, *op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
    SET(b, *op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &bb);
    SET(b, *op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    SET(b, *op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm);
    CUDNN_TRY(b->c, b->c->api.finalize(*op));
    return DSLA_OK;
}

static dsla_status_t reduction(build_t *b, cudnnBackendDescriptor_t *op, cudnnReduceTensorOp_t mode,
                               cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t rd;
    DSLA_TRY(make_desc(b, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, &rd));
    SET(b, rd, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    SET(b, rd, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    CUDNN_TRY(b->c, b->c->api.finalize(rd));
    DSLA_TRY(make_desc(b, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, op));
    SET(b, *op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    SET(b, *op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    SET(b, *op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &rd);
    CUDNN_TRY(b->c, b->c->api.finalize(*op));
    return DSLA_OK;
}

enum { N_OPS_MAX = 15 };

/* The SDPA forward graph for one shape (batch 1; rows of the caller's buffers are tokens), in the
 * form cuDNN's flash attention engines are matched on (cudnn-frontend's inference SDPA): the
 * softmax also forms max + log(sum) into a virtual tensor nothing reads (without it cuDNN 9.19
 * offers no attention engine), and P, the second product's A operand, is typed bf16 like the
 * inputs (as fp32, Hopper's engines refuse it: "MHA only supports FP32 I/O" on sm_8x). With a past
 * (e->kv_n > 0) the row index is shifted by a by-value INT32 before the causal compare, the way
 * cudnn-frontend builds its shifted right bound, so one plan serves every past length. */
static dsla_status_t build_graph(build_t *b, const plan_entry_t *e,
                                 cudnnBackendDescriptor_t *graph) {
    const bool past = e->kv_n > 0;
    const int64_t T = e->n, Tk = past ? e->kv_n : e->n, H = e->heads, Hk = e->kv_heads;
    const int64_t d = e->head_dim, is = e->in_stride, os = e->out_stride;
    const int64_t ks = past ? e->kv_stride : e->in_stride;
    const cudnnDataType_t bf16 = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
    const cudnnDataType_t i32 = CUDNN_DATA_INT32;
    cudnnBackendDescriptor_t q, kt, v, o, scale, neg_inf, shift = NULL;
    /* Head h of token t at t * stride + h * d: dims [1, heads, tokens, d]. */
    const int64_t q_dims[4] = {1, H, T, d}, q_str[4] = {T * is, d, is, 1};
    const int64_t kt_dims[4] = {1, Hk, d, Tk}, kt_str[4] = {Tk * ks, d, 1, ks}; /* K^T: a view */
    const int64_t v_dims[4] = {1, Hk, Tk, d}, v_str[4] = {Tk * ks, d, ks, 1};
    const int64_t o_str[4] = {T * os, d, os, 1};
    const int64_t one[4] = {1, 1, 1, 1};
    DSLA_TRY(tensor4(b, &q, UID_Q, bf16, q_dims, q_str, false));
    DSLA_TRY(tensor4(b, &kt, UID_K, bf16, kt_dims, kt_str, false));
    DSLA_TRY(tensor4(b, &v, UID_V, bf16, v_dims, v_str, false));
    DSLA_TRY(tensor4(b, &o, UID_O, bf16, q_dims, o_str, false));
    DSLA_TRY(tensor4(b, &scale, UID_SCALE, f32, one, one, true));
    DSLA_TRY(tensor4(b, &neg_inf, UID_NEG_INF, f32, one, one, true));
    if (past) DSLA_TRY(tensor4(b, &shift, UID_SHIFT, i32, one, one, true));

    const int64_t s_dims[4] = {1, H, T, Tk}, row_dims[4] = {1, H, T, 1};
    cudnnBackendDescriptor_t s, s_scaled, row_i, row_s = NULL, col_i, keep, s_masked, mx, s_sub;
    cudnnBackendDescriptor_t s_exp, sum, p, log_sum, lse;
    DSLA_TRY(virtual4(b, &s, f32, s_dims));
    DSLA_TRY(virtual4(b, &s_scaled, f32, s_dims));
    DSLA_TRY(virtual4(b, &row_i, i32, s_dims));
    if (past) DSLA_TRY(virtual4(b, &row_s, i32, s_dims));
    DSLA_TRY(virtual4(b, &col_i, i32, s_dims));
    DSLA_TRY(virtual4(b, &keep, CUDNN_DATA_BOOLEAN, s_dims));
    DSLA_TRY(virtual4(b, &s_masked, f32, s_dims));
    DSLA_TRY(virtual4(b, &mx, f32, row_dims));
    DSLA_TRY(virtual4(b, &s_sub, f32, s_dims));
    DSLA_TRY(virtual4(b, &s_exp, f32, s_dims));
    DSLA_TRY(virtual4(b, &sum, f32, row_dims));
    DSLA_TRY(virtual4(b, &p, bf16, s_dims));
    DSLA_TRY(virtual4(b, &log_sum, f32, row_dims));
    DSLA_TRY(virtual4(b, &lse, f32, row_dims));

    cudnnBackendDescriptor_t ops[N_OPS_MAX];
    int n = 0;
    DSLA_TRY(matmul(b, &ops[n++], q, kt, s));
    DSLA_TRY(pointwise(b, &ops[n++], CUDNN_POINTWISE_MUL, f32, -1, s, scale, NULL, s_scaled));
    DSLA_TRY(
        pointwise(b, &ops[n++], CUDNN_POINTWISE_GEN_INDEX, i32, 2, s_scaled, NULL, NULL, row_i));
    DSLA_TRY(
        pointwise(b, &ops[n++], CUDNN_POINTWISE_GEN_INDEX, i32, 3, s_scaled, NULL, NULL, col_i));
    if (past)
        DSLA_TRY(pointwise(b, &ops[n++], CUDNN_POINTWISE_ADD, i32, 3, row_i, shift, NULL, row_s));
    DSLA_TRY(pointwise(b, &ops[n++], CUDNN_POINTWISE_CMP_GE, CUDNN_DATA_BOOLEAN, -1,
                       past ? row_s : row_i, col_i, NULL, keep));
    DSLA_TRY(pointwise(b, &ops[n++], CUDNN_POINTWISE_BINARY_SELECT, f32, -1, s_scaled, neg_inf,
                       keep, s_masked));
    DSLA_TRY(reduction(b, &ops[n++], CUDNN_REDUCE_TENSOR_MAX, s_masked, mx));
    DSLA_TRY(pointwise(b, &ops[n++], CUDNN_POINTWISE_SUB, f32, -1, s_masked, mx, NULL, s_sub));
    DSLA_TRY(pointwise(b, &ops[n++], CUDNN_POINTWISE_EXP, f32, -1, s_sub, NULL, NULL, s_exp));
    DSLA_TRY(reduction(b, &ops[n++], CUDNN_REDUCE_TENSOR_ADD, s_exp, sum));
    DSLA_TRY(pointwise(b, &ops[n++], CUDNN_POINTWISE_DIV, f32, -1, s_exp, sum, NULL, p));
    DSLA_TRY(matmul(b, &ops[n++], p, v, o));
    DSLA_TRY(pointwise(b, &ops[n++], CUDNN_POINTWISE_LOG, f32, -1, sum, NULL, NULL, log_sum));
    DSLA_TRY(pointwise(b, &ops[n++], CUDNN_POINTWISE_ADD, f32, -1, mx, log_sum, NULL, lse));

    DSLA_TRY(make_desc(b, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, graph));
    SET(b, *graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &b->c->handle);
    SET(b, *graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, ops);
    CUDNN_TRY(b->c, b->c->api.finalize(*graph));
    return DSLA_OK;
}

enum { MAX_ENGINE_CONFIGS = 32 };

/* The first engine configuration, in heuristic order, whose plan finalises. */
static dsla_status_t make_plan(dsla_cuda_cudnn_t *c, plan_entry_t *e) {
    build_t b = {c, {0}, 0, UID_VIRTUAL};
    cudnnBackendDescriptor_t graph, heur;
    dsla_status_t st = build_graph(&b, e, &graph);
    if (st == DSLA_OK) st = make_desc(&b, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur);
    if (st != DSLA_OK) {
        build_release(&b);
        return st;
    }
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    cudnnStatus_t cs = c->api.set_attr(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
                                       CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph);
    if (cs == CUDNN_STATUS_SUCCESS)
        cs = c->api.set_attr(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (cs == CUDNN_STATUS_SUCCESS) cs = c->api.finalize(heur);
    int64_t n_cfg = 0;
    if (cs == CUDNN_STATUS_SUCCESS)
        cs = c->api.get_attr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                             &n_cfg, NULL);
    if (cs != CUDNN_STATUS_SUCCESS) {
        st = cudnn_fail(c, "cuDNN attention: engine heuristics", cs);
        build_release(&b);
        return st;
    }
    if (n_cfg > MAX_ENGINE_CONFIGS) n_cfg = MAX_ENGINE_CONFIGS;
    cudnnBackendDescriptor_t cfgs[MAX_ENGINE_CONFIGS];
    for (int64_t i = 0; i < n_cfg && st == DSLA_OK; i++)
        st = make_desc(&b, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[i]);
    int64_t got = 0;
    if (st == DSLA_OK && n_cfg > 0) {
        cs = c->api.get_attr(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                             n_cfg, &got, cfgs);
        if (cs != CUDNN_STATUS_SUCCESS) st = cudnn_fail(c, "cuDNN attention: engine configs", cs);
    }
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    e->plan = NULL;
    for (int64_t i = 0; i < got && st == DSLA_OK && !e->plan; i++) {
        cudnnBackendDescriptor_t plan;
        if (c->api.create_desc(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) !=
            CUDNN_STATUS_SUCCESS)
            continue;
        last = c->api.set_attr(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1,
                               &c->handle);
        if (last == CUDNN_STATUS_SUCCESS)
            last = c->api.set_attr(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                   CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
        if (last == CUDNN_STATUS_SUCCESS) last = c->api.finalize(plan);
        int64_t count = 0;
        if (last == CUDNN_STATUS_SUCCESS)
            last = c->api.get_attr(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64,
                                   1, &count, &e->workspace);
        if (last == CUDNN_STATUS_SUCCESS)
            e->plan = plan;
        else
            c->api.destroy_desc(plan);
    }
    if (st == DSLA_OK && !e->plan)
        st = cudnn_fail(c, "cuDNN attention: no engine of the heuristics' list finalises", last);
    if (st != DSLA_OK) {
        char why[768];
        snprintf(why, sizeof why, "%s", dsla_last_error());
        st = dsla_error(st, "cuDNN %zu: %s", c->api.get_version(), why);
    }
    build_release(&b);
    return st;
}

static dsla_status_t find_plan(dsla_cuda_cudnn_t *c, const plan_entry_t *key, plan_entry_t **out) {
    for (int i = 0; i < c->n_plans; i++) {
        plan_entry_t *e = &c->plans[i];
        if (e->n == key->n && e->heads == key->heads && e->kv_heads == key->kv_heads &&
            e->head_dim == key->head_dim && e->in_stride == key->in_stride &&
            e->out_stride == key->out_stride && e->kv_n == key->kv_n &&
            e->kv_stride == key->kv_stride) {
            *out = e;
            return DSLA_OK;
        }
    }
    plan_entry_t fresh = *key;
    DSLA_TRY(make_plan(c, &fresh));
    int slot = c->n_plans;
    if (slot == CUDNN_PLAN_CACHE) {
        slot = c->next_evict;
        c->next_evict = (c->next_evict + 1) % CUDNN_PLAN_CACHE;
        c->api.destroy_desc(c->plans[slot].plan);
    } else {
        c->n_plans++;
    }
    c->plans[slot] = fresh;
    *out = &c->plans[slot];
    return DSLA_OK;
}

static dsla_status_t check_shape(const char *who, const dsla_attn_shape_t *shape, int in_stride,
                                 int out_stride, int kv_stride) {
    if (!dsla_cuda_cudnn_attention_supports(shape))
        return dsla_error(
            DSLA_ERR_UNSUPPORTED,
            "%s: head dim %d with %d/%d heads (needs a multiple of %d up to %d, heads "
            "a multiple of KV heads)",
            who, shape->head_dim, shape->n_heads, shape->n_kv_heads, CUDNN_HEAD_DIM_ALIGN,
            CUDNN_MAX_HEAD_DIM);
    if (in_stride % CUDNN_HEAD_DIM_ALIGN || out_stride % CUDNN_HEAD_DIM_ALIGN ||
        kv_stride % CUDNN_HEAD_DIM_ALIGN)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: strides %d, %d and %d must be multiples of %d (16-byte rows)", who,
                          in_stride, out_stride, kv_stride, CUDNN_HEAD_DIM_ALIGN);
    return DSLA_OK;
}

/* Finds (or builds) key's plan, grows the workspace if it must, and runs it on stream. shift is
 * bound only for plans with a past. */
static dsla_status_t execute(dsla_cuda_cudnn_t *c, dsla_cuda_stream_t stream,
                             const plan_entry_t *key, uint16_t *out, const uint16_t *q,
                             const uint16_t *k, const uint16_t *v, int32_t shift,
                             const dsla_attn_shape_t *shape) {
    plan_entry_t *e = NULL;
    DSLA_TRY(find_plan(c, key, &e));
    if ((size_t)e->workspace > c->workspace_bytes) {
        /* Grows only; the stream's earlier work may still use the old one, so wait for it. */
        const cudaError_t ce = cudaStreamSynchronize(stream);
        if (ce != cudaSuccess)
            return dsla_error(DSLA_ERR_INTERNAL, "cudaStreamSynchronize: %s",
                              cudaGetErrorString(ce));
        cudaFree(c->workspace);
        c->workspace = NULL;
        c->workspace_bytes = 0;
        const cudaError_t ae = cudaMalloc(&c->workspace, (size_t)e->workspace);
        if (ae != cudaSuccess)
            return dsla_error(DSLA_ERR_OUT_OF_MEMORY, "cudaMalloc(%lld bytes, cuDNN workspace): %s",
                              (long long)e->workspace, cudaGetErrorString(ae));
        c->workspace_bytes = (size_t)e->workspace;
    }
    CUDNN_TRY(c, c->api.set_stream(c->handle, (cudaStream_t)stream));
    float scale = 1.0f / sqrtf((float)shape->head_dim), neg_inf = -FLT_MAX;
    void *ptrs[7] = {(void *)q, (void *)k, (void *)v, out, &scale, &neg_inf, &shift};
    const int64_t uids[7] = {UID_Q, UID_K, UID_V, UID_O, UID_SCALE, UID_NEG_INF, UID_SHIFT};
    const int64_t n_bound = key->kv_n > 0 ? 7 : 6;
    build_t b = {c, {0}, 0, 0};
    cudnnBackendDescriptor_t pack;
    DSLA_TRY(make_desc(&b, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack));
    cudnnStatus_t cs =
        c->api.set_attr(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n_bound, uids);
    if (cs == CUDNN_STATUS_SUCCESS)
        cs = c->api.set_attr(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                             n_bound, ptrs);
    if (cs == CUDNN_STATUS_SUCCESS)
        cs = c->api.set_attr(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1,
                             &c->workspace);
    if (cs == CUDNN_STATUS_SUCCESS) cs = c->api.finalize(pack);
    if (cs == CUDNN_STATUS_SUCCESS) cs = c->api.execute(c->handle, e->plan, pack);
    dsla_status_t st = DSLA_OK;
    if (cs != CUDNN_STATUS_SUCCESS) st = cudnn_fail(c, "cudnnBackendExecute (attention)", cs);
    build_release(&b);
    return st;
}

dsla_status_t dsla_cuda_attention_prefill_cudnn(dsla_cuda_cudnn_t *c, dsla_cuda_stream_t stream,
                                                uint16_t *out, int out_stride, const uint16_t *q,
                                                const uint16_t *k, const uint16_t *v, int in_stride,
                                                int n, const dsla_attn_shape_t *shape) {
    if (n <= 0) return DSLA_OK;
    DSLA_TRY(
        check_shape("dsla_cuda_attention_prefill_cudnn", shape, in_stride, out_stride, in_stride));
    const plan_entry_t key = {.n = dsla_cuda_cudnn_rows(n),
                              .heads = shape->n_heads,
                              .kv_heads = shape->n_kv_heads,
                              .head_dim = shape->head_dim,
                              .in_stride = in_stride,
                              .out_stride = out_stride};
    return execute(c, stream, &key, out, q, k, v, 0, shape);
}

dsla_status_t dsla_cuda_attention_prefill_cudnn_past(dsla_cuda_cudnn_t *c,
                                                     dsla_cuda_stream_t stream, uint16_t *out,
                                                     int out_stride, const uint16_t *q,
                                                     int q_stride, const uint16_t *k,
                                                     const uint16_t *v, int kv_stride, int n,
                                                     int past, const dsla_attn_shape_t *shape) {
    if (n <= 0) return DSLA_OK;
    if (past < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "dsla_cuda_attention_prefill_cudnn_past: past %d must be >= 0", past);
    DSLA_TRY(check_shape("dsla_cuda_attention_prefill_cudnn_past", shape, q_stride, out_stride,
                         kv_stride));
    const plan_entry_t key = {.n = dsla_cuda_cudnn_rows(n),
                              .heads = shape->n_heads,
                              .kv_heads = shape->n_kv_heads,
                              .head_dim = shape->head_dim,
                              .in_stride = q_stride,
                              .out_stride = out_stride,
                              .kv_n = dsla_cuda_cudnn_kv_rows(past + n),
                              .kv_stride = kv_stride};
    return execute(c, stream, &key, out, q, k, v, past, shape);
}

#else /* built without cuDNN's headers: cuDNN is absent, callers use their own kernels */

dsla_status_t dsla_cuda_cudnn_create(dsla_cuda_cudnn_t **out) {
    *out = NULL;
    return dsla_error(DSLA_ERR_UNSUPPORTED,
                      "dsla_cuda_cudnn_create: built without cuDNN's headers (cudnn_graph.h)");
}

void dsla_cuda_cudnn_destroy(dsla_cuda_cudnn_t **c) {
    *c = NULL;
}

size_t dsla_cuda_cudnn_version(const dsla_cuda_cudnn_t *c) {
    (void)c;
    return 0;
}

int dsla_cuda_cudnn_attention_supports(const dsla_attn_shape_t *shape) {
    (void)shape;
    return 0;
}

dsla_status_t dsla_cuda_attention_prefill_cudnn(dsla_cuda_cudnn_t *c, dsla_cuda_stream_t stream,
                                                uint16_t *out, int out_stride, const uint16_t *q,
                                                const uint16_t *k, const uint16_t *v, int in_stride,
                                                int n, const dsla_attn_shape_t *shape) {
    (void)c, (void)stream, (void)out, (void)out_stride, (void)q, (void)k, (void)v;
    (void)in_stride, (void)n, (void)shape;
    return dsla_error(DSLA_ERR_UNSUPPORTED,
                      "dsla_cuda_attention_prefill_cudnn: built without cuDNN's headers");
}

dsla_status_t dsla_cuda_attention_prefill_cudnn_past(dsla_cuda_cudnn_t *c,
                                                     dsla_cuda_stream_t stream, uint16_t *out,
                                                     int out_stride, const uint16_t *q,
                                                     int q_stride, const uint16_t *k,
                                                     const uint16_t *v, int kv_stride, int n,
                                                     int past, const dsla_attn_shape_t *shape) {
    (void)c, (void)stream, (void)out, (void)out_stride, (void)q, (void)q_stride, (void)k, (void)v;
    (void)kv_stride, (void)n, (void)past, (void)shape;
    return dsla_error(DSLA_ERR_UNSUPPORTED,
                      "dsla_cuda_attention_prefill_cudnn_past: built without cuDNN's headers");
}

#endif

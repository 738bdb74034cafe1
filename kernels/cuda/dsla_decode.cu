/* The fused DSLA decode step (dsla_cpu_dsla_recurrent_forward for one token) on the GPU.
 *
 * The step is memory-bound: per sequence and head it reads and writes two d x d fp32 states and
 * does ~6 FLOPs per element. So each state element is read once and written once, in 16-byte
 * vectors: a block owns one (sequence, head, slab of DSLA_CU_DECODE_SLAB value columns), walks
 * every key-channel row of that slab for both states (decay, rank-1 update, read-out in registers),
 * and reduces the read-out over rows in shared memory; no second pass and no cross-block sum.
 * A thread keeps DSLA_CU_DECODE_INFLIGHT rows of both states in flight before it uses the first,
 * and the loads and stores stream past L1/L2 (__ldcs/__stcs): the next layer's states are other
 * memory, so caching these would only evict useful lines. */
#include "kernels/cuda/dsla_common.cuh"

enum {
    /* Value columns per block: 32 floats = one 128-byte line per state row, 8 threads of float4. */
    DSLA_CU_DECODE_SLAB = 32,
    /* Rows each thread loads before computing: 4 rows x 2 states = 8 independent 16-byte loads. */
    DSLA_CU_DECODE_INFLIGHT = 4,
    DSLA_CU_DECODE_MAX_D = 256,
};

/* Issues the loads of rows c0, c0 + stride, ... (DSLA_CU_DECODE_INFLIGHT of them) of both states.
 */
static __device__ __forceinline__ void dsla_decode_load(float4 *x1, float4 *x2, const float *S1,
                                                        const float *S2, int c0, int stride, int d,
                                                        int j) {
#pragma unroll
    for (int u = 0; u < DSLA_CU_DECODE_INFLIGHT; u++) {
        const int c = c0 + u * stride;
        if (c < d) {
            x1[u] = __ldcs((const float4 *)(S1 + (size_t)c * d + j));
            x2[u] = __ldcs((const float4 *)(S2 + (size_t)c * d + j));
        }
    }
}

template <typename T>
static __global__ void __launch_bounds__(DSLA_CUDA_BLOCK)
    dsla_decode(const T *__restrict__ q, const T *__restrict__ k, const T *__restrict__ v,
                const T *__restrict__ a1, const T *__restrict__ a2, const float *alpha, float *s1,
                float *s2, float *const *s1_slots, float *const *s2_slots, float *out, int H, int d,
                int slab) {
    __shared__ float g1[DSLA_CU_DECODE_MAX_D], g2[DSLA_CU_DECODE_MAX_D];
    __shared__ float q1[DSLA_CU_DECODE_MAX_D], q2[DSLA_CU_DECODE_MAX_D], kk[DSLA_CU_DECODE_MAX_D];
    __shared__ float4 red[DSLA_CUDA_BLOCK];
    const int b = (int)blockIdx.z, h = (int)blockIdx.y, j0 = (int)blockIdx.x * slab;
    const int hd = H * d;
    const size_t row = (size_t)b * hd + (size_t)h * d;
    const size_t dd = (size_t)d * d;
    float *S1 = (s1_slots ? s1_slots[b] : s1 + (size_t)b * H * dd) + (size_t)h * dd;
    float *S2 = (s2_slots ? s2_slots[b] : s2 + (size_t)b * H * dd) + (size_t)h * dd;

    const int lanes = slab / 4; /* threads per row, one float4 each */
    const int rows_per_pass = (int)blockDim.x / lanes;
    const int col = ((int)threadIdx.x % lanes) * 4, r0 = (int)threadIdx.x / lanes;
    const int j = j0 + col;

    float w[2];
    dsla_cu_mix_weights(alpha, w);
    const float scale = 1.0f / sqrtf((float)d);
    for (int c = (int)threadIdx.x; c < d; c += (int)blockDim.x) {
        g1[c] = expf(dsla_cu_log_gate(dsla_cu_load(a1, row + c)));
        g2[c] = expf(dsla_cu_log_gate(dsla_cu_load(a2, row + c)));
        const float qc = dsla_cu_load(q, row + c);
        q1[c] = w[0] * scale * qc;
        q2[c] = w[1] * scale * qc;
        kk[c] = dsla_cu_load(k, row + c);
    }
    __syncthreads();

    float4 vv;
    vv.x = dsla_cu_load(v, row + j);
    vv.y = dsla_cu_load(v, row + j + 1);
    vv.z = dsla_cu_load(v, row + j + 2);
    vv.w = dsla_cu_load(v, row + j + 3);
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int c0 = r0; c0 < d; c0 += DSLA_CU_DECODE_INFLIGHT * rows_per_pass) {
        float4 x1[DSLA_CU_DECODE_INFLIGHT], x2[DSLA_CU_DECODE_INFLIGHT];
        dsla_decode_load(x1, x2, S1, S2, c0, rows_per_pass, d, j);
#pragma unroll
        for (int u = 0; u < DSLA_CU_DECODE_INFLIGHT; u++) {
            const int c = c0 + u * rows_per_pass;
            if (c >= d) continue;
            const float G1 = g1[c], G2 = g2[c], K = kk[c], Q1 = q1[c], Q2 = q2[c];
            float4 y1, y2;
            y1.x = G1 * x1[u].x + K * vv.x;
            y1.y = G1 * x1[u].y + K * vv.y;
            y1.z = G1 * x1[u].z + K * vv.z;
            y1.w = G1 * x1[u].w + K * vv.w;
            y2.x = G2 * x2[u].x + K * vv.x;
            y2.y = G2 * x2[u].y + K * vv.y;
            y2.z = G2 * x2[u].z + K * vv.z;
            y2.w = G2 * x2[u].w + K * vv.w;
            __stcs((float4 *)(S1 + (size_t)c * d + j), y1);
            __stcs((float4 *)(S2 + (size_t)c * d + j), y2);
            o.x += Q1 * y1.x + Q2 * y2.x;
            o.y += Q1 * y1.y + Q2 * y2.y;
            o.z += Q1 * y1.z + Q2 * y2.z;
            o.w += Q1 * y1.w + Q2 * y2.w;
        }
    }
    red[threadIdx.x] = o;
    __syncthreads();
    /* Column sums over the rows_per_pass partial rows, one thread per float4 of the slab. */
    if ((int)threadIdx.x < lanes) {
        float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int r = 0; r < rows_per_pass; r++) {
            const float4 p = red[r * lanes + threadIdx.x];
            s.x += p.x;
            s.y += p.y;
            s.z += p.z;
            s.w += p.w;
        }
        *(float4 *)(out + row + j) = s;
    }
}

/* A slab narrower than DSLA_CU_DECODE_SLAB is the whole row, and its float4 lanes must divide the
 * block evenly, so below 32 only the powers of two 4, 8 and 16 qualify. */
extern "C" int dsla_cuda_dsla_decode_supports(int head_dim) {
    if (head_dim < 4 || head_dim > DSLA_CU_DECODE_MAX_D) return 0;
    if (head_dim < DSLA_CU_DECODE_SLAB) return (head_dim & (head_dim - 1)) == 0;
    return head_dim % DSLA_CU_DECODE_SLAB == 0;
}

extern "C" dsla_status_t dsla_cuda_dsla_decode(dsla_cuda_stream_t stream,
                                               const dsla_dsla_dims_t *dims,
                                               const dsla_cuda_dsla_in_t *in,
                                               const dsla_cuda_dsla_states_t *states, float *out) {
    static const char who[] = "dsla_cuda_dsla_decode";
    if (!dims || !in || !states || !out || !in->q || !in->k || !in->v || !in->a1 || !in->a2 ||
        !in->alpha)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: dims, in (q, k, v, a1, a2, alpha), states and out are required",
                          who);
    if (dims->batch < 1 || dims->heads < 1 || dims->tokens != 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: batch %d and heads %d must be >= 1 and tokens %d must be 1", who,
                          dims->batch, dims->heads, dims->tokens);
    if (!dsla_cuda_dsla_decode_supports(dims->head_dim))
        return dsla_error(DSLA_ERR_UNSUPPORTED,
                          "%s: head_dim %d (4, 8, 16, or a multiple of %d up to %d)", who,
                          dims->head_dim, DSLA_CU_DECODE_SLAB, DSLA_CU_DECODE_MAX_D);
    const bool contiguous = states->s1 && states->s2 && !states->s1_slots && !states->s2_slots;
    const bool slots = !states->s1 && !states->s2 && states->s1_slots && states->s2_slots;
    if (!contiguous && !slots)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: states must set both s1 and s2 or both s1_slots and s2_slots", who);
    if (dims->batch > 65535)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: batch %d exceeds 65535", who,
                          dims->batch);
    const int d = dims->head_dim;
    const int slab = d < DSLA_CU_DECODE_SLAB ? d : DSLA_CU_DECODE_SLAB;
    const dim3 grid((unsigned)(d / slab), (unsigned)dims->heads, (unsigned)dims->batch);
    if (in->dtype == DSLA_DTYPE_F32)
        dsla_decode<float><<<grid, DSLA_CUDA_BLOCK, 0, stream>>>(
            (const float *)in->q, (const float *)in->k, (const float *)in->v, (const float *)in->a1,
            (const float *)in->a2, in->alpha, states->s1, states->s2, states->s1_slots,
            states->s2_slots, out, dims->heads, d, slab);
    else if (in->dtype == DSLA_DTYPE_BF16)
        dsla_decode<__nv_bfloat16><<<grid, DSLA_CUDA_BLOCK, 0, stream>>>(
            (const __nv_bfloat16 *)in->q, (const __nv_bfloat16 *)in->k,
            (const __nv_bfloat16 *)in->v, (const __nv_bfloat16 *)in->a1,
            (const __nv_bfloat16 *)in->a2, in->alpha, states->s1, states->s2, states->s1_slots,
            states->s2_slots, out, dims->heads, d, slab);
    else
        return dsla_error(DSLA_ERR_UNSUPPORTED, "%s: input dtype %s (f32 or bf16)", who,
                          dsla_dtype_name(in->dtype));
    DSLA_CUDA_CHECK_LAUNCH("dsla_decode");
    return DSLA_OK;
}

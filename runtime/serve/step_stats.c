/* Step accounting (step_stats.h): the floor of a step from its items, totals, and the device's
 * rates. */
#include "runtime/serve/step_stats.h"

#include <string.h>

#ifdef DSLA_HAVE_CUDA
#include "kernels/kernels_cuda.h"
#endif

static const char *const PHASE_NAMES[DSLA_STEP_PHASES] = {
    "gemm", "attention", "dsla", "other_gpu", "forward_host", "sampling", "scheduling",
};

const char *dsla_step_phase_name(dsla_step_phase_t p) {
    return p >= 0 && p < DSLA_STEP_PHASES ? PHASE_NAMES[p] : "unknown";
}

dsla_step_costs_t dsla_step_costs_for(const dsla_model_config_t *c, int weight_bytes,
                                      int kv_bytes) {
    const double D = c->hidden_size, I = c->intermediate_size, d = c->head_dim;
    const double qw = c->num_heads * d, kvw = c->num_kv_heads * d;
    const double mlp = 3.0 * D * I;
    return (dsla_step_costs_t){
        .layers = c->num_layers,
        .heads = c->num_heads,
        .head_dim = c->head_dim,
        .weight_elem_bytes = weight_bytes,
        .attn_layer_params = D * (qw + 2.0 * kvw) + qw * D + mlp,
        /* q, k, v, two gates (D -> H d each) and the output projection */
        .dsla_layer_params = 5.0 * D * qw + qw * D + mlp,
        .lm_head_params = D * (double)c->vocab_size,
        .kv_token_bytes = 2.0 * kvw * kv_bytes,
        .state_bytes = 2.0 * c->num_heads * d * d * sizeof(float),
    };
}

/* FLOPs of one DSLA token in one layer: per head and state, decay, outer-product update and read,
 * about 2 FLOPs per state element each. */
enum { DSLA_FLOPS_PER_STATE_ELEM = 6 };

void dsla_step_account(dsla_step_record_t *rec, const dsla_step_costs_t *c,
                       const dsla_step_rates_t *rates, const dsla_step_item_t *items, int n) {
    rec->items = n;
    rec->prefill_items = rec->prefill_tokens = rec->decode_seqs = rec->logit_rows = 0;
    rec->context_tokens = 0;
    double kv_read = 0, kv_write = 0, states = 0, flops = 0;
    const double HD = (double)c->heads * c->head_dim;
    for (int i = 0; i < n; i++) {
        const dsla_step_item_t *it = &items[i];
        const int attn = c->layers - it->dsla_layers;
        const double keys = (double)it->past + it->n;
        if (it->n == 1) {
            rec->decode_seqs++;
        } else {
            rec->prefill_items++;
            rec->prefill_tokens += it->n;
        }
        rec->logit_rows += it->samples;
        rec->context_tokens += it->past + it->n;
        kv_read += attn * keys * c->kv_token_bytes;
        kv_write += attn * (double)it->n * c->kv_token_bytes;
        states += 2.0 * it->dsla_layers * c->state_bytes;
        flops +=
            2.0 * it->n * (attn * c->attn_layer_params + it->dsla_layers * c->dsla_layer_params);
        /* causal attention: token t sees past + t + 1 keys; QK^T and PV, 2 FLOPs each */
        const double seen = (double)it->n * it->past + 0.5 * (double)it->n * (it->n + 1);
        flops += 4.0 * HD * seen * attn;
        flops +=
            (double)DSLA_FLOPS_PER_STATE_ELEM * 2.0 * HD * c->head_dim * it->n * it->dsla_layers;
        if (it->samples) flops += 2.0 * c->lm_head_params;
    }
    /* Weights once per pass, under the first item's plan (a step of several plans runs one pass
     * per plan on the GPU; that rare case is undercounted here). */
    const int k0 = n > 0 ? items[0].dsla_layers : 0;
    const double weights =
        n > 0 ? c->weight_elem_bytes * ((c->layers - k0) * c->attn_layer_params +
                                        k0 * c->dsla_layer_params + c->lm_head_params)
              : 0.0;
    rec->kv_read_bytes = kv_read;
    rec->kv_write_bytes = kv_write;
    rec->weight_bytes = weights;
    rec->state_bytes = states;
    rec->bytes = kv_read + kv_write + weights + states;
    rec->flops = flops;
    const double tb = rates->copy_bytes_per_s > 0 ? rec->bytes / rates->copy_bytes_per_s : 0.0;
    const double tf = rates->matrix_flops_per_s > 0 ? flops / rates->matrix_flops_per_s : 0.0;
    rec->floor_s =
        rates->copy_bytes_per_s > 0 && rates->matrix_flops_per_s > 0 ? (tb > tf ? tb : tf) : 0.0;
}

void dsla_step_totals_add(dsla_step_totals_t *t, const dsla_step_record_t *r) {
    t->steps++;
    t->prefill_tokens += (uint64_t)r->prefill_tokens;
    t->decode_tokens += (uint64_t)r->decode_seqs;
    t->kv_read_bytes += r->kv_read_bytes;
    t->bytes += r->bytes;
    t->flops += r->flops;
    t->step_seconds += r->step_s;
    t->floor_seconds += r->floor_s;
    t->forward_seconds += r->forward_s;
    t->device_seconds += r->device_s;
    for (int p = 0; p < DSLA_STEP_PHASES; p++)
        t->phase_seconds[p] += r->phase_s[p];
    t->phase_steps += r->phases_measured;
}

#ifdef DSLA_HAVE_CUDA

/* Ceilings measured as docs/perf.md measures them: a 1 GiB copy (bytes read + written) and a
 * bf16 8192^3 GEMM on random data, best of REPS after one warm-up. */
enum { RATE_REPS = 5, RATE_GEMM_N = 8192 };
#define RATE_COPY_BYTES ((size_t)1 << 30)

static dsla_status_t time_reps(dsla_cuda_stream_t st, dsla_cuda_event_t a, dsla_cuda_event_t b,
                               int which, void *x, void *y, void *z, dsla_cuda_blas_t *blas,
                               double *best) {
    *best = 0;
    for (int r = 0; r <= RATE_REPS; r++) {
        DSLA_TRY(dsla_cuda_event_record(a, st));
        if (which == 0)
            DSLA_TRY(dsla_cuda_copy(y, x, RATE_COPY_BYTES, st));
        else
            DSLA_TRY(dsla_cuda_gemm(blas, st, z, DSLA_DTYPE_F32, x, y, DSLA_DTYPE_BF16, RATE_GEMM_N,
                                    RATE_GEMM_N, RATE_GEMM_N, 0.0f));
        DSLA_TRY(dsla_cuda_event_record(b, st));
        DSLA_TRY(dsla_cuda_event_sync(b));
        float ms = 0;
        DSLA_TRY(dsla_cuda_event_elapsed_ms(&ms, a, b));
        if (r > 0 && (*best == 0 || ms * 1e-3 < *best)) *best = ms * 1e-3;
    }
    return DSLA_OK;
}

dsla_status_t dsla_step_rates_measure_cuda(dsla_step_rates_t *out) {
    memset(out, 0, sizeof *out);
    if (dsla_cuda_device_count() == 0)
        return dsla_error(DSLA_ERR_UNSUPPORTED, "step rates: no CUDA device");
    const size_t nn = (size_t)RATE_GEMM_N * RATE_GEMM_N;
    dsla_cuda_stream_t st = NULL;
    dsla_cuda_event_t a = NULL, b = NULL;
    dsla_cuda_blas_t *blas = NULL;
    void *x = NULL, *y = NULL, *z = NULL;
    double t_copy = 0, t_gemm = 0;
    dsla_status_t s = dsla_cuda_stream_create(&st);
    if (s == DSLA_OK) s = dsla_cuda_event_create(&a);
    if (s == DSLA_OK) s = dsla_cuda_event_create(&b);
    if (s == DSLA_OK) s = dsla_cuda_blas_create(&blas);
    if (s == DSLA_OK) s = dsla_cuda_malloc(&x, RATE_COPY_BYTES);
    if (s == DSLA_OK) s = dsla_cuda_malloc(&y, RATE_COPY_BYTES);
    if (s == DSLA_OK) s = dsla_cuda_malloc(&z, nn * sizeof(float));
    if (s == DSLA_OK) s = dsla_cuda_fill_uniform(st, x, DSLA_DTYPE_BF16, nn, -1.0f, 1.0f, 11);
    if (s == DSLA_OK) s = dsla_cuda_fill_uniform(st, y, DSLA_DTYPE_BF16, nn, -1.0f, 1.0f, 12);
    if (s == DSLA_OK) s = time_reps(st, a, b, 1, x, y, z, blas, &t_gemm);
    if (s == DSLA_OK) s = time_reps(st, a, b, 0, x, y, z, blas, &t_copy);
    if (s == DSLA_OK && (t_copy <= 0 || t_gemm <= 0))
        s = dsla_error(DSLA_ERR_INTERNAL, "step rates: a timing read zero");
    if (s == DSLA_OK) {
        out->copy_bytes_per_s = 2.0 * (double)RATE_COPY_BYTES / t_copy;
        out->matrix_flops_per_s = 2.0 * (double)nn * RATE_GEMM_N / t_gemm;
    }
    dsla_cuda_free(&x);
    dsla_cuda_free(&y);
    dsla_cuda_free(&z);
    dsla_cuda_blas_destroy(&blas);
    if (a) dsla_cuda_event_destroy(&a);
    if (b) dsla_cuda_event_destroy(&b);
    if (st) dsla_cuda_stream_destroy(&st);
    return s;
}

#else

dsla_status_t dsla_step_rates_measure_cuda(dsla_step_rates_t *out) {
    memset(out, 0, sizeof *out);
    return dsla_error(DSLA_ERR_UNSUPPORTED, "step rates: this build has no CUDA");
}

#endif

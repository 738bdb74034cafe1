/* Naive DSLA in fp64: the recurrence of DESIGN.md section 4 token by token, and reverse mode over
 * it. It is the oracle of the fp32 forms, so it favours the plainest loops over speed; the
 * log-gates are computed in fp64 here (the fp32 forms compute them in fp32, as the design says),
 * which is what lets it match the fp64 reference vectors to rounding. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dsla_internal.h"

static dsla_status_t dsla_cpu_dsla_check_in64(const dsla_dsla_in64_t *in, const char *who) {
    if (!in || !in->q || !in->k || !in->v || !in->a1 || !in->a2 || !in->alpha)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: q, k, v, a1, a2 and alpha are required",
                          who);
    return DSLA_OK;
}

static void dsla_cpu_dsla_mix_weights64(const double alpha[2], double w[2]) {
    double m = fmax(alpha[0], alpha[1]);
    double e0 = exp(alpha[0] - m), e1 = exp(alpha[1] - m);
    w[0] = e0 / (e0 + e1);
    w[1] = e1 / (e0 + e1);
}

/* S = diag(exp(log g(a))) S + k^T v for one head's d x d state. */
static void dsla_cpu_dsla_naive_update(double *S, const double *k, const double *v, const double *a,
                                       int d) {
    for (int c = 0; c < d; c++) {
        double g = exp(dsla_cpu_dsla_log_gate64(a[c]));
        for (int j = 0; j < d; j++)
            S[(size_t)c * d + j] = g * S[(size_t)c * d + j] + k[c] * v[j];
    }
}

dsla_status_t dsla_cpu_dsla_naive_forward(const dsla_dsla_dims_t *dims, const dsla_dsla_in64_t *in,
                                          const double *S1_0, const double *S2_0, double *out,
                                          double *S1_T, double *S2_T) {
    static const char who[] = "dsla_cpu_dsla_naive_forward";
    DSLA_TRY(dsla_cpu_dsla_check_dims(dims, who));
    DSLA_TRY(dsla_cpu_dsla_check_in64(in, who));
    if (!out && dims->tokens > 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: out is NULL", who);
    const int T = dims->tokens, H = dims->heads, d = dims->head_dim, hd = H * d;
    const size_t dd = (size_t)d * d;
    double *S = malloc(sizeof(double) * dd);
    if (!S) return dsla_error_oom("%s: %zu bytes for a state", who, 8 * dd);
    const double scale = 1.0 / sqrt((double)d);
    double w[2];
    dsla_cpu_dsla_mix_weights64(in->alpha, w);
    const double *S0[2] = {S1_0, S2_0}, *a[2] = {in->a1, in->a2};
    double *ST[2] = {S1_T, S2_T};

    for (int b = 0; b < dims->batch; b++) {
        for (int h = 0; h < H; h++) {
            size_t so = ((size_t)b * H + h) * dd;
            for (int t = 0; t < T; t++)
                memset(out + ((size_t)b * T + t) * hd + (size_t)h * d, 0, sizeof(double) * d);
            for (int i = 0; i < 2; i++) {
                if (S0[i])
                    memcpy(S, S0[i] + so, sizeof(double) * dd);
                else
                    memset(S, 0, sizeof(double) * dd);
                for (int t = 0; t < T; t++) {
                    size_t ro = ((size_t)b * T + t) * hd + (size_t)h * d;
                    dsla_cpu_dsla_naive_update(S, in->k + ro, in->v + ro, a[i] + ro, d);
                    for (int c = 0; c < d; c++) {
                        double qc = w[i] * scale * in->q[ro + c];
                        for (int j = 0; j < d; j++)
                            out[ro + j] += qc * S[(size_t)c * d + j];
                    }
                }
                if (ST[i]) memcpy(ST[i] + so, S, sizeof(double) * dd);
            }
        }
    }
    free(S);
    return DSLA_OK;
}

dsla_status_t dsla_cpu_dsla_naive_backward(const dsla_dsla_dims_t *dims, const dsla_dsla_in64_t *in,
                                           const double *S1_0, const double *S2_0,
                                           const double *dout, const double *dS1_T,
                                           const double *dS2_T, const dsla_dsla_grad64_t *grad,
                                           double *dS1_0, double *dS2_0) {
    static const char who[] = "dsla_cpu_dsla_naive_backward";
    DSLA_TRY(dsla_cpu_dsla_check_dims(dims, who));
    DSLA_TRY(dsla_cpu_dsla_check_in64(in, who));
    if (!grad || !grad->dq || !grad->dk || !grad->dv || !grad->da1 || !grad->da2 || !grad->dalpha ||
        !dout)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: dout and all of dq, dk, dv, da1, da2, dalpha are required", who);
    const int T = dims->tokens, H = dims->heads, d = dims->head_dim, hd = H * d;
    const size_t dd = (size_t)d * d;
    /* states[t] is the state before token t; states[T] the final one */
    double *states = malloc(sizeof(double) * dd * ((size_t)T + 1));
    double *dS = malloc(sizeof(double) * dd);
    if (!states || !dS) {
        free(states);
        free(dS);
        return dsla_error_oom("%s: %zu bytes for %d states", who, 8 * dd * ((size_t)T + 2), T + 1);
    }
    const double scale = 1.0 / sqrt((double)d);
    double w[2];
    dsla_cpu_dsla_mix_weights64(in->alpha, w);
    const double *S0[2] = {S1_0, S2_0}, *dST[2] = {dS1_T, dS2_T}, *a[2] = {in->a1, in->a2};
    double *dS0[2] = {dS1_0, dS2_0}, *da[2] = {grad->da1, grad->da2};
    double G[2] = {0.0, 0.0};

    for (int b = 0; b < dims->batch; b++) {
        for (int h = 0; h < H; h++) {
            size_t so = ((size_t)b * H + h) * dd;
            for (int t = 0; t < T; t++) {
                size_t ro = ((size_t)b * T + t) * hd + (size_t)h * d;
                memset(grad->dq + ro, 0, sizeof(double) * d);
                memset(grad->dk + ro, 0, sizeof(double) * d);
                memset(grad->dv + ro, 0, sizeof(double) * d);
            }
            for (int i = 0; i < 2; i++) {
                if (S0[i])
                    memcpy(states, S0[i] + so, sizeof(double) * dd);
                else
                    memset(states, 0, sizeof(double) * dd);
                for (int t = 0; t < T; t++) {
                    size_t ro = ((size_t)b * T + t) * hd + (size_t)h * d;
                    double *S = states + (size_t)(t + 1) * dd;
                    memcpy(S, S - dd, sizeof(double) * dd);
                    dsla_cpu_dsla_naive_update(S, in->k + ro, in->v + ro, a[i] + ro, d);
                }
                if (dST[i])
                    memcpy(dS, dST[i] + so, sizeof(double) * dd);
                else
                    memset(dS, 0, sizeof(double) * dd);
                for (int t = T - 1; t >= 0; t--) {
                    size_t ro = ((size_t)b * T + t) * hd + (size_t)h * d;
                    const double *S = states + (size_t)(t + 1) * dd, *S_prev = S - dd;
                    const double *q = in->q + ro, *k = in->k + ro, *v = in->v + ro;
                    const double *dO = dout + ro;
                    for (int c = 0; c < d; c++) {
                        /* the read o = (q / sqrt(d)) S: gradients of q, of the mix weight, of S */
                        double sd = 0.0;
                        for (int j = 0; j < d; j++)
                            sd += S[(size_t)c * d + j] * dO[j];
                        G[i] += scale * q[c] * sd;
                        grad->dq[ro + c] += w[i] * scale * sd;
                        for (int j = 0; j < d; j++)
                            dS[(size_t)c * d + j] += w[i] * scale * q[c] * dO[j];
                    }
                    for (int c = 0; c < d; c++) {
                        /* the update S = g S_prev + k^T v */
                        double lg = dsla_cpu_dsla_log_gate64(a[i][ro + c]), g = exp(lg);
                        double dkc = 0.0, dlg = 0.0;
                        for (int j = 0; j < d; j++) {
                            double ds = dS[(size_t)c * d + j];
                            dkc += ds * v[j];
                            grad->dv[ro + j] += k[c] * ds;
                            dlg += S_prev[(size_t)c * d + j] * ds;
                            dS[(size_t)c * d + j] = g * ds;
                        }
                        grad->dk[ro + c] += dkc;
                        da[i][ro + c] = g * dlg * dsla_cpu_dsla_log_gate_grad64(a[i][ro + c]);
                    }
                }
                if (dS0[i]) memcpy(dS0[i] + so, dS, sizeof(double) * dd);
            }
        }
    }
    grad->dalpha[0] = w[0] * w[1] * (G[0] - G[1]);
    grad->dalpha[1] = -grad->dalpha[0];
    free(states);
    free(dS);
    return DSLA_OK;
}

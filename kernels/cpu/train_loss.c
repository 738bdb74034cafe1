/* Loss terms of the layer distillation (DESIGN.md 5.3), each returning its value and writing its
 * gradient: the normalised layer MSE, the logits' KL at a temperature, the gates' cosine. */
#include "kernels/kernels_train.h"

#include <math.h>

double dsla_cpu_nmse_loss(float *grad, const float *student, const float *teacher, size_t n) {
    double err = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)student[i] - teacher[i];
        err += d * d;
        norm += (double)teacher[i] * teacher[i];
    }
    if (norm == 0.0) norm = 1.0;
    if (grad) {
        const double scale = 2.0 / norm;
        for (size_t i = 0; i < n; i++)
            grad[i] = (float)(scale * ((double)student[i] - teacher[i]));
    }
    return err / norm;
}

/* log(sum_j exp(x_j / T)), stable for any logits. */
static double dsla_logsumexp_scaled(const float *x, int n, double inv_t) {
    double max = -INFINITY;
    for (int j = 0; j < n; j++)
        if (x[j] * inv_t > max) max = x[j] * inv_t;
    double sum = 0.0;
    for (int j = 0; j < n; j++)
        sum += exp(x[j] * inv_t - max);
    return max + log(sum);
}

double dsla_cpu_kl_div_loss(float *grad, const float *student, const float *teacher, int rows,
                            int vocab, float temperature) {
    if (rows <= 0) return 0.0;
    const double T = temperature, inv_t = 1.0 / T;
    double total = 0.0;
    for (int r = 0; r < rows; r++) {
        const float *s = student + (size_t)r * vocab;
        const float *t = teacher + (size_t)r * vocab;
        const double lse_s = dsla_logsumexp_scaled(s, vocab, inv_t);
        const double lse_t = dsla_logsumexp_scaled(t, vocab, inv_t);
        float *g = grad ? grad + (size_t)r * vocab : NULL;
        for (int j = 0; j < vocab; j++) {
            /* Log-probabilities in closed form: an underflowing p_j contributes 0 * finite, never
             * 0 * log 0. */
            const double log_p = t[j] * inv_t - lse_t, log_q = s[j] * inv_t - lse_s;
            const double p = exp(log_p);
            total += p * (log_p - log_q);
            if (g) g[j] = (float)(T / rows * (exp(log_q) - p));
        }
    }
    return T * T / rows * total;
}

double dsla_cpu_cosine_similarity(float *da, float *db, const float *a, const float *b, size_t n) {
    double ab = 0.0, aa = 0.0, bb = 0.0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    const double norms = sqrt(aa) * sqrt(bb);
    if (norms <= DSLA_COSINE_EPS) {
        /* Clamped: the denominator is a constant, so the cosine is linear in each vector. */
        for (size_t i = 0; i < n; i++) {
            if (da) da[i] = (float)(b[i] / DSLA_COSINE_EPS);
            if (db) db[i] = (float)(a[i] / DSLA_COSINE_EPS);
        }
        return ab / DSLA_COSINE_EPS;
    }
    const double cos = ab / norms;
    for (size_t i = 0; i < n; i++) {
        if (da) da[i] = (float)(b[i] / norms - cos * a[i] / aa);
        if (db) db[i] = (float)(a[i] / norms - cos * b[i] / bb);
    }
    return cos;
}

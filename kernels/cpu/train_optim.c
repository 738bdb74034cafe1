/* AdamW with PyTorch's semantics, its warm-up + cosine schedule, and global gradient clipping. */
#include "kernels/kernels_train.h"

#include <math.h>

/* Default hyper-parameters (dsla_adamw_params_t says why). */
static const double DSLA_ADAMW_LR = 1e-3;
static const double DSLA_ADAMW_MIN_LR = 1e-4;
static const double DSLA_ADAMW_BETA1 = 0.9;
static const double DSLA_ADAMW_BETA2 = 0.999;
static const double DSLA_ADAMW_EPS = 1e-8;
static const double DSLA_ADAMW_WEIGHT_DECAY = 0.01;
static const double DSLA_ADAMW_MAX_GRAD_NORM = 1.0;
static const int DSLA_ADAMW_WARMUP_DIVISOR = 10;
/* M_PI is an XSI extension, absent under -std=c11. */
static const double DSLA_PI = 3.14159265358979323846;

dsla_adamw_params_t dsla_adamw_params_default(int total_steps) {
    dsla_adamw_params_t p = {
        .lr = DSLA_ADAMW_LR,
        .min_lr = DSLA_ADAMW_MIN_LR,
        .beta1 = DSLA_ADAMW_BETA1,
        .beta2 = DSLA_ADAMW_BETA2,
        .eps = DSLA_ADAMW_EPS,
        .weight_decay = DSLA_ADAMW_WEIGHT_DECAY,
        .max_grad_norm = DSLA_ADAMW_MAX_GRAD_NORM,
        .warmup_steps = total_steps / DSLA_ADAMW_WARMUP_DIVISOR,
        .total_steps = total_steps,
    };
    return p;
}

double dsla_adamw_lr(const dsla_adamw_params_t *p, long step) {
    if (p->warmup_steps > 0 && step <= p->warmup_steps)
        return p->lr * (double)step / p->warmup_steps;
    if (step >= p->total_steps) return p->min_lr;
    const double progress =
        (double)(step - p->warmup_steps) / (double)(p->total_steps - p->warmup_steps);
    return p->min_lr + (p->lr - p->min_lr) * 0.5 * (1.0 + cos(DSLA_PI * progress));
}

void dsla_cpu_adamw_step(float *param, float *m, float *v, const float *grad, size_t n, long step,
                         double lr, const dsla_adamw_params_t *p) {
    /* As torch.optim.AdamW's single-tensor path: scalars in double, rounded once to float; decay
     * first, then the step with the bias corrections folded into a step size and the denominator.
     */
    const float b1 = (float)p->beta1, one_b1 = (float)(1.0 - p->beta1);
    const float b2 = (float)p->beta2, one_b2 = (float)(1.0 - p->beta2);
    const float decay = (float)(1.0 - lr * p->weight_decay);
    const double bc1 = 1.0 - pow(p->beta1, (double)step), bc2 = 1.0 - pow(p->beta2, (double)step);
    const float step_size = (float)(lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float eps = (float)p->eps;
    for (size_t i = 0; i < n; i++) {
        const float g = grad[i];
        m[i] = b1 * m[i] + one_b1 * g;
        v[i] = b2 * v[i] + one_b2 * g * g;
        const float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        param[i] = param[i] * decay - step_size * (m[i] / denom);
    }
}

double dsla_cpu_clip_grad_norm(float *const *grads, const size_t *counts, int n_arrays,
                               double max_norm) {
    double ss = 0.0;
    for (int a = 0; a < n_arrays; a++)
        for (size_t i = 0; i < counts[a]; i++)
            ss += (double)grads[a][i] * grads[a][i];
    const double norm = sqrt(ss);
    if (!isfinite(norm) || max_norm <= 0.0 || norm <= max_norm) return norm;
    const float scale = (float)(max_norm / norm);
    for (int a = 0; a < n_arrays; a++)
        for (size_t i = 0; i < counts[a]; i++)
            grads[a][i] *= scale;
    return norm;
}

/* Rotary position embedding on the CPU, Hugging Face rotate_half convention, optional llama3
 * scaling. Every step is float32 where transformers computes in float32, so that angles (and
 * logits) agree with it to the last bit or two rather than drifting at large positions. */
#include "kernels/kernels.h"

#include <math.h>

/* transformers' _compute_llama3_parameters, element by element. */
static float llama3_adjust(float inv_freq, const dsla_rope_params_t *p) {
    const float two_pi = 6.283185307179586f;
    float low_freq_wavelen = (float)p->original_max_position / p->low_freq_factor;
    float high_freq_wavelen = (float)p->original_max_position / p->high_freq_factor;
    float wavelen = two_pi / inv_freq;
    float adjusted = wavelen > low_freq_wavelen ? inv_freq / p->factor : inv_freq;
    bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (!medium) return adjusted;
    float smooth = ((float)p->original_max_position / wavelen - p->low_freq_factor) /
                   (p->high_freq_factor - p->low_freq_factor);
    return (1.0f - smooth) * adjusted / p->factor + smooth * adjusted;
}

void dsla_cpu_rope_inv_freq(float *inv_freq, int head_dim, const dsla_rope_params_t *p) {
    for (int i = 0; i < head_dim / 2; i++) {
        float exponent = (float)(2 * i) / (float)head_dim;
        float f = 1.0f / powf(p->theta, exponent);
        inv_freq[i] = p->llama3 ? llama3_adjust(f, p) : f;
    }
}

void dsla_cpu_rope_tables(float *cos_out, float *sin_out, const int32_t *positions, int n,
                          const float *inv_freq, int head_dim) {
    int half = head_dim / 2;
    for (int r = 0; r < n; r++) {
        for (int i = 0; i < half; i++) {
            float angle = (float)positions[r] * inv_freq[i];
            cos_out[(size_t)r * half + i] = (float)cos((double)angle);
            sin_out[(size_t)r * half + i] = (float)sin((double)angle);
        }
    }
}

void dsla_cpu_rope_apply(float *x, int n, int row_stride, int n_heads, int head_dim,
                         const float *cos_tab, const float *sin_tab) {
    int half = head_dim / 2;
    for (int r = 0; r < n; r++) {
        const float *c = cos_tab + (size_t)r * half;
        const float *s = sin_tab + (size_t)r * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)r * row_stride + (size_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                /* q*cos + rotate_half(q)*sin, rotate_half(q) = (-q2, q1) */
                v[i] = a * c[i] - b * s[i];
                v[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

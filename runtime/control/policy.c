/* Load policies: the decision rules and their text form (policy.h). */
#include "runtime/control/policy.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {"threshold", "slo", "manual"};
enum { N_KINDS = sizeof kind_names / sizeof kind_names[0] };

/* Kinds a field applies to, as a bit mask. */
enum {
    K_THRESHOLD = 1 << DSLA_POLICY_THRESHOLD,
    K_SLO = 1 << DSLA_POLICY_SLO,
    K_MANUAL = 1 << DSLA_POLICY_MANUAL,
    K_ALL = K_THRESHOLD | K_SLO | K_MANUAL,
};

/* Every tunable field: its name in the text form, the kinds that use it, where it lives and its
 * inclusive limits. One table serves parsing, checking and formatting. */
typedef struct {
    const char *name;
    int kinds;
    bool is_u32;
    size_t offset;
    double min, max;
} field_t;

#define U32_FIELD(n, k, lo, hi)                                                                    \
    { #n, k, true, offsetof(dsla_policy_config_t, n), lo, hi }
#define F64_FIELD(n, k, lo, hi)                                                                    \
    { #n, k, false, offsetof(dsla_policy_config_t, n), lo, hi }
static const field_t fields[] = {
    F64_FIELD(max_ratio, K_ALL, 0.0, 1.0),
    U32_FIELD(layers, K_MANUAL, 0, DSLA_POLICY_LAYERS_MAX),
    U32_FIELD(queue_high, K_THRESHOLD, 1, 1000000),
    U32_FIELD(queue_low, K_THRESHOLD, 0, 1000000),
    U32_FIELD(wait_high_ms, K_THRESHOLD, 1, 86400000),
    U32_FIELD(wait_low_ms, K_THRESHOLD, 0, 86400000),
    F64_FIELD(ttft_ms, K_SLO, 0.0, 86400000.0),
    F64_FIELD(tpot_ms, K_SLO, 0.0, 86400000.0),
    F64_FIELD(slack, K_SLO, 0.01, 0.99),
    F64_FIELD(memory_low, K_THRESHOLD | K_SLO, 0.0, 1.0),
    U32_FIELD(cooldown_ms, K_THRESHOLD | K_SLO, 0, 86400000),
    U32_FIELD(step, K_THRESHOLD | K_SLO, 1, DSLA_POLICY_LAYERS_MAX),
};
enum { N_FIELDS = sizeof fields / sizeof fields[0] };

static double field_get(const dsla_policy_config_t *c, const field_t *f) {
    const char *p = (const char *)c + f->offset;
    return f->is_u32 ? (double)*(const uint32_t *)p : *(const double *)p;
}

static void field_set(dsla_policy_config_t *c, const field_t *f, double v) {
    char *p = (char *)c + f->offset;
    if (f->is_u32)
        *(uint32_t *)p = (uint32_t)v;
    else
        *(double *)p = v;
}

dsla_policy_config_t dsla_policy_default(dsla_policy_kind_t kind) {
    return (dsla_policy_config_t){
        .kind = kind,
        .max_ratio = 0.5,
        .cooldown_ms = 5000,
        .step = 1,
        .queue_high = 8,
        .queue_low = 0,
        .wait_high_ms = 1000,
        .wait_low_ms = 100,
        .ttft_ms = 1000.0,
        .tpot_ms = 100.0,
        .slack = 0.5,
        .memory_low = 0.8,
        .layers = 0,
    };
}

const char *dsla_policy_kind_name(dsla_policy_kind_t kind) {
    return (unsigned)kind < N_KINDS ? kind_names[kind] : "unknown";
}

int dsla_policy_max_layers(const dsla_policy_config_t *c, int num_layers, int available) {
    int by_ratio = (int)floor(c->max_ratio * num_layers + 1e-9);
    return by_ratio < available ? by_ratio : available;
}

static int clamp(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

int dsla_policy_target(const dsla_policy_config_t *c, const dsla_policy_load_t *load,
                       const dsla_policy_state_t *state, char *why, size_t why_cap) {
    char scratch[8];
    if (!why) {
        why = scratch;
        why_cap = sizeof scratch;
    }
    int max = dsla_policy_max_layers(c, (int)load->num_layers, state->available);
    int cur = state->current;
    if (c->kind == DSLA_POLICY_MANUAL) {
        snprintf(why, why_cap, "manual: pinned at %u layers, at most %d", c->layers, max);
        return clamp((int)c->layers, 0, max);
    }
    if (cur > max) { /* the cap fell below what runs: obey it at once */
        snprintf(why, why_cap, "%s: %d layers exceed the maximum of %d",
                 dsla_policy_kind_name(c->kind), cur, max);
        return max;
    }
    bool up, down;
    if (c->kind == DSLA_POLICY_THRESHOLD) {
        up = load->queue_length >= c->queue_high || load->oldest_wait_ms >= c->wait_high_ms;
        down = load->queue_length <= c->queue_low && load->oldest_wait_ms <= c->wait_low_ms;
        snprintf(why, why_cap,
                 "threshold: queue %u (high %u, low %u), longest wait %u ms (high %u, low %u)",
                 load->queue_length, c->queue_high, c->queue_low, load->oldest_wait_ms,
                 c->wait_high_ms, c->wait_low_ms);
    } else {
        up = (c->ttft_ms > 0 && load->ttft_p90_ms > c->ttft_ms) ||
             (c->tpot_ms > 0 && load->tpot_p90_ms > c->tpot_ms);
        down = (c->ttft_ms <= 0 || load->ttft_p90_ms <= c->slack * c->ttft_ms) &&
               (c->tpot_ms <= 0 || load->tpot_p90_ms <= c->slack * c->tpot_ms);
        snprintf(why, why_cap,
                 "slo: TTFT p90 %.1f ms (target %.1f), TPOT p90 %.2f ms (target %.2f)",
                 load->ttft_p90_ms, c->ttft_ms, load->tpot_p90_ms, c->tpot_ms);
    }
    if (down && cur > 0 && load->memory_used > c->memory_low) {
        size_t n = strlen(why);
        snprintf(why + n, why_cap - n, "; arena %.0f%% in use (revert at most %.0f%%)",
                 100 * load->memory_used, 100 * c->memory_low);
        down = false;
    }
    int target = up     ? clamp(cur + (int)c->step, 0, max)
                 : down ? clamp(cur - (int)c->step, 0, max)
                        : cur;
    if (target != cur && state->last_change_ms != 0 &&
        state->now_ms < state->last_change_ms + c->cooldown_ms) {
        size_t n = strlen(why);
        snprintf(why + n, why_cap - n, "; cooling down");
        return cur;
    }
    return target;
}

void dsla_policy_fields(dsla_policy_kind_t kind, char *out, size_t cap) {
    size_t n = 0;
    if (cap) out[0] = '\0';
    for (int i = 0; i < N_FIELDS && n < cap; i++)
        if (fields[i].kinds & (1 << kind))
            n += (size_t)snprintf(out + n, cap - n, "%s%s", n ? ", " : "", fields[i].name);
}

static const field_t *field_find(const char *name, size_t len) {
    for (int i = 0; i < N_FIELDS; i++)
        if (strlen(fields[i].name) == len && strncmp(fields[i].name, name, len) == 0)
            return &fields[i];
    return NULL;
}

static dsla_status_t parse_word(dsla_policy_config_t *c, const char *word) {
    const char *kind = dsla_policy_kind_name(c->kind);
    const char *eq = strchr(word, '=');
    if (!eq)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "policy %s: '%s' is not key=value (e.g. max_ratio=0.5)", kind, word);
    const field_t *f = field_find(word, (size_t)(eq - word));
    if (!f || !(f->kinds & (1 << c->kind))) {
        char names[256];
        dsla_policy_fields(c->kind, names, sizeof names);
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "policy %s: no field '%.*s'; it takes %s",
                          kind, (int)(eq - word), word, names);
    }
    char *end = NULL;
    double v = strtod(eq + 1, &end);
    if (end == eq + 1 || *end || !isfinite(v) || (f->is_u32 && v != floor(v)))
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "policy %s: %s '%s' is not %s", kind, f->name,
                          eq + 1, f->is_u32 ? "a whole number" : "a number");
    if (v < f->min || v > f->max)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "policy %s: %s %.15g is outside [%.15g, %.15g]", kind, f->name, v, f->min,
                          f->max);
    field_set(c, f, v);
    return DSLA_OK;
}

dsla_status_t dsla_policy_parse(const dsla_policy_config_t *base, const char *const *words, int n,
                                dsla_policy_config_t *out) {
    if (n < 1)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "policy: name one of threshold, slo, manual, then key=value fields");
    int kind = -1;
    for (int k = 0; k < N_KINDS; k++)
        if (strcmp(words[0], kind_names[k]) == 0) kind = k;
    if (kind < 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "policy: '%s' is not a policy; use threshold, slo or manual", words[0]);
    dsla_policy_config_t c =
        base && (int)base->kind == kind ? *base : dsla_policy_default((dsla_policy_kind_t)kind);
    for (int i = 1; i < n; i++)
        DSLA_TRY(parse_word(&c, words[i]));
    if (c.kind == DSLA_POLICY_THRESHOLD && c.queue_low >= c.queue_high)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "policy threshold: queue_low %u must be below queue_high %u "
                          "(the hysteresis band)",
                          c.queue_low, c.queue_high);
    if (c.kind == DSLA_POLICY_THRESHOLD && c.wait_low_ms >= c.wait_high_ms)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "policy threshold: wait_low_ms %u must be below wait_high_ms %u "
                          "(the hysteresis band)",
                          c.wait_low_ms, c.wait_high_ms);
    *out = c;
    return DSLA_OK;
}

enum { LINE_WORDS_MAX = 16, LINE_MAX = 512 };

dsla_status_t dsla_policy_parse_line(const dsla_policy_config_t *base, const char *line,
                                     dsla_policy_config_t *out) {
    char buf[LINE_MAX];
    if (strlen(line) >= sizeof buf)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "policy: longer than %d bytes", LINE_MAX - 1);
    snprintf(buf, sizeof buf, "%s", line);
    const char *words[LINE_WORDS_MAX];
    int n = 0;
    for (char *save = NULL, *w = strtok_r(buf, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
        if (n == LINE_WORDS_MAX)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "policy: more than %d words",
                              LINE_WORDS_MAX);
        words[n++] = w;
    }
    return dsla_policy_parse(base, words, n, out);
}

void dsla_policy_format(const dsla_policy_config_t *c, char *out, size_t cap) {
    size_t n = (size_t)snprintf(out, cap, "%s", dsla_policy_kind_name(c->kind));
    for (int i = 0; i < N_FIELDS && n < cap; i++) {
        if (!(fields[i].kinds & (1 << c->kind))) continue;
        n += (size_t)snprintf(out + n, cap - n, " %s=%.15g", fields[i].name,
                              field_get(c, &fields[i]));
    }
}

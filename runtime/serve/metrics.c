/* Log-spaced histograms. */
#include "runtime/serve/metrics.h"

#include <math.h>

double dsla_histogram_bound(int i) {
    return ldexp(DSLA_HISTOGRAM_FIRST_BOUND, i);
}

void dsla_histogram_observe(dsla_histogram_t *h, double seconds) {
    int i = 0;
    while (i < DSLA_HISTOGRAM_BUCKETS && seconds > dsla_histogram_bound(i))
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += seconds;
    if (seconds > h->max) h->max = seconds;
}

double dsla_histogram_quantile(const dsla_histogram_t *h, double q) {
    if (h->count == 0) return 0.0;
    double rank = q * (double)h->count;
    uint64_t seen = 0;
    for (int i = 0; i <= DSLA_HISTOGRAM_BUCKETS; i++) {
        if (h->counts[i] == 0 || (double)(seen + h->counts[i]) < rank) {
            seen += h->counts[i];
            continue;
        }
        double lo = i == 0 ? 0.0 : dsla_histogram_bound(i - 1);
        double hi = i == DSLA_HISTOGRAM_BUCKETS ? h->max : dsla_histogram_bound(i);
        double v = lo + (hi - lo) * (rank - (double)seen) / (double)h->counts[i];
        return v < h->max ? v : h->max;
    }
    return h->max;
}

double dsla_histogram_mean(const dsla_histogram_t *h) {
    return h->count ? h->sum / (double)h->count : 0.0;
}

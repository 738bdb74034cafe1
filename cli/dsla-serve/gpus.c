/* --gpus and --distill-gpus: lists of CUDA device indices (gpus.h). */
#include "cli/dsla-serve/gpus.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest index a list may name: far beyond any machine, small enough to catch typos. */
#define GPU_INDEX_MAX 1023

/* One index at *p; advances past it. -1: not a number or above GPU_INDEX_MAX. */
static long index_at(const char **p) {
    if (!isdigit((unsigned char)**p)) return -1;
    char *end = NULL;
    const long v = strtol(*p, &end, 10);
    *p = end;
    return v > GPU_INDEX_MAX ? -1 : v;
}

int dsla_serve_gpu_listed(const int *list, int n, int gpu) {
    for (int i = 0; i < n; i++)
        if (list[i] == gpu) return 1;
    return 0;
}

int dsla_serve_parse_gpus(const char *option, const char *text, int *out, int cap, int *n) {
    *n = 0;
    const char *p = text;
    for (;;) {
        const char *item = p;
        long lo = index_at(&p), hi = lo;
        if (lo >= 0 && *p == '-') {
            p++;
            hi = index_at(&p);
        }
        if (lo < 0 || hi < 0 || (*p != ',' && *p != '\0')) {
            const size_t len = strcspn(item, ",");
            fprintf(stderr,
                    "dsla-serve: --%s %s: '%.*s' is not a GPU index (0 to %d) or a range of them "
                    "like 0-3; give a list like 0,2-3\n",
                    option, text, (int)len, item, GPU_INDEX_MAX);
            return 2;
        }
        if (hi < lo) {
            fprintf(stderr,
                    "dsla-serve: --%s %s: the range %ld-%ld runs backwards; write %ld-%ld\n",
                    option, text, lo, hi, hi, lo);
            return 2;
        }
        for (long g = lo; g <= hi; g++) {
            if (dsla_serve_gpu_listed(out, *n, (int)g)) {
                fprintf(stderr, "dsla-serve: --%s %s: GPU %ld is named twice\n", option, text, g);
                return 2;
            }
            if (*n == cap) {
                fprintf(stderr, "dsla-serve: --%s %s: more than %d GPUs\n", option, text, cap);
                return 2;
            }
            out[(*n)++] = (int)g;
        }
        if (*p == '\0') return 0;
        p++; /* the comma */
    }
}

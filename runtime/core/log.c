#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* -1: not yet read from the environment. */
static atomic_int current_level = -1;

static dsla_log_level_t level_from_env(void) {
    const char *v = getenv("DSLA_LOG");
    if (!v) return DSLA_LOG_WARN;
    if (strcmp(v, "error") == 0) return DSLA_LOG_ERROR;
    if (strcmp(v, "info") == 0) return DSLA_LOG_INFO;
    if (strcmp(v, "debug") == 0) return DSLA_LOG_DEBUG;
    return DSLA_LOG_WARN;
}

void dsla_log_set_level(dsla_log_level_t level) {
    atomic_store(&current_level, (int)level);
}

dsla_log_level_t dsla_log_level(void) {
    int level = atomic_load(&current_level);
    if (level < 0) {
        level = (int)level_from_env();
        atomic_store(&current_level, level);
    }
    return (dsla_log_level_t)level;
}

void dsla_log_write(dsla_log_level_t level, const char *file, int line, const char *fmt, ...) {
    static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    const char *base = strrchr(file, '/');
    char line_buf[2048];
    int n = snprintf(line_buf, sizeof line_buf, "%02d:%02d:%02d.%03ld %-5s %s:%d ", tm.tm_hour,
                     tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000L, names[level],
                     base ? base + 1 : file, line);
    if (n < 0) return;
    va_list ap;
    va_start(ap, fmt);
    if ((size_t)n < sizeof line_buf) vsnprintf(line_buf + n, sizeof line_buf - (size_t)n, fmt, ap);
    va_end(ap);
    /* One fputs per line so that lines from concurrent actor threads do not interleave. */
    fprintf(stderr, "%s\n", line_buf);
}

bool dsla_log_limit_pass(dsla_log_limit_t *lim, dsla_log_level_t level, const char *file,
                         int line) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    if (lim->in_window == 0 || now_ms - lim->window_start_ms >= DSLA_LOG_LIMIT_WINDOW_MS) {
        if (lim->held_back)
            dsla_log_write(level, file, line, "(%llu lines from here held back in the last %u s)",
                           (unsigned long long)lim->held_back, DSLA_LOG_LIMIT_WINDOW_MS / 1000u);
        lim->window_start_ms = now_ms;
        lim->in_window = 0;
        lim->held_back = 0;
    }
    if (lim->in_window >= DSLA_LOG_LIMIT_BURST) {
        lim->held_back++;
        return false;
    }
    lim->in_window++;
    return true;
}

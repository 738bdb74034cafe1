#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* -1: not yet read from the environment. */
static atomic_int current_level = -1;

/* -1: not yet read from the environment. */
static atomic_int current_format = -1;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

bool dsla_log_level_parse(const char *name, dsla_log_level_t *out) {
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, level_names[i]) == 0) {
            *out = (dsla_log_level_t)i;
            return true;
        }
    return false;
}

static dsla_log_level_t level_from_env(void) {
    dsla_log_level_t level = DSLA_LOG_WARN;
    dsla_log_level_parse(getenv("DSLA_LOG"), &level);
    return level;
}

void dsla_log_set_format(dsla_log_format_t format) {
    atomic_store(&current_format, (int)format);
}

static dsla_log_format_t log_format(void) {
    int f = atomic_load(&current_format);
    if (f < 0) {
        const char *v = getenv("DSLA_LOG_FORMAT");
        f = v && strcmp(v, "json") == 0 ? DSLA_LOG_FORMAT_JSON : DSLA_LOG_FORMAT_TEXT;
        atomic_store(&current_format, f);
    }
    return (dsla_log_format_t)f;
}

/* s as the inside of a JSON string into out (cut to fit). */
static void json_escape(const char *s, char *out, size_t cap) {
    size_t n = 0;
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
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
    va_list ap;
    if (log_format() == DSLA_LOG_FORMAT_JSON) {
        char msg[1024], escaped[3072], json_line[3328];
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        json_escape(msg, escaped, sizeof escaped);
        snprintf(json_line, sizeof json_line,
                 "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"src\":"
                 "\"%s:%d\",\"msg\":\"%s\"}",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 now.tv_nsec / 1000000L, level_names[level], base ? base + 1 : file, line, escaped);
        fprintf(stderr, "%s\n", json_line);
        return;
    }
    int n = snprintf(line_buf, sizeof line_buf, "%02d:%02d:%02d.%03ld %-5s %s:%d ", tm.tm_hour,
                     tm.tm_min, tm.tm_sec, now.tv_nsec / 1000000L, names[level],
                     base ? base + 1 : file, line);
    if (n < 0) return;
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

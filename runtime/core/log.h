/* Leveled logging to stderr.
 *
 * The level comes from DSLA_LOG (error, warn, info, debug; default warn) the first time a message
 * is logged, or from dsla_log_set_level. Lines carry a timestamp, the level and the source file:
 * as text ("12:00:01.234 INFO  http.c:210 message"), or with DSLA_LOG_FORMAT=json (or
 * dsla_log_set_format) as one JSON object per line: {"ts", "level", "src", "msg"}.
 * Logging is for operators; it must never carry data a caller needs (that goes through return
 * values). */
#ifndef DSLA_CORE_LOG_H
#define DSLA_CORE_LOG_H

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    DSLA_LOG_ERROR = 0,
    DSLA_LOG_WARN,
    DSLA_LOG_INFO,
    DSLA_LOG_DEBUG,
} dsla_log_level_t;

typedef enum { DSLA_LOG_FORMAT_TEXT = 0, DSLA_LOG_FORMAT_JSON } dsla_log_format_t;

void dsla_log_set_level(dsla_log_level_t level);
dsla_log_level_t dsla_log_level(void);
void dsla_log_set_format(dsla_log_format_t format);
/* "error", "warn", "info", "debug" into *out; false for anything else. */
bool dsla_log_level_parse(const char *name, dsla_log_level_t *out);
void dsla_log_write(dsla_log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define DSLA_LOG_AT(level, ...)                                                                    \
    do {                                                                                           \
        if ((level) <= dsla_log_level()) dsla_log_write((level), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define dsla_log_error(...) DSLA_LOG_AT(DSLA_LOG_ERROR, __VA_ARGS__)
#define dsla_log_warn(...) DSLA_LOG_AT(DSLA_LOG_WARN, __VA_ARGS__)
#define dsla_log_info(...) DSLA_LOG_AT(DSLA_LOG_INFO, __VA_ARGS__)
#define dsla_log_debug(...) DSLA_LOG_AT(DSLA_LOG_DEBUG, __VA_ARGS__)

/* A line that load can repeat (one per client, one per frame) goes through a limiter: at most
 * DSLA_LOG_LIMIT_BURST lines per DSLA_LOG_LIMIT_WINDOW_MS, then, when the next line passes, one
 * line saying how many were held back. One limiter per call site and thread (it is not locked);
 * zero-initialised it is ready. */
#define DSLA_LOG_LIMIT_BURST 5
#define DSLA_LOG_LIMIT_WINDOW_MS 10000
typedef struct {
    uint64_t window_start_ms;
    uint32_t in_window;
    uint64_t held_back;
} dsla_log_limit_t;

/* Whether the next line may be written now (logging the held-back count first when it is). */
bool dsla_log_limit_pass(dsla_log_limit_t *lim, dsla_log_level_t level, const char *file, int line);

#define DSLA_LOG_LIMITED(lim, level, ...)                                                          \
    do {                                                                                           \
        if ((level) <= dsla_log_level() &&                                                         \
            dsla_log_limit_pass((lim), (level), __FILE__, __LINE__))                               \
            dsla_log_write((level), __FILE__, __LINE__, __VA_ARGS__);                              \
    } while (0)

#endif

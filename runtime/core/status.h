/* Status codes and per-thread error messages.
 *
 * Every function that can fail returns a dsla_status_t and, on failure, leaves a human-readable
 * message (what went wrong, which field or file, the limit and the value) in a per-thread buffer
 * that dsla_last_error() returns. The codes mirror the client-facing ones of DESIGN.md section 8 so
 * that a status can travel to a client unchanged. This module must not print anything: callers
 * decide. */
#ifndef DSLA_CORE_STATUS_H
#define DSLA_CORE_STATUS_H

typedef enum {
    DSLA_OK = 0,
    DSLA_ERR_INVALID_ARGUMENT, /* bad input from a caller or a file: names the field and the limit
                                */
    DSLA_ERR_NOT_FOUND,        /* a file, key or tensor that must exist does not */
    DSLA_ERR_IO,               /* the operating system refused a read, write, mmap or open */
    DSLA_ERR_FORMAT,           /* a file exists but is malformed (truncated, corrupt, hostile) */
    DSLA_ERR_UNSUPPORTED,      /* well-formed but outside what dsla-serve implements */
    DSLA_ERR_OUT_OF_MEMORY,
    DSLA_ERR_RESOURCE_EXHAUSTED, /* a bounded queue, pool or budget is full */
    DSLA_ERR_CANCELLED,
    DSLA_ERR_INTERNAL, /* a broken invariant: a bug in dsla-serve */
} dsla_status_t;

/* Records a printf-style message for this thread and returns code, so that a failing path reads
 * `return dsla_error(DSLA_ERR_FORMAT, "%s: tensor %s: ...", path, name);`. */
dsla_status_t dsla_error(dsla_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepends context ("loading model X: ") to this thread's message and returns code unchanged. */
dsla_status_t dsla_error_wrap(dsla_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The message of this thread's most recent failure; "" when there is none. Never NULL. */
const char *dsla_last_error(void);

void dsla_clear_error(void);

/* A stable upper-case name for a code ("INVALID_ARGUMENT"). */
const char *dsla_status_name(dsla_status_t code);

/* Propagate a failure from a callee without adding context. */
#define DSLA_TRY(expr)                                                                             \
    do {                                                                                           \
        dsla_status_t dsla_try_status_ = (expr);                                                   \
        if (dsla_try_status_ != DSLA_OK) return dsla_try_status_;                                  \
    } while (0)

#endif

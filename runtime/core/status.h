/* Status codes and per-thread error messages.
 *
 * Every function that can fail returns a dsla_status_t and, on failure, leaves a human-readable
 * message (what went wrong, which field or file, the limit and the value) in a per-thread buffer
 * that dsla_last_error() returns. DSLA_STATUS_TABLE is the one vocabulary of failures from the
 * engine to the wire and back: the client-facing codes of DESIGN.md section 8 keep gRPC's numbers,
 * which are also their numbers on the wire (proto's DSLA_CODE_*), so that such a status travels to
 * a client and back unchanged; the local refinements (a missing file, a malformed one, no memory)
 * are numbered above every client code and travel as the client code their row names. This module
 * must not print anything: callers decide. */
#ifndef DSLA_CORE_STATUS_H
#define DSLA_CORE_STATUS_H

#include <stdbool.h>
#include <stdint.h>

/* X(name, number, travels_as, meaning), every failure; DSLA_OK (0) is success and a client code.
 * A row whose travels_as is its own name is a client code. A new status is one row here and one in
 * docs/protocol.md ("Status codes"). */
#define DSLA_STATUS_TABLE(X)                                                                       \
    X(CANCELLED, 1, CANCELLED, "the request was cancelled by its client")                          \
    X(INVALID_ARGUMENT, 3, INVALID_ARGUMENT,                                                       \
      "bad input from a caller, a peer or a file: names the field, the limit and the value")       \
    X(DEADLINE_EXCEEDED, 4, DEADLINE_EXCEEDED, "the request's deadline passed before it finished") \
    X(PERMISSION_DENIED, 7, PERMISSION_DENIED,                                                     \
      "the sender's role may not send this message (a plan not from the configured controller)")   \
    X(RESOURCE_EXHAUSTED, 8, RESOURCE_EXHAUSTED, "a bounded queue, pool or budget is full")        \
    X(INTERNAL, 13, INTERNAL, "a broken invariant: a bug in dsla-serve")                           \
    X(UNAVAILABLE, 14, UNAVAILABLE, "the actor that should serve the request is down; retry")      \
    X(UNAUTHENTICATED, 16, UNAUTHENTICATED, "the request lacks valid credentials")                 \
    X(NOT_FOUND, 100, INVALID_ARGUMENT, "a file, key or tensor that must exist does not")          \
    X(IO, 101, INTERNAL, "the operating system refused a read, write, mmap or open")               \
    X(FORMAT, 102, INVALID_ARGUMENT, "a file or frame exists but is malformed")                    \
    X(UNSUPPORTED, 103, INVALID_ARGUMENT, "well-formed but outside what dsla-serve implements")    \
    X(OUT_OF_MEMORY, 104, RESOURCE_EXHAUSTED, "an allocation failed")

typedef enum {
    DSLA_OK = 0,
#define DSLA_STATUS_ENUM_(name, num, travels_as, meaning) DSLA_ERR_##name = num,
    DSLA_STATUS_TABLE(DSLA_STATUS_ENUM_)
#undef DSLA_STATUS_ENUM_
} dsla_status_t;

/* The longest message a thread keeps (with its NUL): room for a path, a tensor name and the
 * numbers that explain a refusal. Longer ones are cut. */
#define DSLA_ERROR_MESSAGE_MAX 1024

/* Records a printf-style message for this thread and returns code, so that a failing path reads
 * `return dsla_error(DSLA_ERR_FORMAT, "%s: tensor %s: ...", path, name);`. */
dsla_status_t dsla_error(dsla_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prepends context ("loading model X: ") to this thread's message and returns code unchanged. */
dsla_status_t dsla_error_wrap(dsla_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* An allocation failed: records "<what>: out of memory" and returns DSLA_ERR_OUT_OF_MEMORY. The one
 * way every module reports a failed malloc: `if (!p) return dsla_error_oom("plan of %d layers",
 * n);`. It allocates nothing itself. */
dsla_status_t dsla_error_oom(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The message of this thread's most recent failure; "" when there is none. Never NULL. */
const char *dsla_last_error(void);

void dsla_clear_error(void);

/* A stable upper-case name for a status ("INVALID_ARGUMENT"); "UNKNOWN" for a number outside the
 * table (a client code from a newer peer). */
const char *dsla_status_name(uint32_t code);

/* The client code a status travels as: itself for a client code, the code its row names for a
 * local refinement (NOT_FOUND travels as INVALID_ARGUMENT), INTERNAL for a number outside the
 * table. */
dsla_status_t dsla_status_client_code(dsla_status_t status);

/* Whether code is one of the client codes of the table (what may arrive from a peer). */
bool dsla_status_is_client_code(uint32_t code);

/* Propagate a failure from a callee without adding context. */
#define DSLA_TRY(expr)                                                                             \
    do {                                                                                           \
        dsla_status_t dsla_try_status_ = (expr);                                                   \
        if (dsla_try_status_ != DSLA_OK) return dsla_try_status_;                                  \
    } while (0)

#endif

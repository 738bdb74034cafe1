#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Long enough for a path, a tensor name and the numbers that explain a refusal. */
enum { DSLA_ERROR_MESSAGE_BYTES = 1024 };

static _Thread_local char error_message[DSLA_ERROR_MESSAGE_BYTES];

dsla_status_t dsla_error(dsla_status_t code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return code;
}

dsla_status_t dsla_error_wrap(dsla_status_t code, const char *fmt, ...) {
    char previous[DSLA_ERROR_MESSAGE_BYTES];
    memcpy(previous, error_message, sizeof previous);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    size_t used = (size_t)n < sizeof error_message ? (size_t)n : sizeof error_message - 1;
    size_t room = sizeof error_message - 1 - used;
    size_t tail = strnlen(previous, sizeof previous - 1);
    if (tail > room) tail = room;
    memcpy(error_message + used, previous, tail);
    error_message[used + tail] = '\0';
    return code;
}

const char *dsla_last_error(void) {
    return error_message;
}

void dsla_clear_error(void) {
    error_message[0] = '\0';
}

const char *dsla_status_name(dsla_status_t code) {
    switch (code) {
    case DSLA_OK:
        return "OK";
    case DSLA_ERR_INVALID_ARGUMENT:
        return "INVALID_ARGUMENT";
    case DSLA_ERR_NOT_FOUND:
        return "NOT_FOUND";
    case DSLA_ERR_IO:
        return "IO";
    case DSLA_ERR_FORMAT:
        return "FORMAT";
    case DSLA_ERR_UNSUPPORTED:
        return "UNSUPPORTED";
    case DSLA_ERR_OUT_OF_MEMORY:
        return "OUT_OF_MEMORY";
    case DSLA_ERR_RESOURCE_EXHAUSTED:
        return "RESOURCE_EXHAUSTED";
    case DSLA_ERR_CANCELLED:
        return "CANCELLED";
    case DSLA_ERR_INTERNAL:
        return "INTERNAL";
    }
    return "UNKNOWN";
}

#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char error_message[DSLA_ERROR_MESSAGE_MAX];

dsla_status_t dsla_error(dsla_status_t code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return code;
}

dsla_status_t dsla_error_wrap(dsla_status_t code, const char *fmt, ...) {
    char previous[DSLA_ERROR_MESSAGE_MAX];
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

dsla_status_t dsla_error_oom(const char *fmt, ...) {
    static const char suffix[] = ": out of memory";
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(error_message, sizeof error_message - (sizeof suffix - 1), fmt, ap);
    va_end(ap);
    if (n < 0) error_message[0] = '\0';
    size_t used = strlen(error_message);
    memcpy(error_message + used, suffix, sizeof suffix);
    return DSLA_ERR_OUT_OF_MEMORY;
}

const char *dsla_last_error(void) {
    return error_message;
}

void dsla_clear_error(void) {
    error_message[0] = '\0';
}

static const struct {
    dsla_status_t status, travels_as;
    const char *name;
} STATUSES[] = {{DSLA_OK, DSLA_OK, "OK"},
#define DSLA_STATUS_ROW_(name, num, travels_as, meaning)                                           \
    {DSLA_ERR_##name, DSLA_ERR_##travels_as, #name},
                DSLA_STATUS_TABLE(DSLA_STATUS_ROW_)
#undef DSLA_STATUS_ROW_
};

static int row_of(uint32_t code) {
    for (size_t i = 0; i < sizeof STATUSES / sizeof STATUSES[0]; i++)
        if ((uint32_t)STATUSES[i].status == code) return (int)i;
    return -1;
}

const char *dsla_status_name(uint32_t code) {
    int i = row_of(code);
    return i < 0 ? "UNKNOWN" : STATUSES[i].name;
}

dsla_status_t dsla_status_client_code(dsla_status_t status) {
    int i = row_of((uint32_t)status);
    return i < 0 ? DSLA_ERR_INTERNAL : STATUSES[i].travels_as;
}

bool dsla_status_is_client_code(uint32_t code) {
    int i = row_of(code);
    return i >= 0 && STATUSES[i].travels_as == STATUSES[i].status;
}

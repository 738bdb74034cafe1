/* dslactl's commands to the controller (DESIGN.md section 8), from one table: the words of an
 * ADMIN message parsed into a command, a command formatted back into its words (what dslactl
 * sends), the usage lines, and the text of replies (a growing buffer, one history line).
 *
 * Contract: parsing checks the shape and the limits a word has on its own (a count in range, on or
 * off) and names the command, the field and the value when it refuses; what depends on the
 * controller's state (the policy fields against the current policy, a conversion above the
 * maximum) is the controller core's to check. No state, no I/O, no messages. */
#ifndef DSLA_ACTORS_CONTROLLER_ADMIN_H
#define DSLA_ACTORS_CONTROLLER_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/proto.h"
#include "runtime/core/status.h"

/* History lines one `dslactl history` may ask for, and what it gets without asking. */
#define DSLA_ADMIN_HISTORY_MAX 10000
#define DSLA_ADMIN_HISTORY_DEFAULT 20

typedef enum {
    DSLA_ADMIN_STATUS = 0,
    DSLA_ADMIN_POLICY_GET,
    DSLA_ADMIN_POLICY_SET,
    DSLA_ADMIN_CONVERT,
    DSLA_ADMIN_REVERT,
    DSLA_ADMIN_HISTORY,
    DSLA_ADMIN_DRAIN,
} dsla_admin_op_t;

/* A sender's description in the audit event: a role, a key name and a routing id fit. */
#define DSLA_ADMIN_WHO_MAX 160

typedef struct {
    dsla_admin_op_t op;
    long n;  /* convert, revert: layers; history: events */
    bool on; /* drain */
    /* policy set: the kind and its key=value words, as given */
    int n_words;
    char words[DSLA_PROTO_ADMIN_ARGS_MAX][DSLA_PROTO_ADMIN_ARG_LEN_MAX + 1];
    /* Who sent it, as the controller could prove it (its CURVE key's role and name, a
     * fingerprint of its admin key, or only its routing id): what the audit event records. Not
     * parsed: the controller fills it in; "" reads as unknown. */
    char who[DSLA_ADMIN_WHO_MAX];
} dsla_admin_cmd_t;

/* Parses the words of one command ("convert", "2"). INVALID_ARGUMENT naming the command, the field
 * and the value: "history: limit 0 is outside [1, 10000]". */
dsla_status_t dsla_admin_parse(const char *const *words, int n, dsla_admin_cmd_t *out);
/* The same from an ADMIN message. */
dsla_status_t dsla_admin_parse_msg(const dsla_proto_admin_t *msg, dsla_admin_cmd_t *out);
/* The words of cmd, every optional field spelt out: what dsla_admin_parse reads back. */
void dsla_admin_format(const dsla_admin_cmd_t *cmd, dsla_proto_admin_t *out);
/* The name of an op ("policy set"). */
const char *dsla_admin_op_name(dsla_admin_op_t op);
/* One line per command, its words and what it does: dslactl's usage and the controller's error
 * for an unknown command. */
void dsla_admin_usage(char *out, size_t cap);

/* A reply's text, growing up to DSLA_PROTO_ADMIN_TEXT_MAX bytes; beyond that (or out of memory)
 * failed is set and later text is dropped. */
typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} dsla_admin_text_t;

void dsla_admin_text_add(dsla_admin_text_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void dsla_admin_text_free(dsla_admin_text_t *t);
/* One event of the history, as `dslactl history` prints it (a dsla_ctl_event_fn: user is the
 * dsla_admin_text_t). */
void dsla_admin_history_line(void *user, int64_t id, int64_t time_ms, const char *event,
                             const char *details);

#endif

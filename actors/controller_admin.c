/* dslactl's commands: one table for parsing, formatting and usage (controller_admin.h). */
#include "actors/controller_admin.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* What follows a command's words. */
typedef enum {
    ARG_NONE = 0,
    ARG_COUNT,     /* one whole number in [lo, hi] */
    ARG_OPT_COUNT, /* the same, or nothing for dflt */
    ARG_OPT_ONOFF, /* on or off, or nothing for dflt (1: on) */
    ARG_WORDS,     /* one word or more, kept as given */
} arg_kind_t;

typedef struct {
    const char *name; /* its words: "policy set" */
    dsla_admin_op_t op;
    arg_kind_t arg;
    const char *field; /* the argument's name in errors and usage */
    long lo, hi, dflt;
    const char *help;
} command_t;

static const command_t commands[] = {
    {"status", DSLA_ADMIN_STATUS, ARG_NONE, "", 0, 0, 0,
     "replicas, their plans and load; policy; catalogue"},
    {"policy get", DSLA_ADMIN_POLICY_GET, ARG_NONE, "", 0, 0, 0, "the load policy in force"},
    {"policy set", DSLA_ADMIN_POLICY_SET, ARG_WORDS, "KIND [key=value]...", 0, 0, 0,
     "threshold, slo or manual; unnamed fields keep their values"},
    {"convert", DSLA_ADMIN_CONVERT, ARG_COUNT, "N", 1, DSLA_PROTO_LAYERS_MAX, 0,
     "pin the manual policy N layers above now"},
    {"revert", DSLA_ADMIN_REVERT, ARG_COUNT, "N", 1, DSLA_PROTO_LAYERS_MAX, 0,
     "pin the manual policy N layers below now"},
    {"history", DSLA_ADMIN_HISTORY, ARG_OPT_COUNT, "limit", 1, DSLA_ADMIN_HISTORY_MAX,
     DSLA_ADMIN_HISTORY_DEFAULT, "the newest events (default 20)"},
    {"drain", DSLA_ADMIN_DRAIN, ARG_OPT_ONOFF, "on|off", 0, 1, 1,
     "stop (or resume) new conversions; reverts go on"},
};
enum { N_COMMANDS = sizeof commands / sizeof commands[0] };

/* Words in a command's name (1 or 2), and whether words[0..] start with them. */
static int name_words(const command_t *c) {
    return strchr(c->name, ' ') ? 2 : 1;
}

static bool name_matches(const command_t *c, const char *const *words, int n) {
    const char *space = strchr(c->name, ' ');
    if (!space) return n >= 1 && strcmp(words[0], c->name) == 0;
    size_t len = (size_t)(space - c->name);
    return n >= 2 && strlen(words[0]) == len && strncmp(words[0], c->name, len) == 0 &&
           strcmp(words[1], space + 1) == 0;
}

static const command_t *command_of(dsla_admin_op_t op) {
    for (int i = 0; i < N_COMMANDS; i++)
        if (commands[i].op == op) return &commands[i];
    return NULL;
}

const char *dsla_admin_op_name(dsla_admin_op_t op) {
    const command_t *c = command_of(op);
    return c ? c->name : "unknown";
}

static dsla_status_t parse_count(const command_t *c, const char *s, long *out) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %s '%s' is not a whole number", c->name,
                          c->field, s);
    if (v < c->lo || v > c->hi)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: %s %ld is outside [%ld, %ld]", c->name,
                          c->field, v, c->lo, c->hi);
    *out = v;
    return DSLA_OK;
}

static dsla_status_t parse_arg(const command_t *c, const char *const *args, int n,
                               dsla_admin_cmd_t *out) {
    bool optional = c->arg == ARG_OPT_COUNT || c->arg == ARG_OPT_ONOFF;
    int most = c->arg == ARG_NONE ? 0 : c->arg == ARG_WORDS ? DSLA_PROTO_ADMIN_ARGS_MAX : 1;
    if (n > most)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: '%s' is one word too many (usage: %s%s%s)", c->name, args[most],
                          c->name, c->field[0] ? " " : "", c->field);
    if (n == 0 && !optional && c->arg != ARG_NONE) {
        if (c->arg == ARG_WORDS)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                              "policy: use 'policy get' or 'policy set threshold|slo|manual "
                              "[key=value]...'");
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "%s: give the number of layers, as in '%s 2' (%s in [%ld, %ld])", c->name,
                          c->name, c->field, c->lo, c->hi);
    }
    switch (c->arg) {
    case ARG_NONE:
        return DSLA_OK;
    case ARG_COUNT:
    case ARG_OPT_COUNT:
        out->n = c->dflt;
        return n ? parse_count(c, args[0], &out->n) : DSLA_OK;
    case ARG_OPT_ONOFF:
        out->on = c->dflt != 0;
        if (n && strcmp(args[0], "on") != 0 && strcmp(args[0], "off") != 0)
            return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "%s: '%s' is neither on nor off", c->name,
                              args[0]);
        if (n) out->on = strcmp(args[0], "on") == 0;
        return DSLA_OK;
    case ARG_WORDS:
        for (int i = 0; i < n; i++) {
            if (strlen(args[i]) > DSLA_PROTO_ADMIN_ARG_LEN_MAX)
                return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                                  "%s: word %d is %zu bytes, above the limit of %d", c->name, i + 1,
                                  strlen(args[i]), DSLA_PROTO_ADMIN_ARG_LEN_MAX);
            snprintf(out->words[i], sizeof out->words[i], "%s", args[i]);
        }
        out->n_words = n;
        return DSLA_OK;
    }
    return DSLA_OK;
}

dsla_status_t dsla_admin_parse(const char *const *words, int n, dsla_admin_cmd_t *out) {
    memset(out, 0, sizeof *out);
    for (int i = 0; i < N_COMMANDS; i++) {
        const command_t *c = &commands[i];
        if (!name_matches(c, words, n)) continue;
        out->op = c->op;
        int skip = name_words(c);
        return parse_arg(c, words + skip, n - skip, out);
    }
    if (n >= 1 && strcmp(words[0], "policy") == 0)
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                          "policy: use 'policy get' or 'policy set threshold|slo|manual "
                          "[key=value]...'");
    char names[256] = "";
    for (int i = 0; i < N_COMMANDS; i++) {
        size_t len = strlen(names);
        snprintf(names + len, sizeof names - len, "%s%s%s%s", i ? ", " : "", commands[i].name,
                 commands[i].arg == ARG_WORDS ? " ..."
                 : commands[i].field[0]       ? " "
                                              : "",
                 commands[i].arg == ARG_WORDS ? "" : commands[i].field);
    }
    return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "'%s' is not a command; use %s", n ? words[0] : "",
                      names);
}

dsla_status_t dsla_admin_parse_msg(const dsla_proto_admin_t *msg, dsla_admin_cmd_t *out) {
    const char *words[DSLA_PROTO_ADMIN_ARGS_MAX];
    uint32_t n = msg->n_args < DSLA_PROTO_ADMIN_ARGS_MAX ? msg->n_args : DSLA_PROTO_ADMIN_ARGS_MAX;
    for (uint32_t i = 0; i < n; i++)
        words[i] = msg->args[i];
    return dsla_admin_parse(words, (int)n, out);
}

static void add_word(dsla_proto_admin_t *out, const char *w, size_t len) {
    if (out->n_args == DSLA_PROTO_ADMIN_ARGS_MAX) return;
    snprintf(out->args[out->n_args++], sizeof out->args[0], "%.*s", (int)len, w);
}

void dsla_admin_format(const dsla_admin_cmd_t *cmd, dsla_proto_admin_t *out) {
    memset(out, 0, sizeof *out);
    const command_t *c = command_of(cmd->op);
    if (!c) return;
    const char *space = strchr(c->name, ' ');
    add_word(out, c->name, space ? (size_t)(space - c->name) : strlen(c->name));
    if (space) add_word(out, space + 1, strlen(space + 1));
    char num[32];
    switch (c->arg) {
    case ARG_NONE:
        break;
    case ARG_COUNT:
    case ARG_OPT_COUNT:
        snprintf(num, sizeof num, "%ld", cmd->n);
        add_word(out, num, strlen(num));
        break;
    case ARG_OPT_ONOFF:
        add_word(out, cmd->on ? "on" : "off", cmd->on ? 2 : 3);
        break;
    case ARG_WORDS:
        for (int i = 0; i < cmd->n_words; i++)
            add_word(out, cmd->words[i], strlen(cmd->words[i]));
        break;
    }
}

void dsla_admin_usage(char *out, size_t cap) {
    size_t len = 0;
    if (cap) out[0] = '\0';
    for (int i = 0; i < N_COMMANDS && len < cap; i++) {
        char words[64];
        const command_t *c = &commands[i];
        bool optional = c->arg == ARG_OPT_COUNT || c->arg == ARG_OPT_ONOFF;
        snprintf(words, sizeof words, "%s%s%s%s%s", c->name, c->field[0] ? " " : "",
                 optional ? "[" : "", c->field, optional ? "]" : "");
        len += (size_t)snprintf(out + len, cap - len, "  %-36s  %s\n", words, c->help);
    }
}

void dsla_admin_text_add(dsla_admin_text_t *t, const char *fmt, ...) {
    va_list ap;
    while (!t->failed) {
        size_t room = t->cap - t->len;
        va_start(ap, fmt);
        int n = t->data ? vsnprintf(t->data + t->len, room, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && (size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (n >= 0 && cap < t->len + (size_t)n + 1)
            cap *= 2;
        char *d = cap <= DSLA_PROTO_ADMIN_TEXT_MAX ? realloc(t->data, cap) : NULL;
        if (!d) {
            t->failed = true;
            return;
        }
        t->data = d;
        t->cap = cap;
    }
}

void dsla_admin_text_free(dsla_admin_text_t *t) {
    free(t->data);
    *t = (dsla_admin_text_t){0};
}

void dsla_admin_history_line(void *user, int64_t id, int64_t time_ms, const char *event,
                             const char *details) {
    time_t secs = (time_t)(time_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    dsla_admin_text_add(user, "%6" PRId64 "  %s.%03dZ  %-14s %s\n", id, when, (int)(time_ms % 1000),
                        event, details);
}

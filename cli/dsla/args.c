#include "args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dsla_args_default_text(const dsla_arg_spec_t *spec, char *out, size_t cap) {
    out[0] = '\0';
    if (!(spec->kind & DSLA_ARG_SHOW_DEFAULT)) return;
    switch (spec->kind & DSLA_ARG_KIND_MASK) {
    case DSLA_ARG_STRING: {
        const char *v = *(const char *const *)spec->dest;
        if (v) snprintf(out, cap, " (default %s)", v);
        break;
    }
    case DSLA_ARG_INT:
        snprintf(out, cap, " (default %ld)", *(const long *)spec->dest);
        break;
    case DSLA_ARG_FLOAT:
        snprintf(out, cap, " (default %g)", *(const double *)spec->dest);
        break;
    default: /* flags are off, lists empty */
        break;
    }
}

bool dsla_args_given(int argc, char **argv, int first, const char *name) {
    const size_t n = strlen(name);
    for (int i = first; i < argc; i++)
        if (strncmp(argv[i], "--", 2) == 0 && strncmp(argv[i] + 2, name, n) == 0 &&
            (argv[i][2 + n] == '\0' || argv[i][2 + n] == '='))
            return true;
    return false;
}

void dsla_args_print_help(const char *usage, const dsla_arg_spec_t *specs, int n_specs) {
    printf("%s\n\noptions:\n", usage);
    for (int i = 0; i < n_specs; i++) {
        const char *value = "";
        switch (specs[i].kind & DSLA_ARG_KIND_MASK) {
        case DSLA_ARG_STRING:
        case DSLA_ARG_STRING_LIST:
            value = " TEXT";
            break;
        case DSLA_ARG_INT:
            value = " N";
            break;
        case DSLA_ARG_FLOAT:
            value = " X";
            break;
        case DSLA_ARG_FLAG:
            break;
        }
        char left[64];
        snprintf(left, sizeof left, "--%s%s", specs[i].name, value);
        char def[256];
        dsla_args_default_text(&specs[i], def, sizeof def);
        printf("  %-22s %s%s\n", left, specs[i].help, def);
    }
    printf("  %-22s %s\n", "--help", "show this help");
}

static const dsla_arg_spec_t *find_spec(const dsla_arg_spec_t *specs, int n, const char *name,
                                        size_t len) {
    for (int i = 0; i < n; i++)
        if (strlen(specs[i].name) == len && strncmp(specs[i].name, name, len) == 0)
            return &specs[i];
    return NULL;
}

static int store_value(const dsla_arg_spec_t *spec, const char *value) {
    char *end = NULL;
    errno = 0;
    switch (spec->kind & DSLA_ARG_KIND_MASK) {
    case DSLA_ARG_STRING:
        *(const char **)spec->dest = value;
        return 0;
    case DSLA_ARG_STRING_LIST: {
        dsla_arg_list_t *list = spec->dest;
        if (list->count >= DSLA_ARG_LIST_MAX) {
            fprintf(stderr, "--%s: at most %d values are accepted\n", spec->name,
                    DSLA_ARG_LIST_MAX);
            return 2;
        }
        list->items[list->count++] = value;
        return 0;
    }
    case DSLA_ARG_INT: {
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end) {
            fprintf(stderr, "--%s: '%s' is not a whole number\n", spec->name, value);
            return 2;
        }
        if (v < spec->min || v > spec->max) {
            fprintf(stderr, "--%s: %ld is outside the allowed range %.0f..%.0f\n", spec->name, v,
                    spec->min, spec->max);
            return 2;
        }
        *(long *)spec->dest = v;
        return 0;
    }
    case DSLA_ARG_FLOAT: {
        double v = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(v)) {
            fprintf(stderr, "--%s: '%s' is not a number\n", spec->name, value);
            return 2;
        }
        if (v < spec->min || v > spec->max) {
            fprintf(stderr, "--%s: %g is outside the allowed range %g..%g\n", spec->name, v,
                    spec->min, spec->max);
            return 2;
        }
        *(double *)spec->dest = v;
        return 0;
    }
    case DSLA_ARG_FLAG:
        *(bool *)spec->dest = true;
        return 0;
    }
    return 2;
}

int dsla_args_parse(int argc, char **argv, int first, const dsla_arg_spec_t *specs, int n_specs,
                    const char **positional, int max_positional, int *n_positional,
                    const char *usage) {
    *n_positional = 0;
    for (int i = first; i < argc; i++) { /* before any value is stored: help shows defaults */
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            dsla_args_print_help(usage, specs, n_specs);
            return -1;
        }
        const dsla_arg_spec_t *spec = strncmp(arg, "--", 2) == 0 && !strchr(arg, '=')
                                          ? find_spec(specs, n_specs, arg + 2, strlen(arg + 2))
                                          : NULL;
        if (spec && (spec->kind & DSLA_ARG_KIND_MASK) != DSLA_ARG_FLAG) i++; /* its value */
    }
    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            if (*n_positional >= max_positional) {
                fprintf(stderr, "unexpected argument '%s'\n%s\n", arg, usage);
                return 2;
            }
            positional[(*n_positional)++] = arg;
            continue;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const dsla_arg_spec_t *spec = find_spec(specs, n_specs, name, len);
        if (!spec) {
            fprintf(stderr, "unknown option '--%.*s' (see --help)\n", (int)len, name);
            return 2;
        }
        const char *value = NULL;
        if ((spec->kind & DSLA_ARG_KIND_MASK) == DSLA_ARG_FLAG) {
            if (eq) {
                fprintf(stderr, "--%s takes no value\n", spec->name);
                return 2;
            }
        } else if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            fprintf(stderr, "--%s needs a value\n", spec->name);
            return 2;
        }
        int rc = store_value(spec, value);
        if (rc) return rc;
    }
    return 0;
}

int dsla_args_parse_options(int argc, char **argv, const dsla_arg_spec_t *specs, int n_specs,
                            const char *usage) {
    int n_positional = 0;
    int rc = dsla_args_parse(argc, argv, 2, specs, n_specs, NULL, 0, &n_positional, usage);
    if (rc < 0) return 0;
    return rc ? rc : -1;
}

int dsla_args_int_list(const char *text, const char *option, int *out, int max, int *n) {
    *n = 0;
    const char *s = text;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || (*end && *end != ',') || *n >= max || v < INT_MIN || v > INT_MAX) {
            fprintf(stderr, "--%s: '%s' is not a comma-separated list of at most %d integers\n",
                    option, text, max);
            return 2;
        }
        out[(*n)++] = (int)v;
        s = *end ? end + 1 : end;
    }
    if (*n == 0) {
        fprintf(stderr, "--%s: the list is empty\n", option);
        return 2;
    }
    return 0;
}

int dsla_args_parse_with_list(int argc, char **argv, const dsla_arg_spec_t *specs, int n_specs,
                              const char *usage, dsla_arg_list_t *list) {
    const char *positional[DSLA_ARG_LIST_MAX];
    int n_positional = 0;
    int rc = dsla_args_parse(argc, argv, 2, specs, n_specs, positional, DSLA_ARG_LIST_MAX,
                             &n_positional, usage);
    if (rc < 0) return 0;
    if (rc) return rc;
    for (int i = 0; i < n_positional && list->count < DSLA_ARG_LIST_MAX; i++)
        list->items[list->count++] = positional[i];
    return -1;
}

/* A small, strict option parser shared by the dsla subcommands.
 *
 * Options are `--name value` or `--name=value`; flags take no value. Every option is declared in a
 * table with its kind and limits, so a bad value is refused with the option's name, the limit and
 * the value (exit code 2), and --help prints the same table. It only parses: it must not open files
 * or load models. */
#ifndef DSLA_CLI_ARGS_H
#define DSLA_CLI_ARGS_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    DSLA_ARG_STRING,
    DSLA_ARG_INT,
    DSLA_ARG_FLOAT,
    DSLA_ARG_FLAG,
    DSLA_ARG_STRING_LIST, /* repeatable; values collected in order */
    DSLA_ARG_KIND_MASK = 0xff,
    /* Or'ed into a kind: --help ends the option's line with "(default V)", V the value dest holds
     * before parsing, the one the code uses when the option is absent (nothing for a NULL
     * string). The table then needs no default written by hand. */
    DSLA_ARG_SHOW_DEFAULT = 0x100,
} dsla_arg_kind_t;

enum { DSLA_ARG_LIST_MAX = 16 };

typedef struct {
    const char *name; /* without the leading "--" */
    dsla_arg_kind_t kind;
    const char *help;
    double min, max; /* inclusive limits for INT and FLOAT */
    /* Where the value goes; the type must match kind (const char **, long *, double *, bool *,
     * or a dsla_arg_list_t * for STRING_LIST). Defaults are whatever the caller stored there. */
    void *dest;
} dsla_arg_spec_t;

typedef struct {
    const char *items[DSLA_ARG_LIST_MAX];
    int count;
} dsla_arg_list_t;

/* Parses argv[first..argc). Positional arguments are stored in positional[] (up to max_positional).
 * Returns 0 on success, 2 on a usage error (already printed to stderr), or -1 when --help was given
 * (usage already printed to stdout). */
int dsla_args_parse(int argc, char **argv, int first, const dsla_arg_spec_t *specs, int n_specs,
                    const char **positional, int max_positional, int *n_positional,
                    const char *usage);

/* For a subcommand's options after argv[1], with no positional arguments: returns -1 when the
 * command should go on, else the exit code to return at once (0 after --help, 2 on a usage error).
 */
int dsla_args_parse_options(int argc, char **argv, const dsla_arg_spec_t *specs, int n_specs,
                            const char *usage);

/* dsla_args_parse_options for a subcommand whose positional words are more values of a list option
 * ("--data a.txt b.txt"): they are appended to *list (up to DSLA_ARG_LIST_MAX in all). */
int dsla_args_parse_with_list(int argc, char **argv, const dsla_arg_spec_t *specs, int n_specs,
                              const char *usage, dsla_arg_list_t *list);

/* Parses "3,1,0" into out[0..*n) (at most max entries); 2 with a message naming --option when the
 * text is not such a list (empty, a non-number, too many). */
int dsla_args_int_list(const char *text, const char *option, int *out, int max, int *n);

void dsla_args_print_help(const char *usage, const dsla_arg_spec_t *specs, int n_specs);

/* The " (default V)" --help prints after spec's help ("" when none) into out. */
void dsla_args_default_text(const dsla_arg_spec_t *spec, char *out, size_t cap);

/* Whether argv[first..argc) gives option name ("--name" or "--name=..."): for options whose
 * default is a value, where only the user's giving it is an error. */
bool dsla_args_given(int argc, char **argv, int first, const char *name);

#endif

/* dsla: the user command line. Argument parsing and start-up only; the work lives in runtime/. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command_t;

static const command_t commands[] = {
    {"generate", dsla_cmd_generate, "generate text from a prompt, streamed as it is produced"},
    {"import", dsla_cmd_import, "convert a llama2.c checkpoint to the Hugging Face layout"},
    {"distill", dsla_cmd_distill, "distil attention layers into DSLA layers (offline, chained)"},
    {"random-model", dsla_cmd_random_model, "write a model of random weights (benchmark shapes)"},
    {"eval", dsla_cmd_eval, "held-out perplexity of the teacher or a plan of distilled layers"},
    {"bench", dsla_cmd_bench, "load-test the serving engine in process: throughput, TTFT, TPOT"},
};
enum { N_COMMANDS = sizeof commands / sizeof commands[0] };

static void print_usage(FILE *out) {
    fprintf(out, "usage: dsla <command> [options]   (dsla <command> --help for its options)\n\n"
                 "commands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        print_usage(stdout);
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc, argv);
    fprintf(stderr, "dsla: unknown command '%s'\n", argv[1]);
    print_usage(stderr);
    return 2;
}

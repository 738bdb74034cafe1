/* The dsla subcommands. Each takes the whole argv (argv[1] is its name) and returns the process
 * exit code: 0 ok, 1 failure, 2 usage. */
#ifndef DSLA_CLI_COMMANDS_H
#define DSLA_CLI_COMMANDS_H

int dsla_cmd_generate(int argc, char **argv);
int dsla_cmd_import(int argc, char **argv);
int dsla_cmd_distill(int argc, char **argv);
int dsla_cmd_eval(int argc, char **argv);
int dsla_cmd_random_model(int argc, char **argv);
int dsla_cmd_bench(int argc, char **argv);
/* dsla bench --device cuda (bench_cuda.c): the engine on the GPU backend. */
int dsla_cmd_bench_cuda(int argc, char **argv);

#endif

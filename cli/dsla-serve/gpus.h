/* dsla-serve's GPU lists: --gpus 0-5 and --distill-gpus 6,7 name CUDA devices by index, as a
 * comma-separated list of indices and ascending ranges ("0,2-3"). */
#ifndef DSLA_CLI_SERVE_GPUS_H
#define DSLA_CLI_SERVE_GPUS_H

/* Parses text, the value of --option, into out (at most cap indices, in the order given). Returns
 * 0, or 2 after printing to stderr a sentence naming the option, the value and what is wrong: an
 * empty item, a non-number, an index above 1023, a descending range, a GPU named twice, more than
 * cap GPUs. */
int dsla_serve_parse_gpus(const char *option, const char *text, int *out, int cap, int *n);

/* Whether gpu is among list[0..n). */
int dsla_serve_gpu_listed(const int *list, int n, int gpu);

#endif

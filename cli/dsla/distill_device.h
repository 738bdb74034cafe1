/* The device options of the commands that run the distillation backends (dsla distill, dsla eval,
 * dsla-serve's distiller): --<prefix>device cpu|cuda and --<prefix>dtype bf16|f32; and the
 * conversion order of the two that distil, --<prefix>order. */
#ifndef DSLA_CLI_DISTILL_DEVICE_H
#define DSLA_CLI_DISTILL_DEVICE_H

#include <stdbool.h>

#include "runtime/distill/distill.h"

/* device and dtype as given (NULL: cpu, bf16), gpu the index (negative: 0). Sets *cuda and *opts;
 * returns 0, or 2 after a message naming --<prefix>device or --<prefix>dtype and the choices. */
int dsla_cli_distill_device(const char *prefix, const char *device, const char *dtype, long gpu,
                            bool *cuda, dsla_distill_cuda_opts_t *opts);

/* order as given: measured, entropy, reverse or given (given only where allow_given). Sets *mode;
 * returns 0, or 2 after a message naming --<prefix>order and the choices. */
int dsla_cli_distill_order(const char *prefix, const char *order, bool allow_given,
                           dsla_order_mode_t *mode);

#endif

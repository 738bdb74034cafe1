/* The distillation backends' device options (distill_device.h). */
#include "distill_device.h"

#include <stdio.h>
#include <string.h>

int dsla_cli_distill_device(const char *prefix, const char *device, const char *dtype, long gpu,
                            bool *cuda, dsla_distill_cuda_opts_t *opts) {
    *cuda = device && strcmp(device, "cuda") == 0;
    if (device && !*cuda && strcmp(device, "cpu") != 0) {
        fprintf(stderr, "--%sdevice: '%s' is not one of cpu, cuda\n", prefix, device);
        return 2;
    }
    *opts = (dsla_distill_cuda_opts_t){gpu > 0 ? (int)gpu : 0, DSLA_DTYPE_BF16};
    if (dtype && strcmp(dtype, "f32") == 0) {
        opts->dtype = DSLA_DTYPE_F32;
    } else if (dtype && strcmp(dtype, "bf16") != 0) {
        fprintf(stderr, "--%sdtype: '%s' is not one of bf16, f32\n", prefix, dtype);
        return 2;
    }
    return 0;
}

int dsla_cli_distill_order(const char *prefix, const char *order, bool allow_given,
                           dsla_order_mode_t *mode) {
    static const struct {
        const char *name;
        dsla_order_mode_t mode;
    } orders[] = {{"measured", DSLA_ORDER_MEASURED},
                  {"entropy", DSLA_ORDER_ENTROPY},
                  {"reverse", DSLA_ORDER_REVERSE},
                  {"given", DSLA_ORDER_GIVEN}};
    const size_t n = sizeof orders / sizeof orders[0] - (allow_given ? 0 : 1);
    for (size_t i = 0; i < n; i++)
        if (strcmp(order, orders[i].name) == 0) {
            *mode = orders[i].mode;
            return 0;
        }
    fprintf(stderr, "--%sorder: '%s' is not one of measured, entropy, reverse%s\n", prefix, order,
            allow_given ? ", given" : "");
    return 2;
}

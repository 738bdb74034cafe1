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

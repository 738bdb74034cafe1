/* dsla import llama2c CKPT TOKENIZER OUTDIR */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "runtime/model/import_llama2c.h"

static const char usage[] =
    "usage: dsla import llama2c CHECKPOINT TOKENIZER OUTDIR\n\n"
    "Converts a llama2.c v0 checkpoint (e.g. stories260K.bin) and its tokenizer.bin (tok512.bin)\n"
    "into a Hugging Face layout directory: config.json, model.safetensors, tokenizer.json.";

int dsla_cmd_import(int argc, char **argv) {
    const char *positional[4];
    int n = 0;
    int rc = dsla_args_parse(argc, argv, 2, NULL, 0, positional, 4, &n, usage);
    if (rc < 0) return 0;
    if (rc) return rc;
    if (n != 4 || strcmp(positional[0], "llama2c") != 0) {
        fprintf(stderr, "%s\n", usage);
        return 2;
    }
    if (dsla_import_llama2c(positional[1], positional[2], positional[3]) != DSLA_OK) {
        fprintf(stderr, "dsla import: %s\n", dsla_last_error());
        return 1;
    }
    fprintf(stderr, "dsla import: wrote %s\n", positional[3]);
    return 0;
}

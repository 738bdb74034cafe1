/* dsla random-model --shape 7b|tiny --tokenizer DIR --out DIR: a model of random weights on disk
 * (runtime/model/random_model.h), for benchmarks and the adaptive scenario at a serving-sized
 * shape when no checkpoint is at hand. */
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "runtime/model/random_model.h"
#include "runtime/model/tokenizer.h"

static const char usage[] =
    "usage: dsla random-model --shape 7b|tiny --tokenizer DIR --out DIR [--seed N] [--layers N]\n"
    "                         [--threads N]\n\n"
    "Writes a Llama model of random bf16 weights in the Hugging Face layout (config.json, one\n"
    "safetensors shard per layer with the index, tokenizer.json from --tokenizer DIR, whose\n"
    "vocabulary becomes the model's). 7b is Llama-2-7B's shape (13.5 GB at a 32000-token\n"
    "vocabulary); tiny (width 128, 2 layers of 4 heads) is for tests. The same seed gives the "
    "same\n"
    "bytes whatever --threads. Every dsla command and dsla-serve take the directory as --model.";

/* Llama-2-7B's shape, or a small one for tests, with vocab tokens. */
static int shape_config(const char *shape, int vocab, dsla_model_config_t *cfg) {
    if (strcmp(shape, "7b") == 0) {
        *cfg = dsla_model_config_llama2_7b(vocab);
        return 0;
    }
    if (strcmp(shape, "tiny") != 0) return -1;
    *cfg = dsla_model_config_llama2_7b(vocab);
    cfg->hidden_size = 128, cfg->num_layers = 2, cfg->num_heads = 4, cfg->num_kv_heads = 4;
    cfg->head_dim = 32, cfg->intermediate_size = 344, cfg->max_position_embeddings = 2048;
    return 0;
}

/* Copies dir/name into out/name when it exists: 1 copied, 0 absent, -1 failed. */
static int copy_file(const char *dir, const char *out, const char *name) {
    char src[4096], dst[4096];
    snprintf(src, sizeof src, "%s/%s", dir, name);
    snprintf(dst, sizeof dst, "%s/%s", out, name);
    FILE *in = fopen(src, "rb");
    if (!in) return 0;
    FILE *o = fopen(dst, "wb");
    int ok = o != NULL;
    char buf[1 << 16];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, n, o) == n;
    ok = ok && !ferror(in);
    fclose(in);
    if (o && fclose(o) != 0) ok = 0;
    if (!ok) fprintf(stderr, "dsla random-model: copying %s to %s failed\n", src, dst);
    return ok ? 1 : -1;
}

int dsla_cmd_random_model(int argc, char **argv) {
    const char *shape = NULL, *tokenizer_dir = NULL, *out = NULL;
    long seed = 1, layers = 0, threads = 0;
    const dsla_arg_spec_t specs[] = {
        {"shape", DSLA_ARG_STRING, "7b or tiny", 0, 0, &shape},
        {"tokenizer", DSLA_ARG_STRING, "a model directory whose tokenizer the model takes", 0, 0,
         &tokenizer_dir},
        {"out", DSLA_ARG_STRING, "the new model's directory", 0, 0, &out},
        {"seed", DSLA_ARG_INT, "the weights' seed (default 1)", 0, 9.2e18, &seed},
        {"layers", DSLA_ARG_INT, "decoder layers (default: the shape's)", 1, 1024, &layers},
        {"threads", DSLA_ARG_INT, "drawing threads (default: one per CPU)", 1, 64, &threads},
    };
    const int rc =
        dsla_args_parse_options(argc, argv, specs, (int)(sizeof specs / sizeof specs[0]), usage);
    if (rc != -1) return rc;
    if (!shape || !tokenizer_dir || !out) {
        fprintf(stderr, "dsla random-model: --shape, --tokenizer and --out are required\n");
        return 2;
    }
    dsla_tokenizer_t *tok = NULL;
    if (dsla_tokenizer_load_dir(&tok, tokenizer_dir) != DSLA_OK) {
        fprintf(stderr, "dsla random-model: %s\n", dsla_last_error());
        return 1;
    }
    dsla_model_config_t cfg;
    if (shape_config(shape, dsla_tokenizer_vocab_size(tok), &cfg) != 0) {
        fprintf(stderr, "dsla random-model: --shape %s: 7b or tiny\n", shape);
        dsla_tokenizer_destroy(&tok);
        return 2;
    }
    if (layers) cfg.num_layers = (int)layers;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    dsla_status_t st = dsla_random_model_write(&cfg, (uint64_t)seed, out, (int)threads);
    /* The tokenizer's own files, byte for byte; a llama2.c tokenizer.bin is converted. */
    int copied = st == DSLA_OK ? copy_file(tokenizer_dir, out, "tokenizer.json") : 0;
    if (copied == 0 && st == DSLA_OK) st = dsla_tokenizer_save_json(tok, path);
    if (copied >= 0 && st == DSLA_OK && copy_file(tokenizer_dir, out, "tokenizer_config.json") < 0)
        copied = -1;
    dsla_tokenizer_destroy(&tok);
    if (copied < 0) return 1;
    if (st != DSLA_OK) {
        fprintf(stderr, "dsla random-model: %s\n", dsla_last_error());
        return 1;
    }
    fprintf(stderr, "dsla random-model: wrote %s (%s shape, %d layers, vocab %d, seed %ld)\n", out,
            shape, cfg.num_layers, cfg.vocab_size, seed);
    return 0;
}

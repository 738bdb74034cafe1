/* dsla eval: the held-out perplexity of the teacher or of a hybrid plan of distilled layers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "commands.h"
#include "distill_device.h"
#include "runtime/distill/distill.h"
#include "runtime/model/tokenizer.h"

static const char usage[] =
    "usage: dsla eval --model DIR --data FILE... [--layers DIR [--plan K | --dsla i,j,...]] "
    "[options]\n\n"
    "Scores --data (text split at blank lines, or raw int32 .tokens) in packed sequences of\n"
    "--seq-len tokens: the mean next-token negative log-likelihood (nats/token), its perplexity\n"
    "and the tokens scored, with the arithmetic dsla distill reports its teacher_ppl and eval_ppl\n"
    "with (same data, same numbers). Without --layers it scores the teacher. With --layers (a\n"
    "dsla distill --out directory) it scores a hybrid: --plan K, the first K versions in the "
    "stored\n"
    "conversion order (as the controller converts them; 0: the teacher); --dsla i,j,..., those\n"
    "layers; neither, every layer version the directory holds. --device cuda scores on a GPU\n"
    "(--gpu N, --dtype bf16 or f32, as dsla distill). --per-token FILE also writes each scored\n"
    "token's log-probability, one line per token: sequence, position, token id, logprob (tab-\n"
    "separated, after a header line), position t >= 1 being token t given tokens 0..t-1; these\n"
    "are the numbers an OpenAI-style echo with logprobs returns for the same tokens.";

/* The plan as text: "teacher (all attention)" or "DSLA layers 3,1". */
static void describe_plan(char *out, size_t cap, dsla_dsla_layer_t *const *layers, int n) {
    int len = snprintf(out, cap, "DSLA layers");
    int count = 0;
    for (int l = 0; l < n && len < (int)cap; l++)
        if (layers[l])
            len += snprintf(out + len, cap - (size_t)len, "%s%d", count++ ? "," : " ", l);
    if (!count) snprintf(out, cap, "teacher (all attention)");
}

/* The --per-token file: a header, then one line per scored token. */
static dsla_status_t write_per_token(const char *path, const dsla_corpus_t *corpus,
                                     const double *token_nll) {
    FILE *f = fopen(path, "w");
    if (!f) return dsla_error(DSLA_ERR_IO, "--per-token: cannot write %s", path);
    fputs("sequence\tposition\ttoken\tlogprob\n", f);
    const int T = corpus->seq_len;
    for (int s = 0; s < corpus->num_sequences; s++) {
        const int32_t *tokens = dsla_corpus_sequence(corpus, s);
        for (int t = 1; t < T; t++)
            fprintf(f, "%d\t%d\t%d\t%.10g\n", s, t, tokens[t],
                    -token_nll[(size_t)s * (size_t)(T - 1) + (size_t)(t - 1)]);
    }
    if (fclose(f) != 0) return dsla_error(DSLA_ERR_IO, "--per-token: writing %s failed", path);
    return DSLA_OK;
}

static void print_json(dsla_dsla_layer_t *const *layers, int n, const dsla_distill_eval_t *e,
                       int seq_len, const char *device) {
    printf("{\"what\": \"dsla_eval\", \"device\": \"%s\", \"dsla_layers\": [", device);
    int count = 0;
    for (int l = 0; l < n; l++)
        if (layers[l]) printf("%s%d", count++ ? ", " : "", l);
    printf("], \"sequences\": %d, \"seq_len\": %d, \"tokens\": %ld, \"nll\": %.10g, "
           "\"ppl\": %.10g}\n",
           e->sequences, seq_len, e->tokens, e->nll, e->ppl);
}

int dsla_cmd_eval(int argc, char **argv) {
    const char *model_dir = getenv("DSLA_MODEL"), *layers_dir = NULL, *dsla_list = NULL;
    const char *device = "cpu", *dtype = "bf16", *per_token = NULL;
    dsla_arg_list_t data = {0};
    long plan_k = -1, seq_len = 256, max_sequences = 0, gpu = 0;
    bool json = false;
    const dsla_arg_spec_t specs[] = {
        {"model", DSLA_ARG_STRING, "teacher model directory (default: $DSLA_MODEL)", 0, 0,
         &model_dir},
        {"data", DSLA_ARG_STRING_LIST, "held-out text or .tokens file (repeatable; required)", 0, 0,
         &data},
        {"layers", DSLA_ARG_STRING, "a dsla distill --out directory (default: score the teacher)",
         0, 0, &layers_dir},
        {"plan", DSLA_ARG_INT, "with --layers: the first K versions in the stored order", 0,
         DSLA_LAYER_ORDER_MAX, &plan_k},
        {"dsla", DSLA_ARG_STRING, "with --layers: these layers, e.g. 3,1", 0, 0, &dsla_list},
        {"seq-len", DSLA_ARG_INT, "tokens per scored sequence (default 256)", 2, 1 << 20, &seq_len},
        {"max-sequences", DSLA_ARG_INT, "score at most this many sequences (0: all)", 0, 1e9,
         &max_sequences},
        {"device", DSLA_ARG_STRING, "cpu (default) or cuda", 0, 0, &device},
        {"gpu", DSLA_ARG_INT, "with --device cuda: the GPU's index (default 0)", 0, 1024, &gpu},
        {"dtype", DSLA_ARG_STRING, "with --device cuda: bf16 (default) or f32", 0, 0, &dtype},
        {"json", DSLA_ARG_FLAG, "print one JSON object instead of the sentence", 0, 0, &json},
        {"per-token", DSLA_ARG_STRING, "also write each token's logprob to this file (TSV)", 0, 0,
         &per_token},
    };
    /* "--data a.txt b.txt": the words after --data's first value are data files too. */
    int rc = dsla_args_parse_with_list(argc, argv, specs, (int)(sizeof specs / sizeof specs[0]),
                                       usage, &data);
    if (rc >= 0) return rc;
    if (!model_dir || data.count == 0) {
        fprintf(stderr, "dsla eval: --model and --data are required\n");
        return 2;
    }
    if (!layers_dir && (plan_k >= 0 || dsla_list)) {
        fprintf(stderr, "dsla eval: --plan and --dsla choose layers of a --layers directory; "
                        "give --layers\n");
        return 2;
    }
    if (plan_k >= 0 && dsla_list) {
        fprintf(stderr, "dsla eval: --plan and --dsla name a plan each; give one\n");
        return 2;
    }
    int pick[DSLA_LAYER_ORDER_MAX], n_pick = 0;
    if (dsla_list && dsla_args_int_list(dsla_list, "dsla", pick, DSLA_LAYER_ORDER_MAX, &n_pick))
        return 2;
    bool cuda = false;
    dsla_distill_cuda_opts_t cuda_opts;
    if (dsla_cli_distill_device("", device, dtype, gpu, &cuda, &cuda_opts)) return 2;

    dsla_model_t *model = NULL;
    dsla_tokenizer_t *tok = NULL;
    dsla_corpus_t corpus = {0};
    dsla_dsla_layer_t *layers[DSLA_LAYER_ORDER_MAX] = {0};
    dsla_distill_backend_t *backend = NULL;
    dsla_distill_eval_t e = {0};
    double *token_nll = NULL;
    int L = 0, n_loaded = 0;
    dsla_status_t st = dsla_model_load(&model, model_dir);
    if (st == DSLA_OK) {
        L = dsla_model_config(model)->num_layers;
        const int ctx = dsla_model_config(model)->max_position_embeddings;
        if (seq_len > ctx)
            st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                            "--seq-len %ld exceeds the model's context "
                            "of %d",
                            seq_len, ctx);
    }
    if (st == DSLA_OK) st = dsla_tokenizer_load_dir(&tok, model_dir);
    if (st == DSLA_OK)
        st = dsla_corpus_load(&corpus, tok, data.items, data.count, (int)seq_len,
                              (int)max_sequences);
    if (st == DSLA_OK && layers_dir)
        st =
            dsla_distill_load_plan(model, layers_dir, (int)plan_k, pick, n_pick, layers, &n_loaded);
    if (st == DSLA_OK)
        st = cuda ? dsla_distill_backend_cuda_create(&backend, model, &cuda_opts)
                  : dsla_distill_backend_cpu_create(&backend, model);
    if (st == DSLA_OK && per_token) {
        token_nll =
            malloc((size_t)corpus.num_sequences * (size_t)(corpus.seq_len - 1) * sizeof *token_nll);
        if (!token_nll) st = dsla_error_oom("--per-token: %d sequences", corpus.num_sequences);
    }
    if (st == DSLA_OK)
        st = dsla_distill_eval_plan_tokens(backend, layers, L, &corpus, token_nll, &e);
    if (st == DSLA_OK && per_token) st = write_per_token(per_token, &corpus, token_nll);
    if (st == DSLA_OK) {
        const char *where = !cuda                               ? "cpu"
                            : cuda_opts.dtype == DSLA_DTYPE_F32 ? "cuda-f32"
                                                                : "cuda-bf16";
        if (json) {
            print_json(layers, L, &e, (int)seq_len, where);
        } else {
            char plan[1024];
            describe_plan(plan, sizeof plan, layers, L);
            printf("%s: held-out perplexity %.4f (mean NLL %.5f nats/token over %ld tokens, %d "
                   "sequences of %ld; %s)\n",
                   plan, e.ppl, e.nll, e.tokens, e.sequences, seq_len, where);
        }
    } else {
        fprintf(stderr, "dsla eval: %s\n", dsla_last_error());
    }
    free(token_nll);
    dsla_distill_backend_destroy(&backend);
    if (L > 0) dsla_distill_plan_free(layers, L);
    dsla_corpus_free(&corpus);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&model);
    if (st == DSLA_OK) return 0;
    return st == DSLA_ERR_INVALID_ARGUMENT || st == DSLA_ERR_NOT_FOUND ? 2 : 1;
}

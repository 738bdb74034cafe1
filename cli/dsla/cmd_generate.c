/* dsla generate: text from a prompt on the CPU, streamed to stdout as it is produced. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "args.h"
#include "commands.h"
#include "proto/dsla_client.h"
#include "runtime/actor/curve.h"
#include "runtime/model/generate.h"

static const char usage[] =
    "usage: dsla generate --model DIR --prompt TEXT [options]\n\n"
    "Generates a continuation of TEXT with the Llama model in DIR (Hugging Face layout: "
    "config.json,\n"
    "safetensors, tokenizer.json). Text goes to stdout as it is produced; statistics to stderr.\n"
    "With --endpoint, a dsla-serve at that address generates instead (no --model needed).";

/* A default that suits a quick look at a model; the context still caps it. */
enum { DEFAULT_MAX_TOKENS = 256 };

static int write_piece(void *user, const char *piece, size_t len) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

/* Token ids collected for --print-ids when generating through a server. */
typedef struct {
    int32_t *ids;
    int n, cap;
} remote_ids_t;

static int remote_piece(void *user, int32_t token, const char *text, size_t len) {
    remote_ids_t *r = user;
    if (token >= 0) {
        if (r->n == r->cap) {
            int cap = r->cap ? 2 * r->cap : 256;
            int32_t *ids = realloc(r->ids, sizeof *ids * (size_t)cap);
            if (!ids) return 1;
            r->ids = ids;
            r->cap = cap;
        }
        r->ids[r->n++] = token;
    }
    return write_piece(NULL, text, len);
}

/* With --curve-keys DIR: its keypair, and the server key known_servers names for endpoint. */
static dsla_status_t connect_remote(dsla_client_t **client, const char *endpoint,
                                    const char *curve_dir) {
    if (!curve_dir) return dsla_client_connect(client, endpoint, NULL);
    dsla_curve_keys_t *keys = NULL;
    DSLA_TRY(dsla_curve_keys_load(&keys, curve_dir));
    const char *server = dsla_curve_server_key(keys, endpoint);
    dsla_client_options_t opt = {.curve_server_key = server,
                                 .curve_public_key = keys->self.public_key,
                                 .curve_secret_key = keys->secret_key};
    dsla_status_t st =
        server ? dsla_client_connect(client, endpoint, &opt)
               : dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                            "--curve-keys %s: known_servers has no key for %s; add the line '%s "
                            "PUBLIC-KEY' (the gateway's node.pub)",
                            curve_dir, endpoint, endpoint);
    dsla_curve_keys_destroy(&keys);
    return st;
}

static int generate_remote(const char *endpoint, const char *curve_dir, const char *prompt,
                           const dsla_generate_params_t *params, bool print_ids) {
    dsla_client_t *client = NULL;
    if (connect_remote(&client, endpoint, curve_dir) != DSLA_OK) {
        fprintf(stderr, "dsla generate: %s\n", dsla_last_error());
        return 2;
    }
    dsla_proto_generate_t req = {.prompt = prompt,
                                 .prompt_len = strlen(prompt),
                                 .max_tokens = params->max_tokens,
                                 .temperature = params->sampling.temperature,
                                 .top_k = params->sampling.top_k,
                                 .top_p = params->sampling.top_p,
                                 .seed = params->sampling.seed,
                                 .n_stop = params->n_stop,
                                 .ignore_eos = params->ignore_eos,
                                 .stream = true};
    for (int i = 0; i < params->n_stop && i < DSLA_PROTO_STOP_MAX; i++)
        req.stop[i] = params->stop[i];
    remote_ids_t ids = {0};
    dsla_client_result_t result;
    fputs(prompt, stdout);
    fflush(stdout);
    dsla_proto_code_t code = dsla_client_generate(client, &req, remote_piece, &ids, 0, &result);
    fputc('\n', stdout);
    fflush(stdout);
    if (code == DSLA_CODE_OK) {
        if (print_ids) {
            fprintf(stderr, "ids:");
            for (int i = 0; i < ids.n; i++)
                fprintf(stderr, " %d", ids.ids[i]);
            fputc('\n', stderr);
        }
        fprintf(stderr, "dsla generate: %u prompt tokens, %u new tokens from %s, finish: %s\n",
                result.prompt_tokens, result.completion_tokens, endpoint,
                dsla_proto_finish_name(result.finish));
    } else {
        fprintf(stderr, "dsla generate: %s: %s\n", dsla_proto_code_name(code), result.message);
    }
    free(ids.ids);
    dsla_client_close(&client);
    return code == DSLA_CODE_OK ? 0 : code == DSLA_CODE_INVALID_ARGUMENT ? 2 : 1;
}

static int exit_code_for(dsla_status_t status) {
    return status == DSLA_ERR_INVALID_ARGUMENT ? 2 : 1;
}

int dsla_cmd_generate(int argc, char **argv) {
    const char *model_dir = getenv("DSLA_MODEL");
    const char *prompt = NULL, *endpoint = NULL, *curve_dir = NULL;
    long max_tokens = -1, top_k = 0, seed = -1;
    double temperature = 1.0, top_p = 1.0;
    bool print_ids = false, ignore_eos = false;
    dsla_arg_list_t stops = {0};
    const dsla_arg_spec_t specs[] = {
        {"model", DSLA_ARG_STRING, "model directory (default: $DSLA_MODEL)", 0, 0, &model_dir},
        {"prompt", DSLA_ARG_STRING, "the text to continue (required)", 0, 0, &prompt},
        {"max-tokens", DSLA_ARG_INT, "new tokens at most (default 256, capped by the context)", 1,
         1 << 30, &max_tokens},
        {"temperature", DSLA_ARG_FLOAT, "0 is greedy (default 1.0)", 0, 100, &temperature},
        {"top-k", DSLA_ARG_INT, "sample from the k most likely tokens; 0 is off (default)", 0,
         1 << 30, &top_k},
        {"top-p", DSLA_ARG_FLOAT, "nucleus sampling mass; 1 is off (default)", 0, 1, &top_p},
        {"seed", DSLA_ARG_INT, "random seed (default: from the clock)", 0, 9.2e18, &seed},
        {"stop", DSLA_ARG_STRING_LIST, "stop before this text (repeatable)", 0, 0, &stops},
        {"ignore-eos", DSLA_ARG_FLAG, "do not stop at end-of-sequence tokens", 0, 0, &ignore_eos},
        {"print-ids", DSLA_ARG_FLAG, "print the generated token ids to stderr", 0, 0, &print_ids},
        {"endpoint", DSLA_ARG_STRING, "generate on the dsla-serve at this URL, not in process", 0,
         0, &endpoint},
        {"curve-keys", DSLA_ARG_STRING, "with --endpoint: a CURVE key directory (a client key)", 0,
         0, &curve_dir},
    };
    int rc =
        dsla_args_parse_options(argc, argv, specs, (int)(sizeof specs / sizeof specs[0]), usage);
    if (rc >= 0) return rc;
    if (seed < 0) seed = (long)time(NULL);
    if (endpoint) {
        if (!prompt) {
            fprintf(stderr, "dsla generate: --prompt is required\n");
            return 2;
        }
        if (stops.count > DSLA_PROTO_STOP_MAX) {
            fprintf(stderr, "dsla generate: %d --stop strings, above the limit of %d\n",
                    stops.count, DSLA_PROTO_STOP_MAX);
            return 2;
        }
        dsla_generate_params_t params = {
            .sampling = {.temperature = (float)temperature,
                         .top_k = (int)top_k,
                         .top_p = (float)top_p,
                         .seed = (uint64_t)seed},
            .max_tokens = (int)(max_tokens < 0 ? DEFAULT_MAX_TOKENS : max_tokens),
            .stop = stops.items,
            .n_stop = stops.count,
            .ignore_eos = ignore_eos,
        };
        return generate_remote(endpoint, curve_dir, prompt, &params, print_ids);
    }
    if (!model_dir || !*model_dir) {
        fprintf(stderr, "dsla generate: --model is required (or set DSLA_MODEL)\n");
        return 2;
    }
    if (!prompt) {
        fprintf(stderr, "dsla generate: --prompt is required\n");
        return 2;
    }

    dsla_model_t *model = NULL;
    dsla_tokenizer_t *tokenizer = NULL;
    dsla_status_t status = dsla_model_load(&model, model_dir);
    if (status == DSLA_OK) status = dsla_tokenizer_load_dir(&tokenizer, model_dir);
    if (status != DSLA_OK) {
        fprintf(stderr, "dsla generate: %s\n", dsla_last_error());
        dsla_model_destroy(&model);
        return 1;
    }
    if (max_tokens < 0) {
        int room = dsla_model_config(model)->max_position_embeddings;
        max_tokens = DEFAULT_MAX_TOKENS;
        /* Without an explicit --max-tokens, fill at most the context; the prompt's size is known
         * only after encoding, so leave that check to the generator with a capped request. */
        if (max_tokens > room / 2) max_tokens = room / 2;
    }
    dsla_generate_params_t params = {
        .sampling = {.temperature = (float)temperature,
                     .top_k = (int)top_k,
                     .top_p = (float)top_p,
                     .seed = (uint64_t)seed},
        .max_tokens = (int)max_tokens,
        .stop = stops.items,
        .n_stop = stops.count,
        .ignore_eos = ignore_eos,
    };
    fputs(prompt, stdout);
    fflush(stdout);
    dsla_generate_result_t result;
    status = dsla_generate(model, tokenizer, prompt, strlen(prompt), &params, write_piece, NULL,
                           &result);
    fputc('\n', stdout);
    fflush(stdout);
    if (status == DSLA_OK) {
        if (print_ids) {
            fprintf(stderr, "ids:");
            for (int i = 0; i < result.completion_tokens; i++)
                fprintf(stderr, " %d", result.ids[i]);
            fputc('\n', stderr);
        }
        double decode_tps = result.decode_seconds > 0
                                ? (result.completion_tokens - 1) / result.decode_seconds
                                : 0.0;
        fprintf(stderr,
                "dsla generate: %d prompt tokens in %.1f ms, %d new tokens, decode %.1f tokens/s, "
                "finish: %s\n",
                result.prompt_tokens, result.prefill_seconds * 1e3, result.completion_tokens,
                decode_tps, dsla_finish_reason_name(result.finish));
        free(result.ids);
    } else {
        fprintf(stderr, "dsla generate: %s\n", dsla_last_error());
    }
    dsla_tokenizer_destroy(&tokenizer);
    dsla_model_destroy(&model);
    return status == DSLA_OK ? 0 : exit_code_for(status);
}

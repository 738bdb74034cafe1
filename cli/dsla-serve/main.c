/* dsla-serve: runs the serving actor over one model until SIGINT or SIGTERM. Argument parsing
 * and start-up only; the work lives in actors/ and runtime/. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "actors/serving.h"
#include "cli/dsla/args.h"
#include "runtime/model/llama.h"
#include "runtime/model/tokenizer.h"

static const char usage[] =
    "usage: dsla-serve --model DIR [--endpoint tcp://127.0.0.1:7070]\n\n"
    "Serves the Llama model in DIR (Hugging Face layout) to clients of the protocol in\n"
    "docs/protocol.md until SIGINT or SIGTERM. tcp://127.0.0.1:* picks a free port. The bound\n"
    "endpoint is printed to stdout as \"listening on ENDPOINT\".";

int main(int argc, char **argv) {
    const char *model_dir = getenv("DSLA_MODEL");
    const char *endpoint = "tcp://127.0.0.1:7070";
    const dsla_arg_spec_t specs[] = {
        {"model", DSLA_ARG_STRING, "model directory (default: $DSLA_MODEL)", 0, 0, &model_dir},
        {"endpoint", DSLA_ARG_STRING, "mailbox to bind (default tcp://127.0.0.1:7070)", 0, 0,
         &endpoint},
    };
    const char *positional[1];
    int n_positional = 0;
    int rc = dsla_args_parse(argc, argv, 1, specs, (int)(sizeof specs / sizeof specs[0]),
                             positional, 0, &n_positional, usage);
    if (rc == -1) return 0;
    if (rc != 0) return rc;
    if (!model_dir || !*model_dir) {
        fprintf(stderr, "dsla-serve: --model is required (or set DSLA_MODEL)\n");
        return 2;
    }
    /* Blocked before any thread starts, so that every actor thread inherits the mask and only
     * sigwait below sees the signals. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    dsla_model_t *model = NULL;
    dsla_tokenizer_t *tokenizer = NULL;
    dsla_actor_ctx_t *ctx = NULL;
    dsla_serving_t *serving = NULL;
    dsla_status_t st = dsla_model_load(&model, model_dir);
    if (st == DSLA_OK) st = dsla_tokenizer_load_dir(&tokenizer, model_dir);
    if (st == DSLA_OK) st = dsla_actor_ctx_create(&ctx);
    if (st == DSLA_OK) {
        dsla_serving_config_t config = {.ctx = ctx,
                                        .endpoint = endpoint,
                                        .model = model,
                                        .tokenizer = tokenizer,
                                        .engine = dsla_engine_config_default()};
        st = dsla_serving_create(&serving, &config);
    }
    if (st == DSLA_OK) {
        printf("listening on %s\n", dsla_serving_endpoint(serving));
        fflush(stdout);
        int sig = 0;
        sigwait(&stop_signals, &sig);
        fprintf(stderr, "dsla-serve: signal %d, shutting down\n", sig);
    } else {
        fprintf(stderr, "dsla-serve: %s\n", dsla_last_error());
    }
    dsla_serving_destroy(&serving);
    dsla_actor_ctx_destroy(&ctx);
    dsla_tokenizer_destroy(&tokenizer);
    dsla_model_destroy(&model);
    return st == DSLA_OK ? 0 : (st == DSLA_ERR_INVALID_ARGUMENT ? 2 : 1);
}

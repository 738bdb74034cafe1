/* dsla-serve: runs one node's actors (actors/node.h) until SIGINT or SIGTERM. Argument parsing
 * and start-up only; the work lives in actors/ and runtime/. */
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

#include "actors/node.h"
#include "actors/serving.h"
#include "cli/dsla-serve/cluster.h"
#include "cli/dsla/args.h"
#include "cli/dsla/distill_device.h"
#include "cli/dsla-serve/gpus.h"
#include "kernels/kernels.h"
#include "runtime/model/llama.h"
#include "runtime/core/log.h"
#include "runtime/model/tokenizer.h"
#ifdef DSLA_HAVE_CUDA
#include "runtime/serve/backend_cuda.h"
#endif

static const char usage[] =
    "usage: dsla-serve --cluster FILE --node NAME [option]...\n"
    "       dsla-serve [--version] [--model DIR] [--endpoint tcp://127.0.0.1:7070] [--http "
    "127.0.0.1:8000|off]\n"
    "                  [--replica tcp://HOST:PORT]... [--serving-only] [--heartbeat-ms N]\n"
    "                  [--layers DIR [--controller-db PATH] [--admin tcp://127.0.0.1:7071]\n"
    "                   [--policy 'threshold|slo|manual [key=value]...']] [--controller URL]\n"
    "                  [--report-ms N] [--name NAME] [--layer-cache DIR|off]\n"
    "                  [--fetch-chunk BYTES]\n"
    "                  [--device cpu|cuda [--dtype bf16|f32] [--gpu-margin-mib "
    "N]]\n"
    "                  [--device cuda --gpus 0-5 [--distill-gpus 6]] [--local-replicas N]\n"
    "                  [--device cuda --random-model 7b --tokenizer DIR [--vocab N]]\n"
    "                  [--distill-data FILE... --distill-out DIR [--distill-layers N]\n"
    "                   [--distill-steps N] [--distill-seq-len N] [--distill-batch N]\n"
    "                   [--distill-kl-weight X] ...\n"
    "                   [--distill-device cpu|cuda [--distill-gpu N] [--distill-dtype bf16|f32]]\n"
    "                   [--no-sample-prompts | --sample-every N [--sample-seed N] ...]]\n"
    "                  [--max-running N] [--max-context N] [--prefill-chunk N]\n"
    "                  [--max-queued N] [--max-queued-tokens N] [--max-queue-wait-ms N]\n"
    "                  [--http-max-in-flight N] [--cors-origin ORIGIN|*]...\n"
    "                  [--chat-template FILE]\n"
    "                  [--curve-keys DIR] [--allow-insecure] [--layer-key-file FILE]\n\n"
    "With no cluster file, runs the embedded single-node default (DESIGN.md section 3): a gateway\n"
    "at --endpoint for clients of docs/protocol.md, the OpenAI-compatible HTTP API of "
    "docs/http.md\n"
    "at --http, and a serving actor over the Llama model in DIR (Hugging Face layout). Each\n"
    "--replica adds a serving actor elsewhere (a `dsla-serve --serving-only`) for the gateway to\n"
    "route to; without --model the node is a gateway only. --serving-only runs the serving actor\n"
    "alone at --endpoint. --layers runs the controller (docs/controller.md) over the layer\n"
    "versions `dsla distill --out DIR` wrote: it converts the local serving actor's layers by\n"
    "--policy (default: the one stored in --controller-db, default DIR/controller.db), and "
    "dslactl\n"
    "talks to it at --admin. --controller makes a --serving-only replica report to a controller\n"
    "elsewhere; it fetches the layer versions the controller names over ZeroMQ, chunk by\n"
    "chunk, into --layer-cache (default $XDG_CACHE_HOME/dsla-serve/layers, or\n"
    "~/.cache/dsla-serve/layers) and reuses what is there; --layer-cache off opens the\n"
    "controller's paths instead (a shared filesystem). --distill-data and --distill-out run\n"
    "the distiller (docs/distiller.md): it distils the model's attention layers into DSLA\n"
    "layer versions in --distill-out while the\n"
    "node serves (resuming a run found there), and announces each to the controller, whose\n"
    "--layers defaults to --distill-out. The serving actor sends 1 in --sample-every of the\n"
    "prompts it serves to the local distiller as extra training data; they go nowhere else, and\n"
    "--no-sample-prompts keeps every prompt in the serving actor. --distill-device cuda trains on\n"
    "GPU --distill-gpu as `dsla distill --device cuda` does; it logs the device\n"
    "memory it needs, which --gpu-margin-mib must leave when serving shares that GPU. "
    "tcp://127.0.0.1:* and port 0 pick free ports. Prints "
    "\"listening on ENDPOINT\",\n"
    "then, with HTTP on, \"http on http://HOST:PORT\" and, with a controller, \"admin on\n"
    "ENDPOINT\" to stdout. --device cuda serves on GPU 0 (or each of --gpus): the weights uploaded "
    "in --dtype\n"
    "(bf16, or f32 for exact comparisons with the CPU), one arena for KV and DSLA states sized to\n"
    "the free memory less --gpu-margin-mib; the sizes go to stderr. Requests "
    "beyond\n"
    "--max-running wait in a queue bounded by --max-queued requests, --max-queued-tokens\n"
    "prompt tokens and --max-queue-wait-ms (0: no time bound), beyond which they\n"
    "fail RESOURCE_EXHAUSTED (HTTP 429) naming the bound; the gateway and HTTP carry as many\n"
    "(--http-max-in-flight overrides HTTP's). --random-model 7b (with --device cuda) serves a\n"
    "Llama-2-7B-shaped model of random weights drawn on the GPU (no checkpoint needed; no\n"
    "controller or distiller) with the tokenizer of --tokenizer DIR; --vocab defaults to its\n"
    "vocabulary. Chat requests render through the model's own chat template "
    "(tokenizer_config.json's\n"
    "chat_template, or DIR/chat_template.jinja), --chat-template FILE's when given, else a plain\n"
    "'Role: content' template (docs/http.md). --curve-keys DIR puts CURVE on every tcp://\n"
    "mailbox and connection (docs/security.md: node.key, node.pub, authorized_keys,\n"
    "known_servers; `dslactl keygen` makes a keypair); without it a mailbox binds only loopback\n"
    "unless --allow-insecure. --layer-key-file FILE (shared by distiller, controller and\n"
    "replicas) seals each layer version the distiller writes with a keyed MAC, and the controller\n"
    "and replicas refuse versions without it (`dslactl keygen --layer-key FILE` writes one). "
    "--cluster\n"
    "FILE --node NAME starts the actors the cluster file gives node NAME (docs/operations.md): "
    "the\n"
    "file's fields and options: maps become the options below.\n"

    "--gpus LIST (indices and ranges: 0-5, 0,2-3) runs one serving actor per GPU in\n"
    "this process, serving0 on the first and so on, each its own engine, weights and arena (each\n"
    "GPU's free memory less --gpu-margin-mib), all behind the gateway and the controller;\n"
    "--distill-gpus 6 trains the distiller there (one GPU: the layers distil as one chain).\n"
    "--local-replicas N is the CPU's counterpart: N serving actors, each its own copy of the\n"
    "model and its own engine (docs/serving.md). Each option's default below is the value the\n"
    "code uses.";

/* "DIR/" or "a/b/DIR" -> "DIR": the model's id in the HTTP API. */
static void model_id(const char *dir, char *out, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    size_t start = n;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    snprintf(out, cap, "%.*s", (int)(n - start), dir + start);
}

/* "host:port" of an address, for the printed URL. */
static void http_url(const char *address, int port, char *out, size_t cap) {
    const char *a = strncmp(address, "http://", 7) == 0 ? address + 7 : address;
    const char *colon = strrchr(a, ':');
    snprintf(out, cap, "http://%.*s:%d", (int)(colon ? colon - a : 0), a, port);
}

/* $XDG_CACHE_HOME/dsla-serve/layers, else ~/.cache/dsla-serve/layers, else under /tmp: where a
 * remote replica keeps the layer versions it fetched (XDG Base Directory's cache). */
static void default_layer_cache(char *out, size_t cap) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (xdg && xdg[0] == '/')
        snprintf(out, cap, "%s/dsla-serve/layers", xdg);
    else if (home && home[0])
        snprintf(out, cap, "%s/.cache/dsla-serve/layers", home);
    else
        snprintf(out, cap, "/tmp/dsla-serve-layers");
}

/* Each HTTP request in flight holds about four descriptors (its connection, a ZeroMQ client socket
 * and its mailbox, the gateway's end), and HTTP takes at most half of the limit (http.c; a bound
 * mailbox a quarter, conn_guard.h): raise the soft limit to the hard one, and say so when even
 * that cannot carry the in-flight bound (in_flight 0: HTTP is off, nothing to say). */
static void raise_open_files(uint32_t in_flight) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    const rlim_t need = 8 * (rlim_t)in_flight + 128;
    if (in_flight && rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
        fprintf(stderr,
                "dsla-serve: open files are limited to %llu (ulimit -n), about %llu HTTP "
                "connections; beyond that they are closed unserved. Raise the limit or lower "
                "--http-max-in-flight (%u)\n",
                (unsigned long long)rl.rlim_max,
                (unsigned long long)(rl.rlim_max > 128 ? rl.rlim_max - 128 : 0) / 8, in_flight);
}

/* With --cluster, the node's command line (cluster.h): argv and every option's value point into
 * it until exit; static, so that a usage error's early return leaves nothing unreachable. */
static dsla_serve_cluster_t *cluster;

/* Random weights are drawn from this seed: every --random-model server is the same model. */
#define RANDOM_MODEL_SEED 1

/* --device cuda: the model on GPU gpu (model NULL: random weights of random_cfg's shape), its
 * pools sized to that GPU's free memory (backend_cuda.h); the sizes go to stderr. gpu is left the
 * calling thread's current device. */
static dsla_status_t deploy_gpu(int gpu, const dsla_model_t *model,
                                const dsla_model_config_t *random_cfg,
                                const dsla_engine_config_t *engine, const char *dtype,
                                long max_context, long margin_mib, dsla_serve_backend_t **out) {
#ifdef DSLA_HAVE_CUDA
    if (dsla_cuda_device_bind(gpu) != DSLA_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", dsla_last_error());
        return dsla_error(DSLA_ERR_INVALID_ARGUMENT, "--gpus: %s", why);
    }
    const dsla_serve_cuda_deploy_t d = {
        .weight_dtype = strcmp(dtype, "f32") == 0 ? DSLA_DTYPE_F32 : DSLA_DTYPE_BF16,
        .max_running = engine->max_running,
        .step_tokens = engine->step_tokens,
        .max_context = (int)max_context,
        .margin_bytes = (size_t)margin_mib << 20,
        /* echo with logprobs: one scoring chunk of rows beside one per sequence */
        .max_logit_rows = dsla_engine_logit_rows(engine),
    };
    dsla_serve_cuda_deployed_t info;
    DSLA_TRY(model ? dsla_serve_backend_cuda_deploy(out, model, &d, &info)
                   : dsla_serve_backend_cuda_deploy_random(out, random_cfg, RANDOM_MODEL_SEED, &d,
                                                           &info));
    fprintf(stderr,
            "dsla-serve: GPU %d: %s, %s weights %.2f GiB, one arena of %d blocks of %.0f KiB (%.2f "
            "GiB) "
            "for KV and DSLA states, none reserved: a state slot is %d blocks (%.1f MiB), up to "
            "%d slots; context up to %d; up to %d logit rows a step (%.1f MiB)\n",
            gpu, info.device, dtype, (double)info.weight_bytes / (1u << 30), info.kv_blocks,
            (double)info.kv_block_bytes / 1024,
            (double)info.kv_blocks * (double)info.kv_block_bytes / (1u << 30), info.blocks_per_slot,
            (double)info.slot_bytes / (1 << 20), info.kv_blocks / info.blocks_per_slot,
            info.max_context, info.max_logit_rows,
            (double)info.max_logit_rows *
                (double)(model ? dsla_model_config(model)->vocab_size : random_cfg->vocab_size) *
                sizeof(float) / (1 << 20));
    return DSLA_OK;
#else
    (void)gpu, (void)model, (void)random_cfg, (void)engine, (void)dtype, (void)max_context,
        (void)margin_mib;
    *out = NULL;
    return dsla_error(DSLA_ERR_UNSUPPORTED,
                      "--device cuda: this dsla-serve was built without CUDA (-DDSLA_CUDA=ON)");
#endif
}

/* What the distiller needs on its GPU, to stderr: a serving arena on that GPU (the first) is sized
 * to the free memory less --gpu-margin-mib, so the margin must hold it (docs/distiller.md). */
static void print_distiller_need(const dsla_model_t *model, const dsla_distill_cuda_opts_t *o,
                                 int seq_len, int batch, long max_sequences, int eval_sequences,
                                 int reservoir, bool logit_kl, bool serving_there,
                                 long margin_mib) {
    const dsla_model_config_t *cfg = dsla_model_config(model);
    const size_t base =
        dsla_distill_cuda_bytes(cfg, o->dtype, seq_len, batch, reservoir, eval_sequences, logit_kl);
    const size_t one = dsla_distill_cuda_bytes(cfg, o->dtype, seq_len, batch, reservoir + 1,
                                               eval_sequences, logit_kl);
    fprintf(stderr,
            "dsla-serve: the distiller trains on GPU %d (%s): about %zu MiB of device memory "
            "plus %.2f MiB per training sequence",
            o->gpu, o->dtype == DSLA_DTYPE_F32 ? "fp32" : "bf16", (base >> 20) + 1,
            (double)(one - base) / (1 << 20));
    if (max_sequences > 0) {
        const size_t all = base + (size_t)max_sequences * (one - base);
        fprintf(stderr, ", %zu MiB with --distill-max-sequences %ld", (all >> 20) + 1,
                max_sequences);
        if (serving_there && (long)(all >> 20) + 1 > margin_mib)
            fprintf(stderr, "; more than --gpu-margin-mib %ld leaves it beside the serving arena",
                    margin_mib);
    }
    fputc('\n', stderr);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) /* the build's version (CMake's project version) */
        if (strcmp(argv[i], "--version") == 0) {
            printf("dsla-serve %s\n", DSLA_VERSION);
            return 0;
        }
    const char *model_dir = NULL, *random_model = NULL, *tokenizer_dir = NULL;
    long vocab = 0;
    const char *endpoint = "tcp://127.0.0.1:7070";
    const char *http = "127.0.0.1:8000";
    const char *model_name = NULL;
    const char *log_level = NULL, *log_format = NULL;
    dsla_arg_list_t replicas = {0}, cors_origins = {0};
    bool serving_only = false, allow_insecure = false;
    const char *api_key_file = NULL, *admin_key_file = NULL, *curve_dir = NULL;
    const char *layer_key_file = NULL;
    dsla_layer_key_t layer_key;
    dsla_curve_keys_t *curve = NULL;
    dsla_http_auth_t *http_auth = NULL, *admin_auth = NULL;
    long heartbeat_ms = DSLA_ACTOR_HEARTBEAT_MS, report_ms = DSLA_SERVING_REPORT_MS;
    const char *layers_dir = NULL, *controller_db = NULL, *admin = "tcp://127.0.0.1:7071";
    const char *policy = NULL, *controller = NULL, *layer_cache = NULL;
    const char *serving_name = NULL;
    const char *cluster_file = NULL, *cluster_node = NULL, *controller_bind = NULL;
    long fetch_chunk = DSLA_PROTO_CHUNK_MAX;
    const char *device = "cpu", *dtype = "bf16";
    const dsla_engine_config_t engine_defaults = dsla_engine_config_default();
    long margin_mib = 2048, max_running = engine_defaults.max_running, max_context = 0;
    long prefill_chunk = 0, max_queued = engine_defaults.max_queued;
    long max_queued_tokens = engine_defaults.max_queued_tokens;
    long max_queue_wait_ms = engine_defaults.max_queue_wait_ms, http_max_in_flight = 0;
    char prefill_help[128];
    snprintf(prefill_help, sizeof prefill_help,
             "prompt tokens per request per step (default %d on the CPU, %d on a GPU)",
             engine_defaults.prefill_chunk, DSLA_ENGINE_GPU_PREFILL_CHUNK);
    const char *chat_template_file = NULL;
    dsla_distill_params_t distill = dsla_distill_params_default();
    dsla_arg_list_t distill_data = {0};
    const char *distill_out = NULL, *distill_device = NULL, *distill_dtype = NULL;
    const char *distill_order = "measured";
    long distill_gpu = 0;
    long distill_layers = 0, distill_steps = distill.steps, distill_batch = distill.batch;
    long distill_seq_len = 256, distill_max_sequences = 0, distill_eval_sequences = 16;
    long distill_seed = (long)distill.seed, distill_checkpoint = distill.checkpoint_every;
    double distill_kl_weight = distill.kl_weight;
    bool no_sample_prompts = false, gpu_warmup = false;
    long sample_every = DSLA_SERVING_SAMPLE_EVERY, sample_seed = 0;
    long sample_tokens_per_s = DSLA_SERVING_SAMPLE_TOKENS_PER_S;
    long distill_samples = DSLA_DISTILLER_RESERVOIR_PROMPTS;
    const char *gpus_text = NULL, *distill_gpus_text = NULL;
    long local_replicas = 0;
    /* Options whose default is a value the code uses: the table shows it. */
    const dsla_arg_kind_t INT_D = DSLA_ARG_INT | DSLA_ARG_SHOW_DEFAULT;
    const dsla_arg_kind_t STR_D = DSLA_ARG_STRING | DSLA_ARG_SHOW_DEFAULT;
    const dsla_arg_spec_t specs[] = {
        {"model", DSLA_ARG_STRING, "model directory (default: $DSLA_MODEL)", 0, 0, &model_dir},
        {"random-model", DSLA_ARG_STRING,
         "with --device cuda: 7b, Llama-2-7B's shape with random weights drawn on the GPU", 0, 0,
         &random_model},
        {"tokenizer", DSLA_ARG_STRING, "with --random-model: the tokenizer's directory", 0, 0,
         &tokenizer_dir},
        {"vocab", DSLA_ARG_INT,
         "with --random-model: its vocabulary (default: the tokenizer's, which it must hold)", 16,
         1 << 24, &vocab},
        {"endpoint", STR_D, "clients' mailbox", 0, 0, &endpoint},
        {"http", STR_D, "HTTP address; off disables it", 0, 0, &http},
        {"replica", DSLA_ARG_STRING_LIST, "a remote serving actor's endpoint (repeatable)", 0, 0,
         &replicas},
        {"serving-only", DSLA_ARG_FLAG, "run the serving actor alone at --endpoint", 0, 0,
         &serving_only},
        {"model-name", DSLA_ARG_STRING, "the model's id in the HTTP API (default: DIR's name)", 0,
         0, &model_name},
        {"heartbeat-ms", INT_D, "heartbeat interval (a peer silent for 3 is dead)", 10, 60000,
         &heartbeat_ms},
        {"layers", DSLA_ARG_STRING, "layer versions from dsla distill: runs the controller", 0, 0,
         &layers_dir},
        {"controller-db", DSLA_ARG_STRING,
         "the controller's SQLite state (default DIR/controller.db)", 0, 0, &controller_db},
        {"admin", STR_D, "the controller's mailbox for dslactl", 0, 0, &admin},
        {"policy", DSLA_ARG_STRING, "load policy, e.g. 'manual layers=2' (default: the stored one)",
         0, 0, &policy},
        {"controller", DSLA_ARG_STRING, "with --serving-only: a controller to report to", 0, 0,
         &controller},
        {"report-ms", INT_D, "LOAD_REPORT interval", 10, 60000, &report_ms},
        {"name", DSLA_ARG_STRING,
         "with --serving-only: the serving actor's name at its controller (default serving0)", 0, 0,
         &serving_name},
        {"layer-cache", DSLA_ARG_STRING,
         "with --controller: where fetched layer versions go (default "
         "$XDG_CACHE_HOME/dsla-serve/layers); off opens the controller's paths",
         0, 0, &layer_cache},
        {"fetch-chunk", INT_D, "with --controller: bytes per LAYER_FETCH", 1024,
         DSLA_PROTO_CHUNK_MAX, &fetch_chunk},
        {"device", STR_D, "cpu or cuda: where the serving actor runs", 0, 0, &device},
        {"dtype", STR_D, "with --device cuda: bf16 or f32 weights and KV", 0, 0, &dtype},
        {"gpu-margin-mib", INT_D, "device memory left out of the pools", 0, 1 << 20, &margin_mib},
        {"max-running", INT_D, "sequences decoding at once", 1, 4096, &max_running},
        {"max-context", DSLA_ARG_INT, "with --device cuda: longest sequence (default: the model's)",
         1, 1 << 20, &max_context},
        {"gpu-warmup", DSLA_ARG_FLAG,
         "with --device cuda: build cuDNN's plan for every prompt bucket before serving", 0, 0,
         &gpu_warmup},
        {"prefill-chunk", DSLA_ARG_INT, prefill_help, 1, 1 << 20, &prefill_chunk},
        {"max-queued", INT_D, "requests waiting for admission at most", 1, 1 << 24, &max_queued},
        {"max-queued-tokens", INT_D, "prompt tokens waiting for admission at most", 1, 1e12,
         &max_queued_tokens},
        {"max-queue-wait-ms", INT_D,
         "a request not admitted after this long fails RESOURCE_EXHAUSTED (0: never)", 0, 1e9,
         &max_queue_wait_ms},
        {"http-max-in-flight", DSLA_ARG_INT,
         "HTTP generation requests at once, queued or running (default: the gateway's bound, "
         "--max-queued plus twice --max-running per replica)",
         1, 1 << 24, &http_max_in_flight},
        {"cors-origin", DSLA_ARG_STRING_LIST,
         "an origin browsers may call the HTTP API from, e.g. https://app.example.com, or * for "
         "any (repeatable; default: none, CORS off)",
         0, 0, &cors_origins},
        {"chat-template", DSLA_ARG_STRING,
         "a Jinja chat template file for chat requests (default: the model's own)", 0, 0,
         &chat_template_file},
        {"api-key-file", DSLA_ARG_STRING,
         "HTTP API keys, one a line (also DSLA_API_KEY): every route but /health needs "
         "'Authorization: Bearer KEY'",
         0, 0, &api_key_file},
        {"admin-key-file", DSLA_ARG_STRING,
         "keys dslactl must present at --admin, one a line (also DSLA_ADMIN_KEY)", 0, 0,
         &admin_key_file},
        {"allow-insecure", DSLA_ARG_FLAG,
         "let HTTP listen beyond loopback without an API key, and mailboxes without CURVE", 0, 0,
         &allow_insecure},
        {"curve-keys", DSLA_ARG_STRING,
         "CURVE key directory: node.key, node.pub, authorized_keys, known_servers", 0, 0,
         &curve_dir},
        {"layer-key-file", DSLA_ARG_STRING,
         "layer MAC key: the distiller seals versions, the controller and replicas check them", 0,
         0, &layer_key_file},
        {"distill-data", DSLA_ARG_STRING_LIST,
         "calibration text or .tokens file: runs the distiller (repeatable)", 0, 0, &distill_data},
        {"distill-out", DSLA_ARG_STRING, "the distiller's layer versions and checkpoint", 0, 0,
         &distill_out},
        {"distill-layers", DSLA_ARG_INT, "layers to distil, first of the order (default all)", 0,
         DSLA_LAYER_ORDER_MAX, &distill_layers},
        {"distill-steps", INT_D, "optimizer steps per layer", 1, 1e9, &distill_steps},
        {"distill-order", DSLA_ARG_STRING,
         "conversion order: measured (default), entropy or reverse (dsla distill --order)", 0, 0,
         &distill_order},
        {"distill-seq-len", INT_D, "tokens per training sequence", 2, 1 << 20, &distill_seq_len},
        {"distill-batch", INT_D, "sequences per step", 1, DSLA_LAYER_ORDER_MAX, &distill_batch},
        {"distill-max-sequences", INT_D, "training sequences read at most (0: all)", 0, 1e9,
         &distill_max_sequences},
        {"distill-eval-sequences", INT_D, "held-out sequences", 1, 1e6, &distill_eval_sequences},
        {"distill-seed", INT_D, "initialisation and batch seed", 0, 9.2e18, &distill_seed},
        {"distill-checkpoint-every", INT_D, "steps between checkpoints", 0, 1e9,
         &distill_checkpoint},
        {"distill-kl-weight", DSLA_ARG_FLOAT | DSLA_ARG_SHOW_DEFAULT,
         "weight of the logit KL term (dsla distill --kl-weight; 0: off)", 0, 100,
         &distill_kl_weight},
        {"distill-device", DSLA_ARG_STRING, "the distiller's device: cpu (default) or cuda", 0, 0,
         &distill_device},
        {"distill-gpu", INT_D, "with --distill-device cuda: the GPU's index", 0, 1024,
         &distill_gpu},
        {"distill-dtype", DSLA_ARG_STRING, "with --distill-device cuda: bf16 (default) or f32", 0,
         0, &distill_dtype},
        {"distill-samples", INT_D, "sampled prompts the distiller holds", 1, 1 << 20,
         &distill_samples},
        {"no-sample-prompts", DSLA_ARG_FLAG,
         "with the distiller: no served prompt is sampled for it (opt-out)", 0, 0,
         &no_sample_prompts},
        {"sample-every", INT_D, "with the distiller: sample 1 in N served prompts", 1, 1 << 30,
         &sample_every},
        {"sample-seed", INT_D, "with the distiller: the sampling seed", 0, 9.2e18, &sample_seed},
        {"sample-tokens-per-s", INT_D, "with the distiller: sampled tokens sent per second at most",
         1, 1 << 30, &sample_tokens_per_s},
        {"gpus", DSLA_ARG_STRING,
         "with --device cuda: GPUs to serve on, one serving actor each (default 0), e.g. 0-5", 0, 0,
         &gpus_text},
        {"distill-gpus", DSLA_ARG_STRING,
         "with the distiller: the GPU it trains on (--distill-device cuda --distill-gpu N)", 0, 0,
         &distill_gpus_text},
        {"local-replicas", DSLA_ARG_INT,
         "on the CPU: serving actors in this process, each its own model copy and engine "
         "(default 1)",
         1, DSLA_GATEWAY_REPLICA_MAX, &local_replicas},
        {"log-level", DSLA_ARG_STRING,
         "error, warn (default, or DSLA_LOG), info (one line per request), debug", 0, 0,
         &log_level},
        {"log-format", DSLA_ARG_STRING, "text (default) or json: one object per line", 0, 0,
         &log_format},
        {"cluster", DSLA_ARG_STRING, "a cluster file (docs/operations.md); with --node", 0, 0,
         &cluster_file},
        {"node", DSLA_ARG_STRING, "with --cluster: the node whose actors to start", 0, 0,
         &cluster_node},
        {"controller-bind", DSLA_ARG_STRING,
         "with --layers or the distiller: another mailbox for replicas and the distiller (--admin "
         "stays dslactl's)",
         0, 0, &controller_bind},
    };
    const int cluster_rc = dsla_serve_cluster_args(&argc, &argv, specs,
                                                   (int)(sizeof specs / sizeof specs[0]), &cluster);
    if (cluster_rc != -1) {
        dsla_serve_cluster_free(&cluster);
        return cluster_rc;
    }
    const char *positional[1];
    int n_positional = 0;
    int rc = dsla_args_parse(argc, argv, 1, specs, (int)(sizeof specs / sizeof specs[0]),
                             positional, 0, &n_positional, usage);
    if (rc == -1) return 0;
    if (rc != 0) return rc;
    dsla_log_level_t level;
    if (log_level && !dsla_log_level_parse(log_level, &level)) {
        fprintf(stderr, "dsla-serve: --log-level '%s' must be error, warn, info or debug\n",
                log_level);
        return 2;
    }
    if (log_level) dsla_log_set_level(level);
    if (log_format && strcmp(log_format, "text") != 0 && strcmp(log_format, "json") != 0) {
        fprintf(stderr, "dsla-serve: --log-format '%s' must be text or json\n", log_format);
        return 2;
    }
    if (log_format)
        dsla_log_set_format(strcmp(log_format, "json") == 0 ? DSLA_LOG_FORMAT_JSON
                                                            : DSLA_LOG_FORMAT_TEXT);
    if (random_model && model_dir) {
        fprintf(stderr, "dsla-serve: --model and --random-model name two models; give one\n");
        return 2;
    }
    if (!random_model && !model_dir) model_dir = getenv("DSLA_MODEL");
    if (model_dir && !*model_dir) model_dir = NULL;
    if (random_model) {
        const char *refused = layers_dir           ? "--layers"
                              : controller         ? "--controller"
                              : distill_out        ? "--distill-out"
                              : distill_data.count ? "--distill-data"
                                                   : NULL;
        if (strcmp(random_model, "7b") != 0) {
            fprintf(stderr, "dsla-serve: --random-model %s: the only shape is 7b\n", random_model);
            return 2;
        }
        if (strcmp(device, "cuda") != 0) {
            fprintf(stderr, "dsla-serve: --random-model draws its weights on the GPU: it needs "
                            "--device cuda\n");
            return 2;
        }
        if (!tokenizer_dir) {
            fprintf(stderr, "dsla-serve: --random-model needs --tokenizer DIR (e.g. a Llama "
                            "model's directory) for text prompts\n");
            return 2;
        }
        if (refused) {
            fprintf(stderr,
                    "dsla-serve: %s needs a model's real weights (layer versions "
                    "distilled from it); not with --random-model\n",
                    refused);
            return 2;
        }
    } else if (tokenizer_dir || vocab) {
        fprintf(stderr, "dsla-serve: --tokenizer and --vocab are for --random-model; --model "
                        "DIR's tokenizer is DIR's\n");
        return 2;
    }
    const bool local = model_dir || random_model;
    if (!local && (serving_only || replicas.count == 0)) {
        fprintf(stderr, "dsla-serve: --model is required (or set DSLA_MODEL)%s\n",
                serving_only ? "" : ", unless --replica names serving actors elsewhere");
        return 2;
    }
    if (serving_only && replicas.count > 0) {
        fprintf(stderr, "dsla-serve: --serving-only runs no gateway; drop --replica\n");
        return 2;
    }
    if (layers_dir && (serving_only || (!model_dir && replicas.count == 0))) {
        fprintf(stderr, "dsla-serve: --layers runs a controller for the local serving actor or "
                        "the --replica ones; it needs --model or --replica and no --serving-only "
                        "(use --controller there)\n");
        return 2;
    }
    if (controller && !serving_only) {
        fprintf(stderr, "dsla-serve: --controller is for --serving-only replicas; this node runs "
                        "its own with --layers\n");
        return 2;
    }
    if ((distill_data.count > 0) != (distill_out != NULL) || (distill_out && serving_only) ||
        (distill_out && !model_dir)) {
        fprintf(stderr, "dsla-serve: the distiller needs --distill-data and --distill-out "
                        "together, with --model and without --serving-only\n");
        return 2;
    }
    int distill_gpus[DSLA_GATEWAY_REPLICA_MAX], n_distill_gpus = 0;
    if (distill_gpus_text) {
        if (!distill_out) {
            fprintf(stderr, "dsla-serve: --distill-gpus is for a node with the distiller "
                            "(--distill-data, --distill-out)\n");
            return 2;
        }
        if (dsla_args_given(argc, argv, 1, "distill-gpu") ||
            (distill_device && strcmp(distill_device, "cuda") != 0)) {
            fprintf(stderr,
                    "dsla-serve: --distill-gpus %s trains on CUDA GPUs: not with "
                    "--distill-gpu or --distill-device cpu\n",
                    distill_gpus_text);
            return 2;
        }
        if (dsla_serve_parse_gpus("distill-gpus", distill_gpus_text, distill_gpus,
                                  DSLA_GATEWAY_REPLICA_MAX, &n_distill_gpus))
            return 2;
        /* The order's layers distil as one chain, each on the hybrid of the layers before it:
         * a second distiller would wait on the first until chaining across distillers exists. */
        if (n_distill_gpus > 1) {
            fprintf(stderr,
                    "dsla-serve: --distill-gpus %s: one distiller GPU for now (the layers distil "
                    "as one chain, each on the layers before it); give one, e.g. --distill-gpus "
                    "%d\n",
                    distill_gpus_text, distill_gpus[0]);
            return 2;
        }
        distill_device = "cuda";
        distill_gpu = distill_gpus[0];
    }
    bool distill_on_gpu = false;
    dsla_distill_cuda_opts_t distill_cuda;
    if (dsla_cli_distill_device("distill-", distill_device, distill_dtype, distill_gpu,
                                &distill_on_gpu, &distill_cuda) ||
        dsla_cli_distill_order("distill-", distill_order, false, &distill.order_mode))
        return 2;
    if ((dsla_args_given(argc, argv, 1, "distill-gpu") || distill_dtype) && !distill_on_gpu) {
        fprintf(stderr, "dsla-serve: --distill-gpu and --distill-dtype are for --distill-device "
                        "cuda\n");
        return 2;
    }
    if (!distill_out && (no_sample_prompts || dsla_args_given(argc, argv, 1, "distill-samples") ||
                         distill_device)) {
        fprintf(stderr, "dsla-serve: --no-sample-prompts, --distill-samples and --distill-device "
                        "are for a node with the distiller (--distill-data, --distill-out)\n");
        return 2;
    }
    if (serving_name && !local) {
        fprintf(stderr, "dsla-serve: --name names the local serving actor (default serving0); "
                        "this node runs none (--model)\n");
        return 2;
    }
    /* The distiller's node runs the controller over --distill-out when --layers is absent. */
    if (controller_bind && !layers_dir && !distill_out) {
        fprintf(stderr, "dsla-serve: --controller-bind is a mailbox of the controller: it needs "
                        "--layers or the distiller (--distill-data, --distill-out)\n");
        return 2;
    }
    if ((layer_cache || dsla_args_given(argc, argv, 1, "fetch-chunk")) && !controller) {
        fprintf(stderr, "dsla-serve: --layer-cache and --fetch-chunk are for --serving-only "
                        "replicas with --controller\n");
        return 2;
    }
    char cache_default[4096];
    if (controller && !layer_cache) {
        default_layer_cache(cache_default, sizeof cache_default);
        layer_cache = cache_default;
    }
    if (layer_cache && strcmp(layer_cache, "off") == 0) layer_cache = NULL;
    const bool on_gpu = strcmp(device, "cuda") == 0;
    if (!on_gpu && strcmp(device, "cpu") != 0) {
        fprintf(stderr, "dsla-serve: --device %s: cpu or cuda\n", device);
        return 2;
    }
    if (strcmp(dtype, "bf16") != 0 && strcmp(dtype, "f32") != 0) {
        fprintf(stderr, "dsla-serve: --dtype %s: bf16 or f32\n", dtype);
        return 2;
    }
    if (on_gpu && !local) {
        fprintf(stderr, "dsla-serve: --device cuda runs a local serving actor: it needs --model\n");
        return 2;
    }
    int gpus[DSLA_GATEWAY_REPLICA_MAX] = {0}, n_gpus = on_gpu ? 1 : 0;
    if (gpus_text && !on_gpu) {
        fprintf(stderr, "dsla-serve: --gpus %s serves on GPUs: it needs --device cuda\n",
                gpus_text);
        return 2;
    }
    if (gpus_text &&
        dsla_serve_parse_gpus("gpus", gpus_text, gpus, DSLA_GATEWAY_REPLICA_MAX, &n_gpus))
        return 2;
    if (serving_only && (n_gpus > 1 || local_replicas > 1)) {
        fprintf(stderr, "dsla-serve: --serving-only runs one serving actor: --gpus names one GPU "
                        "and --local-replicas is 1\n");
        return 2;
    }
    if (local_replicas && (on_gpu || !local)) {
        fprintf(stderr,
                "dsla-serve: --local-replicas %ld runs CPU serving actors over --model; "
                "with --device cuda, --gpus names one GPU per serving actor\n",
                local_replicas);
        return 2;
    }
    for (int i = 0; i < n_distill_gpus && on_gpu; i++)
        if (dsla_serve_gpu_listed(gpus, n_gpus, distill_gpus[i])) {
            fprintf(stderr,
                    "dsla-serve: GPU %d is in both --gpus %s and --distill-gpus %s; a distiller "
                    "beside a serving actor is --distill-device cuda --distill-gpu %d\n",
                    distill_gpus[i], gpus_text ? gpus_text : "0", distill_gpus_text,
                    distill_gpus[i]);
            return 2;
        }
    char db_default[4096];
    if ((layers_dir || distill_out) && !controller_db) {
        snprintf(db_default, sizeof db_default, "%s/controller.db",
                 layers_dir ? layers_dir : distill_out);
        controller_db = db_default;
    }
    /* Blocked before any thread starts, so that every actor thread inherits the mask and only
     * sigwait below sees the signals. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN); /* an HTTP client that hangs up is no reason to die */

    char name[256];
    model_id(model_name     ? model_name
             : model_dir    ? model_dir
             : random_model ? "llama-2-7b-random"
                            : "dsla",
             name, sizeof name);
    dsla_model_t *model = NULL;
    dsla_tokenizer_t *tokenizer = NULL;
    dsla_node_t *node = NULL;
    dsla_status_t st = DSLA_OK;
    if (model_dir) st = dsla_model_load(&model, model_dir);
    if (st == DSLA_OK && (model_dir || tokenizer_dir))
        st = dsla_tokenizer_load_dir(&tokenizer, model_dir ? model_dir : tokenizer_dir);
    dsla_chat_template_t *chat_template = NULL;
    const char *tokenizer_home = model_dir ? model_dir : tokenizer_dir;
    if (st == DSLA_OK && chat_template_file)
        st = dsla_chat_template_load_file(&chat_template, chat_template_file, tokenizer_home);
    else if (st == DSLA_OK && tokenizer_home)
        st = dsla_chat_template_load_dir(&chat_template, tokenizer_home);
    if (st == DSLA_OK && chat_template)
        dsla_log_info("chat requests render through the chat template of %s",
                      dsla_chat_template_name(chat_template));
    dsla_model_config_t random_cfg = {0};
    if (st == DSLA_OK && random_model) {
        const int tv = dsla_tokenizer_vocab_size(tokenizer);
        if (vocab == 0) vocab = tv;
        random_cfg = dsla_model_config_llama2_7b((int)vocab);
        if (tv > vocab)
            st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                            "--tokenizer %s has a vocabulary of %d tokens, more than --vocab %ld: "
                            "its ids would fall outside the model's",
                            tokenizer_dir, tv, vocab);
    }
    dsla_engine_config_t engine = dsla_engine_config_for(on_gpu);
    engine.max_running = (int)max_running;
    engine.max_queued = (int)max_queued;
    engine.max_queued_tokens = max_queued_tokens;
    engine.max_queue_wait_ms = max_queue_wait_ms;
    if (prefill_chunk) engine.prefill_chunk = (int)prefill_chunk;
    dsla_engine_config_fit(&engine);
    /* The local serving actors: one per GPU of --gpus, each its own deployment, or
     * --local-replicas CPU engines, each over its own copy of the model (a CPU engine runs in its
     * model's scratch). */
    dsla_node_local_t locals[DSLA_GATEWAY_REPLICA_MAX];
    dsla_model_t *copies[DSLA_GATEWAY_REPLICA_MAX] = {NULL};
    dsla_serve_backend_t *backends[DSLA_GATEWAY_REPLICA_MAX] = {NULL};
    const int n_local = !local ? 0 : on_gpu ? n_gpus : local_replicas ? (int)local_replicas : 1;
    for (int i = 0; st == DSLA_OK && i < n_local; i++) {
        locals[i] = (dsla_node_local_t){.model = model, .gpu = on_gpu ? gpus[i] : -1};
        if (on_gpu)
            st = deploy_gpu(gpus[i], model, &random_cfg, &engine, dtype, max_context, margin_mib,
                            &backends[i]);
        else if (i > 0)
            st = dsla_model_load(&copies[i], model_dir);
        locals[i].backend = backends[i];
        if (i > 0 && !on_gpu) locals[i].model = copies[i];
    }
    bool http_on = !serving_only && strcmp(http, "off") != 0;
    if (st == DSLA_OK && http_on)
        st = dsla_http_auth_load(&http_auth, api_key_file, getenv("DSLA_API_KEY"),
                                 &(dsla_http_auth_source_t){"--api-key-file", "DSLA_API_KEY"});
    if (st == DSLA_OK)
        st = dsla_http_auth_load(&admin_auth, admin_key_file, getenv("DSLA_ADMIN_KEY"),
                                 &(dsla_http_auth_source_t){"--admin-key-file", "DSLA_ADMIN_KEY"});
    if (st == DSLA_OK && curve_dir) st = dsla_curve_keys_load(&curve, curve_dir);
    if (st == DSLA_OK && layer_key_file) st = dsla_layer_key_load(layer_key_file, &layer_key);
    if (st == DSLA_OK) {
        dsla_node_config_t config = {.model = serving_only ? model : NULL,
                                     .tokenizer = tokenizer,
                                     .chat_template = chat_template,
                                     .engine = engine,
                                     .backend = serving_only ? backends[0] : NULL,
                                     .local = locals,
                                     .n_local = serving_only ? 0 : n_local,
                                     .gpu_warmup = gpu_warmup,
                                     .endpoint = endpoint,
                                     .replicas = replicas.items,
                                     .n_replicas = replicas.count,
                                     .serving_only = serving_only,
                                     .http = http_on ? http : NULL,
                                     .http_max_in_flight = (uint32_t)http_max_in_flight,
                                     .http_auth = http_auth,
                                     .http_allow_insecure = allow_insecure,
                                     .http_cors_origins = cors_origins.items,
                                     .n_http_cors_origins = cors_origins.count,
                                     .admin_auth = admin_auth,
                                     .model_name = name,
                                     .heartbeat_ms = (uint32_t)heartbeat_ms,
                                     .layers_dir = layers_dir,
                                     .controller_db = controller_db,
                                     .admin = admin,
                                     .policy = policy,
                                     .controller_bind = controller_bind,
                                     .controller = controller,
                                     .report_ms = (uint32_t)report_ms,
                                     .layer_cache = layer_cache,
                                     .fetch_chunk = (uint32_t)fetch_chunk,
                                     .serving_name = serving_name,
                                     .curve = curve,
                                     .layer_key = layer_key_file ? &layer_key : NULL};
        raise_open_files(!http_on                    ? 0
                         : config.http_max_in_flight ? config.http_max_in_flight
                                                     : dsla_node_request_bound(&config));
        if (distill_out) {
            distill.layers = (int)distill_layers;
            distill.steps = (int)distill_steps;
            distill.batch = (int)distill_batch;
            distill.seed = (uint64_t)distill_seed;
            distill.checkpoint_every = (int)distill_checkpoint;
            distill.kl_weight = distill_kl_weight;
            distill.optim = dsla_distill_optim_default(distill.steps);
            config.distiller = (dsla_distiller_config_t){
                .model_dir = model_dir,
                .data = distill_data.items,
                .n_data = distill_data.count,
                .out_dir = distill_out,
                .params = distill,
                .seq_len = (int)distill_seq_len,
                .max_sequences = (int)distill_max_sequences,
                .eval_sequences = (int)distill_eval_sequences,
                .reservoir_prompts = (int)distill_samples,
                .cuda = distill_on_gpu ? &distill_cuda : NULL,
            };
            if (distill_on_gpu)
                print_distiller_need(
                    model, &distill_cuda, (int)distill_seq_len, (int)distill_batch,
                    distill_max_sequences, (int)distill_eval_sequences,
                    no_sample_prompts ? 0 : (int)distill_samples, distill_kl_weight > 0,
                    dsla_serve_gpu_listed(gpus, n_gpus, distill_cuda.gpu), margin_mib);
            config.no_sample_prompts = no_sample_prompts;
            config.sample_every = (uint32_t)sample_every;
            config.sample_seed = (uint64_t)sample_seed;
            config.sample_tokens_per_s = (uint32_t)sample_tokens_per_s;
        }
        st = dsla_node_create(&node, &config);
    }
    if (st == DSLA_OK) {
        printf("listening on %s\n", dsla_node_endpoint(node));
        if (dsla_node_http_port(node) > 0) {
            char url[300];
            http_url(http, dsla_node_http_port(node), url, sizeof url);
            printf("http on %s\n", url);
        }
        if (dsla_node_admin_endpoint(node)) printf("admin on %s\n", dsla_node_admin_endpoint(node));
        fflush(stdout);
        int sig = 0;
        sigwait(&stop_signals, &sig);
        fprintf(stderr, "dsla-serve: signal %d, shutting down\n", sig);
        dsla_node_drain(node, DSLA_NODE_GRACE_MS);
    } else {
        fprintf(stderr, "dsla-serve: %s\n", dsla_last_error());
    }
    dsla_node_destroy(&node);
    dsla_curve_keys_destroy(&curve);
    dsla_http_auth_destroy(&http_auth);
    dsla_http_auth_destroy(&admin_auth);
    for (int i = 0; i < n_local; i++) {
        if (backends[i]) dsla_cuda_device_bind(gpus[i]); /* freed on the device it lives on */
        dsla_serve_backend_destroy(&backends[i]);
        dsla_model_destroy(&copies[i]);
    }
    dsla_tokenizer_destroy(&tokenizer);
    dsla_chat_template_destroy(&chat_template);
    dsla_model_destroy(&model);
    dsla_serve_cluster_free(&cluster);
    return st == DSLA_OK ? 0 : (st == DSLA_ERR_INVALID_ARGUMENT ? 2 : 1);
}

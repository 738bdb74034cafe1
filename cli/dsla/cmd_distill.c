/* dsla distill: offline chained distillation of a teacher's attention layers into DSLA layers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "args.h"
#include "commands.h"
#include "distill_device.h"
#include "runtime/distill/distill.h"
#include "runtime/model/tokenizer.h"

static const char usage[] =
    "usage: dsla distill --model DIR --data FILE... --out DIR [options]\n\n"
    "Converts the model's attention layers into DSLA layers one at a time (DESIGN.md section 5),\n"
    "cheapest first: --order measured (default) trains each layer alone for --probe-steps and\n"
    "converts them in ascending held-out perplexity of those probes; entropy is DESIGN.md 5.1's\n"
    "order (the ablation of docs/quality.md). It writes one layer version per converted layer "
    "into\n"
    "--out. Run it again on the same --out to resume after an interruption: finished layers are\n"
    "kept (and the measured order's probes), the current one resumes from its checkpoint. Text\n"
    "files are split at blank lines; .tokens files are raw int32 ids.\n\n"
    "--steps 0 writes teacher-initialised layer versions (DESIGN.md section 4) without training "
    "or\n"
    "scoring them, for benchmarks that need DSLA layers of a model's shape; with --order given it\n"
    "needs no --data.\n\n"
    "--device cuda trains on a GPU (--gpu N): the teacher's forward passes, captures and the "
    "layer's\n"
    "training all on the device, with the same batches, schedule and outputs as the CPU. --dtype\n"
    "bf16 (default): bf16 teacher weights and TF32 training math; f32: fp32 throughout (for\n"
    "comparisons with the CPU). Master weights, moments and states are fp32 either way. Needs a\n"
    "head dim the GPU's DSLA kernels take (multiples of 16 up to 128); no --gate-cosine there;\n"
    "--kl-weight there takes sequences of at most 8192 tokens.\n\n"
    "--kl-weight W adds W times the KL of the teacher's and the hybrid's next-token distributions\n"
    "(at --kl-temperature) to each layer's hidden-state loss: every step then also runs the\n"
    "layers after the trained one, the head and their backward (docs/distiller.md for the cost).";

/* Held-out sequences when no --eval-data is given: enough for a stable perplexity, small next to
 * the calibration corpora this runs on. */
enum { DEFAULT_EVAL_SEQUENCES = 16 };

static void print_progress(void *user, const dsla_distill_progress_t *p) {
    (void)user;
    int left = (int)p->seconds_left;
    char kl[32] = "";
    if (!isnan(p->kl)) snprintf(kl, sizeof kl, " (kl %.5f)", p->kl);
    fprintf(stderr, "\r%s %d (%d/%d)  step %d/%d  loss %.5f%s  %.0f tok/s  time left %dm%02ds   ",
            p->probe ? "probe layer" : "layer", p->layer, p->k + 1, p->n_layers, p->step, p->steps,
            p->loss, kl, p->tokens_per_second, left / 60, left % 60);
    if (p->step == p->steps) fputc('\n', stderr);
    fflush(stderr);
}

static void print_probe_done(void *user, int layer, double ppl) {
    (void)user;
    fprintf(stderr, "probe layer %d: held-out ppl %.4f with only it converted\n", layer, ppl);
}

static void print_layer_done(void *user, const dsla_distill_layer_report_t *r) {
    (void)user;
    if (r->resumed_from_file && isnan(r->eval_ppl))
        fprintf(stderr, "layer %d: kept from an earlier run (teacher-initialised)\n", r->layer);
    else if (r->resumed_from_file)
        fprintf(stderr, "layer %d: kept from an earlier run (held-out ppl %.3f)\n", r->layer,
                r->eval_ppl);
}

/* A number, or null for the NaN of a number not measured (init-only runs): JSON has no NaN. */
static void json_number(FILE *f, const char *fmt, double v) {
    if (isfinite(v))
        fprintf(f, fmt, v);
    else
        fputs("null", f);
}

/* The summary as JSON for scripts (scripts/quality.py): numbers only, nothing to escape. */
static int write_report(const char *path, const dsla_distill_report_t *r) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "dsla distill: cannot write --report %s\n", path);
        return 1;
    }
    fprintf(f, "{\"teacher_ppl\": ");
    json_number(f, "%.6f", r->teacher_ppl);
    fprintf(f, ", \"order\": [");
    for (int i = 0; i < r->n_layers; i++)
        fprintf(f, "%s%d", i ? ", " : "", r->order[i]);
    fprintf(f, "], \"entropy\": [");
    for (int i = 0; i < r->n_layers; i++) {
        fputs(i ? ", " : "", f);
        json_number(f, "%.6f", r->entropy[i]);
    }
    fprintf(f, "], \"probe_steps\": %d, \"probe_seconds\": %.2f, \"probe_ppl\": [", r->probe_steps,
            r->probe_seconds);
    for (int i = 0; i < r->n_layers; i++) {
        fputs(i ? ", " : "", f);
        json_number(f, "%.6f", r->probe_ppl[i]);
    }
    fprintf(f, "], \"kl_weight\": %.9g, \"kl_temperature\": %.9g, \"converted\": [", r->kl_weight,
            r->kl_temperature);
    for (int i = 0; i < r->n_converted; i++) {
        const dsla_distill_layer_report_t *c = &r->converted[i];
        fprintf(f, "%s{\"k\": %d, \"layer\": %d, \"resumed\": %s, \"init_eval_mse\": %.8g, ",
                i ? ", " : "", c->k + 1, c->layer, c->resumed_from_file ? "true" : "false",
                isnan(c->init_eval_mse) ? -1.0 : c->init_eval_mse);
        fprintf(f, "\"eval_mse\": ");
        json_number(f, "%.8g", c->eval_mse);
        fprintf(f, ", \"train_loss\": ");
        json_number(f, "%.8g", c->train_loss);
        fprintf(f, ", \"train_kl\": ");
        json_number(f, "%.8g", c->train_kl);
        fprintf(f, ", \"eval_ppl\": ");
        json_number(f, "%.6f", c->eval_ppl);
        fprintf(f, ", \"seconds\": %.2f}", c->seconds);
    }
    fprintf(f, "]}\n");
    return fclose(f) == 0 ? 0 : 1;
}

static void print_summary(const dsla_distill_report_t *r, bool init_only, const char *order) {
    printf("\nconversion order (%s):", order);
    for (int i = 0; i < r->n_layers; i++)
        printf(" %d", r->order[i]);
    if (r->probe_steps > 0) {
        printf("\nprobe perplexity, each layer alone after %d steps%s:", r->probe_steps,
               r->probes_resumed ? " (from an earlier run)" : "");
        for (int i = 0; i < r->n_layers; i++)
            printf(" %d: %.4f", r->order[i], r->probe_ppl[r->order[i]]);
    }
    if (init_only) {
        printf("\n%d teacher-initialised layer versions written (--steps 0: not trained, not "
               "scored):",
               r->n_converted);
        for (int i = 0; i < r->n_converted; i++)
            printf(" %d", r->converted[i].layer);
        printf("\n");
        return;
    }
    printf("\nteacher held-out perplexity: %.4f\n", r->teacher_ppl);
    if (r->kl_weight > 0) {
        printf("logit KL term: weight %g, temperature %g; training KL (last tenth of the steps):",
               r->kl_weight, r->kl_temperature);
        for (int i = 0; i < r->n_converted; i++) {
            const dsla_distill_layer_report_t *c = &r->converted[i];
            if (c->resumed_from_file)
                printf(" %d: (kept)", c->layer);
            else
                printf(" %d: %.5f", c->layer, c->train_kl);
        }
        printf("\n");
    }
    printf("\n");
    printf(
        "| k | layer | entropy | init eval MSE | eval MSE | reduction | hybrid ppl | seconds |\n");
    printf(
        "|---|-------|---------|---------------|----------|-----------|------------|---------|\n");
    for (int i = 0; i < r->n_converted; i++) {
        const dsla_distill_layer_report_t *c = &r->converted[i];
        printf("| %d | %d | %.3f | %.5f | %.5f | %.1fx | %.4f | %.1f |\n", c->k + 1, c->layer,
               r->entropy[c->layer], c->init_eval_mse, c->eval_mse, c->init_eval_mse / c->eval_mse,
               c->eval_ppl, c->seconds);
    }
}

int dsla_cmd_distill(int argc, char **argv) {
    dsla_distill_params_t p = dsla_distill_params_default();
    const char *model_dir = getenv("DSLA_MODEL"), *out_dir = NULL, *order = NULL;
    const char *layer_order = NULL, *report_path = NULL, *device = "cpu", *dtype = "bf16";
    const char *layer_key_file = NULL;
    dsla_layer_key_t layer_key;
    long gpu = 0;
    dsla_arg_list_t data = {0}, eval_data = {0};
    long layers = 0, steps = p.steps, batch = p.batch, seq_len = 256, seed = (long)p.seed;
    long max_sequences = 0, eval_sequences = DEFAULT_EVAL_SEQUENCES;
    long checkpoint_every = p.checkpoint_every, probe_steps = p.probe_steps;
    double lr = p.optim.lr, gate_cosine = p.gate_cosine_weight;
    double kl_weight = p.kl_weight, kl_temperature = p.kl_temperature;
    bool independent = false, single_state = false;
    const dsla_arg_spec_t specs[] = {
        {"model", DSLA_ARG_STRING, "teacher model directory (default: $DSLA_MODEL)", 0, 0,
         &model_dir},
        {"data", DSLA_ARG_STRING_LIST, "training text or .tokens file (repeatable)", 0, 0, &data},
        {"eval-data", DSLA_ARG_STRING_LIST, "held-out file (default: the last sequences of --data)",
         0, 0, &eval_data},
        {"out", DSLA_ARG_STRING, "output directory for layer versions (required)", 0, 0, &out_dir},
        {"layers", DSLA_ARG_INT, "layers to convert, first ones of the order (default all)", 0,
         DSLA_LAYER_ORDER_MAX, &layers},
        {"steps", DSLA_ARG_INT,
         "optimizer steps per layer (default 400; 0: teacher-initialised only)", 0, 1e9, &steps},
        {"seq-len", DSLA_ARG_INT, "tokens per training sequence (default 256)", 2, 1 << 20,
         &seq_len},
        {"batch", DSLA_ARG_INT, "sequences per step (default 8)", 1, DSLA_LAYER_ORDER_MAX, &batch},
        {"lr", DSLA_ARG_FLOAT, "peak learning rate (default 5e-3)", 1e-8, 1, &lr},
        {"order", DSLA_ARG_STRING,
         "measured (default; entropy with --steps 0), entropy, reverse, or given", 0, 0, &order},
        {"probe-steps", DSLA_ARG_INT,
         "with --order measured: steps each layer trains alone to measure its cost (default 30)", 1,
         1e9, &probe_steps},
        {"layer-order", DSLA_ARG_STRING, "with --order given: e.g. 3,1,0,2,4", 0, 0, &layer_order},
        {"independent", DSLA_ARG_FLAG, "train each layer on the teacher's inputs (not chained)", 0,
         0, &independent},
        {"single-state", DSLA_ARG_FLAG, "history state only (ablation)", 0, 0, &single_state},
        {"max-sequences", DSLA_ARG_INT, "read at most this many training sequences (0: all)", 0,
         1e9, &max_sequences},
        {"eval-sequences", DSLA_ARG_INT, "held-out sequences (default 16)", 1, 1e6,
         &eval_sequences},
        {"checkpoint-every", DSLA_ARG_INT, "steps between checkpoints (default 50; 0: never)", 0,
         1e9, &checkpoint_every},
        {"seed", DSLA_ARG_INT, "seed for initialisation and batches (default 1234)", 0, 9.2e18,
         &seed},
        {"gate-cosine", DSLA_ARG_FLOAT, "weight of the gates' cosine similarity term (default 0)",
         0, 100, &gate_cosine},
        {"kl-weight", DSLA_ARG_FLOAT,
         "weight of the KL of the teacher's and the hybrid's final logits (default 0: off)", 0, 100,
         &kl_weight},
        {"kl-temperature", DSLA_ARG_FLOAT, "temperature of that KL (default 1)", 0.01, 100,
         &kl_temperature},
        {"report", DSLA_ARG_STRING, "also write the summary as JSON to this file", 0, 0,
         &report_path},
        {"device", DSLA_ARG_STRING, "cpu (default) or cuda", 0, 0, &device},
        {"gpu", DSLA_ARG_INT, "with --device cuda: the GPU's index (default 0)", 0, 1024, &gpu},
        {"dtype", DSLA_ARG_STRING, "with --device cuda: bf16 (default) or f32", 0, 0, &dtype},
        {"layer-key-file", DSLA_ARG_STRING,
         "seal each layer version with this key's MAC (the serving nodes' --layer-key-file)", 0, 0,
         &layer_key_file},
    };
    /* "--data a.txt b.txt": the words after --data's first value are data files too. */
    int rc = dsla_args_parse_with_list(argc, argv, specs, (int)(sizeof specs / sizeof specs[0]),
                                       usage, &data);
    if (rc >= 0) return rc;
    /* The measured order trains its probes; an init-only run (--steps 0) trains nothing, so its
     * default is the entropy order. */
    if (!order) order = steps > 0 ? "measured" : "entropy";
    const bool needs_data = steps > 0 || strcmp(order, "given") != 0;
    if (!model_dir || !out_dir || (needs_data && data.count == 0)) {
        fprintf(stderr, "dsla distill: --model, --data and --out are required (--data is optional "
                        "only with --steps 0 --order given)\n");
        return 2;
    }
    if (dsla_cli_distill_order("", order, true, &p.order_mode)) return 2;
    if (p.order_mode == DSLA_ORDER_GIVEN && layer_order &&
        dsla_args_int_list(layer_order, "layer-order", p.given_order, DSLA_LAYER_ORDER_MAX,
                           &p.n_given_order))
        return 2;
    const char *order_name = p.order_mode == DSLA_ORDER_MEASURED  ? "ascending measured cost"
                             : p.order_mode == DSLA_ORDER_ENTROPY ? "ascending attention entropy"
                             : p.order_mode == DSLA_ORDER_REVERSE ? "descending attention entropy"
                                                                  : "given";
    bool cuda = false;
    dsla_distill_cuda_opts_t cuda_opts;
    if (dsla_cli_distill_device("", device, dtype, gpu, &cuda, &cuda_opts)) return 2;
    if (cuda && gate_cosine > 0) {
        fprintf(stderr, "--gate-cosine: the term is implemented on the CPU only; drop it or "
                        "--device cuda\n");
        return 2;
    }
    p.layers = (int)layers;
    p.steps = (int)steps;
    p.batch = (int)batch;
    p.seed = (uint64_t)seed;
    p.chained = !independent;
    p.single_state = single_state;
    p.checkpoint_every = (int)checkpoint_every;
    p.probe_steps = (int)probe_steps;
    p.optim = dsla_distill_optim_default(p.steps);
    p.optim.lr = lr;
    p.optim.min_lr = lr / 10;
    p.gate_cosine_weight = gate_cosine;
    p.kl_weight = kl_weight;
    p.kl_temperature = kl_temperature;

    dsla_model_t *model = NULL;
    dsla_tokenizer_t *tok = NULL;
    dsla_corpus_t train = {0}, eval = {0};
    dsla_distill_report_t *report = calloc(1, sizeof *report);
    dsla_status_t st = DSLA_OK;
    if (layer_key_file) {
        st = dsla_layer_key_load(layer_key_file, &layer_key);
        p.mac_key = &layer_key;
    }
    if (st == DSLA_OK) st = dsla_model_load(&model, model_dir);
    if (st == DSLA_OK) st = dsla_tokenizer_load_dir(&tok, model_dir);
    const bool load_data = data.count > 0;
    if (st == DSLA_OK && load_data)
        st = dsla_corpus_load(
            &train, tok, data.items, data.count, (int)seq_len,
            max_sequences > 0 ? (int)(max_sequences + (eval_data.count ? 0 : eval_sequences)) : 0);
    if (st == DSLA_OK && load_data) {
        if (eval_data.count)
            st = dsla_corpus_load(&eval, tok, eval_data.items, eval_data.count, (int)seq_len,
                                  (int)eval_sequences);
        else
            st = dsla_corpus_split(&train, &eval, (int)eval_sequences);
    }
    if (st == DSLA_OK) {
        if (load_data)
            fprintf(stderr, "dsla distill: %d training and %d held-out sequences of %ld tokens\n",
                    train.num_sequences, eval.num_sequences, seq_len);
        bool tty = isatty(fileno(stderr));
        const dsla_distill_callbacks_t cb = {print_progress, print_layer_done, &tty, NULL,
                                             NULL,           print_probe_done};
        dsla_distill_backend_t *backend = NULL;
        st = cuda ? dsla_distill_backend_cuda_create(&backend, model, &cuda_opts)
                  : dsla_distill_backend_cpu_create(&backend, model);
        if (st == DSLA_OK) {
            if (cuda)
                fprintf(stderr, "dsla distill: on GPU %ld, %s\n", gpu,
                        cuda_opts.dtype == DSLA_DTYPE_F32 ? "fp32" : "bf16 teacher, TF32 training");
            st = dsla_distill_run_on(backend, model, &train, &eval, &p, out_dir, &cb, report);
        }
        dsla_distill_backend_destroy(&backend);
    }
    int exit_code = 0;
    if (st == DSLA_OK) {
        print_summary(report, p.steps == 0, order_name);
        if (report_path) exit_code = write_report(report_path, report);
    } else {
        fprintf(stderr, "\ndsla distill: %s\n", dsla_last_error());
    }
    dsla_corpus_free(&train);
    dsla_corpus_free(&eval);
    dsla_tokenizer_destroy(&tok);
    dsla_model_destroy(&model);
    free(report);
    if (st != DSLA_OK) exit_code = st == DSLA_ERR_INVALID_ARGUMENT ? 2 : 1;
    return exit_code;
}

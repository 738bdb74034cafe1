/* The chained distillation engine (DESIGN.md section 5): converts a teacher's attention layers into
 * DSLA layers one at a time, in the order params->order_mode names (ascending attention entropy,
 * its reverse, a given list, or a measured per-layer cost), each trained on the hidden states of
 * the hybrid in which the layers before it are already DSLA.
 *
 * Measured order (DSLA_ORDER_MEASURED): before chaining, every layer is trained alone for
 * probe_steps steps on the teacher's inputs (the initialisation, batches and optimizer of training,
 * its schedule compressed to probe_steps with the same share of warm-up; train only, not the
 * extend_train pool) and the hybrid with only that layer converted is scored on eval; the layers
 * are converted in ascending probe perplexity (ties keep the layers' natural order). The order and
 * the probe perplexities are stored in out_dir (probes.safetensors) before any layer trains, and a
 * resumed run reads them back instead of probing again, so it follows the same order.
 *
 * A run over an output directory writes, for the k-th converted layer l, the layer version
 * layer-<l>.safetensors (dsla_layer.h: tensors plus metadata: order, steps, losses, eval numbers,
 * teacher checksum), atomically, then moves on. Inside a layer it checkpoints the weights and the
 * optimizer state every checkpoint_every steps to checkpoint.safetensors. Started again on the same
 * directory with the same parameters, it skips the finished layers (loading their versions into the
 * hybrid) and resumes the current one from its checkpoint. Batches are drawn from a generator keyed
 * by (seed, layer, step), so a resumed run produces the same layer versions as an uninterrupted
 * one.
 *
 * Training data beyond the corpus: before it trains a layer (not for one an earlier run finished)
 * the engine hands callbacks->extend_train its training pool, a copy of train, which the callback
 * may extend with more sequences of the same length (dsla_corpus_pack; prompts sampled from live
 * traffic, DESIGN.md 5.4). That layer's captures and batches draw from the pool; the order, the
 * held-out numbers and later layers' pools are unaffected (each layer's pool starts from train
 * again). Determinism: a run whose extend_train appends nothing, or that has none, produces the
 * same layer versions, bit for bit, as one without the hook; a run that appends sequences is as
 * reproducible as the sequences it appends (a resumed layer asks again).
 *
 * Per step: h_in = the hybrid's residual stream entering layer l (or the teacher's, for the
 * unchained ablation), target = the teacher's stream leaving layer l; the student computes
 * h_out = h_mid + MLP(RMSNorm(h_mid)), h_mid = h_in + DSLA(RMSNorm(h_in)) with the layer's frozen
 * norms and MLP, and minimises the MSE normalised by the target's mean square (5.3) with AdamW.
 * Of 5.3's optional terms, the gate cosine is here (off by default): gate_cosine_weight times the
 * cosine similarity of the two states' log-gates over the batch, which pushes history and recency
 * apart. The logit KL term (kl_weight > 0, off by default; both backends) adds kl_weight times
 * KL(teacher || hybrid) of the next-token distributions at every position, at temperature
 * kl_temperature (dsla_cpu_kl_div_loss's batchmean * T^2): the hybrid runs on from the student's
 * h_out through the later layers (frozen, as the chained plan has them: DSLA where already
 * converted, attention elsewhere; the teacher's for the unchained ablation), the final norm and
 * the head, against the teacher's final stream captured with the targets (runtime/distill/
 * logit_tail.h, logit_tail_cuda.h), and the gradient flows back through all of it into the trained
 * layer. It costs a forward and a backward of every later layer per step (attention at O(T^2)
 * exactly). A measured order's probes train on the hidden-state loss alone, so they rank layers
 * (and are stored) as without the term.
 *
 * Init-only (steps 0): each layer of the order is written as the teacher initialises it (DESIGN.md
 * section 4, the seed training would start from), with steps 0 and NaN losses, and nothing is
 * trained or scored (no teacher perplexity, no held-out numbers): layer versions of a model's shape
 * for benchmarks, in seconds. With DSLA_ORDER_GIVEN it reads no data at all (train and eval may be
 * NULL; entropies are NaN); otherwise the entropy pass still orders the layers. A directory of
 * init-only versions is never resumed by a training run, nor the reverse (FORMAT). A measured
 * order needs training, so it takes no init-only run (INVALID_ARGUMENT).
 *
 * Where it computes is a backend (dsla_distill_run_on): the CPU (dsla_distill_run) or a GPU
 * (distill_cuda.c: the teacher's forward passes, captures and training on the device). The
 * engine's decisions (order, batches, schedule, checkpoints, files) are the same on both.
 *
 * Contract: the engine installs DSLA layers into the teacher model it is given (dsla_model_set_
 * dsla_layer, or the backend's device copy) and uninstalls them before returning; it runs on the
 * calling thread and reports through callbacks; it must not print. */
#ifndef DSLA_DISTILL_DISTILL_H
#define DSLA_DISTILL_DISTILL_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/kernels_train.h"
#include "runtime/core/tensor.h"
#include "runtime/core/status.h"
#include "runtime/distill/data.h"
#include "runtime/model/dsla_layer.h"
#include "runtime/model/llama.h"

typedef enum {
    DSLA_ORDER_ENTROPY = 0, /* ascending attention entropy (5.1) */
    DSLA_ORDER_REVERSE,     /* descending: the ablation */
    DSLA_ORDER_GIVEN,       /* the caller's list (default: 0, 1, 2, ...) */
    DSLA_ORDER_MEASURED,    /* ascending perplexity cost of each layer converted alone (above) */
} dsla_order_mode_t;

/* Every hyper-parameter of a run; dsla_distill_params_default documents the defaults. */
typedef struct {
    int layers;                   /* layers to convert, the first ones of the order; default: all */
    int steps;                    /* optimizer steps per layer; default 400. 0: init-only (below) */
    int batch;                    /* sequences per step; default 8 */
    dsla_order_mode_t order_mode; /* default DSLA_ORDER_MEASURED */
    int given_order[DSLA_LAYER_ORDER_MAX];
    int n_given_order;
    bool chained;              /* default true; false trains every layer on the teacher's inputs */
    bool single_state;         /* the ablation with the history state only; default false */
    int calib_sequences;       /* sequences whose attention entropy sets the order; default 16 */
    int probe_steps;           /* DSLA_ORDER_MEASURED: steps of each layer's probe; default 30 */
    int checkpoint_every;      /* steps between in-layer checkpoints; default 50; 0: never */
    uint64_t seed;             /* initialisation and batches; default 1234 */
    double gate_cosine_weight; /* the paper's contrastive term; default 0 (off) */
    double kl_weight;          /* the logit KL term's weight (>= 0); default 0 (off) */
    double kl_temperature;     /* its temperature (> 0); default 1 */
    dsla_adamw_params_t optim; /* dsla_distill_optim_default(steps) */
    /* seals every layer version written with this key's MAC (layer_mac.h); borrowed. NULL:
     * unsealed (unauthenticated) versions */
    const dsla_layer_key_t *mac_key;
} dsla_distill_params_t;

/* The defaults are docs/quality.md's recipe (issue 12): measured order, 400 steps of 8 sequences,
 * peak lr 5e-3. On tinystories-11M they keep the hybrid's held-out perplexity far closer to the
 * teacher's than the earlier 150-200 steps at lr 1e-3 in entropy order; the ablations there pin
 * their parameters explicitly. */
dsla_distill_params_t dsla_distill_params_default(void);

/* Peak learning rate of a distillation: 5x dsla_adamw_params_default's, which the recipe's lr
 * sweep on tinystories-11M (1e-3 .. 1e-2, docs/quality.md) found too low for 150-400 steps. */
#define DSLA_DISTILL_LR 5e-3
/* The optimizer of a run of steps per layer: dsla_adamw_params_default(steps) (10% warm-up, wd
 * 0.01, clipping at 1.0) with peak DSLA_DISTILL_LR, cosine to a tenth of it. */
dsla_adamw_params_t dsla_distill_optim_default(int steps);

/* What the progress callback sees after each step. */
typedef struct {
    bool probe;      /* a measured order's probe: k-th probe of n_layers (every model layer) */
    int k, n_layers; /* k-th conversion (0-based) of n_layers */
    int layer;       /* the decoder layer being trained */
    int step, steps; /* 1-based step of steps */
    double loss;     /* this step's training loss */
    double kl;       /* the logit term's KL before its weight; NaN when off */
    double tokens_per_second;
    double seconds_left; /* estimate for the whole run */
} dsla_distill_progress_t;

/* One finished conversion, for the summary. */
typedef struct {
    int layer;
    int k;
    bool resumed_from_file; /* finished in an earlier run and loaded, not trained now */
    double init_eval_mse;   /* held-out layer loss of the teacher-initialised layer */
    double eval_mse;        /* held-out layer loss after training */
    double train_loss;      /* mean loss of the last tenth of the steps */
    double train_kl;        /* mean logit KL of the last tenth (NaN without the term) */
    double eval_ppl;        /* the hybrid's held-out perplexity with this layer converted */
    double seconds;
} dsla_distill_layer_report_t;

typedef struct {
    int order[DSLA_LAYER_ORDER_MAX];
    float entropy[DSLA_LAYER_ORDER_MAX]; /* per decoder layer, by layer index */
    /* DSLA_ORDER_MEASURED: the held-out perplexity of the hybrid with only layer l converted after
     * its probe, by layer index (NaN in other modes); probe_steps: the probes' length (0: none) */
    double probe_ppl[DSLA_LAYER_ORDER_MAX];
    int probe_steps;
    bool probes_resumed;  /* read from out_dir, not measured now */
    double probe_seconds; /* the probes' time in this run (0 when read back) */
    int n_layers;         /* model layers */
    double teacher_ppl;
    double kl_weight, kl_temperature; /* the run's logit term (weight 0: off) */
    dsla_distill_layer_report_t converted[DSLA_LAYER_ORDER_MAX];
    int n_converted;
} dsla_distill_report_t;

typedef struct {
    void (*on_progress)(void *user, const dsla_distill_progress_t *p);
    void (*on_layer_done)(void *user, const dsla_distill_layer_report_t *r);
    void *user;
    /* Asked before every step; true stops the run with DSLA_ERR_CANCELLED, leaving the finished
     * layer versions and the last checkpoint, so that a run started again resumes there. NULL:
     * never. Lets an owner on another thread stop a run within one step. */
    bool (*should_stop)(void *user);
    /* Asked before training the k-th conversion (decoder layer `layer`), on the calling thread:
     * may append sequences of pool->seq_len to pool (a copy of train, owned by the engine) and
     * must leave what is there. An error stops the run with that status. NULL: train only. */
    dsla_status_t (*extend_train)(void *user, int k, int layer, dsla_corpus_t *pool);
    /* After each probe of a measured order: decoder layer `layer`'s probe perplexity (the hybrid
     * with only it converted). NULL: not wanted. Not called for probes read back on resume. */
    void (*on_probe_done)(void *user, int layer, double probe_ppl);
} dsla_distill_callbacks_t;

/* Runs (or resumes) a distillation into out_dir (created if missing). train and eval hold packed
 * sequences of one length; eval must not overlap train. INVALID_ARGUMENT for parameters out of
 * range (named); FORMAT when out_dir holds versions of another order or teacher, or probes of
 * another teacher, probe length, seed, batch or state count; CANCELLED when
 * callbacks->should_stop asked it to stop. */
dsla_status_t dsla_distill_run(dsla_model_t *teacher, const dsla_corpus_t *train,
                               const dsla_corpus_t *eval, const dsla_distill_params_t *params,
                               const char *out_dir, const dsla_distill_callbacks_t *callbacks,
                               dsla_distill_report_t *report);

/* Where a run computes: its forward passes, captures and training (runtime/distill/backend.h). The
 * engine above it is the same, so runs with the same parameters on two backends draw the same
 * batches, follow the same schedule and write the same kind of versions, checkpoints and reports.
 */
typedef struct dsla_distill_backend dsla_distill_backend_t;

/* The CPU: llama.h's forward passes and kernels/cpu's training kernels, over teacher. */
dsla_status_t dsla_distill_backend_cpu_create(dsla_distill_backend_t **out, dsla_model_t *teacher);

/* A GPU (runtime/distill/distill_cuda.c). dtype F32: the teacher's forward with fp32 weights and
 * the layer's training in full fp32 (the CPU's numbers, for comparisons); BF16: the teacher's
 * forward with bf16 weights (cuDNN prefill where it loads) and the training's GEMMs and DSLA core
 * on TF32 tensor cores. Either way the trained weights, AdamW moments, gradients, DSLA states and
 * every reduction are fp32 (master weights). */
typedef struct {
    int gpu;            /* device index; default 0 */
    dsla_dtype_t dtype; /* F32 or BF16; default BF16 */
} dsla_distill_cuda_opts_t;

/* UNSUPPORTED in a build without CUDA, or when the model's head dim is not one the chunked DSLA
 * kernels take (multiples of 16 up to 128: not stories260K's 8); INVALID_ARGUMENT for a GPU that
 * is not there. The teacher stays on the host too (entropy order, initialisation, checksum). */
dsla_status_t dsla_distill_backend_cuda_create(dsla_distill_backend_t **out, dsla_model_t *teacher,
                                               const dsla_distill_cuda_opts_t *opts);
/* Device bytes a GPU run of a teacher shaped cfg needs at its peak, from the sizes distill_cuda.c
 * allocates: the teacher's weights in dtype with a KV pool and activations for one capture batch
 * of seq_len-token sequences and their logits, the captured streams (inputs and targets of n_train
 * + n_eval sequences, fp32), and one layer's training (weights, gradients, moments, the frozen MLP,
 * a batch's activations and the chunked DSLA workspace); with logit_kl, the logit term's tail at
 * its largest (fp32 copies of every later layer and the head: ~26 GB for a 7B model). Not
 * counted: the CUDA context and cuBLAS's workspace (a few hundred MiB per process). */
size_t dsla_distill_cuda_bytes(const dsla_model_config_t *cfg, dsla_dtype_t dtype, int seq_len,
                               int batch, int n_train, int n_eval, bool logit_kl);
void dsla_distill_backend_destroy(dsla_distill_backend_t **b);

/* dsla_distill_run on a backend made for the same teacher (dsla_distill_run is this on the CPU).
 * The gate cosine term is CPU-only (UNSUPPORTED elsewhere). */
dsla_status_t dsla_distill_run_on(dsla_distill_backend_t *backend, dsla_model_t *teacher,
                                  const dsla_corpus_t *train, const dsla_corpus_t *eval,
                                  const dsla_distill_params_t *params, const char *out_dir,
                                  const dsla_distill_callbacks_t *callbacks,
                                  dsla_distill_report_t *report);

/* The attention-entropy order (5.1) of a teacher on the first n sequences of corpus: entropy[l]
 * receives each layer's mean entropy, order[] the layers in ascending entropy. */
dsla_status_t dsla_distill_entropy_order(dsla_model_t *teacher, const dsla_corpus_t *corpus,
                                         int n_sequences, float *entropy, int *order);

/* Mean next-token negative log-likelihood (nats/token) of corpus under model, every layer run as
 * kinds[l] says (NULL: all attention) with the model's installed DSLA layers. */
dsla_status_t dsla_distill_eval_nll(dsla_model_t *model, const dsla_layer_kind_t *kinds,
                                    const dsla_corpus_t *corpus, double *nll);

/* ---- scoring a plan (dsla eval) ---- */

/* What dsla_distill_eval_plan measured: mean next-token NLL (nats/token), its perplexity exp(nll),
 * and the tokens scored (every sequence's T - 1 next-token predictions). */
typedef struct {
    double nll, ppl;
    long tokens;
    int sequences;
} dsla_distill_eval_t;

/* The held-out perplexity of corpus under a plan, on backend b (made for the teacher the layers
 * belong to): layers[l] (n_layers = the model's layers) runs decoder layer l as that DSLA layer, a
 * NULL entry as attention (all NULL: the teacher). The backend's eval_nll, the one the engine's
 * eval_ppl and teacher_ppl come from, so the numbers equal a distill report's for the same layers
 * and data. The layers are installed for the call only; the caller keeps them. */
dsla_status_t dsla_distill_eval_plan(dsla_distill_backend_t *b, dsla_dsla_layer_t *const *layers,
                                     int n_layers, const dsla_corpus_t *corpus,
                                     dsla_distill_eval_t *out);
/* The same, with each scored token's NLL in token_nll[num_sequences][seq_len - 1] (position t of
 * a sequence: the NLL of its token t + 1 given those before; dsla eval --per-token). */
dsla_status_t dsla_distill_eval_plan_tokens(dsla_distill_backend_t *b,
                                            dsla_dsla_layer_t *const *layers, int n_layers,
                                            const dsla_corpus_t *corpus, double *token_nll,
                                            dsla_distill_eval_t *out);

/* Loads the layer versions of a dsla distill output directory that a plan names into
 * layers[0..num_layers) (the rest NULL; destroy with dsla_distill_plan_free):
 *  - plan_k >= 0 (pick NULL): the first plan_k versions on disk in the stored conversion order,
 *    as the controller converts them (a layer of the order without a version is passed over);
 *    plan_k must not exceed the versions there;
 *  - pick[0..n_pick) (plan_k < 0): those decoder layers;
 *  - neither (plan_k < 0, n_pick 0): every version the directory holds.
 * Every version read must have been distilled from this teacher (its checksum) in one order;
 * errors name the option (--plan, --dsla), the layer and the limit. *n_out: layers loaded. */
dsla_status_t dsla_distill_load_plan(const dsla_model_t *teacher, const char *dir, int plan_k,
                                     const int *pick, int n_pick, dsla_dsla_layer_t **layers,
                                     int *n_out);
void dsla_distill_plan_free(dsla_dsla_layer_t **layers, int n_layers);

#endif

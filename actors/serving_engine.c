/* The serving engine's thread: a locked inbox in, batches out (serving_engine.h). */
#include "actors/serving_engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "runtime/core/clock.h"
#include "runtime/core/log.h"
#include "runtime/serve/backend_cuda.h"

/* A failed step is tried again after this pause rather than at once, so that a broken backend
 * cannot make the thread spin. */
enum { STEP_RETRY_MS = 10 };

typedef enum { ITEM_SUBMIT, ITEM_CANCEL, ITEM_PLAN } item_kind_t;

typedef struct item {
    struct item *next;
    item_kind_t kind;
    uint64_t key; /* SUBMIT, CANCEL: the request; PLAN: the adoption's token */
    dsla_proto_generate_t g;
    dsla_plan_t *plan;
    /* a SUBMIT that went through the tokenizer thread: cancelled meanwhile, or its prompt could
     * not be tokenised (refused, with the tokenizer's sentence) */
    bool cancelled;
    dsla_status_t refused;
    char why[DSLA_PROTO_MESSAGE_MAX + 1];
} item_t;

/* A request in the engine, known on the engine thread only. */
typedef struct live {
    struct live *prev, *next;
    struct dsla_serving_engine *e;
    uint64_t key, engine_id;
} live_t;

struct dsla_serving_engine {
    dsla_engine_t *engine;
    dsla_serving_engine_config_t config;
    pthread_t thread;
    bool started;
    /* shared with the caller, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    item_t *head, *tail;
    bool stop;
    /* the snapshot, under metrics_mu */
    pthread_mutex_t metrics_mu;
    dsla_engine_metrics_t metrics;
    /* the engine thread's own */
    live_t *live;
    dsla_serving_batch_t *batch;
    dsla_log_limit_t step_log;
    /* the tokenizer thread's, under tok_mu: long text prompts waiting to be tokenised (FIFO) and
     * the one being tokenised; taken before mu when both are held */
    pthread_t tok_thread;
    bool tok_started, tok_stop;
    pthread_mutex_t tok_mu;
    pthread_cond_t tok_cv;
    item_t *tok_head, *tok_tail, *tok_current;
};

/* ---- batches ---- */

void dsla_serving_batch_free(dsla_serving_batch_t **b) {
    if (!b || !*b) return;
    free((*b)->events);
    free((*b)->text);
    free((*b)->adoptions);
    free((*b)->prompt_ids);
    free((*b)->prompt_lp);
    free(*b);
    *b = NULL;
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * elem);
    if (!q) return false;
    *p = q;
    *cap = n;
    return true;
}

/* The batch being filled; NULL when out of memory (the event is then lost, and said so). */
static dsla_serving_batch_t *batch_get(struct dsla_serving_engine *e) {
    if (!e->batch) e->batch = calloc(1, sizeof *e->batch);
    return e->batch;
}

static bool batch_text(dsla_serving_batch_t *b, const char *text, size_t len, size_t *off) {
    if (!grow((void **)&b->text, &b->text_cap, b->text_len + len + 1, 1)) return false;
    *off = b->text_len;
    if (len) memcpy(b->text + b->text_len, text, len);
    b->text_len += len;
    return true;
}

/* The prompt's ids and logprobs of an event, copied into the batch. */
static bool batch_prompt(dsla_serving_batch_t *b, const dsla_stream_event_t *ev,
                         dsla_serving_event_t *x) {
    if (!ev || !ev->prompt_logprobs) return true;
    const size_t n = (size_t)ev->n_prompt;
    if (!grow((void **)&b->prompt_ids, &b->cap_prompt_ids, b->n_prompt + n, sizeof(int32_t)) ||
        !grow((void **)&b->prompt_lp, &b->cap_prompt_lp, b->n_prompt + n,
              sizeof(dsla_token_logprobs_t)))
        return false;
    memcpy(b->prompt_ids + b->n_prompt, ev->prompt_ids, n * sizeof *b->prompt_ids);
    memcpy(b->prompt_lp + b->n_prompt, ev->prompt_logprobs, n * sizeof *b->prompt_lp);
    x->prompt_off = b->n_prompt;
    x->n_prompt = ev->n_prompt;
    b->n_prompt += n;
    return true;
}

static void batch_event(struct dsla_serving_engine *e, const dsla_serving_event_t *ev,
                        const dsla_stream_event_t *src, const char *text, size_t text_len,
                        const char *message) {
    dsla_serving_batch_t *b = batch_get(e);
    dsla_serving_event_t x = *ev;
    size_t mlen = message ? strlen(message) : 0;
    if (!b || !grow((void **)&b->events, &b->cap_events, b->n_events + 1, sizeof *b->events) ||
        !batch_text(b, text, text_len, &x.text_off) ||
        !batch_text(b, message, mlen, &x.message_off) || !batch_prompt(b, src, &x)) {
        dsla_log_error("serving engine: out of memory; an event of request %llu is lost",
                       (unsigned long long)ev->key);
        return;
    }
    x.text_len = text_len;
    x.message_len = mlen;
    b->events[b->n_events++] = x;
}

static void batch_adoption(struct dsla_serving_engine *e, const dsla_serving_adoption_t *a) {
    dsla_serving_batch_t *b = batch_get(e);
    if (!b || !grow((void **)&b->adoptions, &b->cap_adoptions, b->n_adoptions + 1,
                    sizeof *b->adoptions)) {
        dsla_log_error("serving engine: out of memory; the adoption of plan %llu is lost",
                       (unsigned long long)a->token);
        return;
    }
    b->adoptions[b->n_adoptions++] = *a;
}

/* ---- the engine thread ---- */

static void live_unlink(struct dsla_serving_engine *e, live_t *l) {
    if (l->prev) l->prev->next = l->next;
    if (l->next) l->next->prev = l->prev;
    if (e->live == l) e->live = l->next;
    free(l);
}

static int on_event(void *user, const dsla_stream_event_t *ev) {
    live_t *l = user;
    dsla_serving_event_t x = {.key = l->key,
                              .token = ev->token,
                              .finished = ev->finished,
                              .finish = ev->finish,
                              .status = ev->status,
                              .usage = ev->usage,
                              .has_logprobs = ev->logprobs != NULL};
    if (ev->logprobs) x.logprobs = *ev->logprobs;
    /* the engine says why in the thread's message when it gives up on a request */
    const char *message = ev->finished && ev->status != DSLA_OK ? dsla_last_error() : NULL;
    batch_event(l->e, &x, ev, ev->text, ev->text_len, message);
    if (ev->finished) live_unlink(l->e, l);
    return 0;
}

static void refuse(struct dsla_serving_engine *e, uint64_t key, dsla_status_t st) {
    dsla_serving_event_t x = {.key = key, .token = -1, .finished = true, .status = st};
    batch_event(e, &x, NULL, NULL, 0, dsla_last_error());
}

static void do_submit(struct dsla_serving_engine *e, item_t *it) {
    if (it->cancelled) { /* while its prompt was tokenised */
        dsla_serving_event_t x = {
            .key = it->key, .token = -1, .finished = true, .finish = DSLA_FINISH_CANCELLED};
        batch_event(e, &x, NULL, NULL, 0, NULL);
        return;
    }
    if (it->refused != DSLA_OK) {
        refuse(e, it->key, dsla_error(it->refused, "%s", it->why));
        return;
    }
    live_t *l = calloc(1, sizeof *l);
    if (!l) {
        refuse(e, it->key, dsla_error_oom("serving"));
        return;
    }
    l->e = e;
    l->key = it->key;
    const dsla_proto_generate_t *g = &it->g;
    dsla_request_params_t p = {
        .prompt_ids = g->prompt_ids,
        .n_prompt_ids = g->n_prompt_ids,
        .prompt_text = g->prompt,
        .prompt_text_len = g->prompt_len,
        .sampling = {.temperature = g->temperature,
                     .top_k = g->top_k,
                     .top_p = g->top_p,
                     .seed = g->seed,
                     .min_p = g->min_p,
                     .presence_penalty = g->presence_penalty,
                     .frequency_penalty = g->frequency_penalty,
                     .repetition_penalty = g->repetition_penalty,
                     .bias_ids = g->bias_ids,
                     .bias_values = g->bias_values,
                     .n_bias = g->n_bias},
        .max_tokens = g->max_tokens,
        .stop = g->stop,
        .n_stop = g->n_stop,
        .ignore_eos = g->ignore_eos,
        .logprobs = g->logprobs,
        .top_logprobs = g->top_logprobs,
        .prompt_logprobs = g->prompt_logprobs,
        .on_event = on_event,
        .user = l,
    };
    dsla_status_t st = dsla_engine_submit(e->engine, &p, &l->engine_id);
    if (st != DSLA_OK) {
        free(l);
        refuse(e, it->key, st);
        return;
    }
    l->next = e->live;
    if (e->live) e->live->prev = l;
    e->live = l;
}

static void do_cancel(struct dsla_serving_engine *e, uint64_t key) {
    for (live_t *l = e->live; l; l = l->next)
        if (l->key == key) {
            /* its final event (and the unlink) come from inside the cancel */
            if (dsla_engine_cancel(e->engine, l->engine_id) != DSLA_OK)
                dsla_log_warn("serving engine: %s", dsla_last_error());
            return;
        }
}

static void do_plan(struct dsla_serving_engine *e, item_t *it) {
    dsla_serving_adoption_t a = {.token = it->key};
    a.status = dsla_engine_set_plan(e->engine, it->plan);
    if (a.status != DSLA_OK) snprintf(a.message, sizeof a.message, "%s", dsla_last_error());
    a.plan_id = dsla_plan_id(dsla_engine_plan(e->engine));
    batch_adoption(e, &a);
}

static void item_free(item_t *it) {
    dsla_proto_generate_free(&it->g);
    dsla_plan_release(&it->plan);
    free(it);
}

static void publish(struct dsla_serving_engine *e, dsla_engine_metrics_t *m) {
    dsla_engine_metrics(e->engine, m);
    pthread_mutex_lock(&e->metrics_mu);
    e->metrics = *m;
    pthread_mutex_unlock(&e->metrics_mu);
}

static void *engine_main(void *arg) {
    struct dsla_serving_engine *e = arg;
    if (e->config.cuda_device >= 0 && dsla_cuda_device_bind(e->config.cuda_device) != DSLA_OK)
        dsla_log_error("serving engine: %s", dsla_last_error());
    if (e->config.warmup_vocab > 0) {
        const double t0 = dsla_clock_seconds();
        if (dsla_serve_cuda_warmup(e->engine, e->config.warmup_vocab, e->config.warmup_chunk,
                                   e->config.warmup_context) != DSLA_OK)
            dsla_log_error("serving engine: warm-up: %s", dsla_last_error());
        else
            dsla_log_info("serving engine: warmed up in %.1f s", dsla_clock_seconds() - t0);
    }
    dsla_engine_metrics_t *m = malloc(sizeof *m);
    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        while (!e->stop && !e->head && dsla_engine_idle(e->engine))
            pthread_cond_wait(&e->cv, &e->mu);
        item_t *items = e->head;
        e->head = e->tail = NULL;
        pthread_mutex_unlock(&e->mu);
        for (item_t *it = items, *next; it; it = next) {
            next = it->next;
            if (it->kind == ITEM_SUBMIT) do_submit(e, it);
            if (it->kind == ITEM_CANCEL) do_cancel(e, it->key);
            if (it->kind == ITEM_PLAN) do_plan(e, it);
            item_free(it);
        }
        dsla_status_t st = DSLA_OK;
        if (!dsla_engine_idle(e->engine)) st = dsla_engine_step(e->engine, NULL);
        if (m) publish(e, m);
        if (e->batch) {
            dsla_serving_batch_t *b = e->batch;
            e->batch = NULL;
            e->config.deliver(e->config.user, b);
        }
        if (st != DSLA_OK) {
            DSLA_LOG_LIMITED(&e->step_log, DSLA_LOG_ERROR, "serving engine: step failed: %s",
                             dsla_last_error());
            struct timespec ts = {0, STEP_RETRY_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
        pthread_mutex_lock(&e->mu);
    }
    pthread_mutex_unlock(&e->mu);
    free(m);
    return NULL;
}

static dsla_status_t enqueue(struct dsla_serving_engine *e, item_t *it);

/* ---- the tokenizer thread ---- */

/* Tokenises a long text prompt into ids, off the engine thread: a 200,000-character prompt takes
 * seconds, and the engine's steps (every other request's tokens) would wait for it. */
static void tokenise(struct dsla_serving_engine *e, item_t *it) {
    const dsla_tokenizer_t *t = e->config.tokenizer;
    int32_t *ids = NULL;
    size_t n = 0;
    dsla_status_t st = dsla_tokenizer_encode(t, it->g.prompt, it->g.prompt_len,
                                             dsla_tokenizer_add_bos_default(t), &ids, &n);
    if (st == DSLA_OK && n == 0) {
        free(ids);
        ids = NULL;
        st = dsla_error(DSLA_ERR_INVALID_ARGUMENT,
                        "request: the prompt is empty and the tokenizer has no BOS token");
    }
    if (st != DSLA_OK) {
        it->refused = st;
        snprintf(it->why, sizeof it->why, "%s", dsla_last_error());
        return;
    }
    free((void *)it->g.prompt); /* the ids stand for it now, as a GENERATE's ids win */
    it->g.prompt = NULL;
    it->g.prompt_len = 0;
    it->g.prompt_ids = ids;
    it->g.n_prompt_ids = (int)n;
}

static void *tokenizer_main(void *arg) {
    struct dsla_serving_engine *e = arg;
    pthread_mutex_lock(&e->tok_mu);
    for (;;) {
        while (!e->tok_stop && !e->tok_head)
            pthread_cond_wait(&e->tok_cv, &e->tok_mu);
        if (e->tok_stop) break;
        item_t *it = e->tok_head;
        e->tok_head = it->next;
        if (!e->tok_head) e->tok_tail = NULL;
        it->next = NULL;
        e->tok_current = it;
        pthread_mutex_unlock(&e->tok_mu);
        if (!it->cancelled) tokenise(e, it);
        pthread_mutex_lock(&e->tok_mu);
        e->tok_current = NULL;
        enqueue(e, it); /* under tok_mu: a cancel of it that finds it no longer here follows it */
    }
    pthread_mutex_unlock(&e->tok_mu);
    return NULL;
}

/* ---- the caller's side ---- */

static dsla_status_t enqueue(struct dsla_serving_engine *e, item_t *it) {
    pthread_mutex_lock(&e->mu);
    if (e->tail)
        e->tail->next = it;
    else
        e->head = it;
    e->tail = it;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return DSLA_OK;
}

dsla_status_t dsla_serving_engine_submit(dsla_serving_engine_t *e, uint64_t key,
                                         dsla_proto_generate_t *g) {
    item_t *it = calloc(1, sizeof *it);
    if (!it) {
        dsla_proto_generate_free(g);
        return dsla_error_oom("serving");
    }
    it->kind = ITEM_SUBMIT;
    it->key = key;
    it->g = *g;
    memset(g, 0, sizeof *g);
    if (!e->tok_started || it->g.prompt_ids || it->g.prompt_len <= DSLA_SERVING_TOKENIZE_INLINE_MAX)
        return enqueue(e, it);
    pthread_mutex_lock(&e->tok_mu);
    if (e->tok_tail)
        e->tok_tail->next = it;
    else
        e->tok_head = it;
    e->tok_tail = it;
    pthread_cond_signal(&e->tok_cv);
    pthread_mutex_unlock(&e->tok_mu);
    return DSLA_OK;
}

dsla_status_t dsla_serving_engine_cancel(dsla_serving_engine_t *e, uint64_t key) {
    item_t *it = calloc(1, sizeof *it);
    if (!it) return dsla_error_oom("serving");
    it->kind = ITEM_CANCEL;
    it->key = key;
    pthread_mutex_lock(&e->tok_mu);
    item_t *waiting = e->tok_current && e->tok_current->key == key ? e->tok_current : NULL;
    for (item_t *w = e->tok_head; w && !waiting; w = w->next)
        if (w->key == key) waiting = w;
    dsla_status_t st = DSLA_OK;
    if (waiting) { /* still being tokenised: it ends "cancelled" instead of being submitted */
        waiting->cancelled = true;
        free(it);
    } else {
        st = enqueue(e, it);
    }
    pthread_mutex_unlock(&e->tok_mu);
    return st;
}

dsla_status_t dsla_serving_engine_set_plan(dsla_serving_engine_t *e, uint64_t token,
                                           dsla_plan_t **plan) {
    item_t *it = calloc(1, sizeof *it);
    if (!it) {
        dsla_plan_release(plan);
        return dsla_error_oom("serving");
    }
    it->kind = ITEM_PLAN;
    it->key = token;
    it->plan = *plan;
    *plan = NULL;
    return enqueue(e, it);
}

void dsla_serving_engine_metrics(dsla_serving_engine_t *e, dsla_engine_metrics_t *out) {
    pthread_mutex_lock(&e->metrics_mu);
    *out = e->metrics;
    pthread_mutex_unlock(&e->metrics_mu);
}

dsla_status_t dsla_serving_engine_create(dsla_serving_engine_t **out, dsla_engine_t **engine,
                                         const dsla_serving_engine_config_t *config) {
    *out = NULL;
    dsla_serving_engine_t *e = calloc(1, sizeof *e);
    if (!e) {
        dsla_engine_destroy(engine);
        return dsla_error_oom("serving");
    }
    e->engine = *engine;
    *engine = NULL;
    e->config = *config;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_mutex_init(&e->metrics_mu, NULL);
    pthread_mutex_init(&e->tok_mu, NULL);
    pthread_cond_init(&e->tok_cv, NULL);
    dsla_engine_metrics(e->engine, &e->metrics); /* before the thread: nobody else touches it */
    if (e->config.tokenizer) {
        if (pthread_create(&e->tok_thread, NULL, tokenizer_main, e) != 0) {
            dsla_serving_engine_destroy(&e);
            return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED,
                              "serving: cannot start the tokenizer thread");
        }
        e->tok_started = true;
    }
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        dsla_serving_engine_destroy(&e);
        return dsla_error(DSLA_ERR_RESOURCE_EXHAUSTED, "serving: cannot start the engine thread");
    }
    e->started = true;
    *out = e;
    return DSLA_OK;
}

void dsla_serving_engine_stop(dsla_serving_engine_t *e) {
    if (e->tok_started) {
        pthread_mutex_lock(&e->tok_mu);
        e->tok_stop = true;
        pthread_cond_signal(&e->tok_cv);
        pthread_mutex_unlock(&e->tok_mu);
        pthread_join(e->tok_thread, NULL);
        e->tok_started = false;
    }
    if (!e->started) return;
    pthread_mutex_lock(&e->mu);
    e->stop = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    e->started = false;
}

void dsla_serving_engine_destroy(dsla_serving_engine_t **ep) {
    if (!ep || !*ep) return;
    dsla_serving_engine_t *e = *ep;
    dsla_serving_engine_stop(e);
    for (item_t *it = e->head, *next; it; it = next) {
        next = it->next;
        item_free(it);
    }
    for (item_t *it = e->tok_head, *next; it; it = next) {
        next = it->next;
        item_free(it);
    }
    dsla_engine_destroy(&e->engine);
    while (e->live)
        live_unlink(e, e->live);
    dsla_serving_batch_free(&e->batch);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->metrics_mu);
    pthread_cond_destroy(&e->tok_cv);
    pthread_mutex_destroy(&e->tok_mu);
    free(e);
    *ep = NULL;
}
